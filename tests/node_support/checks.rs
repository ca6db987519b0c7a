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
            problems.push(format!("blob {} holds content with digest {got}", path.display()));
        }
    }
    for (hex, path) in entries(&cache.join("layers/sha256")) {
        let marker = path.join("layer.json");
        let meta: Option<serde_json::Value> = std::fs::read(&marker)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let named = meta.as_ref().and_then(|m| m["diff_id"].as_str().map(str::to_string));
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
    entries(&cache.join("leases")).into_iter().map(|(n, _)| n).collect()
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
    let errors: Vec<&str> = log.lines().filter(|l| l.starts_with("cvmd: error: ")).collect();
    match errors.as_slice() {
        [line] if log.lines().last() == Some(line) => Ok(line.to_string()),
        [_] => Err("the error line is not the last".into()),
        [] => Err("no `cvmd: error:` line".into()),
        _ => Err(format!("{} error lines", errors.len())),
    }
}
