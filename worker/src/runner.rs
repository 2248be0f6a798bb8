//! The job loop of one worker.
//!
//! - **fetch**: one loop per group of queues (`JobQueue::fetch_groups`: all queues on one
//!   Redis, one group per slot on Redis Cluster). Each, while a worker slot is free and the
//!   backlog has room (`--backlog`), takes jobs from its queues of the tools that have a free
//!   slot, as many as there are free slots
//!   (within that room), waiting up to `fetch_block` for one. Each job joins the backlog
//!   (`backlog.rs`: one FIFO queue per owner, started round-robin across owners, each owner
//!   running at most `--max-running-per-identity` calls here) and gets a task of its own. A
//!   read over several queues can return more jobs than asked (Redis counts per stream); they
//!   wait in the backlog like any other; so can several groups' loops, each fetching up to
//!   the room it saw. Fetching ahead of the slots is what lets another
//!   identity's call start within one fetch while one identity's calls fill the queue.
//! - **run**: a job past its deadline is not started; a job whose task was cancelled is not
//!   started; otherwise it waits in the backlog for its turn (a worker slot, a slot of its tool,
//!   room under its owner's cap), and runs until it answers, its deadline passes (an `isError`
//!   result), or it is cancelled. From the moment it is fetched it heartbeats
//!   (`JobQueue::extend`), in the backlog too, which also fences it: if another worker took the
//!   job over meanwhile, this one stops running it (or waiting for it). The outcome is written
//!   with [`JobQueue::finish`], retried a few times (it is idempotent).
//! - **reclaim**: every half visibility timeout, jobs whose worker went silent are taken over
//!   (into the backlog, like fetched ones); a job delivered `max_deliveries` times is
//!   dead-lettered and its callers get `isError`. A reclaimed job whose task is no longer
//!   `working` (its worker wrote the outcome, then died before acknowledging the job) is not
//!   run again: it is finished once more (idempotent), which acknowledges it.
//! - **shutdown**: fetching stops, the backlog closes (nothing more starts; the jobs still
//!   waiting are left unacknowledged, so other workers take them over once this one is silent
//!   for the visibility timeout), running calls get the shutdown grace.
//! - **announce**: the registry entry is refreshed every heartbeat (with a keepalive of the
//!   backend's connections) and withdrawn on shutdown.
//! - **cancel**: cancellations from the backend stop the matching running calls; each heartbeat
//!   also re-reads the task, in case a cancellation signal was missed.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchboard_core::backend::{JobQueue, finish_retrying};
use switchboard_core::calls::{EXPIRED_UNSTARTED, Job, Progress, Reclaimed, WorkerAnnouncement};
use switchboard_core::clock::now_ms;
use switchboard_protocol::methods::tasks::TaskStatus;
use switchboard_protocol::methods::tools::CallToolResult;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::backlog::{Backlog, Waiting};
use crate::config::{REGISTRY_MISSES, WorkerConfig};
use crate::metrics::{JobOutcome, WorkerMetrics};
use crate::tools::{CallContext, Hosted, Toolbox};

/// Pause after a failed backend call in a loop, so an outage does not spin.
const RETRY_PAUSE: Duration = Duration::from_millis(500);
/// Jobs taken over in one reclaim round, at most.
const RECLAIM_BATCH: usize = 16;
/// Progress reports queued per running call before new ones are dropped.
const PROGRESS_QUEUE: usize = 64;
/// Pause while every hosted tool is at its concurrency limit.
const TOOLS_BUSY_PAUSE: Duration = Duration::from_millis(20);

/// Why a worker stopped on its own.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("the worker's {0} loop stopped unexpectedly")]
    LoopFailed(&'static str),
    #[error("cannot listen on --admin-listen {addr}: {source}")]
    AdminListen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

struct Worker {
    config: WorkerConfig,
    queue: Arc<dyn JobQueue>,
    toolbox: Toolbox,
    /// Jobs fetched and not started, and the worker's slots they start into.
    backlog: Arc<Backlog>,
    /// Running calls by leader task id, for cancellation.
    running: Mutex<HashMap<String, CancellationToken>>,
    tasks: TaskTracker,
    metrics: Arc<WorkerMetrics>,
}

/// How a run ended.
enum Ended {
    Answered(CallToolResult),
    /// Its deadline passed while it ran: an `isError` result.
    TimedOut(CallToolResult),
    Cancelled,
    /// Another worker owns the job now: it writes the outcome, not us.
    Lost,
    /// Not started before shutdown: left to another worker.
    Left,
    /// Its deadline passed while it waited in the backlog: never started.
    Expired,
}

/// Runs a worker until `shutdown` completes; then stops fetching, gives running calls the
/// shutdown grace, and withdraws from the registry. Returns an error if one of its loops died.
pub async fn run(
    config: WorkerConfig,
    queue: Arc<dyn JobQueue>,
    toolbox: Toolbox,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let metrics = Arc::new(WorkerMetrics::default());
    run_observed(config, queue, toolbox, metrics, shutdown).await
}

/// [`run`] counting into `metrics`, served with `/healthz` and `/readyz` on
/// `--admin-listen` when it is set (from before the first job until the worker returns; not
/// ready from the moment `shutdown` completes).
pub async fn run_observed(
    config: WorkerConfig,
    queue: Arc<dyn JobQueue>,
    toolbox: Toolbox,
    metrics: Arc<WorkerMetrics>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let admin = match config.admin_listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| RunError::AdminListen { addr, source })?;
            let pages: Arc<dyn switchboard_core::metrics::admin::AdminPages> = metrics.clone();
            let serve = switchboard_core::metrics::admin::serve(
                listener,
                pages,
                config.admin_header_timeout,
            );
            tracing::info!(%addr, "admin port listening (/metrics, /healthz, /readyz)");
            Some(tokio::spawn(serve))
        }
        None => None,
    };
    let queues = toolbox.queue_ids();
    let w = Arc::new(Worker {
        backlog: Backlog::new(
            Arc::new(Semaphore::new(config.concurrency)),
            config.backlog,
            config.running_cap_per_identity(),
        ),
        config,
        queue,
        toolbox,
        running: Mutex::new(HashMap::new()),
        tasks: TaskTracker::new(),
        metrics,
    });
    let _ = w.metrics.backlog_of.set(Arc::downgrade(&w.backlog));
    while let Err(e) = w.queue.prepare(&queues).await {
        tracing::warn!(error = %e, "cannot prepare the tool queues; retrying");
        tokio::time::sleep(RETRY_PAUSE).await;
    }
    tracing::info!(worker = %w.config.worker_id, queues = ?queues, "worker started");
    let stop = CancellationToken::new();
    let stop_cancels = CancellationToken::new();
    let mut announce = tokio::spawn(w.clone().announce_loop(stop.clone()));
    let mut fetch = tokio::spawn(w.clone().fetch_loop(stop.clone(), queues));
    let mut reclaim = tokio::spawn(w.clone().reclaim_loop(stop.clone()));
    let cancel = tokio::spawn(w.clone().cancel_loop(stop_cancels.clone()));
    // Queue depths are sampled only for an operator who looks at them.
    let sampler = admin
        .is_some()
        .then(|| tokio::spawn(w.clone().sample_loop(stop.clone())));
    let failed = tokio::select! {
        _ = shutdown => None,
        _ = &mut announce => Some("announce"),
        _ = &mut fetch => Some("fetch"),
        _ = &mut reclaim => Some("reclaim"),
    };
    w.metrics.stopping();
    match failed {
        Some(which) => tracing::error!(loop_name = which, "a worker loop stopped; shutting down"),
        None => tracing::info!(worker = %w.config.worker_id, "stopping: no new jobs"),
    }
    stop.cancel();
    for l in [announce, fetch, reclaim].into_iter().chain(sampler) {
        let _ = l.await;
    }
    // Jobs that did not start stop waiting (and heartbeating): other workers take them over.
    let left = w.backlog.len();
    w.backlog.close();
    if left > 0 {
        tracing::info!(jobs = left, "left the backlog's jobs to other workers");
    }
    w.tasks.close();
    if tokio::time::timeout(w.config.shutdown_grace, w.tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("shutdown grace over with calls still running; they will be reclaimed");
    }
    stop_cancels.cancel();
    let _ = cancel.await;
    let _ = w.queue.withdraw(&w.config.worker_id).await;
    if let Some(admin) = admin {
        admin.abort();
    }
    match failed {
        Some(which) => Err(RunError::LoopFailed(which)),
        None => Ok(()),
    }
}

impl Worker {
    async fn announce_loop(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(self.config.heartbeat);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                // Hosted tools came or went (an MCP server): say so now, not at the next beat.
                _ = self.toolbox.changed() => {}
                _ = stop.cancelled() => return,
            }
            let a = WorkerAnnouncement {
                worker_id: self.config.worker_id.clone(),
                tools: self.toolbox.specs(),
                expires_at_ms: now_ms()
                    + (self.config.heartbeat * REGISTRY_MISSES).as_millis() as u64,
                client: false,
            };
            let announced = self.queue.announce(&a).await;
            if let Err(e) = &announced {
                tracing::warn!(error = %e, "registry heartbeat failed");
            }
            self.metrics.registered(announced.is_ok());
            // Keeps the subscription connection (cancellations) reconnecting after an outage.
            if let Err(e) = self.queue.keepalive().await {
                tracing::debug!(error = %e, "backend keepalive failed");
            }
        }
    }

    /// Samples the depth of each hosted tool's queue every `--queue-sample-interval`.
    async fn sample_loop(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(self.config.queue_sample_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => return,
            }
            for (tool, queue) in self.toolbox.tools_and_queues() {
                match self.queue.depth(&queue).await {
                    Ok(Some(d)) => self.metrics.queue_depth(&tool, d.lag, d.pending),
                    Ok(None) => {}
                    Err(e) => tracing::debug!(error = %e, tool, "sampling a queue's depth failed"),
                }
            }
        }
    }

    /// Runs one fetch loop per group of the hosted tools' queues (`JobQueue::fetch_groups`:
    /// one group on a single Redis; one per slot on Redis Cluster, whose one read cannot span
    /// slots), and groups them again when the hosted tools change (an MCP server's come and
    /// go): a group loop that sees the change returns, the others end their current read
    /// (within `fetch_block`), and new loops start. Returns when `stop` is cancelled, or when a
    /// group loop panicked.
    async fn fetch_loop(self: Arc<Self>, stop: CancellationToken, prepared: Vec<String>) {
        // Queues made ready by `JobQueue::prepare`; tools added later (an MCP server's) are
        // prepared by their group's loop before their first fetch.
        let prepared = Arc::new(Mutex::new(
            prepared.into_iter().collect::<HashSet<String>>(),
        ));
        loop {
            let hosted = self.hosted_queues();
            let groups = self.queue.fetch_groups(&hosted);
            if groups.is_empty() {
                tokio::select! {
                    _ = tokio::time::sleep(TOOLS_BUSY_PAUSE) => continue,
                    _ = stop.cancelled() => return,
                }
            }
            let regroup = stop.child_token();
            let mut loops = tokio::task::JoinSet::new();
            for group in groups {
                loops.spawn(self.clone().fetch_group(
                    regroup.clone(),
                    hosted.clone(),
                    group,
                    prepared.clone(),
                ));
            }
            // The first loop to end (the tools changed, or `stop`) ends them all.
            let first = loops.join_next().await;
            regroup.cancel();
            let mut panicked = matches!(first, Some(Err(_)));
            while let Some(ended) = loops.join_next().await {
                panicked |= ended.is_err();
            }
            if panicked {
                tracing::error!("a fetch loop panicked");
                return;
            }
            if stop.is_cancelled() {
                return;
            }
        }
    }

    /// The queues of every hosted tool, sorted (what the fetch groups are made of).
    fn hosted_queues(&self) -> Vec<String> {
        let mut q = self.toolbox.queue_ids();
        q.sort();
        q
    }

    /// Fetches from the queues of one group (those whose tool has a free slot) while the
    /// backlog has room, until `stop` or until the hosted queues are no longer `hosted`.
    async fn fetch_group(
        self: Arc<Self>,
        stop: CancellationToken,
        hosted: Vec<String>,
        group: Vec<String>,
        prepared: Arc<Mutex<HashSet<String>>>,
    ) {
        let group: HashSet<String> = group.into_iter().collect();
        loop {
            let want = tokio::select! {
                n = self.backlog.room() => n,
                _ = stop.cancelled() => return,
            };
            if self.hosted_queues() != hosted {
                return; // regrouped by `fetch_loop`
            }
            // Only tools with a free slot of their own: jobs held here while their tool is busy
            // could run on another worker.
            let mut queues: Vec<String> = self
                .toolbox
                .queue_ids_with_room()
                .into_iter()
                .filter(|q| group.contains(q))
                .collect();
            let new: Vec<String> = {
                let prepared = prepared.lock().expect("poisoned");
                queues
                    .iter()
                    .filter(|q| !prepared.contains(*q))
                    .cloned()
                    .collect()
            };
            if !new.is_empty() {
                match self.queue.prepare(&new).await {
                    Ok(()) => prepared.lock().expect("poisoned").extend(new),
                    Err(e) => {
                        tracing::warn!(error = %e, queues = ?new, "cannot prepare new tool queues; retrying");
                        {
                            let prepared = prepared.lock().expect("poisoned");
                            queues.retain(|q| prepared.contains(q));
                        }
                        tokio::time::sleep(RETRY_PAUSE).await;
                    }
                }
            }
            if queues.is_empty() {
                tokio::select! {
                    _ = tokio::time::sleep(TOOLS_BUSY_PAUSE) => continue,
                    _ = stop.cancelled() => return,
                }
            }
            // Not raced against `stop`: dropping a read that Redis already answered would leave
            // its jobs with this worker until a reclaim. It ends within `fetch_block`.
            let fetched = self
                .queue
                .fetch(
                    &self.config.worker_id,
                    &queues,
                    want,
                    self.config.fetch_block,
                )
                .await;
            match fetched {
                Ok(jobs) => {
                    for job in jobs {
                        self.accept(job);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "fetching jobs failed");
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
            if stop.is_cancelled() {
                return;
            }
        }
    }

    /// Queues a fetched or reclaimed job in the backlog, in the order it came, and gives it a
    /// task of its own (which heartbeats until it ends).
    fn accept(self: &Arc<Self>, job: Job) {
        let w = self.clone();
        let Some(hosted) = self.hosted(&job) else {
            self.tasks.spawn(async move { w.release(&job).await });
            return;
        };
        let waiting = self
            .backlog
            .push(&job.owner, hosted.permits.clone(), job.deadline_ms);
        let span = execution_span(&self.config.worker_id, &job);
        self.tasks
            .spawn(async move { w.execute(job, waiting).await }.instrument(span));
    }

    /// The tool of this job's queue, if this worker hosts it.
    fn hosted(&self, job: &Job) -> Option<Arc<Hosted>> {
        self.toolbox
            .get(&job.tool)
            .filter(|h| h.queue_id == job.queue)
    }

    /// A job whose deadline passed before it started: failed, never run.
    async fn expired(&self, job: &Job) {
        self.metrics.job_ended(&job.tool, JobOutcome::Failed, None);
        self.finish(
            job,
            TaskStatus::Failed,
            Some(EXPIRED_UNSTARTED),
            CallToolResult::error(EXPIRED_UNSTARTED),
        )
        .await;
    }

    /// A job of a tool this worker does not host (any more: an MCP server's tools left, or a
    /// read in flight from before brought it): back to its queue, unrun, for a worker that
    /// hosts the tool (this one, should it come back) to take at its next reclaim. Past its
    /// deadline nobody would start it: it is failed here instead.
    async fn release(&self, job: &Job) {
        if now_ms() >= job.deadline_ms {
            return self.expired(job).await;
        }
        tracing::info!(tool = %job.tool, queue = %job.queue, task = %job.task_id, "not hosted here; releasing the job");
        if let Err(e) = self.queue.release(&self.config.worker_id, job).await {
            tracing::warn!(error = %e, task = %job.task_id, "releasing a job failed; a reclaim takes it once it has been idle for the visibility timeout");
        }
    }

    async fn reclaim_loop(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(self.config.visibility_timeout / 2);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => return,
            }
            // Read each round: an MCP server's tools come and go.
            let queues = self.toolbox.queue_ids();
            let reclaimed = self
                .queue
                .reclaim(
                    &self.config.worker_id,
                    &queues,
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
                        self.metrics
                            .job_ended(&job.tool, JobOutcome::Reclaimed, None);
                        self.accept(job);
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
                    tracing::warn!(missed = n, "missed cancellations (heartbeats re-check)");
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
        self.metrics.dead_lettered(&job.tool);
        self.metrics.job_ended(&job.tool, JobOutcome::Failed, None);
        self.finish(
            &job,
            TaskStatus::Failed,
            Some(&reason),
            CallToolResult::error(&reason),
        )
        .await;
    }

    /// Writes the outcome, retrying: `finish` is idempotent, and a job left unfinished would be
    /// run again by a reclaim.
    async fn finish(
        &self,
        job: &Job,
        status: TaskStatus,
        message: Option<&str>,
        result: CallToolResult,
    ) {
        let written = finish_retrying(
            &*self.queue,
            job,
            status,
            message,
            result,
            job.max_result_bytes,
        );
        if let Err(e) = written.await {
            tracing::error!(error = %e, task = %job.task_id, "could not record a call's outcome; the job will be reclaimed");
        }
    }

    /// Runs a job from the backlog (`waiting`: its place there) to its end.
    async fn execute(self: Arc<Self>, job: Job, waiting: Waiting) {
        let Some(hosted) = self.hosted(&job) else {
            return self.release(&job).await;
        };
        let now = now_ms();
        if now >= job.deadline_ms {
            return self.expired(&job).await;
        }
        // Registered before the status check, so a cancellation in between is not missed.
        let token = CancellationToken::new();
        self.running
            .lock()
            .expect("poisoned")
            .insert(job.task_id.clone(), token.clone());
        let status = self.queue.task_status(&job.task_id).await;
        let began = tokio::time::Instant::now();
        let ended = if let Ok(Some(TaskStatus::Working)) = status {
            Some(self.run_call(&job, &hosted, waiting, &token).await)
        } else {
            // Out of the backlog now, not once the outcome is written.
            drop(waiting);
            match status {
                Ok(Some(TaskStatus::Cancelled)) | Ok(None) => Some(Ended::Cancelled),
                Ok(Some(_)) => {
                    // Already finished (a slow worker's outcome arrived first): just acknowledge.
                    let why = "already finished";
                    Some(Ended::Answered(CallToolResult::error(why)))
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read a task's status; leaving the job for a reclaim");
                    None
                }
            }
        };
        self.running.lock().expect("poisoned").remove(&job.task_id);
        let counted = match &ended {
            Some(Ended::Answered(r)) if r.is_error => Some(JobOutcome::Error),
            Some(Ended::Answered(_)) => Some(JobOutcome::Ok),
            Some(Ended::TimedOut(_)) => Some(JobOutcome::Timeout),
            Some(Ended::Cancelled) => Some(JobOutcome::Cancelled),
            _ => None,
        };
        if let Some(outcome) = counted {
            self.metrics
                .job_ended(&job.tool, outcome, Some(began.elapsed()));
        }
        tracing::Span::current().record(
            "outcome",
            match &ended {
                Some(Ended::Answered(r)) if r.is_error => "error",
                Some(Ended::Answered(_)) => "ok",
                Some(Ended::TimedOut(_)) => "timeout",
                Some(Ended::Cancelled) => "cancelled",
                Some(Ended::Lost) => "lost",
                Some(Ended::Left) => "left",
                Some(Ended::Expired) => "expired",
                None => "failed",
            },
        );
        match ended {
            Some(Ended::Answered(result) | Ended::TimedOut(result)) => {
                self.finish(&job, TaskStatus::Completed, None, result).await
            }
            Some(Ended::Cancelled) => {
                let why = "cancelled";
                self.finish(
                    &job,
                    TaskStatus::Cancelled,
                    Some(why),
                    CallToolResult::error(why),
                )
                .await;
            }
            Some(Ended::Lost) => {
                tracing::warn!(task = %job.task_id, "another worker took this job over; stopped running it");
            }
            Some(Ended::Left) => {
                tracing::debug!(task = %job.task_id, "shutting down: left a job that did not start");
            }
            Some(Ended::Expired) => self.expired(&job).await,
            None => {}
        }
    }

    /// Waits for the job's turn in the backlog, then runs the call under its slots,
    /// heartbeating throughout, until it ends.
    async fn run_call(
        &self,
        job: &Job,
        hosted: &Hosted,
        mut waiting: Waiting,
        token: &CancellationToken,
    ) -> Ended {
        let (progress_tx, progress_rx) = mpsc::channel(PROGRESS_QUEUE);
        let ctx = CallContext::new(
            self.config.worker_id.clone(),
            job.task_id.clone(),
            progress_tx,
        );
        let forward = tokio::spawn(forward_progress(self.queue.clone(), progress_rx));
        let deadline = tokio::time::Instant::now()
            + Duration::from_millis(job.deadline_ms.saturating_sub(now_ms()));
        let beat = self.config.visibility_timeout / 3;
        let mut heartbeat = tokio::time::interval(beat);
        heartbeat.tick().await;
        let mut failed_beats = 0u32;
        let started = AtomicBool::new(false);
        let ended = {
            let run = async {
                // The ticket (slots, owner's count) is held until the call's future is gone.
                let _ticket = waiting.ticket().await?;
                started.store(true, Ordering::Relaxed);
                let _running = Running::new(&self.metrics);
                Some(hosted.tool.call(job.arguments.clone(), &ctx).await)
            };
            tokio::pin!(run);
            loop {
                tokio::select! {
                    result = &mut run => break match result {
                        Some(result) => Ended::Answered(result),
                        None => Ended::Left,
                    },
                    _ = token.cancelled() => break Ended::Cancelled,
                    _ = tokio::time::sleep_until(deadline) => {
                        if !started.load(Ordering::Relaxed) {
                            break Ended::Expired;
                        }
                        break Ended::TimedOut(CallToolResult::error(format!(
                            "timed out after {} ms",
                            hosted.spec.timeout_ms
                        )));
                    }
                    _ = heartbeat.tick() => {
                        match self.queue.extend(&self.config.worker_id, job).await {
                            Ok(true) => failed_beats = 0,
                            Ok(false) => break Ended::Lost,
                            Err(e) => {
                                failed_beats += 1;
                                tracing::warn!(error = %e, failed_beats, "job heartbeat failed");
                                // Two missed beats: another worker may be taking it over now.
                                if failed_beats >= 2 {
                                    break Ended::Lost;
                                }
                            }
                        }
                        if let Ok(Some(TaskStatus::Cancelled)) = self.queue.task_status(&job.task_id).await {
                            break Ended::Cancelled;
                        }
                    }
                }
            }
        };
        // The call's future is gone (a command's process group with it); close its progress.
        drop(ctx);
        let _ = forward.await;
        ended
    }
}

/// Counts a running call in `switchboard_worker_running` while it lives.
struct Running<'a>(&'a WorkerMetrics);

impl<'a> Running<'a> {
    fn new(metrics: &'a WorkerMetrics) -> Self {
        metrics.running.inc();
        Running(metrics)
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.running.dec();
    }
}

async fn forward_progress(queue: Arc<dyn JobQueue>, mut rx: mpsc::Receiver<Progress>) {
    while let Some(p) = rx.recv().await {
        if let Err(e) = queue.progress(&p).await {
            tracing::debug!(error = %e, "progress report lost");
        }
    }
}

/// The span of one job's execution, a child of the gateway's `tools/call` span when the job
/// carries its trace context; none with tracing off (`switchboard_telemetry`).
fn execution_span(worker: &str, job: &Job) -> tracing::Span {
    if !switchboard_telemetry::tracing_enabled() {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        parent: None,
        "execute",
        otel.name = format!("execute {}", job.tool),
        otel.kind = "consumer",
        worker = worker,
        tool = %job.tool,
        task = %job.task_id,
        deliveries = job.deliveries,
        outcome = tracing::field::Empty,
    );
    switchboard_telemetry::continue_trace(&span, &job.trace.traceparent, &job.trace.tracestate);
    span
}
