//! Node-wide locks between cvmd processes: `flock` on a small file per
//! object. Polled with `try_lock` so waiting never blocks the async runtime.

use std::fs::File;
use std::path::Path;
use std::time::Duration;

use super::{io_err, StoreError};

const POLL: Duration = Duration::from_millis(50);

/// Takes the exclusive lock on `path` (created if missing), calling
/// `on_wait` once if another process holds it. The lock lasts as long as the
/// returned file is open. Lock files are never deleted: unlinking one while
/// another process waits on it would let two holders in.
pub async fn lock_file(path: &Path, on_wait: impl FnOnce()) -> Result<File, StoreError> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(io_err(path))?;
    let mut on_wait = Some(on_wait);
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) => {
                if let Some(f) = on_wait.take() {
                    f();
                }
                tokio::time::sleep(POLL).await;
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io_err(path)(e)),
        }
    }
}

/// True when some process holds the lock on `path` right now.
pub fn is_held(path: &Path) -> bool {
    let Ok(file) = File::options().write(true).open(path) else {
        return false;
    };
    matches!(file.try_lock(), Err(std::fs::TryLockError::WouldBlock))
}
