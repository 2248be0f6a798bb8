//! Minting tokens: `switchboard token`, tests and benchmarks sign with an HMAC secret or a PEM
//! private key (RSA, EC P-256/P-384, Ed25519), with an optional `kid` in the header.
//!
//! Kept apart from verification: a gateway never signs, and nothing here is needed to verify.
//! [`SigningKey::public_jwk`] gives the JWKS entry that verifies what a key signs, so a test
//! can stand in for an identity provider.

use std::fmt;
use std::time::Duration;

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::pkcs8::DecodePrivateKey;

use super::claims::{AuthError, Claims};
use super::keys::{KeyKind, pem_label};
use crate::clock::now_secs;

/// A key tokens are signed with: its `alg`, and the `kid` its tokens name, if any.
#[derive(Clone)]
pub struct SigningKey {
    alg: Algorithm,
    kid: Option<String>,
    key: EncodingKey,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// An HMAC secret for `alg` (HS256, HS384 or HS512).
    pub fn secret(alg: Algorithm, secret: &[u8]) -> Result<Self, AuthError> {
        if !KeyKind::Hmac.algorithms().contains(&alg) {
            return Err(AuthError::Settings(format!(
                "a secret signs HS256, HS384 or HS512, not {alg:?}"
            )));
        }
        if secret.is_empty() {
            return Err(AuthError::Settings("the secret is empty".into()));
        }
        Ok(SigningKey {
            alg,
            kid: None,
            key: EncodingKey::from_secret(secret),
        })
    }

    /// A PEM private key: RSA (PKCS#1 or PKCS#8), EC P-256 or P-384 (PKCS#8), Ed25519
    /// (PKCS#8). `alg` must fit the key; `None` takes the key's usual one (RS256, ES256, ES384,
    /// EdDSA).
    pub fn from_pem(pem: &[u8], alg: Option<Algorithm>) -> Result<Self, AuthError> {
        let bad = AuthError::Settings;
        let label = pem_label(pem).ok_or_else(|| bad("not a PEM file".into()))?;
        let (kind, key) = match label {
            "RSA PRIVATE KEY" | "PRIVATE KEY" => private_key(pem).map_err(bad)?,
            "EC PRIVATE KEY" => {
                return Err(bad("an EC key in SEC1 form: convert it to PKCS#8 \
                     (openssl pkcs8 -topk8 -nocrypt -in KEY)"
                    .into()));
            }
            "ENCRYPTED PRIVATE KEY" => {
                return Err(bad("an encrypted private key: decrypt it first".into()));
            }
            l => return Err(bad(format!("a PEM {l}, not a private key"))),
        };
        let alg = alg.unwrap_or(kind.algorithms()[0]);
        if !kind.algorithms().contains(&alg) {
            return Err(bad(format!("{alg:?} does not fit an {}", kind.name())));
        }
        Ok(SigningKey {
            alg,
            kid: None,
            key,
        })
    }

    /// The same key, its tokens naming `kid` in their header.
    pub fn with_kid(mut self, kid: impl Into<String>) -> Self {
        self.kid = Some(kid.into());
        self
    }

    pub fn alg(&self) -> Algorithm {
        self.alg
    }

    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// The JWKS entry that verifies this key's tokens: its public part, `alg`, `use: sig` and
    /// `kid` (for an HMAC secret, the secret itself as `kty: oct`; a gateway reads no secret
    /// from a JWKS).
    pub fn public_jwk(&self) -> Result<serde_json::Value, AuthError> {
        let jwk = Jwk::from_encoding_key(&self.key, self.alg)
            .map_err(|e| AuthError::Settings(format!("no JWK for this key: {e}")))?;
        let mut v =
            serde_json::to_value(jwk).map_err(|e| AuthError::Settings(format!("a JWK: {e}")))?;
        v["use"] = "sig".into();
        if let Some(kid) = &self.kid {
            v["kid"] = kid.as_str().into();
        }
        Ok(v)
    }
}

/// A PKCS#1 or PKCS#8 private key and its kind.
fn private_key(pem: &[u8]) -> Result<(KeyKind, EncodingKey), String> {
    if let Ok(key) = EncodingKey::from_rsa_pem(pem) {
        return Ok((KeyKind::Rsa, key));
    }
    let text = std::str::from_utf8(pem).map_err(|_| "not a PEM file".to_owned())?;
    let ec = |kind| {
        EncodingKey::from_ec_pem(pem)
            .map(|k| (kind, k))
            .map_err(|e| format!("a malformed EC key: {e}"))
    };
    if p256::SecretKey::from_pkcs8_pem(text).is_ok() {
        return ec(KeyKind::P256);
    }
    if p384::SecretKey::from_pkcs8_pem(text).is_ok() {
        return ec(KeyKind::P384);
    }
    if let Ok(key) = EncodingKey::from_ed_pem(pem) {
        return Ok((KeyKind::Ed25519, key));
    }
    Err("not a private key this reads (RSA, EC P-256 or P-384, or Ed25519)".into())
}

/// Signs `claims` with `key`, naming its `kid` in the header.
pub fn mint_with(key: &SigningKey, claims: &Claims) -> Result<String, AuthError> {
    if claims.sub.is_empty() {
        return Err(AuthError::EmptySubject);
    }
    let mut header = Header::new(key.alg);
    header.kid = key.kid.clone();
    jsonwebtoken::encode(&header, claims, &key.key)
        .map_err(|e| AuthError::Settings(format!("signing failed: {e}")))
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
    mint_with(&SigningKey::secret(Algorithm::HS256, secret)?, claims)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::keys::tests::fixture;

    fn pem(name: &str) -> Vec<u8> {
        std::fs::read(fixture(name)).unwrap()
    }

    #[test]
    fn private_keys_take_their_usual_alg_or_one_that_fits() {
        for (file, alg) in [
            ("rsa1.key", Algorithm::RS256), // PKCS#8
            ("rsa2.key", Algorithm::RS256), // PKCS#1
            ("ec256.key", Algorithm::ES256),
            ("ec384.key", Algorithm::ES384),
            ("ed25519.key", Algorithm::EdDSA),
        ] {
            let k =
                SigningKey::from_pem(&pem(file), None).unwrap_or_else(|e| panic!("{file}: {e}"));
            assert_eq!(k.alg(), alg, "{file}");
        }
        let ps = SigningKey::from_pem(&pem("rsa1.key"), Some(Algorithm::PS512)).unwrap();
        assert_eq!(ps.alg(), Algorithm::PS512);
        let err = SigningKey::from_pem(&pem("ec256.key"), Some(Algorithm::ES384)).unwrap_err();
        assert!(err.to_string().contains("does not fit"), "{err}");
        let err = SigningKey::from_pem(&pem("rsa1.pub"), None).unwrap_err();
        assert!(err.to_string().contains("not a private key"), "{err}");
        assert!(SigningKey::secret(Algorithm::RS256, b"s").is_err());
        assert!(SigningKey::secret(Algorithm::HS256, b"").is_err());
    }

    #[test]
    fn the_header_names_alg_and_kid() {
        let key = SigningKey::secret(Algorithm::HS384, b"s")
            .unwrap()
            .with_kid("k9");
        let token = mint_with(&key, &Claims::subject("alice")).unwrap();
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(
            (header.alg, header.kid.as_deref()),
            (Algorithm::HS384, Some("k9"))
        );
        assert!(matches!(
            mint_with(&key, &Claims::subject("")),
            Err(AuthError::EmptySubject)
        ));
        assert!(!format!("{key:?}").contains("\"s\""));
    }
}
