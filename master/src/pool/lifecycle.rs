//! Children's lifecycle: spawning (and back-off after start-up failures),
//! the handler hello, a child's reports (ready, parts, answers, silence),
//! when it has started, and its exit: which jobs fail, which run
//! elsewhere, and whether the death is a start-up failure for the breaker.

use super::*;
use crate::child::{ChildConn, ChildCtl, ExitInfo};
use crate::events::Event;
use crate::job::{JobId, Reply};
use crate::table::End;
use std::collections::VecDeque;
use std::sync::Arc;
use taskmaster_proto::messages::HandlerHello;
use taskmaster_proto::Reason;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

/// The real launcher: a handler process per child, reporting to the pool.
impl Launcher for crate::child::ProcessLauncher {
    fn launch(
        &self,
        id: ChildId,
        secret: [u8; SECRET_LEN],
        ctl: mpsc::UnboundedReceiver<ChildCtl>,
        pool: PoolHandle,
    ) {
        self.spawn(id, secret, ctl, pool);
    }
}

impl Pool {
    /// A child became free: the next queued job, or the idle list.
    pub(super) fn child_free(&mut self, id: ChildId) {
        let Some(slot) = self.children.get_mut(&id) else {
            return;
        };
        if slot.state == State::Stopping {
            return;
        }
        if self.shutting_down {
            slot.state = State::Stopping;
            let _ = slot.ctl.send(ChildCtl::Stop);
            return;
        }
        if slot.retire_when_free {
            if slot.agent.is_some() {
                return self.retire(id, "its agent is draining");
            }
            self.retire(id, "replaced by a fresh child (SIGHUP)");
            return self.roll();
        }
        slot.state = State::Idle;
        slot.idle_since = Instant::now();
        self.idle.push_front(id);
        if self.idle_check.is_none() && self.local_children() > self.cfg.pool_start {
            self.idle_check = Some(Instant::now() + self.cfg.idle_timeout);
        }
        self.dispatch_queue();
        self.prefetch();
    }

    /// A slot for a child about to start: no pid yet, not connected, no
    /// job, this generation's, with a fresh job limit.
    pub(super) fn new_slot(
        &self,
        ctl: mpsc::UnboundedSender<ChildCtl>,
        secret: [u8; SECRET_LEN],
    ) -> Slot {
        Slot {
            pid: None,
            state: State::Starting,
            ctl,
            secret,
            attached: false,
            jobs: VecDeque::new(),
            window: 0,
            kill_cause: None,
            generation: self.generation,
            jobs_done: 0,
            job_limit: self.job_limit(),
            retire_when_free: false,
            idle_since: Instant::now(),
            started: false,
            ready_at: None,
            agent: None,
        }
    }

    pub(super) fn spawn_child(&mut self) {
        let id = self.next_child;
        self.next_child += 1;
        let secret = crate::child::fresh_secret();
        let (ctl, ctl_rx) = mpsc::unbounded_channel();
        let slot = self.new_slot(ctl, secret);
        self.children.insert(id, slot);
        self.starting += 1;
        self.counters.spawned += 1;
        self.metrics.spawned.inc();
        self.launcher
            .launch(id, secret, ctl_rx, self.handle.clone());
    }

    /// Spawns children up to `pool-start`, and beyond it (up to `pool-max`)
    /// while queued jobs outnumber children on the way. Waits out a back-off
    /// after start-up failures instead.
    pub(super) fn replenish(&mut self) {
        if self.shutting_down {
            return;
        }
        loop {
            let below_start = self.local_children() < self.cfg.pool_start;
            let room = self.local_children() < self.cfg.pool_max;
            let needed = self.queue.len() > self.starting && room;
            // A broken pool keeps probing (at the back-off pace) so it heals
            // by itself even when nothing is queued and pool-start is 0.
            let probe = self.breaker.tripped().is_some()
                && self.starting == 0
                && self.ready_children() == 0
                && room;
            if !below_start && !needed && !probe {
                return;
            }
            if let Some(until) = self.breaker.wait_until(Instant::now()) {
                self.schedule_respawn(until);
                return;
            }
            self.spawn_child();
            if self.breaker.failing() {
                // While failing, try one child at a time.
                return;
            }
        }
    }

    pub(super) fn schedule_respawn(&mut self, at: Instant) {
        if self.respawn_scheduled {
            return;
        }
        self.respawn_scheduled = true;
        let handle = self.handle.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            handle.send(PoolCmd::Respawn);
        });
    }

    pub(super) fn handler_hello(&mut self, hello: HandlerHello, conn: ChildConn) {
        let Some(slot) = self.children.get_mut(&hello.child_id) else {
            warn!(
                child = hello.child_id,
                pid = hello.pid,
                "handler hello for an unknown child; closing"
            );
            return;
        };
        let starting = slot.state == State::Starting;
        let why = crate::child::refuse_hello(&hello, &slot.secret, slot.pid, slot.attached)
            .or((!starting).then_some("not starting"));
        if let Some(why) = why {
            warn!(
                child = hello.child_id,
                pid = hello.pid,
                expected_pid = slot.pid,
                good_secret =
                    taskmaster_proto::handshake::secrets_match(&slot.secret, &hello.secret),
                replayed = slot.attached,
                version = hello.version,
                why,
                "handler hello refused; closing"
            );
            return;
        }
        slot.attached = true;
        let _ = slot.ctl.send(ChildCtl::Attach {
            conn,
            modules: hello.modules,
        });
    }

    pub(super) fn child_event(&mut self, id: ChildId, event: ChildEvent) {
        match event {
            ChildEvent::Spawned { pid } => {
                if let Some(slot) = self.children.get_mut(&id) {
                    slot.pid = Some(pid);
                    info!(pid, child = id, "child spawned");
                    self.events.emit(|| Event {
                        pid: Some(pid),
                        ..Event::new("child-spawned")
                    });
                }
            }
            ChildEvent::Ready { modules } => self.child_ready(id, modules),
            ChildEvent::Part { job, data } => {
                let bytes = data.len();
                if let Some(Held {
                    reply: Some(reply), ..
                }) = self.held_job(id, job)
                {
                    reply.part(data);
                }
                if self.events.wanted() {
                    let pid = self.children.get(&id).and_then(|s| s.pid);
                    let job = self.table.id(job);
                    self.events.emit(|| Event {
                        pid,
                        job: Some(job),
                        bytes: Some(bytes),
                        ..Event::new("job-part")
                    });
                }
            }
            ChildEvent::Done {
                job,
                output,
                retire,
            } => {
                if let Some((job, reply)) = self.take_job(id, job, retire) {
                    if reply.is_some() {
                        self.finish(job, reply, End::Completed(output));
                    }
                    self.after_job(id, retire);
                }
            }
            ChildEvent::Failed {
                job,
                reason,
                message,
                retire,
            } => {
                if let Some((job, reply)) = self.take_job(id, job, retire) {
                    // A child may only report its module's failure or a
                    // missing module; any other word would be a lie about
                    // the pool.
                    let (reason, message) = match reason {
                        Reason::Failed | Reason::UnknownModule => (reason, message),
                        other => (Reason::Failed, format!("child reported {other}: {message}")),
                    };
                    if reply.is_some() {
                        self.finish(job, reply, End::Failed(reason, message));
                    }
                    self.after_job(id, retire);
                }
            }
            ChildEvent::Stalled { silent } => {
                if let Some(slot) = self.children.get_mut(&id) {
                    let cause = format!(
                        "stopped answering: no heartbeat for {:.1} s",
                        silent.as_secs_f64()
                    );
                    warn!(pid = slot.pid, child = id, %cause, "killing a silent child");
                    slot.kill_cause = Some(cause);
                    let _ = slot.ctl.send(ChildCtl::Kill);
                    self.set_state(id, State::Stopping);
                }
            }
            ChildEvent::Broken { cause } => {
                if let Some(slot) = self.children.get_mut(&id) {
                    warn!(pid = slot.pid, child = id, %cause, "child broke the protocol; killing it");
                    slot.kill_cause = Some(cause);
                    self.set_state(id, State::Stopping);
                }
            }
            ChildEvent::Exited(info) => self.child_exited(id, info),
        }
    }

    pub(super) fn child_ready(&mut self, id: ChildId, modules: Vec<String>) {
        let Some(slot) = self.children.get_mut(&id) else {
            return;
        };
        if slot.state != State::Starting {
            return;
        }
        self.starting -= 1;
        // No longer starting, not yet in the idle list: whatever retires it
        // before `child_free` (a second SIGHUP) must not count it down again.
        slot.state = State::Idle;
        slot.ready_at = Some(Instant::now());
        info!(
            pid = slot.pid,
            child = id,
            modules = modules.len(),
            "child ready"
        );
        let pid = slot.pid;
        self.events.emit(|| Event {
            pid,
            ..Event::new("child-ready")
        });
        let modules = modules.into_iter().map(Arc::from).collect();
        match slot.agent {
            None => self.local_modules = modules,
            Some(agent) => {
                if let Some(rec) = self.agents.get_mut(&agent) {
                    rec.modules = modules;
                }
            }
        }
        self.refresh_modules();
        if self.cfg.start_secs.is_zero() {
            self.mark_started(id);
        } else {
            // One timer per spawn, not per job: cheap, and the pool never
            // reads a clock for it on the hot path.
            let handle = self.handle.clone();
            let after = self.cfg.start_secs;
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                handle.send(PoolCmd::StartSecs(id));
            });
        }
        let ready = self.children.len() - self.starting;
        if !self.ready_logged && ready >= self.cfg.pool_start {
            self.ready_logged = true;
            info!(
                size = ready,
                elapsed_ms = self.started_at.elapsed().as_millis() as u64,
                instance = %self.handle.instance(),
                "pool ready"
            );
            self.events.emit(|| Event::new("pool-ready"));
        }
        if self.rolling == Some(id) {
            // The fresh child is ready: one old one goes (now if it is
            // idle, else after its job), then the next step.
            self.rolling = None;
            self.replace_one_stale(id);
        }
        self.child_free(id);
        // A new child may have been wanted by more queued jobs than it takes.
        self.replenish();
        self.roll();
    }

    /// A child has been ready for `--start-secs`.
    pub(super) fn child_started(&mut self, id: ChildId) {
        if self.mark_started(id) {
            // Spawning went one child at a time while start-ups failed.
            self.replenish();
        }
    }

    /// Marks a child started (ready long enough, or a job finished): the
    /// handler works, so the breaker is reset. Whether it was news.
    pub(super) fn mark_started(&mut self, id: ChildId) -> bool {
        let Some(slot) = self.children.get_mut(&id) else {
            return false;
        };
        if slot.started {
            return false;
        }
        slot.started = true;
        debug!(pid = slot.pid, child = id, "child started");
        let failing = self.breaker.failing();
        if let Some(cause) = self.breaker.started() {
            info!(%cause, "a child started again; jobs are accepted (breaker cleared)");
            self.events.emit(|| Event {
                message: Some(cause),
                ..Event::new("breaker-cleared")
            });
        }
        failing
    }

    /// The job a busy child runs, if `job` names it. A child that answers
    /// for another job is broken: it is killed and its job fails `error`.
    pub(super) fn held_job(&mut self, id: ChildId, job: JobId) -> Option<&mut Held> {
        let slot = self.children.get_mut(&id)?;
        if slot.jobs.front().is_none_or(|held| held.id != job) {
            warn!(
                pid = slot.pid,
                job, "child answered for a job it does not hold; killing it"
            );
            slot.kill_cause = Some(format!(
                "child answered for job {job}, which it does not hold"
            ));
            let _ = slot.ctl.send(ChildCtl::Kill);
            self.set_state(id, State::Stopping);
            return None;
        }
        self.children.get_mut(&id)?.jobs.front_mut()
    }

    /// Moves a child to another state, keeping the idle list and the
    /// `starting` count true. (`busy` follows `Slot::jobs` instead.)
    pub(super) fn set_state(&mut self, id: ChildId, to: State) {
        let Some(slot) = self.children.get_mut(&id) else {
            return;
        };
        match slot.state {
            State::Starting => self.starting -= 1,
            State::Idle => self.idle.retain(|&c| c != id),
            State::Busy | State::Stopping => {}
        }
        slot.state = to;
    }

    /// Takes the finished front job off a child. `retire`: the child exits
    /// after this answer, so the jobs behind it never start (they are
    /// requeued by `after_job`).
    pub(super) fn take_job(
        &mut self,
        id: ChildId,
        job: JobId,
        retire: bool,
    ) -> Option<(JobId, Option<Reply>)> {
        self.held_job(id, job)?;
        let slot = self.children.get_mut(&id)?;
        let held = slot.jobs.pop_front()?;
        slot.window = slot.window.saturating_sub(held.est);
        if retire && !slot.jobs.is_empty() {
            return Some((held.id, held.reply));
        }
        let stopping = slot.state == State::Stopping;
        let next = slot.jobs.front_mut().map(|h| {
            // The child sends each answer before it starts its next job, so
            // it may be running this one now, even if it is being stopped
            // (the signal may land after it started): never run it again
            // elsewhere. (The jobs behind it cannot have started.)
            h.started = true;
            h.id
        });
        match next {
            None => self.busy -= 1,
            Some(next) => {
                // The next prefetched job is running now.
                self.prefetched -= 1;
                if !stopping {
                    self.job_started(next, id);
                }
            }
        }
        Some((held.id, held.reply))
    }

    pub(super) fn child_exited(&mut self, id: ChildId, info: ExitInfo) {
        if let (ExitInfo::Lost(_), Some(agent)) =
            (&info, self.children.get(&id).and_then(|s| s.agent))
        {
            // Its agent's other children go the same way: none may take
            // a job (a retry of this one) before its own exit is told.
            self.stop_agent_slots(agent);
        }
        let Some(mut slot) = self.children.remove(&id) else {
            return;
        };
        if slot.agent.is_some() {
            self.remote -= 1;
        } else {
            // (Like `spawned`, the master's own processes only.)
            self.counters.exited += 1;
            self.metrics.exited.inc();
        }
        match slot.state {
            State::Starting => self.starting -= 1,
            State::Idle => self.idle.retain(|&c| c != id),
            State::Busy | State::Stopping => {}
        }
        let mut jobs = std::mem::take(&mut slot.jobs);
        if !jobs.is_empty() {
            self.busy -= 1;
            self.prefetched -= jobs.len() - 1;
        }
        let cause = slot.kill_cause.take();
        let how = match &cause {
            Some(cause) => format!("{} ({cause})", info.describe()),
            None => info.describe(),
        };
        self.events.emit(|| {
            let (code, signal) = match &info {
                ExitInfo::Status { code, signal, .. } => (*code, *signal),
                ExitInfo::SpawnFailed(_) | ExitInfo::Lost(_) => (None, None),
            };
            Event {
                pid: slot.pid,
                code,
                signal,
                message: Some(how.clone()),
                ..Event::new("child-exited")
            }
        });
        if self.rolling == Some(id) {
            self.rolling = None;
            warn!(%how, "rolling restart paused: the fresh child did not start; the old children keep serving");
        }
        if jobs.front().is_some_and(|h| !h.started) {
            // Killed before it got to them: they all run elsewhere.
            self.requeue(jobs);
            info!(pid = slot.pid, child = id, %how, "child exited");
        } else if let Some(running) = jobs.pop_front() {
            let pid = slot.pid.map_or("?".to_owned(), |p| p.to_string());
            if let Some(reply) = running.reply {
                warn!(pid = slot.pid, job = running.id, unstarted = jobs.len(), %how, "child died mid-job");
                let msg = match slot.agent {
                    None => format!("child {pid} {how} while running the job"),
                    Some(agent) => format!(
                        "child {pid} on agent {} {how} while running the job",
                        self.agent_name(agent)
                    ),
                };
                let lost = super::retry::Lost {
                    id: running.id,
                    reply,
                    pri: running.pri,
                    retry: running.retry,
                    resend: running.resend,
                    pid: slot.pid,
                };
                // Jobs behind it go back first: a retried job joins the
                // front of its lane after them, so it runs before them.
                self.requeue(std::mem::take(&mut jobs));
                self.retry_or_fail(lost, Reason::Error, msg);
            } else {
                info!(pid = slot.pid, job = running.id, %how, "child killed for its job exited");
            }
            // Jobs behind it never started: they run elsewhere.
            self.requeue(jobs);
            // A child lost mid-job took work, so it was no start-up
            // failure (the job's own fault, or a kill): replaced at once,
            // with no back-off.
            if slot.agent.is_none()
                && !self.shutting_down
                && self.local_children() < self.cfg.pool_max
            {
                self.spawn_child();
            }
        } else if let Some(agent) = slot.agent {
            let name = self.agent_name(agent);
            info!(pid = slot.pid, child = id, agent = %name, %how, "agent's child exited");
        } else if self.shutting_down || slot.state == State::Stopping {
            info!(pid = slot.pid, child = id, %how, "child exited");
        } else if slot.started
            || slot
                .ready_at
                .is_some_and(|t| t.elapsed() >= self.cfg.start_secs)
        {
            // Started fine, died idle (an operator, the OOM killer, a chaos
            // test): replaced at once below, never a start-up failure.
            warn!(pid = slot.pid, child = id, %how, "idle child died; replacing it");
        } else if slot.state == State::Starting {
            self.startup_failure(slot.pid, how);
        } else {
            warn!(pid = slot.pid, child = id, %how, "child died before it had started");
            self.startup_failure(slot.pid, format!("{how} within --start-secs of its hello"));
        }
        self.replenish();
        self.dispatch_queue();
        self.prefetch();
        self.roll();
    }

    /// A child died before it had started: back off before the next
    /// spawn, and maybe trip the breaker (then, with no child ready, the
    /// queue fails `error` at once instead of waiting for one that may
    /// never come).
    pub(super) fn startup_failure(&mut self, pid: Option<u32>, how: String) {
        self.counters.startup_failures += 1;
        self.metrics.startup_failures.inc();
        let cause = format!(
            "handler {} {how} before it had started",
            self.cfg.handler.display()
        );
        let backoff = self.breaker.startup_failure(Instant::now(), &cause);
        let delay = backoff.delay;
        warn!(pid, failures = self.breaker.in_a_row(), retry_in_ms = delay.as_millis() as u64, %cause, "child failed to start");
        self.events.emit(|| Event {
            pid,
            message: Some(format!("{cause}; next spawn in {} ms", delay.as_millis())),
            ..Event::new("spawn-backoff")
        });
        if backoff.tripped_now {
            error!(
                deaths = self.breaker.recent(),
                window_secs = self.cfg.breaker_window.as_secs_f64(),
                %cause,
                "crash-loop breaker tripped: no child can be started; jobs fail with `error` until one starts"
            );
            self.events.emit(|| Event {
                message: Some(cause.clone()),
                ..Event::new("breaker-tripped")
            });
        }
        if let Some(tripped) = self.breaker.tripped().map(str::to_owned) {
            if self.ready_children() == 0 {
                let msg = format!("no child can be started: {tripped}");
                for job in std::mem::take(&mut self.queue) {
                    self.refuse(job.reply, job.id, Reason::Error, msg.clone());
                }
            }
        }
    }

    /// Children able to take a job (ready, not stopping).
    pub(super) fn ready_children(&self) -> usize {
        self.children
            .values()
            .filter(|s| matches!(s.state, State::Idle | State::Busy))
            .count()
    }
}
