//! Helpers for the integration tests: find the real binaries, start a master
//! on port 0, read its log, list its children from `/proc`, wait for
//! conditions (never a blind sleep).
//!
//! # Layout
//!
//! This file, the helpers:
//!
//! - [`bin`]: path of a workspace binary beside the test executable.
//! - [`Master`]: a running `taskmaster` with its log and children.
//! - [`cli`], [`output_within`]: run a client command with a deadline.
//! - [`wait_until`], [`wait_until_async`], [`wait_stats`]: poll a
//!   condition with a deadline.
//! - [`pid_alive`], [`children_of`], [`children_with_state`],
//!   [`vm_rss_kib`], [`open_fds`]: process facts from `/proc`.
//! - [`http`], [`try_http`], [`http_with_headers`], [`HttpAnswer`]: one
//!   HTTP/1.1 request to the master's `--http` API (hyper), with a deadline.
//!
//! Beside it:
//!
//! - `src/bin/test_handler.rs`: `taskmaster-test-handler`, the standard
//!   modules plus test-only ones (`panic`, `stubborn`, `grow`, ...).
//! - `integration/main.rs`: the one integration-test binary, a file per
//!   area: `pool`, `faults`, `supervision`, `reliability`, `wire`, `cli`,
//!   `jobs`, `http`, `hardening`, `bench`, `example`, `soak`.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

pub use taskmaster_proto::{Client, ClientError, JobEvent, Reason, Stats};

/// Path of a binary built by `cargo test --workspace` (ripgrep's way: the
/// test executable is in `target/<profile>/deps/`).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir");
    for candidate in [dir.join(name), dir.join("examples").join(name)] {
        if candidate.exists() {
            return candidate;
        }
    }
    panic!(
        "{name} not found in {}: run the tests with `cargo test --workspace`",
        dir.display()
    );
}

/// Polls `cond` every 10 ms until it holds or `timeout` passes.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Polls the master's stats until `cond` holds (15 s at most); returns them.
pub async fn wait_stats(client: &Client, what: &str, cond: impl Fn(&Stats) -> bool) -> Stats {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let stats = client.stats().await.expect("stats");
        if cond(&stats) {
            return stats;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn stat_fields(pid: u32) -> Option<(char, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm may hold spaces and parentheses: fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split(' ');
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Resident memory of `pid` in KiB (`VmRSS` in `/proc/PID/status`).
pub fn vm_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// Polls the async `cond` every 10 ms until it holds or `timeout` passes.
pub async fn wait_until_async<F, Fut>(what: &str, timeout: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !cond().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A process that exists and is not a zombie.
pub fn pid_alive(pid: u32) -> bool {
    matches!(stat_fields(pid), Some((state, _)) if state != 'Z' && state != 'X')
}

/// Children of `pid` in any state (zombies included) with their state
/// letter, from `/proc`.
pub fn children_with_state(pid: u32) -> Vec<(u32, char)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some((state, ppid)) = stat_fields(child) {
            if ppid == pid {
                out.push((child, state));
            }
        }
    }
    out.sort();
    out
}

/// Live children of `pid`, from `/proc`.
pub fn children_of(pid: u32) -> Vec<u32> {
    children_with_state(pid)
        .into_iter()
        .filter(|&(_, state)| state != 'Z' && state != 'X')
        .map(|(pid, _)| pid)
        .collect()
}

#[derive(Default)]
struct Log {
    lines: Mutex<(Vec<String>, bool)>,
    changed: Condvar,
}

/// SIGKILLs one of `master`'s children, picked at random (xorshift on
/// `seed`); the pid it killed, if it had any child to kill.
pub fn kill_random_child(master: u32, seed: &mut u64) -> Option<u32> {
    let kids = children_of(master);
    if kids.is_empty() {
        return None;
    }
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    let victim = kids[(*seed % kids.len() as u64) as usize];
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .ok()
    .map(|()| victim)
}

/// A running master started on port 0.
pub struct Master {
    child: Option<Child>,
    /// Its pid.
    pub pid: u32,
    /// The address it listens on.
    pub addr: String,
    /// The HTTP API's address, when started with `--http`.
    pub http_addr: Option<String>,
    log: Arc<Log>,
    seen: Vec<u32>,
}

impl Master {
    /// Starts `taskmaster --listen 127.0.0.1:0` with the stock handler and
    /// `args`, and waits for its address.
    pub fn start(args: &[&str]) -> Master {
        Self::start_with(args, &bin("taskmaster-handler"))
    }

    /// As [`Master::start`] with another handler program.
    pub fn start_with(args: &[&str], handler: &std::path::Path) -> Master {
        let mut cmd = Command::new(bin("taskmaster"));
        cmd.arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--handler")
            .arg(handler)
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("TASKMASTER_TEST_RUST_LOG").unwrap_or("info".into()),
            )
            .env_remove("TASKMASTER_POOL_START")
            .env_remove("TASKMASTER_POOL_MAX")
            .env_remove("TASKMASTER_JOB_MAX");
        let wants_http = args
            .iter()
            .any(|a| *a == "--http" || a.starts_with("--http="));
        Self::launch(cmd, wants_http)
    }

    /// Spawns `cmd` (a `taskmaster` command line) with its log captured,
    /// and waits for the addresses it listens on.
    fn launch(mut cmd: Command, wants_http: bool) -> Master {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start taskmaster");
        let log = Arc::new(Log::default());
        let stderr = child.stderr.take().expect("stderr");
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if std::env::var_os("TASKMASTER_TEST_ECHO_LOG").is_some() {
                    eprintln!("master: {line}");
                }
                sink.lines.lock().unwrap().0.push(line);
                sink.changed.notify_all();
            }
            sink.lines.lock().unwrap().1 = true;
            sink.changed.notify_all();
        });
        let mut master = Master {
            pid: child.id(),
            child: Some(child),
            addr: String::new(),
            http_addr: None,
            log,
            seen: Vec::new(),
        };
        let addr_in = |master: &Master, what: &str| {
            let line = master.wait_log(what, Duration::from_secs(10));
            line.split("addr=")
                .nth(1)
                .and_then(|s| s.split_whitespace().next())
                .unwrap_or_else(|| panic!("address in the {what:?} line"))
                .to_owned()
        };
        master.addr = addr_in(&master, "listening");
        if wants_http {
            master.http_addr = Some(addr_in(&master, "HTTP API listening"));
        }
        master
    }

    /// Starts a master with `--http 127.0.0.1:0` and `args`, and waits
    /// until its pool is ready.
    pub fn ready_http(args: &[&str]) -> Master {
        let mut all = vec!["--http", "127.0.0.1:0"];
        all.extend_from_slice(args);
        Self::ready(&all)
    }

    /// The URL of `path_and_query` on the master's HTTP API.
    pub fn url(&self, path_and_query: &str) -> String {
        let addr = self
            .http_addr
            .as_deref()
            .expect("master started without --http");
        format!("http://{addr}{path_and_query}")
    }

    /// Starts a master and waits until its pool is ready.
    pub fn ready(args: &[&str]) -> Master {
        let master = Self::start(args);
        master.wait_log("pool ready", Duration::from_secs(10));
        master
    }

    /// Waits for a log line containing `needle`; returns it.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let mut guard = self.log.lines.lock().unwrap();
        loop {
            if let Some(line) = guard.0.iter().find(|l| l.contains(needle)) {
                return line.clone();
            }
            let now = Instant::now();
            assert!(
                now < deadline && !guard.1,
                "no log line with {needle:?}; log so far:\n{}",
                guard.0.join("\n")
            );
            guard = self
                .log
                .changed
                .wait_timeout(guard, deadline - now)
                .unwrap()
                .0;
        }
    }

    /// Every log line so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lines.lock().unwrap().0.clone()
    }

    /// The master's live children now (remembered for clean-up).
    pub fn children(&mut self) -> Vec<u32> {
        let now = children_of(self.pid);
        for &pid in &now {
            if !self.seen.contains(&pid) {
                self.seen.push(pid);
            }
        }
        now
    }

    /// Connects a client.
    pub async fn client(&self) -> Client {
        Client::connect(self.addr.as_str(), None)
            .await
            .expect("connect to master")
    }

    /// Sends a signal to the master.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid as i32), sig).expect("kill");
    }

    /// Waits for the master to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("master process");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "master did not exit within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Master {
    fn drop(&mut self) {
        // Clean up even when a test failed half-way.
        let _ = self.children();
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        for &pid in &self.seen {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Runs a command to its end, killing it if it outlives `timeout` (so a
/// test that expects an early exit fails instead of hanging).
pub fn output_within(cmd: &mut Command, timeout: Duration) -> std::process::Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + timeout;
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} still running after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().expect("output")
}

/// Runs `taskmaster bench --json ARGS` against `master` and returns its
/// report, once it exited 0 within `timeout`.
pub fn bench_within(master: &Master, args: &[&str], timeout: Duration) -> serde_json::Value {
    let o = output_within(
        Command::new(bin("taskmaster"))
            .args(["bench", "--connect", &master.addr, "--json"])
            .args(args),
        timeout,
    );
    assert_eq!(
        o.status.code(),
        Some(0),
        "bench failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).expect("one JSON object")
}

/// Runs the `taskmaster` binary as a client command.
pub fn cli(args: &[&str], stdin: &[u8]) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new(bin("taskmaster"))
        .args(args)
        .env_remove("TASKMASTER_CONNECT")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run taskmaster");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().expect("taskmaster output")
}

/// One HTTP answer.
#[derive(Debug)]
pub struct HttpAnswer {
    /// Status code.
    pub status: u16,
    /// Response headers.
    pub headers: hyper::HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

impl HttpAnswer {
    /// The body as JSON (panics, showing the body, if it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{} answer is not JSON ({e}): {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// A header's value as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as (lossy) text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// How long [`http`] waits for a whole answer before the test fails.
pub const HTTP_DEADLINE: Duration = Duration::from_secs(60);

/// Sends one HTTP/1.1 request (a fresh connection) and reads the whole
/// answer; panics if that takes longer than [`HTTP_DEADLINE`] or the
/// connection fails.
pub async fn http(method: &str, url: &str, body: impl Into<Bytes>) -> HttpAnswer {
    try_http(method, url, body)
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"))
}

/// As [`http`], returning a connection failure instead of panicking.
pub async fn try_http(
    method: &str,
    url: &str,
    body: impl Into<Bytes>,
) -> Result<HttpAnswer, String> {
    use http_body_util::{BodyExt, Full};
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let request = hyper::Request::builder()
        .method(method)
        .uri(url)
        .body(Full::new(body.into()))
        .map_err(|e| format!("bad request: {e}"))?;
    let exchange = async {
        let response = client
            .request(request)
            .await
            .map_err(|e| format!("{e:?}"))?;
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| format!("reading the body: {e}"))?
            .to_bytes();
        Ok(HttpAnswer {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        })
    };
    match tokio::time::timeout(HTTP_DEADLINE, exchange).await {
        Ok(r) => r,
        Err(_) => panic!("{method} {url}: no whole answer within {HTTP_DEADLINE:?}"),
    }
}

/// As [`http`], with extra request headers (an `Authorization`, say).
pub async fn http_with_headers(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> HttpAnswer {
    use http_body_util::{BodyExt, Full};
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let mut request = hyper::Request::builder().method(method).uri(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(Full::new(body.into()))
        .unwrap_or_else(|e| panic!("{method} {url}: bad request: {e}"));
    let exchange = async {
        let response = client
            .request(request)
            .await
            .unwrap_or_else(|e| panic!("{method} {url}: {e:?}"));
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .unwrap_or_else(|e| panic!("{method} {url}: reading the body: {e}"))
            .to_bytes();
        HttpAnswer {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        }
    };
    tokio::time::timeout(HTTP_DEADLINE, exchange)
        .await
        .unwrap_or_else(|_| panic!("{method} {url}: no whole answer within {HTTP_DEADLINE:?}"))
}

impl Master {
    /// Starts `taskmaster` with exactly `args` (no `--listen` added: the
    /// caller chooses the address) and the stock handler, and waits for its
    /// listening line. `addr` is the address it logged.
    pub fn start_exact(args: &[&str]) -> Master {
        Self::start_exact_env(args, &[])
    }

    /// Starts a master from a prepared command line (a wrapper such as
    /// `prlimit` that execs `taskmaster`), its log captured.
    pub fn launch_cmd(mut cmd: Command) -> Master {
        cmd.env("RUST_LOG", "info");
        Self::launch(cmd, false)
    }

    /// As [`Master::start_exact`], with these environment variables set.
    pub fn start_exact_env(args: &[&str], env: &[(&str, &str)]) -> Master {
        let mut cmd = Command::new(bin("taskmaster"));
        cmd.arg("--handler")
            .arg(bin("taskmaster-handler"))
            .args(args)
            .env("RUST_LOG", "info")
            .env_remove("TASKMASTER_POOL_START")
            .env_remove("TASKMASTER_POOL_MAX")
            .env_remove("TASKMASTER_JOB_MAX")
            .env_remove("TASKMASTER_LISTEN")
            .env_remove("TASKMASTER_HTTP")
            .env_remove("TASKMASTER_INSECURE")
            .env_remove("TASKMASTER_TOKEN")
            .env_remove("TASKMASTER_TOKEN_FILE");
        for (k, v) in env {
            cmd.env(k, v);
        }
        Self::launch(cmd, false)
    }
}

/// Count of open file descriptors of `pid` (entries of `/proc/PID/fd`).
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("/proc/PID/fd")
        .count()
}
