//! `tools/list` and `tools/call`.
//!
//! The caller sees and calls only the tools its [`Access`] allows (the node's tool rules plus
//! its token's `tools` grant); a refusal (-32002) comes before the tool is looked up, so it
//! says nothing about whether the tool exists.
//!
//! A call is checked here (known tool, arguments valid against its schema, the connection's
//! in-flight limit), hashed (`switchboard_core::callhash`), and submitted to the call plane,
//! which answers from the cache, joins an identical call in flight, or queues a job. Waiting
//! happens in a task of its own, so a socket can have many calls in flight; the reply goes out
//! through the connection's queue when the execution's task record says it is done, or -32005
//! at the call's deadline. With `task` in the params the reply is the task at once, and
//! `tasks/result` collects the outcome later, from any node (`tasks.rs`).

use std::sync::Arc;
use std::time::Duration;

use serde_json::value::RawValue;
use serde_json::{Value, json};
use switchboard_core::callhash::call_hash_of;
use switchboard_core::calls::{CapReached, OwnerCaps, Submission, Submitted, TraceContext};
use switchboard_core::clock::now_ms;
use switchboard_core::sessions::OwedRequest;
use switchboard_core::tasks::{new_task_id, session_task_id, tagged_task_id};
use switchboard_protocol::methods::Method;
use switchboard_protocol::methods::tools::{
    CallParams, CallResult, CreateTaskResult, META_CACHE, META_PROGRESS_TOKEN, ToolsCall,
    ToolsList, ToolsListResult,
};
use switchboard_protocol::{ErrorCode, RpcError};
use tracing::Instrument;

use super::access::Access;
use super::caller::Caller;
use super::encode::{Reply, encode, encode_later, params};
use crate::calls::catalog::CatalogCell;
use crate::calls::inflight::InFlight;
use crate::calls::outcome::{Outcomes, result_for, send_later};
use crate::metrics::{CallOutcome, Metrics};
use crate::sessions::{LiveSession, Sessions};
use crate::transport::Sender;

/// A task outlives its call's deadline and grace by at least this much.
const TASK_TTL_MARGIN_MS: u64 = 5_000;

/// How calls are bounded (from the node's configuration).
#[derive(Debug, Clone, Copy)]
pub(crate) struct CallSettings {
    /// Requests one connection may have waiting in tasks of their own (-32006 over it).
    pub(crate) max_inflight: usize,
    /// A task's ttl when the caller asks for none.
    pub(crate) task_ttl: Duration,
    /// The longest task ttl a caller may ask for.
    pub(crate) max_task_ttl: Duration,
    /// How long past a tool's timeout a caller waits for the worker's answer before -32005.
    pub(crate) deadline_grace: Duration,
    /// What one identity may hold across the cluster (calls in flight, stored tasks, bytes).
    pub(crate) caps: OwnerCaps,
    /// The largest `arguments` of a call, as JSON (-32007 over it).
    pub(crate) max_args_bytes: usize,
    /// The largest result a worker stores for a call (a bigger one becomes `isError`).
    pub(crate) max_result_bytes: u64,
}

/// How a call may use the cache (`_meta["switchboard/cache"]`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum CacheMode {
    Use,
    /// Skip reading the cache and do not write it.
    Bypass,
    /// Skip reading the cache; write the fresh result.
    Refresh,
}

/// The `tools/*` methods and the handles they need.
pub(crate) struct Tools {
    pub(crate) access: Arc<Access>,
    pub(crate) catalog: Arc<CatalogCell>,
    pub(crate) outcomes: Arc<Outcomes>,
    pub(crate) sessions: Arc<Sessions>,
    pub(crate) settings: CallSettings,
    /// Calls by tool and outcome, their durations, the calls in flight.
    pub(crate) metrics: Arc<Metrics>,
}

impl Tools {
    /// Routes `tools/list`, `tools/call` (`None`: not one of them).
    pub(crate) fn route(
        &self,
        caller: &Caller,
        id: Option<&RawValue>,
        method: &str,
        raw: Option<&RawValue>,
    ) -> Option<Reply> {
        Some(match method {
            ToolsList::NAME => encode(id, &self.list(caller)),
            ToolsCall::NAME => params::<ToolsCall>(raw)
                .and_then(|p| self.call(caller, id, p))
                .and_then(|r| encode_later(id, r)),
            _ => return None,
        })
    }

    /// Counts a `tools/call` refused for its identity's rate (`rejected`), under its tool's
    /// name when that is a tool of the catalogue.
    pub(crate) fn rate_limited(&self, raw: Option<&RawValue>) {
        #[derive(serde::Deserialize)]
        struct Named<'a> {
            #[serde(borrow)]
            name: std::borrow::Cow<'a, str>,
        }
        let Some(named) = raw.and_then(|r| serde_json::from_str::<Named<'_>>(r.get()).ok()) else {
            return;
        };
        if let Some(tool) = self.catalog.get().tools.get(named.name.as_ref()) {
            self.metrics
                .call_ended(tool.metric_label(), CallOutcome::Rejected, None);
        }
    }

    /// `tools/list`: the tools live workers announce that the caller may call.
    pub(crate) fn list(&self, caller: &Caller) -> ToolsListResult {
        let catalog = self.catalog.get();
        ToolsListResult {
            tools: catalog
                .tools
                .values()
                .filter(|t| self.access.may_call(caller, &t.spec.name))
                .map(|t| t.spec.mcp())
                .collect(),
        }
    }

    /// `tools/call`: starts a call. `Ok(None)`: the reply will be queued by the call's own
    /// task (a call sent as a notification runs and is answered to nobody).
    pub(crate) fn call(
        &self,
        caller: &Caller,
        id: Option<&RawValue>,
        p: CallParams,
    ) -> Result<Option<CallResult>, RpcError> {
        let received = tokio::time::Instant::now();
        let catalog = self.catalog.get();
        // Before the lookup: a refusal says nothing about whether the tool exists (the
        // metrics, for the operator, name only tools that do).
        if let Err(e) = self.access.tool(caller, &p.name) {
            if let Some(tool) = catalog.tools.get(&p.name) {
                self.metrics
                    .call_ended(tool.metric_label(), CallOutcome::Rejected, None);
            }
            return Err(e);
        }
        let Some(tool) = catalog.tools.get(&p.name).cloned() else {
            return Err(RpcError::invalid_params(format!(
                "unknown tool: {}",
                p.name.chars().take(128).collect::<String>()
            )));
        };
        let arguments = p.arguments.unwrap_or_else(|| json!({}));
        let cfg = &self.settings;
        let args_bytes = serde_json::to_vec(&arguments).map_or(0, |v| v.len());
        if args_bytes > cfg.max_args_bytes {
            return Err(RpcError::new(
                ErrorCode::TooLarge,
                format!(
                    "arguments of {args_bytes} bytes are over the limit of {} (maxCallArgsBytes)",
                    cfg.max_args_bytes
                ),
            ));
        }
        tool.check(&arguments)
            .map_err(|why| RpcError::invalid_params(format!("invalid arguments: {why}")))?;
        let meta = p.meta.unwrap_or_default();
        let mode = match meta.get(META_CACHE).and_then(Value::as_str) {
            None | Some("use") => CacheMode::Use,
            Some("bypass") => CacheMode::Bypass,
            Some("refresh") => CacheMode::Refresh,
            Some(_) => {
                return Err(RpcError::invalid_params(
                    "_meta.switchboard/cache must be use, bypass or refresh",
                ));
            }
        };
        let progress_token = meta.get(META_PROGRESS_TOKEN).cloned();
        let spec = &tool.spec;
        // A task lives at least until its call's deadline (plus the grace), or its callers
        // would lose the outcome of a call that is still running.
        let task_ttl_ms = p
            .task
            .as_ref()
            .and_then(|t| t.ttl)
            .unwrap_or(cfg.task_ttl.as_millis() as u64)
            .clamp(1, cfg.max_task_ttl.as_millis() as u64)
            .max(spec.timeout_ms + cfg.deadline_grace.as_millis() as u64 + TASK_TTL_MARGIN_MS);

        let owner = caller.owner().to_owned();
        let call_hash = call_hash_of(&tool.digest, spec.cache.scope, &arguments, &owner);
        // The task id carries the call's tag (all of a call's keys share a slot); a session's
        // call is also found by its derived name, from any node.
        let alias = match (&caller.task_seed, id) {
            (Some(session), Some(i)) => Some(session_task_id(session, i.get())),
            _ => None,
        };
        let task_id = match &alias {
            Some(name) => tagged_task_id(&call_hash, name),
            None => new_task_id(&call_hash),
        };
        // A call sent as a notification counts too, under a key no request id can have.
        let request_key = match id {
            Some(i) => i.get().to_owned(),
            None => format!("notification:{task_id}"),
        };
        if let Err(e) = caller.calls.track(&request_key, &task_id, cfg.max_inflight) {
            self.metrics
                .call_ended(tool.metric_label(), CallOutcome::Rejected, None);
            return Err(e);
        }
        let submission = Submission {
            call_hash,
            queue: tool.queue.clone(),
            tool: spec.clone(),
            arguments,
            task_id,
            alias,
            owner,
            identity: caller.cap_identity(),
            read_cache: mode == CacheMode::Use && spec.cache.enabled(),
            cache_ttl_ms: if mode == CacheMode::Bypass {
                0
            } else {
                spec.cache.ttl_ms
            },
            task_ttl_ms,
            poll_interval_ms: self.outcomes.poll.as_millis() as u64,
            deadline_ms: now_ms() + spec.timeout_ms,
            caps: cfg.caps,
            max_result_bytes: cfg.max_result_bytes,
            // The request's span (`crate::traced`): the worker's execution joins its trace.
            trace: switchboard_telemetry::trace_headers(&tracing::Span::current())
                .map(|h| TraceContext {
                    traceparent: h.traceparent,
                    tracestate: h.tracestate,
                })
                .unwrap_or_default(),
        };
        let call = PendingCall {
            outcomes: self.outcomes.clone(),
            sessions: self.sessions.clone(),
            deadline_grace: cfg.deadline_grace,
            live: caller.live.clone(),
            tx: caller.link.tx.clone(),
            id: id.map(RawValue::to_owned),
            request_key,
            in_flight: caller.calls.clone(),
            progress_token,
            task_mode: p.task.is_some(),
            metrics: self.metrics.clone(),
            metric_label: tool.metric_label().to_owned(),
            received,
        };
        // The call's task stays in the request's span until the reply (a no-op span with
        // tracing off).
        tokio::spawn(call.run(submission).instrument(tracing::Span::current()));
        Ok(None)
    }
}

/// -32006 for a call refused because its caller is at one of its caps, naming it.
fn cap_reached(cap: CapReached, caps: &OwnerCaps) -> RpcError {
    let (max, what) = match cap {
        CapReached::Running => (caps.max_running, "calls in flight"),
        CapReached::Tasks => (caps.max_tasks, "stored tasks"),
        CapReached::TaskBytes => (caps.max_task_bytes, "bytes of stored results"),
    };
    RpcError::new(
        ErrorCode::Overloaded,
        format!("too many {what} for this identity (at most {max}); try again later"),
    )
    .with_data(json!({"limit": cap.name(), "max": max}))
}

/// A call between submission and reply.
struct PendingCall {
    outcomes: Arc<Outcomes>,
    sessions: Arc<Sessions>,
    deadline_grace: Duration,
    /// The session, owed the reply while the call runs.
    live: Option<Arc<LiveSession>>,
    tx: Sender,
    /// `None` for a call sent as a notification: it runs, nobody is answered.
    id: Option<Box<RawValue>>,
    request_key: String,
    in_flight: InFlight,
    progress_token: Option<Value>,
    task_mode: bool,
    metrics: Arc<Metrics>,
    /// The call's `tool` label (`CatalogTool::metric_label`).
    metric_label: String,
    /// When the node received the call.
    received: tokio::time::Instant,
}

/// Counts a call in flight from its submission until it is dropped.
struct InFlightGauge(Arc<Metrics>);

impl InFlightGauge {
    fn new(metrics: &Arc<Metrics>) -> Self {
        metrics.calls_in_flight.inc();
        InFlightGauge(metrics.clone())
    }
}

impl Drop for InFlightGauge {
    fn drop(&mut self) {
        self.0.calls_in_flight.dec();
    }
}

/// The outcome label of a call that waited for its execution.
fn waited_outcome(reply: &Result<CallResult, RpcError>) -> CallOutcome {
    match reply {
        Ok(CallResult::Done(r)) if r.is_error => CallOutcome::Error,
        Ok(_) => CallOutcome::Ok,
        Err(e) if e.code == ErrorCode::Timeout.code() => CallOutcome::Timeout,
        Err(_) => CallOutcome::Failed,
    }
}

impl PendingCall {
    async fn run(self, submission: Submission) {
        let _in_flight = InFlightGauge::new(&self.metrics);
        let ended = |outcome: CallOutcome| {
            self.metrics
                .call_ended(&self.metric_label, outcome, Some(self.received.elapsed()));
        };
        let deadline = tokio::time::Instant::now()
            + Duration::from_millis(submission.deadline_ms.saturating_sub(now_ms()))
            + self.deadline_grace;
        let calls = &self.outcomes.calls;
        // Watched before it is submitted: a fast execution may report progress before the
        // submission's answer is back (a call that joins another is watched anew below).
        let progress = self.progress_token.clone().map(|t| (t, self.tx.clone()));
        let early = self
            .outcomes
            .watch_leader(&submission.task_id, progress.clone());
        let submitted = calls.submit(&submission).await;
        // A `notifications/cancelled` that arrived while the call was being submitted found no
        // task to cancel yet: cancel it now.
        if let Ok(s) = &submitted
            && !self.in_flight.contains(&self.request_key)
        {
            if let Some(record) = s.record()
                && let Err(e) = calls.cancel(record).await
            {
                tracing::warn!(error = %e, "cancelling a call failed");
            }
            ended(CallOutcome::Cancelled);
            return;
        }
        let mut owed_by = None;
        let cache = match &submitted {
            Ok(Submitted::Cached(_)) => "hit",
            Ok(Submitted::Joined(_)) => "joined",
            Ok(Submitted::Leader(_)) => "miss",
            Ok(Submitted::Refused(_)) => "refused",
            Err(_) => "unavailable",
        };
        tracing::Span::current().record("cache", cache);
        let reply = match submitted {
            Err(e) => {
                tracing::warn!(error = %e, "submitting a call failed");
                ended(CallOutcome::Failed);
                Err(RpcError::backend_unavailable())
            }
            Ok(Submitted::Refused(cap)) => {
                ended(CallOutcome::Rejected);
                Err(cap_reached(cap, &submission.caps))
            }
            // Its outcome is collected later (`tasks/result`): counted as accepted.
            Ok(s) if self.task_mode => {
                ended(CallOutcome::Ok);
                Ok(CallResult::Task(CreateTaskResult {
                    task: s.record().expect("not refused").mcp(),
                }))
            }
            Ok(Submitted::Cached(rec)) => {
                ended(CallOutcome::Cached);
                Ok(CallResult::Done(result_for(&rec, &rec, true)))
            }
            Ok(s) => {
                let rec = s.record().expect("not refused").clone();
                let watched = match rec.leader {
                    Some(_) => {
                        drop(early);
                        self.outcomes.watch(&rec, progress)
                    }
                    None => early,
                };
                if let (Some(live), Some(id)) = (&self.live, &self.id) {
                    let owed = OwedRequest {
                        raw_id: id.get().to_owned(),
                        task_id: rec.task_id.clone(),
                        deadline_ms: submission.deadline_ms,
                    };
                    self.sessions.owe(live, &owed).await;
                    owed_by = Some(live.clone());
                }
                let waiting = self.outcomes.wait_watched(&watched, &rec, Some(deadline));
                let reply = tokio::select! {
                    outcome = waiting => outcome.map(|done| CallResult::Done(result_for(&rec, &done, false))),
                    // The socket is gone: stop waiting. The task stays in the backend for
                    // `tasks/result` from anywhere.
                    _ = self.tx.closed() => {
                        ended(CallOutcome::Cancelled);
                        return;
                    }
                };
                ended(match (rec.leader.is_some(), waited_outcome(&reply)) {
                    // Joined an identical call in flight; its timeouts and failures are its own.
                    (true, CallOutcome::Ok | CallOutcome::Error) => CallOutcome::Coalesced,
                    (_, outcome) => outcome,
                });
                reply
            }
        };
        // A call cancelled by `notifications/cancelled` gets no reply (MCP); nor does one whose
        // id was meanwhile reused by a newer request.
        let still_wanted = self
            .in_flight
            .untrack(&self.request_key, &submission.task_id);
        if let (true, Some(id)) = (still_wanted, &self.id) {
            send_later(&self.tx, owed_by, id, reply).await;
        }
    }
}
