//! The SSE streams of `/mcp` (`node/mcp.rs` decides which a request gets):
//!
//! - **A call's stream, stateless era** ([`direct`]): the call's progress and then its reply,
//!   straight from the request's queue, with a comment every `--heartbeat`. The client closing
//!   it cancels the call (revision 2026-07-28 has no other way to cancel).
//! - **A call's stream, session era** ([`resumable`]): the same messages, each first appended
//!   to a history topic of the gateway's own (`mcp-stream:<session>.<random>`, bounded by
//!   `--mcp-stream-events` and `--mcp-stream-ttl`), its event id `<topic>/<history id>`. The
//!   stream opens with a priming event (an id, `retry`, empty data), so a stream broken before
//!   its first message is resumable too. The node keeps appending after the client went, and
//!   past `--mcp-sse-poll-after` (off by default) closes the stream itself: the client comes
//!   back for the rest with `GET` (SSE polling, which frees long calls' connections).
//! - **A resumed stream** ([`resume`]): `GET` with `Last-Event-ID` on any node subscribes to
//!   that topic from that id (the history replay and then the live events, as a WebSocket
//!   `subscribe {since}` gets them) until the call's reply. Should the node that ran the call
//!   have died before the reply was appended, the reply is read from the call's task.
//! - **The standing stream** ([`standing`]): `GET` without `Last-Event-ID`, for what the node
//!   tells every client (`notifications/tools/list_changed`); a connection of the node (drain
//!   ends it), with a comment every `--heartbeat` so proxies keep it open.
//! - **`subscriptions/listen`** ([`listen`], stateless era): the acknowledgement, then
//!   `notifications/tools/list_changed` stamped with the subscription's id, until the node
//!   drains (which ends it with the listen result) or the client goes.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::Response;
use hyper::body::{Body, Frame};
use hyper::header::{self, HeaderValue};
use serde_json::{Value, json};
use switchboard_core::auth::Identity;
use switchboard_core::clock::now_ms;
use switchboard_core::encoding::random_id;
use switchboard_core::tasks::session_task_id;
use switchboard_protocol::topic::MCP_STREAM_PREFIX;
use switchboard_protocol::{EventId, Topic};
use tokio::sync::mpsc;

use super::Node;
use crate::conns::Registration;
use crate::methods::Caller;
use crate::transport::{ConnCtl, Link, Out, Receiver, channel};

/// What `/mcp` answers: a JSON body, or an SSE stream.
pub(super) type McpReply = Response<BoxBody<Bytes, Infallible>>;

/// SSE events queued for a response body before its writer waits.
const STREAM_BUFFER: usize = 64;
/// Queued items read off a request's queue at once.
const READ_BATCH: usize = 64;
/// The `_meta` key of a listen stream's frames.
const SUBSCRIPTION_ID: &str = "io.modelcontextprotocol/subscriptionId";

/// Connection ids for requests, apart from the sockets' (which count up from 1).
static NEXT_REQUEST: AtomicU64 = AtomicU64::new(1 << 62);

/// A request's own connection: a [`Caller`] on a queue bounded like a socket's
/// (`--outbound-queue`, `--outbound-queue-bytes`), and that queue's reading end.
pub(super) fn request_caller(
    node: &Node,
    client: IpAddr,
    identity: Option<Identity>,
) -> (Caller, Reader) {
    let ctl = Arc::new(ConnCtl::new(
        NEXT_REQUEST.fetch_add(1, Ordering::Relaxed),
        now_ms(),
    ));
    let tuning = &node.config.tuning;
    let (tx, rx) = channel(
        tuning.outbound_queue,
        tuning.outbound_queue_bytes,
        ctl.clone(),
    );
    let caller = Caller::new(
        Link {
            ctl: ctl.clone(),
            tx,
        },
        client,
        String::new(),
        identity,
        true,
    );
    (
        caller,
        Reader {
            ctl,
            rx,
            batch: VecDeque::new(),
        },
    )
}

/// The reading end of a request's queue, one JSON message at a time.
pub(super) struct Reader {
    ctl: Arc<ConnCtl>,
    rx: Receiver,
    batch: VecDeque<Out>,
}

impl Reader {
    /// The next queued message's JSON text; `None` once nothing more can come (every sender
    /// gone) or, with `until_closing`, once the connection is closing and its queue is empty.
    pub(super) async fn next(&mut self, until_closing: bool) -> Option<Bytes> {
        loop {
            if let Some(out) = self.batch.pop_front() {
                let text = payload(&out);
                out.written();
                return Some(text);
            }
            let woken = self.ctl.woken();
            let mut batch = Vec::new();
            self.rx.try_recv_many(&mut batch, READ_BATCH);
            if !batch.is_empty() {
                self.batch.extend(batch);
                continue;
            }
            if self.rx.senders_gone() || (until_closing && self.ctl.is_closing()) {
                return None;
            }
            woken.await;
        }
    }

    /// Reads until the reply to `id` (what comes before it, progress, is dropped: a JSON
    /// answer carries one message).
    pub(super) async fn reply_to(&mut self, id: &Value) -> Option<Bytes> {
        while let Some(text) = self.next(false).await {
            if reply_id(&text).as_ref() == Some(id) {
                return Some(text);
            }
        }
        None
    }
}

/// The id of a JSON-RPC response (a message with an id and no method).
fn reply_id(text: &[u8]) -> Option<Value> {
    #[derive(serde::Deserialize)]
    struct Head {
        id: Option<Value>,
        method: Option<serde::de::IgnoredAny>,
    }
    let head: Head = serde_json::from_slice(text).ok()?;
    match head {
        Head {
            id: Some(id),
            method: None,
        } if !id.is_null() => Some(id),
        _ => None,
    }
}

/// The JSON text of a queued item (a pre-framed WebSocket frame loses its header).
fn payload(out: &Out) -> Bytes {
    match out {
        Out::Text(b) | Out::TextReceipt(b, _) | Out::Pong(b) => b.clone(),
        Out::Frame(b) | Out::FrameReceipt(b, _) => {
            let header = match b.get(1).map(|l| l & 0x7f) {
                Some(126) => 4,
                Some(127) => 10,
                Some(_) => 2,
                None => return Bytes::new(),
            };
            b.slice(header.min(b.len())..)
        }
    }
}

/// One SSE event carrying a JSON-RPC message, with its id when it has one.
fn message_event(id: Option<&str>, data: &[u8]) -> Bytes {
    let mut e = Vec::with_capacity(data.len() + id.map_or(0, str::len) + 32);
    if let Some(id) = id {
        e.extend_from_slice(b"id: ");
        e.extend_from_slice(id.as_bytes());
        e.push(b'\n');
    }
    e.extend_from_slice(b"event: message\ndata: ");
    e.extend_from_slice(data);
    e.extend_from_slice(b"\n\n");
    Bytes::from(e)
}

/// The priming event: an id to resume from, how long to wait before resuming, no data.
fn priming_event(id: &str, retry_ms: u64) -> Bytes {
    Bytes::from(format!("id: {id}\nretry: {retry_ms}\ndata: \n\n"))
}

/// An SSE comment: keeps an idle stream open through proxies.
const KEEPALIVE: &[u8] = b": keepalive\n\n";

/// A response body of SSE events, as a task hands them over.
struct Sse {
    events: mpsc::Receiver<Bytes>,
    /// A stream that is a connection of the node stays one until its last event is handed to
    /// the socket: a drain waits for that.
    _registration: Option<Registration>,
}

impl Body for Sse {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.events
            .poll_recv(cx)
            .map(|event| event.map(|e| Ok(Frame::data(e))))
    }
}

/// An SSE response and the sender its task writes events to (closed when the client goes).
fn sse_response() -> (McpReply, mpsc::Sender<Bytes>) {
    registered_response(None)
}

/// [`sse_response`] for a stream registered as a connection of the node.
fn registered_response(registration: Option<Registration>) -> (McpReply, mpsc::Sender<Bytes>) {
    let (tx, events) = mpsc::channel::<Bytes>(STREAM_BUFFER);
    let mut r = Response::new(BoxBody::new(Sse {
        events,
        _registration: registration,
    }));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    (r, tx)
}

/// Asks the method layer to cancel request `id` of `caller` (a `notifications/cancelled` of
/// its own), as when a stateless client closes the stream of a call not yet answered.
pub(super) async fn cancel(node: &Node, caller: &mut Caller, id: &Value) {
    let note = json!({
        "jsonrpc": "2.0",
        "method": "notifications/cancelled",
        "params": {"requestId": id, "reason": "the client closed the request's stream"},
    });
    node.methods.dispatch(caller, &note.to_string()).await;
}

/// A stateless call's stream: progress, then the reply (`finish` applied), read off the
/// request's queue. A client that closes it before the reply cancels the call.
pub(super) fn direct(
    node: Arc<Node>,
    mut caller: Caller,
    mut reader: Reader,
    id: Value,
    finish: fn(Bytes) -> Bytes,
) -> McpReply {
    let (response, tx) = sse_response();
    tokio::spawn(async move {
        // A comment now and then: a client that went is noticed by the write that fails (a
        // server reads nothing more from a request that said `Connection: close`).
        let mut beat = tokio::time::interval(node.config.tuning.heartbeat);
        beat.reset();
        loop {
            let next = tokio::select! {
                next = reader.next(false) => next,
                () = tx.closed() => {
                    cancel(&node, &mut caller, &id).await;
                    return;
                }
                _ = beat.tick() => {
                    let _ = tx.send(Bytes::from_static(KEEPALIVE)).await;
                    continue;
                }
            };
            let Some(text) = next else { return };
            let is_reply = reply_id(&text).as_ref() == Some(&id);
            let text = if is_reply { finish(text) } else { text };
            if tx.send(message_event(None, &text)).await.is_err() {
                if !is_reply {
                    cancel(&node, &mut caller, &id).await;
                }
                return;
            }
            if is_reply {
                return;
            }
        }
    });
    response
}

/// A session's call stream: every message kept in the stream's topic before it is sent, so
/// the client resumes it on any node with `Last-Event-ID`. The call goes on when the client
/// goes; its messages keep being kept until the reply.
pub(super) fn resumable(
    node: Arc<Node>,
    caller: Caller,
    mut reader: Reader,
    id: Value,
    session: &str,
) -> McpReply {
    let (response, tx) = sse_response();
    let topic = Topic::new(&format!("{MCP_STREAM_PREFIX}{session}.{}", random_id()))
        .expect("hex ids make a valid topic");
    tokio::spawn(async move {
        // The caller lives as long as the call: its reply comes through its queue.
        let _caller = caller;
        let rule = node.config.tuning.mcp_stream_rule();
        let history = node.methods.topics.history.clone();
        let retry_ms = node.config.tuning.mcp_sse_retry.as_millis() as u64;
        // The first event of the stream says which request it answers: what a resume on
        // another node needs to find the call's outcome if this node dies before the reply.
        let head = json!({"request": id}).to_string();
        let mut kept = match history.publish(&topic, &head, &rule).await {
            Ok(first) => {
                let _ = tx
                    .send(priming_event(&format!("{topic}/{first}"), retry_ms))
                    .await;
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "keeping an MCP stream failed: it will not resume");
                false
            }
        };
        // Past `--mcp-sse-poll-after` the stream is closed (the client resumes it with `GET`
        // when it likes: SSE polling); the call's messages are kept all the same.
        let poll_after = node.config.tuning.mcp_sse_poll_after;
        let polling = !poll_after.is_zero();
        let close_at = tokio::time::sleep(poll_after);
        tokio::pin!(close_at);
        let mut tx = Some(tx);
        loop {
            let next = tokio::select! {
                next = reader.next(false) => next,
                () = &mut close_at, if polling && tx.is_some() => {
                    tx = None;
                    continue;
                }
            };
            let Some(text) = next else { return };
            let event_id = if kept {
                let data = std::str::from_utf8(&text).unwrap_or("null");
                match history.publish(&topic, data, &rule).await {
                    Ok(eid) => Some(format!("{topic}/{eid}")),
                    Err(e) => {
                        tracing::warn!(error = %e, "keeping an MCP stream failed: it will not resume");
                        kept = false;
                        None
                    }
                }
            } else {
                None
            };
            // A client that went resumes from what was kept.
            if let Some(tx) = &tx {
                let _ = tx.send(message_event(event_id.as_deref(), &text)).await;
            }
            if reply_id(&text).as_ref() == Some(&id) {
                return;
            }
        }
    });
    response
}

/// Where a `Last-Event-ID` of `session` points: the stream's topic and the event (`None`:
/// not an event id of this session's streams).
fn parse_last_event_id(session: &str, last: &str) -> Option<(Topic, EventId)> {
    let (stream, event) = last.rsplit_once('/')?;
    let own = stream
        .strip_prefix(MCP_STREAM_PREFIX)
        .and_then(|s| s.strip_prefix(session))
        .is_some_and(|s| s.starts_with('.'));
    if !own {
        return None;
    }
    Some((Topic::new(stream).ok()?, EventId::parse(event)?))
}

/// Resumes a session's stream after `last` (`Last-Event-ID`): what was kept after it, then
/// what comes live, until the call's reply. `identity` owns `session` (checked before).
/// `None`: `last` is not an event id of this session's streams.
///
/// The stream is read from its start (its head names the request), and what the client had
/// is skipped. Meanwhile the call's task is asked for its outcome (`tasks/result`), so the
/// reply arrives even when the node that ran the call died before keeping it.
pub(super) fn resume(
    node: Arc<Node>,
    client: IpAddr,
    identity: Identity,
    session: &str,
    last: &str,
) -> Option<McpReply> {
    let (topic, since) = parse_last_event_id(session, last)?;
    let session = session.to_owned();
    let (mut caller, mut reader) = request_caller(&node, client, Some(identity.clone()));
    caller.opened = true;
    // The stream's topic is opened to this request alone, as a subscription token would.
    caller.token_topics.insert(topic.clone(), None);
    let link = caller.link.clone();
    let (response, tx) = sse_response();
    let resume_grace = node.config.tuning.mcp_resume_grace;
    tokio::spawn(async move {
        let stream = topic.to_string();
        let subscribing = async {
            match node
                .methods
                .topics
                .subscribe_to(&mut caller, topic.clone(), Some(EventId::ZERO))
                .await
            {
                // Everything kept is on its way: wait for the reply.
                Ok(r) if r.recovered != Some(false) => std::future::pending::<()>().await,
                // Its start is gone (trimmed or expired): what is left is sent, then the stream
                // ends and the client decides (its call's task still answers `tasks/result`).
                Ok(_) => {
                    tracing::debug!(stream, "an MCP stream resumed after its events expired");
                    tokio::time::sleep(resume_grace).await;
                }
                Err(e) => {
                    tracing::debug!(stream, error = %e.message, "resuming an MCP stream failed")
                }
            }
        };
        // Who asks the call's task for its outcome, on the same queue.
        let mut asking: Option<(Caller, Value)> = None;
        // The task's answer, held a moment (`--mcp-resume-grace`) for the stream's own reply,
        // which comes after every event before it; sent if the stream's does not come.
        let grace = node.config.tuning.mcp_resume_grace;
        let mut held: Option<Bytes> = None;
        let forwarding = async {
            let give_up = tokio::time::sleep(grace);
            tokio::pin!(give_up);
            loop {
                let next = tokio::select! {
                    next = reader.next(false) => next,
                    () = &mut give_up, if held.is_some() => None,
                };
                let Some(text) = next else {
                    if let Some(reply) = held.take() {
                        let _ = tx.send(message_event(None, &reply)).await;
                    }
                    return;
                };
                let Some((data, eid)) = event_of(&text) else {
                    // The answer of `tasks/result`: the call's outcome.
                    if let (Some(id), Some((_, request))) = (reply_id(&text), &asking)
                        && &id == request
                        && held.is_none()
                    {
                        held = Some(text);
                        give_up.as_mut().reset(tokio::time::Instant::now() + grace);
                    }
                    continue;
                };
                let Ok(message) = serde_json::from_str::<Value>(data) else {
                    continue;
                };
                if message.get("jsonrpc").is_none() {
                    // The stream's head: which request it answers.
                    if let (Some(request), None) = (message.get("request"), &asking) {
                        let mut waiter = Caller::new(
                            link.clone(),
                            client,
                            String::new(),
                            Some(identity.clone()),
                            true,
                        );
                        waiter.opened = true;
                        let ask = json!({
                            "jsonrpc": "2.0",
                            "id": request,
                            "method": "tasks/result",
                            "params": {"taskId": session_task_id(&session, &request.to_string())},
                        });
                        let answer = node.methods.dispatch(&mut waiter, &ask.to_string()).await;
                        // Answered at once: the outcome, if it is one (an error here, e.g. a
                        // task not yet submitted, leaves the reply to the stream).
                        if let Some(reply) = answer.reply
                            && serde_json::from_slice::<Value>(&reply)
                                .is_ok_and(|v| v.get("result").is_some())
                        {
                            held = Some(reply);
                            give_up.as_mut().reset(tokio::time::Instant::now() + grace);
                        }
                        asking = Some((waiter, request.clone()));
                    }
                    continue;
                }
                let eid = eid.and_then(EventId::parse);
                if eid.is_some_and(|e| e <= since) {
                    continue; // the client had it
                }
                let event_id = eid.map(|e| format!("{stream}/{e}"));
                if tx
                    .send(message_event(event_id.as_deref(), data.as_bytes()))
                    .await
                    .is_err()
                {
                    return;
                }
                if reply_id(data.as_bytes()).is_some() {
                    return;
                }
            }
        };
        tokio::select! {
            () = subscribing => {}
            () = forwarding => {}
            () = tx.closed() => {}
        }
        node.methods.topics.release_all(&mut caller);
    });
    Some(response)
}

/// The data (JSON text) and history id of an `event` notification.
fn event_of(text: &[u8]) -> Option<(&str, Option<&str>)> {
    #[derive(serde::Deserialize)]
    struct Note<'a> {
        method: &'a str,
        #[serde(borrow)]
        params: Params<'a>,
    }
    #[derive(serde::Deserialize)]
    struct Params<'a> {
        #[serde(borrow)]
        data: &'a serde_json::value::RawValue,
        id: Option<&'a str>,
    }
    let note: Note<'_> = serde_json::from_slice(text).ok()?;
    (note.method == switchboard_protocol::event::EVENT)
        .then(|| (note.params.data.get(), note.params.id))
}

/// The standing `GET` stream of a session: what the node tells every client, until the
/// client goes or the node drains.
pub(super) fn standing(node: Arc<Node>, client: IpAddr, identity: Identity) -> McpReply {
    let (caller, reader) = request_caller(&node, client, Some(identity));
    caller.link.ctl.opened(None);
    let (response, tx) = registered_response(Some(node.conns.register(caller.link.clone())));
    let heartbeat = node.config.tuning.heartbeat;
    tokio::spawn(async move {
        let _caller = caller;
        forward_until_drain(reader, &tx, heartbeat, Some).await;
    });
    response
}

/// Forwards a registered stream's messages (as `map` makes them; `None`: skipped) until the
/// client goes or the node closes the connection; a comment every `heartbeat` meanwhile.
/// Whether the node closed it (the client is still there).
async fn forward_until_drain(
    mut reader: Reader,
    tx: &mpsc::Sender<Bytes>,
    heartbeat: std::time::Duration,
    map: impl Fn(Bytes) -> Option<Bytes>,
) -> bool {
    let mut beat = tokio::time::interval(heartbeat);
    beat.reset();
    loop {
        let next = tokio::select! {
            next = reader.next(true) => next,
            () = tx.closed() => return false,
            _ = beat.tick() => {
                if tx.send(Bytes::from_static(KEEPALIVE)).await.is_err() {
                    return false;
                }
                continue;
            }
        };
        let Some(text) = next else { return true };
        if let Some(text) = map(text)
            && tx.send(message_event(None, &text)).await.is_err()
        {
            return false;
        }
    }
}

/// `subscriptions/listen` (revision 2026-07-28): acknowledges the kinds it honours (only
/// `toolsListChanged`: the gateway has no prompts or resources), then sends the tools'
/// `list_changed`, every frame stamped with the subscription's id (the request's id); ended
/// by the node's drain with the listen result.
pub(super) fn listen(
    node: Arc<Node>,
    client: IpAddr,
    identity: Identity,
    id: Value,
    wants_tools: bool,
) -> McpReply {
    let (caller, reader) = request_caller(&node, client, Some(identity));
    caller.link.ctl.opened(None);
    let (response, tx) = registered_response(Some(node.conns.register(caller.link.clone())));
    let heartbeat = node.config.tuning.heartbeat;
    let meta = json!({ SUBSCRIPTION_ID: id });
    tokio::spawn(async move {
        let _caller = caller;
        let honoured = if wants_tools {
            json!({"toolsListChanged": true})
        } else {
            json!({})
        };
        let ack = json!({
            "jsonrpc": "2.0",
            "method": "notifications/subscriptions/acknowledged",
            "params": {"notifications": honoured, "_meta": meta},
        });
        if tx
            .send(message_event(None, ack.to_string().as_bytes()))
            .await
            .is_err()
        {
            return;
        }
        let stamp = |text: Bytes| {
            let mut v: Value = serde_json::from_slice(&text).ok()?;
            if !wants_tools || v.get("method")? != "notifications/tools/list_changed" {
                return None;
            }
            v["params"] = json!({"_meta": meta});
            Some(Bytes::from(v.to_string()))
        };
        if forward_until_drain(reader, &tx, heartbeat, stamp).await {
            let done = json!({
                "jsonrpc": "2.0",
                "id": id,
                "result": {"_meta": meta, "resultType": "complete"},
            });
            let _ = tx
                .send(message_event(None, done.to_string().as_bytes()))
                .await;
        }
    });
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_resume_only_their_own_sessions_streams() {
        let s = "0123456789abcdef0123456789abcdef";
        let own = format!("{MCP_STREAM_PREFIX}{s}.ffff/1700000000000-3");
        let (topic, since) = parse_last_event_id(s, &own).unwrap();
        assert_eq!(topic.as_str(), format!("{MCP_STREAM_PREFIX}{s}.ffff"));
        assert_eq!(since.to_string(), "1700000000000-3");
        let other = format!("{MCP_STREAM_PREFIX}{s}0.ffff/1-0");
        assert!(parse_last_event_id(s, &other).is_none());
        assert!(parse_last_event_id(s, "chat:1/1-0").is_none());
        assert!(parse_last_event_id(s, &format!("{MCP_STREAM_PREFIX}{s}.x/nope")).is_none());
    }

    #[test]
    fn replies_are_told_from_notifications_and_events_are_read() {
        assert_eq!(
            reply_id(br#"{"jsonrpc":"2.0","id":3,"result":{}}"#),
            Some(json!(3))
        );
        assert_eq!(
            reply_id(br#"{"jsonrpc":"2.0","method":"notifications/progress","params":{}}"#),
            None
        );
        let e = br#"{"jsonrpc":"2.0","method":"event","params":{"topic":"t","data":{"a":1},"id":"5-0"}}"#;
        assert_eq!(event_of(e), Some((r#"{"a":1}"#, Some("5-0"))));
    }
}
