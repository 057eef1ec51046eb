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

use crate::child::{ChildConn, ChildCtl, ProcessLauncher};
use crate::types::{ChildEvent, ChildId, ExitInfo, Reporter};
use clap::Args;
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use taskmaster_proto::agent::{
    AgentHello, ChildEnd, FromAgent, ToAgent, LINK_HEARTBEAT, LINK_SILENCE,
};
use taskmaster_proto::codec::{self, FrameReader};
use taskmaster_proto::handshake::{read_hello, secrets_match, HELLO_TIMEOUT};
use taskmaster_proto::messages::{HandlerHello, Hello};
use taskmaster_proto::SECRET_LEN;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

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

/// Reports of the agent's child tasks, to the link's loop.
#[derive(Clone)]
struct ToLoop(mpsc::UnboundedSender<(ChildId, ChildEvent)>);

impl Reporter for ToLoop {
    fn child_event(&self, id: ChildId, event: ChildEvent) {
        let _ = self.0.send((id, event));
    }
}

/// One of the agent's children.
struct Kid {
    ctl: mpsc::UnboundedSender<ChildCtl>,
    secret: [u8; SECRET_LEN],
    pid: Option<u32>,
    attached: bool,
    /// When it said it was ready (then the master knows it).
    ready_at: Option<Instant>,
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

/// Accepts the children's connections and passes on their hellos.
async fn accept_children(
    local: TcpListener,
    hellos: mpsc::UnboundedSender<(HandlerHello, ChildConn)>,
    max_payload: usize,
) {
    loop {
        let Ok((stream, _)) = local.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let hellos = hellos.clone();
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            let (read, write) = stream.into_split();
            let mut reader = codec::frame_reader(read, max_payload);
            // Nothing big before the hello; the master's limit after it.
            reader
                .decoder_mut()
                .set_max_frame_length(codec::HEADER_LIMIT);
            let hello = read_hello(&mut reader, HELLO_TIMEOUT).await;
            reader
                .decoder_mut()
                .set_max_frame_length(codec::max_frame_len(max_payload));
            match hello {
                Ok(Hello::Handler(hello)) => {
                    let _ = hellos.send((
                        hello,
                        ChildConn {
                            reader,
                            writer: write,
                        },
                    ));
                }
                Ok(_) => warn!("a non-handler hello on the agent's children's socket; closing"),
                Err(e) => warn!(error = %e, "closing a connection on the children's socket"),
            }
        });
    }
}

/// What the link's loop hears from its children: hellos on the local
/// socket, and their tasks' reports.
type Inbox = (
    mpsc::UnboundedReceiver<(HandlerHello, ChildConn)>,
    mpsc::UnboundedReceiver<(ChildId, ChildEvent)>,
);

/// The link's state: the children and the way to the master.
struct Agent {
    launcher: ProcessLauncher,
    reporter: ToLoop,
    kids: HashMap<ChildId, Kid>,
    next: ChildId,
    out: mpsc::UnboundedSender<FromAgent>,
    /// Children missing, to spawn at `spawn_at`.
    to_spawn: usize,
    spawn_at: Instant,
    /// The wait after the next child that dies young.
    backoff: Duration,
    /// Since when it has been draining (a stop signal came).
    draining: Option<Instant>,
    /// `--grace`.
    grace: Duration,
}

impl Agent {
    async fn run<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut FrameReader<R>,
        writer: &mut tokio::task::JoinHandle<Result<(), codec::CodecError>>,
        (mut hellos, mut events): Inbox,
        mut stop: tokio::sync::watch::Receiver<u32>,
    ) -> Ended {
        let grace_over = tokio::time::sleep(Duration::MAX);
        tokio::pin!(grace_over);
        // A signal that came while connecting counts.
        let mut signals_seen = 0;
        let mut beat = tokio::time::interval(LINK_HEARTBEAT);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let silent_limit = (LINK_SILENCE.as_millis() / LINK_HEARTBEAT.as_millis()) as u32;
        let (mut frames, mut seen_at_beat, mut silent) = (0u64, (0u64, 0usize), 0u32);
        let cause = loop {
            let signals = *stop.borrow_and_update();
            if signals > signals_seen {
                signals_seen = signals;
                if signals >= 2 || self.draining.is_some() {
                    warn!("second stop signal: killing every child now");
                    self.kill_all(&mut events).await;
                    return Ended::Stopped;
                }
                info!(
                    children = self.kids.len(),
                    grace_secs = self.grace.as_secs_f64(),
                    "stopping: children finish their jobs, take no more"
                );
                self.draining = Some(Instant::now());
                self.to_spawn = 0;
                let _ = self.out.send(FromAgent::Draining);
                grace_over.as_mut().reset(Instant::now() + self.grace);
            }
            if self.draining.is_some() && self.kids.is_empty() {
                info!("every child has finished; stopping");
                return Ended::Stopped;
            }
            tokio::select! {
                Ok(()) = stop.changed() => {}
                () = &mut grace_over, if self.draining.is_some() => {
                    warn!(left = self.kids.len(), "grace period over: killing the children left");
                    self.kill_all(&mut events).await;
                    return Ended::Stopped;
                }
                frame = codec::read_message::<ToAgent, _>(reader) => match frame {
                    Ok(Some(msg)) => {
                        frames += 1;
                        if let Err(cause) = self.order(msg) {
                            break cause;
                        }
                    }
                    Ok(None) if self.draining.is_some() => {
                    self.kill_all(&mut events).await;
                    return Ended::Stopped;
                }
                Ok(None) => break "the master closed the link".to_owned(),
                    Err(e) => break format!("link broken: {e}"),
                },
                r = &mut *writer => break match r {
                    Ok(Err(e)) => format!("link broken: {e}"),
                    _ => "link closed".to_owned(),
                },
                Some((id, event)) = events.recv() => self.event(id, event),
                Some((hello, conn)) = hellos.recv() => self.hello(hello, conn),
                () = tokio::time::sleep_until(self.spawn_at), if self.to_spawn > 0 => self.spawn_missing(),
                _ = beat.tick() => {
                    // Bytes of a big frame still arriving count as life:
                    // a slow link carrying one is not a silent one.
                    let progress = (frames, reader.read_buffer().len());
                    if progress == seen_at_beat {
                        silent += 1;
                        if silent >= silent_limit {
                            break format!("no heartbeat from the master for {:.1} s", LINK_SILENCE.as_secs_f64());
                        }
                    } else {
                        silent = 0;
                        seen_at_beat = progress;
                    }
                    let _ = self.out.send(FromAgent::Heartbeat);
                }
            }
        };
        self.kill_all(&mut events).await;
        Ended::Lost(cause)
    }

    /// An order from the master; `Err` ends the link.
    fn order(&mut self, msg: ToAgent) -> Result<(), String> {
        let (child, ctl) = match msg {
            ToAgent::Heartbeat => return Ok(()),
            ToAgent::Job {
                child,
                job,
                module,
                input,
            } => (
                child,
                ChildCtl::Job {
                    job,
                    module,
                    input,
                    gate: None,
                    after: None,
                },
            ),
            ToAgent::Stop { child } => (child, ChildCtl::Stop),
            ToAgent::Terminate { child } => (child, ChildCtl::Terminate),
            ToAgent::Kill { child } => (child, ChildCtl::Kill),
            ToAgent::Welcome { .. } => return Err("the master sent a second welcome".into()),
            ToAgent::Refused { message } => {
                return Err(format!("the master refused this agent: {message}"))
            }
        };
        match self.kids.get(&child) {
            Some(kid) => {
                let _ = kid.ctl.send(ctl);
            }
            // Gone already: its ChildGone is on the way and tells the
            // master what became of the job.
            None => debug!(child, "order for a child that is gone"),
        }
        Ok(())
    }

    fn spawn_missing(&mut self) {
        while self.to_spawn > 0 {
            self.to_spawn -= 1;
            let id = self.next;
            self.next += 1;
            let secret = crate::child::fresh_secret();
            let (ctl, ctl_rx) = mpsc::unbounded_channel();
            self.kids.insert(
                id,
                Kid {
                    ctl,
                    secret,
                    pid: None,
                    attached: false,
                    ready_at: None,
                },
            );
            self.launcher
                .spawn(id, secret, ctl_rx, self.reporter.clone());
        }
    }

    fn hello(&mut self, hello: HandlerHello, conn: ChildConn) {
        let Some(kid) = self.kids.get_mut(&hello.child_id) else {
            warn!(
                child = hello.child_id,
                pid = hello.pid,
                "hello for an unknown child; closing"
            );
            return;
        };
        let good = !kid.attached
            && secrets_match(&kid.secret, &hello.secret)
            && kid.pid.is_none_or(|p| p == hello.pid)
            && hello.version == taskmaster_proto::PROTOCOL_VERSION;
        if !good {
            warn!(
                child = hello.child_id,
                pid = hello.pid,
                "handler hello refused; closing"
            );
            return;
        }
        kid.attached = true;
        let _ = kid.ctl.send(ChildCtl::Attach {
            conn,
            modules: hello.modules,
        });
    }

    fn event(&mut self, child: ChildId, event: ChildEvent) {
        let msg = match event {
            ChildEvent::Spawned { pid } => {
                if let Some(kid) = self.kids.get_mut(&child) {
                    kid.pid = Some(pid);
                }
                debug!(child, pid, "child spawned");
                return;
            }
            ChildEvent::Ready { modules } => {
                let Some(kid) = self.kids.get_mut(&child) else {
                    return;
                };
                kid.ready_at = Some(Instant::now());
                let pid = kid.pid.unwrap_or(0);
                info!(child, pid, "child ready");
                FromAgent::ChildUp {
                    child,
                    pid,
                    modules,
                }
            }
            ChildEvent::Part { job, data } => FromAgent::Part { child, job, data },
            ChildEvent::Done {
                job,
                output,
                retire,
            } => FromAgent::Done {
                child,
                job,
                retire,
                output,
            },
            ChildEvent::Failed {
                job,
                reason,
                message,
                retire,
            } => FromAgent::Failed {
                child,
                job,
                reason,
                message,
                retire,
            },
            ChildEvent::Stalled { silent } => FromAgent::Stalled {
                child,
                silent_ms: silent.as_millis() as u64,
            },
            ChildEvent::Broken { cause } => FromAgent::Broken { child, cause },
            ChildEvent::Exited(info) => {
                let Some(kid) = self.kids.remove(&child) else {
                    return;
                };
                info!(child, pid = kid.pid, how = %info.describe(), "child exited");
                self.replace(kid.ready_at);
                if kid.ready_at.is_none() {
                    // The master never heard of it.
                    return;
                }
                FromAgent::ChildGone {
                    child,
                    end: end_of(info),
                }
            }
        };
        let _ = self.out.send(msg);
    }

    /// Plans a replacement for a child that exited: at once if it had
    /// settled, else after a back-off that doubles while children die young.
    fn replace(&mut self, ready_at: Option<Instant>) {
        if self.draining.is_some() {
            return;
        }
        let settled = ready_at.is_some_and(|t| t.elapsed() >= SETTLED);
        if settled {
            self.backoff = FIRST_BACKOFF;
            if self.to_spawn == 0 {
                self.spawn_at = Instant::now();
            }
        } else {
            warn!(
                retry_in_ms = self.backoff.as_millis() as u64,
                "a child died before it settled; backing off"
            );
            self.spawn_at = self.spawn_at.max(Instant::now() + self.backoff);
            self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        }
        self.to_spawn += 1;
    }

    /// Kills every child and waits (a while) until they are reaped.
    async fn kill_all(&mut self, events: &mut mpsc::UnboundedReceiver<(ChildId, ChildEvent)>) {
        for kid in self.kids.values() {
            let _ = kid.ctl.send(ChildCtl::Kill);
        }
        let deadline = Instant::now() + REAP_WAIT;
        while !self.kids.is_empty() {
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Some((id, ChildEvent::Exited(_)))) => {
                    self.kids.remove(&id);
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        if !self.kids.is_empty() {
            warn!(left = self.kids.len(), "children not reaped in time");
        }
    }
}

fn end_of(info: ExitInfo) -> ChildEnd {
    match info {
        ExitInfo::Status {
            code,
            signal,
            killed_by_master,
        } => ChildEnd::Status {
            code,
            signal,
            killed: killed_by_master,
        },
        ExitInfo::SpawnFailed(why) => ChildEnd::SpawnFailed(why),
        ExitInfo::Lost(why) => ChildEnd::SpawnFailed(why),
    }
}
