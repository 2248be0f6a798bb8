//! Opening a connection: `hello` (Switchboard clients; opens or resumes a session), `refresh`
//! (a new token in band),
//! `initialize` and `notifications/initialized` (MCP clients), `server/discover` (MCP's
//! stateless description of the server) and `ping`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::topics::SubscribeResult;
use super::{Empty, Ignored, Method};

/// MCP protocol versions the gateway speaks, newest first. `initialize` answers the client's
/// when it is one of these, else the first. What newer revisions added (tool `title`,
/// `annotations` and `execution`, `structuredContent`, tasks) are fields and capabilities an
/// older client does not read: every result keeps the shape its revision requires.
pub const MCP_VERSIONS: [&str; 4] = ["2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05"];

/// `hello`: authenticate the connection and open (or resume) its session.
#[derive(Debug)]
pub struct Hello;

impl Method for Hello {
    const NAME: &'static str = "hello";
    type Params<'a> = HelloParams;
    type Result = HelloResult;
}

/// `hello` params.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HelloParams {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// A session to resume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// On a resume: the id of the last event the client has, per topic. These win over the
    /// positions the session stored, so a client that tracks ids resumes exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub positions: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<Value>,
}

/// The limits a gateway announces in its `hello` result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    pub max_message_bytes: usize,
    pub max_subscriptions: usize,
    pub outbound_queue: usize,
    /// Bytes queued for the socket at most (4008 past it, as past `outbound_queue` frames).
    #[serde(default)]
    pub outbound_queue_bytes: usize,
    /// The largest event `data` the gateway relays, in bytes (`publish` over it: -32007).
    #[serde(default)]
    pub max_event_bytes: usize,
    /// How deep a published `data` may nest arrays and objects (-32602 deeper).
    #[serde(default)]
    pub max_data_depth: usize,
    /// Messages a connection may send per second, sustained (0: no limit; -32003 over it).
    #[serde(default)]
    pub rate_requests: u32,
    /// Messages a connection may send at once above the sustained rate.
    #[serde(default)]
    pub rate_requests_burst: u32,
    /// `publish`es one identity may make per second over all its sockets on every node (0: no
    /// limit; -32003 over it). Absent from gateways that predate it.
    #[serde(default)]
    pub rate_publishes: u32,
    /// `publish`es one identity may make at once above the sustained rate.
    #[serde(default)]
    pub rate_publishes_burst: u32,
    /// `tools/call`s one identity may make per second over all its sockets on every node (0:
    /// no limit; -32003 over it).
    #[serde(default)]
    pub rate_calls: u32,
    /// `tools/call`s one identity may make at once above the sustained rate.
    #[serde(default)]
    pub rate_calls_burst: u32,
    /// Executions one identity may have started and not finished, cluster-wide (0: no cap;
    /// -32006 over it).
    #[serde(default)]
    pub max_calls_in_flight_per_identity: u64,
    /// Tasks one identity may have stored, cluster-wide (0: no cap; -32006 over it).
    #[serde(default)]
    pub max_tasks_per_identity: u64,
    /// Result bytes one identity may have stored in its tasks, cluster-wide (0: no cap).
    #[serde(default)]
    pub max_task_bytes_per_identity: u64,
    /// The longest task ttl, in milliseconds (a longer one asked for is cut to it).
    #[serde(default)]
    pub max_task_ttl_ms: u64,
    /// The largest `tools/call` `arguments`, as JSON (-32007 over it).
    #[serde(default)]
    pub max_call_args_bytes: usize,
    /// The largest result stored for a call (a bigger one comes back as an `isError` result).
    #[serde(default)]
    pub max_result_bytes: u64,
    /// Connections one identity may hold on every node together (0: no cap).
    #[serde(default)]
    pub max_connections_per_identity: u64,
    /// Connections one source address may hold on every node together (0: no cap).
    #[serde(default)]
    pub max_connections_per_address: u64,
}

/// `hello` result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HelloResult {
    pub session: String,
    pub resumed: bool,
    pub node: String,
    pub heartbeat_ms: u64,
    pub limits: Limits,
    /// On a resume: the restored subscriptions, each with its replay's outcome (as a
    /// `subscribe` with `since` would answer). Their replayed events were sent before this reply.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subscriptions: Vec<SubscribeResult>,
}

/// `refresh`: a new token for the same subject, replacing the connection's grants and expiry
/// without a reconnect.
#[derive(Debug)]
pub struct Refresh;

impl Method for Refresh {
    const NAME: &'static str = "refresh";
    type Params<'a> = RefreshParams;
    type Result = RefreshResult;
}

/// `refresh` params.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RefreshParams {
    pub token: String,
}

/// `refresh` result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RefreshResult {
    /// Unix seconds at which the new token expires (none: it does not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// Subscriptions the new token no longer allows: the connection left them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revoked: Vec<String>,
}

/// MCP `initialize`: the MCP client's `hello`.
#[derive(Debug)]
pub struct Initialize;

impl Method for Initialize {
    const NAME: &'static str = "initialize";
    type Params<'a> = InitializeParams;
    type Result = InitializeResult;
}

/// `initialize` params: only the version is read (`capabilities`, `clientInfo`, `_meta` and
/// whatever newer revisions add are accepted and ignored).
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InitializeParams {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol_version: Option<String>,
}

/// Who answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerInfo {
    pub name: String,
    pub version: String,
}

/// `initialize` result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InitializeResult {
    pub protocol_version: String,
    pub capabilities: Value,
    pub server_info: ServerInfo,
}

/// MCP `notifications/initialized` (a client notification; accepted, nothing to do).
#[derive(Debug)]
pub struct Initialized;

impl Method for Initialized {
    const NAME: &'static str = "notifications/initialized";
    type Params<'a> = Ignored;
    type Result = ();
}

/// MCP `server/discover`: what the server speaks, without a session.
#[derive(Debug)]
pub struct Discover;

impl Method for Discover {
    const NAME: &'static str = "server/discover";
    type Params<'a> = Ignored;
    type Result = DiscoverResult;
}

/// `server/discover` result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DiscoverResult {
    pub supported_versions: Vec<String>,
    pub capabilities: Value,
    pub server_info: ServerInfo,
}

/// `ping`: params ignored, result `{}`.
#[derive(Debug)]
pub struct Ping;

impl Method for Ping {
    const NAME: &'static str = "ping";
    type Params<'a> = Ignored;
    type Result = Empty;
}
