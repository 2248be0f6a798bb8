//! Tokens for a [`Session`](crate::Session): a [`TokenProvider`] (an async function the session
//! asks for a token), reading a JWT's `exp` without verifying it, and when to refresh.
//!
//! The session asks the provider before every (re)connect, unless the token it has is not yet
//! within its refresh margin; the margin is `min(30 s, a third of the lifetime left when the
//! token was obtained)`, so a 9-second token is refreshed about 3 s before its `exp`, and a
//! one-hour token 30 s before. Only the payload's `exp` is read (base64url, no signature check:
//! the gateway verifies tokens, the client only schedules).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The error a token provider may fail with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

type ProviderFn =
    dyn Fn() -> Pin<Box<dyn Future<Output = Result<String, BoxError>> + Send>> + Send + Sync;

/// An async function returning a token (a JWT), asked before every (re)connect whose cached
/// token is near its `exp`, before the token's `exp` (for `refresh`), and after a close with
/// 1008. Cheap to clone.
#[derive(Clone)]
pub struct TokenProvider(Arc<ProviderFn>);

impl std::fmt::Debug for TokenProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenProvider(..)")
    }
}

impl TokenProvider {
    /// A provider from an async function or closure:
    /// `TokenProvider::from_fn(|| async { Ok(fetch_token().await?) })`.
    pub fn from_fn<F, Fut>(f: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, BoxError>> + Send + 'static,
    {
        TokenProvider(Arc::new(move || Box::pin(f())))
    }

    /// Asks for a token.
    pub async fn token(&self) -> Result<String, BoxError> {
        (self.0)().await
    }
}

/// A JWT's `exp` (Unix seconds), read from its payload without verifying anything; `None`
/// for a token that is not a JWT or has no numeric `exp`.
pub(crate) fn jwt_exp(token: &str) -> Option<u64> {
    let payload = token.split('.').nth(1)?;
    // Padding is not part of a JWT, but tolerate it.
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let exp = claims.get("exp")?;
    exp.as_u64()
        .or_else(|| exp.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
}

/// Now, in milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// How long after `now_ms` a token expiring at `exp` (Unix seconds), obtained at `now_ms`,
/// should be refreshed: at `exp - margin`, margin = `min(30 s, (exp - now) / 3)`. Zero for a
/// token already expired.
pub(crate) fn refresh_after(exp: u64, now_ms: u64) -> Duration {
    let left = exp.saturating_mul(1000).saturating_sub(now_ms);
    let margin = (left / 3).min(30_000);
    Duration::from_millis(left - margin)
}

/// The token a session uses, with when it wants refreshing (Unix ms; `None`: never).
#[derive(Debug, Clone)]
pub(crate) struct Cached {
    pub(crate) token: String,
    pub(crate) refresh_at_ms: Option<u64>,
}

impl Cached {
    pub(crate) fn new(token: String) -> Cached {
        let now = now_ms();
        let refresh_at_ms =
            jwt_exp(&token).map(|exp| now + refresh_after(exp, now).as_millis() as u64);
        Cached {
            token,
            refresh_at_ms,
        }
    }

    /// Whether the token is still good to connect with (not within its refresh margin).
    pub(crate) fn fresh(&self) -> bool {
        self.refresh_at_ms.is_none_or(|at| now_ms() < at)
    }
}

/// A session's tokens: a fixed one, or a provider and the last token it gave.
#[derive(Debug)]
pub(crate) struct Tokens {
    fixed: Option<String>,
    provider: Option<TokenProvider>,
    /// Held while the provider is asked, so that it is asked once at a time.
    cached: tokio::sync::Mutex<Option<Cached>>,
    /// Bumped whenever the provider gave a token.
    epoch: tokio::sync::watch::Sender<u64>,
    /// How long the provider may take.
    timeout: Duration,
}

impl Tokens {
    pub(crate) fn new(
        fixed: Option<String>,
        provider: Option<TokenProvider>,
        timeout: Duration,
    ) -> Tokens {
        Tokens {
            fixed,
            provider,
            cached: tokio::sync::Mutex::new(None),
            epoch: tokio::sync::watch::channel(0).0,
            timeout,
        }
    }

    pub(crate) fn has_provider(&self) -> bool {
        self.provider.is_some()
    }

    /// The token to say `hello` with: the fixed one; or the provider's last token while it is
    /// not within its refresh margin, else a new one from the provider.
    pub(crate) async fn for_connect(&self) -> Result<Option<String>, crate::ClientError> {
        let Some(provider) = &self.provider else {
            return Ok(self.fixed.clone());
        };
        let mut cached = self.cached.lock().await;
        if let Some(c) = cached.as_ref().filter(|c| c.fresh()) {
            return Ok(Some(c.token.clone()));
        }
        let token = self.ask(provider).await?;
        *cached = Some(Cached::new(token.clone()));
        Ok(Some(token))
    }

    /// A new token from the provider (cached for the next connect); `None` without one.
    pub(crate) async fn renew(&self) -> Option<Result<String, crate::ClientError>> {
        let provider = self.provider.as_ref()?;
        let mut cached = self.cached.lock().await;
        Some(self.ask(provider).await.inspect(|token| {
            *cached = Some(Cached::new(token.clone()));
        }))
    }

    /// Forgets the cached token: the next connect asks the provider (after a 1008).
    pub(crate) async fn invalidate(&self) {
        *self.cached.lock().await = None;
    }

    /// When the cached token wants refreshing (Unix ms), if it has an `exp`.
    pub(crate) async fn refresh_at_ms(&self) -> Option<u64> {
        self.cached.lock().await.as_ref()?.refresh_at_ms
    }

    /// Changes whenever the provider gave a token.
    pub(crate) fn epoch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.epoch.subscribe()
    }

    async fn ask(&self, provider: &TokenProvider) -> Result<String, crate::ClientError> {
        let token = match tokio::time::timeout(self.timeout, provider.token()).await {
            Ok(Ok(token)) => token,
            Ok(Err(e)) => return Err(crate::ClientError::TokenProvider(e.to_string())),
            Err(_) => {
                return Err(crate::ClientError::TokenProvider(format!(
                    "no token within {:?}",
                    self.timeout
                )));
            }
        };
        self.epoch.send_modify(|n| *n += 1);
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(payload: &str) -> String {
        format!(
            "eyJhbGciOiJIUzI1NiJ9.{}.c2ln",
            URL_SAFE_NO_PAD.encode(payload)
        )
    }

    #[test]
    fn exp_is_read_without_verifying() {
        assert_eq!(
            jwt_exp(&jwt(r#"{"sub":"a","exp":1700000000}"#)),
            Some(1_700_000_000)
        );
        assert_eq!(jwt_exp(&jwt(r#"{"sub":"a","exp":17.9}"#)), Some(17));
        assert_eq!(jwt_exp(&jwt(r#"{"sub":"a"}"#)), None);
        assert_eq!(jwt_exp(&jwt(r#"{"exp":"soon"}"#)), None);
        assert_eq!(jwt_exp("not-a-token"), None);
        assert_eq!(jwt_exp("a.!!!.c"), None);
        // Characters only base64url has ('-', '_') decode.
        let t = format!(
            "x.{}.y",
            URL_SAFE_NO_PAD.encode(r#"{"exp":5,"s":"~~~???>>>"}"#)
        );
        assert!(t.contains('-') || t.contains('_'), "{t}");
        assert_eq!(jwt_exp(&t), Some(5));
    }

    #[test]
    fn refresh_margin_is_a_third_of_the_lifetime_at_most_30_s() {
        let now = 1_000_000_000_000; // ms
        let exp = |secs: u64| now / 1000 + secs;
        // A 9-second token: refreshed 3 s before exp.
        assert_eq!(refresh_after(exp(9), now), Duration::from_secs(6));
        // An hour: 30 s before.
        assert_eq!(refresh_after(exp(3600), now), Duration::from_secs(3570));
        // 90 s: exactly 30 s either way.
        assert_eq!(refresh_after(exp(90), now), Duration::from_secs(60));
        // Expired: now.
        assert_eq!(refresh_after(exp(0), now), Duration::ZERO);
        assert_eq!(refresh_after(1, now), Duration::ZERO);
    }

    #[test]
    fn a_cached_token_is_fresh_until_its_margin() {
        let soon = now_ms() / 1000 + 3600;
        assert!(Cached::new(jwt(&format!(r#"{{"exp":{soon}}}"#))).fresh());
        let gone = now_ms() / 1000 - 10;
        assert!(!Cached::new(jwt(&format!(r#"{{"exp":{gone}}}"#))).fresh());
        assert!(Cached::new("opaque".into()).fresh(), "no exp: never stale");
    }

    #[tokio::test]
    async fn from_fn_asks_each_time() {
        let n = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let p = {
            let n = n.clone();
            TokenProvider::from_fn(move || {
                let n = n.clone();
                async move {
                    let k = n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    if k == 1 {
                        return Err("down".into());
                    }
                    Ok(format!("t{k}"))
                }
            })
        };
        assert_eq!(p.token().await.unwrap(), "t0");
        assert_eq!(p.token().await.unwrap_err().to_string(), "down");
        assert_eq!(p.clone().token().await.unwrap(), "t2");
    }
}
