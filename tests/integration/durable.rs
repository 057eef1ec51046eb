//! `--state-dir` (SPEC section 13) with real processes: detached, queued
//! and start-later jobs survive `kill -9` of the master and a restart on
//! the same directory; the job that was running fails and never runs
//! again; a clean shutdown keeps waiting jobs for the next master;
//! retention applies on disk; a second master and a corrupt store exit 2.

use crate::supervision::write_script;
use nix::sys::signal::Signal;
use std::path::{Path, PathBuf};
use std::time::Duration;
use taskmaster_proto::{Client, ClientError, JobResult, JobStatus, Reason, SubmitOptions};
use taskmaster_tests::{bin, output_within, pid_alive, wait_until, Master};

fn fresh_dir(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("taskmaster-durable-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A module directory with `mark`: appends its job id to `runs` (one line
/// per run), sleeps the seconds it is given, answers `ran ID`.
fn mark_module(dir: &Path) -> (PathBuf, PathBuf) {
    let modules = dir.join("modules");
    std::fs::create_dir_all(&modules).unwrap();
    let runs = dir.join("runs");
    write_script(
        &modules.join("mark.sh"),
        &format!(
            "#!/bin/sh\nread secs\necho \"$TASKMASTER_JOB_ID\" >> {}\nsleep \"$secs\"\nprintf 'ran %s' \"$TASKMASTER_JOB_ID\"\n",
            runs.display()
        ),
    );
    (modules, runs)
}

fn runs(file: &Path) -> Vec<String> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn start(state: &Path, modules: &Path, more: &[&str]) -> Master {
    let mut args = vec![
        "--state-dir",
        state.to_str().unwrap(),
        "--exec-dir",
        modules.to_str().unwrap(),
        "--pool-start",
        "1",
        "--pool-max",
        "1",
    ];
    args.extend_from_slice(more);
    Master::start(&args)
}

async fn detached(client: &Client, module: &str, input: &str, later: bool) -> String {
    let options = SubmitOptions {
        start_later: later,
        ..SubmitOptions::default()
    };
    client
        .submit_detached(module, input.to_owned(), options)
        .await
        .expect("detached submit")
        .id
}

async fn outcome(client: &Client, id: &str) -> Result<String, (Reason, String)> {
    match client
        .result(id, Duration::from_secs(20))
        .await
        .expect("result")
    {
        JobResult::Completed(out) => Ok(String::from_utf8_lossy(&out).into_owned()),
        JobResult::Failed(f) => Err((f.reason, f.message)),
        JobResult::Pending(r) => panic!("{id} still {}", r.status),
    }
}

// Multi-threaded: the test waits on files while the client's task runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_survive_kill_9_and_a_restart_as_spec_13_says() {
    let dir = fresh_dir("kill9");
    let state = dir.join("state");
    let (modules, log) = mark_module(&dir);
    let mut master = start(&state, &modules, &[]);
    let client = master.client().await;

    let done = detached(&client, "mark", "0", false).await;
    assert_eq!(
        outcome(&client, &done).await.unwrap(),
        format!("ran {done}")
    );
    let running = detached(&client, "mark", "30", false).await;
    wait_until("the long job to start", Duration::from_secs(10), || {
        runs(&log).contains(&running)
    });
    let mut queued = Vec::new();
    for _ in 0..3 {
        queued.push(detached(&client, "mark", "0", false).await);
    }
    let held = detached(&client, "mark", "0", true).await;
    let children = master.children();

    master.signal(Signal::SIGKILL);
    master.wait_exit(Duration::from_secs(5));
    wait_until("the old children to die", Duration::from_secs(2), || {
        children.iter().all(|&pid| !pid_alive(pid))
    });
    drop(client);

    let master = start(&state, &modules, &[]);
    let client = master.client().await;
    assert_eq!(
        outcome(&client, &done).await.unwrap(),
        format!("ran {done}")
    );
    assert_eq!(
        outcome(&client, &running).await,
        Err((
            Reason::Error,
            "the master restarted while the job ran".into()
        ))
    );
    for id in &queued {
        assert_eq!(outcome(&client, id).await.unwrap(), format!("ran {id}"));
    }
    assert_eq!(
        client.status(&held).await.unwrap().status,
        JobStatus::StartLater
    );
    client.start(&held).await.unwrap();
    assert_eq!(
        outcome(&client, &held).await.unwrap(),
        format!("ran {held}")
    );

    // Each ran once, the killed one never again, the queue in its order.
    let mut expected = vec![done.clone(), running.clone()];
    expected.extend(queued.iter().cloned());
    expected.push(held.clone());
    assert_eq!(runs(&log), expected);

    // Ids go on from where they were, same prefix: none repeats.
    let next = detached(&client, "mark", "0", false).await;
    let number = |id: &str| id.rsplit('-').next().unwrap().parse::<u64>().unwrap();
    assert_eq!(next.split('-').next(), held.split('-').next());
    assert!(number(&next) > number(&held), "{next} after {held}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_shutdown_keeps_waiting_jobs_for_the_next_master() {
    let dir = fresh_dir("drain");
    let state = dir.join("state");
    let (modules, log) = mark_module(&dir);
    let mut master = start(&state, &modules, &[]);
    let client = master.client().await;
    let running = detached(&client, "mark", "1", false).await;
    wait_until("the first job to start", Duration::from_secs(10), || {
        runs(&log).contains(&running)
    });
    let waiting = detached(&client, "mark", "0", false).await;
    let held = detached(&client, "mark", "0", true).await;
    master.signal(Signal::SIGTERM);
    assert!(master.wait_exit(Duration::from_secs(10)).success());
    drop(client);

    let master = start(&state, &modules, &[]);
    let client = master.client().await;
    // The running one finished within the grace period; the waiting one
    // runs now instead of failing `shutting-down`; the held one is held.
    assert_eq!(
        outcome(&client, &running).await.unwrap(),
        format!("ran {running}")
    );
    assert_eq!(
        outcome(&client, &waiting).await.unwrap(),
        format!("ran {waiting}")
    );
    assert_eq!(
        client.status(&held).await.unwrap().status,
        JobStatus::StartLater
    );
}

#[tokio::test]
async fn retention_applies_on_disk() {
    let dir = fresh_dir("retention");
    let state = dir.join("state");
    let (modules, _) = mark_module(&dir);
    let mut master = start(&state, &modules, &["--keep-results", "3"]);
    let client = master.client().await;
    let mut ids = Vec::new();
    for _ in 0..8 {
        let id = detached(&client, "echo", "x", false).await;
        outcome(&client, &id).await.unwrap();
        ids.push(id);
    }
    master.signal(Signal::SIGKILL);
    master.wait_exit(Duration::from_secs(5));
    drop(client);

    let master = start(&state, &modules, &["--keep-results", "3"]);
    let client = master.client().await;
    for (n, id) in ids.iter().enumerate() {
        let r = client.status(id).await;
        if n < 5 {
            assert!(matches!(r, Err(ClientError::NotFound(_))), "{id}: {r:?}");
        } else {
            assert_eq!(r.unwrap().status, JobStatus::Completed, "{id}");
        }
    }
}

fn master_exit(state: &Path) -> (Option<i32>, String) {
    let o = output_within(
        std::process::Command::new(bin("taskmaster"))
            .args(["--listen", "127.0.0.1:0", "--handler"])
            .arg(bin("taskmaster-handler"))
            .arg("--state-dir")
            .arg(state),
        Duration::from_secs(20),
    );
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[tokio::test]
async fn a_second_master_on_the_same_dir_and_a_corrupt_store_exit_2() {
    let dir = fresh_dir("exclusive");
    let state = dir.join("state");
    let (modules, _) = mark_module(&dir);
    let mut master = start(&state, &modules, &[]);
    let client = master.client().await;
    let id = detached(&client, "echo", "kept", false).await;
    outcome(&client, &id).await.unwrap();

    let (code, err) = master_exit(&state);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("another master uses it"), "{err}");
    assert!(err.contains(&format!("pid {}", master.pid)), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");

    master.signal(Signal::SIGTERM);
    assert!(master.wait_exit(Duration::from_secs(10)).success());
    drop(client);

    let file = state.join("jobs.redb");
    let good = std::fs::read(&file).unwrap();
    // The header overwritten, then everything past the first page.
    let damages: [fn(&mut Vec<u8>); 2] = [|b| b[..512].fill(b'!'), |b| b[4096..].fill(0xff)];
    for damage in damages {
        let mut bad = good.clone();
        damage(&mut bad);
        std::fs::write(&file, &bad).unwrap();
        let (code, err) = master_exit(&state);
        assert_eq!(code, Some(2), "{err}");
        assert!(err.contains(&file.display().to_string()), "{err}");
        assert!(err.contains("left as it was"), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            std::fs::read(&file).unwrap() == bad,
            "the store was changed"
        );
    }
    // The good bytes back: the kept outcome is there.
    std::fs::write(&file, &good).unwrap();
    let master = start(&state, &modules, &[]);
    let client = master.client().await;
    assert_eq!(outcome(&client, &id).await.unwrap(), "kept");
}
