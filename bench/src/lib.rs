//! Benchmark scenarios for Switchboard, run by their own binary, `switchboard-bench <scenario>`
//! (`main.rs`, a thin clap edge), so the production `switchboard` binary carries neither the
//! scenarios nor the test harness.
//!
//! A benchmark is a program, never a timed test: it starts the real parts (a `redis-server` on
//! a free port, gateway and worker processes from the `switchboard` binary, found next to
//! `switchboard-bench`), drives them from this process, and prints a table (or JSON). Every figure comes from what was measured in that
//! run: deliveries counted one by one, latency from a timestamp inside each event, CPU and RSS
//! of each gateway process read from `/proc`. The parts are started with the test harness
//! (`switchboard-harness`), so benchmarks and tests run Redis and gateways the same way.
//!
//! - [`fanout`]: N subscribers over K topics on G gateways; a backend publishes through Redis.
//! - [`calls`]: tool calls through gateways, Redis and workers: cache hits, routed misses,
//!   coalesced bursts.
//! - [`mcp_http`]: tool calls over MCP Streamable HTTP (`POST /mcp`), stateless and session
//!   era, cache hits and routed calls.
//! - [`resume`]: sessions resumed on a second gateway after the first is killed with SIGKILL:
//!   time until every client is back and has every missed event, replay rate.
//! - [`storm`]: a reconnect storm: N clients subscribe with `since` to one big history at
//!   once: Redis PING during it, Redis time per client, time until all caught up.
//! - [`idle`]: M idle connections (hello, one subscribe) on G gateways: RSS per connection, and
//!   one event to every topic at the end, none lost.
//! - [`shards`]: past one Redis: the publish rate one `redis-server` saturates at, then what a
//!   Redis Cluster of N primaries sustains, and each shard's CPU per delivered event.
//! - [`cluster`]: the local Redis Cluster `shards` starts, and its gateways (`--redis` or
//!   `--redis-cluster`).
//! - [`connect`]: connections per second through the upgrade and a `hello` with a verified JWT.
//! - [`floor`]: the floor server (`switchboard-bench floor-server`), a minimal broadcast server
//!   that `fanout --target floor` measures Switchboard against.
//! - [`loadgen`]: subscribers in this process or in agent processes (`switchboard-bench agent`).
//! - [`rawws`]: the WebSocket pieces the floor and `connect` write by hand.
//! - [`procstat`]: CPU time and RSS of processes, from `/proc`: the one sampler every scenario
//!   uses (a set of pids sampled together, CPU seconds and cores between two samples).
//! - [`stats`]: percentiles, the latency histogram processes merge (hdrhistogram), the clock
//!   events are stamped with.

pub mod calls;
pub mod cluster;
pub mod connect;
pub mod fanout;
pub mod floor;
pub mod idle;
pub mod loadgen;
pub mod mcp_http;
pub mod procstat;
pub mod rawws;
pub mod resume;
pub mod shards;
pub mod stats;
pub mod storm;
