//! Tools (MCP): `tools/list`, `tools/call`, and the notifications `notifications/progress`
//! and `notifications/tools/list_changed`. A call made with `task` answers at once with the
//! task ([`super::tasks`]); its outcome is collected with `tasks/result`.
//!
//! Tools offered by clients (Switchboard's methods): `tools/register` and `tools/unregister`.
//! A call of such a tool reaches the offering client as a `tools/call` request from the
//! gateway ([`CallParams`], with [`META_PROGRESS_TOKEN`] set to the request's id and
//! [`META_TASK_ID`] to the execution's task); the client answers with a `CallToolResult`.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use super::result::CallToolResult;
use super::tasks::Task;
use super::{Empty, Ignored, Method, Notification};

/// `_meta` key: how a call may use the cache (`use`, `bypass`, `refresh`).
pub const META_CACHE: &str = "switchboard/cache";
/// `_meta` key of a result: the caller's task id.
pub const META_TASK_ID: &str = "switchboard/taskId";
/// `_meta` key of a result: the call hash.
pub const META_CALL_HASH: &str = "switchboard/callHash";
/// `_meta` key of a result: answered from the cache.
pub const META_CACHED: &str = "switchboard/cached";
/// `_meta` key of a call: the token progress notifications carry.
pub const META_PROGRESS_TOKEN: &str = "progressToken";

/// An MCP `Tool`, as `tools/list` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Tool {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default)]
    pub description: String,
    pub input_schema: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<Value>,
    /// How the tool may be called (MCP 2025-11-25): Switchboard runs every call as a task, so
    /// its tools list `taskSupport: "optional"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution: Option<ToolExecution>,
}

/// A tool's `execution` (MCP 2025-11-25).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ToolExecution {
    /// Absent means `forbidden` (MCP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_support: Option<TaskSupport>,
}

/// Whether a tool may be called as a task (`tools/call` with `task`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskSupport {
    /// Never as a task.
    Forbidden,
    /// As a task or as a plain request.
    Optional,
    /// Only as a task.
    Required,
}

/// `tools/list`.
#[derive(Debug)]
pub struct ToolsList;

impl Method for ToolsList {
    const NAME: &'static str = "tools/list";
    /// `cursor` is ignored: the list is one page.
    type Params<'a> = Ignored;
    type Result = ToolsListResult;
}

/// `tools/list` result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolsListResult {
    pub tools: Vec<Tool>,
}

/// `tools/call`.
#[derive(Debug)]
pub struct ToolsCall;

impl Method for ToolsCall {
    const NAME: &'static str = "tools/call";
    type Params<'a> = CallParams;
    type Result = CallResult;
}

/// `tools/call` params. MCP's method: fields it does not read are ignored (newer MCP
/// revisions add some).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CallParams {
    pub name: String,
    /// The tool's arguments (an object; absent means `{}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments: Option<Value>,
    /// `progressToken`, `switchboard/cache`.
    #[serde(default, rename = "_meta", skip_serializing_if = "Option::is_none")]
    pub meta: Option<Map<String, Value>>,
    /// Run as a task: answer with the task at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<TaskRequest>,
}

impl CallParams {
    /// A plain call of `name` with `arguments`.
    pub fn new(name: impl Into<String>, arguments: Value) -> Self {
        CallParams {
            name: name.into(),
            arguments: Some(arguments),
            meta: None,
            task: None,
        }
    }
}

/// `tools/call`'s `task`: how long the task is kept, in ms (the gateway's default when absent).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u64>,
}

/// `tools/call` result: the tool's result, or the task when the call asked for one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum CallResult {
    Done(CallToolResult),
    Task(CreateTaskResult),
}

/// The answer of a call made with `task`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreateTaskResult {
    pub task: Task,
}

/// `tools/register`: the caller offers tools from its socket to every client allowed to call
/// them, on any node, until it unregisters them or the socket closes.
#[derive(Debug)]
pub struct ToolsRegister;

impl Method for ToolsRegister {
    const NAME: &'static str = "tools/register";
    type Params<'a> = RegisterParams;
    type Result = OfferedTools;
}

/// `tools/register` params.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterParams {
    pub tools: Vec<OfferedTool>,
}

/// One tool a client offers: the MCP `Tool` fields, plus how long a call may take and how its
/// results are cached.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OfferedTool {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default)]
    pub description: String,
    pub input_schema: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<Value>,
    /// How long one call may take, in ms (the gateway's `--client-tool-timeout` when absent,
    /// and at most that).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// How successful results are cached (absent: not at all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<OfferedCache>,
}

/// An offered tool's `cache`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OfferedCache {
    pub ttl_ms: u64,
    /// `public` (the default) or `per-user`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

/// What `tools/register` and `tools/unregister` answer: the names of every tool the socket
/// offers now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfferedTools {
    pub tools: Vec<String>,
}

/// `tools/unregister`: the caller stops offering tools (by name). Calls of them that its
/// client has not answered end with an `isError` result.
#[derive(Debug)]
pub struct ToolsUnregister;

impl Method for ToolsUnregister {
    const NAME: &'static str = "tools/unregister";
    type Params<'a> = UnregisterParams;
    type Result = OfferedTools;
}

/// `tools/unregister` params.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnregisterParams {
    pub names: Vec<String>,
}

/// `notifications/progress`, for a call that gave `_meta.progressToken`.
#[derive(Debug)]
pub struct ProgressNotification;

impl Notification for ProgressNotification {
    const NAME: &'static str = "notifications/progress";
    type Params = ProgressParams;
}

/// `notifications/progress` params.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProgressParams {
    pub progress_token: Value,
    pub progress: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// `notifications/tools/list_changed`: the set of tools changed.
#[derive(Debug)]
pub struct ListChanged;

impl Notification for ListChanged {
    const NAME: &'static str = "notifications/tools/list_changed";
    type Params = Empty;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn call_params_ignore_unknown_fields_and_results_read_back() {
        let p: CallParams = serde_json::from_str(
            r#"{"name":"echo","arguments":{"a":1},"_meta":{"progressToken":7},"task":{"ttl":5}}"#,
        )
        .unwrap();
        assert_eq!(p.task.unwrap().ttl, Some(5));
        // MCP's method: a field a newer revision adds is ignored.
        let p: CallParams = serde_json::from_str(r#"{"name":"x","nope":1}"#).unwrap();
        assert_eq!(p.name, "x");
        let done: CallResult =
            serde_json::from_value(json!({"content": [], "isError": true})).unwrap();
        assert!(matches!(done, CallResult::Done(r) if r.is_error));
    }
}
