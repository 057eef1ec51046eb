//! Reliability under outside faults (issue 10): kills of healthy children
//! never fail queued jobs or trip the breaker, a handler that cannot start
//! still trips it, a client that stops reading is held back instead of cut
//! off, and children get in while clients hold every place.

use crate::supervision::write_script;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use taskmaster_tests::{
    bin, http, kill_random_child, pid_alive, try_http, vm_rss_kib, wait_stats, wait_until,
    wait_until_async, Master,
};

fn pid_of(output: &[u8]) -> u32 {
    std::str::from_utf8(output)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("not a pid: {:?}", String::from_utf8_lossy(output)))
}

/// (1) HTTP load on mostly idle children, one SIGKILLed every 100 ms for
/// 4 s: only the jobs the killed children held may fail, and the pool is
/// whole again afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_kills_under_http_load_fail_at_most_the_jobs_they_held() {
    let master = Master::ready_http(&["--pool-start", "4", "--pool-max", "4"]);
    let url = master.url("/jobs/echo?wait=10");
    let running = Arc::new(AtomicBool::new(true));
    let (completed, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut clients = Vec::new();
    for _ in 0..8 {
        let (running, completed, failed, url) = (
            running.clone(),
            completed.clone(),
            failed.clone(),
            url.clone(),
        );
        clients.push(tokio::spawn(async move {
            let body = vec![b'x'; 64];
            while running.load(Ordering::Relaxed) {
                match try_http("POST", &url, body.clone()).await {
                    Ok(a) if a.status == 200 && a.body.len() == 64 => {
                        completed.fetch_add(1, Ordering::Relaxed)
                    }
                    Ok(a) => {
                        eprintln!("failed: {} {}", a.status, a.text());
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                    Err(e) => panic!("HTTP request failed: {e}"),
                };
            }
        }));
    }
    let master_pid = master.pid;
    let killer = std::thread::spawn(move || {
        let mut seed = u64::from(std::process::id()) | 1;
        let mut kills = 0u64;
        let end = Instant::now() + Duration::from_secs(4);
        while Instant::now() < end {
            std::thread::sleep(Duration::from_millis(100));
            if kill_random_child(master_pid, &mut seed).is_some() {
                kills += 1;
            }
        }
        kills
    });
    let kills = tokio::task::spawn_blocking(move || killer.join().unwrap())
        .await
        .unwrap();
    running.store(false, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let (completed, failed) = (
        completed.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
    );
    eprintln!("kills {kills}, completed {completed}, failed {failed}");
    assert!(kills >= 20, "the killer ran: {kills} kills");
    assert!(completed > 100, "jobs went on: {completed}");
    assert!(
        failed <= kills,
        "{failed} jobs failed for {kills} kills: a kill may fail only the job it held"
    );
    let client = master.client().await;
    wait_stats(&client, "the pool whole again", |s| {
        s.pool.size == 4 && s.pool.idle == 4 && s.pool.starting == 0
    })
    .await;
    assert!(
        !master
            .log()
            .iter()
            .any(|l| l.contains("crash-loop breaker tripped")),
        "kills of started children never trip the breaker"
    );
    let health = http("GET", &master.url("/healthz"), "").await;
    assert_eq!(health.status, 200, "{}", health.text());
}

/// (2) Eight kills in a row of the child that just answered: each had
/// started (it finished a job), so none is a start-up failure and the next
/// job runs at once.
#[tokio::test]
async fn eight_kills_of_children_that_just_answered_leave_the_pool_serving() {
    let master = Master::ready_http(&[]);
    let client = master.client().await;
    for killed in 1..=8 {
        let pid = pid_of(&client.do_task("pid", "").await.expect("pid job"));
        kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
        // Until the master has seen the death, a job may still go to the
        // dead child (and fail `error`): wait for that, not for /proc.
        wait_stats(&client, "the kill seen by the master", |s| {
            s.children.exited == killed
        })
        .await;
    }
    let asked = Instant::now();
    let pid = pid_of(
        &client
            .do_task("pid", "")
            .await
            .expect("the next job succeeds"),
    );
    let took = asked.elapsed();
    assert!(took < Duration::from_millis(1500), "took {took:?}");
    assert!(pid_alive(pid));
    let health = http("GET", &master.url("/healthz"), "").await;
    assert_eq!(health.status, 200, "{}", health.text());
    let stats = client.stats().await.unwrap();
    assert_eq!(stats.children.startup_failures, 0, "{stats:?}");
    assert_eq!(stats.jobs.failed, 0, "{stats:?}");
}

/// (3) A handler that says hello and dies half a second later never
/// starts: the breaker still trips, and heals once the handler is fixed.
#[tokio::test]
async fn a_handler_dying_soon_after_its_hello_trips_the_breaker_and_heals() {
    let dir = std::env::temp_dir().join(format!("taskmaster-soon-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("handler.sh");
    let real = bin("taskmaster-handler");
    // `$$` becomes the real handler after `exec`; the background shell
    // kills it half a second later, after its hello.
    write_script(
        &script,
        &format!(
            "#!/bin/sh\n( sleep 0.5; kill -9 $$ ) </dev/null &\nexec '{}' \"$@\"\n",
            real.display()
        ),
    );
    let master = Master::start_with(
        &[
            "--pool-start",
            "1",
            "--pool-max",
            "2",
            "--http",
            "127.0.0.1:0",
        ],
        &script,
    );
    master.wait_log("child ready", Duration::from_secs(5));
    let tripped = master.wait_log("crash-loop breaker tripped", Duration::from_secs(10));
    assert!(tripped.contains("before it had started"), "{tripped}");
    let health = http("GET", &master.url("/healthz"), "").await;
    assert_eq!(health.status, 503, "{}", health.text());

    write_script(
        &script,
        &format!("#!/bin/sh\nexec '{}' \"$@\"\n", real.display()),
    );
    master.wait_log("breaker cleared", Duration::from_secs(15));
    let client = master.client().await;
    wait_until_async("a job completes again", Duration::from_secs(10), || async {
        matches!(client.do_task("echo", "back").await, Ok(b) if b == "back")
    })
    .await;
    let health = http("GET", &master.url("/healthz"), "").await;
    assert_eq!(health.status, 200, "{}", health.text());
    let _ = std::fs::remove_dir_all(&dir);
}

/// (4) A client that reads nothing for 5 s of a 2,000,000-part job gets
/// every line afterwards; the master holds the child back instead of
/// buffering (RSS) or cutting the client off, and serves others meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_held_back_and_gets_everything() {
    let master = Master::ready(&["--pool-start", "2", "--pool-max", "2"]);
    let rss_before = vm_rss_kib(master.pid);
    let mut slow = Command::new(bin("taskmaster"))
        .args(["submit", "--connect", &master.addr, "count", "2000000"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let paused = Instant::now();
    let client = master.client().await;
    // Another client's job completes while the slow one does not read.
    wait_stats(&client, "the count job running", |s| s.pool.busy == 1).await;
    let echo = client.do_task("echo", "meanwhile").await.unwrap();
    assert_eq!(echo, "meanwhile");
    let mut peak = 0;
    while paused.elapsed() < Duration::from_secs(5) {
        peak = peak.max(vm_rss_kib(master.pid));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let grew_mib = peak.saturating_sub(rss_before) as f64 / 1024.0;
    eprintln!("master RSS {rss_before} KiB before, peak {peak} KiB while not read");
    assert!(grew_mib < 20.0, "master RSS grew {grew_mib:.1} MiB");
    let out = tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut stdout = slow.stdout.take().unwrap();
        let mut lines = 0u64;
        let mut last = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = stdout.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            lines += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
            last.extend_from_slice(&buf[..n]);
            let keep = last.len().saturating_sub(16);
            last.drain(..keep);
        }
        let status = slow.wait().unwrap();
        let mut err = String::new();
        slow.stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        (lines, last, status, err)
    })
    .await
    .unwrap();
    let (lines, last, status, err) = out;
    assert!(status.success(), "submit failed: {status:?} {err}");
    assert_eq!(lines, 2_000_001, "every part and the response");
    assert!(last.ends_with(b"2000000\ndone\n"), "{last:?}");
    assert!(!master
        .log()
        .iter()
        .any(|l| l.contains("--max-client-backlog")));
}

/// (5) Clients hold every `--max-connections` place and silent sockets
/// keep `--max-handshakes` full: a killed child is still replaced and
/// ready within 2 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn children_get_in_while_clients_hold_every_place() {
    let mut master = Master::ready(&[
        "--pool-start",
        "2",
        "--pool-max",
        "2",
        "--max-connections",
        "6",
        "--max-handshakes",
        "4",
    ]);
    let mut held = Vec::new();
    for _ in 0..6 {
        held.push(master.client().await);
    }
    // A seventh client is refused: every place is taken.
    assert!(
        taskmaster_tests::Client::connect(master.addr.as_str(), None)
            .await
            .is_err()
    );
    let addr: std::net::SocketAddr = master.addr.parse().unwrap();
    let flooding = Arc::new(AtomicBool::new(true));
    let flooder = {
        let flooding = flooding.clone();
        std::thread::spawn(move || {
            let mut silent = std::collections::VecDeque::new();
            while flooding.load(Ordering::Relaxed) {
                if let Ok(s) = std::net::TcpStream::connect(addr) {
                    silent.push_back(s);
                }
                if silent.len() > 8 {
                    silent.pop_front();
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    // Let the flood fill the handshake places first.
    master.wait_log("to make room for a newer one", Duration::from_secs(5));
    let ready_before = master
        .log()
        .iter()
        .filter(|l| l.contains("child ready"))
        .count();
    let victim = master.children()[0];
    kill(Pid::from_raw(victim as i32), Signal::SIGKILL).unwrap();
    let killed = Instant::now();
    wait_until("a replacement child ready", Duration::from_secs(2), || {
        master
            .log()
            .iter()
            .filter(|l| l.contains("child ready"))
            .count()
            > ready_before
    });
    eprintln!("replacement ready {:?} after the kill", killed.elapsed());
    flooding.store(false, Ordering::Relaxed);
    flooder.join().unwrap();
    let kids = master.children();
    assert_eq!(kids.len(), 2, "{kids:?}");
    assert!(!kids.contains(&victim));
    // The held clients still work.
    assert_eq!(held[0].do_task("echo", "ok").await.unwrap(), "ok");
}

/// A handler whose output breaks `--max-payload` (a wrapper raises the
/// limit it was given): its job fails `error` naming the cause, the child
/// is replaced, and output at the limit still passes.
#[tokio::test]
async fn a_child_output_over_max_payload_fails_its_job_error() {
    let dir = std::env::temp_dir().join(format!("taskmaster-big-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("handler.sh");
    write_script(
        &script,
        &format!(
            "#!/bin/sh\nset -- $(echo \"$@\" | sed 's/--max-payload [0-9]*/--max-payload 1048576/')\nexec '{}' \"$@\"\n",
            bin("taskmaster-test-handler").display()
        ),
    );
    let master = Master::start_with(
        &[
            "--pool-start",
            "1",
            "--pool-max",
            "1",
            "--max-payload",
            "1024",
        ],
        &script,
    );
    master.wait_log("pool ready", Duration::from_secs(10));
    let client = master.client().await;
    let out = client.do_task("big", "1024").await.unwrap();
    assert_eq!(out.len(), 1024, "output at the limit passes");
    let failure = match client.do_task("big", "5000").await {
        Err(taskmaster_tests::ClientError::Job(f)) => f,
        other => panic!("expected a failure, got {other:?}"),
    };
    assert_eq!(failure.reason, taskmaster_tests::Reason::Error);
    assert!(
        failure
            .message
            .contains("sent 5000 bytes, over --max-payload 1024"),
        "{}",
        failure.message
    );
    let out = client.do_task("big", "10").await.unwrap();
    assert_eq!(out.len(), 10, "the replacement child serves");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every file descriptor in use while a child must be replaced: the spawn
/// fails (a start-up failure, with back-off) instead of taking the master
/// down, and the pool heals once descriptors are free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spawn_without_file_descriptors_does_not_take_the_master_down() {
    let mut cmd = Command::new("prlimit");
    cmd.arg("--nofile=64:64")
        .arg(bin("taskmaster"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--pool-start",
            "2",
            "--pool-max",
            "2",
        ])
        .arg("--handler")
        .arg(bin("taskmaster-handler"));
    let mut master = Master::launch_cmd(cmd);
    master.wait_log("pool ready", Duration::from_secs(10));
    let addr: std::net::SocketAddr = master.addr.parse().unwrap();
    // Far more connections than descriptors: accept starts failing.
    let mut held = Vec::new();
    for _ in 0..100 {
        if let Ok(s) = std::net::TcpStream::connect(addr) {
            held.push(s);
        }
    }
    master.wait_log("accept failed", Duration::from_secs(5));
    let victim = master.children()[0];
    kill(Pid::from_raw(victim as i32), Signal::SIGKILL).unwrap();
    master.wait_log("child failed to start", Duration::from_secs(5));
    assert!(pid_alive(master.pid), "the master survives");
    drop(held);
    let client = master.client().await;
    wait_stats(&client, "the pool whole again", |s| {
        s.pool.size == 2 && s.pool.starting == 0
    })
    .await;
    assert_eq!(client.do_task("echo", "ok").await.unwrap(), "ok");
    assert!(!master.log().iter().any(|l| l.contains("panicked")));
}
