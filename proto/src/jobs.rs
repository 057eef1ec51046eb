//! The job lifecycle as clients see it: job ids, statuses, and the JSON
//! bodies shared by the socket's [`ToClient::Reply`](crate::messages::ToClient)
//! and the HTTP API, so both always say the same thing in the same words.

use crate::reason::Reason;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Hex digits of a master's instance prefix in job ids.
pub const INSTANCE_LEN: usize = 12;

/// Where a job is in its life. The words are those of SPEC section 6.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JobStatus {
    /// Accepted but held until someone starts it.
    StartLater,
    /// Waiting for a child (in the queue, or written to a busy child's
    /// socket behind its running job).
    Queued,
    /// Running in a child.
    Processing,
    /// Finished with a response.
    Completed,
    /// Finished with a failure reason.
    Failed,
    /// Cancelled before it finished.
    Cancelled,
}

impl JobStatus {
    /// Every status.
    pub const ALL: [JobStatus; 6] = [
        JobStatus::StartLater,
        JobStatus::Queued,
        JobStatus::Processing,
        JobStatus::Completed,
        JobStatus::Failed,
        JobStatus::Cancelled,
    ];

    /// The status word.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::StartLater => "start-later",
            JobStatus::Queued => "queued",
            JobStatus::Processing => "processing",
            JobStatus::Completed => "completed",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    /// Whether the job has ended (completed, failed or cancelled).
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            JobStatus::Completed | JobStatus::Failed | JobStatus::Cancelled
        )
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// A word that is not a job status.
#[derive(Debug, thiserror::Error)]
#[error("unknown job status {0:?} (one of start-later, queued, processing, completed, failed, cancelled)")]
pub struct UnknownStatus(pub String);

impl FromStr for JobStatus {
    type Err = UnknownStatus;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobStatus::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.to_owned()))
    }
}

/// The job id a client sees: `{instance}-{job}`, where `instance` is the
/// master's random per-run prefix (from its Welcome) and `job` the number on
/// the wire, so ids never repeat across master restarts.
pub fn format_id(instance: &str, job: u64) -> String {
    // Every answer a client reads carries one: `itoa` and one allocation of
    // the right size are a tenth of what `format!` costs.
    let mut digits = itoa::Buffer::new();
    let number = digits.format(job);
    let mut id = String::with_capacity(instance.len() + 1 + number.len());
    id.push_str(instance);
    id.push('-');
    id.push_str(number);
    id
}

/// A job id that cannot be one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed job id {0:?} (expected {INSTANCE_LEN} hex digits, '-', a job number)")]
pub struct BadId(pub String);

/// Splits a job id into its instance prefix and job number.
pub fn parse_id(id: &str) -> Result<(&str, u64), BadId> {
    let bad = || BadId(id.chars().take(64).collect());
    let (instance, number) = id.split_once('-').ok_or_else(bad)?;
    let hex = |c: char| c.is_ascii_digit() || ('a'..='f').contains(&c);
    if instance.len() != INSTANCE_LEN || !instance.chars().all(hex) {
        return Err(bad());
    }
    if number.is_empty() || number.starts_with('0') || !number.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let job = number.parse::<u64>().map_err(|_| bad())?;
    Ok((instance, job))
}

/// Where a job waits in the queue: higher first, FIFO within one
/// (SPEC section 16). The wire carries the variant index (0 high, 1
/// normal, 2 low).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Priority {
    /// Ahead of every normal and low job.
    High,
    /// The default.
    #[default]
    Normal,
    /// Behind every high and normal job.
    Low,
}

impl Priority {
    /// Every priority, highest first (the queue's lanes).
    pub const ALL: [Priority; 3] = [Priority::High, Priority::Normal, Priority::Low];

    /// The word of the CLI, HTTP and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }

    /// Its lane in the queue, 0 first.
    pub fn lane(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for Priority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Priority {
    type Err = String;
    fn from_str(s: &str) -> Result<Priority, String> {
        Priority::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| format!("expected high, normal or low, got {s:?}"))
    }
}

/// The most retries a submit may ask for.
pub const MAX_RETRIES: u32 = 100;

/// Options of a submit beyond module and input.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubmitOptions {
    /// Do not wait on this connection: the master answers at once with the
    /// job id (a [`Reply`](crate::messages::ToClient::Reply)) and keeps the
    /// outcome in its job table.
    pub detach: bool,
    /// Hold the job as `start-later` until it is started (implies detach).
    pub start_later: bool,
    /// Run-time limit in milliseconds, replacing the master's
    /// `--job-timeout`; `Some(0)` means no limit, `None` the default.
    pub timeout_ms: Option<u64>,
    /// Its place in the queue.
    pub priority: Priority,
    /// The job is idempotent: when its child dies or its time limit
    /// passes, it runs again on another child, up to this many more times
    /// (at most [`MAX_RETRIES`]; a job that has killed 3 children fails
    /// `error`, "poison job", whatever this says).
    pub retries: u32,
}

impl SubmitOptions {
    /// The wire's milliseconds for a time limit: 0 stays 0 (no limit), any
    /// other duration rounds up, so a limit under a millisecond is still a
    /// limit, never "none".
    pub fn timeout_ms(limit: std::time::Duration) -> u64 {
        if limit.is_zero() {
            return 0;
        }
        u64::try_from(limit.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX)
    }
}

/// How an operation on a job went: the kind of a
/// [`Reply`](crate::messages::ToClient::Reply). HTTP maps each to a status
/// code (200/202, 404, 409, 400, and the failure codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Done; the JSON is the answer ([`JobRef`], [`JobView`] or [`JobList`]).
    Ok,
    /// No such job (never was, evicted, or from another master run).
    NotFound,
    /// The job is not in a state that allows this; the JSON is a [`JobRef`].
    Conflict,
    /// The request itself is malformed; the JSON is an [`ErrorBody`].
    Invalid,
    /// The job failed, was cancelled, or was refused; the JSON is a
    /// [`FailureBody`].
    Failed,
}

/// `{"id","status"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRef {
    /// Job id.
    pub id: String,
    /// Its status.
    pub status: JobStatus,
}

/// Everything the master knows about one job (`GET /jobs/{id}`,
/// `taskmaster status`). Times are RFC 3339 in UTC; absent fields are left
/// out of the JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobView {
    /// Job id.
    pub id: String,
    /// Module name.
    pub module: String,
    /// Status.
    pub status: JobStatus,
    /// Failure reason word, for failed and cancelled jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
    /// Failure detail, for failed and cancelled jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When it was accepted.
    pub created_at: String,
    /// When a child started it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// When it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
}

/// A failure answer: `{"id","status","reason","message"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureBody {
    /// Job id.
    pub id: String,
    /// `failed`, or `cancelled` for a cancelled job.
    pub status: JobStatus,
    /// Reason word.
    pub reason: Reason,
    /// Detail.
    pub message: String,
}

/// `{"error"}`: a malformed request or an unknown job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What is wrong.
    pub error: String,
}

/// `{"jobs":[...]}`, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobList {
    /// The jobs.
    pub jobs: Vec<JobView>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limit_under_a_millisecond_is_still_a_limit() {
        use std::time::Duration;
        assert_eq!(SubmitOptions::timeout_ms(Duration::ZERO), 0);
        assert_eq!(SubmitOptions::timeout_ms(Duration::from_nanos(1)), 1);
        assert_eq!(SubmitOptions::timeout_ms(Duration::from_micros(400)), 1);
        assert_eq!(SubmitOptions::timeout_ms(Duration::from_millis(1500)), 1500);
        assert_eq!(
            SubmitOptions::timeout_ms(Duration::from_micros(1_500_001)),
            1501
        );
    }

    #[test]
    fn ids_are_written_as_format_would() {
        for n in [0, 1, 9, 10, 42, 99_999, 1 << 40, u64::MAX - 1, u64::MAX] {
            assert_eq!(format_id("0123456789ab", n), format!("0123456789ab-{n}"));
        }
    }

    #[test]
    fn ids_parse_and_reject() {
        let id = format_id("0123456789ab", 42);
        assert_eq!(parse_id(&id).unwrap(), ("0123456789ab", 42));
        for bad in [
            "",
            "42",
            "0123456789ab-",
            "0123456789ab-0",
            "0123456789ab-042",
            "0123456789AB-1",
            "0123456789a-1",
            "0123456789abc-1",
            "0123456789ab-1x",
            "0123456789ab-99999999999999999999999",
            "../etc",
        ] {
            assert!(parse_id(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn status_words_roundtrip() {
        for st in JobStatus::ALL {
            assert_eq!(st.as_str().parse::<JobStatus>().unwrap(), st);
            let json = serde_json::to_string(&st).unwrap();
            assert_eq!(json, format!("\"{st}\""));
        }
        for r in Reason::ALL {
            assert_eq!(serde_json::to_string(&r).unwrap(), format!("\"{r}\""));
        }
    }
}
