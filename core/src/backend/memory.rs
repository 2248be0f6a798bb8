//! The in-memory backend: the shared state of a single process, for `switchboard dev` and
//! tests. It keeps the same contract as Redis: a publish reaches this node only if the node
//! subscribed to the topic.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};

use async_trait::async_trait;

use super::{Backend, BackendError, EventSink};
use crate::topic::Topic;

/// See the module docs.
#[derive(Default)]
pub struct MemoryBackend {
    subscribed: Mutex<HashSet<Topic>>,
    sink: OnceLock<Arc<dyn EventSink>>,
}

impl std::fmt::Debug for MemoryBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBackend").finish_non_exhaustive()
    }
}

impl MemoryBackend {
    pub fn new() -> Self {
        Self::default()
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
impl Backend for MemoryBackend {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn attach(&self, sink: Arc<dyn EventSink>) {
        let _ = self.sink.set(sink);
    }

    async fn publish(&self, topic: &Topic, data: &str) -> Result<(), BackendError> {
        let wanted = self
            .subscribed
            .lock()
            .expect("lock poisoned")
            .contains(topic);
        if wanted && let Some(sink) = self.sink.get() {
            sink.deliver(topic.as_str(), data.as_bytes());
        }
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

    async fn ping(&self) -> Result<(), BackendError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Collect(Mutex<Vec<(String, Vec<u8>)>>);
    impl EventSink for Collect {
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
        b.attach(sink.clone());
        let a = Topic::new("a").unwrap();
        let other = Topic::new("b").unwrap();
        b.subscribe(std::slice::from_ref(&a)).await.unwrap();
        b.publish(&a, "1").await.unwrap();
        b.publish(&other, "2").await.unwrap();
        b.unsubscribe(std::slice::from_ref(&a)).await.unwrap();
        b.publish(&a, "3").await.unwrap();
        let got = sink.0.lock().unwrap().clone();
        assert_eq!(got, vec![("a".to_owned(), b"1".to_vec())]);
        assert!(b.subscribed_topics().is_empty());
    }
}
