//! Reconnect delays: exponential backoff with full jitter, and what each close code makes a
//! session do (the close-code policy every Switchboard client follows).
//!
//! Full jitter (a uniform draw between zero and the exponential ceiling) spreads the clients of
//! a node that went away over the whole window, so the nodes that take them over are not hit by
//! all of them at once.
//!
//! | close | the session |
//! |---|---|
//! | 4009 | taken over by a newer connection: final, never reconnects |
//! | 1008 | bad or expired token: with a [`TokenProvider`](crate::TokenProvider), asks it for a fresh token and reconnects; closed with 1008 again before a `hello` succeeded: final. With a fixed token or none: final |
//! | 1012 | node restarting: the next URL at once-ish (the first delay is drawn as attempt 0, within `backoff_min`) |
//! | 1013 | try again later: the first delay is 1 s plus the jittered backoff |
//! | 4029 | rate limited: the first delay is 5 s plus the jittered backoff |
//! | anything else (1000 unasked, 1001, 1006, 1011, 4001, 4002, 4008, ...) | reconnect with the jittered backoff |
//!
//! A floor applies to the first delay after that close only; later attempts (nothing answered)
//! follow the backoff alone. A `hello` answered -32603 (backend unavailable) or -32006 (the
//! identity at its connection cap) is followed by 1013 and counts as one.

use std::time::Duration;

use switchboard_protocol::close;

/// The delay before reconnect attempt `attempt` (0 for the first): uniform in
/// `[0, min(max, min_delay * 2^attempt)]`, `draw` mapping a ceiling in ms to a value in
/// `0..=ceiling`.
pub(crate) fn delay(
    attempt: u32,
    min: Duration,
    max: Duration,
    draw: impl FnOnce(u64) -> u64,
) -> Duration {
    let ceiling = min
        .saturating_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX))
        .min(max);
    let ms = ceiling.as_millis().min(u64::MAX as u128) as u64;
    Duration::from_millis(draw(ms).min(ms))
}

/// [`delay`] with a random draw.
pub(crate) fn jittered(attempt: u32, min: Duration, max: Duration) -> Duration {
    use rand::Rng;
    delay(attempt, min, max, |ceiling| {
        rand::rng().random_range(0..=ceiling)
    })
}

/// A reconnect delay: `floor` plus the jittered backoff of `attempt`.
pub(crate) fn floored(floor: Duration, attempt: u32, min: Duration, max: Duration) -> Duration {
    floor + jittered(attempt, min, max)
}

/// The floor of the first delay after a 1013.
pub(crate) const TRY_AGAIN_LATER_FLOOR: Duration = Duration::from_secs(1);
/// The floor of the first delay after a 4029.
pub(crate) const RATE_LIMITED_FLOOR: Duration = Duration::from_secs(5);

/// What a session does after its socket ended with `code` (`None`: no close frame).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// The session is over.
    Final,
    /// Reconnect (to the next URL).
    Reconnect {
        /// Added to the first delay.
        floor: Duration,
        /// Draw the first delay as attempt 0 (a node restarting: go elsewhere at once).
        first_attempt: bool,
        /// Ask the token provider for a new token first (1008).
        fresh_token: bool,
    },
}

/// The close-code policy (module docs). `provider`: the session has a token provider;
/// `refused_before`: a 1008 was already answered with a fresh token and no `hello` has
/// succeeded since.
pub(crate) fn next(code: Option<u16>, provider: bool, refused_before: bool) -> Next {
    let reconnect = |floor, first_attempt, fresh_token| Next::Reconnect {
        floor,
        first_attempt,
        fresh_token,
    };
    match code {
        Some(close::TAKEN_OVER) => Next::Final,
        Some(close::POLICY) if provider && !refused_before => {
            reconnect(Duration::ZERO, false, true)
        }
        Some(close::POLICY) => Next::Final,
        Some(close::RESTARTING) => reconnect(Duration::ZERO, true, false),
        Some(close::TRY_AGAIN_LATER) => reconnect(TRY_AGAIN_LATER_FLOOR, false, false),
        Some(close::RATE_LIMITED) => reconnect(RATE_LIMITED_FLOOR, false, false),
        _ => reconnect(Duration::ZERO, false, false),
    }
}

/// Whether a close code ends the session whatever happens next (a request that saw it fails
/// as closed, not as disconnected): 4009, and 1008 without a token provider.
pub(crate) fn is_final(code: u16, provider: bool) -> bool {
    next(Some(code), provider, false) == Next::Final
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(5);

    #[test]
    fn ceiling_doubles_up_to_the_cap() {
        let top = |attempt| delay(attempt, MIN, MAX, |c| c);
        assert_eq!(top(0), Duration::from_millis(100));
        assert_eq!(top(1), Duration::from_millis(200));
        assert_eq!(top(5), Duration::from_millis(3200));
        assert_eq!(top(6), MAX);
        assert_eq!(top(1000), MAX, "no overflow on long outages");
        assert_eq!(delay(3, MIN, MAX, |_| 0), Duration::ZERO);
        // A draw past the ceiling is clamped.
        assert_eq!(delay(0, MIN, MAX, |c| c + 50), MIN);
    }

    #[test]
    fn jitter_stays_in_the_window_and_varies() {
        let draws: Vec<Duration> = (0..200).map(|_| jittered(4, MIN, MAX)).collect();
        assert!(draws.iter().all(|d| *d <= Duration::from_millis(1600)));
        let distinct: std::collections::BTreeSet<_> = draws.iter().collect();
        assert!(distinct.len() > 20, "full jitter spreads: {distinct:?}");
    }

    #[test]
    fn floors_raise_the_first_delay() {
        for _ in 0..100 {
            let d = floored(TRY_AGAIN_LATER_FLOOR, 0, MIN, MAX);
            assert!(
                d >= Duration::from_secs(1) && d <= Duration::from_millis(1100),
                "{d:?}"
            );
            let d = floored(RATE_LIMITED_FLOOR, 3, MIN, MAX);
            assert!(
                d >= Duration::from_secs(5) && d <= Duration::from_millis(5800),
                "{d:?}"
            );
            // 1012: attempt 0, within the minimum.
            assert!(floored(Duration::ZERO, 0, MIN, MAX) <= MIN);
        }
    }

    #[test]
    fn the_close_code_policy() {
        let plain = Next::Reconnect {
            floor: Duration::ZERO,
            first_attempt: false,
            fresh_token: false,
        };
        // 4009: final, with a provider or not.
        assert_eq!(next(Some(4009), false, false), Next::Final);
        assert_eq!(next(Some(4009), true, false), Next::Final);
        // 1008: final with a fixed token; with a provider, once a fresh token, then final.
        assert_eq!(next(Some(1008), false, false), Next::Final);
        assert_eq!(
            next(Some(1008), true, false),
            Next::Reconnect {
                floor: Duration::ZERO,
                first_attempt: false,
                fresh_token: true
            }
        );
        assert_eq!(next(Some(1008), true, true), Next::Final);
        assert!(is_final(4009, true) && is_final(1008, false) && !is_final(1008, true));
        // 1012: at once, to the next URL.
        assert_eq!(
            next(Some(1012), false, false),
            Next::Reconnect {
                floor: Duration::ZERO,
                first_attempt: true,
                fresh_token: false
            }
        );
        // The floors.
        assert!(matches!(
            next(Some(1013), true, false),
            Next::Reconnect { floor, .. } if floor == Duration::from_secs(1)
        ));
        assert!(matches!(
            next(Some(4029), false, false),
            Next::Reconnect { floor, .. } if floor == Duration::from_secs(5)
        ));
        // Everything else: the backoff alone (1000 from the gateway, unasked, included).
        for code in [
            1000, 1001, 1002, 1003, 1005, 1006, 1007, 1009, 1011, 4001, 4002, 4008,
        ] {
            assert_eq!(next(Some(code), true, false), plain, "{code}");
            assert!(!is_final(code, false), "{code} is worth a reconnect");
        }
        assert_eq!(next(None, false, false), plain);
    }
}
