//! The host port: the veth pair that joins the dataplane to the node
//! kernel (the kernel end holds the gateway address and the pod CIDR
//! routes; the dataplane drives the other end).

use std::net::IpAddr;

use ferry_api::MacAddr;
use ipnet::IpNet;
use rtnetlink::LinkUnspec;

use super::routes::replace_pod_cidr_route;
use super::veth::veth_message;
use super::{add_address, delete_link, link_by_name, set_link, set_up, Netlink, NetlinkError};

impl Netlink {
    /// Make sure the host port exists: a veth pair `kernel` / `dp`, both up
    /// with `mtu`, `kernel` holding each of `gateways` (one per family, as
    /// /32 or /128, IPv6 `nodad`) and a route to each pod CIDR `dev kernel
    /// src <its family's gateway>`. With `queues` given, a pair with another
    /// queue count is recreated; without, an existing pair is kept and a
    /// new one gets one queue. Returns the MAC of the kernel end.
    pub async fn ensure_host_port(
        &self,
        kernel: &str,
        dp: &str,
        gateways: &[IpAddr],
        pod_cidrs: &[IpNet],
        mtu: u32,
        queues: Option<u32>,
    ) -> Result<MacAddr, NetlinkError> {
        let h = &self.handle;
        let k = link_by_name(h, kernel).await?;
        let d = link_by_name(h, dp).await?;
        let keep = match (&k, &d) {
            (Some(k), Some(_)) => match queues {
                Some(q) => k.tx_queues == Some(q) && k.rx_queues == Some(q),
                None => true,
            },
            _ => false,
        };
        if !keep {
            if k.is_some() {
                log::info!(
                    "host port {kernel}: recreating (queues wanted {queues:?}, had {:?})",
                    k.as_ref().and_then(|k| k.tx_queues)
                );
                delete_link(h, kernel).await?;
            }
            if d.is_some() {
                delete_link(h, dp).await?;
            }
            let q = queues.unwrap_or(1).max(1);
            h.link()
                .add(veth_message(kernel, dp, q, mtu, None))
                .execute()
                .await
                .map_err(|e| {
                    NetlinkError::request(format!("create host port veth {kernel}/{dp}"), e)
                })?;
            log::info!("host port {kernel}/{dp} created with {q} queue(s)");
        }
        for name in [kernel, dp] {
            let link = link_by_name(h, name)
                .await?
                .ok_or_else(|| NetlinkError::NoSuchLink(name.to_string()))?;
            if link.mtu != Some(mtu) {
                set_link(
                    h,
                    format!("set {name} mtu {mtu}"),
                    LinkUnspec::new_with_index(link.index).mtu(mtu).build(),
                )
                .await?;
            }
            if !link.up {
                set_up(h, link.index, name).await?;
            }
        }
        let k = link_by_name(h, kernel)
            .await?
            .ok_or_else(|| NetlinkError::NoSuchLink(kernel.to_string()))?;
        for gw in gateways {
            add_address(h, k.index, kernel, IpNet::from(*gw)).await?;
        }
        for cidr in pod_cidrs {
            // The configuration has a gateway of every pod CIDR's family.
            if let Some(gw) = gateways
                .iter()
                .find(|g| g.is_ipv4() == cidr.addr().is_ipv4())
            {
                replace_pod_cidr_route(h, k.index, kernel, *cidr, *gw).await?;
            }
        }
        k.mac
            .ok_or_else(|| NetlinkError::NoSuchLink(format!("{kernel} (no MAC address)")))
    }
}
