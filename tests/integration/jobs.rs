//! Job operations on the socket: detached submits, `status`, `result`,
//! start-later and `start`, `cancel`, `jobs`, with the Rust client and
//! with the `taskmaster` command line (output and exit codes).

use bytes::Bytes;
use std::time::{Duration, Instant};
use taskmaster_proto::jobs::JobRef;
use taskmaster_proto::{JobResult, JobStatus, SubmitOptions};
use taskmaster_tests::{
    bench_within, bin, cli, output_within, wait_stats, ClientError, Master, Reason,
};

fn detached() -> SubmitOptions {
    SubmitOptions::default()
}

fn start_later() -> SubmitOptions {
    SubmitOptions {
        start_later: true,
        ..SubmitOptions::default()
    }
}

async fn wait_status(client: &taskmaster_proto::Client, id: &str, want: JobStatus) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let st = client.status(id).await.unwrap().status;
        if st == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "job {id} is {st}, waited for {want}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn client_submit_detached_status_and_result() {
    let mut master = Master::ready(&["--pool-start", "1", "--pool-max", "1"]);
    let child = master.children()[0];
    let client = master.client().await;
    let job = client
        .submit_detached("sleep", "300", detached())
        .await
        .unwrap();
    assert!(
        job.id.starts_with(&format!("{}-", client.instance())),
        "{} has the master's instance prefix",
        job.id
    );
    assert!(
        matches!(job.status, JobStatus::Queued | JobStatus::Processing),
        "{job:?}"
    );
    let view = client.status(&job.id).await.unwrap();
    assert_eq!(
        (view.id.as_str(), view.module.as_str()),
        (job.id.as_str(), "sleep")
    );
    assert_eq!(view.finished_at, None);
    wait_status(&client, &job.id, JobStatus::Processing).await;
    // Not finished: Pending, at once with no wait.
    match client.result(&job.id, Duration::ZERO).await.unwrap() {
        JobResult::Pending(r) => assert_eq!(
            r,
            JobRef {
                id: job.id.clone(),
                status: JobStatus::Processing
            }
        ),
        other => panic!("expected pending, got {other:?}"),
    }
    let t = Instant::now();
    match client
        .result(&job.id, Duration::from_secs(10))
        .await
        .unwrap()
    {
        JobResult::Completed(out) => assert_eq!(out, child.to_string().as_bytes()),
        other => panic!("expected the response, got {other:?}"),
    }
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    let view = client.status(&job.id).await.unwrap();
    assert_eq!(view.status, JobStatus::Completed);
    assert!(
        view.started_at.is_some() && view.finished_at.is_some(),
        "{view:?}"
    );
    assert_eq!((view.reason, view.message), (None, None));

    // A sync submit is recorded too, under the id its answer carries.
    let done = client
        .submit("echo", "sync", Bytes::new())
        .unwrap()
        .finish()
        .await
        .unwrap();
    assert_eq!(
        client.status(&done.id).await.unwrap().status,
        JobStatus::Completed
    );
    match client.result(&done.id, Duration::ZERO).await.unwrap() {
        JobResult::Completed(out) => assert_eq!(out, "sync".as_bytes()),
        other => panic!("{other:?}"),
    }
    // A failed job's result is its failure.
    let f = client
        .submit_detached("fail", "nope", detached())
        .await
        .unwrap();
    match client.result(&f.id, Duration::from_secs(10)).await.unwrap() {
        JobResult::Failed(body) => {
            assert_eq!(
                (body.status, body.reason, body.message.as_str()),
                (JobStatus::Failed, Reason::Failed, "nope")
            )
        }
        other => panic!("{other:?}"),
    }
    // Bad and unknown ids.
    assert!(matches!(
        client.status("nope").await,
        Err(ClientError::Invalid(_))
    ));
    let unknown = format!("{}-999999", client.instance());
    assert!(matches!(
        client.status(&unknown).await,
        Err(ClientError::NotFound(_))
    ));
    assert!(matches!(
        client.result(&unknown, Duration::ZERO).await,
        Err(ClientError::NotFound(_))
    ));
}

#[tokio::test]
async fn client_start_later_then_start() {
    let master = Master::ready(&["--pool-start", "1"]);
    let client = master.client().await;
    let job = client
        .submit_detached("echo", "held", start_later())
        .await
        .unwrap();
    assert_eq!(job.status, JobStatus::StartLater);
    // Another job runs on the idle pool; the held one does not.
    assert_eq!(
        client.do_task("echo", "other").await.unwrap(),
        "other".as_bytes()
    );
    let view = client.status(&job.id).await.unwrap();
    assert_eq!(
        (view.status, view.started_at),
        (JobStatus::StartLater, None)
    );
    assert_eq!(client.stats().await.unwrap().jobs.start_later, 1);

    let started = client.start(&job.id).await.unwrap();
    assert_eq!(
        started,
        JobRef {
            id: job.id.clone(),
            status: JobStatus::Queued
        }
    );
    match client
        .result(&job.id, Duration::from_secs(10))
        .await
        .unwrap()
    {
        JobResult::Completed(out) => assert_eq!(out, "held".as_bytes()),
        other => panic!("{other:?}"),
    }
    match client.start(&job.id).await {
        Err(ClientError::Conflict(r)) => assert_eq!(
            r,
            JobRef {
                id: job.id.clone(),
                status: JobStatus::Completed
            }
        ),
        other => panic!("second start: {other:?}"),
    }
    assert_eq!(client.stats().await.unwrap().jobs.start_later, 0);
}

#[tokio::test]
async fn client_cancel_held_and_running_jobs() {
    let mut master = Master::ready(&["--pool-start", "1", "--pool-max", "1"]);
    let old = master.children();
    let client = master.client().await;
    let held = client
        .submit_detached("echo", "held", start_later())
        .await
        .unwrap();
    let c = client.cancel(&held.id).await.unwrap();
    assert_eq!(
        c,
        JobRef {
            id: held.id.clone(),
            status: JobStatus::Cancelled
        }
    );
    match client.cancel(&held.id).await {
        Err(ClientError::Conflict(r)) => assert_eq!(r.status, JobStatus::Cancelled),
        other => panic!("second cancel: {other:?}"),
    }
    match client.result(&held.id, Duration::ZERO).await.unwrap() {
        JobResult::Failed(f) => assert_eq!(
            (f.status, f.reason),
            (JobStatus::Cancelled, Reason::Cancelled)
        ),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        client.start(&held.id).await,
        Err(ClientError::Conflict(_))
    ));

    let running = client
        .submit_detached("sleep", "10000", detached())
        .await
        .unwrap();
    wait_status(&client, &running.id, JobStatus::Processing).await;
    // Someone waiting for it on another connection hears `cancelled`.
    let other = master.client().await;
    let id = running.id.clone();
    let waiter = tokio::spawn(async move { other.result(&id, Duration::from_secs(30)).await });
    let c = client.cancel(&running.id).await.unwrap();
    assert_eq!(c.status, JobStatus::Cancelled);
    match waiter.await.unwrap().unwrap() {
        JobResult::Failed(f) => {
            assert_eq!((f.id, f.reason), (running.id.clone(), Reason::Cancelled))
        }
        other => panic!("the waiter got {other:?}"),
    }
    let s = wait_stats(&client, "replacement child", |s| {
        s.pool.idle == 1 && s.children.spawned == 2
    })
    .await;
    assert_eq!(s.jobs.cancelled, 2);
    assert!(!taskmaster_tests::pid_alive(old[0]));
    assert_ne!(master.children(), old);
    let view = client.status(&running.id).await.unwrap();
    assert_eq!(
        (view.status, view.reason),
        (JobStatus::Cancelled, Some(Reason::Cancelled))
    );
}

#[tokio::test]
async fn client_jobs_lists_newest_first_with_a_filter() {
    let master = Master::ready(&["--pool-start", "2"]);
    let client = master.client().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let done = client
            .submit("echo", format!("{i}"), Bytes::new())
            .unwrap()
            .finish()
            .await
            .unwrap();
        ids.push(done.id);
    }
    let held_a = client
        .submit_detached("echo", "a", start_later())
        .await
        .unwrap()
        .id;
    ids.push(held_a.clone());
    let failed = match client.do_task("fail", "bad").await {
        Err(ClientError::Job(f)) => f.id,
        other => panic!("{other:?}"),
    };
    ids.push(failed.clone());
    let held_b = client
        .submit_detached("echo", "b", start_later())
        .await
        .unwrap()
        .id;
    ids.push(held_b.clone());

    let newest_first: Vec<String> = ids.iter().rev().cloned().collect();
    let all = client.jobs(100, None).await.unwrap();
    let listed: Vec<String> = all.jobs.iter().map(|j| j.id.clone()).collect();
    assert_eq!(listed, newest_first);
    let three = client.jobs(3, None).await.unwrap();
    let listed: Vec<String> = three.jobs.iter().map(|j| j.id.clone()).collect();
    assert_eq!(listed, newest_first[..3]);

    let held = client.jobs(100, Some(JobStatus::StartLater)).await.unwrap();
    let listed: Vec<&str> = held.jobs.iter().map(|j| j.id.as_str()).collect();
    assert_eq!(listed, [held_b.as_str(), held_a.as_str()]);
    let f = client.jobs(100, Some(JobStatus::Failed)).await.unwrap();
    assert_eq!(f.jobs.len(), 1);
    assert_eq!(
        (f.jobs[0].id.as_str(), f.jobs[0].reason),
        (failed.as_str(), Some(Reason::Failed))
    );
    assert_eq!(f.jobs[0].message.as_deref(), Some("bad"));
    let c = client.jobs(100, Some(JobStatus::Completed)).await.unwrap();
    assert_eq!(c.jobs.len(), 5);
    assert!(c
        .jobs
        .iter()
        .all(|j| j.module == "echo" && j.status == JobStatus::Completed));
    assert!(client
        .jobs(100, Some(JobStatus::Cancelled))
        .await
        .unwrap()
        .jobs
        .is_empty());
    // docs/protocol.md: a `Jobs` limit out of 1..=10000 is `Invalid`.
    for limit in [0, 10_001] {
        match client.jobs(limit, None).await {
            Err(ClientError::Invalid(_)) => {}
            other => panic!("jobs(limit {limit}) should be Invalid, got {other:?}"),
        }
    }
}

// ---- the command line ----

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `taskmaster submit --connect ADDR ARGS...`: (exit code, the id printed).
fn submit_id(addr: &str, args: &[&str]) -> String {
    let mut all = vec!["submit", "--connect", addr];
    all.extend_from_slice(args);
    let o = cli(&all, b"");
    assert_eq!(o.status.code(), Some(0), "{all:?}: {}", stderr(&o));
    let out = stdout(&o);
    assert_eq!(out.lines().count(), 1, "one line: {out:?}");
    let id = out.trim_end().to_owned();
    assert!(
        id.len() > 13
            && id.as_bytes()[12] == b'-'
            && id[..12].bytes().all(|b| b.is_ascii_hexdigit()),
        "{id:?} is a job id"
    );
    id
}

#[tokio::test]
async fn cli_async_submit_status_and_result() {
    let master = Master::ready(&["--pool-start", "1", "--pool-max", "1"]);
    let a = master.addr.as_str();
    let id = submit_id(a, &["--async", "echo", "hello\nbytes"]);
    let o = cli(&["status", "--connect", a, &id], b"");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("status prints JSON");
    assert_eq!(
        (v["id"].as_str(), v["module"].as_str()),
        (Some(id.as_str()), Some("echo"))
    );
    let o = cli(&["result", "--connect", a, &id, "--wait", "10"], b"");
    assert_eq!(
        (o.status.code(), o.stdout.as_slice()),
        (Some(0), &b"hello\nbytes"[..]),
        "{}",
        stderr(&o)
    );

    let slow = submit_id(a, &["--async", "sleep", "3000"]);
    let client = master.client().await;
    wait_status(&client, &slow, JobStatus::Processing).await;
    let o = cli(&["result", "--connect", a, &slow], b"");
    assert_eq!(o.status.code(), Some(75), "{}", stderr(&o));
    assert!(o.stdout.is_empty());
    assert_eq!(
        stderr(&o).trim_end(),
        format!("taskmaster: job {slow} is processing")
    );

    // A failed job's result: `failed: REASON: MESSAGE`, exit 1.
    let bad = submit_id(a, &["--async", "fail", "disk on fire"]);
    let o = cli(&["result", "--connect", a, &bad, "--wait", "10"], b"");
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stderr(&o).trim_end(), "failed: failed: disk on fire");
}

#[tokio::test]
async fn cli_start_later_start_and_cancel() {
    let master = Master::ready(&["--pool-start", "1"]);
    let a = master.addr.as_str();
    let id = submit_id(a, &["--start-later", "echo", "later"]);
    let client = master.client().await;
    assert_eq!(
        client.status(&id).await.unwrap().status,
        JobStatus::StartLater
    );
    let o = cli(&["start", "--connect", a, &id], b"");
    assert_eq!(
        (o.status.code(), stdout(&o)),
        (Some(0), format!("{id} queued\n")),
        "{}",
        stderr(&o)
    );
    let o = cli(&["start", "--connect", a, &id], b"");
    assert_eq!(o.status.code(), Some(1), "second start: {}", stderr(&o));
    let o = cli(&["result", "--connect", a, &id, "--wait", "10"], b"");
    assert_eq!((o.status.code(), stdout(&o).as_str()), (Some(0), "later"));

    let held = submit_id(a, &["--start-later", "echo", "never"]);
    let o = cli(&["cancel", "--connect", a, &held], b"");
    assert_eq!(
        (o.status.code(), stdout(&o)),
        (Some(0), format!("{held} cancelled\n")),
        "{}",
        stderr(&o)
    );
    let o = cli(&["cancel", "--connect", a, &held], b"");
    assert_eq!(o.status.code(), Some(1), "second cancel: {}", stderr(&o));
    assert!(stderr(&o).contains(&held), "{}", stderr(&o));
    let o = cli(&["result", "--connect", a, &held], b"");
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).starts_with("failed: cancelled: "),
        "{}",
        stderr(&o)
    );

    // `jobs`: a table naming every job, with its status.
    let o = cli(&["jobs", "--connect", a], b"");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let table = stdout(&o);
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "ID",
            "STATUS",
            "MODULE",
            "CREATED",
            "QUEUED_MS",
            "RAN_MS",
            "REASON"
        ]
    );
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows.len(), 2, "{table}");
    assert_eq!(
        rows[0][..3],
        [held.as_str(), "cancelled", "echo"],
        "newest first: {table}"
    );
    assert_eq!(rows[1][..3], [id.as_str(), "completed", "echo"], "{table}");
    let o = cli(
        &["jobs", "--connect", a, "--status", "cancelled", "--json"],
        b"",
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["jobs"].as_array().unwrap().len(), 1);
    assert_eq!(v["jobs"][0]["id"], held.as_str());
}

#[tokio::test]
async fn cli_job_commands_exit_codes() {
    let master = Master::ready(&["--pool-start", "1"]);
    let a = master.addr.as_str();
    let client = master.client().await;
    let unknown = format!("{}-999999", client.instance());
    for cmd in ["status", "result", "start", "cancel"] {
        let o = cli(&[cmd, "--connect", a, "not-an-id"], b"");
        assert_eq!(
            o.status.code(),
            Some(2),
            "{cmd} of a malformed id: {}",
            stderr(&o)
        );
        let o = cli(&[cmd, "--connect", a, &unknown], b"");
        assert_eq!(
            o.status.code(),
            Some(1),
            "{cmd} of an unknown id: {}",
            stderr(&o)
        );
        assert!(!stderr(&o).is_empty());
    }
    let t = Instant::now();
    let o = output_within(
        std::process::Command::new(bin("taskmaster")).args([
            "submit",
            "--connect",
            a,
            "--timeout",
            "0.2",
            "sleep",
            "3000",
        ]),
        Duration::from_secs(10),
    );
    let took = t.elapsed();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).starts_with("failed: timeout: "),
        "{}",
        stderr(&o)
    );
    assert!(
        took < Duration::from_secs(2),
        "the 0.2 s limit took {took:?}"
    );
    // Overload of a detached submit: 75.
    let busy = Master::ready(&["--pool-start", "1", "--pool-max", "1", "--job-max", "0"]);
    let b = busy.addr.as_str();
    let _running = submit_id(b, &["--async", "sleep", "5000"]);
    wait_stats(&busy.client().await, "busy", |s| s.pool.busy == 1).await;
    let o = cli(&["submit", "--connect", b, "--async", "echo", "x"], b"");
    assert_eq!(o.status.code(), Some(75), "{}", stderr(&o));
    assert!(
        stderr(&o).starts_with("failed: overload: "),
        "{}",
        stderr(&o)
    );
}

#[tokio::test]
async fn answered_jobs_are_kept_unless_forget_answered() {
    // Default: a job answered on its connection stays in the table.
    let master = Master::ready(&["--pool-start", "1"]);
    let client = master.client().await;
    let done = client
        .submit("echo", "kept", Bytes::new())
        .unwrap()
        .finish()
        .await
        .unwrap();
    let view = client.status(&done.id).await.expect("kept");
    assert_eq!(view.status, JobStatus::Completed);
    match client.result(&done.id, Duration::ZERO).await.unwrap() {
        JobResult::Completed(out) => assert_eq!(out, "kept"),
        other => panic!("{other:?}"),
    }

    // --forget-answered: tracked while it runs, gone once answered; a
    // detached job is kept as always.
    let master = Master::ready(&["--pool-start", "1", "--forget-answered"]);
    let client = master.client().await;
    let running = client.submit("sleep", "300", Bytes::new()).unwrap();
    let list = client.jobs(10, Some(JobStatus::Processing)).await.unwrap();
    let id = loop {
        // The submit is in flight: wait for it to be listed as running.
        if let Some(v) = list.jobs.first() {
            break v.id.clone();
        }
        let l = client.jobs(10, Some(JobStatus::Processing)).await.unwrap();
        if let Some(v) = l.jobs.first() {
            break v.id.clone();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    running.finish().await.unwrap();
    assert!(matches!(
        client.status(&id).await,
        Err(ClientError::NotFound(_))
    ));
    let detached = client
        .submit_detached("echo", "bg", SubmitOptions::default())
        .await
        .unwrap();
    match client
        .result(&detached.id, Duration::from_secs(10))
        .await
        .unwrap()
    {
        JobResult::Completed(out) => assert_eq!(out, "bg"),
        other => panic!("{other:?}"),
    }
}

/// The job table keeps records in a ring by job number; one that outstays
/// 65,536 newer numbers moves to a side map. A `start-later` job held while
/// 70,000 others come and go must still be found, started and answered, and
/// outcomes past `--keep-results` still go.
#[tokio::test]
async fn a_job_held_while_70000_others_pass_is_still_found_and_answered() {
    let master = Master::ready(&[
        "--pool-start",
        "2",
        "--pool-max",
        "2",
        "--keep-results",
        "100",
    ]);
    let client = master.client().await;
    let held = client
        .submit_detached("echo", "held", start_later())
        .await
        .unwrap();
    let report = bench_within(
        &master,
        &["--jobs", "70000", "--clients", "2", "--pipeline", "50"],
        Duration::from_secs(240),
    );
    assert_eq!(report["completed"], 70000, "{report}");
    assert_eq!(
        client.status(&held.id).await.unwrap().status,
        JobStatus::StartLater
    );
    // The table kept 100 outcomes and the held job, not 70,000.
    let kept = client.jobs(10_000, None).await.unwrap().jobs;
    assert_eq!(kept.len(), 101, "{} jobs listed", kept.len());
    assert_eq!(kept.iter().filter(|v| v.id == held.id).count(), 1);
    client.start(&held.id).await.unwrap();
    match client
        .result(&held.id, Duration::from_secs(10))
        .await
        .unwrap()
    {
        JobResult::Completed(out) => assert_eq!(out, "held"),
        other => panic!("{other:?}"),
    }
}
