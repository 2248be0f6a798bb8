//! The built-in demo tools (`--builtin`), which every test and the README rely on:
//! - `echo`: returns its arguments (structured, and as one text item); cached 60 s.
//! - `sleep` `{ms}`: sleeps, reporting progress, honours cancellation; returns
//!   `{slept_ms, worker, started_at}` (unix ms). Not cached.
//! - `fail` `{message}`: returns an `isError` result (never cached).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};
use switchboard_core::clock::now_ms;
use switchboard_core::tools::{CachePolicy, CacheScope, ToolSpec};
use switchboard_protocol::methods::tools::CallToolResult;

use super::{CallContext, Tool, Toolbox, ToolboxError};

/// Default cache ttl of `echo`.
pub const ECHO_CACHE_TTL_MS: u64 = 60_000;
/// The longest `sleep` accepted.
pub const MAX_SLEEP_MS: u64 = 600_000;
/// Calls of one built-in tool running at once on one worker.
const BUILTIN_CONCURRENCY: usize = 1024;

struct Echo;

#[async_trait]
impl Tool for Echo {
    async fn call(&self, arguments: Value, _ctx: &CallContext) -> CallToolResult {
        CallToolResult::structured(arguments)
    }
}

struct Sleep;

#[async_trait]
impl Tool for Sleep {
    async fn call(&self, arguments: Value, ctx: &CallContext) -> CallToolResult {
        let started_at = now_ms();
        let ms = arguments["ms"].as_u64().unwrap_or(0).min(MAX_SLEEP_MS);
        let steps = 4u64;
        for step in 1..=steps {
            tokio::time::sleep(Duration::from_millis(ms / steps)).await;
            ctx.progress((ms / steps * step) as f64, Some(ms as f64), None);
        }
        CallToolResult::structured(json!({
            "slept_ms": ms,
            "worker": ctx.worker_id,
            "started_at": started_at,
        }))
    }
}

struct Fail;

#[async_trait]
impl Tool for Fail {
    async fn call(&self, arguments: Value, _ctx: &CallContext) -> CallToolResult {
        CallToolResult::error(arguments["message"].as_str().unwrap_or("failed as asked"))
    }
}

fn spec(
    name: &str,
    description: &str,
    schema: Value,
    cache: CachePolicy,
    timeout_ms: u64,
) -> ToolSpec {
    ToolSpec {
        name: name.into(),
        title: None,
        description: description.into(),
        input_schema: schema,
        annotations: None,
        version: "1".into(),
        cache,
        timeout_ms,
    }
}

/// Adds the built-in tools to a toolbox.
pub fn add_builtins(toolbox: &mut Toolbox) -> Result<(), ToolboxError> {
    toolbox.add(
        spec(
            "echo",
            "Returns its arguments.",
            json!({"type": "object"}),
            CachePolicy {
                ttl_ms: ECHO_CACHE_TTL_MS,
                scope: CacheScope::Public,
            },
            10_000,
        )
        .with_annotations(json!({"readOnlyHint": true, "idempotentHint": true})),
        Arc::new(Echo),
        BUILTIN_CONCURRENCY,
    )?;
    toolbox.add(
        spec(
            "sleep",
            "Sleeps for `ms` milliseconds, reporting progress; answers which worker ran it and when.",
            json!({
                "type": "object",
                "properties": {"ms": {"type": "integer", "minimum": 0, "maximum": MAX_SLEEP_MS}},
                "required": ["ms"],
            }),
            CachePolicy::off(),
            MAX_SLEEP_MS + 10_000,
        ),
        Arc::new(Sleep),
        BUILTIN_CONCURRENCY,
    )?;
    toolbox.add(
        spec(
            "fail",
            "Answers an error result with `message`.",
            json!({"type": "object", "properties": {"message": {"type": "string"}}}),
            CachePolicy::off(),
            10_000,
        ),
        Arc::new(Fail),
        BUILTIN_CONCURRENCY,
    )
}

trait WithAnnotations {
    fn with_annotations(self, a: Value) -> Self;
}

impl WithAnnotations for ToolSpec {
    fn with_annotations(mut self, a: Value) -> Self {
        self.annotations = Some(a);
        self
    }
}
