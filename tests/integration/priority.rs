//! Priorities and retries (SPEC section 16) on the real master: high jobs
//! start before earlier low ones; an idempotent job whose first run kills
//! its child, or passes its time limit, completes on a retry; a job that
//! kills every child is quarantined as "poison job" after 3 and the pool
//! stays healthy.

use crate::supervision::write_script;
use bytes::Bytes;
use std::path::{Path, PathBuf};
use std::time::Duration;
use taskmaster_proto::{ClientError, JobResult, JobStatus, Priority, Reason, SubmitOptions};
use taskmaster_tests::{cli, wait_stats, wait_until_async, Master};

fn module_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("taskmaster-prio-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("modules")).unwrap();
    dir
}

fn start(dir: &Path, more: &[&str]) -> Master {
    let modules = dir.join("modules");
    let mut args = vec!["--exec-dir", modules.to_str().unwrap()];
    args.extend_from_slice(more);
    Master::ready(&args)
}

fn options(priority: Priority, retries: u32) -> SubmitOptions {
    SubmitOptions {
        priority,
        retries,
        ..SubmitOptions::default()
    }
}

#[tokio::test]
async fn high_priority_jobs_start_before_earlier_low_ones() {
    let dir = module_dir("order");
    let log = dir.join("order");
    write_script(
        &dir.join("modules/mark.sh"),
        &format!(
            "#!/bin/sh\ncat >> {}\necho >> {}\n",
            log.display(),
            log.display()
        ),
    );
    let master = start(
        &dir,
        &["--pool-start", "1", "--pool-max", "1", "--prefetch", "1"],
    );
    let client = master.client().await;
    // One child, kept busy while the others queue.
    let blocker = client
        .submit_detached("sleep", "700", SubmitOptions::default())
        .await
        .unwrap()
        .id;
    wait_until_async("the blocker to run", Duration::from_secs(10), || async {
        client.status(&blocker).await.unwrap().status == JobStatus::Processing
    })
    .await;
    let mut ids = Vec::new();
    for (label, priority) in [
        ("low-1", Priority::Low),
        ("normal-1", Priority::Normal),
        ("low-2", Priority::Low),
        ("high-1", Priority::High),
        ("normal-2", Priority::Normal),
    ] {
        let id = client
            .submit_detached("mark", label, options(priority, 0))
            .await
            .unwrap()
            .id;
        ids.push(id);
    }
    // The CLI's --priority too.
    let o = cli(
        &[
            "submit",
            "--connect",
            &master.addr,
            "--async",
            "--priority",
            "high",
            "mark",
            "high-2",
        ],
        b"",
    );
    assert!(o.status.success(), "{o:?}");
    ids.push(String::from_utf8(o.stdout).unwrap().trim().to_owned());
    for id in &ids {
        match client.result(id, Duration::from_secs(20)).await.unwrap() {
            JobResult::Completed(_) => {}
            other => panic!("{id}: {other:?}"),
        }
    }
    let order = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        order.lines().collect::<Vec<_>>(),
        ["high-1", "high-2", "normal-1", "normal-2", "low-1", "low-2"]
    );
}

#[tokio::test]
async fn an_idempotent_job_completes_on_retry_after_a_death_or_a_time_limit() {
    let dir = module_dir("retry");
    // First run: kill the child running it (its parent), or hang past the
    // time limit; later runs answer.
    write_script(
        &dir.join("modules/flaky.sh"),
        &format!(
            "#!/bin/sh\nread how\nif mkdir {}/ran-$how 2>/dev/null; then\n  [ \"$how\" = die ] && kill -9 $PPID\n  sleep 30\nfi\necho \"ok $how\"\n",
            dir.display()
        ),
    );
    let master = start(&dir, &["--pool-start", "2", "--pool-max", "2"]);
    let client = master.client().await;

    let out = client
        .submit_with("flaky", "die", Bytes::new(), options(Priority::Normal, 1))
        .unwrap()
        .finish()
        .await
        .expect("completes on its retry");
    assert_eq!(&out.output[..], b"ok die\n");

    let out = client
        .submit_with(
            "flaky",
            "hang",
            Bytes::new(),
            SubmitOptions {
                timeout_ms: Some(500),
                ..options(Priority::Normal, 1)
            },
        )
        .unwrap()
        .finish()
        .await
        .expect("completes on its retry");
    assert_eq!(&out.output[..], b"ok hang\n");

    let stats = wait_stats(&client, "two retries counted", |s| s.jobs.retried == 2).await;
    assert_eq!(stats.jobs.poisoned, 0);
    assert_eq!(stats.jobs.completed, 2);
}

#[tokio::test]
async fn a_job_that_kills_every_child_is_quarantined_as_poison() {
    let master = Master::ready(&["--pool-start", "2", "--pool-max", "2"]);
    let client = master.client().await;
    let failure = match client
        .submit_with("crash", "", Bytes::new(), options(Priority::Normal, 10))
        .unwrap()
        .finish()
        .await
    {
        Err(ClientError::Job(f)) => f,
        other => panic!("expected a failure, got {other:?}"),
    };
    assert_eq!(failure.reason, Reason::Error);
    assert!(
        failure
            .message
            .starts_with("poison job: it killed 3 children"),
        "{}",
        failure.message
    );
    let stats = wait_stats(&client, "the pool whole again", |s| {
        s.pool.size == 2 && s.pool.idle == 2
    })
    .await;
    assert_eq!((stats.jobs.retried, stats.jobs.poisoned), (2, 1));
    assert!(stats.children.exited >= 3, "{stats:?}");
    assert_eq!(stats.children.startup_failures, 0);
    assert_eq!(&client.do_task("echo", "fine").await.unwrap()[..], b"fine");
    // Listed with the failed jobs.
    let o = cli(
        &["jobs", "--connect", &master.addr, "--status", "failed"],
        b"",
    );
    assert!(o.status.success(), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(&failure.id),
        "{o:?}"
    );
}
