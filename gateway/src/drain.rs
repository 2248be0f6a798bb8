//! Shutdown: stop accepting (the accept loop's job), report not ready, ask the sockets to close
//! with 1012 (reconnect elsewhere) a batch at a time, spread over `drain_spread`, so the nodes
//! that take them over are not stampeded, and wait for them to go, up to the grace period.
//! The [`Registry`] of open connections is what the drain walks.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use switchboard_core::wire::close;
use tokio::sync::Notify;

use crate::conn::OutTx;
use bytes::Bytes;

use crate::conn::{ConnCtl, Out};
use crate::fanout::Subscriber;
use crate::node::Node;

/// The shortest pause between two batches of the drain.
const DRAIN_TICK: std::time::Duration = std::time::Duration::from_millis(50);

/// The open connections of a node.
#[derive(Default)]
pub(crate) struct Registry {
    conns: Mutex<HashMap<u64, Subscriber>>,
    emptied: Notify,
}

impl Registry {
    pub(crate) fn insert(&self, ctl: Arc<ConnCtl>, tx: OutTx) {
        self.conns.lock().expect("registry lock poisoned").insert(
            ctl.id,
            Subscriber {
                ctl,
                tx,
                gate: None,
                position: None,
            },
        );
    }

    /// Queues one frame to every connection that completed `hello` (a full queue skips it:
    /// such notifications are advisory).
    pub(crate) fn broadcast(&self, frame: &Bytes) {
        let conns = self.conns.lock().expect("registry lock poisoned");
        for c in conns.values() {
            if c.ctl.hello_done.load(std::sync::atomic::Ordering::Relaxed) && !c.ctl.is_closing() {
                let _ = c.tx.try_send(Out::Text(frame.clone()));
            }
        }
    }

    pub(crate) fn remove(&self, id: u64) {
        let mut conns = self.conns.lock().expect("registry lock poisoned");
        conns.remove(&id);
        if conns.is_empty() {
            self.emptied.notify_waiters();
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.conns.lock().expect("registry lock poisoned").len()
    }

    fn snapshot(&self) -> Vec<Arc<ConnCtl>> {
        self.conns
            .lock()
            .expect("registry lock poisoned")
            .values()
            .map(|c| c.ctl.clone())
            .collect()
    }

    async fn wait_empty(&self) {
        loop {
            let emptied = self.emptied.notified();
            if self.len() == 0 {
                return;
            }
            emptied.await;
        }
    }
}

/// Runs the drain; returns when every connection is gone or the grace period is over.
pub(crate) async fn drain(node: &Node) {
    node.start_draining();
    let conns = node.registry.snapshot();
    let grace = node.config.shutdown_grace;
    let deadline = tokio::time::Instant::now() + grace;
    // The last batch still gets its close timeout within the grace.
    let spread = node
        .config
        .drain_spread
        .min(grace.saturating_sub(node.config.close_timeout));
    // At most one batch per tick, spaced evenly over the spread.
    let max_batches = (spread.as_millis() / DRAIN_TICK.as_millis()).max(1) as usize;
    let per_batch = conns
        .len()
        .div_ceil(conns.len().clamp(1, max_batches))
        .max(1);
    let chunks = conns.len().div_ceil(per_batch).max(1);
    let pause = spread / chunks as u32;
    tracing::info!(connections = conns.len(), ?grace, ?spread, "draining");
    let mut batches = conns.chunks(per_batch).peekable();
    while let Some(batch) = batches.next() {
        for ctl in batch {
            ctl.close(
                close::RESTARTING,
                "node restarting, reconnect elsewhere",
                true,
            );
        }
        if batches.peek().is_some() {
            tokio::time::sleep(pause).await;
        }
    }
    if tokio::time::timeout_at(deadline, node.registry.wait_empty())
        .await
        .is_err()
    {
        tracing::warn!(
            left = node.registry.len(),
            "grace period over with connections still open"
        );
    }
}
