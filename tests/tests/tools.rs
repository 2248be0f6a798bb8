//! Tool calls through one gateway and an in-process worker, on both backends: the catalogue,
//! calls and their `_meta`, the cache, errors, tasks (get, result, cancel, ownership), progress,
//! cancellation and the per-connection limit.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use switchboard_core::auth;
use switchboard_core::backend::JobQueue;
use switchboard_gateway::GatewayConfig;
use switchboard_harness::{InProcessGateway, Kind, Store, TestBackend, WsClient, every_backend};
use switchboard_worker::tools::builtin::add_builtins;
use switchboard_worker::{Toolbox, WorkerConfig};

const SECRET: &[u8] = b"tools-secret";

struct Setup {
    gw: InProcessGateway,
    queue: Arc<dyn JobQueue>,
    _store: Store,
    _worker: tokio::task::JoinHandle<Result<(), switchboard_worker::RunError>>,
}

async fn setup(kind: Kind, tweak: impl FnOnce(&mut GatewayConfig)) -> Setup {
    let mut config = GatewayConfig::dev("tools-node");
    config.auth.jwt_secrets = vec![String::from_utf8_lossy(SECRET).into_owned()];
    config.tuning.readiness_interval = Duration::from_millis(100);
    config.tuning.registry_interval = Duration::from_millis(100);
    tweak(&mut config);
    let b = TestBackend::start(kind).await;
    let (backend, queue, store) = (b.backend, b.queue, b.store);
    let mut toolbox = Toolbox::new();
    add_builtins(&mut toolbox).unwrap();
    let mut wc = WorkerConfig::new("w1");
    wc.heartbeat = Duration::from_millis(100);
    wc.visibility_timeout = Duration::from_secs(5);
    let queue_for_tests = queue.clone();
    let worker = tokio::spawn(switchboard_worker::run(
        wc,
        queue,
        toolbox,
        std::future::pending(),
    ));
    let gw = InProcessGateway::start_ready(config, backend).await;
    let queue_handle = queue_for_tests;
    Setup {
        gw,
        queue: queue_handle,
        _store: store,
        _worker: worker,
    }
}

async fn client(s: &Setup, user: &str) -> WsClient {
    let token = auth::mint(SECRET, user, None).unwrap();
    let mut c = WsClient::connect(&format!("{}?token={token}", s.gw.ws_url())).await;
    c.hello().await;
    // The catalogue fills within a registry interval of the worker's first announcement.
    for tool in ["echo", "fail", "sleep"] {
        c.wait_for_tool(tool).await;
    }
    c
}

every_backend!(
    lists_tools_with_mcp_fields,
    echo_is_cached_and_key_order_does_not_matter,
    errors_are_results_and_never_cached,
    bad_calls_are_refused_before_routing,
    task_mode_and_task_methods,
    tasks_belong_to_their_caller,
    progress_reaches_the_caller,
    cancellation_stops_the_call,
    in_flight_calls_are_limited,
    nobody_to_run_it_means_timeout_at_the_deadline,
    an_unmodified_mcp_client_calls_tools,
    one_callers_cancel_keeps_the_shared_execution,
);

fn meta(r: &Value) -> &Value {
    &r["result"]["_meta"]
}

async fn lists_tools_with_mcp_fields(kind: Kind) {
    let s = setup(kind, |_| {}).await;
    let mut c = client(&s, "alice").await;
    let r = c.call("tools/list", json!({})).await;
    let tools = r["result"]["tools"].as_array().unwrap();
    let names: Vec<&str> = tools.iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["echo", "fail", "sleep"]);
    let sleep = &tools[2];
    assert_eq!(sleep["inputSchema"]["required"], json!(["ms"]));
    assert!(sleep["description"].is_string());
    assert_eq!(tools[0]["annotations"]["readOnlyHint"], true);
}

async fn echo_is_cached_and_key_order_does_not_matter(kind: Kind) {
    let s = setup(kind, |_| {}).await;
    let mut c = client(&s, "alice").await;
    let r1 = c
        .call(
            "tools/call",
            json!({"name": "echo", "arguments": {"a": 1, "b": [1, 2]}}),
        )
        .await;
    let res = &r1["result"];
    assert_eq!(res["isError"], false, "{r1}");
    assert_eq!(res["structuredContent"], json!({"a": 1, "b": [1, 2]}));
    assert_eq!(res["content"][0]["type"], "text");
    assert_eq!(meta(&r1)["switchboard/cached"], false);
    let hash = meta(&r1)["switchboard/callHash"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(hash.len(), 64);
    let first_task = meta(&r1)["switchboard/taskId"].clone();

    // Another user, another key order and spacing: the same call, from the cache.
    let mut bob = client(&s, "bob").await;
    let r2 = bob
        .call(
            "tools/call",
            json!({"name": "echo", "arguments": {"b": [1, 2], "a": 1}}),
        )
        .await;
    assert_eq!(meta(&r2)["switchboard/cached"], true, "{r2}");
    assert_eq!(meta(&r2)["switchboard/callHash"], hash.as_str());
    assert_ne!(
        meta(&r2)["switchboard/taskId"],
        first_task,
        "every call is its own task"
    );
    assert_eq!(r2["result"]["structuredContent"], res["structuredContent"]);

    // bypass and refresh skip the cache.
    for mode in ["bypass", "refresh"] {
        let r = bob
            .call(
                "tools/call",
                json!({"name": "echo", "arguments": {"a": 1, "b": [1, 2]}, "_meta": {"switchboard/cache": mode}}),
            )
            .await;
        assert_eq!(meta(&r)["switchboard/cached"], false, "{mode}: {r}");
    }
    let r = bob
        .call("tools/call", json!({"name": "echo", "arguments": {"a": 2}}))
        .await;
    assert_eq!(meta(&r)["switchboard/cached"], false);
}

async fn errors_are_results_and_never_cached(kind: Kind) {
    let s = setup(kind, |_| {}).await;
    let mut c = client(&s, "alice").await;
    for _ in 0..2 {
        let r = c
            .call(
                "tools/call",
                json!({"name": "fail", "arguments": {"message": "boom"}}),
            )
            .await;
        assert_eq!(r["result"]["isError"], true, "{r}");
        assert_eq!(r["result"]["content"][0]["text"], "boom");
        assert_eq!(meta(&r)["switchboard/cached"], false);
    }
}

async fn bad_calls_are_refused_before_routing(kind: Kind) {
    let s = setup(kind, |_| {}).await;
    let mut c = client(&s, "alice").await;
    let r = c
        .call("tools/call", json!({"name": "nope", "arguments": {}}))
        .await;
    assert_eq!(r["error"]["code"], -32602, "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unknown tool")
    );
    let r = c
        .call(
            "tools/call",
            json!({"name": "sleep", "arguments": {"ms": "long"}}),
        )
        .await;
    assert_eq!(r["error"]["code"], -32602, "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("invalid arguments"),
        "{r}"
    );
    let r = c
        .call("tools/call", json!({"name": "sleep", "arguments": {}}))
        .await;
    assert_eq!(r["error"]["code"], -32602, "missing required: {r}");
    let r = c.call("tools/call", json!({"arguments": {}})).await;
    assert_eq!(r["error"]["code"], -32602);
    let r = c
        .call(
            "tools/call",
            json!({"name": "echo", "_meta": {"switchboard/cache": "maybe"}}),
        )
        .await;
    assert_eq!(r["error"]["code"], -32602);
}

async fn task_mode_and_task_methods(kind: Kind) {
    let s = setup(kind, |_| {}).await;
    let mut c = client(&s, "alice").await;
    let r = c
        .call(
            "tools/call",
            json!({"name": "sleep", "arguments": {"ms": 300}, "task": {"ttl": 60000}}),
        )
        .await;
    let task = &r["result"]["task"];
    assert_eq!(task["status"], "working", "{r}");
    // At least what was asked, and at least until the call's deadline (sleep may run 10 min).
    assert!(task["ttl"].as_u64().unwrap() >= 610_000, "{task}");
    assert!(task["createdAt"].as_str().unwrap().ends_with('Z'));
    let id = task["taskId"].as_str().unwrap().to_owned();

    let g = c.call("tasks/get", json!({"taskId": id})).await;
    assert_eq!(g["result"]["taskId"], id.as_str(), "{g}");
    let res = c.call("tasks/result", json!({"taskId": id})).await;
    assert_eq!(res["result"]["structuredContent"]["slept_ms"], 300, "{res}");
    assert_eq!(meta(&res)["switchboard/taskId"], id.as_str());
    let g = c.call("tasks/get", json!({"taskId": id})).await;
    assert_eq!(g["result"]["status"], "completed");
    // A finished task cannot be cancelled.
    let r = c.call("tasks/cancel", json!({"taskId": id})).await;
    assert_eq!(r["error"]["code"], -32602, "{r}");

    // Every call is a task: the id in a plain call's _meta answers tasks/get.
    let r = c
        .call("tools/call", json!({"name": "echo", "arguments": {"x": 9}}))
        .await;
    let id = meta(&r)["switchboard/taskId"].as_str().unwrap().to_owned();
    let g = c.call("tasks/get", json!({"taskId": id})).await;
    assert_eq!(g["result"]["status"], "completed");
}

async fn tasks_belong_to_their_caller(kind: Kind) {
    let s = setup(kind, |_| {}).await;
    let mut alice = client(&s, "alice").await;
    let mut bob = client(&s, "bob").await;
    let r = alice
        .call(
            "tools/call",
            json!({"name": "echo", "arguments": {"secret": 1}}),
        )
        .await;
    let id = meta(&r)["switchboard/taskId"].as_str().unwrap().to_owned();
    for method in ["tasks/get", "tasks/result", "tasks/cancel"] {
        let theirs = bob.call(method, json!({"taskId": id})).await;
        let missing = bob
            .call(method, json!({"taskId": "0123456789abcdef"}))
            .await;
        assert_eq!(theirs["error"]["code"], -32004, "{method}: {theirs}");
        // No existence leak: someone else's task looks exactly like a missing one.
        assert_eq!(theirs["error"], missing["error"], "{method}");
    }
}

async fn progress_reaches_the_caller(kind: Kind) {
    let s = setup(kind, |_| {}).await;
    let mut c = client(&s, "alice").await;
    let r = c
        .call(
            "tools/call",
            json!({"name": "sleep", "arguments": {"ms": 400}, "_meta": {"progressToken": "p1"}}),
        )
        .await;
    assert_eq!(r["result"]["structuredContent"]["slept_ms"], 400, "{r}");
    let mut seen = Vec::new();
    while let Some(n) = c.take_notification("notifications/progress") {
        assert_eq!(n["params"]["progressToken"], "p1");
        assert_eq!(n["params"]["total"], 400.0);
        seen.push(n["params"]["progress"].as_f64().unwrap());
    }
    assert!(!seen.is_empty(), "no progress notification arrived");
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
}

async fn cancellation_stops_the_call(kind: Kind) {
    let s = setup(kind, |_| {}).await;
    let mut c = client(&s, "alice").await;
    // tasks/cancel on a task-mode call.
    let r = c
        .call(
            "tools/call",
            json!({"name": "sleep", "arguments": {"ms": 60000}, "task": {}}),
        )
        .await;
    let id = r["result"]["task"]["taskId"].as_str().unwrap().to_owned();
    let r = c.call("tasks/cancel", json!({"taskId": id})).await;
    assert_eq!(r["result"]["status"], "cancelled", "{r}");
    let res = c.call("tasks/result", json!({"taskId": id})).await;
    assert_eq!(res["result"]["isError"], true, "{res}");

    // notifications/cancelled on a plain call: no reply for it, the task is cancelled.
    let call_id = c
        .send_request(
            "tools/call",
            json!({"name": "sleep", "arguments": {"ms": 60001}}),
        )
        .await;
    c.send_text(
        json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": call_id}})
            .to_string(),
    )
    .await;
    // The very next reply is the ping's: the cancelled call is never answered.
    let ping_id = c.send_request("ping", json!({})).await;
    loop {
        let v = c.read_json().await;
        if v.get("id").is_some() {
            assert_eq!(
                v["id"],
                json!(ping_id),
                "the cancelled call was answered: {v}"
            );
            break;
        }
    }
    // The execution is gone from the worker: its slot is free for a short call.
    let r = c
        .call(
            "tools/call",
            json!({"name": "sleep", "arguments": {"ms": 10}}),
        )
        .await;
    assert_eq!(r["result"]["structuredContent"]["slept_ms"], 10, "{r}");
}

async fn in_flight_calls_are_limited(kind: Kind) {
    let s = setup(kind, |c| c.tuning.max_inflight_calls = 2).await;
    let mut c = client(&s, "alice").await;
    for ms in [60000, 60001] {
        c.send_request(
            "tools/call",
            json!({"name": "sleep", "arguments": {"ms": ms}}),
        )
        .await;
    }
    let r = c
        .call(
            "tools/call",
            json!({"name": "sleep", "arguments": {"ms": 60002}}),
        )
        .await;
    assert_eq!(r["error"]["code"], -32006, "{r}");
}

async fn nobody_to_run_it_means_timeout_at_the_deadline(kind: Kind) {
    let s = setup(kind, |c| {
        c.tuning.deadline_grace = Duration::from_millis(100)
    })
    .await;
    // A tool announced by a worker that never takes jobs.
    let spec = switchboard_core::tools::ToolSpec {
        name: "orphan".into(),
        title: None,
        description: String::new(),
        input_schema: json!({"type": "object"}),
        annotations: None,
        version: "1".into(),
        cache: switchboard_core::tools::CachePolicy::off(),
        timeout_ms: 300,
    };
    s.queue
        .announce(&switchboard_core::calls::WorkerAnnouncement {
            worker_id: "ghost".into(),
            tools: vec![spec],
            expires_at_ms: switchboard_core::clock::now_ms() + 600_000,
            client: false,
        })
        .await
        .unwrap();
    let mut c = client(&s, "alice").await;
    c.wait_for_tool("orphan").await;
    let started = tokio::time::Instant::now();
    let r = c
        .call("tools/call", json!({"name": "orphan", "arguments": {}}))
        .await;
    assert_eq!(r["error"]["code"], -32005, "{r}");
    let waited = started.elapsed();
    assert!(
        // The tool's 300 ms timeout plus the 100 ms grace, give or take a millisecond of
        // rounding: not at once, and not long after.
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
}

async fn an_unmodified_mcp_client_calls_tools(kind: Kind) {
    // Tokens required, so not open: the agent may call what its token grants.
    let s = setup(kind, |c| c.auth.allow_anonymous = false).await;
    let claims = auth::Claims {
        tools: Some(vec!["*".into()]),
        ..auth::Claims::subject("agent")
    };
    let token = auth::mint_claims(SECRET, &claims).unwrap();
    let url = s.gw.ws_url();
    let mut c = WsClient::connect_with(
        &url,
        &[
            ("sec-websocket-protocol", "mcp"),
            ("authorization", &format!("Bearer {token}")),
        ],
    )
    .await;
    // Stateless discovery works before initialize; nothing else does.
    let d = c.call("server/discover", json!({})).await;
    assert!(
        d["result"]["supportedVersions"]
            .as_array()
            .unwrap()
            .contains(&json!("2025-11-25")),
        "{d}"
    );
    let r = c.call("tools/list", json!({})).await;
    assert_eq!(r["error"]["code"], -32001, "{r}");
    assert_eq!(c.call("ping", json!({})).await["result"], json!({}));

    let init = c
        .call(
            "initialize",
            json!({"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}),
        )
        .await;
    let res = &init["result"];
    assert_eq!(res["protocolVersion"], "2025-06-18", "{init}");
    assert_eq!(res["capabilities"]["tools"]["listChanged"], true);
    assert_eq!(res["serverInfo"]["name"], "switchboard");
    c.send_text(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}).to_string())
        .await;
    c.wait_for_tool("echo").await;
    let r = c
        .call(
            "tools/call",
            json!({"name": "echo", "arguments": {"from": "mcp"}}),
        )
        .await;
    assert_eq!(
        r["result"]["structuredContent"],
        json!({"from": "mcp"}),
        "{r}"
    );

    // An unknown protocol version is answered with the newest this server speaks.
    let mut c2 = WsClient::connect_with(
        &url,
        &[
            ("sec-websocket-protocol", "mcp"),
            ("authorization", &format!("Bearer {token}")),
        ],
    )
    .await;
    let init = c2
        .call("initialize", json!({"protocolVersion": "1999-01-01"}))
        .await;
    assert_eq!(init["result"]["protocolVersion"], "2025-11-25");

    // Without a token (and no anonymous access) initialize is refused and the socket closes.
    let mut c3 = WsClient::connect_with(&url, &[("sec-websocket-protocol", "mcp")]).await;
    let r = c3.call("initialize", json!({})).await;
    assert_eq!(r["error"]["code"], -32001);
    assert_eq!(c3.read_close().await, 1008);
}

async fn one_callers_cancel_keeps_the_shared_execution(kind: Kind) {
    let s = setup(kind, |_| {}).await;
    let mut a = client(&s, "alice").await;
    let mut b = client(&s, "bob").await;
    let call = json!({"name": "sleep", "arguments": {"ms": 400}, "task": {}});
    let ra = a.call("tools/call", call.clone()).await;
    let rb = b.call("tools/call", call).await;
    let ta = ra["result"]["task"]["taskId"].as_str().unwrap().to_owned();
    let tb = rb["result"]["task"]["taskId"].as_str().unwrap().to_owned();
    // Alice leads the execution and cancels; Bob, who joined it, still gets the result.
    let r = a.call("tasks/cancel", json!({"taskId": ta})).await;
    assert_eq!(r["result"]["status"], "cancelled", "{r}");
    let res = b.call("tasks/result", json!({"taskId": tb})).await;
    assert_eq!(res["result"]["structuredContent"]["slept_ms"], 400, "{res}");
    let res = a.call("tasks/result", json!({"taskId": ta})).await;
    assert_eq!(res["result"]["isError"], true, "{res}");
    let g = a.call("tasks/get", json!({"taskId": ta})).await;
    assert_eq!(g["result"]["status"], "cancelled");

    // With `task`, the answer is a task even when the cache has the result.
    a.call("tools/call", json!({"name": "echo", "arguments": {"t": 1}}))
        .await;
    let r = a
        .call(
            "tools/call",
            json!({"name": "echo", "arguments": {"t": 1}, "task": {}}),
        )
        .await;
    assert_eq!(r["result"]["task"]["status"], "completed", "{r}");
}
