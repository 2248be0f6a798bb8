//! MCP over Streamable HTTP (`/mcp`) against real gateway processes, a worker and Redis: the
//! official TypeScript SDK (session era) with every request sent to the next of two nodes
//! (calls, progress, a stream broken mid-call and resumed on the other node, an aborted call,
//! a task), the
//! official Python SDK (2.x: the stateless 2026-07-28 revision, negotiated with
//! `server/discover`) on each node (both in `tests/mcp-sdk`, installed by `scripts/test`), the
//! TypeScript SDK's stdio client launching `switchboard mcp-stdio`, and the endpoint's own
//! answers to the stateless revision's
//! envelope, to missing or foreign sessions, to tokens and to origins.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde_json::{Value, json};
use switchboard_core::auth::{Claims, mint_claims};
use switchboard_harness::{
    GatewayProcess, RedisServer, WorkerProcess, WsClient, eventually, http_get,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SECRET: &str = "mcp-http-secret-long-enough-for-hs256";

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
        "--allowed-origin",
        "https://app.example.com",
    ];
    flags.extend_from_slice(extra);
    GatewayProcess::start_secured(&redis.url(), id, &flags).await
}

/// Waits until `gw` lists the worker's tools (its catalogue follows the registry).
async fn wait_for_tools(gw: &GatewayProcess) {
    let mut c = WsClient::connect(&gw.ws_url()).await;
    let r = c.call("hello", json!({"token": token("probe")})).await;
    assert!(r["result"]["session"].is_string(), "{r}");
    c.wait_for_tool("sleep").await;
}

/// One HTTP/1.1 POST: the status, the headers (lower-case names) and the body.
async fn post(
    addr: SocketAddr,
    headers: &[(&str, &str)],
    body: &Value,
) -> (u16, Vec<(String, String)>, Value) {
    let body = body.to_string();
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    let req = format!(
        "POST /mcp HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Accept: application/json, text/event-stream\r\nContent-Length: {}\r\n\
         Connection: close\r\n{extra}\r\n{body}",
        body.len()
    );
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (
        status,
        headers,
        serde_json::from_str(rest).unwrap_or(Value::Null),
    )
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Runs an SDK client script and reads the JSON line it prints last (the test fails with its
/// output if it fails).
async fn run_client(program: &std::path::Path, args: &[String]) -> Value {
    let out = tokio::process::Command::new(program)
        .args(args)
        .output()
        .await
        .expect("the SDK client runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the SDK client failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim().lines().last().unwrap_or_default()).unwrap()
}

fn meta() -> Value {
    json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_typescript_sdk_works_over_http_with_requests_spread_over_two_nodes() {
    let sdk = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("mcp-sdk");
    assert!(
        sdk.join("node_modules/@modelcontextprotocol/sdk").is_dir(),
        "the MCP SDK is not installed: run scripts/test (npm ci --prefix tests/mcp-sdk)"
    );
    let redis = RedisServer::start().await;
    let _w = WorkerProcess::start(&redis, "w1", &["--builtin"]).await;
    let a = gateway(&redis, "a", &[]).await;
    let b = gateway(&redis, "b", &[]).await;
    wait_for_tools(&a).await;
    wait_for_tools(&b).await;
    let seen = run_client(
        std::path::Path::new("node"),
        &[
            sdk.join("http_client.mjs").display().to_string(),
            format!("http://{}/mcp", a.addr),
            format!("http://{}/mcp", b.addr),
            token("alice"),
        ],
    )
    .await;
    assert_eq!(seen["protocolVersion"], "2025-11-25", "{seen}");
    assert!(
        seen["sessionId"].as_str().is_some_and(|s| s.len() == 32),
        "{seen}"
    );
    assert_eq!(seen["tools"], json!(["echo", "fail", "sleep"]), "{seen}");
    assert_eq!(
        seen["echo"]["structuredContent"],
        json!({"hello": "world"}),
        "{seen}"
    );
    assert_eq!(seen["echo"]["isError"], false, "{seen}");
    assert_eq!(
        seen["sleep"]["structuredContent"]["slept_ms"], 300,
        "{seen}"
    );
    // The sleep's progress came on the call's own SSE stream.
    let progress = seen["progress"].as_array().unwrap();
    assert!(!progress.is_empty(), "no progress over HTTP: {seen}");
    assert!(progress.iter().all(|p| p["progress"].is_number()), "{seen}");
    assert_eq!(seen["refused"]["code"], -32602, "{seen}");
    // Both nodes answered, the session's requests among them.
    let hits = seen["hits"].as_array().unwrap();
    assert!(hits.iter().all(|h| h.as_u64().unwrap() >= 2), "{seen}");
    let methods: Vec<&str> = seen["methods"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        methods.starts_with(&["initialize", "notifications/initialized"]),
        "{seen}"
    );
    // echo, sleep, the refused one, the resumed one, the aborted one, the task.
    assert_eq!(methods.iter().filter(|m| **m == "tools/call").count(), 6);

    // The stream broken mid-call was resumed on the other node, nothing lost.
    assert_eq!(
        seen["resumed"]["structuredContent"]["slept_ms"], 1500,
        "{seen}"
    );
    let resumed: Vec<f64> = seen["resumedProgress"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_f64().unwrap())
        .collect();
    assert_eq!(resumed.len(), 4, "{seen}");
    assert!(resumed.windows(2).all(|w| w[0] < w[1]), "{seen}");
    let resumes = seen["resumes"].as_array().unwrap();
    assert!(!resumes.is_empty(), "no GET with Last-Event-ID: {seen}");
    assert_ne!(resumes[0]["node"], seen["brokenOn"], "{seen}");

    // The aborted call: notifications/cancelled was sent, and the call's task (named after
    // the session and the request) was cancelled, whichever node took the notification.
    assert!(seen["abortError"].is_string(), "{seen}");
    assert!(!seen["cancels"].as_array().unwrap().is_empty(), "{seen}");
    let task = switchboard_core::tasks::session_task_id(
        seen["sessionId"].as_str().unwrap(),
        &seen["abortedId"].to_string(),
    );
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    // The session-derived name is an alias of the task (whose id carries the call's tag).
    let keys = switchboard_redis::keys::Keys::new("sb");
    let id: Option<String> = redis::cmd("HGET")
        .arg(keys.task(&task))
        .arg("at")
        .query_async(&mut conn)
        .await
        .unwrap();
    let key = keys.task(&id.unwrap_or(task));
    let status: Option<String> = redis::cmd("HGET")
        .arg(&key)
        .arg("status")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(status.as_deref(), Some("cancelled"), "{key}: {seen}");

    // The task flow: created, then its result.
    let task_messages = seen["taskMessages"].as_array().unwrap();
    assert_eq!(task_messages[0]["type"], "taskCreated", "{seen}");
    let last = task_messages.last().unwrap();
    assert_eq!(last["type"], "result", "{seen}");
    assert_eq!(
        last["result"]["structuredContent"],
        json!({"via": "task"}),
        "{seen}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoint_answers_both_eras_and_refuses_what_it_must() {
    let redis = RedisServer::start().await;
    let _w = WorkerProcess::start(&redis, "w1", &["--builtin"]).await;
    let a = gateway(
        &redis,
        "a",
        &[
            "--oauth-authorization-server",
            "https://auth.example.com",
            "--oauth-resource",
            "https://mcp.example.com/mcp",
            "--hello-timeout",
            "1s",
        ],
    )
    .await;
    let b = gateway(&redis, "b", &[]).await;
    wait_for_tools(&a).await;
    wait_for_tools(&b).await;
    let alice = format!("Bearer {}", token("alice"));
    let bob = format!("Bearer {}", token("bob"));

    // Stateless (2026-07-28): no session, any node, headers checked against the body.
    let list =
        json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": meta()}});
    let (status, _, r) = post(
        b.addr,
        &[
            ("Authorization", &alice),
            ("MCP-Protocol-Version", "2026-07-28"),
            ("Mcp-Method", "tools/list"),
        ],
        &list,
    )
    .await;
    assert_eq!(status, 200, "{r}");
    assert!(
        r["result"]["tools"]
            .as_array()
            .is_some_and(|t| !t.is_empty()),
        "{r}"
    );
    let call = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                      "params": {"name": "echo", "arguments": {"x": 1}, "_meta": meta()}});
    let (status, _, r) = post(a.addr, &[("Authorization", &alice)], &call).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["result"]["structuredContent"], json!({"x": 1}), "{r}");
    let (status, _, r) = post(
        a.addr,
        &[("Authorization", &alice), ("Mcp-Method", "tools/call")],
        &list,
    )
    .await;
    assert_eq!(
        status, 400,
        "a Mcp-Method that disagrees with the body: {r}"
    );
    let old = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/list",
                     "params": {"_meta": {"io.modelcontextprotocol/protocolVersion": "2099-01-01"}}});
    let (status, _, r) = post(a.addr, &[("Authorization", &alice)], &old).await;
    assert_eq!(status, 400, "{r}");
    assert_eq!(
        r["error"]["data"]["supported"],
        json!(["2026-07-28"]),
        "{r}"
    );
    let discover = json!({"jsonrpc": "2.0", "id": 4, "method": "server/discover", "params": {}});
    let (status, _, r) = post(a.addr, &[("Authorization", &alice)], &discover).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["result"]["supportedVersions"][0], "2026-07-28", "{r}");

    // Sessions: one created on a, used on b; unknown, or of another identity: 404.
    let init = json!({"jsonrpc": "2.0", "id": 5, "method": "initialize",
                      "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                                 "clientInfo": {"name": "t", "version": "1"}}});
    let (status, headers, r) = post(a.addr, &[("Authorization", &alice)], &init).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["result"]["protocolVersion"], "2025-06-18", "{r}");
    let sid = header(&headers, "mcp-session-id")
        .expect("a session id")
        .to_owned();
    let plain_list = json!({"jsonrpc": "2.0", "id": 6, "method": "tools/list"});
    let (status, _, r) = post(
        b.addr,
        &[("Authorization", &alice), ("Mcp-Session-Id", &sid)],
        &plain_list,
    )
    .await;
    assert_eq!(status, 200, "{r}");
    let (status, _, _) = post(
        b.addr,
        &[("Authorization", &bob), ("Mcp-Session-Id", &sid)],
        &plain_list,
    )
    .await;
    assert_eq!(status, 404, "bob may not use alice's session");
    let (status, _, _) = post(
        b.addr,
        &[
            ("Authorization", &alice),
            ("Mcp-Session-Id", "0123456789abcdef0123456789abcdef"),
        ],
        &plain_list,
    )
    .await;
    assert_eq!(status, 404);
    let (status, _, r) = post(a.addr, &[("Authorization", &alice)], &plain_list).await;
    assert_eq!(
        status, 400,
        "neither a session nor the stateless envelope: {r}"
    );
    // A notification is taken.
    let (status, _, _) = post(
        a.addr,
        &[("Authorization", &alice), ("Mcp-Session-Id", &sid)],
        &json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    )
    .await;
    assert_eq!(status, 202);

    // Tokens and origins as on the WebSocket.
    let (status, headers, _) = post(b.addr, &[], &list).await;
    assert_eq!(status, 401);
    assert_eq!(header(&headers, "www-authenticate"), Some("Bearer"));
    let (status, headers, _) = post(b.addr, &[("Authorization", "Bearer nope")], &list).await;
    assert_eq!(status, 401);
    assert_eq!(
        header(&headers, "www-authenticate"),
        Some("Bearer error=\"invalid_token\"")
    );
    // OAuth discovery (RFC 9728) where an authorization server is named.
    let (status, headers, _) = post(a.addr, &[], &list).await;
    assert_eq!(status, 401);
    assert_eq!(
        header(&headers, "www-authenticate"),
        Some(
            "Bearer resource_metadata=\"https://mcp.example.com/.well-known/oauth-protected-resource/mcp\""
        )
    );
    let (status, body) = http_get(a.addr, "/.well-known/oauth-protected-resource/mcp")
        .await
        .unwrap();
    assert_eq!(status, 200);
    let metadata: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(metadata["resource"], "https://mcp.example.com/mcp");
    assert_eq!(
        metadata["authorization_servers"],
        json!(["https://auth.example.com"])
    );
    assert_eq!(
        http_get(b.addr, "/.well-known/oauth-protected-resource")
            .await
            .unwrap()
            .0,
        404,
        "no authorization server named: no metadata"
    );
    let (status, _, _) = post(
        a.addr,
        &[
            ("Authorization", &alice),
            ("Origin", "https://evil.example.net"),
        ],
        &list,
    )
    .await;
    assert_eq!(status, 403, "DNS rebinding: a page of another origin");
    let (status, _, _) = post(
        a.addr,
        &[
            ("Authorization", &alice),
            ("Origin", "https://app.example.com"),
        ],
        &list,
    )
    .await;
    assert_eq!(status, 200);
    // Bodies are bounded in bytes (413) and in time (408); a request without a token is
    // refused before its body is read (401, above).
    let big = json!({"jsonrpc": "2.0", "id": 8, "method": "tools/list",
                     "params": {"_meta": meta(), "pad": "x".repeat(70_000)}});
    let (status, _, _) = post(a.addr, &[("Authorization", &alice)], &big).await;
    assert_eq!(status, 413);
    let mut slow = TcpStream::connect(a.addr).await.unwrap();
    slow.write_all(
        format!(
            "POST /mcp HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Authorization: {alice}\r\nContent-Length: 100\r\nConnection: close\r\n\r\n\
             {{\"jsonrpc\"",
            a.addr
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut raw = Vec::new();
    slow.read_to_end(&mut raw).await.unwrap();
    assert!(
        String::from_utf8_lossy(&raw).starts_with("HTTP/1.1 408"),
        "a trickling body: {}",
        String::from_utf8_lossy(&raw)
    );
    // Topics need a socket.
    let sub = json!({"jsonrpc": "2.0", "id": 7, "method": "subscribe",
                     "params": {"topic": "t", "_meta": meta()}});
    let (status, _, r) = post(a.addr, &[("Authorization", &alice)], &sub).await;
    assert_eq!(status, 200);
    assert_eq!(r["error"]["code"], -32601, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sdk_speaks_the_stateless_revision_with_requests_spread_over_two_nodes() {
    let sdk = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("mcp-sdk");
    let python = sdk.join(".venv/bin/python");
    assert!(
        python.is_file(),
        "the MCP Python SDK is not installed: run scripts/test (tests/mcp-sdk/.venv)"
    );
    let redis = RedisServer::start().await;
    let _w = WorkerProcess::start(&redis, "w1", &["--builtin"]).await;
    let flags = ["--registry-interval", "100ms"];
    let a = GatewayProcess::start(&redis.url(), "a", &flags).await;
    let b = GatewayProcess::start(&redis.url(), "b", &flags).await;
    for gw in [&a, &b] {
        let mut c = WsClient::connect(&gw.ws_url()).await;
        c.hello().await;
        c.wait_for_tool("sleep").await;
    }
    // Anonymous callers count by address: the address's executions not finished.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let running_key =
        switchboard_redis::keys::Keys::new("sb").identity_running("anonymous@127.0.0.1");
    let dir = std::env::temp_dir().join(format!("sb-python-sdk-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // A tool of a worker the client starts while it listens.
    let tools = dir.join("tools.toml");
    std::fs::write(
        &tools,
        "[[tool]]\nname = \"joined\"\ndescription = \"joins\"\ncommand = [\"cat\"]\n",
    )
    .unwrap();
    let seen = run_client(
        python.as_path(),
        &[
            sdk.join("python_client.py").display().to_string(),
            format!("http://{}/mcp", a.addr),
            format!("http://{}/mcp", b.addr),
            switchboard_harness::switchboard_bin().display().to_string(),
            redis.url(),
            tools.display().to_string(),
        ],
    )
    .await;
    assert_eq!(seen["version"], "2026-07-28", "{seen}");
    assert_eq!(seen["discovered"], true, "{seen}");
    assert_eq!(seen["tools"], json!(["echo", "fail", "sleep"]), "{seen}");
    assert_eq!(seen["echo"], json!({"from": "python"}), "{seen}");
    assert_eq!(seen["echoError"], false, "{seen}");
    assert_eq!(seen["sleepError"], false, "{seen}");
    // Progress came on the call's stream.
    assert!(!seen["progress"].as_array().unwrap().is_empty(), "{seen}");
    // The cancelled call's stream closed, and that cancelled the call: the 10-minute sleep
    // holds nothing.
    assert_eq!(seen["cancelled"], true, "{seen}");
    eventually("the cancelled sleep to end", async || {
        let n: usize = redis::cmd("ZCARD")
            .arg(&running_key)
            .query_async(&mut conn)
            .await
            .unwrap();
        (n == 0).then_some(())
    })
    .await;
    // The listen stream told of the new tool.
    assert_eq!(seen["honored"], true, "{seen}");
    assert_eq!(seen["events"], json!(["ToolsListChanged"]), "{seen}");
    assert!(
        seen["toolsAfter"]
            .as_array()
            .unwrap()
            .contains(&json!("joined")),
        "{seen}"
    );
    // Both nodes answered.
    let hits = seen["hits"].as_array().unwrap();
    assert!(hits.iter().all(|h| h.as_u64().unwrap() >= 3), "{seen}");
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_typescript_sdk_launches_mcp_stdio_which_relays_to_a_gateway() {
    let sdk = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("mcp-sdk");
    assert!(
        sdk.join("node_modules/@modelcontextprotocol/sdk").is_dir(),
        "the MCP SDK is not installed: run scripts/test (npm ci --prefix tests/mcp-sdk)"
    );
    let redis = RedisServer::start().await;
    let _w = WorkerProcess::start(&redis, "w1", &["--builtin"]).await;
    let a = gateway(&redis, "a", &[]).await;
    wait_for_tools(&a).await;
    let seen = run_client(
        std::path::Path::new("node"),
        &[
            sdk.join("stdio_client.mjs").display().to_string(),
            switchboard_harness::switchboard_bin().display().to_string(),
            a.ws_url(),
            token("alice"),
        ],
    )
    .await;
    assert_eq!(seen["server"], "switchboard", "{seen}");
    assert_eq!(seen["tools"], json!(["echo", "fail", "sleep"]), "{seen}");
    assert_eq!(
        seen["sleep"]["structuredContent"]["slept_ms"], 300,
        "{seen}"
    );
    assert!(
        seen["progress"].as_array().is_some_and(|p| !p.is_empty()),
        "progress relayed: {seen}"
    );
}
