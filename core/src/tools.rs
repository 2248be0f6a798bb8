//! Tools as workers announce them: the MCP `Tool` object plus what Switchboard needs to route
//! and cache a call (version, timeout, cache policy), and a tool's identity (its digest).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use switchboard_protocol::methods::tools::{TaskSupport, Tool, ToolExecution};

use crate::encoding::{canonical_json, hex};

/// The longest tool name accepted, in bytes (MCP suggests 1 to 128).
pub const MAX_TOOL_NAME_LEN: usize = 128;

/// Why a string is not a tool name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ToolNameError {
    #[error("tool name is empty or longer than {MAX_TOOL_NAME_LEN} bytes")]
    Length,
    #[error("tool name contains {0:?}; allowed are A-Z a-z 0-9 _ - .")]
    BadChar(char),
}

/// Tool names: 1 to 128 bytes of `A-Z a-z 0-9 _ - .` (MCP's recommendation; also safe inside
/// a Redis hash tag).
pub fn validate_tool_name(name: &str) -> Result<(), ToolNameError> {
    if name.is_empty() || name.len() > MAX_TOOL_NAME_LEN {
        return Err(ToolNameError::Length);
    }
    match name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
    {
        Some(c) => Err(ToolNameError::BadChar(c)),
        None => Ok(()),
    }
}

/// Who shares a cached result.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CacheScope {
    /// Every caller gets the same cached result.
    #[default]
    Public,
    /// Each caller (token subject) has its own cache entry.
    PerUser,
}

/// How a tool's results are cached. A ttl of 0 turns caching off. Error results are never
/// cached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CachePolicy {
    /// `ttlMs` in the registry; `ttl_ms` in a tools file (TOML keys are snake_case there).
    #[serde(default, alias = "ttl_ms")]
    pub ttl_ms: u64,
    #[serde(default)]
    pub scope: CacheScope,
}

impl CachePolicy {
    pub fn off() -> Self {
        CachePolicy::default()
    }

    pub fn enabled(&self) -> bool {
        self.ttl_ms > 0
    }
}

/// A tool hosted by a worker, as announced in the registry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ToolSpec {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default)]
    pub description: String,
    pub input_schema: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<Value>,
    /// Part of the tool's identity in the call hash: a new version never reuses old results.
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub cache: CachePolicy,
    /// How long one call may run; also the caller's deadline.
    pub timeout_ms: u64,
}

impl ToolSpec {
    /// The MCP `Tool` object for `tools/list`. Every call runs as a task, which a caller may
    /// ask for or not: `execution.taskSupport` is `optional` for every tool.
    pub fn mcp(&self) -> Tool {
        Tool {
            name: self.name.clone(),
            title: self.title.clone(),
            description: self.description.clone(),
            input_schema: self.input_schema.clone(),
            annotations: self.annotations.clone(),
            execution: Some(ToolExecution {
                task_support: Some(TaskSupport::Optional),
            }),
        }
    }

    /// The id of the tool's job queue: `<name>@<first 16 hex digits of the digest>`. Each
    /// version of a tool has its own queue, so a worker never runs a call hashed, validated and
    /// cached for another version (during a rolling upgrade both run side by side).
    pub fn queue_id(&self) -> String {
        queue_id_of(&self.name, &self.digest())
    }

    /// SHA-256 (hex) over the name, the version and the canonical input schema: the tool's
    /// identity in the call hash.
    pub fn digest(&self) -> String {
        let mut h = Sha256::new();
        h.update(self.name.as_bytes());
        h.update([0]);
        h.update(self.version.as_bytes());
        h.update([0]);
        h.update(canonical_json(&self.input_schema).as_bytes());
        hex(&h.finalize())
    }
}

/// The queue id of a tool from its name and digest (see [`ToolSpec::queue_id`]).
pub fn queue_id_of(name: &str, digest: &str) -> String {
    format!("{name}@{}", &digest[..16.min(digest.len())])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tool_names() {
        assert!(validate_tool_name("echo").is_ok());
        assert!(validate_tool_name("a.b-c_9").is_ok());
        assert_eq!(validate_tool_name(""), Err(ToolNameError::Length));
        assert_eq!(validate_tool_name("a b"), Err(ToolNameError::BadChar(' ')));
        assert_eq!(validate_tool_name("a{b"), Err(ToolNameError::BadChar('{')));
    }

    #[test]
    fn digest_follows_version_and_schema_not_description() {
        let t = ToolSpec {
            name: "echo".into(),
            title: None,
            description: "one".into(),
            input_schema: json!({"type": "object", "properties": {"a": {}}}),
            annotations: None,
            version: "1".into(),
            cache: CachePolicy::off(),
            timeout_ms: 1000,
        };
        let mut u = t.clone();
        u.description = "two".into();
        u.input_schema = json!({"properties": {"a": {}}, "type": "object"});
        assert_eq!(t.digest(), u.digest());
        u.version = "2".into();
        assert_ne!(t.digest(), u.digest());
    }
}
