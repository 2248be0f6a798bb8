//! Bounds on what one client or one backend can make a node hold or relay, against real gateway
//! processes and Redis: the outbound queue bounded in bytes as well as frames, events over
//! `--max-event-bytes` (live, replayed, or published by a client), and published data nested
//! deeper than `--max-data-depth`. Each time, a well-behaved client on the same node keeps
//! receiving everything.

use serde_json::{Value, json};
use switchboard_harness::{GatewayProcess, RedisServer, WsClient, metric, upgrade_from};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_that_does_not_read_is_bounded_in_bytes() {
    const QUEUE_BYTES: usize = 1 << 20;
    // The publisher stays at most this many events ahead of what the fast client has read.
    const LEAD: u64 = 8;
    const N: u64 = 300;
    let redis = RedisServer::start().await;
    // A frame bound no test could reach: only the byte bound can close the slow socket.
    let gw = GatewayProcess::start(
        &redis.url(),
        "gw",
        &[
            "--outbound-queue",
            "1000000",
            "--outbound-queue-bytes",
            &QUEUE_BYTES.to_string(),
        ],
    )
    .await;
    let url = gw.ws_url();
    let mut fast = WsClient::connect(&url).await;
    let hello = fast.hello().await;
    assert_eq!(
        hello["result"]["limits"]["outboundQueueBytes"], QUEUE_BYTES,
        "{hello}"
    );
    fast.call("subscribe", json!({"topic": "firehose"})).await;
    // The slow client has a tiny receive buffer and never reads while events flow.
    let mut slow = WsClient::slow_reader(&url).await;
    slow.hello().await;
    slow.call("subscribe", json!({"topic": "firehose"})).await;

    // 60 KB events from a backend: 300 of them (18 MB) are far more than the slow client's
    // socket buffers and its queue's byte bound hold.
    let pad = "x".repeat(60 * 1024);
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
        redis
            .publish("firehose", &json!({"n": i, "pad": pad}).to_string())
            .await;
    }
    let _fast = drain
        .await
        .expect("fast client received every event in order");
    assert_eq!(slow.read_close().await, 4008);
    assert!(metric(gw.admin_addr, "switchboard_slow_consumer_closes_total").await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_deeply_nested_events_are_not_relayed() {
    let redis = RedisServer::start().await;
    let gw = GatewayProcess::start(
        &redis.url(),
        "gw",
        &[
            "--max-event-bytes",
            "10000",
            "--max-data-depth",
            "8",
            "--history",
            "h:*=100",
        ],
    )
    .await;
    let mut c = WsClient::connect(&gw.ws_url()).await;
    let hello = c.hello().await;
    let limits = &hello["result"]["limits"];
    assert_eq!(limits["maxEventBytes"], 10_000, "{hello}");
    assert_eq!(limits["maxDataDepth"], 8, "{hello}");
    c.call("subscribe", json!({"topic": "t"})).await;
    c.call("subscribe", json!({"topic": "h:big"})).await;

    // A backend's event over the bound is dropped and counted; the next one arrives.
    let big = json!({"pad": "x".repeat(20_000)}).to_string();
    redis.publish("t", &big).await;
    redis.publish("t", r#""after the big one""#).await;
    assert_eq!(c.next_event().await["data"], "after the big one");
    assert_eq!(
        metric(gw.admin_addr, "switchboard_events_oversized_total").await,
        1.0
    );
    // Also with history: not delivered live, nor on replay, and the replay goes past it.
    redis.history_publish("h:big", &big).await;
    let small = redis.history_publish("h:big", r#""small""#).await;
    assert_eq!(c.next_event().await["data"], "small");
    let mut late = WsClient::connect(&gw.ws_url()).await;
    late.hello().await;
    let r = late
        .call("subscribe", json!({"topic": "h:big", "since": "0-0"}))
        .await;
    assert_eq!(r["result"]["recovered"], true, "{r}");
    assert_eq!(r["result"]["position"], small.as_str(), "{r}");
    let ev = late.next_event().await;
    assert_eq!(
        (ev["data"].clone(), ev["id"].clone()),
        (json!("small"), json!(small))
    );

    // A client's: -32007 over the bound, -32602 nested too deep; both name the limit.
    let r = c
        .call(
            "publish",
            json!({"topic": "t", "data": {"pad": "x".repeat(12_000)}}),
        )
        .await;
    assert_eq!(r["error"]["code"], -32007, "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("maxEventBytes"),
        "{r}"
    );
    let nested = |depth: usize| -> Value {
        let text = format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
        serde_json::from_str(&text).unwrap()
    };
    let r = c
        .call("publish", json!({"topic": "t", "data": nested(9)}))
        .await;
    assert_eq!(r["error"]["code"], -32602, "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("maxDataDepth"),
        "{r}"
    );
    // 4 000 levels (under the byte bound): refused just the same, and the node is fine.
    let deep = format!(
        r#"{{"jsonrpc":"2.0","id":99,"method":"publish","params":{{"topic":"t","data":{}1{}}}}}"#,
        "[".repeat(4_000),
        "]".repeat(4_000)
    );
    c.send_text(deep).await;
    let r = loop {
        let v = c.read_json().await;
        if v["id"] == 99 {
            break v;
        }
    };
    assert_eq!(r["error"]["code"], -32602, "{r}");
    // At the limit it goes through, and arrives.
    let r = c
        .call("publish", json!({"topic": "t", "data": nested(8)}))
        .await;
    assert!(r["result"].is_object(), "{r}");
    assert_eq!(c.next_event().await["data"], nested(8));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_over_its_request_rate_is_told_then_closed() {
    let redis = RedisServer::start().await;
    let gw = GatewayProcess::start(
        &redis.url(),
        "gw",
        &[
            "--rate-requests",
            "1",
            "--rate-requests-burst",
            "20",
            "--rate-close-after",
            "30",
        ],
    )
    .await;
    let mut watcher = WsClient::connect(&gw.ws_url()).await;
    let hello = watcher.hello().await;
    assert_eq!(hello["result"]["limits"]["rateRequests"], 1, "{hello}");
    assert_eq!(
        hello["result"]["limits"]["rateRequestsBurst"], 20,
        "{hello}"
    );
    watcher.call("subscribe", json!({"topic": "t"})).await;

    let mut greedy = WsClient::connect(&gw.ws_url()).await;
    greedy.hello().await; // one of its 20
    let mut answers = Vec::new();
    for _ in 0..25 {
        answers.push(greedy.call("ping", json!({})).await);
    }
    let ok = answers.iter().filter(|r| r.get("result").is_some()).count();
    // The burst, less the hello (and one more if a second passed meanwhile).
    assert!((19..=20).contains(&ok), "{ok}: {answers:?}");
    let refused = answers.last().unwrap();
    assert_eq!(refused["error"]["code"], -32003, "{refused}");
    let wait = refused["error"]["data"]["retryAfterMs"].as_u64().unwrap();
    assert!(
        (1..=1000).contains(&wait),
        "one request's worth at 1/s: {refused}"
    );
    // Waiting as told works.
    tokio::time::sleep(std::time::Duration::from_millis(wait + 50)).await;
    assert!(greedy.call("ping", json!({})).await.get("result").is_some());
    // The others on the node are not touched.
    redis.publish("t", "1").await;
    assert_eq!(watcher.next_event().await["data"], 1);
    assert!(
        watcher
            .call("ping", json!({}))
            .await
            .get("result")
            .is_some()
    );
    // Hammering on regardless closes the connection with 4029; unreadable messages count too.
    for i in 0..40 {
        if i % 2 == 0 {
            greedy.send_text("not json at all").await;
        } else {
            greedy
                .send_text(json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}).to_string())
                .await;
        }
    }
    assert_eq!(greedy.read_close().await, 4029);
    assert!(metric(gw.admin_addr, "switchboard_requests_rate_limited_total").await >= 30.0);
    redis.publish("t", "2").await;
    assert_eq!(watcher.next_event().await["data"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_connections_are_limited_per_source_address() {
    let redis = RedisServer::start().await;
    let gw = GatewayProcess::start(
        &redis.url(),
        "gw",
        &[
            "--rate-connections",
            "1",
            "--rate-connections-burst",
            "3",
            "--trusted-proxy",
            "127.0.0.5",
        ],
    )
    .await;
    let mut watcher = WsClient::connect(&gw.ws_url()).await; // 127.0.0.1's first
    watcher.hello().await;
    watcher.call("subscribe", json!({"topic": "t"})).await;
    for _ in 0..2 {
        assert_eq!(upgrade_from(&gw, "127.0.0.1", &[]).await.0, 101);
    }
    let (status, retry) = upgrade_from(&gw, "127.0.0.1", &[]).await;
    assert_eq!(status, 429);
    assert_eq!(retry.as_deref(), Some("1"));
    // Another address has its own budget; the connected client is not touched.
    assert_eq!(upgrade_from(&gw, "127.0.0.2", &[]).await.0, 101);
    redis.publish("t", "1").await;
    assert_eq!(watcher.next_event().await["data"], 1);
    // Through a trusted proxy, each forwarded client has its own budget; an untrusted peer's
    // X-Forwarded-For is ignored.
    for _ in 0..3 {
        let (status, _) =
            upgrade_from(&gw, "127.0.0.5", &[("X-Forwarded-For", "198.51.100.1")]).await;
        assert_eq!(status, 101);
    }
    let (status, _) = upgrade_from(&gw, "127.0.0.5", &[("X-Forwarded-For", "198.51.100.1")]).await;
    assert_eq!(status, 429);
    let (status, _) = upgrade_from(&gw, "127.0.0.5", &[("X-Forwarded-For", "198.51.100.2")]).await;
    assert_eq!(status, 101);
    let (status, _) = upgrade_from(&gw, "127.0.0.1", &[("X-Forwarded-For", "198.51.100.3")]).await;
    assert_eq!(
        status, 429,
        "127.0.0.1 is not a proxy: its own (spent) budget counts"
    );
    assert!(metric(gw.admin_addr, "switchboard_connections_rate_limited_total").await >= 3.0);
}
