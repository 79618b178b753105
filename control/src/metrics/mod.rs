//! The Prometheus endpoint: `GET /metrics` in the text exposition format
//! 0.0.4, served by ferryd on `metrics_listen`.
//!
//! Each scrape asks the dataplane for its `Stats` over the table API (the
//! same read-only request `ferryctl stats` makes) and reads the store for
//! endpoints and address usage, so nothing is cached and nothing is counted
//! twice; the pod-API server counts the requests it answers
//! ([`RequestCounters`]). [`render`] is a pure function of a [`Snapshot`];
//! the HTTP side is a deliberately small HTTP/1.1 server: one request per
//! connection, the request head bounded in size and time, anything it does
//! not understand answered with a 4xx (or 505) status and the connection
//! closed.

mod gather;
mod http;
mod render;

use ferry_api::table::Stats;

pub use gather::gather;
pub use http::{
    bind, response, route, serve, MetricsError, Route, CONTENT_TYPE, HEAD_TIMEOUT, MAX_CONNECTIONS,
    MAX_HEAD, WRITE_TIMEOUT,
};
pub use render::render;

/// Pod-API requests served, by command and the CNI error code answered
/// (0: success). Written by the pod-API server's tasks, once per request:
/// far from any hot path, so a mutex is fine.
#[derive(Debug, Default)]
pub struct RequestCounters {
    counts: std::sync::Mutex<std::collections::BTreeMap<(String, u32), u64>>,
}

impl RequestCounters {
    pub fn record(&self, command: &str, code: u32) {
        let mut m = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *m.entry((command.to_string(), code)).or_default() += 1;
    }

    /// (command, code, count), sorted.
    pub fn snapshot(&self) -> Vec<(String, u32, u64)> {
        let m = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        m.iter().map(|((c, k), n)| (c.clone(), *k, *n)).collect()
    }
}

/// Address usage of one node pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolUsage {
    /// The pool's subnet, e.g. `10.88.0.0/24`.
    pub pool: String,
    /// Addresses the pool can hand out.
    pub size: u64,
    /// Addresses allocated from it.
    pub allocated: u64,
}

/// Everything one scrape reports.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// The dataplane's counters, or why they could not be read.
    pub dataplane: Result<Stats, String>,
    /// Whether ferryd's table-API client is connected to the dataplane.
    pub dataplane_connected: bool,
    /// Ready endpoints in ferryd's store (`None`: the store could not be read).
    pub endpoints: Option<u64>,
    /// Of those, the ones whose pod is gone (kept until DEL or GC).
    pub stale_endpoints: u64,
    /// Whether the dataplane lacks its host port (the node cannot reach
    /// its pods).
    pub host_port_missing: bool,
    /// Per node pool (empty when the store could not be read).
    pub pools: Vec<PoolUsage>,
    /// Pod-API requests: (command, CNI code answered, count).
    pub requests: Vec<(String, u32, u64)>,
    /// The configured uplink, if any.
    pub uplink: Option<UplinkInfo>,
    /// Each configured peer and how the dataplane reaches it.
    pub peers: Vec<PeerState>,
    /// With `[cluster]`: the datastore and the peers it gave.
    pub cluster: Option<ClusterInfo>,
}

/// A `[cluster]` node's datastore and peers, for `ferry_cluster_*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterInfo {
    pub datastore: String,
    pub reachable: bool,
    /// Unix seconds since when `reachable` has been what it is.
    pub since: u64,
    pub block: Option<String>,
    pub peers_routed: u64,
    pub peers_refused: u64,
}

/// The configured uplink, for `ferry_uplink_info`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UplinkInfo {
    pub ifname: String,
    /// `vxlan` or `direct`.
    pub overlay: String,
    /// Why the dataplane has no port on it, if it has none.
    pub missing: Option<String>,
}

/// One peer node as the dataplane's neighbour table says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerState {
    pub node: std::net::IpAddr,
    /// Where its frames go on the uplink; `None` if the dataplane lists
    /// no neighbour for it (yet).
    pub next_hop: Option<std::net::IpAddr>,
    pub resolved: bool,
}

/// The configured peers (in order) joined with the dataplane's neighbours
/// (`Tables::neighbours`); a peer the dataplane does not list is
/// unresolved.
pub fn peer_states(
    peers: &[std::net::IpAddr],
    neighbours: &[ferry_api::table::Neighbour],
) -> Vec<PeerState> {
    peers
        .iter()
        .map(|&node| {
            let n = neighbours.iter().find(|n| n.node == node);
            PeerState {
                node,
                next_hop: n.map(|n| n.next_hop),
                resolved: n.is_some_and(|n| n.mac.is_some()),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_counters_count_by_command_and_code() {
        let c = RequestCounters::default();
        c.record("DEL", 0);
        c.record("ADD", 0);
        c.record("ADD", 0);
        c.record("ADD", 101);
        assert_eq!(
            c.snapshot(),
            vec![
                ("ADD".to_string(), 0, 2),
                ("ADD".to_string(), 101, 1),
                ("DEL".to_string(), 0, 1)
            ]
        );
    }
}
