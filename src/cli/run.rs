//! `cvmd run`: the supervisor's main job (see `workspace`). A fatal error's
//! message also goes to /dev/termination-log, where Kubernetes shows it.

use crate::config::Settings;

pub async fn run(settings: &Settings) -> anyhow::Result<i32> {
    match crate::workspace::run(settings).await {
        Ok(code) => Ok(code),
        Err(e) => {
            let path = std::path::Path::new("/dev/termination-log");
            if path.exists() {
                let _ = std::fs::write(path, super::error_line(&e));
            }
            Err(e)
        }
    }
}
