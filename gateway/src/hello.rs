//! `hello`: authenticate the connection and open its session.
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
    if let Some(exp) = identity.expires_at {
        state.ctl.expires_at.store(exp, Ordering::Relaxed);
    }
    tracing::debug!(conn = state.ctl.id, subject = %identity.subject, "hello");
    state.identity = Some(identity);
    let session = new_session_id();
    state.session = Some(session.clone());
    state.ctl.hello_done.store(true, Ordering::Relaxed);
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
