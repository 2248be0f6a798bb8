//! Every method of the protocol, defined once: its name, the type of its params and the type
//! of its result ([`Method`]), grouped by family. The gateway decodes a request's params into
//! `M::Params` once, in its dispatch, and hands them to the family's handler; the Rust client
//! sends `M::Params` and reads `M::Result`; the tests use the same types.
//!
//! | family | methods |
//! |---|---|
//! | [`session`] | `hello`, `initialize` (MCP), `notifications/initialized`, `server/discover`, `ping` |
//! | [`topics`] | `subscribe`, `unsubscribe`, `publish` (and the `event` notification, [`crate::event`]) |
//! | [`tools`] | `tools/list`, `tools/call` (and `notifications/progress`, `notifications/tools/list_changed`), `tools/register`, `tools/unregister` |
//! | [`tasks`] | `tasks/get`, `tasks/result`, `tasks/cancel`, `notifications/cancelled` |
//!
//! MCP's `_meta` (an object) is allowed in every method's params: a type that does not read it
//! never sees it ([`crate::jsonrpc::decode_params`]). Other unknown fields are refused (-32602)
//! by Switchboard's own methods (`hello`, `refresh`, `subscribe`, `unsubscribe`, `publish`,
//! `tools/register`, `tools/unregister`)
//! and ignored by MCP's (`initialize`, `ping`, `tools/list`, `tools/call` and its `task`,
//! `tasks/get`, `tasks/result`, `tasks/cancel`, `notifications/*`): fields newer MCP revisions
//! add must not break them.

pub mod result;
pub mod session;
pub mod tasks;
pub mod tools;
pub mod topics;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// A request (or a client notification) of the protocol.
pub trait Method {
    /// The JSON-RPC method name.
    const NAME: &'static str;
    /// The params, as sent (they may borrow from the frame they are read from).
    type Params<'a>: Serialize + Deserialize<'a>;
    /// The result of a request (`()` for a notification, which gets no reply).
    type Result: Serialize + DeserializeOwned;
}

/// A notification the gateway sends.
pub trait Notification {
    const NAME: &'static str;
    type Params: Serialize + DeserializeOwned;
}

/// The result of methods that answer nothing more than success: `{}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

/// Params that are not read (`ping`, `tools/list`'s cursor). The gateway does not decode them
/// at all; as a type, it reads any object.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ignored {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_is_an_empty_object() {
        assert_eq!(serde_json::to_string(&Empty {}).unwrap(), "{}");
        let _: Ignored = serde_json::from_str(r#"{"anything": [1]}"#).unwrap();
    }
}
