//! `switchboard bench <scenario>`: starts the real parts (redis-server, gateway processes from
//! this very binary), drives them, prints a table or JSON. The scenarios live in the
//! `switchboard-bench` crate.

use std::time::Duration;

use clap::Subcommand;
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
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report)
                        .map_err(|e| Failure::Runtime(e.into()))?
                );
            } else {
                print!("{}", report.table());
            }
        }
    }
    Ok(())
}
