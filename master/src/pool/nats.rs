//! `--nats`: the pool's side of the shared queue. A job submitted here is
//! published (not queued) and its answer comes back from whichever master
//! ran it; a job fetched from the stream is a local job whose answers go
//! back through NATS. The fetcher takes only as many as [`Pool::tell_free`]
//! says are free.

use super::*;
use crate::job::{Queued, Reply, Submission};
use crate::nats::{Answer, NatsCmd, NatsEvent, NatsReply};
use crate::table::End;
use taskmaster_proto::{Reason, SubmitOptions};

impl Pool {
    /// Whether a job with this reply goes to the shared queue: with
    /// `--nats`, every job but one fetched from it.
    pub(super) fn shares_queue(&self, reply: &Reply) -> bool {
        self.nats.is_some() && !matches!(reply, Reply::Nats(_))
    }

    /// Publishes a submitted job; its reply waits for the answer.
    pub(super) fn publish(&mut self, job: Queued) {
        let id = self.table.id(job.id);
        let timeout_ms = self
            .table
            .get(job.id)
            .and_then(|r| r.timeout)
            .map(|t| t.as_millis() as u64);
        let Some(nats) = self.nats.as_mut() else {
            return;
        };
        let detached = matches!(job.reply, Reply::Detached);
        nats.remote.insert(job.id, job.reply);
        let _ = nats.side.tx.send(NatsCmd::Publish {
            job: job.id,
            id,
            module: job.module,
            input: job.input,
            timeout_ms,
            detached,
        });
    }

    pub(super) fn nats_event(&mut self, event: NatsEvent) {
        let Some(nats) = self.nats.as_mut() else {
            return;
        };
        match event {
            NatsEvent::Published { job } => {
                if let Some(ack) = nats.acks.remove(&job) {
                    if let Some(job_ref) = self.table.job_ref(job) {
                        ack.send(crate::job::Answer::ok(crate::job::Body::Ref(job_ref)));
                    }
                }
            }
            NatsEvent::Refused {
                job,
                reason,
                message,
            } => {
                if let Some(ack) = nats.acks.remove(&job) {
                    let id = self.table.id(job);
                    let failed = taskmaster_proto::JobStatus::Failed;
                    ack.send(crate::job::Answer::failed(
                        id,
                        failed,
                        reason,
                        message.clone(),
                    ));
                }
                let Some(nats) = self.nats.as_mut() else {
                    return;
                };
                if let Some(reply) = nats.remote.remove(&job) {
                    self.finish(job, Some(reply), End::Failed(reason, message));
                }
            }
            NatsEvent::Answer { job, answer } => match answer {
                Answer::Part(data) => {
                    if let Some(reply) = nats.remote.get(&job) {
                        reply.part(data);
                    }
                }
                Answer::Completed(output) => {
                    if let Some(reply) = nats.remote.remove(&job) {
                        self.finish(job, Some(reply), End::Completed(output));
                    }
                }
                Answer::Failed(reason, message) => {
                    if let Some(reply) = nats.remote.remove(&job) {
                        self.finish(job, Some(reply), End::Failed(reason, message));
                    }
                }
            },
            NatsEvent::Fetched {
                key,
                module,
                input,
                timeout_ms,
            } => {
                let reply = Reply::Nats(NatsReply::new(key, nats.side.tx.clone()));
                self.submit(Submission {
                    module,
                    input,
                    options: SubmitOptions {
                        timeout_ms,
                        ..SubmitOptions::default()
                    },
                    reply,
                    ack: None,
                    waiter: None,
                });
            }
        }
    }

    /// Tells the fetcher how many jobs this master can start now: its idle
    /// children and those it may still spawn (a fetched job that finds no
    /// idle child waits here while one is spawned, which is how the pool
    /// grows to `pool-max` with a shared queue), less what waits already.
    pub(super) fn tell_free(&mut self) {
        // Runs after every command: nothing to work out without NATS.
        if self.nats.is_none() {
            return;
        }
        let free = if self.shutting_down || self.breaker.tripped().is_some() {
            0
        } else {
            let room = self.cfg.pool_max.saturating_sub(self.local_children());
            (self.idle.len() + room).saturating_sub(self.queue.len())
        };
        if let Some(nats) = &self.nats {
            nats.side.free.send_if_modified(|n| {
                let changed = *n != free;
                *n = free;
                changed
            });
        }
    }

    /// At the end of a shutdown: jobs published from here whose answer has
    /// not come fail `shutting-down` (they may still run on another master;
    /// their outcome is then in the shared bucket).
    pub(super) fn fail_remote(&mut self) {
        let Some(nats) = self.nats.as_mut() else {
            return;
        };
        let message = "the master is shutting down".to_owned();
        for (job, ack) in nats.acks.drain() {
            let id = self.table.id(job);
            let status = taskmaster_proto::JobStatus::Failed;
            ack.send(crate::job::Answer::failed(
                id,
                status,
                Reason::ShuttingDown,
                message.clone(),
            ));
        }
        let waiting: Vec<_> = nats.remote.drain().collect();
        for (job, reply) in waiting {
            let message = "the master is shutting down; the job may still run on another master (ask any master for its result)".to_owned();
            self.finish(job, Some(reply), End::Failed(Reason::ShuttingDown, message));
        }
    }
}
