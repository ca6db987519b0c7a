//! The master side of the exec's terminal as async streams, and its size.
//!
//! One non-blocking fd registered once with tokio, shared by a reader and
//! a writer (readiness is tracked per direction). When every slave fd has
//! closed, Linux fails reads of the master with EIO: that is the end of
//! the output, reported as EOF.

use std::io;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use rustix::termios::Winsize;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The terminal's master.
#[derive(Debug, Clone)]
pub struct Master {
    fd: Arc<AsyncFd<OwnedFd>>,
}

impl Master {
    /// Takes the master fd (as received from the runtime); makes it
    /// non-blocking, which the runtime's copy, closed by now, cannot mind.
    pub fn new(fd: OwnedFd) -> io::Result<Master> {
        let flags = rustix::fs::fcntl_getfl(&fd)?;
        rustix::fs::fcntl_setfl(&fd, flags | rustix::fs::OFlags::NONBLOCK)?;
        // SAFETY: an OwnedFd is open, owned by the AsyncFd from here on,
        // and its `as_raw_fd` is the same descriptor for as long as it lives.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)?;
        Ok(Master { fd: Arc::new(fd) })
    }

    /// TIOCSWINSZ; the kernel sends SIGWINCH to the terminal's foreground
    /// process group when the size changes.
    pub fn set_size(&self, rows: u16, cols: u16) -> io::Result<()> {
        let size = Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        Ok(rustix::termios::tcsetwinsize(self.fd.get_ref(), size)?)
    }

    pub fn size(&self) -> io::Result<(u16, u16)> {
        let ws = rustix::termios::tcgetwinsize(self.fd.get_ref())?;
        Ok((ws.ws_row, ws.ws_col))
    }

    pub fn reader(&self) -> MasterReader {
        MasterReader(self.fd.clone())
    }

    pub fn writer(&self) -> MasterWriter {
        MasterWriter(self.fd.clone())
    }
}

/// The process's output (stdout and stderr alike, as on any terminal).
#[derive(Debug)]
pub struct MasterReader(Arc<AsyncFd<OwnedFd>>);

/// The process's input. Shutting it down does nothing: a terminal has no
/// half-close; write the terminal's EOF character (Ctrl-D) instead.
#[derive(Debug)]
pub struct MasterWriter(Arc<AsyncFd<OwnedFd>>);

impl AsyncRead for MasterReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.0.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|fd| Ok(rustix::io::read(fd.get_ref(), &mut *unfilled)?)) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Poll::Ready(Ok(())),
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for MasterWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.0.poll_write_ready(cx))?;
            match guard.try_io(|fd| Ok(rustix::io::write(fd.get_ref(), data)?)) {
                Ok(result) => return Poll::Ready(result),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn streams_both_ways_sizes_and_ends_with_eof() {
        let pty = nix::pty::openpty(None, None).unwrap();
        let master = Master::new(pty.master).unwrap();
        master.set_size(33, 111).unwrap();
        assert_eq!(master.size().unwrap(), (33, 111));
        let ws = rustix::termios::tcgetwinsize(&pty.slave).unwrap();
        assert_eq!((ws.ws_row, ws.ws_col), (33, 111));

        // Input typed at the master reaches the slave (echoed back, too).
        let mut w = master.writer();
        w.write_all(b"hi\n").await.unwrap();
        let mut got = [0u8; 3];
        let mut slave = std::fs::File::from(pty.slave);
        std::io::Read::read_exact(&mut slave, &mut got).unwrap();
        assert_eq!(&got, b"hi\n");

        // Output written to the slave comes out of the master; the slave
        // closing is the end of the stream.
        std::io::Write::write_all(&mut slave, b"out\n").unwrap();
        drop(slave);
        let mut r = master.reader();
        let mut all = Vec::new();
        tokio::time::timeout(std::time::Duration::from_secs(5), r.read_to_end(&mut all))
            .await
            .expect("EOF once the slave is closed")
            .unwrap();
        let text = String::from_utf8_lossy(&all);
        // The echo of "hi" then the output, with the terminal's CRLF.
        assert!(text.ends_with("out\r\n"), "{text:?}");
    }
}
