//! The checklist a person reads: one aligned line per check, the fix on
//! the line below when there is one.

use super::{Report, Status};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Symbols {
    /// ✓ ! ✗ - on a terminal.
    Unicode,
    /// ok / WARN / FAIL / skip, for logs and pipes.
    Ascii,
}

fn mark(status: Status, symbols: Symbols) -> &'static str {
    match (symbols, status) {
        (Symbols::Unicode, Status::Ok) => "✓",
        (Symbols::Unicode, Status::Warn) => "!",
        (Symbols::Unicode, Status::Fail) => "✗",
        (Symbols::Unicode, Status::Skip) => "-",
        (Symbols::Ascii, Status::Ok) => "ok  ",
        (Symbols::Ascii, Status::Warn) => "WARN",
        (Symbols::Ascii, Status::Fail) => "FAIL",
        (Symbols::Ascii, Status::Skip) => "skip",
    }
}

pub fn render(report: &Report, symbols: Symbols) -> String {
    let width = report
        .checks
        .iter()
        .map(|c| c.name.len())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for c in &report.checks {
        out.push_str(&format!(
            "{} {:width$}  {}\n",
            mark(c.status, symbols),
            c.name,
            c.detail
        ));
        if let (Some(fix), Status::Warn | Status::Fail) = (&c.fix, c.status) {
            let indent = mark(c.status, symbols).chars().count() + 1 + width + 2;
            out.push_str(&format!("{:indent$}fix: {fix}\n", ""));
        }
    }
    let fails = report.failures().count();
    let warns = report
        .checks
        .iter()
        .filter(|c| c.status == Status::Warn)
        .count();
    out.push_str(&if fails == 0 {
        format!("ready for {} ({warns} warning(s))\n", report.runtime)
    } else {
        format!(
            "not ready for {}: {fails} failed, {warns} warning(s)\n",
            report.runtime
        )
    });
    if fails + warns > 0 {
        // The cluster guide's requirement table is keyed by check name.
        out.push_str("what each check requires of a node, per cloud: deploy/clusters/README.md\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preflight::Check;

    #[test]
    fn aligned_with_fixes_under_failures() {
        let r = Report::new(
            "sysbox-runc",
            vec![
                Check::ok("kernel", "6.18"),
                Check::fail("sysbox-runc", "not found", "install it"),
                Check::skip("nvidia-gpus", "none"),
            ],
        );
        let text = render(&r, Symbols::Ascii);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "ok   kernel       6.18");
        assert_eq!(lines[1], "FAIL sysbox-runc  not found");
        assert_eq!(lines[2], "                  fix: install it");
        assert_eq!(lines[3], "skip nvidia-gpus  none");
        assert_eq!(
            lines[4],
            "not ready for sysbox-runc: 1 failed, 0 warning(s)"
        );
        let text = render(&r, Symbols::Unicode);
        assert!(
            text.starts_with(
                "✓ kernel       6.18\n✗ sysbox-runc  not found\n               fix: install it\n"
            ),
            "{text}"
        );
    }
}
