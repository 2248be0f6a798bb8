//! `hello` (and, for MCP clients, `initialize`): authenticate the connection and open its
//! session; `server/discover`, MCP's stateless description of the server.
//!
//! A token in `hello` params wins over one from the upgrade request (header or query). With no
//! token anywhere, the connection is anonymous if the node allows it; otherwise -32001 and the
//! socket closes with 1008, as it does for a bad or expired token.
//!
//! `hello` stores a new session in the backend, or, given `session`, attaches the stored one
//! (resume): its subscriptions are restored and replayed from their positions (the client's
//! `positions` win over the stored ones) before the reply, and the replies it is still owed
//! follow whenever their calls finish. A session of another identity is refused (-32001); a
//! session that is gone opens a new one (`resumed: false`). While the backend is down no
//! session can be stored: `hello` answers -32603 and the socket closes with 1013.
//! MCP connections (`initialize`) have no stored session: MCP has no resume.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde_json::value::RawValue;
use serde_json::{Value, json};
use switchboard_core::auth::Identity;
use switchboard_core::history::{self, EventId};
use switchboard_core::sessions::{Attach, SessionRecord, new_session_id};
use switchboard_core::topic::Topic;
use switchboard_core::wire::{
    self, ErrorCode, HelloParams, HelloResult, Limits, RpcError, SubscribeResult, close,
};

use crate::dispatch::ConnState;
use crate::node::Node;
use crate::sessions::{self, LiveSession};
use crate::{calls, topics};

pub(crate) async fn hello(
    node: &Arc<Node>,
    state: &mut ConnState,
    params: Option<&RawValue>,
) -> Result<HelloResult, RpcError> {
    if state.opened {
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
    if node.backend_down() {
        return Err(unavailable(state, identity));
    }
    let owner = identity.subject.clone();
    let ttl = sessions::attached_ttl_ms(node);
    let node_id = &node.config.node_id;
    let mut resumed = None;
    if let Some(id) = &p.session {
        match node.backend.session_attach(id, &owner, node_id, ttl).await {
            Ok(Attach::Resumed(record)) => resumed = Some((id.clone(), record)),
            Ok(Attach::NotFound) => {}
            Ok(Attach::WrongOwner) => {
                state.identity = Some(identity);
                return Err(RpcError::new(
                    ErrorCode::Unauthorized,
                    "this session belongs to another identity",
                ));
            }
            Err(e) => {
                tracing::warn!(error = %e, "attaching a session failed");
                return Err(unavailable(state, identity));
            }
        }
    }
    let (id, generation, record) = match resumed {
        Some((id, record)) => (id, record.generation, Some(record)),
        None => {
            let id = new_session_id();
            if let Err(e) = node.backend.session_create(&id, &owner, node_id, ttl).await {
                tracing::warn!(error = %e, "storing a session failed");
                return Err(unavailable(state, identity));
            }
            (id, 1, None)
        }
    };
    let live = Arc::new(LiveSession::new(
        Arc::from(id.as_str()),
        generation,
        owner,
        state.ctl.clone(),
    ));
    open_session(state, identity);
    let _ = state.ctl.session.set(Arc::downgrade(&live));
    state.live = Some(live.clone());
    node.sessions.insert(live.clone());
    let mut restored = Vec::new();
    let was_resumed = record.is_some();
    if let Some(record) = record {
        restored = restore(node, state, record, p.positions.unwrap_or_default()).await;
        sessions::save_now(node, &live).await;
        node.metrics.sessions_resumed.inc();
    }
    let cfg = &node.config;
    Ok(HelloResult {
        session: id,
        resumed: was_resumed,
        node: cfg.node_id.clone(),
        heartbeat_ms: cfg.heartbeat.as_millis() as u64,
        limits: Limits {
            max_message_bytes: cfg.max_message_bytes,
            max_subscriptions: cfg.max_subscriptions,
            outbound_queue: cfg.outbound_queue,
        },
        subscriptions: restored,
    })
}

/// A resumed session's subscriptions and owed replies, back on this connection. Replays are
/// sent before the `hello` reply; owed replies whenever their calls finish.
async fn restore(
    node: &Arc<Node>,
    state: &mut ConnState,
    record: SessionRecord,
    positions: std::collections::BTreeMap<String, String>,
) -> Vec<SubscribeResult> {
    let mut restored = Vec::with_capacity(record.topics.len());
    for (name, stored) in record.topics {
        let Ok(topic) = Topic::new(&name) else {
            continue;
        };
        // No position on a history topic: it was subscribed before its history had any event,
        // so everything there is came after.
        let has_history = history::rule_for(&node.config.history, &name).is_some();
        let since = positions
            .get(&name)
            .and_then(|s| EventId::parse(s))
            .or(stored)
            .or(has_history.then_some(EventId::ZERO));
        match topics::subscribe_to(node, state, topic, since).await {
            Ok(r) => restored.push(r),
            Err(e) => {
                // Not subscribed now: the client learns it here and may subscribe again.
                tracing::warn!(topic = %name, error = %e.message, "restoring a subscription failed");
                restored.push(SubscribeResult {
                    topic: name,
                    position: None,
                    recovered: Some(false),
                });
            }
        }
    }
    calls::resume_owed(node, state, record.requests);
    restored
}

/// Binds the identity and the session id to the connection.
fn open_session(state: &mut ConnState, identity: Identity) {
    if let Some(exp) = identity.expires_at {
        state.ctl.expires_at.store(exp, Ordering::Relaxed);
    }
    tracing::debug!(conn = state.ctl.id, subject = %identity.subject, "session opened");
    state.identity = Some(identity);
    state.opened = true;
    state.ctl.hello_done.store(true, Ordering::Relaxed);
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
    if state.opened {
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

/// No session can be stored now: answers -32603 and closes the socket with 1013 once the
/// answer is written. The identity stays bound for a retry on this socket meanwhile.
fn unavailable(state: &mut ConnState, identity: Identity) -> RpcError {
    state.identity = Some(identity);
    state.close_after_reply = Some((
        close::TRY_AGAIN_LATER,
        "backend unavailable, try again later",
    ));
    RpcError::new(
        ErrorCode::Internal,
        "cannot open a session: the backend is unavailable, try again later",
    )
}
