//! Run-time estimates per module, for `--prefetch auto`: a job is sent
//! behind a busy child's running job only when that child's window is
//! known to be short, so a quick job never waits behind a slow one.
//!
//! The rule: each module's run time is an exponentially weighted moving
//! average of its jobs' (started to answered). With the pool at
//! `pool-max`, no child idle and jobs queued, the front job may join the
//! window of a busy child (the one with the least estimated work) only if
//! its module has an estimate, and that child's window (every job already
//! sent to it, each at its module's estimate, the running one in full) is
//! at most [`BUDGET`], and the window holds fewer than [`MAX_WINDOW`]
//! jobs. A module never seen, or slow, is never prefetched and never
//! prefetched behind. So the extra wait a job can suffer from prefetch
//! (the time it spends in a window rather than going to the next child
//! that frees up) is bounded by the budget, as far as the estimates hold.
//!
//! One exception to "an idle child first": jobs that arrive in one round
//! of the pool's inbox (one wake-up of the master) may join the write of
//! the child already sent a job in that round instead of waking an idle
//! child, if the job's estimate is at most [`COALESCE`], that child holds
//! fewer than [`COALESCE_JOBS`] jobs and its window stays within the
//! budget (and, as for prefetch, not while the pool may still grow with no
//! child idle). Waking a sleeping child costs tens of µs on a busy machine (a
//! context switch, often on the other CPU); for jobs shorter than that, one
//! awake child running a few in a row is cheaper for everyone. The bound
//! on the extra wait is the same budget.

use crate::types::FastMap;
use std::sync::Arc;
use std::time::Duration;

/// Most estimated work (µs) a busy child's window may hold for another job
/// to be sent behind it.
pub const BUDGET: u64 = 2_000;
/// Most jobs one child holds under `auto`.
pub const MAX_WINDOW: usize = 64;
/// A job estimated at most this (µs) may join the write of the child sent
/// a job in the same round instead of waking an idle child...
pub const COALESCE: u64 = 500;
/// ...while that child holds fewer than this many jobs.
pub const COALESCE_JOBS: usize = 16;
/// The estimate of a module with no finished job yet: never short.
pub const UNKNOWN: u64 = 1 << 40;

/// Per-module moving averages of run time, in µs.
#[derive(Default)]
pub struct RunTimes {
    by_module: FastMap<Arc<str>, u64>,
}

impl RunTimes {
    /// A job of `module` ran for `ran`.
    pub fn observe(&mut self, module: &Arc<str>, ran: Duration) {
        let us = u64::try_from(ran.as_micros())
            .unwrap_or(UNKNOWN)
            .min(UNKNOWN);
        match self.by_module.get_mut(module) {
            // Weight 1/4 for the newest: a module that turns slow stops
            // being prefetched within a few jobs.
            Some(avg) => *avg = (*avg * 3 + us) / 4,
            None => {
                self.by_module.insert(module.clone(), us);
            }
        }
    }

    /// The estimated run time of a job of `module`, µs ([`UNKNOWN`] if none
    /// has finished yet).
    pub fn estimate(&self, module: &str) -> u64 {
        self.by_module.get(module).copied().unwrap_or(UNKNOWN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_until_seen_then_averaged() {
        let mut t = RunTimes::default();
        let echo: Arc<str> = Arc::from("echo");
        assert_eq!(t.estimate("echo"), UNKNOWN);
        t.observe(&echo, Duration::from_micros(40));
        assert_eq!(t.estimate("echo"), 40);
        t.observe(&echo, Duration::from_micros(80));
        assert_eq!(t.estimate("echo"), 50);
        // A module turning slow leaves the budget within a few jobs.
        for _ in 0..4 {
            t.observe(&echo, Duration::from_secs(1));
        }
        assert!(t.estimate("echo") > BUDGET);
    }
}
