//! The console socket (`exec --console-socket PATH`): the runtime connects
//! to it and sends the master of the terminal it made for the process as
//! an SCM_RIGHTS message whose data is the terminal's name (runc
//! `utils.SendFd`; go-runc's `Socket.ReceiveMaster` receives it the same
//! way).

use std::io::{self, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use tokio::io::Interest;
use tokio::net::{UnixListener, UnixStream};

/// A listening console socket; the file goes when this is dropped.
#[derive(Debug)]
pub struct ConsoleSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl ConsoleSocket {
    /// Listens at `path` (in a private directory: whoever connects first
    /// is taken to be the runtime).
    pub fn bind(path: &Path) -> io::Result<ConsoleSocket> {
        Ok(ConsoleSocket {
            listener: UnixListener::bind(path)?,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The terminal master from the first connection. The error is a
    /// reason for a message.
    pub async fn receive(self) -> Result<OwnedFd, String> {
        let (stream, _) = self
            .listener
            .accept()
            .await
            .map_err(|e| format!("accepting on {:?}: {e}", self.path))?;
        let fd = recv_fd(&stream)
            .await
            .map_err(|e| format!("receiving the terminal: {e}"))?;
        if !rustix::termios::isatty(&fd) {
            return Err("what it sent is not a terminal".into());
        }
        Ok(fd)
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn recv_fd(stream: &UnixStream) -> io::Result<OwnedFd> {
    loop {
        stream.readable().await?;
        match stream.try_io(Interest::READABLE, || recv_fd_now(stream.as_raw_fd())) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            other => return other,
        }
    }
}

/// One `recvmsg` with room for two fds, so that a second one is seen (and
/// closed) rather than left behind by a truncated control message.
fn recv_fd_now(sock: RawFd) -> io::Result<OwnedFd> {
    let mut name = [0u8; 4096];
    let mut iov = [IoSliceMut::new(&mut name)];
    let mut space = nix::cmsg_space!([RawFd; 2]);
    let msg = recvmsg::<()>(sock, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)?;
    let mut fds: Vec<OwnedFd> = Vec::new();
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(raw) = cmsg {
            for fd in raw {
                // SAFETY: SCM_RIGHTS installed `fd` in our fd table for
                // this message alone; nothing else owns or closes it.
                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    if msg.bytes == 0 && fds.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the runtime closed the socket without sending a terminal",
        ));
    }
    match fds.len() {
        1 => Ok(fds.remove(0)),
        0 => Err(io::Error::other("the message carried no file descriptor")),
        // The extra ones close as `fds` drops.
        n => Err(io::Error::other(format!(
            "the message carried {n} file descriptors, not one"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{sendmsg, ControlMessage};
    use std::io::IoSlice;
    use std::os::fd::AsFd;

    fn send(stream: &std::os::unix::net::UnixStream, fds: &[RawFd]) {
        let data = [IoSlice::new(b"/dev/ptmx")];
        let cmsgs = [ControlMessage::ScmRights(fds)];
        let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsgs };
        sendmsg::<()>(stream.as_raw_fd(), &data, cmsgs, MsgFlags::empty(), None).unwrap();
    }

    #[tokio::test]
    async fn receives_a_terminal_master() {
        let t = tempfile::tempdir().unwrap();
        let sock = ConsoleSocket::bind(&t.path().join("c.sock")).unwrap();
        let path = sock.path().to_path_buf();
        let pty = nix::pty::openpty(None, None).unwrap();
        let client = std::os::unix::net::UnixStream::connect(&path).unwrap();
        send(&client, &[pty.master.as_fd().as_raw_fd()]);
        let got = sock.receive().await.unwrap();
        assert!(rustix::termios::isatty(&got));
        assert_ne!(got.as_raw_fd(), pty.master.as_raw_fd());
        assert!(!path.exists(), "the socket file goes with the listener");
    }

    #[tokio::test]
    async fn refuses_what_is_not_one_terminal() {
        let t = tempfile::tempdir().unwrap();
        // A message without a descriptor.
        let sock = ConsoleSocket::bind(&t.path().join("a.sock")).unwrap();
        let client = std::os::unix::net::UnixStream::connect(sock.path()).unwrap();
        send(&client, &[]);
        let e = sock.receive().await.unwrap_err();
        assert!(e.contains("no file descriptor"), "{e}");
        // A descriptor that is not a terminal.
        let sock = ConsoleSocket::bind(&t.path().join("b.sock")).unwrap();
        let client = std::os::unix::net::UnixStream::connect(sock.path()).unwrap();
        let file = std::fs::File::open("/dev/null").unwrap();
        send(&client, &[file.as_raw_fd()]);
        let e = sock.receive().await.unwrap_err();
        assert!(e.contains("not a terminal"), "{e}");
        // Two descriptors.
        let sock = ConsoleSocket::bind(&t.path().join("c.sock")).unwrap();
        let client = std::os::unix::net::UnixStream::connect(sock.path()).unwrap();
        send(&client, &[file.as_raw_fd(), file.as_raw_fd()]);
        let e = sock.receive().await.unwrap_err();
        assert!(e.contains("2 file descriptors"), "{e}");
        // A peer that hangs up.
        let sock = ConsoleSocket::bind(&t.path().join("d.sock")).unwrap();
        drop(std::os::unix::net::UnixStream::connect(sock.path()).unwrap());
        let e = sock.receive().await.unwrap_err();
        assert!(e.contains("without sending a terminal"), "{e}");
    }
}
