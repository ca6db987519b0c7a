//! `cvmd run`: the supervisor's main job (see `workspace`). A fatal error's
//! message also goes to the termination log (see
//! `supervisor::termination`).

use crate::config::Settings;
use crate::supervisor::termination::{error_line, write_termination_log};

pub async fn run(settings: &Settings) -> anyhow::Result<i32> {
    match crate::workspace::run(&settings.run).await {
        Ok(code) => Ok(code),
        Err(e) => {
            write_termination_log(&settings.run.supervise.termination_log, &error_line(&e));
            Err(e)
        }
    }
}
