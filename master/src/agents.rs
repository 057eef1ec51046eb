//! The master's side of the agent link (`--agent-listen`, SPEC section 14):
//! the listener, TLS, the agent's hello, and one task per link that turns
//! the agent's frames into child reports for the pool and the pool's orders
//! for each of its children into frames. The pool sees an agent's child as
//! a slot like its own (`pool/agents.rs`); only this file knows a link.
//!
//! A link is lost when it closes, breaks a rule, or is silent for
//! [`LINK_SILENCE`]; then every child it announced is reported gone at once
//! (its job fails `error` naming the agent) before the agent itself.

use crate::child::ChildCtl;
use crate::config::Token;
use crate::pool::PoolHandle;
use crate::types::{ChildEvent, ChildId, ExitInfo, FastMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use taskmaster_proto::agent::{
    AgentHello, ChildEnd, FromAgent, ToAgent, LINK_HEARTBEAT, LINK_SILENCE,
};
use taskmaster_proto::codec::{self, FrameReader};
use taskmaster_proto::handshake::{read_hello, HELLO_TIMEOUT};
use taskmaster_proto::messages::Hello;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

/// How long a new link may take over its TLS handshake.
const TLS_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest agent name kept (longer ones are cut).
const MAX_NAME: usize = 64;
/// Most slots one agent may offer.
pub const MAX_SLOTS: u32 = 1024;
/// Links at once still in their TLS handshake or before their hello: more
/// are closed at once, so silent connections cannot pile up on a socket
/// that may face the network.
const MAX_OPENING: usize = 64;

/// What every link needs.
pub struct AgentsConfig {
    /// The token agents must present (`None`: any agent, loopback only).
    pub token: Option<Token>,
    /// TLS (`None`: plain TCP, loopback only).
    pub tls: Option<TlsAcceptor>,
    /// `--max-payload`.
    pub max_payload: usize,
    /// `--heartbeat` for children (`None`: off).
    pub child_heartbeat: Option<Duration>,
    /// The job-id prefix.
    pub instance: Arc<str>,
    /// The job store's durable watermark (`--state-dir`).
    pub committed: Option<watch::Receiver<u64>>,
}

/// Accepts agents until the process ends.
pub async fn accept_loop(listener: TcpListener, pool: PoolHandle, cfg: Arc<AgentsConfig>) {
    let next = Arc::new(AtomicU64::new(1));
    let opening = Arc::new(tokio::sync::Semaphore::new(MAX_OPENING));
    let full = crate::listener::Quiet::default();
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let Ok(place) = opening.clone().try_acquire_owned() else {
                    if let Some(count) = full.due() {
                        warn!(%peer, count, "{MAX_OPENING} agent links are opening already; closing a new one");
                    }
                    continue;
                };
                let (pool, cfg) = (pool.clone(), cfg.clone());
                let id = next.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    if let Err(e) = open(stream, peer, id, pool, cfg, place).await {
                        warn!(%peer, error = %e, "agent link refused");
                    }
                });
            }
            Err(e) => {
                warn!(error = %e, "accepting an agent failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Why a link never started.
#[derive(Debug, thiserror::Error)]
enum OpenError {
    #[error("TLS handshake: {0}")]
    Tls(std::io::Error),
    #[error("no TLS handshake within {0:?}")]
    TlsTimeout(Duration),
    #[error("{0}")]
    Hello(#[from] taskmaster_proto::handshake::HandshakeError),
    #[error("not an agent's hello")]
    NotAgent,
    #[error("{0}")]
    Refused(String),
}

async fn open(
    stream: TcpStream,
    peer: SocketAddr,
    id: u64,
    pool: PoolHandle,
    cfg: Arc<AgentsConfig>,
    place: tokio::sync::OwnedSemaphorePermit,
) -> Result<(), OpenError> {
    let _ = stream.set_nodelay(true);
    match cfg.tls.clone() {
        None => serve(stream, peer, id, pool, cfg, place).await,
        Some(tls) => {
            let stream = tokio::time::timeout(TLS_TIMEOUT, tls.accept(stream))
                .await
                .map_err(|_| OpenError::TlsTimeout(TLS_TIMEOUT))?
                .map_err(OpenError::Tls)?;
            serve(stream, peer, id, pool, cfg, place).await
        }
    }
}

/// Checks an agent's hello: the reason to refuse it, if any.
fn check(hello: &AgentHello, token: Option<&Token>) -> Result<(), String> {
    if hello.version != taskmaster_proto::PROTOCOL_VERSION {
        return Err(format!(
            "protocol version {} (this master speaks {})",
            hello.version,
            taskmaster_proto::PROTOCOL_VERSION
        ));
    }
    if let Some(token) = token {
        if !hello.token.as_deref().is_some_and(|t| token.matches(t)) {
            return Err("bad or missing token".into());
        }
    }
    if !(1..=MAX_SLOTS).contains(&hello.slots) {
        return Err(format!(
            "slots must be 1 to {MAX_SLOTS}, not {}",
            hello.slots
        ));
    }
    Ok(())
}

/// A name fit for logs and stats: printable, at most [`MAX_NAME`] chars.
fn clean_name(name: &str, peer: SocketAddr) -> Arc<str> {
    let clean: String = name
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_NAME)
        .collect();
    if clean.trim().is_empty() {
        peer.ip().to_string().into()
    } else {
        clean.into()
    }
}

async fn serve<S>(
    stream: S,
    peer: SocketAddr,
    id: u64,
    pool: PoolHandle,
    cfg: Arc<AgentsConfig>,
    place: tokio::sync::OwnedSemaphorePermit,
) -> Result<(), OpenError>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (read, write) = tokio::io::split(stream);
    let mut reader = codec::frame_reader(read, cfg.max_payload);
    reader
        .decoder_mut()
        .set_max_frame_length(codec::HEADER_LIMIT);
    let hello = match read_hello(&mut reader, HELLO_TIMEOUT).await? {
        Hello::Agent(hello) => hello,
        _ => return Err(OpenError::NotAgent),
    };
    drop(place);
    reader
        .decoder_mut()
        .set_max_frame_length(codec::max_frame_len(cfg.max_payload));
    let (out, out_rx) = mpsc::unbounded_channel::<ToAgent>();
    let writer = tokio::spawn(codec::write_batched(write, out_rx, |m, buf| {
        codec::encode(&m, buf)
    }));
    if let Err(message) = check(&hello, cfg.token.as_ref()) {
        let _ = out.send(ToAgent::Refused {
            message: message.clone(),
        });
        drop(out);
        let _ = tokio::time::timeout(Duration::from_secs(1), writer).await;
        return Err(OpenError::Refused(format!(
            "agent {:?}: {message}",
            hello.name
        )));
    }
    let name = clean_name(&hello.name, peer);
    let _ = out.send(ToAgent::Welcome {
        version: taskmaster_proto::PROTOCOL_VERSION,
        instance: cfg.instance.to_string(),
        max_payload: cfg.max_payload as u64,
        child_heartbeat_ms: cfg.child_heartbeat.map_or(0, |d| d.as_millis() as u64),
    });
    pool.agent_joined(id, name.clone(), peer.to_string(), hello.slots);
    let mut link = Link {
        id,
        slots: hello.slots as usize,
        name: name.clone(),
        pool: pool.clone(),
        out: out.clone(),
        children: FastMap::default(),
        max_payload: cfg.max_payload,
        committed: cfg.committed.clone(),
    };
    let mut writer = writer;
    let cause = link.run(&mut reader, &mut writer).await;
    writer.abort();
    info!(agent = %name, %peer, %cause, "agent link closed");
    for (_, child) in link.children.drain() {
        pool.child_event(child, ChildEvent::Exited(ExitInfo::Lost(cause.clone())));
    }
    pool.agent_gone(id, cause);
    Ok(())
}

/// One accepted link.
struct Link {
    id: u64,
    /// The slots it offered: it may have no more children in the pool.
    slots: usize,
    name: Arc<str>,
    pool: PoolHandle,
    out: mpsc::UnboundedSender<ToAgent>,
    /// The agent's child ids of the children in the pool, and theirs there.
    children: FastMap<u64, ChildId>,
    max_payload: usize,
    committed: Option<watch::Receiver<u64>>,
}

impl Link {
    /// Serves the link until it is lost; says why.
    async fn run<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut FrameReader<R>,
        writer: &mut tokio::task::JoinHandle<Result<(), codec::CodecError>>,
    ) -> String {
        let mut beat = tokio::time::interval(LINK_HEARTBEAT);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let silent_limit = (LINK_SILENCE.as_millis() / LINK_HEARTBEAT.as_millis()) as u32;
        let (mut frames, mut seen_at_beat, mut silent) = (0u64, (0u64, 0usize), 0u32);
        loop {
            tokio::select! {
                frame = codec::read_message::<FromAgent, _>(reader) => match frame {
                    Ok(Some(msg)) => {
                        frames += 1;
                        if let Err(e) = self.frame(msg).await {
                            return e;
                        }
                        if frames & 63 == 0 {
                            tokio::task::yield_now().await;
                        }
                    }
                    Ok(None) => return "connection closed".into(),
                    Err(e) => return format!("connection broken: {e}"),
                },
                r = &mut *writer => {
                    return match r {
                        Ok(Err(e)) => format!("connection broken: {e}"),
                        _ => "connection closed".into(),
                    };
                }
                _ = beat.tick() => {
                    // Bytes of a big frame still arriving count as life:
                    // a slow link carrying one is not a silent one.
                    let progress = (frames, reader.read_buffer().len());
                    if progress == seen_at_beat {
                        silent += 1;
                        if silent >= silent_limit {
                            return format!("no heartbeat for {:.1} s", LINK_SILENCE.as_secs_f64());
                        }
                    } else {
                        silent = 0;
                        seen_at_beat = progress;
                    }
                    let _ = self.out.send(ToAgent::Heartbeat);
                }
            }
        }
    }

    /// One frame from the agent; `Err` names a broken rule (the link ends).
    async fn frame(&mut self, msg: FromAgent) -> Result<(), String> {
        let (child, event) = match msg {
            FromAgent::Heartbeat => return Ok(()),
            FromAgent::Draining => {
                info!(agent = %self.name, "agent draining");
                self.pool.agent_draining(self.id);
                return Ok(());
            }
            FromAgent::ChildUp {
                child,
                pid,
                modules,
            } => {
                if self.children.contains_key(&child) {
                    return Err(format!("announced child {child} twice"));
                }
                if self.children.len() >= self.slots {
                    return Err(format!(
                        "announced more children than its {} slots",
                        self.slots
                    ));
                }
                let (ctl, ctl_rx) = mpsc::unbounded_channel();
                match self.pool.agent_child(self.id, pid, modules, ctl).await {
                    Some(id) => {
                        debug!(agent = %self.name, child, pid, id, "agent's child joined the pool");
                        self.children.insert(child, id);
                        tokio::spawn(orders(
                            child,
                            ctl_rx,
                            self.out.clone(),
                            self.committed.clone(),
                        ));
                    }
                    None => {
                        let _ = self.out.send(ToAgent::Stop { child });
                    }
                }
                return Ok(());
            }
            FromAgent::Part { child, job, data } => {
                self.fits(data.len())?;
                (child, ChildEvent::Part { job, data })
            }
            FromAgent::Done {
                child,
                job,
                retire,
                output,
            } => {
                self.fits(output.len())?;
                (
                    child,
                    ChildEvent::Done {
                        job,
                        output,
                        retire,
                    },
                )
            }
            FromAgent::Failed {
                child,
                job,
                reason,
                message,
                retire,
            } => (
                child,
                ChildEvent::Failed {
                    job,
                    reason,
                    message: codec::clip_message(message),
                    retire,
                },
            ),
            FromAgent::Stalled { child, silent_ms } => (
                child,
                ChildEvent::Stalled {
                    silent: Duration::from_millis(silent_ms),
                },
            ),
            FromAgent::Broken { child, cause } => (
                child,
                ChildEvent::Broken {
                    cause: codec::clip_message(cause),
                },
            ),
            FromAgent::ChildGone { child, end } => {
                let info = match end {
                    ChildEnd::Status {
                        code,
                        signal,
                        killed,
                    } => ExitInfo::Status {
                        code,
                        signal,
                        killed_by_master: killed,
                    },
                    ChildEnd::SpawnFailed(why) => ExitInfo::SpawnFailed(codec::clip_message(why)),
                };
                match self.children.remove(&child) {
                    Some(id) => self.pool.child_event(id, ChildEvent::Exited(info)),
                    // One the pool refused, gone on its order.
                    None => debug!(agent = %self.name, child, "unannounced child gone"),
                }
                return Ok(());
            }
        };
        match self.children.get(&child) {
            Some(&id) => self.pool.child_event(id, event),
            // A report racing the pool's refusal of the child: dropped.
            None => debug!(agent = %self.name, child, "report for a child not in the pool"),
        }
        Ok(())
    }

    /// A payload within `--max-payload` (the agent's children were told
    /// the limit; an agent passing more on breaks the rule).
    fn fits(&self, size: usize) -> Result<(), String> {
        if size > self.max_payload {
            return Err(format!(
                "sent {size} bytes, over --max-payload {}",
                self.max_payload
            ));
        }
        Ok(())
    }
}

/// Carries the pool's orders for one child on to its agent, until the pool
/// lets the child go. A job waits here for the job store's change that
/// must be durable before any child may see it.
async fn orders(
    child: u64,
    mut ctl: mpsc::UnboundedReceiver<ChildCtl>,
    out: mpsc::UnboundedSender<ToAgent>,
    mut committed: Option<watch::Receiver<u64>>,
) {
    while let Some(cmd) = ctl.recv().await {
        let msg = match cmd {
            ChildCtl::Job {
                job,
                module,
                input,
                after,
                ..
            } => {
                if let (Some(seq), Some(c)) = (after, committed.as_mut()) {
                    if c.wait_for(|done| *done >= seq).await.is_err() {
                        return;
                    }
                }
                ToAgent::Job {
                    child,
                    job,
                    module,
                    input,
                }
            }
            ChildCtl::Stop => ToAgent::Stop { child },
            ChildCtl::Terminate => ToAgent::Terminate { child },
            ChildCtl::Kill => ToAgent::Kill { child },
            ChildCtl::Attach { .. } => continue,
        };
        if out.send(msg).is_err() {
            return;
        }
    }
}
