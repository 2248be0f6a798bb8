//! The worker's metrics and readiness, served on `--admin-listen` by
//! `switchboard_core::metrics::admin` (the same negotiation and process metrics as a
//! gateway's). Tool labels are the names of the tools this worker hosts.
//!
//! Ready (`/readyz` 200, `switchboard_worker_ready` 1) while the worker's last registry
//! announcement reached the backend and it is not shutting down: 503 when Redis is unreachable
//! (the announcement failed) and from the moment shutdown begins, while running calls finish.

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{OnceLock, Weak};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use switchboard_core::metrics::admin::AdminPages;
use switchboard_core::metrics::{Format, process};

use crate::backlog::Backlog;

/// `{tool}`.
type ToolLabel = [(&'static str, Cow<'static, str>); 1];
/// `{tool, outcome}`.
type ToolOutcome = [(&'static str, Cow<'static, str>); 2];

/// Buckets of job durations, in seconds: 5 ms to 10 minutes.
const JOB_BUCKETS: [f64; 15] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 600.0,
];

/// How a job ended on this worker (`switchboard_worker_jobs_total{outcome}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobOutcome {
    Ok,
    /// The tool answered with `isError`.
    Error,
    /// Not run: its deadline passed before it started, dead-lettered.
    Failed,
    Timeout,
    Cancelled,
    /// Taken over from a silent worker (counted when taken, besides how it then ends).
    Reclaimed,
}

impl JobOutcome {
    fn label(self) -> &'static str {
        match self {
            JobOutcome::Ok => "ok",
            JobOutcome::Error => "error",
            JobOutcome::Failed => "failed",
            JobOutcome::Timeout => "timeout",
            JobOutcome::Cancelled => "cancelled",
            JobOutcome::Reclaimed => "reclaimed",
        }
    }
}

/// See the module docs.
pub struct WorkerMetrics {
    registry: Registry,
    jobs: Family<ToolOutcome, Counter>,
    job_duration: Family<ToolLabel, Histogram, fn() -> Histogram>,
    pub(crate) running: Gauge,
    backlog: Gauge,
    queue_pending: Family<ToolLabel, Gauge>,
    queue_lag: Family<ToolLabel, Gauge>,
    dead_letters: Family<ToolLabel, Counter>,
    ready: Gauge,
    /// The last announcement reached the backend.
    registered: AtomicBool,
    stopping: AtomicBool,
    /// The runner's backlog, read at each scrape.
    pub(crate) backlog_of: OnceLock<Weak<Backlog>>,
}

impl std::fmt::Debug for WorkerMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerMetrics").finish_non_exhaustive()
    }
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        Self::new(|_| {})
    }
}

impl WorkerMetrics {
    /// The worker's metrics plus what `extra` registers (the backend's own).
    pub fn new(extra: impl FnOnce(&mut Registry)) -> Self {
        let mut m = WorkerMetrics {
            registry: Registry::default(),
            jobs: Family::default(),
            job_duration: Family::new_with_constructor(|| Histogram::new(JOB_BUCKETS)),
            running: Gauge::default(),
            backlog: Gauge::default(),
            queue_pending: Family::default(),
            queue_lag: Family::default(),
            dead_letters: Family::default(),
            ready: Gauge::default(),
            registered: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            backlog_of: OnceLock::new(),
        };
        let r = &mut m.registry;
        process::register(r, env!("CARGO_PKG_VERSION"));
        r.register(
            "switchboard_worker_jobs",
            "Jobs this worker ended, by tool and outcome (ok, error: an isError result, failed, \
             timeout, cancelled; reclaimed: taken over from a silent worker)",
            m.jobs.clone(),
        );
        r.register(
            "switchboard_worker_job_duration_seconds",
            "Jobs from their start on this worker to their end",
            m.job_duration.clone(),
        );
        r.register(
            "switchboard_worker_running",
            "Jobs running on this worker",
            m.running.clone(),
        );
        r.register(
            "switchboard_worker_backlog",
            "Jobs fetched by this worker and waiting for a slot",
            m.backlog.clone(),
        );
        r.register(
            "switchboard_queue_pending_jobs",
            "Jobs in the tool's queue not finished: not yet delivered plus delivered and \
             running (sampled every --queue-sample-interval)",
            m.queue_pending.clone(),
        );
        r.register(
            "switchboard_queue_lag_jobs",
            "Jobs in the tool's queue not yet delivered to any worker (sampled)",
            m.queue_lag.clone(),
        );
        r.register(
            "switchboard_dead_letters",
            "Jobs this worker dead-lettered after too many deliveries",
            m.dead_letters.clone(),
        );
        r.register(
            "switchboard_worker_ready",
            "1 while the worker is registered (Redis reachable) and not shutting down",
            m.ready.clone(),
        );
        extra(r);
        m
    }

    fn tool(tool: &str) -> ToolLabel {
        [("tool", Cow::Owned(tool.to_owned()))]
    }

    /// Counts a job's end, and its duration when it ran.
    pub fn job_ended(&self, tool: &str, outcome: JobOutcome, ran: Option<std::time::Duration>) {
        self.jobs
            .get_or_create(&[
                ("tool", Cow::Owned(tool.to_owned())),
                ("outcome", Cow::Borrowed(outcome.label())),
            ])
            .inc();
        if let Some(d) = ran {
            self.job_duration
                .get_or_create(&Self::tool(tool))
                .observe(d.as_secs_f64());
        }
    }

    pub fn dead_lettered(&self, tool: &str) {
        self.dead_letters.get_or_create(&Self::tool(tool)).inc();
    }

    /// A sampled depth of `tool`'s queue; a lag Redis could not tell (`None`) keeps the last
    /// one sampled (an unknown lag is not an empty queue).
    pub fn queue_depth(&self, tool: &str, lag: Option<u64>, pending: u64) {
        let l = Self::tool(tool);
        let lag_gauge = self.queue_lag.get_or_create(&l);
        let lag = match lag {
            Some(lag) => {
                lag_gauge.set(i64::try_from(lag).unwrap_or(i64::MAX));
                lag
            }
            None => u64::try_from(lag_gauge.get()).unwrap_or(0),
        };
        drop(lag_gauge);
        self.queue_pending
            .get_or_create(&l)
            .set(i64::try_from(lag.saturating_add(pending)).unwrap_or(i64::MAX));
    }

    /// Whether the last announcement reached the backend.
    pub fn registered(&self, ok: bool) {
        self.registered.store(ok, Ordering::Relaxed);
        self.update_ready();
    }

    /// Shutdown began: not ready from now on.
    pub fn stopping(&self) {
        self.stopping.store(true, Ordering::Relaxed);
        self.update_ready();
    }

    fn update_ready(&self) {
        self.ready.set(i64::from(self.ready().is_ok()));
    }
}

impl AdminPages for WorkerMetrics {
    fn metrics(&self, format: Format) -> String {
        if let Some(b) = self.backlog_of.get().and_then(Weak::upgrade) {
            self.backlog.set(b.len() as i64);
        }
        switchboard_core::metrics::render(&self.registry, format)
    }

    fn ready(&self) -> Result<(), &'static str> {
        if self.stopping.load(Ordering::Relaxed) {
            Err("shutting down\n")
        } else if !self.registered.load(Ordering::Relaxed) {
            Err("not registered: backend unreachable\n")
        } else {
            Ok(())
        }
    }
}
