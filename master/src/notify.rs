//! systemd's readiness protocol (`sd_notify`): under a unit with
//! `Type=notify`, systemd sets `NOTIFY_SOCKET` and counts the service as
//! started only when it says `READY=1`. The master says it once every
//! `--pool-start` child is ready, `STOPPING=1` when it begins to drain,
//! and keeps a one-line `STATUS=` (shown by `systemctl status`) current.
//!
//! A few lines of `UnixDatagram` rather than a crate: one datagram of
//! `KEY=VALUE` lines to a path, or to an abstract socket for `@name`.
//!
//! The pool is watched from outside, through its handle: the event hub
//! until `pool-ready` (subscribed before the pool runs, so the event
//! cannot be missed), `health()` and `stats()` on a timer. The
//! subscription is dropped once ready: a permanent subscriber would make
//! the pool build every job's events, which it otherwise skips.

use crate::events::Subscription;
use crate::pool::{Health, PoolHandle};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{debug, warn};

/// The variable systemd sets to the socket it listens on.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// How often `STATUS=` is refreshed (sent only when it changed).
const STATUS_EVERY: Duration = Duration::from_secs(2);

/// Where notifications go.
pub struct Notifier {
    /// A socket and systemd's address, or why `NOTIFY_SOCKET` names none
    /// we can use (told once, at the first notification: logging is not
    /// set up yet when the variable is read).
    target: Result<(UnixDatagram, SocketAddr), String>,
    /// `STOPPING=1` is said once, whichever path notices first.
    stopping: AtomicBool,
    /// A failure is logged once, not at every status.
    warned: AtomicBool,
}

impl Notifier {
    /// The notifier `NOTIFY_SOCKET` asks for, if set. Takes the variable
    /// out of the environment so no child inherits it (with
    /// `NotifyAccess=all` a child could otherwise claim readiness). Call it
    /// before any thread is started: changing the environment races with
    /// other threads reading it.
    pub fn from_env() -> Option<Notifier> {
        let value = std::env::var_os(NOTIFY_SOCKET)?;
        std::env::remove_var(NOTIFY_SOCKET);
        let target = address(value.as_bytes()).and_then(|addr| {
            let socket = UnixDatagram::unbound()
                .and_then(|s| s.set_nonblocking(true).map(|()| s))
                .map_err(|e| format!("a datagram socket: {e}"))?;
            Ok((socket, addr))
        });
        Some(Notifier {
            target,
            stopping: AtomicBool::new(false),
            warned: AtomicBool::new(false),
        })
    }

    /// Sends one datagram of `KEY=VALUE` lines. Never blocks: systemd
    /// reads at once, and a notification that cannot go is not worth
    /// stalling the master for.
    pub fn send(&self, state: &str) {
        let sent = match &self.target {
            Ok((socket, addr)) => socket
                .send_to_addr(state.as_bytes(), addr)
                .map(drop)
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.clone()),
        };
        match sent {
            Ok(()) => debug!(state, "told systemd"),
            Err(e) if !self.warned.swap(true, Ordering::Relaxed) => {
                warn!(error = %e, state, "cannot notify systemd (NOTIFY_SOCKET)");
            }
            Err(_) => {}
        }
    }

    /// `STOPPING=1`, the first time only.
    pub fn stopping(&self) {
        if !self.stopping.swap(true, Ordering::Relaxed) {
            self.send("STOPPING=1\nSTATUS=draining: no new jobs");
        }
    }
}

/// A socket address from `NOTIFY_SOCKET`: an absolute path, or `@name`
/// for a Linux abstract socket.
fn address(value: &[u8]) -> Result<SocketAddr, String> {
    let shown = String::from_utf8_lossy(value);
    match value.first() {
        Some(b'/') => {
            let path = std::path::Path::new(OsStr::from_bytes(value));
            SocketAddr::from_pathname(path).map_err(|e| format!("{shown}: {e}"))
        }
        Some(b'@') => abstract_address(&value[1..]).map_err(|e| format!("{shown}: {e}")),
        _ => Err(format!("{shown:?}: neither an absolute path nor @abstract")),
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn abstract_address(name: &[u8]) -> std::io::Result<SocketAddr> {
    #[cfg(target_os = "android")]
    use std::os::android::net::SocketAddrExt;
    #[cfg(target_os = "linux")]
    use std::os::linux::net::SocketAddrExt;
    SocketAddr::from_abstract_name(name)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn abstract_address(_name: &[u8]) -> std::io::Result<SocketAddr> {
    Err(std::io::Error::other("abstract sockets are Linux only"))
}

/// Tells systemd about the pool until the master ends: `READY=1` once it
/// is ready, `STATUS=` when it changes, `STOPPING=1` at SIGTERM/SIGINT
/// (the signals that start a drain) or when the pool says it is shutting
/// down. `events` must be subscribed before the pool runs.
pub async fn run(notifier: Arc<Notifier>, pool: PoolHandle, events: Subscription) {
    let mut events = Some(events);
    let mut ready = false;
    let mut status = String::new();
    let mut tick = tokio::time::interval(STATUS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Listened to beside `signals::forward`, which turns them into the
    // drain: both are woken, so STOPPING=1 goes out as the drain begins.
    let mut term = signal(SignalKind::terminate()).ok();
    let mut int = signal(SignalKind::interrupt()).ok();
    loop {
        tokio::select! {
            // Any event before readiness (child-ready, pool-ready, a
            // missed batch): look at the pool's health below.
            got = next_event(&mut events) => {
                if got.is_none() {
                    events = None;
                }
            }
            _ = tick.tick() => {}
            Some(()) = recv(&mut term) => notifier.stopping(),
            Some(()) = recv(&mut int) => notifier.stopping(),
        }
        let Some(health) = pool.health().await else {
            return;
        };
        let Some(stats) = pool.stats().await else {
            return;
        };
        let line = match &health {
            Health::Starting => format!(
                "starting: {} of {} children ready",
                stats.pool.idle + stats.pool.busy,
                stats.pool.start
            ),
            Health::Ready => format!(
                "{} children, {} busy, {} queued; {} jobs completed, {} failed",
                stats.pool.size,
                stats.pool.busy,
                stats.queue.len,
                stats.jobs.completed,
                stats.jobs.failed
            ),
            Health::Broken(cause) => format!("not ready: {cause}"),
            Health::ShuttingDown => format!(
                "draining: {} children, {} busy",
                stats.pool.size, stats.pool.busy
            ),
        };
        if health == Health::ShuttingDown {
            notifier.stopping();
        }
        if health == Health::Ready && !ready {
            ready = true;
            // Readiness is known for good: stop making the pool build
            // events for us.
            events = None;
            notifier.send(&format!("READY=1\nSTATUS={line}"));
            status = line;
        } else if line != status {
            notifier.send(&format!("STATUS={line}"));
            status = line;
        }
    }
}

/// The next event's name (`Some("")` for missed events), or `None` once
/// the hub is gone; pending forever without a subscription.
async fn next_event(events: &mut Option<Subscription>) -> Option<&'static str> {
    use tokio::sync::broadcast::error::RecvError;
    let Some(sub) = events else {
        return std::future::pending().await;
    };
    match sub.recv().await {
        Ok(event) => Some(event.name),
        Err(RecvError::Lagged(_)) => Some(""),
        Err(RecvError::Closed) => None,
    }
}

/// The next delivery of a signal; pending forever without a listener.
async fn recv(sig: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match sig {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}
