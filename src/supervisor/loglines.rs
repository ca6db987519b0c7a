//! The workspace's stdout/stderr cut into log records of bounded length.
//!
//! A workspace may write one endless line (`tr -d '\n' </dev/zero`); reading
//! it with `lines()` buffered it whole in PID 1. Records are cut at
//! [`MAX_RECORD`] bytes instead, as containerd's CRI does with its 16 KiB
//! partial lines: a longer line arrives as several records, all but the last
//! marked partial, so nothing the workspace wrote is dropped and an
//! operator can join them again. Bytes are taken as they come (invalid
//! UTF-8 is shown lossily rather than ending the reading, which would leave
//! the workspace blocked on a full pipe).

use tokio::io::{AsyncBufRead, AsyncBufReadExt};

/// Longest record, in bytes (the log book's own line cap,
/// [`super::logbook::MAX_LINE`]).
pub const MAX_RECORD: usize = super::logbook::MAX_LINE;

/// One piece of the workspace's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Without the newline.
    pub bytes: Vec<u8>,
    /// The line goes on in the next record (cut at the cap, or the stream
    /// ended without a newline).
    pub partial: bool,
}

/// Reads the next record of at most `cap` bytes; `None` at the end of the
/// stream. Holds at most `cap` bytes beyond the reader's own buffer.
pub async fn next_record<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    cap: usize,
) -> std::io::Result<Option<Record>> {
    let mut bytes = Vec::new();
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok((!bytes.is_empty()).then_some(Record {
                bytes,
                partial: true,
            }));
        }
        let room = cap - bytes.len();
        let window = &available[..available.len().min(room)];
        if let Some(nl) = window.iter().position(|&b| b == b'\n') {
            bytes.extend_from_slice(&window[..nl]);
            reader.consume(nl + 1);
            return Ok(Some(Record {
                bytes,
                partial: false,
            }));
        }
        let taken = window.len();
        bytes.extend_from_slice(window);
        reader.consume(taken);
        if bytes.len() == cap {
            // A newline right at the cap ends this line, not the next.
            let next = reader.fill_buf().await?;
            let ends_here = next.first() == Some(&b'\n');
            if ends_here {
                reader.consume(1);
            }
            return Ok(Some(Record {
                bytes,
                partial: !ends_here,
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use tokio::io::{AsyncRead, BufReader, ReadBuf};

    /// Sends `left` bytes of `x` and never a newline, in small reads.
    struct Endless {
        left: usize,
    }

    impl AsyncRead for Endless {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            let n = buf.remaining().min(self.left).min(4096);
            buf.put_slice(&vec![b'x'; n]);
            self.left -= n;
            Poll::Ready(Ok(()))
        }
    }

    async fn all(input: &[u8], cap: usize) -> Vec<(String, bool)> {
        let mut r = BufReader::with_capacity(4, input);
        let mut out = Vec::new();
        while let Some(rec) = next_record(&mut r, cap).await.unwrap() {
            out.push((String::from_utf8(rec.bytes).unwrap(), rec.partial));
        }
        out
    }

    fn owned(v: &[(&str, bool)]) -> Vec<(String, bool)> {
        v.iter().map(|(s, p)| (s.to_string(), *p)).collect()
    }

    #[tokio::test]
    async fn an_endless_line_comes_as_capped_partial_records() {
        let mut r = BufReader::new(Endless { left: 64 << 20 });
        let mut records = 0usize;
        let mut bytes = 0usize;
        while let Some(rec) = next_record(&mut r, MAX_RECORD).await.unwrap() {
            assert!(rec.bytes.len() <= MAX_RECORD);
            assert!(rec.partial);
            assert!(rec.bytes.capacity() <= 2 * MAX_RECORD);
            records += 1;
            bytes += rec.bytes.len();
        }
        assert_eq!(bytes, 64 << 20, "nothing dropped");
        assert_eq!(records, (64 << 20) / MAX_RECORD);
    }

    #[tokio::test]
    async fn lines_are_split_at_newlines_and_at_the_cap() {
        assert_eq!(
            all(b"ab\ncdefg\nhi", 4).await,
            owned(&[("ab", false), ("cdef", true), ("g", false), ("hi", true)])
        );
        // A newline just after the cap ends that line: no empty record.
        assert_eq!(
            all(b"abcd\nef\n", 4).await,
            owned(&[("abcd", false), ("ef", false)])
        );
        assert_eq!(all(b"\n\n", 4).await, owned(&[("", false), ("", false)]));
        assert_eq!(all(b"", 4).await, owned(&[]));
    }

    #[tokio::test]
    async fn invalid_utf8_does_not_end_the_reading() {
        let mut r = BufReader::new(&b"\xff\xfe\nok\n"[..]);
        let first = next_record(&mut r, 16).await.unwrap().unwrap();
        assert_eq!(first.bytes, b"\xff\xfe");
        let second = next_record(&mut r, 16).await.unwrap().unwrap();
        assert_eq!(second.bytes, b"ok");
    }
}
