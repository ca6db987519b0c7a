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
        .with(QuietFuseReplies)
        .try_init();
}

/// Drops fuser's error line for a reply the kernel no longer waits for
/// (`Failed to send FUSE reply: No such file or directory`): writing a
/// reply to /dev/fuse gives ENOENT when its request was interrupted or its
/// process died (fuse(4)), which every stop with a lazy read in flight
/// does. It read as an error in a clean stop's log. Other reply failures
/// (a malformed reply, EINVAL) stay.
struct QuietFuseReplies;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for QuietFuseReplies {
    fn event_enabled(
        &self,
        event: &tracing::Event<'_>,
        _: tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        !is_stale_fuse_reply(event)
    }
}

fn is_stale_fuse_reply(event: &tracing::Event<'_>) -> bool {
    #[derive(Default)]
    struct Fields {
        target: Option<String>,
        message: String,
    }
    impl tracing::field::Visit for Fields {
        fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
            if field.name() == "log.target" {
                self.target = Some(value.to_string());
            }
        }
        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
            if field.name() == "message" {
                self.message = format!("{value:?}");
            }
        }
    }
    let meta = event.metadata();
    // fuser logs through the `log` crate: the bridged event's own target
    // is "log", the crate's is a field.
    if !(meta.target().starts_with("fuser") || meta.target() == "log") {
        return false;
    }
    let mut fields = Fields::default();
    event.record(&mut fields);
    let target = fields.target.as_deref().unwrap_or(meta.target());
    target == "fuser::reply"
        && fields
            .message
            .starts_with("Failed to send FUSE reply: No such file or directory")
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::layer::SubscriberExt;

    /// Records the messages of the events that reach it.
    struct Seen(Arc<Mutex<Vec<String>>>);

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Seen {
        fn on_event(
            &self,
            event: &tracing::Event<'_>,
            _: tracing_subscriber::layer::Context<'_, S>,
        ) {
            struct Message<'a>(&'a mut String);
            impl tracing::field::Visit for Message<'_> {
                fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
                    if f.name() == "message" {
                        *self.0 = format!("{v:?}");
                    }
                }
            }
            let mut m = String::new();
            event.record(&mut Message(&mut m));
            self.0.lock().unwrap().push(m);
        }
    }

    #[test]
    fn a_reply_to_a_gone_request_is_dropped_other_fuse_errors_stay() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let subscriber = tracing_subscriber::registry()
            .with(super::QuietFuseReplies)
            .with(Seen(seen.clone()));
        tracing::subscriber::with_default(subscriber, || {
            // As the log bridge gives fuser's lines, and as a direct event.
            tracing::event!(target: "log", tracing::Level::ERROR, { log.target = "fuser::reply" }, "Failed to send FUSE reply: No such file or directory (os error 2)");
            tracing::error!(target: "fuser::reply", "Failed to send FUSE reply: No such file or directory (os error 2)");
            tracing::event!(target: "log", tracing::Level::ERROR, { log.target = "fuser::reply" }, "Failed to send FUSE reply: Invalid argument (os error 22)");
            tracing::error!(target: "cvmd", "Failed to send FUSE reply: No such file or directory (os error 2)");
        });
        assert_eq!(
            *seen.lock().unwrap(),
            [
                "Failed to send FUSE reply: Invalid argument (os error 22)",
                "Failed to send FUSE reply: No such file or directory (os error 2)"
            ]
        );
    }
}
