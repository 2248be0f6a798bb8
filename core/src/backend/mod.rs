//! The backend: what a gateway needs from the state it shares with other nodes, in the
//! domain's words (publish, subscribe, health), never in Redis commands.
//!
//! Two implementations: [`memory::MemoryBackend`] (one process, `switchboard dev` and unit
//! tests) and [`redis::RedisBackend`] (production). The gateway's protocol tests run against
//! both, so they must behave alike: a publish reaches every node subscribed to the topic
//! (this one included) once; a node receives only what it subscribed to.

pub mod memory;
mod memory_calls;
mod memory_history;
mod memory_sessions;
pub mod redis;
mod redis_calls;
mod redis_history;
mod redis_sessions;

use std::sync::Arc;

use async_trait::async_trait;

use crate::calls::{Progress, Submission, Submitted, WorkerAnnouncement};
use crate::history::{EventId, HistoryRule, Replay};
use crate::sessions::{Attach, SessionUpdate, UpdateOutcome};
use crate::tasks::TaskRecord;
use crate::topic::Topic;

pub use self::memory::MemoryBackend;
pub use self::redis::{RedisBackend, RedisOptions};

/// Where a backend delivers the live messages of the topics a node subscribed to.
///
/// Called from the backend's delivery task for every message, in the order the backend
/// received them; it must not block or await (the gateway's fan-out only does `try_send`).
pub trait EventSink: Send + Sync + 'static {
    /// One message published on `topic`. `payload` is exactly what the publisher sent; it has
    /// not been checked (a `PUBLISH` from redis-cli can carry anything).
    fn deliver(&self, topic: &str, payload: &[u8]);

    /// The execution led by task `leader` finished (a wake-up: the task record has the
    /// outcome).
    fn call_finished(&self, _leader: &str) {}

    /// Progress of the execution led by `progress.task`.
    fn call_progress(&self, _progress: Progress) {}

    /// The subscription connection was lost: live messages may be missed until it is back.
    /// Called in order with the messages.
    fn subscription_lost(&self) {}

    /// A connection attached session `session` at generation `generation`: a local connection holding
    /// an older generation has been taken over.
    fn session_taken(&self, _session: &str, _gen: u64) {}
}

/// A backend operation failed. Clients see these only as protocol errors.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BackendError {
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    #[error("backend operation timed out")]
    Timeout,
}

/// The gateway's view of the shared state. See the module docs.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// A short name for logs and `/readyz` (`memory`, `redis`).
    fn kind(&self) -> &'static str;

    /// Sets where live messages go. Called once, before the first `subscribe`.
    fn attach(&self, sink: Arc<dyn EventSink>);

    /// Publishes one event (valid JSON text) on a topic, live, to every subscribed node.
    async fn publish(&self, topic: &Topic, data: &str) -> Result<(), BackendError>;

    /// Starts receiving the topics' live messages on this node. Returns once the subscription
    /// is in place: anything published afterwards is delivered.
    async fn subscribe(&self, topics: &[Topic]) -> Result<(), BackendError>;

    /// Stops receiving the topics' live messages on this node.
    async fn unsubscribe(&self, topics: &[Topic]) -> Result<(), BackendError>;

    /// Checks that the backend answers (readiness).
    async fn ping(&self) -> Result<(), BackendError>;

    /// Workers alive now, with the tools they host.
    async fn workers(&self) -> Result<Vec<WorkerAnnouncement>, BackendError>;

    /// Routes a call: a cache hit, a join of an identical call in flight, or a new job. Stores
    /// the caller's task.
    async fn submit(&self, s: &Submission) -> Result<Submitted, BackendError>;

    /// A task record as stored (a joined task's outcome is in its leader's record).
    async fn task(&self, task_id: &str) -> Result<Option<TaskRecord>, BackendError>;

    /// Cancels a working task; its execution stops when no other caller waits for it.
    async fn cancel(&self, task: &TaskRecord) -> Result<(), BackendError>;

    /// Prepares the backend for this node: call signals (finished, progress) start reaching the
    /// sink, the history function is loaded. Idempotent; called at start and again after every
    /// reconnection (a restarted Redis without persistence has forgotten both).
    async fn on_connected(&self) -> Result<(), BackendError>;

    /// Appends an event to a topic's history and publishes it live, in one step; returns its id.
    async fn publish_history(
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
    async fn history_page(
        &self,
        topic: &Topic,
        since: EventId,
        max: usize,
    ) -> Result<Replay, BackendError>;

    /// The latest id in a topic's history.
    async fn position(&self, topic: &Topic) -> Result<Option<EventId>, BackendError>;

    /// Stores a new session, held by a connection on `node` at generation 1, expiring in
    /// `ttl_ms` unless refreshed.
    async fn session_create(
        &self,
        id: &str,
        owner: &str,
        node: &str,
        ttl_ms: u64,
    ) -> Result<(), BackendError>;

    /// Attaches a new connection to a stored session of `owner`: raises its generation, tells
    /// every node (the sink's `session_taken`), and returns what the session holds.
    async fn session_attach(
        &self,
        id: &str,
        owner: &str,
        node: &str,
        ttl_ms: u64,
    ) -> Result<Attach, BackendError>;

    /// Applies fenced changes to sessions; answers what became of each.
    async fn session_update(
        &self,
        updates: &[SessionUpdate],
    ) -> Result<Vec<UpdateOutcome>, BackendError>;

    /// How many times the subscription connection was lost so far. A change tells the gateway
    /// to re-issue its subscriptions once the backend answers again.
    fn reconnections(&self) -> u64 {
        0
    }
}
