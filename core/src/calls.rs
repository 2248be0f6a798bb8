//! The call plane: how a gateway hands a tool call to workers and learns its outcome, and
//! how a worker takes, keeps and finishes jobs. Both sides meet only in the backend.
//!
//! Gateway side (on [`crate::backend::Backend`]): [`Submission`] in, [`Submitted`] out (a cache
//! hit, a new execution, or a join of an identical one in flight), task records, cancellation,
//! and the live tool catalogue. Worker side: [`JobQueue`].
//!
//! The stored task is the truth; signals (a call finished, progress) only wake waiters up, so a
//! lost signal costs latency, never the answer.

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::backend::BackendError;
use crate::tasks::{TaskRecord, TaskStatus};
use crate::tools::{CallToolResult, ToolSpec};

/// A call, ready to be routed.
#[derive(Debug, Clone)]
pub struct Submission {
    pub tool: ToolSpec,
    /// The tool version's queue (`ToolSpec::queue_id`, computed once per tool).
    pub queue: String,
    pub arguments: Value,
    pub call_hash: String,
    /// The caller's new task id.
    pub task_id: String,
    pub owner: String,
    /// Answer from the cache if it holds the result.
    pub read_cache: bool,
    /// How long to cache a successful result (0: not at all).
    pub cache_ttl_ms: u64,
    pub task_ttl_ms: u64,
    pub poll_interval_ms: u64,
    /// Unix ms after which nobody waits for the result and the job is not started.
    pub deadline_ms: u64,
}

impl Submission {
    /// The caller's task as a submission creates it: working, created `now`.
    pub fn new_task(&self, now: u64) -> TaskRecord {
        TaskRecord {
            task_id: self.task_id.clone(),
            owner: self.owner.clone(),
            status: TaskStatus::Working,
            status_message: None,
            created_at_ms: now,
            last_updated_at_ms: now,
            ttl_ms: self.task_ttl_ms,
            poll_interval_ms: self.poll_interval_ms,
            call_hash: self.call_hash.clone(),
            tool: self.tool.name.clone(),
            leader: None,
            cached: false,
            caller_cancelled: false,
            result: None,
        }
    }
}

/// What became of a submission. The record is the caller's own task.
#[derive(Debug, Clone)]
pub enum Submitted {
    /// Answered from the cache (status completed, result set).
    Cached(TaskRecord),
    /// A new execution was queued; the caller's task leads it.
    Leader(TaskRecord),
    /// An identical call was in flight; the caller's task follows it (`leader` set).
    Joined(TaskRecord),
}

impl Submitted {
    pub fn record(&self) -> &TaskRecord {
        match self {
            Submitted::Cached(r) | Submitted::Leader(r) | Submitted::Joined(r) => r,
        }
    }
}

/// A worker's announcement in the registry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkerAnnouncement {
    pub worker_id: String,
    pub tools: Vec<ToolSpec>,
    /// Unix ms after which the announcement is stale (the worker missed its heartbeats).
    pub expires_at_ms: u64,
}

/// One job: a call's execution, as a worker receives it.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// The queue entry's id.
    pub entry_id: String,
    /// The queue it came from (`ToolSpec::queue_id`: the tool and its version).
    pub queue: String,
    pub tool: String,
    /// The leader task: where the outcome is written.
    pub task_id: String,
    pub call_hash: String,
    pub arguments: Value,
    pub deadline_ms: u64,
    pub cache_ttl_ms: u64,
    /// How many times the job has been handed to a worker, this time included.
    pub deliveries: u64,
}

/// A job taken back from a worker that stopped heartbeating.
#[derive(Debug, Clone, PartialEq)]
pub enum Reclaimed {
    /// Run it again.
    Run(Job),
    /// It was delivered too often (it keeps killing workers): dead-letter it.
    Dead(Job),
}

/// Progress of a running call (the MCP `notifications/progress` fields but the token, which
/// each gateway adds for its own callers).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub task: String,
    pub progress: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The worker's side of the call plane. See the module docs.
#[async_trait]
pub trait JobQueue: Send + Sync + 'static {
    /// Announces (or refreshes) the worker and the tools it hosts.
    async fn announce(&self, a: &WorkerAnnouncement) -> Result<(), BackendError>;
    /// Removes the worker's announcement (graceful shutdown).
    async fn withdraw(&self, worker_id: &str) -> Result<(), BackendError>;
    /// Makes sure the queues (`ToolSpec::queue_id`s) exist.
    async fn prepare(&self, queues: &[String]) -> Result<(), BackendError>;
    /// Takes new jobs from the queues, waiting up to `block` for one: up to `max` per queue
    /// (Redis counts per stream), so the caller must cope with more than `max` in all.
    async fn fetch(
        &self,
        worker_id: &str,
        queues: &[String],
        max: usize,
        block: Duration,
    ) -> Result<Vec<Job>, BackendError>;
    /// Tells the queue the job is still being worked on (resets its visibility timeout), if it
    /// is still this worker's: `Ok(false)` when another worker has taken it over meanwhile, and
    /// this worker must stop running it.
    async fn extend(&self, worker_id: &str, job: &Job) -> Result<bool, BackendError>;
    /// Takes over up to `max` jobs whose worker has been silent for `min_idle`.
    async fn reclaim(
        &self,
        worker_id: &str,
        queues: &[String],
        min_idle: Duration,
        max_deliveries: u64,
        max: usize,
    ) -> Result<Vec<Reclaimed>, BackendError>;
    /// Records the outcome (task, cache), releases the call, acknowledges the job and signals
    /// the waiters. Does not overwrite a task that was cancelled meanwhile.
    async fn finish(
        &self,
        job: &Job,
        status: TaskStatus,
        message: Option<&str>,
        result: &CallToolResult,
    ) -> Result<(), BackendError>;
    /// Moves the job to the dead-letter queue (then [`finish`](Self::finish) it as failed).
    async fn dead_letter(&self, job: &Job, reason: &str) -> Result<(), BackendError>;
    /// Reports progress to the callers.
    async fn progress(&self, p: &Progress) -> Result<(), BackendError>;
    /// The current status of a task, if it still exists.
    async fn task_status(&self, task_id: &str) -> Result<Option<TaskStatus>, BackendError>;
    /// Leader task ids whose execution was cancelled, as they happen.
    fn cancellations(&self) -> tokio::sync::broadcast::Receiver<String>;
    /// Checks the backend answers, keeping its connections (and their reconnects) alive.
    async fn keepalive(&self) -> Result<(), BackendError>;
}
