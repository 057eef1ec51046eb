//! The pool actor: the one task that owns every child's state, the FIFO
//! queue and the counters. Connections, child tasks, timers and signals talk
//! to it through [`PoolHandle`]; it never blocks and never awaits a peer, so
//! one slow client or child cannot stall dispatch for everyone else.
//!
//! A job is answered exactly once: by the child's `Done`/`Failed`, by the
//! child's exit while it holds the job (`error`), by a refusal at submit
//! or from the queue (`overload`, `unknown-module`, `error`, `shutting-down`),
//! by its time limit (`timeout`) or by a cancel (`cancelled`). Every answer
//! goes through `Pool::finish`, which also records it in the job table
//! and the metrics.

use crate::child::{ChildConn, ChildCtl, ExitInfo};
use crate::config::Config;
use crate::events::{Event, Events};
use crate::job::{Answer, Body, JobId, Op, Queued, Reply, Submission};
use crate::metrics::Metrics;
use crate::table::{End, JobTable, Limits};
use bytes::Bytes;
use futures_util::StreamExt;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use taskmaster_proto::handshake::secrets_match;
use taskmaster_proto::jobs::{parse_id, JobStatus};
use taskmaster_proto::messages::HandlerHello;
use taskmaster_proto::stats::{ChildStats, JobStats, PoolStats, QueueStats};
use taskmaster_proto::{Reason, Stats, SECRET_LEN};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::time::DelayQueue;
use tracing::{debug, error, info, warn};

mod breaker;

use breaker::Breaker;

pub use crate::types::{ChildEvent, ChildId};

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

impl crate::types::Reporter for PoolHandle {
    fn child_event(&self, id: ChildId, event: ChildEvent) {
        PoolHandle::child_event(self, id, event);
    }
}

/// Messages to the pool actor.
pub enum PoolCmd {
    /// A client's job.
    Submit(Submission),
    /// Current figures.
    Stats(oneshot::Sender<Stats>),
    /// A job operation.
    Op {
        /// Which.
        op: Op,
        /// Where the answer goes.
        tx: oneshot::Sender<Answer>,
    },
    /// Whether the pool is ready (`/healthz`).
    Health(oneshot::Sender<Health>),
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
    /// A child has been ready for `--start-secs`: it has started.
    StartSecs(ChildId),
    /// SIGTERM/SIGINT (a second one stops at once).
    Shutdown,
    /// SIGHUP: replace every child, one at a time.
    Restart,
    /// The shutdown grace period is over.
    GraceExpired,
}

/// The pool's state as `/healthz` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Fewer than `pool-start` children have been ready yet.
    Starting,
    /// Serving.
    Ready,
    /// No child can be started; the text says why.
    Broken(String),
    /// Shutting down.
    ShuttingDown,
}

/// A cloneable way to reach the pool actor.
#[derive(Clone)]
pub struct PoolHandle {
    tx: mpsc::UnboundedSender<PoolCmd>,
    instance: Arc<str>,
    events: Events,
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
    /// Lifecycle events from now on.
    pub fn subscribe(&self) -> crate::events::Subscription {
        self.events.subscribe()
    }

    /// Replaces every child with a fresh one, one at a time (SIGHUP).
    pub fn restart(&self) {
        self.send(PoolCmd::Restart);
    }

    /// This master run's job-id prefix.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The job number in a job id, or the answer for a bad or foreign id.
    pub fn parse_id(&self, id: &str) -> Result<JobId, Box<Answer>> {
        match parse_id(id) {
            Err(e) => Err(Box::new(Answer::invalid(e.to_string()))),
            Ok((instance, job)) if instance == &*self.instance => Ok(job),
            Ok(_) => Err(Box::new(Answer::not_found(id))),
        }
    }

    /// Runs a job operation; `None` if the pool has stopped.
    pub async fn op(&self, op: Op) -> Option<Answer> {
        let (tx, rx) = oneshot::channel();
        self.send(PoolCmd::Op { op, tx });
        rx.await.ok()
    }

    /// A job's result, waiting up to `wait` for it to end: the response,
    /// the failure, or (still running) a conflict with its status now.
    pub async fn result(&self, job: JobId, wait: Duration) -> Option<Answer> {
        if wait.is_zero() {
            return self.op(Op::Result(job)).await;
        }
        let (tx, rx) = oneshot::channel();
        self.send(PoolCmd::Op {
            op: Op::Wait(job),
            tx,
        });
        match tokio::time::timeout(wait, rx).await {
            Ok(answer) => answer.ok(),
            Err(_) => self.op(Op::Result(job)).await,
        }
    }

    /// Whether the pool is ready.
    pub async fn health(&self) -> Option<Health> {
        let (tx, rx) = oneshot::channel();
        self.send(PoolCmd::Health(tx));
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
    /// The restart generation it was spawned in (SIGHUP bumps the pool's).
    generation: u64,
    /// Jobs it has finished.
    jobs_done: u64,
    /// Jobs after which it is retired (0: no limit).
    job_limit: u64,
    /// Retire it as soon as it holds no job (rolling restart).
    retire_when_free: bool,
    /// Since when it has been idle.
    idle_since: Instant,
    /// It has been ready for `--start-secs` or has finished a job: its
    /// death is no start-up failure.
    started: bool,
    /// When it said hello.
    ready_at: Option<Instant>,
}

/// A job sent to a child.
struct Held {
    id: JobId,
    /// The child has started it (it is, or was, the front of the window).
    started: bool,
    /// `None` once answered early (cancelled or timed out while the child
    /// still holds it): whatever the child says of it later is dropped.
    reply: Option<Reply>,
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
    cancelled: u64,
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
    table: JobTable,
    metrics: Arc<Metrics>,
    /// Time limits of running jobs.
    timers: DelayQueue<JobId>,
    /// When to look for children idle past `--idle-timeout` (one deadline
    /// for the pool, not a timer per child: becoming idle costs nothing).
    idle_check: Option<Instant>,
    /// Start-up failures, back-off and the crash-loop breaker.
    breaker: Breaker,
    /// The restart generation; children of older ones are replaced.
    generation: u64,
    /// The fresh child a rolling restart is waiting for.
    rolling: Option<ChildId>,
    /// A rolling restart is under way (for its "done" line).
    restarting: bool,
    events: Events,
    /// Module names the children run (all run the same handler program).
    /// (Shared strings: each job's record points at its module's name
    /// instead of copying it.)
    modules: HashSet<Arc<str>>,
    counters: Counters,
    started_at: Instant,
    ready_logged: bool,
    respawn_scheduled: bool,
    shutting_down: bool,
    done: Option<oneshot::Sender<()>>,
}

/// Starts the pool actor; it spawns `pool-start` children at once. The
/// receiver fires when a shutdown has stopped every child. Job ids are
/// `{instance}-{n}`.
pub fn start(
    cfg: Arc<Config>,
    launcher: Arc<dyn Launcher>,
    metrics: Arc<Metrics>,
    instance: Arc<str>,
) -> (PoolHandle, oneshot::Receiver<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let (done_tx, done_rx) = oneshot::channel();
    let events = Events::new();
    let handle = PoolHandle {
        tx,
        instance: instance.clone(),
        events: events.clone(),
    };
    let limits = Limits {
        keep: cfg.keep_results,
        ttl: cfg.result_ttl,
        bytes: cfg.keep_results_bytes,
    };
    let breaker = Breaker::new(cfg.breaker_deaths, cfg.breaker_window);
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
        table: JobTable::new(instance, limits),
        metrics,
        timers: DelayQueue::new(),
        idle_check: None,
        breaker,
        generation: 0,
        rolling: None,
        restarting: false,
        events,
        modules: HashSet::new(),
        counters: Counters::default(),
        started_at: Instant::now(),
        ready_logged: false,
        respawn_scheduled: false,
        shutting_down: false,
        done: Some(done_tx),
    };
    tokio::spawn(async move {
        if pool.cfg.pool_start == 0 {
            // Nothing to wait for: ready (for /healthz) at once.
            pool.ready_logged = true;
            info!(size = 0, elapsed_ms = 0, "pool ready");
        }
        pool.replenish();
        pool.run(rx).await;
    });
    (handle, done_rx)
}

impl Pool {
    async fn run(&mut self, mut rx: mpsc::UnboundedReceiver<PoolCmd>) {
        let idle_sleep = tokio::time::sleep(Duration::from_secs(86_400));
        tokio::pin!(idle_sleep);
        let mut armed: Option<Instant> = None;
        loop {
            if self.idle_check != armed {
                armed = self.idle_check;
                if let Some(at) = armed {
                    idle_sleep.as_mut().reset(at);
                }
            }
            let cmd = tokio::select! {
                () = &mut idle_sleep, if armed.is_some() => {
                    self.idle_check = None;
                    self.shrink_idle();
                    continue;
                }
                cmd = rx.recv() => match cmd {
                    Some(cmd) => cmd,
                    None => return,
                },
                Some(expired) = self.timers.next(), if !self.timers.is_empty() => {
                    self.job_timed_out(expired.into_inner());
                    continue;
                }
            };
            match cmd {
                PoolCmd::Submit(s) => self.submit(s),
                PoolCmd::Stats(tx) => {
                    let _ = tx.send(self.stats());
                }
                PoolCmd::Op { op, tx } => self.op(op, tx),
                PoolCmd::Health(tx) => {
                    let _ = tx.send(self.health());
                }
                PoolCmd::HandlerHello { hello, conn } => self.handler_hello(hello, conn),
                PoolCmd::Child { id, event } => self.child_event(id, event),
                PoolCmd::Respawn => {
                    self.respawn_scheduled = false;
                    self.replenish();
                }
                PoolCmd::StartSecs(id) => self.child_started(id),
                PoolCmd::Shutdown => self.shutdown(),
                PoolCmd::Restart => self.restart(),
                PoolCmd::GraceExpired => self.grace_expired(),
            }
            if self.shutting_down && self.children.is_empty() {
                self.events.emit(|| Event::new("shutdown-done"));
                if let Some(done) = self.done.take() {
                    let _ = done.send(());
                }
                return;
            }
        }
    }

    /// Answers a job once: counts it, records it in the job table (waking
    /// its waiters, disarming its time limit) and tells its submitter.
    fn finish(&mut self, job: JobId, reply: Option<Reply>, end: End) {
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
        let answer = reply.map(|reply| (reply, end.clone()));
        if let Some(ended) = self.table.finish(job, end, keep) {
            if let Some(key) = ended.timer {
                self.timers.try_remove(&key);
            }
            if let Some(waited) = ended.waited {
                self.metrics.queue_wait.observe(waited.as_secs_f64());
            }
            if let Some(ran) = ended.ran {
                self.metrics.run_time.observe(ran.as_secs_f64());
            }
        }
        match answer {
            Some((reply, End::Completed(output))) => reply.completed(job, output),
            Some((reply, End::Failed(reason, message))) => reply.failed(job, reason, message),
            None => {}
        }
    }

    fn refuse(&mut self, reply: Reply, job: JobId, reason: Reason, message: String) {
        self.finish(job, Some(reply), End::Failed(reason, message));
    }

    /// Why a job could not be accepted now, if it cannot. `queue`: it is
    /// to join the queue now (a start-later job is only held, so a full
    /// queue or a broken pool does not refuse it: its start will).
    fn admission(&self, module: &str, queue: bool) -> Result<(), (Reason, String)> {
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
                self.queue.len() >= self.starting && self.children.len() < self.cfg.pool_max;
            let waiting = self.queue.len() + self.prefetched;
            if waiting >= self.cfg.job_max + self.starting + usize::from(will_grow) {
                return Err((
                    Reason::Overload,
                    format!(
                        "pool at its limit ({} children, {} busy, {} starting) and {} jobs queued (job-max {})",
                        self.children.len(),
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

    fn submit(&mut self, s: Submission) {
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
        let mut admitted = self.admission(&module, !options.start_later);
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
            let job_ref = self.table.job_ref(id).expect("just recorded");
            ack.send(Answer::ok(Body::Ref(job_ref)));
        }
    }

    /// An admitted job goes to a free child, or to the queue (growing the
    /// pool if it may).
    fn enqueue(&mut self, job: Queued) {
        if let Some(child) = self.idle.pop_front() {
            return self.start_job(child, job);
        }
        debug!(job = job.id, module = %job.module, "job queued");
        self.queue.push_back(job);
        self.replenish();
        self.prefetch();
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
            gate: job.reply.gate(),
        };
        match slot.ctl.send(ctl) {
            Ok(()) => {
                let runs_now = slot.jobs.is_empty();
                if runs_now {
                    slot.state = State::Busy;
                    self.busy += 1;
                } else {
                    self.prefetched += 1;
                }
                slot.jobs.push_back(Held {
                    id: job.id,
                    started: runs_now,
                    reply: Some(job.reply),
                    resend,
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
            if !self.modules.is_empty() && !self.modules.contains(job.module.as_str()) {
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
                .filter(|(_, s)| {
                    s.state == State::Busy
                        && s.jobs.len() < self.cfg.prefetch
                        && !s.retire_when_free
                        // A child never holds more jobs than it may still run.
                        && (s.job_limit == 0 || s.jobs_done + (s.jobs.len() as u64) < s.job_limit)
                })
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
                }),
                None => unreachable!("only the first job of a window lacks resend data"),
            }
        }
    }

    /// A job began to run on `child`: its status and its time limit.
    fn job_started(&mut self, job: JobId, child: ChildId) {
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

    /// A child became free: the next queued job, or the idle list.
    fn child_free(&mut self, id: ChildId) {
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
            self.retire(id, "replaced by a fresh child (SIGHUP)");
            return self.roll();
        }
        slot.state = State::Idle;
        slot.idle_since = Instant::now();
        self.idle.push_front(id);
        if self.idle_check.is_none() && self.children.len() > self.cfg.pool_start {
            self.idle_check = Some(Instant::now() + self.cfg.idle_timeout);
        }
        self.dispatch_queue();
        self.prefetch();
    }

    /// Stops a child that holds no job (it exits and is reaped; the pool
    /// refills to `pool-start` if it must).
    fn retire(&mut self, id: ChildId, why: &str) {
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
    fn shrink_idle(&mut self) {
        if self.shutting_down {
            return;
        }
        let now = Instant::now();
        // Old children a rolling restart retires after their job do not
        // count: their replacements are what stays.
        let live = |p: &Pool| {
            p.children
                .values()
                .filter(|s| s.state != State::Stopping && !s.retire_when_free)
                .count()
        };
        while live(self) > self.cfg.pool_start {
            // The idle list is most-recently-freed first: the back has
            // waited longest.
            let Some(&oldest) = self.idle.back() else {
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
    fn job_limit(&self) -> u64 {
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
                generation: self.generation,
                jobs_done: 0,
                job_limit: self.job_limit(),
                retire_when_free: false,
                idle_since: Instant::now(),
                started: false,
                ready_at: None,
            },
        );
        self.starting += 1;
        self.counters.spawned += 1;
        self.metrics.spawned.inc();
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
        self.modules = modules.into_iter().map(Arc::from).collect();
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
    fn child_started(&mut self, id: ChildId) {
        if self.mark_started(id) {
            // Spawning went one child at a time while start-ups failed.
            self.replenish();
        }
    }

    /// Marks a child started (ready long enough, or a job finished): the
    /// handler works, so the breaker is reset. Whether it was news.
    fn mark_started(&mut self, id: ChildId) -> bool {
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

    /// SIGHUP: every child of an older generation is replaced by a fresh
    /// one from the handler program on disk, one at a time. The fresh child
    /// starts first (the pool may hold one child above `pool-max` for a
    /// moment), so ready children never drop below what was there.
    fn restart(&mut self) {
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

    fn stale_children(&self) -> Vec<ChildId> {
        let mut ids: Vec<ChildId> = self
            .children
            .iter()
            .filter(|(_, s)| {
                s.generation < self.generation && s.state != State::Stopping && !s.retire_when_free
            })
            .map(|(&id, _)| id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Starts the next step of a rolling restart, if one is due.
    fn roll(&mut self) {
        if self.shutting_down || self.rolling.is_some() || self.breaker.tripped().is_some() {
            return;
        }
        // One old child at a time: wait for the one finishing its job.
        let old_finishing = self
            .children
            .values()
            .any(|s| s.retire_when_free && s.state != State::Stopping);
        if self.stale_children().is_empty() {
            if self.restarting && !old_finishing {
                self.restarting = false;
                info!(generation = self.generation, "rolling restart done");
            }
            return;
        }
        // One above pool-max at most: the next fresh child waits until the
        // old one just retired has exited.
        if old_finishing || self.children.len() > self.cfg.pool_max {
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
    fn replace_one_stale(&mut self, fresh: ChildId) {
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

    /// Takes the finished front job off a child. `retire`: the child exits
    /// after this answer, so the jobs behind it never start (they are
    /// requeued by `after_job`).
    fn take_job(
        &mut self,
        id: ChildId,
        job: JobId,
        retire: bool,
    ) -> Option<(JobId, Option<Reply>)> {
        self.held_job(id, job)?;
        let slot = self.children.get_mut(&id)?;
        let held = slot.jobs.pop_front()?;
        if retire && !slot.jobs.is_empty() {
            return Some((held.id, held.reply));
        }
        let stopping = slot.state == State::Stopping;
        let next = slot.jobs.front_mut().map(|h| {
            // A child being killed never starts the next one.
            h.started = !stopping;
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

    fn after_job(&mut self, id: ChildId, retire: bool) {
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
        if let (Some(limit), Some(pid), None) = (self.cfg.max_child_rss, slot.pid, why) {
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
        self.metrics.exited.inc();
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
                ExitInfo::SpawnFailed(_) => (None, None),
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
                let msg = format!("child {pid} {how} while running the job");
                self.refuse(reply, running.id, Reason::Error, msg);
            } else {
                info!(pid = slot.pid, job = running.id, %how, "child killed for its job exited");
            }
            // Jobs behind it never started: they run elsewhere.
            self.requeue(jobs);
            // A child lost mid-job took work, so it was no start-up
            // failure (the job's own fault, or a kill): replaced at once,
            // with no back-off.
            if !self.shutting_down && self.children.len() < self.cfg.pool_max {
                self.spawn_child();
            }
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
    fn startup_failure(&mut self, pid: Option<u32>, how: String) {
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
    fn ready_children(&self) -> usize {
        self.children
            .values()
            .filter(|s| matches!(s.state, State::Idle | State::Busy))
            .count()
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
        self.events.emit(|| Event::new("shutdown-begun"));
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
        for job in self.table.take_parked() {
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

    fn health(&self) -> Health {
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

    fn op(&mut self, op: Op, tx: oneshot::Sender<Answer>) {
        // Expired outcomes must not be served even when nothing has ended
        // for a while (eviction otherwise runs as jobs end).
        self.table.evict();
        let answer = match op {
            Op::Status(job) => match self.table.view(job) {
                Some(view) => Answer::ok(Body::View(view)),
                None => Answer::not_found(&self.table.id(job)),
            },
            Op::Result(job) => self.table.result(job),
            Op::Wait(job) => return self.table.add_waiter(job, tx),
            Op::Start(job) => self.start_held(job),
            Op::Cancel(job) => self.cancel(job),
            Op::List { limit, status } => Answer::ok(Body::List(self.table.list(limit, status))),
        };
        let _ = tx.send(answer);
    }

    /// `start`: a `start-later` job joins the queue. If it cannot (queue
    /// full, shutting down) it stays held and the answer says why.
    fn start_held(&mut self, job: JobId) -> Answer {
        let id = self.table.id(job);
        let Some(record) = self.table.get(job) else {
            return Answer::not_found(&id);
        };
        if record.status() != JobStatus::StartLater {
            return Answer::conflict(id, record.status());
        }
        let module = record
            .parked
            .as_ref()
            .map(|q| q.module.clone())
            .unwrap_or_default();
        if let Err((reason, message)) = self.admission(&module, true) {
            // The job stays held; the body describes the refused start.
            return Answer::failed(id, JobStatus::Failed, reason, message);
        }
        let Some(queued) = self.table.get_mut(job).and_then(|r| r.parked.take()) else {
            return Answer::conflict(id, JobStatus::StartLater);
        };
        self.table.set_queued(job);
        info!(job, module = %queued.module, "start-later job started");
        self.events.emit(|| Event {
            job: Some(id.clone()),
            module: Some(queued.module.clone()),
            ..Event::new("job-queued")
        });
        self.enqueue(*queued);
        Answer::ok(Body::Ref(taskmaster_proto::jobs::JobRef {
            id,
            status: JobStatus::Queued,
        }))
    }

    /// `cancel`: a held or queued job is removed; a running one's child is
    /// killed (and replaced). Its submitter, if waiting, is told
    /// `cancelled`.
    fn cancel(&mut self, job: JobId) -> Answer {
        let id = self.table.id(job);
        let Some(record) = self.table.get(job) else {
            return Answer::not_found(&id);
        };
        let status = record.status();
        if status.is_finished() {
            return Answer::conflict(id, status);
        }
        let child = record.child;
        match status {
            JobStatus::StartLater => {
                let parked = self.table.get_mut(job).and_then(|r| r.parked.take());
                let reply = parked.map(|q| q.reply);
                self.finish(
                    job,
                    reply,
                    End::Failed(Reason::Cancelled, "cancelled before it was started".into()),
                );
            }
            JobStatus::Processing => {
                let Some(child) = child else {
                    warn!(job, "processing job without a child");
                    return Answer::conflict(id, status);
                };
                self.end_running(
                    child,
                    job,
                    Reason::Cancelled,
                    "cancelled while processing".into(),
                );
            }
            _ => {
                if let Some(pos) = self.queue.iter().position(|q| q.id == job) {
                    let queued = self.queue.remove(pos).expect("position is in range");
                    self.finish(
                        job,
                        Some(queued.reply),
                        End::Failed(Reason::Cancelled, "cancelled while queued".into()),
                    );
                } else if let Some(reply) = self.take_prefetched(job) {
                    // Already written to a busy child's socket: it cannot be
                    // taken back, so the child will run it and its answer is
                    // dropped.
                    let msg = "cancelled while queued (the child it was sent to may still run it; its answer is dropped)";
                    self.finish(job, Some(reply), End::Failed(Reason::Cancelled, msg.into()));
                } else {
                    warn!(job, "job to cancel not found in the queue or a child");
                    return Answer::conflict(id, status);
                }
            }
        }
        info!(job, was = %status, "job cancelled");
        Answer::ok(Body::Ref(taskmaster_proto::jobs::JobRef {
            id,
            status: JobStatus::Cancelled,
        }))
    }

    /// The reply of a job waiting in a busy child's window, which no longer
    /// answers to it.
    fn take_prefetched(&mut self, job: JobId) -> Option<Reply> {
        self.children
            .values_mut()
            .flat_map(|slot| slot.jobs.iter_mut().skip(1))
            .find(|held| held.id == job)
            .and_then(|held| held.reply.take())
    }

    /// Ends the job running on `child` now with `reason`, and kills the
    /// child: its state is unknown mid-job, so it is never reused.
    fn end_running(&mut self, child: ChildId, job: JobId, reason: Reason, message: String) {
        let Some(slot) = self.children.get_mut(&child) else {
            return;
        };
        let Some(held) = slot.jobs.front_mut().filter(|h| h.id == job) else {
            return;
        };
        let Some(reply) = held.reply.take() else {
            return;
        };
        let pid = slot.pid.map_or("?".to_owned(), |p| p.to_string());
        slot.kill_cause = Some(format!("killed: job {job} {reason}"));
        // A timed-out job's child gets SIGTERM first (SIGKILL after a short
        // grace); a cancelled one is killed at once.
        let ctl = if reason == Reason::Timeout {
            ChildCtl::Terminate
        } else {
            ChildCtl::Kill
        };
        let _ = slot.ctl.send(ctl);
        self.set_state(child, State::Stopping);
        warn!(pid = %pid, job, %reason, "killing child for its job");
        self.finish(
            job,
            Some(reply),
            End::Failed(reason, format!("{message}; child {pid} killed")),
        );
    }

    fn job_timed_out(&mut self, job: JobId) {
        let Some(record) = self.table.get_mut(job) else {
            return;
        };
        record.timer = None;
        let (Some(child), Some(limit)) = (record.child, record.timeout) else {
            return;
        };
        if record.status() != JobStatus::Processing {
            return;
        }
        let message = format!("ran past its time limit of {}s", limit.as_secs_f64());
        self.end_running(child, job, Reason::Timeout, message);
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

/// A process's resident memory, from `/proc/PID/status`.
fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
