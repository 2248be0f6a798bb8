//! The worker's configuration, declared once: each setting's flag, `SWITCHBOARD_*` variable,
//! default and help are on its field ([`WorkerConfig`] is `clap::Args`), and what each may be
//! is checked in one place, [`WorkerConfig::validate`], which names the flag to fix.
//! Durations are written with their unit (`1s`, `250ms`).

use std::time::Duration;

use switchboard_core::settings::{self, duration};

/// Heartbeats missed before a worker's registry entry is stale.
pub const REGISTRY_MISSES: u32 = 3;
/// The largest `--backlog`: every waiting job heartbeats into the backend (two commands per
/// third of the visibility timeout), and holds a call other workers could run.
pub const MAX_BACKLOG: usize = 65_536;

/// This worker's default id: `worker-<host>-<pid>`, the host being `$HOSTNAME` (the pod name on
/// Kubernetes) or the kernel's host name; `worker-<pid>` when neither is known.
pub fn default_worker_id() -> String {
    let pid = std::process::id();
    match settings::machine_name() {
        Some(host) => format!("worker-{host}-{pid}"),
        None => format!("worker-{pid}"),
    }
}

/// See the module docs.
#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "Worker")]
pub struct WorkerConfig {
    /// This worker's id [default: worker-<$HOSTNAME or host name>-<pid>].
    #[arg(long, env = "SWITCHBOARD_WORKER_ID", default_value_t = default_worker_id(), hide_default_value = true)]
    pub worker_id: String,
    /// Calls this worker runs at once (all tools together).
    #[arg(
        long,
        env = "SWITCHBOARD_WORKER_CONCURRENCY",
        default_value = "64",
        value_name = "N"
    )]
    pub concurrency: usize,
    /// Jobs fetched ahead of free slots and waiting on this worker, at most: one identity's
    /// queued calls cannot then hide another's (docs/tools.md, "Fairness"). Each heartbeats,
    /// and none can run elsewhere until this worker is gone.
    #[arg(
        long,
        env = "SWITCHBOARD_WORKER_BACKLOG",
        default_value = "256",
        value_name = "N"
    )]
    pub backlog: usize,
    /// Calls of one identity (a job's owner: the caller's subject, or anonymous@<address>)
    /// running at once on this worker, so a slot is left for the others; 0, or at least
    /// --concurrency: no cap [default: half of --concurrency, rounded up].
    #[arg(
        long,
        env = "SWITCHBOARD_WORKER_MAX_RUNNING_PER_IDENTITY",
        value_name = "N"
    )]
    pub max_running_per_identity: Option<usize>,
    /// Registry heartbeat; the worker leaves tools/list after three missed ones.
    #[arg(long, env = "SWITCHBOARD_WORKER_HEARTBEAT", default_value = "1s", value_name = "DURATION", value_parser = duration)]
    pub heartbeat: Duration,
    /// A job whose worker is silent this long is taken over by another worker (a running job
    /// is kept visible by heartbeats every third of it; at least three heartbeats).
    #[arg(long, env = "SWITCHBOARD_WORKER_VISIBILITY_TIMEOUT", default_value = "30s", value_name = "DURATION", value_parser = duration)]
    pub visibility_timeout: Duration,
    /// Deliveries after which a job that keeps killing workers is dead-lettered.
    #[arg(
        long,
        env = "SWITCHBOARD_WORKER_MAX_DELIVERIES",
        default_value = "3",
        value_name = "N"
    )]
    pub max_deliveries: u64,
    /// How long one fetch waits for a job.
    #[arg(long, env = "SWITCHBOARD_WORKER_FETCH_BLOCK", default_value = "1s", value_name = "DURATION", value_parser = duration)]
    pub fetch_block: Duration,
    /// On shutdown, how long running calls get to finish.
    #[arg(long = "shutdown-grace", env = "SWITCHBOARD_WORKER_SHUTDOWN_GRACE", default_value = "10s", value_name = "DURATION", value_parser = duration)]
    pub shutdown_grace: Duration,
    /// Serve `/metrics`, `/healthz` and `/readyz` on this address (for the operator's network
    /// only; off by default).
    #[arg(
        long = "admin-listen",
        env = "SWITCHBOARD_WORKER_ADMIN_LISTEN",
        value_name = "ADDR"
    )]
    pub admin_listen: Option<std::net::SocketAddr>,
    /// How often the admin port's metrics sample the depth of each hosted tool's queue
    /// (`switchboard_queue_pending_jobs`, `switchboard_queue_lag_jobs`).
    #[arg(long = "queue-sample-interval", env = "SWITCHBOARD_WORKER_QUEUE_SAMPLE_INTERVAL", default_value = "5s", value_name = "DURATION", value_parser = duration)]
    pub queue_sample_interval: Duration,
    /// How long a client of the admin port has to send its request's headers.
    #[arg(long = "admin-header-timeout", env = "SWITCHBOARD_WORKER_ADMIN_HEADER_TIMEOUT", default_value = "10s", value_name = "DURATION", value_parser = duration)]
    pub admin_header_timeout: Duration,
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

    /// How many calls of one identity may run at once on this worker (`None`: as many as the
    /// worker runs): `--max-running-per-identity`, by default half the concurrency, rounded up.
    pub fn running_cap_per_identity(&self) -> Option<usize> {
        let cap = match self.max_running_per_identity {
            Some(0) => return None,
            Some(n) => n,
            None => self.concurrency.div_ceil(2).max(1),
        };
        (cap < self.concurrency).then_some(cap)
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
        if !(1..=MAX_BACKLOG).contains(&self.backlog) {
            return bad("backlog", "between 1 and 65536");
        }
        if self.max_deliveries == 0 {
            return bad("max-deliveries", "at least 1");
        }
        for (key, d) in [
            ("heartbeat", self.heartbeat),
            ("fetch-block", self.fetch_block),
            ("queue-sample-interval", self.queue_sample_interval),
            ("admin-header-timeout", self.admin_header_timeout),
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
    fn default_id_names_the_host_once() {
        let id = default_worker_id();
        let pid = std::process::id().to_string();
        assert!(id.starts_with("worker-") && id.ends_with(&pid), "{id}");
        assert!(!id.contains("gateway-"), "{id}");
        assert_eq!(id.matches(&pid).count(), 1, "{id}");
    }

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
        refused(&["--backlog", "0"], "--backlog");
        refused(&["--backlog", "65537"], "--backlog");
        parse(&["--backlog", "65536"]).unwrap().validate().unwrap();
        assert!(
            parse(&["--fetch-block", "1000"]).is_err(),
            "a duration needs its unit"
        );
        assert!(WorkerConfig::new("").validate().is_err());
    }

    #[test]
    fn the_running_cap_per_identity() {
        let cap = |args: &[&str]| {
            settings::from_args_without_env::<WorkerConfig>(args)
                .unwrap()
                .running_cap_per_identity()
        };
        assert_eq!(WorkerConfig::new("w").backlog, 256);
        assert_eq!(cap(&[]), Some(32), "half of the default 64");
        assert_eq!(cap(&["--concurrency", "5"]), Some(3), "rounded up");
        assert_eq!(cap(&["--concurrency", "2"]), Some(1));
        assert_eq!(
            cap(&["--concurrency", "1"]),
            None,
            "one slot: nothing to share"
        );
        assert_eq!(cap(&["--max-running-per-identity", "10"]), Some(10));
        assert_eq!(cap(&["--max-running-per-identity", "0"]), None);
        assert_eq!(cap(&["--max-running-per-identity", "64"]), None);
        assert_eq!(cap(&["--max-running-per-identity", "99"]), None);
    }
}
