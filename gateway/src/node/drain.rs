//! Shutdown: report not ready (the listener still answers: `/readyz` 503, upgrades 503), wait
//! `--drain-delay` for load balancers to notice, then ask the sockets to close with 1012
//! (reconnect elsewhere) a batch at a time, spread over `drain_spread`, so the nodes that take
//! them over are not stampeded, and wait for them to go, up to the grace period.

use switchboard_protocol::close;

use super::Node;

/// The shortest pause between two batches of the drain.
const DRAIN_TICK: std::time::Duration = std::time::Duration::from_millis(50);

/// Runs the drain; returns when every connection is gone or the grace period is over.
pub(crate) async fn drain(node: &Node) {
    node.health.start_draining();
    let delay = node.config.tuning.drain_delay;
    if !delay.is_zero() {
        tracing::info!(
            ?delay,
            "draining: not ready; sockets close after the drain delay"
        );
        tokio::time::sleep(delay).await;
    }
    let conns = node.conns.snapshot();
    let grace = node.config.tuning.shutdown_grace;
    let deadline = tokio::time::Instant::now() + grace;
    // The last batch still gets its close timeout within the grace.
    let spread = node
        .config
        .tuning
        .drain_spread
        .min(grace.saturating_sub(node.config.tuning.close_timeout));
    // At most one batch per tick, spaced evenly over the spread.
    let max_batches = (spread.as_millis() / DRAIN_TICK.as_millis()).max(1) as usize;
    let per_batch = conns
        .len()
        .div_ceil(conns.len().clamp(1, max_batches))
        .max(1);
    let chunks = conns.len().div_ceil(per_batch).max(1);
    let pause = spread / chunks as u32;
    tracing::info!(connections = conns.len(), ?grace, ?spread, "draining");
    let mut batches = conns.chunks(per_batch).peekable();
    while let Some(batch) = batches.next() {
        for ctl in batch {
            ctl.close(
                close::RESTARTING,
                "node restarting, reconnect elsewhere",
                true,
            );
        }
        if batches.peek().is_some() {
            tokio::time::sleep(pause).await;
        }
    }
    if tokio::time::timeout_at(deadline, node.conns.wait_empty())
        .await
        .is_err()
    {
        tracing::warn!(
            left = node.conns.len(),
            "grace period over with connections still open"
        );
    }
}
