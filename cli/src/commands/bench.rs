//! `switchboard bench <scenario>`: starts the real parts (redis-server, gateway processes from
//! this very binary), drives them, prints a table or JSON. The scenarios live in the
//! `switchboard-bench` crate.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Subcommand;
use switchboard_bench::calls::{self, CallMode, CallsOptions};
use switchboard_bench::connect::{self, ConnectBenchOptions};
use switchboard_bench::fanout::{self, FanoutOptions};
use switchboard_bench::floor::{self, FloorServerOptions};
use switchboard_bench::idle::{self, IdleOptions};
use switchboard_bench::loadgen::{self, Stage, Target};
use switchboard_bench::resume::{self, ResumeOptions};

use crate::Failure;

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    #[command(subcommand)]
    scenario: Scenario,
    /// Print the report as JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
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

pub(crate) fn run(args: Args) -> Result<(), Failure> {
    let bin = std::env::current_exe().map_err(|e| Failure::Runtime(e.into()))?;
    super::raise_fd_limit();
    let rt = super::runtime()?;
    match args.scenario {
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
                bin,
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
                print_report(args.json, &report, report.table())?;
            } else {
                let report = rt.block_on(fanout::run(opts))?;
                print_report(args.json, &report, report.table())?;
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
                bin,
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
            print_report(args.json, &report, report.table())?;
        }
        Scenario::Connect {
            gateways,
            concurrency,
            seconds,
            warmup_ms,
            sources,
            subjects,
            attempt_timeout_ms,
        } => {
            let opts = ConnectBenchOptions {
                bin,
                gateways,
                concurrency,
                duration: Duration::from_secs(seconds),
                warmup: Duration::from_millis(warmup_ms),
                sources,
                subjects,
                attempt_timeout: Duration::from_millis(attempt_timeout_ms),
            };
            let report = rt.block_on(connect::run(opts))?;
            print_report(args.json, &report, report.table())?;
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
                bin,
                mode,
                gateways,
                workers,
                connections,
                in_flight,
                duration: Duration::from_secs(seconds),
                burst_ms,
            };
            let report = rt.block_on(calls::run(opts))?;
            print_report(args.json, &report, report.table())?;
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
                bin,
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
            print_report(args.json, &report, report.table())?;
        }
    }
    Ok(())
}

fn print_report<T: serde::Serialize>(json: bool, report: &T, table: String) -> Result<(), Failure> {
    if json {
        let text = serde_json::to_string_pretty(report).map_err(|e| Failure::Runtime(e.into()))?;
        println!("{text}");
    } else {
        print!("{table}");
    }
    Ok(())
}
