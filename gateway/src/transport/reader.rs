//! The reader side of one socket: WebSocket frames in, messages handed to the connection's
//! [`Handler`], its answers queued.
//!
//! Frames are parsed in `frames.rs` (masking, reserved bits, control frame rules: 1002; a frame
//! over the limit: 1009, from its header); this module does the rest of the protocol's reading
//! rules: text only (binary: 1003), messages reassembled from fragments up to
//! `max_message_bytes` in total (over it: 1009), UTF-8 checked (1007), pings answered through the
//! writer, a client's close echoed once. The read buffer exists only while bytes wait to be
//! parsed. The loop is never raced against anything (a frame half read must not be lost): other parts
//! stop a connection through [`super::ConnCtl::close`] and the writer. Once a close has begun (from
//! either side), the loop only waits for the client's close frame, discarding anything else, so
//! that nothing is dispatched after a close and the client's answer is read before the socket
//! goes (the connection bounds that wait with `close_timeout`).

use std::io;

use bytes::{Bytes, BytesMut};
use switchboard_protocol::close;
use tokio::net::tcp::OwnedReadHalf;

use super::frames::{self, FrameError};
use super::handler::Handler;
use super::queue::{Out, Sender};
use super::sockets::Sockets;

/// Bytes read from the socket at a time, at most (the buffer exists only while there are
/// bytes to parse).
const READ_CHUNK: usize = 4096;

/// Reads and hands messages to `handler` until the client leaves, breaks the protocol, or the
/// connection is closing. `leftover`: bytes the HTTP layer read past the upgrade request.
pub(crate) async fn run<H: Handler>(
    sockets: &Sockets,
    tx: &Sender,
    handler: &mut H,
    read: OwnedReadHalf,
    leftover: Bytes,
) {
    let ctl = tx.ctl();
    let max = sockets.limits.max_message_bytes;
    let mut buf = BytesMut::from(&leftover[..]);
    drop(leftover);
    let mut partial: Option<Vec<u8>> = None;

    loop {
        let frame = match frames::parse(&mut buf, max) {
            Ok(Some(frame)) => frame,
            Ok(None) => {
                if buf.is_empty() {
                    // Idle: hold no buffer until the socket has something to read.
                    buf = BytesMut::new();
                }
                match fill(&read, &mut buf).await {
                    Ok(0) => {
                        tracing::debug!(conn = ctl.id, "client went away");
                        return;
                    }
                    Ok(_) => continue,
                    Err(e) => {
                        tracing::debug!(conn = ctl.id, error = %e, "read failed");
                        return;
                    }
                }
            }
            Err(FrameError::TooBig) => {
                ctl.close(close::TOO_BIG, "message too big", false);
                return;
            }
            Err(FrameError::Protocol(why)) => {
                tracing::debug!(conn = ctl.id, why, "protocol error");
                ctl.close(close::PROTOCOL_ERROR, why, false);
                return;
            }
        };
        ctl.touch(sockets.now_ms());
        if ctl.is_closing() {
            if frame.opcode == frames::OP_CLOSE {
                return;
            }
            continue;
        }
        match frame.opcode {
            frames::OP_TEXT if frame.fin && partial.is_none() => {
                let Ok(text) = std::str::from_utf8(&frame.payload) else {
                    ctl.close(close::INVALID_PAYLOAD, "text frame is not UTF-8", false);
                    continue;
                };
                if !Box::pin(handle_message(tx, handler, text)).await {
                    return;
                }
            }
            frames::OP_TEXT if partial.is_none() => {
                partial = Some(frame.payload.to_vec());
            }
            frames::OP_CONTINUATION => {
                let Some(buf) = partial.as_mut() else {
                    ctl.close(
                        close::PROTOCOL_ERROR,
                        "continuation without a message",
                        false,
                    );
                    continue;
                };
                if buf.len() + frame.payload.len() > max {
                    partial = None;
                    ctl.close(close::TOO_BIG, "message too big", false);
                    continue;
                }
                buf.extend_from_slice(&frame.payload);
                if frame.fin {
                    let buf = partial.take().unwrap_or_default();
                    let Ok(text) = std::str::from_utf8(&buf) else {
                        ctl.close(close::INVALID_PAYLOAD, "text message is not UTF-8", false);
                        continue;
                    };
                    if !Box::pin(handle_message(tx, handler, text)).await {
                        return;
                    }
                }
            }
            frames::OP_TEXT => {
                ctl.close(
                    close::PROTOCOL_ERROR,
                    "new message inside a fragmented one",
                    false,
                );
                partial = None;
            }
            frames::OP_BINARY => {
                ctl.close(
                    close::UNSUPPORTED_DATA,
                    "binary frames are not supported",
                    false,
                );
                partial = None;
            }
            frames::OP_PING => {
                if Box::pin(tx.send(Out::Pong(frame.payload))).await.is_err() {
                    return;
                }
            }
            frames::OP_PONG => {}
            _ => {
                // OP_CLOSE (parse refuses any other opcode).
                let (code, reason) = answer_to_close(&frame.payload);
                ctl.close(code, reason, true);
                return;
            }
        }
    }
}

/// Waits until the socket is readable and appends what it has to `buf` (0: end of stream).
/// Nothing is reserved while waiting: the bytes go through a stack buffer, and `buf` grows by
/// what was read.
async fn fill(read: &OwnedReadHalf, buf: &mut BytesMut) -> io::Result<usize> {
    loop {
        read.readable().await?;
        match read_now(read, buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            other => return other,
        }
    }
}

/// One non-blocking read through a stack buffer (not part of the connection's future).
fn read_now(read: &OwnedReadHalf, buf: &mut BytesMut) -> io::Result<usize> {
    let mut chunk = [0u8; READ_CHUNK];
    let n = read.try_read(&mut chunk)?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
}

/// Hands one message to the handler and queues its reply; false when the writer is gone.
/// Called boxed: a method's state lives on the heap while it runs, not in every idle
/// connection's task.
async fn handle_message<H: Handler>(tx: &Sender, handler: &mut H, text: &str) -> bool {
    let answer = handler.message(text).await;
    if let Some(reply) = answer.reply
        && tx.send(Out::Text(reply)).await.is_err()
    {
        return false;
    }
    if let Some((code, reason)) = answer.then_close {
        tx.ctl().close(code, reason, true);
    }
    true
}

/// The close code we answer a client's close frame with (RFC 6455 section 5.5.1).
fn answer_to_close(payload: &[u8]) -> (u16, &'static str) {
    match payload.len() {
        0 => (close::NORMAL, ""),
        1 => (close::PROTOCOL_ERROR, "malformed close frame"),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            if std::str::from_utf8(&payload[2..]).is_err() {
                (close::INVALID_PAYLOAD, "close reason is not UTF-8")
            } else if is_valid_close_code(code) {
                (code, "")
            } else {
                (close::PROTOCOL_ERROR, "invalid close code")
            }
        }
    }
}

/// Codes a peer may send (RFC 6455 section 7.4 and the IANA registry): not 1004-1006, 1015.
fn is_valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}
