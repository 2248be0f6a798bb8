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
//! others. Every operation is bounded by [`RedisOptions::op_timeout`].

mod calls;
mod conns;
mod health;
mod history;
pub mod keys;
mod queue;
mod rates;
mod sessions;
mod topics;

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::io::tcp::TcpSettings;
use redis::{IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind, Value};
use switchboard_core::backend::{Backend, BackendError, CallSink, TakeoverSink, TopicSink};
use switchboard_core::settings;

pub use crate::keys::Keys;

/// Cancellations buffered for a worker that is busy; older ones are dropped (a job also checks
/// its task's status before it starts).
const CANCEL_BUFFER: usize = 1024;

/// How to reach Redis: settings shared by `gateway`, `worker` and `publish`.
#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "Redis")]
pub struct RedisOptions {
    /// Redis URL (redis://host:port/db).
    #[arg(long = "redis", env = "SWITCHBOARD_REDIS", value_name = "URL")]
    pub url: String,
    /// Prefix of every Redis key and channel.
    #[arg(long = "redis-prefix", env = "SWITCHBOARD_REDIS_PREFIX", default_value = keys::DEFAULT_PREFIX)]
    pub prefix: String,
    /// Bound on one Redis command.
    #[arg(long = "redis-timeout", env = "SWITCHBOARD_REDIS_TIMEOUT", default_value = "2s", value_name = "DURATION", value_parser = settings::duration)]
    pub op_timeout: Duration,
    /// Bound on opening one Redis connection.
    #[arg(long = "redis-connect-timeout", env = "SWITCHBOARD_REDIS_CONNECT_TIMEOUT", default_value = "2s", value_name = "DURATION", value_parser = settings::duration)]
    pub connect_timeout: Duration,
}

impl RedisOptions {
    /// Options for `url` with every other setting at its default.
    pub fn new(url: impl Into<String>) -> Self {
        let url = url.into();
        settings::from_args_without_env(&["--redis", &url]).expect("defaults are valid")
    }
}

impl RedisOptions {
    /// Checks every setting; the error names the flag to fix.
    pub fn validate(&self) -> Result<(), String> {
        // A `{` or `}` in the prefix would break the hash tags.
        if self.prefix.is_empty() || self.prefix.contains(['{', '}']) {
            return Err("--redis-prefix must be non-empty and without { }".into());
        }
        if self.op_timeout.is_zero() {
            return Err("--redis-timeout must be greater than zero".into());
        }
        if self.connect_timeout.is_zero() {
            return Err("--redis-connect-timeout must be greater than zero".into());
        }
        Ok(())
    }
}

/// Who the pub/sub connection's messages go to, each set once.
#[derive(Default)]
struct Sinks {
    topics: OnceLock<Arc<dyn TopicSink>>,
    calls: OnceLock<Arc<dyn CallSink>>,
    sessions: OnceLock<Arc<dyn TakeoverSink>>,
}

/// See the module docs.
pub struct RedisBackend {
    keys: Keys,
    op_timeout: Duration,
    commands: ConnectionManager,
    pubsub: ConnectionManager,
    /// For blocking reads (workers' `XREADGROUP ... BLOCK`), which would stall the others.
    blocking: ConnectionManager,
    sinks: Arc<Sinks>,
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
    pub fn connect(opts: &RedisOptions) -> Result<Arc<Self>, BackendError> {
        opts.validate().map_err(BackendError::Unavailable)?;
        let bad_url =
            |e: redis::RedisError| BackendError::Unavailable(format!("bad Redis URL: {e}"));
        let info = opts.url.as_str().into_connection_info().map_err(bad_url)?;
        let redis_settings = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let info = info
            .set_redis_settings(redis_settings)
            .set_tcp_settings(TcpSettings::default().set_nodelay(true));
        let client = redis::Client::open(info).map_err(bad_url)?;

        let base = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(opts.connect_timeout))
            .set_response_timeout(Some(opts.op_timeout))
            // Few, quick retries: readiness pings start the next attempt while Redis is away.
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        let unavailable = |e: redis::RedisError| BackendError::Unavailable(e.to_string());

        let commands = ConnectionManager::new_lazy_with_config(client.clone(), base.clone())
            .map_err(unavailable)?;
        // No response timeout of its own: each blocking read bounds itself.
        let blocking = ConnectionManager::new_lazy_with_config(
            client.clone(),
            base.clone().set_response_timeout(None),
        )
        .map_err(unavailable)?;
        let (cancels, _) = tokio::sync::broadcast::channel(CANCEL_BUFFER);

        let keys = Keys::new(&opts.prefix);
        let sinks = Arc::new(Sinks::default());
        let disconnections = Arc::new(AtomicU64::new(0));
        let on_push = {
            let (keys, sinks, cancels) = (keys.clone(), sinks.clone(), cancels.clone());
            let disconnections = disconnections.clone();
            move |info: PushInfo| -> Result<(), Infallible> {
                if info.kind == PushKind::Disconnection {
                    disconnections.fetch_add(1, Ordering::Relaxed);
                }
                handle_push(&keys, &sinks, &cancels, &info);
                Ok(())
            }
        };
        let pubsub = ConnectionManager::new_lazy_with_config(
            client,
            base.set_push_sender(on_push).set_automatic_resubscription(),
        )
        .map_err(unavailable)?;

        Ok(Arc::new(RedisBackend {
            keys,
            op_timeout: opts.op_timeout,
            commands,
            pubsub,
            blocking,
            sinks,
            cancels,
            disconnections,
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

    fn commands(&self) -> ConnectionManager {
        self.commands.clone()
    }

    fn pubsub(&self) -> ConnectionManager {
        self.pubsub.clone()
    }

    /// Runs one Redis operation within the operation timeout.
    async fn bounded<T>(
        &self,
        fut: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, BackendError> {
        match tokio::time::timeout(self.op_timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(BackendError::Unavailable(e.to_string())),
            Err(_) => Err(BackendError::Timeout),
        }
    }

    /// Subscribes channels on the pub/sub connection (signal channels; topics go through the
    /// topic bus). Idempotent.
    async fn listen(&self, channels: Vec<String>) -> Result<(), BackendError> {
        let mut pubsub = self.pubsub();
        self.bounded(async move { pubsub.subscribe(channels).await })
            .await
    }
}

/// Hands one push message of the pub/sub connection to whoever it is for.
fn handle_push(
    keys: &Keys,
    sinks: &Sinks,
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
            if let Some(sink) = sinks.topics.get() {
                sink.subscription_lost();
            }
        }
        _ => {}
    }
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
