//! The MCP `CallToolResult`: what a tool call answers, at once (`tools/call`) or later
//! (`tasks/result`).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// The MCP `CallToolResult`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CallToolResult {
    pub content: Vec<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub structured_content: Option<Value>,
    #[serde(default)]
    pub is_error: bool,
    #[serde(rename = "_meta", default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<Map<String, Value>>,
}

impl CallToolResult {
    /// A successful result with structured content and the same JSON as one text item.
    pub fn structured(value: Value) -> Self {
        CallToolResult {
            content: vec![json!({"type": "text", "text": value.to_string()})],
            structured_content: Some(value),
            is_error: false,
            meta: None,
        }
    }

    /// An error result (the tool ran and failed, or could not run): never cached.
    pub fn error(message: impl Into<String>) -> Self {
        CallToolResult {
            content: vec![json!({"type": "text", "text": message.into()})],
            structured_content: None,
            is_error: true,
            meta: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_serialize_with_mcp_names() {
        let r = CallToolResult::structured(json!({"x": 1}));
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["structuredContent"], json!({"x": 1}));
        assert_eq!(v["isError"], false);
        assert_eq!(v["content"][0]["type"], "text");
        assert!(v.get("_meta").is_none());
    }
}
