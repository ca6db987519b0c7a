//! A bounded byte pipe between a layer's two threads: the inflating side
//! (network bytes written to the blob file, hashed, decompressed, hashed
//! again) fills buffers, the tar side (header parsing, file creation) reads
//! them. Each side then has a core to itself, so one big layer is no longer
//! bound by a single core; memory stays at `depth + 2` buffers, which are
//! recycled rather than allocated per chunk.
//!
//! A read error on the inflating side travels down the pipe in stream
//! order, so the tar side fails at the same place it would have failed
//! reading the stream itself; a tar side that stops (error or done) closes
//! the pipe, and the inflating side stops at its next send.

use std::io::{self, Read};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender, TryRecvError};

/// The filling end.
pub struct PipeWriter {
    full: SyncSender<io::Result<Vec<u8>>>,
    empty: Receiver<Vec<u8>>,
    chunk: usize,
}

/// The reading end: a plain [`Read`] of the bytes in order.
pub struct PipeReader {
    full: Receiver<io::Result<Vec<u8>>>,
    empty: Sender<Vec<u8>>,
    current: Vec<u8>,
    pos: usize,
    failed: Option<io::ErrorKind>,
}

/// Why [`PipeWriter::pump`] stopped before the source's end.
#[derive(Debug)]
pub enum PumpError {
    /// Reading the source failed; the error was passed on to the reader.
    Read(io::ErrorKind),
    /// The reader hung up: it failed, and says why itself.
    Closed,
}

/// A pipe holding at most `depth` filled buffers of `chunk` bytes.
pub fn pipe(depth: usize, chunk: usize) -> (PipeWriter, PipeReader) {
    let (full_tx, full_rx) = mpsc::sync_channel(depth);
    let (empty_tx, empty_rx) = mpsc::channel();
    let writer = PipeWriter {
        full: full_tx,
        empty: empty_rx,
        chunk,
    };
    let reader = PipeReader {
        full: full_rx,
        empty: empty_tx,
        current: Vec::new(),
        pos: 0,
        failed: None,
    };
    (writer, reader)
}

impl PipeWriter {
    /// Copies `src` to its end into the pipe; the pipe closes when `self`
    /// is dropped. Returns the bytes sent.
    pub fn pump(&mut self, src: &mut dyn Read) -> Result<u64, PumpError> {
        let mut sent = 0u64;
        loop {
            let mut buf = match self.empty.try_recv() {
                Ok(b) => b,
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => {
                    Vec::with_capacity(self.chunk)
                }
            };
            buf.resize(self.chunk, 0);
            let mut filled = 0;
            // Full buffers: fewer hand-offs, and the reader's small reads
            // (512-byte headers) are served from memory.
            let end = loop {
                match src.read(&mut buf[filled..]) {
                    Ok(0) => break Ok(true),
                    Ok(n) => {
                        filled += n;
                        if filled == buf.len() {
                            break Ok(false);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => break Err(e),
                }
            };
            if filled > 0 {
                buf.truncate(filled);
                self.full.send(Ok(buf)).map_err(|_| PumpError::Closed)?;
                sent += filled as u64;
            }
            match end {
                Ok(true) => return Ok(sent),
                Ok(false) => {}
                Err(e) => {
                    let kind = e.kind();
                    self.full.send(Err(e)).map_err(|_| PumpError::Closed)?;
                    return Err(PumpError::Read(kind));
                }
            }
        }
    }
}

impl Read for PipeReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        while self.pos == self.current.len() {
            if let Some(kind) = self.failed {
                return Err(io::Error::new(kind, "the layer stream failed earlier"));
            }
            let used = std::mem::take(&mut self.current);
            if used.capacity() > 0 {
                // The writer may be gone already; the buffer is then freed.
                let _ = self.empty.send(used);
            }
            self.pos = 0;
            match self.full.recv() {
                Ok(Ok(buf)) => self.current = buf,
                Ok(Err(e)) => {
                    self.failed = Some(e.kind());
                    return Err(e);
                }
                // The writer reached the end (a failure was sent first).
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.current.len() - self.pos);
        out[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Yields `data` in reads of at most `step` bytes, then fails if asked.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
        fail_at_end: bool,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.data.is_empty() && self.fail_at_end {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "corrupt deflate stream",
                ));
            }
            let n = buf.len().min(self.step).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    #[test]
    fn bytes_arrive_in_order_and_whole() {
        let data: Vec<u8> = (0..1_000_003u32).map(|i| (i * 7 % 251) as u8).collect();
        let (mut w, mut r) = pipe(2, 4096);
        let got = std::thread::scope(|s| {
            let reader = s.spawn(move || {
                let mut got = Vec::new();
                r.read_to_end(&mut got).unwrap();
                got
            });
            let mut src = Trickle {
                data: &data,
                step: 1000,
                fail_at_end: false,
            };
            assert_eq!(w.pump(&mut src).unwrap(), data.len() as u64);
            drop(w);
            reader.join().unwrap()
        });
        assert_eq!(got, data);
    }

    #[test]
    fn a_source_error_reaches_the_reader_after_the_bytes_before_it() {
        let data = vec![5u8; 10_000];
        let (mut w, mut r) = pipe(1, 4096);
        let (pumped, read) = std::thread::scope(|s| {
            let reader = s.spawn(move || {
                let mut got = Vec::new();
                let err = r.read_to_end(&mut got).unwrap_err();
                // Asked again, it still fails rather than seeming to end.
                let again = r.read(&mut [0u8; 8]).unwrap_err();
                (got.len(), err.to_string(), again.kind())
            });
            let mut src = Trickle {
                data: &data,
                step: 3000,
                fail_at_end: true,
            };
            let pumped = w.pump(&mut src);
            drop(w);
            (pumped, reader.join().unwrap())
        });
        assert!(matches!(
            pumped,
            Err(PumpError::Read(io::ErrorKind::InvalidData))
        ));
        assert_eq!(read.0, 10_000);
        assert_eq!(read.1, "corrupt deflate stream");
        assert_eq!(read.2, io::ErrorKind::InvalidData);
    }

    #[test]
    fn a_reader_that_hangs_up_stops_the_writer() {
        let data = vec![1u8; 1 << 20];
        let (mut w, r) = pipe(1, 1024);
        drop(r);
        let mut src = Trickle {
            data: &data,
            step: 1024,
            fail_at_end: false,
        };
        assert!(matches!(w.pump(&mut src), Err(PumpError::Closed)));
    }
}
