//! The worker's side of the call plane inside one process: jobs from the in-memory queues
//! (`calls.rs`), outcomes and progress signalled through the gateway's call sink. There is no
//! other process to lose a job to, so nothing is ever reclaimed.

use std::time::Duration;

use async_trait::async_trait;
use switchboard_core::backend::{BackendError, JobQueue};
use switchboard_core::calls::{Job, Progress, Reclaimed, WorkerAnnouncement};
use switchboard_protocol::methods::tasks::TaskStatus;
use switchboard_protocol::methods::tools::CallToolResult;

use crate::MemoryBackend;
use crate::calls::FETCH_POLL;

#[async_trait]
impl JobQueue for MemoryBackend {
    async fn announce(&self, a: &WorkerAnnouncement) -> Result<(), BackendError> {
        self.calls().announce(a);
        Ok(())
    }

    async fn withdraw(&self, worker_id: &str) -> Result<(), BackendError> {
        self.calls().withdraw(worker_id);
        Ok(())
    }

    async fn prepare(&self, _tools: &[String]) -> Result<(), BackendError> {
        Ok(())
    }

    async fn fetch(
        &self,
        _worker_id: &str,
        tools: &[String],
        max: usize,
        block: Duration,
    ) -> Result<Vec<Job>, BackendError> {
        let deadline = tokio::time::Instant::now() + block;
        loop {
            let queued = self.job_queued.notified();
            let jobs = self.calls().fetch(tools, max);
            if !jobs.is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok(jobs);
            }
            let _ = tokio::time::timeout(FETCH_POLL.min(block), queued).await;
        }
    }

    async fn extend(&self, _worker_id: &str, _job: &Job) -> Result<bool, BackendError> {
        // Nobody else can take a job over inside one process.
        Ok(true)
    }

    async fn reclaim(
        &self,
        _worker_id: &str,
        _tools: &[String],
        _min_idle: Duration,
        _max_deliveries: u64,
        _max: usize,
    ) -> Result<Vec<Reclaimed>, BackendError> {
        Ok(Vec::new())
    }

    async fn finish(
        &self,
        job: &Job,
        status: TaskStatus,
        message: Option<&str>,
        result: &CallToolResult,
    ) -> Result<(), BackendError> {
        self.calls().finish(job, status, message, result);
        if let Some(sink) = self.call_sink.get() {
            sink.call_finished(&job.task_id);
        }
        Ok(())
    }

    async fn release(&self, _worker_id: &str, job: &Job) -> Result<(), BackendError> {
        self.calls().release(job.clone());
        self.job_queued.notify_waiters();
        Ok(())
    }

    async fn retire(&self, queues: &[String]) -> Result<Vec<Job>, BackendError> {
        Ok(self.calls().retire(queues))
    }

    async fn dead_letter(&self, job: &Job, reason: &str) -> Result<(), BackendError> {
        self.calls().dead_letter(job, reason);
        Ok(())
    }

    async fn progress(&self, p: &Progress) -> Result<(), BackendError> {
        if let Some(sink) = self.call_sink.get() {
            sink.call_progress(p.clone());
        }
        Ok(())
    }

    async fn task_status(&self, task_id: &str) -> Result<Option<TaskStatus>, BackendError> {
        Ok(self.calls().task_status(task_id))
    }

    fn cancellations(&self) -> tokio::sync::broadcast::Receiver<String> {
        self.cancels.subscribe()
    }

    async fn keepalive(&self) -> Result<(), BackendError> {
        Ok(())
    }
}
