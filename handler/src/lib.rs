//! The child runtime: what a handler process runs after the master spawns it.
//!
//! # Layout
//!
//! - this file: [`Module`], the trait a module implements; [`Parts`],
//!   which sends partial output; [`run`], which connects back to the
//!   master, says hello and runs one job at a time, batching its answers.
//! - [`typed`]: serde helpers matching the client's `do_typed`.
//! - `args` (private): the command line the master gives its children
//!   and the secret on stdin.
//! - `exec` (private): executable modules from `--exec-dir`.
//! - `journal` (private): the shared-memory copy of answers not yet
//!   written, which lets answers to prefetched short jobs share a write.
//! - `lifeline` (private): dying with the master (death signal, parent
//!   check, socket hang-up watcher) and sending heartbeats.
//!
//! The stock `taskmaster-handler` binary is in the `taskmaster-modules`
//! package (`modules/src/main.rs`), which links the standard modules.
//!
//! The runtime is plain threads and blocking sockets, no async runtime: one
//! job at a time needs none, module code may block, and a child that starts
//! small and fast is what lets the master grow the pool quickly.

mod args;
mod exec;
mod journal;
mod lifeline;
pub mod typed;

use bytes::BytesMut;
use std::collections::HashMap;
use std::io::{self, BufReader, Write};
use std::net::TcpStream;
use std::panic::{self, AssertUnwindSafe};
use std::time::{Duration, Instant};
use taskmaster_proto::codec::{self, CodecError};
use taskmaster_proto::messages::{FromHandler, HandlerHello, Hello, ToHandler, PROTOCOL_VERSION};
use taskmaster_proto::Reason;

/// A unit of work a handler child can run. Module code may block: it runs in
/// its own process, one job at a time.
pub trait Module: Send {
    /// The name clients submit jobs to.
    fn name(&self) -> &str;

    /// One-time start-up before the child reports ready. An error here stops
    /// the child, and the master counts it as a start-up failure.
    fn start(&mut self) -> Result<(), String> {
        Ok(())
    }

    /// Runs one job: input bytes to response bytes, or a failure message
    /// (the job fails with reason `failed`). A panic also fails the job
    /// `failed`, and the child then exits to be replaced.
    fn call(&mut self, input: &[u8], parts: &mut Parts<'_>) -> Result<Vec<u8>, String>;
}

/// Sends parts of a job's response before the final one; each reaches the
/// submitting client as it is sent.
pub struct Parts<'a> {
    job: u64,
    conn: &'a mut Conn,
}

impl Parts<'_> {
    /// Sends one part now.
    pub fn send(&mut self, data: &[u8]) -> io::Result<()> {
        if data.len() > self.conn.max_payload {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "part of {} bytes exceeds the limit of {}",
                    data.len(),
                    self.conn.max_payload
                ),
            ));
        }
        self.conn.send(&FromHandler::Part {
            job: self.job,
            data: bytes::Bytes::copy_from_slice(data),
        })
    }
}

/// An answer may wait in our buffer while the next job runs only if that
/// job's module last ran this fast here...
const HOLD_RUN: Duration = Duration::from_micros(250);
/// ...and the oldest answer waiting is younger than this: the bound on
/// the delay holding answers adds, as long as that job runs as fast as
/// last time (nothing flushes the held answers while it runs).
const HOLD_AGE: Duration = Duration::from_millis(1);

/// The socket to the master, with a reusable write buffer.
struct Conn {
    stream: TcpStream,
    buf: BytesMut,
    max_payload: usize,
    /// Shared with the heartbeat writer (see `lifeline`).
    write_lock: std::sync::Arc<std::sync::Mutex<()>>,
    /// Where answers not yet written are copied, if the master gave one.
    journal: Option<journal::Journal>,
    /// Everything in `buf` is also in the journal: it survives our crash.
    journaled: bool,
    /// When the oldest answer in `buf` was made.
    oldest: Option<Instant>,
}

impl Conn {
    /// Adds a frame to the write buffer.
    fn push(&mut self, msg: &FromHandler) -> io::Result<()> {
        self.journaled = false;
        codec::encode(msg, &mut self.buf).map_err(io::Error::other)
    }

    /// Adds an answer to the write buffer and, while it fits, to the journal.
    fn push_answer(&mut self, msg: &FromHandler, now: Instant) -> io::Result<()> {
        let start = self.buf.len();
        let journaled = self.journaled || start == 0;
        codec::encode(msg, &mut self.buf).map_err(io::Error::other)?;
        self.journaled = journaled
            && self
                .journal
                .as_mut()
                .is_some_and(|j| j.append(&self.buf[start..]));
        self.oldest.get_or_insert(now);
        Ok(())
    }

    /// Whether the answers buffered may wait while a job of a module that
    /// last ran for `last` here runs: they are all in the journal, the job
    /// is short, and they have not waited long.
    fn may_hold(&self, last: Option<Duration>, now: Instant) -> bool {
        self.journaled
            && last.is_some_and(|t| t < HOLD_RUN)
            && self
                .oldest
                .is_some_and(|t| now.duration_since(t) < HOLD_AGE)
    }

    /// Writes everything buffered.
    fn flush(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            let _guard = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
            self.stream.write_all(&self.buf)?;
            self.buf.clear();
        }
        if let Some(j) = self.journal.as_mut() {
            j.clear();
        }
        self.journaled = true;
        self.oldest = None;
        Ok(())
    }

    fn send(&mut self, msg: &FromHandler) -> io::Result<()> {
        self.push(msg)?;
        self.flush()
    }
}

/// Runs a handler child with these modules; never returns. The master
/// starts it with `--connect`, `--child-id`, `--master-pid` and
/// `--max-payload`, and writes the child's secret on its stdin.
pub fn run(modules: Vec<Box<dyn Module>>) -> ! {
    match serve(modules) {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("taskmaster-handler[{}]: {e}", std::process::id());
            std::process::exit(e.exit_code())
        }
    }
}

/// Why a handler child stops.
#[derive(Debug, thiserror::Error)]
enum HandlerError {
    #[error("{0}")]
    Usage(String),
    #[error("master is gone")]
    Orphaned,
    #[error("reading the secret from stdin: {0}")]
    Secret(io::Error),
    #[error("module {module:?} failed to start: {message}")]
    ModuleStart { module: String, message: String },
    #[error("two modules are named {0:?}")]
    DuplicateModule(String),
    #[error("connecting to the master at {addr}: {source}")]
    Connect { addr: String, source: io::Error },
    #[error("talking to the master: {0}")]
    Io(#[from] io::Error),
    #[error("bad frame from the master: {0}")]
    Codec(#[from] CodecError),
}

impl HandlerError {
    fn exit_code(&self) -> i32 {
        match self {
            HandlerError::Usage(_) => 2,
            HandlerError::Orphaned => 0,
            _ => 1,
        }
    }
}

/// Builds the module table: the program's own modules, then the
/// executable ones of `exec_dir`; a name given twice is a usage error
/// naming both.
fn module_table(
    modules: Vec<Box<dyn Module>>,
    exec_dir: Option<&std::path::Path>,
    instance: &str,
) -> Result<Vec<Box<dyn Module>>, HandlerError> {
    let mut all = modules;
    if let Some(dir) = exec_dir {
        for module in exec::scan(dir, instance).map_err(HandlerError::Usage)? {
            if all.iter().any(|m| m.name() == module.name()) {
                return Err(HandlerError::Usage(format!(
                    "{} gives the module name {:?}, which is a built-in module of this handler",
                    module.path().display(),
                    module.name()
                )));
            }
            all.push(Box::new(module));
        }
    }
    let mut names: Vec<&str> = all.iter().map(|m| m.name()).collect();
    names.sort_unstable();
    if let Some(pair) = names.windows(2).find(|w| w[0] == w[1]) {
        return Err(HandlerError::DuplicateModule(pair[0].to_owned()));
    }
    Ok(all)
}

fn serve(modules: Vec<Box<dyn Module>>) -> Result<(), HandlerError> {
    let args = match args::Args::parse(std::env::args().skip(1)).map_err(HandlerError::Usage)? {
        args::Mode::Serve(args) => args,
        args::Mode::List { exec_dir } => {
            let mut names: Vec<String> = module_table(modules, exec_dir.as_deref(), "")?
                .iter()
                .map(|m| m.name().to_owned())
                .collect();
            names.sort();
            println!("{}", names.join("\n"));
            return Ok(());
        }
    };
    let modules = module_table(modules, args.exec_dir.as_deref(), &args.instance)?;
    // The death signal first, then the parent check: if the master died
    // before prctl, only getppid() can tell.
    lifeline::die_with_parent(args.master_pid).map_err(|_| HandlerError::Orphaned)?;
    let secret = args::read_secret(io::stdin().lock()).map_err(HandlerError::Secret)?;
    // Limits the master asked for, set before any module code runs (a
    // module cannot have raised them first).
    use nix::sys::resource::{setrlimit, Resource};
    for (resource, limit) in [
        (Resource::RLIMIT_NOFILE, args.nofile),
        (Resource::RLIMIT_CORE, args.core),
    ] {
        if let Some(limit) = limit {
            setrlimit(resource, limit, limit)
                .map_err(|e| HandlerError::Usage(format!("setrlimit {resource:?} {limit}: {e}")))?;
        }
    }

    // Taken before any thread starts (the environment is changed).
    let journal = journal::Journal::from_env();
    // Each module with how long its last job took here.
    let mut table: HashMap<String, (Box<dyn Module>, Option<Duration>)> =
        HashMap::with_capacity(modules.len());
    for mut module in modules {
        let name = module.name().to_owned();
        module
            .start()
            .map_err(|message| HandlerError::ModuleStart {
                module: name.clone(),
                message,
            })?;
        table.insert(name, (module, None));
    }
    let mut names: Vec<String> = table.keys().cloned().collect();
    names.sort();

    let stream = TcpStream::connect(&args.connect).map_err(|source| HandlerError::Connect {
        addr: args.connect.clone(),
        source,
    })?;
    stream.set_nodelay(true)?;
    let write_lock = std::sync::Arc::new(std::sync::Mutex::new(()));
    let heartbeat = match args.heartbeat_ms {
        Some(ms) => Some(lifeline::Heartbeat {
            every: std::time::Duration::from_millis(ms),
            frame: codec::to_frame(&FromHandler::Heartbeat)
                .map_err(io::Error::other)?
                .to_vec(),
            write_lock: write_lock.clone(),
        }),
        None => None,
    };
    lifeline::exit_on_hangup(stream.try_clone()?, heartbeat);
    let mut reader = BufReader::with_capacity(64 * 1024, stream.try_clone()?);
    let mut conn = Conn {
        stream,
        buf: BytesMut::with_capacity(64 * 1024),
        max_payload: args.max_payload,
        write_lock,
        journaled: true,
        journal,
        oldest: None,
    };
    let hello = Hello::Handler(HandlerHello {
        version: PROTOCOL_VERSION,
        child_id: args.child_id,
        pid: std::process::id(),
        secret,
        modules: names,
    });
    codec::encode(&hello, &mut conn.buf).map_err(io::Error::other)?;

    loop {
        // An answer still in our buffer when the next job crashes the
        // process would be lost: its job reported failed although it ran,
        // and the crashing job taken for one never started and run again
        // elsewhere. So answers leave before the next job starts, unless
        // they are all in the journal (which outlives us) and the next job
        // is short and already read: then one write carries many answers.
        if !frame_buffered(reader.buffer()) {
            // The read may block: nothing waits in our buffer meanwhile.
            conn.flush()?;
        }
        let Some(frame) = codec::read_frame_blocking(&mut reader, args.max_payload)? else {
            break;
        };
        let ToHandler::Job { job, module, input } = codec::decode(frame)?;
        let mut started = Instant::now();
        if !conn.buf.is_empty() {
            let last = table.get(&module).and_then(|(_, last)| *last);
            if !conn.may_hold(last, started) {
                conn.flush()?;
                started = Instant::now();
            }
        }
        let answer = match table.get_mut(&module) {
            None => FromHandler::Failed {
                job,
                reason: Reason::UnknownModule,
                message: format!("this child does not run module {module:?}"),
                retire: false,
            },
            Some((m, last)) => {
                let answer = run_one(m.as_mut(), job, &input, &mut conn);
                *last = Some(started.elapsed());
                answer
            }
        };
        conn.push_answer(&answer, Instant::now())?;
        if matches!(answer, FromHandler::Failed { retire: true, .. }) {
            // A panic left the module's state unknown: let the master replace us.
            return Ok(conn.flush()?);
        }
        if conn.buf.capacity() > 1 << 20 {
            conn.flush()?;
            conn.buf = BytesMut::with_capacity(64 * 1024);
        }
    }
    Ok(conn.flush()?)
}

/// Whether a whole frame is already in `buf`: reading it will not block.
fn frame_buffered(buf: &[u8]) -> bool {
    buf.get(..4)
        .and_then(|len| len.try_into().ok())
        .is_some_and(|len: [u8; 4]| buf.len() - 4 >= u32::from_be_bytes(len) as usize)
}

fn run_one(module: &mut dyn Module, job: u64, input: &[u8], conn: &mut Conn) -> FromHandler {
    let max_payload = conn.max_payload;
    let mut parts = Parts { job, conn };
    match panic::catch_unwind(AssertUnwindSafe(|| module.call(input, &mut parts))) {
        Ok(Ok(output)) if output.len() > max_payload => FromHandler::Failed {
            job,
            reason: Reason::Failed,
            message: format!(
                "response of {} bytes exceeds the limit of {max_payload}",
                output.len()
            ),
            retire: false,
        },
        Ok(Ok(output)) => FromHandler::Done {
            job,
            retire: false,
            output: output.into(),
        },
        Ok(Err(message)) => FromHandler::Failed {
            job,
            reason: Reason::Failed,
            message: clip(message),
            retire: false,
        },
        Err(panic) => {
            let text = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-text panic payload".to_owned());
            FromHandler::Failed {
                job,
                reason: Reason::Failed,
                message: clip(format!("module panicked: {text}")),
                retire: true,
            }
        }
    }
}

fn clip(message: String) -> String {
    codec::clip_message(message)
}
