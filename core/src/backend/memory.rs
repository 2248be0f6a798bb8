//! The in-memory backend: the shared state of a single process, for `switchboard dev` and
//! tests. It keeps the same contract as Redis: a publish reaches this node only if the node
//! subscribed to the topic; tool calls are cached, coalesced and queued the same way
//! (`memory_calls.rs`), for workers running in the same process.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};

use async_trait::async_trait;

use std::time::Duration;

use super::memory_calls::{CallState, FETCH_POLL};
use super::memory_history::Histories;
use super::memory_sessions::Sessions;
use super::{Backend, BackendError, EventSink};
use crate::calls::{Job, JobQueue, Progress, Reclaimed, Submission, Submitted, WorkerAnnouncement};
use crate::history::{EventId, HistoryRule, Replay, live_message};
use crate::sessions::{Attach, SessionUpdate, UpdateOutcome};
use crate::tasks::{TaskRecord, TaskStatus};
use crate::tools::CallToolResult;
use crate::topic::Topic;

/// See the module docs.
pub struct MemoryBackend {
    subscribed: Mutex<HashSet<Topic>>,
    sink: OnceLock<Arc<dyn EventSink>>,
    calls: Mutex<CallState>,
    histories: Mutex<Histories>,
    sessions: Mutex<Sessions>,
    /// Woken when a job is queued.
    job_queued: tokio::sync::Notify,
    cancels: tokio::sync::broadcast::Sender<String>,
}

impl Default for MemoryBackend {
    fn default() -> Self {
        MemoryBackend {
            subscribed: Mutex::default(),
            sink: OnceLock::new(),
            calls: Mutex::default(),
            histories: Mutex::default(),
            sessions: Mutex::default(),
            job_queued: tokio::sync::Notify::new(),
            cancels: tokio::sync::broadcast::channel(1024).0,
        }
    }
}

impl std::fmt::Debug for MemoryBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBackend").finish_non_exhaustive()
    }
}

impl MemoryBackend {
    pub fn new() -> Self {
        Self::default()
    }

    /// What Redis pub/sub does: the message reaches this node if it subscribed to the topic.
    fn deliver_live(&self, topic: &Topic, payload: &[u8]) {
        let wanted = self
            .subscribed
            .lock()
            .expect("lock poisoned")
            .contains(topic);
        if wanted && let Some(sink) = self.sink.get() {
            sink.deliver(topic.as_str(), payload);
        }
    }

    fn calls(&self) -> std::sync::MutexGuard<'_, CallState> {
        self.calls.lock().expect("lock poisoned")
    }

    fn signal_finished(&self, leader: &str) {
        if let Some(sink) = self.sink.get() {
            sink.call_finished(leader);
        }
    }

    /// The topics this node holds a subscription for (what `PUBSUB CHANNELS` is for Redis).
    pub fn subscribed_topics(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .subscribed
            .lock()
            .expect("lock poisoned")
            .iter()
            .map(|t| t.to_string())
            .collect();
        v.sort();
        v
    }
}

#[async_trait]
impl Backend for MemoryBackend {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn attach(&self, sink: Arc<dyn EventSink>) {
        let _ = self.sink.set(sink);
    }

    async fn publish(&self, topic: &Topic, data: &str) -> Result<(), BackendError> {
        self.deliver_live(topic, data.as_bytes());
        Ok(())
    }

    async fn subscribe(&self, topics: &[Topic]) -> Result<(), BackendError> {
        let mut set = self.subscribed.lock().expect("lock poisoned");
        set.extend(topics.iter().cloned());
        Ok(())
    }

    async fn unsubscribe(&self, topics: &[Topic]) -> Result<(), BackendError> {
        let mut set = self.subscribed.lock().expect("lock poisoned");
        for t in topics {
            set.remove(t);
        }
        Ok(())
    }

    async fn ping(&self) -> Result<(), BackendError> {
        Ok(())
    }

    async fn workers(&self) -> Result<Vec<WorkerAnnouncement>, BackendError> {
        Ok(self.calls().workers())
    }

    async fn submit(&self, s: &Submission) -> Result<Submitted, BackendError> {
        let (submitted, queued) = self.calls().submit(s);
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

    async fn on_connected(&self) -> Result<(), BackendError> {
        Ok(())
    }

    async fn publish_history(
        &self,
        topic: &Topic,
        data: &str,
        rule: &HistoryRule,
    ) -> Result<EventId, BackendError> {
        // Appended and published under one lock, so live order is id order, as in Redis.
        let mut h = self.histories.lock().expect("lock poisoned");
        let id = h.append(topic.as_str(), data, rule);
        self.deliver_live(topic, live_message(id, data).as_bytes());
        drop(h);
        Ok(id)
    }

    async fn replay(
        &self,
        topic: &Topic,
        since: EventId,
        max: usize,
    ) -> Result<Replay, BackendError> {
        Ok(self
            .histories
            .lock()
            .expect("lock poisoned")
            .replay(topic.as_str(), since, max))
    }

    async fn history_page(
        &self,
        topic: &Topic,
        since: EventId,
        max: usize,
    ) -> Result<Replay, BackendError> {
        Ok(self
            .histories
            .lock()
            .expect("lock poisoned")
            .page(topic.as_str(), since, max))
    }

    async fn position(&self, topic: &Topic) -> Result<Option<EventId>, BackendError> {
        Ok(self
            .histories
            .lock()
            .expect("lock poisoned")
            .position(topic.as_str()))
    }

    async fn session_create(
        &self,
        id: &str,
        owner: &str,
        node: &str,
        ttl_ms: u64,
    ) -> Result<(), BackendError> {
        self.sessions
            .lock()
            .expect("lock poisoned")
            .create(id, owner, node, ttl_ms);
        Ok(())
    }

    async fn session_attach(
        &self,
        id: &str,
        owner: &str,
        node: &str,
        ttl_ms: u64,
    ) -> Result<Attach, BackendError> {
        let attached = self
            .sessions
            .lock()
            .expect("lock poisoned")
            .attach(id, owner, node, ttl_ms);
        if let (Attach::Resumed(rec), Some(sink)) = (&attached, self.sink.get()) {
            sink.session_taken(id, rec.generation);
        }
        Ok(attached)
    }

    async fn session_update(
        &self,
        updates: &[SessionUpdate],
    ) -> Result<Vec<UpdateOutcome>, BackendError> {
        let mut s = self.sessions.lock().expect("lock poisoned");
        Ok(updates.iter().map(|u| s.update(u)).collect())
    }
}

#[async_trait]
impl JobQueue for MemoryBackend {
    async fn announce(&self, a: &WorkerAnnouncement) -> Result<(), BackendError> {
        self.calls().announce(a);
        Ok(())
    }

    async fn withdraw(&self, worker_id: &str) -> Result<(), BackendError> {
        self.calls().withdraw(worker_id);
        Ok(())
    }

    async fn prepare(&self, _tools: &[String]) -> Result<(), BackendError> {
        Ok(())
    }

    async fn fetch(
        &self,
        _worker_id: &str,
        tools: &[String],
        max: usize,
        block: Duration,
    ) -> Result<Vec<Job>, BackendError> {
        let deadline = tokio::time::Instant::now() + block;
        loop {
            let queued = self.job_queued.notified();
            let jobs = self.calls().fetch(tools, max);
            if !jobs.is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok(jobs);
            }
            let _ = tokio::time::timeout(FETCH_POLL.min(block), queued).await;
        }
    }

    async fn extend(&self, _worker_id: &str, _job: &Job) -> Result<bool, BackendError> {
        // Nobody else can take a job over inside one process.
        Ok(true)
    }

    async fn reclaim(
        &self,
        _worker_id: &str,
        _tools: &[String],
        _min_idle: Duration,
        _max_deliveries: u64,
        _max: usize,
    ) -> Result<Vec<Reclaimed>, BackendError> {
        Ok(Vec::new())
    }

    async fn finish(
        &self,
        job: &Job,
        status: TaskStatus,
        message: Option<&str>,
        result: &CallToolResult,
    ) -> Result<(), BackendError> {
        self.calls().finish(job, status, message, result);
        self.signal_finished(&job.task_id);
        Ok(())
    }

    async fn dead_letter(&self, job: &Job, reason: &str) -> Result<(), BackendError> {
        self.calls().dead_letter(job, reason);
        Ok(())
    }

    async fn progress(&self, p: &Progress) -> Result<(), BackendError> {
        if let Some(sink) = self.sink.get() {
            sink.call_progress(p.clone());
        }
        Ok(())
    }

    async fn task_status(&self, task_id: &str) -> Result<Option<TaskStatus>, BackendError> {
        Ok(self.calls().task_status(task_id))
    }

    fn cancellations(&self) -> tokio::sync::broadcast::Receiver<String> {
        self.cancels.subscribe()
    }

    async fn keepalive(&self) -> Result<(), BackendError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Collect(Mutex<Vec<(String, Vec<u8>)>>);
    impl EventSink for Collect {
        fn deliver(&self, topic: &str, payload: &[u8]) {
            self.0
                .lock()
                .unwrap()
                .push((topic.to_owned(), payload.to_vec()));
        }
    }

    #[tokio::test]
    async fn delivers_only_subscribed_topics() {
        let b = MemoryBackend::new();
        let sink = Arc::new(Collect::default());
        b.attach(sink.clone());
        let a = Topic::new("a").unwrap();
        let other = Topic::new("b").unwrap();
        b.subscribe(std::slice::from_ref(&a)).await.unwrap();
        b.publish(&a, "1").await.unwrap();
        b.publish(&other, "2").await.unwrap();
        b.unsubscribe(std::slice::from_ref(&a)).await.unwrap();
        b.publish(&a, "3").await.unwrap();
        let got = sink.0.lock().unwrap().clone();
        assert_eq!(got, vec![("a".to_owned(), b"1".to_vec())]);
        assert!(b.subscribed_topics().is_empty());
    }
}
