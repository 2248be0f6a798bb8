//! Rate limits with `governor`: requests per connection (a burst, then a sustained rate) and new
//! connections per source IP. Both are node-local: a connection lives on one node, and so do
//! the upgrades of one address behind one load balancer's choice.
//!
//! A connection over its rate gets -32003 with `retryAfterMs` in `data` (a notification gets
//! nothing, but counts); one that keeps sending past `--rate-close-after` refusals in a row is
//! closed with 4029. An address over its rate of new connections gets HTTP 429 with
//! `Retry-After` before the upgrade. The per-address limiter forgets addresses that have been
//! quiet for a while (pruned every [`PRUNE_EVERY`]), so its memory follows the addresses
//! active now, not every address ever seen.
//!
//! Publishes and tool calls also spend a budget of their identity that holds across nodes
//! ([`identity`]: a GCRA in the backend, leased in chunks); over it, the same -32003 with
//! `retryAfterMs`.

pub(crate) mod connections;
pub(crate) mod identity;

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::DefaultKeyedStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

/// How often the per-address limiter drops the addresses it no longer needs.
pub(crate) const PRUNE_EVERY: Duration = Duration::from_secs(10);

/// A sustained rate per second and the burst on top of it; `None` when the rate is 0 (off).
fn quota(per_second: u32, burst: u32) -> Option<Quota> {
    let rate = NonZeroU32::new(per_second)?;
    let burst = NonZeroU32::new(burst.max(per_second)).unwrap_or(rate);
    Some(Quota::per_second(rate).allow_burst(burst))
}

/// One connection's request budget.
pub(crate) struct RequestLimit {
    limiter: RateLimiter<NotKeyed, InMemoryState, DefaultClock>,
    /// Refusals since the last request let through.
    refused_in_a_row: u32,
    /// Refusals in a row past which the connection is closed.
    close_after: u32,
}

/// What [`RequestLimit::check`] decided.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Allowed,
    /// Over the rate: answer -32003, retry after this long.
    Refused(Duration),
    /// Over the rate again and again: close the connection (4029).
    Close,
}

/// The node's request limit settings, and a budget for each new connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RequestRate {
    quota: Option<Quota>,
    close_after: u32,
}

impl RequestRate {
    pub(crate) fn new(per_second: u32, burst: u32, close_after: u32) -> Self {
        RequestRate {
            quota: quota(per_second, burst),
            close_after,
        }
    }

    /// Refusals in a row past which a connection is closed (4029).
    pub(crate) fn close_after(&self) -> u32 {
        self.close_after
    }

    /// A new connection's budget (`None`: no limit).
    pub(crate) fn budget(&self) -> Option<RequestLimit> {
        self.quota.map(|q| RequestLimit {
            limiter: RateLimiter::direct(q),
            refused_in_a_row: 0,
            close_after: self.close_after,
        })
    }
}

impl RequestLimit {
    /// Spends one request of the budget.
    pub(crate) fn check(&mut self) -> Verdict {
        match self.limiter.check() {
            Ok(()) => {
                self.refused_in_a_row = 0;
                Verdict::Allowed
            }
            Err(not_until) => {
                self.refused_in_a_row = self.refused_in_a_row.saturating_add(1);
                if self.refused_in_a_row > self.close_after {
                    Verdict::Close
                } else {
                    Verdict::Refused(not_until.wait_time_from(DefaultClock::default().now()))
                }
            }
        }
    }
}

/// New connections per source address.
pub(crate) struct ConnectionRate {
    limiter: Option<RateLimiter<IpAddr, DefaultKeyedStateStore<IpAddr>, DefaultClock>>,
}

impl ConnectionRate {
    pub(crate) fn new(per_second: u32, burst: u32) -> Self {
        ConnectionRate {
            limiter: quota(per_second, burst).map(RateLimiter::keyed),
        }
    }

    /// Spends one new connection of `ip`'s budget: `Err` with how long to wait when there is
    /// none left.
    pub(crate) fn check(&self, ip: IpAddr) -> Result<(), Duration> {
        match &self.limiter {
            None => Ok(()),
            Some(l) => l
                .check_key(&ip)
                .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now())),
        }
    }

    /// Forgets the addresses whose budget is full again (nothing to remember about them).
    pub(crate) fn prune(&self) {
        if let Some(l) = &self.limiter {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }

    /// Addresses remembered now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.limiter.as_ref().map_or(0, |l| l.len())
    }

    /// Prunes every [`PRUNE_EVERY`], until the task is aborted.
    pub(crate) async fn run_pruning(self: std::sync::Arc<Self>) {
        let mut tick = tokio::time::interval(PRUNE_EVERY);
        loop {
            tick.tick().await;
            self.prune();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_burst_then_refuse_then_close() {
        let rate = RequestRate::new(1, 3, 2);
        let mut budget = rate.budget().unwrap();
        for _ in 0..3 {
            assert_eq!(budget.check(), Verdict::Allowed);
        }
        for _ in 0..2 {
            match budget.check() {
                Verdict::Refused(wait) => assert!(wait <= Duration::from_secs(1), "{wait:?}"),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(budget.check(), Verdict::Close);
        assert!(RequestRate::new(0, 10, 1).budget().is_none());
    }

    #[test]
    fn connections_per_address_and_pruning() {
        let rate = ConnectionRate::new(1, 2);
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        assert!(rate.check(a).is_ok() && rate.check(a).is_ok());
        assert!(rate.check(a).is_err());
        assert!(rate.check(b).is_ok(), "another address has its own budget");
        assert_eq!(rate.len(), 2);
        assert!(ConnectionRate::new(0, 0).check(a).is_ok());
    }
}
