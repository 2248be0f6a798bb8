//! The `calls` scenario: tool calls through real gateways, Redis and workers.
//!
//! - `hit`: every call is the same `echo`, answered from the cache (warmed first).
//! - `miss`: every call is a distinct `echo` with the cache bypassed: routed through Redis to a
//!   worker and back.
//! - `coalesce`: bursts of identical `sleep` calls at once from every connection; each burst
//!   should run once.
//!
//! C connections each keep K calls in flight for T seconds; every call's round trip is timed.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use serde_json::{Value, json};
use switchboard_client::{Client, ConnectOptions};
use switchboard_harness::{GatewayProcess, RedisServer, WorkerProcess};
use switchboard_protocol::methods::tools::{CallParams, META_CACHE, ToolsCall, ToolsList};
use switchboard_protocol::methods::{Ignored, Method};

use crate::procstat::{cores, sample_all};
use crate::stats::{Percentiles, percentiles, row};

/// Which calls to make.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CallMode {
    Hit,
    Miss,
    Coalesce,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct CallsOptions {
    /// The `switchboard` binary that gateway and worker processes are started from.
    pub switchboard_bin: PathBuf,
    pub mode: CallMode,
    pub gateways: usize,
    pub workers: usize,
    pub connections: usize,
    /// Calls in flight per connection.
    pub in_flight: usize,
    pub duration: Duration,
    /// `sleep` length of a coalesced burst.
    pub burst_ms: u64,
}

/// What was measured.
#[derive(Debug, Clone, Serialize)]
pub struct CallsReport {
    pub mode: CallMode,
    pub gateways: usize,
    pub workers: usize,
    pub connections: usize,
    pub in_flight: usize,
    pub duration_s: f64,
    pub calls: u64,
    pub errors: u64,
    pub calls_per_s: f64,
    pub latency_us: Percentiles,
    /// For `coalesce`: distinct executions seen (distinct `started_at`), and calls answered.
    pub executions: Option<u64>,
    pub cached_answers: u64,
    pub gateway_cpu_cores: f64,
    pub worker_cpu_cores: f64,
    pub redis_cpu_cores: f64,
    pub load_generator_cores: f64,
    pub gateway_rss_bytes: Vec<u64>,
}

/// Runs the scenario.
pub async fn run(opts: CallsOptions) -> anyhow::Result<CallsReport> {
    if opts.connections == 0 || opts.in_flight == 0 || opts.gateways == 0 || opts.workers == 0 {
        bail!("gateways, workers, connections and in-flight must be at least 1");
    }
    let redis = RedisServer::start().await;
    let mut gateways = Vec::new();
    for i in 0..opts.gateways {
        gateways.push(
            GatewayProcess::start_with(
                &opts.switchboard_bin,
                &redis.url(),
                &format!("bench-gw-{i}"),
                &[
                    "--max-inflight-calls",
                    "1024",
                    "--registry-interval",
                    "200ms",
                ],
            )
            .await,
        );
    }
    let mut workers = Vec::new();
    for i in 0..opts.workers {
        workers.push(
            WorkerProcess::start_with(
                &opts.switchboard_bin,
                &redis,
                &format!("bench-w-{i}"),
                // One anonymous identity calls everything: no per-identity share of a
                // worker's slots, and a backlog as large as the slots.
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
            .await,
        );
    }

    let mut clients = Vec::new();
    for i in 0..opts.connections {
        let url = gateways[i % gateways.len()].ws_url();
        let (client, notes) = Client::connect(&url, ConnectOptions::default()).await?;
        // Notifications (progress, list_changed) are not measured; drain them.
        tokio::spawn(async move {
            let mut notes = notes;
            while notes.recv().await.is_some() {}
        });
        client.hello(Default::default()).await?;
        wait_for_tools(&client).await?;
        clients.push(client);
    }
    if opts.mode == CallMode::Hit {
        clients[0]
            .call(&CallParams::new("echo", json!({"bench": "hit"})))
            .await
            .context("warming the cache")?;
    }

    let gw_pids: Vec<u32> = gateways.iter().map(|g| g.pid() as u32).collect();
    let w_pids: Vec<u32> = workers.iter().map(WorkerProcess::pid).collect();
    let r_pids: Vec<u32> = redis.pid().into_iter().collect();
    let self_pid = [std::process::id()];
    let (gw0, w0, r0, self0) = (
        sample_all(&gw_pids),
        sample_all(&w_pids),
        sample_all(&r_pids),
        sample_all(&self_pid),
    );

    let counter = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let end = started + opts.duration;
    let mut tasks = Vec::new();
    for (ci, client) in clients.iter().enumerate() {
        for slot in 0..opts.in_flight {
            let client = client.clone();
            let counter = counter.clone();
            let mode = opts.mode;
            let burst_ms = opts.burst_ms;
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut errors = 0u64;
                let mut cached = 0u64;
                let mut starts = Vec::new();
                let mut round = 0u64;
                while Instant::now() < end {
                    let params = match mode {
                        CallMode::Hit => CallParams::new("echo", json!({"bench": "hit"})),
                        CallMode::Miss => CallParams {
                            meta: json!({META_CACHE: "bypass"}).as_object().cloned(),
                            ..CallParams::new(
                                "echo",
                                json!({"n": counter.fetch_add(1, Ordering::Relaxed)}),
                            )
                        },
                        // Every connection and slot sends the same call in a round: a burst.
                        CallMode::Coalesce => {
                            CallParams::new("sleep", json!({"ms": burst_ms + round % 2}))
                        }
                    };
                    round += 1;
                    let t0 = Instant::now();
                    match client.request::<_, Value>(ToolsCall::NAME, &params).await {
                        Ok(r) if r["isError"] == false => {
                            lat.push(t0.elapsed().as_micros() as u64);
                            if r["_meta"]["switchboard/cached"] == true {
                                cached += 1;
                            }
                            if let Some(s) = r["structuredContent"]["started_at"].as_u64() {
                                starts.push(s);
                            }
                        }
                        _ => errors += 1,
                    }
                }
                let _ = (ci, slot);
                (lat, errors, cached, starts)
            }));
        }
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    let mut cached = 0;
    let mut starts = Vec::new();
    for t in tasks {
        let (l, e, c, s) = t.await?;
        latencies.extend(l);
        errors += e;
        cached += c;
        starts.extend(s);
    }
    let wall = started.elapsed();
    let (gw1, w1, r1, self1) = (
        sample_all(&gw_pids),
        sample_all(&w_pids),
        sample_all(&r_pids),
        sample_all(&self_pid),
    );
    starts.sort_unstable();
    starts.dedup();
    let calls = latencies.len() as u64;
    Ok(CallsReport {
        mode: opts.mode,
        gateways: opts.gateways,
        workers: opts.workers,
        connections: opts.connections,
        in_flight: opts.in_flight,
        duration_s: wall.as_secs_f64(),
        calls,
        errors,
        calls_per_s: calls as f64 / wall.as_secs_f64(),
        latency_us: percentiles(&mut latencies),
        executions: (opts.mode == CallMode::Coalesce).then_some(starts.len() as u64),
        cached_answers: cached,
        gateway_cpu_cores: cores(&gw0, &gw1, wall),
        worker_cpu_cores: cores(&w0, &w1, wall),
        redis_cpu_cores: cores(&r0, &r1, wall),
        load_generator_cores: cores(&self0, &self1, wall),
        gateway_rss_bytes: gw1.iter().map(|s| s.rss).collect(),
    })
}

async fn wait_for_tools(client: &Client) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = client.method::<ToolsList>(&Ignored {}).await?;
        if r.tools.len() >= 3 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the workers' tools never showed up in tools/list");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl CallsReport {
    /// The report as a table for people.
    pub fn table(&self) -> String {
        let mut out = String::new();
        row(
            &mut out,
            "scenario",
            format!(
                "calls ({:?}): {} gateway(s), {} worker(s), {} connection(s) x {} in flight, {:.1} s",
                self.mode,
                self.gateways,
                self.workers,
                self.connections,
                self.in_flight,
                self.duration_s
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
        if let Some(e) = self.executions {
            row(
                &mut out,
                "executions",
                format!("{e} distinct runs for {} calls", self.calls),
            );
        }
        row(
            &mut out,
            "calls per second",
            format!("{:.0}", self.calls_per_s),
        );
        row(&mut out, "round trip", self.latency_us.describe_ms(3));
        row(
            &mut out,
            "CPU (cores)",
            format!(
                "gateways {:.2}, workers {:.2}, redis {:.2}, load generator {:.2}",
                self.gateway_cpu_cores,
                self.worker_cpu_cores,
                self.redis_cpu_cores,
                self.load_generator_cores
            ),
        );
        let rss: Vec<String> = self
            .gateway_rss_bytes
            .iter()
            .map(|b| format!("{:.1} MiB", *b as f64 / 1048576.0))
            .collect();
        row(&mut out, "gateway RSS", rss.join(", "));
        out
    }
}
