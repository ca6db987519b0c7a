//! Links, addresses and routes over rtnetlink: the veth pair, its outer
//! end, and (on a thread inside the workspace's netns) lo and eth0.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::packet_route::route::{RouteAttribute, RouteHeader};
use rtnetlink::{Handle, LinkUnspec, LinkVeth, RouteMessageBuilder};

use super::plan::{Plan, INNER_IF};
use super::NetError;

/// What a netlink call failed to do, with the errno and what to do about it.
fn failed(what: impl Into<String>, e: rtnetlink::Error) -> NetError {
    let what = what.into();
    let reason = match &e {
        rtnetlink::Error::NetlinkError(m) => {
            let errno = -m.raw_code();
            let io = m.to_io();
            match errno {
                libc::EPERM | libc::EACCES => {
                    format!("{io}: the outer container must be privileged (CAP_NET_ADMIN)")
                }
                libc::EOPNOTSUPP if what.contains("veth") => {
                    format!("{io}: the kernel lacks veth support (CONFIG_VETH)")
                }
                _ => io.to_string(),
            }
        }
        other => other.to_string(),
    };
    NetError::Netlink { what, reason }
}

/// A netlink connection in the calling thread's netns, served by a task of
/// the current tokio runtime.
pub fn connect() -> Result<Handle, NetError> {
    let (conn, handle, _) =
        rtnetlink::new_connection().map_err(|source| NetError::Socket { source })?;
    tokio::spawn(conn);
    Ok(handle)
}

pub async fn index_of(handle: &Handle, name: &str) -> Result<Option<u32>, NetError> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(link) => Ok(link.map(|l| l.header.index)),
        Err(rtnetlink::Error::NetlinkError(m)) if -m.raw_code() == libc::ENODEV => Ok(None),
        Err(e) => Err(failed(format!("look up interface {name}"), e)),
    }
}

/// Deletes a link if it exists (its veth peer goes with it).
pub async fn delete_if_present(handle: &Handle, name: &str) -> Result<bool, NetError> {
    let Some(index) = index_of(handle, name).await? else {
        return Ok(false);
    };
    match handle.link().del(index).execute().await {
        Ok(()) => Ok(true),
        Err(rtnetlink::Error::NetlinkError(m)) if -m.raw_code() == libc::ENODEV => Ok(false),
        Err(e) => Err(failed(format!("delete interface {name}"), e)),
    }
}

/// The MTU of the interface the main table's IPv4 default route leaves
/// through, if there is one.
pub async fn default_route_mtu(handle: &Handle) -> Result<Option<u32>, NetError> {
    let mut routes = handle
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute();
    let mut oif = None;
    while let Some(r) = routes
        .try_next()
        .await
        .map_err(|e| failed("list routes", e))?
    {
        let main = r.header.table == RouteHeader::RT_TABLE_MAIN
            || r.attributes.contains(&RouteAttribute::Table(u32::from(
                RouteHeader::RT_TABLE_MAIN,
            )));
        if r.header.destination_prefix_length != 0 || !main {
            continue;
        }
        oif = r.attributes.iter().find_map(|a| match a {
            RouteAttribute::Oif(i) => Some(*i),
            _ => None,
        });
        if oif.is_some() {
            break;
        }
    }
    let Some(oif) = oif else { return Ok(None) };
    let mut links = handle.link().get().match_index(oif).execute();
    let link = links
        .try_next()
        .await
        .map_err(|e| failed("read the default route's interface", e))?;
    Ok(link.and_then(|l| {
        l.attributes.iter().find_map(|a| match a {
            LinkAttribute::Mtu(m) => Some(*m),
            _ => None,
        })
    }))
}

/// The IPv4 addresses of the current netns, with their prefix lengths.
pub async fn ipv4_addresses(handle: &Handle) -> Result<Vec<(Ipv4Addr, u8)>, NetError> {
    let mut addrs = handle.address().get().execute();
    let mut out = Vec::new();
    while let Some(a) = addrs
        .try_next()
        .await
        .map_err(|e| failed("list addresses", e))?
    {
        for attr in &a.attributes {
            if let AddressAttribute::Address(IpAddr::V4(ip)) = attr {
                out.push((*ip, a.header.prefix_len));
            }
        }
    }
    Ok(out)
}

/// Creates the pair, moves the peer into the workspace's netns (`netns`)
/// and brings the outer end up with its address.
pub async fn create_pair(
    handle: &Handle,
    plan: &Plan,
    mtu: u32,
    netns: &OwnedFd,
) -> Result<(), NetError> {
    let (outer, peer) = (&plan.outer_if, &plan.peer_if);
    handle
        .link()
        .add(LinkVeth::new(outer, peer).mtu(mtu).build())
        .execute()
        .await
        .map_err(|e| failed(format!("create veth {outer}"), e))?;
    let peer_index = index_of(handle, peer)
        .await?
        .ok_or_else(|| NetError::Netlink {
            what: format!("find the new veth end {peer}"),
            reason: "it vanished right after its creation".into(),
        })?;
    handle
        .link()
        .set(
            LinkUnspec::new_with_index(peer_index)
                .setns_by_fd(netns.as_fd().as_raw_fd())
                .build(),
        )
        .execute()
        .await
        .map_err(|e| {
            failed(
                format!("move veth {peer} into the workspace's network namespace"),
                e,
            )
        })?;
    let outer_index = index_of(handle, outer)
        .await?
        .ok_or_else(|| NetError::Netlink {
            what: format!("find the new veth end {outer}"),
            reason: "it vanished right after its creation".into(),
        })?;
    handle
        .address()
        .add(
            outer_index,
            IpAddr::V4(plan.subnet.outer()),
            plan.subnet.prefix(),
        )
        .execute()
        .await
        .map_err(|e| {
            failed(
                format!(
                    "add {}/{} to {outer}",
                    plan.subnet.outer(),
                    plan.subnet.prefix()
                ),
                e,
            )
        })?;
    set_up(handle, outer_index, outer).await
}

async fn set_up(handle: &Handle, index: u32, name: &str) -> Result<(), NetError> {
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(|e| failed(format!("bring {name} up"), e))
}

/// Inside the workspace: lo up, and when `eth0_mtu` is given (a veth was
/// moved in) the peer renamed `eth0` with that MTU, its address and the
/// default route through the outer end.
pub async fn configure_inside(plan: &Plan, eth0_mtu: Option<u32>) -> Result<(), NetError> {
    let handle = connect()?;
    let lo = index_of(&handle, "lo")
        .await?
        .ok_or_else(|| NetError::Netlink {
            what: "find lo in the workspace".into(),
            reason: "the network namespace has no loopback interface".into(),
        })?;
    set_up(&handle, lo, "lo").await?;
    let Some(mtu) = eth0_mtu else { return Ok(()) };
    let peer = &plan.peer_if;
    let index = index_of(&handle, peer)
        .await?
        .ok_or_else(|| NetError::Netlink {
            what: format!("find veth {peer} in the workspace"),
            reason: "it did not arrive in the workspace's network namespace".into(),
        })?;
    // A link is renamed while down (the kernel refuses to rename an up
    // one), so up comes after.
    handle
        .link()
        .set(
            LinkUnspec::new_with_index(index)
                .name(INNER_IF)
                .mtu(mtu)
                .build(),
        )
        .execute()
        .await
        .map_err(|e| failed(format!("rename {peer} to {INNER_IF} with MTU {mtu}"), e))?;
    handle
        .address()
        .add(index, IpAddr::V4(plan.subnet.inner()), plan.subnet.prefix())
        .execute()
        .await
        .map_err(|e| {
            failed(
                format!(
                    "add {}/{} to {INNER_IF}",
                    plan.subnet.inner(),
                    plan.subnet.prefix()
                ),
                e,
            )
        })?;
    set_up(&handle, index, INNER_IF).await?;
    handle
        .route()
        .add(
            RouteMessageBuilder::<Ipv4Addr>::new()
                .output_interface(index)
                .gateway(plan.subnet.outer())
                .build(),
        )
        .execute()
        .await
        .map_err(|e| {
            failed(
                format!("add the default route via {}", plan.subnet.outer()),
                e,
            )
        })
}

/// Runs [`configure_inside`] on a thread of its own that joins the
/// workspace's netns: setns changes only the calling thread's, and a
/// runtime worker must never be left in another namespace. The thread ends
/// with the work, and its namespace with it.
pub async fn in_workspace(
    netns: OwnedFd,
    plan: Plan,
    eth0_mtu: Option<u32>,
) -> Result<(), NetError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("cvmd-netns".into())
        .spawn(move || {
            let result = (|| {
                nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| NetError::EnterNetns { source: e.into() })?;
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_io()
                    .build()
                    .map_err(|source| NetError::Thread { source })?;
                rt.block_on(configure_inside(&plan, eth0_mtu))
            })();
            let _ = tx.send(result);
        })
        .map_err(|source| NetError::Thread { source })?;
    rx.await.unwrap_or_else(|_| {
        Err(NetError::Thread {
            source: std::io::Error::other("the workspace netns thread panicked"),
        })
    })
}
