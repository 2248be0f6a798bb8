//! The Python client (`clients/python`, package `switchboard_client`) against real gateway
//! processes, Redis and a `--builtin` worker: subscribe/publish across two nodes (with `from`),
//! `since` recovery, kill -9 of the client's node while a backend publishes history (every event
//! exactly once, in order, the call in flight answered after the resume), takeover 4009 (final,
//! no reconnect), 1008 with a token function (fresh token; refresh before `exp`), and asyncio
//! cancellation of a call sending `notifications/cancelled`; publish and recovery again over
//! `wss://` through TLS-terminating proxies. Also runs the package's pytest unit
//! tests and `mypy --strict`.
//!
//! Each case spawns `clients/python/scenarios/scenario.py <name>` with the venv's Python
//! (`clients/python/.venv`, which `scripts/test` creates) through `script::Script`: the
//! scenario owns the client, this test owns everything else.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::{Value, json};
use switchboard_core::auth::{Claims, mint_claims};
use switchboard_harness::script::{Script, repo_root};
use switchboard_harness::tls::{TestCa, TlsProxy};
use switchboard_harness::{GatewayProcess, RedisServer, WorkerProcess, WsClient};

const SECRET: &str = "python-client-secret-long-enough-for-hs256";

fn package_dir() -> PathBuf {
    repo_root().join("clients/python")
}

/// The venv's interpreter, with the package installed (editable).
fn python() -> PathBuf {
    let bin = package_dir().join(".venv/bin/python");
    assert!(
        bin.exists(),
        "{} is missing: create the Python client's venv first (scripts/test does):\n  \
         python3 -m venv clients/python/.venv && \
         clients/python/.venv/bin/pip install -e 'clients/python[test]'",
        bin.display()
    );
    bin
}

fn token(sub: &str) -> String {
    mint_claims(SECRET.as_bytes(), &Claims::subject(sub)).unwrap()
}

struct Cluster {
    redis: RedisServer,
    a: GatewayProcess,
    b: GatewayProcess,
    _worker: Option<WorkerProcess>,
}

async fn cluster(with_worker: bool) -> Cluster {
    let redis = RedisServer::start().await;
    let flags = [
        "--jwt-secret",
        SECRET,
        "--allow",
        "chat:*=sub,pub",
        "--allow",
        "hist:*=sub,pub",
        "--history",
        "hist:*=10000",
        "--allow-tools",
        "*",
        "--registry-interval",
        "100ms",
        "--session-refresh",
        "100ms",
    ];
    let a = GatewayProcess::start_secured(&redis.url(), "gw-a", &flags).await;
    let b = GatewayProcess::start_secured(&redis.url(), "gw-b", &flags).await;
    let worker = if with_worker {
        let w = WorkerProcess::start(&redis, "w1", &["--builtin"]).await;
        for gw in [&a, &b] {
            let mut c = WsClient::connect(&gw.ws_url()).await;
            let r = c.call("hello", json!({"token": token("probe")})).await;
            assert!(r["result"]["session"].is_string(), "hello failed: {r}");
            c.wait_for_tool("sleep").await;
        }
        Some(w)
    } else {
        None
    };
    Cluster {
        redis,
        a,
        b,
        _worker: worker,
    }
}

fn scenario(name: &str, c: &Cluster) -> Script {
    scenario_at(name, c.a.ws_url(), c.b.ws_url(), None)
}

/// Scenario `name` with the gateways at `a` and `b` (`ws://`, or `wss://` through proxies
/// whose CA is in the file `ca_file`).
fn scenario_at(name: &str, a: String, b: String, ca_file: Option<PathBuf>) -> Script {
    let mut env = vec![
        ("SB_URL_A", a),
        ("SB_URL_B", b),
        ("SB_SECRET", SECRET.to_owned()),
        ("PYTHONUNBUFFERED", "1".to_owned()),
    ];
    if let Some(f) = ca_file {
        env.push(("SB_CA_FILE", f.display().to_string()));
    }
    Script::spawn(
        &python(),
        &["scenarios/scenario.py", name],
        &package_dir(),
        &env,
    )
    .expect("spawn the Python scenario")
}

fn states(report: &Value) -> Vec<String> {
    report["states"]
        .as_array()
        .expect("states reported")
        .iter()
        .map(|s| match s["code"].as_u64() {
            Some(code) => format!("{}:{code}", s["state"].as_str().unwrap()),
            None => s["state"].as_str().unwrap().to_owned(),
        })
        .collect()
}

fn run_in_venv(args: &[&str]) {
    let out = Command::new(python())
        .args(args)
        .current_dir(package_dir())
        .output()
        .expect("run the venv's python");
    assert!(
        out.status.success(),
        "python {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn unit_tests_and_types() {
    run_in_venv(&["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"]);
    run_in_venv(&[
        "-m",
        "mypy",
        "--strict",
        "--no-incremental",
        "src",
        "scenarios",
    ]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_across_nodes_and_since_recovery() {
    let c = cluster(false).await;
    check_pubsub(scenario("pubsub", &c)).await;
}

/// The same over `wss://`: a TLS-terminating proxy (a CA the test makes) in front of each node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_and_recovery_over_wss() {
    let c = cluster(false).await;
    let ca = Arc::new(TestCa::new());
    let pa = TlsProxy::start_with(c.a.addr, ca.clone()).await;
    let pb = TlsProxy::start_with(c.b.addr, ca.clone()).await;
    let s = scenario_at(
        "pubsub",
        pa.wss_url(),
        pb.wss_url_by_name(),
        Some(ca.ca_file()),
    );
    check_pubsub(s).await;
}

async fn check_pubsub(mut s: Script) {
    let ev = s.step("event").await;
    assert_eq!(ev["topic"], "chat:x", "{ev}");
    assert_eq!(ev["data"], json!({"text": "hi"}), "{ev}");
    assert_eq!(ev["from"], "bob", "the gateway stamps the publisher: {ev}");
    assert_eq!(ev["alice_node"], "gw-a", "{ev}");
    assert_eq!(ev["bob_node"], "gw-b", "{ev}");

    let since = s.step("since").await;
    let published: Vec<Value> = since["published"].as_array().unwrap().clone();
    assert_eq!(published.len(), 6, "{since}");
    assert!(
        published.iter().all(Value::is_string),
        "history ids: {since}"
    );
    assert_eq!(
        since["ids"],
        json!(published[2..5]),
        "exactly the events after `since`, in order: {since}"
    );
    assert_eq!(
        since["data"],
        json!([{"n": 2}, {"n": 3}, {"n": 4}]),
        "{since}"
    );
    assert_eq!(since["recovered"], true, "{since}");
    assert_eq!(since["position"], published[4], "{since}");
    assert_eq!(
        since["next"], published[5],
        "live after the replay, no duplicate: {since}"
    );
    assert_eq!(since["next_from"], "bob", "{since}");
    let done = s.step("done").await;
    assert_eq!(done["topics"], json!([]), "unsubscribed: {done}");
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_resumes_on_the_other_node_exactly_once_with_the_call_answered() {
    const N: usize = 200;
    let c = cluster(true).await;
    let mut s = scenario("kill9", &c);
    let ready = s.step("ready").await;
    let node = ready["node"].as_str().expect("node").to_owned();
    let session = ready["session"].as_str().expect("session").to_owned();
    let victim = match node.as_str() {
        "gw-a" => &c.a,
        "gw-b" => &c.b,
        other => panic!("unknown node {other}"),
    };

    // A backend publishes N history events at a steady pace; the client's node is killed
    // with -9 a quarter of the way through, the 1.5 s call in flight (its reply owed).
    let mut publisher = c
        .redis
        .publish_history_paced("hist:k", N, Duration::from_millis(5));
    c.redis.wait_for_owed_reply(&session).await;
    publisher.published(N / 4).await;
    victim.signal(Signal::SIGKILL);
    let ids = publisher.finish().await;

    s.send(&json!({"cmd": "finish", "count": N})).await;
    let report = s.step_within("events", Duration::from_secs(40)).await;
    assert_eq!(
        report["ids"],
        json!(ids),
        "every event exactly once, in order: {report}"
    );
    let data: Vec<Value> = (0..N).map(|n| json!({ "n": n })).collect();
    assert_eq!(report["data"], json!(data));
    assert_eq!(
        report["call"]["slept_ms"], 1500,
        "the call in flight answered after the resume: {report}"
    );
    assert_eq!(report["call"]["worker"], "w1", "{report}");
    assert_eq!(report["call_is_error"], false, "{report}");
    assert_ne!(report["node"], node, "resumed on the other node: {report}");
    assert_eq!(report["session"], session, "the same session: {report}");
    let st = states(&report);
    let lost = st
        .iter()
        .position(|s| s.starts_with("disconnected"))
        .unwrap_or_else(|| panic!("no disconnected state: {st:?}"));
    assert!(
        st[lost..].iter().any(|s| s == "resumed"),
        "disconnected, then resumed: {st:?}"
    );
    assert!(
        !st.iter()
            .any(|s| s == "connected" && st[lost..].contains(s))
    );
    let closed = s.step("closed").await;
    assert_eq!(closed["state"], "closed", "{closed}");
    assert_eq!(closed["code"], 1000, "{closed}");
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_4009_is_final() {
    let c = cluster(false).await;
    let mut s = scenario("takeover", &c);
    let ready = s.step("ready").await;
    let session = ready["session"].as_str().expect("session");
    // Another connection of the same identity, on the other node, takes the session over.
    let mut other = WsClient::connect(&c.b.ws_url()).await;
    let r = other
        .call(
            "hello",
            json!({"token": token("alice"), "session": session}),
        )
        .await;
    assert_eq!(r["result"]["resumed"], true, "{r}");
    let closed = s.step("closed").await;
    assert_eq!(closed["code"], 4009, "{closed}");
    assert_eq!(closed["closed"], true, "{closed}");
    assert_eq!(
        closed["publish_error"], 4009,
        "requests fail with Closed: {closed}"
    );
    assert_eq!(
        states(&closed),
        ["connecting", "connected", "closed:4009"],
        "closed with 4009 and never reconnected: {closed}"
    );
    s.finish().await;
    // The session stays with the connection that took it over.
    let r = other.call("ping", json!({})).await;
    assert!(r["result"].is_object(), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_function_recovers_from_1008_and_refreshes_before_exp() {
    let c = cluster(false).await;
    let mut s = scenario("token", &c);

    let fresh = s.step("fresh").await;
    assert_eq!(
        fresh["given"],
        json!(["expired", "fresh"]),
        "asked again after the 1008: {fresh}"
    );
    assert_eq!(
        states(&fresh)[..3],
        ["connecting", "connecting", "connected"],
        "{fresh}"
    );
    assert_eq!(fresh["data"], json!({"ok": true}), "{fresh}");

    let always = s.step("always_expired").await;
    assert_eq!(always["code"], 1008, "{always}");
    assert_eq!(always["asked"], 2, "one fresh token, then final: {always}");
    assert_eq!(
        states(&always),
        ["connecting", "connecting", "closed:1008"],
        "{always}"
    );

    let fixed = s.step("fixed_expired").await;
    assert_eq!(fixed["code"], 1008, "{fixed}");
    assert_eq!(
        states(&fixed),
        ["connecting", "closed:1008"],
        "a fixed token is final at once: {fixed}"
    );

    let ready = s.step("short_ready").await;
    let exp = ready["exp"].as_u64().expect("exp");
    let done = s.step_within("short_done", Duration::from_secs(30)).await;
    assert!(
        done["now"].as_f64().unwrap() > (exp + 5) as f64,
        "observed past exp + leeway: {done}"
    );
    assert_eq!(
        states(&done),
        ["connecting", "connected"],
        "no disconnect: the token was refreshed before exp: {done}"
    );
    assert!(
        done["token_calls"].as_u64().unwrap() >= 2,
        "the token function was asked for a refresh: {done}"
    );
    assert_eq!(done["same_session"], true, "{done}");
    assert_eq!(done["data"], json!({"alive": true}), "{done}");
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_call_sends_notifications_cancelled() {
    let c = cluster(true).await;
    let mut s = scenario("cancel", &c);
    let r = s.step_within("cancelled", Duration::from_secs(30)).await;
    assert_eq!(r["raised"], "CancelledError", "{r}");
    assert_eq!(r["quick"]["slept_ms"], 10, "{r}");
    // Had the first execution gone on, the identical call would have joined it (same
    // started_at, before the cancel).
    let cancelled_at = r["cancelled_at"].as_f64().unwrap();
    let started_at = r["started_at"].as_f64().unwrap();
    assert!(
        started_at >= cancelled_at - 50.0,
        "the identical call started a new execution: {r}"
    );
    s.finish().await;
}
