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

mod calls;
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
mod topics;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use redis::aio::ConnectionManagerConfig;
use redis::{PushInfo, PushKind, Value};
use switchboard_core::backend::{Backend, BackendError, CallSink, TakeoverSink, TopicSink};

pub use crate::keys::Keys;
use crate::links::{Conn, Links, Role};
pub use crate::options::{RedisOptions, RedisUrl, Secret, Target};
pub use crate::sentinel::SentinelTarget;

/// Cancellations buffered for a worker that is busy; older ones are dropped (a job also checks
/// its task's status before it starts).
const CANCEL_BUFFER: usize = 1024;

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
    /// The commands, pub/sub and blocking connections (blocking: workers' `XREADGROUP ...
    /// BLOCK`, which would stall the others), switched to a new primary behind Sentinel.
    links: Arc<Links>,
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
        let on_push: links::OnPush = {
            let (keys, sinks, cancels) = (keys.clone(), sinks.clone(), cancels.clone());
            let disconnections = disconnections.clone();
            Arc::new(move |info: PushInfo| {
                if info.kind == PushKind::Disconnection {
                    disconnections.fetch_add(1, Ordering::Relaxed);
                }
                handle_push(&keys, &sinks, &cancels, &info);
            })
        };
        let links = match target {
            Target::Direct(client) => Links::direct(client, &base, &on_push)
                .map_err(|e| BackendError::Unavailable(e.to_string()))?,
            Target::Sentinel(s) => Links::sentinel(s, base, on_push),
        };

        Ok(Arc::new(RedisBackend {
            keys,
            op_timeout: opts.op_timeout,
            links,
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

    fn commands(&self) -> Conn {
        self.links.conn(Role::Commands)
    }

    fn pubsub(&self) -> Conn {
        self.links.conn(Role::PubSub)
    }

    fn blocking(&self) -> Conn {
        self.links.conn(Role::Blocking)
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
        let links = self.links.clone();
        self.bounded(async move { links.subscribe(channels).await })
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
