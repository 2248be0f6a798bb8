//! Tool calls across real processes: two gateways and two workers on one Redis. The cache and
//! coalescing span nodes, a worker killed mid-call loses nothing, a poison job is dead-lettered,
//! cancellation kills a command tool's process, and command tools fail cleanly; a job whose
//! worker wrote the outcome and died before acknowledging it is acknowledged by the worker that
//! takes it over, without running the tool again.

use std::path::PathBuf;

use serde_json::{Value, json};
use switchboard_harness::{
    GatewayProcess, RedisServer, WorkerProcess, WsClient, eventually, eventually_within,
};

async fn client(g: &GatewayProcess) -> WsClient {
    let mut c = WsClient::connect(&g.ws_url()).await;
    c.hello().await;
    c
}

fn meta(r: &Value) -> &Value {
    &r["result"]["_meta"]
}

fn gateway_flags() -> [&'static str; 4] {
    ["--registry-interval", "200ms", "--call-poll", "200ms"]
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sb-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_and_coalescing_span_nodes() {
    let redis = RedisServer::start().await;
    let a = GatewayProcess::start(&redis.url(), "gw-a", &gateway_flags()).await;
    let b = GatewayProcess::start(&redis.url(), "gw-b", &gateway_flags()).await;
    let _w1 = WorkerProcess::start(&redis, "w1", &["--builtin"]).await;
    let _w2 = WorkerProcess::start(&redis, "w2", &["--builtin"]).await;
    let mut on_a = client(&a).await;
    let mut on_b = client(&b).await;
    on_a.wait_for_tool("echo").await;
    on_b.wait_for_tool("echo").await;

    // echo on A, then on B with another key order: a cache hit with the same hash.
    let r1 = on_a
        .call(
            "tools/call",
            json!({"name": "echo", "arguments": {"x": 1, "y": {"b": 2, "a": 1}}}),
        )
        .await;
    assert_eq!(meta(&r1)["switchboard/cached"], false, "{r1}");
    let r2 = on_b
        .call(
            "tools/call",
            json!({"name": "echo", "arguments": {"y": {"a": 1, "b": 2}, "x": 1}}),
        )
        .await;
    assert_eq!(meta(&r2)["switchboard/cached"], true, "{r2}");
    assert_eq!(
        meta(&r2)["switchboard/callHash"],
        meta(&r1)["switchboard/callHash"]
    );
    assert_eq!(
        r2["result"]["structuredContent"],
        r1["result"]["structuredContent"]
    );

    // 20 identical sleeps over both gateways at once run once (4 s: all 20 are submitted well
    // within it, even on a loaded machine).
    let mut ids = Vec::new();
    for i in 0..20 {
        let c = if i % 2 == 0 { &mut on_a } else { &mut on_b };
        ids.push(
            c.send_request(
                "tools/call",
                json!({"name": "sleep", "arguments": {"ms": 4000}}),
            )
            .await,
        );
    }
    let mut results = Vec::new();
    for (c, want) in [(&mut on_a, 10), (&mut on_b, 10)] {
        let mut got = 0;
        while got < want {
            let v = c.read_json().await;
            if v.get("id").is_some() {
                assert!(v["result"]["structuredContent"].is_object(), "{v}");
                results.push(v["result"]["structuredContent"].clone());
                got += 1;
            }
        }
    }
    assert_eq!(results.len(), 20);
    let first = &results[0];
    for r in &results {
        assert_eq!(
            r["started_at"], first["started_at"],
            "ran more than once: {results:?}"
        );
        assert_eq!(r["worker"], first["worker"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_call_loses_nothing() {
    let redis = RedisServer::start().await;
    let a = GatewayProcess::start(&redis.url(), "gw-a", &gateway_flags()).await;
    let b = GatewayProcess::start(&redis.url(), "gw-b", &gateway_flags()).await;
    let flags = ["--builtin", "--visibility-timeout", "1500ms"];
    let w1 = WorkerProcess::start(&redis, "w1", &flags).await;
    let w2 = WorkerProcess::start(&redis, "w2", &flags).await;
    let mut on_a = client(&a).await;
    on_a.wait_for_tool("sleep").await;

    let call = on_a
        .send_request(
            "tools/call",
            json!({"name": "sleep", "arguments": {"ms": 4000}}),
        )
        .await;
    // Find the worker holding the job, and kill it.
    let running = eventually("a worker to take the job", || async {
        let mut conn = redis.connection().await;
        // The queue of this version of `sleep`: sb:q:{sleep}@<digest>.
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("sb:q:{sleep}@*")
            .query_async(&mut conn)
            .await
            .ok()?;
        let consumers: Vec<(String, String)> = redis::cmd("XPENDING")
            .arg(keys.first()?)
            .arg("workers")
            .query_async::<(
                i64,
                Option<String>,
                Option<String>,
                Option<Vec<(String, String)>>,
            )>(&mut conn)
            .await
            .ok()?
            .3?;
        consumers.into_iter().next().map(|(c, _)| c)
    })
    .await;
    let (victim, survivor) = if running == w1.id {
        (&w1, &w2)
    } else {
        (&w2, &w1)
    };
    victim.kill9();

    let r = loop {
        let v = on_a.read_json().await;
        if v["id"] == json!(call) {
            break v;
        }
    };
    let out = &r["result"]["structuredContent"];
    assert_eq!(out["worker"], survivor.id.as_str(), "{r}");
    assert_eq!(out["slept_ms"], 4000);

    // The task is complete, seen from the other gateway (same caller: anonymous).
    let task_id = meta(&r)["switchboard/taskId"].as_str().unwrap().to_owned();
    let mut on_b = client(&b).await;
    let g = on_b.call("tasks/get", json!({"taskId": task_id})).await;
    assert_eq!(g["result"]["status"], "completed", "{g}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_job_is_dead_lettered() {
    let redis = RedisServer::start().await;
    let a = GatewayProcess::start(&redis.url(), "gw-a", &gateway_flags()).await;
    let dir = temp_dir("poison");
    let tools = dir.join("tools.toml");
    // The tool kills the worker that runs it.
    std::fs::write(
        &tools,
        r#"
[[tool]]
name = "poison"
command = ["sh", "-c", "kill -9 $PPID"]
"#,
    )
    .unwrap();
    let tools = tools.to_str().unwrap();
    let flags = [
        "--tools",
        tools,
        "--max-deliveries",
        "2",
        "--visibility-timeout",
        "800ms",
    ];
    let mut w = WorkerProcess::start(&redis, "p0", &flags).await;
    let mut c = client(&a).await;
    c.wait_for_tool("poison").await;
    let r = c
        .call(
            "tools/call",
            json!({"name": "poison", "arguments": {}, "task": {}}),
        )
        .await;
    let task = r["result"]["task"]["taskId"].as_str().unwrap().to_owned();

    // Each delivery kills its worker; start another until the job is dead-lettered (two
    // deadlines: each delivery waits out a visibility timeout on a fresh worker).
    let mut starts = 1;
    let status = eventually_within(
        "the poison job to be settled",
        switchboard_harness::DEADLINE * 2,
        async || {
            let g = c.call("tasks/get", json!({"taskId": task})).await;
            let status = g["result"]["status"].as_str().unwrap().to_owned();
            if status != "working" {
                return Some(status);
            }
            if w.exited() {
                assert!(starts < 5, "the job was never dead-lettered");
                w = WorkerProcess::spawn(&redis, &format!("p{starts}"), &flags);
                starts += 1;
            }
            None
        },
    )
    .await;
    assert_eq!(status, "failed");
    assert_eq!(
        starts, 3,
        "two deliveries killed two workers, the third dead-lettered the job"
    );
    let res = c.call("tasks/result", json!({"taskId": task})).await;
    assert_eq!(res["result"]["isError"], true, "{res}");
    assert!(
        res["result"]["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("dead-lettered")
    );
    let mut conn = redis.connection().await;
    let dead: i64 = redis::cmd("XLEN")
        .arg("sb:dlq")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(dead, 1);
}

fn process_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // A zombie has been killed and waits to be reaped.
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_tools_cancel_timeout_bad_output_bad_arguments() {
    let redis = RedisServer::start().await;
    let a = GatewayProcess::start(&redis.url(), "gw-a", &gateway_flags()).await;
    let dir = temp_dir("cmd");
    let pid_file = dir.join("pid");
    let _ = std::fs::remove_file(&pid_file);
    let tools = dir.join("tools.toml");
    std::fs::write(
        &tools,
        format!(
            r#"
[[tool]]
name = "hang"
command = ["sh", "-c", "echo $$ > {pid}; exec sleep 60"]
timeout_ms = 60000

[[tool]]
name = "slow"
command = ["sleep", "30"]
timeout_ms = 500

[[tool]]
name = "garbage"
command = ["sh", "-c", "cat >/dev/null; echo this is not json"]

[[tool]]
name = "typed"
command = ["cat"]
input_schema = {{ type = "object", properties = {{ n = {{ type = "integer" }} }}, required = ["n"] }}
"#,
            pid = pid_file.display()
        ),
    )
    .unwrap();
    let _w =
        WorkerProcess::start(&redis, "cmd-worker", &["--tools", tools.to_str().unwrap()]).await;
    let mut c = client(&a).await;
    c.wait_for_tool("typed").await;

    // Cancellation kills the running process.
    let r = c
        .call(
            "tools/call",
            json!({"name": "hang", "arguments": {}, "task": {}}),
        )
        .await;
    let task = r["result"]["task"]["taskId"].as_str().unwrap().to_owned();
    let pid: i32 = eventually("the command to start", || async {
        std::fs::read_to_string(&pid_file).ok()?.trim().parse().ok()
    })
    .await;
    assert!(!process_gone(pid));
    let r = c.call("tasks/cancel", json!({"taskId": task})).await;
    assert_eq!(r["result"]["status"], "cancelled", "{r}");
    eventually("the command's process to be killed", || async {
        process_gone(pid).then_some(())
    })
    .await;

    // Timeout: an isError result, the process killed.
    let r = c
        .call("tools/call", json!({"name": "slow", "arguments": {}}))
        .await;
    assert_eq!(r["result"]["isError"], true, "{r}");
    assert!(
        r["result"]["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("timed out")
    );

    // A reply that is not JSON: an isError result, and the worker lives on.
    let r = c
        .call("tools/call", json!({"name": "garbage", "arguments": {}}))
        .await;
    assert_eq!(r["result"]["isError"], true, "{r}");
    let r = c
        .call(
            "tools/call",
            json!({"name": "typed", "arguments": {"n": 5}}),
        )
        .await;
    assert_eq!(r["result"]["structuredContent"], json!({"n": 5}), "{r}");

    // Arguments that break the schema never reach a worker.
    let r = c
        .call(
            "tools/call",
            json!({"name": "typed", "arguments": {"n": "five"}}),
        )
        .await;
    assert_eq!(r["error"]["code"], -32602, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_workers_tools_leave_the_list() {
    let redis = RedisServer::start().await;
    let a = GatewayProcess::start(&redis.url(), "gw-a", &gateway_flags()).await;
    let w = WorkerProcess::start(&redis, "short-lived", &["--builtin"]).await;
    let mut c = client(&a).await;
    c.wait_for_tool("echo").await;
    w.kill9();
    // Three missed heartbeats (200 ms each) later the tools are gone, and the client is told.
    eventually("the dead worker's tools to leave tools/list", async || {
        let r = c.call("tools/list", json!({})).await;
        r["result"]["tools"]
            .as_array()
            .is_some_and(Vec::is_empty)
            .then_some(())
    })
    .await;
    assert!(
        c.take_notification("notifications/tools/list_changed")
            .is_some(),
        "no tools/list_changed notification"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_finished_but_not_acknowledged_is_not_run_again() {
    let redis = RedisServer::start().await;
    // A worker makes the queue of `sleep` (its name carries the tool's digest), then goes.
    let first = WorkerProcess::start(&redis, "w0", &["--builtin"]).await;
    let mut conn = redis.connection().await;
    let queue = eventually("the sleep queue", async || {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("sb:q:{sleep}@*")
            .query_async(&mut redis.connection().await)
            .await
            .ok()?;
        keys.into_iter().next()
    })
    .await;
    first.kill9();

    // A worker that died between finish's call step and the rest: the task holds the outcome,
    // the owner's running set still holds the execution, the job is pending with the dead one.
    let hash = format!("{}{}", "ab12".repeat(4), "0".repeat(48));
    let task = switchboard_core::tasks::new_task_id(&hash);
    let keys = switchboard_redis::keys::Keys::new("sb");
    let result = r#"{"content":[],"structuredContent":{"by":"the dead worker"}}"#;
    let far = 4_000_000_000_000u64;
    let _: () = redis::pipe()
        .cmd("HSET")
        .arg(keys.task(&task))
        .arg(&[
            ("owner", "alice"),
            ("status", "completed"),
            ("created", "1"),
            ("updated", "1"),
            ("ttl", "600000"),
            ("hash", hash.as_str()),
            ("tool", "sleep"),
            ("result", result),
        ])
        .ignore()
        .cmd("ZADD")
        .arg(keys.identity_running("alice"))
        .arg(far)
        .arg(&task)
        .ignore()
        .cmd("ZADD")
        .arg(keys.identity_tasks("alice"))
        .arg(far)
        .arg(&task)
        .ignore()
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: String = redis::cmd("XADD")
        .arg(&queue)
        .arg("*")
        .arg(&[
            ("task", task.as_str()),
            ("owner", "alice"),
            ("hash", hash.as_str()),
            ("tool", "sleep"),
            // Run again, it would hold the job for ten minutes.
            ("args", r#"{"ms":600000}"#),
            ("deadline", "4000000000000"),
        ])
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("workers")
        .arg("dead-worker")
        .arg("COUNT")
        .arg(1)
        .arg("STREAMS")
        .arg(&queue)
        .arg(">")
        .query_async(&mut conn)
        .await
        .unwrap();

    // The worker that takes it over finds the task finished: it acknowledges and deletes the
    // job (a run of the tool would hold it for ten minutes), settles the owner's caps, and
    // leaves the outcome as it was.
    let _w = WorkerProcess::start(
        &redis,
        "w1",
        &["--builtin", "--visibility-timeout", "1500ms"],
    )
    .await;
    eventually("the job acknowledged and deleted", async || {
        let mut conn = redis.connection().await;
        let len: u64 = redis::cmd("XLEN")
            .arg(&queue)
            .query_async(&mut conn)
            .await
            .ok()?;
        let pending: (u64, redis::Value, redis::Value, redis::Value) = redis::cmd("XPENDING")
            .arg(&queue)
            .arg("workers")
            .query_async(&mut conn)
            .await
            .ok()?;
        (len == 0 && pending.0 == 0).then_some(())
    })
    .await;
    let stored: Option<String> = redis::cmd("HGET")
        .arg(keys.task(&task))
        .arg("result")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(stored.as_deref(), Some(result));
    let running: Option<f64> = redis::cmd("ZSCORE")
        .arg(keys.identity_running("alice"))
        .arg(&task)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(running, None, "the execution is still counted as running");
    let bytes: Option<u64> = redis::cmd("HGET")
        .arg(keys.identity_bytes("alice"))
        .arg(&task)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        bytes,
        Some(result.len() as u64),
        "the result's bytes, counted once"
    );
}
