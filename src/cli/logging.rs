//! tracing set-up: human lines on a terminal, JSON lines otherwise (what
//! Kubernetes log collectors expect); every line also goes to the log book
//! that `cvmctl logs --source cvmd` reads. Lines reach stderr through
//! `progress::LogWriter`, so they do not garble `cvmd pull`'s bars.

use std::io::IsTerminal;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, Settings};
use crate::supervisor::logbook::{BookLayer, LogBook};

pub fn init(settings: &Settings) {
    // Validated in config, so this parse cannot fail.
    let filter = EnvFilter::try_new(&settings.log_level).unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match settings.log_format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    // Colours only for a person at a terminal, never into a log file.
    let ansi = std::io::stderr().is_terminal();
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(json.then(|| {
            tracing_subscriber::fmt::layer()
                .with_writer(crate::progress::LogWriter::stderr())
                .with_ansi(ansi)
                .json()
                .with_current_span(true)
        }))
        .with((!json).then(|| {
            tracing_subscriber::fmt::layer()
                .with_writer(crate::progress::LogWriter::stderr())
                .with_ansi(ansi)
        }))
        .with(BookLayer {
            book: LogBook::global(),
        })
        .try_init();
}
