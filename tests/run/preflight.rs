//! `cvmd preflight` on this machine reports what the machine really has
//! (each fact read here independently), its exit code follows the chosen
//! runtime's hard requirements, a missing privilege is never blamed on the
//! kernel, and `cvmd run` logs the findings before the image phase.
//!
//! Needs root (the ID-mapped mount probes); skips with a reason otherwise.

use crate::common::prereq;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

fn sysbox_installed() -> bool {
    [
        "/usr/local/bin",
        "/usr/bin",
        "/usr/sbin",
        "/bin",
        "/sbin",
        "/usr/local/sbin",
    ]
    .iter()
    .any(|d| Path::new(d).join("sysbox-runc").exists())
}

fn cvmd(cache: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(crate::common::cvmd_bin());
    c.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", cache)
        .arg("--cache-dir")
        .arg(cache)
        .args(args)
        .stdin(Stdio::null());
    c
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}):\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn check<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name} in {report:#}"))
}

/// The cgroup layout as this test reads it from mountinfo.
fn cgroup_layout() -> &'static str {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let fstypes: Vec<&str> = info
        .lines()
        .filter_map(|l| l.split(" - ").nth(1)?.split(' ').next())
        .collect();
    match (fstypes.contains(&"cgroup"), fstypes.contains(&"cgroup2")) {
        (true, true) => "hybrid",
        (true, false) => "v1",
        (false, true) => "v2",
        (false, false) => "none",
    }
}

#[test]
fn preflight_json_reports_this_machine() {
    require!(prereq::root("preflight's mount probes"));
    let cache = tempfile::tempdir().unwrap();
    let out = cvmd(cache.path(), &["--runtime", "runc", "preflight", "--json"])
        .output()
        .unwrap();
    let r = json(&out);
    assert_eq!(r["runtime"], "runc");

    let release = rustix::system::uname()
        .release()
        .to_string_lossy()
        .into_owned();
    let kernel = check(&r, "kernel");
    assert!(
        kernel["detail"].as_str().unwrap().starts_with(&release),
        "{kernel}"
    );

    let cg = check(&r, "cgroups");
    assert!(
        cg["detail"].as_str().unwrap().starts_with(cgroup_layout()),
        "the test reads {} from mountinfo: {cg}",
        cgroup_layout()
    );

    let fuse = check(&r, "dev-fuse");
    let has_fuse = Path::new("/dev/fuse").exists();
    assert_eq!(fuse["status"] == "ok", has_fuse, "{fuse}");
    // CVMD_LAZY defaults to auto: lazy start opens /dev/fuse itself.
    let lazy = check(&r, "lazy-start");
    let opens = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .is_ok();
    assert_eq!(lazy["status"] == "ok", opens, "{lazy}");
    let tun = check(&r, "dev-net-tun");
    assert_eq!(
        tun["status"] == "ok",
        Path::new("/dev/net/tun").exists(),
        "{tun}"
    );
    let gpus = check(&r, "nvidia-gpus");
    assert_eq!(
        gpus["status"] == "skip",
        !Path::new("/dev/nvidia0").exists(),
        "{gpus}"
    );

    for name in ["sysbox-runc", "sysbox-mgr", "sysbox-fs", "sysbox-data-root"] {
        assert_eq!(check(&r, name)["status"], "skip", "runc: {name} skipped");
    }
    // Root on a kernel with ID-mapped mounts (MACHINE-NOTES.md: they work
    // here): the real probe in the cache dir passes, and nothing is left.
    let idm = check(&r, "idmapped-mounts");
    let v: Vec<u32> = release
        .split(|c: char| !c.is_ascii_digit())
        .take(2)
        .map(|n| n.parse().unwrap())
        .collect();
    if (v[0], v[1]) >= (5, 19) {
        assert_eq!(idm["status"], "ok", "{idm}");
        assert_eq!(check(&r, "overlay-idmapped")["status"], "ok");
        assert_eq!(
            check(&r, "shiftfs")["status"],
            "skip",
            "runc: shiftfs skipped"
        );
    }
    // Only the record of the probes that worked (not run again this boot).
    let left: Vec<_> = std::fs::read_dir(cache.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        left.iter().all(|n| n == ".preflight-worked"),
        "the probe left {left:?}"
    );
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !info.contains(cache.path().to_str().unwrap()),
        "a probe mount is left"
    );

    // Exit code: 0 iff no check failed.
    let failed = r["checks"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["status"] == "fail");
    assert_eq!(r["passed"], !failed);
    assert_eq!(out.status.code(), Some(if failed { 1 } else { 0 }), "{r:#}");
}

#[test]
fn preflight_with_sysbox_absent_fails_naming_sysbox_runc() {
    require!(prereq::root("preflight's mount probes"));
    if sysbox_installed() {
        crate::prereq_missing!("sysbox-runc is installed here");
        return;
    }
    let cache = tempfile::tempdir().unwrap();
    let out = cvmd(
        cache.path(),
        &["--runtime", "sysbox-runc", "preflight", "--json"],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let r = json(&out);
    assert_eq!(r["passed"], false);
    let c = check(&r, "sysbox-runc");
    assert_eq!(c["status"], "fail");
    assert!(
        c["detail"]
            .as_str()
            .unwrap()
            .starts_with("sysbox-runc not found"),
        "{c}"
    );
    assert!(
        c["fix"].as_str().unwrap().contains("CVMD_RUNTIME=runc"),
        "{c}"
    );

    // The checklist a person reads (stdout is a pipe here: ASCII marks).
    let out = cvmd(cache.path(), &["--runtime", "sysbox-runc", "preflight"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines().any(|l| l.starts_with("FAIL sysbox-runc ")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.trim_start().starts_with("fix: install Sysbox")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("not ready for sysbox-runc")),
        "{text}"
    );
}

#[test]
fn preflight_without_cap_sys_admin_blames_the_privilege_not_the_kernel() {
    require!(prereq::root("preflight's mount probes"));
    require!(prereq::installed("/usr/bin/setpriv"));
    let cache = tempfile::tempdir().unwrap();
    // Dropped from the bounding set, CAP_SYS_ADMIN is gone from root's
    // effective set after exec: an outer container that is not privileged.
    let out = Command::new("/usr/bin/setpriv")
        .args(["--bounding-set", "-sys_admin", "--"])
        .arg(crate::common::cvmd_bin())
        .arg("--cache-dir")
        .arg(cache.path())
        .args(["--runtime", "runc", "preflight", "--json"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let r = json(&out);
    let p = check(&r, "privileges");
    assert_eq!(p["status"], "fail");
    assert!(
        p["detail"].as_str().unwrap().contains("CAP_SYS_ADMIN"),
        "{p}"
    );
    let idm = check(&r, "idmapped-mounts");
    let detail = idm["detail"].as_str().unwrap();
    assert_eq!(idm["status"], "fail", "{idm}");
    assert!(detail.starts_with("not privileged"), "{idm}");
    assert!(!detail.contains("kernel"), "never blames the kernel: {idm}");
    assert_eq!(check(&r, "shiftfs")["status"], "skip", "not called needed");
}

#[test]
fn run_logs_the_findings_and_stops_before_the_pull_on_a_hard_failure() {
    require!(prereq::root("preflight's mount probes"));
    let cache = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let ws = format!("pf-{}", std::process::id());
    // Nothing listens on port 9: a pull would fail; preflight comes first.
    let base = |runtime: &str| {
        let mut c = cvmd(
            cache.path(),
            &[
                "--state-dir",
                state.path().to_str().unwrap(),
                "--workspace",
                &ws,
                "--image",
                "127.0.0.1:9/nothing:v1",
                "--insecure-registries",
                "127.0.0.1:9",
                "--pull-retries",
                "1",
                "--log-format",
                "text",
                "--log-level",
                "debug",
                "--runtime",
                runtime,
                "run",
            ],
        );
        c.stdout(Stdio::null());
        c
    };
    let out = base("runc").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "the pull fails: {stderr}");
    for name in ["kernel", "cgroups", "idmapped-mounts", "dev-fuse"] {
        assert!(
            stderr.contains(&format!("check={name}")),
            "{name} logged: {stderr}"
        );
    }
    let preflight_done = stderr
        .lines()
        .position(|l| l.contains("phase done") && l.contains("phase=\"preflight\""));
    let pull = stderr.lines().position(|l| l.contains("127.0.0.1:9"));
    assert!(preflight_done.is_some(), "preflight is timed: {stderr}");
    assert!(
        preflight_done < pull,
        "preflight before the image phase: {stderr}"
    );

    if sysbox_installed() {
        return;
    }
    let out = base("sysbox-runc").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let last = stderr.lines().last().unwrap();
    assert!(
        last.starts_with("cvmd: error: this host cannot run the workspace with sysbox-runc: sysbox-runc: sysbox-runc not found"),
        "{stderr}"
    );
    assert!(last.contains("to fix: install Sysbox"), "{last}");
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("ERROR") && l.contains("check=sysbox-runc")),
        "failures logged as errors: {stderr}"
    );
    assert!(
        !stderr.contains("cannot connect to registry"),
        "no pull was tried: {stderr}"
    );
}

#[test]
fn shiftfs_is_never_loaded_where_idmapped_mounts_serve() {
    require!(prereq::root("preflight's mount probes"));
    let cache = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let report = json(
        &cvmd(cache.path(), &["--runtime", "runc", "preflight", "--json"])
            .output()
            .unwrap(),
    );
    if check(&report, "idmapped-mounts")["status"] != "ok"
        || check(&report, "overlay-idmapped")["status"] != "ok"
    {
        crate::prereq_missing!("ID-mapped mounts do not serve on this machine");
        return;
    }
    let filesystems = || std::fs::read_to_string("/proc/filesystems").unwrap();
    let before = filesystems();
    let state_arg = ["--state-dir", state.path().to_str().unwrap()];
    let out = cvmd(
        cache.path(),
        &[&state_arg[..], &["shiftfs", "status"]].concat(),
    )
    .output()
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0));
    if !before.contains("shiftfs") {
        assert!(
            text.starts_with("shiftfs: not needed: ID-mapped mounts serve"),
            "{text}"
        );
    }
    let out = cvmd(
        cache.path(),
        &[&state_arg[..], &["shiftfs", "install"]].concat(),
    )
    .output()
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    if !before.contains("shiftfs") {
        assert!(text.contains("nothing was loaded"), "{text}");
        assert!(!filesystems().contains("shiftfs"), "a module was loaded");
        assert!(
            !state.path().join("shiftfs-build").exists(),
            "nothing was built"
        );
    }
}

#[test]
fn the_host_user_namespace_is_warned_about_with_the_fix() {
    require!(prereq::root("preflight's mount probes"));
    let cache = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let mut all = vec!["--runtime", "runc"];
        all.extend_from_slice(args);
        all.extend(["preflight", "--json"]);
        json(&cvmd(cache.path(), &all).output().unwrap())
    };
    let unsafe_report = run(&["--idmap", "host-unsafe"]);
    let c = check(&unsafe_report, "isolation");
    assert_eq!(c["status"], "warn", "{c}");
    assert!(c["detail"].as_str().unwrap().contains("node's root"), "{c}");
    assert!(
        c["fix"].as_str().unwrap().contains("unset CVMD_IDMAP"),
        "{c}"
    );
    // The default: a user namespace of the workspace's own.
    let c = check(&run(&[]), "isolation").clone();
    assert_eq!(c["status"], "ok", "{c}");
    // `none` no longer means the node's root under runc: refused.
    let out = cvmd(
        cache.path(),
        &["--runtime", "runc", "--idmap", "none", "preflight"],
    )
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("host-unsafe"), "{stderr}");
}
