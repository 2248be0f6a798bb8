//! A Switchboard worker: it hosts tools and executes the calls gateways route to it through
//! the backend. Workers and gateways never talk directly; either side scales, restarts or fails
//! alone.
//!
//! - [`tools`]: the tool interface, the toolbox, the built-in demo tools, command tools.
//! - [`runner`]: the job loop: fetch, run with heartbeats, reclaim from silent workers,
//!   dead-letter, cancel, announce in the registry.
//! - [`backlog`]: the jobs fetched and not started, per owner, and which starts next
//!   (round-robin across owners, a running cap per owner): fairness between identities.
//! - [`config`]: every bound and timeout with its default.
//! - [`metrics`]: what the worker's admin port (`--admin-listen`) shows: jobs by outcome,
//!   their durations, running and waiting jobs, queue depths, dead letters, readiness.

pub mod backlog;
pub mod config;
pub mod metrics;
pub mod runner;
pub mod tools;

pub use config::WorkerConfig;
pub use metrics::WorkerMetrics;
pub use runner::{RunError, run, run_observed};
pub use tools::Toolbox;
