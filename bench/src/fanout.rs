//! The `fanout` scenario: S subscribers spread over K topics and G gateway processes; a
//! backend publishes through Redis (`PUBLISH`, pipelined per tick) at a set rate per topic for a
//! set time. Each event carries its sequence number and send time, so every delivery is counted,
//! checked for order and timed.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use switchboard_client::{Client, ConnectOptions, Notifications};
use switchboard_harness::{GatewayProcess, RedisServer};
use tokio::sync::watch;

use crate::procstat::{self, ProcSample};
use crate::stats::{Percentiles, percentiles, row};

/// Connections one process may hold (the workplace's per-process descriptor cap, less room for
/// everything else).
pub const MAX_SUBSCRIBERS_PER_PROCESS: usize = 19_000;
/// Connections opened at once while setting up.
const CONNECT_CONCURRENCY: usize = 256;
/// How often the publisher wakes to publish what the rate asks for.
const PUBLISH_TICK: Duration = Duration::from_millis(5);
/// After the last publish, how long deliveries may take to arrive.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// What to run.
#[derive(Debug, Clone)]
pub struct FanoutOptions {
    /// The `switchboard` binary that gateway processes are started from.
    pub bin: PathBuf,
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
}

/// What was measured.
#[derive(Debug, Clone, Serialize)]
pub struct FanoutReport {
    pub gateways: usize,
    pub subscribers: usize,
    pub topics: usize,
    pub rate_per_topic: u64,
    pub duration_s: f64,
    pub payload_bytes: usize,
    pub published: u64,
    pub expected_deliveries: u64,
    pub received_deliveries: u64,
    pub out_of_order: u64,
    pub deliveries_per_s: f64,
    pub latency_us: Percentiles,
    /// Gateway CPU (all gateways) per delivery, in microseconds; the same number is CPU
    /// seconds per million deliveries.
    pub gateway_cpu_us_per_delivery: f64,
    pub gateway_rss_bytes: Vec<u64>,
    /// CPU used by this process (the load generator), in cores, over the publish window.
    pub load_generator_cores: f64,
}

#[derive(Deserialize)]
struct EventData {
    seq: u64,
    t: u64,
}

#[derive(Deserialize)]
struct EventEnvelope {
    data: EventData,
}

struct Receiver {
    received: u64,
    out_of_order: u64,
    latencies: Vec<u64>,
}

/// Runs the scenario.
pub async fn run(opts: FanoutOptions) -> anyhow::Result<FanoutReport> {
    if opts.subscribers == 0 || opts.topics == 0 || opts.gateways == 0 || opts.sources == 0 {
        bail!("subscribers, topics, gateways and sources must be at least 1");
    }
    if opts.subscribers > MAX_SUBSCRIBERS_PER_PROCESS {
        bail!(
            "{} subscribers is more than one load-generator process may hold ({MAX_SUBSCRIBERS_PER_PROCESS})",
            opts.subscribers
        );
    }
    if opts.sources > 250 {
        bail!("at most 250 loopback source addresses");
    }
    which("redis-server")?;
    let redis = RedisServer::start().await;
    let mut gateways = Vec::new();
    for i in 0..opts.gateways {
        gateways.push(
            GatewayProcess::start_with(&opts.bin, &redis.url(), &format!("bench-{i}"), &[]).await,
        );
    }

    let epoch = Instant::now();
    let received_total = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut receivers = Vec::with_capacity(opts.subscribers);
    let mut subs_per_topic = vec![0u64; opts.topics];
    let mut clients = Vec::with_capacity(opts.subscribers);
    for chunk_start in (0..opts.subscribers).step_by(CONNECT_CONCURRENCY) {
        let chunk_end = (chunk_start + CONNECT_CONCURRENCY).min(opts.subscribers);
        let mut connecting = Vec::new();
        for i in chunk_start..chunk_end {
            let url = gateways[i % opts.gateways].ws_url();
            let topic = topic_name(i % opts.topics);
            subs_per_topic[i % opts.topics] += 1;
            let bind = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (i % opts.sources) as u8));
            connecting.push(tokio::spawn(async move {
                let copts = ConnectOptions {
                    bind: Some(bind),
                    ..ConnectOptions::default()
                };
                let (client, notes) = Client::connect(&url, copts).await?;
                client.hello(Default::default()).await?;
                client.subscribe(&topic).await?;
                Ok::<_, anyhow::Error>((client, notes))
            }));
        }
        for c in connecting {
            let (client, notes) = c.await?.context("connecting a subscriber")?;
            clients.push(client);
            receivers.push(tokio::spawn(receive(
                notes,
                epoch,
                received_total.clone(),
                stop_rx.clone(),
            )));
        }
    }

    let pids: Vec<u32> = gateways.iter().map(|g| g.pid() as u32).collect();
    let before: Vec<ProcSample> = pids.iter().filter_map(|p| procstat::sample(*p)).collect();
    let self_before = procstat::sample(std::process::id()).unwrap_or_default();
    let started = Instant::now();

    let published = publish(&redis.url(), &opts, epoch).await?;
    let expected: u64 = subs_per_topic.iter().map(|s| s * published).sum();

    let drain_deadline = Instant::now() + DRAIN_TIMEOUT;
    while received_total.load(Ordering::Relaxed) < expected && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = started.elapsed();
    let after: Vec<ProcSample> = pids.iter().filter_map(|p| procstat::sample(*p)).collect();
    let self_after = procstat::sample(std::process::id()).unwrap_or_default();
    let _ = stop_tx.send(true);

    let mut received = 0;
    let mut out_of_order = 0;
    let mut latencies = Vec::with_capacity(expected as usize);
    for r in receivers {
        let r = r.await?;
        received += r.received;
        out_of_order += r.out_of_order;
        latencies.extend(r.latencies);
    }
    drop(clients);

    let cpu: f64 = after
        .iter()
        .zip(&before)
        .map(|(a, b)| (a.cpu - b.cpu).as_secs_f64())
        .sum();
    let per_delivery = if received > 0 {
        cpu / received as f64
    } else {
        0.0
    };
    Ok(FanoutReport {
        gateways: opts.gateways,
        subscribers: opts.subscribers,
        topics: opts.topics,
        rate_per_topic: opts.rate,
        duration_s: opts.duration.as_secs_f64(),
        payload_bytes: opts.payload_bytes,
        published: published * opts.topics as u64,
        expected_deliveries: expected,
        received_deliveries: received,
        out_of_order,
        deliveries_per_s: received as f64 / elapsed.as_secs_f64(),
        latency_us: percentiles(&mut latencies),
        gateway_cpu_us_per_delivery: per_delivery * 1e6,
        gateway_rss_bytes: after.iter().map(|s| s.rss).collect(),
        load_generator_cores: (self_after.cpu - self_before.cpu).as_secs_f64()
            / elapsed.as_secs_f64(),
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

fn topic_name(k: usize) -> String {
    format!("bench:{k}")
}

/// Publishes `rate` events per second on every topic for `duration`; returns events per topic.
async fn publish(url: &str, opts: &FanoutOptions, epoch: Instant) -> anyhow::Result<u64> {
    let client = redis::Client::open(url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let channels: Vec<String> = (0..opts.topics)
        .map(|k| format!("sb:t:{{{}}}", topic_name(k)))
        .collect();
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
        let mut pipe = redis::pipe();
        let upto = due.min(seq + 10_000);
        for s in seq..upto {
            let t = epoch.elapsed().as_micros() as u64;
            let payload = format!(r#"{{"seq":{s},"t":{t},"pad":"{pad}"}}"#);
            for ch in &channels {
                pipe.cmd("PUBLISH").arg(ch).arg(&payload).ignore();
            }
        }
        seq = upto;
        pipe.exec_async(&mut conn).await?;
    }
    Ok(seq)
}

async fn receive(
    mut notes: Notifications,
    epoch: Instant,
    total: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
) -> Receiver {
    let mut r = Receiver {
        received: 0,
        out_of_order: 0,
        latencies: Vec::new(),
    };
    let mut next_seq = 0u64;
    loop {
        tokio::select! {
            n = notes.recv() => {
                let Some(n) = n else { break };
                let Ok(ev) = serde_json::from_str::<EventEnvelope>(n.params.get()) else { continue };
                let now = epoch.elapsed().as_micros() as u64;
                r.latencies.push(now.saturating_sub(ev.data.t));
                if ev.data.seq != next_seq {
                    r.out_of_order += 1;
                }
                next_seq = ev.data.seq + 1;
                r.received += 1;
                total.fetch_add(1, Ordering::Relaxed);
            }
            _ = stop.changed() => break,
        }
    }
    r
}

impl FanoutReport {
    /// The report as a table for people.
    pub fn table(&self) -> String {
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        let rss: Vec<String> = self
            .gateway_rss_bytes
            .iter()
            .map(|b| format!("{:.1} MiB", mib(*b)))
            .collect();
        let mut out = String::new();
        row(
            &mut out,
            "scenario",
            format!(
                "fanout: {} gateway(s), {} topic(s), {} subscribers, {} events/s per topic for {:.0} s, {}-byte padding",
                self.gateways,
                self.topics,
                self.subscribers,
                self.rate_per_topic,
                self.duration_s,
                self.payload_bytes
            ),
        );
        row(&mut out, "events published", self.published.to_string());
        row(
            &mut out,
            "deliveries",
            format!(
                "{} expected, {} received, {} missing, {} out of order",
                self.expected_deliveries,
                self.received_deliveries,
                self.expected_deliveries
                    .saturating_sub(self.received_deliveries),
                self.out_of_order
            ),
        );
        row(
            &mut out,
            "delivered per second",
            format!("{:.0}", self.deliveries_per_s),
        );
        row(
            &mut out,
            "publish-to-deliver latency",
            self.latency_us.describe_ms(2),
        );
        row(
            &mut out,
            "gateway CPU per delivery",
            format!(
                "{:.2} µs (= CPU-seconds per million deliveries, all gateways)",
                self.gateway_cpu_us_per_delivery
            ),
        );
        row(&mut out, "gateway RSS", rss.join(", "));
        row(
            &mut out,
            "load generator CPU",
            format!(
                "{:.2} cores{}",
                self.load_generator_cores,
                if self.load_generator_cores > 0.9 {
                    "  (near saturation: latency figures include load-generator queueing)"
                } else {
                    ""
                }
            ),
        );
        out
    }
}
