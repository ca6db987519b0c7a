//! The daemon's use of glibc's allocator. cvmd lives as long as its
//! workspace: what it holds once the workspace runs is held on every node
//! for every workspace, so what a start allocated and freed goes back to
//! the kernel.

/// glibc's allocator, tuned for a long-lived daemon with many threads.
///
/// - Allocations of 8 MiB and more always come from their own mappings.
///   glibc otherwise raises its mmap threshold to the size of each large
///   block freed, and later large blocks then come from the heap, where
///   `calloc` must zero them page by page. Each lazy layer's FUSE session
///   (fuser) allocates a zeroed 16 MiB request buffer it barely touches:
///   from the heap that made a 6-layer lazy start peak at 127-148 MiB of
///   RSS. Below 8 MiB nothing changes: the pull's buffers (at most a 4 MiB
///   chunk) are what the dynamic threshold left on the heap before.
/// - One arena. glibc gives threads arenas of their own (up to 8 per
///   core), and memory freed in one is kept there: with a FUSE session
///   per layer, read workers, the runtime and the blocking pool, the same
///   6-layer lazy start peaked anywhere from 65 to 97 MiB, with one arena
///   at 55-58 MiB. A cold pull and unpack of that image took the same time
///   either way (A/B medians 0.97-1.11 of wall time, user time 0.96-1.01):
///   each thread's small blocks come from its own tcache without locking.
/// - Freed memory at the heap's top is given back to the kernel only past
///   16 MiB. Setting the mmap threshold also fixes the trim threshold at
///   glibc's 128 KiB, and a pull's network chunks (up to ~400 KiB each,
///   allocated and freed all along) then had their pages returned and
///   faulted in again, zeroed, for every chunk: 4-6% of an HTTPS pull's
///   CPU in `clear_page` and page faults, gone with the higher threshold
///   (perf). What a pull freed below that stays resident until
///   [`give_back_freed`].
pub fn tune_allocator() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets allocator parameters (under the arena's
    // lock); main calls this first, so that every allocation sees them.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 8 << 20);
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 16 << 20);
    }
}

/// Returns the heap's free pages to the kernel, wherever they lie. glibc
/// gives back only a free top past the trim threshold (16 MiB, above), so
/// the buffers of a pull that ended stayed resident for the workspace's
/// whole life: after a start of the 5-layer bench image, 19 MiB of
/// anonymous memory of which 2.5 MiB was in use. Called once a start's
/// pull is done (and again when a lazy start's download is), after the
/// workspace is ready: the walk holds the allocator's lock for a few
/// milliseconds (after that start: 47 `madvise` calls, 3.3 ms under
/// strace).
pub fn give_back_freed() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free memory; it takes the arena's
    // lock like any malloc call.
    unsafe {
        libc::malloc_trim(0);
    }
}
