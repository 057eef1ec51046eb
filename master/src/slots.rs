//! [`Slots`]: the job table's storage, records in a ring indexed by job
//! number.
//!
//! Job numbers come from one counter, and under load jobs end (and their
//! kept outcomes are evicted) roughly in the order they came. In a hash
//! map each job's record lands in a random slot of a table of some 10,000
//! records, a cache miss to write it and another to evict it: together the
//! largest cost in the master's own code at 4 clients × 100 in flight
//! (docs/performance.md). In a ring a new record goes at the end and the
//! oldest leaves from the front, memory touched in order.
//!
//! A record that stays while many newer ones come and go (a long job, an
//! outcome kept longer than its neighbours) would hold the ring's front and
//! make it grow with every job behind it; past [`SPAN`] slots the oldest
//! record still there moves to a side map, which lookups try for numbers
//! below the ring.

use crate::job::JobId;
use crate::types::FastMap;
use std::collections::VecDeque;

/// Most job numbers the ring spans before its oldest record moves aside.
/// Holes (numbers never recorded, records already gone) cost a slot each
/// until the front passes them, so this bounds that waste too.
pub const SPAN: usize = 1 << 16;

/// Records by job number.
pub struct Slots<T> {
    /// The job number of `ring[0]`.
    base: JobId,
    ring: VecDeque<Option<T>>,
    /// Records of numbers below `base`.
    aside: FastMap<JobId, T>,
    span: usize,
}

impl<T> Default for Slots<T> {
    fn default() -> Self {
        Slots::with_span(SPAN)
    }
}

impl<T> Slots<T> {
    /// Slots whose ring spans at most `span` numbers.
    pub fn with_span(span: usize) -> Self {
        Slots {
            base: 0,
            ring: VecDeque::new(),
            aside: FastMap::default(),
            span: span.max(1),
        }
    }

    /// Records `value` for `job` (replacing any record it had).
    pub fn insert(&mut self, job: JobId, value: T) {
        if self.ring.is_empty() && job >= self.base {
            self.base = job;
        }
        if job < self.base {
            self.aside.insert(job, value);
            return;
        }
        let at = job - self.base;
        if at >= (2 * self.span) as u64 {
            // Far ahead of everything else (not from the one counter):
            // never stretch the ring over such a gap.
            self.aside.insert(job, value);
            return;
        }
        let at = at as usize;
        if at >= self.ring.len() {
            self.ring.resize_with(at + 1, || None);
        }
        self.ring[at] = Some(value);
        while self.ring.len() > self.span {
            if let Some(Some(old)) = self.ring.pop_front() {
                self.aside.insert(self.base, old);
            }
            self.base += 1;
        }
        self.trim_front();
    }

    /// The record of `job`.
    pub fn get(&self, job: &JobId) -> Option<&T> {
        if let Some(Some(value)) = self.slot(*job).and_then(|at| self.ring.get(at)) {
            return Some(value);
        }
        self.aside.get(job)
    }

    /// The record of `job`, to change it.
    pub fn get_mut(&mut self, job: &JobId) -> Option<&mut T> {
        if let Some(at) = self.slot(*job) {
            if self.ring.get(at).is_some_and(Option::is_some) {
                return self.ring[at].as_mut();
            }
        }
        self.aside.get_mut(job)
    }

    /// Takes the record of `job` out.
    pub fn remove(&mut self, job: &JobId) -> Option<T> {
        if let Some(at) = self.slot(*job) {
            if let Some(value) = self.ring.get_mut(at).and_then(Option::take) {
                self.trim_front();
                return Some(value);
            }
        }
        self.aside.remove(job)
    }

    /// Drops the record of `job` where it lies (no move out, for a caller
    /// that has read what it needs of it).
    pub fn discard(&mut self, job: &JobId) {
        if let Some(at) = self.slot(*job) {
            if let Some(slot @ Some(_)) = self.ring.get_mut(at) {
                *slot = None;
                self.trim_front();
                return;
            }
        }
        self.aside.remove(job);
    }

    /// Where `job` would sit in the ring (it may be past its end).
    fn slot(&self, job: JobId) -> Option<usize> {
        usize::try_from(job.checked_sub(self.base)?).ok()
    }

    /// Every record, with its job number (ring first, in number order,
    /// then the side map in no order).
    pub fn iter(&self) -> impl Iterator<Item = (JobId, &T)> {
        let base = self.base;
        self.ring
            .iter()
            .enumerate()
            .filter_map(move |(i, v)| v.as_ref().map(|v| (base + i as JobId, v)))
            .chain(self.aside.iter().map(|(&job, v)| (job, v)))
    }

    /// Every record.
    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.ring.iter().flatten().chain(self.aside.values())
    }

    /// Every record, to change it.
    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.ring
            .iter_mut()
            .flatten()
            .chain(self.aside.values_mut())
    }

    /// Drops empty slots from the front, so the ring starts at its oldest
    /// record.
    fn trim_front(&mut self) {
        while let Some(None) = self.ring.front() {
            self.ring.pop_front();
            self.base += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(s: &Slots<&'static str>) -> Vec<(JobId, &'static str)> {
        let mut v: Vec<_> = s.iter().map(|(j, v)| (j, *v)).collect();
        v.sort();
        v
    }

    #[test]
    fn in_order_with_holes_and_out_of_order_removal() {
        let mut s = Slots::with_span(8);
        s.insert(10, "a");
        s.insert(11, "b");
        s.insert(13, "d"); // 12 never recorded
        assert_eq!(s.get(&12), None);
        assert_eq!(s.get(&13), Some(&"d"));
        assert_eq!(s.remove(&11), Some("b"));
        assert_eq!(s.remove(&11), None);
        *s.get_mut(&10).unwrap() = "A";
        assert_eq!(all(&s), vec![(10, "A"), (13, "d")]);
        // The front goes: the ring starts at the next record.
        assert_eq!(s.remove(&10), Some("A"));
        assert_eq!(s.base, 13);
        assert_eq!(s.ring.len(), 1);
        s.discard(&13);
        assert!(s.ring.is_empty());
        assert_eq!(s.get(&13), None);
        // Empty: the next record starts it afresh, wherever it is.
        s.insert(1000, "e");
        assert_eq!(s.base, 1000);
        assert_eq!(all(&s), vec![(1000, "e")]);
    }

    #[test]
    fn a_record_that_stays_moves_aside_and_is_still_found() {
        let mut s = Slots::with_span(4);
        s.insert(1, "long");
        for job in 2..20 {
            s.insert(job, "quick");
            assert_eq!(s.remove(&job), Some("quick"));
        }
        // The ring never held more than its span.
        assert!(s.ring.len() <= 4);
        assert_eq!(s.get(&1), Some(&"long"));
        *s.get_mut(&1).unwrap() = "LONG";
        assert_eq!(all(&s), vec![(1, "LONG")]);
        s.discard(&1);
        assert_eq!(all(&s), vec![]);
        // A number below the ring (read back from a store) goes aside too.
        s.insert(30, "new");
        s.insert(5, "old");
        assert_eq!(s.get(&5), Some(&"old"));
        assert_eq!(all(&s), vec![(5, "old"), (30, "new")]);
        assert_eq!(s.values().count(), 2);
        for v in s.values_mut() {
            *v = "x";
        }
        assert_eq!(all(&s), vec![(5, "x"), (30, "x")]);
    }

    #[test]
    fn a_number_far_ahead_does_not_stretch_the_ring() {
        let mut s = Slots::with_span(4);
        s.insert(1, "a");
        s.insert(1 << 40, "far");
        assert_eq!(s.ring.len(), 1);
        assert_eq!(s.get(&(1 << 40)), Some(&"far"));
        assert_eq!(s.remove(&(1 << 40)), Some("far"));
        assert_eq!(all(&s), vec![(1, "a")]);
    }
}
