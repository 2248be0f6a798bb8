//! `subscribe`, `unsubscribe` and `publish`.
//!
//! A subscribe adds the connection to the topic's local fan-out list, then waits until the
//! node's backend subscription covers the topic, so that anything published after the reply
//! reaches the client. A publish goes through the backend even when the publisher's own node
//! has subscribers: every node, this one included, receives it once from Redis.

use std::sync::Arc;

use serde_json::value::RawValue;
use switchboard_core::topic::Topic;
use switchboard_core::wire::{
    self, ErrorCode, PublishParams, PublishResult, RpcError, SubscribeParams, SubscribeResult,
    UnsubscribeParams,
};

use crate::dispatch::ConnState;
use crate::fanout::Subscriber;
use crate::node::Node;

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
    // History arrives with the sessions issue; until then nothing can be replayed.
    let recovered = p.since.as_ref().map(|_| false);
    if !state.topics.contains(&topic) {
        if state.topics.len() >= node.config.max_subscriptions {
            return Err(RpcError::new(
                ErrorCode::Overloaded,
                format!(
                    "subscription limit reached ({})",
                    node.config.max_subscriptions
                ),
            ));
        }
        node.fanout.add(
            &topic,
            Subscriber {
                ctl: state.ctl.clone(),
                tx: state.tx.clone(),
            },
        );
        state.topics.insert(topic.clone());
        if let Err(e) = node.subscriptions.sync(vec![topic.clone()]).await {
            tracing::warn!(topic = %topic, error = %e, "subscribe failed");
            node.fanout.remove(&topic, state.ctl.id);
            state.topics.remove(&topic);
            node.subscriptions.sync_later(vec![topic]);
            return Err(backend_unavailable());
        }
    }
    Ok(SubscribeResult {
        topic: p.topic,
        position: None,
        recovered,
    })
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
    if p.history == Some(true) {
        return Err(RpcError::invalid_params(
            "history is not enabled for this topic",
        ));
    }
    node.backend
        .publish(&topic, p.data.get())
        .await
        .map_err(|e| {
            tracing::warn!(topic = %topic, error = %e, "publish failed");
            backend_unavailable()
        })?;
    node.metrics.publishes.inc();
    Ok(PublishResult { id: None })
}
