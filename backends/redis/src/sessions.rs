//! Sessions on Redis: one hash per session (`<prefix>:s:{<id>}`, fields in
//! `switchboard_core::sessions`), changed only by the scripts in `lua/session_*.lua`, so that
//! every write is fenced by the session's generation: a connection that was taken over can no
//! longer change the session. Attaching publishes `<id> <gen>` on the session channel, which
//! every gateway listens to.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use async_trait::async_trait;
use redis::Value;
use switchboard_core::backend::{BackendError, SessionStore, TakeoverSink};
use switchboard_core::sessions::{Attach, SessionRecord, SessionUpdate, UpdateOutcome};

use crate::{Op, RedisBackend, text};

static CREATE: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("lua/session_create.lua")));
static ATTACH: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("lua/session_attach.lua")));
static UPDATE: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("lua/session_update.lua")));

#[async_trait]
impl SessionStore for RedisBackend {
    fn set_sink(&self, sink: Arc<dyn TakeoverSink>) {
        let _ = self.sinks.sessions.set(sink);
    }

    async fn prepare(&self) -> Result<(), BackendError> {
        self.listen(vec![self.keys.session_channel()]).await
    }

    async fn create(
        &self,
        id: &str,
        owner: &str,
        node: &str,
        ttl_ms: u64,
    ) -> Result<(), BackendError> {
        let mut inv = CREATE.prepare_invoke();
        inv.key(self.keys.session(id))
            .arg(owner)
            .arg(node)
            .arg(ttl_ms);
        let mut conn = self.commands();
        self.bounded(Op::Sessions, async move {
            inv.invoke_async::<i64>(&mut conn).await
        })
        .await
        .map(drop)
    }

    async fn attach(
        &self,
        id: &str,
        owner: &str,
        node: &str,
        ttl_ms: u64,
    ) -> Result<Attach, BackendError> {
        let k = &self.keys;
        let mut inv = ATTACH.prepare_invoke();
        inv.key(k.session(id))
            .arg(owner)
            .arg(node)
            .arg(ttl_ms)
            .arg(k.session_channel())
            .arg(id);
        let mut conn = self.commands();
        let reply: Vec<Value> = self
            .bounded(
                Op::Sessions,
                async move { inv.invoke_async(&mut conn).await },
            )
            .await?;
        match reply.first() {
            Some(Value::Int(1)) => {}
            Some(Value::Int(-1)) => return Ok(Attach::WrongOwner),
            _ => return Ok(Attach::NotFound),
        }
        let flat: Vec<String> = match reply.get(1) {
            Some(Value::Array(items)) => items.iter().filter_map(text).collect(),
            Some(Value::Map(pairs)) => pairs
                .iter()
                .flat_map(|(k, v)| [text(k), text(v)])
                .flatten()
                .collect(),
            _ => Vec::new(),
        };
        let fields: HashMap<&str, &str> = flat
            .chunks_exact(2)
            .map(|p| (p[0].as_str(), p[1].as_str()))
            .collect();
        Ok(Attach::Resumed(SessionRecord::from_fields(fields)))
    }

    async fn update(&self, updates: &[SessionUpdate]) -> Result<Vec<UpdateOutcome>, BackendError> {
        // Sent all at once: the multiplexed connection pipelines them.
        let calls = updates.iter().map(|u| {
            let mut inv = UPDATE.prepare_invoke();
            inv.key(self.keys.session(&u.id))
                .arg(u.generation)
                .arg(u.ttl_ms)
                .arg(u.set.len());
            match &u.recreate {
                Some((owner, node)) => inv.arg(owner).arg(node),
                None => inv.arg("").arg(""),
            };
            for (f, v) in &u.set {
                inv.arg(f).arg(v);
            }
            for f in &u.del {
                inv.arg(f);
            }
            let mut conn = self.commands();
            async move { inv.invoke_async::<i64>(&mut conn).await }
        });
        let all = futures_util::future::join_all(calls);
        let results = self
            .bounded(Op::Sessions, async move {
                Ok::<_, redis::RedisError>(all.await)
            })
            .await?;
        results
            .into_iter()
            .map(|r| {
                r.map(|n| match n {
                    1 => UpdateOutcome::Applied,
                    0 => UpdateOutcome::TakenOver,
                    _ => UpdateOutcome::Missing,
                })
                .map_err(|e| BackendError::Unavailable(e.to_string()))
            })
            .collect()
    }
}
