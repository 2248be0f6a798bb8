//! A node's admin HTTP server (`--admin-listen`, for the operator's network only):
//! `GET /metrics` (negotiated, [`Format`]), `/healthz` (200 while the process runs) and
//! `/readyz` (200 when the [`AdminPages`] say ready, 503 with the reason otherwise). Workers
//! serve it; a gateway's admin port answers the same pages from its own router.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use super::Format;

/// How long a client of the admin port has to send its request's headers.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failed `accept` (out of file descriptors, say) before the next one.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// What the admin pages show.
pub trait AdminPages: Send + Sync + 'static {
    /// The metrics in `format`.
    fn metrics(&self, format: Format) -> String;
    /// `Ok` when ready, else why not (the 503's body).
    fn ready(&self) -> Result<(), &'static str>;
}

/// Serves the admin pages on `listener` until the task is dropped or aborted.
pub async fn serve(listener: TcpListener, pages: Arc<dyn AdminPages>, header_timeout: Duration) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let pages = pages.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let pages = pages.clone();
                async move { Ok::<_, Infallible>(route(&*pages, &req)) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(TokioIo::new(stream), svc);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "admin connection ended with an error");
            }
        });
    }
}

/// The `/metrics` answer for a request with these headers.
pub fn metrics_response(
    headers: &header::HeaderMap,
    render: impl FnOnce(Format) -> String,
) -> Response<Full<Bytes>> {
    let accept = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(",");
    let format = Format::negotiate((!accept.is_empty()).then_some(accept.as_str()));
    let mut r = Response::new(Full::new(Bytes::from(render(format))));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    r
}

fn route<B>(pages: &dyn AdminPages, req: &Request<B>) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") => match pages.ready() {
            Ok(()) => text(StatusCode::OK, "ready\n"),
            Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, why),
        },
        (&Method::GET, "/metrics") => metrics_response(req.headers(), |f| pages.metrics(f)),
        (_, "/healthz" | "/readyz" | "/metrics") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
