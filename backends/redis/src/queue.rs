//! The worker's side of the call plane on Redis (`docs/redis.md`).
//!
//! A tool version's jobs queue in a stream (`<p>:q:{tool}@<digest>`) read through one consumer
//! group; a worker keeps a running job visible to itself with `XCLAIM ... JUSTID` heartbeats
//! (`lua/extend.lua`, fenced: only while it still owns the job), and a job whose worker went
//! silent is taken over with `XPENDING IDLE` + `XCLAIM` (which counts deliveries: past the limit
//! the job is dead-lettered). Streams are never trimmed by length (that would drop
//! unacknowledged jobs). A finish is three steps, each on one slot: `lua/finish.lua` on the
//! call's slot (the outcome into the leader task unless it is no longer working, the cache, the
//! lease released, the done signal), `lua/identity_settle.lua` on the owner's slot (out of the
//! running set, the result's bytes counted), then `XACK` + `XDEL` on the queue's slot. Each is
//! idempotent, so a finish retried, or repeated by the worker that reclaims the job, changes
//! nothing more (`crate::calls`).

use std::collections::{BTreeMap, HashMap};
use std::sync::LazyLock;
use std::time::Duration;

use async_trait::async_trait;
use redis::Value;
use redis::streams::{StreamClaimReply, StreamKey, StreamRangeReply, StreamReadReply};
use switchboard_core::backend::{BackendError, Health, JobQueue, QueueDepth};
use switchboard_core::calls::{
    DEFAULT_MAX_RESULT_BYTES, Job, Progress, Reclaimed, TraceContext, WorkerAnnouncement,
};
use switchboard_protocol::methods::tasks::TaskStatus;
use switchboard_protocol::methods::tools::CallToolResult;

use crate::keys::WORKER_GROUP;
use crate::links::Role;
use crate::slots::slot;
use crate::{Op, Plane, RedisBackend};

static EXTEND: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("lua/extend.lua")));

/// Dead letters kept, approximately (`XADD ... MAXLEN ~`): the dead-letter queue is for
/// inspection, not work, so trimming it loses nothing that runs.
const DEAD_LETTERS_KEPT: usize = 10_000;

/// Entries read at once when a retired queue is emptied.
const RETIRE_PAGE: usize = 256;

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
        // Jobs queued before jobs carried their owner share one identity.
        owner: get("owner").unwrap_or_default(),
        call_hash: get("hash")?,
        arguments: serde_json::from_str(&get("args")?).ok()?,
        deadline_ms: get("deadline")?.parse().ok()?,
        cache_ttl_ms: get("cache_ttl").and_then(|v| v.parse().ok()).unwrap_or(0),
        max_result_bytes: get("max_result")
            .and_then(|v| v.parse().ok())
            .unwrap_or(DEFAULT_MAX_RESULT_BYTES),
        deliveries,
        trace: TraceContext {
            traceparent: get("traceparent").unwrap_or_default(),
            tracestate: get("tracestate").unwrap_or_default(),
        },
    })
}

impl RedisBackend {
    async fn ack(&self, queue: &str, entry_id: &str) -> Result<(), BackendError> {
        let mut conn = self.commands();
        let mut pipe = redis::pipe();
        pipe.cmd("XACK")
            .arg(queue)
            .arg(WORKER_GROUP)
            .arg(entry_id)
            .ignore();
        pipe.cmd("XDEL").arg(queue).arg(entry_id).ignore();
        self.bounded(Op::Queue, async move { pipe.exec_async(&mut conn).await })
            .await
    }
}

/// The idleness given to a released job's entry (`JobQueue::release`): longer than any
/// reclaim's `min_idle`, so the next reclaim takes it.
const RELEASED_IDLE: Duration = Duration::from_secs(24 * 3600);

#[async_trait]
impl JobQueue for RedisBackend {
    async fn announce(&self, a: &WorkerAnnouncement) -> Result<(), BackendError> {
        let json = serde_json::to_string(a).expect("announcements serialize");
        let mut conn = self.commands();
        let key = self.keys.workers();
        let id = a.worker_id.clone();
        self.bounded(Op::Queue, async move {
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

    async fn withdraw(&self, worker_id: &str) -> Result<(), BackendError> {
        let mut conn = self.commands();
        let key = self.keys.workers();
        let id = worker_id.to_owned();
        self.bounded(Op::Queue, async move {
            redis::cmd("HDEL")
                .arg(key)
                .arg(id)
                .query_async::<i64>(&mut conn)
                .await
        })
        .await
        .map(drop)
    }

    async fn prepare(&self, tools: &[String]) -> Result<(), BackendError> {
        for tool in tools {
            let mut conn = self.commands();
            let key = self.keys.tool_queue(tool);
            let created = self
                .bounded(Op::Queue, async move {
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
        self.listen(vec![self.keys.cancel_channel()]).await
    }

    async fn fetch(
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
        let keys: Vec<String> = tools.iter().map(|t| self.keys.tool_queue(t)).collect();
        let streams: Vec<StreamKey> = match &self.plane {
            Plane::Node(links) => {
                let ids: Vec<&str> = tools.iter().map(|_| ">").collect();
                let mut conn = links.conn(Role::Blocking);
                let mut cmd = redis::cmd("XREADGROUP");
                cmd.arg("GROUP")
                    .arg(WORKER_GROUP)
                    .arg(worker_id)
                    .arg("COUNT")
                    .arg(max)
                    .arg("BLOCK")
                    .arg(block.as_millis() as u64)
                    .arg("STREAMS")
                    .arg(&keys)
                    .arg(&ids);
                let read = cmd.query_async::<Option<StreamReadReply>>(&mut conn);
                tokio::time::timeout(block + self.op_timeout, read)
                    .await
                    .map_err(|_| BackendError::Timeout)?
                    .map_err(err)?
                    .map(|r| r.keys)
                    .unwrap_or_default()
            }
            // Queues of several slots: one read per slot, each on a dedicated connection.
            Plane::Cluster(cluster) => cluster
                .read_groups(WORKER_GROUP, worker_id, &keys, max, block)
                .await
                .map_err(err)?,
        };
        let mut jobs = Vec::new();
        // Every stream read becomes jobs, also one of a read that started for queues no longer
        // asked for (Redis Cluster keeps reads in flight across calls): its entries are this
        // consumer's pending ones, and the caller runs, delivers or releases them.
        for stream in streams {
            let Some(queue) = self.keys.queue_of_stream(&stream.key) else {
                tracing::warn!(key = %stream.key, "a read returned a stream that is not a job queue");
                continue;
            };
            let tool = queue.as_str();
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

    /// One group on a single Redis (one `XREADGROUP` spans every queue); one per slot on Redis
    /// Cluster, so each slot's queues have their own fetch loop and blocking read, and a shard
    /// failing over holds up only its own queues.
    fn fetch_groups(&self, queues: &[String]) -> Vec<Vec<String>> {
        if queues.is_empty() {
            return Vec::new();
        }
        let Plane::Cluster(cluster) = &self.plane else {
            return vec![queues.to_vec()];
        };
        let mut by_slot: BTreeMap<u16, Vec<String>> = BTreeMap::new();
        for q in queues {
            by_slot
                .entry(slot(self.keys.tool_queue(q).as_bytes()))
                .or_default()
                .push(q.clone());
        }
        if by_slot.len() > cluster.blocking_max() {
            tracing::warn!(
                slots = by_slot.len(),
                connections = cluster.blocking_max(),
                "the hosted tools' queues sit on more slots than --redis-cluster-blocking-connections allows blocking reads: some fetches wait for a connection; raise it"
            );
        }
        by_slot.into_values().collect()
    }

    /// Still this consumer's pending entry, but idle for [`RELEASED_IDLE`]: the next reclaim of
    /// any worker hosting the tool (every `--visibility-timeout`/2) takes it, without counting a
    /// delivery (`JUSTID`). Fenced as `extend` is: an entry another worker took over meanwhile
    /// is left to it.
    async fn release(&self, worker_id: &str, job: &Job) -> Result<(), BackendError> {
        let mut inv = EXTEND.prepare_invoke();
        inv.key(self.keys.tool_queue(&job.queue))
            .arg(WORKER_GROUP)
            .arg(worker_id)
            .arg(&job.entry_id)
            .arg(RELEASED_IDLE.as_millis() as u64);
        let mut conn = self.commands();
        self.bounded(Op::Queue, async move {
            inv.invoke_async::<i64>(&mut conn).await
        })
        .await
        .map(drop)
    }

    async fn extend(&self, worker_id: &str, job: &Job) -> Result<bool, BackendError> {
        let mut inv = EXTEND.prepare_invoke();
        inv.key(self.keys.tool_queue(&job.queue))
            .arg(WORKER_GROUP)
            .arg(worker_id)
            .arg(&job.entry_id);
        let mut conn = self.commands();
        let kept: i64 = self
            .bounded(Op::Queue, async move { inv.invoke_async(&mut conn).await })
            .await?;
        Ok(kept == 1)
    }

    async fn reclaim(
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
            let key = self.keys.tool_queue(tool);
            let mut conn = self.commands();
            let k = key.clone();
            // [id, consumer, idle ms, deliveries] of entries silent for at least `min_idle`.
            let pending: Vec<(String, String, u64, u64)> = self
                .bounded(Op::Queue, async move {
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
                    .bounded(Op::Queue, async move {
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

    async fn finish(
        &self,
        job: &Job,
        status: TaskStatus,
        message: Option<&str>,
        result: &CallToolResult,
    ) -> Result<(), BackendError> {
        let cache_ttl = if status == TaskStatus::Completed && !result.is_error {
            job.cache_ttl_ms
        } else {
            0
        };
        let json = serde_json::to_string(result).expect("results serialize");
        // 1. The call's slot, first: it makes the outcome visible. A worker that dies after
        // it leaves the job pending; the worker that reclaims it finds the task no longer
        // working and finishes it again without running the tool (`runner.rs`).
        let bytes = self
            .finish_call(
                &job.call_hash,
                &job.task_id,
                status,
                message,
                &json,
                cache_ttl,
            )
            .await?;
        // 2. The identity's slot: out of the running set, the result's bytes counted once.
        self.settle_identity(&job.owner, &job.task_id, false, bytes)
            .await?;
        // 3. The queue's slot.
        self.ack(&self.keys.tool_queue(&job.queue), &job.entry_id)
            .await
    }

    async fn retire(&self, queues: &[String]) -> Result<Vec<Job>, BackendError> {
        let mut jobs = Vec::new();
        for queue in queues {
            let key = self.keys.tool_queue(queue);
            let mut start = "-".to_owned();
            loop {
                let mut conn = self.commands();
                let (k, s) = (key.clone(), start.clone());
                let page: StreamRangeReply = self
                    .bounded(Op::Queue, async move {
                        redis::cmd("XRANGE")
                            .arg(k)
                            .arg(s)
                            .arg("+")
                            .arg("COUNT")
                            .arg(RETIRE_PAGE)
                            .query_async(&mut conn)
                            .await
                    })
                    .await?;
                let full = page.ids.len() >= RETIRE_PAGE;
                for entry in &page.ids {
                    if let Some(job) = job_of(queue, &entry.id, &entry.map, 1) {
                        jobs.push(job);
                    }
                    start = format!("({}", entry.id);
                }
                if !full {
                    break;
                }
            }
            let mut conn = self.commands();
            self.bounded(Op::Queue, async move {
                redis::cmd("DEL")
                    .arg(key)
                    .query_async::<i64>(&mut conn)
                    .await
            })
            .await?;
        }
        Ok(jobs)
    }

    async fn dead_letter(&self, job: &Job, reason: &str) -> Result<(), BackendError> {
        let mut conn = self.commands();
        let key = self.keys.dead_letters();
        let fields = [
            ("queue", job.queue.clone()),
            ("tool", job.tool.clone()),
            ("task", job.task_id.clone()),
            ("hash", job.call_hash.clone()),
            ("args", job.arguments.to_string()),
            ("deliveries", job.deliveries.to_string()),
            ("reason", reason.to_owned()),
        ];
        self.bounded(Op::Queue, async move {
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

    async fn progress(&self, p: &Progress) -> Result<(), BackendError> {
        let mut conn = self.commands();
        let channel = self.keys.progress_channel();
        let json = serde_json::to_string(p).expect("progress serializes");
        self.bounded(Op::Queue, async move {
            redis::cmd("PUBLISH")
                .arg(channel)
                .arg(json)
                .query_async::<i64>(&mut conn)
                .await
        })
        .await
        .map(drop)
    }

    async fn task_status(&self, task_id: &str) -> Result<Option<TaskStatus>, BackendError> {
        let mut conn = self.commands();
        let key = self.keys.task(task_id);
        let status: Option<String> = self
            .bounded(Op::Queue, async move {
                redis::cmd("HGET")
                    .arg(key)
                    .arg("status")
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        Ok(status.as_deref().and_then(TaskStatus::parse))
    }

    fn cancellations(&self) -> tokio::sync::broadcast::Receiver<String> {
        self.cancels.subscribe()
    }

    async fn keepalive(&self) -> Result<(), BackendError> {
        Health::ping(self).await
    }

    /// `XINFO GROUPS` of the tool's stream: the worker group's `lag` (entries not delivered
    /// yet) and `pending` (delivered, not acknowledged).
    async fn depth(&self, queue: &str) -> Result<Option<QueueDepth>, BackendError> {
        let mut conn = self.commands();
        let key = self.keys.tool_queue(queue);
        let groups: Value = self
            .bounded(Op::Queue, async move {
                redis::cmd("XINFO")
                    .arg("GROUPS")
                    .arg(key)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        Ok(group_depth(&groups))
    }
}

/// The worker group's depth in an `XINFO GROUPS` reply (a map per group, RESP3 or RESP2).
fn group_depth(groups: &Value) -> Option<QueueDepth> {
    let Value::Array(groups) = groups else {
        return None;
    };
    for g in groups {
        let pairs: Vec<(&Value, &Value)> = match g {
            Value::Map(m) => m.iter().map(|(k, v)| (k, v)).collect(),
            Value::Array(a) => a
                .chunks(2)
                .filter_map(|c| Some((c.first()?, c.get(1)?)))
                .collect(),
            _ => continue,
        };
        let field = |name: &str| {
            pairs
                .iter()
                .find(|(k, _)| bulk(k).as_deref() == Some(name))
                .map(|(_, v)| *v)
        };
        if field("name").and_then(bulk).as_deref() != Some(WORKER_GROUP) {
            continue;
        }
        let int = |v: Option<&Value>| match v {
            Some(Value::Int(i)) => u64::try_from(*i).ok(),
            _ => None,
        };
        return Some(QueueDepth {
            // `lag` is nil when Redis cannot tell (after deletions in the middle of the stream).
            lag: int(field("lag")),
            pending: int(field("pending")).unwrap_or(0),
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worker_groups_depth_from_xinfo_groups() {
        let s = |t: &str| Value::BulkString(t.as_bytes().to_vec());
        let group = |name: &str, pending: i64, lag: Value| {
            Value::Map(vec![
                (s("name"), s(name)),
                (s("consumers"), Value::Int(2)),
                (s("pending"), Value::Int(pending)),
                (s("lag"), lag),
            ])
        };
        let reply = Value::Array(vec![
            group("other", 9, Value::Int(9)),
            group(WORKER_GROUP, 3, Value::Int(4)),
        ]);
        assert_eq!(
            group_depth(&reply),
            Some(QueueDepth {
                lag: Some(4),
                pending: 3
            })
        );
        // RESP2's flat arrays, and a lag Redis cannot tell.
        let flat = Value::Array(vec![Value::Array(vec![
            s("name"),
            s(WORKER_GROUP),
            s("pending"),
            Value::Int(1),
            s("lag"),
            Value::Nil,
        ])]);
        assert_eq!(
            group_depth(&flat),
            Some(QueueDepth {
                lag: None,
                pending: 1
            })
        );
        assert_eq!(group_depth(&Value::Array(vec![])), None);
    }

    fn fields(pairs: &[(&str, &str)]) -> HashMap<String, Value> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), Value::BulkString(v.as_bytes().to_vec())))
            .collect()
    }

    #[test]
    fn a_job_carries_its_owner_and_an_old_one_runs_without() {
        let mut map = fields(&[
            ("task", "t1"),
            ("owner", "alice"),
            ("hash", "h"),
            ("tool", "sleep"),
            ("args", r#"{"ms":1}"#),
            ("deadline", "123"),
        ]);
        let job = job_of("sleep@q", "1-0", &map, 1).unwrap();
        assert_eq!(job.owner, "alice");
        assert_eq!(job.cache_ttl_ms, 0);
        // Queued before jobs carried their owner: one shared identity, never a failed job.
        map.remove("owner");
        assert_eq!(job_of("sleep@q", "1-0", &map, 1).unwrap().owner, "");
        map.remove("task");
        assert!(job_of("sleep@q", "1-0", &map, 1).is_none());
    }
}
