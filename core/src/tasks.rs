//! Every call is a task: a record in the backend, bound to the caller, that `tasks/get` and
//! `tasks/result` answer from any gateway node until its ttl runs out (MCP 2025-11-25 task
//! fields). Identical calls share one execution: the first call's task is the *leader*, and the
//! others' records point at it.

use std::collections::HashMap;

use switchboard_protocol::methods::tasks::{Task, TaskStatus};
use switchboard_protocol::methods::tools::CallToolResult;

use crate::clock::rfc3339;

/// A task as stored (see `docs/redis.md` for the hash fields).
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRecord {
    pub task_id: String,
    /// The caller's identity (token subject): only it may read or cancel the task.
    pub owner: String,
    pub status: TaskStatus,
    pub status_message: Option<String>,
    pub created_at_ms: u64,
    pub last_updated_at_ms: u64,
    pub ttl_ms: u64,
    pub poll_interval_ms: u64,
    pub call_hash: String,
    pub tool: String,
    /// For a call that joined an identical one in flight: the task whose execution it shares.
    pub leader: Option<String>,
    /// Answered from the result cache.
    pub cached: bool,
    /// The caller cancelled it. For a leader, `status` stays the shared execution's (others may
    /// still wait for it); the caller sees `cancelled`.
    pub caller_cancelled: bool,
    pub result: Option<CallToolResult>,
}

impl TaskRecord {
    /// The status the caller sees: a caller who cancelled sees `cancelled`, whatever became of
    /// a shared execution for others.
    pub fn caller_status(&self) -> TaskStatus {
        if self.caller_cancelled {
            TaskStatus::Cancelled
        } else {
            self.status
        }
    }

    /// The MCP `Task` object.
    pub fn mcp(&self) -> Task {
        Task {
            task_id: self.task_id.clone(),
            status: self.caller_status(),
            status_message: self.status_message.clone(),
            created_at: rfc3339(self.created_at_ms),
            last_updated_at: rfc3339(self.last_updated_at_ms),
            ttl: self.ttl_ms,
            poll_interval: self.poll_interval_ms,
        }
    }

    /// The hash fields this record is stored as.
    pub fn to_fields(&self) -> Vec<(&'static str, String)> {
        let mut f = vec![
            ("owner", self.owner.clone()),
            ("status", self.status.as_str().to_owned()),
            ("created", self.created_at_ms.to_string()),
            ("updated", self.last_updated_at_ms.to_string()),
            ("ttl", self.ttl_ms.to_string()),
            ("poll", self.poll_interval_ms.to_string()),
            ("hash", self.call_hash.clone()),
            ("tool", self.tool.clone()),
            ("cached", if self.cached { "1" } else { "0" }.to_owned()),
        ];
        if self.caller_cancelled {
            f.push(("ccancel", "1".to_owned()));
        }
        if let Some(m) = &self.status_message {
            f.push(("message", m.clone()));
        }
        if let Some(l) = &self.leader {
            f.push(("leader", l.clone()));
        }
        if let Some(r) = &self.result {
            f.push((
                "result",
                serde_json::to_string(r).expect("results serialize"),
            ));
        }
        f
    }

    /// Reads a record back from its hash fields; `None` when a required field is missing.
    pub fn from_fields(task_id: &str, f: &HashMap<String, String>) -> Option<Self> {
        let num = |k: &str| f.get(k).and_then(|v| v.parse::<u64>().ok());
        Some(TaskRecord {
            task_id: task_id.to_owned(),
            owner: f.get("owner")?.clone(),
            status: TaskStatus::parse(f.get("status")?)?,
            status_message: f.get("message").cloned(),
            created_at_ms: num("created")?,
            last_updated_at_ms: num("updated")?,
            ttl_ms: num("ttl")?,
            poll_interval_ms: num("poll").unwrap_or(1000),
            call_hash: f.get("hash").cloned().unwrap_or_default(),
            tool: f.get("tool").cloned().unwrap_or_default(),
            leader: f.get("leader").cloned(),
            cached: f.get("cached").is_some_and(|v| v == "1"),
            caller_cancelled: f.get("ccancel").is_some_and(|v| v == "1"),
            result: f.get("result").and_then(|r| serde_json::from_str(r).ok()),
        })
    }
}

/// Hex digits of the call hash that make a call's hash tag ([`call_tag`]).
pub const CALL_TAG_LEN: usize = 16;

/// The hash tag every key of one call shares (its result, its lease, the tasks of all its
/// callers): the first [`CALL_TAG_LEN`] hex digits of the call hash (64 bits: two different
/// calls share a slot by chance only, never a key). A shorter hash is its own tag.
pub fn call_tag(call_hash: &str) -> &str {
    call_hash.get(..CALL_TAG_LEN).unwrap_or(call_hash)
}

/// A task id that carries its call's tag: `<call tag>.<name>`, so a backend builds the task's
/// key in the call's slot from the id alone (see [`task_tag`]).
pub fn tagged_task_id(call_hash: &str, name: &str) -> String {
    format!("{}.{name}", call_tag(call_hash))
}

/// A new task id for a call with this hash: `<call tag>.<128 random bits, hex>`.
pub fn new_task_id(call_hash: &str) -> String {
    tagged_task_id(call_hash, &crate::encoding::random_id())
}

/// The call tag a task id carries and the rest of it, if it has the form [`tagged_task_id`]
/// makes (exactly [`CALL_TAG_LEN`] lowercase hex digits, a `.`, and something); `None` for an
/// id issued before task ids carried tags (plain hex) or any other string a client sends.
pub fn task_tag(task_id: &str) -> Option<(&str, &str)> {
    let (tag, rest) = task_id.split_once('.')?;
    let hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
    (tag.len() == CALL_TAG_LEN && tag.bytes().all(hex) && !rest.is_empty()).then_some((tag, rest))
}

/// The *name* of request `raw_id` (its id as JSON text) in the MCP session `session`: derived
/// rather than drawn, so that a `notifications/cancelled` for the request, sent to any node,
/// finds the call (MCP request ids are unique within a session, so these are too). 128 bits of
/// SHA-256, hex. The call's task id is [`tagged_task_id`] of it (which needs the call hash);
/// the backend keeps this name as an alias of that id (`Submission::alias`), so the name alone
/// finds the task.
pub fn session_task_id(session: &str, raw_id: &str) -> String {
    use sha2::{Digest, Sha256};
    // `7`, `7 ` and `"a"` as any client writes them: one id each.
    let id = serde_json::from_str::<serde_json::Value>(raw_id)
        .map_or_else(|_| raw_id.to_owned(), |v| v.to_string());
    let mut h = Sha256::new();
    h.update(b"mcp-session-task\0");
    h.update(session.as_bytes());
    h.update(b"\0");
    h.update(id.as_bytes());
    crate::encoding::hex(&h.finalize()[..16])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn task_ids_carry_their_calls_tag() {
        let hash = "0123456789abcdef".repeat(4);
        let id = new_task_id(&hash);
        assert_eq!(id.len(), CALL_TAG_LEN + 1 + 32);
        assert_eq!(
            task_tag(&id),
            Some(("0123456789abcdef", &id[CALL_TAG_LEN + 1..]))
        );
        assert_ne!(id, new_task_id(&hash));
        assert_eq!(tagged_task_id(&hash, "x"), "0123456789abcdef.x".to_owned());
        // Ids from before the tags, and anything else, carry none.
        assert_eq!(task_tag(&crate::encoding::random_id()), None);
        assert_eq!(task_tag("0123456789ABCDEF.x"), None);
        assert_eq!(task_tag("0123456789abcdef."), None);
        assert_eq!(task_tag("0123456789abcde.x"), None);
        assert_eq!(task_tag("t1"), None);
        assert_eq!(call_tag("ab"), "ab");
    }

    #[test]
    fn session_task_ids_are_per_session_and_request() {
        let a = session_task_id("s1", "7");
        assert_eq!(a.len(), 32);
        assert_eq!(a, session_task_id("s1", " 7 "));
        assert_ne!(a, session_task_id("s2", "7"));
        assert_ne!(a, session_task_id("s1", "\"7\""));
    }

    #[test]
    fn round_trips_through_fields() {
        let r = TaskRecord {
            task_id: "t1".into(),
            owner: "alice".into(),
            status: TaskStatus::Completed,
            status_message: Some("done".into()),
            created_at_ms: 1_700_000_000_000,
            last_updated_at_ms: 1_700_000_000_500,
            ttl_ms: 60_000,
            poll_interval_ms: 500,
            call_hash: "ab".into(),
            tool: "echo".into(),
            leader: Some("t0".into()),
            cached: true,
            caller_cancelled: false,
            result: Some(CallToolResult::structured(json!({"a": 1}))),
        };
        let fields: HashMap<String, String> = r
            .to_fields()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        assert_eq!(TaskRecord::from_fields("t1", &fields), Some(r.clone()));
        let m = serde_json::to_value(r.mcp()).unwrap();
        assert_eq!(m["taskId"], "t1");
        assert_eq!(m["status"], "completed");
        assert_eq!(m["createdAt"], "2023-11-14T22:13:20.000Z");
        assert_eq!(m["ttl"], 60_000);
    }
}
