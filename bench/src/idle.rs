//! The `idle` scenario: what an idle connection costs a gateway.
//!
//! M connections spread over G gateway processes (round robin), each after `hello` and one
//! `subscribe` to one of K topics, then nothing. Each gateway's RSS is read from `/proc` before
//! the connections and after they are all established and have settled (the largest of a few
//! samples), and divided by the connections that gateway reports holding (its
//! `switchboard_connections` gauge). Redis memory (`used_memory`: each `hello` stores a session)
//! and the kernel's TCP memory (`/proc/net/sockstat`, both ends of every loopback connection) are
//! read the same way. At the end one event is published to every topic, and every connection must
//! receive it.
//!
//! One process may hold at most [`MAX_SUBSCRIBERS_PER_PROCESS`] sockets, so above that the
//! connections are held by agent processes (`switchboard-bench agent`, see `loadgen.rs`). A
//! gateway is a process too: each must have room for its share of the connections under its
//! descriptor limit, which is checked before connecting.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use switchboard_harness::{GatewayProcess, RedisServer, http_get};

use crate::fanout::{load_warnings, which};
use crate::loadgen::{
    self, MAX_SUBSCRIBERS_PER_PROCESS, Stage, SubscriberSpec, Subscribers, Target, topic_name,
};
use crate::procstat::{self, cores_each, sample_all};
use crate::stats::{Percentiles, now_us, row};

/// Descriptors left free in a gateway beyond its connections and what it already has open.
const FD_MARGIN: u64 = 16;

/// What to run.
#[derive(Debug, Clone)]
pub struct IdleOptions {
    /// The `switchboard` binary that gateway processes are started from.
    pub switchboard_bin: PathBuf,
    /// This benchmark binary (`switchboard-bench`), run again for load-generator agents.
    pub bench_bin: PathBuf,
    pub gateways: usize,
    pub connections: usize,
    pub topics: usize,
    pub sources: usize,
    /// Connections opened at once per load-generator process.
    pub connect_concurrency: usize,
    /// How far each connection goes: `Subscribe` is the scenario; `Upgrade` and `Hello` stop
    /// earlier, to see what each step costs (no delivery check then).
    pub stage: Stage,
    /// Load-generator child processes holding the connections (`None`: only when needed).
    pub agents: Option<usize>,
    /// Wait after the last connection before sampling.
    pub settle: Duration,
    /// RSS samples after settling (the largest is kept), this far apart.
    pub samples: usize,
    pub sample_interval: Duration,
    /// Bound on the final delivery check.
    pub deliver_timeout: Duration,
}

/// One gateway's memory.
#[derive(Debug, Clone, Serialize)]
pub struct IdleGateway {
    pub pid: u32,
    /// Connections assigned to it, and what its `switchboard_connections` gauge said.
    pub assigned: u64,
    pub connections: u64,
    pub fds_before: u64,
    pub fd_limit: u64,
    pub rss_before_bytes: u64,
    pub rss_after_bytes: u64,
    pub rss_per_connection_bytes: f64,
    /// CPU while the connections sat idle (settle and sampling), in cores.
    pub idle_cores: f64,
}

/// What was measured.
#[derive(Debug, Clone, Serialize)]
pub struct IdleReport {
    pub stage: Stage,
    pub gateways: usize,
    pub connections: usize,
    pub topics: usize,
    pub sources: usize,
    pub agents: usize,
    pub established: usize,
    pub failed: usize,
    pub first_error: Option<String>,
    /// Time to open every connection (hello and subscribe included).
    pub setup_s: f64,
    pub setup_per_s: f64,
    pub per_gateway: Vec<IdleGateway>,
    /// All gateways: RSS growth over connections held.
    pub rss_per_connection_bytes: f64,
    /// Redis `used_memory` growth per connection (the sessions), and Redis RSS after.
    pub redis_bytes_per_connection: f64,
    pub redis_rss_bytes: u64,
    /// `/proc/net/sockstat` TCP memory growth per connection, both ends, system-wide.
    pub kernel_tcp_bytes_per_connection: f64,
    /// RSS of the load-generator processes holding the connections, per connection.
    pub load_generator_rss_per_connection_bytes: f64,
    /// The final check: one event per topic.
    pub delivery_expected: u64,
    pub delivery_received: u64,
    pub connections_without_event: u64,
    pub connections_closed: u64,
    pub delivery_latency_us: Percentiles,
    pub warnings: Vec<String>,
}

/// Runs the scenario.
pub async fn run(opts: IdleOptions) -> anyhow::Result<IdleReport> {
    if opts.connections == 0 || opts.topics == 0 || opts.gateways == 0 || opts.sources == 0 {
        bail!("connections, topics, gateways and sources must be at least 1");
    }
    if opts.sources > 250 {
        bail!("at most 250 loopback source addresses");
    }
    if opts.samples == 0 {
        bail!("samples must be at least 1");
    }
    let agents = loadgen::agents_for(opts.connections, opts.agents);
    if agents == 0 && opts.connections > MAX_SUBSCRIBERS_PER_PROCESS {
        bail!("{} connections need agent processes", opts.connections);
    }
    which("redis-server")?;
    let redis = RedisServer::start().await;
    // Connections that never send `hello` would be closed after the hello timeout.
    let extra: &[&str] = match opts.stage {
        Stage::Upgrade => &["--hello-timeout", "1h"],
        _ => &[],
    };
    let mut gateways = Vec::new();
    for i in 0..opts.gateways {
        gateways.push(
            GatewayProcess::start_with(
                &opts.switchboard_bin,
                &redis.url(),
                &format!("idle-{i}"),
                extra,
            )
            .await,
        );
    }
    let pids: Vec<u32> = gateways.iter().map(|g| g.pid() as u32).collect();
    let assigned: Vec<u64> = (0..opts.gateways)
        .map(|g| {
            (0..opts.connections)
                .filter(|i| i % opts.gateways == g)
                .count() as u64
        })
        .collect();

    // Each gateway must have room for its share.
    let mut fds_before = Vec::new();
    let mut fd_limits = Vec::new();
    for (g, pid) in pids.iter().enumerate() {
        let used = open_fds(*pid)?;
        let limit = fd_limit(*pid)?;
        if assigned[g] + used + FD_MARGIN > limit {
            bail!(
                "gateway {g} would hold {} connections, but with {used} descriptors already open \
                 and a limit of {limit} per process it has room for {}: use more --gateways",
                assigned[g],
                limit.saturating_sub(used + FD_MARGIN)
            );
        }
        fds_before.push(used);
        fd_limits.push(limit);
    }

    let mut redis_conn = redis.connection().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = sample_all(&pids);
    let redis_mem0 = redis_used_memory(&mut redis_conn).await?;
    let tcp_mem0 = kernel_tcp_mem()?;

    let spec = SubscriberSpec {
        target: Target::Switchboard,
        stage: opts.stage,
        urls: gateways.iter().map(GatewayProcess::ws_url).collect(),
        topics: opts.topics,
        sources: opts.sources,
        first: 0,
        count: opts.connections,
        concurrency: opts.connect_concurrency,
    };
    let (mut subs, opened) = Subscribers::open(&opts.bench_bin, &spec, agents).await?;

    // Settle, then keep the largest of a few samples.
    tokio::time::sleep(opts.settle).await;
    let idle0 = sample_all(&pids);
    let idle_started = Instant::now();
    let mut after = sample_all(&pids);
    for _ in 1..opts.samples {
        tokio::time::sleep(opts.sample_interval).await;
        for (a, s) in after.iter_mut().zip(sample_all(&pids)) {
            a.rss = a.rss.max(s.rss);
            a.cpu = s.cpu;
        }
    }
    let idle_cores = cores_each(&idle0, &after, idle_started.elapsed());
    let redis_mem1 = redis_used_memory(&mut redis_conn).await?;
    let tcp_mem1 = kernel_tcp_mem()?;
    let redis_rss = redis.pid().and_then(procstat::sample).map_or(0, |s| s.rss);
    let mut lg_pids = subs.agent_pids();
    if lg_pids.is_empty() {
        lg_pids.push(std::process::id());
    }
    let lg_rss: u64 = sample_all(&lg_pids).iter().map(|s| s.rss).sum();

    let mut per_gateway = Vec::new();
    for (g, gw) in gateways.iter().enumerate() {
        let connections = gauge(gw.admin_addr, "switchboard_connections")
            .await
            .unwrap_or(assigned[g]);
        let grown = after[g].rss.saturating_sub(before[g].rss);
        per_gateway.push(IdleGateway {
            pid: pids[g],
            assigned: assigned[g],
            connections,
            fds_before: fds_before[g],
            fd_limit: fd_limits[g],
            rss_before_bytes: before[g].rss,
            rss_after_bytes: after[g].rss,
            rss_per_connection_bytes: grown as f64 / connections.max(1) as f64,
            idle_cores: idle_cores[g],
        });
    }
    let held: u64 = per_gateway.iter().map(|g| g.connections).sum();
    let grown: u64 = per_gateway
        .iter()
        .map(|g| g.rss_after_bytes.saturating_sub(g.rss_before_bytes))
        .sum();

    // One event to every topic: every connection must get its topic's.
    let subscribed = opts.stage == Stage::Subscribe;
    let mut pipe = redis::pipe();
    for k in (0..opts.topics).filter(|_| subscribed) {
        let data = format!(r#"{{"seq":0,"t":{},"idle":true}}"#, now_us());
        pipe.cmd("PUBLISH")
            .arg(format!("sb:t:{{{}}}", topic_name(k)))
            .arg(data)
            .ignore();
    }
    if subscribed {
        pipe.exec_async(&mut redis_conn).await?;
    }
    let expected = if subscribed {
        opened.established as u64
    } else {
        0
    };
    subs.wait_for(expected, opts.deliver_timeout).await?;
    let tally = subs.finish(u64::from(subscribed)).await?;

    let per_conn = |delta: u64| delta as f64 / (opened.established.max(1)) as f64;
    let mut warnings = Vec::new();
    if opened.failed > 0 {
        warnings.push(format!(
            "{} connections failed: {}",
            opened.failed,
            opened.first_error.clone().unwrap_or_default()
        ));
    }
    if held != opened.established as u64 {
        warnings.push(format!(
            "the gateways report {held} connections, the load generator holds {}",
            opened.established
        ));
    }
    let busy: f64 = idle_cores.iter().sum();
    warnings.extend(load_warnings(&[], busy));
    Ok(IdleReport {
        stage: opts.stage,
        gateways: opts.gateways,
        connections: opts.connections,
        topics: opts.topics,
        sources: opts.sources,
        agents,
        established: opened.established,
        failed: opened.failed,
        first_error: opened.first_error,
        setup_s: opened.seconds,
        setup_per_s: opened.established as f64 / opened.seconds.max(1e-9),
        per_gateway,
        rss_per_connection_bytes: grown as f64 / held.max(1) as f64,
        redis_bytes_per_connection: per_conn(redis_mem1.saturating_sub(redis_mem0)),
        redis_rss_bytes: redis_rss,
        kernel_tcp_bytes_per_connection: per_conn(tcp_mem1.saturating_sub(tcp_mem0)),
        load_generator_rss_per_connection_bytes: per_conn(lg_rss),
        delivery_expected: expected,
        delivery_received: tally.received,
        connections_without_event: tally.short,
        connections_closed: tally.closed_early,
        delivery_latency_us: tally.latency_us.percentiles(),
        warnings,
    })
}

/// Descriptors a process has open.
fn open_fds(pid: u32) -> anyhow::Result<u64> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("reading /proc/{pid}/fd"))?
        .count() as u64)
}

/// A process's soft limit on open descriptors.
fn fd_limit(pid: u32) -> anyhow::Result<u64> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits"))?;
    limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|soft| soft.parse().ok())
        .context("no 'Max open files' in /proc/<pid>/limits")
}

/// TCP memory the kernel has allocated, system-wide, in bytes (`/proc/net/sockstat`, pages).
fn kernel_tcp_mem() -> anyhow::Result<u64> {
    let text = std::fs::read_to_string("/proc/net/sockstat")?;
    let pages: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("TCP:"))
        .and_then(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.iter()
                .position(|k| *k == "mem")
                .and_then(|i| f.get(i + 1))
                .and_then(|v| v.parse().ok())
        })
        .context("no TCP mem in /proc/net/sockstat")?;
    Ok(pages * 4096)
}

async fn redis_used_memory(conn: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<u64> {
    let info: String = redis::cmd("INFO").arg("memory").query_async(conn).await?;
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .context("no used_memory in INFO memory")
}

/// One gauge from a node's `/metrics`.
async fn gauge(addr: SocketAddr, name: &str) -> Option<u64> {
    let (_, body) = http_get(addr, "/metrics").await.ok()?;
    body.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        if k == name {
            v.trim().parse::<f64>().ok().map(|f| f as u64)
        } else {
            None
        }
    })
}

impl IdleReport {
    /// The report as a table for people.
    pub fn table(&self) -> String {
        let kib = |b: f64| b / 1024.0;
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        let mut out = String::new();
        row(
            &mut out,
            "scenario",
            format!(
                "idle: {} connections ({}) over {} gateway(s), {} topic(s), {} source address(es), {}",
                self.connections,
                match self.stage {
                    Stage::Upgrade => "upgrade only",
                    Stage::Hello => "upgrade + hello each",
                    Stage::Subscribe => "hello + 1 subscribe each",
                },
                self.gateways,
                self.topics,
                self.sources,
                if self.agents == 0 {
                    "held by this process".to_owned()
                } else {
                    format!("held by {} agent processes", self.agents)
                }
            ),
        );
        row(
            &mut out,
            "connections",
            format!(
                "{} established, {} failed{}; set up in {:.1} s ({:.0}/s)",
                self.established,
                self.failed,
                self.first_error
                    .as_deref()
                    .map(|e| format!(" (first: {e})"))
                    .unwrap_or_default(),
                self.setup_s,
                self.setup_per_s
            ),
        );
        for (i, g) in self.per_gateway.iter().enumerate() {
            row(
                &mut out,
                &format!("gateway {i} RSS"),
                format!(
                    "{:.1} MiB -> {:.1} MiB with {} connections: {:.2} KiB per connection (idle CPU {:.3} cores)",
                    mib(g.rss_before_bytes),
                    mib(g.rss_after_bytes),
                    g.connections,
                    kib(g.rss_per_connection_bytes),
                    g.idle_cores
                ),
            );
        }
        row(
            &mut out,
            "gateway RSS per connection",
            format!(
                "{:.2} KiB (all gateways: RSS growth / connections held)",
                kib(self.rss_per_connection_bytes)
            ),
        );
        row(
            &mut out,
            "redis per connection",
            format!(
                "{:.2} KiB used_memory (the session); redis RSS {:.1} MiB",
                kib(self.redis_bytes_per_connection),
                mib(self.redis_rss_bytes)
            ),
        );
        row(
            &mut out,
            "kernel TCP per connection",
            format!(
                "{:.2} KiB (/proc/net/sockstat, both ends, system-wide)",
                kib(self.kernel_tcp_bytes_per_connection)
            ),
        );
        row(
            &mut out,
            "load generator per conn.",
            format!(
                "{:.2} KiB RSS",
                kib(self.load_generator_rss_per_connection_bytes)
            ),
        );
        row(
            &mut out,
            "one event per topic",
            format!(
                "{} expected, {} received, {} connection(s) without it, {} closed",
                self.delivery_expected,
                self.delivery_received,
                self.connections_without_event,
                self.connections_closed
            ),
        );
        row(
            &mut out,
            "its latency",
            self.delivery_latency_us.describe_ms(2),
        );
        for w in &self.warnings {
            row(&mut out, "WARNING", w.clone());
        }
        out
    }
}
