//! Rate budgets shared by every node: a GCRA (generic cell rate algorithm) per identity and
//! [`Budget`], kept by the backend, from which a node takes tokens a lease at a time.
//!
//! The state of one budget is a single number, its *theoretical arrival time* (TAT): the
//! moment the budget would be full again if nothing more were spent. Spending `n` tokens moves
//! it `n` intervals (`1 / per_second`) later; a take is allowed while the TAT stays within
//! `burst` intervals of now. A budget whose TAT has passed is full, so the backend forgets it
//! (on Redis: the key's `PX` expiry), and idle identities cost nothing. [`gcra`] is the
//! algorithm in one place: the memory backend runs it, and `lua/rate_take.lua` of the Redis
//! backend is the same steps on Redis's clock.

use std::time::Duration;

use async_trait::async_trait;

use super::error::BackendError;

/// What a per-identity budget is spent on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Budget {
    /// Client `publish`es.
    Publishes,
    /// `tools/call`s.
    Calls,
}

impl Budget {
    /// Its short name in backend keys (`pub`, `call`).
    pub fn as_str(self) -> &'static str {
        match self {
            Budget::Publishes => "pub",
            Budget::Calls => "call",
        }
    }
}

/// A sustained rate and the burst on top of it (both at least 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub per_second: u32,
    /// Tokens that may be spent at once by an identity that was quiet.
    pub burst: u32,
}

impl Rate {
    /// Microseconds between two tokens (at least 1).
    pub fn interval_us(self) -> u64 {
        (1_000_000 / u64::from(self.per_second.max(1))).max(1)
    }
}

/// What a take was granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// Tokens granted, `0..=want`.
    pub granted: u32,
    /// When nothing was granted: how long until one token is available (zero otherwise).
    pub retry_after: Duration,
}

/// One step of the algorithm, in microseconds of any clock that does not go back (the backend's
/// own): the budget's TAT before the take (`None`: not remembered, so full), now, the rate, and
/// how many tokens are wanted. Answers the new TAT (unchanged when nothing was granted) and the
/// grant: as many of `want` as fit, never more than `burst` within one instant.
pub fn gcra(tat: Option<u64>, now: u64, rate: Rate, want: u32) -> (u64, Grant) {
    let interval = rate.interval_us();
    let capacity = u64::from(rate.burst.max(1)) * interval;
    let base = tat.unwrap_or(now).max(now);
    // Credit left, in microseconds: how far the TAT may still move.
    let room = (now + capacity).saturating_sub(base);
    let available = room / interval;
    let granted = u64::from(want).min(available);
    if granted == 0 {
        // One token is there once `base + interval` fits within the capacity again.
        let wait_us = if want == 0 {
            0
        } else {
            (base + interval).saturating_sub(now + capacity)
        };
        return (
            tat.unwrap_or(now),
            Grant {
                granted: 0,
                retry_after: Duration::from_micros(wait_us),
            },
        );
    }
    (
        base + granted * interval,
        Grant {
            granted: granted as u32,
            retry_after: Duration::ZERO,
        },
    )
}

/// Per-identity budgets every node of a deployment shares. A node takes tokens a lease at a
/// time and spends them locally, so the backend sees one take per lease, not one per request.
#[async_trait]
pub trait RateStore: Send + Sync + 'static {
    /// Takes up to `want` tokens of `identity`'s `budget` at `rate`: as many as are there now
    /// (possibly fewer than `want`), or none and how long until one is.
    async fn take(
        &self,
        budget: Budget,
        identity: &str,
        rate: Rate,
        want: u32,
    ) -> Result<Grant, BackendError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000;

    #[test]
    fn a_quiet_budget_gives_its_burst_then_the_rate() {
        let rate = Rate {
            per_second: 10,
            burst: 5,
        };
        let now = 100 * SEC;
        let (tat, g) = gcra(None, now, rate, 3);
        assert_eq!(g.granted, 3);
        let (tat, g) = gcra(Some(tat), now, rate, 3);
        assert_eq!(g.granted, 2, "only the burst's rest");
        let (tat2, g) = gcra(Some(tat), now, rate, 3);
        assert_eq!(g.granted, 0);
        assert_eq!(tat2, tat, "a refusal changes nothing");
        assert_eq!(g.retry_after, Duration::from_millis(100), "one interval");
        // Half an interval later: still nothing, half an interval to go.
        let (_, g) = gcra(Some(tat), now + SEC / 20, rate, 1);
        assert_eq!((g.granted, g.retry_after), (0, Duration::from_millis(50)));
        // A second later, ten more (the rate), but never more than the burst.
        let (_, g) = gcra(Some(tat), now + SEC, rate, 20);
        assert_eq!(g.granted, 5);
        let (tat, g) = gcra(Some(tat), now + SEC / 2, rate, 20);
        assert_eq!(g.granted, 5);
        assert_eq!(tat, now + SEC);
    }

    #[test]
    fn over_a_window_at_most_burst_plus_rate_times_window() {
        let rate = Rate {
            per_second: 100,
            burst: 20,
        };
        let (mut tat, mut total) = (None, 0u64);
        // Someone asking 7 at a time every millisecond for 2 s.
        for ms in 0..2_000u64 {
            let (t, g) = gcra(tat, ms * 1_000, rate, 7);
            tat = Some(t);
            total += u64::from(g.granted);
        }
        // Burst + 100/s over the 1.999 s between the first and the last take.
        assert_eq!(total, 20 + 199);
    }

    #[test]
    fn a_clock_behind_the_tat_or_odd_rates_do_not_break_it() {
        // A TAT far ahead (a clock that went back): refused, with a wait, no panic.
        let rate = Rate {
            per_second: 3,
            burst: 1,
        };
        let (_, g) = gcra(Some(50 * SEC), SEC, rate, 1);
        assert_eq!(g.granted, 0);
        assert!(g.retry_after > Duration::from_secs(40));
        // Rates above a million per second still move the TAT.
        let fast = Rate {
            per_second: 5_000_000,
            burst: 10,
        };
        assert_eq!(fast.interval_us(), 1);
        assert_eq!(gcra(None, SEC, fast, 20).1.granted, 10);
    }
}
