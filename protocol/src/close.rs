//! WebSocket close codes used by the gateway (`docs/protocol.md` section 4).

/// Normal closure (the client said goodbye).
pub const NORMAL: u16 = 1000;
/// The peer broke the WebSocket protocol (bad framing, bad continuation).
pub const PROTOCOL_ERROR: u16 = 1002;
/// A binary frame: the protocol is text only.
pub const UNSUPPORTED_DATA: u16 = 1003;
/// A text frame that is not UTF-8.
pub const INVALID_PAYLOAD: u16 = 1007;
/// Bad or expired token.
pub const POLICY: u16 = 1008;
/// A message over the size limit.
pub const TOO_BIG: u16 = 1009;
/// The node failed internally.
pub const INTERNAL: u16 = 1011;
/// The node is restarting: reconnect elsewhere and resume the session.
pub const RESTARTING: u16 = 1012;
/// The node is full: try again later.
pub const TRY_AGAIN_LATER: u16 = 1013;
/// No `hello` within the hello timeout.
pub const HELLO_TIMEOUT: u16 = 4001;
/// Nothing received from the client (a pong counts) for three heartbeats.
pub const HEARTBEAT_TIMEOUT: u16 = 4002;
/// The outbound queue went over its limit.
pub const SLOW_CONSUMER: u16 = 4008;
/// The session was taken over by a newer connection.
pub const TAKEN_OVER: u16 = 4009;
/// The client kept sending past its rate limit after being told (-32003): slow down, then
/// reconnect.
pub const RATE_LIMITED: u16 = 4029;
