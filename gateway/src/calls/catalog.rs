//! The tool catalogue of this node: the union of what live workers announce, read from the
//! backend every `registry_interval`, with each tool's argument schema compiled once.
//!
//! When the set of tools changes (a worker came or went, a tool changed version or schema),
//! every connection that completed `hello` gets `notifications/tools/list_changed`, encoded once.
//! A tool announced by several workers is taken from the first (by worker id), a worker's before
//! a client's (`tools/register`: a client never shadows a worker's tool); a tool whose schema
//! does not compile is left out, with a warning.
//!
//! Each read also sets `switchboard_tool_workers{tool}`: the workers announcing each tool (a
//! tool seen once stays, at 0, when its last worker goes: an alert can fire on it).

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use switchboard_core::backend::CallPlane;
use switchboard_core::calls::WorkerAnnouncement;
use switchboard_core::tools::ToolSpec;
use switchboard_protocol::jsonrpc;
use switchboard_protocol::methods::tools::ListChanged;
use switchboard_protocol::methods::{Empty, Notification};

use crate::conns::Conns;
use crate::metrics::Metrics;

/// One tool, ready to take calls.
pub(crate) struct CatalogTool {
    pub(crate) spec: ToolSpec,
    /// `spec.digest()` and `spec.queue_id()`, computed once: every call needs them.
    pub(crate) digest: String,
    pub(crate) queue: String,
    /// Offered by a client's socket (`tools/register`), not announced by a worker.
    offered: bool,
    validator: jsonschema::Validator,
}

impl CatalogTool {
    /// The tool's `tool` label in the metrics: its name for a worker's tool, `(client)` for
    /// one a client offers (clients choose those names: they must not add label values).
    pub(crate) fn metric_label(&self) -> &str {
        match self.offered {
            true => "(client)",
            false => &self.spec.name,
        }
    }

    /// Checks arguments against the tool's input schema; the error says why.
    pub(crate) fn check(&self, arguments: &serde_json::Value) -> Result<(), String> {
        self.validator.validate(arguments).map_err(|e| {
            let path = e.instance_path().to_string();
            if path.is_empty() {
                e.to_string()
            } else {
                format!("{e} (at {path})")
            }
        })
    }
}

/// See the module docs.
#[derive(Default)]
pub(crate) struct Catalog {
    pub(crate) tools: BTreeMap<String, Arc<CatalogTool>>,
    /// The tools' identities (name and digest), to tell a change.
    fingerprint: Vec<(String, String)>,
}

/// The node's current catalogue, replaced whole on change.
#[derive(Default)]
pub(crate) struct CatalogCell(RwLock<Arc<Catalog>>);

impl CatalogCell {
    pub(crate) fn get(&self) -> Arc<Catalog> {
        self.0.read().expect("poisoned").clone()
    }

    fn set(&self, c: Catalog) {
        *self.0.write().expect("poisoned") = Arc::new(c);
    }
}

fn build(mut workers: Vec<WorkerAnnouncement>) -> Catalog {
    // Stable: by worker id within each kind.
    workers.sort_by_key(|w| w.client);
    let mut tools = BTreeMap::new();
    for w in workers {
        for spec in w.tools {
            if tools.contains_key(&spec.name) {
                continue;
            }
            match jsonschema::validator_for(&spec.input_schema) {
                Ok(validator) => {
                    let digest = spec.digest();
                    let queue = switchboard_core::tools::queue_id_of(&spec.name, &digest);
                    tools.insert(
                        spec.name.clone(),
                        Arc::new(CatalogTool {
                            spec,
                            digest,
                            queue,
                            offered: w.client,
                            validator,
                        }),
                    );
                }
                Err(e) => {
                    tracing::warn!(tool = %spec.name, worker = %w.worker_id, error = %e, "tool left out: its input schema does not compile");
                }
            }
        }
    }
    let fingerprint = tools
        .values()
        .map(|t: &Arc<CatalogTool>| (t.spec.name.clone(), t.digest.clone()))
        .collect();
    Catalog { tools, fingerprint }
}

/// Sets `switchboard_tool_workers{tool}` from one read of the registry (workers only, not
/// clients offering tools).
/// `seen`: the tools counted so far.
fn count_workers(metrics: &Metrics, workers: &[WorkerAnnouncement], seen: &mut HashSet<String>) {
    let mut counts: HashMap<&str, i64> = HashMap::new();
    for w in workers.iter().filter(|w| !w.client) {
        for t in &w.tools {
            *counts.entry(t.name.as_str()).or_default() += 1;
        }
    }
    for (tool, n) in &counts {
        metrics
            .tool_workers
            .get_or_create(&[("tool", Cow::Owned((*tool).to_owned()))])
            .set(*n);
    }
    // Tools seen before and announced by no worker now: 0, not gone.
    for tool in seen.iter().filter(|t| !counts.contains_key(t.as_str())) {
        metrics
            .tool_workers
            .get_or_create(&[("tool", Cow::Owned(tool.clone()))])
            .set(0);
    }
    seen.extend(counts.keys().map(|t| (*t).to_owned()));
}

/// Keeps `cell` current from the worker registry, every `interval`; tells every open
/// connection when the set of tools changed.
pub(crate) async fn run(
    cell: Arc<CatalogCell>,
    calls: Arc<dyn CallPlane>,
    conns: Arc<Conns>,
    interval: Duration,
    metrics: Arc<Metrics>,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut first = true;
    let mut seen = HashSet::new();
    loop {
        tick.tick().await;
        let workers = match calls.workers().await {
            Ok(w) => w,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the worker registry");
                continue;
            }
        };
        count_workers(&metrics, &workers, &mut seen);
        let next = build(workers);
        if next.fingerprint == cell.get().fingerprint {
            first = false;
            continue;
        }
        tracing::info!(tools = ?next.tools.keys().collect::<Vec<_>>(), "tool catalogue changed");
        cell.set(next);
        if !first {
            conns.broadcast(&jsonrpc::encode_notification(ListChanged::NAME, &Empty {}));
        }
        first = false;
    }
}
