//! An MCP server nobody here wrote, hosted by a real worker process: the official
//! `@modelcontextprotocol/server-everything` (pinned in tests/mcp-sdk/package.json) over stdio,
//! declared as an `[[mcp]]` table of the worker's tools file. Through a real gateway and a real
//! Redis: its tools are listed under the prefix with their schemas and annotations, called, its
//! progress reaches the caller, and when its process is killed mid-call the caller gets an
//! `isError` result and the server is started again. The same server over Streamable HTTP is
//! hosted by `url`, and reconnected after it restarts.

use std::path::PathBuf;

use serde_json::{Value, json};
use switchboard_harness::{
    GatewayProcess, RedisServer, WorkerProcess, WsClient, eventually, free_port,
};

fn server_everything() -> PathBuf {
    let js = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("mcp-sdk/node_modules/@modelcontextprotocol/server-everything/dist/index.js");
    assert!(
        js.exists(),
        "{} is missing: run `npm ci --prefix tests/mcp-sdk` (scripts/test does)",
        js.display()
    );
    js
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sb-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The pid of a live child of `parent` whose command line mentions `what`.
fn child_of(parent: u32, what: &str) -> Option<i32> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the command name: state, ppid, ...
        let mut rest = stat.rsplit(')').next().unwrap_or("").split_whitespace();
        let state = rest.next().unwrap_or("");
        let ppid: u32 = rest.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        if ppid != parent || state == "Z" {
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(what) {
            return Some(pid);
        }
    }
    None
}

/// Reads until the reply to request `id`; the progress notifications read meanwhile are
/// returned with it.
async fn reply_to(c: &mut WsClient, id: u64) -> (Value, Vec<Value>) {
    let mut progress = Vec::new();
    loop {
        let v = c.read_json().await;
        if v["id"] == json!(id) {
            return (v, progress);
        }
        if v["method"] == "notifications/progress" {
            progress.push(v["params"].clone());
        }
    }
}

fn text(r: &Value) -> String {
    r["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_everything_is_hosted_called_killed_and_restarted() {
    let js = server_everything();
    let redis = RedisServer::start().await;
    let gw = GatewayProcess::start(
        &redis.url(),
        "gw-a",
        &["--registry-interval", "200ms", "--call-poll", "200ms"],
    )
    .await;
    let dir = temp_dir("mcp-host");
    let tools = dir.join("tools.toml");
    std::fs::write(
        &tools,
        format!(
            r#"
[[mcp]]
name = "everything"
command = ["node", "{js}", "stdio"]
timeout_ms = 60000
restart_backoff_min_ms = 100
restart_backoff_max_ms = 1000
"#,
            js = js.display()
        ),
    )
    .unwrap();
    let worker =
        WorkerProcess::start(&redis, "mcp-worker", &["--tools", tools.to_str().unwrap()]).await;
    let mut c = WsClient::connect(&gw.ws_url()).await;
    c.hello().await;
    c.wait_for_tool("everything_echo").await;

    // Listed under the prefix, with the server's schemas and annotations.
    let r = c.call("tools/list", json!({})).await;
    let listed = r["result"]["tools"].as_array().unwrap();
    let find = |name: &str| {
        listed
            .iter()
            .find(|t| t["name"] == name)
            .unwrap_or_else(|| panic!("{name} not listed: {r}"))
            .clone()
    };
    let echo = find("everything_echo");
    assert!(
        echo["inputSchema"]["properties"]["message"].is_object(),
        "{echo}"
    );
    assert_eq!(echo["annotations"]["readOnlyHint"], true, "{echo}");
    assert!(!echo["description"].as_str().unwrap().is_empty());
    let sum = find("everything_get-sum");
    assert!(sum["inputSchema"]["properties"]["a"].is_object(), "{sum}");
    find("everything_trigger-long-running-operation");
    assert!(
        listed.iter().all(|t| {
            let n = t["name"].as_str().unwrap();
            n.starts_with("everything_")
        }),
        "only the server's tools are hosted: {r}"
    );

    // Called through the gateway: the server's result.
    let r = c
        .call(
            "tools/call",
            json!({"name": "everything_echo", "arguments": {"message": "hello from switchboard"}}),
        )
        .await;
    assert_eq!(r["result"]["isError"], false, "{r}");
    assert!(text(&r).contains("hello from switchboard"), "{r}");
    let r = c
        .call(
            "tools/call",
            json!({"name": "everything_get-sum", "arguments": {"a": 2, "b": 40}}),
        )
        .await;
    assert!(text(&r).contains("42"), "{r}");
    // Bad arguments are refused against the server's own schema, before routing.
    let r = c
        .call(
            "tools/call",
            json!({"name": "everything_get-sum", "arguments": {"a": "two"}}),
        )
        .await;
    assert!(
        r.get("error").is_some() || r["result"]["isError"] == true,
        "{r}"
    );

    // The server's progress reaches the caller.
    let id = c
        .send_request(
            "tools/call",
            json!({
                "name": "everything_trigger-long-running-operation",
                "arguments": {"duration": 1, "steps": 4},
                "_meta": {"progressToken": "lr"},
            }),
        )
        .await;
    let (r, progress) = reply_to(&mut c, id).await;
    assert_eq!(r["result"]["isError"], false, "{r}");
    assert!(!progress.is_empty(), "no progress arrived: {r}");
    for p in &progress {
        assert_eq!(p["progressToken"], "lr", "{p}");
        assert_eq!(p["total"], 4.0, "{p}");
    }

    // The server killed mid-call: the caller gets isError, and the server comes back.
    let old_pid = eventually("the server's process", || async {
        child_of(worker.pid(), "server-everything")
    })
    .await;
    let id = c
        .send_request(
            "tools/call",
            json!({
                "name": "everything_trigger-long-running-operation",
                "arguments": {"duration": 60, "steps": 60},
                "_meta": {"progressToken": "doomed"},
            }),
        )
        .await;
    // Running on the server once its first progress arrives.
    loop {
        let v = c.read_json().await;
        assert_ne!(v["id"], json!(id), "the call ended before the kill: {v}");
        if v["method"] == "notifications/progress" && v["params"]["progressToken"] == "doomed" {
            break;
        }
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old_pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let (r, _) = reply_to(&mut c, id).await;
    assert_eq!(r["result"]["isError"], true, "{r}");
    assert!(text(&r).contains("exited"), "{r}");

    let new_pid = eventually("the server to be started again", || async {
        child_of(worker.pid(), "server-everything").filter(|p| *p != old_pid)
    })
    .await;
    assert_ne!(new_pid, old_pid);
    let r = eventually("the restarted server to answer", async || {
        let r = c
            .call(
                "tools/call",
                json!({"name": "everything_echo", "arguments": {"message": "back again"}}),
            )
            .await;
        (r["result"]["isError"] == false).then_some(r)
    })
    .await;
    assert!(text(&r).contains("back again"), "{r}");
}

/// server-everything over Streamable HTTP on `port`.
fn http_server(js: &std::path::Path, port: u16) -> tokio::process::Child {
    tokio::process::Command::new("node")
        .arg(js)
        .arg("streamableHttp")
        .env("PORT", port.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn node")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_streamable_http_server_is_hosted_and_reconnected() {
    let js = server_everything();
    let port = free_port();
    let mut remote = http_server(&js, port);
    let redis = RedisServer::start().await;
    let gw = GatewayProcess::start(
        &redis.url(),
        "gw-h",
        &["--registry-interval", "200ms", "--call-poll", "200ms"],
    )
    .await;
    let dir = temp_dir("mcp-host-http");
    let tools = dir.join("tools.toml");
    std::fs::write(
        &tools,
        format!(
            r#"
[[mcp]]
name = "remote"
url = "http://127.0.0.1:{port}/mcp"
headers = {{ X-Test = "yes" }}
timeout_ms = 3000
restart_backoff_min_ms = 100
restart_backoff_max_ms = 500
"#
        ),
    )
    .unwrap();
    let _worker = WorkerProcess::start(
        &redis,
        "mcp-http-worker",
        &["--tools", tools.to_str().unwrap()],
    )
    .await;
    let mut c = WsClient::connect(&gw.ws_url()).await;
    c.hello().await;
    c.wait_for_tool("remote_echo").await;
    let r = c
        .call(
            "tools/call",
            json!({"name": "remote_echo", "arguments": {"message": "over http"}}),
        )
        .await;
    assert_eq!(r["result"]["isError"], false, "{r}");
    assert!(text(&r).contains("over http"), "{r}");

    // The server goes away and comes back on the same port: the worker reconnects.
    remote.kill().await.unwrap();
    let _remote = http_server(&js, port);
    let r = eventually("the worker to reconnect", async || {
        let r = c
            .call(
                "tools/call",
                json!({"name": "remote_echo", "arguments": {"message": "reconnected"}}),
            )
            .await;
        (r["result"]["isError"] == false).then_some(r)
    })
    .await;
    assert!(text(&r).contains("reconnected"), "{r}");
}
