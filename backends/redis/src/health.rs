//! Reachability: both multiplexed connections are pinged every time, so each keeps its
//! reconnect attempts going while Redis is away; pub/sub disconnections are counted by the push
//! handler. In a Redis Cluster a ping is answered by any primary (one shard failing over does not
//! take every gateway out of rotation), and every `LIBRARY_CHECK_INTERVAL` it also checks that
//! every primary has the function library.

use std::sync::atomic::Ordering;

use async_trait::async_trait;
use redis::Value;
use switchboard_core::backend::{BackendError, Health};

use crate::{Op, Plane, RedisBackend};

#[async_trait]
impl Health for RedisBackend {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn ping(&self) -> Result<(), BackendError> {
        if let Plane::Cluster(cluster) = &self.plane {
            let c = cluster.clone();
            self.bounded(Op::Health, async move { c.ping().await })
                .await?;
            if self.library_check_due() {
                // A primary added to the cluster later gets the library too.
                if let Err(e) = self.ensure_library().await {
                    tracing::warn!(error = %e, "Redis Cluster: checking the function library failed");
                }
            }
            return Ok(());
        }
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
