//! Per-identity rate budgets on Redis: one string per identity and budget
//! (`<prefix>:rl:{<identity>}:<budget>`) holding the budget's theoretical arrival time, changed
//! only by `lua/rate_take.lua` (the GCRA step on Redis's clock; the key expires once the budget
//! is full again). Gateways call it once per lease of tokens, not once per request.

use std::sync::LazyLock;
use std::time::Duration;

use async_trait::async_trait;
use switchboard_core::backend::{BackendError, Budget, Grant, Rate, RateStore};

use crate::{Op, RedisBackend};

static TAKE: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("lua/rate_take.lua")));

#[async_trait]
impl RateStore for RedisBackend {
    async fn take(
        &self,
        budget: Budget,
        identity: &str,
        rate: Rate,
        want: u32,
    ) -> Result<Grant, BackendError> {
        let mut inv = TAKE.prepare_invoke();
        inv.key(self.keys.rate(budget.as_str(), identity))
            .arg(rate.interval_us())
            .arg(rate.burst.max(1))
            .arg(want);
        let mut conn = self.commands();
        let (granted, wait_us): (i64, i64) = self
            .bounded(Op::Rates, async move { inv.invoke_async(&mut conn).await })
            .await?;
        Ok(Grant {
            granted: granted.clamp(0, i64::from(want)) as u32,
            retry_after: Duration::from_micros(wait_us.max(0) as u64),
        })
    }
}
