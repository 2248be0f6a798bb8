//! Who may do what, checked in one place for every method and every transport: tokens become
//! identities here (the upgrade's, `hello`'s, `refresh`'s and subscription tokens), and every
//! topic and tool operation asks [`Access`] first.
//!
//! The policy (`switchboard_core::access`) is the node's rules plus the caller's grants,
//! default deny. A refusal is -32002 naming the operation and the name as the client gave it,
//! and is the same whether the topic, tool or task exists or not: the check comes before
//! anything looks the name up. Every refusal is counted (`switchboard_forbidden_total`), those
//! of notifications too.

use std::sync::Arc;

use switchboard_core::access::Policy;
use switchboard_core::auth::{
    ANONYMOUS, AuthError, EXP_LEEWAY_SECS, Grants, Identity, Op, Verifier,
};
use switchboard_core::clock::now_secs;
use switchboard_protocol::topic::MCP_STREAM_PREFIX;
use switchboard_protocol::{ErrorCode, RpcError, Topic};

use super::caller::Caller;
use crate::metrics::Metrics;

/// Longest name a refusal repeats back (a topic is at most 200 bytes; a tool name the client
/// sent may be anything).
const MAX_NAME_IN_ERROR: usize = 256;

/// The `reason` label of `switchboard_auth_failures_total` for a refused token.
fn failure_reason(e: &AuthError) -> &'static str {
    match e {
        AuthError::Expired => "expired",
        AuthError::NotYetValid => "not_yet_valid",
        AuthError::Invalid(_) | AuthError::EmptySubject | AuthError::BadGrants(_) => "invalid",
        AuthError::NoKey(_) => "unknown_key",
        AuthError::Settings(_) => "key_unavailable",
    }
}

/// See the module docs.
pub(crate) struct Access {
    pub(crate) policy: Policy,
    /// Verifies tokens; `None` on a node that only takes anonymous clients.
    pub(crate) verifier: Option<Verifier>,
    /// Clients without a token are let in, as `anonymous`.
    pub(crate) allow_anonymous: bool,
    pub(crate) metrics: Arc<Metrics>,
}

impl Access {
    /// The identity a connection token stands for. Where anonymous clients are let in, a token
    /// may not name the subject `anonymous`, which they all share.
    pub(crate) async fn identify(&self, token: &str) -> Result<Identity, AuthError> {
        let identified = self.identify_uncounted(token).await;
        if let Err(e) = &identified {
            self.metrics.auth_failed(failure_reason(e));
        }
        identified
    }

    /// Counts a connection refused because it gave no token where one is required.
    pub(crate) fn missing_token(&self) {
        self.metrics.auth_failed("missing");
    }

    async fn identify_uncounted(&self, token: &str) -> Result<Identity, AuthError> {
        let verifier = self
            .verifier
            .as_ref()
            .ok_or_else(|| AuthError::NoKey("this node verifies no tokens".into()))?;
        let identity = Identity::from_claims(&verifier.verify(token).await?)?;
        if self.allow_anonymous && &*identity.subject == ANONYMOUS {
            return Err(AuthError::Invalid(format!(
                "the subject {ANONYMOUS:?} is the anonymous clients'"
            )));
        }
        Ok(identity)
    }

    /// The caller may do `op` on `topic` (by the rules, its token's grants, or a subscription
    /// token it gave for this topic).
    pub(crate) fn topic(&self, caller: &Caller, op: Op, topic: &Topic) -> Result<(), RpcError> {
        if self.may(caller, op, topic) {
            Ok(())
        } else {
            Err(self.forbidden(op.as_str(), topic.as_str()))
        }
    }

    /// [`topic`](Self::topic) without the refusal: for re-checking subscriptions.
    pub(crate) fn may(&self, caller: &Caller, op: Op, topic: &Topic) -> bool {
        // The gateway's own topics: only a stream's session reads them (opened to it as by a
        // subscription token); no grant reaches them.
        if topic.as_str().starts_with(MCP_STREAM_PREFIX) {
            return op == Op::Sub && caller.token_topics.contains_key(topic);
        }
        let allowed = match &caller.identity {
            Some(who) => self.policy.may(who, op, topic.as_str()),
            None => self.policy.is_open(),
        };
        allowed || (op == Op::Sub && caller.token_topics.contains_key(topic))
    }

    /// Whether the caller may see and call `tool`.
    pub(crate) fn may_call(&self, caller: &Caller, tool: &str) -> bool {
        match &caller.identity {
            Some(who) => self.policy.may_call(who, tool),
            None => self.policy.is_open(),
        }
    }

    pub(crate) fn tool(&self, caller: &Caller, tool: &str) -> Result<(), RpcError> {
        if self.may_call(caller, tool) {
            Ok(())
        } else {
            Err(self.forbidden("call", tool))
        }
    }

    /// `subscribe {topic, token}`: the token must verify, name the connection's subject, and
    /// cover the topic (its `topic` claim, or a `topics` grant with `sub`). The topic is then
    /// the connection's until it unsubscribes, or a `refresh` finds the token's `exp` passed (a
    /// resume on another socket asks again).
    pub(crate) async fn subscription_token(
        &self,
        caller: &mut Caller,
        token: &str,
        topic: &Topic,
    ) -> Result<(), RpcError> {
        let bad = |e: AuthError| {
            tracing::debug!(conn = caller.link.id(), error = %e, "subscription token refused");
            RpcError::new(
                ErrorCode::Unauthorized,
                "unauthorized: bad or expired subscription token",
            )
        };
        let verifier = self
            .verifier
            .as_ref()
            .ok_or_else(|| bad(AuthError::NoKey("this node verifies no tokens".into())))?;
        let claims = verifier.verify(token).await.map_err(bad)?;
        let grants = Grants::from_claims(&claims, true).map_err(bad)?;
        let subject = caller.identity.as_ref().map(|i| &*i.subject);
        if subject != Some(claims.sub.as_str()) || !grants.topic_ops(topic.as_str()).sub {
            return Err(self.forbidden(Op::Sub.as_str(), topic.as_str()));
        }
        caller.token_topics.insert(topic.clone(), claims.exp);
        Ok(())
    }

    /// After a `refresh`: forgets the topics whose subscription token has expired since.
    pub(crate) fn expire_token_topics(&self, caller: &mut Caller) {
        let now = now_secs();
        caller
            .token_topics
            .retain(|_, exp| exp.is_none_or(|exp| exp.saturating_add(EXP_LEEWAY_SECS) > now));
    }

    /// -32002 for `op` on `name`, counted.
    pub(crate) fn forbidden(&self, op: &str, name: &str) -> RpcError {
        self.metrics.forbidden.inc();
        let name: String = name.chars().take(MAX_NAME_IN_ERROR).collect();
        RpcError::new(ErrorCode::Forbidden, format!("forbidden: {op} {name}"))
            .with_data(serde_json::json!({"operation": op, "name": name}))
    }
}
