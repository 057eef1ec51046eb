//! The way in: [`PoolHandle`], the cloneable sender every connection,
//! child task, timer and signal uses, and the messages it carries.

use super::*;
use crate::child::ChildConn;
use crate::job::{Answer, JobId, Op, Submission};
use std::sync::Arc;
use std::time::Duration;
use taskmaster_proto::messages::HandlerHello;
use taskmaster_proto::Stats;
use tokio::sync::{mpsc, oneshot};

impl crate::types::Reporter for PoolHandle {
    fn child_event(&self, id: ChildId, event: ChildEvent) {
        PoolHandle::child_event(self, id, event);
    }

    fn child_events(&self, id: ChildId, events: Vec<ChildEvent>) {
        self.send(PoolCmd::ChildEvents { id, events });
    }
}

/// Messages to the pool actor.
pub enum PoolCmd {
    /// A client's job.
    Submit(Submission),
    /// Jobs one read of a client's socket brought, in order.
    Submits(Vec<Submission>),
    /// Current figures.
    Stats(oneshot::Sender<Stats>),
    /// A job operation.
    Op {
        /// Which.
        op: Op,
        /// Where the answer goes.
        tx: oneshot::Sender<Answer>,
    },
    /// Whether the pool is ready (`/healthz`).
    Health(oneshot::Sender<Health>),
    /// A connection said hello as a handler; the pool checks it.
    HandlerHello {
        /// The hello.
        hello: HandlerHello,
        /// The connection, handed to the child's task if the hello is good.
        conn: ChildConn,
    },
    /// A child's task reports.
    Child {
        /// Which child.
        id: ChildId,
        /// What happened.
        event: ChildEvent,
    },
    /// A child's task reports what one read of the child's socket
    /// brought: one message for many answers (each message through the
    /// channel costs a few hundred instructions).
    ChildEvents {
        /// Which child.
        id: ChildId,
        /// What happened, in order.
        events: Vec<ChildEvent>,
    },
    /// The back-off delay after start-up failures is over.
    Respawn,
    /// A child has been ready for `--start-secs`: it has started.
    StartSecs(ChildId),
    /// SIGTERM/SIGINT (a second one stops at once).
    Shutdown,
    /// SIGHUP: replace every child, one at a time.
    Restart,
    /// The shutdown grace period is over.
    GraceExpired,
    /// An agent's link was accepted.
    AgentJoined {
        /// The link's number.
        id: u64,
        /// The agent's name.
        name: Arc<str>,
        /// Where its link comes from.
        address: String,
        /// The slots it offers.
        slots: u32,
    },
    /// A child on an agent is ready: it joins the pool, taking orders
    /// through `ctl`. The answer is its id, `None` if the pool is
    /// shutting down or the agent is gone.
    AgentChild {
        /// The link's number.
        agent: u64,
        /// Its pid on the agent's host.
        pid: u32,
        /// Its modules.
        modules: Vec<String>,
        /// Where the pool's orders for it go (the link).
        ctl: mpsc::UnboundedSender<crate::child::ChildCtl>,
        /// Its id in the pool.
        tx: oneshot::Sender<Option<ChildId>>,
    },
    /// An agent is stopping: its children finish their jobs, take no more.
    AgentDraining(u64),
    /// An agent's link is gone (its children's exits were sent first).
    AgentGone {
        /// The link's number.
        id: u64,
        /// Why.
        cause: String,
    },
}

/// The pool's state as `/healthz` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Fewer than `pool-start` children have been ready yet.
    Starting,
    /// Serving.
    Ready,
    /// No child can be started; the text says why.
    Broken(String),
    /// Shutting down.
    ShuttingDown,
}

/// A cloneable way to reach the pool actor.
#[derive(Clone)]
pub struct PoolHandle {
    tx: mpsc::UnboundedSender<PoolCmd>,
    instance: Arc<str>,
    events: Events,
    /// Outcomes kept on NATS (`--nats`): other masters' jobs.
    outcomes: Option<crate::nats::Outcomes>,
}

impl PoolHandle {
    pub(super) fn new(
        tx: mpsc::UnboundedSender<PoolCmd>,
        instance: Arc<str>,
        events: Events,
        outcomes: Option<crate::nats::Outcomes>,
    ) -> Self {
        PoolHandle {
            tx,
            instance,
            events,
            outcomes,
        }
    }

    /// With `--nats`: the answer to `status` (`result: false`) or `result`
    /// for a job another master took, from the outcome bucket; `None`
    /// without NATS or when the bucket has no outcome for it.
    pub async fn shared_outcome(&self, id: &str, result: bool) -> Option<Answer> {
        let (view, output) = self.outcomes.as_ref()?.get(id).await?;
        if !result {
            return Some(Answer::ok(crate::job::Body::View(view)));
        }
        Some(match (view.status, view.reason) {
            (taskmaster_proto::JobStatus::Completed, _) => Answer {
                output: Some(output),
                ..Answer::ok(crate::job::Body::Ref(taskmaster_proto::jobs::JobRef {
                    id: view.id,
                    status: view.status,
                }))
            },
            (status, reason) => Answer::failed(
                view.id,
                status,
                reason.unwrap_or(taskmaster_proto::Reason::Error),
                view.message.unwrap_or_default(),
            ),
        })
    }

    pub(super) fn send(&self, cmd: PoolCmd) {
        // The pool outlives every sender except at the very end of shutdown,
        // when nothing is left to tell.
        let _ = self.tx.send(cmd);
    }
    /// Submits a job; its answers go to its reply.
    pub fn submit(&self, submission: Submission) {
        self.send(PoolCmd::Submit(submission));
    }
    /// Submits jobs, in order, in one message.
    pub fn submit_many(&self, submissions: Vec<Submission>) {
        self.send(PoolCmd::Submits(submissions));
    }
    /// Current figures, or `None` if the pool has stopped.
    pub async fn stats(&self) -> Option<Stats> {
        let (tx, rx) = oneshot::channel();
        self.send(PoolCmd::Stats(tx));
        rx.await.ok()
    }
    /// Lifecycle events from now on.
    pub fn subscribe(&self) -> crate::events::Subscription {
        self.events.subscribe()
    }

    /// Replaces every child with a fresh one, one at a time (SIGHUP).
    pub fn restart(&self) {
        self.send(PoolCmd::Restart);
    }

    /// This master run's job-id prefix.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The job number in a job id, or the answer for a bad or foreign id.
    pub fn parse_id(&self, id: &str) -> Result<JobId, Box<Answer>> {
        match parse_id(id) {
            Err(e) => Err(Box::new(Answer::invalid(e.to_string()))),
            Ok((instance, job)) if instance == &*self.instance => Ok(job),
            Ok(_) => Err(Box::new(Answer::not_found(id))),
        }
    }

    /// Runs a job operation; `None` if the pool has stopped.
    pub async fn op(&self, op: Op) -> Option<Answer> {
        let (tx, rx) = oneshot::channel();
        self.send(PoolCmd::Op { op, tx });
        rx.await.ok()
    }

    /// A job's result, waiting up to `wait` for it to end: the response,
    /// the failure, or (still running) a conflict with its status now.
    pub async fn result(&self, job: JobId, wait: Duration) -> Option<Answer> {
        if wait.is_zero() {
            return self.op(Op::Result(job)).await;
        }
        let (tx, rx) = oneshot::channel();
        self.send(PoolCmd::Op {
            op: Op::Wait(job),
            tx,
        });
        match tokio::time::timeout(wait, rx).await {
            Ok(answer) => answer.ok(),
            Err(_) => self.op(Op::Result(job)).await,
        }
    }

    /// Whether the pool is ready.
    pub async fn health(&self) -> Option<Health> {
        let (tx, rx) = oneshot::channel();
        self.send(PoolCmd::Health(tx));
        rx.await.ok()
    }

    /// Begins (or, the second time, hurries) shutdown.
    pub fn shutdown(&self) {
        self.send(PoolCmd::Shutdown);
    }
    /// Hands a handler's hello and connection to the pool.
    pub fn handler_hello(&self, hello: HandlerHello, conn: ChildConn) {
        self.send(PoolCmd::HandlerHello { hello, conn });
    }
    /// Reports a child event.
    pub fn child_event(&self, id: ChildId, event: ChildEvent) {
        self.send(PoolCmd::Child { id, event });
    }
    /// An agent's link was accepted (`crate::agents`).
    pub fn agent_joined(&self, id: u64, name: Arc<str>, address: String, slots: u32) {
        self.send(PoolCmd::AgentJoined {
            id,
            name,
            address,
            slots,
        });
    }
    /// A ready child on agent `agent` joins the pool; its id, or `None`
    /// if the pool takes no more (shutting down, or gone).
    pub async fn agent_child(
        &self,
        agent: u64,
        pid: u32,
        modules: Vec<String>,
        ctl: mpsc::UnboundedSender<crate::child::ChildCtl>,
    ) -> Option<ChildId> {
        let (tx, rx) = oneshot::channel();
        self.send(PoolCmd::AgentChild {
            agent,
            pid,
            modules,
            ctl,
            tx,
        });
        rx.await.ok().flatten()
    }
    /// An agent is stopping (it sent `Draining`).
    pub fn agent_draining(&self, id: u64) {
        self.send(PoolCmd::AgentDraining(id));
    }
    /// An agent's link is gone (after its children's exits were reported).
    pub fn agent_gone(&self, id: u64, cause: String) {
        self.send(PoolCmd::AgentGone { id, cause });
    }
}
