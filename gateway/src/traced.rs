//! The gateway's spans, created only when traces are exported
//! ([`switchboard_telemetry::tracing_enabled`]; otherwise [`Span::none`], which costs nothing):
//! one per WebSocket upgrade (`connect`) and one per request (`hello`, `subscribe`, `publish`,
//! `tools/call`, ...; not `ping`), each the root of its own trace unless the request's
//! `params._meta.traceparent` names one to continue. Never one per delivered event: the fan-out
//! path has no span.
//!
//! A `tools/call` span lasts until its reply (the call's own task runs inside it), and its
//! trace context travels in the job (`switchboard_core::calls::TraceContext`) so the worker's
//! execution span is its child. `cache` says how the call plane answered: `hit` (from the
//! cache: no worker span), `joined` (an identical call in flight: the worker span is in the
//! leader's trace) or `miss` (a new job).

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;
use tracing::Span;
use tracing::field::Empty;

use crate::methods::caller::Caller;

/// The part of a request's params a span wants: what it is about, and the caller's trace.
#[derive(Deserialize, Default)]
struct Peek<'a> {
    #[serde(borrow, default)]
    topic: Option<Cow<'a, str>>,
    /// `tools/call`'s tool.
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(rename = "_meta", borrow, default)]
    meta: Option<TraceMeta<'a>>,
}

/// W3C trace context in MCP's `_meta` (`traceparent`, `tracestate`).
#[derive(Deserialize, Default)]
struct TraceMeta<'a> {
    #[serde(borrow, default)]
    traceparent: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    tracestate: Option<Cow<'a, str>>,
}

/// The span for one request (see the module docs).
pub(crate) fn request(
    node: &str,
    caller: &Caller,
    method: &str,
    params: Option<&RawValue>,
) -> Span {
    if !switchboard_telemetry::tracing_enabled() || method == "ping" {
        return Span::none();
    }
    // Params that do not parse are the handler's to refuse; the span just lacks the fields.
    let peek: Peek<'_> = params
        .and_then(|p| serde_json::from_str(p.get()).ok())
        .unwrap_or_default();
    let span = tracing::info_span!(
        parent: None,
        "request",
        otel.name = method,
        otel.kind = "server",
        rpc.system = "jsonrpc",
        rpc.method = method,
        node = node,
        conn = caller.link.id(),
        session = Empty,
        subject = Empty,
        topic = peek.topic.as_deref(),
        tool = peek.name.as_deref().filter(|_| method == "tools/call"),
        cache = Empty,
        resumed = Empty,
    );
    if let Some(meta) = &peek.meta
        && let Some(parent) = &meta.traceparent
    {
        switchboard_telemetry::continue_trace(
            &span,
            parent,
            meta.tracestate.as_deref().unwrap_or(""),
        );
    }
    record_caller(&span, caller);
    span
}

/// Records who the caller is (after `hello` too, which decides it).
pub(crate) fn record_caller(span: &Span, caller: &Caller) {
    if span.is_none() {
        return;
    }
    if let Some(identity) = &caller.identity {
        span.record("subject", &*identity.subject);
    }
    if let Some(live) = &caller.live {
        span.record("session", &*live.id);
    } else if let Some(seed) = &caller.task_seed {
        span.record("session", seed.as_str());
    }
}

/// The span for one WebSocket upgrade.
pub(crate) fn connect(node: &str, peer: std::net::IpAddr) -> Span {
    if !switchboard_telemetry::tracing_enabled() {
        return Span::none();
    }
    tracing::info_span!(
        parent: None,
        "connect",
        otel.kind = "server",
        node = node,
        peer = %peer,
        http.response.status_code = Empty,
    )
}
