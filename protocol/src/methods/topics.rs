//! Topics: `subscribe` (with `since`, a replay of the history), `unsubscribe`, `publish`.
//! Events arrive as the `event` notification ([`crate::event`]).

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{Empty, Method};

/// `subscribe`.
#[derive(Debug)]
pub struct Subscribe;

impl Method for Subscribe {
    const NAME: &'static str = "subscribe";
    type Params<'a> = SubscribeParams;
    type Result = SubscribeResult;
}

/// `subscribe` params.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SubscribeParams {
    pub topic: String,
    /// An event id (`<ms>-<seq>`): replay what came after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// A subscription token: a JWT of the connection's subject whose `topic` claim (or
    /// `topics` grant) covers this topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// `subscribe` result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubscribeResult {
    pub topic: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovered: Option<bool>,
}

/// `unsubscribe`.
#[derive(Debug)]
pub struct Unsubscribe;

impl Method for Unsubscribe {
    const NAME: &'static str = "unsubscribe";
    type Params<'a> = UnsubscribeParams;
    type Result = Empty;
}

/// `unsubscribe` params.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UnsubscribeParams {
    pub topic: String,
}

/// `publish`.
#[derive(Debug)]
pub struct Publish;

impl Method for Publish {
    const NAME: &'static str = "publish";
    type Params<'a> = PublishParams<'a>;
    type Result = PublishResult;
}

/// `publish` params, with `data` kept as raw JSON so that it is never re-encoded.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PublishParams<'a> {
    #[serde(borrow)]
    pub topic: Cow<'a, str>,
    #[serde(borrow)]
    pub data: &'a RawValue,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<bool>,
}

/// `publish` result: the event's id on a topic with history.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PublishResult {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}
