//! `subscribe`, `unsubscribe` and `publish`.
//!
//! A subscribe adds the connection to the topic's local fan-out list, then waits until the
//! node's backend subscription covers the topic, so that anything published after the reply
//! reaches the client. A publish goes through the backend even when the publisher's own node
//! has subscribers: every node, this one included, receives it once from Redis.
//!
//! Topics that match a history rule keep their events (`publish` answers the event's `id`).
//! `subscribe {since}` on such a topic replays what came after `since`, then goes live with no
//! gap and no duplicate: live events are held at the subscriber's gate from before the history
//! is read, and when the replay is out, those newer than its last id follow it.

use std::sync::{Arc, Mutex};

use serde_json::value::RawValue;
use switchboard_core::history::{self, EventId};
use switchboard_core::topic::Topic;
use switchboard_core::wire::{
    self, ErrorCode, PublishParams, PublishResult, RpcError, SubscribeParams, SubscribeResult,
    UnsubscribeParams, close,
};

use crate::conn::{Out, text_frame};
use crate::dispatch::ConnState;
use crate::fanout::{Gate, Subscriber};
use crate::node::Node;
use crate::sessions::{self, Position};

fn topic(name: &str) -> Result<Topic, RpcError> {
    Topic::new(name).map_err(|e| RpcError::invalid_params(format!("invalid topic: {e}")))
}

fn backend_unavailable() -> RpcError {
    RpcError::new(ErrorCode::Internal, "backend unavailable, try again")
}

pub(crate) async fn subscribe(
    node: &Arc<Node>,
    state: &mut ConnState,
    params: Option<&RawValue>,
) -> Result<SubscribeResult, RpcError> {
    let p: SubscribeParams = wire::decode_params(params)?;
    let topic = topic(&p.topic)?;
    let since =
        match &p.since {
            Some(s) => Some(EventId::parse(s).ok_or_else(|| {
                RpcError::invalid_params("since must be an event id (<ms>-<seq>)")
            })?),
            None => None,
        };
    let result = subscribe_to(node, state, topic, since).await?;
    if let Some(live) = &state.live {
        sessions::save_now(node, live).await;
    }
    Ok(result)
}

/// Subscribes the connection to `topic`, replaying from `since` on a history topic, and tracks
/// it in the connection's session (saved by the caller). Also how a resume restores a topic.
pub(crate) async fn subscribe_to(
    node: &Arc<Node>,
    state: &mut ConnState,
    topic: Topic,
    since: Option<EventId>,
) -> Result<SubscribeResult, RpcError> {
    let has_history = history::rule_for(&node.config.history, topic.as_str()).is_some();
    if state.topics.contains(&topic) {
        return Ok(SubscribeResult {
            topic: topic.to_string(),
            position: None,
            recovered: None,
        });
    }
    if state.topics.len() >= node.config.max_subscriptions {
        return Err(RpcError::new(
            ErrorCode::Overloaded,
            format!(
                "subscription limit reached ({})",
                node.config.max_subscriptions
            ),
        ));
    }
    // Replays take one of the node's replay slots from before the gate exists until they are
    // out, so a mass resume holds a bounded number of histories in memory at once. The wait
    // for a slot, and the replay itself, are bounded.
    let replaying = has_history && since.is_some();
    let _slot = if replaying {
        match tokio::time::timeout(node.config.replay_timeout, node.replay_slots.acquire()).await {
            Ok(Ok(permit)) => Some(permit),
            Ok(Err(_)) => return Err(backend_unavailable()),
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
        (true, Some(since)) => Some((
            Arc::new(Mutex::new(Gate::new(node.config.replay_buffer))),
            since,
        )),
        _ => None,
    };
    let position_cell = has_history.then(|| {
        Arc::new(match since {
            Some(since) => Position::at(Some(since)),
            None => Position::unknown(),
        })
    });
    let sub = Subscriber {
        ctl: state.ctl.clone(),
        tx: state.tx.clone(),
        gate: replay_from.as_ref().map(|(gate, _)| gate.clone()),
        position: position_cell.clone(),
    };
    node.fanout.add(&topic, sub.clone());
    state.topics.insert(topic.clone());
    if let Err(e) = node.subscriptions.sync(vec![topic.clone()]).await {
        tracing::warn!(topic = %topic, error = %e, "subscribe failed");
        release(node, state, &topic);
        return Err(backend_unavailable());
    }
    let (position, recovered) = match (replay_from, &position_cell) {
        (Some((gate, since)), Some(cell)) => {
            let replay = match node
                .backend
                .replay(&topic, since, node.config.max_replay)
                .await
            {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(topic = %topic, error = %e, "reading history failed");
                    release(node, state, &topic);
                    return Err(backend_unavailable());
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
            let give_up = tokio::time::Instant::now() + node.config.replay_timeout;
            for (id, data) in &replay.events {
                // History written by any backend: only valid JSON reaches a client.
                if wire::check_payload(data).is_ok() {
                    let data = std::str::from_utf8(data).expect("checked");
                    let frame =
                        text_frame(&wire::encode_event_with_id(topic.as_str(), data, Some(*id)));
                    cell.advance(*id);
                    let out = Out::Event(frame, cell.clone(), *id);
                    if !send_with_headroom(node, state, out, give_up).await {
                        return Err(abandon_replay(node, state, &topic));
                    }
                } else {
                    node.metrics.events_invalid.inc();
                }
                last = *id;
            }
            // Then what arrived live meanwhile, newer than the replay, until nothing is held;
            // the gate stays, dropping late live copies of replayed events.
            loop {
                let held = gate.lock().expect("gate lock poisoned").take_or_open();
                let Some(held) = held else { break };
                for (id, frame) in held {
                    let out = match id {
                        Some(id) if !cell.advance(id) => continue,
                        Some(id) => {
                            last = id;
                            Out::Event(frame, cell.clone(), id)
                        }
                        None => Out::Frame(frame),
                    };
                    if !send_with_headroom(node, state, out, give_up).await {
                        return Err(abandon_replay(node, state, &topic));
                    }
                }
            }
            // Where the client is now: also past events it needs not replay (invalid ones, or
            // those between its `since` and a failed recovery's newest).
            let position = replay.position.map_or(last, |p| p.max(last));
            cell.start_at(Some(position));
            (Some(position.to_string()), Some(replay.recovered))
        }
        // Where the client starts: what it can give as `since` later.
        (None, Some(cell)) => {
            let position = match node.backend.position(&topic).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(topic = %topic, error = %e, "reading the history position failed");
                    release(node, state, &topic);
                    return Err(backend_unavailable());
                }
            };
            cell.start_at(position);
            (position.map(|p| p.to_string()), None)
        }
        // No history to replay from: the client knows to reload.
        _ => (None, since.map(|_| false)),
    };
    if let Some(live) = &state.live {
        live.track(topic.clone(), position_cell);
    }
    Ok(SubscribeResult {
        topic: topic.to_string(),
        position,
        recovered,
    })
}

/// A replay that cannot be delivered (the connection is going, or its client does not read):
/// the subscription is undone and the socket closed without sending what is queued, so nothing
/// after the undelivered event is ever taken for delivered.
fn abandon_replay(node: &Node, state: &mut ConnState, topic: &Topic) -> RpcError {
    if state.ctl.close(
        close::SLOW_CONSUMER,
        "slow consumer: history replay not read",
        false,
    ) {
        node.metrics.slow_consumers.inc();
    }
    release(node, state, topic);
    RpcError::new(
        ErrorCode::Overloaded,
        "the history replay could not be delivered",
    )
}

/// Queues one replayed event, first waiting until the socket's queue is at most half full, so
/// that live events of the connection's other topics still find room (a full queue would close
/// it as a slow consumer). False when the connection is going, or the replay is past `give_up`.
async fn send_with_headroom(
    node: &Node,
    state: &ConnState,
    out: Out,
    give_up: tokio::time::Instant,
) -> bool {
    let half = node.config.outbound_queue / 2;
    while state.tx.capacity() < half {
        if tokio::time::Instant::now() >= give_up || state.ctl.is_closing() {
            return false;
        }
        tokio::time::sleep(REPLAY_PACE).await;
    }
    state.tx.send(out).await.is_ok()
}

/// How long a replay waits before looking at the socket's queue again.
const REPLAY_PACE: std::time::Duration = std::time::Duration::from_millis(1);

/// Undoes a subscription that could not be completed.
fn release(node: &Node, state: &mut ConnState, topic: &Topic) {
    node.fanout.remove(topic, state.ctl.id);
    state.topics.remove(topic);
    node.subscriptions.sync_later(vec![topic.clone()]);
}

pub(crate) async fn unsubscribe(
    node: &Arc<Node>,
    state: &mut ConnState,
    params: Option<&RawValue>,
) -> Result<serde_json::Value, RpcError> {
    let p: UnsubscribeParams = wire::decode_params(params)?;
    let topic = topic(&p.topic)?;
    if state.topics.remove(&topic) {
        node.fanout.remove(&topic, state.ctl.id);
        if let Some(live) = &state.live {
            live.untrack(&topic);
            sessions::save_now(node, live).await;
        }
        // Wait, so that once the reply is out the node holds no subscription nobody wants; a
        // failure is retried by the subscription task and does not concern the client.
        let _ = node.subscriptions.sync(vec![topic]).await;
    }
    Ok(serde_json::json!({}))
}

pub(crate) async fn publish(
    node: &Arc<Node>,
    params: Option<&RawValue>,
) -> Result<PublishResult, RpcError> {
    let p: PublishParams<'_> = wire::decode_params(params)?;
    let topic = topic(&p.topic)?;
    let rule = history::rule_for(&node.config.history, topic.as_str());
    let id = match rule {
        Some(rule) => Some(
            node.backend
                .publish_history(&topic, p.data.get(), rule)
                .await
                .map_err(|e| {
                    tracing::warn!(topic = %topic, error = %e, "publish failed");
                    backend_unavailable()
                })?
                .to_string(),
        ),
        None if p.history == Some(true) => {
            return Err(RpcError::invalid_params(
                "history is not enabled for this topic",
            ));
        }
        None => {
            node.backend
                .publish(&topic, p.data.get())
                .await
                .map_err(|e| {
                    tracing::warn!(topic = %topic, error = %e, "publish failed");
                    backend_unavailable()
                })?;
            None
        }
    };
    node.metrics.publishes.inc();
    Ok(PublishResult { id })
}
