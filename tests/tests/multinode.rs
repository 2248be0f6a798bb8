//! Several real gateway processes on one real Redis: topics are shared across nodes, every
//! event arrives exactly once, Redis subscriptions are reference-counted per node, a Redis
//! restart heals by itself, and SIGTERM drains with 1012.

use std::process::Stdio;

use nix::sys::signal::Signal;
use serde_json::{Value, json};
use switchboard_harness::{GatewayProcess, RedisServer, WsClient, eventually, metric};

/// `redis-cli PUBLISH`, exactly as an operator or a shell-script backend would.
async fn redis_cli_publish(redis: &RedisServer, topic: &str, payload: &str) -> i64 {
    let out = tokio::process::Command::new("redis-cli")
        .args(["-p", &redis.port.to_string(), "PUBLISH"])
        .arg(format!("sb:t:{{{topic}}}"))
        .arg(payload)
        .stderr(Stdio::inherit())
        .output()
        .await
        .expect("redis-cli not found: scripts/test installs redis-tools");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("PUBLISH answers a count")
}

/// Reads events until the `"marker"` event and returns those before it, so a duplicate or an
/// unexpected event shows up in the list.
async fn events_until_marker(c: &mut WsClient) -> Vec<Value> {
    let mut seen = Vec::new();
    loop {
        let ev = c.next_event().await;
        if ev["data"] == json!("marker") {
            return seen;
        }
        seen.push(ev["data"].clone());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_cross_nodes_exactly_once() {
    let redis = RedisServer::start().await;
    let a = GatewayProcess::start(&redis.url(), "node-a", &[]).await;
    let b = GatewayProcess::start(&redis.url(), "node-b", &[]).await;

    let mut on_a = WsClient::connect(&a.ws_url()).await;
    assert_eq!(on_a.hello().await["result"]["node"], "node-a");
    on_a.call("subscribe", json!({"topic": "room:1"})).await;
    let mut also_on_a = WsClient::connect(&a.ws_url()).await;
    also_on_a.hello().await;
    also_on_a
        .call("subscribe", json!({"topic": "room:1"}))
        .await;
    let mut on_b = WsClient::connect(&b.ws_url()).await;
    assert_eq!(on_b.hello().await["result"]["node"], "node-b");
    on_b.call("subscribe", json!({"topic": "room:1"})).await;

    // A client publishes on node B...
    let r = on_b
        .call(
            "publish",
            json!({"topic": "room:1", "data": {"from": "client on b"}}),
        )
        .await;
    assert!(r["result"].is_object(), "{r}");
    // ...a backend publishes with redis-cli (one Redis subscription per node: 2 receivers)...
    assert_eq!(
        redis_cli_publish(&redis, "room:1", r#"{"from":"backend"}"#).await,
        2
    );
    // ...a payload that is not JSON is dropped by both nodes...
    assert_eq!(redis_cli_publish(&redis, "room:1", "not json {").await, 2);
    // ...and a marker closes the sequence.
    assert_eq!(redis_cli_publish(&redis, "room:1", r#""marker""#).await, 2);

    let expected = vec![json!({"from": "client on b"}), json!({"from": "backend"})];
    for c in [&mut on_a, &mut also_on_a, &mut on_b] {
        assert_eq!(events_until_marker(c).await, expected);
    }
    for node in [&a, &b] {
        assert_eq!(
            metric(node.admin_addr, "switchboard_events_invalid_total").await,
            1.0
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_subscriptions_are_reference_counted() {
    let redis = RedisServer::start().await;
    let a = GatewayProcess::start(&redis.url(), "node-a", &[]).await;
    let b = GatewayProcess::start(&redis.url(), "node-b", &[]).await;
    let topic = "counted";

    let mut a1 = WsClient::connect(&a.ws_url()).await;
    let mut a2 = WsClient::connect(&a.ws_url()).await;
    let mut b1 = WsClient::connect(&b.ws_url()).await;
    for c in [&mut a1, &mut a2, &mut b1] {
        c.hello().await;
        c.call("subscribe", json!({"topic": topic})).await;
    }
    // One subscription per node, however many local subscribers.
    assert_eq!(redis.numsub(topic).await, 2);

    a1.call("unsubscribe", json!({"topic": topic})).await;
    assert_eq!(redis.numsub(topic).await, 2, "a2 still wants it on node A");
    a2.call("unsubscribe", json!({"topic": topic})).await;
    // unsubscribe answers after the node's Redis state is updated.
    assert_eq!(
        redis.numsub(topic).await,
        1,
        "node A must drop its subscription"
    );

    // A client that disconnects without unsubscribing releases it too.
    b1.close(1000).await;
    eventually("node B to drop its subscription", || async {
        (redis.numsub(topic).await == 0).then_some(())
    })
    .await;

    // And it comes back with the next subscriber.
    a1.call("subscribe", json!({"topic": topic})).await;
    assert_eq!(redis.numsub(topic).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_heals_without_client_action() {
    let mut redis = RedisServer::start().await;
    let a = GatewayProcess::start(&redis.url(), "node-a", &[]).await;
    let mut c = WsClient::connect(&a.ws_url()).await;
    c.hello().await;
    c.call("subscribe", json!({"topic": "survives"})).await;
    assert_eq!(redis.publish("survives", r#""before""#).await, 1);
    assert_eq!(c.next_event().await["data"], "before");

    redis.kill().await;
    a.wait_ready(false).await;
    // While Redis is away, the socket stays up and requests that need Redis fail cleanly.
    let r = c
        .call("publish", json!({"topic": "survives", "data": 1}))
        .await;
    assert_eq!(r["error"]["code"], -32603, "{r}");
    assert_eq!(c.call("ping", json!({})).await["result"], json!({}));

    redis.restart().await;
    a.wait_ready(true).await;
    // The node resubscribes by itself: a backend's PUBLISH reaches the node again.
    eventually("node A to resubscribe", || async {
        (redis.numsub("survives").await == 1).then_some(())
    })
    .await;
    assert_eq!(redis.publish("survives", r#""after""#).await, 1);
    assert_eq!(c.next_event().await["data"], "after");
    // Same socket, never closed.
    assert_eq!(c.call("ping", json!({})).await["result"], json!({}));
    let r = c
        .call("publish", json!({"topic": "survives", "data": "mine"}))
        .await;
    assert!(r["result"].is_object(), "{r}");
    assert_eq!(c.next_event().await["data"], "mine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_with_1012() {
    let redis = RedisServer::start().await;
    let mut a = GatewayProcess::start(&redis.url(), "node-a", &[]).await;
    let mut c1 = WsClient::connect(&a.ws_url()).await;
    c1.hello().await;
    c1.call("subscribe", json!({"topic": "t"})).await;
    let mut c2 = WsClient::connect(&a.ws_url()).await;
    c2.hello().await;

    a.signal(Signal::SIGTERM);
    assert_eq!(c1.read_close().await, 1012);
    assert_eq!(c2.read_close().await, 1012);
    let status = a.wait().await;
    assert!(status.success(), "gateway exited with {status}");
    eventually("the node's Redis subscription to go", || async {
        (redis.numsub("t").await == 0).then_some(())
    })
    .await;
}
