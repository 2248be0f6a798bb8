//! The `mcp-http` scenario: tool calls over MCP Streamable HTTP (`POST /mcp`), next to the
//! WebSocket figures of [`crate::calls`]: one gateway, one worker, Redis, and C HTTP/1.1
//! keep-alive connections in this process, each with one request at a time (HTTP/1.1 has no
//! multiplexing) for T seconds; every request's round trip is timed.
//!
//! - `--era stateless`: revision 2026-07-28: each request carries its revision in `_meta` and
//!   the `MCP-Protocol-Version` and `Mcp-Method` headers; no session.
//! - `--era session`: each connection `initialize`s first and names its `Mcp-Session-Id` on
//!   every call (each request attaches the session in Redis).
//! - `--mode hit`: the same `echo`, answered from the cache; `--mode miss`: a distinct `echo`
//!   with the cache bypassed, routed through Redis to the worker.
//!
//! Answers are asked for as JSON (`Accept: application/json`), as a client without SSE gets
//! them; the HTTP client is a minimal one of its own (`Content-Length` bodies on one
//! connection), so the load generator costs little.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use serde_json::{Value, json};
use switchboard_harness::{GatewayProcess, RedisServer, WorkerProcess};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::procstat::{cores, sample_all};
use crate::stats::{Percentiles, percentiles, row};

/// Which revision the requests speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Era {
    Stateless,
    Session,
}

/// Which calls to make.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HttpCallMode {
    Hit,
    Miss,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct McpHttpOptions {
    /// The `switchboard` binary that gateway and worker processes are started from.
    pub switchboard_bin: PathBuf,
    pub era: Era,
    pub mode: HttpCallMode,
    pub connections: usize,
    pub duration: Duration,
}

/// What was measured.
#[derive(Debug, Clone, Serialize)]
pub struct McpHttpReport {
    pub era: Era,
    pub mode: HttpCallMode,
    pub connections: usize,
    pub duration_s: f64,
    pub calls: u64,
    pub errors: u64,
    pub calls_per_s: f64,
    pub latency_us: Percentiles,
    pub cached_answers: u64,
    pub gateway_cpu_cores: f64,
    pub worker_cpu_cores: f64,
    pub redis_cpu_cores: f64,
    pub load_generator_cores: f64,
}

/// One keep-alive HTTP/1.1 connection to `/mcp`.
struct Conn {
    addr: SocketAddr,
    stream: TcpStream,
    buf: Vec<u8>,
    session: Option<String>,
}

/// The revision's `_meta` envelope.
fn stateless_meta() -> Value {
    json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
    })
}

impl Conn {
    async fn open(addr: SocketAddr) -> anyhow::Result<Conn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            addr,
            stream,
            buf: Vec::with_capacity(16 * 1024),
            session: None,
        })
    }

    /// POSTs one JSON-RPC message; its answer (status, `Mcp-Session-Id`, body).
    async fn post(
        &mut self,
        method: &str,
        body: &Value,
        stateless: bool,
    ) -> anyhow::Result<(u16, Option<String>, Value)> {
        let body = body.to_string();
        let mut head = format!(
            "POST /mcp HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Accept: application/json\r\nContent-Length: {}\r\n",
            self.addr,
            body.len()
        );
        if stateless {
            head.push_str("MCP-Protocol-Version: 2026-07-28\r\nMcp-Method: ");
            head.push_str(method);
            head.push_str("\r\n");
        }
        if let Some(s) = &self.session {
            head.push_str("Mcp-Session-Id: ");
            head.push_str(s);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        head.push_str(&body);
        self.stream.write_all(head.as_bytes()).await?;
        self.read_response().await
    }

    async fn read_response(&mut self) -> anyhow::Result<(u16, Option<String>, Value)> {
        let end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            self.fill().await?;
        };
        let head = std::str::from_utf8(&self.buf[..end])
            .context("response headers")?
            .to_owned();
        let mut lines = head.lines();
        let status: u16 = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .context("status line")?;
        let mut length = None;
        let mut session = None;
        for l in lines {
            if let Some((k, v)) = l.split_once(':') {
                let k = k.trim();
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse::<usize>().ok();
                } else if k.eq_ignore_ascii_case("mcp-session-id") {
                    session = Some(v.trim().to_owned());
                }
            }
        }
        let length = length.context("a Content-Length answer")?;
        let start = end + 4;
        while self.buf.len() < start + length {
            self.fill().await?;
        }
        let body = serde_json::from_slice(&self.buf[start..start + length]).unwrap_or(Value::Null);
        self.buf.drain(..start + length);
        Ok((status, session, body))
    }

    async fn fill(&mut self) -> anyhow::Result<()> {
        let mut chunk = [0u8; 8192];
        let n = self.stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("the gateway closed the connection");
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

/// Runs the scenario.
pub async fn run(opts: McpHttpOptions) -> anyhow::Result<McpHttpReport> {
    if opts.connections == 0 {
        bail!("connections must be at least 1");
    }
    let redis = RedisServer::start().await;
    // The harness lifts the per-address and per-identity budgets (every request here comes
    // from one address and one anonymous identity), so they do not decide the figures.
    let gateway = GatewayProcess::start_with(
        &opts.switchboard_bin,
        &redis.url(),
        "bench-gw",
        &["--registry-interval", "200ms"],
    )
    .await;
    let worker = WorkerProcess::start_with(
        &opts.switchboard_bin,
        &redis,
        "bench-w",
        &[
            "--builtin",
            "--concurrency",
            "1024",
            "--max-running-per-identity",
            "0",
            "--backlog",
            "1024",
        ],
    )
    .await;

    let stateless = opts.era == Era::Stateless;
    let mut conns = Vec::new();
    for _ in 0..opts.connections {
        let mut c = Conn::open(gateway.addr).await?;
        if !stateless {
            let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
                "protocolVersion": "2025-11-25", "capabilities": {},
                "clientInfo": {"name": "switchboard-bench", "version": "1"}}});
            let (status, session, _) = c.post("initialize", &init, false).await?;
            if status != 200 || session.is_none() {
                bail!("initialize answered {status} without a session");
            }
            c.session = session;
        }
        conns.push(c);
    }
    wait_for_tools(&mut conns[0], stateless).await?;
    let call = move |n: u64, mode: HttpCallMode| {
        let mut meta = if stateless {
            stateless_meta()
        } else {
            json!({})
        };
        let args = match mode {
            HttpCallMode::Hit => json!({"bench": "hit"}),
            HttpCallMode::Miss => {
                meta["switchboard/cache"] = json!("bypass");
                json!({"n": n})
            }
        };
        json!({"jsonrpc": "2.0", "id": n, "method": "tools/call",
               "params": {"name": "echo", "arguments": args, "_meta": meta}})
    };
    if opts.mode == HttpCallMode::Hit {
        conns[0]
            .post("tools/call", &call(0, HttpCallMode::Hit), stateless)
            .await
            .context("warming the cache")?;
    }

    let gw_pids = [gateway.pid() as u32];
    let w_pids = [worker.pid()];
    let r_pids: Vec<u32> = redis.pid().into_iter().collect();
    let self_pid = [std::process::id()];
    let (gw0, w0, r0, self0) = (
        sample_all(&gw_pids),
        sample_all(&w_pids),
        sample_all(&r_pids),
        sample_all(&self_pid),
    );
    let counter = Arc::new(AtomicU64::new(1));
    let started = Instant::now();
    let end = started + opts.duration;
    let mut tasks = Vec::new();
    for mut conn in conns {
        let counter = counter.clone();
        let mode = opts.mode;
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let (mut errors, mut cached) = (0u64, 0u64);
            while Instant::now() < end {
                let body = call(counter.fetch_add(1, Ordering::Relaxed), mode);
                let t0 = Instant::now();
                match conn.post("tools/call", &body, stateless).await {
                    Ok((200, _, r)) if r["result"]["isError"] == false => {
                        lat.push(t0.elapsed().as_micros() as u64);
                        if r["result"]["_meta"]["switchboard/cached"] == true {
                            cached += 1;
                        }
                    }
                    Ok(_) => errors += 1,
                    Err(_) => {
                        errors += 1;
                        break;
                    }
                }
            }
            (lat, errors, cached)
        }));
    }
    let mut latencies = Vec::new();
    let (mut errors, mut cached) = (0, 0);
    for t in tasks {
        let (l, e, c) = t.await?;
        latencies.extend(l);
        errors += e;
        cached += c;
    }
    let wall = started.elapsed();
    let (gw1, w1, r1, self1) = (
        sample_all(&gw_pids),
        sample_all(&w_pids),
        sample_all(&r_pids),
        sample_all(&self_pid),
    );
    let calls = latencies.len() as u64;
    Ok(McpHttpReport {
        era: opts.era,
        mode: opts.mode,
        connections: opts.connections,
        duration_s: wall.as_secs_f64(),
        calls,
        errors,
        calls_per_s: calls as f64 / wall.as_secs_f64(),
        latency_us: percentiles(&mut latencies),
        cached_answers: cached,
        gateway_cpu_cores: cores(&gw0, &gw1, wall),
        worker_cpu_cores: cores(&w0, &w1, wall),
        redis_cpu_cores: cores(&r0, &r1, wall),
        load_generator_cores: cores(&self0, &self1, wall),
    })
}

/// Lists tools until the worker's show up (the gateway's catalogue follows the registry).
async fn wait_for_tools(conn: &mut Conn, stateless: bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut params = json!({});
    if stateless {
        params["_meta"] = stateless_meta();
    }
    let list = json!({"jsonrpc": "2.0", "id": 0, "method": "tools/list", "params": params});
    loop {
        let (_, _, r) = conn.post("tools/list", &list, stateless).await?;
        if r["result"]["tools"]
            .as_array()
            .is_some_and(|t| t.len() >= 3)
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the worker's tools never showed up in tools/list");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl McpHttpReport {
    /// The report as a table for people.
    pub fn table(&self) -> String {
        let mut out = String::new();
        row(
            &mut out,
            "scenario",
            format!(
                "mcp-http ({:?}, {:?}): 1 gateway, 1 worker, {} connection(s), one request each at a time, {:.1} s",
                self.era, self.mode, self.connections, self.duration_s
            ),
        );
        row(
            &mut out,
            "calls",
            format!(
                "{} answered ({} from the cache), {} errors",
                self.calls, self.cached_answers, self.errors
            ),
        );
        row(&mut out, "calls/s", format!("{:.0}", self.calls_per_s));
        row(&mut out, "round trip", self.latency_us.describe_ms(3));
        row(
            &mut out,
            "CPU cores",
            format!(
                "gateway {:.2}, worker {:.2}, Redis {:.2}, load generator {:.2}",
                self.gateway_cpu_cores,
                self.worker_cpu_cores,
                self.redis_cpu_cores,
                self.load_generator_cores
            ),
        );
        out
    }
}
