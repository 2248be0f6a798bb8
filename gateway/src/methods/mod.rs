//! The method layer: what a request does, whatever carries it. [`Methods::dispatch`] parses a
//! message into the method's typed params (`switchboard_protocol::methods`) once, enforces the
//! rules every method shares, calls the family's handler, and encodes its typed result:
//!
//! - `access.rs`: who may do what: tokens become identities, every topic and tool operation is
//!   checked against the node's rules and the caller's grants (-32002 when refused);
//! - `session.rs`: `hello`, `refresh`, `initialize`, `server/discover`, `ping`;
//! - `topics.rs`: `subscribe`, `unsubscribe`, `publish`;
//! - `tools.rs`: `tools/list`, `tools/call`;
//! - `offers.rs`: `tools/register`, `tools/unregister`: tools a client offers from its socket,
//!   and its answers to the calls of them;
//! - `tasks.rs`: `tasks/get`, `tasks/result`, `tasks/cancel`, `notifications/cancelled`.
//!
//! Each family routes its own methods (a `route` that matches the method names it owns), so a
//! new method touches only its family's module (and the protocol crate, for its types).
//! Handlers take the [`Caller`] (the connection's identity, session, subscriptions and calls in
//! flight) and the handles their family holds, never the whole node. The rules enforced here,
//! once: every message spends the connection's rate budget (`crate::limits`; -32003 over it,
//! close 4029 for a client that keeps on); every `publish` and `tools/call` of an opened
//! connection also spends its identity's budget, shared by every node
//! (`crate::limits::identity`; the same -32003 and 4029), before its params are read;
//! everything but what opens a connection (`hello`, `initialize`, `server/discover`, and `ping`
//! on MCP sockets) needs an opened connection (-32001); a notification gets no reply, not even
//! an error.
//!
//! [`Connection`] is a WebSocket's [`Handler`]: the reader hands it each message.

mod access;
pub(crate) mod caller;
mod encode;
mod offers;
mod session;
mod tasks;
mod tools;
mod topics;

use std::sync::Arc;
use std::time::Duration;

use serde_json::value::RawValue;
use switchboard_core::backend::Budget;
use switchboard_protocol::jsonrpc;
use switchboard_protocol::methods::Method;
use switchboard_protocol::methods::tools::ToolsCall;
use switchboard_protocol::methods::topics::Publish;
use switchboard_protocol::{ErrorCode, RpcError, close};

pub(crate) use self::access::Access;
pub(crate) use self::caller::Caller;
use self::encode::Reply;
pub(crate) use self::offers::Offers;
pub(crate) use self::session::Session;
pub(crate) use self::tasks::Tasks;
pub(crate) use self::tools::{CallSettings, Tools};
pub(crate) use self::topics::{TopicSettings, Topics};
use tracing::Instrument;

use crate::conns::Registration;
use crate::limits::identity::{IdentityRates, Refusal};
use crate::limits::{RequestRate, Verdict};
use crate::transport::{Answer, Handler};

/// Every method family, with its handles.
pub(crate) struct Methods {
    /// Each connection's request budget.
    pub(crate) rate: RequestRate,
    /// Each identity's budgets of publishes and calls, across nodes.
    pub(crate) identity_rates: Arc<IdentityRates>,
    pub(crate) session: Session,
    pub(crate) topics: Topics,
    pub(crate) tools: Tools,
    pub(crate) tasks: Tasks,
    pub(crate) offers: Offers,
}

impl Methods {
    /// Handles one message; see the module docs.
    pub(crate) async fn dispatch(&self, caller: &mut Caller, text: &str) -> Answer {
        // A socket that offers tools answers the calls the node sent it: no reply to a
        // response, and an answer to a call it was sent spends no budget.
        if caller.offers
            && let Some(response) = jsonrpc::parse_response(text)
        {
            if !self.offers.answer(caller, &response).await {
                tracing::debug!(
                    conn = caller.link.id(),
                    "a response to no call of this socket; ignored"
                );
                let _ = self.spend(caller);
            }
            return Answer {
                reply: None,
                then_close: caller.close_after_reply.take(),
            };
        }
        // Every message spends the budget, unreadable ones too.
        let refused = self.spend(caller);
        let reply = match (jsonrpc::parse_request(text), refused) {
            (Err(bad), None) => Some(jsonrpc::encode_error(bad.id, &bad.error)),
            (Err(_), Some(_)) => None,
            (Ok(req), Some(wait)) => req.id.map(|id| {
                jsonrpc::encode_error(Some(id), &rate_limited("rate limited: slow down", wait))
            }),
            (Ok(req), None) => match (req.id, {
                // One span per request, only with tracing on (`crate::traced`).
                let span = crate::traced::request(
                    self.session.sessions.node_id(),
                    caller,
                    &req.method,
                    req.params,
                );
                let routed = self
                    .route(caller, req.id, &req.method, req.params)
                    .instrument(span.clone())
                    .await;
                crate::traced::record_caller(&span, caller);
                routed
            }) {
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

    /// Spends one message of the connection's budget: `None` when it had one, else how long
    /// to wait (zero for a connection now being closed, 4029, for not waiting).
    fn spend(&self, caller: &mut Caller) -> Option<Duration> {
        let verdict = caller.requests.as_mut()?.check();
        let wait = match verdict {
            Verdict::Allowed => return None,
            Verdict::Refused(wait) => wait,
            Verdict::Close => {
                caller.close_after_reply = Some((
                    close::RATE_LIMITED,
                    "rate limited: too many requests after -32003",
                ));
                Duration::ZERO
            }
        };
        self.session.metrics.requests_rate_limited.inc();
        Some(wait)
    }

    /// Spends one of the caller's identity budget when `method` is a `publish` or a
    /// `tools/call`: -32003 over it (and, after `--rate-close-after` refusals in a row, close
    /// 4029), -32603 when the backend could not be asked.
    async fn spend_identity(&self, caller: &mut Caller, method: &str) -> Result<(), RpcError> {
        let (budget, message) = match method {
            Publish::NAME => (
                Budget::Publishes,
                "rate limited: too many publishes for this identity, slow down",
            ),
            ToolsCall::NAME => (
                Budget::Calls,
                "rate limited: too many tool calls for this identity, slow down",
            ),
            _ => return Ok(()),
        };
        let Some(identity) = caller.identity.as_ref().map(|i| i.subject.clone()) else {
            return Ok(());
        };
        let wait = match self.identity_rates.spend(budget, &identity).await {
            Ok(()) => {
                caller.identity_refusals = 0;
                return Ok(());
            }
            Err(Refusal::Unavailable) => return Err(RpcError::backend_unavailable()),
            Err(Refusal::Wait(wait)) => wait,
        };
        self.session.metrics.identity_rate_limited.inc();
        caller.identity_refusals = caller.identity_refusals.saturating_add(1);
        if caller.identity_refusals > self.rate.close_after() {
            caller.close_after_reply = Some((
                close::RATE_LIMITED,
                "rate limited: too many requests after -32003",
            ));
            return Err(rate_limited(message, Duration::ZERO));
        }
        Err(rate_limited(message, wait))
    }

    /// Each family routes its own methods (`None`: not one of them).
    async fn route(
        &self,
        caller: &mut Caller,
        id: Option<&RawValue>,
        method: &str,
        raw: Option<&RawValue>,
    ) -> Reply {
        // Opening a connection, and what works before it is open.
        if let Some(reply) = self
            .session
            .route(caller, id, method, raw, &self.topics, &self.tasks)
            .await
        {
            return reply;
        }
        if !caller.opened {
            return Err(RpcError::new(
                ErrorCode::Unauthorized,
                if caller.mcp {
                    "send initialize first"
                } else {
                    "send hello first"
                },
            ));
        }
        if let Err(e) = self.spend_identity(caller, method).await {
            if method == ToolsCall::NAME && e.code == ErrorCode::RateLimited.code() {
                self.tools.rate_limited(raw);
            }
            return Err(e);
        }
        if let Some(reply) = self.topics.route(caller, id, method, raw).await {
            return reply;
        }
        if let Some(reply) = self.tools.route(caller, id, method, raw) {
            return reply;
        }
        if let Some(reply) = self.tasks.route(caller, id, method, raw).await {
            return reply;
        }
        if let Some(reply) = self.offers.route(caller, id, method, raw).await {
            return reply;
        }
        Err(RpcError::method_not_found(method))
    }
}

/// -32003 with `retryAfterMs` (rounded up: a client that waits as told is not refused again for
/// a fraction of a millisecond).
fn rate_limited(message: &'static str, wait: Duration) -> RpcError {
    let retry_ms = wait.as_nanos().div_ceil(1_000_000) as u64;
    RpcError::new(ErrorCode::RateLimited, message)
        .with_data(serde_json::json!({ "retryAfterMs": retry_ms }))
}

/// One WebSocket's handler: the methods, who calls them on this socket, and the socket's place
/// in the node's registry (left when the connection is gone).
pub(crate) struct Connection {
    methods: Arc<Methods>,
    caller: Caller,
    _registration: Registration,
}

impl Connection {
    pub(crate) fn new(methods: Arc<Methods>, caller: Caller, registration: Registration) -> Self {
        Connection {
            methods,
            caller,
            _registration: registration,
        }
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
        self.methods.offers.gone(&mut self.caller).await;
    }
}

impl Drop for Connection {
    /// Releases every subscription of a closed connection, its session if nobody detached it
    /// (a handler panicked) and its place in the cluster-wide connection counts: drop guards,
    /// so a panic cleans up too. The registration goes last.
    fn drop(&mut self) {
        if let Some(live) = self.caller.live.take() {
            self.methods.session.sessions.remove(&live);
        }
        self.methods.topics.release_all(&mut self.caller);
        if self.caller.offers {
            // Not through `closed` (a handler panicked): the tools still go.
            let offered = self.methods.offers.offered.clone();
            let conn = self.caller.link.id();
            tokio::spawn(async move { offered.gone(conn).await });
        }
        self.methods
            .session
            .connection_caps
            .release(&self.caller.member);
    }
}
