//! `tasks/get`, `tasks/result`, `tasks/cancel`, the `notifications/cancelled` notification,
//! and the replies a resumed session is owed.
//!
//! Every call is a task bound to its caller; these answer from the task record, on any node.
//! `tasks/result` waits in a task of its own, like a call, owed by the session meanwhile; after
//! a resume, each owed reply is answered the same way, with its original request id.

use std::sync::Arc;
use std::time::Duration;

use serde_json::value::RawValue;
use switchboard_core::clock::now_ms;
use switchboard_core::sessions::OwedRequest;
use switchboard_core::tasks::{TaskRecord, session_task_id};
use switchboard_protocol::RpcError;
use switchboard_protocol::methods::Method;
use switchboard_protocol::methods::tasks::{
    Cancelled, CancelledParams, Task, TaskIdParams, TasksCancel, TasksGet, TasksResult,
};
use switchboard_protocol::methods::tools::CallToolResult;

use super::caller::Caller;

/// How many times a session's `notifications/cancelled` looks for its call's task
/// (`Tasks::cancel_session_request`): the first look and the retries.
const SESSION_CANCEL_LOOKUPS: u32 = 5;
/// The pause between two of those looks (all of them: 200 ms at most).
const SESSION_CANCEL_PAUSE: Duration = Duration::from_millis(50);
use super::encode::{Reply, encode, encode_later, params};
use super::tools::CallSettings;
use crate::calls::inflight::InFlight;
use crate::calls::outcome::{Outcomes, not_found, result_for, send_later};
use crate::sessions::{LiveSession, Sessions};
use crate::transport::Sender;

/// The `tasks/*` methods and the handles they need.
pub(crate) struct Tasks {
    pub(crate) outcomes: Arc<Outcomes>,
    pub(crate) sessions: Arc<Sessions>,
    pub(crate) settings: CallSettings,
}

impl Tasks {
    /// Routes `tasks/get`, `tasks/result`, `tasks/cancel` and `notifications/cancelled`
    /// (`None`: not one of them).
    pub(crate) async fn route(
        &self,
        caller: &Caller,
        id: Option<&RawValue>,
        method: &str,
        raw: Option<&RawValue>,
    ) -> Option<Reply> {
        // Each arm an async block, so that `?` ends the arm with its error.
        Some(match method {
            TasksGet::NAME => {
                async { encode(id, &self.get(caller, params::<TasksGet>(raw)?).await?) }.await
            }
            TasksResult::NAME => {
                async {
                    encode_later(
                        id,
                        self.result(caller, id, params::<TasksResult>(raw)?).await?,
                    )
                }
                .await
            }
            TasksCancel::NAME => {
                async { encode(id, &self.cancel(caller, params::<TasksCancel>(raw)?).await?) }.await
            }
            Cancelled::NAME => {
                // A notification: params that do not fit are ignored, like everything else
                // about it.
                if let Ok(p) = params::<Cancelled>(raw) {
                    self.cancelled(caller, p);
                }
                Ok(None)
            }
            _ => return None,
        })
    }

    /// `tasks/get`: the caller's task, as the caller sees it.
    pub(crate) async fn get(&self, caller: &Caller, p: TaskIdParams) -> Result<Task, RpcError> {
        let own = self.outcomes.own_task(&p.task_id, caller.owner()).await?;
        Ok(self.outcomes.effective(&own).await?.mcp())
    }

    /// `tasks/cancel`: cancels the caller's task (-32602 when it is already done).
    pub(crate) async fn cancel(&self, caller: &Caller, p: TaskIdParams) -> Result<Task, RpcError> {
        let own = self.outcomes.own_task(&p.task_id, caller.owner()).await?;
        let shown = self.outcomes.effective(&own).await?;
        if shown.status.is_terminal() {
            return Err(RpcError::invalid_params(format!(
                "task is already {}",
                shown.status.as_str()
            )));
        }
        let calls = &self.outcomes.calls;
        calls
            .cancel(&own)
            .await
            .map_err(|_| RpcError::backend_unavailable())?;
        let after = calls
            .task(&own.task_id)
            .await
            .map_err(|_| RpcError::backend_unavailable())?
            .ok_or_else(not_found)?;
        Ok(after.mcp())
    }

    /// `tasks/result`: waits (in a task of its own) until the outcome is there. `Ok(None)`:
    /// the reply will be queued by that task.
    pub(crate) async fn result(
        &self,
        caller: &Caller,
        id: Option<&RawValue>,
        p: TaskIdParams,
    ) -> Result<Option<CallToolResult>, RpcError> {
        let own = self.outcomes.own_task(&p.task_id, caller.owner()).await?;
        let Some(id) = id.map(RawValue::to_owned) else {
            return Ok(None);
        };
        // No task id: cancelling a wait must not cancel the task it waits for.
        caller
            .calls
            .track(id.get(), "", self.settings.max_inflight)?;
        let owed = OwedRequest {
            raw_id: id.get().to_owned(),
            task_id: own.task_id.clone(),
            deadline_ms: 0,
        };
        tokio::spawn(
            self.waiter(caller, "")
                .answer_when_done(id, Some(own), owed),
        );
        Ok(None)
    }

    /// `notifications/cancelled {requestId}`: cancels that call's task; the call gets no reply.
    pub(crate) fn cancelled(&self, caller: &Caller, p: CancelledParams<'_>) {
        let Some(task_id) = caller.calls.cancel(p.request_id.get()) else {
            return;
        };
        // A cancelled call is owed no reply.
        if let Some(live) = &caller.live {
            live.answered(p.request_id.get());
        }
        let calls = self.outcomes.calls.clone();
        tokio::spawn(async move {
            if let Ok(Some(task)) = calls.task(&task_id).await
                && let Err(e) = calls.cancel(&task).await
            {
                tracing::warn!(error = %e, "cancelling a call failed");
            }
        });
    }

    /// `notifications/cancelled` for a call of an MCP session over HTTP, sent to any node:
    /// the call's task is named after the session and the request id
    /// ([`session_task_id`]). Another owner's task, or one already done: nothing.
    ///
    /// The call's submission may still be on its way (its task is written a few Redis round
    /// trips after the request came in): a task not found is looked for again, up to
    /// [`SESSION_CANCEL_LOOKUPS`] times [`SESSION_CANCEL_PAUSE`] apart.
    pub(crate) async fn cancel_session_request(&self, owner: &str, session: &str, raw_id: &str) {
        let name = session_task_id(session, raw_id);
        let mut lookups = 1;
        let task = loop {
            match self.outcomes.own_task(&name, owner).await {
                Ok(task) => break task,
                Err(_) if lookups < SESSION_CANCEL_LOOKUPS => {
                    lookups += 1;
                    tokio::time::sleep(SESSION_CANCEL_PAUSE).await;
                }
                Err(_) => return,
            }
        };
        if task.status.is_terminal() {
            return;
        }
        if let Err(e) = self.outcomes.calls.cancel(&task).await {
            tracing::warn!(error = %e, "cancelling a call failed");
        }
    }

    /// A resumed session's owed replies: each is answered on this connection when its call is
    /// done, with the request id it was asked under.
    pub(crate) fn resume_owed(&self, caller: &Caller, owed: Vec<OwedRequest>) {
        for o in owed {
            let Ok(id) = RawValue::from_string(o.raw_id.clone()) else {
                continue;
            };
            if caller
                .calls
                .track(&o.raw_id, &o.task_id, self.settings.max_inflight)
                .is_err()
            {
                continue;
            }
            let task_id = o.task_id.clone();
            tokio::spawn(self.waiter(caller, &task_id).answer_when_done(id, None, o));
        }
    }

    fn waiter(&self, caller: &Caller, tracked_as: &str) -> Waiter {
        Waiter {
            outcomes: self.outcomes.clone(),
            sessions: self.sessions.clone(),
            deadline_grace: self.settings.deadline_grace,
            tx: caller.link.tx.clone(),
            in_flight: caller.calls.clone(),
            live: caller.live.clone(),
            tracked_as: tracked_as.to_owned(),
        }
    }
}

/// What a request answered later needs from its node and its connection.
struct Waiter {
    outcomes: Arc<Outcomes>,
    sessions: Arc<Sessions>,
    deadline_grace: Duration,
    tx: Sender,
    in_flight: InFlight,
    live: Option<Arc<LiveSession>>,
    /// The value the request is tracked under in `in_flight` (its task id, or "").
    tracked_as: String,
}

impl Waiter {
    /// Answers request `id` with the outcome of task `owed.task_id` when it is there (or
    /// -32005 at the deadline, if it has one). The session is owed the reply meanwhile, so a
    /// resume anywhere answers it if this socket goes first. `own`: the task, when already read.
    async fn answer_when_done(self, id: Box<RawValue>, own: Option<TaskRecord>, owed: OwedRequest) {
        let key = id.get().to_owned();
        let _untrack = self.in_flight.untrack_on_drop(&key, &self.tracked_as);
        if let Some(live) = &self.live {
            self.sessions.owe(live, &owed).await;
        }
        let deadline = (owed.deadline_ms > 0).then(|| {
            tokio::time::Instant::now()
                + Duration::from_millis(owed.deadline_ms.saturating_sub(now_ms()))
                + self.deadline_grace
        });
        let waiting = async {
            let own = match own {
                Some(own) => own,
                None => match self.outcomes.calls.task(&owed.task_id).await {
                    Ok(Some(t)) if self.live.as_ref().is_some_and(|l| *l.owner == *t.owner) => t,
                    Ok(_) => return Err(not_found()),
                    Err(_) => return Err(RpcError::backend_unavailable()),
                },
            };
            let done = self.outcomes.wait(&own, None, deadline).await?;
            Ok::<_, RpcError>(result_for(&own, &done, own.cached))
        };
        let reply = tokio::select! {
            reply = waiting => reply,
            _ = self.tx.closed() => return,
        };
        // Cancelled by `notifications/cancelled`, or the id reused by a newer request: no reply.
        if !self.in_flight.untrack(&key, &self.tracked_as) {
            return;
        }
        send_later(&self.tx, self.live.clone(), &id, reply).await;
    }
}
