//! The table-update API: ferryd (client) -> ferry-dataplane (server).
//!
//! Transport: a Unix stream socket, newline-delimited JSON ([`crate::wire`]),
//! strictly request/response. The first message on a connection is
//! [`Request::Hello`]; the dataplane refuses any other `api_version`.
//! ferryd then sends [`Request::Sync`] with its whole state (the dataplane
//! replaces its tables with it, creating and removing ports to match), then
//! incremental updates. Every applied update bumps the table generation,
//! which the dataplane reports back so a caller knows when its change is
//! visible to the workers.
//!
//! Ports: the dataplane owns one port per endpoint (the host end of the
//! pod's veth, `host_ifname`, or the pod's tap, opened inside the pod
//! namespace) plus the host port through which it reaches
//! the node kernel (`NodeSettings::host_port`).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Serialize};

use crate::MacAddr;

/// Bumped on any incompatible change of these messages. 2: addresses are
/// family-generic (`ips`, `gateways`, `IpNet` prefixes and pod CIDRs), so
/// IPv6 and tunnels arrive without another break. 3: services
/// (`SyncServices`, `UpsertService`, `RemoveService`). 4: network policy
/// (`SyncPolicies`, `UpsertPolicy`, `RemovePolicy`).
pub const API_VERSION: u32 = 4;

/// Node-wide settings of the router the dataplane plays for the pods.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct NodeSettings {
    /// The pods' default gateways, one per family served; the dataplane
    /// answers ARP and ICMP echo for the IPv4 one.
    pub gateways: Vec<IpAddr>,
    /// The MAC the dataplane uses as source on every frame it sends and in
    /// every ARP reply.
    pub router_mac: MacAddr,
    /// The node's pod CIDRs. A destination inside one of them without an
    /// endpoint is dropped (`no_endpoint`); outside all of them it goes to
    /// the node kernel through the host port.
    pub pod_cidrs: Vec<IpNet>,
    /// Where the node kernel is reached; `None` until ferryd made it.
    pub host_port: Option<HostPort>,
    /// MTU of pod interfaces (L3 bytes) unless a pod's network config
    /// names its own ([`Endpoint::mtu`]), and of the host port: packets
    /// routed to the node kernel larger than this are answered with ICMP
    /// "fragmentation needed" (DF set) or dropped.
    pub mtu: u32,
    /// The node's NIC towards the other nodes and how pod traffic crosses
    /// it; `None`: a single node (nothing leaves but through the host
    /// port). Only ferryd names the uplink, and only here: an endpoint
    /// naming it is refused like any interface that is not ferry's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uplink: Option<Uplink>,
}

/// The uplink: the node's own NIC, shared with the node kernel. The
/// dataplane binds AF_XDP sockets to its queues and attaches a classifying
/// XDP program that redirects only ferry's traffic (VXLAN to `address` and
/// the overlay port, or in direct mode packets to the node's pod CIDRs);
/// everything else passes to the kernel.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Uplink {
    pub ifname: String,
    /// The node's address on the uplink: the outer source of VXLAN packets
    /// and the destination the classifier matches.
    pub address: Ipv4Addr,
    pub overlay: Overlay,
    /// When the uplink's channel count is not the worker count, set it to
    /// the worker count (`ETHTOOL_SCHANNELS`, as `ethtool -L combined`);
    /// `false`: use it as it is (see ARCHITECTURE.md "Uplink").
    #[serde(default)]
    pub set_channels: bool,
}

/// How pod traffic reaches a peer node.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum Overlay {
    /// Encapsulated in VXLAN (RFC 7348) to the peer's address.
    Vxlan { vni: u32, port: u16 },
    /// Routed as it is to the peer's MAC on the uplink (host-gw): peers
    /// must be on the uplink's link.
    Direct,
}

impl Overlay {
    /// What the overlay takes of the uplink MTU: VXLAN puts an outer IPv4
    /// (20), UDP (8) and VXLAN (8) header and the inner Ethernet header
    /// (14) around the pod's IP packet, 50 bytes (Flannel's and Cilium's
    /// figure); direct routing nothing.
    pub fn mtu_overhead(&self) -> u32 {
        match self {
            Overlay::Vxlan { .. } => 50,
            Overlay::Direct => 0,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Overlay::Vxlan { .. } => "vxlan",
            Overlay::Direct => "direct",
        }
    }
}

/// IANA's VXLAN port (Flannel's default is Linux's legacy 8472).
pub const VXLAN_PORT: u16 = 4789;

/// The veth pair that joins the dataplane to the node kernel: the dataplane
/// drives `ifname`; the kernel end (`kernel_ifname`, holding the gateway
/// address and the route to the pod CIDRs) has MAC `kernel_mac`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    pub ifname: String,
    pub kernel_ifname: String,
    pub kernel_mac: MacAddr,
}

/// How a pod is attached.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Attachment {
    /// A veth pair; the dataplane drives the host end over AF_XDP.
    #[default]
    Veth,
    /// A persistent multi-queue tap with virtio-net headers (GSO and
    /// checksum offload). The netdev lives in the pod namespace under the
    /// pod's ifname; the dataplane opens its queues there (see
    /// [`Endpoint::netns`]).
    Tap,
}

impl Attachment {
    /// The name used in configuration (`"veth"`, `"tap"`).
    pub fn name(self) -> &'static str {
        match self {
            Attachment::Veth => "veth",
            Attachment::Tap => "tap",
        }
    }

    /// Parse a configuration value; `None` for anything but the names.
    pub fn from_name(name: &str) -> Option<Attachment> {
        match name {
            "veth" => Some(Attachment::Veth),
            "tap" => Some(Attachment::Tap),
            _ => None,
        }
    }
}

/// One pod interface.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Stable key: `<container id>/<ifname inside the pod>`.
    pub id: String,
    /// The host end of the pod's link, in the node namespace.
    pub host_ifname: String,
    /// The pod's addresses on this interface (one per family).
    pub ips: Vec<IpAddr>,
    /// MAC of the pod's own interface (destination of frames to the pod).
    pub mac: MacAddr,
    #[serde(default)]
    pub attachment: Attachment,
    /// The pod's network namespace (a path the dataplane can open) and the
    /// interface name inside it. Tap endpoints need both: the dataplane
    /// attaches to the tap's queues by name inside that namespace, on first
    /// open and again after a restart. Set for tap endpoints only (empty,
    /// and left out of the JSON, for veth endpoints).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub netns: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pod_ifname: String,
    /// Identity of `netns` when ferryd opened it at ADD. Paths such as
    /// `/proc/<pid>/ns/net` are reused by other namespaces; whoever opens
    /// `netns` again checks that it is still this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns_id: Option<NetnsId>,
    /// MTU of the pod's interface (L3 bytes): packets routed to the pod
    /// larger than this are answered with ICMP "fragmentation needed" (DF
    /// set) or dropped. `None` (a ferryd that predates the field): no
    /// check, frames the port cannot carry are lost at egress as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
}

/// The largest pod MTU (L3 bytes) each attachment can carry, as the
/// dataplane's frame buffers and XDP program allow. ferryd refuses an ADD
/// whose MTU is above the limit of its attachment.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct MtuLimits {
    pub veth: u32,
    pub tap: u32,
    /// The largest L3 packet one frame of the uplink carries (its sockets
    /// take no chains, unlike veth ports): a pod's MTU for traffic that
    /// leaves the node is no larger. `None`: no limit of its own (a
    /// dataplane that does not say; an optional field, API unchanged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uplink: Option<u32>,
}

impl MtuLimits {
    pub fn of(&self, attachment: Attachment) -> u32 {
        match attachment {
            Attachment::Veth => self.veth,
            Attachment::Tap => self.tap,
        }
    }
}

impl NodeSettings {
    /// The IPv4 gateway, if one is served.
    pub fn gateway4(&self) -> Option<Ipv4Addr> {
        self.gateways.iter().find_map(|g| match g {
            IpAddr::V4(a) => Some(*a),
            IpAddr::V6(_) => None,
        })
    }

    /// The IPv6 gateway, if one is served.
    pub fn gateway6(&self) -> Option<std::net::Ipv6Addr> {
        self.gateways.iter().find_map(|g| match g {
            IpAddr::V6(a) => Some(*a),
            IpAddr::V4(_) => None,
        })
    }

    /// The IPv6 pod CIDRs.
    pub fn pod_cidrs6(&self) -> impl Iterator<Item = ipnet::Ipv6Net> + '_ {
        self.pod_cidrs.iter().filter_map(|c| match c {
            IpNet::V6(n) => Some(*n),
            IpNet::V4(_) => None,
        })
    }

    /// The IPv4 pod CIDRs.
    pub fn pod_cidrs4(&self) -> impl Iterator<Item = Ipv4Net> + '_ {
        self.pod_cidrs.iter().filter_map(|c| match c {
            IpNet::V4(n) => Some(*n),
            IpNet::V6(_) => None,
        })
    }
}

impl Endpoint {
    /// A veth pod's endpoint `id` on the host end `host_ifname`, at `ip`
    /// with the MAC ferry gives that address, no MTU of its own.
    pub fn veth(id: impl Into<String>, host_ifname: impl Into<String>, ip: Ipv4Addr) -> Endpoint {
        Endpoint {
            id: id.into(),
            host_ifname: host_ifname.into(),
            ips: vec![ip.into()],
            mac: MacAddr::for_pod(ip),
            attachment: Attachment::Veth,
            netns: String::new(),
            pod_ifname: String::new(),
            netns_id: None,
            mtu: None,
        }
    }

    /// The endpoint's IPv6 address, if it has one.
    pub fn ipv6(&self) -> Option<std::net::Ipv6Addr> {
        self.ips.iter().find_map(|a| match a {
            IpAddr::V6(a) => Some(*a),
            IpAddr::V4(_) => None,
        })
    }

    /// The endpoint's IPv4 address, if it has one.
    pub fn ipv4(&self) -> Option<Ipv4Addr> {
        self.ips.iter().find_map(|a| match a {
            IpAddr::V4(a) => Some(*a),
            IpAddr::V6(_) => None,
        })
    }
}

/// A network namespace's identity: device and inode of its nsfs file, as
/// `stat` shows them. Two paths name the same namespace exactly when these
/// agree; a namespace keeps its inode for its whole life.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NetnsId {
    pub dev: u64,
    pub ino: u64,
}

impl std::fmt::Display for NetnsId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "net:[{}] (dev {})", self.ino, self.dev)
    }
}

/// An extra route: traffic for `prefix` goes to `next_hop`.
/// (Pod /32s are implied by the endpoints and need no route.)
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub prefix: IpNet,
    pub next_hop: NextHop,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum NextHop {
    /// Deliver to the endpoint with this id.
    Endpoint(String),
    /// Hand to the node kernel through the host port.
    Host,
    /// Drop (counted as `no_route`).
    Blackhole,
    /// A peer node, by its uplink address: encapsulated to it (VXLAN) or
    /// sent to its MAC on the uplink (direct), as `Uplink::overlay` says.
    Node(IpAddr),
}

/// The transport protocol of a service port.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "UPPERCASE")]
pub enum L4Proto {
    Tcp,
    Udp,
}

impl L4Proto {
    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            L4Proto::Tcp => 6,
            L4Proto::Udp => 17,
        }
    }

    /// Kubernetes' name (`TCP`, `UDP`).
    pub fn name(self) -> &'static str {
        match self {
            L4Proto::Tcp => "TCP",
            L4Proto::Udp => "UDP",
        }
    }
}

/// One ready endpoint of a service port: where its traffic is sent.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Backend {
    pub ip: IpAddr,
    pub port: u16,
}

/// One port of a Kubernetes Service as the dataplane serves it: traffic
/// from a pod or the node to `vip:port` over `protocol` goes to one of
/// `backends` (its destination translated, the replies translated back),
/// chosen by Maglev consistent hashing of the flow with `seed`, the same
/// on every node of a cluster. No backends: refused (TCP reset, or ICMP
/// port unreachable for UDP), as kube-proxy does.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// Stable key: `<namespace>/<name>:<port>/<protocol>`.
    pub id: String,
    /// The ClusterIP.
    pub vip: IpAddr,
    pub port: u16,
    pub protocol: L4Proto,
    /// Ready endpoints, in any order (the choice depends on the set only).
    pub backends: Vec<Backend>,
    /// `sessionAffinity: ClientIP`: a client's flows go to the backend its
    /// last flow went to, for this many seconds of quiet; `None`: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity_timeout_s: Option<u32>,
    /// The cluster-wide Maglev seed.
    #[serde(default)]
    pub seed: u64,
    /// `type: NodePort` (or LoadBalancer): the port on the node's uplink
    /// address that reaches the service too (IPv4 ClusterIP ports only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_port: Option<u16>,
    /// `externalTrafficPolicy: Local`: traffic to the node port goes only
    /// to these backends (the ready ones on this node) and keeps its
    /// client's source address; with none it is dropped
    /// (`no_local_endpoint`), as kube-proxy and Cilium drop it. `None`:
    /// `Cluster` (every backend, the source translated to the node's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_local: Option<Vec<Backend>>,
}

/// The NetworkPolicy of one local endpoint, compiled by ferryd from the
/// policies that select its pod (Kubernetes semantics: a direction no
/// selecting policy names allows everything; a direction some policy
/// names allows only what one of their rules allows). An endpoint without
/// an `EndpointPolicy` allows everything both ways. Replies of an allowed
/// flow pass whatever the other side's policy says (the dataplane tracks
/// allowed flows); traffic from the node itself (its gateways and
/// uplink address) is always allowed in.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct EndpointPolicy {
    /// The endpoint's id ([`Endpoint::id`]). A policy may arrive before
    /// its endpoint; it applies from when the endpoint exists.
    pub endpoint: String,
    /// `None`: ingress not isolated. `Some(rules)`: only what a rule
    /// allows comes in (no rules: nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<Vec<PolicyRule>>,
    /// The same for what the pod sends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<Vec<PolicyRule>>,
}

/// One rule: traffic from (ingress) or to (egress) one of `peers`, to one
/// of `ports`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct PolicyRule {
    /// `None`: any address. `Some`: only these (pods selected by the
    /// rule's selectors as host prefixes, `ipBlock`s with their
    /// exceptions); empty matches nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peers: Option<Vec<PolicyPeer>>,
    /// Empty: every protocol and port. Otherwise the destination port (of
    /// the policed pod for ingress, of the peer for egress) must be in
    /// one of these ranges.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortRange>,
}

/// A prefix of allowed addresses, less its exceptions.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct PolicyPeer {
    pub cidr: IpNet,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub except: Vec<IpNet>,
}

impl PolicyPeer {
    /// Whether `ip` is in the prefix and in none of its exceptions.
    pub fn contains(&self, ip: &IpAddr) -> bool {
        self.cidr.contains(ip) && !self.except.iter().any(|e| e.contains(ip))
    }
}

/// Destination ports `first..=last` of one IP protocol (6 TCP, 17 UDP,
/// 132 SCTP).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PortRange {
    pub protocol: u8,
    pub first: u16,
    pub last: u16,
}

impl PolicyRule {
    /// Whether the rule allows a packet whose other side is `peer`, of IP
    /// protocol `protocol`, to destination port `port` (`None`: a packet
    /// without ports, which only a rule without ports allows).
    pub fn allows(&self, peer: &IpAddr, protocol: u8, port: Option<u16>) -> bool {
        let peer_ok = self
            .peers
            .as_ref()
            .is_none_or(|ps| ps.iter().any(|p| p.contains(peer)));
        let port_ok = self.ports.is_empty()
            || port.is_some_and(|port| {
                self.ports
                    .iter()
                    .any(|r| r.protocol == protocol && (r.first..=r.last).contains(&port))
            });
        peer_ok && port_ok
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Hello {
        api_version: u32,
    },
    /// Replace the whole table state.
    Sync {
        node: NodeSettings,
        endpoints: Vec<Endpoint>,
        routes: Vec<Route>,
    },
    UpsertEndpoint {
        endpoint: Endpoint,
    },
    /// Removing an unknown id is not an error (idempotent DEL).
    RemoveEndpoint {
        id: String,
    },
    UpsertRoute {
        route: Route,
    },
    RemoveRoute {
        prefix: IpNet,
    },
    /// Replace every service port (sent after `Sync` on each connect).
    SyncServices {
        services: Vec<ServicePort>,
    },
    UpsertService {
        service: ServicePort,
    },
    /// Removing an unknown id is not an error.
    RemoveService {
        id: String,
    },
    /// Replace every endpoint policy (sent after `SyncServices` on each
    /// connect).
    SyncPolicies {
        policies: Vec<EndpointPolicy>,
    },
    UpsertPolicy {
        policy: EndpointPolicy,
    },
    /// The endpoint allows everything again. Unknown ids are not an error.
    RemovePolicy {
        endpoint: String,
    },
    /// Counters (read-only; any client, e.g. ferryctl, may ask).
    Stats,
    /// The tables as the workers see them (read-only).
    Tables,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Response {
    Hello {
        api_version: u32,
        workers: u32,
        /// What the dataplane's ports can carry; `None` from a dataplane
        /// that predates the field (added without an API version bump:
        /// old peers ignore it or see it absent).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mtu_limits: Option<MtuLimits>,
    },
    /// The update is visible to every worker from `generation` on.
    /// A `Sync` whose state names ports the dataplane could not open is
    /// still applied (the rest must not wait for a pod that is gone):
    /// `missing` names the endpoints left out, and why. Incremental
    /// updates are all or nothing and never carry `missing`.
    Applied {
        generation: u64,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        missing: Vec<MissingPort>,
    },
    Stats(Stats),
    Tables(Box<TableDump>),
    Error {
        message: String,
    },
}

/// An endpoint a `Sync` was applied without: its port could not be opened
/// (the pod's veth or tap is gone, typically because its namespace was
/// destroyed before its DEL).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct MissingPort {
    /// Endpoint id (`<container id>/<ifname>`).
    pub endpoint: String,
    /// The port name (host veth or tap label).
    pub port: String,
    /// Why it could not be opened.
    pub error: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct TableDump {
    pub generation: u64,
    pub node: Option<NodeSettings>,
    pub endpoints: Vec<Endpoint>,
    pub routes: Vec<Route>,
    /// Port name -> port index used in the forwarding tables.
    pub ports: BTreeMap<String, u32>,
    /// The MAC each peer node is reached at on the uplink (the peer's own,
    /// or its gateway's when it is off-link), as the dataplane resolved
    /// it from the node kernel's neighbour table.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub neighbours: Vec<Neighbour>,
    /// The service ports, by id.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<ServicePort>,
    /// The endpoint policies, by endpoint id.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<EndpointPolicy>,
}

/// How the dataplane reaches one peer node on the uplink.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Neighbour {
    /// The peer node's address.
    pub node: IpAddr,
    /// Where its frames go on the uplink: the peer itself (on-link) or
    /// the gateway the node kernel routes it through.
    pub next_hop: IpAddr,
    /// `None` while unresolved (frames to it are dropped
    /// `neighbour_unresolved`).
    pub mac: Option<MacAddr>,
    /// Why it is unresolved, or the kernel's neighbour state.
    pub state: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct Stats {
    pub generation: u64,
    pub ports: Vec<PortStats>,
    pub workers: Vec<WorkerStats>,
    /// Every drop-reason name the dataplane counts (the keys `drops` maps
    /// may hold; a reason never seen is absent from them), so an exporter
    /// can report zeros. Empty from a dataplane that predates the field.
    #[serde(default)]
    pub drop_reasons: Vec<String>,
    /// The connection table of service flows and policy-allowed flows,
    /// once there are services or endpoint policies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conntrack: Option<ConntrackStats>,
}

/// The connection table's size and counters.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConntrackStats {
    pub capacity: u64,
    /// Live and not yet swept entries (two per flow, plus one per
    /// session-affinity client).
    pub entries: u64,
    pub inserts: u64,
    /// New flows refused because the table was full (`ct_full` drops).
    pub insert_failed: u64,
    /// Entries swept after their timeout.
    pub expired: u64,
}

/// Per-port counters, summed over the workers that serve the port.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct PortStats {
    pub name: String,
    /// Endpoint id, or `"host"` for the host port.
    pub endpoint: String,
    /// Whether the dataplane has the port open (veth: XDP attached and
    /// sockets bound; tap: queues attached). False once a worker found the
    /// device deleted under its socket (the pod's namespace went before
    /// its DEL) and closed its queue.
    pub attached: bool,
    /// How the port is driven: the XDP attach and socket bind mode
    /// (`native-zerocopy`, `native-copy`, `generic-copy`) or `tap`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mode: String,
    pub rx_frames: u64,
    pub rx_bytes: u64,
    pub tx_frames: u64,
    pub tx_bytes: u64,
    /// Frames received on this port and dropped, by drop-reason name.
    pub drops: BTreeMap<String, u64>,
    /// The kernel's own counters of the port's AF_XDP sockets
    /// (`XDP_STATISTICS`, names in [`XSK_COUNTERS`]), summed over the
    /// workers and refreshed by each worker about once a second: frames
    /// lost ([`XSK_DROP_COUNTERS`]: the kernel dropped them before ferry saw
    /// them, or rejected our TX descriptors) and fill/TX-ring misses. Empty
    /// for tap ports (no socket).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub kernel: BTreeMap<String, u64>,
}

/// The `XDP_STATISTICS` counters of an AF_XDP socket, in the kernel's
/// `struct xdp_statistics` order.
pub const XSK_COUNTERS: [&str; 6] = [
    "rx_dropped",
    "rx_invalid_descs",
    "tx_invalid_descs",
    "rx_ring_full",
    "rx_fill_ring_empty_descs",
    "tx_ring_empty_descs",
];

/// The [`XSK_COUNTERS`] that count lost frames (the others count ring
/// misses, not frames).
pub const XSK_DROP_COUNTERS: [&str; 4] = [
    "rx_dropped",
    "rx_invalid_descs",
    "rx_ring_full",
    "tx_invalid_descs",
];

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct WorkerStats {
    pub worker: u32,
    pub cpu: Option<u32>,
    pub busy_polls: u64,
    pub idle_polls: u64,
    pub rx_frames: u64,
    pub tx_frames: u64,
    pub drops: BTreeMap<String, u64>,
    /// The worker's UMEM, shared by its sockets on every pod veth and the
    /// host port; absent before the first such port (and from older
    /// dataplanes). Read about once a second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub umem: Option<UmemStats>,
}

/// Where the frames of a worker's shared UMEM are.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UmemStats {
    /// Frames in the UMEM (2 KiB each).
    pub frames: u64,
    /// On the worker's free list.
    pub free: u64,
    /// Held by the kernel: in its sockets' fill, RX, TX and completion
    /// rings.
    pub in_rings: u64,
    /// Held by the rings of removed ports whose sockets are still closing
    /// (back within ~10 ms).
    pub closing: u64,
    /// Sum of the sockets' fill budgets (each adapts to its traffic).
    pub fill_budget: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_json_shape_is_stable() {
        let r = Request::RemoveEndpoint {
            id: "abc/eth0".into(),
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"op":"remove_endpoint","id":"abc/eth0"}"#
        );
        let hop = NextHop::Endpoint("x/eth0".into());
        assert_eq!(
            serde_json::to_string(&hop).unwrap(),
            r#"{"endpoint":"x/eth0"}"#
        );
        let back: Request = serde_json::from_str(r#"{"op":"hello","api_version":1}"#).unwrap();
        assert_eq!(back, Request::Hello { api_version: 1 });
    }

    #[test]
    fn hello_mtu_limits_and_endpoint_mtu_are_optional() {
        // A dataplane or ferryd from before the fields still parses.
        let old: Response =
            serde_json::from_str(r#"{"reply":"hello","api_version":1,"workers":2}"#).unwrap();
        assert_eq!(
            old,
            Response::Hello {
                api_version: 1,
                workers: 2,
                mtu_limits: None
            }
        );
        let new = Response::Hello {
            api_version: 1,
            workers: 2,
            mtu_limits: Some(MtuLimits {
                veth: 28658,
                tap: 65535,
                uplink: Some(1778),
            }),
        };
        let json = serde_json::to_string(&new).unwrap();
        assert_eq!(
            json,
            r#"{"reply":"hello","api_version":1,"workers":2,"mtu_limits":{"veth":28658,"tap":65535,"uplink":1778}}"#
        );
        assert_eq!(serde_json::from_str::<Response>(&json).unwrap(), new);
        // A dataplane from before the uplink's own limit.
        let old: Response = serde_json::from_str(
            r#"{"reply":"hello","api_version":1,"workers":2,"mtu_limits":{"veth":1778,"tap":65535}}"#,
        )
        .unwrap();
        assert!(matches!(old, Response::Hello { mtu_limits: Some(l), .. } if l.uplink.is_none()));
        let ep: Endpoint = serde_json::from_str(
            r#"{"id":"a/eth0","host_ifname":"fya","ips":["10.0.0.2"],"mac":"0a:58:0a:00:00:02"}"#,
        )
        .unwrap();
        assert_eq!(ep.mtu, None);
        assert!(!serde_json::to_string(&ep).unwrap().contains("mtu"));
    }

    #[test]
    fn addresses_are_family_generic() {
        let ep: Endpoint = serde_json::from_str(
            r#"{"id":"a/eth0","host_ifname":"fya","ips":["fd00::2","10.0.0.2"],"mac":"0a:58:0a:00:00:02"}"#,
        )
        .unwrap();
        assert_eq!(ep.ipv4(), Some(Ipv4Addr::new(10, 0, 0, 2)));
        let node: NodeSettings = serde_json::from_str(
            r#"{"gateways":["fd00::1","10.0.0.1"],"router_mac":"ee:ee:ee:ee:ee:ee","pod_cidrs":["fd00::/64","10.0.0.0/24"],"host_port":null,"mtu":1500}"#,
        )
        .unwrap();
        assert_eq!(node.gateway4(), Some(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(
            node.pod_cidrs4().collect::<Vec<_>>(),
            vec!["10.0.0.0/24".parse::<Ipv4Net>().unwrap()]
        );
        let r: Request =
            serde_json::from_str(r#"{"op":"remove_route","prefix":"fd00:1::/64"}"#).unwrap();
        assert!(matches!(
            r,
            Request::RemoveRoute {
                prefix: IpNet::V6(_)
            }
        ));
    }
}
