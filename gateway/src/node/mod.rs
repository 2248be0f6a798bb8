//! The composition root: [`run`] builds a node from its configuration and its backend, wires
//! every layer (transport, methods, relay, calls, sessions), runs the node's background tasks,
//! accepts connections until shutdown, then drains. Nothing below imports this module.
//!
//! - `http.rs`: the node's one port: routes, the WebSocket upgrade, admission.
//! - `readiness.rs`: backend pings, `/readyz`, re-preparing the backend after a reconnect.
//! - `drain.rs`: shutdown: sockets closed with 1012 a batch at a time.

mod drain;
mod http;
mod readiness;

use std::net::SocketAddr;
use std::sync::Arc;

use switchboard_core::backend::Backend;
use switchboard_protocol::methods::session::Limits;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::calls::catalog::{self, CatalogCell};
use crate::calls::outcome::Outcomes;
use crate::calls::waiters::Waiters;
use crate::config::{ConfigError, GatewayConfig};
use crate::conns::Conns;
use crate::health::Health;
use crate::methods::{CallSettings, Methods, Session, Tasks, Tools, TopicSettings, Topics};
use crate::metrics::Metrics;
use crate::relay::fanout::{self, Fanout};
use crate::relay::recovery::Recovery;
use crate::relay::subscriptions::Subscriptions;
use crate::sessions::{SessionSettings, Sessions};
use crate::transport::{SocketLimits, Sockets};

/// Why a gateway could not run.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
}

/// Pause after a failed `accept` (out of file descriptors, say) before the next one.
const ACCEPT_BACKOFF: std::time::Duration = std::time::Duration::from_millis(50);

/// What the node's port serves from: the parts a request or a new socket needs.
pub(crate) struct Node {
    pub(crate) config: GatewayConfig,
    pub(crate) sockets: Arc<Sockets>,
    pub(crate) methods: Arc<Methods>,
    pub(crate) conns: Arc<Conns>,
    pub(crate) health: Arc<Health>,
    pub(crate) metrics: Arc<Metrics>,
}

/// Binds the gateway's port with a listen backlog of `backlog` (`--listen-backlog`) and
/// `SO_REUSEADDR`, so a restarted node gets its port back at once.
pub fn listen(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
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
    backend: Backend,
    shutdown: impl Future<Output = ()>,
) -> Result<(), GatewayError> {
    config.validate()?;
    let c = &config.tuning;
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::new(metrics.clone()));
    let conns = Arc::new(Conns::new(metrics.clone()));
    let sockets = Arc::new(Sockets::new(SocketLimits {
        hello_timeout: c.hello_timeout,
        max_message_bytes: c.max_message_bytes,
        outbound_queue: c.outbound_queue,
        heartbeat: c.heartbeat,
        write_timeout: c.write_timeout,
        close_timeout: c.close_timeout,
    }));

    // The relay: backend -> fan-out -> sockets.
    let (fanout, fanout_queues) = Fanout::new(
        metrics.clone(),
        c.fanout_workers,
        c.fanout_queue,
        c.replay_buffer,
    );
    let fanout = Arc::new(fanout);
    let fanout_tasks: Vec<_> = fanout_queues
        .into_iter()
        .map(|rx| tokio::spawn(fanout::run_worker(fanout.clone(), rx)))
        .collect();
    backend.topics.set_sink(fanout.clone());
    let (subscriptions, subscriptions_task) = Subscriptions::spawn(
        backend.topics.clone(),
        fanout.clone(),
        metrics.clone(),
        c.subscribe_retry,
    );

    // Sessions, and the calls' waiters: each hears its signals from the backend.
    let sessions = Arc::new(Sessions::new(
        backend.sessions.clone(),
        health.clone(),
        &config.node_id,
        SessionSettings {
            ttl: c.session_ttl,
            refresh: c.session_refresh,
            close_timeout: c.close_timeout,
        },
    ));
    backend.sessions.set_sink(sessions.takeover_sink());
    let waiters = Arc::new(Waiters::default());
    backend.calls.set_sink(waiters.clone());
    let catalog = Arc::new(CatalogCell::default());
    let outcomes = Arc::new(Outcomes {
        calls: backend.calls.clone(),
        waiters,
        poll: c.call_poll,
    });
    let call_settings = CallSettings {
        max_inflight: c.max_inflight_calls,
        task_ttl: c.task_ttl,
        max_task_ttl: c.max_task_ttl,
        deadline_grace: c.deadline_grace,
    };

    // The methods, each family with the handles it needs.
    let methods = Arc::new(Methods {
        session: Session {
            auth: config.auth.clone(),
            sessions: sessions.clone(),
            health: health.clone(),
            metrics: metrics.clone(),
            heartbeat_ms: c.heartbeat.as_millis() as u64,
            limits: Limits {
                max_message_bytes: c.max_message_bytes,
                max_subscriptions: c.max_subscriptions,
                outbound_queue: c.outbound_queue,
            },
        },
        topics: Topics {
            fanout: fanout.clone(),
            subscriptions: subscriptions.clone(),
            bus: backend.topics.clone(),
            history: backend.history.clone(),
            sessions: sessions.clone(),
            metrics: metrics.clone(),
            replay_slots: Semaphore::new(c.max_concurrent_replays),
            settings: TopicSettings {
                history: c.history.clone(),
                max_subscriptions: c.max_subscriptions,
                max_replay: c.max_replay,
                replay_buffer: c.replay_buffer,
                replay_timeout: c.replay_timeout,
            },
        },
        tools: Tools {
            catalog: catalog.clone(),
            outcomes: outcomes.clone(),
            sessions: sessions.clone(),
            settings: call_settings,
        },
        tasks: Tasks {
            outcomes,
            sessions: sessions.clone(),
            settings: call_settings,
        },
    });

    // Background tasks.
    let background = vec![
        tokio::spawn(readiness::run(
            backend.clone(),
            health.clone(),
            subscriptions.clone(),
            c.readiness_interval,
        )),
        tokio::spawn(catalog::run(
            catalog,
            backend.calls.clone(),
            conns.clone(),
            c.registry_interval,
        )),
        tokio::spawn(sessions.clone().run_refresh()),
        tokio::spawn(
            Recovery {
                fanout,
                subscriptions,
                history: backend.history.clone(),
                health: health.clone(),
                metrics: metrics.clone(),
                interval: c.subscribe_retry,
            }
            .run(),
        ),
        subscriptions_task,
    ];
    tracing::info!(
        node = %config.node_id,
        backend = backend.health.kind(),
        addr = ?listener.local_addr().ok(),
        "gateway listening"
    );

    let node = Arc::new(Node {
        config,
        sockets,
        methods,
        conns,
        health,
        metrics,
    });
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
    for task in background.into_iter().chain(fanout_tasks) {
        task.abort();
    }
    tracing::info!(node = %node.config.node_id, "gateway stopped");
    Ok(())
}
