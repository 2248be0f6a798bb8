//! `redis-server` as production runs it, for `tests/redis_tls.rs` and `tests/sentinel.rs`:
//! [`RedisNode`], any `redis-server` (TLS only, with ACL users, a replica, a Sentinel) on a free
//! port, killed on drop; [`TlsRedis`], one speaking only TLS with certificates made by the test
//! ([`TestCa`]); [`SentinelSet`], a primary, a replica of it and a Sentinel watching them, with
//! low failover timings; and [`LoggedProcess`], a `switchboard` child whose stderr the test
//! reads (what it logs, that a secret is not in it).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::tls::TestCa;
use crate::{DEADLINE, eventually, free_port, switchboard_bin};

/// How long a started `redis-server` may take to listen.
const START: Duration = Duration::from_secs(5);
/// How long a process that bound its port must stay up to be known as ours (another test's
/// process that won the race for the port makes ours exit at once).
const SETTLE: Duration = Duration::from_millis(150);

/// Sentinel timings: the primary is "down" after this long without an answer...
pub const DOWN_AFTER: Duration = Duration::from_millis(1000);
/// ...and a failover that has not finished by then is tried again.
pub const FAILOVER_TIMEOUT: Duration = Duration::from_millis(3000);
/// The name the Sentinel knows the primary by.
pub const MASTER: &str = "mymaster";

/// A directory of its own for one test's files, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let d =
            std::env::temp_dir().join(format!("sb-{name}-{}-{}", std::process::id(), free_port()));
        std::fs::create_dir_all(&d).expect("temp dir");
        TempDir(d)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// `dir/name` as a string (for a flag).
    pub fn file(&self, name: &str) -> String {
        self.0.join(name).display().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A `redis-server` child on a free port of 127.0.0.1, killed on drop.
pub struct RedisNode {
    pub port: u16,
    child: Option<Child>,
    /// For a node that speaks only TLS: the directory of `ca.pem`, `client.pem`, `client.key`.
    tls: Option<PathBuf>,
}

impl RedisNode {
    /// Starts `redis-server` with the arguments `args(port)` gives for a free port, and waits
    /// until it listens. Tried on other ports when the port was taken meanwhile.
    pub async fn start(args: impl Fn(u16) -> Vec<String>) -> RedisNode {
        for _ in 0..5 {
            let port = free_port();
            let child = Command::new("redis-server")
                .args(args(port))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .expect("redis-server not found: run scripts/test, which installs it");
            let mut node = RedisNode {
                port,
                child: Some(child),
                tls: None,
            };
            if node.listening().await {
                return node;
            }
        }
        panic!("could not start redis-server");
    }

    async fn listening(&mut self) -> bool {
        let start = tokio::time::Instant::now();
        while start.elapsed() < START {
            if self.exited() {
                return false;
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                tokio::time::sleep(SETTLE).await;
                return !self.exited();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    fn exited(&mut self) -> bool {
        !matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server with SIGKILL (no goodbye to anyone).
    pub async fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }

    /// A plain connection as the `default` user (no password).
    /// A connection as the `default` user (no password); over TLS for a TLS node.
    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        let client = match &self.tls {
            None => redis::Client::open(self.url()).expect("url"),
            Some(dir) => tls_client(&format!("rediss://127.0.0.1:{}", self.port), dir),
        };
        client
            .get_multiplexed_async_connection()
            .await
            .expect("connect to redis")
    }

    /// Marks the node as speaking only TLS with the files in `dir`.
    pub fn with_tls(mut self, dir: &Path) -> RedisNode {
        self.tls = Some(dir.to_owned());
        self
    }
}

/// A client for `url` trusting `dir/ca.pem` and showing `dir/client.pem`.
fn tls_client(url: &str, dir: &Path) -> redis::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let read = |name: &str| std::fs::read(dir.join(name)).expect("TLS file");
    let certs = redis::TlsCertificates {
        client_tls: Some(redis::ClientTlsConfig {
            client_cert: read("client.pem"),
            client_key: read("client.key"),
        }),
        root_cert: Some(read("ca.pem")),
    };
    redis::Client::build_with_tls(url, certs).expect("TLS client")
}

impl Drop for RedisNode {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.start_kill();
        }
    }
}

/// A `redis-server` that speaks only TLS, with a certificate a test CA signed.
pub struct TlsRedis {
    pub node: RedisNode,
    pub ca: TestCa,
    /// `ca.pem`, `server.pem`, `server.key`, `client.pem`, `client.key`.
    pub dir: TempDir,
}

impl TlsRedis {
    /// `client_certs`: whether the server requires a client certificate its CA signed.
    pub async fn start(client_certs: bool) -> TlsRedis {
        let ca = TestCa::new();
        let dir = TempDir::new("tls-redis");
        ca.write_files(dir.path());
        let (cert, key, cafile) = (
            dir.file("server.pem"),
            dir.file("server.key"),
            dir.file("ca.pem"),
        );
        let auth = if client_certs { "yes" } else { "no" };
        let node = RedisNode::start(|port| {
            let port = port.to_string();
            [
                "--port",
                "0",
                "--tls-port",
                &port,
                "--bind",
                "127.0.0.1",
                "--tls-cert-file",
                &cert,
                "--tls-key-file",
                &key,
                "--tls-ca-cert-file",
                &cafile,
                "--tls-auth-clients",
                auth,
                "--save",
                "",
                "--appendonly",
                "no",
            ]
            .map(String::from)
            .to_vec()
        })
        .await;
        TlsRedis { node, ca, dir }
    }

    /// `rediss://localhost:<port>` (the certificate names `localhost` and `127.0.0.1`).
    pub fn url(&self) -> String {
        format!("rediss://localhost:{}", self.node.port)
    }

    /// A connection of the test's own, trusting the test CA and showing the client certificate.
    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        tls_client(&self.url(), self.dir.path())
            .get_multiplexed_async_connection()
            .await
            .expect("connect to TLS redis")
    }
}

/// Waits until `id`'s announcement is in the worker registry (`HGET sb:workers <id>`).
pub async fn wait_announced(conn: &mut redis::aio::MultiplexedConnection, id: &str) {
    eventually(&format!("worker {id} to announce itself"), || async {
        let v: Option<String> = redis::cmd("HGET")
            .arg("sb:workers")
            .arg(id)
            .query_async(&mut conn.clone())
            .await
            .ok()?;
        v.map(|_| ())
    })
    .await
}

/// A primary, a replica of it, and one Sentinel watching them (quorum 1), with
/// [`DOWN_AFTER`] and [`FAILOVER_TIMEOUT`].
pub struct SentinelSet {
    pub primary: RedisNode,
    pub replica: RedisNode,
    pub sentinel: RedisNode,
    _dir: TempDir,
}

impl SentinelSet {
    pub async fn start() -> SentinelSet {
        Self::start_with(None).await
    }

    /// Every node and the Sentinel speaking only TLS (replication too), with certificates
    /// `ca` signed.
    pub async fn start_tls(ca: &TestCa) -> SentinelSet {
        Self::start_with(Some(ca)).await
    }

    async fn start_with(ca: Option<&TestCa>) -> SentinelSet {
        let dir = TempDir::new("sentinel");
        if let Some(ca) = ca {
            ca.write_files(dir.path());
        }
        let tls_dir = ca.map(|_| dir.path().to_owned());
        // `port P` for plain nodes; `port 0` + `tls-port P` and TLS replication for TLS ones.
        let listen = |port: u16| -> Vec<String> {
            match &tls_dir {
                None => vec!["--port".into(), port.to_string()],
                Some(d) => {
                    let f = |n: &str| d.join(n).display().to_string();
                    [
                        "--port",
                        "0",
                        "--tls-port",
                        &port.to_string(),
                        "--tls-cert-file",
                        &f("server.pem"),
                        "--tls-key-file",
                        &f("server.key"),
                        "--tls-ca-cert-file",
                        &f("ca.pem"),
                        "--tls-auth-clients",
                        "optional",
                        "--tls-replication",
                        "yes",
                    ]
                    .map(String::from)
                    .to_vec()
                }
            }
        };
        let plain = |port: u16| {
            let mut a = listen(port);
            a.extend(
                [
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--maxmemory-policy",
                    "noeviction",
                ]
                .map(String::from),
            );
            a
        };
        let tag = |n: RedisNode| match &tls_dir {
            Some(d) => n.with_tls(d),
            None => n,
        };
        let primary = tag(RedisNode::start(plain).await);
        let primary_port = primary.port;
        let replica = tag(RedisNode::start(|port| {
            let mut a = plain(port);
            a.extend(["--replicaof", "127.0.0.1", &primary_port.to_string()].map(String::from));
            a
        })
        .await);
        // The replica has the primary's data before anything else happens.
        let rconn = replica.connection().await;
        eventually("the replica to sync with the primary", || async {
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query_async(&mut rconn.clone())
                .await
                .ok()?;
            info.contains("master_link_status:up").then_some(())
        })
        .await;
        drop(rconn);
        let conf = dir.path().join("sentinel.conf");
        let sentinel = RedisNode::start(|port| {
            // Sentinel rewrites its file: one per attempt, written fresh.
            let listen = match &tls_dir {
                None => format!("port {port}\n"),
                Some(d) => format!(
                    "port 0\ntls-port {port}\ntls-cert-file {d}/server.pem\n\
                     tls-key-file {d}/server.key\ntls-ca-cert-file {d}/ca.pem\n\
                     tls-auth-clients optional\ntls-replication yes\n",
                    d = d.display()
                ),
            };
            let text = format!(
                "{listen}bind 127.0.0.1\ndir {dir}\n\
                 sentinel monitor {MASTER} 127.0.0.1 {primary_port} 1\n\
                 sentinel down-after-milliseconds {MASTER} {down}\n\
                 sentinel failover-timeout {MASTER} {failover}\n\
                 sentinel parallel-syncs {MASTER} 1\n",
                dir = dir.path().display(),
                down = DOWN_AFTER.as_millis(),
                failover = FAILOVER_TIMEOUT.as_millis(),
            );
            std::fs::write(&conf, text).expect("write sentinel.conf");
            vec![conf.display().to_string(), "--sentinel".into()]
        })
        .await;
        let sentinel = tag(sentinel);
        let set = SentinelSet {
            primary,
            replica,
            sentinel,
            _dir: dir,
        };
        // The Sentinel knows the replica (it would have nothing to promote otherwise).
        let sconn = set.sentinel.connection().await;
        let replica_port = set.replica.port.to_string();
        eventually("the Sentinel to discover the replica", || async {
            let replicas: Vec<std::collections::HashMap<String, String>> = redis::cmd("SENTINEL")
                .arg("REPLICAS")
                .arg(MASTER)
                .query_async(&mut sconn.clone())
                .await
                .ok()?;
            replicas
                .iter()
                .any(|r| {
                    r.get("port") == Some(&replica_port)
                        && r.get("flags").is_some_and(|f| f == "slave")
                })
                .then_some(())
        })
        .await;
        set
    }

    /// `redis+sentinel://127.0.0.1:<sentinel port>/mymaster` (`rediss+sentinel://` for TLS).
    pub fn url(&self) -> String {
        let scheme = if self.sentinel.tls.is_some() {
            "rediss+sentinel"
        } else {
            "redis+sentinel"
        };
        format!("{scheme}://127.0.0.1:{}/{MASTER}", self.sentinel.port)
    }

    /// The port of the node the Sentinel names as primary now.
    pub async fn primary_port(&self) -> Option<u16> {
        let mut conn = self.sentinel.connection().await;
        let addr: Option<(String, String)> = redis::cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg(MASTER)
            .query_async(&mut conn)
            .await
            .ok()?;
        addr.and_then(|(_, p)| p.parse().ok())
    }
}

/// A `switchboard` child process whose stderr goes to a file the test reads; killed on drop.
pub struct LoggedProcess {
    child: Child,
    log: PathBuf,
}

impl LoggedProcess {
    /// `switchboard <args>` with `SWITCHBOARD_LOG` at `level`, no other `SWITCHBOARD_*`
    /// variable but `env`.
    pub fn spawn(args: &[&str], env: &[(&str, &str)], level: &str) -> LoggedProcess {
        let log =
            std::env::temp_dir().join(format!("sb-log-{}-{}.txt", std::process::id(), free_port()));
        let file = std::fs::File::create(&log).expect("log file");
        let mut cmd = Command::new(switchboard_bin());
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("SWITCHBOARD_") {
                cmd.env_remove(key);
            }
        }
        let child = cmd
            .args(args)
            .envs(env.iter().copied())
            .env("SWITCHBOARD_LOG", level)
            .stdout(Stdio::null())
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn switchboard");
        LoggedProcess { child, log }
    }

    /// Everything written to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until stderr holds `needle`; the log on failure.
    pub async fn wait_log(&self, needle: &str) -> String {
        let start = tokio::time::Instant::now();
        loop {
            let log = self.stderr();
            if log.contains(needle) {
                return log;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "{needle:?} never logged; stderr:\n{log}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The exit status, if the process has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits for the exit (within [`DEADLINE`]).
    pub async fn wait(&mut self) -> std::process::ExitStatus {
        tokio::time::timeout(DEADLINE, self.child.wait())
            .await
            .expect("the process did not exit in time")
            .expect("wait")
    }
}

impl Drop for LoggedProcess {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_file(&self.log);
    }
}
