//! `switchboard gateway`: one gateway node against Redis.

use std::net::SocketAddr;

use anyhow::Context;
use switchboard_core::auth::AuthError;
use switchboard_gateway::{GatewayConfig, GatewayError};
use switchboard_redis::RedisOptions;
use switchboard_telemetry::LogArgs;

use crate::Failure;

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Address to listen on (WebSocket at /ws, MCP at /mcp; /healthz, /readyz; /metrics is on
    /// --admin-listen).
    #[arg(long, env = "SWITCHBOARD_LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    #[command(flatten)]
    redis: RedisOptions,
    #[command(flatten)]
    config: GatewayConfig,
    #[command(flatten)]
    log: LogArgs,
}

pub(crate) fn run(args: Args) -> Result<(), Failure> {
    let Args {
        listen,
        redis,
        config,
        log,
    } = args;
    let (rt, telemetry) = super::start(&log, "switchboard-gateway")?;
    config
        .validate()
        .map_err(|e| Failure::Usage(e.to_string()))?;
    super::raise_fd_limit();
    let served = rt.block_on(async move {
        // Inside the runtime: the Redis connections start their tasks right away.
        let backend = super::redis(&redis)?.backend();
        let listener = switchboard_gateway::listen(listen, config.tuning.listen_backlog)
            .with_context(|| format!("cannot listen on {listen}"))?;
        match switchboard_gateway::run(config, listener, backend, super::shutdown_signal()).await {
            // A key file that cannot be used is a bad setting, like any other: exit 64.
            Err(GatewayError::Keys(AuthError::Settings(why))) => Err(Failure::Usage(why)),
            other => Ok(other.context("gateway failed")?),
        }
    });
    // The drain is over: flush the spans still queued.
    telemetry.shutdown();
    served
}
