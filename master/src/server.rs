//! Wires a running master together: listener, pool, signals; returns when a
//! shutdown has stopped every child.

use crate::child::ProcessLauncher;
use crate::config::{self, Config};
use crate::listener::{self, ListenerConfig};
use crate::pool;
use std::sync::Arc;
use tracing::info;

/// Runs the master on an already-bound listener until it is stopped.
pub async fn run(cfg: Config, listener: std::net::TcpListener) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let local = listener.local_addr()?;
    info!(addr = %local, "listening");
    let launcher = ProcessLauncher {
        handler: cfg.handler.clone(),
        connect: config::connect_back(local),
        max_payload: cfg.max_payload,
    };
    let listener_cfg = Arc::new(ListenerConfig {
        max_payload: cfg.max_payload,
    });
    let (pool, done) = pool::start(Arc::new(cfg), Arc::new(launcher));
    let signals = crate::signals::forward(pool.clone());
    tokio::spawn(listener::accept_loop(listener, pool.clone(), listener_cfg));
    tokio::select! {
        r = signals => r?,
        r = done => r.map_err(|_| std::io::Error::other("the pool stopped unexpectedly"))?,
    }
    info!("shutdown complete");
    Ok(())
}
