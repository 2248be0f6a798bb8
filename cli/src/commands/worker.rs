//! `switchboard worker`: a worker node against Redis, hosting the built-in tools and/or the
//! command tools and MCP servers of a tools file (`docs/tools.md`).

use std::path::PathBuf;
use std::sync::Arc;

use switchboard_redis::RedisOptions;
use switchboard_telemetry::LogArgs;
use switchboard_worker::tools::{builtin, command, mcp};
use switchboard_worker::{RunError, Toolbox, WorkerConfig, WorkerMetrics};

use crate::Failure;

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    #[command(flatten)]
    redis: RedisOptions,
    /// A TOML file of command tools.
    #[arg(
        long,
        env = "SWITCHBOARD_WORKER_TOOLS",
        value_name = "FILE",
        help_heading = "Tools"
    )]
    tools: Option<PathBuf>,
    /// Host the built-in demo tools (echo, sleep, fail).
    #[arg(long, env = "SWITCHBOARD_WORKER_BUILTIN", help_heading = "Tools")]
    builtin: bool,
    #[command(flatten)]
    config: WorkerConfig,
    #[command(flatten)]
    log: LogArgs,
}

pub(crate) fn run(args: Args) -> Result<(), Failure> {
    let (rt, telemetry) = super::start(&args.log, "switchboard-worker")?;
    let mut toolbox = Toolbox::new();
    if args.builtin {
        builtin::add_builtins(&mut toolbox).map_err(|e| Failure::Usage(e.to_string()))?;
    }
    let mut servers = Vec::new();
    if let Some(path) = &args.tools {
        servers = command::load_tools_file(path, &mut toolbox)
            .map_err(|e| Failure::Usage(format!("tools (SWITCHBOARD_WORKER_TOOLS): {e}")))?;
    }
    if toolbox.is_empty() && servers.is_empty() {
        return Err(Failure::Usage(
            "no tools to host: give --tools FILE (SWITCHBOARD_WORKER_TOOLS) and/or --builtin"
                .into(),
        ));
    }
    args.config
        .validate()
        .map_err(|e| Failure::Usage(e.to_string()))?;
    let ran = rt.block_on(async move {
        let backend = super::redis(&args.redis)?;
        // The Redis operation timings join the worker's metrics (`--admin-listen`).
        let metrics = Arc::new(WorkerMetrics::new(|r| backend.register_metrics(r)));
        // The MCP servers' tools join the toolbox as the servers come up.
        let _hosts = mcp::start(servers, &toolbox);
        let run = switchboard_worker::run_observed(
            args.config,
            backend,
            toolbox,
            metrics,
            super::shutdown_signal(),
        );
        match run.await {
            Ok(()) => Ok(()),
            Err(e @ RunError::AdminListen { .. }) => Err(Failure::Usage(e.to_string())),
            Err(e) => Err(Failure::Runtime(e.into())),
        }
    });
    // The worker is done: flush the spans still queued.
    telemetry.shutdown();
    ran
}
