//! The figures `taskmaster stats` prints (and `GET /stats` serves): one
//! serde type shared by the master that fills it and the clients that read it.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Pool, queue and job counters at one moment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// The children.
    pub pool: PoolStats,
    /// The waiting jobs.
    pub queue: QueueStats,
    /// Job counters since start.
    pub jobs: JobStats,
    /// Child process counters since start.
    pub children: ChildStats,
    /// Seconds since the master started.
    pub uptime_secs: f64,
}

/// Children by state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PoolStats {
    /// `--pool-start`.
    pub start: usize,
    /// `--pool-max`.
    pub max: usize,
    /// Children alive (starting, idle, busy or retiring).
    pub size: usize,
    /// Children running a job.
    pub busy: usize,
    /// Ready children without a job.
    pub idle: usize,
    /// Children spawned but not yet ready.
    pub starting: usize,
}

/// The FIFO queue.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct QueueStats {
    /// Jobs waiting.
    pub len: usize,
    /// `--job-max`.
    pub max: usize,
}

/// Job outcomes since start.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JobStats {
    /// Jobs submitted (accepted or refused).
    pub submitted: u64,
    /// Jobs completed.
    pub completed: u64,
    /// Jobs failed, any reason but `cancelled` (refusals included).
    pub failed: u64,
    /// Jobs refused with `overload`.
    pub overload: u64,
    /// Jobs cancelled.
    pub cancelled: u64,
    /// Failure answers by reason word (refusals and cancellations too).
    pub failed_by_reason: BTreeMap<String, u64>,
    /// `start-later` jobs held now.
    pub start_later: usize,
    /// Finished jobs whose outcome is kept in the job table now.
    pub kept: usize,
}

/// Child processes since start.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChildStats {
    /// Processes spawned.
    pub spawned: u64,
    /// Processes exited and reaped.
    pub exited: u64,
    /// Children that died or were refused before they were ready.
    pub startup_failures: u64,
}
