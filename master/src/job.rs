//! A job as the pool holds it, and where its answers go.

use bytes::Bytes;
use taskmaster_proto::messages::ToClient;
use taskmaster_proto::Reason;
use tokio::sync::{mpsc, OwnedSemaphorePermit};

/// The master's job id.
pub type JobId = u64;

/// One message for a client connection's writer. The permit travels with a
/// job's final answer: the connection's reader may only take another job
/// once the answer is written, which bounds what a client that never reads
/// can make the master buffer.
pub struct Outgoing {
    /// The frame to send.
    pub msg: ToClient,
    /// Released when the frame has been encoded.
    pub permit: Option<OwnedSemaphorePermit>,
}

/// Where a job's parts and final answer go.
pub struct Reply {
    /// The submitting connection's writer.
    pub tx: mpsc::UnboundedSender<Outgoing>,
    /// The client's tag.
    pub tag: u64,
    /// The client's opaque context, returned with the final answer.
    pub context: Bytes,
    /// The connection's in-flight slot, held until the final answer.
    pub permit: Option<OwnedSemaphorePermit>,
}

impl Reply {
    /// Sends a part. A gone client is not an error: the job still runs to
    /// its end so its child is freed the normal way.
    pub fn part(&self, data: Bytes) {
        let _ = self.tx.send(Outgoing {
            msg: ToClient::Part {
                tag: self.tag,
                data,
            },
            permit: None,
        });
    }

    /// Sends the response.
    pub fn completed(self, job: JobId, output: Bytes) {
        let _ = self.tx.send(Outgoing {
            msg: ToClient::Completed {
                tag: self.tag,
                job,
                context: self.context,
                output,
            },
            permit: self.permit,
        });
    }

    /// Sends a failure.
    pub fn failed(self, job: JobId, reason: Reason, message: String) {
        let _ = self.tx.send(Outgoing {
            msg: ToClient::Failed {
                tag: self.tag,
                job,
                reason,
                message: taskmaster_proto::codec::clip_message(message),
                context: self.context,
            },
            permit: self.permit,
        });
    }
}

/// A job submitted but not yet given an id.
pub struct Submission {
    /// Module name.
    pub module: String,
    /// Input bytes.
    pub input: Bytes,
    /// Where answers go.
    pub reply: Reply,
}

/// A job waiting in the queue.
pub struct Queued {
    /// Job id.
    pub id: JobId,
    /// Module name.
    pub module: String,
    /// Input bytes.
    pub input: Bytes,
    /// Where answers go.
    pub reply: Reply,
}
