//! Dispatch: admission of a submit (`overload`, `unknown-module`, a broken
//! pool), the FIFO queue, handing jobs to free children (first free
//! first), prefetch into busy children's windows, and `finish`, the one
//! place every job is answered, counted and recorded.

use super::estimate;
use super::*;
use crate::child::ChildCtl;
use crate::config::Prefetch;
use crate::events::Event;
use crate::job::{Answer, Body, JobId, Queued, Reply, Submission};
use crate::table::End;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use taskmaster_proto::codec::clip_message;
use taskmaster_proto::jobs::JobStatus;
use taskmaster_proto::Reason;
use tokio::sync::mpsc;
use tracing::debug;

impl Pool {
    /// Answers a job once: counts it, records it in the job table (waking
    /// its waiters, disarming its time limit) and tells its submitter.
    pub(super) fn finish(&mut self, job: JobId, reply: Option<Reply>, end: End) {
        // One bound for every failure message, whichever way it is read
        // (socket, HTTP, status): a module name or a child's text may be long.
        let end = match end {
            End::Failed(reason, message) => End::Failed(reason, clip_message(message)),
            completed => completed,
        };
        if self.events.wanted() {
            let mut e = Event::new(match &end {
                End::Completed(_) => "job-completed",
                End::Failed(Reason::Cancelled, _) => "job-cancelled",
                End::Failed(..) => "job-failed",
            });
            e.job = Some(self.table.id(job));
            if let Some(r) = self.table.get(job) {
                e.module = Some(r.module().to_owned());
                e.pid = r
                    .child
                    .and_then(|c| self.children.get(&c))
                    .and_then(|s| s.pid);
            }
            if let End::Failed(reason, message) = &end {
                e.reason = Some(*reason);
                e.message = Some(message.clone());
            }
            self.events.emit(|| e);
        }
        match &end {
            End::Completed(_) => {
                debug!(job, "job completed");
                self.counters.completed += 1;
                self.metrics.completed.inc();
            }
            End::Failed(reason, message) => {
                debug!(job, %reason, detail = %message, "job failed");
                *self.counters.by_reason.entry(*reason).or_default() += 1;
                match reason {
                    Reason::Cancelled => self.counters.cancelled += 1,
                    Reason::Overload => {
                        self.counters.overload += 1;
                        self.counters.failed += 1;
                    }
                    _ => self.counters.failed += 1,
                }
                self.metrics.failure(*reason);
            }
        }
        // With --forget-answered, a job answered on its submitter's
        // connection leaves the table: nobody else asks for it, and keeping
        // it is most of the table's cost per job.
        let keep = !(self.cfg.forget_answered && matches!(reply, Some(Reply::Conn(_))));
        let mut answer = reply.map(|reply| (reply, end.clone()));
        // The last answer of a round goes out before the bookkeeping below,
        // on the client's socket itself (`Outbox::send_now`): a closed loop
        // waits for neither. (With a store, its record is sent first.)
        if self.quiet && self.store.is_none() {
            let done = answer.take_if(|(_, end)| matches!(end, End::Completed(_)));
            if let Some((reply, End::Completed(output))) = done {
                reply.completed(job, output, true);
            }
        }
        if let Some(ended) = self.table.finish(job, end, keep) {
            if let Some(key) = ended.timer {
                self.timers.try_remove(&key);
            }
            if let Some(waited) = ended.waited {
                self.metrics.queue_wait.observe(waited.as_secs_f64());
            }
            if let Some(ran) = ended.ran {
                self.metrics.run_time.observe(ran.as_secs_f64());
                self.run_times.observe(&ended.module, ran);
            }
        }
        self.store_finished(job);
        self.release_held();
        match answer {
            Some((reply, End::Completed(output))) => reply.completed(job, output, false),
            Some((reply, End::Failed(reason, message))) => reply.failed(job, reason, message),
            None => {}
        }
    }

    pub(super) fn refuse(&mut self, reply: Reply, job: JobId, reason: Reason, message: String) {
        self.finish(job, Some(reply), End::Failed(reason, message));
    }

    /// Why a job could not be accepted now, if it cannot. `queue`: it is
    /// to join the queue now (a start-later job is only held, so a full
    /// queue or a broken pool does not refuse it: its start will).
    pub(super) fn admission(&self, module: &str, queue: bool) -> Result<(), (Reason, String)> {
        if self.shutting_down {
            return Err((Reason::ShuttingDown, "the master is shutting down".into()));
        }
        if !queue {
            if !self.modules.is_empty() && !self.modules.contains(module) {
                return Err((
                    Reason::UnknownModule,
                    format!("no child runs module {module:?}"),
                ));
            }
            return Ok(());
        }
        if let Some(cause) = self.breaker.tripped() {
            if self.ready_children() == 0 {
                return Err((Reason::Error, format!("no child can be started: {cause}")));
            }
        }
        if !self.modules.is_empty() && !self.modules.contains(module) {
            return Err((
                Reason::UnknownModule,
                format!("no child runs module {module:?}"),
            ));
        }
        if self.idle.is_empty() {
            // Each child still starting (or about to be spawned for this
            // job) will take one queued job when ready, so it adds room for
            // waiting.
            let will_grow =
                self.queue.len() >= self.starting && self.local_children() < self.cfg.pool_max;
            let waiting = self.queue.len() + self.prefetched;
            if waiting >= self.cfg.job_max + self.starting + usize::from(will_grow) {
                return Err((
                    Reason::Overload,
                    format!(
                        "pool at its limit ({} children, {} busy, {} starting) and {} jobs queued (job-max {})",
                        self.local_children(),
                        self.busy,
                        self.starting,
                        self.backlog(),
                        self.cfg.job_max
                    ),
                ));
            }
        }
        Ok(())
    }

    pub(super) fn submit(&mut self, s: Submission) {
        self.counters.submitted += 1;
        self.metrics.submitted.inc();
        let id = self.next_job;
        self.next_job += 1;
        let Submission {
            module,
            input,
            options,
            reply,
            ack,
            waiter,
        } = s;
        // A job for the shared queue (`--nats`) is bounded by the stream,
        // not by this master's queue.
        let shared = self.shares_queue(&reply);
        let here = !options.start_later && !shared;
        let mut admitted = self.admission(&module, here);
        if options.start_later && admitted.is_ok() {
            // Held jobs are bounded like kept results (count and bytes), or
            // a client could fill memory with jobs that never run.
            let held = self.table.start_later();
            if held >= self.cfg.keep_results {
                let msg = format!("{held} start-later jobs held (the --keep-results limit)");
                admitted = Err((Reason::Overload, msg));
            } else if self.table.held_bytes() + input.len() > self.cfg.keep_results_bytes {
                let msg = "start-later inputs would exceed --keep-results-bytes".to_owned();
                admitted = Err((Reason::Overload, msg));
            }
        }
        if let Err((reason, message)) = admitted {
            let message = clip_message(message);
            if let Some(ack) = ack {
                let answer = Answer::failed(
                    self.table.id(id),
                    JobStatus::Failed,
                    reason,
                    message.clone(),
                );
                ack.send(answer);
            }
            if let Some(w) = waiter {
                drop(w);
            }
            return self.refuse(reply, id, reason, message);
        }
        let timeout = match options.timeout_ms {
            None => self.cfg.job_timeout,
            Some(0) => None,
            Some(ms) => Some(Duration::from_millis(ms).min(crate::config::MAX_TIMEOUT)),
        };
        let status = if options.start_later {
            JobStatus::StartLater
        } else {
            JobStatus::Queued
        };
        let name = self
            .modules
            .get(module.as_str())
            .cloned()
            .unwrap_or_else(|| Arc::from(module.as_str()));
        self.table.insert(id, name, status, timeout);
        let durable = if self.wants_store(&options) {
            self.store_new(id, &input, &options)
        } else {
            None
        };
        if status == JobStatus::Queued {
            self.events.emit(|| Event {
                job: Some(self.table.id(id)),
                module: Some(module.clone()),
                ..Event::new("job-queued")
            });
        }
        if let Some(w) = waiter {
            self.table.add_waiter(id, w);
        }
        let job = Queued {
            id,
            module,
            input,
            reply,
            pri: options.priority,
            retry: crate::job::Retry {
                left: options.retries.min(taskmaster_proto::jobs::MAX_RETRIES),
                kills: 0,
            },
        };
        if options.start_later {
            debug!(job = id, module = %job.module, "job held to start later");
            if let Some(r) = self.table.get_mut(id) {
                r.parked = Some(Box::new(job));
            }
        } else {
            self.enqueue(job);
        }
        if let Some(ack) = ack {
            if shared && !options.start_later {
                // Its id only once the stream holds it: a master killed in
                // between must not have given out the id of a lost job.
                if let Some(nats) = self.nats.as_mut() {
                    nats.acks.insert(id, ack);
                }
                return;
            }
            let job_ref = self.table.job_ref(id).expect("just recorded");
            self.tell_when_durable(
                durable,
                durable::Told::Ack(ack),
                Answer::ok(Body::Ref(job_ref)),
            );
        }
    }

    /// An admitted job goes to a free child, or to the queue (growing the
    /// pool if it may).
    pub(super) fn enqueue(&mut self, job: Queued) {
        if self.shares_queue(&job.reply) {
            return self.publish(job);
        }
        if let Some(child) = self.coalesce(&job) {
            return self.start_job(child, job);
        }
        if let Some(child) = self.idle.pop_front() {
            return self.start_job(child, job);
        }
        debug!(job = job.id, module = %job.module, "job queued");
        self.queue.push_back(job);
        self.replenish();
        self.prefetch();
    }

    /// Under `auto`, the child already sent a job in this round, if the
    /// job should join that write rather than wake an idle child: both
    /// quick, the window short. Growth comes first, as for prefetch: with
    /// no child idle below `pool-max`, the job waits for a new child.
    fn coalesce(&self, job: &Queued) -> Option<ChildId> {
        if self.cfg.prefetch != Prefetch::Auto
            || (self.idle.is_empty() && self.local_children() < self.cfg.pool_max)
        {
            return None;
        }
        let (child, round) = self.hot?;
        if round != self.round {
            return None;
        }
        let est = self.run_times.estimate(&job.module);
        let s = self.children.get(&child)?;
        (est <= estimate::COALESCE
            && s.takes_more(estimate::COALESCE_JOBS)
            && s.window.saturating_add(est) <= estimate::BUDGET)
            .then_some(child)
    }

    /// Sends a job to a ready child (idle, or busy with room to prefetch).
    /// If the child's task is already gone (its exit report is on the way),
    /// the job goes back to the queue head.
    pub(super) fn start_job(&mut self, child: ChildId, job: Queued) {
        // A durable job is "processing" in the store before the child can
        // see it, even behind a running one: after a crash it fails, it
        // never runs twice.
        let after = self.store_put(job.id, JobStatus::Processing, None);
        let slot = self
            .children
            .get_mut(&child)
            .expect("dispatch target has a slot");
        debug!(job = job.id, pid = slot.pid, module = %job.module, "job sent to child");
        // Kept to run it elsewhere: a job behind a running one (if its
        // child never starts it), or one that may be retried.
        let resend = (!slot.jobs.is_empty() || job.retry.left > 0)
            .then(|| (job.module.clone(), job.input.clone()));
        let est = self.run_times.estimate(&job.module);
        let ctl = ChildCtl::Job {
            job: job.id,
            module: job.module,
            input: job.input,
            gate: job.reply.gate(),
            after,
        };
        match slot.ctl.send(ctl) {
            Ok(()) => {
                self.hot = Some((child, self.round));
                let runs_now = slot.jobs.is_empty();
                if runs_now {
                    slot.state = State::Busy;
                    self.busy += 1;
                } else {
                    self.prefetched += 1;
                }
                slot.window = slot.window.saturating_add(est);
                slot.jobs.push_back(Held {
                    id: job.id,
                    est,
                    started: runs_now,
                    reply: Some(job.reply),
                    resend,
                    pri: job.pri,
                    retry: job.retry,
                });
                if runs_now {
                    self.job_started(job.id, child);
                }
            }
            Err(mpsc::error::SendError(ChildCtl::Job {
                job: id,
                module,
                input,
                ..
            })) => {
                slot.state = State::Stopping;
                self.queue.push_front(Queued {
                    id,
                    module,
                    input,
                    reply: job.reply,
                    pri: job.pri,
                    retry: job.retry,
                });
                if slot.jobs.is_empty() {
                    self.dispatch_queue();
                }
            }
            Err(_) => unreachable!("sent a job"),
        }
    }

    /// Hands queued jobs to idle children, FIFO.
    pub(super) fn dispatch_queue(&mut self) {
        while !self.queue.is_empty() {
            let Some(child) = self.idle.pop_front() else {
                return;
            };
            let job = self.queue.pop_front().expect("queue not empty");
            if !self.modules.is_empty() && !self.modules.contains(job.module.as_str()) {
                self.idle.push_front(child);
                let msg = format!("no child runs module {:?}", job.module);
                self.refuse(job.reply, job.id, Reason::UnknownModule, msg);
                continue;
            }
            self.start_job(child, job);
        }
    }

    /// With no child free and the pool at `pool-max`, tops up the busy
    /// children's windows from the queue (`--prefetch`): under `auto` only
    /// while the front job's module and the target's window are estimated
    /// short (the rule is in `estimate.rs`), least estimated work first;
    /// with a fixed N, up to N jobs, shortest window first. Growth comes
    /// first: below `pool-max` a waiting job spawns a child instead; jobs a
    /// starting child will take stay queued for it.
    pub(super) fn prefetch(&mut self) {
        let (cap, budget) = match self.cfg.prefetch {
            Prefetch::Fixed(n) if n <= 1 => return,
            Prefetch::Fixed(n) => (n, None),
            Prefetch::Auto => (estimate::MAX_WINDOW, Some(estimate::BUDGET)),
        };
        if self.shutting_down || self.local_children() < self.cfg.pool_max {
            return;
        }
        while self.queue.len() > self.starting && self.idle.is_empty() {
            if let Some(budget) = budget {
                let front = &self.queue.front().expect("queue not empty").module;
                if self.run_times.estimate(front) > budget {
                    return;
                }
            }
            let target = self
                .children
                .iter()
                .filter(|(_, s)| s.takes_more(cap) && budget.is_none_or(|b| s.window <= b))
                .min_by_key(|(_, s)| {
                    if budget.is_some() {
                        s.window
                    } else {
                        s.jobs.len() as u64
                    }
                })
                .map(|(&id, _)| id);
            let Some(child) = target else {
                return;
            };
            let job = self.queue.pop_front().expect("queue not empty");
            self.start_job(child, job);
        }
    }

    /// Puts jobs a child will never start back at the head of the queue, in
    /// their order (or fails them `shutting-down` when stopping).
    pub(super) fn requeue(&mut self, jobs: VecDeque<Held>) {
        for held in jobs.into_iter().rev() {
            // Already answered (cancelled while it waited in the child).
            let Some(reply) = held.reply else { continue };
            match held.resend {
                Some(_) if self.shutting_down => {
                    let msg = "the master is shutting down".to_owned();
                    self.refuse(reply, held.id, Reason::ShuttingDown, msg);
                }
                Some((module, input)) => self.queue.push_front(Queued {
                    id: held.id,
                    module,
                    input,
                    reply,
                    pri: held.pri,
                    retry: held.retry,
                }),
                None => unreachable!("only the first job of a window lacks resend data"),
            }
        }
    }

    /// A job began to run on `child`: its status and its time limit.
    pub(super) fn job_started(&mut self, job: JobId, child: ChildId) {
        if self.events.wanted() {
            let pid = self.children.get(&child).and_then(|s| s.pid);
            let module = self.table.get(job).map(|r| r.module().to_owned());
            let id = self.table.id(job);
            self.events.emit(|| Event {
                pid,
                job: Some(id),
                module,
                ..Event::new("job-started")
            });
        }
        if let Some(limit) = self.table.started(job, child) {
            let key = self.timers.insert(job, limit);
            if let Some(r) = self.table.get_mut(job) {
                r.timer = Some(key);
            }
        }
    }

    /// Jobs accepted but not started (queued, or prefetched behind a
    /// running job), beyond those a starting child will take: the figure
    /// `job-max` bounds.
    pub(super) fn backlog(&self) -> usize {
        (self.queue.len() + self.prefetched).saturating_sub(self.starting)
    }
}
