//! Where cvmd's control socket is, found as cvmd places it, so cvmctl needs
//! no flag in the usual pod: `--socket`, else `CVMD_SOCKET`, else the
//! config file's (`CVMD_CONFIG`) `socket`, else `cvmd.sock` in the state
//! dir (`CVMD_STATE_DIR`, the file's `state_dir`, or [`DEFAULT_STATE_DIR`]).
//!
//! Only the two keys cvmctl needs are read from the file: judging the rest
//! of it is cvmd's job, and a setting cvmctl does not know (a newer cvmd's)
//! must not stop an operator from reaching the socket.

use std::path::PathBuf;

/// cvmd's state dir when none is set; cvmd's settings table uses this too.
pub const DEFAULT_STATE_DIR: &str = "/run/cvmd";

/// The socket's path; `env` reads the environment (a seam for tests).
pub fn control_socket(
    flag: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<PathBuf, String> {
    let env = |name: &str| env(name).filter(|v| !v.is_empty());
    let file = match env("CVMD_CONFIG") {
        Some(path) => load_file(&path)?,
        None => toml::Table::new(),
    };
    let from_file = |key: &str| -> Result<Option<String>, String> {
        match file.get(key) {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(format!(
                "config file: {key} must be a string (a path), not {}",
                other.type_str()
            )),
        }
    };
    if let Some(socket) = flag.map(str::to_string).or_else(|| env("CVMD_SOCKET")) {
        return Ok(PathBuf::from(socket));
    }
    if let Some(socket) = from_file("socket")? {
        return Ok(PathBuf::from(socket));
    }
    let state_dir = match env("CVMD_STATE_DIR") {
        Some(dir) => dir,
        None => from_file("state_dir")?.unwrap_or_else(|| DEFAULT_STATE_DIR.to_string()),
    };
    Ok(PathBuf::from(state_dir).join("cvmd.sock"))
}

fn load_file(path: &str) -> Result<toml::Table, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read config file {path}: {e}"))?;
    text.parse()
        .map_err(|e: toml::de::Error| format!("config file {path}: {}", e.message()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    }

    #[test]
    fn cvmctl_finds_the_socket_as_cvmd_places_it() {
        let socket = |pairs: &[(&str, &str)]| control_socket(None, &env(pairs));
        assert_eq!(socket(&[]).unwrap(), PathBuf::from("/run/cvmd/cvmd.sock"));
        assert_eq!(
            socket(&[("CVMD_STATE_DIR", "/var/lib/cvmd-state")]).unwrap(),
            PathBuf::from("/var/lib/cvmd-state/cvmd.sock")
        );
        let both = [("CVMD_STATE_DIR", "/s"), ("CVMD_SOCKET", "/x/c.sock")];
        assert_eq!(socket(&both).unwrap(), PathBuf::from("/x/c.sock"));
        assert_eq!(
            control_socket(Some("/flag.sock"), &env(&both)).unwrap(),
            PathBuf::from("/flag.sock")
        );
        // The config file: its state_dir, and its socket over that.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cvmd.toml");
        let path = file.to_str().unwrap();
        std::fs::write(&file, "state_dir = \"/from/file\"\nimage = \"busybox\"\n").unwrap();
        assert_eq!(
            socket(&[("CVMD_CONFIG", path)]).unwrap(),
            PathBuf::from("/from/file/cvmd.sock")
        );
        let with_env = [("CVMD_CONFIG", path), ("CVMD_STATE_DIR", "/env")];
        assert_eq!(
            socket(&with_env).unwrap(),
            PathBuf::from("/env/cvmd.sock"),
            "the environment over the file, as for cvmd"
        );
        std::fs::write(&file, "socket = \"/f/s.sock\"\n").unwrap();
        assert_eq!(socket(&with_env).unwrap(), PathBuf::from("/f/s.sock"));
    }

    #[test]
    fn a_bad_file_is_named_and_unknown_keys_are_cvmds_business() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cvmd.toml");
        let path = file.to_str().unwrap();
        let socket = || control_socket(None, &env(&[("CVMD_CONFIG", path)]));
        assert!(socket().unwrap_err().contains("cannot read config file"));
        std::fs::write(&file, "socket = [").unwrap();
        assert!(socket().unwrap_err().contains(path));
        std::fs::write(&file, "socket = 3\n").unwrap();
        assert!(socket().unwrap_err().contains("socket must be a string"));
        std::fs::write(&file, "a_newer_setting = 1\n").unwrap();
        assert_eq!(socket().unwrap(), PathBuf::from("/run/cvmd/cvmd.sock"));
    }
}
