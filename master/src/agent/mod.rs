//! `taskmaster agent`: lends this host's children to a master over one link
//! (SPEC section 14). The agent pre-forks `--slots` handler children with
//! the master's own launcher and child task (`crate::child`: the same
//! secrets, process groups, death signal, heartbeats and payload limit),
//! checks their hellos on a loopback socket of its own, and relays between
//! them and the master ([`taskmaster_proto::agent`]). The master decides
//! everything else: which child runs which job, when one is stopped.
//!
//! The agent replaces a child that exits (at once if it had been ready a
//! while, after a growing back-off if it dies young). When the link is lost
//! it kills every child, and connects again with back-off, spawning them
//! afresh once the master welcomes it.

mod link;

use crate::child::ProcessLauncher;
use clap::Args;
use link::{accept_children, Agent, ToLoop};
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use taskmaster_proto::agent::{AgentHello, FromAgent, ToAgent};
use taskmaster_proto::codec;
use taskmaster_proto::handshake::HELLO_TIMEOUT;
use taskmaster_proto::messages::Hello;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{error, info, warn};

/// `taskmaster agent` flags.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// The master's `--agent-listen` address.
    #[arg(long, env = "TASKMASTER_AGENT_CONNECT", value_name = "HOST:PORT")]
    pub connect: String,
    /// Children to run here [default: this host's CPUs].
    #[arg(long, env = "TASKMASTER_AGENT_SLOTS", value_name = "K", value_parser = clap::value_parser!(u32).range(1..=crate::agents::MAX_SLOTS as i64))]
    pub slots: Option<u32>,
    /// The child program [default: taskmaster-handler beside this executable].
    #[arg(long, env = "TASKMASTER_HANDLER", value_name = "PATH")]
    pub handler: Option<PathBuf>,
    /// A directory of executable modules for the children (as the master's
    /// --exec-dir).
    #[arg(long, env = "TASKMASTER_EXEC_DIR", value_name = "DIR")]
    pub exec_dir: Option<PathBuf>,
    /// The name the master shows for this agent [default: the host name].
    #[arg(long, env = "TASKMASTER_AGENT_NAME", value_name = "NAME")]
    pub name: Option<String>,
    /// Speak TLS to the master, trusting only the certificates in FILE
    /// (PEM). Without it the link is plain TCP (a master accepts that only
    /// on loopback).
    #[arg(long, env = "TASKMASTER_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// A file whose first line is the client token (else
    /// TASKMASTER_TOKEN_FILE, else TASKMASTER_TOKEN).
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// On SIGTERM/SIGINT, how long children may take to finish the jobs
    /// they hold before they are killed (a second signal kills at once).
    #[arg(long, env = "TASKMASTER_AGENT_GRACE", default_value_t = 30.0, value_name = "SECONDS", value_parser = parse_grace)]
    pub grace: f64,
}

fn parse_grace(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (0.0..=1e6).contains(&v) => Ok(v),
        _ => Err(format!("expected a number of seconds, got {s:?}")),
    }
}

/// First wait before connecting again; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A child ready this long before it died is replaced at once.
const SETTLED: Duration = Duration::from_secs(1);
/// How long the agent waits for its children to be reaped after a kill.
const REAP_WAIT: Duration = Duration::from_secs(3);
/// How long connecting (and TLS) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Everything fixed for the agent's life.
struct Setup {
    args: AgentArgs,
    slots: u32,
    name: String,
    handler: PathBuf,
    token: Option<String>,
    tls: Option<tokio_rustls::TlsConnector>,
}

/// Runs the agent until SIGTERM or SIGINT; exit status 2 for unusable
/// flags, 0 after a signal.
pub async fn run(args: AgentArgs) -> ExitCode {
    let usage = |e: String| {
        eprintln!("taskmaster agent: {e}");
        ExitCode::from(crate::client::EXIT_USAGE)
    };
    let token = match &args.token_file {
        Some(path) => match taskmaster_proto::handshake::read_token_file(path) {
            Ok(t) => Some(t),
            Err(e) => return usage(format!("--token-file: {e}")),
        },
        None => match taskmaster_proto::handshake::token_from_env() {
            Ok(t) => t,
            Err(e) => return usage(e),
        },
    };
    let tls = match args
        .tls_ca
        .as_deref()
        .map(crate::tls::connector)
        .transpose()
    {
        Ok(t) => t,
        Err(e) => return usage(e.to_string()),
    };
    let handler = args.handler.clone().unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|dir| dir.join("taskmaster-handler")))
            .unwrap_or_else(|| PathBuf::from("taskmaster-handler"))
    });
    if args
        .connect
        .rsplit_once(':')
        .is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err())
    {
        return usage(format!("--connect {:?}: expected HOST:PORT", args.connect));
    }
    if let Err(e) = crate::config::check_executable(&handler) {
        return usage(e.to_string());
    }
    let exec_dir = match &args.exec_dir {
        None => None,
        Some(dir) => match crate::config::exec_dir_modules(&handler, dir) {
            Ok((absolute, _)) => Some(absolute),
            Err(e) => return usage(e.to_string()),
        },
    };
    if let Err(e) = crate::child::open_random() {
        return usage(format!("/dev/urandom: {e}"));
    }
    let slots = args
        .slots
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u32));
    let name = args.name.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "agent".into())
    });
    let setup = Setup {
        args: AgentArgs { exec_dir, ..args },
        slots,
        name,
        handler,
        token,
        tls,
    };
    // Counts SIGTERMs and SIGINTs: the first drains, the second kills.
    let (stop_tx, mut stop) = tokio::sync::watch::channel(0u32);
    tokio::spawn(count_stop_signals(stop_tx));
    let mut backoff = FIRST_BACKOFF;
    loop {
        // The session watches the signals itself: once children run, a
        // stop drains them instead of dropping everything.
        let outcome = session(&setup, stop.clone()).await;
        match outcome {
            Ok(Ended::Stopped) => {
                info!("agent stopped");
                return ExitCode::SUCCESS;
            }
            Ok(Ended::Lost(cause)) => {
                warn!(master = %setup.args.connect, %cause, "link to the master lost; children killed; connecting again");
                backoff = FIRST_BACKOFF;
            }
            Err(e) => {
                error!(master = %setup.args.connect, error = %e, retry_in_ms = backoff.as_millis() as u64, "cannot serve the master")
            }
        }
        if *stop.borrow_and_update() > 0 {
            return ExitCode::SUCCESS;
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => return ExitCode::SUCCESS,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Counts SIGTERMs and SIGINTs into `count`.
async fn count_stop_signals(count: tokio::sync::watch::Sender<u32>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Never drop `count`: its receivers would see a change at once.
        return std::future::pending().await;
    };
    // SIGHUP would end the agent (its default action) and take its
    // children's jobs with it: it means nothing to an agent, so say so.
    let mut hup = signal(SignalKind::hangup()).ok();
    loop {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
            Some(()) = async { hup.as_mut()?.recv().await } => {
                info!("SIGHUP ignored (an agent has nothing to reload)");
                continue;
            }
        }
        count.send_modify(|n| *n += 1);
    }
}

/// How a served link ended.
enum Ended {
    /// It was up and is gone (the text says why).
    Lost(String),
    /// A stop signal ended it (drained, or killed by a second signal or
    /// at the end of `--grace`).
    Stopped,
}

/// Why a link could not be opened.
#[derive(Debug, thiserror::Error)]
enum LinkError {
    #[error("connecting: {0}")]
    Connect(std::io::Error),
    #[error("no connection within {0:?}")]
    Timeout(Duration),
    #[error("TLS: {0}")]
    Tls(std::io::Error),
    #[error("--connect {0}: not HOST:PORT")]
    Address(String),
    #[error("the master refused this agent: {0}")]
    Refused(String),
    #[error("no welcome from the master: {0}")]
    NoWelcome(String),
    #[error("children's socket: {0}")]
    Local(std::io::Error),
}

/// `fut`'s output, or `None` if a stop signal comes first (or came).
async fn unless_stopped<F: std::future::Future>(
    fut: F,
    stop: &mut tokio::sync::watch::Receiver<u32>,
) -> Option<F::Output> {
    if *stop.borrow_and_update() > 0 {
        return None;
    }
    tokio::select! {
        out = fut => Some(out),
        Ok(()) = stop.changed() => None,
    }
}

async fn session(
    setup: &Setup,
    mut stop: tokio::sync::watch::Receiver<u32>,
) -> Result<Ended, LinkError> {
    let addr = &setup.args.connect;
    let connect = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr.as_str()));
    let Some(tcp) = unless_stopped(connect, &mut stop).await else {
        return Ok(Ended::Stopped);
    };
    let tcp = tcp
        .map_err(|_| LinkError::Timeout(CONNECT_TIMEOUT))?
        .map_err(LinkError::Connect)?;
    let _ = tcp.set_nodelay(true);
    match &setup.tls {
        None => serve(tcp, setup, stop).await,
        Some(tls) => {
            let host = addr
                .rsplit_once(':')
                .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
                .ok_or_else(|| LinkError::Address(addr.clone()))?;
            let server = tokio_rustls::rustls::pki_types::ServerName::try_from(host.to_owned())
                .map_err(|_| LinkError::Address(addr.clone()))?;
            let handshake = tokio::time::timeout(CONNECT_TIMEOUT, tls.connect(server, tcp));
            let Some(stream) = unless_stopped(handshake, &mut stop).await else {
                return Ok(Ended::Stopped);
            };
            let stream = stream
                .map_err(|_| LinkError::Timeout(CONNECT_TIMEOUT))?
                .map_err(LinkError::Tls)?;
            serve(stream, setup, stop).await
        }
    }
}

async fn serve<S>(
    stream: S,
    setup: &Setup,
    mut stop: tokio::sync::watch::Receiver<u32>,
) -> Result<Ended, LinkError>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (read, mut write) = tokio::io::split(stream);
    let mut reader = codec::frame_reader(read, codec::DEFAULT_MAX_PAYLOAD);
    let hello = Hello::Agent(AgentHello {
        version: taskmaster_proto::PROTOCOL_VERSION,
        token: setup.token.clone(),
        name: setup.name.clone(),
        slots: setup.slots,
        pid: std::process::id(),
    });
    let frame = codec::to_frame(&hello).map_err(|e| LinkError::NoWelcome(e.to_string()))?;
    write.write_all(&frame).await.map_err(LinkError::Connect)?;
    let (out, out_rx) = mpsc::unbounded_channel::<FromAgent>();
    let mut writer = tokio::spawn(codec::write_batched(write, out_rx, |m, buf| {
        codec::encode(&m, buf)
    }));
    let welcome = tokio::time::timeout(
        HELLO_TIMEOUT * 5,
        codec::read_message::<ToAgent, _>(&mut reader),
    );
    let Some(welcome) = unless_stopped(welcome, &mut stop).await else {
        return Ok(Ended::Stopped);
    };
    let (instance, max_payload, heartbeat) = match welcome {
        Err(_) => return Err(LinkError::NoWelcome("none in time".into())),
        Ok(Err(e)) => return Err(LinkError::NoWelcome(e.to_string())),
        Ok(Ok(None)) => return Err(LinkError::NoWelcome("connection closed".into())),
        Ok(Ok(Some(ToAgent::Refused { message }))) => return Err(LinkError::Refused(message)),
        Ok(Ok(Some(ToAgent::Welcome {
            instance,
            max_payload,
            child_heartbeat_ms,
            ..
        }))) => (
            instance,
            usize::try_from(max_payload).unwrap_or(usize::MAX),
            (child_heartbeat_ms > 0).then(|| Duration::from_millis(child_heartbeat_ms)),
        ),
        Ok(Ok(Some(other))) => return Err(LinkError::NoWelcome(format!("got {other:?} instead"))),
    };
    codec::set_max_payload(&mut reader, max_payload);
    let local = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(LinkError::Local)?;
    let launcher = ProcessLauncher {
        handler: setup.handler.clone(),
        connect: local.local_addr().map_err(LinkError::Local)?,
        max_payload,
        uid: None,
        gid: None,
        nofile: None,
        core: Some(0),
        heartbeat,
        exec: setup
            .args
            .exec_dir
            .clone()
            .map(|dir| (dir, Arc::from(instance.as_str()))),
        committed: None,
    };
    info!(master = %setup.args.connect, slots = setup.slots, name = %setup.name, "welcomed by the master; spawning children");
    let (hello_tx, hello_rx) = mpsc::unbounded_channel();
    let hellos = tokio::spawn(accept_children(local, hello_tx, max_payload));
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let mut agent = Agent {
        launcher,
        reporter: ToLoop(events_tx),
        kids: HashMap::new(),
        next: 1,
        out,
        to_spawn: setup.slots as usize,
        spawn_at: Instant::now(),
        backoff: FIRST_BACKOFF,
        draining: None,
        grace: Duration::from_secs_f64(setup.args.grace),
    };
    let ended = agent
        .run(&mut reader, &mut writer, (hello_rx, events_rx), stop)
        .await;
    hellos.abort();
    // What the loop sent last (a drained child's `ChildGone`) goes out
    // before the link closes; a stuck link is not waited for long.
    drop(agent);
    if tokio::time::timeout(Duration::from_secs(1), &mut writer)
        .await
        .is_err()
    {
        writer.abort();
    }
    Ok(ended)
}
