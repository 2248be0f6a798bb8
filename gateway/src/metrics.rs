//! The node's Prometheus metrics, served at `/metrics` on the admin port. Counters are plain atomics: the
//! fan-out adds a whole event's deliveries with one increment.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// See the module docs.
#[derive(Default)]
pub(crate) struct Metrics {
    registry: Registry,
    pub(crate) connections: Gauge,
    pub(crate) connections_total: Counter,
    pub(crate) events_received: Counter,
    pub(crate) events_invalid: Counter,
    pub(crate) events_dropped: Counter,
    pub(crate) deliveries: Counter,
    pub(crate) slow_consumers: Counter,
    pub(crate) publishes: Counter,
    pub(crate) backend_subscriptions: Gauge,
    pub(crate) ready: Gauge,
    pub(crate) sessions_resumed: Counter,
    pub(crate) events_recovered: Counter,
    pub(crate) replays: Counter,
    pub(crate) replay_pages_read: Counter,
    pub(crate) forbidden: Counter,
    pub(crate) events_oversized: Counter,
    pub(crate) requests_rate_limited: Counter,
    pub(crate) connections_rate_limited: Counter,
    pub(crate) identity_rate_limited: Counter,
    pub(crate) rate_leases: Counter,
    pub(crate) origins_refused: Counter,
    pub(crate) hosts_refused: Counter,
    pub(crate) connections_capped: Counter,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut m = Metrics::default();
        let r = &mut m.registry;
        r.register(
            "switchboard_connections",
            "Open WebSocket connections",
            m.connections.clone(),
        );
        r.register(
            "switchboard_connections_accepted",
            "WebSocket connections accepted",
            m.connections_total.clone(),
        );
        r.register(
            "switchboard_events_received",
            "Live events received from the backend",
            m.events_received.clone(),
        );
        r.register(
            "switchboard_events_invalid",
            "Events dropped because their payload was not valid JSON",
            m.events_invalid.clone(),
        );
        r.register(
            "switchboard_events_dropped",
            "Events dropped because the fan-out workers' queues were full",
            m.events_dropped.clone(),
        );
        r.register(
            "switchboard_deliveries",
            "Events queued to a subscriber",
            m.deliveries.clone(),
        );
        r.register(
            "switchboard_slow_consumer_closes",
            "Connections closed with 4008 because their outbound queue was full",
            m.slow_consumers.clone(),
        );
        r.register(
            "switchboard_publishes",
            "Publishes from clients",
            m.publishes.clone(),
        );
        r.register(
            "switchboard_backend_subscriptions",
            "Topics this node holds a backend subscription for",
            m.backend_subscriptions.clone(),
        );
        r.register(
            "switchboard_ready",
            "1 while the node is ready (backend reachable, not draining)",
            m.ready.clone(),
        );
        r.register(
            "switchboard_sessions_resumed",
            "Sessions resumed on this node",
            m.sessions_resumed.clone(),
        );
        r.register(
            "switchboard_events_recovered",
            "History events this node read back after its backend subscription was lost",
            m.events_recovered.clone(),
        );
        r.register(
            "switchboard_connections_capped",
            "Connections refused because their identity or address was at its cap (cluster-wide)",
            m.connections_capped.clone(),
        );
        r.register(
            "switchboard_replays",
            "History replays served (subscribe with since, and each topic of a session resume)",
            m.replays.clone(),
        );
        r.register(
            "switchboard_replay_pages_read",
            "History pages read from the backend for replays (each one shared by the replays that needed it)",
            m.replay_pages_read.clone(),
        );
        r.register(
            "switchboard_events_oversized",
            "Events dropped because their data was over --max-event-bytes",
            m.events_oversized.clone(),
        );
        r.register(
            "switchboard_requests_rate_limited",
            "Messages refused (-32003) because their connection was over --rate-requests",
            m.requests_rate_limited.clone(),
        );
        r.register(
            "switchboard_connections_rate_limited",
            "Upgrades refused (HTTP 429) because their address was over --rate-connections",
            m.connections_rate_limited.clone(),
        );
        r.register(
            "switchboard_identity_rate_limited",
            "Publishes and tool calls refused (-32003) because their identity was over \
             --rate-publishes or --rate-calls",
            m.identity_rate_limited.clone(),
        );
        r.register(
            "switchboard_rate_leases",
            "Leases of per-identity rate tokens taken from the backend",
            m.rate_leases.clone(),
        );
        r.register(
            "switchboard_forbidden",
            "Operations refused with -32002 (not allowed by the rules or the caller's grants)",
            m.forbidden.clone(),
        );
        r.register(
            "switchboard_origins_refused",
            "WebSocket upgrades refused with 403 because of their Origin",
            m.origins_refused.clone(),
        );
        r.register(
            "switchboard_hosts_refused",
            "Requests to /ws and /mcp refused with 403 because of their Host (--allowed-host)",
            m.hosts_refused.clone(),
        );
        m
    }

    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}
