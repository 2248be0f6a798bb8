//! What every socket of a node shares: the bounds and timeouts of a connection
//! ([`SocketLimits`]), the millisecond clock connections keep in atomics, and connection ids.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::metrics::Metrics;

/// The bounds and timeouts of one socket (from the node's configuration).
#[derive(Debug, Clone, Copy)]
pub(crate) struct SocketLimits {
    /// The connection must be opened (`hello`) within this long (4001).
    pub(crate) hello_timeout: Duration,
    /// The largest message a client may send, fragments together (1009).
    pub(crate) max_message_bytes: usize,
    /// Frames queued for the socket at most (the fan-out closes it with 4008 past it).
    pub(crate) outbound_queue: usize,
    /// Bytes queued for the socket at most (likewise).
    pub(crate) outbound_queue_bytes: usize,
    /// A quiet client is pinged this often, and closed (4002) after three without a frame.
    pub(crate) heartbeat: Duration,
    /// One write may take this long before the peer counts as dead.
    pub(crate) write_timeout: Duration,
    /// After the close frame, how long to wait for the client's.
    pub(crate) close_timeout: Duration,
}

/// See the module docs.
#[derive(Debug)]
pub(crate) struct Sockets {
    pub(crate) limits: SocketLimits,
    /// Close frames are counted by code as the writers send them.
    pub(crate) metrics: Arc<Metrics>,
    /// Zero point of the millisecond clocks kept in atomics (`ConnCtl::last_rx_ms`).
    epoch: Instant,
    next_id: AtomicU64,
}

impl Sockets {
    pub(crate) fn new(limits: SocketLimits, metrics: Arc<Metrics>) -> Self {
        Sockets {
            limits,
            metrics,
            epoch: Instant::now(),
            next_id: AtomicU64::new(1),
        }
    }

    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Milliseconds since the clock started, on tokio's clock (paused in tests).
    pub(crate) fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    pub(crate) fn instant_of_ms(&self, ms: u64) -> Instant {
        self.epoch + Duration::from_millis(ms)
    }
}
