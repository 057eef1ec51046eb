//! The crash-loop breaker: which child deaths are start-up failures, how
//! long to wait before the next spawn, when the pool counts as broken
//! (jobs fail `error` at once) and when it heals. Pure policy: the pool
//! tells it what happened and applies what it decides, so the whole rule
//! reads in one screen and is tested without processes or clocks.
//!
//! The rule (SPEC section 10, supervisord's `startsecs`):
//!
//! - A child has *started* once it has been ready for `--start-secs` or has
//!   finished a job. Only the death of a child that had not started is a
//!   start-up failure; a started child's death, idle or busy, whatever
//!   killed it, is replaced at once and never counts here.
//! - After a start-up failure the next spawn waits 100 ms, doubling with
//!   each failure in a row, at most 5 s.
//! - `--breaker-deaths` start-up failures within `--breaker-window`, or 3
//!   in a row, trip the breaker: while tripped and no child is ready, jobs
//!   fail `error` at once, and the pool probes with one spawn every 5 s.
//! - The first child that starts clears the count, the back-off and the
//!   breaker.

use std::collections::VecDeque;
use std::time::Duration;
use tokio::time::Instant;

/// Start-up failures in a row that trip the breaker whatever the window
/// says (a handler that fails slowly never fills the window).
pub const FAILURES_IN_A_ROW: u32 = 3;
/// First respawn delay after a start-up failure; doubles each time.
pub const BACKOFF_START: Duration = Duration::from_millis(100);
/// Longest respawn delay, and the probe interval of a tripped breaker: a
/// broken handler is retried this often, forever, so the pool heals by
/// itself once the handler is fixed.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// What the pool must do after a start-up failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    /// Wait this long before the next spawn.
    pub delay: Duration,
    /// This failure tripped the breaker (it was not tripped before).
    pub tripped_now: bool,
}

/// The breaker's state.
#[derive(Debug)]
pub struct Breaker {
    /// Failures within `window` that trip it.
    limit: u32,
    window: Duration,
    /// Start-up failures within the window, oldest first.
    recent: VecDeque<Instant>,
    in_a_row: u32,
    /// Why it tripped, while it is tripped.
    tripped: Option<String>,
    /// No spawn before this.
    until: Option<Instant>,
}

impl Breaker {
    /// A breaker that trips at `limit` start-up failures within `window`
    /// (or [`FAILURES_IN_A_ROW`] in a row, if fewer).
    pub fn new(limit: u32, window: Duration) -> Breaker {
        Breaker {
            limit: limit.max(1),
            window,
            recent: VecDeque::new(),
            in_a_row: 0,
            tripped: None,
            until: None,
        }
    }

    /// A child died before it had started, for `cause`.
    pub fn startup_failure(&mut self, now: Instant, cause: &str) -> Backoff {
        self.in_a_row += 1;
        self.recent.push_back(now);
        while self
            .recent
            .front()
            .is_some_and(|&t| now.duration_since(t) > self.window)
        {
            self.recent.pop_front();
        }
        let mut delay = BACKOFF_START
            .saturating_mul(1 << (self.in_a_row - 1).min(16))
            .min(BACKOFF_MAX);
        let trip = self.recent.len() >= self.limit as usize
            || self.in_a_row >= FAILURES_IN_A_ROW.min(self.limit);
        let tripped_now = trip && self.tripped.is_none();
        if trip {
            self.tripped.get_or_insert_with(|| cause.to_owned());
        }
        if self.tripped.is_some() {
            // Tripped: one probe per BACKOFF_MAX, no faster.
            delay = delay.max(BACKOFF_MAX);
        }
        self.until = Some(now + delay);
        Backoff { delay, tripped_now }
    }

    /// A child has started: the handler works. Returns the cause of the
    /// breaker this cleared, if it was tripped.
    pub fn started(&mut self) -> Option<String> {
        // The window keeps its failures: a handler that starts only now
        // and then still trips it (and heals again at each start).
        self.in_a_row = 0;
        self.until = None;
        self.tripped.take()
    }

    /// Why no child can be started, while the breaker is tripped.
    pub fn tripped(&self) -> Option<&str> {
        self.tripped.as_deref()
    }

    /// Start-up failures in a row (since the last child that started).
    pub fn in_a_row(&self) -> u32 {
        self.in_a_row
    }

    /// Start-up failures within the window.
    pub fn recent(&self) -> usize {
        self.recent.len()
    }

    /// Start-up failures since the last child that started: while there
    /// are any, the pool spawns one child at a time.
    pub fn failing(&self) -> bool {
        self.in_a_row > 0
    }

    /// When the next spawn may happen, if not now.
    pub fn wait_until(&mut self, now: Instant) -> Option<Instant> {
        match self.until {
            Some(until) if now < until => Some(until),
            _ => {
                self.until = None;
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn backoff_doubles_and_three_in_a_row_trip() {
        let t0 = Instant::now();
        let mut b = Breaker::new(5, Duration::from_secs(10));
        assert_eq!(b.startup_failure(t0, "x").delay, ms(100));
        assert!(b.failing() && b.tripped().is_none());
        assert_eq!(b.wait_until(t0), Some(t0 + ms(100)));
        assert_eq!(b.wait_until(t0 + ms(100)), None);
        assert_eq!(b.startup_failure(t0 + ms(200), "x").delay, ms(200));
        let third = b.startup_failure(t0 + ms(500), "exited with code 1");
        assert!(third.tripped_now);
        assert_eq!(third.delay, BACKOFF_MAX, "a tripped breaker probes slowly");
        assert_eq!(b.tripped(), Some("exited with code 1"));
        let fourth = b.startup_failure(t0 + ms(6000), "other");
        assert!(!fourth.tripped_now);
        assert_eq!(
            b.tripped(),
            Some("exited with code 1"),
            "the first cause stays"
        );
    }

    #[test]
    fn a_started_child_heals_everything() {
        let t0 = Instant::now();
        let mut b = Breaker::new(5, Duration::from_secs(10));
        for i in 0..3 {
            b.startup_failure(t0 + ms(i), "x");
        }
        assert_eq!(b.started().as_deref(), Some("x"));
        assert!(!b.failing());
        assert_eq!(b.tripped(), None);
        assert_eq!(b.wait_until(t0), None, "no back-off left");
        assert_eq!(b.startup_failure(t0 + ms(10), "y").delay, ms(100));
        assert!(b.tripped().is_none(), "the count starts again");
    }

    #[test]
    fn the_window_counts_failures_that_are_not_in_a_row() {
        let t0 = Instant::now();
        let mut b = Breaker::new(1, Duration::from_secs(10));
        assert!(b.startup_failure(t0, "x").tripped_now);
        // A flaky handler: starts in between, but two failures in a second.
        let mut b = Breaker::new(2, Duration::from_secs(1));
        b.startup_failure(t0, "x");
        b.started();
        assert!(b.startup_failure(t0 + ms(500), "x").tripped_now);
        // Failures older than the window fall out of it.
        let mut b = Breaker::new(2, Duration::from_secs(1));
        b.startup_failure(t0, "x");
        b.started();
        assert!(!b.startup_failure(t0 + ms(1500), "x").tripped_now);
    }

    #[test]
    fn delay_is_capped() {
        let t0 = Instant::now();
        let mut b = Breaker::new(1000, Duration::from_secs(1000));
        let mut last = Duration::ZERO;
        for i in 0..2 {
            last = b.startup_failure(t0 + ms(i), "x").delay;
        }
        assert_eq!(last, ms(200));
        for i in 2..40 {
            last = b.startup_failure(t0 + ms(i), "x").delay;
        }
        assert_eq!(last, BACKOFF_MAX);
    }
}
