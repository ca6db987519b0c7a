//! The client's side of `cvmctl exec -t`: the local terminal in raw mode
//! (keys go to the remote program as typed, Ctrl-C included), its size,
//! and its size changes. Independent of how the bytes travel.
//!
//! Raw mode is undone by [`RawMode`]'s `Drop`, so every return and every
//! unwinding panic restores the terminal; `std::process::exit` runs no
//! destructors, so drop the guard (or call [`RawMode::restore`]) before it.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use rustix::termios::{OptionalActions, Termios};
use tokio::signal::unix::{signal, Signal, SignalKind};

#[derive(Debug, thiserror::Error)]
pub enum TerminalError {
    #[error("standard input is not a terminal; run without -t, or from a terminal")]
    NotATerminal,
    #[error("cannot read the terminal's settings: {source}")]
    GetAttr {
        #[source]
        source: io::Error,
    },
    #[error("cannot put the terminal in raw mode: {source}")]
    SetAttr {
        #[source]
        source: io::Error,
    },
    #[error("cannot duplicate the terminal's descriptor: {source}")]
    Dup {
        #[source]
        source: io::Error,
    },
    #[error("cannot listen for window size changes (SIGWINCH): {source}")]
    Signal {
        #[source]
        source: io::Error,
    },
}

pub fn is_terminal(fd: impl AsFd) -> bool {
    rustix::termios::isatty(fd)
}

/// The terminal's size as (rows, cols); `None` when `fd` is no terminal or
/// reports no size (0x0, as a fresh pty does).
pub fn window_size(fd: impl AsFd) -> Option<(u16, u16)> {
    let ws = rustix::termios::tcgetwinsize(fd).ok()?;
    (ws.ws_row > 0 && ws.ws_col > 0).then_some((ws.ws_row, ws.ws_col))
}

/// The terminal in raw mode until this is dropped.
#[derive(Debug)]
pub struct RawMode {
    fd: OwnedFd,
    saved: Termios,
    restored: bool,
}

impl RawMode {
    /// Raw mode on the terminal `fd` (usually stdin): no line editing, no
    /// echo, no signals from keys, no output processing (cfmakeraw(3)).
    pub fn enable(fd: impl AsFd) -> Result<RawMode, TerminalError> {
        if !is_terminal(&fd) {
            return Err(TerminalError::NotATerminal);
        }
        let saved = rustix::termios::tcgetattr(&fd)
            .map_err(|e| TerminalError::GetAttr { source: e.into() })?;
        // Our own descriptor: the guard must reach the terminal in `Drop`
        // even if the caller closed theirs.
        let fd = fd
            .as_fd()
            .try_clone_to_owned()
            .map_err(|source| TerminalError::Dup { source })?;
        let mut raw = saved.clone();
        raw.make_raw();
        rustix::termios::tcsetattr(&fd, OptionalActions::Now, &raw)
            .map_err(|e| TerminalError::SetAttr { source: e.into() })?;
        Ok(RawMode {
            fd,
            saved,
            restored: false,
        })
    }

    /// Puts the saved settings back now.
    pub fn restore(mut self) -> io::Result<()> {
        self.put_back()
    }

    fn put_back(&mut self) -> io::Result<()> {
        if self.restored {
            return Ok(());
        }
        self.restored = true;
        rustix::termios::tcsetattr(&self.fd, OptionalActions::Now, &self.saved)?;
        Ok(())
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = self.put_back();
    }
}

/// The terminal's new size each time the window changes (SIGWINCH).
#[derive(Debug)]
pub struct WindowChanges {
    fd: OwnedFd,
    signal: Signal,
}

impl WindowChanges {
    /// Listens for SIGWINCH and reads the size of `fd`'s terminal. Needs a
    /// tokio runtime.
    pub fn new(fd: impl AsFd) -> Result<WindowChanges, TerminalError> {
        let fd = fd
            .as_fd()
            .try_clone_to_owned()
            .map_err(|source| TerminalError::Dup { source })?;
        let signal = signal(SignalKind::window_change())
            .map_err(|source| TerminalError::Signal { source })?;
        Ok(WindowChanges { fd, signal })
    }

    /// The size after the next change; `None` once no more can come.
    /// Changes that leave no readable size are skipped.
    pub async fn next(&mut self) -> Option<(u16, u16)> {
        loop {
            self.signal.recv().await?;
            if let Some(size) = window_size(&self.fd) {
                return Some(size);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::termios::{LocalModes, Winsize};

    fn lflag(fd: impl AsFd) -> LocalModes {
        rustix::termios::tcgetattr(fd).unwrap().local_modes
    }

    #[test]
    fn raw_mode_is_restored_on_drop_and_on_restore() {
        let pty = nix::pty::openpty(None, None).unwrap();
        assert!(lflag(&pty.slave).contains(LocalModes::ICANON | LocalModes::ECHO));
        let guard = RawMode::enable(&pty.slave).unwrap();
        let now = lflag(&pty.slave);
        assert!(!now.intersects(LocalModes::ICANON | LocalModes::ECHO | LocalModes::ISIG));
        drop(guard);
        assert!(
            lflag(&pty.slave).contains(LocalModes::ICANON | LocalModes::ECHO | LocalModes::ISIG)
        );

        let guard = RawMode::enable(&pty.slave).unwrap();
        guard.restore().unwrap();
        assert!(lflag(&pty.slave).contains(LocalModes::ICANON));

        // A panic while raw unwinds through the guard.
        let slave = pty.slave.try_clone().unwrap();
        let r = std::panic::catch_unwind(move || {
            let _g = RawMode::enable(&slave).unwrap();
            panic!("boom");
        });
        assert!(r.is_err());
        assert!(lflag(&pty.slave).contains(LocalModes::ICANON));
    }

    #[test]
    fn not_a_terminal_says_so() {
        let f = std::fs::File::open("/dev/null").unwrap();
        let e = RawMode::enable(&f).unwrap_err();
        assert!(matches!(e, TerminalError::NotATerminal), "{e}");
        assert!(!is_terminal(&f));
        assert_eq!(window_size(&f), None);
    }

    #[tokio::test]
    async fn size_and_its_changes() {
        let pty = nix::pty::openpty(None, None).unwrap();
        assert_eq!(window_size(&pty.slave), None, "a fresh pty has no size");
        let set = |rows, cols| {
            let ws = Winsize {
                ws_row: rows,
                ws_col: cols,
                ws_xpixel: 0,
                ws_ypixel: 0,
            };
            rustix::termios::tcsetwinsize(&pty.master, ws).unwrap();
        };
        set(24, 80);
        assert_eq!(window_size(&pty.slave), Some((24, 80)));
        let mut changes = WindowChanges::new(&pty.slave).unwrap();
        set(50, 132);
        // Our test process has no controlling terminal for the kernel to
        // signal: send the SIGWINCH a terminal would.
        nix::sys::signal::raise(nix::sys::signal::Signal::SIGWINCH).unwrap();
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), changes.next())
            .await
            .expect("a change within 5 s");
        assert_eq!(got, Some((50, 132)));
    }
}
