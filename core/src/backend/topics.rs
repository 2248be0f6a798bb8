//! Live topics: publish to every node subscribed to a topic, and receive the topics this node
//! subscribed to. At most once: what is published while a node is not subscribed is not kept
//! (that is what [`super::HistoryStore`] is for).

use std::sync::Arc;

use async_trait::async_trait;

use super::error::BackendError;
use switchboard_protocol::Topic;

/// Where a backend delivers the live messages of the topics a node subscribed to.
///
/// Called from the backend's delivery task for every message, in the order the backend
/// received them; it must not block or await (the gateway's fan-out only does `try_send`).
pub trait TopicSink: Send + Sync + 'static {
    /// One message published on `topic`. `payload` is exactly what the publisher sent; it has
    /// not been checked (a `PUBLISH` from redis-cli can carry anything).
    fn deliver(&self, topic: &str, payload: &[u8]);

    /// The subscription connection was lost: live messages may be missed until it is back.
    /// Called in order with the messages.
    fn subscription_lost(&self) {}
}

/// Live pub/sub between nodes: a publish reaches every node subscribed to the topic (this one
/// included) once; a node receives only what it subscribed to.
#[async_trait]
pub trait TopicBus: Send + Sync + 'static {
    /// Sets where live messages go. Called once, before the first `subscribe`.
    fn set_sink(&self, sink: Arc<dyn TopicSink>);

    /// Publishes one event (valid JSON text) on a topic, live, to every subscribed node.
    async fn publish(&self, topic: &Topic, data: &str) -> Result<(), BackendError>;

    /// Starts receiving the topics' live messages on this node. Returns once the subscription
    /// is in place: anything published afterwards is delivered.
    async fn subscribe(&self, topics: &[Topic]) -> Result<(), BackendError>;

    /// Stops receiving the topics' live messages on this node.
    async fn unsubscribe(&self, topics: &[Topic]) -> Result<(), BackendError>;
}
