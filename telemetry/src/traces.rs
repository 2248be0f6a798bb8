//! The OpenTelemetry SDK with an OTLP exporter, configured like every OpenTelemetry SDK by the
//! standard variables:
//!
//! - `OTEL_EXPORTER_OTLP_ENDPOINT` (`/v1/traces` is appended for HTTP) or
//!   `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as is): tracing is off when neither is set;
//! - `OTEL_EXPORTER_OTLP_PROTOCOL` / `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`: `http/protobuf`
//!   (the default), `http/json` or `grpc`;
//! - `OTEL_SERVICE_NAME` (default `switchboard-gateway` / `switchboard-worker`),
//!   `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG`,
//!   `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_EXPORTER_OTLP_TIMEOUT`, `OTEL_BSP_*` (read by the SDK);
//! - `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`: off.
//!
//! Spans are batched by a task on the Tokio runtime (the async HTTP client and tonic need it)
//! and flushed by [`crate::Telemetry::shutdown`].

use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;

use crate::TelemetryError;

/// How spans leave the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportProtocol {
    HttpProtobuf,
    HttpJson,
    Grpc,
}

impl ExportProtocol {
    /// Its name in `OTEL_EXPORTER_OTLP_PROTOCOL`.
    pub fn as_str(self) -> &'static str {
        match self {
            ExportProtocol::HttpProtobuf => "http/protobuf",
            ExportProtocol::HttpJson => "http/json",
            ExportProtocol::Grpc => "grpc",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s.trim() {
            "http/protobuf" => Some(ExportProtocol::HttpProtobuf),
            "http/json" => Some(ExportProtocol::HttpJson),
            "grpc" => Some(ExportProtocol::Grpc),
            _ => None,
        }
    }
}

/// What the environment asks for, when it asks for traces at all.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    protocol: ExportProtocol,
    /// Set when neither `OTEL_SERVICE_NAME` nor `service.name` in `OTEL_RESOURCE_ATTRIBUTES`
    /// names the service.
    default_service: Option<String>,
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The endpoint, for the start-up log line.
pub(crate) fn endpoint_for_log() -> String {
    let endpoint = var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .or_else(|| var("OTEL_EXPORTER_OTLP_ENDPOINT"))
        .unwrap_or_default();
    without_credentials(&endpoint)
}

/// `endpoint` without what may be a credential: the user part and the query (a collector's
/// key is sometimes put there; `OTEL_EXPORTER_OTLP_HEADERS` is the place for it).
fn without_credentials(endpoint: &str) -> String {
    let endpoint = endpoint.split(['?', '#']).next().unwrap_or_default();
    match endpoint.split_once("://") {
        Some((scheme, rest)) => {
            let authority_end = rest.find('/').unwrap_or(rest.len());
            match rest[..authority_end].rfind('@') {
                Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
                None => endpoint.to_owned(),
            }
        }
        None => endpoint.to_owned(),
    }
}

#[cfg(test)]
mod endpoint_tests {
    use super::without_credentials;

    #[test]
    fn logged_endpoints_lose_user_parts_and_queries() {
        assert_eq!(
            without_credentials("https://user:key@otlp.example.com:4318/v1/traces?api_key=k"),
            "https://***@otlp.example.com:4318/v1/traces"
        );
        assert_eq!(
            without_credentials("http://collector:4318"),
            "http://collector:4318"
        );
    }
}

impl Settings {
    /// `None`: tracing is off (no endpoint, or disabled).
    pub(crate) fn from_env(default_service: &str) -> Result<Option<Self>, TelemetryError> {
        if var("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
            || var("OTEL_TRACES_EXPORTER").is_some_and(|v| v.trim() == "none")
        {
            return Ok(None);
        }
        if var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_none()
            && var("OTEL_EXPORTER_OTLP_ENDPOINT").is_none()
        {
            return Ok(None);
        }
        if let Some(e) = var("OTEL_TRACES_EXPORTER")
            && e.trim() != "otlp"
        {
            return Err(TelemetryError::Settings(format!(
                "OTEL_TRACES_EXPORTER={e}: only otlp (or none) is supported"
            )));
        }
        let (name, value) = match var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") {
            Some(v) => ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", Some(v)),
            None => (
                "OTEL_EXPORTER_OTLP_PROTOCOL",
                var("OTEL_EXPORTER_OTLP_PROTOCOL"),
            ),
        };
        let protocol = match value {
            None => ExportProtocol::HttpProtobuf,
            Some(v) => ExportProtocol::parse(&v).ok_or_else(|| {
                TelemetryError::Settings(format!(
                    "{name}={v}: expected http/protobuf, http/json or grpc"
                ))
            })?,
        };
        let named = var("OTEL_SERVICE_NAME").is_some()
            || var("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|a| {
                a.split(',')
                    .any(|kv| kv.trim_start().starts_with("service.name="))
            });
        Ok(Some(Settings {
            protocol,
            default_service: (!named).then(|| default_service.to_owned()),
        }))
    }

    /// Builds the exporter and the tracer provider (inside the Tokio runtime).
    pub(crate) fn provider(self) -> Result<(SdkTracerProvider, ExportProtocol), TelemetryError> {
        // The HTTP client's rustls takes the process's crypto provider (ring, as the rest of
        // the tree): only https endpoints use it.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let builder = opentelemetry_otlp::SpanExporter::builder();
        let exporter = match self.protocol {
            ExportProtocol::Grpc => builder.with_tonic().with_protocol(Protocol::Grpc).build(),
            ExportProtocol::HttpProtobuf => builder
                .with_http()
                .with_protocol(Protocol::HttpBinary)
                .build(),
            ExportProtocol::HttpJson => builder
                .with_http()
                .with_protocol(Protocol::HttpJson)
                .build(),
        }
        .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
        // The SDK's detectors read OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES.
        let mut resource = Resource::builder();
        if let Some(name) = self.default_service {
            resource = resource.with_service_name(name);
        }
        let resource = resource
            .with_attribute(opentelemetry::KeyValue::new(
                "service.version",
                env!("CARGO_PKG_VERSION"),
            ))
            .build();
        let batch =
            BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio).build();
        // The sampler comes from OTEL_TRACES_SAMPLER / _ARG (default parentbased_always_on).
        let provider = SdkTracerProvider::builder()
            .with_span_processor(batch)
            .with_resource(resource)
            .build();
        Ok((provider, self.protocol))
    }
}

#[cfg(test)]
mod tests {
    use super::ExportProtocol;

    #[test]
    fn protocols_are_the_standard_names() {
        for p in [
            ExportProtocol::HttpProtobuf,
            ExportProtocol::HttpJson,
            ExportProtocol::Grpc,
        ] {
            assert_eq!(ExportProtocol::parse(p.as_str()), Some(p));
        }
        assert_eq!(ExportProtocol::parse(" grpc "), Some(ExportProtocol::Grpc));
        assert_eq!(ExportProtocol::parse("http"), None);
        assert_eq!(ExportProtocol::parse("thrift"), None);
    }
}
