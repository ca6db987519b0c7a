//! The generated config.json held against each rule of the sysbox-runc
//! contract (docs/ARCHITECTURE.md), since Sysbox itself cannot run here; and the
//! plain-runc shape for systemd. Checks read the JSON as the runtime will.

use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

use serde_json::Value;

use super::*;

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\ncoder:x:1000:1000::/home/coder:/bin/sh\n";

/// A rootfs shaped like Debian with systemd: merged /usr, /sbin/init a
/// link to systemd, a multiarch lib dir, a shell, passwd.
fn systemd_rootfs(dir: &Path) {
    let exe = |p: &str| {
        let p = dir.join(p);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, b"\x7fELF").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    exe("usr/lib/systemd/systemd");
    exe("usr/bin/sh");
    exe("usr/bin/sleep");
    std::fs::create_dir_all(dir.join("usr/sbin")).unwrap();
    std::fs::create_dir_all(dir.join("usr/lib/x86_64-linux-gnu")).unwrap();
    std::fs::create_dir_all(dir.join("usr/lib/aarch64-linux-gnu")).unwrap();
    std::fs::create_dir_all(dir.join("etc")).unwrap();
    symlink("usr/sbin", dir.join("sbin")).unwrap();
    symlink("usr/bin", dir.join("bin")).unwrap();
    symlink("usr/lib", dir.join("lib")).unwrap();
    symlink("../lib/systemd/systemd", dir.join("usr/sbin/init")).unwrap();
    std::fs::write(dir.join("etc/passwd"), PASSWD).unwrap();
}

fn full_input(rootfs: &Path, flavor: RuntimeFlavor) -> BundleInput {
    let mut i = BundleInput::new("registry.test/ws:1", rootfs, flavor);
    i.image_run = ImageRun {
        cmd: vec!["/bin/bash".into()],
        env: vec!["PATH=/usr/bin:/bin".into(), "SYSBOX_NOT_A_KNOB=1".into()],
        user: Some("coder".into()),
        ..ImageRun::default()
    };
    i.env_passthrough = vec!["NVIDIA_*".into(), "SYSBOX_*".into(), "CVMD_*".into()];
    i.outer_env = [
        ("NVIDIA_VISIBLE_DEVICES", "all"),
        ("SYSBOX_HONOR_CAPS", "TRUE"),
        ("SYSBOX_WHATEVER", "1"),
        ("CVMD_PULL_SECRET", "{\"auths\":{}}"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    i.mounts = parse_mounts("/srv/home:/home/coder,/srv/data:/data:ro", flavor).unwrap();
    i.host_files = HostFiles {
        resolv_conf: Some("/run/cvmd/resolv.conf".into()),
        hostname: Some("/run/cvmd/hostname".into()),
        hosts: Some("/run/cvmd/hosts".into()),
    };
    i.tun = true;
    i.fuse = true;
    i.gpus = vec![Device {
        path: "/dev/nvidia0".into(),
        major: 195,
        minor: 0,
        mode: 0o666,
    }];
    i.gpu_libs = vec!["/usr/lib/host/libcuda.so.1".into()];
    i.limits = Limits {
        cpus: Some(1.5),
        memory: Some(4 << 30),
    };
    i.bounding = Some(0x1fffeffffff);
    i
}

fn json(input: &BundleInput) -> (Value, BundleInfo) {
    let (spec, info) = plan_bundle(input).unwrap();
    (serde_json::to_value(&spec).unwrap(), info)
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Every contract rule the spec breaks, one line each.
fn sysbox_violations(spec: &Value) -> Vec<String> {
    let mut bad = Vec::new();
    let ns = spec["linux"]["namespaces"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for want in ["pid", "ipc", "uts", "mount", "network"] {
        match ns.iter().find(|n| n["type"] == want) {
            None => bad.push(format!("namespace {want} missing")),
            Some(n) if n.get("path").is_some_and(|p| !p.is_null()) => {
                bad.push(format!("namespace {want} joins a path"))
            }
            _ => {}
        }
    }
    if spec["linux"].get("seccomp").is_some_and(|s| !s.is_null()) {
        bad.push("a seccomp filter: sysbox-runc applies its own".into());
    }
    for added in ["user", "cgroup"] {
        if ns.iter().any(|n| n["type"] == added) {
            bad.push(format!("namespace {added} is sysbox's to add"));
        }
    }
    let maps = |k: &str| spec["linux"][k].as_array().cloned().unwrap_or_default();
    let (u, g) = (maps("uidMappings"), maps("gidMappings"));
    if u != g {
        bad.push("uid and gid mappings differ".into());
    }
    if !u.is_empty() {
        if u.len() != 1 {
            bad.push("more than one ID range".into());
        }
        let m = &u[0];
        if m["containerID"] != 0 {
            bad.push("range does not start at container ID 0".into());
        }
        if m["size"].as_u64().unwrap_or(0) < 65536 {
            bad.push("range smaller than 65536".into());
        }
        if m["hostID"] == 0 {
            bad.push("host ID 0".into());
        }
    }
    let args = strs(&spec["process"]["args"]);
    let env = strs(&spec["process"]["env"]);
    if args
        .first()
        .is_some_and(|a| a.ends_with("/init") || a.ends_with("systemd"))
        && args[0] != INIT_PATH
    {
        bad.push(format!(
            "init must be the literal {INIT_PATH}, got {}",
            args[0]
        ));
    }
    for e in &env {
        if !sysbox_accepts(e) {
            bad.push(format!("env {e} is refused by sysbox-runc"));
        }
    }
    for m in spec["mounts"].as_array().cloned().unwrap_or_default() {
        let dst = Path::new(m["destination"].as_str().unwrap_or(""));
        for base in ["/proc", "/sys", "/dev"] {
            if dst.starts_with(base) {
                bad.push(format!("mount at {} is under {base}", dst.display()));
            }
        }
    }
    bad
}

#[test]
fn sysbox_contract_holds_for_systemd_without_mappings() {
    let t = tempfile::tempdir().unwrap();
    systemd_rootfs(t.path());
    let (spec, info) = json(&full_input(t.path(), RuntimeFlavor::Sysbox));
    assert_eq!(sysbox_violations(&spec), Vec::<String>::new(), "{spec:#}");
    assert!(info.init);
    assert_eq!(info.args, vec!["/sbin/init"]);
    assert_eq!(info.stop_signal, 37);
    assert_eq!(info.user.uid, 0, "systemd runs as root");
    assert!(spec["linux"]
        .get("uidMappings")
        .is_none_or(|m| m.is_null() || m == &Value::Array(vec![])));
    let env = strs(&spec["process"]["env"]);
    assert!(env.contains(&"SYSBOX_HONOR_CAPS=TRUE".to_string()));
    assert!(env.contains(&"NVIDIA_VISIBLE_DEVICES=all".to_string()));
    assert!(!env
        .iter()
        .any(|e| e.starts_with("CVMD_") || e.starts_with("container=")));
    // No systemd mounts of our own: sysbox adds /run, /run/lock itself.
    let dsts: Vec<String> = spec["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["destination"].as_str().unwrap().to_string())
        .collect();
    assert!(!dsts
        .iter()
        .any(|d| d == "/run" || d == "/tmp" || d == "/run/lock"));
    assert!(dsts.contains(&"/etc/resolv.conf".to_string()));
    assert!(
        dsts.iter().any(|d| d.ends_with("-linux-gnu/libcuda.so.1")),
        "{dsts:?}"
    );
}

#[test]
fn sysbox_contract_holds_with_mappings_and_a_plain_command() {
    let t = tempfile::tempdir().unwrap();
    systemd_rootfs(t.path());
    let mut input = full_input(t.path(), RuntimeFlavor::Sysbox);
    input.idmap = Some(IdMap {
        host_uid: 231072,
        host_gid: 231072,
        size: 65536,
    });
    input.overrides.command = Some(vec!["/bin/bash".into()]);
    let (spec, info) = json(&input);
    assert_eq!(sysbox_violations(&spec), Vec::<String>::new(), "{spec:#}");
    assert!(!info.init);
    assert_eq!(info.user.uid, 1000);
    assert_eq!(spec["linux"]["uidMappings"][0]["hostID"], 231072);
}

#[test]
fn sysbox_refuses_what_the_contract_forbids() {
    let t = tempfile::tempdir().unwrap();
    systemd_rootfs(t.path());
    let mut input = full_input(t.path(), RuntimeFlavor::Sysbox);
    input.mounts = vec![UserMount {
        source: "/x".into(),
        destination: "/dev/x".into(),
        readonly: false,
    }];
    assert!(matches!(
        plan_bundle(&input),
        Err(BundleError::BadMount { .. })
    ));
    for (host_uid, host_gid, size) in [
        (0, 0, 65536),
        (100000, 100000, 1000),
        (100000, 200000, 65536),
    ] {
        let mut input = full_input(t.path(), RuntimeFlavor::Sysbox);
        input.idmap = Some(IdMap {
            host_uid,
            host_gid,
            size,
        });
        assert!(matches!(
            plan_bundle(&input),
            Err(BundleError::BadIdMap { .. })
        ));
    }
}

#[test]
fn the_checker_catches_a_runc_spec() {
    // The same input for plain runc breaks the sysbox rules: the checker
    // is not vacuous.
    let t = tempfile::tempdir().unwrap();
    systemd_rootfs(t.path());
    let mut input = full_input(t.path(), RuntimeFlavor::Runc);
    input.idmap = Some(IdMap {
        host_uid: 100000,
        host_gid: 100000,
        size: 65536,
    });
    let (spec, _) = json(&input);
    let v = sysbox_violations(&spec);
    assert!(v.iter().any(|l| l.contains("namespace user")), "{v:?}");
    assert!(v.iter().any(|l| l.contains("under /proc")), "{v:?}");
    assert!(v.iter().any(|l| l.contains("SYSBOX_WHATEVER")), "{v:?}");
    assert!(v.iter().any(|l| l.contains("seccomp")), "{v:?}");
}

#[test]
fn runc_systemd_shape() {
    let t = tempfile::tempdir().unwrap();
    systemd_rootfs(t.path());
    let (spec, info) = json(&full_input(t.path(), RuntimeFlavor::Runc));
    assert!(info.init);
    let ns: Vec<&str> = spec["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["type"].as_str().unwrap())
        .collect();
    assert!(ns.contains(&"cgroup") && !ns.contains(&"user"), "{ns:?}");
    let mount = |d: &str| {
        spec["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == d)
            .cloned()
    };
    let cg = mount("/sys/fs/cgroup").unwrap();
    assert!(strs(&cg["options"]).contains(&"rw".to_string()));
    for d in [
        "/run",
        "/run/lock",
        "/tmp",
        "/proc",
        "/dev",
        "/dev/pts",
        "/dev/shm",
        "/dev/mqueue",
        "/sys",
    ] {
        assert!(mount(d).is_some(), "{d}");
    }
    assert!(strs(&spec["process"]["env"]).contains(&"container=oci".to_string()));
    let caps = strs(&spec["process"]["capabilities"]["bounding"]);
    assert!(caps.contains(&"CAP_SYS_ADMIN".to_string()));
    assert!(
        !caps.contains(&"CAP_SYS_RESOURCE".to_string()),
        "not in the bounding set"
    );
    let filter = &spec["linux"]["seccomp"];
    assert_eq!(filter["defaultAction"], "SCMP_ACT_ERRNO", "{filter:#}");
    assert_eq!(filter["defaultErrnoRet"], libc::EPERM);
    assert_eq!(spec["process"]["noNewPrivileges"], false);
    assert_eq!(spec["process"]["terminal"], false);
    assert_eq!(spec["linux"]["resources"]["cpu"]["quota"], 150000);
    assert_eq!(spec["linux"]["resources"]["memory"]["limit"], 4u64 << 30);
    let devs: Vec<&str> = spec["linux"]["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["path"].as_str().unwrap())
        .collect();
    assert_eq!(devs, vec!["/dev/net/tun", "/dev/fuse", "/dev/nvidia0"]);
    let rules = spec["linux"]["resources"]["devices"].as_array().unwrap();
    assert_eq!(rules[0]["allow"], false);
    assert!(rules
        .iter()
        .any(|r| r["allow"] == true && r["major"] == 10 && r["minor"] == 200));
    assert!(Path::new(spec["root"]["path"].as_str().unwrap()).is_absolute());
}

#[test]
fn runc_userns_adds_user_namespace_and_mappings() {
    let t = tempfile::tempdir().unwrap();
    systemd_rootfs(t.path());
    let mut input = full_input(t.path(), RuntimeFlavor::Runc);
    input.overrides.command = Some(vec!["/bin/bash".into()]);
    input.idmap = Some(IdMap {
        host_uid: 100000,
        host_gid: 100000,
        size: 65536,
    });
    let (spec, info) = json(&input);
    assert!(!info.init);
    let ns: Vec<&str> = spec["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["type"].as_str().unwrap())
        .collect();
    assert!(ns.contains(&"user") && ns.contains(&"cgroup"), "{ns:?}");
    assert_eq!(spec["linux"]["uidMappings"], spec["linux"]["gidMappings"]);
    let cg = spec["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["destination"] == "/sys/fs/cgroup")
        .unwrap();
    assert!(strs(&cg["options"]).contains(&"ro".to_string()));

    // With cvmd's own device nodes: bound in, none for runc to make, the
    // devices cgroup as before.
    input.device_dir = Some("/run/cvmd/workspaces/ws/devices".into());
    let (spec, _) = json(&input);
    assert!(
        spec["linux"]["devices"]
            .as_array()
            .is_none_or(|d| d.is_empty()),
        "{:#}",
        spec["linux"]["devices"]
    );
    let tun = spec["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["destination"] == "/dev/net/tun")
        .expect("the staged tun node is bound in");
    assert_eq!(tun["source"], "/run/cvmd/workspaces/ws/devices/dev-net-tun");
    let rules = spec["linux"]["resources"]["devices"].as_array().unwrap();
    assert!(rules
        .iter()
        .any(|r| r["allow"] == true && r["major"] == 10 && r["minor"] == 200));
}

#[test]
fn write_bundle_is_atomic_and_complete() {
    let t = tempfile::tempdir().unwrap();
    let rootfs = t.path().join("rootfs");
    std::fs::create_dir(&rootfs).unwrap();
    systemd_rootfs(&rootfs);
    let dir = t.path().join("bundle");
    let info = write_bundle(&dir, &full_input(&rootfs, RuntimeFlavor::Sysbox)).unwrap();
    assert_eq!(info.config, dir.join("config.json"));
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("config.json")]);
    let spec = oci_spec::runtime::Spec::load(&info.config).unwrap();
    assert_eq!(spec.root().as_ref().unwrap().path(), &rootfs);
}

#[test]
fn keepalive_needs_a_shell_and_sleep() {
    let t = tempfile::tempdir().unwrap();
    systemd_rootfs(t.path());
    std::fs::remove_file(t.path().join("usr/sbin/init")).unwrap();
    let mut input = BundleInput::new("img", t.path(), RuntimeFlavor::Runc);
    input.bounding = Some(u64::MAX);
    let (_, info) = plan_bundle(&input).unwrap();
    assert_eq!(info.args[0], "/bin/sh");
    assert!(!info.init);
    assert_eq!(
        info.init_verdict.to_string(),
        "/sbin/init leads to /usr/sbin/init, which does not exist"
    );
    std::fs::remove_file(t.path().join("usr/bin/sleep")).unwrap();
    let e = plan_bundle(&input).unwrap_err();
    assert!(matches!(e, BundleError::NothingToRun { .. }), "{e}");
}

#[test]
fn flavor_from_runtime_setting() {
    assert_eq!(
        RuntimeFlavor::of_runtime("sysbox-runc"),
        RuntimeFlavor::Sysbox
    );
    assert_eq!(
        RuntimeFlavor::of_runtime("/usr/bin/sysbox-runc"),
        RuntimeFlavor::Sysbox
    );
    assert_eq!(
        RuntimeFlavor::of_runtime("/usr/sbin/runc"),
        RuntimeFlavor::Runc
    );
}
