//! The node kernel's side of several nodes: what the uplink is (its
//! addresses and MTU, asked once at start), a route to each peer's pod CIDR
//! through the host port, IPv4 forwarding, and the masquerade of pod
//! traffic leaving the cluster.
//!
//! Why through the host port: the dataplane sends pod traffic for a peer
//! straight out of the uplink (VXLAN or direct), but the node's own flows
//! to a peer's pods (kubelet, `ping` from the node) go by the kernel, which
//! hands them to the dataplane on `ferry0` like traffic to its own pods.
//!
//! The routes out of the host port's kernel end are all ferry's (ferryd made
//! the link): those to a pod CIDR no longer configured are removed, so a
//! peer taken out of the file leaves nothing behind.
//!
//! Masquerade is the node kernel's (nftables): the dataplane hands pod
//! traffic to destinations outside the cluster to the kernel through the
//! host port, as it always did, and the kernel routes it out and rewrites
//! its source. The ruleset is a pure function ([`masquerade_ruleset`]) and
//! is loaded in one `nft -f -` transaction ([`apply_nft`]).

use std::io::Write as _;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferry_api::MacAddr;
use futures::TryStreamExt;
use ipnet::Ipv4Net;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
};
use netlink_packet_route::AddressFamily;
use rtnetlink::RouteMessageBuilder;

use super::routes::replace_pod_cidr_route;
use super::{errno, link_by_name, Netlink, NetlinkError};
use crate::config::UplinkFacts;

/// nftables' name for ferry's table (family `ip`).
pub const NFT_TABLE: &str = "ferry";
/// Longest wait for `nft`.
pub const NFT_TIMEOUT: Duration = Duration::from_secs(10);
/// The node namespace's IPv4 forwarding switch (per network namespace:
/// `/proc/sys/net` is the opener's namespace).
pub const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("run `nft -f -` (is nftables installed?): {0}")]
    Spawn(std::io::Error),
    #[error("write the ruleset to nft: {0}")]
    Write(std::io::Error),
    #[error("wait for nft: {0}")]
    Wait(std::io::Error),
    #[error("nft did not finish within {0:?}; killed")]
    Timeout(Duration),
    #[error("nft refused the ruleset ({status}): {stderr}")]
    Refused { status: String, stderr: String },
}

/// The ruleset that makes the kernel masquerade pod traffic leaving the
/// cluster: from any pod CIDR of `cluster` to an address in none of them.
/// One transaction: the table is declared (so the delete finds one on the
/// first run), deleted, and made anew, so a reload never leaves two
/// generations of rules or a moment without any.
pub fn masquerade_ruleset(cluster: &[Ipv4Net]) -> String {
    let elements: Vec<String> = cluster.iter().map(ToString::to_string).collect();
    format!(
        "table ip {NFT_TABLE}\n\
         delete table ip {NFT_TABLE}\n\
         table ip {NFT_TABLE} {{\n\
         \tset cluster {{\n\
         \t\ttype ipv4_addr\n\
         \t\tflags interval\n\
         \t\telements = {{ {} }}\n\
         \t}}\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tip saddr @cluster ip daddr != @cluster masquerade\n\
         \t}}\n\
         }}\n",
        elements.join(", ")
    )
}

/// The transaction that removes ferry's table, there or not.
pub fn remove_ruleset() -> String {
    format!("table ip {NFT_TABLE}\ndelete table ip {NFT_TABLE}\n")
}

/// Load `ruleset` with `nft -f -` in ferryd's network namespace (blocking:
/// call it off the async workers).
pub fn apply_nft(ruleset: &str) -> Result<(), NftError> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(NftError::Spawn)?;
    let written = match child.stdin.take() {
        Some(mut stdin) => stdin.write_all(ruleset.as_bytes()),
        None => Ok(()),
    };
    // stdin is closed here, so nft sees the end of the ruleset.
    let deadline = Instant::now() + NFT_TIMEOUT;
    let status = loop {
        match child.try_wait().map_err(NftError::Wait)? {
            Some(s) => break s,
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(NftError::Timeout(NFT_TIMEOUT));
            }
            None => std::thread::sleep(Duration::from_millis(10)),
        }
    };
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read as _;
        let _ = e.read_to_string(&mut stderr);
    }
    if !status.success() {
        return Err(NftError::Refused {
            status: status.to_string(),
            stderr: stderr.trim().to_string(),
        });
    }
    written.map_err(NftError::Write)
}

/// Turn IPv4 forwarding on in ferryd's namespace; `true` if it was off.
pub fn enable_ip_forward() -> std::io::Result<bool> {
    let now = std::fs::read_to_string(IP_FORWARD)?;
    if now.trim() == "1" {
        return Ok(false);
    }
    std::fs::write(IP_FORWARD, "1\n")?;
    Ok(true)
}

/// One route out of the host port's kernel end, as the kernel lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelRoute {
    pub dst: Ipv4Net,
    pub protocol: RouteProtocol,
    pub scope: RouteScope,
    pub pref_source: Option<Ipv4Addr>,
    pub message: RouteMessage,
}

/// Of the routes out of the host port's kernel end, those ferry made
/// (scope link, source the gateway, not the kernel's own) whose
/// destination is no longer one of `wanted`.
pub fn unwanted_routes<'a>(
    routes: &'a [KernelRoute],
    gateway: Ipv4Addr,
    wanted: &[Ipv4Net],
) -> Vec<&'a KernelRoute> {
    routes
        .iter()
        .filter(|r| {
            r.protocol != RouteProtocol::Kernel
                && r.scope == RouteScope::Link
                && r.pref_source == Some(gateway)
                && !wanted.contains(&r.dst)
        })
        .collect()
}

fn kernel_route(msg: RouteMessage) -> Option<(u32, KernelRoute)> {
    if msg.header.address_family != AddressFamily::Inet
        || msg.header.table != RouteHeader::RT_TABLE_MAIN
    {
        return None;
    }
    let (mut dst, mut oif, mut src) = (Ipv4Addr::UNSPECIFIED, None, None);
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Destination(RouteAddress::Inet(a)) => dst = *a,
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::PrefSource(RouteAddress::Inet(a)) => src = Some(*a),
            _ => {}
        }
    }
    let dst = Ipv4Net::new(dst, msg.header.destination_prefix_length).ok()?;
    Some((
        oif?,
        KernelRoute {
            dst,
            protocol: msg.header.protocol,
            scope: msg.header.scope,
            pref_source: src,
            message: msg,
        },
    ))
}

impl Netlink {
    /// The uplink's MTU and IPv4 addresses; `None` if there is no such
    /// link in ferryd's namespace.
    /// The MAC of `ifname`, if the link is there and has one.
    pub async fn link_mac(&self, ifname: &str) -> Result<Option<MacAddr>, NetlinkError> {
        Ok(link_by_name(&self.handle, ifname)
            .await?
            .and_then(|l| l.mac))
    }

    pub async fn uplink_facts(&self, ifname: &str) -> Result<Option<UplinkFacts>, NetlinkError> {
        let Some(link) = link_by_name(&self.handle, ifname).await? else {
            return Ok(None);
        };
        let mut stream = self
            .handle
            .address()
            .get()
            .set_link_index_filter(link.index)
            .execute();
        let mut addresses = Vec::new();
        while let Some(msg) = stream
            .try_next()
            .await
            .map_err(|e| NetlinkError::request(format!("list addresses of {ifname}"), e))?
        {
            if msg.header.family != AddressFamily::Inet || msg.header.index != link.index {
                continue;
            }
            // IFA_LOCAL is the interface's own address (IFA_ADDRESS is the
            // peer's on a point-to-point link).
            let local = msg.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(std::net::IpAddr::V4(v)) => Some(*v),
                _ => None,
            });
            let addr = local.or_else(|| {
                msg.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(std::net::IpAddr::V4(v)) => Some(*v),
                    _ => None,
                })
            });
            if let Some(net) = addr.and_then(|a| Ipv4Net::new(a, msg.header.prefix_len).ok()) {
                addresses.push(net);
            }
        }
        Ok(Some(UplinkFacts {
            mtu: link.mtu.unwrap_or(1500),
            addresses,
        }))
    }

    /// Routes to the peers' IPv6 pod CIDRs `dev kernel src gateway`
    /// (replaced if there). Routes to IPv6 CIDRs no longer a peer's are not
    /// removed yet (they stay until the host port is remade).
    pub async fn ensure_peer_routes6(
        &self,
        kernel: &str,
        gateway: std::net::Ipv6Addr,
        peers: &[ipnet::Ipv6Net],
    ) -> Result<(), NetlinkError> {
        let nets: Vec<ipnet::IpNet> = peers.iter().map(|c| (*c).into()).collect();
        self.replace_routes(kernel, gateway.into(), &nets).await?;
        Ok(())
    }

    /// Routes to `cidrs` `dev kernel src gateway`, replaced if there; the
    /// kernel end's index.
    async fn replace_routes(
        &self,
        kernel: &str,
        gateway: std::net::IpAddr,
        cidrs: &[ipnet::IpNet],
    ) -> Result<u32, NetlinkError> {
        let h = &self.handle;
        let k = link_by_name(h, kernel)
            .await?
            .ok_or_else(|| NetlinkError::NoSuchLink(kernel.to_string()))?;
        for cidr in cidrs {
            replace_pod_cidr_route(h, k.index, kernel, *cidr, gateway).await?;
        }
        Ok(k.index)
    }

    /// Routes to the peers' pod CIDRs `dev kernel src gateway` (replaced if
    /// there), and ferry's routes out of `kernel` to any CIDR in neither
    /// `pod_cidrs` nor `peers` removed.
    pub async fn ensure_peer_routes(
        &self,
        kernel: &str,
        gateway: Ipv4Addr,
        pod_cidrs: &[Ipv4Net],
        peers: &[Ipv4Net],
    ) -> Result<(), NetlinkError> {
        let h = &self.handle;
        let nets: Vec<ipnet::IpNet> = peers.iter().map(|c| (*c).into()).collect();
        let index = self.replace_routes(kernel, gateway.into(), &nets).await?;
        let mut stream = h
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute();
        let mut ours = Vec::new();
        while let Some(msg) = stream
            .try_next()
            .await
            .map_err(|e| NetlinkError::request("list IPv4 routes", e))?
        {
            if let Some((oif, r)) = kernel_route(msg) {
                if oif == index {
                    ours.push(r);
                }
            }
        }
        let wanted: Vec<Ipv4Net> = pod_cidrs.iter().chain(peers).copied().collect();
        for r in unwanted_routes(&ours, gateway, &wanted) {
            match h.route().del(r.message.clone()).execute().await {
                Ok(()) => log::info!("removed route {} dev {kernel}: no longer a peer's", r.dst),
                Err(e) if errno(&e) == Some(libc::ESRCH) => {}
                Err(e) => {
                    return Err(NetlinkError::request(
                        format!("delete route {} dev {kernel}", r.dst),
                        e,
                    ))
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn ruleset_masquerades_what_leaves_the_cluster_in_one_transaction() {
        let text = masquerade_ruleset(&[net("10.70.1.0/24"), net("10.70.2.0/24")]);
        assert_eq!(
            text,
            "table ip ferry\n\
             delete table ip ferry\n\
             table ip ferry {\n\
             \tset cluster {\n\
             \t\ttype ipv4_addr\n\
             \t\tflags interval\n\
             \t\telements = { 10.70.1.0/24, 10.70.2.0/24 }\n\
             \t}\n\
             \tchain postrouting {\n\
             \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
             \t\tip saddr @cluster ip daddr != @cluster masquerade\n\
             \t}\n\
             }\n"
        );
        assert_eq!(remove_ruleset(), "table ip ferry\ndelete table ip ferry\n");
    }

    fn route(
        dst: &str,
        protocol: RouteProtocol,
        scope: RouteScope,
        src: Option<&str>,
    ) -> KernelRoute {
        KernelRoute {
            dst: net(dst),
            protocol,
            scope,
            pref_source: src.map(|s| s.parse().unwrap()),
            message: RouteMessage::default(),
        }
    }

    #[test]
    fn only_ferrys_routes_that_are_no_longer_wanted_go() {
        let gw = "10.70.1.1";
        let routes = [
            route(
                "10.70.1.0/24",
                RouteProtocol::Boot,
                RouteScope::Link,
                Some(gw),
            ),
            route(
                "10.70.2.0/24",
                RouteProtocol::Boot,
                RouteScope::Link,
                Some(gw),
            ),
            // A peer taken out of the configuration.
            route(
                "10.70.9.0/24",
                RouteProtocol::Static,
                RouteScope::Link,
                Some(gw),
            ),
            // Not ferry's making: the kernel's, another source, a gateway route.
            route(
                "10.70.8.0/24",
                RouteProtocol::Kernel,
                RouteScope::Link,
                Some(gw),
            ),
            route(
                "10.70.7.0/24",
                RouteProtocol::Boot,
                RouteScope::Link,
                Some("10.0.0.1"),
            ),
            route(
                "10.70.6.0/24",
                RouteProtocol::Boot,
                RouteScope::Universe,
                Some(gw),
            ),
        ];
        let wanted = [net("10.70.1.0/24"), net("10.70.2.0/24")];
        let gone: Vec<Ipv4Net> = unwanted_routes(&routes, gw.parse().unwrap(), &wanted)
            .iter()
            .map(|r| r.dst)
            .collect();
        assert_eq!(gone, [net("10.70.9.0/24")]);
    }
}
