//! The `resume` scenario: session resume after a node dies.
//!
//! Two gateway processes, A and B, with history on every `bench:*` topic. N clients connect to
//! A (spread over loopback sources), `hello`, subscribe to one of K topics and keep their
//! session id. A backend publishes `before` events per topic through the Redis Function
//! `sb_publish` (as any backend would); the clients receive them live and remember the last id
//! of their topic. Then A is killed with SIGKILL, the backend publishes `missed` events per
//! topic that nobody receives, and every client reconnects to B (at most `resume_concurrency`
//! at a time) with `hello {session, positions: {topic: last id}}`.
//!
//! Measured from the kill: when every client has its `resumed: true` reply and every missed
//! event; each client's resume latency (start of its reconnect to its `hello` reply); the
//! replayed events delivered per second over the resume window (first reconnect to last client
//! caught up); failed reconnect attempts; CPU of gateway B, Redis and this process over that
//! window. Every event id a client receives is checked against the ids the backend got back
//! from `sb_publish`: duplicates (an id not after the last one) and gaps (ids skipped, or never
//! arrived) are counted, and both must be 0.
//!
//! Then, separately, the raw replay rate: one client on B subscribes with `since: 0-0` to a
//! topic holding `replay_events` events and waits for all of them (a few rounds).

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use switchboard_client::{Client, ConnectOptions, Notification, Notifications};
use switchboard_harness::{GatewayProcess, RedisServer};
use switchboard_protocol::EventId;
use switchboard_protocol::methods::session::HelloParams;
use tokio::sync::{Notify, Semaphore, mpsc, watch};
use tokio::task::JoinSet;

use crate::fanout::{MAX_SUBSCRIBERS_PER_PROCESS, which};
use crate::procstat::{cores, cpu_seconds, sample_all};
use crate::stats::{Percentiles, percentiles, row};

/// Events per `sb_publish` pipeline.
const PUBLISH_BATCH: usize = 1000;
/// History kept per topic at least (gateway rule and `sb_publish` MAXLEN).
const MIN_HISTORY: usize = 100_000;
/// The replay topic; the resume topics are `bench:0` ... `bench:<K-1>`.
const REPLAY_TOPIC: &str = "bench:replay";

/// What to run.
#[derive(Debug, Clone)]
pub struct ResumeOptions {
    /// The `switchboard` binary that gateway processes are started from.
    pub switchboard_bin: PathBuf,
    pub clients: usize,
    pub topics: usize,
    /// Events per topic published (and received live) before the kill.
    pub before: usize,
    /// Events per topic published after the kill: every client must get them replayed.
    pub missed: usize,
    /// Size of the padding inside each event's data.
    pub payload_bytes: usize,
    /// Loopback source addresses the clients spread over (127.0.0.1, 127.0.0.2, ...).
    pub sources: usize,
    /// Connections opened at once while setting up (on A).
    pub connect_concurrency: usize,
    /// Reconnects in progress at once (on B), each until its `hello` reply.
    pub resume_concurrency: usize,
    /// Reconnect attempts per client before it gives up.
    pub attempts: usize,
    /// Pause after a failed reconnect attempt.
    pub retry_delay: Duration,
    /// One reconnect attempt (connect and `hello` reply) may take this long.
    pub attempt_timeout: Duration,
    /// Bound on each waiting phase: setup, live delivery, and the resume from the kill.
    pub phase_timeout: Duration,
    /// Events in the replay-rate topic (0: skip that measurement).
    pub replay_events: usize,
    /// Replay-rate measurements, each with a new client.
    pub replay_rounds: usize,
}

/// Deliveries checked against the published ids.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Checked {
    pub expected: u64,
    pub received: u64,
    /// Events received whose id was not after the client's last one.
    pub duplicates: u64,
    /// Events skipped: a later one arrived first.
    pub gaps: u64,
    /// Events that never arrived (at the end of the sequence, by the deadline).
    pub missing: u64,
}

impl Checked {
    fn add(&mut self, o: Checked) {
        self.expected += o.expected;
        self.received += o.received;
        self.duplicates += o.duplicates;
        self.gaps += o.gaps;
        self.missing += o.missing;
    }

    fn describe(&self) -> String {
        format!(
            "{} expected, {} received, {} duplicates, {} gaps, {} missing",
            self.expected, self.received, self.duplicates, self.gaps, self.missing
        )
    }
}

/// One replay-rate round.
#[derive(Debug, Clone, Serialize)]
pub struct ReplayRound {
    /// From sending `subscribe {since}` to the last event and the reply, in ms.
    pub ms: f64,
    pub events_per_s: f64,
    pub recovered: Option<bool>,
    pub events: Checked,
}

/// The replay-rate measurement.
#[derive(Debug, Clone, Serialize)]
pub struct ReplayReport {
    pub events: usize,
    pub rounds: Vec<ReplayRound>,
    pub median_events_per_s: f64,
}

/// What was measured.
#[derive(Debug, Clone, Serialize)]
pub struct ResumeReport {
    pub clients: usize,
    pub topics: usize,
    pub before_per_topic: usize,
    pub missed_per_topic: usize,
    pub payload_bytes: usize,
    pub resume_concurrency: usize,
    /// Events delivered live by A before the kill.
    pub live: Checked,
    /// Events delivered by B after the resume (the replay of what was missed).
    pub replayed: Checked,
    /// `hello` replies with `resumed: true`.
    pub resumed: u64,
    /// `hello` replies with `resumed: false` (a new session: the old one was lost).
    pub not_resumed: u64,
    /// Clients with no `hello` reply at all (every attempt failed, or the deadline passed).
    pub no_reply: u64,
    /// Restored subscriptions without `recovered: true`.
    pub not_recovered: u64,
    /// Clients without every missed event by the deadline.
    pub incomplete: u64,
    pub failed_attempts: u64,
    /// From the kill until the missed events were published (then the clients reconnect).
    pub kill_to_missed_published_ms: f64,
    /// From the kill until the last `hello` reply.
    pub kill_to_all_resumed_ms: f64,
    /// From the kill until the last client had every missed event.
    pub kill_to_all_caught_up_ms: f64,
    /// Per client, from the kill until it had its reply and every missed event.
    pub kill_to_caught_up_us: Percentiles,
    /// Per client, from the start of its (successful) reconnect to its `hello` reply.
    pub resume_latency_us: Percentiles,
    /// From the first reconnect to the last client caught up.
    pub resume_window_ms: f64,
    /// Replayed events delivered per second over the resume window.
    pub replayed_per_s: f64,
    /// CPU over the resume window, in cores.
    pub gateway_b_cores: f64,
    pub redis_cores: f64,
    pub load_generator_cores: f64,
    /// Gateway B CPU per resumed session, in microseconds.
    pub gateway_b_cpu_us_per_resume: f64,
    pub gateway_b_rss_bytes: u64,
    pub replay: Option<ReplayReport>,
}

/// What every client task shares.
struct Ctx {
    a_url: String,
    b_url: String,
    sources: usize,
    connect: Semaphore,
    resume: Semaphore,
    attempts: usize,
    retry_delay: Duration,
    attempt_timeout: Duration,
    /// Live events received, all clients.
    live_received: AtomicU64,
    clients: u64,
    /// Clients finished with the resume (caught up, or given up).
    done: AtomicU64,
    all_done: Notify,
    /// Set once the missed events are published: the last id of each topic and the deadline.
    go: watch::Receiver<Option<Go>>,
}

#[derive(Clone)]
struct Go {
    last: Arc<Vec<Option<EventId>>>,
    deadline: Instant,
}

/// What one client saw.
#[derive(Default)]
struct Outcome {
    topic: usize,
    live: Vec<EventId>,
    /// The last live id, which the client gave as its position.
    position: Option<EventId>,
    replayed: Vec<EventId>,
    failed_attempts: u64,
    resumed: Option<bool>,
    not_recovered: u64,
    /// Start of the first reconnect attempt.
    first_start: Option<Instant>,
    latency: Option<Duration>,
    replied_at: Option<Instant>,
    caught_up_at: Option<Instant>,
    /// The socket to B, kept open until the end.
    socket: Option<(Client, Notifications)>,
}

/// Runs the scenario.
pub async fn run(opts: ResumeOptions) -> anyhow::Result<ResumeReport> {
    if opts.clients == 0
        || opts.topics == 0
        || opts.sources == 0
        || opts.connect_concurrency == 0
        || opts.resume_concurrency == 0
        || opts.attempts == 0
    {
        bail!("clients, topics, sources, concurrencies and attempts must be at least 1");
    }
    if opts.missed == 0 {
        bail!("missed must be at least 1: the scenario measures their replay");
    }
    if opts.clients > MAX_SUBSCRIBERS_PER_PROCESS {
        bail!(
            "{} clients is more than one load-generator process may hold ({MAX_SUBSCRIBERS_PER_PROCESS})",
            opts.clients
        );
    }
    if opts.sources > 250 {
        bail!("at most 250 loopback source addresses");
    }
    which("redis-server")?;
    let redis = RedisServer::start().await;
    let history_len = MIN_HISTORY
        .max(opts.replay_events)
        .max(opts.before + opts.missed);
    let max_replay = opts.replay_events.max(opts.before + opts.missed).max(1);
    let rule = format!("bench:*={history_len}");
    let max_replay_s = max_replay.to_string();
    let extra = ["--history", &rule, "--max-replay", &max_replay_s];
    let mut a =
        GatewayProcess::start_with(&opts.switchboard_bin, &redis.url(), "bench-a", &extra).await;
    let b =
        GatewayProcess::start_with(&opts.switchboard_bin, &redis.url(), "bench-b", &extra).await;
    let mut conn = redis::Client::open(redis.url())?
        .get_multiplexed_async_connection()
        .await?;

    // 1. N clients on A, each subscribed to one topic.
    let (go_tx, go_rx) = watch::channel(None);
    let ctx = Arc::new(Ctx {
        a_url: a.ws_url(),
        b_url: b.ws_url(),
        sources: opts.sources,
        connect: Semaphore::new(opts.connect_concurrency),
        resume: Semaphore::new(opts.resume_concurrency),
        attempts: opts.attempts,
        retry_delay: opts.retry_delay,
        attempt_timeout: opts.attempt_timeout,
        live_received: AtomicU64::new(0),
        clients: opts.clients as u64,
        done: AtomicU64::new(0),
        all_done: Notify::new(),
        go: go_rx,
    });
    let (ready_tx, mut ready_rx) = mpsc::channel::<anyhow::Result<()>>(opts.clients);
    let mut tasks = JoinSet::new();
    for i in 0..opts.clients {
        let (ctx, ready) = (ctx.clone(), ready_tx.clone());
        tasks.spawn(Box::pin(client(i, i % opts.topics, ctx, ready)));
    }
    drop(ready_tx);
    let setup_deadline = Instant::now() + opts.phase_timeout;
    for _ in 0..opts.clients {
        match tokio::time::timeout_at(setup_deadline.into(), ready_rx.recv()).await {
            Ok(Some(Ok(()))) => {}
            Ok(Some(Err(e))) => return Err(e.context("setting up a client on node A")),
            Ok(None) => bail!("a client task ended during setup"),
            Err(_) => bail!(
                "the clients were not set up within {:?}",
                opts.phase_timeout
            ),
        }
    }

    // 2. Live events.
    let pad = "x".repeat(opts.payload_bytes);
    let mut ids: Vec<Vec<EventId>> = vec![Vec::new(); opts.topics];
    publish(&mut conn, &mut ids, 0, opts.before, history_len, &pad).await?;
    let expected_live = (opts.clients * opts.before) as u64;
    let live_deadline = Instant::now() + opts.phase_timeout;
    while ctx.live_received.load(Ordering::Relaxed) < expected_live
        && Instant::now() < live_deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // 3. Kill A, publish what the clients miss.
    let pids = vec![b.pid() as u32];
    let redis_pid: Vec<u32> = redis.pid().into_iter().collect();
    let killed = Instant::now();
    a.signal(nix::sys::signal::Signal::SIGKILL);
    publish(
        &mut conn,
        &mut ids,
        opts.before,
        opts.missed,
        history_len,
        &pad,
    )
    .await?;
    let published = Instant::now();

    // 4. Every client reconnects to B.
    let self_pid = [std::process::id()];
    let (b0, r0, self0) = (
        sample_all(&pids),
        sample_all(&redis_pid),
        sample_all(&self_pid),
    );
    let deadline = published + opts.phase_timeout;
    let _ = go_tx.send(Some(Go {
        last: Arc::new(ids.iter().map(|t| t.last().copied()).collect()),
        deadline,
    }));
    let all_done = ctx.all_done.notified();
    if ctx.done.load(Ordering::Relaxed) < opts.clients as u64 {
        let _ = tokio::time::timeout_at((deadline + Duration::from_secs(1)).into(), all_done).await;
    }
    let ended = Instant::now();
    let (b1, r1, self1) = (
        sample_all(&pids),
        sample_all(&redis_pid),
        sample_all(&self_pid),
    );

    let mut outcomes = Vec::with_capacity(opts.clients);
    let collect_deadline = Instant::now() + Duration::from_secs(5);
    while let Ok(Some(t)) =
        tokio::time::timeout_at(collect_deadline.into(), tasks.join_next()).await
    {
        outcomes.push(t?);
    }
    tasks.abort_all();
    let _ = a.wait().await;

    let mut report = summarize(&opts, &ids, &outcomes, killed, published, ended);
    let first_start = outcomes.iter().filter_map(|o| o.first_start).min();
    let last_caught_up = outcomes.iter().filter_map(|o| o.caught_up_at).max();
    let window_end = match last_caught_up {
        Some(t) if report.incomplete == 0 => t,
        _ => ended,
    };
    let window = window_end.duration_since(first_start.unwrap_or(published));
    report.resume_window_ms = ms(window);
    report.replayed_per_s = report.replayed.received as f64 / window.as_secs_f64().max(1e-9);
    let wall = ended.duration_since(published);
    report.gateway_b_cores = cores(&b0, &b1, wall);
    report.redis_cores = cores(&r0, &r1, wall);
    report.load_generator_cores = cores(&self0, &self1, wall);
    report.gateway_b_cpu_us_per_resume = cpu_seconds(&b0, &b1) * 1e6 / report.resumed.max(1) as f64;
    report.gateway_b_rss_bytes = b1.first().map_or(0, |s| s.rss);
    // The resumed sockets close before the replay measurement.
    drop(outcomes);

    // 5. The raw replay rate.
    if opts.replay_events > 0 && opts.replay_rounds > 0 {
        report.replay = Some(replay_rate(&mut conn, &b, &opts, history_len, &pad).await?);
    }
    Ok(report)
}

/// One client's life: set up on A, receive live, then resume on B.
async fn client(
    i: usize,
    topic: usize,
    ctx: Arc<Ctx>,
    ready: mpsc::Sender<anyhow::Result<()>>,
) -> Outcome {
    let mut out = Outcome {
        topic,
        ..Outcome::default()
    };
    let bind = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (i % ctx.sources) as u8));
    let copts = ConnectOptions {
        bind: Some(bind),
        ..ConnectOptions::default()
    };
    let name = topic_name(topic);
    // The timeout starts once this client's turn to connect has come.
    let Ok(permit) = ctx.connect.acquire().await else {
        return out;
    };
    let setup = async {
        let (client, notes) = Client::connect(&ctx.a_url, copts.clone()).await?;
        let hello = client.hello(HelloParams::default()).await?;
        client.subscribe(&name).await?;
        Ok::<_, anyhow::Error>((client, notes, hello.session))
    };
    let (client, mut notes, session) = match tokio::time::timeout(ctx.attempt_timeout, setup).await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            let _ = ready.send(Err(e)).await;
            return out;
        }
        Err(_) => {
            let _ = ready.send(Err(anyhow::anyhow!("timed out"))).await;
            return out;
        }
    };
    drop(permit);
    let _ = ready.send(Ok(())).await;
    drop(ready);

    // Live, until the socket dies with A (or the reconnects begin).
    let mut go = ctx.go.clone();
    loop {
        tokio::select! {
            n = notes.recv() => {
                let Some(n) = n else { break };
                if let Some(id) = event_id(&n) {
                    out.live.push(id);
                    ctx.live_received.fetch_add(1, Ordering::Relaxed);
                }
            }
            _ = go.wait_for(Option::is_some) => break,
        }
    }
    drop((client, notes));
    out.position = out.live.last().copied();
    let go = go
        .wait_for(Option::is_some)
        .await
        .ok()
        .and_then(|g| g.clone());
    let Some(go) = go else {
        finish(&ctx);
        return out;
    };
    let target = go.last[topic];

    // Reconnect to B and resume.
    let mut last = out.position;
    for attempt in 0..ctx.attempts {
        if Instant::now() >= go.deadline {
            break;
        }
        if attempt > 0 {
            tokio::time::sleep(ctx.retry_delay).await;
        }
        let Ok(permit) = ctx.resume.acquire().await else {
            break;
        };
        let start = Instant::now();
        out.first_start.get_or_insert(start);
        // No event yet: from the very beginning.
        let position = last.unwrap_or(EventId::ZERO).to_string();
        let params = HelloParams {
            session: Some(session.clone()),
            positions: Some([(name.clone(), position)].into_iter().collect()),
            ..HelloParams::default()
        };
        let connected = tokio::time::timeout(
            ctx.attempt_timeout,
            Client::connect(&ctx.b_url, copts.clone()),
        )
        .await;
        let Ok(Ok((client, mut notes))) = connected else {
            out.failed_attempts += 1;
            continue;
        };
        // The replay comes before the reply: read both at once.
        let attempt_end = tokio::time::Instant::from(start + ctx.attempt_timeout);
        let mut open = true;
        let mut hello = Box::pin(client.hello(params));
        let reply = loop {
            tokio::select! {
                r = &mut hello => break Some(r),
                n = notes.recv(), if open => {
                    let Some(n) = n else {
                        open = false;
                        continue;
                    };
                    if let Some(id) = event_id(&n) {
                        out.replayed.push(id);
                        last = last.max(Some(id));
                        if last >= target && out.caught_up_at.is_none() {
                            out.caught_up_at = Some(Instant::now());
                        }
                    }
                }
                _ = tokio::time::sleep_until(attempt_end) => break None,
            }
        };
        drop(hello);
        let Some(Ok(reply)) = reply else {
            out.failed_attempts += 1;
            out.caught_up_at = None;
            continue;
        };
        let now = Instant::now();
        out.replied_at = Some(now);
        out.latency = Some(now - start);
        out.resumed = Some(reply.resumed);
        out.not_recovered = reply
            .subscriptions
            .iter()
            .filter(|s| s.recovered != Some(true))
            .count() as u64;
        drop(permit);
        // Whatever is still on its way, until caught up or the deadline.
        while last < target && reply.resumed {
            let n = tokio::select! {
                n = notes.recv() => n,
                _ = tokio::time::sleep_until(go.deadline.into()) => None,
            };
            let Some(n) = n else { break };
            if let Some(id) = event_id(&n) {
                out.replayed.push(id);
                last = last.max(Some(id));
            }
        }
        // Caught up: the reply and every missed event, whichever came last.
        out.caught_up_at = if last >= target {
            Some(out.caught_up_at.map_or(Instant::now(), |t| t.max(now)))
        } else {
            None
        };
        out.socket = Some((client, notes));
        break;
    }
    finish(&ctx);
    out
}

/// One client is done with the resume.
fn finish(ctx: &Ctx) {
    let total = ctx.done.fetch_add(1, Ordering::Relaxed) + 1;
    if total == ctx.clients {
        ctx.all_done.notify_one();
    }
}

fn event_id(n: &Notification) -> Option<EventId> {
    #[derive(serde::Deserialize)]
    struct Ev<'a> {
        #[serde(borrow)]
        id: Option<&'a str>,
    }
    if n.method != "event" {
        return None;
    }
    let ev: Ev<'_> = serde_json::from_str(n.params.get()).ok()?;
    EventId::parse(ev.id?)
}

fn topic_name(k: usize) -> String {
    format!("bench:{k}")
}

fn history_key(topic: &str) -> String {
    format!("sb:h:{{{topic}}}")
}

/// Publishes `count` events on every topic through `sb_publish`, in rounds (one event per topic
/// per round), and appends their ids.
async fn publish(
    conn: &mut redis::aio::MultiplexedConnection,
    ids: &mut [Vec<EventId>],
    first: usize,
    count: usize,
    maxlen: usize,
    pad: &str,
) -> anyhow::Result<()> {
    let keys: Vec<String> = (0..ids.len())
        .map(|k| history_key(&topic_name(k)))
        .collect();
    let per_batch = (PUBLISH_BATCH / ids.len()).max(1);
    let mut n = first;
    while n < first + count {
        let upto = (n + per_batch).min(first + count);
        let mut pipe = redis::pipe();
        for s in n..upto {
            for (k, key) in keys.iter().enumerate() {
                let payload = format!(r#"{{"k":{k},"n":{s},"pad":"{pad}"}}"#);
                fcall(&mut pipe, key, &payload, maxlen);
            }
        }
        let got: Vec<String> = bounded(pipe.query_async(conn), "sb_publish").await?;
        for (j, id) in got.iter().enumerate() {
            let id = EventId::parse(id).with_context(|| format!("sb_publish gave {id:?}"))?;
            ids[j % keys.len()].push(id);
        }
        n = upto;
    }
    Ok(())
}

fn fcall(pipe: &mut redis::Pipeline, key: &str, payload: &str, maxlen: usize) {
    pipe.cmd("FCALL")
        .arg("sb_publish")
        .arg(1)
        .arg(key)
        .arg(payload)
        .arg(maxlen);
}

/// Checks what a client received against the topic's ids after `after`.
fn check(topic_ids: &[EventId], after: Option<EventId>, received: &[EventId]) -> Checked {
    let from = |id: Option<EventId>| match id {
        Some(id) => topic_ids.partition_point(|x| *x <= id),
        None => 0,
    };
    let start = from(after);
    let mut c = Checked {
        expected: (topic_ids.len() - start) as u64,
        received: received.len() as u64,
        ..Checked::default()
    };
    let mut last = after;
    for &id in received {
        if last.is_some_and(|l| id <= l) {
            c.duplicates += 1;
            continue;
        }
        // Ids between the last one and this one that never came.
        let skipped = topic_ids.partition_point(|x| *x < id) - from(last);
        c.gaps += skipped as u64;
        last = Some(id);
    }
    c.missing = (topic_ids.len() - from(last)) as u64;
    c
}

fn summarize(
    opts: &ResumeOptions,
    ids: &[Vec<EventId>],
    outcomes: &[Outcome],
    killed: Instant,
    published: Instant,
    ended: Instant,
) -> ResumeReport {
    let mut live = Checked::default();
    let mut replayed = Checked::default();
    let (mut resumed, mut not_resumed, mut no_reply, mut not_recovered) = (0, 0, 0, 0);
    let (mut incomplete, mut failed_attempts) = (0, 0);
    let mut latencies = Vec::new();
    let mut caught_up = Vec::new();
    for o in outcomes {
        let topic = &ids[o.topic];
        live.add(check(&topic[..opts.before], None, &o.live));
        replayed.add(check(topic, o.position, &o.replayed));
        match o.resumed {
            Some(true) => resumed += 1,
            Some(false) => not_resumed += 1,
            None => no_reply += 1,
        }
        not_recovered += o.not_recovered;
        failed_attempts += o.failed_attempts;
        if let Some(l) = o.latency {
            latencies.push(l.as_micros() as u64);
        }
        match o.caught_up_at {
            Some(t) => caught_up.push(t.duration_since(killed).as_micros() as u64),
            None => incomplete += 1,
        }
    }
    // Tasks that never reported (aborted at the deadline) count as neither resumed nor caught up.
    let missing_clients = (opts.clients - outcomes.len()) as u64;
    let last_reply = outcomes.iter().filter_map(|o| o.replied_at).max();
    let last_caught_up = outcomes.iter().filter_map(|o| o.caught_up_at).max();
    ResumeReport {
        clients: opts.clients,
        topics: opts.topics,
        before_per_topic: opts.before,
        missed_per_topic: opts.missed,
        payload_bytes: opts.payload_bytes,
        resume_concurrency: opts.resume_concurrency,
        live,
        replayed,
        resumed,
        not_resumed,
        no_reply: no_reply + missing_clients,
        not_recovered,
        incomplete: incomplete + missing_clients,
        failed_attempts,
        kill_to_missed_published_ms: ms(published - killed),
        kill_to_all_resumed_ms: ms(last_reply.unwrap_or(ended).duration_since(killed)),
        kill_to_all_caught_up_ms: ms(last_caught_up.unwrap_or(ended).duration_since(killed)),
        kill_to_caught_up_us: percentiles(&mut caught_up),
        resume_latency_us: percentiles(&mut latencies),
        resume_window_ms: 0.0,
        replayed_per_s: 0.0,
        gateway_b_cores: 0.0,
        redis_cores: 0.0,
        load_generator_cores: 0.0,
        gateway_b_cpu_us_per_resume: 0.0,
        gateway_b_rss_bytes: 0,
        replay: None,
    }
}

/// One client on B subscribes with `since: 0-0` to a topic holding `replay_events` events.
async fn replay_rate(
    conn: &mut redis::aio::MultiplexedConnection,
    b: &GatewayProcess,
    opts: &ResumeOptions,
    history_len: usize,
    pad: &str,
) -> anyhow::Result<ReplayReport> {
    let key = history_key(REPLAY_TOPIC);
    let mut ids = Vec::with_capacity(opts.replay_events);
    let mut n = 0;
    while n < opts.replay_events {
        let upto = (n + PUBLISH_BATCH).min(opts.replay_events);
        let mut pipe = redis::pipe();
        for s in n..upto {
            fcall(
                &mut pipe,
                &key,
                &format!(r#"{{"n":{s},"pad":"{pad}"}}"#),
                history_len,
            );
        }
        let got: Vec<String> = bounded(pipe.query_async(conn), "sb_publish").await?;
        for id in got {
            ids.push(EventId::parse(&id).with_context(|| format!("sb_publish gave {id:?}"))?);
        }
        n = upto;
    }
    let target = ids.last().copied();
    let mut rounds = Vec::new();
    for _ in 0..opts.replay_rounds {
        let copts = ConnectOptions {
            notification_queue: opts.replay_events.max(1024),
            ..ConnectOptions::default()
        };
        let setup = async {
            let (client, notes) = Client::connect(&b.ws_url(), copts).await?;
            client.hello(HelloParams::default()).await?;
            Ok::<_, switchboard_client::ClientError>((client, notes))
        };
        let (client, mut notes) = bounded(setup, "connecting the replay client").await?;
        let mut received = Vec::with_capacity(opts.replay_events);
        let start = Instant::now();
        let deadline = tokio::time::Instant::from(start + opts.phase_timeout);
        let sub = client.subscribe_since(REPLAY_TOPIC, Some("0-0"));
        tokio::pin!(sub);
        let mut reply = None;
        let mut last = None;
        while reply.is_none() || last < target {
            tokio::select! {
                r = &mut sub, if reply.is_none() => reply = Some(r.context("subscribe {since}")?),
                n = notes.recv() => {
                    let Some(n) = n else { break };
                    if let Some(id) = event_id(&n) {
                        received.push(id);
                        last = last.max(Some(id));
                    }
                }
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        let elapsed = start.elapsed();
        client.close().await;
        rounds.push(ReplayRound {
            ms: ms(elapsed),
            events_per_s: received.len() as f64 / elapsed.as_secs_f64(),
            recovered: reply.and_then(|r| r.recovered),
            events: check(&ids, None, &received),
        });
    }
    let mut rates: Vec<f64> = rounds.iter().map(|r| r.events_per_s).collect();
    rates.sort_by(f64::total_cmp);
    Ok(ReplayReport {
        events: opts.replay_events,
        median_events_per_s: rates[rates.len() / 2],
        rounds,
    })
}

/// Any Redis command or setup step taking longer than this fails the run.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

async fn bounded<T, E>(f: impl Future<Output = Result<T, E>>, what: &str) -> anyhow::Result<T>
where
    E: std::error::Error + Send + Sync + 'static,
{
    match tokio::time::timeout(STEP_TIMEOUT, f).await {
        Ok(r) => r.with_context(|| what.to_owned()),
        Err(_) => bail!("{what}: no answer within {STEP_TIMEOUT:?}"),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl ResumeReport {
    /// The report as a table for people.
    pub fn table(&self) -> String {
        let mut out = String::new();
        row(
            &mut out,
            "scenario",
            format!(
                "resume: 2 gateways, {} clients on A over {} history topic(s), {} events per topic live, \
                 kill -9 A, {} missed per topic, resume on B ({} at a time), {}-byte padding",
                self.clients,
                self.topics,
                self.before_per_topic,
                self.missed_per_topic,
                self.resume_concurrency,
                self.payload_bytes
            ),
        );
        row(&mut out, "live events (on A)", self.live.describe());
        row(
            &mut out,
            "sessions",
            format!(
                "{} resumed, {} not resumed, {} no reply, {} subscriptions not recovered, {} failed reconnect attempts",
                self.resumed,
                self.not_resumed,
                self.no_reply,
                self.not_recovered,
                self.failed_attempts
            ),
        );
        row(&mut out, "missed events (from B)", self.replayed.describe());
        row(
            &mut out,
            "clients not caught up",
            self.incomplete.to_string(),
        );
        row(
            &mut out,
            "from the kill",
            format!(
                "missed published {:.1} ms, all resumed {:.1} ms, all caught up {:.1} ms",
                self.kill_to_missed_published_ms,
                self.kill_to_all_resumed_ms,
                self.kill_to_all_caught_up_ms
            ),
        );
        row(
            &mut out,
            "kill to caught up",
            self.kill_to_caught_up_us.describe_ms(1),
        );
        row(
            &mut out,
            "resume latency",
            format!(
                "{} (reconnect start to hello reply)",
                self.resume_latency_us.describe_ms(2)
            ),
        );
        row(
            &mut out,
            "replayed per second",
            format!(
                "{:.0} (over the {:.1} ms resume window)",
                self.replayed_per_s, self.resume_window_ms
            ),
        );
        row(
            &mut out,
            "CPU during resume (cores)",
            format!(
                "gateway B {:.2}, redis {:.2}, load generator {:.2}; gateway B {:.0} µs per resume",
                self.gateway_b_cores,
                self.redis_cores,
                self.load_generator_cores,
                self.gateway_b_cpu_us_per_resume
            ),
        );
        row(
            &mut out,
            "gateway B RSS",
            format!("{:.1} MiB", self.gateway_b_rss_bytes as f64 / 1048576.0),
        );
        if let Some(r) = &self.replay {
            let rounds: Vec<String> = r.rounds.iter().map(|x| format!("{:.1} ms", x.ms)).collect();
            row(
                &mut out,
                "replay rate",
                format!(
                    "{:.0} events/s median: {} events from since 0-0 in {}",
                    r.median_events_per_s,
                    r.events,
                    rounds.join(", ")
                ),
            );
            let mut c = Checked::default();
            let mut recovered = 0;
            for x in &r.rounds {
                c.add(x.events);
                recovered += usize::from(x.recovered == Some(true));
            }
            row(
                &mut out,
                "replay events",
                format!(
                    "{} (all rounds); recovered: true in {recovered} of {}",
                    c.describe(),
                    r.rounds.len()
                ),
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(ms: u64) -> EventId {
        EventId { ms, seq: 0 }
    }

    #[test]
    fn check_counts_duplicates_gaps_and_missing() {
        let ids: Vec<EventId> = (1..=10).map(id).collect();
        let all: Vec<EventId> = (6..=10).map(id).collect();
        let c = check(&ids, Some(id(5)), &all);
        assert_eq!(
            (c.expected, c.received, c.duplicates, c.gaps, c.missing),
            (5, 5, 0, 0, 0)
        );
        let c = check(&ids, Some(id(5)), &[id(5), id(6), id(8), id(8), id(9)]);
        assert_eq!((c.duplicates, c.gaps, c.missing), (2, 1, 1));
        let c = check(&ids, None, &[]);
        assert_eq!((c.expected, c.missing), (10, 10));
    }
}
