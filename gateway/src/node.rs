//! The state one gateway node shares between its connections: configuration, backend,
//! fan-out, the subscription task's handle, the connection registry and the readiness flags.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use switchboard_core::backend::Backend;
use tokio::time::Instant;

use crate::catalog::CatalogCell;
use crate::config::GatewayConfig;
use crate::drain::Registry;
use crate::fanout::Fanout;
use crate::metrics::Metrics;
use crate::sessions::Sessions;
use crate::signals::CallSignals;
use crate::subscriptions::Subscriptions;

/// See the module docs.
pub(crate) struct Node {
    pub(crate) config: GatewayConfig,
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) fanout: Arc<Fanout>,
    pub(crate) subscriptions: Subscriptions,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) registry: Registry,
    pub(crate) catalog: CatalogCell,
    pub(crate) signals: Arc<CallSignals>,
    pub(crate) sessions: Arc<Sessions>,
    /// Replays running at once, at most (`max_concurrent_replays`).
    pub(crate) replay_slots: tokio::sync::Semaphore,
    /// The backend answered the last readiness ping.
    backend_ok: AtomicBool,
    /// The last readiness ping failed (false before the first one: not known to be down).
    backend_down: AtomicBool,
    /// Shutdown has begun: `/readyz` says 503 and no socket is accepted.
    draining: AtomicBool,
    /// Zero point of the millisecond clocks kept in atomics (`ConnCtl::last_rx_ms`).
    epoch: Instant,
    next_conn_id: AtomicU64,
}

impl Node {
    pub(crate) fn new(
        config: GatewayConfig,
        backend: Arc<dyn Backend>,
        fanout: Arc<Fanout>,
        signals: Arc<CallSignals>,
        sessions: Arc<Sessions>,
        subscriptions: Subscriptions,
        metrics: Arc<Metrics>,
    ) -> Self {
        let replay_slots = tokio::sync::Semaphore::new(config.max_concurrent_replays);
        Node {
            config,
            backend,
            fanout,
            subscriptions,
            metrics,
            registry: Registry::default(),
            catalog: CatalogCell::default(),
            signals,
            sessions,
            replay_slots,
            backend_ok: AtomicBool::new(false),
            backend_down: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            epoch: Instant::now(),
            next_conn_id: AtomicU64::new(1),
        }
    }

    pub(crate) fn next_conn_id(&self) -> u64 {
        self.next_conn_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Milliseconds since the node started, on tokio's clock (paused in tests).
    pub(crate) fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    pub(crate) fn instant_of_ms(&self, ms: u64) -> Instant {
        self.epoch + std::time::Duration::from_millis(ms)
    }

    pub(crate) fn is_ready(&self) -> bool {
        self.backend_ok.load(Ordering::Relaxed) && !self.draining.load(Ordering::Relaxed)
    }

    /// The last readiness ping failed: no use trying the backend for a client now.
    pub(crate) fn backend_down(&self) -> bool {
        self.backend_down.load(Ordering::Relaxed)
    }

    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub(crate) fn set_backend_ok(&self, ok: bool) -> bool {
        let was = self.backend_ok.swap(ok, Ordering::Relaxed);
        self.backend_down.store(!ok, Ordering::Relaxed);
        self.metrics.ready.set(self.is_ready() as i64);
        was
    }

    pub(crate) fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
        self.metrics.ready.set(0);
    }
}
