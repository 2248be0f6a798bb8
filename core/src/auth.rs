//! Authentication: HS256 JWTs whose `sub` names the caller and whose `exp`, when present, is
//! honoured. The gateway verifies; `switchboard token` mints.
//!
//! jsonwebtoken is built with exactly one crypto provider (`rust_crypto`, set in the
//! workspace), which it needs to work at all.

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::clock::now_secs;

/// The identity of a client without a token, on a node that allows anonymous clients.
pub const ANONYMOUS: &str = "anonymous";

/// Seconds of clock skew tolerated on `exp`.
pub const EXP_LEEWAY_SECS: u64 = 5;

/// The claims Switchboard reads. Other claims are ignored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
}

/// Who is on the other end of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub subject: Arc<str>,
    /// Unix seconds after which the token is no longer valid.
    pub expires_at: Option<u64>,
}

impl Identity {
    /// The identity of a client on a gateway that allows anonymous connections.
    pub fn anonymous() -> Self {
        Identity {
            subject: Arc::from(ANONYMOUS),
            expires_at: None,
        }
    }
}

/// Why a token was refused. The gateway tells the client only "bad or expired token".
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("token expired")]
    Expired,
    #[error("token invalid: {0}")]
    Invalid(String),
    #[error("token has an empty subject")]
    EmptySubject,
}

/// Verifies HS256 tokens against one shared secret.
#[derive(Clone)]
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Verifier(HS256)")
    }
}

impl Verifier {
    pub fn hs256(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = EXP_LEEWAY_SECS;
        validation.validate_exp = true;
        validation.set_required_spec_claims(&["sub"]);
        Verifier {
            key: DecodingKey::from_secret(secret),
            validation,
        }
    }

    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(
            |e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
                _ => AuthError::Invalid(e.to_string()),
            },
        )?;
        let claims = data.claims;
        if claims.sub.is_empty() {
            return Err(AuthError::EmptySubject);
        }
        // jsonwebtoken checks `exp` with its leeway; check again without relying on that detail.
        if let Some(exp) = claims.exp
            && exp + EXP_LEEWAY_SECS < now_secs()
        {
            return Err(AuthError::Expired);
        }
        Ok(Identity {
            subject: Arc::from(claims.sub),
            expires_at: claims.exp,
        })
    }
}

/// Mints an HS256 token for `subject`, valid for `ttl` (no `exp` when `None`).
pub fn mint(secret: &[u8], subject: &str, ttl: Option<Duration>) -> Result<String, AuthError> {
    if subject.is_empty() {
        return Err(AuthError::EmptySubject);
    }
    let now = now_secs();
    let claims = Claims {
        sub: subject.to_owned(),
        exp: ttl.map(|t| now + t.as_secs()),
        iat: Some(now),
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .map_err(|e| AuthError::Invalid(e.to_string()))
}

/// Mints a token with explicit claims (tests use this for expired tokens).
pub fn mint_claims(secret: &[u8], claims: &Claims) -> Result<String, AuthError> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .map_err(|e| AuthError::Invalid(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"test-secret";

    #[test]
    fn round_trip() {
        let t = mint(SECRET, "alice", Some(Duration::from_secs(60))).unwrap();
        let id = Verifier::hs256(SECRET).verify(&t).unwrap();
        assert_eq!(&*id.subject, "alice");
        assert!(id.expires_at.unwrap() > now_secs());
    }

    #[test]
    fn no_exp_is_accepted() {
        let t = mint(SECRET, "bob", None).unwrap();
        let id = Verifier::hs256(SECRET).verify(&t).unwrap();
        assert_eq!(id.expires_at, None);
    }

    #[test]
    fn wrong_secret_and_garbage_are_refused() {
        let t = mint(SECRET, "alice", None).unwrap();
        assert!(matches!(
            Verifier::hs256(b"other").verify(&t),
            Err(AuthError::Invalid(_))
        ));
        assert!(Verifier::hs256(SECRET).verify("a.b.c").is_err());
    }

    #[test]
    fn expired_is_refused() {
        let claims = Claims {
            sub: "alice".into(),
            exp: Some(now_secs() - 3600),
            iat: None,
        };
        let t = mint_claims(SECRET, &claims).unwrap();
        assert!(matches!(
            Verifier::hs256(SECRET).verify(&t),
            Err(AuthError::Expired)
        ));
    }

    #[test]
    fn missing_sub_is_refused() {
        #[derive(Serialize)]
        struct NoSub {
            exp: u64,
        }
        let t = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &NoSub {
                exp: now_secs() + 60,
            },
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        assert!(Verifier::hs256(SECRET).verify(&t).is_err());
        let empty = mint_claims(
            SECRET,
            &Claims {
                sub: String::new(),
                exp: None,
                iat: None,
            },
        )
        .unwrap();
        assert!(matches!(
            Verifier::hs256(SECRET).verify(&empty),
            Err(AuthError::EmptySubject)
        ));
    }
}
