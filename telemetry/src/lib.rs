//! Logs and traces, set up in one place for every subcommand (`switchboard gateway`, `worker`,
//! `dev`, and the short-lived ones), and the W3C trace context a tool call carries from the
//! gateway that receives it, through Redis, to the worker that runs it.
//!
//! - [`logs`]: the log formats (`--log-format text|json`, `SWITCHBOARD_LOG_FORMAT`), colours
//!   only on a terminal without `NO_COLOR`, and the trace id on every line written inside a
//!   traced span.
//! - [`traces`]: the OpenTelemetry SDK and its OTLP exporter, configured by the standard
//!   `OTEL_*` variables and off (no exporter, no OpenTelemetry layer) when no endpoint is set.
//! - [`context`]: `traceparent`/`tracestate` out of a span (into a job) and back into a span
//!   (a worker's execution, or a gateway span continuing a client's `_meta.traceparent`).
//!
//! Spans are per request (an upgrade, `hello`, `subscribe`, `publish`, a tool call): never per
//! delivered event, so the fan-out path costs the same with tracing on or off.

pub mod context;
pub mod logs;
pub mod traces;

use std::sync::atomic::{AtomicBool, Ordering};

pub use context::{TraceHeaders, continue_trace, trace_headers};
pub use logs::{LogArgs, LogFormat};

/// Set once traces are exported: [`context`] and the log formatter do nothing otherwise.
static TRACING: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported (an OTLP endpoint was configured and the SDK is not disabled).
pub fn tracing_enabled() -> bool {
    TRACING.load(Ordering::Relaxed)
}

/// Why logging or tracing could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// A bad `OTEL_*` setting; the message names it.
    #[error("{0}")]
    Settings(String),
    /// The exporter could not be built.
    #[error("OpenTelemetry exporter: {0}")]
    Exporter(String),
    #[error("a logger is already installed")]
    AlreadyInstalled,
}

/// The installed logging and tracing. [`Telemetry::shutdown`] flushes the spans still queued;
/// call it outside the runtime's `block_on` (the exporter's task runs on the runtime).
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Telemetry {
    /// Installs the global logger and, for a long-running subcommand (`service` is its default
    /// `service.name`), the OTLP exporter when an `OTEL_EXPORTER_OTLP_*ENDPOINT` is set. With
    /// tracing on, call it inside the Tokio runtime (`Runtime::enter`): the exporter's batch
    /// task and the gRPC channel start on it.
    pub fn init(log: &LogArgs, service: Option<&str>) -> Result<Self, TelemetryError> {
        let settings = match service {
            Some(s) => traces::Settings::from_env(s)?,
            None => None,
        };
        let provider = settings.map(|s| s.provider()).transpose()?;
        logs::install(log.log_format, provider.as_ref())?;
        if let Some(p) = &provider {
            TRACING.store(true, Ordering::Relaxed);
            tracing::info!(
                endpoint = %traces::endpoint_for_log(),
                protocol = p.1.as_str(),
                "exporting traces over OTLP"
            );
        }
        Ok(Telemetry {
            provider: provider.map(|(p, _)| p),
        })
    }

    /// Flushes the queued spans and stops the exporter (bounded by the exporter's timeout).
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(p) = self.provider.take() {
            TRACING.store(false, Ordering::Relaxed);
            if let Err(e) = p.shutdown() {
                eprintln!("switchboard: flushing traces failed: {e}");
            }
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.stop();
    }
}
