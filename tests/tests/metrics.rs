//! `/metrics` of a gateway process and a worker process after a scripted session (connect,
//! subscribe, publish on a history topic, a tool call, the same call again from the cache, an
//! `isError` call, a connection with a bad token, a close), read in both exposition formats and
//! parsed by Python's `prometheus_client` (`tests/scripts/parse_metrics.py`, run with the
//! `tests/mcp-sdk/.venv` interpreter that `scripts/test` creates): the text parser for the
//! default answer, the OpenMetrics parser for `Accept: application/openmetrics-text`. Then the
//! worker's `/readyz`: 200 while it runs, 503 while it shuts down.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};
use switchboard_core::auth;
use switchboard_harness::{
    GatewayProcess, RedisServer, WorkerProcess, WsClient, eventually, free_port, http_get,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECRET: &str = "metrics-secret";
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// GET `path` with an optional `Accept`: (status, content type, body).
async fn get(addr: SocketAddr, path: &str, accept: Option<&str>) -> (u16, String, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let accept = accept.map_or(String::new(), |a| format!("Accept: {a}\r\n"));
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{accept}Connection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .expect("metrics answered in time")
        .unwrap();
    let text = String::from_utf8(buf).expect("utf-8");
    let (head, body) = text.split_once("\r\n\r\n").expect("a head");
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let ctype = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_owned())
        })
        .unwrap_or_default();
    (status, ctype, body.to_owned())
}

/// The families of `page` as Python's prometheus_client parses them (`kind`: `text` or
/// `openmetrics`).
fn parse(kind: &str, page: &str) -> Vec<Value> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let python = root.join("mcp-sdk/.venv/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: run scripts/test (it creates tests/mcp-sdk/.venv with prometheus_client)",
        python.display()
    );
    let dir =
        std::env::temp_dir().join(format!("sb-metrics-{}-{}", std::process::id(), free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("page.txt");
    std::fs::write(&file, page).unwrap();
    let out = std::process::Command::new(python)
        .arg(root.join("scripts/parse_metrics.py"))
        .arg(kind)
        .arg(&file)
        .output()
        .expect("run python");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "the {kind} parser refused the page: {}\n{page}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("json from the parser");
    v["families"].as_array().unwrap().clone()
}

fn family<'a>(fams: &'a [Value], name: &str) -> &'a Value {
    fams.iter()
        .find(|f| f["name"] == name)
        .unwrap_or_else(|| panic!("no family {name} in {}", Value::from(fams.to_vec())))
}

/// The value of the sample `sample` with (at least) `labels`.
fn value(fams: &[Value], fam: &str, sample: &str, labels: &[(&str, &str)]) -> Option<f64> {
    family(fams, fam)["samples"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s[0] == sample && labels.iter().all(|(k, v)| s[1][*k] == *v))
        .and_then(|s| s[2].as_f64())
}

/// What both formats must show for the gateway.
fn check_gateway(fams: &[Value], kind: &str) {
    let calls = "switchboard_tool_calls";
    let total = "switchboard_tool_calls_total";
    assert_eq!(family(fams, calls)["type"], "counter", "{kind}");
    for (tool, outcome) in [("echo", "ok"), ("echo", "cached"), ("fail", "error")] {
        assert_eq!(
            value(fams, calls, total, &[("tool", tool), ("outcome", outcome)]),
            Some(1.0),
            "{kind}: {tool} {outcome}"
        );
    }
    // Durations: the three calls, each in the +Inf bucket and the count.
    let h = "switchboard_tool_call_duration_seconds";
    assert_eq!(family(fams, h)["type"], "histogram", "{kind}");
    let count = |tool| value(fams, h, &format!("{h}_count"), &[("tool", tool)]);
    assert_eq!(count("echo"), Some(2.0), "{kind}");
    assert_eq!(count("fail"), Some(1.0), "{kind}");
    assert_eq!(
        value(
            fams,
            h,
            &format!("{h}_bucket"),
            &[("tool", "echo"), ("le", "+Inf")]
        ),
        Some(2.0),
        "{kind}"
    );
    // The buckets are cumulative and end at the count.
    let buckets: Vec<f64> = family(fams, h)["samples"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s[0] == format!("{h}_bucket") && s[1]["tool"] == "echo")
        .map(|s| s[2].as_f64().unwrap())
        .collect();
    assert!(buckets.len() > 5, "{kind}: {buckets:?}");
    assert!(
        buckets.windows(2).all(|w| w[0] <= w[1]),
        "{kind}: {buckets:?}"
    );
    // The history event was delivered here: one latency observation.
    let d = "switchboard_delivery_latency_seconds";
    assert_eq!(
        value(fams, d, &format!("{d}_count"), &[]),
        Some(1.0),
        "{kind}"
    );
    assert_eq!(
        value(
            fams,
            "switchboard_auth_failures",
            "switchboard_auth_failures_total",
            &[("reason", "invalid")]
        ),
        Some(1.0),
        "{kind}"
    );
    assert!(
        value(
            fams,
            "switchboard_closes",
            "switchboard_closes_total",
            &[("code", "1008")]
        ) >= Some(1.0),
        "{kind}"
    );
    assert_eq!(
        value(
            fams,
            "switchboard_tool_workers",
            "switchboard_tool_workers",
            &[("tool", "echo")]
        ),
        Some(1.0),
        "{kind}"
    );
    assert_eq!(
        value(
            fams,
            "switchboard_calls_in_flight",
            "switchboard_calls_in_flight",
            &[]
        ),
        Some(0.0),
        "{kind}"
    );
    let publishes = value(
        fams,
        "switchboard_redis_operation_duration_seconds",
        "switchboard_redis_operation_duration_seconds_count",
        &[("op", "history")],
    );
    assert!(publishes >= Some(1.0), "{kind}: {publishes:?}");
    // Existing names stay.
    for (fam, sample) in [
        (
            "switchboard_connections_accepted",
            "switchboard_connections_accepted_total",
        ),
        (
            "switchboard_sessions_resumed",
            "switchboard_sessions_resumed_total",
        ),
        (
            "switchboard_events_recovered",
            "switchboard_events_recovered_total",
        ),
        ("switchboard_deliveries", "switchboard_deliveries_total"),
    ] {
        assert!(value(fams, fam, sample, &[]).is_some(), "{kind}: {sample}");
    }
    assert!(
        value(
            fams,
            "switchboard_deliveries",
            "switchboard_deliveries_total",
            &[]
        ) >= Some(1.0)
    );
    check_process(fams, kind);
}

fn check_process(fams: &[Value], kind: &str) {
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        value(
            fams,
            "switchboard_build_info",
            "switchboard_build_info",
            &[("version", version)]
        ),
        Some(1.0),
        "{kind}"
    );
    assert_eq!(
        family(fams, "process_cpu_seconds")["type"],
        "counter",
        "{kind}"
    );
    assert!(
        value(
            fams,
            "process_cpu_seconds",
            "process_cpu_seconds_total",
            &[]
        )
        .is_some()
    );
    for g in [
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
    ] {
        assert!(value(fams, g, g, &[]).unwrap_or(0.0) > 0.0, "{kind}: {g}");
    }
}

/// The text format: counters declared with `_total`, no `# EOF`, no `_created`, and the text
/// parser sees no `unknown` family.
fn check_text_page(page: &str, fams: &[Value]) {
    assert!(!page.contains("# EOF"), "{page}");
    assert!(!page.contains("_created"), "{page}");
    for l in page.lines().filter(|l| l.starts_with("# TYPE ")) {
        let parts: Vec<&str> = l.split(' ').collect();
        if parts[3] == "counter" {
            assert!(
                parts[2].ends_with("_total"),
                "a counter without _total: {l}"
            );
        }
    }
    for f in fams {
        assert_ne!(f["type"], "unknown", "{f}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_and_worker_metrics_parse_in_both_formats_with_the_sessions_values() {
    let redis = RedisServer::start().await;
    let gw = GatewayProcess::start(
        &redis.url(),
        "gw-metrics",
        &[
            "--jwt-secret",
            SECRET,
            "--history",
            "h:*=100",
            "--registry-interval",
            "100ms",
        ],
    )
    .await;
    let worker_admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin = worker_admin.to_string();
    let worker = WorkerProcess::start(
        &redis,
        "w-metrics",
        &[
            "--builtin",
            "--admin-listen",
            &admin,
            "--queue-sample-interval",
            "100ms",
            "--shutdown-grace",
            "10s",
        ],
    )
    .await;
    eventually("the worker's /readyz to answer 200", || async {
        matches!(http_get(worker_admin, "/readyz").await, Ok((200, _))).then_some(())
    })
    .await;
    assert!(matches!(
        http_get(worker_admin, "/healthz").await,
        Ok((200, _))
    ));

    // The session.
    let token = auth::mint(SECRET.as_bytes(), "alice", None).unwrap();
    let mut c = WsClient::connect(&format!("{}?token={token}", gw.ws_url())).await;
    c.hello().await;
    let r = c.call("subscribe", json!({"topic": "h:room"})).await;
    assert!(r.get("error").is_none(), "{r}");
    let r = c
        .call("publish", json!({"topic": "h:room", "data": {"n": 1}}))
        .await;
    assert!(r.get("error").is_none(), "{r}");
    assert_eq!(c.next_event().await["data"]["n"], 1);
    c.wait_for_tool("echo").await;
    c.wait_for_tool("fail").await;
    let call = json!({"name": "echo", "arguments": {"x": 1}});
    let r = c.call("tools/call", call.clone()).await;
    assert_eq!(r["result"]["isError"], json!(false), "{r}");
    let r = c.call("tools/call", call).await;
    assert_eq!(r["result"]["_meta"]["switchboard/cached"], true, "{r}");
    let r = c
        .call(
            "tools/call",
            json!({"name": "fail", "arguments": {"message": "no"}}),
        )
        .await;
    assert_eq!(r["result"]["isError"], true, "{r}");
    let mut bad = WsClient::connect(&format!("{}?token=not-a-jwt", gw.ws_url())).await;
    assert_eq!(bad.read_close().await, 1008);
    c.close(1000).await;

    // The gateway, both formats.
    let (status, ctype, page) = get(gw.admin_addr, "/metrics", None).await;
    assert_eq!((status, ctype.as_str()), (200, TEXT));
    let fams = parse("text", &page);
    check_text_page(&page, &fams);
    check_gateway(&fams, "text");
    let (status, ctype, page) = get(
        gw.admin_addr,
        "/metrics",
        Some("application/openmetrics-text;version=1.0.0,text/plain;q=0.5"),
    )
    .await;
    assert_eq!((status, ctype.as_str()), (200, OPENMETRICS));
    assert!(page.ends_with("# EOF\n"));
    check_gateway(&parse("openmetrics", &page), "openmetrics");

    // The worker, both formats: the queue depth is sampled every 100 ms.
    let worker_fams = |kind: &'static str| async move {
        let accept = (kind == "openmetrics").then_some("application/openmetrics-text");
        let (status, ctype, page) = get(worker_admin, "/metrics", accept).await;
        assert_eq!(status, 200);
        assert_eq!(ctype, if accept.is_some() { OPENMETRICS } else { TEXT });
        if accept.is_none() {
            let fams = parse(kind, &page);
            check_text_page(&page, &fams);
            fams
        } else {
            parse(kind, &page)
        }
    };
    for kind in ["text", "openmetrics"] {
        let fams = eventually("the worker to sample its queues", || async {
            let fams = worker_fams(kind).await;
            value(
                &fams,
                "switchboard_queue_pending_jobs",
                "switchboard_queue_pending_jobs",
                &[("tool", "echo")],
            )
            .is_some()
            .then_some(fams)
        })
        .await;
        let jobs = "switchboard_worker_jobs";
        let jobs_total = "switchboard_worker_jobs_total";
        assert_eq!(
            value(
                &fams,
                jobs,
                jobs_total,
                &[("tool", "echo"), ("outcome", "ok")]
            ),
            Some(1.0),
            "{kind}"
        );
        assert_eq!(
            value(
                &fams,
                jobs,
                jobs_total,
                &[("tool", "fail"), ("outcome", "error")]
            ),
            Some(1.0),
            "{kind}"
        );
        let h = "switchboard_worker_job_duration_seconds";
        assert_eq!(
            value(&fams, h, &format!("{h}_count"), &[("tool", "echo")]),
            Some(1.0),
            "{kind}"
        );
        assert_eq!(
            value(
                &fams,
                h,
                &format!("{h}_bucket"),
                &[("tool", "echo"), ("le", "+Inf")]
            ),
            Some(1.0),
            "{kind}"
        );
        assert_eq!(
            value(
                &fams,
                "switchboard_worker_running",
                "switchboard_worker_running",
                &[]
            ),
            Some(0.0)
        );
        assert_eq!(
            value(
                &fams,
                "switchboard_worker_backlog",
                "switchboard_worker_backlog",
                &[]
            ),
            Some(0.0)
        );
        assert_eq!(
            value(
                &fams,
                "switchboard_worker_ready",
                "switchboard_worker_ready",
                &[]
            ),
            Some(1.0)
        );
        assert_eq!(
            value(
                &fams,
                "switchboard_queue_pending_jobs",
                "switchboard_queue_pending_jobs",
                &[("tool", "echo")]
            ),
            Some(0.0),
            "{kind}"
        );
        assert_eq!(
            value(
                &fams,
                "switchboard_queue_lag_jobs",
                "switchboard_queue_lag_jobs",
                &[("tool", "echo")]
            ),
            Some(0.0),
            "{kind}"
        );
        let q = "switchboard_redis_operation_duration_seconds";
        assert!(
            value(&fams, q, &format!("{q}_count"), &[("op", "queue")]) >= Some(1.0),
            "{kind}"
        );
        check_process(&fams, kind);
    }

    // Shutdown: a call still running keeps the worker alive through its grace; /readyz says
    // 503 from the moment it was told to stop.
    let mut slow = WsClient::connect(&format!("{}?token={token}", gw.ws_url())).await;
    slow.hello().await;
    slow.send_request(
        "tools/call",
        json!({"name": "sleep", "arguments": {"ms": 3000}}),
    )
    .await;
    eventually("the sleep call to run", || async {
        let (_, _, page) = get(worker_admin, "/metrics", None).await;
        page.contains("switchboard_worker_running 1").then_some(())
    })
    .await;
    kill(Pid::from_raw(worker.pid() as i32), Signal::SIGTERM).unwrap();
    let (status, body) = eventually("the worker's /readyz to answer 503", || async {
        match http_get(worker_admin, "/readyz").await {
            Ok((503, body)) => Some((503, body)),
            _ => None,
        }
    })
    .await;
    assert_eq!(status, 503);
    assert!(body.contains("shutting down"), "{body}");
    let (_, _, page) = get(worker_admin, "/metrics", None).await;
    assert!(page.contains("switchboard_worker_ready 0"), "{page}");
}
