//! The master's side of the answer journal (`taskmaster_proto::journal`):
//! one anonymous shared-memory file per child it spawns, inherited by the
//! child, and read back once the child's process is gone, so answers it
//! held back to share one write are not lost with it.

use std::collections::VecDeque;
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

/// The rule for [`answers_left`], as on the socket: an answer counts only
/// for the oldest job still waiting (`waiting`: job ids, oldest first,
/// with whatever the caller keeps beside them), which it then removes. An
/// answer for a job already answered or never given is skipped; one for a
/// job behind the oldest (which the child cannot have run yet) is not
/// believed.
pub fn oldest_first<T>(waiting: &mut VecDeque<(u64, T)>) -> impl FnMut(u64) -> bool + '_ {
    |job| {
        let oldest = waiting.front().is_some_and(|(front, _)| *front == job);
        if oldest {
            waiting.pop_front();
        }
        oldest
    }
}

/// The answers the dead child `pid` left in its journal `file` that
/// `waiting` takes (it is asked once per answer, in the journal's order,
/// and says whether that answer's job still waits for it).
pub fn answers_left(
    pid: u32,
    file: &File,
    max_payload: usize,
    mut waiting: impl FnMut(u64) -> bool,
) -> Vec<FromHandler> {
    let mut out = Vec::new();
    // Read only once a child is gone: the whole file, parsed (magic,
    // length, frames) by the one reader the layout has.
    let mut bytes = vec![0u8; journal::JOURNAL_SIZE];
    let answers = file
        .read_exact_at(&mut bytes, 0)
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

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{Bytes, BytesMut};
    use taskmaster_proto::codec;

    fn done(job: u64) -> FromHandler {
        FromHandler::Done {
            job,
            retire: false,
            output: Bytes::from(job.to_string()),
        }
    }

    /// A journal file as a child leaves it: magic, length, frames.
    fn written(frames: &[FromHandler], len_override: Option<u32>) -> File {
        let file = create().expect("a memfd");
        let mut data = BytesMut::new();
        for f in frames {
            codec::encode(f, &mut data).unwrap();
        }
        let len = len_override.unwrap_or(data.len() as u32);
        file.write_all_at(&journal::MAGIC, 0).unwrap();
        file.write_all_at(&len.to_le_bytes(), journal::LENGTH_AT as u64)
            .unwrap();
        file.write_all_at(&data, journal::DATA_AT as u64).unwrap();
        file
    }

    #[test]
    fn answers_are_taken_once_and_in_order() {
        // 3 was answered on the socket too; 4 is the oldest waiting; 6 is
        // behind 5, which has no answer: not believed.
        let file = written(&[done(3), done(4), done(6)], None);
        let mut waiting = VecDeque::from([(4, ()), (5, ()), (6, ())]);
        let got = answers_left(1, &file, 1024, oldest_first(&mut waiting));
        let jobs: Vec<u64> = got
            .iter()
            .map(|m| match m {
                FromHandler::Done { job, .. } => *job,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(jobs, [4]);
        assert_eq!(waiting, [(5, ()), (6, ())]);
    }

    #[test]
    fn an_untouched_or_broken_journal_gives_nothing() {
        let mut waiting = VecDeque::from([(1, ())]);
        let untouched = create().expect("a memfd");
        assert!(answers_left(1, &untouched, 1024, oldest_first(&mut waiting)).is_empty());
        let too_long = written(&[done(1)], Some(journal::DATA_SIZE as u32 + 1));
        assert!(answers_left(1, &too_long, 1024, oldest_first(&mut waiting)).is_empty());
        let cut = written(&[done(1)], Some(3));
        assert!(answers_left(1, &cut, 1024, oldest_first(&mut waiting)).is_empty());
        assert_eq!(waiting, [(1, ())]);
    }
}
