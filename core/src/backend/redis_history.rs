//! Topic history on Redis: one stream per topic (`<prefix>:h:{topic}`), appended and
//! published live in one step by the Redis Function `sb_publish`, which every gateway loads
//! (again) whenever it (re)connects, so backends can always `FCALL` it:
//!
//! ```text
//! FCALL sb_publish 1 sb:h:{chat:42} '{"text":"hi"}' [MAXLEN [TTL_MS]]
//! ```
//!
//! MAXLEN defaults to [`DEFAULT_FUNCTION_MAXLEN`] (trimming is exact, so "does the history
//! still reach back" has a sure answer); TTL_MS 0 or absent: the stream does not expire.

use redis::Value;

use super::BackendError;
use super::redis::RedisBackend;
use crate::history::{EventId, HistoryRule, Replay};
use crate::topic::Topic;

/// Events kept by `sb_publish` when the caller gives no MAXLEN.
pub(super) const DEFAULT_FUNCTION_MAXLEN: u64 = 10_000;

const FUNCTION: &str = r#"#!lua name=switchboard
local function whole(v, default)
  if v == nil or v == '' then return default end
  local n = tonumber(v)
  if n == nil or n ~= math.floor(n) or n < 0 or n > 1e15 then return nil end
  return n
end
local function sb_publish(keys, args)
  local stream = keys[1]
  local maxlen = whole(args[2], DEFAULT_MAXLEN)
  local ttl = whole(args[3], 0)
  if maxlen == nil or maxlen < 1 then
    return redis.error_reply('sb_publish: MAXLEN must be a whole number of at least 1')
  end
  if ttl == nil then
    return redis.error_reply('sb_publish: TTL_MS must be a whole number of milliseconds')
  end
  local id
  id = redis.call('XADD', stream, 'MAXLEN', maxlen, '*', 'd', args[1])
  if ttl > 0 then redis.call('PEXPIRE', stream, ttl) end
  local channel = string.gsub(stream, ':h:{', ':t:{', 1)
  redis.call('PUBLISH', channel, '#' .. id .. ' ' .. args[1])
  return id
end
redis.register_function('sb_publish', sb_publish)
"#;

/// KEYS: the stream. ARGV: the exclusive start (`(<id>`), the count. Returns nothing when the
/// stream does not exist, else the first and last ids, entries added and length, and the
/// entries after the start: all read at one instant (a trim in between would hide a gap).
static READ: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return {} end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
local f = {}
for i = 1, #info, 2 do f[info[i]] = info[i + 1] end
local entries = {}
if tonumber(ARGV[2]) > 0 then
  entries = redis.call('XRANGE', KEYS[1], ARGV[1], '+', 'COUNT', ARGV[2])
end
return {f['recorded-first-entry-id'], f['last-generated-id'], f['entries-added'], f['length'], entries}
"#,
    )
});

/// A history read: the stream's facts and the events asked for.
struct StreamRead {
    first: Option<EventId>,
    last: EventId,
    never_trimmed: bool,
    events: Vec<(EventId, Vec<u8>)>,
}

/// A Redis string reply as text (any of RESP3's string kinds).
pub(super) fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        _ => None,
    }
}

impl RedisBackend {
    pub(super) async fn history_load_function(&self) -> Result<(), BackendError> {
        let mut conn = self.commands();
        self.bounded(async move {
            redis::cmd("FUNCTION")
                .arg("LOAD")
                .arg("REPLACE")
                .arg(FUNCTION.replace("DEFAULT_MAXLEN", &DEFAULT_FUNCTION_MAXLEN.to_string()))
                .query_async::<Value>(&mut conn)
                .await
        })
        .await
        .map(drop)
    }

    pub(super) async fn history_publish(
        &self,
        topic: &Topic,
        data: &str,
        rule: &HistoryRule,
    ) -> Result<EventId, BackendError> {
        let mut conn = self.commands();
        let key = self.keys().topic_history(topic.as_str());
        let data = data.to_owned();
        let (len, ttl) = (rule.max_len, rule.ttl.as_millis() as u64);
        let id: String = self
            .bounded(async move {
                redis::cmd("FCALL")
                    .arg("sb_publish")
                    .arg(1)
                    .arg(key)
                    .arg(data)
                    .arg(len)
                    .arg(ttl)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        EventId::parse(&id).ok_or_else(|| BackendError::Unavailable(format!("bad stream id {id}")))
    }

    /// Reads, in one atomic step, the stream's facts and the events after `since` (at most
    /// `count`): `None` when the topic has no history.
    async fn history_read(
        &self,
        topic: &Topic,
        since: EventId,
        count: usize,
    ) -> Result<Option<StreamRead>, BackendError> {
        let mut inv = READ.prepare_invoke();
        inv.key(self.keys().topic_history(topic.as_str()))
            .arg(format!("({since}"))
            .arg(count);
        let mut conn = self.commands();
        let v: Value = self
            .bounded(async move { inv.invoke_async(&mut conn).await })
            .await?;
        let Value::Array(parts) = v else {
            return Err(BackendError::Unavailable("unexpected history reply".into()));
        };
        if parts.is_empty() {
            return Ok(None);
        }
        let id_at = |i: usize| parts.get(i).and_then(text).and_then(|s| EventId::parse(&s));
        let int_at = |i: usize| match parts.get(i) {
            Some(Value::Int(n)) => Some(*n),
            _ => None,
        };
        let mut events = Vec::new();
        if let Some(Value::Array(entries)) = parts.get(4) {
            for e in entries {
                let Value::Array(pair) = e else { continue };
                let (Some(id), Some(Value::Array(fields))) = (
                    pair.first().and_then(text).and_then(|s| EventId::parse(&s)),
                    pair.get(1),
                ) else {
                    continue;
                };
                // The payload as bytes: a bad entry is skipped later, never fails the read.
                if let Some(Value::BulkString(d)) = fields.get(1) {
                    events.push((id, d.clone()));
                }
            }
        }
        Ok(Some(StreamRead {
            first: id_at(0),
            last: id_at(1).unwrap_or(EventId::ZERO),
            never_trimmed: int_at(2).is_some() && int_at(2) == int_at(3),
            events,
        }))
    }

    pub(super) async fn history_replay(
        &self,
        topic: &Topic,
        since: EventId,
        max: usize,
    ) -> Result<Replay, BackendError> {
        self.history_replay_or_page(topic, since, max, false).await
    }

    /// Like `history_replay`, but more than `max` events is a page of the first `max`.
    pub(super) async fn history_read_page(
        &self,
        topic: &Topic,
        since: EventId,
        max: usize,
    ) -> Result<Replay, BackendError> {
        self.history_replay_or_page(topic, since, max, true).await
    }

    async fn history_replay_or_page(
        &self,
        topic: &Topic,
        since: EventId,
        max: usize,
        page: bool,
    ) -> Result<Replay, BackendError> {
        let count = if page { max } else { max + 1 };
        let Some(read) = self.history_read(topic, since, count).await? else {
            // No history (never, or expired): only "from the very beginning" is complete.
            return Ok(Replay {
                events: Vec::new(),
                recovered: since == EventId::ZERO,
                position: None,
            });
        };
        // Trimming removes the oldest first, so nothing after `since` is gone if the oldest
        // event kept is `since` or older (Redis does not count trimmed ids in
        // `max-deleted-entry-id`). From the very beginning: if nothing was ever trimmed. An id
        // past the last one given out vouches for nothing.
        let recovered = if since > read.last {
            false
        } else if since == EventId::ZERO {
            read.never_trimmed
        } else {
            read.first.is_some_and(|first| first <= since)
        };
        if since > read.last || (!page && read.events.len() > max) {
            return Ok(Replay {
                events: Vec::new(),
                recovered: false,
                position: Some(read.last),
            });
        }
        Ok(Replay {
            events: read.events,
            recovered,
            position: Some(read.last),
        })
    }

    pub(super) async fn history_position(
        &self,
        topic: &Topic,
    ) -> Result<Option<EventId>, BackendError> {
        let read = self.history_read(topic, EventId::ZERO, 0).await?;
        Ok(read.map(|r| r.last))
    }
}
