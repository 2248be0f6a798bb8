//! The relay: how events get from the backend to this node's sockets.
//!
//! - `fanout.rs`: where an event fans out: topic -> local subscribers, one encode per event,
//!   `try_send` to each; the backend's topic sink.
//! - `subscriptions.rs`: where a topic's backend subscription is counted (one task, batched
//!   reconcile).
//! - `replays.rs`: where history is read for replays: bounded pages, each read once per node
//!   for all the replays that need it.
//! - `recovery.rs`: after the backend subscription was lost, history read back and held live
//!   events released.

pub(crate) mod fanout;
pub(crate) mod recovery;
pub(crate) mod replays;
pub(crate) mod subscriptions;
