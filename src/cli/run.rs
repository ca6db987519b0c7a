//! `cvmd run`: the supervisor's main job (see `workspace`). A fatal error's
//! message also goes to the termination log (`CVMD_TERMINATION_LOG`,
//! /dev/termination-log), where Kubernetes shows it as the container's
//! termination message.

use std::path::Path;

use crate::config::Settings;

pub async fn run(settings: &Settings) -> anyhow::Result<i32> {
    match crate::workspace::run(settings).await {
        Ok(code) => Ok(code),
        Err(e) => {
            write_termination_log(&settings.termination_log, &super::error_line(&e));
            Err(e)
        }
    }
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
