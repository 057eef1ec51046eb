//! The agent's side of one link once the master has welcomed it: its
//! children (spawned with the master's own launcher, their hellos checked on
//! the agent's loopback socket), and the loop relaying between them and the
//! master, replacing children that exit, draining on a stop signal.

use super::{Ended, FIRST_BACKOFF, MAX_BACKOFF, REAP_WAIT, SETTLED};
use crate::child::{ChildConn, ChildCtl, ProcessLauncher};
use crate::types::{ChildEvent, ChildId, ExitInfo, Reporter};
use std::collections::HashMap;
use std::time::Duration;
use taskmaster_proto::agent::{ChildEnd, FromAgent, ToAgent, LINK_HEARTBEAT, LINK_SILENCE};
use taskmaster_proto::codec::{self, FrameReader};
use taskmaster_proto::handshake::{read_hello, HELLO_TIMEOUT};
use taskmaster_proto::messages::{HandlerHello, Hello};
use taskmaster_proto::SECRET_LEN;
use tokio::io::AsyncRead;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// Reports of the agent's child tasks, to the link's loop.
#[derive(Clone)]
pub(super) struct ToLoop(pub(super) mpsc::UnboundedSender<(ChildId, ChildEvent)>);

impl Reporter for ToLoop {
    fn child_event(&self, id: ChildId, event: ChildEvent) {
        let _ = self.0.send((id, event));
    }
}

/// One of the agent's children.
pub(super) struct Kid {
    ctl: mpsc::UnboundedSender<ChildCtl>,
    secret: [u8; SECRET_LEN],
    pid: Option<u32>,
    attached: bool,
    /// When it said it was ready (then the master knows it).
    ready_at: Option<Instant>,
}

/// Accepts the children's connections and passes on their hellos.
pub(super) async fn accept_children(
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
pub(super) type Inbox = (
    mpsc::UnboundedReceiver<(HandlerHello, ChildConn)>,
    mpsc::UnboundedReceiver<(ChildId, ChildEvent)>,
);

/// The link's state: the children and the way to the master.
pub(super) struct Agent {
    pub(super) launcher: ProcessLauncher,
    pub(super) reporter: ToLoop,
    pub(super) kids: HashMap<ChildId, Kid>,
    pub(super) next: ChildId,
    pub(super) out: mpsc::UnboundedSender<FromAgent>,
    /// Children missing, to spawn at `spawn_at`.
    pub(super) to_spawn: usize,
    pub(super) spawn_at: Instant,
    /// The wait after the next child that dies young.
    pub(super) backoff: Duration,
    /// Since when it has been draining (a stop signal came).
    pub(super) draining: Option<Instant>,
    /// `--grace`.
    pub(super) grace: Duration,
}

impl Agent {
    pub(super) async fn run<R: AsyncRead + Unpin>(
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
        if let Some(why) = crate::child::refuse_hello(&hello, &kid.secret, kid.pid, kid.attached) {
            warn!(
                child = hello.child_id,
                pid = hello.pid,
                why,
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
