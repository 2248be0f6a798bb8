//! [`TlsProxy`]: a TLS-terminating proxy in front of a gateway, for the `wss://` tests.
//!
//! The gateway speaks plain HTTP/WebSocket; deployments put TLS in front of it (a load
//! balancer, an ingress). This proxy does that on a free port of 127.0.0.1: it holds a CA made
//! for the test ([`TestCa`], with `rcgen`) and a server certificate that CA signed for
//! `localhost` and `127.0.0.1`, accepts TLS (rustls, ring) and pipes the plaintext bytes to the
//! upstream address both ways (`copy_bidirectional`). Dropping it (or [`TlsProxy::kill`]) stops
//! accepting and cuts every connection at once, as a dead load balancer would.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

/// A certificate authority made for one test, and a server certificate it signed.
pub struct TestCa {
    ca_pem: String,
    cert: CertificateDer<'static>,
    key: Vec<u8>,
    /// The server certificate and key, PEM (for a TLS `redis-server`).
    cert_pem: String,
    key_pem: String,
    /// A client certificate the CA signed, and its key, PEM (mutual TLS).
    client_cert_pem: String,
    client_key_pem: String,
}

impl TestCa {
    /// A new CA, and a server certificate for `localhost` and `127.0.0.1`.
    pub fn new() -> TestCa {
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "Switchboard test CA");
        let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().expect("server key");
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .expect("server params");
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        let cert = params.signed_by(&key, &issuer).expect("server certificate");
        let client_key = KeyPair::generate().expect("client key");
        let mut client_params =
            CertificateParams::new(vec!["switchboard".to_owned()]).expect("client params");
        client_params
            .distinguished_name
            .push(DnType::CommonName, "switchboard");
        let client_cert = client_params
            .signed_by(&client_key, &issuer)
            .expect("client certificate");
        TestCa {
            ca_pem: ca_cert.pem(),
            cert: cert.der().clone(),
            key: key.serialize_der(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            client_cert_pem: client_cert.pem(),
            client_key_pem: client_key.serialize_pem(),
        }
    }

    /// Writes the CA, the server certificate and key and the client certificate and key into
    /// `dir`, as `ca.pem`, `server.pem`, `server.key`, `client.pem`, `client.key`.
    pub fn write_files(&self, dir: &std::path::Path) {
        for (name, pem) in [
            ("ca.pem", &self.ca_pem),
            ("server.pem", &self.cert_pem),
            ("server.key", &self.key_pem),
            ("client.pem", &self.client_cert_pem),
            ("client.key", &self.client_key_pem),
        ] {
            std::fs::write(dir.join(name), pem).expect("write a TLS file");
        }
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The CA certificate written to a file of its own (for a `--ca-file` flag).
    pub fn ca_file(&self) -> PathBuf {
        let path = std::env::temp_dir().join(format!(
            "switchboard-test-ca-{}-{}.pem",
            std::process::id(),
            crate::free_port()
        ));
        std::fs::write(&path, &self.ca_pem).expect("write the CA file");
        path
    }

    fn acceptor(&self) -> TlsAcceptor {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.clone()));
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(vec![self.cert.clone()], key)
            .expect("server certificate and key");
        TlsAcceptor::from(Arc::new(config))
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

/// A TLS-terminating proxy to one upstream address. Killed on drop.
pub struct TlsProxy {
    addr: SocketAddr,
    ca: Arc<TestCa>,
    task: tokio::task::JoinHandle<()>,
}

impl TlsProxy {
    /// A proxy with a CA of its own, in front of `upstream`.
    pub async fn start(upstream: SocketAddr) -> TlsProxy {
        Self::start_with(upstream, Arc::new(TestCa::new())).await
    }

    /// A proxy whose certificate `ca` signed (several proxies, one CA to trust).
    pub async fn start_with(upstream: SocketAddr, ca: Arc<TestCa>) -> TlsProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let acceptor = ca.acceptor();
        let task = tokio::spawn(async move {
            // Owned here: aborting this task drops (so cuts) every connection.
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((tcp, _)) = accepted else { continue };
                        let _ = tcp.set_nodelay(true);
                        conns.spawn(pipe(acceptor.clone(), tcp, upstream));
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        });
        TlsProxy { addr, ca, task }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `wss://127.0.0.1:<port>/ws`.
    pub fn wss_url(&self) -> String {
        format!("wss://127.0.0.1:{}/ws", self.addr.port())
    }

    /// `wss://localhost:<port>/ws` (the certificate names both).
    pub fn wss_url_by_name(&self) -> String {
        format!("wss://localhost:{}/ws", self.addr.port())
    }

    pub fn ca(&self) -> &TestCa {
        &self.ca
    }

    /// The CA certificate that signed this proxy's certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        self.ca.ca_pem()
    }

    /// Stops accepting and cuts every connection (no TLS close_notify, no WebSocket close).
    pub fn kill(&self) {
        self.task.abort();
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pipe(acceptor: TlsAcceptor, tcp: TcpStream, upstream: SocketAddr) {
    let Ok(mut tls) = acceptor.accept(tcp).await else {
        // A client that refused the certificate, say.
        return;
    };
    let Ok(mut up) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = up.set_nodelay(true);
    let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
}
