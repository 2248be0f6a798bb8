//! The three connections (commands, pub/sub, blocking) and what replaces them when the primary
//! moves. A `ConnectionManager` reconnects to one fixed address; behind Sentinel the primary's
//! address changes on failover, so [`Links`] holds the current trio and, in Sentinel mode, a
//! task asks the Sentinels every `--redis-sentinel-poll` and at once when a command fails with a
//! connection error, a timeout or `READONLY` (a demoted primary). When they name another node
//! that answers `ROLE` as a primary, a new trio is built for it, every pub/sub channel is
//! subscribed on it, and it replaces the old one, which is dropped; only the current trio's
//! pushes reach the sinks (so a demoted primary's replicated messages are not delivered twice). The topic sink hears of the switch as of a
//! pub/sub disconnection: messages published meanwhile may be lost.

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, Pipeline, PushInfo, PushKind, RedisError, RedisFuture, Value};

use crate::sentinel::SentinelTarget;

/// The least time between two questions to the Sentinels, however many commands fail.
const MIN_RESOLVE_GAP: Duration = Duration::from_millis(100);

/// How many times a (un)subscribe is sent again because the primary changed while it ran, or a
/// switch subscribes the channels that changed meanwhile.
const RESUBSCRIBE_ATTEMPTS: usize = 3;

/// What the pub/sub connection's pushes go to.
pub(crate) type OnPush = Arc<dyn Fn(PushInfo) + Send + Sync>;

/// One set of connections to one node.
struct Trio {
    addr: String,
    commands: ConnectionManager,
    pubsub: ConnectionManager,
    blocking: ConnectionManager,
    /// Whether this trio is the current one: only its pub/sub pushes reach the sinks, so the
    /// two pub/sub connections open during a switch never deliver a message twice.
    live: Arc<AtomicBool>,
}

impl Trio {
    fn new(
        addr: String,
        client: redis::Client,
        base: &ConnectionManagerConfig,
        on_push: &OnPush,
    ) -> redis::RedisResult<Trio> {
        let commands = ConnectionManager::new_lazy_with_config(client.clone(), base.clone())?;
        // No response timeout of its own: each blocking read bounds itself.
        let blocking = ConnectionManager::new_lazy_with_config(
            client.clone(),
            base.clone().set_response_timeout(None),
        )?;
        let live = Arc::new(AtomicBool::new(false));
        let on_push = on_push.clone();
        let pushing = live.clone();
        let sender = move |info: PushInfo| -> Result<(), Infallible> {
            if pushing.load(Ordering::Acquire) {
                on_push(info);
            }
            Ok(())
        };
        let pubsub = ConnectionManager::new_lazy_with_config(
            client,
            base.clone()
                .set_push_sender(sender)
                .set_automatic_resubscription(),
        )?;
        Ok(Trio {
            addr,
            commands,
            pubsub,
            blocking,
            live,
        })
    }
}

/// See the module docs.
pub(crate) struct Links {
    /// `None` until the Sentinels first name a primary.
    current: RwLock<Option<Arc<Trio>>>,
    /// Every channel subscribed on the pub/sub connection, to subscribe again on a new primary.
    channels: Mutex<HashSet<String>>,
    /// Set in Sentinel mode: a failed command asks the Sentinels at once.
    kick: Option<Arc<tokio::sync::Notify>>,
}

/// Which of the three connections.
#[derive(Clone, Copy)]
pub(crate) enum Role {
    Commands,
    PubSub,
    Blocking,
}

impl Links {
    /// Links to one fixed address.
    pub(crate) fn direct(
        client: redis::Client,
        base: &ConnectionManagerConfig,
        on_push: &OnPush,
    ) -> redis::RedisResult<Arc<Links>> {
        let addr = client.get_connection_info().addr().to_string();
        let trio = Trio::new(addr, client, base, on_push)?;
        trio.live.store(true, Ordering::Release);
        Ok(Arc::new(Links {
            current: RwLock::new(Some(Arc::new(trio))),
            channels: Mutex::new(HashSet::new()),
            kick: None,
        }))
    }

    /// Links to whichever node the Sentinels name, with the task that keeps asking them (it
    /// ends when the links are dropped). Call it inside a Tokio runtime.
    pub(crate) fn sentinel(
        target: SentinelTarget,
        base: ConnectionManagerConfig,
        on_push: OnPush,
    ) -> Arc<Links> {
        let kick = Arc::new(tokio::sync::Notify::new());
        let links = Arc::new(Links {
            current: RwLock::new(None),
            channels: Mutex::new(HashSet::new()),
            kick: Some(kick.clone()),
        });
        tokio::spawn(watch(Arc::downgrade(&links), kick, target, base, on_push));
        links
    }

    fn trio(&self) -> Option<Arc<Trio>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A handle on one of the current connections.
    pub(crate) fn conn(&self, role: Role) -> NodeConn {
        let inner = self.trio().map(|t| match role {
            Role::Commands => t.commands.clone(),
            Role::PubSub => t.pubsub.clone(),
            Role::Blocking => t.blocking.clone(),
        });
        NodeConn {
            inner,
            kick: self.kick.clone(),
        }
    }

    /// Subscribes channels on the pub/sub connection, now and on every later primary.
    pub(crate) async fn subscribe(&self, channels: Vec<String>) -> redis::RedisResult<()> {
        {
            let mut set = self.channels.lock().unwrap_or_else(|e| e.into_inner());
            set.extend(channels.iter().cloned());
        }
        self.on_pubsub(channels, true).await
    }

    pub(crate) async fn unsubscribe(&self, channels: Vec<String>) -> redis::RedisResult<()> {
        {
            let mut set = self.channels.lock().unwrap_or_else(|e| e.into_inner());
            for c in &channels {
                set.remove(c);
            }
        }
        self.on_pubsub(channels, false).await
    }

    /// Sends a (un)subscribe on the current pub/sub connection, and again on the new one if
    /// the primary changed while it ran (it went to the old one).
    async fn on_pubsub(&self, channels: Vec<String>, subscribe: bool) -> redis::RedisResult<()> {
        let mut attempts = 0;
        loop {
            let Some(trio) = self.trio() else {
                // Nothing is subscribed anywhere yet.
                return match subscribe {
                    true => Err(no_primary()),
                    false => Ok(()),
                };
            };
            let mut conn = trio.pubsub.clone();
            let result = match subscribe {
                true => conn.subscribe(channels.clone()).await,
                false => conn.unsubscribe(channels.clone()).await,
            };
            attempts += 1;
            let moved = self.trio().is_some_and(|now| !Arc::ptr_eq(&now, &trio));
            if !moved || attempts >= RESUBSCRIBE_ATTEMPTS {
                return result;
            }
        }
    }

    fn channels(&self) -> Vec<String> {
        self.channels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}

fn no_primary() -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::NotConnected,
        "no Redis primary known yet (asking the Sentinels)",
    ))
}

/// Whether an error says the node may no longer be the primary.
fn ask_again(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.code() == Some("READONLY")
        || e.code() == Some("MASTERDOWN")
        || e.to_string().contains("READONLY")
}

/// One of the current connections; in Sentinel mode a failure asks the Sentinels again.
#[derive(Clone)]
pub(crate) struct NodeConn {
    inner: Option<ConnectionManager>,
    kick: Option<Arc<tokio::sync::Notify>>,
}

impl NodeConn {
    fn failed(&self, e: &RedisError) {
        if let Some(kick) = &self.kick
            && ask_again(e)
        {
            kick.notify_one();
        }
    }
}

impl ConnectionLike for NodeConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let Some(inner) = self.inner.as_mut() else {
                if let Some(kick) = &self.kick {
                    kick.notify_one();
                }
                return Err(no_primary());
            };
            let r = inner.req_packed_command(cmd).await;
            if let Err(e) = &r {
                self.failed(e);
            }
            r
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let Some(inner) = self.inner.as_mut() else {
                return Err(no_primary());
            };
            let r = inner.req_packed_commands(pipeline, offset, count).await;
            if let Err(e) = &r {
                self.failed(e);
            }
            r
        })
    }

    fn get_db(&self) -> i64 {
        self.inner.as_ref().map_or(0, |c| c.get_db())
    }
}

/// The Sentinel task: asks every `poll` or when kicked, and switches when the primary moved.
async fn watch(
    links: Weak<Links>,
    kick: Arc<tokio::sync::Notify>,
    target: SentinelTarget,
    base: ConnectionManagerConfig,
    on_push: OnPush,
) {
    let mut last_error: Option<String> = None;
    let mut sentinels = crate::sentinel::SentinelConns::default();
    loop {
        let Some(l) = links.upgrade() else { return };
        let current = l.trio().map(|t| t.addr.clone());
        drop(l);
        let outcome = match target.resolve_with(&mut sentinels).await {
            Ok((host, port)) => {
                let addr = format!("{host}:{port}");
                if current.as_deref() == Some(addr.as_str()) {
                    Ok(())
                } else {
                    switch(&links, &target, &base, &on_push, host, port, addr).await
                }
            }
            Err(e) => Err(e),
        };
        match outcome {
            Ok(()) => last_error = None,
            // Said once per kind of failure, not every poll.
            Err(e) if last_error.as_deref() != Some(e.as_str()) => {
                tracing::warn!(error = %e, "Redis Sentinel: no usable primary yet");
                last_error = Some(e);
            }
            Err(_) => {}
        }
        tokio::time::sleep(MIN_RESOLVE_GAP).await;
        let wait = target.poll.saturating_sub(MIN_RESOLVE_GAP);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = kick.notified() => {}
        }
    }
}

/// Connects to the named node, checks it is a primary, subscribes every channel there, then
/// makes it current.
async fn switch(
    links: &Weak<Links>,
    target: &SentinelTarget,
    base: &ConnectionManagerConfig,
    on_push: &OnPush,
    host: String,
    port: u16,
    addr: String,
) -> Result<(), String> {
    let client = target
        .client_for(&host, port)
        .map_err(|e| format!("{addr}: {e}"))?;
    let trio = Trio::new(addr.clone(), client, base, on_push).map_err(|e| e.to_string())?;
    let bound = target.connect_timeout + target.op_timeout;
    let mut commands = trio.commands.clone();
    let role = tokio::time::timeout(bound, redis::cmd("ROLE").query_async(&mut commands))
        .await
        .map_err(|_| format!("{addr}: ROLE timed out"))?;
    let is_primary = match role {
        Ok(Value::Array(parts)) => parts.first().and_then(crate::text).as_deref() == Some("master"),
        // An ACL user without `+role` (an @admin command): the Sentinels' word is taken.
        Err(e) if e.code() == Some("NOPERM") => true,
        Err(e) => return Err(format!("{addr}: {e}")),
        Ok(_) => false,
    };
    if !is_primary {
        return Err(format!("{addr} is not a primary (yet)"));
    }
    let Some(l) = links.upgrade() else {
        return Ok(());
    };
    let mut pubsub = trio.pubsub.clone();
    let before: HashSet<String> = l.channels().into_iter().collect();
    if !before.is_empty() {
        tokio::time::timeout(
            bound,
            pubsub.subscribe(before.iter().cloned().collect::<Vec<_>>()),
        )
        .await
        .map_err(|_| format!("{addr}: SUBSCRIBE timed out"))?
        .map_err(|e| format!("{addr}: {e}"))?;
    }
    let trio = Arc::new(trio);
    let old = {
        let mut current = l.current.write().unwrap_or_else(|e| e.into_inner());
        // From here only the new connection's messages reach the sinks.
        if let Some(old) = current.as_ref() {
            old.live.store(false, Ordering::Release);
        }
        trio.live.store(true, Ordering::Release);
        current.replace(trio)
    };
    // Channels (un)subscribed while this switch ran went to the old primary: do the same here.
    for attempt in 1..=RESUBSCRIBE_ATTEMPTS {
        let now: HashSet<String> = l.channels().into_iter().collect();
        let added: Vec<String> = now.difference(&before).cloned().collect();
        let removed: Vec<String> = before.difference(&now).cloned().collect();
        let done = async {
            if !added.is_empty() {
                pubsub.subscribe(added).await?;
            }
            if !removed.is_empty() {
                pubsub.unsubscribe(removed).await?;
            }
            Ok::<(), RedisError>(())
        };
        match tokio::time::timeout(bound, done).await {
            Ok(Ok(())) => break,
            Ok(Err(e)) => {
                tracing::warn!(%attempt, error = %e, "Redis Sentinel: (un)subscribing on the new primary")
            }
            Err(_) => {
                tracing::warn!(%attempt, "Redis Sentinel: (un)subscribing on the new primary timed out")
            }
        }
    }
    match old {
        Some(old) => {
            tracing::warn!(from = %old.addr, to = %addr, "Redis Sentinel: the primary moved; connections switched");
            on_push(PushInfo {
                kind: PushKind::Disconnection,
                data: Vec::new(),
            });
        }
        None => tracing::info!(primary = %addr, "Redis Sentinel: primary found"),
    }
    Ok(())
}
