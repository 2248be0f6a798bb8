//! Live topics inside one process: what Redis pub/sub does, a message reaches this node's sink
//! only if the node subscribed to the topic.

use std::sync::Arc;

use async_trait::async_trait;
use switchboard_core::backend::{BackendError, TopicBus, TopicSink};
use switchboard_protocol::Topic;

use crate::MemoryBackend;

impl MemoryBackend {
    /// Delivers a live message if this node subscribed to the topic.
    pub(crate) fn deliver_live(&self, topic: &Topic, payload: &[u8]) {
        let wanted = self
            .subscribed
            .lock()
            .expect("lock poisoned")
            .contains(topic);
        if wanted && let Some(sink) = self.topic_sink.get() {
            sink.deliver(topic.as_str(), payload);
        }
    }

    /// The topics this node holds a subscription for (what `PUBSUB CHANNELS` is for Redis).
    pub fn subscribed_topics(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .subscribed
            .lock()
            .expect("lock poisoned")
            .iter()
            .map(|t| t.to_string())
            .collect();
        v.sort();
        v
    }
}

#[async_trait]
impl TopicBus for MemoryBackend {
    fn set_sink(&self, sink: Arc<dyn TopicSink>) {
        let _ = self.topic_sink.set(sink);
    }

    async fn publish(&self, topic: &Topic, data: &str) -> Result<(), BackendError> {
        self.deliver_live(topic, data.as_bytes());
        Ok(())
    }

    async fn subscribe(&self, topics: &[Topic]) -> Result<(), BackendError> {
        let mut set = self.subscribed.lock().expect("lock poisoned");
        set.extend(topics.iter().cloned());
        Ok(())
    }

    async fn unsubscribe(&self, topics: &[Topic]) -> Result<(), BackendError> {
        let mut set = self.subscribed.lock().expect("lock poisoned");
        for t in topics {
            set.remove(t);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[derive(Default)]
    struct Collect(Mutex<Vec<(String, Vec<u8>)>>);
    impl TopicSink for Collect {
        fn deliver(&self, topic: &str, payload: &[u8]) {
            self.0
                .lock()
                .unwrap()
                .push((topic.to_owned(), payload.to_vec()));
        }
    }

    #[tokio::test]
    async fn delivers_only_subscribed_topics() {
        let b = MemoryBackend::new();
        let sink = Arc::new(Collect::default());
        TopicBus::set_sink(&*b, sink.clone());
        let a = Topic::new("a").unwrap();
        let other = Topic::new("b").unwrap();
        b.subscribe(std::slice::from_ref(&a)).await.unwrap();
        TopicBus::publish(&*b, &a, "1").await.unwrap();
        TopicBus::publish(&*b, &other, "2").await.unwrap();
        b.unsubscribe(std::slice::from_ref(&a)).await.unwrap();
        TopicBus::publish(&*b, &a, "3").await.unwrap();
        let got = sink.0.lock().unwrap().clone();
        assert_eq!(got, vec![("a".to_owned(), b"1".to_vec())]);
        assert!(b.subscribed_topics().is_empty());
    }
}
