//! Sessions held by this node's connections, and how they reach the backend.
//!
//! A [`LiveSession`] is the in-memory side of a stored session (`switchboard_core::sessions`):
//! the generation this connection holds it at, its subscriptions with the position of the last
//! history event queued to the socket, and the requests answered since the last save. Saving
//! is lazy and batched: a subscribe or an owed call writes at once (a resume must find them),
//! positions and answered requests go out with the node's periodic refresh, which also pushes
//! every held session's expiry ahead, and when the socket closes (which starts the session
//! ttl).
//!
//! Takeover: a newer connection attaching the session raises its generation; the backend
//! signals every node, and the one holding the older generation closes that socket with 4009.
//! A lost signal is caught by the next refresh, whose fenced write is refused.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use switchboard_core::history::EventId;
use switchboard_core::sessions::{self, OwedRequest, SessionUpdate, UpdateOutcome};
use switchboard_core::topic::Topic;
use switchboard_core::wire::close;

use crate::conn::ConnCtl;
use crate::node::Node;

/// Where one subscriber of a history topic is: the last event queued to its socket (what the
/// fan-out de-duplicates against) and the last one written to it (what its session saves, so
/// a resume never skips an event that was queued but not yet written when the socket died).
#[derive(Debug, Default)]
pub(crate) struct Position(Mutex<PositionState>);

#[derive(Debug, Default, Clone, Copy)]
struct PositionState {
    /// The start is known (a fresh subscription learns it after its backend subscription is in
    /// place; until then a recovery has no starting point for it).
    known: bool,
    queued: Option<EventId>,
    written: Option<EventId>,
}

impl Position {
    /// A subscriber whose client has everything up to `at` (`None`: from the very start).
    pub(crate) fn at(at: Option<EventId>) -> Self {
        Position(Mutex::new(PositionState {
            known: true,
            queued: at,
            written: at,
        }))
    }

    /// A fresh subscriber whose start is not read yet.
    pub(crate) fn unknown() -> Self {
        Position::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, PositionState> {
        self.0.lock().expect("position lock poisoned")
    }

    /// Moves the queued position to `id` if it is newer; false for an event this subscriber
    /// already has.
    pub(crate) fn advance(&self, id: EventId) -> bool {
        let mut p = self.state();
        if p.queued.is_some_and(|q| q >= id) {
            return false;
        }
        p.queued = Some(id);
        true
    }

    /// The event `id` was written to the socket.
    pub(crate) fn written(&self, id: EventId) {
        let mut p = self.state();
        if p.written.is_none_or(|w| w < id) {
            p.written = Some(id);
        }
    }

    /// The subscriber's start is now known: it has everything up to `at`.
    pub(crate) fn start_at(&self, at: Option<EventId>) {
        let mut p = self.state();
        p.known = true;
        if let Some(at) = at {
            p.queued = Some(p.queued.map_or(at, |q| q.max(at)));
            p.written = Some(p.written.map_or(at, |w| w.max(at)));
        }
    }

    /// Starts over at `at` (a `since` the history never reached: nothing up to it is had).
    pub(crate) fn reset(&self, at: Option<EventId>) {
        *self.state() = PositionState {
            known: true,
            queued: at,
            written: at,
        };
    }

    /// Where a read-back of the history starts for this subscriber: `None` while its start is
    /// not known; the very start when it has nothing yet.
    pub(crate) fn recovery_start(&self) -> Option<EventId> {
        let p = self.state();
        p.known.then(|| p.queued.unwrap_or(EventId::ZERO))
    }

    /// What the session saves: the last event written (`None`: nothing yet).
    pub(crate) fn saved(&self) -> Option<EventId> {
        self.state().written
    }
}

/// A reply the session is owed, as queued to the socket: once written, it is owed no more.
#[derive(Debug)]
pub(crate) struct OwedReply {
    pub(crate) live: Arc<LiveSession>,
    pub(crate) raw_id: String,
}

struct Tracked {
    position: Option<Arc<Position>>,
    /// The value last written to the session (`None`: never written).
    saved: Option<String>,
}

#[derive(Default)]
struct Pending {
    topics: HashMap<Topic, Tracked>,
    /// Unsubscribed topics whose fields are still stored.
    dropped: Vec<Topic>,
    /// Replies owed: request id (raw JSON) -> (stored value, written to the backend).
    owed: HashMap<String, (String, bool)>,
    /// Owed replies written to the socket whose fields are still stored.
    answered: Vec<String>,
    /// Everything is to be written again, with the session itself (it went missing).
    recreate: bool,
}

/// See the module docs.
pub(crate) struct LiveSession {
    pub(crate) id: Arc<str>,
    pub(crate) generation: u64,
    pub(crate) owner: Arc<str>,
    pub(crate) ctl: Arc<ConnCtl>,
    pending: Mutex<Pending>,
    /// Saved for the last time (its socket closed).
    detached: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for LiveSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveSession")
            .field("id", &self.id)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl LiveSession {
    pub(crate) fn new(id: Arc<str>, generation: u64, owner: Arc<str>, ctl: Arc<ConnCtl>) -> Self {
        LiveSession {
            id,
            generation,
            owner,
            ctl,
            pending: Mutex::default(),
            detached: Default::default(),
        }
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().expect("session lock poisoned")
    }

    /// A subscription to save (with its position, for a history topic).
    pub(crate) fn track(&self, topic: Topic, position: Option<Arc<Position>>) {
        let mut p = self.pending();
        p.dropped.retain(|t| t != &topic);
        p.topics.insert(
            topic,
            Tracked {
                position,
                saved: None,
            },
        );
    }

    pub(crate) fn untrack(&self, topic: &Topic) {
        let mut p = self.pending();
        if p.topics.remove(topic).is_some() {
            p.dropped.push(topic.clone());
        }
    }

    /// A reply the session now owes (saved with the next save).
    pub(crate) fn owe(&self, owed: &OwedRequest) {
        self.pending()
            .owed
            .insert(owed.raw_id.clone(), (owed.value(), false));
    }

    /// An owed reply was written to the socket (or is wanted no more): its field goes with the
    /// next save. Ids never owed are ignored.
    pub(crate) fn answered(&self, raw_id: &str) {
        let mut p = self.pending();
        if p.owed.remove(raw_id).is_some() {
            p.answered.push(raw_id.to_owned());
        }
    }

    /// The changes not yet saved, as one update expiring in `ttl_ms`. What it writes is
    /// marked saved; [`Self::unsave`] undoes that when the write fails.
    fn take_update(&self, ttl_ms: u64, node_id: &str) -> SessionUpdate {
        let mut p = self.pending();
        let recreate = std::mem::take(&mut p.recreate);
        let mut set = Vec::new();
        for (topic, t) in p.topics.iter_mut() {
            let value = t
                .position
                .as_ref()
                .and_then(|p| p.saved())
                .map_or_else(String::new, |id| id.to_string());
            if recreate || t.saved.as_deref() != Some(value.as_str()) {
                set.push((sessions::topic_field(topic.as_str()), value.clone()));
                t.saved = Some(value);
            }
        }
        for (raw, (value, saved)) in p.owed.iter_mut() {
            if recreate || !*saved {
                set.push((sessions::request_field(raw), value.clone()));
                *saved = true;
            }
        }
        let mut del: Vec<String> = p
            .dropped
            .drain(..)
            .map(|t| sessions::topic_field(t.as_str()))
            .collect();
        del.extend(p.answered.drain(..).map(|r| sessions::request_field(&r)));
        SessionUpdate {
            id: self.id.to_string(),
            generation: self.generation,
            ttl_ms,
            recreate: recreate.then(|| (self.owner.to_string(), node_id.to_owned())),
            set,
            del,
        }
    }

    /// A write failed: what it carried is written again next time.
    fn unsave(&self, update: SessionUpdate) {
        let mut p = self.pending();
        for (field, _) in &update.set {
            if let Some(raw) = field.strip_prefix(sessions::REQUEST_PREFIX) {
                if let Some(o) = p.owed.get_mut(raw) {
                    o.1 = false;
                }
            } else if let Some(t) = p
                .topics
                .iter_mut()
                .find(|(topic, _)| sessions::topic_field(topic.as_str()) == *field)
            {
                t.1.saved = None;
            }
        }
        p.recreate |= update.recreate.is_some();
        for field in update.del {
            if let Some(topic) = field.strip_prefix(sessions::TOPIC_PREFIX) {
                if let Ok(t) = Topic::new(topic)
                    && !p.topics.contains_key(&t)
                {
                    p.dropped.push(t);
                }
            } else if let Some(raw) = field.strip_prefix(sessions::REQUEST_PREFIX)
                && !p.owed.contains_key(raw)
            {
                p.answered.push(raw.to_owned());
            }
        }
    }

    fn mark_missing(&self) {
        self.pending().recreate = true;
    }

    fn needs_recreate(&self) -> bool {
        self.pending().recreate
    }
}

/// The sessions held on this node, by id.
#[derive(Default)]
pub(crate) struct Sessions {
    local: Mutex<HashMap<Arc<str>, Arc<LiveSession>>>,
}

fn taken_over(ctl: &ConnCtl) {
    ctl.close(
        close::TAKEN_OVER,
        "session taken over by a newer connection",
        true,
    );
}

impl Sessions {
    /// Registers a connection's session; an older local holder of it is closed with 4009.
    pub(crate) fn insert(&self, live: Arc<LiveSession>) {
        let mut local = self.local.lock().expect("sessions lock poisoned");
        if let Some(old) = local.get(&live.id)
            && old.generation > live.generation
        {
            // A newer one attached already: this one lost before it started.
            taken_over(&live.ctl);
            return;
        }
        if let Some(old) = local.insert(live.id.clone(), live) {
            taken_over(&old.ctl);
        }
    }

    pub(crate) fn remove(&self, live: &Arc<LiveSession>) {
        let mut local = self.local.lock().expect("sessions lock poisoned");
        if local.get(&live.id).is_some_and(|l| Arc::ptr_eq(l, live)) {
            local.remove(&live.id);
        }
    }

    /// The backend says a connection attached `id` at `generation`.
    pub(crate) fn taken(&self, id: &str, generation: u64) {
        let mut local = self.local.lock().expect("sessions lock poisoned");
        if let Some(old) = local.get(id)
            && old.generation < generation
        {
            taken_over(&old.ctl);
            local.remove(id);
        }
    }

    fn all(&self) -> Vec<Arc<LiveSession>> {
        self.local
            .lock()
            .expect("sessions lock poisoned")
            .values()
            .cloned()
            .collect()
    }
}

/// The expiry of a session whose socket is open: the ttl plus two refresh periods, so a node
/// that dies leaves its sessions at least the ttl.
pub(crate) fn attached_ttl_ms(node: &Node) -> u64 {
    (node.config.session_ttl + 2 * node.config.session_refresh).as_millis() as u64
}

/// Writes what `sessions` have not saved, with an expiry of `ttl_ms`; handles a session taken
/// over (4009) or gone missing (written again next time). False when the backend failed.
pub(crate) async fn save(node: &Node, sessions: &[Arc<LiveSession>], ttl_ms: u64) -> bool {
    if sessions.is_empty() {
        return true;
    }
    let updates: Vec<SessionUpdate> = sessions
        .iter()
        .map(|s| s.take_update(ttl_ms, &node.config.node_id))
        .collect();
    match node.backend.session_update(&updates).await {
        Ok(outcomes) => {
            for ((live, outcome), update) in sessions.iter().zip(outcomes).zip(updates) {
                match outcome {
                    UpdateOutcome::Applied => {}
                    UpdateOutcome::TakenOver => {
                        taken_over(&live.ctl);
                        node.sessions.remove(live);
                    }
                    UpdateOutcome::Missing => {
                        tracing::info!(session = %live.id, "session missing from the backend; writing it again");
                        live.unsave(update);
                        live.mark_missing();
                    }
                }
            }
            true
        }
        Err(e) => {
            tracing::debug!(error = %e, sessions = sessions.len(), "saving sessions failed; will retry");
            for (live, update) in sessions.iter().zip(updates) {
                live.unsave(update);
            }
            false
        }
    }
}

/// Saves one session now (a subscribe, an owed call): a resume must find it.
pub(crate) async fn save_now(node: &Node, live: &Arc<LiveSession>) {
    save(node, std::slice::from_ref(live), attached_ttl_ms(node)).await;
}

/// Records a reply the session is owed (a call waiting on a worker) and saves it now, so that a
/// resume anywhere can answer it. Best effort: without Redis there is no resume either.
pub(crate) async fn owe(node: &Node, live: &Arc<LiveSession>, owed: &OwedRequest) {
    live.owe(owed);
    save_now(node, live).await;
}

/// The socket closed: save the session with the session ttl, so it can be resumed within it.
pub(crate) async fn detach(node: &Node, live: &Arc<LiveSession>) {
    node.sessions.remove(live);
    if live
        .detached
        .swap(true, std::sync::atomic::Ordering::Relaxed)
    {
        return; // the writer did it before the close frame
    }
    if live.ctl.close_reason().map(|r| r.code) == Some(close::TAKEN_OVER) {
        return; // no longer ours to write
    }
    let ttl = node.config.session_ttl.as_millis() as u64;
    let write = async {
        save(node, std::slice::from_ref(live), ttl).await;
        // Gone from the backend (a Redis restart without persistence): written again, once.
        if live.needs_recreate() {
            save(node, std::slice::from_ref(live), ttl).await;
        }
    };
    if tokio::time::timeout(node.config.close_timeout, write)
        .await
        .is_err()
    {
        tracing::debug!(session = %live.id, "saving a closed session timed out");
    }
}

/// Every `session_refresh`: saves positions and answered requests of every local session and
/// pushes their expiry ahead.
pub(crate) async fn run_refresh(node: Arc<Node>) {
    let mut tick = tokio::time::interval(node.config.session_refresh);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let all = node.sessions.all();
        for chunk in all.chunks(REFRESH_BATCH) {
            save(&node, chunk, attached_ttl_ms(&node)).await;
        }
    }
}

/// Sessions saved in one backend round trip by the refresh, at most.
const REFRESH_BATCH: usize = 1024;
