//! The floor: the least a broadcast server can do, to measure Switchboard against.
//!
//! `switchboard-bench floor-server --listen ADDR` is a separate process (so its CPU is read from
//! `/proc` exactly as a gateway's is). It accepts WebSocket upgrades (`GET /ws?topic=NAME`,
//! handshake by hand, the subprotocol echoed), does no JSON and no Redis, and for each broadcast
//! writes the same pre-built frame to every socket of the topic: one `write` per socket per
//! frame, never batching. Sockets are spread over `shards` broadcast tasks (one per core by
//! default), each writing to its own sockets, so the floor may use every core, as the gateway's
//! fan-out workers do. A socket whose kernel buffer is full gets a queue (written when it is
//! writable, in order); one with [`FLOOR_QUEUE`] frames waiting is dropped, as the gateway drops
//! a slow consumer.
//!
//! What to broadcast comes from the load generator over a control connection on the same port:
//! it starts with [`CONTROL_MAGIC`], then carries length-prefixed messages (all integers
//! big-endian):
//!
//! - broadcast: `u32 len | 0x01 | u16 topic_len | topic | payload`, the payload being the
//!   WebSocket text message exactly as a gateway would send it (the publisher builds it with
//!   `switchboard_protocol::event::encode_event`, so it carries `seq` and `t` for timing);
//! - stats: `u32 1 | 0x02`, answered with three `u64`: sockets registered, frames written,
//!   sockets dropped (closed or slow).
//!
//! A socket is registered under its topic before the `101` is written to it, so once the client
//! has its `101`, every later broadcast reaches it.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpSocket, TcpStream};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use crate::rawws;

/// First bytes of a control connection.
pub const CONTROL_MAGIC: &[u8; 8] = b"SBFLOOR1";
const KIND_BROADCAST: u8 = 1;
const KIND_STATS: u8 = 2;
/// Frames waiting for one socket before the floor drops it (the gateway's default outbound
/// queue).
pub const FLOOR_QUEUE: usize = 1024;
/// Largest HTTP head accepted.
const MAX_HEAD: usize = 16 * 1024;
/// Largest control message.
const MAX_CONTROL: usize = 16 * 1024 * 1024;

/// How to run the floor server.
#[derive(Debug, Clone)]
pub struct FloorServerOptions {
    pub listen: SocketAddr,
    /// Broadcast tasks (0: one per core).
    pub shards: usize,
    /// Exit when stdin closes (the bench that started it is gone).
    pub exit_with_stdin: bool,
}

#[derive(Default)]
struct Stats {
    registered: AtomicU64,
    written: AtomicU64,
    dropped: AtomicU64,
}

struct SockState {
    pending: VecDeque<Bytes>,
    /// Bytes of the front frame already written.
    offset: usize,
    /// A flush task owns the writing until `pending` is empty.
    flushing: bool,
}

struct Sock {
    stream: TcpStream,
    state: Mutex<SockState>,
    closed: AtomicBool,
}

impl Sock {
    /// Writes `frame` (or queues it behind what is waiting); false when the socket is gone.
    fn send(self: &Arc<Self>, frame: &Bytes, stats: &Arc<Stats>) -> bool {
        if self.closed.load(Ordering::Relaxed) {
            return false;
        }
        let mut st = self.state.lock().expect("lock poisoned");
        if st.flushing {
            if st.pending.len() >= FLOOR_QUEUE {
                drop(st);
                self.drop_it(stats);
                return false;
            }
            st.pending.push_back(frame.clone());
            return true;
        }
        match self.stream.try_write(frame) {
            Ok(n) if n == frame.len() => true,
            Ok(n) => {
                st.pending.push_back(frame.clone());
                st.offset = n;
                st.flushing = true;
                drop(st);
                tokio::spawn(flush(self.clone(), stats.clone()));
                true
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                st.pending.push_back(frame.clone());
                st.offset = 0;
                st.flushing = true;
                drop(st);
                tokio::spawn(flush(self.clone(), stats.clone()));
                true
            }
            Err(_) => {
                drop(st);
                self.drop_it(stats);
                false
            }
        }
    }

    fn drop_it(&self, stats: &Stats) {
        if !self.closed.swap(true, Ordering::Relaxed) {
            stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Writes a socket's queue as it becomes writable, then hands writing back to the broadcaster.
async fn flush(sock: Arc<Sock>, stats: Arc<Stats>) {
    loop {
        if sock.stream.writable().await.is_err() {
            sock.drop_it(&stats);
            return;
        }
        let mut st = sock.state.lock().expect("lock poisoned");
        loop {
            let Some(front) = st.pending.front().cloned() else {
                st.flushing = false;
                return;
            };
            match sock.stream.try_write(&front[st.offset..]) {
                Ok(n) => {
                    st.offset += n;
                    if st.offset == front.len() {
                        st.pending.pop_front();
                        st.offset = 0;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    drop(st);
                    sock.drop_it(&stats);
                    return;
                }
            }
        }
    }
}

#[derive(Default)]
struct Shard {
    topics: Mutex<HashMap<String, Vec<Arc<Sock>>>>,
}

impl Shard {
    fn broadcast(&self, topic: &str, frame: &Bytes, stats: &Arc<Stats>) -> u64 {
        let mut topics = self.topics.lock().expect("lock poisoned");
        let Some(socks) = topics.get_mut(topic) else {
            return 0;
        };
        let mut written = 0;
        let mut gone = false;
        for s in socks.iter() {
            if s.send(frame, stats) {
                written += 1;
            } else {
                gone = true;
            }
        }
        if gone {
            socks.retain(|s| !s.closed.load(Ordering::Relaxed));
        }
        written
    }
}

struct Floor {
    shards: Vec<Arc<Shard>>,
    queues: Vec<mpsc::UnboundedSender<(Arc<str>, Bytes)>>,
    next: AtomicUsize,
    stats: Arc<Stats>,
}

/// Runs the floor server until the process is killed.
pub async fn serve(opts: FloorServerOptions) -> anyhow::Result<()> {
    let shards = if opts.shards == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        opts.shards
    };
    let socket = if opts.listen.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(opts.listen)?;
    let listener = socket.listen(4096)?;
    if opts.exit_with_stdin {
        tokio::spawn(async {
            let mut sink = [0u8; 64];
            let mut stdin = tokio::io::stdin();
            while matches!(stdin.read(&mut sink).await, Ok(n) if n > 0) {}
            std::process::exit(0);
        });
    }
    let stats = Arc::new(Stats::default());
    let mut floor = Floor {
        shards: Vec::new(),
        queues: Vec::new(),
        next: AtomicUsize::new(0),
        stats: stats.clone(),
    };
    for _ in 0..shards {
        let shard = Arc::new(Shard::default());
        let (tx, mut rx) = mpsc::unbounded_channel::<(Arc<str>, Bytes)>();
        let s = shard.clone();
        let st = stats.clone();
        tokio::spawn(async move {
            while let Some((topic, frame)) = rx.recv().await {
                let n = s.broadcast(&topic, &frame, &st);
                st.written.fetch_add(n, Ordering::Relaxed);
            }
        });
        floor.shards.push(shard);
        floor.queues.push(tx);
    }
    let floor = Arc::new(floor);
    loop {
        let (stream, _) = listener.accept().await?;
        let floor = floor.clone();
        tokio::spawn(async move {
            if let Err(e) = accept(floor, stream).await {
                tracing::debug!(error = %e, "floor connection ended");
            }
        });
    }
}

async fn accept(floor: Arc<Floor>, mut stream: TcpStream) -> anyhow::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = Vec::with_capacity(1024);
    let end = loop {
        if buf.len() >= CONTROL_MAGIC.len() && buf.starts_with(CONTROL_MAGIC) {
            return control(floor, stream, buf.split_off(CONTROL_MAGIC.len())).await;
        }
        if let Some(end) = rawws::head_end(&buf) {
            break end;
        }
        if buf.len() > MAX_HEAD {
            bail!("HTTP head too long");
        }
        let mut chunk = [0u8; 2048];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..end]).context("HTTP head is not UTF-8")?;
    let path = head.split_whitespace().nth(1).unwrap_or("/");
    let topic = path
        .split_once('?')
        .and_then(|(_, q)| q.split('&').find_map(|kv| kv.strip_prefix("topic=")))
        .unwrap_or("")
        .to_owned();
    let key = rawws::header(head, "sec-websocket-key").context("no Sec-WebSocket-Key")?;
    let mut resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n",
        rawws::accept_key(key)
    );
    if let Some(p) = rawws::header(head, "sec-websocket-protocol")
        .and_then(|v| v.split(',').next())
        .map(str::trim)
    {
        resp.push_str(&format!("Sec-WebSocket-Protocol: {p}\r\n"));
    }
    resp.push_str("\r\n");

    // Registered before the 101 is written: the 101 is the first frame of the queue.
    let sock = Arc::new(Sock {
        stream,
        state: Mutex::new(SockState {
            pending: VecDeque::from([Bytes::from(resp)]),
            offset: 0,
            flushing: true,
        }),
        closed: AtomicBool::new(false),
    });
    let shard = &floor.shards[floor.next.fetch_add(1, Ordering::Relaxed) % floor.shards.len()];
    shard
        .topics
        .lock()
        .expect("lock poisoned")
        .entry(topic)
        .or_default()
        .push(sock.clone());
    floor.stats.registered.fetch_add(1, Ordering::Relaxed);
    tokio::spawn(flush(sock.clone(), floor.stats.clone()));

    // Whatever the client sends is read and ignored, until it closes.
    let mut chunk = [0u8; 512];
    loop {
        if sock.closed.load(Ordering::Relaxed) || sock.stream.readable().await.is_err() {
            break;
        }
        match sock.stream.try_read(&mut chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => break,
        }
    }
    sock.drop_it(&floor.stats);
    Ok(())
}

async fn control(floor: Arc<Floor>, stream: TcpStream, leftover: Vec<u8>) -> anyhow::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::with_capacity(256 * 1024, std::io::Cursor::new(leftover).chain(read));
    loop {
        let len = match read.read_u32().await {
            Ok(n) => n as usize,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        if len == 0 || len > MAX_CONTROL {
            bail!("bad control message length {len}");
        }
        let mut msg = vec![0u8; len];
        read.read_exact(&mut msg).await?;
        match msg[0] {
            KIND_BROADCAST => {
                let tlen = usize::from(u16::from_be_bytes(
                    msg.get(1..3).context("short")?.try_into()?,
                ));
                let topic = std::str::from_utf8(msg.get(3..3 + tlen).context("short")?)?;
                let payload = &msg[3 + tlen..];
                let frame = Bytes::from(rawws::server_frame(rawws::OP_TEXT, payload));
                let topic: Arc<str> = Arc::from(topic);
                for q in &floor.queues {
                    let _ = q.send((topic.clone(), frame.clone()));
                }
            }
            KIND_STATS => {
                let s = &floor.stats;
                let mut out = [0u8; 24];
                out[..8].copy_from_slice(&s.registered.load(Ordering::Relaxed).to_be_bytes());
                out[8..16].copy_from_slice(&s.written.load(Ordering::Relaxed).to_be_bytes());
                out[16..].copy_from_slice(&s.dropped.load(Ordering::Relaxed).to_be_bytes());
                write.write_all(&out).await?;
            }
            k => bail!("unknown control message kind {k}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The load generator's side

/// What the floor reports over its control connection.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct FloorStats {
    pub registered: u64,
    pub written: u64,
    pub dropped: u64,
}

/// A `switchboard-bench floor-server` child process.
pub struct FloorProcess {
    pub addr: SocketAddr,
    child: Child,
}

impl FloorProcess {
    /// Starts the floor (`bin floor-server`, `bin` being this benchmark binary) on a free
    /// loopback port and waits until it answers.
    pub async fn start(bin: &Path, shards: usize) -> anyhow::Result<FloorProcess> {
        let addr: SocketAddr = format!("127.0.0.1:{}", switchboard_harness::free_port()).parse()?;
        let child = Command::new(bin)
            .args(["floor-server", "--listen", &addr.to_string()])
            .args(["--shards", &shards.to_string(), "--exit-with-stdin"])
            .env("SWITCHBOARD_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} floor-server", bin.display()))?;
        let floor = FloorProcess { addr, child };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut c) = FloorControl::connect(addr).await
                && c.stats().await.is_ok()
            {
                return Ok(floor);
            }
            if Instant::now() > deadline {
                bail!("the floor server did not come up on {addr}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }
}

/// A control connection to the floor: broadcasts are buffered until [`flush`](Self::flush).
pub struct FloorControl {
    w: BufWriter<TcpStream>,
}

impl FloorControl {
    pub async fn connect(addr: SocketAddr) -> anyhow::Result<FloorControl> {
        let mut s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        s.write_all(CONTROL_MAGIC).await?;
        Ok(FloorControl {
            w: BufWriter::with_capacity(256 * 1024, s),
        })
    }

    /// Queues one broadcast of `payload` (a whole WebSocket text message) to `topic`.
    pub async fn broadcast(&mut self, topic: &str, payload: &[u8]) -> anyhow::Result<()> {
        let len = 1 + 2 + topic.len() + payload.len();
        self.w.write_u32(u32::try_from(len)?).await?;
        self.w.write_u8(KIND_BROADCAST).await?;
        self.w.write_u16(u16::try_from(topic.len())?).await?;
        self.w.write_all(topic.as_bytes()).await?;
        self.w.write_all(payload).await?;
        Ok(())
    }

    pub async fn flush(&mut self) -> anyhow::Result<()> {
        self.w.flush().await?;
        Ok(())
    }

    /// Flushes, then asks for the floor's counters.
    pub async fn stats(&mut self) -> anyhow::Result<FloorStats> {
        self.w.write_u32(1).await?;
        self.w.write_u8(KIND_STATS).await?;
        self.w.flush().await?;
        let s = self.w.get_mut();
        Ok(FloorStats {
            registered: s.read_u64().await?,
            written: s.read_u64().await?,
            dropped: s.read_u64().await?,
        })
    }
}
