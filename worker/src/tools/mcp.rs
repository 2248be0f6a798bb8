//! Existing MCP servers hosted as tools (`[[mcp]]` in the tools file, docs/tools.md "MCP
//! servers"): the worker is an MCP client (the official Rust SDK, `rmcp`) of a stdio server it
//! launches or of a remote Streamable HTTP server, and hosts each of the server's tools as a
//! tool of its own named `<prefix>_<tool>`. The tools run through the same queues, cache,
//! coalescing and tasks as every tool; only the call itself goes to the server.
//!
//! - **connect**: a stdio server is started in its own process group with a clean environment
//!   (like a command tool); its stderr goes to the worker's log. Both transports try the
//!   2026-07-28 `server/discover` lifecycle first and fall back to `initialize` (either era).
//! - **list**: `tools/list` (all pages); each tool is hosted with its name, title, description,
//!   input schema and annotations, and the server's version as the tool's version (a new server
//!   version never reuses cached results). `notifications/tools/list_changed` (or, on a
//!   2026-07-28 connection, a `subscriptions/listen` stream for it) relists, and the worker's
//!   tools are replaced (the gateway's `tools/list` follows at once).
//! - **call**: `tools/call` with the arguments; the server's progress notifications are the
//!   call's progress; a call that ends early (cancelled, timed out) sends the server
//!   `notifications/cancelled`. The server's `CallToolResult` is the result (`isError`,
//!   `structuredContent` included); a JSON-RPC error is an `isError` result.
//! - **supervise**: a server that exits (or a remote one that drops) ends its in-flight calls
//!   with an `isError` result saying so, and is started (reconnected) again after a backoff
//!   that doubles from `restart_backoff_min_ms` up to `restart_backoff_max_ms` (back to the
//!   minimum once a connection lasted longer than the maximum). Its tools stay hosted
//!   meanwhile: calls wait for the server, within their deadline.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rmcp::model::{
    CallToolRequest, CallToolRequestParams, CancelledNotification, CancelledNotificationParam,
    ClientCapabilities, ClientConfig, ClientNotification, ClientRequest, Implementation,
    ProgressNotificationParam, ProgressToken, ProtocolVersion, RequestId, ServerResult,
    SubscriptionFilter,
};
use rmcp::service::{
    ClientLifecycleMode, ClientServiceExt, NotificationContext, Peer, PeerRequestOptions,
    RoleClient, ServiceError,
};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use serde::Deserialize;
use serde_json::Value;
use switchboard_core::tools::{CachePolicy, ToolSpec};
use switchboard_protocol::methods::tools::CallToolResult;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::{CallContext, NewTool, PASSED_ENV, ProgressReporter, Tool, Toolbox, ToolboxError};

/// Default timeout of a hosted MCP tool's call.
pub const DEFAULT_TIMEOUT_MS: u64 = 30_000;
/// Default calls of one hosted MCP tool running at once on one worker.
pub const DEFAULT_CONCURRENCY: usize = 4;
/// Default first pause before restarting (reconnecting) a server.
pub const DEFAULT_RESTART_BACKOFF_MIN_MS: u64 = 250;
/// Default longest pause before restarting (reconnecting) a server.
pub const DEFAULT_RESTART_BACKOFF_MAX_MS: u64 = 30_000;
/// Default time a server gets to connect (start, handshake) and to answer `tools/list`.
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 30_000;
/// Hosted tool names join the prefix and the server's tool name with this.
pub const SEPARATOR: char = '_';
/// The longest stderr line of a stdio server logged at once; longer ones are logged in pieces.
pub const MAX_STDERR_LINE: usize = 8 * 1024;
/// HTTP headers the Streamable HTTP transport sets itself; a `headers` table may not.
const RESERVED_HEADERS: [&str; 4] = [
    "accept",
    "mcp-session-id",
    "mcp-protocol-version",
    "last-event-id",
];

/// One `[[mcp]]` table of a tools file, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct McpServerDef {
    name: String,
    #[serde(default)]
    command: Option<Vec<String>>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    cwd: Option<String>,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default = "default_timeout")]
    timeout_ms: u64,
    #[serde(default = "default_concurrency")]
    concurrency: usize,
    #[serde(default)]
    cache: CachePolicy,
    #[serde(default = "default_backoff_min")]
    restart_backoff_min_ms: u64,
    #[serde(default = "default_backoff_max")]
    restart_backoff_max_ms: u64,
    #[serde(default = "default_connect_timeout")]
    connect_timeout_ms: u64,
}

fn default_timeout() -> u64 {
    DEFAULT_TIMEOUT_MS
}
fn default_concurrency() -> usize {
    DEFAULT_CONCURRENCY
}
fn default_backoff_min() -> u64 {
    DEFAULT_RESTART_BACKOFF_MIN_MS
}
fn default_backoff_max() -> u64 {
    DEFAULT_RESTART_BACKOFF_MAX_MS
}
fn default_connect_timeout() -> u64 {
    DEFAULT_CONNECT_TIMEOUT_MS
}

/// How the worker reaches a server.
#[derive(Debug, Clone)]
pub enum McpTransport {
    /// A child process speaking MCP on stdin/stdout.
    Stdio {
        argv: Vec<String>,
        env: BTreeMap<String, String>,
        cwd: Option<String>,
    },
    /// A remote Streamable HTTP endpoint.
    Http {
        url: String,
        headers: HashMap<http::HeaderName, http::HeaderValue>,
    },
}

/// One MCP server to host, checked.
#[derive(Debug, Clone)]
pub struct McpServer {
    /// The prefix of its tools' names (`<prefix>_<tool>`).
    pub prefix: String,
    pub transport: McpTransport,
    pub timeout_ms: u64,
    pub concurrency: usize,
    pub cache: CachePolicy,
    pub restart_backoff_min: Duration,
    pub restart_backoff_max: Duration,
    pub connect_timeout: Duration,
}

impl McpServerDef {
    /// Checks the table; the error names the server and what to fix.
    pub(crate) fn check(self) -> Result<McpServer, ToolboxError> {
        let name = self.name.clone();
        let invalid = |why: String| ToolboxError::Invalid {
            name: format!("mcp {name}"),
            why,
        };
        switchboard_core::tools::validate_tool_name(&self.name)
            .map_err(|e| invalid(format!("name (the tools' prefix): {e}")))?;
        let transport = match (self.command, self.url) {
            (Some(argv), None) => {
                if argv.is_empty() {
                    return Err(invalid("command is empty".into()));
                }
                if !self.headers.is_empty() {
                    return Err(invalid("headers are for url servers".into()));
                }
                McpTransport::Stdio {
                    argv,
                    env: self.env,
                    cwd: self.cwd,
                }
            }
            (None, Some(url)) => {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(invalid(format!("url {url:?} is not http:// or https://")));
                }
                if !self.env.is_empty() || self.cwd.is_some() {
                    return Err(invalid("env and cwd are for command servers".into()));
                }
                let mut headers = HashMap::new();
                for (k, v) in self.headers {
                    let key = http::HeaderName::try_from(k.as_str())
                        .map_err(|e| invalid(format!("header {k:?}: {e}")))?;
                    if RESERVED_HEADERS.contains(&key.as_str()) {
                        return Err(invalid(format!(
                            "header {k:?} is set by the transport itself"
                        )));
                    }
                    let value = http::HeaderValue::try_from(v.as_str())
                        .map_err(|e| invalid(format!("header {k:?}: {e}")))?;
                    headers.insert(key, value);
                }
                McpTransport::Http { url, headers }
            }
            _ => return Err(invalid("give exactly one of command and url".into())),
        };
        if self.timeout_ms == 0 || self.concurrency == 0 || self.connect_timeout_ms == 0 {
            return Err(invalid(
                "timeout_ms, concurrency and connect_timeout_ms must be at least 1".into(),
            ));
        }
        if self.restart_backoff_min_ms == 0
            || self.restart_backoff_min_ms > self.restart_backoff_max_ms
        {
            return Err(invalid(
                "restart_backoff_min_ms must be at least 1 and at most restart_backoff_max_ms"
                    .into(),
            ));
        }
        Ok(McpServer {
            prefix: self.name,
            transport,
            timeout_ms: self.timeout_ms,
            concurrency: self.concurrency,
            cache: self.cache,
            restart_backoff_min: Duration::from_millis(self.restart_backoff_min_ms),
            restart_backoff_max: Duration::from_millis(self.restart_backoff_max_ms),
            connect_timeout: Duration::from_millis(self.connect_timeout_ms),
        })
    }
}

/// Checks a file's `[[mcp]]` tables: each valid, prefixes distinct.
pub(crate) fn check_all(defs: Vec<McpServerDef>) -> Result<Vec<McpServer>, ToolboxError> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for def in defs {
        let server = def.check()?;
        if !seen.insert(server.prefix.clone()) {
            return Err(ToolboxError::Duplicate(format!("mcp {}", server.prefix)));
        }
        out.push(server);
    }
    Ok(out)
}

/// The hosts of a worker's MCP servers ([`start`]); dropping it stops them (their processes
/// are killed).
pub struct McpHosts {
    stop: CancellationToken,
}

impl Drop for McpHosts {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Hosts each server's tools in `toolbox` (a task per server running [`host`]), until the
/// returned handle is dropped. Call within a Tokio runtime.
pub fn start(servers: Vec<McpServer>, toolbox: &Toolbox) -> McpHosts {
    let stop = CancellationToken::new();
    for server in servers {
        tokio::spawn(host(server, toolbox.clone(), stop.clone()));
    }
    McpHosts { stop }
}

/// Hosts `server`'s tools in `toolbox` until `stop`: connects, lists, relists on change,
/// restarts with backoff. Spawned by the caller; ends when `stop` is cancelled (the server's
/// process is killed then).
pub async fn host(server: McpServer, toolbox: Toolbox, stop: CancellationToken) {
    let shared = Arc::new(Shared {
        conn: watch::channel(None).0,
        server,
    });
    let server = &shared.server;
    let mut backoff = server.restart_backoff_min;
    let prefix = server.prefix.clone();
    loop {
        let started = tokio::time::Instant::now();
        let outcome = tokio::select! {
            o = connected(&shared, &toolbox) => o,
            _ = stop.cancelled() => Outcome::Stopped,
        };
        shared.conn.send_replace(None);
        match outcome {
            Outcome::Stopped => return,
            Outcome::Failed(why) => {
                tracing::warn!(server = %prefix, "MCP server: {why}; retrying in {backoff:?}");
            }
            Outcome::Ended => {
                if started.elapsed() > server.restart_backoff_max {
                    backoff = server.restart_backoff_min;
                }
                tracing::warn!(server = %prefix, "MCP server exited or disconnected; restarting in {backoff:?}");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.cancelled() => return,
        }
        backoff = (backoff * 2).min(server.restart_backoff_max);
    }
}

/// How one connection ended.
enum Outcome {
    /// Could not connect, or list the tools.
    Failed(String),
    /// Was up, then the server exited or the connection dropped.
    Ended,
    /// Told to stop.
    Stopped,
}

/// What a server's supervisor and its hosted tools share.
struct Shared {
    server: McpServer,
    /// The live connection, while there is one.
    conn: watch::Sender<Option<Arc<Conn>>>,
}

/// The live connection the hosted tools call through.
struct Conn {
    peer: Peer<RoleClient>,
    /// The running calls' progress reporters by the progress token of their request.
    progress: Progresses,
    /// Cancelled by a call that found the connection broken (a remote server gone: requests
    /// cannot be sent while the session still looks open): the supervisor reconnects.
    broken: CancellationToken,
}

type Progresses = Arc<Mutex<HashMap<ProgressToken, ProgressReporter>>>;

/// What the worker does with the server's notifications.
struct Handler {
    progress: Progresses,
    list_changed: mpsc::Sender<()>,
}

impl rmcp::ClientHandler for Handler {
    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        let reporter = self
            .progress
            .lock()
            .expect("poisoned")
            .get(&params.progress_token)
            .cloned();
        if let Some(r) = reporter {
            r.report(params.progress, params.total, params.message);
        }
    }

    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        // One pending relist covers any number of changes.
        let _ = self.list_changed.try_send(());
    }

    fn get_info(&self) -> ClientConfig {
        ClientConfig::new(
            ClientCapabilities::default(),
            Implementation::new("switchboard-worker", env!("CARGO_PKG_VERSION")),
        )
    }
}

/// One connection's life: connect, list, host, follow changes until it ends.
async fn connected(shared: &Arc<Shared>, toolbox: &Toolbox) -> Outcome {
    let server = &shared.server;
    let progress = Progresses::default();
    let (list_tx, mut list_rx) = mpsc::channel(1);
    let handler = Handler {
        progress: progress.clone(),
        list_changed: list_tx.clone(),
    };
    let lifecycle = ClientLifecycleMode::Auto {
        preferred_versions: vec![ProtocolVersion::LATEST],
        legacy_version: None,
    };
    // Kills a stdio server's process group when this connection ends, however it ends.
    let mut _group = None;
    let running = match &server.transport {
        McpTransport::Stdio { argv, env, cwd } => {
            let (transport, group) = match spawn(&server.prefix, argv, env, cwd.as_deref()) {
                Ok(t) => t,
                Err(e) => return Outcome::Failed(format!("cannot start {:?}: {e}", argv[0])),
            };
            _group = Some(group);
            tokio::time::timeout(
                server.connect_timeout,
                handler.serve_with_lifecycle(transport, lifecycle),
            )
            .await
        }
        McpTransport::Http { url, headers } => {
            install_crypto_provider();
            let config = StreamableHttpClientTransportConfig::with_uri(url.as_str())
                .custom_headers(headers.clone());
            let transport = StreamableHttpClientTransport::from_config(config);
            tokio::time::timeout(
                server.connect_timeout,
                handler.serve_with_lifecycle(transport, lifecycle),
            )
            .await
        }
    };
    let running = match running {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return Outcome::Failed(format!("handshake failed: {e}")),
        Err(_) => {
            return Outcome::Failed(format!(
                "no handshake within {:?} (connect_timeout_ms)",
                server.connect_timeout
            ));
        }
    };
    let peer = running.peer().clone();
    if let Err(why) = relist(shared, toolbox, &peer).await {
        return Outcome::Failed(why);
    }
    let broken = CancellationToken::new();
    shared.conn.send_replace(Some(Arc::new(Conn {
        peer: peer.clone(),
        progress,
        broken: broken.clone(),
    })));
    tracing::info!(server = %server.prefix, "MCP server connected; its tools are hosted");
    // On a 2026-07-28 connection, list changes come on a subscription the client opens.
    let modern = peer
        .peer_info()
        .is_some_and(|i| i.protocol_version == ProtocolVersion::V_2026_07_28);
    let listen = async {
        if !modern {
            return std::future::pending().await;
        }
        let filter = SubscriptionFilter::builder().tools_list_changed().build();
        match peer.listen(filter).await {
            Ok(mut sub) => {
                while let Ok(Some(_)) = sub.next().await {
                    let _ = list_tx.try_send(());
                }
            }
            Err(e) => {
                tracing::debug!(server = %server.prefix, error = %e, "no tools/list_changed subscription")
            }
        }
        std::future::pending().await
    };
    tokio::pin!(listen);
    let done = running.waiting();
    tokio::pin!(done);
    loop {
        tokio::select! {
            _ = &mut done => return Outcome::Ended,
            _ = broken.cancelled() => return Outcome::Ended,
            () = &mut listen => {}
            Some(()) = list_rx.recv() => {
                if let Err(why) = relist(shared, toolbox, &peer).await {
                    tracing::warn!(server = %server.prefix, "relisting tools failed: {why}");
                }
            }
        }
    }
}

/// Lists the server's tools and hosts them in place of the group's previous ones.
async fn relist(
    shared: &Arc<Shared>,
    toolbox: &Toolbox,
    peer: &Peer<RoleClient>,
) -> Result<(), String> {
    let server = &shared.server;
    let listed = tokio::time::timeout(server.connect_timeout, peer.list_all_tools())
        .await
        .map_err(|_| format!("no tools/list answer within {:?}", server.connect_timeout))?
        .map_err(|e| format!("tools/list failed: {e}"))?;
    let version = peer
        .peer_info()
        .and_then(|i| serde_json::to_value(&*i).ok())
        .and_then(|v| v["serverInfo"]["version"].as_str().map(str::to_owned))
        .unwrap_or_default();
    let mut tools = Vec::new();
    for t in listed {
        let t = match serde_json::to_value(&t) {
            Ok(v) => v,
            Err(_) => continue,
        };
        let Some(remote) = t["name"].as_str() else {
            continue;
        };
        let input_schema = match &t["inputSchema"] {
            v @ Value::Object(_) => v.clone(),
            _ => serde_json::json!({"type": "object"}),
        };
        let spec = ToolSpec {
            name: format!("{}{SEPARATOR}{remote}", server.prefix),
            title: t["title"].as_str().map(str::to_owned),
            description: t["description"].as_str().unwrap_or_default().to_owned(),
            input_schema,
            annotations: t.get("annotations").filter(|a| a.is_object()).cloned(),
            version: version.clone(),
            cache: server.cache,
            timeout_ms: server.timeout_ms,
        };
        tools.push(NewTool {
            spec,
            tool: Arc::new(McpTool {
                shared: shared.clone(),
                remote: remote.to_owned(),
            }),
            concurrency: server.concurrency,
        });
    }
    let count = tools.len();
    for refused in toolbox.replace_group(&group_of(&server.prefix), tools) {
        tracing::warn!(server = %server.prefix, "a tool of the MCP server is not hosted: {refused}");
    }
    tracing::info!(server = %server.prefix, tools = count, "MCP server's tools listed");
    Ok(())
}

/// The toolbox group of a server's tools.
fn group_of(prefix: &str) -> String {
    format!("mcp:{prefix}")
}

/// reqwest is built without a TLS crypto provider of its own (no aws-lc build): the process
/// uses rustls' ring provider, installed once.
fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Err: another part of the process installed one first, which serves as well.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Kills a stdio server's whole process group (SIGKILL) when dropped.
struct GroupGuard(i32);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.0),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Starts a stdio server in its own process group with a clean environment (like a command
/// tool's); its stderr lines go to the worker's log.
fn spawn(
    prefix: &str,
    argv: &[String],
    env: &BTreeMap<String, String>,
    cwd: Option<&str>,
) -> std::io::Result<(TokioChildProcess, GroupGuard)> {
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.env_clear();
    for key in PASSED_ENV {
        if let Some(v) = std::env::var_os(key) {
            cmd.env(key, v);
        }
    }
    cmd.args(&argv[1..]).envs(env).process_group(0);
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    let (transport, stderr) = TokioChildProcess::builder(cmd)
        .stderr(Stdio::piped())
        .spawn()?;
    let pid = transport
        .id()
        .ok_or_else(|| std::io::Error::other("the server exited at once"))?;
    tracing::info!(server = %prefix, pid, "MCP server started");
    if let Some(stderr) = stderr {
        let prefix = prefix.to_owned();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stderr);
            let mut line = Vec::new();
            loop {
                line.clear();
                match (&mut reader)
                    .take(MAX_STDERR_LINE as u64)
                    .read_until(b'\n', &mut line)
                    .await
                {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let text = String::from_utf8_lossy(&line);
                tracing::info!(server = %prefix, "stderr: {}", text.trim_end());
            }
        });
    }
    Ok((transport, GroupGuard(pid as i32)))
}

/// One tool of a hosted server.
struct McpTool {
    shared: Arc<Shared>,
    /// Its name on the server.
    remote: String,
}

/// Sends the server `notifications/cancelled` for a request whose caller stopped waiting
/// (the call was cancelled or timed out: its future was dropped), unless disarmed.
struct CancelOnDrop {
    peer: Peer<RoleClient>,
    id: Option<RequestId>,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        let Some(id) = self.id.take() else {
            return;
        };
        // Outside a runtime (one shutting down), there is nobody left to tell.
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let peer = self.peer.clone();
        let note = CancelledNotification::new(CancelledNotificationParam::new(
            Some(id),
            Some("the call was cancelled or timed out".into()),
        ));
        rt.spawn(async move {
            let _ = peer.send_notification(ClientNotification::from(note)).await;
        });
    }
}

/// Removes a call's progress reporter when the call ends.
struct ProgressGuard {
    progress: Progresses,
    token: ProgressToken,
}

impl Drop for ProgressGuard {
    fn drop(&mut self) {
        self.progress.lock().expect("poisoned").remove(&self.token);
    }
}

#[async_trait]
impl Tool for McpTool {
    async fn call(&self, arguments: Value, ctx: &CallContext) -> CallToolResult {
        let prefix = &self.shared.server.prefix;
        let arguments = match arguments {
            Value::Object(m) => Some(m),
            Value::Null => None,
            _ => return CallToolResult::error("the arguments must be an object"),
        };
        // While the server restarts, the call waits for it (within the call's deadline).
        let mut rx = self.shared.conn.subscribe();
        let conn = match rx.wait_for(Option::is_some).await {
            Ok(c) => c.clone().expect("waited for it"),
            Err(_) => return CallToolResult::error(format!("MCP server {prefix} is not hosted")),
        };
        drop(rx);
        let mut params = CallToolRequestParams::new(self.remote.clone());
        params.arguments = arguments;
        let sent = conn
            .peer
            .send_request_with_option(
                ClientRequest::CallToolRequest(CallToolRequest::new(params)),
                PeerRequestOptions::no_options(),
            )
            .await;
        let handle = match sent {
            Ok(h) => h,
            Err(e) => return self.failed(&conn, e),
        };
        conn.progress
            .lock()
            .expect("poisoned")
            .insert(handle.progress_token.clone(), ctx.reporter());
        let _progress = ProgressGuard {
            progress: conn.progress.clone(),
            token: handle.progress_token.clone(),
        };
        let mut cancel = CancelOnDrop {
            peer: conn.peer.clone(),
            id: Some(handle.id.clone()),
        };
        let answered = handle.await_response().await;
        cancel.id = None;
        match answered {
            Ok(ServerResult::CallToolResult(r)) => serde_json::to_value(&r)
                .and_then(serde_json::from_value)
                .unwrap_or_else(|e| {
                    CallToolResult::error(format!(
                        "MCP server {prefix} answered a malformed result: {e}"
                    ))
                }),
            Ok(_) => CallToolResult::error(format!(
                "MCP server {prefix} answered tools/call with something other than a tool result \
                 (input requests and tasks of a hosted server are not supported)"
            )),
            Err(e) => self.failed(&conn, e),
        }
    }
}

impl McpTool {
    /// The `isError` result for a request that failed; a connection found broken is handed to
    /// the supervisor to reconnect.
    fn failed(&self, conn: &Conn, e: ServiceError) -> CallToolResult {
        if matches!(e, ServiceError::TransportSend(_)) {
            conn.broken.cancel();
        }
        service_error(&self.shared.server.prefix, e)
    }
}

/// The `isError` result for a call the server did not answer with a result.
fn service_error(prefix: &str, e: ServiceError) -> CallToolResult {
    match e {
        ServiceError::TransportClosed => CallToolResult::error(format!(
            "MCP server {prefix} exited or disconnected during the call; it is being restarted"
        )),
        ServiceError::McpError(e) => CallToolResult::error(format!(
            "MCP server {prefix} refused the call: {}",
            e.message
        )),
        e => CallToolResult::error(format!("MCP server {prefix}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::command::load_tools_file;

    fn load(toml: &str) -> Result<Vec<McpServer>, ToolboxError> {
        let dir = std::env::temp_dir().join(format!("sb-mcp-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tools.toml");
        std::fs::write(&path, toml).unwrap();
        load_tools_file(&path, &mut Toolbox::new())
    }

    fn refused(toml: &str, why: &str) {
        let err = load(toml).unwrap_err().to_string();
        assert!(err.contains(why), "{toml}: {err}");
    }

    #[test]
    fn tables_are_checked() {
        let servers = load(
            r#"
[[mcp]]
name = "local"
command = ["node", "server.js"]
env = { A = "1" }
restart_backoff_max_ms = 5000

[[mcp]]
name = "remote"
url = "https://mcp.example/mcp"
headers = { Authorization = "Bearer x", X-Tenant = "t" }
timeout_ms = 1000
cache = { ttl_ms = 500 }
"#,
        )
        .unwrap();
        assert_eq!(servers.len(), 2);
        assert_eq!(servers[0].prefix, "local");
        assert!(
            matches!(&servers[0].transport, McpTransport::Stdio { argv, .. } if argv.len() == 2)
        );
        assert_eq!(servers[0].restart_backoff_max, Duration::from_secs(5));
        assert_eq!(
            servers[0].restart_backoff_min,
            Duration::from_millis(DEFAULT_RESTART_BACKOFF_MIN_MS)
        );
        match &servers[1].transport {
            McpTransport::Http { url, headers } => {
                assert_eq!(url, "https://mcp.example/mcp");
                assert_eq!(headers.len(), 2);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(servers[1].cache.ttl_ms, 500);

        refused(
            "[[mcp]]\nname = \"x\"\ncommand = [\"a\"]\nbogus = 1\n",
            "bogus",
        );
        refused(
            "[[mcp]]\nname = \"x\"\ncommand = [\"a\"]\nurl = \"http://h/mcp\"\n",
            "exactly one of command and url",
        );
        refused("[[mcp]]\nname = \"x\"\n", "exactly one of command and url");
        refused("[[mcp]]\nname = \"x\"\ncommand = []\n", "command is empty");
        refused("[[mcp]]\nname = \"a b\"\ncommand = [\"a\"]\n", "prefix");
        refused("[[mcp]]\nname = \"x\"\nurl = \"ftp://h\"\n", "not http");
        refused(
            "[[mcp]]\nname = \"x\"\nurl = \"http://h/mcp\"\nheaders = { Mcp-Session-Id = \"s\" }\n",
            "set by the transport",
        );
        refused(
            "[[mcp]]\nname = \"x\"\ncommand = [\"a\"]\nrestart_backoff_min_ms = 10\nrestart_backoff_max_ms = 5\n",
            "restart_backoff_min_ms",
        );
        refused(
            "[[mcp]]\nname = \"x\"\ncommand = [\"a\"]\n[[mcp]]\nname = \"x\"\ncommand = [\"b\"]\n",
            "twice",
        );
    }
}
