//! MCP conformance, as the official SDKs meet it (issue 12, item 3), on both backends: `_meta`
//! on every request's params, fields newer MCP revisions (and the TypeScript SDK's task flow)
//! add ignored by MCP's methods, `execution.taskSupport` in `tools/list`, protocol version
//! negotiation (2024-11-05 included), and `hello` / `initialize` on the wrong kind of connection.

use std::time::Duration;

use serde_json::{Value, json};
use switchboard_gateway::GatewayConfig;
use switchboard_harness::{
    DEADLINE, GatewayWithTools, Kind, WsClient, both_backends, every_backend,
};
use switchboard_protocol::MCP_SUBPROTOCOL;
use switchboard_protocol::methods::Ignored;
use switchboard_protocol::methods::session::MCP_VERSIONS;
use switchboard_protocol::methods::tools::{TaskSupport, ToolsList};

type Setup = GatewayWithTools;

/// A dev gateway (anonymous clients allowed, open mode) with the builtin tools.
async fn setup(kind: Kind) -> Setup {
    let mut config = GatewayConfig::dev("mcp-node");
    config.tuning.readiness_interval = Duration::from_millis(100);
    config.tuning.registry_interval = Duration::from_millis(100);
    GatewayWithTools::start(config, kind).await
}

/// A socket speaking the `mcp` subprotocol, not yet initialized.
async fn mcp_socket(s: &Setup) -> WsClient {
    WsClient::connect_with(
        &s.gw.ws_url(),
        &[("Sec-WebSocket-Protocol", MCP_SUBPROTOCOL)],
    )
    .await
}

/// An initialized MCP socket that lists the builtin tools.
async fn mcp_client(s: &Setup) -> WsClient {
    let mut c = mcp_socket(s).await;
    let init = c
        .call(
            "initialize",
            json!({"protocolVersion": "2025-11-25", "capabilities": {},
                   "clientInfo": {"name": "t", "version": "1"}}),
        )
        .await;
    assert_ok(&init);
    for tool in ["echo", "sleep"] {
        c.wait_for_tool(tool).await;
    }
    c
}

#[track_caller]
fn assert_ok(r: &Value) {
    assert!(r.get("result").is_some(), "expected a result: {r}");
}

#[track_caller]
fn assert_error(r: &Value, code: i64) -> String {
    assert_eq!(r["error"]["code"], code, "{r}");
    r["error"]["message"].as_str().unwrap().to_owned()
}

// A task-augmented tool call: tasks, leases and queues on a cluster's shards too.
every_backend!(the_typescript_sdk_task_flow_works);

both_backends!(
    meta_is_accepted_on_every_request,
    mcp_methods_ignore_fields_they_do_not_read,
    tools_declare_optional_task_support,
    protocol_versions_are_negotiated,
    hello_and_initialize_name_the_connection_they_open,
);

async fn meta_is_accepted_on_every_request(kind: Kind) {
    let s = setup(kind).await;
    let meta =
        json!({"progressToken": "p", "io.modelcontextprotocol/related-task": {"taskId": "x"}});

    // MCP: every method, with `_meta`.
    let mut m = mcp_socket(&s).await;
    assert_ok(&m.call("ping", json!({"_meta": meta})).await);
    assert_ok(
        &m.call(
            "initialize",
            json!({"protocolVersion": "2025-11-25", "capabilities": {}, "_meta": meta,
                   "clientInfo": {"name": "t", "version": "1"}}),
        )
        .await,
    );
    m.wait_for_tool("sleep").await;
    assert_ok(&m.call("tools/list", json!({"_meta": meta})).await);
    let r = m
        .call(
            "tools/call",
            json!({"name": "echo", "arguments": {"m": 1}, "_meta": {"progressToken": 3}}),
        )
        .await;
    assert_eq!(r["result"]["structuredContent"], json!({"m": 1}), "{r}");
    let r = m
        .call(
            "tools/call",
            json!({"name": "sleep", "arguments": {"ms": 60_000}, "task": {}, "_meta": meta}),
        )
        .await;
    let task = r["result"]["task"]["taskId"]
        .as_str()
        .expect("a task")
        .to_owned();
    let r = m
        .call("tasks/get", json!({"taskId": task, "_meta": meta}))
        .await;
    assert_eq!(r["result"]["status"], "working", "{r}");
    let r = m
        .call("tasks/cancel", json!({"taskId": task, "_meta": meta}))
        .await;
    assert_eq!(r["result"]["status"], "cancelled", "{r}");
    let r = m
        .call("tasks/result", json!({"taskId": task, "_meta": meta}))
        .await;
    assert_eq!(r["result"]["isError"], true, "{r}");

    // Switchboard's own methods accept `_meta` too, and still refuse other unknown fields.
    let mut c = WsClient::connect(&s.gw.ws_url()).await;
    let r = c.call("hello", json!({"_meta": meta})).await;
    assert!(r["result"]["session"].is_string(), "{r}");
    let r = c
        .call("subscribe", json!({"topic": "room:1", "_meta": meta}))
        .await;
    assert_eq!(r["result"]["topic"], "room:1", "{r}");
    assert_ok(
        &c.call(
            "publish",
            json!({"topic": "room:1", "data": {"_meta": 1}, "_meta": meta}),
        )
        .await,
    );
    let event = c.next_event().await;
    assert_eq!(
        event["data"],
        json!({"_meta": 1}),
        "data is the publisher's"
    );
    assert_ok(
        &c.call("unsubscribe", json!({"topic": "room:1", "_meta": {}}))
            .await,
    );
    let why = assert_error(
        &c.call("subscribe", json!({"topic": "room:1", "nope": 1}))
            .await,
        -32602,
    );
    assert!(why.contains("nope"), "{why}");
    // `_meta` is an object wherever it is.
    for (method, params) in [
        ("subscribe", json!({"topic": "room:1", "_meta": 5})),
        ("tasks/get", json!({"taskId": "t", "_meta": "x"})),
        ("tools/call", json!({"name": "echo", "_meta": []})),
    ] {
        let why = assert_error(&c.call(method, params).await, -32602);
        assert!(
            why.contains("_meta") || why.contains("map"),
            "{method}: {why}"
        );
    }
}

async fn mcp_methods_ignore_fields_they_do_not_read(kind: Kind) {
    let s = setup(kind).await;
    let mut m = mcp_socket(&s).await;
    let later = json!({"added": "in a later revision"});
    assert_ok(&m.call("ping", json!({"future": later})).await);
    assert_ok(
        &m.call(
            "initialize",
            json!({"protocolVersion": "2025-11-25", "capabilities": {},
                   "clientInfo": {"name": "t", "version": "1"}, "future": later}),
        )
        .await,
    );
    m.wait_for_tool("echo").await;
    assert_ok(
        &m.call("tools/list", json!({"cursor": null, "future": later}))
            .await,
    );
    let r = m
        .call(
            "tools/call",
            json!({"name": "echo", "arguments": {"f": 1}, "future": later, "task": {"ttl": 60_000, "future": 1}}),
        )
        .await;
    let task = r["result"]["task"]["taskId"]
        .as_str()
        .expect("a task")
        .to_owned();
    for method in ["tasks/get", "tasks/result"] {
        let r = m
            .call(method, json!({"taskId": task, "future": later}))
            .await;
        assert_ok(&r);
    }
    let r = m
        .call("tasks/cancel", json!({"taskId": task, "future": later}))
        .await;
    // The echo is done by now: refused as finished, not for the field.
    let why = assert_error(&r, -32602);
    assert!(why.contains("already"), "{why}");
}

async fn the_typescript_sdk_task_flow_works(kind: Kind) {
    // `client.experimental.tasks.callToolStream` (SDK 1.32): `tools/call` with `task` (and
    // `_meta.progressToken` when progress is wanted), then `tasks/get` polls, and
    // `tasks/result`, each sent with the same options: `task` and `_meta` along.
    let s = setup(kind).await;
    let mut m = mcp_client(&s).await;
    let r = m
        .call(
            "tools/call",
            json!({"name": "sleep", "arguments": {"ms": 200}, "task": {"ttl": 60_000},
                   "_meta": {"progressToken": 0}}),
        )
        .await;
    let task = &r["result"]["task"];
    assert_eq!(task["status"], "working", "{r}");
    let task_id = task["taskId"].as_str().unwrap().to_owned();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut poll = 0;
    loop {
        poll += 1;
        let r = m
            .call(
                "tasks/get",
                json!({"taskId": task_id, "task": {"ttl": 60_000}, "_meta": {"progressToken": poll}}),
            )
            .await;
        let status = r["result"]["status"]
            .as_str()
            .unwrap_or_else(|| panic!("{r}"));
        if status == "completed" {
            break;
        }
        assert_eq!(status, "working", "{r}");
        assert!(tokio::time::Instant::now() < deadline, "never completed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = m
        .call(
            "tasks/result",
            json!({"taskId": task_id, "task": {"ttl": 60_000}, "_meta": {"progressToken": poll + 1}}),
        )
        .await;
    assert_eq!(r["result"]["structuredContent"]["slept_ms"], 200, "{r}");
    assert_eq!(r["result"]["isError"], false);
}

async fn tools_declare_optional_task_support(kind: Kind) {
    let s = setup(kind).await;
    let mut m = mcp_client(&s).await;
    let r = m.call("tools/list", json!({})).await;
    let tools = r["result"]["tools"].as_array().unwrap();
    assert!(tools.len() >= 2, "{r}");
    for t in tools {
        assert_eq!(t["execution"], json!({"taskSupport": "optional"}), "{t}");
    }
    // The typed result reads it too.
    let listed = m.method::<ToolsList>(&Ignored {}).await.unwrap();
    assert!(
        listed
            .tools
            .iter()
            .all(|t| t.execution.and_then(|e| e.task_support) == Some(TaskSupport::Optional))
    );
}

async fn protocol_versions_are_negotiated(kind: Kind) {
    let s = setup(kind).await;
    assert_eq!(MCP_VERSIONS.last(), Some(&"2024-11-05"));
    let mut m = mcp_socket(&s).await;
    let d = m.call("server/discover", json!({})).await;
    assert_eq!(d["result"]["supportedVersions"], json!(MCP_VERSIONS), "{d}");
    for (asked, answered) in [
        ("2024-11-05", "2024-11-05"),
        ("2025-03-26", "2025-03-26"),
        ("2025-06-18", "2025-06-18"),
        ("2025-11-25", "2025-11-25"),
        // The stateless revision has no `initialize`: the newest that has one.
        ("2026-07-28", "2025-11-25"),
        ("1999-01-01", "2025-11-25"),
    ] {
        let mut m = mcp_socket(&s).await;
        let r = m
            .call(
                "initialize",
                json!({"protocolVersion": asked, "capabilities": {},
                       "clientInfo": {"name": "t", "version": "1"}}),
            )
            .await;
        assert_eq!(r["result"]["protocolVersion"], answered, "{asked}: {r}");
    }

    // A 2024-11-05 client: the result has what that revision requires, and the tools work.
    let mut old = mcp_socket(&s).await;
    let r = old
        .call(
            "initialize",
            json!({"protocolVersion": "2024-11-05", "capabilities": {"roots": {}},
                   "clientInfo": {"name": "old", "version": "0.1"}}),
        )
        .await;
    let res = &r["result"];
    assert!(res["capabilities"].is_object(), "{r}");
    assert_eq!(res["capabilities"]["tools"]["listChanged"], true);
    assert_eq!(res["serverInfo"]["name"], "switchboard");
    assert!(res["serverInfo"]["version"].is_string());
    old.send_text(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}).to_string())
        .await;
    old.wait_for_tool("echo").await;
    let r = old.call("tools/list", json!({})).await;
    for t in r["result"]["tools"].as_array().unwrap() {
        assert!(
            t["name"].is_string() && t["inputSchema"]["type"] == "object",
            "{t}"
        );
    }
    let r = old
        .call(
            "tools/call",
            json!({"name": "echo", "arguments": {"v": 2024}}),
        )
        .await;
    let res = &r["result"];
    assert_eq!(res["content"][0]["type"], "text", "{r}");
    assert!(res["content"][0]["text"].is_string());
    assert_eq!(res["isError"], false);
}

async fn hello_and_initialize_name_the_connection_they_open(kind: Kind) {
    let s = setup(kind).await;

    // `hello` on an MCP socket, before and after `initialize`.
    let mut m = mcp_socket(&s).await;
    let why = assert_error(&m.call("hello", json!({})).await, -32600);
    assert!(why.contains("MCP") && why.contains("initialize"), "{why}");
    // It opened nothing.
    assert_error(&m.call("tools/list", json!({})).await, -32001);
    assert_ok(
        &m.call("initialize", json!({"protocolVersion": "2025-11-25"}))
            .await,
    );
    let again = assert_error(&m.call("hello", json!({})).await, -32600);
    assert_eq!(again, why);
    assert_ok(&m.call("tools/list", json!({})).await);

    // `initialize` on a switchboard.v1 socket, before and after `hello`.
    let mut c = WsClient::connect(&s.gw.ws_url()).await;
    let why = assert_error(
        &c.call("initialize", json!({"protocolVersion": "2025-11-25"}))
            .await,
        -32600,
    );
    assert!(
        why.contains("switchboard.v1") && why.contains("hello"),
        "{why}"
    );
    assert_error(&c.call("tools/list", json!({})).await, -32001);
    c.hello().await;
    let again = assert_error(
        &c.call("initialize", json!({"protocolVersion": "2025-11-25"}))
            .await,
        -32600,
    );
    assert_eq!(again, why);
    // The second `hello` keeps its own answer.
    let r = c.call("hello", json!({})).await;
    assert_eq!(assert_error(&r, -32600), "hello was already done");
}
