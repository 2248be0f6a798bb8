//! Tool calls on this node, below the methods that take them (`methods/tools.rs`,
//! `methods/tasks.rs`):
//!
//! - `catalog.rs`: the tools live workers announce, schemas compiled once; `list_changed`.
//! - `waiters.rs`: which local calls wait for which execution, and who wants its progress (the
//!   backend's call sink).
//! - `outcome.rs`: reading and waiting for a call's outcome; the one `CallToolResult` builder;
//!   queueing a later reply.
//! - `inflight.rs`: the requests of one connection waiting in tasks of their own.
//! - `offered.rs`: tools offered by clients (`tools/register`), hosted by the node holding
//!   their socket like a worker hosts its tools.
//!
//! Where a call is hashed: `switchboard_core::callhash`, called from `methods/tools.rs`.

pub(crate) mod catalog;
pub(crate) mod inflight;
pub(crate) mod offered;
pub(crate) mod outcome;
pub(crate) mod waiters;
