//! The pool actor: the one task that owns every child's state, the FIFO
//! queue and the counters. Connections, child tasks, timers and signals talk
//! to it through [`PoolHandle`]; it never blocks and never awaits a peer, so
//! one slow client or child cannot stall dispatch for everyone else.
//!
//! A job is answered exactly once: by the child's `Done`/`Failed`, by the
//! child's exit while it holds the job (`error`), or by a refusal at submit
//! or from the queue (`overload`, `unknown-module`, `error`, `shutting-down`).

use crate::child::{ChildConn, ChildCtl, ExitInfo};
use crate::config::Config;
use crate::job::{JobId, Queued, Reply, Submission};
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use taskmaster_proto::handshake::secrets_match;
use taskmaster_proto::messages::HandlerHello;
use taskmaster_proto::stats::{ChildStats, JobStats, PoolStats, QueueStats};
use taskmaster_proto::{Reason, Stats, SECRET_LEN};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

/// The master's id for a child (not its pid, which the OS may reuse).
pub type ChildId = u64;

/// Start-up failures in a row after which jobs fail `error` at once instead
/// of waiting for a child that may never come.
const FAILURES_BEFORE_BROKEN: u32 = 3;
/// First respawn delay after a start-up failure; doubles each time.
const BACKOFF_START: Duration = Duration::from_millis(100);
/// Longest respawn delay: a broken handler is retried this often, forever,
/// so the pool heals by itself once the handler is fixed.
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Starts children; the real one spawns processes, tests use fakes.
pub trait Launcher: Send + Sync + 'static {
    /// Starts child `id`. Its task reports through `pool` and obeys `ctl`.
    fn launch(
        &self,
        id: ChildId,
        secret: [u8; SECRET_LEN],
        ctl: mpsc::UnboundedReceiver<ChildCtl>,
        pool: PoolHandle,
    );
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
    /// The process is gone and reaped (or could not be started).
    Exited(ExitInfo),
}

/// Messages to the pool actor.
pub enum PoolCmd {
    /// A client's job.
    Submit(Submission),
    /// Current figures.
    Stats(oneshot::Sender<Stats>),
    /// A connection said hello as a handler; the pool checks it.
    HandlerHello {
        /// The hello.
        hello: HandlerHello,
        /// The connection, handed to the child's task if the hello is good.
        conn: ChildConn,
    },
    /// A child's task reports.
    Child {
        /// Which child.
        id: ChildId,
        /// What happened.
        event: ChildEvent,
    },
    /// The back-off delay after start-up failures is over.
    Respawn,
    /// SIGTERM/SIGINT (a second one stops at once).
    Shutdown,
    /// The shutdown grace period is over.
    GraceExpired,
}

/// A cloneable way to reach the pool actor.
#[derive(Clone)]
pub struct PoolHandle {
    tx: mpsc::UnboundedSender<PoolCmd>,
}

impl PoolHandle {
    fn send(&self, cmd: PoolCmd) {
        // The pool outlives every sender except at the very end of shutdown,
        // when nothing is left to tell.
        let _ = self.tx.send(cmd);
    }
    /// Submits a job; its answers go to its reply.
    pub fn submit(&self, submission: Submission) {
        self.send(PoolCmd::Submit(submission));
    }
    /// Current figures, or `None` if the pool has stopped.
    pub async fn stats(&self) -> Option<Stats> {
        let (tx, rx) = oneshot::channel();
        self.send(PoolCmd::Stats(tx));
        rx.await.ok()
    }
    /// Begins (or, the second time, hurries) shutdown.
    pub fn shutdown(&self) {
        self.send(PoolCmd::Shutdown);
    }
    /// Hands a handler's hello and connection to the pool.
    pub fn handler_hello(&self, hello: HandlerHello, conn: ChildConn) {
        self.send(PoolCmd::HandlerHello { hello, conn });
    }
    /// Reports a child event.
    pub fn child_event(&self, id: ChildId, event: ChildEvent) {
        self.send(PoolCmd::Child { id, event });
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Starting,
    Idle,
    Busy,
    /// Told to stop (retired, or shutdown); takes no jobs.
    Stopping,
}

struct Slot {
    pid: Option<u32>,
    state: State,
    ctl: mpsc::UnboundedSender<ChildCtl>,
    secret: [u8; SECRET_LEN],
    attached: bool,
    /// Jobs sent to this child, oldest first: the front one runs, the rest
    /// (with `--prefetch` above 1) wait unread in its socket. A child runs
    /// its jobs in order, so only the front one can have started.
    jobs: VecDeque<Held>,
    /// Why the master killed it, for the message of the job it held.
    kill_cause: Option<String>,
}

/// A job sent to a child.
struct Held {
    id: JobId,
    reply: Reply,
    /// Module and input of a job sent behind a running one, kept to re-queue
    /// it if the child never starts it (`None` for a job sent to a free
    /// child: it starts at once).
    resend: Option<(String, Bytes)>,
}

#[derive(Default)]
struct Counters {
    submitted: u64,
    completed: u64,
    failed: u64,
    overload: u64,
    by_reason: BTreeMap<Reason, u64>,
    spawned: u64,
    exited: u64,
    startup_failures: u64,
}

struct Pool {
    cfg: Arc<Config>,
    launcher: Arc<dyn Launcher>,
    handle: PoolHandle,
    children: HashMap<ChildId, Slot>,
    /// Ready children without a job; the most recently freed first, so a
    /// warm child takes the next job.
    idle: VecDeque<ChildId>,
    queue: VecDeque<Queued>,
    starting: usize,
    /// Children holding at least one job.
    busy: usize,
    /// Jobs sent to children but not started (behind a running one).
    prefetched: usize,
    next_child: ChildId,
    next_job: JobId,
    /// Module names the children run (all run the same handler program).
    modules: HashSet<String>,
    counters: Counters,
    started_at: Instant,
    ready_logged: bool,
    failures_in_a_row: u32,
    /// Set while no child can be started: jobs fail `error` at once.
    broken: Option<String>,
    backoff_until: Option<Instant>,
    respawn_scheduled: bool,
    shutting_down: bool,
    done: Option<oneshot::Sender<()>>,
}

/// Starts the pool actor; it spawns `pool-start` children at once. The
/// receiver fires when a shutdown has stopped every child.
pub fn start(cfg: Arc<Config>, launcher: Arc<dyn Launcher>) -> (PoolHandle, oneshot::Receiver<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let (done_tx, done_rx) = oneshot::channel();
    let handle = PoolHandle { tx };
    let mut pool = Pool {
        cfg,
        launcher,
        handle: handle.clone(),
        children: HashMap::new(),
        idle: VecDeque::new(),
        queue: VecDeque::new(),
        starting: 0,
        busy: 0,
        prefetched: 0,
        next_child: 1,
        next_job: 1,
        modules: HashSet::new(),
        counters: Counters::default(),
        started_at: Instant::now(),
        ready_logged: false,
        failures_in_a_row: 0,
        broken: None,
        backoff_until: None,
        respawn_scheduled: false,
        shutting_down: false,
        done: Some(done_tx),
    };
    tokio::spawn(async move {
        pool.replenish();
        pool.run(rx).await;
    });
    (handle, done_rx)
}

impl Pool {
    async fn run(&mut self, mut rx: mpsc::UnboundedReceiver<PoolCmd>) {
        while let Some(cmd) = rx.recv().await {
            match cmd {
                PoolCmd::Submit(s) => self.submit(s),
                PoolCmd::Stats(tx) => {
                    let _ = tx.send(self.stats());
                }
                PoolCmd::HandlerHello { hello, conn } => self.handler_hello(hello, conn),
                PoolCmd::Child { id, event } => self.child_event(id, event),
                PoolCmd::Respawn => {
                    self.respawn_scheduled = false;
                    self.replenish();
                }
                PoolCmd::Shutdown => self.shutdown(),
                PoolCmd::GraceExpired => self.grace_expired(),
            }
            if self.shutting_down && self.children.is_empty() {
                if let Some(done) = self.done.take() {
                    let _ = done.send(());
                }
                return;
            }
        }
    }

    fn refuse(&mut self, reply: Reply, job: JobId, reason: Reason, message: String) {
        debug!(job, %reason, detail = %message, "job failed");
        self.counters.failed += 1;
        *self.counters.by_reason.entry(reason).or_default() += 1;
        if reason == Reason::Overload {
            self.counters.overload += 1;
        }
        reply.failed(job, reason, message);
    }

    fn submit(&mut self, s: Submission) {
        self.counters.submitted += 1;
        if self.shutting_down {
            let msg = "the master is shutting down".to_owned();
            return self.refuse(s.reply, 0, Reason::ShuttingDown, msg);
        }
        if let Some(cause) = &self.broken {
            let msg = format!("no child can be started: {cause}");
            return self.refuse(s.reply, 0, Reason::Error, msg);
        }
        if !self.modules.is_empty() && !self.modules.contains(&s.module) {
            let msg = format!("no child runs module {:?}", s.module);
            return self.refuse(s.reply, 0, Reason::UnknownModule, msg);
        }
        if let Some(child) = self.idle.pop_front() {
            let job = self.accept(s);
            return self.start_job(child, job);
        }
        // Each child still starting (or about to be spawned for this job)
        // will take one queued job when ready, so it adds room for waiting.
        let will_grow =
            self.queue.len() >= self.starting && self.children.len() < self.cfg.pool_max;
        let waiting = self.queue.len() + self.prefetched;
        if waiting >= self.cfg.job_max + self.starting + usize::from(will_grow) {
            let msg = format!(
                "pool at its limit ({} children, {} busy, {} starting) and {} jobs queued (job-max {})",
                self.children.len(),
                self.busy,
                self.starting,
                self.backlog(),
                self.cfg.job_max
            );
            return self.refuse(s.reply, 0, Reason::Overload, msg);
        }
        let job = self.accept(s);
        debug!(job = job.id, module = %job.module, "job queued");
        self.queue.push_back(job);
        self.replenish();
        self.prefetch();
    }

    /// Gives an accepted submission its job id.
    fn accept(&mut self, s: Submission) -> Queued {
        let id = self.next_job;
        self.next_job += 1;
        Queued {
            id,
            module: s.module,
            input: s.input,
            reply: s.reply,
        }
    }

    /// Sends a job to a ready child (idle, or busy with room to prefetch).
    /// If the child's task is already gone (its exit report is on the way),
    /// the job goes back to the queue head.
    fn start_job(&mut self, child: ChildId, job: Queued) {
        let slot = self
            .children
            .get_mut(&child)
            .expect("dispatch target has a slot");
        debug!(job = job.id, pid = slot.pid, module = %job.module, "job sent to child");
        let resend = (!slot.jobs.is_empty()).then(|| (job.module.clone(), job.input.clone()));
        let ctl = ChildCtl::Job {
            job: job.id,
            module: job.module,
            input: job.input,
        };
        match slot.ctl.send(ctl) {
            Ok(()) => {
                if slot.jobs.is_empty() {
                    slot.state = State::Busy;
                    self.busy += 1;
                } else {
                    self.prefetched += 1;
                }
                slot.jobs.push_back(Held {
                    id: job.id,
                    reply: job.reply,
                    resend,
                });
            }
            Err(mpsc::error::SendError(ChildCtl::Job {
                job: id,
                module,
                input,
            })) => {
                slot.state = State::Stopping;
                self.queue.push_front(Queued {
                    id,
                    module,
                    input,
                    reply: job.reply,
                });
                if slot.jobs.is_empty() {
                    self.dispatch_queue();
                }
            }
            Err(_) => unreachable!("sent a job"),
        }
    }

    /// Hands queued jobs to idle children, FIFO.
    fn dispatch_queue(&mut self) {
        while !self.queue.is_empty() {
            let Some(child) = self.idle.pop_front() else {
                return;
            };
            let job = self.queue.pop_front().expect("queue not empty");
            if !self.modules.is_empty() && !self.modules.contains(&job.module) {
                self.idle.push_front(child);
                let msg = format!("no child runs module {:?}", job.module);
                self.refuse(job.reply, job.id, Reason::UnknownModule, msg);
                continue;
            }
            self.start_job(child, job);
        }
    }

    /// With `--prefetch` above 1, no child free and the pool at `pool-max`,
    /// tops up the busy children's windows from the queue, shortest window
    /// first. Growth comes first: below `pool-max` a waiting job spawns a
    /// child instead; jobs a starting child will take stay queued for it.
    fn prefetch(&mut self) {
        if self.cfg.prefetch <= 1 || self.shutting_down || self.children.len() < self.cfg.pool_max {
            return;
        }
        while self.queue.len() > self.starting && self.idle.is_empty() {
            let target = self
                .children
                .iter()
                .filter(|(_, s)| s.state == State::Busy && s.jobs.len() < self.cfg.prefetch)
                .min_by_key(|(_, s)| s.jobs.len())
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
    fn requeue(&mut self, jobs: VecDeque<Held>) {
        for held in jobs.into_iter().rev() {
            match held.resend {
                Some(_) if self.shutting_down => {
                    let msg = "the master is shutting down".to_owned();
                    self.refuse(held.reply, held.id, Reason::ShuttingDown, msg);
                }
                Some((module, input)) => self.queue.push_front(Queued {
                    id: held.id,
                    module,
                    input,
                    reply: held.reply,
                }),
                None => unreachable!("only the first job of a window lacks resend data"),
            }
        }
    }

    /// A child became free: the next queued job, or the idle list.
    fn child_free(&mut self, id: ChildId) {
        let Some(slot) = self.children.get_mut(&id) else {
            return;
        };
        if self.shutting_down {
            slot.state = State::Stopping;
            let _ = slot.ctl.send(ChildCtl::Stop);
            return;
        }
        slot.state = State::Idle;
        self.idle.push_front(id);
        self.dispatch_queue();
        self.prefetch();
    }

    fn spawn_child(&mut self) {
        let id = self.next_child;
        self.next_child += 1;
        let secret = crate::child::fresh_secret();
        let (ctl, ctl_rx) = mpsc::unbounded_channel();
        self.children.insert(
            id,
            Slot {
                pid: None,
                state: State::Starting,
                ctl,
                secret,
                attached: false,
                jobs: VecDeque::new(),
                kill_cause: None,
            },
        );
        self.starting += 1;
        self.counters.spawned += 1;
        self.launcher
            .launch(id, secret, ctl_rx, self.handle.clone());
    }

    /// Spawns children up to `pool-start`, and beyond it (up to `pool-max`)
    /// while queued jobs outnumber children on the way. Waits out a back-off
    /// after start-up failures instead.
    fn replenish(&mut self) {
        if self.shutting_down {
            return;
        }
        loop {
            let below_start = self.children.len() < self.cfg.pool_start;
            let room = self.children.len() < self.cfg.pool_max;
            let needed = self.queue.len() > self.starting && room;
            // A broken pool keeps probing (at the back-off pace) so it heals
            // by itself even when nothing is queued and pool-start is 0.
            let probe = self.broken.is_some() && self.starting == 0 && room;
            if !below_start && !needed && !probe {
                return;
            }
            if let Some(until) = self.backoff_until {
                if Instant::now() < until {
                    self.schedule_respawn(until);
                    return;
                }
                self.backoff_until = None;
            }
            self.spawn_child();
            if self.failures_in_a_row > 0 {
                // While failing, try one child at a time.
                return;
            }
        }
    }

    fn schedule_respawn(&mut self, at: Instant) {
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

    fn handler_hello(&mut self, hello: HandlerHello, conn: ChildConn) {
        let Some(slot) = self.children.get_mut(&hello.child_id) else {
            warn!(
                child = hello.child_id,
                pid = hello.pid,
                "handler hello for an unknown child; closing"
            );
            return;
        };
        let good_secret = secrets_match(&slot.secret, &hello.secret);
        let good_pid = slot.pid.is_none_or(|pid| pid == hello.pid);
        if slot.attached || !good_secret || !good_pid || slot.state != State::Starting {
            warn!(
                child = hello.child_id,
                pid = hello.pid,
                expected_pid = slot.pid,
                good_secret,
                replayed = slot.attached,
                "handler hello refused; closing"
            );
            return;
        }
        if hello.version != taskmaster_proto::PROTOCOL_VERSION {
            warn!(
                pid = hello.pid,
                version = hello.version,
                "handler speaks another protocol version; closing"
            );
            return;
        }
        slot.attached = true;
        let _ = slot.ctl.send(ChildCtl::Attach {
            conn,
            modules: hello.modules,
        });
    }

    fn child_event(&mut self, id: ChildId, event: ChildEvent) {
        match event {
            ChildEvent::Spawned { pid } => {
                if let Some(slot) = self.children.get_mut(&id) {
                    slot.pid = Some(pid);
                    info!(pid, child = id, "child spawned");
                }
            }
            ChildEvent::Ready { modules } => self.child_ready(id, modules),
            ChildEvent::Part { job, data } => {
                if let Some(held) = self.held_job(id, job) {
                    held.reply.part(data);
                }
            }
            ChildEvent::Done {
                job,
                output,
                retire,
            } => {
                if let Some((job, reply)) = self.take_job(id, job) {
                    self.counters.completed += 1;
                    debug!(job, "job completed");
                    reply.completed(job, output);
                    self.after_job(id, retire);
                }
            }
            ChildEvent::Failed {
                job,
                reason,
                message,
                retire,
            } => {
                if let Some((job, reply)) = self.take_job(id, job) {
                    // A child may only report its module's failure or a
                    // missing module; any other word would be a lie about
                    // the pool.
                    let (reason, message) = match reason {
                        Reason::Failed | Reason::UnknownModule => (reason, message),
                        other => (Reason::Failed, format!("child reported {other}: {message}")),
                    };
                    self.refuse(reply, job, reason, message);
                    self.after_job(id, retire);
                }
            }
            ChildEvent::Exited(info) => self.child_exited(id, info),
        }
    }

    fn child_ready(&mut self, id: ChildId, modules: Vec<String>) {
        let Some(slot) = self.children.get_mut(&id) else {
            return;
        };
        if slot.state != State::Starting {
            return;
        }
        self.starting -= 1;
        info!(
            pid = slot.pid,
            child = id,
            modules = modules.len(),
            "child ready"
        );
        self.modules = modules.into_iter().collect();
        self.failures_in_a_row = 0;
        self.backoff_until = None;
        if let Some(cause) = self.broken.take() {
            info!(%cause, "a child started again; jobs are accepted");
        }
        let ready = self.children.len() - self.starting;
        if !self.ready_logged && ready >= self.cfg.pool_start {
            self.ready_logged = true;
            info!(
                size = ready,
                elapsed_ms = self.started_at.elapsed().as_millis() as u64,
                "pool ready"
            );
        }
        self.child_free(id);
        // A new child may have been wanted by more queued jobs than it takes.
        self.replenish();
    }

    /// The job a busy child runs, if `job` names it. A child that answers
    /// for another job is broken: it is killed and its job fails `error`.
    fn held_job(&mut self, id: ChildId, job: JobId) -> Option<&mut Held> {
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
    fn set_state(&mut self, id: ChildId, to: State) {
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

    /// Jobs accepted but not started (queued, or prefetched behind a
    /// running job), beyond those a starting child will take: the figure
    /// `job-max` bounds.
    fn backlog(&self) -> usize {
        (self.queue.len() + self.prefetched).saturating_sub(self.starting)
    }

    fn take_job(&mut self, id: ChildId, job: JobId) -> Option<(JobId, Reply)> {
        self.held_job(id, job)?;
        let slot = self.children.get_mut(&id)?;
        let held = slot.jobs.pop_front()?;
        if slot.jobs.is_empty() {
            self.busy -= 1;
        } else {
            // The next prefetched job is running now.
            self.prefetched -= 1;
        }
        Some((held.id, held.reply))
    }

    fn after_job(&mut self, id: ChildId, retire: bool) {
        let Some(slot) = self.children.get_mut(&id) else {
            return;
        };
        if retire {
            info!(pid = slot.pid, child = id, "child retiring");
            let _ = slot.ctl.send(ChildCtl::Stop);
            let unstarted = std::mem::take(&mut slot.jobs);
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

    fn child_exited(&mut self, id: ChildId, info: ExitInfo) {
        let Some(mut slot) = self.children.remove(&id) else {
            return;
        };
        self.counters.exited += 1;
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
        if let Some(running) = jobs.pop_front() {
            warn!(pid = slot.pid, job = running.id, unstarted = jobs.len(), %how, "child died mid-job");
            let pid = slot.pid.map_or("?".to_owned(), |p| p.to_string());
            let msg = format!("child {pid} {how} while running the job");
            self.refuse(running.reply, running.id, Reason::Error, msg);
            // Jobs behind it never started: they run elsewhere.
            self.requeue(jobs);
            // A ready child lost mid-job is replaced at once, with no back-off:
            // it did start fine, so this is no crash loop.
            if !self.shutting_down && self.children.len() < self.cfg.pool_max {
                self.spawn_child();
            }
        } else if slot.state == State::Starting && !self.shutting_down {
            self.startup_failure(slot.pid, how);
        } else {
            info!(pid = slot.pid, child = id, %how, "child exited");
        }
        self.replenish();
        self.dispatch_queue();
        self.prefetch();
    }

    fn startup_failure(&mut self, pid: Option<u32>, how: String) {
        self.counters.startup_failures += 1;
        self.failures_in_a_row += 1;
        let cause = format!(
            "handler {} {how} before it was ready",
            self.cfg.handler.display()
        );
        let delay = BACKOFF_START
            .saturating_mul(1 << (self.failures_in_a_row - 1).min(16))
            .min(BACKOFF_MAX);
        warn!(pid, failures = self.failures_in_a_row, retry_in_ms = delay.as_millis() as u64, %cause, "child failed to start");
        self.backoff_until = Some(Instant::now() + delay);
        if self.failures_in_a_row >= FAILURES_BEFORE_BROKEN && self.broken.is_none() {
            error!(failures = self.failures_in_a_row, %cause, "no child can be started; jobs fail with `error` until one starts");
            self.broken = Some(cause.clone());
        }
        if self.broken.is_some() {
            let msg = format!("no child can be started: {cause}");
            for job in std::mem::take(&mut self.queue) {
                self.refuse(job.reply, job.id, Reason::Error, msg.clone());
            }
        }
    }

    fn shutdown(&mut self) {
        if self.shutting_down {
            warn!("second stop signal: killing every child now");
            for slot in self.children.values_mut() {
                slot.kill_cause
                    .get_or_insert_with(|| "master stopped at once".into());
                let _ = slot.ctl.send(ChildCtl::Kill);
            }
            return;
        }
        self.shutting_down = true;
        info!(
            busy = self.busy,
            queued = self.queue.len(),
            prefetched = self.prefetched,
            grace_secs = self.cfg.grace.as_secs_f64(),
            "shutting down"
        );
        for job in std::mem::take(&mut self.queue) {
            let msg = "the master is shutting down".to_owned();
            self.refuse(job.reply, job.id, Reason::ShuttingDown, msg);
        }
        let not_busy: Vec<ChildId> = self
            .children
            .iter()
            .filter(|(_, slot)| slot.state != State::Busy)
            .map(|(&id, _)| id)
            .collect();
        for id in not_busy {
            self.set_state(id, State::Stopping);
            let _ = self.children[&id].ctl.send(ChildCtl::Stop);
        }
        if self.busy > 0 {
            let handle = self.handle.clone();
            let grace = self.cfg.grace;
            tokio::spawn(async move {
                tokio::time::sleep(grace).await;
                handle.send(PoolCmd::GraceExpired);
            });
        }
    }

    fn grace_expired(&mut self) {
        for slot in self.children.values_mut() {
            if slot.state == State::Busy {
                slot.kill_cause = Some("shutdown grace period expired".into());
                let _ = slot.ctl.send(ChildCtl::Kill);
            }
        }
    }

    fn stats(&self) -> Stats {
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
