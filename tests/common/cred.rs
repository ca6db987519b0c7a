//! Fake docker credential helpers (`docker-credential-NAME get`).

use std::path::{Path, PathBuf};

/// Writes an executable `dir/docker-credential-NAME` that answers `get` for
/// `host` with `user`/`secret` and fails like the real helpers otherwise.
///
/// The server URL read from stdin is matched after stripping an `https://`
/// or `http://` prefix and a trailing `/`, since clients differ in which form
/// they send. Every invocation is appended to `dir/NAME.calls` (action and
/// stdin) so tests can assert how the helper was used.
pub fn cred_helper(dir: &Path, name: &str, host: &str, user: &str, secret: &str) -> PathBuf {
    let path = dir.join(format!("docker-credential-{name}"));
    let log = dir.join(format!("{name}.calls"));
    let script = format!(
        r#"#!/bin/sh
action="$1"
input=$(cat)
printf '%s %s\n' "$action" "$input" >> {log}
if [ "$action" != get ]; then
  echo "unsupported action: $action" >&2
  exit 1
fi
h=${{input#https://}}
h=${{h#http://}}
h=${{h%/}}
if [ "$h" = {host} ]; then
  printf '{{"ServerURL":"%s","Username":"%s","Secret":"%s"}}\n' "$input" {user} {secret}
  exit 0
fi
echo "credentials not found in native keychain"
exit 1
"#,
        log = sh_quote(&log.to_string_lossy()),
        host = sh_quote(host),
        user = sh_quote(user),
        secret = sh_quote(secret),
    );
    std::fs::write(&path, script).expect("write cred helper");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

/// Lines logged by the helper `name` in `dir` (`"get 127.0.0.1:5000"`).
pub fn cred_helper_calls(dir: &Path, name: &str) -> Vec<String> {
    std::fs::read_to_string(dir.join(format!("{name}.calls")))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}
