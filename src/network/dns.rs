//! The workspace's resolv.conf. The outer one is copied in, but a loopback
//! nameserver in it (systemd-resolved's 127.0.0.53 stub, a dnsmasq on
//! 127.0.0.1) listens in the outer netns, out of the workspace's reach.

use std::net::IpAddr;
use std::path::Path;

/// systemd-resolved writes the upstream servers it uses here.
pub const RESOLVED_UPSTREAM: &str = "/run/systemd/resolve/resolv.conf";

/// The resolv.conf to give the workspace, and a warning to log if it
/// cannot resolve names the way the outer container does.
#[derive(Debug, PartialEq, Eq)]
pub struct Choice {
    pub content: String,
    pub warning: Option<String>,
}

/// Decides from the outer `/etc/resolv.conf` and, when it exists,
/// systemd-resolved's upstream file.
pub fn choose(outer: &str, resolved_upstream: Option<&str>) -> Choice {
    let loopback: Vec<IpAddr> = nameservers(outer).filter(IpAddr::is_loopback).collect();
    if loopback.is_empty() {
        return Choice {
            content: outer.to_string(),
            warning: None,
        };
    }
    if let Some(upstream) = resolved_upstream {
        if nameservers(upstream).any(|a| !a.is_loopback()) {
            return Choice {
                content: upstream.to_string(),
                warning: None,
            };
        }
    }
    let kept: String = outer
        .lines()
        .filter(|l| !nameserver(l).is_some_and(|a| a.is_loopback()))
        .map(|l| format!("{l}\n"))
        .collect();
    let list = loopback
        .iter()
        .map(IpAddr::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    if nameservers(&kept).next().is_some() {
        Choice {
            content: kept,
            warning: Some(format!(
                "dropped the loopback nameserver(s) {list} from the workspace's resolv.conf: they listen in the outer container, out of the workspace's reach"
            )),
        }
    } else {
        Choice {
            content: outer.to_string(),
            warning: Some(format!(
                "the outer resolv.conf names only loopback nameserver(s) ({list}), which the workspace cannot reach, and {RESOLVED_UPSTREAM} does not exist: names will not resolve in the workspace; give the outer container a reachable nameserver (e.g. the pod's cluster DNS)"
            )),
        }
    }
}

/// Reads the outer files and chooses.
pub fn workspace_resolv_conf() -> Choice {
    let outer = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let upstream = Path::new(RESOLVED_UPSTREAM)
        .exists()
        .then(|| std::fs::read_to_string(RESOLVED_UPSTREAM).ok())
        .flatten();
    choose(&outer, upstream.as_deref())
}

fn nameservers(text: &str) -> impl Iterator<Item = IpAddr> + '_ {
    text.lines().filter_map(nameserver)
}

fn nameserver(line: &str) -> Option<IpAddr> {
    let mut words = line.split_whitespace();
    if words.next()? != "nameserver" {
        return None;
    }
    // An IPv6 nameserver may carry a zone (`fe80::1%eth0`).
    words.next()?.split('%').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reachable_nameservers_are_kept_as_they_are() {
        let outer = "search svc.cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n";
        assert_eq!(
            choose(outer, Some("nameserver 1.1.1.1\n")),
            Choice {
                content: outer.into(),
                warning: None
            }
        );
    }

    #[test]
    fn the_resolved_stub_is_replaced_by_its_upstream_servers() {
        let stub = "nameserver 127.0.0.53\noptions edns0 trust-ad\nsearch lan\n";
        let upstream = "nameserver 192.168.1.1\nsearch lan\n";
        let c = choose(stub, Some(upstream));
        assert_eq!(c.content, upstream);
        assert_eq!(c.warning, None);
    }

    #[test]
    fn loopback_servers_are_dropped_when_others_remain() {
        let c = choose(
            "nameserver 127.0.0.1\nnameserver 10.0.0.2\nnameserver ::1\n",
            None,
        );
        assert_eq!(c.content, "nameserver 10.0.0.2\n");
        let w = c.warning.unwrap();
        assert!(w.contains("127.0.0.1, ::1"), "{w}");
    }

    #[test]
    fn only_loopback_and_no_upstream_file_warns_clearly() {
        let stub = "nameserver 127.0.0.53\n";
        for upstream in [None, Some("nameserver 127.0.0.1\n")] {
            let c = choose(stub, upstream);
            assert_eq!(c.content, stub);
            let w = c.warning.unwrap();
            assert!(
                w.contains("127.0.0.53") && w.contains(RESOLVED_UPSTREAM),
                "{w}"
            );
        }
    }

    #[test]
    fn nameserver_lines_parse_with_zones_and_ignore_the_rest() {
        assert_eq!(
            nameserver("nameserver fe80::1%eth0"),
            "fe80::1".parse().ok()
        );
        assert_eq!(nameserver("# nameserver 127.0.0.1"), None);
        assert_eq!(nameserver("nameserver"), None);
    }
}
