//! Showing pull progress: per-layer bars on a terminal, one JSON object per
//! event for scripts, plain lines otherwise.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Mutex;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::digest::Digest;
use crate::pull::{ProgressSink, PullEvent};

/// One JSON object per line on stdout.
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
pub struct TerminalBars {
    multi: MultiProgress,
    bars: Mutex<HashMap<Digest, ProgressBar>>,
}

impl Default for TerminalBars {
    fn default() -> Self {
        TerminalBars {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
            bars: Mutex::default(),
        }
    }
}

impl TerminalBars {
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

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_bytes_reads_well() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(300 << 20), "300.0 MiB");
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
