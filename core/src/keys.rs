//! The Redis key and channel schema. Every name Switchboard uses in Redis is built here, so
//! `docs/redis.md` has one place to be checked against.
//!
//! Every key and channel that belongs to a topic carries the topic as a Redis Cluster hash tag
//! (`{<topic>}`), so all of a topic lives in one slot. Topic names cannot contain `{` or `}`
//! (see [`crate::topic`]), so the tag is always the whole topic.

/// The default key prefix (`--redis-prefix`).
pub const DEFAULT_PREFIX: &str = "sb";

/// Builds and parses Redis names under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
    /// `<prefix>:t:{` — the part of a topic channel before the topic.
    channel_head: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Keys {
            prefix: prefix.to_owned(),
            channel_head: format!("{prefix}:t:{{"),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The live pub/sub channel of a topic: `<prefix>:t:{<topic>}`.
    pub fn topic_channel(&self, topic: &str) -> String {
        let mut s = String::with_capacity(self.channel_head.len() + topic.len() + 1);
        s.push_str(&self.channel_head);
        s.push_str(topic);
        s.push('}');
        s
    }

    /// The topic of a live channel name, if the name is one of ours.
    pub fn topic_of_channel<'a>(&self, channel: &'a str) -> Option<&'a str> {
        channel
            .strip_prefix(self.channel_head.as_str())?
            .strip_suffix('}')
    }

    /// The history stream of a topic: `<prefix>:h:{<topic>}` (used from the history issue on;
    /// reserved now so backends can rely on the name).
    pub fn topic_history(&self, topic: &str) -> String {
        format!("{}:h:{{{topic}}}", self.prefix)
    }
}

impl Default for Keys {
    fn default() -> Self {
        Keys::new(DEFAULT_PREFIX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_round_trips() {
        let k = Keys::new("sb");
        let ch = k.topic_channel("chat:42");
        assert_eq!(ch, "sb:t:{chat:42}");
        assert_eq!(k.topic_of_channel(&ch), Some("chat:42"));
        assert_eq!(k.topic_of_channel("other:t:{chat:42}"), None);
        assert_eq!(k.topic_of_channel("sb:t:{chat:42"), None);
        assert_eq!(k.topic_history("a"), "sb:h:{a}");
    }

    #[test]
    fn prefix_is_configurable() {
        let k = Keys::new("tenant1");
        assert_eq!(k.topic_channel("x"), "tenant1:t:{x}");
        assert_eq!(k.topic_of_channel("sb:t:{x}"), None);
    }
}
