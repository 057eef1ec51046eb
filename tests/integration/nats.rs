//! Many masters on one NATS JetStream queue (`--nats`, SPEC section 15),
//! each test with its own real `nats-server -js` on a free port and a
//! temporary store: jobs from one master's clients run on both masters'
//! children (by pid), results from either, a master killed mid-job (its job
//! answered `error` by another, never run twice; queued jobs run on the
//! other), `--job-max` as the stream's limit (`overload`), NATS down
//! (`error`, exit 2 at start) and back (queued jobs run).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use taskmaster_proto::{Client, ClientError, JobResult, Reason, SubmitOptions};
use taskmaster_tests::{bin, output_within, pid_alive, wait_stats, wait_until, Master};

/// A `nats-server -js` of the test's own.
struct Nats {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
}

impl Nats {
    fn start(test: &str) -> Nats {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir =
            std::env::temp_dir().join(format!("taskmaster-nats-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut nats = Nats {
            child: None,
            port,
            dir,
        };
        nats.run();
        nats
    }

    /// Starts (again) the server on its port and store.
    fn run(&mut self) {
        let child = Command::new("nats-server")
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run nats-server ({e}): install it with `apt-get install nats-server` \
                     (Debian package; the project's machines have it)"
                )
            });
        self.child = Some(child);
        let addr = format!("127.0.0.1:{}", self.port);
        wait_until("nats-server to listen", Duration::from_secs(10), || {
            std::net::TcpStream::connect(&addr).is_ok()
        });
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn master(nats: &Nats, more: &[&str]) -> Master {
    let url = nats.url();
    let mut args = vec!["--nats", url.as_str()];
    args.extend_from_slice(more);
    let m = Master::ready(&args);
    m.wait_log("sharing the queue on NATS", Duration::from_secs(10));
    m
}

fn pid_of(answer: &[u8]) -> u32 {
    String::from_utf8_lossy(answer)
        .trim()
        .parse()
        .expect("a pid")
}

/// Polls `result` on `client` until the job has ended.
async fn ended(client: &Client, id: &str) -> JobResult {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match client.result(id, Duration::from_millis(200)).await {
            Ok(JobResult::Pending(_)) => {}
            Ok(done) => return done,
            Err(ClientError::NotFound(_)) => {}
            Err(e) => panic!("result {id}: {e}"),
        }
        assert!(std::time::Instant::now() < deadline, "job {id} never ended");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn two_masters_share_the_queue_and_answer_from_either() {
    let nats = Nats::start("share");
    let mut a = master(&nats, &["--pool-start", "2", "--pool-max", "2"]);
    let mut b = master(
        &nats,
        &[
            "--pool-start",
            "2",
            "--pool-max",
            "2",
            "--http",
            "127.0.0.1:0",
        ],
    );
    let client = a.client().await;
    // Eight jobs of 300 ms through A: four children in all, so both
    // masters' children must run them.
    let jobs: Vec<_> = (0..8)
        .map(|_| client.submit("sleep", "300", "").unwrap())
        .collect();
    let mut pids = Vec::new();
    for job in jobs {
        pids.push(pid_of(&job.finish().await.unwrap().output));
    }
    let (of_a, of_b) = (a.children(), b.children());
    assert!(
        pids.iter().any(|p| of_a.contains(p)),
        "some ran on A: {pids:?} {of_a:?}"
    );
    assert!(
        pids.iter().any(|p| of_b.contains(p)),
        "some ran on B: {pids:?} {of_b:?}"
    );
    assert!(pids.iter().all(|p| of_a.contains(p) || of_b.contains(p)));
    // A detached job submitted to A: its result and status from B.
    let id = client
        .submit_detached("echo", "far", SubmitOptions::default())
        .await
        .unwrap()
        .id;
    let other = b.client().await;
    match ended(&other, &id).await {
        JobResult::Completed(out) => assert_eq!(&out[..], b"far"),
        r => panic!("{r:?}"),
    }
    let view = other.status(&id).await.unwrap();
    assert_eq!(view.module, "echo");
    // And over B's HTTP API.
    let body = taskmaster_tests::http("GET", &b.url(&format!("/jobs/{id}/result")), "").await;
    assert_eq!(body.text(), "far");
    let body = taskmaster_tests::http("GET", &b.url(&format!("/jobs/{id}")), "").await;
    assert_eq!(body.json()["status"], "completed");
    // A failure travels too, with its reason.
    let f = match client.do_task("fail", "boom").await {
        Err(ClientError::Job(f)) => f,
        r => panic!("{r:?}"),
    };
    assert_eq!(f.reason, Reason::Failed);
    assert!(f.message.contains("boom"), "{f:?}");
}

#[tokio::test]
async fn a_master_killed_mid_job_its_job_is_failed_by_another_and_queued_ones_run() {
    let nats = Nats::start("kill");
    let args = [
        "--pool-start",
        "1",
        "--pool-max",
        "1",
        "--nats-ack-wait",
        "1",
    ];
    let mut a = master(&nats, &args);
    let client = a.client().await;
    let detached = |module: &'static str, input: &'static str| {
        let client = &client;
        async move {
            client
                .submit_detached(module, input, SubmitOptions::default())
                .await
                .unwrap()
                .id
        }
    };
    let long = detached("sleep", "30000").await;
    wait_stats(&client, "A runs the long job", |s| s.pool.busy == 1).await;
    let kid = a.children()[0];
    // A has no free child: these stay in the stream.
    let queued = [detached("pid", "").await, detached("pid", "").await];
    a.signal(nix::sys::signal::Signal::SIGKILL);
    a.wait_exit(Duration::from_secs(5));
    wait_until("A's child gone", Duration::from_secs(2), || !pid_alive(kid));
    let mut b = master(&nats, &args);
    let other = b.client().await;
    match ended(&other, &long).await {
        JobResult::Failed(f) => {
            assert_eq!(f.reason, Reason::Error);
            assert!(f.message.contains("master running it was lost"), "{f:?}");
        }
        r => panic!("the long job: {r:?}"),
    }
    for id in &queued {
        match ended(&other, id).await {
            JobResult::Completed(out) => assert!(b.children().contains(&pid_of(&out))),
            r => panic!("queued job {id}: {r:?}"),
        }
    }
    // Never run twice: B ran only the queued ones.
    let stats = other.stats().await.unwrap();
    assert_eq!(stats.jobs.completed, 2, "{stats:?}");
}

#[tokio::test]
async fn job_max_is_the_streams_limit_and_a_full_stream_is_overload() {
    let nats = Nats::start("full");
    let m = master(
        &nats,
        &["--pool-start", "1", "--pool-max", "1", "--job-max", "2"],
    );
    let client = m.client().await;
    // One running (its message is in the stream until answered), one
    // waiting: the stream is full.
    let running = client.submit("sleep", "1000", "").unwrap();
    wait_stats(&client, "one running", |s| s.pool.busy == 1).await;
    let waiting = client.submit("echo", "w", "").unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let f = match client.do_task("echo", "x").await {
        Err(ClientError::Job(f)) => f,
        r => panic!("{r:?}"),
    };
    assert_eq!(f.reason, Reason::Overload, "{f:?}");
    running.finish().await.unwrap();
    assert_eq!(&waiting.finish().await.unwrap().output[..], b"w");
    // More than a NATS message carries (1 MiB by default): refused, saying
    // so, not lost.
    let f = match client.do_task("echo", vec![b'x'; 1 << 20]).await {
        Err(ClientError::Job(f)) => f,
        r => panic!("{r:?}"),
    };
    assert_eq!(f.reason, Reason::Error, "{f:?}");
    assert!(
        f.message.contains("over what the NATS server carries"),
        "{f:?}"
    );
}

#[test]
fn nats_unreachable_at_start_exits_2_naming_the_url() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("nats://127.0.0.1:{port}");
    let out = output_within(
        Command::new(bin("taskmaster")).args(["--listen", "127.0.0.1:0", "--nats", &url]),
        Duration::from_secs(20),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(&url), "{err}");
    // The stream keeps the jobs: a store of the master's own is refused.
    let dir = std::env::temp_dir().join(format!("taskmaster-nats-store-{}", std::process::id()));
    let out = output_within(
        Command::new(bin("taskmaster"))
            .args(["--listen", "127.0.0.1:0", "--nats", &url, "--state-dir"])
            .arg(&dir),
        Duration::from_secs(20),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--state-dir and --nats do not go together"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn nats_down_fails_submits_and_its_return_runs_the_queued_jobs() {
    let mut nats = Nats::start("down");
    let m = master(&nats, &["--pool-start", "1", "--pool-max", "1"]);
    let client = m.client().await;
    let running = client.submit("sleep", "500", "").unwrap();
    wait_stats(&client, "one running", |s| s.pool.busy == 1).await;
    let queued = client
        .submit_detached("echo", "kept", SubmitOptions::default())
        .await
        .unwrap()
        .id;
    nats.stop();
    let f = match client.do_task("echo", "x").await {
        Err(ClientError::Job(f)) => f,
        r => panic!("{r:?}"),
    };
    assert_eq!(f.reason, Reason::Error, "{f:?}");
    assert!(f.message.contains("queue unavailable"), "{f:?}");
    // The running job still answers its client.
    running.finish().await.unwrap();
    nats.run();
    match ended(&client, &queued).await {
        JobResult::Completed(out) => assert_eq!(&out[..], b"kept"),
        r => panic!("{r:?}"),
    }
    // And new submits work again.
    assert_eq!(&client.do_task("echo", "back").await.unwrap()[..], b"back");
}
