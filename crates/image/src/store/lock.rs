//! Node-wide locks between cvmd processes: open file description (OFD)
//! locks on a small file per object, polled so waiting never blocks the
//! async runtime.
//!
//! OFD locks rather than `flock`: they belong to the open file as `flock`
//! locks do (so two cvmd that are both PID 1 of their own pod never mistake
//! each other for themselves), but the kernel also answers "who holds it?"
//! (`F_OFD_GETLK`) without taking the lock. Asking by taking it, as `flock`
//! forces, made a concurrent acquire fail for the instant gc held a lock it
//! only meant to look at. std and rustix offer only `flock`, hence nix's
//! `fcntl` here.

use std::fs::File;
use std::path::Path;
use std::time::Duration;

use nix::fcntl::{fcntl, FcntlArg};

use super::{io_err, StoreError};

const POLL: Duration = Duration::from_millis(50);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Shared,
    Exclusive,
}

// flock's l_type and l_whence are shorts that hold these small c_int
// constants (fcntl(2)).
#[allow(clippy::cast_possible_truncation)]
fn whole_file(kind: libc::c_int) -> libc::flock {
    // SAFETY: flock is a plain C struct; all-zero is a valid value (and
    // l_pid must be 0 for OFD locks).
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = kind as libc::c_short;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    // l_start 0, l_len 0: the whole file, however long it grows.
    lock
}

/// Tries once to lock `file`; `Ok(false)` when another open file holds a
/// conflicting lock.
pub fn try_lock(file: &File, mode: Mode) -> std::io::Result<bool> {
    let kind = match mode {
        Mode::Shared => libc::F_RDLCK,
        Mode::Exclusive => libc::F_WRLCK,
    };
    match fcntl(file, FcntlArg::F_OFD_SETLK(&whole_file(kind))) {
        Ok(_) => Ok(true),
        Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EACCES) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Opens (creating) a lock file. Lock files are never deleted while they
/// guard anything: unlinking one while another process waits on it would
/// let two holders in.
pub fn open(path: &Path) -> Result<File, StoreError> {
    File::options()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .map_err(io_err(path))
}

/// Takes the lock on `path` (created if missing) in `mode`, calling
/// `on_wait` once if another process holds it. The lock lasts as long as
/// the returned file is open.
pub async fn lock_file_as(
    path: &Path,
    mode: Mode,
    on_wait: impl FnOnce(),
) -> Result<File, StoreError> {
    let file = open(path)?;
    let mut on_wait = Some(on_wait);
    loop {
        if try_lock(&file, mode).map_err(io_err(path))? {
            return Ok(file);
        }
        if let Some(f) = on_wait.take() {
            f();
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Takes the exclusive lock on `path`; see [`lock_file_as`].
pub async fn lock_file(path: &Path, on_wait: impl FnOnce()) -> Result<File, StoreError> {
    lock_file_as(path, Mode::Exclusive, on_wait).await
}

/// True when some open file holds a lock on `path` right now. Only asks:
/// never takes the lock, so it cannot get in a holder's way.
pub fn is_held(path: &Path) -> bool {
    let Ok(file) = File::open(path) else {
        return false;
    };
    is_held_file(&file)
}

/// [`is_held`] for an open file. An error asking counts as held: callers
/// use it to decide what they may delete.
pub fn is_held_file(file: &File) -> bool {
    let mut probe = whole_file(libc::F_WRLCK);
    match fcntl(file, FcntlArg::F_OFD_GETLK(&mut probe)) {
        Ok(_) => libc::c_int::from(probe.l_type) != libc::F_UNLCK,
        Err(_) => true,
    }
}

/// True when `file` is still the file at `path` (same inode): a lock taken
/// on a file another process unlinked in the meantime guards nothing.
pub fn still_at(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asking_never_takes_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.lock");
        let holder = open(&path).unwrap();
        assert!(!is_held(&path));
        assert!(try_lock(&holder, Mode::Exclusive).unwrap());
        assert!(is_held(&path));
        // Another open file of this same process conflicts, as another
        // process would (unlike POSIX record locks).
        let other = open(&path).unwrap();
        assert!(!try_lock(&other, Mode::Exclusive).unwrap());
        assert!(!try_lock(&other, Mode::Shared).unwrap());
        drop(holder);
        assert!(!is_held(&path));
        // Many shared holders at once; an exclusive one waits for them.
        let a = open(&path).unwrap();
        let b = open(&path).unwrap();
        assert!(try_lock(&a, Mode::Shared).unwrap() && try_lock(&b, Mode::Shared).unwrap());
        assert!(!try_lock(&other, Mode::Exclusive).unwrap());
        assert!(is_held(&path));
    }

    #[test]
    fn a_file_unlinked_under_a_lock_is_noticed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.lease");
        let file = open(&path).unwrap();
        assert!(still_at(&file, &path));
        std::fs::remove_file(&path).unwrap();
        assert!(!still_at(&file, &path));
        let _recreated = open(&path).unwrap();
        assert!(!still_at(&file, &path));
    }
}
