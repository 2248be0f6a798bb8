//! A JWKS (`--jwt-jwks-url`): an identity provider's public keys, fetched over HTTP(S), cached,
//! and refreshed in the background and on demand.
//!
//! Lives apart from the verifier because it is the only part of token verification that does
//! I/O and owns a task. What it promises:
//! - The set is fetched when the verifier starts; a failure then is logged and retried (with
//!   backoff from `jwks_min_refresh` up to `jwks_refresh`), and tokens wait for keys meanwhile.
//! - It is fetched again every `jwks_refresh`, and at once when a token names a `kid` no key
//!   has ([`Jwks::refresh_for_unknown_key`]), but at most once per `jwks_min_refresh` however
//!   many such tokens arrive: a flood of made-up kids costs the provider one request per
//!   interval. The verify call that asked waits for that fetch (at most `jwks_timeout`).
//! - A failed fetch (refused connection, timeout, a status other than 200, a body over
//!   [`MAX_JWKS_BYTES`], bad JSON, a set with no usable key) keeps the last good keys.
//! - Entries this node cannot use (another `kty`, `crv` or `alg`, `use: enc`, symmetric keys)
//!   are skipped with a debug log, never fatal.
//! - The background task ends when the last [`Verifier`](super::Verifier) clone is dropped.
//!
//! HTTPS goes through rustls (ring) trusting both the webpki roots and the system's.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper::{Request, StatusCode, Uri, header};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use tokio::sync::{Notify, oneshot, watch};
use tokio::time::Instant;

use super::claims::AuthError;
use super::keys::{VerifyingKey, from_jwk};

/// Largest JWKS body read (real sets are a few KiB).
pub const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// Keys read from one set, at most (the rest are skipped with a warning).
pub const MAX_JWKS_KEYS: usize = 64;

type HttpClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// How a JWKS is fetched and refreshed (from the `KeySettings`).
#[derive(Debug, Clone)]
pub(crate) struct JwksSettings {
    pub(crate) url: String,
    pub(crate) refresh: Duration,
    pub(crate) min_refresh: Duration,
    pub(crate) timeout: Duration,
}

/// The cached set, and the handle that keeps its refresh task running: dropping it (with the
/// last verifier) stops the task.
pub(crate) struct Jwks {
    shared: Arc<Shared>,
    _stop: oneshot::Sender<()>,
}

struct Shared {
    url: Uri,
    client: HttpClient,
    settings: JwksSettings,
    keys: RwLock<Arc<[VerifyingKey]>>,
    /// When the latest fetch started (the rate limit of on-demand fetches).
    last_fetch: Mutex<Option<Instant>>,
    /// Counts refresh requests handled, fetched or not: a verify call waiting on a refresh
    /// waits for this to move.
    handled: watch::Sender<u64>,
    /// Asks the task for a fetch now.
    wake: Notify,
    fetches: AtomicU64,
}

impl Jwks {
    /// Fetches the set once (a failure is logged, not returned) and starts refreshing it.
    /// Errs only on a URL that is not `http://` or `https://`, or a TLS setup that fails.
    pub(crate) async fn start(settings: JwksSettings) -> Result<Jwks, AuthError> {
        let url: Uri = settings.url.parse().map_err(|e| {
            AuthError::Settings(format!("--jwt-jwks-url {}: not a URL: {e}", settings.url))
        })?;
        let https = match url.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => {
                return Err(AuthError::Settings(format!(
                    "--jwt-jwks-url {} must start with https:// (or http:// on a trusted network)",
                    settings.url
                )));
            }
        };
        let Some(host) = url.host() else {
            return Err(AuthError::Settings(format!(
                "--jwt-jwks-url {} names no host",
                settings.url
            )));
        };
        if !https && !is_loopback(host) {
            tracing::warn!(
                url = %settings.url,
                "the JWKS is fetched over plain http: whoever can change the answer can mint \
                 tokens; use https"
            );
        }
        let client = http_client(https, settings.timeout)?;
        let shared = Arc::new(Shared {
            url,
            client,
            settings,
            keys: RwLock::new(Arc::from(Vec::new())),
            last_fetch: Mutex::new(None),
            handled: watch::Sender::new(0),
            wake: Notify::new(),
            fetches: AtomicU64::new(0),
        });
        let loaded = shared.fetch_and_store().await;
        if !loaded {
            tracing::warn!(
                url = %shared.settings.url,
                "no keys from the JWKS yet: tokens it signs are refused until a fetch succeeds"
            );
        }
        let (stop, stopped) = oneshot::channel();
        tokio::spawn(refresh_task(shared.clone(), stopped, loaded));
        Ok(Jwks {
            shared,
            _stop: stop,
        })
    }

    /// The keys of the last good fetch (none before the first).
    pub(crate) fn keys(&self) -> Arc<[VerifyingKey]> {
        self.shared
            .keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// A token names a key this node does not have: fetch the set now, unless a fetch started
    /// less than `min_refresh` ago, and wait for it (at most `timeout`). True when a fetch was
    /// made or finished meanwhile (the caller looks again), false when rate-limited or too slow.
    pub(crate) async fn refresh_for_unknown_key(&self) -> bool {
        let shared = &self.shared;
        if !shared.may_fetch() {
            return false;
        }
        let mut handled = shared.handled.subscribe();
        shared.wake.notify_one();
        matches!(
            tokio::time::timeout(shared.settings.timeout, handled.changed()).await,
            Ok(Ok(()))
        )
    }

    pub(crate) fn url(&self) -> &str {
        &self.shared.settings.url
    }

    /// Fetches made so far (each attempt, failed or not).
    #[cfg(test)]
    pub(crate) fn fetches(&self) -> u64 {
        self.shared.fetches.load(Ordering::Relaxed)
    }

    /// Whether the refresh task still holds the cache (it drops it when it ends).
    #[cfg(test)]
    pub(crate) fn alive_probe(&self) -> impl Fn() -> bool + use<> {
        let weak = Arc::downgrade(&self.shared);
        move || weak.strong_count() > 0
    }
}

/// Refreshes every `refresh` after a good fetch, sooner after a failed one (from `min_refresh`,
/// doubling, up to `refresh`), and when woken by a verify call (rate-limited). Ends when the
/// [`Jwks`] is dropped.
async fn refresh_task(shared: Arc<Shared>, mut stop: oneshot::Receiver<()>, loaded: bool) {
    let mut failures: u32 = u32::from(!loaded);
    let mut next = after(shared.retry_after(failures));
    loop {
        let asked = tokio::select! {
            _ = &mut stop => return,
            () = tokio::time::sleep_until(next) => false,
            () = shared.wake.notified() => true,
        };
        if asked && !shared.may_fetch() {
            // A fetch started a moment ago: the waiter looks at what it brought.
            shared.handled.send_modify(|n| *n += 1);
            continue;
        }
        let ok = tokio::select! {
            _ = &mut stop => return,
            ok = shared.fetch_and_store() => ok,
        };
        failures = if ok { 0 } else { failures.saturating_add(1) };
        next = after(shared.retry_after(failures));
    }
}

/// The instant `d` from now (a year from now for a `d` too large to add).
fn after(d: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(d)
        .unwrap_or_else(|| now + Duration::from_secs(365 * 24 * 3600))
}

impl Shared {
    /// Whether an on-demand fetch may start now.
    fn may_fetch(&self) -> bool {
        let last = *self
            .last_fetch
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        last.is_none_or(|t| t.elapsed() >= self.settings.min_refresh)
    }

    /// The wait before the next scheduled fetch after `failures` failed ones in a row.
    fn retry_after(&self, failures: u32) -> Duration {
        let s = &self.settings;
        if failures == 0 {
            return s.refresh;
        }
        // At least 100 ms however small the setting: a failing set is never fetched in a loop.
        let base = s.min_refresh.max(Duration::from_millis(100));
        base.saturating_mul(1 << failures.saturating_sub(1).min(16))
            .min(s.refresh.max(base))
    }

    /// Fetches the set and, if it holds a usable key, makes it the current one. Wakes the
    /// verify calls waiting on a refresh either way.
    async fn fetch_and_store(&self) -> bool {
        *self
            .last_fetch
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let url = &self.settings.url;
        let ok = match self.fetch().await {
            Ok(keys) if keys.is_empty() => {
                tracing::warn!(%url, "the JWKS holds no usable key; keeping the last keys");
                false
            }
            Ok(keys) => {
                tracing::debug!(%url, keys = keys.len(), "JWKS fetched");
                *self.keys.write().unwrap_or_else(PoisonError::into_inner) = Arc::from(keys);
                true
            }
            Err(error) => {
                tracing::warn!(%url, %error, "fetching the JWKS failed; keeping the last keys");
                false
            }
        };
        self.handled.send_modify(|n| *n += 1);
        ok
    }

    async fn fetch(&self) -> Result<Vec<VerifyingKey>, String> {
        let request = Request::get(self.url.clone())
            .header(header::ACCEPT, "application/json, application/jwk-set+json")
            .header(
                header::USER_AGENT,
                concat!("switchboard/", env!("CARGO_PKG_VERSION")),
            )
            .body(Empty::new())
            .map_err(|e| format!("cannot build the request: {e}"))?;
        let timeout = self.settings.timeout;
        let body = tokio::time::timeout(timeout, async {
            let response = self.client.request(request).await.map_err(|e| chain(&e))?;
            let status = response.status();
            if status != StatusCode::OK {
                return Err(format!("answered {status}"));
            }
            let declared = response
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if declared.is_some_and(|n| n > MAX_JWKS_BYTES as u64) {
                return Err(format!("the body is larger than {MAX_JWKS_BYTES} bytes"));
            }
            Limited::new(response.into_body(), MAX_JWKS_BYTES)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .map_err(|e| format!("reading the body: {e}"))
        })
        .await
        .map_err(|_| format!("no answer within {}", humantime::format_duration(timeout)))??;
        parse_set(&body, &self.settings.url)
    }
}

/// The usable keys of a JWKS body (`{"keys": [...]}`); entries that cannot be used are skipped.
pub(crate) fn parse_set(body: &[u8], url: &str) -> Result<Vec<VerifyingKey>, String> {
    #[derive(Deserialize)]
    struct Set {
        keys: Vec<serde_json::Value>,
    }
    let set: Set = serde_json::from_slice(body).map_err(|e| format!("not a JWKS: {e}"))?;
    if set.keys.len() > MAX_JWKS_KEYS {
        tracing::warn!(
            %url,
            keys = set.keys.len(),
            "the JWKS holds more than {MAX_JWKS_KEYS} keys; the rest are skipped"
        );
    }
    let source = format!("the JWKS at {url}");
    let mut keys = Vec::new();
    for (index, entry) in set.keys.iter().take(MAX_JWKS_KEYS).enumerate() {
        match from_jwk(entry, &source) {
            Ok(key) => keys.push(key),
            Err(why) => tracing::debug!(
                %url,
                index,
                kid = entry.get("kid").and_then(|k| k.as_str()).unwrap_or(""),
                "JWKS key skipped: {why}"
            ),
        }
    }
    Ok(keys)
}

fn http_client(https: bool, timeout: Duration) -> Result<HttpClient, AuthError> {
    let mut roots = rustls::RootCertStore::empty();
    if https {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let native = rustls_native_certs::load_native_certs();
        for error in &native.errors {
            tracing::debug!(%error, "a system root certificate could not be read");
        }
        let (added, ignored) = roots.add_parsable_certificates(native.certs);
        tracing::debug!(added, ignored, "system root certificates for the JWKS");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| AuthError::Settings(format!("TLS for --jwt-jwks-url: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(timeout));
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    // Fetches are minutes apart: no connection is kept between them.
    Ok(Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build(connector))
}

fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// An error with its sources (`client error (Connect): tcp connect error: Connection refused`).
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
pub(crate) mod tests {
    //! A tiny JWKS server on loopback: it answers what the test sets, and counts requests.

    use std::net::SocketAddr;
    use std::sync::atomic::AtomicUsize;

    use serde_json::{Value, json};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// What the server answers.
    #[derive(Clone)]
    pub(crate) enum Answer {
        Json(Value),
        Status(u16),
        Raw(String),
    }

    pub(crate) struct JwksServer {
        pub(crate) addr: SocketAddr,
        answer: Arc<Mutex<Answer>>,
        hits: Arc<AtomicUsize>,
        task: tokio::task::JoinHandle<()>,
    }

    impl JwksServer {
        pub(crate) async fn start(keys: Vec<Value>) -> JwksServer {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let answer = Arc::new(Mutex::new(Answer::Json(json!({ "keys": keys }))));
            let hits = Arc::new(AtomicUsize::new(0));
            let (a, h) = (answer.clone(), hits.clone());
            let task = tokio::spawn(async move {
                while let Ok((mut s, _)) = listener.accept().await {
                    let (a, h) = (a.clone(), h.clone());
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 4096];
                        let mut n = 0;
                        while !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                            match s.read(&mut buf[n..]).await {
                                Ok(0) | Err(_) => return,
                                Ok(m) => n += m,
                            }
                        }
                        h.fetch_add(1, Ordering::SeqCst);
                        let answer = a.lock().unwrap().clone();
                        let (status, body) = match answer {
                            Answer::Json(v) => (200, v.to_string()),
                            Answer::Status(code) => (code, "{}".to_owned()),
                            Answer::Raw(text) => (200, text),
                        };
                        let reply = format!(
                            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n\
                             content-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = s.write_all(reply.as_bytes()).await;
                        let _ = s.shutdown().await;
                    });
                }
            });
            JwksServer {
                addr,
                answer,
                hits,
                task,
            }
        }

        pub(crate) fn url(&self) -> String {
            format!("http://{}/jwks", self.addr)
        }

        pub(crate) fn serve(&self, answer: Answer) {
            *self.answer.lock().unwrap() = answer;
        }

        pub(crate) fn serve_keys(&self, keys: Vec<Value>) {
            self.serve(Answer::Json(json!({ "keys": keys })));
        }

        pub(crate) fn hits(&self) -> usize {
            self.hits.load(Ordering::SeqCst)
        }
    }

    impl Drop for JwksServer {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    fn settings(url: String) -> JwksSettings {
        JwksSettings {
            url,
            refresh: Duration::from_secs(3600),
            min_refresh: Duration::from_secs(3600),
            timeout: Duration::from_secs(5),
        }
    }

    fn ed_jwk(kid: &str) -> Value {
        let pem = std::fs::read(crate::auth::keys::tests::fixture("ed25519.key")).unwrap();
        crate::auth::SigningKey::from_pem(&pem, None)
            .unwrap()
            .with_kid(kid)
            .public_jwk()
            .unwrap()
    }

    #[test]
    fn a_set_keeps_what_it_can_use() {
        let body = json!({"keys": [
            ed_jwk("a"),
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
            {"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA"},
            {"kty": "RSA", "use": "enc", "n": "AQAB", "e": "AQAB"},
            "not even an object",
        ]})
        .to_string();
        let keys = parse_set(body.as_bytes(), "u").unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].kid.as_deref(), Some("a"));
        assert!(parse_set(b"{\"nokeys\": 1}", "u").is_err());
        assert!(parse_set(b"<html>", "u").is_err());
    }

    #[tokio::test]
    async fn fetched_at_start_and_on_a_schedule() {
        let server = JwksServer::start(vec![ed_jwk("a")]).await;
        let jwks = Jwks::start(JwksSettings {
            refresh: Duration::from_millis(100),
            ..settings(server.url())
        })
        .await
        .unwrap();
        assert_eq!(jwks.keys().len(), 1);
        assert!(server.hits() >= 1);
        server.serve_keys(vec![ed_jwk("a"), ed_jwk("b")]);
        let deadline = Instant::now() + Duration::from_secs(10);
        while jwks.keys().len() != 2 {
            assert!(Instant::now() < deadline, "never refreshed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn a_failed_start_is_retried_and_an_outage_keeps_the_last_keys() {
        let server = JwksServer::start(vec![]).await;
        server.serve(Answer::Status(503));
        let jwks = Jwks::start(JwksSettings {
            refresh: Duration::from_millis(100),
            min_refresh: Duration::from_millis(50),
            ..settings(server.url())
        })
        .await
        .unwrap();
        assert!(jwks.keys().is_empty());
        server.serve_keys(vec![ed_jwk("a")]);
        let deadline = Instant::now() + Duration::from_secs(10);
        while jwks.keys().is_empty() {
            assert!(
                Instant::now() < deadline,
                "the failed start was never retried"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for outage in [
            Answer::Status(500),
            Answer::Raw("{not json".into()),
            Answer::Json(json!({"keys": []})),
            Answer::Raw("x".repeat(MAX_JWKS_BYTES + 1)),
        ] {
            server.serve(outage);
            let before = jwks.fetches();
            let deadline = Instant::now() + Duration::from_secs(10);
            while jwks.fetches() < before + 2 {
                assert!(Instant::now() < deadline, "not fetched again");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert_eq!(jwks.keys().len(), 1, "the last good keys are kept");
        }
    }

    #[tokio::test]
    async fn unknown_keys_refetch_at_most_once_per_interval() {
        let server = JwksServer::start(vec![ed_jwk("a")]).await;
        let jwks = Jwks::start(JwksSettings {
            // Long enough that a loaded machine cannot stall past it between two lines.
            min_refresh: Duration::from_millis(1500),
            ..settings(server.url())
        })
        .await
        .unwrap();
        assert_eq!(server.hits(), 1);
        // Right after a fetch: rate-limited, no request.
        assert!(!jwks.refresh_for_unknown_key().await);
        assert_eq!(server.hits(), 1);
        tokio::time::sleep(Duration::from_millis(1600)).await;
        // A flood at once: one request, every caller waits for it.
        server.serve_keys(vec![ed_jwk("a"), ed_jwk("b")]);
        let flood = (0..50).map(|_| jwks.refresh_for_unknown_key()).collect();
        let refreshed = join_all(flood).await;
        assert_eq!(server.hits(), 2);
        assert!(refreshed.iter().any(|r| *r));
        assert_eq!(jwks.keys().len(), 2);
        assert!(!jwks.refresh_for_unknown_key().await);
        assert_eq!(server.hits(), 2);
    }

    #[tokio::test]
    async fn a_dead_server_costs_one_bounded_wait() {
        // A port nobody listens on: connection refused, at once.
        let addr = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let jwks = Jwks::start(settings(format!("http://{addr}/jwks")))
            .await
            .unwrap();
        assert!(jwks.keys().is_empty());
        assert_eq!(jwks.fetches(), 1);
        // A server that accepts and never answers: the fetch gives up after the timeout.
        let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks", silent.local_addr().unwrap());
        let started = Instant::now();
        let jwks = Jwks::start(JwksSettings {
            timeout: Duration::from_millis(200),
            ..settings(url)
        })
        .await
        .unwrap();
        assert!(jwks.keys().is_empty());
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    #[tokio::test]
    async fn the_task_ends_with_the_last_handle() {
        let server = JwksServer::start(vec![ed_jwk("a")]).await;
        let jwks = Jwks::start(settings(server.url())).await.unwrap();
        let shared = Arc::downgrade(&jwks.shared);
        drop(jwks);
        let deadline = Instant::now() + Duration::from_secs(10);
        while shared.upgrade().is_some() {
            assert!(
                Instant::now() < deadline,
                "the refresh task outlived its handle"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn https_goes_through_rustls() {
        // A plain-HTTP server behind an https:// URL: the TLS handshake fails, as a failed
        // fetch (no panic, no crypto provider to install first).
        let server = JwksServer::start(vec![ed_jwk("a")]).await;
        let url = format!("https://{}/jwks", server.addr);
        let quick = |url| JwksSettings {
            timeout: Duration::from_millis(300),
            ..settings(url)
        };
        let jwks = Jwks::start(quick(url)).await.unwrap();
        assert!(jwks.keys().is_empty());
        assert_eq!(jwks.fetches(), 1);
        let tls = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "https://localhost:{}/jwks",
            tls.local_addr().unwrap().port()
        );
        let error = Jwks::start(quick(url))
            .await
            .unwrap()
            .shared
            .fetch()
            .await
            .err()
            .unwrap();
        assert!(!error.is_empty());
    }

    #[tokio::test]
    async fn bad_urls_are_refused() {
        for url in ["ftp://x/jwks", "not a url", "/jwks"] {
            let err = Jwks::start(settings(url.into())).await.err().unwrap();
            assert!(err.to_string().contains("--jwt-jwks-url"), "{err}");
        }
    }

    /// Polls every future on this task until all are done (core has no futures crate).
    async fn join_all<F: std::future::Future<Output = bool>>(futures: Vec<F>) -> Vec<bool> {
        let mut pinned: Vec<_> = futures.into_iter().map(Box::pin).collect();
        let mut done: Vec<Option<bool>> = vec![None; pinned.len()];
        std::future::poll_fn(|cx| {
            let mut pending = false;
            for (f, d) in pinned.iter_mut().zip(done.iter_mut()) {
                if d.is_none() {
                    match f.as_mut().poll(cx) {
                        std::task::Poll::Ready(v) => *d = Some(v),
                        std::task::Poll::Pending => pending = true,
                    }
                }
            }
            if pending {
                std::task::Poll::Pending
            } else {
                std::task::Poll::Ready(())
            }
        })
        .await;
        done.into_iter().map(|d| d.unwrap_or(false)).collect()
    }
}
