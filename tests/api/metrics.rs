//! Metrics end to end: a real `cvmd run` of a busybox workspace pulled from
//! the harness registry under real runc, scraped through `cvmctl metrics`
//! and on HTTP (CVMD_METRICS_ADDR), checked against what happened: the
//! pull's bytes are the image's layer blob sizes, the first run misses the
//! cache and a second run hits it, an exec and a restart are counted.
//!
//! Needs root, runc and docker-registry; skips with a reason otherwise.

#[allow(dead_code)] // the exec and permission helpers are control_api.rs's
use crate::common::prereq;
use std::io::{Read, Write};
use std::time::Duration;

use crate::common::api::*;
use crate::common::layers::*;
use crate::common::Registry;

/// The value of the sample whose name and labels are exactly `series`.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
        .parse()
        .unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn http_get(port: u16, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn scrape(ws: &Running) -> String {
    let out = ws.run(&["metrics"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn metrics_over_the_socket_and_http_match_a_real_run() {
    require!(can_run());
    require!(prereq::runc());
    let sandbox = Sandbox::new();
    let reg = Registry::plain().unwrap();
    let image = chatty_image();
    let reference = push(&reg, "metrics/ws", "v1", &image);
    let layer_bytes: u64 = image.layers.iter().map(|l| l.size).sum();
    let cvmd = CvmdOnCache::new(&sandbox.cache(), &reg.host());

    // First run: a cold cache.
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let ws = start_cvmd(&cvmd, &reference, &["--metrics-addr", &addr]);
    ws.wait_for("running", |s| s["phase"] == "running");
    let exec = ws.run(&["exec", "--", "/bin/sh", "-c", "exit 0"]);
    assert_eq!(exec.status.code(), Some(0), "{}", text(&exec));

    let t = scrape(&ws);
    assert!(t.ends_with("# EOF\n"), "OpenMetrics text: {t}");
    assert_eq!(sample(&t, "cvmd_pull_bytes_total"), layer_bytes as f64);
    assert_eq!(sample(&t, "cvmd_cache_misses_total{level=\"image\"}"), 1.0);
    assert_eq!(sample(&t, "cvmd_cache_hits_total{level=\"image\"}"), 0.0);
    assert_eq!(
        sample(&t, "cvmd_cache_misses_total{level=\"layer\"}"),
        image.layers.len() as f64
    );
    assert_eq!(sample(&t, "cvmd_pull_duration_seconds_count"), 1.0);
    assert_eq!(sample(&t, "cvmd_workspace_phase{phase=\"running\"}"), 1.0);
    assert_eq!(sample(&t, "cvmd_workspace_phase{phase=\"pull\"}"), 0.0);
    let status = ws.status();
    let pull = &status["timeline"][1];
    assert_eq!(pull["name"], "pull");
    let pull_s = pull["duration_ms"].as_f64().unwrap() / 1e3;
    let got = sample(&t, "cvmd_phase_duration_seconds{phase=\"pull\"}");
    assert!((got - pull_s).abs() < 0.002, "{got} s vs status {pull_s} s");
    assert!(sample(&t, "cvmd_pull_duration_seconds_sum") <= got + 0.001);
    assert!(sample(&t, "cvmd_phase_start_seconds{phase=\"running\"}") > 0.0);
    assert_eq!(sample(&t, "cvmd_exec_sessions_total"), 1.0);
    assert_eq!(sample(&t, "cvmd_exec_sessions_active"), 0.0);
    assert_eq!(sample(&t, "cvmd_restarts_total"), 0.0);
    assert_eq!(sample(&t, "cvmd_oom_kills_total"), 0.0);
    assert!(
        sample(&t, "cvmd_cache_size_bytes") >= layer_bytes as f64,
        "the cache holds at least the blobs"
    );
    assert_eq!(sample(&t, "cvmd_cache_budget_bytes"), 0.0);

    // The same on HTTP, as Prometheus scrapes it.
    let http = http_get(port, "/metrics");
    assert!(http.starts_with("HTTP/1.1 200"), "{http}");
    assert!(
        http.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text"),
        "{http}"
    );
    let body = http.split("\r\n\r\n").nth(1).unwrap();
    assert_eq!(sample(body, "cvmd_pull_bytes_total"), layer_bytes as f64);
    assert_eq!(sample(body, "cvmd_exec_sessions_total"), 1.0);

    // A restart is counted.
    let restart = ws.run(&["restart"]);
    assert_eq!(restart.status.code(), Some(0), "{}", text(&restart));
    ws.wait_for("running again", |s| {
        s["phase"] == "running" && s["boots"] == 2
    });
    assert_eq!(sample(&scrape(&ws), "cvmd_restarts_total"), 1.0);
    let (code, stderr) = ws.finish();
    assert_eq!(code, Some(3), "{stderr}");

    // Second run on the same cache: a hit, nothing downloaded.
    let ws = start_cvmd(&cvmd, &reference, &["--cache-budget", "1GiB"]);
    ws.wait_for("running", |s| s["phase"] == "running");
    let t = scrape(&ws);
    assert_eq!(sample(&t, "cvmd_cache_hits_total{level=\"image\"}"), 1.0);
    assert_eq!(sample(&t, "cvmd_cache_misses_total{level=\"image\"}"), 0.0);
    assert_eq!(sample(&t, "cvmd_pull_bytes_total"), 0.0);
    assert_eq!(sample(&t, "cvmd_pull_duration_seconds_count"), 0.0);
    assert_eq!(sample(&t, "cvmd_cache_budget_bytes"), (1u64 << 30) as f64);
    ws.finish();
}

/// A sample's value, or `None` while the metric has not appeared.
fn try_sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
}

/// Scrapes `port` until `ready` holds of the text, for at most a minute.
fn scrape_until(port: u16, what: &str, ready: impl Fn(&str) -> bool) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let body = std::net::TcpStream::connect(("127.0.0.1", port))
            .ok()
            .map(|_| http_get(port, "/metrics"))
            .and_then(|r| r.split("\r\n\r\n").nth(1).map(str::to_string));
        if let Some(body) = body.filter(|b| ready(b)) {
            return body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {what} within a minute"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The prefetch DaemonSet's loop (`cvmd prefetch --every`): it serves the
/// cache's metrics while it runs, counts its rounds and the images that
/// failed, and ends with 0 on SIGTERM. One image that cannot be pulled
/// fails the round but not the others; a pull that fetched layers is
/// timed into the pull-duration histogram.
#[test]
fn prefetch_every_serves_cache_metrics_and_ends_on_sigterm() {
    require!(can_run());
    let sandbox = Sandbox::new();
    let reg = Registry::plain().unwrap();
    let image = chatty_image();
    let reference = push(&reg, "metrics/prefetch", "v1", &image);
    let layer_bytes: u64 = image.layers.iter().map(|l| l.size).sum();
    let missing = format!("{}/metrics/nothing-here:v1", reg.host());
    let cvmd = CvmdOnCache::new(&sandbox.cache(), &reg.host());
    let serve = |images: &[&str]| {
        let port = free_port();
        let mut args = vec!["prefetch", "--every", "1"];
        args.extend_from_slice(images);
        let child = cvmd
            .command(&args)
            .env("CVMD_METRICS_ADDR", format!("127.0.0.1:{port}"))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        (port, child)
    };

    // A good image and one the registry does not have: rounds fail.
    let (port, child) = serve(&[&missing, &reference]);
    let t = scrape_until(port, "two failed rounds", |t| {
        try_sample(t, "cvmd_prefetch_runs_total{outcome=\"failed\"}") >= Some(2.0)
    });
    assert_eq!(
        try_sample(&t, "cvmd_prefetch_runs_total{outcome=\"ok\"}"),
        None
    );
    assert_eq!(sample(&t, "cvmd_prefetch_failed_images"), 1.0);
    assert_eq!(sample(&t, "cvmd_prefetch_last_success_seconds"), 0.0);
    assert_eq!(sample(&t, "cvmd_pull_bytes_total"), layer_bytes as f64);
    let layers = image.layers.len() as f64;
    assert_eq!(
        sample(&t, "cvmd_cache_misses_total{level=\"layer\"}"),
        layers
    );
    assert!(sample(&t, "cvmd_cache_hits_total{level=\"layer\"}") >= layers);
    assert!(sample(&t, "cvmd_cache_size_bytes") >= layer_bytes as f64);
    // The one pull that fetched layers is timed; the rounds after it found
    // the image cached.
    assert_eq!(sample(&t, "cvmd_pull_duration_seconds_count"), 1.0);
    let began = std::time::Instant::now();
    let out = stop(child);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        began.elapsed() < Duration::from_secs(10),
        "SIGTERM took {:?}",
        began.elapsed()
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("1 of 2 images failed"), "{stderr}");
    assert!(stderr.contains("nothing-here"), "{stderr}");

    // The good image alone: rounds succeed from the cache, nothing fetched.
    let (port, child) = serve(&[&reference]);
    let t = scrape_until(port, "a good round", |t| {
        try_sample(t, "cvmd_prefetch_runs_total{outcome=\"ok\"}") >= Some(1.0)
    });
    assert_eq!(sample(&t, "cvmd_prefetch_failed_images"), 0.0);
    assert!(sample(&t, "cvmd_prefetch_last_success_seconds") > 1.7e9);
    assert_eq!(sample(&t, "cvmd_pull_bytes_total"), 0.0);
    assert_eq!(sample(&t, "cvmd_pull_duration_seconds_count"), 0.0);
    let out = stop(child);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("metrics/prefetch") && stdout.contains("@sha256:"),
        "pinned: {stdout}"
    );
}
