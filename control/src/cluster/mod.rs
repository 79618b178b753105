//! The cluster: this node's pod CIDR (a block of the cluster CIDR) and the
//! other nodes', kept in a datastore every node shares.
//!
//! Layer: control plane, between the configuration and the agent. The
//! [`Datastore`] trait is the one seam: [`etcd::Etcd`] is the cluster's
//! (etcd v3: a block is a key created with a create-if-absent transaction
//! and kept in a lease), [`embedded::Embedded`] is the single node's (its
//! configured pod CIDRs and `[[peers]]`, nothing started). A Kubernetes API
//! implementation (Node objects' `spec.podCIDR`, a watch on Nodes) would be
//! a third, and nothing else changes.
//!
//! [`member::Member`] is this node's side: it claims the block at start,
//! renews it, watches the other nodes and turns each change into dataplane
//! routes through [`PeerTable`] (ARCHITECTURE.md, "The cluster datastore").
//!
//! This file holds the pure part: the records, the choice of a block, and
//! the checks a peer's record passes before it becomes a route.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use async_trait::async_trait;
use ferry_api::table::{NextHop, Route};
use ferry_api::MacAddr;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

pub mod embedded;
pub mod etcd;
pub mod local;
pub mod member;

/// A node's record in the datastore: what its peers need to reach its pods.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeRecord {
    /// The node's name (`[cluster] node_name`, default the hostname).
    pub name: String,
    /// Its address on its uplink: where VXLAN or direct traffic goes.
    pub address: Ipv4Addr,
    /// The pod CIDR it holds.
    pub block: Ipv4Net,
    /// Its IPv6 pod CIDR, in a dual-stack cluster: the block of the
    /// cluster's IPv6 CIDR with the index of `block` ([`Cidr6::block_of`]),
    /// held by the same claim. Absent from the records of an IPv4 cluster
    /// (which older ferryds read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block6: Option<Ipv6Net>,
    /// The MAC of its uplink (the VTEP).
    pub vtep_mac: MacAddr,
    /// `"vxlan"` or `"direct"`.
    pub overlay: String,
    /// The VXLAN network identifier (0 in direct mode).
    pub vni: u32,
    /// Unix seconds of the last renewal of its claim.
    pub renewed: u64,
}

/// The settings every node of a cluster must share: the first node writes
/// them, the others check theirs against them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSettings {
    pub cidr: Ipv4Net,
    pub block_len: u8,
    pub overlay: String,
    pub vni: u32,
    /// The IPv6 pods of a dual-stack cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v6: Option<Cidr6>,
}

/// A dual-stack cluster's IPv6 pod CIDR and the length of a node's IPv6
/// block. A node does not claim an IPv6 block of its own: its IPv6 block
/// is the one with the index its IPv4 block has in the IPv4 CIDR, so one
/// claim (one transaction, one lease) holds both and they cannot disagree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cidr6 {
    pub cidr: Ipv6Net,
    pub block_len: u8,
}

impl Cidr6 {
    /// The IPv6 block of the IPv4 `block` of `cidr` (blocks of
    /// `block_len`): `None` when `block` is not one of them or the IPv6
    /// CIDR has fewer blocks (the configuration refuses that).
    pub fn block_of(&self, cidr: Ipv4Net, block_len: u8, block: Ipv4Net) -> Option<Ipv6Net> {
        if !cidr.contains(&block) || block.prefix_len() != block_len || block.trunc() != block {
            return None;
        }
        let index = u128::from(
            (u32::from(block.network()) - u32::from(cidr.network()))
                .checked_shr(32 - u32::from(block_len))
                .unwrap_or(0),
        );
        let bits6 = u32::from(self.block_len - self.cidr.prefix_len());
        if bits6 < 128 && index >> bits6 != 0 {
            return None;
        }
        let offset = index.checked_shl(128 - u32::from(self.block_len))?;
        let network = u128::from(self.cidr.network()) | offset;
        Ipv6Net::new(network.into(), self.block_len).ok()
    }
}

impl ClusterSettings {
    /// The IPv6 block of the IPv4 `block`, in a dual-stack cluster.
    pub fn block6(&self, block: Ipv4Net) -> Option<Ipv6Net> {
        self.v6
            .and_then(|v6| v6.block_of(self.cidr, self.block_len, block))
    }

    /// Why `other` (the datastore's) cannot be joined with `self` (this
    /// node's configuration), if it cannot.
    pub fn mismatch(&self, other: &ClusterSettings) -> Option<String> {
        let v6 = |s: &ClusterSettings| {
            s.v6.map_or_else(
                || "no IPv6".to_string(),
                |v6| format!("cidr6 {} block_len6 {}", v6.cidr, v6.block_len),
            )
        };
        (self != other).then(|| {
            format!(
                "the cluster's settings are cidr {} block_len {} {} overlay {} vni {}; this node is configured with cidr {} block_len {} {} overlay {} vni {}",
                other.cidr, other.block_len, v6(other), other.overlay, other.vni,
                self.cidr, self.block_len, v6(self), self.overlay, self.vni
            )
        })
    }
}

/// What a datastore call failed with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DsError {
    /// The datastore cannot be reached (connection, timeout, TLS).
    #[error("datastore unreachable: {0}")]
    Unreachable(String),
    /// It answered, and the answer says no.
    #[error("{0}")]
    Refused(String),
    /// Every block of the cluster CIDR is held by another node.
    #[error("no free block of {cidr} (/{block_len}): every one is held by another node")]
    Full { cidr: Ipv4Net, block_len: u8 },
}

/// This node's hold on its block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub record: NodeRecord,
    /// The datastore's handle of the hold (an etcd lease id); 0: none.
    pub lease: i64,
}

/// What a watch reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A node's record was written (joined or renewed).
    Put(NodeRecord),
    /// The block's record is gone (the node left or its lease expired).
    Gone(Ipv4Net),
}

/// The other nodes as listed at `revision`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Listing {
    pub nodes: Vec<NodeRecord>,
    /// Records that could not be read, with why (key, reason).
    pub unreadable: Vec<(String, String)>,
    pub revision: i64,
}

/// One batch of a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    Changes {
        changes: Vec<Change>,
        /// Records that could not be read (key, reason).
        unreadable: Vec<(String, String)>,
        revision: i64,
    },
    /// The watch cannot go on from where it was (compacted, cancelled,
    /// connection lost): list again.
    Resync(String),
}

/// Where nodes find each other. Every call is bounded in time.
#[async_trait]
pub trait Datastore: Send + Sync {
    /// What the datastore is, for logs and STATUS (`etcd http://...`).
    fn describe(&self) -> String;
    /// The cluster's shared settings: written if absent, else read back
    /// (the caller compares).
    async fn settings(&self, mine: &ClusterSettings) -> Result<ClusterSettings, DsError>;
    /// Claim a block for `me` (its `block` ignored): the block this node
    /// already holds by name if its claim is alive, else `preferred` if
    /// free, else the first free block of `settings`.
    async fn claim(
        &self,
        me: &NodeRecord,
        settings: &ClusterSettings,
        preferred: Option<Ipv4Net>,
    ) -> Result<Claim, DsError>;
    /// Renew the claim (its record rewritten with `renewed` now). `Ok(false)`:
    /// the claim is lost (expired, or the block is someone else's now).
    async fn renew(&self, claim: &Claim, now: u64) -> Result<bool, DsError>;
    /// Give the block up (the node leaves the cluster).
    async fn release(&self, claim: &Claim) -> Result<(), DsError>;
    /// Give up every block held under `name` (`ferryd --leave`, without
    /// the claim at hand); returns them.
    async fn release_node(&self, name: &str) -> Result<Vec<Ipv4Net>, DsError>;
    /// Every node's record.
    async fn list(&self) -> Result<Listing, DsError>;
    /// Changes after `revision`, one batch per call to `next`.
    async fn watch(&self, revision: i64) -> Result<Box<dyn NodeWatch>, DsError>;
}

/// A running watch.
#[async_trait]
pub trait NodeWatch: Send {
    /// The next batch; waits until there is one.
    async fn next(&mut self) -> WatchEvent;
}

/// The blocks of `cidr` of length `len`, `preferred` first (if it is one).
pub fn candidate_blocks(
    cidr: Ipv4Net,
    len: u8,
    preferred: Option<Ipv4Net>,
) -> impl Iterator<Item = Ipv4Net> {
    let first = preferred.filter(|p| p.prefix_len() == len && cidr.contains(p) && p.trunc() == *p);
    let rest = cidr.subnets(len).into_iter().flatten();
    first
        .into_iter()
        .chain(rest.filter(move |b| Some(*b) != first))
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// How a peer's record became (or did not become) a route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteState {
    /// Routed: its block goes to its address.
    Routed,
    /// Not routed, and why.
    Refused(String),
}

/// A peer as this node holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerEntry {
    pub record: NodeRecord,
    pub state: RouteState,
}

/// What a peer's record must be to be routed, on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerRules {
    /// The cluster's settings; `None` for the embedded single node, whose
    /// peers are written in its own configuration (checked there).
    pub settings: Option<ClusterSettings>,
    pub me: NodeRecord,
    /// Direct mode: the uplink's subnets a peer must be inside.
    pub on_link: Option<Vec<Ipv4Net>>,
}

impl PeerRules {
    /// Why `r` is not routed, if it is not.
    pub fn refuse(&self, r: &NodeRecord) -> Option<String> {
        if let Some(s) = &self.settings {
            if !s.cidr.contains(&r.block)
                || r.block.prefix_len() != s.block_len
                || r.block.trunc() != r.block
            {
                return Some(format!(
                    "block {} is not a /{} of the cluster CIDR {}",
                    r.block, s.block_len, s.cidr
                ));
            }
            if r.block6 != s.block6(r.block) {
                return Some(match s.block6(r.block) {
                    Some(want) => format!(
                        "its IPv6 block is {}, not {want} (the one of block {})",
                        r.block6
                            .map_or_else(|| "absent".to_string(), |b| b.to_string()),
                        r.block
                    ),
                    None => "it has an IPv6 block in an IPv4 cluster".to_string(),
                });
            }
            if r.overlay != s.overlay || r.vni != s.vni {
                return Some(format!(
                    "it runs overlay {} vni {}, the cluster {} vni {}",
                    r.overlay, r.vni, s.overlay, s.vni
                ));
            }
        }
        if r.block == self.me.block
            || r.block.contains(&self.me.block)
            || self.me.block.contains(&r.block)
        {
            return Some(format!("block {} is this node's", r.block));
        }
        if let (Some(theirs), Some(mine)) = (r.block6, self.me.block6) {
            if theirs.contains(&mine) || mine.contains(&theirs) {
                return Some(format!("IPv6 block {theirs} is this node's"));
            }
        }
        if r.address == self.me.address {
            return Some(format!("address {} is this node's", r.address));
        }
        if r.address.is_unspecified()
            || r.address.is_loopback()
            || r.address.is_multicast()
            || r.address.is_broadcast()
        {
            return Some(format!(
                "address {} is not a node's unicast address",
                r.address
            ));
        }
        if let Some(subnets) = &self.on_link {
            if !subnets.iter().any(|n| n.contains(&r.address)) {
                return Some(format!(
                    "address {} is not on the uplink's link ({}): {}",
                    r.address,
                    subnets
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", "),
                    crate::config::OFF_LINK_PEER
                ));
            }
        }
        None
    }
}

/// The other nodes by block, with the routes they give. Changes come in as
/// [`Change`]s or whole listings and go out as route updates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerTable {
    peers: BTreeMap<Ipv4Net, PeerEntry>,
}

/// A route to add or take away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteUpdate {
    Upsert(Route),
    Remove(IpNet),
}

/// The routes a peer node gives: its block, and its IPv6 block if it is
/// dual-stack, both to its address (the overlay is IPv4).
pub fn node_routes(address: Ipv4Addr, block: Ipv4Net, block6: Option<Ipv6Net>) -> Vec<Route> {
    let blocks = std::iter::once(IpNet::from(block)).chain(block6.map(IpNet::from));
    blocks
        .map(|prefix| Route {
            prefix,
            next_hop: NextHop::Node(address.into()),
        })
        .collect()
}

fn routes_of(r: &NodeRecord) -> Vec<Route> {
    node_routes(r.address, r.block, r.block6)
}

/// The updates that turn the routes `was` into `now`.
fn route_diff(was: &[Route], now: &[Route]) -> Vec<RouteUpdate> {
    let gone = was
        .iter()
        .filter(|w| !now.iter().any(|n| n.prefix == w.prefix))
        .map(|w| RouteUpdate::Remove(w.prefix));
    let new = now
        .iter()
        .filter(|n| !was.contains(n))
        .map(|n| RouteUpdate::Upsert(n.clone()));
    gone.chain(new).collect()
}

impl PeerTable {
    pub fn entries(&self) -> impl Iterator<Item = &PeerEntry> {
        self.peers.values()
    }

    pub fn len(&self) -> usize {
        self.peers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// The routes of the routed peers, by block.
    pub fn routes(&self) -> Vec<Route> {
        self.peers
            .values()
            .filter(|p| p.state == RouteState::Routed)
            .flat_map(|p| routes_of(&p.record))
            .collect()
    }

    /// The routed peers' addresses.
    pub fn addresses(&self) -> Vec<Ipv4Addr> {
        self.peers
            .values()
            .filter(|p| p.state == RouteState::Routed)
            .map(|p| p.record.address)
            .collect()
    }

    /// Apply one change; returns the route updates it makes.
    pub fn apply(&mut self, rules: &PeerRules, change: Change) -> Vec<RouteUpdate> {
        let was = self.routed(match &change {
            Change::Put(r) => r.block,
            Change::Gone(b) => *b,
        });
        let block = match change {
            Change::Put(r) if r.name == rules.me.name && r.block == rules.me.block => {
                return Vec::new()
            }
            Change::Put(r) => {
                let state = match rules.refuse(&r) {
                    None => RouteState::Routed,
                    Some(why) => RouteState::Refused(why),
                };
                let block = r.block;
                self.peers.insert(block, PeerEntry { record: r, state });
                block
            }
            Change::Gone(b) => {
                self.peers.remove(&b);
                b
            }
        };
        route_diff(&was, &self.routed(block))
    }

    /// Replace everything with a listing; returns the route updates.
    pub fn replace(&mut self, rules: &PeerRules, nodes: Vec<NodeRecord>) -> Vec<RouteUpdate> {
        let mut next = PeerTable::default();
        for r in nodes {
            next.apply(rules, Change::Put(r));
        }
        let updates = route_diff(&self.routes(), &next.routes());
        *self = next;
        updates
    }

    /// The routes of the peer holding `block` (none unless it is routed).
    fn routed(&self, block: Ipv4Net) -> Vec<Route> {
        self.peers
            .get(&block)
            .filter(|p| p.state == RouteState::Routed)
            .map(|p| routes_of(&p.record))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests;
