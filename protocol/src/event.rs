//! Events as clients receive them: the id a history event carries, the `event` notification
//! (built once per published event and shared by every subscriber), and the check every
//! published payload passes before it reaches a socket.

use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// An event id: a Redis stream id, `<milliseconds>-<sequence>`, increasing within a topic.
/// Events of topics with history carry one; `subscribe {since}` takes one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId {
    pub ms: u64,
    pub seq: u64,
}

impl EventId {
    pub const ZERO: EventId = EventId { ms: 0, seq: 0 };

    pub fn parse(s: &str) -> Option<Self> {
        let (ms, seq) = s.split_once('-')?;
        Some(EventId {
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }

    /// The id after `self` for a new event at `now_ms` (what Redis's `*` does).
    pub fn next_at(self, now_ms: u64) -> Self {
        if now_ms > self.ms {
            EventId { ms: now_ms, seq: 0 }
        } else {
            EventId {
                ms: self.ms,
                seq: self.seq + 1,
            }
        }
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// The method name of the event notification.
pub const EVENT: &str = "event";

/// The params of an `event` notification, as a client decodes them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventParams {
    pub topic: String,
    pub data: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The subject of the client that published the event, set by the gateway (events that
    /// backends publish through Redis carry none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
}

const EVENT_HEAD: &[u8] = b"{\"jsonrpc\":\"2.0\",\"method\":\"event\",\"params\":{\"topic\":\"";

/// Builds the `event` notification for one published event, once, for all its subscribers.
///
/// `topic` must be a valid topic name (its alphabet needs no JSON escaping) and `data` must be
/// valid JSON text (see [`check_payload`]); both are copied verbatim.
pub fn encode_event(topic: &str, data: &str) -> Bytes {
    encode_event_with_id(topic, data, None, None)
}

/// [`encode_event`] for an event with a history id (`"id"` in the params) and a publisher
/// (`"from"`; `from_json` is the subject as a JSON string literal, quotes included, copied
/// verbatim: see [`check_from`]).
pub fn encode_event_with_id(
    topic: &str,
    data: &str,
    id: Option<EventId>,
    from_json: Option<&str>,
) -> Bytes {
    debug_assert!(crate::topic::validate(topic).is_ok());
    let extra = from_json.map_or(0, |f| f.len() + 10);
    let mut out = Vec::with_capacity(EVENT_HEAD.len() + topic.len() + data.len() + 48 + extra);
    out.extend_from_slice(EVENT_HEAD);
    out.extend_from_slice(topic.as_bytes());
    out.extend_from_slice(b"\",\"data\":");
    out.extend_from_slice(data.as_bytes());
    if let Some(id) = id {
        use std::io::Write;
        let _ = write!(out, ",\"id\":\"{id}\"");
    }
    if let Some(from) = from_json {
        out.extend_from_slice(b",\"from\":");
        out.extend_from_slice(from.as_bytes());
    }
    out.extend_from_slice(b"}}");
    Bytes::from(out)
}

/// Checks that `literal` is one JSON string (quotes included), as a publisher's subject
/// travels.
pub fn check_from(literal: &[u8]) -> Result<&str, PayloadError> {
    let text = std::str::from_utf8(literal).map_err(|_| PayloadError::NotUtf8)?;
    if !text.starts_with('"') {
        return Err(PayloadError::NotJson);
    }
    serde_json::from_str::<serde::de::IgnoredAny>(text).map_err(|_| PayloadError::NotJson)?;
    Ok(text)
}

/// Why an event payload was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    #[error("payload is not UTF-8")]
    NotUtf8,
    #[error("payload is not valid JSON")]
    NotJson,
}

/// Checks that a payload published by a backend is one valid JSON value (in UTF-8, as a
/// WebSocket text frame requires), and returns it as text.
pub fn check_payload(payload: &[u8]) -> Result<&str, PayloadError> {
    let text = std::str::from_utf8(payload).map_err(|_| PayloadError::NotUtf8)?;
    serde_json::from_str::<serde::de::IgnoredAny>(text).map_err(|_| PayloadError::NotJson)?;
    Ok(text)
}

/// Whether the JSON text `json` nests arrays and objects more than `max` deep (`1` and `"a"`
/// are depth 0, `[1]` depth 1). One pass over the bytes, no allocation; brackets inside
/// strings do not count. For valid JSON; on other text the answer means nothing.
pub fn nests_deeper_than(json: &str, max: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for b in json.bytes() {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_order_and_round_trip() {
        let a = EventId::parse("1700000000000-0").unwrap();
        let b = EventId::parse("1700000000000-1").unwrap();
        let c = EventId::parse("1700000000001-0").unwrap();
        assert!(a < b && b < c);
        assert_eq!(a.to_string(), "1700000000000-0");
        assert_eq!(a.next_at(1_700_000_000_000), b);
        assert_eq!(b.next_at(1_700_000_000_001), c);
        assert_eq!(EventId::parse("nope"), None);
    }

    #[test]
    fn event_frame_is_valid_json() {
        let f = encode_event("chat:1", r#"{"text":"hi"}"#);
        let v: serde_json::Value = serde_json::from_slice(&f).unwrap();
        assert_eq!(v["method"], "event");
        assert_eq!(v["params"]["topic"], "chat:1");
        assert_eq!(v["params"]["data"]["text"], "hi");
        let f = encode_event_with_id(
            "chat:1",
            "1",
            Some(EventId { ms: 5, seq: 2 }),
            Some(r#""al\"ice""#),
        );
        let e: EventParams = serde_json::from_value(
            serde_json::from_slice::<serde_json::Value>(&f).unwrap()["params"].clone(),
        )
        .unwrap();
        assert_eq!(e.id.as_deref(), Some("5-2"));
        assert_eq!(e.from.as_deref(), Some("al\"ice"));
        assert!(check_from(br#""bob""#).is_ok());
        assert!(check_from(br#""bob"#).is_err());
        assert!(check_from(b"bob").is_err());
        assert!(check_from(b"1").is_err());
    }

    #[test]
    fn nesting_depth() {
        assert!(!nests_deeper_than("1", 0));
        assert!(nests_deeper_than("[1]", 0));
        assert!(!nests_deeper_than(r#"{"a":[1,{"b":2}]}"#, 3));
        assert!(nests_deeper_than(r#"{"a":[1,{"b":2}]}"#, 2));
        // Brackets in strings, escaped quotes included, do not count.
        assert!(!nests_deeper_than(r#"["[[[[\"{{{{"]"#, 1));
        let deep = format!("{}{}", "[".repeat(30_000), "]".repeat(30_000));
        assert!(nests_deeper_than(&deep, 64));
        let wide = format!("[{}]", vec!["[1]"; 1000].join(","));
        assert!(!nests_deeper_than(&wide, 2));
    }

    #[test]
    fn payload_check() {
        assert!(check_payload(b" {\"a\": [1, 2]}\n").is_ok());
        assert!(check_payload(b"\"s\"").is_ok());
        assert_eq!(check_payload(b"not json"), Err(PayloadError::NotJson));
        assert_eq!(check_payload(b"{} {}"), Err(PayloadError::NotJson));
        assert_eq!(check_payload(b"\"\xff\""), Err(PayloadError::NotUtf8));
    }
}
