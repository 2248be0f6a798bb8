//! The keys tokens are verified with, read from where the settings say: HMAC secrets
//! (`--jwt-secret`), PEM public key files (`--jwt-public-key`) and the entries of a JWKS.
//!
//! Each becomes a [`VerifyingKey`] that knows its kind (HMAC, RSA, EC P-256, EC P-384,
//! Ed25519), and so the only `alg`s it may verify: binding `alg` to the key's type here is what
//! stops an RSA public key from being used as an HMAC secret. A key is checked as it is read
//! (an RSA modulus of at least [`MIN_RSA_BITS`], a point on its curve), so a bad file fails
//! start naming the file, and a bad JWKS entry is skipped, rather than every token failing
//! later. The specs `kid:<KID>:<VALUE>` bind a secret or a file to a `kid`.

use std::fmt;
use std::path::Path;

use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, KeyOperations, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind};
use rsa::pkcs1::DecodeRsaPublicKey;
use rsa::traits::PublicKeyParts;

/// Smallest RSA modulus accepted, in bits (RFC 7518 section 3.3).
pub const MIN_RSA_BITS: usize = 2048;

/// Largest PEM file read as a public key (an RSA-4096 public key is under 1 KiB).
const MAX_PEM_BYTES: u64 = 64 * 1024;

/// What a key is, and so which `alg`s it may verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyKind {
    Hmac,
    Rsa,
    P256,
    P384,
    Ed25519,
}

impl KeyKind {
    /// The algorithms a key of this kind verifies, and no other.
    pub(crate) fn algorithms(self) -> &'static [Algorithm] {
        use Algorithm::*;
        match self {
            KeyKind::Hmac => &[HS256, HS384, HS512],
            KeyKind::Rsa => &[RS256, RS384, RS512, PS256, PS384, PS512],
            KeyKind::P256 => &[ES256],
            KeyKind::P384 => &[ES384],
            KeyKind::Ed25519 => &[EdDSA],
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            KeyKind::Hmac => "HMAC secret",
            KeyKind::Rsa => "RSA key",
            KeyKind::P256 => "EC P-256 key",
            KeyKind::P384 => "EC P-384 key",
            KeyKind::Ed25519 => "Ed25519 key",
        }
    }
}

/// A key tokens are verified with.
#[derive(Clone)]
pub(crate) struct VerifyingKey {
    /// The `kid` a token names to pick this key; `None`: tried on tokens without a known kid.
    pub(crate) kid: Option<String>,
    pub(crate) kind: KeyKind,
    /// The one `alg` this key is for, when its JWKS entry names one.
    pub(crate) alg: Option<Algorithm>,
    pub(crate) key: DecodingKey,
    /// Where it came from, for logs (never the key itself).
    pub(crate) source: String,
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyingKey")
            .field("kid", &self.kid)
            .field("kind", &self.kind)
            .field("alg", &self.alg)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl VerifyingKey {
    /// Whether this key may verify a token signed with `alg`.
    pub(crate) fn fits(&self, alg: Algorithm) -> bool {
        self.kind.algorithms().contains(&alg) && self.alg.is_none_or(|a| a == alg)
    }
}

/// Why a configured key cannot be used (the message names the flag's value, never a secret).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct KeyError(pub(crate) String);

/// Splits `kid:<KID>:<VALUE>` into the kid and the value; anything else is the value alone.
/// `what` names the value in errors (`SECRET`, `FILE`), which never repeat the spec.
pub fn split_kid<'a>(spec: &'a str, what: &str) -> Result<(Option<&'a str>, &'a str), String> {
    let Some(rest) = spec.strip_prefix("kid:") else {
        return Ok((None, spec));
    };
    match rest.split_once(':') {
        Some((kid, value)) if !kid.is_empty() && !value.is_empty() => Ok((Some(kid), value)),
        _ => Err(format!(
            "a value starting with kid: is written kid:<KID>:<{what}>, both non-empty"
        )),
    }
}

/// The key for one `--jwt-secret` (`SECRET` or `kid:<KID>:<SECRET>`); `n` counts from 1.
pub(crate) fn secret(spec: &str, n: usize) -> Result<VerifyingKey, KeyError> {
    let (kid, secret) = split_kid(spec, "SECRET")
        .map_err(|e| KeyError(format!("--jwt-secret (the {}): {e}", ordinal(n))))?;
    if secret.is_empty() {
        return Err(KeyError(format!(
            "--jwt-secret (the {}) is empty",
            ordinal(n)
        )));
    }
    Ok(VerifyingKey {
        kid: kid.map(str::to_owned),
        kind: KeyKind::Hmac,
        alg: None,
        key: DecodingKey::from_secret(secret.as_bytes()),
        source: match kid {
            Some(kid) => format!("--jwt-secret kid {kid}"),
            None => format!("the {} --jwt-secret", ordinal(n)),
        },
    })
}

fn ordinal(n: usize) -> String {
    let suffix = match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

/// The key in one `--jwt-public-key` file (`PATH` or `kid:<KID>:<PATH>`): a PEM public key,
/// RSA (SPKI `PUBLIC KEY` or PKCS#1 `RSA PUBLIC KEY`), EC P-256 or P-384, or Ed25519.
pub(crate) fn public_key_file(spec: &Path) -> Result<VerifyingKey, KeyError> {
    let (kid, path) = match spec.to_str() {
        Some(s) => {
            let (kid, path) =
                split_kid(s, "FILE").map_err(|e| KeyError(format!("--jwt-public-key {s}: {e}")))?;
            (kid, Path::new(path))
        }
        None => (None, spec),
    };
    let fail = |why: String| KeyError(format!("--jwt-public-key {}: {why}", path.display()));
    let size = std::fs::metadata(path)
        .map_err(|e| fail(format!("cannot read it: {e}")))?
        .len();
    if size > MAX_PEM_BYTES {
        return Err(fail(format!(
            "not a PEM public key (larger than {MAX_PEM_BYTES} bytes)"
        )));
    }
    let pem = std::fs::read(path).map_err(|e| fail(format!("cannot read it: {e}")))?;
    let (kind, key) = public_key_pem(&pem).map_err(fail)?;
    Ok(VerifyingKey {
        kid: kid.map(str::to_owned),
        kind,
        alg: None,
        key,
        source: format!("--jwt-public-key {}", path.display()),
    })
}

/// The label of the first PEM block (`PUBLIC KEY` in `-----BEGIN PUBLIC KEY-----`).
pub(crate) fn pem_label(pem: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(pem).ok()?;
    let start = text.find("-----BEGIN ")? + "-----BEGIN ".len();
    let len = text[start..].find("-----")?;
    Some(&text[start..start + len])
}

/// A PEM public key and its kind, checked.
pub(crate) fn public_key_pem(pem: &[u8]) -> Result<(KeyKind, DecodingKey), String> {
    let label = pem_label(pem).ok_or("not a PEM file (no -----BEGIN line)")?;
    match label {
        "PUBLIC KEY" | "RSA PUBLIC KEY" => {}
        l if l.contains("PRIVATE KEY") => {
            return Err(format!(
                "is a private key ({l}): give its public key (openssl pkey -in FILE -pubout)"
            ));
        }
        "CERTIFICATE" => {
            return Err(
                "is a certificate: give its public key (openssl x509 -in FILE -pubkey -noout)"
                    .into(),
            );
        }
        l => return Err(format!("is a PEM {l}, not a public key")),
    }
    if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
        check_rsa_der(&key)?;
        return Ok((KeyKind::Rsa, key));
    }
    if let Ok(key) = DecodingKey::from_ec_pem(pem) {
        let kind = check_ec_point(&key)?;
        return Ok((kind, key));
    }
    if let Ok(key) = DecodingKey::from_ed_pem(pem) {
        check_ed25519(&key)?;
        return Ok((KeyKind::Ed25519, key));
    }
    Err("not a public key this node reads (RSA, EC P-256 or P-384, or Ed25519)".into())
}

fn check_rsa_der(key: &DecodingKey) -> Result<(), String> {
    let der = key
        .try_get_as_bytes()
        .map_err(|e| format!("not an RSA public key: {e}"))?;
    let rsa = rsa::RsaPublicKey::from_pkcs1_der(der)
        .map_err(|e| format!("not a usable RSA public key: {e}"))?;
    check_rsa_bits(rsa.n().bits())
}

fn check_rsa_bits(bits: usize) -> Result<(), String> {
    if bits < MIN_RSA_BITS {
        return Err(format!(
            "an RSA key of {bits} bits is too small (at least {MIN_RSA_BITS})"
        ));
    }
    Ok(())
}

/// The curve of an EC key holding an uncompressed SEC1 point, checked to be on it.
fn check_ec_point(key: &DecodingKey) -> Result<KeyKind, String> {
    let point = key
        .try_get_as_bytes()
        .map_err(|e| format!("not an EC public key: {e}"))?;
    match point.len() {
        65 => p256::PublicKey::from_sec1_bytes(point)
            .map(|_| KeyKind::P256)
            .map_err(|_| "not a point on P-256".to_owned()),
        97 => p384::PublicKey::from_sec1_bytes(point)
            .map(|_| KeyKind::P384)
            .map_err(|_| "not a point on P-384".to_owned()),
        _ => Err("an EC key on a curve other than P-256 or P-384".into()),
    }
}

fn check_ed25519(key: &DecodingKey) -> Result<(), String> {
    let bytes = key
        .try_get_as_bytes()
        .map_err(|e| format!("not an Ed25519 public key: {e}"))?;
    let bytes: &[u8; 32] = bytes
        .try_into()
        .map_err(|_| "not an Ed25519 public key (Ed448 is not supported)".to_owned())?;
    ed25519_dalek::VerifyingKey::from_bytes(bytes)
        .map(|_| ())
        .map_err(|_| "not a valid Ed25519 public key".to_owned())
}

/// The key in one JWKS entry, or why the entry is skipped (an unsupported `kty`, `crv` or
/// `alg`, a key for encryption, a symmetric key, a malformed or too small key).
pub(crate) fn from_jwk(entry: &serde_json::Value, source: &str) -> Result<VerifyingKey, String> {
    let jwk: Jwk = serde_json::from_value(entry.clone()).map_err(|e| format!("not a JWK: {e}"))?;
    let common = &jwk.common;
    match &common.public_key_use {
        None | Some(PublicKeyUse::Signature) => {}
        Some(PublicKeyUse::Encryption) => return Err("a key for encryption (use: enc)".into()),
        Some(PublicKeyUse::Other(u)) => return Err(format!("use {u:?}")),
    }
    if let Some(ops) = &common.key_operations
        && !ops.contains(&KeyOperations::Verify)
    {
        return Err("key_ops without verify".into());
    }
    let alg = match &common.key_algorithm {
        None => None,
        Some(a) => Some(jwk_alg(a).ok_or_else(|| format!("alg {a} is not supported"))?),
    };
    let (kind, key) = match &jwk.algorithm {
        AlgorithmParameters::RSA(p) => {
            let key = DecodingKey::from_rsa_components(&p.n, &p.e)
                .map_err(|e| format!("a malformed RSA key: {e}"))?;
            let DecodingKeyKind::RsaModulusExponent { n, e } = key.kind() else {
                return Err("a malformed RSA key".into());
            };
            let rsa = rsa::RsaPublicKey::new(
                rsa::BigUint::from_bytes_be(n),
                rsa::BigUint::from_bytes_be(e),
            )
            .map_err(|e| format!("not a usable RSA key: {e}"))?;
            check_rsa_bits(rsa.n().bits())?;
            (KeyKind::Rsa, key)
        }
        AlgorithmParameters::EllipticCurve(p) => {
            if !matches!(p.curve, EllipticCurve::P256 | EllipticCurve::P384) {
                return Err(format!("crv {:?} is not supported", p.curve));
            }
            let key = DecodingKey::from_ec_components(&p.x, &p.y)
                .map_err(|e| format!("a malformed EC key: {e}"))?;
            let kind = check_ec_point(&key)?;
            let named = match p.curve {
                EllipticCurve::P256 => KeyKind::P256,
                _ => KeyKind::P384,
            };
            if kind != named {
                return Err("x and y do not fit crv".into());
            }
            (kind, key)
        }
        AlgorithmParameters::OctetKeyPair(p) => {
            if p.curve != EllipticCurve::Ed25519 {
                return Err(format!("crv {:?} is not supported", p.curve));
            }
            let key = DecodingKey::from_ed_components(&p.x)
                .map_err(|e| format!("a malformed Ed25519 key: {e}"))?;
            check_ed25519(&key)?;
            (KeyKind::Ed25519, key)
        }
        AlgorithmParameters::OctetKey(_) => {
            return Err("a symmetric key (kty oct): secrets are given with --jwt-secret".into());
        }
        _ => return Err("kty is not supported".into()),
    };
    if let Some(alg) = alg
        && !kind.algorithms().contains(&alg)
    {
        return Err(format!("alg {alg:?} does not fit an {}", kind.name()));
    }
    Ok(VerifyingKey {
        kid: common.key_id.clone(),
        kind,
        alg,
        key,
        source: source.to_owned(),
    })
}

/// A JWK `alg` as a signature algorithm, if it is one.
fn jwk_alg(a: &KeyAlgorithm) -> Option<Algorithm> {
    Some(match a {
        KeyAlgorithm::HS256 => Algorithm::HS256,
        KeyAlgorithm::HS384 => Algorithm::HS384,
        KeyAlgorithm::HS512 => Algorithm::HS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::PathBuf;

    use serde_json::json;

    use super::*;

    /// A fixture key file (core/tests/fixtures/keys).
    pub(crate) fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/keys")
            .join(name)
    }

    #[test]
    fn kid_specs_split() {
        assert_eq!(split_kid("s3cret", "S").unwrap(), (None, "s3cret"));
        assert_eq!(split_kid("kid:k1:s:x", "S").unwrap(), (Some("k1"), "s:x"));
        assert!(split_kid("kid::x", "S").is_err());
        assert!(split_kid("kid:k1:", "S").is_err());
        assert!(split_kid("kid:k1", "S").is_err());
        // Only the prefix means anything: a secret with colons elsewhere is itself.
        assert_eq!(split_kid("a:kid:b", "S").unwrap(), (None, "a:kid:b"));
    }

    #[test]
    fn secrets_are_hmac_keys_with_or_without_kid() {
        let k = secret("kid:k1:abc", 1).unwrap();
        assert_eq!((k.kid.as_deref(), k.kind), (Some("k1"), KeyKind::Hmac));
        let k = secret("abc", 2).unwrap();
        assert_eq!(k.kid, None);
        assert!(k.fits(Algorithm::HS512) && !k.fits(Algorithm::RS256));
        let err = secret("", 3).unwrap_err().to_string();
        assert!(err.contains("--jwt-secret") && err.contains("3rd"), "{err}");
        // The secret is never in an error or a Debug.
        let err = secret("kid:k1", 1).unwrap_err().to_string();
        assert!(err.contains("--jwt-secret") && !err.contains("k1"), "{err}");
        assert!(!format!("{:?}", secret("hunter2", 1).unwrap()).contains("hunter2"));
    }

    #[test]
    fn every_public_key_type_loads_with_its_kind() {
        for (file, kind) in [
            ("rsa1.pub", KeyKind::Rsa), // SPKI
            ("rsa2.pub", KeyKind::Rsa), // PKCS#1
            ("ec256.pub", KeyKind::P256),
            ("ec384.pub", KeyKind::P384),
            ("ed25519.pub", KeyKind::Ed25519),
        ] {
            let k = public_key_file(&fixture(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
            assert_eq!(k.kind, kind, "{file}");
            assert_eq!(k.kid, None);
        }
        let spec = format!("kid:ed-1:{}", fixture("ed25519.pub").display());
        let k = public_key_file(Path::new(&spec)).unwrap();
        assert_eq!(k.kid.as_deref(), Some("ed-1"));
        assert!(k.fits(Algorithm::EdDSA) && !k.fits(Algorithm::ES256));
        let p256 = public_key_file(&fixture("ec256.pub")).unwrap();
        assert!(p256.fits(Algorithm::ES256) && !p256.fits(Algorithm::ES384));
    }

    #[test]
    fn bad_key_files_are_refused_naming_the_file() {
        let refused = |path: PathBuf, why: &str| {
            let err = public_key_file(&path).unwrap_err().to_string();
            assert!(
                err.contains("--jwt-public-key") && err.contains(&*path.to_string_lossy()),
                "{err}"
            );
            assert!(err.contains(why), "{err}");
        };
        refused(fixture("missing.pub"), "cannot read");
        refused(fixture("rsa1.key"), "private key");
        refused(fixture("rsa2.key"), "private key");
        refused(fixture("rsa-1024.pub"), "too small");
        refused(fixture("README.md"), "not a PEM file");
        let dir = std::env::temp_dir().join(format!("sb-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let garbage = dir.join("garbage.pem");
        std::fs::write(
            &garbage,
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
        )
        .unwrap();
        refused(garbage, "not a public key");
        let cert = dir.join("cert.pem");
        std::fs::write(
            &cert,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        refused(cert, "certificate");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn jwks_entries_are_read_or_skipped_with_a_reason() {
        let rsa =
            crate::auth::SigningKey::from_pem(&std::fs::read(fixture("rsa1.key")).unwrap(), None)
                .unwrap();
        let mut jwk = rsa.public_jwk().unwrap();
        jwk["kid"] = json!("r1");
        let k = from_jwk(&jwk, "jwks").unwrap();
        assert_eq!((k.kid.as_deref(), k.kind), (Some("r1"), KeyKind::Rsa));
        // Its alg (RS256) binds it: not PS256, though the key could.
        assert!(k.fits(Algorithm::RS256) && !k.fits(Algorithm::PS256));

        let skipped = |entry: serde_json::Value, why: &str| {
            let err = from_jwk(&entry, "jwks").unwrap_err();
            assert!(err.contains(why), "{entry}: {err}");
        };
        let mut enc = jwk.clone();
        enc["use"] = json!("enc");
        skipped(enc, "encryption");
        let mut ps = jwk.clone();
        ps["alg"] = json!("ES256");
        skipped(ps, "does not fit");
        let mut oaep = jwk.clone();
        oaep["alg"] = json!("RSA-OAEP");
        skipped(oaep, "not supported");
        skipped(json!({"kty": "oct", "k": "c2VjcmV0"}), "symmetric");
        skipped(
            json!({"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA"}),
            "P521",
        );
        skipped(
            json!({"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}),
            "P-256",
        );
        skipped(json!({"kty": "RSA", "n": "AQAB", "e": "AQAB"}), "RSA");
        let small =
            DecodingKey::from_rsa_pem(&std::fs::read(fixture("rsa-1024.pub")).unwrap()).unwrap();
        let small = rsa::RsaPublicKey::from_pkcs1_der(small.try_get_as_bytes().unwrap()).unwrap();
        let b64 = |b: Vec<u8>| {
            use base64::Engine;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
        };
        skipped(
            json!({"kty": "RSA", "n": b64(small.n().to_bytes_be()), "e": b64(small.e().to_bytes_be())}),
            "too small",
        );
        skipped(json!({"kty": "XYZ"}), "not supported");
        skipped(json!("nonsense"), "not a JWK");
        let mut ops = jwk.clone();
        ops["key_ops"] = json!(["encrypt"]);
        skipped(ops, "key_ops");
    }
}
