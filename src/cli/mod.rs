//! The subcommands of the `cvmd` binary, one module each; the binary only
//! parses and dispatches.

pub mod gc;
pub mod logging;
pub mod prefetch;
pub mod preflight;
pub mod pull;
pub mod rootfs;
pub mod run;
pub mod shiftfs;

/// The one line a failed command prints: the error and its causes, each
/// cause only when the message does not already say it (many messages carry
/// their source inline, and a cause's text repeated is noise).
pub fn error_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
    }
    // One line, whatever a cause held.
    line.replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    #[test]
    fn error_line_drops_repeated_causes() {
        let io = std::io::Error::other("checksum mismatch");
        let e =
            anyhow::Error::new(io).context("layer x: checksum mismatch; the blob may be corrupt");
        assert_eq!(
            super::error_line(&e),
            "layer x: checksum mismatch; the blob may be corrupt"
        );
        let e = anyhow::Error::new(std::io::Error::other("disk\nfull")).context("writing y");
        assert_eq!(super::error_line(&e), "writing y: disk full");
    }
}
