//! `switchboard gateway`: one gateway node against Redis.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use switchboard_core::auth::Verifier;
use switchboard_gateway::AuthConfig;

use super::{RedisArgs, Tuning};
use crate::Failure;

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Address to listen on (WebSocket at /ws; /healthz, /readyz, /metrics).
    #[arg(long, env = "SWITCHBOARD_LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    #[command(flatten)]
    redis: RedisArgs,
    /// This node's name in `hello` results and logs [default: $HOSTNAME or gateway-<pid>].
    #[arg(long, env = "SWITCHBOARD_NODE_ID")]
    node_id: Option<String>,
    /// HS256 secret that client tokens are verified with.
    #[arg(long, env = "SWITCHBOARD_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// Accept clients without a token (as `anonymous`).
    #[arg(long, env = "SWITCHBOARD_ALLOW_ANONYMOUS")]
    allow_anonymous: bool,
    #[command(flatten)]
    tuning: Tuning,
}

pub(crate) fn run(args: Args) -> Result<(), Failure> {
    if args.jwt_secret.as_deref() == Some("") {
        return Err(Failure::Usage(
            "jwt-secret (SWITCHBOARD_JWT_SECRET) is empty".into(),
        ));
    }
    let auth = AuthConfig {
        verifier: args
            .jwt_secret
            .as_deref()
            .map(|s| Verifier::hs256(s.as_bytes())),
        allow_anonymous: args.allow_anonymous,
    };
    let config = args.tuning.config(
        args.node_id.clone().unwrap_or_else(super::default_node_id),
        auth,
    );
    config
        .validate()
        .map_err(|e| Failure::Usage(e.to_string()))?;
    let redis = args.redis.clone();
    redis.options()?;

    super::raise_fd_limit();
    let rt = super::runtime()?;
    rt.block_on(async move {
        // Inside the runtime: the Redis connections start their tasks right away.
        let backend = redis.backend()?;
        let listener = switchboard_gateway::listen(args.listen, args.tuning.listen_backlog)
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        switchboard_gateway::run(
            config,
            listener,
            Arc::new(backend),
            super::shutdown_signal(),
        )
        .await
        .context("gateway failed")?;
        Ok(())
    })
}
