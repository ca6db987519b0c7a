//! A service-mesh sidecar in the workspace's pod (old cluster-wide Istio
//! injection, Linkerd): its init container redirects the pod's traffic
//! through the proxy with iptables rules, which the workspace's NAT then
//! runs into. The sidecar shares the pod's network namespace, so its
//! listening ports show in this container's /proc/net/tcp — no privilege
//! and no iptables binary needed to see it.

use super::{Check, Host};

/// Ports a mesh's proxy listens on in every pod it is injected into.
const MESH_PORTS: &[(u16, &str)] = &[
    (15001, "Istio (Envoy outbound capture)"),
    (15006, "Istio (Envoy inbound capture)"),
    (4140, "Linkerd (proxy outbound)"),
    (4143, "Linkerd (proxy inbound)"),
];

pub fn check(host: &dyn Host) -> Check {
    let name = "pod-proxy";
    let mut listening = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Some(text) = host.read(table) {
            listening.extend(listening_ports(&text));
        }
    }
    let found: Vec<&str> = MESH_PORTS
        .iter()
        .filter(|(port, _)| listening.contains(port))
        .map(|(_, mesh)| *mesh)
        .collect();
    if found.is_empty() {
        return Check::ok(name, "no service-mesh sidecar listens in this pod");
    }
    Check::warn(
        name,
        format!(
            "a service-mesh sidecar shares this pod's network: {}; it captures the traffic the workspace's NAT sends",
            found.join(", ")
        ),
        "keep sidecars out of workspace pods: label their namespace istio-injection=disabled (or annotate the pod sidecar.istio.io/inject: \"false\", linkerd.io/inject: disabled)",
    )
}

/// Local ports in state LISTEN of a /proc/net/tcp{,6} table (procfs-core
/// parses it); a table that is not the kernel's gives none.
pub fn listening_ports(table: &str) -> Vec<u16> {
    use procfs_core::net::{TcpNetEntries, TcpState};
    use procfs_core::{ExplicitSystemInfo, FromBufReadSI};
    // The kernel prints addresses in host byte order; the other fields are
    // not read from a TCP table.
    let host = ExplicitSystemInfo {
        boot_time_secs: 0,
        ticks_per_second: 100,
        page_size: 4096,
        is_little_endian: cfg!(target_endian = "little"),
    };
    TcpNetEntries::from_buf_read(table.as_bytes(), &host)
        .map(|entries| {
            entries
                .0
                .into_iter()
                .filter(|e| e.state == TcpState::Listen)
                .map(|e| e.local_address.port())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:3A99 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1337        0 1 1 0000000000000000 100 0 0 10 0
   1: 0100007F:3A9E 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1337        0 2 1 0000000000000000 100 0 0 10 0
   2: 0100007F:1F90 0100007F:3A99 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0000000000000000 20 4 30 10 -1
";

    #[test]
    fn listening_ports_are_read_in_hex_and_only_in_listen_state() {
        // 0x3A99 = 15001, 0x3A9E = 15006; 0x1F90 (8080) is ESTABLISHED.
        assert_eq!(listening_ports(TCP), vec![15001, 15006]);
        assert!(listening_ports("header only\n").is_empty());
        assert!(listening_ports("h\n   0: garbage\n").is_empty());
    }
}
