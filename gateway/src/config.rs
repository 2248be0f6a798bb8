//! The gateway's configuration: one typed struct, every bound and timeout named with its
//! default here. The CLI fills it from flags and `SWITCHBOARD_*` variables and calls
//! [`GatewayConfig::validate`] before binding any port.

use std::time::Duration;

use switchboard_core::auth::Verifier;

/// Default: the first message must be `hello` within this long (close 4001 otherwise).
pub const DEFAULT_HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// Default: the largest message a client may send, in bytes (close 1009 over it).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Default: frames queued for one socket before it counts as a slow consumer (close 4008).
pub const DEFAULT_OUTBOUND_QUEUE: usize = 1024;
/// Default: topics one connection may subscribe to.
pub const DEFAULT_MAX_SUBSCRIPTIONS: usize = 1024;
/// Default: sockets one node holds; past it new sockets are closed with 1013.
pub const DEFAULT_MAX_CONNECTIONS: usize = 100_000;
/// Default: a quiet client is pinged this often, and closed with 4002 after three of these
/// without a frame from it.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(25);
/// Default: one write of queued frames may take this long before the peer counts as dead.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default: after sending a close frame, how long to wait for the client's reply.
pub const DEFAULT_CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Default: on shutdown, how long connections get to close before the node exits anyway.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Default: on shutdown, sockets are asked to close over this long, a batch at a time, so the
/// nodes that take them over are not stampeded (at most the shutdown grace).
pub const DEFAULT_DRAIN_SPREAD: Duration = Duration::from_secs(5);
/// Default: how often the backend is pinged for `/readyz`.
pub const DEFAULT_READINESS_INTERVAL: Duration = Duration::from_secs(1);
/// Default: how often a failed Redis (un)subscribe is retried.
pub const DEFAULT_SUBSCRIBE_RETRY: Duration = Duration::from_secs(1);
/// Default: events queued for each fan-out worker before new ones are dropped and counted.
pub const DEFAULT_FANOUT_QUEUE: usize = 65_536;
/// Default: tool calls one connection may have in flight (over it: -32006).
pub const DEFAULT_MAX_INFLIGHT_CALLS: usize = 64;
/// Default: how long a task is kept when the caller asks for no ttl.
pub const DEFAULT_TASK_TTL: Duration = Duration::from_secs(3600);
/// Default: the longest task ttl a caller may ask for.
pub const DEFAULT_MAX_TASK_TTL: Duration = Duration::from_secs(86_400);
/// Default: how often the node reads the worker registry (tools/list, list_changed).
pub const DEFAULT_REGISTRY_INTERVAL: Duration = Duration::from_secs(1);
/// Default: how long past a tool's own timeout a caller waits for the worker's answer (a
/// timed-out call's `isError` result) before answering -32005 itself.
pub const DEFAULT_DEADLINE_GRACE: Duration = Duration::from_secs(1);
/// Default: a waiting call re-reads its task this often even without a signal.
pub const DEFAULT_CALL_POLL: Duration = Duration::from_millis(500);
/// Default: events a `subscribe {since}` replays at most; further behind is `recovered: false`.
pub const DEFAULT_MAX_REPLAY: usize = 10_000;
/// Default: live events held for a subscriber while its replay is read; more closes it (4008).
pub const DEFAULT_REPLAY_BUFFER: usize = 10_000;
/// Default: history replays (`subscribe {since}`, a resume) one node runs at once; more wait.
pub const DEFAULT_MAX_CONCURRENT_REPLAYS: usize = 256;
/// Default: the longest a history replay may take, waiting for a replay slot included; a
/// client that does not read its replay in time is closed (4008), a wait past it is -32006.
pub const DEFAULT_REPLAY_TIMEOUT: Duration = Duration::from_secs(30);
/// Default: how long a session outlives its socket (resume within it, on any node).
pub const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(120);
/// Default: how often a node saves its sessions' positions and pushes their expiry ahead.
pub const DEFAULT_SESSION_REFRESH: Duration = Duration::from_secs(10);
/// Default: connections the kernel queues for `accept` (capped by `net.core.somaxconn`). A
/// crowd reconnecting after a node died arrives at once; with the usual 128 the excess SYNs are
/// dropped and those clients wait a second for their retransmission.
pub const DEFAULT_LISTEN_BACKLOG: u32 = 4096;
/// Frames written to one socket in one vectored write, at most.
pub const MAX_WRITE_BATCH: usize = 64;

/// Who may connect.
#[derive(Debug, Clone, Default)]
pub struct AuthConfig {
    /// Verifies HS256 tokens; `None` when no secret is configured.
    pub verifier: Option<Verifier>,
    /// Connections without a token are accepted as `anonymous`.
    pub allow_anonymous: bool,
}

/// See the module docs.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// This node's name, reported in `hello` results and logs.
    pub node_id: String,
    pub auth: AuthConfig,
    pub hello_timeout: Duration,
    pub max_message_bytes: usize,
    pub outbound_queue: usize,
    pub max_subscriptions: usize,
    pub max_connections: usize,
    pub heartbeat: Duration,
    pub write_timeout: Duration,
    pub close_timeout: Duration,
    pub shutdown_grace: Duration,
    pub drain_spread: Duration,
    pub readiness_interval: Duration,
    pub subscribe_retry: Duration,
    /// Fan-out workers (a topic always goes to the same one); default: one per core.
    pub fanout_workers: usize,
    pub fanout_queue: usize,
    pub max_inflight_calls: usize,
    pub task_ttl: Duration,
    pub max_task_ttl: Duration,
    pub registry_interval: Duration,
    pub call_poll: Duration,
    pub deadline_grace: Duration,
    /// Topics that keep history (first matching rule wins).
    pub history: Vec<switchboard_core::history::HistoryRule>,
    pub max_replay: usize,
    pub replay_buffer: usize,
    pub max_concurrent_replays: usize,
    pub replay_timeout: Duration,
    pub session_ttl: Duration,
    pub session_refresh: Duration,
}

/// A setting that cannot work, named by its config key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "no way to authenticate clients: set --jwt-secret (SWITCHBOARD_JWT_SECRET) or --allow-anonymous (SWITCHBOARD_ALLOW_ANONYMOUS)"
    )]
    NoAuth,
    #[error("{key} must be {what}")]
    Invalid {
        key: &'static str,
        what: &'static str,
    },
}

impl GatewayConfig {
    /// A configuration with every default and anonymous access (for `dev` and tests).
    pub fn dev(node_id: impl Into<String>) -> Self {
        GatewayConfig {
            node_id: node_id.into(),
            auth: AuthConfig {
                verifier: None,
                allow_anonymous: true,
            },
            hello_timeout: DEFAULT_HELLO_TIMEOUT,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            outbound_queue: DEFAULT_OUTBOUND_QUEUE,
            max_subscriptions: DEFAULT_MAX_SUBSCRIPTIONS,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            heartbeat: DEFAULT_HEARTBEAT,
            write_timeout: DEFAULT_WRITE_TIMEOUT,
            close_timeout: DEFAULT_CLOSE_TIMEOUT,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            drain_spread: DEFAULT_DRAIN_SPREAD,
            readiness_interval: DEFAULT_READINESS_INTERVAL,
            subscribe_retry: DEFAULT_SUBSCRIBE_RETRY,
            fanout_workers: default_fanout_workers(),
            fanout_queue: DEFAULT_FANOUT_QUEUE,
            max_inflight_calls: DEFAULT_MAX_INFLIGHT_CALLS,
            task_ttl: DEFAULT_TASK_TTL,
            max_task_ttl: DEFAULT_MAX_TASK_TTL,
            registry_interval: DEFAULT_REGISTRY_INTERVAL,
            call_poll: DEFAULT_CALL_POLL,
            deadline_grace: DEFAULT_DEADLINE_GRACE,
            history: Vec::new(),
            max_replay: DEFAULT_MAX_REPLAY,
            replay_buffer: DEFAULT_REPLAY_BUFFER,
            max_concurrent_replays: DEFAULT_MAX_CONCURRENT_REPLAYS,
            replay_timeout: DEFAULT_REPLAY_TIMEOUT,
            session_ttl: DEFAULT_SESSION_TTL,
            session_refresh: DEFAULT_SESSION_REFRESH,
        }
    }

    /// Checks the settings together; the error names the key to fix.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.auth.verifier.is_none() && !self.auth.allow_anonymous {
            return Err(ConfigError::NoAuth);
        }
        let positive = |key, d: Duration| {
            if d.is_zero() {
                Err(ConfigError::Invalid {
                    key,
                    what: "greater than zero",
                })
            } else {
                Ok(())
            }
        };
        positive("hello-timeout", self.hello_timeout)?;
        positive("heartbeat", self.heartbeat)?;
        positive("write-timeout", self.write_timeout)?;
        positive("readiness-interval", self.readiness_interval)?;
        positive("subscribe-retry", self.subscribe_retry)?;
        positive("task-ttl", self.task_ttl)?;
        positive("registry-interval", self.registry_interval)?;
        positive("call-poll", self.call_poll)?;
        positive("session-ttl", self.session_ttl)?;
        positive("replay-timeout", self.replay_timeout)?;
        positive("session-refresh", self.session_refresh)?;
        if self.max_task_ttl < self.task_ttl {
            return Err(ConfigError::Invalid {
                key: "max-task-ttl",
                what: "at least task-ttl",
            });
        }
        let at_least_one = |key, n: usize| {
            if n == 0 {
                Err(ConfigError::Invalid {
                    key,
                    what: "at least 1",
                })
            } else {
                Ok(())
            }
        };
        at_least_one("outbound-queue", self.outbound_queue)?;
        at_least_one("fanout-workers", self.fanout_workers)?;
        at_least_one("fanout-queue", self.fanout_queue)?;
        at_least_one("max-connections", self.max_connections)?;
        at_least_one("max-subscriptions", self.max_subscriptions)?;
        at_least_one("max-inflight-calls", self.max_inflight_calls)?;
        at_least_one("max-replay", self.max_replay)?;
        at_least_one("replay-buffer", self.replay_buffer)?;
        at_least_one("max-concurrent-replays", self.max_concurrent_replays)?;
        if self.max_message_bytes < 256 {
            return Err(ConfigError::Invalid {
                key: "max-message-bytes",
                what: "at least 256",
            });
        }
        if self.node_id.is_empty() {
            return Err(ConfigError::Invalid {
                key: "node-id",
                what: "non-empty",
            });
        }
        Ok(())
    }
}

/// Default fan-out workers: one per available core.
pub fn default_fanout_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_config_is_valid() {
        GatewayConfig::dev("n1").validate().unwrap();
    }

    #[test]
    fn refuses_to_run_without_auth() {
        let mut c = GatewayConfig::dev("n1");
        c.auth.allow_anonymous = false;
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("--jwt-secret"), "{err}");
        c.auth.verifier = Some(Verifier::hs256(b"s"));
        c.validate().unwrap();
    }

    #[test]
    fn names_the_bad_key() {
        let mut c = GatewayConfig::dev("n1");
        c.outbound_queue = 0;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("outbound-queue")
        );
    }
}
