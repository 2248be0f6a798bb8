//! The writer task of one socket: it owns the write half, takes everything queued for the
//! socket at once (up to [`MAX_WRITE_BATCH`] frames) and writes it with one vectored write,
//! headers and shared payloads side by side, nothing copied.
//!
//! It also keeps the connection's clocks with a single timer: the hello deadline (4001), the
//! heartbeat ping and the heartbeat timeout (4002), and the token's expiry (1008). It writes at
//! most one close frame, ever (fastwebsockets 0.10 can send two; we frame our own writes).

use std::io::{self, IoSlice};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use switchboard_core::auth::EXP_LEEWAY_SECS;
use switchboard_core::clock::now_secs;
use switchboard_protocol::close;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::time::Instant;

use super::ctl::{CloseReason, ConnCtl};
use super::frames::{Header, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT};
use super::queue::{Out, Receiver, SMALL_BATCH, Taken};
use super::sockets::Sockets;

/// Frames written to one socket in one vectored write, at most.
pub(crate) const MAX_WRITE_BATCH: usize = 64;
/// Heartbeats without a frame from the client before it is closed with 4002.
const HEARTBEAT_MISSES: u32 = 3;
/// The longest single sleep of the connection's clock (a far-future `exp` stays in range).
const MAX_TIMER_SECS: u64 = 86_400;

/// What to write for one queued item: a header to add (`None`: it is framed already) and the
/// bytes.
fn frame_parts(out: &Out) -> (Option<Header>, &Bytes) {
    match out {
        Out::Frame(b) | Out::FrameReceipt(b, _) => (None, b),
        Out::Text(b) | Out::TextReceipt(b, _) => (Some(Header::new(OP_TEXT, b.len())), b),
        Out::Pong(b) => (Some(Header::new(OP_PONG, b.len())), b),
    }
}

/// Writes `batch` as consecutive frames with vectored writes, then settles what writing them
/// settles (saved positions, owed replies).
async fn write_batch(io: &mut OwnedWriteHalf, batch: &[Out]) -> io::Result<()> {
    write_frames(io, batch).await?;
    for out in batch {
        out.written();
    }
    Ok(())
}

async fn write_frames(io: &mut OwnedWriteHalf, batch: &[Out]) -> io::Result<()> {
    // The common case, one event: one plain write of its shared frame.
    if let [one] = batch
        && let (None, frame) = frame_parts(one)
    {
        return io.write_all(frame).await;
    }
    let headers: Vec<Option<Header>> = batch.iter().map(|o| frame_parts(o).0).collect();
    let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(batch.len() * 2);
    for (h, o) in headers.iter().zip(batch) {
        if let Some(h) = h {
            slices.push(IoSlice::new(h.as_slice()));
        }
        let bytes = frame_parts(o).1;
        if !bytes.is_empty() {
            slices.push(IoSlice::new(bytes));
        }
    }
    write_all_vectored(io, &mut slices).await
}

async fn write_all_vectored(io: &mut OwnedWriteHalf, slices: &mut [IoSlice<'_>]) -> io::Result<()> {
    let mut bufs = slices;
    while !bufs.is_empty() {
        let n = io.write_vectored(bufs).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut bufs, n);
    }
    Ok(())
}

async fn write_control(io: &mut OwnedWriteHalf, opcode: u8, payload: &[u8]) -> io::Result<()> {
    let h = Header::new(opcode, payload.len());
    let mut slices = [IoSlice::new(h.as_slice()), IoSlice::new(payload)];
    write_all_vectored(io, &mut slices).await
}

async fn write_close(io: &mut OwnedWriteHalf, reason: CloseReason) -> io::Result<()> {
    let mut payload = Vec::with_capacity(2 + reason.reason.len());
    payload.extend_from_slice(&reason.code.to_be_bytes());
    // Control frame payloads are at most 125 bytes.
    let text = &reason.reason[..reason.reason.len().min(123)];
    payload.extend_from_slice(text.as_bytes());
    write_control(io, OP_CLOSE, &payload).await?;
    io.flush().await
}

/// What the connection's timer found.
enum Due {
    Close(u16, &'static str),
    Ping,
    Nothing,
}

/// Checks the connection's clocks; returns what is due now and when to look again.
fn check_clocks(ctl: &ConnCtl, sockets: &Sockets, hello_deadline: Instant) -> (Due, Instant) {
    let now = Instant::now();
    let cfg = &sockets.limits;
    let hello_done = ctl.hello_done.load(Ordering::Relaxed);
    if !hello_done && now >= hello_deadline {
        return (Due::Close(close::HELLO_TIMEOUT, "no hello in time"), now);
    }
    // Closed when the token would no longer verify: `exp` plus the verifier's leeway.
    let expires_at = match ctl.expires_at.load(Ordering::Relaxed) {
        0 => 0,
        exp => exp.saturating_add(EXP_LEEWAY_SECS),
    };
    let unix_now = now_secs();
    if expires_at != 0 && unix_now >= expires_at {
        return (Due::Close(close::POLICY, "token expired"), now);
    }
    let last_rx = sockets.instant_of_ms(ctl.last_rx_ms.load(Ordering::Relaxed));
    let quiet = now.saturating_duration_since(last_rx);
    if quiet >= cfg.heartbeat * HEARTBEAT_MISSES {
        return (
            Due::Close(close::HEARTBEAT_TIMEOUT, "heartbeat timeout"),
            now,
        );
    }
    let due = if quiet >= cfg.heartbeat {
        Due::Ping
    } else {
        Due::Nothing
    };
    // Next look: the next heartbeat boundary after now, or sooner for hello or expiry.
    let mut next = last_rx
        + cfg.heartbeat * (quiet.as_millis() / cfg.heartbeat.as_millis()).saturating_add(1) as u32;
    if !hello_done {
        next = next.min(hello_deadline);
    }
    if expires_at != 0 {
        let until = Duration::from_secs((expires_at - unix_now).min(MAX_TIMER_SECS));
        next = next.min(now + until);
    }
    (due, next)
}

/// Runs until the connection closes; see the module docs.
pub(crate) async fn run(
    mut io: OwnedWriteHalf,
    rx: Receiver,
    ctl: Arc<ConnCtl>,
    sockets: Arc<Sockets>,
) {
    let cfg = &sockets.limits;
    let hello_deadline = Instant::now() + cfg.hello_timeout;
    let timer = tokio::time::sleep_until(hello_deadline.min(Instant::now() + cfg.heartbeat));
    tokio::pin!(timer);
    let mut batch: Vec<Out> = Vec::new();

    let reason = loop {
        if let Some(reason) = ctl.close_reason() {
            // A replay waiting for headroom learns now, not at the next drain.
            rx.wake_senders();
            break reason;
        }
        // The clock before the queue: a busy socket must not starve its deadlines.
        if timer.is_elapsed() {
            let (due, next) = check_clocks(&ctl, &sockets, hello_deadline);
            timer.as_mut().reset(next);
            // Quiet for a while: hold no buffers (an idle socket costs as little as it can).
            rx.shrink();
            batch = Vec::new();
            match due {
                Due::Close(code, why) => {
                    ctl.close(code, why, false);
                }
                Due::Ping => {
                    // Boxed, like the close below: rare paths, not state every socket keeps.
                    let ping = Box::pin(tokio::time::timeout(
                        cfg.write_timeout,
                        write_control(&mut io, OP_PING, &[]),
                    ))
                    .await;
                    if !matches!(ping, Ok(Ok(()))) {
                        ctl.close(close::INTERNAL, "write failed", false);
                        return;
                    }
                }
                Due::Nothing => {}
            }
            continue;
        }
        let written = match rx.take(&mut batch, MAX_WRITE_BATCH) {
            Taken::Nothing => {
                if rx.senders_gone() {
                    // Every sender is gone: the connection is being torn down.
                    return;
                }
                // One wake-up for everything: a frame queued, a close, the last sender gone.
                tokio::select! {
                    biased;
                    _ = ctl.woken() => {}
                    _ = &mut timer => {}
                }
                continue;
            }
            // One item: written without the batch buffer.
            Taken::One(out) => {
                let one = std::slice::from_ref(&out);
                tokio::time::timeout(cfg.write_timeout, write_batch(&mut io, one)).await
            }
            Taken::Many(n) => {
                let written =
                    tokio::time::timeout(cfg.write_timeout, write_batch(&mut io, &batch)).await;
                batch.clear();
                if n <= SMALL_BATCH {
                    // A quiet socket holds no batch buffer; a busy one keeps it.
                    batch = Vec::new();
                }
                written
            }
        };
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::debug!(conn = ctl.id, error = %e, "write failed");
                ctl.close(close::INTERNAL, "write failed", false);
                return;
            }
            Err(_) => {
                tracing::debug!(conn = ctl.id, "write timed out; dropping the connection");
                ctl.close(close::INTERNAL, "write timed out", false);
                return;
            }
        }
    };

    let flushing = async {
        if reason.flush {
            batch.clear();
            while rx.try_recv_many(&mut batch, MAX_WRITE_BATCH) > 0 {
                write_batch(&mut io, &batch).await?;
                batch.clear();
            }
        }
        Ok::<(), io::Error>(())
    };
    let flushed = Box::pin(tokio::time::timeout(cfg.close_timeout, flushing)).await;
    // Everything that will ever be written is written: what the connection keeps (its
    // session) is saved now, before the client learns of the close and resumes elsewhere.
    if let Some(hook) = ctl.before_close_hook() {
        // Boxed, like the other rare paths: not state every socket's writer keeps.
        let _ = Box::pin(tokio::time::timeout(
            cfg.close_timeout / 2,
            hook.before_close(),
        ))
        .await;
    }
    sockets.metrics.closed(reason.code);
    let closing = async {
        write_close(&mut io, reason).await?;
        io.shutdown().await
    };
    let closed = Box::pin(tokio::time::timeout(cfg.close_timeout, closing)).await;
    for result in [flushed, closed] {
        if let Ok(Err(e)) = result {
            tracing::debug!(conn = ctl.id, error = %e, "close failed");
        }
    }
}
