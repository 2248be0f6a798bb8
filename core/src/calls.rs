//! The call plane's vocabulary: what a gateway hands to workers and learns back, and what a
//! worker takes, keeps and finishes. The two sides meet only in the backend
//! ([`crate::backend::CallPlane`] for gateways, [`crate::backend::JobQueue`] for workers).
//!
//! The stored task is the truth; signals (a call finished, progress) only wake waiters up, so a
//! lost signal costs latency, never the answer.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use switchboard_protocol::methods::tasks::TaskStatus;

use crate::tasks::TaskRecord;
use crate::tools::ToolSpec;

/// A call, ready to be routed.
#[derive(Debug, Clone)]
pub struct Submission {
    pub tool: ToolSpec,
    /// The tool version's queue (`ToolSpec::queue_id`, computed once per tool).
    pub queue: String,
    pub arguments: Value,
    pub call_hash: String,
    /// The caller's new task id (`crate::tasks::new_task_id`: it carries the call's tag).
    pub task_id: String,
    /// Another name the task is found by (`TaskRecord` reads with it answer the task): the
    /// MCP session-derived name of the request (`crate::tasks::session_task_id`), which a node
    /// that never saw the call can compute. `None`: the id only.
    pub alias: Option<String>,
    pub owner: String,
    /// Who the caps and the workers' fair shares count against: the owner, or for an anonymous
    /// caller `anonymous@<its address>` (anonymous callers are told apart by address only).
    pub identity: String,
    /// Answer from the cache if it holds the result.
    pub read_cache: bool,
    /// How long to cache a successful result (0: not at all).
    pub cache_ttl_ms: u64,
    pub task_ttl_ms: u64,
    pub poll_interval_ms: u64,
    /// Unix ms after which nobody waits for the result and the job is not started.
    pub deadline_ms: u64,
    /// What the owner may hold (checked and counted by the backend, cluster-wide).
    pub caps: OwnerCaps,
    /// The largest result the execution may store (a bigger one becomes an `isError` result).
    pub max_result_bytes: u64,
    /// The W3C trace context of the gateway's span for the call, carried in the job so the
    /// worker's execution joins the same trace. Empty with tracing off.
    pub trace: TraceContext,
}

/// A W3C trace context (`traceparent`, `tracestate`) as it travels in a job: both empty when
/// the submitting gateway does not export traces.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceContext {
    pub traceparent: String,
    pub tracestate: String,
}

/// What one identity (a submission's owner) may hold across the cluster; 0: no cap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OwnerCaps {
    /// Executions it started that have not finished (queued or running, task mode or not).
    /// Calls answered from the cache or joined to an identical one in flight do not count.
    pub max_running: u64,
    /// Tasks stored for it (every call stores one, until its ttl).
    pub max_tasks: u64,
    /// Bytes of results stored in its tasks. Checked when a call is submitted; a result counts
    /// once it is stored, so the identity may go over by its running executions' results.
    pub max_task_bytes: u64,
}

/// Which of an owner's caps a submission reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapReached {
    Running,
    Tasks,
    TaskBytes,
}

impl CapReached {
    /// The cap's name in errors, `hello`'s `limits` and the docs.
    pub fn name(self) -> &'static str {
        match self {
            CapReached::Running => "maxCallsInFlightPerIdentity",
            CapReached::Tasks => "maxTasksPerIdentity",
            CapReached::TaskBytes => "maxTaskBytesPerIdentity",
        }
    }

    /// From the backend's word for it.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "running" => Some(CapReached::Running),
            "tasks" => Some(CapReached::Tasks),
            "bytes" => Some(CapReached::TaskBytes),
            _ => None,
        }
    }
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
    /// Refused: the owner is at one of its caps. Nothing was stored or queued.
    Refused(CapReached),
    /// Answered from the cache (status completed, result set).
    Cached(TaskRecord),
    /// A new execution was queued; the caller's task leads it.
    Leader(TaskRecord),
    /// An identical call was in flight; the caller's task follows it (`leader` set).
    Joined(TaskRecord),
}

impl Submitted {
    /// The caller's task, unless refused.
    pub fn record(&self) -> Option<&TaskRecord> {
        match self {
            Submitted::Cached(r) | Submitted::Leader(r) | Submitted::Joined(r) => Some(r),
            Submitted::Refused(_) => None,
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
    /// The tools are offered by a client's socket through the gateway holding it
    /// (`tools/register`), not by a worker: a worker's tool of the same name wins.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub client: bool,
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
    /// Who submitted the execution (the leader's `Submission::identity`):
    /// workers share their slots fairly between owners. Empty for a job queued before jobs
    /// carried it (one shared identity).
    pub owner: String,
    pub call_hash: String,
    pub arguments: Value,
    pub deadline_ms: u64,
    pub cache_ttl_ms: u64,
    /// The largest result the worker may store; a bigger one is replaced by an `isError`
    /// result saying so. [`DEFAULT_MAX_RESULT_BYTES`] for a job queued before jobs carried it.
    pub max_result_bytes: u64,
    /// How many times the job has been handed to a worker, this time included.
    pub deliveries: u64,
    /// The submitting span's trace context (empty: none).
    pub trace: TraceContext,
}

/// Why a job whose deadline passed before anyone started it ends failed (a worker, a gateway
/// delivering to a client's offered tool, the embedded backend's sweep).
pub const EXPIRED_UNSTARTED: &str = "the call's deadline passed before it started";

/// The largest result stored by default (`--max-result-bytes`).
pub const DEFAULT_MAX_RESULT_BYTES: u64 = 1024 * 1024;

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
