//! Reachability: what readiness asks of a backend.

use async_trait::async_trait;

use super::error::BackendError;

/// Whether the backend answers, and whether its subscription connection was lost since.
#[async_trait]
pub trait Health: Send + Sync + 'static {
    /// A short name for logs and `/readyz` (`memory`, `redis`).
    fn kind(&self) -> &'static str;

    /// Checks that the backend answers; also keeps its connections' reconnect attempts going.
    async fn ping(&self) -> Result<(), BackendError>;

    /// How many times the subscription connection was lost so far. A change tells the gateway
    /// to re-issue its subscriptions once the backend answers again.
    fn reconnections(&self) -> u64 {
        0
    }

    /// Registers the backend's own metrics (operation timings, errors) in a node's registry.
    fn register_metrics(&self, _registry: &mut prometheus_client::registry::Registry) {}
}
