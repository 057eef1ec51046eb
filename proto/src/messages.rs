//! Every message on the wire, one enum per direction. Each variant is one
//! operation; its doc says who sends it and when. Fields marked
//! `#[serde(skip)]` are the frame's *payload*: raw bytes after the bincode
//! header, so job data is never re-encoded or copied by bincode
//! (see [`crate::codec`]).

use crate::jobs::{Outcome, SubmitOptions};
use crate::reason::Reason;
use bytes::Bytes;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// Protocol version carried in every hello; bumped on any wire change.
pub const PROTOCOL_VERSION: u32 = 3;

/// Length of the per-child secret a handler proves itself with.
pub const SECRET_LEN: usize = 32;

/// A wire message: a bincode header plus, for some variants, a raw payload.
pub trait Message: Serialize + DeserializeOwned {
    /// The payload carried after the header, if this variant has one.
    fn payload(&self) -> Option<&Bytes>;
    /// Puts the decoded payload in place; `false` if this variant has none
    /// (then a non-empty tail is a malformed frame).
    fn set_payload(&mut self, payload: Bytes) -> bool;
    /// The header read by hand, for the variants on every job's path;
    /// `None` leaves it to bincode (see `codec::fast_header`).
    fn decode_header(_: &mut crate::header::Header<'_>) -> Option<Self> {
        None
    }
}

/// The first frame on every connection: it names the role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Hello {
    /// A child the master spawned, connecting back.
    Handler(HandlerHello),
    /// A service (or the CLI) that will submit jobs.
    Client(ClientHello),
    /// An agent lending its host's children (only on `--agent-listen`;
    /// see [`crate::agent`]).
    Agent(AgentHello),
}

/// A handler child's hello.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandlerHello {
    /// [`PROTOCOL_VERSION`] of the handler library.
    pub version: u32,
    /// The id the master gave this child on its command line.
    pub child_id: u64,
    /// The child's own pid, checked against the pid the master spawned.
    pub pid: u32,
    /// The secret the master wrote on the child's stdin.
    pub secret: [u8; SECRET_LEN],
    /// Names of the modules this child runs.
    pub modules: Vec<String>,
}

/// An agent's hello (see [`crate::agent`] for the link it opens).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentHello {
    /// [`PROTOCOL_VERSION`] of the agent.
    pub version: u32,
    /// The client token, when the master requires one.
    pub token: Option<String>,
    /// The agent's name (`--name`, default its host name), shown in stats
    /// and in the message of a job its loss fails.
    pub name: String,
    /// The children it runs (`--slots`).
    pub slots: u32,
    /// The agent process's pid on its host.
    pub pid: u32,
}

/// A client's hello.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientHello {
    /// [`PROTOCOL_VERSION`] of the client.
    pub version: u32,
    /// The client token, when the master requires one.
    pub token: Option<String>,
}

impl Message for Hello {
    fn payload(&self) -> Option<&Bytes> {
        None
    }
    fn set_payload(&mut self, _: Bytes) -> bool {
        false
    }
}

/// Master → handler child.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToHandler {
    /// Run `module` on the payload. A child holds at most one job.
    Job {
        /// The master's job id, echoed in every answer.
        job: u64,
        /// Module name.
        module: String,
        /// Input bytes (payload).
        #[serde(skip)]
        input: Bytes,
    },
}

impl Message for ToHandler {
    fn payload(&self) -> Option<&Bytes> {
        match self {
            ToHandler::Job { input, .. } => Some(input),
        }
    }
    fn set_payload(&mut self, payload: Bytes) -> bool {
        match self {
            ToHandler::Job { input, .. } => *input = payload,
        }
        true
    }
}

/// Handler child → master.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FromHandler {
    /// A part of the response, sent before the final answer.
    Part {
        /// Job id.
        job: u64,
        /// Part bytes (payload).
        #[serde(skip)]
        data: Bytes,
    },
    /// The module finished; the payload is its response.
    Done {
        /// Job id.
        job: u64,
        /// The child will exit after this answer: give it no more jobs.
        retire: bool,
        /// Response bytes (payload).
        #[serde(skip)]
        output: Bytes,
    },
    /// The job failed inside the child.
    Failed {
        /// Job id.
        job: u64,
        /// Usually [`Reason::Failed`]; `UnknownModule` if the child lacks it.
        reason: Reason,
        /// Human-readable text (the module's message, a panic message).
        message: String,
        /// The child will exit after this answer (after a panic, say).
        retire: bool,
    },
    /// "Still alive", sent every `--heartbeat-ms` by a thread of its own,
    /// also while a module runs: a child that stops sending them (stopped,
    /// frozen) is killed and replaced.
    Heartbeat,
}

impl Message for FromHandler {
    fn decode_header(h: &mut crate::header::Header<'_>) -> Option<Self> {
        // Variant indexes in declaration order: Part 0, Done 1.
        match h.u32()? {
            0 => Some(FromHandler::Part {
                job: h.u64()?,
                data: Bytes::new(),
            }),
            1 => Some(FromHandler::Done {
                job: h.u64()?,
                retire: h.bool()?,
                output: Bytes::new(),
            }),
            _ => None,
        }
    }
    fn payload(&self) -> Option<&Bytes> {
        match self {
            FromHandler::Part { data, .. } => Some(data),
            FromHandler::Done { output, .. } => Some(output),
            FromHandler::Failed { .. } | FromHandler::Heartbeat => None,
        }
    }
    fn set_payload(&mut self, payload: Bytes) -> bool {
        match self {
            FromHandler::Part { data, .. } => *data = payload,
            FromHandler::Done { output, .. } => *output = payload,
            FromHandler::Failed { .. } | FromHandler::Heartbeat => return false,
        }
        true
    }
}

/// Client → master.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToMaster {
    /// Submit a job. Many may be in flight on one connection.
    Submit {
        /// Client-chosen tag, returned with every answer for this job.
        tag: u64,
        /// Module name.
        module: String,
        /// Opaque bytes returned with the final answer (the task-master's
        /// saved locals).
        context: Bytes,
        /// Detach, start later, time limit.
        options: SubmitOptions,
        /// Input bytes (payload).
        #[serde(skip)]
        input: Bytes,
    },
    /// Ask for pool and queue figures.
    Stats {
        /// Client-chosen tag, returned with the answer.
        tag: u64,
    },
    /// What the master knows of a job: a [`ToClient::Reply`] with a
    /// [`JobView`](crate::jobs::JobView).
    Status {
        /// Client-chosen tag, returned with the answer.
        tag: u64,
        /// Job id.
        id: String,
    },
    /// A job's outcome: its response (the Reply's payload), its failure,
    /// or, if it has not finished within `wait_ms`, a conflict.
    Result {
        /// Client-chosen tag, returned with the answer.
        tag: u64,
        /// Job id.
        id: String,
        /// How long to wait for the job to finish (0: answer at once).
        wait_ms: u64,
    },
    /// Puts a `start-later` job in the queue.
    Start {
        /// Client-chosen tag, returned with the answer.
        tag: u64,
        /// Job id.
        id: String,
    },
    /// Cancels a job that has not finished.
    Cancel {
        /// Client-chosen tag, returned with the answer.
        tag: u64,
        /// Job id.
        id: String,
    },
    /// Recent jobs, newest first.
    Jobs {
        /// Client-chosen tag, returned with the answer.
        tag: u64,
        /// Most jobs to list.
        limit: u32,
        /// Only jobs with this status word (empty: all).
        status: String,
    },
    /// Streams lifecycle events from now on as [`ToClient::Event`]s, until
    /// the connection closes.
    Events {
        /// Client-chosen tag, returned with every event.
        tag: u64,
        /// Only this job's events (empty: every event).
        job: String,
    },
}

impl Message for ToMaster {
    fn decode_header(h: &mut crate::header::Header<'_>) -> Option<Self> {
        // Submit is variant 0; its fields and `SubmitOptions`' in
        // declaration order.
        if h.u32()? != 0 {
            return None;
        }
        let tag = h.u64()?;
        let module = h.str()?.to_owned();
        let context = Bytes::copy_from_slice(h.bytes()?);
        let detach = h.bool()?;
        let start_later = h.bool()?;
        let timeout_ms = if h.some()? { Some(h.u64()?) } else { None };
        let priority = *crate::jobs::Priority::ALL.get(usize::try_from(h.u32()?).ok()?)?;
        let retries = h.u32()?;
        Some(ToMaster::Submit {
            tag,
            module,
            context,
            options: crate::jobs::SubmitOptions {
                detach,
                start_later,
                timeout_ms,
                priority,
                retries,
            },
            input: Bytes::new(),
        })
    }
    fn payload(&self) -> Option<&Bytes> {
        match self {
            ToMaster::Submit { input, .. } => Some(input),
            _ => None,
        }
    }
    fn set_payload(&mut self, payload: Bytes) -> bool {
        match self {
            ToMaster::Submit { input, .. } => *input = payload,
            _ => return false,
        }
        true
    }
}

/// Master → client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToClient {
    /// Answer to a good hello.
    Welcome {
        /// The master's [`PROTOCOL_VERSION`].
        version: u32,
        /// Largest payload the master accepts in one frame.
        max_payload: u64,
        /// This master run's job-id prefix: a job's id is
        /// `{instance}-{job}` ([`crate::jobs::format_id`]).
        instance: String,
    },
    /// The hello was refused (version, token); the master closes next.
    Refused {
        /// Why.
        message: String,
    },
    /// A part of a job's response, in the order the module sent them.
    Part {
        /// The submit's tag.
        tag: u64,
        /// Part bytes (payload).
        #[serde(skip)]
        data: Bytes,
    },
    /// The job completed; the payload is the module's response.
    Completed {
        /// The submit's tag.
        tag: u64,
        /// The master's job id.
        job: u64,
        /// The submit's context, unchanged.
        context: Bytes,
        /// Response bytes (payload).
        #[serde(skip)]
        output: Bytes,
    },
    /// The job failed (or was refused at submit).
    Failed {
        /// The submit's tag.
        tag: u64,
        /// The master's job number (refused jobs get one too).
        job: u64,
        /// The reason word.
        reason: Reason,
        /// Human-readable detail.
        message: String,
        /// The submit's context, unchanged.
        context: Bytes,
    },
    /// Answer to [`ToMaster::Stats`]: the JSON of `taskmaster stats`.
    Stats {
        /// The request's tag.
        tag: u64,
        /// JSON text, see [`crate::stats::Stats`].
        json: String,
    },
    /// Answer to a job operation ([`ToMaster::Status`], `Result`, `Start`,
    /// `Cancel`, `Jobs`) or to a detached submit: the same JSON body the
    /// HTTP API gives for it.
    Reply {
        /// The request's tag.
        tag: u64,
        /// How it went.
        outcome: Outcome,
        /// JSON text (see [`crate::jobs`]).
        json: String,
        /// A completed job's response, for `Result` (payload; else empty).
        #[serde(skip)]
        output: Bytes,
    },
    /// A lifecycle event, for a [`ToMaster::Events`] subscription.
    Event {
        /// The subscription's tag.
        tag: u64,
        /// The event name (`job-started`, `child-exited`, ...).
        name: String,
        /// The event's JSON (SPEC section 10: `time`, and `pid`, `job`,
        /// `module`, `reason`, `message`, `code`, `signal` where they apply).
        json: String,
    },
}

impl Message for ToClient {
    fn payload(&self) -> Option<&Bytes> {
        match self {
            ToClient::Part { data, .. } => Some(data),
            ToClient::Completed { output, .. } => Some(output),
            ToClient::Reply { output, .. } => Some(output),
            _ => None,
        }
    }
    fn set_payload(&mut self, payload: Bytes) -> bool {
        match self {
            ToClient::Part { data, .. } => *data = payload,
            ToClient::Completed { output, .. } => *output = payload,
            ToClient::Reply { output, .. } => *output = payload,
            _ => return false,
        }
        true
    }
}
