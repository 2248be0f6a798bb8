//! Where one subscriber of a history topic is in the topic: what the fan-out has queued to it
//! (its duplicates filter) and what has been written to its socket (what its session saves).

use std::sync::Mutex;

use switchboard_protocol::EventId;

use crate::transport::{Mark, Written};

/// Where one subscriber of a history topic is: the last event queued to its socket (what the
/// fan-out de-duplicates against) and the last one written to it (what its session saves, so
/// a resume never skips an event that was queued but not yet written when the socket died).
#[derive(Debug, Default)]
pub(crate) struct Position(Mutex<PositionState>);

#[derive(Debug, Default, Clone, Copy)]
struct PositionState {
    /// The start is known (a fresh subscription learns it after its backend subscription is in
    /// place; until then a recovery has no starting point for it).
    known: bool,
    queued: Option<EventId>,
    written: Option<EventId>,
}

impl Position {
    /// A subscriber whose client has everything up to `at` (`None`: from the very start).
    pub(crate) fn at(at: Option<EventId>) -> Self {
        Position(Mutex::new(PositionState {
            known: true,
            queued: at,
            written: at,
        }))
    }

    /// A fresh subscriber whose start is not read yet.
    pub(crate) fn unknown() -> Self {
        Position::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, PositionState> {
        self.0.lock().expect("position lock poisoned")
    }

    /// Moves the queued position to `id` if it is newer; false for an event this subscriber
    /// already has.
    pub(crate) fn advance(&self, id: EventId) -> bool {
        let mut p = self.state();
        if p.queued.is_some_and(|q| q >= id) {
            return false;
        }
        p.queued = Some(id);
        true
    }

    /// The event `id` was written to the socket.
    pub(crate) fn written(&self, id: EventId) {
        let mut p = self.state();
        if p.written.is_none_or(|w| w < id) {
            p.written = Some(id);
        }
    }

    /// The subscriber's start is now known: it has everything up to `at`.
    pub(crate) fn start_at(&self, at: Option<EventId>) {
        let mut p = self.state();
        p.known = true;
        if let Some(at) = at {
            p.queued = Some(p.queued.map_or(at, |q| q.max(at)));
            p.written = Some(p.written.map_or(at, |w| w.max(at)));
        }
    }

    /// Starts over at `at` (a `since` the history never reached: nothing up to it is had).
    pub(crate) fn reset(&self, at: Option<EventId>) {
        *self.state() = PositionState {
            known: true,
            queued: at,
            written: at,
        };
    }

    /// Where a read-back of the history starts for this subscriber: `None` while its start is
    /// not known; the very start when it has nothing yet.
    pub(crate) fn recovery_start(&self) -> Option<EventId> {
        let p = self.state();
        p.known.then(|| p.queued.unwrap_or(EventId::ZERO))
    }

    /// What the session saves: the last event written (`None`: nothing yet).
    pub(crate) fn saved(&self) -> Option<EventId> {
        self.state().written
    }
}

impl Position {
    /// The receipt mark of a queued event: its id.
    pub(crate) fn mark(id: EventId) -> Mark {
        Mark(id.ms, id.seq)
    }
}

/// The writer says an event was written: the saved position moves to it.
impl Written for Position {
    fn written(&self, mark: Mark) {
        Position::written(
            self,
            EventId {
                ms: mark.0,
                seq: mark.1,
            },
        );
    }
}
