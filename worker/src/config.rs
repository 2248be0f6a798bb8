//! The worker's configuration, declared once: each setting's flag, `SWITCHBOARD_*` variable,
//! default, help and validation are on its field ([`WorkerConfig`] is `clap::Args`).
//! Durations are written with their unit (`1s`, `250ms`).

use std::time::Duration;

use switchboard_core::settings::{
    at_least_one, duration, from_args_without_env, positive_duration,
};

/// Heartbeats missed before a worker's registry entry is stale.
pub const REGISTRY_MISSES: u32 = 3;

/// This worker's default id: `worker-<$HOSTNAME or gateway-<pid>>-<pid>`.
pub fn default_worker_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| format!("gateway-{}", std::process::id()));
    format!("worker-{host}-{}", std::process::id())
}

fn worker_id(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    Ok(s.to_owned())
}

fn deliveries(s: &str) -> Result<u64, String> {
    match s.trim().parse::<u64>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// See the module docs.
#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "Worker")]
pub struct WorkerConfig {
    /// This worker's id [default: worker-$HOSTNAME-<pid>].
    #[arg(long, env = "SWITCHBOARD_WORKER_ID", default_value_t = default_worker_id(), hide_default_value = true, value_parser = worker_id)]
    pub worker_id: String,
    /// Calls this worker runs at once (all tools together).
    #[arg(long, env = "SWITCHBOARD_CONCURRENCY", default_value = "64", value_name = "N", value_parser = at_least_one)]
    pub concurrency: usize,
    /// Registry heartbeat; the worker leaves tools/list after three missed ones.
    #[arg(long, env = "SWITCHBOARD_WORKER_HEARTBEAT", default_value = "1s", value_name = "DURATION", value_parser = positive_duration)]
    pub heartbeat: Duration,
    /// A job whose worker is silent this long is taken over by another worker (a running job
    /// is kept visible by heartbeats every third of it; at least three heartbeats).
    #[arg(long, env = "SWITCHBOARD_VISIBILITY_TIMEOUT", default_value = "30s", value_name = "DURATION", value_parser = positive_duration)]
    pub visibility_timeout: Duration,
    /// Deliveries after which a job that keeps killing workers is dead-lettered.
    #[arg(long, env = "SWITCHBOARD_MAX_DELIVERIES", default_value = "3", value_name = "N", value_parser = deliveries)]
    pub max_deliveries: u64,
    /// How long one fetch waits for a job.
    #[arg(long, env = "SWITCHBOARD_FETCH_BLOCK", default_value = "1s", value_name = "DURATION", value_parser = positive_duration)]
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
        from_args_without_env(&["--worker-id", worker_id]).expect("the defaults are valid")
    }

    /// Checks what involves several settings (each alone is checked when it is parsed).
    pub fn validate(&self) -> Result<(), ConfigError> {
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
        let c: WorkerConfig = from_args_without_env(&["--heartbeat", "20s"]).unwrap();
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("--visibility-timeout")
        );
        assert!(from_args_without_env::<WorkerConfig>(&["--concurrency", "0"]).is_err());
        assert!(from_args_without_env::<WorkerConfig>(&["--fetch-block", "1000"]).is_err());
    }
}
