//! The worker's backlog: the jobs it fetched but has not started, and which one starts next.
//!
//! A tool's queue is one FIFO stream for every caller, so a worker that took jobs in that order
//! would make one identity's short call wait behind another's many long ones. Instead a worker
//! fetches ahead of its free slots (up to `--backlog` jobs waiting here), keeps the waiting jobs
//! in one FIFO queue per owner (the job's `owner`, the caller's identity), and whenever a slot
//! is free starts the next job round-robin across owners, skipping:
//! - owners that already run `--max-running-per-identity` calls on this worker (so a slot stays
//!   free for the next identity, which starts within one fetch);
//! - jobs whose tool is at its own concurrency limit (a later job of the same owner for another
//!   tool may start: per-owner order holds per tool);
//! - jobs past their deadline (their task answers them; they are never started).
//!
//! - [`FairQueue`]: that choice as pure logic (per-owner queues, the round-robin, the running
//!   counts); unit-tested below.
//! - [`Backlog`]: the queue under a lock, with the worker's slots. [`Backlog::push`] queues a job
//!   and returns its [`Waiting`] handle, through which the job's task receives its [`Ticket`]:
//!   a worker slot, a slot of its tool and a place in its owner's running count, all given back
//!   when the ticket drops, which starts the next job. The task heartbeats meanwhile
//!   (`runner.rs`). [`Backlog::room`] tells the fetch loop when and how much to fetch;
//!   [`Backlog::close`] (shutdown) starts nothing more and ends the waiting: their jobs stay
//!   pending in the backend, and other workers take them over once they go silent.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use switchboard_core::clock::now_ms;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, oneshot};
use tokio_util::sync::CancellationToken;

/// Per-owner FIFO queues read round-robin, with a cap on each owner's running items.
#[derive(Debug)]
pub struct FairQueue<T> {
    queues: HashMap<String, VecDeque<(u64, T)>>,
    /// The owners with waiting items, the next to be served first.
    rotation: VecDeque<String>,
    /// Items started and not yet [`finished`](Self::finished), by owner (no zero entries).
    running: HashMap<String, usize>,
    /// Items one owner may run at once.
    cap: usize,
    len: usize,
    next_id: u64,
}

/// What [`FairQueue::pick`] took: the owner, the item, and what the start check gave.
pub type Picked<T, R> = (String, T, R);

impl<T> FairQueue<T> {
    /// A queue whose owners may each run `cap` items at once (`None`: no cap).
    pub fn new(cap: Option<usize>) -> Self {
        FairQueue {
            queues: HashMap::new(),
            rotation: VecDeque::new(),
            running: HashMap::new(),
            cap: cap.unwrap_or(usize::MAX),
            len: 0,
            next_id: 0,
        }
    }

    /// Items waiting (not started).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Items of `owner` running.
    pub fn running(&self, owner: &str) -> usize {
        self.running.get(owner).copied().unwrap_or(0)
    }

    /// Queues `item` last among `owner`'s; returns its id (for [`remove`](Self::remove)).
    pub fn push(&mut self, owner: &str, item: T) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        let q = self.queues.entry(owner.to_owned()).or_default();
        if q.is_empty() {
            self.rotation.push_back(owner.to_owned());
        }
        q.push_back((id, item));
        self.len += 1;
        id
    }

    /// Takes a waiting item out without starting it.
    pub fn remove(&mut self, owner: &str, id: u64) -> Option<T> {
        let q = self.queues.get_mut(owner)?;
        let pos = q.iter().position(|(i, _)| *i == id)?;
        let (_, item) = q.remove(pos)?;
        if q.is_empty() {
            self.queues.remove(owner);
            self.rotation.retain(|o| o != owner);
        }
        self.len -= 1;
        Some(item)
    }

    /// Starts the next item: from the first owner in the rotation that is under its cap and has
    /// an item that `start` accepts (`Some`), its first such item. That owner goes to the back
    /// of the rotation and counts one more running item. `start` is asked about items in that
    /// order and only until it accepts one, so it may take resources when it accepts.
    pub fn pick<R>(&mut self, mut start: impl FnMut(&T) -> Option<R>) -> Option<Picked<T, R>> {
        for i in 0..self.rotation.len() {
            let owner = &self.rotation[i];
            if self.running.get(owner).copied().unwrap_or(0) >= self.cap {
                continue;
            }
            let q = self
                .queues
                .get_mut(owner)
                .expect("the rotation names owners with waiting items");
            let Some((pos, r)) = q
                .iter()
                .enumerate()
                .find_map(|(pos, (_, item))| start(item).map(|r| (pos, r)))
            else {
                continue;
            };
            let (_, item) = q.remove(pos).expect("found above");
            let now_empty = q.is_empty();
            let owner = self.rotation.remove(i).expect("in range");
            if now_empty {
                self.queues.remove(&owner);
            } else {
                self.rotation.push_back(owner.clone());
            }
            *self.running.entry(owner.clone()).or_default() += 1;
            self.len -= 1;
            return Some((owner, item, r));
        }
        None
    }

    /// One of `owner`'s running items ended.
    pub fn finished(&mut self, owner: &str) {
        if let Some(n) = self.running.get_mut(owner) {
            *n -= 1;
            if *n == 0 {
                self.running.remove(owner);
            }
        }
    }
}

/// A waiting job, as the backlog sees it.
struct Entry {
    /// Its tool's concurrency limit (`Hosted::permits`).
    tool: Arc<Semaphore>,
    deadline_ms: u64,
    start: oneshot::Sender<Ticket>,
}

/// See the module docs.
pub struct Backlog {
    fair: Mutex<FairQueue<Entry>>,
    /// The worker's slots (`--concurrency`).
    slots: Arc<Semaphore>,
    /// Jobs waiting here at most (`--backlog`), fetches included.
    capacity: usize,
    /// Woken when a job leaves the backlog or a slot frees: the fetch loop may fetch again.
    changed: Notify,
    closed: CancellationToken,
}

/// The right to run one job: held for the whole call; dropping it frees the slots and starts
/// the next job.
pub struct Ticket {
    slot: Option<OwnedSemaphorePermit>,
    tool: Option<OwnedSemaphorePermit>,
    owner: String,
    backlog: Arc<Backlog>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        drop(self.slot.take());
        drop(self.tool.take());
        self.backlog.lock().finished(&self.owner);
        self.backlog.changed.notify_one();
        self.backlog.dispatch();
    }
}

/// A job's place in the backlog, held by its task; dropping it takes the job out (if it did
/// not start).
pub struct Waiting {
    backlog: Arc<Backlog>,
    owner: String,
    id: u64,
    start: oneshot::Receiver<Ticket>,
}

impl Waiting {
    /// Waits for the job's turn: `None` once the backlog is closed (shutdown) without it
    /// having started.
    pub async fn ticket(&mut self) -> Option<Ticket> {
        tokio::select! {
            // A ticket already handed out is used, even during shutdown.
            biased;
            t = &mut self.start => t.ok(),
            _ = self.backlog.closed.cancelled() => None,
        }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        // Under the lock, so `dispatch` never sends to a receiver that is gone.
        let removed = self.backlog.lock().remove(&self.owner, self.id).is_some();
        if removed {
            self.backlog.changed.notify_one();
        }
    }
}

impl Backlog {
    /// A backlog of at most `capacity` waiting jobs, starting them into `slots`, each owner
    /// running at most `cap` (`None`: no cap).
    pub fn new(slots: Arc<Semaphore>, capacity: usize, cap: Option<usize>) -> Arc<Backlog> {
        Arc::new(Backlog {
            fair: Mutex::new(FairQueue::new(cap)),
            slots,
            capacity,
            changed: Notify::new(),
            closed: CancellationToken::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, FairQueue<Entry>> {
        self.fair.lock().expect("poisoned")
    }

    /// Jobs waiting.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Queues a job of `owner` for a tool limited by `tool` and returns its place; starts it at
    /// once if it is its turn.
    pub fn push(self: &Arc<Self>, owner: &str, tool: Arc<Semaphore>, deadline_ms: u64) -> Waiting {
        let (tx, rx) = oneshot::channel();
        let id = self.lock().push(
            owner,
            Entry {
                tool,
                deadline_ms,
                start: tx,
            },
        );
        self.dispatch();
        Waiting {
            backlog: self.clone(),
            owner: owner.to_owned(),
            id,
            start: rx,
        }
    }

    /// Starts waiting jobs while there are free slots and jobs that may start.
    fn dispatch(self: &Arc<Self>) {
        if self.closed.is_cancelled() {
            return;
        }
        let mut undelivered = Vec::new();
        let mut started = false;
        {
            let mut fair = self.lock();
            while let Ok(slot) = self.slots.clone().try_acquire_owned() {
                let now = now_ms();
                let picked = fair.pick(|e| {
                    if now >= e.deadline_ms {
                        return None;
                    }
                    e.tool.clone().try_acquire_owned().ok()
                });
                let Some((owner, entry, tool)) = picked else {
                    break;
                };
                started = true;
                let ticket = Ticket {
                    slot: Some(slot),
                    tool: Some(tool),
                    owner,
                    backlog: self.clone(),
                };
                // Cannot fail: a `Waiting` takes its entry out (under this lock) before its
                // receiver goes. Kept for after the lock all the same: a ticket's drop locks.
                if let Err(t) = entry.start.send(ticket) {
                    undelivered.push(t);
                }
            }
        }
        if started {
            self.changed.notify_one();
        }
        drop(undelivered);
    }

    /// Waits until the worker should fetch, and says how many jobs: some while a slot is free
    /// (a job waiting here would have taken it if it could) and the backlog has room; as many as
    /// there are free slots, within the room left.
    pub async fn room(&self) -> usize {
        loop {
            let free = self.slots.available_permits();
            let room = self.capacity.saturating_sub(self.len());
            if free > 0 && room > 0 {
                return free.min(room);
            }
            self.changed.notified().await;
        }
    }

    /// Shutdown: nothing more starts, and waiting jobs stop waiting.
    pub fn close(&self) {
        self.closed.cancel();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Picks with every item startable; `(owner, item)`.
    fn next(q: &mut FairQueue<&'static str>) -> Option<(String, &'static str)> {
        q.pick(|_| Some(())).map(|(o, i, ())| (o, i))
    }

    fn owners_in_turn(q: &mut FairQueue<&'static str>, n: usize) -> Vec<String> {
        (0..n).filter_map(|_| next(q).map(|(o, _)| o)).collect()
    }

    #[test]
    fn owners_take_turns_and_each_keeps_its_order() {
        let mut q = FairQueue::new(None);
        for item in ["a1", "a2", "a3", "a4"] {
            q.push("alice", item);
        }
        q.push("bob", "b1");
        q.push("bob", "b2");
        q.push("carol", "c1");
        assert_eq!(q.len(), 7);
        let order: Vec<_> = (0..7).map(|_| next(&mut q).unwrap().1).collect();
        assert_eq!(order, ["a1", "b1", "c1", "a2", "b2", "a3", "a4"]);
        assert!(q.is_empty());
        assert!(next(&mut q).is_none());
        assert_eq!(q.running("alice"), 4);
    }

    #[test]
    fn a_newcomer_is_served_before_the_one_just_served() {
        let mut q = FairQueue::new(None);
        for item in ["a1", "a2", "a3"] {
            q.push("alice", item);
        }
        assert_eq!(next(&mut q).unwrap().1, "a1");
        q.push("bob", "b1");
        assert_eq!(owners_in_turn(&mut q, 3), ["alice", "bob", "alice"]);
        let mut q = FairQueue::new(None);
        q.push("alice", "a1");
        q.push("alice", "a2");
        next(&mut q);
        next(&mut q);
        // A queue that emptied and fills again joins at the back.
        q.push("bob", "b1");
        q.push("alice", "a3");
        assert_eq!(owners_in_turn(&mut q, 2), ["bob", "alice"]);
    }

    #[test]
    fn the_cap_holds_an_owner_back_until_one_finishes() {
        let mut q = FairQueue::new(Some(2));
        for item in ["a1", "a2", "a3", "a4"] {
            q.push("alice", item);
        }
        assert_eq!(owners_in_turn(&mut q, 3), ["alice", "alice"]);
        assert_eq!(q.running("alice"), 2);
        assert_eq!(q.len(), 2);
        // Another identity still starts, at once.
        q.push("bob", "b1");
        assert_eq!(next(&mut q), Some(("bob".into(), "b1")));
        assert!(next(&mut q).is_none(), "alice is at her cap");
        q.finished("alice");
        assert_eq!(next(&mut q), Some(("alice".into(), "a3")));
        q.finished("bob");
        q.finished("bob"); // more than ran: harmless
        assert_eq!(q.running("bob"), 0);
        assert!(next(&mut q).is_none());
    }

    #[test]
    fn items_that_cannot_start_are_skipped_not_lost() {
        let mut q = FairQueue::new(None);
        q.push("alice", "busy-tool");
        q.push("alice", "a2");
        q.push("bob", "busy-tool");
        q.push("carol", "c1");
        let free = |i: &&str| (*i != "busy-tool").then_some(());
        let mut asked = Vec::new();
        let picked = q.pick(|i| {
            asked.push(*i);
            free(i)
        });
        assert_eq!(picked, Some(("alice".into(), "a2", ())));
        // Asked in order, only until one was accepted.
        assert_eq!(asked, ["busy-tool", "a2"]);
        assert_eq!(q.pick(free).map(|p| p.1), Some("c1"));
        assert_eq!(q.pick(free), None);
        assert_eq!(q.len(), 2);
        // Once the tool has room they start, alice's first (bob was skipped, not demoted).
        let order: Vec<_> = (0..2).map(|_| next(&mut q).unwrap().0).collect();
        assert_eq!(order, ["bob", "alice"]);
    }

    #[test]
    fn removed_items_leave_no_trace() {
        let mut q = FairQueue::new(Some(1));
        let a1 = q.push("alice", "a1");
        let b1 = q.push("bob", "b1");
        q.push("bob", "b2");
        assert_eq!(q.remove("alice", a1), Some("a1"));
        assert_eq!(q.remove("alice", a1), None);
        assert_eq!(q.remove("bob", 999), None);
        assert_eq!(q.remove("bob", b1), Some("b1"));
        assert_eq!(q.len(), 1);
        assert_eq!(next(&mut q), Some(("bob".into(), "b2")));
        assert!(q.is_empty());
    }

    fn tool() -> Arc<Semaphore> {
        Arc::new(Semaphore::new(100))
    }

    /// A deadline far ahead.
    fn later() -> u64 {
        now_ms() + 60_000
    }

    async fn started(w: &mut Waiting) -> Option<Ticket> {
        tokio::time::timeout(Duration::from_millis(50), w.ticket())
            .await
            .ok()
            .flatten()
    }

    #[tokio::test]
    async fn tickets_follow_slots_caps_and_tools() {
        let slots = Arc::new(Semaphore::new(3));
        let b = Backlog::new(slots.clone(), 10, Some(2));
        let mut a: Vec<Waiting> = (0..4).map(|_| b.push("alice", tool(), later())).collect();
        let a1 = started(&mut a[0]).await.expect("a1 starts");
        let a2 = started(&mut a[1]).await.expect("a2 starts");
        assert!(started(&mut a[2]).await.is_none(), "alice is at her cap");
        assert_eq!(b.len(), 2);
        assert_eq!(slots.available_permits(), 1);
        // A free slot and room: fetch, as many as there are free slots.
        assert_eq!(b.room().await, 1);

        let mut bob = b.push("bob", tool(), later());
        let b1 = started(&mut bob).await.expect("bob starts at once");
        assert_eq!(slots.available_permits(), 0);
        drop(b1);
        drop(a1);
        let a3 = started(&mut a[2])
            .await
            .expect("alice's next takes the slot");
        // A job that stops waiting (cancelled) leaves the backlog.
        let last = a.pop().unwrap();
        drop(last);
        assert_eq!(b.len(), 0);

        // A tool at its limit holds its jobs back, not the others.
        let narrow = Arc::new(Semaphore::new(0));
        drop((a2, a3));
        let mut blocked = b.push("carol", narrow.clone(), later());
        let mut other = b.push("carol", tool(), later());
        assert!(started(&mut other).await.is_some());
        assert!(started(&mut blocked).await.is_none());
        narrow.add_permits(1);
        // Started by the next dispatch (a ticket dropped or a job queued).
        drop(b.push("dave", tool(), later()));
        assert!(started(&mut blocked).await.is_some());
    }

    #[tokio::test]
    async fn expired_jobs_never_start_and_close_ends_the_wait() {
        let slots = Arc::new(Semaphore::new(1));
        let b = Backlog::new(slots.clone(), 2, None);
        let mut expired = b.push("alice", tool(), now_ms() - 1);
        assert!(started(&mut expired).await.is_none());
        assert_eq!(slots.available_permits(), 1);
        let mut running = b.push("alice", tool(), later());
        let t = started(&mut running).await.unwrap();
        let mut waiting = b.push("bob", tool(), later());
        // Full: two waiting (the expired one until its task drops it), no slot free.
        assert_eq!(b.len(), 2);
        let room = tokio::time::timeout(Duration::from_millis(50), b.room()).await;
        assert!(room.is_err(), "no fetch while the backlog is full");
        drop(expired);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), b.room())
                .await
                .is_err(),
            "nor while no slot is free"
        );
        b.close();
        assert!(waiting.ticket().await.is_none(), "closed: the wait ends");
        drop(t);
        assert_eq!(slots.available_permits(), 1, "nothing starts once closed");
        drop(waiting);
        assert_eq!(b.room().await, 1);
    }
}
