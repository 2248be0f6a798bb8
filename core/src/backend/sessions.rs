//! Sessions: stored, attached by a new connection (takeover), updated under a generation fence
//! (see [`crate::sessions`]).

use std::sync::Arc;

use async_trait::async_trait;

use super::error::BackendError;
use crate::sessions::{Attach, SessionUpdate, UpdateOutcome};

/// Told when a connection attached a session somewhere: the local holder of an older
/// generation has been taken over. Called from the backend's delivery task; must not block.
pub trait TakeoverSink: Send + Sync + 'static {
    fn session_taken(&self, session: &str, generation: u64);
}

/// Where sessions live.
#[async_trait]
pub trait SessionStore: Send + Sync + 'static {
    /// Sets who hears of takeovers. Called once, at start.
    fn set_sink(&self, sink: Arc<dyn TakeoverSink>);

    /// Starts hearing of takeovers (Redis: subscribes the session channel). Idempotent.
    async fn prepare(&self) -> Result<(), BackendError> {
        Ok(())
    }

    /// Stores a new session, held by a connection on `node` at generation 1, expiring in
    /// `ttl_ms` unless refreshed.
    async fn create(
        &self,
        id: &str,
        owner: &str,
        node: &str,
        ttl_ms: u64,
    ) -> Result<(), BackendError>;

    /// Attaches a new connection to a stored session of `owner`: raises its generation, tells
    /// every node (their sinks' `session_taken`), and returns what the session holds.
    async fn attach(
        &self,
        id: &str,
        owner: &str,
        node: &str,
        ttl_ms: u64,
    ) -> Result<Attach, BackendError>;

    /// Applies fenced changes to sessions; answers what became of each.
    async fn update(&self, updates: &[SessionUpdate]) -> Result<Vec<UpdateOutcome>, BackendError>;
}
