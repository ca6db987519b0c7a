//! `cvmd pull` on a terminal (a pseudo-terminal the test opens): the
//! per-layer bars and cvmd's log lines share stderr, and the screen a
//! person sees at the end (the output replayed through a VT100 emulator)
//! holds each log line whole and each bar once. A real pull from the
//! harness registry, throttled so the bars are drawn while logs arrive.
//!
//! Needs root and docker-registry; skips with a reason otherwise.

use std::io::Read;
use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};

use crate::common::layers::*;
use crate::common::Registry;

#[test]
fn pull_bars_and_log_lines_do_not_garble_each_other() {
    require!(can_run());
    let sandbox = Sandbox::new();
    let reg = Registry::plain().unwrap();
    let proxy = crate::common::proxy::FaultProxy::start(&reg.url());
    let img = crate::common::image::ImageBuilder::new(crate::common::image::Format::Oci)
        .layer(
            crate::common::image::LayerBuilder::new()
                .file("a", &vec![7u8; 600 << 10], 0o644)
                .build(crate::common::image::Compression::None),
        )
        .layer(
            crate::common::image::LayerBuilder::new()
                .file("b", &vec![8u8; 900 << 10], 0o644)
                .build(crate::common::image::Compression::None),
        )
        .build();
    push(&reg, "term/app", "v1", &img);
    proxy.throttle_blobs(768 << 10);
    let reference = format!("{}/term/app:v1", proxy.host());

    let size = nix::pty::Winsize {
        ws_row: 40,
        // Wide enough that no log line wraps (they carry the span fields).
        ws_col: 500,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(Some(&size), None).unwrap();
    let stderr: OwnedFd = pty.slave;
    let mut child = Command::new(crate::common::cvmd_bin())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", sandbox.cache())
        .env("TERM", "xterm")
        .args(["pull", &reference])
        .arg("--cache-dir")
        .arg(sandbox.cache())
        .args(["--insecure-registries", &proxy.host()])
        .args(["--platform", "linux/amd64"])
        .args(["--log-level", "info", "--log-format", "text"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(stderr))
        .spawn()
        .unwrap();
    // The child holds the terminal now; reading ends (EIO) when it exits.
    let mut master = std::fs::File::from(pty.master);
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let mut buf = [0u8; 8192];
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        out
    });
    let status = child.wait().unwrap();
    let raw = reader.join().unwrap();
    assert!(status.success(), "{}", String::from_utf8_lossy(&raw));

    let mut vt = vt100::Parser::new(size.ws_row, size.ws_col, 0);
    vt.process(&raw);
    // Row by row: indicatif pads its lines to the width, which an
    // emulator's contents() would join with the next row.
    let rows: Vec<String> = vt
        .screen()
        .rows(0, size.ws_col)
        .map(|r| r.trim_end().to_string())
        .collect();
    let screen = rows.join("\n");
    let lines: Vec<&str> = rows.iter().map(String::as_str).collect();
    // The log's lines: whole (level, target, message), never under a bar.
    let unpacked: Vec<&&str> = lines
        .iter()
        .filter(|l| l.contains("layer unpacked"))
        .collect();
    assert_eq!(unpacked.len(), 2, "a log line per layer:\n{screen}");
    for l in &unpacked {
        assert!(l.contains(" INFO "), "a whole log line: {l:?}\n{screen}");
        assert!(
            !l.contains("[="),
            "a bar through a log line: {l:?}\n{screen}"
        );
    }
    // Each layer's bar once, finished.
    for layer in &img.layers {
        let short = &layer.digest[..19];
        let bars: Vec<&&str> = lines.iter().filter(|l| l.starts_with(short)).collect();
        assert_eq!(bars.len(), 1, "one bar for {short}:\n{screen}");
        assert!(bars[0].contains("done"), "{screen}");
    }
}
