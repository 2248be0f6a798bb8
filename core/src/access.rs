//! Who may subscribe, publish and call what: the node's rules (`--allow`, `--allow-tools`)
//! plus what the caller's token grants ([`crate::auth::Grants`]). Default deny: an operation
//! is allowed only when a rule or a grant allows it. A node in open mode (`switchboard dev`,
//! or a gateway with `--allow-anonymous` and no rule) allows everything.
//!
//! Topic rules are `PATTERN=OPS` (`chat:*=sub,pub`). The first rule whose pattern matches the
//! topic decides what the rules allow on it (so a narrow rule goes before a broad one:
//! `chat:announce=sub` then `chat:*=sub,pub`; `OPS` may be `none`). `{sub}` in a pattern stands
//! for the caller's subject, as a literal and a whole `:`-separated segment: `user:{sub}:*`
//! gives every user their own topics. A subject that could not be one segment of a topic name
//! (empty, a character outside the topic alphabet, or `:`, with which `alice:x` would reach
//! into `user:alice:*`) makes such a rule match nothing for that caller. The token's grants then add what they cover.
//!
//! Tool rules are patterns (`echo`, `search.*`); a tool is allowed when a rule or a tool grant
//! covers it. Offering a tool from a socket (`tools/register`) takes a `register` grant that
//! covers its name (or open mode); no node rule allows it.

use crate::auth::{Identity, Op, Ops};
use crate::auth::{MAX_PATTERN_LEN, check_tool_pattern, check_topic_pattern};
use crate::pattern::glob;

/// What a rule pattern holds in place of the caller's subject.
pub const SUBJECT: &str = "{sub}";

/// One topic rule: `PATTERN=OPS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicRule {
    pattern: String,
    ops: Ops,
    /// Whether the pattern names `{sub}`.
    per_subject: bool,
}

impl TopicRule {
    /// Parses `PATTERN=OPS`, e.g. `chat:*=sub,pub` or `user:{sub}:*=sub`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (pattern, ops) = s.rsplit_once('=').ok_or_else(|| {
            format!("{s:?}: expected PATTERN=OPS (OPS: sub, pub, sub,pub or none)")
        })?;
        if ops.trim().is_empty() {
            return Err(format!("{s:?}: OPS is empty (sub, pub, sub,pub or none)"));
        }
        let ops = Ops::parse(ops).map_err(|e| format!("{s:?}: {e}"))?;
        let per_subject = pattern.contains(SUBJECT);
        if !subject_is_whole_segments(pattern) {
            return Err(format!(
                "{s:?}: {{sub}} must be a whole segment, between `:`s or at an end \
                 (`user:{{sub}}:*`): next to anything else (`user:{{sub}}*`, \
                 `user:{{sub}}.*`) a subject like \"alice.x\" would reach into alice's topics"
            ));
        }
        check_topic_pattern(&pattern.replace(SUBJECT, "x")).map_err(|e| format!("{s:?}: {e}"))?;
        Ok(TopicRule {
            pattern: pattern.to_owned(),
            ops,
            per_subject,
        })
    }

    /// What this rule allows `subject` on `topic`; `None` when it does not match.
    fn decide(&self, subject: &str, topic: &str) -> Option<Ops> {
        let matched = if self.per_subject {
            subject_segment(subject) && glob(&self.pattern.replace(SUBJECT, subject), topic)
        } else {
            glob(&self.pattern, topic)
        };
        matched.then_some(self.ops)
    }
}

/// Whether every `{sub}` in `pattern` is a whole `:`-separated segment.
fn subject_is_whole_segments(pattern: &str) -> bool {
    pattern.match_indices(SUBJECT).all(|(at, _)| {
        let before = pattern[..at].chars().next_back();
        let after = pattern[at + SUBJECT.len()..].chars().next();
        matches!(before, None | Some(':')) && matches!(after, None | Some(':'))
    })
}

/// Whether a subject may stand in a `{sub}` rule: one topic segment, without `*`.
fn subject_segment(subject: &str) -> bool {
    !subject.is_empty()
        && subject.len() <= MAX_PATTERN_LEN
        && subject
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | '@' | '-'))
}

/// One tool rule: a pattern of tool names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolRule(String);

impl ToolRule {
    pub fn parse(s: &str) -> Result<Self, String> {
        check_tool_pattern(s).map_err(|e| format!("{s:?}: {e}"))?;
        Ok(ToolRule(s.to_owned()))
    }
}

/// The node's access policy: see the module docs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    open: bool,
    topics: Vec<TopicRule>,
    tools: Vec<ToolRule>,
}

impl Policy {
    /// Everything allowed to everyone (`switchboard dev`; `--allow-anonymous` with no rule).
    pub fn open() -> Self {
        Policy {
            open: true,
            ..Policy::default()
        }
    }

    /// Default deny, with these rules.
    pub fn rules(topics: Vec<TopicRule>, tools: Vec<ToolRule>) -> Self {
        Policy {
            open: false,
            topics,
            tools,
        }
    }

    pub fn is_open(&self) -> bool {
        self.open
    }

    /// What `who` may do on `topic`: the first matching rule's operations plus the grants'.
    pub fn topic_ops(&self, who: &Identity, topic: &str) -> Ops {
        if self.open {
            return Ops::ALL;
        }
        let ruled = self
            .topics
            .iter()
            .find_map(|r| r.decide(&who.subject, topic))
            .unwrap_or(Ops::NONE);
        ruled.union(who.grants.topic_ops(topic))
    }

    pub fn may(&self, who: &Identity, op: Op, topic: &str) -> bool {
        self.topic_ops(who, topic).has(op)
    }

    /// Whether `who` may see and call `tool`.
    pub fn may_call(&self, who: &Identity, tool: &str) -> bool {
        self.open || self.tools.iter().any(|r| glob(&r.0, tool)) || who.grants.tool(tool)
    }

    /// Whether `who` may offer `tool` from its socket (`tools/register`).
    pub fn may_register(&self, who: &Identity, tool: &str) -> bool {
        self.open || who.grants.register(tool)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use super::*;
    use crate::auth::{Claims, Grants};

    fn who(sub: &str) -> Identity {
        Identity {
            subject: Arc::from(sub),
            expires_at: None,
            grants: Arc::new(Grants::default()),
        }
    }

    fn policy(topics: &[&str], tools: &[&str]) -> Policy {
        Policy::rules(
            topics
                .iter()
                .map(|r| TopicRule::parse(r).unwrap())
                .collect(),
            tools.iter().map(|r| ToolRule::parse(r).unwrap()).collect(),
        )
    }

    #[test]
    fn default_deny_and_first_rule_wins() {
        let p = policy(&["chat:announce=sub", "chat:*=sub,pub"], &[]);
        let bob = who("bob");
        assert!(p.may(&bob, Op::Pub, "chat:42"));
        assert!(p.may(&bob, Op::Sub, "chat:announce"));
        assert!(!p.may(&bob, Op::Pub, "chat:announce"));
        assert!(!p.may(&bob, Op::Sub, "news:1"));
        assert!(!p.may_call(&bob, "echo"));
        let none = policy(&["chat:secret=none", "chat:*=sub"], &[]);
        assert!(!none.may(&bob, Op::Sub, "chat:secret"));
        assert!(Policy::open().may(&bob, Op::Pub, "anything"));
        assert!(Policy::open().may_call(&bob, "anything"));
    }

    #[test]
    fn subject_rules_give_each_user_their_own_topics() {
        let p = policy(&["user:{sub}:*=sub"], &[]);
        assert!(p.may(&who("alice"), Op::Sub, "user:alice:inbox"));
        assert!(!p.may(&who("alice"), Op::Pub, "user:alice:inbox"));
        assert!(!p.may(&who("bob"), Op::Sub, "user:alice:inbox"));
        // Subjects that could escape their segment match nothing.
        for sneaky in ["alice:x", "*", "al*", "", "alice bob", "a|b"] {
            assert!(
                !p.may(&who(sneaky), Op::Sub, "user:alice:x:inbox")
                    && !p.may(&who(sneaky), Op::Sub, "user:alice:inbox"),
                "{sneaky:?}"
            );
        }
        assert!(p.may(
            &who("alice@example.com"),
            Op::Sub,
            "user:alice@example.com:x"
        ));
        // {sub} is a whole segment, or a subject could reach into another's topics.
        for escape in [
            "user:{sub}*=sub",
            "user:{sub}.*=sub",
            "user:{sub}-x=sub",
            "dm:*-{sub}=sub",
            "dm:a{sub}=sub",
            "u/{sub}/*=sub",
        ] {
            assert!(TopicRule::parse(escape).is_err(), "{escape}");
        }
        assert!(TopicRule::parse("user:{sub}=sub").is_ok());
        assert!(TopicRule::parse("{sub}:inbox=sub").is_ok());
        assert!(TopicRule::parse("dm:*:{sub}=sub").is_ok());
        assert!(TopicRule::parse("chat:*=").is_err());
        assert!(TopicRule::parse("chat:*").is_err());
        assert!(TopicRule::parse("chat *=sub").is_err());
        assert!(TopicRule::parse("chat:*=write").is_err());
    }

    #[test]
    fn grants_add_and_never_remove() {
        let p = policy(&["chat:*=sub"], &["echo"]);
        let claims = Claims {
            topics: Some(BTreeMap::from([(
                "chat:42".to_owned(),
                vec!["pub".to_owned()],
            )])),
            tools: Some(vec!["search.*".to_owned()]),
            ..Claims::subject("alice")
        };
        let alice = Identity::from_claims(&claims).unwrap();
        assert!(p.may(&alice, Op::Sub, "chat:42") && p.may(&alice, Op::Pub, "chat:42"));
        assert!(p.may(&alice, Op::Sub, "chat:7") && !p.may(&alice, Op::Pub, "chat:7"));
        assert!(p.may_call(&alice, "echo") && p.may_call(&alice, "search.web"));
        assert!(!p.may_call(&alice, "admin"));
        assert!(!p.may_call(&who("bob"), "search.web"));
    }
}
