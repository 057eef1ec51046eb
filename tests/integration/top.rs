//! `taskmaster top` and the per-child stats it draws from: the stats JSON
//! lists every child with its pid, state, job and memory; `top` in a real
//! pseudo-terminal at 80×24 shows every child's pid, survives its master
//! going away, quits on `q` with status 0 and leaves the terminal as it
//! found it (cooked mode, main screen, cursor shown).
//!
//! The terminal is a pty from `openpty` whose output goes through a vt100
//! parser (the screen as text), so no terminal program (tmux) is needed.
//! `top` runs under util-linux `setsid --ctty`: in a session of its own
//! whose controlling terminal is the pty, as a login shell's child would
//! be (crossterm asks `/dev/tty` for the size; without this it would ask
//! the terminal the tests were started from, if any).

use nix::sys::termios::{tcgetattr, LocalFlags};
use std::fs::File;
use std::io::{Read, Write};
use std::process::{Child, Command, ExitStatus};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use taskmaster_proto::SubmitOptions;
use taskmaster_tests::{bin, cli, wait_stats, wait_until, Master};

const COLS: u16 = 80;
const ROWS: u16 = 24;

/// A `taskmaster` client command running in a pseudo-terminal.
struct Tty {
    child: Child,
    /// The terminal's side: keys are written here.
    keys: File,
    /// The program's side, kept open to read its terminal modes.
    slave: File,
    /// What it drew, as a screen.
    screen: Arc<Mutex<vt100::Parser>>,
}

impl Tty {
    /// Runs `taskmaster ARGS` in a fresh COLS×ROWS pseudo-terminal.
    fn spawn(args: &[&str]) -> Tty {
        use nix::fcntl::{fcntl, FcntlArg, FdFlag};
        use std::os::fd::AsRawFd;
        let size = nix::pty::Winsize {
            ws_row: ROWS,
            ws_col: COLS,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let pty = nix::pty::openpty(Some(&size), None).expect("openpty");
        // Not inherited by the masters other tests spawn meanwhile (a
        // stray copy of the slave would keep the terminal open).
        for fd in [&pty.master, &pty.slave] {
            fcntl(fd.as_raw_fd(), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).expect("cloexec");
        }
        let slave = File::from(pty.slave);
        let keys = File::from(pty.master);
        let child = Command::new("setsid")
            .args(["--ctty", "--wait"])
            .arg(bin("taskmaster"))
            .args(args)
            .env("TERM", "xterm-256color")
            .env_remove("TASKMASTER_CONNECT")
            .stdin(slave.try_clone().unwrap())
            .stdout(slave.try_clone().unwrap())
            .stderr(slave.try_clone().unwrap())
            .spawn()
            .expect("setsid (util-linux) runs taskmaster");
        let screen = Arc::new(Mutex::new(vt100::Parser::new(ROWS, COLS, 0)));
        let mut output = keys.try_clone().unwrap();
        let sink = screen.clone();
        // Until the pty is gone (EIO) or the test ends: a reader that
        // stops would let the program block on a full terminal.
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n @ 1..) = output.read(&mut buf) {
                sink.lock().unwrap().process(&buf[..n]);
            }
        });
        Tty {
            child,
            keys,
            slave,
            screen,
        }
    }

    /// The screen's text now, a line per row.
    fn text(&self) -> String {
        self.screen.lock().unwrap().screen().contents()
    }

    /// Waits (10 s at most) until the screen's text satisfies `cond`;
    /// the text.
    fn wait_screen(&self, what: &str, cond: impl Fn(&str) -> bool) -> String {
        self.wait_terminal(what, |s| cond(&s.contents()))
    }

    /// Waits (10 s at most) until the terminal satisfies `cond` (what the
    /// program wrote may still be on its way after it has exited); the
    /// screen's text.
    fn wait_terminal(&self, what: &str, cond: impl Fn(&vt100::Screen) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (met, text) = {
                let parser = self.screen.lock().unwrap();
                (cond(parser.screen()), parser.screen().contents())
            };
            if met {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; screen:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn press(&mut self, keys: &str) {
        self.keys.write_all(keys.as_bytes()).expect("type");
    }

    /// The program's exit status, within `timeout` (else it is killed and
    /// the test fails).
    fn exit_within(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "still running {timeout:?} after the key; screen:\n{}",
                    self.text()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Canonical mode and echo: a terminal a shell can use.
    fn cooked(&self) -> bool {
        let flags = tcgetattr(&self.slave).expect("tcgetattr").local_flags;
        flags.contains(LocalFlags::ICANON | LocalFlags::ECHO)
    }
}

impl Drop for Tty {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn stats_list_every_child_with_its_pid_state_and_job() {
    let mut master = Master::ready(&["--pool-start", "3", "--pool-max", "3"]);
    let client = master.client().await;
    let job = client
        .submit_detached("sleep", "30000", SubmitOptions::default())
        .await
        .expect("submit")
        .id;
    let stats = wait_stats(&client, "one child busy", |s| s.pool.busy == 1).await;
    let mut pids: Vec<u32> = stats.pool.children.iter().filter_map(|c| c.pid).collect();
    pids.sort_unstable();
    assert_eq!(pids, master.children(), "{:?}", stats.pool.children);
    let busy: Vec<_> = stats
        .pool
        .children
        .iter()
        .filter(|c| c.state == "busy")
        .collect();
    assert_eq!(busy.len(), 1, "{:?}", stats.pool.children);
    assert_eq!(busy[0].job.as_deref(), Some(job.as_str()));
    assert_eq!(busy[0].module.as_deref(), Some("sleep"));
    for c in &stats.pool.children {
        assert!(c.rss_bytes.is_some_and(|b| b > 0), "{c:?}");
        if c.state != "busy" {
            assert_eq!((c.state.as_str(), &c.job), ("idle", &None), "{c:?}");
        }
    }

    // One job done by an idle child: its count shows.
    let done = client
        .submit("echo", "x", bytes::Bytes::new())
        .unwrap()
        .finish()
        .await
        .unwrap();
    assert_eq!(&done.output[..], b"x");
    let stats = wait_stats(&client, "a job run", |s| {
        s.pool.children.iter().map(|c| c.jobs_run).sum::<u64>() == 1
    })
    .await;
    assert!(stats.pool.children.iter().all(|c| c.jobs_run <= 1));

    // The CLI's JSON carries the same list under pool.children, with
    // unknown fields left out rather than null.
    let o = cli(&["stats", "--connect", &master.addr], b"");
    assert_eq!(o.status.code(), Some(0));
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).expect("stats JSON");
    let listed = json["pool"]["children"].as_array().expect("pool.children");
    let mut json_pids: Vec<u64> = listed.iter().filter_map(|c| c["pid"].as_u64()).collect();
    json_pids.sort_unstable();
    let want: Vec<u64> = master.children().iter().map(|&p| u64::from(p)).collect();
    assert_eq!(json_pids, want, "{json}");
    for c in listed {
        for field in ["id", "pid", "state", "jobs_run", "prefetched", "rss_bytes"] {
            assert!(c.get(field).is_some(), "{field} missing in {c}");
        }
        assert!(c.as_object().unwrap().values().all(|v| !v.is_null()), "{c}");
    }
    assert!(listed.iter().any(|c| c["job"] == job.as_str()), "{json}");
}

#[test]
fn top_shows_every_child_and_quits_on_q() {
    let mut master = Master::ready(&["--pool-start", "3", "--pool-max", "3"]);
    let pids = master.children();
    assert_eq!(pids.len(), 3);
    let mut top = Tty::spawn(&["top", "--connect", &master.addr]);
    let screen = top.wait_screen("every child's pid", |text| {
        pids.iter().all(|p| text.contains(&p.to_string()))
    });
    assert!(screen.contains(&master.addr), "{screen}");
    assert!(screen.contains("3 children (start 3, max 3)"), "{screen}");
    for line in screen.lines() {
        assert!(line.chars().count() <= usize::from(COLS), "{line:?}");
    }
    // Raw mode while it runs (so the restore below is a real check).
    assert!(!top.cooked(), "top runs in raw mode");

    top.press("q");
    let status = top.exit_within(Duration::from_secs(5));
    assert_eq!(status.code(), Some(0), "screen:\n{}", top.text());
    assert!(top.cooked(), "terminal left in raw mode");
    top.wait_terminal("the main screen and the cursor back", |s| {
        !s.alternate_screen() && !s.hide_cursor()
    });
}

#[test]
fn top_says_when_its_master_is_gone_and_still_quits() {
    let mut master = Master::ready(&["--pool-start", "1"]);
    let pid = master.children()[0].to_string();
    let mut top = Tty::spawn(&["top", "--connect", &master.addr]);
    top.wait_screen("the child", |text| text.contains(&pid));
    master.signal(nix::sys::signal::Signal::SIGKILL);
    master.wait_exit(Duration::from_secs(5));
    let screen = top.wait_screen("disconnected", |t| t.contains("disconnected, retrying"));
    // The last figures stay on screen.
    assert!(screen.contains(&pid), "{screen}");
    assert_eq!(top.child.try_wait().unwrap(), None, "top exited");

    top.press("\x1b");
    let status = top.exit_within(Duration::from_secs(5));
    assert_eq!(status.code(), Some(0), "screen:\n{}", top.text());
    assert!(top.cooked(), "terminal left in raw mode");
}

#[test]
fn top_without_a_terminal_or_a_master_exits_2() {
    // stdout is a pipe: nothing to draw on.
    let o = cli(&["top", "--connect", "127.0.0.1:1"], b"");
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("terminal"),
        "{o:?}"
    );
    // A terminal but no master: one line, and the terminal untouched.
    let mut top = Tty::spawn(&["top", "--connect", "127.0.0.1:1"]);
    let status = top.exit_within(Duration::from_secs(10));
    assert_eq!(status.code(), Some(2));
    wait_until("the error on screen", Duration::from_secs(5), || {
        top.text().contains("cannot connect to 127.0.0.1:1")
    });
    assert!(top.cooked());
}
