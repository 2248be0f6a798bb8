//! The worker's configuration: every bound and timeout with its default.

use std::time::Duration;

/// Default: calls one worker runs at once (all tools together).
pub const DEFAULT_CONCURRENCY: usize = 64;
/// Default: how often the worker refreshes its registry entry; it drops out of `tools/list`
/// after three missed heartbeats.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(1);
/// Default: a job whose worker has been silent this long is taken over by another worker. A
/// running job is kept visible by heartbeats every third of this.
pub const DEFAULT_VISIBILITY_TIMEOUT: Duration = Duration::from_secs(30);
/// Default: deliveries after which a job that keeps killing workers is dead-lettered.
pub const DEFAULT_MAX_DELIVERIES: u64 = 3;
/// Default: how long one fetch waits for a job.
pub const DEFAULT_FETCH_BLOCK: Duration = Duration::from_secs(1);
/// Default: on shutdown, how long running calls get to finish.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Heartbeats missed before a worker's registry entry is stale.
pub const REGISTRY_MISSES: u32 = 3;

/// See the module docs.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub worker_id: String,
    pub concurrency: usize,
    pub heartbeat: Duration,
    pub visibility_timeout: Duration,
    pub max_deliveries: u64,
    pub fetch_block: Duration,
    pub shutdown_grace: Duration,
}

/// A setting that cannot work, named by its key.
#[derive(Debug, thiserror::Error)]
#[error("{key} must be {what}")]
pub struct ConfigError {
    pub key: &'static str,
    pub what: &'static str,
}

impl WorkerConfig {
    pub fn new(worker_id: impl Into<String>) -> Self {
        WorkerConfig {
            worker_id: worker_id.into(),
            concurrency: DEFAULT_CONCURRENCY,
            heartbeat: DEFAULT_HEARTBEAT,
            visibility_timeout: DEFAULT_VISIBILITY_TIMEOUT,
            max_deliveries: DEFAULT_MAX_DELIVERIES,
            fetch_block: DEFAULT_FETCH_BLOCK,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
        }
    }

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
        if self.heartbeat.is_zero() || self.fetch_block.is_zero() {
            return bad("heartbeat-ms and fetch-block-ms", "greater than zero");
        }
        if self.visibility_timeout < self.heartbeat * 3 {
            return bad("visibility-timeout-ms", "at least three heartbeats");
        }
        Ok(())
    }
}
