//! The workspace's network, set up between the runtime's `create` and
//! `start` (the init's pid names the new netns) and torn down after.
//!
//! `veth` (the default): a veth pair, the outer end in cvmd's netns (the
//! outer container's), the other moved in as `eth0` with the subnet's
//! second address, the default route via the first, the MTU of the outer
//! default-route interface; IPv4 forwarding and a MASQUERADE of the subnet
//! so the workspace reaches what the outer container reaches; DNAT for the
//! `ports` forwards; drops of 127/8 martians from the veth and of
//! 169.254.0.0/16 (`plan::Plan::guard_rules` says why). `none`: loopback
//! only.
//!
//! Every iptables rule carries the workspace's tag and the veth a name
//! derived from the workspace, so teardown, and the next run after a crash,
//! remove exactly this workspace's.

pub mod dns;
mod link;
mod nat;
pub mod plan;

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;

use tracing::Instrument;

pub use plan::{Mode, NetworkSettings, Plan, PortForward, Subnet};

use crate::runtime::Spawner;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("cannot {what}: {reason}")]
    Netlink { what: String, reason: String },
    #[error("cannot open a netlink socket: {source}: run the outer container privileged (no seccomp profile blocking netlink, file descriptors to spare), or set CVMD_NETWORK=none")]
    Socket { source: std::io::Error },
    #[error("cannot open the workspace's network namespace {path}: {source}: the workspace's init is gone")]
    OpenNetns {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot enter the workspace's network namespace: {source}: the outer container must be privileged (CAP_SYS_ADMIN)")]
    EnterNetns { source: std::io::Error },
    #[error("cannot run the workspace network thread: {source}: cvmd is out of threads or memory; raise the outer container's pids or memory limit")]
    Thread { source: std::io::Error },
    #[error("cannot set {} to 1: {source}: the outer container must be privileged (writable /proc/sys)", path.display())]
    Sysctl {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the workspace subnet {subnet} overlaps {addr}/{prefix} of the outer container: set CVMD_SUBNET to a free private range")]
    SubnetConflict {
        subnet: Subnet,
        addr: std::net::Ipv4Addr,
        prefix: u8,
    },
    #[error("iptables not found on PATH: install it in the outer container's image (Debian: apt-get install iptables), or set CVMD_NETWORK=none")]
    IptablesMissing,
    #[error("cannot change the workspace's NAT rules: `iptables {args}` failed: {reason}; make iptables work in the outer container (privileged, the nft or legacy backend the node uses), or set CVMD_NETWORK=none")]
    Iptables { args: String, reason: String },
}

/// A workspace network that is up; [`Active::teardown`] removes it.
pub struct Active {
    plan: Plan,
    spawner: Arc<dyn Spawner>,
}

impl std::fmt::Debug for Active {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Active")
            .field("plan", &self.plan)
            .finish_non_exhaustive()
    }
}

/// Sets up the network of the workspace whose init is `pid`. Removes first
/// what an earlier run of the same workspace left (after a crash); on
/// failure removes what it had done.
pub async fn setup(plan: &Plan, pid: i32, spawner: Arc<dyn Spawner>) -> Result<Active, NetError> {
    let active = Active {
        plan: plan.clone(),
        spawner,
    };
    let stale = active.remove().await?;
    if stale > 0 {
        tracing::info!(workspace = %plan.workspace, stale, "removed network leftovers of an earlier run");
    }
    // Opened once: the same namespace for the move and for the thread,
    // even if the pid were reused meanwhile.
    let path = PathBuf::from(format!("/proc/{pid}/ns/net"));
    let netns: OwnedFd = std::fs::File::open(&path)
        .map_err(|source| NetError::OpenNetns { path, source })?
        .into();
    let span = tracing::info_span!("network", mode = ?plan.mode, interface = %plan.outer_if);
    if let Err(e) = active.build(netns).instrument(span).await {
        active.teardown().await;
        return Err(e);
    }
    Ok(active)
}

impl Active {
    async fn build(&self, netns: OwnedFd) -> Result<(), NetError> {
        let plan = &self.plan;
        if plan.mode == Mode::None {
            tracing::info!("network none: loopback only");
            return link::in_workspace(netns, plan.clone(), None).await;
        }
        let handle = link::connect()?;
        let outer = link::ipv4_addresses(&handle).await?;
        if let Some((addr, prefix)) = plan::conflict(&plan.subnet, &outer) {
            return Err(NetError::SubnetConflict {
                subnet: plan.subnet,
                addr,
                prefix,
            });
        }
        let outer_mtu = link::default_route_mtu(&handle).await?;
        if outer_mtu.is_none() && plan.mtu.is_none() {
            tracing::warn!(mtu = plan::FALLBACK_MTU, "the outer container has no IPv4 default route to take the MTU from: using 1500 (set CVMD_MTU to override)");
        }
        let mtu = plan.mtu(outer_mtu);
        link::create_pair(&handle, plan, mtu, &netns).await?;
        link::in_workspace(netns, plan.clone(), Some(mtu)).await?;
        nat::enable("/proc/sys/net/ipv4/ip_forward".as_ref())?;
        if !plan.ports.is_empty() {
            // Lets loopback-sourced connections (to 127.0.0.1:PORT) be
            // DNAT'd out through the veth; the kernel drops them as
            // martians otherwise.
            nat::enable(
                format!("/proc/sys/net/ipv4/conf/{}/route_localnet", plan.outer_if).as_ref(),
            )?;
        }
        nat::add_rules(self.spawner.as_ref(), plan).await?;
        tracing::info!(
            interface = %plan.outer_if,
            outer = %plan.subnet.outer(),
            inner = %plan.subnet.inner(),
            mtu,
            ports = plan.ports.len(),
            "workspace network up"
        );
        Ok(())
    }

    /// Removes this workspace's rules and veth; how many things went.
    async fn remove(&self) -> Result<usize, NetError> {
        // Tagged rules are looked for even with `none` (an earlier run may
        // have had a veth); without iptables there can be none of ours.
        let rules = match nat::delete_rules(self.spawner.as_ref(), &self.plan).await {
            Err(NetError::IptablesMissing) => 0,
            other => other?,
        };
        let handle = link::connect()?;
        let link = link::delete_if_present(&handle, &self.plan.outer_if).await?;
        Ok(rules + usize::from(link))
    }

    /// Removes the network; logs what it could not remove.
    pub async fn teardown(&self) {
        match self.remove().await {
            Ok(_) => tracing::debug!(workspace = %self.plan.workspace, "workspace network removed"),
            Err(e) => tracing::warn!(error = %e, "cannot remove the workspace network"),
        }
    }
}
