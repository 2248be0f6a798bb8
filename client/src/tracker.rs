//! What a session knows about each topic the app wants: the last event id it delivered (to drop
//! duplicates), the newest position the gateway vouched for, and so where to resume from.
//!
//! A topic's *known* position is the later of the last id delivered and the last `position` a
//! `subscribe` reply (or a resume) gave. After a reconnect it is what the session asks to
//! continue from: in `hello {positions}` on a resume, as `subscribe {since}` otherwise. A topic
//! that was subscribed but has no known position (its history was empty, or it keeps none)
//! resumes from `0-0`, the start of its history, so that nothing published during the gap is
//! missed silently: a topic without history answers `recovered: false` to that.

use std::collections::{BTreeMap, HashMap};

use switchboard_protocol::EventId;

#[derive(Debug, Default)]
struct TopicState {
    /// The id of the last event delivered to the app.
    last: Option<EventId>,
    /// The newest position a subscribe reply or a resume gave.
    floor: Option<EventId>,
    /// A subscribe of it was answered at least once: the gateway has been told about it, and
    /// the session owes the app every event since.
    confirmed: bool,
}

impl TopicState {
    fn known(&self) -> Option<EventId> {
        self.last.max(self.floor)
    }
}

/// The session's topics.
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    topics: HashMap<String, TopicState>,
}

impl Tracker {
    /// The app wants `topic`; returns the `since` its subscribe request should carry.
    pub(crate) fn want(&mut self, topic: &str) -> Option<String> {
        self.topics.entry(topic.to_owned()).or_default();
        self.since(topic)
    }

    /// The `since` to subscribe `topic` with after a reconnect (nothing for a topic never
    /// confirmed: the app asked for it from now on).
    pub(crate) fn since(&self, topic: &str) -> Option<String> {
        let t = self.topics.get(topic)?;
        t.confirmed
            .then(|| t.known().unwrap_or(EventId::ZERO).to_string())
    }

    /// A subscribe of `topic` was answered (or restored by a resume) with `position`.
    pub(crate) fn confirm(&mut self, topic: &str, position: Option<&str>) {
        if let Some(t) = self.topics.get_mut(topic) {
            t.confirmed = true;
            t.floor = t.floor.max(position.and_then(EventId::parse));
        }
    }

    /// The app no longer wants `topic`.
    pub(crate) fn forget(&mut self, topic: &str) {
        self.topics.remove(topic);
    }

    pub(crate) fn wants(&self, topic: &str) -> bool {
        self.topics.contains_key(topic)
    }

    pub(crate) fn topics(&self) -> Vec<String> {
        let mut v: Vec<String> = self.topics.keys().cloned().collect();
        v.sort();
        v
    }

    /// Whether an event goes to the app: its topic is wanted and, when it has an id, the id is
    /// newer than the last one delivered for the topic (which it then becomes).
    pub(crate) fn admit(&mut self, topic: &str, id: Option<&str>) -> bool {
        let Some(t) = self.topics.get_mut(topic) else {
            return false;
        };
        match id.and_then(EventId::parse) {
            None => true,
            Some(id) if t.last.is_some_and(|last| id <= last) => false,
            Some(id) => {
                t.last = Some(id);
                true
            }
        }
    }

    /// The known position of every topic that has one, for `hello {positions}`.
    pub(crate) fn positions(&self) -> BTreeMap<String, String> {
        self.topics
            .iter()
            .filter(|(_, t)| t.confirmed)
            .filter_map(|(topic, t)| Some((topic.clone(), t.known()?.to_string())))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_what_was_delivered_and_passes_events_without_ids() {
        let mut t = Tracker::default();
        assert!(!t.admit("a", Some("1-0")), "not wanted");
        assert_eq!(t.want("a"), None, "a new topic starts from now");
        assert!(t.admit("a", Some("5-0")));
        assert!(!t.admit("a", Some("5-0")), "duplicate");
        assert!(!t.admit("a", Some("4-9")), "older");
        assert!(t.admit("a", None), "no id: passes");
        assert!(t.admit("a", Some("bad")), "unparseable id: passes");
        assert!(t.admit("a", Some("5-1")));
        // Topics are independent.
        t.want("b");
        assert!(t.admit("b", Some("1-0")));
        t.forget("a");
        assert!(!t.admit("a", Some("9-0")));
    }

    #[test]
    fn resumes_from_the_later_of_delivered_and_vouched_for() {
        let mut t = Tracker::default();
        t.want("a");
        assert_eq!(
            t.positions(),
            BTreeMap::new(),
            "unconfirmed: nothing owed yet"
        );
        t.confirm("a", Some("10-0"));
        assert_eq!(t.since("a").as_deref(), Some("10-0"));
        assert!(t.admit("a", Some("11-0")));
        assert_eq!(t.since("a").as_deref(), Some("11-0"));
        t.confirm("a", Some("20-3"));
        assert_eq!(t.positions()["a"], "20-3");
        // An older position never moves it back.
        t.confirm("a", Some("1-0"));
        assert_eq!(t.want("a").as_deref(), Some("20-3"));
        // Confirmed without any position: from the start of its history.
        t.want("b");
        t.confirm("b", None);
        assert_eq!(t.since("b").as_deref(), Some("0-0"));
        assert!(!t.positions().contains_key("b"));
        assert_eq!(t.topics(), vec!["a".to_owned(), "b".to_owned()]);
    }
}
