//! Unit tests of the pool actor with fake children (no processes, paused
//! time): dispatch, growth bounds, queue and overload, crash replacement,
//! start-up failure back-off, shutdown. Every job must get exactly one final
//! answer.

use crate::child::{ChildCtl, ExitInfo};
use crate::config::Config;
use crate::job::{ConnReply, Outgoing, Reply, Submission};
use crate::pool::{self, ChildEvent, ChildId, Launcher, PoolHandle};
use bytes::Bytes;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use taskmaster_proto::messages::ToClient;
use taskmaster_proto::{Reason, SECRET_LEN};
use tokio::sync::mpsc;

#[derive(Default)]
struct Fake {
    fail_start: AtomicBool,
    launched: AtomicUsize,
}

struct FakeLauncher(Arc<Fake>);

impl Launcher for FakeLauncher {
    fn launch(
        &self,
        id: ChildId,
        _secret: [u8; SECRET_LEN],
        ctl: mpsc::UnboundedReceiver<ChildCtl>,
        pool: PoolHandle,
    ) {
        self.0.launched.fetch_add(1, Ordering::SeqCst);
        let fail = self.0.fail_start.load(Ordering::SeqCst);
        tokio::spawn(fake_child(id, ctl, pool, fail));
    }
}

fn exited(code: Option<i32>, signal: Option<i32>) -> ChildEvent {
    ChildEvent::Exited(ExitInfo::Status {
        code,
        signal,
        killed_by_master: false,
    })
}

/// A child that runs `echo`, `pid` (its fake pid), `sleep` (tokio time)
/// and `crash`.
async fn fake_child(
    id: ChildId,
    mut ctl: mpsc::UnboundedReceiver<ChildCtl>,
    pool: PoolHandle,
    fail: bool,
) {
    if fail {
        pool.child_event(id, ChildEvent::Exited(ExitInfo::SpawnFailed("fake".into())));
        return;
    }
    pool.child_event(
        id,
        ChildEvent::Spawned {
            pid: 1000 + id as u32,
        },
    );
    tokio::time::sleep(Duration::from_millis(5)).await;
    let modules = ["echo", "pid", "sleep", "crash"].map(String::from).to_vec();
    pool.child_event(id, ChildEvent::Ready { modules });
    while let Some(cmd) = ctl.recv().await {
        match cmd {
            ChildCtl::Job {
                job, module, input, ..
            } => match module.as_str() {
                "echo" => pool.child_event(
                    id,
                    ChildEvent::Done {
                        job,
                        output: input,
                        retire: false,
                    },
                ),
                "pid" => pool.child_event(
                    id,
                    ChildEvent::Done {
                        job,
                        output: Bytes::from((1000 + id).to_string()),
                        retire: false,
                    },
                ),
                "sleep" => {
                    let ms: u64 = std::str::from_utf8(&input).unwrap().parse().unwrap();
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(ms)) => pool.child_event(id, ChildEvent::Done {
                            job,
                            output: Bytes::from((1000 + id).to_string()),
                            retire: false,
                        }),
                        _ = ctl.recv() => {
                            pool.child_event(id, exited(None, Some(9)));
                            return;
                        }
                    }
                }
                _ => {
                    pool.child_event(id, exited(None, Some(6)));
                    return;
                }
            },
            ChildCtl::Stop | ChildCtl::Kill | ChildCtl::Terminate => {
                pool.child_event(id, exited(Some(0), None));
                return;
            }
            ChildCtl::Attach { .. } => {}
        }
    }
}

struct Harness {
    pool: PoolHandle,
    fake: Arc<Fake>,
    done: tokio::sync::oneshot::Receiver<()>,
    tx: mpsc::UnboundedSender<Outgoing>,
    rx: mpsc::UnboundedReceiver<Outgoing>,
    next_tag: u64,
}

fn harness(pool_start: usize, pool_max: usize, job_max: usize) -> Harness {
    harness_with(pool_start, pool_max, job_max, 1)
}

fn harness_with(pool_start: usize, pool_max: usize, job_max: usize, prefetch: usize) -> Harness {
    let cfg = Config {
        pool_start,
        pool_max,
        agents: false,
        job_max,
        handler: "fake-handler".into(),
        exec_dir: None,
        state_dir: None,
        max_payload: 1 << 20,
        grace: Duration::from_secs(2),
        // 0: `auto`.
        prefetch: match prefetch {
            0 => crate::config::Prefetch::Auto,
            n => crate::config::Prefetch::Fixed(n),
        },
        spin: Duration::ZERO,
        job_timeout: None,
        keep_results: 100,
        result_ttl: Duration::from_secs(3600),
        keep_results_bytes: 1 << 20,
        max_jobs_per_child: 0,
        max_jobs_jitter: 0,
        max_child_rss: None,
        idle_timeout: Duration::from_secs(60),
        breaker_deaths: 3,
        breaker_window: Duration::from_secs(10),
        start_secs: Duration::from_secs(1),
        child_user: None,
        child_group: None,
        child_nofile: None,
        child_core_dumps: false,
        heartbeat: None,
        token: None,
        forget_answered: false,
        max_connections: 1024,
        max_handshakes: 64,
        max_in_flight: 4096,
        max_client_backlog: 1 << 26,
        client_window: 1 << 20,
        max_total_backlog: 1 << 28,
        client_idle_timeout: None,
    };
    let fake = Arc::new(Fake::default());
    let (pool, done) = pool::start(
        Arc::new(cfg),
        Arc::new(FakeLauncher(fake.clone())),
        Arc::new(crate::metrics::Metrics::new()),
        "0123456789ab".into(),
        None,
        None,
    );
    let (tx, rx) = mpsc::unbounded_channel();
    Harness {
        pool,
        fake,
        done,
        tx,
        rx,
        next_tag: 0,
    }
}

/// A final answer: tag, Ok(output) or Err(reason).
type Final = (u64, Result<Bytes, Reason>);

impl Harness {
    fn submit(&mut self, module: &str, input: &str) -> u64 {
        let s = self.submission(module, input);
        self.pool.submit(s);
        self.next_tag
    }

    /// A job answering to this harness, with the next tag.
    fn submission(&mut self, module: &str, input: &str) -> Submission {
        self.next_tag += 1;
        Submission {
            module: module.into(),
            input: Bytes::from(input.to_owned()),
            options: Default::default(),
            reply: Reply::Conn(ConnReply {
                tx: crate::job::Outbox::queue_only(self.tx.clone()),
                tag: self.next_tag,
                context: Bytes::new(),
                permit: None,
                backlog: None,
            }),
            ack: None,
            waiter: None,
        }
    }

    async fn next_final(&mut self) -> Final {
        loop {
            let out = tokio::time::timeout(Duration::from_secs(60), self.rx.recv())
                .await
                .expect("an answer within a minute")
                .expect("channel open");
            match out.msg {
                ToClient::Completed { tag, output, .. } => return (tag, Ok(output)),
                ToClient::Failed { tag, reason, .. } => return (tag, Err(reason)),
                _ => {}
            }
        }
    }

    async fn stats(&self) -> taskmaster_proto::Stats {
        self.pool.stats().await.expect("pool running")
    }

    async fn wait_for(&self, what: &str, cond: impl Fn(&taskmaster_proto::Stats) -> bool) {
        for _ in 0..10_000 {
            if cond(&self.stats().await) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("never reached: {what}; stats {:?}", self.stats().await);
    }
}

#[tokio::test(start_paused = true)]
async fn prespawns_and_answers() {
    let mut h = harness(2, 4, 10);
    h.wait_for("2 idle", |s| s.pool.idle == 2).await;
    assert_eq!(h.fake.launched.load(Ordering::SeqCst), 2);
    let tag = h.submit("echo", "hello");
    assert_eq!(h.next_final().await, (tag, Ok(Bytes::from("hello"))));
}

/// Submits handed over together (one read of a client's socket) are
/// admitted one by one, in order, as if sent apart.
#[tokio::test(start_paused = true)]
async fn submits_handed_over_together_are_admitted_in_order() {
    let mut h = harness(1, 1, 2);
    h.wait_for("ready", |s| s.pool.idle == 1).await;
    let batch: Vec<Submission> = (0..4).map(|_| h.submission("sleep", "10")).collect();
    h.pool.submit_many(batch);
    // One runs, two wait (job-max 2), the fourth is refused at once.
    assert_eq!(h.next_final().await, (4, Err(Reason::Overload)));
    for tag in 1..=3 {
        let (got, out) = h.next_final().await;
        assert_eq!(got, tag);
        assert!(out.is_ok(), "{out:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn grows_to_max_queues_then_overloads() {
    let mut h = harness(1, 2, 1);
    h.wait_for("ready", |s| s.pool.idle == 1).await;
    let a = h.submit("sleep", "1000");
    let b = h.submit("sleep", "1000");
    let c = h.submit("sleep", "1000");
    // Two running (one on a new child) and one queued: the fourth is refused
    // before any of them ends.
    let d = h.submit("sleep", "1000");
    assert_eq!(h.next_final().await, (d, Err(Reason::Overload)));
    h.wait_for("two running, one queued", |s| {
        s.pool.size == 2 && s.pool.busy == 2 && s.queue.len == 1
    })
    .await;
    let mut done: Vec<u64> = Vec::new();
    for _ in 0..3 {
        let (tag, res) = h.next_final().await;
        assert!(res.is_ok(), "job {tag} failed: {res:?}");
        done.push(tag);
    }
    done.sort();
    assert_eq!(done, vec![a, b, c]);
    assert_eq!(
        h.fake.launched.load(Ordering::SeqCst),
        2,
        "never past pool-max"
    );
}

#[tokio::test(start_paused = true)]
async fn crash_fails_error_and_is_replaced() {
    let mut h = harness(2, 2, 10);
    h.wait_for("ready", |s| s.pool.idle == 2).await;
    let tag = h.submit("crash", "");
    assert_eq!(h.next_final().await, (tag, Err(Reason::Error)));
    h.wait_for("back to 2 idle", |s| s.pool.idle == 2).await;
    assert_eq!(h.fake.launched.load(Ordering::SeqCst), 3);
    let tag = h.submit("echo", "x");
    assert_eq!(h.next_final().await, (tag, Ok(Bytes::from("x"))));
}

#[tokio::test(start_paused = true)]
async fn unknown_module_is_refused() {
    let mut h = harness(1, 1, 10);
    h.wait_for("ready", |s| s.pool.idle == 1).await;
    let tag = h.submit("nope", "");
    assert_eq!(h.next_final().await, (tag, Err(Reason::UnknownModule)));
}

#[tokio::test(start_paused = true)]
async fn startup_failures_back_off_fail_jobs_and_heal() {
    let mut h = harness(1, 1, 10);
    h.wait_for("ready", |s| s.pool.idle == 1).await;
    // From now on children fail to start; crash the good one.
    h.fake.fail_start.store(true, Ordering::SeqCst);
    let tag = h.submit("crash", "");
    assert_eq!(h.next_final().await, (tag, Err(Reason::Error)));
    h.wait_for("3 start-up failures", |s| s.children.startup_failures >= 3)
        .await;
    let tag = h.submit("echo", "x");
    assert_eq!(h.next_final().await, (tag, Err(Reason::Error)));
    // Back-off: over 10 s of (paused) time, far fewer than one spawn per ms.
    let before = h.fake.launched.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let spawned = h.fake.launched.load(Ordering::SeqCst) - before;
    assert!(spawned <= 4, "{spawned} spawns in 10 s while failing");
    h.fake.fail_start.store(false, Ordering::SeqCst);
    h.wait_for("healed", |s| s.pool.idle == 1).await;
    let tag = h.submit("echo", "y");
    assert_eq!(h.next_final().await, (tag, Ok(Bytes::from("y"))));
}

#[tokio::test(start_paused = true)]
async fn wrong_job_id_kills_child_and_fails_its_job() {
    let mut h = harness(1, 1, 10);
    h.wait_for("ready", |s| s.pool.idle == 1).await;
    let tag = h.submit("sleep", "5000");
    h.wait_for("busy", |s| s.pool.busy == 1).await;
    // Child 1 claims to finish a job it does not hold.
    h.pool.child_event(
        1,
        ChildEvent::Done {
            job: 999,
            output: Bytes::new(),
            retire: false,
        },
    );
    assert_eq!(h.next_final().await, (tag, Err(Reason::Error)));
    h.wait_for("replaced", |s| s.pool.idle == 1 && s.children.spawned == 2)
        .await;
}

#[tokio::test(start_paused = true)]
async fn shutdown_drains_running_refuses_queued_and_new() {
    let mut h = harness(1, 1, 10);
    h.wait_for("ready", |s| s.pool.idle == 1).await;
    let running = h.submit("sleep", "500");
    let queued = h.submit("echo", "q");
    h.wait_for("queued", |s| s.queue.len == 1).await;
    h.pool.shutdown();
    assert_eq!(h.next_final().await, (queued, Err(Reason::ShuttingDown)));
    let late = h.submit("echo", "late");
    assert_eq!(h.next_final().await, (late, Err(Reason::ShuttingDown)));
    let (tag, res) = h.next_final().await;
    assert_eq!(tag, running);
    assert!(res.is_ok());
    tokio::time::timeout(Duration::from_secs(10), &mut h.done)
        .await
        .expect("pool stops")
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn shutdown_grace_kills_long_jobs() {
    let mut h = harness(1, 1, 10);
    h.wait_for("ready", |s| s.pool.idle == 1).await;
    let tag = h.submit("sleep", "600000");
    h.wait_for("busy", |s| s.pool.busy == 1).await;
    h.pool.shutdown();
    assert_eq!(h.next_final().await, (tag, Err(Reason::Error)));
    tokio::time::timeout(Duration::from_secs(10), &mut h.done)
        .await
        .expect("pool stops")
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn prefetch_sends_jobs_to_busy_children_and_all_complete() {
    let mut h = harness_with(1, 1, 100, 4);
    h.wait_for("ready", |s| s.pool.idle == 1).await;
    let slow = h.submit("sleep", "100");
    let tags: Vec<u64> = (0..10).map(|i| h.submit("echo", &i.to_string())).collect();
    // One running, three prefetched, the rest queued; all count as waiting.
    h.wait_for("window full", |s| s.pool.busy == 1 && s.queue.len == 10)
        .await;
    assert_eq!(h.next_final().await.0, slow);
    for (i, tag) in tags.into_iter().enumerate() {
        assert_eq!(h.next_final().await, (tag, Ok(Bytes::from(i.to_string()))));
    }
    h.wait_for("idle again", |s| s.pool.idle == 1 && s.queue.len == 0)
        .await;
}

#[tokio::test(start_paused = true)]
async fn prefetched_jobs_of_a_crashed_child_run_elsewhere() {
    let mut h = harness_with(1, 1, 100, 3);
    h.wait_for("ready", |s| s.pool.idle == 1).await;
    let crash = h.submit("crash", "");
    let a = h.submit("echo", "a");
    let b = h.submit("echo", "b");
    assert_eq!(h.next_final().await, (crash, Err(Reason::Error)));
    assert_eq!(h.next_final().await, (a, Ok(Bytes::from("a"))));
    assert_eq!(h.next_final().await, (b, Ok(Bytes::from("b"))));
    let s = h.stats().await;
    assert_eq!(
        (s.jobs.completed, s.jobs.failed, s.children.spawned),
        (2, 1, 2)
    );
}

#[tokio::test(start_paused = true)]
async fn prefetch_counts_against_job_max() {
    let mut h = harness_with(1, 1, 2, 8);
    h.wait_for("ready", |s| s.pool.idle == 1).await;
    let _running = h.submit("sleep", "1000");
    let _a = h.submit("echo", "a");
    let _b = h.submit("echo", "b");
    let refused = h.submit("echo", "c");
    assert_eq!(h.next_final().await, (refused, Err(Reason::Overload)));
}

#[tokio::test(start_paused = true)]
async fn prefetch_never_holds_back_growth() {
    let mut h = harness_with(1, 3, 100, 8);
    h.wait_for("ready", |s| s.pool.idle == 1).await;
    let tags: Vec<u64> = (0..3).map(|_| h.submit("sleep", "1000")).collect();
    // Below pool-max, waiting jobs spawn children instead of being prefetched.
    h.wait_for("grown to 3, all busy", |s| {
        s.pool.size == 3 && s.pool.busy == 3
    })
    .await;
    for _ in tags {
        assert!(h.next_final().await.1.is_ok());
    }
    assert_eq!(h.fake.launched.load(Ordering::SeqCst), 3);
}

/// Under `auto`, quick jobs that arrive in one round join the write of the
/// child already sent one in that round instead of waking the idle child
/// (`Pool::coalesce`); a job never joins a slow job's window while a child
/// is idle.
#[tokio::test(start_paused = true)]
async fn auto_coalesces_quick_jobs_of_one_round_but_never_behind_a_slow_one() {
    let mut h = harness_with(2, 2, 100, 0);
    h.wait_for("2 idle", |s| s.pool.idle == 2).await;
    // Estimates first: `pid` quick, `sleep` slow.
    let warm = h.submit("pid", "");
    assert_eq!(h.next_final().await.0, warm);
    let slow = h.submit("sleep", "3000");
    h.wait_for("the sleep running", |s| s.pool.busy == 1).await;
    let (tag, res) = h.next_final().await;
    assert_eq!(tag, slow);
    assert!(res.is_ok());
    // One round: four quick jobs, all to one child.
    let tags: Vec<u64> = (0..4).map(|_| h.submit("pid", "")).collect();
    let mut pids = std::collections::BTreeSet::new();
    for _ in &tags {
        let (tag, res) = h.next_final().await;
        assert!(tags.contains(&tag));
        pids.insert(res.expect("pid answered"));
    }
    assert_eq!(pids.len(), 1, "one child took the round: {pids:?}");
    // One round: a slow job, then a quick one: the quick one goes to the
    // idle child, not behind the slow one.
    let slow = h.submit("sleep", "3000");
    let quick = h.submit("pid", "");
    let (tag, res) = h.next_final().await;
    assert_eq!(tag, quick, "the quick job answered first");
    let quick_pid = res.expect("pid answered");
    let (tag, res) = h.next_final().await;
    assert_eq!(tag, slow);
    assert_ne!(
        res.expect("sleep answered"),
        quick_pid,
        "not behind the sleep"
    );
}

/// Coalescing never holds back growth: below `pool-max`, with no child
/// idle, a quick job waits for a new child instead of joining the busy
/// one's write.
#[tokio::test(start_paused = true)]
async fn auto_coalescing_never_holds_back_growth() {
    let mut h = harness_with(1, 3, 100, 0);
    h.wait_for("ready", |s| s.pool.idle == 1).await;
    let warm = h.submit("pid", "");
    assert_eq!(h.next_final().await.0, warm);
    // One round: the first job takes the idle child, the others spawn.
    let tags: Vec<u64> = (0..3).map(|_| h.submit("pid", "")).collect();
    for _ in &tags {
        assert!(h.next_final().await.1.is_ok());
    }
    assert_eq!(
        h.fake.launched.load(Ordering::SeqCst),
        3,
        "grew to pool-max"
    );
}
