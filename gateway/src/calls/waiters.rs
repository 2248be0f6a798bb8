//! Who on this node waits for which execution, and who wants its progress: the backend's call
//! sink.
//!
//! A waiting call registers under its execution's leader task id and is woken when the backend
//! signals that the execution finished; it then reads the task record, which is the truth (a
//! lost signal only delays it until its next poll). Progress goes to every local caller of the
//! execution that gave a `progressToken`, encoded per caller (each has its own token).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use switchboard_core::backend::CallSink;
use switchboard_core::calls::Progress;
use switchboard_protocol::jsonrpc;
use switchboard_protocol::methods::Notification;
use switchboard_protocol::methods::tools::{ProgressNotification, ProgressParams};
use tokio::sync::Notify;

use crate::transport::{Out, Sender};

struct Waiting {
    notify: Arc<Notify>,
    count: usize,
}

struct ProgressSub {
    id: u64,
    token: Value,
    tx: Sender,
}

/// See the module docs.
#[derive(Default)]
pub(crate) struct Waiters {
    waiting: Mutex<HashMap<String, Waiting>>,
    progress: Mutex<HashMap<String, Vec<ProgressSub>>>,
    next_id: std::sync::atomic::AtomicU64,
}

/// A registration; dropping it unregisters.
pub(crate) struct WaitGuard<'a> {
    signals: &'a Waiters,
    leader: String,
    pub(crate) notify: Arc<Notify>,
    progress_id: Option<u64>,
}

impl Waiters {
    /// Registers a wait for the execution led by `leader`, and progress forwarding when the
    /// caller gave a token.
    pub(crate) fn wait_for(
        &self,
        leader: &str,
        progress: Option<(Value, Sender)>,
    ) -> WaitGuard<'_> {
        let notify = {
            let mut w = self.waiting.lock().expect("poisoned");
            let e = w.entry(leader.to_owned()).or_insert_with(|| Waiting {
                notify: Arc::new(Notify::new()),
                count: 0,
            });
            e.count += 1;
            e.notify.clone()
        };
        let progress_id = progress.map(|(token, tx)| {
            let id = self
                .next_id
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.progress
                .lock()
                .expect("poisoned")
                .entry(leader.to_owned())
                .or_default()
                .push(ProgressSub { id, token, tx });
            id
        });
        WaitGuard {
            signals: self,
            leader: leader.to_owned(),
            notify,
            progress_id,
        }
    }

    pub(crate) fn finished(&self, leader: &str) {
        if let Some(w) = self.waiting.lock().expect("poisoned").get(leader) {
            w.notify.notify_waiters();
        }
    }

    pub(crate) fn progress(&self, p: &Progress) {
        let subs = self.progress.lock().expect("poisoned");
        let Some(list) = subs.get(&p.task) else {
            return;
        };
        for s in list {
            let params = ProgressParams {
                progress_token: s.token.clone(),
                progress: p.progress,
                total: p.total,
                message: p.message.clone(),
            };
            // Progress is advisory: a full queue skips it rather than closing the socket.
            let _ = s.tx.try_send(Out::Text(jsonrpc::encode_notification(
                ProgressNotification::NAME,
                &params,
            )));
        }
    }
}

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        let mut w = self.signals.waiting.lock().expect("poisoned");
        if let Some(e) = w.get_mut(&self.leader) {
            e.count -= 1;
            if e.count == 0 {
                w.remove(&self.leader);
            }
        }
        drop(w);
        if let Some(id) = self.progress_id {
            let mut p = self.signals.progress.lock().expect("poisoned");
            if let Some(list) = p.get_mut(&self.leader) {
                list.retain(|s| s.id != id);
                if list.is_empty() {
                    p.remove(&self.leader);
                }
            }
        }
    }
}

/// Executions finished and progress, from the backend.
impl CallSink for Waiters {
    fn call_finished(&self, leader: &str) {
        self.finished(leader);
    }

    fn call_progress(&self, progress: Progress) {
        self.progress(&progress);
    }
}
