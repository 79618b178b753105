//! The pod end: configuring it inside the pod namespace (name, MAC, MTU,
//! address, routes), and looking at it (CHECK, reconcile).

use std::net::IpAddr;

use ferry_api::table::{Attachment, NetnsId};
use ferry_api::MacAddr;
use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags};
use netlink_packet_route::link::LinkAttribute;
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteScope};
use netlink_packet_route::AddressFamily;
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

use super::netns::in_netns;
use super::routes::{add_route, Existing};
use super::veth::set_channels;
use super::{
    add_address, errno, link_by_name, set_link, set_up, Netlink, NetlinkError, PodPlumbing,
};

/// What a pod interface looks like, for CHECK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodView {
    pub mac: Option<MacAddr>,
    /// Usable addresses of both families (an IPv6 one that failed
    /// duplicate address detection is left out).
    pub addresses: Vec<IpNet>,
    pub up: bool,
    /// Routes out of the interface, both families: destination and gateway.
    pub routes: Vec<(IpNet, Option<IpAddr>)>,
}

impl PodView {
    /// Whether a route to `dst` leaves the interface (via `gw`, if given).
    pub fn has_route(&self, dst: IpNet, gw: Option<IpAddr>) -> bool {
        self.routes
            .iter()
            .any(|(d, g)| *d == dst && (gw.is_none() || *g == gw))
    }
}

/// The IPv6 settings of a pod interface, written in the pod namespace
/// while it still has its temporary name `tmp` (unique to ferry, so the
/// write can only reach ferry's own link): no duplicate address detection
/// (its link-local address is usable at once too) and no router
/// advertisements (the pod's routes are ferry's, never learned).
fn ipv6_sysctls(tmp: &str, netns: &str) -> Result<(), NetlinkError> {
    for (key, value) in [("accept_dad", "0"), ("accept_ra", "0")] {
        // /proc/sys/net is the namespace of the thread that opens it: this
        // one has entered the pod's.
        let path = format!("/proc/sys/net/ipv6/conf/{tmp}/{key}");
        std::fs::write(&path, value).map_err(|e| NetlinkError::Thread {
            path: netns.to_string(),
            msg: format!("write {value} to {path}: {e}"),
        })?;
    }
    Ok(())
}

/// Configure a pod end that exists as `tmp` in the namespace of `h`: rename
/// it to the pod's ifname with its MAC and MTU, add the addresses, bring it
/// (and `lo`) up, add the routes.
pub(super) async fn configure_pod_end(
    h: &Handle,
    tmp: &str,
    pod: &PodPlumbing,
) -> Result<(), NetlinkError> {
    let link = link_by_name(h, tmp)
        .await?
        .ok_or_else(|| NetlinkError::NoSuchLink(format!("{tmp} in {}", pod.netns)))?;
    let idx = link.index;
    if pod.attachment == Attachment::Veth {
        set_channels(tmp, pod.queues.max(1))?;
    }
    if pod.has_ipv6() {
        ipv6_sysctls(tmp, &pod.netns)?;
    }
    let mut link = LinkUnspec::new_with_index(idx)
        .name(pod.ifname.clone())
        .address(pod.mac.octets().to_vec())
        .mtu(pod.mtu);
    if pod.attachment == Attachment::Tap {
        link = link.append_extra_attribute(LinkAttribute::GsoMaxSegs(ferry_tun::TAP_GSO_MAX_SEGS));
    }
    set_link(
        h,
        format!(
            "rename {tmp} to {} and set MAC {} in {}",
            pod.ifname, pod.mac, pod.netns
        ),
        link.build(),
    )
    .await?;
    for a in &pod.addresses {
        add_address(h, idx, &pod.ifname, a.address).await?;
    }
    set_up(h, idx, &pod.ifname).await?;
    if let Some(lo) = link_by_name(h, "lo").await? {
        if !lo.up {
            set_up(h, lo.index, "lo").await?;
        }
    }
    // A pod's routes are created, never written over one that exists.
    // Each goes via a gateway, to what may be off the node: it carries the
    // path MTU. The connected route of the pod's prefix (the kernel's, to
    // the pods of this node) keeps the link's.
    let via = |dst: IpNet, gw: IpAddr| {
        add_route(
            h,
            idx,
            dst,
            Some(gw),
            None,
            pod.route_mtu,
            RouteScope::Universe,
            Existing::Keep,
        )
    };
    let failed = |dst: IpNet, gw: IpAddr, e| {
        NetlinkError::request(format!("add route {dst} via {gw} in {}", pod.netns), e)
    };
    let onlink = |host: IpNet, mtu: Option<u32>| {
        add_route(
            h,
            idx,
            host,
            None,
            None,
            mtu,
            RouteScope::Link,
            Existing::Keep,
        )
    };
    let onlink_failed = |host: IpNet, e| {
        NetlinkError::request(format!("add route {host} dev {} scope link", pod.ifname), e)
    };
    // With a route MTU, each gateway gets an on-link host route carrying
    // it: the gateway is on the pod's prefix, whose connected route has
    // the link's MTU, but what is sent to its address (beyond the
    // dataplane's own answers) leaves through the host port at the path
    // MTU. Without it, a large UDP datagram without DF for the node's
    // gateway address would be dropped there instead of fragmented here.
    let mut onlink_done: Vec<IpAddr> = Vec::new();
    if let Some(mtu) = pod.route_mtu {
        for gw in pod.addresses.iter().map(|a| a.gateway) {
            if onlink_done.contains(&gw) {
                continue;
            }
            let host = IpNet::from(gw);
            match onlink(host, Some(mtu)).await {
                Ok(()) => {}
                // Another interface of the pod (a second ferry attachment)
                // has it already: the gateway is reached, and its route
                // is not ours to change.
                Err(e) if errno(&e) == Some(libc::EEXIST) => {}
                Err(e) => return Err(onlink_failed(host, e)),
            }
            onlink_done.push(gw);
        }
    }
    // Per family: a gateway off every connected subnet gets its on-link
    // host route once.
    for (dst, gw) in pod.effective_routes() {
        let retry = match via(dst, gw).await {
            Ok(()) => continue,
            // The gateway is not on a connected subnet (e.g. a /32
            // address): reach it on-link first, then retry.
            Err(e) if errno(&e) == Some(libc::ENETUNREACH) && !onlink_done.contains(&gw) => e,
            Err(e) => return Err(failed(dst, gw, e)),
        };
        let host = IpNet::from(gw);
        log::debug!("route {dst} via {gw}: {retry}; adding {host} scope link first");
        onlink(host, None)
            .await
            .map_err(|e| onlink_failed(host, e))?;
        onlink_done.push(gw);
        via(dst, gw).await.map_err(|e| failed(dst, gw, e))?;
    }
    Ok(())
}

/// The addresses of link `index` that are usable (not `dadfailed`).
async fn usable_addresses(
    h: &Handle,
    index: u32,
    ifname: &str,
) -> Result<Vec<IpNet>, NetlinkError> {
    let mut addrs = Vec::new();
    let mut stream = h.address().get().set_link_index_filter(index).execute();
    while let Some(msg) = stream
        .try_next()
        .await
        .map_err(|e| NetlinkError::request(format!("list addresses of {ifname}"), e))?
    {
        if msg.header.index != index {
            continue;
        }
        let failed = msg.header.flags.contains(AddressHeaderFlags::Dadfailed)
            || msg.attributes.iter().any(
                |a| matches!(a, AddressAttribute::Flags(f) if f.contains(AddressFlags::Dadfailed)),
            );
        for attr in &msg.attributes {
            if let AddressAttribute::Address(a) = attr {
                if let (Ok(net), false) = (IpNet::new(*a, msg.header.prefix_len), failed) {
                    addrs.push(net);
                }
            }
        }
    }
    Ok(addrs)
}

/// The routes (both families, main table) out of link `index`.
async fn routes_of(
    h: &Handle,
    index: u32,
    ifname: &str,
) -> Result<Vec<(IpNet, Option<IpAddr>)>, NetlinkError> {
    let mut out = Vec::new();
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        let mut query = RouteMessageBuilder::<IpAddr>::new().build();
        query.header.address_family = family;
        let mut stream = h.route().get(query).execute();
        while let Some(msg) = stream
            .try_next()
            .await
            .map_err(|e| NetlinkError::request(format!("list routes of {ifname}"), e))?
        {
            let (mut dst, mut gw, mut oif) = (None, None, None);
            for attr in &msg.attributes {
                match attr {
                    RouteAttribute::Destination(a) => dst = ip_of(a),
                    RouteAttribute::Gateway(a) => gw = ip_of(a),
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    _ => {}
                }
            }
            if oif != Some(index) {
                continue;
            }
            let len = msg.header.destination_prefix_length;
            let dst = match (dst, family) {
                (Some(d), _) => d,
                (None, AddressFamily::Inet) => IpAddr::from([0u8; 4]),
                (None, _) => IpAddr::from([0u8; 16]),
            };
            if let Ok(net) = IpNet::new(dst, len) {
                out.push((net, gw));
            }
        }
    }
    Ok(out)
}

fn ip_of(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(a) => Some((*a).into()),
        RouteAddress::Inet6(a) => Some((*a).into()),
        _ => None,
    }
}

impl Netlink {
    /// The pod interface `ifname` as seen inside `netns` (which must still
    /// be `netns_id`, when given); `None` if missing.
    pub async fn pod_view(
        &self,
        netns: &str,
        netns_id: Option<NetnsId>,
        ifname: &str,
    ) -> Result<Option<PodView>, NetlinkError> {
        let ifname = ifname.to_string();
        in_netns(netns, netns_id, &self.forbidden, move |h| async move {
            let Some(link) = link_by_name(&h, &ifname).await? else {
                return Ok(None);
            };
            let addrs = usable_addresses(&h, link.index, &ifname).await?;
            let routes = routes_of(&h, link.index, &ifname).await?;
            Ok(Some(PodView {
                mac: link.mac,
                addresses: addrs,
                up: link.up,
                routes,
            }))
        })
        .await
    }
}
