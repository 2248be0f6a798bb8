//! The Rust client for Switchboard, used by the CLI, the benchmarks and the tests.
//!
//! [`Client::connect`] opens a socket to a `ws://` or `wss://` URL (TLS through rustls with
//! `ring`: the Mozilla roots and the system's store by default, a custom CA with
//! [`TlsOptions::ca_pem`]; see `tls.rs`; [`open_stream`] gives the bare TCP/TLS stream to tools
//! that speak WebSocket through another library); [`Client::hello`], [`Client::subscribe`],
//! [`Client::publish`] and [`Client::request`] send requests and wait for their replies;
//! [`Notifications`] yields what the gateway sends unasked (`event`, ...), in order. When the
//! socket closes, the stream ends and [`Client::close_reason`] tells the close code.
//!
//! Inside: a reader task routes replies to their waiting callers by id and notifications to a
//! bounded queue (a client that stops reading notifications stops reading the socket, as a slow
//! consumer would); a writer task owns the write half.
//!
//! [`Session`] (in `session.rs`) is the reconnecting layer on top: it reconnects with backoff,
//! resumes the session, restores subscriptions, dedupes events and keeps `tools/call`s waiting
//! across a resume; it follows the close-code policy of `backoff.rs` and takes its tokens from
//! a fixed string or a [`TokenProvider`] (`token.rs`), refreshing them before their `exp`.

mod backoff;
mod router;
mod session;
pub mod tls;
mod token;
mod tracker;

pub use session::{
    DEFAULT_BACKOFF_MAX, DEFAULT_BACKOFF_MIN, DEFAULT_CALL_TIMEOUT, DEFAULT_CLOSE_TIMEOUT,
    DEFAULT_EVENT_QUEUE, DEFAULT_HELLO_TIMEOUT, DEFAULT_REQUEST_TIMEOUT, DEFAULT_STALE_HEARTBEATS,
    REFRESH_RETRY, Session, SessionEvent, SessionEvents, SessionOptions,
};
pub use tls::{MaybeTls, Roots, TlsOptions};
pub use token::{BoxError, TokenProvider};

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fastwebsockets::{FragmentCollectorRead, Frame, OpCode, Payload, WebSocketError};
use http_body_util::Empty;
use hyper::Request;
use hyper::header::{self, HeaderValue};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use switchboard_protocol::RpcError;
use switchboard_protocol::event::EventParams;
use switchboard_protocol::methods::Method;
use switchboard_protocol::methods::session::{Hello, HelloParams, HelloResult, Ping};
use switchboard_protocol::methods::tools::{CallParams, CallResult, ToolsCall};
use switchboard_protocol::methods::topics::{
    Publish, PublishParams, PublishResult, Subscribe, SubscribeParams, SubscribeResult,
    Unsubscribe, UnsubscribeParams,
};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::AbortHandle;

use crate::router::ReplyRouter;

/// Default: notifications buffered before the client stops reading the socket.
pub const DEFAULT_NOTIFICATION_QUEUE: usize = 1024;
/// Default: bound on connecting and on the upgrade handshake.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Frames queued for the writer before senders wait.
const WRITE_QUEUE: usize = 256;

/// How to connect.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Sent as `Authorization: Bearer <token>`.
    pub token: Option<String>,
    /// Offered in `Sec-WebSocket-Protocol`; `None` offers nothing.
    pub subprotocol: Option<String>,
    /// Local address to connect from (load tests spread over 127.0.0.x).
    pub bind: Option<IpAddr>,
    pub notification_queue: usize,
    pub connect_timeout: Duration,
    /// For `wss://` URLs: which certificate authorities to trust (see [`TlsOptions`]).
    pub tls: TlsOptions,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            token: None,
            subprotocol: Some(switchboard_protocol::SUBPROTOCOL.into()),
            bind: None,
            notification_queue: DEFAULT_NOTIFICATION_QUEUE,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            tls: TlsOptions::default(),
        }
    }
}

/// What can go wrong for a client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("bad URL: {0}")]
    Url(String),
    #[error("connect failed: {0}")]
    Connect(#[from] std::io::Error),
    /// The TLS handshake of a `wss://` URL failed (the server's certificate was refused, say),
    /// or the TLS options cannot work.
    #[error("TLS: {0}")]
    Tls(String),
    /// The session's token provider failed.
    #[error("the token provider failed: {0}")]
    TokenProvider(String),
    #[error("WebSocket handshake failed: {0}")]
    Handshake(String),
    #[error("timed out")]
    Timeout,
    #[error("connection closed{}", .0.as_ref().map(|(c, r)| format!(" with {c} {r}")).unwrap_or_default())]
    Closed(Option<(u16, String)>),
    #[error("gateway answered with an error: {0}")]
    Rpc(RpcError),
    #[error("unexpected reply: {0}")]
    Decode(#[from] serde_json::Error),
    /// A session's socket dropped while the request was in flight; the session reconnects on
    /// its own, and the request may be sent again.
    #[error("disconnected while the request was in flight (the session is reconnecting)")]
    Disconnected,
    /// The session could not be resumed (it expired, or the gateway does not keep sessions):
    /// the reply to this call will never come. The call may have run.
    #[error("the session was not resumed after a reconnect: this call's reply is lost")]
    SessionLost,
    /// Session options that cannot work.
    #[error("invalid session options: {0}")]
    Options(&'static str),
}

/// A notification from the gateway.
#[derive(Debug)]
pub struct Notification {
    pub method: String,
    pub params: Box<RawValue>,
}

impl Notification {
    /// The params of an `event`, decoded.
    pub fn event(&self) -> Option<EventParams> {
        if self.method != switchboard_protocol::event::EVENT {
            return None;
        }
        serde_json::from_str(self.params.get()).ok()
    }
}

/// Notifications in arrival order; ends when the socket closes.
#[derive(Debug)]
pub struct Notifications {
    rx: mpsc::Receiver<Notification>,
}

impl Notifications {
    pub async fn recv(&mut self) -> Option<Notification> {
        self.rx.recv().await
    }

    /// The next `event` notification, skipping others.
    pub async fn next_event(&mut self) -> Option<EventParams> {
        loop {
            if let Some(e) = self.rx.recv().await?.event() {
                return Some(e);
            }
        }
    }
}

/// Requests waiting for their reply; `None` once the socket is gone, so that no request can
/// start waiting after the reader stopped.
type Pending = Mutex<Option<HashMap<u64, oneshot::Sender<Result<Box<RawValue>, RpcError>>>>>;

struct Shared {
    pending: Pending,
    closed: Mutex<Option<(u16, String)>>,
    /// Where replies nobody on this socket waits for go (a session's other sockets' requests).
    router: Option<ReplyRouter>,
    /// When the socket was opened; `last_rx_ms` counts from here.
    born: Instant,
    /// Milliseconds from `born` to the last frame received (pings included).
    last_rx_ms: AtomicU64,
    /// Becomes `true` when the reader has stopped: the socket is gone.
    done: watch::Sender<bool>,
    /// The reader and writer tasks, for [`Client::abort`].
    tasks: Mutex<Vec<AbortHandle>>,
}

impl Shared {
    fn touch(&self) {
        let ms = self.born.elapsed().as_millis() as u64;
        self.last_rx_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// The reader stopped: fail every waiting request, and every later one.
    fn finish(&self) {
        self.pending.lock().expect("lock poisoned").take();
        self.done.send_replace(true);
    }
}

/// A connection to a gateway. Cheap to clone; all clones share the socket.
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
    out: mpsc::Sender<Frame<'static>>,
    next_id: Arc<AtomicU64>,
    peer: SocketAddr,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("peer", &self.peer).finish()
    }
}

struct SpawnExecutor;

impl<Fut> hyper::rt::Executor<Fut> for SpawnExecutor
where
    Fut: Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    fn execute(&self, fut: Fut) {
        tokio::spawn(fut);
    }
}

/// Where a URL points: TLS or not, host (the server name TLS checks), port, path and query.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Target {
    pub(crate) tls: bool,
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) path: String,
}

impl Target {
    /// `host:port`, as connecting and the `Host` header want it.
    fn authority(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

fn parse_url(url: &str) -> Result<Target, ClientError> {
    let uri: hyper::Uri = url.parse().map_err(|e| ClientError::Url(format!("{e}")))?;
    let tls = match uri.scheme_str() {
        Some("ws") | Some("http") => false,
        Some("wss") | Some("https") => true,
        Some(other) => {
            return Err(ClientError::Url(format!(
                "scheme {other} is not supported (use ws:// or wss://)"
            )));
        }
        None => {
            return Err(ClientError::Url(
                "missing scheme (ws://host:port/ws or wss://host/ws)".into(),
            ));
        }
    };
    let host = uri
        .host()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| ClientError::Url("missing host".into()))?
        .to_owned();
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let path = uri
        .path_and_query()
        .map_or("/".to_owned(), |p| p.as_str().to_owned());
    Ok(Target {
        tls,
        host,
        port,
        path,
    })
}

/// Opens the byte stream a WebSocket to `url` runs over: TCP (from `opts.bind` if set), and
/// TLS for `wss://` (checked against `opts.tls`, the URL's host as the server name). For
/// tools that speak WebSocket through another library (the CLI's `mcp-stdio`).
pub async fn open_stream(url: &str, opts: &ConnectOptions) -> Result<MaybeTls, ClientError> {
    let target = parse_url(url)?;
    Ok(open_target(&target, opts).await?.0)
}

async fn open_target(
    target: &Target,
    opts: &ConnectOptions,
) -> Result<(MaybeTls, SocketAddr), ClientError> {
    let authority = target.authority();
    let peer: SocketAddr = tokio::net::lookup_host(&authority)
        .await?
        .next()
        .ok_or_else(|| ClientError::Url(format!("{authority} does not resolve")))?;
    let stream = match opts.bind {
        None => TcpStream::connect(peer).await?,
        Some(ip) => {
            let socket = if peer.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            socket.bind(SocketAddr::new(ip, 0))?;
            socket.connect(peer).await?
        }
    };
    stream.set_nodelay(true)?;
    let stream = if target.tls {
        tls::handshake(stream, &target.host, &opts.tls).await?
    } else {
        MaybeTls::Plain(stream)
    };
    Ok((stream, peer))
}

impl Client {
    /// Connects to `url` (`ws://host:port/ws` or `wss://host/ws`, optionally `?token=...`).
    pub async fn connect(
        url: &str,
        opts: ConnectOptions,
    ) -> Result<(Client, Notifications), ClientError> {
        Self::connect_routed(url, &opts, None).await
    }

    /// [`connect`](Self::connect) for a session's socket: ids come from the router's counter,
    /// and replies nobody on this socket waits for are handed to the router.
    pub(crate) async fn connect_routed(
        url: &str,
        opts: &ConnectOptions,
        router: Option<ReplyRouter>,
    ) -> Result<(Client, Notifications), ClientError> {
        tokio::time::timeout(opts.connect_timeout, Self::connect_inner(url, opts, router))
            .await
            .map_err(|_| ClientError::Timeout)?
    }

    async fn connect_inner(
        url: &str,
        opts: &ConnectOptions,
        router: Option<ReplyRouter>,
    ) -> Result<(Client, Notifications), ClientError> {
        let target = parse_url(url)?;
        let (stream, peer) = open_target(&target, opts).await?;
        let host = match (target.tls, target.port) {
            (true, 443) | (false, 80) => target.host.clone(),
            _ => target.authority(),
        };
        let path = target.path.clone();

        let mut req = Request::builder()
            .method("GET")
            .uri(path)
            .header(header::HOST, host)
            .header(header::UPGRADE, "websocket")
            .header(header::CONNECTION, "upgrade")
            .header(
                "Sec-WebSocket-Key",
                fastwebsockets::handshake::generate_key(),
            )
            .header("Sec-WebSocket-Version", "13");
        if let Some(p) = &opts.subprotocol {
            req = req.header(header::SEC_WEBSOCKET_PROTOCOL, p);
        }
        if let Some(t) = &opts.token {
            let v = HeaderValue::from_str(&format!("Bearer {t}"))
                .map_err(|_| ClientError::Url("token is not a valid header value".into()))?;
            req = req.header(header::AUTHORIZATION, v);
        }
        let req = req
            .body(Empty::<Bytes>::new())
            .map_err(|e| ClientError::Url(e.to_string()))?;
        let (ws, _resp) = fastwebsockets::handshake::client(&SpawnExecutor, req, stream)
            .await
            .map_err(|e| ClientError::Handshake(e.to_string()))?;

        let (read, write) = ws.split(tokio::io::split);
        let next_id = match &router {
            Some(r) => r.ids(),
            None => Arc::new(AtomicU64::new(1)),
        };
        let shared = Arc::new(Shared {
            pending: Mutex::new(Some(HashMap::new())),
            closed: Mutex::new(None),
            router,
            born: Instant::now(),
            last_rx_ms: AtomicU64::new(0),
            done: watch::channel(false).0,
            tasks: Mutex::new(Vec::new()),
        });
        let (out_tx, out_rx) = mpsc::channel::<Frame<'static>>(WRITE_QUEUE);
        let (note_tx, note_rx) = mpsc::channel(opts.notification_queue.max(1));
        let writer = tokio::spawn(write_loop(write, out_rx));
        let reader = tokio::spawn(read_loop(
            FragmentCollectorRead::new(read),
            shared.clone(),
            out_tx.clone(),
            note_tx,
        ));
        *shared.tasks.lock().expect("lock poisoned") =
            vec![writer.abort_handle(), reader.abort_handle()];
        Ok((
            Client {
                shared,
                out: out_tx,
                next_id,
                peer,
            },
            Notifications { rx: note_rx },
        ))
    }

    /// The close code and reason, once the socket has closed with a close frame.
    pub fn close_reason(&self) -> Option<(u16, String)> {
        self.shared.closed.lock().expect("lock poisoned").clone()
    }

    /// Whether two handles share one socket.
    pub(crate) fn same(&self, other: &Client) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }

    /// Whether the socket is gone (the reader has stopped).
    pub fn is_closed(&self) -> bool {
        *self.shared.done.borrow()
    }

    /// Resolves once the socket is gone (closed by either side, or dropped).
    pub async fn closed(&self) {
        let mut rx = self.shared.done.subscribe();
        let _ = rx.wait_for(|done| *done).await;
    }

    /// How long since the last frame from the gateway (its pings included).
    pub fn idle(&self) -> Duration {
        let last = Duration::from_millis(self.shared.last_rx_ms.load(Ordering::Relaxed));
        self.shared.born.elapsed().saturating_sub(last)
    }

    /// Drops the socket at once, without a close handshake (a socket that went silent):
    /// waiting requests fail and [`Notifications`] ends.
    pub fn abort(&self) {
        for task in self.shared.tasks.lock().expect("lock poisoned").iter() {
            task.abort();
        }
        self.shared.finish();
    }

    /// Sends a request with a caller-chosen id without waiting for its reply here: a session's
    /// call, whose reply its router awaits, on this socket or a later one.
    pub(crate) async fn send_request<P: Serialize>(
        &self,
        id: u64,
        method: &str,
        params: &P,
    ) -> Result<(), ClientError> {
        self.send_text(encode_request(id, method, params)?).await
    }

    /// Sends a request and waits for its reply.
    pub async fn request<P: Serialize, R: DeserializeOwned>(
        &self,
        method: &str,
        params: &P,
    ) -> Result<R, ClientError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let text = encode_request(id, method, params)?;
        let (tx, rx) = oneshot::channel();
        match self.shared.pending.lock().expect("lock poisoned").as_mut() {
            Some(pending) => pending.insert(id, tx),
            None => return Err(ClientError::Closed(self.close_reason())),
        };
        if self.send_text(text).await.is_err() {
            if let Some(p) = self.shared.pending.lock().expect("lock poisoned").as_mut() {
                p.remove(&id);
            }
            return Err(ClientError::Closed(self.close_reason()));
        }
        match rx.await {
            Ok(Ok(raw)) => Ok(serde_json::from_str(raw.get())?),
            Ok(Err(e)) => Err(ClientError::Rpc(e)),
            Err(_) => Err(ClientError::Closed(self.close_reason())),
        }
    }

    /// Sends a notification (no reply).
    pub async fn notify<P: Serialize>(&self, method: &str, params: &P) -> Result<(), ClientError> {
        let text = serde_json::to_string(&serde_json::json!({
            "jsonrpc": "2.0", "method": method, "params": params
        }))?;
        self.send_text(text).await
    }

    /// Sends one text frame as it is (for tests and tools that speak raw JSON-RPC). Fails once
    /// the socket is gone.
    pub async fn send_text(&self, text: String) -> Result<(), ClientError> {
        if self.is_closed() {
            return Err(ClientError::Closed(self.close_reason()));
        }
        self.out
            .send(Frame::text(Payload::Owned(text.into_bytes())))
            .await
            .map_err(|_| ClientError::Closed(self.close_reason()))
    }

    /// Sends a request of method `M` (its params and result are the protocol's types) and
    /// waits for its reply.
    pub async fn method<M: Method>(
        &self,
        params: &M::Params<'_>,
    ) -> Result<M::Result, ClientError> {
        self.request(M::NAME, params).await
    }

    pub async fn hello(&self, params: HelloParams) -> Result<HelloResult, ClientError> {
        self.method::<Hello>(&params).await
    }

    pub async fn subscribe(&self, topic: &str) -> Result<SubscribeResult, ClientError> {
        self.subscribe_since(topic, None).await
    }

    /// `subscribe` with `since`: the events after that id are replayed before the reply, whose
    /// `recovered` says whether the history still reached back that far.
    pub async fn subscribe_since(
        &self,
        topic: &str,
        since: Option<&str>,
    ) -> Result<SubscribeResult, ClientError> {
        self.method::<Subscribe>(&SubscribeParams {
            topic: topic.to_owned(),
            since: since.map(str::to_owned),
            token: None,
        })
        .await
    }

    pub async fn unsubscribe(&self, topic: &str) -> Result<(), ClientError> {
        self.method::<Unsubscribe>(&UnsubscribeParams {
            topic: topic.to_owned(),
        })
        .await?;
        Ok(())
    }

    pub async fn publish<T: Serialize>(
        &self,
        topic: &str,
        data: &T,
    ) -> Result<PublishResult, ClientError> {
        let data = serde_json::value::to_raw_value(data)?;
        self.method::<Publish>(&publish_params(topic, &data)).await
    }

    /// `tools/call`: the tool's result (or the task, for a call made with `task`).
    pub async fn call(&self, params: &CallParams) -> Result<CallResult, ClientError> {
        self.method::<ToolsCall>(params).await
    }

    pub async fn ping(&self) -> Result<(), ClientError> {
        self.method::<Ping>(&Default::default()).await?;
        Ok(())
    }

    /// Starts a normal close (1000).
    pub async fn close(&self) {
        let _ = self.out.send(Frame::close(1000, b"")).await;
    }
}

/// `publish` params for `topic` and already encoded `data`.
pub(crate) fn publish_params<'a>(topic: &'a str, data: &'a RawValue) -> PublishParams<'a> {
    PublishParams {
        topic: std::borrow::Cow::Borrowed(topic),
        data,
        history: None,
    }
}

fn encode_request<P: Serialize>(id: u64, method: &str, params: &P) -> Result<String, ClientError> {
    #[derive(Serialize)]
    struct Req<'a, P> {
        jsonrpc: &'static str,
        id: u64,
        method: &'a str,
        params: &'a P,
    }
    Ok(serde_json::to_string(&Req {
        jsonrpc: "2.0",
        id,
        method,
        params,
    })?)
}

async fn write_loop<W: tokio::io::AsyncWrite + Unpin>(
    mut ws: fastwebsockets::WebSocketWrite<W>,
    mut rx: mpsc::Receiver<Frame<'static>>,
) {
    // A TLS stream keeps what is written until it is flushed, and `write_frame` does not
    // flush: write what is queued, then flush once.
    'frames: while let Some(mut frame) = rx.recv().await {
        loop {
            let is_close = frame.opcode == OpCode::Close;
            if ws.write_frame(frame).await.is_err() {
                break 'frames;
            }
            if is_close {
                let _ = ws.flush().await;
                break 'frames;
            }
            match rx.try_recv() {
                Ok(next) => frame = next,
                Err(_) => break,
            }
        }
        if ws.flush().await.is_err() {
            break;
        }
    }
}

#[derive(serde::Deserialize)]
struct Incoming<'a> {
    #[serde(default)]
    id: Option<u64>,
    #[serde(default, borrow)]
    method: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    params: Option<&'a RawValue>,
    #[serde(default, borrow)]
    result: Option<&'a RawValue>,
    #[serde(default)]
    error: Option<RpcError>,
}

async fn read_loop<R: tokio::io::AsyncRead + Unpin>(
    mut ws: FragmentCollectorRead<R>,
    shared: Arc<Shared>,
    out: mpsc::Sender<Frame<'static>>,
    notes: mpsc::Sender<Notification>,
) {
    // Pongs and the close echo go through the writer; once the writer is gone (it stops after
    // a close frame) there is nothing left to answer.
    let mut send_fn = |frame: Frame<'_>| {
        // Called for the pong a ping obliges: a frame arrived.
        shared.touch();
        let owned = Frame::new(
            true,
            frame.opcode,
            None,
            Payload::Owned(frame.payload.to_vec()),
        );
        let out = out.clone();
        async move {
            let _ = out.send(owned).await;
            Ok::<(), WebSocketError>(())
        }
    };
    loop {
        let frame = match ws.read_frame(&mut send_fn).await {
            Ok(f) => f,
            Err(_) => break,
        };
        shared.touch();
        match frame.opcode {
            OpCode::Text => {
                let Ok(msg) = serde_json::from_slice::<Incoming<'_>>(&frame.payload) else {
                    tracing::warn!("unparseable message from gateway");
                    continue;
                };
                if let Some(method) = msg.method {
                    let params = msg
                        .params
                        .map(|p| p.to_owned())
                        .unwrap_or_else(|| RawValue::from_string("{}".into()).expect("valid"));
                    let n = Notification {
                        method: method.into_owned(),
                        params,
                    };
                    if notes.send(n).await.is_err() {
                        // Nobody listens for notifications; keep serving replies.
                    }
                } else if let Some(id) = msg.id {
                    let waiter = shared
                        .pending
                        .lock()
                        .expect("lock poisoned")
                        .as_mut()
                        .and_then(|p| p.remove(&id));
                    let reply = match (msg.result, msg.error) {
                        (_, Some(e)) => Err(e),
                        (Some(r), None) => Ok(r.to_owned()),
                        (None, None) => Err(RpcError::invalid_request("reply without result")),
                    };
                    if let Some(waiter) = waiter {
                        let _ = waiter.send(reply);
                    } else if let Some(router) = &shared.router {
                        // A request of the session's, sent on this socket or an earlier one.
                        router.deliver(id, reply.map_err(ClientError::Rpc));
                    }
                }
            }
            OpCode::Close => {
                let p = &frame.payload;
                let reason = if p.len() >= 2 {
                    Some((
                        u16::from_be_bytes([p[0], p[1]]),
                        String::from_utf8_lossy(&p[2..]).into_owned(),
                    ))
                } else {
                    Some((1005, String::new()))
                };
                *shared.closed.lock().expect("lock poisoned") = reason;
                break;
            }
            _ => {}
        }
    }
    // Fail every waiting request, and every later one: the socket is gone.
    shared.finish();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_parsing() {
        let t = |tls, host: &str, port, path: &str| Target {
            tls,
            host: host.into(),
            port,
            path: path.into(),
        };
        assert_eq!(
            parse_url("ws://127.0.0.1:8080/ws?token=a").unwrap(),
            t(false, "127.0.0.1", 8080, "/ws?token=a")
        );
        assert_eq!(
            parse_url("ws://localhost/ws").unwrap(),
            t(false, "localhost", 80, "/ws")
        );
        assert_eq!(
            parse_url("wss://gw.example.com/ws").unwrap(),
            t(true, "gw.example.com", 443, "/ws")
        );
        assert_eq!(
            parse_url("wss://127.0.0.1:8443/ws").unwrap(),
            t(true, "127.0.0.1", 8443, "/ws")
        );
        assert_eq!(
            parse_url("ws://[::1]:9000/ws").unwrap().authority(),
            "[::1]:9000"
        );
        assert!(parse_url("ftp://x/ws").is_err());
        assert!(parse_url("x").is_err());
    }
}
