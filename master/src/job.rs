//! A job as the pool holds it, where its answers go, and the answers to job
//! operations (status, result, start, cancel, list) in the one shape the
//! socket and HTTP both render.

use bytes::Bytes;
use serde::Serialize;
use std::sync::Arc;
use taskmaster_proto::jobs::{
    ErrorBody, FailureBody, JobList, JobRef, JobStatus, JobView, Outcome, SubmitOptions,
};
use taskmaster_proto::messages::ToClient;
use taskmaster_proto::Reason;

pub use crate::flow::Backlog;
pub use crate::outbox::{Outbox, Outgoing};
use tokio::sync::{oneshot, OwnedSemaphorePermit};

pub use crate::types::JobId;

/// Most JSON bytes in one socket `Reply`: well inside the codec's header
/// limit, which the JSON shares with the frame's other fields.
pub const MAX_REPLY_JSON: usize = 60 * 1024;

/// Where a job's parts and final answer go.
pub enum Reply {
    /// A socket client waits on its connection.
    Conn(ConnReply),
    /// Nobody waits on a connection (a detached or HTTP submit): the outcome
    /// stays in the job table for whoever asks.
    Detached,
    /// A job this master took from the NATS stream (`--nats`): answers go
    /// back through NATS to the master its submitter is connected to.
    Nats(crate::nats::NatsReply),
}

/// A socket client's job: answers go to its connection's writer.
pub struct ConnReply {
    /// The submitting connection's writer.
    pub tx: Outbox,
    /// The client's tag.
    pub tag: u64,
    /// The client's opaque context, returned with the final answer.
    pub context: Bytes,
    /// The connection's in-flight slot, held until the final answer.
    pub permit: Option<OwnedSemaphorePermit>,
    /// The connection's unsent bytes (`None` in tests without one): the
    /// child task running the job reads no more while it is past its window.
    pub backlog: Option<Arc<Backlog>>,
}

impl ConnReply {
    /// `now`: nothing else is coming this round, so the frame may skip
    /// the writer task (see [`crate::outbox::send_now`]).
    fn send(&self, msg: ToClient, bytes: usize, permit: Option<OwnedSemaphorePermit>, now: bool) {
        let counted = match &self.backlog {
            Some(b) => {
                b.add(bytes);
                bytes
            }
            None => 0,
        };
        let out = Outgoing {
            msg,
            permit,
            counted,
        };
        if now {
            crate::outbox::send_now(&self.tx, out, self.backlog.as_deref());
        } else {
            self.tx.send(out);
        }
    }
}

/// What a queued message costs besides its payload (the message itself in
/// the channel): many tiny parts must count, not only their bytes.
const PER_MESSAGE: usize = 128;

/// The bytes a frame puts on a client's backlog.
pub fn backlog_bytes(msg: &ToClient) -> usize {
    match msg {
        ToClient::Part { data, .. } => PER_MESSAGE + data.len(),
        ToClient::Completed { output, .. } => PER_MESSAGE + output.len(),
        ToClient::Reply { output, json, .. } => PER_MESSAGE + output.len() + json.len(),
        _ => 0,
    }
}

impl Reply {
    /// The flow-control gate of the client this job answers to, if any.
    pub fn gate(&self) -> Option<Arc<Backlog>> {
        match self {
            Reply::Conn(c) => c.backlog.clone(),
            Reply::Detached | Reply::Nats(_) => None,
        }
    }

    /// Sends a part. A gone client is not an error: the job still runs to
    /// its end so its child is freed the normal way.
    pub fn part(&self, data: Bytes) {
        if let Reply::Nats(n) = self {
            return n.part(data);
        }
        if let Reply::Conn(c) = self {
            let msg = ToClient::Part { tag: c.tag, data };
            let n = backlog_bytes(&msg);
            c.send(msg, n, None, false);
        }
    }

    /// Sends the response; `now`: nothing else is coming this round (see
    /// [`crate::outbox::send_now`]).
    pub fn completed(self, job: JobId, output: Bytes, now: bool) {
        if let Reply::Nats(n) = self {
            return n.end(Ok(output));
        }
        if let Reply::Conn(mut c) = self {
            let msg = ToClient::Completed {
                tag: c.tag,
                job,
                context: std::mem::take(&mut c.context),
                output,
            };
            let n = backlog_bytes(&msg);
            let permit = c.permit.take();
            c.send(msg, n, permit, now);
        }
    }

    /// Sends a failure.
    pub fn failed(self, job: JobId, reason: Reason, message: String) {
        if let Reply::Nats(n) = self {
            return n.end(Err((reason, message)));
        }
        if let Reply::Conn(c) = self {
            c.tx.send(Outgoing {
                msg: ToClient::Failed {
                    tag: c.tag,
                    job,
                    reason,
                    message: taskmaster_proto::codec::clip_message(message),
                    context: c.context,
                },
                permit: c.permit,
                counted: 0,
            });
        }
    }
}

/// Where the immediate answer to a detached submit goes: its id and status,
/// or its refusal.
pub enum Ack {
    /// A socket client: a `Reply` frame with this tag.
    Conn {
        /// The connection's writer.
        tx: Outbox,
        /// The submit's tag.
        tag: u64,
        /// The connection's in-flight slot, released with the answer.
        permit: Option<OwnedSemaphorePermit>,
    },
    /// An in-process caller (HTTP).
    Local(oneshot::Sender<Answer>),
}

impl Ack {
    /// Delivers the answer.
    pub fn send(self, answer: Answer) {
        match self {
            Ack::Conn { tx, tag, permit } => {
                tx.send(Outgoing {
                    msg: answer.into_frame(tag),
                    permit,
                    counted: 0,
                });
            }
            Ack::Local(tx) => {
                let _ = tx.send(answer);
            }
        }
    }
}

/// A job submitted but not yet given an id.
pub struct Submission {
    /// Module name.
    pub module: String,
    /// Input bytes.
    pub input: Bytes,
    /// Detach, start later, time limit.
    pub options: SubmitOptions,
    /// Where answers go (`Detached` for a detached submit).
    pub reply: Reply,
    /// For a detached submit: where its id (or refusal) goes at once.
    pub ack: Option<Ack>,
    /// Told the job's result when it finishes (HTTP's `wait=`).
    pub waiter: Option<oneshot::Sender<Answer>>,
}

/// A job waiting in the queue (or held as `start-later`).
pub struct Queued {
    /// Job id.
    pub id: JobId,
    /// Module name.
    pub module: String,
    /// Input bytes.
    pub input: Bytes,
    /// Where answers go.
    pub reply: Reply,
    /// Its lane in the queue.
    pub pri: taskmaster_proto::Priority,
    /// Runs it may still have, and children it has killed.
    pub retry: Retry,
}

/// An idempotent job's retries (`submit --retries N`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retry {
    /// Runs left after this one.
    pub left: u32,
    /// Children that died running it, or were killed at its time limit.
    pub kills: u32,
}

/// A job operation, by id.
#[derive(Debug, Clone, Copy)]
pub enum Op {
    /// What the table knows of it.
    Status(JobId),
    /// Its outcome now (completed, failed, or still pending).
    Result(JobId),
    /// Its outcome when it finishes (answers at once if it has).
    Wait(JobId),
    /// Puts a `start-later` job in the queue.
    Start(JobId),
    /// Cancels it.
    Cancel(JobId),
    /// Recent jobs, newest first.
    List {
        /// Most jobs.
        limit: usize,
        /// Only this status.
        status: Option<JobStatus>,
    },
}

/// The JSON body of an answer; each variant is one of the shapes of
/// `taskmaster_proto::jobs`.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Body {
    /// `{"id","status"}`.
    Ref(JobRef),
    /// A job's whole record.
    View(JobView),
    /// `{"jobs":[...]}`.
    List(JobList),
    /// `{"id","status","reason","message"}`.
    Failure(FailureBody),
    /// `{"error"}`.
    Error(ErrorBody),
}

/// The answer to a job operation or a detached submit. The socket sends it
/// as a `Reply` frame; HTTP maps the outcome (and a failure's reason) to a
/// status code.
#[derive(Debug, Clone)]
pub struct Answer {
    /// How it went.
    pub outcome: Outcome,
    /// The JSON body.
    pub body: Body,
    /// A completed job's response (for result and wait).
    pub output: Option<Bytes>,
}

impl Answer {
    /// `Ok` with a body.
    pub fn ok(body: Body) -> Answer {
        Answer {
            outcome: Outcome::Ok,
            body,
            output: None,
        }
    }

    /// `NotFound` for a job id.
    pub fn not_found(id: &str) -> Answer {
        Answer {
            outcome: Outcome::NotFound,
            body: Body::Error(ErrorBody {
                error: format!("no job {id} (unknown, evicted, or from another master run)"),
            }),
            output: None,
        }
    }

    /// `Invalid` with a message.
    pub fn invalid(error: String) -> Answer {
        Answer {
            outcome: Outcome::Invalid,
            body: Body::Error(ErrorBody { error }),
            output: None,
        }
    }

    /// `Conflict`: the job is in another state.
    pub fn conflict(id: String, status: JobStatus) -> Answer {
        Answer {
            outcome: Outcome::Conflict,
            body: Body::Ref(JobRef { id, status }),
            output: None,
        }
    }

    /// `Failed` with a failure body.
    pub fn failed(id: String, status: JobStatus, reason: Reason, message: String) -> Answer {
        Answer {
            outcome: Outcome::Failed,
            body: Body::Failure(FailureBody {
                id,
                status,
                reason,
                message,
            }),
            output: None,
        }
    }

    /// The socket frame for this answer. The JSON travels in the frame's
    /// header, which is bounded (`codec::HEADER_LIMIT`): a job list keeps
    /// only as many of the newest jobs as fit.
    pub fn into_frame(self, tag: u64) -> ToClient {
        let json = match self.body {
            Body::List(mut list) => {
                let mut size = r#"{"jobs":[]}"#.len();
                let fits = list
                    .jobs
                    .iter()
                    .take_while(|view| {
                        size += serde_json::to_string(view).map_or(usize::MAX / 2, |j| j.len() + 1);
                        size <= MAX_REPLY_JSON
                    })
                    .count();
                list.jobs.truncate(fits);
                serde_json::to_string(&list).expect("lists serialize")
            }
            ref body => serde_json::to_string(body).expect("answer bodies serialize"),
        };
        ToClient::Reply {
            tag,
            outcome: self.outcome,
            json,
            output: self.output.unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_job_lists_are_cut_to_fit_a_frame() {
        let view = |n: usize| JobView {
            id: format!("0123456789ab-{n}"),
            module: "echo".into(),
            status: JobStatus::Failed,
            reason: Some(Reason::Failed),
            message: Some("m".repeat(2000)),
            created_at: "2026-11-23T10:00:00.000Z".into(),
            started_at: None,
            finished_at: None,
        };
        let list = JobList {
            jobs: (1..=100).map(view).collect(),
        };
        let ToClient::Reply { json, .. } = Answer::ok(Body::List(list)).into_frame(1) else {
            panic!("a reply");
        };
        assert!(json.len() <= MAX_REPLY_JSON);
        let back: JobList = serde_json::from_str(&json).unwrap();
        assert!(back.jobs.len() > 20 && back.jobs.len() < 100);
        assert_eq!(back.jobs[0].id, "0123456789ab-1", "the newest stay");
        let frame = taskmaster_proto::codec::to_frame(&ToClient::Reply {
            tag: 1,
            outcome: Outcome::Ok,
            json,
            output: Bytes::new(),
        });
        assert!(frame.is_ok());
    }
}
