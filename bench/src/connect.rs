//! The `connect` scenario: how many connections per second a gateway takes through the
//! WebSocket upgrade and a `hello` whose JWT it verifies.
//!
//! G gateways run with `--jwt-secret` (or, with `--alg rs256|es256|eddsa`, `--jwt-public-key`
//! of a key pair kept for benchmarks only, as an identity provider's tokens would be verified);
//! tokens for a set of subjects are minted beforehand with `switchboard_core::auth`. C connectors (each tied to one gateway, round robin) loop for
//! the warm-up and then the measured time: connect (from a rotating loopback source address),
//! upgrade, send `hello {token}`, wait for its reply, then reset the connection (`SO_LINGER` 0,
//! so neither end keeps a TIME_WAIT port). The client is written by hand (`rawws.rs`), so the
//! load generator spends as little CPU as it can. Counted: hellos completed inside the measured
//! window, per gateway; the latency of each from connect to upgrade and to the `hello` reply;
//! each gateway's CPU over the window divided by its hellos (this includes accepting, the
//! upgrade, the token check, the session stored in Redis by `hello`, and the disconnect), and
//! Redis's.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use switchboard_core::auth;
use switchboard_harness::{GatewayProcess, RedisServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::fanout::{load_warnings, which};
use crate::procstat::{cores_each, cpu_seconds, sample_all};
use crate::rawws;
use crate::stats::{Histogram, Percentiles, row};

/// The aim this scenario is compared against, per gateway process.
pub const TARGET_HELLOS_PER_S: f64 = 5_000.0;
const SECRET: &str = "switchboard-bench-connect-secret";

/// How the bench's tokens are signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenAlg {
    Hs256,
    Rs256,
    Es256,
    EdDsa,
}

impl TokenAlg {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "hs256" => TokenAlg::Hs256,
            "rs256" => TokenAlg::Rs256,
            "es256" => TokenAlg::Es256,
            "eddsa" => TokenAlg::EdDsa,
            _ => return None,
        })
    }

    /// The key pair (private, public PEM) of an asymmetric algorithm: the test fixtures, which
    /// are public and must never sign anything real.
    fn key_pair(self) -> Option<(&'static [u8], &'static [u8])> {
        Some(match self {
            TokenAlg::Hs256 => return None,
            TokenAlg::Rs256 => (
                include_bytes!("../../core/tests/fixtures/keys/rsa1.key"),
                include_bytes!("../../core/tests/fixtures/keys/rsa1.pub"),
            ),
            TokenAlg::Es256 => (
                include_bytes!("../../core/tests/fixtures/keys/ec256.key"),
                include_bytes!("../../core/tests/fixtures/keys/ec256.pub"),
            ),
            TokenAlg::EdDsa => (
                include_bytes!("../../core/tests/fixtures/keys/ed25519.key"),
                include_bytes!("../../core/tests/fixtures/keys/ed25519.pub"),
            ),
        })
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct ConnectBenchOptions {
    /// The `switchboard` binary that gateway processes are started from.
    pub switchboard_bin: PathBuf,
    pub gateways: usize,
    /// Connections being opened at once (all gateways).
    pub concurrency: usize,
    pub duration: Duration,
    /// Run this long before measuring.
    pub warmup: Duration,
    pub sources: usize,
    /// Distinct token subjects (tokens are minted before the run).
    pub subjects: usize,
    /// One attempt (connect to `hello` reply) may take this long.
    pub attempt_timeout: Duration,
    /// How the tokens are signed.
    pub alg: TokenAlg,
}

/// One gateway's share.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectGateway {
    pub pid: u32,
    pub hellos: u64,
    pub hellos_per_s: f64,
    pub cores: f64,
    pub cpu_us_per_hello: f64,
    pub rss_bytes: u64,
}

/// What was measured.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectReport {
    pub gateways: usize,
    pub concurrency: usize,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub sources: usize,
    pub subjects: usize,
    pub alg: TokenAlg,
    pub hellos: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub hellos_per_s: f64,
    pub per_gateway: Vec<ConnectGateway>,
    /// From the start of connecting to the `101`, and to the `hello` reply.
    pub upgrade_latency_us: Percentiles,
    pub hello_latency_us: Percentiles,
    pub redis_cores: f64,
    pub redis_cpu_us_per_hello: f64,
    pub load_generator_cores: f64,
    pub target_hellos_per_s_per_gateway: f64,
    pub warnings: Vec<String>,
}

struct Shared {
    measure_from: Instant,
    measure_to: Instant,
    per_gateway: Vec<AtomicU64>,
    errors: AtomicU64,
    first_error: std::sync::Mutex<Option<String>>,
}

/// A file removed when the run ends.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Runs the scenario.
pub async fn run(opts: ConnectBenchOptions) -> anyhow::Result<ConnectReport> {
    if opts.gateways == 0 || opts.concurrency == 0 || opts.sources == 0 || opts.subjects == 0 {
        bail!("gateways, concurrency, sources and subjects must be at least 1");
    }
    if opts.sources > 250 {
        bail!("at most 250 loopback source addresses");
    }
    which("redis-server")?;
    let redis = RedisServer::start().await;
    // The key the gateways verify with, and the one tokens are signed with.
    let (key_flags, signer, _public_file) = match opts.alg.key_pair() {
        None => (
            vec!["--jwt-secret".to_owned(), SECRET.to_owned()],
            auth::SigningKey::secret(auth::Algorithm::HS256, SECRET.as_bytes())?,
            None,
        ),
        Some((private, public)) => {
            let file = std::env::temp_dir().join(format!(
                "switchboard-bench-{}-{:?}.pub",
                std::process::id(),
                opts.alg
            ));
            std::fs::write(&file, public).context("writing the bench's public key")?;
            let flags = vec!["--jwt-public-key".to_owned(), file.display().to_string()];
            (
                flags,
                auth::SigningKey::from_pem(private, None)?,
                Some(RemoveOnDrop(file)),
            )
        }
    };
    let key_flags: Vec<&str> = key_flags.iter().map(String::as_str).collect();
    let mut gateways = Vec::new();
    for i in 0..opts.gateways {
        gateways.push(
            GatewayProcess::start_with(
                &opts.switchboard_bin,
                &redis.url(),
                &format!("connect-{i}"),
                &key_flags,
            )
            .await,
        );
    }
    let exp = switchboard_core::clock::now_secs() + 3600;
    let hellos: Vec<Arc<Vec<u8>>> = (0..opts.subjects)
        .map(|i| {
            let claims = auth::Claims {
                exp: Some(exp),
                ..auth::Claims::subject(&format!("bench-{i}"))
            };
            let token = auth::mint_with(&signer, &claims)?;
            let text = format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"hello","params":{{"token":"{token}"}}}}"#
            );
            Ok(Arc::new(rawws::client_frame(
                rawws::OP_TEXT,
                text.as_bytes(),
                [0x5a, 0x13, 0xc7, 0x2e],
            )))
        })
        .collect::<anyhow::Result<_>>()?;

    let start = Instant::now();
    let shared = Arc::new(Shared {
        measure_from: start + opts.warmup,
        measure_to: start + opts.warmup + opts.duration,
        per_gateway: (0..opts.gateways).map(|_| AtomicU64::new(0)).collect(),
        errors: AtomicU64::new(0),
        first_error: std::sync::Mutex::new(None),
    });
    let mut tasks = Vec::new();
    for slot in 0..opts.concurrency {
        let g = slot % opts.gateways;
        let addr = gateways[g].addr;
        let request = Arc::new(upgrade_request(addr));
        let shared = shared.clone();
        let hellos = hellos.clone();
        let (sources, timeout, slots) = (opts.sources, opts.attempt_timeout, opts.concurrency);
        tasks.push(tokio::spawn(async move {
            let mut upgrade = Histogram::default();
            let mut hello = Histogram::default();
            let mut n = slot;
            while Instant::now() < shared.measure_to {
                let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (n % sources) as u8));
                let frame = &hellos[n % hellos.len()];
                n += slots;
                match tokio::time::timeout(timeout, attempt(addr, ip, &request, frame)).await {
                    Ok(Ok((up, total))) => {
                        let now = Instant::now();
                        if now >= shared.measure_from && now <= shared.measure_to {
                            shared.per_gateway[g].fetch_add(1, Ordering::Relaxed);
                            upgrade.record(up.as_micros() as u64);
                            hello.record(total.as_micros() as u64);
                        }
                    }
                    r => {
                        let e = match r {
                            Ok(Err(e)) => format!("{e:#}"),
                            _ => format!("no hello reply within {timeout:?}"),
                        };
                        if Instant::now() >= shared.measure_from {
                            shared.errors.fetch_add(1, Ordering::Relaxed);
                            shared
                                .first_error
                                .lock()
                                .expect("lock poisoned")
                                .get_or_insert(e);
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            (upgrade, hello)
        }));
    }

    let gw_pids: Vec<u32> = gateways.iter().map(|g| g.pid() as u32).collect();
    let redis_pids: Vec<u32> = redis.pid().into_iter().collect();
    let self_pid = [std::process::id()];
    tokio::time::sleep_until(shared.measure_from.into()).await;
    let (gw0, r0, s0) = (
        sample_all(&gw_pids),
        sample_all(&redis_pids),
        sample_all(&self_pid),
    );
    tokio::time::sleep_until(shared.measure_to.into()).await;
    let (gw1, r1, s1) = (
        sample_all(&gw_pids),
        sample_all(&redis_pids),
        sample_all(&self_pid),
    );
    let window = shared.measure_to - shared.measure_from;
    let mut upgrade = Histogram::default();
    let mut hello = Histogram::default();
    for t in tasks {
        let (u, h) = t.await?;
        upgrade.merge(&u)?;
        hello.merge(&h)?;
    }

    let secs = window.as_secs_f64();
    let gw_cores = cores_each(&gw0, &gw1, window);
    let per_gateway: Vec<ConnectGateway> = (0..opts.gateways)
        .map(|g| {
            let n = shared.per_gateway[g].load(Ordering::Relaxed);
            let cpu = gw_cores[g] * secs;
            ConnectGateway {
                pid: gw_pids[g],
                hellos: n,
                hellos_per_s: n as f64 / secs,
                cores: gw_cores[g],
                cpu_us_per_hello: if n > 0 { cpu / n as f64 * 1e6 } else { 0.0 },
                rss_bytes: gw1[g].rss,
            }
        })
        .collect();
    let total: u64 = per_gateway.iter().map(|g| g.hellos).sum();
    let redis_cpu = cpu_seconds(&r0, &r1);
    let lg_cores = cores_each(&s0, &s1, window)[0];
    let all = gw_cores.iter().sum::<f64>() + redis_cpu / secs + lg_cores;
    let mut warnings = load_warnings(&[("this process".to_owned(), lg_cores)], all);
    let errors = shared.errors.load(Ordering::Relaxed);
    if errors > 0 {
        warnings.push(format!("{errors} attempts failed"));
    }
    let first_error = shared.first_error.lock().expect("lock poisoned").clone();
    Ok(ConnectReport {
        gateways: opts.gateways,
        concurrency: opts.concurrency,
        duration_s: secs,
        warmup_s: opts.warmup.as_secs_f64(),
        sources: opts.sources,
        subjects: opts.subjects,
        alg: opts.alg,
        hellos: total,
        errors,
        first_error,
        hellos_per_s: total as f64 / secs,
        per_gateway,
        upgrade_latency_us: upgrade.percentiles(),
        hello_latency_us: hello.percentiles(),
        redis_cores: redis_cpu / secs,
        redis_cpu_us_per_hello: if total > 0 {
            redis_cpu / total as f64 * 1e6
        } else {
            0.0
        },
        load_generator_cores: lg_cores,
        target_hellos_per_s_per_gateway: TARGET_HELLOS_PER_S,
        warnings,
    })
}

fn upgrade_request(addr: SocketAddr) -> Vec<u8> {
    format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: switchboard.v1\r\n\r\n"
    )
    .into_bytes()
}

/// One connection: connect, upgrade, `hello`, reset. Returns the time to the `101` and to the
/// `hello` reply.
async fn attempt(
    addr: SocketAddr,
    ip: IpAddr,
    request: &[u8],
    hello: &[u8],
) -> anyhow::Result<(Duration, Duration)> {
    let t0 = Instant::now();
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(ip, 0))?;
    let mut stream = socket.connect(addr).await.context("connect")?;
    stream.set_nodelay(true)?;
    // Reset on close: no TIME_WAIT left behind on either end.
    stream.set_zero_linger()?;
    stream.write_all(request).await?;
    let mut buf = Vec::with_capacity(1024);
    let end = loop {
        if let Some(end) = rawws::head_end(&buf) {
            break end;
        }
        read_more(&mut stream, &mut buf).await?;
    };
    if !buf.starts_with(b"HTTP/1.1 101") {
        let line = String::from_utf8_lossy(&buf[..end]);
        bail!(
            "upgrade refused: {}",
            line.lines().next().unwrap_or_default()
        );
    }
    let upgraded = t0.elapsed();
    buf.drain(..end);
    stream.write_all(hello).await?;
    loop {
        while let Some(f) = rawws::parse_frame(&buf) {
            let payload = &buf[f.payload.clone()];
            if f.opcode == rawws::OP_CLOSE {
                let code = payload.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]]));
                bail!(
                    "closed with {code:?} {}",
                    String::from_utf8_lossy(payload.get(2..).unwrap_or_default())
                );
            }
            if f.opcode == rawws::OP_TEXT && contains(payload, br#""id":1"#) {
                if contains(payload, br#""result""#) {
                    return Ok((upgraded, t0.elapsed()));
                }
                bail!("hello refused: {}", String::from_utf8_lossy(payload));
            }
            buf.drain(..f.len);
        }
        read_more(&mut stream, &mut buf).await?;
    }
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> anyhow::Result<()> {
    let mut chunk = [0u8; 4096];
    let n = stream.read(&mut chunk).await?;
    if n == 0 {
        bail!("connection closed");
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(())
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

impl ConnectReport {
    /// The report as a table for people.
    pub fn table(&self) -> String {
        let mut out = String::new();
        row(
            &mut out,
            "scenario",
            format!(
                "connect: {} gateway(s), {:?} tokens, {} connecting at once, {:.0} s measured after {:.1} s warm-up, {} source address(es), tokens of {} subject(s)",
                self.gateways,
                self.alg,
                self.concurrency,
                self.duration_s,
                self.warmup_s,
                self.sources,
                self.subjects
            ),
        );
        row(
            &mut out,
            "hellos",
            format!(
                "{} completed, {} failed{}",
                self.hellos,
                self.errors,
                self.first_error
                    .as_deref()
                    .map(|e| format!(" (first: {e})"))
                    .unwrap_or_default()
            ),
        );
        row(
            &mut out,
            "hellos per second",
            format!("{:.0} (all gateways)", self.hellos_per_s),
        );
        for (i, g) in self.per_gateway.iter().enumerate() {
            row(
                &mut out,
                &format!("gateway {i}"),
                format!(
                    "{:.0} hellos/s ({}target > {:.0}), {:.2} cores, {:.1} µs CPU per hello, RSS {:.1} MiB",
                    g.hellos_per_s,
                    if g.hellos_per_s > self.target_hellos_per_s_per_gateway {
                        ""
                    } else {
                        "below the "
                    },
                    self.target_hellos_per_s_per_gateway,
                    g.cores,
                    g.cpu_us_per_hello,
                    g.rss_bytes as f64 / 1048576.0
                ),
            );
        }
        row(
            &mut out,
            "connect to 101",
            self.upgrade_latency_us.describe_ms(2),
        );
        row(
            &mut out,
            "connect to hello reply",
            self.hello_latency_us.describe_ms(2),
        );
        row(
            &mut out,
            "redis CPU",
            format!(
                "{:.2} cores, {:.1} µs per hello",
                self.redis_cores, self.redis_cpu_us_per_hello
            ),
        );
        row(
            &mut out,
            "load generator CPU",
            format!("{:.2} cores", self.load_generator_cores),
        );
        for w in &self.warnings {
            row(&mut out, "WARNING", w.clone());
        }
        out
    }
}
