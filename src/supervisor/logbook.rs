//! The last lines of the workspace's stdout/stderr and of cvmd's own log,
//! kept for `cvmctl logs` (tail) and broadcast to followers.
//!
//! One per process ([`LogBook::global`]) because cvmd's own log arrives
//! through the tracing subscriber, which is process-wide and set up before
//! `cvmd run` knows anything else.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use tokio::sync::broadcast;

/// Lines kept per source group (workspace, cvmd), so a chatty workspace
/// does not push cvmd's own lines out of the tail, nor the reverse.
pub const KEPT_LINES: usize = 2000;
/// A longer line is cut here (a workspace may print a megabyte without a
/// newline; the API's messages stay small).
pub const MAX_LINE: usize = 16 << 10;
/// Bytes of lines kept per source group: 2000 lines of 16 KiB would be
/// 32 MiB in PID 1 for a workspace that floods its stdout; 4 MiB keeps
/// thousands of ordinary lines.
pub const KEPT_BYTES: usize = 4 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The workspace's stdout.
    Stdout,
    /// The workspace's stderr.
    Stderr,
    /// cvmd's own log.
    Cvmd,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Stdout => "stdout",
            Source::Stderr => "stderr",
            Source::Cvmd => "cvmd",
        }
    }

    fn is_workspace(self) -> bool {
        self != Source::Cvmd
    }
}

/// Which lines a reader wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    Workspace,
    Cvmd,
    All,
}

impl Filter {
    /// The API's `source` field; empty is all.
    pub fn parse(s: &str) -> Option<Filter> {
        match s {
            "" | "all" => Some(Filter::All),
            "workspace" => Some(Filter::Workspace),
            "cvmd" => Some(Filter::Cvmd),
            _ => None,
        }
    }

    pub fn wants(self, source: Source) -> bool {
        match self {
            Filter::All => true,
            Filter::Workspace => source.is_workspace(),
            Filter::Cvmd => !source.is_workspace(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// Orders lines of both groups for a merged tail.
    pub seq: u64,
    pub time: SystemTime,
    pub source: Source,
    /// For cvmd's lines: warn and error become warning events.
    pub level: tracing::Level,
    pub line: String,
}

#[derive(Debug, Default)]
struct Rings {
    seq: u64,
    workspace: Ring,
    cvmd: Ring,
}

/// Lines of one group, bounded by [`KEPT_LINES`] and [`KEPT_BYTES`].
#[derive(Debug, Default)]
struct Ring {
    lines: VecDeque<LogLine>,
    bytes: usize,
}

impl Ring {
    fn push(&mut self, entry: LogLine) {
        while self.lines.len() >= KEPT_LINES || self.bytes + entry.line.len() > KEPT_BYTES {
            let Some(old) = self.lines.pop_front() else {
                break;
            };
            self.bytes -= old.line.len();
        }
        self.bytes += entry.line.len();
        self.lines.push_back(entry);
    }
}

#[derive(Debug)]
pub struct LogBook {
    rings: Mutex<Rings>,
    tx: broadcast::Sender<LogLine>,
}

impl Default for LogBook {
    fn default() -> Self {
        LogBook {
            rings: Mutex::default(),
            tx: broadcast::channel(1024).0,
        }
    }
}

impl LogBook {
    pub fn global() -> Arc<LogBook> {
        static BOOK: OnceLock<Arc<LogBook>> = OnceLock::new();
        BOOK.get_or_init(Arc::default).clone()
    }

    pub fn push(&self, source: Source, level: tracing::Level, line: &str) {
        let mut line = line.trim_end_matches(['\n', '\r']).to_string();
        if line.len() > MAX_LINE {
            let mut cut = MAX_LINE;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            line.truncate(cut);
        }
        let mut rings = self.rings.lock().unwrap_or_else(|e| e.into_inner());
        rings.seq += 1;
        let entry = LogLine {
            seq: rings.seq,
            time: SystemTime::now(),
            source,
            level,
            line,
        };
        let ring = if source.is_workspace() {
            &mut rings.workspace
        } else {
            &mut rings.cvmd
        };
        ring.push(entry.clone());
        // Sent under the lock so a reader that takes the tail and then
        // subscribes (also under the lock) neither misses nor repeats a line.
        let _ = self.tx.send(entry);
    }

    /// The last `n` lines `filter` wants, oldest first, and a receiver for
    /// the lines after them.
    pub fn tail_and_follow(
        &self,
        filter: Filter,
        n: usize,
    ) -> (Vec<LogLine>, broadcast::Receiver<LogLine>) {
        let rings = self.rings.lock().unwrap_or_else(|e| e.into_inner());
        let rx = self.tx.subscribe();
        (tail(&rings, filter, n), rx)
    }

    pub fn subscribe(&self) -> broadcast::Receiver<LogLine> {
        self.tx.subscribe()
    }
}

fn tail(rings: &Rings, filter: Filter, n: usize) -> Vec<LogLine> {
    let mut lines: Vec<LogLine> = rings
        .workspace
        .lines
        .iter()
        .chain(rings.cvmd.lines.iter())
        .filter(|l| filter.wants(l.source))
        .cloned()
        .collect();
    lines.sort_by_key(|l| l.seq);
    let skip = lines.len().saturating_sub(n);
    lines.split_off(skip)
}

/// A tracing layer that copies cvmd's own events into the [`LogBook`] as
/// one line each (message, then fields as `key=value`). The workspace's
/// output is logged under the `workspace` target and recorded by the
/// reader of its pipes, so it is skipped here.
#[derive(Debug)]
pub struct BookLayer {
    pub book: Arc<LogBook>,
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for BookLayer {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let meta = event.metadata();
        if meta.target() == WORKSPACE_TARGET {
            return;
        }
        let mut line = LineVisitor::default();
        event.record(&mut line);
        self.book
            .push(Source::Cvmd, *meta.level(), &line.finish(meta.target()));
    }
}

/// The tracing target of the workspace's own output lines.
pub const WORKSPACE_TARGET: &str = "workspace";

#[derive(Default)]
struct LineVisitor {
    message: String,
    fields: String,
}

impl LineVisitor {
    fn finish(self, target: &str) -> String {
        let mut out = format!("{target}: {}", self.message);
        out.push_str(&self.fields);
        out
    }
}

impl tracing::field::Visit for LineVisitor {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        } else {
            self.fields
                .push_str(&format!(" {}={value:?}", field.name()));
        }
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_string();
        } else {
            self.fields.push_str(&format!(" {}={value}", field.name()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::Level;

    #[test]
    fn tail_merges_sources_in_order_and_filters() {
        let book = LogBook::default();
        book.push(Source::Stdout, Level::INFO, "one\n");
        book.push(Source::Cvmd, Level::INFO, "two");
        book.push(Source::Stderr, Level::INFO, "three");
        let (all, _) = book.tail_and_follow(Filter::All, 10);
        let text: Vec<_> = all.iter().map(|l| l.line.as_str()).collect();
        assert_eq!(text, ["one", "two", "three"]);
        let (ws, _) = book.tail_and_follow(Filter::Workspace, 1);
        assert_eq!(ws[0].line, "three");
        let (c, _) = book.tail_and_follow(Filter::Cvmd, 5);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].source, Source::Cvmd);
        assert!(book.tail_and_follow(Filter::All, 0).0.is_empty());
    }

    #[test]
    fn rings_are_bounded_per_group_and_lines_cut() {
        let book = LogBook::default();
        book.push(Source::Cvmd, Level::INFO, "kept");
        for i in 0..KEPT_LINES + 5 {
            book.push(Source::Stdout, Level::INFO, &i.to_string());
        }
        let (ws, _) = book.tail_and_follow(Filter::Workspace, usize::MAX);
        assert_eq!(ws.len(), KEPT_LINES);
        assert_eq!(ws[0].line, "5");
        let (c, _) = book.tail_and_follow(Filter::Cvmd, 10);
        assert_eq!(c[0].line, "kept", "a chatty workspace keeps cvmd's lines");
        book.push(Source::Stdout, Level::INFO, &"é".repeat(MAX_LINE));
        let (last, _) = book.tail_and_follow(Filter::Workspace, 1);
        assert!(last[0].line.len() <= MAX_LINE);
    }

    #[test]
    fn rings_are_bounded_in_bytes_too() {
        let book = LogBook::default();
        let long = "x".repeat(MAX_LINE);
        for _ in 0..KEPT_LINES {
            book.push(Source::Stdout, Level::INFO, &long);
        }
        book.push(Source::Stdout, Level::INFO, "last");
        let (ws, _) = book.tail_and_follow(Filter::Workspace, usize::MAX);
        let bytes: usize = ws.iter().map(|l| l.line.len()).sum();
        assert!(bytes <= KEPT_BYTES, "{bytes} bytes kept");
        assert_eq!(ws.len(), KEPT_BYTES / MAX_LINE);
        assert_eq!(ws.last().unwrap().line, "last");
    }

    #[test]
    fn followers_get_lines_after_the_tail() {
        let book = LogBook::default();
        book.push(Source::Stdout, Level::INFO, "old");
        let (tail, mut rx) = book.tail_and_follow(Filter::All, 10);
        assert_eq!(tail.len(), 1);
        book.push(Source::Stdout, Level::INFO, "new");
        assert_eq!(rx.try_recv().unwrap().line, "new");
    }

    #[test]
    fn filter_names() {
        assert_eq!(Filter::parse(""), Some(Filter::All));
        assert_eq!(Filter::parse("workspace"), Some(Filter::Workspace));
        assert_eq!(Filter::parse("../etc"), None);
    }
}
