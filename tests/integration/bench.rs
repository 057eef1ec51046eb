//! `taskmaster bench` runs against a real master and checks every answer
//! (no timing assertions: speed is for docs/performance.md), and
//! `--prefetch` keeps the exactly-one-answer rule with real processes.

use bytes::Bytes;
use std::time::Duration;
use taskmaster_tests::{bench_within, bin, output_within, wait_stats, Master, Reason};

fn bench(master: &Master, args: &[&str]) -> serde_json::Value {
    bench_within(master, args, Duration::from_secs(60))
}

#[test]
fn bench_reports_every_job_checked() {
    let master = Master::ready(&["--pool-start", "2", "--pool-max", "2", "--job-max", "1000"]);
    let r = bench(
        &master,
        &[
            "--jobs",
            "2000",
            "--clients",
            "3",
            "--pipeline",
            "7",
            "--size",
            "100",
        ],
    );
    assert_eq!(r["completed"], 2000);
    assert_eq!(r["failed"], 0);
    assert_eq!(r["wrong_answers"], 0);
    for key in [
        "jobs",
        "seconds",
        "jobs_per_sec",
        "p50_us",
        "p99_us",
        "failed",
    ] {
        assert!(r.get(key).is_some(), "report lacks {key}: {r}");
    }
    let r = bench(
        &master,
        &["--jobs", "50", "--module", "sha256", "--size", "5000"],
    );
    assert_eq!(
        (r["completed"].as_u64(), r["wrong_answers"].as_u64()),
        (Some(50), Some(0))
    );
    // Failures are counted by reason, and make the exit status 1.
    let o = output_within(
        std::process::Command::new(bin("taskmaster")).args([
            "bench",
            "--connect",
            &master.addr,
            "--json",
            "--jobs",
            "5",
            "--module",
            "fail",
        ]),
        Duration::from_secs(60),
    );
    assert_eq!(o.status.code(), Some(1));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["failed_by_reason"]["failed"], 5);
}

#[test]
fn bench_blocking_checks_every_job_and_wants_pipeline_1() {
    let master = Master::ready(&["--pool-start", "2", "--pool-max", "2"]);
    let r = bench(
        &master,
        &[
            "--blocking",
            "--jobs",
            "600",
            "--clients",
            "3",
            "--size",
            "100",
        ],
    );
    assert_eq!(
        (
            r["completed"].as_u64(),
            r["failed"].as_u64(),
            r["wrong_answers"].as_u64()
        ),
        (Some(600), Some(0), Some(0)),
        "{r}"
    );
    let r = bench(
        &master,
        &[
            "--blocking",
            "--jobs",
            "20",
            "--module",
            "sha256",
            "--size",
            "5000",
        ],
    );
    assert_eq!(
        (r["completed"].as_u64(), r["wrong_answers"].as_u64()),
        (Some(20), Some(0))
    );
    let o = output_within(
        std::process::Command::new(bin("taskmaster")).args([
            "bench",
            "--connect",
            &master.addr,
            "--blocking",
            "--pipeline",
            "2",
        ]),
        Duration::from_secs(60),
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--pipeline 1"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn bench_spawn_mode_measures_growth() {
    // With and without prefetch: growth to pool-max comes first.
    for prefetch in ["1", "8"] {
        let master = Master::ready(&[
            "--pool-start",
            "1",
            "--pool-max",
            "3",
            "--prefetch",
            prefetch,
        ]);
        let r = bench(&master, &["--spawn"]);
        assert_eq!(r["spawned"], 2, "prefetch {prefetch}: {r}");
        assert!(r["first_answer_us"].as_u64().unwrap() > 0);
        let stats = tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(async { master.client().await.stats().await.unwrap() });
        assert_eq!(stats.children.spawned, 3, "prefetch {prefetch}");
    }
}

#[tokio::test]
async fn prefetched_jobs_survive_a_crash_and_a_kill() {
    let mut master = Master::ready(&[
        "--pool-start",
        "2",
        "--pool-max",
        "2",
        "--prefetch",
        "8",
        "--job-max",
        "1000",
    ]);
    let client = master.client().await;
    // Both children busy, then a crash with jobs prefetched behind it.
    let hold = client.submit("sleep", "300", Bytes::new()).unwrap();
    let crash = client.submit("crash", "", Bytes::new()).unwrap();
    let echoes: Vec<_> = (0..40)
        .map(|i| {
            (
                i,
                client.submit("echo", i.to_string(), Bytes::new()).unwrap(),
            )
        })
        .collect();
    match crash.finish().await {
        Err(taskmaster_tests::ClientError::Job(f)) => assert_eq!(f.reason, Reason::Error),
        other => panic!("{other:?}"),
    }
    hold.finish().await.unwrap();
    for (i, job) in echoes {
        assert_eq!(job.finish().await.unwrap().output, i.to_string().as_bytes());
    }
    // kill -9 of a child holding a running job and prefetched ones.
    wait_stats(&client, "pool back", |s| s.pool.idle == 2).await;
    let running: Vec<_> = (0..2)
        .map(|_| client.submit("sleep", "2000", Bytes::new()).unwrap())
        .collect();
    let behind: Vec<_> = (0..10)
        .map(|_| client.submit("pid", "", Bytes::new()).unwrap())
        .collect();
    wait_stats(&client, "both busy", |s| s.pool.busy == 2).await;
    let victim = master.children()[0];
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let mut errors = 0;
    for job in running {
        if job.finish().await.is_err() {
            errors += 1;
        }
    }
    assert_eq!(errors, 1, "exactly the killed child's running job fails");
    for job in behind {
        let pid = job
            .finish()
            .await
            .expect("prefetched jobs run elsewhere")
            .output;
        assert_ne!(pid, victim.to_string().as_bytes());
    }
}

/// Jobs prefetched *ahead of* a crash in one child's window: each answer
/// leaves the child before its next job starts (`crash` has never run
/// there, so nothing is held back before it), the jobs it finished are
/// completed, only the crash fails, and the crash runs once.
#[tokio::test]
async fn answers_before_a_crash_in_the_same_window_are_kept() {
    crash_amid_a_window(&[]).await;
}

/// A module known to be quick crashes while the child holds answers back
/// to share one write (the answer journal): the answers it held are read
/// from the journal, so the jobs it finished complete, only the crash fails,
/// and it runs once.
#[tokio::test]
async fn answers_held_back_survive_a_crash_through_the_journal() {
    // Both modules have run here and were quick: the child may hold
    // answers while either runs.
    crash_amid_a_window(&[("echo", "x", "x"), ("crash", "no", "no crash")]).await;
}

/// One child, after the `warm` jobs (module, input, output), is kept busy
/// by a 200 ms sleep while 8 echoes, a crash and 4 more echoes join its
/// window (`--prefetch 16`): every echo completes, only the crash fails
/// `error`, and it runs once.
async fn crash_amid_a_window(warm: &[(&str, &str, &str)]) {
    let master = Master::ready(&[
        "--pool-start",
        "1",
        "--pool-max",
        "1",
        "--prefetch",
        "16",
        "--job-max",
        "1000",
    ]);
    let client = master.client().await;
    for (module, input, out) in warm {
        let done = client
            .submit(module, input.to_string(), Bytes::new())
            .unwrap();
        assert_eq!(done.finish().await.unwrap().output, out.as_bytes());
    }
    let hold = client.submit("sleep", "200", Bytes::new()).unwrap();
    wait_stats(&client, "the child busy", |s| s.pool.busy == 1).await;
    let echo = |range: std::ops::Range<u32>| -> Vec<_> {
        range
            .map(|i| {
                let job = client.submit("echo", i.to_string(), Bytes::new()).unwrap();
                (i, job)
            })
            .collect()
    };
    let before = echo(0..8);
    let crash = client.submit("crash", "", Bytes::new()).unwrap();
    let after = echo(8..12);
    let submitted = warm.len() as u64 + 14;
    // Counted by the pool is sent to the child: `--prefetch 16` fills the
    // window as jobs arrive.
    wait_stats(&client, "all in the child's window", |s| {
        s.jobs.submitted == submitted
    })
    .await;
    hold.finish().await.unwrap();
    for (i, job) in before.into_iter().chain(after) {
        let out = job
            .finish()
            .await
            .unwrap_or_else(|e| panic!("echo {i}: {e:?}"));
        assert_eq!(out.output, i.to_string().as_bytes());
    }
    match crash.finish().await {
        Err(taskmaster_tests::ClientError::Job(f)) => assert_eq!(f.reason, Reason::Error),
        other => panic!("{other:?}"),
    }
    let stats = client.stats().await.unwrap();
    assert_eq!(stats.jobs.failed, 1, "only the crash: {stats:?}");
    assert_eq!(stats.children.exited, 1, "the crash ran once: {stats:?}");
}
