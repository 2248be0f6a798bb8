//! Topic names: 1 to 200 bytes of `A-Z a-z 0-9 _ . : / @ -` (`docs/protocol.md` section 6).
//!
//! The character set is chosen so that a topic never needs escaping: not in JSON (the gateway
//! writes topic names into event frames verbatim), not in a Redis hash tag (no `{` or `}`),
//! and not in a URL path.

use std::fmt;
use std::sync::Arc;

/// The longest topic name accepted, in bytes.
pub const MAX_TOPIC_LEN: usize = 200;

/// Topics the gateway keeps for itself: the events of MCP SSE streams, kept so that a client
/// resumes a stream on any node (`docs/mcp.md`). Clients may neither subscribe to nor publish
/// on them (-32003); a node opens one only to the session that owns the stream.
pub const MCP_STREAM_PREFIX: &str = "mcp-stream:";

/// A validated topic name. Cheap to clone: the gateway keeps one per subscription.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Topic(Arc<str>);

/// Why a string is not a topic name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("topic is empty")]
    Empty,
    #[error("topic is longer than {MAX_TOPIC_LEN} bytes")]
    TooLong,
    #[error("topic contains {0:?}; allowed are A-Z a-z 0-9 _ . : / @ -")]
    BadChar(char),
}

impl Topic {
    /// Validates `name` and wraps it.
    pub fn new(name: &str) -> Result<Self, TopicError> {
        validate(name)?;
        Ok(Topic(Arc::from(name)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Checks a topic name without allocating.
pub fn validate(name: &str) -> Result<(), TopicError> {
    if name.is_empty() {
        return Err(TopicError::Empty);
    }
    if name.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong);
    }
    match name.chars().find(|c| !is_topic_char(*c)) {
        Some(c) => Err(TopicError::BadChar(c)),
        None => Ok(()),
    }
}

fn is_topic_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '/' | '@' | '-')
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Topic({:?})", &*self.0)
    }
}

impl std::borrow::Borrow<str> for Topic {
    fn borrow(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_alphabet() {
        for ok in [
            "a",
            "chat:42",
            "user/7@eu-west_1.x",
            &"x".repeat(MAX_TOPIC_LEN),
        ] {
            assert!(Topic::new(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_everything_else() {
        assert_eq!(validate(""), Err(TopicError::Empty));
        assert_eq!(
            validate(&"x".repeat(MAX_TOPIC_LEN + 1)),
            Err(TopicError::TooLong)
        );
        for (bad, c) in [
            ("a b", ' '),
            ("{x}", '{'),
            ("é", 'é'),
            ("a\"b", '"'),
            ("a*", '*'),
        ] {
            assert_eq!(validate(bad), Err(TopicError::BadChar(c)), "{bad}");
        }
    }
}
