//! Model-based test of the pool actor: proptest drives random sequences of
//! operations (submit echo/sleep/crash/hang jobs, with or without a time
//! limit, `start-later`, a priority or retries; advance time; a part; crash
//! a child; cancel; start; SIGHUP; shutdown; an agent joins, one of its
//! children dies, its link is lost, it drains) against the real actor,
//! with fake children that follow the child protocol (tokio tasks, paused
//! time, one current-thread runtime per case).
//!
//! Agents (SPEC section 14) are driven the way their link
//! (`crate::agents`) drives the pool: `agent_joined`, then `agent_child`
//! for each ready child (the fake serves the orders the pool sends it, as
//! the agent would relay them), its reports through `child_event`; the
//! agent replaces a child that exits; a lost link reports every child it
//! announced `Exited(Lost)`, then `agent_gone`; a draining agent
//! (`agent_draining`) replaces no child and leaves (`agent_gone`) when its
//! last child has exited. A case may start with an agent, and may have no
//! children of the master's at all (`pool-max` 0: a pure dispatcher).
//!
//! After every step it checks the pool against the fakes and a small model
//! of every submit:
//! - children: `size` is the number of fake processes alive (the master's
//!   and the agents'); the master's own never above `pool-max` (one more
//!   only while a SIGHUP restart is replacing children spawned before it),
//!   agents' children apart, and never below `pool-start` (before any
//!   start-up failure or shutdown); `starting` is the number of fakes not yet
//!   ready; `busy + idle + starting <= size`; an idle child holds no job;
//!   the per-child list names each child's agent (and its pid there);
//! - agents: the stats list the agents joined and not lost, in order, each
//!   with its slots and its children (and busy ones) now; an agent's child
//!   ready is refused exactly when it comes after the shutdown or its
//!   agent's drain; a draining agent's children get no new job; the pool
//!   stops an agent's child only at shutdown, when its agent drains or
//!   after `--max-jobs-per-child` jobs; no child
//!   of a lost agent is left in the pool (the pool drops its orders
//!   channel), and none is sent a job after its link was lost;
//! - queue: `queue.len <= job-max` (after crashes, plus one per child that
//!   died starting and one for a spawn held back by a back-off: admission
//!   counts a child on its way as room for one job, and a job accepted for
//!   it is never dropped when that child dies; job-max bounds admissions,
//!   not jobs already accepted); no job waits in the queue while a child is
//!   idle;
//! - jobs: every accepted job is in the table in exactly one status (the
//!   per-status lists partition the full list and agree with `status`), a
//!   status only moves forward (but a job with retries may go from
//!   processing back to queued) and a finished one never changes; a job is
//!   finished exactly when its final answer has been sent; a running job
//!   whose time limit has passed has been answered `timeout`; the job
//!   counters agree with the answers;
//! - answers: each tag gets at most one final answer (with its job id), no
//!   part after it, and the answer fits what happened to the job (`ok` only
//!   for echo/sleep with its input as output, `cancelled` exactly when a
//!   cancel said ok, `timeout` only with a time limit, `error` only after a
//!   crash, an agent's child's death or a lost agent, or at shutdown, or as
//!   "poison job" for a job with retries, `overload` only at submit,
//!   `shutting-down` only after shutdown);
//! - lost agents: the job each of its children ran fails `error` naming
//!   the child and the agent ("child P on agent A was lost with its agent
//!   (cause) while running the job"), or is retried (the retry counter
//!   says so), and is retried if it has retries left (by the deaths the
//!   steps caused under it); no other job gets that message; the jobs
//!   prefetched behind it go back to the queue (they do not fail `error`).
//!
//! At the end the pool is shut down (if no step did) and time advanced
//! until it stops: then every submit, accepted or refused, has exactly one
//! final answer and every fake has exited.
//!
//! `PROPTEST_CASES=N` runs another number of cases (the default is 2000);
//! the cases are the same on every run (a fixed seed) unless
//! `PROPTEST_RNG_SEED` says otherwise: `PROPTEST_RNG_SEED=$RANDOM
//! PROPTEST_CASES=10000` explores.

use crate::child::{ChildCtl, ExitInfo};
use crate::config::Config;
use crate::job::{Ack, Answer, Body, ConnReply, JobId, Op, Outgoing, Reply, Submission};
use crate::pool::{self, ChildEvent, ChildId, Launcher, PoolHandle};
use bytes::Bytes;
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use taskmaster_proto::jobs::{JobStatus, Outcome, Priority, SubmitOptions};
use taskmaster_proto::messages::ToClient;
use taskmaster_proto::{Reason, SECRET_LEN};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

const INSTANCE: &str = "0123456789ab";
/// From spawn to ready.
const STARTUP: Duration = Duration::from_millis(5);
const SIGABRT: i32 = 6;
const SIGKILL: i32 = 9;
const SIGSEGV: i32 = 11;
const SIGTERM: i32 = 15;

// ---------------------------------------------------------------- fakes --

/// What the test tells a fake child.
enum Poke {
    /// Die of SIGSEGV now.
    Crash,
    /// Exit with code 0 now (a handler that quits on its own).
    Exit,
    /// Send a part of the running job.
    Part,
    /// Its agent's link is lost (already reported to the pool): say
    /// nothing more, and note every order the pool still sends.
    Lost,
}

/// A live fake child as the test sees it.
struct FakeChild {
    poke: mpsc::UnboundedSender<Poke>,
    /// Its pid (on its agent's host for an agent's child).
    pid: u32,
    /// The agent's link it runs on (`None`: the master's own child).
    agent: Option<u64>,
    ready: bool,
    /// Told to stop or terminate; exits after its exit delay.
    dying: bool,
    /// Jobs received and not answered, oldest first.
    jobs: VecDeque<JobId>,
    /// The job it runs (the front of `jobs`) and since when.
    running: Option<(JobId, Instant)>,
}

/// An agent that joined, as the test sees it.
struct FakeAgent {
    name: String,
    address: String,
    slots: u32,
    /// Its link is lost (its children's exits and `agent_gone` sent), or
    /// it left after draining.
    lost: bool,
    /// It is stopping (`agent_draining` sent): no more children.
    draining: bool,
    /// Its slots still serving (or about to announce a child).
    active: u32,
}

/// Every fake child, shared by the launcher, the fakes and the test.
#[derive(Default)]
struct World {
    /// Children alive in the pool's eyes: the master's own (from launch
    /// to exit) and agents' (from `agent_child` to exit or link loss).
    children: BTreeMap<ChildId, FakeChild>,
    launched: u64,
    max_id: ChildId,
    exited: u64,
    /// Agents by link number.
    agents: BTreeMap<u64, FakeAgent>,
    /// Agents' children announced so far (their pids).
    agent_children: u32,
    /// Children of lost agents: whether the pool has let go of their
    /// orders (dropped its end of the channel).
    lost: BTreeMap<ChildId, bool>,
    /// The test told the pool to shut down (set before the command is sent,
    /// so an `agent_child` sent after it must be refused).
    shutdown: bool,
    /// `--max-jobs-per-child`.
    max_jobs: u64,
    /// Protocol breaches seen by the fakes (commands they must never get).
    violations: Vec<String>,
}

type Shared = Arc<Mutex<World>>;

fn lock(world: &Shared) -> MutexGuard<'_, World> {
    world.lock().unwrap_or_else(|e| e.into_inner())
}

/// The modules every fake child runs.
fn modules() -> Vec<String> {
    ["echo", "sleep", "crash", "hang"]
        .map(String::from)
        .to_vec()
}

/// Starts fake children; they take `exit_delay` to die of a SIGTERM.
struct ModelLauncher {
    world: Shared,
    exit_delay: Duration,
}

impl Launcher for ModelLauncher {
    fn launch(
        &self,
        id: ChildId,
        _secret: [u8; SECRET_LEN],
        ctl: mpsc::UnboundedReceiver<ChildCtl>,
        pool: PoolHandle,
    ) {
        let (poke, poke_rx) = mpsc::unbounded_channel();
        {
            let mut w = lock(&self.world);
            w.launched += 1;
            w.max_id = w.max_id.max(id);
            w.children.insert(
                id,
                FakeChild {
                    poke,
                    pid: 10_000 + id as u32,
                    agent: None,
                    ready: false,
                    dying: false,
                    jobs: VecDeque::new(),
                    running: None,
                },
            );
        }
        let fake = Fake {
            id,
            pool,
            world: self.world.clone(),
            exit_delay: self.exit_delay,
            agent: None,
        };
        tokio::spawn(fake.run(ctl, poke_rx));
    }
}

/// How a fake's life in the pool ended.
enum Gone {
    /// It exited and said so.
    Exited,
    /// Its agent's link was lost.
    Lost,
}

struct Fake {
    id: ChildId,
    pool: PoolHandle,
    world: Shared,
    exit_delay: Duration,
    /// The agent's link its reports go through (`None`: the master's own).
    agent: Option<u64>,
}

impl Fake {
    /// Its agent's link is lost: nothing it says reaches the pool any more.
    fn lost(&self) -> bool {
        self.agent.is_some() && lock(&self.world).lost.contains_key(&self.id)
    }

    /// Its agent is draining: it takes no new job.
    fn draining(&self) -> bool {
        self.agent
            .is_some_and(|link| lock(&self.world).agents[&link].draining)
    }

    fn send(&self, event: ChildEvent) {
        if !self.lost() {
            self.pool.child_event(self.id, event);
        }
    }

    fn with(&self, f: impl FnOnce(&mut FakeChild)) {
        if let Some(c) = lock(&self.world).children.get_mut(&self.id) {
            f(c);
        }
    }

    /// The process is gone: off the world and reported, in one step, so the
    /// world and the pool agree whenever the pool answers a query. (An
    /// agent's child reports through its link, as `ChildGone`; one whose
    /// link is lost was reported by the link already.)
    fn exit(&self, info: ExitInfo) -> Gone {
        let mut w = lock(&self.world);
        if self.agent.is_some() && w.lost.contains_key(&self.id) {
            return Gone::Lost;
        }
        w.children.remove(&self.id);
        // (The pool counts its own processes' exits only.)
        w.exited += u64::from(self.agent.is_none());
        self.pool.child_event(self.id, ChildEvent::Exited(info));
        Gone::Exited
    }

    fn signal(&self, signal: i32, killed_by_master: bool) -> Gone {
        self.exit(ExitInfo::Status {
            code: None,
            signal: Some(signal),
            killed_by_master,
        })
    }

    fn violation(&self, what: String) {
        lock(&self.world).violations.push(what);
    }

    /// Told to stop after `done` jobs: an agent's child only at shutdown,
    /// when its agent drains, or after `--max-jobs-per-child` jobs (its
    /// agent keeps it otherwise: no idle shrink, no SIGHUP restart).
    fn stopped(&self, done: u64) {
        let Some(link) = self.agent else {
            return;
        };
        let mut w = lock(&self.world);
        let spent = w.max_jobs > 0 && done >= w.max_jobs;
        if !(w.shutdown || w.agents[&link].draining || spent) {
            w.violations.push(format!(
                "child {} of agent {link} was told to stop after {done} jobs",
                self.id
            ));
        }
    }

    /// Spawned; ready after `STARTUP`; then serves.
    async fn run(
        self,
        mut ctl: mpsc::UnboundedReceiver<ChildCtl>,
        mut poke: mpsc::UnboundedReceiver<Poke>,
    ) {
        let id = self.id;
        self.send(ChildEvent::Spawned {
            pid: 10_000 + id as u32,
        });
        let ready_at = Instant::now() + STARTUP;
        loop {
            tokio::select! {
                biased;
                cmd = ctl.recv() => match cmd {
                    Some(ChildCtl::Attach { .. }) => {}
                    Some(ChildCtl::Job { job, .. }) => {
                        self.violation(format!("child {id} was sent job {job} before it was ready"));
                    }
                    // Like the real child task before its hello: any other
                    // command (or a gone pool) kills the process.
                    _ => {
                        self.signal(SIGKILL, true);
                        return;
                    }
                },
                p = poke.recv() => {
                    if let Some(Poke::Crash) = p {
                        self.signal(SIGSEGV, false);
                        return;
                    }
                }
                () = tokio::time::sleep_until(ready_at) => break,
            }
        }
        self.with(|c| c.ready = true);
        self.send(ChildEvent::Ready { modules: modules() });
        self.serve(ctl, poke).await;
    }

    /// Runs its jobs in order until it exits: `echo` answers at once,
    /// `sleep` after the milliseconds after the `:` of its input, `crash`
    /// kills the child (SIGABRT), `hang` never answers. The output is the
    /// input. Stop and terminate are SIGTERM (the handler's default action:
    /// it dies), kill is SIGKILL.
    async fn serve(
        &self,
        mut ctl: mpsc::UnboundedReceiver<ChildCtl>,
        poke: mpsc::UnboundedReceiver<Poke>,
    ) -> Gone {
        match self.serve_jobs(&mut ctl, poke).await {
            Gone::Exited => Gone::Exited,
            Gone::Lost => self.drain_lost(&mut ctl).await,
        }
    }

    async fn serve_jobs(
        &self,
        ctl: &mut mpsc::UnboundedReceiver<ChildCtl>,
        mut poke: mpsc::UnboundedReceiver<Poke>,
    ) -> Gone {
        let id = self.id;
        // Jobs answered.
        let mut done = 0;
        let mut jobs: VecDeque<(JobId, String, Bytes)> = VecDeque::new();
        // While the front job runs: its deadline (`None`: it hangs).
        let mut running: Option<Option<Instant>> = None;
        let mut dying: Option<Instant> = None;
        loop {
            if running.is_none() && dying.is_none() {
                if let Some((job, module, input)) = jobs.front().cloned() {
                    let now = Instant::now();
                    self.with(|c| c.running = Some((job, now)));
                    match module.as_str() {
                        "echo" => {
                            jobs.pop_front();
                            self.with(|c| {
                                c.jobs.pop_front();
                                c.running = None;
                            });
                            self.send(ChildEvent::Done {
                                job,
                                output: input,
                                retire: false,
                            });
                            done += 1;
                            continue;
                        }
                        "crash" => return self.signal(SIGABRT, false),
                        "sleep" => {
                            let ms = std::str::from_utf8(&input)
                                .ok()
                                .and_then(|s| s.split(':').nth(1)?.parse().ok())
                                .unwrap_or(1);
                            running = Some(Some(now + Duration::from_millis(ms)));
                        }
                        _ => running = Some(None),
                    }
                }
            }
            let far = Instant::now() + Duration::from_secs(86_400);
            let deadline = running.flatten().filter(|_| dying.is_none());
            tokio::select! {
                biased;
                cmd = ctl.recv() => match cmd {
                    Some(ChildCtl::Job { job, module, input, .. }) => {
                        if self.lost() {
                            self.violation(format!("job {job} was sent to child {id} after its agent was lost"));
                            return Gone::Lost;
                        }
                        if self.draining() {
                            self.violation(format!("job {job} was sent to child {id} after its agent began draining"));
                        }
                        jobs.push_back((job, module, input));
                        self.with(|c| c.jobs.push_back(job));
                    }
                    Some(ctl @ (ChildCtl::Stop | ChildCtl::Terminate)) => {
                        if matches!(ctl, ChildCtl::Stop) {
                            self.stopped(done);
                        }
                        if dying.is_none() {
                            dying = Some(Instant::now() + self.exit_delay);
                            self.with(|c| c.dying = true);
                        }
                    }
                    Some(ChildCtl::Attach { .. }) => {}
                    Some(ChildCtl::Kill) | None => return self.signal(SIGKILL, true),
                },
                p = poke.recv() => match p {
                    Some(Poke::Crash) => return self.signal(SIGSEGV, false),
                    Some(Poke::Exit) => return self.exit(ExitInfo::Status {
                        code: Some(0),
                        signal: None,
                        killed_by_master: false,
                    }),
                    Some(Poke::Lost) => return Gone::Lost,
                    Some(Poke::Part) => {
                        if let (Some(_), None, Some((job, _, _))) = (running, dying, jobs.front()) {
                            self.send(ChildEvent::Part { job: *job, data: Bytes::from_static(b"part") });
                        }
                    }
                    None => {}
                },
                () = tokio::time::sleep_until(deadline.unwrap_or(far)), if deadline.is_some() => {
                    let (job, _, input) = jobs.pop_front().expect("a running job");
                    running = None;
                    self.with(|c| {
                        c.jobs.pop_front();
                        c.running = None;
                    });
                    self.send(ChildEvent::Done { job, output: input, retire: false });
                    done += 1;
                }
                () = tokio::time::sleep_until(dying.unwrap_or(far)), if dying.is_some() => {
                    return self.signal(SIGTERM, false);
                }
            }
        }
    }

    /// Its agent's link is lost: whatever the pool still orders goes
    /// nowhere (and no job may be among it: the pool had the child's exit
    /// before any order after the loss), until the pool lets go.
    async fn drain_lost(&self, ctl: &mut mpsc::UnboundedReceiver<ChildCtl>) -> Gone {
        while let Some(cmd) = ctl.recv().await {
            if let ChildCtl::Job { job, .. } = cmd {
                self.violation(format!(
                    "job {job} was sent to child {} after its agent was lost",
                    self.id
                ));
            }
        }
        lock(&self.world).lost.insert(self.id, true);
        Gone::Lost
    }
}

/// One of an agent's slots, with its link's part (`crate::agents`): its
/// child is ready (at once for the first, `STARTUP` after the previous one
/// exited for a replacement), the link announces it with `agent_child`,
/// it serves, and when it exits the agent replaces it (unless draining).
/// A child the pool refuses (shutting down, or its agent draining) is
/// stopped by the link, and the slot stays empty; a lost link ends the
/// slot.
struct AgentSlot {
    link: u64,
    pool: PoolHandle,
    world: Shared,
    exit_delay: Duration,
}

impl AgentSlot {
    /// The pool's answer to `agent_child`: the child is in the world if it
    /// joined (the test's view of it, and where it is poked).
    fn joined(
        &self,
        id: Option<ChildId>,
        pid: u32,
        refuse: bool,
    ) -> Option<(ChildId, mpsc::UnboundedReceiver<Poke>)> {
        let mut w = lock(&self.world);
        let Some(id) = id else {
            if !refuse {
                w.violations.push(format!(
                    "child {pid} of agent {} refused while the pool was not shutting down and the agent not draining",
                    self.link
                ));
            }
            return None;
        };
        if refuse {
            w.violations.push(format!(
                "child {pid} of agent {} joined the pool (as {id}) after its shutdown or its agent's drain",
                self.link
            ));
        }
        if w.agents[&self.link].lost {
            // The link serves one frame at a time: it cannot be lost while
            // the pool takes a child (and the steps settle first).
            w.violations.push(format!(
                "model: child {pid} of agent {} joined while its link was lost",
                self.link
            ));
            return None;
        }
        let (poke, poke_rx) = mpsc::unbounded_channel();
        w.children.insert(
            id,
            FakeChild {
                poke,
                pid,
                agent: Some(self.link),
                ready: true,
                dying: false,
                jobs: VecDeque::new(),
                running: None,
            },
        );
        Some((id, poke_rx))
    }

    async fn run(self) {
        self.serve().await;
        // A draining agent stops once its last child is gone: its link
        // closes, with no child left to report.
        let mut w = lock(&self.world);
        let agent = w.agents.get_mut(&self.link).expect("joined");
        agent.active -= 1;
        if agent.active == 0 && agent.draining && !agent.lost {
            agent.lost = true;
            self.pool.agent_gone(self.link, CAUSE.into());
        }
    }

    async fn serve(&self) {
        let mut first = true;
        loop {
            if !first {
                tokio::time::sleep(STARTUP).await;
            }
            first = false;
            let (ctl, ctl_rx) = mpsc::unbounded_channel();
            let (pid, refuse) = {
                let mut w = lock(&self.world);
                let agent = &w.agents[&self.link];
                if agent.lost {
                    return;
                }
                // (A child ready while its agent drains is announced, and
                // refused.)
                let refuse = w.shutdown || agent.draining;
                w.agent_children += 1;
                (50_000 + w.agent_children, refuse)
            };
            // Sent before this task yields: in the pool's order with the
            // test's shutdown and drain.
            let id = self.pool.agent_child(self.link, pid, modules(), ctl).await;
            let Some((id, poke_rx)) = self.joined(id, pid, refuse) else {
                return;
            };
            let fake = Fake {
                id,
                pool: self.pool.clone(),
                world: self.world.clone(),
                exit_delay: self.exit_delay,
                agent: Some(self.link),
            };
            if let Gone::Lost = fake.serve(ctl_rx, poke_rx).await {
                return;
            }
            // A draining agent replaces no child.
            if lock(&self.world).agents[&self.link].draining {
                return;
            }
        }
    }
}

// ------------------------------------------------------------ the model --

/// What a job does in its child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Answers its input at once.
    Echo,
    /// Answers its input after this many ms.
    Sleep(u64),
    /// Kills its child.
    Crash,
    /// Never answers.
    Hang,
}

impl Kind {
    fn module(self) -> &'static str {
        match self {
            Kind::Echo => "echo",
            Kind::Sleep(_) => "sleep",
            Kind::Crash => "crash",
            Kind::Hang => "hang",
        }
    }
}

/// One step of a case.
#[derive(Debug, Clone)]
enum Step {
    /// Submit a job.
    Submit {
        /// What it does.
        kind: Kind,
        /// Its time limit.
        timeout_ms: Option<u64>,
        /// Held until started.
        later: bool,
        /// Its lane.
        priority: Priority,
        /// Runs again after a death or its time limit.
        retries: u32,
    },
    /// Submit a job with a time limit, then advance past it.
    Timeout {
        /// What it does.
        kind: Kind,
        /// Its time limit.
        ms: u64,
    },
    /// Let time pass (children finish their jobs).
    Advance(u64),
    /// A running child sends a part.
    Part(usize),
    /// A live child of the master's dies of SIGSEGV (starting, idle or
    /// busy).
    Crash(usize),
    /// An agent joins with this many slots (1 to 3); its children are
    /// ready at once.
    AgentJoin(u32),
    /// An agent's child dies (SIGSEGV, or exit code 0 if `crash` is
    /// false); its agent replaces it.
    AgentChildDies {
        /// Which (of the agents' children alive).
        i: usize,
        /// SIGSEGV, or a clean exit.
        crash: bool,
    },
    /// An agent's link is lost: every child it announced is reported
    /// `Lost`, then the agent gone.
    AgentLost(usize),
    /// An agent drains (SIGTERM): its children finish their jobs and are
    /// not replaced; it leaves (its link closes) when the last is gone.
    AgentDrains(usize),
    /// Cancel a job.
    Cancel(usize),
    /// Start a start-later job.
    Start(usize),
    /// SIGHUP.
    Restart,
    /// SIGTERM (a second one hurries).
    Shutdown,
}

/// The pool's settings for a case.
#[derive(Debug, Clone, Copy)]
struct Setup {
    pool_start: usize,
    pool_max: usize,
    job_max: usize,
    prefetch: usize,
    grace_ms: u64,
    idle_timeout_ms: u64,
    max_jobs_per_child: u64,
    /// How long a fake takes to die of SIGTERM.
    exit_delay_ms: u64,
    /// An agent with this many slots joins before the first step (0: none).
    agent_at_start: u32,
}

/// One submit as the model knows it.
struct JobM {
    tag: u64,
    kind: Kind,
    input: Bytes,
    timeout: Option<u64>,
    later: bool,
    retries: u32,
    /// `None` until the table has been looked at after the submit.
    accepted: Option<bool>,
    /// The immediate answer of a start-later (detached) submit.
    ack: Option<oneshot::Receiver<Answer>>,
    finals: Vec<Final>,
    /// Crash steps and whether shutdown had begun when it was submitted.
    crashes_at_submit: u64,
    shutdown_at_submit: bool,
    cancel_ok: bool,
    /// Children that died under it (crash steps, agents' children dying,
    /// lost agents) while it ran: each spent one of its retries.
    deaths: u32,
    /// The furthest status seen (table order: start-later, queued,
    /// processing, finished).
    rank: u8,
    /// Its finished status, once seen.
    finished: Option<JobStatus>,
}

fn rank(s: JobStatus) -> u8 {
    match s {
        JobStatus::StartLater => 0,
        JobStatus::Queued => 1,
        JobStatus::Processing => 2,
        JobStatus::Completed | JobStatus::Failed | JobStatus::Cancelled => 3,
    }
}

type Res = Result<(), String>;

/// A final answer: the output, or the reason and message.
type Final = Result<Bytes, (Reason, String)>;

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

fn config(s: &Setup) -> Config {
    use clap::Parser;
    // Every flag at its default, then what the pool reads set here, so the
    // environment cannot change a case.
    let cli = crate::cli::Cli::try_parse_from(["taskmaster"]).expect("defaults parse");
    let mut cfg = cli.serve.to_config();
    cfg.pool_start = s.pool_start;
    cfg.pool_max = s.pool_max;
    // Agents may join (and `pool-max` may be 0: a pure dispatcher).
    cfg.agents = true;
    cfg.job_max = s.job_max;
    // 0: `auto`.
    cfg.prefetch = match s.prefetch {
        0 => crate::config::Prefetch::Auto,
        n => crate::config::Prefetch::Fixed(n),
    };
    cfg.handler = "fake-handler".into();
    cfg.grace = Duration::from_millis(s.grace_ms);
    cfg.job_timeout = None;
    cfg.keep_results = 10_000;
    cfg.result_ttl = Duration::from_secs(365 * 24 * 3600);
    cfg.keep_results_bytes = 1 << 30;
    cfg.max_jobs_per_child = s.max_jobs_per_child;
    cfg.max_jobs_jitter = 0;
    cfg.max_child_rss = None;
    cfg.idle_timeout = Duration::from_millis(s.idle_timeout_ms);
    cfg.breaker_deaths = 3;
    cfg.breaker_window = Duration::from_secs(10);
    cfg.heartbeat = None;
    // The model's clock is tokio's; polling runs on the real one.
    cfg.spin = Duration::ZERO;
    cfg
}

/// Why the model's lost links are lost.
const CAUSE: &str = "connection closed";

/// A link just lost.
struct Cut {
    link: u64,
    name: String,
    /// The job each of its children ran (not answered yet), and the
    /// child's pid.
    running: Vec<(JobId, u32)>,
    /// The jobs prefetched behind those (not answered yet).
    behind: Vec<JobId>,
}

struct Case {
    setup: Setup,
    pool: PoolHandle,
    done: oneshot::Receiver<()>,
    world: Shared,
    tx: mpsc::UnboundedSender<Outgoing>,
    rx: mpsc::UnboundedReceiver<Outgoing>,
    /// Job `n` is `jobs[n - 1]`: the pool numbers submits in order.
    jobs: Vec<JobM>,
    /// Deaths of children holding jobs may cause: crash steps (of the
    /// master's children and of agents'), agents' children that exit,
    /// lost agents.
    crashes: u64,
    /// Crash steps of the master's own children.
    local_crashes: u64,
    /// Crash steps that hit a child before it was ready, and children a
    /// SIGHUP found starting (retired as soon as they are ready).
    startup_crashes: u64,
    shutdown: bool,
    stopped: bool,
    /// Children up to this id were spawned before the last SIGHUP.
    restart_mark: Option<ChildId>,
    /// `queue.len <= job-max` even after crashes.
    strict_queue: bool,
    /// The last agent's link number.
    last_link: u64,
    /// Jobs that ran on an agent's child when its link was lost.
    lost_running: BTreeSet<JobId>,
}

impl Case {
    fn new(setup: Setup, strict_queue: bool) -> Case {
        let world = Shared::default();
        lock(&world).max_jobs = setup.max_jobs_per_child;
        let (pool, done) = pool::start(
            Arc::new(config(&setup)),
            Arc::new(ModelLauncher {
                world: world.clone(),
                exit_delay: Duration::from_millis(setup.exit_delay_ms),
            }),
            Arc::new(crate::metrics::Metrics::new()),
            INSTANCE.into(),
            None,
            None,
        );
        let (tx, rx) = mpsc::unbounded_channel();
        Case {
            setup,
            pool,
            done,
            world,
            tx,
            rx,
            jobs: Vec::new(),
            crashes: 0,
            local_crashes: 0,
            startup_crashes: 0,
            shutdown: false,
            stopped: false,
            restart_mark: None,
            strict_queue,
            last_link: 0,
            lost_running: BTreeSet::new(),
        }
    }

    /// An agent's link is accepted (`agent_joined`), then its children
    /// are ready, each announced with `agent_child`.
    fn join_agent(&mut self, slots: u32) {
        self.last_link += 1;
        let link = self.last_link;
        let name = format!("box{link}");
        let address = format!("192.0.2.{link}:4{link:04}");
        lock(&self.world).agents.insert(
            link,
            FakeAgent {
                name: name.clone(),
                address: address.clone(),
                slots,
                lost: false,
                draining: false,
                active: slots,
            },
        );
        self.pool.agent_joined(link, name.into(), address, slots);
        for _ in 0..slots {
            let slot = AgentSlot {
                link,
                pool: self.pool.clone(),
                world: self.world.clone(),
                exit_delay: Duration::from_millis(self.setup.exit_delay_ms),
            };
            tokio::spawn(slot.run());
        }
    }

    /// Loses the link of agent `i` (of those connected): marks it and its
    /// children lost and reports each child `Exited(Lost)`, noting the jobs
    /// they held. `None` if no agent is connected.
    fn cut_link(&mut self, i: usize) -> Option<Cut> {
        let mut w = lock(&self.world);
        let live: Vec<u64> = w
            .agents
            .iter()
            .filter(|(_, a)| !a.lost)
            .map(|(&link, _)| link)
            .collect();
        let link = *live.get(i % live.len().max(1))?;
        let agent = w.agents.get_mut(&link).expect("a live agent");
        agent.lost = true;
        let name = agent.name.clone();
        let ids: Vec<ChildId> = w
            .children
            .iter()
            .filter(|(_, c)| c.agent == Some(link))
            .map(|(&id, _)| id)
            .collect();
        for &id in &ids {
            w.lost.insert(id, false);
        }
        let unanswered = |job: &JobId| self.jobs[*job as usize - 1].finals.is_empty();
        let (mut running, mut behind) = (Vec::new(), Vec::new());
        for id in ids {
            let c = w.children.remove(&id).expect("alive");
            // (A child told to terminate ran past its job's time limit:
            // that job was answered or retried already.)
            if let Some(&front) = c.jobs.front().filter(|j| !c.dying && unanswered(j)) {
                running.push((front, c.pid));
            }
            behind.extend(c.jobs.iter().skip(1).filter(|j| unanswered(j)));
            let _ = c.poke.send(Poke::Lost);
            let info = ExitInfo::Lost(CAUSE.into());
            self.pool.child_event(id, ChildEvent::Exited(info));
        }
        Some(Cut {
            link,
            name,
            running,
            behind,
        })
    }

    /// A child running `job` (if any) was made to die.
    fn died_under(&mut self, job: Option<JobId>) {
        if let Some(job) = job {
            self.jobs[job as usize - 1].deaths += 1;
        }
    }

    /// Agent `i` (of those connected) loses its link, as `crate::agents`
    /// reports it: every child it announced `Exited(Lost)`, then
    /// `agent_gone`. The job each child ran fails `error` naming the agent
    /// (or is retried); the jobs prefetched behind it go back to the queue.
    async fn lose_agent(&mut self, i: usize) -> Res {
        self.drain()?;
        let retried_before = self.pool.stats().await.map(|s| s.jobs.retried);
        let Some(Cut {
            link,
            name,
            running,
            behind,
        }) = self.cut_link(i)
        else {
            return Ok(());
        };
        self.pool.agent_gone(link, CAUSE.into());
        self.crashes += 1;
        self.lost_running
            .extend(running.iter().map(|&(job, _)| job));
        self.settle().await;
        self.drain()?;
        // A child announced now (no link does that) names an unknown agent.
        let (ctl, _orders) = mpsc::unbounded_channel();
        let late = self.pool.agent_child(link, 1, modules(), ctl).await;
        ensure!(
            late.is_none(),
            "a child of lost agent {name} joined the pool as {late:?}"
        );
        let mut requeued = 0;
        for (job, pid) in running {
            let lost = format!(
                "child {pid} on agent {name} was lost with its agent ({CAUSE}) while running the job"
            );
            let shutdown = self.shutdown;
            let m = &mut self.jobs[job as usize - 1];
            // Retries left, by the deaths the steps caused under it (a job
            // with a time limit may have spent some on it; a crash job
            // spends one on each run).
            let may_run_again = m.retries > m.deaths
                && m.deaths + 1 < super::retry::POISON_KILLS
                && m.timeout.is_none()
                && m.kind != Kind::Crash
                && !shutdown;
            m.deaths += 1;
            match m.finals.first() {
                Some(Err((Reason::Error, message))) if message.contains(&lost) => {
                    ensure!(
                        !may_run_again,
                        "job {job} (retries {}, {} children died under it before) ran on child {pid} when agent {name} was lost, and failed: {message}",
                        m.retries,
                        m.deaths - 1
                    );
                }
                other => {
                    ensure!(
                        m.retries > 0,
                        "job {job} ran on child {pid} when agent {name} was lost, answered {other:?}, not an error naming the agent"
                    );
                    requeued += 1;
                }
            }
        }
        let retried_after = self.pool.stats().await.map(|s| s.jobs.retried);
        if let (Some(before), Some(after)) = (retried_before, retried_after) {
            ensure!(
                after >= before + requeued,
                "{requeued} jobs lost with agent {name} not answered, but {} retried",
                after - before
            );
        }
        for job in behind {
            let m = &self.jobs[job as usize - 1];
            // (Back in the queue, a crash job may crash other children at
            // once: that is no loss of the agent's.)
            ensure!(
                m.kind == Kind::Crash || !matches!(m.finals.first(), Some(Err((Reason::Error, _)))),
                "job {job}, prefetched on a child of lost agent {name}, failed {:?}",
                m.finals
            );
        }
        Ok(())
    }

    /// Lets every task run until none has anything to do, without moving
    /// the clock.
    async fn settle(&self) {
        for _ in 0..64 {
            tokio::task::yield_now().await;
        }
    }

    fn job(&mut self, job: JobId) -> Result<&mut JobM, String> {
        let n = self.jobs.len();
        usize::try_from(job)
            .ok()
            .and_then(|j| j.checked_sub(1))
            .and_then(|j| self.jobs.get_mut(j))
            .ok_or_else(|| format!("answer for job {job}, but {n} submitted"))
    }

    /// Reads every answer sent so far.
    fn drain(&mut self) -> Res {
        while let Ok(out) = self.rx.try_recv() {
            let (tag, job, fin) = match out.msg {
                ToClient::Part { tag, .. } => {
                    let j = self.by_tag(tag)?;
                    ensure!(
                        self.jobs[j].finals.is_empty(),
                        "a part for tag {tag} after its final answer"
                    );
                    continue;
                }
                ToClient::Completed {
                    tag, job, output, ..
                } => (tag, job, Ok(output)),
                ToClient::Failed {
                    tag,
                    job,
                    reason,
                    message,
                    ..
                } => (tag, job, Err((reason, message))),
                other => return Err(format!("unexpected message to a client: {other:?}")),
            };
            let j = self.by_tag(tag)?;
            ensure!(
                j as u64 + 1 == job,
                "the final answer for tag {tag} names job {job}, not {}",
                j + 1
            );
            let crashes = self.crashes;
            let shutdown = self.shutdown;
            let m = &mut self.jobs[j];
            ensure!(
                m.finals.is_empty(),
                "job {job} answered twice: {:?} then {fin:?}",
                m.finals[0]
            );
            let what = format!("job {job} ({:?}, timeout {:?})", m.kind, m.timeout);
            match &fin {
                Ok(output) => {
                    ensure!(
                        matches!(m.kind, Kind::Echo | Kind::Sleep(_)),
                        "{what} completed"
                    );
                    ensure!(
                        *output == m.input,
                        "{what} completed with {output:?}, not its input"
                    );
                    ensure!(m.accepted != Some(false), "{what} refused, then completed");
                }
                Err((reason, message)) => {
                    let ok = match reason {
                        Reason::Cancelled => true, // checked against the cancel
                        Reason::Timeout => m.timeout.is_some(),
                        Reason::Overload => m.accepted != Some(true),
                        Reason::ShuttingDown => shutdown,
                        // A crash since it was submitted, or refused at
                        // submit by a tripped breaker (crashes before).
                        Reason::Error => {
                            m.kind == Kind::Crash
                                || (m.retries > 0 && message.starts_with("poison job"))
                                || crashes > m.crashes_at_submit
                                || (crashes > 0 && m.accepted != Some(true))
                                || shutdown
                        }
                        Reason::Failed | Reason::UnknownModule => false,
                    };
                    ensure!(ok, "{what} failed {reason}: {message}");
                    ensure!(
                        !message.contains("lost with its agent")
                            || self.lost_running.contains(&job),
                        "{what} failed {reason}: {message}, but it ran on no lost agent"
                    );
                }
            }
            m.finals.push(fin);
        }
        Ok(())
    }

    fn by_tag(&self, tag: u64) -> Result<usize, String> {
        self.jobs
            .iter()
            .position(|m| m.tag == tag)
            .ok_or_else(|| format!("an answer for unknown tag {tag}"))
    }

    fn submit(
        &mut self,
        kind: Kind,
        timeout_ms: Option<u64>,
        later: bool,
        (priority, retries): (Priority, u32),
    ) {
        if self.shutdown && lock(&self.world).children.is_empty() {
            // The pool may have stopped: nobody would answer.
            return;
        }
        let job = self.jobs.len() as u64 + 1;
        let tag = 1000 + job;
        let ms = match kind {
            Kind::Sleep(ms) => ms,
            _ => 0,
        };
        let input = Bytes::from(format!("{tag}:{ms}"));
        let (ack, ack_rx) = if later {
            let (tx, rx) = oneshot::channel();
            (Some(Ack::Local(tx)), Some(rx))
        } else {
            (None, None)
        };
        self.pool.submit(Submission {
            module: kind.module().into(),
            input: input.clone(),
            options: SubmitOptions {
                detach: later,
                start_later: later,
                timeout_ms,
                priority,
                retries,
            },
            reply: Reply::Conn(ConnReply {
                tx: crate::job::Outbox::queue_only(self.tx.clone()),
                tag,
                context: Bytes::new(),
                permit: None,
                backlog: None,
            }),
            ack,
            waiter: None,
        });
        self.jobs.push(JobM {
            tag,
            kind,
            input,
            timeout: timeout_ms,
            later,
            retries,
            accepted: None,
            ack: ack_rx,
            finals: Vec::new(),
            crashes_at_submit: self.crashes,
            shutdown_at_submit: self.shutdown,
            cancel_ok: false,
            deaths: 0,
            rank: 0,
            finished: None,
        });
    }

    async fn step(&mut self, step: &Step) -> Res {
        match *step {
            Step::Submit {
                kind,
                timeout_ms,
                later,
                priority,
                retries,
            } => self.submit(kind, timeout_ms, later, (priority, retries)),
            Step::Timeout { kind, ms } => {
                self.submit(kind, Some(ms), false, (Priority::Normal, 0));
                self.settle().await;
                self.check().await?;
                tokio::time::sleep(Duration::from_millis(ms + 5)).await;
            }
            Step::Advance(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
            Step::Part(i) => {
                let w = lock(&self.world);
                let running: Vec<_> = w
                    .children
                    .values()
                    .filter(|c| c.running.is_some() && !c.dying)
                    .collect();
                if !running.is_empty() {
                    let _ = running[i % running.len()].poke.send(Poke::Part);
                }
            }
            Step::Crash(i) => {
                let w = lock(&self.world);
                let local: Vec<_> = w.children.values().filter(|c| c.agent.is_none()).collect();
                if !local.is_empty() {
                    let c = local[i % local.len()];
                    let _ = c.poke.send(Poke::Crash);
                    let starting = !c.ready;
                    let running = c.jobs.front().copied().filter(|_| !c.dying);
                    drop(w);
                    self.died_under(running);
                    self.crashes += 1;
                    self.local_crashes += 1;
                    self.startup_crashes += u64::from(starting);
                }
            }
            Step::AgentJoin(slots) => self.join_agent(slots),
            Step::AgentChildDies { i, crash } => {
                let w = lock(&self.world);
                let remote: Vec<_> = w.children.values().filter(|c| c.agent.is_some()).collect();
                if !remote.is_empty() {
                    let poke = if crash { Poke::Crash } else { Poke::Exit };
                    let c = remote[i % remote.len()];
                    let _ = c.poke.send(poke);
                    let running = c.jobs.front().copied().filter(|_| !c.dying);
                    drop(w);
                    self.died_under(running);
                    self.crashes += 1;
                }
            }
            Step::AgentLost(i) => self.lose_agent(i).await?,
            Step::AgentDrains(i) => {
                let mut w = lock(&self.world);
                let up: Vec<u64> = w
                    .agents
                    .iter()
                    .filter(|(_, a)| !a.lost && !a.draining)
                    .map(|(&link, _)| link)
                    .collect();
                if let Some(&link) = up.get(i % up.len().max(1)) {
                    let agent = w.agents.get_mut(&link).expect("an agent up");
                    agent.draining = true;
                    self.pool.agent_draining(link);
                    if agent.active == 0 {
                        // No child to wait for: it leaves at once.
                        agent.lost = true;
                        self.pool.agent_gone(link, CAUSE.into());
                    }
                }
            }
            Step::Cancel(i) => {
                if self.jobs.is_empty() {
                    return Ok(());
                }
                let job = (i % self.jobs.len()) as u64 + 1;
                self.drain()?;
                let Some(answer) = self.pool.op(Op::Cancel(job)).await else {
                    ensure!(self.shutdown, "the pool stopped without a shutdown");
                    return Ok(());
                };
                self.drain()?;
                let m = self.job(job)?;
                match answer.outcome {
                    Outcome::Ok => {
                        ensure!(
                            m.accepted == Some(true),
                            "cancel of refused job {job}: {answer:?}"
                        );
                        ensure!(
                            m.finals.len() == 1
                                && matches!(m.finals[0], Err((Reason::Cancelled, _))),
                            "cancel of job {job} said ok, its answers are {:?}",
                            m.finals
                        );
                        m.cancel_ok = true;
                    }
                    Outcome::Conflict => {
                        let finished =
                            matches!(&answer.body, Body::Ref(r) if r.status.is_finished());
                        ensure!(
                            finished && m.finals.len() == 1,
                            "cancel of job {job}: {answer:?} with answers {:?}",
                            m.finals
                        );
                    }
                    Outcome::NotFound => ensure!(
                        m.accepted == Some(false),
                        "cancel of accepted job {job}: not found"
                    ),
                    _ => return Err(format!("cancel of job {job}: {answer:?}")),
                }
            }
            Step::Start(i) => {
                let held: Vec<u64> = (1..=self.jobs.len() as u64)
                    .filter(|&j| self.jobs[j as usize - 1].later)
                    .collect();
                if held.is_empty() {
                    return Ok(());
                }
                let job = held[i % held.len()];
                self.drain()?;
                let before = self.job(job)?.finals.len();
                let Some(answer) = self.pool.op(Op::Start(job)).await else {
                    ensure!(self.shutdown, "the pool stopped without a shutdown");
                    return Ok(());
                };
                self.drain()?;
                let m = self.job(job)?;
                match (answer.outcome, &answer.body) {
                    (Outcome::Ok, Body::Ref(r)) if r.status == JobStatus::Queued => {
                        ensure!(
                            m.accepted == Some(true) && m.rank == 0,
                            "start of job {job} (accepted {:?}, rank {}) said ok",
                            m.accepted,
                            m.rank
                        );
                        m.rank = 1;
                    }
                    (Outcome::Failed, Body::Failure(f)) => {
                        ensure!(
                            matches!(
                                f.reason,
                                Reason::Overload | Reason::ShuttingDown | Reason::Error
                            ),
                            "start of job {job} refused: {answer:?}"
                        );
                        ensure!(
                            m.finals.len() == before && m.rank == 0,
                            "a refused start answered job {job} or it was not held"
                        );
                    }
                    (Outcome::Conflict, Body::Ref(r)) => ensure!(
                        r.status != JobStatus::StartLater && (m.rank > 0 || !m.finals.is_empty()),
                        "start of job {job}: {answer:?}"
                    ),
                    (Outcome::NotFound, _) => ensure!(
                        m.accepted == Some(false),
                        "start of accepted job {job}: not found"
                    ),
                    _ => return Err(format!("start of job {job}: {answer:?}")),
                }
            }
            Step::Restart => {
                let w = lock(&self.world);
                self.restart_mark = Some(w.max_id);
                // A child starting now belongs to the old generation: the
                // rolling restart retires it as soon as it is ready, so
                // the job admitted for it (as room) waits elsewhere, like
                // one admitted for a child that died starting.
                self.startup_crashes += w.children.values().filter(|c| !c.ready).count() as u64;
                drop(w);
                self.pool.restart();
            }
            Step::Shutdown => {
                self.shutdown = true;
                lock(&self.world).shutdown = true;
                self.pool.shutdown();
            }
        }
        Ok(())
    }

    /// The pool has stopped: it said so, and no child is left.
    fn check_stopped(&mut self) -> Res {
        ensure!(self.shutdown, "the pool stopped without a shutdown");
        ensure!(
            self.done.try_recv().is_ok() || self.stopped,
            "the pool stopped but did not say it was done"
        );
        let w = lock(&self.world);
        ensure!(
            w.children.is_empty(),
            "the pool stopped with children alive: {:?}",
            w.children.keys().collect::<Vec<_>>()
        );
        self.stopped = true;
        Ok(())
    }

    async fn check(&mut self) -> Res {
        self.drain()?;
        if self.stopped {
            return Ok(());
        }
        let finals_before: Vec<usize> = self.jobs.iter().map(|m| m.finals.len()).collect();
        let Some(stats) = self.pool.stats().await else {
            ensure!(
                self.shutdown,
                "the pool actor stopped without a shutdown (did it panic? see above)"
            );
            return self.check_stopped();
        };
        let Some(all) = self.list(None).await else {
            return self.check_stopped();
        };
        let all = all?;
        let mut by_status = HashMap::new();
        for s in JobStatus::ALL {
            let Some(list) = self.list(Some(s)).await else {
                return self.check_stopped();
            };
            by_status.insert(s, list?);
        }
        let mut viewed = BTreeMap::new();
        for job in 1..=self.jobs.len() as JobId {
            let Some(answer) = self.pool.op(Op::Status(job)).await else {
                return self.check_stopped();
            };
            match (answer.outcome, answer.body) {
                (Outcome::Ok, Body::View(v)) => {
                    viewed.insert(job, v.status);
                }
                (Outcome::NotFound, _) => {}
                (o, b) => return Err(format!("status of job {job}: {o:?} {b:?}")),
            }
        }
        self.drain()?;
        let now = Instant::now();
        let s = self.setup;

        // Each job in exactly one status, the same in every view.
        ensure!(
            all == viewed
                && by_status.values().map(BTreeMap::len).sum::<usize>() == all.len()
                && by_status
                    .iter()
                    .all(|(s, l)| l.iter().all(|(j, t)| t == s && all.get(j) == Some(s))),
            "job statuses disagree: list {all:?}, status {viewed:?}, per status {by_status:?}"
        );

        // Children against the fakes.
        let w = lock(&self.world);
        let p = &stats.pool;
        // Agents' children never count against pool-max.
        let local: Vec<_> = w
            .children
            .iter()
            .filter(|(_, c)| c.agent.is_none())
            .map(|(&id, _)| id)
            .collect();
        let stale = self
            .restart_mark
            .is_some_and(|mark| local.iter().any(|&id| id <= mark));
        let cap = s.pool_max + usize::from(stale);
        let ids: Vec<_> = w.children.keys().collect();
        ensure!(
            p.size == w.children.len(),
            "pool size {} but {} children alive {ids:?}",
            p.size,
            w.children.len()
        );
        ensure!(
            local.len() <= cap,
            "{} children of the master's ({local:?}) above pool-max {}{}",
            local.len(),
            s.pool_max,
            if stale {
                " + 1 (restart under way)"
            } else {
                ""
            }
        );
        ensure!(
            p.busy + p.idle + p.starting <= p.size,
            "busy {} + idle {} + starting {} > size {}",
            p.busy,
            p.idle,
            p.starting,
            p.size
        );
        // Nor against pool-start: without a start-up failure (a back-off,
        // the breaker), the pool keeps that many of its own.
        if !self.shutdown && stats.children.startup_failures == 0 {
            ensure!(
                local.len() >= s.pool_start,
                "{} children of the master's ({local:?}) below pool-start {}",
                local.len(),
                s.pool_start
            );
        }
        let not_ready = w.children.values().filter(|c| !c.ready).count();
        ensure!(
            p.starting == not_ready,
            "{} starting, but {not_ready} children not ready",
            p.starting
        );
        let free = w
            .children
            .values()
            .filter(|c| c.ready && !c.dying && c.jobs.is_empty())
            .count();
        ensure!(
            p.idle <= free,
            "{} idle, but only {free} children ready without a job",
            p.idle
        );
        ensure!(
            stats.children.spawned == w.launched && stats.children.exited == w.exited,
            "spawned {} exited {}, but {} launched {} exited",
            stats.children.spawned,
            stats.children.exited,
            w.launched,
            w.exited
        );
        ensure!(
            w.violations.is_empty(),
            "child protocol breached: {:?}",
            w.violations
        );

        // Agents: those joined and not lost, each with its children in the
        // pool (none of a lost agent's is left, so none can get a job).
        let agent_of = |c: &FakeChild| c.agent.map(|link| w.agents[&link].name.clone());
        let expected: Vec<_> = w
            .agents
            .iter()
            .filter(|(_, a)| !a.lost)
            .map(|(&link, a)| {
                let mine = w.children.values().filter(|c| c.agent == Some(link));
                let (mut children, mut busy) = (0, 0);
                for c in mine {
                    children += 1;
                    busy += usize::from(!c.jobs.is_empty());
                }
                (a.name.clone(), a.address.clone(), a.slots, children, busy)
            })
            .collect();
        let reported: Vec<_> = stats
            .agents
            .iter()
            .map(|a| {
                (
                    a.name.clone(),
                    a.address.clone(),
                    a.slots,
                    a.children,
                    a.busy,
                )
            })
            .collect();
        ensure!(
            reported == expected,
            "stats show agents (name, address, slots, children, busy) {reported:?}, the agents are {expected:?}"
        );
        let expected: BTreeMap<ChildId, Option<String>> = w
            .children
            .iter()
            .map(|(&id, c)| (id, agent_of(c)))
            .collect();
        let reported: BTreeMap<ChildId, Option<String>> =
            p.children.iter().map(|c| (c.id, c.agent.clone())).collect();
        ensure!(
            reported == expected,
            "stats show children (id, agent) {reported:?}, the fakes are {expected:?}"
        );
        for c in &p.children {
            if let Some(fake) = w.children.get(&c.id).filter(|f| f.agent.is_some()) {
                ensure!(
                    c.pid == Some(fake.pid),
                    "agent's child {} has pid {:?} in the stats, not {}",
                    c.id,
                    c.pid,
                    fake.pid
                );
            }
        }
        let held_on: Vec<_> = w
            .lost
            .iter()
            .filter(|(_, &closed)| !closed)
            .map(|(&id, _)| id)
            .collect();
        ensure!(
            held_on.is_empty(),
            "the pool still holds the orders channel of children {held_on:?} of lost agents"
        );

        // The queue. Admission counts a child on its way (starting, or
        // about to be spawned for this job) as room for one more job; when
        // that child dies before it is ready, or the spawn waits out a
        // back-off after deaths, the job stays queued above job-max until a
        // child is ready; a SIGHUP retires a child that is starting; a
        // retried job comes back without admission. Tolerated unless
        // `strict_queue`.
        let queue_cap = if self.strict_queue {
            s.job_max
        } else {
            // A retry puts its job back among the waiting without
            // admission (it was admitted once), like a requeue after a crash.
            s.job_max
                + self.startup_crashes as usize
                + usize::from(self.local_crashes > 0)
                + stats.jobs.retried as usize
        };
        ensure!(
            stats.queue.len <= queue_cap,
            "queue {} above job-max {} (stats {:?})",
            stats.queue.len,
            s.job_max,
            stats
        );
        let held: BTreeSet<JobId> = w
            .children
            .values()
            .flat_map(|c| c.jobs.iter().copied())
            .collect();
        let running: BTreeMap<JobId, Instant> = w
            .children
            .values()
            .filter(|c| !c.dying)
            .filter_map(|c| c.running)
            .collect();
        drop(w);
        if p.idle > 0 {
            let waiting: Vec<_> = all
                .iter()
                .filter(|(j, s)| **s == JobStatus::Queued && !held.contains(j))
                .collect();
            ensure!(
                waiting.is_empty(),
                "jobs {waiting:?} wait in the queue while {} children are idle",
                p.idle
            );
        }
        for (&job, s) in &all {
            if *s == JobStatus::Processing {
                ensure!(
                    held.contains(&job),
                    "job {job} is processing but no child holds it"
                );
            }
        }

        // Jobs against the model.
        let mut start_later = 0;
        for (j, m) in self.jobs.iter_mut().enumerate() {
            let job = j as JobId + 1;
            let status = all.get(&job).copied();
            if m.accepted.is_none() {
                m.accepted = Some(status.is_some());
                if let Some(mut ack) = m.ack.take() {
                    let a = ack
                        .try_recv()
                        .map_err(|e| format!("no ack for job {job}: {e}"))?;
                    let ok = a.outcome == Outcome::Ok;
                    ensure!(
                        ok == status.is_some(),
                        "job {job} acked {a:?} but its table status is {status:?}"
                    );
                    if let (true, Body::Ref(r)) = (ok, &a.body) {
                        ensure!(r.status == JobStatus::StartLater, "ack {a:?} of job {job}");
                    }
                }
                if status.is_none() {
                    ensure!(
                        finals_before[j] == 1,
                        "job {job} is not in the table and got no refusal"
                    );
                    if let Err((reason, _)) = &m.finals[0] {
                        ensure!(
                            matches!(reason, Reason::Overload | Reason::Error)
                                || (*reason == Reason::ShuttingDown && m.shutdown_at_submit),
                            "job {job} refused {reason}"
                        );
                    } else {
                        return Err(format!("job {job} refused with a completion"));
                    }
                }
            }
            if m.accepted == Some(false) {
                ensure!(status.is_none(), "refused job {job} in the table");
                continue;
            }
            let Some(status) = status else {
                return Err(format!("accepted job {job} not in the table"));
            };
            if status == JobStatus::StartLater {
                start_later += 1;
            }
            // A retried job goes from processing back to queued.
            let retried = m.retries > 0 && status == JobStatus::Queued && m.rank == 2;
            ensure!(
                rank(status) >= m.rank || retried,
                "job {job} went back to {status} (from rank {})",
                m.rank
            );
            m.rank = rank(status);
            if let Some(f) = m.finished {
                ensure!(f == status, "finished job {job} went from {f} to {status}");
            }
            if status.is_finished() {
                m.finished = Some(status);
                ensure!(
                    m.finals.len() == 1,
                    "job {job} is {status} with answers {:?}",
                    m.finals
                );
                let agrees = match &m.finals[0] {
                    Ok(_) => status == JobStatus::Completed,
                    Err((Reason::Cancelled, _)) => status == JobStatus::Cancelled,
                    Err(_) => status == JobStatus::Failed,
                };
                ensure!(agrees, "job {job} is {status}, answered {:?}", m.finals[0]);
            } else {
                ensure!(
                    finals_before[j] == 0,
                    "job {job} is {status} but was answered {:?}",
                    m.finals
                );
            }
            if let Some(Err((Reason::Cancelled, _))) = m.finals.first() {
                ensure!(m.cancel_ok, "job {job} cancelled, but no cancel said ok");
            }
            if let (Some(limit), Some(&since)) = (m.timeout, running.get(&job)) {
                let late = since + Duration::from_millis(limit + 2);
                ensure!(
                    now < late || status.is_finished(),
                    "job {job} still {status} {:?} after its {limit} ms limit",
                    now - since
                );
            }
        }
        ensure!(
            stats.jobs.start_later == start_later,
            "stats say {} start-later, the table {start_later}",
            stats.jobs.start_later
        );

        // Counters against the answers (bounded by those sent before the
        // stats and those read after).
        let count = |f: &dyn Fn(&Final) -> bool, upto: &[usize]| {
            self.jobs
                .iter()
                .zip(upto)
                .map(|(m, &n)| m.finals[..n].iter().filter(|r| f(r)).count() as u64)
                .sum::<u64>()
        };
        let after: Vec<usize> = self.jobs.iter().map(|m| m.finals.len()).collect();
        let is_ok = |r: &Final| r.is_ok();
        let is_cancelled = |r: &Final| matches!(r, Err((Reason::Cancelled, _)));
        let is_failed = |r: &Final| matches!(r, Err((reason, _)) if *reason != Reason::Cancelled);
        let j = &stats.jobs;
        for (name, n, f) in [
            ("completed", j.completed, &is_ok as &dyn Fn(&_) -> bool),
            ("cancelled", j.cancelled, &is_cancelled),
            ("failed", j.failed, &is_failed),
        ] {
            let (lo, hi) = (count(f, &finals_before), count(f, &after));
            ensure!(
                lo <= n && n <= hi,
                "stats count {n} {name}, the answers {lo}..={hi}"
            );
        }
        ensure!(
            j.submitted == self.jobs.len() as u64,
            "stats count {} submitted, the model {}",
            j.submitted,
            self.jobs.len()
        );
        Ok(())
    }

    /// The job list (every job, or those in one status); a job listed
    /// twice fails the case.
    async fn list(
        &self,
        status: Option<JobStatus>,
    ) -> Option<Result<BTreeMap<JobId, JobStatus>, String>> {
        let answer = self
            .pool
            .op(Op::List {
                limit: usize::MAX,
                status,
            })
            .await?;
        let Body::List(list) = answer.body else {
            panic!("a list answer: {answer:?}");
        };
        let mut jobs = BTreeMap::new();
        for v in list.jobs {
            let (_, job) = taskmaster_proto::jobs::parse_id(&v.id).expect("job id");
            if let Some(was) = jobs.insert(job, v.status) {
                return Some(Err(format!(
                    "job {job} listed twice ({was}, {}) in the {status:?} list",
                    v.status
                )));
            }
        }
        Some(Ok(jobs))
    }

    /// Shuts down (after letting running jobs end, if no step shut down)
    /// and waits for the pool to stop; then every submit must have exactly
    /// one answer.
    async fn finish(mut self) -> Res {
        if !self.shutdown {
            tokio::time::sleep(Duration::from_secs(2)).await;
            self.settle().await;
            self.check().await?;
            self.shutdown = true;
            lock(&self.world).shutdown = true;
            self.pool.shutdown();
        }
        let mut waited = Duration::ZERO;
        loop {
            self.settle().await;
            self.check().await?;
            if self.stopped {
                break;
            }
            let limit = Duration::from_millis(self.setup.grace_ms) + Duration::from_secs(10);
            ensure!(
                waited < limit,
                "the pool did not stop within {waited:?} of shutdown"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
            waited += Duration::from_millis(100);
        }
        ensure!(self.pool.stats().await.is_none(), "a stopped pool answered");
        self.settle().await;
        self.drain()?;
        for (j, m) in self.jobs.iter().enumerate() {
            ensure!(
                m.finals.len() == 1,
                "job {} ({:?}, accepted {:?}) has {} answers at the end",
                j + 1,
                m.kind,
                m.accepted,
                m.finals.len()
            );
        }
        Ok(())
    }
}

/// Runs one case on a fresh current-thread runtime with paused time.
fn run(setup: Setup, steps: &[Step]) -> Res {
    run_with(setup, steps, false)
}

fn run_with(setup: Setup, steps: &[Step], strict_queue: bool) -> Res {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("a runtime");
    rt.block_on(async {
        let mut case = Case::new(setup, strict_queue);
        if setup.agent_at_start > 0 {
            case.join_agent(setup.agent_at_start);
        }
        case.settle().await;
        case.check().await.map_err(|e| format!("at start: {e}"))?;
        for (i, step) in steps.iter().enumerate() {
            case.step(step)
                .await
                .map_err(|e| format!("step {i} {step:?}: {e}"))?;
            case.settle().await;
            case.check()
                .await
                .map_err(|e| format!("after step {i} {step:?}: {e}"))?;
        }
        case.finish().await.map_err(|e| format!("at the end: {e}"))
    })
}

// ----------------------------------------------------------- strategies --

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        4 => Just(Kind::Echo),
        4 => (1u64..400).prop_map(Kind::Sleep),
        1 => Just(Kind::Crash),
        1 => Just(Kind::Hang),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        30 => (
            kind(),
            prop::option::weighted(0.25, 20u64..1500),
            prop::bool::weighted(0.15),
            prop_oneof![Just(Priority::High), Just(Priority::Normal), Just(Priority::Low)],
            prop_oneof![6 => Just(0u32), 1 => 1u32..4, 1 => Just(10u32)],
        )
            .prop_map(|(kind, timeout_ms, later, priority, retries)| Step::Submit {
                kind,
                timeout_ms,
                later,
                priority,
                retries,
            }),
        4 => (kind(), 10u64..500).prop_map(|(kind, ms)| Step::Timeout { kind, ms }),
        16 => prop_oneof![4 => 1u64..500, 1 => 500u64..5000].prop_map(Step::Advance),
        4 => any::<usize>().prop_map(Step::Part),
        6 => any::<usize>().prop_map(Step::Crash),
        7 => any::<usize>().prop_map(Step::Cancel),
        5 => any::<usize>().prop_map(Step::Start),
        4 => Just(Step::Restart),
        1 => Just(Step::Shutdown),
        3 => (1u32..=3).prop_map(Step::AgentJoin),
        3 => (any::<usize>(), prop::bool::weighted(0.7))
            .prop_map(|(i, crash)| Step::AgentChildDies { i, crash }),
        2 => any::<usize>().prop_map(Step::AgentLost),
        1 => any::<usize>().prop_map(Step::AgentDrains),
    ]
}

fn setup() -> impl Strategy<Value = Setup> {
    // One case in 8 is a pure dispatcher (`pool-max` 0: only agents'
    // children), most of them with an agent from the start.
    prop_oneof![7 => 1usize..=3, 1 => Just(0usize)]
        .prop_flat_map(|max| {
            let none = if max == 0 { 1 } else { 4 };
            (
                0..=max.min(2),
                Just(max),
                prop_oneof![none => Just(0u32), 1 => 1u32..=3],
            )
        })
        .prop_flat_map(|(start, max, agent)| {
            (
                (Just(start), Just(max), Just(agent)),
                0usize..=4,
                0usize..=2,
                100u64..3000,
                500u64..4000,
                prop_oneof![3 => Just(0u64), 1 => 1u64..4],
                1u64..30,
            )
        })
        .prop_map(
            |(
                (pool_start, pool_max, agent_at_start),
                job_max,
                prefetch,
                grace_ms,
                idle_timeout_ms,
                jobs,
                exit,
            )| Setup {
                pool_start,
                pool_max,
                job_max,
                prefetch,
                grace_ms,
                idle_timeout_ms,
                max_jobs_per_child: jobs,
                exit_delay_ms: exit,
                agent_at_start,
            },
        )
}

fn proptest_config() -> ProptestConfig {
    let default = ProptestConfig::default();
    let cases = if std::env::var_os("PROPTEST_CASES").is_some() {
        default.cases
    } else {
        // A few thousand cases, as the hardening issue asks: about 20 s in
        // a debug build on 2 cores.
        2000
    };
    // The same cases on every run unless asked otherwise, so a landing
    // never depends on the draw; explore with `PROPTEST_RNG_SEED=$RANDOM`
    // (and `PROPTEST_CASES`): a failure found that way is kept in
    // master/proptest-regressions and replayed first on every run.
    let rng_seed = if std::env::var_os("PROPTEST_RNG_SEED").is_some() {
        default.rng_seed
    } else {
        proptest::test_runner::RngSeed::Fixed(0x7a5c_3a57_e2d0_0011)
    };
    ProptestConfig {
        cases,
        rng_seed,
        ..default
    }
}

proptest! {
    #![proptest_config(proptest_config())]

    /// Random operation sequences against the real pool actor.
    #[test]
    fn pool_model(setup in setup(), steps in prop::collection::vec(step(), 1..60)) {
        if let Err(e) = run(setup, &steps) {
            return Err(TestCaseError::fail(e));
        }
    }
}

// ----------------------------------------------- regressions found by it --

fn small(pool_start: usize, pool_max: usize) -> Setup {
    Setup {
        pool_start,
        pool_max,
        job_max: 1,
        prefetch: 1,
        grace_ms: 100,
        idle_timeout_ms: 60_000,
        max_jobs_per_child: 0,
        exit_delay_ms: 2,
        agent_at_start: 0,
    }
}

/// A second SIGHUP while the first one's fresh child is still starting
/// makes that child stale itself; with no other old child left to replace
/// (the old one died running a job) it is picked to retire the moment it is
/// ready, while its slot still says `Starting`: `starting` is counted down
/// twice (a panic in debug builds, a wrapped counter in release).
#[test]
fn second_sighup_while_the_fresh_child_starts() {
    let steps = [
        Step::Advance(10),
        Step::Restart,
        Step::Submit {
            kind: Kind::Crash,
            timeout_ms: None,
            later: false,
            priority: Priority::Normal,
            retries: 0,
        },
        Step::Restart,
        Step::Advance(10),
    ];
    if let Err(e) = run(small(1, 1), &steps) {
        panic!("{e}");
    }
}

/// A rolling restart retires an old child and spawns the next fresh one at
/// once, before the retired child has exited: `pool-max + 2` processes
/// (more when children are slow to exit), not `+ 1`.
#[test]
fn rolling_restart_stays_within_one_above_pool_max() {
    let steps = [Step::Advance(10), Step::Restart, Step::Advance(6)];
    if let Err(e) = run(small(2, 2), &steps) {
        panic!("{e}");
    }
}

/// Found by the model (8,000 cases): with `--job-max 0`, jobs admitted for
/// three starting children, one of which a SIGHUP restart retires as soon
/// as it is ready; the job admitted for it waits in another child's window
/// (it was the model's bound that was wrong, not the pool; also with every
/// job at one priority).
#[test]
fn a_child_retired_by_a_restart_as_it_starts_is_no_room() {
    for all_normal in [true, false] {
        let pri = |p: Priority| if all_normal { Priority::Normal } else { p };
        let sub = |kind: Kind, p: Priority| Step::Submit {
            kind,
            timeout_ms: None,
            later: false,
            priority: pri(p),
            retries: 0,
        };
        let setup = Setup {
            pool_start: 0,
            pool_max: 3,
            job_max: 0,
            prefetch: 2,
            grace_ms: 100,
            idle_timeout_ms: 500,
            max_jobs_per_child: 0,
            exit_delay_ms: 1,
            agent_at_start: 0,
        };
        let steps = [
            Step::Restart,
            Step::Start(16024986228087540346),
            Step::Crash(8361747200822262260),
            Step::Advance(156),
            sub(Kind::Sleep(188), Priority::Low),
            Step::Start(12776287374863531975),
            Step::Advance(242),
            sub(Kind::Hang, Priority::Normal),
            Step::Advance(1360),
            Step::Restart,
            Step::Cancel(8137954144760309307),
            Step::Restart,
            sub(Kind::Sleep(374), Priority::High),
            sub(Kind::Sleep(279), Priority::High),
            Step::Start(8251734919116457293),
            sub(Kind::Echo, Priority::High),
            sub(Kind::Sleep(387), Priority::Low),
            Step::Advance(170),
        ];
        if let Err(e) = run(setup, &steps) {
            panic!("all_normal {all_normal}: {e}");
        }
    }
}

/// A pure dispatcher (`pool-max` 0) with one agent of `slots` slots.
fn dispatcher(slots: u32, prefetch: usize) -> Setup {
    Setup {
        job_max: 4,
        prefetch,
        agent_at_start: slots,
        ..small(0, 0)
    }
}

fn submit(kind: Kind, retries: u32) -> Step {
    Step::Submit {
        kind,
        timeout_ms: None,
        later: false,
        priority: Priority::Normal,
        retries,
    }
}

/// Found by the model: a link reports its children lost one at a time
/// (then the agent gone), so while the pool handled the first, the others
/// still looked alive. A job retried off the first (`--retries 10`) was
/// sent to an idle sibling on the same dead link, then off that one to the
/// next: each hop counted as a child it killed, and after the third it was
/// quarantined as a "poison job" that never killed anything. (Now the first
/// lost exit takes all the agent's children out of dispatch.)
#[test]
fn a_job_retried_off_a_lost_agent_skips_its_other_children() {
    let steps = [
        submit(Kind::Sleep(10), 0), // to child 3
        submit(Kind::Sleep(15), 0), // to child 2
        submit(Kind::Hang, 10),     // to child 1
        Step::Advance(20),          // 2 and 3 idle
        Step::AgentLost(0),         // 1 reported first
    ];
    if let Err(e) = run(dispatcher(3, 1), &steps) {
        panic!("{e}");
    }
}

/// Found by the model: a job prefetched behind the running one on a lost
/// agent's child went back to the queue, but was sent at once to an idle
/// sibling on the same dead link, and failed `error` ("... was lost with
/// its agent (connection closed) while running the job") when that one's
/// loss was reported: a job that never started, without retries.
#[test]
fn a_job_prefetched_on_a_lost_agent_goes_back_to_the_queue() {
    let steps = [
        submit(Kind::Sleep(10), 0), // to child 2
        submit(Kind::Hang, 0),      // to child 1
        submit(Kind::Echo, 0),      // prefetched behind one of them
        submit(Kind::Echo, 0),      // behind the other
        Step::Advance(20),          // 2 idle, 1 hangs with an echo behind
        Step::AgentLost(0),         // 1 reported first
    ];
    if let Err(e) = run(dispatcher(2, 2), &steps) {
        panic!("{e}");
    }
}
