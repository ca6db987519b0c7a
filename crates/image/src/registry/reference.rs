//! Image references as users write them (`ubuntu`, `ghcr.io/o/i:tag`,
//! `reg:5000/team/img@sha256:...`), normalised the way Docker does
//! (distribution's `reference` grammar and `docker.io/library/` defaults).

use std::fmt;
use std::str::FromStr;

use cvmd_digest::Digest;

pub const DOCKER_HUB: &str = "docker.io";
/// Docker Hub's API host differs from the name users write.
const DOCKER_HUB_API: &str = "registry-1.docker.io";
const DEFAULT_TAG: &str = "latest";

#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    /// Registry host with optional port, as written (`docker.io` for Hub).
    pub registry: String,
    /// Repository path inside the registry (`library/ubuntu`).
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid image reference {reference:?}: {why}")]
pub struct ReferenceError {
    pub reference: String,
    pub why: &'static str,
}

impl Reference {
    /// The host to talk the distribution API to.
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }

    /// What to ask the registry for: the digest when pinned, else the tag.
    pub fn manifest_key(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => DEFAULT_TAG.to_string(),
        }
    }

    /// The same image pinned to `digest` (the tag is kept for display).
    pub fn with_digest(&self, digest: Digest) -> Self {
        Reference {
            digest: Some(digest),
            ..self.clone()
        }
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |why| ReferenceError {
            reference: s.to_string(),
            why,
        };
        if s.is_empty() {
            return Err(err("it is empty"));
        }
        if s.len() > 4096 || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(err("it contains whitespace or is too long"));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((rest, d)) => (
                rest,
                Some(
                    d.parse::<Digest>()
                        .map_err(|_| err("the part after '@' is not a sha256:<64 hex> digest"))?,
                ),
            ),
            None => (s, None),
        };
        // A ':' after the last '/' separates the tag; one before it is a port.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (
                &rest[..last_slash + i],
                Some(rest[last_slash + i + 1..].to_string()),
            ),
            None => (rest, None),
        };
        if let Some(tag) = &tag {
            if !valid_tag(tag) {
                return Err(err(
                    "the tag must be 1-128 of [A-Za-z0-9_.-], not starting with '.' or '-'",
                ));
            }
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, path))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), path.to_string())
            }
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        if !valid_host(&registry) {
            return Err(err("the registry host is not a valid host[:port]"));
        }
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        if !repository.split('/').all(valid_path_component) {
            return Err(err(
                "repository path components must be lowercase [a-z0-9] joined by '.', '_', '__' or '-'",
            ));
        }
        if registry.len() + repository.len() + 1 > 255 {
            return Err(err("the name is longer than 255 characters"));
        }
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }
}

fn valid_tag(tag: &str) -> bool {
    let b = tag.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(c))
}

fn valid_host(host: &str) -> bool {
    let (name, port) = match host.rsplit_once(':') {
        Some((n, p)) if !n.contains(']') || n.ends_with(']') => (n, Some(p)),
        _ => (host, None),
    };
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|c| c.is_ascii_digit()));
    let name_ok = if let Some(ip6) = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        ip6.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        !name.is_empty()
            && name.split('.').all(|label| {
                !label.is_empty()
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label
                        .bytes()
                        .all(|c| c.is_ascii_alphanumeric() || c == b'-')
            })
    };
    port_ok && name_ok
}

/// distribution's path-component: `[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*`.
fn valid_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !is_alnum(b[0]) || !is_alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !is_alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-')) {
            return false;
        }
    }
    true
}

fn is_alnum(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        match (&self.tag, &self.digest) {
            (Some(t), Some(d)) => write!(f, ":{t}@{d}"),
            (Some(t), None) => write!(f, ":{t}"),
            (None, Some(d)) => write!(f, "@{d}"),
            (None, None) => write!(f, ":{DEFAULT_TAG}"),
        }
    }
}

impl fmt::Debug for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn parse(s: &str) -> Reference {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn docker_hub_names_are_normalised() {
        let r = parse("ubuntu");
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("docker.io", "library/ubuntu")
        );
        assert_eq!(r.tag, None);
        assert_eq!(r.to_string(), "docker.io/library/ubuntu:latest");
        assert_eq!(r.api_host(), "registry-1.docker.io");
        assert_eq!(
            parse("ubuntu:22.04").to_string(),
            "docker.io/library/ubuntu:22.04"
        );
        assert_eq!(parse("coder/envbox").repository, "coder/envbox");
        assert_eq!(parse("docker.io/ubuntu").repository, "library/ubuntu");
    }

    #[test]
    fn registry_with_port_and_digest() {
        let r = parse(&format!("registry:5000/team/img@{D}"));
        assert_eq!(r.registry, "registry:5000");
        assert_eq!(r.repository, "team/img");
        assert_eq!(r.manifest_key(), D);
        let r = parse(&format!("localhost/img:v1@{D}"));
        assert_eq!(
            (r.registry.as_str(), r.tag.as_deref()),
            ("localhost", Some("v1"))
        );
        assert_eq!(
            r.manifest_key(),
            D,
            "the digest pins even when a tag is given"
        );
        let r = parse("127.0.0.1:5000/a/b/c:tag-1.0_x");
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("127.0.0.1:5000", "a/b/c")
        );
        assert_eq!(parse("[::1]:5000/x").registry, "[::1]:5000");
    }

    #[test]
    fn bad_references_are_refused_with_a_reason() {
        for bad in [
            "",
            "UPPER/case",
            "img:",
            "img:-tag",
            "img@sha256:123",
            "a//b",
            "bad host:5000/x",
            "reg:notaport/x",
            "-reg.io/x",
            "img:tag with space",
            "a/../b",
        ] {
            assert!(
                bad.parse::<Reference>().is_err(),
                "{bad:?} should be refused"
            );
        }
        assert_eq!(
            "UPPER".parse::<Reference>().unwrap_err().to_string(),
            "invalid image reference \"UPPER\": repository path components must be lowercase [a-z0-9] joined by '.', '_', '__' or '-'"
        );
    }

    #[test]
    fn path_components_follow_distribution_grammar() {
        for ok in ["a", "a.b", "a_b", "a__b", "a---b", "0x"] {
            assert!(valid_path_component(ok), "{ok}");
        }
        for bad in ["", ".a", "a.", "a..b", "a___b", "a-_b", "A"] {
            assert!(!valid_path_component(bad), "{bad}");
        }
    }
}
