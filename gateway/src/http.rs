//! The HTTP side of the node's one port: `GET /ws` (the WebSocket upgrade), `/healthz`,
//! `/readyz` and `/metrics`.
//!
//! The upgrade decides what can be decided before the socket exists: the subprotocol
//! (`switchboard.v1`, also when none is offered, or `mcp`), the token from the `Authorization` header or
//! the `token` query parameter, and whether the node is full. The socket then leaves hyper: the
//! upgraded stream is taken back as the plain `TcpStream`, split into owned halves (no lock
//! between reader and writer), and served by [`crate::conn::serve`].

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tracing::Instrument;

use crate::conn::{self, Admission};
use crate::node::Node;

/// The subprotocol this node speaks.
pub const SUBPROTOCOL: &str = "switchboard.v1";
/// The subprotocol of unmodified MCP clients (`initialize` instead of `hello`).
pub const MCP_SUBPROTOCOL: &str = "mcp";

type Reply = Response<Full<Bytes>>;

/// Serves one accepted TCP connection: HTTP requests until it upgrades or closes.
pub(crate) async fn serve(node: Arc<Node>, stream: TcpStream) {
    let io = TokioIo::new(stream);
    let svc_node = node.clone();
    let svc = service_fn(move |req| {
        let node = svc_node.clone();
        async move { Ok::<_, Infallible>(route(node, req)) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(node.config.hello_timeout)
        .serve_connection(io, svc)
        .with_upgrades();
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "http connection ended with an error");
    }
}

fn route(node: Arc<Node>, req: Request<Incoming>) -> Reply {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") => readyz(&node),
        (&Method::GET, "/metrics") => {
            let mut r = Response::new(Full::new(Bytes::from(node.metrics.render())));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            r
        }
        (&Method::GET, "/ws") => upgrade(node, req),
        (_, "/healthz" | "/readyz" | "/metrics" | "/ws") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn readyz(node: &Node) -> Reply {
    if node.is_ready() {
        text(StatusCode::OK, "ready\n")
    } else if node.is_draining() {
        text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else {
        text(StatusCode::SERVICE_UNAVAILABLE, "backend unreachable\n")
    }
}

fn text(status: StatusCode, body: &'static str) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn upgrade(node: Arc<Node>, mut req: Request<Incoming>) -> Reply {
    if !fastwebsockets::upgrade::is_upgrade_request(&req) {
        return text(StatusCode::BAD_REQUEST, "expected a WebSocket upgrade\n");
    }
    if node.is_draining() {
        return text(StatusCode::SERVICE_UNAVAILABLE, "draining\n");
    }
    let Ok(protocol) = negotiate(req.headers()) else {
        return text(
            StatusCode::BAD_REQUEST,
            "unsupported subprotocol: offer switchboard.v1 or mcp (or none)\n",
        );
    };
    let admission = admit(&node, &req);
    let mcp = protocol == Some(MCP_SUBPROTOCOL);
    let (response, fut) = match fastwebsockets::upgrade::upgrade(&mut req) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(error = %e, "bad upgrade request");
            return text(StatusCode::BAD_REQUEST, "bad WebSocket upgrade request\n");
        }
    };
    let task = async move {
        let ws = match fut.await {
            Ok(ws) => ws,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade failed");
                return;
            }
        };
        let upgraded = ws.into_inner().into_inner();
        match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => {
                let stream = parts.io.into_inner();
                let span = tracing::debug_span!("conn", peer = ?stream.peer_addr().ok());
                // A task of its own, so the connection does not carry the upgrade's state.
                let conn =
                    conn::serve(node, stream, parts.read_buf, admission, mcp).instrument(span);
                tokio::spawn(conn);
            }
            Err(_) => tracing::error!("upgraded connection is not a TCP stream"),
        }
    };
    tokio::spawn(task);
    let mut response = response.map(|_| Full::new(Bytes::new()));
    if let Some(p) = protocol {
        response
            .headers_mut()
            .insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(p));
    }
    response
}

/// Picks the subprotocol: `Ok(None)` when none was offered, `Err` when only unknown ones were.
/// `switchboard.v1` wins over `mcp` when both are offered.
fn negotiate(headers: &header::HeaderMap) -> Result<Option<&'static str>, ()> {
    let mut offered = false;
    let mut mcp = false;
    for value in headers.get_all(header::SEC_WEBSOCKET_PROTOCOL) {
        let Ok(value) = value.to_str() else { continue };
        for p in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            offered = true;
            if p == SUBPROTOCOL {
                return Ok(Some(SUBPROTOCOL));
            }
            mcp |= p == MCP_SUBPROTOCOL;
        }
    }
    match (offered, mcp) {
        (_, true) => Ok(Some(MCP_SUBPROTOCOL)),
        (true, false) => Err(()),
        (false, false) => Ok(None),
    }
}

fn admit<B>(node: &Node, req: &Request<B>) -> Admission {
    if node.registry.len() >= node.config.max_connections {
        return Admission::Full;
    }
    let Some(token) = token_of(req) else {
        return Admission::Open(None);
    };
    match node.config.auth.verifier.as_ref().map(|v| v.verify(token)) {
        Some(Ok(identity)) => Admission::Open(Some(identity)),
        Some(Err(e)) => {
            tracing::debug!(error = %e, "token refused at upgrade");
            Admission::BadToken
        }
        None => Admission::BadToken,
    }
}

/// The token from `Authorization: Bearer <jwt>` or `?token=<jwt>` (a JWT needs no
/// percent-decoding: its alphabet is URL-safe).
fn token_of<B>(req: &Request<B>) -> Option<&str> {
    if let Some(v) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let mut parts = v.splitn(2, ' ');
        if let (Some(scheme), Some(token)) = (parts.next(), parts.next())
            && scheme.eq_ignore_ascii_case("bearer")
        {
            return Some(token.trim());
        }
    }
    req.uri()
        .query()?
        .split('&')
        .find_map(|kv| kv.strip_prefix("token="))
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(uri: &str, auth: Option<&str>, proto: Option<&str>) -> Request<()> {
        let mut b = Request::builder().uri(uri);
        if let Some(a) = auth {
            b = b.header(header::AUTHORIZATION, a);
        }
        if let Some(p) = proto {
            b = b.header(header::SEC_WEBSOCKET_PROTOCOL, p);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn token_from_header_or_query() {
        assert_eq!(token_of(&req("/ws", Some("Bearer abc"), None)), Some("abc"));
        assert_eq!(token_of(&req("/ws", Some("bearer abc"), None)), Some("abc"));
        assert_eq!(token_of(&req("/ws?a=1&token=xyz", None, None)), Some("xyz"));
        assert_eq!(token_of(&req("/ws?token=", None, None)), None);
        assert_eq!(token_of(&req("/ws", Some("Basic abc"), None)), None);
    }

    #[test]
    fn subprotocol_negotiation() {
        let h = |p: Option<&str>| req("/ws", None, p).headers().clone();
        assert_eq!(negotiate(&h(None)), Ok(None));
        assert_eq!(
            negotiate(&h(Some("x, switchboard.v1"))),
            Ok(Some(SUBPROTOCOL))
        );
        assert_eq!(negotiate(&h(Some("mqtt"))), Err(()));
        assert_eq!(negotiate(&h(Some("mqtt, mcp"))), Ok(Some(MCP_SUBPROTOCOL)));
        assert_eq!(
            negotiate(&h(Some("mcp, switchboard.v1"))),
            Ok(Some(SUBPROTOCOL))
        );
    }
}
