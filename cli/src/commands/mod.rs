//! The subcommands, and what they share: logging and traces, the shutdown signal, the file-descriptor
//! limit, the runtime, and the check for settings renamed since they took durations.

pub(crate) mod dev;
pub(crate) mod gateway;
pub(crate) mod mcp_stdio;
pub(crate) mod publish;
pub(crate) mod token;
pub(crate) mod worker;

use switchboard_telemetry::{LogArgs, Telemetry, TelemetryError};

use crate::Failure;

/// Logging for the short-lived subcommands (`publish`, `token`, `mcp-stdio`): text, no traces.
pub(crate) fn init_logging() {
    if let Err(e) = switchboard_telemetry::Telemetry::init(&LogArgs::default(), None) {
        eprintln!("switchboard: {e}");
    }
}

/// A long-running subcommand's runtime and telemetry: the logger (`--log-format`) and, when
/// an `OTEL_EXPORTER_OTLP_*ENDPOINT` is set, the trace exporter, started on the runtime.
/// `service` is the default `service.name`. Call [`Telemetry::shutdown`] after the runtime's
/// `block_on` returns: it flushes the spans still queued.
pub(crate) fn start(
    log: &LogArgs,
    service: &str,
) -> Result<(tokio::runtime::Runtime, Telemetry), Failure> {
    let rt = runtime()?;
    let telemetry = {
        let _entered = rt.enter();
        Telemetry::init(log, Some(service)).map_err(|e| match e {
            TelemetryError::Settings(why) => Failure::Usage(why),
            other => Failure::Runtime(other.into()),
        })?
    };
    Ok((rt, telemetry))
}

/// The variables that took whole milliseconds before settings took durations with their unit
/// (`SWITCHBOARD_HEARTBEAT_MS=25000` is now `SWITCHBOARD_HEARTBEAT=25s`): each is its new
/// name followed by `_MS`.
const RENAMED: [&str; 22] = [
    "SWITCHBOARD_HELLO_TIMEOUT_MS",
    "SWITCHBOARD_HEARTBEAT_MS",
    "SWITCHBOARD_WRITE_TIMEOUT_MS",
    "SWITCHBOARD_CLOSE_TIMEOUT_MS",
    "SWITCHBOARD_SHUTDOWN_GRACE_MS",
    "SWITCHBOARD_DRAIN_SPREAD_MS",
    "SWITCHBOARD_READINESS_INTERVAL_MS",
    "SWITCHBOARD_SUBSCRIBE_RETRY_MS",
    "SWITCHBOARD_TASK_TTL_MS",
    "SWITCHBOARD_MAX_TASK_TTL_MS",
    "SWITCHBOARD_REGISTRY_INTERVAL_MS",
    "SWITCHBOARD_CALL_POLL_MS",
    "SWITCHBOARD_DEADLINE_GRACE_MS",
    "SWITCHBOARD_REPLAY_TIMEOUT_MS",
    "SWITCHBOARD_SESSION_TTL_MS",
    "SWITCHBOARD_SESSION_REFRESH_MS",
    "SWITCHBOARD_REDIS_TIMEOUT_MS",
    "SWITCHBOARD_REDIS_CONNECT_TIMEOUT_MS",
    "SWITCHBOARD_WORKER_HEARTBEAT_MS",
    "SWITCHBOARD_VISIBILITY_TIMEOUT_MS",
    "SWITCHBOARD_FETCH_BLOCK_MS",
    "SWITCHBOARD_WORKER_SHUTDOWN_GRACE_MS",
];

/// An old millisecond variable left in a deployment would be ignored silently: it is refused,
/// naming the variable that replaced it.
pub(crate) fn refuse_renamed_variables() -> Result<(), Failure> {
    match RENAMED.iter().find(|old| std::env::var_os(old).is_some()) {
        None => Ok(()),
        Some(old) => Err(Failure::Usage(format!(
            "{old} was renamed {} and takes a duration with its unit (e.g. 5s or 250ms)",
            old.trim_end_matches("_MS")
        ))),
    }
}

/// Completes on SIGTERM or ctrl-c.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM; ctrl-c only");
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutdown requested");
}

/// Raises the soft open-file limit to the hard limit: every socket is a descriptor.
pub(crate) fn raise_fd_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(limit = n, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open-file limit"),
    }
}

pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// The Redis backend; call it inside the runtime (its connections start their tasks at once).
pub(crate) fn redis(
    opts: &switchboard_redis::RedisOptions,
) -> Result<std::sync::Arc<switchboard_redis::RedisBackend>, Failure> {
    opts.validate().map_err(Failure::Usage)?;
    switchboard_redis::RedisBackend::connect(opts)
        .map_err(|e| Failure::Usage(format!("redis (SWITCHBOARD_REDIS): {e}")))
}
