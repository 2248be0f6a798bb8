//! Switchboard's wire protocol, as types: what crosses a client's socket, defined once and used
//! by the gateway (which parses requests into these types once), the Rust client (which sends
//! them) and the tests. It depends on serde, serde_json, bytes and thiserror only: no runtime,
//! no Redis, no JWT.
//!
//! A tour:
//! - [`jsonrpc`]: the JSON-RPC 2.0 envelope: parsing a client frame, encoding results, errors
//!   and notifications; error codes and [`RpcError`].
//! - [`close`]: the WebSocket close codes the gateway uses.
//! - [`topic`]: what a valid topic name is.
//! - [`event`]: event ids (`<ms>-<seq>`), the `event` notification (encoded once per event),
//!   and the check every published payload passes.
//! - [`methods`]: every method: its name, params and result ([`methods::Method`]), grouped
//!   by family (session, topics, tools, tasks), and the notifications the gateway sends.
//!
//! `docs/protocol.md` is the prose of the same contract.

pub mod close;
pub mod event;
pub mod jsonrpc;
mod meta;
pub mod methods;
pub mod topic;

/// The WebSocket subprotocol of Switchboard clients (assumed when a client offers none).
pub const SUBPROTOCOL: &str = "switchboard.v1";
/// The WebSocket subprotocol of unmodified MCP clients (`initialize` instead of `hello`).
pub const MCP_SUBPROTOCOL: &str = "mcp";

pub use event::EventId;
pub use jsonrpc::{ErrorCode, RpcError};
pub use topic::Topic;
