//! The worker's configuration, declared once: each setting's flag, `SWITCHBOARD_*` variable,
//! default and help are on its field ([`WorkerConfig`] is `clap::Args`), and what each may be
//! is checked in one place, [`WorkerConfig::validate`], which names the flag to fix.
//! Durations are written with their unit (`1s`, `250ms`).

use std::time::Duration;

use switchboard_core::settings::{self, duration};

/// Heartbeats missed before a worker's registry entry is stale.
pub const REGISTRY_MISSES: u32 = 3;

/// This worker's default id: `worker-<$HOSTNAME or gateway-<pid>>-<pid>`.
pub fn default_worker_id() -> String {
    let pid = std::process::id();
    let host = settings::host_name().unwrap_or_else(|| format!("gateway-{pid}"));
    format!("worker-{host}-{pid}")
}

/// See the module docs.
#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "Worker")]
pub struct WorkerConfig {
    /// This worker's id [default: worker-$HOSTNAME-<pid>].
    #[arg(long, env = "SWITCHBOARD_WORKER_ID", default_value_t = default_worker_id(), hide_default_value = true)]
    pub worker_id: String,
    /// Calls this worker runs at once (all tools together).
    #[arg(
        long,
        env = "SWITCHBOARD_CONCURRENCY",
        default_value = "64",
        value_name = "N"
    )]
    pub concurrency: usize,
    /// Registry heartbeat; the worker leaves tools/list after three missed ones.
    #[arg(long, env = "SWITCHBOARD_WORKER_HEARTBEAT", default_value = "1s", value_name = "DURATION", value_parser = duration)]
    pub heartbeat: Duration,
    /// A job whose worker is silent this long is taken over by another worker (a running job
    /// is kept visible by heartbeats every third of it; at least three heartbeats).
    #[arg(long, env = "SWITCHBOARD_VISIBILITY_TIMEOUT", default_value = "30s", value_name = "DURATION", value_parser = duration)]
    pub visibility_timeout: Duration,
    /// Deliveries after which a job that keeps killing workers is dead-lettered.
    #[arg(
        long,
        env = "SWITCHBOARD_MAX_DELIVERIES",
        default_value = "3",
        value_name = "N"
    )]
    pub max_deliveries: u64,
    /// How long one fetch waits for a job.
    #[arg(long, env = "SWITCHBOARD_FETCH_BLOCK", default_value = "1s", value_name = "DURATION", value_parser = duration)]
    pub fetch_block: Duration,
    /// On shutdown, how long running calls get to finish.
    #[arg(long = "shutdown-grace", env = "SWITCHBOARD_WORKER_SHUTDOWN_GRACE", default_value = "10s", value_name = "DURATION", value_parser = duration)]
    pub shutdown_grace: Duration,
}

/// Settings that cannot work together, named by their flags.
#[derive(Debug, thiserror::Error)]
#[error("--{key} must be {what}")]
pub struct ConfigError {
    pub key: &'static str,
    pub what: &'static str,
}

impl WorkerConfig {
    /// Every default, with this worker id.
    pub fn new(worker_id: &str) -> Self {
        WorkerConfig {
            worker_id: worker_id.to_owned(),
            ..settings::defaults()
        }
    }

    /// Checks every setting; the error names the flag to fix.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key, what| Err(ConfigError { key, what });
        if self.worker_id.is_empty() {
            return bad("worker-id", "non-empty");
        }
        if self.concurrency == 0 {
            return bad("concurrency", "at least 1");
        }
        if self.max_deliveries == 0 {
            return bad("max-deliveries", "at least 1");
        }
        for (key, d) in [
            ("heartbeat", self.heartbeat),
            ("fetch-block", self.fetch_block),
        ] {
            if d.is_zero() {
                return bad(key, "greater than zero");
            }
        }
        if self.visibility_timeout < self.heartbeat * 3 {
            return Err(ConfigError {
                key: "visibility-timeout",
                what: "at least three heartbeats",
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_checks() {
        let c = WorkerConfig::new("w");
        assert_eq!(c.concurrency, 64);
        assert_eq!(c.visibility_timeout, Duration::from_secs(30));
        c.validate().unwrap();
        let parse = settings::from_args_without_env::<WorkerConfig>;
        let refused = |args: &[&str], key: &str| {
            let err = parse(args).unwrap().validate().unwrap_err().to_string();
            assert!(err.contains(key), "{args:?}: {err}");
        };
        refused(&["--heartbeat", "20s"], "--visibility-timeout");
        refused(&["--concurrency", "0"], "--concurrency");
        refused(&["--fetch-block", "0s"], "--fetch-block");
        refused(&["--worker-id", ""], "--worker-id");
        assert!(
            parse(&["--fetch-block", "1000"]).is_err(),
            "a duration needs its unit"
        );
        assert!(WorkerConfig::new("").validate().is_err());
    }
}
