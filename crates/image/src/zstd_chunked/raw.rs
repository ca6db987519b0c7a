//! The names and numbers zstd:chunked fixes (containers/storage,
//! pkg/chunked/internal/minimal/compression.go), and the TOC's position
//! as its annotation and footer give it.

use std::fmt;

/// The layer annotation holding `sha256:` of the compressed TOC: what the
/// (verified) manifest promises, the trust anchor of every lazy read.
pub const CHECKSUM_ANNOTATION: &str = "io.github.containers.zstd-chunked.manifest-checksum";
/// `offset:length:uncompressedLength:type` of the compressed TOC, so one
/// Range request fetches it without the footer.
pub const POSITION_ANNOTATION: &str = "io.github.containers.zstd-chunked.manifest-position";
/// The names older containers/storage releases wrote.
pub const LEGACY_CHECKSUM_ANNOTATION: &str = "io.containers.zstd-chunked.manifest-checksum";
pub const LEGACY_POSITION_ANNOTATION: &str = "io.containers.zstd-chunked.manifest-position";

/// RFC 8878 3.1.2: a frame a decoder skips (magic 0x184D2A50, LE).
pub const SKIPPABLE_MAGIC: [u8; 4] = [0x50, 0x2a, 0x4d, 0x18];
/// A skippable frame's header: magic and LE u32 length.
pub const FRAME_HEADER: u64 = 8;
/// The footer's last 8 bytes.
pub const FOOTER_MAGIC: [u8; 8] = *b"GNUlInUx";
/// The only manifest type: a CRFS-compatible TOC.
pub const MANIFEST_TYPE_CRFS: u64 = 1;

/// Where the compressed TOC is: its bytes are `offset .. offset +
/// compressed_len` of the blob, after its frame's 8-byte header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TocPosition {
    pub offset: u64,
    pub compressed_len: u64,
    pub uncompressed_len: u64,
}

impl TocPosition {
    /// Parses the position annotation; None when malformed or not a CRFS TOC.
    pub fn parse(value: &str) -> Option<Self> {
        let parts: Vec<u64> = value
            .split(':')
            .map(|p| p.parse().ok())
            .collect::<Option<_>>()?;
        match parts[..] {
            [offset, compressed_len, uncompressed_len, MANIFEST_TYPE_CRFS] => Some(TocPosition {
                offset,
                compressed_len,
                uncompressed_len,
            }),
            _ => None,
        }
    }

    /// Where the TOC's skippable frame starts: the end of the file data.
    pub fn frame_start(&self) -> u64 {
        self.offset.saturating_sub(FRAME_HEADER)
    }
}

impl fmt::Display for TocPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}:{MANIFEST_TYPE_CRFS}",
            self.offset, self.compressed_len, self.uncompressed_len
        )
    }
}
