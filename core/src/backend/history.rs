//! Topic history: events appended and published live in one step, read back after an id.

use async_trait::async_trait;
use switchboard_protocol::{EventId, Topic};

use super::error::BackendError;
use crate::history::{HistoryPage, HistoryRule, PageBounds};

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

    /// A page of a topic's history: the first events after `since` within `bounds` (fewer at
    /// its end), whether the history still reaches back to `since`, and the latest id. Long
    /// histories are read in steps, so no single read holds the backend for long.
    async fn page(
        &self,
        topic: &Topic,
        since: EventId,
        bounds: PageBounds,
    ) -> Result<HistoryPage, BackendError>;

    /// The latest id in a topic's history.
    async fn position(&self, topic: &Topic) -> Result<Option<EventId>, BackendError>;
}
