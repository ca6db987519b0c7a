//! docs/troubleshooting.md is the list users search for an error line:
//! every message cvmd can print (each `#[error("...")]` in `src/` and
//! `crates/`) must appear there, at least up to its first placeholder.
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
    let page = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/troubleshooting.md");
    let readme = std::fs::read_to_string(page).unwrap();
    let start = readme
        .find("## Troubleshooting")
        .expect("docs/troubleshooting.md has no Troubleshooting section");
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
    // The daemon and every crate of the workspace.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    rust_files(&root.join("crates"), &mut files);
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
        "docs/troubleshooting.md lacks these error messages:\n{}",
        missing.join("\n")
    );
}

/// The README and the reference pages under docs/ it links: one text.
fn readme() -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut text = std::fs::read_to_string(root.join("README.md")).unwrap();
    let mut pages: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    pages.sort();
    assert!(pages.len() > 5, "docs/ holds only {pages:?}");
    for page in pages {
        text.push('\n');
        text.push_str(&std::fs::read_to_string(page).unwrap());
    }
    text
}

/// The text a reader copies: `inline code` spans (which may wrap across
/// lines) and indented code lines.
fn code_spans(text: &str) -> Vec<String> {
    let (code, prose): (Vec<&str>, Vec<&str>) = text.lines().partition(|l| l.starts_with("    "));
    let mut out: Vec<String> = code.iter().map(|l| l.trim().to_string()).collect();
    let prose = prose.join("\n");
    out.extend(
        prose
            .split('`')
            .skip(1)
            .step_by(2)
            .map(|span| span.replace('\n', " ")),
    );
    out
}

/// Every `CVMD_[A-Z0-9_]+` name in `text` (a trailing `_` dropped).
fn setting_names(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("CVMD_") {
        let before = rest[..at].chars().next_back();
        let tail = &rest[at..];
        let len = tail
            .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        let name = tail[..len].trim_end_matches('_');
        if !before.is_some_and(|c| c.is_ascii_alphanumeric()) && name.len() > "CVMD_".len() {
            out.push(name.to_string());
        }
        rest = &tail[len.max(1)..];
    }
    out
}

/// The subcommand of each code span that is a `program` command line
/// (starts with it, or with a path ending in it); spans that only mention
/// the program in a sentence, like quoted error messages, are not.
fn subcommands_used(spans: &[String], program: &str) -> Vec<String> {
    let mut out = Vec::new();
    for span in spans {
        let mut words = span.split_whitespace();
        let first = words.next().unwrap_or("");
        if first != program && !first.ends_with(&format!("/{program}")) {
            continue;
        }
        // Flags before the subcommand (`cvmctl --socket PATH status`).
        let mut word = words.next();
        while let Some(w) = word.filter(|w| w.starts_with('-')) {
            word = if w.contains('=') || w == "--help" || w == "--version" {
                None
            } else {
                words.next();
                words.next()
            };
        }
        if let Some(w) = word {
            let w = w.trim_end_matches([',', '.', ':', ';', ')']);
            if !w.is_empty() && w.chars().all(|c| c.is_ascii_lowercase() || c == '-') {
                out.push(w.to_string());
            }
        }
    }
    out
}

/// A binary's subcommands (and their aliases), from its --help.
fn subcommands_of(bin: &Path) -> Vec<String> {
    let out = std::process::Command::new(bin)
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout).into_owned();
    let commands = help
        .split("Commands:")
        .nth(1)
        .unwrap_or_else(|| panic!("{} --help lists no commands", bin.display()));
    let mut names: Vec<String> = commands
        .lines()
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    for name in names.clone() {
        let sub = std::process::Command::new(bin)
            .args([name.as_str(), "--help"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&sub.stdout).into_owned();
        if let Some(aliases) = text.split("[aliases: ").nth(1) {
            let list = aliases.split(']').next().unwrap_or("");
            names.extend(list.split(", ").map(str::to_string));
        }
    }
    names
}

/// Repository paths a reader would open: spans starting at one of the
/// repository's top-level entries, without placeholders.
fn repo_paths(spans: &[String]) -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tops: Vec<String> = std::fs::read_dir(root)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.') && n != "target")
        .collect();
    let mut out = Vec::new();
    for span in spans {
        for word in span.split_whitespace() {
            let word = word.trim_end_matches([',', '.', ':', ';', ')']);
            let Some((top, _)) = word.split_once('/') else {
                continue;
            };
            if !tops.iter().any(|t| t == top) || word.contains(['*', '<', '$', '{']) {
                continue;
            }
            if word.contains("...") || word.chars().any(|c| c.is_ascii_uppercase()) {
                // A placeholder (`images/NAME`), not a file.
                continue;
            }
            out.push(word.to_string());
        }
    }
    out
}

#[test]
fn readme_facts_are_checked_from_text() {
    let text = "Set `CVMD_IMAGE` and CVMD_NOPE_; see `src/x.rs`.\n    cvmctl --socket /s status\n    cvmd pull IMAGE";
    assert_eq!(setting_names(text), ["CVMD_IMAGE", "CVMD_NOPE"]);
    let spans = code_spans(text);
    assert_eq!(subcommands_used(&spans, "cvmctl"), ["status"]);
    assert_eq!(subcommands_used(&spans, "cvmd"), ["pull"]);
    assert_eq!(repo_paths(&spans), ["src/x.rs"]);
}

/// The README names only settings cvmd defines (src/config.rs's table),
/// subcommands cvmd and cvmctl have, and files the repository holds.
#[test]
fn readme_names_only_real_settings_commands_and_files() {
    let readme = readme();
    let mut wrong = Vec::new();
    // Placeholders the Troubleshooting lines use for "any setting".
    const PLACEHOLDERS: &[&str] = &["CVMD_X"];
    for name in setting_names(&readme) {
        if !PLACEHOLDERS.contains(&name.as_str())
            && !cvmd::config::SETTINGS.iter().any(|s| s.env == name)
        {
            wrong.push(format!("setting {name} is not in src/config.rs"));
        }
    }
    let spans = code_spans(&readme);
    for (program, bin) in [
        ("cvmd", crate::common::cvmd_bin()),
        ("cvmctl", crate::common::cvmctl_bin()),
    ] {
        let known = subcommands_of(&bin);
        for used in subcommands_used(&spans, program) {
            if !known.contains(&used) {
                wrong.push(format!(
                    "`{program} {used}` is not a subcommand ({known:?})"
                ));
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let paths = repo_paths(&spans);
    assert!(
        paths.len() > 10,
        "found only {paths:?}: is the scan broken?"
    );
    for path in paths {
        if !root.join(&path).exists() {
            wrong.push(format!("file {path} does not exist"));
        }
    }
    wrong.sort();
    wrong.dedup();
    assert!(wrong.is_empty(), "README:\n{}", wrong.join("\n"));
}
