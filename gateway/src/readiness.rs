//! Readiness: the backend is pinged every `readiness_interval`; `/readyz` answers 200 only
//! while the last ping succeeded and the node is not draining. The pings also keep Redis
//! reconnect attempts going while it is away. When the backend has reconnected (Redis came
//! back, or dropped the connection briefly), every held subscription is re-issued and the
//! backend is prepared again (call signals, the history function), retried until it works.

use std::sync::Arc;

use crate::node::Node;

pub(crate) async fn run(node: Arc<Node>) {
    let mut reconnections = node.backend.reconnections();
    let mut prepared = false;
    let mut tick = tokio::time::interval(node.config.readiness_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let result =
            tokio::time::timeout(node.config.readiness_interval, node.backend.ping()).await;
        let ok = matches!(result, Ok(Ok(())));
        let was = node.set_backend_ok(ok);
        let now_reconnections = node.backend.reconnections();
        if ok && (now_reconnections != reconnections || !was) {
            reconnections = now_reconnections;
            node.subscriptions.resync_all();
            prepared = false;
        }
        // Retried every tick until it works: call signals and the history function.
        if ok && !prepared {
            match node.backend.on_connected().await {
                Ok(()) => prepared = true,
                Err(e) => tracing::warn!(error = %e, "preparing the backend failed; retrying"),
            }
        }
        if was != ok {
            if ok {
                tracing::info!(backend = node.backend.kind(), "backend reachable: ready");
            } else {
                let why = match result {
                    Ok(Err(e)) => e.to_string(),
                    _ => "ping timed out".to_owned(),
                };
                tracing::warn!(backend = node.backend.kind(), error = %why, "backend unreachable: not ready");
            }
        }
    }
}
