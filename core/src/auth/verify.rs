//! Verifying tokens, and minting them (`switchboard token`, tests).
//!
//! (Being rewritten: HMAC secrets by `kid`, PEM public keys, JWKS; see `mod.rs`.)

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};

use super::{AuthError, Claims, EXP_LEEWAY_SECS};
use crate::clock::now_secs;

/// Where the keys come from and what a token must say (the gateway's `--jwt-*` flags).
#[derive(Debug, Clone, Default)]
pub struct KeySettings {
    /// HMAC secrets: `SECRET`, or `kid:<KID>:<SECRET>` for a token whose header names `kid`.
    pub secrets: Vec<String>,
}

/// Verifies tokens against the configured keys. Cheap to clone.
#[derive(Clone)]
pub struct Verifier {
    inner: Arc<(DecodingKey, Validation)>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Verifier")
    }
}

impl Verifier {
    /// A verifier for the settings (loads files, starts fetching a JWKS).
    pub async fn start(settings: &KeySettings) -> Result<Self, AuthError> {
        let secret = settings
            .secrets
            .first()
            .ok_or_else(|| AuthError::NoKey("no key configured".into()))?;
        Ok(Self::hs256(secret.as_bytes()))
    }

    pub fn hs256(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = EXP_LEEWAY_SECS;
        validation.validate_exp = true;
        validation.set_required_spec_claims(&["sub"]);
        Verifier {
            inner: Arc::new((DecodingKey::from_secret(secret), validation)),
        }
    }

    /// The token's claims, if it verifies.
    pub async fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let (key, validation) = &*self.inner;
        let data = jsonwebtoken::decode::<Claims>(token, key, validation).map_err(|e| {
            match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
                _ => AuthError::Invalid(e.to_string()),
            }
        })?;
        let claims = data.claims;
        if claims.sub.is_empty() {
            return Err(AuthError::EmptySubject);
        }
        if let Some(exp) = claims.exp
            && exp + EXP_LEEWAY_SECS < now_secs()
        {
            return Err(AuthError::Expired);
        }
        Ok(claims)
    }
}

/// Mints an HS256 token for `subject`, valid for `ttl` (no `exp` when `None`).
pub fn mint(secret: &[u8], subject: &str, ttl: Option<Duration>) -> Result<String, AuthError> {
    if subject.is_empty() {
        return Err(AuthError::EmptySubject);
    }
    let now = now_secs();
    let claims = Claims {
        exp: ttl.map(|t| now + t.as_secs()),
        iat: Some(now),
        ..Claims::subject(subject)
    };
    mint_claims(secret, &claims)
}

/// Mints an HS256 token with explicit claims.
pub fn mint_claims(secret: &[u8], claims: &Claims) -> Result<String, AuthError> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .map_err(|e| AuthError::Invalid(e.to_string()))
}
