//! Whether this node can serve: the backend answered the last readiness ping, and the node is
//! not draining. `/readyz` reads it; `hello` refuses to store a session while the backend is
//! known to be down; a closing socket does not wait on a backend known to be down.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::metrics::Metrics;

/// See the module docs.
pub(crate) struct Health {
    /// The backend answered the last readiness ping.
    backend_ok: AtomicBool,
    /// The last readiness ping failed (false before the first one: not known to be down).
    backend_down: AtomicBool,
    /// Shutdown has begun: `/readyz` says 503 and no socket is accepted.
    draining: AtomicBool,
    metrics: Arc<Metrics>,
}

impl Health {
    pub(crate) fn new(metrics: Arc<Metrics>) -> Self {
        Health {
            backend_ok: AtomicBool::new(false),
            backend_down: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            metrics,
        }
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

    /// Records a readiness ping's outcome; returns the previous one.
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
