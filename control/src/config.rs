//! ferryd's configuration: a TOML file whose every field has a default.
//!
//! Parsing goes through [`RawConfig`] (what the file may say, all optional)
//! and [`Config::from_raw`] (validation into typed values), so every error
//! names the field and the value it refused.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use ferry_api::pod::{DEFAULT_DATAPLANE_SOCKET, DEFAULT_FERRYD_SOCKET};
use ferry_api::table::{Attachment, MtuLimits};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

mod cluster;
mod uplink;

pub use cluster::{hostname, ClusterConfig, RawCluster};
pub use uplink::{Peer, UplinkConfig, UplinkFacts, DEFAULT_VNI, MAX_VNI, OFF_LINK_PEER};

pub const DEFAULT_STATE_DIR: &str = "/var/lib/ferry";
pub const DEFAULT_POD_CIDR: &str = "10.88.0.0/16";
pub const DEFAULT_MTU: u32 = 1500;
/// `local_mtu` unset: as large as a veth port carries (the largest MTU,
/// lowered to the dataplane's limit, 28658). Measured against 9000 in the
/// same run (perf/results/jumbo-20261207.md): one TCP stream between two
/// veth pods 10.6 against 7.1 Gbit/s, the per-packet kernel work of copy-
/// mode AF_XDP paid once per 28 KB instead of once per 9 KB.
pub const DEFAULT_LOCAL_MTU: u32 = 65535;
pub const DEFAULT_HOST_PORT: &str = "ferry0";
pub const DEFAULT_LOG_LEVEL: &str = "info";
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9469";
/// The Maglev seed of a cluster whose configuration names none: any fixed
/// value works, as long as every node has the same.
pub const DEFAULT_MAGLEV_SEED: u64 = 0x6665_7272_795f_6d67;
/// Suffix of the dataplane end of the host port (`ferry0` -> `ferry0dp`).
pub const HOST_PORT_DP_SUFFIX: &str = "dp";

/// The reference printed by `ferryd --help`: every field and its default.
pub const FIELDS_HELP: &str = "\
Configuration file (TOML, every field optional):
  socket            pod-API Unix socket the `ferry` CNI binary talks to
                    (mode 0600, uid 0 or ferryd's own) [default: /run/ferry/ferryd.sock]
  dataplane_socket  ferry-dataplane's table-API socket
                    [default: /run/ferry/dataplane.sock]
  state_dir         directory of the crash-safe store (ferry.redb)
                    [default: /var/lib/ferry]
  pod_cidrs         CIDRs pods get addresses from: one or more IPv4 CIDRs (at
                    most /30) and at most one IPv6 CIDR (at most /126); with
                    an IPv6 CIDR every pod gets one address of each family
                    (dual stack), e.g. [\"10.88.0.0/16\", \"fd00:10:88::/64\"].
                    An IPv4 CIDR is required (no IPv6-only nodes yet)
                    [default: [\"10.88.0.0/16\"]]
  gateway           the pods' IPv4 default gateway, inside one of pod_cidrs
                    [default: first host address of the first IPv4 CIDR]
  gateway6          the pods' IPv6 default gateway, inside the IPv6 CIDR and
                    not its subnet-router anycast (::0) address; only with
                    an IPv6 CIDR [default: the CIDR's first host, ::1]
  mtu               the path MTU: of tap pod interfaces, of veth pods' routes
                    through (and to) the gateway (see local_mtu) and of the host
                    port, 68..=65535;
                    ADD refuses a pod MTU above what its attachment carries
                    (the dataplane says: veth 28658, tap 65535)
                    [default: 1500; with an uplink: the uplink's MTU less the
                    overlay's overhead (vxlan 50, direct 0), lowered to the
                    attachment's limit and, for veth pods' routes and the
                    host port, to one uplink frame (1778)]
  local_mtu         MTU of veth pod interfaces, for traffic between the pods
                    of this node, 68..=65535; their routes through the
                    gateway carry `mtu` (the path MTU); tap pods get `mtu`
                    [default: 65535, lowered to the attachment's limit
                    (veth 28658); at or below `mtu`, pods get `mtu` and no
                    route MTU]
  host_port         kernel-side name of the host port veth (1-13 chars); the
                    dataplane side is <host_port>dp [default: ferry0]
  log_level         off|error|warn|info|debug|trace; RUST_LOG overrides it
                    [default: info]
  metrics_listen    address:port of the Prometheus endpoint (GET /metrics);
                    \"\" disables it; connections from pod addresses are
                    refused [default: 127.0.0.1:9469]
  uplink            the node's NIC towards the other nodes, e.g. \"eth0\"; must
                    exist in ferryd's network namespace and not be one of
                    ferry's own links (host port, fy*/ft*) [default: none:
                    a single node, nothing leaves but through the host port]
  node_address      the node's IPv4 address on the uplink (VXLAN source,
                    what peers send to); must be one of the uplink's
                    [default: the uplink's first IPv4 address]
  service_cidrs     the ClusterIP ranges (kube-apiserver's
                    --service-cluster-ip-range): at most one IPv4 and one
                    IPv6 CIDR, e.g. [\"10.96.0.0/12\"]; the node kernel routes
                    each through the host port (from the gateway of its
                    family: an IPv6 range needs IPv6 pods), so the node's
                    own connections to a ClusterIP reach the dataplane's
                    services; pods reach them by their default route
                    [default: []: no kernel routes]
  [services]        Kubernetes Services (objects from `ferryctl apply`):
    maglev_seed     the seed of every service's Maglev table, 0..=2^63-1;
                    the same on every node of a cluster, so every node picks
                    the same backend for a flow [default: 7378429400504560999]
  masquerade        pod traffic to addresses outside the cluster (node and
                    peer pod CIDRs) leaves with the node's address: an
                    nftables table `ip ferry` in the node namespace, loaded
                    with `nft -f -` [default: true with an uplink]
  [overlay]         (only with uplink) how pod traffic reaches peers:
    mode            \"vxlan\" (encapsulated, peers anywhere routable) or
                    \"direct\" (host-gw: routed to the peer's MAC; every peer
                    must be inside a subnet of the uplink) [default: vxlan]
    vni             VXLAN network identifier, 0..=16777215 [default: 1]
    port            VXLAN UDP port, 1..=65535 [default: 4789]
    set_channels    set the uplink's channel count to the dataplane's
                    worker count (ethtool -L) when they differ [default: false]
  [[peers]]         (only with uplink) one table per peer node:
    address         the peer's uplink address (not the node's, no duplicates)
    pod_cidr        the peer's pod CIDR, overlapping neither pod_cidrs nor
                    another peer's [default: no peers]
    pod_cidr6       the peer's IPv6 pod CIDR (a dual-stack peer), likewise;
                    routed to its address over the IPv4 overlay
                    [default: none]
  [cluster]         (needs uplink; then no pod_cidrs, gateway or [[peers]])
                    nodes find each other through etcd: each claims a block
                    of the cluster CIDR (its pod CIDR, gateway its first
                    host) in a lease, and routes to every other node's
                    [default: none: the embedded single node]
    endpoints       etcd's client URLs, e.g. [\"http://10.0.0.1:2379\"]
                    (required; all http:// or all https://)
    cidr            the cluster's pod CIDR, e.g. \"10.244.0.0/16\" (required;
                    every node the same)
    block_len       prefix length of a node's block, cidr's..=30 [default: 24]
    cidr6           the cluster's IPv6 pod CIDR, e.g. \"fd00:10:244::/48\":
                    a dual-stack cluster (every node the same); a node's
                    IPv6 block is the one with its IPv4 block's index, held
                    by the same claim, its first host the IPv6 gateway
                    [default: none: IPv4 pods only]
    block_len6      prefix length of a node's IPv6 block, at least cidr6's
                    plus the bits that number the IPv4 blocks, at most 126
                    [default: 64]
    node_name       this node's name in the datastore [default: the hostname]
    prefix          etcd key prefix [default: /ferry]
    lease_ttl_s     seconds a claim outlives its node; renewed every quarter
                    of it, >= 10 [default: 86400]
    ca_file         PEM CA of etcd's certificate (required with https://)
    cert_file       PEM client certificate (with key_file) [default: none]
    key_file        PEM key of cert_file [default: none]";

/// The file as written: everything optional, unknown fields refused.
/// Also what [`Config::to_toml`] writes, so a printed configuration reads
/// back as the same [`Config`].
#[derive(Serialize, Deserialize, Debug, Default, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dataplane_socket: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_cidrs: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway6: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mtu: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local_mtu: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_port: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_level: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uplink: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub masquerade: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overlay: Option<RawOverlay>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peers: Option<Vec<RawPeer>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_cidrs: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub services: Option<RawServices>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<RawCluster>,
}

/// `[services]` as written.
#[derive(Serialize, Deserialize, Debug, Default, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawServices {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maglev_seed: Option<i64>,
}

/// `[overlay]` as written.
#[derive(Serialize, Deserialize, Debug, Default, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawOverlay {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vni: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub set_channels: Option<bool>,
}

/// One `[[peers]]` table as written (both fields required).
#[derive(Serialize, Deserialize, Debug, Default, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawPeer {
    pub address: String,
    pub pod_cidr: String,
    /// The peer's IPv6 pod CIDR (a dual-stack peer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_cidr6: Option<String>,
}

/// Validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub socket: PathBuf,
    pub dataplane_socket: PathBuf,
    pub state_dir: PathBuf,
    /// The IPv4 CIDRs of `pod_cidrs`.
    pub pod_cidrs: Vec<Ipv4Net>,
    pub gateway: Ipv4Addr,
    /// The IPv6 CIDR of `pod_cidrs` and its gateway; `None`: IPv4 pods only.
    pub ipv6: Option<Ipv6Pods>,
    /// `mtu` as written; `None`: derived ([`Config::mtu`]).
    pub mtu_setting: Option<u32>,
    /// `local_mtu`: the link MTU of veth pods ([`Config::pod_mtus`]).
    pub local_mtu: u32,
    pub host_port: String,
    pub log_level: String,
    /// Where `GET /metrics` is served; `None`: disabled (`""` in the file).
    pub metrics_listen: Option<SocketAddr>,
    /// `None`: a single node (no uplink, no peers, no masquerade).
    pub uplink: Option<UplinkConfig>,
    /// The ClusterIP ranges the node kernel routes into the dataplane (at
    /// most one per family).
    pub service_cidrs: Vec<IpNet>,
    /// `[services] maglev_seed`.
    pub maglev_seed: u64,
    /// `None`: the embedded single node (or `[[peers]]` written by hand);
    /// else `pod_cidrs` is the block claimed from the cluster CIDR
    /// ([`Config::with_block`]; until then the CIDR's first block).
    pub cluster: Option<ClusterConfig>,
}

/// A pod interface's MTUs ([`Config::pod_mtus`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodMtus {
    /// The link's, both ends of a veth: what the pod sends to the pods of
    /// its own prefix (the kernel's connected route), and its endpoint's
    /// egress MTU in the dataplane.
    pub link: u32,
    /// What every route through the gateway carries (RTAX_MTU), the path
    /// MTU off the node; `None`: those routes use the link's.
    pub route: Option<u32>,
}

/// The node's IPv6 pods: the CIDR their addresses come from and the
/// gateway (held by the host port's kernel end, never handed out).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Pods {
    pub cidr: Ipv6Net,
    pub gateway: Ipv6Addr,
}

impl Ipv6Pods {
    /// The pods of `cidr` with its first host (`::1`) as their gateway.
    pub fn with_first_host(cidr: Ipv6Net) -> Ipv6Pods {
        Ipv6Pods {
            cidr,
            gateway: Ipv6Addr::from(u128::from(cidr.network()) + 1),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parse config {path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("invalid config field `{field}`: {msg}")]
    Invalid { field: &'static str, msg: String },
}

fn invalid(field: &'static str, msg: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        msg: msg.into(),
    }
}

/// The first usable host address of a network (`10.88.0.0/16` -> `10.88.0.1`).
pub fn first_host(net: Ipv4Net) -> Ipv4Addr {
    match crate::ipam::first_host(net.into()) {
        IpAddr::V4(a) => a,
        IpAddr::V6(_) => unreachable!("the first host of an IPv4 network is IPv4"),
    }
}

impl Default for Config {
    fn default() -> Self {
        Config::from_raw(RawConfig::default()).expect("the defaults are valid")
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text).map_err(|e| match e {
            ConfigError::Parse { source, .. } => ConfigError::Parse {
                path: path.to_path_buf(),
                source,
            },
            other => other,
        })
    }

    /// Parse and validate TOML text (errors carry an empty path).
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: PathBuf::new(),
            source: Box::new(source),
        })?;
        Config::from_raw(raw)
    }

    pub fn from_raw(raw: RawConfig) -> Result<Config, ConfigError> {
        let nonempty_path = |field: &'static str, p: Option<PathBuf>, default: &str| {
            let p = p.unwrap_or_else(|| PathBuf::from(default));
            if p.as_os_str().is_empty() {
                Err(invalid(field, "must not be empty"))
            } else {
                Ok(p)
            }
        };
        let socket = nonempty_path("socket", raw.socket, DEFAULT_FERRYD_SOCKET)?;
        let dataplane_socket = nonempty_path(
            "dataplane_socket",
            raw.dataplane_socket,
            DEFAULT_DATAPLANE_SOCKET,
        )?;
        let state_dir = nonempty_path("state_dir", raw.state_dir, DEFAULT_STATE_DIR)?;

        let cluster = raw
            .cluster
            .as_ref()
            .map(ClusterConfig::from_raw)
            .transpose()?;
        if let Some(k) = &cluster {
            if raw.uplink.is_none() {
                return Err(invalid(
                    "cluster",
                    "needs `uplink` (the node's NIC the other nodes are reached through)",
                ));
            }
            for (field, set) in [
                ("pod_cidrs", raw.pod_cidrs.is_some()),
                ("gateway", raw.gateway.is_some()),
                ("gateway6", raw.gateway6.is_some()),
                ("peers", raw.peers.is_some()),
            ] {
                if set {
                    return Err(invalid(
                        field,
                        format!(
                            "comes from the datastore with [cluster] (a /{} block of {}); remove it",
                            k.block_len, k.cidr
                        ),
                    ));
                }
            }
        }

        let cidr_texts = match &cluster {
            Some(k) => Some(vec![k.first_block().to_string()]),
            None => raw.pod_cidrs,
        };
        let cidr_texts = cidr_texts.unwrap_or_else(|| vec![DEFAULT_POD_CIDR.to_string()]);
        if cidr_texts.is_empty() {
            return Err(invalid("pod_cidrs", "needs at least one IPv4 CIDR"));
        }
        let mut nets: Vec<IpNet> = Vec::with_capacity(cidr_texts.len());
        for text in &cidr_texts {
            let net: IpNet = text.trim().parse().map_err(|_| {
                invalid(
                    "pod_cidrs",
                    format!(
                        "{text:?} is not a CIDR (a.b.c.d/len or an IPv6 prefix such as fd00::/64)"
                    ),
                )
            })?;
            if net.network() != net.addr() {
                return Err(invalid(
                    "pod_cidrs",
                    format!("{text:?} has host bits set; did you mean {}?", net.trunc()),
                ));
            }
            if net.prefix_len() > crate::ipam::max_pool_prefix(&net) {
                return Err(invalid(
                    "pod_cidrs",
                    format!(
                        "{text:?} is too small for pods (at most /{})",
                        crate::ipam::max_pool_prefix(&net)
                    ),
                ));
            }
            if let Some(other) = nets.iter().find(|o| o.contains(&net) || net.contains(*o)) {
                return Err(invalid("pod_cidrs", format!("{net} overlaps {other}")));
            }
            nets.push(net);
        }
        let (mut pod_cidrs, mut cidrs6): (Vec<Ipv4Net>, Vec<Ipv6Net>) = (Vec::new(), Vec::new());
        for net in nets {
            match net {
                IpNet::V4(n) => pod_cidrs.push(n),
                IpNet::V6(n) => cidrs6.push(n),
            }
        }
        if pod_cidrs.is_empty() {
            return Err(invalid(
                "pod_cidrs",
                format!(
                    "{cidr_texts:?} has no IPv4 CIDR: IPv6-only nodes are not supported yet \
                     (add an IPv4 CIDR beside the IPv6 one)"
                ),
            ));
        }
        if cidrs6.len() > 1 {
            return Err(invalid(
                "pod_cidrs",
                format!("{cidrs6:?}: at most one IPv6 CIDR (a pod gets one address per family)"),
            ));
        }

        let gateway = match raw.gateway {
            None => first_host(pod_cidrs[0]),
            Some(text) => text.trim().parse::<Ipv4Addr>().map_err(|_| {
                invalid(
                    "gateway",
                    format!("{text:?} is not an IPv4 address (the IPv6 gateway is `gateway6`)"),
                )
            })?,
        };
        let Some(gw_net) = pod_cidrs.iter().find(|n| n.contains(&gateway)) else {
            return Err(invalid(
                "gateway",
                format!("{gateway} is not inside any of pod_cidrs {pod_cidrs:?}"),
            ));
        };
        if gateway == gw_net.network() || gateway == gw_net.broadcast() {
            return Err(invalid(
                "gateway",
                format!("{gateway} is the network or broadcast address of {gw_net}"),
            ));
        }
        let ipv6 = match (cidrs6.first(), raw.gateway6) {
            (None, None) => None,
            (None, Some(text)) => {
                return Err(invalid(
                    "gateway6",
                    format!("{text:?} needs an IPv6 CIDR in pod_cidrs"),
                ))
            }
            (Some(&cidr), text) => {
                let gateway = match text {
                    None => Ipv6Pods::with_first_host(cidr).gateway,
                    Some(text) => text.trim().parse::<Ipv6Addr>().map_err(|_| {
                        invalid("gateway6", format!("{text:?} is not an IPv6 address"))
                    })?,
                };
                if !cidr.contains(&gateway) || gateway == cidr.network() {
                    return Err(invalid(
                        "gateway6",
                        format!(
                            "{gateway} is not a host address of {cidr} (its ::0 is the subnet-router anycast)"
                        ),
                    ));
                }
                Some(Ipv6Pods { cidr, gateway })
            }
        };
        // A dual-stack cluster node: until the claim, the IPv6 block of the
        // first IPv4 block stands in, as that block does.
        let ipv6 = match &cluster {
            Some(k) => k.block6(k.first_block()).map(Ipv6Pods::with_first_host),
            None => ipv6,
        };

        let mtu_in_range = |field: &'static str, mtu: i64| match u32::try_from(mtu) {
            Ok(m) if (68..=65535).contains(&m) => Ok(m),
            _ => Err(invalid(field, format!("{mtu} is outside 68..=65535"))),
        };
        let mtu_setting = raw.mtu.map(|m| mtu_in_range("mtu", m)).transpose()?;
        let local_mtu = raw
            .local_mtu
            .map_or(Ok(DEFAULT_LOCAL_MTU), |m| mtu_in_range("local_mtu", m))?;

        let host_port = raw
            .host_port
            .unwrap_or_else(|| DEFAULT_HOST_PORT.to_string());
        validate_ifname(&host_port, 15 - HOST_PORT_DP_SUFFIX.len())
            .map_err(|m| invalid("host_port", m))?;

        let log_level = raw
            .log_level
            .unwrap_or_else(|| DEFAULT_LOG_LEVEL.to_string());
        if log_level.parse::<log::LevelFilter>().is_err() {
            return Err(invalid(
                "log_level",
                format!("{log_level:?} is not one of off|error|warn|info|debug|trace"),
            ));
        }

        let listen_text = raw
            .metrics_listen
            .unwrap_or_else(|| DEFAULT_METRICS_LISTEN.to_string());
        let metrics_listen = match listen_text.trim() {
            "" => None,
            t => Some(t.parse::<SocketAddr>().map_err(|_| {
                invalid(
                    "metrics_listen",
                    format!(
                        "{listen_text:?} is not an address:port such as \"127.0.0.1:9469\" or \"[::]:9469\" \
                         (\"\" disables the endpoint)"
                    ),
                )
            })?),
        };

        let uplink_fields = RawConfig {
            uplink: raw.uplink,
            node_address: raw.node_address,
            masquerade: raw.masquerade,
            overlay: raw.overlay,
            peers: raw.peers,
            ..RawConfig::default()
        };
        // With [cluster], a node address anywhere in the cluster CIDR would
        // be routed to pods.
        let own_cidrs = match &cluster {
            Some(k) => vec![k.cidr],
            None => pod_cidrs.clone(),
        };
        let own6 = match &cluster {
            Some(k) => k.v6.map(|v6| v6.cidr),
            None => ipv6.map(|v6| v6.cidr),
        };
        let uplink = UplinkConfig::from_raw(&uplink_fields, (&own_cidrs, own6), &host_port)?;
        let pods: Vec<IpNet> = own_cidrs
            .iter()
            .map(|&c| IpNet::from(c))
            .chain(own6.map(IpNet::from))
            .collect();
        let service_cidrs = service_cidrs(raw.service_cidrs.as_deref(), &pods, ipv6.is_some())?;
        let maglev_seed = match raw.services.and_then(|s| s.maglev_seed) {
            None => DEFAULT_MAGLEV_SEED,
            Some(s) => u64::try_from(s)
                .map_err(|_| invalid("services.maglev_seed", format!("{s} is negative")))?,
        };

        Ok(Config {
            socket,
            dataplane_socket,
            state_dir,
            pod_cidrs,
            gateway,
            ipv6,
            mtu_setting,
            local_mtu,
            host_port,
            log_level,
            metrics_listen,
            uplink,
            service_cidrs,
            maglev_seed,
            cluster,
        })
    }

    /// This configuration with `block` (claimed from the cluster) as its
    /// pod CIDR and the block's first host as the gateway.
    pub fn with_block(&self, block: Ipv4Net) -> Config {
        let ipv6 = match &self.cluster {
            Some(k) => k.block6(block).map(Ipv6Pods::with_first_host),
            None => self.ipv6,
        };
        Config {
            pod_cidrs: vec![block],
            gateway: first_host(block),
            ipv6,
            ..self.clone()
        }
    }

    /// The file that reads back as this configuration (defaults written
    /// out, the uplink's fields only with an uplink).
    pub fn to_raw(&self) -> RawConfig {
        let uplink = self.uplink.as_ref();
        RawConfig {
            socket: Some(self.socket.clone()),
            dataplane_socket: Some(self.dataplane_socket.clone()),
            state_dir: Some(self.state_dir.clone()),
            pod_cidrs: self
                .cluster
                .is_none()
                .then(|| self.pod_nets().iter().map(ToString::to_string).collect()),
            gateway: self.cluster.is_none().then(|| self.gateway.to_string()),
            gateway6: self
                .ipv6
                .filter(|_| self.cluster.is_none())
                .map(|v6| v6.gateway.to_string()),
            mtu: self.mtu_setting.map(i64::from),
            local_mtu: Some(i64::from(self.local_mtu)),
            host_port: Some(self.host_port.clone()),
            log_level: Some(self.log_level.clone()),
            metrics_listen: Some(
                self.metrics_listen
                    .map(|a| a.to_string())
                    .unwrap_or_default(),
            ),
            uplink: uplink.map(|u| u.ifname.clone()),
            node_address: uplink.and_then(|u| u.node_address).map(|a| a.to_string()),
            masquerade: uplink.map(|u| u.masquerade),
            overlay: uplink.map(UplinkConfig::raw_overlay),
            peers: uplink
                .filter(|_| self.cluster.is_none())
                .map(|u| u.peers.iter().copied().map(Peer::to_raw).collect()),
            service_cidrs: Some(self.service_cidrs.iter().map(ToString::to_string).collect()),
            // Only when not the default: a table in the middle of the
            // printed file would swallow the top-level fields after it.
            services: (self.maglev_seed != DEFAULT_MAGLEV_SEED).then(|| RawServices {
                // A seed above i64::MAX cannot come from a file.
                maglev_seed: i64::try_from(self.maglev_seed).ok(),
            }),
            cluster: self.cluster.as_ref().map(ClusterConfig::to_raw),
        }
    }

    /// MTU of pod interfaces (unless the CNI config says otherwise) and of
    /// the host port: `mtu` when written; else, with an uplink whose MTU
    /// is known ([`Config::resolve`]), the uplink's MTU less the overlay's
    /// overhead; else [`DEFAULT_MTU`].
    pub fn mtu(&self) -> u32 {
        self.mtu_setting
            .or_else(|| self.uplink.as_ref().and_then(UplinkConfig::derived_mtu))
            .unwrap_or(DEFAULT_MTU)
    }

    /// Whether [`Config::mtu`] is derived rather than written: a derived
    /// MTU is lowered to an attachment's limit instead of failing the ADD.
    pub fn mtu_is_derived(&self) -> bool {
        self.mtu_setting.is_none()
    }

    /// The MTU of an interface whose attachment carries at most `limit`
    /// (the dataplane's `mtu_limits`, if it said): a written `mtu` as it is
    /// (ADD refuses it when above), a derived one lowered to `limit`.
    pub fn default_mtu(&self, limit: Option<u32>) -> u32 {
        match (self.mtu_setting, limit) {
            (Some(m), _) => m,
            (None, Some(l)) => self.mtu().min(l),
            (None, None) => self.mtu(),
        }
    }

    /// The host port's MTU, given what the dataplane says its frames carry:
    /// the host port is a veth, and with an uplink the node's traffic to
    /// other nodes' pods leaves through it, so a derived MTU stays within
    /// both a veth's frames and one uplink frame.
    pub fn host_port_mtu(&self, limits: Option<MtuLimits>) -> u32 {
        let limit = limits.map(|l| match self.uplink_frame(&l) {
            Some(u) => l.veth.min(u),
            None => l.veth,
        });
        self.default_mtu(limit)
    }

    /// What one uplink frame holds (`mtu_limits.uplink`), when this node
    /// has an uplink and the dataplane said.
    fn uplink_frame(&self, limits: &MtuLimits) -> Option<u32> {
        limits.uplink.filter(|_| self.uplink.is_some())
    }

    /// The MTUs of a pod on `attachment`, whose port carries at most
    /// `limit` (`limits`: the dataplane's `mtu_limits`, if it said), with
    /// `cni_mtu` the network config's `mtu`. That one is the link's as it is; else a
    /// veth pod's link gets `local_mtu` lowered to `limit` and its routes
    /// through the gateway the path MTU ([`Config::default_mtu`]) when that
    /// is smaller. XDP takes TSO away from a veth, so a large link MTU is
    /// what lets a pod's TCP cross in large frames to the pods next to it;
    /// off the node no frame may exceed the path MTU, and with an uplink
    /// a veth pod's path MTU is lowered to what one uplink frame holds
    /// (`mtu_limits.uplink`: its sockets take no chains). A tap
    /// keeps TSO, and a veth whose limit is unknown could be given more
    /// than its port carries: both get the path MTU on the link.
    pub fn pod_mtus(
        &self,
        attachment: Attachment,
        limits: Option<MtuLimits>,
        cni_mtu: Option<u32>,
    ) -> PodMtus {
        if let Some(link) = cni_mtu {
            return PodMtus { link, route: None };
        }
        let limit = limits.map(|l| l.of(attachment));
        let path = self.default_mtu(limit);
        let local = match attachment {
            Attachment::Veth => limit.map(|l| self.local_mtu.min(l)),
            Attachment::Tap => None,
        };
        let path = match (attachment, limits.and_then(|l| self.uplink_frame(&l))) {
            (Attachment::Veth, Some(u)) => path.min(u),
            _ => path,
        };
        match local {
            Some(link) if link > path => PodMtus {
                link,
                route: Some(path),
            },
            _ => PodMtus {
                link: path,
                route: None,
            },
        }
    }

    /// The uplink checked against what the node says of it (link present,
    /// its addresses and MTU): `node_address` filled in and checked, peers
    /// checked against the node address and, in direct mode, against the
    /// uplink's subnets. `facts` is `None` when the link does not exist.
    /// Without an uplink, the configuration as it is.
    pub fn resolve(&self, facts: Option<&UplinkFacts>) -> Result<Config, ConfigError> {
        let mut cfg = self.clone();
        if let Some(u) = cfg.uplink.as_mut() {
            u.resolve(facts, self.mtu_setting)?;
        }
        Ok(cfg)
    }

    /// The node's pod CIDRs of both families (IPv4 first), as the table
    /// API and IPAM take them.
    pub fn pod_nets(&self) -> Vec<IpNet> {
        let v4 = self.pod_cidrs.iter().map(|&c| IpNet::from(c));
        v4.chain(self.ipv6.map(|v6| v6.cidr.into())).collect()
    }

    /// The pods' gateways, one per family served (IPv4 first).
    pub fn gateways(&self) -> Vec<IpAddr> {
        let v4 = std::iter::once(IpAddr::from(self.gateway));
        v4.chain(self.ipv6.map(|v6| v6.gateway.into())).collect()
    }

    /// Every pod CIDR of the cluster this node knows: its own, then the
    /// peers'; with [cluster], the cluster CIDR (every block, now or later).
    pub fn cluster_cidrs(&self) -> Vec<Ipv4Net> {
        if let Some(k) = &self.cluster {
            return vec![k.cidr];
        }
        let mut all = self.pod_cidrs.clone();
        if let Some(u) = &self.uplink {
            all.extend(u.peers.iter().map(|p| p.pod_cidr));
        }
        all
    }

    /// The node kernel's routes through the host port beside its own pod
    /// CIDRs': each `[[peers]]` pod CIDR, or with [cluster] the cluster CIDR
    /// once (the dataplane routes each peer's block; blocks nobody holds
    /// are dropped there, not sent out of the node's default route).
    pub fn kernel_peer_cidrs(&self) -> Vec<Ipv4Net> {
        match &self.cluster {
            Some(k) => vec![k.cidr],
            None => self
                .uplink
                .iter()
                .flat_map(|u| &u.peers)
                .map(|p| p.pod_cidr)
                .collect(),
        }
    }

    /// Every pod CIDR of the cluster this node knows, both families: its
    /// own and the peers' (with [cluster], the cluster CIDRs).
    pub fn cluster_nets(&self) -> Vec<IpNet> {
        let v4 = self.cluster_cidrs().into_iter().map(IpNet::from);
        let own6 = match &self.cluster {
            Some(k) => k.v6.map(|v6| v6.cidr),
            None => self.ipv6.map(|v6| v6.cidr),
        };
        let v6 = own6
            .into_iter()
            .chain(self.kernel_peer_cidrs6())
            .map(IpNet::from);
        v4.chain(v6).collect()
    }

    /// [`Config::kernel_peer_cidrs`] for IPv6: each peer's `pod_cidr6`,
    /// or with [cluster] its `cidr6`.
    pub fn kernel_peer_cidrs6(&self) -> Vec<Ipv6Net> {
        match &self.cluster {
            Some(k) => k.v6.map(|v6| v6.cidr).into_iter().collect(),
            None => self
                .uplink
                .iter()
                .flat_map(|u| &u.peers)
                .filter_map(|p| p.pod_cidr6)
                .collect(),
        }
    }

    /// `service_cidrs` by family: (IPv4, IPv6).
    pub fn service_cidrs_by_family(&self) -> (Vec<Ipv4Net>, Vec<Ipv6Net>) {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for n in &self.service_cidrs {
            match *n {
                IpNet::V4(n) => v4.push(n),
                IpNet::V6(n) => v6.push(n),
            }
        }
        (v4, v6)
    }

    /// Kernel end of the host port (`ferry0`).
    pub fn host_port_kernel(&self) -> &str {
        &self.host_port
    }

    /// Dataplane end of the host port (`ferry0dp`).
    pub fn host_port_dp(&self) -> String {
        format!("{}{HOST_PORT_DP_SUFFIX}", self.host_port)
    }

    /// The database file inside `state_dir`.
    pub fn db_path(&self) -> PathBuf {
        self.state_dir.join("ferry.redb")
    }

    /// This configuration as a TOML document (`--print-default-config`).
    pub fn to_toml(&self) -> String {
        // Serializing plain strings, paths, numbers and tables cannot fail.
        toml::to_string(&self.to_raw()).unwrap_or_default()
    }
}

/// `service_cidrs` checked: CIDRs without host bits, at most one per
/// family, overlapping no pod CIDR (`pods`: the node's or the cluster's),
/// an IPv6 one only on a node with IPv6 pods (its route's source is the
/// IPv6 gateway).
fn service_cidrs(
    texts: Option<&[String]>,
    pods: &[IpNet],
    has_ipv6: bool,
) -> Result<Vec<IpNet>, ConfigError> {
    const F: &str = "service_cidrs";
    let mut out: Vec<IpNet> = Vec::new();
    for text in texts.unwrap_or_default() {
        let net: IpNet = text.trim().parse().map_err(|_| {
            invalid(
                F,
                format!("{text:?} is not a CIDR such as \"10.96.0.0/12\""),
            )
        })?;
        if net.trunc() != net {
            return Err(invalid(
                F,
                format!("{text:?} has host bits set; did you mean {}?", net.trunc()),
            ));
        }
        if out
            .iter()
            .any(|o| o.addr().is_ipv4() == net.addr().is_ipv4())
        {
            return Err(invalid(F, format!("{net}: at most one CIDR per family")));
        }
        if let Some(p) = pods.iter().find(|p| p.contains(&net) || net.contains(*p)) {
            return Err(invalid(F, format!("{net} overlaps the pod CIDR {p}")));
        }
        if net.addr().is_ipv6() && !has_ipv6 {
            return Err(invalid(
                F,
                format!("{net}: an IPv6 service range needs IPv6 pods (an IPv6 CIDR in pod_cidrs, or [cluster] cidr6)"),
            ));
        }
        out.push(net);
    }
    Ok(out)
}

/// A Linux interface name: 1..=max bytes, no '/', ':', whitespace or NUL.
pub fn validate_ifname(name: &str, max: usize) -> Result<(), String> {
    if name.is_empty() || name.len() > max {
        return Err(format!("{name:?} must be 1 to {max} bytes long"));
    }
    if name == "." || name == ".." {
        return Err(format!("{name:?} is not a valid interface name"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| *c == '/' || *c == ':' || c.is_whitespace() || *c == '\0')
    {
        return Err(format!(
            "{name:?} contains {c:?}, not allowed in an interface name"
        ));
    }
    Ok(())
}

/// `uplink = "up0"` resolved against an uplink of MTU `mtu` at
/// 192.168.70.1/24 (VXLAN, the default overlay): the tests' node with an
/// uplink.
#[cfg(test)]
pub(crate) fn over_uplink(mtu: u32) -> Config {
    Config::parse("uplink = \"up0\"")
        .unwrap()
        .resolve(Some(&UplinkFacts {
            mtu,
            addresses: vec!["192.168.70.1/24".parse().unwrap()],
        }))
        .unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_documented_defaults() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.socket, PathBuf::from("/run/ferry/ferryd.sock"));
        assert_eq!(
            c.dataplane_socket,
            PathBuf::from("/run/ferry/dataplane.sock")
        );
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/ferry"));
        assert_eq!(
            c.pod_cidrs,
            vec!["10.88.0.0/16".parse::<Ipv4Net>().unwrap()]
        );
        assert_eq!(c.gateway, Ipv4Addr::new(10, 88, 0, 1));
        assert_eq!(c.mtu(), 1500);
        assert_eq!(c.mtu_setting, None);
        assert_eq!(c.local_mtu, 65535);
        assert_eq!(c.uplink, None);
        assert_eq!(c.host_port, "ferry0");
        assert_eq!(c.host_port_dp(), "ferry0dp");
        assert_eq!(c.log_level, "info");
        assert_eq!(c.metrics_listen, Some("127.0.0.1:9469".parse().unwrap()));
        assert_eq!(c.db_path(), PathBuf::from("/var/lib/ferry/ferry.redb"));
        assert_eq!(c, Config::default());
    }

    #[test]
    fn full_file_parses() {
        let c = Config::parse(
            r#"
            socket = "/tmp/x/ferryd.sock"
            dataplane_socket = "/tmp/x/dp.sock"
            state_dir = "/tmp/x/state"
            pod_cidrs = ["10.1.0.0/24", "10.2.0.0/24"]
            gateway = "10.2.0.254"
            mtu = 9000
            local_mtu = 16000
            host_port = "fhost"
            log_level = "debug"
            metrics_listen = "[::]:9100"
            "#,
        )
        .unwrap();
        assert_eq!(c.pod_cidrs.len(), 2);
        assert_eq!(c.gateway, Ipv4Addr::new(10, 2, 0, 254));
        assert_eq!(c.mtu(), 9000);
        assert_eq!(c.local_mtu, 16000);
        assert_eq!(Config::parse(&c.to_toml()).unwrap(), c, "prints back");
        assert_eq!(c.host_port_dp(), "fhostdp");
        assert_eq!(c.metrics_listen, Some("[::]:9100".parse().unwrap()));
        // Default gateway follows the first CIDR.
        let c = Config::parse("pod_cidrs = [\"192.168.4.0/22\"]").unwrap();
        assert_eq!(c.gateway, Ipv4Addr::new(192, 168, 4, 1));
    }

    #[test]
    fn dual_stack_pod_cidrs_parse_and_round_trip() {
        let c = Config::parse(r#"pod_cidrs = ["10.88.0.0/16", "fd00:10:88::/64"]"#).unwrap();
        assert_eq!(
            c.pod_cidrs,
            vec!["10.88.0.0/16".parse::<Ipv4Net>().unwrap()]
        );
        let v6 = c.ipv6.expect("an IPv6 CIDR");
        assert_eq!(v6.cidr, "fd00:10:88::/64".parse::<Ipv6Net>().unwrap());
        assert_eq!(v6.gateway, "fd00:10:88::1".parse::<Ipv6Addr>().unwrap());
        assert_eq!(
            c.gateways(),
            vec![
                IpAddr::from(Ipv4Addr::new(10, 88, 0, 1)),
                "fd00:10:88::1".parse().unwrap()
            ]
        );
        assert_eq!(c.pod_nets().len(), 2);
        assert_eq!(Config::parse(&c.to_toml()).unwrap(), c);
        // The IPv6 CIDR may come first; the gateway may be set.
        let c = Config::parse(
            r#"
            pod_cidrs = ["fd00:1::/120", "10.1.0.0/24"]
            gateway6 = "fd00:1::fe"
            "#,
        )
        .unwrap();
        assert_eq!(c.gateway, Ipv4Addr::new(10, 1, 0, 1));
        assert_eq!(
            c.ipv6.unwrap().gateway,
            "fd00:1::fe".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(Config::parse(&c.to_toml()).unwrap(), c);
        assert_eq!(Config::default().ipv6, None);
    }

    #[test]
    fn default_config_round_trips_through_toml() {
        let c = Config::default();
        let again = Config::parse(&c.to_toml()).unwrap();
        assert_eq!(again, c);
        // A disabled metrics endpoint survives the round trip too.
        let off = Config::parse("metrics_listen = \"\"").unwrap();
        assert_eq!(off.metrics_listen, None);
        assert_eq!(Config::parse(&off.to_toml()).unwrap(), off);
    }

    #[test]
    fn bad_configs_name_the_field() {
        let cases: &[(&str, &str)] = &[
            ("pod_cidrs = [\"fd00::/64\"]", "pod_cidrs"),
            (
                "pod_cidrs = [\"10.0.0.0/8\", \"fd00::/64\", \"fd01::/64\"]",
                "pod_cidrs",
            ),
            ("pod_cidrs = [\"10.0.0.0/8\", \"fd00::/127\"]", "pod_cidrs"),
            ("pod_cidrs = [\"10.0.0.0/8\", \"fd00::1/64\"]", "pod_cidrs"),
            (
                "pod_cidrs = [\"10.0.0.0/8\", \"fd00::/48\", \"fd00::/64\"]",
                "pod_cidrs",
            ),
            ("gateway6 = \"fd00::1\"", "gateway6"),
            ("gateway = \"fd00::1\"", "gateway"),
            (
                "pod_cidrs = [\"10.0.0.0/8\", \"fd00::/64\"]\ngateway6 = \"fd01::1\"",
                "gateway6",
            ),
            (
                "pod_cidrs = [\"10.0.0.0/8\", \"fd00::/64\"]\ngateway6 = \"fd00::\"",
                "gateway6",
            ),
            (
                "pod_cidrs = [\"10.0.0.0/8\", \"fd00::/64\"]\ngateway6 = \"10.0.0.1\"",
                "gateway6",
            ),
            ("pod_cidrs = [\"10.88.0.5/16\"]", "pod_cidrs"),
            ("pod_cidrs = []", "pod_cidrs"),
            ("pod_cidrs = [\"10.0.0.0/8\", \"10.1.0.0/16\"]", "pod_cidrs"),
            ("pod_cidrs = [\"10.0.0.0/32\"]", "pod_cidrs"),
            ("gateway = \"10.99.0.1\"", "gateway"),
            ("gateway = \"10.88.0.0\"", "gateway"),
            ("gateway = \"10.88.255.255\"", "gateway"),
            ("gateway = \"nope\"", "gateway"),
            ("mtu = 67", "mtu"),
            ("mtu = 65536", "mtu"),
            ("mtu = -1", "mtu"),
            ("local_mtu = 67", "local_mtu"),
            ("local_mtu = 65536", "local_mtu"),
            ("local_mtu = -1", "local_mtu"),
            ("local_mtu = 4294967364", "local_mtu"),
            ("host_port = \"\"", "host_port"),
            ("host_port = \"abcdefghijklmn\"", "host_port"),
            ("host_port = \"a/b\"", "host_port"),
            ("log_level = \"loud\"", "log_level"),
            ("socket = \"\"", "socket"),
            ("metrics_listen = \"9469\"", "metrics_listen"),
            ("metrics_listen = \"localhost:9469\"", "metrics_listen"),
            ("metrics_listen = \"127.0.0.1\"", "metrics_listen"),
        ];
        for (text, field) in cases {
            match Config::parse(text) {
                Err(ConfigError::Invalid { field: f, msg }) => {
                    assert_eq!(f, *field, "{text}: {msg}");
                    assert!(!msg.is_empty());
                }
                other => panic!("{text}: expected invalid {field}, got {other:?}"),
            }
        }
    }

    #[test]
    fn unknown_fields_and_bad_toml_are_parse_errors() {
        for text in [
            "colour = \"blue\"",
            "mtu = \"big\"",
            "local_mtu = \"jumbo\"",
            "local_mtu = 9000.0",
            "pod_cidrs = [",
            "mtu = 1500\nmtu = 1400",
        ] {
            let err = Config::parse(text).unwrap_err();
            assert!(matches!(err, ConfigError::Parse { .. }), "{text}: {err}");
        }
    }

    #[test]
    fn pod_mtus_are_the_local_one_on_the_link_and_the_path_one_off_the_node() {
        let written = Config::parse("mtu = 1500").unwrap();
        let vxlan = over_uplink(1500);
        let jumbo_uplink = over_uplink(9000);
        let at_mtu = Config::parse("local_mtu = 1500").unwrap();
        let below = Config::parse("mtu = 1500\nlocal_mtu = 1400").unwrap();
        let (veth, tap) = (Attachment::Veth, Attachment::Tap);
        // The configuration; the attachment, its limit, the uplink's
        // frame limit and the network config's mtu; the MTUs the pod gets
        // (link, route).
        type Case<'a> = (
            &'a str,
            &'a Config,
            Attachment,
            Option<u32>,
            Option<u32>,
            Option<u32>,
            (u32, Option<u32>),
        );
        let up = Some(1778);
        #[rustfmt::skip]
        let cases: &[Case] = &[
            ("network mtu", &written, veth, Some(1778), None, Some(1400), (1400, None)),
            ("network mtu, tap", &written, tap, Some(65535), None, Some(9000), (9000, None)),
            ("network mtu too big", &written, veth, Some(1778), None, Some(9000), (9000, None)),
            ("today's veth", &written, veth, Some(1778), None, None, (1778, Some(1500))),
            ("default path", &Config::default(), veth, Some(1778), None, None, (1778, Some(1500))),
            ("jumbo veth", &written, veth, Some(28000), None, None, (28000, Some(1500))),
            ("veth at 9000", &written, veth, Some(9000), None, None, (9000, Some(1500))),
            ("VXLAN's path", &vxlan, veth, Some(28000), None, None, (28000, Some(1450))),
            ("local_mtu at mtu", &at_mtu, veth, Some(28000), None, None, (1500, None)),
            ("local_mtu below mtu", &below, veth, Some(1778), None, None, (1500, None)),
            ("limit at mtu", &written, veth, Some(1500), None, None, (1500, None)),
            ("limit below derived", &vxlan, veth, Some(1400), None, None, (1400, None)),
            ("limit unknown", &written, veth, None, None, None, (1500, None)),
            ("limit unknown, derived", &vxlan, veth, None, None, None, (1450, None)),
            ("tap", &written, tap, Some(65535), None, None, (1500, None)),
            ("tap, derived", &vxlan, tap, Some(65535), None, None, (1450, None)),
            ("VXLAN, uplink frames", &vxlan, veth, Some(28658), up, None, (28658, Some(1450))),
            ("jumbo uplink, veth", &jumbo_uplink, veth, Some(28658), up, None, (28658, Some(1778))),
            ("jumbo uplink, tap", &jumbo_uplink, tap, Some(65535), up, None, (8950, None)),
            ("no uplink, no cap", &written, veth, Some(28658), Some(1000), None, (28658, Some(1500))),
        ];
        for &(what, cfg, attachment, limit, uplink, cni, (link, route)) in cases {
            // The attachment's limit, whichever it is.
            let limits = limit.map(|l| MtuLimits {
                veth: l,
                tap: l,
                uplink,
            });
            let got = cfg.pod_mtus(attachment, limits, cni);
            assert_eq!(got, PodMtus { link, route }, "{what}");
        }
    }

    /// The installed `/etc/ferry/ferryd.toml` lists every field, commented
    /// out at its default: uncommenting all of them must give the defaults.
    #[test]
    fn service_cidrs_and_the_maglev_seed() {
        let c = Config::parse(
            "pod_cidrs = [\"10.88.0.0/16\", \"fd00:10:88::/64\"]\nservice_cidrs = [\"10.96.0.0/12\", \"fd00:96::/108\"]\n[services]\nmaglev_seed = 5\n",
        )
        .unwrap();
        assert_eq!(c.maglev_seed, 5);
        assert_eq!(
            c.service_cidrs_by_family(),
            (
                vec!["10.96.0.0/12".parse().unwrap()],
                vec!["fd00:96::/108".parse().unwrap()]
            )
        );
        assert_eq!(Config::parse(&c.to_toml()).unwrap(), c, "prints back");
        assert_eq!(Config::default().maglev_seed, DEFAULT_MAGLEV_SEED);
        assert!(Config::default().service_cidrs.is_empty());
        for (text, needle) in [
            ("service_cidrs = [\"10.96.0.1/12\"]", "host bits"),
            (
                "service_cidrs = [\"10.96.0.0/12\", \"10.100.0.0/16\"]",
                "one CIDR per family",
            ),
            (
                "service_cidrs = [\"10.88.0.0/24\"]",
                "overlaps the pod CIDR",
            ),
            ("service_cidrs = [\"fd00:96::/108\"]", "needs IPv6 pods"),
            ("service_cidrs = [\"web\"]", "not a CIDR"),
            ("[services]\nmaglev_seed = -1", "negative"),
        ] {
            let e = Config::parse(text).unwrap_err().to_string();
            assert!(e.contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn shipped_config_lists_every_field_at_its_default() {
        let shipped = include_str!("../../deploy/ferryd.toml");
        assert_eq!(Config::parse(shipped).unwrap(), Config::default());
        let uncommented: String = shipped
            .lines()
            .filter_map(|l| l.strip_prefix('#'))
            .filter(|l| l.contains(" = ") && !l.starts_with(' '))
            .map(|l| format!("{l}\n"))
            .collect();
        let mut shown = Config::parse(&uncommented).unwrap();
        // `mtu` unset is derived; shown at its single-node value.
        assert_eq!(shown.mtu_setting, Some(DEFAULT_MTU));
        shown.mtu_setting = None;
        assert_eq!(shown, Config::default());
        assert!(FIELDS_HELP.contains("  mtu "), "--help misses mtu");
        for line in Config::default().to_toml().lines() {
            let field = line.split(" = ").next().unwrap();
            assert!(
                uncommented
                    .lines()
                    .any(|l| l.starts_with(&format!("{field} = "))),
                "deploy/ferryd.toml does not show `{field}`"
            );
            assert!(
                FIELDS_HELP.contains(&format!("  {field} ")),
                "--help misses {field}"
            );
        }
    }

    /// An example in `deploy/ferryd.toml`: its lines "# key = " and
    /// "# [table]", uncommented.
    fn example_of(text: &str) -> String {
        text.lines()
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| {
                l.starts_with('[') || l.split_once(" = ").is_some_and(|(k, _)| !k.contains(' '))
            })
            .map(|l| format!("{l}\n"))
            .collect()
    }

    /// The shipped file's two examples: several nodes by hand, and a
    /// cluster through etcd.
    fn shipped_examples() -> (String, String) {
        let shipped = include_str!("../../deploy/ferryd.toml");
        let (by_hand, cluster) = shipped
            .split_once("# --- A cluster through etcd")
            .expect("deploy/ferryd.toml has the cluster example");
        (example_of(by_hand), example_of(cluster))
    }

    /// The several-nodes example is a valid configuration, and --help
    /// names its fields.
    #[test]
    fn shipped_uplink_example_parses() {
        let (example, _) = shipped_examples();
        let c = Config::parse(&format!("pod_cidrs = [\"10.70.1.0/24\"]\n{example}")).unwrap();
        let u = c.uplink.as_ref().expect("the example sets an uplink");
        assert_eq!(u.peers.len(), 1);
        for field in [
            "uplink",
            "node_address",
            "masquerade",
            "[overlay]",
            "mode",
            "vni",
            "port",
            "set_channels",
            "[[peers]]",
            "address",
            "pod_cidr",
        ] {
            assert!(
                FIELDS_HELP.contains(&format!("  {field} ")),
                "--help misses {field}"
            );
            assert!(example.contains(field), "the example misses {field}");
        }
    }

    /// The cluster example, on the uplink of the first (without its
    /// hand-written peers), is a valid configuration; --help names its
    /// fields.
    #[test]
    fn shipped_cluster_example_parses() {
        let (by_hand, cluster) = shipped_examples();
        let uplink = by_hand.split("[[peers]]").next().unwrap();
        let c = Config::parse(&format!("{uplink}{cluster}")).unwrap();
        let k = c.cluster.as_ref().expect("the example sets [cluster]");
        assert_eq!(k.cidr, "10.244.0.0/16".parse().unwrap());
        assert_eq!(k.node_name, "node-a");
        assert!(k.ca_file.is_some() && k.cert_file.is_some() && k.key_file.is_some());
        for field in [
            "[cluster]",
            "endpoints",
            "cidr",
            "block_len",
            "node_name",
            "prefix",
            "lease_ttl_s",
            "ca_file",
            "cert_file",
            "key_file",
        ] {
            assert!(
                FIELDS_HELP.contains(&format!("  {field} ")),
                "--help misses {field}"
            );
            assert!(cluster.contains(field), "the example misses {field}");
        }
    }

    #[test]
    fn ifnames_are_checked() {
        assert!(validate_ifname("eth0", 15).is_ok());
        assert!(validate_ifname("a234567890123456", 15).is_err());
        assert!(validate_ifname("a b", 15).is_err());
        assert!(validate_ifname("a:b", 15).is_err());
        assert!(validate_ifname("..", 15).is_err());
    }
}
