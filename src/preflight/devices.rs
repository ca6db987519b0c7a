//! Devices the workspace may be given: /dev/fuse, /dev/net/tun, NVIDIA GPUs
//! and their driver libraries.

use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use super::{Check, Host, Options};

fn is_char_device(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.file_type().is_char_device())
}

/// A missing device fails only when the workspace is to get it (the
/// bundle would name a device that is not there).
pub fn device(host: &dyn Host, name: &str, path: &str, wanted: bool, setting: &str) -> Check {
    if is_char_device(&host.path(path)) {
        return Check::ok(name, format!("{path} present"));
    }
    let detail = format!("{path} is missing");
    let fix = format!("run the outer container privileged (or add {path} as a device to it)");
    if wanted {
        Check::fail(name, format!("{detail}, and {setting} asks for it"), fix)
    } else {
        Check::warn(name, format!("{detail} (workspaces cannot have it)"), fix)
    }
}

/// Lazy start serves layers from FUSE mounts of cvmd's own: without a
/// `/dev/fuse` it can open, every image is pulled whole before it starts
/// (a warning: slower, not broken).
pub fn lazy_start(host: &dyn Host, wanted: bool) -> Check {
    const NAME: &str = "lazy-start";
    if !wanted {
        return Check::skip(
            NAME,
            "CVMD_LAZY=off: images are pulled whole before they start",
        );
    }
    match crate::lazy::fuse_opens(&host.path("/dev/fuse")) {
        Ok(()) => Check::ok(
            NAME,
            "/dev/fuse opens: an image not in the node cache whose layers carry a TOC (eStargz, zstd:chunked) starts before it is downloaded",
        ),
        Err(e) => Check::warn(
            NAME,
            format!("/dev/fuse does not open ({e}): every image is pulled whole before it starts"),
            "run the outer container privileged (or add /dev/fuse as a device to it), or set CVMD_LAZY=off",
        ),
    }
}

/// `nvidia0`, `nvidia1`, ...: one per GPU (`nvidiactl`, `nvidia-uvm` are
/// the driver's control devices).
pub fn gpu_names(dev: &[String]) -> Vec<String> {
    dev.iter()
        .filter(|n| {
            n.strip_prefix("nvidia")
                .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()))
        })
        .cloned()
        .collect()
}

/// The user-space half of the driver that a CUDA program loads.
const DRIVER_LIBS: &[&str] = &["libcuda.so", "libnvidia-ml.so"];

/// Driver libraries under `dir` (and its multiarch subdirs, one level).
fn driver_libs(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    if let Ok(entries) = std::fs::read_dir(dir) {
        dirs.extend(
            entries
                .flatten()
                .filter(|e| e.path().is_dir())
                .map(|e| e.path()),
        );
    }
    for d in dirs {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if DRIVER_LIBS.iter().any(|l| n.starts_with(l)) && !found.contains(&n) {
                found.push(n);
            }
        }
    }
    found.sort();
    found
}

pub fn gpus(host: &dyn Host, opts: &Options) -> Check {
    let name = "nvidia-gpus";
    let gpus = gpu_names(&host.list("/dev"));
    if gpus.is_empty() {
        return Check::skip(name, "no NVIDIA GPUs (/dev/nvidia*)");
    }
    let Some(lib_dir) = &opts.usr_lib_dir else {
        return Check::warn(
            name,
            format!("{} GPU(s) ({}), but no driver library dir is set", gpus.len(), gpus.join(", ")),
            "mount the node's /usr/lib into the outer container and set CVMD_USR_LIB_DIR (CODER_USR_LIB_DIR) to it",
        );
    };
    let libs = driver_libs(&host.path(&lib_dir.to_string_lossy()));
    if libs.iter().any(|l| l.starts_with("libcuda.so")) {
        Check::ok(
            name,
            format!(
                "{} GPU(s); driver libraries in {}: {}",
                gpus.len(),
                lib_dir.display(),
                libs.join(", ")
            ),
        )
    } else {
        Check::warn(
            name,
            format!("{} GPU(s), but no libcuda.so under {}", gpus.len(), lib_dir.display()),
            "install the NVIDIA driver on the node (or its container toolkit) and mount its library dir at CVMD_USR_LIB_DIR",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpus_are_the_numbered_devices() {
        let dev: Vec<String> = [
            "nvidia0",
            "nvidia1",
            "nvidiactl",
            "nvidia-uvm",
            "nvidia-caps",
            "null",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(gpu_names(&dev), ["nvidia0", "nvidia1"]);
    }

    #[test]
    fn driver_libs_are_found_in_multiarch_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let arch = dir.path().join("x86_64-linux-gnu");
        std::fs::create_dir(&arch).unwrap();
        std::fs::write(arch.join("libcuda.so.535.104.05"), b"").unwrap();
        std::fs::write(dir.path().join("libnvidia-ml.so.1"), b"").unwrap();
        std::fs::write(dir.path().join("libc.so.6"), b"").unwrap();
        assert_eq!(
            driver_libs(dir.path()),
            ["libcuda.so.535.104.05", "libnvidia-ml.so.1"]
        );
    }
}
