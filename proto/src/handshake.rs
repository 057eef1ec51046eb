//! The hello exchange that opens every connection: role, protocol version,
//! and the proof that goes with the role (a child's secret, a client's token).

use crate::codec::{self, CodecError, FrameReader};
use crate::messages::{Hello, SECRET_LEN};
use std::time::Duration;
use tokio::io::AsyncRead;

/// How long a fresh connection may take to send its hello before the master
/// closes it; without it, idle sockets would pin tasks and descriptors.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a connection's opening failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// Nothing arrived in time.
    #[error("no hello within {0:?}")]
    Timeout(Duration),
    /// The peer closed before saying hello.
    #[error("connection closed before hello")]
    Closed,
    /// The first frame was not a valid hello.
    #[error("bad hello: {0}")]
    Codec(#[from] CodecError),
}

/// Reads the first frame as a [`Hello`], within `timeout`.
pub async fn read_hello<R: AsyncRead + Unpin>(
    reader: &mut FrameReader<R>,
    timeout: Duration,
) -> Result<Hello, HandshakeError> {
    match tokio::time::timeout(timeout, codec::read_message::<Hello, _>(reader)).await {
        Err(_) => Err(HandshakeError::Timeout(timeout)),
        Ok(Ok(None)) => Err(HandshakeError::Closed),
        Ok(Ok(Some(hello))) => Ok(hello),
        Ok(Err(e)) => Err(e.into()),
    }
}

/// Compares two secrets in time independent of where they differ, so a
/// local attacker cannot learn a child's secret byte by byte.
pub fn secrets_match(a: &[u8; SECRET_LEN], b: &[u8; SECRET_LEN]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare() {
        assert!(secrets_match(&[1; 32], &[1; 32]));
        let mut other = [1; 32];
        other[31] = 2;
        assert!(!secrets_match(&[1; 32], &other));
    }

    #[tokio::test(start_paused = true)]
    async fn silent_peer_times_out() {
        let (_keep, server) = tokio::io::duplex(64);
        let mut reader = codec::frame_reader(server, 1024);
        let err = read_hello(&mut reader, HELLO_TIMEOUT).await.unwrap_err();
        assert!(matches!(err, HandshakeError::Timeout(_)));
    }
}
