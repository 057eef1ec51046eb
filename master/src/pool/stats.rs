//! What the pool reports about itself: `/healthz` and the stats JSON,
//! with a line per child for `taskmaster top`.

use super::*;
use taskmaster_proto::stats::{ChildInfo, ChildStats, JobStats, PoolStats, QueueStats};
use taskmaster_proto::Stats;

impl Pool {
    pub(super) fn health(&self) -> Health {
        if self.shutting_down {
            Health::ShuttingDown
        } else if let Some(cause) = self.breaker.tripped() {
            Health::Broken(cause.to_owned())
        } else if self.ready_logged {
            Health::Ready
        } else {
            Health::Starting
        }
    }

    pub(super) fn stats(&self) -> Stats {
        Stats {
            pool: PoolStats {
                start: self.cfg.pool_start,
                max: self.cfg.pool_max,
                size: self.children.len(),
                busy: self.busy,
                idle: self.idle.len(),
                starting: self.starting,
                children: self.child_infos(),
            },
            queue: QueueStats {
                len: self.backlog(),
                max: self.cfg.job_max,
            },
            jobs: JobStats {
                submitted: self.counters.submitted,
                completed: self.counters.completed,
                failed: self.counters.failed,
                overload: self.counters.overload,
                cancelled: self.counters.cancelled,
                start_later: self.table.start_later(),
                kept: self.table.kept(),
                retried: self.counters.retried,
                poisoned: self.counters.poisoned,
                failed_by_reason: self
                    .counters
                    .by_reason
                    .iter()
                    .map(|(r, n)| (r.as_str().to_owned(), *n))
                    .collect(),
            },
            children: ChildStats {
                spawned: self.counters.spawned,
                exited: self.counters.exited,
                startup_failures: self.counters.startup_failures,
            },
            uptime_secs: self.started_at.elapsed().as_secs_f64(),
            agents: self.agent_infos(),
        }
    }

    /// Each child as the stats show it, oldest first.
    ///
    /// Its resident memory is read from `/proc` here, one small file per
    /// child and stats request, on the actor's thread but never on the
    /// job path: a caller polling stats in a tight loop pays for it, a
    /// `taskmaster top` once a second does not notice.
    fn child_infos(&self) -> Vec<ChildInfo> {
        let mut ids: Vec<ChildId> = self.children.keys().copied().collect();
        ids.sort_unstable();
        ids.into_iter()
            .map(|id| {
                let slot = &self.children[&id];
                let front = slot.jobs.front();
                // The job table knows its module. A job already answered
                // and forgotten there (cancelled or timed out under
                // `--forget-answered`) may still be held by the child for
                // a moment: then the module is the held copy of a
                // prefetched job's, or left out.
                let module = front.and_then(|held| {
                    self.table
                        .get(held.id)
                        .map(|r| r.module().to_owned())
                        .or_else(|| held.resend.as_ref().map(|(m, _)| m.clone()))
                });
                ChildInfo {
                    id,
                    pid: slot.pid,
                    state: match slot.state {
                        State::Starting => "starting",
                        State::Idle => "idle",
                        State::Busy => "busy",
                        State::Stopping => "stopping",
                    }
                    .to_owned(),
                    job: front.map(|held| self.table.id(held.id)),
                    module,
                    prefetched: slot.jobs.len().saturating_sub(1),
                    jobs_run: slot.jobs_done,
                    rss_bytes: slot
                        .pid
                        .filter(|_| slot.agent.is_none())
                        .and_then(recycle::rss_bytes),
                    agent: slot.agent.map(|a| self.agent_name(a).to_string()),
                }
            })
            .collect()
    }
}
