//! `wss://`: the TLS side of a connection, and the stream type that carries plain TCP or TLS.
//!
//! TLS goes through rustls with the `ring` provider (no aws-lc, no cmake). Which certificate
//! authorities are trusted is [`TlsOptions`]: by default the Mozilla roots compiled in
//! (`webpki-roots`) *and* the system's store (`rustls-native-certs`, read once per process), the
//! same set the gateway trusts for a JWKS; [`Roots`] narrows that to one of them or none, and
//! [`TlsOptions::ca_pem`] adds the certificates of a PEM file (a private CA, a test CA). The
//! server name checked (and sent as SNI) is the URL's host.
//!
//! [`MaybeTls`] is what the WebSocket runs over: one type for `ws://` and `wss://`, so the
//! reader and writer tasks are the same for both. A TLS stream buffers what is written: the
//! writer task flushes after each batch of frames (fastwebsockets' `write_frame` does not).

use std::io;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::ClientError;

/// Which built-in certificate authorities a `wss://` connection trusts (besides
/// [`TlsOptions::ca_pem`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Roots {
    /// The Mozilla roots compiled into the binary (`webpki-roots`) and the system's store.
    #[default]
    WebpkiAndSystem,
    /// Only the Mozilla roots compiled in: the same on every machine.
    Webpki,
    /// Only the system's store (`/etc/ssl/certs` and the like, read once per process).
    System,
    /// None: only [`TlsOptions::ca_pem`] (a private CA).
    None,
}

/// How a `wss://` connection checks the server. Ignored for `ws://`.
#[derive(Clone, Default)]
pub struct TlsOptions {
    pub roots: Roots,
    /// PEM text holding one or more CA certificates to trust as well (read it from a file with
    /// [`TlsOptions::with_ca_file`]).
    pub ca_pem: Option<Vec<u8>>,
    /// A rustls configuration of your own, used as it is (`roots` and `ca_pem` are then
    /// ignored): client certificates, pinning, other providers.
    pub config: Option<Arc<ClientConfig>>,
}

impl std::fmt::Debug for TlsOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsOptions")
            .field("roots", &self.roots)
            .field("ca_pem", &self.ca_pem.as_ref().map(|p| p.len()))
            .field("config", &self.config.is_some())
            .finish()
    }
}

impl TlsOptions {
    /// Trusts the CA certificates in `pem` besides `roots`.
    pub fn with_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_pem = Some(pem.into());
        self
    }

    /// Trusts the CA certificates of the PEM file at `path` besides `roots`.
    pub fn with_ca_file(self, path: impl AsRef<std::path::Path>) -> Result<Self, ClientError> {
        let path = path.as_ref();
        let pem = std::fs::read(path)
            .map_err(|e| ClientError::Tls(format!("cannot read {}: {e}", path.display())))?;
        Ok(self.with_ca_pem(pem))
    }

    /// The rustls configuration these options describe.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, ClientError> {
        if let Some(config) = &self.config {
            return Ok(config.clone());
        }
        let mut roots = RootCertStore::empty();
        if matches!(self.roots, Roots::WebpkiAndSystem | Roots::Webpki) {
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        }
        if matches!(self.roots, Roots::WebpkiAndSystem | Roots::System) {
            roots.add_parsable_certificates(system_roots().iter().cloned());
        }
        if let Some(pem) = &self.ca_pem {
            let mut added = 0;
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert =
                    cert.map_err(|e| ClientError::Tls(format!("ca_pem: not a PEM file: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| ClientError::Tls(format!("ca_pem: a bad certificate: {e}")))?;
                added += 1;
            }
            if added == 0 {
                return Err(ClientError::Tls("ca_pem: no CERTIFICATE in it".into()));
            }
        }
        if roots.is_empty() {
            return Err(ClientError::Tls(
                "no certificate authority to trust (roots: None and no ca_pem)".into(),
            ));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ClientError::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Arc::new(config))
    }
}

/// The system's root certificates, read once per process (an unreadable store is empty).
fn system_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let native = rustls_native_certs::load_native_certs();
        for error in &native.errors {
            tracing::debug!(%error, "a system root certificate could not be read");
        }
        native.certs
    })
}

/// TLS over `tcp` to `host` (the name the certificate must carry, sent as SNI).
pub(crate) async fn handshake(
    tcp: TcpStream,
    host: &str,
    tls: &TlsOptions,
) -> Result<MaybeTls, ClientError> {
    let config = tls.client_config()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let name = ServerName::try_from(host.to_owned())
        .map_err(|e| ClientError::Url(format!("{host} is not a server name: {e}")))?;
    let stream = TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| ClientError::Tls(tls_error(&e)))?;
    Ok(MaybeTls::Tls(Box::new(stream)))
}

/// A TLS failure as a person can act on it (rustls puts the certificate problem inside).
fn tls_error(e: &io::Error) -> String {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::InvalidCertificate(why)) => {
            format!("the server's certificate was refused: {why:?}")
        }
        Some(other) => format!("TLS handshake failed: {other}"),
        None => format!("TLS handshake failed: {e}"),
    }
}

/// A connection's byte stream: plain TCP (`ws://`) or TLS over TCP (`wss://`).
#[derive(Debug)]
pub enum MaybeTls {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for MaybeTls {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for MaybeTls {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            MaybeTls::Plain(s) => s.is_write_vectored(),
            MaybeTls::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_flush(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_shutdown(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roots_and_custom_cas() {
        assert!(TlsOptions::default().client_config().is_ok());
        let none = TlsOptions {
            roots: Roots::None,
            ..Default::default()
        };
        assert!(matches!(none.client_config(), Err(ClientError::Tls(_))));
        let junk = TlsOptions::default().with_ca_pem("not pem");
        assert!(matches!(junk.client_config(), Err(ClientError::Tls(_))));
        assert!(matches!(
            TlsOptions::default().with_ca_file("/nonexistent/ca.pem"),
            Err(ClientError::Tls(_))
        ));
    }
}
