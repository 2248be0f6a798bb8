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

/// Variables that were renamed, with what replaced them. Each old name left in a deployment
/// would be ignored silently, so it is refused, naming the new one.
///
/// The millisecond ones took whole milliseconds before settings took durations with their unit
/// (`SWITCHBOARD_HEARTBEAT_MS=25000` is now `SWITCHBOARD_HEARTBEAT=25s`); the worker's own
/// settings all start with `SWITCHBOARD_WORKER_` since issue 14.
const RENAMED: [(&str, &str, Renamed); 28] = [
    (
        "SWITCHBOARD_HELLO_TIMEOUT_MS",
        "SWITCHBOARD_HELLO_TIMEOUT",
        Renamed::Unit,
    ),
    (
        "SWITCHBOARD_HEARTBEAT_MS",
        "SWITCHBOARD_HEARTBEAT",
        Renamed::Unit,
    ),
    (
        "SWITCHBOARD_WRITE_TIMEOUT_MS",
        "SWITCHBOARD_WRITE_TIMEOUT",
        Renamed::Unit,
    ),
    (
        "SWITCHBOARD_CLOSE_TIMEOUT_MS",
        "SWITCHBOARD_CLOSE_TIMEOUT",
        Renamed::Unit,
    ),
    (
        "SWITCHBOARD_SHUTDOWN_GRACE_MS",
        "SWITCHBOARD_SHUTDOWN_GRACE",
        Renamed::Unit,
    ),
    (
        "SWITCHBOARD_DRAIN_SPREAD_MS",
        "SWITCHBOARD_DRAIN_SPREAD",
        Renamed::Unit,
    ),
    (
        "SWITCHBOARD_READINESS_INTERVAL_MS",
        "SWITCHBOARD_READINESS_INTERVAL",
        Renamed::Unit,
    ),
    (
        "SWITCHBOARD_SUBSCRIBE_RETRY_MS",
        "SWITCHBOARD_SUBSCRIBE_RETRY",
        Renamed::Unit,
    ),
    (
        "SWITCHBOARD_TASK_TTL_MS",
        "SWITCHBOARD_TASK_TTL",
        Renamed::Unit,
    ),
    (
        "SWITCHBOARD_MAX_TASK_TTL_MS",
        "SWITCHBOARD_MAX_TASK_TTL",
        Renamed::Unit,
    ),
    (
        "SWITCHBOARD_REGISTRY_INTERVAL_MS",
        "SWITCHBOARD_REGISTRY_INTERVAL",
        Renamed::Unit,
    ),
    (
        "SWITCHBOARD_CALL_POLL_MS",
        "SWITCHBOARD_CALL_POLL",
        Renamed::Unit,
    ),
    (
        "SWITCHBOARD_DEADLINE_GRACE_MS",
        "SWITCHBOARD_DEADLINE_GRACE",
        Renamed::Unit,
    ),
    (
        "SWITCHBOARD_REPLAY_TIMEOUT_MS",
        "SWITCHBOARD_REPLAY_TIMEOUT",
        Renamed::Unit,
    ),
    (
        "SWITCHBOARD_SESSION_TTL_MS",
        "SWITCHBOARD_SESSION_TTL",
        Renamed::Unit,
    ),
    (
        "SWITCHBOARD_SESSION_REFRESH_MS",
        "SWITCHBOARD_SESSION_REFRESH",
        Renamed::Unit,
    ),
    (
        "SWITCHBOARD_REDIS_TIMEOUT_MS",
        "SWITCHBOARD_REDIS_TIMEOUT",
        Renamed::Unit,
    ),
    (
        "SWITCHBOARD_REDIS_CONNECT_TIMEOUT_MS",
        "SWITCHBOARD_REDIS_CONNECT_TIMEOUT",
        Renamed::Unit,
    ),
    (
        "SWITCHBOARD_WORKER_HEARTBEAT_MS",
        "SWITCHBOARD_WORKER_HEARTBEAT",
        Renamed::Unit,
    ),
    (
        "SWITCHBOARD_VISIBILITY_TIMEOUT_MS",
        "SWITCHBOARD_WORKER_VISIBILITY_TIMEOUT",
        Renamed::Unit,
    ),
    (
        "SWITCHBOARD_FETCH_BLOCK_MS",
        "SWITCHBOARD_WORKER_FETCH_BLOCK",
        Renamed::Unit,
    ),
    (
        "SWITCHBOARD_WORKER_SHUTDOWN_GRACE_MS",
        "SWITCHBOARD_WORKER_SHUTDOWN_GRACE",
        Renamed::Unit,
    ),
    (
        "SWITCHBOARD_CONCURRENCY",
        "SWITCHBOARD_WORKER_CONCURRENCY",
        Renamed::Worker,
    ),
    (
        "SWITCHBOARD_VISIBILITY_TIMEOUT",
        "SWITCHBOARD_WORKER_VISIBILITY_TIMEOUT",
        Renamed::Worker,
    ),
    (
        "SWITCHBOARD_MAX_DELIVERIES",
        "SWITCHBOARD_WORKER_MAX_DELIVERIES",
        Renamed::Worker,
    ),
    (
        "SWITCHBOARD_FETCH_BLOCK",
        "SWITCHBOARD_WORKER_FETCH_BLOCK",
        Renamed::Worker,
    ),
    (
        "SWITCHBOARD_TOOLS",
        "SWITCHBOARD_WORKER_TOOLS",
        Renamed::Worker,
    ),
    (
        "SWITCHBOARD_BUILTIN",
        "SWITCHBOARD_WORKER_BUILTIN",
        Renamed::Worker,
    ),
];

/// Why a variable was renamed, for the message that refuses it.
#[derive(Clone, Copy)]
enum Renamed {
    /// It took whole milliseconds.
    Unit,
    /// A worker setting, now named like the others.
    Worker,
}

/// Refuses any variable of [`RENAMED`] that is set, naming its replacement.
pub(crate) fn refuse_renamed_variables() -> Result<(), Failure> {
    match RENAMED
        .iter()
        .find(|(old, _, _)| std::env::var_os(old).is_some())
    {
        None => Ok(()),
        Some((old, new, Renamed::Unit)) => Err(Failure::Usage(format!(
            "{old} was renamed {new} and takes a duration with its unit (e.g. 5s or 250ms)"
        ))),
        Some((old, new, Renamed::Worker)) => Err(Failure::Usage(format!(
            "{old} was renamed {new} (every worker setting starts with SWITCHBOARD_WORKER_)"
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
    // Errors name the flag to fix (a bad URL, an unreadable CA or password file).
    let target = opts.target().map_err(Failure::Usage)?;
    switchboard_redis::RedisBackend::connect_to(target, opts)
        .map_err(|e| Failure::Usage(format!("redis (SWITCHBOARD_REDIS): {e}")))
}
