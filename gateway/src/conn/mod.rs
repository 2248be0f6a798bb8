//! One client connection: a reader task (this module's [`serve`], which parses frames and
//! dispatches requests) and a writer task ([`writer`], which owns the socket's write half and
//! drains a bounded queue). Everything else reaches the socket through [`Out`] messages on
//! that queue, or through [`ConnCtl::close`], which works even when the queue is full.

mod frames;
mod queue;
pub(crate) mod reader;
pub(crate) mod writer;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use switchboard_core::auth::Identity;
use switchboard_core::wire::close;
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::dispatch::ConnState;
use crate::node::Node;
use crate::sessions::{LiveSession, OwedReply, Position};
use switchboard_core::history::EventId;

/// The sending side of a connection's outbound queue.
pub(crate) type OutTx = queue::Sender;
pub(crate) use queue::TrySendError;

/// What the writer sends. Text frames are shared `Bytes`: an event's frame is encoded once and
/// cloned (a reference count) into every subscriber's queue.
#[derive(Debug)]
pub(crate) enum Out {
    /// A text message's payload (the writer frames it).
    Text(Bytes),
    /// A whole text frame, framed once for every subscriber ([`text_frame`]): an event.
    Frame(Bytes),
    Pong(Bytes),
    /// A history event, framed like [`Out::Frame`]: once it is written, the subscriber's saved
    /// position moves to its id.
    Event(Bytes, Arc<Position>, EventId),
    /// A reply the session is owed: once it is written, the session owes it no more.
    Owed(Bytes, Arc<OwedReply>),
}

impl Out {
    /// Whatever is owed on writing it: a saved position, a reply no longer owed.
    pub(crate) fn written(&self) {
        match self {
            Out::Event(_, position, id) => position.written(*id),
            Out::Owed(_, owed) => owed.live.answered(&owed.raw_id),
            Out::Text(_) | Out::Frame(_) | Out::Pong(_) => {}
        }
    }
}

/// A whole server text frame (header and payload) for a message every subscriber gets alike:
/// server frames are not masked, so one framing serves them all, and a socket with one event
/// to send writes it with one `write` of shared bytes.
pub(crate) fn text_frame(payload: &[u8]) -> Bytes {
    writer::framed(writer::OP_TEXT, payload)
}

/// Why and how a connection closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CloseReason {
    pub(crate) code: u16,
    pub(crate) reason: &'static str,
    /// Write what is already queued before the close frame (a reply explaining the close, or
    /// the last events before a restart). Off for a slow consumer, whose queue is the problem.
    pub(crate) flush: bool,
}

/// The control block of one connection, shared by its reader, its writer and the fan-out.
pub(crate) struct ConnCtl {
    pub(crate) id: u64,
    close: OnceLock<CloseReason>,
    wake: Notify,
    /// Milliseconds since the node's epoch when the client last sent a frame.
    pub(crate) last_rx_ms: AtomicU64,
    pub(crate) hello_done: AtomicBool,
    /// Unix seconds at which the client's token expires; 0 for never.
    pub(crate) expires_at: AtomicU64,
    /// The connection's stored session, once `hello` opened it: the writer saves it before it
    /// sends the close frame, so a client that reconnects on the close finds it up to date.
    pub(crate) session: OnceLock<std::sync::Weak<LiveSession>>,
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
            session: OnceLock::new(),
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
}

/// How the upgrade went, decided before the socket existed.
#[derive(Debug)]
pub(crate) enum Admission {
    /// Authenticated by header or query token (or no token given; `hello` decides).
    Open(Option<Identity>),
    /// A token was given and is bad or expired: close 1008.
    BadToken,
    /// The node holds `max_connections` sockets: close 1013.
    Full,
}

/// Serves one upgraded socket until it closes. `read_buf` holds bytes the HTTP layer read
/// past the upgrade request.
pub(crate) async fn serve(
    node: Arc<Node>,
    stream: TcpStream,
    read_buf: Bytes,
    admission: Admission,
    mcp: bool,
) {
    let stream = match fresh_registration(stream) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "re-registering a socket failed; dropping it");
            return;
        }
    };
    let ctl = Arc::new(ConnCtl::new(node.next_conn_id(), node.now_ms()));
    let (tx, rx) = queue::channel(node.config.outbound_queue, ctl.clone());
    let _registration = Registration::new(&node, ctl.clone(), tx.clone());
    if node.is_draining() {
        // Upgraded while the drain took its snapshot of the registry: leave with the others.
        ctl.close(
            close::RESTARTING,
            "node restarting, reconnect elsewhere",
            true,
        );
    }
    let (read_half, write_half) = stream.into_split();
    let identity = match admission {
        Admission::Open(identity) => identity,
        Admission::BadToken => {
            ctl.close(close::POLICY, "bad or expired token", false);
            None
        }
        Admission::Full => {
            ctl.close(close::TRY_AGAIN_LATER, "node full, try again later", false);
            None
        }
    };
    let mut writer = tokio::spawn(writer::run(write_half, rx, ctl.clone(), node.clone()));
    let mut state = ConnState::new(node.clone(), ctl.clone(), tx, identity);
    state.mcp = mcp;
    {
        let reader = reader::run(&node, &mut state, read_half, read_buf);
        tokio::pin!(reader);
        let reader_ended = tokio::select! {
            _ = &mut reader => true,
            _ = &mut writer => false,
        };
        // The waits below are boxed: teardown state, not carried by every live connection.
        if reader_ended {
            // The client went away or broke the protocol; make sure the writer ends too.
            ctl.close(close::NORMAL, "", true);
            let _ = Box::pin(tokio::time::timeout(node.config.close_timeout, &mut writer)).await;
        } else {
            // Our close frame is out: give the client a moment to answer it.
            let _ = Box::pin(tokio::time::timeout(node.config.close_timeout, &mut reader)).await;
        }
    }
    writer.abort();
    if let Some(live) = state.live.take() {
        // Boxed: a teardown step, not state every live connection carries.
        Box::pin(crate::sessions::detach(&node, &live)).await;
    }
    // Dropping `state` releases the subscriptions and `_registration` the registry entry; both
    // are drop guards, so a panic in a handler cleans up too.
}

/// The socket registered with the reactor anew. The HTTP task that read the upgrade request
/// left its waker in the socket's readiness slots, and a finished task's memory (about 900
/// bytes) lives as long as a waker of it does: re-registering drops them. Two `epoll_ctl`s.
fn fresh_registration(stream: TcpStream) -> std::io::Result<TcpStream> {
    TcpStream::from_std(stream.into_std()?)
}

/// A connection's entry in the node's registry and gauge, for as long as it lives.
struct Registration {
    node: Arc<Node>,
    id: u64,
}

impl Registration {
    fn new(node: &Arc<Node>, ctl: Arc<ConnCtl>, tx: OutTx) -> Self {
        let id = ctl.id;
        node.registry.insert(ctl, tx);
        node.metrics.connections_total.inc();
        node.metrics.connections.inc();
        Registration {
            node: node.clone(),
            id,
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.node.registry.remove(self.id);
        self.node.metrics.connections.dec();
    }
}
