//! Tools offered by clients (`tools/register`), across two in-process gateway nodes on one
//! real Redis, each node with its own Redis connections, and a worker hosting the built-in
//! tools: a tool offered on node 1 is listed and called on node 2 and answered by the offering
//! socket; the grant, bad input and the caps are refused; a socket that goes (or does not
//! answer in time) ends its calls with a clear `isError` result and its tools leave every
//! catalogue (`list_changed`). One case runs on the in-memory backend (`switchboard dev`).

use std::time::Duration;

use serde_json::{Value, json};
use switchboard_core::auth::{self, Claims};
use switchboard_gateway::GatewayConfig;
use switchboard_harness::{
    InProcessGateway, Kind, RedisServer, TestBackend, WsClient, redis_backend,
};
use switchboard_worker::tools::builtin::add_builtins;
use switchboard_worker::{Toolbox, WorkerConfig};

const SECRET: &[u8] = b"client-tools-secret";
const LIST_CHANGED: &str = "notifications/tools/list_changed";

struct Cluster {
    n1: InProcessGateway,
    n2: InProcessGateway,
    _worker: tokio::task::JoinHandle<Result<(), switchboard_worker::RunError>>,
    _redis: RedisServer,
}

fn config(node: &str, tweak: &impl Fn(&mut GatewayConfig)) -> GatewayConfig {
    let mut config = GatewayConfig::dev(node);
    config.auth.jwt_secrets = vec![String::from_utf8_lossy(SECRET).into_owned()];
    // Tokens required: not open mode, so grants decide.
    config.auth.allow_anonymous = false;
    config.tuning.readiness_interval = Duration::from_millis(100);
    config.tuning.registry_interval = Duration::from_millis(100);
    tweak(&mut config);
    config
}

/// Two nodes and a worker with the built-in tools, on one Redis.
async fn cluster(tweak: impl Fn(&mut GatewayConfig)) -> Cluster {
    let redis = RedisServer::start().await;
    let mut toolbox = Toolbox::new();
    add_builtins(&mut toolbox).unwrap();
    let mut wc = WorkerConfig::new("w1");
    wc.heartbeat = Duration::from_millis(100);
    let worker = tokio::spawn(switchboard_worker::run(
        wc,
        redis_backend(&redis),
        toolbox,
        std::future::pending(),
    ));
    let n1 =
        InProcessGateway::start_ready(config("n1", &tweak), redis_backend(&redis).backend()).await;
    let n2 =
        InProcessGateway::start_ready(config("n2", &tweak), redis_backend(&redis).backend()).await;
    Cluster {
        n1,
        n2,
        _worker: worker,
        _redis: redis,
    }
}

/// A client that said `hello` with a token for `sub` granting `register` (tools it may offer)
/// and calls of every tool; it waits until the workers' tools are listed.
async fn client(gw: &InProcessGateway, sub: &str, register: &[&str]) -> WsClient {
    let claims = Claims {
        tools: Some(vec!["*".into()]),
        register: (!register.is_empty()).then(|| register.iter().map(|s| s.to_string()).collect()),
        ..Claims::subject(sub)
    };
    let token = auth::mint_claims(SECRET, &claims).unwrap();
    let mut c = WsClient::connect(&format!("{}?token={token}", gw.ws_url())).await;
    c.hello().await;
    c.wait_for_tool("echo").await;
    c
}

fn lookup(name: &str) -> Value {
    json!({
        "name": name,
        "description": "Looks a key up in the client's own store.",
        "inputSchema": {"type": "object", "properties": {"key": {"type": "string"}}, "required": ["key"]},
    })
}

/// Reads until a message with `method` (a request or a notification) arrives; returns it.
async fn next_with_method(c: &mut WsClient, method: &str) -> Value {
    if let Some(v) = c.take_notification(method) {
        return v;
    }
    loop {
        let v = c.read_json().await;
        if v["method"] == method {
            return v;
        }
    }
}

/// Reads until the reply to request `id`.
async fn reply_to(c: &mut WsClient, id: u64) -> Value {
    loop {
        let v = c.read_json().await;
        if v["id"] == json!(id) && v.get("method").is_none() {
            return v;
        }
    }
}

/// Reads `list_changed` notifications until, after one, `tools/list` lists `tool` (or no longer
/// does, `present: false`). Fails the test if none comes in time.
async fn list_changed_until(c: &mut WsClient, tool: &str, present: bool) {
    loop {
        next_with_method(c, LIST_CHANGED).await;
        if listed(c, tool).await == present {
            return;
        }
    }
}

async fn listed(c: &mut WsClient, tool: &str) -> bool {
    let r = c.call("tools/list", json!({})).await;
    r["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["name"] == tool)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_offered_on_one_node_is_called_from_another() {
    let cl = cluster(|_| {}).await;
    let mut a = client(&cl.n1, "alice", &["alice.*"]).await;
    let mut b = client(&cl.n2, "bob", &[]).await;
    assert!(!listed(&mut b, "alice.lookup").await);

    let mut tool = lookup("alice.lookup");
    tool["cache"] = json!({"ttlMs": 60000});
    let r = a.call("tools/register", json!({"tools": [tool]})).await;
    assert_eq!(r["result"]["tools"], json!(["alice.lookup"]), "{r}");

    // Node 2 hears of it: list_changed, then the tool in its list, as MCP describes it.
    list_changed_until(&mut b, "alice.lookup", true).await;
    let r = b.call("tools/list", json!({})).await;
    let listed_tool = r["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "alice.lookup")
        .cloned()
        .unwrap_or_else(|| panic!("not listed: {r}"));
    assert_eq!(listed_tool["inputSchema"]["required"], json!(["key"]));
    assert_eq!(listed_tool["execution"]["taskSupport"], "optional");

    // Arguments are checked against the offered schema before anything is routed.
    let r = b
        .call(
            "tools/call",
            json!({"name": "alice.lookup", "arguments": {}}),
        )
        .await;
    assert_eq!(r["error"]["code"], -32602, "{r}");

    // B calls; A is asked, reports progress, answers; B gets the answer as the result.
    let call = b
        .send_request(
            "tools/call",
            json!({"name": "alice.lookup", "arguments": {"key": "k1"}, "_meta": {"progressToken": "p1"}}),
        )
        .await;
    let req = next_with_method(&mut a, "tools/call").await;
    assert_eq!(req["params"]["name"], "alice.lookup", "{req}");
    assert_eq!(req["params"]["arguments"], json!({"key": "k1"}));
    let token = req["params"]["_meta"]["progressToken"].clone();
    assert_eq!(token, req["id"], "{req}");
    assert!(
        req["params"]["_meta"]["switchboard/taskId"].is_string(),
        "{req}"
    );
    a.send_text(
        json!({"jsonrpc": "2.0", "method": "notifications/progress",
               "params": {"progressToken": token, "progress": 1, "total": 2, "message": "half"}})
        .to_string(),
    )
    .await;
    let p = next_with_method(&mut b, "notifications/progress").await;
    assert_eq!(p["params"]["progressToken"], "p1", "{p}");
    assert_eq!(p["params"]["message"], "half", "{p}");
    a.send_text(
        json!({"jsonrpc": "2.0", "id": req["id"], "result": {
            "content": [{"type": "text", "text": "v1"}],
            "structuredContent": {"value": "v1"}}})
        .to_string(),
    )
    .await;
    let r = reply_to(&mut b, call).await;
    assert_eq!(
        r["result"]["structuredContent"],
        json!({"value": "v1"}),
        "{r}"
    );
    assert_eq!(r["result"]["isError"], false, "{r}");
    assert_eq!(r["result"]["_meta"]["switchboard/cached"], false, "{r}");

    // Cached like any tool's result: the same call is answered without asking A again.
    let r = b
        .call(
            "tools/call",
            json!({"name": "alice.lookup", "arguments": {"key": "k1"}}),
        )
        .await;
    assert_eq!(r["result"]["_meta"]["switchboard/cached"], true, "{r}");

    // A JSON-RPC error from the client is an isError result naming the tool.
    let call = b
        .send_request(
            "tools/call",
            json!({"name": "alice.lookup", "arguments": {"key": "k2"}}),
        )
        .await;
    let req = next_with_method(&mut a, "tools/call").await;
    a.send_text(
        json!({"jsonrpc": "2.0", "id": req["id"], "error": {"code": -1, "message": "no such key"}})
            .to_string(),
    )
    .await;
    let r = reply_to(&mut b, call).await;
    assert_eq!(r["result"]["isError"], true, "{r}");
    let text = r["result"]["content"][0]["text"].as_str().unwrap();
    assert!(
        text.contains("alice.lookup") && text.contains("no such key"),
        "{text}"
    );

    // A response to no call of A's is ignored (no reply), and A still works.
    a.send_text(json!({"jsonrpc": "2.0", "id": "sb-999", "result": {"content": []}}).to_string())
        .await;
    assert_eq!(a.call("ping", json!({})).await["result"], json!({}));

    // Unregistered: gone from node 2's list, list_changed there.
    let r = a
        .call("tools/unregister", json!({"names": ["alice.lookup"]}))
        .await;
    assert_eq!(r["result"]["tools"], json!([]), "{r}");
    list_changed_until(&mut b, "alice.lookup", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registering_takes_the_grant_and_good_input() {
    let cl = cluster(|c| c.tuning.max_client_tools = 3).await;
    let mut a = client(&cl.n1, "alice", &["alice.*", "echo"]).await;
    let mut nobody = client(&cl.n1, "carol", &[]).await;
    let mut d = client(&cl.n2, "dave", &["alice.*"]).await;

    // Without a register grant for the name: -32002, nothing registered.
    let r = nobody
        .call("tools/register", json!({"tools": [lookup("alice.x")]}))
        .await;
    assert_eq!(r["error"]["code"], -32002, "{r}");
    let r = a
        .call(
            "tools/register",
            json!({"tools": [lookup("alice.ok"), lookup("bob.x")]}),
        )
        .await;
    assert_eq!(r["error"]["code"], -32002, "{r}");
    assert_eq!(r["error"]["data"]["name"], "bob.x", "{r}");

    let bad_schema = json!({"name": "alice.bad", "inputSchema": {"type": "object", "properties": {"a": {"type": "nope"}}}});
    let not_object = json!({"name": "alice.bad", "inputSchema": {"type": "string"}});
    let bad_timeout =
        json!({"name": "alice.bad", "inputSchema": {"type": "object"}, "timeoutMs": 3_600_000});
    let bad_scope = json!({"name": "alice.bad", "inputSchema": {"type": "object"}, "cache": {"ttlMs": 1, "scope": "all"}});
    let unknown_field =
        json!({"name": "alice.bad", "inputSchema": {"type": "object"}, "handler": "x"});
    for (what, params) in [
        ("bad name", json!({"tools": [lookup("alice bad")]})),
        ("invalid schema", json!({"tools": [bad_schema]})),
        ("schema not an object", json!({"tools": [not_object]})),
        ("timeout over the max", json!({"tools": [bad_timeout]})),
        ("bad cache scope", json!({"tools": [bad_scope]})),
        ("unknown field", json!({"tools": [unknown_field]})),
        ("empty", json!({"tools": []})),
        ("no tools", json!({})),
        (
            "twice in one request",
            json!({"tools": [lookup("alice.a"), lookup("alice.a")]}),
        ),
        // A worker's tool is never shadowed.
        ("a worker's name", json!({"tools": [lookup("echo")]})),
    ] {
        let r = a.call("tools/register", params).await;
        assert_eq!(r["error"]["code"], -32602, "{what}: {r}");
    }
    // All or nothing: none of those is offered.
    let r = a
        .call("tools/unregister", json!({"names": ["alice.a"]}))
        .await;
    assert_eq!(r["error"]["code"], -32602, "{r}");

    let r = a
        .call(
            "tools/register",
            json!({"tools": [lookup("alice.a"), lookup("alice.b")]}),
        )
        .await;
    assert_eq!(r["result"]["tools"], json!(["alice.a", "alice.b"]), "{r}");
    // The same name again, from the same socket or another on another node: refused.
    let r = a
        .call("tools/register", json!({"tools": [lookup("alice.a")]}))
        .await;
    assert_eq!(r["error"]["code"], -32602, "{r}");
    d.wait_for_tool("alice.a").await;
    let r = d
        .call("tools/register", json!({"tools": [lookup("alice.a")]}))
        .await;
    assert_eq!(r["error"]["code"], -32602, "{r}");
    // Over the cap (3 per socket): -32006 naming it.
    let r = a
        .call(
            "tools/register",
            json!({"tools": [lookup("alice.c"), lookup("alice.d")]}),
        )
        .await;
    assert_eq!(r["error"]["code"], -32006, "{r}");
    assert_eq!(r["error"]["data"]["limit"], "maxClientTools", "{r}");
    let r = a
        .call("tools/register", json!({"tools": [lookup("alice.c")]}))
        .await;
    assert_eq!(
        r["result"]["tools"],
        json!(["alice.a", "alice.b", "alice.c"]),
        "{r}"
    );
    // Unregistered and offered again at once (the catalogue may still list the old one).
    let r = a
        .call("tools/unregister", json!({"names": ["alice.c"]}))
        .await;
    assert_eq!(r["result"]["tools"], json!(["alice.a", "alice.b"]), "{r}");
    let r = a
        .call("tools/register", json!({"tools": [lookup("alice.c")]}))
        .await;
    assert_eq!(
        r["result"]["tools"],
        json!(["alice.a", "alice.b", "alice.c"]),
        "{r}"
    );
    // The socket still works for everything else.
    let r = a
        .call("tools/call", json!({"name": "echo", "arguments": {"x": 1}}))
        .await;
    assert_eq!(r["result"]["structuredContent"], json!({"x": 1}), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_offering_socket_goes_its_calls_end_and_its_tools_leave() {
    let cl = cluster(|_| {}).await;
    let mut a = client(&cl.n1, "alice", &["alice.*"]).await;
    let mut b = client(&cl.n2, "bob", &[]).await;
    let r = a
        .call("tools/register", json!({"tools": [lookup("alice.lookup")]}))
        .await;
    assert!(r["result"].is_object(), "{r}");
    b.wait_for_tool("alice.lookup").await;

    let call = b
        .send_request(
            "tools/call",
            json!({"name": "alice.lookup", "arguments": {"key": "k"}}),
        )
        .await;
    let req = next_with_method(&mut a, "tools/call").await;
    assert_eq!(req["params"]["name"], "alice.lookup");
    // A goes without answering.
    a.close(1000).await;
    drop(a);

    let r = reply_to(&mut b, call).await;
    assert_eq!(r["result"]["isError"], true, "{r}");
    let text = r["result"]["content"][0]["text"].as_str().unwrap();
    assert!(
        text.contains("alice.lookup") && text.contains("disconnected"),
        "{text}"
    );
    let task = r["result"]["_meta"]["switchboard/taskId"].clone();
    let t = b.call("tasks/get", json!({"taskId": task})).await;
    assert_eq!(t["result"]["status"], "failed", "{t}");

    // The tool leaves node 2's catalogue, with list_changed.
    list_changed_until(&mut b, "alice.lookup", false).await;
    let r = b
        .call(
            "tools/call",
            json!({"name": "alice.lookup", "arguments": {"key": "k"}}),
        )
        .await;
    assert_eq!(r["error"]["code"], -32602, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unanswered_and_cancelled_calls_end_and_the_client_is_told() {
    let cl = cluster(|c| c.tuning.client_tool_timeout = Duration::from_secs(60)).await;
    let mut a = client(&cl.n1, "alice", &["alice.*"]).await;
    let mut b = client(&cl.n2, "bob", &[]).await;
    let mut slow = lookup("alice.slow");
    slow["timeoutMs"] = json!(500);
    let r = a
        .call(
            "tools/register",
            json!({"tools": [slow, lookup("alice.lookup")]}),
        )
        .await;
    assert!(r["result"].is_object(), "{r}");
    b.wait_for_tool("alice.slow").await;

    // Not answered by its deadline: isError for B, notifications/cancelled for A.
    let call = b
        .send_request(
            "tools/call",
            json!({"name": "alice.slow", "arguments": {"key": "k"}}),
        )
        .await;
    let req = next_with_method(&mut a, "tools/call").await;
    let r = reply_to(&mut b, call).await;
    assert_eq!(r["result"]["isError"], true, "{r}");
    let text = r["result"]["content"][0]["text"].as_str().unwrap();
    assert!(text.contains("did not answer"), "{text}");
    let n = next_with_method(&mut a, "notifications/cancelled").await;
    assert_eq!(n["params"]["requestId"], req["id"], "{n}");
    // A late answer is ignored.
    a.send_text(json!({"jsonrpc": "2.0", "id": req["id"], "result": {"content": []}}).to_string())
        .await;

    // B cancels its call: A is told to stop.
    let call = b
        .send_request(
            "tools/call",
            json!({"name": "alice.lookup", "arguments": {"key": "c"}}),
        )
        .await;
    let req = next_with_method(&mut a, "tools/call").await;
    b.send_text(
        json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": call}})
            .to_string(),
    )
    .await;
    let n = next_with_method(&mut a, "notifications/cancelled").await;
    assert_eq!(n["params"]["requestId"], req["id"], "{n}");
    assert_eq!(n["params"]["reason"], "cancelled", "{n}");
    // A still serves its other calls.
    let call = b
        .send_request(
            "tools/call",
            json!({"name": "alice.lookup", "arguments": {"key": "d"}}),
        )
        .await;
    let req = next_with_method(&mut a, "tools/call").await;
    a.send_text(
        json!({"jsonrpc": "2.0", "id": req["id"], "result": {"content": [{"type": "text", "text": "d"}]}})
            .to_string(),
    )
    .await;
    let r = reply_to(&mut b, call).await;
    assert_eq!(r["result"]["content"][0]["text"], "d", "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_backend_hosts_offered_tools_too() {
    // One node, open mode, as `switchboard dev` runs: anyone may offer and call.
    let b = TestBackend::start(Kind::Memory).await;
    let mut config = GatewayConfig::dev("dev");
    config.tuning.registry_interval = Duration::from_millis(100);
    config.tuning.readiness_interval = Duration::from_millis(100);
    let gw = InProcessGateway::start_ready(config, b.backend).await;
    let mut a = WsClient::connect(&gw.ws_url()).await;
    a.hello().await;
    let mut b = WsClient::connect(&gw.ws_url()).await;
    b.hello().await;
    let r = a
        .call("tools/register", json!({"tools": [lookup("dev.lookup")]}))
        .await;
    assert_eq!(r["result"]["tools"], json!(["dev.lookup"]), "{r}");
    list_changed_until(&mut b, "dev.lookup", true).await;

    let call = b
        .send_request(
            "tools/call",
            json!({"name": "dev.lookup", "arguments": {"key": "k"}}),
        )
        .await;
    let req = next_with_method(&mut a, "tools/call").await;
    a.send_text(
        json!({"jsonrpc": "2.0", "id": req["id"], "result": {"content": [{"type": "text", "text": "v"}]}})
            .to_string(),
    )
    .await;
    let r = reply_to(&mut b, call).await;
    assert_eq!(r["result"]["content"][0]["text"], "v", "{r}");

    // Asked again, then gone without answering: the call ends, the tool leaves.
    let call = b
        .send_request(
            "tools/call",
            json!({"name": "dev.lookup", "arguments": {"key": "k2"}}),
        )
        .await;
    next_with_method(&mut a, "tools/call").await;
    a.close(1000).await;
    drop(a);
    let r = reply_to(&mut b, call).await;
    assert_eq!(r["result"]["isError"], true, "{r}");
    list_changed_until(&mut b, "dev.lookup", false).await;
}
