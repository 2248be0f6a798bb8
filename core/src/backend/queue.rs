//! The worker's side of the call plane: announce, take jobs, keep them, finish them.

use std::time::Duration;

use async_trait::async_trait;
use switchboard_protocol::methods::tasks::TaskStatus;
use switchboard_protocol::methods::tools::CallToolResult;

use super::error::BackendError;
use crate::calls::{Job, Progress, Reclaimed, WorkerAnnouncement};

/// Where a worker's jobs come from and its outcomes go.
#[async_trait]
pub trait JobQueue: Send + Sync + 'static {
    /// Announces (or refreshes) the worker and the tools it hosts.
    async fn announce(&self, a: &WorkerAnnouncement) -> Result<(), BackendError>;
    /// Removes the worker's announcement (graceful shutdown).
    async fn withdraw(&self, worker_id: &str) -> Result<(), BackendError>;
    /// Makes sure the queues (`ToolSpec::queue_id`s) exist, and that cancellations reach
    /// [`cancellations`](Self::cancellations).
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
    /// How the worker splits `queues` into groups it fetches from separately, one fetch loop
    /// (and one blocking read) per group: a backend whose one read cannot span every queue
    /// (Redis Cluster: one `XREADGROUP` reads keys of one slot) groups them by what one read
    /// can span. Every queue is in exactly one group. Default: one group of all of them.
    fn fetch_groups(&self, queues: &[String]) -> Vec<Vec<String>> {
        if queues.is_empty() {
            Vec::new()
        } else {
            vec![queues.to_vec()]
        }
    }
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
    /// Gives a fetched job back unrun, for a later fetch or reclaim (by any worker hosting its
    /// tool, this one included) to take: a job of a tool that left this worker, or that a read
    /// still in flight from an earlier fetch brought. Nobody hosting it: it ends at its
    /// deadline, as a call nobody runs.
    async fn release(&self, worker_id: &str, job: &Job) -> Result<(), BackendError>;
    /// Deletes `queues` for good, returning the jobs still in them (delivered or not), for the
    /// caller to finish: a host that goes and takes its queues with it (a client's socket that
    /// offered tools closed). Jobs queued after this find no reader and end at their deadline.
    async fn retire(&self, queues: &[String]) -> Result<Vec<Job>, BackendError>;
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
    /// How deep a tool's queue is, for the worker's metrics (`None`: the backend cannot say).
    async fn depth(&self, _queue: &str) -> Result<Option<QueueDepth>, BackendError> {
        Ok(None)
    }
}

/// A tool queue's depth, sampled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueDepth {
    /// Jobs not delivered to any worker yet; `None` when Redis cannot tell (after deletions
    /// in the middle of the stream).
    pub lag: Option<u64>,
    /// Jobs delivered to a worker and not finished.
    pub pending: u64,
}

/// Attempts at writing a call's outcome ([`finish_retrying`]).
const FINISH_ATTEMPTS: u32 = 5;
/// The pause after the first failed attempt; it doubles after each.
const FINISH_FIRST_PAUSE: Duration = Duration::from_millis(200);

/// The result as stored: one over `max` bytes (as JSON) is replaced by an `isError` result
/// saying so, so that no call can make the backend hold more than the bound.
pub fn bounded_result(result: CallToolResult, max: u64) -> CallToolResult {
    let len = serde_json::to_vec(&result).map_or(0, |v| v.len()) as u64;
    if len <= max {
        return result;
    }
    CallToolResult::error(format!(
        "the tool's result of {len} bytes is over the limit of {max} bytes (maxResultBytes)"
    ))
}

/// Writes a call's outcome with [`JobQueue::finish`] (which is idempotent), bounded to `max`
/// bytes, retrying up to [`FINISH_ATTEMPTS`] times with doubling pauses; the last error if
/// every attempt failed (the caller says what that leaves: a reclaim, or a deadline).
pub async fn finish_retrying(
    queue: &dyn JobQueue,
    job: &Job,
    status: TaskStatus,
    message: Option<&str>,
    result: CallToolResult,
    max: u64,
) -> Result<(), BackendError> {
    let result = bounded_result(result, max);
    let mut pause = FINISH_FIRST_PAUSE;
    let mut attempt = 1;
    loop {
        match queue.finish(job, status, message, &result).await {
            Ok(()) => return Ok(()),
            Err(e) if attempt == FINISH_ATTEMPTS => return Err(e),
            Err(e) => {
                tracing::warn!(error = %e, attempt, task = %job.task_id, "recording a call's outcome failed; retrying");
                tokio::time::sleep(pause).await;
                pause *= 2;
                attempt += 1;
            }
        }
    }
}
