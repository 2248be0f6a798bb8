//! The gateway's configuration, declared once: each setting's flag, `SWITCHBOARD_*` variable,
//! default and help are on its field (the structs are `clap::Args`), and what each may be is
//! checked in one place, [`GatewayConfig::validate`], which names the flag to fix (the CLI
//! exits 64 on it; `run` refuses such a configuration too, whoever built it). Durations are
//! written with their unit: `5s`, `250ms`.
//!
//! [`GatewayConfig`] is who the node is (`--node-id`), who may connect ([`AuthConfig`]) and how
//! it behaves ([`Tuning`]: every bound, timeout and history rule). `switchboard dev` takes the
//! tuning alone: it is always `dev`, with anonymous clients. Tests start from
//! [`GatewayConfig::dev`]: every default, no environment read.

use std::path::PathBuf;
use std::time::Duration;

use switchboard_core::access::{Policy, ToolRule, TopicRule};
use switchboard_core::auth::{
    DEFAULT_JWKS_MIN_REFRESH, DEFAULT_JWKS_REFRESH, DEFAULT_JWKS_TIMEOUT, KeySettings, split_kid,
};
use switchboard_core::history::HistoryRule;
use switchboard_core::settings::{self, duration};
use switchboard_protocol::topic::MCP_STREAM_PREFIX;

/// Who may connect: the keys client tokens are verified with (`docs/security.md`), or
/// anonymous clients. Tokens are refused unless some key source is set.
#[derive(clap::Args, Clone)]
#[command(next_help_heading = "Authentication (a key source or --allow-anonymous is required)")]
pub struct AuthConfig {
    /// HMAC secret tokens are verified with (HS256, HS384, HS512): SECRET, or
    /// kid:<KID>:<SECRET> for the tokens whose header names that kid. Repeatable: several
    /// secrets without a kid are each tried (a rotation). The variable takes one secret per
    /// line (a secret cannot hold a line break).
    #[arg(
        id = "jwt_secret",
        long = "jwt-secret",
        env = "SWITCHBOARD_JWT_SECRET",
        hide_env_values = true,
        value_delimiter = '\n',
        value_name = "SECRET",
        value_parser = non_empty
    )]
    pub jwt_secrets: Vec<String>,
    /// PEM public key file tokens are verified with: RSA (RS256/384/512, PS256/384/512), EC
    /// P-256 (ES256), EC P-384 (ES384) or Ed25519 (EdDSA); FILE, or kid:<KID>:<FILE>.
    /// Repeatable; the variable takes files separated by `,`.
    #[arg(
        long = "jwt-public-key",
        env = "SWITCHBOARD_JWT_PUBLIC_KEY",
        value_delimiter = ',',
        value_name = "FILE"
    )]
    pub jwt_public_keys: Vec<PathBuf>,
    /// An identity provider's JSON Web Key Set (https://...): fetched at start, refreshed in
    /// the background, and again (rate-limited) when a token names an unknown kid.
    #[arg(
        long = "jwt-jwks-url",
        env = "SWITCHBOARD_JWT_JWKS_URL",
        value_name = "URL"
    )]
    pub jwt_jwks_url: Option<String>,
    /// Audience a token's `aud` must name (one of them, when repeated); unset: `aud` is not
    /// checked. The variable takes audiences separated by `,`.
    #[arg(
        long = "jwt-audience",
        env = "SWITCHBOARD_JWT_AUDIENCE",
        value_delimiter = ',',
        value_name = "AUD",
        value_parser = non_empty
    )]
    pub jwt_audience: Vec<String>,
    /// Issuer a token's `iss` must be (one of them, when repeated); unset: `iss` is not
    /// checked. The variable takes issuers separated by `,`.
    #[arg(
        long = "jwt-issuer",
        env = "SWITCHBOARD_JWT_ISSUER",
        value_delimiter = ',',
        value_name = "ISS",
        value_parser = non_empty
    )]
    pub jwt_issuer: Vec<String>,
    /// Fetch the JWKS again this often.
    #[arg(long = "jwt-jwks-refresh", env = "SWITCHBOARD_JWT_JWKS_REFRESH", default_value = "5m", value_name = "DURATION", value_parser = duration)]
    pub jwt_jwks_refresh: Duration,
    /// Tokens naming an unknown kid fetch the JWKS at most once per this long.
    #[arg(long = "jwt-jwks-min-refresh", env = "SWITCHBOARD_JWT_JWKS_MIN_REFRESH", default_value = "10s", value_name = "DURATION", value_parser = duration)]
    pub jwt_jwks_min_refresh: Duration,
    /// Give up on a JWKS fetch (and a token waiting on it) after this long.
    #[arg(long = "jwt-jwks-timeout", env = "SWITCHBOARD_JWT_JWKS_TIMEOUT", default_value = "5s", value_name = "DURATION", value_parser = duration)]
    pub jwt_jwks_timeout: Duration,
    /// Accept clients without a token (as `anonymous`).
    #[arg(long, env = "SWITCHBOARD_ALLOW_ANONYMOUS")]
    pub allow_anonymous: bool,
}

impl Default for AuthConfig {
    /// No key, no anonymous client: nobody may connect.
    fn default() -> Self {
        AuthConfig {
            jwt_secrets: Vec::new(),
            jwt_public_keys: Vec::new(),
            jwt_jwks_url: None,
            jwt_audience: Vec::new(),
            jwt_issuer: Vec::new(),
            jwt_jwks_refresh: DEFAULT_JWKS_REFRESH,
            jwt_jwks_min_refresh: DEFAULT_JWKS_MIN_REFRESH,
            jwt_jwks_timeout: DEFAULT_JWKS_TIMEOUT,
            allow_anonymous: false,
        }
    }
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("key_settings", &self.key_settings())
            .field("allow_anonymous", &self.allow_anonymous)
            .finish()
    }
}

impl AuthConfig {
    /// What `switchboard_core::auth::Verifier::start` reads.
    pub fn key_settings(&self) -> KeySettings {
        KeySettings {
            secrets: self.jwt_secrets.clone(),
            public_keys: self.jwt_public_keys.clone(),
            jwks_url: self.jwt_jwks_url.clone(),
            audience: self.jwt_audience.clone(),
            issuer: self.jwt_issuer.clone(),
            jwks_refresh: self.jwt_jwks_refresh,
            jwks_min_refresh: self.jwt_jwks_min_refresh,
            jwks_timeout: self.jwt_jwks_timeout,
        }
    }

    /// Whether a key source is set (a secret, a public key file or a JWKS URL).
    pub fn has_keys(&self) -> bool {
        !self.jwt_secrets.is_empty()
            || !self.jwt_public_keys.is_empty()
            || self.jwt_jwks_url.is_some()
    }

    /// What the key settings may be (a file is read, and a JWKS fetched, when the node starts).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.has_keys() && !self.allow_anonymous {
            return Err(ConfigError::NoAuth);
        }
        // The message never repeats a secret.
        for secret in &self.jwt_secrets {
            if secret.is_empty() {
                return Err(invalid("jwt-secret", "non-empty"));
            }
            if split_kid(secret, "SECRET").is_err() {
                return Err(invalid(
                    "jwt-secret",
                    "SECRET or kid:<KID>:<SECRET> (a value starting with kid: names a kid)",
                ));
            }
        }
        for file in &self.jwt_public_keys {
            if file.as_os_str().is_empty() {
                return Err(invalid("jwt-public-key", "a file"));
            }
            if file.to_str().is_some_and(|f| split_kid(f, "FILE").is_err()) {
                return Err(invalid("jwt-public-key", "FILE or kid:<KID>:<FILE>"));
            }
        }
        if let Some(url) = &self.jwt_jwks_url
            && !(url.starts_with("https://") || url.starts_with("http://"))
        {
            return Err(invalid("jwt-jwks-url", "an https:// (or http://) URL"));
        }
        if self.jwt_audience.iter().any(String::is_empty) {
            return Err(invalid("jwt-audience", "non-empty"));
        }
        if self.jwt_issuer.iter().any(String::is_empty) {
            return Err(invalid("jwt-issuer", "non-empty"));
        }
        let positive = [
            ("jwt-jwks-refresh", self.jwt_jwks_refresh),
            ("jwt-jwks-min-refresh", self.jwt_jwks_min_refresh),
            ("jwt-jwks-timeout", self.jwt_jwks_timeout),
        ];
        if let Some((key, _)) = positive.iter().find(|(_, d)| d.is_zero()) {
            return Err(invalid(key, "greater than zero"));
        }
        Ok(())
    }
}

fn non_empty(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    Ok(s.to_owned())
}

/// This node's default name: `$HOSTNAME` (the pod name on Kubernetes) or `gateway-<pid>`.
pub fn default_node_id() -> String {
    settings::host_name().unwrap_or_else(|| format!("gateway-{}", std::process::id()))
}

/// Default fan-out workers: one per available core.
pub fn default_fanout_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// See the module docs.
#[derive(clap::Args, Debug, Clone)]
pub struct GatewayConfig {
    /// This node's name in `hello` results and logs [default: $HOSTNAME, or gateway-<pid>].
    #[arg(long, env = "SWITCHBOARD_NODE_ID", default_value_t = default_node_id(), hide_default_value = true, help_heading = "Node")]
    pub node_id: String,
    #[command(flatten)]
    pub auth: AuthConfig,
    #[command(flatten)]
    pub access: AccessConfig,
    /// Serve /metrics (and /healthz, /readyz) on this address, apart from the public port,
    /// which never serves /metrics [default: no metrics endpoint].
    #[arg(
        long,
        env = "SWITCHBOARD_ADMIN_LISTEN",
        value_name = "ADDR",
        help_heading = "Node"
    )]
    pub admin_listen: Option<std::net::SocketAddr>,
    #[command(flatten)]
    pub tuning: Tuning,
}

/// What clients may do, and from where (`docs/security.md`).
#[derive(clap::Args, Debug, Clone, Default)]
#[command(next_help_heading = "Authorization")]
pub struct AccessConfig {
    /// Topic rule PATTERN=OPS (OPS: sub, pub, sub,pub or none; `{sub}` in PATTERN is the
    /// client's subject), e.g. 'chat:*=sub,pub' or 'user:{sub}:*=sub'. Repeatable; the
    /// variable takes rules separated by `;`. First matching rule wins; token grants add to it.
    /// Without any --allow or --allow-tools, a node with --allow-anonymous is open to all.
    #[arg(long = "allow", env = "SWITCHBOARD_ALLOW", value_delimiter = ';', value_name = "RULE", value_parser = TopicRule::parse)]
    pub allow: Vec<TopicRule>,
    /// Tools every client may list and call: a name or a pattern (`search.*`). Repeatable; the
    /// variable takes patterns separated by `,`.
    #[arg(long = "allow-tools", env = "SWITCHBOARD_ALLOW_TOOLS", value_delimiter = ',', value_name = "PATTERN", value_parser = ToolRule::parse)]
    pub allow_tools: Vec<ToolRule>,
    /// Browser origins that may open a socket (`https://app.example.com`, a pattern like
    /// `https://*.example.com`, or `*`). Repeatable; the variable takes origins separated by
    /// `,`. A page of the gateway's own origin is always allowed; requests without `Origin`
    /// (non-browser clients) are not affected [default: own origin only].
    #[arg(long = "allowed-origin", env = "SWITCHBOARD_ALLOWED_ORIGINS", value_delimiter = ',', value_name = "ORIGIN", value_parser = origin)]
    pub allowed_origins: Vec<String>,
    /// Names clients may reach `/ws` and `/mcp` under: the request's `Host` without its port
    /// (`rt.example.com`, a pattern like `*.example.com`, or `*` for any), against DNS
    /// rebinding; others get 403. Repeatable; the variable takes names separated by `,`
    /// [default: on a loopback --listen address, localhost, 127.0.0.1 and [::1]; else any].
    #[arg(long = "allowed-host", env = "SWITCHBOARD_ALLOWED_HOSTS", value_delimiter = ',', value_name = "HOST", value_parser = host_name)]
    pub allowed_hosts: Vec<String>,
    /// An OAuth authorization server whose tokens this node accepts (its issuer URL), for MCP
    /// clients that log in by themselves: named in `/.well-known/oauth-protected-resource`
    /// (RFC 9728), which a 401 from `/mcp` points at. Repeatable; the variable takes URLs
    /// separated by `,`. The tokens are still checked with --jwt-jwks-url (or the other keys).
    #[arg(long = "oauth-authorization-server", env = "SWITCHBOARD_OAUTH_AUTHORIZATION_SERVERS", value_delimiter = ',', value_name = "URL", value_parser = https_url)]
    pub oauth_authorization_servers: Vec<String>,
    /// This MCP endpoint's public URL as clients reach it (the OAuth resource, e.g.
    /// https://mcp.example.com/mcp) [default: from the request's Host, http, /mcp].
    #[arg(long = "oauth-resource", env = "SWITCHBOARD_OAUTH_RESOURCE", value_name = "URL", value_parser = https_url)]
    pub oauth_resource: Option<String>,
}

fn https_url(s: &str) -> Result<String, String> {
    let s = s.trim().trim_end_matches('/');
    if (s.starts_with("https://") || s.starts_with("http://")) && s.len() > "https://".len() {
        Ok(s.to_owned())
    } else {
        Err(format!("{s:?}: expected an http(s) URL"))
    }
}

fn host_name(s: &str) -> Result<String, String> {
    let s = s.trim().to_ascii_lowercase();
    // A port would never match (the port is not compared); an IPv6 address is bracketed.
    let ok = !s.is_empty()
        && !s.contains("://")
        && (s.starts_with('[') || !s.contains(':'))
        && s.bytes().all(|b| b.is_ascii_graphic() && b != b'/');
    if ok {
        Ok(s)
    } else {
        Err(format!(
            "{s:?}: a host is a name or address without scheme or port (rt.example.com, \
             *.example.com, [::1]), or *"
        ))
    }
}

fn origin(s: &str) -> Result<String, String> {
    let s = s.trim().trim_end_matches('/').to_ascii_lowercase();
    if s == "*" || s == "null" || s.starts_with("http://") || s.starts_with("https://") {
        Ok(s)
    } else {
        Err(format!(
            "{s:?}: an origin is scheme://host[:port] (http or https), null, or *"
        ))
    }
}

/// How a node behaves: every bound, timeout and history rule (what `gateway` and `dev` share).
#[derive(clap::Args, Debug, Clone)]
pub struct Tuning {
    /// Connections the kernel queues for accept (capped by net.core.somaxconn): a crowd
    /// reconnecting after a node died arrives at once.
    #[arg(
        long,
        env = "SWITCHBOARD_LISTEN_BACKLOG",
        default_value_t = 4096,
        value_name = "N",
        help_heading = "Sockets"
    )]
    pub listen_backlog: u32,
    /// Sockets this node holds; more are closed with 1013.
    #[arg(
        long,
        env = "SWITCHBOARD_MAX_CONNECTIONS",
        default_value = "100000",
        value_name = "N",
        help_heading = "Sockets"
    )]
    pub max_connections: usize,
    /// Close a socket that sends no `hello` within this long (4001).
    #[arg(long, env = "SWITCHBOARD_HELLO_TIMEOUT", default_value = "5s", value_name = "DURATION", value_parser = duration, help_heading = "Sockets")]
    pub hello_timeout: Duration,
    /// Largest message a client may send, in bytes (1009 over it).
    #[arg(
        long,
        env = "SWITCHBOARD_MAX_MESSAGE_BYTES",
        default_value = "65536",
        value_name = "BYTES",
        help_heading = "Sockets"
    )]
    pub max_message_bytes: usize,
    /// Frames queued per socket before it is closed as a slow consumer (4008).
    #[arg(
        long,
        env = "SWITCHBOARD_OUTBOUND_QUEUE",
        default_value = "1024",
        value_name = "N",
        help_heading = "Sockets"
    )]
    pub outbound_queue: usize,
    /// Bytes queued per socket before it is closed as a slow consumer (4008), whatever the
    /// number of frames: what one socket that does not read may hold of the node's memory.
    #[arg(
        long,
        env = "SWITCHBOARD_OUTBOUND_QUEUE_BYTES",
        default_value = "4194304",
        value_name = "BYTES",
        help_heading = "Sockets"
    )]
    pub outbound_queue_bytes: usize,
    /// Ping a quiet client this often; close it after three silent heartbeats (4002).
    #[arg(long, env = "SWITCHBOARD_HEARTBEAT", default_value = "25s", value_name = "DURATION", value_parser = duration, help_heading = "Sockets")]
    pub heartbeat: Duration,
    /// A write to a socket taking longer than this drops the connection.
    #[arg(long, env = "SWITCHBOARD_WRITE_TIMEOUT", default_value = "10s", value_name = "DURATION", value_parser = duration, help_heading = "Sockets")]
    pub write_timeout: Duration,
    /// After our close frame, wait this long for the client's.
    #[arg(long, env = "SWITCHBOARD_CLOSE_TIMEOUT", default_value = "2s", value_name = "DURATION", value_parser = duration, help_heading = "Sockets")]
    pub close_timeout: Duration,
    /// On shutdown, give connections this long to close.
    #[arg(long, env = "SWITCHBOARD_SHUTDOWN_GRACE", default_value = "10s", value_name = "DURATION", value_parser = duration, help_heading = "Sockets")]
    pub shutdown_grace: Duration,
    /// On shutdown, answer 503 on /readyz (and to new upgrades) this long before the first
    /// socket is asked to close, so load balancers that probe /readyz stop routing here first
    /// (e.g. a little more than the probe period times its failure threshold). Not part of
    /// --shutdown-grace.
    #[arg(long, env = "SWITCHBOARD_DRAIN_DELAY", default_value = "0s", value_name = "DURATION", value_parser = duration, help_heading = "Sockets")]
    pub drain_delay: Duration,
    /// On shutdown, ask sockets to close over this long, a batch at a time, so the nodes that
    /// take them over are not stampeded (at most the shutdown grace).
    #[arg(long, env = "SWITCHBOARD_DRAIN_SPREAD", default_value = "5s", value_name = "DURATION", value_parser = duration, help_heading = "Sockets")]
    pub drain_spread: Duration,

    /// The largest event a node relays, in bytes of its data: a bigger one from a backend is
    /// dropped (and counted), a client's `publish` of one is -32007.
    #[arg(
        long,
        env = "SWITCHBOARD_MAX_EVENT_BYTES",
        default_value = "1048576",
        value_name = "BYTES",
        help_heading = "Topics"
    )]
    pub max_event_bytes: usize,
    /// How deep a client's published `data` may nest arrays and objects (-32602 deeper).
    #[arg(
        long,
        env = "SWITCHBOARD_MAX_DATA_DEPTH",
        default_value = "64",
        value_name = "N",
        help_heading = "Topics"
    )]
    pub max_data_depth: usize,
    /// Topics one connection may subscribe to.
    #[arg(
        long,
        env = "SWITCHBOARD_MAX_SUBSCRIPTIONS",
        default_value = "1024",
        value_name = "N",
        help_heading = "Topics"
    )]
    pub max_subscriptions: usize,
    /// Fan-out workers (a topic always goes to the same one) [default: one per core].
    #[arg(long, env = "SWITCHBOARD_FANOUT_WORKERS", default_value_t = default_fanout_workers(), hide_default_value = true, value_name = "N", help_heading = "Topics")]
    pub fanout_workers: usize,
    /// Events queued per fan-out worker before new ones are dropped and counted.
    #[arg(
        long,
        env = "SWITCHBOARD_FANOUT_QUEUE",
        default_value = "65536",
        value_name = "N",
        help_heading = "Topics"
    )]
    pub fanout_queue: usize,
    /// Retry a failed backend (un)subscribe this often.
    #[arg(long, env = "SWITCHBOARD_SUBSCRIBE_RETRY", default_value = "1s", value_name = "DURATION", value_parser = duration, help_heading = "Topics")]
    pub subscribe_retry: Duration,
    /// Topics that keep history: PATTERN=MAXLEN[:TTL_MS] (`*` matches any run), e.g.
    /// chat:*=1000:3600000. Repeat the flag, or separate rules with commas. First match wins.
    #[arg(long, env = "SWITCHBOARD_HISTORY", value_delimiter = ',', value_name = "RULE", value_parser = HistoryRule::parse, help_heading = "Topics")]
    pub history: Vec<HistoryRule>,
    /// Events a `subscribe {since}` replays at most; further behind answers recovered: false.
    #[arg(
        long,
        env = "SWITCHBOARD_MAX_REPLAY",
        default_value = "10000",
        value_name = "N",
        help_heading = "Topics"
    )]
    pub max_replay: usize,
    /// Live events held for a subscriber while its replay is read; more closes it (4008).
    #[arg(
        long,
        env = "SWITCHBOARD_REPLAY_BUFFER",
        default_value = "10000",
        value_name = "N",
        help_heading = "Topics"
    )]
    pub replay_buffer: usize,
    /// History replays one node runs at once (subscribe with since, session resumes); more
    /// wait.
    #[arg(
        long,
        env = "SWITCHBOARD_MAX_CONCURRENT_REPLAYS",
        default_value = "256",
        value_name = "N",
        help_heading = "Topics"
    )]
    pub max_concurrent_replays: usize,
    /// History events one backend read carries at most (replays and recovery read in pages,
    /// so no single read holds Redis for long).
    #[arg(
        long,
        env = "SWITCHBOARD_REPLAY_PAGE_EVENTS",
        default_value = "256",
        value_name = "N",
        help_heading = "Topics"
    )]
    pub replay_page_events: usize,
    /// Event bytes one backend history read carries at most (it stops after the event that
    /// reaches this; one event is always read, however big).
    #[arg(
        long,
        env = "SWITCHBOARD_REPLAY_PAGE_BYTES",
        default_value = "262144",
        value_name = "BYTES",
        help_heading = "Topics"
    )]
    pub replay_page_bytes: usize,
    /// How long a history page read for one replay serves the node's other replays of the
    /// topic (a crowd reconnecting at once reads each page once per node).
    #[arg(long, env = "SWITCHBOARD_REPLAY_CACHE_TTL", default_value = "2s", value_name = "DURATION", value_parser = duration, help_heading = "Topics")]
    pub replay_cache_ttl: Duration,
    /// Bytes of history pages a node keeps for its replays, all topics together (the oldest
    /// go first).
    #[arg(
        long,
        env = "SWITCHBOARD_REPLAY_CACHE_BYTES",
        default_value = "67108864",
        value_name = "BYTES",
        help_heading = "Topics"
    )]
    pub replay_cache_bytes: usize,
    /// The longest a history replay may take, its wait for a replay slot included: a client
    /// that does not read its replay in time is closed (4008), a wait past it is -32006.
    #[arg(long, env = "SWITCHBOARD_REPLAY_TIMEOUT", default_value = "30s", value_name = "DURATION", value_parser = duration, help_heading = "Topics")]
    pub replay_timeout: Duration,

    /// How long a session outlives its socket: a client may resume it on any node.
    #[arg(long, env = "SWITCHBOARD_SESSION_TTL", default_value = "2m", value_name = "DURATION", value_parser = duration, help_heading = "Sessions")]
    pub session_ttl: Duration,
    /// How often a node saves its sessions' positions and extends their expiry.
    #[arg(long, env = "SWITCHBOARD_SESSION_REFRESH", default_value = "10s", value_name = "DURATION", value_parser = duration, help_heading = "Sessions")]
    pub session_refresh: Duration,

    /// Events an MCP SSE stream keeps in the backend, so that its client resumes it with
    /// `Last-Event-ID` on any node (a stream is one call's progress and reply).
    #[arg(
        long,
        env = "SWITCHBOARD_MCP_STREAM_EVENTS",
        default_value = "1000",
        value_name = "N",
        help_heading = "MCP"
    )]
    pub mcp_stream_events: u64,
    /// How long an MCP SSE stream's events are kept after its last one.
    #[arg(long, env = "SWITCHBOARD_MCP_STREAM_TTL", default_value = "5m", value_name = "DURATION", value_parser = duration, help_heading = "MCP")]
    pub mcp_stream_ttl: Duration,
    /// The `retry` an MCP SSE stream's first event carries: how long a client whose stream
    /// broke waits before it resumes.
    #[arg(long, env = "SWITCHBOARD_MCP_SSE_RETRY", default_value = "1s", value_name = "DURATION", value_parser = duration, help_heading = "MCP")]
    pub mcp_sse_retry: Duration,
    /// Close a session's call stream this long after it opened if the call has not answered
    /// (the client resumes it with `GET` and `Last-Event-ID`: SSE polling, which frees the
    /// connections of long calls). 0: streams stay open until the reply.
    #[arg(long, env = "SWITCHBOARD_MCP_SSE_POLL_AFTER", default_value = "0s", value_name = "DURATION", value_parser = duration, help_heading = "MCP")]
    pub mcp_sse_poll_after: Duration,
    /// A resumed MCP stream whose call's outcome was read from its task first waits this long
    /// for the stream's own reply (which follows every event before it) before sending the
    /// task's.
    #[arg(long, env = "SWITCHBOARD_MCP_RESUME_GRACE", default_value = "500ms", value_name = "DURATION", value_parser = duration, help_heading = "MCP")]
    pub mcp_resume_grace: Duration,

    /// Tool calls (and `tasks/result` waits) one connection may have in flight (over it:
    /// -32006).
    #[arg(
        long,
        env = "SWITCHBOARD_MAX_INFLIGHT_CALLS",
        default_value = "64",
        value_name = "N",
        help_heading = "Tool calls"
    )]
    pub max_inflight_calls: usize,
    /// Executions one identity may have started and not finished, queued or running, task
    /// mode included, on every node together (over it: -32006). Calls answered from the cache
    /// or joined to an identical one in flight do not count. 0: no cap.
    #[arg(
        long,
        env = "SWITCHBOARD_MAX_CALLS_IN_FLIGHT_PER_IDENTITY",
        default_value = "64",
        value_name = "N",
        help_heading = "Tool calls"
    )]
    pub max_calls_in_flight_per_identity: u64,
    /// Tasks one identity may have stored (every call stores one until its ttl), cluster-wide
    /// (over it: -32006). 0: no cap.
    #[arg(
        long,
        env = "SWITCHBOARD_MAX_TASKS_PER_IDENTITY",
        default_value = "100000",
        value_name = "N",
        help_heading = "Tool calls"
    )]
    pub max_tasks_per_identity: u64,
    /// Bytes of results one identity may have stored in its tasks, cluster-wide (over it, new
    /// calls get -32006 until some expire). 0: no cap.
    #[arg(
        long,
        env = "SWITCHBOARD_MAX_TASK_BYTES_PER_IDENTITY",
        default_value = "67108864",
        value_name = "BYTES",
        help_heading = "Tool calls"
    )]
    pub max_task_bytes_per_identity: u64,
    /// The largest `arguments` of a `tools/call`, as JSON (over it: -32007).
    #[arg(
        long,
        env = "SWITCHBOARD_MAX_CALL_ARGS_BYTES",
        default_value = "65536",
        value_name = "BYTES",
        help_heading = "Tool calls"
    )]
    pub max_call_args_bytes: usize,
    /// The largest result a worker stores for a call; a bigger one is replaced by an `isError`
    /// result that says so.
    #[arg(
        long,
        env = "SWITCHBOARD_MAX_RESULT_BYTES",
        default_value = "1048576",
        value_name = "BYTES",
        help_heading = "Tool calls"
    )]
    pub max_result_bytes: u64,
    /// How long a task is kept when the caller asks for no ttl.
    #[arg(long, env = "SWITCHBOARD_TASK_TTL", default_value = "1h", value_name = "DURATION", value_parser = duration, help_heading = "Tool calls")]
    pub task_ttl: Duration,
    /// The longest task ttl a caller may ask for (at least the task ttl).
    #[arg(long, env = "SWITCHBOARD_MAX_TASK_TTL", default_value = "24h", value_name = "DURATION", value_parser = duration, help_heading = "Tool calls")]
    pub max_task_ttl: Duration,
    /// How often the worker registry is read (tools/list, list_changed).
    #[arg(long, env = "SWITCHBOARD_REGISTRY_INTERVAL", default_value = "1s", value_name = "DURATION", value_parser = duration, help_heading = "Tool calls")]
    pub registry_interval: Duration,
    /// A waiting call re-reads its task this often without a signal.
    #[arg(long, env = "SWITCHBOARD_CALL_POLL", default_value = "500ms", value_name = "DURATION", value_parser = duration, help_heading = "Tool calls")]
    pub call_poll: Duration,
    /// How long past a tool's timeout a caller waits for the worker's answer (a timed-out
    /// call's `isError` result) before answering -32005 itself.
    #[arg(long, env = "SWITCHBOARD_DEADLINE_GRACE", default_value = "1s", value_name = "DURATION", value_parser = duration, help_heading = "Tool calls")]
    pub deadline_grace: Duration,
    /// Tools one socket may offer at once (`tools/register`; over it: -32006).
    #[arg(
        long,
        env = "SWITCHBOARD_MAX_CLIENT_TOOLS",
        default_value = "32",
        value_name = "N",
        help_heading = "Tool calls"
    )]
    pub max_client_tools: usize,
    /// Calls of its offered tools one socket may be asked at once and not have answered; more
    /// wait in their queue (in Redis) until it answers one.
    #[arg(
        long,
        env = "SWITCHBOARD_MAX_CLIENT_TOOL_CALLS",
        default_value = "16",
        value_name = "N",
        help_heading = "Tool calls"
    )]
    pub max_client_tool_calls: usize,
    /// How long a call of a tool a client offers may take: the default of its `timeoutMs`, and
    /// the most it may ask for. Unanswered by then, the call ends with an `isError` result.
    #[arg(long, env = "SWITCHBOARD_CLIENT_TOOL_TIMEOUT", default_value = "30s", value_name = "DURATION", value_parser = duration, help_heading = "Tool calls")]
    pub client_tool_timeout: Duration,

    /// Requests (and notifications) one connection may send per second, sustained; over it:
    /// -32003 with `retryAfterMs`. 0: no limit.
    #[arg(
        long,
        env = "SWITCHBOARD_RATE_REQUESTS",
        default_value = "1000",
        value_name = "PER_SECOND",
        help_heading = "Rate limits"
    )]
    pub rate_requests: u32,
    /// Requests one connection may send at once above the sustained rate.
    #[arg(
        long,
        env = "SWITCHBOARD_RATE_REQUESTS_BURST",
        default_value = "2000",
        value_name = "N",
        help_heading = "Rate limits"
    )]
    pub rate_requests_burst: u32,
    /// Refusals in a row (-32003) after which a connection that keeps sending is closed (4029).
    #[arg(
        long,
        env = "SWITCHBOARD_RATE_CLOSE_AFTER",
        default_value = "100",
        value_name = "N",
        help_heading = "Rate limits"
    )]
    pub rate_close_after: u32,
    /// Publishes one identity (a token's subject) may make per second, sustained, over all its
    /// sockets on every node; over it: -32003 with `retryAfterMs`. The default is one
    /// connection's message budget: one socket is not held back by it, many sockets of one
    /// identity are held to it. Anonymous clients have no such budget (the per-connection and
    /// per-address limits hold them). 0: no limit.
    #[arg(
        long,
        env = "SWITCHBOARD_RATE_PUBLISHES",
        default_value = "1000",
        value_name = "PER_SECOND",
        help_heading = "Rate limits"
    )]
    pub rate_publishes: u32,
    /// Publishes one identity may make at once above the sustained rate.
    #[arg(
        long,
        env = "SWITCHBOARD_RATE_PUBLISHES_BURST",
        default_value = "2000",
        value_name = "N",
        help_heading = "Rate limits"
    )]
    pub rate_publishes_burst: u32,
    /// Tool calls one identity may make per second, sustained, over all its sockets on every
    /// node; over it: -32003 with `retryAfterMs`. 0: no limit.
    #[arg(
        long,
        env = "SWITCHBOARD_RATE_CALLS",
        default_value = "20",
        value_name = "PER_SECOND",
        help_heading = "Rate limits"
    )]
    pub rate_calls: u32,
    /// Tool calls one identity may make at once above the sustained rate.
    #[arg(
        long,
        env = "SWITCHBOARD_RATE_CALLS_BURST",
        default_value = "50",
        value_name = "N",
        help_heading = "Rate limits"
    )]
    pub rate_calls_burst: u32,
    /// Tokens of an identity's budget a node takes from Redis at once and spends locally
    /// (capped at the burst): more means fewer round trips and a looser bound, since each node
    /// may admit up to one lease past the budget [default: a twentieth of the burst, at least
    /// 1].
    #[arg(
        long,
        env = "SWITCHBOARD_RATE_LEASE",
        value_name = "N",
        help_heading = "Rate limits"
    )]
    pub rate_lease: Option<u32>,
    /// New connections one source address may open per second, sustained; over it: HTTP 429
    /// with Retry-After. Behind a proxy, see --trusted-proxy. 0: no limit.
    #[arg(
        long,
        env = "SWITCHBOARD_RATE_CONNECTIONS",
        default_value = "100",
        value_name = "PER_SECOND",
        help_heading = "Rate limits"
    )]
    pub rate_connections: u32,
    /// New connections one source address may open at once above the sustained rate.
    #[arg(
        long,
        env = "SWITCHBOARD_RATE_CONNECTIONS_BURST",
        default_value = "500",
        value_name = "N",
        help_heading = "Rate limits"
    )]
    pub rate_connections_burst: u32,
    /// Connections one identity may hold on every node together (over it: -32006 to its
    /// `hello`, then close 1013). Anonymous connections count by address only. 0: no cap.
    #[arg(
        long,
        env = "SWITCHBOARD_MAX_CONNECTIONS_PER_IDENTITY",
        default_value = "100",
        value_name = "N",
        help_heading = "Rate limits"
    )]
    pub max_connections_per_identity: u64,
    /// Connections one source address may hold on every node together (over it: HTTP 429
    /// before the upgrade). 0: no cap.
    #[arg(
        long,
        env = "SWITCHBOARD_MAX_CONNECTIONS_PER_ADDRESS",
        default_value = "1000",
        value_name = "N",
        help_heading = "Rate limits"
    )]
    pub max_connections_per_address: u64,
    /// How long a connection counts toward those caps unless its node renews it (a node
    /// renews every third of it): how long the connections of a node that died still count.
    #[arg(long, env = "SWITCHBOARD_CONNECTION_LEASE", default_value = "60s", value_name = "DURATION", value_parser = duration, help_heading = "Rate limits")]
    pub connection_lease: Duration,
    /// A proxy (an address, or a network as ADDR/PREFIX) whose X-Forwarded-For names the
    /// client: the source address is then the last one there that is not a trusted proxy.
    /// Repeatable; the variable takes them separated by `,`.
    #[arg(long = "trusted-proxy", env = "SWITCHBOARD_TRUSTED_PROXIES", value_delimiter = ',', value_name = "NET", value_parser = Network::parse, help_heading = "Rate limits")]
    pub trusted_proxies: Vec<Network>,

    /// Ping the backend this often for /readyz.
    #[arg(long, env = "SWITCHBOARD_READINESS_INTERVAL", default_value = "1s", value_name = "DURATION", value_parser = duration, help_heading = "Backend")]
    pub readiness_interval: Duration,
}

/// An address or a network (`10.0.0.0/8`, `fd00::/8`, `192.0.2.7`), for `--trusted-proxy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    addr: std::net::IpAddr,
    prefix: u8,
}

impl Network {
    pub fn parse(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: std::net::IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("{s:?}: expected an IP address or ADDR/PREFIX"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: the prefix must be 0 to {max}"))?,
        };
        Ok(Network { addr, prefix })
    }

    /// Whether `ip` is in this network.
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr::{V4, V6};
        let (net, ip, bits): (u128, u128, u32) = match (self.addr, ip.to_canonical()) {
            (V4(n), V4(i)) => (u32::from(n).into(), u32::from(i).into(), 32),
            (V6(n), V6(i)) => (u128::from(n), u128::from(i), 128),
            _ => return false,
        };
        let shift = bits - u32::from(self.prefix);
        shift >= bits || (net >> shift) == (ip >> shift)
    }
}

/// Settings that cannot work together, named by their flags.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "no way to authenticate clients: set a key source (--jwt-secret, --jwt-public-key or --jwt-jwks-url; SWITCHBOARD_JWT_SECRET, SWITCHBOARD_JWT_PUBLIC_KEY, SWITCHBOARD_JWT_JWKS_URL) or --allow-anonymous (SWITCHBOARD_ALLOW_ANONYMOUS)"
    )]
    NoAuth,
    #[error("--{key} must be {what}")]
    Invalid {
        key: &'static str,
        what: &'static str,
    },
}

impl GatewayConfig {
    /// A configuration from `args` (flags only), every other setting at its default, no
    /// `SWITCHBOARD_*` variable read.
    pub fn from_args(args: &[&str]) -> Result<Self, clap::Error> {
        settings::from_args_without_env(args)
    }

    /// Every default, anonymous clients allowed, no rule (so open to all), every origin (for
    /// `switchboard dev` and tests).
    pub fn dev(node_id: &str) -> Self {
        GatewayConfig {
            node_id: node_id.to_owned(),
            auth: AuthConfig {
                allow_anonymous: true,
                ..AuthConfig::default()
            },
            access: AccessConfig {
                allowed_origins: vec!["*".into()],
                ..AccessConfig::default()
            },
            admin_listen: None,
            tuning: settings::defaults(),
        }
    }

    /// The access policy: open when anonymous clients are allowed and no rule is set (say so
    /// at start), default deny otherwise.
    pub fn policy(&self) -> Policy {
        let a = &self.access;
        if self.auth.allow_anonymous && a.allow.is_empty() && a.allow_tools.is_empty() {
            Policy::open()
        } else {
            Policy::rules(a.allow.clone(), a.allow_tools.clone())
        }
    }

    /// Checks every setting; the error names the flag to fix.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.node_id.is_empty() {
            return Err(invalid("node-id", "non-empty"));
        }
        self.auth.validate()?;
        self.tuning.validate()
    }
}

fn invalid(key: &'static str, what: &'static str) -> ConfigError {
    ConfigError::Invalid { key, what }
}

impl Tuning {
    /// The history rule of MCP SSE streams' topics (ahead of the operator's rules).
    pub(crate) fn mcp_stream_rule(&self) -> HistoryRule {
        HistoryRule {
            pattern: format!("{MCP_STREAM_PREFIX}*"),
            max_len: self.mcp_stream_events,
            ttl: self.mcp_stream_ttl,
        }
    }

    /// What one history read may carry.
    pub(crate) fn replay_page(&self) -> switchboard_core::history::PageBounds {
        switchboard_core::history::PageBounds {
            events: self.replay_page_events,
            bytes: self.replay_page_bytes,
        }
    }

    /// What each setting may be: durations that pace or bound something are greater than
    /// zero, queues and limits hold at least one, and the rest as written below.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let t = self;
        let positive = [
            ("hello-timeout", t.hello_timeout),
            ("heartbeat", t.heartbeat),
            ("write-timeout", t.write_timeout),
            ("readiness-interval", t.readiness_interval),
            ("subscribe-retry", t.subscribe_retry),
            ("task-ttl", t.task_ttl),
            ("registry-interval", t.registry_interval),
            ("call-poll", t.call_poll),
            ("session-ttl", t.session_ttl),
            ("session-refresh", t.session_refresh),
            ("mcp-stream-ttl", t.mcp_stream_ttl),
            ("replay-timeout", t.replay_timeout),
            ("replay-cache-ttl", t.replay_cache_ttl),
            ("connection-lease", t.connection_lease),
            ("client-tool-timeout", t.client_tool_timeout),
        ];
        if let Some((key, _)) = positive.iter().find(|(_, d)| d.is_zero()) {
            return Err(invalid(key, "greater than zero"));
        }
        let at_least_one = [
            ("max-connections", t.max_connections),
            ("outbound-queue", t.outbound_queue),
            ("max-event-bytes", t.max_event_bytes),
            ("mcp-stream-events", t.mcp_stream_events as usize),
            ("replay-page-events", t.replay_page_events),
            ("replay-page-bytes", t.replay_page_bytes),
            ("max-call-args-bytes", t.max_call_args_bytes),
            ("max-data-depth", t.max_data_depth),
            ("max-subscriptions", t.max_subscriptions),
            ("fanout-workers", t.fanout_workers),
            ("fanout-queue", t.fanout_queue),
            ("max-replay", t.max_replay),
            ("replay-buffer", t.replay_buffer),
            ("max-concurrent-replays", t.max_concurrent_replays),
            ("rate-close-after", t.rate_close_after as usize),
            ("max-inflight-calls", t.max_inflight_calls),
            ("max-client-tool-calls", t.max_client_tool_calls),
        ];
        if let Some((key, _)) = at_least_one.iter().find(|(_, n)| *n == 0) {
            return Err(invalid(key, "at least 1"));
        }
        if t.rate_lease == Some(0) {
            return Err(invalid("rate-lease", "at least 1"));
        }
        let bursts = [
            (
                "rate-publishes-burst",
                t.rate_publishes,
                t.rate_publishes_burst,
            ),
            ("rate-calls-burst", t.rate_calls, t.rate_calls_burst),
        ];
        if let Some((key, _, _)) = bursts
            .iter()
            .find(|(_, rate, burst)| *rate > 0 && *burst == 0)
        {
            return Err(invalid(key, "at least 1 (or its rate 0, for no limit)"));
        }
        if t.max_message_bytes < 256 {
            return Err(invalid("max-message-bytes", "at least 256"));
        }
        if t.outbound_queue_bytes < 65536 {
            return Err(invalid("outbound-queue-bytes", "at least 65536"));
        }
        if t.max_task_ttl < t.task_ttl {
            return Err(invalid("max-task-ttl", "at least --task-ttl"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_config_is_valid_and_has_the_documented_defaults() {
        let c = GatewayConfig::dev("n1");
        c.validate().unwrap();
        assert_eq!(c.node_id, "n1");
        let t = &c.tuning;
        assert_eq!(t.hello_timeout, Duration::from_secs(5));
        assert_eq!(t.heartbeat, Duration::from_secs(25));
        assert_eq!(t.session_ttl, Duration::from_secs(120));
        assert_eq!(t.call_poll, Duration::from_millis(500));
        assert_eq!(t.max_message_bytes, 64 * 1024);
        assert_eq!(t.outbound_queue, 1024);
        assert_eq!(t.max_connections, 100_000);
        assert_eq!(t.listen_backlog, 4096);
        assert!(t.history.is_empty());
        assert_eq!((t.rate_publishes, t.rate_publishes_burst), (1000, 2000));
        assert_eq!(
            (t.rate_calls, t.rate_calls_burst, t.rate_lease),
            (20, 50, None)
        );
        // Built in code, or parsed: the same defaults.
        let parsed = GatewayConfig::from_args(&["--allow-anonymous"]).unwrap();
        assert_eq!(parsed.tuning.task_ttl, t.task_ttl);
    }

    #[test]
    fn refuses_to_run_without_auth() {
        let mut c = GatewayConfig::dev("n1");
        c.auth.allow_anonymous = false;
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("--jwt-secret"), "{err}");
        c.auth.jwt_secrets = vec!["s".into()];
        c.validate().unwrap();
        // Any key source will do.
        c.auth.jwt_secrets.clear();
        c.auth.jwt_public_keys = vec!["/keys/idp.pem".into()];
        c.validate().unwrap();
        c.auth.jwt_public_keys.clear();
        c.auth.jwt_jwks_url = Some("https://idp.example/.well-known/jwks.json".into());
        c.validate().unwrap();
    }

    #[test]
    fn key_flags_become_key_settings() {
        let c = GatewayConfig::from_args(&[
            "--jwt-secret",
            "old",
            "--jwt-secret",
            "kid:k2:new",
            "--jwt-public-key",
            "/keys/a.pem",
            "--jwt-public-key",
            "kid:b:/keys/b.pem",
            "--jwt-jwks-url",
            "https://idp.example/jwks",
            "--jwt-audience",
            "switchboard",
            "--jwt-issuer",
            "https://idp.example/",
            "--jwt-jwks-min-refresh",
            "1s",
        ])
        .unwrap();
        c.validate().unwrap();
        assert!(c.auth.has_keys() && !c.auth.allow_anonymous);
        let k = c.auth.key_settings();
        assert_eq!(k.secrets, ["old", "kid:k2:new"]);
        // A comma is part of a secret, never a split into weaker ones; lines separate.
        let commas = GatewayConfig::from_args(&["--jwt-secret", "long-secret,x"]).unwrap();
        assert_eq!(commas.auth.jwt_secrets, ["long-secret,x"]);
        let lines = GatewayConfig::from_args(&["--jwt-secret", "new\nold"]).unwrap();
        assert_eq!(lines.auth.jwt_secrets, ["new", "old"]);
        assert_eq!(k.public_keys.len(), 2);
        assert_eq!(k.jwks_url.as_deref(), Some("https://idp.example/jwks"));
        assert_eq!((k.audience.len(), k.issuer.len()), (1, 1));
        assert_eq!(k.jwks_min_refresh, Duration::from_secs(1));
        // The flags' defaults are core's, parsed or built in code.
        for auth in [&c.auth, &AuthConfig::default()] {
            assert_eq!(auth.jwt_jwks_refresh, DEFAULT_JWKS_REFRESH);
            assert_eq!(auth.jwt_jwks_timeout, DEFAULT_JWKS_TIMEOUT);
        }
        assert_eq!(
            AuthConfig::default().jwt_jwks_min_refresh,
            DEFAULT_JWKS_MIN_REFRESH
        );
        // No secret in a Debug.
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("old") && !shown.contains("k2:new"),
            "{shown}"
        );
        assert!(!GatewayConfig::dev("n").auth.has_keys());
    }

    #[test]
    fn names_the_bad_key() {
        let refused = |args: &[&str], key: &str| {
            let mut all = vec!["--allow-anonymous"];
            all.extend_from_slice(args);
            let err = match GatewayConfig::from_args(&all) {
                Err(e) => e.to_string(),
                Ok(c) => c.validate().unwrap_err().to_string(),
            };
            assert!(err.contains(key), "{args:?}: {err}");
        };
        refused(&["--outbound-queue", "0"], "--outbound-queue");
        refused(&["--heartbeat", "0s"], "--heartbeat");
        refused(&["--heartbeat", "5000"], "--heartbeat");
        refused(&["--max-message-bytes", "10"], "--max-message-bytes");
        refused(
            &["--outbound-queue-bytes", "1000"],
            "--outbound-queue-bytes",
        );
        refused(&["--max-event-bytes", "0"], "--max-event-bytes");
        refused(&["--max-data-depth", "0"], "--max-data-depth");
        refused(&["--jwt-secret", ""], "--jwt-secret");
        refused(&["--jwt-secret", "kid:k1"], "--jwt-secret");
        refused(&["--jwt-public-key", "kid::/a.pem"], "--jwt-public-key");
        refused(&["--jwt-jwks-url", "ftp://idp/jwks"], "--jwt-jwks-url");
        refused(&["--jwt-audience", ""], "--jwt-audience");
        refused(&["--jwt-issuer", ""], "--jwt-issuer");
        refused(&["--jwt-jwks-refresh", "0s"], "--jwt-jwks-refresh");
        refused(&["--jwt-jwks-min-refresh", "0s"], "--jwt-jwks-min-refresh");
        refused(&["--jwt-jwks-timeout", "5"], "--jwt-jwks-timeout");
        refused(&["--history", "chat:*"], "--history");
        refused(&["--node-id", ""], "--node-id");
        refused(&["--rate-lease", "0"], "--rate-lease");
        refused(&["--rate-publishes-burst", "0"], "--rate-publishes-burst");
        refused(&["--rate-calls-burst", "0"], "--rate-calls-burst");
        GatewayConfig::from_args(&[
            "--allow-anonymous",
            "--rate-calls",
            "0",
            "--rate-calls-burst",
            "0",
        ])
        .unwrap()
        .validate()
        .unwrap();
        refused(
            &["--task-ttl", "2h", "--max-task-ttl", "1h"],
            "--max-task-ttl",
        );
        // Built in code, a bad value is refused all the same.
        let mut c = GatewayConfig::dev("n1");
        c.tuning.readiness_interval = Duration::ZERO;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("--readiness-interval")
        );
    }

    #[test]
    fn allowed_hosts_parse() {
        let c = GatewayConfig::from_args(&[
            "--allow-anonymous",
            "--allowed-host",
            "RT.example.com,*.example.org",
            "--allowed-host",
            "[::1]",
        ])
        .unwrap();
        assert_eq!(
            c.access.allowed_hosts,
            ["rt.example.com", "*.example.org", "[::1]"]
        );
        for bad in ["rt.example.com:8080", "https://rt.example.com", "a/b", ""] {
            assert!(
                GatewayConfig::from_args(&["--allow-anonymous", "--allowed-host", bad]).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn trusted_proxy_networks() {
        let n = Network::parse("10.0.0.0/8").unwrap();
        assert!(n.contains("10.1.2.3".parse().unwrap()));
        assert!(!n.contains("11.1.2.3".parse().unwrap()));
        assert!(n.contains("::ffff:10.0.0.1".parse().unwrap()));
        let one = Network::parse("192.0.2.7").unwrap();
        assert!(one.contains("192.0.2.7".parse().unwrap()));
        assert!(!one.contains("192.0.2.8".parse().unwrap()));
        assert!(
            Network::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        assert!(
            Network::parse("fd00::/8")
                .unwrap()
                .contains("fd12::1".parse().unwrap())
        );
        assert!(
            !Network::parse("fd00::/8")
                .unwrap()
                .contains("10.0.0.1".parse().unwrap())
        );
        for bad in ["10.0.0.0/33", "nope", "10.0.0.0/x", "::/129"] {
            assert!(Network::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations_and_lists_parse() {
        let c = GatewayConfig::from_args(&[
            "--heartbeat",
            "250ms",
            "--history",
            "chat:*=10,news:*=5:60000",
        ])
        .unwrap();
        assert_eq!(c.tuning.heartbeat, Duration::from_millis(250));
        assert_eq!(c.tuning.history.len(), 2);
    }
}
