//! Traces and log formats, across real processes: an OTLP/HTTP receiver started here (a small
//! hyper server on a free port, decoding the exporters' `ExportTraceServiceRequest` protobuf)
//! gets the spans of a gateway process and a worker process, started with
//! `OTEL_EXPORTER_OTLP_ENDPOINT` pointing at it. One tool call over WebSocket is one trace
//! across both; a call whose `_meta.traceparent` names a trace continues it; a cached call's
//! span says `cache=hit` and has no worker span. The log formats: `--log-format json` prints
//! one JSON object per line, and text logs written to a pipe carry no ANSI escape.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message;
use serde_json::json;
use switchboard_harness::{
    DEADLINE, RedisServer, WsClient, eventually, free_port, http_get, switchboard_bin,
};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};

/// One received span, as the test needs it.
#[derive(Debug, Clone)]
struct Span {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    attributes: HashMap<String, String>,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn attributes(kvs: &[KeyValue]) -> HashMap<String, String> {
    kvs.iter()
        .filter_map(|kv| {
            let v = match kv.value.as_ref()?.value.as_ref()? {
                AnyValue::StringValue(s) => s.clone(),
                AnyValue::IntValue(i) => i.to_string(),
                AnyValue::BoolValue(b) => b.to_string(),
                AnyValue::DoubleValue(d) => d.to_string(),
                _ => return None,
            };
            Some((kv.key.clone(), v))
        })
        .collect()
}

/// An OTLP/HTTP trace receiver on a free port: every span it was sent.
struct Receiver {
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<Span>>>,
    /// Requests that were not OTLP/protobuf trace exports (must stay 0).
    bad: Arc<Mutex<Vec<String>>>,
}

impl Receiver {
    async fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().unwrap();
        let spans = Arc::new(Mutex::new(Vec::new()));
        let bad = Arc::new(Mutex::new(Vec::new()));
        let (s, b) = (spans.clone(), bad.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (s, b) = (s.clone(), b.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (s, b) = (s.clone(), b.clone());
                        async move { Ok::<_, hyper::Error>(receive(req, &s, &b).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Receiver { addr, spans, bad }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn spans(&self) -> Vec<Span> {
        assert!(self.bad.lock().unwrap().is_empty(), "{:?}", self.bad);
        self.spans.lock().unwrap().clone()
    }

    /// Waits until a span matching `f` has arrived.
    async fn span(&self, what: &str, f: impl Fn(&Span) -> bool) -> Span {
        eventually(what, || async { self.spans().into_iter().find(|s| f(s)) }).await
    }
}

async fn receive(
    req: Request<Incoming>,
    spans: &Mutex<Vec<Span>>,
    bad: &Mutex<Vec<String>>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    let ctype = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            bad.lock().unwrap().push(format!("body: {e}"));
            return Response::builder()
                .status(400)
                .body(Full::default())
                .unwrap();
        }
    };
    if path != "/v1/traces" || ctype != "application/x-protobuf" {
        bad.lock().unwrap().push(format!("{path} {ctype}"));
        return Response::builder()
            .status(404)
            .body(Full::default())
            .unwrap();
    }
    let Ok(export) = ExportTraceServiceRequest::decode(body) else {
        bad.lock().unwrap().push("undecodable export".into());
        return Response::builder()
            .status(400)
            .body(Full::default())
            .unwrap();
    };
    let mut got = spans.lock().unwrap();
    for rs in export.resource_spans {
        let resource = rs
            .resource
            .map(|r| attributes(&r.attributes))
            .unwrap_or_default();
        let service = resource.get("service.name").cloned().unwrap_or_default();
        for ss in rs.scope_spans {
            for s in ss.spans {
                got.push(Span {
                    service: service.clone(),
                    name: s.name,
                    trace_id: hex(&s.trace_id),
                    span_id: hex(&s.span_id),
                    parent_span_id: hex(&s.parent_span_id),
                    attributes: attributes(&s.attributes),
                });
            }
        }
    }
    Response::builder()
        .header("content-type", "application/x-protobuf")
        .body(Full::default())
        .unwrap()
}

/// The OTLP variables of a traced process: HTTP/protobuf to `receiver`, exported quickly.
fn otel_env(cmd: &mut Command, receiver: &Receiver) {
    cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint())
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .env_remove("OTEL_SERVICE_NAME")
        .env_remove("OTEL_RESOURCE_ATTRIBUTES")
        .env_remove("OTEL_SDK_DISABLED")
        .env_remove("OTEL_TRACES_SAMPLER");
}

/// A `switchboard` command without the `SWITCHBOARD_*` variables of the test's environment.
fn switchboard() -> Command {
    let mut cmd = Command::new(switchboard_bin());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("SWITCHBOARD_") {
            cmd.env_remove(key);
        }
    }
    cmd.stdout(Stdio::null()).kill_on_drop(true);
    cmd
}

/// A traced gateway process on free ports, ready. A port found free may be taken before the
/// gateway binds it (it then exits at once): the start is tried again on another port.
async fn gateway(redis: &RedisServer, receiver: &Receiver) -> (Child, SocketAddr) {
    for _ in 0..5 {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut cmd = switchboard();
        cmd.args([
            "gateway",
            "--allow-anonymous",
            "--listen",
            &addr.to_string(),
        ])
        .args(["--redis", &redis.url(), "--node-id", "gw-traced"])
        .args([
            "--readiness-interval",
            "200ms",
            "--registry-interval",
            "200ms",
        ])
        .args(["--call-poll", "200ms"])
        .env("SWITCHBOARD_LOG", "warn")
        .stderr(Stdio::inherit());
        otel_env(&mut cmd, receiver);
        let mut child = cmd.spawn().expect("spawn gateway");
        let start = tokio::time::Instant::now();
        while matches!(child.try_wait(), Ok(None)) {
            if matches!(http_get(addr, "/readyz").await, Ok((200, _))) {
                return (child, addr);
            }
            assert!(start.elapsed() < DEADLINE, "/readyz of {addr} never 200");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
    panic!("the gateway exited at start 5 times (its stderr says why)");
}

/// A traced worker process hosting the built-in tools.
fn worker(redis: &RedisServer, receiver: &Receiver) -> Child {
    let mut cmd = switchboard();
    cmd.args(["worker", "--builtin", "--redis", &redis.url()])
        .args(["--worker-id", "w-traced", "--heartbeat", "200ms"])
        .args(["--fetch-block", "200ms"])
        .env("SWITCHBOARD_LOG", "warn")
        .stderr(Stdio::inherit());
    otel_env(&mut cmd, receiver);
    cmd.spawn().expect("spawn worker")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_call_is_one_trace_from_gateway_to_worker() {
    let redis = RedisServer::start().await;
    let receiver = Receiver::start().await;
    let (_gateway, addr) = gateway(&redis, &receiver).await;
    let _worker = worker(&redis, &receiver);
    let mut c = WsClient::connect(&format!("ws://{addr}/ws")).await;
    c.hello().await;
    c.wait_for_tool("echo").await;

    // One call over WebSocket: the gateway's tools/call span and the worker's execution span
    // share the trace; the execution is the call's child.
    let r = c
        .call("tools/call", json!({"name": "echo", "arguments": {"n": 1}}))
        .await;
    assert_eq!(r["result"]["structuredContent"]["n"], 1, "{r}");
    let call = receiver
        .span("the gateway's tools/call span", |s| {
            s.name == "tools/call" && s.attributes.get("cache").map(String::as_str) == Some("miss")
        })
        .await;
    assert_eq!(call.service, "switchboard-gateway");
    assert_eq!(call.attributes["tool"], "echo");
    assert_eq!(call.attributes["node"], "gw-traced");
    assert_eq!(
        call.parent_span_id, "",
        "a call without _meta starts its own trace"
    );
    let exec = receiver
        .span("the worker's execution span in the call's trace", |s| {
            s.trace_id == call.trace_id && s.service == "switchboard-worker"
        })
        .await;
    assert_eq!(exec.name, "execute echo");
    assert_eq!(exec.parent_span_id, call.span_id, "{exec:?} under {call:?}");
    assert_eq!(exec.attributes["outcome"], "ok");
    assert_eq!(exec.attributes["worker"], "w-traced");

    // The same call again comes from the cache: its span says so, and no worker ran it.
    let r = c
        .call("tools/call", json!({"name": "echo", "arguments": {"n": 1}}))
        .await;
    assert_eq!(r["result"]["_meta"]["switchboard/cached"], true, "{r}");
    let hit = receiver
        .span("the cached call's span", |s| {
            s.name == "tools/call" && s.attributes.get("cache").map(String::as_str) == Some("hit")
        })
        .await;
    assert_ne!(hit.trace_id, call.trace_id);

    // A call naming a trace in `_meta.traceparent` continues it, through the worker.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = "00f067aa0ba902b7";
    let r = c
        .call(
            "tools/call",
            json!({"name": "echo", "arguments": {"n": 2},
                   "_meta": {"traceparent": format!("00-{trace_id}-{parent}-01")}}),
        )
        .await;
    assert_eq!(r["result"]["structuredContent"]["n"], 2, "{r}");
    let continued = receiver
        .span("the call's span in the client's trace", |s| {
            s.trace_id == trace_id && s.name == "tools/call"
        })
        .await;
    assert_eq!(continued.parent_span_id, parent);
    let exec = receiver
        .span("the worker's span in the client's trace", |s| {
            s.trace_id == trace_id && s.service == "switchboard-worker"
        })
        .await;
    assert_eq!(exec.parent_span_id, continued.span_id);

    // hello has its span too, naming the node and the session.
    let hello = receiver.span("a hello span", |s| s.name == "hello").await;
    assert_eq!(hello.attributes["node"], "gw-traced");
    assert!(!hello.attributes["session"].is_empty(), "{hello:?}");
    assert_eq!(hello.attributes["resumed"], "false");

    // The upgrade, subscribe and publish have theirs, with the topic.
    let r = c.call("subscribe", json!({"topic": "traced:1"})).await;
    assert!(r.get("result").is_some(), "{r}");
    let r = c
        .call("publish", json!({"topic": "traced:1", "data": {"x": 1}}))
        .await;
    assert!(r.get("result").is_some(), "{r}");
    for method in ["subscribe", "publish"] {
        let s = receiver
            .span(&format!("a {method} span"), |s| s.name == method)
            .await;
        assert_eq!(s.attributes["topic"], "traced:1", "{s:?}");
        assert_eq!(
            s.attributes["subject"], hello.attributes["subject"],
            "{s:?}"
        );
    }
    let connect = receiver
        .span("a connect span", |s| s.name == "connect")
        .await;
    assert_eq!(connect.attributes["http.response.status_code"], "101");

    // The cached call's trace has no worker span (give the worker's exporter its chance).
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !receiver
            .spans()
            .iter()
            .any(|s| s.trace_id == hit.trace_id && s.service == "switchboard-worker"),
        "a cached call ran on a worker"
    );
}

/// Runs `switchboard dev` with `args` and `env`, and returns the first `n` lines it logs
/// (stderr, a pipe).
async fn dev_log_lines(args: &[&str], env: &[(&str, &str)], n: usize) -> Vec<String> {
    let mut cmd = switchboard();
    cmd.args(["dev", "--listen", "127.0.0.1:0"])
        .args(args)
        .env("SWITCHBOARD_LOG", "info")
        .env_remove("NO_COLOR")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn dev");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut got = Vec::new();
    while got.len() < n {
        match tokio::time::timeout(DEADLINE, lines.next_line()).await {
            Ok(Ok(Some(line))) => got.push(line),
            other => panic!("dev logged {got:?} then {other:?}"),
        }
    }
    got
}

#[tokio::test]
async fn json_logs_are_one_object_per_line() {
    let lines = dev_log_lines(&["--log-format", "json"], &[], 2).await;
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        assert!(v["level"].is_string(), "{line}");
        assert!(v["timestamp"].is_string(), "{line}");
        assert!(v["fields"]["message"].is_string(), "{line}");
    }
    // The variable does the same.
    let lines = dev_log_lines(&[], &[("SWITCHBOARD_LOG_FORMAT", "json")], 1).await;
    serde_json::from_str::<serde_json::Value>(&lines[0]).expect("a JSON line");
}

#[tokio::test]
async fn text_logs_to_a_pipe_have_no_colours() {
    let lines = dev_log_lines(&[], &[], 2).await;
    for line in &lines {
        assert!(!line.contains('\u{1b}'), "an ANSI escape in {line:?}");
        assert!(line.contains(" INFO ") || line.contains(" WARN "), "{line}");
        assert!(serde_json::from_str::<serde_json::Value>(line).is_err());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_the_trace_id_of_their_span() {
    let receiver = Receiver::start().await;
    let mut cmd = switchboard();
    cmd.args(["dev", "--listen", "127.0.0.1:0", "--log-format", "json"])
        .env("SWITCHBOARD_LOG", "switchboard_gateway=debug,warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    otel_env(&mut cmd, &receiver);
    let mut child = cmd.spawn().expect("spawn dev");
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let url = loop {
        let line = tokio::time::timeout(DEADLINE, out.next_line())
            .await
            .expect("dev's banner")
            .expect("stdout")
            .expect("a ws:// line");
        if let Some(at) = line.find("ws://") {
            break line[at..].split_whitespace().next().unwrap().to_owned();
        }
    };
    let mut c = WsClient::connect(&url).await;
    c.hello().await;
    let mut err = BufReader::new(child.stderr.take().unwrap()).lines();
    let opened = loop {
        let line = tokio::time::timeout(DEADLINE, err.next_line())
            .await
            .expect("a log line for the hello")
            .expect("stderr")
            .expect("dev still logging");
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        if v["fields"]["message"] == "session opened" {
            break v;
        }
    };
    let trace_id = opened["trace_id"]
        .as_str()
        .expect("trace_id on the line")
        .to_owned();
    assert_eq!(trace_id.len(), 32, "{opened}");
    receiver
        .span("the hello span of the logged trace", |s| {
            s.name == "hello" && s.trace_id == trace_id
        })
        .await;
}
