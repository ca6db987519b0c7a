//! Which user the workspace process runs as: the image config's `User`
//! (`name`, `uid`, `name:group`, `uid:gid`, `uid:group`, `name:gid`)
//! resolved against the image's own `/etc/passwd` and `/etc/group`, the
//! way runc's libcontainer/user `GetExecUser` does: a numeric uid need not
//! be in passwd; a name must; without a group the primary gid comes from
//! passwd and the supplementary groups from `/etc/group` membership.

use std::path::Path;

use super::{inroot, BundleError};

/// passwd and group files larger than this are refused, not parsed.
pub const ETC_FILE_LIMIT: u64 = 4 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    /// From passwd, else `/`.
    pub home: String,
    pub name: Option<String>,
}

impl ResolvedUser {
    pub fn root() -> Self {
        ResolvedUser {
            uid: 0,
            gid: 0,
            additional_gids: Vec::new(),
            home: "/root".into(),
            name: Some("root".into()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Id {
    Num(u32),
    Name(String),
}

fn id(s: &str) -> Id {
    s.parse()
        .map(Id::Num)
        .unwrap_or_else(|_| Id::Name(s.to_string()))
}

/// Splits a `User` value into user and optional group.
pub fn parse_user(value: &str) -> Result<(Id, Option<Id>), String> {
    let (user, group) = match value.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (value, None),
    };
    if user.is_empty() {
        return Err("the user part is empty".into());
    }
    if group == Some("") {
        return Err("the group after ':' is empty".into());
    }
    if value.matches(':').count() > 1 {
        return Err("more than one ':'".into());
    }
    Ok((id(user), group.map(id)))
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

struct GroupEntry<'a> {
    name: &'a str,
    gid: u32,
    members: Vec<&'a str>,
}

fn passwd_entries(text: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    text.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if l.starts_with('#') || f.len() < 7 {
            return None;
        }
        Some(PasswdEntry {
            name: f[0],
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
            home: f[5],
        })
    })
}

fn group_entries(text: &str) -> impl Iterator<Item = GroupEntry<'_>> {
    text.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if l.starts_with('#') || f.len() < 4 {
            return None;
        }
        Some(GroupEntry {
            name: f[0],
            gid: f[2].parse().ok()?,
            members: f[3]
                .split(',')
                .map(str::trim)
                .filter(|m| !m.is_empty())
                .collect(),
        })
    })
}

/// Resolves a `User` value against the image's passwd and group text
/// (`None` when the file is missing). An empty value is root.
pub fn resolve_user(
    image: &str,
    value: &str,
    passwd: Option<&str>,
    group: Option<&str>,
) -> Result<ResolvedUser, BundleError> {
    let value = value.trim();
    let value = if value.is_empty() { "0" } else { value };
    let (user, grp) = parse_user(value).map_err(|reason| BundleError::BadUser {
        image: image.into(),
        value: value.into(),
        reason,
    })?;
    let passwd = passwd.unwrap_or("");
    let group_text = group.unwrap_or("");
    let entry = match &user {
        Id::Num(uid) => passwd_entries(passwd).find(|e| e.uid == *uid),
        Id::Name(name) => Some(passwd_entries(passwd).find(|e| e.name == name).ok_or_else(
            || BundleError::UnknownUser {
                image: image.into(),
                user: name.clone(),
            },
        )?),
    };
    let uid = match (&user, &entry) {
        (_, Some(e)) => e.uid,
        (Id::Num(uid), None) => *uid,
        (Id::Name(_), None) => unreachable!("a name without an entry is an error above"),
    };
    let name = entry.as_ref().map(|e| e.name.to_string());
    let home = entry
        .as_ref()
        .map(|e| e.home)
        .filter(|h| !h.is_empty())
        .unwrap_or("/")
        .to_string();
    let (gid, additional_gids) = match grp {
        Some(Id::Num(gid)) => (gid, Vec::new()),
        Some(Id::Name(g)) => {
            let gid = group_entries(group_text)
                .find(|e| e.name == g)
                .map(|e| e.gid)
                .ok_or_else(|| BundleError::UnknownGroup {
                    image: image.into(),
                    group: g.clone(),
                })?;
            (gid, Vec::new())
        }
        None => {
            let gid = entry.as_ref().map(|e| e.gid).unwrap_or(0);
            let mut extra: Vec<u32> = match &name {
                Some(n) => group_entries(group_text)
                    .filter(|e| e.members.contains(&n.as_str()))
                    .map(|e| e.gid)
                    .filter(|g| *g != gid)
                    .collect(),
                None => Vec::new(),
            };
            extra.sort_unstable();
            extra.dedup();
            (gid, extra)
        }
    };
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids,
        home,
        name,
    })
}

/// Reads `/etc/<file>` inside the rootfs (links resolved inside it,
/// bounded by [`ETC_FILE_LIMIT`]); `None` when missing.
pub fn read_etc(rootfs: &Path, image: &str, file: &str) -> Result<Option<String>, BundleError> {
    let inner = Path::new("/etc").join(file);
    let what = inner.display().to_string();
    match inroot::read_file(rootfs, &inner, ETC_FILE_LIMIT) {
        Ok(None) => Ok(None),
        Ok(Some(Ok(bytes))) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
        Ok(Some(Err(limit))) => Err(BundleError::ImageFileTooLarge {
            image: image.into(),
            file: what,
            limit,
        }),
        Err(source) => Err(BundleError::ImageFile {
            image: image.into(),
            file: what,
            source,
        }),
    }
}

/// Resolves a `User` value against the rootfs's own files.
pub fn resolve_in_rootfs(
    rootfs: &Path,
    image: &str,
    value: &str,
) -> Result<ResolvedUser, BundleError> {
    let passwd = read_etc(rootfs, image, "passwd")?;
    let group = read_etc(rootfs, image, "group")?;
    resolve_user(image, value, passwd.as_deref(), group.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
        # a comment\n\
        daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n\
        bob:x:1000:1000:Bob:/home/bob:/bin/bash\n\
        nohome:x:1001:1001:::/bin/sh\n\
        broken:x:notanumber:1\n";
    const GROUP: &str = "root:x:0:\nadm:x:4:bob\nsudo:x:27:alice, bob\n\
        bob:x:1000:\ndocker:x:999:bob\nstaff:x:50:\n";

    fn r(v: &str) -> Result<ResolvedUser, BundleError> {
        resolve_user("img", v, Some(PASSWD), Some(GROUP))
    }

    #[test]
    fn default_is_root() {
        let u = r("").unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (0, 0, "/root"));
        let u = resolve_user("img", "", None, None).unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (0, 0, "/"));
    }

    #[test]
    fn name_takes_gid_home_and_memberships() {
        let u = r("bob").unwrap();
        assert_eq!((u.uid, u.gid), (1000, 1000));
        assert_eq!(u.home, "/home/bob");
        assert_eq!(u.additional_gids, vec![4, 27, 999]);
        assert_eq!(u.name.as_deref(), Some("bob"));
    }

    #[test]
    fn numeric_forms() {
        let u = r("1000").unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (1000, 1000, "/home/bob"));
        let u = r("4242").unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (4242, 0, "/"));
        assert!(u.additional_gids.is_empty());
        let u = r("4242:77").unwrap();
        assert_eq!((u.uid, u.gid), (4242, 77));
        let u = r("1001").unwrap();
        assert_eq!(u.home, "/");
    }

    #[test]
    fn explicit_group_forms() {
        let u = r("bob:staff").unwrap();
        assert_eq!((u.uid, u.gid), (1000, 50));
        assert!(u.additional_gids.is_empty());
        let u = r("bob:5").unwrap();
        assert_eq!((u.uid, u.gid), (1000, 5));
        let u = r("1000:docker").unwrap();
        assert_eq!((u.uid, u.gid), (1000, 999));
    }

    #[test]
    fn clear_errors() {
        let e = r("alice").unwrap_err().to_string();
        assert!(
            e.contains("user \"alice\" of image img is not in its /etc/passwd"),
            "{e}"
        );
        let e = r("bob:wheel").unwrap_err().to_string();
        assert!(e.contains("group \"wheel\""), "{e}");
        assert!(matches!(r(":5"), Err(BundleError::BadUser { .. })));
        assert!(matches!(r("bob:"), Err(BundleError::BadUser { .. })));
        assert!(matches!(r("a:b:c"), Err(BundleError::BadUser { .. })));
        assert!(matches!(
            resolve_user("img", "bob", None, None),
            Err(BundleError::UnknownUser { .. })
        ));
    }

    #[test]
    fn reads_etc_inside_the_rootfs_only() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(t.path().join("evil"), "bob:x:0:0::/:/bin/sh\n").unwrap();
        std::os::unix::fs::symlink("../../evil", root.join("etc/passwd")).unwrap();
        // The link resolves to /evil inside the rootfs, which is absent.
        assert!(read_etc(&root, "img", "passwd").unwrap().is_none());
        std::fs::write(
            root.join("etc/group"),
            "x".repeat(usize::try_from(ETC_FILE_LIMIT).unwrap() + 1),
        )
        .unwrap();
        assert!(matches!(
            read_etc(&root, "img", "group"),
            Err(BundleError::ImageFileTooLarge { .. })
        ));
        std::fs::remove_file(root.join("etc/passwd")).unwrap();
        std::fs::write(root.join("etc/passwd"), PASSWD).unwrap();
        std::fs::write(root.join("etc/group"), GROUP).unwrap();
        let u = resolve_in_rootfs(&root, "img", "bob:adm").unwrap();
        assert_eq!((u.uid, u.gid), (1000, 4));
    }
}
