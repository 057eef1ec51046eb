//! [`Gate`]: a `select!` branch polled only after its own wake-up.
//!
//! `tokio::select!` polls every enabled branch each time its task wakes.
//! A child task wakes about twice per job (the job to send, the answer to
//! read), and polling its process-exit branch then costs some 300
//! instructions for nothing: the process is almost never gone. The same
//! holds for its heartbeat tick and for a client session's idle timer and
//! backlog watch. The gate hands the branch a waker of its own, and polls
//! it again only once that waker has fired (or right after the branch
//! completed, so what it waits on can be re-armed).

use futures_util::task::AtomicWaker;
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

/// One gate per branch, kept for the task's life (the waker a branch left
/// behind, in the future it polled, must find the same gate). Not `Clone`:
/// two branches sharing one would each take the other's wake-ups.
pub struct Gate(Arc<Flag>);

struct Flag {
    /// The branch's waker fired since it was last polled (set at first, so
    /// the first poll goes through and leaves the waker behind).
    fired: AtomicBool,
    /// The task to wake when it does.
    task: AtomicWaker,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl Default for Gate {
    fn default() -> Self {
        Gate(Arc::new(Flag {
            fired: AtomicBool::new(true),
            task: AtomicWaker::new(),
        }))
    }
}

impl Gate {
    /// Runs `fut`, polling it only when the waker it was last polled with
    /// has fired. Sound for a future made afresh per `select!` round only
    /// when what it waits on keeps the waker after the future is dropped
    /// (as a tokio child's exit watch does: the waker sits in the child).
    pub async fn run<F: Future>(&self, fut: F) -> F::Output {
        let mut fut = pin!(fut);
        std::future::poll_fn(|cx| {
            self.0.task.register(cx.waker());
            if !self.0.fired.swap(false, Ordering::AcqRel) {
                return Poll::Pending;
            }
            let waker = Waker::from(self.0.clone());
            let done = fut.as_mut().poll(&mut Context::from_waker(&waker));
            if done.is_ready() {
                // What it waits on may be re-armed (a timer reset, the next
                // tick) without a waker yet: the next round polls it once.
                self.0.fired.store(true, Ordering::Release);
            }
            done
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Pending until its flag is set; counts its polls; wakes whatever
    /// waker it was last given when told to.
    struct Probe {
        polls: Arc<AtomicUsize>,
        ready: Arc<AtomicBool>,
        waker: Arc<std::sync::Mutex<Option<Waker>>>,
    }

    impl Future for Probe {
        type Output = ();
        fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::SeqCst);
            if self.ready.load(Ordering::SeqCst) {
                return Poll::Ready(());
            }
            *self.waker.lock().unwrap() = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    #[tokio::test]
    async fn polled_once_then_only_after_its_own_wake() {
        let gate = Gate::default();
        let polls = Arc::new(AtomicUsize::new(0));
        let ready = Arc::new(AtomicBool::new(false));
        let waker = Arc::new(std::sync::Mutex::new(None::<Waker>));
        let probe = || Probe {
            polls: polls.clone(),
            ready: ready.clone(),
            waker: waker.clone(),
        };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        // Rounds woken by the other branch: the probe is polled only in the
        // first (which leaves its waker behind).
        for _ in 0..5 {
            tx.send(()).unwrap();
            tokio::select! {
                biased;
                () = gate.run(probe()) => panic!("not ready yet"),
                _ = rx.recv() => {}
            }
        }
        assert_eq!(polls.load(Ordering::SeqCst), 1);
        // Its own waker fires: the next round polls it, and it is done.
        ready.store(true, Ordering::SeqCst);
        waker.lock().unwrap().take().unwrap().wake();
        tokio::select! {
            () = gate.run(probe()) => {}
            _ = rx.recv() => panic!("nothing sent"),
        }
        assert_eq!(polls.load(Ordering::SeqCst), 2);
        // Done once, it is polled in the next round (to re-arm), then not.
        ready.store(false, Ordering::SeqCst);
        for _ in 0..3 {
            tx.send(()).unwrap();
            tokio::select! {
                biased;
                () = gate.run(probe()) => panic!("not ready"),
                _ = rx.recv() => {}
            }
        }
        assert_eq!(polls.load(Ordering::SeqCst), 3);
    }
}
