//! The gateway's side of the call plane: route a call (cache, coalescing, queue), read and
//! cancel tasks, read the live tool registry, and hear when executions finish.

use std::sync::Arc;

use async_trait::async_trait;

use super::error::BackendError;
use crate::calls::{Progress, Submission, Submitted, WorkerAnnouncement};
use crate::tasks::TaskRecord;

/// Told about executions (wake-ups only: the task record is the truth). Called from the
/// backend's delivery task; must not block.
pub trait CallSink: Send + Sync + 'static {
    /// The execution led by task `leader` finished.
    fn call_finished(&self, leader: &str);

    /// Progress of the execution led by `progress.task`.
    fn call_progress(&self, progress: Progress);
}

/// See the module docs.
#[async_trait]
pub trait CallPlane: Send + Sync + 'static {
    /// Sets who hears of finished executions and progress. Called once, at start.
    fn set_sink(&self, sink: Arc<dyn CallSink>);

    /// Starts hearing of executions (Redis: subscribes the done and progress channels).
    /// Idempotent.
    async fn prepare(&self) -> Result<(), BackendError> {
        Ok(())
    }

    /// Workers alive now, with the tools they host.
    async fn workers(&self) -> Result<Vec<WorkerAnnouncement>, BackendError>;

    /// Routes a call: a cache hit, a join of an identical call in flight, or a new job. Stores
    /// the caller's task.
    async fn submit(&self, s: &Submission) -> Result<Submitted, BackendError>;

    /// A task record as stored (a joined task's outcome is in its leader's record).
    async fn task(&self, task_id: &str) -> Result<Option<TaskRecord>, BackendError>;

    /// Cancels a working task; its execution stops when no other caller waits for it.
    async fn cancel(&self, task: &TaskRecord) -> Result<(), BackendError>;
}
