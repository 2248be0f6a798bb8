//! The interface between a socket and what answers its messages (the method layer): the
//! reader hands each text message to a [`Handler`] and queues the [`Answer`]; when the socket
//! is gone, the handler is told so once.

use bytes::Bytes;

/// What to do after one message.
#[derive(Debug, Default)]
pub(crate) struct Answer {
    /// The reply to queue (none for a notification, or a reply that comes later).
    pub(crate) reply: Option<Bytes>,
    /// Close the socket with this code and reason once the reply is queued (the client reads
    /// why before the socket closes).
    pub(crate) then_close: Option<(u16, &'static str)>,
}

/// What a connection's messages go to. One per connection, owned by its reader.
pub(crate) trait Handler: Send + 'static {
    /// One text message from the client.
    fn message(&mut self, text: &str) -> impl Future<Output = Answer> + Send;

    /// The socket is gone (both its tasks have ended): release what the connection held.
    fn closed(&mut self) -> impl Future<Output = ()> + Send;
}
