//! The requests of one connection that wait in tasks of their own (`tools/call`,
//! `tasks/result`, owed replies after a resume): bounded per connection, keyed by request id,
//! so that `notifications/cancelled` finds a call, a reused id is refused while in flight, and
//! a reply is sent only if its request is still wanted.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use switchboard_protocol::{ErrorCode, RpcError};

/// Request id (raw JSON) -> the caller's task id (`tools/call`), or "" (`tasks/result`,
/// which waits but owns no execution).
#[derive(Clone, Default)]
pub(crate) struct InFlight(Arc<Mutex<HashMap<String, String>>>);

impl InFlight {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.0.lock().expect("in-flight lock poisoned")
    }

    /// Counts a waiting request against the connection's limit of `max` (-32006 over it); a
    /// request id still in flight is -32600.
    pub(crate) fn track(&self, key: &str, task_id: &str, max: usize) -> Result<(), RpcError> {
        let mut f = self.lock();
        if f.contains_key(key) {
            return Err(RpcError::invalid_request(
                "a request with this id is still in flight",
            ));
        }
        if f.len() >= max {
            return Err(RpcError::new(
                ErrorCode::Overloaded,
                format!("too many calls in flight on this connection ({max})"),
            ));
        }
        f.insert(key.to_owned(), task_id.to_owned());
        Ok(())
    }

    /// Removes request `key` if it is still tracked as `tracked_as` (not cancelled, nor
    /// replaced by a newer request with the same id); whether it was.
    pub(crate) fn untrack(&self, key: &str, tracked_as: &str) -> bool {
        let mut f = self.lock();
        if f.get(key).is_some_and(|t| t == tracked_as) {
            f.remove(key);
            true
        } else {
            false
        }
    }

    /// Whether request `key` is still tracked.
    pub(crate) fn contains(&self, key: &str) -> bool {
        self.lock().contains_key(key)
    }

    /// Takes request `key` out (a cancellation): its task id, if it owns one.
    pub(crate) fn cancel(&self, key: &str) -> Option<String> {
        self.lock().remove(key).filter(|t| !t.is_empty())
    }

    /// Untracks a request when dropped (its waiting task ended, however it ended).
    pub(crate) fn untrack_on_drop<'a>(&'a self, key: &'a str, tracked_as: &'a str) -> Untrack<'a> {
        Untrack {
            in_flight: self,
            key,
            tracked_as,
        }
    }
}

/// See [`InFlight::untrack_on_drop`].
pub(crate) struct Untrack<'a> {
    in_flight: &'a InFlight,
    key: &'a str,
    tracked_as: &'a str,
}

impl Drop for Untrack<'_> {
    fn drop(&mut self) {
        self.in_flight.untrack(self.key, self.tracked_as);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_fenced_by_what_it_tracks() {
        let f = InFlight::default();
        f.track("1", "t1", 2).unwrap();
        assert_eq!(f.track("1", "t9", 2).unwrap_err().code, -32600);
        f.track("2", "", 2).unwrap();
        assert_eq!(f.track("3", "t3", 2).unwrap_err().code, -32006);
        // Cancelled: a wait owning no task gives nothing to cancel.
        assert_eq!(f.cancel("2"), None);
        assert!(!f.contains("2"));
        // A request replaced by another with the same id is not untracked by the first.
        assert!(!f.untrack("1", "other"));
        assert!(f.untrack("1", "t1"));
        {
            f.track("4", "t4", 2).unwrap();
            let _guard = f.untrack_on_drop("4", "t4");
        }
        assert!(!f.contains("4"));
    }
}
