//! The one TCP listener for children and clients. Each connection gets its
//! own task, which reads the hello within the deadline and then becomes a
//! child connection (handed to the pool) or a client session. Whatever a
//! connection does wrong stays in its task: it is logged and closed.
//!
//! Children never wait for room: they take no `--max-connections` place
//! (that is taken after a client's hello), and when `--max-handshakes`
//! connections are waiting for their hello the oldest is closed to let the
//! newcomer in, so silent sockets cannot keep out a child (which says hello
//! at once) or a real client.

use crate::child::ChildConn;
use crate::pool::PoolHandle;
use crate::session::{self, SessionConfig};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use taskmaster_proto::codec;
use taskmaster_proto::handshake::{read_hello, HELLO_TIMEOUT};
use taskmaster_proto::messages::Hello;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tracing::{debug, warn};

/// The listener's settings.
pub struct ListenerConfig {
    /// What each client session needs.
    pub session: SessionConfig,
    /// Open connections allowed.
    pub connections: Arc<tokio::sync::Semaphore>,
    /// Connections before their hello.
    pub handshakes: Arc<Handshakes>,
}

/// Connections that have not said hello yet, oldest first, at most `max`.
pub struct Handshakes {
    max: usize,
    waiting: Mutex<(u64, BTreeMap<u64, oneshot::Sender<()>>)>,
    /// Evictions not yet logged: a flood logs one line a second, not one
    /// per connection.
    evicted: Quiet,
}

/// At most one log line a second for an event that may come in floods;
/// the line says how many it stands for.
#[derive(Default)]
pub struct Quiet {
    /// (when the last line was logged, events since).
    state: Mutex<(Option<std::time::Instant>, u64)>,
}

impl Quiet {
    /// Counts an event; `Some(n)` when a line is due, standing for `n`.
    pub fn due(&self) -> Option<u64> {
        let mut state = self.state.lock().ok()?;
        state.1 += 1;
        let now = std::time::Instant::now();
        if state
            .0
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            return None;
        }
        let n = std::mem::take(&mut state.1);
        state.0 = Some(now);
        Some(n)
    }
}

/// A connection's place among those waiting for their hello; the receiver
/// fires if it is closed to make room for a newer one.
pub struct Place {
    id: u64,
    all: Arc<Handshakes>,
}

impl Handshakes {
    /// Room for `max` connections before their hello.
    pub fn new(max: usize) -> Arc<Handshakes> {
        Arc::new(Handshakes {
            max: max.max(1),
            waiting: Mutex::new((0, BTreeMap::new())),
            evicted: Quiet::default(),
        })
    }

    /// A place for a new connection, evicting the oldest if all are taken.
    pub fn admit(self: &Arc<Self>) -> (Place, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        let mut waiting = self.waiting.lock().expect("handshake list poisoned");
        if waiting.1.len() >= self.max {
            // Dropping its sender tells the oldest to close.
            waiting.1.pop_first();
        }
        waiting.0 += 1;
        let id = waiting.0;
        waiting.1.insert(id, tx);
        let place = Place {
            id,
            all: self.clone(),
        };
        (place, rx)
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        if let Ok(mut waiting) = self.all.waiting.lock() {
            waiting.1.remove(&self.id);
        }
    }
}

/// Accepts connections until the process ends.
pub async fn accept_loop(listener: TcpListener, pool: PoolHandle, cfg: Arc<ListenerConfig>) {
    let failed = Quiet::default();
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                // (`--max-connections` is taken after a client's hello:
                // children never count against it.)
                let place = cfg.handshakes.admit();
                let pool = pool.clone();
                let cfg = cfg.clone();
                tokio::spawn(async move {
                    debug!(%peer, "connection accepted");
                    handle(stream, peer, pool, cfg, place).await;
                });
            }
            Err(e) => {
                // Out of descriptors, say: pause rather than spin on accept.
                if let Some(count) = failed.due() {
                    warn!(error = %e, count, "accept failed");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn handle(
    stream: TcpStream,
    peer: std::net::SocketAddr,
    pool: PoolHandle,
    cfg: Arc<ListenerConfig>,
    (place, evicted): (Place, oneshot::Receiver<()>),
) {
    let _ = stream.set_nodelay(true);
    let (read, write) = stream.into_split();
    let mut reader = codec::frame_reader(read, cfg.session.max_payload);
    // Before a peer has proved anything it may send a hello, nothing big.
    reader
        .decoder_mut()
        .set_max_frame_length(codec::HEADER_LIMIT);
    let hello = tokio::select! {
        hello = read_hello(&mut reader, HELLO_TIMEOUT) => hello,
        _ = evicted => {
            if let Some(count) = cfg.handshakes.evicted.due() {
                warn!(%peer, count, "closing a connection still without a hello to make room for a newer one (--max-handshakes)");
            }
            return;
        }
    };
    reader
        .decoder_mut()
        .set_max_frame_length(codec::max_frame_len(cfg.session.max_payload));
    drop(place);
    match hello {
        Err(e) => warn!(%peer, error = %e, "closing connection"),
        Ok(Hello::Handler(hello)) => pool.handler_hello(
            hello,
            ChildConn {
                reader,
                writer: write,
            },
        ),
        Ok(Hello::Agent(hello)) => warn!(
            %peer,
            agent = %hello.name,
            "an agent said hello on the client socket; agents connect to --agent-listen; closing"
        ),
        Ok(Hello::Client(hello)) => {
            let slot = cfg.connections.clone().try_acquire_owned().ok();
            if slot.is_none() {
                warn!(%peer, "too many connections (--max-connections); refusing client");
            }
            session::serve(reader, write, hello, peer, pool, &cfg.session, slot).await
        }
    }
}
