//! Caps per identity and per address, cluster-wide, against real gateway processes, a worker
//! and Redis: tool calls in flight (task mode included, over two nodes, and a closed socket does
//! not give them back), stored tasks, stored result bytes, the size of arguments and of
//! results, the longest task ttl, and connections per address and per identity (a node that
//! dies stops counting once its leases run out). Each cap is crossed and answered as documented
//! (`docs/limits.md`), while another identity on the same nodes is served meanwhile and a
//! subscriber there keeps receiving every event.

use std::time::Duration;

use serde_json::{Value, json};
use switchboard_core::auth::{Claims, mint_claims};
use switchboard_harness::{
    GatewayProcess, RedisServer, WorkerProcess, WsClient, eventually, metric, upgrade_from,
};

const SECRET: &str = "caps-secret-long-enough-for-hs256-keys";

fn token(sub: &str) -> String {
    mint_claims(SECRET.as_bytes(), &Claims::subject(sub)).unwrap()
}

async fn gateway(redis: &RedisServer, id: &str, extra: &[&str]) -> GatewayProcess {
    let mut flags = vec![
        "--jwt-secret",
        SECRET,
        "--allow",
        "calm:*=sub",
        "--allow-tools",
        "*",
        "--registry-interval",
        "100ms",
    ];
    flags.extend_from_slice(extra);
    GatewayProcess::start_secured(&redis.url(), id, &flags).await
}

async fn connect(gw: &GatewayProcess, sub: &str) -> WsClient {
    let mut c = WsClient::connect(&gw.ws_url()).await;
    let r = c.call("hello", json!({"token": token(sub)})).await;
    assert!(r["result"]["session"].is_string(), "{r}");
    c
}

/// A subscriber of `calm:1` on `gw` and the backend events it must all receive.
struct Calm {
    client: WsClient,
    sent: u64,
}

impl Calm {
    async fn start(gw: &GatewayProcess) -> Calm {
        let mut client = connect(gw, "carol").await;
        let r = client.call("subscribe", json!({"topic": "calm:1"})).await;
        assert!(r.get("result").is_some(), "{r}");
        Calm { client, sent: 0 }
    }

    async fn tick(&mut self, redis: &RedisServer) {
        redis
            .publish("calm:1", &json!({"n": self.sent}).to_string())
            .await;
        self.sent += 1;
    }

    async fn finish(mut self) {
        for n in 0..self.sent {
            let e = self.client.next_event().await;
            assert_eq!(
                e["data"]["n"], n,
                "the well-behaved subscriber missed an event"
            );
        }
    }
}

fn assert_capped(r: &Value, limit: &str, max: u64) {
    assert_eq!(r["error"]["code"], -32006, "{r}");
    assert_eq!(r["error"]["data"]["limit"], limit, "{r}");
    assert_eq!(r["error"]["data"]["max"], max, "{r}");
}

fn sleep_call(ms: u64, n: u64) -> Value {
    json!({"name": "sleep", "arguments": {"ms": ms, "n": n}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_in_flight_are_capped_per_identity_across_nodes_and_sockets() {
    let redis = RedisServer::start().await;
    let _w = WorkerProcess::start(&redis, "w1", &["--builtin", "--concurrency", "16"]).await;
    let caps = ["--max-calls-in-flight-per-identity", "3"];
    let a = gateway(&redis, "a", &caps).await;
    let b = gateway(&redis, "b", &caps).await;
    let mut calm = Calm::start(&a).await;
    let mut alice_a = connect(&a, "alice").await;
    alice_a.wait_for_tool("sleep").await;
    let mut alice_b = connect(&b, "alice").await;
    alice_b.wait_for_tool("sleep").await;

    // Two long calls on node a (one of them a task), one on node b: alice's three.
    let first = alice_a
        .send_request("tools/call", sleep_call(4000, 1))
        .await;
    let task = alice_a
        .call(
            "tools/call",
            json!({"name": "sleep", "arguments": {"ms": 4000, "n": 2}, "task": {}}),
        )
        .await;
    assert_eq!(task["result"]["task"]["status"], "working", "{task}");
    let third = alice_b
        .send_request("tools/call", sleep_call(4000, 3))
        .await;
    calm.tick(&redis).await;

    // A fourth, on either node, is over the cap; the socket is fine afterwards.
    let refused = alice_b.call("tools/call", sleep_call(10, 4)).await;
    assert_capped(&refused, "maxCallsInFlightPerIdentity", 3);
    let refused = alice_a.call("tools/call", sleep_call(10, 5)).await;
    assert_capped(&refused, "maxCallsInFlightPerIdentity", 3);
    assert!(
        alice_a
            .call("ping", json!({}))
            .await
            .get("result")
            .is_some()
    );

    // Closing a socket does not give its calls back: they still run.
    drop(alice_b);
    let mut alice_c = connect(&b, "alice").await;
    let refused = alice_c.call("tools/call", sleep_call(10, 6)).await;
    assert_capped(&refused, "maxCallsInFlightPerIdentity", 3);

    // Another identity is served meanwhile, on both nodes.
    for gw in [&a, &b] {
        let mut bob = connect(gw, "bob").await;
        let r = bob.call("tools/call", sleep_call(10, 7)).await;
        assert_eq!(r["result"]["isError"], false, "{r}");
    }
    calm.tick(&redis).await;

    // Once alice's calls are done, she may call again.
    let _ = (first, third);
    switchboard_harness::eventually_within(
        "alice's calls to finish and free her cap",
        Duration::from_secs(20),
        async || {
            let r = alice_c.call("tools/call", sleep_call(10, 8)).await;
            (r["result"]["isError"] == false).then_some(())
        },
    )
    .await;
    calm.tick(&redis).await;
    calm.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_tasks_and_their_bytes_are_capped_per_identity() {
    let redis = RedisServer::start().await;
    let _w = WorkerProcess::start(&redis, "w1", &["--builtin"]).await;
    let a = gateway(
        &redis,
        "a",
        &[
            "--max-tasks-per-identity",
            "4",
            "--max-task-bytes-per-identity",
            "1500",
        ],
    )
    .await;
    let mut calm = Calm::start(&a).await;
    let mut alice = connect(&a, "alice").await;
    alice.wait_for_tool("echo").await;
    let hello = WsClient::connect(&a.ws_url())
        .await
        .call("hello", json!({"token": token("dave")}))
        .await;
    let limits = &hello["result"]["limits"];
    assert_eq!(limits["maxTasksPerIdentity"], 4, "{hello}");
    assert_eq!(limits["maxTaskBytesPerIdentity"], 1500, "{hello}");

    // Each echo stores a result of about 1.1 KB: the second one goes over the bytes, and is
    // stored (bytes are checked when a call is submitted); the third is refused.
    let echo = |n: u64| {
        json!({"name": "echo", "arguments": {"n": n, "pad": "x".repeat(500)},
               "_meta": {"switchboard/cache": "bypass"}})
    };
    for n in 0..2 {
        let r = alice.call("tools/call", echo(n)).await;
        assert_eq!(r["result"]["isError"], false, "{r}");
    }
    let r = alice.call("tools/call", echo(2)).await;
    assert_capped(&r, "maxTaskBytesPerIdentity", 1500);
    calm.tick(&redis).await;

    // Small results: the count is the cap. Bob has two stored, then two more, then no more.
    let mut bob = connect(&a, "bob").await;
    for n in 0..4 {
        let r = bob
            .call("tools/call", json!({"name": "echo", "arguments": {"n": n}}))
            .await;
        assert_eq!(r["result"]["isError"], false, "{r}");
    }
    let r = bob
        .call("tools/call", json!({"name": "echo", "arguments": {"n": 9}}))
        .await;
    assert_capped(&r, "maxTasksPerIdentity", 4);
    // Another identity still calls.
    let mut erin = connect(&a, "erin").await;
    let r = erin
        .call("tools/call", json!({"name": "echo", "arguments": {"n": 1}}))
        .await;
    assert_eq!(r["result"]["isError"], false, "{r}");
    calm.tick(&redis).await;
    calm.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arguments_results_and_task_ttls_are_bounded() {
    let redis = RedisServer::start().await;
    let _w = WorkerProcess::start(&redis, "w1", &["--builtin"]).await;
    let a = gateway(
        &redis,
        "a",
        &[
            "--max-call-args-bytes",
            "1000",
            "--max-result-bytes",
            "400",
            "--task-ttl",
            "1m",
            "--max-task-ttl",
            "2m",
        ],
    )
    .await;
    let mut calm = Calm::start(&a).await;
    let mut alice = connect(&a, "alice").await;
    alice.wait_for_tool("echo").await;

    // Arguments over the bound: -32007, nothing stored or run.
    let r = alice
        .call(
            "tools/call",
            json!({"name": "echo", "arguments": {"pad": "x".repeat(1200)}}),
        )
        .await;
    assert_eq!(r["error"]["code"], -32007, "{r}");
    // Under it, with a result over the result bound: an isError result saying so.
    let r = alice
        .call(
            "tools/call",
            json!({"name": "echo", "arguments": {"pad": "x".repeat(500)}}),
        )
        .await;
    assert_eq!(r["result"]["isError"], true, "{r}");
    let text = r["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default();
    assert!(text.contains("over the limit of 400 bytes"), "{r}");
    // A small one is answered.
    let r = alice
        .call("tools/call", json!({"name": "echo", "arguments": {"a": 1}}))
        .await;
    assert_eq!(r["result"]["isError"], false, "{r}");
    calm.tick(&redis).await;

    // A task asking to live a day gets the longest allowed.
    let r = alice
        .call(
            "tools/call",
            json!({"name": "echo", "arguments": {"b": 2}, "task": {"ttl": 86_400_000}}),
        )
        .await;
    assert_eq!(r["result"]["task"]["ttl"], 120_000, "{r}");
    calm.tick(&redis).await;
    calm.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_capped_per_address_across_nodes() {
    let redis = RedisServer::start().await;
    let flags = ["--max-connections-per-address", "3"];
    let a = GatewayProcess::start(&redis.url(), "a", &flags).await;
    let b = GatewayProcess::start(&redis.url(), "b", &flags).await;
    // The well-behaved client, from its own address.
    let mut calm = WsClient::connect_from(&a.ws_url(), "127.0.0.1", &[]).await;
    calm.hello().await;
    calm.call("subscribe", json!({"topic": "calm:1"})).await;

    let mut held = Vec::new();
    for gw in [&a, &a, &b] {
        let mut c = WsClient::connect_from(&gw.ws_url(), "127.0.0.3", &[]).await;
        c.hello().await;
        held.push(c);
    }
    redis.publish("calm:1", r#"{"n":0}"#).await;
    // A fourth from that address, on either node: 429 before the upgrade.
    for gw in [&a, &b] {
        let (status, retry) = upgrade_from(gw, "127.0.0.3", &[]).await;
        assert_eq!(status, 429);
        assert_eq!(retry.as_deref(), Some("10"));
    }
    // Another address is not affected.
    let mut other = WsClient::connect_from(&b.ws_url(), "127.0.0.4", &[]).await;
    other.hello().await;
    // A connection that closes gives its place back.
    held.pop().unwrap().close(1000).await;
    eventually("a place for 127.0.0.3 again", || async {
        (upgrade_from(&a, "127.0.0.3", &[]).await.0 == 101).then_some(())
    })
    .await;
    redis.publish("calm:1", r#"{"n":1}"#).await;
    for n in 0..2 {
        assert_eq!(calm.next_event().await["data"]["n"], n);
    }
    assert!(metric(a.admin_addr, "switchboard_connections_capped_total").await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_capped_per_identity_across_nodes_and_a_dead_node_stops_counting() {
    let redis = RedisServer::start().await;
    let flags = [
        "--max-connections-per-identity",
        "2",
        "--connection-lease",
        "2s",
    ];
    let a = gateway(&redis, "a", &flags).await;
    let mut b = gateway(&redis, "b", &flags).await;
    let mut calm = Calm::start(&a).await;
    let hello = WsClient::connect(&a.ws_url())
        .await
        .call("hello", json!({"token": token("dave")}))
        .await;
    assert_eq!(
        hello["result"]["limits"]["maxConnectionsPerIdentity"], 2,
        "{hello}"
    );

    let _alice_a = connect(&a, "alice").await;
    let _alice_b = connect(&b, "alice").await;
    // A third socket of alice's, on either node: -32006 to its hello, then 1013.
    for gw in [&a, &b] {
        let mut c = WsClient::connect(&gw.ws_url()).await;
        let r = c.call("hello", json!({"token": token("alice")})).await;
        assert_capped(&r, "maxConnectionsPerIdentity", 2);
        assert_eq!(c.read_close().await, 1013);
    }
    // Bob is not affected.
    let _bob = connect(&a, "bob").await;
    calm.tick(&redis).await;

    // Node b dies with alice's socket: once its lease runs out, she may connect again.
    b.signal(nix::sys::signal::Signal::SIGKILL);
    b.wait().await;
    switchboard_harness::eventually_within(
        "the dead node's connection to stop counting",
        Duration::from_secs(15),
        async || {
            let mut c = WsClient::connect(&a.ws_url()).await;
            let r = c.call("hello", json!({"token": token("alice")})).await;
            r["result"]["session"].is_string().then_some(c)
        },
    )
    .await;
    calm.tick(&redis).await;
    calm.finish().await;
}
