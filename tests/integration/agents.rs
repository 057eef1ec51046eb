//! Remote agents (`taskmaster agent`, SPEC section 14) on loopback: several
//! real agent processes with real children lend slots to a real master
//! over its `--agent-listen` socket, plain and over TLS with a self-signed
//! certificate. Jobs run on the agents' children (checked by pid), stats
//! and metrics show the agents, kill -9 and SIGSTOP of an agent fail its
//! job at once naming it and take its children with it, an agent that lost
//! its master kills its children and comes back, and the start-up rules
//! for exposed agent sockets exit 2.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use taskmaster_proto::{Client, ClientError, Reason, Stats, SubmitOptions};
use taskmaster_tests::{
    bin, children_of, output_within, pid_alive, wait_stats, wait_until, Master,
};

/// A running `taskmaster agent`, its log captured.
struct Agent {
    child: Child,
    pid: u32,
    log: Arc<(Mutex<Vec<String>>, Condvar)>,
    seen: Vec<u32>,
}

impl Agent {
    fn start(connect: &str, slots: u32, name: &str, more: &[&str]) -> Agent {
        let mut child = Command::new(bin("taskmaster"))
            .arg("agent")
            .arg("--connect")
            .arg(connect)
            .arg("--slots")
            .arg(slots.to_string())
            .arg("--name")
            .arg(name)
            .arg("--handler")
            .arg(bin("taskmaster-handler"))
            .args(more)
            .env("RUST_LOG", "info")
            .env_remove("TASKMASTER_TOKEN")
            .env_remove("TASKMASTER_TOKEN_FILE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start taskmaster agent");
        let log: Arc<(Mutex<Vec<String>>, Condvar)> = Arc::default();
        let sink = log.clone();
        let stderr = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if std::env::var_os("TASKMASTER_TEST_ECHO_LOG").is_some() {
                    eprintln!("agent: {line}");
                }
                sink.0.lock().unwrap().push(line);
                sink.1.notify_all();
            }
        });
        Agent {
            pid: child.id(),
            child,
            log,
            seen: Vec::new(),
        }
    }

    /// Waits for a log line containing `needle`.
    fn wait_log(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let mut lines = self.log.0.lock().unwrap();
        loop {
            if let Some(l) = lines.iter().find(|l| l.contains(needle)) {
                return l.clone();
            }
            let now = Instant::now();
            assert!(
                now < deadline,
                "no agent log line with {needle:?}; log:\n{}",
                lines.join("\n")
            );
            lines = self.log.1.wait_timeout(lines, deadline - now).unwrap().0;
        }
    }

    /// Its live children now (remembered for clean-up).
    fn children(&mut self) -> Vec<u32> {
        let now = children_of(self.pid);
        for &pid in &now {
            if !self.seen.contains(&pid) {
                self.seen.push(pid);
            }
        }
        now
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.children();
        self.kill9();
        for &pid in &self.seen {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// The address of the master's agent socket, from its log.
fn agent_addr(master: &Master) -> String {
    let line = master.wait_log("agents listening", Duration::from_secs(10));
    line.split("addr=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .expect("address in the agents listening line")
        .to_owned()
}

/// A master with no children of its own (a pure dispatcher) taking agents
/// on a loopback port.
fn dispatcher(more: &[&str]) -> Master {
    let mut args = vec![
        "--pool-start",
        "0",
        "--pool-max",
        "0",
        "--agent-listen",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(more);
    Master::ready(&args)
}

/// Waits until the master shows agent `name` with `children` children.
async fn agent_shown(client: &Client, name: &str, children: usize) -> Stats {
    wait_stats(
        client,
        &format!("agent {name} with {children} children"),
        |s| {
            s.agents
                .iter()
                .any(|a| a.name == name && a.children == children)
        },
    )
    .await
}

fn pid_of(answer: &[u8]) -> u32 {
    String::from_utf8_lossy(answer)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("a pid, got {answer:?}"))
}

fn failure(r: Result<bytes::Bytes, ClientError>) -> taskmaster_proto::JobFailure {
    match r {
        Err(ClientError::Job(f)) => f,
        other => panic!("expected a job failure, got {other:?}"),
    }
}

#[tokio::test]
async fn jobs_run_on_agents_children_and_stats_show_each_agent() {
    let master = dispatcher(&["--http", "127.0.0.1:0"]);
    let addr = agent_addr(&master);
    let mut one = Agent::start(&addr, 2, "box1", &[]);
    let mut two = Agent::start(&addr, 1, "box2", &[]);
    let client = master.client().await;
    agent_shown(&client, "box1", 2).await;
    let stats = agent_shown(&client, "box2", 1).await;
    assert_eq!(stats.pool.size, 3, "three slots in the pool: {stats:?}");
    let box1 = stats.agents.iter().find(|a| a.name == "box1").unwrap();
    assert_eq!(box1.slots, 2);
    assert!(box1.address.starts_with("127.0.0.1:"), "{box1:?}");
    // Three jobs at once take every slot: each runs on an agent's child.
    let jobs: Vec<_> = (0..3)
        .map(|_| client.submit("sleep", "300", "").unwrap())
        .collect();
    let mut pids = Vec::new();
    for job in jobs {
        pids.push(pid_of(&job.finish().await.unwrap().output));
    }
    let theirs: Vec<u32> = one.children().into_iter().chain(two.children()).collect();
    pids.sort_unstable();
    pids.dedup();
    assert_eq!(pids.len(), 3, "three different children ran them: {pids:?}");
    for pid in &pids {
        assert!(
            theirs.contains(pid),
            "pid {pid} is an agent's child ({theirs:?})"
        );
    }
    let stats = client.stats().await.unwrap();
    let on_agents: Vec<_> = stats
        .pool
        .children
        .iter()
        .filter(|c| c.agent.is_some())
        .collect();
    assert_eq!(on_agents.len(), 3, "{stats:?}");
    // The same through the HTTP API and the metrics.
    let body = taskmaster_tests::http("GET", &master.url("/stats"), "")
        .await
        .json();
    let mut names: Vec<&str> = body["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["box1", "box2"]);
    let metrics = taskmaster_tests::http("GET", &master.url("/metrics"), "")
        .await
        .text();
    assert!(
        metrics.contains("taskmaster_agent_slots{agent=\"box1\"} 2"),
        "agent slots in /metrics:\n{metrics}"
    );
    // A time limit on an agent's child: `timeout`, and the agent puts a
    // fresh child in its place.
    let opts = SubmitOptions {
        timeout_ms: Some(200),
        ..SubmitOptions::default()
    };
    let f = failure(
        client
            .submit_with("sleep", "10000", "", opts)
            .unwrap()
            .finish()
            .await
            .map(|c| c.output),
    );
    assert_eq!(f.reason, Reason::Timeout, "{f:?}");
    wait_stats(&client, "the agents' three slots back", |s| {
        s.agents.iter().map(|a| a.children).sum::<usize>() == 3 && s.pool.idle == 3
    })
    .await;
    // The master's own children are not spawned for agents' jobs.
    assert!(children_of(master.pid).is_empty());
}

#[tokio::test]
async fn kill_9_of_an_agent_fails_its_job_at_once_naming_it_and_its_children_die() {
    let master = dispatcher(&[]);
    let addr = agent_addr(&master);
    let mut agent = Agent::start(&addr, 1, "doomed", &[]);
    let client = master.client().await;
    agent_shown(&client, "doomed", 1).await;
    let kids = agent.children();
    assert_eq!(kids.len(), 1);
    let job = client.submit("sleep", "30000", "").unwrap();
    wait_stats(&client, "the job running", |s| s.pool.busy == 1).await;
    // Jobs waiting behind it wait for a slot, not for the dead agent.
    let queued = client.submit("pid", "", "").unwrap();
    wait_stats(&client, "one job queued", |s| s.queue.len == 1).await;
    let killed = Instant::now();
    agent.kill9();
    let f = failure(job.finish().await.map(|c| c.output));
    let took = killed.elapsed();
    assert_eq!(f.reason, Reason::Error, "{f:?}");
    assert!(f.message.contains("agent doomed"), "names the agent: {f:?}");
    assert!(took < Duration::from_secs(1), "failed in {took:?}");
    wait_until("the agent's child gone", Duration::from_secs(1), || {
        !pid_alive(kids[0])
    });
    let stats = wait_stats(&client, "the agent gone", |s| s.agents.is_empty()).await;
    assert_eq!(stats.pool.size, 0);
    assert_eq!(stats.queue.len, 1, "the queued job waits: {stats:?}");
    // Another agent takes the queued job.
    let mut other = Agent::start(&addr, 1, "spare", &[]);
    let pid = pid_of(&queued.finish().await.unwrap().output);
    assert_eq!(other.children(), vec![pid]);
}

#[tokio::test]
async fn sigterm_drains_an_agent_its_running_job_completes_and_no_new_one_goes_there() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let master = dispatcher(&[]);
    let addr = agent_addr(&master);
    let mut agent = Agent::start(&addr, 2, "leaving", &[]);
    let client = master.client().await;
    agent_shown(&client, "leaving", 2).await;
    let running = client.submit("sleep", "1500", "").unwrap();
    wait_stats(&client, "the job running", |s| s.pool.busy == 1).await;
    kill(Pid::from_raw(agent.pid as i32), Signal::SIGTERM).unwrap();
    // Its idle child goes at once; the busy one stays for its job.
    wait_stats(&client, "the idle child stopped", |s| s.pool.size == 1).await;
    let later = client.submit("pid", "", "").unwrap();
    wait_stats(&client, "the new job queued, not sent to the agent", |s| {
        s.queue.len == 1
    })
    .await;
    let pid = pid_of(
        &running
            .finish()
            .await
            .expect("the running job completes")
            .output,
    );
    let status = agent.child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "the agent exits 0 once drained");
    assert!(!pid_alive(pid));
    wait_stats(&client, "the agent gone", |s| s.agents.is_empty()).await;
    // The queued job runs when another agent comes.
    let mut next = Agent::start(&addr, 1, "next", &[]);
    let ran = pid_of(&later.finish().await.unwrap().output);
    assert!(next.children().contains(&ran));
    // A second signal does not wait for the jobs.
    let job = client.submit("sleep", "30000", "").unwrap();
    wait_stats(&client, "the long job running", |s| s.pool.busy == 1).await;
    kill(Pid::from_raw(next.pid as i32), Signal::SIGTERM).unwrap();
    next.wait_log("stopping: children finish", Duration::from_secs(5));
    kill(Pid::from_raw(next.pid as i32), Signal::SIGTERM).unwrap();
    let f = failure(job.finish().await.map(|c| c.output));
    assert_eq!(f.reason, Reason::Error, "{f:?}");
    assert!(f.message.contains("agent next"), "{f:?}");
    assert_eq!(next.child.wait().unwrap().code(), Some(0));
}

#[tokio::test]
async fn a_stopped_agent_is_lost_by_heartbeat_and_comes_back_fresh() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let master = dispatcher(&[]);
    let addr = agent_addr(&master);
    let mut agent = Agent::start(&addr, 1, "frozen", &[]);
    let client = master.client().await;
    agent_shown(&client, "frozen", 1).await;
    let old = agent.children();
    let job = client.submit("sleep", "30000", "").unwrap();
    wait_stats(&client, "the job running", |s| s.pool.busy == 1).await;
    // A stopped agent keeps its socket open: only the silence tells.
    kill(Pid::from_raw(agent.pid as i32), Signal::SIGSTOP).unwrap();
    let stopped = Instant::now();
    let f = failure(job.finish().await.map(|c| c.output));
    assert_eq!(f.reason, Reason::Error);
    assert!(
        f.message.contains("agent frozen") && f.message.contains("no heartbeat"),
        "{f:?}"
    );
    let took = stopped.elapsed();
    assert!(took < Duration::from_secs(4), "lost after {took:?}");
    kill(Pid::from_raw(agent.pid as i32), Signal::SIGCONT).unwrap();
    // Woken, it finds its link gone: its old child is killed, and it comes
    // back with a fresh one that serves.
    agent.wait_log("link to the master lost", Duration::from_secs(10));
    wait_until("the old child gone", Duration::from_secs(5), || {
        !pid_alive(old[0])
    });
    agent_shown(&client, "frozen", 1).await;
    let pid = pid_of(&client.do_task("pid", "").await.unwrap());
    assert!(!old.contains(&pid));
    assert!(agent.children().contains(&pid));
}

#[tokio::test]
async fn an_agent_that_loses_its_master_kills_its_children_and_reconnects() {
    // A port to reuse for the second master.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let args = [
        "--pool-start",
        "0",
        "--pool-max",
        "0",
        "--agent-listen",
        listen.as_str(),
    ];
    let mut first = Master::ready(&args);
    let mut agent = Agent::start(&listen, 2, "loyal", &[]);
    agent_shown(&first.client().await, "loyal", 2).await;
    let old = agent.children();
    assert_eq!(old.len(), 2);
    first.signal(nix::sys::signal::Signal::SIGKILL);
    first.wait_exit(Duration::from_secs(5));
    wait_until(
        "the agent's children killed",
        Duration::from_secs(1),
        || old.iter().all(|&p| !pid_alive(p)),
    );
    assert!(agent.children().is_empty());
    let second = Master::ready(&args);
    let client = second.client().await;
    agent_shown(&client, "loyal", 2).await;
    let pid = pid_of(&client.do_task("pid", "").await.unwrap());
    assert!(agent.children().contains(&pid));
    assert!(!old.contains(&pid));
}

/// A self-signed certificate for 127.0.0.1 in `dir`: (cert, key).
fn self_signed(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let cert = dir.join(format!("{name}.pem"));
    let key = dir.join(format!("{name}.key"));
    let out = output_within(
        Command::new("openssl").args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=taskmaster test",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            // A server certificate, not a CA (which rustls refuses as one).
            "-addext",
            "basicConstraints=critical,CA:FALSE",
            "-keyout",
            key.to_str().unwrap(),
            "-out",
            cert.to_str().unwrap(),
        ]),
        Duration::from_secs(30),
    );
    assert!(
        out.status.success(),
        "openssl (Debian package openssl: apt-get install openssl) failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

fn temp_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("taskmaster-agents-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test]
async fn tls_with_a_self_signed_certificate_and_the_token() {
    let dir = temp_dir("tls");
    let (cert, key) = self_signed(&dir, "master");
    let (other, _) = self_signed(&dir, "stranger");
    let token = dir.join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let master = dispatcher(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
        "--token-file",
        token.to_str().unwrap(),
    ]);
    let addr = agent_addr(&master);
    assert!(master
        .wait_log("agents listening", Duration::ZERO)
        .contains("tls=true"));
    let ca = cert.to_str().unwrap();
    let good_token = token.to_str().unwrap();
    let bad = dir.join("bad-token");
    std::fs::write(&bad, "guess\n").unwrap();
    // An agent that cannot verify the certificate, one that speaks plain
    // TCP, and one with the wrong token serve nothing.
    let unverified = Agent::start(
        &addr,
        1,
        "unverified",
        &[
            "--tls-ca",
            other.to_str().unwrap(),
            "--token-file",
            good_token,
        ],
    );
    let plain = Agent::start(&addr, 1, "plain", &["--token-file", good_token]);
    let wrong = Agent::start(
        &addr,
        1,
        "wrong",
        &["--tls-ca", ca, "--token-file", bad.to_str().unwrap()],
    );
    unverified.wait_log("cannot serve the master", Duration::from_secs(10));
    plain.wait_log("cannot serve the master", Duration::from_secs(10));
    let refused = wrong.wait_log("cannot serve the master", Duration::from_secs(10));
    assert!(refused.contains("bad or missing token"), "{refused}");
    let mut good = Agent::start(
        &addr,
        2,
        "trusted",
        &["--tls-ca", ca, "--token-file", good_token],
    );
    let client = Client::connect(master.addr.as_str(), Some("s3cret".into()))
        .await
        .unwrap();
    let stats = agent_shown(&client, "trusted", 2).await;
    assert_eq!(stats.agents.len(), 1, "only the trusted agent: {stats:?}");
    let pid = pid_of(&client.do_task("pid", "").await.unwrap());
    assert!(good.children().contains(&pid));
    // Job data crosses the link both ways intact, big and small.
    let big = vec![b'x'; 3 << 20];
    let echoed = client.do_task("echo", big.clone()).await.unwrap();
    assert_eq!(echoed.len(), big.len());
    assert!(echoed == big);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn exposed_agent_sockets_need_tls_and_a_token() {
    let dir = temp_dir("exposed");
    let (cert, key) = self_signed(&dir, "master");
    let token = dir.join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let run = |more: &[&str]| {
        let mut cmd = Command::new(bin("taskmaster"));
        cmd.args(["--listen", "127.0.0.1:0", "--agent-listen", "0.0.0.0:0"])
            .args(more)
            .env_remove("TASKMASTER_TOKEN")
            .env_remove("TASKMASTER_TOKEN_FILE");
        output_within(&mut cmd, Duration::from_secs(10))
    };
    let tls = [
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ];
    for (more, missing) in [
        (&[][..], "--tls-cert/--tls-key and a client token"),
        (
            &["--token-file", token.to_str().unwrap()][..],
            "--tls-cert/--tls-key",
        ),
        (&tls[..], "a client token"),
        (&[&tls[..], &["--insecure"]].concat()[..], "a client token"),
    ] {
        let out = run(more);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{more:?}: {err}");
        assert!(
            err.contains("--agent-listen 0.0.0.0") && err.contains(missing),
            "{more:?}: {err}"
        );
    }
    // A key that is not the certificate's, and a missing file: exit 2.
    let (_, other_key) = self_signed(&dir, "other");
    let out = run(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        other_key.to_str().unwrap(),
    ]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&[
        "--tls-cert",
        "/nonexistent.pem",
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("/nonexistent.pem"), "{err}");
    // With both, beyond loopback, it starts.
    let mut args = vec![
        "--listen",
        "127.0.0.1:0",
        "--agent-listen",
        "0.0.0.0:0",
        "--token-file",
        token.to_str().unwrap(),
    ];
    args.extend_from_slice(&tls);
    let master = Master::start_exact(&args);
    master.wait_log("agents listening", Duration::from_secs(10));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A hand-made agent on the wire: hello, then whatever the test sends.
struct FakeAgent {
    reader: taskmaster_proto::codec::FrameReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
}

impl FakeAgent {
    async fn connect(addr: &str, slots: u32) -> FakeAgent {
        use taskmaster_proto::agent::{AgentHello, ToAgent};
        use taskmaster_proto::messages::Hello;
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (read, writer) = stream.into_split();
        let mut fake = FakeAgent {
            reader: taskmaster_proto::codec::frame_reader(read, 1 << 20),
            writer,
        };
        fake.send_raw(
            &taskmaster_proto::codec::to_frame(&Hello::Agent(AgentHello {
                version: taskmaster_proto::PROTOCOL_VERSION,
                token: None,
                name: "fake".into(),
                slots,
                pid: 1,
            }))
            .unwrap(),
        )
        .await;
        match fake.next().await {
            Some(ToAgent::Welcome { .. }) => fake,
            other => panic!("expected a welcome, got {other:?}"),
        }
    }

    async fn send(&mut self, msg: taskmaster_proto::agent::FromAgent) {
        self.send_raw(&taskmaster_proto::codec::to_frame(&msg).unwrap())
            .await;
    }

    async fn send_raw(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        let _ = self.writer.write_all(bytes).await;
    }

    /// The next frame that is not a heartbeat (`None`: closed).
    async fn next(&mut self) -> Option<taskmaster_proto::agent::ToAgent> {
        use taskmaster_proto::agent::ToAgent;
        loop {
            let msg = tokio::time::timeout(
                Duration::from_secs(10),
                taskmaster_proto::codec::read_message::<ToAgent, _>(&mut self.reader),
            )
            .await
            .expect("a frame within 10 s")
            .ok()
            .flatten()?;
            if msg != ToAgent::Heartbeat {
                return Some(msg);
            }
        }
    }
}

#[tokio::test]
async fn a_lying_or_broken_agent_loses_its_link_and_the_master_serves_on() {
    use taskmaster_proto::agent::{FromAgent, ToAgent};
    let master = dispatcher(&[]);
    let addr = agent_addr(&master);
    let client = master.client().await;
    // More children than its slots: its job fails naming it, the link goes.
    let mut fake = FakeAgent::connect(&addr, 1).await;
    fake.send(FromAgent::ChildUp {
        child: 1,
        pid: 4242,
        modules: vec!["echo".into()],
    })
    .await;
    let job = client.submit("echo", "hi", "").unwrap();
    let Some(ToAgent::Job {
        child: 1, job: n, ..
    }) = fake.next().await
    else {
        panic!("the job sent to the fake agent's child");
    };
    fake.send(FromAgent::ChildUp {
        child: 2,
        pid: 4243,
        modules: vec![],
    })
    .await;
    let f = failure(job.finish().await.map(|c| c.output));
    assert_eq!(f.reason, Reason::Error, "{f:?}");
    assert!(
        f.message.contains("child 4242 on agent fake")
            && f.message.contains("more children than its 1 slots"),
        "{f:?}"
    );
    assert!(fake.next().await.is_none(), "link closed");
    wait_stats(&client, "the fake agent gone", |s| s.agents.is_empty()).await;
    // An answer for a job its child does not hold: that child is killed.
    let mut fake = FakeAgent::connect(&addr, 1).await;
    fake.send(FromAgent::ChildUp {
        child: 7,
        pid: 4244,
        modules: vec!["echo".into()],
    })
    .await;
    let job = client.submit("echo", "hi", "").unwrap();
    let Some(ToAgent::Job {
        child: 7, job: n2, ..
    }) = fake.next().await
    else {
        panic!("the second job sent");
    };
    assert_ne!(n, n2);
    fake.send(FromAgent::Done {
        child: 7,
        job: n2 + 1000,
        retire: false,
        output: "forged".into(),
    })
    .await;
    assert_eq!(fake.next().await, Some(ToAgent::Kill { child: 7 }));
    fake.send(FromAgent::ChildGone {
        child: 7,
        end: taskmaster_proto::agent::ChildEnd::Status {
            code: None,
            signal: Some(9),
            killed: true,
        },
    })
    .await;
    let f = failure(job.finish().await.map(|c| c.output));
    assert!(f.message.contains("does not hold"), "{f:?}");
    // Garbage on the link: dropped, nothing else hurt.
    fake.send_raw(&[0, 0, 0, 5, 0xff, 0xff, 0xff, 0xff, 0xff])
        .await;
    assert!(fake.next().await.is_none(), "link closed after garbage");
    wait_stats(&client, "no agents", |s| s.agents.is_empty()).await;
    // A client on the agent socket, and an agent on the client socket,
    // are closed; the master still serves.
    assert!(Client::connect(addr.as_str(), None).await.is_err());
    let stream = tokio::net::TcpStream::connect(master.addr.as_str())
        .await
        .unwrap();
    let (read, mut write) = stream.into_split();
    let hello = taskmaster_proto::messages::Hello::Agent(taskmaster_proto::agent::AgentHello {
        version: taskmaster_proto::PROTOCOL_VERSION,
        token: None,
        name: "lost".into(),
        slots: 1,
        pid: 1,
    });
    tokio::io::AsyncWriteExt::write_all(
        &mut write,
        &taskmaster_proto::codec::to_frame(&hello).unwrap(),
    )
    .await
    .unwrap();
    let mut reader = taskmaster_proto::codec::frame_reader(read, 1 << 20);
    let closed = tokio::time::timeout(
        Duration::from_secs(5),
        taskmaster_proto::codec::read_message::<ToAgent, _>(&mut reader),
    )
    .await
    .expect("closed in time");
    assert!(matches!(closed, Ok(None) | Err(_)), "{closed:?}");
    let mut real = Agent::start(&addr, 1, "real", &[]);
    let pid = pid_of(&client.do_task("pid", "").await.unwrap());
    assert!(real.children().contains(&pid));
}
