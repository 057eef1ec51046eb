//! Executable modules (`--exec-dir`, SPEC section 12): every executable
//! regular file directly in the directory is a module named after its file
//! name without its extension, run once per job: the input on its stdin,
//! the response from its stdout, each line it writes to fd 3 a part, the
//! exit status deciding between completed and failed.
//!
//! The program runs in the child's process group (the child leads it), so
//! the master's kill of that group on a time limit or cancel takes the
//! program and whatever it started. Its environment is empty but for a
//! fixed `PATH`, `TASKMASTER_JOB_ID` and `TASKMASTER_MODULE`: nothing of the
//! master's (the client token above all) reaches it.

use crate::{Module, Parts};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// `PATH` of an executable module: the system's directories, not the
/// master's own `PATH`.
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The stderr kept for a failure message: its end, where the error usually is.
const STDERR_TAIL: usize = 8 * 1024;

/// One executable file serving as a module.
pub(crate) struct ExecModule {
    name: String,
    path: PathBuf,
    /// The master's job-id prefix, for `TASKMASTER_JOB_ID`.
    instance: String,
}

/// The modules in `dir`, sorted by name; an error names what is wrong
/// (two files giving one name, a name that is not UTF-8).
pub(crate) fn scan(dir: &Path, instance: &str) -> Result<Vec<ExecModule>, String> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| format!("--exec-dir {}: {e}", dir.display()))?;
    let mut modules: Vec<ExecModule> = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("--exec-dir {}: {e}", dir.display()))?;
        let path = entry.path();
        let file_name = entry.file_name();
        // Hidden files are editors' and tools' leftovers, never modules.
        if file_name.as_encoded_bytes().starts_with(b".") || !is_executable_file(&path) {
            continue;
        }
        let name = Path::new(&file_name)
            .file_stem()
            .and_then(|s| s.to_str())
            .ok_or_else(|| format!("{}: a module's file name must be UTF-8", path.display()))?
            .to_owned();
        if let Some(other) = modules.iter().find(|m| m.name == name) {
            return Err(format!(
                "{} and {} both give the module name {name:?}",
                other.path.display(),
                path.display()
            ));
        }
        modules.push(ExecModule {
            name,
            path,
            instance: instance.to_owned(),
        });
    }
    modules.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(modules)
}

impl ExecModule {
    /// The file it runs.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

fn is_executable_file(path: &Path) -> bool {
    // Symlinks are followed: a link to a program is that program.
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

impl Module for ExecModule {
    fn name(&self) -> &str {
        &self.name
    }

    fn call(&mut self, input: &[u8], parts: &mut Parts<'_>) -> Result<Vec<u8>, String> {
        let max_payload = parts.conn.max_payload;
        let (parts_read, parts_write) =
            io::pipe().map_err(|e| format!("cannot make the parts pipe: {e}"))?;
        let mut cmd = Command::new(&self.path);
        cmd.env_clear()
            .env("PATH", PATH)
            .env(
                "TASKMASTER_JOB_ID",
                taskmaster_proto::jobs::format_id(&self.instance, parts.job),
            )
            .env("TASKMASTER_MODULE", &self.name)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        before_exec(&mut cmd, parts_write.as_raw_fd());
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", self.path.display()))?;
        // Our copy of the write end must go, or fd 3 never ends.
        drop(parts_write);
        let pipes = Pipes {
            stdin: child.stdin.take(),
            stdout: child.stdout.take(),
            stderr: child.stderr.take(),
            parts: Some(parts_read),
        };
        // The job ends when the program exits, not when the last process
        // holding its pipes does: a daemon it left behind must not hold the
        // child (it dies with the child's process group later).
        let (exited, exit_seen) =
            io::pipe().map_err(|e| format!("cannot make the exit pipe: {e}"))?;
        let waiter = std::thread::spawn(move || {
            let status = child.wait();
            drop(exit_seen);
            status
        });
        let mut out = Collected::new(max_payload);
        pump(pipes, exited, input, &mut out, parts);
        let status = waiter
            .join()
            .map_err(|_| "the waiting thread panicked".to_owned())?
            .map_err(|e| format!("waiting for {}: {e}", self.path.display()))?;
        let Collected {
            output,
            over,
            tail,
            problem,
            ..
        } = out;
        let failure = |what: String| {
            let tail = String::from_utf8_lossy(&tail);
            let tail = tail.trim_end();
            if tail.is_empty() {
                what
            } else {
                // The end of stderr matters most: keep it within the message limit.
                let room = taskmaster_proto::codec::MAX_MESSAGE.saturating_sub(what.len() + 2);
                let mut start = tail.len().saturating_sub(room);
                while !tail.is_char_boundary(start) {
                    start += 1;
                }
                format!("{what}: {}", &tail[start..])
            }
        };
        if let Some(sig) = status.signal() {
            let name = nix::sys::signal::Signal::try_from(sig)
                .map(|s| s.as_str().to_owned())
                .unwrap_or_else(|_| format!("signal {sig}"));
            return Err(failure(format!("{} was killed by {name}", self.name)));
        }
        if !status.success() {
            let code = status.code().unwrap_or(-1);
            return Err(failure(format!("{} exited with status {code}", self.name)));
        }
        if let Some(e) = problem {
            return Err(e);
        }
        if over {
            return Err(format!(
                "response of more than {max_payload} bytes exceeds the limit of {max_payload}"
            ));
        }
        Ok(output)
    }
}

/// Makes `fd` the program's fd 3 and ties the program's life to ours.
#[allow(unsafe_code)]
fn before_exec(cmd: &mut Command, fd: std::os::fd::RawFd) {
    // SAFETY: the closure makes only async-signal-safe calls (fcntl, dup2,
    // prctl) between fork and exec, and touches no memory but its copy of
    // `fd`.
    unsafe {
        cmd.pre_exec(move || {
            // dup2 clears close-on-exec on fd 3; fcntl does when the pipe
            // already is fd 3.
            let ok = if fd == 3 {
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, 3)
            };
            if ok == -1 {
                return Err(io::Error::last_os_error());
            }
            // The master kills our process group; this covers the master's
            // own death (kill -9), which kills only us.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The program's end of each pipe; `None` once closed.
struct Pipes {
    stdin: Option<std::process::ChildStdin>,
    stdout: Option<std::process::ChildStdout>,
    stderr: Option<std::process::ChildStderr>,
    parts: Option<io::PipeReader>,
}

/// What the program wrote, kept within bounds.
struct Collected {
    max_payload: usize,
    /// Stdout, up to `max_payload`.
    output: Vec<u8>,
    /// Stdout went past `max_payload`.
    over: bool,
    /// The end of stderr.
    tail: Vec<u8>,
    /// The fd-3 line being read.
    line: Vec<u8>,
    /// Why the job fails although the program succeeded.
    problem: Option<String>,
}

impl Collected {
    fn new(max_payload: usize) -> Collected {
        Collected {
            max_payload,
            output: Vec::new(),
            over: false,
            tail: Vec::new(),
            line: Vec::new(),
            problem: None,
        }
    }

    fn stdout(&mut self, data: &[u8]) {
        if self.output.len() + data.len() > self.max_payload {
            self.over = true;
        } else {
            self.output.extend_from_slice(data);
        }
    }

    fn stderr(&mut self, data: &[u8]) {
        self.tail.extend_from_slice(data);
        if self.tail.len() > 2 * STDERR_TAIL {
            self.tail.drain(..self.tail.len() - STDERR_TAIL);
        }
    }

    /// Sends each complete line (newline included) as a part.
    fn parts(&mut self, mut data: &[u8], parts: &mut Parts<'_>) {
        while let Some(end) = data.iter().position(|&b| b == b'\n') {
            self.line.extend_from_slice(&data[..=end]);
            self.send_line(parts);
            data = &data[end + 1..];
        }
        self.line.extend_from_slice(data);
        if self.line.len() > self.max_payload {
            self.problem.get_or_insert_with(|| {
                format!(
                    "a part line on fd 3 exceeds the limit of {} bytes",
                    self.max_payload
                )
            });
            self.line.clear();
        }
    }

    fn send_line(&mut self, parts: &mut Parts<'_>) {
        if self.problem.is_none() {
            if let Err(e) = parts.send(&self.line) {
                self.problem = Some(format!("part not sent: {e}"));
            }
        }
        self.line.clear();
    }

    /// The program is gone: its last unterminated line is a part too.
    fn finish(&mut self, parts: &mut Parts<'_>) {
        if !self.line.is_empty() {
            self.send_line(parts);
        }
        if self.tail.len() > STDERR_TAIL {
            self.tail.drain(..self.tail.len() - STDERR_TAIL);
        }
    }
}

/// Moves bytes between the program's pipes and `out` until the program
/// exits (`exited` hangs up), then takes what its pipes still hold.
fn pump(
    mut pipes: Pipes,
    exited: io::PipeReader,
    input: &[u8],
    out: &mut Collected,
    parts: &mut Parts<'_>,
) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    for fd in [
        pipes.stdin.as_ref().map(|p| p.as_fd()),
        pipes.stdout.as_ref().map(|p| p.as_fd()),
        pipes.stderr.as_ref().map(|p| p.as_fd()),
        pipes.parts.as_ref().map(|p| p.as_fd()),
    ]
    .into_iter()
    .flatten()
    {
        let _ = set_nonblocking(fd);
    }
    if input.is_empty() {
        pipes.stdin = None;
    }
    let mut written = 0;
    let mut buf = vec![0u8; 64 * 1024];
    let mut running = true;
    while running {
        let (readable, writable) = (PollFlags::POLLIN, PollFlags::POLLOUT);
        let ready: [bool; 5] = {
            let mut fds = [
                PollFd::new(exited.as_fd(), readable),
                poll_fd(pipes.stdin.as_ref(), &exited, writable),
                poll_fd(pipes.stdout.as_ref(), &exited, readable),
                poll_fd(pipes.stderr.as_ref(), &exited, readable),
                poll_fd(pipes.parts.as_ref(), &exited, readable),
            ];
            if poll(&mut fds, PollTimeout::NONE).is_err() {
                // EINTR: poll again.
                continue;
            }
            fds.map(|fd| fd.revents().is_some_and(|r| !r.is_empty()))
        };
        let ready = |i: usize| ready[i];
        running = !ready(0);
        if ready(1) {
            if let Some(stdin) = pipes.stdin.as_mut() {
                match stdin.write(&input[written..]) {
                    Ok(n) => written += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    // The program closed its stdin: it wants no more.
                    Err(_) => written = input.len(),
                }
                if written == input.len() {
                    pipes.stdin = None;
                }
            }
        }
        if ready(2) {
            drain(&mut pipes.stdout, &mut buf, |d| out.stdout(d));
        }
        if ready(3) {
            drain(&mut pipes.stderr, &mut buf, |d| out.stderr(d));
        }
        if ready(4) {
            drain(&mut pipes.parts, &mut buf, |d| out.parts(d, parts));
        }
    }
    // Whatever the program wrote before it exited is in the pipes now.
    drain(&mut pipes.stdout, &mut buf, |d| out.stdout(d));
    drain(&mut pipes.stderr, &mut buf, |d| out.stderr(d));
    drain(&mut pipes.parts, &mut buf, |d| out.parts(d, parts));
    out.finish(parts);
    if pipes.stdout.is_some() || pipes.stderr.is_some() || pipes.parts.is_some() {
        // Something the program started still holds its pipes.
        kill_leftovers();
    }
}

/// Kills every other process of our process group: what a program left
/// running when it exited (its own children share our group), so the next
/// job starts clean. A program that left the group on purpose (setsid) is
/// its own business.
fn kill_leftovers() {
    let me = nix::unistd::getpid();
    let group = nix::unistd::getpgrp();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid pgrp ...": comm may hold spaces and ')'.
        let pgrp = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(2))
            .and_then(|f| f.parse::<i32>().ok());
        if pgrp == Some(group.as_raw()) && pid != me.as_raw() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// A poll entry for `pipe`, or a placeholder asking nothing.
fn poll_fd<'a>(
    pipe: Option<&'a impl std::os::fd::AsFd>,
    placeholder: &'a io::PipeReader,
    flags: nix::poll::PollFlags,
) -> nix::poll::PollFd<'a> {
    use std::os::fd::AsFd;
    match pipe {
        Some(p) => nix::poll::PollFd::new(p.as_fd(), flags),
        None => nix::poll::PollFd::new(placeholder.as_fd(), nix::poll::PollFlags::empty()),
    }
}

/// Reads `pipe` until it would block; closes it at its end.
fn drain<R: Read>(pipe: &mut Option<R>, buf: &mut [u8], mut take: impl FnMut(&[u8])) {
    while let Some(r) = pipe.as_mut() {
        match r.read(buf) {
            Ok(0) => *pipe = None,
            Ok(n) => take(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(_) => *pipe = None,
        }
    }
}

fn set_nonblocking(fd: std::os::fd::BorrowedFd<'_>) -> nix::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = OFlag::from_bits_truncate(fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL)?);
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)).map(drop)
}
