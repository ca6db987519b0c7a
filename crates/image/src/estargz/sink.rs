//! The writer's output side: the tar stream cut into gzip members (or zstd
//! frames) where the caller asks (a chunk's start, the TOC), counted and
//! hashed both compressed (the blob's digest and size) and not (the
//! diff_id); and the two bits of tar framing the writer makes by hand.

use std::io::{self, Write};

use flate2::write::GzEncoder;
use sha2::{Digest as _, Sha256};

/// Counts and hashes the blob as it leaves.
pub(crate) struct Counter<W> {
    inner: W,
    pub(crate) count: u64,
    pub(crate) hash: Sha256,
}

/// How the tar stream is compressed: each member or frame can be
/// decompressed alone, and their concatenation is the whole stream.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Codec {
    Gzip(flate2::Compression),
    /// A zstd level.
    Zstd(i32),
}

enum Encoder<W: Write> {
    Gzip(GzEncoder<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
}

impl<W: Write> Encoder<W> {
    fn new(out: W, codec: Codec) -> io::Result<Self> {
        Ok(match codec {
            Codec::Gzip(level) => Encoder::Gzip(GzEncoder::new(out, level)),
            Codec::Zstd(level) => Encoder::Zstd(zstd::stream::write::Encoder::new(out, level)?),
        })
    }

    fn finish(self) -> io::Result<W> {
        match self {
            Encoder::Gzip(e) => e.finish(),
            Encoder::Zstd(e) => e.finish(),
        }
    }

    fn get(&mut self) -> &mut dyn Write {
        match self {
            Encoder::Gzip(e) => e,
            Encoder::Zstd(e) => e,
        }
    }
}

impl<W: Write> Write for Counter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The tar stream going into gzip members (zstd frames), which a caller
/// starts where the format wants one to start.
pub(crate) struct Sink<W: Write> {
    enc: Option<Encoder<Counter<W>>>,
    codec: Codec,
    member_start: u64,
    /// Whether the current member holds any byte yet.
    dirty: bool,
    tar_hash: Sha256,
    tar_size: u64,
}

impl<W: Write> Sink<W> {
    pub(crate) fn new(out: W, codec: Codec) -> io::Result<Self> {
        let counter = Counter {
            inner: out,
            count: 0,
            hash: Sha256::new(),
        };
        Ok(Sink {
            enc: Some(Encoder::new(counter, codec)?),
            codec,
            member_start: 0,
            dirty: false,
            tar_hash: Sha256::new(),
            tar_size: 0,
        })
    }

    /// Starts a new gzip member (unless the current one is still empty)
    /// and returns its offset in the blob.
    pub(crate) fn new_member(&mut self) -> io::Result<u64> {
        if self.dirty {
            let counter = self.enc.take().expect("encoder present").finish()?;
            self.member_start = counter.count;
            self.enc = Some(Encoder::new(counter, self.codec)?);
            self.dirty = false;
        }
        Ok(self.member_start)
    }

    pub(crate) fn finish(mut self) -> io::Result<(Counter<W>, Sha256, u64)> {
        let counter = self.enc.take().expect("encoder present").finish()?;
        Ok((counter, self.tar_hash, self.tar_size))
    }
}

impl<W: Write> Write for Sink<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self
            .enc
            .as_mut()
            .expect("encoder present")
            .get()
            .write(buf)?;
        if n > 0 {
            self.dirty = true;
            self.tar_hash.update(&buf[..n]);
            self.tar_size += n as u64;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.enc.as_mut().expect("encoder present").get().flush()
    }
}

/// Writes `value` into a NUL-padded header field when it fits as ASCII.
pub(super) fn set_field(field: &mut [u8], value: &str) -> bool {
    let fits = value.len() <= field.len() && value.is_ascii();
    let bytes = value.as_bytes();
    let n = bytes.len().min(field.len());
    field.fill(0);
    field[..n].copy_from_slice(&bytes[..n]);
    fits
}

/// One PAX record, `"<len> <key>=<value>\n"` where len counts itself.
pub(super) fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3;
    let mut len = body + 1;
    while len.to_string().len() + body != len {
        len = body + len.to_string().len();
    }
    let mut out = format!("{len} {key}=").into_bytes();
    out.extend_from_slice(value);
    out.push(b'\n');
    out
}
