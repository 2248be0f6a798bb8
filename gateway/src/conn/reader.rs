//! The reader side of one socket: WebSocket frames in, requests dispatched, replies queued.
//!
//! fastwebsockets parses and unmasks frames; this module does the rest of the protocol's
//! reading rules itself: text only (binary: 1003), messages reassembled from fragments up to
//! `max_message_bytes` in total (over it: 1009; fastwebsockets bounds single frames only), UTF-8
//! checked (1007), pings answered through the writer, a client's close echoed once.
//! `read_frame` is not cancel-safe, so this loop is never raced against anything: other parts
//! stop a connection through [`ConnCtl::close`] and the writer. Once a close has begun (from
//! either side), the loop only waits for the client's close frame, discarding anything else, so
//! that nothing is dispatched after a close and the client's answer is read before the socket
//! goes (the connection bounds that wait with `close_timeout`).

use std::sync::Arc;

use fastwebsockets::{Frame, OpCode, Role, WebSocketError};
use switchboard_core::wire::close;
use tokio::io::AsyncRead;

use super::{ConnCtl, Out};
use crate::dispatch::{self, ConnState};
use crate::node::Node;

/// Reads and dispatches until the client leaves, breaks the protocol, or the connection is
/// closing.
pub(crate) async fn run<R: AsyncRead + Unpin>(node: &Arc<Node>, state: &mut ConnState, read: R) {
    let (mut ws, _) = fastwebsockets::after_handshake_split(read, tokio::io::sink(), Role::Server);
    ws.set_auto_close(false);
    ws.set_auto_pong(false);
    // A frame of exactly the limit is refused by fastwebsockets (`>=`), so allow one more byte.
    ws.set_max_message_size(node.config.max_message_bytes + 1);
    let max = node.config.max_message_bytes;
    let ctl = state.ctl.clone();
    // With auto close and pong off, fastwebsockets never asks us to send anything.
    let mut no_obligated_sends =
        |_: Frame<'_>| std::future::ready(Ok::<(), std::convert::Infallible>(()));
    let mut partial: Option<Vec<u8>> = None;

    loop {
        let frame = match ws.read_frame(&mut no_obligated_sends).await {
            Ok(frame) => frame,
            Err(e) => {
                fail(&ctl, &e);
                return;
            }
        };
        ctl.touch(node.now_ms());
        if ctl.is_closing() {
            if frame.opcode == OpCode::Close {
                return;
            }
            continue;
        }
        match frame.opcode {
            OpCode::Text if frame.fin && partial.is_none() => {
                // fastwebsockets checked UTF-8 for an unfragmented text frame.
                let Ok(text) = std::str::from_utf8(&frame.payload) else {
                    ctl.close(close::INVALID_PAYLOAD, "text frame is not UTF-8", false);
                    continue;
                };
                if !handle_message(node, state, text).await {
                    return;
                }
            }
            OpCode::Text if partial.is_none() => {
                partial = Some(frame.payload.to_vec());
            }
            OpCode::Continuation => {
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
                    if !handle_message(node, state, text).await {
                        return;
                    }
                }
            }
            OpCode::Text => {
                ctl.close(
                    close::PROTOCOL_ERROR,
                    "new message inside a fragmented one",
                    false,
                );
                partial = None;
            }
            OpCode::Binary => {
                ctl.close(
                    close::UNSUPPORTED_DATA,
                    "binary frames are not supported",
                    false,
                );
                partial = None;
            }
            OpCode::Ping => {
                let pong = Out::Pong(bytes::Bytes::copy_from_slice(&frame.payload));
                if state.tx.send(pong).await.is_err() {
                    return;
                }
            }
            OpCode::Pong => {}
            OpCode::Close => {
                let (code, reason) = answer_to_close(&frame.payload);
                ctl.close(code, reason, true);
                return;
            }
        }
    }
}

/// Dispatches one message and queues its reply; false when the writer is gone.
async fn handle_message(node: &Arc<Node>, state: &mut ConnState, text: &str) -> bool {
    if let Some(reply) = dispatch::handle(node, state, text).await
        && state.tx.send(Out::Text(reply)).await.is_err()
    {
        return false;
    }
    if let Some((code, reason)) = state.close_after_reply.take() {
        state.ctl.close(code, reason, true);
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

fn fail(ctl: &ConnCtl, e: &WebSocketError) {
    match e {
        WebSocketError::FrameTooLarge => {
            ctl.close(close::TOO_BIG, "message too big", false);
        }
        WebSocketError::InvalidUTF8 => {
            ctl.close(close::INVALID_PAYLOAD, "text frame is not UTF-8", false);
        }
        WebSocketError::UnexpectedEOF
        | WebSocketError::IoError(_)
        | WebSocketError::ConnectionClosed => {
            tracing::debug!(conn = ctl.id, error = %e, "client went away");
        }
        _ => {
            tracing::debug!(conn = ctl.id, error = %e, "protocol error");
            ctl.close(close::PROTOCOL_ERROR, "protocol error", false);
        }
    }
}
