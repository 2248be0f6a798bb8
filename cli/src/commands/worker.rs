//! `switchboard worker`: a worker node against Redis, hosting the built-in tools and/or the
//! command tools of a tools file (`docs/tools.md`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use switchboard_worker::config as wk;
use switchboard_worker::tools::{builtin, command};
use switchboard_worker::{Toolbox, WorkerConfig};

use super::RedisArgs;
use crate::Failure;

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    #[command(flatten)]
    redis: RedisArgs,
    /// A TOML file of command tools.
    #[arg(long, env = "SWITCHBOARD_TOOLS")]
    tools: Option<PathBuf>,
    /// Host the built-in demo tools (echo, sleep, fail).
    #[arg(long, env = "SWITCHBOARD_BUILTIN")]
    builtin: bool,
    /// This worker's id [default: worker-$HOSTNAME-<pid>].
    #[arg(long, env = "SWITCHBOARD_WORKER_ID")]
    worker_id: Option<String>,
    /// Calls this worker runs at once.
    #[arg(long, env = "SWITCHBOARD_CONCURRENCY", default_value_t = wk::DEFAULT_CONCURRENCY)]
    concurrency: usize,
    /// Registry heartbeat (ms); the worker leaves tools/list after three missed ones.
    #[arg(long, env = "SWITCHBOARD_WORKER_HEARTBEAT_MS", default_value_t = wk::DEFAULT_HEARTBEAT.as_millis() as u64)]
    heartbeat_ms: u64,
    /// A job whose worker is silent this long (ms) is taken over by another worker.
    #[arg(long, env = "SWITCHBOARD_VISIBILITY_TIMEOUT_MS", default_value_t = wk::DEFAULT_VISIBILITY_TIMEOUT.as_millis() as u64)]
    visibility_timeout_ms: u64,
    /// Deliveries after which a job is dead-lettered.
    #[arg(long, env = "SWITCHBOARD_MAX_DELIVERIES", default_value_t = wk::DEFAULT_MAX_DELIVERIES)]
    max_deliveries: u64,
    /// How long one fetch waits for a job (ms).
    #[arg(long, env = "SWITCHBOARD_FETCH_BLOCK_MS", default_value_t = wk::DEFAULT_FETCH_BLOCK.as_millis() as u64)]
    fetch_block_ms: u64,
    /// On shutdown, how long running calls get to finish (ms).
    #[arg(long, env = "SWITCHBOARD_WORKER_SHUTDOWN_GRACE_MS", default_value_t = wk::DEFAULT_SHUTDOWN_GRACE.as_millis() as u64)]
    shutdown_grace_ms: u64,
}

pub(crate) fn run(args: Args) -> Result<(), Failure> {
    let mut toolbox = Toolbox::new();
    if args.builtin {
        builtin::add_builtins(&mut toolbox).map_err(|e| Failure::Usage(e.to_string()))?;
    }
    if let Some(path) = &args.tools {
        command::load_tools_file(path, &mut toolbox)
            .map_err(|e| Failure::Usage(format!("tools (SWITCHBOARD_TOOLS): {e}")))?;
    }
    if toolbox.is_empty() {
        return Err(Failure::Usage(
            "no tools to host: give --tools FILE (SWITCHBOARD_TOOLS) and/or --builtin".into(),
        ));
    }
    let ms = Duration::from_millis;
    let config = WorkerConfig {
        worker_id: args.worker_id.clone().unwrap_or_else(|| {
            format!("worker-{}-{}", super::default_node_id(), std::process::id())
        }),
        concurrency: args.concurrency,
        heartbeat: ms(args.heartbeat_ms),
        visibility_timeout: ms(args.visibility_timeout_ms),
        max_deliveries: args.max_deliveries,
        fetch_block: ms(args.fetch_block_ms),
        shutdown_grace: ms(args.shutdown_grace_ms),
    };
    config
        .validate()
        .map_err(|e| Failure::Usage(e.to_string()))?;
    args.redis.options()?;
    let rt = super::runtime()?;
    rt.block_on(async move {
        let backend = args.redis.backend()?;
        switchboard_worker::run(config, Arc::new(backend), toolbox, super::shutdown_signal())
            .await
            .map_err(|e| Failure::Runtime(e.into()))
    })?;
    Ok(())
}
