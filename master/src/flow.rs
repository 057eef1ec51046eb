//! Flow control from a client back to the child writing for it.
//!
//! Each client connection has a [`Backlog`]: the bytes of parts, responses
//! and job-operation answers queued for it and not yet handed to its
//! socket. While a backlog is past its window (`--client-window`):
//!
//! - the child task whose running job streams parts to that client stops
//!   reading the child's socket: the child's socket buffer fills, its
//!   `parts.send` blocks, and it resumes when the client reads;
//! - the client's session reads no more of its requests, and job-operation
//!   answers wait before they are queued.
//!
//! A child's final answer is always read: holding it would pin a child that
//! has finished its work to a slow client; the unread answers stop that
//! client's submits instead. Nothing is dropped and no connection is closed
//! for being slow; other clients and children are unaffected.
//!
//! All backlogs also add up in one [`Total`]: past `--max-total-backlog`,
//! every client with anything unsent is held back until its own backlog is
//! written, so many slow clients together cannot fill the master's memory
//! either. A client that reads promptly has nothing unsent and is not held.
//!
//! `--max-client-backlog` stays as a last resort for what flow control
//! cannot hold back (the frame a child task had already read when the
//! window closed): past it the connection is closed.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::{watch, Notify};

/// Unsent bytes of every client connection together.
#[derive(Debug)]
pub struct Total {
    bytes: AtomicUsize,
    cap: usize,
    /// Woken when the total falls back to the cap.
    opened: Notify,
}

impl Total {
    /// A total held back past `cap` bytes.
    pub fn new(cap: usize) -> Arc<Total> {
        Arc::new(Total {
            bytes: AtomicUsize::new(0),
            cap,
            opened: Notify::new(),
        })
    }

    /// Unsent bytes of all clients now.
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    fn over(&self) -> bool {
        self.bytes() > self.cap
    }

    fn add(&self, n: usize) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
    }

    fn sub(&self, n: usize) {
        let old = self.bytes.fetch_sub(n, Ordering::Relaxed);
        if old > self.cap && old - n <= self.cap {
            self.opened.notify_waiters();
        }
    }
}

/// One client connection's unsent bytes.
#[derive(Debug)]
pub struct Backlog {
    bytes: AtomicUsize,
    /// Past this, whoever writes for the client waits.
    window: usize,
    /// Past this, the connection is closed (what flow control missed).
    close_at: usize,
    /// The connection's writer is gone: nothing waits for it any more.
    closed: AtomicBool,
    total: Arc<Total>,
    /// Woken when the backlog falls back to its window (or to nothing).
    opened: Notify,
    over: watch::Sender<bool>,
}

impl Backlog {
    /// A backlog held back past `window` bytes and closed past `close_at`;
    /// the receiver learns when it must be closed.
    pub fn new(
        window: usize,
        close_at: usize,
        total: Arc<Total>,
    ) -> (Arc<Backlog>, watch::Receiver<bool>) {
        let (over, rx) = watch::channel(false);
        let backlog = Backlog {
            bytes: AtomicUsize::new(0),
            window,
            close_at,
            closed: AtomicBool::new(false),
            total,
            opened: Notify::new(),
            over,
        };
        (Arc::new(backlog), rx)
    }

    /// Unsent bytes now.
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// `n` more bytes queued.
    pub fn add(&self, n: usize) {
        if n == 0 || self.closed.load(Ordering::Acquire) {
            return;
        }
        let now = self.bytes.fetch_add(n, Ordering::Relaxed) + n;
        self.total.add(n);
        if self.closed.load(Ordering::Acquire) {
            // Closed meanwhile: give back whatever close() did not.
            self.total.sub(self.bytes.swap(0, Ordering::AcqRel));
            return;
        }
        if now > self.close_at && !*self.over.borrow() {
            let _ = self.over.send(true);
        }
    }

    /// `n` bytes handed to the socket.
    pub fn sub(&self, n: usize) {
        if n == 0 {
            return;
        }
        let old = self.bytes.fetch_sub(n, Ordering::Relaxed);
        self.total.sub(n);
        let new = old.wrapping_sub(n);
        if (old > self.window && new <= self.window) || (new == 0 && self.total.over()) {
            self.opened.notify_waiters();
        }
    }

    /// The connection's writer has ended: its unsent bytes no longer
    /// count, and nobody waits for them.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.total.sub(self.bytes.swap(0, Ordering::AcqRel));
        self.opened.notify_waiters();
    }

    /// Whoever writes for this client must wait now.
    pub fn blocked(&self) -> bool {
        let bytes = self.bytes();
        !self.closed.load(Ordering::Acquire)
            && (bytes > self.window || (bytes > 0 && self.total.over()))
    }

    /// Returns once writing for this client may go on.
    pub async fn opened(&self) {
        loop {
            let own = self.opened.notified();
            let all = self.total.opened.notified();
            tokio::pin!(own, all);
            // Registered before the check, so a wake-up between the check
            // and the wait is not lost.
            own.as_mut().enable();
            all.as_mut().enable();
            if !self.blocked() {
                return;
            }
            tokio::select! {
                () = own => {}
                () = all => {}
            }
        }
    }
}

/// Waits until `gate` (if any) is open; never returns for `None`.
pub async fn wait_open(gate: Option<Arc<Backlog>>) {
    match gate {
        Some(gate) => gate.opened().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn window_holds_back_and_reading_opens_it() {
        let total = Total::new(1 << 30);
        let (b, over) = Backlog::new(100, 1000, total.clone());
        b.add(100);
        assert!(!b.blocked(), "at the window is not past it");
        b.add(1);
        assert!(b.blocked());
        assert_eq!(total.bytes(), 101);
        let waiter = tokio::spawn({
            let b = b.clone();
            async move { b.opened().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        b.sub(50);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken when the client read")
            .unwrap();
        assert!(!*over.borrow());
        b.add(2000);
        assert!(*over.borrow(), "past close_at the connection must close");
    }

    #[tokio::test]
    async fn total_holds_back_only_clients_with_unsent_bytes() {
        let total = Total::new(150);
        let (slow, _) = Backlog::new(100, 1 << 20, total.clone());
        let (other, _) = Backlog::new(100, 1 << 20, total.clone());
        slow.add(90);
        other.add(90);
        assert!(
            slow.blocked() && other.blocked(),
            "180 > 150, both have bytes"
        );
        let waiter = tokio::spawn({
            let slow = slow.clone();
            async move { slow.opened().await }
        });
        other.sub(90);
        assert!(!other.blocked(), "a client that read everything goes on");
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("total back under the cap wakes the others")
            .unwrap();
        assert!(!slow.blocked());
    }

    #[tokio::test]
    async fn closing_releases_waiters_and_the_total() {
        let total = Total::new(1 << 30);
        let (b, _) = Backlog::new(10, 1 << 20, total.clone());
        b.add(500);
        let waiter = tokio::spawn({
            let b = b.clone();
            async move { b.opened().await }
        });
        tokio::task::yield_now().await;
        b.close();
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("a gone client holds nobody back")
            .unwrap();
        assert_eq!(total.bytes(), 0);
        b.add(500);
        assert_eq!(total.bytes(), 0, "a closed backlog counts nothing");
        assert!(!b.blocked());
    }
}
