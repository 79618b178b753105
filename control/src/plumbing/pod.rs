//! The pod end: configuring it inside the pod namespace (name, MAC, MTU,
//! address, routes), and looking at it (CHECK, reconcile).

use std::net::Ipv4Addr;

use ferry_api::table::{Attachment, NetnsId};
use ferry_api::MacAddr;
use futures::TryStreamExt;
use ipnet::Ipv4Net;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::LinkAttribute;
use netlink_packet_route::route::RouteScope;
use rtnetlink::{Handle, LinkUnspec};

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
    pub addresses: Vec<Ipv4Net>,
    pub up: bool,
}

/// Configure a pod end that exists as `tmp` in the namespace of `h`: rename
/// it to the pod's ifname with its MAC and MTU, add the address, bring it
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
    add_address(h, idx, &pod.ifname, pod.address).await?;
    set_up(h, idx, &pod.ifname).await?;
    if let Some(lo) = link_by_name(h, "lo").await? {
        if !lo.up {
            set_up(h, lo.index, "lo").await?;
        }
    }
    // A pod's routes are created, never written over one that exists.
    let via = |dst: Ipv4Net, gw: Ipv4Addr| {
        add_route(
            h,
            idx,
            dst,
            Some(gw),
            None,
            RouteScope::Universe,
            Existing::Keep,
        )
    };
    let failed = |dst: Ipv4Net, gw: Ipv4Addr, e| {
        NetlinkError::request(format!("add route {dst} via {gw} in {}", pod.netns), e)
    };
    let mut onlink_done = false;
    for r in pod.effective_routes() {
        let gw = r.gw.unwrap_or(pod.gateway);
        let retry = match via(r.dst, gw).await {
            Ok(()) => continue,
            // The gateway is not on a connected subnet (e.g. a /32
            // address): reach it on-link first, then retry.
            Err(e) if errno(&e) == Some(libc::ENETUNREACH) && !onlink_done => e,
            Err(e) => return Err(failed(r.dst, gw, e)),
        };
        log::debug!(
            "route {} via {gw}: {retry}; adding {gw}/32 scope link first",
            r.dst
        );
        add_route(
            h,
            idx,
            Ipv4Net::from(gw),
            None,
            None,
            RouteScope::Link,
            Existing::Keep,
        )
        .await
        .map_err(|e| {
            NetlinkError::request(
                format!("add route {gw}/32 dev {} scope link", pod.ifname),
                e,
            )
        })?;
        onlink_done = true;
        via(r.dst, gw).await.map_err(|e| failed(r.dst, gw, e))?;
    }
    Ok(())
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
            let mut addrs = Vec::new();
            let mut stream = h
                .address()
                .get()
                .set_link_index_filter(link.index)
                .execute();
            while let Some(msg) = stream
                .try_next()
                .await
                .map_err(|e| NetlinkError::request(format!("list addresses of {ifname}"), e))?
            {
                if msg.header.index != link.index {
                    continue;
                }
                for attr in &msg.attributes {
                    if let AddressAttribute::Address(std::net::IpAddr::V4(a)) = attr {
                        if let Ok(net) = Ipv4Net::new(*a, msg.header.prefix_len) {
                            addrs.push(net);
                        }
                    }
                }
            }
            Ok(Some(PodView {
                mac: link.mac,
                addresses: addrs,
                up: link.up,
            }))
        })
        .await
    }
}
