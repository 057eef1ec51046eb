//! The taskmaster wire: messages, framing codec, handshake, and the async
//! Rust client. Nothing here knows about pools or processes.
//!
//! # Layout
//!
//! - [`messages`]: one enum per direction, one variant per operation;
//!   [`PROTOCOL_VERSION`].
//! - [`codec`]: framing and bincode, the only place that encodes or decodes;
//!   the size limits.
//! - [`handshake`]: the hello and its deadline, constant-time secret and
//!   token checks, the client token from the environment.
//! - [`reason`]: [`Reason`], the failure reasons of SPEC section 5.
//! - [`jobs`]: job ids, statuses, submit options and the JSON bodies of
//!   job operations, shared with the master's HTTP API.
//! - [`stats`]: [`Stats`], the `taskmaster stats` figures.
//! - [`hash`]: a cheap hash for a program's own keys (ids, tags, module
//!   names), shared by the client and the master.
//! - [`journal`]: the answer journal a child shares with its master (the
//!   answers it has not written yet survive its crash).
//! - [`outbox`]: one connection's outgoing side: a batching writer task,
//!   and the direct write that skips it for a message with nothing
//!   behind it (the master's answers, the client's lone submits).
//! - [`agent`]: the agent link (`taskmaster agent` to `--agent-listen`):
//!   its hello, its two message enums, its heartbeat pace.
//! - [`client`]: the async client (many jobs in flight, parts, job
//!   operations, events, `do_task`).
//!
//! # Frames
//!
//! ```text
//! +----------------+---------------------------+----------------------+
//! | length: u32 BE | bincode header            | payload (raw bytes)  |
//! | = header+payld | (LE, fixed-width ints)    | rest of the frame    |
//! +----------------+---------------------------+----------------------+
//! ```
//!
//! # A job's messages
//!
//! ```text
//! client                      master                        child
//!   | Hello::Client ------------>|                              |
//!   |<------------- Welcome      |<----------- Hello::Handler   |
//!   | Submit{tag} -------------->| (queue or free child)        |
//!   |                            | ToHandler::Job{job} -------->|
//!   |<------------- Part{tag}    |<------------ Part{job}       |  (0..n)
//!   |<------------- Completed    |<------------ Done{job}       |
//!   |     or Failed{reason}      |          or Failed{job}      |
//! ```

pub mod agent;
pub mod client;
pub mod codec;
pub mod handshake;
pub mod hash;
pub mod header;
#[cfg(test)]
mod header_tests;
pub mod jobs;
pub mod journal;
pub mod messages;
pub mod outbox;
pub mod reason;
pub mod stats;

pub use client::{
    BlockingClient, Client, ClientError, Completed, JobEvent, JobFailure, JobHandle, JobResult,
    Reply,
};
pub use jobs::{JobStatus, Outcome, Priority, SubmitOptions};
pub use messages::{PROTOCOL_VERSION, SECRET_LEN};
pub use reason::Reason;
pub use stats::Stats;
