//! `--state-dir`: what the pool tells the job store, when a detached
//! submit's id may go back (once its change is durable), and the restart:
//! kept outcomes answer again, start-later jobs are held again, queued ones
//! queue again in their order, and one that was running fails `error`
//! instead of running twice. The rule is in `crate::store`'s module doc.

use super::*;
use crate::job::{Ack, Answer, Queued, Reply, Retry};
use crate::store::{Change, Recovered};
use crate::table::End;
use taskmaster_proto::jobs::{JobStatus, SubmitOptions};
use taskmaster_proto::Reason;
use tokio::sync::oneshot;

/// Who waits for an answer held until the store has caught up.
pub(super) enum Told {
    /// A detached submit's id.
    Ack(Ack),
    /// A job operation (status, result, wait, ...).
    Op(oneshot::Sender<Answer>),
}

impl Told {
    fn send(self, answer: Answer) {
        match self {
            Told::Ack(ack) => ack.send(answer),
            Told::Op(tx) => {
                let _ = tx.send(answer);
            }
        }
    }
}

/// The failure message of a job that was running when the master stopped.
pub const RESTARTED: &str = "the master restarted while the job ran";

impl Pool {
    /// Whether a job submitted with `options` is kept in the store: a
    /// detached or start-later one (nobody waits on a connection for it).
    pub(super) fn wants_store(&self, options: &SubmitOptions) -> bool {
        self.store.is_some() && (options.detach || options.start_later)
    }

    /// Makes a just-recorded job durable and writes it with its input;
    /// returns the change to wait for.
    pub(super) fn store_new(
        &mut self,
        job: JobId,
        input: &Bytes,
        options: &SubmitOptions,
    ) -> Option<u64> {
        let order = self.next_order;
        self.next_order += 1;
        let r = self.table.get_mut(job)?;
        r.durable = true;
        r.order = order;
        r.priority = options.priority;
        r.retries = options.retries.min(taskmaster_proto::jobs::MAX_RETRIES);
        let status = r.status();
        self.store_put(job, status, Some(input.clone()))
    }

    /// A held job joins the queue: at the queue's end, in the store too.
    pub(super) fn store_queued(&mut self, job: JobId, input: &Bytes) {
        let order = self.next_order;
        self.next_order += 1;
        match self.table.get_mut(job) {
            Some(r) if r.durable => r.order = order,
            _ => return,
        }
        self.store_put(job, JobStatus::Queued, Some(input.clone()));
    }

    /// Writes a durable job as the table has it (with `status`); `None` for
    /// a job the store does not keep.
    pub(super) fn store_put(
        &mut self,
        job: JobId,
        status: JobStatus,
        input: Option<Bytes>,
    ) -> Option<u64> {
        let store = self.store.as_mut()?;
        let stored = self.table.stored(job, status, input)?;
        Some(store.send(Change::Put(job, stored)))
    }

    /// A job that just ended: its outcome goes to the store (no wait), and
    /// whatever the table evicted leaves it.
    pub(super) fn store_finished(&mut self, job: JobId) {
        if self.store.is_none() {
            return;
        }
        if let Some(status) = self
            .table
            .get(job)
            .filter(|r| r.durable)
            .map(|r| r.status())
        {
            self.store_put(job, status, None);
        }
        self.store_evictions();
    }

    /// Evicted durable jobs leave the store.
    pub(super) fn store_evictions(&mut self) {
        let Some(store) = self.store.as_mut() else {
            return;
        };
        for job in self.table.take_evicted() {
            store.send(Change::Delete(job));
        }
    }

    /// Whether a queued or held job stays in the store for the next master
    /// instead of failing `shutting-down`.
    pub(super) fn outlives_shutdown(&self, job: JobId) -> bool {
        self.store.is_some() && self.table.get(job).is_some_and(|r| r.durable)
    }

    /// Sends `answer` once change `seq` is durable: a detached submit's
    /// id, and anything that tells a durable job's state (an outcome told
    /// must never be undone by a crash).
    pub(super) fn tell_when_durable(&mut self, seq: Option<u64>, to: Told, answer: Answer) {
        match (seq, &self.store) {
            (Some(seq), Some(store)) if seq > store.durable() => {
                self.acks.push_back((seq, to, answer));
            }
            _ => to.send(answer),
        }
    }

    /// An answer to a job operation, once everything the store has been
    /// sent so far is durable.
    pub(super) fn answer_op(&mut self, tx: oneshot::Sender<Answer>, answer: Answer) {
        let last = self.store.as_ref().map(|s| s.last());
        self.tell_when_durable(last, Told::Op(tx), answer);
    }

    /// Outcomes the table held for waiters go out once durable.
    pub(super) fn release_held(&mut self) {
        for (tx, answer) in self.table.take_held() {
            self.answer_op(tx, answer);
        }
    }

    /// The store made every change up to `done` durable.
    pub(super) fn durable_upto(&mut self, done: u64) {
        while self.acks.front().is_some_and(|(seq, ..)| *seq <= done) {
            let (_, to, answer) = self.acks.pop_front().expect("front exists");
            to.send(answer);
        }
    }

    /// Takes back what the store held when the master started.
    pub(super) fn recover(&mut self, recovered: Recovered) {
        let Recovered {
            next_job, mut jobs, ..
        } = recovered;
        self.next_job = self.next_job.max(next_job);
        self.next_order = jobs.iter().map(|(_, j)| j.order + 1).max().unwrap_or(1);
        // Finished jobs in the order they ended (eviction order), the rest
        // in queue order.
        jobs.sort_by_key(|(id, j)| (j.finished_ms.is_none(), j.finished_ms, j.order, *id));
        let (mut kept, mut held, mut queued, mut lost) = (0, 0, 0, 0);
        for (id, mut stored) in jobs {
            let module: Arc<str> = Arc::from(stored.module.as_str());
            let input = stored.input.take();
            let waits = matches!(stored.status, JobStatus::Queued | JobStatus::StartLater);
            if waits && input.is_none() {
                stored.status = JobStatus::Processing;
            }
            self.table.insert_stored(id, module, &stored);
            let waiting = input.map(|input| Queued {
                id,
                module: stored.module.clone(),
                input,
                reply: Reply::Detached,
                pri: stored.priority,
                retry: Retry {
                    left: stored.retries,
                    kills: 0,
                },
            });
            match (stored.status, waiting) {
                (JobStatus::StartLater, Some(job)) => {
                    held += 1;
                    if let Some(r) = self.table.get_mut(id) {
                        r.parked = Some(Box::new(job));
                    }
                }
                (JobStatus::Queued, Some(job)) => {
                    queued += 1;
                    self.queue.push_back(job);
                }
                (JobStatus::Processing, _) => {
                    lost += 1;
                    self.finish(id, None, End::Failed(Reason::Error, RESTARTED.into()));
                }
                _ => kept += 1,
            }
        }
        self.table.evict();
        self.store_evictions();
        info!(
            kept,
            held,
            queued,
            failed = lost,
            next_job = self.next_job,
            "job store read back"
        );
    }
}
