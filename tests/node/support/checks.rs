//! What must hold on a node after any churn: the store verifies, and dead
//! pods left nothing behind.

use std::io::Read;
use std::path::Path;

use sha2::{Digest as _, Sha256};

/// Problems with files named by a digest: a blob whose bytes hash to
/// something else, a published layer dir without a `layer.json` naming it.
pub fn store_problems(cache: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    for (hex, path) in entries(&cache.join("blobs/sha256")) {
        let got = sha256_file(&path);
        if got != hex {
            problems.push(format!(
                "blob {} holds content with digest {got}",
                path.display()
            ));
        }
    }
    for (hex, path) in entries(&cache.join("layers/sha256")) {
        let marker = path.join("layer.json");
        let meta: Option<serde_json::Value> = std::fs::read(&marker)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let named = meta
            .as_ref()
            .and_then(|m| m["diff_id"].as_str().map(str::to_string));
        if named.as_deref() != Some(&format!("sha256:{hex}")) {
            problems.push(format!("layer dir {} has marker {named:?}", path.display()));
        }
    }
    problems
}

/// `(name, path)` of each entry of `dir`, sorted; none if it is absent.
fn entries(dir: &Path) -> Vec<(String, std::path::PathBuf)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .collect();
    out.sort();
    out
}

fn sha256_file(path: &Path) -> String {
    let mut f = std::fs::File::open(path).unwrap();
    let mut h = Sha256::new();
    let mut buf = vec![0; 1 << 16];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex::encode(h.finalize())
}

/// Lease files in the cache (each names a workspace).
pub fn leases(cache: &Path) -> Vec<String> {
    entries(&cache.join("leases"))
        .into_iter()
        .map(|(n, _)| n)
        .collect()
}

/// The layers (diff_ids) published in the cache.
pub fn layers(cache: &Path) -> Vec<String> {
    entries(&cache.join("layers/sha256"))
        .into_iter()
        .map(|(n, _)| format!("sha256:{n}"))
        .collect()
}

/// Lines of a pod's log that show a panic.
pub fn panics(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("panicked at") || l.contains("RUST_BACKTRACE"))
        .collect()
}

/// The failure a pod that did not succeed must give: exactly one
/// `cvmd: error: ` line, its last; the line, or what is wrong instead.
pub fn one_error_line(log: &str) -> Result<String, String> {
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with("cvmd: error: "))
        .collect();
    match errors.as_slice() {
        [line] if log.lines().last() == Some(line) => Ok(line.to_string()),
        [_] => Err("the error line is not the last".into()),
        [] => Err("no `cvmd: error:` line".into()),
        _ => Err(format!("{} error lines", errors.len())),
    }
}

/// What dead pods left on the node: mounts, cgroups, bridge ports,
/// iptables rules in the node's namespace, leases in the cache.
pub fn leftovers(node: &super::Node) -> Vec<String> {
    let mut out = Vec::new();
    for m in node.mounts() {
        out.push(format!("mount left on the node: {m}"));
    }
    for c in node.cgroups() {
        out.push(format!("cgroup left: {c}"));
    }
    // A dead pod's veth goes with its network namespace, which the kernel
    // tears down asynchronously after the pod's last process: give it a
    // few seconds before calling it left.
    let pod_veths = || -> Vec<String> {
        node.sh("ip -o link show master nb0")
            .lines()
            .filter(|l| !l.contains("vreg@"))
            .map(str::to_string)
            .collect()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut veths = pod_veths();
    while !veths.is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(200));
        veths = pod_veths();
    }
    for l in veths {
        out.push(format!("veth left on the bridge: {l}"));
    }
    let rules = node.sh("iptables-save");
    if rules.contains("cvm") {
        out.push(format!("iptables rules in the node's namespace:\n{rules}"));
    }
    for l in leases(&node.cache_dir()) {
        out.push(format!("lease of a dead pod left after the next gc: {l}"));
    }
    out
}

/// The lower dirs in the shared cache of every overlay in `mountinfo` (a
/// pod's): the layers its mounts stand on, as paths inside the pod.
pub fn mounted_layers(mountinfo: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in mountinfo.lines() {
        let Some((_, after)) = line.split_once(" - overlay ") else {
            continue;
        };
        let options = after.split(' ').nth(1).unwrap_or_default();
        for opt in options.split(',') {
            let dirs = opt
                .strip_prefix("lowerdir+=")
                .or_else(|| opt.strip_prefix("lowerdir="))
                .unwrap_or_default();
            out.extend(
                dirs.split(':')
                    .filter(|d| d.starts_with("/var/lib/cvmd/"))
                    .map(str::to_string),
            );
        }
    }
    out
}

/// Layers that `pod` has mounted but the cache no longer holds (removed
/// while mounted): each a lower dir whose published layer dir or marker is
/// gone.
pub fn missing_mounted_layers(pod: &super::pod::Pod, cache: &Path) -> Vec<String> {
    let mountinfo = pod.exec(&["cat", "/proc/self/mountinfo"]);
    let text = String::from_utf8_lossy(&mountinfo.stdout);
    mounted_layers(&text)
        .into_iter()
        .filter(|dir| {
            let on_node = cache.join(dir.trim_start_matches("/var/lib/cvmd/"));
            let layer_dir = on_node.parent().unwrap();
            !(on_node.is_dir() && layer_dir.join("layer.json").is_file())
        })
        .map(|dir| format!("{}: {dir} removed while mounted", pod.id()))
        .collect()
}

#[test]
fn overlay_lower_dirs_in_the_cache_are_found_in_both_option_forms() {
    let info = "95 155 0:71 / /run/cvmd/w/rootfs rw - overlay none rw,lowerdir+=/var/lib/cvmd/layers/sha256/aa/root,lowerdir+=/var/lib/cvmd/layers/sha256/bb/root,upperdir=/u,workdir=/w\n\
                96 155 0:72 / /x rw - overlay none rw,lowerdir=/var/lib/cvmd/layers/sha256/cc/root:/elsewhere,upperdir=/u\n\
                136 68 0:61 / / rw - overlay overlay rw,lowerdir=/var/cache/outer,upperdir=/u";
    assert_eq!(
        mounted_layers(info),
        [
            "/var/lib/cvmd/layers/sha256/aa/root",
            "/var/lib/cvmd/layers/sha256/bb/root",
            "/var/lib/cvmd/layers/sha256/cc/root"
        ]
    );
}

/// Chunks in the node's chunk cache (lazy start's) whose bytes do not
/// hash to their name: each must be the verified chunk it is named for.
pub fn chunk_problems(cache: &Path) -> Vec<String> {
    entries(&cache.join("chunks/sha256"))
        .into_iter()
        // A chunk being written (`.tmp*`) is not a chunk yet.
        .filter(|(name, _)| !name.starts_with('.'))
        .filter_map(|(hex, path)| {
            let got = sha256_file(&path);
            (got != hex)
                .then(|| format!("chunk {} holds content with digest {got}", path.display()))
        })
        .collect()
}

/// FUSE mounts in `mountinfo` (a mount table's text): the lines whose file
/// system type is `fuse` or `fuse.*`.
pub fn fuse_mounts(mountinfo: &str) -> Vec<String> {
    mountinfo
        .lines()
        .filter(|l| {
            l.split_once(" - ")
                .and_then(|(_, after)| after.split(' ').next())
                .is_some_and(|t| t == "fuse" || t.starts_with("fuse."))
        })
        .map(str::to_string)
        .collect()
}

#[test]
fn fuse_mounts_are_found_by_their_type() {
    let info = "40 30 0:50 / /run/cvmd/workspaces/w/lazy/0 ro,nosuid - fuse.cvmd-lazy cvmd-lazy:sha256:0123456789ab ro,user_id=0\n\
                41 30 0:51 / /x rw - overlay none rw,lowerdir=/fuse\n\
                42 30 0:52 / /y rw - fuse /dev/fuse rw";
    let found = fuse_mounts(info);
    assert_eq!(found.len(), 2);
    assert!(found[0].contains("lazy/0") && found[1].contains("/y"));
}
