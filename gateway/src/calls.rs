//! `tools/list`, `tools/call`, `tasks/get`, `tasks/result`, `tasks/cancel` and the
//! `notifications/cancelled` notification.
//!
//! A call is checked here (known tool, arguments valid against its schema, the connection's
//! in-flight limit), hashed, and submitted to the backend, which answers from the cache, joins an
//! identical call in flight, or queues a job. Waiting happens in a task of its own, so a socket
//! can have many calls in flight; the reply goes out through the connection's queue when the
//! execution's task record says it is done, or -32005 at the call's deadline. With `task` in
//! the params the reply is the task at once, and `tasks/result` collects the outcome later,
//! from any node.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::conn::OutTx;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};
use switchboard_core::callhash::call_hash_of;
use switchboard_core::calls::{Submission, Submitted};
use switchboard_core::sessions::OwedRequest;
use switchboard_core::tasks::{TaskRecord, TaskStatus, new_task_id, now_ms};
use switchboard_core::tools::CallToolResult;
use switchboard_core::wire::{self, ErrorCode, RpcError};

use crate::conn::Out;
use crate::dispatch::ConnState;
use crate::node::Node;
use crate::sessions::{self, LiveSession, OwedReply};

/// Requests of one connection waiting in tasks of their own: request id (raw JSON) -> the
/// caller's task id (`tools/call`), or "" (`tasks/result`, which waits but owns no execution).
pub(crate) type InFlight = Arc<Mutex<HashMap<String, String>>>;

/// How a call may use the cache (`_meta["switchboard/cache"]`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum CacheMode {
    Use,
    /// Skip reading the cache and do not write it.
    Bypass,
    /// Skip reading the cache; write the fresh result.
    Refresh,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CallParams {
    name: String,
    #[serde(default)]
    arguments: Option<Value>,
    #[serde(default, rename = "_meta")]
    meta: Option<Map<String, Value>>,
    #[serde(default)]
    task: Option<TaskParams>,
}

#[derive(Deserialize)]
struct TaskParams {
    #[serde(default)]
    ttl: Option<u64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TaskIdParams {
    task_id: String,
}

/// A task outlives its call's deadline and grace by at least this much.
const TASK_TTL_MARGIN_MS: u64 = 5_000;

fn backend_unavailable() -> RpcError {
    RpcError::new(ErrorCode::Internal, "backend unavailable, try again")
}

fn not_found() -> RpcError {
    RpcError::new(ErrorCode::NotFound, "task not found")
}

pub(crate) fn tools_list(node: &Node) -> Value {
    let catalog = node.catalog.get();
    let tools: Vec<Value> = catalog.tools.values().map(|t| t.spec.mcp()).collect();
    json!({ "tools": tools })
}

/// Starts a call. `Ok(None)`: the reply will be queued by the call's own task.
pub(crate) async fn tools_call(
    node: &Arc<Node>,
    state: &mut ConnState,
    id: Option<&RawValue>,
    params: Option<&RawValue>,
) -> Result<Option<Value>, RpcError> {
    let p: CallParams = wire::decode_params(params)?;
    let catalog = node.catalog.get();
    let Some(tool) = catalog.tools.get(&p.name).cloned() else {
        return Err(RpcError::invalid_params(format!(
            "unknown tool: {}",
            p.name.chars().take(128).collect::<String>()
        )));
    };
    let arguments = p.arguments.unwrap_or_else(|| json!({}));
    tool.check(&arguments)
        .map_err(|why| RpcError::invalid_params(format!("invalid arguments: {why}")))?;
    let meta = p.meta.unwrap_or_default();
    let mode = match meta.get("switchboard/cache").and_then(Value::as_str) {
        None | Some("use") => CacheMode::Use,
        Some("bypass") => CacheMode::Bypass,
        Some("refresh") => CacheMode::Refresh,
        Some(_) => {
            return Err(RpcError::invalid_params(
                "_meta.switchboard/cache must be use, bypass or refresh",
            ));
        }
    };
    let progress_token = meta.get("progressToken").cloned();
    let cfg = &node.config;
    let spec_timeout = tool.spec.timeout_ms;
    // A task lives at least until its call's deadline (plus the grace), or its callers would
    // lose the outcome of a call that is still running.
    let task_ttl_ms = p
        .task
        .as_ref()
        .and_then(|t| t.ttl)
        .unwrap_or(cfg.task_ttl.as_millis() as u64)
        .clamp(1, cfg.max_task_ttl.as_millis() as u64)
        .max(spec_timeout + cfg.deadline_grace.as_millis() as u64 + TASK_TTL_MARGIN_MS);

    let in_flight = state.calls.clone();
    let task_id = new_task_id();
    // A call sent as a notification counts too, under a key no request id can have.
    let request_key = match id {
        Some(i) => i.get().to_owned(),
        None => format!("notification:{task_id}"),
    };
    track(node, &in_flight, &request_key, &task_id)?;
    let owner = state.owner();
    let spec = &tool.spec;
    let submission = Submission {
        call_hash: call_hash_of(&tool.digest, spec.cache.scope, &arguments, &owner),
        queue: tool.queue.clone(),
        tool: spec.clone(),
        arguments,
        task_id,
        owner,
        read_cache: mode == CacheMode::Use && spec.cache.enabled(),
        cache_ttl_ms: if mode == CacheMode::Bypass {
            0
        } else {
            spec.cache.ttl_ms
        },
        task_ttl_ms,
        poll_interval_ms: cfg.call_poll.as_millis() as u64,
        deadline_ms: now_ms() + spec.timeout_ms,
    };
    let call = PendingCall {
        node: node.clone(),
        live: state.live.clone(),
        tx: state.tx.clone(),
        id: id.map(RawValue::to_owned),
        request_key,
        in_flight,
        progress_token,
        task_mode: p.task.is_some(),
    };
    tokio::spawn(call.run(submission));
    Ok(None)
}

/// Counts a waiting request against the connection's in-flight limit (-32006 over it).
fn track(node: &Node, in_flight: &InFlight, key: &str, task_id: &str) -> Result<(), RpcError> {
    let max = node.config.max_inflight_calls;
    let mut f = in_flight.lock().expect("poisoned");
    if f.contains_key(key) {
        return Err(RpcError::invalid_request(
            "a request with this id is still in flight",
        ));
    }
    if f.len() >= max {
        return Err(RpcError::new(
            ErrorCode::Overloaded,
            format!("too many calls in flight on this connection ({max})"),
        ));
    }
    f.insert(key.to_owned(), task_id.to_owned());
    Ok(())
}

/// A call between submission and reply.
struct PendingCall {
    node: Arc<Node>,
    /// The session, owed the reply while the call runs.
    live: Option<Arc<LiveSession>>,
    tx: OutTx,
    /// `None` for a call sent as a notification: it runs, nobody is answered.
    id: Option<Box<RawValue>>,
    request_key: String,
    in_flight: InFlight,
    progress_token: Option<Value>,
    task_mode: bool,
}

impl PendingCall {
    async fn run(self, submission: Submission) {
        let deadline = tokio::time::Instant::now()
            + Duration::from_millis(submission.deadline_ms.saturating_sub(now_ms()))
            + self.node.config.deadline_grace;
        let submitted = self.node.backend.submit(&submission).await;
        // A `notifications/cancelled` that arrived while the call was being submitted found no
        // task to cancel yet: cancel it now.
        if let Ok(s) = &submitted
            && !self
                .in_flight
                .lock()
                .expect("poisoned")
                .contains_key(&self.request_key)
        {
            if let Err(e) = self.node.backend.cancel(s.record()).await {
                tracing::warn!(error = %e, "cancelling a call failed");
            }
            return;
        }
        let mut owed_by = None;
        let reply = match submitted {
            Err(e) => {
                tracing::warn!(error = %e, "submitting a call failed");
                Err(backend_unavailable())
            }
            Ok(s) if self.task_mode => Ok(json!({ "task": s.record().mcp() })),
            Ok(Submitted::Cached(rec)) => Ok(result_value(&rec, &rec, true)),
            Ok(s) => {
                let rec = s.record().clone();
                if let (Some(live), Some(id)) = (&self.live, &self.id) {
                    let owed = OwedRequest {
                        raw_id: id.get().to_owned(),
                        task_id: rec.task_id.clone(),
                        deadline_ms: submission.deadline_ms,
                    };
                    sessions::owe(&self.node, live, &owed).await;
                    owed_by = Some(live.clone());
                }
                let progress = self.progress_token.clone().map(|t| (t, self.tx.clone()));
                let waiting = wait_outcome(&self.node, &rec, progress, Some(deadline));
                tokio::select! {
                    outcome = waiting => outcome.map(|done| result_value(&rec, &done, false)),
                    // The socket is gone: stop waiting. The task stays in the backend for
                    // `tasks/result` from anywhere.
                    _ = self.tx.closed() => return,
                }
            }
        };
        // A call cancelled by `notifications/cancelled` gets no reply (MCP); nor does one whose
        // id was meanwhile reused by a newer request.
        let still_wanted = untrack(&self.in_flight, &self.request_key, &submission.task_id);
        if let (true, Some(id)) = (still_wanted, &self.id) {
            let frame = match reply {
                Ok(v) => wire::encode_result(id, &v),
                Err(e) => wire::encode_error(Some(id), &e),
            };
            let out = match owed_by {
                Some(live) => Out::Owed(
                    frame,
                    Arc::new(OwedReply {
                        live,
                        raw_id: id.get().to_owned(),
                    }),
                ),
                None => Out::Text(frame),
            };
            let _ = self.tx.send(out).await;
        }
    }
}

/// The CallToolResult to answer for `own` task, from the record holding the outcome.
fn result_value(own: &TaskRecord, outcome: &TaskRecord, cached: bool) -> Value {
    let mut result = outcome.result.clone().unwrap_or_else(|| {
        CallToolResult::error(
            outcome
                .status_message
                .clone()
                .unwrap_or_else(|| format!("the call ended {}", outcome.status.as_str())),
        )
    });
    let meta = result.meta.get_or_insert_with(Map::new);
    meta.insert("switchboard/taskId".into(), json!(own.task_id));
    meta.insert("switchboard/callHash".into(), json!(own.call_hash));
    meta.insert("switchboard/cached".into(), json!(cached));
    serde_json::to_value(result).expect("results serialize")
}

/// Waits until the execution behind `own` is done and returns the record holding the outcome
/// (the leader's, or `own` when it was cancelled itself). -32005 at `deadline`.
async fn wait_outcome(
    node: &Node,
    own: &TaskRecord,
    progress: Option<(Value, OutTx)>,
    deadline: Option<tokio::time::Instant>,
) -> Result<TaskRecord, RpcError> {
    let leader = own.leader.clone().unwrap_or_else(|| own.task_id.clone());
    let guard = node.signals.wait_for(&leader, progress);
    loop {
        let woken = guard.notify.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        match outcome(node, own).await {
            Ok(Some(done)) => return Ok(done),
            Ok(None) => {}
            // Redis away for a moment: the call goes on; keep waiting until the deadline.
            Err(e) if e.code == ErrorCode::Internal.code() => {
                tracing::debug!(task = %own.task_id, "task read failed; waiting on");
            }
            Err(e) => return Err(e),
        }
        let poll = tokio::time::sleep(node.config.call_poll);
        tokio::select! {
            _ = woken => {}
            _ = poll => {}
            _ = async { match deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => {
                return Err(RpcError::new(ErrorCode::Timeout, "the call did not finish before its deadline"));
            }
        }
    }
}

/// The record holding the outcome of `own`, if the execution is done. A task of its own in a
/// terminal state (cancelled) is its own outcome; otherwise a joined task follows its leader.
async fn outcome(node: &Node, own: &TaskRecord) -> Result<Option<TaskRecord>, RpcError> {
    let fresh = node
        .backend
        .task(&own.task_id)
        .await
        .map_err(|_| backend_unavailable())?;
    let Some(mut fresh) = fresh else {
        return Err(not_found());
    };
    if fresh.caller_cancelled {
        // Cancelled for this caller, whatever became of the shared execution for others.
        fresh.status = TaskStatus::Cancelled;
        fresh.status_message = Some("cancelled".into());
        fresh.result = None;
        return Ok(Some(fresh));
    }
    if fresh.status.is_terminal() {
        return Ok(Some(fresh));
    }
    let Some(leader) = &fresh.leader else {
        return Ok(None);
    };
    match node
        .backend
        .task(leader)
        .await
        .map_err(|_| backend_unavailable())?
    {
        Some(l) if l.status.is_terminal() => Ok(Some(l)),
        Some(_) => Ok(None),
        None => {
            let mut lost = fresh.clone();
            lost.status = TaskStatus::Failed;
            lost.status_message = Some("the shared execution's task expired".into());
            Ok(Some(lost))
        }
    }
}

/// The caller's own task, or -32004 (also when it belongs to someone else: no existence leak).
async fn own_task(
    node: &Node,
    state: &ConnState,
    params: Option<&RawValue>,
) -> Result<TaskRecord, RpcError> {
    let p: TaskIdParams = wire::decode_params(params)?;
    match node.backend.task(&p.task_id).await {
        Ok(Some(t)) if t.owner == state.owner() => Ok(t),
        Ok(_) => Err(not_found()),
        Err(_) => Err(backend_unavailable()),
    }
}

/// The task as the caller sees it: a joined task shows its execution's state.
async fn effective(node: &Node, own: &TaskRecord) -> Result<TaskRecord, RpcError> {
    let mut shown = own.clone();
    if let Some(done) = outcome(node, own).await? {
        shown.status = done.status;
        shown.status_message = done.status_message;
        shown.last_updated_at_ms = done.last_updated_at_ms;
    }
    Ok(shown)
}

pub(crate) async fn tasks_get(
    node: &Arc<Node>,
    state: &ConnState,
    params: Option<&RawValue>,
) -> Result<Value, RpcError> {
    let own = own_task(node, state, params).await?;
    Ok(effective(node, &own).await?.mcp())
}

pub(crate) async fn tasks_cancel(
    node: &Arc<Node>,
    state: &ConnState,
    params: Option<&RawValue>,
) -> Result<Value, RpcError> {
    let own = own_task(node, state, params).await?;
    let shown = effective(node, &own).await?;
    if shown.status.is_terminal() {
        return Err(RpcError::invalid_params(format!(
            "task is already {}",
            shown.status.as_str()
        )));
    }
    node.backend
        .cancel(&own)
        .await
        .map_err(|_| backend_unavailable())?;
    let after = node
        .backend
        .task(&own.task_id)
        .await
        .map_err(|_| backend_unavailable())?
        .ok_or_else(not_found)?;
    Ok(after.mcp())
}

/// `tasks/result`: waits (in its own task) until the outcome is there.
pub(crate) async fn tasks_result(
    node: &Arc<Node>,
    state: &ConnState,
    id: Option<&RawValue>,
    params: Option<&RawValue>,
) -> Result<Option<Value>, RpcError> {
    let own = own_task(node, state, params).await?;
    let Some(id) = id.map(RawValue::to_owned) else {
        return Ok(None);
    };
    // No task id: cancelling a wait must not cancel the task it waits for.
    track(node, &state.calls, id.get(), "")?;
    let owed = OwedRequest {
        raw_id: id.get().to_owned(),
        task_id: own.task_id.clone(),
        deadline_ms: 0,
    };
    tokio::spawn(answer_when_done(
        node.clone(),
        Waiter::of(state, ""),
        id,
        Some(own),
        owed,
    ));
    Ok(None)
}

/// What a request answered later needs from its connection.
struct Waiter {
    tx: OutTx,
    in_flight: InFlight,
    live: Option<Arc<LiveSession>>,
    /// The value the request is tracked under in `in_flight` (its task id, or "").
    tracked_as: String,
}

impl Waiter {
    fn of(state: &ConnState, tracked_as: &str) -> Self {
        Waiter {
            tx: state.tx.clone(),
            in_flight: state.calls.clone(),
            live: state.live.clone(),
            tracked_as: tracked_as.to_owned(),
        }
    }
}

/// Answers request `id` with the outcome of task `owed.task_id` when it is there (or -32005 at
/// the deadline, if it has one). The session is owed the reply meanwhile, so a resume anywhere
/// answers it if this socket goes first. `own`: the task, when already read.
async fn answer_when_done(
    node: Arc<Node>,
    waiter: Waiter,
    id: Box<RawValue>,
    own: Option<TaskRecord>,
    owed: OwedRequest,
) {
    let key = id.get().to_owned();
    let _untrack = Untrack {
        in_flight: &waiter.in_flight,
        key: &key,
        tracked_as: &waiter.tracked_as,
    };
    if let Some(live) = &waiter.live {
        sessions::owe(&node, live, &owed).await;
    }
    let deadline = (owed.deadline_ms > 0).then(|| {
        tokio::time::Instant::now()
            + Duration::from_millis(owed.deadline_ms.saturating_sub(now_ms()))
            + node.config.deadline_grace
    });
    let waiting = async {
        let own = match own {
            Some(own) => own,
            None => match node.backend.task(&owed.task_id).await {
                Ok(Some(t)) if waiter.live.as_ref().is_some_and(|l| *l.owner == *t.owner) => t,
                Ok(_) => return Err(not_found()),
                Err(_) => return Err(backend_unavailable()),
            },
        };
        let done = wait_outcome(&node, &own, None, deadline).await?;
        Ok::<Value, RpcError>(result_value(&own, &done, own.cached))
    };
    let reply = tokio::select! {
        reply = waiting => reply,
        _ = waiter.tx.closed() => return,
    };
    // Cancelled by `notifications/cancelled`, or the id reused by a newer request: no reply.
    if !untrack(&waiter.in_flight, &key, &waiter.tracked_as) {
        return;
    }
    let frame: Bytes = match reply {
        Ok(v) => wire::encode_result(&id, &v),
        Err(e) => wire::encode_error(Some(&id), &e),
    };
    let out = match waiter.live {
        Some(live) => Out::Owed(
            frame,
            Arc::new(OwedReply {
                live,
                raw_id: key.clone(),
            }),
        ),
        None => Out::Text(frame),
    };
    let _ = waiter.tx.send(out).await;
}

/// A resumed session's owed replies: each is answered on this connection when its call is
/// done, with the request id it was asked under.
pub(crate) fn resume_owed(node: &Arc<Node>, state: &ConnState, owed: Vec<OwedRequest>) {
    for o in owed {
        let Ok(id) = RawValue::from_string(o.raw_id.clone()) else {
            continue;
        };
        if track(node, &state.calls, &o.raw_id, &o.task_id).is_err() {
            continue;
        }
        tokio::spawn(answer_when_done(
            node.clone(),
            Waiter::of(state, &o.task_id),
            id,
            None,
            o,
        ));
    }
}

/// Removes a request from the in-flight map when its waiting task ends.
struct Untrack<'a> {
    in_flight: &'a InFlight,
    key: &'a str,
    tracked_as: &'a str,
}

impl Drop for Untrack<'_> {
    fn drop(&mut self) {
        untrack(self.in_flight, self.key, self.tracked_as);
    }
}

/// Removes request `key` from the in-flight map if it is still tracked as `tracked_as` (not
/// cancelled, nor replaced by a newer request with the same id); whether it was.
fn untrack(in_flight: &InFlight, key: &str, tracked_as: &str) -> bool {
    let mut f = in_flight.lock().expect("poisoned");
    if f.get(key).is_some_and(|t| t == tracked_as) {
        f.remove(key);
        true
    } else {
        false
    }
}

/// `notifications/cancelled {requestId}`: cancels that call's task; the call gets no reply.
pub(crate) fn cancelled(node: &Arc<Node>, state: &ConnState, params: Option<&RawValue>) {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct P<'a> {
        #[serde(borrow)]
        request_id: &'a RawValue,
    }
    let Ok(p) = wire::decode_params::<P<'_>>(params) else {
        return;
    };
    let Some(task_id) = state
        .calls
        .lock()
        .expect("poisoned")
        .remove(p.request_id.get())
        .filter(|t| !t.is_empty())
    else {
        return;
    };
    // A cancelled call is owed no reply.
    if let Some(live) = &state.live {
        live.answered(p.request_id.get());
    }
    let node = node.clone();
    tokio::spawn(async move {
        if let Ok(Some(task)) = node.backend.task(&task_id).await
            && let Err(e) = node.backend.cancel(&task).await
        {
            tracing::warn!(error = %e, "cancelling a call failed");
        }
    });
}
