//! Where a registry may send cvmd for a token. The `WWW-Authenticate`
//! realm is chosen by the registry, and cvmd (PID 1 of a privileged pod,
//! with the pull secret's credentials) then fetches it: a hostile or
//! compromised registry could otherwise collect those credentials over
//! plain HTTP, or turn cvmd against what only the node reaches (a cloud
//! metadata service on 169.254.169.254, a sidecar's admin port on
//! 127.0.0.1).
//!
//! The rules: a registry reached over HTTPS gets an HTTPS realm only (a
//! plain-HTTP registry, which the user listed as insecure, may name an
//! HTTP one); a realm on a loopback or link-local address is refused unless
//! the registry itself is on that kind of address. Host names are
//! resolved and every address checked; redirects are checked the same way
//! by [`redirect_policy`].

use std::net::IpAddr;

use reqwest::Url;

/// The kinds of address a realm must not reach from elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// 127/8, ::1, and the unspecified address (which connects locally).
    Loopback,
    /// 169.254/16, fe80::/10.
    LinkLocal,
    Other,
}

impl Class {
    pub fn of(ip: IpAddr) -> Class {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match ip {
            IpAddr::V4(v4) if v4.is_loopback() || v4.is_unspecified() => Class::Loopback,
            IpAddr::V4(v4) if v4.is_link_local() => Class::LinkLocal,
            IpAddr::V6(v6) if v6.is_loopback() || v6.is_unspecified() => Class::Loopback,
            IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80 => Class::LinkLocal,
            _ => Class::Other,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Class::Loopback => "a loopback address",
            Class::LinkLocal => "a link-local address (where cloud metadata services live)",
            Class::Other => "an ordinary address",
        }
    }
}

/// The classes of a URL's host without resolving it: an IP literal's, and
/// `localhost` (which resolvers answer locally) as loopback.
pub fn literal_classes(url: &Url) -> Vec<Class> {
    match url.host() {
        Some(url::Host::Ipv4(v4)) => vec![Class::of(IpAddr::V4(v4))],
        Some(url::Host::Ipv6(v6)) => vec![Class::of(IpAddr::V6(v6))],
        Some(url::Host::Domain(d)) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            if d == "localhost" || d.ends_with(".localhost") {
                vec![Class::Loopback]
            } else {
                Vec::new()
            }
        }
        None => Vec::new(),
    }
}

/// The classes of every address a URL's host stands for. A name that does
/// not resolve gives none: the request then fails on its own.
pub async fn classes(url: &Url) -> Vec<Class> {
    let mut out = literal_classes(url);
    if let Some(url::Host::Domain(d)) = url.host() {
        let port = url.port_or_known_default().unwrap_or(443);
        if let Ok(addrs) = tokio::net::lookup_host((d, port)).await {
            out.extend(addrs.map(|a| Class::of(a.ip())));
        }
    }
    out
}

/// Judges a realm against the registry that named it; `Err` says why it is
/// refused. Pure, so the rules are tested as such.
pub fn judge(
    registry: &Url,
    registry_classes: &[Class],
    realm: &Url,
    realm_classes: &[Class],
) -> Result<(), String> {
    match (registry.scheme(), realm.scheme()) {
        (_, "https") | ("http", "http") => {}
        ("https", "http") => {
            return Err("it is plain HTTP while the registry is reached over HTTPS: the credentials would cross the network in clear text; configure the registry's token auth with an https:// realm".into());
        }
        _ => return Err("it is not an http(s) URL".into()),
    }
    for class in [Class::Loopback, Class::LinkLocal] {
        if realm_classes.contains(&class) && !registry_classes.contains(&class) {
            return Err(format!(
                "it points at {} while the registry is not on one: a registry must not send cvmd to the node's own services",
                class.describe()
            ));
        }
    }
    Ok(())
}

/// The client-wide redirect rule, so a realm (or a blob URL) that passed
/// cannot hop elsewhere: no HTTPS to HTTP, and no loopback or link-local
/// literal unless the first URL was on that kind of address. Names are not
/// resolved here (the policy is synchronous).
pub fn redirect_policy() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        if attempt.previous().len() >= 10 {
            return attempt.error("more than 10 redirects");
        }
        let Some(first) = attempt.previous().first().cloned() else {
            return attempt.follow();
        };
        let next = attempt.url().clone();
        let refusal = if first.scheme() == "https" && next.scheme() != "https" {
            Some("a redirect from HTTPS to plain HTTP".to_string())
        } else {
            judge(
                &first,
                &literal_classes(&first),
                &next,
                &literal_classes(&next),
            )
            .err()
            .map(|why| format!("a redirect to {}: {why}", redact(&next)))
        };
        match refusal {
            Some(why) => attempt.error(why),
            None => attempt.follow(),
        }
    })
}

/// A URL as it may be logged: scheme, host, port and path, without user
/// info or query (a presigned URL's query is a credential).
pub fn redact(url: &Url) -> String {
    let mut u = url.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.set_query(None);
    u.set_fragment(None);
    u.to_string()
}

/// [`redact`] for a realm that may not even parse.
pub fn redact_str(realm: &str) -> String {
    match Url::parse(realm) {
        Ok(u) => redact(&u),
        Err(_) => format!("({} bytes, not a URL)", realm.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    fn judge_urls(registry: &str, realm: &str) -> Result<(), String> {
        let (registry, realm) = (u(registry), u(realm));
        judge(
            &registry,
            &literal_classes(&registry),
            &realm,
            &literal_classes(&realm),
        )
    }

    #[test]
    fn an_https_registry_gets_an_https_realm_only() {
        assert!(judge_urls("https://r.io/", "https://auth.r.io/token").is_ok());
        let e = judge_urls("https://r.io/", "http://auth.r.io/token").unwrap_err();
        assert!(e.contains("plain HTTP") && e.contains("clear text"), "{e}");
        // A plain-HTTP registry (listed insecure) may name a plain realm.
        assert!(judge_urls("http://r.io:5000/", "http://auth.r.io/token").is_ok());
        assert!(judge_urls("http://r.io:5000/", "https://auth.r.io/token").is_ok());
        assert!(judge_urls("https://r.io/", "ftp://r.io/token").is_err());
    }

    #[test]
    fn loopback_and_link_local_realms_only_for_a_registry_there() {
        for realm in [
            "https://127.0.0.1/token",
            "https://127.1.2.3:8443/token",
            "https://localhost/token",
            "https://0.0.0.0/token",
            "https://[::1]/token",
            "https://[::ffff:127.0.0.1]/token",
        ] {
            let e = judge_urls("https://r.io/", realm).unwrap_err();
            assert!(e.contains("loopback"), "{realm}: {e}");
            assert!(
                judge_urls("https://127.0.0.1:5000/", realm).is_ok(),
                "{realm}"
            );
        }
        for realm in [
            "https://169.254.169.254/latest/meta-data",
            "https://[fe80::1]/token",
        ] {
            let e = judge_urls("https://r.io/", realm).unwrap_err();
            assert!(e.contains("link-local"), "{realm}: {e}");
            // A registry on loopback does not make link-local fair game.
            assert!(judge_urls("https://127.0.0.1:5000/", realm).is_err());
        }
        assert!(judge_urls("http://169.254.1.1:5000/", "http://169.254.2.2/t").is_ok());
    }

    #[test]
    fn classes_of_addresses() {
        assert_eq!(Class::of("10.0.0.1".parse().unwrap()), Class::Other);
        assert_eq!(Class::of("169.254.0.1".parse().unwrap()), Class::LinkLocal);
        assert_eq!(Class::of("fe80::2".parse().unwrap()), Class::LinkLocal);
        assert_eq!(Class::of("::".parse().unwrap()), Class::Loopback);
        assert_eq!(Class::of("2001:db8::1".parse().unwrap()), Class::Other);
    }

    #[tokio::test]
    async fn names_are_resolved() {
        assert!(classes(&u("https://localhost/"))
            .await
            .contains(&Class::Loopback));
    }

    #[test]
    fn redaction_drops_query_and_user_info() {
        assert_eq!(
            redact(&u("https://u:p@s3.example/b?X-Amz-Signature=abc")),
            "https://s3.example/b"
        );
    }
}
