//! Switchboard on a real local Redis Cluster (`RedisCluster`: `redis-server --cluster-enabled
//! yes` on free ports, `redis-cli --cluster create`), with real `switchboard` processes on
//! `--redis-cluster <seeds>`:
//!
//! - the fixture itself: primaries, replicas, a `kill -9` failover, a slot migration that makes
//!   the old owner push `sunsubscribe`;
//! - topics over the three shards across two gateways, history recovery (`since`), session
//!   resume across gateways, backends' `SPUBLISH` and `FCALL sb_publish`, and
//!   `switchboard publish --redis-cluster`;
//! - tool calls through a worker process: result, cache hit, identical concurrent calls run
//!   once, a task collected on another gateway;
//! - the `sb_publish` library on every primary (and back on one that lost it);
//! - a primary killed with SIGKILL while two gateways' clients receive a history topic on it and
//!   calls run: every acknowledged event reaches every subscriber once and in order, every call
//!   is answered, the gateways stay up and turn ready again;
//! - a subscribed topic's slot migrated to another primary while events flow: the subscription
//!   follows it and no history event is lost.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use serde_json::{Value, json};
use switchboard_harness::cluster::RedisCluster;
use switchboard_harness::{
    DEADLINE, GatewayProcess, RedisTarget, WorkerProcess, WsClient, eventually, eventually_within,
    publish_to,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The history rule the gateways run with: every `h:` topic keeps its events.
const HISTORY: &str = "h:*=100000";
/// How many topics the spread test uses: enough that each of the three shards owns some.
const TOPICS: usize = 24;
/// A steady publisher's pace (not a wait for anything): events keep flowing before, during and
/// after a failover or a migration.
const PUBLISH_EVERY: Duration = Duration::from_millis(20);
/// How long the publisher waits before trying a refused publish again (its retry policy).
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// Events published before the cluster is disturbed, and after it has healed.
const BEFORE: usize = 40;
const AFTER: usize = 40;
/// Replication is asynchronous (docs/redis.md): a failover may lose the last writes the old
/// primary acknowledged. Only events acknowledged within that many of the kill (the last ones
/// before it, and replies already on their way) may be missing from the history afterwards (on
/// loopback a replica lags by far less).
const REPLICATION_SLACK: usize = 5;
/// A key in the slot of the `echo` tool's queues (`sb:q:{echo}@<digest>`).
const ECHO_QUEUE_SLOT: &str = "sb:q:{echo}";
/// How long the cluster tests may wait for one step that spans a failover (detection, election,
/// the gateways reconnecting and recovering).
const HEAL: Duration = Duration::from_secs(45);

fn gateway_flags() -> Vec<&'static str> {
    vec![
        "--history",
        HISTORY,
        "--registry-interval",
        "200ms",
        "--call-poll",
        "200ms",
    ]
}

async fn client(g: &GatewayProcess) -> WsClient {
    let mut c = WsClient::connect(&g.ws_url()).await;
    c.hello().await;
    c
}

fn meta(r: &Value) -> &Value {
    &r["result"]["_meta"]
}

/// Reads events until `n` have arrived: (topic, data, id) in arrival order.
async fn read_events(c: &mut WsClient, n: usize) -> Vec<(String, Value, Option<String>)> {
    let mut out = Vec::new();
    while out.len() < n {
        let ev = c.next_event().await;
        out.push((
            ev["topic"].as_str().unwrap_or_default().to_owned(),
            ev["data"].clone(),
            ev["id"].as_str().map(str::to_owned),
        ));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The fixture

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fixture_starts_fails_over_and_migrates() {
    let mut cluster = RedisCluster::start(3, 1).await;
    let t = cluster.topology().await;
    assert_eq!(t.primaries.len(), 3, "{t:?}");
    assert_eq!(t.replicas.len(), 3, "{t:?}");
    let with_replica: BTreeSet<u16> = t.replicas.values().map(|(_, p)| *p).collect();
    assert_eq!(with_replica.len(), 3, "one replica per primary: {t:?}");
    assert_eq!(cluster.urls().len(), 6);
    assert_eq!(cluster.seeds().split(',').count(), 6);

    // Keys of every shard through the cluster connection (it follows MOVED).
    let mut conn = cluster.connection().await;
    let mut owners = BTreeSet::new();
    for i in 0..30 {
        let key = format!("k:{i}");
        let () = redis::cmd("SET")
            .arg(&key)
            .arg(i)
            .query_async(&mut conn)
            .await
            .unwrap();
        owners.insert(cluster.primary_for_key(&key).await.port);
    }
    assert_eq!(owners.len(), 3, "30 keys over three shards");

    // A slot moved: the old owner pushes `sunsubscribe` to its sharded subscribers, the keys
    // move along.
    let from = cluster.primary_for_key("k:1").await;
    let to = cluster
        .primaries()
        .await
        .into_iter()
        .find(|p| *p != from)
        .unwrap();
    let channel = "sb:t:{k:1}";
    let mut sub = tokio::net::TcpStream::connect(("127.0.0.1", from.port))
        .await
        .unwrap();
    sub.write_all(
        format!(
            "*2\r\n$10\r\nSSUBSCRIBE\r\n${}\r\n{channel}\r\n",
            channel.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut seen = String::new();
    read_until(&mut sub, &mut seen, "ssubscribe").await;
    let slot = cluster.migrate_slot_of("k:1", &to).await;
    assert_eq!(cluster.primary_for_key("k:1").await, to);
    assert_eq!(cluster.slot_of(channel).await, slot);
    read_until(&mut sub, &mut seen, "sunsubscribe").await;
    let v: i64 = redis::cmd("GET")
        .arg("k:1")
        .query_async(&mut cluster.connection().await)
        .await
        .unwrap();
    assert_eq!(v, 1, "the key moved with its slot");

    // kill -9 of a primary: its replica takes over, with the replicated keys.
    let victim = cluster.primary_for_key("k:2").await;
    let mut on_victim = victim.connection().await;
    let acked: i64 = redis::cmd("WAIT")
        .arg(1)
        .arg(1000)
        .query_async(&mut on_victim)
        .await
        .unwrap();
    assert_eq!(acked, 1, "the replica has the writes");
    let killed = cluster.kill9_primary_of("k:2").await;
    assert_eq!(killed, victim);
    let healed = cluster.wait_failover().await;
    assert_eq!(healed.primaries.len(), 3, "{healed:?}");
    assert!(!healed.primaries.contains_key(&victim.port));
    let promoted = cluster.primary_for_key("k:2").await;
    assert_ne!(promoted, victim);
    assert_eq!(
        t.replicas.get(&promoted.port).map(|(_, p)| *p),
        Some(victim.port),
        "the killed primary's own replica took over"
    );
    assert_eq!(
        cluster.urls().len(),
        5,
        "the killed node is no seed any more"
    );
    let v: i64 = redis::cmd("GET")
        .arg("k:2")
        .query_async(&mut cluster.connection().await)
        .await
        .unwrap();
    assert_eq!(v, 2);
}

/// Reads from a raw RESP connection until `word` has been seen (after what was read already).
async fn read_until(s: &mut tokio::net::TcpStream, seen: &mut String, word: &str) {
    let from = seen.len();
    let mut buf = [0u8; 1024];
    tokio::time::timeout(DEADLINE, async {
        while !seen[from..].contains(word) {
            let n = s.read(&mut buf).await.unwrap();
            assert!(
                n > 0,
                "the node closed the connection; read so far: {seen:?}"
            );
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {word} in time; read: {seen:?}"));
}

// ---------------------------------------------------------------------------------------------
// Topics, history and sessions

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_history_and_sessions_span_shards_and_gateways() {
    let cluster = RedisCluster::start(3, 0).await;
    let a = GatewayProcess::start(&cluster, "gw-a", &gateway_flags()).await;
    let b = GatewayProcess::start(&cluster, "gw-b", &gateway_flags()).await;

    // Many topics, over all three shards.
    let topics: Vec<String> = (0..TOPICS).map(|i| format!("room:{i}")).collect();
    let mut shards = BTreeSet::new();
    for t in &topics {
        shards.insert(cluster.primary_for_topic(t).await.port);
    }
    assert_eq!(shards.len(), 3, "{TOPICS} topics on three shards");

    let mut sub = client(&b).await;
    for t in &topics {
        let r = sub.call("subscribe", json!({"topic": t})).await;
        assert!(r["result"].is_object(), "{r}");
    }
    // Each topic's sharded channel has gw-b's one subscription, on its own shard.
    for t in &topics {
        assert_eq!(cluster.shard_numsub(t).await, 1, "{t}");
    }
    let mut publisher = client(&a).await;
    for (i, t) in topics.iter().enumerate() {
        let r = publisher
            .call("publish", json!({"topic": t, "data": {"i": i}}))
            .await;
        assert!(r["result"].is_object(), "{r}");
    }
    let got: HashMap<String, Value> = read_events(&mut sub, TOPICS)
        .await
        .into_iter()
        .map(|(t, d, _)| (t, d))
        .collect();
    for (i, t) in topics.iter().enumerate() {
        assert_eq!(got.get(t), Some(&json!({"i": i})), "{t}: {got:?}");
    }

    // A backend's SPUBLISH reaches the one gateway node subscribed.
    assert_eq!(
        cluster.spublish("room:3", r#"{"from":"spublish"}"#).await,
        1
    );
    let (t, d, _) = read_events(&mut sub, 1).await.remove(0);
    assert_eq!((t.as_str(), d), ("room:3", json!({"from": "spublish"})));
    // `switchboard publish --redis-cluster` too.
    publish_to(&cluster, "room:7", r#"{"from":"cli"}"#, &[]).await;
    let (t, d, _) = read_events(&mut sub, 1).await.remove(0);
    assert_eq!((t.as_str(), d), ("room:7", json!({"from": "cli"})));

    // History: FCALL sb_publish from a backend, with its id; ids from gw-a's publishes.
    let r = sub.call("subscribe", json!({"topic": "h:feed"})).await;
    assert!(r["result"].is_object(), "{r}");
    let mut ids = Vec::new();
    for n in 0..10 {
        let r = publisher
            .call("publish", json!({"topic": "h:feed", "data": {"n": n}}))
            .await;
        ids.push(r["result"]["id"].as_str().expect("a history id").to_owned());
    }
    let backend_id = cluster.fcall_publish("h:feed", r#"{"n":10}"#).await;
    ids.push(backend_id.clone());
    let live = read_events(&mut sub, 11).await;
    let live_ids: Vec<String> = live.iter().map(|(_, _, id)| id.clone().unwrap()).collect();
    assert_eq!(live_ids, ids, "in order, with their ids");
    assert_eq!(live[10].1, json!({"n": 10}));
    let target = RedisTarget::from(&cluster);
    assert_eq!(target.history_len("h:feed").await, 11);

    // Recovery from `since` on the other gateway: exactly what followed.
    let mut late = client(&b).await;
    let r = late
        .call("subscribe", json!({"topic": "h:feed", "since": ids[3]}))
        .await;
    assert_eq!(r["result"]["recovered"], true, "{r}");
    let replayed: Vec<Value> = read_events(&mut late, 7)
        .await
        .into_iter()
        .map(|(_, d, _)| d)
        .collect();
    let want: Vec<Value> = (4..=10).map(|n| json!({"n": n})).collect();
    assert_eq!(replayed, want);

    // A session opened on gw-a resumes on gw-b, its subscription there and the gap replayed.
    let mut c1 = WsClient::connect(&a.ws_url()).await;
    let hello = c1.hello().await;
    let session = hello["result"]["session"].clone();
    c1.call("subscribe", json!({"topic": "h:resume"})).await;
    c1.call("subscribe", json!({"topic": "room:11"})).await;
    for n in 0..3 {
        publisher
            .call("publish", json!({"topic": "h:resume", "data": n}))
            .await;
    }
    let seen: Vec<Value> = read_events(&mut c1, 3)
        .await
        .into_iter()
        .map(|(_, d, _)| d)
        .collect();
    assert_eq!(seen, [json!(0), json!(1), json!(2)]);
    // The session's position is stored (every --session-refresh) before the socket goes.
    let sid = session.as_str().unwrap().to_owned();
    eventually("the session's position to be stored", || async {
        let f = target.session_fields(&sid).await;
        f.get("t:h:resume").filter(|v| !v.is_empty()).map(|_| ())
    })
    .await;
    c1.close(1000).await;
    drop(c1);
    for n in 3..6 {
        publisher
            .call("publish", json!({"topic": "h:resume", "data": n}))
            .await;
    }
    let mut c2 = WsClient::connect(&b.ws_url()).await;
    let id = c2.send_request("hello", json!({"session": session})).await;
    let mut replayed = Vec::new();
    let reply = loop {
        let v = c2.read_json().await;
        if v["id"] == json!(id) {
            break v;
        }
        assert_eq!(v["method"], "event", "{v}");
        replayed.push(v["params"]["data"].clone());
    };
    assert_eq!(reply["result"]["resumed"], true, "{reply}");
    assert_eq!(reply["result"]["node"], "gw-b");
    assert_eq!(replayed, [json!(3), json!(4), json!(5)], "exactly the gap");
    // Both subscriptions are live on gw-b now.
    publisher
        .call("publish", json!({"topic": "room:11", "data": "p"}))
        .await;
    publisher
        .call("publish", json!({"topic": "h:resume", "data": 6}))
        .await;
    let mut got: Vec<String> = read_events(&mut c2, 2)
        .await
        .into_iter()
        .map(|(t, d, _)| format!("{t}={d}"))
        .collect();
    got.sort();
    assert_eq!(got, ["h:resume=6", "room:11=\"p\""]);
}

// ---------------------------------------------------------------------------------------------
// Tool calls

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_calls_run_through_a_worker_on_the_cluster() {
    let cluster = RedisCluster::start(3, 0).await;
    let a = GatewayProcess::start(&cluster, "gw-a", &gateway_flags()).await;
    let b = GatewayProcess::start(&cluster, "gw-b", &gateway_flags()).await;
    let _w = WorkerProcess::start(&cluster, "w1", &["--builtin"]).await;
    let mut on_a = client(&a).await;
    let mut on_b = client(&b).await;
    on_a.wait_for_tool("sleep").await;
    on_b.wait_for_tool("sleep").await;

    // A result, then the same call on the other gateway is a cache hit.
    let r1 = on_a
        .call(
            "tools/call",
            json!({"name": "echo", "arguments": {"x": 1, "y": [1, 2]}}),
        )
        .await;
    assert_eq!(r1["result"]["isError"], false, "{r1}");
    assert_eq!(
        r1["result"]["structuredContent"],
        json!({"x": 1, "y": [1, 2]})
    );
    assert_eq!(meta(&r1)["switchboard/cached"], false, "{r1}");
    let r2 = on_b
        .call(
            "tools/call",
            json!({"name": "echo", "arguments": {"y": [1, 2], "x": 1}}),
        )
        .await;
    assert_eq!(meta(&r2)["switchboard/cached"], true, "{r2}");
    assert_eq!(
        meta(&r2)["switchboard/callHash"],
        meta(&r1)["switchboard/callHash"]
    );

    // Calls of many arguments (their call hashes over every shard) all answered.
    for i in 0..12 {
        let r = on_a
            .call("tools/call", json!({"name": "echo", "arguments": {"i": i}}))
            .await;
        assert_eq!(r["result"]["structuredContent"], json!({"i": i}), "{r}");
    }

    // Identical concurrent calls over both gateways run once (2 s: all are submitted well
    // within it).
    let mut sent = 0;
    for i in 0..8 {
        let c = if i % 2 == 0 { &mut on_a } else { &mut on_b };
        c.send_request(
            "tools/call",
            json!({"name": "sleep", "arguments": {"ms": 2000}}),
        )
        .await;
        sent += 1;
    }
    let mut results = Vec::new();
    for (c, want) in [(&mut on_a, sent / 2), (&mut on_b, sent / 2)] {
        let mut got = 0;
        while got < want {
            let v = c.read_json().await;
            if v.get("id").is_some() {
                assert!(v["result"]["structuredContent"].is_object(), "{v}");
                results.push(v["result"]["structuredContent"].clone());
                got += 1;
            }
        }
    }
    let first = &results[0];
    for r in &results {
        assert_eq!(
            r["started_at"], first["started_at"],
            "ran more than once: {results:?}"
        );
    }

    // A task started on gw-a, collected on gw-b.
    let r = on_a
        .call(
            "tools/call",
            json!({"name": "echo", "arguments": {"task": "t"}, "task": {"ttl": 60_000}}),
        )
        .await;
    let task = r["result"]["task"]["taskId"]
        .as_str()
        .unwrap_or_else(|| panic!("no task: {r}"))
        .to_owned();
    let status = eventually("the task to complete", async || {
        let g = on_b.call("tasks/get", json!({"taskId": task})).await;
        let s = g["result"]["status"].as_str()?.to_owned();
        (s != "working").then_some(s)
    })
    .await;
    assert_eq!(status, "completed");
    let res = on_b.call("tasks/result", json!({"taskId": task})).await;
    assert_eq!(
        res["result"]["structuredContent"],
        json!({"task": "t"}),
        "{res}"
    );
}

// ---------------------------------------------------------------------------------------------
// The function library

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_library_is_on_every_primary() {
    let cluster = RedisCluster::start(3, 0).await;
    let gw = GatewayProcess::start(&cluster, "gw-a", &gateway_flags()).await;
    let primaries = cluster.primaries().await;
    assert_eq!(primaries.len(), 3);
    for p in &primaries {
        let libs = cluster.libraries_on(p).await;
        assert!(
            libs.iter().any(|l| l == "switchboard"),
            "{}: {libs:?}",
            p.port
        );
    }
    // A primary that lost it (flushed, or a new, empty one) gets it again: at the gateway's
    // next publish with history there (`Function not found`: loaded, and the publish sent
    // again), if not at its periodic check first.
    let p = &primaries[1];
    let () = redis::cmd("FUNCTION")
        .arg("FLUSH")
        .query_async(&mut p.connection().await)
        .await
        .unwrap();
    assert!(cluster.libraries_on(p).await.is_empty());
    let mut topic = None;
    for i in 0.. {
        let t = format!("h:lib:{i}");
        if cluster.primary_for_topic(&t).await == *p {
            topic = Some(t);
            break;
        }
    }
    let topic = topic.unwrap();
    let mut c = client(&gw).await;
    let r = c
        .call(
            "publish",
            json!({"topic": topic, "data": {"after": "flush"}}),
        )
        .await;
    assert!(r["result"]["id"].is_string(), "{r}");
    let libs = cluster.libraries_on(p).await;
    assert!(libs.iter().any(|l| l == "switchboard"), "{libs:?}");
    assert_eq!(RedisTarget::from(&cluster).history_len(&topic).await, 1);
}

// ---------------------------------------------------------------------------------------------
// Failover and migration under load

/// A client publishing `{"n": 0}`, `{"n": 1}`, ... on `topic` through a gateway at a steady
/// pace, retrying a refused publish (same `n`) after [`RETRY_PAUSE`]: the ids acknowledged.
struct Publisher {
    acked: tokio::sync::watch::Receiver<Vec<String>>,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<(WsClient, usize)>,
}

impl Publisher {
    async fn start(gw: &GatewayProcess, topic: &str) -> Publisher {
        let mut c = client(gw).await;
        let (tx, acked) = tokio::sync::watch::channel(Vec::new());
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let topic = topic.to_owned();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(PUBLISH_EVERY);
            let (mut n, mut refused) = (0usize, 0usize);
            while !*stopped.borrow_and_update() {
                tick.tick().await;
                let r = c
                    .call("publish", json!({"topic": topic, "data": {"n": n}}))
                    .await;
                match r["result"]["id"].as_str() {
                    Some(id) => {
                        tx.send_modify(|v| v.push(id.to_owned()));
                        n += 1;
                    }
                    None => {
                        assert!(r["error"]["code"].is_i64(), "neither id nor error: {r}");
                        refused += 1;
                        tokio::time::sleep(RETRY_PAUSE).await;
                    }
                }
            }
            (c, refused)
        });
        Publisher { acked, stop, task }
    }

    /// Waits until `count` events in all are acknowledged.
    async fn wait_acked(&mut self, count: usize, within: Duration) -> Vec<String> {
        tokio::time::timeout(within, self.acked.wait_for(|v| v.len() >= count))
            .await
            .unwrap_or_else(|_| panic!("{count} publishes not acknowledged in time"))
            .expect("the publisher stopped")
            .clone()
    }

    /// Stops it: every id acknowledged, in order, and how many publishes were refused.
    async fn stop(self) -> (Vec<String>, usize) {
        let _ = self.stop.send(true);
        let (_c, refused) = self.task.await.expect("the publisher failed");
        let acked = self.acked.borrow().clone();
        (acked, refused)
    }
}

/// Reads `c`'s events of `topic` until the one with id `last`: their ids, in order.
async fn ids_until(c: &mut WsClient, topic: &str, last: &str, within: Duration) -> Vec<String> {
    let mut ids = Vec::new();
    tokio::time::timeout(within, async {
        while ids.last().map(String::as_str) != Some(last) {
            let ev = c.next_event().await;
            if ev["topic"] == topic {
                ids.push(ev["id"].as_str().expect("a history event's id").to_owned());
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{last} not received in time; got {} events", ids.len()));
    ids
}

/// The ids of `topic`'s history, oldest first (`XRANGE` on the cluster).
async fn history_ids(cluster: &RedisCluster, topic: &str) -> Vec<String> {
    let entries: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
        .arg(format!("sb:h:{{{topic}}}"))
        .arg("-")
        .arg("+")
        .query_async(&mut cluster.connection().await)
        .await
        .unwrap();
    entries.into_iter().map(|(id, _)| id).collect()
}

/// Calls `echo` over and over on `gw` until stopped: each call answered with a result or a
/// JSON-RPC error (a read that hangs fails the test); (results, errors).
fn caller(
    gw: &GatewayProcess,
) -> (
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<(usize, usize)>,
) {
    let url = gw.ws_url();
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(async move {
        let mut c = WsClient::connect(&url).await;
        c.hello().await;
        c.wait_for_tool("echo").await;
        let (mut ok, mut failed, mut i) = (0, 0, 0);
        while !*stopped.borrow_and_update() {
            i += 1;
            let r = c
                .call("tools/call", json!({"name": "echo", "arguments": {"i": i}}))
                .await;
            if r["result"]["structuredContent"] == json!({"i": i}) {
                ok += 1;
            } else {
                assert!(
                    r["error"]["message"].is_string() || r["result"]["isError"] == true,
                    "neither a result nor a clear error: {r}"
                );
                failed += 1;
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
        // After the cluster healed, a call gets its result, once the catalogue lists the tool
        // again (with the tests' 200 ms heartbeats, the worker's announcement can expire while
        // its shard is down: "unknown tool" meanwhile).
        c.wait_for_tool("echo").await;
        let r = c
            .call(
                "tools/call",
                json!({"name": "echo", "arguments": {"after": true}}),
            )
            .await;
        assert_eq!(
            r["result"]["structuredContent"],
            json!({"after": true}),
            "{r}"
        );
        (ok, failed)
    });
    (stop, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_killed_under_load_loses_no_acknowledged_event() {
    let mut cluster = RedisCluster::start(3, 1).await;
    // The shard killed holds the history topic and the `echo` tool's queue
    // (`sb:q:{echo}@<digest>`: the slot of `{echo}`), so both the events and the calls lose it.
    let victim = cluster.primary_for_key(ECHO_QUEUE_SLOT).await;
    let mut topic = None;
    for i in 0.. {
        let t = format!("h:kill:{i}");
        if cluster.primary_for_topic(&t).await == victim {
            topic = Some(t);
            break;
        }
    }
    let topic = topic.unwrap();
    let topic = topic.as_str();
    let a = GatewayProcess::start(&cluster, "gw-a", &gateway_flags()).await;
    let b = GatewayProcess::start(&cluster, "gw-b", &gateway_flags()).await;
    let _w = WorkerProcess::start(&cluster, "w1", &["--builtin"]).await;

    let mut subs = Vec::new();
    for g in [&a, &b] {
        let mut s = client(g).await;
        let r = s.call("subscribe", json!({"topic": topic})).await;
        assert!(r["result"].is_object(), "{r}");
        subs.push(s);
    }
    let (stop_calls, calls) = caller(&b);
    let mut publisher = Publisher::start(&a, topic).await;
    publisher.wait_acked(BEFORE, DEADLINE).await;

    let killed = cluster.kill9_primary_of(&format!("sb:t:{{{topic}}}")).await;
    assert_eq!(killed, victim);
    let at_kill = publisher.acked.borrow().len();
    let healed = cluster.wait_failover().await;
    assert!(!healed.primaries.contains_key(&victim.port));
    a.wait_ready(true).await;
    b.wait_ready(true).await;
    let acked_now = publisher.acked.borrow().len();
    publisher.wait_acked(acked_now + AFTER, HEAL).await;
    let (acked, refused) = publisher.stop().await;
    let _ = stop_calls.send(true);
    eprintln!("published {} ({refused} refused, retried)", acked.len());

    // What the history holds after the failover is what every subscriber got: each event
    // once, in order, the acknowledged ones among them.
    let history = history_ids(&cluster, topic).await;
    let last = history.last().expect("a history").clone();
    for (s, name) in subs.iter_mut().zip(["gw-a", "gw-b"]) {
        let got = ids_until(s, topic, &last, HEAL).await;
        assert_eq!(
            got, history,
            "{name}'s subscriber: not the history, once and in order"
        );
    }
    let kept: BTreeSet<&String> = history.iter().collect();
    let lost: Vec<(usize, &String)> = acked
        .iter()
        .enumerate()
        .filter(|(_, id)| !kept.contains(id))
        .collect();
    let window = at_kill.saturating_sub(REPLICATION_SLACK)..at_kill + REPLICATION_SLACK;
    assert!(
        lost.iter().all(|(i, _)| window.contains(i)),
        "acknowledged events lost outside the replication window {window:?}: {lost:?}"
    );
    if !lost.is_empty() {
        eprintln!("lost to asynchronous replication: {lost:?}");
    }
    // Every call was answered (a result, or an error saying so), and calls work again.
    let (ok, failed) = tokio::time::timeout(HEAL, calls)
        .await
        .expect("the calls did not finish")
        .expect("a call was not answered");
    eprintln!("calls: {ok} results, {failed} errors");
    assert!(ok > 0, "no call got its result");
    // The gateways are up and ready.
    for g in [&a, &b] {
        g.wait_ready(true).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migrated_slot_takes_its_subscriptions_along() {
    let topic = "h:move";
    let cluster = RedisCluster::start(3, 0).await;
    let a = GatewayProcess::start(&cluster, "gw-a", &gateway_flags()).await;
    let b = GatewayProcess::start(&cluster, "gw-b", &gateway_flags()).await;
    let mut sub = client(&b).await;
    let r = sub.call("subscribe", json!({"topic": topic})).await;
    assert!(r["result"].is_object(), "{r}");
    // A plain topic on the same slot too (no history: only the live path).
    let plain = "move";
    let plain_key = format!("sb:t:{{{plain}}}");
    let from = cluster.primary_for_topic(topic).await;
    let mut publisher = Publisher::start(&a, topic).await;
    publisher.wait_acked(BEFORE, DEADLINE).await;

    let to = cluster
        .primaries()
        .await
        .into_iter()
        .find(|p| *p != from)
        .unwrap();
    cluster
        .migrate_slot_of(&format!("sb:t:{{{topic}}}"), &to)
        .await;
    assert_eq!(cluster.primary_for_topic(topic).await, to);
    // gw-b's subscription followed the slot: it is on the new owner.
    eventually("gw-b to subscribe on the new owner", || async {
        (cluster.shard_numsub(topic).await == 1).then_some(())
    })
    .await;
    let acked_now = publisher.acked.borrow().len();
    publisher.wait_acked(acked_now + AFTER, HEAL).await;
    let (acked, refused) = publisher.stop().await;
    eprintln!("published {} ({refused} refused, retried)", acked.len());
    let history = history_ids(&cluster, topic).await;
    let got = ids_until(&mut sub, topic, history.last().unwrap(), HEAL).await;
    assert_eq!(got, history, "not the history, once and in order");
    let kept: BTreeSet<&String> = history.iter().collect();
    assert!(
        acked.iter().all(|id| kept.contains(id)),
        "an acknowledged event was lost"
    );

    // A topic without history whose slot moves: live events after the move reach the
    // subscriber (its slot is moved the same way).
    let mut live = client(&a).await;
    live.call("subscribe", json!({"topic": plain})).await;
    let owner = cluster.primary_for_key(&plain_key).await;
    let other = cluster
        .primaries()
        .await
        .into_iter()
        .find(|p| *p != owner)
        .unwrap();
    cluster.migrate_slot_of(&plain_key, &other).await;
    eventually_within("a live event after the move", HEAL, async || {
        // SPUBLISH answers how many nodes got it: 1 once gw-a subscribed on the new owner.
        (cluster.spublish(plain, r#""after""#).await == 1).then_some(())
    })
    .await;
    let ev = live.next_event().await;
    assert_eq!(ev["data"], "after");
}
