//! The tools a worker hosts: the [`Tool`] interface, the [`Toolbox`] that holds them with
//! their specs and per-tool concurrency limits, the built-in demo tools ([`builtin`]) and tools
//! that run a command ([`command`]).

pub mod builtin;
pub mod command;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;
use switchboard_core::calls::Progress;
use switchboard_core::tools::ToolSpec;
use switchboard_protocol::methods::tools::CallToolResult;
use tokio::sync::{Semaphore, mpsc};

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
}

/// The tools of one worker, by name.
#[derive(Default)]
pub struct Toolbox {
    tools: BTreeMap<String, Hosted>,
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
        switchboard_core::tools::validate_tool_name(&spec.name).map_err(|e| {
            ToolboxError::Invalid {
                name: spec.name.clone(),
                why: e.to_string(),
            }
        })?;
        if spec.timeout_ms == 0 || concurrency == 0 {
            return Err(ToolboxError::Invalid {
                name: spec.name.clone(),
                why: "timeout_ms and concurrency must be at least 1".into(),
            });
        }
        if self.tools.contains_key(&spec.name) {
            return Err(ToolboxError::Duplicate(spec.name));
        }
        let name = spec.name.clone();
        self.tools.insert(
            name,
            Hosted {
                queue_id: spec.queue_id(),
                spec,
                tool,
                permits: Arc::new(Semaphore::new(concurrency)),
            },
        );
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&Hosted> {
        self.tools.get(name)
    }

    /// The queue of every hosted tool (`ToolSpec::queue_id`).
    pub fn queue_ids(&self) -> Vec<String> {
        self.tools.values().map(|h| h.queue_id.clone()).collect()
    }

    /// The queues of the tools that can start a call now.
    pub fn queue_ids_with_room(&self) -> Vec<String> {
        self.tools
            .values()
            .filter(|h| h.permits.available_permits() > 0)
            .map(|h| h.queue_id.clone())
            .collect()
    }

    pub fn specs(&self) -> Vec<ToolSpec> {
        self.tools.values().map(|h| h.spec.clone()).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.tools.is_empty()
    }
}
