//! A user namespace fd carrying the workspace's ID mapping, for
//! `mount_setattr(MOUNT_ATTR_IDMAP)`.
//!
//! A multi-threaded process cannot unshare(CLONE_NEWUSER) itself (EINVAL),
//! so a child is cloned straight into a new user namespace; the parent
//! writes its maps, opens `/proc/PID/ns/user` and lets it exit. The fd keeps
//! the namespace alive after the child is gone.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};

use super::IdMap;

/// The maps as written to `/proc/PID/{uid,gid}_map`: container 0 -> host.
pub fn map_lines(map: &IdMap) -> (String, String) {
    (
        format!("0 {} {}\n", map.host_uid, map.size),
        format!("0 {} {}\n", map.host_gid, map.size),
    )
}

/// Creates the namespace and returns an fd to it.
pub fn userns_fd(map: &IdMap) -> io::Result<OwnedFd> {
    let (r, w) = io::pipe()?;
    // SAFETY: a raw clone without CLONE_VM and without a new stack behaves as
    // fork(2): the child gets a copy of this address space and only runs the
    // async-signal-safe calls below (close, read, _exit) before exiting. Exit
    // signal 0 makes it a "clone child": a PID 1 reaper's waitpid(-1) without
    // __WALL does not see it, so only our waitpid(__WCLONE) below reaps it.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            libc::CLONE_NEWUSER as libc::c_ulong,
            0,
            0,
            0,
            0,
        )
    };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // Child: wait until the parent closes the write end, then leave.
        // SAFETY: raw fds owned by this (forked) child; _exit does not run
        // the parent's atexit handlers or destructors.
        unsafe {
            libc::close(w.as_raw_fd());
            let mut b = 0u8;
            libc::read(r.as_raw_fd(), (&mut b as *mut u8).cast(), 1);
            libc::_exit(0);
        }
    }
    // syscall(2) returns a long; clone's is a pid, which fits pid_t.
    #[allow(clippy::cast_possible_truncation)]
    let pid = pid as libc::pid_t;
    drop(r);
    let result = write_maps_and_open(pid, map);
    drop(w);
    let mut status = 0;
    // SAFETY: waits for our own clone child; `status` outlives the call.
    unsafe { libc::waitpid(pid, &mut status, libc::__WCLONE) };
    result
}

fn write_maps_and_open(pid: libc::pid_t, map: &IdMap) -> io::Result<OwnedFd> {
    let (uid, gid) = map_lines(map);
    // The parent is root in the parent namespace (CAP_SETUID/CAP_SETGID),
    // so setgroups need not be denied before writing gid_map
    // (user_namespaces(7), "Writing deny to /proc/PID/setgroups").
    File::options()
        .write(true)
        .open(format!("/proc/{pid}/uid_map"))?
        .write_all(uid.as_bytes())?;
    File::options()
        .write(true)
        .open(format!("/proc/{pid}/gid_map"))?
        .write_all(gid.as_bytes())?;
    Ok(File::open(format!("/proc/{pid}/ns/user"))?.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_start_at_container_zero() {
        let (u, g) = map_lines(&IdMap {
            host_uid: 100000,
            host_gid: 200000,
            size: 65536,
        });
        assert_eq!(u, "0 100000 65536\n");
        assert_eq!(g, "0 200000 65536\n");
    }
}
