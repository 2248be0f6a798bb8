//! The job loop of one worker.
//!
//! - **fetch**: takes as many jobs as it has free slots (`concurrency`), waiting up to
//!   `fetch_block` for one, and starts each in its own task.
//! - **run**: a job past its deadline is not started; a job whose task was cancelled is not
//!   started; otherwise it waits for a slot of its tool, runs with a heartbeat that keeps it
//!   visible to this worker, and ends at its deadline (an `isError` result) or on cancellation.
//!   The outcome is written with [`JobQueue::finish`].
//! - **reclaim**: every half visibility timeout, jobs whose worker went silent are taken over;
//!   a job delivered `max_deliveries` times is dead-lettered and its callers get `isError`.
//! - **announce**: the registry entry is refreshed every heartbeat and withdrawn on shutdown.
//! - **cancel**: cancellations from the backend stop the matching running calls.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchboard_core::calls::{Job, JobQueue, Progress, Reclaimed, WorkerAnnouncement};
use switchboard_core::tasks::{TaskStatus, now_ms};
use switchboard_core::tools::CallToolResult;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{REGISTRY_MISSES, WorkerConfig};
use crate::tools::{CallContext, Toolbox};

/// Pause after a failed backend call in a loop, so an outage does not spin.
const RETRY_PAUSE: Duration = Duration::from_millis(500);
/// Jobs taken over in one reclaim round, at most.
const RECLAIM_BATCH: usize = 16;
/// Progress reports queued per running call before new ones are dropped.
const PROGRESS_QUEUE: usize = 64;

struct Worker {
    config: WorkerConfig,
    queue: Arc<dyn JobQueue>,
    toolbox: Toolbox,
    slots: Arc<Semaphore>,
    /// Running calls by leader task id, for cancellation.
    running: Mutex<HashMap<String, CancellationToken>>,
    tasks: TaskTracker,
}

/// Runs a worker until `shutdown` completes; then stops fetching, gives running calls the
/// shutdown grace, and withdraws from the registry.
pub async fn run(
    config: WorkerConfig,
    queue: Arc<dyn JobQueue>,
    toolbox: Toolbox,
    shutdown: impl Future<Output = ()>,
) {
    let names = toolbox.names();
    let w = Arc::new(Worker {
        slots: Arc::new(Semaphore::new(config.concurrency)),
        config,
        queue,
        toolbox,
        running: Mutex::new(HashMap::new()),
        tasks: TaskTracker::new(),
    });
    while let Err(e) = w.queue.prepare(&names).await {
        tracing::warn!(error = %e, "cannot prepare the tool queues; retrying");
        tokio::time::sleep(RETRY_PAUSE).await;
    }
    tracing::info!(worker = %w.config.worker_id, tools = ?names, "worker started");
    let stop = CancellationToken::new();
    let loops = [
        tokio::spawn(w.clone().announce_loop(stop.clone())),
        tokio::spawn(w.clone().fetch_loop(stop.clone())),
        tokio::spawn(w.clone().reclaim_loop(stop.clone())),
        tokio::spawn(w.clone().cancel_loop(stop.clone())),
    ];
    shutdown.await;
    tracing::info!(worker = %w.config.worker_id, "stopping: no new jobs");
    stop.cancel();
    for l in loops {
        let _ = l.await;
    }
    w.tasks.close();
    if tokio::time::timeout(w.config.shutdown_grace, w.tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("shutdown grace over with calls still running; they will be reclaimed");
    }
    let _ = w.queue.withdraw(&w.config.worker_id).await;
}

impl Worker {
    async fn announce_loop(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(self.config.heartbeat);
        while !stop.is_cancelled() {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => return,
            }
            let a = WorkerAnnouncement {
                worker_id: self.config.worker_id.clone(),
                tools: self.toolbox.specs(),
                expires_at_ms: now_ms()
                    + (self.config.heartbeat * REGISTRY_MISSES).as_millis() as u64,
            };
            if let Err(e) = self.queue.announce(&a).await {
                tracing::warn!(error = %e, "registry heartbeat failed");
            }
        }
    }

    async fn fetch_loop(self: Arc<Self>, stop: CancellationToken) {
        let names = self.toolbox.names();
        loop {
            let first = tokio::select! {
                p = self.slots.clone().acquire_owned() => p.expect("never closed"),
                _ = stop.cancelled() => return,
            };
            let mut permits = vec![first];
            while let Ok(p) = self.slots.clone().try_acquire_owned() {
                permits.push(p);
            }
            let fetched = tokio::select! {
                r = self.queue.fetch(&self.config.worker_id, &names, permits.len(), self.config.fetch_block) => r,
                _ = stop.cancelled() => return,
            };
            match fetched {
                Ok(jobs) => {
                    for job in jobs {
                        let permit = permits.pop().expect("fetched at most one job per slot");
                        let w = self.clone();
                        self.tasks.spawn(async move {
                            w.execute(job).await;
                            drop(permit);
                        });
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "fetching jobs failed");
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
        }
    }

    async fn reclaim_loop(self: Arc<Self>, stop: CancellationToken) {
        let names = self.toolbox.names();
        let mut tick = tokio::time::interval(self.config.visibility_timeout / 2);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => return,
            }
            // Not limited by the slots free right now: the fetch loop holds them while it waits
            // for new jobs. Each reclaimed job waits for a slot below.
            let reclaimed = self
                .queue
                .reclaim(
                    &self.config.worker_id,
                    &names,
                    self.config.visibility_timeout,
                    self.config.max_deliveries,
                    self.config.concurrency.min(RECLAIM_BATCH),
                )
                .await;
            let jobs = match reclaimed {
                Ok(jobs) => jobs,
                Err(e) => {
                    tracing::warn!(error = %e, "reclaiming jobs failed");
                    continue;
                }
            };
            for r in jobs {
                match r {
                    Reclaimed::Run(job) => {
                        tracing::info!(tool = %job.tool, task = %job.task_id, deliveries = job.deliveries, "took over a job from a silent worker");
                        let permit = self
                            .slots
                            .clone()
                            .acquire_owned()
                            .await
                            .expect("never closed");
                        let w = self.clone();
                        self.tasks.spawn(async move {
                            w.execute(job).await;
                            drop(permit);
                        });
                    }
                    Reclaimed::Dead(job) => self.dead_letter(job).await,
                }
            }
        }
    }

    async fn cancel_loop(self: Arc<Self>, stop: CancellationToken) {
        let mut rx = self.queue.cancellations();
        loop {
            let leader = tokio::select! {
                r = rx.recv() => r,
                _ = stop.cancelled() => return,
            };
            match leader {
                Ok(leader) => {
                    if let Some(token) = self.running.lock().expect("poisoned").get(&leader) {
                        tracing::info!(task = %leader, "cancelling a running call");
                        token.cancel();
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "missed cancellations");
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    }

    async fn dead_letter(&self, job: Job) {
        let reason = format!(
            "dead-lettered after {} deliveries: the call keeps failing its workers",
            job.deliveries - 1
        );
        tracing::warn!(tool = %job.tool, task = %job.task_id, "{reason}");
        if let Err(e) = self.queue.dead_letter(&job, &reason).await {
            tracing::warn!(error = %e, "could not dead-letter a job");
            return;
        }
        self.finish(
            &job,
            TaskStatus::Failed,
            Some(&reason),
            CallToolResult::error(&reason),
        )
        .await;
    }

    async fn finish(
        &self,
        job: &Job,
        status: TaskStatus,
        message: Option<&str>,
        result: CallToolResult,
    ) {
        // A failed write leaves the job pending: it is reclaimed and the outcome written later.
        if let Err(e) = self.queue.finish(job, status, message, &result).await {
            tracing::warn!(error = %e, task = %job.task_id, "could not record a call's outcome");
        }
    }

    async fn execute(self: Arc<Self>, job: Job) {
        let Some(hosted) = self.toolbox.get(&job.tool) else {
            let why = format!("tool {} is not hosted here", job.tool);
            self.finish(
                &job,
                TaskStatus::Failed,
                Some(&why),
                CallToolResult::error(&why),
            )
            .await;
            return;
        };
        let now = now_ms();
        if now >= job.deadline_ms {
            let why = "the call's deadline passed before it started";
            self.finish(
                &job,
                TaskStatus::Failed,
                Some(why),
                CallToolResult::error(why),
            )
            .await;
            return;
        }
        match self.queue.task_status(&job.task_id).await {
            Ok(Some(TaskStatus::Working)) => {}
            Ok(Some(TaskStatus::Cancelled)) | Ok(None) => {
                let why = "cancelled before it started";
                self.finish(
                    &job,
                    TaskStatus::Cancelled,
                    Some(why),
                    CallToolResult::error(why),
                )
                .await;
                return;
            }
            Ok(Some(_)) => {
                // Already finished (a slow worker's result arrived first): just acknowledge.
                let why = "already finished";
                self.finish(
                    &job,
                    TaskStatus::Completed,
                    Some(why),
                    CallToolResult::error(why),
                )
                .await;
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read a task's status; leaving the job for later");
                return;
            }
        }

        let token = CancellationToken::new();
        self.running
            .lock()
            .expect("poisoned")
            .insert(job.task_id.clone(), token.clone());
        let (progress_tx, progress_rx) = mpsc::channel(PROGRESS_QUEUE);
        let ctx = CallContext::new(
            self.config.worker_id.clone(),
            job.task_id.clone(),
            progress_tx,
        );
        let forward = tokio::spawn(forward_progress(self.queue.clone(), progress_rx));

        let deadline = tokio::time::Instant::now() + Duration::from_millis(job.deadline_ms - now);
        let mut heartbeat = tokio::time::interval(self.config.visibility_timeout / 3);
        heartbeat.tick().await;
        let outcome = {
            let run = async {
                let _slot = hosted.permits.acquire().await.expect("never closed");
                hosted.tool.call(job.arguments.clone(), &ctx).await
            };
            tokio::pin!(run);
            loop {
                tokio::select! {
                    result = &mut run => break Some(result),
                    _ = token.cancelled() => break None,
                    _ = tokio::time::sleep_until(deadline) => {
                        break Some(CallToolResult::error(format!("timed out after {} ms", hosted.spec.timeout_ms)));
                    }
                    _ = heartbeat.tick() => {
                        if let Err(e) = self.queue.extend(&self.config.worker_id, &job).await {
                            tracing::warn!(error = %e, "job heartbeat failed");
                        }
                    }
                }
            }
        };
        // The call's future is gone (a command's process group with it); close its progress.
        drop(ctx);
        let _ = forward.await;
        self.running.lock().expect("poisoned").remove(&job.task_id);
        match outcome {
            Some(result) => self.finish(&job, TaskStatus::Completed, None, result).await,
            None => {
                let why = "cancelled";
                self.finish(
                    &job,
                    TaskStatus::Cancelled,
                    Some(why),
                    CallToolResult::error(why),
                )
                .await;
            }
        }
    }
}

async fn forward_progress(queue: Arc<dyn JobQueue>, mut rx: mpsc::Receiver<Progress>) {
    while let Some(p) = rx.recv().await {
        if let Err(e) = queue.progress(&p).await {
            tracing::debug!(error = %e, "progress report lost");
        }
    }
}
