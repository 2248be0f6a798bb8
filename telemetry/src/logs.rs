//! The global logger: `SWITCHBOARD_LOG` (or `RUST_LOG`) filters, `--log-format text|json`
//! (`SWITCHBOARD_LOG_FORMAT`) shapes, stderr receives. Text has colours only on a terminal
//! and never with `NO_COLOR` set (non-empty); json is one object per line. With tracing on,
//! a line written inside a traced span carries its `trace_id` (a json field, or `trace_id=`
//! at the end of a text line), and the OpenTelemetry layer exports the spans.

use std::fmt;
use std::io::IsTerminal;
use std::sync::OnceLock;

use opentelemetry::trace::{TraceContextExt, TracerProvider};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::{Dispatch, Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{EnvFilter, Layer};

use crate::TelemetryError;

/// What the logs look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (colours only on a terminal without NO_COLOR).
    #[default]
    Text,
    /// One JSON object per line (for log collectors).
    Json,
}

/// The logging flags of a long-running subcommand.
#[derive(Debug, Clone, Copy, Default, clap::Args)]
pub struct LogArgs {
    /// Log format on stderr: text or json (one object per line). Filter with SWITCHBOARD_LOG.
    #[arg(
        long,
        env = "SWITCHBOARD_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text,
        help_heading = "Logging"
    )]
    pub log_format: LogFormat,
}

/// The filter when none is given. The exporter's own HTTP/gRPC stack stays quiet, or exporting a
/// span would log (and, traced, export) more.
const DEFAULT_FILTER: &str =
    "info,hyper=warn,h2=warn,tonic=warn,tower=warn,reqwest=warn,opentelemetry=warn";

/// Crates whose spans and events never reach the OpenTelemetry layer, whatever the filter: they
/// are the exporter's own transport.
/// (The SDK's own, `opentelemetry*`, are left out by prefix.)
const EXPORTER_TARGETS: [&str; 6] = ["h2", "hyper", "hyper_util", "tonic", "tower", "reqwest"];

/// The installed dispatcher, for the formatter to find a span's trace id (a nested
/// `get_default` while an event is being dispatched would see no subscriber).
static DISPATCH: OnceLock<Dispatch> = OnceLock::new();

fn colours() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

pub(crate) fn install(
    format: LogFormat,
    provider: Option<&(SdkTracerProvider, crate::traces::ExportProtocol)>,
) -> Result<(), TelemetryError> {
    let filter = EnvFilter::try_from_env("SWITCHBOARD_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let fmt_layer = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(colours())
            .event_format(WithTraceId {
                inner: tracing_subscriber::fmt::format().with_ansi(colours()),
                json: false,
            })
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .event_format(WithTraceId {
                inner: tracing_subscriber::fmt::format()
                    .json()
                    .with_span_list(false),
                json: true,
            })
            .boxed(),
    }
    // The log filter is the log layer's own: spans are exported whatever is logged.
    .with_filter(filter);
    let otel_layer = provider.map(|(p, _)| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("switchboard"))
            .with_location(false)
            .with_threads(false)
            .with_filter(tracing_subscriber::filter::filter_fn(|meta| {
                let target = meta.target();
                // Spans are INFO (debug ones, like a connection's, are for logs only).
                *meta.level() <= tracing::Level::INFO
                    && !target.starts_with("opentelemetry")
                    && !EXPORTER_TARGETS.iter().any(|t| {
                        target
                            .strip_prefix(t)
                            .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
                    })
            }))
    });
    let subscriber = tracing_subscriber::registry()
        .with(fmt_layer)
        .with(otel_layer);
    let dispatch = Dispatch::new(subscriber);
    tracing::dispatcher::set_global_default(dispatch.clone())
        .map_err(|_| TelemetryError::AlreadyInstalled)?;
    let _ = DISPATCH.set(dispatch);
    // Libraries that log through the `log` crate are not bridged: none of ours matter.
    Ok(())
}

/// A format that adds the current span's trace id to each line, when spans are exported.
struct WithTraceId<F> {
    inner: F,
    json: bool,
}

/// The trace id of the span the event is in, as 32 hex digits.
fn trace_id() -> Option<String> {
    if !crate::tracing_enabled() {
        return None;
    }
    // The registry's current span, not the log layer's (its filter may hide the span).
    let dispatch = DISPATCH.get()?;
    let current = dispatch.current_span();
    let id = current.id()?;
    let cx = tracing_opentelemetry::get_otel_context(id, dispatch)?;
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

impl<S, N, F> FormatEvent<S, N> for WithTraceId<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let Some(trace_id) = trace_id() else {
            return self.inner.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        if self.json {
            // The json format writes one object: the field goes first.
            match line.strip_prefix('{') {
                Some(rest) => write!(writer, "{{\"trace_id\":\"{trace_id}\",{rest}"),
                None => writer.write_str(&line),
            }
        } else {
            let body = line.strip_suffix('\n').unwrap_or(&line);
            writeln!(writer, "{body} trace_id={trace_id}")
        }
    }
}
