//! NVIDIA GPUs for the workspace (`CVMD_ADD_GPU`): the outer container's
//! `/dev/nvidia*` nodes become devices of the inner one, and the driver's
//! user-space libraries found in the outer lib dir (`CVMD_USR_LIB_DIR`) are
//! bound read-only into the image's lib dir by the bundle. The outer
//! container gets both from the NVIDIA container toolkit; the inner one has
//! no toolkit, so cvmd passes them on, as envbox does.
//!
//! What counts as a GPU device or driver library is decided by plain
//! functions of names; [`discover`] does the directory reads.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::bundle::Device;

/// File-name prefixes of the NVIDIA driver's user-space libraries (the
/// set libnvidia-container mounts for the compute, utility, video and
/// graphics capabilities).
pub const LIB_PREFIXES: &[&str] = &[
    "libnvidia-",
    "libcuda.",
    "libcudadebugger.",
    "libnvcuvid.",
    "libnvoptix.",
    "libvdpau_nvidia.",
    "libEGL_nvidia.",
    "libGLESv1_CM_nvidia.",
    "libGLESv2_nvidia.",
    "libGLX_nvidia.",
];

/// The outer environment variables passed on with the GPUs (the toolkit's
/// knobs: `NVIDIA_VISIBLE_DEVICES`, `NVIDIA_DRIVER_CAPABILITIES`, ...).
pub const ENV_PATTERN: &str = "NVIDIA_*";

#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error(
        "cannot read the GPU device dir {path:?}: {source}; \
         unset CVMD_ADD_GPU or give the outer container its GPUs"
    )]
    DevDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "CVMD_ADD_GPU is on but {dir:?} holds no nvidia* device nodes; \
         give the outer container its GPUs (NVIDIA container toolkit) or unset CVMD_ADD_GPU"
    )]
    NoDevices { dir: PathBuf },
    #[error(
        "cannot read the GPU library dir {path:?}: {source}; \
         set CVMD_USR_LIB_DIR (CODER_USR_LIB_DIR) to the outer dir holding libcuda/libnvidia-*"
    )]
    LibDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What the workspace gets.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Gpus {
    pub devices: Vec<Device>,
    /// Outer paths of the driver libraries and their soname links.
    pub libs: Vec<PathBuf>,
}

/// Whether a device file name is an NVIDIA node (`nvidia0`, `nvidiactl`,
/// `nvidia-uvm`, `nvidia-modeset`, ...).
pub fn is_gpu_device(name: &str) -> bool {
    name.starts_with("nvidia")
}

/// Whether a file name is an NVIDIA driver library (`.so` or a versioned
/// `.so.N...`), by the toolkit's name patterns.
pub fn is_gpu_lib(name: &str) -> bool {
    LIB_PREFIXES.iter().any(|p| name.starts_with(p))
        && (name.ends_with(".so") || name.contains(".so."))
}

/// The default lib dir: Debian/Ubuntu's multiarch dir of this architecture.
pub fn default_lib_dir() -> PathBuf {
    PathBuf::from("/usr/lib").join(crate::bundle::multiarch_triplet())
}

/// Finds the device nodes in `dev_dir` (and its `nvidia-caps/`) and the
/// driver libraries in `lib_dir`. Inside, each node has the same path
/// below `/dev` and the outer node's permission bits.
pub fn discover(dev_dir: &Path, lib_dir: &Path) -> Result<Gpus, GpuError> {
    let mut devices = Vec::new();
    scan_devices(dev_dir, Path::new("/dev"), &mut devices, true)?;
    if devices.is_empty() {
        return Err(GpuError::NoDevices {
            dir: dev_dir.to_path_buf(),
        });
    }
    devices.sort_by(|a, b| a.path.cmp(&b.path));
    let lib_err = |source| GpuError::LibDir {
        path: lib_dir.to_path_buf(),
        source,
    };
    let mut libs = Vec::new();
    for entry in std::fs::read_dir(lib_dir).map_err(lib_err)? {
        let entry = entry.map_err(lib_err)?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !is_gpu_lib(name) {
            continue;
        }
        let path = entry.path();
        // A soname link is bound as what it points at (bind mounts follow
        // the source's links); one leading nowhere or to a non-file is
        // skipped rather than failing the mount in the runtime.
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => libs.push(path),
            _ => {
                tracing::warn!(path = %path.display(), "skipping a GPU library that is not a file")
            }
        }
    }
    libs.sort();
    Ok(Gpus { devices, libs })
}

fn scan_devices(
    dir: &Path,
    inside: &Path,
    out: &mut Vec<Device>,
    top: bool,
) -> Result<(), GpuError> {
    let err = |source| GpuError::DevDir {
        path: dir.to_path_buf(),
        source,
    };
    for entry in std::fs::read_dir(dir).map_err(err)? {
        let entry = entry.map_err(err)?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !is_gpu_device(name) {
            continue;
        }
        // symlink_metadata: a link in the dev dir is not a node of ours.
        let Ok(meta) = entry.path().symlink_metadata() else {
            continue;
        };
        if meta.file_type().is_char_device() {
            let rdev = meta.rdev();
            out.push(Device {
                path: inside.join(name),
                major: i64::from(libc::major(rdev)),
                minor: i64::from(libc::minor(rdev)),
                mode: meta.permissions().mode() & 0o777,
            });
        } else if top && meta.is_dir() && name == "nvidia-caps" {
            scan_devices(&entry.path(), &inside.join(name), out, false)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn library_names() {
        for yes in [
            "libcuda.so",
            "libcuda.so.1",
            "libcuda.so.535.104.05",
            "libnvidia-ml.so.1",
            "libnvidia-ptxjitcompiler.so.535.104.05",
            "libGLX_nvidia.so.0",
            "libnvcuvid.so.1",
        ] {
            assert!(is_gpu_lib(yes), "{yes}");
        }
        for no in [
            "libc.so.6",
            "libcudart.so.12",
            "libnvidia-ml.a",
            "libGLX_mesa.so.0",
            "nvidia",
            "libcuda",
        ] {
            assert!(!is_gpu_lib(no), "{no}");
        }
    }

    #[test]
    fn device_names() {
        assert!(is_gpu_device("nvidia0"));
        assert!(is_gpu_device("nvidiactl"));
        assert!(is_gpu_device("nvidia-uvm"));
        assert!(!is_gpu_device("null"));
        assert!(!is_gpu_device("dri"));
    }

    #[test]
    fn discovery_needs_nodes_and_reads_libs() {
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("dev");
        let lib = dir.path().join("lib");
        std::fs::create_dir_all(&dev).unwrap();
        std::fs::create_dir_all(&lib).unwrap();
        // Regular files named like nodes are not nodes.
        std::fs::write(dev.join("nvidia0"), "").unwrap();
        let e = discover(&dev, &lib).unwrap_err();
        assert!(matches!(e, GpuError::NoDevices { .. }), "{e}");
        assert!(e.to_string().contains("CVMD_ADD_GPU"), "{e}");
        let e = discover(&dir.path().join("absent"), &lib).unwrap_err();
        assert!(matches!(e, GpuError::DevDir { .. }), "{e}");
    }
}
