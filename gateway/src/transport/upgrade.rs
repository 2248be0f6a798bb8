//! The WebSocket upgrade on the node's HTTP port: fastwebsockets answers the handshake (the
//! `101`), and once hyper lets go of the connection, the upgraded stream is taken back as the
//! plain `TcpStream` (split into owned halves later: no lock between reader and writer), with
//! whatever bytes hyper read past the request.

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Why an upgrade was refused before it began.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpgradeError {
    #[error("bad WebSocket upgrade request: {0}")]
    BadRequest(String),
}

/// Answers the upgrade (with `protocol` as the subprotocol, if any) and, once the socket is
/// upgraded, hands its TCP stream and leftover bytes to `on_socket`, in a task of its own.
pub(crate) fn upgrade(
    req: &mut Request<Incoming>,
    protocol: Option<&'static str>,
    on_socket: impl FnOnce(TcpStream, Bytes) + Send + 'static,
) -> Result<Response<Full<Bytes>>, UpgradeError> {
    let (response, fut) = fastwebsockets::upgrade::upgrade(req)
        .map_err(|e| UpgradeError::BadRequest(e.to_string()))?;
    tokio::spawn(async move {
        let ws = match fut.await {
            Ok(ws) => ws,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade failed");
                return;
            }
        };
        let upgraded = ws.into_inner().into_inner();
        match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => on_socket(parts.io.into_inner(), parts.read_buf),
            Err(_) => tracing::error!("upgraded connection is not a TCP stream"),
        }
    });
    let mut response = response.map(|_| Full::new(Bytes::new()));
    if let Some(p) = protocol {
        response
            .headers_mut()
            .insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(p));
    }
    Ok(response)
}

/// Whether the request asks for a WebSocket upgrade.
pub(crate) fn is_upgrade<B>(req: &Request<B>) -> bool {
    fastwebsockets::upgrade::is_upgrade_request(req)
}
