//! The network plan as plain values: settings parsed and checked,
//! addresses and interface names derived, iptables rules spelled out.
//! No syscalls here; `link` and `nat` carry it out.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use sha2::{Digest, Sha256};

/// `network`: how the workspace is connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A veth pair to the outer container, NAT to what it reaches.
    Veth,
    /// Only loopback. (Sharing the outer netns is not offered: sysbox-runc
    /// refuses a network namespace path of its caller.)
    None,
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(v: &str) -> Result<Mode, String> {
        match v {
            "veth" => Ok(Mode::Veth),
            "none" => Ok(Mode::None),
            _ => Err(format!("{v:?} is not one of veth, none")),
        }
    }
}

/// `subnet`: the IPv4 network of the veth pair; the outer end takes the
/// first host address, the workspace the second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    network: Ipv4Addr,
    prefix: u8,
}

impl Subnet {
    pub fn prefix(&self) -> u8 {
        self.prefix
    }
    pub fn outer(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }
    pub fn inner(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 2)
    }

    /// Whether `addr/prefix`'s network and this one share an address: two
    /// CIDRs overlap iff they agree under the shorter prefix.
    pub fn overlaps(&self, addr: Ipv4Addr, prefix: u8) -> bool {
        let shorter = self.prefix.min(prefix);
        let mask = u32::MAX.checked_shl(32 - u32::from(shorter)).unwrap_or(0);
        u32::from(self.network) & mask == u32::from(addr) & mask
    }
}

/// The first outer address whose network overlaps the subnet: routes to
/// the workspace and to that network would collide.
pub fn conflict(subnet: &Subnet, outer: &[(Ipv4Addr, u8)]) -> Option<(Ipv4Addr, u8)> {
    outer
        .iter()
        .copied()
        .find(|(addr, prefix)| subnet.overlaps(*addr, *prefix))
}

impl Default for Subnet {
    /// envbox's: 172.19.0.0/30.
    fn default() -> Subnet {
        Subnet {
            network: Ipv4Addr::new(172, 19, 0, 0),
            prefix: 30,
        }
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl FromStr for Subnet {
    type Err = String;
    fn from_str(v: &str) -> Result<Subnet, String> {
        let bad = || format!("{v:?} is not an IPv4 CIDR like 172.19.0.0/30");
        let (addr, prefix) = v.trim().split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        if prefix > 32 {
            return Err(bad());
        }
        // A /30 has two usable hosts (network and broadcast excluded); the
        // pair needs both.
        if prefix > 30 {
            return Err(format!(
                "{v} has fewer than 2 usable host addresses: use a prefix of /30 or shorter"
            ));
        }
        let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
        let network = Ipv4Addr::from(u32::from(addr) & mask);
        if network.is_unspecified() || network.is_loopback() || network.is_multicast() || prefix < 8
        {
            return Err(format!(
                "{v} is not a usable private network: use a small private range like 172.19.0.0/30"
            ));
        }
        if network != addr {
            return Err(format!(
                "{v} has host bits set: did you mean {network}/{prefix}?"
            ));
        }
        Ok(Subnet { network, prefix })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn as_str(&self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// One `ports` entry: the outer container's port to the workspace's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortForward {
    pub outer: u16,
    pub inner: u16,
    pub proto: Proto,
}

/// `OUTER:INNER[/tcp|/udp]` or `PORT[/tcp|/udp]`, comma-separated.
pub fn parse_ports(v: &str) -> Result<Vec<PortForward>, String> {
    let mut out: Vec<PortForward> = Vec::new();
    for entry in v.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let bad = |why: &str| {
            format!("{entry:?} {why} (ports are OUTER:INNER[/tcp|/udp], e.g. 8080:80,5353:53/udp)")
        };
        let (ports, proto) = match entry.split_once('/') {
            Some((p, "tcp")) => (p, Proto::Tcp),
            Some((p, "udp")) => (p, Proto::Udp),
            Some(_) => return Err(bad("has a protocol other than tcp or udp")),
            None => (entry, Proto::Tcp),
        };
        let port = |p: &str| match p.trim().parse::<u16>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(bad("has a port that is not a number from 1 to 65535")),
        };
        let (outer, inner) = match ports.split_once(':') {
            Some((o, i)) => (port(o)?, port(i)?),
            None => (port(ports)?, port(ports)?),
        };
        if out.iter().any(|f| f.outer == outer && f.proto == proto) {
            return Err(bad("forwards an outer port already forwarded"));
        }
        out.push(PortForward {
            outer,
            inner,
            proto,
        });
    }
    Ok(out)
}

/// `mtu`: IPv4 needs at least 68 (RFC 791); 65535 is the largest an
/// interface takes besides loopback.
pub fn parse_mtu(v: &str) -> Result<u32, String> {
    match v.trim().parse::<u32>() {
        Ok(n) if (68..=65535).contains(&n) => Ok(n),
        _ => Err(format!("{v:?} is not an MTU from 68 to 65535")),
    }
}

/// The network settings, as resolved by `config`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkSettings {
    pub mode: Option<Mode>,
    pub subnet: Subnet,
    /// `None`: the MTU of the outer container's default-route interface.
    pub mtu: Option<u32>,
    pub ports: Vec<PortForward>,
    /// `allow_link_local`: let the workspace reach 169.254.0.0/16 through
    /// the outer container (a cloud's metadata service and the node
    /// credentials it hands out live there).
    pub allow_link_local: bool,
}

impl NetworkSettings {
    pub fn mode(&self) -> Mode {
        self.mode.unwrap_or(Mode::Veth)
    }
}

/// What to set up for one workspace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub workspace: String,
    pub mode: Mode,
    pub subnet: Subnet,
    pub mtu: Option<u32>,
    pub ports: Vec<PortForward>,
    pub allow_link_local: bool,
    /// Link-local nameservers of the workspace's resolv.conf (a node-local
    /// DNS cache on 169.254.20.10): port 53 on them stays reachable when
    /// the rest of 169.254.0.0/16 is closed.
    pub link_local_dns: Vec<Ipv4Addr>,
    /// The veth end that stays in the outer netns.
    pub outer_if: String,
    /// The other end's name until it is in the workspace and renamed `eth0`.
    pub peer_if: String,
}

/// The workspace's interface name once inside.
pub const INNER_IF: &str = "eth0";

/// Used when the outer container has no default route to take it from.
pub const FALLBACK_MTU: u32 = 1500;

impl Plan {
    pub fn new(workspace: &str, settings: &NetworkSettings) -> Plan {
        // Names are at most 15 bytes (IFNAMSIZ - 1); a hash of the
        // workspace name keeps them unique per workspace at any name length.
        let hash = hex::encode(Sha256::digest(workspace.as_bytes()));
        Plan {
            workspace: workspace.to_string(),
            mode: settings.mode(),
            subnet: settings.subnet,
            mtu: settings.mtu,
            ports: settings.ports.clone(),
            allow_link_local: settings.allow_link_local,
            link_local_dns: Vec::new(),
            outer_if: format!("cvm{}", &hash[..8]),
            peer_if: format!("cvp{}", &hash[..8]),
        }
    }

    /// The comment every iptables rule of this workspace carries, so a
    /// teardown (or the next run, after a crash) removes exactly those.
    pub fn tag(&self) -> String {
        format!("cvmd:{}", self.workspace)
    }

    /// The MTU for both veth ends.
    pub fn mtu(&self, outer_default_route: Option<u32>) -> u32 {
        self.mtu.or(outer_default_route).unwrap_or(FALLBACK_MTU)
    }

    /// The rules, in the order they are added.
    pub fn rules(&self) -> Vec<Rule> {
        if self.mode == Mode::None {
            return Vec::new();
        }
        let tag = self.tag();
        let subnet = self.subnet.to_string();
        let out_if = self.outer_if.as_str();
        let mut rules = vec![
            // The workspace reaches what the outer container reaches.
            Rule::new(
                Table::Nat,
                "POSTROUTING",
                &["-s", &subnet, "!", "-d", &subnet],
                &tag,
                &["-j", "MASQUERADE"],
            ),
            // First in FORWARD, ahead of a DROP policy or rule (Docker's)
            // the outer container may carry.
            Rule::new(
                Table::Filter,
                "FORWARD",
                &["-i", out_if],
                &tag,
                &["-j", "ACCEPT"],
            )
            .first(),
            Rule::new(
                Table::Filter,
                "FORWARD",
                &["-o", out_if],
                &tag,
                &["-j", "ACCEPT"],
            )
            .first(),
        ];
        rules.extend(self.guard_rules(&tag));
        if self.ports.is_empty() {
            return rules;
        }
        // Connections from the outer container's own loopback (kubectl
        // port-forward connects to 127.0.0.1 in the pod) leave through the
        // veth with a 127/8 source, which the workspace could not answer:
        // take the outer end's address (with route_localnet on the veth).
        rules.push(Rule::new(
            Table::Nat,
            "POSTROUTING",
            &["-o", out_if, "-s", "127.0.0.0/8"],
            &tag,
            &["-j", "MASQUERADE"],
        ));
        for f in &self.ports {
            let dport = f.outer.to_string();
            let to = format!("{}:{}", self.subnet.inner(), f.inner);
            let target = ["-j", "DNAT", "--to-destination", &to];
            let proto = f.proto.as_str();
            // Arriving from outside, to any address of the outer container
            // (not from the workspace itself).
            rules.push(Rule::new(
                Table::Nat,
                "PREROUTING",
                &[
                    "!",
                    "-i",
                    out_if,
                    "-p",
                    proto,
                    "--dport",
                    &dport,
                    "-m",
                    "addrtype",
                    "--dst-type",
                    "LOCAL",
                ],
                &tag,
                &target,
            ));
            // From the outer container itself to one of its own addresses.
            rules.push(Rule::new(
                Table::Nat,
                "OUTPUT",
                &[
                    "-p",
                    proto,
                    "--dport",
                    &dport,
                    "-m",
                    "addrtype",
                    "--dst-type",
                    "LOCAL",
                ],
                &tag,
                &target,
            ));
        }
        rules
    }
}

impl Plan {
    /// What the workspace must not reach through the outer netns.
    ///
    /// 127/8 arriving on the veth: with `route_localnet` on (the ports
    /// forwards need it), the kernel no longer drops such packets as
    /// martians, and root in the workspace, routing 127.0.0.0/8 via the
    /// outer end, reaches whatever listens on the outer container's
    /// loopback (kube-proxy's CVE-2020-8558). Dropped in `raw`, before
    /// conntrack: the answers of forwarded connections still arrive with
    /// the outer end's address then, and are un-NATed to 127.0.0.1 only
    /// later. Added whatever the ports, since `route_localnet` may also be
    /// on through `conf/all` set by someone else.
    ///
    /// 169.254.0.0/16: a node's link-local addresses are its cloud
    /// metadata service (node credentials) and similar node-only services;
    /// dropped both when forwarded (through the NAT) and when addressed to
    /// the outer container itself, unless `allow_link_local`. The
    /// resolv.conf's link-local nameservers keep port 53.
    fn guard_rules(&self, tag: &str) -> Vec<Rule> {
        let out_if = self.outer_if.as_str();
        let mut rules = Vec::new();
        for dir in ["-d", "-s"] {
            rules.push(Rule::new(
                Table::Raw,
                "PREROUTING",
                &["-i", out_if, dir, LOOPBACK_NET],
                tag,
                &["-j", "DROP"],
            ));
        }
        if self.allow_link_local {
            return rules;
        }
        // Inserted first, so they end up ahead of the FORWARD accepts
        // above, and the nameservers' accepts ahead of the drops.
        for chain in ["FORWARD", "INPUT"] {
            rules.push(
                Rule::new(
                    Table::Filter,
                    chain,
                    &["-i", out_if, "-d", LINK_LOCAL_NET],
                    tag,
                    &["-j", "DROP"],
                )
                .first(),
            );
            for ns in &self.link_local_dns {
                let ns = ns.to_string();
                for proto in [Proto::Udp, Proto::Tcp] {
                    rules.push(
                        Rule::new(
                            Table::Filter,
                            chain,
                            &[
                                "-i",
                                out_if,
                                "-d",
                                &ns,
                                "-p",
                                proto.as_str(),
                                "--dport",
                                "53",
                            ],
                            tag,
                            &["-j", "ACCEPT"],
                        )
                        .first(),
                    );
                }
            }
        }
        rules
    }
}

pub const LOOPBACK_NET: &str = "127.0.0.0/8";
pub const LINK_LOCAL_NET: &str = "169.254.0.0/16";

/// The nameservers of a resolv.conf that are IPv4 link-local.
pub fn link_local_nameservers(resolv_conf: &str) -> Vec<Ipv4Addr> {
    resolv_conf
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next()? == "nameserver")
                .then(|| w.next()?.parse::<Ipv4Addr>().ok())
                .flatten()
        })
        .filter(Ipv4Addr::is_link_local)
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Nat,
    Filter,
    Raw,
}

impl Table {
    pub const ALL: [Table; 3] = [Table::Nat, Table::Filter, Table::Raw];
    pub fn as_str(&self) -> &'static str {
        match self {
            Table::Nat => "nat",
            Table::Filter => "filter",
            Table::Raw => "raw",
        }
    }
}

/// One iptables rule: its table, chain and match/target arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub table: Table,
    pub chain: &'static str,
    pub spec: Vec<String>,
    insert: bool,
}

impl Rule {
    fn new(
        table: Table,
        chain: &'static str,
        matches: &[&str],
        tag: &str,
        target: &[&str],
    ) -> Rule {
        let mut spec: Vec<String> = matches.iter().map(|s| s.to_string()).collect();
        spec.extend(["-m", "comment", "--comment", tag].map(String::from));
        spec.extend(target.iter().map(|s| s.to_string()));
        Rule {
            table,
            chain,
            spec,
            insert: false,
        }
    }

    fn first(mut self) -> Rule {
        self.insert = true;
        self
    }

    /// The iptables arguments that add it (`-w`: wait for the xtables lock
    /// other tools on the node may hold).
    pub fn add_args(&self) -> Vec<String> {
        let verb = if self.insert { "-I" } else { "-A" };
        let mut args: Vec<String> = ["-w", "-t", self.table.as_str(), verb, self.chain]
            .map(String::from)
            .into();
        args.extend(self.spec.iter().cloned());
        args
    }
}

/// The iptables arguments that delete every rule tagged `tag` in a table's
/// listing (`iptables -t TABLE -S`): each `-A CHAIN SPEC` line carrying the
/// comment becomes `-D CHAIN SPEC`.
pub fn deletions(table: Table, listing: &str, tag: &str) -> Vec<Vec<String>> {
    listing
        .lines()
        .filter_map(|line| {
            let words = split_words(line);
            let (first, rest) = words.split_first()?;
            if first != "-A" {
                return None;
            }
            let tagged = rest.windows(2).any(|w| w[0] == "--comment" && w[1] == tag);
            tagged.then(|| {
                let mut args: Vec<String> =
                    ["-w", "-t", table.as_str(), "-D"].map(String::from).into();
                args.extend(rest.iter().cloned());
                args
            })
        })
        .collect()
}

/// Words of an `iptables -S` line: split at spaces, double quotes (which
/// iptables puts around comments) group and are removed, `\"` and `\\`
/// escape.
fn split_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut quoted = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' if quoted => {
                if let Some(n) = chars.next() {
                    word.get_or_insert_with(String::new).push(n);
                }
            }
            '"' => {
                quoted = !quoted;
                word.get_or_insert_with(String::new);
            }
            c if c.is_whitespace() && !quoted => {
                if let Some(w) = word.take() {
                    words.push(w);
                }
            }
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    words
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
