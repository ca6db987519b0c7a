//! The terminal side of `cvmctl exec -t`: raw mode for the session's
//! length and the window size.

use std::os::fd::AsFd;

use nix::sys::termios::{self, SetArg, Termios};

/// Puts the terminal on stdin in raw mode (keys go to the remote shell as
/// typed: ^C is a byte, not a signal to cvmctl) and restores it when
/// dropped, also on an error path.
pub struct RawMode {
    saved: Termios,
}

impl RawMode {
    pub fn enter() -> nix::Result<RawMode> {
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(stdin.as_fd())?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw)?;
        Ok(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, &self.saved);
    }
}

/// Rows and columns of the terminal on stdout, if it is one.
pub fn window_size() -> Option<(u32, u32)> {
    let ws = rustix::termios::tcgetwinsize(std::io::stdout()).ok()?;
    (ws.ws_row > 0 && ws.ws_col > 0).then_some((u32::from(ws.ws_row), u32::from(ws.ws_col)))
}
