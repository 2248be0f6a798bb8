//! The gateway's side of the call plane on Redis (`docs/redis.md`, "The call plane"). Every
//! script and pipeline touches keys of one slot, in single-Redis mode too (one code path):
//!
//! 1. `lua/submit_identity.lua` on the identity's slot: caps checked, the task reserved, a
//!    running slot reserved when the identity may start one;
//! 2. `lua/submit_call.lua` on the call's slot (result, lease and every task of the call carry
//!    the call's tag, [`switchboard_core::tasks::call_tag`]): a cache hit, or join the lease,
//!    or take it, and write the caller's task;
//! 3. for a leader, `XADD` of the job on the queue's slot; if that fails, step 2 is undone
//!    with `lua/finish.lua` (task failed, lease released, done published), so joiners do not
//!    wait for nothing;
//! 4. `lua/identity_settle.lua` on the identity's slot: the reservations a call did not use
//!    are dropped, a cached result's bytes counted.
//!
//! `lua/cancel.lua` cancels a task, and the execution when its last waiter goes (all its keys
//! on the call's slot). Finished executions and progress come back on the `done` and
//! `progress` channels. The worker registry is one hash.
//!
//! Each step's keys come from one function here ([`identity_keys`], [`call_keys`],
//! [`cancel_keys`]), which the scripts are invoked with and the unit tests check for one slot.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use async_trait::async_trait;
use switchboard_core::backend::{BackendError, CallPlane, CallSink};
use switchboard_core::calls::{CapReached, Submission, Submitted, WorkerAnnouncement};
use switchboard_core::clock::now_ms;
use switchboard_core::tasks::TaskRecord;
use switchboard_protocol::methods::tasks::TaskStatus;
use switchboard_protocol::methods::tools::CallToolResult;

use crate::keys::Keys;
use crate::{Op, RedisBackend};

/// The field of an alias record (`<p>:task:{<alias>}`) that names the task it stands for.
const ALIAS_FIELD: &str = "at";

/// The keys of a step on an identity's slot (`submit_identity.lua`, `identity_settle.lua`):
/// its running set, its tasks, its result bytes.
pub(crate) fn identity_keys(k: &Keys, identity: &str) -> [String; 3] {
    [
        k.identity_running(identity),
        k.identity_tasks(identity),
        k.identity_bytes(identity),
    ]
}

/// The keys of a step on a call's slot (`submit_call.lua`, `finish.lua`): its cached result,
/// its lease and one of its tasks (`task_id` carries the call's tag).
pub(crate) fn call_keys(k: &Keys, call_hash: &str, task_id: &str) -> [String; 3] {
    [k.result(call_hash), k.lease(call_hash), k.task(task_id)]
}

/// The keys of `cancel.lua`: the caller's task, the leader task, the call's lease.
pub(crate) fn cancel_keys(k: &Keys, task: &TaskRecord) -> [String; 3] {
    let leader = task.leader.as_deref().unwrap_or(&task.task_id);
    [
        k.task(&task.task_id),
        k.task(leader),
        k.lease(&task.call_hash),
    ]
}

/// The job of a leader's call, as its queue's entry fields (`XADD` on the queue's slot).
fn job_fields(s: &Submission) -> Vec<(&'static str, String)> {
    let mut job = vec![
        ("task", s.task_id.clone()),
        ("owner", s.identity.clone()),
        ("hash", s.call_hash.clone()),
        ("tool", s.tool.name.clone()),
        ("args", s.arguments.to_string()),
        ("deadline", s.deadline_ms.to_string()),
        ("cache_ttl", s.cache_ttl_ms.to_string()),
        ("max_result", s.max_result_bytes.to_string()),
    ];
    // The submitting span's trace context, only when the gateway traces.
    if !s.trace.traceparent.is_empty() {
        job.push(("traceparent", s.trace.traceparent.clone()));
        if !s.trace.tracestate.is_empty() {
            job.push(("tracestate", s.trace.tracestate.clone()));
        }
    }
    job
}

impl RedisBackend {
    /// `identity_settle.lua`: the task leaves the identity's running set; `drop_task`: its
    /// reservation goes too (a refused call); `bytes` > 0: a stored result counted once.
    pub(crate) async fn settle_identity(
        &self,
        identity: &str,
        task_id: &str,
        drop_task: bool,
        bytes: u64,
    ) -> Result<(), BackendError> {
        let mut inv = IDENTITY_SETTLE.prepare_invoke();
        for key in identity_keys(&self.keys, identity) {
            inv.key(key);
        }
        inv.arg(task_id)
            .arg(now_ms())
            .arg(if drop_task { "1" } else { "0" })
            .arg(bytes);
        let mut conn = self.commands();
        self.bounded(Op::Calls, async move {
            inv.invoke_async::<i64>(&mut conn).await
        })
        .await
        .map(drop)
    }

    /// `finish.lua` (the call step of a finish): the outcome into the task unless it is no
    /// longer working, the cache (`cache_ttl_ms` > 0), the lease released, done published.
    /// Returns the bytes of the result the task holds now (0: none).
    pub(crate) async fn finish_call(
        &self,
        call_hash: &str,
        task_id: &str,
        status: TaskStatus,
        message: Option<&str>,
        result_json: &str,
        cache_ttl_ms: u64,
    ) -> Result<u64, BackendError> {
        let mut inv = FINISH.prepare_invoke();
        for key in call_keys(&self.keys, call_hash, task_id) {
            inv.key(key);
        }
        inv.arg(task_id)
            .arg(status.as_str())
            .arg(message.unwrap_or(""))
            .arg(result_json)
            .arg(now_ms())
            .arg(cache_ttl_ms)
            .arg(self.keys.done_channel());
        let mut conn = self.commands();
        self.bounded(Op::Calls, async move {
            inv.invoke_async::<u64>(&mut conn).await
        })
        .await
    }

    /// Settles a submission's identity step after its call step, logging (not failing the
    /// call) when Redis does not answer: the reservations then last until they expire.
    async fn settle_after_submit(&self, s: &Submission, drop_task: bool, bytes: u64) {
        if let Err(e) = self
            .settle_identity(&s.identity, &s.task_id, drop_task, bytes)
            .await
        {
            tracing::warn!(error = %e, task = %s.task_id, "settling a call's identity caps failed; its reservations last until they expire");
        }
    }

    /// The job of a leader could not be queued: the call step undone (task failed, lease
    /// released, done published, so joiners end now), then the identity settled.
    async fn undo_submit(&self, s: &Submission, why: &str) {
        let result = serde_json::to_string(&CallToolResult::error(why)).expect("results serialize");
        match self
            .finish_call(
                &s.call_hash,
                &s.task_id,
                TaskStatus::Failed,
                Some(why),
                &result,
                0,
            )
            .await
        {
            Ok(bytes) => self.settle_after_submit(s, false, bytes).await,
            Err(e) => {
                tracing::warn!(error = %e, task = %s.task_id, "undoing a call whose job was not queued failed; its callers wait until its deadline")
            }
        }
    }

    /// Step 2 of a submission gave no answer (an error, or a timeout after it may have run):
    /// what it wrote, if anything, is undone by what the caller's task says. No task: nothing
    /// was written, the reservations go. A joiner: it leaves the shared execution as a cancel
    /// does (one waiter fewer). A leader (no job was queued): failed, its lease released. A
    /// cached answer: kept, counted.
    async fn undo_call_step(&self, s: &Submission) {
        let why = "the call could not be submitted";
        match self.task(&s.task_id).await {
            Ok(None) => self.settle_after_submit(s, true, 0).await,
            Ok(Some(t)) if t.status != TaskStatus::Working => {
                let bytes = t
                    .result
                    .as_ref()
                    .and_then(|r| serde_json::to_string(r).ok())
                    .map_or(0, |r| r.len() as u64);
                self.settle_after_submit(s, false, bytes).await;
            }
            Ok(Some(t)) if t.leader.is_some() => {
                if let Err(e) = self.cancel(&t).await {
                    tracing::warn!(error = %e, task = %s.task_id, "leaving a joined call failed; the shared execution counts one waiter too many");
                }
                self.settle_after_submit(s, false, 0).await;
            }
            Ok(Some(_)) => self.undo_submit(s, why).await,
            Err(e) => {
                tracing::warn!(error = %e, task = %s.task_id, "cannot read a task whose submission failed; undoing it as a leader's");
                self.undo_submit(s, why).await;
            }
        }
    }

    /// Writes a session call's alias record (`<p>:task:{<alias>}`: `at` -> the task id), so
    /// the derived name finds the task from any node.
    async fn write_alias(&self, alias: &str, task_id: &str, ttl_ms: u64) {
        let key = self.keys.task(alias);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("HSET")
            .arg(&key)
            .arg(ALIAS_FIELD)
            .arg(task_id)
            .ignore()
            .cmd("PEXPIRE")
            .arg(&key)
            .arg(ttl_ms)
            .ignore();
        let mut conn = self.commands();
        if let Err(e) = self
            .bounded(Op::Calls, async move { pipe.exec_async(&mut conn).await })
            .await
        {
            tracing::warn!(error = %e, task = task_id, "writing a session call's alias failed; it is found by its id only");
        }
    }

    async fn read_task(&self, key: String) -> Result<HashMap<String, String>, BackendError> {
        let mut conn = self.commands();
        self.bounded(Op::Calls, async move {
            redis::cmd("HGETALL").arg(key).query_async(&mut conn).await
        })
        .await
    }
}

/// A lease outlives the call's deadline by this much, so a slow finish still releases it.
const LEASE_GRACE_MS: u64 = 5_000;

static SUBMIT_IDENTITY: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("lua/submit_identity.lua")));
static SUBMIT_CALL: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("lua/submit_call.lua")));
static IDENTITY_SETTLE: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("lua/identity_settle.lua")));
static FINISH: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("lua/finish.lua")));
static CANCEL: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("lua/cancel.lua")));

#[async_trait]
impl CallPlane for RedisBackend {
    fn set_sink(&self, sink: Arc<dyn CallSink>) {
        let _ = self.sinks.calls.set(sink);
    }

    async fn prepare(&self) -> Result<(), BackendError> {
        self.listen(vec![self.keys.done_channel(), self.keys.progress_channel()])
            .await
    }

    async fn workers(&self) -> Result<Vec<WorkerAnnouncement>, BackendError> {
        let mut conn = self.commands();
        let key = self.keys.workers();
        let all: HashMap<String, String> = self
            .bounded(Op::Calls, async move {
                redis::cmd("HGETALL").arg(key).query_async(&mut conn).await
            })
            .await?;
        let now = now_ms();
        let mut stale = Vec::new();
        let mut live = Vec::new();
        for (id, json) in all {
            match serde_json::from_str::<WorkerAnnouncement>(&json) {
                Ok(a) if a.expires_at_ms > now => live.push(a),
                _ => stale.push(id),
            }
        }
        if !stale.is_empty() {
            // Announcements of dead workers are swept by whoever reads them first.
            let mut conn = self.commands();
            let key = self.keys.workers();
            let _ = self
                .bounded(Op::Calls, async move {
                    redis::cmd("HDEL")
                        .arg(key)
                        .arg(stale)
                        .query_async::<i64>(&mut conn)
                        .await
                })
                .await;
        }
        live.sort_by(|a, b| a.worker_id.cmp(&b.worker_id));
        Ok(live)
    }

    async fn submit(&self, s: &Submission) -> Result<Submitted, BackendError> {
        let k = &self.keys;
        let now = now_ms();
        let lease_ttl = s.deadline_ms.saturating_sub(now) + LEASE_GRACE_MS;
        // 1. The identity's slot: caps, reservations.
        let mut inv = SUBMIT_IDENTITY.prepare_invoke();
        for key in identity_keys(k, &s.identity) {
            inv.key(key);
        }
        inv.arg(&s.task_id)
            .arg(now)
            .arg(s.task_ttl_ms)
            .arg(lease_ttl)
            .arg(s.caps.max_running)
            .arg(s.caps.max_tasks)
            .arg(s.caps.max_task_bytes);
        let mut conn = self.commands();
        let identity_step =
            self.bounded(Op::Calls, async move { inv.invoke_async(&mut conn).await });
        // A session call's alias goes along (its own slot, pipelined with step 1): the sooner
        // it is there, the sooner a cancel sent to another node finds the call. An alias of a
        // call refused or failed names no task, which reads as none.
        let alias = async {
            if let Some(alias) = &s.alias {
                self.write_alias(alias, &s.task_id, s.task_ttl_ms).await;
            }
        };
        let (identity_step, ()) = tokio::join!(identity_step, alias);
        let (kind, value): (String, String) = identity_step?;
        if kind == "refused" {
            return Ok(Submitted::Refused(refusal(&value)?));
        }
        let may_lead = value == "1";
        // 2. The call's slot: cache, lease, the caller's task. Should it fail (or time out
        // after running), whatever it wrote is undone (`undo_call_step`).
        let mut inv = SUBMIT_CALL.prepare_invoke();
        for key in call_keys(k, &s.call_hash, &s.task_id) {
            inv.key(key);
        }
        inv.arg(&s.task_id)
            .arg(&s.owner)
            .arg(now)
            .arg(s.task_ttl_ms)
            .arg(s.poll_interval_ms)
            .arg(&s.call_hash)
            .arg(&s.tool.name)
            .arg(if s.read_cache { "1" } else { "0" })
            .arg(lease_ttl)
            .arg(if may_lead { "1" } else { "0" });
        let mut conn = self.commands();
        let call_step = self
            .bounded(Op::Calls, async move { inv.invoke_async(&mut conn).await })
            .await;
        let (kind, value): (String, String) = match call_step {
            Ok(answer) => answer,
            Err(e) => {
                self.undo_call_step(s).await;
                return Err(e);
            }
        };
        if kind == "refused" {
            // 4. Nothing was written on the call's slot: the task reservation goes.
            self.settle_after_submit(s, true, 0).await;
            return Ok(Submitted::Refused(refusal(&value)?));
        }
        let mut record = s.new_task(now);
        Ok(match kind.as_str() {
            "cached" => {
                // 4. Not leading; the cached result counts while the task is stored.
                self.settle_after_submit(s, false, value.len() as u64).await;
                record.status = TaskStatus::Completed;
                record.cached = true;
                record.result = serde_json::from_str(&value).ok();
                Submitted::Cached(record)
            }
            "joined" => {
                // 4. Not leading: the running reservation goes.
                self.settle_after_submit(s, false, 0).await;
                record.leader = Some(value);
                Submitted::Joined(record)
            }
            _ => {
                // 3. The queue's slot: the job.
                let fields = job_fields(s);
                let queue = k.tool_queue(&s.queue);
                let mut conn = self.commands();
                let queued = self
                    .bounded(Op::Calls, async move {
                        redis::cmd("XADD")
                            .arg(queue)
                            .arg("*")
                            .arg(&fields[..])
                            .query_async::<String>(&mut conn)
                            .await
                    })
                    .await;
                if let Err(e) = queued {
                    self.undo_submit(s, "the call's job could not be queued")
                        .await;
                    return Err(e);
                }
                Submitted::Leader(record)
            }
        })
    }

    async fn task(&self, task_id: &str) -> Result<Option<TaskRecord>, BackendError> {
        let fields = self.read_task(self.keys.task(task_id)).await?;
        // A session call's alias: the record it names.
        if !fields.contains_key("owner")
            && let Some(id) = fields.get(ALIAS_FIELD)
        {
            let fields = self.read_task(self.keys.task(id)).await?;
            return Ok(TaskRecord::from_fields(id, &fields));
        }
        Ok(TaskRecord::from_fields(task_id, &fields))
    }

    async fn cancel(&self, task: &TaskRecord) -> Result<(), BackendError> {
        let leader = task.leader.as_deref().unwrap_or(&task.task_id);
        let mut inv = CANCEL.prepare_invoke();
        for key in cancel_keys(&self.keys, task) {
            inv.key(key);
        }
        inv.arg(leader)
            .arg(now_ms())
            .arg(self.keys.cancel_channel());
        let mut conn = self.commands();
        self.bounded(Op::Calls, async move {
            inv.invoke_async::<i64>(&mut conn).await
        })
        .await
        .map(drop)
    }
}

/// A cap refusal from the scripts' word for it.
fn refusal(value: &str) -> Result<CapReached, BackendError> {
    CapReached::parse(value)
        .ok_or_else(|| BackendError::Unavailable(format!("unknown cap {value}")))
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use switchboard_core::callhash::call_hash;
    use switchboard_core::tasks::{new_task_id, session_task_id, tagged_task_id};
    use switchboard_core::tools::ToolSpec;

    use super::*;
    use crate::slots::slot;

    /// Every key of `keys` is in one slot (what Redis Cluster asks of a script or pipeline).
    fn one_slot(what: &str, keys: &[String]) {
        let first = slot(keys[0].as_bytes());
        for k in keys {
            assert_eq!(
                slot(k.as_bytes()),
                first,
                "{what}: {k} is not in the slot of {}",
                keys[0]
            );
        }
    }

    fn tool() -> ToolSpec {
        serde_json::from_value(json!({
            "name": "echo",
            "description": "echo",
            "inputSchema": {"type": "object"},
            "timeoutMs": 1000,
        }))
        .expect("a tool spec")
    }

    #[test]
    fn every_step_of_the_call_plane_touches_one_slot() {
        let k = Keys::new("sb");
        for (n, args) in [json!({"a": 1}), json!({"b": "x"}), json!([1, 2, 3])]
            .iter()
            .enumerate()
        {
            let hash = call_hash(&tool(), args, "alice");
            let leader = new_task_id(&hash);
            let joiner = tagged_task_id(&hash, &session_task_id("s1", &n.to_string()));
            for identity in ["alice", "anonymous@10.0.0.7", "a}b", "", "}a", "{x}"] {
                one_slot("identity step", &identity_keys(&k, identity));
            }
            // submit_call.lua and finish.lua, for a leader and a joiner.
            let lead = call_keys(&k, &hash, &leader);
            let join = call_keys(&k, &hash, &joiner);
            one_slot("call step (leader)", &lead);
            one_slot("call step (joiner)", &join);
            // A call's keys all share the slot, whoever calls it.
            assert_eq!(slot(lead[0].as_bytes()), slot(join[2].as_bytes()));
            // cancel.lua, by the leader and by a joiner.
            let mut record = TaskRecord {
                task_id: leader.clone(),
                owner: "alice".into(),
                status: TaskStatus::Working,
                status_message: None,
                created_at_ms: 0,
                last_updated_at_ms: 0,
                ttl_ms: 1,
                poll_interval_ms: 1,
                call_hash: hash.clone(),
                tool: "echo".into(),
                leader: None,
                cached: false,
                caller_cancelled: false,
                result: None,
            };
            one_slot("cancel (leader)", &cancel_keys(&k, &record));
            record.task_id = joiner.clone();
            record.leader = Some(leader.clone());
            one_slot("cancel (joiner)", &cancel_keys(&k, &record));
        }
    }

    #[test]
    fn different_calls_spread_over_slots() {
        // The tag is the call's own: calls do not pile into one slot.
        let k = Keys::new("sb");
        let slots: std::collections::HashSet<u16> = (0..64)
            .map(|i| {
                let hash = call_hash(&tool(), &json!({ "i": i }), "alice");
                slot(k.lease(&hash).as_bytes())
            })
            .collect();
        assert!(slots.len() > 32, "{slots:?}");
    }
}
