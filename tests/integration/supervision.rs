//! Supervision under faults (SPEC section 10): job time limits, recycling
//! by job count and memory, idle shrink, the crash-loop breaker, graceful
//! drain, SIGHUP rolling restart under load, lifecycle events (SSE and
//! CLI), and a chaos run with children killed at random.

use bytes::Bytes;
use nix::sys::signal::Signal;
use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};
use taskmaster_proto::codec;
use taskmaster_proto::messages::{ClientHello, Hello, ToClient, ToMaster};
use taskmaster_proto::{SubmitOptions, PROTOCOL_VERSION};
use taskmaster_tests::{
    bin, children_of, children_with_state, http, pid_alive, vm_rss_kib, wait_stats, wait_until,
    wait_until_async, Client, ClientError, Master, Reason, Stats,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

fn job_failure<T: std::fmt::Debug>(r: Result<T, ClientError>) -> taskmaster_proto::JobFailure {
    match r {
        Err(ClientError::Job(f)) => f,
        other => panic!("expected a job failure, got {other:?}"),
    }
}

/// A master running the test handler (standard modules + `stubborn`,
/// `grow`, `panic`), its pool ready.
fn test_handler_master(args: &[&str]) -> Master {
    let master = Master::start_with(args, &bin("taskmaster-test-handler"));
    master.wait_log("pool ready", Duration::from_secs(10));
    master
}

fn pid_of(output: &[u8]) -> u32 {
    std::str::from_utf8(output)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not a pid: {:?}", String::from_utf8_lossy(output)))
}

fn timeout_ms(ms: u64) -> SubmitOptions {
    SubmitOptions {
        timeout_ms: Some(ms),
        ..SubmitOptions::default()
    }
}

/// Whether process `pid` has an established TCP connection to `port` on
/// the loopback (its socket fds matched against `/proc/PID/net/tcp`).
fn connected_to(pid: u32, port: u16) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    let inodes: HashSet<String> = fds
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|target| {
            let t = target.to_string_lossy().into_owned();
            t.strip_prefix("socket:[")
                .and_then(|s| s.strip_suffix(']'))
                .map(str::to_owned)
        })
        .collect();
    let Ok(table) = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")) else {
        return false;
    };
    table.lines().skip(1).any(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        f.len() > 9
            && f[3] == "01"
            && f[2].rsplit(':').next() == Some(&format!("{port:04X}"))
            && inodes.contains(f[9])
    })
}

fn master_port(master: &Master) -> u16 {
    master
        .addr
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port in the master's address")
}

// 1. Per-job time limit.

#[tokio::test]
async fn job_past_its_timeout_fails_timeout_and_its_child_is_replaced() {
    let mut master = Master::ready(&[
        "--pool-start",
        "1",
        "--pool-max",
        "1",
        "--job-timeout",
        "0.5",
    ]);
    let before = master.children();
    assert_eq!(before.len(), 1);
    let client = master.client().await;
    let submitted = Instant::now();
    let f = job_failure(client.do_task("sleep", "5000").await);
    let took = submitted.elapsed();
    assert_eq!(f.reason, Reason::Timeout, "message: {}", f.message);
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_millis(1000),
        "failed after {took:?}, not within 0.5 s of the 0.5 s limit"
    );
    assert!(
        f.message.contains("time limit") && f.message.contains(&before[0].to_string()),
        "message names the limit and the child: {}",
        f.message
    );
    wait_until(
        "the timed-out child is gone",
        Duration::from_secs(2),
        || !pid_alive(before[0]),
    );
    wait_stats(&client, "a replacement child ready", |s| {
        s.pool.size == 1 && s.pool.idle == 1 && s.children.spawned == 2
    })
    .await;
    let after = master.children();
    assert_eq!(after.len(), 1);
    assert_ne!(after, before, "the child was replaced");
    let pid = client.do_task("pid", "").await.unwrap();
    assert_eq!(pid_of(&pid), after[0], "the replacement serves");
    eprintln!("timeout answered after {took:?} (limit 500 ms)");
}

#[tokio::test]
async fn queue_wait_does_not_count_toward_the_timeout() {
    let master = Master::ready(&["--pool-start", "1", "--pool-max", "1"]);
    let client = master.client().await;
    let a = client.submit("sleep", "800", Bytes::new()).unwrap();
    wait_stats(&client, "job A running", |s| s.pool.busy == 1).await;
    let queued_at = Instant::now();
    let b = client
        .submit_with("sleep", "100", Bytes::new(), timeout_ms(500))
        .unwrap();
    let a = a.finish().await.expect("A completes");
    let b = b
        .finish()
        .await
        .expect("B completes: its 0.5 s limit counts from its start");
    let waited = queued_at.elapsed();
    assert!(
        waited >= Duration::from_millis(700),
        "B spent {waited:?} in all, so it did wait behind A"
    );
    assert_eq!(a.output, b.output, "both ran on the only child");
    // The per-submit limit is in force: the same limit on a job that runs
    // longer fails it.
    let started = Instant::now();
    let c = job_failure(
        client
            .submit_with("sleep", "800", Bytes::new(), timeout_ms(500))
            .unwrap()
            .finish()
            .await,
    );
    assert_eq!(c.reason, Reason::Timeout);
    assert!(started.elapsed() < Duration::from_millis(1000));
}

#[tokio::test]
async fn a_child_that_ignores_sigterm_is_still_killed() {
    let mut master = test_handler_master(&["--pool-start", "1", "--pool-max", "1"]);
    let before = master.children();
    assert_eq!(before.len(), 1);
    let client = master.client().await;
    let submitted = Instant::now();
    let f = job_failure(
        client
            .submit_with("stubborn", "10000", Bytes::new(), timeout_ms(300))
            .unwrap()
            .finish()
            .await,
    );
    let answered = Instant::now();
    assert_eq!(f.reason, Reason::Timeout, "message: {}", f.message);
    assert!(
        answered - submitted < Duration::from_millis(800),
        "the job fails at its limit, not when the child is gone: {:?}",
        answered - submitted
    );
    wait_until("the stubborn child is gone", Duration::from_secs(2), || {
        !pid_alive(before[0])
    });
    let gone = answered.elapsed();
    // It outlived the SIGTERM (it ignores it) until the SIGKILL.
    assert!(
        gone >= Duration::from_millis(300),
        "gone {gone:?} after the answer: did it really ignore SIGTERM?"
    );
    master.wait_log("child ignored SIGTERM; killing it", Duration::from_secs(2));
    wait_stats(&client, "a replacement child ready", |s| {
        s.pool.idle == 1 && s.children.spawned == 2
    })
    .await;
    let after = master.children();
    assert_eq!(after.len(), 1);
    assert_ne!(after, before);
    eprintln!("stubborn child gone {gone:?} after its job failed `timeout`");
}

// 2. Recycling.

#[tokio::test]
async fn max_jobs_per_child_gives_exactly_that_many_jobs_per_pid() {
    let mut master = Master::ready(&[
        "--pool-start",
        "1",
        "--pool-max",
        "1",
        "--max-jobs-per-child",
        "3",
    ]);
    let client = master.client().await;
    let mut order = Vec::new();
    for _ in 0..12 {
        order.push(pid_of(&client.do_task("pid", "").await.unwrap()));
    }
    let mut per_pid: HashMap<u32, usize> = HashMap::new();
    for pid in &order {
        *per_pid.entry(*pid).or_default() += 1;
    }
    assert_eq!(per_pid.len(), 4, "pids in order: {order:?}");
    assert!(
        per_pid.values().all(|&n| n == 3),
        "each pid runs exactly 3 jobs: {order:?}"
    );
    // Consecutive: a child runs its 3 jobs, then the next one takes over.
    for chunk in order.chunks(3) {
        assert!(chunk.iter().all(|p| *p == chunk[0]), "{order:?}");
    }
    // The three retired children are gone; the last one will retire after
    // its next job.
    let last = order[11];
    wait_until("retired children gone", Duration::from_secs(5), || {
        order.iter().filter(|&&p| p != last).all(|&p| !pid_alive(p))
    });
    wait_stats(&client, "a fresh child ready", |s| s.pool.idle == 1).await;
    assert_eq!(master.children().len(), 1);
}

#[tokio::test]
async fn max_child_rss_retires_a_child_that_grew_and_spares_a_small_one() {
    let mut master = test_handler_master(&[
        "--pool-start",
        "1",
        "--pool-max",
        "1",
        "--max-child-rss",
        "50",
    ]);
    let client = master.client().await;
    let small = master.children()[0];
    for _ in 0..3 {
        let pid = pid_of(&client.do_task("pid", "").await.unwrap());
        assert_eq!(pid, small, "a small child is not retired");
    }
    let rss = vm_rss_kib(small);
    assert!(rss < 50 * 1024, "the handler starts small: {rss} KiB");
    let grew = pid_of(&client.do_task("grow", "80").await.expect("grow completes"));
    assert_eq!(grew, small);
    wait_until(
        "the child that grew is retired",
        Duration::from_secs(5),
        || !pid_alive(grew),
    );
    master.wait_log(
        "resident memory above --max-child-rss",
        Duration::from_secs(1),
    );
    wait_stats(&client, "a fresh child ready", |s| {
        s.pool.idle == 1 && s.children.spawned == 2
    })
    .await;
    let fresh = master.children();
    assert_eq!(fresh.len(), 1);
    assert_ne!(fresh[0], grew);
    for _ in 0..3 {
        let pid = pid_of(&client.do_task("pid", "").await.unwrap());
        assert_eq!(pid, fresh[0], "the fresh (small) child stays");
    }
    // Growing a little stays under the limit: no retirement.
    assert_eq!(
        pid_of(&client.do_task("grow", "10").await.unwrap()),
        fresh[0]
    );
    assert_eq!(pid_of(&client.do_task("pid", "").await.unwrap()), fresh[0]);
    assert_eq!(client.stats().await.unwrap().children.spawned, 2);
}

// 3. Idle shrink.

#[tokio::test]
async fn idle_children_above_pool_start_are_stopped() {
    let mut master = Master::ready(&[
        "--pool-start",
        "1",
        "--pool-max",
        "3",
        "--idle-timeout",
        "1",
    ]);
    let client = master.client().await;
    let jobs: Vec<_> = (0..3)
        .map(|_| client.submit("sleep", "300", Bytes::new()).unwrap())
        .collect();
    let mut pids = HashSet::new();
    for job in jobs {
        pids.insert(pid_of(&job.finish().await.unwrap().output));
    }
    let ended = Instant::now();
    assert_eq!(pids.len(), 3, "the pool grew to 3: {pids:?}");
    let stats = client.stats().await.unwrap();
    assert_eq!(stats.pool.size, 3, "not shrunk at once: {stats:?}");
    let stats = wait_stats(&client, "back to pool-start", |s| {
        s.pool.size == 1 && s.pool.idle == 1
    })
    .await;
    let shrunk = ended.elapsed();
    assert!(
        shrunk >= Duration::from_millis(900),
        "shrunk after {shrunk:?}, before --idle-timeout 1"
    );
    assert_eq!(stats.children.spawned, 3, "no replacement spawned");
    let left = master.children();
    assert_eq!(left.len(), 1);
    assert!(pids.contains(&left[0]));
    wait_until("stopped children gone", Duration::from_secs(2), || {
        pids.iter()
            .filter(|&&p| p != left[0])
            .all(|&p| !pid_alive(p))
    });
    eprintln!("pool back to pool-start {shrunk:?} after the last job");
}

#[tokio::test]
async fn idle_shrink_never_stops_a_busy_child() {
    let mut master = Master::ready(&[
        "--pool-start",
        "1",
        "--pool-max",
        "3",
        "--idle-timeout",
        "1",
    ]);
    let client = master.client().await;
    let long = client.submit("sleep", "3000", Bytes::new()).unwrap();
    wait_stats(&client, "the long job running", |s| s.pool.busy == 1).await;
    let short: Vec<_> = (0..2)
        .map(|_| client.submit("sleep", "300", Bytes::new()).unwrap())
        .collect();
    for job in short {
        job.finish().await.unwrap();
    }
    assert_eq!(client.stats().await.unwrap().pool.size, 3);
    // The two idle ones go while the long job still runs.
    wait_stats(&client, "shrunk to the busy child", |s| {
        s.pool.size == 1 && s.pool.busy == 1
    })
    .await;
    let left = master.children();
    assert_eq!(left.len(), 1);
    let done = long.finish().await.expect("the long job completes");
    assert_eq!(pid_of(&done.output), left[0], "the busy child survived");
    assert!(pid_alive(left[0]));
    let stats = client.stats().await.unwrap();
    assert_eq!((stats.pool.size, stats.pool.idle), (1, 1));
    assert_eq!(stats.jobs.failed, 0);
}

// 4. Crash-loop breaker.

/// Writes an executable script atomically (a new file renamed over the
/// old), so a spawn never sees it half-written or open for writing.
pub(crate) fn write_script(path: &Path, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, body).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test]
async fn crash_loop_breaker_trips_reports_and_heals_by_itself() {
    let dir = std::env::temp_dir().join(format!("taskmaster-breaker-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("handler.sh");
    write_script(&script, "#!/bin/sh\nexec /bin/false\n");
    let started = Instant::now();
    let master = Master::start_with(
        &[
            "--pool-start",
            "1",
            "--pool-max",
            "2",
            "--breaker-deaths",
            "3",
            "--breaker-window",
            "10",
            "--http",
            "127.0.0.1:0",
        ],
        &script,
    );
    let tripped = master.wait_log("crash-loop breaker tripped", Duration::from_secs(5));
    assert!(tripped.contains("deaths=3"), "{tripped}");
    let client = master.client().await;

    let asked = Instant::now();
    let f = job_failure(client.do_task("echo", "x").await);
    assert!(
        asked.elapsed() < Duration::from_millis(500),
        "failed at once, not after a wait: {:?}",
        asked.elapsed()
    );
    assert_eq!(f.reason, Reason::Error);
    let path = script.display().to_string();
    assert!(
        f.message.contains(&path) && f.message.contains("exited with code 1"),
        "message names the handler and the cause: {}",
        f.message
    );
    let health = http("GET", &master.url("/healthz"), "").await;
    assert_eq!(health.status, 503, "{}", health.text());
    let body = health.json();
    assert_eq!(body["status"], "broken", "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| m.contains(&path)),
        "{body}"
    );

    // No spinning: 3 deaths and at most one probe in the first 3 s.
    tokio::time::sleep_until((started + Duration::from_secs(3)).into()).await;
    let stats = client.stats().await.unwrap();
    assert!(stats.children.startup_failures >= 3, "{stats:?}");
    assert!(
        stats.children.spawned <= 4,
        "spawned {} children in 3 s",
        stats.children.spawned
    );
    assert_eq!(stats.queue.len, 0, "nothing queued while broken");
    let spawned_broken = stats.children.spawned;

    // Fix the handler: the pool heals by itself.
    let real = bin("taskmaster-test-handler");
    write_script(
        &script,
        &format!("#!/bin/sh\nexec '{}' \"$@\"\n", real.display()),
    );
    let fixed = Instant::now();
    wait_until_async("a job completes again", Duration::from_secs(12), || async {
        matches!(client.do_task("echo", "back").await, Ok(b) if b == "back")
    })
    .await;
    let healed = fixed.elapsed();
    master.wait_log("breaker cleared", Duration::from_secs(1));
    let health = http("GET", &master.url("/healthz"), "").await;
    assert_eq!(health.status, 200, "{}", health.text());
    assert_eq!(health.json()["status"], "ok");
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!("breaker: {spawned_broken} spawns in the first 3 s; healed {healed:?} after the fix");
}

// 5. Graceful drain.

#[tokio::test]
async fn drain_finishes_running_jobs_fails_queued_ones_and_refuses_new_ones() {
    let mut master = Master::ready(&["--pool-start", "2", "--pool-max", "2"]);
    let children = master.children();
    assert_eq!(children.len(), 2);
    let client = master.client().await;
    let running: Vec<_> = (0..2)
        .map(|_| client.submit("sleep", "1000", Bytes::new()).unwrap())
        .collect();
    wait_stats(&client, "2 jobs running", |s| s.pool.busy == 2).await;
    let queued: Vec<_> = (0..2)
        .map(|_| client.submit("echo", "queued", Bytes::new()).unwrap())
        .collect();
    wait_stats(&client, "2 jobs queued", |s| s.queue.len == 2).await;

    master.signal(Signal::SIGTERM);
    let signalled = Instant::now();
    master.wait_log("shutting down", Duration::from_secs(5));
    for job in queued {
        let f = job_failure(job.finish().await);
        assert_eq!(f.reason, Reason::ShuttingDown, "{}", f.message);
    }
    assert!(
        signalled.elapsed() < Duration::from_millis(800),
        "queued jobs fail at once, not after the running ones"
    );
    // New submits: on the open connection and on a new one (the listener
    // stays open during the drain).
    let f = job_failure(client.do_task("echo", "late").await);
    assert_eq!(f.reason, Reason::ShuttingDown);
    let late = Client::connect(master.addr.as_str(), None)
        .await
        .expect("the listener stays open while draining");
    let f = job_failure(late.do_task("echo", "later").await);
    assert_eq!(f.reason, Reason::ShuttingDown);

    let mut served = HashSet::new();
    for job in running {
        let done = job.finish().await.expect("running jobs complete");
        served.insert(pid_of(&done.output));
    }
    assert_eq!(served, children.iter().copied().collect::<HashSet<_>>());
    assert_eq!(master.wait_exit(Duration::from_secs(10)).code(), Some(0));
    for pid in children {
        assert!(!pid_alive(pid), "child {pid} outlived the master");
    }
    assert!(children_of(master.pid).is_empty());
    // (A second SIGTERM stopping at once: faults::second_sigterm_stops_at_once.)
}

// 6. SIGHUP rolling restart under load.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_under_load_replaces_every_child_without_failing_a_job() {
    let mut master = Master::ready(&["--pool-start", "2", "--pool-max", "2"]);
    let original = master.children();
    assert_eq!(original.len(), 2);
    let client = Arc::new(master.client().await);
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(Mutex::new(HashSet::<u32>::new()));
    let done = Arc::new(AtomicU64::new(0));

    let mut workers = Vec::new();
    for w in 0..4 {
        let (client, stop, served, done) =
            (client.clone(), stop.clone(), served.clone(), done.clone());
        workers.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let payload = format!("worker {w} job {n}");
                match client.do_task("echo", payload.clone()).await {
                    Ok(out) if out == payload.as_bytes() => {}
                    other => failures.push(format!("echo: {other:?}")),
                }
                match client.do_task("sleep", "20").await {
                    Ok(out) => {
                        served.lock().unwrap().insert(pid_of(&out));
                    }
                    Err(e) => failures.push(format!("sleep: {e}")),
                }
                n += 2;
                done.fetch_add(2, Ordering::Relaxed);
            }
            (n, failures)
        }));
    }
    // The sampler: ready children (idle + busy) never below pool-start.
    let sampler = {
        let (client, stop) = (client.clone(), stop.clone());
        tokio::spawn(async move {
            let mut low: Vec<Stats> = Vec::new();
            let mut samples = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let s = client.stats().await.expect("stats");
                samples += 1;
                if s.pool.idle + s.pool.busy < 2 {
                    low.push(s);
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            (samples, low)
        })
    };

    wait_until_async("load running", Duration::from_secs(10), || async {
        done.load(Ordering::Relaxed) >= 40
    })
    .await;
    // Three rolling restarts in a row, each one replacing every pid.
    let mut old = original.clone();
    let mut rounds = Vec::new();
    for _ in 0..3 {
        master.signal(Signal::SIGHUP);
        let hup = Instant::now();
        let at_hup = done.load(Ordering::Relaxed);
        // Async waits: the load runs on this runtime meanwhile.
        wait_until_async("every old child replaced", Duration::from_secs(15), || {
            std::future::ready(old.iter().all(|&p| !pid_alive(p)))
        })
        .await;
        let replaced = hup.elapsed();
        let mut fresh = Vec::new();
        wait_until_async("2 fresh children", Duration::from_secs(5), || {
            fresh = children_of(master.pid);
            std::future::ready(fresh.len() == 2 && fresh.iter().all(|p| !old.contains(p)))
        })
        .await;
        // Both fresh children serve the load.
        wait_until_async("both fresh children serve", Duration::from_secs(10), || {
            let s = served.lock().unwrap();
            std::future::ready(fresh.iter().all(|p| s.contains(p)))
        })
        .await;
        rounds.push((replaced, done.load(Ordering::Relaxed) - at_hup));
        old = fresh;
    }
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    let mut failures = Vec::new();
    for w in workers {
        let (n, f) = w.await.unwrap();
        total += n;
        failures.extend(f);
    }
    let (samples, low) = sampler.await.unwrap();
    // Every restart logs its end, also when the last old child was busy.
    let done_logged = master
        .log()
        .iter()
        .filter(|l| l.contains("rolling restart done"))
        .count();
    let stats = client.stats().await.unwrap();
    eprintln!(
        "SIGHUP x3: {total} jobs; (every child replaced after, jobs done until both fresh \
         ones served): {rounds:?}; {samples} stats samples, {} below pool-start; \
         \"rolling restart done\" logged: {done_logged}",
        low.len()
    );
    assert!(failures.is_empty(), "failed jobs: {failures:?}");
    assert_eq!(done_logged, 3, "one \"rolling restart done\" per SIGHUP");
    assert_eq!(stats.jobs.failed, 0, "{stats:?}");
    assert_eq!(stats.jobs.completed, total);
    assert!(
        low.is_empty(),
        "ready children dropped below pool-start: {:?}",
        low.iter().map(|s| &s.pool).collect::<Vec<_>>()
    );
}

// 7. Lifecycle events.

/// A server-sent-events stream read over a raw HTTP/1.1 connection.
struct Sse {
    reader: tokio::io::BufReader<tokio::net::TcpStream>,
    chunked: bool,
    buf: Vec<u8>,
}

impl Sse {
    /// Sends the request and reads the head: once it is here the master has
    /// subscribed.
    async fn open(addr: &str, path: &str) -> Sse {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut reader = tokio::io::BufReader::new(stream);
        let mut status = String::new();
        reader.read_line(&mut status).await.unwrap();
        assert!(
            status.starts_with("HTTP/1.1 200"),
            "status line: {status:?}"
        );
        let mut chunked = false;
        let mut event_stream = false;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).await.unwrap();
            let line = line.trim_end().to_ascii_lowercase();
            if line.is_empty() {
                break;
            }
            chunked |= line == "transfer-encoding: chunked";
            event_stream |= line.starts_with("content-type: text/event-stream");
        }
        assert!(event_stream, "not an event stream");
        Sse {
            reader,
            chunked,
            buf: Vec::new(),
        }
    }

    /// The next line of the body.
    async fn line(&mut self) -> String {
        loop {
            if let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                return String::from_utf8_lossy(&line)
                    .trim_end_matches(['\r', '\n'])
                    .to_owned();
            }
            if self.chunked {
                let mut size = String::new();
                self.reader.read_line(&mut size).await.unwrap();
                let size = usize::from_str_radix(size.trim(), 16)
                    .unwrap_or_else(|_| panic!("bad chunk size {size:?}"));
                assert!(size > 0, "the event stream ended");
                let mut chunk = vec![0; size + 2];
                self.reader.read_exact(&mut chunk).await.unwrap();
                chunk.truncate(size);
                self.buf.extend_from_slice(&chunk);
            } else {
                let mut more = [0u8; 4096];
                let n = self.reader.read(&mut more).await.unwrap();
                assert!(n > 0, "the event stream ended");
                self.buf.extend_from_slice(&more[..n]);
            }
        }
    }

    /// The next event (name and JSON), skipping comments; fails after 5 s.
    async fn event(&mut self) -> (String, serde_json::Value) {
        let read = async {
            let (mut name, mut data) = (None, None);
            loop {
                let line = self.line().await;
                if line.is_empty() {
                    if let (Some(name), Some(data)) = (name.take(), data.take()) {
                        return (name, data);
                    }
                } else if let Some(n) = line.strip_prefix("event:") {
                    name = Some(n.trim().to_owned());
                } else if let Some(d) = line.strip_prefix("data:") {
                    data = Some(serde_json::from_str(d.trim()).unwrap());
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(5), read)
            .await
            .expect("an event within 5 s")
    }
}

const LIFECYCLE: [&str; 3] = ["job-queued", "job-started", "job-completed"];

/// The number the master will give the next job submitted.
async fn next_job_number(client: &Client) -> u64 {
    client.stats().await.unwrap().jobs.submitted + 1
}

#[tokio::test]
async fn sse_stream_shows_a_jobs_events_in_order() {
    let master = Master::ready_http(&["--pool-start", "1", "--pool-max", "1"]);
    let client = master.client().await;
    // An unrelated job first (the stream must skip its events), then ours.
    let ours = format!(
        "{}-{}",
        client.instance(),
        next_job_number(&client).await + 1
    );
    let mut sse = Sse::open(
        master.http_addr.as_deref().unwrap(),
        &format!("/events?job={ours}"),
    )
    .await;
    let first = client.do_task("echo", "not ours").await.unwrap();
    assert_eq!(first, "not ours");
    let done = client
        .submit("echo", "ours", Bytes::new())
        .unwrap()
        .finish()
        .await
        .unwrap();
    assert_eq!(done.id, ours, "the predicted id");
    let pid = master_children_pid(&master);
    for expected in LIFECYCLE {
        let (name, data) = sse.event().await;
        assert_eq!(name, expected, "{data}");
        assert_eq!(data["job"], ours.as_str(), "{data}");
        assert_eq!(data["module"], "echo", "{data}");
        assert!(
            data["time"].as_str().is_some_and(|t| t.ends_with('Z')),
            "{data}"
        );
        if name != "job-queued" {
            assert_eq!(data["pid"], pid, "{data}");
        }
    }
}

fn master_children_pid(master: &Master) -> u32 {
    let kids = children_of(master.pid);
    assert_eq!(kids.len(), 1, "{kids:?}");
    kids[0]
}

#[tokio::test]
async fn cli_events_shows_a_jobs_events_in_order() {
    let master = Master::ready(&["--pool-start", "1", "--pool-max", "1"]);
    let client = master.client().await;
    let port = master_port(&master);
    // The CLI says nothing when it has subscribed: wait for its connection,
    // and try again (a few times at most) if it subscribed too late for the
    // first events.
    for attempt in 1..=5 {
        let id = format!("{}-{}", client.instance(), next_job_number(&client).await);
        let mut cli = Command::new(bin("taskmaster"))
            .args(["events", "--connect", &master.addr, "--job", &id])
            .env_remove("TASKMASTER_CONNECT")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("taskmaster events");
        let stdout = cli.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let cli_pid = cli.id();
        wait_until("the CLI connected", Duration::from_secs(5), || {
            connected_to(cli_pid, port)
        });
        let done = client
            .submit("echo", "cli", Bytes::new())
            .unwrap()
            .finish()
            .await
            .unwrap();
        assert_eq!(done.id, id);
        let mut names = Vec::new();
        while let Ok(line) = rx.recv_timeout(Duration::from_secs(2)) {
            let (name, json) = line.split_once(' ').expect("NAME JSON");
            let data: serde_json::Value = serde_json::from_str(json).unwrap();
            assert_eq!(data["job"], id.as_str(), "{line}");
            names.push(name.to_owned());
            if name == "job-completed" {
                break;
            }
        }
        let _ = cli.kill();
        let _ = cli.wait();
        assert!(
            LIFECYCLE.ends_with(&names.iter().map(String::as_str).collect::<Vec<_>>()),
            "events out of order or unexpected: {names:?}"
        );
        if names.len() == LIFECYCLE.len() {
            eprintln!("taskmaster events: {names:?} (attempt {attempt})");
            return;
        }
        eprintln!("attempt {attempt}: subscribed late, saw only {names:?}");
    }
    panic!("taskmaster events never showed a whole lifecycle");
}

// 8. Chaos.

#[derive(Default)]
struct Tally {
    /// Answers per tag (exactly one each is the goal).
    answers: Vec<u32>,
    completed: u64,
    errors: u64,
    /// Anything else: other reasons, wrong outputs or contexts.
    wrong: Vec<String>,
}

/// One client on the raw wire (so duplicate answers would be seen, not
/// dropped by the Rust client's routing), keeping `window` jobs in flight.
async fn chaos_client(
    addr: String,
    me: usize,
    jobs: usize,
    window: usize,
    tally: Arc<Mutex<Tally>>,
    all_answered: tokio::sync::oneshot::Sender<()>,
) {
    let stream = tokio::net::TcpStream::connect(addr.as_str()).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (read, mut write) = stream.into_split();
    let hello = Hello::Client(ClientHello {
        version: PROTOCOL_VERSION,
        token: None,
    });
    write
        .write_all(&codec::to_frame(&hello).unwrap())
        .await
        .unwrap();
    let mut reader = codec::frame_reader(read, codec::DEFAULT_MAX_PAYLOAD);
    match codec::read_message::<ToClient, _>(&mut reader).await {
        Ok(Some(ToClient::Welcome { .. })) => {}
        other => panic!("no welcome: {other:?}"),
    }
    tally.lock().unwrap().answers = vec![0; jobs];
    let permits = Arc::new(tokio::sync::Semaphore::new(window));
    let echo_input = move |tag: usize| format!("client {me} job {tag}");
    let writer = {
        let permits = permits.clone();
        tokio::spawn(async move {
            for tag in 0..jobs {
                permits.acquire().await.unwrap().forget();
                let (module, input) = if tag % 2 == 0 {
                    ("echo", Bytes::from(echo_input(tag)))
                } else {
                    ("sleep", Bytes::from_static(b"1"))
                };
                let msg = ToMaster::Submit {
                    tag: tag as u64,
                    module: module.to_owned(),
                    context: Bytes::copy_from_slice(&(tag as u64).to_be_bytes()),
                    options: SubmitOptions::default(),
                    input,
                };
                write
                    .write_all(&codec::to_frame(&msg).unwrap())
                    .await
                    .unwrap();
            }
            // Keep the connection open for late (duplicate) answers.
            std::future::pending::<()>().await;
        })
    };
    let mut answered = 0;
    let mut all_answered = Some(all_answered);
    while let Ok(Some(msg)) = codec::read_message::<ToClient, _>(&mut reader).await {
        let (tag, context, verdict) = match msg {
            ToClient::Completed {
                tag,
                context,
                output,
                ..
            } => {
                let good = if tag % 2 == 0 {
                    output == echo_input(tag as usize).as_bytes()
                } else {
                    std::str::from_utf8(&output).is_ok_and(|s| s.parse::<u32>().is_ok())
                };
                let verdict = if good {
                    Ok(true)
                } else {
                    Err(format!("tag {tag}: wrong output {output:?}"))
                };
                (tag, context, verdict)
            }
            ToClient::Failed {
                tag,
                reason,
                message,
                context,
                ..
            } => {
                let verdict = if reason == Reason::Error {
                    Ok(false)
                } else {
                    Err(format!("tag {tag}: {reason}: {message}"))
                };
                (tag, context, verdict)
            }
            other => {
                tally
                    .lock()
                    .unwrap()
                    .wrong
                    .push(format!("unexpected message {other:?}"));
                continue;
            }
        };
        let mut t = tally.lock().unwrap();
        if context.as_ref() != tag.to_be_bytes() {
            t.wrong.push(format!("tag {tag}: context {context:?}"));
        }
        let Some(count) = t.answers.get_mut(tag as usize) else {
            t.wrong.push(format!("answer for unknown tag {tag}"));
            continue;
        };
        *count += 1;
        let count = *count;
        if count > 1 {
            t.wrong.push(format!("tag {tag} answered {count} times"));
            continue;
        }
        match verdict {
            Ok(true) => t.completed += 1,
            Ok(false) => t.errors += 1,
            Err(e) => t.wrong.push(e),
        }
        drop(t);
        permits.add_permits(1);
        answered += 1;
        if answered == jobs {
            if let Some(tx) = all_answered.take() {
                let _ = tx.send(());
            }
        }
    }
    writer.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_random_kills_lose_no_job_and_the_pool_heals() {
    const JOBS: usize = 10_000;
    const CLIENTS: usize = 8;
    const WINDOW: usize = 8;
    let master = Master::ready(&[
        "--pool-start",
        "4",
        "--pool-max",
        "4",
        "--job-max",
        "100000",
    ]);
    let started = Instant::now();

    let mut tallies = Vec::new();
    let mut finished = Vec::new();
    let mut readers = Vec::new();
    for me in 0..CLIENTS {
        let tally = Arc::new(Mutex::new(Tally::default()));
        let (tx, rx) = tokio::sync::oneshot::channel();
        readers.push(tokio::spawn(chaos_client(
            master.addr.clone(),
            me,
            JOBS / CLIENTS,
            WINDOW,
            tally.clone(),
            tx,
        )));
        tallies.push(tally);
        finished.push(rx);
    }

    // The killer: a random child SIGKILLed every 100 ms while jobs run.
    let running = Arc::new(AtomicBool::new(true));
    let killer = {
        let running = running.clone();
        let master_pid = master.pid;
        std::thread::spawn(move || {
            let mut seed = u64::from(std::process::id()) ^ 0x9e37_79b9_7f4a_7c15;
            let mut kills = 0u64;
            let mut last_kill = None;
            while running.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                if taskmaster_tests::kill_random_child(master_pid, &mut seed).is_some() {
                    kills += 1;
                    last_kill = Some(Instant::now());
                }
            }
            (kills, last_kill)
        })
    };

    for rx in finished {
        tokio::time::timeout(Duration::from_secs(120), rx)
            .await
            .expect("every job answered within 120 s")
            .expect("client task alive");
    }
    let ran = started.elapsed();
    running.store(false, Ordering::Relaxed);
    let (kills, last_kill) = killer.join().unwrap();
    let last_kill = last_kill.expect("at least one kill");

    let client = master.client().await;
    // Whole again: every kill seen (reaped) and replaced, all 4 idle.
    let stats = wait_stats(&client, "the pool whole again", |s| {
        s.children.exited == kills
            && s.children.spawned == 4 + kills
            && s.pool.size == 4
            && s.pool.idle == 4
            && s.pool.busy == 0
            && s.pool.starting == 0
            && s.queue.len == 0
    })
    .await;
    let recovered = last_kill.elapsed();

    let (mut completed, mut errors, mut wrong) = (0, 0, Vec::new());
    let mut unanswered = 0;
    for t in &tallies {
        let t = t.lock().unwrap();
        completed += t.completed;
        errors += t.errors;
        wrong.extend(t.wrong.iter().cloned());
        unanswered += t.answers.iter().filter(|&&n| n == 0).count();
    }
    for r in readers {
        r.abort();
    }
    eprintln!(
        "chaos: {JOBS} jobs in {ran:?}, {kills} kills, {completed} completed, {errors} errors; \
         pool whole {recovered:?} after the last kill; spawned {}, startup failures {}",
        stats.children.spawned, stats.children.startup_failures
    );
    assert!(
        wrong.is_empty(),
        "{} wrong answers: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(10)]
    );
    assert_eq!(unanswered, 0, "jobs without an answer");
    assert_eq!(completed + errors, JOBS as u64);
    assert!(
        kills >= 5,
        "the chaos was too short to matter: {kills} kills"
    );
    assert_eq!(stats.jobs.submitted, JOBS as u64, "{stats:?}");
    assert_eq!(stats.jobs.completed, completed, "{stats:?}");
    assert_eq!(stats.jobs.failed, errors, "{stats:?}");
    assert_eq!(
        stats.jobs.failed_by_reason.keys().collect::<Vec<_>>(),
        if errors > 0 { vec!["error"] } else { vec![] },
        "{stats:?}"
    );
    let kids = children_with_state(master.pid);
    assert_eq!(kids.len(), 4, "children of the master: {kids:?}");
    assert!(
        kids.iter().all(|&(_, state)| state != 'Z'),
        "zombie children: {kids:?}"
    );
}

#[tokio::test]
async fn a_modules_own_processes_die_with_its_child() {
    let master = Master::start_with(
        &["--pool-start", "1", "--pool-max", "1"],
        &bin("taskmaster-test-handler"),
    );
    let client = master.client().await;
    wait_stats(&client, "pool ready", |s| s.pool.idle == 1).await;
    // The module starts `sleep 1000`, tells its pid, then runs past its
    // time limit: the child is killed, and so is the process it started.
    let mut job = client
        .submit_with("spawner", "10000", Bytes::new(), timeout_ms(300))
        .unwrap();
    let grandchild: u32 = match job.next_event().await.unwrap() {
        taskmaster_proto::JobEvent::Part(pid) => {
            std::str::from_utf8(&pid).unwrap().parse().unwrap()
        }
        other => panic!("expected the grandchild's pid, got {other:?}"),
    };
    assert!(pid_alive(grandchild));
    match job.next_event().await.unwrap() {
        taskmaster_proto::JobEvent::Failed(f) => assert_eq!(f.reason, Reason::Timeout),
        other => panic!("expected a timeout, got {other:?}"),
    }
    wait_until(
        "the module's own process is gone",
        Duration::from_secs(5),
        || !pid_alive(grandchild),
    );
}

#[tokio::test]
async fn a_stopped_child_is_killed_for_silence_and_its_job_fails_error() {
    let mut master = Master::ready(&["--pool-start", "1", "--pool-max", "1", "--heartbeat", "0.2"]);
    let client = master.client().await;
    let before = master.children();
    assert_eq!(before.len(), 1);
    let job = client.submit("sleep", "10000", Bytes::new()).unwrap();
    wait_stats(&client, "the job running", |s| s.pool.busy == 1).await;
    // Let the child send its first heartbeat (children are held to them
    // from the first one), then freeze it.
    master.wait_log("child ready", Duration::from_secs(5));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stopped = std::time::Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(before[0] as i32),
        nix::sys::signal::Signal::SIGSTOP,
    )
    .unwrap();
    // Without the heartbeat check the job would never end: bound the wait.
    let failure = match tokio::time::timeout(Duration::from_secs(10), job.finish()).await {
        Ok(Err(ClientError::Job(f))) => f,
        other => panic!("expected a failure within 10 s, got {other:?}"),
    };
    assert_eq!(failure.reason, Reason::Error);
    assert!(
        failure.message.contains("stopped answering"),
        "{}",
        failure.message
    );
    assert!(
        stopped.elapsed() < Duration::from_secs(3),
        "{:?}",
        stopped.elapsed()
    );
    wait_until("the frozen child is gone", Duration::from_secs(5), || {
        !pid_alive(before[0])
    });
    wait_stats(&client, "a replacement", |s| s.pool.idle == 1).await;
}
