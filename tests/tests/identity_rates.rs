//! Per-identity budgets of publishes and tool calls, held across nodes (`--rate-publishes`,
//! `--rate-calls`): one identity with sockets on two gateway processes sharing one Redis gets
//! one budget (plus at most a lease per node), refusals are -32003 with `retryAfterMs`, and
//! another identity on the same nodes is not touched. Also the budget store itself, alike on
//! Redis and in memory.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchboard_core::auth::mint;
use switchboard_core::backend::{Budget, Rate};
use switchboard_harness::{
    GatewayProcess, Kind, RedisServer, TestBackend, WorkerProcess, WsClient, every_backend, metric,
};

const SECRET: &str = "identity-rates-secret";

/// How long each test's sockets send as fast as they can.
const HAMMER: Duration = Duration::from_millis(1500);

/// A client of `gw` that said `hello` as `sub`.
async fn connect(gw: &GatewayProcess, sub: &str) -> (WsClient, Value) {
    let token = mint(SECRET.as_bytes(), sub, None).unwrap();
    let mut c = WsClient::connect(&gw.ws_url()).await;
    let hello = c.call("hello", json!({ "token": token })).await;
    assert!(
        hello["result"]["session"].is_string(),
        "hello failed: {hello}"
    );
    (c, hello)
}

/// What one socket's requests got.
#[derive(Debug, Default)]
struct Tally {
    accepted: u64,
    refused: u64,
    /// `retryAfterMs` of every refusal.
    waits: Vec<u64>,
    /// Anything else: fails the test.
    other: Vec<Value>,
}

/// Sends `method` with `params(i)` from `c` as fast as replies come back, from the moment
/// `go` opens until `HAMMER` has passed.
async fn hammer(
    mut c: WsClient,
    go: Arc<tokio::sync::Barrier>,
    method: &'static str,
    params: impl Fn(u64) -> Value,
    refusal_says: &'static str,
) -> Tally {
    let mut t = Tally::default();
    go.wait().await;
    let until = tokio::time::Instant::now() + HAMMER;
    let mut i = 0;
    while tokio::time::Instant::now() < until {
        i += 1;
        let r = c.call(method, params(i)).await;
        if r.get("result").is_some() {
            t.accepted += 1;
        } else if r["error"]["code"] == -32003
            && r["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(refusal_says))
            && let Some(wait) = r["error"]["data"]["retryAfterMs"].as_u64()
        {
            t.refused += 1;
            t.waits.push(wait);
        } else {
            t.other.push(r);
        }
    }
    t
}

/// Runs `hammer` on every socket at once; answers each socket's tally and the time it all took.
async fn hammer_all(
    sockets: Vec<WsClient>,
    method: &'static str,
    params: fn(u64) -> Value,
    refusal_says: &'static str,
) -> (Vec<Tally>, Duration) {
    let go = Arc::new(tokio::sync::Barrier::new(sockets.len() + 1));
    let tasks: Vec<_> = sockets
        .into_iter()
        .map(|c| tokio::spawn(hammer(c, go.clone(), method, params, refusal_says)))
        .collect();
    let start = Instant::now();
    go.wait().await;
    let mut tallies = Vec::new();
    for t in tasks {
        tallies.push(t.await.unwrap());
    }
    (tallies, start.elapsed())
}

/// Checks the tallies of `nodes` gateways' sockets against a budget of `per_second` after
/// `burst`, leased `lease` at a time; answers the total accepted.
#[track_caller]
fn check_within_budget(
    tallies: &[Tally],
    elapsed: Duration,
    per_second: u64,
    burst: u64,
    lease: u64,
    nodes: u64,
) -> u64 {
    for t in tallies {
        assert!(t.other.is_empty(), "unexpected answers: {:?}", t.other);
        let interval_ms = 1000 / per_second;
        let odd: Vec<_> = t
            .waits
            .iter()
            .filter(|w| !(1..=interval_ms + 1).contains(*w))
            .collect();
        assert!(
            odd.is_empty(),
            "retryAfterMs is at most one token's interval ({interval_ms} ms): {odd:?}"
        );
    }
    let accepted: u64 = tallies.iter().map(|t| t.accepted).sum();
    let refused: u64 = tallies.iter().map(|t| t.refused).sum();
    // The budget over the whole run (measured after it, so it is an upper bound on the window
    // Redis saw), plus the documented tolerance: one lease per node, and a token of rounding.
    let budget = burst + (per_second as f64 * elapsed.as_secs_f64()).ceil() as u64;
    assert!(
        accepted <= budget + nodes * lease + 1,
        "{accepted} accepted over {elapsed:?}, budget {budget} + {nodes} leases of {lease}"
    );
    // The burst itself did get through (less what nodes may hold leased and unspent).
    assert!(
        accepted + nodes * lease >= burst,
        "{accepted} accepted, burst {burst}"
    );
    // Independent node-local budgets would have let each node admit the whole budget.
    assert!(
        accepted < nodes * budget - nodes * lease,
        "{accepted} is what {nodes} separate budgets of {budget} would allow"
    );
    assert!(
        refused > accepted,
        "the sockets asked far more than the budget: {refused} refused"
    );
    accepted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_identity_on_two_nodes_has_one_publish_budget() {
    const RATE: u64 = 20;
    const BURST: u64 = 40;
    const LEASE: u64 = 4;
    let redis = RedisServer::start().await;
    let flags = [
        "--jwt-secret",
        SECRET,
        "--allow",
        "chat:*=sub,pub",
        "--rate-publishes",
        "20",
        "--rate-publishes-burst",
        "40",
        "--rate-lease",
        "4",
        // Only the identity's budget is under test: no per-connection limit, and no 4029 for
        // the sockets that hammer on regardless.
        "--rate-requests",
        "0",
        "--rate-close-after",
        "1000000",
    ];
    let a = GatewayProcess::start_secured(&redis.url(), "gw-a", &flags).await;
    let b = GatewayProcess::start_secured(&redis.url(), "gw-b", &flags).await;

    // Bob listens on b, and will check alice's accepted publishes really went out.
    let (mut bob, hello) = connect(&b, "bob").await;
    let limits = &hello["result"]["limits"];
    assert_eq!(limits["ratePublishes"], RATE, "{hello}");
    assert_eq!(limits["ratePublishesBurst"], BURST, "{hello}");
    assert_eq!(limits["rateCalls"], 20, "the default: {hello}");
    assert_eq!(limits["rateCallsBurst"], 50, "the default: {hello}");
    let r = bob.call("subscribe", json!({"topic": "chat:room"})).await;
    assert!(r.get("result").is_some(), "{r}");

    // Alice: two sockets on each node, all publishing as fast as they can.
    let mut sockets = Vec::new();
    for gw in [&a, &a, &b, &b] {
        sockets.push(connect(gw, "alice").await.0);
    }
    let (tallies, elapsed) = hammer_all(
        sockets,
        "publish",
        |i| json!({"topic": "chat:room", "data": {"n": i}}),
        "too many publishes",
    )
    .await;
    let accepted = check_within_budget(&tallies, elapsed, RATE, BURST, LEASE, 2);
    // Both nodes admitted some: the budget was shared, not one node's alone.
    let on_a: u64 = tallies[..2].iter().map(|t| t.accepted).sum();
    let on_b: u64 = tallies[2..].iter().map(|t| t.accepted).sum();
    assert!(on_a > 0 && on_b > 0, "a: {on_a}, b: {on_b}");

    // Bob is not touched, on either node; alice, hammering on, still is.
    let (mut bob_on_a, _) = connect(&a, "bob").await;
    for _ in 0..10 {
        let r = bob_on_a
            .call("publish", json!({"topic": "chat:other", "data": 1}))
            .await;
        assert!(r.get("result").is_some(), "{r}");
    }
    let r = bob
        .call("publish", json!({"topic": "chat:room", "data": "end"}))
        .await;
    assert!(r.get("result").is_some(), "{r}");
    let mut delivered = 0;
    loop {
        let ev = bob.next_event().await;
        if ev["data"] == "end" {
            break;
        }
        assert_eq!(ev["from"], "alice", "{ev}");
        delivered += 1;
    }
    assert_eq!(delivered, accepted, "every accepted publish went out, once");
    let refused = metric(a.admin_addr, "switchboard_identity_rate_limited_total").await
        + metric(b.admin_addr, "switchboard_identity_rate_limited_total").await;
    assert_eq!(
        refused,
        tallies.iter().map(|t| t.refused).sum::<u64>() as f64
    );
    assert!(metric(a.admin_addr, "switchboard_rate_leases_total").await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_identity_on_two_nodes_has_one_call_budget() {
    const RATE: u64 = 5;
    const BURST: u64 = 10;
    const LEASE: u64 = 2;
    let redis = RedisServer::start().await;
    let _worker = WorkerProcess::start(&redis, "w1", &["--builtin"]).await;
    let flags = [
        "--jwt-secret",
        SECRET,
        "--allow-tools",
        "echo",
        "--rate-calls",
        "5",
        "--rate-calls-burst",
        "10",
        "--rate-lease",
        "2",
        "--rate-requests",
        "0",
        "--rate-close-after",
        "1000000",
    ];
    let a = GatewayProcess::start_secured(&redis.url(), "gw-a", &flags).await;
    let b = GatewayProcess::start_secured(&redis.url(), "gw-b", &flags).await;
    let mut sockets = Vec::new();
    for gw in [&a, &a, &b, &b] {
        let (mut c, hello) = connect(gw, "alice").await;
        assert_eq!(hello["result"]["limits"]["rateCalls"], RATE, "{hello}");
        // Listing tools is no call: it spends nothing of the budget.
        c.wait_for_tool("echo").await;
        sockets.push(c);
    }
    let (tallies, elapsed) = hammer_all(
        sockets,
        "tools/call",
        |i| json!({"name": "echo", "arguments": {"n": i}}),
        "too many tool calls",
    )
    .await;
    check_within_budget(&tallies, elapsed, RATE, BURST, LEASE, 2);

    // Another identity calls on both nodes as usual.
    for gw in [&a, &b] {
        let (mut carol, _) = connect(gw, "carol").await;
        carol.wait_for_tool("echo").await;
        let r = carol
            .call(
                "tools/call",
                json!({"name": "echo", "arguments": {"from": "carol"}}),
            )
            .await;
        assert_eq!(r["result"]["isError"], false, "{r}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_that_keeps_on_past_its_budget_is_closed() {
    let redis = RedisServer::start().await;
    let gw = GatewayProcess::start_secured(
        &redis.url(),
        "gw",
        &[
            "--jwt-secret",
            SECRET,
            "--allow",
            "chat:*=pub",
            "--rate-publishes",
            "1",
            "--rate-publishes-burst",
            "1",
            "--rate-close-after",
            "3",
        ],
    )
    .await;
    let (mut c, _) = connect(&gw, "mallory").await;
    let publish = json!({"topic": "chat:x", "data": 1});
    assert!(
        c.call("publish", publish.clone())
            .await
            .get("result")
            .is_some()
    );
    for _ in 0..3 {
        let r = c.call("publish", publish.clone()).await;
        assert_eq!(r["error"]["code"], -32003, "{r}");
        assert!(r["error"]["data"]["retryAfterMs"].as_u64().unwrap() >= 1);
        // Other requests are not an identity's budget, and do not count.
        assert!(c.call("ping", json!({})).await.get("result").is_some());
    }
    let r = c.call("publish", publish.clone()).await;
    assert_eq!(r["error"]["code"], -32003, "{r}");
    assert_eq!(c.read_close().await, 4029);
    // Mallory's other sockets share the budget (spent, unless a second passed), but are not
    // closed for what the first one did.
    let (mut again, _) = connect(&gw, "mallory").await;
    let r = again.call("publish", publish).await;
    assert!(
        r.get("result").is_some() || r["error"]["code"] == -32003,
        "{r}"
    );
    assert!(again.call("ping", json!({})).await.get("result").is_some());
}

every_backend!(the_budget_store_is_a_gcra_per_identity_and_budget);

async fn the_budget_store_is_a_gcra_per_identity_and_budget(kind: Kind) {
    let b = TestBackend::start(kind).await;
    let rates = b.backend.rates.clone();
    let rate = Rate {
        per_second: 1,
        burst: 5,
    };
    let take = |budget, who: &'static str, want| {
        let rates = rates.clone();
        async move { rates.take(budget, who, rate, want).await.unwrap() }
    };
    assert_eq!(take(Budget::Publishes, "alice", 3).await.granted, 3);
    assert_eq!(
        take(Budget::Publishes, "alice", 3).await.granted,
        2,
        "the rest"
    );
    let refused = take(Budget::Publishes, "alice", 3).await;
    assert_eq!(refused.granted, 0);
    assert!(
        refused.retry_after > Duration::ZERO && refused.retry_after <= Duration::from_secs(1),
        "{refused:?}"
    );
    assert_eq!(take(Budget::Calls, "alice", 5).await.granted, 5);
    assert_eq!(take(Budget::Publishes, "bob", 5).await.granted, 5);
    if let Some(redis) = b.store.target() {
        // One key per identity and budget, gone once the budget is full again (5 s at 1/s).
        let mut conn = redis.connection().await;
        let ttl: i64 = redis::cmd("PTTL")
            .arg("sb:rl:{alice}:pub")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!((1..=5_000).contains(&ttl), "{ttl}");
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("sb:rl:*")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(keys.len(), 3, "{keys:?}");
    }
}
