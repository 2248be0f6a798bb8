//! `subscribe`, `unsubscribe` and `publish`.
//!
//! A subscribe adds the connection to the topic's local fan-out list, then waits until the
//! node's backend subscription covers the topic, so that anything published after the reply
//! reaches the client. A publish goes through the backend even when the publisher's own node
//! has subscribers: every node, this one included, receives it once from the backend.
//!
//! Every operation asks the method layer's [`Access`] first (-32002 when the rules and the
//! caller's grants do not allow it; `subscribe {token}` adds a subscription token's topic).
//! A client's publish carries its subject as the event's `from`: the body that travels
//! through the backend is `@<subject> <json>` (`switchboard_core::history::published_body`).
//!
//! Topics that match a history rule keep their events (`publish` answers the event's `id`).
//! `subscribe {since}` on such a topic replays what came after `since`, then goes live with no
//! gap and no duplicate: live events are held at the subscriber's gate from before the history
//! is read, and when the replay is out, those newer than its last id follow it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::value::RawValue;
use switchboard_core::auth::Op;
use switchboard_core::backend::{HistoryStore, TopicBus};
use switchboard_core::history::{self, HistoryRule};
use switchboard_protocol::methods::topics::{
    Publish, PublishParams, PublishResult, Subscribe, SubscribeParams, SubscribeResult,
    Unsubscribe, UnsubscribeParams,
};
use switchboard_protocol::methods::{Empty, Method};
use switchboard_protocol::{ErrorCode, EventId, RpcError, Topic, close, event};
use tokio::sync::Semaphore;

use super::access::Access;
use super::caller::Caller;
use super::encode::{Reply, encode, params};
use crate::metrics::Metrics;
use crate::relay::fanout::{Fanout, Gate, Subscriber};
use crate::relay::replays::Replays;
use crate::relay::subscriptions::Subscriptions;
use crate::sessions::{Position, Sessions};
use crate::transport::{Out, Receipt};

/// Bytes of replayed events a replay queues before it lets the node's other tasks run.
const REPLAY_SLICE_BYTES: usize = 64 * 1024;

fn topic(name: &str) -> Result<Topic, RpcError> {
    Topic::new(name).map_err(|e| RpcError::invalid_params(format!("invalid topic: {e}")))
}

/// How topics are bounded (from the node's configuration).
#[derive(Debug, Clone)]
pub(crate) struct TopicSettings {
    /// Topics that keep history (first matching rule wins).
    pub(crate) history: Vec<HistoryRule>,
    /// Topics one connection may subscribe to.
    pub(crate) max_subscriptions: usize,
    /// Events a `subscribe {since}` replays at most.
    pub(crate) max_replay: usize,
    /// Live events held for a subscriber while its replay is read.
    pub(crate) replay_buffer: usize,
    /// The longest a replay may take, its wait for a replay slot included.
    pub(crate) replay_timeout: Duration,
    /// The largest event `data` relayed, in bytes (a client's publish over it: -32007).
    pub(crate) max_event_bytes: usize,
    /// How deep a client's published `data` may nest (-32602 deeper).
    pub(crate) max_data_depth: usize,
}

/// The topic methods and the handles they need.
pub(crate) struct Topics {
    pub(crate) access: Arc<Access>,
    pub(crate) fanout: Arc<Fanout>,
    pub(crate) subscriptions: Subscriptions,
    pub(crate) bus: Arc<dyn TopicBus>,
    pub(crate) history: Arc<dyn HistoryStore>,
    /// History replays, read in pages shared by the node's replays of a topic.
    pub(crate) replays: Arc<Replays>,
    pub(crate) sessions: Arc<Sessions>,
    pub(crate) metrics: Arc<Metrics>,
    /// Replays running at once on this node, at most (`max_concurrent_replays`).
    pub(crate) replay_slots: Semaphore,
    pub(crate) settings: TopicSettings,
}

impl Topics {
    /// Routes `subscribe`, `unsubscribe`, `publish` (`None`: not one of them).
    pub(crate) async fn route(
        &self,
        caller: &mut Caller,
        id: Option<&RawValue>,
        method: &str,
        raw: Option<&RawValue>,
    ) -> Option<Reply> {
        // Each arm an async block, so that `?` ends the arm with its error.
        Some(match method {
            Subscribe::NAME => {
                async {
                    encode(
                        id,
                        &self.subscribe(caller, params::<Subscribe>(raw)?).await?,
                    )
                }
                .await
            }
            Unsubscribe::NAME => {
                async {
                    encode(
                        id,
                        &self
                            .unsubscribe(caller, params::<Unsubscribe>(raw)?)
                            .await?,
                    )
                }
                .await
            }
            Publish::NAME => {
                async { encode(id, &self.publish(caller, params::<Publish>(raw)?).await?) }.await
            }
            _ => return None,
        })
    }

    fn rule(&self, topic: &str) -> Option<&HistoryRule> {
        history::rule_for(&self.settings.history, topic)
    }

    /// Whether a topic keeps history.
    pub(crate) fn has_history(&self, topic: &str) -> bool {
        self.rule(topic).is_some()
    }

    /// `subscribe`.
    pub(crate) async fn subscribe(
        &self,
        caller: &mut Caller,
        p: SubscribeParams,
    ) -> Result<SubscribeResult, RpcError> {
        let topic = topic(&p.topic)?;
        let since = match &p.since {
            Some(s) => Some(EventId::parse(s).ok_or_else(|| {
                RpcError::invalid_params("since must be an event id (<ms>-<seq>)")
            })?),
            None => None,
        };
        let by_token = match &p.token {
            Some(token) => {
                self.access
                    .subscription_token(caller, token, &topic)
                    .await?;
                true
            }
            None => false,
        };
        let result = match self.subscribe_to(caller, topic.clone(), since).await {
            Ok(result) => result,
            Err(e) => {
                // What the token opened goes with the subscription it was for.
                if by_token && !caller.topics.contains(&topic) {
                    caller.token_topics.remove(&topic);
                }
                return Err(e);
            }
        };
        if let Some(live) = &caller.live {
            self.sessions.save_now(live).await;
        }
        Ok(result)
    }

    /// Subscribes the connection to `topic`, replaying from `since` on a history topic, and
    /// tracks it in the connection's session (saved by the caller). Also how a resume restores
    /// a topic.
    pub(crate) async fn subscribe_to(
        &self,
        caller: &mut Caller,
        topic: Topic,
        since: Option<EventId>,
    ) -> Result<SubscribeResult, RpcError> {
        self.access.topic(caller, Op::Sub, &topic)?;
        let has_history = self.has_history(topic.as_str());
        if caller.topics.contains(&topic) {
            return Ok(SubscribeResult {
                topic: topic.to_string(),
                position: None,
                recovered: None,
            });
        }
        let cfg = &self.settings;
        if caller.topics.len() >= cfg.max_subscriptions {
            return Err(RpcError::new(
                ErrorCode::Overloaded,
                format!("subscription limit reached ({})", cfg.max_subscriptions),
            ));
        }
        // Replays take one of the node's replay slots from before the gate exists until they
        // are out, so a mass resume holds a bounded number of histories in memory at once. The
        // wait for a slot, and the replay itself, are bounded.
        let replaying = has_history && since.is_some();
        let _slot = if replaying {
            match tokio::time::timeout(cfg.replay_timeout, self.replay_slots.acquire()).await {
                Ok(Ok(permit)) => Some(permit),
                Ok(Err(_)) => return Err(RpcError::backend_unavailable()),
                Err(_) => {
                    return Err(RpcError::new(
                        ErrorCode::Overloaded,
                        "too many history replays in progress, try again",
                    ));
                }
            }
        } else {
            None
        };
        // A replay needs a gate from before the history is read until the replay is out.
        let replay_from = match (has_history, since) {
            (true, Some(since)) => {
                Some((Arc::new(Mutex::new(Gate::new(cfg.replay_buffer))), since))
            }
            _ => None,
        };
        let position_cell = has_history.then(|| {
            Arc::new(match since {
                Some(since) => Position::at(Some(since)),
                None => Position::unknown(),
            })
        });
        let sub = Subscriber {
            link: caller.link.clone(),
            gate: replay_from.as_ref().map(|(gate, _)| gate.clone()),
            position: position_cell.clone(),
        };
        self.fanout.add(&topic, sub);
        caller.topics.insert(topic.clone());
        if let Err(e) = self.subscriptions.sync(vec![topic.clone()]).await {
            tracing::warn!(topic = %topic, error = %e, "subscribe failed");
            self.release(caller, &topic);
            return Err(RpcError::backend_unavailable());
        }
        let (position, recovered) = match (replay_from, &position_cell) {
            (Some((gate, since)), Some(cell)) => {
                self.replay(caller, &topic, since, &gate, cell).await?
            }
            // Where the client starts: what it can give as `since` later.
            (None, Some(cell)) => {
                let position = match self.history.position(&topic).await {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::warn!(topic = %topic, error = %e, "reading the history position failed");
                        self.release(caller, &topic);
                        return Err(RpcError::backend_unavailable());
                    }
                };
                cell.start_at(position);
                (position.map(|p| p.to_string()), None)
            }
            // No history to replay from: the client knows to reload.
            _ => (None, since.map(|_| false)),
        };
        if let Some(live) = &caller.live {
            live.track(topic.clone(), position_cell);
        }
        Ok(SubscribeResult {
            topic: topic.to_string(),
            position,
            recovered,
        })
    }

    /// Replays the history after `since` into the socket, then what arrived live meanwhile at
    /// the gate; answers the position the client is at now and whether nothing was missing.
    /// The history is read in pages shared with the node's other replays of the topic
    /// ([`Replays`]).
    async fn replay(
        &self,
        caller: &mut Caller,
        topic: &Topic,
        since: EventId,
        gate: &Mutex<Gate>,
        cell: &Arc<Position>,
    ) -> Result<(Option<String>, Option<bool>), RpcError> {
        let give_up = tokio::time::Instant::now() + self.settings.replay_timeout;
        let gathered = tokio::time::timeout_at(
            give_up,
            self.replays.gather(topic, since, self.settings.max_replay),
        )
        .await;
        let replay = match gathered {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                tracing::warn!(topic = %topic, error = %e, "reading history failed");
                self.release(caller, topic);
                return Err(RpcError::backend_unavailable());
            }
            Err(_) => {
                self.release(caller, topic);
                return Err(RpcError::new(
                    ErrorCode::Overloaded,
                    "the history replay took too long, try again",
                ));
            }
        };
        // A `since` the history never reached (a wrong id, a history that was lost): the
        // client has none of what is there; start from what there is.
        let mut last = since;
        let newest_stored = replay.position.unwrap_or(EventId::ZERO);
        if since > newest_stored {
            last = newest_stored;
            cell.reset(replay.position);
        }
        let receipt = |id: EventId| Receipt {
            to: cell.clone(),
            mark: Position::mark(id),
        };
        let mut sent_bytes = 0;
        for (page, after) in &replay.pages {
            for (id, frame) in page.events.iter().filter(|(id, _)| id > after) {
                // Not relayed (not JSON, or too big): counted when read; the client is past it.
                if let Some(frame) = frame {
                    cell.advance(*id);
                    sent_bytes += frame.len();
                    let out = Out::FrameReceipt(frame.clone(), receipt(*id));
                    if !self.send_with_headroom(caller, out, give_up).await {
                        return Err(self.abandon_replay(caller, topic));
                    }
                    // A crowd of replays must not keep the node's live events waiting: each
                    // one lets the others (and the fan-out) run between small slices.
                    if sent_bytes >= REPLAY_SLICE_BYTES {
                        sent_bytes = 0;
                        tokio::task::yield_now().await;
                    }
                }
                last = *id;
            }
        }
        // Then what arrived live meanwhile, newer than the replay, until nothing is held; the
        // gate stays, dropping late live copies of replayed events.
        loop {
            let held = gate.lock().expect("gate lock poisoned").take_or_open();
            let Some(held) = held else { break };
            for (id, frame) in held {
                let out = match id {
                    Some(id) if !cell.advance(id) => continue,
                    Some(id) => {
                        last = id;
                        Out::FrameReceipt(frame, receipt(id))
                    }
                    None => Out::Frame(frame),
                };
                if !self.send_with_headroom(caller, out, give_up).await {
                    return Err(self.abandon_replay(caller, topic));
                }
            }
        }
        // Where the client is now: also past events it needs not replay (invalid ones, or
        // those between its `since` and a failed recovery's newest).
        let position = replay.position.map_or(last, |p| p.max(last));
        cell.start_at(Some(position));
        Ok((Some(position.to_string()), Some(replay.recovered)))
    }

    /// A replay that cannot be delivered (the connection is going, or its client does not
    /// read): the subscription is undone and the socket closed without sending what is queued,
    /// so nothing after the undelivered event is ever taken for delivered.
    fn abandon_replay(&self, caller: &mut Caller, topic: &Topic) -> RpcError {
        if caller.link.ctl.close(
            close::SLOW_CONSUMER,
            "slow consumer: history replay not read",
            false,
        ) {
            self.metrics.slow_consumers.inc();
        }
        self.release(caller, topic);
        RpcError::new(
            ErrorCode::Overloaded,
            "the history replay could not be delivered",
        )
    }

    /// Queues one replayed event, first waiting (woken by the writer's drains) until the
    /// socket's queue is at most half full, so that live events of the connection's other
    /// topics still find room (a full queue would close it as a slow consumer). False when the
    /// connection is going, or the replay is past `give_up`.
    async fn send_with_headroom(
        &self,
        caller: &Caller,
        out: Out,
        give_up: tokio::time::Instant,
    ) -> bool {
        let tx = &caller.link.tx;
        let half = tx.bound() / 2;
        if !tx.has_room(half) {
            match tokio::time::timeout_at(give_up, tx.room(half)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return false,
            }
        }
        tx.send(out).await.is_ok()
    }

    /// Undoes a subscription that could not be completed.
    fn release(&self, caller: &mut Caller, topic: &Topic) {
        self.fanout.remove(topic, caller.link.id());
        caller.topics.remove(topic);
        self.subscriptions.sync_later(vec![topic.clone()]);
    }

    /// `unsubscribe`.
    pub(crate) async fn unsubscribe(
        &self,
        caller: &mut Caller,
        p: UnsubscribeParams,
    ) -> Result<Empty, RpcError> {
        let topic = topic(&p.topic)?;
        caller.token_topics.remove(&topic);
        if caller.topics.remove(&topic) {
            self.fanout.remove(&topic, caller.link.id());
            if let Some(live) = &caller.live {
                live.untrack(&topic);
                self.sessions.save_now(live).await;
            }
            // Wait, so that once the reply is out the node holds no subscription nobody wants;
            // a failure is retried by the subscription task and does not concern the client.
            let _ = self.subscriptions.sync(vec![topic]).await;
        }
        Ok(Empty {})
    }

    /// `publish`: the event carries its publisher's subject (`from`), whatever its data says.
    pub(crate) async fn publish(
        &self,
        caller: &Caller,
        p: PublishParams<'_>,
    ) -> Result<PublishResult, RpcError> {
        let topic = topic(&p.topic)?;
        self.access.topic(caller, Op::Pub, &topic)?;
        let data = p.data.get();
        let cfg = &self.settings;
        if data.len() > cfg.max_event_bytes {
            return Err(RpcError::new(
                ErrorCode::TooLarge,
                format!(
                    "data is larger than maxEventBytes ({})",
                    cfg.max_event_bytes
                ),
            ));
        }
        if event::nests_deeper_than(data, cfg.max_data_depth) {
            return Err(RpcError::invalid_params(format!(
                "data nests deeper than maxDataDepth ({})",
                cfg.max_data_depth
            )));
        }
        let body = history::published_body(caller.owner(), data);
        let failed = |e: switchboard_core::backend::BackendError| {
            tracing::warn!(topic = %topic, error = %e, "publish failed");
            RpcError::backend_unavailable()
        };
        let id = match self.rule(topic.as_str()) {
            Some(rule) => Some(
                self.history
                    .publish(&topic, &body, rule)
                    .await
                    .map_err(failed)?
                    .to_string(),
            ),
            None if p.history == Some(true) => {
                return Err(RpcError::invalid_params(
                    "history is not enabled for this topic",
                ));
            }
            None => {
                self.bus.publish(&topic, &body).await.map_err(failed)?;
                None
            }
        };
        self.metrics.publishes.inc();
        Ok(PublishResult { id })
    }

    /// Leaves the subscriptions the caller's (new) grants no longer allow, but those a
    /// subscription token opened; answers their names.
    pub(crate) async fn revoke_forbidden(&self, caller: &mut Caller) -> Vec<String> {
        let gone: Vec<Topic> = caller
            .topics
            .iter()
            .filter(|t| !self.access.may(caller, Op::Sub, t))
            .cloned()
            .collect();
        if gone.is_empty() {
            return Vec::new();
        }
        for t in &gone {
            caller.topics.remove(t);
            self.fanout.remove(t, caller.link.id());
            if let Some(live) = &caller.live {
                live.untrack(t);
            }
        }
        if let Some(live) = &caller.live {
            self.sessions.save_now(live).await;
        }
        self.subscriptions.sync_later(gone.clone());
        gone.iter().map(|t| t.to_string()).collect()
    }

    /// Releases every subscription of a closed connection.
    pub(crate) fn release_all(&self, caller: &mut Caller) {
        if caller.topics.is_empty() {
            return;
        }
        let topics: Vec<Topic> = caller.topics.drain().collect();
        for t in &topics {
            self.fanout.remove(t, caller.link.id());
        }
        self.subscriptions.sync_later(topics);
    }
}
