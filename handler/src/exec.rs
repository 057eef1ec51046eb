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
        let mut stdin = child.stdin.take();
        let mut stdout = child.stdout.take();
        let mut stderr = child.stderr.take();

        let (output, tail, parts_error) = std::thread::scope(|s| {
            s.spawn(move || {
                // A program that exits without reading its input is fine.
                if let Some(mut w) = stdin.take() {
                    let _ = w.write_all(input);
                }
            });
            let out = s.spawn(move || read_capped(stdout.as_mut(), max_payload));
            let err = s.spawn(move || read_tail(stderr.as_mut(), STDERR_TAIL));
            let parts_error = relay_parts(parts_read, parts, max_payload);
            (
                out.join().unwrap_or(Ok(Vec::new())),
                err.join().unwrap_or_default(),
                parts_error,
            )
        });
        let status = child
            .wait()
            .map_err(|e| format!("waiting for {}: {e}", self.path.display()))?;
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
        if let Some(e) = parts_error {
            return Err(e);
        }
        output.map_err(|n| {
            format!("response of more than {n} bytes exceeds the limit of {max_payload}")
        })
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

/// Reads all of `r`, keeping at most `cap` bytes; `Err(cap)` when there was
/// more. Reads to the end either way, so the program never blocks on a full
/// pipe.
fn read_capped(r: Option<&mut impl Read>, cap: usize) -> Result<Vec<u8>, usize> {
    let Some(r) = r else { return Ok(Vec::new()) };
    let mut kept = Vec::new();
    let mut over = false;
    let mut buf = [0u8; 64 * 1024];
    loop {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if kept.len() + n > cap {
                    over = true;
                } else {
                    kept.extend_from_slice(&buf[..n]);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    if over {
        Err(cap)
    } else {
        Ok(kept)
    }
}

/// Reads all of `r`, keeping its last `keep` bytes.
fn read_tail(r: Option<&mut impl Read>, keep: usize) -> Vec<u8> {
    let Some(r) = r else { return Vec::new() };
    let mut tail = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                tail.extend_from_slice(&buf[..n]);
                if tail.len() > 2 * keep {
                    tail.drain(..tail.len() - keep);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    if tail.len() > keep {
        tail.drain(..tail.len() - keep);
    }
    tail
}

/// Sends each line read from `r` as a part, newline included (a last
/// unterminated line too), until every writer has closed it. Returns why
/// the job must fail, if a line was too long or the master could not take
/// a part; reads to the end in any case.
fn relay_parts(mut r: io::PipeReader, parts: &mut Parts<'_>, max_payload: usize) -> Option<String> {
    let mut problem = None;
    let mut line: Vec<u8> = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    let mut send = |line: &mut Vec<u8>, problem: &mut Option<String>| {
        if problem.is_none() {
            if let Err(e) = parts.send(line) {
                *problem = Some(format!("part not sent: {e}"));
            }
        }
        line.clear();
    };
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let mut rest = &buf[..n];
        while let Some(end) = rest.iter().position(|&b| b == b'\n') {
            line.extend_from_slice(&rest[..=end]);
            send(&mut line, &mut problem);
            rest = &rest[end + 1..];
        }
        line.extend_from_slice(rest);
        if line.len() > max_payload {
            // Keeps draining; the part would exceed a frame anyway.
            problem.get_or_insert_with(|| {
                format!("a part line on fd 3 exceeds the limit of {max_payload} bytes")
            });
            line.clear();
        }
    }
    if !line.is_empty() {
        send(&mut line, &mut problem);
    }
    problem
}
