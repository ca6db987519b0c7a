//! The soak benchmark's numbers from a churn report (bench/soak.sh runs the
//! ignored `node_soak` test, which prints them).

use std::time::Duration;

use super::churn::{ChurnReport, Outcome};

/// The `pct`th percentile of `sorted` (nearest rank).
fn percentile(sorted: &[Duration], pct: usize) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (sorted.len() * pct).div_ceil(100).max(1);
    Some(sorted[rank - 1])
}

fn ms(d: Option<Duration>) -> String {
    d.map_or("-".into(), |d| format!("{} ms", d.as_millis()))
}

/// A markdown table of the soak's results.
pub fn table(r: &ChurnReport, pods: usize, budget: &str, budget_bytes: u64) -> String {
    let mut cached: Vec<Duration> = r
        .starts
        .iter()
        .filter(|s| s.cached)
        .filter_map(|s| match s.outcome {
            Outcome::Running(d) if !d.is_zero() => Some(d),
            _ => None,
        })
        .collect();
    cached.sort();
    let count = |f: fn(&Outcome) -> bool| r.starts.iter().filter(|s| f(&s.outcome)).count();
    let minutes = r.elapsed.as_secs_f64() / 60.0;
    let rss: Vec<u64> = r.peak_rss_kib.values().copied().collect();
    let mut out = String::new();
    out.push_str("| metric | value |\n|---|---|\n");
    let mut row = |k: &str, v: String| out.push_str(&format!("| {k} | {v} |\n"));
    row("pods", pods.to_string());
    row("duration", format!("{:.1} min", minutes));
    row("starts", r.starts.len().to_string());
    row(
        "starts per minute",
        format!("{:.1}", r.starts.len() as f64 / minutes),
    );
    row(
        "reached running",
        count(|o| matches!(o, Outcome::Running(_))).to_string(),
    );
    row(
        "SIGKILLed before running (on purpose)",
        count(|o| matches!(o, Outcome::Killed)).to_string(),
    );
    row(
        "failures (must be 0)",
        (count(|o| matches!(o, Outcome::Failed(_))) + r.problems.len()).to_string(),
    );
    row("cached-image starts timed", cached.len().to_string());
    row("start of a cached image, p50", ms(percentile(&cached, 50)));
    row("start of a cached image, p99", ms(percentile(&cached, 99)));
    row("gc and prefetch pods", r.one_shots.to_string());
    row(
        "cvmd peak RSS per pod (max / min)",
        format!(
            "{} / {} MiB",
            rss.iter().max().map_or(0, |k| k / 1024),
            rss.iter().min().map_or(0, |k| k / 1024)
        ),
    );
    row(
        "cvmd peak RSS by pod slot",
        r.peak_rss_kib
            .iter()
            .map(|(slot, kib)| format!("{slot}: {} MiB", kib / 1024))
            .collect::<Vec<_>>()
            .join(", "),
    );
    row(
        "cache peak / budget",
        format!(
            "{:.1} MiB / {budget} ({:.0}%)",
            r.cache_peak_bytes as f64 / 1048576.0,
            100.0 * r.cache_peak_bytes as f64 / budget_bytes.max(1) as f64
        ),
    );
    out
}

#[test]
fn percentiles_are_nearest_rank() {
    let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
    assert_eq!(percentile(&v, 50), Some(Duration::from_millis(50)));
    assert_eq!(percentile(&v, 99), Some(Duration::from_millis(99)));
    assert_eq!(percentile(&v[..1], 99), Some(Duration::from_millis(1)));
    assert_eq!(percentile(&[], 50), None);
}
