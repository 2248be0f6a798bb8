//! The method layer: what a request does, whatever carries it. [`Methods::dispatch`] parses a
//! message into the method's typed params (`switchboard_protocol::methods`) once, enforces the
//! rules every method shares, calls the family's handler, and encodes its typed result:
//!
//! - `session.rs`: `hello`, `initialize`, `server/discover`, `ping`;
//! - `topics.rs`: `subscribe`, `unsubscribe`, `publish`;
//! - `tools.rs`: `tools/list`, `tools/call`;
//! - `tasks.rs`: `tasks/get`, `tasks/result`, `tasks/cancel`, `notifications/cancelled`.
//!
//! Handlers take the [`Caller`] (the connection's identity, session, subscriptions and calls in
//! flight) and the handles their family holds, never the whole node. The rules enforced here,
//! once: everything but `hello` / `initialize` / `server/discover` (and `ping` on MCP sockets)
//! needs an opened connection (-32001); a connection is opened once (-32600); a notification
//! gets no reply, not even an error.
//!
//! [`Connection`] is a WebSocket's [`Handler`]: the reader hands it each message.

mod caller;
mod session;
mod tasks;
mod tools;
mod topics;

use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;
use serde_json::value::RawValue;
use switchboard_protocol::jsonrpc::{self, decode_params};
use switchboard_protocol::methods::session::{Discover, Hello, Initialize, Initialized, Ping};
use switchboard_protocol::methods::tasks::{Cancelled, TasksCancel, TasksGet, TasksResult};
use switchboard_protocol::methods::tools::{ToolsCall, ToolsList};
use switchboard_protocol::methods::topics::{Publish, Subscribe, Unsubscribe};
use switchboard_protocol::methods::{Empty, Method};
use switchboard_protocol::{ErrorCode, RpcError};

pub(crate) use self::caller::Caller;
pub(crate) use self::session::Session;
pub(crate) use self::tasks::Tasks;
pub(crate) use self::tools::{CallSettings, Tools};
pub(crate) use self::topics::{TopicSettings, Topics};
use crate::transport::{Answer, Handler};

/// Every method family, with its handles.
pub(crate) struct Methods {
    pub(crate) session: Session,
    pub(crate) topics: Topics,
    pub(crate) tools: Tools,
    pub(crate) tasks: Tasks,
}

/// What a handler's outcome becomes: the encoded reply to send now, or `None` (a notification,
/// or a reply that a task of its own sends later).
type Reply = Result<Option<Bytes>, RpcError>;

/// A method's params, decoded into its type (-32602 with serde's reason when they do not fit).
fn params<'a, M: Method>(raw: Option<&'a RawValue>) -> Result<M::Params<'a>, RpcError> {
    decode_params(raw)
}

/// Encodes a result for `id` (nothing for a notification).
fn encode<T: Serialize>(id: Option<&RawValue>, result: &T) -> Reply {
    Ok(id.map(|id| jsonrpc::encode_result(id, result)))
}

/// Encodes a result that may come later (`None`: a task of its own answers).
fn encode_later<T: Serialize>(id: Option<&RawValue>, result: Option<T>) -> Reply {
    match result {
        Some(r) => encode(id, &r),
        None => Ok(None),
    }
}

impl Methods {
    /// Handles one message; see the module docs.
    pub(crate) async fn dispatch(&self, caller: &mut Caller, text: &str) -> Answer {
        let reply = match jsonrpc::parse_request(text) {
            Err(bad) => Some(jsonrpc::encode_error(bad.id, &bad.error)),
            Ok(req) => match (
                req.id,
                self.route(caller, req.id, &req.method, req.params).await,
            ) {
                (None, _) => None,
                (Some(_), Ok(reply)) => reply,
                (Some(id), Err(e)) => Some(jsonrpc::encode_error(Some(id), &e)),
            },
        };
        Answer {
            reply,
            then_close: caller.close_after_reply.take(),
        }
    }

    async fn route(
        &self,
        caller: &mut Caller,
        id: Option<&RawValue>,
        method: &str,
        raw: Option<&RawValue>,
    ) -> Reply {
        match method {
            Hello::NAME => {
                if caller.opened {
                    return Err(RpcError::invalid_request("hello was already done"));
                }
                let p = params::<Hello>(raw)?;
                let r = self
                    .session
                    .hello(caller, p, &self.topics, &self.tasks)
                    .await?;
                encode(id, &r)
            }
            Initialize::NAME => {
                if caller.opened {
                    return Err(RpcError::invalid_request("initialize was already done"));
                }
                let p = params::<Initialize>(raw)?;
                encode(id, &self.session.initialize(caller, p)?)
            }
            Discover::NAME => encode(id, &self.session.discover()),
            Ping::NAME if caller.mcp || caller.opened => encode(id, &Empty {}),
            _ if !caller.opened => Err(RpcError::new(
                ErrorCode::Unauthorized,
                if caller.mcp {
                    "send initialize first"
                } else {
                    "send hello first"
                },
            )),
            Initialized::NAME => Ok(None),
            Subscribe::NAME => {
                let p = params::<Subscribe>(raw)?;
                encode(id, &self.topics.subscribe(caller, p).await?)
            }
            Unsubscribe::NAME => {
                let p = params::<Unsubscribe>(raw)?;
                encode(id, &self.topics.unsubscribe(caller, p).await?)
            }
            Publish::NAME => {
                let p = params::<Publish>(raw)?;
                encode(id, &self.topics.publish(p).await?)
            }
            ToolsList::NAME => encode(id, &self.tools.list()),
            ToolsCall::NAME => {
                let p = params::<ToolsCall>(raw)?;
                encode_later(id, self.tools.call(caller, id, p)?)
            }
            TasksGet::NAME => {
                let p = params::<TasksGet>(raw)?;
                encode(id, &self.tasks.get(caller, p).await?)
            }
            TasksResult::NAME => {
                let p = params::<TasksResult>(raw)?;
                encode_later(id, self.tasks.result(caller, id, p).await?)
            }
            TasksCancel::NAME => {
                let p = params::<TasksCancel>(raw)?;
                encode(id, &self.tasks.cancel(caller, p).await?)
            }
            Cancelled::NAME => {
                // A notification: params that do not fit are ignored, like everything else
                // about it.
                if let Ok(p) = params::<Cancelled>(raw) {
                    self.tasks.cancelled(caller, p);
                }
                Ok(None)
            }
            other => Err(RpcError::method_not_found(other)),
        }
    }
}

/// One WebSocket's handler: the methods, and who calls them on this socket.
pub(crate) struct Connection {
    methods: Arc<Methods>,
    caller: Caller,
}

impl Connection {
    pub(crate) fn new(methods: Arc<Methods>, caller: Caller) -> Self {
        Connection { methods, caller }
    }
}

impl Handler for Connection {
    fn message(&mut self, text: &str) -> impl Future<Output = Answer> + Send {
        self.methods.dispatch(&mut self.caller, text)
    }

    /// The socket is gone: its session is saved with the session ttl (unless the writer did it
    /// before its close frame).
    async fn closed(&mut self) {
        if let Some(live) = self.caller.live.take() {
            self.methods.session.sessions.detach(&live).await;
        }
    }
}

impl Drop for Connection {
    /// Releases every subscription of a closed connection, and its session if nobody detached
    /// it (a handler panicked): drop guards, so a panic cleans up too.
    fn drop(&mut self) {
        if let Some(live) = self.caller.live.take() {
            self.methods.session.sessions.remove(&live);
        }
        self.methods.topics.release_all(&mut self.caller);
    }
}
