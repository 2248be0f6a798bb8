//! Nothing published with history is lost when the node's backend subscription drops (a Redis
//! restart, a network blip): live pub/sub has no memory, but the history streams do.
//!
//! When the backend reports the subscription connection lost (in order with its messages), the
//! fan-out starts holding the live events of every topic that has history subscribers. Once the
//! backend answers again, this task re-issues the node's subscriptions and waits until they
//! are in place, then, per held topic, reads the history after the oldest position among its
//! subscribers, hands each event to the subscribers that lack it (positions de-duplicate), and
//! releases what was held meanwhile. A topic whose held events overflowed is read again.

use std::sync::Arc;
use std::time::Duration;

use switchboard_core::backend::{BackendError, HistoryStore};
use switchboard_core::history::PageBounds;
use switchboard_protocol::Topic;

use super::fanout::Fanout;
use super::subscriptions::Subscriptions;
use crate::health::Health;
use crate::metrics::Metrics;

/// What a recovery uses.
pub(crate) struct Recovery {
    pub(crate) fanout: Arc<Fanout>,
    pub(crate) subscriptions: Subscriptions,
    pub(crate) history: Arc<dyn HistoryStore>,
    pub(crate) health: Arc<Health>,
    pub(crate) metrics: Arc<Metrics>,
    /// How often held topics are looked at (the subscribe retry interval).
    pub(crate) interval: Duration,
    /// What one read may carry (`--replay-page-events`, `--replay-page-bytes`).
    pub(crate) page: PageBounds,
}

impl Recovery {
    /// Runs forever: recovers the held topics once the backend answers again.
    pub(crate) async fn run(self) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let held = self.fanout.held_topics();
            if held.is_empty() || self.health.backend_down() {
                continue;
            }
            if let Err(e) = self.subscriptions.resync().await {
                tracing::debug!(error = %e, "re-subscribing before recovery failed; retrying");
                continue;
            }
            let mut recovered = 0u64;
            for topic in held {
                match self.recover(&topic).await {
                    Ok(n) => recovered += n,
                    Err(e) => {
                        tracing::debug!(topic = %topic, error = %e, "recovery read failed; retrying");
                    }
                }
            }
            if recovered > 0 {
                tracing::info!(
                    events = recovered,
                    "recovered history events missed while the backend subscription was down"
                );
            }
        }
    }

    /// Reads one held topic's history back in pages from the oldest subscriber position until
    /// its end, then releases the held live events (again from the top if some overflowed
    /// meanwhile).
    async fn recover(&self, topic: &Topic) -> Result<u64, BackendError> {
        let mut count = 0u64;
        loop {
            if let Some(mut from) = self.fanout.oldest_position(topic) {
                let mut first = true;
                loop {
                    let page = self.history.page(topic, from, self.page).await?;
                    if first && !page.recovered {
                        tracing::warn!(topic = %topic, "history no longer reaches back to what this node delivered last; events were lost");
                    }
                    first = false;
                    let Some((last, _)) = page.events.last() else {
                        break;
                    };
                    let (last, more) = (*last, page.more);
                    for (id, data) in &page.events {
                        // Counted there when it is not relayed.
                        if let Some((data, from)) = self.fanout.checked(topic.as_str(), data) {
                            self.fanout.deliver_recovered(topic, *id, data, from);
                            count += 1;
                        }
                    }
                    if !more {
                        break;
                    }
                    from = last;
                }
            }
            if self.fanout.release(topic) {
                self.metrics.events_recovered.inc_by(count);
                return Ok(count);
            }
        }
    }
}
