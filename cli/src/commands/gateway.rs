//! `switchboard gateway`: one gateway node against Redis.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use switchboard_core::auth::Verifier;
use switchboard_core::backend::redis as redis_defaults;
use switchboard_core::backend::{RedisBackend, RedisOptions};
use switchboard_gateway::AuthConfig;

use super::Tuning;
use crate::Failure;

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Address to listen on (WebSocket at /ws; /healthz, /readyz, /metrics).
    #[arg(long, env = "SWITCHBOARD_LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Redis URL (redis://host:port/db).
    #[arg(long, env = "SWITCHBOARD_REDIS")]
    redis: String,
    /// Prefix of every Redis key and channel.
    #[arg(long, env = "SWITCHBOARD_REDIS_PREFIX", default_value = switchboard_core::keys::DEFAULT_PREFIX)]
    redis_prefix: String,
    /// Bound on one Redis command, in ms.
    #[arg(long, env = "SWITCHBOARD_REDIS_TIMEOUT_MS", default_value_t = redis_defaults::DEFAULT_OP_TIMEOUT.as_millis() as u64)]
    redis_timeout_ms: u64,
    /// Bound on opening one Redis connection, in ms.
    #[arg(long, env = "SWITCHBOARD_REDIS_CONNECT_TIMEOUT_MS", default_value_t = redis_defaults::DEFAULT_CONNECT_TIMEOUT.as_millis() as u64)]
    redis_connect_timeout_ms: u64,
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
    if args.redis_prefix.is_empty() || args.redis_prefix.contains(['{', '}']) {
        return Err(Failure::Usage(
            "redis-prefix (SWITCHBOARD_REDIS_PREFIX) must be non-empty and without { }".into(),
        ));
    }
    if args.redis_timeout_ms == 0 || args.redis_connect_timeout_ms == 0 {
        return Err(Failure::Usage(
            "redis-timeout-ms and redis-connect-timeout-ms must be greater than zero".into(),
        ));
    }
    let mut opts = RedisOptions::new(&args.redis);
    opts.prefix = args.redis_prefix.clone();
    opts.op_timeout = Duration::from_millis(args.redis_timeout_ms);
    opts.connect_timeout = Duration::from_millis(args.redis_connect_timeout_ms);

    super::raise_fd_limit();
    let rt = super::runtime()?;
    rt.block_on(async move {
        // Inside the runtime: the Redis connections start their tasks right away.
        let backend = RedisBackend::new(&opts)
            .map_err(|e| Failure::Usage(format!("redis (SWITCHBOARD_REDIS): {e}")))?;
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
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
