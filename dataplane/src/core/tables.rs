//! Forwarding tables: immutable snapshots published by one writer (the
//! control thread) and read without locks by the workers.
//!
//! A [`Tables`] value is built in one go from the table-API state
//! ([`Tables::build`]) and never mutated afterwards. [`TableHandle`] holds
//! the current snapshot; the writer replaces it with [`TableHandle::publish`],
//! workers take it once per batch with [`TableHandle::load`] and drop it
//! before the next batch.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use arc_swap::{ArcSwap, Guard};

use crate::core::conntrack::Conntrack;
use crate::core::service::ServiceTable;
use ferry_api::table::{Endpoint, EndpointPolicy, NextHop, NodeSettings, Overlay, Route};
use ferry_api::MacAddr;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use rustc_hash::FxHashMap;

/// Index of a port in the dataplane (pod host veth or host port).
///
/// The I/O layer hands out small dense indices: the port-role table is a
/// `Vec` indexed by `PortId`, so its size is the largest id plus one.
pub type PortId = u32;

/// What the pipeline knows about one port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortRole {
    /// A pod's port; the pod has these addresses (one per family it
    /// was given) and this MAC.
    Pod {
        ip: Option<Ipv4Addr>,
        ip6: Option<Ipv6Addr>,
        mac: MacAddr,
    },
    /// The port to the node kernel.
    Host,
    /// The node's uplink NIC: frames from peer nodes (VXLAN, or routed
    /// in direct mode) and only those (its XDP program passes the rest to
    /// the kernel).
    Uplink,
}

/// How pod traffic crosses the uplink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encap {
    Vxlan { vni: u32, port: u16 },
    Direct,
}

/// The uplink as the pipeline needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UplinkEntry {
    pub port: PortId,
    /// The uplink's own MAC (source of every frame sent on it).
    pub mac: MacAddr,
    /// The node's address on it (outer source; what VXLAN must be sent to).
    pub address: Ipv4Addr,
    pub encap: Encap,
    /// The largest inner IPv4 packet a peer is sent (L3 bytes): the
    /// uplink's MTU less the overlay's overhead, and no more than one
    /// frame of the uplink's sockets holds.
    pub mtu: u32,
}

/// A peer node as a route's next hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerHop {
    /// The peer's address on the uplink (outer destination in VXLAN mode).
    pub node: Ipv4Addr,
    /// The MAC frames for it are sent to on the uplink (the peer's, or its
    /// gateway's); `None` while unresolved.
    pub mac: Option<MacAddr>,
}

/// Where frames for one pod address go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndpointEntry {
    pub port: PortId,
    /// The pod interface's MAC (destination MAC of frames to the pod).
    pub mac: MacAddr,
    /// The pod interface's MTU (L3 bytes), the egress MTU of packets to
    /// it; `None` when ferryd did not say (no check).
    pub mtu: Option<u32>,
}

/// The host port as the pipeline needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostPortEntry {
    pub port: PortId,
    /// MAC of the kernel end of the host veth pair.
    pub kernel_mac: MacAddr,
    /// The host port's MTU (L3 bytes, `NodeSettings::mtu`), the egress MTU
    /// of packets to the node kernel.
    pub mtu: u32,
}

/// A route's next hop, resolved to something the pipeline can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteTarget {
    /// Deliver to this endpoint (as for a pod address).
    Endpoint(EndpointEntry),
    /// Hand to the node kernel through the host port.
    Host,
    /// Drop (`no_route`).
    Blackhole,
    /// `NextHop::Endpoint` naming an endpoint that is unknown or whose port
    /// is not (yet) attached: dropped as `no_route` rather than silently
    /// falling through to a less specific rule.
    Unresolved,
    /// A peer node, through the uplink.
    Node(PeerHop),
}

/// One extra route, for IPv4 (`N = Ipv4Net`) or IPv6 prefixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteEntry<N = Ipv4Net> {
    pub prefix: N,
    pub target: RouteTarget,
}

/// The node-wide part of the tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    pub gateway: Ipv4Addr,
    /// The IPv6 gateway, when the node serves IPv6 pods.
    pub gateway6: Option<Ipv6Addr>,
    pub router_mac: MacAddr,
    pub pod_cidrs: Vec<Ipv4Net>,
    pub pod_cidrs6: Vec<Ipv6Net>,
    /// `None` when ferryd made no host port yet or its port is not attached.
    pub host_port: Option<HostPortEntry>,
    /// `None` on a single node, or while the uplink is not attached.
    pub uplink: Option<UplinkEntry>,
}

impl Default for NodeView {
    fn default() -> Self {
        NodeView {
            gateway: Ipv4Addr::UNSPECIFIED,
            gateway6: None,
            router_mac: MacAddr::ROUTER,
            pod_cidrs: Vec::new(),
            pod_cidrs6: Vec::new(),
            host_port: None,
            uplink: None,
        }
    }
}

/// What the I/O layer knows of the links, for [`Tables::build_with`]: the
/// uplink's MAC and MTU, the largest frame its sockets carry, and the MAC
/// each peer node is reached at.
#[derive(Debug, Clone, Default)]
pub struct Links {
    /// MAC and MTU (L3 bytes) of the uplink; `None` while unknown.
    pub uplink: Option<(MacAddr, u32)>,
    /// The largest L3 packet one uplink frame holds (the AF_XDP chunk's
    /// room less the Ethernet header: uplink sockets take no chains); 0 =
    /// no limit of its own.
    pub uplink_frame_mtu: u32,
    /// Peer node address -> MAC on the uplink (resolved peers only).
    pub neighbours: BTreeMap<Ipv4Addr, MacAddr>,
}

/// One immutable version of the tables.
#[derive(Debug, Default)]
pub struct Tables {
    pub generation: u64,
    node: NodeView,
    /// Keyed by the address as a big-endian `u32`: FxHash of a `u32` is one
    /// multiplication, which is what a per-packet lookup wants.
    endpoints: FxHashMap<u32, EndpointEntry>,
    /// IPv6 pod addresses, keyed as a big-endian `u128`.
    endpoints6: FxHashMap<u128, EndpointEntry>,
    ports: Vec<Option<PortRole>>,
    /// Sorted by prefix length, longest first, so the first match is the
    /// longest-prefix match.
    routes: Vec<RouteEntry>,
    /// The IPv6 routes, in the same order.
    routes6: Vec<RouteEntry<Ipv6Net>>,
    /// The service ports and the connection tracking their flows share;
    /// `None` while there are no services (no lookup at all then).
    services: Option<Services>,
    /// The endpoints' network policies; `None` while no endpoint has one
    /// (no policy stage at all then).
    policy: Option<Policies>,
}

/// What policy enforcement needs: each policed port's policy, the
/// addresses of the node itself (always allowed in), and the connection
/// table (the services' one) where allowed flows are tracked.
#[derive(Debug, Clone)]
pub struct Policies {
    /// By port id.
    by_port: Vec<Option<Arc<EndpointPolicy>>>,
    pub node_addrs: Vec<IpAddr>,
    pub conntrack: Arc<Conntrack>,
}

impl Policies {
    /// `policies` by the port their endpoint holds.
    pub fn new(
        policies: impl IntoIterator<Item = (PortId, Arc<EndpointPolicy>)>,
        node_addrs: Vec<IpAddr>,
        conntrack: Arc<Conntrack>,
    ) -> Policies {
        let mut by_port: Vec<Option<Arc<EndpointPolicy>>> = Vec::new();
        for (port, p) in policies {
            let i = port as usize;
            if by_port.len() <= i {
                by_port.resize(i + 1, None);
            }
            by_port[i] = Some(p);
        }
        Policies {
            by_port,
            node_addrs,
            conntrack,
        }
    }

    /// The policy of the endpoint on `port`, if it has one.
    #[inline]
    pub fn of(&self, port: PortId) -> Option<&EndpointPolicy> {
        self.by_port.get(port as usize)?.as_deref()
    }

    pub fn is_empty(&self) -> bool {
        self.by_port.iter().all(Option::is_none)
    }
}

/// What service translation needs: the service ports (rebuilt only when
/// they change) and the one connection table (kept across generations).
#[derive(Debug, Clone)]
pub struct Services {
    pub table: Arc<ServiceTable>,
    pub conntrack: Arc<Conntrack>,
}

impl Tables {
    /// Build a snapshot from the table-API state.
    ///
    /// `port_of` maps an interface name (an endpoint's `host_ifname`, the
    /// host port's `ifname`) to the port id the I/O layer gave it. Endpoints
    /// whose port is not (yet) known are left out; so is the host port.
    /// When two endpoints claim the same address or the same port, the first
    /// one in `endpoints` wins (ferryd never sends that; the rule only makes
    /// the result deterministic).
    pub fn build(
        generation: u64,
        node: &NodeSettings,
        endpoints: &[Endpoint],
        routes: &[Route],
        port_of: impl Fn(&str) -> Option<PortId>,
    ) -> Tables {
        Tables::build_with(
            generation,
            node,
            endpoints,
            routes,
            port_of,
            &Links::default(),
        )
    }

    /// [`Tables::build`] with what the I/O layer knows of the uplink and
    /// the peers (`links`). The uplink is in the tables only when its port
    /// is attached and its MAC and MTU are known; a route to a peer node
    /// carries the peer's MAC when `links` has it.
    pub fn build_with(
        generation: u64,
        node: &NodeSettings,
        endpoints: &[Endpoint],
        routes: &[Route],
        port_of: impl Fn(&str) -> Option<PortId>,
        links: &Links,
    ) -> Tables {
        let mut ports: Vec<Option<PortRole>> = Vec::new();
        let mut set_role = |port: PortId, role: PortRole| -> bool {
            let idx = port as usize;
            if ports.len() <= idx {
                ports.resize(idx + 1, None);
            }
            if ports[idx].is_some() {
                return false;
            }
            ports[idx] = Some(role);
            true
        };

        let host_port = node.host_port.as_ref().and_then(|hp| {
            let port = port_of(&hp.ifname)?;
            set_role(port, PortRole::Host).then_some(HostPortEntry {
                port,
                kernel_mac: hp.kernel_mac,
                mtu: node.mtu,
            })
        });

        let uplink = node.uplink.as_ref().and_then(|up| {
            let port = port_of(&up.ifname)?;
            let (mac, link_mtu) = links.uplink?;
            let encap = match up.overlay {
                Overlay::Vxlan { vni, port } => Encap::Vxlan { vni, port },
                Overlay::Direct => Encap::Direct,
            };
            let overhead = up.overlay.mtu_overhead();
            let mut mtu = link_mtu;
            if links.uplink_frame_mtu > 0 {
                mtu = mtu.min(links.uplink_frame_mtu);
            }
            set_role(port, PortRole::Uplink).then_some(UplinkEntry {
                port,
                mac,
                address: up.address,
                encap,
                mtu: mtu.saturating_sub(overhead),
            })
        });

        let mut by_ip: FxHashMap<u32, EndpointEntry> = FxHashMap::default();
        let mut by_ip6: FxHashMap<u128, EndpointEntry> = FxHashMap::default();
        let mut by_id: HashMap<&str, EndpointEntry> = HashMap::new();
        for ep in endpoints {
            let Some(port) = port_of(&ep.host_ifname) else {
                continue;
            };
            let ip = ep.ipv4();
            let ip6 = ep.ipv6();
            // An address another endpoint holds already: this endpoint is
            // left out whole (ferryd never sends that).
            let taken = ip.is_some_and(|a| by_ip.contains_key(&u32::from(a)))
                || ip6.is_some_and(|a| by_ip6.contains_key(&u128::from(a)));
            if taken || (ip.is_none() && ip6.is_none()) {
                continue;
            }
            if !set_role(
                port,
                PortRole::Pod {
                    ip,
                    ip6,
                    mac: ep.mac,
                },
            ) {
                continue;
            }
            let entry = EndpointEntry {
                port,
                mac: ep.mac,
                mtu: ep.mtu,
            };
            if let Some(a) = ip {
                by_ip.insert(u32::from(a), entry);
            }
            if let Some(a) = ip6 {
                by_ip6.insert(u128::from(a), entry);
            }
            by_id.entry(ep.id.as_str()).or_insert(entry);
        }

        let target = |hop: &NextHop| match hop {
            NextHop::Endpoint(id) => by_id
                .get(id.as_str())
                .map_or(RouteTarget::Unresolved, |e| RouteTarget::Endpoint(*e)),
            NextHop::Host => RouteTarget::Host,
            NextHop::Blackhole => RouteTarget::Blackhole,
            NextHop::Node(IpAddr::V4(peer)) => RouteTarget::Node(PeerHop {
                node: *peer,
                mac: links.neighbours.get(peer).copied(),
            }),
            // An IPv6 peer address: the overlay is IPv4 so far.
            NextHop::Node(IpAddr::V6(_)) => RouteTarget::Unresolved,
        };
        let mut resolved: Vec<RouteEntry> = Vec::new();
        let mut resolved6: Vec<RouteEntry<Ipv6Net>> = Vec::new();
        for r in routes {
            let target = target(&r.next_hop);
            match r.prefix {
                IpNet::V4(p) => resolved.push(RouteEntry {
                    prefix: p.trunc(),
                    target,
                }),
                IpNet::V6(p) => resolved6.push(RouteEntry {
                    prefix: p.trunc(),
                    target,
                }),
            }
        }
        // Stable sort: among equal prefixes the first one given wins.
        resolved.sort_by_key(|r| std::cmp::Reverse(r.prefix.prefix_len()));
        resolved.dedup_by(|later, earlier| later.prefix == earlier.prefix);
        resolved6.sort_by_key(|r| std::cmp::Reverse(r.prefix.prefix_len()));
        resolved6.dedup_by(|later, earlier| later.prefix == earlier.prefix);

        Tables {
            generation,
            node: NodeView {
                gateway: node.gateway4().unwrap_or(Ipv4Addr::UNSPECIFIED),
                gateway6: node.gateway6(),
                router_mac: node.router_mac,
                pod_cidrs: node.pod_cidrs4().map(|c| c.trunc()).collect(),
                pod_cidrs6: node.pod_cidrs6().map(|c| c.trunc()).collect(),
                host_port,
                uplink,
            },
            endpoints: by_ip,
            endpoints6: by_ip6,
            ports,
            routes: resolved,
            routes6: resolved6,
            services: None,
            policy: None,
        }
    }

    /// These tables with `policy` (ignored when no port has one).
    pub fn with_policy(mut self, policy: Option<Policies>) -> Tables {
        self.policy = policy.filter(|p| !p.is_empty());
        self
    }

    /// The endpoints' policies, if any endpoint has one.
    #[inline]
    pub fn policy(&self) -> Option<&Policies> {
        self.policy.as_ref()
    }

    /// The connection table, if services or policies need one.
    #[inline]
    pub fn conntrack(&self) -> Option<&Conntrack> {
        match (&self.services, &self.policy) {
            (Some(s), _) => Some(&s.conntrack),
            (None, Some(p)) => Some(&p.conntrack),
            (None, None) => None,
        }
    }

    /// These tables with `services` (ignored when it holds none).
    pub fn with_services(mut self, services: Option<Services>) -> Tables {
        self.services = services.filter(|s| !s.table.is_empty());
        self
    }

    /// Whether `ip` is a ClusterIP of a service port.
    #[inline]
    pub fn is_service_ip(&self, ip: std::net::IpAddr) -> bool {
        self.services
            .as_ref()
            .is_some_and(|s| s.table.is_vip(crate::core::service::addr_key(ip)))
    }

    /// The service ports and connection table, if there are services.
    #[inline]
    pub fn services(&self) -> Option<&Services> {
        self.services.as_ref()
    }

    pub fn node(&self) -> &NodeView {
        &self.node
    }

    pub fn gateway(&self) -> Ipv4Addr {
        self.node.gateway
    }

    pub fn router_mac(&self) -> MacAddr {
        self.node.router_mac
    }

    pub fn host_port(&self) -> Option<HostPortEntry> {
        self.node.host_port
    }

    pub fn uplink(&self) -> Option<UplinkEntry> {
        self.node.uplink
    }

    /// The role of `port`, `None` for a port the tables do not know.
    #[inline]
    pub fn port_role(&self, port: PortId) -> Option<PortRole> {
        self.ports.get(port as usize).copied().flatten()
    }

    /// The endpoint owning `ip`.
    #[inline]
    pub fn endpoint(&self, ip: Ipv4Addr) -> Option<EndpointEntry> {
        self.endpoints.get(&u32::from(ip)).copied()
    }

    /// The longest-prefix route matching `ip`.
    #[inline]
    pub fn route(&self, ip: Ipv4Addr) -> Option<RouteTarget> {
        self.routes
            .iter()
            .find(|r| r.prefix.contains(&ip))
            .map(|r| r.target)
    }

    /// Whether `ip` lies inside one of the node's pod CIDRs.
    #[inline]
    pub fn is_pod_cidr(&self, ip: Ipv4Addr) -> bool {
        self.node.pod_cidrs.iter().any(|c| c.contains(&ip))
    }

    /// The IPv6 gateway, if the node serves IPv6.
    pub fn gateway6(&self) -> Option<Ipv6Addr> {
        self.node.gateway6
    }

    /// The endpoint owning IPv6 `ip`.
    #[inline]
    pub fn endpoint6(&self, ip: Ipv6Addr) -> Option<EndpointEntry> {
        self.endpoints6.get(&u128::from(ip)).copied()
    }

    /// The longest-prefix IPv6 route matching `ip`.
    #[inline]
    pub fn route6(&self, ip: Ipv6Addr) -> Option<RouteTarget> {
        self.routes6
            .iter()
            .find(|r| r.prefix.contains(&ip))
            .map(|r| r.target)
    }

    /// Whether `ip` lies inside one of the node's IPv6 pod CIDRs.
    #[inline]
    pub fn is_pod_cidr6(&self, ip: Ipv6Addr) -> bool {
        self.node.pod_cidrs6.iter().any(|c| c.contains(&ip))
    }

    /// Number of endpoints in the snapshot (those with an attached port).
    pub fn endpoint_count(&self) -> usize {
        self.endpoints.len()
    }

    /// The routes, longest prefix first.
    pub fn routes(&self) -> &[RouteEntry] {
        &self.routes
    }

    /// The IPv6 routes, longest prefix first.
    pub fn routes6(&self) -> &[RouteEntry<Ipv6Net>] {
        &self.routes6
    }
}

/// The current tables: one writer publishes, any number of workers load.
///
/// Share it as `Arc<TableHandle>` between the control thread and workers.
///
/// Why this is enough: `ArcSwap` stores a pointer to an `Arc<Tables>`.
/// `publish` swaps the pointer atomically (SeqCst) and drops the handle's
/// own reference to the old value; a reader's `load` either gets the old or
/// the new pointer and holds a reference (a "debt" slot or a full strong
/// count) that keeps that value alive, so a reader never sees a freed table
/// and never sees a half-built one (the value is complete before `Arc::new`
/// publishes it, and the swap has release/acquire semantics). The old value
/// is dropped when the last reader lets go of its guard — reference counting
/// acting as quiescent-state reclamation. Workers take one guard per batch
/// and never keep it across batches, so an old table lives at most one batch
/// after a publish.
#[derive(Debug)]
pub struct TableHandle {
    current: ArcSwap<Tables>,
}

impl TableHandle {
    pub fn new(initial: Tables) -> Self {
        TableHandle {
            current: ArcSwap::from_pointee(initial),
        }
    }

    /// Make `tables` the snapshot every later `load` returns.
    pub fn publish(&self, tables: Tables) {
        self.current.store(Arc::new(tables));
    }

    /// The current snapshot, for one batch (cheap, no reference-count
    /// traffic in the common case).
    #[inline]
    pub fn load(&self) -> Guard<Arc<Tables>> {
        self.current.load()
    }

    /// The current snapshot as an owned `Arc` (for holding longer, e.g. a
    /// table dump).
    pub fn load_full(&self) -> Arc<Tables> {
        self.current.load_full()
    }

    /// Generation of the current snapshot.
    pub fn generation(&self) -> u64 {
        self.current.load().generation
    }
}

impl Default for TableHandle {
    fn default() -> Self {
        TableHandle::new(Tables::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_api::table::HostPort;

    fn node() -> NodeSettings {
        NodeSettings {
            gateways: vec![Ipv4Addr::new(10, 88, 0, 1).into()],
            router_mac: MacAddr::ROUTER,
            pod_cidrs: vec!["10.88.0.0/24".parse().unwrap()],
            host_port: Some(HostPort {
                ifname: "ferry0dp".into(),
                kernel_ifname: "ferry0".into(),
                kernel_mac: MacAddr([2, 0, 0, 0, 0, 1]),
            }),
            mtu: 1500,
            uplink: None,
        }
    }

    fn ep(id: &str, ifname: &str, ip: [u8; 4]) -> Endpoint {
        let ip = Ipv4Addr::from(ip);
        Endpoint::veth(id, ifname, ip)
    }

    fn ports(name: &str) -> Option<PortId> {
        match name {
            "ferry0dp" => Some(0),
            "fya" => Some(1),
            "fyb" => Some(2),
            "fydup" => Some(3),
            _ => None,
        }
    }

    #[test]
    fn build_resolves_ports_endpoints_and_routes() {
        let b = Endpoint {
            mtu: Some(1400),
            ..ep("b/eth0", "fyb", [10, 88, 0, 3])
        };
        let eps = [
            ep("a/eth0", "fya", [10, 88, 0, 2]),
            b,
            ep("c/eth0", "fy-not-attached", [10, 88, 0, 4]),
            ep("dup/eth0", "fydup", [10, 88, 0, 2]),
        ];
        let routes = [
            Route {
                prefix: "192.168.0.0/16".parse().unwrap(),
                next_hop: NextHop::Host,
            },
            Route {
                prefix: "192.168.5.0/24".parse().unwrap(),
                next_hop: NextHop::Blackhole,
            },
            Route {
                prefix: "172.16.0.0/12".parse().unwrap(),
                next_hop: NextHop::Endpoint("b/eth0".into()),
            },
            Route {
                prefix: "172.31.0.0/16".parse().unwrap(),
                next_hop: NextHop::Endpoint("c/eth0".into()),
            },
        ];
        let t = Tables::build(7, &node(), &eps, &routes, ports);
        assert_eq!(t.generation, 7);
        assert_eq!(t.port_role(0), Some(PortRole::Host));
        assert_eq!(
            t.port_role(1),
            Some(PortRole::Pod {
                ip: Some(Ipv4Addr::new(10, 88, 0, 2)),
                ip6: None,
                mac: eps[0].mac
            })
        );
        assert_eq!(
            t.port_role(3),
            None,
            "duplicate address must not get a port role"
        );
        assert_eq!(t.port_role(99), None);
        assert_eq!(t.endpoint_count(), 2);
        assert_eq!(
            t.endpoint(Ipv4Addr::new(10, 88, 0, 3)),
            Some(EndpointEntry {
                port: 2,
                mac: eps[1].mac,
                mtu: Some(1400),
            })
        );
        assert_eq!(t.endpoint(Ipv4Addr::new(10, 88, 0, 2)).unwrap().mtu, None);
        assert_eq!(t.endpoint(Ipv4Addr::new(10, 88, 0, 4)), None);
        assert_eq!(
            t.host_port(),
            Some(HostPortEntry {
                port: 0,
                kernel_mac: MacAddr([2, 0, 0, 0, 0, 1]),
                mtu: 1500,
            })
        );
        assert_eq!(
            t.route(Ipv4Addr::new(192, 168, 1, 1)),
            Some(RouteTarget::Host)
        );
        assert_eq!(
            t.route(Ipv4Addr::new(192, 168, 5, 1)),
            Some(RouteTarget::Blackhole)
        );
        assert_eq!(
            t.route(Ipv4Addr::new(172, 20, 0, 1)),
            Some(RouteTarget::Endpoint(EndpointEntry {
                port: 2,
                mac: eps[1].mac,
                mtu: Some(1400),
            }))
        );
        assert_eq!(
            t.route(Ipv4Addr::new(172, 31, 0, 1)),
            Some(RouteTarget::Unresolved)
        );
        assert_eq!(t.route(Ipv4Addr::new(8, 8, 8, 8)), None);
        assert!(t.is_pod_cidr(Ipv4Addr::new(10, 88, 0, 200)));
        assert!(!t.is_pod_cidr(Ipv4Addr::new(10, 89, 0, 1)));
    }

    #[test]
    fn missing_host_port_is_absent() {
        let t = Tables::build(1, &node(), &[], &[], |_| None);
        assert_eq!(t.host_port(), None);
        assert_eq!(t.port_role(0), None);
        let mut n = node();
        n.host_port = None;
        let t = Tables::build(1, &n, &[], &[], ports);
        assert_eq!(t.host_port(), None);
    }

    #[test]
    fn handle_publishes_new_generations_to_readers() {
        let h = Arc::new(TableHandle::default());
        assert_eq!(h.generation(), 0);
        let reader = {
            let h = Arc::clone(&h);
            std::thread::spawn(move || {
                let mut last = 0;
                for _ in 0..1_000_000 {
                    let g = h.load().generation;
                    assert!(g >= last, "generations must not go backwards");
                    last = g;
                    if g == 100 {
                        break;
                    }
                }
                last
            })
        };
        let old = h.load_full();
        for g in 1..=100 {
            h.publish(Tables::build(g, &node(), &[], &[], ports));
        }
        // A reader holding an old snapshot keeps it intact.
        assert_eq!(old.generation, 0);
        assert_eq!(h.generation(), 100);
        let seen = reader.join().expect("reader thread");
        assert!(seen <= 100);
    }
}
