//! Lifecycle events (SPEC section 10): what the pool actor announces to
//! `GET /events` (server-sent events) and `taskmaster events`. The actor
//! publishes on a broadcast channel and builds an event only when someone
//! listens, so the hot path pays nothing without subscribers. A subscriber
//! too slow to keep up loses the oldest events and is told how many.

use serde::Serialize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::SystemTime;
use taskmaster_proto::Reason;
use tokio::sync::broadcast;

/// Events a subscriber may fall behind by before it loses some.
const CAPACITY: usize = 4096;

/// One lifecycle event: `event: NAME` and one `data:` line of this JSON.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Event {
    /// The event name: those of SPEC section 10 (`child-spawned` ...
    /// `shutdown-done`) and `breaker-tripped`, `breaker-cleared`; not in
    /// the JSON.
    #[serde(skip)]
    pub name: &'static str,
    /// RFC 3339, UTC, milliseconds.
    pub time: String,
    /// The child's pid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// The job id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// The job's module.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
    /// A failure reason word.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
    /// Detail text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// A child's exit code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    /// The signal that ended a child.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// Bytes of a part.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<usize>,
}

impl Event {
    /// An event named `name`, stamped now.
    pub fn new(name: &'static str) -> Event {
        Event {
            name,
            time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            ..Event::default()
        }
    }

    /// The JSON of the `data:` line.
    pub fn json(&self) -> String {
        serde_json::to_string(self).expect("events serialize")
    }
}

/// The publishing side, owned by the pool actor; cloned for subscribers.
#[derive(Clone)]
pub struct Events {
    tx: broadcast::Sender<Arc<Event>>,
    /// Live subscriptions. `Sender::receiver_count` takes a lock, and the
    /// actor asks several times per job: an atomic costs nothing.
    subscribers: Arc<AtomicUsize>,
}

/// One subscription; counted while it lives.
pub struct Subscription {
    rx: broadcast::Receiver<Arc<Event>>,
    subscribers: Arc<AtomicUsize>,
}

impl Subscription {
    /// The next event (or how many were missed, or the end).
    pub async fn recv(&mut self) -> Result<Arc<Event>, broadcast::error::RecvError> {
        self.rx.recv().await
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.subscribers.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Default for Events {
    fn default() -> Self {
        Self::new()
    }
}

impl Events {
    /// A hub with no subscribers.
    pub fn new() -> Events {
        Events {
            tx: broadcast::channel(CAPACITY).0,
            subscribers: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Whether anyone listens (build events only then).
    pub fn wanted(&self) -> bool {
        self.subscribers.load(Ordering::Relaxed) > 0
    }

    /// Publishes the event `make` builds, if anyone listens.
    pub fn emit(&self, make: impl FnOnce() -> Event) {
        if self.wanted() {
            let _ = self.tx.send(Arc::new(make()));
        }
    }

    /// A new subscription, from now on.
    pub fn subscribe(&self) -> Subscription {
        self.subscribers.fetch_add(1, Ordering::Relaxed);
        Subscription {
            rx: self.tx.subscribe(),
            subscribers: self.subscribers.clone(),
        }
    }
}
