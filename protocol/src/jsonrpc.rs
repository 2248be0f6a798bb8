//! The JSON-RPC 2.0 envelope as it crosses the socket (`docs/protocol.md` sections 2-4).
//!
//! Parsing borrows from the frame: `id` and `params` stay raw JSON until the method's params
//! are decoded (once, into the method's type, see [`crate::methods`]), and `id` is echoed back
//! byte for byte. Encoding writes the envelope directly into one buffer.

use std::borrow::Cow;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::meta::MetaTolerant;

/// JSON-RPC error codes (`docs/protocol.md` section 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    ParseError,
    InvalidRequest,
    MethodNotFound,
    InvalidParams,
    Internal,
    Unauthorized,
    Forbidden,
    RateLimited,
    NotFound,
    Timeout,
    Overloaded,
    TooLarge,
}

impl ErrorCode {
    pub const fn code(self) -> i32 {
        match self {
            ErrorCode::ParseError => -32700,
            ErrorCode::InvalidRequest => -32600,
            ErrorCode::MethodNotFound => -32601,
            ErrorCode::InvalidParams => -32602,
            ErrorCode::Internal => -32603,
            ErrorCode::Unauthorized => -32001,
            ErrorCode::Forbidden => -32002,
            ErrorCode::RateLimited => -32003,
            ErrorCode::NotFound => -32004,
            ErrorCode::Timeout => -32005,
            ErrorCode::Overloaded => -32006,
            ErrorCode::TooLarge => -32007,
        }
    }

    pub fn from_code(code: i32) -> Option<Self> {
        use ErrorCode::*;
        [
            ParseError,
            InvalidRequest,
            MethodNotFound,
            InvalidParams,
            Internal,
            Unauthorized,
            Forbidden,
            RateLimited,
            NotFound,
            Timeout,
            Overloaded,
            TooLarge,
        ]
        .into_iter()
        .find(|c| c.code() == code)
    }
}

/// The error object of a JSON-RPC response. What a client sees: a code and a short message,
/// never an internal error's text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RpcError {
    pub code: i32,
    pub message: Cow<'static, str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
}

impl RpcError {
    pub fn new(code: ErrorCode, message: impl Into<Cow<'static, str>>) -> Self {
        RpcError {
            code: code.code(),
            message: message.into(),
            data: None,
        }
    }

    pub fn with_data(mut self, data: serde_json::Value) -> Self {
        self.data = Some(data);
        self
    }

    pub fn kind(&self) -> Option<ErrorCode> {
        ErrorCode::from_code(self.code)
    }

    pub fn parse_error() -> Self {
        Self::new(ErrorCode::ParseError, "parse error: not valid JSON")
    }

    pub fn invalid_request(why: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorCode::InvalidRequest, why)
    }

    pub fn method_not_found(method: &str) -> Self {
        Self::new(
            ErrorCode::MethodNotFound,
            format!("method not found: {}", truncate(method, 64)),
        )
    }

    pub fn invalid_params(why: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorCode::InvalidParams, why)
    }

    pub fn internal() -> Self {
        Self::new(ErrorCode::Internal, "internal error")
    }

    /// -32603 when the backend (Redis) cannot be reached: the client may try again.
    pub fn backend_unavailable() -> Self {
        Self::new(ErrorCode::Internal, "backend unavailable, try again")
    }
}

impl std::fmt::Display for RpcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

impl std::error::Error for RpcError {}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A request or notification from a client, borrowed from its frame.
#[derive(Debug)]
pub struct Request<'a> {
    /// `None` for a notification (no `id` member): it gets no response. `"id": null` is a
    /// request (JSON-RPC 2.0 discourages it but allows it) and is answered with `"id": null`.
    pub id: Option<&'a RawValue>,
    pub method: Cow<'a, str>,
    pub params: Option<&'a RawValue>,
}

/// A frame that could not be read as a request, with what to answer.
#[derive(Debug)]
pub struct BadRequest<'a> {
    /// The id to answer with, when one could be read (else the answer's id is `null`).
    pub id: Option<&'a RawValue>,
    pub error: RpcError,
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow, default)]
    jsonrpc: Option<Cow<'a, str>>,
    /// Present (any value, `null` included) or absent: `Option<&RawValue>` alone would read
    /// `null` as absent.
    #[serde(borrow, default, deserialize_with = "present")]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    method: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    params: Option<&'a RawValue>,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// Parses one text frame as a JSON-RPC request.
///
/// - not JSON: -32700; a JSON array (a batch): -32600; JSON of the wrong shape: -32600.
/// - `jsonrpc` must be `"2.0"`, `method` a string, `id` (if any) a string or a number,
///   `params` (if any) an object or an array.
pub fn parse_request(text: &str) -> Result<Request<'_>, BadRequest<'_>> {
    let first = text.trim_start().as_bytes().first().copied();
    if first == Some(b'[') {
        return Err(BadRequest {
            id: None,
            error: if serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok() {
                RpcError::invalid_request("batches are not supported")
            } else {
                RpcError::parse_error()
            },
        });
    }
    let env: Envelope<'_> = match serde_json::from_str(text) {
        Ok(env) => env,
        Err(_) => {
            let error = if serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok() {
                RpcError::invalid_request("not a JSON-RPC request object")
            } else {
                RpcError::parse_error()
            };
            return Err(BadRequest { id: None, error });
        }
    };
    let id = env.id;
    if let Some(raw) = id {
        let b = raw.get().as_bytes()[0];
        if !(b == b'"' || b == b'-' || b.is_ascii_digit() || raw.get() == "null") {
            return Err(BadRequest {
                id: None,
                error: RpcError::invalid_request("id must be a string or a number"),
            });
        }
    }
    if env.jsonrpc.as_deref() != Some("2.0") {
        return Err(BadRequest {
            id,
            error: RpcError::invalid_request("jsonrpc must be \"2.0\""),
        });
    }
    let Some(method) = env.method else {
        return Err(BadRequest {
            id,
            error: RpcError::invalid_request("method is missing"),
        });
    };
    if let Some(p) = env.params {
        let b = p.get().as_bytes()[0];
        if b != b'{' && b != b'[' && p.get() != "null" {
            return Err(BadRequest {
                id,
                error: RpcError::invalid_request("params must be an object or an array"),
            });
        }
    }
    let params = env.params.filter(|p| p.get() != "null");
    Ok(Request { id, method, params })
}

/// A response from the client to a request the gateway sent it (a `tools/call` of a tool the
/// client offers), borrowed from its frame.
#[derive(Debug)]
pub struct Response<'a> {
    pub id: &'a RawValue,
    /// The `result`, or the `error` the client answered.
    pub outcome: Result<&'a RawValue, RpcError>,
}

#[derive(Deserialize)]
struct ResponseEnvelope<'a> {
    #[serde(borrow, default)]
    jsonrpc: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(default)]
    method: Option<serde::de::IgnoredAny>,
    #[serde(borrow, default)]
    result: Option<&'a RawValue>,
    #[serde(default)]
    error: Option<RpcError>,
}

/// Reads one text frame as a JSON-RPC response (`id` and `result` or `error`, no `method`);
/// `None` when it is not one.
pub fn parse_response(text: &str) -> Option<Response<'_>> {
    let env: ResponseEnvelope<'_> = serde_json::from_str(text).ok()?;
    if env.method.is_some() || env.jsonrpc.as_deref() != Some("2.0") {
        return None;
    }
    let id = env.id?;
    let outcome = match (env.result, env.error) {
        (Some(r), None) => Ok(r),
        (None, Some(e)) => Err(e),
        _ => return None,
    };
    Some(Response { id, outcome })
}

/// Encodes a request from the gateway to the client (`id` is the gateway's own).
pub fn encode_request<T: Serialize + ?Sized>(id: &str, method: &str, params: &T) -> Bytes {
    let mut out = Vec::with_capacity(96);
    out.extend_from_slice(JSONRPC_HEAD.as_bytes());
    out.extend_from_slice(b"\"id\":");
    serde_json::to_writer(&mut out, id).expect("serializing to a Vec cannot fail");
    out.extend_from_slice(b",\"method\":");
    serde_json::to_writer(&mut out, method).expect("serializing to a Vec cannot fail");
    out.extend_from_slice(b",\"params\":");
    serde_json::to_writer(&mut out, params).expect("serializing to a Vec cannot fail");
    out.push(b'}');
    Bytes::from(out)
}

/// Decodes a request's params into `T`; absent params decode as `{}`. A mismatch is -32602
/// with serde's reason.
///
/// MCP's `_meta` is allowed on every method's params: it must be an object, and a type that
/// does not read it (has no `_meta` field) never sees it, so one that refuses unknown fields
/// still refuses every other one (`meta.rs`).
pub fn decode_params<'a, T: Deserialize<'a>>(params: Option<&'a RawValue>) -> Result<T, RpcError> {
    let raw = params.map(RawValue::get).unwrap_or("{}");
    let mut de = serde_json::Deserializer::from_str(raw);
    T::deserialize(MetaTolerant(&mut de))
        .and_then(|value| de.end().map(|()| value))
        .map_err(|e| {
            // serde quotes the offending input; a client gets back a bounded piece of it.
            let why = e.to_string();
            RpcError::invalid_params(format!(
                "invalid params: {}",
                truncate(&why, MAX_REASON_LEN)
            ))
        })
}

/// The longest reason text quoted back to a client.
const MAX_REASON_LEN: usize = 160;

const JSONRPC_HEAD: &str = "{\"jsonrpc\":\"2.0\",";

/// Encodes a successful response.
pub fn encode_result<T: Serialize + ?Sized>(id: &RawValue, result: &T) -> Bytes {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(JSONRPC_HEAD.as_bytes());
    out.extend_from_slice(b"\"id\":");
    out.extend_from_slice(id.get().as_bytes());
    out.extend_from_slice(b",\"result\":");
    serde_json::to_writer(&mut out, result).expect("serializing to a Vec cannot fail");
    out.push(b'}');
    Bytes::from(out)
}

/// Encodes an error response; `id` is `null` when the request's id could not be read.
pub fn encode_error(id: Option<&RawValue>, error: &RpcError) -> Bytes {
    let mut out = Vec::with_capacity(96);
    out.extend_from_slice(JSONRPC_HEAD.as_bytes());
    out.extend_from_slice(b"\"id\":");
    out.extend_from_slice(id.map_or("null", RawValue::get).as_bytes());
    out.extend_from_slice(b",\"error\":");
    serde_json::to_writer(&mut out, error).expect("serializing to a Vec cannot fail");
    out.push(b'}');
    Bytes::from(out)
}

/// Encodes a notification from the gateway.
pub fn encode_notification<T: Serialize + ?Sized>(method: &str, params: &T) -> Bytes {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(JSONRPC_HEAD.as_bytes());
    out.extend_from_slice(b"\"method\":");
    serde_json::to_writer(&mut out, method).expect("serializing to a Vec cannot fail");
    out.extend_from_slice(b",\"params\":");
    serde_json::to_writer(&mut out, params).expect("serializing to a Vec cannot fail");
    out.push(b'}');
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code_of(text: &str) -> i32 {
        parse_request(text).unwrap_err().error.code
    }

    #[test]
    fn parses_a_request_and_keeps_id_raw() {
        let r = parse_request(r#"{"jsonrpc":"2.0","id":"a\"b","method":"ping"}"#).unwrap();
        assert_eq!(r.id.unwrap().get(), r#""a\"b""#);
        assert_eq!(r.method, "ping");
        assert!(r.params.is_none());
        let r = parse_request(r#"{"jsonrpc":"2.0","id":7,"method":"x","params":{"a":1}}"#).unwrap();
        assert_eq!(r.id.unwrap().get(), "7");
        assert_eq!(r.params.unwrap().get(), r#"{"a":1}"#);
    }

    #[test]
    fn notification_has_no_id() {
        let r = parse_request(r#"{"jsonrpc":"2.0","method":"x"}"#).unwrap();
        assert!(r.id.is_none());
        // `"id": null` is a request, answered with a null id.
        let r = parse_request(r#"{"jsonrpc":"2.0","method":"x","id":null}"#).unwrap();
        assert_eq!(r.id.unwrap().get(), "null");
    }

    #[test]
    fn bad_frames_get_the_documented_codes() {
        assert_eq!(code_of("{"), -32700);
        assert_eq!(code_of("nope"), -32700);
        assert_eq!(code_of("[1,2"), -32700);
        assert_eq!(
            code_of(r#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#),
            -32600
        );
        assert_eq!(code_of("42"), -32600);
        assert_eq!(
            code_of(r#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#),
            -32600
        );
        assert_eq!(code_of(r#"{"jsonrpc":"2.0","id":1}"#), -32600);
        assert_eq!(code_of(r#"{"jsonrpc":"2.0","id":{},"method":"a"}"#), -32600);
        assert_eq!(code_of(r#"{"jsonrpc":"2.0","id":1,"method":3}"#), -32600);
        assert_eq!(
            code_of(r#"{"jsonrpc":"2.0","id":1,"method":"a","params":3}"#),
            -32600
        );
    }

    #[test]
    fn error_keeps_the_id_when_it_was_readable() {
        let bad = parse_request(r#"{"jsonrpc":"1.0","id":9,"method":"ping"}"#).unwrap_err();
        assert_eq!(bad.id.unwrap().get(), "9");
        let out = encode_error(bad.id, &bad.error);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["id"], 9);
        assert_eq!(v["error"]["code"], -32600);
    }

    #[test]
    fn invalid_params_quote_little_of_the_input() {
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct P {
            _a: Option<u8>,
        }
        let huge = format!(r#"{{"{}":1}}"#, "k".repeat(60_000));
        let raw = RawValue::from_string(huge).unwrap();
        let err = decode_params::<P>(Some(&raw)).unwrap_err();
        assert_eq!(err.code, -32602);
        assert!(err.message.len() < 200, "{}", err.message.len());
    }

    #[test]
    fn responses_parse_and_requests_do_not() {
        let r = parse_response(r#"{"jsonrpc":"2.0","id":"sb-1","result":{"content":[]}}"#).unwrap();
        assert_eq!(r.id.get(), r#""sb-1""#);
        assert_eq!(r.outcome.unwrap().get(), r#"{"content":[]}"#);
        let r = parse_response(r#"{"jsonrpc":"2.0","id":2,"error":{"code":-1,"message":"no"}}"#)
            .unwrap();
        assert_eq!(r.outcome.unwrap_err().message, "no");
        for not in [
            r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":1}"#,
            r#"{"jsonrpc":"2.0","result":{}}"#,
            r#"{"jsonrpc":"2.0","id":1,"result":{},"error":{"code":1,"message":""}}"#,
            r#"{"id":1,"result":{}}"#,
            "[1]",
            "{",
        ] {
            assert!(parse_response(not).is_none(), "{not}");
        }
        let out = encode_request("sb-1", "tools/call", &serde_json::json!({"name":"x"}));
        assert_eq!(
            &out[..],
            br#"{"jsonrpc":"2.0","id":"sb-1","method":"tools/call","params":{"name":"x"}}"#
        );
    }

    #[test]
    fn result_and_notification_encode() {
        let id = RawValue::from_string("\"x\"".into()).unwrap();
        let out = encode_result(&id, &serde_json::json!({}));
        assert_eq!(&out[..], br#"{"jsonrpc":"2.0","id":"x","result":{}}"#);
        let out = encode_notification("n", &serde_json::json!({"a":1}));
        assert_eq!(
            &out[..],
            br#"{"jsonrpc":"2.0","method":"n","params":{"a":1}}"#
        );
    }
}
