//! MCP over Streamable HTTP: `POST /mcp` on every node's public port, answered by the same
//! method layer as the WebSocket (each request gets a [`Caller`] of its own, opened with the
//! request's identity, and its reply is read off that caller's queue).
//!
//! Two eras on the one endpoint:
//! - **Sessions (2025-11-25, 2025-06-18, 2025-03-26, 2024-11-05).** `initialize` creates a
//!   session in the backend (the same records as the WebSocket's sessions, owned by the token's
//!   subject) and answers its id in `Mcp-Session-Id`; every later request names it, and any
//!   node serves it (a session unknown or expired: 404, and the client initializes again). A
//!   request of another identity than the session's: 404 as well.
//! - **Stateless (2026-07-28).** No session: each request carries
//!   `_meta["io.modelcontextprotocol/protocolVersion"]` (and the client's capabilities); the
//!   `MCP-Protocol-Version` and `Mcp-Method` headers, when sent, must agree with the body
//!   (400 otherwise), and an unsupported version is refused with the versions supported.
//!   `server/discover` works without either.
//!
//! Answers are JSON (`application/json`). Notifications and responses from the client get 202.
//! There is no GET stream (405, which the revisions allow) and sessions end by expiring
//! (`DELETE`: 405). Each request is authenticated by its `Authorization: Bearer` token with the
//! same keys, rules and grants as the WebSocket (none, on a node with `--allow-anonymous`:
//! anonymous); a browser page's `Origin` is checked as for the upgrade; each request counts
//! against the address's `--rate-connections`.

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use switchboard_core::auth::Identity;
use switchboard_core::sessions::{Attach, new_session_id};
use switchboard_protocol::methods::session::MCP_VERSIONS;

use super::Node;
use super::request::{bearer, origin_allowed};
use super::sse;
pub(super) use super::sse::McpReply;
use crate::methods::Caller;

type Reply = Response<Full<Bytes>>;

/// The stateless revisions served.
pub(crate) const STATELESS_VERSIONS: [&str; 1] = ["2026-07-28"];
/// The error of revision 2026-07-28 for a protocol version the server does not speak (its
/// `data.supported` lists those it does).
const UNSUPPORTED_PROTOCOL_VERSION: i64 = -32022;
/// The session header.
const SESSION_HEADER: &str = "mcp-session-id";
/// The `_meta` key of a stateless request's revision.
const META_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
/// The methods a request may call over HTTP: those of MCP (topics and sessions need a socket).
const METHODS: [&str; 9] = [
    "initialize",
    "subscriptions/listen",
    "ping",
    "server/discover",
    "tools/list",
    "tools/call",
    "tasks/get",
    "tasks/result",
    "tasks/cancel",
];

/// Serves `/mcp`.
pub(super) async fn serve(node: Arc<Node>, req: Request<Incoming>, client: IpAddr) -> McpReply {
    match *req.method() {
        Method::POST => match post(node, req, client).await {
            Answered::Json(r) => r.map(BodyExt::boxed),
            Answered::Stream(r) => r,
        },
        Method::GET => match get(node, req.headers(), client).await {
            Answered::Json(r) => r.map(BodyExt::boxed),
            Answered::Stream(r) => r,
        },
        Method::DELETE => delete(node, req.headers(), client)
            .await
            .map(BodyExt::boxed),
        _ => {
            let mut r = status(StatusCode::METHOD_NOT_ALLOWED, "use POST, GET or DELETE\n");
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, POST, DELETE"));
            r.map(BodyExt::boxed)
        }
    }
}

/// A request's answer: one JSON body, or an SSE stream.
enum Answered {
    Json(Reply),
    Stream(McpReply),
}

impl From<Reply> for Answered {
    fn from(r: Reply) -> Self {
        Answered::Json(r)
    }
}

/// What every request passes before it is read: its page's `Origin`, the address's
/// `--rate-connections`, the node not draining, and its token. The identity (`None`:
/// anonymous, on a node that allows it).
async fn admit(
    node: &Node,
    headers: &HeaderMap,
    client: IpAddr,
) -> Result<Option<Identity>, Reply> {
    if !origin_allowed(&node.config.access.allowed_origins, headers) {
        node.metrics.origins_refused.inc();
        return Err(status(StatusCode::FORBIDDEN, "origin not allowed\n"));
    }
    if node.connection_rate.check(client).is_err() {
        node.metrics.connections_rate_limited.inc();
        let mut r = status(StatusCode::TOO_MANY_REQUESTS, "too many requests\n");
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return Err(r);
    }
    if node.health.is_draining() {
        return Err(status(StatusCode::SERVICE_UNAVAILABLE, "draining\n"));
    }
    // Who is asking: the same keys and rules as the WebSocket.
    match bearer(headers) {
        Some(token) => match node.access.identify(token).await {
            Ok(identity) => Ok(Some(identity)),
            Err(e) => {
                tracing::debug!(error = %e, "token refused on /mcp");
                Err(unauthorized(node, headers, "invalid_token"))
            }
        },
        None if node.access.allow_anonymous => Ok(None),
        None => {
            node.access.missing_token();
            Err(unauthorized(node, headers, ""))
        }
    }
}

/// The owner a request's sessions and tasks are bound to.
fn owner_of(identity: Option<&Identity>) -> String {
    identity.map_or_else(
        || Identity::anonymous().subject.to_string(),
        |i| i.subject.to_string(),
    )
}

/// The request's `Mcp-Session-Id`, attached for its owner: the session's generation, or the
/// refusal (404: unknown, expired or another identity's; 503: the backend cannot be asked).
async fn attach(node: &Node, sid: &str, owner: &str, id: Option<&Value>) -> Result<u64, Reply> {
    match node.methods.session.sessions.attach(sid, owner).await {
        Ok(Attach::Resumed(record)) => Ok(record.generation),
        Ok(Attach::NotFound | Attach::WrongOwner) => Err(rpc_error(
            StatusCode::NOT_FOUND,
            id,
            -32001,
            "session not found",
        )),
        Err(e) => {
            tracing::warn!(error = %e, "reading an MCP session failed");
            Err(rpc_error(
                StatusCode::SERVICE_UNAVAILABLE,
                id,
                -32603,
                "backend unavailable, try again",
            ))
        }
    }
}

fn session_header(headers: &HeaderMap) -> Option<&str> {
    headers.get(SESSION_HEADER).and_then(|v| v.to_str().ok())
}

/// `GET /mcp` (session era): with `Last-Event-ID`, a call's stream resumed on this node;
/// without, the session's standing stream. Revision 2026-07-28 has no GET stream (405).
async fn get(node: Arc<Node>, headers: &HeaderMap, client: IpAddr) -> Answered {
    let identity = match admit(&node, headers, client).await {
        Ok(identity) => identity,
        Err(refused) => return refused.into(),
    };
    let Some(sid) = session_header(headers) else {
        let mut r = status(
            StatusCode::METHOD_NOT_ALLOWED,
            "GET needs an Mcp-Session-Id (revision 2026-07-28 has no GET stream: use \
             subscriptions/listen)\n",
        );
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return r.into();
    };
    if !accepts_stream(headers) {
        return status(StatusCode::NOT_ACCEPTABLE, "accept text/event-stream\n").into();
    }
    let owner = owner_of(identity.as_ref());
    if let Err(refused) = attach(&node, sid, &owner, None).await {
        return refused.into();
    }
    let identity = identity.unwrap_or_else(Identity::anonymous);
    match headers.get("last-event-id").and_then(|v| v.to_str().ok()) {
        Some(last) => match sse::resume(node, client, identity, sid, last) {
            Some(stream) => Answered::Stream(stream),
            None => status(
                StatusCode::BAD_REQUEST,
                "Last-Event-ID is not an event of this session's streams\n",
            )
            .into(),
        },
        None => Answered::Stream(sse::standing(node, client, identity)),
    }
}

/// `DELETE /mcp`: ends the session (204); later requests naming it get 404.
async fn delete(node: Arc<Node>, headers: &HeaderMap, client: IpAddr) -> Reply {
    let identity = match admit(&node, headers, client).await {
        Ok(identity) => identity,
        Err(refused) => return refused,
    };
    let Some(sid) = session_header(headers) else {
        return status(StatusCode::BAD_REQUEST, "DELETE needs an Mcp-Session-Id\n");
    };
    let generation = match attach(&node, sid, &owner_of(identity.as_ref()), None).await {
        Ok(generation) => generation,
        Err(refused) => return refused,
    };
    match node.methods.session.sessions.end(sid, generation).await {
        Ok(_) => status(StatusCode::NO_CONTENT, ""),
        Err(e) => {
            tracing::warn!(error = %e, "ending an MCP session failed");
            status(
                StatusCode::SERVICE_UNAVAILABLE,
                "backend unavailable, try again\n",
            )
        }
    }
}

async fn post(node: Arc<Node>, req: Request<Incoming>, client: IpAddr) -> Answered {
    let headers = req.headers().clone();
    let identity = match admit(&node, &headers, client).await {
        Ok(identity) => identity,
        Err(refused) => return refused.into(),
    };
    let limit = node.config.tuning.max_message_bytes;
    // A body that trickles in is bounded like a socket's hello: `--hello-timeout`.
    let reading = Limited::new(req.into_body(), limit).collect();
    let body = match tokio::time::timeout(node.config.tuning.hello_timeout, reading).await {
        Ok(Ok(b)) => b.to_bytes(),
        Err(_) => {
            return Answered::from(rpc_error(
                StatusCode::REQUEST_TIMEOUT,
                None,
                -32600,
                "the request body did not arrive in time",
            ));
        }
        Ok(Err(_)) => {
            return Answered::from(rpc_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                None,
                -32600,
                "message too large",
            ));
        }
    };

    let Ok(text) = std::str::from_utf8(&body) else {
        return Answered::from(rpc_error(
            StatusCode::BAD_REQUEST,
            None,
            -32700,
            "not UTF-8",
        ));
    };
    let Ok(message) = serde_json::from_str::<Value>(text) else {
        return Answered::from(rpc_error(
            StatusCode::BAD_REQUEST,
            None,
            -32700,
            "parse error",
        ));
    };
    if message.is_array() {
        return Answered::from(rpc_error(
            StatusCode::BAD_REQUEST,
            None,
            -32600,
            "batches are not supported",
        ));
    }
    let id = message.get("id").filter(|id| !id.is_null()).cloned();
    let Some(method) = message.get("method").and_then(Value::as_str) else {
        // A response from the client (the node sends no requests): nothing to do.
        return Answered::from(accepted());
    };
    let session = session_header(&headers).map(str::to_owned);
    let owner = owner_of(identity.as_ref());
    let Some(id) = id else {
        // Notifications: `cancelled` in a session ends the call wherever it runs (its task is
        // named after the session and the request); the rest (`initialized`, ...) is taken.
        if method == "notifications/cancelled"
            && let Some(sid) = &session
            && let Some(request) = message.pointer("/params/requestId")
            && attach(&node, sid, &owner, None).await.is_ok()
        {
            node.methods
                .tasks
                .cancel_session_request(&owner, sid, &request.to_string())
                .await;
        }
        return Answered::from(accepted());
    };
    if !METHODS.contains(&method) {
        return Answered::from(rpc_error(
            StatusCode::OK,
            Some(&id),
            -32601,
            &format!("{method} is not available over Streamable HTTP"),
        ));
    }

    // The era, and the session if there is one.
    let stateless_version = message
        .pointer("/params/_meta")
        .and_then(|m| m.get(META_VERSION))
        .and_then(Value::as_str)
        .map(str::to_owned);
    if let Some(version) = &stateless_version {
        if let Some(refused) = check_stateless(&headers, &id, method, version) {
            return Answered::from(refused);
        }
    } else if method == "initialize" {
        // A new session, below, once `initialize` has answered.
    } else if let Some(sid) = &session {
        if let Err(refused) = attach(&node, sid, &owner, Some(&id)).await {
            return Answered::from(refused);
        }
    } else if method != "server/discover" && method != "ping" {
        return Answered::from(rpc_error(
            StatusCode::BAD_REQUEST,
            Some(&id),
            -32600,
            "no Mcp-Session-Id: send initialize first (or, in revision 2026-07-28, the protocol \
             version in _meta)",
        ));
    }
    // The session era's calls are named after the session (see `cancel_session_request`).
    let in_session = stateless_version.is_none() && method != "initialize";
    let session = session.filter(|_| in_session);

    if method == "subscriptions/listen" {
        if stateless_version.is_none() || !accepts_stream(&headers) {
            return Answered::from(rpc_error(
                StatusCode::BAD_REQUEST,
                Some(&id),
                -32600,
                "subscriptions/listen is revision 2026-07-28's, answered as a stream: send the \
                 protocol version in _meta and accept text/event-stream",
            ));
        }
        let wants_tools = message
            .pointer("/params/notifications/toolsListChanged")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let identity = identity.unwrap_or_else(Identity::anonymous);
        return Answered::Stream(sse::listen(node, client, identity, id, wants_tools));
    }

    // The request, through the method layer, on a caller of its own.
    let (mut caller, mut reader) = sse::request_caller(&node, client, identity.clone());
    caller.task_seed = session.clone();
    if method != "initialize" {
        caller.identity = Some(identity.unwrap_or_else(Identity::anonymous));
        caller.opened = true;
    }
    let answer = node.methods.dispatch(&mut caller, text).await;
    // A call answered later, to a client that takes a stream: its progress and then its
    // reply, as events of this request's own stream. In a session every such call is
    // streamed (the stream resumes on any node); without one, those that asked for progress.
    let streamed = answer.reply.is_none()
        && method == "tools/call"
        && (session.is_some() || message.pointer("/params/_meta/progressToken").is_some())
        && accepts_stream(&headers);
    let modern = stateless_version.is_some();
    if streamed {
        return Answered::Stream(match &session {
            Some(sid) => sse::resumable(node, caller, reader, id, sid),
            None if modern => sse::direct(node, caller, reader, id, stamp_call),
            None => sse::direct(node, caller, reader, id, std::convert::identity),
        });
    }
    let reply = match answer.reply {
        // Over HTTP the stateless revisions are served too: `server/discover` says so.
        Some(reply) if method == "server/discover" => with_stateless_versions(reply),
        Some(reply) => reply,
        // Answered later (a tool call): its reply comes through the caller's queue. A
        // stateless client that goes before it cancels the call.
        None => {
            let mut waiting = CancelOnDrop {
                node: node.clone(),
                armed: (modern && method == "tools/call").then(|| (caller, id.clone())),
            };
            let reply = reader.reply_to(&id).await;
            waiting.armed = None;
            match reply {
                Some(reply) => reply,
                None => {
                    return Answered::from(rpc_error(
                        StatusCode::OK,
                        Some(&id),
                        -32603,
                        "no reply",
                    ));
                }
            }
        }
    };
    let reply = if modern || method == "server/discover" {
        stamp_modern(reply, method)
    } else {
        reply
    };
    let mut response = json_response(StatusCode::OK, reply.clone());
    if method == "initialize" && stateless_version.is_none() && is_result(&reply) {
        let sid = new_session_id();
        if let Err(e) = node.methods.session.sessions.create(&sid, &owner).await {
            tracing::warn!(error = %e, "storing an MCP session failed");
            return Answered::from(rpc_error(
                StatusCode::SERVICE_UNAVAILABLE,
                Some(&id),
                -32603,
                "cannot open a session: the backend is unavailable, try again later",
            ));
        }
        if let Ok(v) = HeaderValue::from_str(&sid) {
            response.headers_mut().insert(SESSION_HEADER, v);
        }
    }
    Answered::Json(response)
}

/// A stateless call waiting for its JSON answer: dropped before it (the client went, and
/// hyper dropped the request), it cancels the call.
struct CancelOnDrop {
    node: Arc<Node>,
    armed: Option<(Caller, Value)>,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some((mut caller, id)) = self.armed.take() {
            let node = self.node.clone();
            tokio::spawn(async move { sse::cancel(&node, &mut caller, &id).await });
        }
    }
}

/// A call's reply as revision 2026-07-28 has it.
fn stamp_call(reply: Bytes) -> Bytes {
    stamp_modern(reply, "tools/call")
}

/// A stateless request's headers against its body, and its revision against those served:
/// the refusal, if any.
fn check_stateless(headers: &HeaderMap, id: &Value, method: &str, version: &str) -> Option<Reply> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(h) = header("mcp-protocol-version")
        && h != version
    {
        return Some(rpc_error(
            StatusCode::BAD_REQUEST,
            Some(id),
            -32600,
            "the MCP-Protocol-Version header does not match the request's _meta",
        ));
    }
    if let Some(h) = header("mcp-method")
        && h != method
    {
        return Some(rpc_error(
            StatusCode::BAD_REQUEST,
            Some(id),
            -32600,
            "the Mcp-Method header does not match the request's method",
        ));
    }
    if !STATELESS_VERSIONS.contains(&version) {
        let body = json!({
            "jsonrpc": "2.0",
            "id": id,
            "error": {
                "code": UNSUPPORTED_PROTOCOL_VERSION,
                "message": format!("unsupported protocol version {version}"),
                "data": {"supported": STATELESS_VERSIONS, "sessionVersions": MCP_VERSIONS},
            },
        });
        return Some(json_response(
            StatusCode::BAD_REQUEST,
            Bytes::from(body.to_string()),
        ));
    }
    None
}

/// A result as revision 2026-07-28 has it: `resultType` on every result, and the caching
/// directives on those a client may cache (lists, `server/discover`): here `ttlMs: 0`,
/// `cacheScope: "private"` (what a caller may list depends on its grants, and the workers'
/// tools change at any time).
fn stamp_modern(reply: Bytes, method: &str) -> Bytes {
    let Ok(mut v) = serde_json::from_slice::<Value>(&reply) else {
        return reply;
    };
    let Some(Value::Object(result)) = v.get_mut("result") else {
        return reply;
    };
    result
        .entry("resultType")
        .or_insert_with(|| json!("complete"));
    if matches!(method, "tools/list" | "server/discover") {
        result.entry("ttlMs").or_insert_with(|| json!(0));
        result
            .entry("cacheScope")
            .or_insert_with(|| json!("private"));
    }
    Bytes::from(v.to_string())
}

/// A `server/discover` result with the stateless revisions first among `supportedVersions`.
fn with_stateless_versions(reply: Bytes) -> Bytes {
    let Ok(mut v) = serde_json::from_slice::<Value>(&reply) else {
        return reply;
    };
    if let Some(Value::Array(versions)) = v.pointer_mut("/result/supportedVersions") {
        for (i, version) in STATELESS_VERSIONS.iter().enumerate() {
            versions.insert(i, json!(version));
        }
        return Bytes::from(v.to_string());
    }
    reply
}

/// Whether the client takes an SSE answer (`Accept: text/event-stream`).
fn accepts_stream(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/event-stream"))
}

fn is_result(reply: &[u8]) -> bool {
    serde_json::from_slice::<Value>(reply).is_ok_and(|v| v.get("result").is_some())
}

fn json_response(code: StatusCode, body: Bytes) -> Reply {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = code;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn rpc_error(code: StatusCode, id: Option<&Value>, rpc: i64, message: &str) -> Reply {
    let body = json!({
        "jsonrpc": "2.0",
        "id": id.cloned().unwrap_or(Value::Null),
        "error": {"code": rpc, "message": message},
    });
    json_response(code, Bytes::from(body.to_string()))
}

fn accepted() -> Reply {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::ACCEPTED;
    r
}

fn status(code: StatusCode, body: &'static str) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = code;
    r
}

/// 401 with the `WWW-Authenticate` challenge: `error` when the token was refused, and
/// `resource_metadata` (RFC 9728) when the node names an authorization server.
fn unauthorized(node: &Node, headers: &HeaderMap, error: &str) -> Reply {
    let mut r = rpc_error(StatusCode::UNAUTHORIZED, None, -32001, "unauthorized");
    let mut params = Vec::new();
    if !error.is_empty() {
        params.push(format!("error=\"{error}\""));
    }
    if !node.config.access.oauth_authorization_servers.is_empty() {
        params.push(format!(
            "resource_metadata=\"{}\"",
            metadata_url(&resource(node, headers))
        ));
    }
    let challenge = if params.is_empty() {
        "Bearer".to_owned()
    } else {
        format!("Bearer {}", params.join(", "))
    };
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    r
}

/// This endpoint as an OAuth resource: `--oauth-resource`, or the request's own Host.
fn resource(node: &Node, headers: &HeaderMap) -> String {
    if let Some(r) = &node.config.access.oauth_resource {
        return r.clone();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .filter(|h| h.bytes().all(|b| b.is_ascii_graphic()))
        .unwrap_or("localhost");
    format!("http://{host}/mcp")
}

/// Where a resource's metadata is (RFC 9728: the well-known path before the resource's path).
fn metadata_url(resource: &str) -> String {
    let (scheme, rest) = resource.split_once("://").unwrap_or(("http", resource));
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let path = if path.is_empty() {
        String::new()
    } else {
        format!("/{path}")
    };
    format!("{scheme}://{host}/.well-known/oauth-protected-resource{path}")
}

/// `GET /.well-known/oauth-protected-resource[/mcp]`: the protected resource's metadata
/// (RFC 9728) when the node names an authorization server, else 404.
pub(super) fn resource_metadata(node: &Node, headers: &HeaderMap) -> McpReply {
    let servers = &node.config.access.oauth_authorization_servers;
    if servers.is_empty() {
        return status(StatusCode::NOT_FOUND, "not found\n").map(BodyExt::boxed);
    }
    let body = json!({
        "resource": resource(node, headers),
        "authorization_servers": servers,
        "bearer_methods_supported": ["header"],
        "resource_name": "Switchboard",
    });
    json_response(StatusCode::OK, Bytes::from(body.to_string())).map(BodyExt::boxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_sits_before_the_resource_path() {
        assert_eq!(
            metadata_url("https://mcp.example.com/mcp"),
            "https://mcp.example.com/.well-known/oauth-protected-resource/mcp"
        );
        assert_eq!(
            metadata_url("https://mcp.example.com"),
            "https://mcp.example.com/.well-known/oauth-protected-resource"
        );
    }
}
