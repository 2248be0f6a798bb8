//! Per-identity rate budgets in memory, with the Redis contract (`switchboard-redis`'s
//! `rates.rs`): the same GCRA step (`switchboard_core::backend::gcra`) on this process's
//! clock, and a budget that is full again is forgotten, as its Redis key expires.

use std::collections::HashMap;

use async_trait::async_trait;
use switchboard_core::backend::{BackendError, Budget, Grant, Rate, RateStore, gcra};
use tokio::time::Instant;

use crate::MemoryBackend;

/// See the module docs.
#[derive(Default)]
pub(crate) struct Rates {
    /// The clock's zero, set by the first take.
    origin: Option<Instant>,
    /// (budget, identity) -> theoretical arrival time, microseconds after `origin`.
    tats: HashMap<(Budget, String), u64>,
    /// The size at which full budgets are swept next (doubles with the live count).
    sweep_at: usize,
}

impl Rates {
    pub(crate) fn take(&mut self, budget: Budget, identity: &str, rate: Rate, want: u32) -> Grant {
        let origin = *self.origin.get_or_insert_with(Instant::now);
        let now = Instant::now().duration_since(origin).as_micros() as u64;
        self.sweep(now);
        let key = (budget, identity.to_owned());
        let (tat, grant) = gcra(self.tats.get(&key).copied(), now, rate, want);
        if grant.granted > 0 {
            self.tats.insert(key, tat);
        }
        grant
    }

    /// Forgets the budgets that are full again whenever the map has doubled since the last
    /// sweep, so memory follows the identities active now at amortized constant cost.
    fn sweep(&mut self, now: u64) {
        if self.tats.len() < self.sweep_at.max(1024) {
            return;
        }
        self.tats.retain(|_, tat| *tat > now);
        self.sweep_at = self.tats.len() * 2;
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.tats.len()
    }
}

#[async_trait]
impl RateStore for MemoryBackend {
    async fn take(
        &self,
        budget: Budget,
        identity: &str,
        rate: Rate,
        want: u32,
    ) -> Result<Grant, BackendError> {
        Ok(self
            .rates
            .lock()
            .expect("rates lock")
            .take(budget, identity, rate, want))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const RATE: Rate = Rate {
        per_second: 10,
        burst: 4,
    };

    #[tokio::test(start_paused = true)]
    async fn takes_follow_the_rate_per_identity_and_budget() {
        let m = MemoryBackend::new();
        let take = |who: &'static str, b: Budget, want: u32| {
            let m = m.clone();
            async move { m.take(b, who, RATE, want).await.unwrap() }
        };
        assert_eq!(take("alice", Budget::Publishes, 3).await.granted, 3);
        assert_eq!(take("alice", Budget::Publishes, 3).await.granted, 1);
        let refused = take("alice", Budget::Publishes, 3).await;
        assert_eq!(refused.granted, 0);
        assert_eq!(refused.retry_after, Duration::from_millis(100));
        // Another identity, or another budget of the same one, is untouched.
        assert_eq!(take("bob", Budget::Publishes, 4).await.granted, 4);
        assert_eq!(take("alice", Budget::Calls, 4).await.granted, 4);
        // Waiting as told gives one more.
        tokio::time::advance(refused.retry_after).await;
        assert_eq!(take("alice", Budget::Publishes, 3).await.granted, 1);
        assert_eq!(take("alice", Budget::Publishes, 3).await.granted, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn full_budgets_are_forgotten() {
        let mut rates = Rates::default();
        for i in 0..1_024 {
            rates.take(Budget::Calls, &format!("user-{i}"), RATE, 1);
        }
        assert_eq!(rates.len(), 1_024);
        // Once every budget is full again, the next sweep drops them all.
        tokio::time::advance(Duration::from_secs(1)).await;
        rates.take(Budget::Calls, "late", RATE, 1);
        assert_eq!(rates.len(), 1);
    }
}
