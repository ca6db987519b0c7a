//! The files that ship cvmd, parsed: the outer image's Dockerfile (no
//! Docker engine, no internet on this machine) and the host units
//! `systemd/cvmd.service` and `systemd/cvmd@.service` (which
//! tests/run/systemd_unit.rs also runs under a real systemd, and
//! tests/api/systemd_notify.rs against a fake NOTIFY_SOCKET). Parsed and held to the
//! invariants that matter; the parts that can run (the example images,
//! the manifests) have their own tests.

use std::path::Path;

fn read(rel: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(rel))
        .unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Dockerfile instructions as (KEYWORD, arguments): continuation lines
/// joined, comment lines dropped (as the builder does, also inside a
/// continued RUN).
fn instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(line);
                let full = std::mem::take(&mut current);
                let full = full.trim();
                if full.is_empty() {
                    continue;
                }
                let (kw, rest) = full.split_once(char::is_whitespace).unwrap_or((full, ""));
                out.push((kw.to_ascii_uppercase(), rest.trim().to_string()));
            }
        }
    }
    assert!(current.trim().is_empty(), "dangling continuation line");
    out
}

/// The instructions of the last stage (the image that ships).
fn final_stage(all: &[(String, String)]) -> &[(String, String)] {
    let last_from = all.iter().rposition(|(k, _)| k == "FROM").unwrap();
    &all[last_from..]
}

fn args_of<'a>(stage: &'a [(String, String)], kw: &str) -> Vec<&'a str> {
    stage
        .iter()
        .filter(|(k, _)| k == kw)
        .map(|(_, a)| a.as_str())
        .collect()
}

#[test]
fn outer_dockerfile_runs_cvmd_beside_sysbox() {
    let text = read("images/outer/Dockerfile");
    let all = instructions(&text);
    let stage = final_stage(&all);

    let from = args_of(stage, "FROM")[0];
    assert!(
        from.contains("debian") || from.contains("ubuntu"),
        "base is not Debian/Ubuntu: {from}"
    );
    assert_eq!(
        args_of(stage, "ENTRYPOINT"),
        [r#"["/usr/local/bin/cvmd"]"#],
        "cvmd must be the entrypoint, in exec form (PID 1, gets SIGTERM)"
    );
    assert_eq!(args_of(stage, "STOPSIGNAL"), ["SIGTERM"]);
    let copies = args_of(stage, "COPY").join("\n");
    for bin in ["/out/cvmd", "/out/cvmctl"] {
        assert!(copies.contains(bin), "{bin} is not copied in: {copies}");
    }

    let runs = args_of(stage, "RUN").join("\n");
    // The shiftfs source goes where cvmd looks by default.
    let shiftfs_src = cvmd::config::SETTINGS
        .iter()
        .find(|s| s.key == "shiftfs_src")
        .and_then(|s| s.default)
        .unwrap();
    assert!(
        runs.contains(&format!("\"$SHIFTFS_REPO\" {shiftfs_src}")),
        "the image does not clone shiftfs into {shiftfs_src}"
    );
    for pkg in ["rsync", "kmod", "iptables", "fuse3", "ca-certificates"] {
        assert!(
            runs.split_whitespace().any(|w| w == pkg),
            "{pkg} is not installed"
        );
    }
    for tool in ["sysbox-runc", "sysbox-mgr", "sysbox-fs"] {
        assert!(
            runs.contains(&format!("/usr/bin/{tool}")),
            "{tool} is not installed"
        );
    }
    // The Sysbox package is pinned by version and verified by digest
    // before anything of it is used.
    let args = args_of(stage, "ARG").join("\n");
    assert!(args.contains("SYSBOX_VERSION=0."), "{args}");
    for arch in ["AMD64", "ARM64"] {
        let line = args
            .lines()
            .find(|l| l.starts_with(&format!("SYSBOX_SHA256_{arch}=")))
            .unwrap_or_else(|| panic!("no SYSBOX_SHA256_{arch}"));
        let hex = line.split_once('=').unwrap().1;
        assert!(
            hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
            "{line}"
        );
    }
    let check = runs.find("sha256sum -c").expect("the .deb is not verified");
    let unpack = runs.find("dpkg-deb -x").expect("the .deb is not unpacked");
    assert!(
        check < unpack,
        "the .deb is used before its digest is checked"
    );

    // The build stage: locked dependencies, protoc for the API's protos.
    let build = &all[..all.len() - stage.len()];
    let build_runs = args_of(build, "RUN").join("\n");
    assert!(build_runs.contains("protobuf-compiler"), "{build_runs}");
    assert!(
        build_runs.contains("cargo build --release --locked"),
        "{build_runs}"
    );
}

fn unit_value<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(&format!("{key}=")))
        .collect()
}

#[test]
fn host_unit_outlasts_cvmds_stop_and_delegates_cgroups() {
    for path in ["systemd/cvmd.service", "systemd/cvmd@.service"] {
        host_unit_invariants(path, &read(path));
    }
    assert_eq!(
        unit_value(&read("systemd/cvmd.service"), "EnvironmentFile"),
        ["/etc/cvmd/cvmd.env"]
    );
}

/// The template: one env file, workspace name and state dir (so socket)
/// per instance, set before the file so the file could override them.
#[test]
fn template_unit_gives_each_instance_its_workspace_and_state() {
    let unit = read("systemd/cvmd@.service");
    assert_eq!(unit_value(&unit, "EnvironmentFile"), ["/etc/cvmd/%i.env"]);
    let env = unit_value(&unit, "Environment");
    assert!(env.contains(&"CVMD_WORKSPACE=%i"), "{env:?}");
    assert!(
        env.contains(&"CVMD_STATE_DIR=/var/lib/cvmd-state/%i"),
        "{env:?}"
    );
    let text = read("systemd/cvmd-instance.env");
    let keys: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('=').map(|(k, _)| k))
        .collect();
    for k in ["CVMD_WORKSPACE", "CVMD_STATE_DIR", "CVMD_SOCKET"] {
        assert!(
            !keys.contains(&k),
            "{k} in the instance env would override the unit's"
        );
    }
}

fn host_unit_invariants(path: &str, unit: &str) {
    let unit = unit.to_string();
    // Readiness from cvmd (READY=1 when the workspace runs), and time for
    // a cold pull before systemd gives up on the start.
    assert_eq!(unit_value(&unit, "Type"), ["notify"], "{path}");
    assert_eq!(unit_value(&unit, "NotifyAccess"), ["main"], "{path}");
    let start = unit_value(&unit, "TimeoutStartSec");
    assert!(
        start == ["infinity"] || start.first().is_some_and(|v| v.ends_with("min")),
        "{path}: TimeoutStartSec {start:?} must allow a cold pull"
    );
    let stop_timeout: u64 = cvmd::config::SETTINGS
        .iter()
        .find(|s| s.key == "stop_timeout")
        .and_then(|s| s.default)
        .unwrap()
        .parse()
        .unwrap();
    let timeout: u64 = unit_value(&unit, "TimeoutStopSec")[0].parse().unwrap();
    assert!(
        timeout >= stop_timeout + 5,
        "TimeoutStopSec {timeout} must exceed cvmd's stop timeout {stop_timeout} by 5 s"
    );
    assert_eq!(
        unit_value(&unit, "KillMode"),
        ["mixed"],
        "only cvmd gets SIGTERM"
    );
    assert_eq!(unit_value(&unit, "Delegate"), ["yes"]);
    assert_eq!(unit_value(&unit, "Restart"), ["on-failure"]);
    assert_eq!(unit_value(&unit, "ExecStart"), ["/usr/local/bin/cvmd run"]);
}

/// The sample EnvironmentFile sets only real settings, to values cvmd
/// accepts.
#[test]
fn host_unit_env_file_holds_real_settings() {
    for path in ["systemd/cvmd.env", "systemd/cvmd-instance.env"] {
        env_file_holds_real_settings(path);
    }
}

fn env_file_holds_real_settings(path: &str) {
    let text = read(path);
    let vars: Vec<(String, String)> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("not KEY=value: {l}"));
            (k.to_string(), v.to_string())
        })
        .collect();
    assert!(!vars.is_empty());
    for (k, _) in &vars {
        assert!(
            cvmd::config::SETTINGS.iter().any(|s| s.env == *k),
            "{k} is not a cvmd setting"
        );
    }
    let matches = clap::Command::new("cvmd")
        .args(cvmd::config::args())
        .try_get_matches_from(["cvmd"])
        .unwrap();
    let lookup = |k: &str| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    if let Err(e) = cvmd::config::Settings::resolve(&matches, &lookup) {
        panic!("{path}: cvmd refuses the values: {e}");
    }
}

/// The masked-units list the image build reads is well-formed: unit names
/// only, each with its reason.
#[test]
fn masked_units_each_have_a_reason() {
    let text = read("systemd/workspace/masked-units");
    let mut n = 0;
    for line in text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
    {
        let (unit, why) = line
            .split_once('#')
            .unwrap_or_else(|| panic!("no reason given: {line}"));
        let unit = unit.trim();
        assert!(
            [".service", ".mount", ".socket", ".target", ".timer"]
                .iter()
                .any(|s| unit.ends_with(s))
                && !unit.contains(char::is_whitespace),
            "not a unit name: {unit:?}"
        );
        assert!(!why.trim().is_empty(), "{unit}: empty reason");
        n += 1;
    }
    assert!(n > 0);
}
