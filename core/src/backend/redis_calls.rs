//! The call plane on Redis (see [`crate::calls`] and `docs/redis.md`).
//!
//! - A tool's jobs queue in a stream (`<p>:q:{tool}`) read through one consumer group; a worker
//!   keeps a running job visible to itself with `XCLAIM ... JUSTID` heartbeats, and a job whose
//!   worker went silent is taken over with `XPENDING IDLE` + `XCLAIM` (which counts deliveries:
//!   past the limit the job is dead-lettered). Streams are never trimmed by length (that would
//!   drop unacknowledged jobs); a finished job is acknowledged and deleted.
//! - [`SUBMIT`] decides, atomically, between a cache hit, joining an identical call in flight
//!   (its lease), and taking the lease and queueing a new job; it writes the caller's task.
//! - [`FINISH`] writes the outcome into the leader task (unless cancelled), the cache, releases
//!   the lease, acknowledges the job and publishes the done signal, in one step.
//! - [`CANCEL`] cancels a task; the execution itself is cancelled when its last waiter goes.
//!
//! The scripts touch keys of several hash tags, which a single Redis (or a primary with
//! replicas) allows; Redis Cluster support needs them split (noted in `docs/redis.md`).

use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::Duration;

use redis::Value;
use redis::streams::{StreamClaimReply, StreamReadReply};

use super::BackendError;
use super::redis::RedisBackend;
use crate::calls::{Job, Progress, Reclaimed, Submission, Submitted, WorkerAnnouncement};
use crate::keys::WORKER_GROUP;
use crate::tasks::{TaskRecord, TaskStatus, now_ms};
use crate::tools::CallToolResult;

/// A lease outlives the call's deadline by this much, so a slow finish still releases it.
const LEASE_GRACE_MS: u64 = 5_000;

/// KEYS: result, lease, task, queue. ARGV: task id, owner, now, task ttl, poll interval, hash,
/// tool, read cache (1/0), lease ttl, arguments, deadline, cache ttl.
static SUBMIT: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
local function task(status, leader, cached, result)
  redis.call('HSET', KEYS[3], 'owner', ARGV[2], 'status', status, 'created', ARGV[3],
    'updated', ARGV[3], 'ttl', ARGV[4], 'poll', ARGV[5], 'hash', ARGV[6], 'tool', ARGV[7],
    'cached', cached)
  if leader ~= '' then redis.call('HSET', KEYS[3], 'leader', leader) end
  if result ~= '' then redis.call('HSET', KEYS[3], 'result', result) end
  redis.call('PEXPIRE', KEYS[3], ARGV[4])
end
if ARGV[8] == '1' then
  local r = redis.call('GET', KEYS[1])
  if r then
    task('completed', '', '1', r)
    return {'cached', r}
  end
end
local leader = redis.call('HGET', KEYS[2], 'task')
if leader then
  redis.call('HINCRBY', KEYS[2], 'waiters', 1)
  task('working', leader, '0', '')
  return {'joined', leader}
end
redis.call('HSET', KEYS[2], 'task', ARGV[1], 'waiters', 1)
redis.call('PEXPIRE', KEYS[2], ARGV[9])
task('working', '', '0', '')
redis.call('XADD', KEYS[4], '*', 'task', ARGV[1], 'hash', ARGV[6], 'tool', ARGV[7],
  'args', ARGV[10], 'deadline', ARGV[11], 'cache_ttl', ARGV[12])
return {'leader', ARGV[1]}
"#,
    )
});

/// KEYS: task, result, lease, queue. ARGV: task id, status, message, result, now, cache ttl,
/// entry id, group, done channel.
static FINISH: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
if redis.call('HGET', KEYS[1], 'status') == 'working' then
  redis.call('HSET', KEYS[1], 'status', ARGV[2], 'updated', ARGV[5], 'result', ARGV[4])
  if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'message', ARGV[3]) end
end
if tonumber(ARGV[6]) > 0 then redis.call('SET', KEYS[2], ARGV[4], 'PX', ARGV[6]) end
if redis.call('HGET', KEYS[3], 'task') == ARGV[1] then redis.call('DEL', KEYS[3]) end
redis.call('XACK', KEYS[4], ARGV[8], ARGV[7])
redis.call('XDEL', KEYS[4], ARGV[7])
redis.call('PUBLISH', ARGV[9], ARGV[1])
return 1
"#,
    )
});

/// KEYS: task, leader task, lease. ARGV: leader id, now, cancel channel. Marks the caller's
/// task cancelled *for the caller* (`ccancel`): a leader's `status` is the shared execution's,
/// which goes on while other callers wait for it.
static CANCEL: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
if redis.call('HGET', KEYS[1], 'status') ~= 'working' then return 0 end
if redis.call('HGET', KEYS[1], 'ccancel') == '1' then return 0 end
redis.call('HSET', KEYS[1], 'ccancel', '1', 'updated', ARGV[2])
if redis.call('HGET', KEYS[3], 'task') == ARGV[1] then
  if redis.call('HINCRBY', KEYS[3], 'waiters', -1) <= 0 then
    if redis.call('HGET', KEYS[2], 'status') == 'working' then
      redis.call('HSET', KEYS[2], 'status', 'cancelled', 'updated', ARGV[2])
    end
    redis.call('DEL', KEYS[3])
    redis.call('PUBLISH', ARGV[3], ARGV[1])
  end
end
return 1
"#,
    )
});

/// KEYS: queue. ARGV: group, consumer, entry id. Resets the entry's idle time only while this
/// consumer still owns it; 0 when another worker has taken it over (fencing).
static EXTEND: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #p == 0 or p[1][2] ~= ARGV[2] then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
return 1
"#,
    )
});

/// Dead letters kept, approximately (`XADD ... MAXLEN ~`): the dead-letter queue is for
/// inspection, not work, so trimming it loses nothing that runs.
const DEAD_LETTERS_KEPT: usize = 10_000;

fn err(e: redis::RedisError) -> BackendError {
    BackendError::Unavailable(e.to_string())
}

fn bulk(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

fn job_of(
    queue: &str,
    entry_id: &str,
    map: &HashMap<String, Value>,
    deliveries: u64,
) -> Option<Job> {
    let get = |k: &str| map.get(k).and_then(bulk);
    Some(Job {
        entry_id: entry_id.to_owned(),
        queue: queue.to_owned(),
        tool: get("tool")?,
        task_id: get("task")?,
        call_hash: get("hash")?,
        arguments: serde_json::from_str(&get("args")?).ok()?,
        deadline_ms: get("deadline")?.parse().ok()?,
        cache_ttl_ms: get("cache_ttl").and_then(|v| v.parse().ok()).unwrap_or(0),
        deliveries,
    })
}

impl RedisBackend {
    pub(super) async fn calls_tools(&self) -> Result<Vec<WorkerAnnouncement>, BackendError> {
        let mut conn = self.commands();
        let key = self.keys().workers();
        let all: HashMap<String, String> = self
            .bounded(async move { redis::cmd("HGETALL").arg(key).query_async(&mut conn).await })
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
            let key = self.keys().workers();
            let _ = self
                .bounded(async move {
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

    pub(super) async fn calls_submit(&self, s: &Submission) -> Result<Submitted, BackendError> {
        let k = self.keys();
        let now = now_ms();
        let lease_ttl = s.deadline_ms.saturating_sub(now) + LEASE_GRACE_MS;
        let mut inv = SUBMIT.prepare_invoke();
        inv.key(k.result(&s.call_hash))
            .key(k.lease(&s.call_hash))
            .key(k.task(&s.task_id))
            .key(k.tool_queue(&s.queue))
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
            .arg(s.cache_ttl_ms);
        let mut conn = self.commands();
        let (kind, value): (String, String) = self
            .bounded(async move { inv.invoke_async(&mut conn).await })
            .await?;
        let mut record = s.new_task(now);
        Ok(match kind.as_str() {
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

    pub(super) async fn calls_task(
        &self,
        task_id: &str,
    ) -> Result<Option<TaskRecord>, BackendError> {
        let mut conn = self.commands();
        let key = self.keys().task(task_id);
        let fields: HashMap<String, String> = self
            .bounded(async move { redis::cmd("HGETALL").arg(key).query_async(&mut conn).await })
            .await?;
        Ok(TaskRecord::from_fields(task_id, &fields))
    }

    pub(super) async fn calls_cancel(&self, task: &TaskRecord) -> Result<(), BackendError> {
        let k = self.keys();
        let leader = task.leader.as_deref().unwrap_or(&task.task_id);
        let mut inv = CANCEL.prepare_invoke();
        inv.key(k.task(&task.task_id))
            .key(k.task(leader))
            .key(k.lease(&task.call_hash))
            .arg(leader)
            .arg(now_ms())
            .arg(k.cancel_channel());
        let mut conn = self.commands();
        self.bounded(async move { inv.invoke_async::<i64>(&mut conn).await })
            .await
            .map(drop)
    }

    pub(super) async fn calls_announce(&self, a: &WorkerAnnouncement) -> Result<(), BackendError> {
        let json = serde_json::to_string(a).expect("announcements serialize");
        let mut conn = self.commands();
        let key = self.keys().workers();
        let id = a.worker_id.clone();
        self.bounded(async move {
            redis::cmd("HSET")
                .arg(key)
                .arg(id)
                .arg(json)
                .query_async::<i64>(&mut conn)
                .await
        })
        .await
        .map(drop)
    }

    pub(super) async fn calls_withdraw(&self, worker_id: &str) -> Result<(), BackendError> {
        let mut conn = self.commands();
        let key = self.keys().workers();
        let id = worker_id.to_owned();
        self.bounded(async move {
            redis::cmd("HDEL")
                .arg(key)
                .arg(id)
                .query_async::<i64>(&mut conn)
                .await
        })
        .await
        .map(drop)
    }

    pub(super) async fn calls_prepare(&self, tools: &[String]) -> Result<(), BackendError> {
        for tool in tools {
            let mut conn = self.commands();
            let key = self.keys().tool_queue(tool);
            let created = self
                .bounded(async move {
                    redis::cmd("XGROUP")
                        .arg("CREATE")
                        .arg(key)
                        .arg(WORKER_GROUP)
                        .arg("0")
                        .arg("MKSTREAM")
                        .query_async::<Value>(&mut conn)
                        .await
                })
                .await;
            match created {
                Ok(_) => {}
                Err(BackendError::Unavailable(m)) if m.contains("BUSYGROUP") => {}
                Err(e) => return Err(e),
            }
        }
        // Cancellations reach every worker on the pub/sub connection.
        let mut pubsub = self.pubsub();
        let channel = self.keys().cancel_channel();
        self.bounded(async move { pubsub.subscribe(channel).await })
            .await
    }

    pub(super) async fn calls_fetch(
        &self,
        worker_id: &str,
        tools: &[String],
        max: usize,
        block: Duration,
    ) -> Result<Vec<Job>, BackendError> {
        if tools.is_empty() || max == 0 {
            tokio::time::sleep(block).await;
            return Ok(Vec::new());
        }
        let keys: Vec<String> = tools.iter().map(|t| self.keys().tool_queue(t)).collect();
        let ids: Vec<&str> = tools.iter().map(|_| ">").collect();
        let mut conn = self.blocking();
        let reply: Option<StreamReadReply> =
            tokio::time::timeout(block + self.op_timeout(), async move {
                redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg(WORKER_GROUP)
                    .arg(worker_id)
                    .arg("COUNT")
                    .arg(max)
                    .arg("BLOCK")
                    .arg(block.as_millis() as u64)
                    .arg("STREAMS")
                    .arg(&keys)
                    .arg(&ids)
                    .query_async(&mut conn)
                    .await
            })
            .await
            .map_err(|_| BackendError::Timeout)?
            .map_err(err)?;
        let mut jobs = Vec::new();
        for stream in reply.map(|r| r.keys).unwrap_or_default() {
            let Some(tool) = tools
                .iter()
                .find(|t| self.keys().tool_queue(t) == stream.key)
            else {
                continue;
            };
            for entry in stream.ids {
                match job_of(tool, &entry.id, &entry.map, 1) {
                    Some(job) => jobs.push(job),
                    None => {
                        tracing::warn!(tool, id = %entry.id, "malformed job; dropping it");
                        self.ack(&stream.key, &entry.id).await?;
                    }
                }
            }
        }
        Ok(jobs)
    }

    async fn ack(&self, queue: &str, entry_id: &str) -> Result<(), BackendError> {
        let mut conn = self.commands();
        let mut pipe = redis::pipe();
        pipe.cmd("XACK")
            .arg(queue)
            .arg(WORKER_GROUP)
            .arg(entry_id)
            .ignore();
        pipe.cmd("XDEL").arg(queue).arg(entry_id).ignore();
        self.bounded(async move { pipe.exec_async(&mut conn).await })
            .await
    }

    pub(super) async fn calls_extend(
        &self,
        worker_id: &str,
        job: &Job,
    ) -> Result<bool, BackendError> {
        let mut inv = EXTEND.prepare_invoke();
        inv.key(self.keys().tool_queue(&job.queue))
            .arg(WORKER_GROUP)
            .arg(worker_id)
            .arg(&job.entry_id);
        let mut conn = self.commands();
        let kept: i64 = self
            .bounded(async move { inv.invoke_async(&mut conn).await })
            .await?;
        Ok(kept == 1)
    }

    pub(super) async fn calls_reclaim(
        &self,
        worker_id: &str,
        tools: &[String],
        min_idle: Duration,
        max_deliveries: u64,
        max: usize,
    ) -> Result<Vec<Reclaimed>, BackendError> {
        let mut out = Vec::new();
        let idle = min_idle.as_millis() as u64;
        for tool in tools {
            let key = self.keys().tool_queue(tool);
            let mut conn = self.commands();
            let k = key.clone();
            // [id, consumer, idle ms, deliveries] of entries silent for at least `min_idle`.
            let pending: Vec<(String, String, u64, u64)> = self
                .bounded(async move {
                    redis::cmd("XPENDING")
                        .arg(k)
                        .arg(WORKER_GROUP)
                        .arg("IDLE")
                        .arg(idle)
                        .arg("-")
                        .arg("+")
                        .arg(max)
                        .query_async(&mut conn)
                        .await
                })
                .await?;
            for (id, _owner, _idle, deliveries) in pending {
                let mut conn = self.commands();
                let (k, i, w) = (key.clone(), id.clone(), worker_id.to_owned());
                let claimed: StreamClaimReply = self
                    .bounded(async move {
                        redis::cmd("XCLAIM")
                            .arg(k)
                            .arg(WORKER_GROUP)
                            .arg(w)
                            .arg(idle)
                            .arg(i)
                            .query_async(&mut conn)
                            .await
                    })
                    .await?;
                // Empty: another worker claimed it first, or it was deleted meanwhile.
                for entry in claimed.ids {
                    match job_of(tool, &entry.id, &entry.map, deliveries + 1) {
                        Some(job) if deliveries >= max_deliveries => out.push(Reclaimed::Dead(job)),
                        Some(job) => out.push(Reclaimed::Run(job)),
                        None => self.ack(&key, &entry.id).await?,
                    }
                }
            }
        }
        Ok(out)
    }

    pub(super) async fn calls_finish(
        &self,
        job: &Job,
        status: TaskStatus,
        message: Option<&str>,
        result: &CallToolResult,
    ) -> Result<(), BackendError> {
        let k = self.keys();
        let cache_ttl = if status == TaskStatus::Completed && !result.is_error {
            job.cache_ttl_ms
        } else {
            0
        };
        let mut inv = FINISH.prepare_invoke();
        inv.key(k.task(&job.task_id))
            .key(k.result(&job.call_hash))
            .key(k.lease(&job.call_hash))
            .key(k.tool_queue(&job.queue))
            .arg(&job.task_id)
            .arg(status.as_str())
            .arg(message.unwrap_or(""))
            .arg(serde_json::to_string(result).expect("results serialize"))
            .arg(now_ms())
            .arg(cache_ttl)
            .arg(&job.entry_id)
            .arg(WORKER_GROUP)
            .arg(k.done_channel());
        let mut conn = self.commands();
        self.bounded(async move { inv.invoke_async::<i64>(&mut conn).await })
            .await
            .map(drop)
    }

    pub(super) async fn calls_dead_letter(
        &self,
        job: &Job,
        reason: &str,
    ) -> Result<(), BackendError> {
        let mut conn = self.commands();
        let key = self.keys().dead_letters();
        let fields = [
            ("queue", job.queue.clone()),
            ("tool", job.tool.clone()),
            ("task", job.task_id.clone()),
            ("hash", job.call_hash.clone()),
            ("args", job.arguments.to_string()),
            ("deliveries", job.deliveries.to_string()),
            ("reason", reason.to_owned()),
        ];
        self.bounded(async move {
            redis::cmd("XADD")
                .arg(key)
                .arg("MAXLEN")
                .arg("~")
                .arg(DEAD_LETTERS_KEPT)
                .arg("*")
                .arg(&fields[..])
                .query_async::<String>(&mut conn)
                .await
        })
        .await
        .map(drop)
    }

    pub(super) async fn calls_progress(&self, p: &Progress) -> Result<(), BackendError> {
        let mut conn = self.commands();
        let channel = self.keys().progress_channel();
        let json = serde_json::to_string(p).expect("progress serializes");
        self.bounded(async move {
            redis::cmd("PUBLISH")
                .arg(channel)
                .arg(json)
                .query_async::<i64>(&mut conn)
                .await
        })
        .await
        .map(drop)
    }

    pub(super) async fn calls_task_status(
        &self,
        task_id: &str,
    ) -> Result<Option<TaskStatus>, BackendError> {
        let mut conn = self.commands();
        let key = self.keys().task(task_id);
        let status: Option<String> = self
            .bounded(async move {
                redis::cmd("HGET")
                    .arg(key)
                    .arg("status")
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        Ok(status.as_deref().and_then(TaskStatus::parse))
    }

    /// Subscribes the gateway's signal channels (done, progress). Idempotent.
    pub(super) async fn calls_listen(&self) -> Result<(), BackendError> {
        let mut pubsub = self.pubsub();
        let channels = vec![self.keys().done_channel(), self.keys().progress_channel()];
        self.bounded(async move { pubsub.subscribe(channels).await })
            .await
    }
}
