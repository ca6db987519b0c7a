//! User mounts (`src:dst[:ro]`), devices on request, and where GPU driver
//! libraries go inside the image: plain decisions over plain values.

use std::path::{Component, Path, PathBuf};

use super::{BundleError, RuntimeFlavor};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserMount {
    pub source: PathBuf,
    pub destination: PathBuf,
    pub readonly: bool,
}

/// Paths sysbox mounts itself, dropping spec mounts at or under them
/// (docs/ARCHITECTURE.md, the sysbox-runc contract).
pub const SYSBOX_OWNED: &[&str] = &["/proc", "/sys", "/dev"];

fn clean_abs(p: &str) -> Result<PathBuf, String> {
    let path = Path::new(p);
    if !path.is_absolute() {
        return Err(format!("{p:?} is not an absolute path"));
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(format!("{p:?} contains '..'"));
    }
    // Normalised: no `.`, no doubled or trailing slashes.
    Ok(path.components().collect())
}

/// Whether `path` is `base` or beneath it (component-wise).
pub fn at_or_under(path: &Path, base: &str) -> bool {
    path.starts_with(base)
}

/// Parses one `SRC:DST[:ro]` (`:rw` is accepted too).
pub fn parse_mount(spec: &str, flavor: RuntimeFlavor) -> Result<UserMount, BundleError> {
    let bad = |reason: String| BundleError::BadMount {
        spec: spec.into(),
        reason,
    };
    let parts: Vec<&str> = spec.split(':').collect();
    let (src, dst, readonly) = match parts.as_slice() {
        [s, d] => (*s, *d, false),
        [s, d, "ro"] => (*s, *d, true),
        [s, d, "rw"] => (*s, *d, false),
        [_, _, o] => return Err(bad(format!("unknown option {o:?} (ro or rw)"))),
        _ => return Err(bad("expected SRC:DST or SRC:DST:ro".into())),
    };
    let source = clean_abs(src).map_err(bad)?;
    let destination = clean_abs(dst).map_err(bad)?;
    if destination == Path::new("/") {
        return Err(bad("cannot mount over the root".into()));
    }
    if flavor == RuntimeFlavor::Sysbox {
        if let Some(base) = SYSBOX_OWNED.iter().find(|b| at_or_under(&destination, b)) {
            return Err(bad(format!(
                "sysbox mounts its own {base} and drops mounts at or under it; choose another destination"
            )));
        }
    }
    Ok(UserMount {
        source,
        destination,
        readonly,
    })
}

/// Parses a comma-separated list of mounts (envbox's `CODER_MOUNTS` form).
pub fn parse_mounts(list: &str, flavor: RuntimeFlavor) -> Result<Vec<UserMount>, BundleError> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| parse_mount(s, flavor))
        .collect()
}

/// A character device node to create in the container and allow in its
/// device cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub path: PathBuf,
    pub major: i64,
    pub minor: i64,
    pub mode: u32,
}

/// The file name of `path`'s node in a staged device dir
/// (`/dev/net/tun` -> `dev-net-tun`): flat, one per device path.
pub fn device_node_name(path: &Path) -> String {
    path.to_string_lossy()
        .trim_start_matches('/')
        .replace('/', "-")
}

impl Device {
    /// `/dev/net/tun` (misc 10:200), for VPNs and Docker-in-workspace networking.
    pub fn tun() -> Self {
        Device {
            path: "/dev/net/tun".into(),
            major: 10,
            minor: 200,
            mode: 0o666,
        }
    }

    /// `/dev/fuse` (misc 10:229).
    pub fn fuse() -> Self {
        Device {
            path: "/dev/fuse".into(),
            major: 10,
            minor: 229,
            mode: 0o666,
        }
    }

    pub fn validate(&self) -> Result<(), BundleError> {
        let bad = |reason: &str| BundleError::BadDevice {
            path: self.path.clone(),
            reason: reason.into(),
        };
        if !self.path.starts_with("/dev/")
            || self.path.components().any(|c| c == Component::ParentDir)
        {
            return Err(bad("must be an absolute path under /dev without '..'"));
        }
        if self.major < 0 || self.minor < 0 {
            return Err(bad("negative device number"));
        }
        if self.mode > 0o777 {
            return Err(bad("mode has bits beyond 0777"));
        }
        Ok(())
    }
}

/// The Debian/Ubuntu multiarch triplet of this machine's architecture.
pub fn multiarch_triplet() -> &'static str {
    match std::env::consts::ARCH {
        "aarch64" => "aarch64-linux-gnu",
        "arm" => "arm-linux-gnueabihf",
        "powerpc64" => "powerpc64le-linux-gnu",
        "s390x" => "s390x-linux-gnu",
        "riscv64" => "riscv64-linux-gnu",
        _ => "x86_64-linux-gnu",
    }
}

/// Where the image keeps its shared libraries, from what exists in it
/// (`is_dir` answers for paths inside the rootfs): Debian/Ubuntu's
/// multiarch dir, else RHEL's `/usr/lib64`, else `/usr/lib`. Multiarch is
/// checked first: Debian has a `/usr/lib64` too, holding only the loader.
pub fn choose_lib_dir(triplet: &str, is_dir: &dyn Fn(&Path) -> bool) -> PathBuf {
    let multiarch = PathBuf::from("/usr/lib").join(triplet);
    if is_dir(&multiarch) {
        multiarch
    } else if is_dir(Path::new("/usr/lib64")) {
        PathBuf::from("/usr/lib64")
    } else {
        PathBuf::from("/usr/lib")
    }
}

/// Read-only bind mounts of host GPU driver libraries into `lib_dir`,
/// each under its own file name.
pub fn gpu_lib_mounts(libs: &[PathBuf], lib_dir: &Path) -> Result<Vec<UserMount>, BundleError> {
    libs.iter()
        .map(|lib| {
            let spec = lib.display().to_string();
            let source = clean_abs(&spec).map_err(|reason| BundleError::BadMount {
                spec: spec.clone(),
                reason,
            })?;
            let name = source.file_name().ok_or_else(|| BundleError::BadMount {
                spec: spec.clone(),
                reason: "a library path needs a file name".into(),
            })?;
            Ok(UserMount {
                destination: lib_dir.join(name),
                source,
                readonly: true,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_forms() {
        let m = parse_mount("/home/coder:/home/coder", RuntimeFlavor::Runc).unwrap();
        assert_eq!(m.destination, Path::new("/home/coder"));
        assert!(!m.readonly);
        let m = parse_mount("/a//b/./:/x/:ro", RuntimeFlavor::Sysbox).unwrap();
        assert_eq!(
            (m.source.as_path(), m.destination.as_path(), m.readonly),
            (Path::new("/a/b"), Path::new("/x"), true)
        );
        assert!(
            !parse_mount("/a:/b:rw", RuntimeFlavor::Runc)
                .unwrap()
                .readonly
        );
        for bad in [
            "a:/b",
            "/a:b",
            "/a:/b/../c",
            "/a",
            "/a:/b:rx",
            "/a:/b:ro:x",
            "/a:/",
            "",
        ] {
            assert!(parse_mount(bad, RuntimeFlavor::Runc).is_err(), "{bad}");
        }
    }

    #[test]
    fn sysbox_owned_destinations() {
        for dst in ["/proc", "/proc/sys", "/sys/fs/cgroup", "/dev", "/dev/shm"] {
            let e = parse_mount(&format!("/x:{dst}"), RuntimeFlavor::Sysbox).unwrap_err();
            assert!(e.to_string().contains("sysbox mounts its own"), "{e}");
            assert!(parse_mount(&format!("/x:{dst}"), RuntimeFlavor::Runc).is_ok());
        }
        // Component-wise, not string prefix.
        assert!(parse_mount("/x:/devices", RuntimeFlavor::Sysbox).is_ok());
        assert!(parse_mount("/x:/system", RuntimeFlavor::Sysbox).is_ok());
    }

    #[test]
    fn mount_lists() {
        let l = parse_mounts("/a:/b, /c:/d:ro,", RuntimeFlavor::Runc).unwrap();
        assert_eq!(l.len(), 2);
        assert!(l[1].readonly);
        assert!(parse_mounts("/a:/b,bad", RuntimeFlavor::Runc).is_err());
    }

    #[test]
    fn lib_dir_choice() {
        let has =
            |dirs: &'static [&'static str]| move |p: &Path| dirs.iter().any(|d| Path::new(d) == p);
        let t = "x86_64-linux-gnu";
        assert_eq!(
            choose_lib_dir(t, &has(&["/usr/lib/x86_64-linux-gnu", "/usr/lib64"])),
            Path::new("/usr/lib/x86_64-linux-gnu")
        );
        assert_eq!(
            choose_lib_dir(t, &has(&["/usr/lib64"])),
            Path::new("/usr/lib64")
        );
        assert_eq!(choose_lib_dir(t, &has(&[])), Path::new("/usr/lib"));
        let m =
            gpu_lib_mounts(&["/host/lib/libcuda.so.1".into()], Path::new("/usr/lib64")).unwrap();
        assert_eq!(m[0].destination, Path::new("/usr/lib64/libcuda.so.1"));
        assert!(m[0].readonly);
        assert!(gpu_lib_mounts(&["rel.so".into()], Path::new("/usr/lib")).is_err());
    }

    #[test]
    fn devices() {
        assert!(Device::tun().validate().is_ok());
        assert_eq!((Device::fuse().major, Device::fuse().minor), (10, 229));
        let bad = Device {
            path: "/etc/x".into(),
            ..Device::tun()
        };
        assert!(bad.validate().is_err());
        let bad = Device {
            path: "/dev/../etc".into(),
            ..Device::tun()
        };
        assert!(bad.validate().is_err());
    }
}
