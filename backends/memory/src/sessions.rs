//! Sessions in memory, with the Redis contract (`switchboard-redis`'s `sessions.rs`):
//! generation-fenced writes, expiry, and a takeover signal through the sink.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use switchboard_core::backend::{BackendError, SessionStore, TakeoverSink};
use switchboard_core::sessions::{
    Attach, FIELD_GEN, FIELD_NODE, FIELD_OWNER, SessionRecord, SessionUpdate, UpdateOutcome,
};
use tokio::time::{Duration, Instant};

use crate::MemoryBackend;

struct Stored {
    fields: HashMap<String, String>,
    expires: Instant,
}

/// See the module docs.
#[derive(Default)]
pub(crate) struct Sessions {
    map: HashMap<String, Stored>,
    /// The size at which expired sessions are swept next (doubles with the live count).
    sweep_at: usize,
}

impl Sessions {
    fn live(&mut self, id: &str) -> Option<&mut Stored> {
        let now = Instant::now();
        if self.map.get(id).is_some_and(|s| s.expires <= now) {
            self.map.remove(id);
        }
        self.map.get_mut(id)
    }

    /// Drops expired sessions whenever the map has doubled since the last sweep, so memory
    /// follows the live sessions at amortized constant cost.
    fn sweep(&mut self) {
        if self.map.len() < self.sweep_at.max(1024) {
            return;
        }
        let now = Instant::now();
        self.map.retain(|_, s| s.expires > now);
        self.sweep_at = self.map.len() * 2;
    }

    pub(crate) fn create(&mut self, id: &str, owner: &str, node: &str, ttl_ms: u64) {
        self.sweep();
        let fields = HashMap::from([
            (FIELD_OWNER.to_owned(), owner.to_owned()),
            (FIELD_GEN.to_owned(), "1".to_owned()),
            (FIELD_NODE.to_owned(), node.to_owned()),
        ]);
        let expires = Instant::now() + Duration::from_millis(ttl_ms);
        self.map.insert(id.to_owned(), Stored { fields, expires });
    }

    pub(crate) fn attach(&mut self, id: &str, owner: &str, node: &str, ttl_ms: u64) -> Attach {
        let Some(s) = self.live(id) else {
            return Attach::NotFound;
        };
        if s.fields.get(FIELD_OWNER).map(String::as_str) != Some(owner) {
            return Attach::WrongOwner;
        }
        let generation = s
            .fields
            .get(FIELD_GEN)
            .and_then(|g| g.parse::<u64>().ok())
            .unwrap_or(0)
            + 1;
        s.fields
            .insert(FIELD_GEN.to_owned(), generation.to_string());
        s.fields.insert(FIELD_NODE.to_owned(), node.to_owned());
        s.expires = Instant::now() + Duration::from_millis(ttl_ms);
        Attach::Resumed(SessionRecord::from_fields(
            s.fields.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        ))
    }

    pub(crate) fn update(&mut self, u: &SessionUpdate) -> UpdateOutcome {
        if self.live(&u.id).is_none() {
            let Some((owner, node)) = &u.recreate else {
                return UpdateOutcome::Missing;
            };
            self.create(&u.id, owner, node, u.ttl_ms);
            let s = self.map.get_mut(&u.id).expect("just created");
            s.fields
                .insert(FIELD_GEN.to_owned(), u.generation.to_string());
        }
        let s = self.map.get_mut(&u.id).expect("live");
        if s.fields.get(FIELD_GEN) != Some(&u.generation.to_string()) {
            return UpdateOutcome::TakenOver;
        }
        for (f, v) in &u.set {
            s.fields.insert(f.clone(), v.clone());
        }
        for f in &u.del {
            s.fields.remove(f);
        }
        s.expires = Instant::now() + Duration::from_millis(u.ttl_ms);
        UpdateOutcome::Applied
    }
}

#[async_trait]
impl SessionStore for MemoryBackend {
    fn set_sink(&self, sink: Arc<dyn TakeoverSink>) {
        let _ = self.takeover_sink.set(sink);
    }

    async fn create(
        &self,
        id: &str,
        owner: &str,
        node: &str,
        ttl_ms: u64,
    ) -> Result<(), BackendError> {
        self.sessions
            .lock()
            .expect("lock poisoned")
            .create(id, owner, node, ttl_ms);
        Ok(())
    }

    async fn attach(
        &self,
        id: &str,
        owner: &str,
        node: &str,
        ttl_ms: u64,
    ) -> Result<Attach, BackendError> {
        let attached = self
            .sessions
            .lock()
            .expect("lock poisoned")
            .attach(id, owner, node, ttl_ms);
        if let (Attach::Resumed(rec), Some(sink)) = (&attached, self.takeover_sink.get()) {
            sink.session_taken(id, rec.generation);
        }
        Ok(attached)
    }

    async fn update(&self, updates: &[SessionUpdate]) -> Result<Vec<UpdateOutcome>, BackendError> {
        let mut s = self.sessions.lock().expect("lock poisoned");
        Ok(updates.iter().map(|u| s.update(u)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn fenced_by_generation_and_expires() {
        let mut s = Sessions::default();
        s.create("a", "alice", "n1", 1000);
        assert_eq!(s.attach("a", "bob", "n2", 1000), Attach::WrongOwner);
        let Attach::Resumed(rec) = s.attach("a", "alice", "n2", 1000) else {
            panic!("not resumed");
        };
        assert_eq!(rec.generation, 2);
        let stale = SessionUpdate {
            id: "a".into(),
            generation: 1,
            ttl_ms: 1000,
            recreate: None,
            set: vec![("t:x".into(), "1-0".into())],
            del: vec![],
        };
        assert_eq!(s.update(&stale), UpdateOutcome::TakenOver);
        let current = SessionUpdate {
            generation: 2,
            ..stale
        };
        assert_eq!(s.update(&current), UpdateOutcome::Applied);
        tokio::time::advance(Duration::from_millis(1001)).await;
        assert_eq!(s.attach("a", "alice", "n2", 1000), Attach::NotFound);
        assert_eq!(s.update(&current), UpdateOutcome::Missing);
        let recreate = SessionUpdate {
            recreate: Some(("alice".into(), "n3".into())),
            ..current
        };
        assert_eq!(s.update(&recreate), UpdateOutcome::Applied);
        let Attach::Resumed(rec) = s.attach("a", "alice", "n3", 1000) else {
            panic!("not recreated");
        };
        assert_eq!(rec.generation, 3);
        assert!(rec.topics.contains_key("x"));
    }
}
