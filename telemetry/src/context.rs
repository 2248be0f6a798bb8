//! The W3C trace context (`traceparent`, `tracestate`) between processes: taken from the
//! current span when a gateway queues a job, and made the parent of a span when a worker runs
//! the job or when a client's `_meta.traceparent` starts a gateway's span. With tracing off
//! both do nothing.

use std::collections::HashMap;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The two W3C headers, as strings (`tracestate` may be empty).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TraceHeaders {
    pub traceparent: String,
    pub tracestate: String,
}

/// `span`'s trace context, to carry to another process; `None` with tracing off.
pub fn trace_headers(span: &tracing::Span) -> Option<TraceHeaders> {
    if !crate::tracing_enabled() {
        return None;
    }
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    Some(TraceHeaders {
        traceparent: carrier.remove("traceparent")?,
        tracestate: carrier.remove("tracestate").unwrap_or_default(),
    })
}

/// Makes `span` continue the trace `traceparent` names (before `span` is first entered).
/// A malformed `traceparent` is ignored: the span starts a trace of its own.
pub fn continue_trace(span: &tracing::Span, traceparent: &str, tracestate: &str) {
    if !crate::tracing_enabled() || traceparent.is_empty() {
        return;
    }
    let mut carrier = HashMap::with_capacity(2);
    carrier.insert("traceparent".to_owned(), traceparent.to_owned());
    if !tracestate.is_empty() {
        carrier.insert("tracestate".to_owned(), tracestate.to_owned());
    }
    let cx = TraceContextPropagator::new().extract(&carrier);
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}
