//! Live topics on Redis pub/sub: a topic is the channel `<prefix>:t:{<topic>}`, so a publish on
//! any node, or a `PUBLISH` from any backend, reaches every node subscribed to it. Subscriptions
//! go on the pub/sub connection, whose messages reach the sink from `handle_push`.
//!
//! In a Redis Cluster the channel is a sharded one (`SSUBSCRIBE`/`SPUBLISH`, Redis 7+): it lives
//! on the primary that owns its slot (the topic is the hash tag, so a topic's channel and history
//! share that slot), and a publish travels to that shard only, not to every node of the cluster.

use std::sync::Arc;

use async_trait::async_trait;
use switchboard_core::backend::{BackendError, TopicBus, TopicSink};
use switchboard_protocol::Topic;

use crate::{Op, Plane, RedisBackend};

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
        // In a cluster, the topic is a sharded channel on the primary that owns its slot.
        let publish = if self.is_cluster() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        };
        let fut = async move {
            redis::cmd(publish)
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
        match &self.plane {
            Plane::Node(links) => {
                let links = links.clone();
                self.bounded(
                    Op::Subscribe,
                    async move { links.subscribe(channels).await },
                )
                .await
            }
            Plane::Cluster(cluster) => {
                let cluster = cluster.clone();
                self.bounded(
                    Op::Subscribe,
                    async move { cluster.ssubscribe(channels).await },
                )
                .await
            }
        }
    }

    async fn unsubscribe(&self, topics: &[Topic]) -> Result<(), BackendError> {
        if topics.is_empty() {
            return Ok(());
        }
        let channels = self.channels(topics);
        match &self.plane {
            Plane::Node(links) => {
                let links = links.clone();
                self.bounded(
                    Op::Subscribe,
                    async move { links.unsubscribe(channels).await },
                )
                .await
            }
            Plane::Cluster(cluster) => {
                let cluster = cluster.clone();
                self.bounded(Op::Subscribe, async move {
                    cluster.sunsubscribe(channels).await
                })
                .await
            }
        }
    }
}
