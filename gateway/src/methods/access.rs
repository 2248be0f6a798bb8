//! Who may do what, checked in one place for every method and every transport: tokens become
//! identities here (the upgrade's, `hello`'s, `refresh`'s and subscription tokens), and every
//! topic and tool operation asks [`Access`] first.
//!
//! The policy (`switchboard_core::access`) is the node's rules plus the caller's grants,
//! default deny. A refusal is -32002 naming the operation and the name as the client gave it,
//! and is the same whether the topic, tool or task exists or not: the check comes before
//! anything looks the name up.

use switchboard_core::access::Policy;
use switchboard_core::auth::{AuthError, Grants, Identity, Op, Verifier};
use switchboard_protocol::{ErrorCode, RpcError, Topic};

use super::caller::Caller;

/// Longest name a refusal repeats back.
const MAX_NAME_IN_ERROR: usize = 128;

/// See the module docs.
pub(crate) struct Access {
    pub(crate) policy: Policy,
    /// Verifies tokens; `None` on a node that only takes anonymous clients.
    pub(crate) verifier: Option<Verifier>,
    /// Clients without a token are let in, as `anonymous`.
    pub(crate) allow_anonymous: bool,
}

impl Access {
    /// The identity a connection token stands for.
    pub(crate) async fn identify(&self, token: &str) -> Result<Identity, AuthError> {
        let verifier = self
            .verifier
            .as_ref()
            .ok_or_else(|| AuthError::NoKey("this node verifies no tokens".into()))?;
        Identity::from_claims(&verifier.verify(token).await?)
    }

    /// The caller may do `op` on `topic` (by the rules, its token's grants, or a subscription
    /// token it gave for this topic).
    pub(crate) fn topic(&self, caller: &Caller, op: Op, topic: &Topic) -> Result<(), RpcError> {
        let allowed = match &caller.identity {
            Some(who) => self.policy.may(who, op, topic.as_str()),
            None => self.policy.is_open(),
        };
        if allowed || (op == Op::Sub && caller.token_topics.contains(topic)) {
            Ok(())
        } else {
            Err(forbidden(op.as_str(), topic.as_str()))
        }
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
            Err(forbidden("call", tool))
        }
    }

    /// `subscribe {topic, token}`: the token must verify, name the connection's subject, and
    /// cover the topic (its `topic` claim, or a `topics` grant with `sub`). The topic is then
    /// the connection's until it unsubscribes (a resume on another socket asks again).
    pub(crate) async fn subscription_token(
        &self,
        caller: &mut Caller,
        token: &str,
        topic: &Topic,
    ) -> Result<(), RpcError> {
        let verifier = self.verifier.as_ref().ok_or_else(|| {
            RpcError::new(ErrorCode::Unauthorized, "this node verifies no tokens")
        })?;
        let claims = verifier.verify(token).await.map_err(|e| {
            tracing::debug!(conn = caller.link.id(), error = %e, "subscription token refused");
            RpcError::new(
                ErrorCode::Unauthorized,
                "unauthorized: bad or expired subscription token",
            )
        })?;
        let subject = caller.identity.as_ref().map(|i| &*i.subject);
        let covers = Grants::from_claims(&claims, true)
            .map(|g| g.topic_ops(topic.as_str()).sub)
            .unwrap_or(false);
        if subject != Some(claims.sub.as_str()) || !covers {
            return Err(forbidden(Op::Sub.as_str(), topic.as_str()));
        }
        caller.token_topics.insert(topic.clone());
        Ok(())
    }
}

/// -32002 for `op` on `name`.
pub(crate) fn forbidden(op: &str, name: &str) -> RpcError {
    let name: String = name.chars().take(MAX_NAME_IN_ERROR).collect();
    RpcError::new(ErrorCode::Forbidden, format!("forbidden: {op} {name}"))
        .with_data(serde_json::json!({"operation": op, "name": name}))
}
