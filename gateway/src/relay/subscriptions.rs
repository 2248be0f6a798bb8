//! Where a topic's backend subscription is counted: the node holds one Redis subscription per
//! topic that at least one local connection wants, taken on the first local subscriber and
//! dropped after the last.
//!
//! Connections change the fan-out map themselves and then ask this module's task to
//! [`sync`](Subscriptions::sync) the topics they touched. The task compares what the map wants
//! with what it holds and sends the difference to the backend, batching every request that
//! queued up meanwhile into one `SUBSCRIBE` and one `UNSUBSCRIBE`. One task owning the held set
//! makes the count race-free: a subscribe and an unsubscribe of the same topic from two
//! connections are applied in the order the task sees them, against the map as it is then.
//!
//! A backend failure fails the waiting subscribes (the client gets an error) and marks the
//! topic dirty; dirty topics are reconciled again every `subscribe_retry` until Redis answers,
//! so a node never keeps a subscription nobody wants, nor misses one somebody does.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use switchboard_core::backend::{BackendError, TopicBus};
use switchboard_protocol::Topic;
use tokio::sync::{mpsc, oneshot};

use super::fanout::Fanout;
use crate::metrics::Metrics;

/// Requests queued for the subscription task at most; senders wait beyond it.
const QUEUE: usize = 4096;
/// Requests taken into one reconcile round at most.
const BATCH: usize = 1024;

struct SyncRequest {
    topics: Vec<Topic>,
    /// Re-issue every held subscription too (after the backend reconnected).
    resync: bool,
    done: Option<oneshot::Sender<Result<(), BackendError>>>,
}

/// The handle connections use; see the module docs.
#[derive(Clone)]
pub(crate) struct Subscriptions {
    tx: mpsc::Sender<SyncRequest>,
}

impl Subscriptions {
    pub(crate) fn spawn(
        bus: Arc<dyn TopicBus>,
        fanout: Arc<Fanout>,
        metrics: Arc<Metrics>,
        retry: Duration,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let task = Reconciler {
            bus,
            fanout,
            metrics,
            held: HashSet::new(),
            dirty: HashSet::new(),
        };
        let handle = tokio::spawn(task.run(rx, retry));
        (Subscriptions { tx }, handle)
    }

    /// Brings the backend subscriptions of `topics` in line with the fan-out map and waits
    /// until that is done. An error means a wanted topic could not be subscribed.
    pub(crate) async fn sync(&self, topics: Vec<Topic>) -> Result<(), BackendError> {
        let (done, wait) = oneshot::channel();
        let req = SyncRequest {
            topics,
            resync: false,
            done: Some(done),
        };
        if self.tx.send(req).await.is_err() {
            return Err(BackendError::Unavailable("node shutting down".into()));
        }
        wait.await
            .unwrap_or_else(|_| Err(BackendError::Unavailable("node shutting down".into())))
    }

    /// Like [`sync`](Self::sync), without waiting for the outcome; callable from `Drop`.
    pub(crate) fn sync_later(&self, topics: Vec<Topic>) {
        self.send_later(SyncRequest {
            topics,
            resync: false,
            done: None,
        });
    }

    /// Re-issues every held subscription: the backend reconnected, and what it restored by
    /// itself is not taken on trust.
    pub(crate) fn resync_all(&self) {
        self.send_later(SyncRequest {
            topics: Vec::new(),
            resync: true,
            done: None,
        });
    }

    /// Like [`resync_all`](Self::resync_all), waiting until every held subscription is in
    /// place again.
    pub(crate) async fn resync(&self) -> Result<(), BackendError> {
        let (done, wait) = oneshot::channel();
        let req = SyncRequest {
            topics: Vec::new(),
            resync: true,
            done: Some(done),
        };
        if self.tx.send(req).await.is_err() {
            return Err(BackendError::Unavailable("node shutting down".into()));
        }
        wait.await
            .unwrap_or_else(|_| Err(BackendError::Unavailable("node shutting down".into())))
    }

    fn send_later(&self, req: SyncRequest) {
        match self.tx.try_send(req) {
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
            Err(mpsc::error::TrySendError::Full(req)) => {
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    let tx = self.tx.clone();
                    rt.spawn(async move {
                        let _ = tx.send(req).await;
                    });
                }
            }
        }
    }
}

struct Reconciler {
    bus: Arc<dyn TopicBus>,
    fanout: Arc<Fanout>,
    metrics: Arc<Metrics>,
    /// Topics the backend subscription (maybe) holds. A topic whose subscribe failed stays here
    /// and in `dirty`: Redis may still have applied it.
    held: HashSet<Topic>,
    /// Topics whose last backend call failed, reconciled again on the retry timer.
    dirty: HashSet<Topic>,
}

impl Reconciler {
    async fn run(mut self, mut rx: mpsc::Receiver<SyncRequest>, retry: Duration) {
        let mut batch = Vec::with_capacity(64);
        let mut tick = tokio::time::interval(retry);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                n = rx.recv_many(&mut batch, BATCH) => {
                    if n == 0 {
                        return;
                    }
                }
                _ = tick.tick(), if !self.dirty.is_empty() => {}
            }
            self.round(&mut batch).await;
            batch.clear();
        }
    }

    async fn round(&mut self, batch: &mut [SyncRequest]) {
        if batch.iter().any(|r| r.resync) {
            self.dirty.extend(self.held.iter().cloned());
        }
        let mut touched: HashSet<Topic> = self.dirty.drain().collect();
        let forced = touched.clone();
        touched.extend(batch.iter().flat_map(|r| r.topics.iter().cloned()));

        let mut to_sub = Vec::new();
        let mut to_unsub = Vec::new();
        for topic in touched {
            let wanted = self.fanout.is_wanted(topic.as_str());
            let held = self.held.contains(&topic);
            let force = forced.contains(&topic);
            if wanted && (!held || force) {
                to_sub.push(topic);
            } else if !wanted && (held || force) {
                to_unsub.push(topic);
            }
        }

        let mut sub_error = None;
        if !to_sub.is_empty() {
            // Held even on failure: Redis may have applied it, and an unwanted topic must then
            // be unsubscribed.
            self.held.extend(to_sub.iter().cloned());
            if let Err(e) = self.bus.subscribe(&to_sub).await {
                tracing::warn!(error = %e, topics = to_sub.len(), "backend subscribe failed; will retry");
                self.dirty.extend(to_sub.iter().cloned());
                sub_error = Some(e);
            }
        }
        if !to_unsub.is_empty() {
            match self.bus.unsubscribe(&to_unsub).await {
                Ok(()) => {
                    for t in &to_unsub {
                        self.held.remove(t);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, topics = to_unsub.len(), "backend unsubscribe failed; will retry");
                    self.dirty.extend(to_unsub.iter().cloned());
                }
            }
        }
        self.metrics
            .backend_subscriptions
            .set(self.held.len() as i64);

        for req in batch.iter_mut() {
            let Some(done) = req.done.take() else {
                continue;
            };
            let failed = sub_error.is_some()
                && (req.resync || req.topics.iter().any(|t| to_sub.contains(t)));
            let _ = done.send(match (&sub_error, failed) {
                (Some(e), true) => Err(e.clone()),
                _ => Ok(()),
            });
        }
    }
}
