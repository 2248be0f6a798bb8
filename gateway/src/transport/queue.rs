//! The bounded outbound queue of one socket: many senders (the reader's replies, the fan-out,
//! calls answering later), one receiver (the writer), and what goes through it ([`Out`]).
//!
//! Written here rather than taken from `tokio::sync::mpsc` for memory: a tokio channel allocates
//! a block of 32 slots when it is created, about 2 KiB per connection before anything is sent.
//! This queue is a `VecDeque` behind a mutex that holds nothing while empty: a small drain
//! that empties it gives the memory back at once (a busy socket keeps its capacity until it
//! has been quiet for a heartbeat, [`Receiver::shrink`]). The
//! critical sections are a push or a drain, so the lock is held for nanoseconds.
//!
//! Senders that need room wait on one notifier: [`Sender::send`] when the queue is full,
//! [`Sender::room`] (a replay keeping headroom for live events) until enough is free. The
//! receiver wakes them when a drain makes the room they wait for, and when the connection
//! starts closing. (One notifier for these and for [`Sender::closed`]: a second one would cost
//! every idle connection its size, and only a replay, one at a time per connection, asks for
//! headroom.)

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::Notify;

use super::ctl::ConnCtl;

/// A drain of at most this many items releases the queue's and the writer's buffers (a quiet
/// socket holds none; a busy one keeps them).
pub(crate) const SMALL_BATCH: usize = 4;

/// What the writer sends. Payloads are shared `Bytes`: an event's frame is encoded once and
/// cloned (a reference count) into every subscriber's queue.
pub(crate) enum Out {
    /// A text message's payload (the writer frames it).
    Text(Bytes),
    /// A whole text frame, framed once for every subscriber (`frames::text_frame`).
    Frame(Bytes),
    Pong(Bytes),
    /// A whole frame whose writing someone waits to hear of (an event of a history topic:
    /// the subscriber's saved position moves).
    FrameReceipt(Bytes, Receipt),
    /// A text payload whose writing someone waits to hear of (a reply the session is owed).
    TextReceipt(Bytes, Receipt),
}

impl Out {
    /// The bytes this item holds (what the queue's byte bound counts).
    pub(crate) fn len(&self) -> usize {
        match self {
            Out::Text(b) | Out::Frame(b) | Out::Pong(b) => b.len(),
            Out::FrameReceipt(b, _) | Out::TextReceipt(b, _) => b.len(),
        }
    }

    /// Tells whoever waits that this item has been written.
    pub(crate) fn written(&self) {
        if let Out::FrameReceipt(_, r) | Out::TextReceipt(_, r) = self {
            r.to.written(r.mark);
        }
    }
}

impl std::fmt::Debug for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (kind, bytes) = match self {
            Out::Text(b) => ("Text", b),
            Out::Frame(b) => ("Frame", b),
            Out::Pong(b) => ("Pong", b),
            Out::FrameReceipt(b, _) => ("FrameReceipt", b),
            Out::TextReceipt(b, _) => ("TextReceipt", b),
        };
        write!(f, "{kind}({} bytes)", bytes.len())
    }
}

/// Told when an item it was attached to has been written to the socket.
pub(crate) trait Written: Send + Sync {
    fn written(&self, mark: Mark);
}

/// What a [`Written`] is told, chosen by whoever queued the item (an event id, say).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Mark(pub(crate) u64, pub(crate) u64);

/// Who to tell once an item is written, and what.
pub(crate) struct Receipt {
    pub(crate) to: Arc<dyn Written>,
    pub(crate) mark: Mark,
}

struct State {
    /// The oldest queued item when it is alone: a socket that gets one event at a time never
    /// allocates for its queue.
    first: Option<Out>,
    /// Everything after `first` (everything, when `first` is empty), in order.
    rest: VecDeque<Out>,
    /// The bytes of everything queued.
    bytes: usize,
    /// The receiver is gone: nothing will be read any more.
    closed: bool,
    /// A sender waits in [`Sender::room`], or in [`Sender::send`] for bytes to drain: the next
    /// drain wakes it, full queue or not.
    wants_room: bool,
}

impl State {
    fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.rest.len()
    }

    fn push(&mut self, out: Out) {
        self.bytes += out.len();
        if self.first.is_none() && self.rest.is_empty() {
            self.first = Some(out);
        } else {
            self.rest.push_back(out);
        }
    }
}

/// What [`Receiver::take`] found.
pub(crate) enum Taken {
    Nothing,
    /// A lone item, handed over without the batch.
    One(Out),
    /// This many items, moved into the batch.
    Many(usize),
}

struct Shared {
    state: Mutex<State>,
    cap: usize,
    /// Bytes queued at most (a lone item may be larger: it is let in on an empty queue).
    byte_cap: usize,
    senders: AtomicUsize,
    /// The connection: its writer is woken through it when something is queued or the last
    /// sender goes (one wake-up for the queue and a close alike).
    ctl: Arc<ConnCtl>,
    /// Room was made, or the receiver went (senders wait on it).
    writable: Notify,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("queue lock poisoned")
    }
}

/// A queue of at most `cap` frames and `byte_cap` bytes for the connection `ctl`.
pub(crate) fn channel(cap: usize, byte_cap: usize, ctl: Arc<ConnCtl>) -> (Sender, Receiver) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            first: None,
            rest: VecDeque::new(),
            bytes: 0,
            closed: false,
            wants_room: false,
        }),
        cap: cap.max(1),
        byte_cap: byte_cap.max(1),
        senders: AtomicUsize::new(1),
        ctl,
        writable: Notify::new(),
    });
    (
        Sender {
            shared: shared.clone(),
        },
        Receiver { shared },
    )
}

/// Why a frame was not queued; it is handed back.
#[derive(Debug)]
pub(crate) enum TrySendError {
    Full(#[allow(dead_code)] Out),
    Closed(#[allow(dead_code)] Out),
}

/// The receiver is gone.
#[derive(Debug)]
pub(crate) struct SendError;

pub(crate) struct Sender {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender").finish_non_exhaustive()
    }
}

impl Clone for Sender {
    fn clone(&self) -> Self {
        self.shared.senders.fetch_add(1, Ordering::Relaxed);
        Sender {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        if self.shared.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.shared.ctl.wake_writer();
        }
    }
}

impl Sender {
    /// Queues `out` if there is room, without waiting.
    pub(crate) fn try_send(&self, out: Out) -> Result<(), TrySendError> {
        self.push(out, false)
    }

    /// Queues `out` if there is room; if not, and `wait` is set, asks the next drain (whatever
    /// it frees) to wake the waiting senders, under the same lock as the check, so no drain
    /// can slip between them unseen.
    fn push(&self, out: Out, wait: bool) -> Result<(), TrySendError> {
        let mut s = self.shared.lock();
        if s.closed {
            return Err(TrySendError::Closed(out));
        }
        let len = s.len();
        if len >= self.shared.cap || (len > 0 && s.bytes + out.len() > self.shared.byte_cap) {
            s.wants_room |= wait;
            return Err(TrySendError::Full(out));
        }
        let was_empty = len == 0;
        s.push(out);
        drop(s);
        // The writer drains everything queued before it sleeps: only the first item wakes it.
        if was_empty {
            self.shared.ctl.wake_writer();
        }
        Ok(())
    }

    /// Queues `out`, waiting for room.
    pub(crate) async fn send(&self, out: Out) -> Result<(), SendError> {
        // The common case without registering a waiter.
        let mut out = match self.try_send(out) {
            Ok(()) => return Ok(()),
            Err(TrySendError::Closed(_)) => return Err(SendError),
            Err(TrySendError::Full(back)) => Some(back),
        };
        loop {
            let room = self.shared.writable.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            match self.push(out.take().expect("kept until sent"), true) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Closed(_)) => return Err(SendError),
                Err(TrySendError::Full(back)) => out = Some(back),
            }
            room.await;
        }
    }

    /// Whether `room` more items fit, and at most half the byte bound is used: the headroom a
    /// replay leaves for the connection's live events.
    pub(crate) fn has_room(&self, room: usize) -> bool {
        let s = self.shared.lock();
        self.roomy(&s, room)
    }

    fn roomy(&self, s: &State, room: usize) -> bool {
        self.shared.cap.saturating_sub(s.len()) >= room && s.bytes <= self.shared.byte_cap / 2
    }

    /// Waits until [`has_room`](Self::has_room) (a replay leaving headroom for the
    /// connection's live events), woken by the drains that make room. Fails when the receiver
    /// is gone, or when the connection is closing and there is no room.
    pub(crate) async fn room(&self, room: usize) -> Result<(), SendError> {
        loop {
            let woken = self.shared.writable.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            {
                let mut s = self.shared.lock();
                if !s.closed && self.roomy(&s, room) {
                    return Ok(());
                }
                if s.closed || self.shared.ctl.is_closing() {
                    return Err(SendError);
                }
                // Under the lock: the next drain sees it, and wakes us.
                s.wants_room = true;
            }
            woken.await;
        }
    }

    /// The connection this queue belongs to.
    pub(crate) fn ctl(&self) -> &Arc<ConnCtl> {
        &self.shared.ctl
    }

    /// Completes when the receiver is gone (the connection is over).
    pub(crate) async fn closed(&self) {
        loop {
            let woken = self.shared.writable.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if self.is_closed() {
                return;
            }
            woken.await;
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.shared.lock().closed
    }

    /// Frames the queue holds at most.
    pub(crate) fn bound(&self) -> usize {
        self.shared.cap
    }

    /// Frames queued now (metrics sample it).
    pub(crate) fn queued(&self) -> usize {
        self.shared.lock().len()
    }

    /// Frames that can be queued now.
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.shared.cap.saturating_sub(self.shared.lock().len())
    }
}

pub(crate) struct Receiver {
    shared: Arc<Shared>,
}

impl Receiver {
    /// Every sender is gone: nothing more will be queued.
    pub(crate) fn senders_gone(&self) -> bool {
        self.shared.senders.load(Ordering::Acquire) == 0
    }

    /// Moves up to `limit` queued frames into `batch` without waiting (the writer waits on
    /// its connection's wake-up, [`ConnCtl::woken`]).
    pub(crate) fn try_recv_many(&self, batch: &mut Vec<Out>, limit: usize) -> usize {
        match self.take(batch, limit) {
            Taken::Nothing => 0,
            Taken::One(out) => {
                batch.push(out);
                1
            }
            Taken::Many(n) => n,
        }
    }

    /// Like [`Self::try_recv_many`], but a lone item comes back as itself, so the common case
    /// (one event for a quiet socket) touches no batch buffer.
    pub(crate) fn take(&self, batch: &mut Vec<Out>, limit: usize) -> Taken {
        let mut s = self.shared.lock();
        let len = s.len();
        if len == 0 {
            return Taken::Nothing;
        }
        // Senders wait for room only on a full queue (in frames), or after asking
        // (`wants_room`, below): no one to wake otherwise.
        let was_full = len >= self.shared.cap;
        let taken = if len == 1 {
            let out = match s.first.take() {
                Some(out) => out,
                None => s.rest.pop_front().expect("one item"),
            };
            s.bytes = 0;
            Taken::One(out)
        } else {
            let n = len.min(limit);
            let from = batch.len();
            let mut moved = 0;
            if let Some(first) = s.first.take() {
                batch.push(first);
                moved = 1;
            }
            batch.extend(s.rest.drain(..n - moved));
            let taken_bytes: usize = batch[from..].iter().map(Out::len).sum();
            s.bytes -= taken_bytes;
            Taken::Many(n)
        };
        if s.rest.is_empty() && s.rest.capacity() > 0 && len <= SMALL_BATCH {
            // A quiet socket holds no queue memory; a busy one keeps its capacity.
            s.rest = VecDeque::new();
        }
        // Senders waiting for room: on a full queue, or a replay waiting for its headroom.
        let room_wanted = std::mem::take(&mut s.wants_room);
        drop(s);
        if was_full || room_wanted {
            self.shared.writable.notify_waiters();
        }
        taken
    }

    /// Wakes every sender waiting for room, to look again (the connection is closing: one
    /// that waits for headroom gives up rather than wait for drains that may not come).
    pub(crate) fn wake_senders(&self) {
        self.shared.writable.notify_waiters();
    }

    /// Gives the queue's memory back if it is empty (an idle socket holds none).
    pub(crate) fn shrink(&self) {
        let mut s = self.shared.lock();
        if s.rest.is_empty() && s.rest.capacity() > 0 {
            s.rest = VecDeque::new();
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let mut s = self.shared.lock();
        s.closed = true;
        s.first = None;
        s.rest.clear();
        s.bytes = 0;
        drop(s);
        self.shared.writable.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn text(n: u8) -> Out {
        Out::Text(Bytes::from(vec![n]))
    }

    fn first_byte(o: &Out) -> u8 {
        match o {
            Out::Text(b) => b[0],
            _ => unreachable!(),
        }
    }

    fn ctl() -> Arc<ConnCtl> {
        Arc::new(ConnCtl::new(1, 0))
    }

    #[tokio::test]
    async fn bounded_in_order_and_closes() {
        let ctl = ctl();
        let (tx, rx) = channel(2, 1 << 20, ctl.clone());
        tx.try_send(text(1)).unwrap();
        tx.try_send(text(2)).unwrap();
        assert!(matches!(tx.try_send(text(3)), Err(TrySendError::Full(_))));
        assert_eq!(tx.capacity(), 0);
        // A waiting send completes once the writer makes room.
        let tx2 = tx.clone();
        let waiting = tokio::spawn(async move { tx2.send(text(3)).await.is_ok() });
        let mut batch = Vec::new();
        // The first item queued woke the writer.
        ctl.woken().await;
        assert_eq!(rx.try_recv_many(&mut batch, 64), 2);
        assert!(waiting.await.unwrap());
        assert_eq!(rx.try_recv_many(&mut batch, 64), 1);
        assert_eq!(batch.iter().map(first_byte).collect::<Vec<_>>(), [1, 2, 3]);
        rx.shrink();
        // The last sender gone: the writer is woken and sees the end.
        assert!(!rx.senders_gone());
        drop(tx);
        ctl.woken().await;
        assert!(rx.senders_gone());
    }

    #[test]
    fn a_lone_item_and_partial_drains_keep_the_order() {
        let (tx, rx) = channel(16, 1 << 20, ctl());
        let mut batch = Vec::new();
        tx.try_send(text(1)).unwrap();
        assert!(matches!(rx.take(&mut batch, 64), Taken::One(o) if first_byte(&o) == 1));
        for n in 2..=6 {
            tx.try_send(text(n)).unwrap();
        }
        assert_eq!(tx.capacity(), 11);
        // Two now, the rest later, and what is queued meanwhile goes behind them.
        assert!(matches!(rx.take(&mut batch, 2), Taken::Many(2)));
        tx.try_send(text(7)).unwrap();
        assert_eq!(rx.try_recv_many(&mut batch, 64), 4);
        assert_eq!(
            batch.iter().map(first_byte).collect::<Vec<_>>(),
            [2, 3, 4, 5, 6, 7]
        );
        assert!(matches!(rx.take(&mut batch, 64), Taken::Nothing));
    }

    #[tokio::test]
    async fn room_waits_for_a_drain_not_a_timer() {
        let ctl = ctl();
        let (tx, rx) = channel(4, 1 << 20, ctl.clone());
        for n in 0..4 {
            tx.try_send(text(n)).unwrap();
        }
        let tx2 = tx.clone();
        let waiting = tokio::spawn(async move { tx2.room(2).await.is_ok() });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        let mut batch = Vec::new();
        // One taken: not yet room for two; the waiter stays asleep.
        assert!(matches!(rx.take(&mut batch, 1), Taken::Many(1)));
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        assert!(matches!(rx.take(&mut batch, 64), Taken::Many(3)));
        assert!(waiting.await.unwrap());
        // A closing connection has no room to wait for.
        ctl.close(1000, "", true);
        assert!(
            tx.room(1).await.is_ok(),
            "there is room: nothing to wait for"
        );
        for n in 0..4 {
            tx.try_send(text(n)).unwrap();
        }
        assert!(tx.room(1).await.is_err());
    }

    fn sized(n: usize) -> Out {
        Out::Text(Bytes::from(vec![b'x'; n]))
    }

    #[tokio::test]
    async fn bounded_in_bytes_too() {
        let ctl = ctl();
        let (tx, rx) = channel(100, 1000, ctl.clone());
        // A lone item larger than the bound goes in: nothing could send it otherwise.
        tx.try_send(sized(1500)).unwrap();
        assert!(matches!(tx.try_send(sized(1)), Err(TrySendError::Full(_))));
        let mut batch = Vec::new();
        assert!(matches!(rx.take(&mut batch, 64), Taken::One(_)));
        tx.try_send(sized(600)).unwrap();
        tx.try_send(sized(400)).unwrap();
        assert!(matches!(tx.try_send(sized(1)), Err(TrySendError::Full(_))));
        // Over half the bytes: no headroom for a replay, however many frames are free.
        assert!(!tx.has_room(1));
        let tx2 = tx.clone();
        let waiting = tokio::spawn(async move { tx2.send(sized(300)).await.is_ok() });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        assert!(matches!(rx.take(&mut batch, 64), Taken::Many(2)));
        assert!(waiting.await.unwrap());
        assert!(tx.has_room(1));
        assert!(matches!(rx.take(&mut batch, 64), Taken::One(o) if o.len() == 300));
        assert!(matches!(rx.take(&mut batch, 64), Taken::Nothing));
        tx.try_send(sized(1000)).unwrap();
        assert!(matches!(rx.take(&mut batch, 64), Taken::One(_)));
        // A big item behind a small one (the queue far from half full) is woken by the drain
        // that empties the queue.
        tx.try_send(sized(100)).unwrap();
        let tx3 = tx.clone();
        let big = tokio::spawn(async move { tx3.send(sized(950)).await.is_ok() });
        tokio::task::yield_now().await;
        assert!(!big.is_finished());
        assert!(matches!(rx.take(&mut batch, 64), Taken::One(_)));
        assert!(big.await.unwrap());
    }

    #[tokio::test]
    async fn senders_see_the_receiver_go() {
        let (tx, rx) = channel(1, 1 << 20, ctl());
        tx.try_send(text(1)).unwrap();
        let tx2 = tx.clone();
        let blocked = tokio::spawn(async move { tx2.send(text(2)).await.is_err() });
        let closed = {
            let tx3 = tx.clone();
            tokio::spawn(async move { tx3.closed().await })
        };
        tokio::task::yield_now().await;
        drop(rx);
        assert!(
            blocked.await.unwrap(),
            "a waiting send fails when the receiver goes"
        );
        closed.await.unwrap();
        assert!(tx.is_closed());
        assert!(matches!(tx.try_send(text(3)), Err(TrySendError::Closed(_))));
    }
}
