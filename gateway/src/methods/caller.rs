//! Who is calling, on one connection: what the method handlers know about a connection
//! between its messages (its identity and session, its subscriptions and calls in flight) and
//! how they reach it (its [`Link`]).

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use switchboard_core::auth::{ANONYMOUS, Identity};
use switchboard_protocol::Topic;

use crate::calls::inflight::InFlight;
use crate::limits::RequestLimit;
use crate::sessions::LiveSession;
use crate::transport::Link;

/// See the module docs.
pub(crate) struct Caller {
    /// The connection: its control block and its outbound queue (replies that come later,
    /// events, progress).
    pub(crate) link: Link,
    /// The client's address (behind trusted proxies: the one they name).
    pub(crate) addr: IpAddr,
    /// The connection's name in the cluster-wide connection counts
    /// (`crate::limits::connections`).
    pub(crate) member: String,
    /// Set from the upgrade request's token, or by `hello`.
    pub(crate) identity: Option<Identity>,
    /// `hello` (or `initialize`) succeeded.
    pub(crate) opened: bool,
    /// The socket speaks the `mcp` subprotocol: `initialize` opens it.
    pub(crate) mcp: bool,
    /// A WebSocket (not a request over `POST /mcp`): it may offer tools (`tools/register`).
    pub(crate) socket: bool,
    /// It offered tools: its responses are answers to their calls, and its tools go with it.
    pub(crate) offers: bool,
    /// The stored session (not for MCP connections, which cannot resume).
    pub(crate) live: Option<Arc<LiveSession>>,
    pub(crate) topics: HashSet<Topic>,
    /// Topics a subscription token opened to this connection, with that token's `exp` (Unix
    /// seconds; kept across a `refresh` until then).
    pub(crate) token_topics: HashMap<Topic, Option<u64>>,
    /// An MCP session over HTTP (its id): the task of each of its calls is named after the
    /// session and the request id (`switchboard_core::tasks::session_task_id`), so that a
    /// `notifications/cancelled` sent to any node finds the call.
    pub(crate) task_seed: Option<String>,
    /// Requests waiting in tasks of their own.
    pub(crate) calls: InFlight,
    /// The connection's request budget (`None`: no limit).
    pub(crate) requests: Option<RequestLimit>,
    /// Publishes and calls refused in a row because the identity was over its budget
    /// (`crate::limits::identity`); past `--rate-close-after`, the connection is closed (4029).
    pub(crate) identity_refusals: u32,
    /// A close (code, reason) to start once the current reply is queued, so the client reads
    /// why before the socket closes.
    pub(crate) close_after_reply: Option<(u16, &'static str)>,
}

impl Caller {
    pub(crate) fn new(
        link: Link,
        addr: IpAddr,
        member: String,
        identity: Option<Identity>,
        mcp: bool,
    ) -> Self {
        Caller {
            link,
            addr,
            member,
            identity,
            opened: false,
            mcp,
            socket: false,
            offers: false,
            live: None,
            topics: HashSet::new(),
            token_topics: HashMap::new(),
            task_seed: None,
            calls: InFlight::default(),
            requests: None,
            identity_refusals: 0,
            close_after_reply: None,
        }
    }

    /// Who the caller is: tasks and per-user caches are bound to it.
    pub(crate) fn owner(&self) -> &str {
        self.identity.as_ref().map_or(ANONYMOUS, |i| &*i.subject)
    }

    /// Who per-identity caps and fair shares count against: the subject, or, for an anonymous
    /// caller, `anonymous@<address>`, since anonymous callers are told apart by address only.
    pub(crate) fn cap_identity(&self) -> String {
        match &self.identity {
            Some(i) => i.subject.to_string(),
            None => format!("{ANONYMOUS}@{}", self.addr),
        }
    }
}
