//! `hello` (and, for MCP clients, `initialize`): authenticate the connection and open its
//! session; `refresh`: a new token in band; `server/discover`, MCP's stateless description of
//! the server. Tokens become identities through the method layer's [`Access`].
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

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::value::RawValue;
use serde_json::{Value, json};
use switchboard_core::auth::Identity;
use switchboard_core::sessions::{Attach, SessionRecord, new_session_id};
use switchboard_protocol::methods::session::{
    Discover, DiscoverResult, Hello, HelloParams, HelloResult, Initialize, InitializeParams,
    InitializeResult, Initialized, Limits, MCP_VERSIONS, Ping, Refresh, RefreshParams,
    RefreshResult, ServerInfo,
};
use switchboard_protocol::methods::tools::ListChanged;
use switchboard_protocol::methods::topics::SubscribeResult;
use switchboard_protocol::methods::{Empty, Method, Notification};
use switchboard_protocol::{ErrorCode, EventId, RpcError, Topic, close, jsonrpc};

use super::access::Access;
use super::caller::Caller;
use super::encode::{Reply, encode, params};
use super::tasks::Tasks;
use super::topics::Topics;
use crate::health::Health;
use crate::limits::connections::{ConnectionCaps, Full};
use crate::metrics::Metrics;
use crate::sessions::Sessions;
use crate::transport::Out;

/// The session methods and the handles they need.
pub(crate) struct Session {
    /// Who may open a connection, and what it may do.
    pub(crate) access: Arc<Access>,
    /// Connections per identity across nodes (counted when a connection opens).
    pub(crate) connection_caps: Arc<ConnectionCaps>,
    pub(crate) sessions: Arc<Sessions>,
    pub(crate) health: Arc<Health>,
    pub(crate) metrics: Arc<Metrics>,
    /// What `hello` announces.
    pub(crate) heartbeat_ms: u64,
    pub(crate) limits: Limits,
}

impl Session {
    /// Routes the session methods: what opens a connection (once: -32600 after that; `hello`
    /// on an MCP connection and `initialize` on a switchboard.v1 one: -32600 saying which one
    /// opens it), and what works before (`server/discover`; `ping` on an MCP socket). `None`:
    /// not one of them, or not before the connection is open.
    pub(crate) async fn route(
        &self,
        caller: &mut Caller,
        id: Option<&RawValue>,
        method: &str,
        raw: Option<&RawValue>,
        topics: &Topics,
        tasks: &Tasks,
    ) -> Option<Reply> {
        Some(match method {
            // Each kind of connection is opened by its own method, whenever it is asked.
            Hello::NAME if caller.mcp => Err(RpcError::invalid_request(
                "this is an MCP connection: initialize opens it (hello is for switchboard.v1 \
                 connections)",
            )),
            Initialize::NAME if !caller.mcp => Err(RpcError::invalid_request(
                "this is a switchboard.v1 connection: hello opens it (initialize is for MCP \
                 connections, WebSocket subprotocol mcp)",
            )),
            Hello::NAME if caller.opened => {
                Err(RpcError::invalid_request("hello was already done"))
            }
            Hello::NAME => {
                // An async block, so that `?` ends the arm with its error.
                async {
                    let p = params::<Hello>(raw)?;
                    encode(id, &self.hello(caller, p, topics, tasks).await?)
                }
                .await
            }
            Initialize::NAME if caller.opened => {
                Err(RpcError::invalid_request("initialize was already done"))
            }
            Initialize::NAME => {
                async {
                    let p = params::<Initialize>(raw)?;
                    let subject = caller.identity.as_ref().map(|i| i.subject.clone());
                    self.admit(caller, subject.as_deref(), false).await?;
                    encode(id, &self.initialize(caller, p)?)
                }
                .await
            }
            Refresh::NAME if caller.opened => {
                async {
                    let p = params::<Refresh>(raw)?;
                    encode(id, &self.refresh(caller, p, topics).await?)
                }
                .await
            }
            Discover::NAME => encode(id, &self.discover()),
            Ping::NAME if caller.mcp || caller.opened => encode(id, &Empty {}),
            Initialized::NAME if caller.opened => Ok(None),
            _ => return None,
        })
    }

    /// Counts the connection for its identity across nodes (anonymous ones count by address
    /// only): over the cap, -32006, then the socket closes with 1013.
    async fn admit(
        &self,
        caller: &mut Caller,
        subject: Option<&str>,
        resuming: bool,
    ) -> Result<(), RpcError> {
        let Some(subject) = subject else {
            return Ok(());
        };
        match self
            .connection_caps
            .admit_identity(&caller.member, subject, resuming)
            .await
        {
            Ok(()) => Ok(()),
            Err(full) => {
                let max = match full {
                    Full::Identity(n) | Full::Address(n) => n,
                };
                caller.close_after_reply = Some((
                    close::TRY_AGAIN_LATER,
                    "too many connections for this identity",
                ));
                Err(RpcError::new(
                    ErrorCode::Overloaded,
                    format!(
                        "too many connections for this identity (at most {max}); try again later"
                    ),
                )
                .with_data(json!({"limit": "maxConnectionsPerIdentity", "max": max})))
            }
        }
    }

    /// `hello`. Restoring a resumed session's subscriptions and owed replies goes through the
    /// topic and task methods.
    pub(crate) async fn hello(
        &self,
        caller: &mut Caller,
        p: HelloParams,
        topics: &Topics,
        tasks: &Tasks,
    ) -> Result<HelloResult, RpcError> {
        // Anonymous: no token now or at the upgrade (counted by address only).
        let anonymous = p.token.is_none() && caller.identity.is_none();
        let identity = match (p.token.as_deref(), caller.identity.take()) {
            (Some(token), _) => match self.access.identify(token).await {
                Ok(identity) => identity,
                Err(e) => return Err(refuse(caller, &e.to_string())),
            },
            (None, Some(identity)) => identity,
            (None, None) if self.access.allow_anonymous => Identity::anonymous(),
            (None, None) => {
                self.access.missing_token();
                return Err(refuse(caller, "token required"));
            }
        };
        if self.health.backend_down() {
            return Err(unavailable(caller, identity));
        }
        if !anonymous
            && let Err(e) = self
                .admit(caller, Some(&identity.subject), p.session.is_some())
                .await
        {
            caller.identity = Some(identity);
            return Err(e);
        }
        let owner = identity.subject.clone();
        let mut resumed = None;
        if let Some(id) = &p.session {
            match self.sessions.attach(id, &owner).await {
                Ok(Attach::Resumed(record)) => resumed = Some((id.clone(), record)),
                Ok(Attach::NotFound) => {}
                Ok(Attach::WrongOwner) => {
                    // Not opened: the socket no longer counts for this identity.
                    self.connection_caps
                        .release_identity(&caller.member, &identity.subject);
                    caller.identity = Some(identity);
                    return Err(RpcError::new(
                        ErrorCode::Unauthorized,
                        "this session belongs to another identity",
                    ));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "attaching a session failed");
                    return Err(unavailable(caller, identity));
                }
            }
        }
        let (id, generation, record) = match resumed {
            Some((id, record)) => (id, record.generation, Some(record)),
            None => {
                let id = new_session_id();
                if let Err(e) = self.sessions.create(&id, &owner).await {
                    tracing::warn!(error = %e, "storing a session failed");
                    return Err(unavailable(caller, identity));
                }
                (id, 1, None)
            }
        };
        let live = self.sessions.open(
            Arc::from(id.as_str()),
            generation,
            owner,
            caller.link.ctl.clone(),
        );
        open(caller, identity);
        caller.live = Some(live.clone());
        let mut restored = Vec::new();
        let was_resumed = record.is_some();
        tracing::Span::current().record("resumed", was_resumed);
        if let Some(record) = record {
            restored = restore(
                caller,
                record,
                p.positions.unwrap_or_default(),
                topics,
                tasks,
            )
            .await;
            self.sessions.save_now(&live).await;
            self.metrics.sessions_resumed.inc();
        }
        Ok(HelloResult {
            session: id,
            resumed: was_resumed,
            node: self.sessions.node_id().to_owned(),
            heartbeat_ms: self.heartbeat_ms,
            limits: self.limits.clone(),
            subscriptions: restored,
        })
    }

    /// `refresh`: the new token must verify and name the same subject (another subject is
    /// -32001 and the socket closes with 1008; a bad token is -32001 and the connection keeps
    /// its old token). The new grants and expiry replace the old ones; subscriptions the new
    /// grants no longer allow are left (except those a subscription token opened).
    pub(crate) async fn refresh(
        &self,
        caller: &mut Caller,
        p: RefreshParams,
        topics: &Topics,
    ) -> Result<RefreshResult, RpcError> {
        let identity = self.access.identify(&p.token).await.map_err(|e| {
            tracing::debug!(conn = caller.link.id(), error = %e, "refresh refused");
            RpcError::new(
                ErrorCode::Unauthorized,
                "unauthorized: bad or expired token",
            )
        })?;
        if caller.identity.as_ref().map(|i| &i.subject) != Some(&identity.subject) {
            caller.close_after_reply = Some((close::POLICY, "refresh with another subject"));
            return Err(RpcError::new(
                ErrorCode::Unauthorized,
                "unauthorized: a refresh must keep the subject",
            ));
        }
        let expires_at = identity.expires_at;
        caller.link.ctl.refreshed(expires_at);
        caller.identity = Some(identity);
        self.access.expire_token_topics(caller);
        let revoked = topics.revoke_forbidden(caller).await;
        // The tools the caller may see may have changed: it lists them again.
        let _ = caller
            .link
            .tx
            .try_send(Out::Text(jsonrpc::encode_notification(
                ListChanged::NAME,
                &Empty {},
            )));
        Ok(RefreshResult {
            expires_at,
            revoked,
        })
    }

    /// MCP `initialize`: the MCP client's `hello`. The token comes from the upgrade request
    /// (header or query); without one, the client is anonymous where the node allows it.
    pub(crate) fn initialize(
        &self,
        caller: &mut Caller,
        p: InitializeParams,
    ) -> Result<InitializeResult, RpcError> {
        let identity = match caller.identity.take() {
            Some(identity) => identity,
            None if self.access.allow_anonymous => Identity::anonymous(),
            None => return Err(refuse(caller, "token required")),
        };
        open(caller, identity);
        let version = p
            .protocol_version
            .filter(|v| MCP_VERSIONS.contains(&v.as_str()))
            .unwrap_or_else(|| MCP_VERSIONS[0].to_owned());
        Ok(InitializeResult {
            protocol_version: version,
            capabilities: mcp_capabilities(),
            server_info: server_info(),
        })
    }

    /// MCP `server/discover`: what the server speaks, without a session.
    pub(crate) fn discover(&self) -> DiscoverResult {
        DiscoverResult {
            supported_versions: MCP_VERSIONS.iter().map(|v| v.to_string()).collect(),
            capabilities: mcp_capabilities(),
            server_info: server_info(),
        }
    }
}

/// A resumed session's subscriptions and owed replies, back on this connection. Replays are
/// sent before the `hello` reply; owed replies whenever their calls finish.
async fn restore(
    caller: &mut Caller,
    record: SessionRecord,
    positions: BTreeMap<String, String>,
    topics: &Topics,
    tasks: &Tasks,
) -> Vec<SubscribeResult> {
    let mut restored = Vec::with_capacity(record.topics.len());
    for (name, stored) in record.topics {
        let Ok(topic) = Topic::new(&name) else {
            continue;
        };
        // No position on a history topic: it was subscribed before its history had any event,
        // so everything there is came after.
        let has_history = topics.has_history(&name);
        let since = positions
            .get(&name)
            .and_then(|s| EventId::parse(s))
            .or(stored)
            .or(has_history.then_some(EventId::ZERO));
        match topics.subscribe_to(caller, topic.clone(), since).await {
            Ok(r) => restored.push(r),
            Err(e) if e.kind() == Some(ErrorCode::Forbidden) => {
                // Not allowed any more (a subscription token's topic asks for its token again):
                // the session stops naming it; the client learns it here.
                if let Some(live) = &caller.live {
                    live.forget(&topic);
                }
                restored.push(SubscribeResult {
                    topic: name,
                    position: None,
                    recovered: Some(false),
                });
            }
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
    tasks.resume_owed(caller, record.requests);
    restored
}

/// Binds the identity to the connection, which is now open.
fn open(caller: &mut Caller, identity: Identity) {
    caller.link.ctl.opened(identity.expires_at);
    tracing::debug!(conn = caller.link.id(), subject = %identity.subject, "session opened");
    caller.identity = Some(identity);
    caller.opened = true;
}

fn server_info() -> ServerInfo {
    ServerInfo {
        name: "switchboard".into(),
        version: env!("CARGO_PKG_VERSION").into(),
    }
}

fn mcp_capabilities() -> Value {
    json!({
        "tools": {"listChanged": true},
        "tasks": {"cancel": {}, "requests": {"tools": {"call": {}}}},
    })
}

/// Answers -32001 and closes the socket with 1008 once the answer is written.
fn refuse(caller: &mut Caller, why: &str) -> RpcError {
    tracing::debug!(conn = caller.link.id(), why, "hello refused");
    caller.close_after_reply = Some((close::POLICY, "bad or expired token"));
    RpcError::new(
        ErrorCode::Unauthorized,
        "unauthorized: bad, expired or missing token",
    )
}

/// No session can be stored now: answers -32603 and closes the socket with 1013 once the
/// answer is written. The identity stays bound for a retry on this socket meanwhile.
fn unavailable(caller: &mut Caller, identity: Identity) -> RpcError {
    caller.identity = Some(identity);
    caller.close_after_reply = Some((
        close::TRY_AGAIN_LATER,
        "backend unavailable, try again later",
    ));
    RpcError::new(
        ErrorCode::Internal,
        "cannot open a session: the backend is unavailable, try again later",
    )
}
