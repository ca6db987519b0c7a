//! The exec'd process, decided from plain values. The base is the
//! container's own process (its `config.json`), as the runtime's `exec`
//! without `--process` takes it: capabilities, rlimits, no-new-privileges
//! and the environment carry over; the request sets args, user, env, cwd
//! and the terminal the way `docker exec` does.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{BoxBuilder, Process};

use super::{ExecError, ExecSpec};
use crate::bundle::{resolve_user, sysbox_accepts, BundleError, DEFAULT_PATH, SYSBOX_KNOBS};

/// Who the process runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    /// From the workspace's passwd, else `/`.
    pub home: String,
    /// The request named a user (`-u`); else it is the container's.
    pub named: bool,
}

/// Refuses what no runtime could run, before asking one.
pub fn validate(spec: &ExecSpec) -> Result<(), ExecError> {
    let bad = |reason: String| Err(ExecError::BadRequest { reason });
    match spec.args.first() {
        None => return bad("no command given; name the program to run".into()),
        Some(a) if a.is_empty() => return bad("the command is an empty string".into()),
        _ => {}
    }
    if let Some(a) = spec.args.iter().find(|a| a.contains('\0')) {
        return bad(format!("argument {a:?} holds a NUL byte"));
    }
    for e in &spec.env {
        match e.split_once('=') {
            Some((name, _)) if !name.is_empty() && !e.contains('\0') => {}
            _ => {
                return bad(format!(
                    "environment entry {e:?} is not NAME=VALUE; give each variable as NAME=VALUE"
                ))
            }
        }
    }
    if let Some(cwd) = &spec.cwd {
        if !cwd.starts_with('/') || cwd.contains('\0') {
            return bad(format!(
                "working directory {cwd:?} is not an absolute path; give one starting with /"
            ));
        }
    }
    if let Some((rows, cols)) = spec.size {
        if rows == 0 || cols == 0 {
            return bad(format!(
                "terminal size {rows}x{cols} has a zero side; give rows and columns above 0"
            ));
        }
    }
    if let Some(user) = &spec.user {
        if user.trim().is_empty() {
            return bad("the user is empty; give a name or uid[:gid]".into());
        }
    }
    Ok(())
}

/// sysbox-runc refuses a process whose environment holds a `SYSBOX_*`
/// variable other than its documented knobs (docs/ARCHITECTURE.md, "The sysbox-runc
/// contract"): say so before it does, naming the variable.
pub fn check_sysbox_env(env: &[String]) -> Result<(), ExecError> {
    match env.iter().find(|e| !sysbox_accepts(e)) {
        None => Ok(()),
        Some(e) => Err(ExecError::BadRequest {
            reason: format!(
                "sysbox-runc refuses the variable {:?}; it takes only {}",
                e.split('=').next().unwrap_or(e),
                SYSBOX_KNOBS
                    .iter()
                    .map(|(k, _)| *k)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }),
    }
}

/// Resolves the user the process runs as: the request's `-u` (a name or
/// uid[:gid], against the workspace's own passwd and group, as `docker exec`
/// does), else the container's process user. `passwd`/`group` are `None`
/// when the files are missing.
pub fn target(
    id: &str,
    base: &Process,
    requested: Option<&str>,
    passwd: Option<&str>,
    group: Option<&str>,
) -> Result<Target, ExecError> {
    let Some(value) = requested else {
        let user = base.user();
        return Ok(Target {
            uid: user.uid(),
            gid: user.gid(),
            additional_gids: user.additional_gids().clone().unwrap_or_default(),
            home: home_of(id, user.uid(), passwd).unwrap_or_else(|| "/".into()),
            named: false,
        });
    };
    let user = resolve_user(id, value, passwd, group).map_err(|e| ExecError::User {
        id: id.into(),
        value: value.into(),
        reason: user_reason(e),
    })?;
    Ok(Target {
        uid: user.uid,
        gid: user.gid,
        additional_gids: user.additional_gids,
        home: user.home,
        named: true,
    })
}

/// The home of `uid` in passwd, if it has an entry.
pub fn home_of(id: &str, uid: u32, passwd: Option<&str>) -> Option<String> {
    let u = resolve_user(id, &uid.to_string(), passwd, None).ok()?;
    // A name means passwd has an entry for the uid.
    u.name.map(|_| u.home)
}

/// The host ID of container ID `id` under an ID map (`/proc/PID/uid_map`:
/// lines of "inside outside count"); `None` when it is unmapped.
pub fn host_id(id: u32, map: &str) -> Option<u32> {
    map.lines().find_map(|line| {
        let f: Vec<u64> = line
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        let [inside, outside, count] = f[..] else {
            return None;
        };
        let id = u64::from(id);
        (id >= inside && id - inside < count)
            .then(|| u32::try_from(outside + (id - inside)).ok())
            .flatten()
    })
}

/// The bundle stage's messages name an image; here it is the workspace.
fn user_reason(e: BundleError) -> String {
    match e {
        BundleError::BadUser { reason, .. } => format!("{reason}; use name, uid or uid:gid"),
        BundleError::UnknownUser { user, .. } => format!(
            "no user {user:?} in the workspace's /etc/passwd; use a numeric uid[:gid] or add the user"
        ),
        BundleError::UnknownGroup { group, .. } => format!(
            "no group {group:?} in the workspace's /etc/group; use a numeric gid or add the group"
        ),
        other => other.to_string(),
    }
}

/// The environment: the container's, HOME for the exec's user, TERM with
/// a terminal, then the request's entries (which win), and a PATH.
///
/// HOME follows the user when `-u` named one and the container's HOME is
/// the container user's home (`base_home`) or unset: `docker exec -u bob`
/// gets `/home/bob`, yet an image's own `ENV HOME=/app` stays.
pub fn env(
    base: &[String],
    base_home: Option<&str>,
    target: &Target,
    tty: bool,
    given: &[String],
) -> Vec<String> {
    let mut env: Vec<(String, String)> = Vec::new();
    let set = |env: &mut Vec<(String, String)>, k: &str, v: &str| match env
        .iter_mut()
        .find(|(ek, _)| ek == k)
    {
        Some(slot) => slot.1 = v.to_string(),
        None => env.push((k.to_string(), v.to_string())),
    };
    for entry in base {
        let (k, v) = entry.split_once('=').unwrap_or((entry, ""));
        if !k.is_empty() {
            set(&mut env, k, v);
        }
    }
    let get = |env: &Vec<(String, String)>, k: &str| {
        env.iter().find(|(ek, _)| ek == k).map(|(_, v)| v.clone())
    };
    let home = get(&env, "HOME");
    let derived = home.is_none() || (target.named && home.as_deref() == base_home);
    if derived {
        set(&mut env, "HOME", &target.home);
    }
    if tty && get(&env, "TERM").is_none() {
        set(&mut env, "TERM", "xterm");
    }
    for entry in given {
        if let Some((k, v)) = entry.split_once('=') {
            set(&mut env, k, v);
        }
    }
    if get(&env, "PATH").is_none() {
        env.insert(0, ("PATH".into(), DEFAULT_PATH.into()));
    }
    env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// The working directory when the request names none: the user's home if
/// it is a directory in the workspace, else `/` (the runtime would refuse
/// a missing one).
pub fn default_cwd(home: &str, is_dir: impl Fn(&Path) -> bool) -> String {
    if home.starts_with('/') && is_dir(Path::new(home)) {
        home.to_string()
    } else {
        "/".to_string()
    }
}

/// The process JSON for `exec --process`.
pub fn process(
    base: &Process,
    spec: &ExecSpec,
    target: &Target,
    env: Vec<String>,
    cwd: &str,
) -> Process {
    let mut p = base.clone();
    p.set_args(Some(spec.args.clone()));
    p.set_command_line(None);
    p.set_env(Some(env));
    p.set_cwd(PathBuf::from(cwd));
    p.set_terminal(Some(spec.tty));
    // The runtime sizes the terminal before the process starts, so its
    // first `stty size` is already right (runc `setupConsole`).
    let size = spec.size.filter(|_| spec.tty).map(|(rows, cols)| {
        BoxBuilder::default()
            .height(rows)
            .width(cols)
            .build()
            .expect("both sides are set")
    });
    p.set_console_size(size);
    let user = p.user_mut();
    user.set_uid(target.uid);
    user.set_gid(target.gid);
    user.set_additional_gids(
        Some(target.additional_gids.clone()).filter(|g: &Vec<u32>| !g.is_empty()),
    );
    user.set_username(None);
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nbob:x:1000:1000:Bob:/home/bob:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nbob:x:1000:\nwheel:x:10:bob\n";

    fn spec(args: &[&str]) -> ExecSpec {
        ExecSpec {
            args: args.iter().map(|s| s.to_string()).collect(),
            user: None,
            env: Vec::new(),
            cwd: None,
            tty: false,
            size: None,
        }
    }

    fn base() -> Process {
        let mut p = Process::default();
        p.set_env(Some(vec![
            "PATH=/usr/bin:/bin".into(),
            "HOME=/root".into(),
            "A=image".into(),
        ]));
        p.user_mut().set_additional_gids(Some(vec![7]));
        p
    }

    fn bob() -> Target {
        target("ws", &base(), Some("bob"), Some(PASSWD), Some(GROUP)).unwrap()
    }

    #[test]
    fn refuses_bad_requests() {
        let reason = |s: ExecSpec| match validate(&s) {
            Err(ExecError::BadRequest { reason }) => reason,
            other => panic!("{other:?}"),
        };
        assert!(reason(spec(&[])).contains("no command"));
        assert!(reason(spec(&[""])).contains("empty"));
        assert!(reason(ExecSpec {
            env: vec!["NOEQUALS".into()],
            ..spec(&["sh"])
        })
        .contains("NAME=VALUE"));
        assert!(reason(ExecSpec {
            env: vec!["=x".into()],
            ..spec(&["sh"])
        })
        .contains("NAME=VALUE"));
        assert!(reason(ExecSpec {
            cwd: Some("tmp".into()),
            ..spec(&["sh"])
        })
        .contains("absolute"));
        assert!(reason(ExecSpec {
            size: Some((0, 80)),
            ..spec(&["sh"])
        })
        .contains("zero"));
        assert!(reason(ExecSpec {
            user: Some(" ".into()),
            ..spec(&["sh"])
        })
        .contains("user is empty"));
        validate(&ExecSpec {
            env: vec!["A=".into(), "B=x=y".into()],
            cwd: Some("/tmp".into()),
            size: Some((24, 80)),
            ..spec(&["sh", "-c", ""])
        })
        .unwrap();
    }

    #[test]
    fn users_by_name_uid_or_the_containers() {
        let t = bob();
        assert_eq!(
            (t.uid, t.gid, t.additional_gids.clone()),
            (1000, 1000, vec![10])
        );
        assert_eq!(t.home, "/home/bob");
        assert!(t.named);
        let t = target("ws", &base(), Some("1000"), Some(PASSWD), Some(GROUP)).unwrap();
        assert_eq!((t.uid, t.gid, t.home.as_str()), (1000, 1000, "/home/bob"));
        let t = target("ws", &base(), Some("4242:77"), Some(PASSWD), Some(GROUP)).unwrap();
        assert_eq!((t.uid, t.gid, t.home.as_str()), (4242, 77, "/"));
        assert!(t.additional_gids.is_empty());
        let t = target("ws", &base(), None, Some(PASSWD), Some(GROUP)).unwrap();
        assert_eq!((t.uid, t.gid, t.additional_gids.clone()), (0, 0, vec![7]));
        assert_eq!(t.home, "/root");
        assert!(!t.named);
        let e = target("ws", &base(), Some("alice"), Some(PASSWD), None)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "cannot run as user \"alice\" in workspace ws: no user \"alice\" in the workspace's \
             /etc/passwd; use a numeric uid[:gid] or add the user"
        );
        let e = target(
            "ws",
            &base(),
            Some("bob:nogroup"),
            Some(PASSWD),
            Some(GROUP),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("no group \"nogroup\""), "{e}");
        assert_eq!(home_of("ws", 4242, Some(PASSWD)), None);
        assert_eq!(home_of("ws", 1000, None), None);
    }

    #[test]
    fn env_home_term_and_overrides() {
        let base_env = base().env().clone().unwrap();
        // -u bob: HOME was the container user's, so it follows the user.
        let e = env(&base_env, Some("/root"), &bob(), false, &[]);
        assert_eq!(e, vec!["PATH=/usr/bin:/bin", "HOME=/home/bob", "A=image"]);
        // An image's own HOME stays, as with docker exec.
        let own = vec!["HOME=/app".to_string()];
        let e = env(&own, Some("/root"), &bob(), false, &[]);
        assert!(e.contains(&"HOME=/app".to_string()), "{e:?}");
        assert!(e[0].starts_with("PATH=/usr/local/sbin"), "{e:?}");
        // No -u: the container's environment as it is.
        let me = target("ws", &base(), None, Some(PASSWD), None).unwrap();
        let e = env(
            &base_env,
            Some("/root"),
            &me,
            true,
            &["A=given".into(), "B=1".into()],
        );
        assert_eq!(
            e,
            vec![
                "PATH=/usr/bin:/bin",
                "HOME=/root",
                "A=given",
                "TERM=xterm",
                "B=1"
            ]
        );
        // HOME missing: the user's; the request's HOME wins over it.
        let e = env(&[], None, &bob(), false, &["HOME=/tmp".into()]);
        assert!(e.contains(&"HOME=/tmp".to_string()), "{e:?}");
        let e = env(&["TERM=dumb".into()], None, &bob(), true, &[]);
        assert!(e.contains(&"TERM=dumb".to_string()), "{e:?}");
    }

    #[test]
    fn host_ids_through_a_map() {
        assert_eq!(host_id(1000, "0 0 4294967295\n"), Some(1000));
        let map = "         0     100000      65536\n     65536          0          1\n";
        assert_eq!(host_id(0, map), Some(100000));
        assert_eq!(host_id(1000, map), Some(101000));
        assert_eq!(host_id(65536, map), Some(0));
        assert_eq!(host_id(70000, map), None);
        assert_eq!(host_id(1, "garbage\n"), None);
        assert_eq!(host_id(1, ""), None);
    }

    #[test]
    fn sysbox_knobs_only() {
        check_sysbox_env(&["A=1".into(), "SYSBOX_HONOR_CAPS=TRUE".into()]).unwrap();
        let e = check_sysbox_env(&["SYSBOX_NOPE=1".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("refuses the variable \"SYSBOX_NOPE\""), "{e}");
    }

    #[test]
    fn cwd_is_home_when_it_exists() {
        assert_eq!(default_cwd("/home/bob", |_| true), "/home/bob");
        assert_eq!(default_cwd("/home/bob", |_| false), "/");
        assert_eq!(default_cwd("relative", |_| true), "/");
    }

    #[test]
    fn process_keeps_the_base_and_sets_the_request() {
        let mut b = base();
        b.set_terminal(Some(true));
        b.set_no_new_privileges(Some(true));
        let s = ExecSpec {
            tty: true,
            size: Some((33, 111)),
            ..spec(&["sh", "-c", "stty size"])
        };
        let p = process(&b, &s, &bob(), vec!["A=1".into()], "/home/bob");
        assert_eq!(p.args().as_deref(), Some(&s.args[..]));
        assert_eq!(p.env().as_deref(), Some(&["A=1".to_string()][..]));
        assert_eq!(p.cwd(), Path::new("/home/bob"));
        assert_eq!(p.terminal(), Some(true));
        let size = p.console_size().unwrap();
        assert_eq!((size.height(), size.width()), (33, 111));
        assert_eq!((p.user().uid(), p.user().gid()), (1000, 1000));
        assert_eq!(p.user().additional_gids().as_deref(), Some(&[10][..]));
        assert_eq!(p.no_new_privileges(), Some(true));
        // Without a terminal there is no console size, whatever was asked.
        let s = ExecSpec {
            size: Some((33, 111)),
            ..spec(&["true"])
        };
        let me = target("ws", &b, None, None, None).unwrap();
        let p = process(&b, &s, &me, vec![], "/");
        assert_eq!(p.terminal(), Some(false));
        assert!(p.console_size().is_none());
        assert_eq!(p.user().additional_gids().as_deref(), Some(&[7][..]));
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(json["terminal"], false);
        assert_eq!(json["user"]["additionalGids"], serde_json::json!([7]));
    }
}
