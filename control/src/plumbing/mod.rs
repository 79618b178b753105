//! Plumbing: the kernel objects of a pod and of the node side, made with
//! rtnetlink (never by shelling out to `ip`).
//!
//! Node-namespace operations use a [`Netlink`] handle opened in ferryd's own
//! namespace. Operations inside a pod namespace run on a dedicated OS thread
//! that `setns`es into it and opens its own netlink socket there
//! ([`netns::in_netns`]), so no other task ever runs in a pod's namespace,
//! and only after the path was checked ([`netns::open`]).
//!
//! - [`netns`]: opening a namespace path safely, and running in it.
//! - `veth`: a veth pod (the pair, its queue count), `tap`: a tap pod,
//!   `pod`: configuring the pod end (address, routes) and looking at it,
//!   `host_port`: the node's side of the dataplane, [`uplink`]: the node
//!   kernel's side of several nodes (uplink facts, peer routes, forwarding,
//!   masquerade), `routes`: how routes
//!   are added.

use std::net::IpAddr;

use ferry_api::table::Attachment;
use ferry_api::MacAddr;
use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::address::AddressHeaderFlags;
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::{Handle, LinkUnspec};
use sha2::{Digest, Sha256};

mod host_port;
pub mod netns;
mod pod;
mod routes;
mod tap;
pub mod uplink;
mod veth;

pub use netns::{in_netns, Forbidden, NetnsError};
pub use pod::PodView;
pub use veth::max_veth_queues;

use crate::ipam::{default_route_of, PodAddress};

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("open netlink socket: {0}")]
    Connect(std::io::Error),
    #[error("{op}: {source}")]
    Request {
        op: String,
        source: rtnetlink::Error,
    },
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("enter network namespace {path}: {source}")]
    Setns { path: String, source: nix::Error },
    #[error("netns worker thread for {path}: {msg}")]
    Thread { path: String, msg: String },
    #[error("interface {0} not found")]
    NoSuchLink(String),
    #[error("{op} channels of {ifname}: {source}")]
    Channels {
        ifname: String,
        op: &'static str,
        source: std::io::Error,
    },
    #[error("create tap {name} in {netns}: {op}: {source}")]
    Tap {
        name: String,
        netns: String,
        op: &'static str,
        source: std::io::Error,
    },
}

impl NetlinkError {
    fn request(op: impl Into<String>, source: rtnetlink::Error) -> Self {
        NetlinkError::Request {
            op: op.into(),
            source,
        }
    }
}

/// The errno a netlink request failed with, if it was the kernel refusing.
pub fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(msg) => Some(-msg.raw_code()),
        _ => None,
    }
}

/// Host end of a pod's veth: `fy` + 11 hex chars of SHA-256(container id,
/// ifname). Deterministic, so DEL finds it without any state.
pub fn host_ifname(container_id: &str, ifname: &str) -> String {
    format!("fy{}", &hash_hex(container_id, ifname)[..11])
}

/// Port name of a tap pod in the dataplane (`ft` + the same hash). No
/// interface of this name exists: the tap itself lives in the pod.
pub fn tap_port_name(container_id: &str, ifname: &str) -> String {
    format!("ft{}", &hash_hex(container_id, ifname)[..11])
}

/// Temporary name of the pod end while it is created in the pod namespace.
pub fn temp_peer_name(container_id: &str, ifname: &str) -> String {
    format!("fyp{}", &hash_hex(container_id, ifname)[..11])
}

fn hash_hex(container_id: &str, ifname: &str) -> String {
    let mut h = Sha256::new();
    h.update(container_id.as_bytes());
    h.update([0u8]);
    h.update(ifname.as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// What a link looks like, from an RTM_NEWLINK answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    pub index: u32,
    pub name: String,
    pub mac: Option<MacAddr>,
    pub mtu: Option<u32>,
    pub tx_queues: Option<u32>,
    pub rx_queues: Option<u32>,
    pub up: bool,
}

impl LinkInfo {
    fn from_message(msg: &LinkMessage) -> LinkInfo {
        let mut info = LinkInfo {
            index: msg.header.index,
            name: String::new(),
            mac: None,
            mtu: None,
            tx_queues: None,
            rx_queues: None,
            up: msg.header.flags.contains(LinkFlags::Up),
        };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => info.name = n.clone(),
                LinkAttribute::Address(a) if a.len() == 6 => {
                    let mut m = [0u8; 6];
                    m.copy_from_slice(a);
                    info.mac = Some(MacAddr(m));
                }
                LinkAttribute::Mtu(m) => info.mtu = Some(*m),
                LinkAttribute::NumTxQueues(q) => info.tx_queues = Some(*q),
                LinkAttribute::NumRxQueues(q) => info.rx_queues = Some(*q),
                _ => {}
            }
        }
        info
    }
}

/// A link by name in the namespace of `handle`; `None` if there is none.
pub async fn link_by_name(handle: &Handle, name: &str) -> Result<Option<LinkInfo>, NetlinkError> {
    let mut stream = handle.link().get().match_name(name.to_string()).execute();
    match stream.try_next().await {
        Ok(Some(msg)) => Ok(Some(LinkInfo::from_message(&msg))),
        Ok(None) => Ok(None),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(NetlinkError::request(format!("get link {name}"), e)),
    }
}

/// Delete a link by name; `false` if it did not exist.
pub async fn delete_link(handle: &Handle, name: &str) -> Result<bool, NetlinkError> {
    let Some(link) = link_by_name(handle, name).await? else {
        return Ok(false);
    };
    match handle.link().del(link.index).execute().await {
        Ok(()) => Ok(true),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(false),
        Err(e) => Err(NetlinkError::request(format!("delete link {name}"), e)),
    }
}

async fn set_link(handle: &Handle, op: String, msg: LinkMessage) -> Result<(), NetlinkError> {
    handle
        .link()
        .set(msg)
        .execute()
        .await
        .map_err(|e| NetlinkError::request(op, e))
}

async fn set_up(handle: &Handle, index: u32, name: &str) -> Result<(), NetlinkError> {
    set_link(
        handle,
        format!("set {name} up"),
        LinkUnspec::new_with_index(index).up().build(),
    )
    .await
}

/// Add an address; an address already present is fine. An IPv6 address
/// is added `nodad` (IFA_F_NODAD): usable at once, never `tentative`; the
/// addresses are ferry's to hand out, so nobody else on the link has them.
async fn add_address(
    handle: &Handle,
    index: u32,
    name: &str,
    addr: IpNet,
) -> Result<(), NetlinkError> {
    let mut req = handle.address().add(index, addr.addr(), addr.prefix_len());
    if addr.addr().is_ipv6() {
        req.message_mut().header.flags |= AddressHeaderFlags::Nodad;
    }
    match req.execute().await {
        Ok(()) => Ok(()),
        Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(()),
        Err(e) => Err(NetlinkError::request(
            format!("add address {addr} to {name}"),
            e,
        )),
    }
}

/// What to build for one pod attachment.
#[derive(Debug, Clone)]
pub struct PodPlumbing {
    pub container_id: String,
    pub ifname: String,
    pub host_ifname: String,
    pub netns: String,
    pub mac: MacAddr,
    /// One per family, each with its gateway.
    pub addresses: Vec<PodAddress>,
    /// Routes for the pod; empty means a default route per family via
    /// that family's gateway.
    pub routes: Vec<PodRoute>,
    /// The link's, both ends of a veth.
    pub mtu: u32,
    /// Carried by every route via a gateway (the path MTU off the node);
    /// `None`: the link's ([`crate::config::PodMtus`]).
    pub route_mtu: Option<u32>,
    /// Queues in use: one per dataplane worker.
    pub queues: u32,
    /// Queues a veth is created with room for ([`max_veth_queues`]), so a
    /// dataplane restarted with more workers gets a queue each.
    pub max_queues: u32,
    pub attachment: Attachment,
}

/// A route in a pod (ADD checked that the pod has an address of its
/// family, and that `gw` is of that family).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodRoute {
    pub dst: IpNet,
    /// `None`: via the pod's gateway of the route's family.
    pub gw: Option<IpAddr>,
}

/// The routes a pod gets and its result reports: `given`, or a default
/// route per family of `addresses` via that family's gateway.
pub fn pod_routes(addresses: &[PodAddress], given: &[PodRoute]) -> Vec<PodRoute> {
    if !given.is_empty() {
        return given.to_vec();
    }
    addresses
        .iter()
        .map(|a| PodRoute {
            dst: default_route_of(a.gateway),
            gw: Some(a.gateway),
        })
        .collect()
}

impl PodPlumbing {
    /// The routes the pod gets, each with the gateway it goes via.
    pub fn effective_routes(&self) -> Vec<(IpNet, IpAddr)> {
        pod_routes(&self.addresses, &self.routes)
            .into_iter()
            .filter_map(|r| {
                let family_gw = || {
                    self.addresses
                        .iter()
                        .find(|a| a.gateway.is_ipv4() == r.dst.addr().is_ipv4())
                        .map(|a| a.gateway)
                };
                Some((r.dst, r.gw.or_else(family_gw)?))
            })
            .collect()
    }

    pub fn has_ipv6(&self) -> bool {
        self.addresses.iter().any(|a| a.address.addr().is_ipv6())
    }
}

/// ferryd's netlink connection in the node namespace.
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
    /// Namespaces no pod path may name (ferryd's, the dataplane's, pid 1's).
    forbidden: Forbidden,
}

impl Netlink {
    /// Connect in the current namespace; the connection task is spawned on
    /// the current tokio runtime. Pod namespace paths naming one of
    /// `forbidden` are refused by every operation.
    pub fn connect(forbidden: Forbidden) -> Result<Netlink, NetlinkError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(NetlinkError::Connect)?;
        tokio::spawn(conn);
        Ok(Netlink { handle, forbidden })
    }

    pub fn forbidden(&self) -> &Forbidden {
        &self.forbidden
    }

    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    pub async fn link(&self, name: &str) -> Result<Option<LinkInfo>, NetlinkError> {
        link_by_name(&self.handle, name).await
    }

    pub async fn delete_link(&self, name: &str) -> Result<bool, NetlinkError> {
        delete_link(&self.handle, name).await
    }

    /// [`delete_link`] on a netlink connection and a thread of its own
    /// ([`netns::on_own_thread`], in ferryd's namespace): deleting a link
    /// waits inside the request for an RCU grace period (~20 ms here), and
    /// the kernel serves one socket's requests one after another. Eight
    /// veths: 190 ms one after another, 42 ms at once (`ip link del`, this
    /// VM); on the shared connection, or from the runtime's two worker
    /// threads, parallel DELs queued behind each other.
    pub async fn delete_link_alone(&self, name: &str) -> Result<bool, NetlinkError> {
        let owned = name.to_string();
        netns::on_own_thread(None, "ferryd's namespace", move |h| async move {
            delete_link(&h, &owned).await
        })
        .await
    }

    /// Create the pod's interface (a veth pair, or a tap made inside the
    /// pod namespace) and configure the pod end there. On failure the
    /// caller undoes with [`Netlink::unplumb`] / [`Netlink::unplumb_tap`].
    /// `ns` is the pod namespace ADD opened and checked ([`netns::open`]):
    /// plumbing works on it, never on a second lookup of the path.
    pub async fn plumb(&self, p: &PodPlumbing, ns: std::fs::File) -> Result<(), NetlinkError> {
        match p.attachment {
            Attachment::Tap => self.plumb_tap(p, ns).await,
            Attachment::Veth => self.plumb_veth(p, ns).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ifnames_are_deterministic_and_fit() {
        let a = host_ifname("abc", "eth0");
        assert_eq!(a, host_ifname("abc", "eth0"));
        assert_eq!(a.len(), 13);
        assert!(a.starts_with("fy"));
        assert!(a[2..].chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, host_ifname("abc", "eth1"));
        assert_ne!(a, host_ifname("abd", "eth0"));
        // The separator keeps ("ab", "ceth0") apart from ("abc", "eth0").
        assert_ne!(host_ifname("ab", "ceth0"), host_ifname("abc", "eth0"));
        let t = temp_peer_name("abc", "eth0");
        assert_eq!(t.len(), 14);
        assert_ne!(t, a);
    }
}
