//! What every family's router shares: a request's params decoded into its method's type
//! (once), and a typed result encoded as the reply.

use bytes::Bytes;
use serde::Serialize;
use serde_json::value::RawValue;
use switchboard_protocol::RpcError;
use switchboard_protocol::jsonrpc::{self, decode_params};
use switchboard_protocol::methods::Method;

/// What a handler's outcome becomes: the encoded reply to send now, or `None` (a notification,
/// or a reply that a task of its own sends later).
pub(crate) type Reply = Result<Option<Bytes>, RpcError>;

/// A method's params, decoded into its type (-32602 with serde's reason when they do not fit).
pub(crate) fn params<'a, M: Method>(raw: Option<&'a RawValue>) -> Result<M::Params<'a>, RpcError> {
    decode_params(raw)
}

/// Encodes a result for `id` (nothing for a notification).
pub(crate) fn encode<T: Serialize>(id: Option<&RawValue>, result: &T) -> Reply {
    Ok(id.map(|id| jsonrpc::encode_result(id, result)))
}

/// Encodes a result that may come later (`None`: a task of its own answers).
pub(crate) fn encode_later<T: Serialize>(id: Option<&RawValue>, result: Option<T>) -> Reply {
    match result {
        Some(r) => encode(id, &r),
        None => Ok(None),
    }
}
