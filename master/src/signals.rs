//! The single signal task: SIGTERM, SIGINT and SIGHUP become messages to the
//! pool. No work happens in signal context.

use crate::pool::PoolHandle;
use tokio::signal::unix::{signal, SignalKind};
use tracing::info;

/// Forwards stop signals to the pool until the process ends.
pub async fn forward(pool: PoolHandle) -> std::io::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => { info!(signal = "SIGTERM", "stop requested"); pool.shutdown(); }
            _ = int.recv() => { info!(signal = "SIGINT", "stop requested"); pool.shutdown(); }
            _ = hup.recv() => { info!(signal = "SIGHUP", "rolling restart requested"); pool.restart(); }
        }
    }
}
