//! A Switchboard gateway node: it terminates WebSockets, speaks JSON-RPC 2.0 to clients, and
//! relays topics through the backend (Redis in production) so that clients on every node share
//! them. Gateways keep no state that matters beyond a connection: everything shared lives in
//! the backend.
//!
//! A tour, in the order a message travels:
//! - [`http`]: the port: `/ws` upgrade (subprotocol, token, admission), `/healthz`, `/readyz`,
//!   `/metrics`.
//! - `conn`: one socket = a reader (`conn/reader.rs`: frames in, fragments, size and UTF-8 rules)
//!   and a writer task (`conn/writer.rs`: bounded queue out, vectored writes, heartbeat, hello
//!   timeout, the one close frame).
//! - `dispatch`: a message to its method; `hello`, `topics`: the methods.
//! - `fanout`: topic -> local subscribers; one encode per event, `try_send` to each.
//! - `subscriptions`: where a topic's backend subscription is reference-counted.
//! - `calls`: `tools/*` and `tasks/*`: validate, hash, submit, wait, answer; `catalog`: the
//!   tools live workers announce; `signals`: local waiters and progress of executions.
//! - `sessions`: sessions held here: saved positions, owed replies, expiry, takeover (4009).
//! - `recovery`: history events missed while the backend subscription was down, read back.
//! - `readiness`, `drain`, `metrics`, `node` (the shared state), [`config`].

mod calls;
mod catalog;
pub mod config;
mod conn;
mod dispatch;
mod drain;
mod fanout;
mod hello;
pub mod http;
mod metrics;
mod node;
mod readiness;
mod recovery;
mod sessions;
mod signals;
mod subscriptions;
mod topics;

use std::sync::Arc;

use switchboard_core::backend::Backend;
use tokio::net::TcpListener;

pub use crate::config::{AuthConfig, ConfigError, GatewayConfig};
use crate::fanout::Fanout;
use crate::metrics::Metrics;
use crate::node::Node;
use crate::signals::{CallSignals, NodeSink};
use crate::subscriptions::Subscriptions;

/// Why a gateway could not run.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
}

/// Pause after a failed `accept` (out of file descriptors, say) before the next one.
const ACCEPT_BACKOFF: std::time::Duration = std::time::Duration::from_millis(50);

/// Binds the gateway's port with a listen backlog of `backlog` (see
/// [`config::DEFAULT_LISTEN_BACKLOG`]) and `SO_REUSEADDR`, so a restarted node gets its port
/// back at once.
pub fn listen(addr: std::net::SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// Runs a gateway node on `listener` until `shutdown` completes, then drains: not ready, every
/// socket closed with 1012, connections given `shutdown_grace` to go.
pub async fn run(
    config: GatewayConfig,
    listener: TcpListener,
    backend: Arc<dyn Backend>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), GatewayError> {
    config.validate()?;
    let metrics = Arc::new(Metrics::new());
    let (fanout, fanout_queues) = Fanout::new(
        metrics.clone(),
        config.fanout_workers,
        config.fanout_queue,
        config.replay_buffer,
    );
    let fanout = Arc::new(fanout);
    let fanout_tasks: Vec<_> = fanout_queues
        .into_iter()
        .map(|rx| tokio::spawn(fanout::run_worker(fanout.clone(), rx)))
        .collect();
    let signals = Arc::new(CallSignals::default());
    let sessions = Arc::new(sessions::Sessions::default());
    backend.attach(Arc::new(NodeSink {
        fanout: fanout.clone(),
        signals: signals.clone(),
        sessions: sessions.clone(),
    }));
    let (subscriptions, subscriptions_task) = Subscriptions::spawn(
        backend.clone(),
        fanout.clone(),
        metrics.clone(),
        config.subscribe_retry,
    );
    let node = Arc::new(Node::new(
        config,
        backend,
        fanout,
        signals,
        sessions,
        subscriptions,
        metrics,
    ));
    let readiness_task = tokio::spawn(readiness::run(node.clone()));
    let catalog_task = tokio::spawn(catalog::run(node.clone()));
    let sessions_task = tokio::spawn(sessions::run_refresh(node.clone()));
    let recovery_task = tokio::spawn(recovery::run(node.clone()));
    tracing::info!(
        node = %node.config.node_id,
        backend = node.backend.kind(),
        addr = ?listener.local_addr().ok(),
        "gateway listening"
    );

    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(http::serve(node.clone(), stream));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            }
        }
    }
    drop(listener);
    drain::drain(&node).await;
    readiness_task.abort();
    catalog_task.abort();
    sessions_task.abort();
    recovery_task.abort();
    subscriptions_task.abort();
    for task in fanout_tasks {
        task.abort();
    }
    tracing::info!(node = %node.config.node_id, "gateway stopped");
    Ok(())
}
