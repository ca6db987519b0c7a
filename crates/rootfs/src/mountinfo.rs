//! Reading mount points out of `/proc/self/mountinfo` (parsing is pure),
//! the one mountinfo parser here. Not procfs-core's: it reads the file as
//! UTF-8 lines (one mount point that is not UTF-8 fails the whole parse,
//! and with it every lease check) and leaves the octal escapes of spaces
//! and tabs in the paths.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

/// Mount points in mountinfo order (parents before the mounts on them).
/// The fifth field is the mount point with space, tab, newline and `\`
/// written as octal escapes (proc(5)).
pub fn mount_points(mountinfo: &[u8]) -> Vec<PathBuf> {
    mountinfo
        .split(|&b| b == b'\n')
        .filter_map(|line| line.split(|&b| b == b' ').nth(4))
        .map(|field| PathBuf::from(OsString::from_vec(unescape(field))))
        .collect()
}

/// A mountinfo field with its octal escapes (space, tab, newline, `\`)
/// undone, as bytes: a mount point need not be UTF-8.
pub fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\' && i + 4 <= field.len() {
            let oct = &field[i + 1..i + 4];
            if oct.iter().all(|d| (b'0'..=b'7').contains(d)) {
                let v = oct
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                if let Ok(byte) = u8::try_from(v) {
                    out.push(byte);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(field[i]);
        i += 1;
    }
    out
}

/// Mounts at or beneath `target`, in the order to unmount them: the last
/// mounted first, so submounts and stacked mounts go before what they sit on.
pub fn unmount_order(points: &[PathBuf], target: &Path) -> Vec<PathBuf> {
    points
        .iter()
        .rev()
        .filter(|p| p.starts_with(target))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &[u8] = b"\
22 1 254:0 / / rw,relatime - ext4 /dev/vda rw
30 22 0:40 / /tmp/ws/root rw - overlay overlay rw,lowerdir=a
31 30 0:41 / /tmp/ws/root/proc rw - proc proc rw
32 22 0:42 / /tmp/ws/root\\040x rw - tmpfs tmpfs rw
33 30 0:43 / /tmp/ws/root rw - overlay overlay rw
";

    #[test]
    fn parses_and_unescapes_mount_points() {
        let p = mount_points(SAMPLE);
        assert_eq!(p.len(), 5);
        assert_eq!(p[3], PathBuf::from("/tmp/ws/root x"));
    }

    #[test]
    fn unmount_order_is_last_first_and_excludes_siblings() {
        let p = mount_points(SAMPLE);
        let order = unmount_order(&p, Path::new("/tmp/ws/root"));
        assert_eq!(
            order,
            vec![
                PathBuf::from("/tmp/ws/root"),
                PathBuf::from("/tmp/ws/root/proc"),
                PathBuf::from("/tmp/ws/root"),
            ]
        );
    }
}
