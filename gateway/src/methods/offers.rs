//! `tools/register` and `tools/unregister`: a client offers tools from its socket
//! (`crate::calls::offered` hosts them), and what such a client sends back: its answers to the
//! gateway's `tools/call` requests (read in `mod.rs`, before a frame is taken for a request)
//! and `notifications/progress` about them.
//!
//! Offering a tool takes a `register` grant covering its name (or open mode): a refusal
//! (-32002) names the first tool refused, and nothing is registered. Names are checked first
//! (-32602): a malformed one is refused alike with or without a grant. Only a WebSocket can offer
//! tools: a request over `POST /mcp` has no socket to send calls to (-32601 there).

use std::sync::Arc;

use serde_json::value::RawValue;
use switchboard_core::auth::ANONYMOUS;
use switchboard_core::tools::validate_tool_name;
use switchboard_protocol::RpcError;
use switchboard_protocol::jsonrpc::{Response, decode_params};
use switchboard_protocol::methods::tools::{
    OfferedTools, ProgressNotification, ProgressParams, RegisterParams, ToolsRegister,
    ToolsUnregister,
};
use switchboard_protocol::methods::{Method, Notification};

use super::access::Access;
use super::caller::Caller;
use super::encode::{Reply, encode, params};
use crate::calls::offered::Offered;

/// The family's handles.
pub(crate) struct Offers {
    pub(crate) access: Arc<Access>,
    pub(crate) offered: Arc<Offered>,
}

impl Offers {
    /// Routes `tools/register`, `tools/unregister` and `notifications/progress` (`None`: not
    /// one of them).
    pub(crate) async fn route(
        &self,
        caller: &mut Caller,
        id: Option<&RawValue>,
        method: &str,
        raw: Option<&RawValue>,
    ) -> Option<Reply> {
        Some(match method {
            ToolsRegister::NAME if caller.socket => match params::<ToolsRegister>(raw) {
                Ok(p) => match self.register(caller, p).await {
                    Ok(r) => encode(id, &r),
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            },
            ToolsUnregister::NAME if caller.socket => match params::<ToolsUnregister>(raw) {
                Ok(p) => match self.offered.unregister(caller.link.id(), &p.names).await {
                    Ok(tools) => encode(id, &OfferedTools { tools }),
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            },
            ProgressNotification::NAME if caller.offers => {
                // Progress is advisory: one that does not parse is dropped.
                if let Ok(p) = decode_params::<ProgressParams>(raw) {
                    self.offered
                        .progress(
                            caller.link.id(),
                            &p.progress_token,
                            p.progress,
                            p.total,
                            p.message,
                        )
                        .await;
                }
                Ok(None)
            }
            _ => return None,
        })
    }

    async fn register(
        &self,
        caller: &mut Caller,
        p: RegisterParams,
    ) -> Result<OfferedTools, RpcError> {
        // A malformed name is a malformed request, whoever sends it.
        if let Some((t, e)) = p
            .tools
            .iter()
            .find_map(|t| validate_tool_name(&t.name).err().map(|e| (t, e)))
        {
            let name: String = t.name.chars().take(128).collect();
            return Err(RpcError::invalid_params(format!("tool {name:?}: {e}")));
        }
        for t in &p.tools {
            let allowed = match &caller.identity {
                Some(who) => self.access.policy.may_register(who, &t.name),
                None => self.access.policy.is_open(),
            };
            if !allowed {
                return Err(self.access.forbidden("register", &t.name));
            }
        }
        let tools = self
            .offered
            .register(caller.link.id(), &caller.link.tx, p.tools)
            .await?;
        caller.offers = true;
        tracing::debug!(
            conn = caller.link.id(),
            who = caller.identity.as_ref().map_or(ANONYMOUS, |i| &*i.subject),
            "tools registered"
        );
        Ok(OfferedTools { tools })
    }

    /// A response from the client: the answer to one of its calls, if it is one.
    pub(crate) async fn answer(&self, caller: &Caller, response: &Response<'_>) -> bool {
        self.offered.answer(caller.link.id(), response).await
    }

    /// The socket is gone: its tools go, their unanswered calls end.
    pub(crate) async fn gone(&self, caller: &mut Caller) {
        if std::mem::take(&mut caller.offers) {
            self.offered.gone(caller.link.id()).await;
        }
    }
}
