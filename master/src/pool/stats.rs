//! What the pool reports about itself: `/healthz` and the stats JSON.

use super::*;
use taskmaster_proto::stats::{ChildStats, JobStats, PoolStats, QueueStats};
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
        }
    }
}
