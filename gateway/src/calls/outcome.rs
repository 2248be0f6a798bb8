//! What became of a call: the task record is the truth. A waiting caller registers with the
//! [`Waiters`] (so the done signal wakes it), reads its task, and, for a call that joined an
//! identical one, its leader's; it polls as well, so a lost signal costs one poll interval.
//! Also the one place a `CallToolResult` answer is built from a task ([`result_for`]), and the
//! one place a later reply is queued to its connection ([`send_later`]).

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};
use switchboard_core::backend::CallPlane;
use switchboard_core::tasks::TaskRecord;
use switchboard_protocol::jsonrpc;
use switchboard_protocol::methods::tasks::TaskStatus;
use switchboard_protocol::methods::tools::{
    CallToolResult, META_CACHED, META_CALL_HASH, META_TASK_ID,
};
use switchboard_protocol::{ErrorCode, RpcError};

use super::waiters::{WaitGuard, Waiters};
use crate::sessions::{LiveSession, OwedReply};
use crate::transport::{Mark, Out, Receipt, Sender};

pub(crate) fn not_found() -> RpcError {
    RpcError::new(ErrorCode::NotFound, "task not found")
}

/// Reads and waits for outcomes; see the module docs.
pub(crate) struct Outcomes {
    pub(crate) calls: Arc<dyn CallPlane>,
    pub(crate) waiters: Arc<Waiters>,
    /// A waiting call re-reads its task this often without a signal.
    pub(crate) poll: Duration,
}

impl Outcomes {
    /// The task `task_id` if it is `owner`'s, or -32004 (also when it belongs to someone
    /// else: existence does not leak).
    pub(crate) async fn own_task(
        &self,
        task_id: &str,
        owner: &str,
    ) -> Result<TaskRecord, RpcError> {
        match self.calls.task(task_id).await {
            Ok(Some(t)) if t.owner == owner => Ok(t),
            Ok(_) => Err(not_found()),
            Err(_) => Err(RpcError::backend_unavailable()),
        }
    }

    /// Waits until the execution behind `own` is done and returns the record holding the
    /// outcome (the leader's, or `own` when it was cancelled itself). -32005 at `deadline`.
    /// `progress`: where to forward the execution's progress meanwhile, with the caller's token.
    pub(crate) async fn wait(
        &self,
        own: &TaskRecord,
        progress: Option<(Value, Sender)>,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<TaskRecord, RpcError> {
        let guard = self.watch(own, progress);
        self.wait_watched(&guard, own, deadline).await
    }

    /// Starts hearing of the execution behind `own` (its end, and its progress for
    /// `progress`) until the guard is dropped: before anything else is awaited, so no early
    /// progress report is missed.
    pub(crate) fn watch(
        &self,
        own: &TaskRecord,
        progress: Option<(Value, Sender)>,
    ) -> WaitGuard<'_> {
        let leader = own.leader.as_deref().unwrap_or(&own.task_id);
        self.waiters.wait_for(leader, progress)
    }

    /// [`watch`](Self::watch) of the execution led by task `leader`.
    pub(crate) fn watch_leader(
        &self,
        leader: &str,
        progress: Option<(Value, Sender)>,
    ) -> WaitGuard<'_> {
        self.waiters.wait_for(leader, progress)
    }

    /// [`wait`](Self::wait) with the execution already watched.
    pub(crate) async fn wait_watched(
        &self,
        guard: &WaitGuard<'_>,
        own: &TaskRecord,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<TaskRecord, RpcError> {
        loop {
            let woken = guard.notify.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            match self.outcome(own).await {
                Ok(Some(done)) => return Ok(done),
                Ok(None) => {}
                // Redis away for a moment: the call goes on; keep waiting until the deadline.
                Err(e) if e.code == ErrorCode::Internal.code() => {
                    tracing::debug!(task = %own.task_id, "task read failed; waiting on");
                }
                Err(e) => return Err(e),
            }
            let poll = tokio::time::sleep(self.poll);
            let past_deadline = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = woken => {}
                _ = poll => {}
                _ = past_deadline => {
                    return Err(RpcError::new(ErrorCode::Timeout, "the call did not finish before its deadline"));
                }
            }
        }
    }

    /// The record holding the outcome of `own`, if the execution is done. A task of its own in
    /// a terminal state (cancelled) is its own outcome; otherwise a joined task follows its
    /// leader.
    async fn outcome(&self, own: &TaskRecord) -> Result<Option<TaskRecord>, RpcError> {
        let fresh = self
            .calls
            .task(&own.task_id)
            .await
            .map_err(|_| RpcError::backend_unavailable())?;
        let Some(mut fresh) = fresh else {
            return Err(not_found());
        };
        if fresh.caller_cancelled {
            // Cancelled for this caller, whatever became of the shared execution for others.
            fresh.status = TaskStatus::Cancelled;
            fresh.status_message = Some("cancelled".into());
            fresh.result = None;
            return Ok(Some(fresh));
        }
        if fresh.status.is_terminal() {
            return Ok(Some(fresh));
        }
        let Some(leader) = &fresh.leader else {
            return Ok(None);
        };
        match self
            .calls
            .task(leader)
            .await
            .map_err(|_| RpcError::backend_unavailable())?
        {
            Some(l) if l.status.is_terminal() => Ok(Some(l)),
            Some(_) => Ok(None),
            None => {
                let mut lost = fresh.clone();
                lost.status = TaskStatus::Failed;
                lost.status_message = Some("the shared execution's task expired".into());
                Ok(Some(lost))
            }
        }
    }

    /// The task as the caller sees it: a joined task shows its execution's state.
    pub(crate) async fn effective(&self, own: &TaskRecord) -> Result<TaskRecord, RpcError> {
        let mut shown = own.clone();
        if let Some(done) = self.outcome(own).await? {
            shown.status = done.status;
            shown.status_message = done.status_message;
            shown.last_updated_at_ms = done.last_updated_at_ms;
        }
        Ok(shown)
    }
}

/// The `CallToolResult` to answer for `own` task, from the record holding the outcome: the
/// tool's result, or an `isError` result saying why there is none; with the caller's task id,
/// the call hash and whether it came from the cache in `_meta`.
pub(crate) fn result_for(own: &TaskRecord, outcome: &TaskRecord, cached: bool) -> CallToolResult {
    let mut result = outcome.result.clone().unwrap_or_else(|| {
        CallToolResult::error(
            outcome
                .status_message
                .clone()
                .unwrap_or_else(|| format!("the call ended {}", outcome.status.as_str())),
        )
    });
    let meta = result.meta.get_or_insert_with(Map::new);
    meta.insert(META_TASK_ID.into(), json!(own.task_id));
    meta.insert(META_CALL_HASH.into(), json!(own.call_hash));
    meta.insert(META_CACHED.into(), json!(cached));
    result
}

/// Queues the reply to request `id`, answered later from a task of its own. With a session,
/// the reply is owed until the writer has written it (a resume elsewhere answers it otherwise).
pub(crate) async fn send_later<T: Serialize>(
    tx: &Sender,
    live: Option<Arc<LiveSession>>,
    id: &RawValue,
    reply: Result<T, RpcError>,
) {
    let frame = match reply {
        Ok(v) => jsonrpc::encode_result(id, &v),
        Err(e) => jsonrpc::encode_error(Some(id), &e),
    };
    let out = match live {
        Some(live) => Out::TextReceipt(
            frame,
            Receipt {
                to: Arc::new(OwedReply {
                    live,
                    raw_id: id.get().to_owned(),
                }),
                mark: Mark::default(),
            },
        ),
        None => Out::Text(frame),
    };
    let _ = tx.send(out).await;
}
