//! [`Session`]: a connection to a Switchboard cluster that survives its sockets.
//!
//! [`Session::connect`] opens the first socket and says `hello`; a supervisor task then owns the
//! socket. When it ends (a node restarting with 1012, a slow-consumer close, a network drop, a
//! socket gone silent for [`SessionOptions::stale_heartbeats`] heartbeats), the supervisor
//! reconnects with exponential backoff and full jitter, trying [`SessionOptions::urls`] in
//! rotation, and says `hello {session, positions}` to resume:
//!
//! - **Resumed** (`resumed: true`): the gateway restored the subscriptions and replayed what
//!   the app missed (from `positions`, the last event id the app received per topic); topics
//!   whose history no longer reaches back are reported as [`SessionEvent::NotRecovered`];
//!   topics the app subscribed to meanwhile are subscribed, those it dropped are unsubscribed.
//!   Replies to `tools/call`s that were in flight arrive on the new socket, with the same ids,
//!   and reach their waiting [`Session::call`].
//! - **Not resumed** (the session expired, or the gateway keeps none): a new session. Every
//!   wanted topic is subscribed again with `since` (what the tracker knows, see `tracker.rs`), so
//!   the app still sees each history event exactly once, in order; calls that were in flight
//!   fail with [`ClientError::SessionLost`].
//! - A session owned by another identity (-32001 to the resuming `hello`, socket open): a fresh
//!   `hello` on the same socket, then as not resumed. The backend unavailable (-32603): retry
//!   after the backoff.
//! - Close codes follow the policy in `backoff.rs`: 4009 (taken over by another connection) is
//!   final ([`SessionEvent::Closed`], no reconnect), and so is [`Session::close`]; 1008 (bad or
//!   expired token) is final with a fixed token, while with a [`TokenProvider`] the session asks
//!   it for a fresh token and reconnects (final if that socket is refused with 1008 again before
//!   a `hello` succeeds); 1012 goes to the next URL at once; 1013 and 4029 wait at least 1 s and
//!   5 s; anything else reconnects after the jittered backoff.
//!
//! **Tokens.** [`SessionOptions::token`] is sent as it is in every `hello`. A
//! [`SessionOptions::token_provider`] is asked before each (re)connect whose cached token is
//! within its refresh margin (`token.rs`), and before the token's `exp` (at `exp - min(30 s,
//! lifetime / 3)`): the new token is sent with `refresh` on the live socket, so the gateway does
//! not close it at `exp`. A refresh refused (-32001) is tried once more after
//! [`REFRESH_RETRY`]; failing that, the gateway closes with 1008 at `exp` and the 1008 policy
//! applies. Topics the new token no longer allows (`revoked`) are dropped and reported as
//! [`SessionEvent::Revoked`].
//!
//! **URLs.** `ws://` or `wss://` (TLS through rustls: [`ConnectOptions::tls`] says which
//! certificate authorities to trust, see `tls.rs`).
//!
//! **Calls.** A [`Session::call`] whose future is dropped before its reply (or that timed out)
//! sends `notifications/cancelled` for it, so the gateway stops it.
//!
//! Events are deduplicated per topic by id (an event whose id is not newer than the last one
//! delivered for its topic is dropped; events without id pass) and delivered in order through
//! [`SessionEvents`], a bounded queue: an app that stops reading it stops the socket being read,
//! and the gateway eventually closes it as a slow consumer (4008), after which the session
//! resumes from where the app is.
//!
//! Requests other than calls that were in flight when a socket dropped fail with
//! [`ClientError::Disconnected`]; a subscribe stays wanted and is restored. Requests made while
//! the session is reconnecting wait for the next socket (within their timeout).
//!
//! ```ignore
//! let mut opts = SessionOptions::new(["wss://gw-1.example.com/ws", "wss://gw-2.example.com/ws"]);
//! opts.token_provider = Some(TokenProvider::from_fn(|| async { fetch_jwt().await }));
//! let (session, mut events) = Session::connect(opts).await?;
//! session.subscribe("chat:42").await?;
//! let answer = session.call("echo", json!({"hi": 1})).await?;
//! while let Some(e) = events.recv().await {
//!     match e {
//!         SessionEvent::Event(ev) => println!("{} {}", ev.topic, ev.data),
//!         SessionEvent::NotRecovered { topic } => reload(&topic).await,
//!         SessionEvent::Closed { code, reason } => break, // 4009, 1008 or close()
//!         _ => {}
//!     }
//! }
//! ```

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use switchboard_protocol::event::EventParams;
use switchboard_protocol::methods::Method;
use switchboard_protocol::methods::session::{HelloParams, HelloResult};
use switchboard_protocol::methods::tools::{CallParams, CallToolResult, ToolsCall};
use switchboard_protocol::methods::topics::{
    Publish, PublishResult, Subscribe, SubscribeParams, SubscribeResult, Unsubscribe,
    UnsubscribeParams,
};
use switchboard_protocol::{ErrorCode, close};
use tokio::sync::{mpsc, watch};

use crate::backoff::{self, Next};
use crate::router::ReplyRouter;
use crate::token::{TokenProvider, Tokens, now_ms};
use crate::tracker::Tracker;
use crate::{Client, ClientError, ConnectOptions, Notification, Notifications};

/// Default: the first reconnect waits up to this long (full jitter: anywhere from zero).
pub const DEFAULT_BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Default: the ceiling of the reconnect delay, reached after a few failed attempts.
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Default: session events buffered for the app before the socket stops being read.
pub const DEFAULT_EVENT_QUEUE: usize = 1024;
/// Default: how long a `hello` may take before the socket is given up and another tried.
pub const DEFAULT_HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Default: how long `subscribe`, `unsubscribe` and `publish` may take, waiting for a socket
/// included.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Default: how long a `call` may wait for its reply, reconnects included. The gateway answers
/// every call it received by the tool's timeout; this bounds the wait for one whose request was
/// lost with a dying socket.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(300);
/// Default: on [`Session::close`], how long to wait for the gateway's close frame.
pub const DEFAULT_CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long after a refused `refresh` it is tried once more, with another token.
pub const REFRESH_RETRY: Duration = Duration::from_secs(1);
/// Default: a socket that receives nothing (the gateway pings a quiet client every heartbeat)
/// for this many heartbeats is dropped and the session reconnects.
pub const DEFAULT_STALE_HEARTBEATS: u32 = 3;

/// How a [`Session`] connects and reconnects.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    /// Gateway URLs (`ws://host:port/ws`, `wss://host/ws`), tried in rotation.
    pub urls: Vec<String>,
    /// How each socket connects (subprotocol, TLS roots and CA, timeouts).
    pub connect: ConnectOptions,
    /// A fixed token, sent as `hello {token}` on every socket (a 1008 is then final).
    pub token: Option<String>,
    /// Where tokens come from, instead of `token`: asked before connecting (when the cached
    /// token nears its `exp`), before `exp` to `refresh`, and after a 1008.
    pub token_provider: Option<TokenProvider>,
    /// Sent as `hello {client}` (any JSON, for the gateway's logs); by default
    /// `{"name": "switchboard-rust", "version": <this crate's>}`.
    pub client_info: Option<Value>,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Session events buffered for the app (at least 1).
    pub event_queue: usize,
    pub hello_timeout: Duration,
    pub request_timeout: Duration,
    /// `None`: a call waits for its reply as long as the session lives.
    pub call_timeout: Option<Duration>,
    pub close_timeout: Duration,
    /// `0`: never drop a silent socket.
    pub stale_heartbeats: u32,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            urls: Vec::new(),
            connect: ConnectOptions::default(),
            token: None,
            token_provider: None,
            client_info: Some(serde_json::json!({
                "name": "switchboard-rust",
                "version": env!("CARGO_PKG_VERSION"),
            })),
            backoff_min: DEFAULT_BACKOFF_MIN,
            backoff_max: DEFAULT_BACKOFF_MAX,
            event_queue: DEFAULT_EVENT_QUEUE,
            hello_timeout: DEFAULT_HELLO_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            call_timeout: Some(DEFAULT_CALL_TIMEOUT),
            close_timeout: DEFAULT_CLOSE_TIMEOUT,
            stale_heartbeats: DEFAULT_STALE_HEARTBEATS,
        }
    }
}

impl SessionOptions {
    /// Every default, with these URLs.
    pub fn new<S: Into<String>>(urls: impl IntoIterator<Item = S>) -> Self {
        SessionOptions {
            urls: urls.into_iter().map(Into::into).collect(),
            ..Self::default()
        }
    }

    fn validate(&self) -> Result<(), ClientError> {
        if self.urls.is_empty() {
            return Err(ClientError::Options("urls: at least one URL"));
        }
        if self.token.is_some() && self.token_provider.is_some() {
            return Err(ClientError::Options(
                "token and token_provider: give one of them",
            ));
        }
        if self.backoff_min.is_zero() || self.backoff_max < self.backoff_min {
            return Err(ClientError::Options(
                "backoff: backoff_min above zero and backoff_max at least backoff_min",
            ));
        }
        if self.event_queue == 0 {
            return Err(ClientError::Options("event_queue: at least 1"));
        }
        if self.hello_timeout.is_zero() || self.request_timeout.is_zero() {
            return Err(ClientError::Options(
                "hello_timeout and request_timeout: above zero",
            ));
        }
        Ok(())
    }
}

/// What a session tells the app, in order.
#[derive(Debug)]
pub enum SessionEvent {
    /// An `event` notification, deduplicated by id.
    Event(EventParams),
    /// Another notification (`notifications/progress`, `notifications/tools/list_changed`).
    Notification(Notification),
    /// The socket was lost (`code`: its close code, if it sent one); the session reconnects.
    Disconnected { code: Option<u16>, reason: String },
    /// A new socket said `hello`: the session was `resumed`, or a new one was opened (its
    /// in-flight calls failed with [`ClientError::SessionLost`]). Events replayed by a resume
    /// may come just before this; topics that could not be recovered follow it.
    Reconnected { node: String, resumed: bool },
    /// Events of this topic may have been missed (its history no longer reaches back that
    /// far, or it keeps none): reload what depends on it. Its events continue.
    NotRecovered { topic: String },
    /// A refreshed token no longer allows this topic: the gateway dropped the subscription,
    /// and the session no longer keeps it.
    Revoked { topic: String },
    /// The session is over: taken over by another connection (4009), a bad or expired token
    /// (1008) that the token provider could not replace, or closed by the app (1000). Nothing
    /// follows.
    Closed { code: u16, reason: String },
}

/// The session's events; `recv` answers `None` after [`SessionEvent::Closed`].
#[derive(Debug)]
pub struct SessionEvents {
    rx: mpsc::Receiver<SessionEvent>,
}

impl SessionEvents {
    pub async fn recv(&mut self) -> Option<SessionEvent> {
        self.rx.recv().await
    }
}

/// The session's socket, as requests see it.
#[derive(Clone)]
enum Link {
    /// Between sockets, or before a new socket's `hello` is answered.
    Connecting,
    Ready(Client),
    /// Final.
    Closed(u16, String),
}

struct State {
    session: String,
    node: String,
    heartbeat: Duration,
    tracker: Tracker,
}

struct Inner {
    opts: SessionOptions,
    tokens: Tokens,
    /// A 1008 was answered with a fresh token, and no `hello` has succeeded since: another
    /// 1008 is final.
    refused: std::sync::atomic::AtomicBool,
    router: ReplyRouter,
    state: Mutex<State>,
    link: watch::Sender<Link>,
    reconnections: AtomicU64,
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("session lock poisoned")
    }

    /// Makes the link final (unless it already is); returns what it was.
    fn close_link(&self, code: u16, reason: &str) -> Link {
        let mut prev = None;
        self.link.send_if_modified(|l| {
            if matches!(l, Link::Closed(..)) {
                prev = Some(l.clone());
                return false;
            }
            prev = Some(std::mem::replace(l, Link::Closed(code, reason.to_owned())));
            true
        });
        prev.expect("the closure ran")
    }

    fn closed_with(&self) -> Option<(u16, String)> {
        match &*self.link.borrow() {
            Link::Closed(code, reason) => Some((*code, reason.clone())),
            _ => None,
        }
    }

    /// Waits for a ready socket other than `stale` (one that was seen to fail).
    async fn ready(&self, stale: Option<&Client>) -> Result<Client, ClientError> {
        let mut rx = self.link.subscribe();
        let link = rx
            .wait_for(|l| match l {
                Link::Connecting => false,
                Link::Ready(c) => !stale.is_some_and(|s| s.same(c)),
                Link::Closed(..) => true,
            })
            .await
            .map_err(|_| ClientError::Closed(None))?;
        match &*link {
            Link::Ready(c) => Ok(c.clone()),
            Link::Closed(code, reason) => Err(ClientError::Closed(Some((*code, reason.clone())))),
            Link::Connecting => unreachable!("waited for a settled link"),
        }
    }
}

/// Ends the session when the last [`Session`] handle is dropped.
struct Alive {
    inner: Arc<Inner>,
}

impl Drop for Alive {
    fn drop(&mut self) {
        self.inner.close_link(close::NORMAL, "session dropped");
    }
}

/// A reconnecting, resuming session. Cheap to clone; all clones share it. Dropping the last
/// clone closes it.
#[derive(Clone)]
pub struct Session {
    inner: Arc<Inner>,
    _alive: Arc<Alive>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.inner.state();
        f.debug_struct("Session")
            .field("session", &st.session)
            .field("node", &st.node)
            .finish()
    }
}

impl Session {
    /// Connects to the first URL that answers (each is tried once) and says `hello`. Failing
    /// that, the last error: this first connection is not retried.
    pub async fn connect(opts: SessionOptions) -> Result<(Session, SessionEvents), ClientError> {
        opts.validate()?;
        let router = ReplyRouter::default();
        let tokens = Tokens::new(
            opts.token.clone(),
            opts.token_provider.clone(),
            opts.request_timeout,
        );
        let mut last_err = None;
        // With a token provider, a token refused once is replaced by a fresh one (once).
        let mut refused = false;
        let mut index = 0;
        while index < opts.urls.len() {
            let url = &opts.urls[index];
            let token = tokens.for_connect().await?;
            let (client, notes) =
                match Client::connect_routed(url, &opts.connect, Some(router.clone())).await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::debug!(url, error = %e, "session connect failed");
                        last_err = Some(e);
                        index += 1;
                        continue;
                    }
                };
            let params = hello_params(&opts, token, None, Default::default());
            let hello = match tokio::time::timeout(opts.hello_timeout, client.hello(params)).await {
                Ok(Ok(hello)) => hello,
                Ok(Err(e)) => {
                    client.abort();
                    let unauthorized = match &e {
                        ClientError::Rpc(rpc) => rpc.kind() == Some(ErrorCode::Unauthorized),
                        ClientError::Closed(Some((code, _))) => *code == close::POLICY,
                        _ => false,
                    };
                    if unauthorized && tokens.has_provider() && !refused {
                        // The same URL again, with a fresh token.
                        refused = true;
                        tokens.invalidate().await;
                        last_err = Some(e);
                        continue;
                    }
                    let retryable = match &e {
                        ClientError::Rpc(rpc) => matches!(
                            rpc.kind(),
                            Some(ErrorCode::Internal | ErrorCode::Overloaded)
                        ),
                        ClientError::Closed(Some((code, _))) => !backoff::is_final(*code, false),
                        _ => true,
                    };
                    if !retryable {
                        return Err(e);
                    }
                    last_err = Some(e);
                    index += 1;
                    continue;
                }
                Err(_) => {
                    client.abort();
                    last_err = Some(ClientError::Timeout);
                    index += 1;
                    continue;
                }
            };
            let (events_tx, events_rx) = mpsc::channel(opts.event_queue);
            let inner = Arc::new(Inner {
                state: Mutex::new(State {
                    session: hello.session,
                    node: hello.node,
                    heartbeat: Duration::from_millis(hello.heartbeat_ms),
                    tracker: Tracker::default(),
                }),
                link: watch::channel(Link::Ready(client.clone())).0,
                reconnections: AtomicU64::new(0),
                opts,
                tokens,
                refused: Default::default(),
                router,
            });
            let supervisor = Supervisor {
                inner: inner.clone(),
                events: events_tx.clone(),
                url_index: index,
            };
            tokio::spawn(supervisor.run(client, notes));
            if inner.tokens.has_provider() {
                tokio::spawn(refresher(inner.clone(), events_tx));
            }
            let session = Session {
                _alive: Arc::new(Alive {
                    inner: inner.clone(),
                }),
                inner,
            };
            return Ok((session, SessionEvents { rx: events_rx }));
        }
        Err(last_err.unwrap_or(ClientError::Options("urls: at least one URL")))
    }

    /// The session's id (it changes when a reconnect could not resume it).
    pub fn session_id(&self) -> String {
        self.inner.state().session.clone()
    }

    /// The node of the current (or last) socket, as its `hello` named it.
    pub fn node(&self) -> String {
        self.inner.state().node.clone()
    }

    /// Successful reconnects so far.
    pub fn reconnections(&self) -> u64 {
        self.inner.reconnections.load(Ordering::Relaxed)
    }

    /// The topics the session keeps subscribed, sorted.
    pub fn topics(&self) -> Vec<String> {
        self.inner.state().tracker.topics()
    }

    /// Subscribes to `topic` and keeps it subscribed across reconnects. Again on a topic the
    /// session already has, it asks for what came after the last event delivered (the reply's
    /// `recovered` says whether the history reached back). On a failure other than
    /// [`ClientError::Disconnected`] the topic is not kept.
    pub async fn subscribe(&self, topic: &str) -> Result<SubscribeResult, ClientError> {
        let since = self.inner.state().tracker.want(topic);
        let params = SubscribeParams {
            topic: topic.to_owned(),
            since,
            token: None,
        };
        match self.method::<Subscribe>(&params).await {
            Ok(r) => {
                self.inner
                    .state()
                    .tracker
                    .confirm(topic, r.position.as_deref());
                Ok(r)
            }
            Err(ClientError::Disconnected) => Err(ClientError::Disconnected),
            Err(e) => {
                let mut st = self.inner.state();
                if st.tracker.since(topic).is_none() {
                    // Never confirmed: the gateway refused it (or it timed out).
                    st.tracker.forget(topic);
                }
                Err(e)
            }
        }
    }

    /// Stops delivering `topic`'s events at once and unsubscribes (now, or when the session
    /// is restored).
    pub async fn unsubscribe(&self, topic: &str) -> Result<(), ClientError> {
        self.inner.state().tracker.forget(topic);
        let client = match &*self.inner.link.borrow() {
            Link::Ready(c) => c.clone(),
            // A restore unsubscribes what the app no longer wants.
            Link::Connecting => return Ok(()),
            Link::Closed(code, reason) => {
                return Err(ClientError::Closed(Some((*code, reason.clone()))));
            }
        };
        let params = UnsubscribeParams {
            topic: topic.to_owned(),
        };
        match tokio::time::timeout(
            self.inner.opts.request_timeout,
            client.method::<Unsubscribe>(&params),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => match self.settle(e) {
                ClientError::Disconnected => Ok(()),
                e => Err(e),
            },
            Err(_) => Err(ClientError::Timeout),
        }
    }

    /// Publishes `data` to `topic` (`{"id"}` on a topic with history).
    pub async fn publish<T: Serialize>(
        &self,
        topic: &str,
        data: &T,
    ) -> Result<PublishResult, ClientError> {
        let data = serde_json::value::to_raw_value(data)?;
        self.method::<Publish>(&crate::publish_params(topic, &data))
            .await
    }

    /// `tools/call`: the tool's `CallToolResult`. The reply is awaited across reconnects: after
    /// a resume (on any node) it arrives on the new socket. Fails with
    /// [`ClientError::SessionLost`] when a reconnect could not resume the session, and with
    /// [`ClientError::Timeout`] after [`SessionOptions::call_timeout`].
    pub async fn call(&self, tool: &str, arguments: Value) -> Result<CallToolResult, ClientError> {
        let call = self.call_inner(CallParams::new(tool, arguments));
        match self.inner.opts.call_timeout {
            Some(t) => tokio::time::timeout(t, call)
                .await
                .map_err(|_| ClientError::Timeout)?,
            None => call.await,
        }
    }

    async fn call_inner(&self, params: CallParams) -> Result<CallToolResult, ClientError> {
        let router = &self.inner.router;
        let id = router.next_id();
        let mut stale = None;
        let (_guard, rx) = loop {
            let client = self.inner.ready(stale.as_ref()).await?;
            // Registered before it is sent, so that the reply cannot come first.
            let (guard, rx) = router.expect(id);
            match client.send_request(id, ToolsCall::NAME, &params).await {
                Ok(()) => break (guard, rx),
                // Never sent: that socket is gone; send it on the next one.
                Err(_) => stale = Some(client),
            }
        };
        // From here, a caller that gives up (drops this future, or its timeout passes) cancels
        // the call at the gateway.
        let mut cancel = CancelOnDrop {
            inner: &self.inner,
            id,
            armed: true,
        };
        let reply = rx.await;
        cancel.armed = false;
        match reply {
            Ok(Ok(raw)) => Ok(serde_json::from_str(raw.get())?),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ClientError::Closed(self.inner.closed_with())),
        }
    }

    /// Closes the session: the socket with 1000, then [`SessionEvent::Closed`]. Calls still
    /// waiting fail.
    pub async fn close(&self) {
        let prev = self.inner.close_link(close::NORMAL, "closed by the client");
        if let Link::Ready(client) = prev {
            client.close().await;
            let _ = tokio::time::timeout(self.inner.opts.close_timeout, client.closed()).await;
            client.abort();
        }
    }

    /// A request on the current socket (waiting for one if the session is reconnecting).
    async fn method<M: Method>(&self, params: &M::Params<'_>) -> Result<M::Result, ClientError> {
        let request = async {
            let client = self.inner.ready(None).await?;
            client.method::<M>(params).await.map_err(|e| self.settle(e))
        };
        tokio::time::timeout(self.inner.opts.request_timeout, request)
            .await
            .map_err(|_| ClientError::Timeout)?
    }

    /// A socket's `Closed` as the app should see it: final when the session is over,
    /// [`ClientError::Disconnected`] when the session carries on.
    fn settle(&self, e: ClientError) -> ClientError {
        match e {
            ClientError::Closed(reason) => {
                if let Some(done) = self.inner.closed_with() {
                    return ClientError::Closed(Some(done));
                }
                match reason {
                    Some((code, r))
                        if backoff::is_final(code, self.inner.tokens.has_provider()) =>
                    {
                        ClientError::Closed(Some((code, r)))
                    }
                    _ => ClientError::Disconnected,
                }
            }
            e => e,
        }
    }
}

/// Sends `notifications/cancelled` for a call whose caller stopped waiting before its reply.
struct CancelOnDrop<'a> {
    inner: &'a Inner,
    id: u64,
    armed: bool,
}

impl Drop for CancelOnDrop<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Link::Ready(client) = &*self.inner.link.borrow() else {
            // Between sockets the gateway still runs it; its reply, if any, goes nowhere.
            return;
        };
        let (client, id) = (client.clone(), self.id);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let params = serde_json::json!({
                    "requestId": id,
                    "reason": "the client stopped waiting",
                });
                let _ = client.notify("notifications/cancelled", &params).await;
            });
        }
    }
}

fn hello_params(
    opts: &SessionOptions,
    token: Option<String>,
    session: Option<String>,
    positions: std::collections::BTreeMap<String, String>,
) -> HelloParams {
    HelloParams {
        token,
        session,
        positions: (!positions.is_empty()).then_some(positions),
        client: opts.client_info.clone(),
    }
}

/// Why the supervisor stopped pumping a socket.
enum End {
    /// The socket is gone or given up: reconnect, unless the policy for its close code (or
    /// the code its `hello` reply announced) says otherwise.
    Lost(Option<(u16, String)>),
    /// The app closed or dropped the session.
    Shutdown,
}

/// Why a new socket's handshake failed: the close code the gateway sends next, if known
/// (1013 after -32603 or -32006, 1008 after a token refused twice).
enum Stop {
    Retry(Option<(u16, String)>),
}

type Handshake = Pin<Box<dyn Future<Output = Result<(), Stop>> + Send>>;

/// Owns the session's socket: delivers its notifications, notices its end, reconnects.
struct Supervisor {
    inner: Arc<Inner>,
    events: mpsc::Sender<SessionEvent>,
    /// The URL of the current socket, in `opts.urls`.
    url_index: usize,
}

impl Supervisor {
    async fn run(mut self, client: Client, notes: Notifications) {
        let mut live = (client, notes);
        let mut handshake: Option<Handshake> = None;
        let mut attempt = 0u32;
        loop {
            let (client, mut notes) = live;
            let end = self.pump(&client, &mut notes, handshake.take()).await;
            // Requests wait from here until the next socket is ready.
            let mut was_ready = false;
            self.inner.link.send_if_modified(|l| match l {
                Link::Ready(c) if c.same(&client) => {
                    was_ready = true;
                    *l = Link::Connecting;
                    true
                }
                _ => false,
            });
            let close_reason = match end {
                End::Shutdown => {
                    if !client.is_closed() {
                        client.close().await;
                        let _ =
                            tokio::time::timeout(self.inner.opts.close_timeout, client.closed())
                                .await;
                    }
                    client.abort();
                    let (code, reason) = self
                        .inner
                        .closed_with()
                        .unwrap_or((close::NORMAL, "closed by the client".into()));
                    return self.finish(code, reason).await;
                }
                // What the socket's close frame says, else what its hello reply announced.
                End::Lost(announced) => client.close_reason().or(announced),
            };
            client.abort();
            let code = close_reason.as_ref().map(|(c, _)| *c);
            let provider = self.inner.tokens.has_provider();
            let refused_before = self.inner.refused.load(Ordering::Relaxed);
            let (floor, first_attempt) = match backoff::next(code, provider, refused_before) {
                Next::Final => {
                    let (code, reason) = close_reason.expect("only a close code is final");
                    self.inner.close_link(code, &reason);
                    return self.finish(code, reason).await;
                }
                Next::Reconnect {
                    floor,
                    first_attempt,
                    fresh_token,
                } => {
                    if fresh_token {
                        tracing::debug!("token refused (1008): asking the provider for another");
                        self.inner.refused.store(true, Ordering::Relaxed);
                        self.inner.tokens.invalidate().await;
                    }
                    (floor, first_attempt)
                }
            };
            if was_ready {
                attempt = 0;
                let (code, reason) = match close_reason {
                    Some((code, reason)) => (Some(code), reason),
                    None => (None, "connection lost".to_owned()),
                };
                tracing::debug!(?code, reason, "session socket lost; reconnecting");
                self.emit(SessionEvent::Disconnected { code, reason }).await;
            }
            if first_attempt {
                attempt = 0;
            }
            let Some(next) = self.reconnect(&mut attempt, floor).await else {
                let (code, reason) = self
                    .inner
                    .closed_with()
                    .unwrap_or((close::NORMAL, "closed by the client".into()));
                return self.finish(code, reason).await;
            };
            handshake = Some(Box::pin(handshake_on(
                self.inner.clone(),
                next.0.clone(),
                self.events.clone(),
            )));
            live = next;
        }
    }

    /// Connects to the next URL in rotation after a jittered backoff (the first delay raised
    /// by `floor`), until one answers; `None` when the session was closed meanwhile.
    async fn reconnect(
        &mut self,
        attempt: &mut u32,
        mut floor: Duration,
    ) -> Option<(Client, Notifications)> {
        let opts = &self.inner.opts;
        let mut link = self.inner.link.subscribe();
        loop {
            let delay = backoff::floored(floor, *attempt, opts.backoff_min, opts.backoff_max);
            floor = Duration::ZERO;
            *attempt = attempt.saturating_add(1);
            let closed = async {
                let _ = link.wait_for(|l| matches!(l, Link::Closed(..))).await;
            };
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = closed => return None,
            }
            self.url_index = (self.url_index + 1) % opts.urls.len();
            let url = &opts.urls[self.url_index];
            match Client::connect_routed(url, &opts.connect, Some(self.inner.router.clone())).await
            {
                Ok(c) => return Some(c),
                Err(e) => tracing::debug!(url, attempt = *attempt, error = %e, "reconnect failed"),
            }
        }
    }

    /// Delivers the socket's notifications while the handshake (if any) runs, until the
    /// socket ends, goes stale, or the session is closed.
    async fn pump(
        &self,
        client: &Client,
        notes: &mut Notifications,
        mut handshake: Option<Handshake>,
    ) -> End {
        let mut link = self.inner.link.subscribe();
        if matches!(&*link.borrow_and_update(), Link::Closed(..)) {
            // Closed while this socket was being opened.
            return End::Shutdown;
        }
        // Looked at often enough for the shortest heartbeat in use; the limit is read at each
        // look, since a handshake brings the new node's heartbeat.
        let heartbeat = self.inner.state().heartbeat;
        let mut tick = tokio::time::interval(
            (heartbeat / 4).clamp(Duration::from_millis(10), Duration::from_millis(250)),
        );
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                note = notes.recv() => match note {
                    Some(n) => self.deliver(n).await,
                    None => return End::Lost(None),
                },
                step = async { handshake.as_mut().expect("guarded by the condition").await },
                    if handshake.is_some() =>
                {
                    handshake = None;
                    match step {
                        Ok(()) => {}
                        Err(Stop::Retry(announced)) => return End::Lost(announced),
                    }
                }
                _ = link.changed() => {
                    if matches!(&*link.borrow_and_update(), Link::Closed(..)) {
                        return End::Shutdown;
                    }
                }
                _ = tick.tick(), if handshake.is_none() => {
                    if self.silent_too_long(client) {
                        tracing::debug!(idle = ?client.idle(), "session socket went silent");
                        return End::Lost(None);
                    }
                }
            }
        }
    }

    /// Whether the socket has received nothing for `stale_heartbeats` of the node's
    /// heartbeats (never, with either at zero).
    fn silent_too_long(&self, client: &Client) -> bool {
        let heartbeat = self.inner.state().heartbeat;
        let n = self.inner.opts.stale_heartbeats;
        n > 0 && !heartbeat.is_zero() && client.idle() > heartbeat.saturating_mul(n)
    }

    async fn deliver(&self, n: Notification) {
        let event = match n.event() {
            Some(e) => {
                let admitted = self.inner.state().tracker.admit(&e.topic, e.id.as_deref());
                if !admitted {
                    return;
                }
                SessionEvent::Event(e)
            }
            None => SessionEvent::Notification(n),
        };
        self.emit(event).await;
    }

    async fn emit(&self, event: SessionEvent) {
        // An app that dropped its events receiver still has a working session.
        let _ = self.events.send(event).await;
    }

    async fn finish(self, code: u16, reason: String) {
        tracing::debug!(code, reason, "session closed");
        let (c, r) = (code, reason.clone());
        self.inner
            .router
            .fail_all(|| ClientError::Closed(Some((c, r.clone()))));
        self.emit(SessionEvent::Closed { code, reason }).await;
    }
}

/// A new socket's `hello` and the restore that follows: resume the session (or open a new one
/// and fail the calls that were in flight), make the link ready, and bring the subscriptions
/// back to what the app wants.
async fn handshake_on(
    inner: Arc<Inner>,
    client: Client,
    events: mpsc::Sender<SessionEvent>,
) -> Result<(), Stop> {
    let opts = &inner.opts;
    let token = match inner.tokens.for_connect().await {
        Ok(t) => t,
        Err(e) => return Err(retry(e)),
    };
    let (session, positions) = {
        let st = inner.state();
        (st.session.clone(), st.tracker.positions())
    };
    let hello = |params: HelloParams| {
        let client = client.clone();
        async move {
            match tokio::time::timeout(opts.hello_timeout, client.hello(params)).await {
                Ok(r) => r,
                Err(_) => Err(ClientError::Timeout),
            }
        }
    };
    let result = match hello(hello_params(opts, token.clone(), Some(session), positions)).await {
        Ok(r) => r,
        // The session belongs to another identity (the socket stays open): start afresh. A bad
        // token fails again, and the socket closes with 1008.
        Err(ClientError::Rpc(e)) if e.kind() == Some(ErrorCode::Unauthorized) => {
            match hello(hello_params(opts, token, None, Default::default())).await {
                Ok(r) => r,
                Err(e) => return Err(retry(e)),
            }
        }
        Err(e) => return Err(retry(e)),
    };
    // A hello succeeded: a later 1008 gets a fresh token again.
    inner.refused.store(false, Ordering::Relaxed);
    let resumed = result.resumed;
    let node = result.node.clone();
    let (subscribe, unsubscribe, not_recovered) = restore_plan(&inner, result);
    // Requests may use the socket from here; a subscribe racing the restore is harmless (the
    // gateway answers the second one for a topic as a no-op).
    let ready = inner.link.send_if_modified(|l| {
        if matches!(l, Link::Closed(..)) {
            return false;
        }
        *l = Link::Ready(client.clone());
        true
    });
    if !ready {
        return Ok(());
    }
    inner.reconnections.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(node, resumed, "session reconnected");
    let emit = |e: SessionEvent| {
        let events = events.clone();
        async move {
            let _ = events.send(e).await;
        }
    };
    emit(SessionEvent::Reconnected { node, resumed }).await;
    for topic in &not_recovered {
        emit(SessionEvent::NotRecovered {
            topic: topic.clone(),
        })
        .await;
    }
    for (topic, since) in subscribe {
        if !inner.state().tracker.wants(&topic) {
            continue;
        }
        match client.subscribe_since(&topic, since.as_deref()).await {
            Ok(r) => {
                let wanted = {
                    let mut st = inner.state();
                    st.tracker.confirm(&topic, r.position.as_deref());
                    st.tracker.wants(&topic)
                };
                if !wanted {
                    // Unsubscribed by the app while this subscribe was on its way.
                    let _ = client.unsubscribe(&topic).await;
                    continue;
                }
                if r.recovered == Some(false) && !not_recovered.contains(&topic) {
                    emit(SessionEvent::NotRecovered { topic }).await;
                }
            }
            Err(ClientError::Rpc(e)) if e.kind() == Some(ErrorCode::Internal) => {
                tracing::debug!(topic, "backend unavailable during restore; reconnecting");
                return Err(Stop::Retry(None));
            }
            Err(ClientError::Rpc(e)) => {
                tracing::warn!(topic, error = %e, "could not restore a subscription");
            }
            // The socket is gone: the pump sees it end.
            Err(_) => return Ok(()),
        }
    }
    for topic in unsubscribe {
        if inner.state().tracker.wants(&topic) {
            continue;
        }
        if let Err(e) = client.unsubscribe(&topic).await {
            tracing::debug!(topic, error = %e, "could not drop a restored subscription");
        }
    }
    Ok(())
}

/// Keeps the token of a session with a token provider fresh: at the cached token's refresh
/// time, asks the provider for a new one and sends `refresh {token}` on the live socket (a
/// socket opened meanwhile said `hello` with the new one already). A refused refresh is tried
/// once more after [`REFRESH_RETRY`]; after that, it waits for the next token the provider
/// gives (a reconnect after the gateway's 1008). Ends with the session.
async fn refresher(inner: Arc<Inner>, events: mpsc::Sender<SessionEvent>) {
    let mut link = inner.link.subscribe();
    let mut epoch = inner.tokens.epoch();
    let closed = |l: &Link| matches!(l, Link::Closed(..));
    // Refreshes are at least this far apart (a provider handing out tokens that are already
    // within their margin must not make a busy loop).
    let mut not_before = tokio::time::Instant::now();
    loop {
        epoch.borrow_and_update();
        let wait = match inner.tokens.refresh_at_ms().await {
            Some(at) => Duration::from_millis(at.saturating_sub(now_ms()))
                .max(not_before.saturating_duration_since(tokio::time::Instant::now())),
            // No exp: nothing to refresh until another token comes.
            None => Duration::MAX,
        };
        tokio::select! {
            _ = tokio::time::sleep(wait.min(Duration::from_secs(86_400 * 365))) => {}
            changed = epoch.changed() => {
                if changed.is_err() {
                    return;
                }
                // A new token (a reconnect asked for one): schedule from it.
                continue;
            }
            _ = link.wait_for(closed) => return,
        }
        let refreshed = refresh_once(&inner, &events).await;
        not_before = tokio::time::Instant::now() + REFRESH_RETRY;
        // The tokens it asked for are not news.
        epoch.borrow_and_update();
        if matches!(&*inner.link.borrow(), Link::Closed(..)) {
            return;
        }
        if !refreshed {
            // Wait for the next token from the provider (a reconnect will ask for one).
            tokio::select! {
                changed = epoch.changed() => if changed.is_err() { return },
                _ = link.wait_for(closed) => return,
            }
        }
    }
}

/// One refresh, retried once if refused; whether the socket took a new token.
async fn refresh_once(inner: &Inner, events: &mpsc::Sender<SessionEvent>) -> bool {
    use switchboard_protocol::methods::session::{Refresh, RefreshParams};
    for round in 0..2 {
        if round > 0 {
            tokio::time::sleep(REFRESH_RETRY).await;
        }
        let client = match inner.ready(None).await {
            Ok(c) => c,
            Err(_) => return false,
        };
        let token = match inner.tokens.renew().await {
            Some(Ok(t)) => t,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "token refresh: the provider failed");
                continue;
            }
            None => return false,
        };
        let params = RefreshParams { token };
        let request = client.method::<Refresh>(&params);
        match tokio::time::timeout(inner.opts.request_timeout, request).await {
            Ok(Ok(result)) => {
                tracing::debug!(expires_at = ?result.expires_at, "token refreshed");
                for topic in result.revoked {
                    inner.state().tracker.forget(&topic);
                    let _ = events.send(SessionEvent::Revoked { topic }).await;
                }
                return true;
            }
            Ok(Err(ClientError::Rpc(e))) => {
                tracing::warn!(error = %e, round, "token refresh refused");
            }
            // The socket went: the reconnect says hello with the new token.
            Ok(Err(_)) => return true,
            Err(_) => tracing::warn!(round, "token refresh: no reply in time"),
        }
    }
    false
}

fn retry(e: ClientError) -> Stop {
    tracing::debug!(error = %e, "hello failed; reconnecting");
    let announced = match &e {
        // The gateway closes next with 1008 (a bad token), or 1013 (backend down, or the
        // identity at its connection cap).
        ClientError::Rpc(rpc) => match rpc.kind() {
            Some(ErrorCode::Unauthorized) => Some(close::POLICY),
            Some(ErrorCode::Internal | ErrorCode::Overloaded) => Some(close::TRY_AGAIN_LATER),
            _ => None,
        }
        .map(|code| (code, rpc.message.clone().into_owned())),
        _ => None,
    };
    Stop::Retry(announced)
}

type RestorePlan = (Vec<(String, Option<String>)>, Vec<String>, Vec<String>);

/// Takes in a `hello` result: the session's new id and node, the restored subscriptions'
/// positions; fails the in-flight calls of a session that was not resumed. Returns the topics
/// to subscribe (with `since`), to unsubscribe, and those not recovered.
fn restore_plan(inner: &Inner, result: HelloResult) -> RestorePlan {
    let mut st = inner.state();
    if !result.resumed {
        // Before the link is ready, so that only calls sent on earlier sockets fail.
        inner.router.fail_all(|| ClientError::SessionLost);
    }
    st.session = result.session;
    st.node = result.node;
    st.heartbeat = Duration::from_millis(result.heartbeat_ms);
    let mut restored = BTreeSet::new();
    let mut unsubscribe = Vec::new();
    let mut not_recovered = Vec::new();
    if result.resumed {
        for s in result.subscriptions {
            if !st.tracker.wants(&s.topic) {
                unsubscribe.push(s.topic);
                continue;
            }
            st.tracker.confirm(&s.topic, s.position.as_deref());
            if s.recovered == Some(false) {
                // Also what a gateway answers for a subscription it could not restore: it is
                // subscribed again below (a no-op where it is in place).
                not_recovered.push(s.topic);
            } else {
                restored.insert(s.topic);
            }
        }
    }
    let subscribe = st
        .tracker
        .topics()
        .into_iter()
        .filter(|t| !restored.contains(t))
        .map(|t| {
            let since = st.tracker.since(&t);
            (t, since)
        })
        .collect();
    (subscribe, unsubscribe, not_recovered)
}
