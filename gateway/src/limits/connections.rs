//! Caps on connections per identity and per source address, over every node together
//! (`--max-connections-per-identity`, `--max-connections-per-address`).
//!
//! Each connection gets a member name (`<node>/<n>`) at its upgrade and a lease in the
//! backend's [`ConnectionLedger`] for each scope it counts in: `ip:<address>` from the upgrade
//! (over the cap: HTTP 429 before the upgrade), `id:<subject>` from `hello` or `initialize`
//! (over the cap: -32006, then close 1013). Anonymous connections count by address only. The
//! node renews its connections' leases every third of `--connection-lease` and releases them
//! when a connection ends; the leases of a node that died run out after `--connection-lease`,
//! and until then they still count.
//!
//! When the backend cannot be asked, a connection is let in (and logged, at a bounded rate):
//! the node's own `--max-connections` and the per-address rate of new connections still hold.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use switchboard_core::backend::{ConnectionLedger, Lease};

use crate::metrics::Metrics;

/// `Retry-After` (seconds) of an upgrade refused because its address is at its cap: a
/// connection of that address has to close first, which a short wait does not promise.
pub(crate) const CAPPED_RETRY_AFTER: &str = "10";
/// Leases renewed per backend round trip, at most.
const RENEW_BATCH: usize = 1000;
/// Warnings about an unreachable ledger are logged at most this often.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// The caps' settings (0: no cap).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnectionCapSettings {
    pub(crate) per_identity: u64,
    pub(crate) per_address: u64,
    pub(crate) lease: Duration,
}

/// Which cap refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Full {
    Identity(u64),
    Address(u64),
}

/// A connection counted at its upgrade, on its way to its handler: dropped before it gets
/// there (an upgrade that never completed), its leases go.
pub(crate) struct Admitted {
    caps: Arc<ConnectionCaps>,
    member: Option<String>,
}

impl Admitted {
    pub(crate) fn new(caps: Arc<ConnectionCaps>, member: String) -> Self {
        Admitted {
            caps,
            member: Some(member),
        }
    }

    /// The connection reached its handler, which releases it from now on.
    pub(crate) fn into_member(mut self) -> String {
        self.member.take().unwrap_or_default()
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Some(member) = self.member.take() {
            self.caps.release(&member);
        }
    }
}

/// See the module docs.
pub(crate) struct ConnectionCaps {
    ledger: Arc<dyn ConnectionLedger>,
    node: String,
    settings: ConnectionCapSettings,
    next: AtomicU64,
    /// The leases of this node's live connections, by member.
    live: Mutex<HashMap<String, Vec<Lease>>>,
    metrics: Arc<Metrics>,
    last_warning: Mutex<Option<Instant>>,
}

impl ConnectionCaps {
    pub(crate) fn new(
        ledger: Arc<dyn ConnectionLedger>,
        node: &str,
        settings: ConnectionCapSettings,
        metrics: Arc<Metrics>,
    ) -> Self {
        ConnectionCaps {
            ledger,
            node: node.to_owned(),
            settings,
            next: AtomicU64::new(1),
            live: Mutex::new(HashMap::new()),
            metrics,
            last_warning: Mutex::new(None),
        }
    }

    /// A new connection's member name, unique in the cluster.
    pub(crate) fn member(&self) -> String {
        format!(
            "{}/{}",
            self.node,
            self.next.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// Counts a new connection from `addr`, unless that address is at its cap.
    pub(crate) async fn admit_address(&self, member: &str, addr: IpAddr) -> Result<(), Full> {
        let max = self.settings.per_address;
        self.admit(member, format!("ip:{addr}"), max)
            .await
            .map_err(|()| Full::Address(max))
    }

    /// Counts the connection for the identity `subject`, unless it is at its cap. A resume
    /// (`resuming`) may go one over: the socket it takes over is being closed.
    pub(crate) async fn admit_identity(
        &self,
        member: &str,
        subject: &str,
        resuming: bool,
    ) -> Result<(), Full> {
        let max = self.settings.per_identity;
        let bound = if resuming && max > 0 { max + 1 } else { max };
        self.admit(member, format!("id:{subject}"), bound)
            .await
            .map_err(|()| Full::Identity(max))
    }

    /// The connection no longer counts for the identity `subject` (its `hello` was refused).
    pub(crate) fn release_identity(self: &Arc<Self>, member: &str, subject: &str) {
        let scope = format!("id:{subject}");
        let lease = {
            let mut live = self.live.lock().expect("connection caps lock poisoned");
            let Some(leases) = live.get_mut(member) else {
                return;
            };
            let Some(i) = leases.iter().position(|l| l.scope == scope) else {
                return;
            };
            leases.remove(i)
        };
        let caps = self.clone();
        tokio::spawn(async move {
            if let Err(e) = caps.ledger.release(&lease).await {
                caps.warn(&format!(
                    "releasing a connection failed ({e}); its lease runs out by itself"
                ));
            }
        });
    }

    async fn admit(&self, member: &str, scope: String, max: u64) -> Result<(), ()> {
        if max == 0 {
            return Ok(());
        }
        let lease = Lease {
            scope,
            member: member.to_owned(),
        };
        if self.held(&lease) {
            return Ok(());
        }
        match self.ledger.admit(&lease, max, self.settings.lease).await {
            Ok(true) => {}
            Ok(false) => {
                self.metrics.connections_capped.inc();
                return Err(());
            }
            Err(e) => self.warn(&format!(
                "counting a connection failed ({e}); letting it in"
            )),
        }
        self.live
            .lock()
            .expect("connection caps lock poisoned")
            .entry(member.to_owned())
            .or_default()
            .push(lease);
        Ok(())
    }

    fn held(&self, lease: &Lease) -> bool {
        self.live
            .lock()
            .expect("connection caps lock poisoned")
            .get(&lease.member)
            .is_some_and(|leases| leases.contains(lease))
    }

    /// The connection ended: its leases go (in the background).
    pub(crate) fn release(self: &Arc<Self>, member: &str) {
        let Some(leases) = self
            .live
            .lock()
            .expect("connection caps lock poisoned")
            .remove(member)
        else {
            return;
        };
        let caps = self.clone();
        tokio::spawn(async move {
            for lease in leases {
                if let Err(e) = caps.ledger.release(&lease).await {
                    caps.warn(&format!(
                        "releasing a connection failed ({e}); its lease runs out by itself"
                    ));
                }
            }
        });
    }

    /// Live connections counted in the ledger by this node (for tests and metrics).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.live
            .lock()
            .expect("connection caps lock poisoned")
            .len()
    }

    /// Runs forever: renews this node's leases every third of the lease.
    pub(crate) async fn run_renewal(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.settings.lease / 3);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let leases: Vec<Lease> = self
                .live
                .lock()
                .expect("connection caps lock poisoned")
                .values()
                .flatten()
                .cloned()
                .collect();
            for batch in leases.chunks(RENEW_BATCH) {
                if let Err(e) = self.ledger.renew(batch, self.settings.lease).await {
                    self.warn(&format!("renewing connection leases failed ({e})"));
                    break;
                }
            }
        }
    }

    fn warn(&self, what: &str) {
        let mut last = self
            .last_warning
            .lock()
            .expect("connection caps lock poisoned");
        if last.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
            *last = Some(Instant::now());
            tracing::warn!("{what}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_core::backend::BackendError;

    /// A ledger that admits up to its cap, in memory, and fails when told to.
    #[derive(Default)]
    struct Counting {
        scopes: Mutex<HashMap<String, Vec<String>>>,
        broken: std::sync::atomic::AtomicBool,
    }

    #[async_trait::async_trait]
    impl ConnectionLedger for Counting {
        async fn admit(&self, l: &Lease, max: u64, _: Duration) -> Result<bool, BackendError> {
            if self.broken.load(Ordering::Relaxed) {
                return Err(BackendError::Unavailable("down".into()));
            }
            let mut s = self.scopes.lock().unwrap();
            let members = s.entry(l.scope.clone()).or_default();
            if members.len() as u64 >= max {
                return Ok(false);
            }
            members.push(l.member.clone());
            Ok(true)
        }
        async fn renew(&self, _: &[Lease], _: Duration) -> Result<(), BackendError> {
            Ok(())
        }
        async fn release(&self, l: &Lease) -> Result<(), BackendError> {
            let mut s = self.scopes.lock().unwrap();
            if let Some(m) = s.get_mut(&l.scope) {
                m.retain(|x| *x != l.member);
            }
            Ok(())
        }
    }

    fn caps(ledger: Arc<Counting>) -> Arc<ConnectionCaps> {
        Arc::new(ConnectionCaps::new(
            ledger,
            "n1",
            ConnectionCapSettings {
                per_identity: 2,
                per_address: 3,
                lease: Duration::from_secs(60),
            },
            Arc::new(Metrics::new()),
        ))
    }

    #[tokio::test]
    async fn caps_count_release_and_fail_open() {
        let ledger = Arc::new(Counting::default());
        let caps = caps(ledger.clone());
        let addr: IpAddr = "198.51.100.1".parse().unwrap();
        let members: Vec<String> = (0..4).map(|_| caps.member()).collect();
        for m in &members[..3] {
            assert_eq!(caps.admit_address(m, addr).await, Ok(()));
        }
        assert_eq!(
            caps.admit_address(&members[3], addr).await,
            Err(Full::Address(3))
        );
        // The same connection counted again is no second lease.
        assert_eq!(
            caps.admit_identity(&members[0], "alice", false).await,
            Ok(())
        );
        assert_eq!(
            caps.admit_identity(&members[0], "alice", false).await,
            Ok(())
        );
        assert_eq!(
            caps.admit_identity(&members[1], "alice", false).await,
            Ok(())
        );
        assert_eq!(
            caps.admit_identity(&members[2], "alice", false).await,
            Err(Full::Identity(2))
        );
        // A resume may go one over, and gives its place back when refused afterwards.
        assert_eq!(
            caps.admit_identity(&members[2], "alice", true).await,
            Ok(())
        );
        caps.release_identity(&members[2], "alice");
        tokio::time::sleep(Duration::from_millis(10)).await;
        caps.release(&members[0]);
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(
            caps.admit_identity(&members[2], "alice", false).await,
            Ok(())
        );
        assert_eq!(caps.admit_address(&members[3], addr).await, Ok(()));
        // The ledger down: connections are let in.
        ledger.broken.store(true, Ordering::Relaxed);
        let m = caps.member();
        assert_eq!(caps.admit_identity(&m, "alice", false).await, Ok(()));
        assert_eq!(caps.len(), 4);
    }
}
