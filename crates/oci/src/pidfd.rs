//! Signalling a process through a pidfd opened while it is known to be
//! ours (alive, or a zombie the reaper has not collected), so a late signal
//! never reaches a process that took the pid over once it was reaped.
//! libc's raw syscalls, because nix 0.29 has no pidfd calls.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;

/// Signals one process by its pidfd. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Signaller {
    pid: i32,
    pidfd: Arc<OwnedFd>,
}

impl Signaller {
    /// A pidfd for `pid`; call it before the pid can be reaped.
    pub fn open(pid: i32) -> std::io::Result<Signaller> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1;
        // no memory is passed.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // syscall(2) returns a long; a descriptor is a c_int.
        let fd = libc::c_int::try_from(fd)
            .map_err(|_| std::io::Error::other("pidfd_open returned no descriptor"))?;
        // SAFETY: the syscall returned a fresh descriptor that nothing else owns.
        let pidfd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Signaller {
            pid,
            pidfd: Arc::new(pidfd),
        })
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Sends `signal`; ESRCH (it has exited) counts as done.
    pub fn signal(&self, signal: i32) -> std::io::Result<()> {
        // SAFETY: pidfd_send_signal with a valid pidfd, a signal number, no
        // siginfo (NULL, as kill(2) would fill it) and no flags.
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ESRCH) {
                return Err(e);
            }
        }
        Ok(())
    }
}
