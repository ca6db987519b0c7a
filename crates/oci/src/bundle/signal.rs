//! Stop signals by name or number, as image configs write them.

/// Glibc's SIGRTMIN: the kernel's 32 plus the two glibc keeps for itself.
/// Docker, sysbox and systemd's documentation all count from here, so
/// `SIGRTMIN+3` is 37 (systemd's "halt", what `kill 37` sends).
pub const SIGRTMIN: i32 = 34;
pub const SIGRTMAX: i32 = 64;
pub const SYSTEMD_STOP_SIGNAL: i32 = SIGRTMIN + 3;

/// A signal by name (`SIGTERM`, `TERM`, `SIGRTMIN+3`, `RTMAX-1`, any case)
/// or number (1-64).
pub fn parse_signal(s: &str) -> Option<i32> {
    let s = s.trim();
    if let Ok(n) = s.parse::<i32>() {
        return (1..=SIGRTMAX).contains(&n).then_some(n);
    }
    let up = s.to_ascii_uppercase();
    let name = up.strip_prefix("SIG").unwrap_or(&up);
    let rt = |base: i32, rest: &str| -> Option<i32> {
        let n = if rest.is_empty() {
            base
        } else if let Some(d) = rest.strip_prefix('+') {
            base + d.parse::<i32>().ok()?
        } else if let Some(d) = rest.strip_prefix('-') {
            base - d.parse::<i32>().ok()?
        } else {
            return None;
        };
        (SIGRTMIN..=SIGRTMAX).contains(&n).then_some(n)
    };
    if let Some(rest) = name.strip_prefix("RTMIN") {
        return rt(SIGRTMIN, rest);
    }
    if let Some(rest) = name.strip_prefix("RTMAX") {
        return rt(SIGRTMAX, rest);
    }
    format!("SIG{name}")
        .parse::<nix::sys::signal::Signal>()
        .ok()
        .map(|s| s as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers() {
        for (s, n) in [
            ("SIGTERM", 15),
            ("TERM", 15),
            ("sigkill", 9),
            ("SIGRTMIN+3", 37),
            ("RTMIN", 34),
            ("SIGRTMAX-2", 62),
            ("37", 37),
            ("SIGWINCH", 28),
        ] {
            assert_eq!(parse_signal(s), Some(n), "{s}");
        }
        for s in ["", "0", "65", "SIGNOPE", "SIGRTMIN+31", "RTMIN3", "-1"] {
            assert_eq!(parse_signal(s), None, "{s}");
        }
        assert_eq!(SYSTEMD_STOP_SIGNAL, 37);
    }
}
