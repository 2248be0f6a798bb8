//! What every node's `/metrics` page shares: the exposition format chosen by content
//! negotiation ([`Format`]), the Prometheus text format 0.0.4 made from prometheus-client's
//! OpenMetrics ([`text`]), the process and build-info metrics ([`process`]), and the small
//! admin HTTP server a worker serves them on ([`admin`]; a gateway has its own admin port with
//! the same pages).
//!
//! prometheus-client only encodes OpenMetrics, where a counter family is declared without its
//! `_total` suffix: the Prometheus text parser reads that as an empty `counter` family plus an
//! `unknown` `_total` one. So `/metrics` answers OpenMetrics only to a scraper that asks for it
//! (`Accept: application/openmetrics-text`), the text format otherwise.

pub mod admin;
pub mod process;
pub mod text;

use prometheus_client::registry::Registry;

/// The content type of an OpenMetrics page.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The content type of a Prometheus text format page.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The exposition format of a `/metrics` answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    OpenMetrics,
    /// The Prometheus text format, version 0.0.4.
    Text,
}

impl Format {
    /// OpenMetrics when the `Accept` header lists `application/openmetrics-text` with a
    /// quality above 0 and at least that of the text format's best range (`text/plain`,
    /// `text/*`, `*/*`); the text format otherwise (no header, `*/*`, `text/plain`, ...).
    pub fn negotiate(accept: Option<&str>) -> Format {
        let Some(accept) = accept else {
            return Format::Text;
        };
        let (mut openmetrics, mut text) = (0.0_f32, 0.0_f32);
        for range in accept.split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or("").to_ascii_lowercase();
            let q = parts
                .find_map(|p| p.strip_prefix("q=").or_else(|| p.strip_prefix("Q=")))
                .map_or(Some(1.0), |q| q.trim().parse::<f32>().ok())
                .unwrap_or(0.0)
                .clamp(0.0, 1.0);
            match media.as_str() {
                "application/openmetrics-text" => openmetrics = openmetrics.max(q),
                "text/plain" | "text/*" | "*/*" => text = text.max(q),
                _ => {}
            }
        }
        if openmetrics > 0.0 && openmetrics >= text {
            Format::OpenMetrics
        } else {
            Format::Text
        }
    }

    /// The `Content-Type` of an answer in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
            Format::Text => TEXT_CONTENT_TYPE,
        }
    }
}

/// The registry's metrics in `format`.
pub fn render(registry: &Registry, format: Format) -> String {
    let mut out = String::new();
    // Writing to a String does not fail; a collector that fails leaves what it wrote.
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, registry) {
        tracing::warn!(error = %e, "encoding the metrics failed");
    }
    match format {
        Format::OpenMetrics => out,
        Format::Text => text::from_openmetrics(&out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_picks_openmetrics_only_when_asked() {
        assert_eq!(Format::negotiate(None), Format::Text);
        assert_eq!(Format::negotiate(Some("*/*")), Format::Text);
        assert_eq!(Format::negotiate(Some("text/plain")), Format::Text);
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text")),
            Format::OpenMetrics
        );
        // What Prometheus sends.
        assert_eq!(
            Format::negotiate(Some(
                "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                 version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
            )),
            Format::OpenMetrics
        );
        assert_eq!(
            Format::negotiate(Some(
                "text/plain;version=0.0.4;q=0.2, Application/OpenMetrics-Text; q=0.3"
            )),
            Format::OpenMetrics
        );
        // A client that prefers the text format gets it, even if it could read OpenMetrics.
        assert_eq!(
            Format::negotiate(Some(
                "text/plain;version=0.0.4, application/openmetrics-text;q=0.3"
            )),
            Format::Text
        );
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text;q=0.1, */*;q=1")),
            Format::Text
        );
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text;q=bad")),
            Format::Text
        );
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text; q=0, text/plain")),
            Format::Text
        );
        assert_eq!(Format::Text.content_type(), TEXT_CONTENT_TYPE);
    }
}
