//! The Redis key and channel schema. Every name Switchboard uses in Redis is built here, so
//! `docs/redis.md` has one place to be checked against.
//!
//! Every key and channel that belongs to a topic carries the topic as a Redis Cluster hash tag
//! (`{<topic>}`), so all of a topic lives in one slot. Topic names cannot contain `{` or `}`
//! (see `switchboard_protocol::topic`), so the tag is always the whole topic.

use switchboard_core::tasks::{call_tag, task_tag};

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

    /// A tool version's job queue (a stream with the consumer group [`WORKER_GROUP`]), from its
    /// queue id `<tool>@<digest>` (`ToolSpec::queue_id`): `<prefix>:q:{<tool>}@<digest>`.
    pub fn tool_queue(&self, queue_id: &str) -> String {
        match queue_id.split_once('@') {
            Some((tool, digest)) => format!("{}:q:{{{tool}}}@{digest}", self.prefix),
            None => format!("{}:q:{{{queue_id}}}", self.prefix),
        }
    }

    /// The queue id of a job queue's key: the inverse of [`Keys::tool_queue`] (the tool part
    /// holds no `@`, so the first `@` follows the closing brace).
    pub fn queue_of_stream(&self, key: &str) -> Option<String> {
        let tail = key
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(":q:{")?;
        match tail.find('@') {
            Some(at) => {
                let tool = tail[..at].strip_suffix('}')?;
                Some(format!("{tool}{}", &tail[at..]))
            }
            None => tail.strip_suffix('}').map(str::to_owned),
        }
    }

    /// A task record (hash). A task id that carries its call's tag (`<tag>.<rest>`,
    /// `switchboard_core::tasks::task_tag`) is in the call's slot: `<prefix>:task:{<tag>}.<rest>`;
    /// any other id (issued before ids carried tags, or a session call's alias) keeps the old
    /// name `<prefix>:task:{<task id>}`.
    pub fn task(&self, task_id: &str) -> String {
        match task_tag(task_id) {
            Some((tag, rest)) => format!("{}:task:{{{tag}}}.{rest}", self.prefix),
            None => format!("{}:task:{{{task_id}}}", self.prefix),
        }
    }

    /// A cached result (string), in the call's slot: `<prefix>:r:{<call tag>}:<call hash>`.
    pub fn result(&self, call_hash: &str) -> String {
        format!("{}:r:{{{}}}:{call_hash}", self.prefix, call_tag(call_hash))
    }

    /// The in-flight lease of a call (hash: `task`, `waiters`), in the call's slot:
    /// `<prefix>:l:{<call tag>}:<call hash>`.
    pub fn lease(&self, call_hash: &str) -> String {
        format!("{}:l:{{{}}}:{call_hash}", self.prefix, call_tag(call_hash))
    }

    /// The worker registry (hash: worker id -> announcement): `<prefix>:workers`.
    pub fn workers(&self) -> String {
        format!("{}:workers", self.prefix)
    }

    /// Dead-lettered jobs (stream): `<prefix>:dlq`.
    pub fn dead_letters(&self) -> String {
        format!("{}:dlq", self.prefix)
    }

    /// Channel: a call's execution finished (message: the leader task id).
    pub fn done_channel(&self) -> String {
        format!("{}:c:done", self.prefix)
    }

    /// Channel: progress of a running call (message: JSON with `task` and the progress).
    pub fn progress_channel(&self) -> String {
        format!("{}:c:progress", self.prefix)
    }

    /// A session (hash; see [`crate::sessions`]): `<prefix>:s:{<session id>}`.
    pub fn session(&self, session_id: &str) -> String {
        format!("{}:s:{{{session_id}}}", self.prefix)
    }

    /// Channel: a session was attached by a new connection (message: `<session id> <gen>`);
    /// the node holding an older generation closes that socket with 4009.
    pub fn session_channel(&self) -> String {
        format!("{}:c:session", self.prefix)
    }

    /// A per-identity rate budget (string: its GCRA theoretical arrival time, microseconds of
    /// Redis's clock; `PX` until the budget is full again): `<prefix>:rl:{<identity>}:<budget>`
    /// (`budget`: `pub`, `call`). An identity may hold any character: one with a `}` gets a
    /// shorter hash tag, which only moves the key to another slot (the key itself is still
    /// unique, since it ends with the budget's name).
    pub fn rate(&self, budget: &str, identity: &str) -> String {
        format!("{}:rl:{{{identity}}}:{budget}", self.prefix)
    }

    /// An identity's executions not finished (sorted set: leader task id -> lease expiry, Unix
    /// ms): `<prefix>:u:{<identity>}:run`. Like [`rate`](Self::rate), the identity is the hash
    /// tag, so an identity's keys share a slot.
    pub fn identity_running(&self, identity: &str) -> String {
        self.identity_key(identity, "run")
    }

    /// An identity's stored tasks (sorted set: task id -> expiry, Unix ms):
    /// `<prefix>:u:{<identity>}:tasks`.
    pub fn identity_tasks(&self, identity: &str) -> String {
        self.identity_key(identity, "tasks")
    }

    /// The result bytes of an identity's stored tasks (hash: task id -> bytes, and `_total`):
    /// `<prefix>:u:{<identity>}:bytes`.
    pub fn identity_bytes(&self, identity: &str) -> String {
        self.identity_key(identity, "bytes")
    }

    /// `<prefix>:u:{<identity>}:<what>`, whose hash tag is the identity (up to a `}` it may
    /// hold). An identity that would make an empty tag (empty — a job queued before jobs
    /// carried their owner — or starting with `}`) would have Redis hash each whole key, so
    /// its keys would land in different slots: those take `<prefix>:u-:{_}<identity>:<what>`
    /// instead (one slot for all of them; `u-` is no other key's shape).
    fn identity_key(&self, identity: &str, what: &str) -> String {
        if identity.is_empty() || identity.starts_with('}') {
            format!("{}:u-:{{_}}{identity}:{what}", self.prefix)
        } else {
            format!("{}:u:{{{identity}}}:{what}", self.prefix)
        }
    }

    /// The live connections of a scope (`id:<subject>` or `ip:<address>`; sorted set: member
    /// -> lease expiry, Unix ms): `<prefix>:conns:{<scope>}`.
    pub fn connections(&self, scope: &str) -> String {
        format!("{}:conns:{{{scope}}}", self.prefix)
    }

    /// Channel: cancel a running call (message: the leader task id).
    pub fn cancel_channel(&self) -> String {
        format!("{}:c:cancel", self.prefix)
    }
}

/// The consumer group every worker reads tool queues through.
pub const WORKER_GROUP: &str = "workers";

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
        assert_eq!(k.rate("pub", "alice"), "sb:rl:{alice}:pub");
    }

    #[test]
    fn a_queue_key_gives_back_its_queue() {
        let k = Keys::new("sb");
        for q in ["echo@0a1b", "echo", "a.b-c@x@y", "t}x@d", "{odd}"] {
            assert_eq!(
                k.queue_of_stream(&k.tool_queue(q)).as_deref(),
                Some(q),
                "{q}"
            );
        }
        assert_eq!(k.queue_of_stream("sb:h:{echo}"), None);
        assert_eq!(k.queue_of_stream("other:q:{echo}"), None);
        assert_eq!(k.queue_of_stream("sb:q:{echo"), None);
    }

    #[test]
    fn a_calls_keys_carry_its_tag() {
        let k = Keys::new("sb");
        let hash = format!("0123456789abcdef{}", "0".repeat(48));
        assert_eq!(k.result(&hash), format!("sb:r:{{0123456789abcdef}}:{hash}"));
        assert_eq!(k.lease(&hash), format!("sb:l:{{0123456789abcdef}}:{hash}"));
        assert_eq!(
            k.task("0123456789abcdef.42"),
            "sb:task:{0123456789abcdef}.42"
        );
        // Ids from before the tags keep their old keys.
        let old = "00112233445566778899aabbccddeeff";
        assert_eq!(k.task(old), format!("sb:task:{{{old}}}"));
    }

    #[test]
    fn prefix_is_configurable() {
        let k = Keys::new("tenant1");
        assert_eq!(k.topic_channel("x"), "tenant1:t:{x}");
        assert_eq!(k.topic_of_channel("sb:t:{x}"), None);
    }
}
