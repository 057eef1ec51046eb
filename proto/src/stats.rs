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
    /// Agents connected now (`--agent-listen`), oldest first. Defaults to
    /// empty so that a newer client still reads an older master's JSON.
    #[serde(default)]
    pub agents: Vec<AgentInfo>,
}

/// One connected agent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentInfo {
    /// Its name (`taskmaster agent --name`).
    pub name: String,
    /// The address its link comes from.
    pub address: String,
    /// The slots it offered (`--slots`).
    pub slots: u32,
    /// Its children ready or busy now (fewer than `slots` while it
    /// replaces one).
    pub children: usize,
    /// Its children running a job.
    pub busy: usize,
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
    /// Each child alive, oldest first (what `taskmaster top` shows).
    /// Defaults to empty so that a newer client still reads an older
    /// master's JSON, which has no such list.
    #[serde(default)]
    pub children: Vec<ChildInfo>,
}

/// One child now.
///
/// Optional fields are left out of the JSON when unknown, never `null`
/// (as everywhere in the HTTP API).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChildInfo {
    /// The master's number for it (its `--child-id`), known before its pid.
    pub id: u64,
    /// Its process id, once spawned (on its agent's host for an agent's
    /// child).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// The agent it runs on (absent for the master's own children).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// `starting`, `idle`, `busy` or `stopping`. (A string, not an enum,
    /// so that a client never fails on a state a newer master adds.)
    pub state: String,
    /// The id of the job it runs (or was told to stop in).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// That job's module.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
    /// Jobs sent to it behind the running one (prefetch), not started yet.
    #[serde(default)]
    pub prefetched: usize,
    /// Jobs it has finished.
    pub jobs_run: u64,
    /// Its resident memory in bytes, read from `/proc` when the stats were
    /// taken (absent off Linux or once the process is gone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rss_bytes: Option<u64>,
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
    /// Runs of idempotent jobs (`--retries`) after their child died or
    /// their time limit passed.
    #[serde(default)]
    pub retried: u64,
    /// Jobs quarantined as poison (they killed 3 children).
    #[serde(default)]
    pub poisoned: u64,
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
