//! The composition root: [`run`] builds a node from its configuration and its backend, wires
//! every layer (transport, methods, relay, calls, sessions), runs the node's background tasks,
//! accepts connections until shutdown, then drains. Nothing below imports this module.
//!
//! - `http.rs`: the node's ports: the public one (the WebSocket upgrade, admission, health)
//!   and the admin one (`--admin-listen`: metrics and health).
//! - `readiness.rs`: backend pings, `/readyz`, re-preparing the backend after a reconnect.
//! - `drain.rs`: shutdown: sockets closed with 1012 a batch at a time.

mod drain;
mod http;
mod mcp;
mod readiness;
mod request;
mod sse;

use std::net::SocketAddr;
use std::sync::Arc;

use switchboard_core::auth::{AuthError, Verifier};
use switchboard_core::backend::Backend;
use switchboard_core::calls::OwnerCaps;
use switchboard_protocol::methods::session::Limits;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::calls::catalog::{self, CatalogCell};
use crate::calls::offered::{Offered, OfferedSettings};
use crate::calls::outcome::Outcomes;
use crate::calls::waiters::Waiters;
use crate::config::{ConfigError, GatewayConfig};
use crate::conns::Conns;
use crate::health::Health;
use crate::limits::connections::{ConnectionCapSettings, ConnectionCaps};
use crate::limits::identity::{BudgetRate, IdentityRates};
use crate::limits::{ConnectionRate, RequestRate};
use crate::methods::{
    Access, CallSettings, Methods, Offers, Session, Tasks, Tools, TopicSettings, Topics,
};
use crate::metrics::Metrics;
use crate::relay::fanout::{self, Fanout};
use crate::relay::recovery::Recovery;
use crate::relay::replays::{ReplaySettings, Replays};
use crate::relay::subscriptions::Subscriptions;
use crate::sessions::{SessionSettings, Sessions};
use crate::transport::{SocketLimits, Sockets};

/// Why a gateway could not run.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    /// The token keys could not be loaded (a `--jwt-*` setting, named in the message).
    #[error(transparent)]
    Keys(#[from] AuthError),
    #[error("cannot listen on --admin-listen {addr}: {source}")]
    AdminListen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The admin port's listen backlog: a few scrapers and probes.
const ADMIN_BACKLOG: u32 = 64;

/// Pause after a failed `accept` (out of file descriptors, say) before the next one.
const ACCEPT_BACKOFF: std::time::Duration = std::time::Duration::from_millis(50);

/// What the node's port serves from: the parts a request or a new socket needs.
pub(crate) struct Node {
    pub(crate) config: GatewayConfig,
    pub(crate) sockets: Arc<Sockets>,
    pub(crate) methods: Arc<Methods>,
    /// Tokens and origins are checked at the upgrade with the methods' rules.
    pub(crate) access: Arc<Access>,
    /// New connections per source address.
    pub(crate) connection_rate: Arc<ConnectionRate>,
    /// Connections per identity and per address, cluster-wide.
    pub(crate) connection_caps: Arc<ConnectionCaps>,
    pub(crate) conns: Arc<Conns>,
    pub(crate) health: Arc<Health>,
    pub(crate) metrics: Arc<Metrics>,
    /// The names `/ws` and `/mcp` may be reached under (`--allowed-host`; `None`: any).
    pub(crate) allowed_hosts: Option<Vec<String>>,
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

/// Serves one accepted connection in a task of its own; an accept error (e.g. out of file
/// descriptors) pauses the loop a little.
async fn serve_accepted(
    node: &Arc<Node>,
    accepted: std::io::Result<(tokio::net::TcpStream, SocketAddr)>,
) {
    match accepted {
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

/// Runs a gateway node on `listener` (and `--admin-listen`, bound here) until `shutdown`
/// completes, then drains: not ready, every socket closed with 1012, connections given
/// `shutdown_grace` to go.
pub async fn run(
    config: GatewayConfig,
    listener: TcpListener,
    backend: Backend,
    shutdown: impl Future<Output = ()>,
) -> Result<(), GatewayError> {
    config.validate()?;
    let admin = match config.admin_listen {
        Some(addr) => Some(
            listen(addr, ADMIN_BACKLOG)
                .map_err(|source| GatewayError::AdminListen { addr, source })?,
        ),
        None => None,
    };
    run_with_admin(config, listener, admin, backend, shutdown).await
}

/// [`run`] with the admin port's listener bound by the caller (`config.admin_listen` is then
/// not read): whoever embeds a node on ephemeral ports learns both addresses before it runs.
pub async fn run_with_admin(
    config: GatewayConfig,
    listener: TcpListener,
    admin: Option<TcpListener>,
    backend: Backend,
    shutdown: impl Future<Output = ()>,
) -> Result<(), GatewayError> {
    config.validate()?;
    let verifier = match config.auth.has_keys() {
        true => Some(Verifier::start(&config.auth.key_settings()).await?),
        false => None,
    };
    let metrics = Arc::new(Metrics::with(|r| backend.health.register_metrics(r)));
    let policy = config.policy();
    if policy.is_open() {
        tracing::warn!(
            "open mode: anonymous clients allowed and no --allow or --allow-tools rule, so every \
             client may subscribe, publish and call anything"
        );
    }
    let access = Arc::new(Access {
        policy,
        verifier,
        allow_anonymous: config.auth.allow_anonymous,
        metrics: metrics.clone(),
    });
    let c = &config.tuning;
    let health = Arc::new(Health::new(metrics.clone()));
    let conns = Arc::new(Conns::new(metrics.clone()));
    let sockets = Arc::new(Sockets::new(
        SocketLimits {
            hello_timeout: c.hello_timeout,
            max_message_bytes: c.max_message_bytes,
            outbound_queue: c.outbound_queue,
            outbound_queue_bytes: c.outbound_queue_bytes,
            heartbeat: c.heartbeat,
            write_timeout: c.write_timeout,
            close_timeout: c.close_timeout,
        },
        metrics.clone(),
    ));

    // The relay: backend -> fan-out -> sockets.
    let (fanout, fanout_queues) = Fanout::new(
        metrics.clone(),
        c.fanout_workers,
        c.fanout_queue,
        c.replay_buffer,
        c.max_event_bytes,
    );
    let fanout = Arc::new(fanout);
    {
        // Queue depths, sampled at each scrape (weak: the metrics outlive neither).
        let (f, c) = (Arc::downgrade(&fanout), Arc::downgrade(&conns));
        metrics.on_scrape(Box::new(move |m| {
            if let Some(f) = f.upgrade() {
                m.fanout_queue_events.set(f.queued_events() as i64);
            }
            if let Some(c) = c.upgrade() {
                m.outbound_queue_events.set(c.queued_events() as i64);
            }
        }));
    }
    let fanout_tasks: Vec<_> = fanout_queues
        .into_iter()
        .map(|rx| tokio::spawn(fanout::run_worker(fanout.clone(), rx)))
        .collect();
    backend.topics.set_sink(fanout.clone());
    let replays = Arc::new(Replays::new(
        backend.history.clone(),
        fanout.clone(),
        metrics.clone(),
        ReplaySettings {
            page: c.replay_page(),
            cache_ttl: c.replay_cache_ttl,
            cache_bytes: c.replay_cache_bytes,
        },
    ));
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
        caps: OwnerCaps {
            max_running: c.max_calls_in_flight_per_identity,
            max_tasks: c.max_tasks_per_identity,
            max_task_bytes: c.max_task_bytes_per_identity,
        },
        max_args_bytes: c.max_call_args_bytes,
        max_result_bytes: c.max_result_bytes.max(1),
    };

    // Tools offered by this node's clients, hosted here like a worker hosts its tools.
    let offered = Arc::new(Offered::new(
        &config.node_id,
        backend.queue.clone(),
        catalog.clone(),
        OfferedSettings {
            max_tools: c.max_client_tools,
            max_calls: c.max_client_tool_calls,
            timeout: c.client_tool_timeout,
            heartbeat: c.registry_interval,
            max_result_bytes: c.max_result_bytes.max(1),
        },
    ));

    // Per-identity budgets, shared by every node through the backend.
    let identity_rates = Arc::new(IdentityRates::new(
        backend.rates.clone(),
        BudgetRate::new(c.rate_publishes, c.rate_publishes_burst, c.rate_lease),
        BudgetRate::new(c.rate_calls, c.rate_calls_burst, c.rate_lease),
        config.auth.allow_anonymous,
        {
            let leases = metrics.rate_leases.clone();
            move || {
                leases.inc();
            }
        },
    ));

    // Connections per identity and per address, counted by every node through the backend.
    let connection_caps = Arc::new(ConnectionCaps::new(
        backend.conns.clone(),
        &config.node_id,
        ConnectionCapSettings {
            per_identity: c.max_connections_per_identity,
            per_address: c.max_connections_per_address,
            lease: c.connection_lease,
        },
        metrics.clone(),
    ));

    // The methods, each family with the handles it needs.
    let methods = Arc::new(Methods {
        rate: RequestRate::new(c.rate_requests, c.rate_requests_burst, c.rate_close_after),
        identity_rates: identity_rates.clone(),
        session: Session {
            access: access.clone(),
            connection_caps: connection_caps.clone(),
            sessions: sessions.clone(),
            health: health.clone(),
            metrics: metrics.clone(),
            heartbeat_ms: c.heartbeat.as_millis() as u64,
            limits: Limits {
                max_message_bytes: c.max_message_bytes,
                max_subscriptions: c.max_subscriptions,
                outbound_queue: c.outbound_queue,
                outbound_queue_bytes: c.outbound_queue_bytes,
                max_event_bytes: c.max_event_bytes,
                max_data_depth: c.max_data_depth,
                rate_requests: c.rate_requests,
                rate_requests_burst: c.rate_requests_burst,
                rate_publishes: c.rate_publishes,
                rate_publishes_burst: c.rate_publishes_burst,
                rate_calls: c.rate_calls,
                rate_calls_burst: c.rate_calls_burst,
                max_calls_in_flight_per_identity: c.max_calls_in_flight_per_identity,
                max_tasks_per_identity: c.max_tasks_per_identity,
                max_task_bytes_per_identity: c.max_task_bytes_per_identity,
                max_task_ttl_ms: c.max_task_ttl.as_millis() as u64,
                max_call_args_bytes: c.max_call_args_bytes,
                max_result_bytes: c.max_result_bytes.max(1),
                max_connections_per_identity: c.max_connections_per_identity,
                max_connections_per_address: c.max_connections_per_address,
            },
        },
        topics: Topics {
            access: access.clone(),
            fanout: fanout.clone(),
            subscriptions: subscriptions.clone(),
            bus: backend.topics.clone(),
            history: backend.history.clone(),
            replays,
            sessions: sessions.clone(),
            metrics: metrics.clone(),
            replay_slots: Semaphore::new(c.max_concurrent_replays),
            settings: TopicSettings {
                // MCP streams' own rule first: an operator's `*` does not decide for them.
                history: std::iter::once(c.mcp_stream_rule())
                    .chain(c.history.iter().cloned())
                    .collect(),
                max_subscriptions: c.max_subscriptions,
                max_replay: c.max_replay,
                replay_buffer: c.replay_buffer,
                replay_timeout: c.replay_timeout,
                max_event_bytes: c.max_event_bytes,
                max_data_depth: c.max_data_depth,
            },
        },
        tools: Tools {
            access: access.clone(),
            catalog: catalog.clone(),
            outcomes: outcomes.clone(),
            sessions: sessions.clone(),
            settings: call_settings,
            metrics: metrics.clone(),
        },
        tasks: Tasks {
            outcomes,
            sessions: sessions.clone(),
            settings: call_settings,
        },
        offers: Offers {
            access: access.clone(),
            offered: offered.clone(),
        },
    });

    let connection_rate = Arc::new(ConnectionRate::new(
        c.rate_connections,
        c.rate_connections_burst,
    ));

    // Background tasks.
    let background = vec![
        tokio::spawn(connection_rate.clone().run_pruning()),
        tokio::spawn(identity_rates.run_pruning()),
        tokio::spawn(connection_caps.clone().run_renewal()),
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
            metrics.clone(),
        )),
        tokio::spawn(sessions.clone().run_refresh()),
        tokio::spawn(offered.clone().run_announce()),
        tokio::spawn(offered.clone().run_fetch()),
        tokio::spawn(offered.run_cancellations()),
        tokio::spawn(
            Recovery {
                fanout,
                subscriptions,
                history: backend.history.clone(),
                health: health.clone(),
                metrics: metrics.clone(),
                interval: c.subscribe_retry,
                page: c.replay_page(),
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

    let allowed_hosts = request::allowed_hosts(
        &config.access.allowed_hosts,
        listener.local_addr().ok().map(|a| a.ip()),
    );
    let node = Arc::new(Node {
        allowed_hosts,
        config,
        sockets,
        methods,
        access,
        connection_rate,
        connection_caps,
        conns,
        health,
        metrics,
    });
    let admin_task = admin.map(|admin| {
        tracing::info!(addr = ?admin.local_addr().ok(), "admin port listening (/metrics, /healthz, /readyz)");
        tokio::spawn(http::serve_admin(node.clone(), admin))
    });
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => serve_accepted(&node, accepted).await,
        }
    }
    // The listener keeps serving HTTP while the sockets close: `/readyz` answers 503 and
    // upgrades are refused with 503, so a load balancer stops routing here before the
    // sockets go (a closed listener would refuse its probes and look like a crash).
    let drained = drain::drain(&node);
    tokio::pin!(drained);
    loop {
        tokio::select! {
            () = &mut drained => break,
            accepted = listener.accept() => serve_accepted(&node, accepted).await,
        }
    }
    drop(listener);
    for task in background.into_iter().chain(fanout_tasks).chain(admin_task) {
        task.abort();
    }
    tracing::info!(node = %node.config.node_id, "gateway stopped");
    Ok(())
}
