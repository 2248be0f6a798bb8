//! The shared vocabulary of Switchboard, used by the gateway, the worker, the client and the CLI.
//!
//! A tour of the modules:
//! - [`wire`]: the JSON-RPC 2.0 envelope as it crosses the socket: parsing a client frame,
//!   encoding responses, errors and the `event` notification, and the error and close codes.
//! - [`topic`]: what a valid topic name is (PROTOCOL.md section 6).
//! - [`auth`]: HS256 JWT claims, verification and minting (`switchboard token`).
//! - [`keys`]: the Redis key and channel schema; every name in Redis is built here.
//! - [`tools`]: the MCP `Tool` and `CallToolResult` shapes, tool names, cache policy.
//! - [`callhash`]: where a call is hashed (RFC 8785 canonical arguments, SHA-256).
//! - [`tasks`]: the task record every call has, and its MCP shape.
//! - [`history`]: topic history rules, event ids, the live form of a history event.
//! - [`sessions`]: a session as stored: owner, generation, subscriptions with positions,
//!   requests owed a reply.
//! - [`calls`]: the call plane: submissions, jobs, the worker's queue interface.
//! - [`backend`]: the narrow interface a gateway needs from its shared state (publish,
//!   subscribe, health), with an in-memory implementation for `switchboard dev` and tests and a
//!   Redis implementation for production.

pub mod auth;
pub mod backend;
pub mod callhash;
pub mod calls;
pub mod history;
pub mod keys;
pub mod sessions;
pub mod tasks;
pub mod tools;
pub mod topic;
pub mod wire;
