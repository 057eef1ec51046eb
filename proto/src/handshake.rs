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

/// Compares a client token with the configured one in time independent of
/// where they differ (only the length can be told apart).
pub fn tokens_match(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len()
        && given
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Environment variable holding the client token itself.
pub const TOKEN_ENV: &str = "TASKMASTER_TOKEN";
/// Environment variable naming a file that holds the client token.
pub const TOKEN_FILE_ENV: &str = "TASKMASTER_TOKEN_FILE";

/// A client token from a file: its first line, without the line end.
/// Empty or unreadable files are errors, so a typo never means "no token".
pub fn read_token_file(path: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let token = text.lines().next().unwrap_or("").trim_end_matches('\r');
    if token.is_empty() {
        return Err(format!("{}: the token file is empty", path.display()));
    }
    Ok(token.to_owned())
}

/// The client token the environment gives: the file `TASKMASTER_TOKEN_FILE`
/// names, else `TASKMASTER_TOKEN` (the master's order too: a file before
/// the variable).
pub fn token_from_env() -> Result<Option<String>, String> {
    if let Some(path) = std::env::var_os(TOKEN_FILE_ENV).filter(|p| !p.is_empty()) {
        return read_token_file(std::path::Path::new(&path)).map(Some);
    }
    Ok(std::env::var(TOKEN_ENV).ok().filter(|t| !t.is_empty()))
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

    #[test]
    fn tokens_compare() {
        assert!(tokens_match(b"abc", b"abc"));
        assert!(!tokens_match(b"abd", b"abc"));
        assert!(!tokens_match(b"ab", b"abc"));
        assert!(!tokens_match(b"", b"abc"));
    }

    #[tokio::test(start_paused = true)]
    async fn silent_peer_times_out() {
        let (_keep, server) = tokio::io::duplex(64);
        let mut reader = codec::frame_reader(server, 1024);
        let err = read_hello(&mut reader, HELLO_TIMEOUT).await.unwrap_err();
        assert!(matches!(err, HandshakeError::Timeout(_)));
    }
}
