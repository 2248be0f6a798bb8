//! Switchboard worker nodes: they will host tools and execute the tool calls that gateways
//! route to them through Redis (the tool-call issue).
//!
//! Nothing lives here yet: the foundation ships the gateway and its topic relay only. The crate
//! exists so the workspace already has the shape the architecture describes
//! (`docs/architecture.md`); the `switchboard worker` command arrives with its implementation.
