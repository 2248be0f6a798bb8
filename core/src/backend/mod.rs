//! The backend: the state gateways and workers share, in the domain's words, never in Redis
//! commands. One trait per role, so each part of a node depends on the role it uses:
//!
//! | role | trait | used by |
//! |---|---|---|
//! | live topics (pub/sub) | [`TopicBus`], delivering into a [`TopicSink`] | the gateway's relay |
//! | topic history | [`HistoryStore`] | `subscribe {since}`, `publish`, recovery |
//! | sessions | [`SessionStore`], signalling a [`TakeoverSink`] | `hello`, the session refresh |
//! | tool calls, gateway side | [`CallPlane`], signalling a [`CallSink`] | `tools/*`, `tasks/*` |
//! | tool calls, worker side | [`JobQueue`] | workers; gateways, for tools their clients offer |
//! | connections per identity and address | [`ConnectionLedger`] | the connection caps |
//! | reachability | [`Health`] | readiness |
//! | per-identity rate budgets | [`RateStore`] (a GCRA per identity and budget, see [`gcra`]) | `publish`, `tools/call` |
//!
//! Two implementations, each a crate of its own: `switchboard-memory` (one process:
//! `switchboard dev` and tests) and `switchboard-redis` (production). Both keep the same
//! contract, and the gateway's protocol tests run against both. A [`Backend`] bundles the
//! gateway's roles as one value to hand around.

mod calls;
mod conns;
mod error;
mod health;
mod history;
mod queue;
mod rates;
mod sessions;
mod topics;

use std::sync::Arc;

pub use self::calls::{CallPlane, CallSink};
pub use self::conns::{ConnectionLedger, Lease};
pub use self::error::BackendError;
pub use self::health::Health;
pub use self::history::HistoryStore;
pub use self::queue::{JobQueue, QueueDepth, bounded_result, finish_retrying};
pub use self::rates::{Budget, Grant, Rate, RateStore, gcra};
pub use self::sessions::{SessionStore, TakeoverSink};
pub use self::topics::{TopicBus, TopicSink};

/// The roles a gateway node uses, from one backend.
#[derive(Clone)]
pub struct Backend {
    pub health: Arc<dyn Health>,
    pub topics: Arc<dyn TopicBus>,
    pub history: Arc<dyn HistoryStore>,
    pub sessions: Arc<dyn SessionStore>,
    pub calls: Arc<dyn CallPlane>,
    /// The worker's side: the gateway hosts the tools its clients offer (`tools/register`).
    pub queue: Arc<dyn JobQueue>,
    pub rates: Arc<dyn RateStore>,
    pub conns: Arc<dyn ConnectionLedger>,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("kind", &self.health.kind())
            .finish_non_exhaustive()
    }
}

impl Backend {
    /// Prepares every role for this node (signal channels listened to, the history function
    /// loaded). Idempotent; called at start and after every reconnection, since a restarted
    /// Redis without persistence has forgotten both. Every role is tried; the first error is
    /// returned.
    pub async fn prepare(&self) -> Result<(), BackendError> {
        let (h, s, c) = tokio::join!(
            self.history.prepare(),
            self.sessions.prepare(),
            self.calls.prepare()
        );
        h.and(s).and(c)
    }
}
