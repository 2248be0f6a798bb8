//! Redis Cluster mode (`--redis-cluster`): the connections, and what keeps topic subscriptions
//! on the shard that owns them.
//!
//! - **commands**: one multiplexed `ClusterConnection` (RESP3). redis-rs finds every node from
//!   the seeds, routes each command by its key's slot, follows `MOVED` and `ASK`, and refreshes
//!   the slot map when a node fails (a replica promoted after a primary failed).
//! - **pub/sub**: a second `ClusterConnection` whose pushes go to the backend's handler. Topics
//!   are sharded channels: `SSUBSCRIBE` is sent to the primary that owns the channel's slot,
//!   one command per slot (a command's channels must share a slot). Control channels
//!   (`<prefix>:c:*`) are classic `SUBSCRIBE`s, which a cluster broadcasts to every node.
//! - **blocking**: workers' `XREADGROUP ... BLOCK` would stall a multiplexed connection, so each
//!   read takes a dedicated `ClusterConnection` from a small pool (deadpool's managed pool). A
//!   read's streams must share a slot, so a fetch over queues of several slots runs one read per
//!   slot at once and returns as soon as any of them has jobs; the others stay in flight (their
//!   connections blocked in Redis) and the next fetch collects what they bring. Nothing is
//!   cancelled mid-read, so no entry Redis handed out is dropped on the floor.
//!
//! When a slot moves (resharding) its owner pushes an `sunsubscribe` nobody asked for, and when
//! a node fails its connection reports a disconnection: in both cases [`Sharded`] notes which
//! wanted channels must be subscribed again, and a task does so until every one is confirmed,
//! asking the slot's owner of the moment (a stale slot map is refreshed by the `MOVED` or the
//! connection error the old owner gives). The topic sink hears of it as a lost subscription,
//! so history topics read back what the gap missed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use deadpool::managed::{self, Metrics, Pool, RecycleResult};
use futures_util::future::join_all;
use redis::cluster::{ClusterClient, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{
    MultipleNodeRoutingInfo, ResponsePolicy, RoutingInfo, SingleNodeRoutingInfo,
};
use redis::streams::{StreamKey, StreamReadReply};
use redis::{PushInfo, RedisError, Value};
use tokio::task::JoinHandle;

use crate::links::OnPush;
use crate::options::ClusterTarget;
use crate::slots::slot;

/// Waited before subscribing again after a moved slot or a lost node, so that the cluster has
/// a moment to settle; doubled on every failed attempt up to [`RESUBSCRIBE_MAX_WAIT`].
const RESUBSCRIBE_FIRST_WAIT: Duration = Duration::from_millis(100);
const RESUBSCRIBE_MAX_WAIT: Duration = Duration::from_secs(2);

/// How long the confirmation of our own `SUNSUBSCRIBE` is waited for; one arriving later reads
/// as a moved slot (a harmless extra resubscribe and recovery).
const LEAVE_CONFIRM_WINDOW: Duration = Duration::from_secs(10);

/// The sharded channels this process wants, and those to subscribe again. Shared by the push
/// handler (which learns of moved slots and lost nodes) and the resubscribing task.
#[derive(Default)]
pub(crate) struct Sharded {
    wanted: Mutex<HashSet<String>>,
    again: Mutex<HashSet<String>>,
    /// Our own `SUNSUBSCRIBE`s not yet confirmed, per channel: their confirmations are the
    /// same push as a moved slot's, and must not read as one (a topic unsubscribed and at
    /// once subscribed again is wanted when its confirmation arrives).
    leaving: Mutex<HashMap<String, Vec<tokio::time::Instant>>>,
    wake: tokio::sync::Notify,
}

impl Sharded {
    /// A wanted channel's slot moved away (the server's own `sunsubscribe`): subscribe again.
    /// Returns whether the channel is still wanted (`false`: the confirmation of our own
    /// unsubscribe).
    pub(crate) fn moved(&self, channel: &str) -> bool {
        if self.confirmed(channel) || !lock(&self.wanted).contains(channel) {
            return false;
        }
        lock(&self.again).insert(channel.to_owned());
        self.wake.notify_one();
        true
    }

    /// Notes our `SUNSUBSCRIBE` of `channels`, before it is sent: its confirmation is
    /// expected within [`LEAVE_CONFIRM_WINDOW`] (one that never comes, a command dropped on a
    /// timeout, is forgotten then, so a later move of the channel still reads as one).
    fn leave(&self, channels: &[String]) {
        let until = tokio::time::Instant::now() + LEAVE_CONFIRM_WINDOW;
        let mut leaving = lock(&self.leaving);
        for c in channels {
            leaving.entry(c.clone()).or_default().push(until);
        }
    }

    /// Takes back the note of an `SUNSUBSCRIBE` that failed (no confirmation will come).
    fn left_failed(&self, channels: &[String]) {
        for c in channels {
            self.confirmed(c);
        }
    }

    /// Whether an `SUNSUBSCRIBE` of ours was awaiting its confirmation for `channel` (now one
    /// fewer).
    fn confirmed(&self, channel: &str) -> bool {
        let now = tokio::time::Instant::now();
        let mut leaving = lock(&self.leaving);
        let Some(pending) = leaving.get_mut(channel) else {
            return false;
        };
        pending.retain(|until| *until > now);
        let mine = !pending.is_empty();
        if mine {
            pending.remove(0);
        }
        if pending.is_empty() {
            leaving.remove(channel);
        }
        mine
    }

    /// A node's connection dropped: every wanted channel is subscribed again (those whose node
    /// is alive simply confirm).
    pub(crate) fn lost(&self) {
        let wanted = lock(&self.wanted).clone();
        if wanted.is_empty() {
            return;
        }
        lock(&self.again).extend(wanted);
        self.wake.notify_one();
    }
}

/// A blocking read in flight: whose (the consumer) and which streams (one slot's, sorted).
type ReadKey = (String, Vec<String>);

type Read = JoinHandle<redis::RedisResult<Option<StreamReadReply>>>;

/// See the module docs.
pub(crate) struct ClusterLinks {
    commands: ClusterConnection,
    pubsub: ClusterConnection,
    blocking: Pool<BlockingManager>,
    /// Blocking reads still running from an earlier fetch.
    reads: Mutex<HashMap<ReadKey, Read>>,
    sharded: Arc<Sharded>,
    op_timeout: Duration,
}

impl ClusterLinks {
    /// Connections to the cluster, opened in the background (a node starts not ready while the
    /// cluster is away), and the resubscribing task (it ends when the links are dropped). Call
    /// it inside a Tokio runtime.
    pub(crate) fn connect(
        target: &ClusterTarget,
        on_push: OnPush,
        sharded: Arc<Sharded>,
    ) -> Result<Arc<ClusterLinks>, String> {
        let client = target.client()?;
        let base = ClusterConfig::new().set_connection_timeout(target.connect_timeout);
        let commands = client.get_pending_async_connection_with_config(
            base.clone().set_response_timeout(target.op_timeout),
        );
        let sender = move |info: PushInfo| -> Result<(), std::convert::Infallible> {
            on_push(info);
            Ok(())
        };
        let pubsub = client.get_pending_async_connection_with_config(
            base.set_response_timeout(target.op_timeout)
                .set_push_sender(sender),
        );
        let blocking = Pool::builder(BlockingManager {
            client,
            connect_timeout: target.connect_timeout,
        })
        .max_size(target.blocking_connections)
        // The waits and checks are bounded (`timeout_get`), which needs the runtime.
        .runtime(deadpool::Runtime::Tokio1)
        .build()
        .map_err(|e| format!("the blocking-read pool: {e}"))?;
        let links = Arc::new(ClusterLinks {
            commands,
            pubsub,
            blocking,
            reads: Mutex::new(HashMap::new()),
            sharded: sharded.clone(),
            op_timeout: target.op_timeout,
        });
        tokio::spawn(resubscribe(Arc::downgrade(&links), sharded));
        Ok(links)
    }

    pub(crate) fn commands(&self) -> ClusterConnection {
        self.commands.clone()
    }

    pub(crate) fn pubsub(&self) -> ClusterConnection {
        self.pubsub.clone()
    }

    /// How many dedicated connections blocking reads may hold at once.
    pub(crate) fn blocking_max(&self) -> usize {
        self.blocking.status().max_size
    }

    /// A dedicated connection for one blocking read; back to the pool when dropped.
    pub(crate) async fn blocking(&self) -> Result<managed::Object<BlockingManager>, RedisError> {
        let timeouts = managed::Timeouts {
            wait: Some(self.op_timeout),
            create: Some(self.op_timeout),
            recycle: Some(self.op_timeout),
        };
        self.blocking
            .timeout_get(&timeouts)
            .await
            .map_err(|e| match e {
                managed::PoolError::Backend(e) => e,
                other => io_error(format!("no connection for a blocking read: {other}")),
            })
    }

    /// `XREADGROUP GROUP <group> <consumer> COUNT <max> BLOCK <block> STREAMS <keys...> >...`
    /// over streams of any slots: one read per slot, each on its own dedicated connection, all
    /// at once; returns when one has entries or all are done (or after `block` plus the
    /// operation timeout). Reads still running stay in flight for the next call, which also
    /// collects any of this consumer's reads that finished meanwhile.
    pub(crate) async fn read_groups(
        self: &Arc<Self>,
        group: &str,
        consumer: &str,
        keys: &[String],
        max: usize,
        block: Duration,
    ) -> redis::RedisResult<Vec<StreamKey>> {
        let mut by_slot: BTreeMap<u16, Vec<String>> = BTreeMap::new();
        for k in keys {
            by_slot
                .entry(slot(k.as_bytes()))
                .or_default()
                .push(k.clone());
        }
        let mut running: Vec<(ReadKey, Read)> = Vec::with_capacity(by_slot.len());
        let mut finished: Vec<Read> = Vec::new();
        {
            let mut reads = lock(&self.reads);
            for (_, mut streams) in by_slot {
                streams.sort();
                let key = (consumer.to_owned(), streams);
                let read = match reads.remove(&key) {
                    Some(read) => read,
                    None => tokio::spawn(read_one(
                        self.clone(),
                        group.to_owned(),
                        key.clone(),
                        max,
                        block,
                    )),
                };
                running.push((key, read));
            }
            // Reads of queues this consumer no longer asks for (a socket that offered tools
            // left): collected once they are done.
            let stale: Vec<ReadKey> = reads
                .iter()
                .filter(|((c, _), read)| c == consumer && read.is_finished())
                .map(|(k, _)| k.clone())
                .collect();
            finished.extend(stale.into_iter().filter_map(|k| reads.remove(&k)));
        }
        let mut out = Vec::new();
        let mut error = None;
        let mut absorb = |joined: Result<
            redis::RedisResult<Option<StreamReadReply>>,
            tokio::task::JoinError,
        >| {
            match joined {
                Ok(Ok(reply)) => out.extend(reply.map(|r| r.keys).unwrap_or_default()),
                Ok(Err(e)) => error = Some(e),
                Err(e) => error = Some(io_error(format!("a blocking read failed: {e}"))),
            }
        };
        for read in finished {
            absorb(read.await);
        }
        let bound = block + self.op_timeout;
        let first = tokio::time::timeout(
            bound,
            futures_util::future::select_all(running.iter_mut().map(|(_, read)| read)),
        )
        .await;
        let mut done = None;
        if let Ok((joined, index, _)) = first {
            done = Some(index);
            absorb(joined);
        }
        let mut later = Vec::new();
        for (i, (key, read)) in running.into_iter().enumerate() {
            if Some(i) == done {
                continue;
            }
            if read.is_finished() {
                absorb(read.await);
            } else {
                later.push((key, read));
            }
        }
        lock(&self.reads).extend(later);
        match error {
            Some(e) if out.is_empty() => Err(e),
            _ => Ok(out),
        }
    }

    /// Subscribes sharded channels (topics), each on the primary that owns its slot.
    pub(crate) async fn ssubscribe(&self, channels: Vec<String>) -> redis::RedisResult<()> {
        lock(&self.sharded.wanted).extend(channels.iter().cloned());
        self.by_slot(channels, true).await
    }

    pub(crate) async fn sunsubscribe(&self, channels: Vec<String>) -> redis::RedisResult<()> {
        {
            let mut wanted = lock(&self.sharded.wanted);
            let mut again = lock(&self.sharded.again);
            for c in &channels {
                wanted.remove(c);
                again.remove(c);
            }
        }
        self.by_slot(channels, false).await
    }

    /// One `SSUBSCRIBE`/`SUNSUBSCRIBE` per slot, all at once.
    async fn by_slot(&self, channels: Vec<String>, subscribe: bool) -> redis::RedisResult<()> {
        let mut groups: HashMap<u16, Vec<String>> = HashMap::new();
        for c in channels {
            groups.entry(slot(c.as_bytes())).or_default().push(c);
        }
        let sends = groups.into_values().map(|group| {
            let mut conn = self.pubsub.clone();
            async move {
                if subscribe {
                    return conn.ssubscribe(group).await;
                }
                self.sharded.leave(&group);
                let sent = conn.sunsubscribe(group.clone()).await;
                if sent.is_err() {
                    self.sharded.left_failed(&group);
                }
                sent
            }
        });
        join_all(sends).await.into_iter().collect()
    }

    /// Subscribes classic channels (the control channels, broadcast to every node). redis-rs
    /// keeps them across reconnections and moves them off a node that left.
    pub(crate) async fn subscribe(&self, channels: Vec<String>) -> redis::RedisResult<()> {
        let mut conn = self.pubsub.clone();
        conn.subscribe(channels).await
    }

    /// `PING` on both multiplexed connections, answered by any primary: the node can serve.
    /// (One shard failing over is not a reason to take every gateway out of rotation; its
    /// errors show in `switchboard_redis_errors_total`.)
    pub(crate) async fn ping(&self) -> redis::RedisResult<()> {
        let routing = RoutingInfo::MultiNode((
            MultipleNodeRoutingInfo::AllMasters,
            Some(ResponsePolicy::OneSucceeded),
        ));
        let (mut a, mut b) = (self.commands.clone(), self.pubsub.clone());
        let (x, y) = tokio::join!(
            a.route_command(redis::cmd("PING"), routing.clone()),
            b.route_command(redis::cmd("PING"), routing),
        );
        x.and(y).map(drop)
    }

    /// Loads the function library on every primary that lacks it (a primary added later
    /// included). `FUNCTION LIST` is asked of each primary; `FUNCTION LOAD REPLACE` goes to
    /// all of them only when one lacks it. Returns how many primaries lacked it.
    pub(crate) async fn ensure_library(&self, name: &str, code: &str) -> redis::RedisResult<usize> {
        let mut conn = self.commands.clone();
        let mut list = redis::cmd("FUNCTION");
        list.arg("LIST").arg("LIBRARYNAME").arg(name);
        let answers = conn
            .route_command(
                list,
                RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None)),
            )
            .await?;
        let lacking = per_node(&answers)
            .iter()
            .filter(|(_, v)| matches!(v, Value::Array(a) if a.is_empty()))
            .count();
        if lacking > 0 {
            let mut load = redis::cmd("FUNCTION");
            load.arg("LOAD").arg("REPLACE").arg(code);
            conn.route_command(
                load,
                RoutingInfo::MultiNode((
                    MultipleNodeRoutingInfo::AllMasters,
                    Some(ResponsePolicy::AllSucceeded),
                )),
            )
            .await?;
        }
        Ok(lacking)
    }
}

/// The answers of a multi-node command, one per node: redis-rs gives a map of address to
/// answer (or one answer when there is one node).
fn per_node(v: &Value) -> Vec<(String, Value)> {
    match v {
        Value::Map(pairs) => pairs
            .iter()
            .map(|(k, v)| (crate::text(k).unwrap_or_default(), v.clone()))
            .collect(),
        other => vec![(String::new(), other.clone())],
    }
}

/// Subscribes again, until confirmed, every channel [`Sharded`] says moved or lost its node.
async fn resubscribe(links: Weak<ClusterLinks>, sharded: Arc<Sharded>) {
    let mut wait = RESUBSCRIBE_FIRST_WAIT;
    loop {
        sharded.wake.notified().await;
        loop {
            tokio::time::sleep(wait).await;
            let Some(l) = links.upgrade() else { return };
            let again: Vec<String> = {
                let wanted = lock(&sharded.wanted);
                lock(&sharded.again)
                    .drain()
                    .filter(|c| wanted.contains(c))
                    .collect()
            };
            if again.is_empty() {
                wait = RESUBSCRIBE_FIRST_WAIT;
                break;
            }
            let n = again.len();
            let sent = tokio::time::timeout(l.op_timeout, l.by_slot(again.clone(), true)).await;
            match sent {
                Ok(Ok(())) => {
                    tracing::info!(channels = n, "Redis Cluster: topics subscribed again");
                    wait = RESUBSCRIBE_FIRST_WAIT;
                    // A topic unsubscribed while this was in flight may have been subscribed
                    // again after its `SUNSUBSCRIBE`: leave it once more.
                    let gone: Vec<String> = {
                        let wanted = lock(&sharded.wanted);
                        again.into_iter().filter(|c| !wanted.contains(c)).collect()
                    };
                    if !gone.is_empty() {
                        let _ = tokio::time::timeout(l.op_timeout, l.by_slot(gone.clone(), false))
                            .await;
                        // Subscribed once more meanwhile? Its `SSUBSCRIBE` may have gone out
                        // before this `SUNSUBSCRIBE`: subscribe it again.
                        let wanted = lock(&sharded.wanted);
                        let back: Vec<String> =
                            gone.into_iter().filter(|c| wanted.contains(c)).collect();
                        if !back.is_empty() {
                            lock(&sharded.again).extend(back);
                            sharded.wake.notify_one();
                        }
                    }
                }
                failed => {
                    let error = match failed {
                        Ok(Err(e)) => e.to_string(),
                        _ => "timed out".to_owned(),
                    };
                    tracing::warn!(channels = n, %error, "Redis Cluster: subscribing again failed; retrying");
                    lock(&sharded.again).extend(again);
                    wait = (wait * 2).min(RESUBSCRIBE_MAX_WAIT);
                }
            }
        }
    }
}

/// One blocking read of one slot's streams, on a dedicated connection.
async fn read_one(
    links: Arc<ClusterLinks>,
    group: String,
    (consumer, streams): ReadKey,
    max: usize,
    block: Duration,
) -> redis::RedisResult<Option<StreamReadReply>> {
    let mut conn = links.blocking().await?;
    let mut read = redis::cmd("XREADGROUP");
    read.arg("GROUP")
        .arg(group)
        .arg(consumer)
        .arg("COUNT")
        .arg(max)
        .arg("BLOCK")
        .arg(block.as_millis() as u64)
        .arg("STREAMS")
        .arg(&streams);
    for _ in &streams {
        read.arg(">");
    }
    tokio::time::timeout(block + links.op_timeout, read.query_async(&mut *conn))
        .await
        .map_err(|_| io_error("a blocking read timed out".into()))?
}

/// Makes and checks the blocking-read connections.
pub(crate) struct BlockingManager {
    client: ClusterClient,
    connect_timeout: Duration,
}

impl managed::Manager for BlockingManager {
    type Type = ClusterConnection;
    type Error = RedisError;

    async fn create(&self) -> Result<ClusterConnection, RedisError> {
        // No response timeout: each blocking read bounds itself.
        let config = ClusterConfig::new().set_connection_timeout(self.connect_timeout);
        self.client.get_async_connection_with_config(config).await
    }

    async fn recycle(
        &self,
        conn: &mut ClusterConnection,
        _: &Metrics,
    ) -> RecycleResult<RedisError> {
        // One node's answer: a plain `PING` goes to every primary, and one shard failing over
        // would then throw away every pooled connection.
        conn.route_command(
            redis::cmd("PING"),
            RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
        )
        .await?;
        Ok(())
    }
}

fn io_error(message: String) -> RedisError {
    RedisError::from(std::io::Error::other(message))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wanting(channels: &[&str]) -> Sharded {
        let s = Sharded::default();
        lock(&s.wanted).extend(channels.iter().map(|c| c.to_string()));
        s
    }

    #[tokio::test(start_paused = true)]
    async fn a_moved_slot_is_told_from_our_own_unsubscribe() {
        let s = wanting(&["sb:t:{a}"]);
        // A slot that moved: subscribe again.
        assert!(s.moved("sb:t:{a}"));
        assert!(lock(&s.again).contains("sb:t:{a}"));
        lock(&s.again).clear();
        // Unsubscribed and at once subscribed again: the late confirmation is ours.
        s.leave(&["sb:t:{a}".to_owned()]);
        assert!(!s.moved("sb:t:{a}"));
        assert!(lock(&s.again).is_empty());
        // Each confirmation is counted once: the next push is a move again.
        assert!(s.moved("sb:t:{a}"));
        lock(&s.again).clear();
        // An unsubscribe that failed expects no confirmation.
        s.leave(&["sb:t:{a}".to_owned()]);
        s.left_failed(&["sb:t:{a}".to_owned()]);
        assert!(s.moved("sb:t:{a}"));
        lock(&s.again).clear();
        // One whose confirmation never came (dropped on a timeout) is forgotten in time.
        s.leave(&["sb:t:{a}".to_owned()]);
        tokio::time::advance(LEAVE_CONFIRM_WINDOW + Duration::from_millis(1)).await;
        assert!(s.moved("sb:t:{a}"));
        assert!(lock(&s.leaving).is_empty());
        // A channel not wanted is never subscribed again.
        assert!(!s.moved("sb:t:{b}"));
    }
}
