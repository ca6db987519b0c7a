//! Which init `/sbin/init` is, and the request that shuts each one down.
//!
//! Inits disagree on signals: SIGTERM asks busybox init to *reboot*, is
//! ignored by sysvinit and halts openrc-init; SIGRTMIN+3 is systemd's halt
//! and means nothing to the others (PID 1 ignores signals it has no handler
//! for). So the flavour is read from what the link resolves to inside the
//! rootfs (see `inroot`: never a path out of it) and, for a plain file
//! named `init`, from a bounded look at its bytes.

use std::io::Read;
use std::path::Path;

use rustix::fs::{FileType, Mode, OFlags};

use super::inroot::{self, Outcome};
use super::signal::SYSTEMD_STOP_SIGNAL;
use super::INIT_PATH;

/// How much of a plain `/sbin/init` is read to recognise it: busybox-static
/// carries its "BusyBox v" banner within its first 2 MiB, sysvinit its
/// `INIT_VERSION` well before; a bound keeps a huge file from costing a boot.
pub const SNIFF_BYTES: u64 = 4 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InitFlavor {
    Systemd,
    Busybox,
    SysVinit,
    OpenRc,
    Tini,
    DumbInit,
    S6,
    /// An init cvmd does not know: it gets systemd's request, as before
    /// flavours were told apart (many such inits are wrappers that exec
    /// systemd).
    Unknown,
}

impl InitFlavor {
    pub fn as_str(self) -> &'static str {
        match self {
            InitFlavor::Systemd => "systemd",
            InitFlavor::Busybox => "busybox",
            InitFlavor::SysVinit => "sysvinit",
            InitFlavor::OpenRc => "openrc",
            InitFlavor::Tini => "tini",
            InitFlavor::DumbInit => "dumb-init",
            InitFlavor::S6 => "s6",
            InitFlavor::Unknown => "unknown",
        }
    }

    /// The init's own request to halt or power off, each from its
    /// documentation or source:
    /// - systemd: SIGRTMIN+3 is halt (systemd(1), "Signals").
    /// - busybox init: SIGUSR1 halt, SIGUSR2 poweroff, SIGTERM *reboot*
    ///   (busybox `init/init.c`, `halt_reboot_pwoff`); poweroff is asked.
    /// - openrc-init: SIGTERM (and SIGPWR) run the shutdown runlevel and
    ///   halt; SIGINT reboots (`src/openrc-init/openrc-init.c`).
    /// - tini, dumb-init: SIGTERM, passed on to their one child, after
    ///   which they exit with its status.
    /// - s6-svscan: SIGTERM is `s6-svscanctl -t`, the clean shutdown of
    ///   every supervised service (s6-svscan's documentation).
    /// - sysvinit: no signal halts it (SIGINT is ctrl-alt-del, which
    ///   Debian's inittab maps to a reboot; halting goes through
    ///   `telinit 0` and its FIFO). SIGTERM, which it ignores, leaves the
    ///   grace period and SIGKILL to end it rather than a reboot.
    pub fn shutdown_signal(self) -> i32 {
        match self {
            InitFlavor::Systemd | InitFlavor::Unknown => SYSTEMD_STOP_SIGNAL,
            InitFlavor::Busybox => libc::SIGUSR2,
            InitFlavor::OpenRc
            | InitFlavor::Tini
            | InitFlavor::DumbInit
            | InitFlavor::S6
            | InitFlavor::SysVinit => libc::SIGTERM,
        }
    }
}

impl std::fmt::Display for InitFlavor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The signal that stops the workspace: the image's `StopSignal` when it
/// sets one, else the init's own request, else SIGTERM for an application.
pub fn stop_signal(init: Option<InitFlavor>, image_stop_signal: Option<i32>) -> i32 {
    match (image_stop_signal, init) {
        (Some(s), _) => s,
        (None, Some(flavor)) => flavor.shutdown_signal(),
        (None, None) => libc::SIGTERM,
    }
}

/// The flavour from the resolved path's name and, when the name says
/// nothing (`init`, or a name cvmd does not know), the file's first bytes.
pub fn classify(resolved: &Path, head: &[u8]) -> InitFlavor {
    let name = resolved
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    match name {
        "systemd" => return InitFlavor::Systemd,
        "busybox" | "busybox.static" => return InitFlavor::Busybox,
        "openrc-init" => return InitFlavor::OpenRc,
        // Docker's `--init` binary is tini under another name.
        "tini" | "tini-static" | "docker-init" => return InitFlavor::Tini,
        "dumb-init" => return InitFlavor::DumbInit,
        "s6-svscan" | "s6-linux-init" => return InitFlavor::S6,
        _ => {}
    }
    let has = |needle: &[u8]| head.windows(needle.len()).any(|w| w == needle);
    if head.starts_with(b"#!") {
        // A script: s6-linux-init-maker writes /sbin/init as one; others
        // wrap systemd. Its text names what it execs.
        if has(b"s6-linux-init") {
            return InitFlavor::S6;
        }
        if has(b"systemd") {
            return InitFlavor::Systemd;
        }
        return InitFlavor::Unknown;
    }
    if has(b"BusyBox v") {
        InitFlavor::Busybox
    } else if has(b"INIT_VERSION=sysvinit") || has(b"sysvinit-") {
        InitFlavor::SysVinit
    } else if has(b"OpenRC init version") {
        InitFlavor::OpenRc
    } else if has(b"systemd.unit=") {
        InitFlavor::Systemd
    } else {
        InitFlavor::Unknown
    }
}

/// Detects the flavour of the rootfs's `/sbin/init`; `Unknown` when it
/// does not resolve to a regular file (the caller's verdict says why).
pub fn detect(rootfs: &Path) -> std::io::Result<InitFlavor> {
    let root = inroot::open_root(rootfs)?;
    let Outcome::Found(found) = inroot::resolve(&root, Path::new(INIT_PATH))? else {
        return Ok(InitFlavor::Unknown);
    };
    if FileType::from_raw_mode(found.stat.st_mode) != FileType::RegularFile {
        return Ok(InitFlavor::Unknown);
    }
    // O_NOFOLLOW: the walk resolved every link; what is there now is read,
    // never followed (a swap to a link out of the rootfs fails ELOOP).
    let fd = rustix::fs::openat(
        &found.parent,
        found.name.as_c_str(),
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
        Mode::empty(),
    )?;
    let mut head = Vec::new();
    std::fs::File::from(fd)
        .take(SNIFF_BYTES)
        .read_to_end(&mut head)?;
    Ok(classify(&found.path, &head))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    #[test]
    fn each_flavour_gets_its_own_request() {
        let want = [
            (InitFlavor::Systemd, 37),
            (InitFlavor::Busybox, libc::SIGUSR2),
            (InitFlavor::SysVinit, libc::SIGTERM),
            (InitFlavor::OpenRc, libc::SIGTERM),
            (InitFlavor::Tini, libc::SIGTERM),
            (InitFlavor::DumbInit, libc::SIGTERM),
            (InitFlavor::S6, libc::SIGTERM),
            (InitFlavor::Unknown, 37),
        ];
        for (flavor, signal) in want {
            assert_eq!(stop_signal(Some(flavor), None), signal, "{flavor}");
            // The image's StopSignal wins over every flavour.
            assert_eq!(
                stop_signal(Some(flavor), Some(libc::SIGQUIT)),
                libc::SIGQUIT
            );
        }
        // Busybox's SIGTERM is a reboot: never its stop request.
        assert_ne!(InitFlavor::Busybox.shutdown_signal(), libc::SIGTERM);
        assert_eq!(stop_signal(None, None), libc::SIGTERM);
        assert_eq!(stop_signal(None, Some(libc::SIGHUP)), libc::SIGHUP);
    }

    #[test]
    fn classified_by_the_name_the_link_resolves_to() {
        for (path, flavor) in [
            ("/usr/lib/systemd/systemd", InitFlavor::Systemd),
            ("/bin/busybox", InitFlavor::Busybox),
            ("/sbin/openrc-init", InitFlavor::OpenRc),
            ("/usr/bin/tini", InitFlavor::Tini),
            ("/usr/bin/tini-static", InitFlavor::Tini),
            ("/usr/bin/docker-init", InitFlavor::Tini),
            ("/usr/bin/dumb-init", InitFlavor::DumbInit),
            ("/bin/s6-svscan", InitFlavor::S6),
        ] {
            assert_eq!(classify(Path::new(path), b""), flavor, "{path}");
        }
    }

    #[test]
    fn a_plain_init_by_its_bytes() {
        let p = Path::new("/sbin/init");
        assert_eq!(
            classify(p, b"\x7fELF...BusyBox v1.35.0 (Debian)..."),
            InitFlavor::Busybox
        );
        assert_eq!(
            classify(p, b"\x7fELF...INIT_VERSION=sysvinit-3.06..."),
            InitFlavor::SysVinit
        );
        assert_eq!(
            classify(p, b"\x7fELF..OpenRC init version %s starting"),
            InitFlavor::OpenRc
        );
        assert_eq!(
            classify(p, b"#!/bin/execlineb -S0\ns6-linux-init -c /etc/s6\n"),
            InitFlavor::S6
        );
        assert_eq!(
            classify(p, b"#!/bin/sh\nexec /lib/systemd/systemd \"$@\"\n"),
            InitFlavor::Systemd
        );
        assert_eq!(
            classify(p, b"#!/bin/sh\nexec /bin/sleep inf\n"),
            InitFlavor::Unknown
        );
        assert_eq!(classify(p, b"\x7fELF nothing known"), InitFlavor::Unknown);
    }

    fn exe(p: &Path, data: &[u8]) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn detected_inside_the_rootfs_only() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path().join("rootfs");
        exe(&r.join("bin/busybox"), b"\x7fELF");
        std::fs::create_dir_all(r.join("sbin")).unwrap();
        symlink("/bin/busybox", r.join("sbin/init")).unwrap();
        assert_eq!(detect(&r).unwrap(), InitFlavor::Busybox);

        // A hard-linked or copied busybox: by its banner.
        std::fs::remove_file(r.join("sbin/init")).unwrap();
        exe(&r.join("sbin/init"), b"\x7fELF\0BusyBox v1.36.1\0");
        assert_eq!(detect(&r).unwrap(), InitFlavor::Busybox);

        // A link out of the rootfs to the host's systemd is resolved inside
        // (to nothing here): never read on the host.
        exe(&t.path().join("usr/lib/systemd/systemd"), b"x");
        std::fs::remove_file(r.join("sbin/init")).unwrap();
        symlink("../../usr/lib/systemd/systemd", r.join("sbin/init")).unwrap();
        assert_eq!(detect(&r).unwrap(), InitFlavor::Unknown);
        std::fs::remove_file(r.join("sbin/init")).unwrap();
        assert_eq!(detect(&r).unwrap(), InitFlavor::Unknown);
    }
}
