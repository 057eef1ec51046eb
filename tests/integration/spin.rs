//! `--spin-us`: the master polls its sockets only around job events. A
//! master that went on polling would use a whole CPU; these tests read its
//! CPU time from /proc/PID/stat while it has nothing to do, and while its
//! one job runs long.

use std::time::{Duration, Instant};
use taskmaster_proto::BlockingClient;
use taskmaster_tests::{wait_stats, Master};

/// User + system CPU time of `pid`, in ms (the kernel's clock ticks are
/// 1/100 s on Linux: USER_HZ is part of its ABI).
fn cpu_ms(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    // Fields after the command name, which is in parentheses and may hold
    // spaces: state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks * 10
}

/// CPU the master uses over `span` of wall time, in ms.
fn cpu_over(pid: u32, span: Duration) -> u64 {
    let before = cpu_ms(pid);
    let began = Instant::now();
    // The measurement is the interval itself: no condition to wait for.
    std::thread::sleep(span);
    let used = cpu_ms(pid) - before;
    assert!(began.elapsed() >= span);
    used
}

/// A polling master uses about a CPU: 1000 ms over a second, or half of it
/// on a machine busy with other tests (it yields to them). One that sleeps
/// uses a few ticks. The bound sits between.
const MOST_MS: u64 = 250;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_stops_when_jobs_stop_and_while_a_job_runs_long() {
    // A window far above the default, so a master that did not stop would
    // be plain to see, and a closed loop that keeps it polling throughout.
    let mut master = Master::ready(&["--pool-start", "1", "--pool-max", "1", "--spin-us", "5000"]);
    let addr = master.addr.clone();
    let loop_done = tokio::task::spawn_blocking(move || {
        let mut client = BlockingClient::connect(addr.as_str(), None).expect("connect");
        for i in 0..2000u32 {
            let input = format!("job {i}");
            let done = client.submit("echo", input.clone(), "").expect("echo");
            assert_eq!(done.output, input.as_bytes());
        }
        client
    });
    let mut client = loop_done.await.unwrap();

    // Nothing with a child: within a window it sleeps for good.
    let pid = master.pid;
    let idle = tokio::task::spawn_blocking(move || cpu_over(pid, Duration::from_secs(1)))
        .await
        .unwrap();
    assert!(idle < MOST_MS, "idle master used {idle} ms of CPU in 1 s");

    // One job running long: it is with a child, yet no event comes, so the
    // master sleeps after one window, not for the job's whole run.
    let long = tokio::task::spawn_blocking(move || client.submit("sleep", "3000", ""));
    let c = master.client().await;
    wait_stats(&c, "the sleep job running", |s| s.pool.busy == 1).await;
    let running = tokio::task::spawn_blocking(move || cpu_over(pid, Duration::from_secs(1)))
        .await
        .unwrap();
    assert!(
        running < MOST_MS,
        "master used {running} ms of CPU in 1 s while one job ran"
    );
    // `sleep` answers its child's pid.
    let done = long.await.unwrap().expect("sleep completes");
    let pid: u32 = String::from_utf8_lossy(&done.output)
        .parse()
        .expect("a pid");
    assert_eq!(master.children(), vec![pid]);
}

#[test]
fn a_master_that_never_polls_still_answers_everything() {
    let master = Master::ready(&["--pool-start", "2", "--spin-us", "0"]);
    let mut client = BlockingClient::connect(master.addr.as_str(), None).expect("connect");
    for i in 0..500u32 {
        let input = format!("job {i}");
        let done = client.submit("echo", input.clone(), "").expect("echo");
        assert_eq!(done.output, input.as_bytes());
    }
}
