//! Sessions on Redis: one hash per session (`<prefix>:s:{<id>}`, fields in
//! [`crate::sessions`]), changed only by the scripts below so that every write is fenced by the
//! session's generation: a connection that was taken over can no longer change the session.
//! Attaching publishes `<id> <gen>` on the session channel, which every gateway listens to.

use std::collections::HashMap;

use redis::Value;

use super::BackendError;
use super::redis::RedisBackend;
use super::redis_history::text;
use crate::sessions::{Attach, SessionRecord, SessionUpdate, UpdateOutcome};

/// KEYS: the session. ARGV: owner, node, ttl ms.
static CREATE: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r#"
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'gen', 1, 'node', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"#,
    )
});

/// KEYS: the session. ARGV: owner, node, ttl ms, session channel, session id.
/// Returns {0} (no such session), {-1} (another owner) or {1, gen, fields...}.
static ATTACH: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return {0} end
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return {-1} end
local gen = redis.call('HINCRBY', KEYS[1], 'gen', 1)
redis.call('HSET', KEYS[1], 'node', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PUBLISH', ARGV[4], ARGV[5] .. ' ' .. gen)
return {1, redis.call('HGETALL', KEYS[1])}
"#,
    )
});

/// KEYS: the session. ARGV: generation, ttl ms, number of fields to set, owner and node to
/// recreate a missing session with (empty: do not), the fields and values, then the fields to
/// delete. Returns 1 (applied), 0 (a newer generation holds it) or -1 (missing).
static UPDATE: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r#"
local g = redis.call('HGET', KEYS[1], 'gen')
if not g then
  if ARGV[4] == '' then return -1 end
  redis.call('HSET', KEYS[1], 'owner', ARGV[4], 'gen', ARGV[1], 'node', ARGV[5])
elseif g ~= ARGV[1] then
  return 0
end
local n = tonumber(ARGV[3])
for i = 0, n - 1 do
  redis.call('HSET', KEYS[1], ARGV[6 + 2 * i], ARGV[7 + 2 * i])
end
for i = 6 + 2 * n, #ARGV do
  redis.call('HDEL', KEYS[1], ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"#,
    )
});

impl RedisBackend {
    pub(super) async fn sessions_create(
        &self,
        id: &str,
        owner: &str,
        node: &str,
        ttl_ms: u64,
    ) -> Result<(), BackendError> {
        let mut inv = CREATE.prepare_invoke();
        inv.key(self.keys().session(id))
            .arg(owner)
            .arg(node)
            .arg(ttl_ms);
        let mut conn = self.commands();
        self.bounded(async move { inv.invoke_async::<i64>(&mut conn).await })
            .await
            .map(drop)
    }

    pub(super) async fn sessions_attach(
        &self,
        id: &str,
        owner: &str,
        node: &str,
        ttl_ms: u64,
    ) -> Result<Attach, BackendError> {
        let k = self.keys();
        let mut inv = ATTACH.prepare_invoke();
        inv.key(k.session(id))
            .arg(owner)
            .arg(node)
            .arg(ttl_ms)
            .arg(k.session_channel())
            .arg(id);
        let mut conn = self.commands();
        let reply: Vec<Value> = self
            .bounded(async move { inv.invoke_async(&mut conn).await })
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

    pub(super) async fn sessions_update(
        &self,
        updates: &[SessionUpdate],
    ) -> Result<Vec<UpdateOutcome>, BackendError> {
        // Sent all at once: the multiplexed connection pipelines them.
        let calls = updates.iter().map(|u| {
            let mut inv = UPDATE.prepare_invoke();
            inv.key(self.keys().session(&u.id))
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
            .bounded(async move { Ok::<_, redis::RedisError>(all.await) })
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

    pub(super) async fn sessions_listen(&self) -> Result<(), BackendError> {
        let mut pubsub = self.pubsub();
        let channel = self.keys().session_channel();
        self.bounded(async move { pubsub.subscribe(channel).await })
            .await
    }
}
