//! Topic history on Redis: one stream per topic (`<prefix>:h:{topic}`), appended and published
//! live in one step by the Redis Function `sb_publish` (`lua/library.lua`), which every gateway
//! loads (again) whenever it (re)connects, so backends can always `FCALL` it. In a Redis
//! Cluster it is loaded on every primary, and every [`LIBRARY_CHECK_INTERVAL`] a gateway loads it
//! on any primary that lacks it (one added to the cluster later); a `FCALL` that finds no
//! function loads it and tries once more:
//!
//! ```text
//! FCALL sb_publish 1 sb:h:{chat:42} '{"text":"hi"}' [MAXLEN [TTL_MS]]
//! ```
//!
//! Gateways call `sb_publish_prechecked`, the same function without the JSON check of the event
//! (which the gateway made already, and which costs Redis several times the `XADD` for events of
//! a few KB). MAXLEN defaults to [`DEFAULT_FUNCTION_MAXLEN`] (trimming is exact, so "does the history
//! still reach back" has a sure answer); TTL_MS 0 or absent: the stream does not expire.
//! Reads go through `lua/history_read.lua`, which takes the stream's facts (`XINFO STREAM`) and
//! a page of events (`XRANGE`, bounded in entries and bytes) at one instant.

use std::sync::LazyLock;

use async_trait::async_trait;
use redis::Value;
use switchboard_core::backend::{BackendError, HistoryStore};
use switchboard_core::history::{HistoryPage, HistoryRule, PageBounds};
use switchboard_protocol::{EventId, Topic};

use crate::{Op, Plane, RedisBackend, text};

/// Events kept by `sb_publish` when the caller gives no MAXLEN.
const DEFAULT_FUNCTION_MAXLEN: u64 = 10_000;

/// The function library, with its placeholders for the default MAXLEN and the publish command.
const LIBRARY: &str = include_str!("lua/library.lua");

/// How often a gateway in a Redis Cluster checks that every primary has the function library.
pub(crate) const LIBRARY_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);

/// The library's name (`#!lua name=switchboard`).
const LIBRARY_NAME: &str = "switchboard";

/// The library as loaded: MAXLEN's default, and `PUBLISH` (one Redis) or `SPUBLISH` (a cluster).
fn library(cluster: bool) -> String {
    LIBRARY
        .replace("DEFAULT_MAXLEN", &DEFAULT_FUNCTION_MAXLEN.to_string())
        .replace(
            "PUBLISH_COMMAND",
            if cluster { "'SPUBLISH'" } else { "'PUBLISH'" },
        )
}

static READ: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("lua/history_read.lua")));

/// A history read: the stream's facts and the events asked for.
struct StreamRead {
    first: Option<EventId>,
    last: EventId,
    never_trimmed: bool,
    events: Vec<(EventId, Vec<u8>)>,
    /// Stopped at a bound.
    more: bool,
}

impl RedisBackend {
    /// Reads, in one atomic step, the stream's facts and the events after `since` (within
    /// `bounds`): `None` when the topic has no history.
    async fn read_history(
        &self,
        topic: &Topic,
        since: EventId,
        bounds: PageBounds,
    ) -> Result<Option<StreamRead>, BackendError> {
        let mut inv = READ.prepare_invoke();
        inv.key(self.keys.topic_history(topic.as_str()))
            .arg(format!("({since}"))
            .arg(bounds.events)
            .arg(bounds.bytes.max(1));
        let mut conn = self.commands();
        let v: Value = self
            .bounded(
                Op::History,
                async move { inv.invoke_async(&mut conn).await },
            )
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
            more: int_at(5) == Some(1),
        }))
    }

    /// A page of the history after `since`, with whether it still reaches back there.
    async fn read_page(
        &self,
        topic: &Topic,
        since: EventId,
        bounds: PageBounds,
    ) -> Result<HistoryPage, BackendError> {
        let Some(read) = self.read_history(topic, since, bounds).await? else {
            // No history (never, or expired): only "from the very beginning" is complete.
            return Ok(HistoryPage {
                events: Vec::new(),
                recovered: since == EventId::ZERO,
                position: None,
                more: false,
            });
        };
        // Trimming removes the oldest first, so nothing after `since` is gone if the oldest
        // event kept is `since` or older (Redis does not count trimmed ids in
        // `max-deleted-entry-id`). From the very beginning: if nothing was ever trimmed. An id
        // past the last one given out vouches for nothing.
        if since > read.last {
            return Ok(HistoryPage {
                events: Vec::new(),
                recovered: false,
                position: Some(read.last),
                more: false,
            });
        }
        let recovered = if since == EventId::ZERO {
            read.never_trimmed
        } else {
            read.first.is_some_and(|first| first <= since)
        };
        Ok(HistoryPage {
            events: read.events,
            recovered,
            position: Some(read.last),
            more: read.more,
        })
    }
}

impl RedisBackend {
    /// Loads the function library where it is missing: on every primary lacking it in a
    /// cluster, or on the one Redis.
    pub(crate) async fn ensure_library(&self) -> Result<(), BackendError> {
        match &self.plane {
            Plane::Cluster(cluster) => {
                let (cluster, code) = (cluster.clone(), library(true));
                let lacking = self
                    .bounded(Op::History, async move {
                        cluster.ensure_library(LIBRARY_NAME, &code).await
                    })
                    .await?;
                if lacking > 0 {
                    tracing::info!(
                        primaries = lacking,
                        "Redis Cluster: function library loaded where it was missing"
                    );
                }
                Ok(())
            }
            Plane::Node(_) => HistoryStore::prepare(self).await,
        }
    }
}

#[async_trait]
impl HistoryStore for RedisBackend {
    async fn prepare(&self) -> Result<(), BackendError> {
        let mut conn = self.commands();
        // In a cluster, redis-rs sends `FUNCTION LOAD` to every primary.
        let library = library(self.is_cluster());
        self.bounded(Op::History, async move {
            redis::cmd("FUNCTION")
                .arg("LOAD")
                .arg("REPLACE")
                .arg(library)
                .query_async::<Value>(&mut conn)
                .await
        })
        .await
        .map(drop)
    }

    async fn publish(
        &self,
        topic: &Topic,
        data: &str,
        rule: &HistoryRule,
    ) -> Result<EventId, BackendError> {
        let key = self.keys.topic_history(topic.as_str());
        let (len, ttl) = (rule.max_len, rule.ttl.as_millis() as u64);
        // The gateway checked the event: the function need not decode it again.
        let mut fcall = redis::cmd("FCALL");
        fcall
            .arg("sb_publish_prechecked")
            .arg(1)
            .arg(key)
            .arg(data)
            .arg(len)
            .arg(ttl);
        let mut conn = self.commands();
        let call = fcall.clone();
        let mut id: Result<String, BackendError> = self
            .bounded(
                Op::History,
                async move { call.query_async(&mut conn).await },
            )
            .await;
        // A primary without the library (a node that joined the cluster, a flushed Redis): load
        // it everywhere it lacks, and once more.
        if matches!(&id, Err(BackendError::Unavailable(m)) if m.contains("Function not found")) {
            self.ensure_library().await?;
            let mut conn = self.commands();
            id = self
                .bounded(
                    Op::History,
                    async move { fcall.query_async(&mut conn).await },
                )
                .await;
        }
        let id = id?;
        EventId::parse(&id).ok_or_else(|| BackendError::Unavailable(format!("bad stream id {id}")))
    }

    async fn page(
        &self,
        topic: &Topic,
        since: EventId,
        bounds: PageBounds,
    ) -> Result<HistoryPage, BackendError> {
        self.read_page(topic, since, bounds).await
    }

    async fn position(&self, topic: &Topic) -> Result<Option<EventId>, BackendError> {
        let nothing = PageBounds {
            events: 0,
            bytes: 1,
        };
        let read = self.read_history(topic, EventId::ZERO, nothing).await?;
        Ok(read.map(|r| r.last))
    }
}
