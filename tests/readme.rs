//! The README's Troubleshooting section is the list users search for an
//! error line: every message cvmd's library can print (each `#[error("...")]`
//! in `src/`) must appear there, at least up to its first placeholder.
//! A new error without an entry fails here.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The literal text of each `#[error("...")]` up to its first `{`, escape
/// or end, trimmed (a trailing ':' too); empty for messages that start with a placeholder or
/// are `transparent`.
fn error_prefixes(source: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = source;
    while let Some(at) = rest.find("#[error(") {
        rest = &rest[at + "#[error(".len()..];
        let body = rest.trim_start();
        let Some(lit) = body.strip_prefix('"') else {
            continue;
        };
        let end = lit.find(['{', '"', '\\']).unwrap_or(lit.len());
        let prefix = lit[..end].trim().trim_end_matches(':');
        if !prefix.is_empty() {
            out.push(prefix.to_string());
        }
    }
    out
}

fn troubleshooting() -> String {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let start = readme
        .find("## Troubleshooting")
        .expect("README has no Troubleshooting section");
    let section = &readme[start + 3..];
    let end = section.find("\n## ").unwrap_or(section.len());
    section[..end].to_string()
}

#[test]
fn error_prefixes_are_read_from_attributes() {
    let src = r#"
        #[error("cannot spawn {program}: {source}")]
        #[error(
            "layer of image {image:?} is not readable"
        )]
        #[error(transparent)]
        #[error("{what}: {why}")]
        #[error("process {pid} is not a child \
                 of cvmd")]
    "#;
    assert_eq!(
        error_prefixes(src),
        ["cannot spawn", "layer of image", "process"]
    );
}

#[test]
fn troubleshooting_lists_every_error_message() {
    let section = troubleshooting();
    let mut files = Vec::new();
    rust_files(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut files,
    );
    let mut missing = Vec::new();
    let mut seen = 0;
    for f in files {
        for prefix in error_prefixes(&std::fs::read_to_string(&f).unwrap()) {
            seen += 1;
            if !section.contains(&prefix) {
                missing.push(format!("{}: {prefix:?}", f.display()));
            }
        }
    }
    assert!(
        seen > 50,
        "found only {seen} error messages: is the scan broken?"
    );
    assert!(
        missing.is_empty(),
        "README's Troubleshooting lacks these error messages:\n{}",
        missing.join("\n")
    );
}
