//! What a token grants, on top of the node's rules: claim `topics` (pattern -> operations),
//! claim `tools` (patterns), claim `register` (patterns of tools it may offer), and, in a subscription token, claim `topic` (one topic name). A
//! grant only ever adds; malformed grants refuse the token rather than being half-read.

use super::claims::{AuthError, Claims};
use crate::pattern::glob;

/// Longest pattern a grant or rule may hold.
pub const MAX_PATTERN_LEN: usize = 256;

/// Grants one token may carry, at most (each pattern is checked against every name asked).
pub const MAX_GRANTS: usize = 256;

/// An operation on a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `subscribe` (with or without `since`: a replay reads what a subscription would).
    Sub,
    /// `publish`.
    Pub,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Sub => "sub",
            Op::Pub => "pub",
        }
    }
}

/// A set of topic operations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ops {
    pub sub: bool,
    pub publish: bool,
}

impl Ops {
    pub const NONE: Ops = Ops {
        sub: false,
        publish: false,
    };
    pub const ALL: Ops = Ops {
        sub: true,
        publish: true,
    };

    /// Parses `sub`, `pub`, `sub,pub` (or `none`, or nothing: no operation).
    pub fn parse(list: &str) -> Result<Self, String> {
        let mut ops = Ops::NONE;
        for op in list.split(',').map(str::trim).filter(|o| !o.is_empty()) {
            ops.add(op)?;
        }
        Ok(ops)
    }

    fn add(&mut self, op: &str) -> Result<(), String> {
        match op {
            "sub" => self.sub = true,
            "pub" => self.publish = true,
            "none" => {}
            other => return Err(format!("unknown operation {other:?} (sub, pub or none)")),
        }
        Ok(())
    }

    pub fn has(self, op: Op) -> bool {
        match op {
            Op::Sub => self.sub,
            Op::Pub => self.publish,
        }
    }

    pub fn union(self, other: Ops) -> Ops {
        Ops {
            sub: self.sub || other.sub,
            publish: self.publish || other.publish,
        }
    }
}

/// Checks a topic pattern: the topic alphabet plus `*`.
pub fn check_topic_pattern(p: &str) -> Result<(), String> {
    check_pattern(p, |c| {
        c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '/' | '@' | '-' | '*')
    })
}

/// Checks a tool pattern: the tool-name alphabet plus `*`.
pub fn check_tool_pattern(p: &str) -> Result<(), String> {
    check_pattern(p, |c| {
        c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '*')
    })
}

fn check_pattern(p: &str, allowed: impl Fn(char) -> bool) -> Result<(), String> {
    if p.is_empty() || p.len() > MAX_PATTERN_LEN {
        return Err(format!("pattern must be 1 to {MAX_PATTERN_LEN} characters"));
    }
    match p.chars().find(|c| !allowed(*c)) {
        Some(c) => Err(format!("pattern {p:?} has the character {c:?}")),
        None => Ok(()),
    }
}

/// What one token grants. Empty for a token that carries no grant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    topics: Vec<(String, Ops)>,
    tools: Vec<String>,
    /// Tools the holder may offer from its socket (`tools/register`).
    register: Vec<String>,
    /// A subscription token's topic (exact name): `sub` on it.
    topic: Option<String>,
}

impl Grants {
    /// The grants in `claims`; `topic` is read only for a subscription token
    /// (`subscription`), never for a connection's own token.
    pub fn from_claims(claims: &Claims, subscription: bool) -> Result<Self, AuthError> {
        let bad = AuthError::BadGrants;
        let mut g = Grants::default();
        if let Some(topics) = &claims.topics {
            if topics.len() > MAX_GRANTS {
                return Err(bad(format!("more than {MAX_GRANTS} topic grants")));
            }
            for (pattern, ops) in topics {
                check_topic_pattern(pattern).map_err(bad)?;
                let mut set = Ops::NONE;
                for op in ops {
                    set.add(op).map_err(bad)?;
                }
                g.topics.push((pattern.clone(), set));
            }
        }
        if let Some(tools) = &claims.tools {
            if tools.len() > MAX_GRANTS {
                return Err(bad(format!("more than {MAX_GRANTS} tool grants")));
            }
            for pattern in tools {
                check_tool_pattern(pattern).map_err(bad)?;
                g.tools.push(pattern.clone());
            }
        }
        if let Some(register) = &claims.register {
            if register.len() > MAX_GRANTS {
                return Err(bad(format!("more than {MAX_GRANTS} register grants")));
            }
            for pattern in register {
                check_tool_pattern(pattern).map_err(bad)?;
                g.register.push(pattern.clone());
            }
        }
        if subscription && let Some(topic) = &claims.topic {
            switchboard_protocol::topic::validate(topic)
                .map_err(|e| bad(format!("topic claim: {e}")))?;
            g.topic = Some(topic.clone());
        }
        Ok(g)
    }

    /// What the grants allow on `topic`: the union of every grant that covers it.
    pub fn topic_ops(&self, topic: &str) -> Ops {
        let mut ops = self
            .topics
            .iter()
            .filter(|(p, _)| glob(p, topic))
            .fold(Ops::NONE, |acc, (_, o)| acc.union(*o));
        if self.topic.as_deref() == Some(topic) {
            ops.sub = true;
        }
        ops
    }

    /// Whether a tool grant covers `tool`.
    pub fn tool(&self, tool: &str) -> bool {
        self.tools.iter().any(|p| glob(p, tool))
    }

    /// Whether a register grant covers offering `tool`.
    pub fn register(&self, tool: &str) -> bool {
        self.register.iter().any(|p| glob(p, tool))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn claims(topics: &[(&str, &[&str])], tools: &[&str], topic: Option<&str>) -> Claims {
        Claims {
            topics: Some(
                topics
                    .iter()
                    .map(|(p, o)| (p.to_string(), o.iter().map(|s| s.to_string()).collect()))
                    .collect::<BTreeMap<_, _>>(),
            ),
            tools: Some(tools.iter().map(|s| s.to_string()).collect()),
            topic: topic.map(str::to_owned),
            ..Claims::subject("alice")
        }
    }

    #[test]
    fn grants_cover_exactly_their_patterns() {
        let c = claims(
            &[("chat:42", &["sub", "pub"]), ("user:alice:*", &["sub"])],
            &["search.*", "echo"],
            None,
        );
        let g = Grants::from_claims(&c, false).unwrap();
        assert_eq!(g.topic_ops("chat:42"), Ops::ALL);
        assert_eq!(g.topic_ops("chat:421"), Ops::NONE);
        assert_eq!(g.topic_ops("chat:4"), Ops::NONE);
        assert!(g.topic_ops("user:alice:inbox").sub);
        assert!(!g.topic_ops("user:alice:inbox").publish);
        assert_eq!(g.topic_ops("user:alicex"), Ops::NONE);
        assert_eq!(g.topic_ops("user:bob:inbox"), Ops::NONE);
        assert!(g.tool("search.web") && g.tool("echo"));
        assert!(!g.tool("echo2") && !g.tool("search"));
        // Calling is not offering.
        assert!(!g.register("echo"));
        let g = Grants::from_claims(
            &Claims {
                register: Some(vec!["alice.*".into()]),
                ..Claims::subject("alice")
            },
            false,
        )
        .unwrap();
        assert!(g.register("alice.lookup") && !g.register("bob.lookup") && !g.tool("alice.x"));
    }

    #[test]
    fn the_topic_claim_counts_only_in_a_subscription_token() {
        let c = claims(&[], &[], Some("private:alice"));
        assert_eq!(
            Grants::from_claims(&c, false)
                .unwrap()
                .topic_ops("private:alice"),
            Ops::NONE
        );
        let g = Grants::from_claims(&c, true).unwrap();
        assert!(g.topic_ops("private:alice").sub);
        assert!(!g.topic_ops("private:alice").publish);
        assert_eq!(g.topic_ops("private:alice2"), Ops::NONE);
    }

    #[test]
    fn malformed_grants_refuse_the_token() {
        for c in [
            claims(&[("chat:42", &["admin"])], &[], None),
            claims(&[("chat 42", &["sub"])], &[], None),
            claims(&[("", &["sub"])], &[], None),
            claims(&[], &["bad tool!"], None),
            Claims {
                register: Some(vec!["bad tool!".into()]),
                ..Claims::subject("alice")
            },
            claims(&[], &[], Some("a*")),
        ] {
            assert!(
                matches!(Grants::from_claims(&c, true), Err(AuthError::BadGrants(_))),
                "{c:?}"
            );
        }
    }

    #[test]
    fn ops_parse() {
        assert_eq!(Ops::parse("sub,pub").unwrap(), Ops::ALL);
        assert!(!Ops::parse("sub").unwrap().publish);
        assert_eq!(Ops::parse("none").unwrap(), Ops::NONE);
        assert_eq!(Ops::parse("").unwrap(), Ops::NONE);
        assert!(Ops::parse("sub,write").is_err());
    }
}
