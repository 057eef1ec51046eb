//! One task per child process. It owns the process handle and, once the
//! child has said hello, its connection; it `select!`s on the child's exit,
//! its frames and the pool's commands, and reports to the pool.
//!
//! Children are started by fork+exec of the handler program
//! (`tokio::process`), each in its own process group so a terminal's Ctrl-C
//! reaches only the master, which then stops them in order. The secret goes
//! on the child's stdin, never argv or the environment. Each child also
//! gets an answer journal (`taskmaster_proto::journal`), read here once its
//! process is gone, so answers it held back to share a write are not lost.

use crate::flow::{wait_open, Backlog};
use crate::journal;
pub use crate::types::ExitInfo;
use crate::types::{ChildEvent, ChildId, Reporter};
use bytes::{Bytes, BytesMut};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::collections::VecDeque;
use std::fs::File;
use std::io::Read;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use taskmaster_proto::codec::{self, FrameReader};
use taskmaster_proto::messages::{FromHandler, ToHandler};
use taskmaster_proto::SECRET_LEN;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tracing::{debug, warn};

/// A child spawned but silent this long is killed (and counts as a start-up
/// failure): without it a handler stuck before `connect` would hold a pool
/// slot forever.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// After SIGTERM, how long a child may take to exit before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// After the SIGTERM of a timed-out job's child, how long before SIGKILL.
const TERMINATE_GRACE: Duration = Duration::from_millis(500);
/// After the child's connection closes, how long its process may take to
/// exit before SIGKILL (its exit status names the cause of a failed job).
const EXIT_WAIT: Duration = Duration::from_secs(1);
/// After the process exits, how long to read frames it wrote just before.
const DRAIN_WAIT: Duration = Duration::from_millis(200);

/// A handler's connection after its hello.
pub struct ChildConn {
    /// Frames from the child (may already hold bytes read past the hello).
    pub reader: FrameReader<OwnedReadHalf>,
    /// The way to the child.
    pub writer: OwnedWriteHalf,
}

/// What the pool tells a child's task.
pub enum ChildCtl {
    /// The child proved itself: take its connection.
    Attach {
        /// The connection.
        conn: ChildConn,
        /// Modules it runs.
        modules: Vec<String>,
    },
    /// Run a job.
    Job {
        /// Job id.
        job: u64,
        /// Module.
        module: String,
        /// Input.
        input: Bytes,
        /// The submitting client's backlog: while it is past its window
        /// the child's frames are not read (flow control).
        gate: Option<Arc<Backlog>>,
        /// The job store's change that must be durable before the child
        /// may see the job (`--state-dir`: never run twice after a crash).
        after: Option<u64>,
    },
    /// Stop: SIGTERM, then SIGKILL after a grace.
    Stop,
    /// SIGKILL now.
    Kill,
    /// SIGTERM now, SIGKILL after a short grace (a timed-out job's child:
    /// it may clean up, but not hang on).
    Terminate,
}

/// `/dev/urandom`, opened once: a spawn while every file descriptor is in
/// use (a flood of clients) must not fail for want of one more.
static URANDOM: std::sync::OnceLock<std::fs::File> = std::sync::OnceLock::new();

/// Opens the random source; the master calls it at start, where a failure
/// is an error that ends it (exit 1) instead of a panic at a later spawn.
pub fn open_random() -> std::io::Result<()> {
    if URANDOM.get().is_none() {
        let _ = URANDOM.set(std::fs::File::open("/dev/urandom")?);
    }
    Ok(())
}

/// 32 fresh random bytes from the OS for one child's hello.
pub fn fresh_secret() -> [u8; SECRET_LEN] {
    let mut secret = [0u8; SECRET_LEN];
    open_random()
        .and_then(|()| {
            let mut f = URANDOM.get().expect("opened above");
            f.read_exact(&mut secret)
        })
        .expect("reading /dev/urandom (opened at start)");
    secret
}

/// Why a handler's hello is refused, if it is: `secret` and `pid` are what
/// its spawner knows of the child it names, `attached` whether that child
/// has connected already (a replayed hello). Shared by the master's pool
/// and the agent, which check their children alike.
pub fn refuse_hello(
    hello: &taskmaster_proto::messages::HandlerHello,
    secret: &[u8; SECRET_LEN],
    pid: Option<u32>,
    attached: bool,
) -> Option<&'static str> {
    if attached {
        Some("replayed")
    } else if !taskmaster_proto::handshake::secrets_match(secret, &hello.secret) {
        Some("wrong secret")
    } else if pid.is_some_and(|p| p != hello.pid) {
        Some("wrong pid")
    } else if hello.version != taskmaster_proto::PROTOCOL_VERSION {
        Some("another protocol version")
    } else {
        None
    }
}

/// Launches real handler processes.
pub struct ProcessLauncher {
    /// The handler program.
    pub handler: PathBuf,
    /// Where children connect back.
    pub connect: SocketAddr,
    /// Payload limit, passed on so children refuse oversized output cleanly.
    pub max_payload: usize,
    /// User and group ids to run children as (dropped before exec).
    pub uid: Option<u32>,
    /// Group id to run children as.
    pub gid: Option<u32>,
    /// Open-file limit for children.
    pub nofile: Option<u64>,
    /// Core-file size limit for children (0: no core dumps).
    pub core: Option<u64>,
    /// How often children send heartbeats (`None`: they send none and are
    /// not checked).
    pub heartbeat: Option<Duration>,
    /// Directory of executable modules, and the job-id prefix their
    /// environment needs.
    pub exec: Option<(PathBuf, Arc<str>)>,
    /// What the job store has made durable (`--state-dir`).
    pub committed: Option<tokio::sync::watch::Receiver<u64>>,
}

impl ProcessLauncher {
    /// Spawns child `id`; its task reports to `pool` and obeys `ctl`.
    pub fn spawn<R: Reporter>(
        &self,
        id: ChildId,
        secret: [u8; SECRET_LEN],
        ctl: mpsc::UnboundedReceiver<ChildCtl>,
        pool: R,
    ) {
        let mut cmd = Command::new(&self.handler);
        cmd.arg("--connect")
            .arg(self.connect.to_string())
            .arg("--child-id")
            .arg(id.to_string())
            .arg("--master-pid")
            .arg(std::process::id().to_string())
            .arg("--max-payload")
            .arg(self.max_payload.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            // The client token is the master's; module code must not read
            // it from its environment.
            .env_remove(taskmaster_proto::handshake::TOKEN_ENV)
            .env_remove(taskmaster_proto::handshake::TOKEN_FILE_ENV)
            .process_group(0);
        if let Some(gid) = self.gid {
            cmd.gid(gid);
        }
        if let Some(uid) = self.uid {
            cmd.uid(uid);
        }
        if let Some(n) = self.nofile {
            cmd.arg("--nofile").arg(n.to_string());
        }
        if let Some(n) = self.core {
            cmd.arg("--core").arg(n.to_string());
        }
        if let Some(every) = self.heartbeat {
            cmd.arg("--heartbeat-ms").arg(every.as_millis().to_string());
        }
        if let Some((dir, instance)) = &self.exec {
            cmd.arg("--exec-dir")
                .arg(dir)
                .arg("--instance")
                .arg(instance.as_ref());
        }
        let journal = journal::create();
        if let Some(file) = &journal {
            journal::keep_open_across_exec(&mut cmd, file.as_raw_fd());
        }
        // Spawn here, on the runtime's thread (the master's main thread, which
        // lives as long as the master): the child's death signal is tied to
        // the forking thread, so never fork from a short-lived blocking thread.
        match cmd.spawn() {
            Ok(child) => {
                let limits = Limits {
                    heartbeat: self.heartbeat,
                    max_payload: self.max_payload,
                    committed: self.committed.clone(),
                    journal,
                };
                tokio::spawn(supervise(id, child, secret, ctl, pool, limits));
            }
            Err(e) => pool.child_event(
                id,
                ChildEvent::Exited(ExitInfo::SpawnFailed(format!(
                    "{}: {e}",
                    self.handler.display()
                ))),
            ),
        }
    }
}

struct Proc {
    child: Child,
    pid: u32,
    killed: bool,
}

impl Proc {
    /// Signals the child's whole process group (the child leads its own),
    /// so processes its module started go with it.
    fn signal(&self, sig: Signal) {
        // Never 0 or 1: kill(-0) or kill(-1) would reach the master's own
        // group or every process.
        if self.pid > 1 {
            let _ = kill(Pid::from_raw(-(self.pid as i32)), sig);
        }
    }
    fn kill(&mut self) {
        self.killed = true;
        let _ = self.child.start_kill();
        self.signal(Signal::SIGKILL);
    }
    async fn reap(&mut self) -> ExitInfo {
        match self.child.wait().await {
            Ok(status) => ExitInfo::from_status(status, self.killed),
            Err(e) => ExitInfo::SpawnFailed(format!("wait failed: {e}")),
        }
    }
}

/// A child task's settings.
struct Limits {
    /// Heartbeat interval.
    heartbeat: Option<Duration>,
    /// Payload limit.
    max_payload: usize,
    /// The job store's durable watermark.
    committed: Option<tokio::sync::watch::Receiver<u64>>,
    /// The child's answer journal, if one could be made.
    journal: Option<File>,
}

async fn supervise<R: Reporter>(
    id: ChildId,
    child: Child,
    secret: [u8; SECRET_LEN],
    mut ctl: mpsc::UnboundedReceiver<ChildCtl>,
    pool: R,
    limits: Limits,
) {
    let pid = child.id().unwrap_or(0);
    let mut proc = Proc {
        child,
        pid,
        killed: false,
    };
    pool.child_event(id, ChildEvent::Spawned { pid });
    if let Some(mut stdin) = proc.child.stdin.take() {
        // 32 bytes fit any pipe buffer; a child that died already just
        // shows up below as an exit.
        let _ = stdin.write_all(&secret).await;
    }
    let info = match wait_attach(&mut proc, &mut ctl).await {
        Ok((conn, modules)) => {
            pool.child_event(id, ChildEvent::Ready { modules });
            serve(id, &mut proc, conn, &mut ctl, &pool, limits).await
        }
        Err(info) => info,
    };
    // Processes the module started and left behind die with their child:
    // nothing outlives it. (The group id cannot have been reused while any
    // member of the group is alive.)
    proc.signal(Signal::SIGKILL);
    pool.child_event(id, ChildEvent::Exited(info));
}

/// Waits for the pool to hand over the child's connection.
async fn wait_attach(
    proc: &mut Proc,
    ctl: &mut mpsc::UnboundedReceiver<ChildCtl>,
) -> Result<(ChildConn, Vec<String>), ExitInfo> {
    tokio::select! {
        info = proc.reap() => Err(info),
        cmd = ctl.recv() => match cmd {
            Some(ChildCtl::Attach { conn, modules }) => Ok((conn, modules)),
            // Stop, Kill, a job (impossible before ready) or a gone pool.
            _ => {
                proc.kill();
                Err(proc.reap().await)
            }
        },
        _ = tokio::time::sleep(READY_TIMEOUT) => {
            warn!(pid = proc.pid, "child not ready in time; killing it");
            proc.kill();
            Err(proc.reap().await)
        }
    }
}

/// Runs the attached child until its process is gone.
async fn serve<R: Reporter>(
    id: ChildId,
    proc: &mut Proc,
    conn: ChildConn,
    ctl: &mut mpsc::UnboundedReceiver<ChildCtl>,
    pool: &R,
    limits: Limits,
) -> ExitInfo {
    let Limits {
        heartbeat,
        max_payload,
        mut committed,
        journal,
    } = limits;
    // Once the process is gone: answers it held back, unless it broke the
    // rules (then nothing more it wrote is believed).
    let mut trusted = true;
    // Any frame proves the child alive; heartbeats cover the quiet times.
    // Silent for three beats: the pool is told (and kills it). Frames are
    // counted, not timed: no clock read per frame on the hot path.
    let mut frames: u64 = 0;
    let mut frames_at_beat: u64 = 0;
    let mut silent_beats: u32 = 0;
    let mut beat = tokio::time::interval(heartbeat.unwrap_or(Duration::from_secs(3600)));
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stall_reported = false;
    // Only a child that has sent a heartbeat is held to them: a handler not
    // built on the handler library may not send any.
    let mut beats = false;
    let ChildConn {
        mut reader,
        mut writer,
    } = conn;
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let stop_timer = tokio::time::sleep(Duration::MAX);
    tokio::pin!(stop_timer);
    let mut stopping = false;
    // The process exit is polled only once its waker fired, not on each of
    // the two wake-ups per job.
    let exit_watch = crate::wake::Gate::default();
    let beat_watch = crate::wake::Gate::default();
    // The client each job sent to the child answers to, oldest first: the
    // front one's is the job running now.
    let mut gates: VecDeque<(u64, Option<Arc<Backlog>>)> = VecDeque::new();
    // The running job is sending parts.
    let mut streaming = false;
    // Reports of the frames one read brought, told to the pool together
    // before the task waits again.
    let mut pending: Vec<ChildEvent> = Vec::new();
    loop {
        // The running job streams parts to a client that is not reading:
        // neither are we, so the child's socket fills and its `parts.send`
        // blocks until the client reads. (A final answer is always read:
        // holding it would pin an idle child to a slow client; a client's
        // unread answers stop its submits being read instead.)
        let held = gates
            .front()
            .filter(|_| streaming)
            .and_then(|(_, gate)| gate.as_ref())
            .filter(|gate| gate.blocked())
            .cloned();
        let paused = held.is_some();
        // The rest of what one read brought is taken without a trip
        // through select! per frame.
        let buffered = (!paused)
            .then(|| codec::next_buffered::<FromHandler, _>(&mut reader))
            .flatten();
        let frame = if let Some(frame) = buffered {
            frame
        } else {
            report(id, &mut pending, pool);
            tokio::select! {
                frame = codec::read_message::<FromHandler, _>(&mut reader), if !paused => frame,
                // The client read: the loop reads the child again.
                () = wait_open(held), if paused => continue,
                cmd = ctl.recv() => {
                    match cmd {
                        Some(ChildCtl::Job { job, module, input, gate, mut after }) => {
                            // Every job already waiting (prefetch) goes in one write.
                            buf.clear();
                            gates.push_back((job, gate));
                            let mut next = Some(ToHandler::Job { job, module, input });
                            let mut deferred = None;
                            while let Some(msg) = next.take() {
                                if let Err(e) = codec::encode(&msg, &mut buf) {
                                    warn!(pid = proc.pid, error = %e, "cannot encode job; killing child");
                                    proc.kill();
                                    break;
                                }
                                match ctl.try_recv() {
                                    Ok(ChildCtl::Job { job, module, input, gate, after: a }) => {
                                        after = after.max(a);
                                        gates.push_back((job, gate));
                                        next = Some(ToHandler::Job { job, module, input });
                                    }
                                    Ok(other) => deferred = Some(other),
                                    Err(_) => {}
                                }
                            }
                            if let (Some(seq), Some(c)) = (after, committed.as_mut()) {
                                // The store has these jobs as started before the
                                // child sees them; a gone store means the master
                                // is stopping.
                                if c.wait_for(|done| *done >= seq).await.is_err() {
                                    break;
                                }
                            }
                            if proc.killed || writer.write_all(&buf).await.is_err() {
                                break;
                            }
                            if buf.capacity() > 1 << 20 {
                                buf = BytesMut::with_capacity(16 * 1024);
                            }
                            match deferred {
                                Some(ChildCtl::Stop) if !stopping => {
                                    stopping = true;
                                    proc.signal(Signal::SIGTERM);
                                    stop_timer.as_mut().reset(tokio::time::Instant::now() + STOP_GRACE);
                                }
                                Some(ChildCtl::Kill) => proc.kill(),
                                Some(ChildCtl::Terminate) => {
                                    stopping = true;
                                    proc.signal(Signal::SIGTERM);
                                    stop_timer.as_mut().reset(tokio::time::Instant::now() + TERMINATE_GRACE);
                                }
                                _ => {}
                            }
                        }
                        Some(ChildCtl::Terminate) => {
                            stopping = true;
                            proc.signal(Signal::SIGTERM);
                            stop_timer.as_mut().reset(tokio::time::Instant::now() + TERMINATE_GRACE);
                        }
                        Some(ChildCtl::Stop) if !stopping => {
                            stopping = true;
                            debug!(pid = proc.pid, "stopping child");
                            proc.signal(Signal::SIGTERM);
                            stop_timer.as_mut().reset(tokio::time::Instant::now() + STOP_GRACE);
                        }
                        Some(ChildCtl::Kill) | None => proc.kill(),
                        Some(_) => {}
                    }
                    continue;
                }
                info = exit_watch.run(proc.reap()) => {
                    drain(id, &mut reader, &mut gates, pool).await;
                    if let Some(file) = &journal {
                        forward_journal(id, proc.pid, file, &mut gates, pool, max_payload);
                    }
                    return info;
                }
                _ = beat_watch.run(beat.tick()), if heartbeat.is_some() && beats && !stall_reported => {
                    if paused {
                        // Its heartbeats wait unread behind the parts we hold
                        // back: silence is ours, not the child's.
                        silent_beats = 0;
                        frames_at_beat = frames;
                    } else if frames == frames_at_beat {
                        silent_beats += 1;
                    } else {
                        silent_beats = 0;
                        frames_at_beat = frames;
                    }
                    if silent_beats >= 3 {
                        stall_reported = true;
                        let silent = heartbeat.unwrap_or_default() * silent_beats;
                        pool.child_event(id, ChildEvent::Stalled { silent });
                    }
                    continue;
                }
                _ = &mut stop_timer, if stopping => {
                    warn!(pid = proc.pid, "child ignored SIGTERM; killing it");
                    proc.kill();
                    stop_timer.as_mut().reset(tokio::time::Instant::now() + Duration::from_secs(3600));
                    continue;
                }
            }
        };
        match frame {
            Ok(Some(msg)) => {
                frames += 1;
                let size = match &msg {
                    FromHandler::Part { data, .. } => data.len(),
                    FromHandler::Done { output, .. } => output.len(),
                    _ => 0,
                };
                if size > max_payload {
                    // The frame limit has room for the header; the
                    // payload limit is the product's promise to clients.
                    let cause = format!("sent {size} bytes, over --max-payload {max_payload}");
                    warn!(pid = proc.pid, %cause, "child output too large; killing it");
                    report(id, &mut pending, pool);
                    pool.child_event(id, ChildEvent::Broken { cause });
                    proc.kill();
                    trusted = false;
                    break;
                }
                beats |= matches!(msg, FromHandler::Heartbeat);
                match &msg {
                    FromHandler::Done { job, .. } | FromHandler::Failed { job, .. } => {
                        streaming = false;
                        if gates.front().is_some_and(|(front, _)| front == job) {
                            gates.pop_front();
                        }
                    }
                    FromHandler::Part { .. } => streaming = true,
                    FromHandler::Heartbeat => {}
                }
                pending.extend(event_of(msg));
                // Frames already buffered decode without waiting, so a
                // child streaming parts could fill the pool's queue
                // faster than the pool empties it: let it run.
                if frames & 63 == 0 {
                    report(id, &mut pending, pool);
                    tokio::task::yield_now().await;
                }
            }
            Ok(None) => break,
            // A socket error or a cut-off frame is what a dead child
            // looks like (a reset when it died with jobs unread): like
            // EOF, the process is reaped below (killed if it lingers),
            // so its exit is told as it was, OOM hint included.
            Err(e)
                if proc.killed
                    || !matches!(
                        e,
                        codec::CodecError::FrameTooLarge { .. }
                            | codec::CodecError::OverLimit { .. }
                            | codec::CodecError::Malformed(_)
                    ) =>
            {
                debug!(pid = proc.pid, error = %e, "connection to child ended");
                break;
            }
            Err(e) => {
                // Never reuse a connection after a decode error: a late
                // frame could answer the wrong job. A frame that arrived
                // wrong is the child's fault, named in its job's message.
                warn!(pid = proc.pid, error = %e, "bad frame from child; killing it");
                report(id, &mut pending, pool);
                pool.child_event(
                    id,
                    ChildEvent::Broken {
                        cause: format!("sent a bad frame: {e}"),
                    },
                );
                proc.kill();
                trusted = false;
                break;
            }
        }
    }
    report(id, &mut pending, pool);
    // The connection is gone; the process should follow.
    drop(writer);
    let info = match tokio::time::timeout(EXIT_WAIT, proc.reap()).await {
        Ok(info) => info,
        Err(_) => {
            proc.kill();
            proc.reap().await
        }
    };
    if let Some(file) = journal.as_ref().filter(|_| trusted) {
        forward_journal(id, proc.pid, file, &mut gates, pool, max_payload);
    }
    info
}

/// Reads the frames a child wrote just before it exited (a final `Done`
/// followed by exit must count as done, not as a crash).
async fn drain<R: Reporter>(
    id: ChildId,
    reader: &mut FrameReader<OwnedReadHalf>,
    gates: &mut VecDeque<(u64, Option<Arc<Backlog>>)>,
    pool: &R,
) {
    let _ = tokio::time::timeout(DRAIN_WAIT, async {
        while let Ok(Some(msg)) = codec::read_message::<FromHandler, _>(reader).await {
            if let FromHandler::Done { job, .. } | FromHandler::Failed { job, .. } = &msg {
                if gates.front().is_some_and(|(front, _)| front == job) {
                    gates.pop_front();
                }
            }
            forward(id, msg, pool);
        }
    })
    .await;
}

/// Forwards the answers a dead child left in its journal for jobs still
/// waiting for one (an answer both written and journaled, when the child
/// died between the two, counts once). As on the socket, answers count
/// only in order: one for the oldest job still waiting; one for a job
/// behind it (which the child cannot have run yet) is not believed.
fn forward_journal<R: Reporter>(
    id: ChildId,
    pid: u32,
    file: &File,
    gates: &mut VecDeque<(u64, Option<Arc<Backlog>>)>,
    pool: &R,
    max_payload: usize,
) {
    if gates.is_empty() {
        return;
    }
    for msg in journal::answers_left(pid, file, max_payload, journal::oldest_first(gates)) {
        forward(id, msg, pool);
    }
}

/// Tells the pool the reports gathered so far: one alone as it is (no
/// allocation), more in one message.
fn report<R: Reporter>(id: ChildId, pending: &mut Vec<ChildEvent>, pool: &R) {
    match pending.len() {
        0 => {}
        1 => pool.child_event(id, pending.pop().expect("one report")),
        _ => pool.child_events(id, std::mem::take(pending)),
    }
}

fn forward<R: Reporter>(id: ChildId, msg: FromHandler, pool: &R) {
    if let Some(event) = event_of(msg) {
        pool.child_event(id, event);
    }
}

/// What a frame from the child reports to the pool (a heartbeat: nothing).
fn event_of(msg: FromHandler) -> Option<ChildEvent> {
    Some(match msg {
        FromHandler::Part { job, data } => ChildEvent::Part { job, data },
        FromHandler::Done {
            job,
            retire,
            output,
        } => ChildEvent::Done {
            job,
            output,
            retire,
        },
        FromHandler::Failed {
            job,
            reason,
            message,
            retire,
        } => ChildEvent::Failed {
            job,
            reason,
            message,
            retire,
        },
        FromHandler::Heartbeat => return None,
    })
}
