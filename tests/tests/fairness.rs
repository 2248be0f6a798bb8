//! Fair workers, against real gateway and worker processes on a real Redis: one identity's
//! queue of long calls does not delay another identity's short call (the worker fetches ahead
//! into its backlog, starts jobs round-robin across owners, and caps each owner's running
//! calls), and the jobs waiting in a worker's backlog keep heartbeating, so no other worker
//! takes them over.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchboard_core::auth::mint;
use switchboard_harness::{GatewayProcess, Read, RedisServer, WorkerProcess, WsClient, eventually};

const SECRET: &str = "fairness-secret-of-at-least-32-bytes";
/// The worker's slots; its default cap per identity is half of them: 1.
const CONCURRENCY: &str = "2";
/// More than the worker's slots.
const ALICE_CALLS: u64 = 4;
/// Long enough that none of them can end during the test.
const LONG_MS: u64 = 60_000;
/// How long Bob's call may take at most: it should start within one fetch (`--fetch-block`,
/// 200 ms in the harness); today's FIFO worker would start it after Alice's calls, a minute on.
const BOB_ANSWERED_WITHIN: Duration = Duration::from_secs(20);

/// A client that said `hello` with a token for `sub`.
async fn connect(gw: &GatewayProcess, sub: &str) -> WsClient {
    let token = mint(SECRET.as_bytes(), sub, None).unwrap();
    let mut c = WsClient::connect(&gw.ws_url()).await;
    let r = c.call("hello", json!({ "token": token })).await;
    assert!(r["result"]["session"].is_string(), "hello failed: {r}");
    c.wait_for_tool("sleep").await;
    c
}

/// The stream of the `sleep` tool's queue (`sb:q:{sleep}@<digest>`), once it exists.
async fn sleep_queue(redis: &RedisServer) -> String {
    eventually("the sleep queue to exist", || async {
        let mut conn = redis.connection().await;
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("sb:q:{sleep}@*")
            .query_async(&mut conn)
            .await
            .ok()?;
        keys.into_iter().next()
    })
    .await
}

/// `XPENDING <queue> workers`: count, first id, last id, [consumer, count as text].
type PendingSummary = (
    u64,
    Option<String>,
    Option<String>,
    Option<Vec<(String, String)>>,
);

/// (entries in the queue, entries fetched and not finished per worker).
async fn queue_state(redis: &RedisServer, queue: &str) -> (u64, Vec<(String, u64)>) {
    let mut conn = redis.connection().await;
    let len: u64 = redis::cmd("XLEN")
        .arg(queue)
        .query_async(&mut conn)
        .await
        .unwrap();
    let (_, _, _, consumers): PendingSummary = redis::cmd("XPENDING")
        .arg(queue)
        .arg("workers")
        .query_async(&mut conn)
        .await
        .unwrap();
    let consumers = consumers
        .unwrap_or_default()
        .into_iter()
        .map(|(c, n)| (c, n.parse().unwrap()))
        .collect();
    (len, consumers)
}

async fn task_status(c: &mut WsClient, id: &str) -> Value {
    let g = c.call("tasks/get", json!({ "taskId": id })).await;
    g["result"]["status"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_of_long_calls_does_not_delay_another_identity() {
    let redis = RedisServer::start().await;
    let _w = WorkerProcess::start(&redis, "w1", &["--builtin", "--concurrency", CONCURRENCY]).await;
    let gw = GatewayProcess::start_secured(
        &redis.url(),
        "gw",
        &[
            "--jwt-secret",
            SECRET,
            "--allow-tools",
            "sleep",
            "--registry-interval",
            "100ms",
            "--call-poll",
            "200ms",
        ],
    )
    .await;
    let mut alice = connect(&gw, "alice").await;
    let mut bob = connect(&gw, "bob").await;

    // Alice queues more long calls than the worker has slots (distinct: none joins another).
    let mut alice_tasks = Vec::new();
    for i in 0..ALICE_CALLS {
        let r = alice
            .call(
                "tools/call",
                json!({"name": "sleep", "arguments": {"ms": LONG_MS + i}, "task": {}}),
            )
            .await;
        let id = r["result"]["task"]["taskId"].as_str().expect("a task");
        alice_tasks.push(id.to_owned());
    }
    // All of them queued, and the worker holding at least as many as it has slots: its slots
    // are Alice's to take (a FIFO worker runs two of them now).
    let queue = sleep_queue(&redis).await;
    eventually("alice's calls to be queued and taken", || async {
        let (len, consumers) = queue_state(&redis, &queue).await;
        let taken: u64 = consumers.iter().map(|(_, n)| n).sum();
        (len == ALICE_CALLS && taken >= 2).then_some(())
    })
    .await;

    // Bob's short call is answered while every one of Alice's calls is still running or queued.
    let asked = Instant::now();
    let call = bob
        .send_request(
            "tools/call",
            json!({"name": "sleep", "arguments": {"ms": 10}}),
        )
        .await;
    let r = loop {
        assert!(
            asked.elapsed() < BOB_ANSWERED_WITHIN,
            "bob's call was not answered within {BOB_ANSWERED_WITHIN:?}: it waits behind alice's"
        );
        // Short reads (a read is cancel-safe), so the bound above is the one that fails.
        match tokio::time::timeout(Duration::from_millis(250), bob.read()).await {
            Ok(Read::Json(v)) if v["id"] == json!(call) => break v,
            Ok(Read::Json(_)) | Err(_) => continue,
            Ok(other) => panic!("bob's connection ended: {other:?}"),
        }
    };
    let waited = asked.elapsed();
    assert_eq!(r["result"]["isError"], false, "{r}");
    assert_eq!(r["result"]["structuredContent"]["slept_ms"], 10, "{r}");
    for id in &alice_tasks {
        assert_eq!(
            task_status(&mut alice, id).await,
            "working",
            "alice's task {id} ended before bob was answered"
        );
    }
    eprintln!("bob was answered after {waited:?}");
    // The worker took all of Alice's calls (into its backlog), plus Bob's.
    let (_, consumers) = queue_state(&redis, &queue).await;
    assert_eq!(consumers, [("w1".to_owned(), ALICE_CALLS)], "{consumers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlogged_jobs_keep_heartbeating_and_run_one_at_a_time() {
    let redis = RedisServer::start().await;
    // Silent for a second: another worker takes a job over.
    let flags = [
        "--builtin",
        "--concurrency",
        CONCURRENCY,
        "--visibility-timeout",
        "1s",
    ];
    let w1 = WorkerProcess::start(&redis, "w1", &flags).await;
    let gw = GatewayProcess::start(
        &redis.url(),
        "gw",
        &["--registry-interval", "100ms", "--call-poll", "200ms"],
    )
    .await;
    let mut c = WsClient::connect(&gw.ws_url()).await;
    c.hello().await;
    c.wait_for_tool("sleep").await;

    // Three calls of one (anonymous) identity: one runs (the cap), two wait in w1's backlog,
    // the last for two seconds, twice the visibility timeout.
    let mut calls = Vec::new();
    for i in 0..3u64 {
        let id = c
            .send_request(
                "tools/call",
                json!({"name": "sleep", "arguments": {"ms": 1000 + i}}),
            )
            .await;
        calls.push(id);
    }
    let queue = sleep_queue(&redis).await;
    eventually("w1 to hold all three jobs", || async {
        let (_, consumers) = queue_state(&redis, &queue).await;
        (consumers == [(w1.id.clone(), 3)]).then_some(())
    })
    .await;
    // A second worker, idle, reclaiming every half second what went silent.
    let _w2 = WorkerProcess::start(&redis, "w2", &flags).await;

    let mut started = Vec::new();
    while started.len() < calls.len() {
        let v = c.read_json().await;
        if !v["id"].as_u64().is_some_and(|id| calls.contains(&id)) {
            continue;
        }
        let out = &v["result"]["structuredContent"];
        assert_eq!(out["worker"], "w1", "a backlogged job was taken over: {v}");
        started.push(out["started_at"].as_u64().unwrap());
    }
    started.sort();
    for pair in started.windows(2) {
        assert!(
            pair[1] - pair[0] >= 1000,
            "one identity ran two calls at once on a worker capped at one: {started:?}"
        );
    }
}
