//! `switchboard bench <scenario>`: starts the real parts (redis-server, gateway processes from
//! this very binary), drives them, prints a table or JSON. The scenarios live in the
//! `switchboard-bench` crate.

use std::time::Duration;

use clap::Subcommand;
use switchboard_bench::calls::{self, CallMode, CallsOptions};
use switchboard_bench::fanout::{self, FanoutOptions};

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
}

pub(crate) fn run(args: Args) -> Result<(), Failure> {
    let bin = std::env::current_exe().map_err(|e| Failure::Runtime(e.into()))?;
    super::raise_fd_limit();
    let rt = super::runtime()?;
    match args.scenario {
        Scenario::Fanout {
            gateways,
            subscribers,
            topics,
            rate,
            seconds,
            payload_bytes,
            sources,
        } => {
            let opts = FanoutOptions {
                bin,
                gateways,
                subscribers,
                topics,
                rate,
                duration: Duration::from_secs(seconds),
                payload_bytes,
                sources,
            };
            let report = rt.block_on(fanout::run(opts))?;
            print_report(args.json, &report, report.table())?;
        }
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
