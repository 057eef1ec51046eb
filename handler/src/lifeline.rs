//! Dying with the master, three ways, because each alone has a gap:
//! the death signal (fires when the *thread* that forked us exits, and is
//! lost if the master died before prctl), the parent-pid check (closes that
//! race), and a watcher thread that exits when the master's end of the socket
//! hangs up (covers everything else, even mid-job while a module blocks).

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;
use nix::unistd::getppid;
use std::io::Write;
use std::net::TcpStream;
use std::os::fd::AsFd;

/// Asks the kernel to SIGKILL us when the master goes, then checks it is
/// still our parent.
pub(crate) fn die_with_parent(master_pid: i32) -> Result<(), ()> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(|_| ())?;
    if getppid().as_raw() != master_pid {
        return Err(());
    }
    Ok(())
}

/// Starts a thread that exits the process when the master's side of the
/// socket closes. It polls for hang-up only (not readable data), so it
/// sleeps in the kernel and costs nothing per job.
pub(crate) fn exit_on_hangup(stream: TcpStream, heartbeat: Option<Heartbeat>) {
    let timeout = heartbeat.as_ref().map_or(PollTimeout::NONE, |h| {
        PollTimeout::try_from(h.every).unwrap_or(PollTimeout::MAX)
    });
    std::thread::Builder::new()
        .name("lifeline".into())
        .spawn(move || loop {
            let mut fds = [PollFd::new(stream.as_fd(), rdhup())];
            match poll(&mut fds, timeout) {
                Ok(0) => {
                    // Quiet for a beat: say we are alive. This thread runs
                    // while a module blocks the main one, so only a stopped
                    // or frozen process goes silent.
                    if let Some(h) = &heartbeat {
                        let _guard = h.write_lock.lock().unwrap_or_else(|p| p.into_inner());
                        if (&stream).write_all(&h.frame).is_err() {
                            std::process::exit(0);
                        }
                    }
                }
                Ok(_) => {
                    let hung_up = fds[0].revents().is_some_and(|r| {
                        r.intersects(rdhup() | PollFlags::POLLHUP | PollFlags::POLLERR)
                    });
                    if hung_up {
                        std::process::exit(0);
                    }
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(_) => std::process::exit(1),
            }
        })
        .expect("spawn lifeline thread");
}

/// What the lifeline thread needs to send heartbeats.
pub(crate) struct Heartbeat {
    /// How often.
    pub every: std::time::Duration,
    /// The encoded heartbeat frame.
    pub frame: Vec<u8>,
    /// Held for every write to the master, so a heartbeat never lands in
    /// the middle of another frame.
    pub write_lock: std::sync::Arc<std::sync::Mutex<()>>,
}

/// POLLRDHUP (peer closed its writing side); nix has no named flag for it.
fn rdhup() -> PollFlags {
    PollFlags::from_bits_retain(nix::libc::POLLRDHUP)
}
