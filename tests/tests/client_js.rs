//! The JavaScript client (`clients/js`, its built `dist/`) under Node 22 against real gateway
//! processes, Redis and a `--builtin` worker, driven through
//! [`switchboard_harness::script::Script`] running `clients/js/test/scenario.mjs MODE`:
//! publish and subscribe across two nodes (with `from`); `since` recovery; kill -9 of the
//! client's node while a backend publishes history events (every event once, in order, the call
//! in flight answered across the resume); 4009 is final; 1008 with a token function (a fresh
//! token, final when it is refused again); a token refreshed before `exp` keeps its socket; an
//! aborted call sends `notifications/cancelled` and its worker stops; publish and recovery again
//! over `wss://` through TLS-terminating proxies.
//!
//! Needs Node 22 (`npm ci --prefix tests/conformance`) and the built client
//! (`npm ci --prefix clients/js && npm run build --prefix clients/js`): without them the tests
//! fail saying so.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::{Value, json};
use switchboard_core::auth::{Claims, mint_claims};
use switchboard_harness::script::{Script, node22, repo_root};
use switchboard_harness::tls::{TestCa, TlsProxy};
use switchboard_harness::{GatewayProcess, RedisServer, WorkerProcess, WsClient};

const SECRET: &str = "js-client-secret-long-enough-for-hs256";

/// Gateway flags: HS256 tokens, `chat:*` and `hist:*` open to every subject (`hist:*` with
/// history), every tool, quick registry and session saves.
const FLAGS: &[&str] = &[
    "--jwt-secret",
    SECRET,
    "--allow",
    "chat:*=sub,pub",
    "--allow",
    "hist:*=sub,pub",
    "--allow-tools",
    "*",
    "--history",
    "hist:*=10000",
    "--registry-interval",
    "100ms",
    "--session-refresh",
    "200ms",
];

/// Redis and two gateway nodes.
struct Cluster {
    redis: RedisServer,
    a: GatewayProcess,
    b: GatewayProcess,
}

impl Cluster {
    async fn start() -> Cluster {
        let redis = RedisServer::start().await;
        let a = GatewayProcess::start_secured(&redis.url(), "gw-a", FLAGS).await;
        let b = GatewayProcess::start_secured(&redis.url(), "gw-b", FLAGS).await;
        Cluster { redis, a, b }
    }

    fn urls(&self) -> Vec<String> {
        vec![self.a.ws_url(), self.b.ws_url()]
    }

    fn node(&self, id: &str) -> &GatewayProcess {
        match id {
            "gw-a" => &self.a,
            "gw-b" => &self.b,
            other => panic!("no node {other}"),
        }
    }

    /// Waits until node a lists `tool` to alice.
    async fn wait_for_tool(&self, tool: &str) {
        let mut ws = WsClient::connect(&self.a.ws_url()).await;
        let r = ws.call("hello", json!({"token": token("alice")})).await;
        assert!(r["result"]["session"].is_string(), "hello: {r}");
        ws.wait_for_tool(tool).await;
    }
}

fn token(sub: &str) -> String {
    mint_claims(SECRET.as_bytes(), &Claims::subject(sub)).unwrap()
}

/// `clients/js`, after checking that what the scenarios need is there.
fn js_dir() -> PathBuf {
    node22();
    let dir = repo_root().join("clients/js");
    assert!(
        dir.join("dist/index.js").exists() && dir.join("dist/switchboard.min.js").exists(),
        "the JS client is not built: run `npm ci --prefix clients/js && npm run build --prefix clients/js`"
    );
    dir
}

fn scenario(mode: &str, urls: &[String]) -> Script {
    scenario_trusting(mode, urls, None)
}

/// Scenario `mode`, Node trusting the CA in the file `ca_file` besides its own roots
/// (`NODE_EXTRA_CA_CERTS`: what the `wss://` URLs of the test's TLS proxies need).
fn scenario_trusting(mode: &str, urls: &[String], ca_file: Option<PathBuf>) -> Script {
    let dir = js_dir();
    let mut env = vec![
        ("SB_URLS", urls.join(",")),
        ("SB_SECRET", SECRET.to_owned()),
    ];
    if let Some(f) = ca_file {
        env.push(("NODE_EXTRA_CA_CERTS", f.display().to_string()));
    }
    Script::spawn(&node22(), &["test/scenario.mjs", mode], &dir, &env).expect("spawn node")
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|s| {
            s.as_str()
                .unwrap_or_else(|| panic!("not a string: {s}"))
                .to_owned()
        })
        .collect()
}

/// The position of `what` in `states` (after `from`), if any.
fn find(states: &[String], what: &str, from: usize) -> Option<usize> {
    states
        .iter()
        .skip(from)
        .position(|s| s == what)
        .map(|i| i + from)
}

#[tokio::test]
async fn publish_across_nodes_and_since_recovery() {
    let c = Cluster::start().await;
    check_pubsub(scenario("pubsub", &c.urls())).await;
}

/// The same over `wss://`: a TLS-terminating proxy (a CA the test makes) in front of each node.
#[tokio::test]
async fn publish_and_recovery_over_wss() {
    let c = Cluster::start().await;
    let ca = Arc::new(TestCa::new());
    let pa = TlsProxy::start_with(c.a.addr, ca.clone()).await;
    let pb = TlsProxy::start_with(c.b.addr, ca.clone()).await;
    let urls = [pa.wss_url(), pb.wss_url_by_name()];
    check_pubsub(scenario_trusting("pubsub", &urls, Some(ca.ca_file()))).await;
}

async fn check_pubsub(mut s: Script) {
    let ready = s.step("ready").await;
    assert_eq!(ready["alice"], "gw-a");
    assert_eq!(ready["bob"], "gw-b");

    let p = s.step("pubsub").await;
    assert_eq!(
        p["events"],
        json!([
            {"topic": "chat:x", "data": {"n": 0}, "from": "alice"},
            {"topic": "chat:x", "data": {"n": 1}, "from": "alice"},
            {"topic": "chat:x", "data": {"n": 2}, "from": "alice"},
        ]),
        "published on gw-a, received once each on gw-b, in order, with from"
    );

    let since = s.step("since").await;
    let published = strings(&since["published"]);
    assert_eq!(published.len(), 6);
    assert_eq!(
        strings(&since["got"]),
        published[2..].to_vec(),
        "exactly the events after `since`, then the live one: {since}"
    );
    assert_eq!(
        strings(&since["beforeReply"]),
        published[2..5].to_vec(),
        "the replay is handed over before the subscribe resolves"
    );
    assert_eq!(since["reply"]["recovered"], true, "{since}");
    assert_eq!(since["reply"]["position"], json!(published[4]), "{since}");
    assert_eq!(since["data"][0], json!({"n": 2}));
    let done = s.step("done").await;
    assert_eq!(done["alice"], "closed");
    s.finish().await;
}

#[tokio::test]
async fn kill_9_of_the_clients_node_every_event_once_and_the_call_answered() {
    const N: usize = 200;
    let c = Cluster::start().await;
    let _worker = WorkerProcess::start(&c.redis, "w1", &["--builtin"]).await;
    c.wait_for_tool("sleep").await;
    let mut s = scenario("kill", &c.urls());
    let ready = s.step("ready").await;
    let first_node = ready["node"].as_str().unwrap().to_owned();
    let session = ready["session"].as_str().unwrap().to_owned();

    // A backend publishes history events at a steady pace.
    let mut publisher = c
        .redis
        .publish_history_paced("hist:k", N, Duration::from_millis(5));

    // A call in flight (its worker is running it, the session owes its reply) when the node
    // goes, mid-stream.
    s.send(&json!({"cmd": "call"})).await;
    s.step("progress").await;
    c.redis.wait_for_owed_reply(&session).await;
    publisher.published(N / 4).await;
    c.node(&first_node).signal(Signal::SIGKILL);
    let ids = publisher.finish().await;
    assert_eq!(ids.len(), N);

    s.send(&json!({"cmd": "collect", "count": N})).await;
    let r = s.step_within("result", Duration::from_secs(40)).await;
    assert_eq!(
        strings(&r["ids"]),
        ids,
        "every event exactly once, in order"
    );
    let data: Vec<Value> = (0..N).map(|i| json!({"n": i})).collect();
    assert_eq!(r["data"], json!(data));
    let sc = &r["call"]["ok"]["structuredContent"];
    assert_eq!(
        sc["slept_ms"], 1500,
        "the call answered across the resume: {r}"
    );
    assert_eq!(sc["worker"], "w1", "{r}");
    let states = strings(&r["states"]);
    let d = find(&states, "disconnected:1006", 0)
        .or_else(|| states.iter().position(|s| s.starts_with("disconnected")))
        .unwrap_or_else(|| panic!("no disconnected: {states:?}"));
    assert!(
        find(&states, "resumed", d).is_some(),
        "resumed after the disconnect: {states:?}"
    );
    assert!(
        !states
            .iter()
            .any(|s| s == "closed" || s.starts_with("recovered:false")),
        "{states:?}"
    );
    assert_ne!(r["node"], json!(first_node), "on the other node now");
    assert_eq!(r["session"], json!(session), "the same session");
    s.finish().await;
}

#[tokio::test]
async fn taken_over_4009_is_final() {
    let c = Cluster::start().await;
    let mut s = scenario("takeover", &c.urls());
    let ready = s.step("ready").await;
    let session = ready["session"].as_str().unwrap();
    let node = ready["node"].as_str().unwrap();
    // The same identity resumes the session on the other node: the client's socket gets 4009.
    let other = if node == "gw-a" { &c.b } else { &c.a };
    let mut taker = WsClient::connect(&other.ws_url()).await;
    let r = taker
        .call(
            "hello",
            json!({"token": token("alice"), "session": session}),
        )
        .await;
    assert_eq!(r["result"]["resumed"], true, "{r}");
    let closed = s.step("closed").await;
    let states = strings(&closed["states"]);
    assert_eq!(
        states.last().map(String::as_str),
        Some("closed:4009"),
        "{closed}"
    );
    assert!(
        !states.iter().any(|s| s.starts_with("disconnected")),
        "no reconnect: {states:?}"
    );
    assert_eq!(closed["after"], json!([]), "nothing after closed: {closed}");
    assert_eq!(closed["state"], "closed");
    assert_eq!(closed["publish"], "ClosedError:4009");
    // The taker still holds the session: nobody took it back.
    let r = taker.call("ping", json!({})).await;
    assert_eq!(r["result"], json!({}), "{r}");
    s.finish().await;
}

#[tokio::test]
async fn policy_1008_with_a_token_function() {
    let c = Cluster::start().await;
    let mut s = scenario("token-expired-first", &c.urls());
    let fresh = s.step("fresh").await;
    assert_eq!(fresh["calls"], 2, "asked once more after the 1008: {fresh}");
    assert_eq!(fresh["state"], "connected");
    assert_eq!(fresh["works"], true);
    assert_eq!(
        strings(&fresh["states"]),
        ["connecting", "connected"],
        "no disconnected state for a socket that never opened a session: {fresh}"
    );
    let fixed = s.step("fixed").await;
    assert_eq!(fixed["error"], "ClosedError:1008", "{fixed}");
    assert_eq!(fixed["states"], json!(["connecting", "closed:1008"]));
    let bad = s.step("always-bad").await;
    assert_eq!(bad["error"], "ClosedError:1008", "{bad}");
    assert_eq!(bad["calls"], 2, "one fresh token, then final: {bad}");
    s.finish().await;

    // The gateway closes with 1008 at exp (+ 5 s) when refresh keeps failing: the client asks
    // the function again and resumes.
    let mut s = scenario("token-expiry-close", &c.urls());
    let r = s.step_within("result", Duration::from_secs(30)).await;
    let states = strings(&r["states"]);
    let d = find(&states, "disconnected:1008", 0).unwrap_or_else(|| panic!("{r}"));
    assert!(find(&states, "resumed", d).is_some(), "{r}");
    assert_eq!(r["sameSession"], true, "{r}");
    assert!(r["calls"].as_u64().unwrap() >= 4, "{r}");
    s.finish().await;
}

#[tokio::test]
async fn token_refreshed_before_exp_keeps_the_socket() {
    let c = Cluster::start().await;
    let mut s = scenario("token-refresh", &c.urls());
    let r = s.step_within("result", Duration::from_secs(30)).await;
    assert_eq!(
        strings(&r["states"]),
        ["connecting", "connected"],
        "no disconnect past exp + 5 s: {r}"
    );
    assert!(
        r["calls"].as_u64().unwrap() >= 3,
        "refreshed twice at least: {r}"
    );
    assert_eq!(r["got"], 1, "{r}");
    s.finish().await;
}

#[tokio::test]
async fn an_aborted_call_is_cancelled_at_the_gateway() {
    let c = Cluster::start().await;
    let _worker = WorkerProcess::start(&c.redis, "w1", &["--builtin", "--concurrency", "1"]).await;
    c.wait_for_tool("sleep").await;
    let mut s = scenario("abort", &[c.a.ws_url()]);
    let r = s.step("result").await;
    assert_eq!(r["first"], "AbortError", "{r}");
    assert!(
        r["abortMs"].as_u64().unwrap() < 200,
        "rejected at once: {r}"
    );
    assert!(
        r["secondMs"].as_u64().unwrap() < 3000,
        "the worker (one call at a time) was free long before the 4 s sleep would end: {r}"
    );
    assert_eq!(r["second"]["slept_ms"], 20, "{r}");
    assert_eq!(r["pre"], "AbortError", "{r}");
    s.finish().await;
}

/// The client's own unit tests (pure parts, and the close-code policy against a fake
/// WebSocket): `node --test clients/js/test/unit.test.mjs` under Node 22.
#[test]
fn js_unit_tests() {
    let dir = js_dir();
    let out = std::process::Command::new(node22())
        .args([
            "--test",
            "--test-force-exit",
            "--test-timeout=30000",
            "--test-reporter=dot",
            "test/unit.test.mjs",
        ])
        .current_dir(&dir)
        .output()
        .expect("run node --test");
    assert!(
        out.status.success(),
        "the JS unit tests failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
