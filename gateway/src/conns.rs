//! The open connections of a node: what a drain walks, what `max_connections` counts, and
//! where notifications for every client (`tools/list_changed`) go.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::Notify;

use crate::metrics::Metrics;
use crate::transport::{ConnCtl, Link, Out};

/// See the module docs.
pub(crate) struct Conns {
    conns: Mutex<HashMap<u64, Link>>,
    emptied: Notify,
    metrics: Arc<Metrics>,
}

/// A connection's entry in the registry and the connections gauge, for as long as it lives.
pub(crate) struct Registration {
    conns: Arc<Conns>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.conns.remove(self.id);
        self.conns.metrics.connections.dec();
    }
}

impl Conns {
    pub(crate) fn new(metrics: Arc<Metrics>) -> Self {
        Conns {
            conns: Mutex::default(),
            emptied: Notify::new(),
            metrics,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Link>> {
        self.conns.lock().expect("registry lock poisoned")
    }

    /// Registers a connection until the returned guard is dropped.
    pub(crate) fn register(self: &Arc<Self>, link: Link) -> Registration {
        let id = link.id();
        self.lock().insert(id, link);
        self.metrics.connections_total.inc();
        self.metrics.connections.inc();
        Registration {
            conns: self.clone(),
            id,
        }
    }

    fn remove(&self, id: u64) {
        let mut conns = self.lock();
        conns.remove(&id);
        if conns.is_empty() {
            self.emptied.notify_waiters();
        }
    }

    /// Queues one message to every connection that is open (its `hello` done) and not
    /// closing; a full queue skips it: such notifications are advisory.
    pub(crate) fn broadcast(&self, message: &Bytes) {
        for c in self.lock().values() {
            if c.ctl.is_open() && !c.ctl.is_closing() {
                let _ = c.tx.try_send(Out::Text(message.clone()));
            }
        }
    }

    /// Events waiting in the outbound queues of all sockets (sampled at each scrape).
    pub(crate) fn queued_events(&self) -> usize {
        self.lock().values().map(|l| l.tx.queued()).sum()
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    /// The control blocks of every connection open now.
    pub(crate) fn snapshot(&self) -> Vec<Arc<ConnCtl>> {
        self.lock().values().map(|c| c.ctl.clone()).collect()
    }

    /// Completes when no connection is left.
    pub(crate) async fn wait_empty(&self) {
        loop {
            let emptied = self.emptied.notified();
            if self.len() == 0 {
                return;
            }
            emptied.await;
        }
    }
}
