//! How a failed workspace says why: one line, the same on stderr, in
//! Status and in the termination log (`CVMD_TERMINATION_LOG`,
//! /dev/termination-log), where Kubernetes shows it as the container's
//! termination message.

use std::path::Path;

/// The one line a failure prints: the error and its causes, each cause
/// only when the message does not already say it (many messages carry
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

/// Writes `message` to `path` only when the file exists: Kubernetes creates
/// it (terminationMessagePath); cvmd outside a pod must not create
/// /dev/termination-log.
pub fn write_termination_log(path: &Path, message: &str) {
    if !path.exists() {
        return;
    }
    if let Err(e) = std::fs::write(path, format!("{message}\n")) {
        tracing::warn!(path = %path.display(), error = %e, "cannot write the termination log");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_line_drops_repeated_causes() {
        let io = std::io::Error::other("checksum mismatch");
        let e =
            anyhow::Error::new(io).context("layer x: checksum mismatch; the blob may be corrupt");
        assert_eq!(
            error_line(&e),
            "layer x: checksum mismatch; the blob may be corrupt"
        );
        let e = anyhow::Error::new(std::io::Error::other("disk\nfull")).context("writing y");
        assert_eq!(error_line(&e), "writing y: disk full");
    }

    #[test]
    fn termination_log_only_when_it_exists() {
        let dir = tempfile::tempdir().unwrap();
        let absent = dir.path().join("absent");
        write_termination_log(&absent, "boom");
        assert!(!absent.exists());
        let present = dir.path().join("termination-log");
        std::fs::write(&present, "").unwrap();
        write_termination_log(&present, "boom: do this");
        assert_eq!(
            std::fs::read_to_string(&present).unwrap(),
            "boom: do this\n"
        );
    }
}
