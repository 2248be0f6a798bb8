//! The node's ports. The public one (`--listen`): `GET /ws` (the WebSocket upgrade), `/mcp`
//! (MCP over Streamable HTTP, `node/mcp.rs`), `/healthz` and `/readyz` (load balancers probe
//! the port they route to). The admin one
//! (`--admin-listen`, for the operator's network only): `/metrics`, `/healthz`, `/readyz`.
//! `/metrics` is never served on the public port.
//!
//! `/ws` and `/mcp` answer only under the names the node may be reached under (the request's
//! `Host`, `--allowed-host`; by default, on a loopback address, only the loopback names): 403
//! otherwise, against DNS rebinding.
//!
//! The upgrade decides what can be decided before the socket exists: HTTP/1.1 (an HTTP/1.0
//! upgrade is refused, 400), the page's `Origin` (a browser page of an origin that is not
//! allowed gets 403; requests without `Origin` are not browsers and pass), the subprotocol
//! (`switchboard.v1`, also when none is offered, or `mcp`), the token from the `Authorization`
//! header or the `token` query parameter (verified by the method layer's [`Access`]), and
//! whether the node is full. The socket then leaves hyper (`transport::upgrade`) and is served
//! by the transport, its messages answered by the method layer ([`Connection`]).

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioIo, TokioTimer};
use switchboard_core::auth::Identity;
use switchboard_protocol::{MCP_SUBPROTOCOL, SUBPROTOCOL, close};
use tokio::net::{TcpListener, TcpStream};
use tracing::Instrument;

use super::mcp::McpReply;
use super::request::{bearer, host_allowed, origin_allowed};
use super::{ACCEPT_BACKOFF, Node};
use crate::config::Network;
use crate::limits::connections::{Admitted, CAPPED_RETRY_AFTER};
use crate::methods::{Caller, Connection};
use crate::transport;

type Reply = Response<Full<Bytes>>;

/// How the upgrade went, decided before the socket existed.
#[derive(Debug)]
enum Admission {
    /// Authenticated by header or query token (or no token given; `hello` decides).
    Open(Option<Identity>),
    /// A token was given and is bad or expired: close 1008.
    BadToken,
    /// The node holds `max_connections` sockets: close 1013.
    Full,
}

/// Serves one accepted TCP connection on the public port: HTTP requests until it upgrades or
/// closes.
pub(crate) async fn serve(node: Arc<Node>, stream: TcpStream) {
    let peer = stream
        .peer_addr()
        .map_or(IpAddr::from([0, 0, 0, 0]), |a| a.ip());
    let io = TokioIo::new(stream);
    let svc_node = node.clone();
    let svc = service_fn(move |req| {
        let node = svc_node.clone();
        async move { Ok::<_, Infallible>(route(node, req, peer).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(node.config.tuning.hello_timeout)
        .serve_connection(io, svc)
        .with_upgrades();
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "http connection ended with an error");
    }
}

async fn route(node: Arc<Node>, req: Request<Incoming>, peer: IpAddr) -> McpReply {
    if req.method() == Method::GET
        && matches!(
            req.uri().path(),
            "/.well-known/oauth-protected-resource" | "/.well-known/oauth-protected-resource/mcp"
        )
    {
        return super::mcp::resource_metadata(&node, req.headers());
    }
    if matches!(req.uri().path(), "/mcp" | "/ws")
        && !host_allowed(node.allowed_hosts.as_deref(), req.headers())
    {
        // A name the node is not reached under: a page whose DNS name was rebound to the
        // node's address (`--allowed-host`).
        node.metrics.hosts_refused.inc();
        return text(StatusCode::FORBIDDEN, "host not allowed\n").map(BodyExt::boxed);
    }
    if req.uri().path() == "/mcp" {
        let client = client_address(peer, &node.config.tuning.trusted_proxies, req.headers());
        return super::mcp::serve(node, req, client).await;
    }
    route_plain(node, req, peer).await.map(BodyExt::boxed)
}

async fn route_plain(node: Arc<Node>, req: Request<Incoming>, peer: IpAddr) -> Reply {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") => readyz(&node),
        (&Method::GET, "/ws") => {
            let span = crate::traced::connect(&node.config.node_id, peer);
            let reply = upgrade(node, req, peer).instrument(span.clone()).await;
            span.record("http.response.status_code", reply.status().as_u16());
            reply
        }
        (_, "/healthz" | "/readyz" | "/ws") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// Accepts on the admin port until the node stops (the task is aborted).
pub(crate) async fn serve_admin(node: Arc<Node>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let node = node.clone();
                tokio::spawn(async move {
                    let io = TokioIo::new(stream);
                    let svc_node = node.clone();
                    let svc = service_fn(move |req| {
                        let node = svc_node.clone();
                        async move { Ok::<_, Infallible>(admin_route(&node, &req)) }
                    });
                    let conn = http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(node.config.tuning.hello_timeout)
                        .serve_connection(io, svc);
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "admin connection ended with an error");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

fn admin_route<B>(node: &Node, req: &Request<B>) -> Reply {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") => readyz(node),
        // OpenMetrics when the scraper asks for it, the Prometheus text format otherwise.
        (&Method::GET, "/metrics") => {
            switchboard_core::metrics::admin::metrics_response(req.headers(), |f| {
                node.metrics.render(f)
            })
        }
        (_, "/healthz" | "/readyz" | "/metrics") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn readyz(node: &Node) -> Reply {
    if node.health.is_ready() {
        text(StatusCode::OK, "ready\n")
    } else if node.health.is_draining() {
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

async fn upgrade(node: Arc<Node>, mut req: Request<Incoming>, peer: IpAddr) -> Reply {
    if !transport::is_upgrade(&req) || req.version() != Version::HTTP_11 {
        return text(
            StatusCode::BAD_REQUEST,
            "expected a WebSocket upgrade over HTTP/1.1\n",
        );
    }
    if !origin_allowed(&node.config.access.allowed_origins, req.headers()) {
        node.metrics.origins_refused.inc();
        return text(StatusCode::FORBIDDEN, "origin not allowed\n");
    }
    let client = client_address(peer, &node.config.tuning.trusted_proxies, req.headers());
    if let Err(wait) = node.connection_rate.check(client) {
        node.metrics.connections_rate_limited.inc();
        let mut r = text(
            StatusCode::TOO_MANY_REQUESTS,
            "too many new connections from this address, try again later\n",
        );
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        if let Ok(v) = HeaderValue::from_str(&secs.max(1).to_string()) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return r;
    }
    if node.health.is_draining() {
        return text(StatusCode::SERVICE_UNAVAILABLE, "draining\n");
    }
    let member = node.connection_caps.member();
    if node
        .connection_caps
        .admit_address(&member, client)
        .await
        .is_err()
    {
        let mut r = text(
            StatusCode::TOO_MANY_REQUESTS,
            "too many connections from this address, try again later\n",
        );
        r.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from_static(CAPPED_RETRY_AFTER),
        );
        return r;
    }
    // From here, every way out releases the address's lease (its drop), but the socket's
    // handler, which takes it over.
    let admitted = Admitted::new(node.connection_caps.clone(), member);
    let Ok(protocol) = negotiate(req.headers()) else {
        return text(
            StatusCode::BAD_REQUEST,
            "unsupported subprotocol: offer switchboard.v1 or mcp (or none)\n",
        );
    };
    let admission = admit(&node, &req).await;
    let mcp = protocol == Some(MCP_SUBPROTOCOL);
    let on_socket = move |stream: TcpStream, read_buf: Bytes| {
        connect(&node, stream, read_buf, client, admitted, admission, mcp);
    };
    match transport::upgrade(&mut req, protocol, on_socket) {
        Ok(response) => response,
        Err(e) => {
            tracing::debug!(error = %e, "bad upgrade request");
            text(StatusCode::BAD_REQUEST, "bad WebSocket upgrade request\n")
        }
    }
}

/// Serves one upgraded socket in a task of its own (so the connection does not carry the
/// upgrade's state): registered with the node, closed at once if the upgrade decided so, its
/// messages answered by the method layer.
fn connect(
    node: &Arc<Node>,
    stream: TcpStream,
    read_buf: Bytes,
    client: IpAddr,
    admitted: Admitted,
    admission: Admission,
    mcp: bool,
) {
    let span = tracing::debug_span!("conn", peer = ?stream.peer_addr().ok());
    let (link, socket) = match transport::accept(&node.sockets, stream, read_buf) {
        Ok(accepted) => accepted,
        Err(e) => {
            tracing::warn!(error = %e, "re-registering a socket failed; dropping it");
            return;
        }
    };
    // Held by the connection's handler: the connection leaves the registry when it is gone.
    let registration = node.conns.register(link.clone());
    if node.health.is_draining() {
        // Upgraded while the drain took its snapshot of the registry: leave with the others.
        link.ctl.close(
            close::RESTARTING,
            "node restarting, reconnect elsewhere",
            true,
        );
    }
    let identity = match admission {
        Admission::Open(identity) => identity,
        Admission::BadToken => {
            link.ctl.close(close::POLICY, "bad or expired token", false);
            None
        }
        Admission::Full => {
            link.ctl
                .close(close::TRY_AGAIN_LATER, "node full, try again later", false);
            None
        }
    };
    let mut caller = Caller::new(link.clone(), client, admitted.into_member(), identity, mcp);
    caller.requests = node.methods.rate.budget();
    caller.socket = true;
    let handler = Connection::new(node.methods.clone(), caller, registration);
    let connection = transport::serve(node.sockets.clone(), link, socket, handler);
    tokio::spawn(connection.instrument(span));
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

async fn admit<B>(node: &Node, req: &Request<B>) -> Admission {
    if node.conns.len() >= node.config.tuning.max_connections {
        return Admission::Full;
    }
    let Some(token) = token_of(req) else {
        return Admission::Open(None);
    };
    match node.access.identify(token).await {
        Ok(identity) => Admission::Open(Some(identity)),
        Err(e) => {
            tracing::debug!(error = %e, "token refused at upgrade");
            Admission::BadToken
        }
    }
}

/// The client's address: the peer's, or, when the peer is a trusted proxy, the last address
/// in `X-Forwarded-For` that is not a trusted proxy (each proxy appends the address it heard
/// from, so the ones before the first untrusted hop may be anything the client wrote).
fn client_address(peer: IpAddr, trusted: &[Network], headers: &header::HeaderMap) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let hops = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect::<Vec<_>>();
    let mut client = peer;
    for hop in hops.iter().rev() {
        match hop.parse::<IpAddr>() {
            Ok(ip) if is_trusted(ip) => client = ip,
            Ok(ip) => return ip,
            // Unparsable: nothing before it can be trusted either.
            Err(_) => return client,
        }
    }
    client
}

/// The token from `Authorization: Bearer <jwt>` or `?token=<jwt>` (a JWT needs no
/// percent-decoding: its alphabet is URL-safe).
fn token_of<B>(req: &Request<B>) -> Option<&str> {
    if let Some(token) = bearer(req.headers()) {
        return Some(token);
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
    fn the_client_address_behind_trusted_proxies() {
        let trusted = vec![Network::parse("10.0.0.0/8").unwrap()];
        let xff = |v: &str| {
            Request::builder()
                .header("x-forwarded-for", v)
                .body(())
                .unwrap()
                .headers()
                .clone()
        };
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // An untrusted peer is the client, whatever it claims.
        assert_eq!(
            client_address(ip("203.0.113.9"), &trusted, &xff("1.2.3.4")),
            ip("203.0.113.9")
        );
        // Through a trusted proxy: the last untrusted hop.
        assert_eq!(
            client_address(ip("10.0.0.2"), &trusted, &xff("1.2.3.4, 198.51.100.7")),
            ip("198.51.100.7")
        );
        assert_eq!(
            client_address(ip("10.0.0.2"), &trusted, &xff("198.51.100.7, 10.0.0.5")),
            ip("198.51.100.7")
        );
        // Garbage in the header: the last trusted hop, never a made-up address.
        assert_eq!(
            client_address(ip("10.0.0.2"), &trusted, &xff("1.2.3.4, nope")),
            ip("10.0.0.2")
        );
        assert_eq!(
            client_address(ip("10.0.0.2"), &[], &xff("1.2.3.4")),
            ip("10.0.0.2")
        );
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
