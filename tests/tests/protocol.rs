//! The wire protocol (PROTOCOL.md sections 1-4 and 6), against both backends: every case runs
//! once on the in-memory backend and once on a real Redis, through an in-process gateway on an
//! ephemeral port, with an independent WebSocket implementation as the client.

use std::time::Duration;

use serde_json::{Value, json};
use switchboard_core::auth;
use switchboard_gateway::GatewayConfig;
use switchboard_harness::{
    InProcessGateway, Kind, Read, Store, TestBackend, WsClient, both_backends, every_backend,
    http_get,
};
use switchboard_memory::MemoryBackend;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};

struct Setup {
    gw: InProcessGateway,
    _store: Store,
}

async fn setup(kind: Kind, tweak: impl FnOnce(&mut GatewayConfig)) -> Setup {
    let mut config = GatewayConfig::dev("test-node");
    config.tuning.readiness_interval = Duration::from_millis(100);
    tweak(&mut config);
    let b = TestBackend::start(kind).await;
    let gw = InProcessGateway::start_ready(config, b.backend).await;
    Setup {
        gw,
        _store: b.store,
    }
}

// Sessions and topics: what a cluster spreads over its shards.
every_backend!(
    hello_and_ping,
    subscribe_publish_unsubscribe,
    publisher_receives_own_event_once,
);

// The protocol's framing and limits, the same whatever Redis is.
both_backends!(
    requests_before_hello_are_unauthorized,
    malformed_requests_get_protocol_errors,
    binary_frame_closes_1003_and_spares_others,
    malformed_frames_close_1002_or_1007,
    oversized_messages_close_1009,
    fragmented_messages_are_reassembled,
    tokens_are_checked,
    slow_consumer_is_closed_4008_and_spares_others,
    shutdown_closes_sockets_with_1012,
);

fn error_code(reply: &Value) -> i64 {
    reply["error"]["code"]
        .as_i64()
        .unwrap_or_else(|| panic!("expected an error, got {reply}"))
}

async fn hello_and_ping(kind: Kind) {
    let s = setup(kind, |_| {}).await;
    let mut c = WsClient::connect(&s.gw.ws_url()).await;
    let r = c.hello().await;
    let res = &r["result"];
    assert_eq!(res["session"].as_str().unwrap().len(), 32);
    assert_eq!(res["resumed"], false);
    assert_eq!(res["node"], "test-node");
    assert_eq!(res["heartbeatMs"], 25_000);
    assert_eq!(res["limits"]["maxMessageBytes"], 65_536);
    let p = c.call("ping", json!({})).await;
    assert_eq!(p["result"], json!({}));
    // A second hello on the same socket is refused.
    let again = c.call("hello", json!({})).await;
    assert_eq!(error_code(&again), -32600);
}

async fn requests_before_hello_are_unauthorized(kind: Kind) {
    let s = setup(kind, |_| {}).await;
    let mut c = WsClient::connect(&s.gw.ws_url()).await;
    let r = c.call("subscribe", json!({"topic": "a"})).await;
    assert_eq!(error_code(&r), -32001);
    let r = c.call("ping", json!({})).await;
    assert_eq!(error_code(&r), -32001);
    c.hello().await;
    let r = c.call("subscribe", json!({"topic": "a"})).await;
    assert_eq!(r["result"]["topic"], "a");
}

async fn malformed_requests_get_protocol_errors(kind: Kind) {
    let s = setup(kind, |_| {}).await;
    let mut c = WsClient::connect(&s.gw.ws_url()).await;
    c.hello().await;

    c.send_text("{not json").await;
    let r = c.read_json().await;
    assert_eq!(error_code(&r), -32700);
    assert_eq!(r["id"], Value::Null);

    c.send_text(r#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#)
        .await;
    assert_eq!(error_code(&c.read_json().await), -32600);

    c.send_text(r#"{"jsonrpc":"2.0","id":"x","method":"nope"}"#)
        .await;
    let r = c.read_json().await;
    assert_eq!(error_code(&r), -32601);
    assert_eq!(r["id"], "x");

    for params in [
        json!({"topic": "has space"}),
        json!({"topic": ""}),
        json!({"topic": "x".repeat(201)}),
        json!({"topic": "a{b}"}),
        json!({}),
        json!({"topic": 5}),
        json!({"topic": "a", "extra": 1}),
    ] {
        let r = c.call("subscribe", params.clone()).await;
        assert_eq!(error_code(&r), -32602, "{params}");
    }
    let r = c
        .call("publish", json!({"topic": "bad topic", "data": 1}))
        .await;
    assert_eq!(error_code(&r), -32602);
    let r = c.call("publish", json!({"topic": "a"})).await;
    assert_eq!(error_code(&r), -32602);

    // `"id": null` is a request (JSON-RPC 2.0), answered with a null id.
    c.send_text(r#"{"jsonrpc":"2.0","id":null,"method":"ping"}"#)
        .await;
    let r = c.read_json().await;
    assert_eq!(r["id"], Value::Null);
    assert_eq!(r["result"], json!({}));

    // Invalid params quote back only a bounded piece of the input.
    let r = c
        .call("subscribe", json!({"topic": "a", "x".repeat(30_000): 1}))
        .await;
    assert_eq!(error_code(&r), -32602);
    assert!(r["error"]["message"].as_str().unwrap().len() < 200);

    // A notification (no id) gets no reply, not even an error: the next reply is the ping's.
    c.send_text(r#"{"jsonrpc":"2.0","method":"nope"}"#).await;
    let id = c.send_request("ping", json!({})).await;
    let r = c.read_json().await;
    assert_eq!(r["id"], json!(id));
    assert_eq!(r["result"], json!({}));
}

async fn subscribe_publish_unsubscribe(kind: Kind) {
    let s = setup(kind, |_| {}).await;
    let mut sub = WsClient::connect(&s.gw.ws_url()).await;
    let mut publisher = WsClient::connect(&s.gw.ws_url()).await;
    sub.hello().await;
    publisher.hello().await;

    let r = sub.call("subscribe", json!({"topic": "chat:42"})).await;
    assert_eq!(r["result"], json!({"topic": "chat:42"}));
    let data = json!({"text": "hi", "n": [1, 2.5, null], "u": "é✓"});
    let r = publisher
        .call("publish", json!({"topic": "chat:42", "data": data}))
        .await;
    assert!(r["result"].is_object(), "{r}");
    let ev = sub.next_event().await;
    // A client's event carries its publisher (anonymous here).
    assert_eq!(
        ev,
        json!({"topic": "chat:42", "data": data, "from": "anonymous"})
    );

    // Subscribing twice is harmless and does not double deliveries.
    sub.call("subscribe", json!({"topic": "chat:42"})).await;
    publisher
        .call("publish", json!({"topic": "chat:42", "data": 2}))
        .await;
    publisher
        .call("publish", json!({"topic": "chat:42", "data": 3}))
        .await;
    assert_eq!(sub.next_event().await["data"], 2);
    assert_eq!(sub.next_event().await["data"], 3);

    let r = sub.call("unsubscribe", json!({"topic": "chat:42"})).await;
    assert_eq!(r["result"], json!({}));
    publisher
        .call("publish", json!({"topic": "chat:42", "data": "after"}))
        .await;
    sub.call("subscribe", json!({"topic": "other"})).await;
    publisher
        .call("publish", json!({"topic": "other", "data": "marker"}))
        .await;
    // Nothing from chat:42 arrived after the unsubscribe: the next event is the marker.
    assert_eq!(
        sub.next_event().await,
        json!({"topic": "other", "data": "marker", "from": "anonymous"})
    );
}

async fn publisher_receives_own_event_once(kind: Kind) {
    let s = setup(kind, |_| {}).await;
    let mut c = WsClient::connect(&s.gw.ws_url()).await;
    c.hello().await;
    c.call("subscribe", json!({"topic": "self"})).await;
    c.call("publish", json!({"topic": "self", "data": 1})).await;
    c.call("publish", json!({"topic": "self", "data": 2})).await;
    assert_eq!(c.next_event().await["data"], 1);
    assert_eq!(c.next_event().await["data"], 2);
}

async fn binary_frame_closes_1003_and_spares_others(kind: Kind) {
    let s = setup(kind, |_| {}).await;
    let mut good = WsClient::connect(&s.gw.ws_url()).await;
    good.hello().await;
    good.call("subscribe", json!({"topic": "t"})).await;

    let mut bad = WsClient::connect(&s.gw.ws_url()).await;
    bad.hello().await;
    bad.call("subscribe", json!({"topic": "t"})).await;
    bad.send_message(Message::binary(vec![1, 2, 3])).await;
    assert_eq!(bad.read_close().await, 1003);

    let mut publisher = WsClient::connect(&s.gw.ws_url()).await;
    publisher.hello().await;
    publisher
        .call("publish", json!({"topic": "t", "data": "still here"}))
        .await;
    assert_eq!(good.next_event().await["data"], "still here");
}

/// A client frame as bytes: `b0` (FIN, RSV, opcode), masked with `mask` unless it is `None`.
fn raw_frame(b0: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mut v = vec![
        b0,
        payload.len() as u8 | if mask.is_some() { 0x80 } else { 0 },
    ];
    match mask {
        Some(m) => {
            v.extend_from_slice(&m);
            v.extend(payload.iter().enumerate().map(|(i, b)| b ^ m[i % 4]));
        }
        None => v.extend_from_slice(payload),
    }
    v
}

async fn malformed_frames_close_1002_or_1007(kind: Kind) {
    let s = setup(kind, |_| {}).await;
    let mut good = WsClient::connect(&s.gw.ws_url()).await;
    good.hello().await;
    let ping = br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
    let m = Some([3, 1, 4, 1]);
    for (bytes, code) in [
        (raw_frame(0x81, ping, None), 1002),       // unmasked
        (raw_frame(0xC1, ping, m), 1002),          // a reserved bit
        (raw_frame(0x83, b"x", m), 1002),          // an unknown opcode
        (raw_frame(0x09, b"x", m), 1002),          // a fragmented ping
        (raw_frame(0x81, &[0xC3, 0x28], m), 1007), // not UTF-8
    ] {
        let mut bad = WsClient::connect(&s.gw.ws_url()).await;
        bad.hello().await;
        bad.send_raw(&bytes).await;
        assert_eq!(bad.read_close().await, code, "{bytes:?}");
    }
    // A well-formed frame written by hand is read like any other.
    let mut hand = WsClient::connect(&s.gw.ws_url()).await;
    hand.hello().await;
    hand.send_raw(&raw_frame(0x81, ping, m)).await;
    assert!(hand.read_json().await["result"].is_object());
    assert!(good.call("ping", json!({})).await["result"].is_object());
}

async fn oversized_messages_close_1009(kind: Kind) {
    let s = setup(kind, |c| c.tuning.max_message_bytes = 1024).await;
    let mut c = WsClient::connect(&s.gw.ws_url()).await;
    c.hello().await;
    let big = json!({"jsonrpc":"2.0","id":1,"method":"publish","params":{"topic":"t","data":"x".repeat(2000)}});
    c.send_text(big.to_string()).await;
    assert_eq!(c.read_close().await, 1009);

    // The same limit holds for a message split into small fragments.
    let mut c = WsClient::connect(&s.gw.ws_url()).await;
    c.hello().await;
    send_fragments(&mut c, &"x".repeat(2000), 100).await;
    assert_eq!(c.read_close().await, 1009);

    // At the limit exactly, a message is accepted.
    let mut c = WsClient::connect(&s.gw.ws_url()).await;
    c.hello().await;
    let head = r#"{"jsonrpc":"2.0","id":7,"method":"ping","params":{"pad":""#;
    let tail = r#""}}"#;
    let msg = format!("{head}{}{tail}", "p".repeat(1024 - head.len() - tail.len()));
    assert_eq!(msg.len(), 1024);
    c.send_text(msg).await;
    // ping with unknown params is fine: ping takes no params and ignores them.
    assert_eq!(c.read_json().await["id"], 7);
}

async fn send_fragments(c: &mut WsClient, text: &str, size: usize) {
    let bytes = text.as_bytes();
    let chunks: Vec<&[u8]> = bytes.chunks(size).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let opcode = if i == 0 {
            OpCode::Data(Data::Text)
        } else {
            OpCode::Data(Data::Continue)
        };
        let header = FrameHeader {
            is_final: i + 1 == chunks.len(),
            opcode,
            ..FrameHeader::default()
        };
        c.send_message(Message::Frame(Frame::from_payload(
            header,
            chunk.to_vec().into(),
        )))
        .await;
    }
}

async fn fragmented_messages_are_reassembled(kind: Kind) {
    let s = setup(kind, |_| {}).await;
    let mut c = WsClient::connect(&s.gw.ws_url()).await;
    c.hello().await;
    // A multi-byte character split across fragments must survive reassembly.
    c.call("subscribe", json!({"topic": "t"})).await;
    let req =
        r#"{"jsonrpc":"2.0","id":"frag","method":"publish","params":{"topic":"t","data":"é✓ é✓"}}"#;
    send_fragments(&mut c, req, 7).await;
    assert_eq!(c.next_event().await["data"], "é✓ é✓");
}

async fn tokens_are_checked(kind: Kind) {
    const SECRET: &[u8] = b"test-secret";
    let s = setup(kind, |c| {
        c.auth.allow_anonymous = false;
        c.auth.jwt_secrets = vec![String::from_utf8_lossy(SECRET).into_owned()];
    })
    .await;
    let url = s.gw.ws_url();
    let good = auth::mint(SECRET, "alice", Some(Duration::from_secs(60))).unwrap();
    let wrong = auth::mint(b"other", "alice", None).unwrap();
    let expired = auth::mint_claims(
        SECRET,
        &auth::Claims {
            sub: "alice".into(),
            exp: Some(switchboard_core::clock::now_secs() - 3600),
            iat: None,
            ..Default::default()
        },
    )
    .unwrap();

    // Header token.
    let mut c = WsClient::connect_with(&url, &[("authorization", &format!("Bearer {good}"))]).await;
    c.hello().await;
    // Query token.
    let mut c = WsClient::connect(&format!("{url}?token={good}")).await;
    c.hello().await;
    // hello token.
    let mut c = WsClient::connect(&url).await;
    let r = c.call("hello", json!({"token": good})).await;
    assert!(r["result"]["session"].is_string());

    // A bad header or query token closes the socket with 1008.
    let mut c =
        WsClient::connect_with(&url, &[("authorization", &format!("Bearer {wrong}"))]).await;
    assert_eq!(c.read_close().await, 1008);
    let mut c = WsClient::connect(&format!("{url}?token={expired}")).await;
    assert_eq!(c.read_close().await, 1008);

    // No token, or a bad one in hello: -32001, then 1008.
    for params in [
        json!({}),
        json!({"token": expired}),
        json!({"token": "garbage"}),
    ] {
        let mut c = WsClient::connect(&url).await;
        let r = c.call("hello", params).await;
        assert_eq!(error_code(&r), -32001);
        assert_eq!(c.read_close().await, 1008);
    }
}

async fn slow_consumer_is_closed_4008_and_spares_others(kind: Kind) {
    const QUEUE: usize = 64;
    // The publisher stays at most this many events ahead of what the fast client has read, so
    // the fast client's queue never fills however the machine schedules the test.
    const LEAD: u64 = 32;
    let s = setup(kind, |c| c.tuning.outbound_queue = QUEUE).await;
    let url = s.gw.ws_url();
    let mut fast = WsClient::connect(&url).await;
    fast.hello().await;
    fast.call("subscribe", json!({"topic": "firehose"})).await;

    // The slow client has a tiny receive buffer and never reads while events flow.
    let mut slow = WsClient::slow_reader(&url).await;
    slow.hello().await;
    slow.call("subscribe", json!({"topic": "firehose"})).await;

    let mut publisher = WsClient::connect(&url).await;
    publisher.hello().await;
    let pad = "x".repeat(16 * 1024);
    // Enough to fill the slow client's socket buffers (a few MiB) and its queue.
    const N: u64 = 600;
    let (read_tx, mut read_rx) = tokio::sync::watch::channel(0u64);
    let drain = tokio::spawn(async move {
        for i in 0..N {
            let ev = fast.next_event().await;
            assert_eq!(ev["data"]["n"], i, "fast client lost or reordered an event");
            let _ = read_tx.send(i + 1);
        }
        fast
    });
    for i in 0..N {
        read_rx
            .wait_for(|read| read + LEAD >= i)
            .await
            .expect("fast client alive");
        let r = publisher
            .call(
                "publish",
                json!({"topic": "firehose", "data": {"n": i, "pad": pad}}),
            )
            .await;
        assert!(r["result"].is_object(), "{r}");
    }
    let _fast = drain
        .await
        .expect("fast client received every event in order");
    // Now the slow client reads: some events, then the close frame.
    assert_eq!(slow.read_close().await, 4008);
}

async fn shutdown_closes_sockets_with_1012(kind: Kind) {
    let mut s = setup(kind, |_| {}).await;
    let mut c = WsClient::connect(&s.gw.ws_url()).await;
    c.hello().await;
    let mut idle = WsClient::connect(&s.gw.ws_url()).await; // never sent hello
    let addr = s.gw.addr;
    let stop = tokio::spawn(async move {
        s.gw.stop().await;
        s
    });
    assert_eq!(c.read_close().await, 1012);
    assert_eq!(idle.read_close().await, 1012);
    let _s = stop.await.unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "a stopped gateway still accepts"
    );
}

// ---- Timeouts, on paused time (backend-independent, so memory only) ----

async fn paused_setup(tweak: impl FnOnce(&mut GatewayConfig)) -> InProcessGateway {
    let mut config = GatewayConfig::dev("paused");
    tweak(&mut config);
    InProcessGateway::start(config, MemoryBackend::new().backend()).await
}

#[tokio::test(start_paused = true)]
async fn drain_spreads_closes_over_the_spread() {
    let mut gw = paused_setup(|c| {
        c.tuning.shutdown_grace = Duration::from_secs(10);
        c.tuning.drain_spread = Duration::from_secs(2);
    })
    .await;
    let mut clients = Vec::new();
    for _ in 0..20 {
        let mut c = WsClient::connect(&gw.ws_url()).await;
        c.hello().await;
        clients.push(c);
    }
    let stop_at = tokio::time::Instant::now();
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                let code = c.read_close().await;
                (code, stop_at.elapsed())
            })
        })
        .collect();
    gw.stop().await;
    let mut at = Vec::new();
    for r in readers {
        let (code, when) = r.await.unwrap();
        assert_eq!(code, 1012);
        at.push(when);
    }
    at.sort();
    assert!(
        at[0] < Duration::from_millis(100),
        "first close at {:?}",
        at[0]
    );
    assert!(
        at[19] >= Duration::from_millis(1500) && at[19] <= Duration::from_secs(3),
        "last close at {:?}: not spread over the 2 s",
        at[19]
    );
}

/// A draining node keeps its listener: `/readyz` answers 503 and upgrades are refused with
/// 503 while the sockets are still being closed (a load balancer then stops routing here
/// before the sockets go), and only a drained node refuses connections.
#[tokio::test]
async fn draining_node_answers_503_while_sockets_close() {
    let mut gw = InProcessGateway::start_ready(
        {
            let mut c = GatewayConfig::dev("draining");
            c.tuning.drain_delay = Duration::from_millis(800);
            c.tuning.drain_spread = Duration::from_secs(2);
            c.tuning.shutdown_grace = Duration::from_secs(10);
            c
        },
        MemoryBackend::new().backend(),
    )
    .await;
    let addr = gw.addr;
    assert_eq!(http_get(addr, "/readyz").await.unwrap().0, 200);
    let mut clients = Vec::new();
    for _ in 0..20 {
        let mut c = WsClient::connect(&gw.ws_url()).await;
        c.hello().await;
        clients.push(c);
    }
    let url = gw.ws_url();
    let (closed_tx, mut closed_rx) = tokio::sync::mpsc::unbounded_channel();
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            let closed = closed_tx.clone();
            tokio::spawn(async move {
                let code = c.read_close().await;
                let _ = closed.send(code);
            })
        })
        .collect();
    let stop = tokio::spawn(async move {
        gw.stop().await;
    });
    // Within the drain delay: not ready, no socket closed yet, upgrades refused with 503.
    let (status, body) = wait_for_status(addr, "/readyz", 503).await;
    assert_eq!(body, "draining\n");
    assert!(
        closed_rx.try_recv().is_err(),
        "a socket was closed before /readyz said 503"
    );
    match tokio_tungstenite::connect_async(url.as_str()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 503),
        Err(e) => panic!("upgrade during the drain: {e}"),
        Ok(_) => panic!("a draining node accepted a WebSocket"),
    }
    assert_eq!(status, 503);
    // The sockets close over the spread; after the first and before the last, the listener
    // still answers 503.
    assert_eq!(closed_rx.recv().await, Some(1012));
    assert_eq!(http_get(addr, "/readyz").await.unwrap().0, 503);
    for r in readers {
        r.await.unwrap();
    }
    let mut codes = vec![1012];
    while let Ok(code) = closed_rx.try_recv() {
        codes.push(code);
    }
    assert_eq!(codes, vec![1012; 20]);
    stop.await.unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "a stopped gateway still accepts"
    );
}

/// Polls `path` until it answers `status` (a refused connection fails the test: the listener
/// must keep answering).
async fn wait_for_status(addr: std::net::SocketAddr, path: &str, status: u16) -> (u16, String) {
    for _ in 0..200 {
        let (got, body) = http_get(addr, path)
            .await
            .unwrap_or_else(|e| panic!("{path} did not answer during the drain: {e}"));
        if got == status {
            return (got, body);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("{path} never answered {status}");
}

#[tokio::test(start_paused = true)]
async fn hello_timeout_closes_4001() {
    let gw = paused_setup(|_| {}).await;
    let mut c = WsClient::connect(&gw.ws_url()).await;
    let start = tokio::time::Instant::now();
    assert_eq!(c.read_close().await, 4001);
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(5) && waited < Duration::from_secs(6),
        "closed after {waited:?}, expected the 5 s hello timeout"
    );
}

#[tokio::test(start_paused = true)]
async fn hello_in_time_keeps_the_socket() {
    let gw = paused_setup(|_| {}).await;
    let mut c = WsClient::connect(&gw.ws_url()).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    c.hello().await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let r = c.call("ping", json!({})).await;
    assert_eq!(r["result"], json!({}));
}

#[tokio::test(start_paused = true)]
async fn silent_client_is_closed_4002_after_three_heartbeats() {
    let gw = paused_setup(|c| c.tuning.heartbeat = Duration::from_secs(10)).await;
    let mut c = WsClient::connect(&gw.ws_url()).await;
    c.hello().await;
    // Not reading means not answering pings.
    tokio::time::sleep(Duration::from_secs(31)).await;
    assert_eq!(c.read_close().await, 4002);
}

#[tokio::test(start_paused = true)]
async fn client_answering_pings_stays_connected() {
    let gw = paused_setup(|c| c.tuning.heartbeat = Duration::from_secs(10)).await;
    let mut c = WsClient::connect(&gw.ws_url()).await;
    c.hello().await;
    // Reading answers the gateway's pings (tungstenite replies on the next read).
    let quiet = tokio::time::timeout(Duration::from_secs(60), c.read()).await;
    assert!(quiet.is_err(), "expected silence, got {quiet:?}");
    let r = c.call("ping", json!({})).await;
    assert_eq!(r["result"], json!({}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_client_still_hits_the_hello_timeout() {
    // A client that keeps the gateway busy with junk before hello must not keep its socket:
    // the connection's clock is checked before its queue.
    let gw = InProcessGateway::start(
        {
            let mut c = GatewayConfig::dev("busy");
            c.tuning.hello_timeout = Duration::from_millis(300);
            c
        },
        MemoryBackend::new().backend(),
    )
    .await;
    let mut c = WsClient::connect(&gw.ws_url()).await;
    let started = tokio::time::Instant::now();
    loop {
        for _ in 0..32 {
            c.send_text("junk").await;
        }
        for _ in 0..32 {
            match c.read().await {
                Read::Json(v) => assert_eq!(v["error"]["code"], -32700),
                Read::Close(code, _) => {
                    assert_eq!(code, 4001);
                    assert!(started.elapsed() < Duration::from_secs(5));
                    return;
                }
                Read::Eof => panic!("closed without a close frame"),
            }
        }
    }
}

#[tokio::test]
async fn expiring_token_closes_1008() {
    const SECRET: &[u8] = b"s";
    let mut config = GatewayConfig::dev("exp");
    config.auth.jwt_secrets = vec![String::from_utf8_lossy(SECRET).into_owned()];
    let gw = InProcessGateway::start(config, MemoryBackend::new().backend()).await;
    let token = auth::mint_claims(
        SECRET,
        &auth::Claims {
            sub: "bob".into(),
            exp: Some(switchboard_core::clock::now_secs() + 2),
            iat: None,
            ..Default::default()
        },
    )
    .unwrap();
    let mut c = WsClient::connect(&gw.ws_url()).await;
    let r = c.call("hello", json!({"token": token})).await;
    assert!(r["result"]["session"].is_string(), "{r}");
    match c.read().await {
        Read::Close(code, reason) => {
            assert_eq!(code, 1008);
            assert!(reason.contains("expired"), "{reason}");
        }
        other => panic!("expected close, got {other:?}"),
    }
}

#[tokio::test]
async fn http_endpoints() {
    let gw = InProcessGateway::start(GatewayConfig::dev("h"), MemoryBackend::new().backend()).await;
    let addr = gw.addr;
    assert_eq!(http_get(addr, "/healthz").await.unwrap().0, 200);
    switchboard_harness::eventually("ready", || async move {
        matches!(http_get(addr, "/readyz").await, Ok((200, _))).then_some(())
    })
    .await;
    // Metrics on the admin port only.
    assert_eq!(http_get(addr, "/metrics").await.unwrap().0, 404);
    let (code, body) = http_get(gw.admin_addr, "/metrics").await.unwrap();
    assert_eq!(code, 200);
    assert!(body.contains("switchboard_connections "), "{body}");
    assert!(
        body.contains("switchboard_connections_accepted_total"),
        "{body}"
    );
    // One metric family per name: a duplicate makes the whole scrape invalid.
    let mut families: Vec<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let n = families.len();
    families.sort_unstable();
    families.dedup();
    assert_eq!(families.len(), n, "duplicate metric families:\n{body}");
    assert_eq!(http_get(addr, "/nope").await.unwrap().0, 404);
    // /ws without an upgrade is a clear 400, not a hang.
    assert_eq!(http_get(addr, "/ws").await.unwrap().0, 400);
}
