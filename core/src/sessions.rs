//! Sessions as they are stored: who owns one, which connection holds it now (its generation),
//! the topics it is subscribed to with the last event position each, and the requests whose
//! replies are still owed.
//!
//! A session is one hash in the backend (`<prefix>:s:{<id>}`, see [`crate::keys`]). Fields:
//! `owner` (the identity's subject), `generation` (raised by every attach: the connection holding
//! the highest generation owns the session; writes from an older one are refused, which is how
//! a taken-over connection learns it lost), `node`, `t:<topic>` (last event id, or empty for a
//! topic without history) and `r:<request id as raw JSON>` (`<task id> <deadline ms>`).
//!
//! The hash expires: while a connection holds the session its node keeps pushing the expiry
//! ahead (`ttl + 2 refresh intervals`); when the socket closes it is set to the session ttl.
//! A node that dies without saying so leaves the longer expiry, so a session always lives at
//! least its ttl after its socket is gone.

use std::collections::BTreeMap;

use switchboard_protocol::EventId;

/// Field of the owner's subject.
pub const FIELD_OWNER: &str = "owner";
/// Field of the generation.
pub const FIELD_GEN: &str = "gen";
/// Field of the node holding the session.
pub const FIELD_NODE: &str = "node";
/// Field names of subscriptions start with this, followed by the topic.
pub const TOPIC_PREFIX: &str = "t:";
/// Field names of owed requests start with this, followed by the request id (raw JSON).
pub const REQUEST_PREFIX: &str = "r:";

/// The field that stores a subscription.
pub fn topic_field(topic: &str) -> String {
    format!("{TOPIC_PREFIX}{topic}")
}

/// The field that stores a request in flight.
pub fn request_field(raw_id: &str) -> String {
    format!("{REQUEST_PREFIX}{raw_id}")
}

/// A request whose reply the session is owed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwedRequest {
    /// The request id, as the client sent it (raw JSON).
    pub raw_id: String,
    /// The caller's task.
    pub task_id: String,
    /// Unix ms after which the call answers -32005; 0 for none (`tasks/result`).
    pub deadline_ms: u64,
}

impl OwedRequest {
    /// The stored value of the request's field.
    pub fn value(&self) -> String {
        format!("{} {}", self.task_id, self.deadline_ms)
    }
}

/// A session as read when a connection attaches to it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SessionRecord {
    pub owner: String,
    /// The generation of the attaching connection (already raised).
    pub generation: u64,
    /// Subscribed topics and the last event position stored for each.
    pub topics: BTreeMap<String, Option<EventId>>,
    pub requests: Vec<OwedRequest>,
}

impl SessionRecord {
    /// Reads a record from the hash's fields; unknown fields are ignored.
    pub fn from_fields<'a>(fields: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut rec = SessionRecord::default();
        for (k, v) in fields {
            if k == FIELD_OWNER {
                rec.owner = v.to_owned();
            } else if k == FIELD_GEN {
                rec.generation = v.parse().unwrap_or(0);
            } else if let Some(topic) = k.strip_prefix(TOPIC_PREFIX) {
                rec.topics.insert(topic.to_owned(), EventId::parse(v));
            } else if let Some(raw_id) = k.strip_prefix(REQUEST_PREFIX)
                && let Some((task, deadline)) = v.split_once(' ')
            {
                rec.requests.push(OwedRequest {
                    raw_id: raw_id.to_owned(),
                    task_id: task.to_owned(),
                    deadline_ms: deadline.parse().unwrap_or(0),
                });
            }
        }
        rec
    }
}

/// What attaching a connection to a stored session found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attach {
    /// The session, now held by the caller at `record.gen`.
    Resumed(SessionRecord),
    /// No such session (never was, or expired).
    NotFound,
    /// The session belongs to another identity; nothing was changed.
    WrongOwner,
}

/// One fenced change to a session: applied only while `generation` still holds it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionUpdate {
    pub id: String,
    pub generation: u64,
    /// The expiry to set, in ms (0: the session is removed now).
    pub ttl_ms: u64,
    /// When the session is gone (a Redis restarted without persistence): write it again for
    /// this owner and node at `generation`, then apply the fields (which must then be all of
    /// them). `None`: report it [`Missing`](UpdateOutcome::Missing).
    pub recreate: Option<(String, String)>,
    pub set: Vec<(String, String)>,
    pub del: Vec<String>,
}

/// What became of a [`SessionUpdate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateOutcome {
    Applied,
    /// A newer connection holds the session.
    TakenOver,
    /// The session is not stored (expired, or lost with a Redis restart).
    Missing,
}

/// A new session's id: 128 random bits in hex.
pub fn new_session_id() -> String {
    crate::encoding::random_id()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_reads_its_fields() {
        let rec = SessionRecord::from_fields([
            ("owner", "alice"),
            ("gen", "3"),
            ("node", "gw-1"),
            ("t:chat:1", "5-2"),
            ("t:plain", ""),
            ("r:7", "task-a 1700"),
            ("r:\"x\"", "task-b 0"),
            ("junk", "x"),
        ]);
        assert_eq!(rec.owner, "alice");
        assert_eq!(rec.generation, 3);
        assert_eq!(
            rec.topics.get("chat:1"),
            Some(&Some(EventId { ms: 5, seq: 2 }))
        );
        assert_eq!(rec.topics.get("plain"), Some(&None));
        assert_eq!(rec.requests.len(), 2);
        let r = rec.requests.iter().find(|r| r.raw_id == "7").unwrap();
        assert_eq!(r.task_id, "task-a");
        assert_eq!(r.deadline_ms, 1700);
        assert_eq!(
            OwedRequest {
                raw_id: "7".into(),
                task_id: "t".into(),
                deadline_ms: 9
            }
            .value(),
            "t 9"
        );
        assert_eq!(topic_field("a"), "t:a");
        assert_eq!(request_field("1"), "r:1");
    }

    #[test]
    fn ids_are_random_hex() {
        let a = new_session_id();
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(a, new_session_id());
    }
}
