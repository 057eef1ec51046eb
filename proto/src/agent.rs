//! The agent link (`taskmaster agent`, SPEC section 14): one connection from
//! an agent on another host to the master's `--agent-listen`, carrying the
//! jobs of all the agent's children, multiplexed by the agent's child id.
//!
//! The agent opens with [`crate::messages::Hello::Agent`]; the master
//! answers [`ToAgent::Welcome`] (or [`ToAgent::Refused`] and closes). Then
//! the agent announces each child once it is ready ([`FromAgent::ChildUp`])
//! and relays its answers; the master sends jobs and stop/kill orders for a
//! child. Both sides send a heartbeat every [`LINK_HEARTBEAT`]; a side that
//! hears nothing for [`LINK_SILENCE`] drops the link.

pub use crate::messages::AgentHello;
use crate::messages::Message;
use crate::reason::Reason;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// How often each side of a link sends [`ToAgent::Heartbeat`] /
/// [`FromAgent::Heartbeat`].
pub const LINK_HEARTBEAT: Duration = Duration::from_millis(500);

/// A link silent this long (no frame at all) is lost.
pub const LINK_SILENCE: Duration = Duration::from_millis(2_000);

/// How a child on an agent ended (the agent's reading of its exit).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChildEnd {
    /// It exited or was killed.
    Status {
        /// Exit code, if it exited.
        code: Option<i32>,
        /// Signal number, if killed.
        signal: Option<i32>,
        /// The agent sent the SIGKILL (on the master's order or its own).
        killed: bool,
    },
    /// It could not be started.
    SpawnFailed(String),
}

/// Master → agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToAgent {
    /// The hello was accepted: the agent may spawn its children.
    Welcome {
        /// The master's [`crate::PROTOCOL_VERSION`].
        version: u32,
        /// The master's job-id prefix (executable modules' environment).
        instance: String,
        /// The master's `--max-payload`: children refuse bigger output.
        max_payload: u64,
        /// The master's `--heartbeat-ms` for children (0: none).
        child_heartbeat_ms: u64,
    },
    /// The hello was refused; the master closes the link.
    Refused {
        /// Why.
        message: String,
    },
    /// Run a job on a child.
    Job {
        /// The agent's child id.
        child: u64,
        /// Job number (the id's part after the instance prefix).
        job: u64,
        /// Module name.
        module: String,
        /// Input bytes (payload).
        #[serde(skip)]
        input: Bytes,
    },
    /// Stop a child: SIGTERM, SIGKILL after a grace.
    Stop {
        /// The agent's child id.
        child: u64,
    },
    /// SIGTERM now, SIGKILL after a short grace (its job's time limit).
    Terminate {
        /// The agent's child id.
        child: u64,
    },
    /// SIGKILL now.
    Kill {
        /// The agent's child id.
        child: u64,
    },
    /// "Still here".
    Heartbeat,
}

/// Agent → master.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FromAgent {
    /// A child is ready for jobs.
    ChildUp {
        /// The agent's id for it (never reused on one link).
        child: u64,
        /// Its pid on the agent's host.
        pid: u32,
        /// The modules it runs.
        modules: Vec<String>,
    },
    /// A part of a child's running job.
    Part {
        /// The agent's child id.
        child: u64,
        /// Job number.
        job: u64,
        /// Part bytes (payload).
        #[serde(skip)]
        data: Bytes,
    },
    /// A child's job is done.
    Done {
        /// The agent's child id.
        child: u64,
        /// Job number.
        job: u64,
        /// The child exits after this answer.
        retire: bool,
        /// Response bytes (payload).
        #[serde(skip)]
        output: Bytes,
    },
    /// A child's job failed inside it.
    Failed {
        /// The agent's child id.
        child: u64,
        /// Job number.
        job: u64,
        /// `failed` or `unknown-module`.
        reason: Reason,
        /// Text.
        message: String,
        /// The child exits after this answer.
        retire: bool,
    },
    /// A child sent no heartbeat for this long (the master orders a kill).
    Stalled {
        /// The agent's child id.
        child: u64,
        /// Milliseconds of silence.
        silent_ms: u64,
    },
    /// A child broke the protocol; the agent has killed it.
    Broken {
        /// The agent's child id.
        child: u64,
        /// What it did.
        cause: String,
    },
    /// A child is gone (reaped); the agent starts another in its place.
    ChildGone {
        /// The agent's child id.
        child: u64,
        /// How it ended.
        end: ChildEnd,
    },
    /// "Still here".
    Heartbeat,
    /// The agent is stopping (SIGTERM): send its children no more jobs and
    /// stop each once it has finished the ones it holds.
    Draining,
}

impl Message for ToAgent {
    fn payload(&self) -> Option<&Bytes> {
        match self {
            ToAgent::Job { input, .. } => Some(input),
            _ => None,
        }
    }
    fn set_payload(&mut self, payload: Bytes) -> bool {
        match self {
            ToAgent::Job { input, .. } => *input = payload,
            _ => return false,
        }
        true
    }
}

impl Message for FromAgent {
    fn payload(&self) -> Option<&Bytes> {
        match self {
            FromAgent::Part { data, .. } => Some(data),
            FromAgent::Done { output, .. } => Some(output),
            _ => None,
        }
    }
    fn set_payload(&mut self, payload: Bytes) -> bool {
        match self {
            FromAgent::Part { data, .. } => *data = payload,
            FromAgent::Done { output, .. } => *output = payload,
            _ => return false,
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode, encode};
    use bytes::BytesMut;

    fn round_trip<M: Message + PartialEq + std::fmt::Debug>(msg: M) {
        let mut buf = BytesMut::new();
        encode(&msg, &mut buf).unwrap();
        let frame = buf.split_off(4);
        assert_eq!(decode::<M>(frame).unwrap(), msg);
    }

    #[test]
    fn every_message_round_trips() {
        round_trip(ToAgent::Job {
            child: 3,
            job: 77,
            module: "echo".into(),
            input: Bytes::from_static(b"hi"),
        });
        round_trip(ToAgent::Welcome {
            version: crate::PROTOCOL_VERSION,
            instance: "abc".into(),
            max_payload: 1 << 20,
            child_heartbeat_ms: 1000,
        });
        round_trip(ToAgent::Kill { child: 9 });
        round_trip(FromAgent::Done {
            child: 3,
            job: 77,
            retire: false,
            output: Bytes::from_static(b"out"),
        });
        round_trip(FromAgent::Part {
            child: 3,
            job: 77,
            data: Bytes::new(),
        });
        round_trip(FromAgent::ChildGone {
            child: 3,
            end: ChildEnd::Status {
                code: None,
                signal: Some(9),
                killed: true,
            },
        });
        round_trip(FromAgent::Failed {
            child: 1,
            job: 2,
            reason: Reason::Failed,
            message: "boom".into(),
            retire: true,
        });
    }

    #[test]
    fn a_payload_on_a_bodiless_message_is_malformed() {
        let mut buf = BytesMut::new();
        encode(&FromAgent::Heartbeat, &mut buf).unwrap();
        buf.extend_from_slice(b"junk");
        let len = (buf.len() - 4) as u32;
        buf[..4].copy_from_slice(&len.to_be_bytes());
        assert!(decode::<FromAgent>(buf.split_off(4)).is_err());
    }
}
