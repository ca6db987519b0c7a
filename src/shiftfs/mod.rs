//! shiftfs: whether the node needs it, whether cvmd may install it, and
//! (in `install`) the commands that build and load it.
//!
//! Sysbox uses shiftfs only where ID-mapped mounts cannot serve (kernels
//! before 5.12, overlayfs on ID-mapped layers before 5.19, file systems
//! without ID mapping). A module is never loaded when ID-mapped mounts
//! already serve: an extra kernel module is attack surface for nothing.

pub mod install;

/// Where the module's source is, where it is built, and whether
/// `cvmd run` installs it at start.
#[derive(Debug, Clone)]
pub struct Options {
    /// The source the outer image ships.
    pub src: PathBuf,
    /// Builds go under `<build_root>/<kernel release>`.
    pub build_root: PathBuf,
    pub install_at_start: bool,
}

use std::path::PathBuf;

/// The EFI global variable GUID (UEFI spec, "Globally Defined Variables").
pub const SECURE_BOOT_VAR: &str =
    "/sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c";

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SecureBoot {
    On,
    Off,
    /// Booted without EFI (no /sys/firmware/efi): no secure boot.
    NotEfi,
    /// EFI, but the variable is missing or malformed.
    Unknown,
}

/// The variable's content: 4 attribute bytes, then one data byte (1 = on).
pub fn secure_boot(efi_present: bool, var: Option<&[u8]>) -> SecureBoot {
    match var {
        _ if !efi_present => SecureBoot::NotEfi,
        Some([_, _, _, _, 1]) => SecureBoot::On,
        Some([_, _, _, _, 0]) => SecureBoot::Off,
        _ => SecureBoot::Unknown,
    }
}

/// What was found on the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    pub release: String,
    /// `shiftfs` is in /proc/filesystems.
    pub loaded: bool,
    /// A `shiftfs.ko*` under /lib/modules/RELEASE.
    pub module: Option<PathBuf>,
    pub secure_boot: SecureBoot,
    /// /lib/modules/RELEASE/build or /usr/src/linux-headers-RELEASE.
    pub headers: Option<PathBuf>,
    /// ID-mapped mounts and overlayfs on ID-mapped layers both work.
    pub idmapped_serves: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Loaded,
    NotNeeded,
    /// Built for this kernel, not loaded: `modprobe shiftfs`.
    OnDisk(PathBuf),
    /// Needed, missing, and cvmd may build and load it.
    Installable {
        headers: PathBuf,
    },
    /// Needed and missing; what stops an install.
    Blocked {
        secure_boot_on: bool,
        headers_missing: bool,
    },
}

pub fn decide(f: &Facts) -> Verdict {
    if f.loaded {
        return Verdict::Loaded;
    }
    if f.idmapped_serves {
        return Verdict::NotNeeded;
    }
    if let Some(m) = &f.module {
        return Verdict::OnDisk(m.clone());
    }
    // An unsigned module does not load under secure boot; an unknown
    // state is not proof of "off", so only On blocks, Unknown is said.
    let secure_boot_on = f.secure_boot == SecureBoot::On;
    match &f.headers {
        Some(h) if !secure_boot_on => Verdict::Installable { headers: h.clone() },
        h => Verdict::Blocked {
            secure_boot_on,
            headers_missing: h.is_none(),
        },
    }
}

/// One line for a person: what the verdict means, and what to do (empty
/// when there is nothing to do).
pub fn message(f: &Facts, v: &Verdict) -> (String, Option<String>) {
    let release = &f.release;
    match v {
        Verdict::Loaded => ("loaded (in /proc/filesystems)".into(), None),
        Verdict::NotNeeded => (
            "not needed: ID-mapped mounts serve (no module is loaded)".into(),
            None,
        ),
        Verdict::OnDisk(p) => (
            format!(
                "needed; built for {release} at {} but not loaded",
                p.display()
            ),
            Some("on the node: modprobe shiftfs".into()),
        ),
        Verdict::Installable { headers } => (
            format!(
                "needed and missing; installable (secure boot {}, headers at {})",
                match f.secure_boot {
                    SecureBoot::NotEfi => "absent: no EFI",
                    SecureBoot::Unknown => "state unknown",
                    _ => "off",
                },
                headers.display()
            ),
            Some(
                "cvmd shiftfs install (or set CVMD_SHIFTFS_INSTALL=true to do it at start)".into(),
            ),
        ),
        Verdict::Blocked {
            secure_boot_on,
            headers_missing,
        } => {
            let mut why = Vec::new();
            let mut fix = Vec::new();
            if *secure_boot_on {
                why.push("secure boot is on (an unsigned module will not load)");
                fix.push("turn secure boot off in the node's firmware or use a kernel that ships shiftfs (Ubuntu)");
            }
            if *headers_missing {
                why.push("no kernel headers for this kernel");
                fix.push("install linux-headers-$(uname -r) on the node and mount /lib/modules and /usr/src into the outer container");
            }
            (
                format!("needed and missing; cannot install: {}", why.join(", ")),
                Some(fix.join("; ")),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> Facts {
        Facts {
            release: "5.10.0-28-amd64".into(),
            loaded: false,
            module: None,
            secure_boot: SecureBoot::Off,
            headers: Some("/lib/modules/5.10.0-28-amd64/build".into()),
            idmapped_serves: false,
        }
    }

    #[test]
    fn efivar_bytes() {
        assert_eq!(secure_boot(true, Some(&[6, 0, 0, 0, 1])), SecureBoot::On);
        assert_eq!(secure_boot(true, Some(&[6, 0, 0, 0, 0])), SecureBoot::Off);
        assert_eq!(secure_boot(true, Some(&[6, 0, 0])), SecureBoot::Unknown);
        assert_eq!(secure_boot(true, None), SecureBoot::Unknown);
        assert_eq!(secure_boot(false, None), SecureBoot::NotEfi);
    }

    #[test]
    fn never_needed_when_idmapped_mounts_serve() {
        let f = Facts {
            idmapped_serves: true,
            ..facts()
        };
        assert_eq!(decide(&f), Verdict::NotNeeded);
        let (text, fix) = message(&f, &decide(&f));
        assert!(text.starts_with("not needed") && fix.is_none());
        // Already loaded is reported as such, whatever else holds.
        let f = Facts { loaded: true, ..f };
        assert_eq!(decide(&f), Verdict::Loaded);
    }

    #[test]
    fn needed_and_installable_only_with_secure_boot_off_and_headers() {
        let v = decide(&facts());
        assert!(matches!(v, Verdict::Installable { .. }));
        assert!(message(&facts(), &v)
            .1
            .unwrap()
            .contains("cvmd shiftfs install"));
        let f = Facts {
            secure_boot: SecureBoot::NotEfi,
            ..facts()
        };
        assert!(matches!(decide(&f), Verdict::Installable { .. }));
        let f = Facts {
            module: Some("/lib/modules/x/extra/shiftfs.ko".into()),
            ..facts()
        };
        assert!(matches!(decide(&f), Verdict::OnDisk(_)));
    }

    #[test]
    fn blocked_says_exactly_which_of_the_two_is_missing() {
        let sb = Facts {
            secure_boot: SecureBoot::On,
            ..facts()
        };
        let v = decide(&sb);
        assert_eq!(
            v,
            Verdict::Blocked {
                secure_boot_on: true,
                headers_missing: false
            }
        );
        let (text, fix) = message(&sb, &v);
        assert!(
            text.contains("secure boot is on") && !text.contains("headers"),
            "{text}"
        );
        assert!(fix.unwrap().contains("secure boot off"));
        let nh = Facts {
            headers: None,
            ..facts()
        };
        let (text, fix) = message(&nh, &decide(&nh));
        assert!(
            text.contains("no kernel headers") && !text.contains("secure boot"),
            "{text}"
        );
        assert!(fix.unwrap().contains("linux-headers"));
        let both = Facts {
            headers: None,
            ..sb
        };
        let (text, _) = message(&both, &decide(&both));
        assert!(text.contains("secure boot is on") && text.contains("no kernel headers"));
    }
}
