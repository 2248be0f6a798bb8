//! The SSE streams of `/mcp` against real gateway processes, a worker and Redis, spoken raw
//! (`switchboard_harness::sse`): a session's call stream broken mid-call and resumed with
//! `Last-Event-ID` on the other node (also after the node that ran the call was killed),
//! `notifications/cancelled` on one node ending a call streaming from the other, a stateless
//! client closing its stream cancelling the call, `DELETE`, the standing `GET` stream and the
//! stateless `subscriptions/listen` carrying `tools/list_changed`, and a drain ending a listen
//! stream with its result.

use serde_json::{Value, json};
use switchboard_core::auth::{Claims, mint_claims};
use switchboard_harness::sse::{HttpStream, SseEvent};
use switchboard_harness::{GatewayProcess, RedisServer, WorkerProcess, WsClient, eventually};

const SECRET: &str = "mcp-streams-secret-long-enough-for-hs256";

fn token(sub: &str) -> String {
    mint_claims(SECRET.as_bytes(), &Claims::subject(sub)).unwrap()
}

async fn gateway(redis: &RedisServer, id: &str, extra: &[&str]) -> GatewayProcess {
    let mut flags = vec![
        "--jwt-secret",
        SECRET,
        "--allow-tools",
        "*",
        "--registry-interval",
        "100ms",
        "--mcp-sse-retry",
        "250ms",
    ];
    flags.extend_from_slice(extra);
    let gw = GatewayProcess::start_secured(&redis.url(), id, &flags).await;
    let mut c = WsClient::connect(&gw.ws_url()).await;
    let r = c.call("hello", json!({"token": token("probe")})).await;
    assert!(r["result"]["session"].is_string(), "{r}");
    c.wait_for_tool("sleep").await;
    gw
}

fn auth(bearer: &str) -> String {
    format!("Bearer {bearer}")
}

/// `initialize` (session era) on `gw` as `user`: the session id.
async fn initialize(gw: &GatewayProcess, user: &str) -> String {
    let bearer = auth(&token(user));
    let r = HttpStream::open(
        gw.addr,
        "POST",
        &[
            ("Authorization", &bearer),
            ("Accept", "application/json, text/event-stream"),
        ],
        Some(
            &json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {},
            "clientInfo": {"name": "raw", "version": "1"}}}),
        ),
    )
    .await;
    assert_eq!(r.status, 200);
    let sid = r.header("mcp-session-id").expect("a session id").to_owned();
    assert_eq!(r.json().await["result"]["protocolVersion"], "2025-11-25");
    sid
}

/// A session's request to `gw`, its answer read as it comes.
async fn session_request(
    gw: &GatewayProcess,
    user: &str,
    sid: &str,
    method: &str,
    extra: &[(&str, &str)],
    body: Option<&Value>,
) -> HttpStream {
    let bearer = auth(&token(user));
    let mut headers = vec![
        ("Authorization", bearer.as_str()),
        ("Mcp-Session-Id", sid),
        ("Accept", "application/json, text/event-stream"),
    ];
    headers.extend_from_slice(extra);
    HttpStream::open(gw.addr, method, &headers, body).await
}

/// `GET` with `Last-Event-ID`: a session's stream resumed on `gw`.
async fn resume(gw: &GatewayProcess, user: &str, sid: &str, last_id: &str) -> HttpStream {
    session_request(gw, user, sid, "GET", &[("Last-Event-ID", last_id)], None).await
}

/// `tools/call sleep {ms}` with a progress token, 7 as its request id.
fn sleep_call(ms: u64) -> Value {
    json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {
        "name": "sleep", "arguments": {"ms": ms}, "_meta": {"progressToken": "p"}}})
}

/// Reads a stream's events up to and including the reply (a message with an id).
async fn until_reply(s: &mut HttpStream) -> Vec<SseEvent> {
    let mut seen = Vec::new();
    while let Some(e) = s.next_event().await {
        let reply = e.json().get("id").is_some();
        seen.push(e);
        if reply {
            return seen;
        }
    }
    panic!("the stream ended without a reply: {seen:?}");
}

fn progress_of(events: &[SseEvent]) -> Vec<f64> {
    events
        .iter()
        .filter(|e| e.json()["method"] == "notifications/progress")
        .map(|e| e.json()["params"]["progress"].as_f64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_stream_broken_mid_call_resumes_on_the_other_node_with_nothing_lost() {
    let redis = RedisServer::start().await;
    let _w = WorkerProcess::start(&redis, "w1", &["--builtin"]).await;
    let a = gateway(&redis, "a", &[]).await;
    let b = gateway(&redis, "b", &[]).await;
    let sid = initialize(&a, "alice").await;

    let mut s = session_request(&a, "alice", &sid, "POST", &[], Some(&sleep_call(1200))).await;
    assert_eq!(s.status, 200);
    assert_eq!(s.header("content-type"), Some("text/event-stream"));
    // The priming event: an id to resume from, the retry, no data.
    let priming = s.next_event().await.unwrap();
    assert!(
        priming.id.is_some() && priming.data.is_empty(),
        "{priming:?}"
    );
    assert_eq!(priming.retry, Some(250));
    let first = s.next_event().await.unwrap();
    assert_eq!(
        first.json()["method"],
        "notifications/progress",
        "{first:?}"
    );
    let last_id = first.id.clone().expect("events carry ids");
    drop(s); // the network breaks

    let mut resumed = resume(&b, "alice", &sid, &last_id).await;
    assert_eq!(resumed.status, 200);
    let rest = until_reply(&mut resumed).await;
    let reply = rest.last().unwrap().json();
    assert_eq!(reply["id"], 7, "{reply}");
    assert_eq!(
        reply["result"]["structuredContent"]["slept_ms"], 1200,
        "{reply}"
    );
    // Nothing lost, nothing twice: the sleep's 4 progress reports, in order, across both.
    let mut all = progress_of(std::slice::from_ref(&first));
    all.extend(progress_of(&rest));
    assert_eq!(all.len(), 4, "{all:?} {rest:?}");
    assert!(all.windows(2).all(|w| w[0] < w[1]), "{all:?}");
    assert!(rest.iter().all(|e| e.id.as_deref() != Some(&last_id)));

    // An id of another session's stream is refused; so is another user's session.
    let other = initialize(&b, "alice").await;
    let foreign = resume(&b, "alice", &other, &last_id).await;
    assert_eq!(foreign.status, 400);
    let stolen = resume(&b, "mallory", &sid, &last_id).await;
    assert_eq!(stolen.status, 404);
    // Nor may a WebSocket client read the stream's topic, whatever its grants.
    let topic = last_id.rsplit_once('/').unwrap().0;
    let mut ws = WsClient::connect(&a.ws_url()).await;
    ws.call("hello", json!({"token": token("alice")})).await;
    let r = ws
        .call("subscribe", json!({"topic": topic, "since": "0-0"}))
        .await;
    assert_eq!(r["error"]["code"], -32002, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_stream_gets_the_reply_when_the_node_that_ran_the_call_died() {
    let redis = RedisServer::start().await;
    let _w = WorkerProcess::start(&redis, "w1", &["--builtin"]).await;
    let a = gateway(&redis, "a", &[]).await;
    let b = gateway(&redis, "b", &[]).await;
    let sid = initialize(&b, "alice").await;
    let mut s = session_request(&a, "alice", &sid, "POST", &[], Some(&sleep_call(1500))).await;
    s.next_event().await.unwrap(); // priming
    // The first progress: the call runs on the worker.
    let first = s.next_event().await.unwrap();
    let last_id = first.id.expect("an event id");
    drop(s);
    a.signal(nix::sys::signal::Signal::SIGKILL);

    let mut resumed = resume(&b, "alice", &sid, &last_id).await;
    assert_eq!(resumed.status, 200);
    let events = until_reply(&mut resumed).await;
    let reply = events.last().unwrap().json();
    assert_eq!(reply["id"], 7, "{reply}");
    assert_eq!(
        reply["result"]["structuredContent"]["slept_ms"], 1500,
        "{reply}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_on_one_node_a_sessions_call_streaming_from_the_other_ends() {
    let redis = RedisServer::start().await;
    let _w = WorkerProcess::start(&redis, "w1", &["--builtin"]).await;
    let a = gateway(&redis, "a", &[]).await;
    let b = gateway(&redis, "b", &[]).await;
    let sid = initialize(&a, "alice").await;
    // A call far longer than the stream read's timeout: only the cancel ends it in time.
    let mut s = session_request(&a, "alice", &sid, "POST", &[], Some(&sleep_call(600_000))).await;
    s.next_event().await.unwrap();
    let cancel = session_request(
        &b,
        "alice",
        &sid,
        "POST",
        &[],
        Some(
            &json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
            "params": {"requestId": 7, "reason": "changed my mind"}}),
        ),
    )
    .await;
    assert_eq!(cancel.status, 202);
    let events = until_reply(&mut s).await;
    let reply = events.last().unwrap().json();
    assert_eq!(reply["id"], 7, "{reply}");
    assert!(
        reply["result"]["structuredContent"]["slept_ms"].is_null(),
        "the call ran to its end: {reply}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stateless_client_closing_its_stream_cancels_the_call() {
    let redis = RedisServer::start().await;
    let _w = WorkerProcess::start(&redis, "w1", &["--builtin"]).await;
    // The stream's comments are how the node notices the client went.
    let a = gateway(&redis, "a", &["--heartbeat", "250ms"]).await;
    let bearer = auth(&token("carol"));
    let call = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
        "name": "sleep", "arguments": {"ms": 600_000},
        "_meta": {"progressToken": 1, "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                  "io.modelcontextprotocol/clientCapabilities": {}}}});
    let s = HttpStream::open(
        a.addr,
        "POST",
        &[
            ("Authorization", &bearer),
            ("Accept", "application/json, text/event-stream"),
        ],
        Some(&call),
    )
    .await;
    assert_eq!(s.status, 200);
    assert_eq!(s.header("content-type"), Some("text/event-stream"));
    // carol's executions not finished, as the cluster-wide caps count them.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let running_key = switchboard_redis::keys::Keys::new("sb").identity_running("carol");
    let mut running = async || -> usize {
        redis::cmd("ZCARD")
            .arg(&running_key)
            .query_async(&mut conn)
            .await
            .unwrap()
    };
    eventually("the sleep to run", async || {
        (running().await == 1).then_some(())
    })
    .await;
    drop(s); // closing the stream is how revision 2026-07-28 cancels
    eventually("the sleep to be cancelled", async || {
        (running().await == 0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_ends_a_session_and_get_needs_one() {
    let redis = RedisServer::start().await;
    let _w = WorkerProcess::start(&redis, "w1", &["--builtin"]).await;
    let a = gateway(&redis, "a", &[]).await;
    let b = gateway(&redis, "b", &[]).await;
    let sid = initialize(&a, "alice").await;
    let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"});
    let ok = session_request(&b, "alice", &sid, "POST", &[], Some(&list)).await;
    assert_eq!(ok.status, 200);
    // Another user may not end it.
    let theirs = session_request(&b, "mallory", &sid, "DELETE", &[], None).await;
    assert_eq!(theirs.status, 404);
    let gone = session_request(&b, "alice", &sid, "DELETE", &[], None).await;
    assert_eq!(gone.status, 204);
    let after = session_request(&a, "alice", &sid, "POST", &[], Some(&list)).await;
    assert_eq!(after.status, 404);
    let bearer = auth(&token("alice"));
    let no_session = HttpStream::open(
        a.addr,
        "GET",
        &[("Authorization", &bearer), ("Accept", "text/event-stream")],
        None,
    )
    .await;
    assert_eq!(no_session.status, 405);
    let no_sid_delete =
        HttpStream::open(a.addr, "DELETE", &[("Authorization", &bearer)], None).await;
    assert_eq!(no_sid_delete.status, 400);
    let unauthenticated =
        HttpStream::open(a.addr, "DELETE", &[("Mcp-Session-Id", &sid)], None).await;
    assert_eq!(unauthenticated.status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standing_stream_and_listen_carry_list_changed_and_a_drain_ends_listen() {
    let redis = RedisServer::start().await;
    let _w = WorkerProcess::start(&redis, "w1", &["--builtin"]).await;
    let a = gateway(&redis, "a", &[]).await;
    let b = gateway(&redis, "b", &[]).await;
    let sid = initialize(&a, "alice").await;
    let mut standing = session_request(&a, "alice", &sid, "GET", &[], None).await;
    assert_eq!(standing.status, 200);
    assert_eq!(standing.header("content-type"), Some("text/event-stream"));

    let bearer = auth(&token("bob"));
    let listen = json!({"jsonrpc": "2.0", "id": "sub-1", "method": "subscriptions/listen",
        "params": {"notifications": {"toolsListChanged": true, "promptsListChanged": true},
            "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                      "io.modelcontextprotocol/clientCapabilities": {}}}});
    let mut listening = HttpStream::open(
        b.addr,
        "POST",
        &[
            ("Authorization", &bearer),
            ("Accept", "application/json, text/event-stream"),
            ("MCP-Protocol-Version", "2026-07-28"),
            ("Mcp-Method", "subscriptions/listen"),
        ],
        Some(&listen),
    )
    .await;
    assert_eq!(listening.status, 200);
    let ack = listening.next_event().await.unwrap().json();
    assert_eq!(
        ack["method"], "notifications/subscriptions/acknowledged",
        "{ack}"
    );
    // Only what the gateway has: tools.
    assert_eq!(
        ack["params"]["notifications"],
        json!({"toolsListChanged": true})
    );
    assert_eq!(
        ack["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"],
        "sub-1"
    );

    // A worker with another tool joins: both streams hear of it.
    let dir = std::env::temp_dir().join(format!("sb-streams-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let tools = dir.join("tools.toml");
    std::fs::write(
        &tools,
        "[[tool]]\nname = \"cat\"\ndescription = \"echoes\"\ncommand = [\"cat\"]\n",
    )
    .unwrap();
    let _w2 = WorkerProcess::start(&redis, "w2", &["--tools", tools.to_str().unwrap()]).await;
    let changed = loop {
        let e = listening
            .next_event()
            .await
            .expect("the listen stream stays open");
        let v = e.json();
        if !v.is_null() {
            break v;
        }
    };
    assert_eq!(
        changed["method"], "notifications/tools/list_changed",
        "{changed}"
    );
    assert_eq!(
        changed["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"],
        "sub-1"
    );
    let on_get = standing.next_event().await.unwrap().json();
    assert_eq!(
        on_get["method"], "notifications/tools/list_changed",
        "{on_get}"
    );

    // b drains: the listen stream ends with its result.
    b.signal(nix::sys::signal::Signal::SIGTERM);
    let done = loop {
        let e = listening
            .next_event()
            .await
            .expect("a result before the end");
        let v = e.json();
        if v.get("id").is_some() {
            break v;
        }
    };
    assert_eq!(done["id"], "sub-1");
    assert_eq!(done["result"]["resultType"], "complete", "{done}");
    assert_eq!(
        done["result"]["_meta"]["io.modelcontextprotocol/subscriptionId"],
        "sub-1"
    );
    assert!(listening.next_event().await.is_none());
    std::fs::remove_dir_all(&dir).ok();
}
