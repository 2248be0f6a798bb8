//! The Redis backend: topics relay through Redis pub/sub, so a publish on any node (or a
//! `PUBLISH sb:t:{topic}` from any backend) reaches every node subscribed to the topic.
//!
//! Two connections per node, both multiplexed `ConnectionManager`s over RESP3 with
//! TCP_NODELAY:
//! - **commands** (`PUBLISH`, `PING`, and later everything else);
//! - **pub/sub**: the node's one subscription connection. Its push messages are handed to the
//!   [`EventSink`] from the connection's own task, with no queue of ours in between (the sink
//!   only does non-blocking sends). The manager reconnects after a drop and resubscribes every
//!   channel by itself; the gateway's readiness pings keep a reconnect attempt going while
//!   Redis is away.
//!
//! Every operation is bounded by [`RedisOptions::op_timeout`], so nothing waits on a dead
//! Redis for longer than that.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::io::tcp::TcpSettings;
use redis::{IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind, Value};

use super::{Backend, BackendError, EventSink};
use crate::calls::{Job, JobQueue, Progress, Reclaimed, Submission, Submitted, WorkerAnnouncement};
use crate::history::{EventId, HistoryRule, Replay};
use crate::keys::Keys;
use crate::sessions::{Attach, SessionUpdate, UpdateOutcome};
use crate::tasks::{TaskRecord, TaskStatus};
use crate::tools::CallToolResult;
use crate::topic::Topic;

/// Default bound on one Redis operation.
pub const DEFAULT_OP_TIMEOUT: Duration = Duration::from_secs(2);
/// Cancellations buffered for a worker that is busy; older ones are dropped (a job also checks
/// its task's status before it starts).
const CANCEL_BUFFER: usize = 1024;
/// Default bound on opening one Redis connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How to reach Redis.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// `redis://host:port/db` (a `rediss://` URL needs a TLS build, not enabled yet).
    pub url: String,
    /// Key prefix (`sb`).
    pub prefix: String,
    pub op_timeout: Duration,
    pub connect_timeout: Duration,
}

impl RedisOptions {
    pub fn new(url: impl Into<String>) -> Self {
        RedisOptions {
            url: url.into(),
            prefix: crate::keys::DEFAULT_PREFIX.to_owned(),
            op_timeout: DEFAULT_OP_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }
}

/// See the module docs.
pub struct RedisBackend {
    keys: Keys,
    op_timeout: Duration,
    commands: ConnectionManager,
    pubsub: ConnectionManager,
    /// For blocking reads (workers' `XREADGROUP ... BLOCK`), which would stall the others.
    blocking: ConnectionManager,
    sink: Arc<OnceLock<Arc<dyn EventSink>>>,
    /// Cancelled executions, for the workers of this process.
    cancels: tokio::sync::broadcast::Sender<String>,
    /// Disconnections of the pub/sub connection seen so far.
    disconnections: Arc<AtomicU64>,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("prefix", &self.keys.prefix())
            .finish_non_exhaustive()
    }
}

impl RedisBackend {
    /// Builds the backend without waiting for Redis: a gateway starts (not ready) while Redis is
    /// down and becomes ready when it answers. Fails only on a malformed URL. Call it inside a
    /// Tokio runtime: the connections start their tasks at once.
    pub fn new(opts: &RedisOptions) -> Result<Self, BackendError> {
        let info = opts
            .url
            .as_str()
            .into_connection_info()
            .map_err(|e| BackendError::Unavailable(format!("bad Redis URL: {e}")))?;
        let redis_settings = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let info = info
            .set_redis_settings(redis_settings)
            .set_tcp_settings(TcpSettings::default().set_nodelay(true));
        let client = redis::Client::open(info)
            .map_err(|e| BackendError::Unavailable(format!("bad Redis URL: {e}")))?;

        let base = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(opts.connect_timeout))
            .set_response_timeout(Some(opts.op_timeout))
            // Few, quick retries: readiness pings start the next attempt while Redis is away.
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));

        let commands = ConnectionManager::new_lazy_with_config(client.clone(), base.clone())
            .map_err(|e| BackendError::Unavailable(e.to_string()))?;
        // No response timeout of its own: each blocking read bounds itself.
        let blocking = ConnectionManager::new_lazy_with_config(
            client.clone(),
            base.clone().set_response_timeout(None),
        )
        .map_err(|e| BackendError::Unavailable(e.to_string()))?;
        let (cancels, _) = tokio::sync::broadcast::channel(CANCEL_BUFFER);

        let keys = Keys::new(&opts.prefix);
        let sink: Arc<OnceLock<Arc<dyn EventSink>>> = Arc::new(OnceLock::new());
        let push_keys = keys.clone();
        let push_sink = sink.clone();
        let push_cancels = cancels.clone();
        let disconnections = Arc::new(AtomicU64::new(0));
        let push_disconnections = disconnections.clone();
        let on_push = move |info: PushInfo| -> Result<(), Infallible> {
            if info.kind == PushKind::Disconnection {
                push_disconnections.fetch_add(1, Ordering::Relaxed);
            }
            handle_push(&push_keys, push_sink.get(), &push_cancels, &info);
            Ok(())
        };
        let pubsub = ConnectionManager::new_lazy_with_config(
            client,
            base.set_push_sender(on_push).set_automatic_resubscription(),
        )
        .map_err(|e| BackendError::Unavailable(e.to_string()))?;

        Ok(RedisBackend {
            keys,
            op_timeout: opts.op_timeout,
            commands,
            pubsub,
            blocking,
            sink,
            cancels,
            disconnections,
        })
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    pub(super) fn commands(&self) -> ConnectionManager {
        self.commands.clone()
    }

    pub(super) fn pubsub(&self) -> ConnectionManager {
        self.pubsub.clone()
    }

    pub(super) fn blocking(&self) -> ConnectionManager {
        self.blocking.clone()
    }

    pub(super) fn op_timeout(&self) -> Duration {
        self.op_timeout
    }

    pub(super) async fn bounded<T>(
        &self,
        fut: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, BackendError> {
        match tokio::time::timeout(self.op_timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(BackendError::Unavailable(e.to_string())),
            Err(_) => Err(BackendError::Timeout),
        }
    }

    fn channels(&self, topics: &[Topic]) -> Vec<String> {
        topics
            .iter()
            .map(|t| self.keys.topic_channel(t.as_str()))
            .collect()
    }
}

fn handle_push(
    keys: &Keys,
    sink: Option<&Arc<dyn EventSink>>,
    cancels: &tokio::sync::broadcast::Sender<String>,
    info: &PushInfo,
) {
    match info.kind {
        PushKind::Message => {
            let [Value::BulkString(channel), Value::BulkString(payload)] = &info.data[..] else {
                tracing::warn!(kind = ?info.kind, "unexpected pub/sub message shape");
                return;
            };
            let Ok(channel) = std::str::from_utf8(channel) else {
                return;
            };
            if let Some(topic) = keys.topic_of_channel(channel) {
                if let Some(sink) = sink {
                    sink.deliver(topic, payload);
                }
                return;
            }
            let text = String::from_utf8_lossy(payload);
            if channel == keys.cancel_channel() {
                let _ = cancels.send(text.into_owned());
            } else if let Some(sink) = sink {
                if channel == keys.done_channel() {
                    sink.call_finished(&text);
                } else if channel == keys.session_channel() {
                    if let Some((id, generation)) = text.split_once(' ')
                        && let Ok(generation) = generation.parse()
                    {
                        sink.session_taken(id, generation);
                    }
                } else if channel == keys.progress_channel()
                    && let Ok(p) = serde_json::from_str(&text)
                {
                    sink.call_progress(p);
                }
            }
        }
        PushKind::Disconnection => {
            tracing::warn!("Redis pub/sub connection lost; reconnecting and resubscribing");
            if let Some(sink) = sink {
                sink.subscription_lost();
            }
        }
        _ => {}
    }
}

#[async_trait]
impl Backend for RedisBackend {
    fn kind(&self) -> &'static str {
        "redis"
    }

    fn attach(&self, sink: Arc<dyn EventSink>) {
        let _ = self.sink.set(sink);
    }

    async fn publish(&self, topic: &Topic, data: &str) -> Result<(), BackendError> {
        let channel = self.keys.topic_channel(topic.as_str());
        let mut conn = self.commands.clone();
        let fut = async move {
            redis::cmd("PUBLISH")
                .arg(channel)
                .arg(data)
                .query_async::<i64>(&mut conn)
                .await
        };
        self.bounded(fut).await.map(drop)
    }

    async fn subscribe(&self, topics: &[Topic]) -> Result<(), BackendError> {
        if topics.is_empty() {
            return Ok(());
        }
        let channels = self.channels(topics);
        let mut conn = self.pubsub.clone();
        self.bounded(async move { conn.subscribe(channels).await })
            .await
    }

    async fn unsubscribe(&self, topics: &[Topic]) -> Result<(), BackendError> {
        if topics.is_empty() {
            return Ok(());
        }
        let channels = self.channels(topics);
        let mut conn = self.pubsub.clone();
        self.bounded(async move { conn.unsubscribe(channels).await })
            .await
    }

    async fn ping(&self) -> Result<(), BackendError> {
        let mut commands = self.commands.clone();
        let mut pubsub = self.pubsub.clone();
        // Both connections are pinged every time, so each keeps its reconnect attempts going.
        let (a, b) = tokio::join!(
            self.bounded(
                async move { redis::cmd("PING").query_async::<Value>(&mut commands).await }
            ),
            self.bounded(async move { redis::cmd("PING").query_async::<Value>(&mut pubsub).await }),
        );
        a.and(b).map(drop)
    }

    fn reconnections(&self) -> u64 {
        self.disconnections.load(Ordering::Relaxed)
    }

    async fn workers(&self) -> Result<Vec<WorkerAnnouncement>, BackendError> {
        self.calls_tools().await
    }

    async fn submit(&self, s: &Submission) -> Result<Submitted, BackendError> {
        self.calls_submit(s).await
    }

    async fn task(&self, task_id: &str) -> Result<Option<TaskRecord>, BackendError> {
        self.calls_task(task_id).await
    }

    async fn cancel(&self, task: &TaskRecord) -> Result<(), BackendError> {
        self.calls_cancel(task).await
    }

    async fn on_connected(&self) -> Result<(), BackendError> {
        let listened = self.calls_listen().await;
        let sessions = self.sessions_listen().await;
        let loaded = self.history_load_function().await;
        listened.and(sessions).and(loaded)
    }

    async fn publish_history(
        &self,
        topic: &Topic,
        data: &str,
        rule: &HistoryRule,
    ) -> Result<EventId, BackendError> {
        self.history_publish(topic, data, rule).await
    }

    async fn replay(
        &self,
        topic: &Topic,
        since: EventId,
        max: usize,
    ) -> Result<Replay, BackendError> {
        self.history_replay(topic, since, max).await
    }

    async fn position(&self, topic: &Topic) -> Result<Option<EventId>, BackendError> {
        self.history_position(topic).await
    }

    async fn history_page(
        &self,
        topic: &Topic,
        since: EventId,
        max: usize,
    ) -> Result<Replay, BackendError> {
        self.history_read_page(topic, since, max).await
    }

    async fn session_create(
        &self,
        id: &str,
        owner: &str,
        node: &str,
        ttl_ms: u64,
    ) -> Result<(), BackendError> {
        self.sessions_create(id, owner, node, ttl_ms).await
    }

    async fn session_attach(
        &self,
        id: &str,
        owner: &str,
        node: &str,
        ttl_ms: u64,
    ) -> Result<Attach, BackendError> {
        self.sessions_attach(id, owner, node, ttl_ms).await
    }

    async fn session_update(
        &self,
        updates: &[SessionUpdate],
    ) -> Result<Vec<UpdateOutcome>, BackendError> {
        self.sessions_update(updates).await
    }
}

#[async_trait]
impl JobQueue for RedisBackend {
    async fn announce(&self, a: &WorkerAnnouncement) -> Result<(), BackendError> {
        self.calls_announce(a).await
    }

    async fn withdraw(&self, worker_id: &str) -> Result<(), BackendError> {
        self.calls_withdraw(worker_id).await
    }

    async fn prepare(&self, tools: &[String]) -> Result<(), BackendError> {
        self.calls_prepare(tools).await
    }

    async fn fetch(
        &self,
        worker_id: &str,
        tools: &[String],
        max: usize,
        block: Duration,
    ) -> Result<Vec<Job>, BackendError> {
        self.calls_fetch(worker_id, tools, max, block).await
    }

    async fn extend(&self, worker_id: &str, job: &Job) -> Result<bool, BackendError> {
        self.calls_extend(worker_id, job).await
    }

    async fn reclaim(
        &self,
        worker_id: &str,
        tools: &[String],
        min_idle: Duration,
        max_deliveries: u64,
        max: usize,
    ) -> Result<Vec<Reclaimed>, BackendError> {
        self.calls_reclaim(worker_id, tools, min_idle, max_deliveries, max)
            .await
    }

    async fn finish(
        &self,
        job: &Job,
        status: TaskStatus,
        message: Option<&str>,
        result: &CallToolResult,
    ) -> Result<(), BackendError> {
        self.calls_finish(job, status, message, result).await
    }

    async fn dead_letter(&self, job: &Job, reason: &str) -> Result<(), BackendError> {
        self.calls_dead_letter(job, reason).await
    }

    async fn progress(&self, p: &Progress) -> Result<(), BackendError> {
        self.calls_progress(p).await
    }

    async fn task_status(&self, task_id: &str) -> Result<Option<TaskStatus>, BackendError> {
        self.calls_task_status(task_id).await
    }

    fn cancellations(&self) -> tokio::sync::broadcast::Receiver<String> {
        self.cancels.subscribe()
    }

    async fn keepalive(&self) -> Result<(), BackendError> {
        Backend::ping(self).await
    }
}
