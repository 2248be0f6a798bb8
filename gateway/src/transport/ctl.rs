//! The control block of one connection ([`ConnCtl`]), shared by its reader, its writer, and
//! whatever else reaches the socket (the fan-out, a drain, a takeover): the close reason (the
//! first one wins), the writer's one wake-up, the clocks the writer keeps (last frame received,
//! hello done, token expiry), and the hook the writer runs before its close frame.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use tokio::sync::Notify;

/// Why and how a connection closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CloseReason {
    pub(crate) code: u16,
    pub(crate) reason: &'static str,
    /// Write what is already queued before the close frame (a reply explaining the close, or
    /// the last events before a restart). Off for a slow consumer, whose queue is the problem.
    pub(crate) flush: bool,
}

/// Run by the writer once everything that will ever be written is written, before the close
/// frame (bounded by half the close timeout): a session saved now is up to date when the
/// client learns of the close and resumes elsewhere.
pub(crate) trait BeforeClose: Send + Sync + 'static {
    fn before_close(self: Arc<Self>) -> Pin<Box<dyn Future<Output = ()> + Send>>;
}

/// See the module docs.
pub(crate) struct ConnCtl {
    pub(crate) id: u64,
    close: OnceLock<CloseReason>,
    wake: Notify,
    /// Milliseconds since the node's socket clock started when the client last sent a frame.
    pub(crate) last_rx_ms: AtomicU64,
    /// The connection was opened (`hello`, `initialize`): the hello deadline no longer applies.
    pub(crate) hello_done: AtomicBool,
    /// Unix seconds at which the client's token expires; 0 for never.
    pub(crate) expires_at: AtomicU64,
    /// Set when the connection has state to save before it closes (its session). Weak: what it
    /// points at belongs to the connection, not to its control block.
    before_close: OnceLock<Weak<dyn BeforeClose>>,
}

impl ConnCtl {
    pub(crate) fn new(id: u64, now_ms: u64) -> Self {
        ConnCtl {
            id,
            close: OnceLock::new(),
            wake: Notify::new(),
            last_rx_ms: AtomicU64::new(now_ms),
            hello_done: AtomicBool::new(false),
            expires_at: AtomicU64::new(0),
            before_close: OnceLock::new(),
        }
    }

    /// Asks the writer to close the socket. The first reason given wins; later ones are
    /// ignored. Returns whether this call set the reason.
    pub(crate) fn close(&self, code: u16, reason: &'static str, flush: bool) -> bool {
        let set = self
            .close
            .set(CloseReason {
                code,
                reason,
                flush,
            })
            .is_ok();
        if set {
            self.wake.notify_one();
        }
        set
    }

    pub(crate) fn close_reason(&self) -> Option<CloseReason> {
        self.close.get().copied()
    }

    pub(crate) fn is_closing(&self) -> bool {
        self.close.get().is_some()
    }

    /// Completes when the writer has something to look at: a frame was queued, the
    /// connection is closing, or the last sender went.
    pub(crate) async fn woken(&self) {
        self.wake.notified().await
    }

    pub(crate) fn wake_writer(&self) {
        self.wake.notify_one();
    }

    pub(crate) fn touch(&self, now_ms: u64) {
        self.last_rx_ms.store(now_ms, Ordering::Relaxed);
    }

    /// The connection is open (its hello is done); its token expires at `expires_at` (Unix
    /// seconds), if it does.
    pub(crate) fn opened(&self, expires_at: Option<u64>) {
        if let Some(exp) = expires_at {
            self.expires_at.store(exp, Ordering::Relaxed);
        }
        self.hello_done.store(true, Ordering::Relaxed);
    }

    /// The client refreshed its token: it now expires at `expires_at` (never, for `None`).
    /// The writer sees a later expiry at its next look; an earlier one within a heartbeat.
    pub(crate) fn refreshed(&self, expires_at: Option<u64>) {
        self.expires_at
            .store(expires_at.unwrap_or(0), Ordering::Relaxed);
    }

    pub(crate) fn is_open(&self) -> bool {
        self.hello_done.load(Ordering::Relaxed)
    }

    /// Sets what the writer runs before its close frame (once).
    pub(crate) fn set_before_close(&self, hook: Weak<dyn BeforeClose>) {
        let _ = self.before_close.set(hook);
    }

    pub(crate) fn before_close_hook(&self) -> Option<Arc<dyn BeforeClose>> {
        self.before_close.get().and_then(Weak::upgrade)
    }
}
