//! Job operations by id: status, result (now or when it ends), start a
//! `start-later` job, cancel, list; and ending a running job early (cancel,
//! time limit) by killing its child.

use super::*;
use crate::child::ChildCtl;
use crate::events::Event;
use crate::job::{Answer, Body, JobId, Op, Reply};
use crate::table::End;
use taskmaster_proto::jobs::JobStatus;
use taskmaster_proto::Reason;
use tokio::sync::oneshot;
use tracing::{info, warn};

impl Pool {
    pub(super) fn op(&mut self, op: Op, tx: oneshot::Sender<Answer>) {
        // Expired outcomes must not be served even when nothing has ended
        // for a while (eviction otherwise runs as jobs end).
        self.table.evict();
        self.store_evictions();
        let answer = match op {
            Op::Status(job) => match self.table.view(job) {
                Some(view) => Answer::ok(Body::View(view)),
                None => Answer::not_found(&self.table.id(job)),
            },
            Op::Result(job) => self.table.result(job),
            Op::Wait(job) => {
                self.table.add_waiter(job, tx);
                return self.release_held();
            }
            Op::Start(job) => self.start_held(job),
            Op::Cancel(job) => self.cancel(job),
            Op::List { limit, status } => Answer::ok(Body::List(self.table.list(limit, status))),
        };
        self.answer_op(tx, answer);
    }

    /// `start`: a `start-later` job joins the queue. If it cannot (queue
    /// full, shutting down) it stays held and the answer says why.
    pub(super) fn start_held(&mut self, job: JobId) -> Answer {
        let id = self.table.id(job);
        let Some(record) = self.table.get(job) else {
            return Answer::not_found(&id);
        };
        if record.status() != JobStatus::StartLater {
            return Answer::conflict(id, record.status());
        }
        let module = record
            .parked
            .as_ref()
            .map(|q| q.module.clone())
            .unwrap_or_default();
        if let Err((reason, message)) = self.admission(&module, true) {
            // The job stays held; the body describes the refused start.
            return Answer::failed(id, JobStatus::Failed, reason, message);
        }
        let Some(queued) = self.table.get_mut(job).and_then(|r| r.parked.take()) else {
            return Answer::conflict(id, JobStatus::StartLater);
        };
        self.table.set_queued(job);
        self.store_queued(job, &queued.input);
        info!(job, module = %queued.module, "start-later job started");
        self.events.emit(|| Event {
            job: Some(id.clone()),
            module: Some(queued.module.clone()),
            ..Event::new("job-queued")
        });
        self.enqueue(*queued);
        Answer::ok(Body::Ref(taskmaster_proto::jobs::JobRef {
            id,
            status: JobStatus::Queued,
        }))
    }

    /// `cancel`: a held or queued job is removed; a running one's child is
    /// killed (and replaced). Its submitter, if waiting, is told
    /// `cancelled`.
    pub(super) fn cancel(&mut self, job: JobId) -> Answer {
        let id = self.table.id(job);
        let Some(record) = self.table.get(job) else {
            return Answer::not_found(&id);
        };
        let status = record.status();
        if status.is_finished() {
            return Answer::conflict(id, status);
        }
        let child = record.child;
        match status {
            JobStatus::StartLater => {
                let parked = self.table.get_mut(job).and_then(|r| r.parked.take());
                let reply = parked.map(|q| q.reply);
                self.finish(
                    job,
                    reply,
                    End::Failed(Reason::Cancelled, "cancelled before it was started".into()),
                );
            }
            JobStatus::Processing => {
                let Some(child) = child else {
                    warn!(job, "processing job without a child");
                    return Answer::conflict(id, status);
                };
                self.end_running(
                    child,
                    job,
                    Reason::Cancelled,
                    "cancelled while processing".into(),
                );
            }
            _ => {
                if let Some(queued) = self.queue.remove(job) {
                    self.finish(
                        job,
                        Some(queued.reply),
                        End::Failed(Reason::Cancelled, "cancelled while queued".into()),
                    );
                } else if let Some(reply) = self.take_prefetched(job) {
                    // Already written to a busy child's socket: it cannot be
                    // taken back, so the child will run it and its answer is
                    // dropped.
                    let msg = "cancelled while queued (the child it was sent to may still run it; its answer is dropped)";
                    self.finish(job, Some(reply), End::Failed(Reason::Cancelled, msg.into()));
                } else if self
                    .nats
                    .as_ref()
                    .is_some_and(|n| n.remote.contains_key(&job))
                {
                    // Published: whichever master fetches it runs it.
                    return Answer::invalid(format!(
                        "job {id} is in the shared NATS queue, where it cannot be cancelled"
                    ));
                } else {
                    warn!(job, "job to cancel not found in the queue or a child");
                    return Answer::conflict(id, status);
                }
            }
        }
        info!(job, was = %status, "job cancelled");
        Answer::ok(Body::Ref(taskmaster_proto::jobs::JobRef {
            id,
            status: JobStatus::Cancelled,
        }))
    }

    /// The reply of a job waiting in a busy child's window, which no longer
    /// answers to it.
    pub(super) fn take_prefetched(&mut self, job: JobId) -> Option<Reply> {
        self.children
            .values_mut()
            .flat_map(|slot| slot.jobs.iter_mut().skip(1))
            .find(|held| held.id == job)
            .and_then(|held| held.reply.take())
    }

    /// Ends the job running on `child` now with `reason`, and kills the
    /// child: its state is unknown mid-job, so it is never reused.
    pub(super) fn end_running(
        &mut self,
        child: ChildId,
        job: JobId,
        reason: Reason,
        message: String,
    ) {
        let Some(slot) = self.children.get_mut(&child) else {
            return;
        };
        let Some(held) = slot.jobs.front_mut().filter(|h| h.id == job) else {
            return;
        };
        let Some(reply) = held.reply.take() else {
            return;
        };
        let lost = super::retry::Lost {
            id: job,
            reply,
            pri: held.pri,
            retry: held.retry,
            resend: held.resend.take(),
            pid: slot.pid,
        };
        let pid = slot.pid.map_or("?".to_owned(), |p| p.to_string());
        slot.kill_cause = Some(format!("killed: job {job} {reason}"));
        // A timed-out job's child gets SIGTERM first (SIGKILL after a short
        // grace); a cancelled one is killed at once.
        let ctl = if reason == Reason::Timeout {
            ChildCtl::Terminate
        } else {
            ChildCtl::Kill
        };
        let _ = slot.ctl.send(ctl);
        self.set_state(child, State::Stopping);
        warn!(pid = %pid, job, %reason, "killing child for its job");
        let message = format!("{message}; child {pid} killed");
        if reason == Reason::Timeout {
            // An idempotent job runs again past its time limit.
            self.retry_or_fail(lost, reason, message);
        } else {
            self.finish(job, Some(lost.reply), End::Failed(reason, message));
        }
    }

    pub(super) fn job_timed_out(&mut self, job: JobId) {
        let Some(record) = self.table.get_mut(job) else {
            return;
        };
        record.timer = None;
        let (Some(child), Some(limit)) = (record.child, record.timeout) else {
            return;
        };
        if record.status() != JobStatus::Processing {
            return;
        }
        let message = format!("ran past its time limit of {}s", limit.as_secs_f64());
        self.end_running(child, job, Reason::Timeout, message);
    }
}
