//! Ids and reports shared by the pool, the child tasks and the job table:
//! a leaf that imports nothing of ours, so types flow one way (every
//! server module may import it; it imports none of them).

use bytes::Bytes;
use nix::sys::signal::Signal;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::Duration;
use taskmaster_proto::Reason;

/// The master's job number (the id's part after the instance prefix).
pub type JobId = u64;

/// The master's id for a child (not its pid, which the OS may reuse).
pub type ChildId = u64;

/// The master's own keys (job and child numbers, module names added only
/// by children) are hashed cheaply, not with SipHash.
pub use taskmaster_proto::hash::{FastMap, FastSet};

/// Where a child's task sends what happens to its child (the pool).
pub trait Reporter: Clone + Send + Sync + 'static {
    /// Child `id` reports `event`.
    fn child_event(&self, id: ChildId, event: ChildEvent);

    /// Child `id` reports `events`, in order (what one read of its socket
    /// brought).
    fn child_events(&self, id: ChildId, events: Vec<ChildEvent>) {
        for event in events {
            self.child_event(id, event);
        }
    }
}

/// What a child's task reports.
#[derive(Debug)]
pub enum ChildEvent {
    /// The process exists.
    Spawned {
        /// Its pid.
        pid: u32,
    },
    /// The child connected, proved its secret and named its modules.
    Ready {
        /// Module names.
        modules: Vec<String>,
    },
    /// A part of the current job's response.
    Part {
        /// Job id the child named.
        job: JobId,
        /// The bytes.
        data: Bytes,
    },
    /// The current job's response.
    Done {
        /// Job id the child named.
        job: JobId,
        /// The bytes.
        output: Bytes,
        /// The child exits after this: no more jobs for it.
        retire: bool,
    },
    /// The current job failed inside the child.
    Failed {
        /// Job id the child named.
        job: JobId,
        /// Reason word.
        reason: Reason,
        /// Text.
        message: String,
        /// The child exits after this.
        retire: bool,
    },
    /// No frame, not even a heartbeat, for this long: the child is stopped
    /// or frozen.
    Stalled {
        /// How long it has been silent.
        silent: Duration,
    },
    /// The child broke the protocol (a bad frame, output over
    /// `--max-payload`); its task kills it, and its job fails `error` with
    /// this cause.
    Broken {
        /// What it did.
        cause: String,
    },
    /// The process is gone and reaped (or could not be started).
    Exited(ExitInfo),
}

/// How a child process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitInfo {
    /// It exited or was killed.
    Status {
        /// Exit code, if it exited.
        code: Option<i32>,
        /// Signal number, if killed.
        signal: Option<i32>,
        /// The master sent the SIGKILL itself.
        killed_by_master: bool,
    },
    /// It could not be started at all.
    SpawnFailed(String),
    /// It ran on an agent whose link is gone; the text says how (its
    /// agent kills it).
    Lost(String),
}

impl ExitInfo {
    /// From a reaped process's status.
    pub fn from_status(status: ExitStatus, killed_by_master: bool) -> ExitInfo {
        ExitInfo::Status {
            code: status.code(),
            signal: status.signal(),
            killed_by_master,
        }
    }

    /// A phrase for logs and job messages: "exited with code 1",
    /// "was killed by signal SIGABRT".
    pub fn describe(&self) -> String {
        match self {
            ExitInfo::SpawnFailed(e) => format!("could not be started: {e}"),
            ExitInfo::Lost(how) => format!("was lost with its agent ({how})"),
            ExitInfo::Status {
                code: Some(code), ..
            } => format!("exited with code {code}"),
            ExitInfo::Status {
                signal: Some(sig),
                killed_by_master,
                ..
            } => {
                let name = Signal::try_from(*sig)
                    .map_or_else(|_| sig.to_string(), |s| s.as_str().to_owned());
                if *sig == Signal::SIGKILL as i32 && !killed_by_master {
                    format!("was killed by signal {name} (possibly the OOM killer)")
                } else {
                    format!("was killed by signal {name}")
                }
            }
            ExitInfo::Status { .. } => "ended".to_owned(),
        }
    }
}
