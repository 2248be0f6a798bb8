//! `hello` (and, for MCP clients, `initialize`): authenticate the connection and open its
//! session; `server/discover`, MCP's stateless description of the server.
//!
//! A token in `hello` params wins over one from the upgrade request (header or query). With no
//! token anywhere, the connection is anonymous if the node allows it; otherwise -32001 and the
//! socket closes with 1008, as it does for a bad or expired token.
//!
//! Sessions are not stored yet (the sessions issue): every `hello` opens a fresh session and
//! answers `resumed: false`, also when it names an old one.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use rand::RngCore;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use switchboard_core::auth::Identity;
use switchboard_core::wire::{self, ErrorCode, HelloParams, HelloResult, Limits, RpcError, close};

use crate::dispatch::ConnState;
use crate::node::Node;

pub(crate) fn hello(
    node: &Arc<Node>,
    state: &mut ConnState,
    params: Option<&RawValue>,
) -> Result<HelloResult, RpcError> {
    if state.session.is_some() {
        return Err(RpcError::invalid_request("hello was already done"));
    }
    let p: HelloParams = wire::decode_params(params)?;
    let auth = &node.config.auth;
    let identity = match (p.token.as_deref(), state.identity.take()) {
        (Some(token), _) => match auth.verifier.as_ref().map(|v| v.verify(token)) {
            Some(Ok(identity)) => identity,
            Some(Err(e)) => return Err(refuse(state, &e.to_string())),
            None => return Err(refuse(state, "this node verifies no tokens")),
        },
        (None, Some(identity)) => identity,
        (None, None) if auth.allow_anonymous => Identity::anonymous(),
        (None, None) => return Err(refuse(state, "token required")),
    };
    let session = open_session(state, identity);
    let cfg = &node.config;
    Ok(HelloResult {
        session,
        resumed: false,
        node: cfg.node_id.clone(),
        heartbeat_ms: cfg.heartbeat.as_millis() as u64,
        limits: Limits {
            max_message_bytes: cfg.max_message_bytes,
            max_subscriptions: cfg.max_subscriptions,
            outbound_queue: cfg.outbound_queue,
        },
    })
}

/// Binds the identity to the connection and opens a session; returns its id.
fn open_session(state: &mut ConnState, identity: Identity) -> String {
    if let Some(exp) = identity.expires_at {
        state.ctl.expires_at.store(exp, Ordering::Relaxed);
    }
    tracing::debug!(conn = state.ctl.id, subject = %identity.subject, "session opened");
    state.identity = Some(identity);
    let session = new_session_id();
    state.session = Some(session.clone());
    state.ctl.hello_done.store(true, Ordering::Relaxed);
    session
}

/// MCP protocol versions this server speaks, newest first.
pub(crate) const MCP_VERSIONS: [&str; 3] = ["2025-11-25", "2025-06-18", "2025-03-26"];

fn server_info() -> Value {
    json!({"name": "switchboard", "version": env!("CARGO_PKG_VERSION")})
}

fn mcp_capabilities() -> Value {
    json!({
        "tools": {"listChanged": true},
        "tasks": {"cancel": {}, "requests": {"tools": {"call": {}}}},
    })
}

/// MCP `initialize`: the MCP client's `hello`. The token comes from the upgrade request
/// (header or query); without one, the client is anonymous where the node allows it.
pub(crate) fn initialize(
    node: &Arc<Node>,
    state: &mut ConnState,
    params: Option<&RawValue>,
) -> Result<Value, RpcError> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct P {
        #[serde(default)]
        protocol_version: Option<String>,
    }
    if state.session.is_some() {
        return Err(RpcError::invalid_request("initialize was already done"));
    }
    let p: P = wire::decode_params(params)?;
    let identity = match state.identity.take() {
        Some(identity) => identity,
        None if node.config.auth.allow_anonymous => Identity::anonymous(),
        None => return Err(refuse(state, "token required")),
    };
    open_session(state, identity);
    let version = p
        .protocol_version
        .filter(|v| MCP_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| MCP_VERSIONS[0].to_owned());
    Ok(json!({
        "protocolVersion": version,
        "capabilities": mcp_capabilities(),
        "serverInfo": server_info(),
    }))
}

/// MCP `server/discover`: what the server speaks, without a session.
pub(crate) fn discover() -> Value {
    json!({
        "supportedVersions": MCP_VERSIONS,
        "capabilities": mcp_capabilities(),
        "serverInfo": server_info(),
    })
}

/// Answers -32001 and closes the socket with 1008 once the answer is written.
fn refuse(state: &mut ConnState, why: &str) -> RpcError {
    tracing::debug!(conn = state.ctl.id, why, "hello refused");
    state.close_after_reply = Some((close::POLICY, "bad or expired token"));
    RpcError::new(
        ErrorCode::Unauthorized,
        "unauthorized: bad, expired or missing token",
    )
}

fn new_session_id() -> String {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
