//! Per-identity budgets for `publish` and `tools/call`, held across nodes: a user with sockets
//! on three nodes has one budget, not three.
//!
//! The budget itself is a GCRA in the backend (`switchboard_core::backend::RateStore`; on
//! Redis one key per identity and budget). A node does not ask the backend for every request:
//! it *leases* tokens, up to `lease` at a time, and spends them locally; only when they are gone
//! does it take another lease. Concurrent requests of one identity on one node wait for the
//! same take (its entry's lock), so a burst sends one take, not one per request. A refusal is
//! remembered until the backend's `retry_after`, so a client that keeps on sending is refused
//! locally, without a backend round trip.
//!
//! The tolerance that buys: tokens a node leased but has not spent were already counted by the
//! backend, so over any window the cluster admits at most `burst + per_second * window` plus,
//! for each node holding unspent leased tokens of that identity, at most one lease. Nothing is
//! ever admitted past the backend's GCRA otherwise. `lease = 1` is exact (one take per request).
//!
//! Entries of identities idle for [`IDLE`] are pruned every [`PRUNE_EVERY`] (their unspent
//! tokens are forgotten, which only ever admits less), so memory follows the identities active
//! on the node now. Anonymous clients (on a node with `--allow-anonymous`) all share the subject
//! `anonymous`: they are not one user, so they have no per-identity budget; the per-connection
//! and per-address limits hold them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchboard_core::auth::ANONYMOUS;
use switchboard_core::backend::{Budget, Rate, RateStore};
use tokio::time::Instant;

use super::PRUNE_EVERY;

/// An identity's entry is pruned once it was not used for this long.
pub(crate) const IDLE: Duration = PRUNE_EVERY;

/// How long a failed take makes the next ones of the same identity fail at once, rather than
/// each waiting for the backend's timeout in turn.
const UNAVAILABLE_FOR: Duration = Duration::from_secs(1);

/// The lease when `--rate-lease` is not given: a twentieth of the burst (at least 1), so a
/// node holds at most 5% of an identity's burst that the others cannot have.
pub(crate) fn default_lease(burst: u32) -> u32 {
    (burst / 20).max(1)
}

/// One budget's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BudgetRate {
    pub(crate) rate: Rate,
    /// Tokens taken from the backend at once (at most the burst).
    pub(crate) lease: u32,
}

impl BudgetRate {
    /// `None` when `per_second` is 0 (no limit). `lease`: `None` for [`default_lease`].
    pub(crate) fn new(per_second: u32, burst: u32, lease: Option<u32>) -> Option<Self> {
        if per_second == 0 {
            return None;
        }
        let burst = burst.max(1);
        Some(BudgetRate {
            rate: Rate { per_second, burst },
            lease: lease
                .unwrap_or_else(|| default_lease(burst))
                .clamp(1, burst),
        })
    }
}

/// Why a spend was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Over the budget: -32003, retry after this long.
    Wait(Duration),
    /// The backend could not be asked: -32603 (the request needs the backend anyway).
    Unavailable,
}

/// What one node holds of one identity's budget.
struct Leased {
    /// Leased tokens not spent yet.
    tokens: u32,
    /// Until then, spends are refused without asking the backend.
    cooldown: Option<(Instant, Refusal)>,
    last_used: Instant,
}

/// One budget's entries on this node.
struct Keyed {
    rate: BudgetRate,
    held: Mutex<HashMap<Arc<str>, Arc<tokio::sync::Mutex<Leased>>>>,
}

impl Keyed {
    fn entry(&self, identity: &Arc<str>) -> Arc<tokio::sync::Mutex<Leased>> {
        let mut held = self.held.lock().expect("identity rates lock");
        held.entry(identity.clone())
            .or_insert_with(|| {
                Arc::new(tokio::sync::Mutex::new(Leased {
                    tokens: 0,
                    cooldown: None,
                    last_used: Instant::now(),
                }))
            })
            .clone()
    }

    /// Drops the entries nobody is using that were idle for [`IDLE`].
    fn prune(&self, now: Instant) {
        let mut held = self.held.lock().expect("identity rates lock");
        held.retain(|_, entry| {
            Arc::strong_count(entry) > 1
                || entry
                    .try_lock()
                    .map_or(true, |l| now.duration_since(l.last_used) < IDLE)
        });
        held.shrink_to_fit();
    }
}

/// The node's per-identity budgets (see the module docs).
pub(crate) struct IdentityRates {
    store: Arc<dyn RateStore>,
    publishes: Option<Keyed>,
    calls: Option<Keyed>,
    /// Anonymous clients share a subject: they are exempt (see the module docs).
    exempt_anonymous: bool,
    /// Takes sent to the backend.
    on_take: Box<dyn Fn() + Send + Sync>,
}

impl IdentityRates {
    /// `on_take` is called for every take sent to the backend (a metric).
    pub(crate) fn new(
        store: Arc<dyn RateStore>,
        publishes: Option<BudgetRate>,
        calls: Option<BudgetRate>,
        exempt_anonymous: bool,
        on_take: impl Fn() + Send + Sync + 'static,
    ) -> Self {
        let keyed = |rate: Option<BudgetRate>| {
            rate.map(|rate| Keyed {
                rate,
                held: Mutex::default(),
            })
        };
        IdentityRates {
            store,
            publishes: keyed(publishes),
            calls: keyed(calls),
            exempt_anonymous,
            on_take: Box::new(on_take),
        }
    }

    fn keyed(&self, budget: Budget) -> Option<&Keyed> {
        match budget {
            Budget::Publishes => self.publishes.as_ref(),
            Budget::Calls => self.calls.as_ref(),
        }
    }

    /// Spends one token of `identity`'s `budget`: from the node's lease, or from a new one.
    pub(crate) async fn spend(&self, budget: Budget, identity: &Arc<str>) -> Result<(), Refusal> {
        let Some(keyed) = self.keyed(budget) else {
            return Ok(());
        };
        if self.exempt_anonymous && &**identity == ANONYMOUS {
            return Ok(());
        }
        let entry = keyed.entry(identity);
        // Held across the take: the identity's other requests on this node wait for it and
        // spend what it brought, rather than each sending a take of its own.
        let mut held = entry.lock().await;
        let now = Instant::now();
        held.last_used = now;
        if held.tokens > 0 {
            held.tokens -= 1;
            return Ok(());
        }
        if let Some((until, why)) = held.cooldown {
            if now < until {
                return Err(match why {
                    Refusal::Wait(_) => Refusal::Wait(until - now),
                    Refusal::Unavailable => Refusal::Unavailable,
                });
            }
            held.cooldown = None;
        }
        (self.on_take)();
        let take = self
            .store
            .take(budget, identity, keyed.rate.rate, keyed.rate.lease);
        match take.await {
            Ok(grant) if grant.granted > 0 => {
                held.tokens = grant.granted - 1;
                Ok(())
            }
            Ok(grant) => {
                // Never "retry after 0": the backend's clock and ours are not the same.
                let wait = grant.retry_after.max(Duration::from_millis(1));
                held.cooldown = Some((Instant::now() + wait, Refusal::Wait(wait)));
                Err(Refusal::Wait(wait))
            }
            Err(e) => {
                tracing::warn!(
                    budget = budget.as_str(),
                    error = %e,
                    "taking a rate lease failed; refusing the identity's requests for a second"
                );
                held.cooldown = Some((Instant::now() + UNAVAILABLE_FOR, Refusal::Unavailable));
                Err(Refusal::Unavailable)
            }
        }
    }

    /// Forgets the identities idle for [`IDLE`] (and their unspent tokens).
    pub(crate) fn prune(&self) {
        let now = Instant::now();
        for keyed in [&self.publishes, &self.calls].into_iter().flatten() {
            keyed.prune(now);
        }
    }

    /// Identities remembered now, over both budgets.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        [&self.publishes, &self.calls]
            .into_iter()
            .flatten()
            .map(|k| k.held.lock().unwrap().len())
            .sum()
    }

    /// Prunes every [`PRUNE_EVERY`], until the task is aborted.
    pub(crate) async fn run_pruning(self: Arc<Self>) {
        let mut tick = tokio::time::interval(PRUNE_EVERY);
        loop {
            tick.tick().await;
            self.prune();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

    use async_trait::async_trait;
    use switchboard_core::backend::{BackendError, Grant, gcra};

    use super::*;

    /// The backend's GCRA on the (paused) Tokio clock, counting takes; each take takes `delay`.
    #[derive(Default)]
    struct Store {
        tats: Mutex<HashMap<(Budget, String), u64>>,
        origin: Mutex<Option<Instant>>,
        takes: AtomicU32,
        delay: Duration,
        down: AtomicBool,
    }

    #[async_trait]
    impl RateStore for Store {
        async fn take(
            &self,
            budget: Budget,
            identity: &str,
            rate: Rate,
            want: u32,
        ) -> Result<Grant, BackendError> {
            self.takes.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(self.delay).await;
            if self.down.load(Ordering::SeqCst) {
                return Err(BackendError::Timeout);
            }
            let origin = *self.origin.lock().unwrap().get_or_insert_with(Instant::now);
            let now = Instant::now().duration_since(origin).as_micros() as u64;
            let mut tats = self.tats.lock().unwrap();
            let key = (budget, identity.to_owned());
            let (tat, grant) = gcra(tats.get(&key).copied(), now, rate, want);
            if grant.granted > 0 {
                tats.insert(key, tat);
            }
            Ok(grant)
        }
    }

    impl Store {
        fn takes(&self) -> u32 {
            self.takes.load(Ordering::SeqCst)
        }
    }

    fn rates(store: &Arc<Store>, per_second: u32, burst: u32, lease: u32) -> IdentityRates {
        let rate = BudgetRate::new(per_second, burst, Some(lease));
        IdentityRates::new(store.clone(), rate, rate, true, || {})
    }

    fn who(name: &str) -> Arc<str> {
        Arc::from(name)
    }

    #[tokio::test(start_paused = true)]
    async fn tokens_are_leased_spent_locally_then_refused_without_asking_again() {
        let store = Arc::new(Store::default());
        let node = rates(&store, 10, 20, 5);
        let alice = who("alice");
        for _ in 0..20 {
            node.spend(Budget::Publishes, &alice).await.unwrap();
        }
        assert_eq!(store.takes(), 4, "one take per lease of 5");
        let Err(Refusal::Wait(wait)) = node.spend(Budget::Publishes, &alice).await else {
            panic!("the burst is spent");
        };
        assert_eq!(wait, Duration::from_millis(100), "one token at 10/s");
        // Hammering on is refused locally: no more takes, and the wait counts down.
        tokio::time::advance(Duration::from_millis(40)).await;
        for _ in 0..50 {
            assert_eq!(
                node.spend(Budget::Publishes, &alice).await,
                Err(Refusal::Wait(Duration::from_millis(60)))
            );
        }
        assert_eq!(store.takes(), 5);
        // Waiting as told works; the other budget and other identities were never touched.
        tokio::time::advance(Duration::from_millis(60)).await;
        node.spend(Budget::Publishes, &alice).await.unwrap();
        assert!(node.spend(Budget::Publishes, &alice).await.is_err());
        node.spend(Budget::Calls, &alice).await.unwrap();
        node.spend(Budget::Publishes, &who("bob")).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_spends_of_one_identity_share_one_take() {
        let store = Arc::new(Store {
            delay: Duration::from_millis(5),
            ..Store::default()
        });
        let node = Arc::new(rates(&store, 100, 200, 10));
        let spends: Vec<_> = (0..10)
            .map(|_| {
                let node = node.clone();
                tokio::spawn(async move { node.spend(Budget::Calls, &who("carol")).await })
            })
            .collect();
        for s in spends {
            s.await.unwrap().unwrap();
        }
        assert_eq!(store.takes(), 1, "ten spends, one lease of ten");
    }

    #[tokio::test(start_paused = true)]
    async fn nodes_sharing_a_budget_stay_within_it_plus_a_lease_each() {
        const RATE: u32 = 50;
        const BURST: u32 = 100;
        const LEASE: u32 = 10;
        let store = Arc::new(Store::default());
        let nodes: Vec<_> = (0..3).map(|_| rates(&store, RATE, BURST, LEASE)).collect();
        let dave = who("dave");
        let mut allowed = 0u32;
        // Two seconds of every node trying every millisecond.
        for _ in 0..2_000 {
            for n in &nodes {
                allowed += u32::from(n.spend(Budget::Publishes, &dave).await.is_ok());
            }
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        let budget = BURST + RATE * 2;
        assert!(allowed <= budget + 3 * LEASE, "{allowed}");
        assert!(allowed >= budget - 3 * LEASE, "{allowed}");
        // A node alone would have allowed about as much: three nodes did not triple it.
        assert!(allowed < 2 * budget, "{allowed}");
    }

    #[tokio::test(start_paused = true)]
    async fn off_anonymous_and_unavailable() {
        let store = Arc::new(Store::default());
        // Off: no take at all.
        let off = IdentityRates::new(store.clone(), None, None, true, || {});
        for _ in 0..1_000 {
            off.spend(Budget::Publishes, &who("erin")).await.unwrap();
        }
        assert_eq!(store.takes(), 0);
        // Anonymous clients are exempt where they are let in, not where `anonymous` is a
        // token's subject.
        let node = rates(&store, 1, 1, 1);
        for _ in 0..10 {
            node.spend(Budget::Publishes, &who(ANONYMOUS))
                .await
                .unwrap();
        }
        let strict = IdentityRates::new(
            store.clone(),
            BudgetRate::new(1, 1, None),
            None,
            false,
            || {},
        );
        strict
            .spend(Budget::Publishes, &who(ANONYMOUS))
            .await
            .unwrap();
        assert!(
            strict
                .spend(Budget::Publishes, &who(ANONYMOUS))
                .await
                .is_err()
        );
        // The backend down: refused as unavailable, and for a second without asking again.
        store.down.store(true, Ordering::SeqCst);
        let before = store.takes();
        for _ in 0..5 {
            assert_eq!(
                node.spend(Budget::Calls, &who("frank")).await,
                Err(Refusal::Unavailable)
            );
        }
        assert_eq!(store.takes(), before + 1);
        store.down.store(false, Ordering::SeqCst);
        tokio::time::advance(UNAVAILABLE_FOR).await;
        node.spend(Budget::Calls, &who("frank")).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn idle_identities_are_pruned() {
        let store = Arc::new(Store::default());
        let node = rates(&store, 10, 20, 5);
        for i in 0..100 {
            node.spend(Budget::Publishes, &who(&format!("user-{i}")))
                .await
                .unwrap();
        }
        tokio::time::advance(IDLE / 2).await;
        node.spend(Budget::Calls, &who("busy")).await.unwrap();
        assert_eq!(node.len(), 101);
        node.prune();
        assert_eq!(node.len(), 101, "nobody idle for long enough yet");
        tokio::time::advance(IDLE / 2).await;
        node.prune();
        assert_eq!(node.len(), 1, "only the one used since");
        tokio::time::advance(IDLE).await;
        node.prune();
        assert_eq!(node.len(), 0);
    }

    #[test]
    fn lease_defaults_and_bounds() {
        assert_eq!(default_lease(200), 10);
        assert_eq!(default_lease(50), 2);
        assert_eq!(default_lease(5), 1);
        assert!(BudgetRate::new(0, 100, None).is_none());
        let r = BudgetRate::new(10, 4, Some(50)).unwrap();
        assert_eq!(r.lease, 4, "never more than the burst");
        assert_eq!(BudgetRate::new(10, 0, None).unwrap().rate.burst, 1);
    }
}
