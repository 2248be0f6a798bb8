//! A local Redis Cluster for the `shards` scenario, started the way the test fixture starts one:
//! N `redis-server --cluster-enabled yes` primaries (no replicas) on free loopback ports, each
//! with its cluster config file in one temporary directory, joined with
//! `redis-cli --cluster create ... --cluster-yes`, and ready once every node says
//! `cluster_state:ok`. The nodes are killed and the directory removed on drop.
//!
//! Also here: the gateway processes the scenario starts ([`BenchGateway`]), on `--redis URL` or
//! `--redis-cluster SEEDS`: the same flags, limits off, as the harness's
//! `GatewayProcess::start_with` (which knows only `--redis`), so that one code path starts the
//! gateways of both runs being compared.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use switchboard_harness::{free_port, http_get};
use tokio::process::{Child, Command};

/// How long one node may take to answer its first `PING`.
const NODE_START_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the cluster may take to say `cluster_state:ok` on every node after `create`.
const CLUSTER_OK_TIMEOUT: Duration = Duration::from_secs(30);
/// Starts of one node tried on other ports when the port was taken meanwhile.
const NODE_START_ATTEMPTS: usize = 5;
/// `--cluster-node-timeout`: nothing fails over here (no replicas); the test fixture's value.
const NODE_TIMEOUT_MS: &str = "5000";
/// How long a gateway may take to be ready (`/readyz` 200).
const GATEWAY_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Between polls of a condition being waited for.
const POLL: Duration = Duration::from_millis(25);

/// One cluster node.
pub struct ClusterNode {
    pub port: u16,
    child: Child,
}

impl ClusterNode {
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}

/// A running cluster of primaries.
pub struct LocalCluster {
    pub nodes: Vec<ClusterNode>,
    dir: PathBuf,
}

impl LocalCluster {
    /// Starts `primaries` nodes and creates the cluster (the slots spread evenly by
    /// `redis-cli`); returns once every node says `cluster_state:ok`.
    pub async fn start(primaries: usize) -> anyhow::Result<LocalCluster> {
        if primaries < 3 {
            bail!("redis-cli --cluster create needs at least 3 primaries");
        }
        let dir = std::env::temp_dir().join(format!(
            "switchboard-bench-cluster-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        // From here on, Drop removes the directory and kills the nodes started so far.
        let mut cluster = LocalCluster {
            nodes: Vec::new(),
            dir,
        };
        for _ in 0..primaries {
            let node = start_node(&cluster.dir).await?;
            cluster.nodes.push(node);
        }
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for n in &cluster.nodes {
            create.arg(format!("127.0.0.1:{}", n.port));
        }
        let out = create
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .await
            .context("running redis-cli --cluster create (is redis-tools installed?)")?;
        if !out.status.success() {
            bail!(
                "redis-cli --cluster create failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let started = Instant::now();
        loop {
            let mut ok = 0;
            for n in &cluster.nodes {
                if cluster_ok(&n.url()).await {
                    ok += 1;
                }
            }
            if ok == cluster.nodes.len() {
                return Ok(cluster);
            }
            if started.elapsed() > CLUSTER_OK_TIMEOUT {
                bail!("the cluster did not reach cluster_state:ok on every node in time");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The seed list for `--redis-cluster`: every node, comma-joined.
    pub fn seeds(&self) -> String {
        self.nodes
            .iter()
            .map(ClusterNode::url)
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            let _ = n.child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One node on a free port (tried again on another port when the port was taken meanwhile).
async fn start_node(dir: &Path) -> anyhow::Result<ClusterNode> {
    for _ in 0..NODE_START_ATTEMPTS {
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--cluster-enabled", "yes"])
            .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
            .args(["--cluster-node-timeout", NODE_TIMEOUT_MS])
            .arg("--dir")
            .arg(dir)
            .args(["--save", "", "--appendonly", "no"])
            .args(["--maxmemory-policy", "noeviction"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting redis-server (apt-get install redis-server)")?;
        let mut node = ClusterNode { port, child };
        let started = Instant::now();
        while started.elapsed() < NODE_START_TIMEOUT {
            if let Ok(Some(_)) = node.child.try_wait() {
                break;
            }
            if server_pid(&node.url())
                .await
                .is_some_and(|p| Some(p) == node.pid())
            {
                return Ok(node);
            }
            tokio::time::sleep(POLL).await;
        }
        let _ = node.child.start_kill();
    }
    bail!("could not start a cluster node after {NODE_START_ATTEMPTS} attempts")
}

/// The `process_id` the server at `url` reports (so a node is known to be ours, not a server
/// that won the race for the port).
async fn server_pid(url: &str) -> Option<u32> {
    let info = info(url, "server").await?;
    info_field(&info, "process_id")?.parse().ok()
}

async fn cluster_ok(url: &str) -> bool {
    let Ok(client) = redis::Client::open(url) else {
        return false;
    };
    let Ok(Ok(mut conn)) =
        tokio::time::timeout(POLL * 20, client.get_multiplexed_async_connection()).await
    else {
        return false;
    };
    let info: Result<String, _> = redis::cmd("CLUSTER")
        .arg("INFO")
        .query_async(&mut conn)
        .await;
    info.is_ok_and(|i| info_field(&i, "cluster_state") == Some("ok"))
}

/// `INFO <section>` of the server at `url` (`None` when it does not answer).
pub async fn info(url: &str, section: &str) -> Option<String> {
    let client = redis::Client::open(url).ok()?;
    let mut conn = tokio::time::timeout(POLL * 20, client.get_multiplexed_async_connection())
        .await
        .ok()?
        .ok()?;
    redis::cmd("INFO")
        .arg(section)
        .query_async(&mut conn)
        .await
        .ok()
}

/// The value of `field:` in an `INFO` (or `CLUSTER INFO`) answer.
pub fn info_field<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines().find_map(|l| {
        l.strip_prefix(field)
            .and_then(|rest| rest.strip_prefix(':'))
            .map(str::trim)
    })
}

/// Which Redis a gateway is pointed at.
#[derive(Debug, Clone)]
pub enum RedisTarget {
    /// `--redis URL`.
    Single(String),
    /// `--redis-cluster SEEDS` (comma-joined URLs).
    Cluster(String),
}

/// A `switchboard gateway` child process, killed on drop.
pub struct BenchGateway {
    pub addr: SocketAddr,
    child: Child,
}

impl BenchGateway {
    /// Starts a gateway from `bin` on free ports with anonymous clients and no limits (what the
    /// benchmarks measure is capacity), and waits until it is ready.
    pub async fn start(
        bin: &Path,
        redis: &RedisTarget,
        node_id: &str,
    ) -> anyhow::Result<BenchGateway> {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
        let (flag, value) = match redis {
            RedisTarget::Single(url) => ("--redis", url.as_str()),
            RedisTarget::Cluster(seeds) => ("--redis-cluster", seeds.as_str()),
        };
        let mut cmd = Command::new(bin);
        // Configured by these flags alone, whatever the shell's SWITCHBOARD_* variables hold.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("SWITCHBOARD_") {
                cmd.env_remove(key);
            }
        }
        let child = cmd
            .arg("gateway")
            .args(["--listen", &addr.to_string()])
            .args(["--admin-listen", &admin.to_string()])
            .args([flag, value])
            .args(["--node-id", node_id])
            // As the harness's `GatewayProcess::start_with`: no rate limits and no caps.
            .args(["--allow-anonymous"])
            .args(["--rate-requests", "0", "--rate-connections", "0"])
            .args(["--rate-publishes", "0", "--rate-calls", "0"])
            .args(["--max-calls-in-flight-per-identity", "0"])
            .args(["--max-tasks-per-identity", "0"])
            .args(["--max-task-bytes-per-identity", "0"])
            .args(["--max-connections-per-address", "0"])
            .args(["--max-connections-per-identity", "0"])
            .env("SWITCHBOARD_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut g = BenchGateway { addr, child };
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = g.child.try_wait() {
                bail!("gateway {node_id} exited at start ({status}); its stderr says why");
            }
            if matches!(http_get(addr, "/readyz").await, Ok((200, _))) {
                return Ok(g);
            }
            if started.elapsed() > GATEWAY_READY_TIMEOUT {
                bail!("gateway {node_id} was not ready (/readyz) in time");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_fields_are_read_by_name() {
        let info = "# Server\r\nprocess_id:4242\r\ncluster_state:ok\r\nprocess_idx:1\r\n";
        assert_eq!(info_field(info, "process_id"), Some("4242"));
        assert_eq!(info_field(info, "cluster_state"), Some("ok"));
        assert_eq!(info_field(info, "missing"), None);
    }
}
