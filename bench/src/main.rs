//! `switchboard-bench`: the benchmark suite's own binary, so the production `switchboard`
//! binary (and its Docker image) carries neither the scenarios nor the test harness they start
//! processes with. A thin edge over the library: it parses the command line (clap), runs one
//! scenario and prints its report as a table or JSON. Exit codes as `switchboard`'s: 64 for an
//! invalid command line or setting, 1 for a runtime failure.
//!
//! Gateways and workers are the real `switchboard` binary, found next to this executable
//! (`target/release/` holds both) or given with `--switchboard PATH` (`SWITCHBOARD_BIN`).
//! Load-generator agents and the floor server are this binary, run again as
//! `switchboard-bench agent` and `switchboard-bench floor-server` (hidden subcommands).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, anyhow};
use clap::{Parser, Subcommand};
use switchboard_bench::calls::{self, CallMode, CallsOptions};
use switchboard_bench::connect::{self, ConnectBenchOptions, TokenAlg};
use switchboard_bench::fanout::{self, FanoutOptions};
use switchboard_bench::floor::{self, FloorServerOptions};
use switchboard_bench::idle::{self, IdleOptions};
use switchboard_bench::loadgen::{self, Stage, Target};
use switchboard_bench::mcp_http::{self, Era, HttpCallMode, McpHttpOptions};
use switchboard_bench::resume::{self, ResumeOptions};
use switchboard_bench::shards::{self, Method, Runs, ShardsOptions};
use switchboard_bench::storm::{self, StormOptions};

/// Exit code for an invalid command line or setting (EX_USAGE).
const EXIT_USAGE: u8 = 64;

#[derive(Parser, Debug)]
#[command(
    name = "switchboard-bench",
    version,
    about = "Benchmarks for Switchboard: starts Redis, gateways, workers and load generators, \
             measures, and reports"
)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
    /// Print the report as JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    /// The `switchboard` binary that gateways and workers are started from [default: the one
    /// next to this executable].
    #[arg(long, env = "SWITCHBOARD_BIN", global = true, value_name = "PATH")]
    switchboard: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Scenario {
    /// Subscribers over topics and gateways; a backend publishes through Redis at a set rate.
    Fanout {
        /// What the subscribers connect to: Switchboard gateways, or the floor server.
        #[arg(long, value_parser = ["switchboard", "floor"], default_value = "switchboard")]
        target: String,
        /// Run the floor, then Switchboard, with the same subscribers and rate, and compare.
        #[arg(long, conflicts_with = "target")]
        compare_floor: bool,
        /// Gateway processes.
        #[arg(long, default_value_t = 2)]
        gateways: usize,
        /// Subscribers (one connection each).
        #[arg(long, default_value_t = 1000)]
        subscribers: usize,
        /// Topics the subscribers spread over.
        #[arg(long, default_value_t = 1)]
        topics: usize,
        /// Events per second, per topic.
        #[arg(long, default_value_t = 100)]
        rate: u64,
        /// Seconds to publish for.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Bytes of padding in each event.
        #[arg(long, default_value_t = 100)]
        payload_bytes: usize,
        /// Loopback source addresses to connect from (127.0.0.1 ...).
        #[arg(long, default_value_t = 1)]
        sources: usize,
        /// Load-generator child processes holding the subscribers [default: none up to 19 000
        /// subscribers, else as few as can hold them].
        #[arg(long)]
        agents: Option<usize>,
        /// Connections opened at once per load-generator process.
        #[arg(long, default_value_t = fanout::CONNECT_CONCURRENCY)]
        connect_concurrency: usize,
        /// The floor server's broadcast tasks (0: one per core).
        #[arg(long, default_value_t = 0)]
        floor_shards: usize,
    },
    /// Idle connections (hello and one subscribe each): gateway RSS per connection.
    Idle {
        /// Connections, all gateways.
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        /// Gateway processes (each holds at most about 19 980 connections).
        #[arg(long, default_value_t = 1)]
        gateways: usize,
        /// Topics the connections spread over (one subscribe each).
        #[arg(long, default_value_t = 100)]
        topics: usize,
        /// Loopback source addresses to connect from (127.0.0.1 ...).
        #[arg(long, default_value_t = 4)]
        sources: usize,
        /// Connections opened at once per load-generator process.
        #[arg(long, default_value_t = fanout::CONNECT_CONCURRENCY)]
        connect_concurrency: usize,
        /// How far each connection goes: subscribe (the scenario), or stop after the upgrade or
        /// the hello to see what each step costs.
        #[arg(long, value_parser = ["upgrade", "hello", "subscribe"], default_value = "subscribe")]
        stage: String,
        /// Load-generator child processes holding the connections [default: none up to 19 000
        /// connections, else as few as can hold them].
        #[arg(long)]
        agents: Option<usize>,
        /// Wait after the last connection before sampling RSS (ms).
        #[arg(long, default_value_t = 2000)]
        settle_ms: u64,
        /// RSS samples after settling (the largest is kept).
        #[arg(long, default_value_t = 5)]
        samples: usize,
        /// Between RSS samples (ms).
        #[arg(long, default_value_t = 200)]
        sample_interval_ms: u64,
        /// Bound on the final check that every connection gets its topic's event (ms).
        #[arg(long, default_value_t = 10_000)]
        deliver_timeout_ms: u64,
    },
    /// Connections per second through the upgrade and a hello with a verified JWT.
    Connect {
        /// Gateway processes (started with --jwt-secret).
        #[arg(long, default_value_t = 1)]
        gateways: usize,
        /// Connections being opened at once, all gateways.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Seconds measured.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Run this long before measuring (ms).
        #[arg(long, default_value_t = 1000)]
        warmup_ms: u64,
        /// Loopback source addresses to connect from (127.0.0.1 ...).
        #[arg(long, default_value_t = 16)]
        sources: usize,
        /// Distinct token subjects (minted before the run).
        #[arg(long, default_value_t = 1000)]
        subjects: usize,
        /// One attempt, connect to hello reply, may take this long (ms).
        #[arg(long, default_value_t = 10_000)]
        attempt_timeout_ms: u64,
        /// The tokens' signature: hs256 (gateways with --jwt-secret), or rs256, es256, eddsa
        /// (gateways with --jwt-public-key; bench-only keys).
        #[arg(long, value_parser = ["hs256", "rs256", "es256", "eddsa"], default_value = "hs256")]
        alg: String,
    },
    /// Past one Redis: the publish rate one redis-server saturates at, then what a Redis Cluster
    /// of N primaries sustains on the same machine, and each shard's CPU per delivered event.
    Shards {
        /// single (one redis-server), cluster (N primaries), or both, one after the other.
        #[arg(long, value_parser = ["single", "cluster", "both"], default_value = "both")]
        runs: String,
        /// Primaries of the cluster (no replicas).
        #[arg(long, default_value_t = 3)]
        shards: usize,
        /// Gateway processes (each topic's subscribers on one of them).
        #[arg(long, default_value_t = 2)]
        gateways: usize,
        /// Topics the events spread over evenly.
        #[arg(long, default_value_t = 300)]
        topics: usize,
        /// Subscribers per topic (one connection each).
        #[arg(long, default_value_t = 1)]
        subscribers_per_topic: usize,
        /// Events per second offered in the first step, all topics together.
        #[arg(long, default_value_t = 10_000)]
        start_rate: u64,
        /// Each step offers this many times the previous step's rate.
        #[arg(long, default_value_t = 1.4)]
        step_factor: f64,
        /// At most this many steps per run.
        #[arg(long, default_value_t = 10)]
        max_steps: usize,
        /// Seconds each step publishes for.
        #[arg(long, default_value_t = 4)]
        step_seconds: u64,
        /// fcall: FCALL sb_publish (history and live, what backends send for history topics);
        /// publish: PUBLISH on one Redis, SPUBLISH on the cluster (live only).
        #[arg(long, value_parser = ["fcall", "publish"], default_value = "fcall")]
        method: String,
        /// Bytes of padding in each event.
        #[arg(long, default_value_t = 100)]
        payload_bytes: usize,
        /// sb_publish's MAXLEN (history entries kept per topic).
        #[arg(long, default_value_t = 1000)]
        history_maxlen: u64,
        /// sb_publish's TTL_MS (history expiry).
        #[arg(long, default_value_t = 3_600_000)]
        history_ttl_ms: u64,
        /// Pipelined publisher connections per Redis node.
        #[arg(long, default_value_t = 2)]
        publishers_per_shard: usize,
        /// Loopback source addresses to connect from (127.0.0.1 ...).
        #[arg(long, default_value_t = 1)]
        sources: usize,
        /// Load-generator child processes holding the subscribers [default: none up to 19 000].
        #[arg(long)]
        agents: Option<usize>,
        /// A Redis process at this many cores is saturated (commands run on one thread).
        #[arg(long, default_value_t = 0.9)]
        saturated_cores: f64,
        /// A step keeps up while this share of the offered deliveries per second arrive.
        #[arg(long, default_value_t = 0.95)]
        keep_up: f64,
    },
    /// A load-generator child process: JSON-line requests on stdin, replies on stdout.
    #[command(hide = true)]
    Agent,
    /// The floor: a minimal broadcast server (no JSON, no Redis) for `fanout --target floor`.
    #[command(hide = true)]
    FloorServer {
        #[arg(long)]
        listen: SocketAddr,
        /// Broadcast tasks (0: one per core).
        #[arg(long, default_value_t = 0)]
        shards: usize,
        /// Exit when stdin closes (set by the bench that starts it).
        #[arg(long)]
        exit_with_stdin: bool,
    },
    /// Tool calls through gateways, Redis and workers: cache hits, routed misses, coalesced bursts.
    Calls {
        /// hit, miss or coalesce.
        #[arg(long, value_parser = ["hit", "miss", "coalesce"], default_value = "miss")]
        mode: String,
        #[arg(long, default_value_t = 1)]
        gateways: usize,
        #[arg(long, default_value_t = 1)]
        workers: usize,
        #[arg(long, default_value_t = 8)]
        connections: usize,
        /// Calls in flight per connection.
        #[arg(long, default_value_t = 16)]
        in_flight: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Length of each coalesced `sleep` (ms).
        #[arg(long, default_value_t = 50)]
        burst_ms: u64,
    },
    /// Tool calls over MCP Streamable HTTP (POST /mcp): stateless (2026-07-28) or session era,
    /// cache hits or routed calls; C keep-alive connections, one request at a time each.
    McpHttp {
        /// stateless or session.
        #[arg(long, value_parser = ["stateless", "session"], default_value = "stateless")]
        era: String,
        /// hit or miss.
        #[arg(long, value_parser = ["hit", "miss"], default_value = "hit")]
        mode: String,
        #[arg(long, default_value_t = 32)]
        connections: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// A reconnect storm: N clients subscribe with since 0-0 to one big history at once; Redis
    /// responsiveness, Redis time per client, time until all caught up.
    Storm {
        /// Clients (one connection each).
        #[arg(long, default_value_t = 2000)]
        clients: usize,
        /// Gateway processes the clients spread over.
        #[arg(long, default_value_t = 2)]
        gateways: usize,
        /// Events in the topic's history.
        #[arg(long, default_value_t = 1000)]
        events: usize,
        /// Bytes of each event.
        #[arg(long, default_value_t = 4096)]
        event_bytes: usize,
        /// Loopback source addresses to connect from (127.0.0.1 ...).
        #[arg(long, default_value_t = 4)]
        sources: usize,
        /// Connections opened at once while setting up.
        #[arg(long, default_value_t = fanout::CONNECT_CONCURRENCY)]
        connect_concurrency: usize,
        /// Bound on the storm, in seconds.
        #[arg(long, default_value_t = 120)]
        timeout_secs: u64,
    },
    /// Sessions resumed on gateway B after gateway A is killed with SIGKILL; replay rate.
    Resume {
        /// Clients (one connection and one session each), all on gateway A at first.
        #[arg(long, default_value_t = 1000)]
        clients: usize,
        /// History topics the clients spread over (one each).
        #[arg(long, default_value_t = 100)]
        topics: usize,
        /// Events per topic published (and received live) before the kill.
        #[arg(long, default_value_t = 10)]
        before: usize,
        /// Events per topic published after the kill, which every client must get replayed.
        #[arg(long, default_value_t = 10)]
        missed: usize,
        /// Bytes of padding in each event.
        #[arg(long, default_value_t = 100)]
        payload_bytes: usize,
        /// Loopback source addresses to connect from (127.0.0.1 ...).
        #[arg(long, default_value_t = 4)]
        sources: usize,
        /// Connections opened at once while setting up on gateway A.
        #[arg(long, default_value_t = 256)]
        connect_concurrency: usize,
        /// Reconnects in progress at once on gateway B (each until its hello reply).
        #[arg(long, default_value_t = 256)]
        resume_concurrency: usize,
        /// Reconnect attempts per client.
        #[arg(long, default_value_t = 5)]
        attempts: usize,
        /// Pause after a failed reconnect attempt (ms).
        #[arg(long, default_value_t = 100)]
        retry_delay_ms: u64,
        /// Time one reconnect attempt (connect and hello reply) may take (ms).
        #[arg(long, default_value_t = 10_000)]
        attempt_timeout_ms: u64,
        /// Bound on each phase (setup, live delivery, resume), in seconds.
        #[arg(long, default_value_t = 60)]
        phase_timeout_secs: u64,
        /// Events in the replay-rate topic, replayed from `since: 0-0` (0 skips it).
        #[arg(long, default_value_t = 10_000)]
        replay_events: usize,
        /// Replay-rate rounds, each with a new client.
        #[arg(long, default_value_t = 3)]
        replay_rounds: usize,
    },
}

/// A failure with the exit code it deserves.
enum Failure {
    /// A bad setting: the message names it. Exit 64.
    Usage(String),
    /// Anything else. Exit 1.
    Runtime(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Runtime(e)
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    init_logging();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(msg)) => {
            eprintln!("switchboard-bench: invalid configuration: {msg}");
            ExitCode::from(EXIT_USAGE)
        }
        Err(Failure::Runtime(e)) => {
            eprintln!("switchboard-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), Failure> {
    // Agents and the floor server are this very binary, run again.
    let this = std::env::current_exe().context("finding this executable")?;
    let given = cli.switchboard;
    let switchboard = || switchboard_bin(given.clone(), &this);
    raise_fd_limit();
    let rt = runtime()?;
    let json = cli.json;
    match cli.scenario {
        Scenario::Fanout {
            target,
            compare_floor,
            gateways,
            subscribers,
            topics,
            rate,
            seconds,
            payload_bytes,
            sources,
            agents,
            connect_concurrency,
            floor_shards,
        } => {
            let opts = FanoutOptions {
                // The floor alone starts no gateway, and needs no `switchboard` binary.
                switchboard_bin: if target == "floor" && !compare_floor {
                    PathBuf::new()
                } else {
                    switchboard()?
                },
                bench_bin: this.clone(),
                target: if target == "floor" {
                    Target::Floor
                } else {
                    Target::Switchboard
                },
                gateways,
                subscribers,
                topics,
                rate,
                duration: Duration::from_secs(seconds),
                payload_bytes,
                sources,
                agents,
                connect_concurrency,
                floor_shards,
            };
            if compare_floor {
                let report = rt.block_on(fanout::compare(opts))?;
                print_report(json, &report, report.table())?;
            } else {
                let report = rt.block_on(fanout::run(opts))?;
                print_report(json, &report, report.table())?;
            }
        }
        Scenario::Idle {
            connections,
            gateways,
            topics,
            sources,
            connect_concurrency,
            stage,
            agents,
            settle_ms,
            samples,
            sample_interval_ms,
            deliver_timeout_ms,
        } => {
            let opts = IdleOptions {
                switchboard_bin: switchboard()?,
                bench_bin: this.clone(),
                gateways,
                connections,
                topics,
                sources,
                connect_concurrency,
                stage: match stage.as_str() {
                    "upgrade" => Stage::Upgrade,
                    "hello" => Stage::Hello,
                    _ => Stage::Subscribe,
                },
                agents,
                settle: Duration::from_millis(settle_ms),
                samples,
                sample_interval: Duration::from_millis(sample_interval_ms),
                deliver_timeout: Duration::from_millis(deliver_timeout_ms),
            };
            let report = rt.block_on(idle::run(opts))?;
            print_report(json, &report, report.table())?;
        }
        Scenario::Connect {
            gateways,
            concurrency,
            seconds,
            warmup_ms,
            sources,
            subjects,
            attempt_timeout_ms,
            alg,
        } => {
            let opts = ConnectBenchOptions {
                switchboard_bin: switchboard()?,
                gateways,
                concurrency,
                duration: Duration::from_secs(seconds),
                warmup: Duration::from_millis(warmup_ms),
                sources,
                subjects,
                attempt_timeout: Duration::from_millis(attempt_timeout_ms),
                alg: TokenAlg::parse(&alg).expect("clap checked the value"),
            };
            let report = rt.block_on(connect::run(opts))?;
            print_report(json, &report, report.table())?;
        }
        Scenario::Shards {
            runs,
            shards: primaries,
            gateways,
            topics,
            subscribers_per_topic,
            start_rate,
            step_factor,
            max_steps,
            step_seconds,
            method,
            payload_bytes,
            history_maxlen,
            history_ttl_ms,
            publishers_per_shard,
            sources,
            agents,
            saturated_cores,
            keep_up,
        } => {
            let opts = ShardsOptions {
                switchboard_bin: switchboard()?,
                bench_bin: this.clone(),
                runs: match runs.as_str() {
                    "single" => Runs::Single,
                    "cluster" => Runs::Cluster,
                    _ => Runs::Both,
                },
                shards: primaries,
                gateways,
                topics,
                subscribers_per_topic,
                start_rate,
                step_factor,
                max_steps,
                step: Duration::from_secs(step_seconds),
                method: if method == "publish" {
                    Method::Publish
                } else {
                    Method::Fcall
                },
                payload_bytes,
                history_maxlen,
                history_ttl_ms,
                publishers_per_shard,
                sources,
                agents,
                saturated_cores,
                keep_up,
            };
            let report = rt.block_on(shards::run(opts))?;
            print_report(json, &report, report.table())?;
        }
        Scenario::Agent => rt.block_on(loadgen::serve_agent())?,
        Scenario::FloorServer {
            listen,
            shards,
            exit_with_stdin,
        } => rt.block_on(floor::serve(FloorServerOptions {
            listen,
            shards,
            exit_with_stdin,
        }))?,
        Scenario::Calls {
            mode,
            gateways,
            workers,
            connections,
            in_flight,
            seconds,
            burst_ms,
        } => {
            let mode = match mode.as_str() {
                "hit" => CallMode::Hit,
                "coalesce" => CallMode::Coalesce,
                _ => CallMode::Miss,
            };
            let opts = CallsOptions {
                switchboard_bin: switchboard()?,
                mode,
                gateways,
                workers,
                connections,
                in_flight,
                duration: Duration::from_secs(seconds),
                burst_ms,
            };
            let report = rt.block_on(calls::run(opts))?;
            print_report(json, &report, report.table())?;
        }
        Scenario::McpHttp {
            era,
            mode,
            connections,
            seconds,
        } => {
            let opts = McpHttpOptions {
                switchboard_bin: switchboard()?,
                era: if era == "session" {
                    Era::Session
                } else {
                    Era::Stateless
                },
                mode: if mode == "miss" {
                    HttpCallMode::Miss
                } else {
                    HttpCallMode::Hit
                },
                connections,
                duration: Duration::from_secs(seconds),
            };
            let report = rt.block_on(mcp_http::run(opts))?;
            print_report(json, &report, report.table())?;
        }
        Scenario::Resume {
            clients,
            topics,
            before,
            missed,
            payload_bytes,
            sources,
            connect_concurrency,
            resume_concurrency,
            attempts,
            retry_delay_ms,
            attempt_timeout_ms,
            phase_timeout_secs,
            replay_events,
            replay_rounds,
        } => {
            let opts = ResumeOptions {
                switchboard_bin: switchboard()?,
                clients,
                topics,
                before,
                missed,
                payload_bytes,
                sources,
                connect_concurrency,
                resume_concurrency,
                attempts,
                retry_delay: Duration::from_millis(retry_delay_ms),
                attempt_timeout: Duration::from_millis(attempt_timeout_ms),
                phase_timeout: Duration::from_secs(phase_timeout_secs),
                replay_events,
                replay_rounds,
            };
            let report = rt.block_on(resume::run(opts))?;
            print_report(json, &report, report.table())?;
        }
        Scenario::Storm {
            clients,
            gateways,
            events,
            event_bytes,
            sources,
            connect_concurrency,
            timeout_secs,
        } => {
            let opts = StormOptions {
                switchboard_bin: switchboard()?,
                clients,
                gateways,
                events,
                event_bytes,
                sources,
                connect_concurrency,
                timeout: Duration::from_secs(timeout_secs),
            };
            let report = rt.block_on(storm::run(opts))?;
            print_report(json, &report, report.table())?;
        }
    }
    Ok(())
}

/// The `switchboard` binary: the one given (which must exist), else the one next to `this`
/// executable.
fn switchboard_bin(given: Option<PathBuf>, this: &Path) -> Result<PathBuf, Failure> {
    match given {
        Some(path) if path.is_file() => Ok(path),
        Some(path) => Err(Failure::Usage(format!(
            "switchboard (SWITCHBOARD_BIN): there is no file at {}",
            path.display()
        ))),
        None => {
            let path = this.with_file_name(format!("switchboard{}", std::env::consts::EXE_SUFFIX));
            if path.is_file() {
                Ok(path)
            } else {
                Err(Failure::Runtime(anyhow!(
                    "the switchboard binary, which gateways and workers run from, is not at {}: \
                     build it: cargo build --release -p switchboard (or give --switchboard PATH)",
                    path.display()
                )))
            }
        }
    }
}

fn print_report<T: serde::Serialize>(json: bool, report: &T, table: String) -> Result<(), Failure> {
    if json {
        let text = serde_json::to_string_pretty(report).context("the report as JSON")?;
        println!("{text}");
    } else {
        print!("{table}");
    }
    Ok(())
}

/// Logs to stderr, filtered by `SWITCHBOARD_LOG` (or `RUST_LOG`), as `switchboard` does.
fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("SWITCHBOARD_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info,hyper=warn,h2=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// Raises the soft open-file limit to the hard limit: every connection is a descriptor.
fn raise_fd_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(limit = n, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open-file limit"),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_parses_as_switchboard_bench_did() {
        Cli::command().debug_assert();
        let parse = |args: &[&str]| Cli::try_parse_from([&["switchboard-bench"], args].concat());
        let cli = parse(&["fanout", "--compare-floor", "--agents", "2", "--json"]).unwrap();
        assert!(
            cli.json
                && matches!(
                    cli.scenario,
                    Scenario::Fanout {
                        compare_floor: true,
                        ..
                    }
                )
        );
        assert!(matches!(
            parse(&["floor-server", "--listen", "127.0.0.1:1"])
                .unwrap()
                .scenario,
            Scenario::FloorServer { .. }
        ));
        assert!(matches!(
            parse(&["agent"]).unwrap().scenario,
            Scenario::Agent
        ));
        let e = parse(&["fanout", "--target", "floor", "--compare-floor"]).unwrap_err();
        assert!(e.use_stderr(), "a bad command line exits 64");
    }

    #[test]
    fn switchboard_is_the_one_given_or_the_one_next_to_this_binary() {
        let dir = std::env::temp_dir().join(format!("switchboard-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let this = dir.join("switchboard-bench");
        let next = dir.join(format!("switchboard{}", std::env::consts::EXE_SUFFIX));
        assert!(matches!(
            switchboard_bin(None, &this),
            Err(Failure::Runtime(_))
        ));
        std::fs::write(&next, "").unwrap();
        assert_eq!(switchboard_bin(None, &this).ok(), Some(next.clone()));
        let missing = dir.join("elsewhere");
        assert!(matches!(
            switchboard_bin(Some(missing), &this),
            Err(Failure::Usage(_))
        ));
        assert_eq!(switchboard_bin(Some(next.clone()), &this).ok(), Some(next));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
