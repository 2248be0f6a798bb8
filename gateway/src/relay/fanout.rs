//! Topic -> local subscribers, and the delivery of one live event to all of them.
//!
//! The backend calls [`Fanout::deliver`] (the fan-out is its topic sink) for every message on a
//! subscribed topic, from its own task. That call does the per-event work only: the payload is checked as JSON once, the
//! `event` frame is encoded once, and the frame is handed to one of a few fan-out workers through
//! a bounded queue (a topic always goes to the same worker, so its events stay in order). A
//! worker then gives each local subscriber a clone of the same `Bytes` with a non-blocking
//! `try_send`: a full subscriber queue closes that one connection with 4008 and never slows the
//! others. If the workers fall behind and their queue fills, events are dropped and counted
//! (`switchboard_events_dropped_total`) instead of piling up in memory: live pub/sub is at most
//! once, and the backend's queue in front of us is unbounded.
//!
//! Each topic keeps its subscribers by connection id (O(1) add and remove) and a snapshot
//! `Arc<[Subscriber]>` for delivery, rebuilt at the first event after a change, so delivery holds
//! the map's lock only for a lookup and an `Arc` clone.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use switchboard_core::backend::TopicSink;
use switchboard_core::history;
use switchboard_protocol::{EventId, Topic, close, event};
use tokio::sync::mpsc::{self, error::TrySendError as JobFull};

use crate::metrics::Metrics;
use crate::sessions::Position;
use crate::transport::{Link, Out, Receipt, TrySendError, text_frame};

/// Warnings about dropped events are logged at most this often.
const DROP_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// A topic's local subscriber: a connection, and where it is in the topic.
#[derive(Clone)]
pub(crate) struct Subscriber {
    pub(crate) link: Link,
    /// Set while the subscriber's history replay is being read: live events wait here.
    pub(crate) gate: Option<Arc<Mutex<Gate>>>,
    /// On a history topic: the last event id queued to this subscriber (its session saves it).
    pub(crate) position: Option<Arc<Position>>,
}

/// The seam between a subscriber's history replay and its live events. While the replay is
/// read and sent, live events are held here. Afterwards they pass; a late live copy of an event
/// the replay carried is dropped by the subscriber's [`Position`], like any duplicate.
pub(crate) struct Gate {
    holding: bool,
    held: Vec<(Option<EventId>, Bytes)>,
    cap: usize,
}

impl Gate {
    pub(crate) fn new(cap: usize) -> Self {
        Gate {
            holding: true,
            held: Vec::new(),
            cap,
        }
    }

    /// Takes the held events, or, when none are left, stops holding and returns `None`.
    pub(crate) fn take_or_open(&mut self) -> Option<Vec<(Option<EventId>, Bytes)>> {
        if self.held.is_empty() {
            self.holding = false;
            None
        } else {
            Some(std::mem::take(&mut self.held))
        }
    }
}

#[derive(Default)]
struct TopicEntry {
    /// Changes whenever the node's live stream of the topic may have had a gap: a new entry
    /// (the node subscribes afresh) or a lost backend subscription. See [`Fanout::live_since`].
    generation: u64,
    /// The id of the newest history event handed to the topic's subscribers (or held).
    last_live: Option<EventId>,
    subs: HashMap<u64, Subscriber>,
    /// What delivery iterates; `None` after a change until the next event rebuilds it.
    snapshot: Option<Arc<[Subscriber]>>,
    /// Set while the topic's history is read back after the backend subscription was lost:
    /// live events wait here (see [`crate::relay::recovery`]).
    held: Option<Held>,
}

#[derive(Default)]
struct Held {
    events: Vec<(Option<EventId>, Bytes)>,
    /// Events were dropped for want of room: read the history again before going live.
    overflowed: bool,
}

/// An encoded event on its way to a fan-out worker (with its history id, if any).
type Job = (Box<str>, Bytes, Option<EventId>);

/// Room for an event's publisher (`@<subject as a JSON string> `, escapes included) on top of
/// `--max-event-bytes` before a body is too big to be worth parsing.
const MAX_FROM_BYTES: usize = 8 * 1024;

/// See the module docs.
pub(crate) struct Fanout {
    topics: Mutex<HashMap<Topic, TopicEntry>>,
    workers: Vec<mpsc::Sender<Job>>,
    /// Live events held per topic during a recovery, at most.
    hold_cap: usize,
    /// The largest event data relayed, in bytes.
    max_event_bytes: usize,
    hasher: std::collections::hash_map::RandomState,
    metrics: Arc<Metrics>,
    born: Instant,
    /// Milliseconds since `born` of the last drop warning.
    last_drop_log_ms: AtomicU64,
    /// The next [`TopicEntry::generation`].
    generations: AtomicU64,
}

/// Where a node's live stream of a topic stands (see [`Fanout::live_since`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LiveMark {
    pub(crate) generation: u64,
    pub(crate) last: Option<EventId>,
}

impl Fanout {
    /// Builds the fan-out with `workers` workers, each behind a queue of `queue` events; the
    /// receivers are for [`run_worker`].
    pub(crate) fn new(
        metrics: Arc<Metrics>,
        workers: usize,
        queue: usize,
        hold_cap: usize,
        max_event_bytes: usize,
    ) -> (Self, Vec<mpsc::Receiver<Job>>) {
        let (txs, rxs) = (0..workers.max(1)).map(|_| mpsc::channel(queue)).unzip();
        let fanout = Fanout {
            topics: Mutex::new(HashMap::new()),
            workers: txs,
            hold_cap,
            max_event_bytes,
            hasher: Default::default(),
            metrics,
            born: Instant::now(),
            last_drop_log_ms: AtomicU64::new(0),
            generations: AtomicU64::new(1),
        };
        (fanout, rxs)
    }

    /// Adds a local subscriber (a connection subscribes a topic at most once).
    pub(crate) fn add(&self, topic: &Topic, sub: Subscriber) {
        let mut topics = self.topics.lock().expect("fanout lock poisoned");
        let entry = topics.entry(topic.clone()).or_insert_with(|| TopicEntry {
            generation: self.generations.fetch_add(1, Ordering::Relaxed),
            ..TopicEntry::default()
        });
        entry.subs.insert(sub.link.id(), sub);
        entry.snapshot = None;
    }

    /// Removes a connection's subscription to a topic.
    pub(crate) fn remove(&self, topic: &Topic, conn_id: u64) {
        let mut topics = self.topics.lock().expect("fanout lock poisoned");
        if let Some(entry) = topics.get_mut(topic) {
            entry.subs.remove(&conn_id);
            entry.snapshot = None;
            if entry.subs.is_empty() {
                topics.remove(topic);
            }
        }
    }

    /// Whether any local connection wants the topic (what the Redis subscription follows).
    pub(crate) fn is_wanted(&self, topic: &str) -> bool {
        self.topics
            .lock()
            .expect("fanout lock poisoned")
            .contains_key(topic)
    }

    /// The topic's live stream on this node: its generation and the newest history id handed
    /// out. A history page read while the generation was the same as now, and reaching the
    /// history's end at or after `last`, misses nothing a subscriber added since needs: every
    /// newer event still comes live, past that subscriber's gate. `None`: nobody here wants
    /// the topic.
    pub(crate) fn live_since(&self, topic: &str) -> Option<LiveMark> {
        let topics = self.topics.lock().expect("fanout lock poisoned");
        topics.get(topic).map(|e| LiveMark {
            generation: e.generation,
            last: e.last_live,
        })
    }

    fn subscribers(&self, topic: &str) -> Option<Arc<[Subscriber]>> {
        let mut topics = self.topics.lock().expect("fanout lock poisoned");
        let entry = topics.get_mut(topic)?;
        Some(snapshot(entry))
    }

    /// Gives one encoded event to every local subscriber of its topic, or holds it while the
    /// topic is being recovered.
    fn fan_out(&self, topic: &str, frame: &Bytes, id: Option<EventId>) {
        let subs = {
            let mut topics = self.topics.lock().expect("fanout lock poisoned");
            let Some(entry) = topics.get_mut(topic) else {
                return;
            };
            if id.is_some() {
                entry.last_live = entry.last_live.max(id);
            }
            if let Some(held) = &mut entry.held {
                if held.events.len() < self.hold_cap {
                    held.events.push((id, frame.clone()));
                } else {
                    held.overflowed = true;
                }
                return;
            }
            snapshot(entry)
        };
        self.send_to(&subs, topic, frame, id);
        // Once per event on this node: publish time (the id's milliseconds) to queued.
        if let Some(id) = id {
            let ms = switchboard_core::clock::now_ms().saturating_sub(id.ms);
            self.metrics.delivery_latency.0.observe(ms as f64 / 1000.0);
        }
    }

    /// Events waiting in the fan-out workers' queues (sampled at each scrape).
    pub(crate) fn queued_events(&self) -> usize {
        self.workers
            .iter()
            .map(|w| w.max_capacity().saturating_sub(w.capacity()))
            .sum()
    }

    /// Queues one event to each of `subs`, skipping those that already have it (by id).
    fn send_to(&self, subs: &[Subscriber], topic: &str, frame: &Bytes, id: Option<EventId>) {
        let mut delivered = 0u64;
        for sub in subs.iter() {
            let Link { ctl, tx } = &sub.link;
            if ctl.is_closing() {
                continue;
            }
            if let Some(gate) = &sub.gate {
                let mut g = gate.lock().expect("gate lock poisoned");
                if g.holding {
                    if g.held.len() < g.cap {
                        g.held.push((id, frame.clone()));
                    } else if ctl.close(
                        close::SLOW_CONSUMER,
                        "slow consumer: too many events during replay",
                        false,
                    ) {
                        self.metrics.slow_consumers.inc();
                    }
                    continue;
                }
            }
            let out = match (&sub.position, id) {
                (Some(p), Some(id)) => {
                    if !p.advance(id) {
                        continue; // a replay or a recovery carried it already
                    }
                    Out::FrameReceipt(
                        frame.clone(),
                        Receipt {
                            to: p.clone(),
                            mark: Position::mark(id),
                        },
                    )
                }
                _ => Out::Frame(frame.clone()),
            };
            match tx.try_send(out) {
                Ok(()) => delivered += 1,
                Err(TrySendError::Full(_)) => {
                    if ctl.close(
                        close::SLOW_CONSUMER,
                        "slow consumer: outbound queue full",
                        false,
                    ) {
                        self.metrics.slow_consumers.inc();
                        tracing::debug!(conn = ctl.id, topic, "closing a slow consumer (4008)");
                    }
                }
                Err(TrySendError::Closed(_)) => {}
            }
        }
        self.metrics.deliveries.inc_by(delivered);
    }

    /// An event body as backends store and send it (after any `#<id> `), checked: its data
    /// and its publisher, or `None` (counted, and logged at a bounded rate) when it is not one
    /// JSON value or its data is over `--max-event-bytes`. Live, replayed and recovered events
    /// all pass here.
    pub(crate) fn checked<'a>(
        &self,
        topic: &str,
        body: &'a [u8],
    ) -> Option<(&'a str, Option<&'a str>)> {
        // Before parsing: a body far over the bound is not read at all.
        if body.len() > self.max_event_bytes.saturating_add(MAX_FROM_BYTES) {
            self.oversized(topic, body.len());
            return None;
        }
        match history::check_body(body) {
            Ok((data, _)) if data.len() > self.max_event_bytes => {
                self.oversized(topic, data.len());
                None
            }
            Ok(checked) => Some(checked),
            Err(e) => {
                self.metrics.events_invalid.inc();
                self.warn_limited(&format!("dropped an event: {e}"), topic);
                None
            }
        }
    }

    fn oversized(&self, topic: &str, len: usize) {
        self.metrics.events_oversized.inc();
        self.warn_limited(
            &format!(
                "dropped an event of {len} bytes (over --max-event-bytes {})",
                self.max_event_bytes
            ),
            topic,
        );
    }

    /// Logs a warning unless one was logged within [`DROP_LOG_INTERVAL`].
    fn warn_limited(&self, what: &str, topic: &str) {
        let now = self.born.elapsed().as_millis() as u64;
        let last = self.last_drop_log_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= DROP_LOG_INTERVAL.as_millis() as u64
            && self
                .last_drop_log_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(topic, "{what} (further drops within 1 s are only counted)");
        }
    }
}

/// The backend's live messages arrive here.
impl TopicSink for Fanout {
    /// One message from the backend on a topic this node subscribed to.
    fn deliver(&self, topic: &str, payload: &[u8]) {
        self.metrics.events_received.inc();
        let (id, body) = history::split_live(payload);
        let Some((data, from)) = self.checked(topic, body) else {
            return;
        };
        if !self.is_wanted(topic) {
            return;
        }
        let frame = text_frame(&event::encode_event_with_id(topic, data, id, from));
        let shard = (self.hasher.hash_one(topic) % self.workers.len() as u64) as usize;
        if let Err(JobFull::Full(_)) = self.workers[shard].try_send((topic.into(), frame, id)) {
            // The live stream of the topic has a gap now: no history page read before it may
            // stand in for a fresh read (see `live_since`).
            if let Some(entry) = self
                .topics
                .lock()
                .expect("fanout lock poisoned")
                .get_mut(topic)
            {
                entry.generation = self.generations.fetch_add(1, Ordering::Relaxed);
            }
            self.metrics.events_dropped.inc();
            self.warn_limited("dropped an event: fan-out queue full", topic);
        }
    }

    /// Live events of history topics are held from now until [`crate::relay::recovery`] has
    /// read back what the lost connection missed.
    fn subscription_lost(&self) {
        self.hold_history();
    }
}

/// The topic's delivery snapshot, rebuilt after a change.
fn snapshot(entry: &mut TopicEntry) -> Arc<[Subscriber]> {
    entry
        .snapshot
        .get_or_insert_with(|| entry.subs.values().cloned().collect())
        .clone()
}

/// Recovery after the backend subscription was lost (driven by [`crate::relay::recovery`]).
impl Fanout {
    /// Starts holding the live events of every topic with history subscribers. Called in
    /// order with the backend's messages (the connection-lost signal), so nothing newer than
    /// what was already delivered slips past the hold.
    pub(crate) fn hold_history(&self) {
        let mut topics = self.topics.lock().expect("fanout lock poisoned");
        for entry in topics.values_mut() {
            // What the lost connection did not carry is not in the live stream.
            entry.generation = self.generations.fetch_add(1, Ordering::Relaxed);
            if entry.held.is_none() && entry.subs.values().any(|s| s.position.is_some()) {
                entry.held = Some(Held::default());
            }
        }
    }

    /// Topics whose live events are held.
    pub(crate) fn held_topics(&self) -> Vec<Topic> {
        let topics = self.topics.lock().expect("fanout lock poisoned");
        topics
            .iter()
            .filter(|(_, e)| e.held.is_some())
            .map(|(t, _)| t.clone())
            .collect()
    }

    /// The oldest position among the topic's history subscribers whose start is known: where a
    /// read-back starts (a subscriber that has nothing yet: the very start).
    pub(crate) fn oldest_position(&self, topic: &Topic) -> Option<EventId> {
        let subs = self.subscribers(topic.as_str())?;
        subs.iter()
            .filter_map(|s| s.position.as_ref().and_then(|p| p.recovery_start()))
            .min()
    }

    /// Hands a read-back history event to the topic's subscribers that lack it.
    pub(crate) fn deliver_recovered(
        &self,
        topic: &Topic,
        id: EventId,
        data: &str,
        from: Option<&str>,
    ) {
        let Some(subs) = self.subscribers(topic.as_str()) else {
            return;
        };
        if let Some(entry) = self
            .topics
            .lock()
            .expect("fanout lock poisoned")
            .get_mut(topic.as_str())
        {
            entry.last_live = entry.last_live.max(Some(id));
        }
        let frame = text_frame(&event::encode_event_with_id(
            topic.as_str(),
            data,
            Some(id),
            from,
        ));
        self.send_to(&subs, topic.as_str(), &frame, Some(id));
    }

    /// Delivers what was held and goes live. False if events were dropped while holding: the
    /// history must be read again first (the topic stays held).
    pub(crate) fn release(&self, topic: &Topic) -> bool {
        loop {
            let (subs, held) = {
                let mut topics = self.topics.lock().expect("fanout lock poisoned");
                let Some(entry) = topics.get_mut(topic) else {
                    return true;
                };
                let Some(held) = &mut entry.held else {
                    return true;
                };
                if held.overflowed {
                    held.overflowed = false;
                    held.events.clear();
                    return false;
                }
                if held.events.is_empty() {
                    entry.held = None;
                    // A history page read during the hold may miss what recovery delivered.
                    entry.generation = self.generations.fetch_add(1, Ordering::Relaxed);
                    return true;
                }
                let events = std::mem::take(&mut held.events);
                (snapshot(entry), events)
            };
            for (id, frame) in held {
                self.send_to(&subs, topic.as_str(), &frame, id);
            }
        }
    }
}

/// One fan-out worker: takes encoded events off its queue and hands them to subscribers.
pub(crate) async fn run_worker(fanout: Arc<Fanout>, mut rx: mpsc::Receiver<Job>) {
    while let Some((topic, frame, id)) = rx.recv().await {
        fanout.fan_out(&topic, &frame, id);
    }
}
