//! The domain Switchboard's nodes share: gateways, workers and the CLI build on it (clients
//! need only the wire protocol, `switchboard-protocol`).
//!
//! A tour of the modules:
//! - [`auth`]: tokens: claims, verification (HMAC, PEM keys, JWKS), minting, and what a token
//!   grants.
//! - [`access`]: who may subscribe, publish and call what: the node's rules plus the token's
//!   grants, default deny.
//! - [`pattern`]: the `*` glob of topic and tool patterns.
//! - [`tools`]: what a worker announces about a tool (the MCP `Tool` plus version, timeout and
//!   cache policy), tool names, a tool's digest.
//! - [`callhash`]: where a call is hashed (RFC 8785 canonical arguments, SHA-256).
//! - [`tasks`]: the task record every call has, and its MCP shape.
//! - [`history`]: topic history rules, the live form of a history event, what a replay reads.
//! - [`sessions`]: a session as stored: owner, generation, subscriptions with positions,
//!   requests owed a reply.
//! - [`calls`]: the call plane's vocabulary: submissions, jobs, progress, worker announcements.
//! - [`backend`]: the backend's roles as traits (topic bus, history, sessions, call plane, job
//!   queue, health); the implementations are the crates `switchboard-memory` and
//!   `switchboard-redis`.
//! - [`metrics`]: the `/metrics` page every node serves: content negotiation, the Prometheus
//!   text format, process and build-info metrics, the admin HTTP server workers use.
//! - [`settings`]: the value parsers every node's configuration shares (durations as `5s`).
//! - [`encoding`], [`clock`]: canonical JSON and hex; Unix time.

pub mod access;
pub mod auth;
pub mod backend;
pub mod callhash;
pub mod calls;
pub mod clock;
pub mod encoding;
pub mod history;
pub mod metrics;
pub mod pattern;
pub mod sessions;
pub mod settings;
pub mod tasks;
pub mod tools;
