//! A Switchboard gateway node: it terminates WebSockets, speaks JSON-RPC 2.0 to clients, and
//! relays topics and tool calls through the backend (Redis in production), so that clients on
//! every node share them. Gateways keep no state that matters beyond a connection: everything
//! shared lives in the backend.
//!
//! The layers, each importing only those below it:
//!
//! 1. `node/` (the composition root): builds everything from the
//!    configuration and the backend, wires it, runs the background tasks, serves the port
//!    (`node/http.rs`), drains. Nothing imports it.
//! 2. `methods/`: what each request does, one module per family (session, topics, tools,
//!    tasks); typed params in, typed results out; dispatch parses once.
//! 3. The node's services, which methods use: `relay/` (fan-out, the backend subscription
//!    count, recovery), `calls/` (catalogue, waiters, outcomes, calls in flight), `sessions/`
//!    (live sessions, positions, saving, takeover), `conns.rs` (the connection registry),
//!    `limits.rs` (rate limits), `health.rs`, `metrics.rs`.
//! 4. `transport/`: WebSocket connections as bytes and frames (reader, writer, outbound
//!    queue, upgrade) and the handler interface the method layer implements.
//!
//! [`config`] is read by the root only. `docs/architecture.md` is the map.

mod calls;
pub mod config;
mod conns;
mod health;
mod limits;
mod methods;
mod metrics;
mod node;
mod relay;
mod sessions;
mod traced;
mod transport;

pub use crate::config::{AuthConfig, ConfigError, GatewayConfig};
pub use crate::node::{GatewayError, listen, run, run_with_admin};
