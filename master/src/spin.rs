//! Polling before sleeping (`--spin-us`): while jobs come and go, the
//! master keeps polling its sockets for a short while after each job event
//! instead of sleeping in `epoll_wait` at once.
//!
//! Why: a process asleep in `epoll_wait` is woken by the kernel when a
//! frame arrives, and on a VM that wake-up costs tens of µs (an idle vCPU
//! must be kicked awake). At one job in flight the master is woken twice
//! per job (the submit, the child's answer), and those wake-ups were most
//! of the gap to a bare relay (docs/performance.md, "Polling before
//! sleeping"). A master still polling sees the frame at its next poll.
//!
//! The rule: the pool calls [`Spin::note`] after every command it
//! handles. When a command leaves a job with a child, the spinner task
//! starts (if it is not running already). It keeps the runtime from
//! sleeping by yielding in a loop, so tokio polls the I/O driver with a
//! zero timeout between its turns, and stops once no command has come for
//! the window. Each turn also calls `sched_yield`, so a process runnable on
//! this CPU (a child, a client) goes first: polling uses a CPU only when
//! nobody else wants it.
//!
//! The bound: after the last job event the master polls at most one
//! window (default 50 µs) before it sleeps. So the CPU it spends polling is
//! at most one window per quiet gap; only traffic that never leaves a gap
//! that long keeps a CPU busy for as long as it lasts. An idle master
//! (nothing with a child) never polls.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// What the pool tells the spinner task. Atomics, not a lock: the pool
/// only bumps a counter and, when the spinner sleeps, wakes it.
pub struct Spin {
    window: Duration,
    /// Commands the pool has handled; a change is a job event.
    events: AtomicU64,
    /// The spinner is polling (a note need not wake it).
    spinning: AtomicBool,
    kick: Notify,
}

impl Spin {
    /// A spinner that polls up to `window` after the last job event (zero:
    /// never).
    pub fn new(window: Duration) -> Arc<Spin> {
        Arc::new(Spin {
            window,
            events: AtomicU64::new(0),
            spinning: AtomicBool::new(false),
            kick: Notify::new(),
        })
    }

    /// The pool handled a command; `jobs_out`: a child holds a job, so an
    /// answer is coming.
    pub fn note(&self, jobs_out: bool) {
        if self.window.is_zero() {
            return;
        }
        self.events.fetch_add(1, Ordering::Relaxed);
        if jobs_out && !self.spinning.swap(true, Ordering::Relaxed) {
            self.kick.notify_one();
        }
    }

    /// The spinner task: runs for the master's life.
    pub async fn run(self: Arc<Self>) {
        if self.window.is_zero() {
            return;
        }
        loop {
            self.kick.notified().await;
            let mut seen = self.events.load(Ordering::Relaxed);
            let mut quiet_since = Instant::now();
            loop {
                let _ = nix::sched::sched_yield();
                tokio::task::yield_now().await;
                let now = self.events.load(Ordering::Relaxed);
                if now != seen {
                    seen = now;
                    quiet_since = Instant::now();
                } else if quiet_since.elapsed() >= self.window {
                    self.spinning.store(false, Ordering::Relaxed);
                    // A note between the check and the store saw the
                    // spinner running and did not wake it: go on polling.
                    if self.events.load(Ordering::Relaxed) == seen
                        || self.spinning.swap(true, Ordering::Relaxed)
                    {
                        break;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The spinner stops on its own once the events stop, and a note with
    /// nothing out does not start it.
    #[tokio::test]
    async fn stops_after_the_window_and_only_starts_for_jobs_out() {
        let spin = Spin::new(Duration::from_millis(5));
        let task = tokio::spawn(spin.clone().run());
        spin.note(false);
        tokio::task::yield_now().await;
        assert!(!spin.spinning.load(Ordering::Relaxed));
        spin.note(true);
        assert!(spin.spinning.load(Ordering::Relaxed));
        // Events keep it going; their end lets it stop.
        for _ in 0..20 {
            spin.note(false);
            tokio::task::yield_now().await;
        }
        let began = Instant::now();
        while spin.spinning.load(Ordering::Relaxed) {
            assert!(began.elapsed() < Duration::from_secs(5), "never stopped");
            tokio::task::yield_now().await;
        }
        // And it starts again at the next job.
        spin.note(true);
        assert!(spin.spinning.load(Ordering::Relaxed));
        task.abort();
    }
}
