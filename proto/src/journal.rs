//! The answer journal: a small shared-memory file the master gives each
//! child it spawns, where the child keeps a copy of the answers it has not
//! written to its socket yet.
//!
//! Why: a child with several jobs in hand (prefetch) could write all their
//! answers in one syscall at the end, but an answer still in its buffer dies
//! with the process if the next job crashes it. The journal survives the
//! process (the master holds the file too), so the child may hold answers
//! back while it runs more short jobs, and the master reads what was held
//! once the process is gone.
//!
//! The file is a memfd the child inherits, its descriptor number in the
//! environment variable [`JOURNAL_ENV`]. A handler that ignores it (the
//! Python SDK's) simply writes each answer before its next job starts.
//!
//! ```text
//! offset 0   magic  b"TMJ1"            (written by the child when it maps it)
//! offset 4   length u32 little-endian  (bytes of frames in the data area;
//!                                       stored after the bytes it covers)
//! offset 8   reserved, zero            (8 bytes)
//! offset 16  data: frames exactly as on the socket (u32 BE length, body)
//! ```
//!
//! Only `Done` and `Failed` frames belong there. The master trusts the
//! journal no more than the socket: it is read only after the process has
//! exited, and an answer counts only for a job the master gave that child
//! and has not yet had answered.

use crate::codec::{self, CodecError, LENGTH_BYTES};
use crate::messages::FromHandler;
use bytes::BytesMut;

/// The environment variable naming the journal's file descriptor.
pub const JOURNAL_ENV: &str = "TASKMASTER_JOURNAL_FD";
/// Size of the journal file: header and data.
pub const JOURNAL_SIZE: usize = 64 * 1024;
/// What a child writes first, so an untouched (all-zero) file reads empty.
pub const MAGIC: [u8; 4] = *b"TMJ1";
/// Offset of the little-endian `u32` length of the data.
pub const LENGTH_AT: usize = 4;
/// Offset of the first frame.
pub const DATA_AT: usize = 16;
/// Bytes of frames the data area holds.
pub const DATA_SIZE: usize = JOURNAL_SIZE - DATA_AT;

/// Why a journal's content was not read.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The length field is beyond the data area.
    #[error("journal length {0} exceeds the data area of {DATA_SIZE} bytes")]
    Length(u32),
    /// A frame in it does not decode, or is not an answer.
    #[error("journal frame: {0}")]
    Frame(#[from] CodecError),
}

/// The answers in a journal's bytes (the whole file, or at least its header
/// and the data its length covers): none if the child never wrote the magic.
pub fn answers(file: &[u8], max_payload: usize) -> Result<Vec<FromHandler>, JournalError> {
    if file.len() < DATA_AT || file[..4] != MAGIC {
        return Ok(Vec::new());
    }
    let len = u32::from_le_bytes(file[LENGTH_AT..LENGTH_AT + 4].try_into().expect("4 bytes"));
    let end = DATA_AT
        .checked_add(len as usize)
        .filter(|&end| end <= JOURNAL_SIZE && end <= file.len())
        .ok_or(JournalError::Length(len))?;
    let mut data = &file[DATA_AT..end];
    let mut out = Vec::new();
    while !data.is_empty() {
        if data.len() < LENGTH_BYTES {
            return Err(CodecError::Truncated.into());
        }
        let n = u32::from_be_bytes(data[..LENGTH_BYTES].try_into().expect("4 bytes")) as usize;
        let max = codec::max_frame_len(max_payload);
        if n > max {
            return Err(CodecError::FrameTooLarge { len: n, max }.into());
        }
        let body = data
            .get(LENGTH_BYTES..LENGTH_BYTES + n)
            .ok_or(CodecError::Truncated)?;
        let msg: FromHandler = codec::decode(BytesMut::from(body))?;
        match &msg {
            FromHandler::Done { output, .. } if output.len() > max_payload => {
                return Err(CodecError::OverLimit { max: max_payload }.into())
            }
            FromHandler::Done { .. } | FromHandler::Failed { .. } => {}
            _ => return Err(CodecError::Malformed("a journal holds only answers".into()).into()),
        }
        out.push(msg);
        data = &data[LENGTH_BYTES + n..];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Reason;

    fn file_with(frames: &[FromHandler]) -> Vec<u8> {
        let mut data = BytesMut::new();
        for f in frames {
            codec::encode(f, &mut data).unwrap();
        }
        let mut file = vec![0u8; JOURNAL_SIZE];
        file[..4].copy_from_slice(&MAGIC);
        file[LENGTH_AT..LENGTH_AT + 4].copy_from_slice(&(data.len() as u32).to_le_bytes());
        file[DATA_AT..DATA_AT + data.len()].copy_from_slice(&data);
        file
    }

    #[test]
    fn reads_answers_back() {
        let frames = [
            FromHandler::Done {
                job: 7,
                retire: false,
                output: bytes::Bytes::from_static(b"out"),
            },
            FromHandler::Failed {
                job: 8,
                reason: Reason::Failed,
                message: "no".into(),
                retire: false,
            },
        ];
        let got = answers(&file_with(&frames), 1024).unwrap();
        assert_eq!(got.len(), 2);
        assert!(
            matches!(&got[0], FromHandler::Done { job: 7, output, .. } if &output[..] == b"out")
        );
        assert!(matches!(&got[1], FromHandler::Failed { job: 8, .. }));
    }

    #[test]
    fn untouched_or_empty_reads_nothing() {
        assert!(answers(&vec![0u8; JOURNAL_SIZE], 1024).unwrap().is_empty());
        assert!(answers(&file_with(&[]), 1024).unwrap().is_empty());
        assert!(answers(b"TM", 1024).unwrap().is_empty());
    }

    #[test]
    fn refuses_what_a_child_should_not_write() {
        let mut file = file_with(&[]);
        file[LENGTH_AT..LENGTH_AT + 4].copy_from_slice(&(DATA_SIZE as u32 + 1).to_le_bytes());
        assert!(matches!(answers(&file, 1024), Err(JournalError::Length(_))));
        let file = file_with(&[FromHandler::Heartbeat]);
        assert!(answers(&file, 1024).is_err());
        let mut file = file_with(&[FromHandler::Done {
            job: 1,
            retire: false,
            output: bytes::Bytes::from_static(b"abc"),
        }]);
        // Cut the last frame short.
        let len = u32::from_le_bytes(file[4..8].try_into().unwrap()) - 1;
        file[LENGTH_AT..LENGTH_AT + 4].copy_from_slice(&len.to_le_bytes());
        assert!(answers(&file, 1024).is_err());
        let big = file_with(&[FromHandler::Done {
            job: 1,
            retire: false,
            output: bytes::Bytes::from(vec![0u8; 2000]),
        }]);
        assert!(answers(&big, 100).is_err());
    }
}
