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
mod lifeline;
pub mod typed;

use bytes::BytesMut;
use std::collections::HashMap;
use std::io::{self, BufReader, Write};
use std::net::TcpStream;
use std::panic::{self, AssertUnwindSafe};
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

/// The socket to the master, with a reusable write buffer.
struct Conn {
    stream: TcpStream,
    buf: BytesMut,
    max_payload: usize,
    /// Shared with the heartbeat writer (see `lifeline`).
    write_lock: std::sync::Arc<std::sync::Mutex<()>>,
}

impl Conn {
    /// Adds a frame to the write buffer.
    fn push(&mut self, msg: &FromHandler) -> io::Result<()> {
        codec::encode(msg, &mut self.buf).map_err(io::Error::other)
    }

    /// Writes everything buffered.
    fn flush(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            let _guard = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
            self.stream.write_all(&self.buf)?;
            self.buf.clear();
        }
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

    let mut table: HashMap<String, Box<dyn Module>> = HashMap::with_capacity(modules.len());
    for mut module in modules {
        let name = module.name().to_owned();
        module
            .start()
            .map_err(|message| HandlerError::ModuleStart {
                module: name.clone(),
                message,
            })?;
        table.insert(name, module);
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
        // The last answer leaves the process before the next job starts,
        // even when more jobs are already read (prefetched): if the next
        // job crashes the process, an answer still in our buffer would be
        // lost, its job reported failed although it ran, and the crashing
        // job taken for one never started and run again elsewhere.
        conn.flush()?;
        let Some(frame) = codec::read_frame_blocking(&mut reader, args.max_payload)? else {
            break;
        };
        let ToHandler::Job { job, module, input } = codec::decode(frame)?;
        let answer = match table.get_mut(&module) {
            None => FromHandler::Failed {
                job,
                reason: Reason::UnknownModule,
                message: format!("this child does not run module {module:?}"),
                retire: false,
            },
            Some(m) => run_one(m.as_mut(), job, &input, &mut conn),
        };
        conn.push(&answer)?;
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
