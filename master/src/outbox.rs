//! A client connection's outbox: [`taskmaster_proto::outbox::Outbox`] of
//! [`Outgoing`] frames, and the one direct send the pool makes (the last
//! answer of a round), which settles the frame's permit and backlog as the
//! writer would.

use crate::flow::Backlog;
use taskmaster_proto::codec;
use taskmaster_proto::messages::ToClient;
use taskmaster_proto::outbox::Sent;
use tokio::sync::OwnedSemaphorePermit;

/// One message for a client connection's writer. The permit travels with a
/// job's final answer: the connection's reader may only take another job
/// once the answer is written, which bounds what a client that never reads
/// can make the master buffer.
pub struct Outgoing {
    /// The frame to send.
    pub msg: ToClient,
    /// Released when the frame has been encoded.
    pub permit: Option<OwnedSemaphorePermit>,
    /// What it added to the connection's backlog (0: not counted), given
    /// back when it is encoded: the same figure both ways, whatever the
    /// frame.
    pub counted: usize,
}

/// The way to one client connection.
pub type Outbox = taskmaster_proto::outbox::Outbox<Outgoing>;

/// Sends `out` on the socket now if the connection's writer is idle (see
/// [`taskmaster_proto::outbox::Outbox::send_now`]), else queues it.
pub fn send_now(outbox: &Outbox, out: Outgoing, backlog: Option<&Backlog>) {
    if let Sent::Written(out) = outbox.send_now(out, |o, buf| codec::encode(&o.msg, buf)) {
        if let Some(b) = backlog {
            b.sub(out.counted);
        }
    }
}
