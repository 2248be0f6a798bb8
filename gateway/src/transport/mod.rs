//! The transport layer: WebSocket connections as bytes and frames. It knows nothing of
//! methods, topics or sessions, and imports nothing from the layers above; they reach a socket
//! through a [`Link`] (its [`ConnCtl`] and its outbound queue) and answer its messages as its
//! [`Handler`].
//!
//! - `frames.rs`: where a frame is parsed (client frames) and built (server frames); the one
//!   opcode table.
//! - `queue.rs`: the bounded outbound queue and what goes through it ([`Out`]; a [`Receipt`]
//!   says when an item was written).
//! - `reader.rs`, `writer.rs`: the two sides of one socket; the writer keeps its clocks
//!   (hello, heartbeat, token expiry) and writes the one close frame.
//! - `ctl.rs`: the connection's control block; `conn.rs`: accepting and serving a socket;
//!   `sockets.rs`: what all sockets share (limits, clock, ids); `handler.rs`: the interface to
//!   the method layer; `upgrade.rs`: the HTTP upgrade.

mod conn;
mod ctl;
mod frames;
mod handler;
mod queue;
mod reader;
mod sockets;
mod upgrade;
mod writer;

pub(crate) use conn::{Link, accept, serve};
pub(crate) use ctl::{BeforeClose, ConnCtl};
pub(crate) use frames::text_frame;
pub(crate) use handler::{Answer, Handler};
/// `channel` and `Receiver`: a queue without a socket, for a request over HTTP (`/mcp`).
pub(crate) use queue::{Mark, Out, Receipt, Receiver, Sender, TrySendError, Written, channel};
pub(crate) use sockets::{SocketLimits, Sockets};
pub(crate) use upgrade::{is_upgrade, upgrade};
