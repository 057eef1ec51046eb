//! Recycling: retiring children (after `--max-jobs-per-child` jobs, past
//! `--max-child-rss`, when asked by the handler), idle shrink above
//! `pool-start`, and the SIGHUP rolling restart, one child at a time.

use super::*;
use crate::child::ChildCtl;
use crate::events::Event;
use tokio::time::Instant;
use tracing::info;

impl Pool {
    /// Stops a child that holds no job (it exits and is reaped; the pool
    /// refills to `pool-start` if it must).
    pub(super) fn retire(&mut self, id: ChildId, why: &str) {
        let Some(slot) = self.children.get_mut(&id) else {
            return;
        };
        info!(pid = slot.pid, child = id, why, "child retired");
        let _ = slot.ctl.send(ChildCtl::Stop);
        let pid = slot.pid;
        self.set_state(id, State::Stopping);
        self.events.emit(|| Event {
            pid,
            message: Some(why.to_owned()),
            ..Event::new("child-retired")
        });
    }

    /// Stops children idle past `--idle-timeout`, longest idle first, while
    /// the pool is above `pool-start`; never a busy one.
    pub(super) fn shrink_idle(&mut self) {
        if self.shutting_down {
            return;
        }
        let now = Instant::now();
        // Old children a rolling restart retires after their job do not
        // count: their replacements are what stays.
        let live = |p: &Pool| {
            p.children
                .values()
                .filter(|s| s.agent.is_none() && s.state != State::Stopping && !s.retire_when_free)
                .count()
        };
        while live(self) > self.cfg.pool_start {
            // The idle list is most-recently-freed first: the back has
            // waited longest.
            // (An agent's children are its own to keep.)
            let Some(&oldest) = self
                .idle
                .iter()
                .rev()
                .find(|c| self.children[*c].agent.is_none())
            else {
                return;
            };
            let since = self.children[&oldest].idle_since;
            if now.duration_since(since) < self.cfg.idle_timeout {
                self.idle_check = Some(since + self.cfg.idle_timeout);
                return;
            }
            self.retire(oldest, "idle past --idle-timeout");
        }
    }

    /// A new child's job limit: `--max-jobs-per-child` plus a random share
    /// of `--max-jobs-jitter`.
    pub(super) fn job_limit(&self) -> u64 {
        if self.cfg.max_jobs_per_child == 0 {
            return 0;
        }
        let jitter = match self.cfg.max_jobs_jitter {
            0 => 0,
            j => {
                let r = crate::child::fresh_secret();
                u64::from_le_bytes(r[..8].try_into().expect("8 bytes")) % (j + 1)
            }
        };
        self.cfg.max_jobs_per_child + jitter
    }

    /// SIGHUP: every child of an older generation is replaced by a fresh
    /// one from the handler program on disk, one at a time. The fresh child
    /// starts first (the pool may hold one child above `pool-max` for a
    /// moment), so ready children never drop below what was there.
    pub(super) fn restart(&mut self) {
        if self.shutting_down {
            return;
        }
        self.generation += 1;
        self.restarting = true;
        let stale = self.stale_children().len();
        info!(
            children = stale,
            generation = self.generation,
            "rolling restart begun"
        );
        self.roll();
    }

    pub(super) fn stale_children(&self) -> Vec<ChildId> {
        let mut ids: Vec<ChildId> = self
            .children
            .iter()
            .filter(|(_, s)| {
                s.agent.is_none()
                    && s.generation < self.generation
                    && s.state != State::Stopping
                    && !s.retire_when_free
            })
            .map(|(&id, _)| id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Starts the next step of a rolling restart, if one is due.
    pub(super) fn roll(&mut self) {
        if self.shutting_down || self.rolling.is_some() || self.breaker.tripped().is_some() {
            return;
        }
        // One old child at a time: wait for the one finishing its job.
        let old_finishing = self
            .children
            .values()
            .any(|s| s.agent.is_none() && s.retire_when_free && s.state != State::Stopping);
        if self.stale_children().is_empty() {
            if self.restarting && !old_finishing {
                self.restarting = false;
                info!(generation = self.generation, "rolling restart done");
            }
            return;
        }
        // One above pool-max at most: the next fresh child waits until the
        // old one just retired has exited.
        if old_finishing || self.local_children() > self.cfg.pool_max {
            return;
        }
        if self.starting > 0 {
            // A child starting anyway (a replacement) will do as well: wait
            // for it, then retire an old one.
            if let Some((&id, _)) = self
                .children
                .iter()
                .find(|(_, s)| s.state == State::Starting && s.generation == self.generation)
            {
                self.rolling = Some(id);
                return;
            }
        }
        self.rolling = Some(self.next_child);
        self.spawn_child();
    }

    /// Retires one old child for the fresh one `fresh`: an idle one now,
    /// else the first busy one after its job. Never `fresh` itself, even if
    /// another SIGHUP made it old while it started: it takes work now and
    /// is replaced in a later step.
    pub(super) fn replace_one_stale(&mut self, fresh: ChildId) {
        let mut stale = self.stale_children();
        stale.retain(|&c| c != fresh);
        let idle = stale
            .iter()
            .copied()
            .find(|id| self.children[id].state == State::Idle);
        match idle.or_else(|| stale.first().copied()) {
            Some(id) if self.children[&id].state == State::Idle => {
                self.retire(id, "replaced by a fresh child (SIGHUP)");
            }
            Some(id) => {
                if let Some(slot) = self.children.get_mut(&id) {
                    slot.retire_when_free = true;
                }
            }
            None => {}
        }
    }

    pub(super) fn after_job(&mut self, id: ChildId, retire: bool) {
        let Some(slot) = self.children.get_mut(&id) else {
            return;
        };
        slot.jobs_done += 1;
        if !slot.started {
            self.mark_started(id);
        }
        let Some(slot) = self.children.get_mut(&id) else {
            return;
        };
        if slot.state == State::Stopping {
            // Being killed (its job was cancelled or timed out) or retired.
            return;
        }
        let mut why = retire.then_some("the handler asked to retire");
        if slot.job_limit > 0 && slot.jobs_done >= slot.job_limit {
            why = Some("ran --max-jobs-per-child jobs");
        }
        // (An agent's child's pid is on another host: not ours to read.)
        let local_pid = slot.pid.filter(|_| slot.agent.is_none());
        if let (Some(limit), Some(pid), None) = (self.cfg.max_child_rss, local_pid, why) {
            if slot.jobs.is_empty() && rss_bytes(pid).is_some_and(|rss| rss > limit) {
                why = Some("resident memory above --max-child-rss");
            }
        }
        if let Some(why) = why {
            info!(
                pid = slot.pid,
                child = id,
                jobs = slot.jobs_done,
                why,
                "child retiring"
            );
            let pid = slot.pid;
            self.events.emit(|| Event {
                pid,
                message: Some(why.to_owned()),
                ..Event::new("child-retired")
            });
        }
        let retire = why.is_some();
        if retire {
            let Some(slot) = self.children.get_mut(&id) else {
                return;
            };
            let _ = slot.ctl.send(ChildCtl::Stop);
            let unstarted = std::mem::take(&mut slot.jobs);
            slot.window = 0;
            self.set_state(id, State::Stopping);
            if !unstarted.is_empty() {
                self.busy -= 1;
                self.prefetched -= unstarted.len();
                self.requeue(unstarted);
            }
            self.dispatch_queue();
            self.prefetch();
        } else if slot.jobs.is_empty() {
            self.child_free(id);
        } else {
            self.prefetch();
        }
    }
}

/// A process's resident memory, from `/proc/PID/status` (also shown
/// per child in the stats).
pub(super) fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
