//! The tools a worker hosts: the [`Tool`] interface, the [`Toolbox`] that holds them with
//! their specs and per-tool concurrency limits, the built-in demo tools ([`builtin`]) and tools
//! that run a command ([`command`]) and tools of MCP servers the worker hosts ([`mcp`]).
//!
//! A toolbox is a shared handle: the tools of an MCP server come and go while the worker runs
//! (the server restarts, its tool list changes), so [`Toolbox::replace_group`] swaps a group
//! of tools at once and wakes [`Toolbox::changed`] (the worker re-announces itself then).

pub mod builtin;
pub mod command;
pub mod mcp;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use serde_json::Value;
use switchboard_core::calls::Progress;
use switchboard_core::tools::ToolSpec;
use switchboard_protocol::methods::tools::CallToolResult;
use tokio::sync::{Notify, Semaphore, mpsc};

/// Environment variables a command tool or a stdio MCP server inherits from the worker;
/// everything else comes from the tools file's `env` table.
pub const PASSED_ENV: [&str; 7] = ["PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "USER"];

/// What a running call can use besides its arguments.
pub struct CallContext {
    /// This worker's id (the `sleep` tool reports it).
    pub worker_id: String,
    /// The leader task id (progress reports carry it).
    pub task_id: String,
    progress: mpsc::Sender<Progress>,
}

impl CallContext {
    pub fn new(worker_id: String, task_id: String, progress: mpsc::Sender<Progress>) -> Self {
        CallContext {
            worker_id,
            task_id,
            progress,
        }
    }

    /// Reports progress; dropped when the reporter is behind (progress is advisory).
    pub fn progress(&self, progress: f64, total: Option<f64>, message: Option<String>) {
        self.reporter().report(progress, total, message);
    }

    /// An owned handle for reporting this call's progress from elsewhere (another task).
    pub fn reporter(&self) -> ProgressReporter {
        ProgressReporter {
            task_id: self.task_id.clone(),
            progress: self.progress.clone(),
        }
    }
}

/// Reports one call's progress (see [`CallContext::reporter`]).
#[derive(Clone)]
pub struct ProgressReporter {
    task_id: String,
    progress: mpsc::Sender<Progress>,
}

impl ProgressReporter {
    /// Like [`CallContext::progress`].
    pub fn report(&self, progress: f64, total: Option<f64>, message: Option<String>) {
        let _ = self.progress.try_send(Progress {
            task: self.task_id.clone(),
            progress,
            total,
            message,
        });
    }
}

/// A tool's implementation. Cancellation and timeouts drop the future: an implementation
/// holding a child process must kill it on drop.
#[async_trait]
pub trait Tool: Send + Sync + 'static {
    async fn call(&self, arguments: Value, ctx: &CallContext) -> CallToolResult;
}

/// One hosted tool.
pub struct Hosted {
    pub spec: ToolSpec,
    /// `spec.queue_id()`, computed once.
    pub queue_id: String,
    pub tool: Arc<dyn Tool>,
    /// Calls of this tool running at once on this worker, at most.
    pub permits: Arc<Semaphore>,
    /// The group it came in with ([`Toolbox::replace_group`]), if any.
    group: Option<String>,
}

/// The tools of one worker, by name: a shared handle (clones see the same tools).
#[derive(Clone, Default)]
pub struct Toolbox {
    tools: Arc<RwLock<BTreeMap<String, Arc<Hosted>>>>,
    changed: Arc<Notify>,
}

/// One tool to host: its spec, implementation and calls at once (see [`Toolbox::add`]).
pub struct NewTool {
    pub spec: ToolSpec,
    pub tool: Arc<dyn Tool>,
    pub concurrency: usize,
}

/// Why a toolbox could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ToolboxError {
    #[error("tool {0:?} is defined twice")]
    Duplicate(String),
    #[error("tool {name:?}: {why}")]
    Invalid { name: String, why: String },
    #[error("tools file {path}: {why}")]
    File { path: String, why: String },
}

impl Toolbox {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a tool that runs at most `concurrency` calls at once.
    pub fn add(
        &mut self,
        spec: ToolSpec,
        tool: Arc<dyn Tool>,
        concurrency: usize,
    ) -> Result<(), ToolboxError> {
        let hosted = hosted(
            NewTool {
                spec,
                tool,
                concurrency,
            },
            None,
        )?;
        let mut tools = self.tools.write().expect("poisoned");
        if tools.contains_key(&hosted.spec.name) {
            return Err(ToolboxError::Duplicate(hosted.spec.name.clone()));
        }
        tools.insert(hosted.spec.name.clone(), Arc::new(hosted));
        drop(tools);
        self.changed.notify_one();
        Ok(())
    }

    /// Replaces the tools of `group` with `new` (none: the group is gone). A tool whose spec
    /// did not change keeps its slots (calls running on it count). A new tool named like one
    /// outside the group, or invalid, is left out and returned with the reason; the rest go in.
    pub fn replace_group(&self, group: &str, new: Vec<NewTool>) -> Vec<ToolboxError> {
        let mut refused = Vec::new();
        let mut tools = self.tools.write().expect("poisoned");
        let mut old: BTreeMap<String, Arc<Hosted>> = BTreeMap::new();
        tools.retain(|name, h| {
            if h.group.as_deref() == Some(group) {
                old.insert(name.clone(), h.clone());
                false
            } else {
                true
            }
        });
        for t in new {
            if tools.contains_key(&t.spec.name) {
                refused.push(ToolboxError::Duplicate(t.spec.name));
                continue;
            }
            match old.get(&t.spec.name) {
                Some(h) if h.spec == t.spec => {
                    let h = Arc::new(Hosted {
                        spec: t.spec,
                        queue_id: h.queue_id.clone(),
                        tool: t.tool,
                        permits: h.permits.clone(),
                        group: Some(group.to_owned()),
                    });
                    tools.insert(h.spec.name.clone(), h);
                }
                _ => match hosted(t, Some(group)) {
                    Ok(h) => {
                        tools.insert(h.spec.name.clone(), Arc::new(h));
                    }
                    Err(e) => refused.push(e),
                },
            }
        }
        drop(tools);
        self.changed.notify_one();
        refused
    }

    /// Completes at the next change of the hosted tools, or at once if there was one since the
    /// last wait (one listener: the worker's announce loop).
    pub async fn changed(&self) {
        self.changed.notified().await
    }

    pub fn get(&self, name: &str) -> Option<Arc<Hosted>> {
        self.tools.read().expect("poisoned").get(name).cloned()
    }

    /// The queue of every hosted tool (`ToolSpec::queue_id`).
    pub fn queue_ids(&self) -> Vec<String> {
        let tools = self.tools.read().expect("poisoned");
        tools.values().map(|h| h.queue_id.clone()).collect()
    }

    /// Every hosted tool's name and queue (the metrics sample the queues' depths).
    pub fn tools_and_queues(&self) -> Vec<(String, String)> {
        let tools = self.tools.read().expect("poisoned");
        tools
            .values()
            .map(|h| (h.spec.name.clone(), h.queue_id.clone()))
            .collect()
    }

    /// The queues of the tools that can start a call now.
    pub fn queue_ids_with_room(&self) -> Vec<String> {
        let tools = self.tools.read().expect("poisoned");
        tools
            .values()
            .filter(|h| h.permits.available_permits() > 0)
            .map(|h| h.queue_id.clone())
            .collect()
    }

    pub fn specs(&self) -> Vec<ToolSpec> {
        let tools = self.tools.read().expect("poisoned");
        tools.values().map(|h| h.spec.clone()).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.tools.read().expect("poisoned").is_empty()
    }
}

/// Checks a new tool and gives it its queue and slots.
fn hosted(t: NewTool, group: Option<&str>) -> Result<Hosted, ToolboxError> {
    let invalid = |why: String| ToolboxError::Invalid {
        name: t.spec.name.clone(),
        why,
    };
    switchboard_core::tools::validate_tool_name(&t.spec.name)
        .map_err(|e| invalid(e.to_string()))?;
    if t.spec.timeout_ms == 0 || t.concurrency == 0 {
        return Err(invalid(
            "timeout_ms and concurrency must be at least 1".into(),
        ));
    }
    Ok(Hosted {
        queue_id: t.spec.queue_id(),
        permits: Arc::new(Semaphore::new(t.concurrency)),
        spec: t.spec,
        tool: t.tool,
        group: group.map(str::to_owned),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use switchboard_core::tools::CachePolicy;

    struct Nop;

    #[async_trait]
    impl Tool for Nop {
        async fn call(&self, _arguments: Value, _ctx: &CallContext) -> CallToolResult {
            CallToolResult::structured(json!({}))
        }
    }

    fn new(name: &str, version: &str) -> NewTool {
        NewTool {
            spec: ToolSpec {
                name: name.into(),
                title: None,
                description: String::new(),
                input_schema: json!({"type": "object"}),
                annotations: None,
                version: version.into(),
                cache: CachePolicy::off(),
                timeout_ms: 1000,
            },
            tool: Arc::new(Nop),
            concurrency: 2,
        }
    }

    #[tokio::test]
    async fn groups_are_replaced_whole() {
        let mut tb = Toolbox::new();
        let t = new("fixed", "1");
        tb.add(t.spec, t.tool, 1).unwrap();
        tb.changed().await; // the add
        let view = tb.clone();
        assert!(
            tb.replace_group("g", vec![new("a", "1"), new("b", "1")])
                .is_empty()
        );
        tb.changed().await;
        assert_eq!(view.specs().len(), 3, "clones share the tools");
        let a = view.get("a").unwrap();
        let _busy = a.permits.clone().try_acquire_owned().unwrap();
        // "a" unchanged keeps its slots; "b" gone; "c" new; "fixed" is not the group's.
        let refused = tb.replace_group("g", vec![new("a", "1"), new("c", "1"), new("fixed", "2")]);
        assert_eq!(refused.len(), 1);
        assert!(refused[0].to_string().contains("fixed"), "{}", refused[0]);
        assert!(tb.get("b").is_none());
        assert!(tb.get("c").is_some());
        assert_eq!(tb.get("a").unwrap().permits.available_permits(), 1);
        assert_eq!(tb.get("fixed").unwrap().spec.version, "1");
        // A new version is a new queue.
        tb.replace_group("g", vec![new("a", "2")]);
        assert_ne!(tb.get("a").unwrap().queue_id, a.queue_id);
        tb.replace_group("g", vec![]);
        assert_eq!(tb.queue_ids().len(), 1);
    }
}
