//! The gateway's side of the call plane on Redis (`docs/redis.md`): a call is submitted by
//! `lua/submit.lua`, which decides atomically between a cache hit, joining an identical call in
//! flight (its lease), and taking the lease and queueing a new job on the tool's stream, and
//! writes the caller's task; `lua/cancel.lua` cancels a task, and the execution when its last
//! waiter goes. Finished executions and progress come back on the `done` and `progress`
//! channels. The worker registry is one hash.
//!
//! The scripts touch keys of several hash tags, which a single Redis (or a primary with
//! replicas) allows; Redis Cluster support needs them split (noted in `docs/redis.md`).

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use async_trait::async_trait;
use switchboard_core::backend::{BackendError, CallPlane, CallSink};
use switchboard_core::calls::{CapReached, Submission, Submitted, WorkerAnnouncement};
use switchboard_core::clock::now_ms;
use switchboard_core::tasks::TaskRecord;
use switchboard_protocol::methods::tasks::TaskStatus;

use crate::{Op, RedisBackend};

/// A lease outlives the call's deadline by this much, so a slow finish still releases it.
const LEASE_GRACE_MS: u64 = 5_000;

static SUBMIT: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("lua/submit.lua")));
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
        let mut inv = SUBMIT.prepare_invoke();
        inv.key(k.result(&s.call_hash))
            .key(k.lease(&s.call_hash))
            .key(k.task(&s.task_id))
            .key(k.tool_queue(&s.queue))
            .key(k.identity_running(&s.identity))
            .key(k.identity_tasks(&s.identity))
            .key(k.identity_bytes(&s.identity))
            .arg(&s.task_id)
            .arg(&s.owner)
            .arg(now)
            .arg(s.task_ttl_ms)
            .arg(s.poll_interval_ms)
            .arg(&s.call_hash)
            .arg(&s.tool.name)
            .arg(if s.read_cache { "1" } else { "0" })
            .arg(lease_ttl)
            .arg(s.arguments.to_string())
            .arg(s.deadline_ms)
            .arg(s.cache_ttl_ms)
            .arg(&s.identity)
            .arg(s.caps.max_running)
            .arg(s.caps.max_tasks)
            .arg(s.caps.max_task_bytes)
            .arg(s.max_result_bytes)
            .arg(&s.trace.traceparent)
            .arg(&s.trace.tracestate);
        let mut conn = self.commands();
        let (kind, value): (String, String) = self
            .bounded(Op::Calls, async move { inv.invoke_async(&mut conn).await })
            .await?;
        let mut record = s.new_task(now);
        Ok(match kind.as_str() {
            "refused" => Submitted::Refused(
                CapReached::parse(&value)
                    .ok_or_else(|| BackendError::Unavailable(format!("unknown cap {value}")))?,
            ),
            "cached" => {
                record.status = TaskStatus::Completed;
                record.cached = true;
                record.result = serde_json::from_str(&value).ok();
                Submitted::Cached(record)
            }
            "joined" => {
                record.leader = Some(value);
                Submitted::Joined(record)
            }
            _ => Submitted::Leader(record),
        })
    }

    async fn task(&self, task_id: &str) -> Result<Option<TaskRecord>, BackendError> {
        let mut conn = self.commands();
        let key = self.keys.task(task_id);
        let fields: HashMap<String, String> = self
            .bounded(Op::Calls, async move {
                redis::cmd("HGETALL").arg(key).query_async(&mut conn).await
            })
            .await?;
        Ok(TaskRecord::from_fields(task_id, &fields))
    }

    async fn cancel(&self, task: &TaskRecord) -> Result<(), BackendError> {
        let k = &self.keys;
        let leader = task.leader.as_deref().unwrap_or(&task.task_id);
        let mut inv = CANCEL.prepare_invoke();
        inv.key(k.task(&task.task_id))
            .key(k.task(leader))
            .key(k.lease(&task.call_hash))
            .arg(leader)
            .arg(now_ms())
            .arg(k.cancel_channel());
        let mut conn = self.commands();
        self.bounded(Op::Calls, async move {
            inv.invoke_async::<i64>(&mut conn).await
        })
        .await
        .map(drop)
    }
}
