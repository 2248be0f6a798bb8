//! The in-memory backend: the shared state of a single process, for `switchboard dev` and
//! tests. It keeps the Redis backend's contract role by role, so the gateway's protocol tests
//! run against both: a publish reaches this node only if it subscribed to the topic; history
//! is trimmed, expires and answers "does it reach back" alike; sessions are fenced by their
//! generation; tool calls are cached, coalesced and queued the same way, for workers running in
//! the same process.
//!
//! One role per file, each implementing its trait on [`MemoryBackend`]: `topics.rs`,
//! `history.rs`, `sessions.rs`, `calls.rs` (the gateway's side of tool calls and the state both
//! sides share), `queue.rs` (the worker's side), `rates.rs` (per-identity rate budgets),
//! `health.rs`.

mod calls;
mod conns;
mod health;
mod history;
mod queue;
mod rates;
mod sessions;
mod topics;

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};

use switchboard_core::backend::{Backend, CallSink, TakeoverSink, TopicSink};
use switchboard_protocol::Topic;

use crate::calls::CallState;
use crate::history::Histories;
use crate::rates::Rates;
use crate::sessions::Sessions;

/// Cancellations buffered for workers that are busy.
const CANCEL_BUFFER: usize = 1024;

/// See the module docs.
pub struct MemoryBackend {
    /// The topics this node subscribed to (what `PUBSUB CHANNELS` is for Redis).
    subscribed: Mutex<HashSet<Topic>>,
    topic_sink: OnceLock<Arc<dyn TopicSink>>,
    call_sink: OnceLock<Arc<dyn CallSink>>,
    takeover_sink: OnceLock<Arc<dyn TakeoverSink>>,
    calls: Mutex<CallState>,
    histories: Mutex<Histories>,
    sessions: Mutex<Sessions>,
    rates: Mutex<Rates>,
    conns: Mutex<conns::Ledger>,
    /// Woken when a job is queued.
    job_queued: tokio::sync::Notify,
    cancels: tokio::sync::broadcast::Sender<String>,
}

impl Default for MemoryBackend {
    fn default() -> Self {
        MemoryBackend {
            subscribed: Mutex::default(),
            topic_sink: OnceLock::new(),
            call_sink: OnceLock::new(),
            takeover_sink: OnceLock::new(),
            calls: Mutex::default(),
            histories: Mutex::default(),
            sessions: Mutex::default(),
            rates: Mutex::default(),
            conns: Mutex::default(),
            job_queued: tokio::sync::Notify::new(),
            cancels: tokio::sync::broadcast::channel(CANCEL_BUFFER).0,
        }
    }
}

impl std::fmt::Debug for MemoryBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBackend").finish_non_exhaustive()
    }
}

impl MemoryBackend {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The roles a gateway uses, all on this backend.
    pub fn backend(self: &Arc<Self>) -> Backend {
        Backend {
            health: self.clone(),
            topics: self.clone(),
            history: self.clone(),
            sessions: self.clone(),
            calls: self.clone(),
            queue: self.clone(),
            rates: self.clone(),
            conns: self.clone(),
        }
    }
}
