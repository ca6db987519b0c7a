//! Writes a pull's data to disk behind it, so that the flushes that make
//! each blob and layer durable before they are published (an fsync per
//! blob, a `syncfs` per layer) find little left to write. Without it every
//! byte waited for those final flushes, after all the CPU work was done:
//! 0.15 s for the 140 MB systemd layer, 0.4-0.8 s for the 950 MB image,
//! on this kind of disk.
//!
//! A thread of its own calls `syncfs` at an interval while the pull runs:
//! the kernel's flusher does the writing, off the pull's threads, and only
//! this thread waits for it.
//!
//! One such thread flushes for the whole node. The pods' pulls share one
//! cache file system, and a flush writes what is dirty whoever wrote it;
//! each `syncfs` also asks the disk to empty its write cache (ext4 and XFS
//! send a flush to the device). Every pod flushing every interval, 30 pods
//! starting together would ask the disk for 300 of those a second. The
//! pull that holds `<cache>/writeback.lock` flushes; the others try for it
//! at each interval and take over when its pull ends.

use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::lock::{self, Mode};

/// Often enough that a layer's last interval is a small part of it, rare
/// enough that the journal commit each flush costs stays out of the way.
const EVERY: Duration = Duration::from_millis(100);

/// Flushes the file system under a dir until dropped.
#[derive(Debug)]
pub struct Writeback {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
    /// Flushes this one made (not those of another pull).
    flushes: Arc<AtomicU64>,
}

impl Writeback {
    /// Starts flushing the file system that holds `dir`. Best effort: a
    /// dir that cannot be opened, or a thread that cannot start, only
    /// leaves all the writing to the final flush.
    pub fn behind(dir: &Path) -> Writeback {
        let flushes = Arc::new(AtomicU64::new(0));
        let idle = Writeback {
            stop: None,
            thread: None,
            flushes: Arc::clone(&flushes),
        };
        let Ok(fs) = File::open(dir) else { return idle };
        // Without a lock file (a read-only cache, say) this pull flushes on
        // its own, as every pull did before.
        let node_lock = lock::open(&dir.join("writeback.lock")).ok();
        let (stop, stopped) = mpsc::channel::<()>();
        let counted = Arc::clone(&flushes);
        let thread = std::thread::Builder::new()
            .name("cvmd-writeback".into())
            .spawn(move || {
                let mut ours = node_lock.is_none();
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(EVERY) {
                    if !ours {
                        // Held until this thread ends and the file closes.
                        ours = node_lock
                            .as_ref()
                            .is_none_or(|f| lock::try_lock(f, Mode::Exclusive).unwrap_or(true));
                        if !ours {
                            continue;
                        }
                    }
                    if let Err(e) = rustix::fs::syncfs(&fs) {
                        tracing::debug!(error = %e, "early writeback stopped; the layer's final flush writes the rest");
                        return;
                    }
                    counted.fetch_add(1, Ordering::Relaxed);
                }
            });
        match thread {
            Ok(thread) => Writeback {
                stop: Some(stop),
                thread: Some(thread),
                flushes,
            },
            Err(_) => idle,
        }
    }

    /// How many flushes this one has made so far.
    pub fn flushes(&self) -> u64 {
        self.flushes.load(Ordering::Relaxed)
    }
}

impl Drop for Writeback {
    fn drop(&mut self) {
        // The sender's drop wakes the thread; a flush under way finishes
        // first, which the final flush would have waited for anyway.
        self.stop.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn flushes_until_dropped_and_stops_promptly() {
        let dir = tempfile::tempdir().unwrap();
        let wb = Writeback::behind(dir.path());
        assert!(wb.thread.is_some(), "a flushing thread runs");
        std::thread::sleep(EVERY * 2);
        let started = Instant::now();
        drop(wb);
        assert!(
            started.elapsed() < EVERY * 10,
            "drop waits at most for one flush"
        );
    }

    /// Two pulls on one node (one cache): one flushes, the other waits
    /// and takes over when the first ends. The lock is an OFD lock, which
    /// two opens conflict on even within one process, as between pods.
    #[test]
    fn one_pull_per_node_flushes_and_another_takes_over_when_it_ends() {
        let dir = tempfile::tempdir().unwrap();
        let first = Writeback::behind(dir.path());
        std::thread::sleep(EVERY * 3);
        assert!(first.flushes() > 0, "the first pull flushes");
        let second = Writeback::behind(dir.path());
        std::thread::sleep(EVERY * 5);
        assert_eq!(second.flushes(), 0, "only one pull flushes at a time");
        drop(first);
        std::thread::sleep(EVERY * 5);
        assert!(second.flushes() > 0, "the second took over");
    }

    #[test]
    fn a_missing_dir_leaves_the_writing_to_the_final_flush() {
        let wb = Writeback::behind(Path::new("/nonexistent/cvmd-writeback"));
        assert!(wb.thread.is_none() && wb.stop.is_none());
    }
}
