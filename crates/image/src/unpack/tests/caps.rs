//! Unpacking without CAP_MKNOD, as a rootless or user-namespaced cvmd
//! would: devices are skipped and counted, whiteouts still work.

use std::fs;
use std::io;
use std::os::unix::fs::FileTypeExt;

use tar::EntryType;

use super::*;

/// `struct __user_cap_header_struct` / `__user_cap_data_struct`
/// (linux/capability.h), for dropping CAP_MKNOD from one thread.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Capabilities are per thread on Linux, so this affects only the calling
/// (test) thread.
fn drop_cap_mknod_on_this_thread() {
    const VERSION_3: u32 = 0x2008_0522;
    const CAP_MKNOD: u32 = 27;
    let mut header = CapHeader {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: header and a two-element data array are what capget(2) expects
    // for version 3; both outlive the call.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    assert_eq!(rc, 0, "capget: {}", io::Error::last_os_error());
    data[0].effective &= !(1 << CAP_MKNOD);
    // SAFETY: as above; capset(2) only reads them.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) };
    assert_eq!(rc, 0, "capset: {}", io::Error::last_os_error());
}

#[test]
fn devices_are_skipped_without_cap_mknod_but_whiteouts_are_not() {
    if !require_root("devices_are_skipped_without_cap_mknod_but_whiteouts_are_not") {
        return;
    }
    let sb = Sandbox::new();
    let mut l = Layer::new();
    l.entry("null", EntryType::Char, "", b"", |h| {
        h.set_device_major(1).unwrap();
        h.set_device_minor(3).unwrap();
    })
    .entry("fifo", EntryType::Fifo, "", b"", |_| {})
    .file(".wh.gone", b"");
    let tar = l.bytes();
    let dest = sb.dest.clone();
    let stats = std::thread::spawn(move || {
        drop_cap_mknod_on_this_thread();
        unpack_layer(&tar[..], &dest, &opts())
    })
    .join()
    .unwrap()
    .unwrap();
    assert_eq!(
        (stats.skipped_devices, stats.nodes, stats.whiteouts),
        (1, 1, 1)
    );
    assert!(!sb.path("null").exists());
    // Linux >= 5.8 lets anyone create the 0:0 whiteout device.
    assert!(fs::symlink_metadata(sb.path("gone"))
        .unwrap()
        .file_type()
        .is_char_device());
    sb.assert_contained();
}
