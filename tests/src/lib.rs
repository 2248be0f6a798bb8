//! The harness for Switchboard's integration tests and benchmarks: real parts only.
//!
//! - [`RedisServer`]: a `redis-server` child on a free loopback port, killed on drop; it can
//!   be killed and started again on the same port (outage tests).
//! - [`GatewayProcess`]: the real `switchboard gateway` binary as a child process.
//! - [`InProcessGateway`]: `switchboard_gateway::run` on an ephemeral port inside the test, for
//!   the protocol tests that run against both backends.
//! - [`WsClient`]: a raw WebSocket peer (tokio-tungstenite, an independent implementation) for
//!   speaking bad protocol on purpose and reading close codes.
//! - [`http_get`]: a minimal HTTP/1.1 GET for `/readyz` and `/metrics`.
//! - [`sse::HttpStream`]: a request to `/mcp` whose answer is read as it comes (SSE events one
//!   at a time), so a test can break a stream mid-call.
//! - [`script::Script`]: a client scenario in another language (Node, a browser, Python) run as
//!   a child process that reports JSON lines, so the test can kill the node it is on.
//! - [`redis_extra`]: `redis-server` as production runs it: TLS, ACL users, a primary with a
//!   replica and a Sentinel.
//! - [`cluster::RedisCluster`]: a local Redis Cluster (`redis-cli --cluster create`), with a
//!   primary's `kill -9` and a slot migration done the real way.
//! - [`RedisTarget`]: where the processes a test starts find Redis (`--redis URL` or
//!   `--redis-cluster SEEDS`), and a test-side connection to it ([`TestConn`]).
//! - [`tls::TlsProxy`]: a TLS-terminating proxy (a CA and a certificate made by the test) in
//!   front of a gateway, for `wss://`.
//!
//! Waiting is always for a condition with a deadline ([`eventually`]), never a bare sleep. The
//! sleeps that remain are not waits for state, each a named duration saying why it is that
//! long: showing that something does *not* happen, which only a bounded wait can (a read with a
//! timeout), and pacing a producer on purpose; tests on paused time advance its clock with
//! `sleep`.

pub mod cluster;
pub mod redis_extra;
pub mod script;
pub mod sse;
pub mod tls;

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use switchboard_core::backend::{Backend, JobQueue};
use switchboard_gateway::GatewayConfig;
use switchboard_protocol::methods::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// Which backend a test runs against.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    Memory,
    /// One `redis-server`.
    Redis,
    /// A Redis Cluster of three primaries without replicas ([`CLUSTER_PRIMARIES`]).
    Cluster,
}

/// How many primaries the cluster of [`Kind::Cluster`] has: the fewest Redis Cluster takes,
/// enough to spread a test's topics over several shards. No replicas: these cases do not fail
/// over (tests/tests/cluster.rs does), and the suites run on two cores.
pub const CLUSTER_PRIMARIES: usize = 3;

/// Runs each listed case (`async fn case(kind: Kind)`) on both single-node backends, as
/// `mod <case> { memory, redis }`: cases about what a Redis Cluster does not change (the
/// protocol's framing, limits, one server's restart).
#[macro_export]
macro_rules! both_backends {
    ($($case:ident),* $(,)?) => {$(
        mod $case {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn memory() {
                super::$case($crate::Kind::Memory).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis() {
                super::$case($crate::Kind::Redis).await
            }
        }
    )*};
}

/// Runs each listed case (`async fn case(kind: Kind)`) on every backend, a Redis Cluster
/// included, as `mod <case> { memory, redis, cluster }`: the cases about topics, history,
/// sessions and tool calls, whose keys and channels a cluster spreads over its shards.
#[macro_export]
macro_rules! every_backend {
    ($($case:ident),* $(,)?) => {$(
        mod $case {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn memory() {
                super::$case($crate::Kind::Memory).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis() {
                super::$case($crate::Kind::Redis).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn cluster() {
                super::$case($crate::Kind::Cluster).await
            }
        }
    )*};
}

/// How long any awaited condition may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(15);

/// A free TCP port on 127.0.0.1 (bound and released; the caller binds it next).
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("no free port")
        .port()
}

/// Polls `check` until it returns `Some`, or panics after [`DEADLINE`] naming `what`.
///
/// `check` is a closure returning a future (`|| async { ... }`) or an async closure
/// (`async || { ... }`), which may borrow the test's state mutably (a client to ask, a process
/// to restart).
pub async fn eventually<T>(what: &str, check: impl AsyncFnMut() -> Option<T>) -> T {
    eventually_within(what, DEADLINE, check).await
}

/// [`eventually`] with a deadline of `limit` instead of [`DEADLINE`], for a condition that is
/// known to take longer (several steps, each of which may take up to a deadline).
pub async fn eventually_within<T>(
    what: &str,
    limit: Duration,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> T {
    let start = tokio::time::Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if start.elapsed() > limit {
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Redis

/// A real `redis-server` on a free port.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    /// With persistence: the directory of its append-only file (removed on drop).
    dir: Option<PathBuf>,
}

impl RedisServer {
    /// A server without persistence: a restart forgets everything.
    pub async fn start() -> RedisServer {
        Self::start_with(false).await
    }

    /// A server with an append-only file synced on every write: a restart (even after
    /// SIGKILL) keeps every key and the loaded functions, as a production Redis would.
    pub async fn start_persistent() -> RedisServer {
        Self::start_with(true).await
    }

    async fn start_with(persistent: bool) -> RedisServer {
        for _ in 0..5 {
            let port = free_port();
            let dir = persistent.then(|| {
                let d = std::env::temp_dir()
                    .join(format!("switchboard-redis-{}-{port}", std::process::id()));
                std::fs::create_dir_all(&d).expect("temp dir");
                d
            });
            let mut server = RedisServer {
                port,
                child: None,
                dir,
            };
            if server.spawn().await {
                return server;
            }
        }
        panic!("could not start redis-server (is it installed? scripts/test installs it)");
    }

    async fn spawn(&mut self) -> bool {
        let persistence: Vec<String> = match &self.dir {
            Some(d) => vec![
                "--appendonly".into(),
                "yes".into(),
                "--appendfsync".into(),
                "always".into(),
                "--dir".into(),
                d.display().to_string(),
            ],
            None => vec!["--appendonly".into(), "no".into()],
        };
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--maxmemory-policy",
                "noeviction",
            ])
            .args(&persistence)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server not found: run scripts/test, which installs it");
        self.child = Some(child);
        let start = tokio::time::Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if self.ping().await {
                // Ours, not another test's server that won the race for the port.
                return self.server_pid().await == self.pid();
            }
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .expect("connect to test redis")
    }

    async fn ping(&self) -> bool {
        let Ok(client) = redis::Client::open(self.url()) else {
            return false;
        };
        let Ok(Ok(mut conn)) = tokio::time::timeout(
            Duration::from_millis(500),
            client.get_multiplexed_async_connection(),
        )
        .await
        else {
            return false;
        };
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .is_ok()
    }

    async fn server_pid(&self) -> Option<u32> {
        let mut conn = self.connection().await;
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut conn)
            .await
            .ok()?;
        info.lines()
            .find_map(|l| l.strip_prefix("process_id:"))
            .and_then(|p| p.trim().parse().ok())
    }

    /// Kills the server (SIGKILL): an outage.
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }

    /// Starts the server again on the same port.
    pub async fn restart(&mut self) {
        self.kill().await;
        assert!(
            self.spawn().await,
            "redis-server did not come back on {}",
            self.port
        );
    }

    /// `PUBSUB NUMSUB` for a topic's live channel (default prefix).
    pub async fn numsub(&self, topic: &str) -> i64 {
        let mut conn = self.connection().await;
        let channel = format!("sb:t:{{{topic}}}");
        let (_, n): (String, i64) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(&channel)
            .query_async::<Vec<(String, i64)>>(&mut conn)
            .await
            .unwrap()
            .into_iter()
            .next()
            .unwrap();
        n
    }

    /// This server as a [`RedisTarget`].
    pub fn target(&self) -> RedisTarget {
        RedisTarget::from(self)
    }

    /// See [`RedisTarget::session_fields`].
    pub async fn session_fields(&self, id: &str) -> std::collections::HashMap<String, String> {
        self.target().session_fields(id).await
    }

    /// See [`RedisTarget::wait_for_owed_reply`].
    pub async fn wait_for_owed_reply(&self, id: &str) {
        self.target().wait_for_owed_reply(id).await
    }

    /// See [`RedisTarget::wait_for_session_gone`].
    pub async fn wait_for_session_gone(&self, id: &str) {
        self.target().wait_for_session_gone(id).await
    }

    /// See [`RedisTarget::history_len`].
    pub async fn history_len(&self, topic: &str) -> u64 {
        self.target().history_len(topic).await
    }

    /// See [`RedisTarget::history_publish`].
    pub async fn history_publish(&self, topic: &str, event: &str) -> String {
        self.target().history_publish(topic, event).await
    }

    /// See [`RedisTarget::publish_history_paced`].
    pub fn publish_history_paced(&self, topic: &str, count: usize, every: Duration) -> Paced {
        self.target().publish_history_paced(topic, count, every)
    }

    /// `PUBLISH` on a topic's live channel, as any backend would.
    pub async fn publish(&self, topic: &str, payload: &str) -> i64 {
        let mut conn = self.connection().await;
        redis::cmd("PUBLISH")
            .arg(format!("sb:t:{{{topic}}}"))
            .arg(payload)
            .query_async(&mut conn)
            .await
            .unwrap()
    }
}

/// A backend publishing history events at a steady pace
/// ([`RedisTarget::publish_history_paced`]).
pub struct Paced {
    ids: tokio::sync::watch::Receiver<Vec<String>>,
    task: tokio::task::JoinHandle<()>,
}

impl Paced {
    /// Waits until at least `count` events are published (within [`DEADLINE`]).
    pub async fn published(&mut self, count: usize) {
        tokio::time::timeout(DEADLINE, self.ids.wait_for(|v| v.len() >= count))
            .await
            .unwrap_or_else(|_| panic!("{count} events not published in time"))
            .expect("the publisher stopped");
    }

    /// Waits for the last event; the ids of all, in order.
    pub async fn finish(self) -> Vec<String> {
        self.task.await.expect("the publisher failed");
        self.ids.borrow().clone()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.start_kill();
        }
        if let Some(d) = &self.dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Where Redis is

/// Where the processes a test starts find Redis: a URL for `--redis` (one server, or what
/// [`redis_extra`] starts), or a Redis Cluster's seed nodes for `--redis-cluster`. `From` a
/// URL string, a [`RedisServer`] or a [`cluster::RedisCluster`].
#[derive(Clone, Debug)]
pub enum RedisTarget {
    Url(String),
    /// Comma-joined `redis://host:port` seeds.
    Cluster(String),
}

impl RedisTarget {
    /// The two command-line arguments naming it: `--redis URL` or `--redis-cluster SEEDS`.
    pub fn flags(&self) -> [&str; 2] {
        match self {
            RedisTarget::Url(u) => ["--redis", u],
            RedisTarget::Cluster(s) => ["--redis-cluster", s],
        }
    }

    /// A test-side connection (a plain one to a URL, a cluster connection to seeds).
    pub async fn connection(&self) -> TestConn {
        match self {
            RedisTarget::Url(u) => TestConn::Single(
                redis::Client::open(u.as_str())
                    .expect("redis url")
                    .get_multiplexed_async_connection()
                    .await
                    .expect("connect to test redis"),
            ),
            RedisTarget::Cluster(seeds) => TestConn::Cluster(
                redis::cluster::ClusterClientBuilder::new(seeds.split(','))
                    .use_protocol(redis::ProtocolVersion::RESP3)
                    .build()
                    .expect("cluster seeds")
                    .get_async_connection()
                    .await
                    .expect("connect to the test cluster"),
            ),
        }
    }

    /// Every field of a stored session (`HGETALL sb:s:{<id>}`): empty once it has expired
    /// (or never was).
    pub async fn session_fields(&self, id: &str) -> std::collections::HashMap<String, String> {
        redis::cmd("HGETALL")
            .arg(format!("sb:s:{{{id}}}"))
            .query_async(&mut self.connection().await)
            .await
            .unwrap()
    }

    /// Waits until the session `id` has stored a reply it is owed (an `r:<request id>` field:
    /// a call in flight), as the gateway does once it has submitted the call; a resume anywhere
    /// can then answer it.
    pub async fn wait_for_owed_reply(&self, id: &str) {
        eventually(&format!("session {id} to store an owed reply"), || async {
            let fields = self.session_fields(id).await;
            fields.keys().any(|f| f.starts_with("r:")).then_some(())
        })
        .await
    }

    /// Waits until the session `id` is gone from Redis (expired).
    pub async fn wait_for_session_gone(&self, id: &str) {
        eventually(&format!("session {id} to expire"), || async {
            self.session_fields(id).await.is_empty().then_some(())
        })
        .await
    }

    /// How many events a topic's history holds (`XLEN sb:h:{<topic>}`; 0 before the first).
    pub async fn history_len(&self, topic: &str) -> u64 {
        redis::cmd("XLEN")
            .arg(format!("sb:h:{{{topic}}}"))
            .query_async(&mut self.connection().await)
            .await
            .unwrap()
    }

    /// `FCALL sb_publish` on `topic`'s history, as a backend publishes with history: the id.
    pub async fn history_publish(&self, topic: &str, event: &str) -> String {
        redis::cmd("FCALL")
            .arg("sb_publish")
            .arg(1)
            .arg(format!("sb:h:{{{topic}}}"))
            .arg(event)
            .query_async(&mut self.connection().await)
            .await
            .unwrap()
    }

    /// Starts a backend publishing `count` history events `{"n": 0}`, `{"n": 1}`, ... on
    /// `topic`, one every `every`, on a connection and a task of its own: what the tests that
    /// kill a client's node mid-stream publish meanwhile.
    pub fn publish_history_paced(&self, topic: &str, count: usize, every: Duration) -> Paced {
        let (tx, ids) = tokio::sync::watch::channel(Vec::with_capacity(count));
        let (target, key) = (self.clone(), format!("sb:h:{{{topic}}}"));
        let task = tokio::spawn(async move {
            let mut conn = target.connection().await;
            let mut tick = tokio::time::interval(every);
            for n in 0..count {
                tick.tick().await;
                let id: String = redis::cmd("FCALL")
                    .arg("sb_publish")
                    .arg(1)
                    .arg(&key)
                    .arg(json!({ "n": n }).to_string())
                    .query_async(&mut conn)
                    .await
                    .expect("history publish");
                tx.send_modify(|v| v.push(id));
            }
        });
        Paced { ids, task }
    }
}

impl From<&str> for RedisTarget {
    fn from(url: &str) -> Self {
        RedisTarget::Url(url.to_owned())
    }
}

impl From<&String> for RedisTarget {
    fn from(url: &String) -> Self {
        RedisTarget::Url(url.clone())
    }
}

impl From<&RedisServer> for RedisTarget {
    fn from(redis: &RedisServer) -> Self {
        RedisTarget::Url(redis.url())
    }
}

impl From<&cluster::RedisCluster> for RedisTarget {
    fn from(cluster: &cluster::RedisCluster) -> Self {
        RedisTarget::Cluster(cluster.seeds())
    }
}

impl From<&RedisTarget> for RedisTarget {
    fn from(target: &RedisTarget) -> Self {
        target.clone()
    }
}

/// A test-side connection to one server or to a cluster: either runs any command
/// (`query_async(&mut conn)`), the cluster one routed by the command's key.
pub enum TestConn {
    Single(redis::aio::MultiplexedConnection),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl redis::aio::ConnectionLike for TestConn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            TestConn::Single(c) => c.req_packed_command(cmd),
            TestConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            TestConn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            TestConn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            TestConn::Single(c) => c.get_db(),
            TestConn::Cluster(c) => c.get_db(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Gateways

/// Runs `switchboard publish ARGS...` (with no `SWITCHBOARD_*` settings from the environment)
/// and asserts it succeeded, as a backend publishing from the command line would; returns what
/// it printed.
pub async fn publish_cli(args: &[&str]) -> String {
    let out = without_settings_env(Command::new(switchboard_bin()))
        .arg("publish")
        .args(args)
        .output()
        .await
        .expect("run switchboard publish");
    assert!(
        out.status.success(),
        "switchboard publish failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `switchboard publish` on `redis` (`--redis URL` or `--redis-cluster SEEDS`) of `payload` to
/// `topic`, plus `extra` flags: what it printed (see [`publish_cli`]).
pub async fn publish_to(
    redis: impl Into<RedisTarget>,
    topic: &str,
    payload: &str,
    extra: &[&str],
) -> String {
    let redis = redis.into();
    let mut args = redis.flags().to_vec();
    args.extend_from_slice(extra);
    args.extend([topic, payload]);
    publish_cli(&args).await
}

/// The `switchboard` binary, built next to the test executables.
pub fn switchboard_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let bin = dir.join(format!("switchboard{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "{} is missing: build it first (cargo build -p switchboard; scripts/test does)",
        bin.display()
    );
    bin
}

/// A command without the `SWITCHBOARD_*` variables of the environment the tests run in: the
/// nodes a test starts are configured by its flags alone, whatever the developer's shell holds.
fn without_settings_env(mut cmd: Command) -> Command {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("SWITCHBOARD_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// How many times a gateway's start is tried on other ports when the process exits at once.
const LAUNCH_ATTEMPTS: usize = 5;

/// A `switchboard gateway` child process.
pub struct GatewayProcess {
    pub addr: SocketAddr,
    /// The admin port (`--admin-listen`): `/metrics`.
    pub admin_addr: SocketAddr,
    child: Child,
    /// How it was started, for [`restart`](Self::restart).
    bin: PathBuf,
    args: Vec<String>,
}

impl GatewayProcess {
    /// Starts a gateway against `redis` (a URL, a [`RedisServer`], a
    /// [`cluster::RedisCluster`]) with anonymous clients allowed, plus `extra` flags, and waits
    /// until it is ready.
    pub async fn start(
        redis: impl Into<RedisTarget>,
        node_id: &str,
        extra: &[&str],
    ) -> GatewayProcess {
        let mut all = vec!["--allow-anonymous"];
        all.extend_from_slice(extra);
        Self::launch(&switchboard_bin(), &redis.into(), node_id, &all).await
    }

    /// Starts a gateway against `redis` with anonymous clients allowed, plus `extra` flags,
    /// from the `switchboard` binary at `bin`: what the benchmarks start (from the binary next
    /// to `switchboard-bench`). They measure capacity, so the gateway has no rate limits and no
    /// caps (per connection, per address, nor per identity).
    pub async fn start_with(
        bin: &std::path::Path,
        redis: impl Into<RedisTarget>,
        node_id: &str,
        extra: &[&str],
    ) -> GatewayProcess {
        let mut all = vec![
            "--allow-anonymous",
            "--rate-requests",
            "0",
            "--rate-connections",
            "0",
            "--rate-publishes",
            "0",
            "--rate-calls",
            "0",
            "--max-calls-in-flight-per-identity",
            "0",
            "--max-tasks-per-identity",
            "0",
            "--max-task-bytes-per-identity",
            "0",
            "--max-connections-per-address",
            "0",
            "--max-connections-per-identity",
            "0",
        ];
        all.extend_from_slice(extra);
        Self::launch(bin, &redis.into(), node_id, &all).await
    }

    /// Starts a gateway from the `switchboard` binary at `bin` with anonymous clients allowed
    /// and only the `extra` flags: for a benchmark that also runs older binaries, which know
    /// none of the newer flags.
    pub async fn start_bare(
        bin: &std::path::Path,
        redis: impl Into<RedisTarget>,
        node_id: &str,
        extra: &[&str],
    ) -> GatewayProcess {
        let mut all = vec!["--allow-anonymous"];
        all.extend_from_slice(extra);
        Self::launch(bin, &redis.into(), node_id, &all).await
    }

    /// Starts a gateway with only the `extra` flags on top of the address, Redis and pacing
    /// ones: no `--allow-anonymous` unless given, so the flags say who may connect.
    pub async fn start_secured(
        redis: impl Into<RedisTarget>,
        node_id: &str,
        extra: &[&str],
    ) -> GatewayProcess {
        Self::launch(&switchboard_bin(), &redis.into(), node_id, extra).await
    }

    /// Starts the gateway on free ports and waits until it is ready. A port found free can be
    /// taken by another test's process before the gateway binds it (the gateway then exits at
    /// once): the start is tried again on other ports, a few times.
    async fn launch(
        bin: &std::path::Path,
        redis: &RedisTarget,
        node_id: &str,
        extra: &[&str],
    ) -> GatewayProcess {
        for _ in 0..LAUNCH_ATTEMPTS {
            if let Some(g) = Self::try_launch(bin, redis, node_id, extra).await {
                return g;
            }
        }
        panic!("gateway {node_id} exited at start {LAUNCH_ATTEMPTS} times (its stderr says why)");
    }

    /// One start: `None` when the process exited before it was ready.
    async fn try_launch(
        bin: &std::path::Path,
        redis: &RedisTarget,
        node_id: &str,
        extra: &[&str],
    ) -> Option<GatewayProcess> {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut args: Vec<String> = [
            "gateway",
            "--listen",
            &addr.to_string(),
            "--admin-listen",
            &admin_addr.to_string(),
            redis.flags()[0],
            redis.flags()[1],
            "--node-id",
            node_id,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        // Quick pacing for tests, unless the test sets its own.
        for (flag, value) in [
            ("--readiness-interval", "200ms"),
            ("--subscribe-retry", "200ms"),
        ] {
            if !extra.contains(&flag) {
                args.extend([flag.to_owned(), value.to_owned()]);
            }
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let child = Self::spawn(bin, &args);
        let mut g = GatewayProcess {
            addr,
            admin_addr,
            child,
            bin: bin.to_owned(),
            args,
        };
        let start = tokio::time::Instant::now();
        loop {
            if !matches!(g.child.try_wait(), Ok(None)) {
                return None;
            }
            if matches!(http_get(addr, "/readyz").await, Ok((200, _)))
                && matches!(g.child.try_wait(), Ok(None))
            {
                return Some(g);
            }
            if start.elapsed() > DEADLINE {
                panic!("timed out waiting for: /readyz of {addr} to be true");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    fn spawn(bin: &std::path::Path, args: &[String]) -> Child {
        without_settings_env(Command::new(bin))
            .args(args)
            .env("SWITCHBOARD_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn switchboard gateway")
    }

    /// Starts the node again, same address and flags, once the previous process has exited
    /// (after a SIGTERM or a SIGKILL), and waits until it is ready.
    pub async fn restart(&mut self) {
        self.wait().await;
        self.child = Self::spawn(&self.bin, &self.args);
        self.wait_ready(true).await;
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub async fn wait_ready(&self, ready: bool) {
        let addr = self.addr;
        eventually(&format!("/readyz of {addr} to be {ready}"), || async move {
            let ok = matches!(http_get(addr, "/readyz").await, Ok((200, _)));
            (ok == ready).then_some(())
        })
        .await
    }

    pub fn pid(&self) -> i32 {
        self.child.id().expect("gateway running") as i32
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig).expect("kill");
    }

    /// Waits for the process to exit and returns its status.
    pub async fn wait(&mut self) -> std::process::ExitStatus {
        tokio::time::timeout(DEADLINE, self.child.wait())
            .await
            .expect("gateway did not exit in time")
            .expect("wait")
    }
}

/// A `switchboard worker` child process.
pub struct WorkerProcess {
    pub id: String,
    child: Child,
}

impl WorkerProcess {
    /// Starts a worker on `redis` (a [`RedisServer`], a [`cluster::RedisCluster`], a
    /// [`RedisTarget`]) with `extra` flags (`--builtin`, `--tools FILE`, ...) and waits until
    /// its announcement is in the registry.
    pub async fn start(redis: impl Into<RedisTarget>, id: &str, extra: &[&str]) -> WorkerProcess {
        Self::start_with(&switchboard_bin(), redis, id, extra).await
    }

    /// Like [`start`](Self::start), with the `switchboard` binary at `bin`.
    pub async fn start_with(
        bin: &std::path::Path,
        redis: impl Into<RedisTarget>,
        id: &str,
        extra: &[&str],
    ) -> WorkerProcess {
        let redis = redis.into();
        Self::announced(Self::spawn_at(bin, &redis, id, None, extra), &redis).await
    }

    /// Like [`start`](Self::start), the worker running in `dir` (a tools file's commands with
    /// paths relative to it).
    pub async fn start_in(
        redis: impl Into<RedisTarget>,
        id: &str,
        dir: &std::path::Path,
        extra: &[&str],
    ) -> WorkerProcess {
        let redis = redis.into();
        let w = Self::spawn_at(&switchboard_bin(), &redis, id, Some(dir), extra);
        Self::announced(w, &redis).await
    }

    /// Waits until `w`'s announcement is in the registry.
    async fn announced(w: WorkerProcess, redis: &RedisTarget) -> WorkerProcess {
        let id = w.id.clone();
        eventually(&format!("worker {id} to announce itself"), || {
            let id = id.clone();
            async move {
                let mut conn = redis.connection().await;
                let v: Option<String> = redis::cmd("HGET")
                    .arg("sb:workers")
                    .arg(&id)
                    .query_async(&mut conn)
                    .await
                    .ok()?;
                v.map(|_| ())
            }
        })
        .await;
        w
    }

    /// Starts a worker without waiting for it (one that may die at once).
    pub fn spawn(redis: impl Into<RedisTarget>, id: &str, extra: &[&str]) -> WorkerProcess {
        Self::spawn_at(&switchboard_bin(), &redis.into(), id, None, extra)
    }

    /// Starts a worker on the Redis at `url` (TLS, ACL, Sentinel: see [`redis_extra`]) without
    /// waiting for it.
    pub fn spawn_url(url: &str, id: &str, extra: &[&str]) -> WorkerProcess {
        Self::spawn(url, id, extra)
    }

    fn spawn_at(
        bin: &std::path::Path,
        redis: &RedisTarget,
        id: &str,
        dir: Option<&std::path::Path>,
        extra: &[&str],
    ) -> WorkerProcess {
        let mut cmd = without_settings_env(Command::new(bin));
        if let Some(dir) = dir {
            cmd.current_dir(dir);
        }
        let child = cmd
            .arg("worker")
            .args(redis.flags())
            .args(["--worker-id", id])
            .args(["--heartbeat", "200ms", "--fetch-block", "200ms"])
            .args(extra)
            .env("SWITCHBOARD_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn switchboard worker");
        WorkerProcess {
            id: id.to_owned(),
            child,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("worker running")
    }

    pub fn kill9(&self) {
        let pid = self.child.id().expect("worker running") as i32;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("kill -9");
    }

    /// Whether the process has exited.
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }
}

/// What a [`TestBackend`] runs on, kept alive as long as it is.
pub enum Store {
    Memory,
    Redis(RedisServer),
    Cluster(cluster::RedisCluster),
}

impl Store {
    /// Where it is, for test-side commands and for processes: `None` for memory.
    pub fn target(&self) -> Option<RedisTarget> {
        match self {
            Store::Memory => None,
            Store::Redis(r) => Some(r.into()),
            Store::Cluster(c) => Some(c.into()),
        }
    }
}

/// A backend of one kind for in-process gateways and workers, with the `redis-server` or the
/// cluster it runs on (kept alive as long as `store` is).
pub struct TestBackend {
    /// The roles a gateway uses.
    pub backend: Backend,
    /// The same backend, as a worker sees it.
    pub queue: Arc<dyn JobQueue>,
    pub store: Store,
}

impl TestBackend {
    pub async fn start(kind: Kind) -> TestBackend {
        match kind {
            Kind::Memory => {
                let b = switchboard_memory::MemoryBackend::new();
                TestBackend {
                    backend: b.backend(),
                    queue: b,
                    store: Store::Memory,
                }
            }
            Kind::Redis => {
                let redis = RedisServer::start().await;
                let b = redis_backend(&redis);
                TestBackend {
                    backend: b.backend(),
                    queue: b,
                    store: Store::Redis(redis),
                }
            }
            Kind::Cluster => {
                let cluster = cluster::RedisCluster::start(CLUSTER_PRIMARIES, 0).await;
                let b = cluster_backend(&cluster);
                TestBackend {
                    backend: b.backend(),
                    queue: b,
                    store: Store::Cluster(cluster),
                }
            }
        }
    }
}

/// A Redis Cluster backend instance of its own, on `cluster`'s seeds.
pub fn cluster_backend(cluster: &cluster::RedisCluster) -> Arc<switchboard_redis::RedisBackend> {
    let opts = switchboard_redis::RedisOptions::new_cluster(cluster.urls());
    switchboard_redis::RedisBackend::connect(&opts).expect("valid cluster seeds")
}

/// A Redis backend instance of its own (an instance feeds one in-process node's fan-out).
pub fn redis_backend(redis: &RedisServer) -> Arc<switchboard_redis::RedisBackend> {
    let opts = switchboard_redis::RedisOptions::new(redis.url());
    switchboard_redis::RedisBackend::connect(&opts).expect("a valid Redis URL")
}

/// An in-process gateway and an in-process worker hosting the built-in tools, on one backend
/// (heartbeats every 100 ms, so the tools are listed quickly).
pub struct GatewayWithTools {
    pub gw: InProcessGateway,
    _store: Store,
    _worker: tokio::task::JoinHandle<Result<(), switchboard_worker::RunError>>,
}

impl GatewayWithTools {
    /// Starts both on a new backend of `kind`, the gateway from `config`, and waits until the
    /// gateway is ready.
    pub async fn start(config: GatewayConfig, kind: Kind) -> GatewayWithTools {
        let b = TestBackend::start(kind).await;
        let mut toolbox = switchboard_worker::Toolbox::new();
        switchboard_worker::tools::builtin::add_builtins(&mut toolbox).unwrap();
        let mut wc = switchboard_worker::WorkerConfig::new("w1");
        wc.heartbeat = Duration::from_millis(100);
        let worker = tokio::spawn(switchboard_worker::run(
            wc,
            b.queue,
            toolbox,
            std::future::pending(),
        ));
        let gw = InProcessGateway::start_ready(config, b.backend).await;
        GatewayWithTools {
            gw,
            _store: b.store,
            _worker: worker,
        }
    }
}

/// A gateway running inside the test process.
pub struct InProcessGateway {
    pub addr: SocketAddr,
    /// The admin port: `/metrics`.
    pub admin_addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl InProcessGateway {
    /// Starts a gateway on ephemeral ports, its admin port included.
    pub async fn start(config: GatewayConfig, backend: Backend) -> InProcessGateway {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin_addr = admin.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            switchboard_gateway::run_with_admin(config, listener, Some(admin), backend, async {
                let _ = rx.await;
            })
            .await
            .expect("gateway run");
        });
        InProcessGateway {
            addr,
            admin_addr,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Starts a gateway and waits until `/readyz` says it is ready.
    pub async fn start_ready(config: GatewayConfig, backend: Backend) -> InProcessGateway {
        let gw = Self::start(config, backend).await;
        let addr = gw.addr;
        eventually("gateway ready", || async move {
            matches!(http_get(addr, "/readyz").await, Ok((200, _))).then_some(())
        })
        .await;
        gw
    }

    /// Triggers shutdown and waits for `run` to return.
    pub async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(DEADLINE, task)
                .await
                .expect("gateway did not stop in time")
                .expect("gateway task panicked");
        }
    }
}

/// Sends a WebSocket upgrade request to `gw` from the loopback address `source` with extra
/// headers, and reads the response's status and `Retry-After` (the socket is then dropped).
pub async fn upgrade_from(
    gw: &GatewayProcess,
    source: &str,
    headers: &[(&str, &str)],
) -> (u16, Option<String>) {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(format!("{source}:0").parse().unwrap()).unwrap();
    let mut s = sock.connect(gw.addr).await.unwrap();
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    let req = format!(
        "GET /ws HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n",
        gw.addr
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 1024];
    let n = s.read(&mut buf).await.unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).to_string();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let retry = head
        .lines()
        .find_map(|l| l.strip_prefix("retry-after: ").map(str::to_owned));
    (status, retry)
}

/// A tiny HTTP/1.1 GET: (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr).await?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .map_err(|_| std::io::Error::other("http timeout"))??;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("bad http response"))?;
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    Ok((status, body))
}

/// Reads one counter from a node's `/metrics` (`addr`: its admin port).
pub async fn metric(addr: SocketAddr, name: &str) -> f64 {
    let (_, body) = http_get(addr, "/metrics").await.expect("metrics");
    body.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == name).then(|| v.parse().ok()).flatten()
        })
        .unwrap_or_else(|| panic!("metric {name} not found in:\n{body}"))
}

// ---------------------------------------------------------------------------------------------
// A raw WebSocket peer

type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

/// What a raw read produced.
#[derive(Debug, PartialEq)]
pub enum Read {
    Json(Value),
    Close(u16, String),
    /// The TCP stream ended without a close frame.
    Eof,
}

/// A raw WebSocket client: send anything, read JSON or the close code.
pub struct WsClient {
    ws: Ws,
    next_id: u64,
    /// Notifications read while waiting for a reply, handed out by `next_event` first.
    skipped: std::collections::VecDeque<Value>,
}

impl WsClient {
    pub async fn connect(url: &str) -> WsClient {
        Self::connect_with(url, &[]).await
    }

    /// Connects with extra request headers (e.g. `Authorization`).
    pub async fn connect_with(url: &str, headers: &[(&str, &str)]) -> WsClient {
        let mut req = url.into_client_request().unwrap();
        for (k, v) in headers {
            req.headers_mut().insert(
                tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let host = req.uri().authority().unwrap().to_string();
        let stream = TcpStream::connect(host).await.unwrap();
        Self::over(stream, req).await
    }

    /// Connects from the loopback address `source` (127.0.0.x), with extra request headers.
    pub async fn connect_from(url: &str, source: &str, headers: &[(&str, &str)]) -> WsClient {
        let mut req = url.into_client_request().unwrap();
        for (k, v) in headers {
            req.headers_mut().insert(
                tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let addr: SocketAddr = req.uri().authority().unwrap().as_str().parse().unwrap();
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(format!("{source}:0").parse().unwrap()).unwrap();
        let stream = sock.connect(addr).await.unwrap();
        Self::over(stream, req).await
    }

    /// Connects with a tiny receive buffer (4 KiB), for a client that is not to read: what the
    /// node sends it piles up in the node's queue, not in the kernel's buffers.
    pub async fn slow_reader(url: &str) -> WsClient {
        let req = url.into_client_request().unwrap();
        let addr: SocketAddr = req.uri().authority().unwrap().as_str().parse().unwrap();
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.set_recv_buffer_size(4096).unwrap();
        let stream = sock.connect(addr).await.unwrap();
        Self::over(stream, req).await
    }

    /// Connects over a socket the caller made (e.g. with a tiny receive buffer).
    pub async fn over(
        stream: TcpStream,
        req: tokio_tungstenite::tungstenite::handshake::client::Request,
    ) -> WsClient {
        let (ws, _) = tokio_tungstenite::client_async(req, stream)
            .await
            .expect("websocket handshake");
        WsClient {
            ws,
            next_id: 1,
            skipped: Default::default(),
        }
    }

    pub async fn send_text(&mut self, text: impl Into<String>) {
        self.ws
            .send(Message::text(text.into()))
            .await
            .expect("send");
    }

    /// Writes raw bytes to the socket, under the WebSocket layer (malformed frames).
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.ws.get_mut().write_all(bytes).await.expect("send raw");
    }

    pub async fn send_message(&mut self, m: Message) {
        self.ws.send(m).await.expect("send");
    }

    /// Sends a request and returns its id.
    pub async fn send_request(&mut self, method: &str, params: Value) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.send_text(
            json!({"jsonrpc":"2.0","id":id,"method":method,"params":params}).to_string(),
        )
        .await;
        id
    }

    /// Reads the next JSON message or close.
    pub async fn read(&mut self) -> Read {
        loop {
            let next = tokio::time::timeout(DEADLINE, self.ws.next())
                .await
                .expect("nothing received in time");
            match next {
                Some(Ok(Message::Text(t))) => {
                    return Read::Json(
                        serde_json::from_str(&t).expect("gateway sent invalid JSON"),
                    );
                }
                Some(Ok(Message::Close(Some(f)))) => {
                    return Read::Close(u16::from(f.code), f.reason.to_string());
                }
                Some(Ok(Message::Close(None))) => return Read::Close(1005, String::new()),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(other)) => panic!("unexpected message {other:?}"),
                Some(Err(_)) | None => return Read::Eof,
            }
        }
    }

    pub async fn read_json(&mut self) -> Value {
        match self.read().await {
            Read::Json(v) => v,
            other => panic!("expected JSON, got {other:?}"),
        }
    }

    /// Reads until the close frame and returns its code (skipping other messages).
    pub async fn read_close(&mut self) -> u16 {
        loop {
            match self.read().await {
                Read::Json(_) => continue,
                Read::Close(code, _) => return code,
                Read::Eof => panic!("connection ended without a close frame"),
            }
        }
    }

    /// Sends a request and reads its reply; notifications read meanwhile are kept for
    /// [`next_event`](Self::next_event).
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.send_request(method, params).await;
        loop {
            let v = self.read_json().await;
            if v["id"] == json!(id) {
                return v;
            }
            if v.get("method").is_some() {
                self.skipped.push_back(v);
            }
        }
    }

    /// Sends a request of method `M` with the protocol's params type and reads the reply as
    /// the protocol's result type: `Err` with the error object when the gateway answers one.
    /// A reply that does not decode into `M::Result` fails the test.
    pub async fn method<M: Method>(&mut self, params: &M::Params<'_>) -> Result<M::Result, Value> {
        let params = serde_json::to_value(params).expect("params serialize");
        let reply = self.call(M::NAME, params).await;
        if let Some(e) = reply.get("error") {
            return Err(e.clone());
        }
        Ok(
            serde_json::from_value(reply["result"].clone()).unwrap_or_else(|e| {
                panic!(
                    "{} answered a result that is not its type ({e}): {reply}",
                    M::NAME
                )
            }),
        )
    }

    pub async fn hello(&mut self) -> Value {
        let r = self.call("hello", json!({})).await;
        assert!(r["result"]["session"].is_string(), "hello failed: {r}");
        r
    }

    /// Waits until `tools/list` lists `tool` (the catalogue follows worker announcements).
    pub async fn wait_for_tool(&mut self, tool: &str) {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let r = self.call("tools/list", json!({})).await;
            if r["result"]["tools"]
                .as_array()
                .is_some_and(|t| t.iter().any(|t| t["name"] == tool))
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{tool} never listed: {r}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Takes the first notification of `method` that arrived while waiting for replies.
    pub fn take_notification(&mut self, method: &str) -> Option<Value> {
        let i = self.skipped.iter().position(|v| v["method"] == method)?;
        self.skipped.remove(i)
    }

    /// Reads the next `event` notification's params.
    pub async fn next_event(&mut self) -> Value {
        while let Some(v) = self.skipped.pop_front() {
            if v["method"] == "event" {
                return v["params"].clone();
            }
        }
        loop {
            let v = self.read_json().await;
            if v["method"] == "event" {
                return v["params"].clone();
            }
        }
    }

    pub async fn close(&mut self, code: u16) {
        let _ = self
            .ws
            .close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: CloseCode::from(code),
                reason: "".into(),
            }))
            .await;
    }
}
