//! How the dataplane reaches peer nodes on the uplink: the node kernel's
//! own route and neighbour tables say it (RTM_GETROUTE for the next hop,
//! RTM_GETNEIGH for its MAC), and the kernel is asked to resolve what it
//! does not know yet.

use std::net::Ipv4Addr;

use ferry_api::table::Neighbour;

/// One [`Neighbour`] per peer of `peers`, in order, as reached on `uplink`.
pub fn resolve(uplink: &str, peers: &[Ipv4Addr]) -> Vec<Neighbour> {
    peers
        .iter()
        .map(|&p| Neighbour {
            node: p.into(),
            next_hop: p.into(),
            mac: None,
            state: format!("not resolved: neighbour resolution on {uplink} is not built yet"),
        })
        .collect()
}
