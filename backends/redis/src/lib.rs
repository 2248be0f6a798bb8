//! The Redis backend: every role of `switchboard_core::backend` on Redis, so that any number of
//! gateways and workers share topics, history, sessions and tool calls. `docs/redis.md` lists
//! every name used in Redis; they are built in [`keys`].
//!
//! One role per file, each implementing its trait on [`RedisBackend`]:
//! - `topics.rs`: [`TopicBus`](switchboard_core::backend::TopicBus), pub/sub on
//!   `<prefix>:t:{topic}`;
//! - `history.rs`: [`HistoryStore`](switchboard_core::backend::HistoryStore), a stream per
//!   topic and the `sb_publish` function;
//! - `sessions.rs`: [`SessionStore`](switchboard_core::backend::SessionStore), a hash per
//!   session changed only by fenced scripts;
//! - `calls.rs`: [`CallPlane`](switchboard_core::backend::CallPlane), the gateway's side of
//!   tool calls (submit, tasks, cancel, the worker registry);
//! - `queue.rs`: [`JobQueue`](switchboard_core::backend::JobQueue), the worker's side (streams
//!   read through a consumer group, heartbeats, reclaim, finish, dead letters);
//! - `rates.rs`: [`RateStore`](switchboard_core::backend::RateStore), a GCRA per identity and
//!   budget, taken a lease at a time;
//! - `health.rs`: [`Health`](switchboard_core::backend::Health).
//!
//! Lua scripts live in `lua/*.lua`, one file each, loaded with `include_str!`.
//!
//! Three connections per process, all multiplexed `ConnectionManager`s over RESP3 with
//! TCP_NODELAY: **commands**; **pub/sub**, the one subscription connection, whose push messages
//! are handed to the sinks from the connection's own task with no queue of ours in between
//! (the sinks only do non-blocking sends), and which reconnects and resubscribes every channel
//! by itself; and **blocking**, for workers' `XREADGROUP ... BLOCK`, which would stall the
//! others. Every operation is bounded by [`RedisOptions::op_timeout`]. `links.rs` holds the
//! three and replaces them when Sentinel names a new primary; `options.rs` turns the flags
//! (URL, ACL user, TLS files) into what to connect to; `sentinel.rs` asks the Sentinels.
//! Every operation is also timed into `switchboard_redis_operation_duration_seconds{op}` and,
//! when it fails, `switchboard_redis_errors_total{op}` ([`Op`]: the role that ran it),
//! registered into the node's registry through `Health::register_metrics`.

mod calls;
mod cluster;
mod conns;
mod health;
mod history;
pub mod keys;
mod links;
mod options;
mod queue;
mod rates;
mod sentinel;
mod sessions;
mod slots;
mod topics;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use redis::aio::{ConnectionLike, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, PushInfo, PushKind, RedisFuture, Value};
use switchboard_core::backend::{Backend, BackendError, CallSink, TakeoverSink, TopicSink};

use crate::cluster::{ClusterLinks, Sharded};
pub use crate::keys::Keys;
use crate::links::{Links, NodeConn, Role};
pub use crate::options::{ClusterTarget, RedisOptions, RedisUrl, Secret, Target};
pub use crate::sentinel::SentinelTarget;

/// Cancellations buffered for a worker that is busy; older ones are dropped (a job also checks
/// its task's status before it starts).
const CANCEL_BUFFER: usize = 1024;

/// The `op` label of the Redis operation metrics: the role that ran the command (a small fixed
/// set, so the histograms are resolved once, at start).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Publish,
    Subscribe,
    History,
    Sessions,
    Calls,
    Queue,
    Rates,
    Conns,
    Health,
}

impl Op {
    const ALL: [Op; 9] = [
        Op::Publish,
        Op::Subscribe,
        Op::History,
        Op::Sessions,
        Op::Calls,
        Op::Queue,
        Op::Rates,
        Op::Conns,
        Op::Health,
    ];

    fn label(self) -> &'static str {
        match self {
            Op::Publish => "publish",
            Op::Subscribe => "subscribe",
            Op::History => "history",
            Op::Sessions => "sessions",
            Op::Calls => "calls",
            Op::Queue => "queue",
            Op::Rates => "rates",
            Op::Conns => "conns",
            Op::Health => "health",
        }
    }
}

/// Buckets of Redis operation durations, in seconds: 250 µs to 2.5 s (the default
/// `--redis-timeout` is 2 s).
const OP_BUCKETS: [f64; 12] = [
    0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 2.5,
];

type OpLabel = [(&'static str, &'static str); 1];

/// Timings and errors of Redis operations by [`Op`], each handle resolved once.
struct OpMetrics {
    durations: Family<OpLabel, Histogram, fn() -> Histogram>,
    errors: Family<OpLabel, Counter>,
    by_op: Vec<(Histogram, Counter)>,
}

impl OpMetrics {
    fn new() -> Self {
        let durations: Family<OpLabel, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(|| Histogram::new(OP_BUCKETS));
        let errors: Family<OpLabel, Counter> = Family::default();
        let by_op = Op::ALL
            .iter()
            .map(|op| {
                let l = [("op", op.label())];
                (
                    durations.get_or_create_owned(&l),
                    errors.get_or_create_owned(&l),
                )
            })
            .collect();
        OpMetrics {
            durations,
            errors,
            by_op,
        }
    }

    fn observe(&self, op: Op, elapsed: Duration, ok: bool) {
        let Some((h, e)) = self.by_op.get(op as usize) else {
            return;
        };
        h.observe(elapsed.as_secs_f64());
        if !ok {
            e.inc();
        }
    }
}

/// Who the pub/sub connection's messages go to, each set once.
#[derive(Default)]
struct Sinks {
    topics: OnceLock<Arc<dyn TopicSink>>,
    calls: OnceLock<Arc<dyn CallSink>>,
    sessions: OnceLock<Arc<dyn TakeoverSink>>,
}

/// The connections of one of the two modes.
enum Plane {
    /// The commands, pub/sub and blocking connections (blocking: workers' `XREADGROUP ...
    /// BLOCK`, which would stall the others), switched to a new primary behind Sentinel.
    Node(Arc<Links>),
    /// A Redis Cluster (`cluster.rs`).
    Cluster(Arc<ClusterLinks>),
}

/// A handle on one connection of either mode.
#[derive(Clone)]
pub(crate) enum Conn {
    Node(NodeConn),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Node(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Node(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Node(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// See the module docs.
pub struct RedisBackend {
    keys: Keys,
    op_timeout: Duration,
    /// The connections: to one node (or the primary behind Sentinel), or to a Redis Cluster.
    plane: Plane,
    sinks: Arc<Sinks>,
    /// Cancelled executions, for the workers of this process.
    cancels: tokio::sync::broadcast::Sender<String>,
    /// Disconnections of the pub/sub connection seen so far.
    disconnections: Arc<AtomicU64>,
    ops: OpMetrics,
    /// When a cluster's primaries were last checked for the function library.
    library_checked: std::sync::Mutex<Option<tokio::time::Instant>>,
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
    pub fn connect(opts: &RedisOptions) -> Result<Arc<Self>, BackendError> {
        let target = opts.target().map_err(BackendError::Unavailable)?;
        Self::connect_to(target, opts)
    }

    /// [`RedisBackend::connect`] to a target already built.
    pub fn connect_to(target: Target, opts: &RedisOptions) -> Result<Arc<Self>, BackendError> {
        let base = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(opts.connect_timeout))
            .set_response_timeout(Some(opts.op_timeout))
            // Few, quick retries: readiness pings start the next attempt while Redis is away.
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        let (cancels, _) = tokio::sync::broadcast::channel(CANCEL_BUFFER);

        let keys = Keys::new(&opts.prefix);
        let sinks = Arc::new(Sinks::default());
        let disconnections = Arc::new(AtomicU64::new(0));
        // Cluster mode only: the sharded channels to subscribe again after a slot moved.
        let sharded = matches!(target, Target::Cluster(_)).then(|| Arc::new(Sharded::default()));
        let on_push: links::OnPush = {
            let (keys, sinks, cancels) = (keys.clone(), sinks.clone(), cancels.clone());
            let (disconnections, sharded) = (disconnections.clone(), sharded.clone());
            Arc::new(move |info: PushInfo| {
                if info.kind == PushKind::Disconnection {
                    disconnections.fetch_add(1, Ordering::Relaxed);
                }
                handle_push(&keys, &sinks, &cancels, sharded.as_deref(), &info);
            })
        };
        let plane = match target {
            Target::Direct(client) => Plane::Node(
                Links::direct(client, &base, &on_push)
                    .map_err(|e| BackendError::Unavailable(e.to_string()))?,
            ),
            Target::Sentinel(s) => Plane::Node(Links::sentinel(s, base, on_push)),
            Target::Cluster(c) => Plane::Cluster(
                ClusterLinks::connect(&c, on_push, sharded.unwrap_or_default())
                    .map_err(BackendError::Unavailable)?,
            ),
        };

        Ok(Arc::new(RedisBackend {
            keys,
            op_timeout: opts.op_timeout,
            plane,
            sinks,
            cancels,
            disconnections,
            ops: OpMetrics::new(),
            library_checked: std::sync::Mutex::new(None),
        }))
    }

    /// The roles a gateway uses, all on this backend.
    pub fn backend(self: &Arc<Self>) -> Backend {
        Backend {
            health: self.clone(),
            topics: self.clone(),
            history: self.clone(),
            sessions: self.clone(),
            calls: self.clone(),
            queue: self.clone(),
            rates: self.clone(),
            conns: self.clone(),
        }
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Whether the function library is due for a check on every primary (cluster mode, every
    /// `history::LIBRARY_CHECK_INTERVAL`).
    fn library_check_due(&self) -> bool {
        let now = tokio::time::Instant::now();
        let mut last = self
            .library_checked
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|t| now.duration_since(t) < history::LIBRARY_CHECK_INTERVAL) {
            return false;
        }
        *last = Some(now);
        true
    }

    /// Whether this backend talks to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.plane, Plane::Cluster(_))
    }

    fn commands(&self) -> Conn {
        match &self.plane {
            Plane::Node(l) => Conn::Node(l.conn(Role::Commands)),
            Plane::Cluster(c) => Conn::Cluster(c.commands()),
        }
    }

    fn pubsub(&self) -> Conn {
        match &self.plane {
            Plane::Node(l) => Conn::Node(l.conn(Role::PubSub)),
            Plane::Cluster(c) => Conn::Cluster(c.pubsub()),
        }
    }

    /// Runs one Redis operation within the operation timeout, timed as `op`.
    async fn bounded<T>(
        &self,
        op: Op,
        fut: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, BackendError> {
        let started = tokio::time::Instant::now();
        let result = match tokio::time::timeout(self.op_timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(BackendError::Unavailable(e.to_string())),
            Err(_) => Err(BackendError::Timeout),
        };
        self.ops.observe(op, started.elapsed(), result.is_ok());
        result
    }

    /// Registers the operation metrics in `registry` (`Health::register_metrics`).
    pub fn register_metrics(&self, registry: &mut Registry) {
        registry.register(
            "switchboard_redis_operation_duration_seconds",
            "Redis operations by role (publish, subscribe, history, sessions, calls, queue, \
             rates, conns, health), failed ones included",
            self.ops.durations.clone(),
        );
        registry.register(
            "switchboard_redis_errors",
            "Redis operations that failed or timed out, by role",
            self.ops.errors.clone(),
        );
    }

    /// Subscribes channels on the pub/sub connection (signal channels; topics go through the
    /// topic bus). Idempotent.
    async fn listen(&self, channels: Vec<String>) -> Result<(), BackendError> {
        match &self.plane {
            Plane::Node(l) => {
                let links = l.clone();
                self.bounded(
                    Op::Subscribe,
                    async move { links.subscribe(channels).await },
                )
                .await
            }
            Plane::Cluster(c) => {
                let links = c.clone();
                self.bounded(
                    Op::Subscribe,
                    async move { links.subscribe(channels).await },
                )
                .await
            }
        }
    }
}

/// Hands one push message of the pub/sub connection to whoever it is for.
fn handle_push(
    keys: &Keys,
    sinks: &Sinks,
    cancels: &tokio::sync::broadcast::Sender<String>,
    sharded: Option<&Sharded>,
    info: &PushInfo,
) {
    match info.kind {
        // Sharded messages (topics in cluster mode) carry the same channel and payload.
        PushKind::Message | PushKind::SMessage => {
            let [Value::BulkString(channel), Value::BulkString(payload)] = &info.data[..] else {
                tracing::warn!(kind = ?info.kind, "unexpected pub/sub message shape");
                return;
            };
            let Ok(channel) = std::str::from_utf8(channel) else {
                return;
            };
            if let Some(topic) = keys.topic_of_channel(channel) {
                if let Some(sink) = sinks.topics.get() {
                    sink.deliver(topic, payload);
                }
                return;
            }
            let text = String::from_utf8_lossy(payload);
            if channel == keys.cancel_channel() {
                let _ = cancels.send(text.into_owned());
            } else if channel == keys.done_channel() {
                if let Some(sink) = sinks.calls.get() {
                    sink.call_finished(&text);
                }
            } else if channel == keys.progress_channel() {
                if let (Some(sink), Ok(p)) = (sinks.calls.get(), serde_json::from_str(&text)) {
                    sink.call_progress(p);
                }
            } else if channel == keys.session_channel()
                && let Some(sink) = sinks.sessions.get()
                && let Some((id, generation)) = text.split_once(' ')
                && let Ok(generation) = generation.parse()
            {
                sink.session_taken(id, generation);
            }
        }
        PushKind::Disconnection => {
            tracing::warn!("Redis pub/sub connection lost; reconnecting and resubscribing");
            if let Some(sharded) = sharded {
                sharded.lost();
            }
            if let Some(sink) = sinks.topics.get() {
                sink.subscription_lost();
            }
        }
        // Cluster mode: a slot moved to another primary, whose owner dropped our subscription
        // (our own unsubscribes are confirmed with the same push: those are not wanted).
        PushKind::SUnsubscribe => {
            let Some(sharded) = sharded else { return };
            let Some(channel) = info.data.first().and_then(text) else {
                return;
            };
            if sharded.moved(&channel) {
                tracing::warn!(%channel, "Redis Cluster: a topic's slot moved; subscribing again");
                if let Some(sink) = sinks.topics.get() {
                    sink.subscription_lost();
                }
            }
        }
        _ => {}
    }
}

/// TCP settings of every connection (STACK.md trap 8).
fn tcp_settings() -> redis::io::tcp::TcpSettings {
    redis::io::tcp::TcpSettings::default().set_nodelay(true)
}

/// A Redis string reply as text (any of RESP3's string kinds).
fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        _ => None,
    }
}
