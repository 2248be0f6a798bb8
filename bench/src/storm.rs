//! The `storm` scenario: a reconnect storm on one topic.
//!
//! A topic holds `events` history events of `event_bytes` each (written through the Redis
//! Function `sb_publish`, as any backend would). N clients connect to G gateways (spread over
//! loopback sources) and `hello`; then all of them send `subscribe {topic, since: "0-0"}` at
//! the same instant and read their replay: what a crowd of clients reconnecting to one topic
//! does. Meanwhile a separate connection PINGs Redis every 5 ms (on a thread of its own), and a
//! well-behaved client on gateway 1 receives an event on a quiet topic every 50 ms.
//!
//! Measured: the time until every client has every event and its reply; errors (a reply
//! without `recovered: true`, an event out of order or missing); Redis CPU per replaying
//! client, and Redis's own time in commands (`INFO commandstats`) per client; PING round trips
//! during the storm; the well-behaved client's delivery latency; history pages each gateway
//! read (`switchboard_replay_pages_read_total`, absent on gateways that predate it).
//!
//! The clients are raw WebSocket connections that only look for the event ids in what they
//! read, so this process spends little per byte.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use switchboard_harness::{GatewayProcess, RedisServer, http_get};
use switchboard_protocol::EventId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Barrier, Semaphore};
use tokio::task::JoinSet;

use crate::fanout::{MAX_SUBSCRIBERS_PER_PROCESS, which};
use crate::procstat::{cpu_seconds, sample_all};
use crate::rawws;
use crate::stats::{Percentiles, now_us, percentiles, row};

const TOPIC: &str = "storm:1";
const QUIET_TOPIC: &str = "quiet:1";
/// Events per `sb_publish` pipeline while filling the history.
const FILL_BATCH: usize = 500;

/// What to run.
#[derive(Debug, Clone)]
pub struct StormOptions {
    pub switchboard_bin: PathBuf,
    pub clients: usize,
    pub gateways: usize,
    pub events: usize,
    pub event_bytes: usize,
    pub sources: usize,
    pub connect_concurrency: usize,
    /// Bound on the storm, from the subscribes until everyone caught up.
    pub timeout: Duration,
}

/// What was measured.
#[derive(Debug, Clone, Serialize)]
pub struct StormReport {
    pub clients: usize,
    pub gateways: usize,
    pub events: usize,
    pub event_bytes: usize,
    /// Clients with every event, in order, and `recovered: true`.
    pub caught_up: usize,
    /// Clients whose subscribe failed or who were closed, with the first few reasons.
    pub failed: usize,
    pub failures: Vec<String>,
    /// From the subscribes until the last client caught up (or the timeout).
    pub all_caught_up_ms: f64,
    /// Per client, from its subscribe to its reply (after its replay).
    pub client_caught_up: Percentiles,
    pub redis_cpu_us_per_client: f64,
    /// Redis's time inside commands (`INFO commandstats`), per client.
    pub redis_command_us_per_client: f64,
    pub redis_ping: Percentiles,
    pub quiet_client_latency: Percentiles,
    pub quiet_client_events: usize,
    pub gateway_cores: f64,
    /// History pages read by each gateway (`None`: the gateway does not count them).
    pub pages_read: Vec<Option<f64>>,
}

fn upgrade_request(addr: SocketAddr) -> Vec<u8> {
    format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: switchboard.v1\r\n\r\n"
    )
    .into_bytes()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A raw client: connected, upgraded, `hello` answered.
struct Raw {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    async fn connect(addr: SocketAddr, ip: IpAddr) -> anyhow::Result<Raw> {
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(ip, 0))?;
        let mut stream = socket.connect(addr).await.context("connect")?;
        stream.set_nodelay(true)?;
        stream.write_all(&upgrade_request(addr)).await?;
        let mut raw = Raw {
            stream,
            buf: Vec::with_capacity(64 * 1024),
        };
        let end = loop {
            if let Some(end) = rawws::head_end(&raw.buf) {
                break end;
            }
            raw.read_more().await?;
        };
        if !raw.buf.starts_with(b"HTTP/1.1 101") {
            bail!(
                "upgrade refused: {}",
                String::from_utf8_lossy(&raw.buf[..end])
            );
        }
        raw.buf.drain(..end);
        raw.send(r#"{"jsonrpc":"2.0","id":1,"method":"hello","params":{}}"#)
            .await?;
        raw.until_reply(1, |_| Ok(())).await?;
        Ok(raw)
    }

    async fn read_more(&mut self) -> anyhow::Result<()> {
        let at = self.buf.len();
        self.buf.resize(at + 64 * 1024, 0);
        let n = self.stream.read(&mut self.buf[at..]).await?;
        self.buf.truncate(at + n);
        if n == 0 {
            bail!("connection closed");
        }
        Ok(())
    }

    async fn send(&mut self, text: &str) -> anyhow::Result<()> {
        let frame = rawws::client_frame(rawws::OP_TEXT, text.as_bytes(), [1, 2, 3, 4]);
        Ok(self.stream.write_all(&frame).await?)
    }

    /// Reads frames until the reply to request `id` (returned), handing each other text frame
    /// to `each`.
    async fn until_reply(
        &mut self,
        id: u64,
        mut each: impl FnMut(&[u8]) -> anyhow::Result<()>,
    ) -> anyhow::Result<Vec<u8>> {
        let reply_mark = format!(r#""id":{id},"#);
        loop {
            let mut used = 0;
            while let Some(f) = rawws::parse_frame(&self.buf[used..]) {
                let payload = &self.buf[used + f.payload.start..used + f.payload.end];
                if f.opcode == rawws::OP_CLOSE {
                    let code = payload.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]]));
                    bail!(
                        "closed with {code:?} {}",
                        String::from_utf8_lossy(payload.get(2..).unwrap_or_default())
                    );
                }
                if f.opcode == rawws::OP_TEXT {
                    if payload.starts_with(br#"{"jsonrpc":"2.0","id":"#)
                        && find(payload, reply_mark.as_bytes()).is_some()
                    {
                        let reply = payload.to_vec();
                        self.buf.drain(..used + f.len);
                        return Ok(reply);
                    }
                    each(payload)?;
                }
                used += f.len;
            }
            self.buf.drain(..used);
            self.read_more().await?;
        }
    }
}

/// The event id in an `event` notification's text, if it is one.
fn event_id(payload: &[u8]) -> Option<EventId> {
    let at = find(payload, br#""id":""#)? + 6;
    let len = payload[at..].iter().position(|b| *b == b'"')?;
    EventId::parse(std::str::from_utf8(&payload[at..at + len]).ok()?)
}

/// PINGs Redis every 5 ms on a thread and a connection of its own until `stop`.
fn sample_redis(url: String, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Vec<u64>> {
    std::thread::spawn(move || {
        let mut rtts = Vec::new();
        let Ok(mut conn) = redis::Client::open(url).and_then(|c| c.get_connection()) else {
            return rtts;
        };
        while !stop.load(Ordering::Relaxed) {
            let t = Instant::now();
            if redis::cmd("PING").query::<String>(&mut conn).is_ok() {
                rtts.push(t.elapsed().as_micros() as u64);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        rtts
    })
}

/// Redis's total time inside commands so far, in microseconds (`INFO commandstats`).
async fn redis_command_us(conn: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<u64> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await?;
    Ok(info
        .lines()
        .filter_map(|l| l.split("usec=").nth(1))
        .filter_map(|rest| rest.split(',').next()?.parse::<u64>().ok())
        .sum())
}

/// The well-behaved client and its publisher, on a thread and a runtime of their own: an
/// event every 50 ms on a quiet topic of gateway 1, stamped when sent; the latencies (µs).
fn quiet_client(
    addr: SocketAddr,
    redis_url: String,
    stop: Arc<AtomicBool>,
    ready: std::sync::mpsc::Sender<()>,
    bound: Duration,
) -> std::thread::JoinHandle<anyhow::Result<Vec<u64>>> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let mut raw = Raw::connect(addr, IpAddr::V4(Ipv4Addr::LOCALHOST)).await?;
            raw.send(&format!(
                r#"{{"jsonrpc":"2.0","id":2,"method":"subscribe","params":{{"topic":"{QUIET_TOPIC}"}}}}"#
            ))
            .await?;
            raw.until_reply(2, |_| Ok(())).await?;
            let _ = ready.send(());
            let mut conn = redis::Client::open(redis_url)?
                .get_multiplexed_async_connection()
                .await?;
            let publisher = tokio::spawn(async move {
                loop {
                    let last = stop.load(Ordering::Relaxed);
                    let _: redis::RedisResult<i64> = redis::cmd("PUBLISH")
                        .arg(format!("sb:t:{{{QUIET_TOPIC}}}"))
                        .arg(format!(r#"{{"at":{},"last":{last}}}"#, now_us()))
                        .query_async(&mut conn)
                        .await;
                    if last {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            });
            let mut latencies = Vec::new();
            // The quiet client sends no request with id 3: it reads until the `last` event.
            let read = raw.until_reply(3, |p| {
                if let Some(at) = find(p, br#""at":"#) {
                    let digits: String = p[at + 5..]
                        .iter()
                        .take_while(|b| b.is_ascii_digit())
                        .map(|b| *b as char)
                        .collect();
                    if let Ok(at) = digits.parse::<u64>() {
                        latencies.push(now_us().saturating_sub(at));
                    }
                    if find(p, br#""last":true"#).is_some() {
                        bail!("done");
                    }
                }
                Ok(())
            });
            match tokio::time::timeout(bound, read).await {
                Ok(Err(e)) if e.to_string() == "done" => {}
                Ok(Err(e)) => return Err(e),
                Ok(Ok(_)) => bail!("the quiet client got a reply it did not ask for"),
                Err(_) => bail!("the quiet client did not get its last event within {bound:?}"),
            }
            publisher.await?;
            Ok(latencies)
        })
    })
}

/// Runs the scenario.
pub async fn run(opts: StormOptions) -> anyhow::Result<StormReport> {
    if opts.clients == 0 || opts.gateways == 0 || opts.sources == 0 || opts.events == 0 {
        bail!("clients, gateways, sources and events must be at least 1");
    }
    if opts.clients > MAX_SUBSCRIBERS_PER_PROCESS {
        bail!("{} clients is more than one process may hold", opts.clients);
    }
    if opts.sources > 250 {
        bail!("at most 250 loopback source addresses");
    }
    which("redis-server")?;
    let redis = RedisServer::start().await;
    let rule = format!("storm:*={}", opts.events);
    let max_replay = opts.events.to_string();
    // Only flags older gateways know too, so the same run measures them (`--switchboard`):
    // no rate limits, and readiness at its default pace.
    let extra = [
        "--history",
        &rule,
        "--max-replay",
        &max_replay,
        "--rate-requests",
        "0",
        "--rate-connections",
        "0",
        "--readiness-interval",
        "1s",
    ];
    let mut gateways = Vec::new();
    for g in 0..opts.gateways {
        let name = format!("storm-{g}");
        gateways.push(
            GatewayProcess::start_bare(&opts.switchboard_bin, &redis.url(), &name, &extra).await,
        );
    }
    let mut conn = redis::Client::open(redis.url())?
        .get_multiplexed_async_connection()
        .await?;

    // The history.
    let pad = "x".repeat(opts.event_bytes.saturating_sub(20));
    let mut written = 0;
    while written < opts.events {
        let mut pipe = redis::pipe();
        for n in written..(written + FILL_BATCH).min(opts.events) {
            pipe.cmd("FCALL")
                .arg("sb_publish")
                .arg(1)
                .arg(format!("sb:h:{{{TOPIC}}}"))
                .arg(format!(r#"{{"n":{n},"pad":"{pad}"}}"#))
                .arg(opts.events);
        }
        let ids: Vec<String> = pipe.query_async(&mut conn).await?;
        written += ids.len();
    }

    // The clients, connected and said hello.
    let connecting = Arc::new(Semaphore::new(opts.connect_concurrency.max(1)));
    let start = Arc::new(Barrier::new(opts.clients + 1));
    let mut tasks = JoinSet::new();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<anyhow::Result<()>>(opts.clients);
    for i in 0..opts.clients {
        let addr = gateways[i % opts.gateways].addr;
        let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (i % opts.sources) as u8));
        let (connecting, start, ready, events) = (
            connecting.clone(),
            start.clone(),
            ready_tx.clone(),
            opts.events,
        );
        tasks.spawn(async move {
            let permit = connecting.acquire().await;
            let raw = Raw::connect(addr, ip).await;
            drop(permit);
            let mut raw = match raw {
                Ok(raw) => {
                    let _ = ready.send(Ok(())).await;
                    raw
                }
                Err(e) => {
                    let _ = ready.send(Err(e)).await;
                    return Err("not connected".to_owned());
                }
            };
            start.wait().await;
            let t0 = Instant::now();
            let subscribe = format!(
                r#"{{"jsonrpc":"2.0","id":2,"method":"subscribe","params":{{"topic":"{TOPIC}","since":"0-0"}}}}"#
            );
            let outcome: anyhow::Result<Duration> = async {
                raw.send(&subscribe).await?;
                let mut got = 0usize;
                let mut last = EventId::ZERO;
                let reply = raw
                    .until_reply(2, |p| {
                        if let Some(id) = event_id(p) {
                            if id <= last {
                                bail!("event {id} out of order after {last}");
                            }
                            last = id;
                            got += 1;
                        }
                        Ok(())
                    })
                    .await?;
                if find(&reply, br#""recovered":true"#).is_none() {
                    bail!("subscribe answered {}", String::from_utf8_lossy(&reply));
                }
                if got != events {
                    bail!("{got} of {events} events");
                }
                Ok(t0.elapsed())
            }
            .await;
            outcome.map_err(|e| e.to_string())
        });
    }
    drop(ready_tx);
    for _ in 0..opts.clients {
        match ready_rx.recv().await {
            Some(Ok(())) => {}
            Some(Err(e)) => return Err(e.context("connecting a client")),
            None => bail!("a client task ended while connecting"),
        }
    }

    let stop = Arc::new(AtomicBool::new(false));
    let (quiet_ready_tx, quiet_ready) = std::sync::mpsc::channel();
    let quiet = quiet_client(
        gateways[0].addr,
        redis.url(),
        stop.clone(),
        quiet_ready_tx,
        opts.timeout + Duration::from_secs(30),
    );
    quiet_ready
        .recv_timeout(Duration::from_secs(10))
        .context("the quiet client did not subscribe")?;
    let sampler = sample_redis(redis.url(), stop.clone());
    let mut pids: Vec<u32> = vec![redis.pid().context("redis pid")?];
    pids.extend(gateways.iter().map(|g| g.pid() as u32));
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The storm.
    let before = sample_all(&pids);
    let command_us_before = redis_command_us(&mut conn).await.ok();
    let t0 = Instant::now();
    start.wait().await;
    let mut latencies = Vec::new();
    let mut failures = Vec::new();
    let deadline = tokio::time::Instant::now() + opts.timeout;
    while !tasks.is_empty() {
        match tokio::time::timeout_at(deadline, tasks.join_next()).await {
            Ok(Some(Ok(Ok(took)))) => latencies.push(took.as_micros() as u64),
            Ok(Some(Ok(Err(e)))) => failures.push(e),
            Ok(Some(Err(e))) => failures.push(e.to_string()),
            Ok(None) => break,
            Err(_) => {
                failures.push(format!("{} clients not caught up in time", tasks.len()));
                tasks.abort_all();
                break;
            }
        }
    }
    let all_caught_up = t0.elapsed();
    let after = sample_all(&pids);
    // Redis may still be busy with a storm's backlog: wait for it rather than give up.
    let mut command_us_after = None;
    for _ in 0..30 {
        match redis_command_us(&mut conn).await {
            Ok(us) => {
                command_us_after = Some(us);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let mut rtts = sampler
        .join()
        .map_err(|_| anyhow::anyhow!("sampler panicked"))?;
    let mut quiet_latencies = quiet
        .join()
        .map_err(|_| anyhow::anyhow!("quiet client panicked"))??;

    let clients = opts.clients as f64;
    let redis_cpu = cpu_seconds(&before[..1], &after[..1]);
    let gateway_cpu = cpu_seconds(&before[1..], &after[1..]);
    let mut pages_read = Vec::new();
    for g in &gateways {
        // Absent from gateways that predate it.
        let pages = http_get(g.admin_addr, "/metrics")
            .await
            .ok()
            .and_then(|(_, body)| {
                body.lines()
                    .find_map(|l| l.strip_prefix("switchboard_replay_pages_read_total "))
                    .and_then(|v| v.trim().parse::<f64>().ok())
            });
        pages_read.push(pages);
    }
    let failed = failures.len();
    failures.sort();
    failures.dedup();
    failures.truncate(5);
    Ok(StormReport {
        clients: opts.clients,
        gateways: opts.gateways,
        events: opts.events,
        event_bytes: opts.event_bytes,
        caught_up: latencies.len(),
        failed,
        failures,
        all_caught_up_ms: all_caught_up.as_secs_f64() * 1000.0,
        client_caught_up: percentiles(&mut latencies),
        redis_cpu_us_per_client: redis_cpu * 1e6 / clients,
        redis_command_us_per_client: match (command_us_before, command_us_after) {
            (Some(before), Some(after)) => after.saturating_sub(before) as f64 / clients,
            _ => f64::NAN,
        },
        redis_ping: percentiles(&mut rtts),
        quiet_client_events: quiet_latencies.len(),
        quiet_client_latency: percentiles(&mut quiet_latencies),
        gateway_cores: gateway_cpu / all_caught_up.as_secs_f64(),
        pages_read,
    })
}

impl StormReport {
    /// The report as a table for people.
    pub fn table(&self) -> String {
        let mut out = String::new();
        row(
            &mut out,
            "storm",
            format!(
                "{} clients on {} gateways, subscribe since 0-0 to {} events of {} bytes",
                self.clients, self.gateways, self.events, self.event_bytes
            ),
        );
        row(
            &mut out,
            "caught up",
            format!(
                "{} of {} in {:.0} ms ({} failed{})",
                self.caught_up,
                self.clients,
                self.all_caught_up_ms,
                self.failed,
                if self.failures.is_empty() {
                    String::new()
                } else {
                    format!(": {}", self.failures.join("; "))
                }
            ),
        );
        row(&mut out, "per client", self.client_caught_up.describe_ms(0));
        row(
            &mut out,
            "Redis per client",
            format!(
                "{:.0} µs CPU, {:.0} µs in commands",
                self.redis_cpu_us_per_client, self.redis_command_us_per_client
            ),
        );
        row(&mut out, "Redis PING", self.redis_ping.describe_ms(2));
        row(
            &mut out,
            "quiet client",
            format!(
                "{} events, {}",
                self.quiet_client_events,
                self.quiet_client_latency.describe_ms(1)
            ),
        );
        row(
            &mut out,
            "gateways",
            format!("{:.2} cores over the storm", self.gateway_cores),
        );
        row(
            &mut out,
            "pages read",
            self.pages_read
                .iter()
                .map(|p| p.map_or("n/a".to_owned(), |p| format!("{p:.0}")))
                .collect::<Vec<_>>()
                .join(", "),
        );
        out
    }
}
