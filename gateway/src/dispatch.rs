//! Where a request is routed: one text message in, at most one reply out.
//!
//! [`ConnState`] is what the gateway knows about one connection between messages. The rule
//! that everything but `hello` needs a completed `hello` (-32001) is enforced here, once; the
//! methods themselves live in [`crate::hello`] and [`crate::topics`].

use std::collections::HashSet;
use std::sync::Arc;

use crate::conn::OutTx;
use bytes::Bytes;
use serde::Serialize;
use serde_json::value::RawValue;
use switchboard_core::auth::Identity;
use switchboard_core::topic::Topic;
use switchboard_core::wire::{self, ErrorCode, RpcError};

use crate::calls::{self, InFlight};
use crate::conn::ConnCtl;
use crate::node::Node;
use crate::sessions::LiveSession;
use crate::{hello, topics};

/// Per-connection state, owned by the connection's reader.
pub(crate) struct ConnState {
    node: Arc<Node>,
    pub(crate) ctl: Arc<ConnCtl>,
    /// The connection's outbound queue (replies wait for room; events do not).
    pub(crate) tx: OutTx,
    /// Set from the header or query token at upgrade, or by `hello`.
    pub(crate) identity: Option<Identity>,
    /// `hello` (or `initialize`) succeeded.
    pub(crate) opened: bool,
    /// The stored session (not for MCP connections, which cannot resume).
    pub(crate) live: Option<Arc<LiveSession>>,
    pub(crate) topics: HashSet<Topic>,
    /// A close (code, reason) to start once the current reply is queued, so the client reads
    /// why before the socket closes.
    pub(crate) close_after_reply: Option<(u16, &'static str)>,
    /// Tool calls in flight (request id -> task id), shared with their waiting tasks.
    pub(crate) calls: InFlight,
    /// The socket speaks the `mcp` subprotocol: `initialize` opens the session.
    pub(crate) mcp: bool,
}

impl ConnState {
    pub(crate) fn new(
        node: Arc<Node>,
        ctl: Arc<ConnCtl>,
        tx: OutTx,
        identity: Option<Identity>,
    ) -> Self {
        ConnState {
            node,
            ctl,
            tx,
            identity,
            opened: false,
            live: None,
            topics: HashSet::new(),
            close_after_reply: None,
            calls: InFlight::default(),
            mcp: false,
        }
    }

    /// Who the caller is: tasks and per-user caches are bound to it.
    pub(crate) fn owner(&self) -> String {
        self.identity
            .as_ref()
            .map_or_else(|| "anonymous".to_owned(), |i| i.subject.to_string())
    }
}

impl Drop for ConnState {
    /// Releases every subscription of a closed connection, and its session if nobody detached
    /// it (a handler panicked).
    fn drop(&mut self) {
        if let Some(live) = self.live.take() {
            self.node.sessions.remove(&live);
        }
        if self.topics.is_empty() {
            return;
        }
        let topics: Vec<Topic> = self.topics.drain().collect();
        for t in &topics {
            self.node.fanout.remove(t, self.ctl.id);
        }
        self.node.subscriptions.sync_later(topics);
    }
}

/// Handles one message; returns the reply to queue, if any (notifications get none).
pub(crate) async fn handle(node: &Arc<Node>, state: &mut ConnState, text: &str) -> Option<Bytes> {
    let req = match wire::parse_request(text) {
        Ok(req) => req,
        Err(bad) => return Some(wire::encode_error(bad.id, &bad.error)),
    };
    let id = req.id;
    let params = req.params;
    let reply = match req.method.as_ref() {
        "hello" => encode(id, hello::hello(node, state, params).await),
        "initialize" => encode(id, hello::initialize(node, state, params)),
        "server/discover" => encode(id, Ok(hello::discover())),
        "ping" if state.mcp || state.opened => encode(id, Ok(serde_json::json!({}))),
        _ if !state.opened => Err(RpcError::new(
            ErrorCode::Unauthorized,
            if state.mcp {
                "send initialize first"
            } else {
                "send hello first"
            },
        )),
        "notifications/initialized" => Ok(None),
        "subscribe" => encode(id, topics::subscribe(node, state, params).await),
        "unsubscribe" => encode(id, topics::unsubscribe(node, state, params).await),
        "publish" => encode(id, topics::publish(node, params).await),
        "tools/list" => encode(id, Ok(calls::tools_list(node))),
        "tools/call" => later(id, calls::tools_call(node, state, id, params).await),
        "tasks/get" => encode(id, calls::tasks_get(node, state, params).await),
        "tasks/result" => later(id, calls::tasks_result(node, state, id, params).await),
        "tasks/cancel" => encode(id, calls::tasks_cancel(node, state, params).await),
        "notifications/cancelled" => {
            calls::cancelled(node, state, params);
            Ok(None)
        }
        other => Err(RpcError::method_not_found(other)),
    };
    let id = id?;
    Some(match reply {
        Ok(Some(bytes)) => bytes,
        Ok(None) => return None,
        Err(e) => wire::encode_error(Some(id), &e),
    })
}

/// Like [`encode`], for handlers that may answer later from a task of their own (`Ok(None)`).
fn later<T: Serialize>(
    id: Option<&RawValue>,
    result: Result<Option<T>, RpcError>,
) -> Result<Option<Bytes>, RpcError> {
    match result? {
        Some(v) => encode(id, Ok(v)),
        None => Ok(None),
    }
}

/// Encodes a handler's success for `id` (nothing for a notification).
fn encode<T: Serialize>(
    id: Option<&RawValue>,
    result: Result<T, RpcError>,
) -> Result<Option<Bytes>, RpcError> {
    let value = result?;
    Ok(id.map(|id| wire::encode_result(id, &value)))
}
