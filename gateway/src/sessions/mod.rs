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

mod position;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use switchboard_core::backend::{BackendError, SessionStore, TakeoverSink};
use switchboard_core::sessions::{self, Attach, OwedRequest, SessionUpdate, UpdateOutcome};
use switchboard_protocol::{Topic, close};

pub(crate) use self::position::Position;
use crate::health::Health;
use crate::transport::{BeforeClose, ConnCtl, Mark, Written};

/// A reply the session is owed, as queued to the socket: once written, it is owed no more.
#[derive(Debug)]
pub(crate) struct OwedReply {
    pub(crate) live: Arc<LiveSession>,
    pub(crate) raw_id: String,
}

impl Written for OwedReply {
    fn written(&self, _: Mark) {
        self.live.answered(&self.raw_id);
    }
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
    detached: AtomicBool,
    /// Where it is saved (what its connection's writer runs before the close frame). Weak:
    /// the sessions keep their live sessions, not the other way round.
    sessions: Weak<Sessions>,
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
    fn new(
        sessions: Weak<Sessions>,
        id: Arc<str>,
        generation: u64,
        owner: Arc<str>,
        ctl: Arc<ConnCtl>,
    ) -> Self {
        LiveSession {
            id,
            generation,
            owner,
            ctl,
            pending: Mutex::default(),
            detached: AtomicBool::new(false),
            sessions,
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

    /// Drops a stored topic this connection did not take back (a resume it may no longer
    /// subscribe to), so the session stops naming it.
    pub(crate) fn forget(&self, topic: &Topic) {
        let mut p = self.pending();
        p.topics.remove(topic);
        if !p.dropped.contains(topic) {
            p.dropped.push(topic.clone());
        }
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

/// The writer saves the session before its close frame, so a client that reconnects on the
/// close finds it up to date; not while the backend is known to be down (the close frame must
/// not wait on it): the connection's teardown saves it then, if it can.
impl BeforeClose for LiveSession {
    fn before_close(self: Arc<Self>) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(async move {
            if let Some(sessions) = self.sessions.upgrade()
                && !sessions.health.backend_down()
            {
                sessions.detach(&self).await;
            }
        })
    }
}

/// How sessions are kept (from the node's configuration).
#[derive(Debug, Clone, Copy)]
pub(crate) struct SessionSettings {
    /// How long a session outlives its socket.
    pub(crate) ttl: Duration,
    /// How often held sessions are saved and their expiry pushed ahead.
    pub(crate) refresh: Duration,
    /// The longest a closing socket's last save may take.
    pub(crate) close_timeout: Duration,
}

/// The sessions held on this node, by id, and how they reach the store.
pub(crate) struct Sessions {
    store: Arc<dyn SessionStore>,
    health: Arc<Health>,
    node_id: Arc<str>,
    settings: SessionSettings,
    local: Arc<Local>,
}

/// The sessions held here, by id; also what the store tells of takeovers. A map of its own, so
/// that the store (which keeps its sink) does not keep the `Sessions` that keep the store.
#[derive(Default)]
struct Local(Mutex<HashMap<Arc<str>, Arc<LiveSession>>>);

impl Local {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Arc<LiveSession>>> {
        self.0.lock().expect("sessions lock poisoned")
    }
}

fn taken_over(ctl: &ConnCtl) {
    ctl.close(
        close::TAKEN_OVER,
        "session taken over by a newer connection",
        true,
    );
}

/// Sessions saved in one backend round trip by the refresh, at most.
const REFRESH_BATCH: usize = 1024;

impl Sessions {
    pub(crate) fn new(
        store: Arc<dyn SessionStore>,
        health: Arc<Health>,
        node_id: &str,
        settings: SessionSettings,
    ) -> Self {
        Sessions {
            store,
            health,
            node_id: Arc::from(node_id),
            settings,
            local: Arc::default(),
        }
    }

    fn local(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Arc<LiveSession>>> {
        self.local.lock()
    }

    /// What the store tells of takeovers (set as its sink once, at start).
    pub(crate) fn takeover_sink(&self) -> Arc<dyn TakeoverSink> {
        self.local.clone()
    }

    /// Stores a new session held here, for `owner`.
    pub(crate) async fn create(&self, id: &str, owner: &str) -> Result<(), BackendError> {
        self.store
            .create(id, owner, &self.node_id, self.attached_ttl_ms())
            .await
    }

    /// Attaches a stored session of `owner` to a connection here (a resume): the takeover
    /// signal reaches the node that held it.
    pub(crate) async fn attach(&self, id: &str, owner: &str) -> Result<Attach, BackendError> {
        self.store
            .attach(id, owner, &self.node_id, self.attached_ttl_ms())
            .await
    }

    /// Ends a stored session now (MCP's `DELETE`), if `generation` still holds it: an expiry
    /// of 0 removes it at once. Whether it did.
    pub(crate) async fn end(&self, id: &str, generation: u64) -> Result<bool, BackendError> {
        let update = SessionUpdate {
            id: id.to_owned(),
            generation,
            ttl_ms: 0,
            ..SessionUpdate::default()
        };
        let outcome = self.store.update(&[update]).await?;
        Ok(outcome.first() == Some(&UpdateOutcome::Applied))
    }

    pub(crate) fn node_id(&self) -> &str {
        &self.node_id
    }

    /// A connection's session, held here from now on (an older local holder of it is closed
    /// with 4009); its connection's writer saves it before its close frame.
    pub(crate) fn open(
        self: &Arc<Self>,
        id: Arc<str>,
        generation: u64,
        owner: Arc<str>,
        ctl: Arc<ConnCtl>,
    ) -> Arc<LiveSession> {
        let live = Arc::new(LiveSession::new(
            Arc::downgrade(self),
            id,
            generation,
            owner,
            ctl,
        ));
        let hook: Arc<dyn BeforeClose> = live.clone();
        live.ctl.set_before_close(Arc::downgrade(&hook));
        self.insert(live.clone());
        live
    }

    /// Registers a connection's session; an older local holder of it is closed with 4009.
    fn insert(&self, live: Arc<LiveSession>) {
        let mut local = self.local();
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
        let mut local = self.local();
        if local.get(&live.id).is_some_and(|l| Arc::ptr_eq(l, live)) {
            local.remove(&live.id);
        }
    }

    fn all(&self) -> Vec<Arc<LiveSession>> {
        self.local().values().cloned().collect()
    }

    /// The expiry of a session whose socket is open: the ttl plus two refresh periods, so a
    /// node that dies leaves its sessions at least the ttl.
    pub(crate) fn attached_ttl_ms(&self) -> u64 {
        (self.settings.ttl + 2 * self.settings.refresh).as_millis() as u64
    }

    /// Writes what `sessions` have not saved, with an expiry of `ttl_ms`; handles a session
    /// taken over (4009) or gone missing (written again next time). False when the backend
    /// failed.
    async fn save(&self, sessions: &[Arc<LiveSession>], ttl_ms: u64) -> bool {
        if sessions.is_empty() {
            return true;
        }
        let updates: Vec<SessionUpdate> = sessions
            .iter()
            .map(|s| s.take_update(ttl_ms, &self.node_id))
            .collect();
        match self.store.update(&updates).await {
            Ok(outcomes) => {
                for ((live, outcome), update) in sessions.iter().zip(outcomes).zip(updates) {
                    match outcome {
                        UpdateOutcome::Applied => {}
                        UpdateOutcome::TakenOver => {
                            taken_over(&live.ctl);
                            self.remove(live);
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
    pub(crate) async fn save_now(&self, live: &Arc<LiveSession>) {
        self.save(std::slice::from_ref(live), self.attached_ttl_ms())
            .await;
    }

    /// Records a reply the session is owed (a call waiting on a worker) and saves it now, so
    /// that a resume anywhere can answer it. Best effort: without Redis there is no resume
    /// either.
    pub(crate) async fn owe(&self, live: &Arc<LiveSession>, owed: &OwedRequest) {
        live.owe(owed);
        self.save_now(live).await;
    }

    /// The socket closed: save the session with the session ttl, so it can be resumed within
    /// it. Once per session (the writer does it before the close frame, the teardown after).
    pub(crate) async fn detach(&self, live: &Arc<LiveSession>) {
        self.remove(live);
        if live.detached.swap(true, Ordering::Relaxed) {
            return; // the writer did it before the close frame
        }
        if live.ctl.close_reason().map(|r| r.code) == Some(close::TAKEN_OVER) {
            return; // no longer ours to write
        }
        let ttl = self.settings.ttl.as_millis() as u64;
        let write = async {
            self.save(std::slice::from_ref(live), ttl).await;
            // Gone from the backend (a Redis restart without persistence): written again, once.
            if live.needs_recreate() {
                self.save(std::slice::from_ref(live), ttl).await;
            }
        };
        if tokio::time::timeout(self.settings.close_timeout, write)
            .await
            .is_err()
        {
            tracing::debug!(session = %live.id, "saving a closed session timed out");
        }
    }

    /// Every refresh period: saves positions and answered requests of every local session
    /// and pushes their expiry ahead.
    pub(crate) async fn run_refresh(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.settings.refresh);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let all = self.all();
            for chunk in all.chunks(REFRESH_BATCH) {
                self.save(chunk, self.attached_ttl_ms()).await;
            }
        }
    }
}

/// The backend says a connection attached session `id` at `generation`: a local holder of an
/// older generation is closed with 4009.
impl TakeoverSink for Local {
    fn session_taken(&self, id: &str, generation: u64) {
        let mut local = self.lock();
        if let Some(old) = local.get(id)
            && old.generation < generation
        {
            taken_over(&old.ctl);
            local.remove(id);
        }
    }
}
