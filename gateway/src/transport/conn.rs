//! One client connection: [`accept`] gives an upgraded TCP stream its control block and its
//! outbound queue, and [`serve`] runs it: a writer task ([`super::writer`], which owns the
//! write half and drains the queue) and the reader ([`super::reader`], here, in the
//! connection's own task), then the teardown. Everything else reaches the socket through its
//! [`Link`]: messages on the queue, or [`ConnCtl::close`], which works even when the queue is
//! full.

use std::io;
use std::sync::Arc;

use bytes::Bytes;
use switchboard_protocol::close;
use tokio::net::TcpStream;

use super::ctl::ConnCtl;
use super::handler::Handler;
use super::queue::{self, Receiver, Sender};
use super::sockets::Sockets;
use super::{reader, writer};

/// A connection as the rest of the node reaches it: its control block and its queue.
#[derive(Clone)]
pub(crate) struct Link {
    pub(crate) ctl: Arc<ConnCtl>,
    pub(crate) tx: Sender,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link").field("id", &self.ctl.id).finish()
    }
}

impl Link {
    pub(crate) fn id(&self) -> u64 {
        self.ctl.id
    }
}

/// An accepted socket waiting to be served.
pub(crate) struct Socket {
    stream: TcpStream,
    rx: Receiver,
    /// Bytes the HTTP layer read past the upgrade request.
    leftover: Bytes,
}

/// Takes an upgraded TCP stream: registered with the reactor anew, given a control block and
/// an outbound queue.
pub(crate) fn accept(
    sockets: &Sockets,
    stream: TcpStream,
    leftover: Bytes,
) -> io::Result<(Link, Socket)> {
    let stream = fresh_registration(stream)?;
    let ctl = Arc::new(ConnCtl::new(sockets.next_id(), sockets.now_ms()));
    let (tx, rx) = queue::channel(
        sockets.limits.outbound_queue,
        sockets.limits.outbound_queue_bytes,
        ctl.clone(),
    );
    Ok((
        Link { ctl, tx },
        Socket {
            stream,
            rx,
            leftover,
        },
    ))
}

/// Serves one socket: the returned future is the connection (spawn it as the connection's
/// task). It starts the socket's writer task, then reads: it hands the socket's messages to
/// `handler` until the socket closes, then tells the handler the socket is gone.
pub(crate) fn serve<H: Handler>(
    sockets: Arc<Sockets>,
    link: Link,
    socket: Socket,
    handler: H,
) -> impl Future<Output = ()> + Send {
    let Socket {
        stream,
        rx,
        leftover,
    } = socket;
    let Link { ctl, tx } = link;
    let mut handler = handler;
    // A block, not an `async fn`: what it captures is held once (an async fn's arguments are
    // moved into locals, and the handler would take its room twice in every idle connection).
    async move {
        let (read_half, write_half) = stream.into_split();
        // Spawned from the connection's own task (not from the upgrade's, which is about to
        // end), so the scheduler does not hand one of the two to another worker thread.
        let mut writer = tokio::spawn(writer::run(write_half, rx, ctl, sockets.clone()));
        {
            let reader = reader::run(&sockets, &tx, &mut handler, read_half, leftover);
            tokio::pin!(reader);
            let reader_ended = tokio::select! {
                _ = &mut reader => true,
                _ = &mut writer => false,
            };
            let close_timeout = sockets.limits.close_timeout;
            // The waits below are boxed: teardown state, not carried by every live connection.
            if reader_ended {
                // The client went away or broke the protocol; make sure the writer ends too.
                tx.ctl().close(close::NORMAL, "", true);
                let _ = Box::pin(tokio::time::timeout(close_timeout, &mut writer)).await;
            } else {
                // Our close frame is out: give the client a moment to answer it.
                let _ = Box::pin(tokio::time::timeout(close_timeout, &mut reader)).await;
            }
        }
        writer.abort();
        drop(tx);
        // Boxed: a teardown step, not state every live connection carries.
        Box::pin(handler.closed()).await;
    }
}

/// The socket registered with the reactor anew. The HTTP task that read the upgrade request
/// left its waker in the socket's readiness slots, and a finished task's memory (about 900
/// bytes) lives as long as a waker of it does: re-registering drops them. Two `epoll_ctl`s.
fn fresh_registration(stream: TcpStream) -> io::Result<TcpStream> {
    TcpStream::from_std(stream.into_std()?)
}
