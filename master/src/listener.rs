//! The one TCP listener for children and clients. Each connection gets its
//! own task, which reads the hello within the deadline and then becomes a
//! child connection (handed to the pool) or a client session. Whatever a
//! connection does wrong stays in its task: it is logged and closed.

use crate::child::ChildConn;
use crate::pool::PoolHandle;
use crate::session;
use std::sync::Arc;
use std::time::Duration;
use taskmaster_proto::codec;
use taskmaster_proto::handshake::{read_hello, HELLO_TIMEOUT};
use taskmaster_proto::messages::Hello;
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

/// Per-connection settings.
pub struct ListenerConfig {
    /// Largest payload in a frame.
    pub max_payload: usize,
    /// The client token, when clients must present one.
    pub token: Option<crate::config::Token>,
    /// Jobs one client connection may have in flight.
    pub max_in_flight: usize,
    /// Unsent answer bytes one client connection may have queued.
    pub max_client_backlog: usize,
    /// How long an idle client connection is kept.
    pub client_idle: Option<Duration>,
    /// Open connections allowed.
    pub connections: Arc<tokio::sync::Semaphore>,
    /// Connections before their hello allowed.
    pub handshakes: Arc<tokio::sync::Semaphore>,
}

/// Accepts connections until the process ends.
pub async fn accept_loop(listener: TcpListener, pool: PoolHandle, cfg: Arc<ListenerConfig>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                // Over a limit the connection is closed at once: it costs
                // an accept and a close, never a task or a buffer.
                // (`--max-connections` is taken after a client's hello:
                // children never count against it.)
                let Ok(hello_permit) = cfg.handshakes.clone().try_acquire_owned() else {
                    warn!(%peer, "too many connections without a hello (--max-handshakes); closing");
                    continue;
                };
                let pool = pool.clone();
                let cfg = cfg.clone();
                tokio::spawn(async move {
                    debug!(%peer, "connection accepted");
                    handle(stream, peer, pool, cfg, hello_permit).await;
                });
            }
            Err(e) => {
                // Out of descriptors, say: pause rather than spin on accept.
                warn!(error = %e, "accept failed");
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
    hello_permit: tokio::sync::OwnedSemaphorePermit,
) {
    let _ = stream.set_nodelay(true);
    let (read, write) = stream.into_split();
    let mut reader = codec::frame_reader(read, cfg.max_payload);
    // Before a peer has proved anything it may send a hello, nothing big.
    reader
        .decoder_mut()
        .set_max_frame_length(codec::HEADER_LIMIT);
    let hello = read_hello(&mut reader, HELLO_TIMEOUT).await;
    reader
        .decoder_mut()
        .set_max_frame_length(codec::max_frame_len(cfg.max_payload));
    drop(hello_permit);
    match hello {
        Err(e) => warn!(%peer, error = %e, "closing connection"),
        Ok(Hello::Handler(hello)) => pool.handler_hello(
            hello,
            ChildConn {
                reader,
                writer: write,
            },
        ),
        Ok(Hello::Client(hello)) => {
            let slot = cfg.connections.clone().try_acquire_owned().ok();
            if slot.is_none() {
                warn!(%peer, "too many connections (--max-connections); refusing client");
            }
            session::serve(reader, write, hello, peer, pool, &cfg, slot).await
        }
    }
}
