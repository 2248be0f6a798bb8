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
//!   read takes a dedicated `ClusterConnection` from a small pool (deadpool's managed pool; one
//!   connection per fetch loop, and a worker runs one fetch loop per slot of its queues).
//!
//! When a slot moves (resharding) its owner pushes an `sunsubscribe` nobody asked for, and when
//! a node fails its connection reports a disconnection: in both cases [`Sharded`] notes which
//! wanted channels must be subscribed again, and a task does so until every one is confirmed,
//! asking the slot's owner of the moment (a stale slot map is refreshed by the `MOVED` or the
//! connection error the old owner gives). The topic sink hears of it as a lost subscription,
//! so history topics read back what the gap missed.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use deadpool::managed::{self, Metrics, Pool, RecycleResult};
use futures_util::future::join_all;
use redis::cluster::{ClusterClient, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{MultipleNodeRoutingInfo, ResponsePolicy, RoutingInfo};
use redis::{PushInfo, RedisError, Value};

use crate::links::OnPush;
use crate::options::ClusterTarget;
use crate::slots::slot;

/// Dedicated connections for blocking reads, at most: one per fetch loop of this process.
const BLOCKING_POOL_MAX: usize = 64;

/// Waited before subscribing again after a moved slot or a lost node, so that the cluster has
/// a moment to settle; doubled on every failed attempt up to [`RESUBSCRIBE_MAX_WAIT`].
const RESUBSCRIBE_FIRST_WAIT: Duration = Duration::from_millis(100);
const RESUBSCRIBE_MAX_WAIT: Duration = Duration::from_secs(2);

/// The sharded channels this process wants, and those to subscribe again. Shared by the push
/// handler (which learns of moved slots and lost nodes) and the resubscribing task.
#[derive(Default)]
pub(crate) struct Sharded {
    wanted: Mutex<HashSet<String>>,
    again: Mutex<HashSet<String>>,
    wake: tokio::sync::Notify,
}

impl Sharded {
    /// A wanted channel's slot moved away (the server's own `sunsubscribe`): subscribe again.
    /// Returns whether the channel is still wanted (`false`: the confirmation of our own
    /// unsubscribe).
    pub(crate) fn moved(&self, channel: &str) -> bool {
        if !lock(&self.wanted).contains(channel) {
            return false;
        }
        lock(&self.again).insert(channel.to_owned());
        self.wake.notify_one();
        true
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

/// See the module docs.
pub(crate) struct ClusterLinks {
    commands: ClusterConnection,
    pubsub: ClusterConnection,
    blocking: Pool<BlockingManager>,
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
        .max_size(BLOCKING_POOL_MAX)
        .build()
        .map_err(|e| format!("the blocking-read pool: {e}"))?;
        let links = Arc::new(ClusterLinks {
            commands,
            pubsub,
            blocking,
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
                match subscribe {
                    true => conn.ssubscribe(group).await,
                    false => conn.sunsubscribe(group).await,
                }
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
        redis::cmd("PING").query_async::<Value>(conn).await?;
        Ok(())
    }
}

fn io_error(message: String) -> RedisError {
    RedisError::from(std::io::Error::other(message))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
