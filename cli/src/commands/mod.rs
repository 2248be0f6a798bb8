//! The subcommands, and what they share: logging, the gateway's tuning flags, the shutdown
//! signal, the file-descriptor limit.

pub(crate) mod dev;
pub(crate) mod gateway;
pub(crate) mod publish;
pub(crate) mod token;
pub(crate) mod worker;

use std::time::Duration;

use clap::Args as ClapArgs;
use switchboard_core::backend::redis as redis_defaults;
use switchboard_core::backend::{RedisBackend, RedisOptions};
use switchboard_core::history::HistoryRule;

use crate::Failure;
use switchboard_gateway::config::{self as gw, AuthConfig, GatewayConfig};

pub(crate) fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("SWITCHBOARD_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info,hyper=warn,h2=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// How to reach Redis, shared by `gateway`, `worker` and `publish`.
#[derive(ClapArgs, Debug, Clone)]
pub(crate) struct RedisArgs {
    /// Redis URL (redis://host:port/db).
    #[arg(long, env = "SWITCHBOARD_REDIS")]
    redis: String,
    /// Prefix of every Redis key and channel.
    #[arg(long, env = "SWITCHBOARD_REDIS_PREFIX", default_value = switchboard_core::keys::DEFAULT_PREFIX)]
    redis_prefix: String,
    /// Bound on one Redis command, in ms.
    #[arg(long, env = "SWITCHBOARD_REDIS_TIMEOUT_MS", default_value_t = redis_defaults::DEFAULT_OP_TIMEOUT.as_millis() as u64)]
    redis_timeout_ms: u64,
    /// Bound on opening one Redis connection, in ms.
    #[arg(long, env = "SWITCHBOARD_REDIS_CONNECT_TIMEOUT_MS", default_value_t = redis_defaults::DEFAULT_CONNECT_TIMEOUT.as_millis() as u64)]
    redis_connect_timeout_ms: u64,
}

impl RedisArgs {
    /// The checked options; the error names the bad setting.
    pub(crate) fn options(&self) -> Result<RedisOptions, Failure> {
        if self.redis_prefix.is_empty() || self.redis_prefix.contains(['{', '}']) {
            return Err(Failure::Usage(
                "redis-prefix (SWITCHBOARD_REDIS_PREFIX) must be non-empty and without { }".into(),
            ));
        }
        if self.redis_timeout_ms == 0 || self.redis_connect_timeout_ms == 0 {
            return Err(Failure::Usage(
                "redis-timeout-ms and redis-connect-timeout-ms must be greater than zero".into(),
            ));
        }
        let mut opts = RedisOptions::new(&self.redis);
        opts.prefix = self.redis_prefix.clone();
        opts.op_timeout = Duration::from_millis(self.redis_timeout_ms);
        opts.connect_timeout = Duration::from_millis(self.redis_connect_timeout_ms);
        Ok(opts)
    }

    /// The Redis backend; call it inside the runtime (its connections start tasks at once).
    pub(crate) fn backend(&self) -> Result<RedisBackend, Failure> {
        RedisBackend::new(&self.options()?)
            .map_err(|e| Failure::Usage(format!("redis (SWITCHBOARD_REDIS): {e}")))
    }
}

/// The gateway's bounds and timeouts, shared by `gateway` and `dev`.
#[derive(ClapArgs, Debug, Clone)]
pub(crate) struct Tuning {
    /// Close a socket that sends no `hello` within this many ms (4001).
    #[arg(long, env = "SWITCHBOARD_HELLO_TIMEOUT_MS", default_value_t = gw::DEFAULT_HELLO_TIMEOUT.as_millis() as u64)]
    hello_timeout_ms: u64,
    /// Largest message a client may send, in bytes (1009 over it).
    #[arg(long, env = "SWITCHBOARD_MAX_MESSAGE_BYTES", default_value_t = gw::DEFAULT_MAX_MESSAGE_BYTES)]
    max_message_bytes: usize,
    /// Frames queued per socket before it is closed as a slow consumer (4008).
    #[arg(long, env = "SWITCHBOARD_OUTBOUND_QUEUE", default_value_t = gw::DEFAULT_OUTBOUND_QUEUE)]
    outbound_queue: usize,
    /// Topics one connection may subscribe to.
    #[arg(long, env = "SWITCHBOARD_MAX_SUBSCRIPTIONS", default_value_t = gw::DEFAULT_MAX_SUBSCRIPTIONS)]
    max_subscriptions: usize,
    /// Sockets this node holds; more are closed with 1013.
    #[arg(long, env = "SWITCHBOARD_MAX_CONNECTIONS", default_value_t = gw::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    /// Connections the kernel queues for accept (capped by net.core.somaxconn).
    #[arg(long, env = "SWITCHBOARD_LISTEN_BACKLOG", default_value_t = gw::DEFAULT_LISTEN_BACKLOG)]
    pub(crate) listen_backlog: u32,
    /// Ping a quiet client this often (ms); close it after three silent heartbeats (4002).
    #[arg(long, env = "SWITCHBOARD_HEARTBEAT_MS", default_value_t = gw::DEFAULT_HEARTBEAT.as_millis() as u64)]
    heartbeat_ms: u64,
    /// A write to a socket taking longer than this (ms) drops the connection.
    #[arg(long, env = "SWITCHBOARD_WRITE_TIMEOUT_MS", default_value_t = gw::DEFAULT_WRITE_TIMEOUT.as_millis() as u64)]
    write_timeout_ms: u64,
    /// After our close frame, wait this long (ms) for the client's.
    #[arg(long, env = "SWITCHBOARD_CLOSE_TIMEOUT_MS", default_value_t = gw::DEFAULT_CLOSE_TIMEOUT.as_millis() as u64)]
    close_timeout_ms: u64,
    /// On shutdown, give connections this long (ms) to close.
    #[arg(long, env = "SWITCHBOARD_SHUTDOWN_GRACE_MS", default_value_t = gw::DEFAULT_SHUTDOWN_GRACE.as_millis() as u64)]
    shutdown_grace_ms: u64,
    /// On shutdown, ask sockets to close over this long (ms), a batch at a time.
    #[arg(long, env = "SWITCHBOARD_DRAIN_SPREAD_MS", default_value_t = gw::DEFAULT_DRAIN_SPREAD.as_millis() as u64)]
    drain_spread_ms: u64,
    /// Ping the backend this often (ms) for /readyz.
    #[arg(long, env = "SWITCHBOARD_READINESS_INTERVAL_MS", default_value_t = gw::DEFAULT_READINESS_INTERVAL.as_millis() as u64)]
    readiness_interval_ms: u64,
    /// Retry a failed backend (un)subscribe this often (ms).
    #[arg(long, env = "SWITCHBOARD_SUBSCRIBE_RETRY_MS", default_value_t = gw::DEFAULT_SUBSCRIBE_RETRY.as_millis() as u64)]
    subscribe_retry_ms: u64,
    /// Fan-out workers (a topic always goes to the same one) [default: one per core].
    #[arg(long, env = "SWITCHBOARD_FANOUT_WORKERS")]
    fanout_workers: Option<usize>,
    /// Events queued per fan-out worker before new ones are dropped and counted.
    #[arg(long, env = "SWITCHBOARD_FANOUT_QUEUE", default_value_t = gw::DEFAULT_FANOUT_QUEUE)]
    fanout_queue: usize,
    /// Tool calls one connection may have in flight (over it: -32006).
    #[arg(long, env = "SWITCHBOARD_MAX_INFLIGHT_CALLS", default_value_t = gw::DEFAULT_MAX_INFLIGHT_CALLS)]
    max_inflight_calls: usize,
    /// How long a task is kept when the caller asks for no ttl (ms).
    #[arg(long, env = "SWITCHBOARD_TASK_TTL_MS", default_value_t = gw::DEFAULT_TASK_TTL.as_millis() as u64)]
    task_ttl_ms: u64,
    /// The longest task ttl a caller may ask for (ms).
    #[arg(long, env = "SWITCHBOARD_MAX_TASK_TTL_MS", default_value_t = gw::DEFAULT_MAX_TASK_TTL.as_millis() as u64)]
    max_task_ttl_ms: u64,
    /// How often the worker registry is read (ms).
    #[arg(long, env = "SWITCHBOARD_REGISTRY_INTERVAL_MS", default_value_t = gw::DEFAULT_REGISTRY_INTERVAL.as_millis() as u64)]
    registry_interval_ms: u64,
    /// A waiting call re-reads its task this often without a signal (ms).
    #[arg(long, env = "SWITCHBOARD_CALL_POLL_MS", default_value_t = gw::DEFAULT_CALL_POLL.as_millis() as u64)]
    call_poll_ms: u64,
    /// Topics that keep history: PATTERN=MAXLEN[:TTL_MS] (`*` matches any run), e.g.
    /// chat:*=1000:3600000. Repeat the flag, or separate rules with commas.
    #[arg(long, env = "SWITCHBOARD_HISTORY", value_delimiter = ',', value_parser = HistoryRule::parse)]
    history: Vec<HistoryRule>,
    /// Events a `subscribe {since}` replays at most; further behind answers recovered: false.
    #[arg(long, env = "SWITCHBOARD_MAX_REPLAY", default_value_t = gw::DEFAULT_MAX_REPLAY)]
    max_replay: usize,
    /// Live events held for a subscriber while its replay is read; more closes it (4008).
    #[arg(long, env = "SWITCHBOARD_REPLAY_BUFFER", default_value_t = gw::DEFAULT_REPLAY_BUFFER)]
    replay_buffer: usize,
    /// History replays one node runs at once (subscribe with since, session resumes); more wait.
    #[arg(long, env = "SWITCHBOARD_MAX_CONCURRENT_REPLAYS", default_value_t = gw::DEFAULT_MAX_CONCURRENT_REPLAYS)]
    max_concurrent_replays: usize,
    /// The longest a history replay may take, its wait for a replay slot included (ms).
    #[arg(long, env = "SWITCHBOARD_REPLAY_TIMEOUT_MS", default_value_t = gw::DEFAULT_REPLAY_TIMEOUT.as_millis() as u64)]
    replay_timeout_ms: u64,
    /// How long past a tool's timeout a caller waits for the worker's answer before -32005 (ms).
    #[arg(long, env = "SWITCHBOARD_DEADLINE_GRACE_MS", default_value_t = gw::DEFAULT_DEADLINE_GRACE.as_millis() as u64)]
    deadline_grace_ms: u64,
    /// How long a session outlives its socket (ms): a client may resume it on any node.
    #[arg(long, env = "SWITCHBOARD_SESSION_TTL_MS", default_value_t = gw::DEFAULT_SESSION_TTL.as_millis() as u64)]
    session_ttl_ms: u64,
    /// How often a node saves its sessions' positions and extends their expiry (ms).
    #[arg(long, env = "SWITCHBOARD_SESSION_REFRESH_MS", default_value_t = gw::DEFAULT_SESSION_REFRESH.as_millis() as u64)]
    session_refresh_ms: u64,
}

impl Tuning {
    pub(crate) fn config(&self, node_id: String, auth: AuthConfig) -> GatewayConfig {
        let ms = Duration::from_millis;
        GatewayConfig {
            node_id,
            auth,
            hello_timeout: ms(self.hello_timeout_ms),
            max_message_bytes: self.max_message_bytes,
            outbound_queue: self.outbound_queue,
            max_subscriptions: self.max_subscriptions,
            max_connections: self.max_connections,
            heartbeat: ms(self.heartbeat_ms),
            write_timeout: ms(self.write_timeout_ms),
            close_timeout: ms(self.close_timeout_ms),
            shutdown_grace: ms(self.shutdown_grace_ms),
            drain_spread: ms(self.drain_spread_ms),
            readiness_interval: ms(self.readiness_interval_ms),
            subscribe_retry: ms(self.subscribe_retry_ms),
            fanout_workers: self
                .fanout_workers
                .unwrap_or_else(gw::default_fanout_workers),
            fanout_queue: self.fanout_queue,
            max_inflight_calls: self.max_inflight_calls,
            task_ttl: ms(self.task_ttl_ms),
            max_task_ttl: ms(self.max_task_ttl_ms),
            registry_interval: ms(self.registry_interval_ms),
            call_poll: ms(self.call_poll_ms),
            deadline_grace: ms(self.deadline_grace_ms),
            history: self.history.clone(),
            max_replay: self.max_replay,
            replay_buffer: self.replay_buffer,
            max_concurrent_replays: self.max_concurrent_replays,
            replay_timeout: ms(self.replay_timeout_ms),
            session_ttl: ms(self.session_ttl_ms),
            session_refresh: ms(self.session_refresh_ms),
        }
    }
}

/// Completes on SIGTERM or ctrl-c.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM; ctrl-c only");
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutdown requested");
}

/// Raises the soft open-file limit to the hard limit: every socket is a descriptor.
pub(crate) fn raise_fd_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(limit = n, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open-file limit"),
    }
}

pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// This node's default name: `$HOSTNAME` (the pod name on Kubernetes) or `gateway-<pid>`.
pub(crate) fn default_node_id() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| format!("gateway-{}", std::process::id()))
}
