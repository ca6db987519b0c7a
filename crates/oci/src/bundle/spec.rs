//! The OCI runtime spec (config.json) for the inner container, built with
//! oci-spec's builders. Mounts follow runc's `spec` defaults for plain
//! runc; for sysbox they follow the sysbox-runc contract (docs/ARCHITECTURE.md): no
//! spec mounts under /proc, /sys, /dev, no user/cgroup namespaces (sysbox
//! adds them), no systemd tmpfs (sysbox adds them when args[0] is
//! /sbin/init).

use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    get_default_maskedpaths, get_default_readonly_paths, LinuxBuilder, LinuxCpuBuilder,
    LinuxDeviceBuilder, LinuxDeviceCgroupBuilder, LinuxDeviceType, LinuxIdMapping,
    LinuxIdMappingBuilder, LinuxMemoryBuilder, LinuxNamespaceBuilder, LinuxNamespaceType,
    LinuxResourcesBuilder, Mount, MountBuilder, ProcessBuilder, RootBuilder, Spec, SpecBuilder,
    UserBuilder,
};

use super::error::spec_err;
use super::limits::{cpu_quota, Limits};
use super::mounts::{device_node_name, Device, UserMount};
use super::process::ProcessPlan;
use super::{capabilities, seccomp, BundleError, RuntimeFlavor};
use cvmd_rootfs::IdMap;

/// Files the caller prepared for the container's name resolution.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostFiles {
    pub resolv_conf: Option<PathBuf>,
    pub hostname: Option<PathBuf>,
    pub hosts: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct SpecInput<'a> {
    pub flavor: RuntimeFlavor,
    pub rootfs: &'a Path,
    pub hostname: &'a str,
    pub process: &'a ProcessPlan,
    pub idmap: Option<IdMap>,
    pub host_files: &'a HostFiles,
    /// User mounts, then GPU libraries: bind mounts in this order.
    pub mounts: &'a [UserMount],
    pub devices: &'a [Device],
    /// Staged nodes of `devices` to bind in (see `BundleInput::device_dir`).
    pub device_dir: Option<&'a Path>,
    pub limits: Limits,
    /// The outer container's capability bounding set (a CapBnd mask).
    pub bounding: u64,
    pub oom_score_adj: Option<i32>,
}

/// The sysbox-runc contract's rule for supplied mappings: one range from
/// container ID 0, ≥ 65536 IDs, identical for uid and gid, host ID ≠ 0.
pub fn validate_idmap(map: &IdMap) -> Result<(), BundleError> {
    let bad = |reason: String| Err(BundleError::BadIdMap { reason });
    if map.size < 65536 {
        return bad(format!("size {} is below 65536", map.size));
    }
    if map.host_uid == 0 || map.host_gid == 0 {
        return bad("host ID 0 would make the container's root the host's root".into());
    }
    if map.host_uid != map.host_gid {
        return bad(format!(
            "uid range starts at {} and gid range at {}; sysbox needs them identical",
            map.host_uid, map.host_gid
        ));
    }
    if map.host_uid.checked_add(map.size).is_none() {
        return bad("the range runs past 2^32".into());
    }
    Ok(())
}

fn mount(dst: &str, typ: &str, src: &str, opts: &[&str]) -> Result<Mount, BundleError> {
    MountBuilder::default()
        .destination(dst)
        .typ(typ)
        .source(src)
        .options(opts.iter().map(|o| o.to_string()).collect::<Vec<_>>())
        .build()
        .map_err(spec_err("mount"))
}

fn bind(src: &Path, dst: &Path, readonly: bool) -> Result<Mount, BundleError> {
    let mut opts = vec!["rbind".to_string(), "rprivate".to_string()];
    if readonly {
        opts.push("ro".into());
    }
    MountBuilder::default()
        .destination(dst)
        .typ("bind")
        .source(src)
        .options(opts)
        .build()
        .map_err(spec_err("bind mount"))
}

/// Mounts the runtime sets up, in order.
pub fn mounts(input: &SpecInput<'_>) -> Result<Vec<Mount>, BundleError> {
    let runc = input.flavor == RuntimeFlavor::Runc;
    let systemd = input.process.init;
    let mut out = Vec::new();
    if runc {
        // runc's `spec` defaults.
        out.push(mount("/proc", "proc", "proc", &[])?);
        out.push(mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?);
        out.push(mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        )?);
        out.push(mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        )?);
        out.push(mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        )?);
        out.push(mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"],
        )?);
        // systemd manages its own cgroup subtree: writable, which runc only
        // does safely inside a cgroup namespace (added in `namespaces`).
        let cg = if systemd { "rw" } else { "ro" };
        out.push(mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", cg],
        )?);
        if systemd {
            // What systemd expects of a container (systemd.io/CONTAINER_INTERFACE);
            // sysbox adds these itself.
            out.push(mount(
                "/run",
                "tmpfs",
                "tmpfs",
                &["nosuid", "nodev", "mode=755"],
            )?);
            out.push(mount(
                "/run/lock",
                "tmpfs",
                "tmpfs",
                &["nosuid", "nodev", "noexec", "size=5242880"],
            )?);
            out.push(mount(
                "/tmp",
                "tmpfs",
                "tmpfs",
                &["nosuid", "nodev", "mode=1777"],
            )?);
        }
    }
    let files = input.host_files;
    for (src, dst) in [
        (&files.resolv_conf, "/etc/resolv.conf"),
        (&files.hostname, "/etc/hostname"),
        (&files.hosts, "/etc/hosts"),
    ] {
        if let Some(src) = src {
            out.push(bind(src, Path::new(dst), false)?);
        }
    }
    for m in input.mounts {
        out.push(bind(&m.source, &m.destination, m.readonly)?);
    }
    if let Some(dir) = input.device_dir {
        for d in input.devices {
            out.push(bind(&dir.join(device_node_name(&d.path)), &d.path, false)?);
        }
    }
    Ok(out)
}

fn idmapping(map: &IdMap, host: u32) -> Result<LinuxIdMapping, BundleError> {
    LinuxIdMappingBuilder::default()
        .container_id(0u32)
        .host_id(host)
        .size(map.size)
        .build()
        .map_err(spec_err("ID mapping"))
}

/// Namespaces: the five the contract requires, all new; for plain runc a
/// cgroup namespace (writable cgroup fs for systemd, or a user namespace)
/// and a user namespace when IDs are mapped. sysbox adds both itself.
pub fn namespaces(flavor: RuntimeFlavor, systemd: bool, mapped: bool) -> Vec<LinuxNamespaceType> {
    use LinuxNamespaceType as N;
    let mut ns = vec![N::Pid, N::Ipc, N::Uts, N::Mount, N::Network];
    if flavor == RuntimeFlavor::Runc {
        if systemd || mapped {
            ns.push(N::Cgroup);
        }
        if mapped {
            ns.push(N::User);
        }
    }
    ns
}

pub fn build_spec(input: &SpecInput<'_>) -> Result<Spec, BundleError> {
    let runc = input.flavor == RuntimeFlavor::Runc;
    let p = input.process;
    if let Some(map) = &input.idmap {
        validate_idmap(map)?;
    }
    for d in input.devices {
        d.validate()?;
    }
    let user = UserBuilder::default()
        .uid(p.user.uid)
        .gid(p.user.gid)
        .additional_gids(p.user.additional_gids.clone())
        .build()
        .map_err(spec_err("user"))?;
    let names = capabilities::wanted(runc, p.init, input.bounding);
    let mut process = ProcessBuilder::default()
        .terminal(false)
        .user(user)
        .args(p.args.clone())
        .env(p.env.clone())
        .cwd(&p.cwd)
        .capabilities(capabilities::to_spec(&names)?)
        // Empty: the container inherits cvmd's rlimits, not runc's 1024 files.
        .rlimits(Vec::new())
        // Workspace users run sudo and setuid helpers; systemd needs it off.
        .no_new_privileges(false);
    if let Some(adj) = input.oom_score_adj {
        process = process.oom_score_adj(adj);
    }
    let process = process.build().map_err(spec_err("process"))?;

    let mapped = input.idmap.is_some();
    let namespaces = namespaces(input.flavor, p.init, mapped)
        .into_iter()
        .map(|t| LinuxNamespaceBuilder::default().typ(t).build())
        .collect::<Result<Vec<_>, _>>()
        .map_err(spec_err("namespace"))?;

    let mut device_rules = vec![LinuxDeviceCgroupBuilder::default()
        .allow(false)
        .access("rwm")
        .build()
        .map_err(spec_err("device rule"))?];
    let mut devices = Vec::new();
    for d in input.devices {
        // Staged nodes are bound in as mounts; the cgroup rules stay.
        if input.device_dir.is_none() {
            devices.push(
                LinuxDeviceBuilder::default()
                    .path(&d.path)
                    .typ(LinuxDeviceType::C)
                    .major(d.major)
                    .minor(d.minor)
                    .file_mode(d.mode)
                    .uid(0u32)
                    .gid(0u32)
                    .build()
                    .map_err(spec_err("device"))?,
            );
        }
        device_rules.push(
            LinuxDeviceCgroupBuilder::default()
                .allow(true)
                .typ(LinuxDeviceType::C)
                .major(d.major)
                .minor(d.minor)
                .access("rwm")
                .build()
                .map_err(spec_err("device rule"))?,
        );
    }
    let mut resources = LinuxResourcesBuilder::default().devices(device_rules);
    if let Some(cpus) = input.limits.cpus {
        let (quota, period) = cpu_quota(cpus);
        resources = resources.cpu(
            LinuxCpuBuilder::default()
                .quota(quota)
                .period(period)
                .build()
                .map_err(spec_err("cpu limit"))?,
        );
    }
    if let Some(bytes) = input.limits.memory {
        let limit = i64::try_from(bytes).unwrap_or(i64::MAX);
        resources = resources.memory(
            LinuxMemoryBuilder::default()
                .limit(limit)
                .build()
                .map_err(spec_err("memory limit"))?,
        );
    }
    let resources = resources.build().map_err(spec_err("resources"))?;

    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .resources(resources)
        .devices(devices);
    if let Some(map) = &input.idmap {
        linux = linux
            .uid_mappings(vec![idmapping(map, map.host_uid)?])
            .gid_mappings(vec![idmapping(map, map.host_gid)?]);
    }
    if runc {
        // sysbox-runc masks, filters and traps on its own terms; plain runc
        // does only what the spec says (see `seccomp` for the filter).
        linux = linux
            .masked_paths(get_default_maskedpaths())
            .readonly_paths(get_default_readonly_paths())
            .seccomp(seccomp::profile()?);
    }
    let linux = linux.build().map_err(spec_err("linux"))?;

    SpecBuilder::default()
        .version("1.0.2")
        .root(
            RootBuilder::default()
                .path(input.rootfs)
                .readonly(false)
                .build()
                .map_err(spec_err("root"))?,
        )
        .hostname(input.hostname)
        .process(process)
        .mounts(mounts(input)?)
        .linux(linux)
        .build()
        .map_err(spec_err("spec"))
}
