//! Live topics on Redis pub/sub: a topic is the channel `<prefix>:t:{<topic>}`, so a publish on
//! any node, or a `PUBLISH` from any backend, reaches every node subscribed to it. Subscriptions
//! go on the pub/sub connection, whose messages reach the sink from `handle_push`.

use std::sync::Arc;

use async_trait::async_trait;
use switchboard_core::backend::{BackendError, TopicBus, TopicSink};
use switchboard_protocol::Topic;

use crate::{Op, RedisBackend};

impl RedisBackend {
    fn channels(&self, topics: &[Topic]) -> Vec<String> {
        topics
            .iter()
            .map(|t| self.keys.topic_channel(t.as_str()))
            .collect()
    }
}

#[async_trait]
impl TopicBus for RedisBackend {
    fn set_sink(&self, sink: Arc<dyn TopicSink>) {
        let _ = self.sinks.topics.set(sink);
    }

    async fn publish(&self, topic: &Topic, data: &str) -> Result<(), BackendError> {
        let channel = self.keys.topic_channel(topic.as_str());
        let mut conn = self.commands();
        let fut = async move {
            redis::cmd("PUBLISH")
                .arg(channel)
                .arg(data)
                .query_async::<i64>(&mut conn)
                .await
        };
        self.bounded(Op::Publish, fut).await.map(drop)
    }

    async fn subscribe(&self, topics: &[Topic]) -> Result<(), BackendError> {
        if topics.is_empty() {
            return Ok(());
        }
        let channels = self.channels(topics);
        let links = self.links.clone();
        self.bounded(
            Op::Subscribe,
            async move { links.subscribe(channels).await },
        )
        .await
    }

    async fn unsubscribe(&self, topics: &[Topic]) -> Result<(), BackendError> {
        if topics.is_empty() {
            return Ok(());
        }
        let channels = self.channels(topics);
        let links = self.links.clone();
        self.bounded(
            Op::Subscribe,
            async move { links.unsubscribe(channels).await },
        )
        .await
    }
}
