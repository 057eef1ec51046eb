//! The child's side of the answer journal (`taskmaster_proto::journal`): the
//! shared-memory file the master passed in, mapped once, where answers not
//! yet written to the socket are copied so they outlive a crash.

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};
use taskmaster_proto::journal::{DATA_AT, DATA_SIZE, JOURNAL_ENV, JOURNAL_SIZE, LENGTH_AT, MAGIC};

/// The mapped journal.
pub(crate) struct Journal {
    base: NonNull<u8>,
    /// Bytes of frames in the data area (our copy of the shared length).
    len: usize,
}

// The mapping is ours alone in this process; the master only reads the
// file after we are gone.
#[allow(unsafe_code)]
// SAFETY: the pointer is a private mapping handle with no thread affinity.
unsafe impl Send for Journal {}

impl Journal {
    /// Maps the journal the master named in the environment, if it did,
    /// and takes the variable and the descriptor away from what the
    /// module's own programs inherit. `None` (answers are then written
    /// before each next job) when there is none or it cannot be mapped.
    pub fn from_env() -> Option<Journal> {
        let value = std::env::var(JOURNAL_ENV).ok()?;
        std::env::remove_var(JOURNAL_ENV);
        let fd: i32 = value.parse().ok().filter(|&fd| fd > 2)?;
        match Self::map(fd) {
            Ok(j) => Some(j),
            Err(e) => {
                eprintln!(
                    "taskmaster-handler[{}]: answer journal not used: {e}",
                    std::process::id()
                );
                None
            }
        }
    }

    #[allow(unsafe_code)]
    fn map(fd: i32) -> io::Result<Journal> {
        // SAFETY: fstat, mmap and close on a descriptor number we were
        // given; the mapping is checked for failure and never unmapped (it
        // lives as long as the process), and the file is at least
        // JOURNAL_SIZE bytes, so every access below stays inside it.
        unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            if libc::fstat(fd, &mut st) == -1 {
                let e = io::Error::last_os_error();
                libc::close(fd);
                return Err(e);
            }
            if (st.st_size as u64) < JOURNAL_SIZE as u64 {
                libc::close(fd);
                return Err(io::Error::other(format!("file of {} bytes", st.st_size)));
            }
            let ptr = libc::mmap(
                std::ptr::null_mut(),
                JOURNAL_SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            );
            libc::close(fd);
            if ptr == libc::MAP_FAILED {
                return Err(io::Error::last_os_error());
            }
            let base =
                NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("null map"))?;
            let mut j = Journal { base, len: 0 };
            j.store_len(0);
            std::ptr::copy_nonoverlapping(MAGIC.as_ptr(), base.as_ptr(), MAGIC.len());
            Ok(j)
        }
    }

    #[allow(unsafe_code)]
    fn store_len(&mut self, len: usize) {
        self.len = len;
        // SAFETY: LENGTH_AT is 4-aligned in a page-aligned mapping; only
        // this thread writes it. Release: the frames it covers are written
        // first, should the process die right after.
        unsafe {
            (*self.base.as_ptr().add(LENGTH_AT).cast::<AtomicU32>())
                .store(len as u32, Ordering::Release);
        }
    }

    /// Adds frames after those held; false (nothing added) if they do not
    /// fit.
    #[allow(unsafe_code)]
    pub fn append(&mut self, frames: &[u8]) -> bool {
        if frames.len() > DATA_SIZE - self.len {
            return false;
        }
        // SAFETY: the range DATA_AT + len .. + frames.len() is inside the
        // mapping (checked just above), and no one else writes it.
        unsafe {
            std::ptr::copy_nonoverlapping(
                frames.as_ptr(),
                self.base.as_ptr().add(DATA_AT + self.len),
                frames.len(),
            );
        }
        self.store_len(self.len + frames.len());
        true
    }

    /// Forgets what is held: it has been written to the socket.
    pub fn clear(&mut self) {
        if self.len != 0 {
            self.store_len(0);
        }
    }
}
