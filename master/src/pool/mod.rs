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
//!
//! # Layout
//!
//! One actor, its state here (`Pool`, one `Slot` per child), and one file
//! per concern, each an `impl Pool` block:
//!
//! - `handle.rs`: [`PoolHandle`] and the messages ([`PoolCmd`]) it sends.
//! - `dispatch.rs`: admission, the FIFO queue, first-free dispatch,
//!   prefetch, and `finish` (every answer).
//! - `lifecycle.rs`: spawn, hello, ready, started, a child's reports, exit.
//! - `breaker.rs`: the start-up failure and crash-loop policy (pure).
//! - `recycle.rs`: retiring (job count, RSS), idle shrink, rolling restart.
//! - `ops.rs`: status, result, start, cancel, list; time limits.
//! - `queue.rs`: the queue, a FIFO lane per priority.
//! - `retry.rs`: running an idempotent job again, and poison jobs.
//! - `shutdown.rs`: the drain and the hurried stop.
//! - `agents.rs`: agents' children joining and leaving the pool
//!   (`--agent-listen`).
//! - `nats.rs`: `--nats`: submits published to the shared stream, jobs
//!   fetched from it, answers coming back.
//! - `durable.rs`: `--state-dir`: changes to the job store, acks that wait
//!   for the disk, the restart.
//! - `stats.rs`: `/healthz` and the stats JSON.
//! - `tests.rs`, `model.rs`: unit tests with fake children and the
//!   proptest model of the actor.

use crate::child::ChildCtl;
use crate::config::Config;
use crate::events::{Event, Events};
use crate::job::{JobId, Reply};
use crate::metrics::Metrics;
use crate::spin::Spin;
use crate::table::{JobTable, Limits};
use bytes::Bytes;
use futures_util::StreamExt;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use taskmaster_proto::jobs::parse_id;
use taskmaster_proto::{Reason, SECRET_LEN};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::time::DelayQueue;
use tracing::info;

/// Most commands the actor handles before it yields to other tasks, should
/// its inbox never run empty (it runs outside tokio's task budget).
const LONGEST_ROUND: usize = 4096;

/// Most commands taken from the pool's channel at once.
const INBOX_BATCH: usize = 64;

mod agents;
mod breaker;
mod dispatch;
mod durable;
mod estimate;
mod handle;
mod lifecycle;
#[cfg(test)]
mod model;
mod nats;
mod ops;
mod queue;
mod recycle;
mod retry;
mod shutdown;
mod stats;
#[cfg(test)]
mod tests;

pub use handle::{Health, PoolCmd, PoolHandle};

use breaker::Breaker;

pub use crate::types::{ChildEvent, ChildId};
use crate::types::{FastMap, FastSet};

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
    /// (prefetched) wait unread in its socket. A child runs its jobs in
    /// order, so only the front one can have started.
    jobs: VecDeque<Held>,
    /// The estimated work in `jobs`, µs (the sum of their `est`).
    window: u64,
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
    /// The agent it runs on (`None`: the master's own child). Such a slot
    /// is not counted against `pool-max`, never respawned by the pool
    /// (its agent replaces it), and its pid is on another host.
    agent: Option<u64>,
}

impl Slot {
    /// Busy, and may be sent one more job behind its running one: it holds
    /// fewer than `cap`, is not retiring, and never holds more jobs than it
    /// may still run (`--max-jobs-per-child`).
    fn takes_more(&self, cap: usize) -> bool {
        self.state == State::Busy
            && self.jobs.len() < cap
            && !self.retire_when_free
            && (self.job_limit == 0 || self.jobs_done + (self.jobs.len() as u64) < self.job_limit)
    }
}

/// A job sent to a child.
struct Held {
    id: JobId,
    /// Its module's run-time estimate when it was sent, µs.
    est: u64,
    /// The child has started it (it is, or was, the front of the window).
    started: bool,
    /// `None` once answered early (cancelled or timed out while the child
    /// still holds it): whatever the child says of it later is dropped.
    reply: Option<Reply>,
    /// Module and input of a job sent behind a running one, kept to re-queue
    /// it if the child never starts it, or of one that may be retried
    /// (`None` for any other job sent to a free child: it starts at once).
    resend: Option<(String, Bytes)>,
    /// Its lane, for a re-queue.
    pri: taskmaster_proto::Priority,
    /// Its retries.
    retry: crate::job::Retry,
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
    retried: u64,
    poisoned: u64,
}

struct Pool {
    cfg: Arc<Config>,
    launcher: Arc<dyn Launcher>,
    handle: PoolHandle,
    children: FastMap<ChildId, Slot>,
    /// Ready children without a job; the most recently freed first, so a
    /// warm child takes the next job.
    idle: VecDeque<ChildId>,
    /// The child sent a job in this round of commands (`round`), whose
    /// write has not gone out yet.
    hot: Option<(ChildId, u64)>,
    /// Rounds of commands: one ends when the pool's inbox is empty.
    round: u64,
    /// Nothing waits in the pool's inbox behind the message being handled:
    /// what it sends now is the last of its round.
    quiet: bool,
    queue: queue::Queue,
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
    /// Modules' run times, for `--prefetch auto`.
    run_times: estimate::RunTimes,
    /// The restart generation; children of older ones are replaced.
    generation: u64,
    /// The fresh child a rolling restart is waiting for.
    rolling: Option<ChildId>,
    /// A rolling restart is under way (for its "done" line).
    restarting: bool,
    events: Events,
    /// Agents connected now (`--agent-listen`), by link number.
    agents: BTreeMap<u64, agents::AgentRec>,
    /// Children in `children` that run on agents.
    remote: usize,
    /// Module names the master's own children run.
    local_modules: FastSet<Arc<str>>,
    /// Module names the children run: the master's own and its agents'.
    /// (Shared strings: each job's record points at its module's name
    /// instead of copying it.)
    modules: FastSet<Arc<str>>,
    counters: Counters,
    started_at: Instant,
    ready_logged: bool,
    respawn_scheduled: bool,
    shutting_down: bool,
    done: Option<oneshot::Sender<()>>,
    /// The `--state-dir` job store.
    store: Option<crate::store::Store>,
    /// Detached submits' answers waiting for their change to be durable,
    /// in change order.
    acks: VecDeque<(u64, durable::Told, crate::job::Answer)>,
    /// The next place in the queue, for the store.
    next_order: u64,
    /// The shared queue on NATS (`--nats`).
    nats: Option<NatsState>,
    /// Told of every command, so the master polls a while before sleeping
    /// (`--spin-us`).
    spin: Arc<Spin>,
}

/// The pool's part of `--nats`.
struct NatsState {
    side: crate::nats::PoolSide,
    /// Jobs submitted here and published, waiting for an answer from
    /// whichever master runs them.
    remote: FastMap<JobId, crate::job::Reply>,
    /// Detached submits whose id is told only once the stream has them.
    acks: FastMap<JobId, crate::job::Ack>,
}

/// Starts the pool actor; it spawns `pool-start` children at once. The
/// receiver fires when a shutdown has stopped every child. Job ids are
/// `{instance}-{n}`. With a job store, what it held is taken back first.
pub fn start(
    cfg: Arc<Config>,
    launcher: Arc<dyn Launcher>,
    metrics: Arc<Metrics>,
    instance: Arc<str>,
    store: Option<(crate::store::Store, crate::store::Recovered)>,
    nats: Option<(crate::nats::PoolSide, crate::nats::Outcomes)>,
) -> (PoolHandle, oneshot::Receiver<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let (done_tx, done_rx) = oneshot::channel();
    let events = Events::new();
    let (nats, outcomes) = match nats {
        Some((side, outcomes)) => (
            Some(NatsState {
                side,
                remote: FastMap::default(),
                acks: FastMap::default(),
            }),
            Some(outcomes),
        ),
        None => (None, None),
    };
    let handle = PoolHandle::new(tx, instance.clone(), events.clone(), outcomes);
    let limits = Limits {
        keep: cfg.keep_results,
        ttl: cfg.result_ttl,
        bytes: cfg.keep_results_bytes,
    };
    let breaker = Breaker::new(cfg.breaker_deaths, cfg.breaker_window);
    let cfg_spin = cfg.spin;
    let mut pool = Pool {
        cfg,
        launcher,
        handle: handle.clone(),
        children: FastMap::default(),
        idle: VecDeque::new(),
        hot: None,
        round: 0,
        quiet: false,
        queue: queue::Queue::default(),
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
        run_times: estimate::RunTimes::default(),
        generation: 0,
        rolling: None,
        restarting: false,
        events,
        modules: FastSet::default(),
        agents: BTreeMap::new(),
        remote: 0,
        local_modules: FastSet::default(),
        counters: Counters::default(),
        started_at: Instant::now(),
        ready_logged: false,
        respawn_scheduled: false,
        shutting_down: false,
        done: Some(done_tx),
        store: None,
        acks: VecDeque::new(),
        next_order: 1,
        nats,
        spin: Spin::new(cfg_spin),
    };
    tokio::spawn(pool.spin.clone().run());
    if let Some((store, recovered)) = store {
        pool.store = Some(store);
        pool.table.hold_outcomes();
        pool.recover(recovered);
    }
    tokio::spawn(async move {
        if pool.cfg.pool_start == 0 {
            // Nothing to wait for: ready (for /healthz) at once.
            pool.ready_logged = true;
            info!(size = 0, elapsed_ms = 0, "pool ready");
        }
        pool.replenish();
        // Out of tokio's task budget, which would make the actor yield
        // after every 128 commands even with more waiting: it yields when
        // its inbox is empty, so the children's and clients' tasks it fed
        // write what one round gave them in one go (30% fewer writes per
        // job at 4 clients × 100 in flight, each a wake-up of the process
        // written to). Nothing else runs on this thread meanwhile, so a
        // round is bounded by what waited when it began (and by
        // `LONGEST_ROUND`, should something keep filling the inbox).
        tokio::task::unconstrained(pool.run(rx)).await;
    });
    (handle, done_rx)
}

impl Pool {
    async fn run(&mut self, mut rx: mpsc::UnboundedReceiver<PoolCmd>) {
        let idle_sleep = tokio::time::sleep(Duration::from_secs(86_400));
        tokio::pin!(idle_sleep);
        let mut armed: Option<Instant> = None;
        let mut committed = self.store.as_ref().map(|s| s.committed());
        let mut nats_events = self.nats.as_mut().and_then(|n| n.side.events.take());
        // A master with no child yet (`--pool-start 0`) may still take jobs.
        self.tell_free();
        // Commands handled since the inbox was last empty.
        let mut streak = 0usize;
        // Commands are taken from the channel many at a time: one pass
        // through `select!` (and its polls of every branch) per batch, not
        // per command.
        let mut inbox: Vec<PoolCmd> = Vec::with_capacity(INBOX_BATCH);
        loop {
            if self.idle_check != armed {
                armed = self.idle_check;
                if let Some(at) = armed {
                    idle_sleep.as_mut().reset(at);
                }
            }
            // The table's clock is cleared before anything that may wait
            // (`JobTable::tick`): a reading never outlives its round.
            tokio::select! {
                () = &mut idle_sleep, if armed.is_some() => {
                    self.idle_check = None;
                    self.shrink_idle();
                    self.table.tick();
                    continue;
                }
                n = rx.recv_many(&mut inbox, INBOX_BATCH) => if n == 0 {
                    return;
                },
                Some(expired) = self.timers.next(), if !self.timers.is_empty() => {
                    self.job_timed_out(expired.into_inner());
                    self.table.tick();
                    continue;
                }
                Some(done) = durable(&mut committed), if !self.acks.is_empty() => {
                    self.durable_upto(done);
                    self.table.tick();
                    continue;
                }
                Some(event) = async { nats_events.as_mut()?.recv().await } => {
                    self.nats_event(event);
                    self.tell_free();
                    self.table.tick();
                    continue;
                }
            };
            let mut cmds = inbox.drain(..);
            while let Some(cmd) = cmds.next() {
                // Nothing waits behind this command: what it sends is the
                // last of its round.
                let last = cmds.len() == 0 && rx.is_empty();
                self.quiet = last;
                self.handle(cmd);
                self.quiet = false;
                self.tell_free();
                self.spin.note(self.busy > 0);
                if last {
                    self.round += 1;
                    streak = 0;
                    self.table.tick();
                } else {
                    streak += 1;
                    // Times stay within some 64 commands of the clock.
                    if streak.is_multiple_of(64) {
                        self.table.tick();
                    }
                    if streak >= LONGEST_ROUND {
                        streak = 0;
                        tokio::task::yield_now().await;
                    }
                }
                if self.shutting_down && self.children.is_empty() {
                    self.fail_remote();
                    // Outcomes still on their way to the disk get there first.
                    if let Some(mut store) = self.store.take() {
                        store.close();
                    }
                    self.events.emit(|| Event::new("shutdown-done"));
                    if let Some(done) = self.done.take() {
                        let _ = done.send(());
                    }
                    return;
                }
            }
        }
    }

    /// Carries out the items of a batch message in order, as if each came
    /// alone: only the last may be the last of its round (`quiet`).
    fn each<T>(&mut self, items: Vec<T>, mut one: impl FnMut(&mut Pool, T)) {
        let quiet = self.quiet;
        let n = items.len();
        for (i, item) in items.into_iter().enumerate() {
            self.quiet = quiet && i + 1 == n;
            one(self, item);
        }
    }

    /// Carries out one command.
    fn handle(&mut self, cmd: PoolCmd) {
        match cmd {
            PoolCmd::Submit(s) => self.submit(s),
            PoolCmd::Submits(all) => self.each(all, Pool::submit),
            PoolCmd::Stats(tx) => {
                let _ = tx.send(self.stats());
            }
            PoolCmd::Op { op, tx } => self.op(op, tx),
            PoolCmd::Health(tx) => {
                let _ = tx.send(self.health());
            }
            PoolCmd::HandlerHello { hello, conn } => self.handler_hello(hello, conn),
            PoolCmd::Child { id, event } => self.child_event(id, event),
            PoolCmd::ChildEvents { id, events } => {
                self.each(events, |pool, event| pool.child_event(id, event));
            }
            PoolCmd::Respawn => {
                self.respawn_scheduled = false;
                self.replenish();
            }
            PoolCmd::StartSecs(id) => self.child_started(id),
            PoolCmd::Shutdown => self.shutdown(),
            PoolCmd::Restart => self.restart(),
            PoolCmd::GraceExpired => self.grace_expired(),
            PoolCmd::AgentJoined {
                id,
                name,
                address,
                slots,
            } => self.agent_joined(id, name, address, slots),
            PoolCmd::AgentChild {
                agent,
                pid,
                modules,
                ctl,
                tx,
            } => {
                let _ = tx.send(self.agent_child(agent, pid, modules, ctl));
            }
            PoolCmd::AgentGone { id, cause } => self.agent_gone(id, cause),
            PoolCmd::AgentDraining(id) => self.agent_draining(id),
        }
    }
}

/// The job store's next durable watermark (`None`: no store, or it is gone).
async fn durable(committed: &mut Option<tokio::sync::watch::Receiver<u64>>) -> Option<u64> {
    let rx = committed.as_mut()?;
    rx.changed().await.ok()?;
    let done = *rx.borrow_and_update();
    Some(done)
}
