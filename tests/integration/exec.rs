//! Executable modules (`--exec-dir`, SPEC section 12) on the real master
//! and stock handler: input, output, parts on fd 3, failures, environment,
//! time limit and cancel killing what the program started, dying with a
//! killed master, and the start-up checks that exit 2.

use crate::supervision::write_script;
use bytes::Bytes;
use std::path::{Path, PathBuf};
use std::time::Duration;
use taskmaster_proto::{ClientError, JobEvent, Reason, SubmitOptions};
use taskmaster_tests::{bin, output_within, pid_alive, wait_until, Master};

/// A fresh directory for one test's modules.
fn module_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("taskmaster-exec-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn start(dir: &Path, more: &[&str]) -> Master {
    let mut args = vec!["--exec-dir", dir.to_str().unwrap()];
    args.extend_from_slice(more);
    Master::start(&args)
}

fn failure(r: Result<Bytes, ClientError>) -> taskmaster_proto::JobFailure {
    match r {
        Err(ClientError::Job(f)) => f,
        other => panic!("expected a job failure, got {other:?}"),
    }
}

/// The pid a script wrote to `file`, once it is there.
fn pid_in(file: &Path) -> u32 {
    let mut pid = 0;
    wait_until(
        "the program to write its pid",
        Duration::from_secs(10),
        || {
            pid = std::fs::read_to_string(file)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0);
            pid != 0
        },
    );
    pid
}

#[tokio::test]
async fn a_shell_script_is_a_module_with_parts_environment_and_failures() {
    let dir = module_dir("script");
    write_script(
        &dir.join("shout.sh"),
        "#!/bin/sh\necho first >&3\nprintf 'id=%s module=%s\\n' \"$TASKMASTER_JOB_ID\" \"$TASKMASTER_MODULE\" >&3\nprintf unterminated >&3\ntr a-z A-Z\n",
    );
    write_script(&dir.join("env.py"), "#!/bin/sh\nexec env\n");
    write_script(
        &dir.join("bad.sh"),
        "#!/bin/sh\necho 'this line scrolls away' >&2\nhead -c 20000 /dev/zero | tr '\\0' x >&2\necho >&2\necho 'disk on fire' >&2\nexit 3\n",
    );
    write_script(&dir.join("term.sh"), "#!/bin/sh\nkill -TERM $$\n");
    write_script(&dir.join("big.sh"), "#!/bin/sh\nhead -c 5000 /dev/zero\n");
    write_script(&dir.join("deaf.sh"), "#!/bin/sh\necho ok\n");
    // Leaves a process holding its stdout, stderr and fd 3.
    write_script(&dir.join("daemon.sh"), "#!/bin/sh\nsleep 1000 &\necho $!\n");
    // Not modules: not executable, hidden.
    std::fs::write(dir.join("notes.txt"), "hello").unwrap();
    write_script(&dir.join(".hidden.sh"), "#!/bin/sh\necho no\n");

    let mut cmd = std::process::Command::new(bin("taskmaster"));
    cmd.args(["--listen", "127.0.0.1:0", "--handler"])
        .arg(bin("taskmaster-handler"))
        .args(["--exec-dir", dir.to_str().unwrap(), "--max-payload", "4096"])
        .env("TASKMASTER_TOKEN", "s3cret-token")
        .env("CANARY_FROM_MASTER", "leaked");
    let master = Master::launch_cmd(cmd);
    let client =
        taskmaster_proto::Client::connect(master.addr.as_str(), Some("s3cret-token".into()))
            .await
            .unwrap();

    // Input on stdin, response from stdout, each fd-3 line a part, in order.
    let id = client
        .submit_detached("shout", "hello", SubmitOptions::default())
        .await
        .unwrap()
        .id;
    let mut handle = client.submit("shout", "again", Bytes::new()).unwrap();
    let mut parts = Vec::new();
    let done = loop {
        match handle.next_event().await.unwrap() {
            JobEvent::Part(p) => parts.push(String::from_utf8(p.to_vec()).unwrap()),
            JobEvent::Completed(c) => break c,
            JobEvent::Failed(f) => panic!("shout failed: {f:?}"),
        }
    };
    assert_eq!(&done.output[..], b"AGAIN");
    assert_eq!(parts.len(), 3, "{parts:?}");
    assert_eq!(parts[0], "first\n");
    assert_eq!(parts[1], format!("id={} module=shout\n", done.id));
    assert_eq!(parts[2], "unterminated");
    match client.result(&id, Duration::from_secs(10)).await.unwrap() {
        taskmaster_proto::JobResult::Completed(out) => assert_eq!(&out[..], b"HELLO"),
        other => panic!("detached shout: {other:?}"),
    }

    // Nothing of the master's environment: no token, no other variable.
    let env = client.do_task("env", "").await.unwrap();
    let env = String::from_utf8_lossy(&env);
    let names: Vec<&str> = env.lines().filter_map(|l| l.split('=').next()).collect();
    for name in &names {
        assert!(
            [
                "PATH",
                "TASKMASTER_JOB_ID",
                "TASKMASTER_MODULE",
                "PWD",
                "SHLVL",
                "_"
            ]
            .contains(name),
            "{name} leaked into a module's environment: {env}"
        );
    }
    assert!(
        !env.contains("s3cret-token") && !env.contains("leaked"),
        "{env}"
    );
    assert!(env.contains("TASKMASTER_MODULE=env\n"), "{env}");

    // Exit status: failed, with the end of stderr.
    let f = failure(client.do_task("bad", "").await);
    assert_eq!(f.reason, Reason::Failed);
    assert!(
        f.message.starts_with("bad exited with status 3: "),
        "{}",
        &f.message[..80]
    );
    assert!(
        f.message.ends_with("disk on fire"),
        "{:?}",
        &f.message[f.message.len() - 80..]
    );
    assert!(!f.message.contains("scrolls away"));
    assert!(f.message.len() <= taskmaster_proto::codec::MAX_MESSAGE);

    // A signal: failed, naming it.
    let f = failure(client.do_task("term", "").await);
    assert_eq!(f.reason, Reason::Failed);
    assert!(f.message.contains("SIGTERM"), "{}", f.message);

    // A response over --max-payload fails; a program that never reads a
    // large input still completes.
    let f = failure(client.do_task("big", "").await);
    assert_eq!(f.reason, Reason::Failed);
    assert!(
        f.message.contains("exceeds the limit of 4096"),
        "{}",
        f.message
    );
    let out = client.do_task("deaf", vec![b'x'; 4000]).await.unwrap();
    assert_eq!(&out[..], b"ok\n");

    // The job ends when the program exits, and what it left running is
    // killed, though it held the program's pipes.
    let started = std::time::Instant::now();
    let out = client.do_task("daemon", "").await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    let leftover: u32 = String::from_utf8_lossy(&out).trim().parse().unwrap();
    wait_until(
        "the leftover process to be killed",
        Duration::from_secs(2),
        || !pid_alive(leftover),
    );

    for module in ["notes", "hidden", ".hidden"] {
        let f = failure(client.do_task(module, "").await);
        assert_eq!(f.reason, Reason::UnknownModule, "{module}");
    }
    // The built-in modules still run beside them.
    assert_eq!(&client.do_task("echo", "hi").await.unwrap()[..], b"hi");
}

/// The time limit and cancel kill the program and what it started; the
/// child is replaced and the next job runs.
// Multi-threaded: the test blocks on files while the client's task runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_limit_and_cancel_kill_the_programs_process_group() {
    let dir = module_dir("group");
    write_script(
        &dir.join("hang.sh"),
        "#!/bin/sh\nread f\nsleep 1000 &\necho $! > \"$f.tmp\"\nmv \"$f.tmp\" \"$f\"\nwait\n",
    );
    write_script(&dir.join("cat.sh"), "#!/bin/sh\nexec cat\n");
    let master = start(&dir, &["--pool-start", "1", "--pool-max", "1"]);
    let client = master.client().await;

    // Input and output far beyond a pipe's buffer, both ways at once.
    let big: Vec<u8> = (0..3 << 20).map(|i: u32| (i % 251) as u8).collect();
    assert_eq!(client.do_task("cat", big.clone()).await.unwrap(), big);

    let pid_file = dir.join("timeout.pid");
    let job = client
        .submit_with(
            "hang",
            format!("{}\n", pid_file.display()),
            Bytes::new(),
            SubmitOptions {
                timeout_ms: Some(SubmitOptions::timeout_ms(Duration::from_millis(1500))),
                ..SubmitOptions::default()
            },
        )
        .unwrap();
    let sleeper = pid_in(&pid_file);
    assert!(pid_alive(sleeper));
    let f = match job.finish().await {
        Err(ClientError::Job(f)) => f,
        other => panic!("expected timeout, got {other:?}"),
    };
    assert_eq!(f.reason, Reason::Timeout);
    wait_until(
        "the timed-out program's own child to die",
        Duration::from_secs(2),
        || !pid_alive(sleeper),
    );

    let pid_file = dir.join("cancel.pid");
    let id = client
        .submit_detached(
            "hang",
            format!("{}\n", pid_file.display()),
            SubmitOptions::default(),
        )
        .await
        .unwrap()
        .id;
    let sleeper = pid_in(&pid_file);
    client.cancel(&id).await.unwrap();
    wait_until(
        "the cancelled program's own child to die",
        Duration::from_secs(2),
        || !pid_alive(sleeper),
    );
    assert_eq!(&client.do_task("echo", "next").await.unwrap()[..], b"next");
}

/// `kill -9` of the master: the program running a job dies with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_program_dies_with_a_killed_master() {
    let dir = module_dir("orphan");
    write_script(
        &dir.join("hang.sh"),
        "#!/bin/sh\nread f\necho $$ > \"$f.tmp\"\nmv \"$f.tmp\" \"$f\"\nexec sleep 1000\n",
    );
    let mut master = start(&dir, &["--pool-start", "1", "--pool-max", "1"]);
    let client = master.client().await;
    let pid_file = dir.join("program.pid");
    let _job = client
        .submit("hang", format!("{}\n", pid_file.display()), Bytes::new())
        .unwrap();
    let program = pid_in(&pid_file);
    master.signal(nix::sys::signal::Signal::SIGKILL);
    master.wait_exit(Duration::from_secs(5));
    wait_until(
        "the program to die with the master",
        Duration::from_secs(1),
        || !pid_alive(program),
    );
}

/// Each way `--exec-dir` cannot work exits 2 with one line naming it.
#[test]
fn bad_exec_dirs_exit_2_naming_the_problem() {
    let clash = module_dir("clash");
    write_script(&clash.join("resize.sh"), "#!/bin/sh\n");
    write_script(&clash.join("resize.py"), "#!/bin/sh\n");
    let builtin = module_dir("builtin");
    write_script(&builtin.join("echo.sh"), "#!/bin/sh\n");
    let file = module_dir("file").join("plain");
    std::fs::write(&file, "").unwrap();
    let cases: Vec<(PathBuf, Vec<String>)> = vec![
        (
            clash.clone(),
            vec![
                clash.join("resize.py").display().to_string(),
                clash.join("resize.sh").display().to_string(),
            ],
        ),
        (
            builtin.clone(),
            vec![
                builtin.join("echo.sh").display().to_string(),
                "built-in".into(),
            ],
        ),
        (
            PathBuf::from("/nonexistent/modules"),
            vec!["/nonexistent/modules".into(), "No such file".into()],
        ),
        (
            file.clone(),
            vec![file.display().to_string(), "Not a directory".into()],
        ),
    ];
    for (dir, needles) in cases {
        let o = output_within(
            std::process::Command::new(bin("taskmaster"))
                .args(["--listen", "127.0.0.1:0", "--handler"])
                .arg(bin("taskmaster-handler"))
                .arg("--exec-dir")
                .arg(&dir),
            Duration::from_secs(20),
        );
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{}: {err}", dir.display());
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        for needle in needles {
            assert!(err.contains(&needle), "{err:?} should name {needle:?}");
        }
        assert!(!err.contains("listening"), "{err}");
    }
    // The environment variable works like the flag.
    let o = output_within(
        std::process::Command::new(bin("taskmaster"))
            .args(["--listen", "127.0.0.1:0", "--handler"])
            .arg(bin("taskmaster-handler"))
            .env("TASKMASTER_EXEC_DIR", &clash),
        Duration::from_secs(20),
    );
    assert_eq!(o.status.code(), Some(2));
}
