//! Faults: crashes, module failures, panics, dead children, stop signals,
//! `kill -9` of the master, a handler that cannot start.

use bytes::Bytes;
use nix::sys::signal::Signal;
use std::time::{Duration, Instant};
use taskmaster_tests::{bin, pid_alive, wait_stats, wait_until, ClientError, Master, Reason};

fn job_failure(r: Result<Bytes, ClientError>) -> taskmaster_proto::JobFailure {
    match r {
        Err(ClientError::Job(f)) => f,
        other => panic!("expected a job failure, got {other:?}"),
    }
}

#[tokio::test]
async fn crash_fails_error_and_the_pool_is_restored() {
    let mut master = Master::ready(&["--pool-start", "2", "--pool-max", "2"]);
    let before = master.children();
    let client = master.client().await;
    let f = job_failure(client.do_task("crash", "").await);
    assert_eq!(f.reason, Reason::Error);
    assert!(f.message.contains("SIGABRT"), "message: {}", f.message);
    wait_stats(&client, "2 idle children", |s| {
        s.pool.idle == 2 && s.pool.size == 2
    })
    .await;
    let after = master.children();
    assert_eq!(after.len(), 2);
    let dead: Vec<_> = before.iter().filter(|p| !after.contains(p)).collect();
    assert_eq!(dead.len(), 1, "exactly the crashed child was replaced");
    assert!(!pid_alive(*dead[0]));
    // Nothing else was disturbed.
    assert_eq!(
        client.do_task("echo", "still here").await.unwrap(),
        "still here".as_bytes()
    );
}

#[tokio::test]
async fn module_failure_and_unknown_module_have_their_reasons() {
    let master = Master::ready(&["--pool-start", "1"]);
    let client = master.client().await;
    let f = job_failure(client.do_task("fail", "disk on fire").await);
    assert_eq!(
        (f.reason, f.message.as_str()),
        (Reason::Failed, "disk on fire")
    );
    let f = job_failure(client.do_task("no-such-module", "").await);
    assert_eq!(f.reason, Reason::UnknownModule);
    assert!(f.message.contains("no-such-module"));
}

#[tokio::test]
async fn panic_fails_the_job_and_replaces_the_child() {
    let mut master = Master::start_with(
        &["--pool-start", "1", "--pool-max", "1"],
        &bin("taskmaster-test-handler"),
    );
    master.wait_log("pool ready", Duration::from_secs(10));
    let old = master.children();
    let client = master.client().await;
    let f = job_failure(client.do_task("panic", "the flux capacitor").await);
    assert_eq!(f.reason, Reason::Failed);
    assert!(
        f.message.contains("the flux capacitor"),
        "message: {}",
        f.message
    );
    wait_stats(&client, "replacement ready", |s| {
        s.pool.idle == 1 && s.children.spawned == 2
    })
    .await;
    let new = master.children();
    assert_eq!(new.len(), 1);
    assert_ne!(new, old);
    let pid = client.do_task("pid", "").await.unwrap();
    assert_eq!(String::from_utf8_lossy(&pid), new[0].to_string());
}

#[tokio::test]
async fn a_child_killed_while_idle_is_replaced() {
    let mut master = Master::ready(&["--pool-start", "2"]);
    let victim = master.children()[0];
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(victim as i32), Signal::SIGKILL).unwrap();
    let client = master.client().await;
    wait_stats(&client, "replacement", |s| {
        s.children.exited == 1 && s.pool.idle == 2
    })
    .await;
    assert!(!master.children().contains(&victim));
    assert!(master
        .log()
        .iter()
        .any(|l| l.contains("possibly the OOM killer")));
}

#[tokio::test]
async fn sigterm_finishes_running_job_refuses_new_ones_and_leaves_no_child() {
    let mut master = Master::ready(&["--pool-start", "2", "--pool-max", "2"]);
    let children = master.children();
    assert_eq!(children.len(), 2);
    let client = master.client().await;
    let running = client.submit("sleep", "700", Bytes::new()).unwrap();
    wait_stats(&client, "job running", |s| s.pool.busy == 1).await;
    master.signal(Signal::SIGTERM);
    master.wait_log("shutting down", Duration::from_secs(5));
    let late = job_failure(client.do_task("echo", "late").await);
    assert_eq!(late.reason, Reason::ShuttingDown);
    running
        .finish()
        .await
        .expect("running job finishes within the grace");
    assert_eq!(master.wait_exit(Duration::from_secs(10)).code(), Some(0));
    for pid in children {
        assert!(!pid_alive(pid), "child {pid} outlived the master");
    }
}

#[tokio::test]
async fn second_sigterm_stops_at_once() {
    let mut master = Master::ready(&["--pool-start", "1", "--pool-max", "1", "--grace", "60"]);
    let children = master.children();
    let client = master.client().await;
    let running = client.submit("sleep", "60000", Bytes::new()).unwrap();
    wait_stats(&client, "job running", |s| s.pool.busy == 1).await;
    master.signal(Signal::SIGTERM);
    master.wait_log("shutting down", Duration::from_secs(5));
    master.signal(Signal::SIGTERM);
    let f = job_failure(running.finish().await.map(|c| c.output));
    assert_eq!(f.reason, Reason::Error);
    assert_eq!(master.wait_exit(Duration::from_secs(10)).code(), Some(0));
    assert!(children.iter().all(|&p| !pid_alive(p)));
}

#[tokio::test]
async fn kill_9_of_the_master_leaves_no_child() {
    let mut master = Master::ready(&["--pool-start", "3", "--pool-max", "3"]);
    let client = master.client().await;
    // One child busy mid-job, two idle.
    let _busy = client.submit("sleep", "30000", Bytes::new()).unwrap();
    wait_stats(&client, "job running", |s| s.pool.busy == 1).await;
    let children = master.children();
    assert_eq!(children.len(), 3);
    master.signal(Signal::SIGKILL);
    let killed = Instant::now();
    wait_until("every child gone", Duration::from_secs(1), || {
        children.iter().all(|&p| !pid_alive(p))
    });
    eprintln!("children gone {:?} after kill -9", killed.elapsed());
}

#[tokio::test]
async fn a_handler_that_cannot_start_fails_jobs_error_and_backs_off() {
    let started = Instant::now();
    let master = Master::start_with(
        &["--pool-start", "1", "--pool-max", "2"],
        std::path::Path::new("/bin/false"),
    );
    let client = master.client().await;
    let f = job_failure(client.do_task("echo", "x").await);
    assert_eq!(f.reason, Reason::Error);
    assert!(
        f.message.contains("/bin/false"),
        "message names the handler: {}",
        f.message
    );
    assert!(
        f.message.contains("exited with code 1"),
        "message gives the cause: {}",
        f.message
    );
    master.wait_log("no child can be started", Duration::from_secs(10));
    // Back-off: failures 1..5 are separated by 100+200+400+800 ms at least.
    wait_stats(&client, "5 start-up failures", |s| {
        s.children.startup_failures >= 5
    })
    .await;
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "no back-off: {:?}",
        started.elapsed()
    );
    // Refused at once while broken, not queued.
    let f = job_failure(client.do_task("echo", "y").await);
    assert_eq!(f.reason, Reason::Error);
    let stats = client.stats().await.unwrap();
    assert_eq!(stats.queue.len, 0);
}
