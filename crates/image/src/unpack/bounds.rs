//! What one image may write to the cache's file system: a per-image
//! unpacked-size meter shared by the layers of one pull, and a free-space
//! reserve checked before each file and every [`RECHECK_EVERY`] bytes.
//!
//! The cache is a hostPath shared with other workspaces, sysbox and the
//! kubelet: a small layer that expands to tens of GiB (a gzip or sparse
//! bomb) must be refused by a bound, not by the disk filling up. Sizes are
//! the files' declared (apparent) sizes, so a sparse file is judged by the
//! size it claims even though its holes take no blocks.

use std::fmt;
use std::io;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};

/// Free space is looked up again after this many bytes written (other
/// layers and pods write to the same file system meanwhile); statvfs per
/// write would cost more than the write.
pub(super) const RECHECK_EVERY: u64 = 8 << 20;

/// Unpacked bytes of one image, counted over all its layers: those in the
/// cache already by their recorded size, the others as they unpack (in
/// parallel, hence the atomic).
#[derive(Debug)]
pub struct ImageMeter {
    used: AtomicU64,
    limit: u64,
}

impl ImageMeter {
    /// `limit` 0: no bound.
    pub fn new(limit: u64) -> Self {
        Self {
            used: AtomicU64::new(0),
            limit: if limit == 0 { u64::MAX } else { limit },
        }
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Adds `n` bytes, or refuses (and adds nothing) when the image would
    /// go past its limit.
    pub(super) fn charge(&self, n: u64) -> bool {
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(n).filter(|&total| total <= self.limit)
            })
            .is_ok()
    }

    /// Counts a layer already in the cache (unpacked earlier, by this image
    /// or another): it is part of the image, so later layers must fit
    /// beside it. Never refused: it is on disk already.
    pub fn add_cached(&self, n: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                Some(used.saturating_add(n))
            });
    }

    /// Gives back what a failed layer attempt charged.
    pub(super) fn release(&self, n: u64) {
        self.used.fetch_sub(n, Ordering::Relaxed);
    }
}

/// `123`, `10MiB`, `64GiB` (binary units; `K`/`M`/`G`/`T` too).
pub fn parse_size(v: &str) -> Result<u64, String> {
    let v = v.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let shift = match unit.trim() {
        "" | "B" => 0,
        "K" | "KiB" => 10,
        "M" | "MiB" => 20,
        "G" | "GiB" => 30,
        "T" | "TiB" => 40,
        _ => return Err(format!("{v:?} is not a size like 1048576, 512MiB or 64GiB")),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .ok_or_else(|| format!("{v:?} is not a size like 1048576, 512MiB or 64GiB"))
}

/// Space kept free on the cache's file system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reserve {
    Bytes(u64),
    /// Percent of the file system's size.
    Percent(u8),
}

impl Reserve {
    /// `15%`, `0`, or a size as [`parse_size`] reads it.
    pub fn parse(v: &str) -> Result<Reserve, String> {
        let v = v.trim();
        if let Some(p) = v.strip_suffix('%') {
            return match p.trim().parse::<u8>() {
                Ok(p) if p < 100 => Ok(Reserve::Percent(p)),
                _ => Err(format!("{v:?} is not a percentage from 0% to 99%")),
            };
        }
        parse_size(v)
            .map(Reserve::Bytes)
            .map_err(|_| format!("{v:?} is neither a percentage like 15% nor a size like 10GiB"))
    }

    /// Bytes to keep free on a file system of `total` bytes.
    pub fn bytes(self, total: u64) -> u64 {
        match self {
            Reserve::Bytes(n) => n,
            // p < 100: the share always fits.
            Reserve::Percent(p) => {
                u64::try_from(u128::from(total) * u128::from(p) / 100).unwrap_or(u64::MAX)
            }
        }
    }
}

impl fmt::Display for Reserve {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reserve::Bytes(n) => write!(f, "{n} bytes"),
            Reserve::Percent(p) => write!(f, "{p}% of the file system"),
        }
    }
}

/// Free and total bytes of a file system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Space {
    pub avail: u64,
    pub total: u64,
}

impl Space {
    pub(super) fn of(fd: impl AsFd) -> io::Result<Space> {
        let st = rustix::fs::fstatvfs(fd)?;
        Ok(Space {
            avail: st.f_bavail.saturating_mul(st.f_frsize),
            total: st.f_blocks.saturating_mul(st.f_frsize),
        })
    }
}

/// Why writing more would break the reserve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Short {
    pub need: u64,
    pub avail: u64,
    pub keep: u64,
}

/// The reserve, as a pure decision over what statvfs said: `need` more
/// bytes fit when `avail - need` stays at or above the reserve.
pub(super) fn fits(space: Space, reserve: Reserve, need: u64) -> Result<(), Short> {
    let keep = reserve.bytes(space.total);
    if space.avail >= keep.saturating_add(need) {
        Ok(())
    } else {
        Err(Short {
            need,
            avail: space.avail,
            keep,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_image_meter_refuses_past_its_limit_and_takes_back_releases() {
        let m = ImageMeter::new(100);
        assert!(m.charge(60));
        assert!(!m.charge(41), "160 > 100");
        assert!(m.charge(40));
        assert!(!m.charge(1));
        m.release(40);
        assert!(m.charge(40));
        assert!(!m.charge(u64::MAX), "no overflow");
        assert!(ImageMeter::new(0).charge(u64::MAX / 2));
        let cached = ImageMeter::new(100);
        cached.add_cached(90);
        assert!(!cached.charge(11), "a cached layer counts");
        assert!(cached.charge(10));
    }

    #[test]
    fn reserves_parse_as_percent_or_size() {
        assert_eq!(Reserve::parse("15%"), Ok(Reserve::Percent(15)));
        assert_eq!(Reserve::parse("0"), Ok(Reserve::Bytes(0)));
        assert_eq!(Reserve::parse("2GiB"), Ok(Reserve::Bytes(2 << 30)));
        assert!(Reserve::parse("100%").is_err());
        assert!(Reserve::parse("x%").is_err());
        assert!(Reserve::parse("lots").is_err());
        assert_eq!(Reserve::Percent(10).bytes(1000), 100);
        assert_eq!(
            Reserve::Percent(99).bytes(u64::MAX),
            u64::try_from(u128::from(u64::MAX) * 99 / 100).unwrap()
        );
    }

    #[test]
    fn a_write_fits_only_above_the_reserve() {
        let space = Space {
            avail: 300,
            total: 1000,
        };
        assert_eq!(fits(space, Reserve::Percent(10), 200), Ok(()));
        assert_eq!(
            fits(space, Reserve::Percent(10), 201),
            Err(Short {
                need: 201,
                avail: 300,
                keep: 100
            })
        );
        assert!(
            fits(space, Reserve::Bytes(400), 0).is_err(),
            "already below"
        );
        assert_eq!(fits(space, Reserve::Bytes(0), 300), Ok(()));
    }
}
