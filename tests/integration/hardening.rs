//! Hardening (issue 6): the bad inputs `wire` does not already cover, each
//! with its exact outcome, and after each the master still up and another
//! client's job completing. Replayed and stolen child secrets, a child that
//! answers for a job it does not hold, client tokens on the socket, the CLI
//! (`--token-file` on every client command) and HTTP, a client that never
//! reads its 10,000 answers, 500 idle connections (silent and welcomed),
//! `--max-connections`, `--client-idle-timeout`, non-loopback binds without
//! a token, and a 1-byte-per-100-ms writer.
//!
//! Child secrets are captured with a spy handler: a shell script that saves
//! the 32 bytes the master writes on its stdin (and its pid) in a scratch
//! directory, then waits for a `go` file and execs the real test handler
//! with the saved secret as stdin (same pid, so the master cannot tell).
//! With a `fake.ID` file it execs `sleep` instead, and the test speaks for
//! that child on a raw socket.

use bytes::Bytes;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};
use taskmaster_proto::codec;
use taskmaster_proto::messages::{
    ClientHello, FromHandler, HandlerHello, Hello, Message, ToClient, ToHandler, ToMaster,
    PROTOCOL_VERSION, SECRET_LEN,
};
use taskmaster_tests::{
    bin, children_of, http_with_headers, output_within, pid_alive, vm_rss_kib, wait_stats,
    wait_until, Client, ClientError, Master, Reason,
};

/// A scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!(
            "taskmaster-hardening-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Scratch(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Writes a token file (token and a line end); returns its path.
    fn token_file(&self, token: &str) -> String {
        let path = self.path("token");
        std::fs::write(&path, format!("{token}\n")).expect("token file");
        path.to_str().expect("utf-8 path").to_owned()
    }

    /// Writes `text` to the file `name`; returns its path.
    fn write(&self, name: &str, text: &str) -> String {
        let path = self.path(name);
        std::fs::write(&path, text).expect("scratch file");
        path.to_str().expect("utf-8 path").to_owned()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A handler program that shows the test each child's pid and secret.
struct Spy {
    dir: Scratch,
    script: PathBuf,
}

impl Spy {
    fn new(name: &str) -> Spy {
        use std::os::unix::fs::PermissionsExt;
        let dir = Scratch::new(name);
        let script = dir.path("spy-handler.sh");
        let text = format!(
            r#"#!/bin/sh
dir='{dir}'
id=
prev=
for a in "$@"; do
  if [ "$prev" = --child-id ]; then id=$a; fi
  prev=$a
done
cat > "$dir/secret.$id.tmp" && mv "$dir/secret.$id.tmp" "$dir/secret.$id"
echo $$ > "$dir/pid.$id.tmp" && mv "$dir/pid.$id.tmp" "$dir/pid.$id"
if [ -e "$dir/fake.$id" ]; then exec sleep 600; fi
while [ ! -e "$dir/go" ]; do sleep 0.02; done
exec '{handler}' "$@" < "$dir/secret.$id"
"#,
            dir = dir.0.display(),
            handler = bin("taskmaster-test-handler").display()
        );
        std::fs::write(&script, text).expect("spy script");
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        Spy { dir, script }
    }

    /// Lets children past the gate (to exec the real handler).
    fn go(&self) {
        std::fs::write(self.dir.path("go"), b"").unwrap();
    }

    /// Child `id` will be a `sleep` the test speaks for.
    fn fake(&self, id: u64) {
        std::fs::write(self.dir.path(&format!("fake.{id}")), b"").unwrap();
    }

    /// Child `id`'s pid and secret, once its script has saved them.
    fn child(&self, id: u64) -> (u32, [u8; SECRET_LEN]) {
        let pid_file = self.dir.path(&format!("pid.{id}"));
        wait_until(
            &format!("child {id} to save its secret"),
            Duration::from_secs(10),
            || pid_file.exists(),
        );
        let pid = std::fs::read_to_string(&pid_file).unwrap();
        let secret = std::fs::read(self.dir.path(&format!("secret.{id}"))).unwrap();
        (
            pid.trim().parse().expect("pid"),
            secret.try_into().expect("a 32-byte secret on stdin"),
        )
    }
}

/// Time until the master closes `stream` (EOF or reset), or `None` if it is
/// still open after `within`. Bytes that arrive meanwhile are skipped.
fn closed_within(stream: &mut TcpStream, within: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 64 * 1024];
    loop {
        let left = within.checked_sub(start.elapsed())?;
        stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Some(start.elapsed())
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return None
            }
            Err(e) => panic!("reading from the master: {e}"),
        }
    }
}

fn frame<M: Message>(msg: &M) -> Bytes {
    codec::to_frame(msg).expect("encode")
}

fn client_hello(token: Option<&str>) -> Bytes {
    frame(&Hello::Client(ClientHello {
        version: PROTOCOL_VERSION,
        token: token.map(str::to_owned),
    }))
}

fn handler_hello(child_id: u64, pid: u32, secret: [u8; SECRET_LEN]) -> Bytes {
    frame(&Hello::Handler(HandlerHello {
        version: PROTOCOL_VERSION,
        child_id,
        pid,
        secret,
        modules: vec!["echo".into(), "sleep".into()],
    }))
}

fn submit_frame(tag: u64, module: &str, input: impl Into<Bytes>) -> Bytes {
    frame(&ToMaster::Submit {
        tag,
        module: module.into(),
        context: Bytes::new(),
        options: Default::default(),
        input: input.into(),
    })
}

/// Reads one message (blocking, 10 s at most).
fn read_msg<M: Message>(stream: &mut TcpStream) -> M {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let body = codec::read_frame_blocking(stream, codec::DEFAULT_MAX_PAYLOAD)
        .expect("a frame from the master")
        .expect("a frame, not the end of the stream");
    codec::decode(body).expect("a well-formed frame")
}

/// A raw client connection the master has welcomed.
fn raw_client(addr: &str, token: Option<&str>) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.write_all(&client_hello(token)).unwrap();
    match read_msg::<ToClient>(&mut s) {
        ToClient::Welcome { .. } => s,
        other => panic!("expected a welcome, got {other:?}"),
    }
}

/// A fresh client's job completes within 2 s.
async fn still_serves(addr: &str, token: Option<&str>) {
    let start = Instant::now();
    let client = Client::connect(addr, token.map(str::to_owned))
        .await
        .expect("a fresh client connects");
    let out = tokio::time::timeout(Duration::from_secs(2), client.do_task("echo", "still here"))
        .await
        .expect("a job within 2 s")
        .expect("the job completes");
    assert_eq!(out, "still here".as_bytes());
    assert!(start.elapsed() < Duration::from_secs(2));
}

fn assert_refused(result: Result<Client, ClientError>, what: &str) {
    match result {
        Err(ClientError::Refused(message)) => {
            assert_eq!(message, "bad or missing client token", "{what}")
        }
        Err(other) => panic!("{what}: expected a refusal, got {other:?}"),
        Ok(_) => panic!("{what}: expected a refusal, got a welcome"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stolen_child_secret_from_another_pid_is_refused() {
    let spy = Spy::new("stolen");
    let mut master = Master::start_with(&["--pool-start", "1", "--pool-max", "1"], &spy.script);
    let (pid, secret) = spy.child(1);
    // The real child waits at the gate, so the thief's hello comes first:
    // right child id, right secret, but from another pid.
    let thief = std::process::id();
    let mut s = TcpStream::connect(&master.addr).unwrap();
    s.write_all(&handler_hello(1, thief, secret)).unwrap();
    assert!(
        closed_within(&mut s, Duration::from_secs(5)).is_some(),
        "the thief's connection is closed"
    );
    let line = master.wait_log("handler hello refused", Duration::from_secs(5));
    assert!(
        line.contains(&format!(" pid={thief} "))
            && line.contains(&format!("expected_pid={pid} "))
            && line.contains("good_secret=true")
            && line.contains("replayed=false"),
        "{line}"
    );
    // The secret itself is never logged (as bytes or as hex).
    let as_list = format!("{:?}", &secret[..4]);
    let as_hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    assert!(master
        .log()
        .iter()
        .all(|l| !l.contains(as_list.trim_end_matches(']')) && !l.contains(&as_hex[..16])));
    // The real child, with that very secret and its own pid, is accepted.
    spy.go();
    master.wait_log("pool ready", Duration::from_secs(10));
    let client = master.client().await;
    let out = client.do_task("sleep", "0").await.unwrap();
    assert_eq!(out, pid.to_string().as_bytes(), "the real child serves");
    assert_eq!(master.children(), vec![pid]);
    let stats = client.stats().await.unwrap();
    assert_eq!(
        (stats.children.spawned, stats.children.exited),
        (1, 0),
        "no child was lost: {stats:?}"
    );
    still_serves(&master.addr, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_child_secret_is_refused() {
    let spy = Spy::new("replayed");
    spy.go();
    let mut master = Master::start_with(&["--pool-start", "1", "--pool-max", "1"], &spy.script);
    master.wait_log("pool ready", Duration::from_secs(10));
    let (pid, secret) = spy.child(1);
    // The secret is not in the child's command line or environment.
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    for what in ["cmdline", "environ"] {
        let text = std::fs::read(format!("/proc/{pid}/{what}")).unwrap();
        assert!(
            !text.windows(SECRET_LEN).any(|w| w == secret)
                && !String::from_utf8_lossy(&text).contains(&hex),
            "the secret is in the child's {what}"
        );
    }
    // The very hello the real child sent: same id, pid and secret.
    let mut s = TcpStream::connect(&master.addr).unwrap();
    s.write_all(&handler_hello(1, pid, secret)).unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(5)).is_some());
    let line = master.wait_log("handler hello refused", Duration::from_secs(5));
    assert!(
        line.contains("good_secret=true") && line.contains("replayed=true"),
        "{line}"
    );
    let client = master.client().await;
    assert_eq!(
        client.do_task("sleep", "0").await.unwrap(),
        pid.to_string().as_bytes(),
        "the real child keeps serving"
    );
    assert_eq!(master.children(), vec![pid]);

    // Once that child is gone, its secret names no one.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_stats(&client, "child 1 replaced", |s| {
        s.children.exited == 1 && s.pool.idle == 1
    })
    .await;
    let mut s = TcpStream::connect(&master.addr).unwrap();
    s.write_all(&handler_hello(1, pid, secret)).unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(5)).is_some());
    master.wait_log("handler hello for an unknown child", Duration::from_secs(5));
    let (pid2, _) = spy.child(2);
    assert_eq!(
        client.do_task("sleep", "0").await.unwrap(),
        pid2.to_string().as_bytes()
    );
    still_serves(&master.addr, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_answering_for_a_job_it_does_not_hold_is_killed_and_its_job_fails_error() {
    let spy = Spy::new("forged");
    spy.fake(1);
    spy.go();
    let master = Master::start_with(&["--pool-start", "1", "--pool-max", "1"], &spy.script);
    // Child 1 is a `sleep`; the test speaks for it with its real secret.
    let (fake_pid, secret) = spy.child(1);
    let mut child = TcpStream::connect(&master.addr).unwrap();
    child
        .write_all(&handler_hello(1, fake_pid, secret))
        .unwrap();
    master.wait_log("pool ready", Duration::from_secs(10));

    let client = master.client().await;
    let handle = client.submit("echo", "real input", Bytes::new()).unwrap();
    let (job, mut child) = tokio::task::spawn_blocking(move || {
        let ToHandler::Job { job, module, input } = read_msg::<ToHandler>(&mut child);
        assert_eq!((module.as_str(), &input[..]), ("echo", &b"real input"[..]));
        // Answer for another job.
        let forged = FromHandler::Done {
            job: job + 1000,
            retire: false,
            output: Bytes::from_static(b"forged"),
        };
        child.write_all(&frame(&forged)).unwrap();
        (job, child)
    })
    .await
    .unwrap();
    match handle.finish().await {
        Err(ClientError::Job(f)) => {
            assert_eq!(f.reason, Reason::Error, "{f:?}");
            assert_eq!(
                f.message,
                format!(
                    "child {fake_pid} was killed by signal SIGKILL (child answered for \
                     job {}, which it does not hold) while running the job",
                    job + 1000
                )
            );
        }
        other => panic!("expected the job to fail `error`, got {other:?}"),
    }
    master.wait_log(
        "child answered for a job it does not hold; killing it",
        Duration::from_secs(5),
    );
    wait_until("the lying child is dead", Duration::from_secs(5), || {
        !pid_alive(fake_pid)
    });
    assert!(
        closed_within(&mut child, Duration::from_secs(5)).is_some(),
        "its connection is closed"
    );
    // Replaced by a real child, which serves.
    let stats = wait_stats(&client, "child 1 replaced", |s| {
        s.children.spawned == 2 && s.children.exited == 1 && s.pool.idle == 1
    })
    .await;
    assert_eq!(stats.jobs.failed_by_reason.get("error"), Some(&1));
    let (pid2, _) = spy.child(2);
    assert_eq!(
        client.do_task("sleep", "0").await.unwrap(),
        pid2.to_string().as_bytes()
    );
    still_serves(&master.addr, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_token_on_the_socket_and_the_cli() {
    let dir = Scratch::new("token-socket");
    let token = "correct horse battery staple";
    let token_file = dir.token_file(token);
    let master = Master::ready(&["--pool-start", "1", "--token-file", &token_file]);
    let addr = master.addr.as_str();

    // No token at all, on a raw socket: Refused with the reason, then closed.
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(&client_hello(None)).unwrap();
    match read_msg::<ToClient>(&mut s) {
        ToClient::Refused { message } => assert_eq!(message, "bad or missing client token"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(closed_within(&mut s, Duration::from_secs(5)).is_some());
    let line = master.wait_log("client refused", Duration::from_secs(5));
    assert!(
        line.contains("bad or missing client token") && line.contains("token_given=false"),
        "{line}"
    );
    // Wrong tokens, with the Rust client: a near miss, a prefix, an
    // extension, empty.
    for wrong in [
        "correct horse battery stapler",
        "correct horse battery",
        "correct horse battery staple ",
        "",
        "wrong",
    ] {
        assert_refused(
            Client::connect(addr, Some(wrong.to_owned())).await,
            &format!("token {wrong:?}"),
        );
    }
    // A submit sent after a refused hello is never run.
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(&client_hello(Some("wrong"))).unwrap();
    s.write_all(&submit_frame(1, "echo", "sneaky")).unwrap();
    assert!(matches!(
        read_msg::<ToClient>(&mut s),
        ToClient::Refused { .. }
    ));
    assert!(closed_within(&mut s, Duration::from_secs(5)).is_some());

    // The right token: jobs complete.
    let client = Client::connect(addr, Some(token.to_owned())).await.unwrap();
    assert_eq!(client.do_task("echo", "ok").await.unwrap(), "ok".as_bytes());
    let stats = client.stats().await.unwrap();
    assert_eq!(stats.jobs.submitted, 1, "the sneaky submit never ran");

    // The CLI reads TASKMASTER_TOKEN_FILE or TASKMASTER_TOKEN.
    let run = |env: &[(&str, &str)]| {
        let mut cmd = Command::new(bin("taskmaster"));
        cmd.args(["submit", "--connect", addr, "echo", "via cli"])
            .env_remove("TASKMASTER_CONNECT")
            .env_remove("TASKMASTER_TOKEN")
            .env_remove("TASKMASTER_TOKEN_FILE");
        for (k, v) in env {
            cmd.env(k, v);
        }
        output_within(&mut cmd, Duration::from_secs(10))
    };
    let o = run(&[("TASKMASTER_TOKEN_FILE", &token_file)]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    assert_eq!(o.stdout, b"via cli");
    let o = run(&[("TASKMASTER_TOKEN", token)]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    assert_eq!(o.stdout, b"via cli");
    for env in [
        vec![],
        vec![("TASKMASTER_TOKEN", "wrong")],
        vec![("TASKMASTER_TOKEN_FILE", "/dev/null")],
    ] {
        let o = run(&env);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{env:?}: {o:?}");
        assert!(o.stdout.is_empty(), "{env:?}: {o:?}");
        if env.is_empty() || env[0].1 == "wrong" {
            assert_eq!(
                err.trim_end(),
                format!(
                    "taskmaster: cannot connect to {addr}: refused by master: bad or missing client token"
                ),
                "{env:?}"
            );
        } else {
            assert!(
                err.contains("client token") && err.contains("the token file is empty"),
                "{err}"
            );
        }
    }
    still_serves(addr, Some(token)).await;
}

/// `--token-file` on every client command: the right file works (and beats
/// both environment variables), a wrong one is refused, and a missing or
/// empty one exits 2 with one line naming it, never falling back to the
/// environment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_token_file_flag_on_every_client_command() {
    let dir = Scratch::new("token-flag");
    let token = "flag-token-0123456789";
    let good = dir.token_file(token);
    let wrong = dir.write("wrong", "not-the-token\n");
    let empty = dir.write("empty", "");
    let missing = dir.path("missing").to_str().expect("utf-8 path").to_owned();
    let master = Master::ready(&["--pool-start", "1", "--token-file", &good]);
    let addr = master.addr.as_str();

    // `taskmaster CMD --connect ADDR ARGS..` with exactly these variables.
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut cmd = Command::new(bin("taskmaster"));
        cmd.arg(args[0])
            .args(["--connect", addr])
            .args(&args[1..])
            .env_remove("TASKMASTER_CONNECT")
            .env_remove("TASKMASTER_TOKEN")
            .env_remove("TASKMASTER_TOKEN_FILE");
        for (k, v) in env {
            cmd.env(k, v);
        }
        output_within(&mut cmd, Duration::from_secs(30))
    };
    let ok = |args: &[&str]| {
        let o = run(args, &[]);
        assert_eq!(o.status.code(), Some(0), "{args:?}: {o:?}");
        String::from_utf8(o.stdout).expect("utf-8 output")
    };

    // The right file, on each command.
    assert_eq!(ok(&["submit", "--token-file", &good, "echo", "hi"]), "hi");
    let stats: serde_json::Value =
        serde_json::from_str(&ok(&["stats", "--token-file", &good])).expect("stats JSON");
    assert_eq!(stats["pool"]["start"], 1, "{stats}");
    let id = ok(&["submit", "--token-file", &good, "--async", "echo", "later"]);
    let id = id.trim_end();
    let view: serde_json::Value =
        serde_json::from_str(&ok(&["status", "--token-file", &good, id])).expect("status JSON");
    assert_eq!(view["id"], id, "{view}");
    assert_eq!(
        ok(&["result", "--token-file", &good, "--wait", "10", id]),
        "later"
    );
    for (op, then) in [("start", "queued"), ("cancel", "cancelled")] {
        let held = ok(&["submit", "--token-file", &good, "--start-later", "echo", op]);
        let held = held.trim_end();
        assert_eq!(
            ok(&[op, "--token-file", &good, held]),
            format!("{held} {then}\n")
        );
    }
    let list: serde_json::Value =
        serde_json::from_str(&ok(&["jobs", "--token-file", &good, "--json"])).expect("jobs JSON");
    assert!(
        !list["jobs"].as_array().expect("a list").is_empty(),
        "{list}"
    );
    let bench: serde_json::Value = serde_json::from_str(&ok(&[
        "bench",
        "--token-file",
        &good,
        "--jobs",
        "20",
        "--clients",
        "2",
        "--json",
    ]))
    .expect("bench JSON");
    assert_eq!(bench["completed"], 20, "{bench}");
    // `events` runs until interrupted; asked about a job of another master
    // run it answers at once, which only a welcomed client hears.
    let flipped = if id.starts_with('0') { "1" } else { "0" };
    let other_run = format!("{flipped}{}", &id[1..]);
    let o = run(&["events", "--token-file", &good, "--job", &other_run], &[]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("from another master run"),
        "{o:?}"
    );

    // The flag before TASKMASTER_TOKEN_FILE and TASKMASTER_TOKEN.
    let o = run(
        &["submit", "--token-file", &good, "echo", "flag wins"],
        &[
            ("TASKMASTER_TOKEN_FILE", &wrong),
            ("TASKMASTER_TOKEN", "wrong"),
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    assert_eq!(o.stdout, b"flag wins");

    // Every client command takes the flag; a wrong token is refused, a bad
    // file is named, even with the right token in the environment.
    let every: [&[&str]; 9] = [
        &["submit", "echo", "x"],
        &["stats"],
        &["status", id],
        &["result", id],
        &["start", id],
        &["cancel", id],
        &["jobs"],
        &["events"],
        &["bench", "--jobs", "1"],
    ];
    for args in every {
        let with = |file: &str| {
            let mut all = vec![args[0], "--token-file", file];
            all.extend_from_slice(&args[1..]);
            run(&all, &[("TASKMASTER_TOKEN", token)])
        };
        for (file, line) in [
            (
                &wrong,
                format!(
                    "taskmaster: cannot connect to {addr}: refused by master: bad or missing client token"
                ),
            ),
            (
                &missing,
                format!("taskmaster: --token-file: {missing}: No such file or directory (os error 2)"),
            ),
            (
                &empty,
                format!("taskmaster: --token-file: {empty}: the token file is empty"),
            ),
        ] {
            let o = with(file);
            assert_eq!(o.status.code(), Some(2), "{args:?} {file}: {o:?}");
            assert!(o.stdout.is_empty(), "{args:?} {file}: {o:?}");
            assert_eq!(
                String::from_utf8_lossy(&o.stderr),
                format!("{line}\n"),
                "{args:?} {file}"
            );
        }
    }
    still_serves(addr, Some(token)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_token_on_http() {
    let dir = Scratch::new("token-http");
    let token = "s3cret-Token_42";
    let token_file = dir.token_file(token);
    let master = Master::ready_http(&["--pool-start", "1", "--token-file", &token_file]);
    let bearer = format!("Bearer {token}");
    for (what, headers) in [
        ("no Authorization", vec![]),
        ("a wrong Bearer", vec![("authorization", "Bearer nope")]),
        (
            "the token as Basic",
            vec![("authorization", "Basic czNjcmV0LVRva2VuXzQy")],
        ),
        ("the bare token", vec![("authorization", token)]),
        (
            "a token prefix",
            vec![("authorization", "Bearer s3cret-Token_4")],
        ),
    ] {
        for (method, path) in [("POST", "/jobs/echo"), ("GET", "/stats"), ("GET", "/jobs")] {
            let a = http_with_headers(method, &master.url(path), &headers, "hi").await;
            assert_eq!(a.status, 401, "{what} {method} {path}: {}", a.text());
            assert_eq!(a.header("www-authenticate"), Some("Bearer"), "{what}");
            assert!(
                a.header("content-type")
                    .is_some_and(|t| t.starts_with("application/json")),
                "{what}"
            );
            assert_eq!(
                a.json()["error"],
                "missing or wrong client token (Authorization: Bearer TOKEN)"
            );
        }
    }
    let a = http_with_headers(
        "POST",
        &master.url("/jobs/echo?wait=10"),
        &[("authorization", &bearer)],
        "hi",
    )
    .await;
    assert_eq!((a.status, a.text().as_str()), (200, "hi"));
    let a = http_with_headers(
        "GET",
        &master.url("/stats"),
        &[("authorization", &bearer)],
        "",
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["jobs"]["submitted"], 1, "401s ran no job");
    // Open without a token: health and metrics.
    for path in ["/healthz", "/metrics"] {
        let a = http_with_headers("GET", &master.url(path), &[], "").await;
        assert_eq!(a.status, 200, "{path}: {}", a.text());
    }
    still_serves(&master.addr, Some(token)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_with_10000_unread_answers_costs_bounded_memory() {
    let master = Master::ready(&["--pool-start", "2", "--job-max", "20000"]);
    let other = master.client().await;
    for _ in 0..200 {
        other.do_task("echo", vec![b'w'; 4096]).await.unwrap();
    }
    let rss_before = vm_rss_kib(master.pid);

    // 10,000 submits of 4 KiB, pipelined, answers never read.
    let mut raw = raw_client(&master.addr, None);
    let mut writer = raw.try_clone().unwrap();
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let sent_by_writer = sent.clone();
    let flood = std::thread::spawn(move || {
        let input = Bytes::from(vec![b'x'; 4096]);
        for tag in 1..=10_000u64 {
            if writer
                .write_all(&submit_frame(tag, "echo", input.clone()))
                .is_err()
            {
                break;
            }
            sent_by_writer.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });

    // Meanwhile another client's jobs complete, each well within a second.
    let mut worst = Duration::ZERO;
    for i in 0..100 {
        let start = Instant::now();
        let out = tokio::time::timeout(
            Duration::from_secs(5),
            other.do_task("echo", format!("{i}")),
        )
        .await
        .expect("another client's job within 5 s")
        .unwrap();
        assert_eq!(out, format!("{i}").as_bytes());
        worst = worst.max(start.elapsed());
    }
    // The master stops reading the flood: the completed count settles.
    let mut last = (0, Instant::now());
    let settled = loop {
        let s = other.stats().await.unwrap();
        if s.jobs.completed != last.0 {
            last = (s.jobs.completed, Instant::now());
        } else if last.1.elapsed() > Duration::from_millis(700) && s.queue.len == 0 {
            break s;
        }
        assert!(
            last.1.elapsed() < Duration::from_secs(30),
            "stats never settled"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let rss_full = vm_rss_kib(master.pid);
    let flood_jobs = settled.jobs.completed - 300;
    let written = sent.load(std::sync::atomic::Ordering::SeqCst);
    println!(
        "unread answers: {written} of 10000 submits written, {flood_jobs} run, \
         master VmRSS {rss_before} KiB before, {rss_full} KiB with the unread answers \
         (+{} KiB), kept in the job table {}, worst other-client latency {worst:?}",
        rss_full.saturating_sub(rss_before),
        settled.jobs.kept,
    );
    assert!(
        written < 10_000,
        "backpressure: the master stopped reading before 10,000 submits"
    );
    assert!(
        flood_jobs > 0 && flood_jobs < 10_000,
        "the master stops reading submits (at --max-in-flight jobs not yet \
         written, or unread answers past --client-window): {flood_jobs} ran"
    );
    assert!(
        rss_full.saturating_sub(rss_before) < 64 * 1024,
        "master memory grew by {} KiB",
        rss_full - rss_before
    );
    assert!(worst < Duration::from_secs(1), "worst latency {worst:?}");

    // Still serving while the reader is stuck.
    still_serves(&master.addr, None).await;
    // The flood disconnects: the master drops its answers and is fine.
    raw.shutdown(std::net::Shutdown::Both).unwrap();
    flood.join().unwrap();
    assert!(closed_within(&mut raw, Duration::from_secs(5)).is_some());
    still_serves(&master.addr, None).await;
    let stats = other.stats().await.unwrap();
    assert!(stats.pool.size >= 2, "{stats:?}");
    println!(
        "unread answers: master VmRSS {} KiB after the flood disconnected",
        vm_rss_kib(master.pid)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_idle_connections_do_not_stop_a_new_client() {
    let master = Master::ready(&["--pool-start", "1"]);
    let addr = master.addr.as_str();

    // 500 connections that never say hello. In bursts of 100: the listen
    // backlog is 128, and a connect that overflows it waits a 1 s SYN
    // retransmit (kernel, not master).
    let start = Instant::now();
    let mut silent: Vec<TcpStream> = Vec::new();
    for _ in 0..5 {
        silent.extend((0..100).map(|_| TcpStream::connect(addr).expect("connect")));
        std::thread::sleep(Duration::from_millis(20));
    }
    let opened = start.elapsed();
    let job = Instant::now();
    still_serves(addr, None).await;
    let took = job.elapsed();
    println!("500 silent connections opened in {opened:?}; a new client's job took {took:?}");
    assert!(took < Duration::from_secs(1), "{took:?}");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "inconclusive: the silent ones may have been closed already ({:?})",
        start.elapsed()
    );
    // Each is closed at the hello deadline.
    for s in &mut silent {
        let closed = closed_within(s, Duration::from_secs(10));
        assert!(
            closed.is_some(),
            "a silent connection outlived the deadline"
        );
    }
    assert!(
        start.elapsed() >= Duration::from_millis(1900),
        "closed before the 2 s deadline: {:?}",
        start.elapsed()
    );
    wait_until("500 deadline log lines", Duration::from_secs(5), || {
        master
            .log()
            .iter()
            .filter(|l| l.contains("no hello within 2s"))
            .count()
            == 500
    });
    drop(silent);

    // 500 clients that say hello, are welcomed, and then say nothing.
    let start = Instant::now();
    let welcomed: Vec<TcpStream> = (0..500).map(|_| raw_client(addr, None)).collect();
    let opened = start.elapsed();
    let job = Instant::now();
    still_serves(addr, None).await;
    let took = job.elapsed();
    println!("500 welcomed idle clients opened in {opened:?}; a new client's job took {took:?}");
    assert!(took < Duration::from_secs(1), "{took:?}");
    drop(welcomed);
    still_serves(addr, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_closes_the_next_one_at_once() {
    let master = Master::ready(&["--pool-start", "1", "--max-connections", "50"]);
    let addr = master.addr.as_str();
    // Children never count (they are bounded by --pool-max): 50 clients
    // fit. Client 51 is refused right after its hello, with the reason.
    let mut held: Vec<TcpStream> = (0..50).map(|_| raw_client(addr, None)).collect();
    let mut extra = TcpStream::connect(addr).unwrap();
    extra.write_all(&client_hello(None)).unwrap();
    match read_msg::<ToClient>(&mut extra) {
        ToClient::Refused { message } => {
            assert_eq!(message, "too many connections (--max-connections)")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let closed =
        closed_within(&mut extra, Duration::from_secs(2)).expect("connection 51 is closed");
    assert!(closed < Duration::from_millis(500), "{closed:?}");
    master.wait_log(
        "too many connections (--max-connections); refusing client",
        Duration::from_secs(5),
    );
    match Client::connect(addr, None).await {
        Err(ClientError::Refused(m)) => assert!(m.contains("--max-connections"), "{m}"),
        other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
    }
    // A child still gets in while clients fill the limit: kill the child,
    // its replacement connects and serves.
    let old = children_of(master.pid);
    for pid in &old {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    wait_until("a replacement child", Duration::from_secs(10), || {
        let now = children_of(master.pid);
        now.len() == 1 && !old.contains(&now[0])
    });
    // The 50 are untouched.
    let first = held.first_mut().unwrap();
    first.write_all(&submit_frame(5, "echo", "held")).unwrap();
    match read_msg::<ToClient>(first) {
        ToClient::Completed { tag: 5, output, .. } => assert_eq!(output, "held"),
        other => panic!("{other:?}"),
    }
    // One leaves; a new one gets in.
    drop(held.pop());
    let start = Instant::now();
    let client = loop {
        match Client::connect(addr, None).await {
            Ok(c) => break c,
            Err(_) if start.elapsed() < Duration::from_secs(5) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("no room after a close: {e}"),
        }
    };
    assert_eq!(client.do_task("echo", "in").await.unwrap(), "in".as_bytes());
    drop(client);
    drop(held);
    still_serves(addr, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_client_is_closed_but_one_waiting_for_a_job_is_not() {
    let master = Master::ready(&["--pool-start", "1", "--client-idle-timeout", "0.5"]);
    let addr = master.addr.as_str();
    let mut idle = raw_client(addr, None);
    let closed = closed_within(&mut idle, Duration::from_secs(5)).expect("idle client closed");
    assert!(
        closed >= Duration::from_millis(450) && closed < Duration::from_millis(1500),
        "{closed:?}"
    );

    let mut busy = raw_client(addr, None);
    let start = Instant::now();
    busy.write_all(&submit_frame(7, "sleep", "1500")).unwrap();
    match read_msg::<ToClient>(&mut busy) {
        ToClient::Completed { tag: 7, .. } => {}
        other => panic!("expected the sleep to complete, got {other:?}"),
    }
    let answered = start.elapsed();
    assert!(answered >= Duration::from_millis(1450), "{answered:?}");
    still_serves(addr, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_silent_after_its_last_answer_is_closed_as_idle() {
    let master = Master::ready(&["--pool-start", "1", "--client-idle-timeout", "0.5"]);
    let mut busy = raw_client(&master.addr, None);
    busy.write_all(&submit_frame(7, "sleep", "100")).unwrap();
    match read_msg::<ToClient>(&mut busy) {
        ToClient::Completed { tag: 7, .. } => {}
        other => panic!("expected the sleep to complete, got {other:?}"),
    }
    let closed = closed_within(&mut busy, Duration::from_secs(5)).expect("closed when idle");
    assert!(
        closed >= Duration::from_millis(400) && closed < Duration::from_millis(1500),
        "{closed:?}"
    );
    still_serves(&master.addr, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_loopback_without_a_token_exits_2_unless_insecure() {
    let refused = |args: &[&str]| {
        let mut cmd = Command::new(bin("taskmaster"));
        cmd.args(args)
            .arg("--handler")
            .arg(bin("taskmaster-handler"))
            .args(["--pool-start", "1"])
            .env_remove("TASKMASTER_TOKEN")
            .env_remove("TASKMASTER_TOKEN_FILE")
            .env_remove("TASKMASTER_INSECURE");
        let o = output_within(&mut cmd, Duration::from_secs(10));
        assert_eq!(o.status.code(), Some(2), "{args:?}: {o:?}");
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        err
    };
    let err = refused(&["--listen", "0.0.0.0:0"]);
    assert!(
        err.starts_with("taskmaster: refusing to listen on 0.0.0.0:")
            && err.trim_end().ends_with(
                "(not loopback) without a client token: set --token-file or \
                 TASKMASTER_TOKEN, or pass --insecure"
            ),
        "{err}"
    );
    let err = refused(&["--listen", "127.0.0.1:0", "--http", "0.0.0.0:0"]);
    assert!(
        err.starts_with("taskmaster: refusing to listen on 0.0.0.0:"),
        "{err}"
    );

    // With --insecure it starts.
    let m = Master::start_exact(&["--listen", "0.0.0.0:0", "--insecure", "--pool-start", "1"]);
    m.wait_log("pool ready", Duration::from_secs(10));
    let port = m.addr.rsplit(':').next().unwrap();
    still_serves(&format!("127.0.0.1:{port}"), None).await;
    let m = Master::start_exact(&[
        "--listen",
        "127.0.0.1:0",
        "--http",
        "0.0.0.0:0",
        "--insecure",
        "--pool-start",
        "1",
    ]);
    m.wait_log("pool ready", Duration::from_secs(10));
    let line = m.wait_log("HTTP API listening", Duration::from_secs(5));
    let port = line
        .rsplit(':')
        .next()
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    let a = http_with_headers(
        "POST",
        &format!("http://127.0.0.1:{port}/jobs/echo?wait=10"),
        &[],
        "open",
    )
    .await;
    assert_eq!((a.status, a.text().as_str()), (200, "open"));
    still_serves(&m.addr, None).await;

    // With a token it starts too, and wants it.
    let dir = Scratch::new("exposed");
    let token_file = dir.token_file("tok");
    let m = Master::start_exact(&[
        "--listen",
        "0.0.0.0:0",
        "--token-file",
        &token_file,
        "--pool-start",
        "1",
    ]);
    m.wait_log("pool ready", Duration::from_secs(10));
    let addr = format!("127.0.0.1:{}", m.addr.rsplit(':').next().unwrap());
    assert_refused(
        Client::connect(addr.as_str(), Some("x".into())).await,
        "exposed",
    );
    still_serves(&addr, Some("tok")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_writers_are_closed_at_the_hello_deadline_and_cost_nothing_else() {
    let master = Master::ready(&["--pool-start", "1"]);
    // A valid client hello of about 80 bytes: 8 s at 1 byte per 100 ms.
    let hello = client_hello(Some(&"t".repeat(60)));
    assert!(hello.len() > 30);
    let writers: Vec<_> = (0..10)
        .map(|_| {
            let (addr, hello) = (master.addr.clone(), hello.clone());
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(Duration::from_millis(100)))
                    .unwrap();
                let start = Instant::now();
                let mut buf = [0u8; 256];
                for byte in hello.iter() {
                    if s.write_all(&[*byte]).is_err() {
                        return Some(start.elapsed());
                    }
                    match s.read(&mut buf) {
                        Ok(0) => return Some(start.elapsed()),
                        Ok(n) => panic!("the master answered a partial hello: {n} bytes"),
                        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                            return Some(start.elapsed())
                        }
                        Err(_) => {} // 100 ms passed
                    }
                }
                None
            })
        })
        .collect();
    // Meanwhile other clients' jobs run as usual.
    let client = master.client().await;
    let start = Instant::now();
    let (mut n, mut worst) = (0, Duration::ZERO);
    while start.elapsed() < Duration::from_millis(2500) {
        let t = Instant::now();
        client.do_task("echo", "x").await.unwrap();
        worst = worst.max(t.elapsed());
        n += 1;
    }
    for w in writers {
        let closed = w.join().unwrap().expect("the slow writer was closed");
        assert!(
            closed >= Duration::from_millis(1900) && closed < Duration::from_millis(3500),
            "closed after {closed:?}"
        );
    }
    println!("slow writers: {n} jobs meanwhile, worst latency {worst:?}");
    assert!(worst < Duration::from_secs(1), "{worst:?}");
    let count = master
        .log()
        .iter()
        .filter(|l| l.contains("no hello within 2s"))
        .count();
    assert_eq!(count, 10);
    still_serves(&master.addr, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_token_from_the_environment_is_not_passed_to_children() {
    let token = "token-in-the-environment";
    let mut master = Master::start_exact_env(
        &["--listen", "127.0.0.1:0", "--pool-start", "1"],
        &[("TASKMASTER_TOKEN", token)],
    );
    master.wait_log("pool ready", Duration::from_secs(10));
    let children = master.children();
    assert_eq!(children.len(), 1);
    let environ = std::fs::read(format!("/proc/{}/environ", children[0])).unwrap();
    assert!(
        !String::from_utf8_lossy(&environ).contains(token),
        "the child's environment holds the client token"
    );
    still_serves(&master.addr, Some(token)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_read_its_parts_holds_back_only_its_own_child() {
    let master = Master::ready(&["--pool-start", "2", "--pool-max", "2"]);
    let addr = master.addr.as_str();
    let client = master.client().await;
    let rss_before = vm_rss_kib(master.pid);
    // Millions of parts, never read: the master holds the child back
    // instead of buffering them, and closes nothing.
    let mut deaf = raw_client(addr, None);
    deaf.write_all(&submit_frame(1, "count", "500000")).unwrap();
    wait_stats(&client, "the count job running", |s| s.pool.busy == 1).await;
    // Held back, not finished: the same job is still running a while later
    // and the master's memory stays flat.
    let mut peak = 0;
    for _ in 0..20 {
        peak = peak.max(vm_rss_kib(master.pid));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stats = client.stats().await.unwrap();
    assert_eq!(stats.pool.busy, 1, "still running, held back: {stats:?}");
    println!("master VmRSS {rss_before} KiB before, peak {peak} KiB while the parts were not read");
    assert!(peak < rss_before + 16 * 1024, "{rss_before} -> {peak} KiB");
    // Everyone else is served meanwhile, on the other child.
    still_serves(addr, None).await;
    assert!(!master
        .log()
        .iter()
        .any(|l| l.contains("--max-client-backlog")));
    // The client goes away: the child is let go, runs the job to its end
    // (its answers dropped) and is free again.
    drop(deaf);
    wait_stats(&client, "the held child free again", |s| {
        s.pool.busy == 0 && s.jobs.completed >= 1
    })
    .await;
}
