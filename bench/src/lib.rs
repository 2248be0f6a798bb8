//! Benchmark scenarios for Switchboard, run by `switchboard bench <scenario>`.
//!
//! A benchmark is a program, never a timed test: it starts the real parts (a `redis-server` on
//! a free port, gateway processes from the `switchboard` binary), drives them from this
//! process, and prints a table (or JSON). Every figure comes from what was measured in that
//! run: deliveries counted one by one, latency from a timestamp inside each event, CPU and RSS
//! of each gateway process read from `/proc`. The parts are started with the test harness
//! (`switchboard-harness`), so benchmarks and tests run Redis and gateways the same way.
//!
//! - [`fanout`]: N subscribers over K topics on G gateways; a backend publishes through Redis.
//! - [`calls`]: tool calls through gateways, Redis and workers: cache hits, routed misses,
//!   coalesced bursts.
//! - [`resume`]: sessions resumed on a second gateway after the first is killed with SIGKILL:
//!   time until every client is back and has every missed event, replay rate.
//! - [`procstat`]: CPU time and RSS of a process, from `/proc`.
//! - [`stats`]: percentile arithmetic.

pub mod calls;
pub mod fanout;
pub mod procstat;
pub mod resume;
pub mod stats;
