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

use std::collections::HashMap;

use redis::Value;

use super::BackendError;
use super::redis::RedisBackend;
use crate::history::{EventId, HistoryRule, Replay};
use crate::topic::Topic;

/// Events kept by `sb_publish` when the caller gives no MAXLEN.
pub(super) const DEFAULT_FUNCTION_MAXLEN: u64 = 10_000;

const FUNCTION: &str = r#"#!lua name=switchboard
local function sb_publish(keys, args)
  local stream = keys[1]
  local maxlen = tonumber(args[2] or '') or DEFAULT_MAXLEN
  local ttl = tonumber(args[3] or '') or 0
  local id
  if maxlen > 0 then
    id = redis.call('XADD', stream, 'MAXLEN', maxlen, '*', 'd', args[1])
  else
    id = redis.call('XADD', stream, '*', 'd', args[1])
  end
  if ttl > 0 then redis.call('PEXPIRE', stream, ttl) end
  local channel = string.gsub(stream, ':h:{', ':t:{', 1)
  redis.call('PUBLISH', channel, '#' .. id .. ' ' .. args[1])
  return id
end
redis.register_function('sb_publish', sb_publish)
"#;

fn text(v: &Value) -> Option<String> {
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

    /// From `XINFO STREAM`: the latest id, and whether the history still reaches back to
    /// `since`; `None` when the topic has no history.
    async fn history_info(
        &self,
        topic: &Topic,
        since: EventId,
    ) -> Result<Option<(EventId, bool)>, BackendError> {
        let mut conn = self.commands();
        let key = self.keys().topic_history(topic.as_str());
        let info = self
            .bounded(async move {
                redis::cmd("XINFO")
                    .arg("STREAM")
                    .arg(key)
                    .query_async::<HashMap<String, Value>>(&mut conn)
                    .await
            })
            .await;
        let info = match info {
            Ok(i) => i,
            Err(BackendError::Unavailable(m)) if m.contains("no such key") => return Ok(None),
            Err(e) => return Err(e),
        };
        let id = |k: &str| info.get(k).and_then(text).and_then(|s| EventId::parse(&s));
        let num = |k: &str| match info.get(k) {
            Some(Value::Int(n)) => Some(*n),
            _ => None,
        };
        // Trimming removes the oldest first, so nothing after `since` is gone if the oldest
        // event kept is `since` or older. (Redis does not count trimmed ids in
        // `max-deleted-entry-id`.) From the very beginning: if nothing was ever trimmed.
        let reaches = if since == EventId::ZERO {
            num("entries-added") == num("length")
        } else {
            id("recorded-first-entry-id").is_some_and(|first| first <= since)
        };
        Ok(Some((
            id("last-generated-id").unwrap_or(EventId::ZERO),
            reaches,
        )))
    }

    pub(super) async fn history_replay(
        &self,
        topic: &Topic,
        since: EventId,
        max: usize,
    ) -> Result<Replay, BackendError> {
        let Some((last, recovered)) = self.history_info(topic, since).await? else {
            // No history (never, or expired): only "from the very beginning" is complete.
            return Ok(Replay {
                events: Vec::new(),
                recovered: since == EventId::ZERO,
                position: None,
            });
        };
        let mut conn = self.commands();
        let key = self.keys().topic_history(topic.as_str());
        let entries: Vec<(String, HashMap<String, String>)> = self
            .bounded(async move {
                redis::cmd("XRANGE")
                    .arg(key)
                    .arg(format!("({since}"))
                    .arg("+")
                    .arg("COUNT")
                    .arg(max + 1)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        if entries.len() > max {
            // Too far behind to replay: the client reloads instead.
            return Ok(Replay {
                events: Vec::new(),
                recovered: false,
                position: Some(last),
            });
        }
        let events = entries
            .into_iter()
            .filter_map(|(id, mut f)| Some((EventId::parse(&id)?, f.remove("d")?)))
            .collect();
        Ok(Replay {
            events,
            recovered,
            position: Some(last),
        })
    }

    pub(super) async fn history_position(
        &self,
        topic: &Topic,
    ) -> Result<Option<EventId>, BackendError> {
        Ok(self
            .history_info(topic, EventId::ZERO)
            .await?
            .map(|(last, _)| last))
    }
}
