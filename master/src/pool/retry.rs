//! Retries (SPEC section 16): a job submitted with `--retries N` is
//! idempotent, so when its child dies under it or its time limit passes
//! it goes back to the front of its lane, to run on another child, up to
//! N more times; then it fails with the last reason. A job that has
//! killed 3 children (died under them or been killed at its time limit)
//! is quarantined instead: it fails `error`, "poison job", whatever N
//! says, so a job that crashes every child cannot keep the pool busy
//! respawning.

use super::*;
use crate::events::Event;
use crate::job::{Queued, Reply, Retry};
use taskmaster_proto::Reason;
use tracing::warn;

/// Children a job may kill before it is quarantined.
pub const POISON_KILLS: u32 = 3;

/// A running job its child lost: what is needed to run it again.
pub(super) struct Lost {
    pub id: JobId,
    pub reply: Reply,
    pub pri: taskmaster_proto::Priority,
    pub retry: Retry,
    pub resend: Option<(String, Bytes)>,
    /// The pid of the child it was running on (for the event).
    pub pid: Option<u32>,
}

impl Pool {
    /// A running job's child died (`Reason::Error`) or was killed at the
    /// job's time limit (`Reason::Timeout`): run it again if it may, else
    /// answer it.
    pub(super) fn retry_or_fail(&mut self, lost: Lost, reason: Reason, message: String) {
        let kills = lost.retry.kills + 1;
        if kills >= POISON_KILLS && lost.retry != Retry::default() {
            self.counters.poisoned += 1;
            warn!(job = lost.id, kills, %reason, "poison job quarantined");
            let msg = format!("poison job: it killed {kills} children (last: {message})");
            return self.refuse(lost.reply, lost.id, Reason::Error, msg);
        }
        let (Some((module, input)), true) = (lost.resend, lost.retry.left > 0) else {
            return self.refuse(lost.reply, lost.id, reason, message);
        };
        if self.shutting_down {
            let msg = format!("{message}; not retried: the master is shutting down");
            return self.refuse(lost.reply, lost.id, reason, msg);
        }
        self.counters.retried += 1;
        warn!(job = lost.id, left = lost.retry.left - 1, %reason, detail = %message, "job retried");
        if self.events.wanted() {
            let id = self.table.id(lost.id);
            self.events.emit(|| Event {
                job: Some(id),
                module: Some(module.clone()),
                pid: lost.pid,
                reason: Some(reason),
                message: Some(message.clone()),
                ..Event::new("job-retried")
            });
        }
        // Back to queued in the table: its old run's time limit is void.
        if let Some(r) = self.table.get_mut(lost.id) {
            r.child = None;
            if let Some(key) = r.timer.take() {
                self.timers.try_remove(&key);
            }
        }
        self.table.set_queued(lost.id);
        self.store_queued(lost.id, &input);
        self.queue.push_front(Queued {
            id: lost.id,
            module,
            input,
            reply: lost.reply,
            pri: lost.pri,
            retry: Retry {
                left: lost.retry.left - 1,
                kills,
            },
        });
        self.dispatch_queue();
    }
}
