//! The master's side of the answer journal (`taskmaster_proto::journal`):
//! one anonymous shared-memory file per child it spawns, inherited by the
//! child, and read back once the child's process is gone, so answers it
//! held back to share one write are not lost with it.

use std::fs::File;
use std::os::unix::fs::FileExt;
use taskmaster_proto::journal;
use taskmaster_proto::messages::FromHandler;
use tokio::process::Command;
use tracing::{debug, warn};

/// A fresh answer journal: an anonymous shared-memory file of
/// `JOURNAL_SIZE` zero bytes (close-on-exec here; kept open in the child by
/// [`keep_open_across_exec`]). `None` if the system will not make one (out
/// of descriptors, say): the child then writes each answer before its next
/// job, as without prefetch.
pub fn create() -> Option<File> {
    use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
    let made = memfd_create(c"taskmaster-journal", MemFdCreateFlag::MFD_CLOEXEC)
        .map(File::from)
        .map_err(std::io::Error::from)
        .and_then(|f| f.set_len(journal::JOURNAL_SIZE as u64).map(|()| f));
    match made {
        Ok(f) => Some(f),
        Err(e) => {
            warn!(error = %e, "no answer journal for a child");
            None
        }
    }
}

/// Lets the child inherit `fd` and tells it the number (`TASKMASTER_JOURNAL_FD`).
#[allow(unsafe_code)]
pub fn keep_open_across_exec(cmd: &mut Command, fd: std::os::fd::RawFd) {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    cmd.env(journal::JOURNAL_ENV, fd.to_string());
    // SAFETY: between fork and exec the closure makes one
    // async-signal-safe call (fcntl) on its own copy of `fd`; the flag is
    // the child's descriptor table's, so the master's copy stays
    // close-on-exec and no other child inherits it.
    unsafe {
        cmd.pre_exec(move || {
            fcntl(fd, FcntlArg::F_SETFD(FdFlag::empty()))
                .map(drop)
                .map_err(std::io::Error::from)
        });
    }
}

/// The answers the dead child `pid` left in its journal `file` whose jobs
/// `waiting` says are still waiting for one (it is asked once per answer).
pub fn answers_left(
    pid: u32,
    file: &File,
    max_payload: usize,
    mut waiting: impl FnMut(u64) -> bool,
) -> Vec<FromHandler> {
    let mut out = Vec::new();
    let mut bytes = vec![0u8; journal::DATA_AT];
    if file.read_exact_at(&mut bytes, 0).is_err() || bytes[..4] != journal::MAGIC {
        return out;
    }
    let len = u32::from_le_bytes(
        bytes[journal::LENGTH_AT..journal::LENGTH_AT + 4]
            .try_into()
            .expect("4 bytes"),
    );
    if len == 0 {
        return out;
    }
    bytes.resize(journal::DATA_AT + (len as usize).min(journal::DATA_SIZE), 0);
    let answers = file
        .read_exact_at(&mut bytes[journal::DATA_AT..], journal::DATA_AT as u64)
        .map_err(|e| e.to_string())
        .and_then(|()| journal::answers(&bytes, max_payload).map_err(|e| e.to_string()));
    match answers {
        Ok(answers) => {
            for msg in answers {
                let (FromHandler::Done { job, .. } | FromHandler::Failed { job, .. }) = &msg else {
                    continue;
                };
                if waiting(*job) {
                    debug!(pid, job, "answer taken from the journal of a dead child");
                    out.push(msg);
                }
            }
        }
        Err(e) => warn!(pid, error = %e, "unreadable answer journal of a dead child"),
    }
    out
}
