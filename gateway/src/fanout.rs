//! Topic -> local subscribers, and the delivery of one live event to all of them.
//!
//! The backend calls [`Fanout::deliver`] for every message on a subscribed topic. The payload
//! is checked as JSON once, the `event` frame is encoded once, and each subscriber's queue gets a
//! clone of the same `Bytes` with a non-blocking `try_send`: a full queue closes that one
//! connection with 4008 and never slows the others.
//!
//! Each topic's subscriber list is an `Arc<Vec<_>>` replaced on change (copy on write), so
//! delivery holds the map's lock only long enough to clone one `Arc`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use switchboard_core::backend::EventSink;
use switchboard_core::topic::Topic;
use switchboard_core::wire::{self, close};
use tokio::sync::mpsc::{self, error::TrySendError};

use crate::conn::{ConnCtl, Out};
use crate::metrics::Metrics;

/// One local subscriber of a topic.
#[derive(Clone)]
pub(crate) struct Subscriber {
    pub(crate) ctl: Arc<ConnCtl>,
    pub(crate) tx: mpsc::Sender<Out>,
}

/// See the module docs.
pub(crate) struct Fanout {
    topics: Mutex<HashMap<Topic, Arc<Vec<Subscriber>>>>,
    metrics: Arc<Metrics>,
}

impl Fanout {
    pub(crate) fn new(metrics: Arc<Metrics>) -> Self {
        Fanout {
            topics: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    /// Adds a local subscriber (a connection subscribes a topic at most once).
    pub(crate) fn add(&self, topic: &Topic, sub: Subscriber) {
        let mut topics = self.topics.lock().expect("fanout lock poisoned");
        let list = topics.entry(topic.clone()).or_default();
        Arc::make_mut(list).push(sub);
    }

    /// Removes a connection's subscription to a topic.
    pub(crate) fn remove(&self, topic: &Topic, conn_id: u64) {
        let mut topics = self.topics.lock().expect("fanout lock poisoned");
        if let Some(list) = topics.get_mut(topic) {
            Arc::make_mut(list).retain(|s| s.ctl.id != conn_id);
            if list.is_empty() {
                topics.remove(topic);
            }
        }
    }

    /// Whether any local connection wants the topic (what the Redis subscription follows).
    pub(crate) fn is_wanted(&self, topic: &str) -> bool {
        self.topics
            .lock()
            .expect("fanout lock poisoned")
            .contains_key(topic)
    }

    fn subscribers(&self, topic: &str) -> Option<Arc<Vec<Subscriber>>> {
        self.topics
            .lock()
            .expect("fanout lock poisoned")
            .get(topic)
            .cloned()
    }
}

impl EventSink for Fanout {
    fn deliver(&self, topic: &str, payload: &[u8]) {
        self.metrics.events_received.inc();
        let data = match wire::check_payload(payload) {
            Ok(data) => data,
            Err(e) => {
                self.metrics.events_invalid.inc();
                tracing::warn!(topic, error = %e, len = payload.len(), "dropped an event");
                return;
            }
        };
        let Some(subs) = self.subscribers(topic) else {
            return;
        };
        let frame = wire::encode_event(topic, data);
        let mut delivered = 0u64;
        for sub in subs.iter() {
            if sub.ctl.is_closing() {
                continue;
            }
            match sub.tx.try_send(Out::Text(frame.clone())) {
                Ok(()) => delivered += 1,
                Err(TrySendError::Full(_)) => {
                    if sub.ctl.close(
                        close::SLOW_CONSUMER,
                        "slow consumer: outbound queue full",
                        false,
                    ) {
                        self.metrics.slow_consumers.inc();
                        tracing::info!(conn = sub.ctl.id, topic, "closing a slow consumer (4008)");
                    }
                }
                Err(TrySendError::Closed(_)) => {}
            }
        }
        self.metrics.deliveries.inc_by(delivered);
    }
}
