//! The pod API: `ferry` (CNI binary, client) -> ferryd (server).
//!
//! One request and one response per CNI invocation, newline-delimited JSON
//! over ferryd's Unix socket. The CNI binary has already validated the CNI
//! environment and network configuration; ferryd does IPAM, plumbing and the
//! dataplane update, and answers with a version-neutral [`PodResult`] or a
//! [`PodError`] carrying the CNI error code to report.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::MacAddr;

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "UPPERCASE")]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
    Gc,
}

/// A range to allocate from, as in host-local's `ipam.ranges`.
/// `subnet` must lie inside one of the node's pod CIDRs.
///
/// Addresses in the pod API are family-generic (`IpNet`, `IpAddr`). The
/// ranges of one family form one range set (host-local's inner list): a
/// pod gets one address from the IPv4 ranges and one from the IPv6 ranges
/// of a request; ferryd answers error 7 for a family the node does not serve.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct RangeSpec {
    pub subnet: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range_start: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range_end: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    pub dst: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
}

/// IPAM part of the request, already parsed from the network config,
/// runtimeConfig (`ips` capability) and CNI_ARGS (`IP=`).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct IpamRequest {
    /// Empty: allocate from the node's pod CIDR(s) (ferryd config).
    #[serde(default)]
    pub ranges: Vec<RangeSpec>,
    /// Routes to install in the pod and report in the result. Empty: a
    /// default route via the gateway.
    #[serde(default)]
    pub routes: Vec<RouteSpec>,
    /// Specific addresses asked for, at most one per family; ADD fails if
    /// one is not free.
    #[serde(default)]
    pub requested: Vec<IpAddr>,
}

/// An attachment as named by `cni.dev/valid-attachments` (GC).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct AttachmentKey {
    pub container_id: String,
    pub ifname: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct PodRequest {
    pub command: Command,
    /// The network name from the config (`name`).
    pub network: String,
    #[serde(default)]
    pub container_id: String,
    /// Path of the pod network namespace; `None` when the runtime sent none
    /// (allowed for DEL, STATUS, GC).
    #[serde(default)]
    pub netns: Option<String>,
    #[serde(default)]
    pub ifname: String,
    /// CNI_ARGS as key/value pairs (K8S_POD_NAMESPACE, K8S_POD_NAME, ...).
    #[serde(default)]
    pub args: BTreeMap<String, String>,
    #[serde(default)]
    pub ipam: IpamRequest,
    /// Pod interface MTU override from the network config.
    #[serde(default)]
    pub mtu: Option<u32>,
    /// How the pod interface is made (network config `attachment`,
    /// overridden per pod by the `ferry.dev/attachment` annotation).
    #[serde(default)]
    pub attachment: crate::table::Attachment,
    /// GC only: everything else on this network is released.
    #[serde(default)]
    pub valid_attachments: Vec<AttachmentKey>,
    /// CHECK only: the result the runtime holds, to compare with reality.
    #[serde(default)]
    pub prev_result: Option<PodResult>,
    /// When the plugin stops waiting for the answer (milliseconds since
    /// the Unix epoch). ferryd rolls back an ADD it cannot finish by then
    /// rather than completing it behind the runtime's back. `None`: no
    /// deadline beyond ferryd's own bounds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
}

/// An attachment ferryd keeps but cannot serve: its pod's namespace or
/// link is gone (a node crash or reboot, a runtime that lost its DEL).
/// Kept, with its address, until DEL or GC names it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct StaleAttachment {
    /// Endpoint id (`<container id>/<ifname>`).
    pub endpoint: String,
    /// The address the attachment still holds (its IPv4 one if it has one).
    pub ip: std::net::IpAddr,
    /// Every address it holds, one per family (absent from a ferryd that
    /// predates IPv6: then `ip` is the only one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<std::net::IpAddr>,
    pub netns: String,
    /// What was found missing.
    pub reason: String,
}

impl StaleAttachment {
    /// `ips` as the attachment holds them (IPv4 first); `ip` is the first.
    pub fn new(
        endpoint: String,
        ips: Vec<std::net::IpAddr>,
        netns: String,
        reason: String,
    ) -> StaleAttachment {
        StaleAttachment {
            endpoint,
            ip: ips
                .first()
                .copied()
                .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into()),
            ips,
            netns,
            reason,
        }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub mac: MacAddr,
    /// Netns path for the pod interface; `None` for host-side interfaces.
    #[serde(default)]
    pub sandbox: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    pub address: IpNet,
    pub gateway: Option<IpAddr>,
    /// Index into `PodResult::interfaces`.
    pub interface: usize,
}

/// Version-neutral result of ADD (and what CHECK compares against).
/// DNS is not here: the CNI binary copies it from the network config.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct PodResult {
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<RouteSpec>,
}

/// A failure, with the CNI error code the binary must print.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{msg} ({details})")]
pub struct PodError {
    pub code: u32,
    pub msg: String,
    #[serde(default)]
    pub details: String,
}

/// CNI error codes (spec section "Error"), plus ferry's own (100+).
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO: u32 = 5;
    pub const DECODE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    pub const NOT_AVAILABLE: u32 = 50;
    pub const LIMITED_CONNECTIVITY: u32 = 51;
    /// ferry: a kernel operation (netlink, netns) failed while plumbing.
    pub const PLUMBING_FAILED: u32 = 100;
    /// ferry: no free address left in the range(s).
    pub const POOL_EXHAUSTED: u32 = 101;
    /// ferry: an explicitly requested address is taken or outside the ranges.
    pub const ADDRESS_UNAVAILABLE: u32 = 102;
    /// ferry: CHECK found the pod's interface differing from the result.
    pub const CHECK_MISMATCH: u32 = 103;
    /// ferry: the state store failed.
    pub const STORE: u32 = 104;
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum PodResponse {
    /// ADD: `Some(result)`; DEL/CHECK/GC: `None`.
    Ok {
        result: Option<PodResult>,
    },
    /// STATUS: ready (ADD can be served) or why not. `code` is the CNI
    /// code of a not-ready answer (50 not available, 51 limited
    /// connectivity); 0 or absent when ready, 50 when absent otherwise.
    Status {
        ready: bool,
        msg: String,
        #[serde(default, skip_serializing_if = "is_zero")]
        code: u32,
        /// Attachments whose pod is gone (they never make STATUS fail).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        stale: Vec<StaleAttachment>,
        /// The cluster as this node sees it (`None` from a ferryd that
        /// does not say).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cluster: Option<Box<ClusterView>>,
    },
    Error(PodError),
}

/// The cluster as a node sees it (STATUS, `ferryctl nodes`).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ClusterView {
    /// What the datastore is (`embedded ...`, `etcd http://...`).
    pub datastore: String,
    /// Whether the datastore answered the last call.
    pub reachable: bool,
    /// Why it did not, or what else is wrong with this node's claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Unix seconds since when `reachable` has been what it is.
    pub since: u64,
    /// This node; `None` while it holds no block yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeView>,
    /// The other nodes, by block.
    #[serde(default)]
    pub peers: Vec<NodeView>,
}

/// One node of a [`ClusterView`].
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    pub name: String,
    pub address: IpAddr,
    pub block: IpNet,
    /// Its IPv6 block, in a dual-stack cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block6: Option<IpNet>,
    pub vtep_mac: MacAddr,
    /// `vxlan` or `direct`.
    pub overlay: String,
    pub vni: u32,
    /// Unix seconds of its last renewal (0: never, or not kept in a lease).
    pub renewed: u64,
    /// `self`, `routed`, or `refused: <why>`.
    pub route: String,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// ferryd's default socket for the pod API.
pub const DEFAULT_FERRYD_SOCKET: &str = "/run/ferry/ferryd.sock";
/// ferry-dataplane's default socket for the table API.
pub const DEFAULT_DATAPLANE_SOCKET: &str = "/run/ferry/dataplane.sock";
