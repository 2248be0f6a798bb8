//! Topic history: which topics keep one (rules by pattern, like Centrifugo namespaces), event
//! ids, how a history event travels live, and how an event carries its publisher.
//!
//! A history event is appended to the topic's stream (`<prefix>:h:{topic}`) and published live
//! in one step (the Redis Function `sb_publish`, or the in-memory equivalent). Its live message
//! is `#<id> <json>`: a payload that starts with `#` cannot be JSON, so a gateway tells history
//! events (with an id) from plain `PUBLISH`es (without) at a glance. Ids are Redis stream ids,
//! `<ms>-<seq>`, increasing within a topic; `subscribe {since}` takes one.

use std::time::Duration;

use switchboard_protocol::EventId;
use switchboard_protocol::event::{self, PayloadError};

/// Which topics keep history, and how much.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryRule {
    /// A topic pattern: `*` matches any run of characters (`chat:*`, `*:events`, `*`).
    pub pattern: String,
    /// Events kept per topic (older ones are trimmed).
    pub max_len: u64,
    /// How long a topic's history lives after its last event (0: no expiry).
    pub ttl: Duration,
}

impl HistoryRule {
    /// Parses `PATTERN=MAXLEN[:TTL_MS]`, e.g. `chat:*=1000:3600000`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (pattern, rest) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?}: expected PATTERN=MAXLEN[:TTL_MS]"))?;
        let (len, ttl) = match rest.split_once(':') {
            Some((l, t)) => (l, Some(t)),
            None => (rest, None),
        };
        let max_len: u64 = len
            .parse()
            .map_err(|_| format!("{s:?}: MAXLEN must be a whole number"))?;
        if max_len == 0 || pattern.is_empty() {
            return Err(format!("{s:?}: needs a pattern and MAXLEN of at least 1"));
        }
        let ttl = match ttl {
            Some(t) => Duration::from_millis(
                t.parse()
                    .map_err(|_| format!("{s:?}: TTL_MS must be a whole number"))?,
            ),
            None => Duration::ZERO,
        };
        Ok(HistoryRule {
            pattern: pattern.to_owned(),
            max_len,
            ttl,
        })
    }

    pub fn matches(&self, topic: &str) -> bool {
        crate::pattern::glob(&self.pattern, topic)
    }
}

/// The first rule whose pattern matches the topic.
pub fn rule_for<'a>(rules: &'a [HistoryRule], topic: &str) -> Option<&'a HistoryRule> {
    rules.iter().find(|r| r.matches(topic))
}

/// Splits a live message into the history id (for `#<id> <json>`) and the JSON.
pub fn split_live(payload: &[u8]) -> (Option<EventId>, &[u8]) {
    if let Some(rest) = payload.strip_prefix(b"#")
        && let Some(space) = rest.iter().position(|b| *b == b' ')
        && let Some(id) = std::str::from_utf8(&rest[..space])
            .ok()
            .and_then(EventId::parse)
    {
        return (Some(id), &rest[space + 1..]);
    }
    (None, payload)
}

/// The live message of a history event.
pub fn live_message(id: EventId, data: &str) -> String {
    format!("#{id} {data}")
}

/// The body of an event a client published: `@<subject as a JSON string> <json>` (JSON text
/// never starts with `@`), live and in the history's `d` field alike, so that its publisher
/// travels with it through any backend and on replay. A body without `@` is a backend's event.
pub fn published_body(from: &str, data: &str) -> String {
    let from = serde_json::to_string(from).expect("a string always encodes");
    let mut body = String::with_capacity(from.len() + data.len() + 2);
    body.push('@');
    body.push_str(&from);
    body.push(' ');
    body.push_str(data);
    body
}

/// Checks an event body (after any `#<id> ` prefix): the event's JSON as text, and its
/// publisher as a JSON string literal (quotes included) when a client published it.
pub fn check_body(body: &[u8]) -> Result<(&str, Option<&str>), PayloadError> {
    let Some(rest) = body.strip_prefix(b"@") else {
        return Ok((event::check_payload(body)?, None));
    };
    // The literal ends at the first unescaped quote after the opening one.
    let mut end = None;
    let mut escaped = false;
    for (i, b) in rest.iter().enumerate().skip(1) {
        match (escaped, *b) {
            (true, _) => escaped = false,
            (false, b'\\') => escaped = true,
            (false, b'"') => {
                end = Some(i + 1);
                break;
            }
            _ => {}
        }
    }
    let end = end.ok_or(PayloadError::NotJson)?;
    let from = event::check_from(&rest[..end])?;
    let data = rest[end..]
        .strip_prefix(b" ")
        .ok_or(PayloadError::NotJson)?;
    Ok((event::check_payload(data)?, Some(from)))
}

/// How much one history read may carry: it stops after `events` events, or after the event
/// that brings its data to `bytes` or more (a read always carries at least one event, however
/// big), so each read costs the backend a bounded amount of work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageBounds {
    pub events: usize,
    pub bytes: usize,
}

/// One read of a topic's history: the first events after `since`, within [`PageBounds`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryPage {
    /// Events after `since`, oldest first, as stored (not checked: any backend writes them).
    pub events: Vec<(EventId, Vec<u8>)>,
    /// Whether the history still reached back to `since` (nothing after it was trimmed).
    pub recovered: bool,
    /// The topic's latest id when it was read, if it has any history.
    pub position: Option<EventId>,
    /// The read stopped at a bound: events after the last one may follow.
    pub more: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_and_match() {
        let r = HistoryRule::parse("chat:*=100:60000").unwrap();
        assert_eq!((r.max_len, r.ttl), (100, Duration::from_secs(60)));
        assert!(r.matches("chat:42") && !r.matches("news:1"));
        assert!(HistoryRule::parse("*=5").unwrap().matches("anything"));
        assert!(HistoryRule::parse("*:ev=5").unwrap().matches("a:b:ev"));
        assert!(HistoryRule::parse("a*b*c=5").unwrap().matches("aXbYc"));
        assert!(!HistoryRule::parse("a*b*c=5").unwrap().matches("aXbY"));
        assert!(HistoryRule::parse("exact=5").unwrap().matches("exact"));
        assert!(!HistoryRule::parse("exact=5").unwrap().matches("exact2"));
        // No exponential blow-up on many stars against a long topic.
        let many = HistoryRule::parse("*:*:*:*:x=5").unwrap();
        assert!(!many.matches(&":".repeat(199)));
        assert!(HistoryRule::parse("x").is_err());
        assert!(HistoryRule::parse("x=0").is_err());
        assert!(HistoryRule::parse("x=a").is_err());
    }

    #[test]
    fn published_bodies_carry_their_publisher() {
        let body = published_body("al\"ice", r#"{"from":"mallory"}"#);
        assert_eq!(body, r#"@"al\"ice" {"from":"mallory"}"#);
        assert_eq!(
            check_body(body.as_bytes()).unwrap(),
            (r#"{"from":"mallory"}"#, Some(r#""al\"ice""#))
        );
        assert_eq!(check_body(b"[1]").unwrap(), ("[1]", None));
        for bad in [&b"@\"x {}"[..], b"@\"x\"{}", b"@x {}", b"@\"x\" nope", b"@"] {
            assert!(
                check_body(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn live_messages_split() {
        let id = EventId { ms: 5, seq: 2 };
        let m = live_message(id, r#"{"a":1}"#);
        assert_eq!(split_live(m.as_bytes()), (Some(id), &br#"{"a":1}"#[..]));
        assert_eq!(split_live(b"{\"a\":1}"), (None, &b"{\"a\":1}"[..]));
        assert_eq!(split_live(b"#garbage"), (None, &b"#garbage"[..]));
    }
}
