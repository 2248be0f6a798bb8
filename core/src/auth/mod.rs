//! Authentication and what a token grants.
//!
//! - `verify.rs`: the [`Verifier`] and its [`KeySettings`]: a JWT's signature (HMAC secrets
//!   chosen by `kid`, PEM public keys, or a JWKS), `alg` bound to the key's type, `exp`/`nbf`
//!   with the leeway, `aud` and `iss` when configured.
//! - `keys.rs`: the keys verification uses, read and checked: secrets, PEM public key files,
//!   JWKS entries (with the kind of each, which fixes the `alg`s it may verify).
//! - `jwks.rs`: a JWKS fetched over HTTP(S), cached, refreshed in the background and on an
//!   unknown `kid` (rate-limited); an outage keeps the last good keys.
//! - `mint.rs`: minting, for `switchboard token` and tests: HMAC secrets or PEM private keys,
//!   with a `kid`.
//! - `claims.rs`: what a token says ([`Claims`]) and why one is refused ([`AuthError`]).
//! - `grants.rs`: the permissions a token carries (`topics`, `tools`, a subscription token's
//!   `topic`), as patterns the authorization rules can check.
//!
//! A verified token becomes an [`Identity`]: who the connection is, until when, and what its
//! token grants on top of the node's rules (`crate::access`).

mod claims;
mod grants;
mod jwks;
mod keys;
mod mint;
mod verify;

use std::sync::Arc;

pub use self::claims::{ANONYMOUS, Audience, AuthError, Claims, EXP_LEEWAY_SECS, MAX_SUBJECT_LEN};

pub use self::grants::{
    Grants, MAX_GRANTS, MAX_PATTERN_LEN, Op, Ops, check_tool_pattern, check_topic_pattern,
};
pub use self::jwks::{MAX_JWKS_BYTES, MAX_JWKS_KEYS};
pub use self::keys::{MIN_RSA_BITS, split_kid};
pub use self::mint::{SigningKey, mint, mint_claims, mint_with};
pub use self::verify::{
    DEFAULT_JWKS_MIN_REFRESH, DEFAULT_JWKS_REFRESH, DEFAULT_JWKS_TIMEOUT, KeySettings, Verifier,
};
/// The signature algorithms (`--alg` of `switchboard token`, [`SigningKey`]).
pub use jsonwebtoken::Algorithm;

/// Who is on the other end of a connection, and what its token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub subject: Arc<str>,
    /// Unix seconds after which the token is no longer valid.
    pub expires_at: Option<u64>,
    /// What the token grants on top of the node's rules.
    pub grants: Arc<Grants>,
}

impl Identity {
    /// The identity of a client on a gateway that allows anonymous connections: no grants.
    pub fn anonymous() -> Self {
        Identity {
            subject: Arc::from(ANONYMOUS),
            expires_at: None,
            grants: Arc::new(Grants::default()),
        }
    }

    /// The identity a verified connection token stands for. A subscription token (one with a
    /// `topic` claim) opens no connection: minted to open one topic for a while, it must not
    /// stand in for the user's own token.
    pub fn from_claims(claims: &Claims) -> Result<Self, AuthError> {
        if claims.sub.is_empty() {
            return Err(AuthError::EmptySubject);
        }
        if claims.topic.is_some() {
            return Err(AuthError::Invalid(
                "a subscription token (with a topic claim) cannot open a connection".into(),
            ));
        }
        if claims.sub.len() > MAX_SUBJECT_LEN {
            return Err(AuthError::Invalid(format!(
                "subject longer than {MAX_SUBJECT_LEN} bytes"
            )));
        }
        Ok(Identity {
            subject: Arc::from(claims.sub.as_str()),
            expires_at: claims.exp,
            grants: Arc::new(Grants::from_claims(claims, false)?),
        })
    }
}
