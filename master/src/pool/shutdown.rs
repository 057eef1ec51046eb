//! Shutdown: the drain on SIGTERM/SIGINT (queued jobs fail
//! `shutting-down`, running ones get `--grace`), and the second signal
//! that kills every child at once.

use super::*;
use crate::child::ChildCtl;
use crate::events::Event;
use taskmaster_proto::Reason;
use tracing::{info, warn};

impl Pool {
    pub(super) fn shutdown(&mut self) {
        if self.shutting_down {
            warn!("second stop signal: killing every child now");
            for slot in self.children.values_mut() {
                slot.kill_cause
                    .get_or_insert_with(|| "master stopped at once".into());
                let _ = slot.ctl.send(ChildCtl::Kill);
            }
            return;
        }
        self.shutting_down = true;
        self.events.emit(|| Event::new("shutdown-begun"));
        info!(
            busy = self.busy,
            queued = self.queue.len(),
            prefetched = self.prefetched,
            grace_secs = self.cfg.grace.as_secs_f64(),
            "shutting down"
        );
        // Jobs the store keeps wait there for the next master (SPEC 13);
        // the others are refused.
        for job in std::mem::take(&mut self.queue) {
            if self.outlives_shutdown(job.id) {
                continue;
            }
            let msg = "the master is shutting down".to_owned();
            self.refuse(job.reply, job.id, Reason::ShuttingDown, msg);
        }
        for job in self.table.take_parked() {
            if self.outlives_shutdown(job.id) {
                continue;
            }
            let msg = "the master is shutting down".to_owned();
            self.refuse(job.reply, job.id, Reason::ShuttingDown, msg);
        }
        let not_busy: Vec<ChildId> = self
            .children
            .iter()
            .filter(|(_, slot)| slot.state != State::Busy)
            .map(|(&id, _)| id)
            .collect();
        for id in not_busy {
            self.set_state(id, State::Stopping);
            let _ = self.children[&id].ctl.send(ChildCtl::Stop);
        }
        if self.busy > 0 {
            let handle = self.handle.clone();
            let grace = self.cfg.grace;
            tokio::spawn(async move {
                tokio::time::sleep(grace).await;
                handle.send(PoolCmd::GraceExpired);
            });
        }
    }

    pub(super) fn grace_expired(&mut self) {
        for slot in self.children.values_mut() {
            if slot.state == State::Busy {
                slot.kill_cause = Some("shutdown grace period expired".into());
                let _ = slot.ctl.send(ChildCtl::Kill);
            }
        }
    }
}
