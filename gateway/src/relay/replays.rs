//! History replays (`subscribe {since}`, session resumes): a topic's history is read in pages
//! bounded in events and bytes (`--replay-page-events`, `--replay-page-bytes`), so that no one
//! backend call holds Redis for long, and each page is read once per node for all the replays
//! that need it at about the same time: a crowd reconnecting to one topic costs Redis one read
//! of it per node, not one per client.
//!
//! A page read is kept by topic and by where it starts for `--replay-cache-ttl`, within
//! `--replay-cache-bytes` for all topics; its events are checked and encoded once, and every
//! replay sends the same frames. A replay that wants the events after `since` takes:
//! - a page that starts at or before `since` and goes on past it without reaching the
//!   history's end: a stream's events never change, so such a page is right however old;
//! - a page that starts at or before `since` and reaches the history's end, if that end is
//!   still the end for this replay: the page was read after the replay's subscriber was in
//!   place, or it was read while the node's live stream of the topic was the one it is now
//!   and no newer event has come live since (then every newer event reaches the replay's gate
//!   live; see [`Fanout::live_since`]). Otherwise the end is read again from there;
//! - a read from exactly `since` in progress: it waits for that one.
//!
//! Anything else reads a page of its own, which the replays after it may share in turn.
//!
//! A replay with more than `--max-replay` events after `since` fails recovery (reload); the
//! pages are gathered before anything is sent, so such a replay sends nothing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use switchboard_core::backend::{BackendError, HistoryStore};
use switchboard_core::history::PageBounds;
use switchboard_protocol::{EventId, Topic, event};
use tokio::sync::OnceCell;
use tokio::time::Instant;

use super::fanout::{Fanout, LiveMark};
use crate::metrics::Metrics;
use crate::transport::text_frame;

/// The settings of replays.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReplaySettings {
    /// What one backend read may carry.
    pub(crate) page: PageBounds,
    /// How long a page read serves the replays after it.
    pub(crate) cache_ttl: Duration,
    /// Bytes of pages kept for later replays, for all topics together.
    pub(crate) cache_bytes: usize,
}

/// One page of a topic's history as read once, its events checked and encoded.
pub(crate) struct Page {
    /// The events are those after this id.
    after: EventId,
    /// Each event's id and `event` frame; `None` when it is not relayed (not JSON, or over
    /// `--max-event-bytes`: counted when the page was read), but the client is past it.
    pub(crate) events: Vec<(EventId, Option<Bytes>)>,
    /// Whether the history reached back to `after`.
    recovered: bool,
    /// The history's latest id when it was read.
    position: Option<EventId>,
    /// The read stopped at a bound: more may follow its last event.
    more: bool,
    /// The frames' bytes.
    bytes: usize,
    /// When the read began: the node's read counter, and the topic's live stream.
    seq: u64,
    mark: Option<LiveMark>,
    read_at: Instant,
}

impl Page {
    /// Whether the history, as this page saw it, reached back to `since` (at or after
    /// `after`): nothing after `since` was trimmed.
    fn reaches_back(&self, since: EventId) -> bool {
        if since == self.after || self.recovered {
            // Reaching back to `after` is reaching back to anything later.
            return self.recovered;
        }
        // The history was trimmed past `after`: the page starts at the oldest event kept.
        since != EventId::ZERO
            && self
                .events
                .first()
                .is_some_and(|(first, _)| *first <= since)
    }
}

/// A replay's pages, gathered: what to send and what to answer.
pub(crate) struct Gathered {
    /// Each page with the id after which its events are this replay's.
    pub(crate) pages: Vec<(Arc<Page>, EventId)>,
    /// Nothing after `since` is missing.
    pub(crate) recovered: bool,
    /// The history's latest id when the last page was read.
    pub(crate) position: Option<EventId>,
}

type Read = Result<Arc<Page>, BackendError>;

/// A page read from `after`: being read, or read.
struct Slot {
    after: EventId,
    page: OnceCell<Read>,
}

#[derive(Default)]
struct Cache {
    topics: HashMap<Topic, Vec<Arc<Slot>>>,
    last_sweep: Option<Instant>,
}

/// See the module docs.
pub(crate) struct Replays {
    history: Arc<dyn HistoryStore>,
    fanout: Arc<Fanout>,
    settings: ReplaySettings,
    cache: Mutex<Cache>,
    /// Bytes of the pages in the cache.
    cached: AtomicUsize,
    /// Orders page reads and replay starts (see [`Self::gather`]).
    seq: AtomicU64,
    metrics: Arc<Metrics>,
}

impl Replays {
    pub(crate) fn new(
        history: Arc<dyn HistoryStore>,
        fanout: Arc<Fanout>,
        metrics: Arc<Metrics>,
        settings: ReplaySettings,
    ) -> Self {
        Replays {
            history,
            fanout,
            settings,
            cache: Mutex::new(Cache::default()),
            cached: AtomicUsize::new(0),
            seq: AtomicU64::new(1),
            metrics,
        }
    }

    /// The pages holding the events after `since`, up to the history's end, for a subscriber
    /// that is in the fan-out (behind its gate) and whose backend subscription is in place.
    /// More than `max` events: not recovered, and no pages.
    pub(crate) async fn gather(
        &self,
        topic: &Topic,
        since: EventId,
        max: usize,
    ) -> Result<Gathered, BackendError> {
        self.metrics.replays.inc();
        // Pages read after this are complete for this subscriber, whatever came live before.
        let start = self.seq.fetch_add(1, Ordering::SeqCst);
        let mut cursor = since;
        let mut out = Gathered {
            pages: Vec::new(),
            recovered: true,
            position: None,
        };
        let mut count = 0usize;
        loop {
            let page = self.page_at(topic, cursor, start).await?;
            out.recovered &= page.reaches_back(cursor);
            out.position = out.position.max(page.position);
            count += page.events.iter().filter(|(id, _)| *id > cursor).count();
            if count > max {
                out.pages.clear();
                out.recovered = false;
                return Ok(out);
            }
            let next = page.events.last().map(|(id, _)| *id);
            let more = page.more;
            out.pages.push((page, cursor));
            match next {
                Some(next) if more => cursor = next,
                _ => return Ok(out),
            }
        }
    }

    /// A page this replay (begun at `start`) may use for the events after `cursor`.
    async fn page_at(&self, topic: &Topic, cursor: EventId, start: u64) -> Read {
        loop {
            let slot = {
                let mut cache = self.cache.lock().expect("replay cache lock poisoned");
                self.sweep(&mut cache);
                let slots = cache.topics.entry(topic.clone()).or_default();
                let now = self.fanout.live_since(topic.as_str());
                let ready = slots.iter().find_map(|s| match s.page.get() {
                    Some(Ok(p)) if self.usable(p, cursor, start, now) => Some(p.clone()),
                    _ => None,
                });
                if let Some(page) = ready {
                    return Ok(page);
                }
                match slots
                    .iter()
                    .find(|s| s.after == cursor && s.page.get().is_none())
                {
                    Some(reading) => reading.clone(),
                    None => {
                        let slot = Arc::new(Slot {
                            after: cursor,
                            page: OnceCell::new(),
                        });
                        slots.push(slot.clone());
                        slot
                    }
                }
            };
            let read = slot.page.get_or_init(|| self.read(topic, cursor)).await;
            match read {
                Ok(page) => {
                    let now = self.fanout.live_since(topic.as_str());
                    if self.usable(page, cursor, start, now) {
                        return Ok(page.clone());
                    }
                    // A read begun before this replay's, whose end is no longer the end:
                    // look again (a read from where it ended, or a new one).
                }
                Err(e) => {
                    let e = e.clone();
                    let mut cache = self.cache.lock().expect("replay cache lock poisoned");
                    if let Some(slots) = cache.topics.get_mut(topic) {
                        slots.retain(|s| !Arc::ptr_eq(s, &slot));
                    }
                    return Err(e);
                }
            }
        }
    }

    /// Whether `page` holds the events after `cursor` for a replay begun at `start`, the
    /// topic's live stream being `now` (see the module docs).
    fn usable(&self, page: &Page, cursor: EventId, start: u64, now: Option<LiveMark>) -> bool {
        if page.after > cursor {
            return false;
        }
        // (A page that stopped at a bound always holds an event; one that holds none is taken
        // for the end, so a malformed read cannot send a replay round in circles.)
        if page.more && !page.events.is_empty() {
            return page.events.last().is_some_and(|(id, _)| *id > cursor);
        }
        // A page that reached the history's end, at or after `cursor`.
        let covers = page.after == cursor || page.position.is_some_and(|p| cursor <= p);
        let still_the_end = page.seq > start
            || matches!((page.mark, now), (Some(then), Some(now))
                if then.generation == now.generation && now.last <= page.position);
        covers && still_the_end
    }

    /// Reads one page from the backend, and checks and encodes its events.
    async fn read(&self, topic: &Topic, after: EventId) -> Read {
        let seq = self.seq.fetch_add(1, Ordering::SeqCst);
        let mark = self.fanout.live_since(topic.as_str());
        self.metrics.replay_pages_read.inc();
        let raw = self.history.page(topic, after, self.settings.page).await?;
        let mut bytes = 0;
        let events = raw
            .events
            .iter()
            .map(|(id, body)| {
                let frame = self
                    .fanout
                    .checked(topic.as_str(), body)
                    .map(|(data, from)| {
                        text_frame(&event::encode_event_with_id(
                            topic.as_str(),
                            data,
                            Some(*id),
                            from,
                        ))
                    });
                bytes += frame.as_ref().map_or(0, Bytes::len);
                (*id, frame)
            })
            .collect();
        self.cached.fetch_add(bytes, Ordering::Relaxed);
        Ok(Arc::new(Page {
            after,
            events,
            recovered: raw.recovered,
            position: raw.position,
            more: raw.more,
            bytes,
            seq,
            mark,
            read_at: Instant::now(),
        }))
    }

    /// Drops pages older than the cache ttl (and abandoned reads), then the oldest while over
    /// the cache's bytes.
    /// Runs at most every tenth of the ttl, unless over the bytes.
    fn sweep(&self, cache: &mut Cache) {
        let now = Instant::now();
        let over = self.cached.load(Ordering::Relaxed) > self.settings.cache_bytes;
        let due = cache
            .last_sweep
            .is_none_or(|last| now.duration_since(last) >= self.settings.cache_ttl / 10);
        if !over && !due {
            return;
        }
        cache.last_sweep = Some(now);
        let ttl = self.settings.cache_ttl;
        let mut freed = 0;
        // Stale: read longer ago than the ttl, or a read nobody waits for any more (the
        // replay that began it was dropped before it finished).
        let stale = |s: &Arc<Slot>| match s.page.get() {
            Some(Ok(p)) => now.duration_since(p.read_at) >= ttl,
            Some(Err(_)) => true,
            None => Arc::strong_count(s) == 1,
        };
        for slots in cache.topics.values_mut() {
            slots.retain(|s| {
                let keep = !stale(s);
                if !keep {
                    freed += page_bytes(s);
                }
                keep
            });
        }
        cache.topics.retain(|_, slots| !slots.is_empty());
        self.cached.fetch_sub(freed, Ordering::Relaxed);
        // Still over: the oldest pages go first.
        while self.cached.load(Ordering::Relaxed) > self.settings.cache_bytes {
            let oldest = cache
                .topics
                .iter()
                .flat_map(|(t, slots)| slots.iter().map(move |s| (t, s)))
                .filter_map(|(t, s)| match s.page.get() {
                    Some(Ok(p)) => Some((p.read_at, t.clone(), s.clone())),
                    _ => None,
                })
                .min_by_key(|(at, _, _)| *at);
            let Some((_, topic, slot)) = oldest else {
                break;
            };
            if let Some(slots) = cache.topics.get_mut(&topic) {
                slots.retain(|s| !Arc::ptr_eq(s, &slot));
                if slots.is_empty() {
                    cache.topics.remove(&topic);
                }
            }
            self.cached.fetch_sub(page_bytes(&slot), Ordering::Relaxed);
        }
    }
}

/// The bytes a cached slot holds.
fn page_bytes(slot: &Slot) -> usize {
    match slot.page.get() {
        Some(Ok(p)) => p.bytes,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use async_trait::async_trait;
    use switchboard_core::backend::TopicSink;
    use switchboard_core::history::{HistoryPage, HistoryRule};

    use super::*;
    use crate::relay::fanout::{Subscriber, run_worker};
    use crate::sessions::Position;
    use crate::transport::{ConnCtl, Link, channel};

    /// A history of `n` events (ids `1-0` ... `n-0`) that counts its reads.
    struct Fixed {
        events: Mutex<Vec<EventId>>,
        reads: AtomicUsize,
    }

    #[async_trait]
    impl HistoryStore for Fixed {
        async fn publish(
            &self,
            _: &Topic,
            _: &str,
            _: &HistoryRule,
        ) -> Result<EventId, BackendError> {
            unreachable!()
        }
        async fn page(
            &self,
            _: &Topic,
            since: EventId,
            bounds: PageBounds,
        ) -> Result<HistoryPage, BackendError> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            let all = self.events.lock().unwrap().clone();
            let after: Vec<_> = all.iter().filter(|id| **id > since).collect();
            let events: Vec<(EventId, Vec<u8>)> = after
                .iter()
                .take(bounds.events)
                .map(|id| (**id, b"{}".to_vec()))
                .collect();
            Ok(HistoryPage {
                more: after.len() > bounds.events,
                events,
                recovered: true,
                position: all.last().copied(),
            })
        }
        async fn position(&self, _: &Topic) -> Result<Option<EventId>, BackendError> {
            Ok(self.events.lock().unwrap().last().copied())
        }
    }

    fn id(ms: u64) -> EventId {
        EventId::parse(&format!("{ms}-0")).unwrap()
    }

    struct Setup {
        history: Arc<Fixed>,
        fanout: Arc<Fanout>,
        replays: Replays,
        topic: Topic,
    }

    fn setup(n: u64) -> Setup {
        let metrics = Arc::new(Metrics::new());
        let (fanout, rxs) = Fanout::new(metrics.clone(), 1, 64, 100, 1 << 20);
        let fanout = Arc::new(fanout);
        for rx in rxs {
            tokio::spawn(run_worker(fanout.clone(), rx));
        }
        let history = Arc::new(Fixed {
            events: Mutex::new((1..=n).map(id).collect()),
            reads: AtomicUsize::new(0),
        });
        let replays = Replays::new(
            history.clone(),
            fanout.clone(),
            metrics,
            ReplaySettings {
                page: PageBounds {
                    events: 4,
                    bytes: 1 << 20,
                },
                cache_ttl: Duration::from_secs(60),
                cache_bytes: 1 << 20,
            },
        );
        let topic = Topic::new("t").unwrap();
        // A history subscriber, so the node's live stream of the topic exists.
        let ctl = Arc::new(ConnCtl::new(1, 0));
        let (tx, _rx) = channel(1024, 1 << 20, ctl.clone());
        std::mem::forget(_rx);
        fanout.add(
            &topic,
            Subscriber {
                link: Link { ctl, tx },
                gate: None,
                position: Some(Arc::new(Position::unknown())),
            },
        );
        Setup {
            history,
            fanout,
            replays,
            topic,
        }
    }

    fn ids(g: &Gathered) -> Vec<EventId> {
        g.pages
            .iter()
            .flat_map(|(p, after)| {
                p.events
                    .iter()
                    .filter(move |(i, _)| i > after)
                    .map(|(i, _)| *i)
            })
            .collect()
    }

    #[tokio::test]
    async fn a_crowd_shares_pages_and_a_stale_end_is_read_again() {
        let s = setup(10);
        let reads = || s.history.reads.load(Ordering::SeqCst);
        // Ten events in pages of four: three reads for the first replay.
        let first = s
            .replays
            .gather(&s.topic, EventId::ZERO, 100)
            .await
            .unwrap();
        assert_eq!(ids(&first), (1..=10).map(id).collect::<Vec<_>>());
        assert!(first.recovered);
        assert_eq!(reads(), 3);
        // The same again, and from inside the history: no read at all.
        let again = s
            .replays
            .gather(&s.topic, EventId::ZERO, 100)
            .await
            .unwrap();
        assert_eq!(ids(&again).len(), 10);
        let inside = s.replays.gather(&s.topic, id(6), 100).await.unwrap();
        assert_eq!(ids(&inside), (7..=10).map(id).collect::<Vec<_>>());
        assert_eq!(reads(), 3);
        // A new event came live: the end is read again, from where the old end stopped.
        s.history.events.lock().unwrap().push(id(11));
        s.fanout
            .deliver("t", format!("#{} {{}}", id(11)).as_bytes());
        tokio::time::sleep(Duration::from_millis(20)).await;
        let later = s.replays.gather(&s.topic, id(6), 100).await.unwrap();
        assert_eq!(ids(&later), (7..=11).map(id).collect::<Vec<_>>());
        assert_eq!(reads(), 4);
        // The live stream had a gap (the backend subscription lost): the end again, and a page
        // read while the topic was held is not the end once the hold is released (recovery
        // delivered what that page may lack).
        s.fanout.hold_history();
        let during = s.replays.gather(&s.topic, id(9), 100).await.unwrap();
        assert_eq!(ids(&during), (10..=11).map(id).collect::<Vec<_>>());
        assert_eq!(reads(), 5);
        assert!(s.fanout.release(&s.topic));
        let after_gap = s.replays.gather(&s.topic, id(9), 100).await.unwrap();
        assert_eq!(ids(&after_gap), (10..=11).map(id).collect::<Vec<_>>());
        assert_eq!(reads(), 6);
        // More than `max` events: nothing, and not recovered.
        let over = s.replays.gather(&s.topic, EventId::ZERO, 5).await.unwrap();
        assert!(over.pages.is_empty() && !over.recovered);
    }
}
