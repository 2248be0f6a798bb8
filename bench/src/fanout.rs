//! The `fanout` scenario: S subscribers spread over K topics and G gateway processes; a
//! backend publishes through Redis (`PUBLISH`, pipelined per tick) at a set rate per topic for a
//! set time. Each event carries its sequence number and send time, so every delivery is counted,
//! checked for order and timed.
//!
//! With `target: Floor` the same scenario runs against the floor server (`floor.rs`) instead:
//! no Redis and no gateways; the publisher sends each event, already built as the gateway would
//! send it, over the floor's control connection. [`compare`] runs the floor, then Switchboard,
//! with the same subscribers and rate, and divides the CPU per delivery.
//!
//! Subscribers live in this process, or in agent processes (`loadgen.rs`) when there are more
//! than one process can hold or when asked (`agents`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::bail;
use serde::Serialize;
use switchboard_harness::{GatewayProcess, RedisServer};

use crate::floor::{FloorControl, FloorProcess, FloorStats};
pub use crate::loadgen::MAX_SUBSCRIBERS_PER_PROCESS;
use crate::loadgen::{self, Stage, SubscriberSpec, Subscribers, Tally, Target, topic_name};
use crate::procstat::{cores, cores_each, cpu_seconds, sample_all};
use crate::stats::{Percentiles, now_us, row};

/// Connections opened at once while setting up (per load-generator process).
pub const CONNECT_CONCURRENCY: usize = 256;
/// How often the publisher wakes to publish what the rate asks for.
const PUBLISH_TICK: Duration = Duration::from_millis(5);
/// After the last publish, how long deliveries may take to arrive.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// A load-generator process using this many cores or more was probably the bottleneck.
pub const LOADGEN_SATURATED_CORES: f64 = 0.85;

/// What to run.
#[derive(Debug, Clone)]
pub struct FanoutOptions {
    /// The `switchboard` binary that gateway processes are started from (unused by the floor).
    pub switchboard_bin: PathBuf,
    /// This benchmark binary (`switchboard-bench`), run again for the floor server and
    /// load-generator agents.
    pub bench_bin: PathBuf,
    pub target: Target,
    pub gateways: usize,
    pub subscribers: usize,
    pub topics: usize,
    /// Events per second, per topic.
    pub rate: u64,
    pub duration: Duration,
    /// Size of the padding inside each event's data.
    pub payload_bytes: usize,
    /// Loopback source addresses the subscribers spread over (127.0.0.1, 127.0.0.2, ...).
    pub sources: usize,
    /// Load-generator child processes holding the subscribers (`None`: only when needed).
    pub agents: Option<usize>,
    /// Connections opened at once per load-generator process.
    pub connect_concurrency: usize,
    /// The floor's broadcast tasks (0: one per core).
    pub floor_shards: usize,
}

/// What was measured.
#[derive(Debug, Clone, Serialize)]
pub struct FanoutReport {
    pub target: Target,
    /// Server processes: gateways, or 1 (the floor).
    pub gateways: usize,
    pub subscribers: usize,
    pub topics: usize,
    pub rate_per_topic: u64,
    pub duration_s: f64,
    pub payload_bytes: usize,
    pub sources: usize,
    /// Load-generator child processes holding the subscribers (0: this process).
    pub agents: usize,
    /// Events published (all topics), and how many the rate asked for.
    pub published: u64,
    pub due: u64,
    pub publish_window_s: f64,
    pub expected_deliveries: u64,
    pub received_deliveries: u64,
    pub missing: u64,
    pub out_of_order: u64,
    /// Subscribers that did not get every event, and those whose socket closed.
    pub subscribers_short: u64,
    pub subscribers_closed: u64,
    /// Deliveries per second the publish rate asked for, and what arrived.
    pub offered_deliveries_per_s: f64,
    pub deliveries_per_s: f64,
    pub latency_us: Percentiles,
    /// Server CPU (all gateways, or the floor) per delivery, in microseconds; the same number is
    /// CPU seconds per million deliveries.
    pub gateway_cpu_us_per_delivery: f64,
    pub server_cores: f64,
    pub gateway_rss_bytes: Vec<u64>,
    pub redis_cores: Option<f64>,
    /// CPU used by this process (the publisher, and the subscribers without agents), in cores,
    /// from the first publish to the last delivery.
    pub load_generator_cores: f64,
    /// CPU of each agent process, in cores, over the same window.
    pub agent_cores: Vec<f64>,
    /// The floor's own counters (floor target only).
    pub floor: Option<FloorStats>,
    /// Signs that the figures measure something other than the server (empty when none).
    pub warnings: Vec<String>,
}

/// The floor and Switchboard, same subscribers and rate.
#[derive(Debug, Clone, Serialize)]
pub struct CompareReport {
    pub floor: FanoutReport,
    pub switchboard: FanoutReport,
    /// Switchboard's CPU per delivery (gateways) over the floor's.
    pub cpu_per_delivery_ratio: f64,
}

enum Publisher {
    Redis(redis::aio::MultiplexedConnection),
    Floor(FloorControl),
}

/// Runs the scenario once.
pub async fn run(opts: FanoutOptions) -> anyhow::Result<FanoutReport> {
    if opts.subscribers == 0 || opts.topics == 0 || opts.gateways == 0 || opts.sources == 0 {
        bail!("subscribers, topics, gateways and sources must be at least 1");
    }
    if opts.sources > 250 {
        bail!("at most 250 loopback source addresses");
    }
    let agents = loadgen::agents_for(opts.subscribers, opts.agents);

    // The servers.
    let mut redis = None;
    let mut gateways = Vec::new();
    let mut floor = None;
    let (urls, server_pids) = match opts.target {
        Target::Switchboard => {
            which("redis-server")?;
            let r = RedisServer::start().await;
            for i in 0..opts.gateways {
                gateways.push(
                    GatewayProcess::start_with(
                        &opts.switchboard_bin,
                        &r.url(),
                        &format!("bench-{i}"),
                        &[],
                    )
                    .await,
                );
            }
            redis = Some(r);
            (
                gateways.iter().map(GatewayProcess::ws_url).collect(),
                gateways.iter().map(|g| g.pid() as u32).collect::<Vec<_>>(),
            )
        }
        Target::Floor => {
            let f = FloorProcess::start(&opts.bench_bin, opts.floor_shards).await?;
            let urls = vec![f.ws_url()];
            let pids = f.pid().into_iter().collect();
            floor = Some(f);
            (urls, pids)
        }
    };

    let spec = SubscriberSpec {
        target: opts.target,
        stage: Stage::Subscribe,
        urls,
        topics: opts.topics,
        sources: opts.sources,
        first: 0,
        count: opts.subscribers,
        concurrency: opts.connect_concurrency,
    };
    let (mut subs, opened) = Subscribers::open(&opts.bench_bin, &spec, agents).await?;
    if opened.failed > 0 {
        bail!(
            "{} of {} subscribers could not connect: {}",
            opened.failed,
            opts.subscribers,
            opened.first_error.unwrap_or_default()
        );
    }
    let mut subs_per_topic = vec![0u64; opts.topics];
    for i in 0..opts.subscribers {
        subs_per_topic[i % opts.topics] += 1;
    }

    let mut publisher = match (&redis, &floor) {
        (Some(r), _) => Publisher::Redis(
            redis::Client::open(r.url())?
                .get_multiplexed_async_connection()
                .await?,
        ),
        (None, Some(f)) => Publisher::Floor(FloorControl::connect(f.addr).await?),
        (None, None) => unreachable!("a server was started"),
    };

    let redis_pids: Vec<u32> = redis
        .as_ref()
        .and_then(RedisServer::pid)
        .into_iter()
        .collect();
    let agent_pids = subs.agent_pids();
    let self_pid = [std::process::id()];
    let (server0, redis0, self0, agents0) = (
        sample_all(&server_pids),
        sample_all(&redis_pids),
        sample_all(&self_pid),
        sample_all(&agent_pids),
    );
    let started = Instant::now();

    let (per_topic, due) = publish(&mut publisher, &opts).await?;
    let publish_window = started.elapsed();
    let expected: u64 = subs_per_topic.iter().map(|s| s * per_topic).sum();
    subs.wait_for(expected, DRAIN_TIMEOUT).await?;
    let elapsed = started.elapsed();
    let (server1, redis1, self1, agents1) = (
        sample_all(&server_pids),
        sample_all(&redis_pids),
        sample_all(&self_pid),
        sample_all(&agent_pids),
    );
    let floor_stats = match &mut publisher {
        Publisher::Floor(c) => Some(c.stats().await?),
        Publisher::Redis(_) => None,
    };
    let tally = subs.finish(per_topic).await?;

    let server_cpu = cpu_seconds(&server0, &server1);
    let received = tally.received;
    let mut report = FanoutReport {
        target: opts.target,
        gateways: server_pids.len(),
        subscribers: opts.subscribers,
        topics: opts.topics,
        rate_per_topic: opts.rate,
        duration_s: opts.duration.as_secs_f64(),
        payload_bytes: opts.payload_bytes,
        sources: opts.sources,
        agents,
        published: per_topic * opts.topics as u64,
        due: due * opts.topics as u64,
        publish_window_s: publish_window.as_secs_f64(),
        expected_deliveries: expected,
        received_deliveries: received,
        missing: expected.saturating_sub(received),
        out_of_order: tally.out_of_order,
        subscribers_short: tally.short,
        subscribers_closed: tally.closed_early,
        offered_deliveries_per_s: expected as f64 / publish_window.as_secs_f64(),
        deliveries_per_s: received as f64 / elapsed.as_secs_f64(),
        latency_us: tally.latency_us.percentiles(),
        gateway_cpu_us_per_delivery: if received > 0 {
            server_cpu / received as f64 * 1e6
        } else {
            0.0
        },
        server_cores: server_cpu / elapsed.as_secs_f64(),
        gateway_rss_bytes: server1.iter().map(|s| s.rss).collect(),
        redis_cores: redis.as_ref().map(|_| cores(&redis0, &redis1, elapsed)),
        load_generator_cores: cores_each(&self0, &self1, elapsed)
            .first()
            .copied()
            .unwrap_or(0.0),
        agent_cores: cores_each(&agents0, &agents1, elapsed),
        floor: floor_stats,
        warnings: Vec::new(),
    };
    report.warnings = report.find_warnings(&tally);
    drop(gateways);
    drop(floor);
    Ok(report)
}

/// Runs the floor, then Switchboard, with the same options.
pub async fn compare(opts: FanoutOptions) -> anyhow::Result<CompareReport> {
    let floor = run(FanoutOptions {
        target: Target::Floor,
        ..opts.clone()
    })
    .await?;
    let switchboard = run(FanoutOptions {
        target: Target::Switchboard,
        ..opts
    })
    .await?;
    let ratio = if floor.gateway_cpu_us_per_delivery > 0.0 {
        switchboard.gateway_cpu_us_per_delivery / floor.gateway_cpu_us_per_delivery
    } else {
        0.0
    };
    Ok(CompareReport {
        floor,
        switchboard,
        cpu_per_delivery_ratio: ratio,
    })
}

pub(crate) fn which(cmd: &str) -> anyhow::Result<()> {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|p| p.join(cmd).is_file()))
        .unwrap_or(false);
    if found {
        Ok(())
    } else {
        bail!("{cmd} is not installed (apt-get install redis-server)")
    }
}

/// Publishes `rate` events per second on every topic for `duration`; returns the events
/// published per topic, and how many the rate asked for by the end.
async fn publish(publisher: &mut Publisher, opts: &FanoutOptions) -> anyhow::Result<(u64, u64)> {
    let topics: Vec<String> = (0..opts.topics).map(topic_name).collect();
    let channels: Vec<String> = topics.iter().map(|t| format!("sb:t:{{{t}}}")).collect();
    let pad = "x".repeat(opts.payload_bytes);
    let start = Instant::now();
    let mut seq = 0u64;
    let mut tick = tokio::time::interval(PUBLISH_TICK);
    while start.elapsed() < opts.duration {
        tick.tick().await;
        let due = (start.elapsed().as_secs_f64() * opts.rate as f64) as u64;
        if due <= seq {
            continue;
        }
        let upto = due.min(seq + 10_000);
        match publisher {
            Publisher::Redis(conn) => {
                let mut pipe = redis::pipe();
                for s in seq..upto {
                    let payload = event_data(s, &pad);
                    for ch in &channels {
                        pipe.cmd("PUBLISH").arg(ch).arg(&payload).ignore();
                    }
                }
                pipe.exec_async(conn).await?;
            }
            Publisher::Floor(control) => {
                for s in seq..upto {
                    let payload = event_data(s, &pad);
                    for t in &topics {
                        let frame = switchboard_protocol::event::encode_event(t, &payload);
                        control.broadcast(t, &frame).await?;
                    }
                }
                control.flush().await?;
            }
        }
        seq = upto;
    }
    let due = (opts.duration.as_secs_f64() * opts.rate as f64) as u64;
    Ok((seq, due))
}

fn event_data(seq: u64, pad: &str) -> String {
    format!(r#"{{"seq":{seq},"t":{},"pad":"{pad}"}}"#, now_us())
}

/// Warnings shared by the scenarios: a saturated load-generator process, or a saturated machine.
/// `processes` are (name, cores) of every load-generator process; `all_cores` is what every
/// measured process used together.
pub fn load_warnings(processes: &[(String, f64)], all_cores: f64) -> Vec<String> {
    let mut w = Vec::new();
    for (name, cores) in processes {
        if *cores >= LOADGEN_SATURATED_CORES {
            w.push(format!(
                "load generator ({name}) used {cores:.2} cores: it was likely the bottleneck, and \
                 its queueing is in the latency"
            ));
        }
    }
    let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    if all_cores >= 0.9 * ncpu {
        w.push(format!(
            "the measured processes used {all_cores:.2} of {ncpu:.0} cores: the machine was \
             saturated, so server and load generator competed for CPU"
        ));
    }
    w
}

impl FanoutReport {
    fn server_name(&self) -> &'static str {
        match self.target {
            Target::Switchboard => "gateway",
            Target::Floor => "floor",
        }
    }

    fn find_warnings(&self, tally: &Tally) -> Vec<String> {
        let mut procs = vec![("this process".to_owned(), self.load_generator_cores)];
        for (i, c) in self.agent_cores.iter().enumerate() {
            procs.push((format!("agent {i}"), *c));
        }
        let all = self.server_cores
            + self.redis_cores.unwrap_or(0.0)
            + self.load_generator_cores
            + self.agent_cores.iter().sum::<f64>();
        let mut w = load_warnings(&procs, all);
        if self.due > 0 && (self.published as f64) < 0.98 * self.due as f64 {
            w.push(format!(
                "the publisher fell behind: {} of {} events due were published",
                self.published, self.due
            ));
        }
        if self.deliveries_per_s < 0.95 * self.offered_deliveries_per_s {
            w.push(format!(
                "deliveries lagged the publish rate: {:.0}/s delivered of {:.0}/s offered",
                self.deliveries_per_s, self.offered_deliveries_per_s
            ));
        }
        if tally.closed_early > 0 {
            w.push(format!(
                "{} subscriber sockets closed before the end",
                tally.closed_early
            ));
        }
        w
    }

    /// The report as a table for people.
    pub fn table(&self) -> String {
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        let server = self.server_name();
        let rss: Vec<String> = self
            .gateway_rss_bytes
            .iter()
            .map(|b| format!("{:.1} MiB", mib(*b)))
            .collect();
        let mut out = String::new();
        let servers = match self.target {
            Target::Switchboard => format!("{} gateway(s)", self.gateways),
            Target::Floor => "the floor server".to_owned(),
        };
        row(
            &mut out,
            "scenario",
            format!(
                "fanout: {servers}, {} topic(s), {} subscribers, {} events/s per topic for {:.0} s, {}-byte padding",
                self.topics,
                self.subscribers,
                self.rate_per_topic,
                self.duration_s,
                self.payload_bytes
            ),
        );
        row(
            &mut out,
            "events published",
            format!("{} ({} due)", self.published, self.due),
        );
        row(
            &mut out,
            "deliveries",
            format!(
                "{} expected, {} received, {} missing, {} out of order; {} subscriber(s) short",
                self.expected_deliveries,
                self.received_deliveries,
                self.missing,
                self.out_of_order,
                self.subscribers_short
            ),
        );
        row(
            &mut out,
            "delivered per second",
            format!(
                "{:.0} (offered {:.0})",
                self.deliveries_per_s, self.offered_deliveries_per_s
            ),
        );
        row(
            &mut out,
            "publish-to-deliver latency",
            self.latency_us.describe_ms(2),
        );
        row(
            &mut out,
            &format!("{server} CPU per delivery"),
            format!(
                "{:.2} µs (= CPU-seconds per million deliveries, all {server} processes; {:.2} cores)",
                self.gateway_cpu_us_per_delivery, self.server_cores
            ),
        );
        row(&mut out, &format!("{server} RSS"), rss.join(", "));
        if let Some(r) = self.redis_cores {
            row(&mut out, "redis CPU", format!("{r:.2} cores"));
        }
        if let Some(f) = self.floor {
            row(
                &mut out,
                "floor counters",
                format!(
                    "{} sockets, {} frames written, {} dropped",
                    f.registered, f.written, f.dropped
                ),
            );
        }
        let agents: Vec<String> = self.agent_cores.iter().map(|c| format!("{c:.2}")).collect();
        row(
            &mut out,
            "load generator CPU",
            if agents.is_empty() {
                format!("{:.2} cores", self.load_generator_cores)
            } else {
                format!(
                    "{:.2} cores (publisher), agents {} cores",
                    self.load_generator_cores,
                    agents.join(" + ")
                )
            },
        );
        for w in &self.warnings {
            row(&mut out, "WARNING", w.clone());
        }
        out
    }
}

impl CompareReport {
    /// Both runs, then the comparison.
    pub fn table(&self) -> String {
        let mut out = String::from("== the floor ==\n");
        out.push_str(&self.floor.table());
        out.push_str("\n== Switchboard ==\n");
        out.push_str(&self.switchboard.table());
        out.push_str("\n== comparison ==\n");
        row(
            &mut out,
            "CPU per delivery",
            format!(
                "Switchboard {:.2} µs / floor {:.2} µs = {:.2}x",
                self.switchboard.gateway_cpu_us_per_delivery,
                self.floor.gateway_cpu_us_per_delivery,
                self.cpu_per_delivery_ratio
            ),
        );
        let (s, f) = (self.switchboard.latency_us, self.floor.latency_us);
        row(
            &mut out,
            "latency p50 / p99 / p99.9",
            format!(
                "Switchboard {:.2} / {:.2} / {:.2} ms, floor {:.2} / {:.2} / {:.2} ms",
                s.p50 as f64 / 1e3,
                s.p99 as f64 / 1e3,
                s.p999 as f64 / 1e3,
                f.p50 as f64 / 1e3,
                f.p99 as f64 / 1e3,
                f.p999 as f64 / 1e3
            ),
        );
        row(
            &mut out,
            "delivered per second",
            format!(
                "Switchboard {:.0}, floor {:.0}",
                self.switchboard.deliveries_per_s, self.floor.deliveries_per_s
            ),
        );
        out
    }
}
