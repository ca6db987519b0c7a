//! Showing pull progress: per-layer bars on a terminal, one JSON object per
//! event for scripts, plain lines otherwise. Bars and log lines share
//! stderr: the bars draw through the process's one [`terminal`], and the
//! log writer ([`LogWriter`]) prints each line with the bars lifted off
//! the screen, so neither overwrites the other.

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Mutex, OnceLock};

use indicatif::{HumanBytes, MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use cvmd_digest::Digest;
use serde::Serialize;

/// What a pull reports as it goes; one JSON object each with `--json`.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum PullEvent {
    Resolved {
        reference: String,
        digest: Digest,
        platform: String,
        layers: usize,
        bytes: u64,
    },
    LayerWaiting {
        digest: Digest,
    },
    LayerStarted {
        digest: Digest,
        size: u64,
        resumed_from: u64,
    },
    LayerProgress {
        digest: Digest,
        done: u64,
        total: u64,
    },
    LayerRetry {
        digest: Digest,
        attempt: u32,
        error: String,
    },
    LayerDone {
        digest: Digest,
        size: u64,
        cached: bool,
    },
    Done {
        reference: String,
        digest: Digest,
        elapsed_ms: u64,
    },
}

pub trait ProgressSink: Send + Sync {
    fn event(&self, event: PullEvent);
}

/// Drops every event.
#[derive(Debug)]
pub struct NoProgress;
impl ProgressSink for NoProgress {
    fn event(&self, _: PullEvent) {}
}

/// One JSON object per line on stdout.
#[derive(Debug)]
pub struct JsonLines;

impl ProgressSink for JsonLines {
    fn event(&self, event: PullEvent) {
        if let Ok(line) = serde_json::to_string(&event) {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
        }
    }
}

/// Lines a person reads in a log (no terminal): a layer's start, retries,
/// and end; no byte counts in between.
#[derive(Debug)]
pub struct PlainLines;

impl ProgressSink for PlainLines {
    fn event(&self, event: PullEvent) {
        if let Some(line) = plain_line(&event) {
            eprintln!("{line}");
        }
    }
}

/// The line a person reads for an event; None for the ones too frequent to print.
fn plain_line(event: &PullEvent) -> Option<String> {
    Some(match event {
        PullEvent::Resolved {
            reference,
            digest,
            platform,
            layers,
            bytes,
        } => {
            format!(
                "{reference}: {digest} ({platform}, {layers} layers, {})",
                human_bytes(*bytes)
            )
        }
        PullEvent::LayerWaiting { digest } => format!(
            "{}: another process is downloading it, waiting",
            digest.short()
        ),
        PullEvent::LayerStarted {
            digest,
            size,
            resumed_from,
        } if *resumed_from > 0 => {
            format!(
                "{}: resuming at {} of {}",
                digest.short(),
                human_bytes(*resumed_from),
                human_bytes(*size)
            )
        }
        PullEvent::LayerStarted { digest, size, .. } => {
            format!("{}: downloading {}", digest.short(), human_bytes(*size))
        }
        PullEvent::LayerRetry {
            digest,
            attempt,
            error,
        } => format!("{}: retry {attempt}: {error}", digest.short()),
        PullEvent::LayerDone {
            digest,
            cached: true,
            ..
        } => format!("{}: already in the store", digest.short()),
        PullEvent::LayerDone { digest, size, .. } => {
            format!("{}: done ({})", digest.short(), human_bytes(*size))
        }
        PullEvent::LayerProgress { .. } | PullEvent::Done { .. } => return None,
    })
}

/// indicatif bars, one per layer, on stderr.
#[derive(Debug)]
pub struct TerminalBars {
    multi: MultiProgress,
    bars: Mutex<HashMap<Digest, ProgressBar>>,
}

impl Default for TerminalBars {
    fn default() -> Self {
        TerminalBars::on(terminal().clone())
    }
}

/// The process's bars on stderr; [`LogWriter`] writes under the same one.
pub fn terminal() -> &'static MultiProgress {
    static TERMINAL: OnceLock<MultiProgress> = OnceLock::new();
    TERMINAL.get_or_init(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()))
}

/// tracing's writer for stderr: each event is collected whole and written
/// with the bars of `multi` cleared first and redrawn after (indicatif's
/// `suspend`), so a log line never lands inside a bar. Without bars on
/// screen that is a plain write.
#[derive(Debug, Clone)]
pub struct LogWriter {
    multi: MultiProgress,
    out: fn() -> Box<dyn Write>,
}

impl LogWriter {
    /// Lines to stderr, under the process's [`terminal`].
    pub fn stderr() -> LogWriter {
        LogWriter::new(terminal().clone(), || Box::new(std::io::stderr()))
    }

    /// Lines to `out`, under `multi` (a test seam).
    pub fn new(multi: MultiProgress, out: fn() -> Box<dyn Write>) -> LogWriter {
        LogWriter { multi, out }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogLine;

    fn make_writer(&'a self) -> LogLine {
        LogLine {
            multi: self.multi.clone(),
            out: self.out,
            buf: Vec::new(),
        }
    }
}

/// One event's text, written when tracing drops it.
#[derive(Debug)]
pub struct LogLine {
    multi: MultiProgress,
    out: fn() -> Box<dyn Write>,
    buf: Vec<u8>,
}

impl Write for LogLine {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LogLine {
    fn drop(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let buf = std::mem::take(&mut self.buf);
        let out = self.out;
        self.multi.suspend(|| {
            let mut w = out();
            let _ = w.write_all(&buf);
            let _ = w.flush();
        });
    }
}

impl TerminalBars {
    /// Bars drawn through `multi` (a test seam; [`Default`] is stderr's).
    pub fn on(multi: MultiProgress) -> TerminalBars {
        TerminalBars {
            multi,
            bars: Mutex::default(),
        }
    }

    fn bar(&self, digest: &Digest, size: u64) -> ProgressBar {
        let mut bars = self.bars.lock().unwrap();
        bars.entry(digest.clone())
            .or_insert_with(|| {
                let bar = self.multi.add(ProgressBar::new(size));
                bar.set_style(
                    ProgressStyle::with_template(
                        "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {msg}",
                    )
                    .expect("static template")
                    .progress_chars("=> "),
                );
                bar.set_prefix(digest.short());
                bar
            })
            .clone()
    }
}

impl ProgressSink for TerminalBars {
    fn event(&self, event: PullEvent) {
        match event {
            PullEvent::Resolved { .. } => {
                let _ = self.multi.println(plain_line(&event).unwrap_or_default());
            }
            PullEvent::LayerWaiting { digest } => self
                .bar(&digest, 0)
                .set_message("waiting for another process"),
            PullEvent::LayerStarted {
                digest,
                size,
                resumed_from,
            } => {
                let bar = self.bar(&digest, size);
                bar.set_length(size);
                bar.set_position(resumed_from);
                bar.set_message(if resumed_from > 0 { "resumed" } else { "" });
            }
            PullEvent::LayerProgress {
                digest,
                done,
                total,
            } => self.bar(&digest, total).set_position(done),
            PullEvent::LayerRetry {
                digest, attempt, ..
            } => self.bar(&digest, 0).set_message(format!("retry {attempt}")),
            PullEvent::LayerDone {
                digest,
                size,
                cached,
            } => {
                let bar = self.bar(&digest, size);
                bar.set_length(size);
                bar.set_position(size);
                bar.finish_with_message(if cached { "cached" } else { "done" });
            }
            PullEvent::Done { .. } => {}
        }
    }
}

/// Sizes as people read them, in binary units ("1.50 KiB").
pub fn human_bytes(n: u64) -> String {
    HumanBytes(n).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_bytes_reads_well() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1536), "1.50 KiB");
        assert_eq!(human_bytes(300 << 20), "300.00 MiB");
    }

    /// What a tty does with "\n" (ONLCR): the in-memory terminal needs
    /// the carriage return spelled out.
    struct ToTerm(indicatif::InMemoryTerm);

    impl Write for ToTerm {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            use indicatif::TermLike;
            let text = String::from_utf8_lossy(b).replace('\n', "\r\n");
            self.0.write_str(&text)?;
            Ok(b.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    static TERM: OnceLock<indicatif::InMemoryTerm> = OnceLock::new();

    #[test]
    fn log_lines_and_bars_share_the_terminal() {
        use tracing_subscriber::fmt::MakeWriter;
        let term = TERM.get_or_init(|| indicatif::InMemoryTerm::new(12, 100));
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::term_like_with_hz(
            Box::new(term.clone()),
            200,
        ));
        let bars = TerminalBars::on(multi.clone());
        let logs = LogWriter::new(multi, || Box::new(ToTerm(TERM.get().unwrap().clone())));
        let a = Digest::of(b"a");
        let b = Digest::of(b"b");
        for d in [&a, &b] {
            bars.event(PullEvent::LayerStarted {
                digest: d.clone(),
                size: 4 << 20,
                resumed_from: 0,
            });
            bars.event(PullEvent::LayerProgress {
                digest: d.clone(),
                done: 1 << 20,
                total: 4 << 20,
            });
        }
        for i in 0..3 {
            let mut w = logs.make_writer();
            writeln!(w, "log line {i}: layer ready").unwrap();
            drop(w);
            std::thread::sleep(std::time::Duration::from_millis(5));
            bars.event(PullEvent::LayerProgress {
                digest: a.clone(),
                done: (2 + i) << 20,
                total: 4 << 20,
            });
        }
        let screen = term.contents();
        let lines: Vec<&str> = screen.lines().map(str::trim_end).collect();
        // Every log line whole, on its own line, in order, above the bars.
        let logged: Vec<&str> = lines
            .iter()
            .copied()
            .filter(|l| l.contains("log line"))
            .collect();
        assert_eq!(
            logged,
            [
                "log line 0: layer ready",
                "log line 1: layer ready",
                "log line 2: layer ready"
            ],
            "screen:\n{screen}"
        );
        // Each bar once, below the log lines, and not torn.
        for d in [&a, &b] {
            let at: Vec<usize> = lines
                .iter()
                .enumerate()
                .filter(|(_, l)| l.starts_with(&d.short()))
                .map(|(i, _)| i)
                .collect();
            assert_eq!(at.len(), 1, "one bar for {}:\n{screen}", d.short());
            assert!(at[0] > 2, "bars below the log:\n{screen}");
            assert!(lines[at[0]].contains("/4.00 MiB"), "{screen}");
        }
    }

    #[test]
    fn json_events_are_tagged() {
        let e = PullEvent::LayerDone {
            digest: Digest::of(b""),
            size: 3,
            cached: true,
        };
        let v: serde_json::Value = serde_json::to_value(&e).unwrap();
        assert_eq!(v["event"], "layer_done");
        assert_eq!(v["cached"], true);
    }
}
