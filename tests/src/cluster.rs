//! [`RedisCluster`]: a real local Redis Cluster for the tests, started the way an operator would
//! start one: `redis-server --cluster-enabled yes` processes on free loopback ports (each with a
//! cluster bus port of its own, `--cluster-port`, so no port is derived from another), joined
//! with `redis-cli --cluster create`, and waited on until every node says `cluster_state:ok`
//! and all agree on who owns which slot.
//!
//! It also does to a cluster what production does to it, with the real commands: a primary
//! killed with SIGKILL and a replica promoted by the cluster itself
//! ([`kill9_primary_of`](RedisCluster::kill9_primary_of), [`wait_failover`](RedisCluster::wait_failover)),
//! and a slot resharded to another primary
//! ([`migrate_slot_of`](RedisCluster::migrate_slot_of): `CLUSTER SETSLOT IMPORTING/MIGRATING`,
//! `MIGRATE` of the slot's keys, `SETSLOT NODE` on every primary, after which the old owner
//! pushes `sunsubscribe` to the slot's sharded subscribers). Backends' ways of publishing
//! ([`spublish`](RedisCluster::spublish), [`fcall_publish`](RedisCluster::fcall_publish)) and
//! the reads the tests check state with go through a redis-rs cluster connection (RESP3), which
//! follows `MOVED`/`ASK` as any client would.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use redis::ProtocolVersion;
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use tokio::process::{Child, Command};

use crate::redis_extra::TempDir;
use crate::{eventually_within, free_port};

/// The key prefix the tests' nodes run with (the default `--redis-prefix`).
const PREFIX: &str = "sb";
/// `--cluster-node-timeout`: how long a silent node takes to be marked failing. Short, so a
/// failover takes about two of these instead of the default 15 s.
pub const NODE_TIMEOUT: Duration = Duration::from_millis(1000);
/// How long one `redis-server` may take to listen.
const NODE_START: Duration = Duration::from_secs(5);
/// How many times a node is started on other ports when it lost a race for its ports.
const PORT_ATTEMPTS: usize = 5;
/// How long the cluster may take to agree on its slots (after a create or a migration).
const SETTLE: Duration = Duration::from_secs(30);
/// How long a replica may take to be promoted after its primary was killed: the failure
/// detection (a few node timeouts) plus the election, with room for two busy cores.
const FAILOVER: Duration = Duration::from_secs(30);
/// One test-side command to one node (connect or answer), before the attempt counts as failed.
const NODE_COMMAND: Duration = Duration::from_secs(2);
/// `MIGRATE`'s own timeout (ms) for moving one batch of keys.
const MIGRATE_TIMEOUT_MS: u64 = 5000;
/// How many keys one `MIGRATE` moves.
const MIGRATE_BATCH: usize = 100;
/// Redis Cluster's slot count.
const SLOTS: u32 = 16384;

/// One `redis-server` of the cluster.
struct Node {
    port: u16,
    /// `None` once killed.
    child: Option<Child>,
}

/// A node as the cluster knows it: its client port and its 40-hex node id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterNode {
    pub port: u16,
    pub id: String,
}

impl ClusterNode {
    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A plain connection to this node only (no redirections followed): for commands about
    /// the node itself (`ROLE`, `FUNCTION LIST`, `CLUSTER ...`).
    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        node_connection(self.port)
            .await
            .unwrap_or_else(|| panic!("node {} did not answer", self.port))
    }
}

/// What one node says the cluster is: each live primary's slot ranges, and each live replica's
/// primary (by port). Nodes flagged `fail` are left out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Topology {
    /// Primary -> its node id and slot ranges (inclusive).
    pub primaries: BTreeMap<u16, (String, Vec<(u16, u16)>)>,
    /// Replica -> its node id and the port of its primary.
    pub replicas: BTreeMap<u16, (String, u16)>,
}

impl Topology {
    /// Parses `CLUSTER NODES`.
    fn parse(nodes: &str) -> Topology {
        let mut ids = BTreeMap::new();
        let mut lines = Vec::new();
        for line in nodes.lines().filter(|l| !l.trim().is_empty()) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 8 {
                continue;
            }
            let Some(port) = f[1]
                .split(['@', ','])
                .next()
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| p.parse::<u16>().ok())
            else {
                continue;
            };
            ids.insert(f[0].to_owned(), port);
            lines.push((port, f));
        }
        let mut t = Topology::default();
        for (port, f) in lines {
            let flags: Vec<&str> = f[2].split(',').collect();
            if flags
                .iter()
                .any(|x| matches!(*x, "fail" | "handshake" | "noaddr"))
            {
                continue;
            }
            if flags.contains(&"master") {
                let ranges = f[8..]
                    .iter()
                    .filter(|s| !s.starts_with('['))
                    .filter_map(|s| {
                        let (a, b) = s.split_once('-').unwrap_or((s, s));
                        Some((a.parse().ok()?, b.parse().ok()?))
                    })
                    .collect();
                t.primaries.insert(port, (f[0].to_owned(), ranges));
            } else if flags.contains(&"slave")
                && let Some(&primary) = ids.get(f[3])
            {
                t.replicas.insert(port, (f[0].to_owned(), primary));
            }
        }
        t
    }

    /// How many slots the primaries cover together.
    pub fn covered(&self) -> u32 {
        self.primaries
            .values()
            .flat_map(|(_, r)| r)
            .map(|(a, b)| u32::from(*b) - u32::from(*a) + 1)
            .sum()
    }

    /// The primary owning `slot`.
    pub fn owner(&self, slot: u16) -> Option<ClusterNode> {
        self.primaries.iter().find_map(|(port, (id, ranges))| {
            ranges
                .iter()
                .any(|(a, b)| (*a..=*b).contains(&slot))
                .then(|| ClusterNode {
                    port: *port,
                    id: id.clone(),
                })
        })
    }
}

/// A local Redis Cluster: `primaries` primaries with `replicas_per_primary` replicas each, on
/// free loopback ports, killed (and their directory removed) on drop.
pub struct RedisCluster {
    nodes: Vec<Node>,
    dir: TempDir,
}

impl RedisCluster {
    /// Starts the nodes, creates the cluster (`redis-cli --cluster create`) and waits until it
    /// is whole: every node `cluster_state:ok`, all agreeing on `primaries` primaries covering
    /// the 16384 slots, each with `replicas_per_primary` replicas whose replication link is up.
    pub async fn start(primaries: usize, replicas_per_primary: usize) -> RedisCluster {
        assert!(
            primaries >= 3,
            "redis-cli --cluster create wants at least 3 primaries"
        );
        let dir = TempDir::new("cluster");
        let mut nodes = Vec::new();
        for _ in 0..primaries * (1 + replicas_per_primary) {
            nodes.push(Node::start(&dir).await);
        }
        let cluster = RedisCluster { nodes, dir };
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(
                cluster
                    .nodes
                    .iter()
                    .map(|n| format!("127.0.0.1:{}", n.port)),
            )
            .args([
                "--cluster-replicas",
                &replicas_per_primary.to_string(),
                "--cluster-yes",
            ])
            .stdin(Stdio::null())
            .output()
            .await
            .expect("redis-cli not found: run scripts/test, which installs it");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let t = cluster.wait_settled("the new cluster").await;
        assert_eq!(t.primaries.len(), primaries, "{t:?}");
        assert_eq!(t.replicas.len(), primaries * replicas_per_primary, "{t:?}");
        cluster.wait_replication().await;
        cluster
    }

    /// The ports of the nodes still running.
    fn live_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.port)
            .collect()
    }

    /// `redis://127.0.0.1:<port>` of every node still running.
    pub fn urls(&self) -> Vec<String> {
        self.live_ports()
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect()
    }

    /// The seed list for `--redis-cluster` (every running node, comma-joined).
    pub fn seeds(&self) -> String {
        self.urls().join(",")
    }

    /// A cluster connection (redis-rs, RESP3) for test-side commands on keys: routed by slot,
    /// following `MOVED` and `ASK`.
    pub async fn connection(&self) -> ClusterConnection {
        ClusterClientBuilder::new(self.urls())
            .use_protocol(ProtocolVersion::RESP3)
            .build()
            .expect("cluster client")
            .get_async_connection()
            .await
            .expect("connect to the test cluster")
    }

    /// The cluster as the first running node that answers sees it.
    pub async fn topology(&self) -> Topology {
        for port in self.live_ports() {
            if let Some(nodes) = cluster_nodes(port).await {
                return Topology::parse(&nodes);
            }
        }
        panic!("no node of the cluster answers");
    }

    /// The live primaries.
    pub async fn primaries(&self) -> Vec<ClusterNode> {
        self.topology()
            .await
            .primaries
            .into_iter()
            .map(|(port, (id, _))| ClusterNode { port, id })
            .collect()
    }

    /// The slot of `key` (`CLUSTER KEYSLOT`, asked of the cluster).
    pub async fn slot_of(&self, key: &str) -> u16 {
        for port in self.live_ports() {
            if let Some(mut c) = node_connection(port).await
                && let Ok(Ok(slot)) = tokio::time::timeout(
                    NODE_COMMAND,
                    redis::cmd("CLUSTER")
                        .arg("KEYSLOT")
                        .arg(key)
                        .query_async::<u16>(&mut c),
                )
                .await
            {
                return slot;
            }
        }
        panic!("no node of the cluster answers");
    }

    /// The primary that owns `key`'s slot now.
    pub async fn primary_for_key(&self, key: &str) -> ClusterNode {
        let slot = self.slot_of(key).await;
        self.topology()
            .await
            .owner(slot)
            .unwrap_or_else(|| panic!("no primary owns slot {slot}"))
    }

    /// The primary holding `topic`'s keys and channel (`<prefix>:t:{<topic>}`).
    pub async fn primary_for_topic(&self, topic: &str) -> ClusterNode {
        self.primary_for_key(&format!("{PREFIX}:t:{{{topic}}}"))
            .await
    }

    /// Kills the primary owning `key`'s slot with SIGKILL (no goodbye to anyone); the cluster
    /// promotes one of its replicas ([`wait_failover`](Self::wait_failover)). The killed node.
    pub async fn kill9_primary_of(&mut self, key: &str) -> ClusterNode {
        let victim = self.primary_for_key(key).await;
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.port == victim.port)
            .expect("the primary is one of ours");
        if let Some(mut c) = node.child.take() {
            let _ = c.kill().await;
        }
        victim
    }

    /// Waits until the cluster has healed after a primary was killed: every running node says
    /// `cluster_state:ok`, they agree on the slots, the live primaries (a promoted replica among
    /// them) cover all 16384 slots, and each answers `ROLE` as a master.
    pub async fn wait_failover(&self) -> Topology {
        eventually_within(
            "a replica to take over the killed primary",
            FAILOVER,
            || async move {
                let t = self.settled().await?;
                for port in t.primaries.keys() {
                    if !is_master(*port).await {
                        return None;
                    }
                }
                Some(t)
            },
        )
        .await
    }

    /// Moves `key`'s slot to the primary `to` the way `redis-cli --cluster reshard` does:
    /// `SETSLOT <slot> IMPORTING` on `to`, `MIGRATING` on the owner, `MIGRATE` of the slot's
    /// keys in batches, then `SETSLOT <slot> NODE <to>` on `to`, the old owner (which then
    /// pushes `sunsubscribe` to the slot's sharded subscribers) and every other primary; and
    /// waits until all nodes agree. The slot.
    pub async fn migrate_slot_of(&self, key: &str, to: &ClusterNode) -> u16 {
        let slot = self.slot_of(key).await;
        let from = self.primary_for_key(key).await;
        assert_ne!(&from, to, "slot {slot} is already on {}", to.port);
        let mut src = from.connection().await;
        let mut dst = to.connection().await;
        let setslot = |state: &str, id: &str| {
            let mut c = redis::cmd("CLUSTER");
            c.arg("SETSLOT").arg(slot).arg(state).arg(id);
            c
        };
        let () = setslot("IMPORTING", &from.id)
            .query_async(&mut dst)
            .await
            .expect("SETSLOT IMPORTING");
        let () = setslot("MIGRATING", &to.id)
            .query_async(&mut src)
            .await
            .expect("SETSLOT MIGRATING");
        loop {
            let keys: Vec<String> = redis::cmd("CLUSTER")
                .arg("GETKEYSINSLOT")
                .arg(slot)
                .arg(MIGRATE_BATCH)
                .query_async(&mut src)
                .await
                .expect("GETKEYSINSLOT");
            if keys.is_empty() {
                break;
            }
            let () = redis::cmd("MIGRATE")
                .arg("127.0.0.1")
                .arg(to.port)
                .arg("")
                .arg(0)
                .arg(MIGRATE_TIMEOUT_MS)
                .arg("KEYS")
                .arg(&keys)
                .query_async(&mut src)
                .await
                .expect("MIGRATE");
        }
        let () = setslot("NODE", &to.id)
            .query_async(&mut dst)
            .await
            .expect("SETSLOT NODE on the new owner");
        let () = setslot("NODE", &to.id)
            .query_async(&mut src)
            .await
            .expect("SETSLOT NODE on the old owner");
        for p in self.primaries().await {
            if p.port != from.port && p.port != to.port {
                let () = setslot("NODE", &to.id)
                    .query_async(&mut p.connection().await)
                    .await
                    .expect("SETSLOT NODE on another primary");
            }
        }
        eventually_within(
            &format!("slot {slot} to be {}'s everywhere", to.port),
            SETTLE,
            {
                async || {
                    let t = self.settled().await?;
                    (t.owner(slot).as_ref() == Some(to)).then_some(())
                }
            },
        )
        .await;
        slot
    }

    /// `SPUBLISH <prefix>:t:{<topic>} <payload>`, as a backend publishes a live event in a
    /// cluster: how many gateway nodes the topic's shard delivered it to.
    pub async fn spublish(&self, topic: &str, payload: &str) -> i64 {
        redis::cmd("SPUBLISH")
            .arg(format!("{PREFIX}:t:{{{topic}}}"))
            .arg(payload)
            .query_async(&mut self.connection().await)
            .await
            .expect("SPUBLISH")
    }

    /// `FCALL sb_publish 1 <prefix>:h:{<topic>} <json>`, as a backend publishes with history:
    /// the event's id.
    pub async fn fcall_publish(&self, topic: &str, json: &str) -> String {
        redis::cmd("FCALL")
            .arg("sb_publish")
            .arg(1)
            .arg(format!("{PREFIX}:h:{{{topic}}}"))
            .arg(json)
            .query_async(&mut self.connection().await)
            .await
            .expect("FCALL sb_publish")
    }

    /// `PUBSUB SHARDNUMSUB` of `topic`'s live channel on the shard that owns it: how many
    /// gateway nodes hold a sharded subscription to it there.
    pub async fn shard_numsub(&self, topic: &str) -> i64 {
        let channel = format!("{PREFIX}:t:{{{topic}}}");
        let mut c = self.primary_for_key(&channel).await.connection().await;
        let counts: Vec<(String, i64)> = redis::cmd("PUBSUB")
            .arg("SHARDNUMSUB")
            .arg(&channel)
            .query_async(&mut c)
            .await
            .expect("PUBSUB SHARDNUMSUB");
        counts.into_iter().next().map_or(0, |(_, n)| n)
    }

    /// The names of the function libraries loaded on the node at `port` (`FUNCTION LIST`).
    pub async fn libraries_on(&self, node: &ClusterNode) -> Vec<String> {
        let libs: Vec<redis::Value> = redis::cmd("FUNCTION")
            .arg("LIST")
            .query_async(&mut node.connection().await)
            .await
            .expect("FUNCTION LIST");
        libs.into_iter()
            .filter_map(|lib| {
                let map: std::collections::HashMap<String, redis::Value> =
                    redis::from_redis_value(lib).ok()?;
                redis::from_redis_value(map.get("library_name")?.clone()).ok()
            })
            .collect()
    }

    /// The topology when the cluster is settled: every running node answers
    /// `cluster_state:ok`, all see the same topology, and it covers every slot.
    async fn settled(&self) -> Option<Topology> {
        let mut seen: Option<Topology> = None;
        for port in self.live_ports() {
            let mut c = node_connection(port).await?;
            let info: String = tokio::time::timeout(
                NODE_COMMAND,
                redis::cmd("CLUSTER").arg("INFO").query_async(&mut c),
            )
            .await
            .ok()?
            .ok()?;
            if !info.lines().any(|l| l.trim() == "cluster_state:ok") {
                return None;
            }
            let t = Topology::parse(&cluster_nodes(port).await?);
            match &seen {
                Some(s) if *s != t => return None,
                _ => seen = Some(t),
            }
        }
        seen.filter(|t| t.covered() == SLOTS)
    }

    async fn wait_settled(&self, what: &str) -> Topology {
        eventually_within(&format!("{what} to agree on its slots"), SETTLE, || {
            self.settled()
        })
        .await
    }

    /// Waits until every replica's link to its primary is up (a replica that never synced
    /// would not be promoted).
    async fn wait_replication(&self) {
        let replicas: Vec<u16> = self.topology().await.replicas.into_keys().collect();
        eventually_within("the replicas to sync", SETTLE, async || {
            for port in &replicas {
                let mut c = node_connection(*port).await?;
                let info: String = redis::cmd("INFO")
                    .arg("replication")
                    .query_async(&mut c)
                    .await
                    .ok()?;
                if !info.lines().any(|l| l.trim() == "master_link_status:up") {
                    return None;
                }
            }
            Some(())
        })
        .await
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(c) = n.child.as_mut() {
                let _ = c.start_kill();
            }
        }
        // `self.dir` (the nodes' config files) is removed when it drops, after this.
        let _ = &self.dir;
    }
}

impl Node {
    /// A cluster-enabled `redis-server` on two free ports (clients, cluster bus), tried on
    /// other ports when another process took one of them first.
    async fn start(dir: &TempDir) -> Node {
        for _ in 0..PORT_ATTEMPTS {
            let (port, bus) = (free_port(), free_port());
            if port == bus {
                continue;
            }
            let child = Command::new("redis-server")
                .args([
                    "--port",
                    &port.to_string(),
                    "--cluster-port",
                    &bus.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    &dir.file(&format!("nodes-{port}.conf")),
                    "--cluster-node-timeout",
                    &NODE_TIMEOUT.as_millis().to_string(),
                    // A replica takes over however long it was cut off: the tests kill
                    // primaries of clusters that are seconds old.
                    "--cluster-replica-validity-factor",
                    "0",
                    "--dir",
                    &dir.path().display().to_string(),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--maxmemory-policy",
                    "noeviction",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .expect("redis-server not found: run scripts/test, which installs it");
            let mut node = Node {
                port,
                child: Some(child),
            };
            if node.ours().await {
                return node;
            }
            if let Some(mut c) = node.child.take() {
                let _ = c.kill().await;
            }
        }
        panic!("could not start a cluster node in {PORT_ATTEMPTS} attempts");
    }

    /// Waits until the node answers, and checks the answer comes from this process (not from
    /// another test's server that won the race for the port).
    async fn ours(&mut self) -> bool {
        let start = tokio::time::Instant::now();
        while start.elapsed() < NODE_START {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                return false;
            }
            if let Some(mut c) = node_connection(self.port).await
                && let Ok(info) = redis::cmd("INFO")
                    .arg("server")
                    .query_async::<String>(&mut c)
                    .await
            {
                let pid = info
                    .lines()
                    .find_map(|l| l.strip_prefix("process_id:"))
                    .and_then(|p| p.trim().parse::<u32>().ok());
                return pid.is_some() && pid == self.child.as_ref().and_then(Child::id);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }
}

/// A plain connection to the node at `port`, or `None` when it does not answer in time.
async fn node_connection(port: u16) -> Option<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).ok()?;
    tokio::time::timeout(NODE_COMMAND, client.get_multiplexed_async_connection())
        .await
        .ok()?
        .ok()
}

/// `CLUSTER NODES` as the node at `port` sees it.
async fn cluster_nodes(port: u16) -> Option<String> {
    let mut c = node_connection(port).await?;
    tokio::time::timeout(
        NODE_COMMAND,
        redis::cmd("CLUSTER").arg("NODES").query_async(&mut c),
    )
    .await
    .ok()?
    .ok()
}

/// Whether the node at `port` answers `ROLE` as a master.
async fn is_master(port: u16) -> bool {
    let Some(mut c) = node_connection(port).await else {
        return false;
    };
    let role: redis::RedisResult<Vec<redis::Value>> = redis::cmd("ROLE").query_async(&mut c).await;
    matches!(role.ok().as_deref().and_then(|r| r.first()),
        Some(redis::Value::BulkString(b)) if b == b"master")
}
