//! Subscribers: the load generator's connections, in this process or spread over child
//! processes ("agents").
//!
//! One process may hold at most [`MAX_SUBSCRIBERS_PER_PROCESS`] sockets (the descriptor cap), so
//! a scenario that needs more re-executes this binary as `switchboard-bench agent`: each agent
//! opens its share of the connections and answers the parent over its stdout, one JSON line per
//! request it read on its stdin (see [`AgentRequest`] and [`AgentReply`]). An agent exits when
//! its stdin closes, so agents never outlive the scenario that started them.
//!
//! Either way a connection is assigned by its global index `i`: URL `i % urls`, topic
//! `i % topics`, loopback source `127.0.0.(1 + i % sources)`. Each connection gets a receiver
//! that counts the events it is sent, checks their `seq` is in order, and records the latency
//! from the `t` stamped in each event (microseconds on `CLOCK_MONOTONIC`, the same clock in every
//! process) in one of a few histograms its process's receivers share ([`LATENCY_SHARDS`]: a
//! histogram holds some tens of KiB, too much for each of 19 000 connections). What the receivers
//! saw is summed into a [`Tally`]; agents send theirs to the parent, which merges them.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use switchboard_client::{Client, ConnectOptions, Notifications};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

use crate::stats::{Histogram, now_us};

/// Connections one process may hold (the workplace's per-process descriptor cap, less room for
/// everything else).
pub const MAX_SUBSCRIBERS_PER_PROCESS: usize = 19_000;
/// How long an agent may take to answer one request.
const AGENT_TIMEOUT: Duration = Duration::from_secs(300);
/// Latency histograms the receivers of one process share, connection `i` recording into
/// `i % LATENCY_SHARDS`: enough that receivers on different threads rarely wait for one.
pub const LATENCY_SHARDS: usize = 8;

/// What the subscribers connect to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// Switchboard gateways: `hello`, then `subscribe` to the connection's topic.
    Switchboard,
    /// The floor server (`floor.rs`): the topic goes in the URL (`?topic=`), nothing is sent.
    Floor,
}

/// How far a Switchboard connection goes before it sits idle.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// The WebSocket upgrade only.
    Upgrade,
    /// The upgrade and `hello`.
    Hello,
    /// The upgrade, `hello` and `subscribe` to the connection's topic.
    #[default]
    Subscribe,
}

/// Which connections to open.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubscriberSpec {
    pub target: Target,
    /// How far each connection goes (Switchboard only).
    #[serde(default)]
    pub stage: Stage,
    /// WebSocket URLs (`ws://host:port/ws`).
    pub urls: Vec<String>,
    pub topics: usize,
    pub sources: usize,
    /// Global index of the first connection, and how many.
    pub first: usize,
    pub count: usize,
    /// Connections being opened at once (per process).
    pub concurrency: usize,
}

impl SubscriberSpec {
    /// The share of connections `[first, first + count)`.
    fn share(&self, first: usize, count: usize) -> SubscriberSpec {
        SubscriberSpec {
            first,
            count,
            ..self.clone()
        }
    }
}

/// The name of topic `k`.
pub fn topic_name(k: usize) -> String {
    format!("bench:{k}")
}

/// What the receivers saw, summed over connections (and processes).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Tally {
    pub connections: u64,
    pub received: u64,
    pub out_of_order: u64,
    /// Fewest and most events any one connection received.
    pub min_per_connection: u64,
    pub max_per_connection: u64,
    /// Connections that received fewer events than expected.
    pub short: u64,
    /// Connections whose socket closed before the end.
    pub closed_early: u64,
    pub latency_us: Histogram,
}

impl Tally {
    /// Adds another process's tally.
    fn merge(&mut self, o: &Tally) -> Result<(), hdrhistogram::AdditionError> {
        self.min_per_connection = if self.connections == 0 {
            o.min_per_connection
        } else if o.connections == 0 {
            self.min_per_connection
        } else {
            self.min_per_connection.min(o.min_per_connection)
        };
        self.max_per_connection = self.max_per_connection.max(o.max_per_connection);
        self.connections += o.connections;
        self.received += o.received;
        self.out_of_order += o.out_of_order;
        self.short += o.short;
        self.closed_early += o.closed_early;
        self.latency_us.merge(&o.latency_us)
    }

    /// Counts one connection of this process, short when it got fewer than `expect` events (its
    /// latencies are in its group's histograms).
    fn count(&mut self, c: &ConnTally, expect: u64) {
        self.min_per_connection = if self.connections == 0 {
            c.received
        } else {
            self.min_per_connection.min(c.received)
        };
        self.max_per_connection = self.max_per_connection.max(c.received);
        self.connections += 1;
        self.received += c.received;
        self.out_of_order += c.out_of_order;
        self.short += u64::from(c.received < expect);
        self.closed_early += u64::from(c.closed);
    }
}

/// How opening went.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Opened {
    pub established: usize,
    pub failed: usize,
    pub first_error: Option<String>,
    /// Wall time to open them (the slowest process).
    pub seconds: f64,
}

impl Opened {
    fn merge(&mut self, o: Opened) {
        self.established += o.established;
        self.failed += o.failed;
        if self.first_error.is_none() {
            self.first_error = o.first_error;
        }
        self.seconds = self.seconds.max(o.seconds);
    }
}

struct ConnTally {
    received: u64,
    out_of_order: u64,
    closed: bool,
}

/// The latency histograms a group's receivers share (see [`LATENCY_SHARDS`]).
type Latencies = Arc<[Mutex<Histogram>]>;

/// Connections held by this process, each with its receiver.
pub struct Group {
    clients: Vec<Client>,
    receivers: Vec<JoinHandle<ConnTally>>,
    received: Arc<AtomicU64>,
    latency: Latencies,
    stop: watch::Sender<bool>,
}

impl Group {
    /// Opens the connections of `spec` (at most `spec.concurrency` at once). Connections that
    /// fail are counted, not retried.
    pub async fn open(spec: &SubscriberSpec) -> anyhow::Result<(Group, Opened)> {
        if spec.urls.is_empty() || spec.topics == 0 || spec.sources == 0 {
            bail!("subscribers need at least one URL, topic and source");
        }
        if spec.count > MAX_SUBSCRIBERS_PER_PROCESS {
            bail!(
                "{} connections is more than one process may hold ({MAX_SUBSCRIBERS_PER_PROCESS})",
                spec.count
            );
        }
        let started = Instant::now();
        let received = Arc::new(AtomicU64::new(0));
        let (stop, stop_rx) = watch::channel(false);
        let gate = Arc::new(Semaphore::new(spec.concurrency.max(1)));
        let mut opening = Vec::with_capacity(spec.count);
        for i in spec.first..spec.first + spec.count {
            let permit = gate.clone().acquire_owned().await?;
            let url = spec.urls[i % spec.urls.len()].clone();
            let topic = topic_name(i % spec.topics);
            let bind = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (i % spec.sources) as u8));
            let (target, stage) = (spec.target, spec.stage);
            opening.push(tokio::spawn(async move {
                let r = open_one(target, stage, &url, &topic, bind).await;
                drop(permit);
                r
            }));
        }
        let mut group = Group {
            clients: Vec::with_capacity(spec.count),
            receivers: Vec::with_capacity(spec.count),
            received,
            latency: (0..LATENCY_SHARDS)
                .map(|_| Mutex::new(Histogram::default()))
                .collect(),
            stop,
        };
        let mut opened = Opened::default();
        for (i, o) in opening.into_iter().enumerate() {
            match o.await? {
                Ok((client, notes)) => {
                    group.clients.push(client);
                    group.receivers.push(tokio::spawn(receive(
                        notes,
                        group.received.clone(),
                        group.latency.clone(),
                        i % LATENCY_SHARDS,
                        stop_rx.clone(),
                    )));
                    opened.established += 1;
                }
                Err(e) => {
                    opened.failed += 1;
                    opened.first_error.get_or_insert_with(|| format!("{e:#}"));
                }
            }
        }
        opened.seconds = started.elapsed().as_secs_f64();
        Ok((group, opened))
    }

    /// Events received so far, all connections.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Stops the receivers, closes the connections and sums what they saw; a connection with
    /// fewer than `expect` events counts as short.
    pub async fn finish(self, expect: u64) -> anyhow::Result<Tally> {
        let _ = self.stop.send(true);
        let mut tally = Tally::default();
        for r in self.receivers {
            tally.count(&r.await?, expect);
        }
        for shard in self.latency.iter() {
            let shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            tally.latency_us.merge(&shard)?;
        }
        for c in &self.clients {
            c.abort();
        }
        Ok(tally)
    }
}

async fn open_one(
    target: Target,
    stage: Stage,
    url: &str,
    topic: &str,
    bind: IpAddr,
) -> anyhow::Result<(Client, Notifications)> {
    let copts = ConnectOptions {
        bind: Some(bind),
        ..ConnectOptions::default()
    };
    match target {
        Target::Switchboard => {
            let (client, notes) = Client::connect(url, copts).await?;
            if stage != Stage::Upgrade {
                client.hello(Default::default()).await?;
            }
            if stage == Stage::Subscribe {
                client.subscribe(topic).await?;
            }
            Ok((client, notes))
        }
        Target::Floor => Ok(Client::connect(&format!("{url}?topic={topic}"), copts).await?),
    }
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

async fn receive(
    mut notes: Notifications,
    total: Arc<AtomicU64>,
    latency: Latencies,
    shard: usize,
    mut stop: watch::Receiver<bool>,
) -> ConnTally {
    let mut r = ConnTally {
        received: 0,
        out_of_order: 0,
        closed: false,
    };
    let mut next_seq = 0u64;
    loop {
        tokio::select! {
            n = notes.recv() => {
                let Some(n) = n else {
                    r.closed = true;
                    break;
                };
                let Ok(ev) = serde_json::from_str::<EventEnvelope>(n.params.get()) else { continue };
                let us = now_us().saturating_sub(ev.data.t);
                latency[shard].lock().unwrap_or_else(PoisonError::into_inner).record(us);
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

// ---------------------------------------------------------------------------------------------
// Agents

/// A request from the parent, one JSON line on the agent's stdin.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum AgentRequest {
    /// Open these connections (once).
    Open { spec: SubscriberSpec },
    /// How many events the receivers have counted so far.
    Count,
    /// Stop the receivers, close the connections, and report (`expect`: events each
    /// connection should have).
    Finish { expect: u64 },
}

/// An agent's answer, one JSON line on its stdout.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "lowercase")]
pub enum AgentReply {
    Opened { opened: Opened },
    Count { received: u64 },
    Finished { tally: Tally },
    Error { message: String },
}

/// The agent's side: serves requests from stdin until it closes (`switchboard-bench agent`).
pub async fn serve_agent() -> anyhow::Result<()> {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut out = tokio::io::stdout();
    let mut group: Option<Group> = None;
    while let Some(line) = lines.next_line().await? {
        let reply = match serde_json::from_str::<AgentRequest>(&line) {
            Err(e) => AgentReply::Error {
                message: format!("bad request: {e}"),
            },
            Ok(AgentRequest::Open { spec }) if group.is_none() => match Group::open(&spec).await {
                Ok((g, opened)) => {
                    group = Some(g);
                    AgentReply::Opened { opened }
                }
                Err(e) => AgentReply::Error {
                    message: format!("{e:#}"),
                },
            },
            Ok(AgentRequest::Open { .. }) => AgentReply::Error {
                message: "already open".into(),
            },
            Ok(AgentRequest::Count) => AgentReply::Count {
                received: group.as_ref().map_or(0, Group::received),
            },
            Ok(AgentRequest::Finish { expect }) => match group.take() {
                Some(g) => match g.finish(expect).await {
                    Ok(tally) => AgentReply::Finished { tally },
                    Err(e) => AgentReply::Error {
                        message: format!("{e:#}"),
                    },
                },
                None => AgentReply::Finished {
                    tally: Tally::default(),
                },
            },
        };
        let mut text = serde_json::to_string(&reply)?;
        text.push('\n');
        out.write_all(text.as_bytes()).await?;
        out.flush().await?;
    }
    Ok(())
}

/// A `switchboard-bench agent` child process, seen from the parent.
pub struct Agent {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl Agent {
    /// Starts `bin agent` (`bin` being this benchmark binary); it is killed when dropped.
    pub fn spawn(bin: &Path) -> anyhow::Result<Agent> {
        let mut child = Command::new(bin)
            .arg("agent")
            .env("SWITCHBOARD_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} agent", bin.display()))?;
        let stdin = child.stdin.take().context("agent stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("agent stdout")?).lines();
        Ok(Agent {
            child,
            stdin,
            stdout,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    async fn send(&mut self, req: &AgentRequest) -> anyhow::Result<()> {
        let mut text = serde_json::to_string(req)?;
        text.push('\n');
        self.stdin.write_all(text.as_bytes()).await?;
        self.stdin.flush().await?;
        Ok(())
    }

    async fn recv(&mut self) -> anyhow::Result<AgentReply> {
        let line = tokio::time::timeout(AGENT_TIMEOUT, self.stdout.next_line())
            .await
            .context("an agent did not answer in time")??
            .context("an agent exited")?;
        match serde_json::from_str(&line).context("an agent's reply")? {
            AgentReply::Error { message } => bail!("agent: {message}"),
            r => Ok(r),
        }
    }
}

/// The subscribers of a scenario, wherever they are.
pub enum Subscribers {
    Local(Group),
    Agents(Vec<Agent>),
}

impl Subscribers {
    /// Opens `spec` here (`agents == 0`) or split evenly over `agents` child processes, each
    /// `bin agent` (`bin` being this benchmark binary).
    pub async fn open(
        bin: &Path,
        spec: &SubscriberSpec,
        agents: usize,
    ) -> anyhow::Result<(Subscribers, Opened)> {
        if agents == 0 {
            let (g, opened) = Group::open(spec).await?;
            return Ok((Subscribers::Local(g), opened));
        }
        let per = spec.count.div_ceil(agents);
        if per > MAX_SUBSCRIBERS_PER_PROCESS {
            bail!(
                "{} connections over {agents} agents is {per} each, more than one process may hold ({MAX_SUBSCRIBERS_PER_PROCESS})",
                spec.count
            );
        }
        let mut procs = Vec::with_capacity(agents);
        let end = spec.first + spec.count;
        for a in 0..agents {
            let first = (spec.first + a * per).min(end);
            let count = per.min(end - first);
            let mut agent = Agent::spawn(bin)?;
            agent
                .send(&AgentRequest::Open {
                    spec: spec.share(first, count),
                })
                .await?;
            procs.push(agent);
        }
        let mut opened = Opened::default();
        for agent in &mut procs {
            match agent.recv().await? {
                AgentReply::Opened { opened: o } => opened.merge(o),
                r => bail!("unexpected agent reply {r:?}"),
            }
        }
        Ok((Subscribers::Agents(procs), opened))
    }

    /// Events received so far, all connections.
    pub async fn received(&mut self) -> anyhow::Result<u64> {
        match self {
            Subscribers::Local(g) => Ok(g.received()),
            Subscribers::Agents(agents) => {
                for a in agents.iter_mut() {
                    a.send(&AgentRequest::Count).await?;
                }
                let mut total = 0;
                for a in agents.iter_mut() {
                    match a.recv().await? {
                        AgentReply::Count { received } => total += received,
                        r => bail!("unexpected agent reply {r:?}"),
                    }
                }
                Ok(total)
            }
        }
    }

    /// Waits until `expected` events have arrived or `timeout` passes; returns the count.
    pub async fn wait_for(&mut self, expected: u64, timeout: Duration) -> anyhow::Result<u64> {
        let deadline = Instant::now() + timeout;
        loop {
            let n = self.received().await?;
            if n >= expected || Instant::now() >= deadline {
                return Ok(n);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The agents' process ids (none for local subscribers).
    pub fn agent_pids(&self) -> Vec<u32> {
        match self {
            Subscribers::Local(_) => Vec::new(),
            Subscribers::Agents(a) => a.iter().filter_map(Agent::pid).collect(),
        }
    }

    /// Stops the receivers, closes the connections and sums what they saw; a connection with
    /// fewer than `expect` events counts as short.
    pub async fn finish(self, expect: u64) -> anyhow::Result<Tally> {
        match self {
            Subscribers::Local(g) => g.finish(expect).await,
            Subscribers::Agents(mut agents) => {
                for a in agents.iter_mut() {
                    a.send(&AgentRequest::Finish { expect }).await?;
                }
                let mut tally = Tally::default();
                for a in agents.iter_mut() {
                    match a.recv().await? {
                        AgentReply::Finished { tally: t } => tally.merge(&t)?,
                        r => bail!("unexpected agent reply {r:?}"),
                    }
                }
                Ok(tally)
            }
        }
    }
}

/// Agents needed for `connections` when the caller did not say (`None`): none if one process
/// can hold them, else as few as can.
pub fn agents_for(connections: usize, asked: Option<usize>) -> usize {
    asked.unwrap_or(if connections <= MAX_SUBSCRIBERS_PER_PROCESS {
        0
    } else {
        connections.div_ceil(MAX_SUBSCRIBERS_PER_PROCESS)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tallies_merge() {
        let mut a = Tally::default();
        let b = Tally {
            connections: 2,
            received: 10,
            min_per_connection: 4,
            max_per_connection: 6,
            ..Tally::default()
        };
        a.merge(&b).unwrap();
        a.merge(&Tally {
            connections: 1,
            received: 3,
            min_per_connection: 3,
            max_per_connection: 3,
            ..Tally::default()
        })
        .unwrap();
        a.merge(&Tally::default()).unwrap();
        assert_eq!(
            (
                a.connections,
                a.received,
                a.min_per_connection,
                a.max_per_connection
            ),
            (3, 13, 3, 6)
        );
    }

    #[test]
    fn a_tally_reaches_the_parent_with_its_latencies() {
        let mut latency_us = Histogram::default();
        for us in [120, 3_000, 45_000] {
            latency_us.record(us);
        }
        let reply = AgentReply::Finished {
            tally: Tally {
                connections: 1,
                received: 3,
                latency_us,
                ..Tally::default()
            },
        };
        let line = serde_json::to_string(&reply).unwrap();
        let AgentReply::Finished { tally } = serde_json::from_str(&line).unwrap() else {
            panic!("not a finished reply: {line}");
        };
        let p = tally.latency_us.percentiles();
        assert_eq!((tally.received, tally.latency_us.len()), (3, 3));
        // Above 2 048 µs, a bucket's highest value: within 0.1 %.
        assert!(p.p50.abs_diff(3_000) * 1000 <= 3_000, "p50 {}", p.p50);
        assert!(p.max.abs_diff(45_000) * 1000 <= 45_000, "max {}", p.max);
    }

    #[test]
    fn agents_only_when_needed() {
        assert_eq!(agents_for(10_000, None), 0);
        assert_eq!(agents_for(40_000, None), 3);
        assert_eq!(agents_for(10_000, Some(2)), 2);
    }
}
