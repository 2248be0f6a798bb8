//! Where a call is hashed. The hash names a call's cached result and its in-flight execution,
//! so identical calls, on any node, find each other:
//!
//! SHA-256 over a version tag, the tool's identity ([`ToolSpec::digest`]: name, version,
//! canonical schema), the RFC 8785 (JCS) canonical JSON of the arguments, and the caller's
//! identity when the tool's cache scope is per user. Key order and whitespace in the
//! arguments do not change the hash.

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::encoding::{canonical_json, hex};
use crate::tools::{CacheScope, ToolSpec};

/// Bumped when the hash's inputs change, so old cache entries are never misread.
const HASH_VERSION: &[u8] = b"switchboard-call-v1";

/// The call hash (64 hex digits); see the module docs.
pub fn call_hash(tool: &ToolSpec, arguments: &Value, caller: &str) -> String {
    call_hash_of(&tool.digest(), tool.cache.scope, arguments, caller)
}

/// [`call_hash`] with the tool's digest already computed (it is the same for every call of a
/// tool, and costs a canonical encoding of the schema).
pub fn call_hash_of(
    tool_digest: &str,
    scope: CacheScope,
    arguments: &Value,
    caller: &str,
) -> String {
    let mut h = Sha256::new();
    h.update(HASH_VERSION);
    h.update([0]);
    h.update(tool_digest.as_bytes());
    h.update([0]);
    h.update(canonical_json(arguments).as_bytes());
    if scope == CacheScope::PerUser {
        h.update([0]);
        h.update(caller.as_bytes());
    }
    hex(&h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::CachePolicy;
    use serde_json::json;

    fn tool(scope: CacheScope) -> ToolSpec {
        ToolSpec {
            name: "echo".into(),
            title: None,
            description: String::new(),
            input_schema: json!({"type": "object"}),
            annotations: None,
            version: "1".into(),
            cache: CachePolicy {
                ttl_ms: 60_000,
                scope,
            },
            timeout_ms: 1000,
        }
    }

    #[test]
    fn key_order_and_whitespace_do_not_matter() {
        let t = tool(CacheScope::Public);
        let a: Value = serde_json::from_str(r#"{"b": [1, {"y": 2, "x": 1}], "a": "é"}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"a":"é","b":[1,{"x":1,"y":2}]}"#).unwrap();
        assert_eq!(call_hash(&t, &a, "u1"), call_hash(&t, &b, "u2"));
        assert_eq!(call_hash(&t, &a, "u1").len(), 64);
    }

    #[test]
    fn arguments_tool_and_scope_do_matter() {
        let t = tool(CacheScope::Public);
        assert_ne!(
            call_hash(&t, &json!({"a": 1}), "u"),
            call_hash(&t, &json!({"a": 2}), "u")
        );
        // JCS numbers: 1.0 and 1 are the same number.
        assert_eq!(
            call_hash(&t, &json!({"a": 1.0}), "u"),
            call_hash(&t, &json!({"a": 1}), "u")
        );
        let per_user = tool(CacheScope::PerUser);
        assert_ne!(
            call_hash(&per_user, &json!({}), "alice"),
            call_hash(&per_user, &json!({}), "bob")
        );
        assert_ne!(
            call_hash(&t, &json!({}), "u"),
            call_hash(&per_user, &json!({}), "u")
        );
    }
}
