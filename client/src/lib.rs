//! The Rust client for Switchboard, used by the CLI, the benchmarks and the tests.
//!
//! [`Client::connect`] opens a socket; [`Client::hello`], [`Client::subscribe`],
//! [`Client::publish`] and [`Client::request`] send requests and wait for their replies;
//! [`Notifications`] yields what the gateway sends unasked (`event`, ...), in order. When the
//! socket closes, the stream ends and [`Client::close_reason`] tells the close code.
//!
//! Inside: a reader task routes replies to their waiting callers by id and notifications to a
//! bounded queue (a client that stops reading notifications stops reading the socket, as a slow
//! consumer would); a writer task owns the write half. Reconnection and session resume arrive
//! with the sessions issue.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use fastwebsockets::{FragmentCollectorRead, Frame, OpCode, Payload, WebSocketError};
use http_body_util::Empty;
use hyper::Request;
use hyper::header::{self, HeaderValue};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use switchboard_core::wire::{
    EventParams, HelloParams, HelloResult, PublishResult, RpcError, SubscribeParams,
    SubscribeResult, UnsubscribeParams,
};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot};

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
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            token: None,
            subprotocol: Some("switchboard.v1".into()),
            bind: None,
            notification_queue: DEFAULT_NOTIFICATION_QUEUE,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
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
        if self.method != "event" {
            return None;
        }
        serde_json::from_str(self.params.get()).ok()
    }
}

/// Notifications in arrival order; ends when the socket closes.
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

fn parse_url(url: &str) -> Result<(String, String), ClientError> {
    let uri: hyper::Uri = url.parse().map_err(|e| ClientError::Url(format!("{e}")))?;
    match uri.scheme_str() {
        Some("ws") | Some("http") => {}
        Some(other) => {
            return Err(ClientError::Url(format!(
                "scheme {other} is not supported (use ws://)"
            )));
        }
        None => {
            return Err(ClientError::Url(
                "missing scheme (ws://host:port/ws)".into(),
            ));
        }
    }
    let authority = uri
        .authority()
        .ok_or_else(|| ClientError::Url("missing host".into()))?
        .to_string();
    let authority = if authority.contains(':') {
        authority
    } else {
        format!("{authority}:80")
    };
    let path = uri
        .path_and_query()
        .map_or("/".to_owned(), |p| p.as_str().to_owned());
    Ok((authority, path))
}

impl Client {
    /// Connects to `url` (`ws://host:port/ws`, optionally `?token=...`).
    pub async fn connect(
        url: &str,
        opts: ConnectOptions,
    ) -> Result<(Client, Notifications), ClientError> {
        tokio::time::timeout(opts.connect_timeout, Self::connect_inner(url, &opts))
            .await
            .map_err(|_| ClientError::Timeout)?
    }

    async fn connect_inner(
        url: &str,
        opts: &ConnectOptions,
    ) -> Result<(Client, Notifications), ClientError> {
        let (authority, path) = parse_url(url)?;
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

        let mut req = Request::builder()
            .method("GET")
            .uri(path)
            .header(header::HOST, authority)
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
        let shared = Arc::new(Shared {
            pending: Mutex::new(Some(HashMap::new())),
            closed: Mutex::new(None),
        });
        let (out_tx, out_rx) = mpsc::channel::<Frame<'static>>(WRITE_QUEUE);
        let (note_tx, note_rx) = mpsc::channel(opts.notification_queue.max(1));
        tokio::spawn(write_loop(write, out_rx));
        tokio::spawn(read_loop(
            FragmentCollectorRead::new(read),
            shared.clone(),
            out_tx.clone(),
            note_tx,
        ));
        Ok((
            Client {
                shared,
                out: out_tx,
                next_id: Arc::new(AtomicU64::new(1)),
                peer,
            },
            Notifications { rx: note_rx },
        ))
    }

    /// The close code and reason, once the socket has closed with a close frame.
    pub fn close_reason(&self) -> Option<(u16, String)> {
        self.shared.closed.lock().expect("lock poisoned").clone()
    }

    /// Sends a request and waits for its reply.
    pub async fn request<P: Serialize, R: DeserializeOwned>(
        &self,
        method: &str,
        params: &P,
    ) -> Result<R, ClientError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        #[derive(Serialize)]
        struct Req<'a, P> {
            jsonrpc: &'static str,
            id: u64,
            method: &'a str,
            params: &'a P,
        }
        let text = serde_json::to_string(&Req {
            jsonrpc: "2.0",
            id,
            method,
            params,
        })?;
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

    /// Sends one text frame as it is (for tests and tools that speak raw JSON-RPC).
    pub async fn send_text(&self, text: String) -> Result<(), ClientError> {
        self.out
            .send(Frame::text(Payload::Owned(text.into_bytes())))
            .await
            .map_err(|_| ClientError::Closed(self.close_reason()))
    }

    pub async fn hello(&self, params: HelloParams) -> Result<HelloResult, ClientError> {
        self.request("hello", &params).await
    }

    pub async fn subscribe(&self, topic: &str) -> Result<SubscribeResult, ClientError> {
        self.request(
            "subscribe",
            &SubscribeParams {
                topic: topic.to_owned(),
                since: None,
            },
        )
        .await
    }

    pub async fn unsubscribe(&self, topic: &str) -> Result<(), ClientError> {
        let _: serde_json::Value = self
            .request(
                "unsubscribe",
                &UnsubscribeParams {
                    topic: topic.to_owned(),
                },
            )
            .await?;
        Ok(())
    }

    pub async fn publish<T: Serialize>(
        &self,
        topic: &str,
        data: &T,
    ) -> Result<PublishResult, ClientError> {
        self.request(
            "publish",
            &serde_json::json!({ "topic": topic, "data": data }),
        )
        .await
    }

    pub async fn ping(&self) -> Result<(), ClientError> {
        let _: serde_json::Value = self.request("ping", &serde_json::json!({})).await?;
        Ok(())
    }

    /// Starts a normal close (1000).
    pub async fn close(&self) {
        let _ = self.out.send(Frame::close(1000, b"")).await;
    }
}

async fn write_loop<W: tokio::io::AsyncWrite + Unpin>(
    mut ws: fastwebsockets::WebSocketWrite<W>,
    mut rx: mpsc::Receiver<Frame<'static>>,
) {
    while let Some(frame) = rx.recv().await {
        let is_close = frame.opcode == OpCode::Close;
        if ws.write_frame(frame).await.is_err() || is_close {
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
                    if let Some(waiter) = waiter {
                        let reply = match (msg.result, msg.error) {
                            (_, Some(e)) => Err(e),
                            (Some(r), None) => Ok(r.to_owned()),
                            (None, None) => Err(RpcError::invalid_request("reply without result")),
                        };
                        let _ = waiter.send(reply);
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
    shared.pending.lock().expect("lock poisoned").take();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_parsing() {
        assert_eq!(
            parse_url("ws://127.0.0.1:8080/ws?token=a").unwrap(),
            ("127.0.0.1:8080".into(), "/ws?token=a".into())
        );
        assert_eq!(
            parse_url("ws://localhost/ws").unwrap(),
            ("localhost:80".into(), "/ws".into())
        );
        assert!(parse_url("wss://x/ws").is_err());
        assert!(parse_url("x").is_err());
    }
}
