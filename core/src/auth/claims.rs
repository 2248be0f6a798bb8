//! What a token says and why one is refused: the [`Claims`] Switchboard reads, the
//! [`AuthError`] of every refusal, and the bounds on them. The leaf of `auth`: every other file
//! of it builds on this one.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

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
    /// Tool registration grants: patterns of the tool names the holder may offer to others
    /// from its socket (`tools/register`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub register: Option<Vec<String>>,
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
