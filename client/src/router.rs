//! Replies that may arrive on a later socket than their request: the request-id space and the
//! waiters a reconnecting [`Session`](crate::Session) shares across its sockets.
//!
//! Every [`Client`](crate::Client) a session opens takes its ids from the router's counter, so
//! an id is never reused across the session's sockets. A reply whose id has no waiter on the
//! socket it arrives on (the request went out on an earlier socket, before a resume) is looked
//! up here. A session's `tools/call` waits here rather than on one socket, which is how its
//! reply survives a resume onto another node.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::value::RawValue;
use tokio::sync::oneshot;

use crate::ClientError;

/// What a routed waiter receives.
pub(crate) type Routed = Result<Box<RawValue>, ClientError>;

/// The id space and the cross-socket waiters of one session. Cheap to clone.
#[derive(Clone)]
pub(crate) struct ReplyRouter {
    inner: Arc<Inner>,
}

struct Inner {
    /// The next id to give out (ids start at 1), as `Client` counts them.
    next_id: Arc<AtomicU64>,
    waiters: Mutex<HashMap<u64, oneshot::Sender<Routed>>>,
}

impl Default for ReplyRouter {
    fn default() -> Self {
        ReplyRouter {
            inner: Arc::new(Inner {
                next_id: Arc::new(AtomicU64::new(1)),
                waiters: Mutex::default(),
            }),
        }
    }
}

impl ReplyRouter {
    /// The id counter, shared with every `Client` of the session.
    pub(crate) fn ids(&self) -> Arc<AtomicU64> {
        self.inner.next_id.clone()
    }

    pub(crate) fn next_id(&self) -> u64 {
        self.inner.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Registers a waiter for `id`; the guard removes it when dropped unanswered.
    pub(crate) fn expect(&self, id: u64) -> (WaiterGuard, oneshot::Receiver<Routed>) {
        let (tx, rx) = oneshot::channel();
        self.lock().insert(id, tx);
        (
            WaiterGuard {
                router: self.clone(),
                id,
            },
            rx,
        )
    }

    /// Hands a reply to its waiter; `false` when nobody waits for `id`.
    pub(crate) fn deliver(&self, id: u64, reply: Routed) -> bool {
        match self.lock().remove(&id) {
            Some(tx) => {
                let _ = tx.send(reply);
                true
            }
            None => false,
        }
    }

    /// Fails every waiter with the error `why` makes.
    pub(crate) fn fail_all(&self, why: impl Fn() -> ClientError) {
        let waiters = std::mem::take(&mut *self.lock());
        for (_, tx) in waiters {
            let _ = tx.send(Err(why()));
        }
    }

    /// How many waiters there are (tests).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<Routed>>> {
        self.inner.waiters.lock().expect("router lock poisoned")
    }
}

/// Removes its waiter when dropped (an answered waiter is already gone): a call abandoned by
/// its caller leaves nothing behind.
pub(crate) struct WaiterGuard {
    router: ReplyRouter,
    id: u64,
}

impl Drop for WaiterGuard {
    fn drop(&mut self) {
        self.router.lock().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_waiters_are_cleaned_up() {
        let r = ReplyRouter::default();
        let (a, b) = (r.next_id(), r.next_id());
        assert_eq!((a, b), (1, 2));
        let (guard, mut rx) = r.expect(a);
        assert!(
            !r.deliver(b, Err(ClientError::Timeout)),
            "nobody waits for b"
        );
        assert!(r.deliver(a, Ok(RawValue::from_string("1".into()).unwrap())));
        assert_eq!(rx.try_recv().unwrap().unwrap().get(), "1");
        drop(guard);
        let (guard, _rx) = r.expect(b);
        assert_eq!(r.len(), 1);
        drop(guard);
        assert_eq!(r.len(), 0, "a dropped call leaves no waiter");
        let (_g, mut rx) = r.expect(7);
        r.fail_all(|| ClientError::SessionLost);
        assert!(matches!(
            rx.try_recv().unwrap(),
            Err(ClientError::SessionLost)
        ));
    }
}
