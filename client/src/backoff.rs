//! Reconnect delays: exponential backoff with full jitter, and which close codes end a session.
//!
//! Full jitter (a uniform draw between zero and the exponential ceiling) spreads the clients of
//! a node that went away over the whole window, so the nodes that take them over are not hit by
//! all of them at once.

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

/// Whether a close code ends the session for good: the session was taken over by another
/// connection (4009), or the token is bad or expired (1008: reconnecting with it cannot work).
/// Everything else (1012 restarting, 1013 try later, 4008 slow consumer, 1001, 1006, 4001,
/// 4002, an abrupt end, ...) is worth a reconnect.
pub(crate) fn is_final(code: u16) -> bool {
    matches!(code, close::TAKEN_OVER | close::POLICY)
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
    fn only_takeover_and_bad_token_are_final() {
        assert!(is_final(4009) && is_final(1008));
        for code in [1000, 1001, 1005, 1006, 1011, 1012, 1013, 4001, 4002, 4008] {
            assert!(!is_final(code), "{code} is worth a reconnect");
        }
    }
}
