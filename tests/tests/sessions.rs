//! Sessions: `hello {session}` resumes with the same subscriptions, replays what was missed
//! (from the stored positions, or the client's), refuses another identity, takes over a socket
//! still attached (4009), expires after its ttl, and answers calls that were in flight. Then the
//! Redis outage: connected clients stay, `hello` is refused, and history published around the
//! outage reaches subscribers exactly once.

use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::{Value, json};
use switchboard_core::auth;
use switchboard_core::history::HistoryRule;
use switchboard_gateway::GatewayConfig;
use switchboard_harness::{
    GatewayProcess, InProcessGateway, Kind, Read, RedisServer, TestBackend, WorkerProcess,
    WsClient, eventually, every_backend, http_get, metric,
};

const SECRET: &[u8] = b"session-secret";

fn config(node: &str) -> GatewayConfig {
    let mut config = GatewayConfig::dev(node);
    config.tuning.readiness_interval = Duration::from_millis(100);
    config.tuning.session_refresh = Duration::from_millis(200);
    config.tuning.history = vec![HistoryRule::parse("h:*=1000").unwrap()];
    config.auth.jwt_secrets = vec![String::from_utf8_lossy(SECRET).into_owned()];
    config
}

fn token(sub: &str) -> String {
    auth::mint(SECRET, sub, None).unwrap()
}

async fn hello(c: &mut WsClient, params: Value) -> Value {
    let r = c.call("hello", params).await;
    assert!(r["result"]["session"].is_string(), "hello failed: {r}");
    r["result"].clone()
}

async fn publish(c: &mut WsClient, topic: &str, data: Value) -> String {
    let r = c
        .call("publish", json!({"topic": topic, "data": data}))
        .await;
    r["result"]["id"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_default()
}

/// Reads `n` events' data (in arrival order).
async fn events(c: &mut WsClient, n: usize) -> Vec<Value> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(c.next_event().await["data"].clone());
    }
    out
}

every_backend!(
    resume_restores_subscriptions_and_replays_the_gap,
    client_positions_win_over_stored_ones,
    another_identity_cannot_resume,
    takeover_closes_the_older_socket_4009,
    unknown_or_expired_session_opens_a_new_one,
    a_slow_consumer_resumes_from_what_was_written,
);

async fn resume_restores_subscriptions_and_replays_the_gap(kind: Kind) {
    let b = TestBackend::start(kind).await;
    let gw = InProcessGateway::start_ready(config("s1"), b.backend).await;
    let mut c1 = WsClient::connect(&gw.ws_url()).await;
    let first = hello(&mut c1, json!({"token": token("alice")})).await;
    assert_eq!(first["resumed"], false);
    let session = first["session"].as_str().unwrap().to_owned();
    c1.call("subscribe", json!({"topic": "h:room"})).await;
    c1.call("subscribe", json!({"topic": "plain"})).await;
    let mut publisher = WsClient::connect(&gw.ws_url()).await;
    hello(&mut publisher, json!({"token": token("pub")})).await;
    for i in 0..3 {
        publish(&mut publisher, "h:room", json!(i)).await;
    }
    assert_eq!(events(&mut c1, 3).await, vec![json!(0), json!(1), json!(2)]);
    c1.close(1000).await;
    drop(c1);
    // Missed while away.
    for i in 3..5 {
        publish(&mut publisher, "h:room", json!(i)).await;
    }

    let mut c2 = WsClient::connect(&gw.ws_url()).await;
    // The replay comes before the reply: read raw.
    let id = c2
        .send_request(
            "hello",
            json!({"token": token("alice"), "session": session}),
        )
        .await;
    let mut replayed = Vec::new();
    let reply = loop {
        let v = c2.read_json().await;
        if v["id"] == json!(id) {
            break v;
        }
        assert_eq!(v["method"], "event", "{v}");
        replayed.push(v["params"]["data"].clone());
    };
    assert_eq!(replayed, vec![json!(3), json!(4)], "exactly the gap");
    let result = &reply["result"];
    assert_eq!(result["resumed"], true, "{reply}");
    assert_eq!(result["session"], session.as_str());
    let mut topics: Vec<&str> = result["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["topic"].as_str().unwrap())
        .collect();
    topics.sort();
    assert_eq!(topics, ["h:room", "plain"]);
    // Both subscriptions are live again.
    // (Events of different topics may go through different fan-out workers: no order between
    // them.)
    publish(&mut publisher, "plain", json!("p")).await;
    publish(&mut publisher, "h:room", json!(5)).await;
    let mut live = events(&mut c2, 2).await;
    live.sort_by_key(Value::to_string);
    assert_eq!(live, vec![json!("p"), json!(5)]);
}

async fn client_positions_win_over_stored_ones(kind: Kind) {
    let b = TestBackend::start(kind).await;
    let gw = InProcessGateway::start_ready(config("s1"), b.backend).await;
    let mut c1 = WsClient::connect(&gw.ws_url()).await;
    let session = hello(&mut c1, json!({"token": token("alice")})).await["session"].clone();
    c1.call("subscribe", json!({"topic": "h:t"})).await;
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(publish(&mut c1, "h:t", json!(i)).await);
    }
    events(&mut c1, 4).await;
    drop(c1);
    // The client says it only has up to event 1: events 2 and 3 come again.
    let mut c2 = WsClient::connect(&gw.ws_url()).await;
    let r = hello(
        &mut c2,
        json!({"token": token("alice"), "session": session, "positions": {"h:t": ids[1]}}),
    )
    .await;
    assert_eq!(r["resumed"], true);
    assert_eq!(r["subscriptions"][0]["recovered"], true, "{r}");
    assert_eq!(events(&mut c2, 2).await, vec![json!(2), json!(3)]);
}

async fn another_identity_cannot_resume(kind: Kind) {
    let b = TestBackend::start(kind).await;
    let gw = InProcessGateway::start_ready(config("s1"), b.backend).await;
    let mut alice = WsClient::connect(&gw.ws_url()).await;
    let session = hello(&mut alice, json!({"token": token("alice")})).await["session"].clone();
    alice.call("subscribe", json!({"topic": "h:secret"})).await;

    let mut mallory = WsClient::connect(&gw.ws_url()).await;
    let r = mallory
        .call(
            "hello",
            json!({"token": token("mallory"), "session": session}),
        )
        .await;
    assert_eq!(r["error"]["code"], -32001, "{r}");
    // Alice is untouched, and Mallory may still open a session of her own.
    let own = hello(&mut mallory, json!({"token": token("mallory")})).await;
    assert_ne!(own["session"], session);
    assert_eq!(own["resumed"], false);
    let r = alice.call("ping", json!({})).await;
    assert!(r["result"].is_object(), "{r}");
}

async fn takeover_closes_the_older_socket_4009(kind: Kind) {
    let b = TestBackend::start(kind).await;
    let gw = InProcessGateway::start_ready(config("s1"), b.backend).await;
    let mut old = WsClient::connect(&gw.ws_url()).await;
    let session = hello(&mut old, json!({"token": token("alice")})).await["session"].clone();
    old.call("subscribe", json!({"topic": "h:x"})).await;
    let mut new = WsClient::connect(&gw.ws_url()).await;
    let r = hello(
        &mut new,
        json!({"token": token("alice"), "session": session}),
    )
    .await;
    assert_eq!(r["resumed"], true);
    assert_eq!(old.read_close().await, 4009);
    // The old socket's end does not disturb the new holder's subscriptions: once the node has
    // torn the old connection down (its gauge counts only the new one), events still arrive.
    let addr = gw.admin_addr;
    eventually("the old connection to be torn down", || async move {
        (metric(addr, "switchboard_connections").await == 1.0).then_some(())
    })
    .await;
    publish(&mut new, "h:x", json!("still here")).await;
    assert_eq!(new.next_event().await["data"], "still here");
}

/// How long an attached session is watched for expiring, which it must not: an absence can
/// only be shown by waiting. Longer than its expiry when not refreshed (the 300 ms ttl plus the
/// two 100 ms refresh periods it is pushed ahead by), so only the refresh can keep it.
const HELD_PAST_TTL: Duration = Duration::from_millis(800);
/// The bound on a detached session's life (ttl 300 ms): the 900 ms this test has always
/// allowed, rounded up, far below the default ttl (120 s) and the attached expiry (500 ms).
const EXPIRES_WITHIN: Duration = Duration::from_secs(1);

async fn unknown_or_expired_session_opens_a_new_one(kind: Kind) {
    let b = TestBackend::start(kind).await;
    let mut cfg = config("s1");
    cfg.tuning.session_ttl = Duration::from_millis(300);
    cfg.tuning.session_refresh = Duration::from_millis(100);
    let gw = InProcessGateway::start_ready(cfg, b.backend).await;
    let mut c = WsClient::connect(&gw.ws_url()).await;
    let r = hello(
        &mut c,
        json!({"token": token("alice"), "session": "0123456789abcdef0123456789abcdef"}),
    )
    .await;
    assert_eq!(r["resumed"], false);
    assert_ne!(r["session"], "0123456789abcdef0123456789abcdef");
    let session = r["session"].clone();
    // Held past its ttl while attached (the refresh keeps it), the socket undisturbed...
    let quiet = tokio::time::timeout(HELD_PAST_TTL, c.read()).await;
    assert!(
        quiet.is_err(),
        "the attached socket was disturbed: {quiet:?}"
    );
    drop(c);
    let mut c = WsClient::connect(&gw.ws_url()).await;
    let r = hello(&mut c, json!({"token": token("alice"), "session": session})).await;
    assert_eq!(r["resumed"], true, "an attached session must not expire");
    // ...and gone a ttl after its socket closed. Another identity asking for it sees whether it
    // is still stored (-32001) without attaching it (which would restart its ttl).
    drop(c);
    let closed = tokio::time::Instant::now();
    eventually("the detached session to expire", || async {
        let mut probe = WsClient::connect(&gw.ws_url()).await;
        let r = probe
            .call(
                "hello",
                json!({"token": token("mallory"), "session": session}),
            )
            .await;
        if r["error"]["code"] == -32001 {
            return None;
        }
        assert_eq!(r["result"]["resumed"], false, "{r}");
        Some(())
    })
    .await;
    assert!(
        closed.elapsed() < EXPIRES_WITHIN,
        "a detached session lived {:?}, with a ttl of 300 ms",
        closed.elapsed()
    );
    let mut c = WsClient::connect(&gw.ws_url()).await;
    let r = hello(&mut c, json!({"token": token("alice"), "session": session})).await;
    assert_eq!(r["resumed"], false, "expired: {r}");
}

/// A client closed as a slow consumer (4008) had events queued that were never written: its
/// session must resume from the last event written to it, not the last one queued, even when
/// the client gives no positions of its own.
async fn a_slow_consumer_resumes_from_what_was_written(kind: Kind) {
    const N: u64 = 600;
    let b = TestBackend::start(kind).await;
    let mut cfg = config("s1");
    cfg.tuning.outbound_queue = 16;
    cfg.tuning.history = vec![HistoryRule::parse("h:*=10000").unwrap()];
    let gw = InProcessGateway::start_ready(cfg, b.backend).await;
    let url = gw.ws_url();
    // A tiny receive buffer, and nothing read while the events flow.
    let mut slow = WsClient::slow_reader(&url).await;
    let session = hello(&mut slow, json!({"token": token("slow")})).await["session"].clone();
    slow.call("subscribe", json!({"topic": "h:fire"})).await;
    let mut publisher = WsClient::connect(&url).await;
    hello(&mut publisher, json!({"token": token("pub")})).await;
    let pad = "x".repeat(16 * 1024);
    for i in 0..N {
        publish(&mut publisher, "h:fire", json!({"n": i, "pad": pad})).await;
    }
    // Everything written before the close arrives, then 4008.
    let mut got = Vec::new();
    loop {
        match slow.read().await {
            Read::Json(v) if v["method"] == "event" => {
                got.push(v["params"]["data"]["n"].as_u64().unwrap());
            }
            Read::Json(_) => {}
            Read::Close(code, _) => {
                assert_eq!(code, 4008);
                break;
            }
            Read::Eof => panic!("no close frame"),
        }
    }
    assert!(
        (got.len() as u64) < N,
        "the client was not slow enough to be closed"
    );
    // Resumed without positions of its own: the replay starts right after the last event
    // written to it.
    let mut c = WsClient::connect(&url).await;
    let id = c
        .send_request("hello", json!({"token": token("slow"), "session": session}))
        .await;
    loop {
        let v = c.read_json().await;
        if v["id"] == json!(id) {
            assert_eq!(v["result"]["resumed"], true, "{v}");
            break;
        }
        got.push(v["params"]["data"]["n"].as_u64().unwrap());
    }
    assert_eq!(
        got,
        (0..N).collect::<Vec<_>>(),
        "a gap or a duplicate at the seam"
    );
}

/// Gateway processes on one Redis, anonymous (the processes take no secret here).
async fn hello_anon(c: &mut WsClient, session: Option<&Value>) -> Value {
    let params = match session {
        Some(s) => json!({"session": s}),
        None => json!({}),
    };
    hello(c, params).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_across_nodes_closes_4009() {
    let redis = RedisServer::start().await;
    let a = GatewayProcess::start(&redis.url(), "node-a", &[]).await;
    let b = GatewayProcess::start(&redis.url(), "node-b", &[]).await;
    let mut on_a = WsClient::connect(&a.ws_url()).await;
    let session = hello_anon(&mut on_a, None).await["session"].clone();
    let mut on_b = WsClient::connect(&b.ws_url()).await;
    let r = hello_anon(&mut on_b, Some(&session)).await;
    assert_eq!(r["resumed"], true);
    assert_eq!(r["node"], "node-b");
    assert_eq!(on_a.read_close().await, 4009);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_in_flight_is_answered_after_resume_on_another_node() {
    let redis = RedisServer::start().await;
    let a = GatewayProcess::start(&redis.url(), "node-a", &[]).await;
    let b = GatewayProcess::start(&redis.url(), "node-b", &[]).await;
    let _worker = WorkerProcess::start(&redis, "w1", &["--builtin"]).await;
    let mut c = WsClient::connect(&a.ws_url()).await;
    let session = hello_anon(&mut c, None).await["session"].clone();
    c.wait_for_tool("sleep").await;
    c.send_text(
        json!({"jsonrpc": "2.0", "id": "call-77", "method": "tools/call",
               "params": {"name": "sleep", "arguments": {"ms": 1500}}})
        .to_string(),
    )
    .await;
    // Once the gateway has stored the owed reply, kill its node.
    redis.wait_for_owed_reply(session.as_str().unwrap()).await;
    a.signal(Signal::SIGKILL);
    assert!(matches!(c.read().await, Read::Eof | Read::Close(..)));

    let mut c = WsClient::connect(&b.ws_url()).await;
    let r = hello_anon(&mut c, Some(&session)).await;
    assert_eq!(r["resumed"], true);
    let reply = loop {
        let v = c.read_json().await;
        if v["id"] == "call-77" {
            break v;
        }
    };
    let result = &reply["result"];
    assert_eq!(result["isError"], false, "{reply}");
    assert!(result["_meta"]["switchboard/taskId"].is_string(), "{reply}");
}

/// The backend's pace in the outage test: one event every 10 ms, so that the 200 events take
/// at least 2 s and are published before, during (retried) and after the outage.
const PUBLISH_EVERY: Duration = Duration::from_millis(10);
/// How long the backend waits before trying a refused publish again (its retry policy).
const RETRY_PAUSE: Duration = Duration::from_millis(50);
/// How long Redis stays down once the gateway has noticed (not ready, hellos refused): the
/// outage under test, long enough for several of the gateway's resubscribe attempts and of the
/// backend's retries to fail. Not a wait for anything.
const OUTAGE: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_keeps_clients_and_loses_no_history() {
    // Persistent, as production runs it: right after the restart a backend can publish again
    // (the function survives), before the gateway's subscription is back.
    let mut redis = RedisServer::start_persistent().await;
    let gw = GatewayProcess::start(&redis.url(), "node-a", &["--history", "h:*=10000"]).await;
    let mut c = WsClient::connect(&gw.ws_url()).await;
    hello_anon(&mut c, None).await;
    c.call("subscribe", json!({"topic": "h:feed"})).await;

    // A backend publishes 200 events at a steady rate with FCALL sb_publish, retrying each until
    // Redis takes it, as a backend with a retry policy does; Redis restarts in the middle.
    let url = redis.url();
    let publisher = tokio::spawn(async move {
        let client = redis::Client::open(url).unwrap();
        for i in 0..200 {
            loop {
                let sent = async {
                    let mut conn = client.get_multiplexed_async_connection().await?;
                    redis::cmd("FCALL")
                        .arg("sb_publish")
                        .arg(1)
                        .arg("sb:h:{h:feed}")
                        .arg(json!(i).to_string())
                        .query_async::<String>(&mut conn)
                        .await
                };
                if tokio::time::timeout(Duration::from_millis(500), sent)
                    .await
                    .is_ok_and(|r| r.is_ok())
                {
                    break;
                }
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            tokio::time::sleep(PUBLISH_EVERY).await;
        }
    });
    // Part of the way in (some events out before the outage), Redis dies.
    eventually("the first events to be published", || async {
        (redis.history_len("h:feed").await >= 20).then_some(())
    })
    .await;
    redis.kill().await;
    // While Redis is down: not ready, new hellos refused with a clear error and 1013.
    let addr = gw.addr;
    eventually("not ready", || async move {
        matches!(http_get(addr, "/readyz").await, Ok((503, _))).then_some(())
    })
    .await;
    let mut refused = WsClient::connect(&gw.ws_url()).await;
    let r = refused.call("hello", json!({})).await;
    assert_eq!(r["error"]["code"], -32603, "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unavailable"),
        "{r}"
    );
    assert_eq!(refused.read_close().await, 1013);
    tokio::time::sleep(OUTAGE).await;
    assert!(
        !publisher.is_finished(),
        "the publishing must span the outage"
    );
    redis.restart().await;
    publisher.await.unwrap();

    // Every event exactly once, in order, on the socket that stayed open all along.
    let got = events(&mut c, 200).await;
    assert_eq!(got, (0..200).map(|i| json!(i)).collect::<Vec<_>>());
    let r = c.call("ping", json!({})).await;
    assert!(r["result"].is_object(), "still connected: {r}");
    drop(gw);
}

/// A node drained while Redis hangs (stopped: its socket open, no answers, as in a network
/// partition) still closes its sockets with 1012: the close frame does not wait on saving the
/// session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_during_a_redis_outage_still_sends_1012() {
    let redis = RedisServer::start().await;
    let mut gw = GatewayProcess::start(
        &redis.url(),
        "node-a",
        &["--drain-spread", "100ms", "--redis-timeout", "3000ms"],
    )
    .await;
    let mut c = WsClient::connect(&gw.ws_url()).await;
    hello_anon(&mut c, None).await;
    let redis_pid = nix::unistd::Pid::from_raw(redis.pid().unwrap() as i32);
    nix::sys::signal::kill(redis_pid, Signal::SIGSTOP).unwrap();
    gw.wait_ready(false).await;
    gw.signal(Signal::SIGTERM);
    match c.read().await {
        Read::Close(code, _) => assert_eq!(code, 1012),
        other => panic!("expected a 1012 close frame, got {other:?}"),
    }
    assert!(gw.wait().await.success());
    nix::sys::signal::kill(redis_pid, Signal::SIGCONT).unwrap();
}
