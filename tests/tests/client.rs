//! The client's reconnecting session (`switchboard_client::Session`) against real gateways:
//! events deduplicated by id; a session that could not be resumed re-subscribes from the last
//! event the app has, so every history event arrives exactly once, in order, and calls in flight
//! fail with `SessionLost`; a resumed session keeps its subscriptions (following what the app
//! changed while it was away) and gets the reply of a call that was in flight; reconnects
//! rotate through the URLs; a silent socket is dropped; 4009, 1008 and `close` are final.
//!
//! Single-node cases run on both backends; those with several nodes run on Redis (a memory
//! backend feeds one node only), each in-process node with a backend instance of its own.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::{Value, json};
use switchboard_client::{ClientError, Session, SessionEvent, SessionEvents, SessionOptions};
use switchboard_core::access::TopicRule;
use switchboard_core::auth;
use switchboard_core::backend::{Backend, JobQueue};
use switchboard_core::history::HistoryRule;
use switchboard_gateway::GatewayConfig;
use switchboard_harness::{
    DEADLINE, GatewayProcess, Kind, RedisServer, TestBackend, WsClient, eventually, every_backend,
    http_get, metric, redis_backend,
};
use switchboard_protocol::Topic;
use switchboard_worker::tools::builtin::add_builtins;
use switchboard_worker::{Toolbox, WorkerConfig};
use tokio::net::TcpSocket;

// ---------------------------------------------------------------------------------------------
// Helpers

/// An in-process gateway on a chosen address (so that a URL can point at a node that is not
/// up yet), stopped like a real one (drain, 1012).
struct Node {
    addr: SocketAddr,
    admin_addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Node {
    async fn start(config: GatewayConfig, backend: Backend) -> Node {
        Self::start_at(Reserved::new(), config, backend).await
    }

    async fn start_at(reserved: Reserved, config: GatewayConfig, backend: Backend) -> Node {
        let addr = reserved.addr;
        let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin_addr = admin.local_addr().unwrap();
        drop(reserved.socket);
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket.bind(addr).expect("bind the reserved port");
        let listener = socket.listen(1024).unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            switchboard_gateway::run_with_admin(config, listener, Some(admin), backend, async {
                let _ = rx.await;
            })
            .await
            .expect("gateway run");
        });
        eventually("gateway ready", || async move {
            matches!(http_get(addr, "/readyz").await, Ok((200, _))).then_some(())
        })
        .await;
        Node {
            addr,
            admin_addr,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(DEADLINE, task)
                .await
                .expect("gateway did not stop in time")
                .expect("gateway task panicked");
        }
    }
}

/// A loopback port bound but not listening: connecting to it is refused, and nothing else
/// (not even an outgoing connection's ephemeral port) takes it until a node starts there.
struct Reserved {
    addr: SocketAddr,
    socket: TcpSocket,
}

impl Reserved {
    fn new() -> Reserved {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket.bind(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        let addr = socket.local_addr().unwrap();
        Reserved { addr, socket }
    }
}

fn url(addr: SocketAddr) -> String {
    format!("ws://{addr}/ws")
}

fn config(node: &str) -> GatewayConfig {
    let mut c = GatewayConfig::dev(node);
    c.tuning.readiness_interval = Duration::from_millis(100);
    c.tuning.registry_interval = Duration::from_millis(100);
    c.tuning.session_refresh = Duration::from_millis(100);
    c.tuning.drain_spread = Duration::from_millis(50);
    c.tuning.history = vec![HistoryRule::parse("h:*=1000").unwrap()];
    c
}

/// Session options for tests: short backoff, so that reconnects happen within the deadline.
fn options(urls: &[String]) -> SessionOptions {
    let mut o = SessionOptions::new(urls.iter().cloned());
    o.backoff_max = Duration::from_millis(300);
    o
}

async fn next(events: &mut SessionEvents) -> SessionEvent {
    tokio::time::timeout(DEADLINE, events.recv())
        .await
        .expect("no session event in time")
        .expect("the session's events ended")
}

/// Reads events until `done` says the collected log is complete; the log keeps every
/// session event, events as `topic=data`, the rest as their debug form.
async fn read_until(
    events: &mut SessionEvents,
    log: &mut Vec<String>,
    done: impl Fn(&[String]) -> bool,
) {
    while !done(log) {
        let event = match tokio::time::timeout(DEADLINE, events.recv()).await {
            Ok(Some(e)) => e,
            Ok(None) => panic!("the session's events ended; so far: {log:?}"),
            Err(_) => panic!("the expected events did not come; so far: {log:?}"),
        };
        log.push(match event {
            SessionEvent::Event(e) => format!("{}={}", e.topic, e.data),
            other => format!("{other:?}"),
        });
    }
}

fn has(log: &[String], entry: &str) -> bool {
    log.iter().any(|l| l == entry)
}

fn data_of(log: &[String], topic: &str) -> Vec<String> {
    let prefix = format!("{topic}=");
    log.iter()
        .filter_map(|l| l.strip_prefix(&prefix).map(str::to_owned))
        .collect()
}

fn numbers(range: std::ops::Range<u32>) -> Vec<String> {
    range.map(|n| n.to_string()).collect()
}

async fn publisher(addr: SocketAddr) -> WsClient {
    let mut p = WsClient::connect(&url(addr)).await;
    p.hello().await;
    p
}

async fn publish(p: &mut WsClient, topic: &str, data: Value) {
    let r = p
        .call("publish", json!({"topic": topic, "data": data}))
        .await;
    assert!(r["result"].is_object(), "publish failed: {r}");
}

fn worker(queue: Arc<dyn JobQueue>) {
    let mut toolbox = Toolbox::new();
    add_builtins(&mut toolbox).unwrap();
    let mut wc = WorkerConfig::new("w1");
    wc.heartbeat = Duration::from_millis(100);
    tokio::spawn(switchboard_worker::run(
        wc,
        queue,
        toolbox,
        std::future::pending(),
    ));
}

// ---------------------------------------------------------------------------------------------
// Tests

every_backend!(events_are_deduplicated_by_id, takeover_is_final);

/// Events with ids the app already has are dropped, per topic; events without id pass.
async fn events_are_deduplicated_by_id(kind: Kind) {
    let b = TestBackend::start(kind).await;
    let gw = Node::start(config("gw"), b.backend.clone()).await;
    let (session, mut events) = Session::connect(options(&[url(gw.addr)])).await.unwrap();
    // Topics without a history rule: the gateway passes ids through as any backend wrote them
    // (`#<id> <json>`), with no per-subscriber check of its own.
    session.subscribe("d:a").await.unwrap();
    session.subscribe("d:b").await.unwrap();
    let a = Topic::new("d:a").unwrap();
    let b2 = Topic::new("d:b").unwrap();
    for (topic, payload) in [
        (&a, r#"#5-0 "a1""#),
        (&a, r#"#6-0 "a2""#),
        (&a, r#"#6-0 "a2 again""#),
        (&a, r#"#5-9 "older""#),
        (&b2, r#"#1-0 "b1""#), // another topic: its own sequence
        (&a, r#""no id""#),
        (&a, r#"#6-1 "a3""#),
    ] {
        b.backend.topics.publish(topic, payload).await.unwrap();
    }
    // Topics may interleave; each keeps its order.
    let mut log = Vec::new();
    read_until(&mut events, &mut log, |l| {
        has(l, r#"d:a="a3""#) && has(l, r#"d:b="b1""#)
    })
    .await;
    assert_eq!(
        data_of(&log, "d:a"),
        vec![r#""a1""#, r#""a2""#, r#""no id""#, r#""a3""#],
        "{log:?}"
    );
    assert_eq!(data_of(&log, "d:b"), vec![r#""b1""#], "{log:?}");
    session.close().await;
}

/// The session expires while no node is reachable: the new session re-subscribes every topic
/// with `since`, so each history event arrives exactly once and in order; a topic without
/// history is reported as not recovered; what the app changed meanwhile is honoured; the node
/// it comes back on is the next URL. A call in flight fails with `SessionLost`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_session_resubscribes_from_the_last_event() {
    let redis = RedisServer::start().await;
    worker(redis_backend(&redis));
    let short_ttl = |node| {
        let mut c = config(node);
        c.tuning.session_ttl = Duration::from_millis(300);
        c
    };
    let mut a = Node::start(short_ttl("gw-a"), redis_backend(&redis).backend()).await;
    let p_node = Node::start(short_ttl("gw-p"), redis_backend(&redis).backend()).await;
    let b_port = Reserved::new();
    let b_addr = b_port.addr;
    let (session, mut events) = Session::connect(options(&[url(a.addr), url(b_addr)]))
        .await
        .unwrap();
    assert_eq!(session.node(), "gw-a");
    let first_session = session.session_id();
    for topic in ["h:x", "h:empty", "plain:keep", "plain:drop"] {
        session.subscribe(topic).await.unwrap();
    }
    let mut p = publisher(p_node.addr).await;
    publisher(a.addr).await.wait_for_tool("sleep").await;
    for n in 0..10 {
        publish(&mut p, "h:x", json!(n)).await;
    }
    let mut log = Vec::new();
    read_until(&mut events, &mut log, |l| has(l, "h:x=9")).await;

    // A call in flight when the node goes (it finishes after the session expired).
    let caller = session.clone();
    let call = tokio::spawn(async move { caller.call("sleep", json!({"ms": 1500})).await });
    // In flight: node a has submitted it and stored the reply it owes in the session.
    redis.wait_for_owed_reply(&first_session).await;
    a.stop().await;
    read_until(&mut events, &mut log, |l| {
        l.iter().any(|e| e.starts_with("Disconnected"))
    })
    .await;
    assert!(
        log.iter()
            .any(|e| e.starts_with("Disconnected { code: Some(1012)")),
        "a draining node closes with 1012: {log:?}"
    );

    // Nothing is up for the session: it retries, and the stored session expires.
    for n in 10..20 {
        publish(&mut p, "h:x", json!(n)).await;
    }
    publish(&mut p, "h:empty", json!("gap")).await;
    session.unsubscribe("plain:drop").await.unwrap();
    let late = {
        let s = session.clone();
        tokio::spawn(async move { s.subscribe("h:late").await })
    };
    redis.wait_for_session_gone(&first_session).await;
    let _b = Node::start_at(b_port, short_ttl("gw-b"), redis_backend(&redis).backend()).await;

    read_until(&mut events, &mut log, |l| {
        l.iter().any(|e| e.starts_with("Reconnected"))
    })
    .await;
    assert!(
        has(&log, r#"Reconnected { node: "gw-b", resumed: false }"#),
        "{log:?}"
    );
    match tokio::time::timeout(DEADLINE, call).await.unwrap().unwrap() {
        Err(ClientError::SessionLost) => {}
        other => panic!("a call in flight on a lost session: {other:?}"),
    }
    late.await
        .unwrap()
        .expect("a subscribe made while away completes on the new socket");
    assert_ne!(session.session_id(), first_session);
    assert_eq!(session.node(), "gw-b");
    assert_eq!(session.reconnections(), 1);
    assert_eq!(
        session.topics(),
        vec!["h:empty", "h:late", "h:x", "plain:keep"]
    );

    for n in 20..30 {
        publish(&mut p, "h:x", json!(n)).await;
    }
    publish(&mut p, "plain:drop", json!("unwanted")).await;
    publish(&mut p, "h:late", json!("late")).await;
    publish(&mut p, "plain:keep", json!("kept")).await;
    read_until(&mut events, &mut log, |l| {
        has(l, "h:x=29") && has(l, "plain:keep=\"kept\"") && has(l, "h:late=\"late\"")
    })
    .await;
    assert_eq!(data_of(&log, "h:x"), numbers(0..30), "{log:?}");
    assert_eq!(data_of(&log, "h:empty"), vec!["\"gap\""], "{log:?}");
    assert!(data_of(&log, "plain:drop").is_empty(), "{log:?}");
    let not_recovered: Vec<&String> = log
        .iter()
        .filter(|e| e.starts_with("NotRecovered"))
        .collect();
    assert_eq!(
        not_recovered,
        vec![r#"NotRecovered { topic: "plain:keep" }"#],
        "only the topic without history may have missed events: {log:?}"
    );
    session.close().await;
}

/// The node goes and the next URL's node resumes the session: the subscriptions are restored
/// (minus one the app dropped while away, plus one it added), the gap is replayed from the
/// app's positions with nothing twice, and the reply of a call that was in flight arrives on
/// the new socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_session_keeps_its_call_and_its_topics() {
    let redis = RedisServer::start().await;
    worker(redis_backend(&redis));
    let mut a = Node::start(config("gw-a"), redis_backend(&redis).backend()).await;
    let p_node = Node::start(config("gw-p"), redis_backend(&redis).backend()).await;
    let b_port = Reserved::new();
    let b_addr = b_port.addr;
    let (session, mut events) = Session::connect(options(&[url(a.addr), url(b_addr)]))
        .await
        .unwrap();
    let first_session = session.session_id();
    for topic in ["h:x", "h:drop"] {
        session.subscribe(topic).await.unwrap();
    }
    let mut p = publisher(p_node.addr).await;
    publisher(a.addr).await.wait_for_tool("sleep").await;
    for n in 0..5 {
        publish(&mut p, "h:x", json!(n)).await;
    }
    let mut log = Vec::new();
    read_until(&mut events, &mut log, |l| has(l, "h:x=4")).await;

    let caller = session.clone();
    let call = tokio::spawn(async move { caller.call("sleep", json!({"ms": 1500})).await });
    // The owed reply is stored with the call.
    redis.wait_for_owed_reply(&first_session).await;
    a.stop().await;
    read_until(&mut events, &mut log, |l| {
        l.iter().any(|e| e.starts_with("Disconnected"))
    })
    .await;
    for n in 5..10 {
        publish(&mut p, "h:x", json!(n)).await;
    }
    session.unsubscribe("h:drop").await.unwrap();
    let late = {
        let s = session.clone();
        tokio::spawn(async move { s.subscribe("h:late").await })
    };
    let b = Node::start_at(b_port, config("gw-b"), redis_backend(&redis).backend()).await;
    let b_admin = b.admin_addr;
    read_until(&mut events, &mut log, |l| {
        l.iter().any(|e| e.starts_with("Reconnected"))
    })
    .await;
    assert!(
        has(&log, r#"Reconnected { node: "gw-b", resumed: true }"#),
        "{log:?}"
    );
    assert_eq!(session.session_id(), first_session);
    let reply = tokio::time::timeout(DEADLINE, call)
        .await
        .unwrap()
        .unwrap()
        .expect("the call's reply after the resume");
    assert!(!reply.is_error, "{reply:?}");
    let meta = reply.meta.as_ref().expect("a call's result carries _meta");
    assert!(meta["switchboard/taskId"].is_string(), "{reply:?}");
    late.await.unwrap().unwrap();

    for n in 10..15 {
        publish(&mut p, "h:x", json!(n)).await;
    }
    publish(&mut p, "h:drop", json!("unwanted")).await;
    publish(&mut p, "h:late", json!("late")).await;
    read_until(&mut events, &mut log, |l| {
        has(l, "h:x=14") && has(l, "h:late=\"late\"")
    })
    .await;
    assert_eq!(data_of(&log, "h:x"), numbers(0..15), "{log:?}");
    assert!(data_of(&log, "h:drop").is_empty(), "{log:?}");
    assert!(
        !log.iter().any(|e| e.starts_with("NotRecovered")),
        "{log:?}"
    );
    assert_eq!(session.reconnections(), 1);
    // The resume restored h:drop on node b; the session unsubscribed it there, so b holds
    // h:x and h:late only (the publisher is on another node).
    eventually("node b to hold only the wanted topics", || async move {
        (metric(b_admin, "switchboard_backend_subscriptions").await == 2.0).then_some(())
    })
    .await;
}

/// How long a session closed with 4009 is watched for a reconnect that must not come: an
/// absence can only be shown by waiting. The test's backoff tops out at 300 ms
/// ([`options`]), so a session that did reconnect would have tried within this time.
const STAYS_AWAY: Duration = Duration::from_millis(500);

/// Another connection taking the session over (4009) ends it: no reconnect.
async fn takeover_is_final(kind: Kind) {
    let tb = TestBackend::start(kind).await;
    let gw = Node::start(config("gw"), tb.backend.clone()).await;
    let (session, mut events) = Session::connect(options(&[url(gw.addr)])).await.unwrap();
    session.subscribe("h:t").await.unwrap();
    let mut thief = WsClient::connect(&url(gw.addr)).await;
    let r = thief
        .call("hello", json!({"session": session.session_id()}))
        .await;
    assert_eq!(r["result"]["resumed"], true, "{r}");
    match next(&mut events).await {
        SessionEvent::Closed { code: 4009, .. } => {}
        other => panic!("expected the final 4009, got {other:?}"),
    }
    assert!(events.recv().await.is_none(), "nothing after Closed");
    match session.publish("h:t", &json!(1)).await {
        Err(ClientError::Closed(Some((4009, _)))) => {}
        other => panic!("{other:?}"),
    }
    // It stays away: the thief keeps the session (a reconnect would take it back: 4009 on the
    // thief's socket).
    let quiet = tokio::time::timeout(STAYS_AWAY, thief.read()).await;
    assert!(
        quiet.is_err(),
        "the thief's socket was disturbed: {quiet:?}"
    );
    assert_eq!(session.reconnections(), 0);
    let r = thief.call("ping", json!({})).await;
    assert!(r["result"].is_object(), "{r}");
}

const SECRET: &[u8] = b"client-secret";

/// An expiring token ends the session with 1008 (reconnecting with it cannot work); a bad one
/// fails the first connect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_or_expired_token_is_final() {
    let tb = TestBackend::start(Kind::Memory).await;
    let mut c = config("gw");
    c.auth.jwt_secrets = vec![String::from_utf8_lossy(SECRET).into_owned()];
    c.auth.allow_anonymous = false;
    c.access.allow = vec![TopicRule::parse("h:*=sub,pub").unwrap()];
    let gw = Node::start(c, tb.backend.clone()).await;

    let mut opts = options(&[url(gw.addr)]);
    opts.token = Some("not-a-token".into());
    match Session::connect(opts.clone()).await {
        Err(ClientError::Rpc(e)) => assert_eq!(e.code, -32001),
        other => panic!("{other:?}"),
    }

    opts.token = Some(auth::mint(SECRET, "alice", Some(Duration::from_secs(1))).unwrap());
    let (session, mut events) = Session::connect(opts).await.unwrap();
    session.subscribe("h:t").await.unwrap();
    let started = tokio::time::Instant::now();
    match next(&mut events).await {
        SessionEvent::Closed { code: 1008, .. } => {}
        other => panic!("expected the final 1008, got {other:?}"),
    }
    // At `exp` plus the gateway's 5 s leeway.
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(events.recv().await.is_none());
    assert_eq!(session.reconnections(), 0);
    assert!(matches!(
        session.subscribe("h:u").await,
        Err(ClientError::Closed(Some((1008, _))))
    ));
}

/// The first connect skips a URL nothing answers on; with none answering it fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_connect_tries_each_url() {
    let tb = TestBackend::start(Kind::Memory).await;
    let gw = Node::start(config("gw-live"), tb.backend.clone()).await;
    let dead_port = Reserved::new();
    let dead = url(dead_port.addr);
    let (session, _events) = Session::connect(options(&[dead.clone(), url(gw.addr)]))
        .await
        .unwrap();
    assert_eq!(session.node(), "gw-live");
    assert!(matches!(
        Session::connect(options(std::slice::from_ref(&dead))).await,
        Err(ClientError::Connect(_))
    ));
    assert!(matches!(
        Session::connect(options(&[])).await,
        Err(ClientError::Options(_))
    ));
}

/// `close` ends the session: the socket closes, `Closed { 1000 }`, requests fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_is_final() {
    let tb = TestBackend::start(Kind::Memory).await;
    let gw = Node::start(config("gw"), tb.backend.clone()).await;
    let (session, mut events) = Session::connect(options(&[url(gw.addr)])).await.unwrap();
    session.subscribe("h:c").await.unwrap();
    session.close().await;
    match next(&mut events).await {
        SessionEvent::Closed { code: 1000, .. } => {}
        other => panic!("{other:?}"),
    }
    assert!(events.recv().await.is_none());
    assert!(matches!(
        session.publish("h:c", &json!(1)).await,
        Err(ClientError::Closed(Some((1000, _))))
    ));
    assert!(matches!(
        session.call("echo", json!({})).await,
        Err(ClientError::Closed(Some((1000, _))))
    ));
}

/// A node that stops answering without closing anything (SIGSTOP) is noticed within a few
/// heartbeats; the session resumes on the next node and its events continue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_socket_is_dropped_and_the_session_resumed_elsewhere() {
    let redis = RedisServer::start().await;
    let flags = ["--heartbeat", "200ms", "--history", "h:*=1000"];
    let a = GatewayProcess::start(&redis.url(), "node-a", &flags).await;
    let b = GatewayProcess::start(&redis.url(), "node-b", &flags).await;
    let (session, mut events) = Session::connect(options(&[a.ws_url(), b.ws_url()]))
        .await
        .unwrap();
    session.subscribe("h:s").await.unwrap();
    // A fresh publisher each time: a raw peer that does not read misses the 200 ms heartbeats.
    publish(&mut publisher(b.addr).await, "h:s", json!(0)).await;
    let mut log = Vec::new();
    read_until(&mut events, &mut log, |l| has(l, "h:s=0")).await;

    a.signal(Signal::SIGSTOP);
    let started = tokio::time::Instant::now();
    read_until(&mut events, &mut log, |l| {
        l.iter().any(|e| e.starts_with("Reconnected"))
    })
    .await;
    let noticed = started.elapsed();
    a.signal(Signal::SIGCONT);
    assert!(
        has(
            &log,
            r#"Disconnected { code: None, reason: "connection lost" }"#
        ),
        "{log:?}"
    );
    assert!(
        has(&log, r#"Reconnected { node: "node-b", resumed: true }"#),
        "{log:?}"
    );
    assert!(noticed < Duration::from_secs(5), "took {noticed:?}");
    publish(&mut publisher(b.addr).await, "h:s", json!(1)).await;
    read_until(&mut events, &mut log, |l| has(l, "h:s=1")).await;
    assert_eq!(data_of(&log, "h:s"), numbers(0..2), "{log:?}");
}
