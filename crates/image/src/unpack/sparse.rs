//! Old GNU sparse members (type `S`), expanded to their full contents.
//!
//! GNU tar's "old GNU" sparse format: the header holds up to four
//! (offset, length) regions and a flag saying an extension block with 21
//! more follows, repeatedly; the stored data is the regions' bytes back to
//! back; the header's `realsize` is the file's length. The tar crate
//! expands these only outside raw mode, so the map is read here (extension
//! blocks through `shared`) with the crate's checks. Holes are handed to
//! the writer as holes ([`Holey::take_hole`]), which seeks over them: a
//! 60 GiB hole is neither 60 GiB of zeros on disk nor a minute of memset.

use std::collections::VecDeque;
use std::io::{self, Read};

use tar::{GnuExtSparseHeader, GnuSparseHeader, Header};

/// Extension blocks beyond this (21 regions each, 1 MiB in all) are refused.
const MAX_EXT_BLOCKS: usize = 2048;

#[derive(Debug, thiserror::Error)]
pub(super) enum SparseError {
    #[error("sparse type but not a GNU header")]
    NotGnu,
    #[error("unreadable sparse map field: {0}")]
    Field(io::Error),
    #[error("cannot read a sparse map extension block: {0}")]
    Read(io::Error),
    #[error("more than {MAX_EXT_BLOCKS} sparse map extension blocks")]
    TooManyBlocks,
    #[error("sparse regions out of order or overlapping")]
    Unordered,
    #[error(
        "a sparse region after an unaligned one (regions but the last are 512-byte multiples)"
    )]
    Unaligned,
    #[error("sparse regions end at {end}, not at the file's real size {real}")]
    RealSize { end: u64, real: u64 },
    #[error("sparse regions hold {regions} bytes but the member stores {stored}")]
    Stored { regions: u64, stored: u64 },
}

/// A run of the expanded file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Segment {
    Zeros(u64),
    Data(u64),
}

/// Reads the sparse map of `header`, taking extension blocks from `ext`
/// (the stream right after the header), and plans the expansion.
pub(super) fn read_map(header: &Header, ext: &mut dyn Read) -> Result<Vec<Segment>, SparseError> {
    let gnu = header.as_gnu().ok_or(SparseError::NotGnu)?;
    let mut regions = Vec::new();
    collect(&gnu.sparse, &mut regions)?;
    let mut extended = gnu.is_extended();
    let mut blocks = 0;
    while extended {
        blocks += 1;
        if blocks > MAX_EXT_BLOCKS {
            return Err(SparseError::TooManyBlocks);
        }
        let mut block = GnuExtSparseHeader::new();
        ext.read_exact(block.as_mut_bytes())
            .map_err(SparseError::Read)?;
        collect(block.sparse(), &mut regions)?;
        extended = block.is_extended();
    }
    let stored = header.entry_size().map_err(SparseError::Field)?;
    let real = gnu.real_size().map_err(SparseError::Field)?;
    plan(&regions, stored, real)
}

fn collect(slots: &[GnuSparseHeader], out: &mut Vec<(u64, u64)>) -> Result<(), SparseError> {
    for slot in slots.iter().filter(|s| !s.is_empty()) {
        let offset = slot.offset().map_err(SparseError::Field)?;
        let length = slot.length().map_err(SparseError::Field)?;
        out.push((offset, length));
    }
    Ok(())
}

/// Turns (offset, length) regions into zero and data runs, with the tar
/// crate's checks: ordered, non-overlapping, all but the last 512-aligned in
/// the stored data, the data adding up to `stored`, the end at `real`.
pub(super) fn plan(
    regions: &[(u64, u64)],
    stored: u64,
    real: u64,
) -> Result<Vec<Segment>, SparseError> {
    let mut segments = Vec::new();
    let (mut end, mut used) = (0u64, 0u64);
    for &(offset, length) in regions {
        if length != 0 && used % 512 != 0 {
            return Err(SparseError::Unaligned);
        }
        if offset < end {
            return Err(SparseError::Unordered);
        }
        if offset > end {
            segments.push(Segment::Zeros(offset - end));
        }
        segments.push(Segment::Data(length));
        end = offset.checked_add(length).ok_or(SparseError::Unordered)?;
        used = used.checked_add(length).ok_or(SparseError::Unordered)?;
    }
    if end != real {
        return Err(SparseError::RealSize { end, real });
    }
    if used != stored {
        return Err(SparseError::Stored {
            regions: used,
            stored,
        });
    }
    Ok(segments)
}

/// Entry data that may start with a hole: a run of zeros the writer can
/// seek over instead of reading.
pub(super) trait Holey: Read {
    /// Takes the hole at the current position, if any, and returns its
    /// length (0: the next bytes are data, or the end).
    fn take_hole(&mut self) -> u64 {
        0
    }

    /// Bytes of data (not holes) still to come, when known: what the file
    /// will take on disk.
    fn data_left(&self) -> Option<u64> {
        None
    }
}

/// Data without holes.
pub(super) struct Dense<R>(pub R);

impl<R: Read> Read for Dense<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl<R: Read> Holey for Dense<R> {}

/// The full file: holes for holes (zeros when read), the member's stored
/// data for regions.
pub(super) struct Expand<'a> {
    segments: VecDeque<Segment>,
    data: &'a mut dyn Read,
}

impl<'a> Expand<'a> {
    pub(super) fn new(segments: Vec<Segment>, data: &'a mut dyn Read) -> Self {
        Self {
            segments: segments.into(),
            data,
        }
    }

    pub(super) fn len(segments: &[Segment]) -> u64 {
        segments
            .iter()
            .map(|s| match s {
                Segment::Zeros(n) | Segment::Data(n) => *n,
            })
            .fold(0u64, u64::saturating_add)
    }
}

impl Holey for Expand<'_> {
    fn data_left(&self) -> Option<u64> {
        let data = self.segments.iter().map(|s| match s {
            Segment::Data(n) => *n,
            Segment::Zeros(_) => 0,
        });
        Some(data.fold(0u64, u64::saturating_add))
    }

    fn take_hole(&mut self) -> u64 {
        while let Some(front) = self.segments.front() {
            match *front {
                Segment::Data(0) | Segment::Zeros(0) => {
                    self.segments.pop_front();
                }
                Segment::Zeros(n) => {
                    self.segments.pop_front();
                    return n;
                }
                Segment::Data(_) => return 0,
            }
        }
        0
    }
}

impl Read for Expand<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let Some(front) = self.segments.front_mut() else {
                return Ok(0);
            };
            let (left, zeros) = match front {
                Segment::Zeros(n) => (n, true),
                Segment::Data(n) => (n, false),
            };
            if *left == 0 {
                self.segments.pop_front();
                continue;
            }
            let want = buf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
            let n = if zeros {
                buf[..want].fill(0);
                want
            } else {
                match self.data.read(&mut buf[..want])? {
                    0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                    n => n,
                }
            };
            *left -= n as u64;
            return Ok(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holes_become_zeros_and_regions_data() {
        let segments = plan(&[(0, 512), (4096, 3), (8192, 0)], 515, 8192).unwrap();
        assert_eq!(
            segments,
            [
                Segment::Data(512),
                Segment::Zeros(3584),
                Segment::Data(3),
                Segment::Zeros(4093),
                Segment::Data(0),
            ]
        );
        let mut stored: Vec<u8> = vec![b'a'; 512];
        stored.extend(b"xyz");
        let mut src = &stored[..];
        let mut out = Vec::new();
        Expand::new(segments.clone(), &mut src)
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out.len() as u64, Expand::len(&segments));
        assert_eq!(out.len(), 8192);
        assert!(out[..512].iter().all(|&b| b == b'a'));
        assert!(out[512..4096].iter().all(|&b| b == 0));
        assert_eq!(&out[4096..4099], b"xyz");
        assert!(out[4099..].iter().all(|&b| b == 0));
    }

    #[test]
    fn bad_maps_are_refused() {
        assert!(matches!(
            plan(&[(100, 512), (50, 10)], 522, 60),
            Err(SparseError::Unordered)
        ));
        assert!(matches!(
            plan(&[(0, 10), (100, 10)], 20, 110),
            Err(SparseError::Unaligned)
        ));
        assert!(matches!(
            plan(&[(0, 512)], 512, 1000),
            Err(SparseError::RealSize {
                end: 512,
                real: 1000
            })
        ));
        assert!(matches!(
            plan(&[(0, 512)], 1024, 512),
            Err(SparseError::Stored { .. })
        ));
        assert!(matches!(
            plan(&[(u64::MAX, 2)], 2, 0),
            Err(SparseError::Unordered)
        ));
    }

    #[test]
    fn holes_are_taken_whole_not_read() {
        let segments = vec![
            Segment::Data(0),
            Segment::Zeros(60 << 30),
            Segment::Data(3),
            Segment::Zeros(5),
        ];
        let mut src = &b"xyz"[..];
        let mut e = Expand::new(segments, &mut src);
        assert_eq!(e.data_left(), Some(3));
        assert_eq!(e.take_hole(), 60 << 30);
        assert_eq!(e.take_hole(), 0, "data next");
        let mut buf = [0u8; 8];
        assert_eq!(e.read(&mut buf).unwrap(), 3);
        assert_eq!(e.take_hole(), 5);
        assert_eq!(e.take_hole(), 0);
        assert_eq!(e.read(&mut buf).unwrap(), 0);
    }

    #[test]
    fn short_stored_data_is_an_error_not_a_short_file() {
        let mut src = &b"ab"[..];
        let mut out = Vec::new();
        let err = Expand::new(vec![Segment::Data(5)], &mut src)
            .read_to_end(&mut out)
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}
