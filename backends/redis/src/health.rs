//! Reachability: both multiplexed connections are pinged every time, so each keeps its
//! reconnect attempts going while Redis is away; pub/sub disconnections are counted by the push
//! handler.

use std::sync::atomic::Ordering;

use async_trait::async_trait;
use redis::Value;
use switchboard_core::backend::{BackendError, Health};

use crate::{Op, RedisBackend};

#[async_trait]
impl Health for RedisBackend {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn ping(&self) -> Result<(), BackendError> {
        let mut commands = self.commands();
        let mut pubsub = self.pubsub();
        let (a, b) = tokio::join!(
            self.bounded(Op::Health, async move {
                redis::cmd("PING").query_async::<Value>(&mut commands).await
            }),
            self.bounded(Op::Health, async move {
                redis::cmd("PING").query_async::<Value>(&mut pubsub).await
            }),
        );
        a.and(b).map(drop)
    }

    fn reconnections(&self) -> u64 {
        self.disconnections.load(Ordering::Relaxed)
    }

    fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        RedisBackend::register_metrics(self, registry);
    }
}
