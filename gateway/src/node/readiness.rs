//! Readiness: the backend is pinged every `readiness_interval`; `/readyz` answers 200 only
//! while the last ping succeeded and the node is not draining. The pings also keep Redis
//! reconnect attempts going while it is away. When the backend has reconnected (Redis came
//! back, or dropped the connection briefly), every held subscription is re-issued and the
//! backend is prepared again (call signals, takeovers, the history function), retried until it
//! works.

use std::sync::Arc;
use std::time::Duration;

use switchboard_core::backend::Backend;

use crate::health::Health;
use crate::relay::subscriptions::Subscriptions;

pub(crate) async fn run(
    backend: Backend,
    health: Arc<Health>,
    subscriptions: Subscriptions,
    interval: Duration,
) {
    let probe = &backend.health;
    let mut reconnections = probe.reconnections();
    let mut prepared = false;
    // A backend that never answered is said once too (a wrong TLS CA, a wrong password).
    let mut first = true;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let result = tokio::time::timeout(interval, probe.ping()).await;
        let ok = matches!(result, Ok(Ok(())));
        let was = health.set_backend_ok(ok);
        let now_reconnections = probe.reconnections();
        if ok && (now_reconnections != reconnections || !was) {
            reconnections = now_reconnections;
            subscriptions.resync_all();
            prepared = false;
        }
        // Retried every tick until it works: call signals, takeovers, the history function.
        if ok && !prepared {
            match backend.prepare().await {
                Ok(()) => prepared = true,
                Err(e) => tracing::warn!(error = %e, "preparing the backend failed; retrying"),
            }
        }
        if was != ok || (first && !ok) {
            if ok {
                tracing::info!(backend = probe.kind(), "backend reachable: ready");
            } else {
                let why = match result {
                    Ok(Err(e)) => e.to_string(),
                    _ => "ping timed out".to_owned(),
                };
                tracing::warn!(backend = probe.kind(), error = %why, "backend unreachable: not ready");
            }
        }
        first = false;
    }
}
