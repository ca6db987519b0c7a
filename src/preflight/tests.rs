//! The whole checklist over fake host trees: the decisions end to end,
//! without root or the machine's own facts.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::*;

const V2_MOUNTINFO: &str = "40 30 0:27 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n";

struct FakeHost {
    root: tempfile::TempDir,
    release: String,
    read_only: Vec<String>,
    idmapped: Probe,
    overlay: Probe,
    magic: i64,
}

impl FakeHost {
    /// A healthy node on kernel 6.8: privileged, cgroup v2, /dev/fuse and
    /// /dev/net/tun, user namespaces, no sysbox.
    fn new() -> FakeHost {
        let h = FakeHost {
            root: tempfile::tempdir().unwrap(),
            release: "6.8.0-1019-gke".into(),
            read_only: Vec::new(),
            idmapped: Probe::Works,
            overlay: Probe::Works,
            magic: 0xEF53,
        };
        h.write(
            "/proc/self/status",
            cvmd_oci::proc_status::sample(0x1ffffffffff, 0x1ffffffffff, 0, &[]),
        );
        h.write("/proc/sys/kernel/cap_last_cap", "40\n");
        h.write("/proc/sys/user/max_user_namespaces", "63000\n");
        h.write("/proc/self/mountinfo", V2_MOUNTINFO);
        h.write("/proc/self/cgroup", "0::/\n");
        h.write(
            "/proc/filesystems",
            "nodev\tsysfs\nnodev\toverlay\n\text4\n",
        );
        h.mkdir("/sys/fs/cgroup");
        // Char devices cannot be faked without mknod; the real host check
        // covers them, here the devices are "missing" unless a test says so.
        h
    }

    fn path(&self, p: &str) -> PathBuf {
        self.root.path().join(p.trim_start_matches('/'))
    }
    fn write(&self, p: &str, content: impl AsRef<[u8]>) {
        let p = self.path(p);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }
    fn mkdir(&self, p: &str) {
        std::fs::create_dir_all(self.path(p)).unwrap();
    }
    fn executable(&self, p: &str) {
        self.write(p, "#!/bin/sh\n");
        std::fs::set_permissions(self.path(p), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

impl Host for FakeHost {
    fn root(&self) -> &Path {
        self.root.path()
    }
    fn release(&self) -> String {
        self.release.clone()
    }
    fn writable(&self, path: &Path) -> bool {
        !self.read_only.iter().any(|r| path == self.path(r))
    }
    fn fs_magic(&self, _dir: &Path) -> std::io::Result<i64> {
        Ok(self.magic)
    }
    fn probe_idmapped(&self, _dir: &Path) -> Probe {
        self.idmapped.clone()
    }
    fn probe_overlay_idmapped(&self, _dir: &Path) -> Probe {
        self.overlay.clone()
    }
    fn version(&self, program: &Path) -> Result<String, String> {
        Ok(format!(
            "version: 0.6.4 ({})",
            program.file_name().unwrap().to_string_lossy()
        ))
    }
}

/// Options with every feature off, for `runtime`.
pub(super) fn opts(runtime: &str) -> Options {
    Options {
        runtime: runtime.into(),
        cache_dir: "/var/lib/cvmd".into(),
        idmap: false,
        host_userns: false,
        add_fuse: false,
        add_tun: false,
        lazy: false,
        usr_lib_dir: None,
        sysbox_mgr: "sysbox-mgr".into(),
        sysbox_fs: "sysbox-fs".into(),
        sysbox_run_dir: "/run/sysbox".into(),
    }
}

fn get<'a>(r: &'a Report, name: &str) -> &'a Check {
    r.checks
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no check {name}: {r:#?}"))
}

#[test]
fn every_check_is_reported_with_a_fix_when_not_ok() {
    let h = FakeHost::new();
    let r = collect(&h, &opts("sysbox-runc"));
    let names: Vec<&str> = r.checks.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "kernel",
            "privileges",
            "isolation",
            "sysbox-runc",
            "sysbox-mgr",
            "sysbox-fs",
            "sysbox-data-root",
            "user-namespaces",
            "cache-fs",
            "idmapped-mounts",
            "overlay-idmapped",
            "shiftfs",
            "cgroups",
            "dev-fuse",
            "lazy-start",
            "dev-net-tun",
            "nvidia-gpus",
            "pod-proxy"
        ]
    );
    for c in &r.checks {
        assert!(!c.detail.contains('\n'), "one line: {c:?}");
        match c.status {
            Status::Warn | Status::Fail => assert!(c.fix.is_some(), "{c:?}"),
            Status::Ok | Status::Skip => assert!(c.fix.is_none(), "{c:?}"),
        }
    }
}

#[test]
fn a_mesh_sidecar_in_the_pod_is_a_warning_naming_the_mesh() {
    let h = FakeHost::new();
    assert_eq!(
        get(&collect(&h, &opts("runc")), "pod-proxy").status,
        Status::Ok
    );
    // Envoy's outbound capture port 15001 (0x3A99), listening on ::.
    h.write(
        "/proc/net/tcp6",
        "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 00000000000000000000000000000000:3A99 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1337        0 7 1 0000000000000000 100 0 0 10 0\n",
    );
    let r = collect(&h, &opts("runc"));
    let c = get(&r, "pod-proxy");
    assert_eq!(c.status, Status::Warn, "{c:?}");
    assert!(c.detail.contains("Istio"), "{c:?}");
    assert!(c
        .fix
        .as_deref()
        .unwrap()
        .contains("istio-injection=disabled"));
    assert!(r.passed, "a warning, not a failure");
}

#[test]
fn missing_sysbox_fails_for_sysbox_and_is_skipped_for_runc() {
    let h = FakeHost::new();
    let r = collect(&h, &opts("sysbox-runc"));
    assert!(!r.passed);
    assert_eq!(get(&r, "sysbox-runc").status, Status::Fail);
    let e = r.clone().into_error().unwrap().to_string();
    assert!(e.starts_with("this host cannot run the workspace with sysbox-runc: sysbox-runc: sysbox-runc not found"), "{e}");
    assert!(e.contains("; sysbox-mgr: sysbox-mgr not found"), "{e}");
    assert_eq!(
        e.matches("install Sysbox").count(),
        1,
        "a fix shared by several checks is said once: {e}"
    );
    assert!(e.contains("; to fix: install Sysbox"), "{e}");
    assert!(!e.contains('\n'));

    let r = collect(&h, &opts("runc"));
    assert!(r.passed, "{r:#?}");
    for name in [
        "sysbox-runc",
        "sysbox-mgr",
        "sysbox-fs",
        "sysbox-data-root",
        "shiftfs",
    ] {
        assert_eq!(get(&r, name).status, Status::Skip, "{name}");
    }
    assert!(r.into_error().is_none());
}

#[test]
fn installed_sysbox_reports_versions() {
    let h = FakeHost::new();
    for b in [
        "sysbox-runc",
        "sysbox-mgr",
        "sysbox-fs",
        "rsync",
        "modprobe",
        "iptables",
    ] {
        h.executable(&format!("/usr/bin/{b}"));
    }
    let r = collect(&h, &opts("sysbox-runc"));
    let c = get(&r, "sysbox-mgr");
    assert_eq!(c.status, Status::Ok);
    assert!(
        c.detail
            .ends_with("/usr/bin/sysbox-mgr: version: 0.6.4 (sysbox-mgr)"),
        "{c:?}"
    );
    // Missing /dev/fuse and tun only warn when not asked for.
    assert!(r.passed, "{r:#?}");
}

#[test]
fn without_cap_sys_admin_the_probes_blame_the_privilege_not_the_kernel() {
    let mut h = FakeHost::new();
    h.release = "5.10.0-28-amd64".into(); // old enough to be blamed wrongly
    h.write(
        "/proc/self/status",
        cvmd_oci::proc_status::sample(0xa80425fb, 0xa80425fb, 0, &[]),
    );
    let eperm = Probe::Failed {
        step: "open_tree".into(),
        errno: libc::EPERM,
    };
    h.idmapped = eperm.clone();
    h.overlay = eperm;
    let r = collect(&h, &opts("runc"));
    assert!(!r.passed);
    assert!(get(&r, "privileges").detail.starts_with("not privileged"));
    let c = get(&r, "idmapped-mounts");
    assert_eq!(c.status, Status::Fail);
    assert!(c.detail.starts_with("not privileged"), "{c:?}");
    assert!(!c.detail.contains("kernel"), "{c:?}");
    // The overlay probe needs the first: not probed, not blamed.
    assert_eq!(get(&r, "overlay-idmapped").status, Status::Skip);
    let s = get(&r, "shiftfs");
    assert_eq!(
        s.status,
        Status::Skip,
        "not \"needed\" for a privilege: {s:?}"
    );
    assert!(s.detail.starts_with("cannot tell"), "{s:?}");
}

#[test]
fn einval_on_a_new_kernel_blames_the_file_system_and_shiftfs_becomes_needed() {
    let mut h = FakeHost::new();
    h.magic = 0x0102_1994; // tmpfs
    h.idmapped = Probe::Failed {
        step: "mount_setattr(MOUNT_ATTR_IDMAP)".into(),
        errno: libc::EINVAL,
    };
    let release = h.release.clone();
    h.mkdir(&format!("/lib/modules/{release}/build"));
    h.write(&format!("/lib/modules/{release}/build/Makefile"), "");
    let r = collect(&h, &opts("sysbox-runc"));
    let c = get(&r, "idmapped-mounts");
    assert_eq!(c.status, Status::Warn);
    assert!(c.detail.contains("file system (tmpfs)"), "{c:?}");
    assert_eq!(get(&r, "cache-fs").status, Status::Warn, "tmpfs caveat");
    let s = get(&r, "shiftfs");
    assert_eq!(s.status, Status::Warn, "{s:?}");
    assert!(s.detail.contains("installable"), "{s:?}");
    assert!(s.detail.contains("no EFI"), "no /sys/firmware/efi: {s:?}");
}

#[test]
fn shiftfs_blocked_by_secure_boot_from_the_efivar_bytes() {
    let mut h = FakeHost::new();
    h.overlay = Probe::Failed {
        step: "mount overlay".into(),
        errno: libc::EINVAL,
    };
    h.release = "5.15.0-91-generic".into();
    h.write(crate::shiftfs::SECURE_BOOT_VAR, [6u8, 0, 0, 0, 1]);
    h.mkdir("/usr/src/linux-headers-5.15.0-91-generic");
    h.write("/usr/src/linux-headers-5.15.0-91-generic/Makefile", "");
    let r = collect(&h, &opts("sysbox-runc"));
    assert!(get(&r, "overlay-idmapped").detail.contains("(5.19+)"));
    let s = get(&r, "shiftfs");
    assert!(s.detail.contains("secure boot is on"), "{s:?}");
    assert!(!s.detail.contains("headers"), "{s:?}");
}

#[test]
fn shiftfs_loaded_or_on_disk() {
    let mut h = FakeHost::new();
    h.idmapped = Probe::Failed {
        step: "mount_setattr(MOUNT_ATTR_IDMAP)".into(),
        errno: libc::EINVAL,
    };
    let release = h.release.clone();
    h.write(
        &format!("/lib/modules/{release}/kernel/fs/shiftfs/shiftfs.ko.zst"),
        "",
    );
    let r = collect(&h, &opts("sysbox-runc"));
    let s = get(&r, "shiftfs");
    assert!(
        s.fix.as_deref().unwrap().contains("modprobe shiftfs"),
        "{s:?}"
    );
    h.write("/proc/filesystems", "nodev\toverlay\nnodev\tshiftfs\n");
    let r = collect(&h, &opts("sysbox-runc"));
    assert_eq!(get(&r, "shiftfs").status, Status::Ok);
}

#[test]
fn nfs_cache_fails_and_skips_the_probes() {
    let mut h = FakeHost::new();
    h.magic = 0x6969;
    let r = collect(&h, &opts("runc"));
    assert!(!r.passed);
    assert_eq!(get(&r, "cache-fs").status, Status::Fail);
    assert_eq!(get(&r, "idmapped-mounts").status, Status::Skip);
}

#[test]
fn read_only_or_missing_cgroups_fail() {
    let mut h = FakeHost::new();
    h.read_only = vec!["/sys/fs/cgroup".into()];
    let r = collect(&h, &opts("runc"));
    let c = get(&r, "cgroups");
    assert_eq!(c.status, Status::Fail);
    assert!(c.detail.contains("not delegated"), "{c:?}");
    h.write("/proc/self/mountinfo", "");
    let r = collect(&h, &opts("runc"));
    assert!(get(&r, "cgroups").detail.contains("no cgroup"));
}

#[test]
fn devices_fail_only_when_asked_for() {
    let h = FakeHost::new();
    let mut o = opts("runc");
    let r = collect(&h, &o);
    assert_eq!(get(&r, "dev-fuse").status, Status::Warn);
    o.add_fuse = true;
    let r = collect(&h, &o);
    let c = get(&r, "dev-fuse");
    assert_eq!(c.status, Status::Fail);
    assert!(c.detail.contains("CVMD_ADD_FUSE"), "{c:?}");
}

#[test]
fn lazy_start_wants_a_dev_fuse_that_opens() {
    let h = FakeHost::new();
    let mut o = opts("runc");
    assert_eq!(get(&collect(&h, &o), "lazy-start").status, Status::Skip);
    o.lazy = true;
    let c = get(&collect(&h, &o), "lazy-start").clone();
    assert_eq!(c.status, Status::Warn, "{c:?}");
    assert!(c.detail.contains("pulled whole"), "{c:?}");
    assert!(
        c.fix
            .as_deref()
            .unwrap_or_default()
            .contains("CVMD_LAZY=off"),
        "{c:?}"
    );
    h.write("/dev/fuse", "");
    assert_eq!(get(&collect(&h, &o), "lazy-start").status, Status::Ok);
}

#[test]
fn gpus_need_their_driver_libraries() {
    let h = FakeHost::new();
    h.write("/dev/nvidia0", "");
    h.write("/dev/nvidiactl", "");
    let mut o = opts("runc");
    let c = get(&collect(&h, &o), "nvidia-gpus").clone();
    assert_eq!(c.status, Status::Warn);
    assert!(c.fix.unwrap().contains("CODER_USR_LIB_DIR"));
    o.usr_lib_dir = Some("/host/usr/lib".into());
    h.write("/host/usr/lib/x86_64-linux-gnu/libcuda.so.1", "");
    let c = get(&collect(&h, &o), "nvidia-gpus").clone();
    assert_eq!(c.status, Status::Ok, "{c:?}");
    assert!(c.detail.starts_with("1 GPU(s)"));
}

#[test]
fn report_round_trips_as_json_with_lowercase_statuses() {
    let r = collect(&FakeHost::new(), &opts("runc"));
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["checks"][0]["status"], "ok");
    assert_eq!(json["passed"], true);
    let back: Report = serde_json::from_value(json).unwrap();
    assert_eq!(back, r);
}
