//! Topic history inside one process, with the Redis semantics: ids `<ms>-<seq>` increasing per
//! topic, exact trimming to the rule's length, the same "does it reach back" rule, and expiry
//! after the rule's ttl without events.

use std::collections::{HashMap, VecDeque};

use async_trait::async_trait;
use switchboard_core::backend::{BackendError, HistoryStore};
use switchboard_core::clock::now_ms;
use switchboard_core::history::{HistoryPage, HistoryRule, PageBounds, live_message};
use switchboard_protocol::{EventId, Topic};

use crate::MemoryBackend;

struct Stream {
    entries: VecDeque<(EventId, String)>,
    last: EventId,
    max_deleted: EventId,
    /// Unix ms after which the stream is gone (0: never).
    expires_at_ms: u64,
}

/// See the module docs.
#[derive(Default)]
pub(crate) struct Histories {
    streams: HashMap<String, Stream>,
}

impl Histories {
    fn live(&mut self, topic: &str, now: u64) -> Option<&mut Stream> {
        if self
            .streams
            .get(topic)
            .is_some_and(|s| s.expires_at_ms != 0 && s.expires_at_ms <= now)
        {
            self.streams.remove(topic);
        }
        self.streams.get_mut(topic)
    }

    pub(crate) fn append(&mut self, topic: &str, data: &str, rule: &HistoryRule) -> EventId {
        let now = now_ms();
        if self.live(topic, now).is_none() {
            self.streams.insert(
                topic.to_owned(),
                Stream {
                    entries: VecDeque::new(),
                    last: EventId::ZERO,
                    max_deleted: EventId::ZERO,
                    expires_at_ms: 0,
                },
            );
        }
        let s = self.streams.get_mut(topic).expect("just inserted");
        let id = s.last.next_at(now);
        s.last = id;
        s.entries.push_back((id, data.to_owned()));
        while s.entries.len() as u64 > rule.max_len {
            if let Some((old, _)) = s.entries.pop_front() {
                s.max_deleted = old;
            }
        }
        s.expires_at_ms = if rule.ttl.is_zero() {
            0
        } else {
            now + rule.ttl.as_millis() as u64
        };
        id
    }

    /// The first events after `since` within `bounds`, as a Redis read would give them.
    pub(crate) fn page(&mut self, topic: &str, since: EventId, bounds: PageBounds) -> HistoryPage {
        let Some(s) = self.live(topic, now_ms()) else {
            return HistoryPage {
                events: Vec::new(),
                recovered: since == EventId::ZERO,
                position: None,
                more: false,
            };
        };
        if since > s.last {
            // An id this history never gave out: it cannot vouch for what came before.
            return HistoryPage {
                events: Vec::new(),
                recovered: false,
                position: Some(s.last),
                more: false,
            };
        }
        let mut events: Vec<(EventId, Vec<u8>)> = Vec::new();
        let mut bytes = 0;
        let mut more = false;
        for (id, d) in s.entries.iter().filter(|(id, _)| *id > since) {
            if events.len() >= bounds.events || bytes >= bounds.bytes.max(1) {
                more = true;
                break;
            }
            bytes += d.len();
            events.push((*id, d.clone().into_bytes()));
        }
        // As on Redis: whole if the oldest event kept is `since` or older; from the very
        // beginning, if nothing was ever trimmed.
        let recovered = if since == EventId::ZERO {
            s.max_deleted == EventId::ZERO
        } else {
            s.entries.front().is_some_and(|(first, _)| *first <= since)
        };
        HistoryPage {
            events,
            recovered,
            position: Some(s.last),
            more,
        }
    }

    pub(crate) fn position(&mut self, topic: &str) -> Option<EventId> {
        self.live(topic, now_ms()).map(|s| s.last)
    }
}

#[async_trait]
impl HistoryStore for MemoryBackend {
    async fn publish(
        &self,
        topic: &Topic,
        data: &str,
        rule: &HistoryRule,
    ) -> Result<EventId, BackendError> {
        // Appended and published under one lock, so live order is id order, as in Redis.
        let mut h = self.histories.lock().expect("lock poisoned");
        let id = h.append(topic.as_str(), data, rule);
        self.deliver_live(topic, live_message(id, data).as_bytes());
        drop(h);
        Ok(id)
    }

    async fn page(
        &self,
        topic: &Topic,
        since: EventId,
        bounds: PageBounds,
    ) -> Result<HistoryPage, BackendError> {
        Ok(self
            .histories
            .lock()
            .expect("lock poisoned")
            .page(topic.as_str(), since, bounds))
    }

    async fn position(&self, topic: &Topic) -> Result<Option<EventId>, BackendError> {
        Ok(self
            .histories
            .lock()
            .expect("lock poisoned")
            .position(topic.as_str()))
    }
}
