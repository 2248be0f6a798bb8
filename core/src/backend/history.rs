//! Topic history: events appended and published live in one step, read back after an id.

use async_trait::async_trait;
use switchboard_protocol::{EventId, Topic};

use super::error::BackendError;
use crate::history::{HistoryRule, Replay};

/// The history of topics that keep one (see [`crate::history`]).
#[async_trait]
pub trait HistoryStore: Send + Sync + 'static {
    /// Makes publishing with history possible for any backend client (Redis: loads the
    /// `sb_publish` function). Idempotent.
    async fn prepare(&self) -> Result<(), BackendError> {
        Ok(())
    }

    /// Appends an event to a topic's history and publishes it live, in one step; returns its id.
    async fn publish(
        &self,
        topic: &Topic,
        data: &str,
        rule: &HistoryRule,
    ) -> Result<EventId, BackendError>;

    /// The events of a topic's history after `since` (at most `max`; more is a failed recovery),
    /// whether the history still reaches back to `since`, and the latest id.
    async fn replay(
        &self,
        topic: &Topic,
        since: EventId,
        max: usize,
    ) -> Result<Replay, BackendError>;

    /// A page of a topic's history: the first `max` events after `since` (fewer at its end),
    /// whether the history still reaches back to `since`, and the latest id. For reading a
    /// long history in steps (a node catching up after its subscription was down).
    async fn page(&self, topic: &Topic, since: EventId, max: usize)
    -> Result<Replay, BackendError>;

    /// The latest id in a topic's history.
    async fn position(&self, topic: &Topic) -> Result<Option<EventId>, BackendError>;
}
