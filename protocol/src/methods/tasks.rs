//! Tasks (MCP 2025-11-25): every call is a task that `tasks/get`, `tasks/result` and
//! `tasks/cancel` reach from any node; `notifications/cancelled` cancels a call in flight on
//! the same socket.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::Method;
use super::result::CallToolResult;

/// A task's state. `failed` means the platform could not produce the tool's own result
/// (dead-lettered, deadline passed, worker lost); `tasks/result` then answers an `isError`
/// result saying why. A tool that ran and answered `isError` is `completed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    Working,
    Completed,
    Failed,
    Cancelled,
}

impl TaskStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Working => "working",
            TaskStatus::Completed => "completed",
            TaskStatus::Failed => "failed",
            TaskStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            TaskStatus::Working,
            TaskStatus::Completed,
            TaskStatus::Failed,
            TaskStatus::Cancelled,
        ]
        .into_iter()
        .find(|t| t.as_str() == s)
    }

    pub fn is_terminal(self) -> bool {
        self != TaskStatus::Working
    }
}

/// The MCP `Task` object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Task {
    pub task_id: String,
    pub status: TaskStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_message: Option<String>,
    /// ISO 8601.
    pub created_at: String,
    /// ISO 8601.
    pub last_updated_at: String,
    /// How long the task is kept, in ms.
    pub ttl: u64,
    /// How often to poll it, in ms.
    pub poll_interval: u64,
}

/// `tasks/get`, `tasks/result` and `tasks/cancel` params. MCP's methods: fields other than
/// `taskId` are ignored (`_meta`, the `task` the TypeScript SDK sends along with its polls,
/// and whatever newer MCP revisions add).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskIdParams {
    pub task_id: String,
}

/// `tasks/get`: the task as the caller sees it.
#[derive(Debug)]
pub struct TasksGet;

impl Method for TasksGet {
    const NAME: &'static str = "tasks/get";
    type Params<'a> = TaskIdParams;
    type Result = Task;
}

/// `tasks/result`: the call's result once it is done (waits).
#[derive(Debug)]
pub struct TasksResult;

impl Method for TasksResult {
    const NAME: &'static str = "tasks/result";
    type Params<'a> = TaskIdParams;
    type Result = CallToolResult;
}

/// `tasks/cancel`: cancels the caller's task; answers the task.
#[derive(Debug)]
pub struct TasksCancel;

impl Method for TasksCancel {
    const NAME: &'static str = "tasks/cancel";
    type Params<'a> = TaskIdParams;
    type Result = Task;
}

/// `notifications/cancelled` (a client notification): cancels the `tools/call` with that
/// request id on this socket; the call gets no reply.
#[derive(Debug)]
pub struct Cancelled;

impl Method for Cancelled {
    const NAME: &'static str = "notifications/cancelled";
    type Params<'a> = CancelledParams<'a>;
    type Result = ();
}

/// `notifications/cancelled` params. Nothing but `requestId` is read: `reason` (a string in
/// MCP) and any other field are accepted whatever they hold.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CancelledParams<'a> {
    /// The request id, as raw JSON (a string or a number).
    #[serde(borrow)]
    pub request_id: &'a RawValue,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<serde_json::Value>,
}
