//! The command line: `submit` and `stats` with their exit codes, and bad
//! master flags (exit 2, one line, nothing spawned).

use bytes::Bytes;
use std::time::Duration;
use taskmaster_tests::{bin, cli, output_within, wait_stats, Master};

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test]
async fn submit_writes_the_response_and_exits_by_outcome() {
    let master = Master::ready(&["--pool-start", "1"]);
    let a = master.addr.as_str();

    let o = cli(&["submit", "--connect", a, "echo", "hello world"], b"");
    assert_eq!(
        (o.status.code(), stdout(&o).as_str()),
        (Some(0), "hello world")
    );

    // DATA omitted or '-': stdin, bytes unchanged.
    let o = cli(&["submit", "--connect", a, "echo"], b"from\nstdin\0");
    assert_eq!(o.stdout, b"from\nstdin\0");
    let o = cli(&["submit", "--connect", a, "sha256", "-"], b"abc");
    assert_eq!(
        stdout(&o),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );

    // Parts, then the response.
    let o = cli(&["submit", "--connect", a, "count", "3"], b"");
    assert_eq!(stdout(&o), "1\n2\n3\ndone\n");

    let o = cli(&["submit", "--connect", a, "fail", "no disk"], b"");
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stderr(&o).trim_end(), "failed: failed: no disk");
    assert!(o.stdout.is_empty());

    let o = cli(&["submit", "--connect", a, "nope", "x"], b"");
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).starts_with("failed: unknown-module: "),
        "{}",
        stderr(&o)
    );

    let o = cli(&["submit", "--connect", a, "crash"], b"");
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).starts_with("failed: error: "), "{}", stderr(&o));

    // Environment fallback for --connect.
    let o = std::process::Command::new(bin("taskmaster"))
        .args(["submit", "echo", "via env"])
        .env("TASKMASTER_CONNECT", a)
        .output()
        .unwrap();
    assert_eq!(stdout(&o), "via env");
}

#[tokio::test]
async fn submit_exits_75_on_overload() {
    let master = Master::ready(&["--pool-start", "1", "--pool-max", "1", "--job-max", "0"]);
    let client = master.client().await;
    let _busy = client.submit("sleep", "10000", Bytes::new()).unwrap();
    wait_stats(&client, "busy", |s| s.pool.busy == 1).await;
    let o = cli(&["submit", "--connect", &master.addr, "echo", "x"], b"");
    assert_eq!(o.status.code(), Some(75));
    assert!(
        stderr(&o).starts_with("failed: overload: "),
        "{}",
        stderr(&o)
    );
}

#[test]
fn submit_exits_2_without_a_master() {
    // A port nobody listens on: bind, note, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let o = cli(&["submit", "--connect", &addr, "echo", "x"], b"");
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("cannot connect"), "{}", stderr(&o));
    let o = cli(&["submit"], b"");
    assert_eq!(o.status.code(), Some(2), "missing MODULE is a usage error");
}

#[tokio::test]
async fn stats_prints_the_documented_json() {
    let master = Master::ready(&["--pool-start", "2", "--pool-max", "3", "--job-max", "7"]);
    master.client().await.do_task("echo", "x").await.unwrap();
    let o = cli(&["stats", "--connect", &master.addr], b"");
    assert_eq!(o.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for (section, keys) in [
        ("pool", &["start", "max", "size", "busy", "idle"][..]),
        ("queue", &["len", "max"][..]),
        (
            "jobs",
            &["submitted", "completed", "failed", "overload"][..],
        ),
    ] {
        for key in keys {
            assert!(v[section][key].is_u64(), "stats lacks {section}.{key}: {v}");
        }
    }
    assert_eq!(v["pool"]["start"], 2);
    assert_eq!(v["pool"]["max"], 3);
    assert_eq!(v["queue"]["max"], 7);
    assert_eq!(v["jobs"]["completed"], 1);
}

#[test]
fn bad_master_flags_exit_2_with_one_line_before_spawning() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    let not_exec = std::env::temp_dir().join(format!("taskmaster-not-exec-{}", std::process::id()));
    std::fs::write(&not_exec, "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(
        &not_exec,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let not_exec = not_exec.to_str().unwrap().to_owned();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--pool-start", "5", "--pool-max", "2"], "pool-start"),
        (vec!["--pool-max", "0"], "pool-max"),
        (vec!["--pool-start", "abc"], "pool-start"),
        (vec!["--listen", "not an address"], "not an address"),
        (vec!["--listen", &taken], &taken),
        (
            vec!["--handler", "/nonexistent/handler"],
            "/nonexistent/handler",
        ),
        (vec!["--handler", &not_exec], "not executable"),
        (vec!["--max-payload", "1"], "max-payload"),
        (vec!["--spin-us", "10001"], "spin-us"),
        (vec!["--spin-us=-5"], "spin-us"),
        (vec!["--grace=-1"], "grace"),
        (vec!["--grace", "soon"], "grace"),
        (vec!["--no-such-flag"], "no-such-flag"),
    ];
    for (args, needle) in cases {
        // Port 0 unless the case is about --listen, so a case that wrongly
        // starts a master cannot clash with anything.
        let mut cmd = std::process::Command::new(bin("taskmaster"));
        if !args.contains(&"--listen") {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        let o = output_within(cmd.args(&args), Duration::from_secs(10));
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: one line, got {err:?}");
        assert!(
            err.contains(needle),
            "{args:?}: {err:?} should mention {needle:?}"
        );
        assert!(!err.contains("child spawned"));
    }
}

#[test]
fn flags_read_environment_variables() {
    let o = output_within(
        std::process::Command::new(bin("taskmaster"))
            .args(["--listen", "127.0.0.1:0"])
            .env("TASKMASTER_POOL_START", "9")
            .env("TASKMASTER_POOL_MAX", "3"),
        Duration::from_secs(10),
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("--pool-start (9) must not exceed --pool-max (3)"),
        "{}",
        stderr(&o)
    );
}
