//! Pure pieces of the containerd backend: chain IDs, names containerd
//! accepts, its version, and the timestamps of its labels.

use std::time::SystemTime;

use crate::digest::Digest;

/// The oldest containerd cvmd is tested against (Debian 12's 1.6.20).
pub const MIN_VERSION: (u32, u32) = (1, 6);
/// The first containerd with the transfer and streaming services (tested
/// against Debian's 1.7.24 and 2.1.9).
pub const TRANSFER_VERSION: (u32, u32) = (1, 7);
/// The first whose transfer service takes a hosts dir and a default scheme
/// (1.7's speaks HTTPS only, trusting the system roots).
pub const RESOLVER_OPTIONS_VERSION: (u32, u32) = (2, 0);

/// The chain ID of each layer (OCI image spec, config.md "Layer ChainID"):
/// the first is its diff ID, each next one is
/// `sha256(parent_chain_id + " " + diff_id)`. containerd names committed
/// snapshots by them, so the top one names the image's rootfs.
pub fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut out: Vec<Digest> = Vec::with_capacity(diff_ids.len());
    for diff_id in diff_ids {
        let next = match out.last() {
            None => diff_id.clone(),
            Some(parent) => Digest::of(format!("{parent} {diff_id}").as_bytes()),
        };
        out.push(next);
    }
    out
}

/// containerd's identifier rule for namespaces (pkg/identifiers):
/// alphanumerics separated by single `.`, `_` or `-`, at most 76.
pub fn check_namespace(v: &str) -> Result<(), String> {
    let ok = !v.is_empty()
        && v.len() <= 76
        && v.split(['.', '_', '-'])
            .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_alphanumeric()));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{v:?} is not a containerd namespace (letters and digits separated by single '.', '_' or '-', at most 76)"
        ))
    }
}

/// `major.minor` of a containerd version string (`1.6.20~ds1`, `v2.0.0`,
/// `1.7.0-rc.1+unknown`); None when it has no such prefix.
pub fn parse_version(v: &str) -> Option<(u32, u32)> {
    let v = v.trim().trim_start_matches('v');
    let mut parts = v.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// RFC 3339 UTC (`2026-11-24T12:00:00Z`), the form containerd's
/// `containerd.io/gc.expire` label takes.
pub fn rfc3339(t: SystemTime) -> String {
    // Whole seconds, as containerd's own labels have them.
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    time::OffsetDateTime::from_unix_timestamp(secs.cast_signed())
        .ok()
        .and_then(|d| {
            d.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn chain_ids_follow_the_image_spec() {
        let a = Digest::of(b"a");
        let b = Digest::of(b"b");
        let chains = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(chains[0], a);
        assert_eq!(chains[1], Digest::of(format!("{a} {b}").as_bytes()));
        assert!(chain_ids(&[]).is_empty());
    }

    #[test]
    fn chain_id_matches_a_known_value() {
        // Two layers from the spec's own example: the chain ID of
        // "sha256:a...a sha256:b...b" hashed as bytes.
        let a: Digest = format!("sha256:{}", "a".repeat(64)).parse().unwrap();
        let b: Digest = format!("sha256:{}", "b".repeat(64)).parse().unwrap();
        let text = format!("sha256:{} sha256:{}", "a".repeat(64), "b".repeat(64));
        assert_eq!(chain_ids(&[a, b])[1], Digest::of(text.as_bytes()));
    }

    #[test]
    fn namespaces_follow_containerds_rule() {
        for ok in ["cvmd", "k8s.io", "a-b_c.d", "A1"] {
            assert!(check_namespace(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a/b", "-a", "a..b", "a-", &"x".repeat(77)] {
            assert!(check_namespace(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn versions_parse() {
        assert_eq!(parse_version("1.6.20~ds1"), Some((1, 6)));
        assert_eq!(parse_version("v2.0.0"), Some((2, 0)));
        assert_eq!(parse_version("1.7.0-rc.1+unknown"), Some((1, 7)));
        assert_eq!(parse_version("dev"), None);
        assert!(parse_version("1.5.18").unwrap() < MIN_VERSION);
        assert!(parse_version("1.10.0").unwrap() > MIN_VERSION);
    }

    #[test]
    fn rfc3339_is_utc() {
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000);
        // date -u -d @1795000000 +%FT%TZ
        assert_eq!(rfc3339(t), "2026-11-18T11:06:40Z");
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00Z");
    }
}
