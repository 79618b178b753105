//! The packet pipeline: a pure function from (frames, table snapshot, time)
//! to one verdict per frame.
//!
//! Contract (see ARCHITECTURE.md "Pipeline"): no I/O, no locks, no
//! allocation, no logging, no clock reads. Frames may be rewritten in place
//! (and may change length within their buffer's capacity). Every frame gets
//! exactly one verdict. Packet bytes are read only through the checked views
//! of [`wire`]; no input can make the pipeline panic (fuzzed and
//! property-tested).

use crate::core::wire::checksum;
use crate::core::{offload, verdict, wire};

#[cfg(test)]
pub(crate) mod fixtures;
mod ipv6;
#[cfg(test)]
mod ipv6_tests;
mod nat;
#[cfg(test)]
mod nat_tests;
#[cfg(test)]
mod overlay_tests;
mod policy;
#[cfg(test)]
mod policy_tests;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

pub use offload::{CsumState, Offload};
pub use verdict::{DropReason, Verdict};

use std::net::Ipv4Addr;

use crate::core::service::addr_key as service_key;
use crate::core::tables::{
    Encap, EndpointEntry, PeerHop, PortId, PortRole, RouteTarget, Tables, UplinkEntry,
};
use wire::vxlan::{self, Outer, OuterError, Tunnel, OUTER_LEN};
use wire::{Arp, Ethernet, Ipv4, Ipv4Error};

/// TTL of the packets the pipeline originates (echo replies, ICMP errors).
pub const REPLY_TTL: u8 = 64;
/// TOS of ICMP errors (internetwork control, as Linux sends them).
const ICMP_ERROR_TOS: u8 = 0xc0;

/// Headroom every frame buffer of the I/O layer keeps in front of the
/// data, so an outer header is prepended in place ([`Frame::prepend`])
/// instead of moving the frame: at least a VXLAN encapsulation
/// ([`VXLAN_OVERHEAD`]), a whole number of cache lines.
pub const FRAME_HEADROOM: usize = 64;
/// Outer Ethernet + IPv4 + UDP + VXLAN headers.
pub const VXLAN_OVERHEAD: usize = 50;
const _: () = assert!(FRAME_HEADROOM >= VXLAN_OVERHEAD && FRAME_HEADROOM.is_multiple_of(64));

/// One received frame. `buf` is the whole buffer the frame sits in: the
/// data is `buf[headroom..headroom + len]`, the bytes before it are free
/// for headers to prepend, those after it bound how far a reply may grow.
/// `offload` is its virtio-net header (tap ports; [`Offload::NONE`]
/// elsewhere) and `csum` the state of its L4 checksum, classified from the
/// header when the frame is made and, for [`CsumState::Unknown`], by the
/// pipeline. A partial checksum is forwarded partial: the egress side
/// ([`offload::finish`]) completes it (or segments the frame) only if the
/// egress port needs it. A reply the pipeline makes in place leaves with
/// `Offload::NONE` and a complete checksum.
pub struct Frame<'a> {
    pub port: PortId,
    pub buf: &'a mut [u8],
    pub headroom: usize,
    pub len: usize,
    pub offload: Offload,
    pub csum: CsumState,
    /// Bytes of outer headers at the front of the frame (a VXLAN
    /// encapsulation the pipeline prepended); `offload` and `csum`
    /// describe the frame after them, the inner one, which is what the
    /// egress side finishes (and segments, each segment behind its own
    /// copy of the outer headers, [`vxlan::fix_outer`]).
    pub outer: usize,
}

impl<'a> Frame<'a> {
    /// A plain frame at the start of `buf` (no headroom).
    pub fn new(port: PortId, buf: &'a mut [u8], len: usize) -> Self {
        Frame::with_offload(port, buf, len, Offload::NONE)
    }

    /// A frame at the start of `buf` that came with the header `offload`.
    pub fn with_offload(port: PortId, buf: &'a mut [u8], len: usize, offload: Offload) -> Self {
        Frame::in_buffer(port, buf, 0, len, offload)
    }

    /// A frame whose data starts `headroom` bytes into `buf` (clamped to
    /// the buffer), with its checksum state classified from `offload`.
    pub fn in_buffer(
        port: PortId,
        buf: &'a mut [u8],
        headroom: usize,
        len: usize,
        offload: Offload,
    ) -> Self {
        Frame {
            port,
            headroom: headroom.min(buf.len()),
            buf,
            len,
            csum: CsumState::at_ingress(&offload),
            offload,
            outer: 0,
        }
    }

    /// The frame's bytes.
    pub fn bytes(&self) -> &[u8] {
        let data = &self.buf[self.headroom..];
        &data[..self.len.min(data.len())]
    }

    /// The buffer from the frame's first byte to the end (the frame is its
    /// first `len` bytes).
    pub fn room_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.headroom..]
    }

    /// Grow the frame by `n` bytes at the front, taken from the headroom,
    /// without moving it; the new first `n` bytes are returned to be
    /// written. `None` (the frame unchanged) when the headroom is smaller.
    pub fn prepend(&mut self, n: usize) -> Option<&mut [u8]> {
        let at = self.headroom.checked_sub(n)?;
        let len = self.len.min(self.buf.len() - self.headroom);
        self.headroom = at;
        self.len = len + n;
        Some(&mut self.buf[at..at + n])
    }
}

/// Decide the fate of every frame in `frames`, writing `verdicts[i]` for
/// `frames[i]`. `verdicts.len()` must be at least `frames.len()`; extra
/// frames beyond `verdicts.len()` are left untouched.
/// `now_ns` is the batch timestamp (monotonic nanoseconds).
pub fn process_batch(
    tables: &Tables,
    now_ns: u64,
    frames: &mut [Frame<'_>],
    verdicts: &mut [Verdict],
) {
    if let Some(ct) = tables.conntrack() {
        ct.sweep_step(now_ns);
    }
    for (frame, verdict) in frames.iter_mut().zip(verdicts.iter_mut()) {
        *verdict = process_frame_at(tables, now_ns, frame);
    }
}

/// The single-frame decision at time 0 (for tests and tools without a
/// clock; connection-table timeouts count from there).
pub fn process_frame(tables: &Tables, frame: &mut Frame<'_>) -> Verdict {
    process_frame_at(tables, 0, frame)
}

/// The single-frame decision (the reference the batch path must agree
/// with) at monotonic time `now_ns`.
pub fn process_frame_at(tables: &Tables, now_ns: u64, frame: &mut Frame<'_>) -> Verdict {
    let Some(role) = tables.port_role(frame.port) else {
        return Verdict::Drop(DropReason::UnknownPort);
    };
    // From a peer node: in VXLAN mode, take the outer headers off first
    // (the rest of the pipeline sees the inner frame).
    let peer = match role {
        PortRole::Uplink => match decap(tables, frame) {
            Ok(peer) => peer,
            Err(reason) => return Verdict::Drop(reason),
        },
        _ => None,
    };
    let buf = &mut frame.buf[frame.headroom..];
    let len = frame.len.min(buf.len());
    let ethertype = match Ethernet::new_checked(&mut buf[..len]) {
        Ok(eth) => eth.ethertype(),
        Err(reason) => return Verdict::Drop(reason),
    };
    if matches!(
        ethertype,
        wire::ETHERTYPE_ARP | wire::ETHERTYPE_IPV4 | wire::ETHERTYPE_IPV6
    ) {
        // A tap's header is trusted only once it fits the frame (the egress
        // side writes where it points).
        if let Err(reason) = offload::check(&buf[..len], &frame.offload) {
            return Verdict::Drop(reason);
        }
    }
    let l3 = match ethertype {
        wire::ETHERTYPE_ARP => None,
        wire::ETHERTYPE_IPV4 => Some(ipv4 as L3Decision),
        wire::ETHERTYPE_IPV6 => Some(ipv6::ipv6 as L3Decision),
        _ => return Verdict::Drop(DropReason::UnsupportedEthertype),
    };
    let verdict = match l3 {
        None => arp(tables, role, &mut buf[..len]),
        Some(decide) => {
            let (verdict, new_len, tunnel) = decide(
                (tables, now_ns),
                (role, peer),
                frame.port,
                buf,
                len,
                (&frame.offload, &mut frame.csum),
            );
            frame.len = new_len;
            match tunnel {
                Some(t) => encap(frame, &t).map_or_else(Verdict::Drop, |()| verdict),
                None => verdict,
            }
        }
    };
    // Replies made in place are plain frames with complete checksums.
    if matches!(verdict, Verdict::Reply | Verdict::IcmpError { .. }) {
        frame.offload = Offload::NONE;
        frame.csum = CsumState::Complete;
    }
    verdict
}

/// The decisions of one IP family ([`ipv4`], `ipv6::ipv6`): tables and
/// the batch time, ingress role and VXLAN peer, ingress port, the buffer from the frame's
/// start, the frame length, its offload header and checksum state; the
/// verdict, new frame length and tunnel to encapsulate in.
type L3Decision = fn(
    (&Tables, u64),
    (PortRole, Option<Ipv4Addr>),
    PortId,
    &mut [u8],
    usize,
    (&Offload, &mut CsumState),
) -> (Verdict, usize, Option<Tunnel>);

/// Proxy ARP: answer requests with the router MAC.
fn arp(tables: &Tables, role: PortRole, frame: &mut [u8]) -> Verdict {
    let router = tables.router_mac().octets();
    let Ok(mut eth) = Ethernet::new_checked(frame) else {
        return Verdict::Drop(DropReason::Runt);
    };
    let requester = {
        let mut arp = match Arp::new_checked(eth.payload_mut()) {
            Ok(a) => a,
            Err(reason) => return Verdict::Drop(reason),
        };
        match arp.operation() {
            wire::ARP_OP_REQUEST => {}
            // We never ask, so replies are never for us.
            wire::ARP_OP_REPLY => return Verdict::Drop(DropReason::ArpNotForUs),
            _ => return Verdict::Drop(DropReason::Malformed),
        }
        let target = arp.target_ip();
        let answer = match role {
            PortRole::Pod { ip, .. } => {
                ip.is_some_and(|ip| target != ip) && target != arp.sender_ip()
            }
            // The node kernel routes the pod CIDRs, local and remote, and
            // the service CIDRs onto the host port and asks for each
            // address there.
            PortRole::Host => {
                tables.endpoint(target).is_some()
                    || matches!(tables.route(target), Some(RouteTarget::Node(_)))
                    || tables.is_service_ip(target.into())
            }
            // ARP on the uplink is the node kernel's (the classifier passes
            // it); one inside a VXLAN packet is nobody's.
            PortRole::Uplink => false,
        };
        if !answer {
            return Verdict::Drop(DropReason::ArpNotForUs);
        }
        let requester = arp.sender_mac();
        arp.make_reply(router);
        requester
    };
    eth.set_dst(requester);
    eth.set_src(router);
    Verdict::Reply
}

/// Where an IPv4 packet goes after the table lookups.
enum Destination {
    Pod(EndpointEntry),
    Host,
    /// A peer node's pod CIDR, through the uplink.
    Node(PeerHop),
}

impl Destination {
    /// The local pod's port, for a pod here.
    fn pod_port(&self) -> Option<PortId> {
        match self {
            Destination::Pod(ep) => Some(ep.port),
            Destination::Host | Destination::Node(_) => None,
        }
    }
}

/// The policy stage of one packet: what it judges (`Packet` as the pods'
/// addresses show it: after service translation for a request, before it
/// for a reply) and the pod that sent it, if one here did.
struct Police<'t> {
    tables: &'t Tables,
    now: u64,
    packet: Option<policy::Packet>,
    from: Option<PortId>,
}

impl<'t> Police<'t> {
    fn new<F: nat::Flow>(
        tables: &'t Tables,
        now: u64,
        before: Option<policy::Packet>,
        reply: bool,
        ip: &F,
        origin: Origin,
        ingress: PortId,
    ) -> Police<'t> {
        let packet = match (reply, tables.policy()) {
            (true, _) => before,
            (false, Some(_)) => Some(policy::Packet::of(ip)),
            (false, None) => None,
        };
        Police {
            tables,
            now,
            packet,
            from: (origin == Origin::Pod).then_some(ingress),
        }
    }

    /// Judge the packet on its way to the local pod on `to` (if any).
    fn check(&self, to: Option<PortId>) -> Result<(), Verdict> {
        match (self.tables.policy(), &self.packet) {
            (Some(pol), Some(p)) => policy::admit(pol, self.now, p, self.from, to),
            _ => Ok(()),
        }
    }
}

/// Where an IPv4 packet came from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// A local pod (its source checked): the pipeline routes it, TTL and
    /// all.
    Pod,
    /// The node kernel (it routed the packet already).
    Host,
    /// A peer node's pod or kernel, through the uplink: delivered here,
    /// never routed on.
    Peer,
    /// A client outside the cluster, to a NodePort on the node's uplink
    /// address: translated to a backend here or on a peer.
    Outside,
}

/// Where a packet goes, by the lookups of its family for its
/// destination: the gateway is the node kernel's; then the pod owning the
/// address, the longest route, nothing inside a pod CIDR (`no_endpoint`),
/// the node kernel outside them. A peer's packet is delivered here or
/// nowhere (`not_local`).
fn destination(
    origin: Origin,
    to_gateway: bool,
    endpoint: impl FnOnce() -> Option<EndpointEntry>,
    route: impl FnOnce() -> Option<RouteTarget>,
    in_pod_cidr: impl FnOnce() -> bool,
) -> Result<Destination, DropReason> {
    let destination = if to_gateway {
        Destination::Host
    } else if let Some(ep) = endpoint() {
        Destination::Pod(ep)
    } else {
        match route() {
            Some(RouteTarget::Endpoint(ep)) => Destination::Pod(ep),
            Some(RouteTarget::Host) => Destination::Host,
            Some(RouteTarget::Node(hop)) => Destination::Node(hop),
            Some(RouteTarget::Blackhole | RouteTarget::Unresolved) => {
                return Err(DropReason::NoRoute)
            }
            None if in_pod_cidr() => return Err(DropReason::NoEndpoint),
            None => Destination::Host,
        }
    };
    if origin == Origin::Peer && !(matches!(destination, Destination::Pod(_)) || to_gateway) {
        return Err(DropReason::NotLocal);
    }
    // From outside only to a backend, here or on a peer.
    if origin == Origin::Outside
        && !matches!(destination, Destination::Pod(_) | Destination::Node(_))
    {
        return Err(DropReason::NotLocal);
    }
    Ok(destination)
}

/// The IPv4 decisions. `buf` is the buffer from the frame's start, `len`
/// the frame length (`14 <= len <= buf.len()`); `role` the ingress port's,
/// with the outer source of a VXLAN packet (`peer`); `offload`: the
/// frame's virtio-net header (a GSO frame is judged against the egress MTU
/// by its segments); `csum`: its checksum state, classified here if
/// unknown (a partial checksum is left for the egress side). Returns the
/// verdict, the new frame length, and the tunnel to encapsulate the frame
/// in when it goes to a peer node in VXLAN mode.
fn ipv4(
    (tables, now): (&Tables, u64),
    (role, peer): (PortRole, Option<Ipv4Addr>),
    ingress: PortId,
    buf: &mut [u8],
    len: usize,
    (offload, csum): (&Offload, &mut CsumState),
) -> (Verdict, usize, Option<Tunnel>) {
    let drop = |reason| (Verdict::Drop(reason), len, None);
    let router = tables.router_mac().octets();
    let gateway = tables.gateway();
    let Ok(eth) = Ethernet::new_checked(&mut buf[..len]) else {
        return drop(DropReason::Runt);
    };
    let sender_mac = eth.src();
    let reply_to = ReplyTo {
        ingress,
        mac: sender_mac,
        router,
    };
    let no_tunnel = |(verdict, len): (Verdict, usize)| (verdict, len, None);

    let (egress, new_dst_mac, new_src_mac, tunnel) = {
        let mut ip = match Ipv4::new_checked(&mut buf[wire::ETH_HDR_LEN..len]) {
            Ok(ip) => ip,
            Err(Ipv4Error::Malformed) => return drop(DropReason::Malformed),
            Err(Ipv4Error::BadChecksum) => return drop(DropReason::BadIpChecksum),
        };
        let origin = match role {
            PortRole::Pod { ip: pod_ip, .. } => {
                if Some(ip.src()) != pod_ip {
                    return drop(DropReason::SpoofedSource);
                }
                Origin::Pod
            }
            PortRole::Host => Origin::Host,
            // To the node's own address: a NodePort request from outside
            // (the classifier passes no other traffic to the node address).
            PortRole::Uplink
                if peer.is_none() && tables.uplink().is_some_and(|u| u.address == ip.dst()) =>
            {
                Origin::Outside
            }
            PortRole::Uplink => {
                // Only a peer's pods (and its kernel, from its gateway
                // address) send to us; through VXLAN, only from the peer
                // that owns the source's CIDR.
                match tables.route(ip.src()) {
                    Some(RouteTarget::Node(hop)) if peer.is_none_or(|p| p == hop.node) => {
                        Origin::Peer
                    }
                    _ => return drop(DropReason::UnknownPeer),
                }
            }
        };
        let outside = (origin == Origin::Outside).then_some(sender_mac);
        let mut to_uplink = None;
        // Policy judges a reply as it was before translation: read it now
        // (only translation makes replies, so only with services).
        let before = tables
            .policy()
            .and(tables.services())
            .map(|_| policy::Packet::of(&ip));
        let mut reply = false;
        if let Some(svc) = tables.services() {
            let hairpin = service_key(gateway.into());
            match nat::translate(svc, now, &mut ip, csum, (hairpin, outside)) {
                Ok(nat::Outcome::Pass) => {}
                Ok(nat::Outcome::Reply) => reply = true,
                Ok(nat::Outcome::ToUplink(mac)) => (to_uplink, reply) = (Some(mac), true),
                // From outside there is no reply to make here (it would
                // leave by the uplink from its MAC): dropped.
                Ok(nat::Outcome::Reject) if outside.is_some() => {
                    return drop(DropReason::ServiceNoEndpoints)
                }
                Ok(nat::Outcome::Reject) => {
                    drop_view(ip);
                    return no_tunnel(nat::reject4(buf, len, reply_to));
                }
                Err(reason) => return drop(reason),
            }
        }
        let police = Police::new(tables, now, before, reply, &ip, origin, ingress);
        if origin == Origin::Outside && to_uplink.is_none() && ip.dst() == ip_dst_node(tables) {
            // Not a service's node port (translation left it as it was).
            return drop(DropReason::NotLocal);
        }
        if let Some(mac) = to_uplink {
            // The reply of a NodePort flow, back to where its request came
            // from, straight out of the uplink.
            let Some(up) = tables.uplink() else {
                return drop(DropReason::NoUplink);
            };
            if let Err(verdict) = police.check(None) {
                return (verdict, len, None);
            }
            if wire_len(&ip, offload) > up.mtu as usize {
                return drop(DropReason::FragNeeded);
            }
            if let Err(reason) = classify_l4_checksum(&mut ip, csum) {
                return drop(reason);
            }
            drop_view(ip);
            let verdict = match set_macs(buf, len, mac, up.mac.octets()) {
                Ok(()) => Verdict::Tx(up.port),
                Err(reason) => Verdict::Drop(reason),
            };
            return (verdict, len, None);
        }
        let from_pod = origin == Origin::Pod;
        let dst = ip.dst();

        if dst == gateway
            && origin != Origin::Peer
            && ip.protocol() == wire::IP_PROTO_ICMP
            && ip.is_unfragmented()
        {
            match echo_reply(&mut ip) {
                Some(Ok(())) => {
                    drop_view(ip);
                    let verdict = match set_macs(buf, len, sender_mac, router) {
                        Ok(()) => Verdict::Reply,
                        Err(reason) => Verdict::Drop(reason),
                    };
                    return (verdict, len, None);
                }
                Some(Err(reason)) => return drop(reason),
                // Other ICMP for the gateway: the node kernel owns it.
                None => {}
            }
        }

        let destination = match destination(
            origin,
            dst == gateway,
            || tables.endpoint(dst),
            || tables.route(dst),
            || tables.is_pod_cidr(dst),
        ) {
            Ok(d) => d,
            Err(reason) => return drop(reason),
        };
        if let Err(verdict) = police.check(destination.pod_port()) {
            return (verdict, len, None);
        }

        match destination {
            Destination::Pod(ep) => {
                if from_pod && ip.ttl() <= 1 {
                    let expired = Offending::of(&ip);
                    return no_tunnel(time_exceeded(expired, gateway, buf, len, reply_to));
                }
                if let Some(mtu) = ep.mtu {
                    if wire_len(&ip, offload) > mtu as usize {
                        if matches!(origin, Origin::Peer | Origin::Outside) {
                            // The error would have to go back through the
                            // tunnel; the peer's pods are sized to the
                            // overlay MTU, so only a pod MTU below it gets
                            // here.
                            let reason = if ip.dont_fragment() {
                                DropReason::FragNeeded
                            } else {
                                DropReason::TooBigNoDf
                            };
                            return drop(reason);
                        }
                        // The node kernel drops ICMP from its own address
                        // (the gateway) as a martian: towards it the error
                        // comes from the pod it could not reach.
                        let from = if from_pod { gateway } else { dst };
                        let too_big = Offending::of(&ip);
                        return no_tunnel(frag_needed(too_big, mtu, from, buf, len, reply_to));
                    }
                }
                if let Err(reason) = classify_l4_checksum(&mut ip, csum) {
                    return drop(reason);
                }
                // Host -> pod was routed (and its TTL decremented) by the
                // node kernel already; a peer's packet by the peer.
                if from_pod {
                    ip.decrement_ttl();
                }
                (ep.port, ep.mac.octets(), router, None)
            }
            Destination::Host => {
                if origin == Origin::Host {
                    // The kernel sent it to us; sending it back would loop.
                    return drop(DropReason::NoRoute);
                }
                let Some(host) = tables.host_port() else {
                    return drop(DropReason::NoHostPort);
                };
                if wire_len(&ip, offload) > host.mtu as usize {
                    if origin == Origin::Peer {
                        return drop(DropReason::FragNeeded);
                    }
                    let too_big = Offending::of(&ip);
                    return no_tunnel(frag_needed(too_big, host.mtu, gateway, buf, len, reply_to));
                }
                if let Err(reason) = classify_l4_checksum(&mut ip, csum) {
                    return drop(reason);
                }
                (host.port, host.kernel_mac.octets(), router, None)
            }
            Destination::Node(hop) => {
                if from_pod && ip.ttl() <= 1 {
                    let expired = Offending::of(&ip);
                    return no_tunnel(time_exceeded(expired, gateway, buf, len, reply_to));
                }
                let Some(up) = tables.uplink() else {
                    return drop(DropReason::NoUplink);
                };
                if wire_len(&ip, offload) > up.mtu as usize {
                    if origin == Origin::Outside {
                        return drop(DropReason::FragNeeded);
                    }
                    let from = if from_pod { gateway } else { dst };
                    let too_big = Offending::of(&ip);
                    return no_tunnel(frag_needed(too_big, up.mtu, from, buf, len, reply_to));
                }
                let Some(mac) = hop.mac else {
                    return drop(DropReason::NeighbourUnresolved);
                };
                if let Err(reason) = classify_l4_checksum(&mut ip, csum) {
                    return drop(reason);
                }
                if from_pod {
                    ip.decrement_ttl();
                }
                to_peer(&up, hop.node, mac.octets(), router)
            }
        }
    };
    let verdict = match set_macs(buf, len, new_dst_mac, new_src_mac) {
        Ok(()) => Verdict::Tx(egress),
        Err(reason) => Verdict::Drop(reason),
    };
    (verdict, len, tunnel)
}

/// Egress port and MACs of a packet for the peer `node` reached at `mac`:
/// in direct mode the frame itself goes to the peer's MAC from the
/// uplink's; in VXLAN mode the inner frame goes router to router and the
/// tunnel carries the uplink's addresses.
fn to_peer(
    up: &UplinkEntry,
    node: Ipv4Addr,
    mac: [u8; 6],
    router: [u8; 6],
) -> (PortId, [u8; 6], [u8; 6], Option<Tunnel>) {
    match up.encap {
        Encap::Direct => (up.port, mac, up.mac.octets(), None),
        Encap::Vxlan { vni, port } => {
            let tunnel = Tunnel {
                src_mac: up.mac.octets(),
                dst_mac: mac,
                src: up.address,
                dst: node,
                port,
                vni,
            };
            (up.port, router, router, Some(tunnel))
        }
    }
}

/// Take the VXLAN headers off a frame from the uplink (VXLAN mode): the
/// frame becomes the inner one, and the outer source is returned. In
/// direct mode frames are not encapsulated: `None`.
fn decap(tables: &Tables, frame: &mut Frame<'_>) -> Result<Option<Ipv4Addr>, DropReason> {
    let Some(up) = tables.uplink() else {
        return Err(DropReason::UnknownPort);
    };
    let Encap::Vxlan { vni, port } = up.encap else {
        return Ok(None);
    };
    if to_node_port(tables, frame.bytes(), up.address) {
        // TCP or UDP to a NodePort of the node's address: not VXLAN.
        return Ok(None);
    }
    let outer = Outer::parse(frame.bytes(), up.address, port, vni).map_err(|e| match e {
        OuterError::Malformed => DropReason::VxlanMalformed,
        OuterError::NotForUs => DropReason::VxlanNotForUs,
        OuterError::WrongVni => DropReason::VxlanWrongVni,
    })?;
    frame.headroom += outer.inner_at;
    frame.len = outer.inner_len;
    Ok(Some(outer.src))
}

/// Whether `frame` is IPv4 TCP or UDP to a NodePort of `node`.
fn to_node_port(tables: &Tables, frame: &[u8], node: Ipv4Addr) -> bool {
    let Some(svc) = tables.services() else {
        return false;
    };
    let l3 = wire::ETH_HDR_LEN;
    if frame.len() < l3 + wire::IPV4_MIN_HDR_LEN || wire::get_u16(frame, 12) != wire::ETHERTYPE_IPV4
    {
        return false;
    }
    let ip = &frame[l3..];
    let hl = usize::from(ip[0] & 0x0f) * 4;
    if ip[0] >> 4 != 4 || ip.len() < hl + 4 || ip[16..20] != node.octets() {
        return false;
    }
    matches!(ip[9], wire::IP_PROTO_TCP | wire::IP_PROTO_UDP)
        && svc
            .table
            .by_node_port(wire::get_u16(ip, hl + 2), ip[9])
            .is_some()
}

/// Put the outer headers of `tunnel` in front of the frame, in its
/// headroom (the frame does not move).
fn encap(frame: &mut Frame<'_>, tunnel: &Tunnel) -> Result<(), DropReason> {
    if frame.prepend(OUTER_LEN).is_none() {
        return Err(DropReason::NoHeadroom);
    }
    let end = frame.headroom + frame.len;
    let (outer, inner) = frame.buf[frame.headroom..end].split_at_mut(OUTER_LEN);
    vxlan::write_outer(outer, tunnel, inner, vxlan::flow_port(inner));
    frame.outer = OUTER_LEN;
    Ok(())
}

/// The node's uplink address (unspecified without an uplink).
fn ip_dst_node(tables: &Tables) -> Ipv4Addr {
    tables.uplink().map_or(Ipv4Addr::UNSPECIFIED, |u| u.address)
}

/// End a view's borrow explicitly (readability at early returns).
fn drop_view(_ip: Ipv4<'_>) {}

/// Set the Ethernet addresses of `buf[..len]`.
fn set_macs(buf: &mut [u8], len: usize, dst: [u8; 6], src: [u8; 6]) -> Result<(), DropReason> {
    let mut eth = Ethernet::new_checked(&mut buf[..len])?;
    eth.set_dst(dst);
    eth.set_src(src);
    Ok(())
}

/// If `ip` (unfragmented ICMP) is an echo request, turn it into the echo
/// reply in place and return `Some(Ok)`; a request with a bad checksum gives
/// `Some(Err)`; any other ICMP message `None`.
fn echo_reply(ip: &mut Ipv4<'_>) -> Option<Result<(), DropReason>> {
    {
        let icmp = ip.payload_mut();
        if icmp.len() < wire::ICMP_HDR_LEN || icmp[0] != wire::ICMP_ECHO_REQUEST || icmp[1] != 0 {
            return None;
        }
        if checksum::fold(checksum::add_bytes(0, icmp)) != 0xffff {
            return Some(Err(DropReason::BadL4Checksum));
        }
        let old = wire::get_u16(icmp, 0);
        icmp[0] = wire::ICMP_ECHO_REPLY;
        let new = wire::get_u16(icmp, 0);
        let hc = wire::get_u16(icmp, 2);
        wire::set_u16(icmp, 2, checksum::update16(hc, old, new));
    }
    ip.make_reply_header(REPLY_TTL);
    Some(Ok(()))
}

/// What an ICMP error needs to know about the packet it reports.
struct Offending {
    header_len: usize,
    data_len: usize,
    frag_offset: u16,
    dont_fragment: bool,
    /// The ICMP type, when the packet is ICMP with at least one data byte.
    icmp_type: Option<u8>,
    src: Ipv4Addr,
}

impl Offending {
    fn of(ip: &Ipv4<'_>) -> Offending {
        let is_icmp = ip.protocol() == wire::IP_PROTO_ICMP;
        Offending {
            header_len: ip.header_len(),
            data_len: ip.total_len() - ip.header_len(),
            frag_offset: ip.frag_offset(),
            dont_fragment: ip.dont_fragment(),
            icmp_type: if is_icmp {
                ip.payload().first().copied()
            } else {
                None
            },
            src: ip.src(),
        }
    }

    /// RFC 1812 4.3.2.7: no ICMP error about a non-first fragment or about
    /// an ICMP error.
    fn may_be_answered(&self) -> bool {
        self.frag_offset == 0
            && !matches!(
                self.icmp_type,
                Some(
                    wire::ICMP_DEST_UNREACHABLE
                        | wire::ICMP_SOURCE_QUENCH
                        | wire::ICMP_REDIRECT
                        | wire::ICMP_TIME_EXCEEDED
                        | wire::ICMP_PARAMETER_PROBLEM
                )
            )
    }
}

/// The IPv4 length of each packet this frame becomes on the egress link:
/// its total length, or for a GSO frame the length of one segment (as
/// Linux checks forwarded GSO skbs, `skb_gso_validate_network_len`). The
/// TCP header length is read from the frame; a GSO header that does not
/// match it is the egress side's to refuse (`bad_offload`).
fn wire_len(ip: &Ipv4<'_>, offload: &Offload) -> usize {
    let total = ip.total_len();
    let l4 = ip.payload();
    let l4_hdr = match (offload.gso(), ip.protocol()) {
        (offload::GSO_TCPV4, wire::IP_PROTO_TCP) if l4.len() >= wire::TCP_MIN_HDR_LEN => {
            usize::from(l4[12] >> 4) * 4
        }
        (offload::GSO_UDP, wire::IP_PROTO_UDP) => wire::UDP_HDR_LEN,
        _ => return total,
    };
    total.min(ip.header_len() + l4_hdr + usize::from(offload.gso_size))
}

/// Where an ICMP error about a frame goes: out of its ingress port, to
/// the MAC it came from, from the router MAC.
#[derive(Clone, Copy)]
struct ReplyTo {
    ingress: PortId,
    mac: [u8; 6],
    router: [u8; 6],
}

/// Replace the frame with an ICMP time exceeded (type 11 code 0) from the
/// gateway to the sender, quoting the IP header and 8 bytes of data.
fn time_exceeded(
    ip: Offending,
    gateway: Ipv4Addr,
    buf: &mut [u8],
    len: usize,
    to: ReplyTo,
) -> (Verdict, usize) {
    let error = (wire::ICMP_TIME_EXCEEDED, 0, [0; 4]);
    match icmp_error(ip, error, gateway, buf, to) {
        Some(new_len) => (Verdict::Reply, new_len),
        None => (Verdict::Drop(DropReason::TtlExceeded), len),
    }
}

/// A packet larger than the egress `mtu`. DF set: replace the frame with an
/// ICMP destination unreachable, fragmentation needed (type 3 code 4) from
/// `from` to the sender carrying `mtu` as the next-hop MTU (RFC 1191), so
/// its TCP lowers the path MTU instead of losing the packet. DF clear:
/// drop it; ferry does not fragment (a fragment is a frame of its own, and
/// the pipeline turns one frame into one frame). Either way the original
/// counts as dropped. No rate limit: one error per offending packet, which
/// a sender that honours it stops sending (Linux limits ICMP errors per
/// destination; a token bucket here would need the batch clock and
/// per-source state).
fn frag_needed(
    ip: Offending,
    mtu: u32,
    from: Ipv4Addr,
    buf: &mut [u8],
    len: usize,
    to: ReplyTo,
) -> (Verdict, usize) {
    if !ip.dont_fragment {
        return (Verdict::Drop(DropReason::TooBigNoDf), len);
    }
    let mtu = u16::try_from(mtu).unwrap_or(u16::MAX).to_be_bytes();
    let error = (
        wire::ICMP_DEST_UNREACHABLE,
        wire::ICMP_FRAG_NEEDED,
        [0, 0, mtu[0], mtu[1]],
    );
    match icmp_error(ip, error, from, buf, to) {
        Some(new_len) => (
            Verdict::IcmpError {
                port: to.ingress,
                reason: DropReason::FragNeeded,
            },
            new_len,
        ),
        None => (Verdict::Drop(DropReason::FragNeeded), len),
    }
}

/// Replace the frame in `buf` with the ICMP error `(type, code, bytes 4..8
/// of the ICMP header)` about `ip`, from `from` to the packet's source,
/// quoting the IP header and 8 bytes of data (RFC 792, RFC 1812 4.3.2.3),
/// addressed as `to` says. Returns the new frame length, or `None` when
/// the error may not be sent (RFC 1812 4.3.2.7) or does not fit.
fn icmp_error(
    ip: Offending,
    (icmp_type, code, rest): (u8, u8, [u8; 4]),
    from: Ipv4Addr,
    buf: &mut [u8],
    to: ReplyTo,
) -> Option<usize> {
    if !ip.may_be_answered() {
        return None;
    }
    let (header_len, data_len, sender) = (ip.header_len, ip.data_len, ip.src);

    let quoted = header_len + data_len.min(8);
    let l3_len = wire::IPV4_MIN_HDR_LEN + wire::ICMP_HDR_LEN + quoted;
    let new_len = wire::ETH_HDR_LEN + l3_len;
    let icmp_at = wire::ETH_HDR_LEN + wire::IPV4_MIN_HDR_LEN;
    let quote_at = icmp_at + wire::ICMP_HDR_LEN;
    if new_len > buf.len() {
        return None;
    }
    // The quote moves right by 28 bytes: copy_within is a memmove.
    buf.copy_within(wire::ETH_HDR_LEN..wire::ETH_HDR_LEN + quoted, quote_at);
    wire::write_ipv4_header(
        &mut buf[wire::ETH_HDR_LEN..icmp_at],
        ICMP_ERROR_TOS,
        l3_len as u16,
        REPLY_TTL,
        wire::IP_PROTO_ICMP,
        from,
        sender,
    );
    let icmp = &mut buf[icmp_at..new_len];
    icmp[..4].copy_from_slice(&[icmp_type, code, 0, 0]);
    icmp[4..wire::ICMP_HDR_LEN].copy_from_slice(&rest);
    let c = checksum::checksum(icmp);
    wire::set_u16(icmp, 2, c);
    let mut eth = Ethernet::new_checked(&mut buf[..new_len]).ok()?;
    eth.set_dst(to.mac);
    eth.set_src(to.router);
    Some(new_len)
}

/// The TCP/UDP checksum rule for forwarded frames whose checksum state is
/// [`CsumState::Unknown`] (a frame of a veth), decided once here from the
/// headers alone: a field holding the folded pseudo-header sum (as Linux
/// leaves a `CHECKSUM_PARTIAL` frame) is [`CsumState::Partial`], left for
/// the egress side to complete if the egress port needs it; any other is
/// [`CsumState::Complete`], and forwarded as it is without reading the
/// payload, as a router does: the receiving stack verifies it (a wrong one
/// is its `InCsumErrors`; a translated frame's stays wrong, the update
/// being incremental). Fragments are complete as far as we are concerned
/// (the L4 message is not whole here). A known state (a tap's header) is
/// not judged again.
fn classify_l4_checksum(ip: &mut Ipv4<'_>, csum: &mut CsumState) -> Result<(), DropReason> {
    if *csum != CsumState::Unknown {
        return Ok(());
    }
    if !ip.is_unfragmented() {
        *csum = CsumState::Complete;
        return Ok(());
    }
    let proto = ip.protocol();
    let src = ip.src_octets();
    let dst = ip.dst_octets();
    // The L4 header follows the IP header; both fit a u16 (total <= 65535).
    let start = (wire::ETH_HDR_LEN + ip.header_len()) as u16;
    let payload = ip.payload_mut();
    let (field_at, l4_len) = match proto {
        wire::IP_PROTO_TCP => {
            if payload.len() < wire::TCP_MIN_HDR_LEN {
                return Err(DropReason::Malformed);
            }
            (wire::TCP_CHECKSUM_OFFSET, payload.len())
        }
        wire::IP_PROTO_UDP => {
            if payload.len() < wire::UDP_HDR_LEN {
                return Err(DropReason::Malformed);
            }
            let udp_len = usize::from(wire::get_u16(payload, 4));
            if udp_len < wire::UDP_HDR_LEN || udp_len > payload.len() {
                return Err(DropReason::Malformed);
            }
            if wire::get_u16(payload, wire::UDP_CHECKSUM_OFFSET) == 0 {
                // UDP over IPv4 without a checksum.
                *csum = CsumState::Complete;
                return Ok(());
            }
            (wire::UDP_CHECKSUM_OFFSET, udp_len)
        }
        _ => {
            *csum = CsumState::Complete;
            return Ok(());
        }
    };
    // l4_len <= total_len <= 65535.
    let pseudo = checksum::pseudo_header(src, dst, proto, l4_len as u16);
    *csum = classify_segment(pseudo, &payload[..l4_len], field_at, start);
    Ok(())
}

/// The checksum state of a whole forwarded TCP/UDP `segment` (either
/// family) whose pseudo-header sums to `pseudo`, with its checksum field
/// at `field_at` and the segment at `start` in the frame: partial when the
/// field holds the folded pseudo-header sum, complete otherwise (not
/// verified: only the field is read).
fn classify_segment(pseudo: u64, segment: &[u8], field_at: usize, start: u16) -> CsumState {
    let partial = checksum::fold(pseudo);
    let field = wire::get_u16(segment, field_at);
    // 0x0000 and 0xffff are the same number in ones' complement; a TCP
    // field of 0 can only mean a partial sum of 0xffff (UDP 0 = no checksum
    // was handled by the caller).
    if field == partial || (field == 0 && partial == 0xffff) {
        CsumState::Partial {
            start,
            offset: field_at as u16,
        }
    } else {
        CsumState::Complete
    }
}
