//! The `shards` scenario: past one Redis. First the publish rate at which one `redis-server`
//! saturates, then what a Redis Cluster of N primaries (no replicas) sustains on the same
//! machine, and the CPU each shard spends per delivered event.
//!
//! Both runs are the same steps against a different Redis: G gateway processes (`--redis URL`,
//! then `--redis-cluster SEEDS`), K topics (300) with S subscribers each (1; subscriber `i` on
//! gateway `i % G`, topic `i % K`, so each topic lives on one gateway and Redis sends each event
//! once), and a publisher in this process that offers R events per second spread evenly over the
//! topics for a step of T seconds, then R times a factor, and so on, until fewer than 95 % of the
//! offered deliveries arrive, a Redis process reaches `saturated_cores` (about one core: Redis
//! runs commands on one thread), the measured processes fill the machine, or the steps run out.
//!
//! What is published, and why: by default `FCALL sb_publish 1 sb:h:{<topic>} <json> MAXLEN TTL`,
//! what a backend sends for a topic with history (an `XADD` with exact trimming, a `PEXPIRE`, the
//! live publish, and the function's check of the event): about 10 µs of Redis per event, so on
//! a machine whose cores Redis shares with the gateways and the load generator, Redis is the
//! part that saturates first. `--method publish` sends the bare live publish instead (`PUBLISH`
//! on one Redis, `SPUBLISH` on the cluster), a microsecond or two of Redis per event: then the
//! gateways and the load generator saturate the machine first, and the report says so.
//!
//! The publisher writes straight to the Redis node that owns each topic's slot (found with
//! `CLUSTER KEYSLOT` and `CLUSTER NODES`, so no redirection is measured), over
//! `publishers_per_shard` pipelined connections per node, each owning a fixed share of the
//! node's topics and sending one pipeline per 5 ms tick (what was due) and waiting for its
//! answer: a topic's events leave in order on one connection, and a Redis that cannot keep up
//! makes the publisher fall behind, which shows as deliveries under the offered rate.
//!
//! Measured per step: events due, published and delivered (every event counted and checked for
//! order by the subscribers, as in `fanout`), the CPU of every Redis process, of the gateways,
//! of this process and of agents (`/proc`), and, from each Redis's `INFO commandstats`, the
//! events it carried (calls of the publishing command) and its own time in that command.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use switchboard_harness::RedisServer;

use crate::cluster::{BenchGateway, LocalCluster, RedisTarget, info, info_field};
use crate::fanout::{CONNECT_CONCURRENCY, load_warnings, which};
use crate::loadgen::{self, Stage, SubscriberSpec, Subscribers, Target, topic_name};
use crate::procstat::{cpu_seconds, sample_all};
use crate::stats::{Percentiles, now_us, row};

/// How often a publisher connection wakes to send what the rate asks for.
const PUBLISH_TICK: Duration = Duration::from_millis(5);
/// At most this many events per topic in one pipeline (a publisher far behind catches up over
/// several ticks rather than in one huge pipeline).
const MAX_EVENTS_PER_TOPIC_PER_TICK: u64 = 200;
/// After a step's last publish, how long its deliveries may take to arrive.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the gateways' subscriptions may take to show in Redis (`PUBSUB [SHARD]NUMSUB`).
const SUBSCRIBED_TIMEOUT: Duration = Duration::from_secs(20);
/// Between polls of a condition being waited for.
const POLL: Duration = Duration::from_millis(50);
/// The measured processes together using this share of the machine's cores: saturated.
const MACHINE_SATURATED_SHARE: f64 = 0.95;
/// How long one publisher pipeline may wait for its answers (redis-rs's default, 500 ms, is
/// shorter than a large pipeline takes on a saturated Redis).
const PIPELINE_TIMEOUT: Duration = Duration::from_secs(30);
/// The live channel and history key prefix the gateways run with (their default).
const PREFIX: &str = "sb";

/// How events are published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// `FCALL sb_publish 1 <prefix>:h:{<topic>} <json> MAXLEN TTL_MS`: history, then the live
    /// publish.
    Fcall,
    /// `PUBLISH` (one Redis) or `SPUBLISH` (cluster) `<prefix>:t:{<topic>} <json>`.
    Publish,
}

/// Which runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Runs {
    Single,
    Cluster,
    Both,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct ShardsOptions {
    /// The `switchboard` binary gateways are started from.
    pub switchboard_bin: PathBuf,
    /// This binary, run again for load-generator agents.
    pub bench_bin: PathBuf,
    pub runs: Runs,
    /// Primaries of the cluster.
    pub shards: usize,
    pub gateways: usize,
    pub topics: usize,
    pub subscribers_per_topic: usize,
    /// Events per second offered in the first step, all topics together.
    pub start_rate: u64,
    /// Each step offers this many times the previous one.
    pub step_factor: f64,
    pub max_steps: usize,
    pub step: Duration,
    pub method: Method,
    /// Bytes of padding in each event.
    pub payload_bytes: usize,
    /// `sb_publish`'s MAXLEN and TTL_MS.
    pub history_maxlen: u64,
    pub history_ttl_ms: u64,
    /// Pipelined publisher connections per Redis node.
    pub publishers_per_shard: usize,
    /// Loopback source addresses the subscribers connect from.
    pub sources: usize,
    /// Load-generator agent processes holding the subscribers (`None`: only when needed).
    pub agents: Option<usize>,
    /// A Redis process at this many cores is saturated (it runs commands on one thread).
    pub saturated_cores: f64,
    /// A step keeps up when at least this share of the offered deliveries per second arrive.
    pub keep_up: f64,
}

/// One Redis process's figures over one step.
#[derive(Debug, Clone, Serialize)]
pub struct ShardStep {
    /// `host:port`.
    pub node: String,
    /// Topics whose slot this node owns.
    pub topics: usize,
    pub cpu_seconds: f64,
    /// CPU seconds over the publishing window.
    pub cores: f64,
    /// Calls of the publishing command (`fcall`, `publish` or `spublish`), from
    /// `INFO commandstats`: the events this node carried.
    pub events: u64,
    /// The same command's failed calls (should be 0).
    pub failed: u64,
    /// Events this node was sent by the publisher (should equal `events`).
    pub sent: u64,
    /// Redis's own time in the command, per call (µs; `INFO commandstats`).
    pub command_us_per_event: f64,
    /// The process's CPU per event carried, and per delivered event (µs): the events this node
    /// carried times the subscribers per topic, times the share of the step's deliveries that
    /// arrived.
    pub cpu_us_per_event: f64,
    pub cpu_us_per_delivered_event: f64,
}

/// One step of the rate.
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    pub offered_events_per_s: f64,
    pub due: u64,
    pub published: u64,
    pub publish_window_s: f64,
    /// Deliveries due for the events published, and those that arrived by the end of the step
    /// (its publishing, then up to the drain timeout).
    pub expected_deliveries: u64,
    pub delivered: u64,
    pub window_s: f64,
    pub offered_deliveries_per_s: f64,
    pub delivered_per_s: f64,
    /// Delivered per second over offered per second.
    pub ratio: f64,
    pub shards: Vec<ShardStep>,
    /// All Redis processes together, cores.
    pub redis_cores: f64,
    pub gateway_cores: f64,
    /// This process (the publisher, and the subscribers without agents).
    pub bench_cores: f64,
    pub agent_cores: f64,
    /// Every measured process together.
    pub machine_cores: f64,
}

/// One run: one Redis or the cluster.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// "one redis-server" or "cluster of N primaries".
    pub redis: String,
    pub shards: usize,
    pub steps: Vec<StepReport>,
    /// The step that delivered the most while keeping up, and its delivered events per second.
    pub sustained_step: Option<usize>,
    pub sustained_events_per_s: f64,
    /// The most delivered events per second in any step.
    pub peak_events_per_s: f64,
    pub stop_reason: String,
    /// Every event of the run: deliveries expected and received, out of order, latency
    /// (publish to delivery, all steps together).
    pub expected_deliveries: u64,
    pub received_deliveries: u64,
    pub out_of_order: u64,
    pub latency_us: Percentiles,
    pub warnings: Vec<String>,
}

/// The whole scenario.
#[derive(Debug, Clone, Serialize)]
pub struct ShardsReport {
    pub method: Method,
    pub gateways: usize,
    pub topics: usize,
    pub subscribers_per_topic: usize,
    pub payload_bytes: usize,
    pub step_s: f64,
    pub cores: usize,
    pub single: Option<RunReport>,
    pub cluster: Option<RunReport>,
    /// Sustained events per second: the cluster's over one Redis's.
    pub scaling: Option<f64>,
}

/// A pipelined publisher connection: a fixed share of one node's topics.
struct Lane {
    node: usize,
    conn: redis::aio::MultiplexedConnection,
    /// (topic index, key the command names).
    topics: Vec<(usize, String)>,
    /// Events sent so far per topic (the same for each of its topics): the next `seq`.
    sent: u64,
}

/// Runs the scenario: one Redis, then the cluster (or either alone).
pub async fn run(opts: ShardsOptions) -> anyhow::Result<ShardsReport> {
    if opts.topics == 0 || opts.gateways == 0 || opts.subscribers_per_topic == 0 {
        bail!("topics, gateways and subscribers per topic must be at least 1");
    }
    if opts.sources == 0 || opts.sources > 250 {
        bail!("sources: 1 to 250 loopback addresses");
    }
    if opts.publishers_per_shard == 0 || opts.max_steps == 0 || opts.start_rate == 0 {
        bail!("publishers per shard, steps and the start rate must be at least 1");
    }
    if opts.step_factor <= 1.0 {
        bail!("the step factor must be more than 1");
    }
    which("redis-server")?;
    let single = if opts.runs != Runs::Cluster {
        Some(run_one(&opts, false).await?)
    } else {
        None
    };
    let cluster = if opts.runs != Runs::Single {
        which("redis-cli")?;
        Some(run_one(&opts, true).await?)
    } else {
        None
    };
    let scaling = match (&single, &cluster) {
        (Some(s), Some(c)) if s.sustained_events_per_s > 0.0 => {
            Some(c.sustained_events_per_s / s.sustained_events_per_s)
        }
        _ => None,
    };
    Ok(ShardsReport {
        method: opts.method,
        gateways: opts.gateways,
        topics: opts.topics,
        subscribers_per_topic: opts.subscribers_per_topic,
        payload_bytes: opts.payload_bytes,
        step_s: opts.step.as_secs_f64(),
        cores: ncpu(),
        single,
        cluster,
        scaling,
    })
}

fn ncpu() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The Redis of one run, kept alive while it runs.
enum Redis {
    Single(RedisServer),
    Cluster(LocalCluster),
}

/// One Redis node as the publisher and the sampler see it.
struct Node {
    addr: String,
    url: String,
    pid: u32,
}

async fn run_one(opts: &ShardsOptions, cluster: bool) -> anyhow::Result<RunReport> {
    let (redis, nodes, target) = if cluster {
        let c = LocalCluster::start(opts.shards).await?;
        let nodes = c
            .nodes
            .iter()
            .map(|n| Node {
                addr: format!("127.0.0.1:{}", n.port),
                url: n.url(),
                pid: n.pid().unwrap_or(0),
            })
            .collect::<Vec<_>>();
        let seeds = c.seeds();
        (Redis::Cluster(c), nodes, RedisTarget::Cluster(seeds))
    } else {
        let r = RedisServer::start().await;
        let node = Node {
            addr: format!("127.0.0.1:{}", r.port),
            url: r.url(),
            pid: r.pid().unwrap_or(0),
        };
        let url = r.url();
        (Redis::Single(r), vec![node], RedisTarget::Single(url))
    };
    let label = match &redis {
        Redis::Single(r) => format!("one redis-server (port {})", r.port),
        Redis::Cluster(c) => format!("cluster of {} primaries", c.nodes.len()),
    };

    let mut gateways = Vec::with_capacity(opts.gateways);
    for i in 0..opts.gateways {
        gateways.push(
            BenchGateway::start(&opts.switchboard_bin, &target, &format!("shards-{i}")).await?,
        );
    }

    // Which node owns each topic's slot.
    let owner = topic_owners(&nodes, opts.topics, cluster).await?;

    // Subscribers, and their subscriptions visible in Redis.
    let count = opts.topics * opts.subscribers_per_topic;
    let spec = SubscriberSpec {
        target: Target::Switchboard,
        stage: Stage::Subscribe,
        urls: gateways.iter().map(BenchGateway::ws_url).collect(),
        topics: opts.topics,
        sources: opts.sources,
        first: 0,
        count,
        concurrency: CONNECT_CONCURRENCY,
    };
    let agents = loadgen::agents_for(count, opts.agents);
    let (mut subs, opened) = Subscribers::open(&opts.bench_bin, &spec, agents).await?;
    if opened.failed > 0 {
        bail!(
            "{} of {count} subscribers could not connect: {}",
            opened.failed,
            opened.first_error.unwrap_or_default()
        );
    }
    wait_subscribed(&nodes, &owner, cluster)
        .await
        .context("waiting for the gateways' subscriptions")?;

    // Publisher connections: `publishers_per_shard` per node, the node's topics dealt out.
    let mut lanes = Vec::new();
    for (n, node) in nodes.iter().enumerate() {
        let mine: Vec<usize> = (0..opts.topics).filter(|k| owner[*k] == n).collect();
        for l in 0..opts.publishers_per_shard {
            let topics: Vec<(usize, String)> = mine
                .iter()
                .skip(l)
                .step_by(opts.publishers_per_shard)
                .map(|k| (*k, key_for(opts.method, *k)))
                .collect();
            if topics.is_empty() {
                continue;
            }
            let config =
                redis::AsyncConnectionConfig::new().set_response_timeout(Some(PIPELINE_TIMEOUT));
            let conn = redis::Client::open(node.url.as_str())?
                .get_multiplexed_async_connection_with_config(&config)
                .await
                .with_context(|| format!("connecting to {}", node.addr))?;
            lanes.push(Lane {
                node: n,
                conn,
                topics,
                sent: 0,
            });
        }
    }
    let command = match (opts.method, cluster) {
        (Method::Fcall, _) => "fcall",
        (Method::Publish, false) => "publish",
        (Method::Publish, true) => "spublish",
    };

    let redis_pids: Vec<u32> = nodes.iter().map(|n| n.pid).collect();
    let gateway_pids: Vec<u32> = gateways.iter().filter_map(BenchGateway::pid).collect();
    let self_pid = [std::process::id()];
    let agent_pids = subs.agent_pids();
    let pad = "x".repeat(opts.payload_bytes);
    let s = opts.subscribers_per_topic as u64;

    let mut steps = Vec::new();
    let mut stop_reason = format!("the last of {} steps", opts.max_steps);
    let mut rate = opts.start_rate as f64;
    for _ in 0..opts.max_steps {
        let stats0 = commandstats(&nodes, command)
            .await
            .context("INFO commandstats")?;
        let (r0, g0, b0, a0) = (
            sample_all(&redis_pids),
            sample_all(&gateway_pids),
            sample_all(&self_pid),
            sample_all(&agent_pids),
        );
        let received0 = subs.received().await?;
        let sent0: Vec<u64> = lanes
            .iter()
            .map(|l| l.sent * l.topics.len() as u64)
            .collect();
        let started = Instant::now();

        let per_topic = rate / opts.topics as f64;
        let publishing = lanes
            .drain(..)
            .map(|lane| {
                let job = Publish {
                    method: opts.method,
                    per_topic,
                    step: opts.step,
                    pad: pad.clone(),
                    maxlen: opts.history_maxlen,
                    ttl_ms: opts.history_ttl_ms,
                    live: if cluster { "SPUBLISH" } else { "PUBLISH" },
                };
                tokio::spawn(async move { job.drive(lane).await })
            })
            .collect::<Vec<_>>();
        for p in publishing {
            lanes.push(p.await??);
        }
        let publish_window = started.elapsed();
        let r_mid = sample_all(&redis_pids);

        let expected_total: u64 = lanes
            .iter()
            .map(|l| l.sent * l.topics.len() as u64 * s)
            .sum();
        let received1 = subs.wait_for(expected_total, DRAIN_TIMEOUT).await?;
        let window = started.elapsed();
        let (r1, g1, b1, a1) = (
            sample_all(&redis_pids),
            sample_all(&gateway_pids),
            sample_all(&self_pid),
            sample_all(&agent_pids),
        );
        let stats1 = commandstats(&nodes, command).await?;

        let sent_per_lane: Vec<u64> = lanes
            .iter()
            .zip(&sent0)
            .map(|(l, before)| l.sent * l.topics.len() as u64 - before)
            .collect();
        let published: u64 = sent_per_lane.iter().sum();
        let due = (opts.step.as_secs_f64() * per_topic) as u64 * opts.topics as u64;
        let expected = published * s;
        let delivered = received1.saturating_sub(received0);
        let offered_deliveries_per_s = rate * s as f64;
        let delivered_per_s = delivered as f64 / window.as_secs_f64();
        let arrived_share = if expected > 0 {
            (delivered as f64 / expected as f64).min(1.0)
        } else {
            0.0
        };
        let shards: Vec<ShardStep> = nodes
            .iter()
            .enumerate()
            .map(|(n, node)| {
                let cpu = cpu_seconds(&r0[n..=n], &r1[n..=n]);
                let cpu_publishing = cpu_seconds(&r0[n..=n], &r_mid[n..=n]);
                let (c0, c1) = (stats0[n], stats1[n]);
                let events = c1.calls.saturating_sub(c0.calls);
                let usec = c1.usec.saturating_sub(c0.usec);
                let sent: u64 = lanes
                    .iter()
                    .zip(&sent_per_lane)
                    .filter(|(l, _)| l.node == n)
                    .map(|(_, d)| d)
                    .sum();
                let per = |x: f64| if x > 0.0 { cpu * 1e6 / x } else { 0.0 };
                ShardStep {
                    node: node.addr.clone(),
                    topics: owner.iter().filter(|o| **o == n).count(),
                    cpu_seconds: cpu,
                    cores: cpu_publishing / publish_window.as_secs_f64(),
                    events,
                    failed: c1.failed.saturating_sub(c0.failed),
                    sent,
                    command_us_per_event: if events > 0 {
                        usec as f64 / events as f64
                    } else {
                        0.0
                    },
                    cpu_us_per_event: per(events as f64),
                    cpu_us_per_delivered_event: per(events as f64 * s as f64 * arrived_share),
                }
            })
            .collect();
        let secs = window.as_secs_f64();
        let redis_cores = cpu_seconds(&r0, &r1) / secs;
        let gateway_cores = cpu_seconds(&g0, &g1) / secs;
        let bench_cores = cpu_seconds(&b0, &b1) / secs;
        // (No agents: an empty sum is -0.0, which would print as "-0.00".)
        let agent_cores = if agent_pids.is_empty() {
            0.0
        } else {
            cpu_seconds(&a0, &a1) / secs
        };
        let step = StepReport {
            offered_events_per_s: rate,
            due,
            published,
            publish_window_s: publish_window.as_secs_f64(),
            expected_deliveries: expected,
            delivered,
            window_s: secs,
            offered_deliveries_per_s,
            delivered_per_s,
            ratio: delivered_per_s / offered_deliveries_per_s,
            redis_cores,
            gateway_cores,
            bench_cores,
            agent_cores,
            machine_cores: redis_cores + gateway_cores + bench_cores + agent_cores,
            shards,
        };
        let failed: u64 = step.shards.iter().map(|s| s.failed).sum();
        if failed > 0 {
            bail!(
                "Redis refused {failed} `{command}` calls in a step: is the gateways' function \
                 library loaded (FUNCTION LIST)?"
            );
        }
        let hot = step
            .shards
            .iter()
            .find(|s| s.cores >= opts.saturated_cores)
            .map(|s| (s.node.clone(), s.cores));
        let ratio = step.ratio;
        let machine = step.machine_cores;
        steps.push(step);
        if ratio < opts.keep_up {
            stop_reason = format!(
                "deliveries fell to {:.0} % of the offered rate",
                ratio * 100.0
            );
            break;
        }
        if let Some((node, cores)) = hot {
            stop_reason = format!("redis {node} reached {cores:.2} cores");
            break;
        }
        if machine >= MACHINE_SATURATED_SHARE * ncpu() as f64 {
            stop_reason = format!(
                "the measured processes used {machine:.2} of the {} cores",
                ncpu()
            );
            break;
        }
        rate *= opts.step_factor;
    }

    // Every event of the run must arrive, in order.
    let expected_total: u64 = lanes
        .iter()
        .map(|l| l.sent * l.topics.len() as u64 * s)
        .sum();
    let received_total = subs.wait_for(expected_total, DRAIN_TIMEOUT).await?;
    let fewest = lanes.iter().map(|l| l.sent).min().unwrap_or(0);
    let tally = subs.finish(fewest).await?;
    drop(gateways);
    drop(redis);

    let kept: Option<usize> = steps
        .iter()
        .enumerate()
        .filter(|(_, st)| st.ratio >= opts.keep_up)
        .max_by(|a, b| a.1.delivered_per_s.total_cmp(&b.1.delivered_per_s))
        .map(|(i, _)| i);
    let peak = steps
        .iter()
        .map(|st| st.delivered_per_s)
        .fold(0.0, f64::max);
    let mut report = RunReport {
        redis: label,
        shards: nodes.len(),
        sustained_step: kept,
        sustained_events_per_s: kept.map_or(0.0, |i| steps[i].delivered_per_s / s as f64),
        peak_events_per_s: peak / s as f64,
        steps,
        stop_reason,
        expected_deliveries: expected_total,
        received_deliveries: received_total.max(tally.received),
        out_of_order: tally.out_of_order,
        latency_us: tally.latency_us.percentiles(),
        warnings: Vec::new(),
    };
    report.warnings = warnings(&report, opts);
    Ok(report)
}

/// One step's publishing on one lane.
struct Publish {
    method: Method,
    /// Events per second per topic.
    per_topic: f64,
    step: Duration,
    pad: String,
    maxlen: u64,
    ttl_ms: u64,
    /// The live publish command: `PUBLISH`, or `SPUBLISH` on a cluster.
    live: &'static str,
}

impl Publish {
    /// Sends what the rate asks for, one pipeline per tick, for the step; gives the lane back.
    async fn drive(self, mut lane: Lane) -> anyhow::Result<Lane> {
        let start = Instant::now();
        let base = lane.sent;
        let last = (self.step.as_secs_f64() * self.per_topic) as u64;
        let mut done = 0u64;
        let mut tick = tokio::time::interval(PUBLISH_TICK);
        while start.elapsed() < self.step && done < last {
            tick.tick().await;
            let due = ((start.elapsed().as_secs_f64() * self.per_topic) as u64).min(last);
            if due <= done {
                continue;
            }
            let upto = due.min(done + MAX_EVENTS_PER_TOPIC_PER_TICK);
            let mut pipe = redis::pipe();
            for n in done..upto {
                let data = event_data(base + n, &self.pad);
                for (_, key) in &lane.topics {
                    match self.method {
                        Method::Fcall => pipe
                            .cmd("FCALL")
                            .arg("sb_publish")
                            .arg(1)
                            .arg(key)
                            .arg(&data)
                            .arg(self.maxlen)
                            .arg(self.ttl_ms)
                            .ignore(),
                        Method::Publish => pipe.cmd(self.live).arg(key).arg(&data).ignore(),
                    };
                }
            }
            pipe.exec_async(&mut lane.conn)
                .await
                .context("a publisher pipeline")?;
            done = upto;
            lane.sent = base + done;
        }
        Ok(lane)
    }
}

/// The key a topic's command names: its history stream (`FCALL`) or its live channel.
fn key_for(method: Method, k: usize) -> String {
    let topic = topic_name(k);
    match method {
        Method::Fcall => format!("{PREFIX}:h:{{{topic}}}"),
        Method::Publish => format!("{PREFIX}:t:{{{topic}}}"),
    }
}

/// An event's data: its sequence number on its topic, its send time, the padding.
fn event_data(seq: u64, pad: &str) -> String {
    format!(r#"{{"seq":{seq},"t":{},"pad":"{pad}"}}"#, now_us())
}

/// For each topic, the index of the node that owns its slot (all node 0 on one Redis).
async fn topic_owners(nodes: &[Node], topics: usize, cluster: bool) -> anyhow::Result<Vec<usize>> {
    if !cluster {
        return Ok(vec![0; topics]);
    }
    let mut conn = redis::Client::open(nodes[0].url.as_str())?
        .get_multiplexed_async_connection()
        .await?;
    let text: String = redis::cmd("CLUSTER")
        .arg("NODES")
        .query_async(&mut conn)
        .await?;
    let ranges = slot_ranges(&text);
    let mut owner = Vec::with_capacity(topics);
    for k in 0..topics {
        // The topic's hash tag decides the slot: the history key and the channel share it.
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key_for(Method::Fcall, k))
            .query_async(&mut conn)
            .await?;
        let addr = ranges
            .iter()
            .find(|(lo, hi, _)| (*lo..=*hi).contains(&slot))
            .map(|(_, _, a)| a.clone())
            .with_context(|| format!("no node owns slot {slot}"))?;
        let n = nodes
            .iter()
            .position(|n| n.addr == addr)
            .with_context(|| format!("slot {slot} is on {addr}, not one of ours"))?;
        owner.push(n);
    }
    Ok(owner)
}

/// `(first slot, last slot, host:port)` of every primary's ranges, from `CLUSTER NODES`
/// (`<id> <ip:port@cport[,hostname]> <flags> <master> <ping> <pong> <epoch> <link> <slot>...`).
fn slot_ranges(nodes: &str) -> Vec<(u16, u16, String)> {
    let mut out = Vec::new();
    for line in nodes.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 9 || !f[2].split(',').any(|x| x == "master") {
            continue;
        }
        let addr = f[1].split(['@', ',']).next().unwrap_or_default().to_owned();
        for range in &f[8..] {
            if range.starts_with('[') {
                continue; // a slot being migrated or imported
            }
            let (lo, hi) = range.split_once('-').unwrap_or((range, range));
            if let (Ok(lo), Ok(hi)) = (lo.parse(), hi.parse()) {
                out.push((lo, hi, addr.clone()));
            }
        }
    }
    out
}

/// Waits until every topic's live channel has a subscriber on the node that owns it
/// (`PUBSUB NUMSUB` on one Redis; `PUBSUB SHARDNUMSUB` on the cluster, for sharded pub/sub).
async fn wait_subscribed(nodes: &[Node], owner: &[usize], cluster: bool) -> anyhow::Result<()> {
    let started = Instant::now();
    let sub = if cluster { "SHARDNUMSUB" } else { "NUMSUB" };
    loop {
        let mut missing = 0usize;
        for (n, node) in nodes.iter().enumerate() {
            let channels: Vec<String> = owner
                .iter()
                .enumerate()
                .filter(|(_, o)| **o == n)
                .map(|(k, _)| key_for(Method::Publish, k))
                .collect();
            if channels.is_empty() {
                continue;
            }
            let mut conn = redis::Client::open(node.url.as_str())?
                .get_multiplexed_async_connection()
                .await?;
            let counts: Vec<(String, i64)> = redis::cmd("PUBSUB")
                .arg(sub)
                .arg(&channels)
                .query_async(&mut conn)
                .await?;
            missing += counts.iter().filter(|(_, c)| *c < 1).count();
        }
        if missing == 0 {
            return Ok(());
        }
        if started.elapsed() > SUBSCRIBED_TIMEOUT {
            bail!("{missing} topics had no gateway subscribed in Redis in time (PUBSUB {sub})");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// One command's counters from `INFO commandstats`.
#[derive(Debug, Clone, Copy, Default)]
struct CommandStat {
    calls: u64,
    usec: u64,
    failed: u64,
}

/// `command`'s counters on every node (zero before its first call).
async fn commandstats(nodes: &[Node], command: &str) -> anyhow::Result<Vec<CommandStat>> {
    let mut out = Vec::with_capacity(nodes.len());
    for node in nodes {
        let text = info(&node.url, "commandstats")
            .await
            .with_context(|| format!("INFO commandstats of {}", node.addr))?;
        out.push(parse_commandstat(&text, command));
    }
    Ok(out)
}

/// `cmdstat_<command>:calls=N,usec=U,usec_per_call=..,rejected_calls=..,failed_calls=F`.
fn parse_commandstat(info: &str, command: &str) -> CommandStat {
    let Some(line) = info_field(info, &format!("cmdstat_{command}")) else {
        return CommandStat::default();
    };
    let fields: HashMap<&str, &str> = line
        .split(',')
        .filter_map(|kv| kv.split_once('='))
        .collect();
    let num = |k: &str| fields.get(k).and_then(|v| v.parse().ok()).unwrap_or(0);
    CommandStat {
        calls: num("calls"),
        usec: num("usec"),
        failed: num("failed_calls"),
    }
}

/// Signs that the figures measure something other than Redis.
fn warnings(r: &RunReport, opts: &ShardsOptions) -> Vec<String> {
    let mut w = Vec::new();
    if let Some(st) = r.steps.last() {
        let mut procs = vec![("this process".to_owned(), st.bench_cores)];
        if st.agent_cores > 0.0 {
            procs.push(("agents".to_owned(), st.agent_cores));
        }
        w.extend(load_warnings(&procs, st.machine_cores));
        let redis_max = st.shards.iter().map(|s| s.cores).fold(0.0, f64::max);
        if st.ratio < opts.keep_up && redis_max < 0.75 * opts.saturated_cores {
            w.push(format!(
                "deliveries fell behind while no Redis was saturated (busiest {redis_max:.2} \
                 cores): the gateways, the load generator or the machine were the limit, not Redis"
            ));
        }
    }
    if r.received_deliveries < r.expected_deliveries {
        w.push(format!(
            "{} of {} deliveries did not arrive",
            r.expected_deliveries - r.received_deliveries,
            r.expected_deliveries
        ));
    }
    if r.out_of_order > 0 {
        w.push(format!("{} deliveries out of order", r.out_of_order));
    }
    w
}

impl RunReport {
    fn table(&self, out: &mut String) {
        row(
            out,
            "redis",
            format!("{} ({} shard(s))", self.redis, self.shards),
        );
        out.push_str(
            "  step  offered ev/s  published/due    delivered/s  ratio  redis cores (each)           gateways  bench  agents\n",
        );
        for (i, st) in self.steps.iter().enumerate() {
            let each: Vec<String> = st
                .shards
                .iter()
                .map(|s| format!("{:.2}", s.cores))
                .collect();
            out.push_str(&format!(
                "  {:>4}  {:>12.0}  {:>7}/{:<7}  {:>11.0}  {:>5.2}  {:<28}  {:>8.2}  {:>5.2}  {:>6.2}\n",
                i + 1,
                st.offered_events_per_s,
                st.published,
                st.due,
                st.delivered_per_s,
                st.ratio,
                format!("{:.2} ({})", st.redis_cores, each.join(" ")),
                st.gateway_cores,
                st.bench_cores,
                st.agent_cores,
            ));
        }
        row(out, "stopped", self.stop_reason.clone());
        match self.sustained_step {
            Some(i) => {
                row(
                    out,
                    "sustained",
                    format!(
                        "{:.0} events/s delivered (step {}); peak {:.0} events/s",
                        self.sustained_events_per_s,
                        i + 1,
                        self.peak_events_per_s
                    ),
                );
                for sh in &self.steps[i].shards {
                    row(
                        out,
                        &format!("  shard {}", sh.node),
                        format!(
                            "{} topics, {} events ({} sent), {:.2} CPU-s ({:.2} cores), {:.2} µs CPU per event, {:.2} µs per delivered event, {:.2} µs in the command",
                            sh.topics,
                            sh.events,
                            sh.sent,
                            sh.cpu_seconds,
                            sh.cores,
                            sh.cpu_us_per_event,
                            sh.cpu_us_per_delivered_event,
                            sh.command_us_per_event
                        ),
                    );
                }
            }
            None => row(
                out,
                "sustained",
                format!(
                    "no step kept up; peak {:.0} events/s",
                    self.peak_events_per_s
                ),
            ),
        }
        if let Some(last) = self.steps.last()
            && Some(self.steps.len() - 1) != self.sustained_step
        {
            for sh in &last.shards {
                row(
                    out,
                    &format!("  last step {}", sh.node),
                    format!(
                        "{} events, {:.2} cores, {:.2} µs CPU per event, {:.2} µs in the command",
                        sh.events, sh.cores, sh.cpu_us_per_event, sh.command_us_per_event
                    ),
                );
            }
        }
        row(
            out,
            "deliveries",
            format!(
                "{} expected, {} received, {} out of order",
                self.expected_deliveries, self.received_deliveries, self.out_of_order
            ),
        );
        row(out, "latency (all steps)", self.latency_us.describe_ms(2));
        for w in &self.warnings {
            row(out, "WARNING", w.clone());
        }
    }
}

impl ShardsReport {
    /// The report as a table for people.
    pub fn table(&self) -> String {
        let mut out = String::new();
        row(
            &mut out,
            "scenario",
            format!(
                "shards: {} gateway(s), {} topics x {} subscriber(s), {}, {}-byte padding, {:.0} s steps, {} cores",
                self.gateways,
                self.topics,
                self.subscribers_per_topic,
                match self.method {
                    Method::Fcall => "FCALL sb_publish (history + live)",
                    Method::Publish => "PUBLISH / SPUBLISH (live only)",
                },
                self.payload_bytes,
                self.step_s,
                self.cores
            ),
        );
        for run in [&self.single, &self.cluster].into_iter().flatten() {
            out.push('\n');
            run.table(&mut out);
        }
        if let Some(x) = self.scaling {
            out.push('\n');
            row(
                &mut out,
                "scaling",
                format!("the cluster sustained {x:.2}x one Redis's events/s on this machine"),
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn primaries_slot_ranges_are_read_from_cluster_nodes() {
        let nodes = "\
a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460\n\
b2 127.0.0.1:7001@17001,host master - 0 0 2 connected 5461-10922 [10923->-c3]\n\
c3 127.0.0.1:7002@17002 master - 0 0 3 connected 10923 10924-16383\n\
d4 127.0.0.1:7003@17003 slave a1 0 0 1 connected\n";
        assert_eq!(
            slot_ranges(nodes),
            vec![
                (0, 5460, "127.0.0.1:7000".to_owned()),
                (5461, 10922, "127.0.0.1:7001".to_owned()),
                (10923, 10923, "127.0.0.1:7002".to_owned()),
                (10924, 16383, "127.0.0.1:7002".to_owned()),
            ]
        );
    }

    #[test]
    fn commandstats_lines_are_read() {
        let info = "# Commandstats\r\ncmdstat_fcall:calls=120,usec=1500,usec_per_call=12.50,rejected_calls=0,failed_calls=2\r\ncmdstat_fcall_ro:calls=9,usec=9\r\n";
        let s = parse_commandstat(info, "fcall");
        assert_eq!((s.calls, s.usec, s.failed), (120, 1500, 2));
        assert_eq!(parse_commandstat(info, "spublish").calls, 0);
    }

    #[test]
    fn history_keys_and_live_channels_share_the_topic_hash_tag() {
        assert_eq!(key_for(Method::Fcall, 7), "sb:h:{bench:7}");
        assert_eq!(key_for(Method::Publish, 7), "sb:t:{bench:7}");
    }
}
