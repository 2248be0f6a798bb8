//! The node's Prometheus metrics, served at `/metrics` on the admin port (OpenMetrics or the
//! Prometheus text format, `switchboard_core::metrics`). Counters are plain atomics: the
//! fan-out adds a whole event's deliveries with one increment. Labelled families are looked up
//! once per call or close, never per delivery; tool labels come from the catalogue (tools that
//! workers announce), never from what a client wrote.

use std::borrow::Cow;
use switchboard_core::metrics::{Format, process};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
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
    pub(crate) tool_calls: Family<ToolOutcome, Counter>,
    pub(crate) tool_call_duration: Timings<ToolLabel>,
    pub(crate) delivery_latency: Latency,
    pub(crate) closes: Family<CodeLabel, Counter>,
    pub(crate) auth_failures: Family<ReasonLabel, Counter>,
    pub(crate) outbound_queue_events: Gauge,
    pub(crate) fanout_queue_events: Gauge,
    pub(crate) calls_in_flight: Gauge,
    pub(crate) tool_workers: Family<ToolLabel, Gauge>,
    /// Run at each scrape before encoding: gauges that are cheaper to sample than to keep
    /// (queue depths summed over sockets and fan-out workers).
    samplers: std::sync::Mutex<Vec<Sampler>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// Sets some gauges from the node's state, at a scrape.
pub(crate) type Sampler = Box<dyn Fn(&Metrics) + Send + Sync>;

/// `{tool, outcome}`.
pub(crate) type ToolOutcome = [(&'static str, Cow<'static, str>); 2];
/// `{tool}`.
pub(crate) type ToolLabel = [(&'static str, Cow<'static, str>); 1];
/// `{code}` of a close frame.
pub(crate) type CodeLabel = [(&'static str, Cow<'static, str>); 1];
/// `{reason}` of an authentication failure.
pub(crate) type ReasonLabel = [(&'static str, &'static str); 1];

/// How a tool call ended, as seen by the gateway (`switchboard_tool_calls_total{outcome}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CallOutcome {
    Ok,
    /// The tool answered with `isError`.
    Error,
    Cached,
    /// Joined an identical call in flight.
    Coalesced,
    Timeout,
    Cancelled,
    /// The call plane or a worker failed (no worker, backend error, dead letter).
    Failed,
    /// Refused before it ran: rate, caps, forbidden.
    Rejected,
}

impl CallOutcome {
    pub(crate) fn label(self) -> &'static str {
        match self {
            CallOutcome::Ok => "ok",
            CallOutcome::Error => "error",
            CallOutcome::Cached => "cached",
            CallOutcome::Coalesced => "coalesced",
            CallOutcome::Timeout => "timeout",
            CallOutcome::Cancelled => "cancelled",
            CallOutcome::Failed => "failed",
            CallOutcome::Rejected => "rejected",
        }
    }
}

/// Buckets of tool-call durations, in seconds: 5 ms to 2 minutes.
pub(crate) const CALL_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];
/// Buckets of publish-to-queued latencies, in seconds: 1 ms to 10 s (event ids are in ms).
pub(crate) const DELIVERY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// A histogram family with the tool-call buckets.
pub(crate) struct Timings<L>(pub(crate) Family<L, Histogram, fn() -> Histogram>);

impl<L: Clone + std::hash::Hash + Eq> Default for Timings<L> {
    fn default() -> Self {
        Timings(Family::new_with_constructor(|| {
            Histogram::new(CALL_BUCKETS)
        }))
    }
}

/// The publish-to-deliver histogram.
pub(crate) struct Latency(pub(crate) Histogram);

impl Default for Latency {
    fn default() -> Self {
        Latency(Histogram::new(DELIVERY_BUCKETS))
    }
}

impl Metrics {
    #[cfg(test)]
    pub(crate) fn new() -> Self {
        Self::with(|_| {})
    }

    /// The node's metrics plus what `extra` registers (the backend's own).
    pub(crate) fn with(extra: impl FnOnce(&mut Registry)) -> Self {
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
        process::register(r, env!("CARGO_PKG_VERSION"));
        extra(r);
        r.register(
            "switchboard_tool_calls",
            "Tool calls received by this node, by tool and outcome (ok, error: an isError \
             result, cached, coalesced, timeout, cancelled, failed, rejected)",
            m.tool_calls.clone(),
        );
        r.register(
            "switchboard_tool_call_duration_seconds",
            "Tool calls from their receipt on this node to their result",
            m.tool_call_duration.0.clone(),
        );
        r.register(
            "switchboard_delivery_latency_seconds",
            "Events from their publish time (the event id's milliseconds) to being queued to \
             this node's subscribers, once per event",
            m.delivery_latency.0.clone(),
        );
        r.register(
            "switchboard_closes",
            "Close frames this node sent, by close code",
            m.closes.clone(),
        );
        r.register(
            "switchboard_auth_failures",
            "Tokens refused, by reason (missing, invalid, expired, revoked, ...)",
            m.auth_failures.clone(),
        );
        r.register(
            "switchboard_outbound_queue_events",
            "Events waiting in the outbound queues of all sockets",
            m.outbound_queue_events.clone(),
        );
        r.register(
            "switchboard_fanout_queue_events",
            "Events waiting in the fan-out workers' queues",
            m.fanout_queue_events.clone(),
        );
        r.register(
            "switchboard_calls_in_flight",
            "Tool calls this node is waiting on",
            m.calls_in_flight.clone(),
        );
        r.register(
            "switchboard_tool_workers",
            "Workers announcing each tool, as this node's catalogue sees it",
            m.tool_workers.clone(),
        );
        r.register(
            "switchboard_hosts_refused",
            "Requests to /ws and /mcp refused with 403 because of their Host (--allowed-host)",
            m.hosts_refused.clone(),
        );
        m
    }

    /// Counts one tool call's end (and its duration, unless it was refused before it ran).
    pub(crate) fn call_ended(
        &self,
        tool: &str,
        outcome: CallOutcome,
        elapsed: Option<std::time::Duration>,
    ) {
        let tool: Cow<'static, str> = Cow::Owned(tool.to_owned());
        self.tool_calls
            .get_or_create(&[
                ("tool", tool.clone()),
                ("outcome", Cow::Borrowed(outcome.label())),
            ])
            .inc();
        if let Some(e) = elapsed {
            self.tool_call_duration
                .0
                .get_or_create(&[("tool", tool)])
                .observe(e.as_secs_f64());
        }
    }

    /// Counts a close frame sent with `code`. A code the gateway itself never sends is a
    /// client's own, echoed back: counted as `peer`, so clients cannot add label values.
    pub(crate) fn closed(&self, code: u16) {
        use switchboard_protocol::close;
        const OWN: [u16; 14] = [
            close::NORMAL,
            close::PROTOCOL_ERROR,
            close::UNSUPPORTED_DATA,
            close::INVALID_PAYLOAD,
            close::POLICY,
            close::TOO_BIG,
            close::INTERNAL,
            close::RESTARTING,
            close::TRY_AGAIN_LATER,
            close::HELLO_TIMEOUT,
            close::HEARTBEAT_TIMEOUT,
            close::SLOW_CONSUMER,
            close::TAKEN_OVER,
            close::RATE_LIMITED,
        ];
        let label = match OWN.contains(&code) {
            true => Cow::Owned(code.to_string()),
            false => Cow::Borrowed("peer"),
        };
        self.closes.get_or_create(&[("code", label)]).inc();
    }

    /// Counts a refused token.
    pub(crate) fn auth_failed(&self, reason: &'static str) {
        self.auth_failures
            .get_or_create(&[("reason", reason)])
            .inc();
    }

    /// Adds a sampler run at each scrape.
    pub(crate) fn on_scrape(&self, sampler: Sampler) {
        self.samplers.lock().expect("poisoned").push(sampler);
    }

    /// The page in `format` (`/metrics` negotiates it).
    pub(crate) fn render(&self, format: Format) -> String {
        for s in self.samplers.lock().expect("poisoned").iter() {
            s(self);
        }
        switchboard_core::metrics::render(&self.registry, format)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_codes_a_client_chose_share_one_label() {
        let m = Metrics::new();
        m.closed(switchboard_protocol::close::SLOW_CONSUMER);
        // A client's own codes, echoed back: one `peer` series, however many codes.
        m.closed(3999);
        m.closed(4321);
        let page = m.render(Format::Text);
        assert!(
            page.contains(r#"switchboard_closes_total{code="4008"} 1"#),
            "{page}"
        );
        assert!(
            page.contains(r#"switchboard_closes_total{code="peer"} 2"#),
            "{page}"
        );
        assert!(!page.contains("3999") && !page.contains("4321"), "{page}");
    }
}
