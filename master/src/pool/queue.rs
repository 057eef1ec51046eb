//! The queue of jobs waiting for a child: one FIFO lane per priority
//! (SPEC section 16), high first. `job-max` counts the lanes together.
//! A job taken back from a child (never started, or retried) goes to the
//! front of its own lane: it has waited already.

use crate::job::{JobId, Queued};
use std::collections::VecDeque;
use taskmaster_proto::Priority;

/// Waiting jobs, by priority.
#[derive(Default)]
pub struct Queue {
    lanes: [VecDeque<Queued>; Priority::ALL.len()],
}

impl Queue {
    /// Jobs waiting in all lanes.
    pub fn len(&self) -> usize {
        self.lanes.iter().map(VecDeque::len).sum()
    }

    /// Whether no job waits.
    pub fn is_empty(&self) -> bool {
        self.lanes.iter().all(VecDeque::is_empty)
    }

    /// A new job joins the back of its lane.
    pub fn push_back(&mut self, job: Queued) {
        self.lanes[job.pri.lane()].push_back(job);
    }

    /// A job taken back joins the front of its lane.
    pub fn push_front(&mut self, job: Queued) {
        self.lanes[job.pri.lane()].push_front(job);
    }

    /// The next job to run: the oldest of the highest lane.
    pub fn pop_front(&mut self) -> Option<Queued> {
        self.lanes.iter_mut().find_map(VecDeque::pop_front)
    }

    /// The job [`Queue::pop_front`] would take.
    pub fn front(&self) -> Option<&Queued> {
        self.lanes.iter().find_map(VecDeque::front)
    }

    /// Takes one job out (cancel).
    pub fn remove(&mut self, id: JobId) -> Option<Queued> {
        self.lanes.iter_mut().find_map(|lane| {
            let pos = lane.iter().position(|q| q.id == id)?;
            lane.remove(pos)
        })
    }
}

impl IntoIterator for Queue {
    type Item = Queued;
    type IntoIter = std::iter::Flatten<std::array::IntoIter<VecDeque<Queued>, 3>>;

    /// Every job, in the order they would run.
    fn into_iter(self) -> Self::IntoIter {
        self.lanes.into_iter().flatten()
    }
}
