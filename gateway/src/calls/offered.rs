//! Tools offered by clients (`tools/register`): the node holding the socket hosts them the way a
//! worker hosts its tools, so a call reaches them from any node through the same call plane
//! (cache, coalescing, tasks, caps) and nothing else in the call path knows the difference.
//!
//! - **Registry.** Each offering socket is a host of its own (`client:<node>:<n>-<random>`),
//!   announced in the worker registry with `client: true` every `--registry-interval`
//!   (expiring after [`ANNOUNCE_MISSES`] missed ones, so a dead node's tools leave every
//!   catalogue). A tool's
//!   `version` is the host's id: its queue is the socket's own, and its results are never
//!   mixed with another registration's.
//! - **Jobs.** One fetch loop per node reads the queues of every offering socket that has room
//!   (fewer than `--max-client-tool-calls` calls unanswered) and sends each job to its socket
//!   as a JSON-RPC request `tools/call` with an id the node allocates (`sb-<n>`), which is also
//!   the call's progress token.
//! - **Answers.** The client's response is the call's result, written with
//!   [`JobQueue::finish`] like a worker's: a JSON-RPC error, or a result that is not a
//!   `CallToolResult`, becomes an `isError` result (task `failed`). A call unanswered at its
//!   deadline ends with an `isError` result and the client gets `notifications/cancelled`; so
//!   does a call its callers cancelled (task `cancelled`).
//! - **Leaving.** `tools/unregister` or the socket closing withdraws the tools (the
//!   catalogues change; `list_changed` goes out on every node), deletes their queues, and ends
//!   every call routed to them and not answered with an `isError` result naming the tool (task
//!   `failed`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Map, Value, json};
use switchboard_core::backend::{JobQueue, finish_retrying};
use switchboard_core::calls::{EXPIRED_UNSTARTED, Job, Progress, WorkerAnnouncement};
use switchboard_core::clock::now_ms;
use switchboard_core::tools::{CachePolicy, CacheScope, ToolSpec, validate_tool_name};
use switchboard_protocol::jsonrpc::{self, Response};
use switchboard_protocol::methods::Method;
use switchboard_protocol::methods::tasks::TaskStatus;
use switchboard_protocol::methods::tools::{
    CallParams, CallToolResult, META_PROGRESS_TOKEN, META_TASK_ID, OfferedTool, ToolsCall,
};
use switchboard_protocol::{ErrorCode, RpcError};
use tokio::sync::Notify;
use tokio::task::AbortHandle;

use super::catalog::CatalogCell;
use crate::transport::{Out, Sender};

/// An announcement outlives this many missed refreshes.
pub(crate) const ANNOUNCE_MISSES: u32 = 3;
/// Pause after a failed fetch, so an outage does not spin.
const RETRY_PAUSE: Duration = Duration::from_millis(500);
/// What `notifications/cancelled` is called.
const CANCELLED: &str = "notifications/cancelled";

/// How offered tools are bounded (from the node's configuration).
#[derive(Debug, Clone, Copy)]
pub(crate) struct OfferedSettings {
    /// Tools one socket may offer (`--max-client-tools`; 0: none).
    pub(crate) max_tools: usize,
    /// Calls one socket may have been sent and not answered (`--max-client-tool-calls`).
    pub(crate) max_calls: usize,
    /// A call's default and longest timeout (`--client-tool-timeout`).
    pub(crate) timeout: Duration,
    /// How often announcements are refreshed, and the longest a fetch waits
    /// (`--registry-interval`).
    pub(crate) heartbeat: Duration,
    /// The largest result stored (`--max-result-bytes`).
    pub(crate) max_result_bytes: u64,
}

/// One offered tool.
struct OfferedSpec {
    spec: ToolSpec,
    queue: String,
}

/// A call sent to its client and not answered.
struct Sent {
    job: Job,
    /// Ends the call at its deadline; aborted when it is answered.
    timer: AbortHandle,
}

/// One offering socket.
struct Host {
    /// Its id in the worker registry (and its tools' version).
    id: String,
    tx: Sender,
    tools: BTreeMap<String, OfferedSpec>,
    /// Request id -> the call.
    sent: HashMap<String, Sent>,
    next_request: u64,
}

#[derive(Default)]
struct State {
    /// By connection id.
    hosts: HashMap<u64, Host>,
    /// Queue id -> connection id.
    queues: HashMap<String, u64>,
}

/// See the module docs.
pub(crate) struct Offered {
    node_id: String,
    queue: Arc<dyn JobQueue>,
    catalog: Arc<CatalogCell>,
    settings: OfferedSettings,
    state: Mutex<State>,
    /// Wakes the fetch loop: queues came, or a socket has room again.
    changed: Notify,
    next_host: AtomicU64,
}

/// Why an offered call ends without the client's answer.
fn ended(tool: &str, why: &str) -> CallToolResult {
    CallToolResult::error(format!("tool {tool}: {why}"))
}

fn invalid(name: &str, why: impl std::fmt::Display) -> RpcError {
    let name: String = name.chars().take(128).collect();
    RpcError::invalid_params(format!("tool {name:?}: {why}"))
}

impl Offered {
    pub(crate) fn new(
        node_id: &str,
        queue: Arc<dyn JobQueue>,
        catalog: Arc<CatalogCell>,
        settings: OfferedSettings,
    ) -> Self {
        Offered {
            node_id: node_id.to_owned(),
            queue,
            catalog,
            settings,
            state: Mutex::default(),
            changed: Notify::new(),
            next_host: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("offered tools lock poisoned")
    }

    /// What the host ids of this node's offering sockets start with.
    fn host_prefix(&self) -> String {
        format!("client:{}:", self.node_id)
    }

    /// The consumer name this node reads offered tools' queues as.
    fn consumer(&self) -> String {
        format!("gateway:{}", self.node_id)
    }

    /// Checks one offered tool and makes its spec (version: the host's id).
    fn spec_of(&self, t: OfferedTool, host_id: &str) -> Result<ToolSpec, RpcError> {
        validate_tool_name(&t.name).map_err(|e| invalid(&t.name, e))?;
        if t.input_schema.get("type").and_then(Value::as_str) != Some("object") {
            return Err(invalid(
                &t.name,
                "inputSchema must be a JSON Schema object with \"type\": \"object\"",
            ));
        }
        if let Err(e) = jsonschema::validator_for(&t.input_schema) {
            let why: String = e.to_string().chars().take(160).collect();
            return Err(invalid(&t.name, format!("invalid inputSchema: {why}")));
        }
        let max_ms = self.settings.timeout.as_millis() as u64;
        let timeout_ms = match t.timeout_ms {
            None => max_ms,
            Some(ms) if (1..=max_ms).contains(&ms) => ms,
            Some(_) => {
                return Err(invalid(
                    &t.name,
                    format!("timeoutMs must be 1 to {max_ms} (clientToolTimeout)"),
                ));
            }
        };
        let cache = match t.cache {
            None => CachePolicy::off(),
            Some(c) => CachePolicy {
                ttl_ms: c.ttl_ms,
                scope: match c.scope.as_deref() {
                    None | Some("public") => CacheScope::Public,
                    Some("per-user") => CacheScope::PerUser,
                    Some(_) => {
                        return Err(invalid(&t.name, "cache.scope must be public or per-user"));
                    }
                },
            },
        };
        Ok(ToolSpec {
            name: t.name,
            title: t.title,
            description: t.description,
            input_schema: t.input_schema,
            annotations: t.annotations,
            version: host_id.to_owned(),
            cache,
            timeout_ms,
        })
    }

    /// `tools/register` from connection `conn`: checks every tool (all or none are taken),
    /// then hosts them. Returns every tool the socket offers now.
    pub(crate) async fn register(
        &self,
        conn: u64,
        tx: &Sender,
        tools: Vec<OfferedTool>,
    ) -> Result<Vec<String>, RpcError> {
        if tools.is_empty() {
            return Err(RpcError::invalid_params("tools is empty"));
        }
        let max = self.settings.max_tools;
        let catalog = self.catalog.get();
        let (host_id, new_queues) = {
            let mut st = self.lock();
            let offered_here: HashSet<&str> = st
                .hosts
                .iter()
                .filter(|(c, _)| **c != conn)
                .flat_map(|(_, h)| h.tools.keys().map(String::as_str))
                .collect();
            let (host_id, own) = match st.hosts.get(&conn) {
                Some(h) => (h.id.clone(), h.tools.len()),
                // A random part too: a restarted node with the same id never takes over a
                // previous incarnation's queues or cached results.
                None => (
                    format!(
                        "{}{}-{}",
                        self.host_prefix(),
                        self.next_host.fetch_add(1, Ordering::Relaxed),
                        &switchboard_core::encoding::random_id()[..8]
                    ),
                    0,
                ),
            };
            if own + tools.len() > max {
                return Err(RpcError::new(
                    ErrorCode::Overloaded,
                    format!("a socket may offer at most {max} tools (maxClientTools)"),
                )
                .with_data(json!({"limit": "maxClientTools", "max": max})));
            }
            let mut specs = Vec::with_capacity(tools.len());
            let mut names = HashSet::new();
            for t in tools {
                let spec = self.spec_of(t, &host_id)?;
                if !names.insert(spec.name.clone()) {
                    return Err(invalid(&spec.name, "named twice"));
                }
                if st
                    .hosts
                    .get(&conn)
                    .is_some_and(|h| h.tools.contains_key(&spec.name))
                {
                    return Err(invalid(
                        &spec.name,
                        "already offered by this socket (tools/unregister it first)",
                    ));
                }
                // A catalogue entry of a socket of this node that is no longer offered is
                // stale (withdrawn since the last registry read): not a conflict.
                let listed = catalog.tools.get(&spec.name).is_some_and(|t| {
                    !t.spec.version.starts_with(&self.host_prefix())
                        || st.hosts.values().any(|h| h.id == t.spec.version)
                });
                if offered_here.contains(spec.name.as_str()) || listed {
                    return Err(invalid(
                        &spec.name,
                        "a tool of this name is already offered (by a worker or another \
                         client); names are never shadowed",
                    ));
                }
                specs.push(spec);
            }
            let host = st.hosts.entry(conn).or_insert_with(|| Host {
                id: host_id.clone(),
                tx: tx.clone(),
                tools: BTreeMap::new(),
                sent: HashMap::new(),
                next_request: 0,
            });
            let mut new_queues = Vec::new();
            for spec in specs {
                let queue = spec.queue_id();
                new_queues.push(queue.clone());
                host.tools
                    .insert(spec.name.clone(), OfferedSpec { spec, queue });
            }
            (host_id, new_queues)
        };
        // Readable before anyone can call them: the queues exist first, then the announcement.
        let ready = match self.queue.prepare(&new_queues).await {
            Ok(()) => self.announce(conn).await,
            Err(e) => Err(e),
        };
        if let Err(e) = ready {
            tracing::warn!(error = %e, host = %host_id, "cannot host offered tools");
            let mut st = self.lock();
            if let Some(h) = st.hosts.get_mut(&conn) {
                h.tools.retain(|_, t| !new_queues.contains(&t.queue));
                if h.tools.is_empty() {
                    st.hosts.remove(&conn);
                }
            }
            return Err(RpcError::backend_unavailable());
        }
        let names = {
            let mut st = self.lock();
            for q in &new_queues {
                st.queues.insert(q.clone(), conn);
            }
            st.hosts
                .get(&conn)
                .map(|h| h.tools.keys().cloned().collect())
                .unwrap_or_default()
        };
        tracing::info!(host = %host_id, tools = ?names, "client offers tools");
        self.changed.notify_one();
        Ok(names)
    }

    /// `tools/unregister` from connection `conn`: every name must be one it offers. Returns
    /// the tools it still offers.
    pub(crate) async fn unregister(
        &self,
        conn: u64,
        names: &[String],
    ) -> Result<Vec<String>, RpcError> {
        let (host_id, queues, left, remaining) = {
            let mut st = self.lock();
            let Some(host) = st.hosts.get_mut(&conn) else {
                return Err(match names.first() {
                    Some(n) => invalid(n, "not offered by this socket"),
                    None => RpcError::invalid_params("names is empty"),
                });
            };
            if names.is_empty() {
                return Err(RpcError::invalid_params("names is empty"));
            }
            if let Some(n) = names.iter().find(|n| !host.tools.contains_key(*n)) {
                return Err(invalid(n, "not offered by this socket"));
            }
            let mut queues = Vec::new();
            for n in names {
                if let Some(t) = host.tools.remove(n) {
                    queues.push(t.queue);
                }
            }
            let left = take_sent(host, |job| queues.contains(&job.queue));
            let remaining: Vec<String> = host.tools.keys().cloned().collect();
            let host_id = host.id.clone();
            if remaining.is_empty() {
                st.hosts.remove(&conn);
            }
            for q in &queues {
                st.queues.remove(q);
            }
            (host_id, queues, left, remaining)
        };
        if remaining.is_empty() {
            let _ = self.queue.withdraw(&host_id).await;
        } else {
            let _ = self.announce(conn).await;
        }
        self.retire(&queues, left, "unregistered by the client offering it")
            .await;
        Ok(remaining)
    }

    /// The socket of connection `conn` is gone: its tools go, and every call routed to them
    /// and not answered ends with an `isError` result.
    pub(crate) async fn gone(&self, conn: u64) {
        let Some((host, queues)) = ({
            let mut st = self.lock();
            st.hosts.remove(&conn).map(|h| {
                let queues: Vec<String> = h.tools.values().map(|t| t.queue.clone()).collect();
                for q in &queues {
                    st.queues.remove(q);
                }
                (h, queues)
            })
        }) else {
            return;
        };
        let mut host = host;
        let left = take_sent(&mut host, |_| true);
        tracing::info!(host = %host.id, tools = ?host.tools.keys().collect::<Vec<_>>(), "client offering tools is gone");
        if let Err(e) = self.queue.withdraw(&host.id).await {
            tracing::warn!(error = %e, host = %host.id, "cannot withdraw a gone client's tools; they expire");
        }
        self.retire(
            &queues,
            left,
            "the client offering it disconnected before answering",
        )
        .await;
    }

    /// Deletes `queues` and ends every call still in them, and `left` (calls sent and not
    /// answered), saying `why`.
    async fn retire(&self, queues: &[String], left: Vec<Job>, why: &str) {
        let mut jobs = left;
        match self.queue.retire(queues).await {
            Ok(queued) => {
                let seen: HashSet<String> = jobs.iter().map(|j| j.entry_id.clone()).collect();
                jobs.extend(queued.into_iter().filter(|j| !seen.contains(&j.entry_id)));
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot delete offered tools' queues; calls queued there end at their deadline");
            }
        }
        for job in jobs {
            let result = ended(&job.tool, why);
            self.finish(&job, TaskStatus::Failed, Some(why), result)
                .await;
        }
    }

    /// Refreshes the announcement of connection `conn`'s tools.
    async fn announce(&self, conn: u64) -> Result<(), switchboard_core::backend::BackendError> {
        let a = {
            let st = self.lock();
            let Some(h) = st.hosts.get(&conn) else {
                return Ok(());
            };
            self.announcement(h)
        };
        self.queue.announce(&a).await
    }

    fn announcement(&self, h: &Host) -> WorkerAnnouncement {
        WorkerAnnouncement {
            worker_id: h.id.clone(),
            tools: h.tools.values().map(|t| t.spec.clone()).collect(),
            expires_at_ms: now_ms()
                + (self.settings.heartbeat * ANNOUNCE_MISSES).as_millis() as u64,
            client: true,
        }
    }

    /// Keeps every offering socket's announcement fresh.
    pub(crate) async fn run_announce(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.settings.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let all: Vec<WorkerAnnouncement> = {
                let st = self.lock();
                st.hosts.values().map(|h| self.announcement(h)).collect()
            };
            for a in all {
                if let Err(e) = self.queue.announce(&a).await {
                    tracing::debug!(error = %e, host = %a.worker_id, "offered tools' heartbeat failed");
                }
            }
        }
    }

    /// The queues of the sockets that may be sent another call, and how many calls each of
    /// them may take at least.
    fn readable(&self) -> (Vec<String>, usize) {
        let st = self.lock();
        let mut room = usize::MAX;
        let mut queues = Vec::new();
        for h in st.hosts.values() {
            let free = self.settings.max_calls.saturating_sub(h.sent.len());
            if free == 0 {
                continue;
            }
            room = room.min(free);
            queues.extend(h.tools.values().map(|t| t.queue.clone()));
        }
        (queues, room)
    }

    /// Takes the calls of offered tools from their queues and sends each to its socket.
    pub(crate) async fn run_fetch(self: Arc<Self>) {
        let consumer = self.consumer();
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let (queues, room) = self.readable();
            if queues.is_empty() {
                tokio::select! {
                    _ = changed => {}
                    _ = tokio::time::sleep(self.settings.heartbeat) => {}
                }
                continue;
            }
            match self
                .queue
                .fetch(&consumer, &queues, room, self.settings.heartbeat)
                .await
            {
                Ok(jobs) => {
                    for job in jobs {
                        self.deliver(job).await;
                    }
                }
                Err(e) => {
                    // A socket that left meanwhile took its queue with it: read again at once.
                    let (now, _) = self.readable();
                    if now != queues {
                        continue;
                    }
                    tracing::warn!(error = %e, "fetching calls of offered tools failed");
                    tokio::time::sleep(RETRY_PAUSE).await;
                    // A Redis that restarted forgot the queues' consumer group.
                    let _ = self.queue.prepare(&now).await;
                }
            }
        }
    }

    /// Sends one call to the socket offering its tool, as a `tools/call` request.
    async fn deliver(self: &Arc<Self>, job: Job) {
        let why = {
            let mut st = self.lock();
            let conn = st.queues.get(&job.queue).copied();
            match conn.and_then(|c| st.hosts.get_mut(&c).map(|h| (c, h))) {
                None => Some("the client offering it disconnected before answering"),
                Some(_) if job.deadline_ms <= now_ms() => Some(EXPIRED_UNSTARTED),
                Some((conn, host)) => {
                    let request_id = format!("sb-{}", host.next_request);
                    host.next_request += 1;
                    let mut meta = Map::new();
                    meta.insert(META_PROGRESS_TOKEN.into(), json!(request_id));
                    meta.insert(META_TASK_ID.into(), json!(job.task_id));
                    let params = CallParams {
                        name: job.tool.clone(),
                        arguments: Some(job.arguments.clone()),
                        meta: Some(meta),
                        task: None,
                    };
                    let frame = jsonrpc::encode_request(&request_id, ToolsCall::NAME, &params);
                    if host.tx.try_send(Out::Text(frame)).is_err() {
                        Some("the client offering it is not reading its socket")
                    } else {
                        let wait = Duration::from_millis(job.deadline_ms.saturating_sub(now_ms()));
                        let me = self.clone();
                        let id = request_id.clone();
                        let timer = tokio::spawn(async move {
                            tokio::time::sleep(wait).await;
                            me.expire(conn, &id).await;
                        })
                        .abort_handle();
                        host.sent.insert(
                            request_id,
                            Sent {
                                job: job.clone(),
                                timer,
                            },
                        );
                        None
                    }
                }
            }
        };
        if let Some(why) = why {
            self.finish(&job, TaskStatus::Failed, Some(why), ended(&job.tool, why))
                .await;
        }
    }

    /// Takes call `id` of connection `conn` out, if it is still unanswered, and stops its
    /// timer (unless the timer is the one asking: `from_timer`, which must not abort itself).
    fn take(&self, conn: u64, id: &str, from_timer: bool) -> Option<(Job, Sender)> {
        let mut st = self.lock();
        let host = st.hosts.get_mut(&conn)?;
        let sent = host.sent.remove(id)?;
        if !from_timer {
            sent.timer.abort();
        }
        self.changed.notify_one();
        Some((sent.job, host.tx.clone()))
    }

    /// A call's deadline passed without an answer: it ends, and the client is told.
    async fn expire(&self, conn: u64, id: &str) {
        let Some((job, tx)) = self.take(conn, id, true) else {
            return;
        };
        let why = "the client offering it did not answer before the call's deadline";
        cancel_on_client(&tx, id, "timed out");
        self.finish(&job, TaskStatus::Completed, None, ended(&job.tool, why))
            .await;
    }

    /// A response from connection `conn`: whether it answered one of its calls (else it is
    /// nobody's, and ignored).
    pub(crate) async fn answer(&self, conn: u64, response: &Response<'_>) -> bool {
        let Ok(id) = serde_json::from_str::<String>(response.id.get()) else {
            return false;
        };
        let Some((job, _)) = self.take(conn, &id, false) else {
            return false;
        };
        let (status, message, result) = match &response.outcome {
            Ok(raw) => match serde_json::from_str::<CallToolResult>(raw.get()) {
                Ok(r) => (TaskStatus::Completed, None, r),
                Err(e) => {
                    let why = format!("the client's answer is not a CallToolResult: {e}");
                    (
                        TaskStatus::Failed,
                        Some(why.clone()),
                        ended(&job.tool, &why),
                    )
                }
            },
            Err(e) => {
                let msg: String = e.message.chars().take(256).collect();
                let why = format!(
                    "the client offering it answered an error: {msg} ({})",
                    e.code
                );
                (
                    TaskStatus::Failed,
                    Some(why.clone()),
                    ended(&job.tool, &why),
                )
            }
        };
        self.finish(&job, status, message.as_deref(), result).await;
        true
    }

    /// `notifications/progress` from connection `conn` for one of its calls (its token is the
    /// call's request id): passed on to the call's callers.
    pub(crate) async fn progress(
        &self,
        conn: u64,
        token: &Value,
        progress: f64,
        total: Option<f64>,
        message: Option<String>,
    ) {
        let Some(token) = token.as_str() else {
            return;
        };
        let task = {
            let st = self.lock();
            st.hosts
                .get(&conn)
                .and_then(|h| h.sent.get(token))
                .map(|s| s.job.task_id.clone())
        };
        if let Some(task) = task {
            let p = Progress {
                task,
                progress,
                total,
                message,
            };
            if let Err(e) = self.queue.progress(&p).await {
                tracing::debug!(error = %e, "progress of an offered tool lost");
            }
        }
    }

    /// Ends the calls whose callers all cancelled them, and tells their clients.
    pub(crate) async fn run_cancellations(self: Arc<Self>) {
        let mut rx = self.queue.cancellations();
        loop {
            let leader = match rx.recv().await {
                Ok(leader) => leader,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "missed cancellations of offered tools' calls");
                    continue;
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            };
            let found = {
                let st = self.lock();
                st.hosts.iter().find_map(|(conn, h)| {
                    h.sent
                        .iter()
                        .find(|(_, s)| s.job.task_id == leader)
                        .map(|(id, _)| (*conn, id.clone()))
                })
            };
            let Some((conn, id)) = found else { continue };
            if let Some((job, tx)) = self.take(conn, &id, false) {
                cancel_on_client(&tx, &id, "cancelled");
                self.finish(
                    &job,
                    TaskStatus::Cancelled,
                    Some("cancelled"),
                    CallToolResult::error("cancelled"),
                )
                .await;
            }
        }
    }

    /// Writes a call's outcome, retrying (`finish` is idempotent).
    async fn finish(
        &self,
        job: &Job,
        status: TaskStatus,
        message: Option<&str>,
        result: CallToolResult,
    ) {
        let max = job.max_result_bytes.min(self.settings.max_result_bytes);
        let written = finish_retrying(&*self.queue, job, status, message, result, max);
        if let Err(e) = written.await {
            tracing::error!(error = %e, task = %job.task_id, "could not record an offered tool's outcome; its callers get -32005 at the deadline");
        }
    }
}

/// Takes out the calls of `host` sent and unanswered that `which` selects, their timers
/// stopped.
fn take_sent(host: &mut Host, which: impl Fn(&Job) -> bool) -> Vec<Job> {
    let ids: Vec<String> = host
        .sent
        .iter()
        .filter(|(_, s)| which(&s.job))
        .map(|(id, _)| id.clone())
        .collect();
    ids.into_iter()
        .filter_map(|id| host.sent.remove(&id))
        .map(|s| {
            s.timer.abort();
            s.job
        })
        .collect()
}

/// Tells the client to stop working on call `id` (`notifications/cancelled`); advisory.
fn cancel_on_client(tx: &Sender, id: &str, reason: &str) {
    let _ = tx.try_send(Out::Text(jsonrpc::encode_notification(
        CANCELLED,
        &json!({"requestId": id, "reason": reason}),
    )));
}
