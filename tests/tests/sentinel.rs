//! A Sentinel failover under real processes: a primary, a replica and a Sentinel on free ports,
//! a gateway and a worker on `redis+sentinel://`. The primary is killed with SIGKILL while
//! WebSocket clients are connected and a tool call is running; the Sentinel promotes the
//! replica; the clients stay connected, the gateway becomes ready again, publish/subscribe
//! works, the call that was running is answered and a new one too. A graceful failover
//! (`SENTINEL FAILOVER`: the old primary lives on as a replica, answering `READONLY`) moves the
//! nodes too, and events are not delivered twice through the demoted primary.

use std::time::Duration;

use serde_json::json;
use switchboard_harness::redis_extra::{MASTER, SentinelSet, wait_announced};
use switchboard_harness::{GatewayProcess, WorkerProcess, WsClient, eventually_within, http_get};

/// How long the failover may take, all steps together (down-after 1 s, the election, the
/// promotion, the nodes asking the Sentinel again).
const FAILOVER: Duration = Duration::from_secs(45);
/// How long one published event is awaited before publishing again.
const EVENT_WAIT: Duration = Duration::from_millis(1000);

async fn client(g: &GatewayProcess) -> WsClient {
    let mut c = WsClient::connect(&g.ws_url()).await;
    c.hello().await;
    c
}

/// The nodes' flags in these tests: the registry and call polls quick, the Sentinels asked
/// twice a second.
const NODE_FLAGS: [&str; 6] = [
    "--registry-interval",
    "200ms",
    "--call-poll",
    "200ms",
    "--redis-sentinel-poll",
    "500ms",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_stay_and_calls_resume_across_a_failover() {
    let mut set = SentinelSet::start().await;
    let flags = NODE_FLAGS;
    let g = GatewayProcess::start(&set.url(), "gw-a", &flags).await;
    let _w = WorkerProcess::spawn_url(
        &set.url(),
        "w1",
        &["--builtin", "--redis-sentinel-poll", "500ms"],
    );
    wait_announced(&mut set.primary.connection().await, "w1").await;

    let mut sub = client(&g).await;
    let mut pubr = client(&g).await;
    sub.call("subscribe", json!({"topic": "room:1"})).await;
    pubr.call("publish", json!({"topic": "room:1", "data": "before"}))
        .await;
    assert_eq!(sub.next_event().await["data"], "before");
    pubr.wait_for_tool("sleep").await;
    pubr.wait_for_tool("echo").await;

    // A call in flight across the failover.
    let mut caller = client(&g).await;
    let running = caller
        .send_request(
            "tools/call",
            json!({"name": "sleep", "arguments": {"ms": 3000}}),
        )
        .await;
    // Wait until a worker holds the job, as the replica sees it, before the kill.
    let rconn = set.replica.connection().await;
    eventually_within("the running job to reach the replica", FAILOVER, || async {
        let mut conn = rconn.clone();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("sb:q:{sleep}@*")
            .query_async(&mut conn)
            .await
            .ok()?;
        // The summary form: [count, smallest id, greatest id, [[consumer, count]...]].
        let (count, ..): (i64, redis::Value, redis::Value, redis::Value) = redis::cmd("XPENDING")
            .arg(keys.first()?)
            .arg("workers")
            .query_async(&mut conn)
            .await
            .ok()?;
        (count > 0).then_some(())
    })
    .await;
    drop(rconn);

    let old_port = set.primary.port;
    set.primary.kill9().await;
    let new_port = eventually_within("the Sentinel to promote the replica", FAILOVER, || async {
        set.primary_port().await.filter(|p| *p != old_port)
    })
    .await;
    assert_eq!(new_port, set.replica.port);
    let addr = g.addr;
    eventually_within("the gateway to be ready again", FAILOVER, || async {
        matches!(http_get(addr, "/readyz").await, Ok((200, _))).then_some(())
    })
    .await;

    // The clients are still connected: they answer, and live events flow again.
    live_again(&mut sub, &mut pubr, "room:1").await;

    // The call that ran across the failover is answered...
    let reply = tokio::time::timeout(FAILOVER, async {
        loop {
            let v = caller.read_json().await;
            if v["id"] == json!(running) {
                return v;
            }
        }
    })
    .await
    .expect("the call in flight across the failover was never answered");
    assert!(reply["result"].is_object(), "{reply}");

    // ...and a new one too.
    let r = tokio::time::timeout(
        FAILOVER,
        pubr.call(
            "tools/call",
            json!({"name": "echo", "arguments": {"after": true}}),
        ),
    )
    .await
    .expect("a call after the failover was never answered");
    assert_eq!(
        r["result"]["structuredContent"],
        json!({"after": true}),
        "{r}"
    );
}

/// Publishes on `pubr` until `sub` gets one of the events (the nodes may still be moving);
/// returns the number of the event that arrived.
async fn live_again(sub: &mut WsClient, pubr: &mut WsClient, topic: &str) -> i64 {
    let mut n = 0;
    eventually_within("a live event after the failover", FAILOVER, async || {
        n += 1;
        let r = pubr
            .call("publish", json!({"topic": topic, "data": {"after": n}}))
            .await;
        if r.get("error").is_some() {
            return None;
        }
        let e = tokio::time::timeout(EVENT_WAIT, sub.next_event())
            .await
            .ok()?;
        e["data"]["after"].as_i64()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_failover_moves_the_nodes_and_delivers_once() {
    let set = SentinelSet::start().await;
    let flags = NODE_FLAGS;
    let g = GatewayProcess::start(&set.url(), "gw-a", &flags).await;
    // The worker's list starts with a Sentinel that is not there: the next one answers.
    let url = format!(
        "redis+sentinel://127.0.0.1:{},127.0.0.1:{}/{MASTER}",
        switchboard_harness::free_port(),
        set.sentinel.port
    );
    let _w = WorkerProcess::spawn_url(&url, "w1", &["--builtin", "--redis-sentinel-poll", "500ms"]);
    wait_announced(&mut set.primary.connection().await, "w1").await;
    let mut sub = client(&g).await;
    let mut pubr = client(&g).await;
    sub.call("subscribe", json!({"topic": "room:2"})).await;

    let old_port = set.primary.port;
    let mut sconn = set.sentinel.connection().await;
    let _: () = redis::cmd("SENTINEL")
        .arg("FAILOVER")
        .arg(MASTER)
        .query_async(&mut sconn)
        .await
        .expect("SENTINEL FAILOVER");
    let new_port = eventually_within("the Sentinel to promote the replica", FAILOVER, || async {
        set.primary_port().await.filter(|p| *p != old_port)
    })
    .await;
    // The old primary lives on as a replica of the new one, refusing writes (READONLY) and
    // receiving its replicated messages. The Sentinel converts it in its own time (not seen
    // within seconds here with one Sentinel): done by hand, as it would.
    let mut old = set.primary.connection().await;
    let _: () = redis::cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(new_port)
        .query_async(&mut old)
        .await
        .expect("REPLICAOF");

    let n = live_again(&mut sub, &mut pubr, "room:2").await;
    // Once through: a marker published after `n` is the next event, nothing doubled between.
    pubr.call("publish", json!({"topic": "room:2", "data": "marker"}))
        .await;
    loop {
        let e = tokio::time::timeout(EVENT_WAIT * 5, sub.next_event())
            .await
            .expect("the marker never arrived");
        if e["data"] == "marker" {
            break;
        }
        // Events published before `n` may still arrive (late ones); none after `n` but the
        // marker, and `n` itself not again.
        let k = e["data"]["after"].as_i64().expect("numbered events");
        assert!(k < n, "event {k} arrived after event {n} (twice?)");
    }
    assert!(
        tokio::time::timeout(EVENT_WAIT, sub.next_event())
            .await
            .is_err(),
        "an event arrived twice"
    );

    // `switchboard publish` finds the primary through the Sentinel too.
    switchboard_harness::publish_cli(&["--redis", &set.url(), "room:2", r#"{"from":"cli"}"#]).await;
    assert_eq!(sub.next_event().await["data"], json!({"from": "cli"}));

    pubr.wait_for_tool("echo").await;
    let r = tokio::time::timeout(
        FAILOVER,
        pubr.call("tools/call", json!({"name": "echo", "arguments": {"n": n}})),
    )
    .await
    .expect("a call after the failover was never answered");
    assert_eq!(r["result"]["structuredContent"], json!({"n": n}), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_over_tls() {
    let ca = switchboard_harness::tls::TestCa::new();
    let dir = switchboard_harness::redis_extra::TempDir::new("sentinel-tls-ca");
    ca.write_files(dir.path());
    let ca_file = dir.file("ca.pem");
    let mut set = SentinelSet::start_tls(&ca).await;
    assert!(set.url().starts_with("rediss+sentinel://"));
    let flags = [
        "--registry-interval",
        "200ms",
        "--call-poll",
        "200ms",
        "--redis-sentinel-poll",
        "500ms",
        "--redis-ca-file",
        &ca_file,
    ];
    let g = GatewayProcess::start(&set.url(), "gw-a", &flags).await;
    let _w = WorkerProcess::spawn_url(
        &set.url(),
        "w1",
        &[
            "--builtin",
            "--redis-sentinel-poll",
            "500ms",
            "--redis-ca-file",
            &ca_file,
        ],
    );
    wait_announced(&mut set.primary.connection().await, "w1").await;
    let mut sub = client(&g).await;
    let mut pubr = client(&g).await;
    sub.call("subscribe", json!({"topic": "room:3"})).await;

    let old_port = set.primary.port;
    set.primary.kill9().await;
    eventually_within("the Sentinel to promote the replica", FAILOVER, || async {
        set.primary_port().await.filter(|p| *p != old_port)
    })
    .await;
    live_again(&mut sub, &mut pubr, "room:3").await;
    pubr.wait_for_tool("echo").await;
    let r = tokio::time::timeout(
        FAILOVER,
        pubr.call(
            "tools/call",
            json!({"name": "echo", "arguments": {"tls": 1}}),
        ),
    )
    .await
    .expect("a call after the failover was never answered");
    assert_eq!(r["result"]["structuredContent"], json!({"tls": 1}), "{r}");
}
