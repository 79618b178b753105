//! How the dataplane reaches peer nodes on the uplink: the node kernel's
//! own route and neighbour tables say it, read with rtnetlink from the
//! dataplane's namespace (the node's). Per peer: `RTM_GETROUTE` (a get for
//! the peer's /32) gives the output interface and gateway; a route that
//! does not leave through the uplink makes the peer unresolved, with the
//! interface it does leave by. The next hop (the gateway, or the peer
//! itself when on-link) is looked up with `RTM_GETNEIGH` on the uplink; an
//! entry in a usable state (reachable, stale, delay, probe, permanent,
//! noarp) with a link-layer address gives the MAC.
//!
//! Why the kernel's tables and not our own ARP: the node kernel already
//! resolves and ages these neighbours for its own traffic on the same link,
//! follows routing changes (a gateway, a second NIC, policy the operator
//! configured), answers the peers' ARP requests, and shows what it knows
//! to `ip neigh`; a second resolver in the dataplane would send a second
//! set of probes, disagree with the kernel during changes, and need its own
//! timers and TX path for ARP on the uplink.
//!
//! What the kernel does not know yet it is asked to resolve:
//! `RTM_NEWNEIGH` with `NLM_F_CREATE` and the flag `NTF_USE` (state
//! `NUD_NONE`). `NTF_USE` makes the kernel treat the entry as used by
//! traffic (`neigh_event_send`): a new or failed entry goes to INCOMPLETE
//! and an ARP request is broadcast, a STALE one goes to DELAY and then
//! PROBE (a unicast ARP to the MAC it has). It does not write the entry's
//! state or address, so an existing entry (a static one, say) is never
//! replaced; nothing is ever deleted, and routes are only read. The peer
//! is reported unresolved until a later call finds the answer.
//!
//! STALE entries are nudged the same way while they are used: ferry's
//! frames to the peer bypass the kernel, so the kernel never sees the entry
//! in use and would never re-check it. Nudged, a peer whose MAC changed is
//! followed: the unicast probes to the old MAC go unanswered, the entry
//! fails, the next call's nudge broadcasts, and the new MAC is reachable
//! (one reachable time plus a few probe intervals; [`resolve`] is called
//! every ~500 ms).
//!
//! Every netlink exchange is bounded in time ([`crate::io::link::Rtnl`]).

use std::io;
use std::net::Ipv4Addr;

use ferry_api::table::Neighbour;
use ferry_api::MacAddr;
use netlink_packet_core::{NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_REQUEST};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::io::link::{errno, Rtnl};

/// One [`Neighbour`] per peer of `peers`, in order, as reached on `uplink`.
pub fn resolve(uplink: &str, peers: &[Ipv4Addr]) -> Vec<Neighbour> {
    let ready = crate::io::afxdp::if_index(uplink)
        .ok_or_else(|| format!("unresolved: the uplink {uplink} does not exist"))
        .and_then(|ifindex| {
            Rtnl::open()
                .map(|rtnl| (ifindex, rtnl))
                .map_err(|e| format!("unresolved: opening an rtnetlink socket: {e}"))
        });
    match ready {
        Ok((ifindex, mut rtnl)) => peers
            .iter()
            .map(|&peer| resolve_one(&mut rtnl, uplink, ifindex, peer))
            .collect(),
        Err(state) => peers
            .iter()
            .map(|&peer| unresolved(peer, peer, state.clone()))
            .collect(),
    }
}

fn unresolved(node: Ipv4Addr, next_hop: Ipv4Addr, state: String) -> Neighbour {
    Neighbour {
        node: node.into(),
        next_hop: next_hop.into(),
        mac: None,
        state,
    }
}

/// Where the kernel routes `peer`: output interface and gateway.
struct RouteTo {
    oif: Option<u32>,
    gateway: Option<Ipv4Addr>,
    /// The gateway is not IPv4 (`RTA_VIA`, an IPv6 next hop).
    via_other: bool,
}

/// What the kernel's neighbour table holds for one address.
struct Entry {
    state: NeighbourState,
    mac: Option<MacAddr>,
}

fn resolve_one(rtnl: &mut Rtnl, uplink: &str, ifindex: u32, peer: Ipv4Addr) -> Neighbour {
    let route = match route_get(rtnl, peer) {
        Ok(r) => r,
        Err(e) => return unresolved(peer, peer, format!("unresolved: no route: {e}")),
    };
    if route.oif != Some(ifindex) {
        let dev = route
            .oif
            .and_then(if_name)
            .unwrap_or_else(|| "no interface".into());
        return unresolved(
            peer,
            route.gateway.unwrap_or(peer),
            format!("unresolved: routed via {dev}, not the uplink {uplink}"),
        );
    }
    if route.via_other {
        return unresolved(
            peer,
            peer,
            "unresolved: the route's gateway is not IPv4 (RTA_VIA)".into(),
        );
    }
    let hop = route.gateway.unwrap_or(peer);
    let entry = match neigh_get(rtnl, ifindex, hop) {
        Ok(e) => e,
        Err(e) => return unresolved(peer, hop, format!("unresolved: RTM_GETNEIGH: {e}")),
    };
    let usable = |s: &NeighbourState| {
        use NeighbourState::*;
        matches!(s, Reachable | Stale | Delay | Probe | Permanent | Noarp)
    };
    match entry {
        Some(Entry {
            state,
            mac: Some(mac),
        }) if usable(&state) => {
            // A STALE entry is re-checked (module comment); a failed
            // nudge leaves the MAC usable, so it is not reported.
            if state == NeighbourState::Stale {
                let _ = nudge(rtnl, ifindex, hop);
            }
            Neighbour {
                node: peer.into(),
                next_hop: hop.into(),
                mac: Some(mac),
                state: state.to_string(),
            }
        }
        other => {
            let state = other.map_or_else(|| "incomplete".to_string(), |e| e.state.to_string());
            match nudge(rtnl, ifindex, hop) {
                Ok(()) => unresolved(peer, hop, state),
                Err(e) => unresolved(
                    peer,
                    hop,
                    format!("{state}; asking the kernel to resolve it (RTM_NEWNEIGH): {e}"),
                ),
            }
        }
    }
}

fn answer_err(e: &netlink_packet_core::ErrorMessage) -> io::Error {
    match errno(e) {
        Some(n) => io::Error::from_raw_os_error(n),
        None => io::Error::other("an ACK where an answer was expected"),
    }
}

fn unexpected(what: &str, other: &NetlinkPayload<RouteNetlinkMessage>) -> io::Error {
    io::Error::other(format!("unexpected {what} answer {other:?}"))
}

fn route_get(rtnl: &mut Rtnl, peer: Ipv4Addr) -> io::Result<RouteTo> {
    let mut msg = RouteMessage::default();
    msg.header.address_family = AddressFamily::Inet;
    msg.header.destination_prefix_length = 32;
    msg.attributes
        .push(RouteAttribute::Destination(RouteAddress::Inet(peer)));
    match rtnl.request(RouteNetlinkMessage::GetRoute(msg), NLM_F_REQUEST)? {
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(route)) => {
            let mut to = RouteTo {
                oif: None,
                gateway: None,
                via_other: false,
            };
            for attr in route.attributes {
                match attr {
                    RouteAttribute::Oif(i) => to.oif = Some(i),
                    RouteAttribute::Gateway(RouteAddress::Inet(g)) => to.gateway = Some(g),
                    RouteAttribute::Via(_) => to.via_other = true,
                    _ => {}
                }
            }
            Ok(to)
        }
        NetlinkPayload::Error(e) => Err(answer_err(&e)),
        other => Err(unexpected("RTM_GETROUTE", &other)),
    }
}

fn neigh_message(ifindex: u32, hop: Ipv4Addr) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = AddressFamily::Inet;
    msg.header.ifindex = ifindex;
    msg.attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(hop)));
    msg
}

/// The entry for `hop` on `ifindex`; `None` when there is none.
fn neigh_get(rtnl: &mut Rtnl, ifindex: u32, hop: Ipv4Addr) -> io::Result<Option<Entry>> {
    let msg = neigh_message(ifindex, hop);
    match rtnl.request(RouteNetlinkMessage::GetNeighbour(msg), NLM_F_REQUEST)? {
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNeighbour(n)) => {
            let mac = n.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::LinkLayerAddress(l) => {
                    <[u8; 6]>::try_from(l.as_slice()).ok().map(MacAddr)
                }
                _ => None,
            });
            Ok(Some(Entry {
                state: n.header.state,
                mac,
            }))
        }
        NetlinkPayload::Error(e) if errno(&e) == Some(libc::ENOENT) => Ok(None),
        NetlinkPayload::Error(e) => Err(answer_err(&e)),
        other => Err(unexpected("RTM_GETNEIGH", &other)),
    }
}

/// Ask the kernel to (re)resolve `hop` on `ifindex` as if traffic used it:
/// `NTF_USE`, creating a `NUD_NONE` entry if there is none; an existing
/// entry's state and address are not written (module comment).
fn nudge(rtnl: &mut Rtnl, ifindex: u32, hop: Ipv4Addr) -> io::Result<()> {
    let mut msg = neigh_message(ifindex, hop);
    msg.header.state = NeighbourState::None;
    msg.header.flags = NeighbourFlags::Use;
    let flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE;
    match rtnl.request(RouteNetlinkMessage::NewNeighbour(msg), flags)? {
        NetlinkPayload::Error(e) if errno(&e).is_none() => Ok(()),
        NetlinkPayload::Error(e) => Err(answer_err(&e)),
        other => Err(unexpected("RTM_NEWNEIGH", &other)),
    }
}

/// The name of interface `index` in the calling thread's namespace.
fn if_name(index: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `buf` has IF_NAMESIZE bytes, as if_indextoname requires, and
    // lives across the call; a non-null return points into it.
    let r = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if r.is_null() {
        return None;
    }
    // SAFETY: on success `buf` holds a NUL-terminated name.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}
