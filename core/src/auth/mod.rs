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
//! - `grants.rs`: the permissions a token carries (`topics`, `tools`, a subscription token's
//!   `topic`), as patterns the authorization rules can check.
//!
//! A verified token becomes an [`Identity`]: who the connection is, until when, and what its
//! token grants on top of the node's rules (`crate::access`).

mod grants;
mod jwks;
mod keys;
mod mint;
mod verify;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

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

/// The identity of a client without a token, on a node that allows anonymous clients.
pub const ANONYMOUS: &str = "anonymous";

/// Longest subject a token may name (it travels with every event its holder publishes).
pub const MAX_SUBJECT_LEN: usize = 256;

/// Seconds of clock skew tolerated on `exp` and `nbf`.
pub const EXP_LEEWAY_SECS: u64 = 5;

/// One audience or several (`aud` may be either in a JWT).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

/// The claims Switchboard reads. Other claims are ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<Audience>,
    /// Topic grants: pattern -> operations (`sub`, `pub`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topics: Option<BTreeMap<String, Vec<String>>>,
    /// Tool grants: patterns of tool names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<String>>,
    /// A subscription token's one topic (`subscribe {topic, token}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
}

impl Claims {
    /// Claims for `sub` and nothing else.
    pub fn subject(sub: &str) -> Self {
        Claims {
            sub: sub.to_owned(),
            ..Claims::default()
        }
    }
}

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

/// Why a token was refused. The gateway tells the client only "bad or expired token".
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("token expired")]
    Expired,
    #[error("token not valid yet")]
    NotYetValid,
    #[error("token invalid: {0}")]
    Invalid(String),
    #[error("token has an empty subject")]
    EmptySubject,
    #[error("token grants are malformed: {0}")]
    BadGrants(String),
    #[error("no key for this token: {0}")]
    NoKey(String),
    /// A key setting that cannot work (an unreadable key file, an empty secret, a bad JWKS
    /// URL); the message names the flag.
    #[error("{0}")]
    Settings(String),
}
