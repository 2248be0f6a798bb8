//! The call plane inside one process (`switchboard dev`, tests): the same semantics as the
//! Redis one (cache, coalescing leases, tasks, queues, cancellation), kept in maps. There is no
//! other process to lose a job to, so nothing is ever reclaimed.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use switchboard_core::backend::{BackendError, CallPlane, CallSink};
use switchboard_core::calls::{
    CapReached, EXPIRED_UNSTARTED, Job, Submission, Submitted, WorkerAnnouncement,
};
use switchboard_core::clock::now_ms;
use switchboard_core::tasks::TaskRecord;
use switchboard_protocol::methods::tasks::TaskStatus;
use switchboard_protocol::methods::tools::CallToolResult;

use crate::MemoryBackend;

/// Dead letters kept for inspection, newest last.
const DEAD_LETTERS_KEPT: usize = 1000;
/// Expired tasks and results are swept once per this many submissions.
const SWEEP_EVERY: u64 = 1024;

struct Lease {
    task: String,
    waiters: i64,
    expires_at_ms: u64,
}

/// See the module docs.
#[derive(Default)]
pub(crate) struct CallState {
    workers: HashMap<String, WorkerAnnouncement>,
    tasks: HashMap<String, TaskRecord>,
    /// Other names of tasks (`Submission::alias`): alias -> task id.
    aliases: HashMap<String, String>,
    results: HashMap<String, (String, u64)>,
    leases: HashMap<String, Lease>,
    queues: HashMap<String, VecDeque<Job>>,
    dead_letters: VecDeque<(Job, String)>,
    next_entry: u64,
    submissions: u64,
    /// Per identity: what its caps count (as `submit.lua` keeps them in Redis).
    identities: HashMap<String, Held>,
}

/// What one identity holds.
#[derive(Default)]
struct Held {
    /// Executions it started that have not finished: leader task id -> lease expiry.
    running: HashMap<String, u64>,
    /// Its stored tasks: task id -> (expiry, result bytes counted).
    tasks: HashMap<String, (u64, u64)>,
}

impl Held {
    fn prune(&mut self, now: u64) {
        self.running.retain(|_, exp| *exp > now);
        self.tasks.retain(|_, (exp, _)| *exp > now);
    }

    fn bytes(&self) -> u64 {
        self.tasks.values().map(|(_, b)| b).sum()
    }
}

fn live(t: &TaskRecord, now: u64) -> bool {
    t.created_at_ms + t.ttl_ms > now
}

impl CallState {
    pub(crate) fn workers(&self) -> Vec<WorkerAnnouncement> {
        let now = now_ms();
        let mut v: Vec<_> = self
            .workers
            .values()
            .filter(|a| a.expires_at_ms > now)
            .cloned()
            .collect();
        v.sort_by(|a, b| a.worker_id.cmp(&b.worker_id));
        v
    }

    pub(crate) fn announce(&mut self, a: &WorkerAnnouncement) {
        self.workers.insert(a.worker_id.clone(), a.clone());
    }

    pub(crate) fn withdraw(&mut self, worker_id: &str) {
        self.workers.remove(worker_id);
    }

    fn sweep(&mut self, now: u64) {
        self.tasks.retain(|_, t| live(t, now));
        let tasks = &self.tasks;
        self.aliases.retain(|_, id| tasks.contains_key(id));
        self.results.retain(|_, (_, exp)| *exp > now);
        self.leases.retain(|_, l| l.expires_at_ms > now);
        for held in self.identities.values_mut() {
            held.prune(now);
        }
        self.identities
            .retain(|_, h| !h.running.is_empty() || !h.tasks.is_empty());
        // Jobs still queued past their deadline (no worker hosts the tool any more, or one
        // released them) would never start: failed, so the queues do not keep them.
        let mut expired = Vec::new();
        for q in self.queues.values_mut() {
            q.retain(|job| {
                let live = job.deadline_ms > now;
                if !live {
                    expired.push(job.clone());
                }
                live
            });
        }
        for job in &expired {
            self.finish(
                job,
                TaskStatus::Failed,
                Some(EXPIRED_UNSTARTED),
                &CallToolResult::error(EXPIRED_UNSTARTED),
            );
        }
    }

    pub(crate) fn submit(&mut self, s: &Submission) -> (Submitted, bool) {
        let now = now_ms();
        self.submissions += 1;
        if self.submissions.is_multiple_of(SWEEP_EVERY) {
            self.sweep(now);
        }
        let mut record = s.new_task(now);
        let caps = s.caps;
        let held = self.identities.entry(s.identity.clone()).or_default();
        held.prune(now);
        if caps.max_tasks > 0 && held.tasks.len() as u64 >= caps.max_tasks {
            return (Submitted::Refused(CapReached::Tasks), false);
        }
        if caps.max_task_bytes > 0 && held.bytes() >= caps.max_task_bytes {
            return (Submitted::Refused(CapReached::TaskBytes), false);
        }
        let task_expiry = now + s.task_ttl_ms;
        if s.read_cache
            && let Some((json, exp)) = self.results.get(&s.call_hash)
            && *exp > now
        {
            record.status = TaskStatus::Completed;
            record.cached = true;
            record.result = serde_json::from_str(json).ok();
            held.tasks
                .insert(s.task_id.clone(), (task_expiry, json.len() as u64));
            self.tasks.insert(record.task_id.clone(), record.clone());
            return (Submitted::Cached(record), false);
        }
        if let Some(lease) = self.leases.get_mut(&s.call_hash)
            && lease.expires_at_ms > now
        {
            lease.waiters += 1;
            record.leader = Some(lease.task.clone());
            held.tasks.insert(s.task_id.clone(), (task_expiry, 0));
            self.tasks.insert(record.task_id.clone(), record.clone());
            return (Submitted::Joined(record), false);
        }
        if caps.max_running > 0 && held.running.len() as u64 >= caps.max_running {
            return (Submitted::Refused(CapReached::Running), false);
        }
        let lease_expiry = s.deadline_ms.max(now) + 5_000;
        held.running.insert(s.task_id.clone(), lease_expiry);
        held.tasks.insert(s.task_id.clone(), (task_expiry, 0));
        self.leases.insert(
            s.call_hash.clone(),
            Lease {
                task: s.task_id.clone(),
                waiters: 1,
                expires_at_ms: lease_expiry,
            },
        );
        self.tasks.insert(record.task_id.clone(), record.clone());
        self.next_entry += 1;
        let queue = s.queue.clone();
        self.queues
            .entry(queue.clone())
            .or_default()
            .push_back(Job {
                entry_id: self.next_entry.to_string(),
                queue,
                tool: s.tool.name.clone(),
                task_id: s.task_id.clone(),
                owner: s.identity.clone(),
                call_hash: s.call_hash.clone(),
                arguments: s.arguments.clone(),
                deadline_ms: s.deadline_ms,
                cache_ttl_ms: s.cache_ttl_ms,
                max_result_bytes: s.max_result_bytes,
                deliveries: 1,
                trace: s.trace.clone(),
            });
        (Submitted::Leader(record), true)
    }

    pub(crate) fn task(&mut self, task_id: &str) -> Option<TaskRecord> {
        let now = now_ms();
        let task_id = match self.aliases.get(task_id) {
            Some(id) if !self.tasks.contains_key(task_id) => id.clone(),
            _ => task_id.to_owned(),
        };
        let task_id = task_id.as_str();
        match self.tasks.get(task_id) {
            Some(t) if live(t, now) => Some(t.clone()),
            Some(_) => {
                self.tasks.remove(task_id);
                None
            }
            None => None,
        }
    }

    /// Returns the leader whose execution must stop, if any.
    pub(crate) fn cancel(&mut self, task: &TaskRecord) -> Option<String> {
        let now = now_ms();
        let t = self.tasks.get_mut(&task.task_id)?;
        if t.status != TaskStatus::Working || t.caller_cancelled {
            return None;
        }
        // Cancelled for this caller; a leader's status is the shared execution's.
        t.caller_cancelled = true;
        t.last_updated_at_ms = now;
        let leader = task.leader.clone().unwrap_or_else(|| task.task_id.clone());
        let lease = self.leases.get_mut(&task.call_hash)?;
        if lease.task != leader {
            return None;
        }
        lease.waiters -= 1;
        if lease.waiters > 0 {
            return None;
        }
        self.leases.remove(&task.call_hash);
        if let Some(l) = self.tasks.get_mut(&leader)
            && l.status == TaskStatus::Working
        {
            l.status = TaskStatus::Cancelled;
            l.last_updated_at_ms = now;
        }
        Some(leader)
    }

    pub(crate) fn fetch(&mut self, tools: &[String], max: usize) -> Vec<Job> {
        let mut out = Vec::new();
        for tool in tools {
            let Some(q) = self.queues.get_mut(tool) else {
                continue;
            };
            while out.len() < max {
                match q.pop_front() {
                    Some(job) => out.push(job),
                    None => break,
                }
            }
        }
        out
    }

    /// Puts a job back at the head of its queue, unrun.
    pub(crate) fn release(&mut self, job: Job) {
        self.queues
            .entry(job.queue.clone())
            .or_default()
            .push_front(job);
    }

    /// Removes `queues`, returning the jobs still in them.
    pub(crate) fn retire(&mut self, queues: &[String]) -> Vec<Job> {
        queues
            .iter()
            .filter_map(|q| self.queues.remove(q))
            .flatten()
            .collect()
    }

    pub(crate) fn finish(
        &mut self,
        job: &Job,
        status: TaskStatus,
        message: Option<&str>,
        result: &CallToolResult,
    ) {
        let now = now_ms();
        if let Some(t) = self.tasks.get_mut(&job.task_id)
            && t.status == TaskStatus::Working
        {
            t.status = status;
            t.status_message = message.map(str::to_owned);
            t.result = Some(result.clone());
            t.last_updated_at_ms = now;
            if let Some(held) = self.identities.get_mut(&job.owner)
                && let Some((_, bytes)) = held.tasks.get_mut(&job.task_id)
            {
                *bytes = serde_json::to_string(result).map_or(0, |j| j.len() as u64);
            }
        }
        if let Some(held) = self.identities.get_mut(&job.owner) {
            held.running.remove(&job.task_id);
        }
        if status == TaskStatus::Completed && !result.is_error && job.cache_ttl_ms > 0 {
            let json = serde_json::to_string(result).expect("results serialize");
            self.results
                .insert(job.call_hash.clone(), (json, now + job.cache_ttl_ms));
        }
        if self
            .leases
            .get(&job.call_hash)
            .is_some_and(|l| l.task == job.task_id)
        {
            self.leases.remove(&job.call_hash);
        }
    }

    pub(crate) fn dead_letter(&mut self, job: &Job, reason: &str) {
        if self.dead_letters.len() == DEAD_LETTERS_KEPT {
            self.dead_letters.pop_front();
        }
        self.dead_letters
            .push_back((job.clone(), reason.to_owned()));
    }

    pub(crate) fn task_status(&mut self, task_id: &str) -> Option<TaskStatus> {
        self.task(task_id).map(|t| t.status)
    }
}

/// How long a fetch waits at most between checks of its queues.
pub(crate) const FETCH_POLL: Duration = Duration::from_millis(200);

impl MemoryBackend {
    pub(crate) fn calls(&self) -> MutexGuard<'_, CallState> {
        self.calls.lock().expect("lock poisoned")
    }
}

#[async_trait]
impl CallPlane for MemoryBackend {
    fn set_sink(&self, sink: Arc<dyn CallSink>) {
        let _ = self.call_sink.set(sink);
    }

    async fn workers(&self) -> Result<Vec<WorkerAnnouncement>, BackendError> {
        Ok(self.calls().workers())
    }

    async fn submit(&self, s: &Submission) -> Result<Submitted, BackendError> {
        let (submitted, queued) = {
            let mut calls = self.calls();
            let (submitted, queued) = calls.submit(s);
            if let (Some(alias), Some(r)) = (&s.alias, submitted.record()) {
                calls.aliases.insert(alias.clone(), r.task_id.clone());
            }
            (submitted, queued)
        };
        if queued {
            self.job_queued.notify_waiters();
        }
        Ok(submitted)
    }

    async fn task(&self, task_id: &str) -> Result<Option<TaskRecord>, BackendError> {
        Ok(self.calls().task(task_id))
    }

    async fn cancel(&self, task: &TaskRecord) -> Result<(), BackendError> {
        let stop = self.calls().cancel(task);
        if let Some(leader) = stop {
            let _ = self.cancels.send(leader);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use switchboard_core::calls::{OwnerCaps, TraceContext};
    use switchboard_core::tasks::{session_task_id, tagged_task_id};

    use super::*;

    fn submission(hash: &str, task_id: String, alias: Option<String>) -> Submission {
        Submission {
            tool: serde_json::from_value(json!({
                "name": "echo", "inputSchema": {"type": "object"}, "timeoutMs": 1000,
            }))
            .unwrap(),
            queue: "echo@q".into(),
            arguments: json!({}),
            call_hash: hash.to_owned(),
            task_id,
            alias,
            owner: "alice".into(),
            identity: "alice".into(),
            read_cache: true,
            cache_ttl_ms: 0,
            task_ttl_ms: 60_000,
            poll_interval_ms: 100,
            deadline_ms: now_ms() + 1000,
            caps: OwnerCaps::default(),
            max_result_bytes: 1024,
            trace: TraceContext::default(),
        }
    }

    #[tokio::test]
    async fn a_session_calls_alias_finds_its_task() {
        let backend = MemoryBackend::new();
        let hash = "ab".repeat(32);
        let name = session_task_id("s1", "7");
        let s = submission(&hash, tagged_task_id(&hash, &name), Some(name.clone()));
        assert!(matches!(
            backend.submit(&s).await.unwrap(),
            Submitted::Leader(_)
        ));
        let by_alias = backend
            .task(&name)
            .await
            .unwrap()
            .expect("found by its alias");
        assert_eq!(by_alias.task_id, s.task_id);
        assert!(backend.task(&s.task_id).await.unwrap().is_some());
        assert!(backend.task("nothing").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_job_queued_past_its_deadline_is_failed_by_the_sweep() {
        let backend = MemoryBackend::new();
        let hash = "cd".repeat(32);
        let s = submission(&hash, tagged_task_id(&hash, "t1"), None);
        assert!(matches!(
            backend.submit(&s).await.unwrap(),
            Submitted::Leader(_)
        ));
        backend.calls().sweep(s.deadline_ms - 1);
        assert_eq!(backend.calls().queues["echo@q"].len(), 1, "not due yet");
        backend.calls().sweep(s.deadline_ms);
        assert!(backend.calls().queues["echo@q"].is_empty());
        let t = backend.task(&s.task_id).await.unwrap().expect("kept");
        assert_eq!(t.status, TaskStatus::Failed);
        assert_eq!(t.status_message.as_deref(), Some(EXPIRED_UNSTARTED));
        assert!(
            !backend.calls().leases.contains_key(&hash),
            "the lease is released"
        );
    }
}
