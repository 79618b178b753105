//! The IPv6 decisions: neighbour discovery answered for the pods (as proxy
//! ARP is for IPv4), ICMPv6 echo for the gateway, forwarding with the hop
//! limit, ICMPv6 time exceeded and packet too big, the source check.
//!
//! Link-local and multicast traffic never leaves the link it came from:
//! neighbour solicitations are answered here with the router MAC (for the
//! gateway and, as a proxy, for every other address a pod asks for), and
//! everything else link-scoped is dropped under a reason of its own (DAD
//! probes, router solicitations, MLD reports), never flooded to the node
//! kernel.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::{
    classify_segment, destination, nat, offload, policy, set_macs, to_peer, wire, Destination,
    DropReason, Offload, Origin, Police, ReplyTo, Verdict, REPLY_TTL,
};
use crate::core::offload::CsumState;
use crate::core::tables::{PortId, PortRole, RouteTarget, Tables};
use wire::ipv6::{
    self as v6, ExtError, Ipv6, UpperLayer, IPV6_HDR_LEN, IPV6_MIN_MTU, IP_PROTO_ICMPV6,
};
use wire::vxlan::Tunnel;

/// Where the L3 header starts in the frame.
const L3: usize = wire::ETH_HDR_LEN;

/// The IPv6 decisions, with the arguments and results of the IPv4 ones
/// (`super::ipv4`).
pub(super) fn ipv6(
    (tables, now): (&Tables, u64),
    (role, peer): (PortRole, Option<Ipv4Addr>),
    ingress: PortId,
    buf: &mut [u8],
    len: usize,
    (offload, csum): (&Offload, &mut CsumState),
) -> (Verdict, usize, Option<Tunnel>) {
    let drop = |reason| (Verdict::Drop(reason), len, None);
    let no_tunnel = |(verdict, len): (Verdict, usize)| (verdict, len, None);
    let Some(gateway) = tables.gateway6() else {
        return drop(DropReason::Ipv6Unsupported);
    };
    let router = tables.router_mac().octets();
    let Ok(eth) = wire::Ethernet::new_checked(&mut buf[..len]) else {
        return drop(DropReason::Runt);
    };
    let reply_to = ReplyTo {
        ingress,
        mac: eth.src(),
        router,
    };

    let (egress, new_dst_mac, new_src_mac, tunnel) = {
        let Ok(mut ip) = Ipv6::new_checked(&mut buf[L3..len]) else {
            return drop(DropReason::Malformed);
        };
        let upper = match ip.upper_layer() {
            Ok(u) => u,
            Err(ExtError::Truncated) => return drop(DropReason::Malformed),
            Err(ExtError::TooMany) => return drop(DropReason::Ipv6ExtHeaders),
        };
        let (src, dst) = (ip.src(), ip.dst());
        if dst.is_multicast() || v6::is_link_local(&dst) || v6::is_link_local(&src) {
            // Link scope: neighbour discovery or nothing. A peer's never
            // gets here legitimately (the overlay carries routed traffic).
            if matches!(role, PortRole::Uplink) {
                return drop(DropReason::UnknownPeer);
            }
            let verdict = match link_scope(tables, role, &ip, upper) {
                Ok((target, asker)) => match neighbour_advert(target, asker, buf, reply_to) {
                    Some(new_len) => (Verdict::Reply, new_len),
                    None => (Verdict::Drop(DropReason::Malformed), len),
                },
                Err(reason) => (Verdict::Drop(reason), len),
            };
            return no_tunnel(verdict);
        }
        let origin = match role {
            PortRole::Pod { ip6, .. } => {
                if Some(src) != ip6 {
                    return drop(DropReason::SpoofedSource);
                }
                Origin::Pod
            }
            PortRole::Host => Origin::Host,
            PortRole::Uplink => match tables.route6(src) {
                Some(RouteTarget::Node(hop)) if peer.is_none_or(|p| p == hop.node) => Origin::Peer,
                _ => return drop(DropReason::UnknownPeer),
            },
        };
        let before = tables
            .policy()
            .and(tables.services())
            .map(|_| policy::Packet::of(&Flow6 { ip: &mut ip, upper }));
        let mut reply = false;
        if let Some(svc) = tables.services() {
            let mut flow = Flow6 { ip: &mut ip, upper };
            let hairpin = u128::from(gateway);
            match nat::translate(svc, now, &mut flow, csum, (hairpin, None)) {
                Ok(nat::Outcome::Pass) => {}
                // NodePorts are IPv4: no IPv6 flow leaves by the uplink.
                Ok(nat::Outcome::Reply | nat::Outcome::ToUplink(_)) => reply = true,
                Ok(nat::Outcome::Reject) => {
                    let offending = Offending::of(&ip, upper);
                    return no_tunnel(reject6(offending, upper, buf, len, reply_to));
                }
                Err(reason) => return drop(reason),
            }
        }
        let police = {
            let flow = Flow6 { ip: &mut ip, upper };
            Police::new(tables, now, before, reply, &flow, origin, ingress)
        };
        // The service stage may have translated the destination.
        let dst = ip.dst();
        let from_pod = origin == Origin::Pod;

        if dst == gateway && origin != Origin::Peer {
            match echo_reply(&mut ip, upper) {
                Some(Ok(())) => {
                    let verdict = match set_macs(buf, len, reply_to.mac, router) {
                        Ok(()) => Verdict::Reply,
                        Err(reason) => Verdict::Drop(reason),
                    };
                    return (verdict, len, None);
                }
                Some(Err(reason)) => return drop(reason),
                // Anything else for the gateway: the node kernel's.
                None => {}
            }
        }

        let destination = match destination(
            origin,
            dst == gateway,
            || tables.endpoint6(dst),
            || tables.route6(dst),
            || tables.is_pod_cidr6(dst),
        ) {
            Ok(d) => d,
            Err(reason) => return drop(reason),
        };
        if let Err(verdict) = police.check(destination.pod_port()) {
            return (verdict, len, None);
        }
        // The routed (non-Host) destinations are checked against the hop
        // limit the pipeline decrements; Host-bound packets are routed on
        // by the node kernel, which does its own.
        let routed_by_us = from_pod && !matches!(destination, Destination::Host);
        if routed_by_us && ip.hop_limit() <= 1 {
            let expired = Offending::of(&ip, upper);
            return no_tunnel(icmp_error(
                expired,
                TIME_EXCEEDED,
                gateway,
                buf,
                len,
                reply_to,
            ));
        }
        let egress_mtu = match &destination {
            Destination::Pod(ep) => ep.mtu,
            Destination::Host => match tables.host_port() {
                Some(h) => Some(h.mtu),
                None => return drop(DropReason::NoHostPort),
            },
            Destination::Node(_) => match tables.uplink() {
                Some(up) => Some(up.mtu),
                None => return drop(DropReason::NoUplink),
            },
        };
        if let Some(mtu) = egress_mtu {
            if wire_len(&ip, upper, offload) > mtu as usize {
                if origin == Origin::Peer {
                    return drop(DropReason::PacketTooBig);
                }
                // Towards the node kernel the error comes from the
                // address it could not reach (it drops ICMPv6 from its
                // own gateway address as it does for IPv4).
                let from = if from_pod { gateway } else { dst };
                let too_big = Offending::of(&ip, upper);
                let error = (v6::ICMPV6_PACKET_TOO_BIG, 0, mtu.to_be_bytes());
                return no_tunnel(icmp_error(too_big, error, from, buf, len, reply_to));
            }
        }
        if let Err(reason) = classify_l4_checksum6(&mut ip, upper, csum) {
            return drop(reason);
        }
        if routed_by_us {
            ip.decrement_hop_limit();
        }
        match destination {
            Destination::Pod(ep) => (ep.port, ep.mac.octets(), router, None),
            Destination::Host => {
                if origin == Origin::Host {
                    // The kernel sent it to us; sending it back would loop.
                    return drop(DropReason::NoRoute);
                }
                let Some(host) = tables.host_port() else {
                    return drop(DropReason::NoHostPort);
                };
                (host.port, host.kernel_mac.octets(), router, None)
            }
            Destination::Node(hop) => {
                let Some(up) = tables.uplink() else {
                    return drop(DropReason::NoUplink);
                };
                let Some(mac) = hop.mac else {
                    return drop(DropReason::NeighbourUnresolved);
                };
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

/// A link-scoped packet (to multicast or link-local, or from link-local)
/// from a pod or the node kernel: a neighbour solicitation to answer gives
/// its target and the asker's address; anything else why it is dropped.
fn link_scope(
    tables: &Tables,
    role: PortRole,
    ip: &Ipv6<'_>,
    upper: UpperLayer,
) -> Result<(Ipv6Addr, Ipv6Addr), DropReason> {
    let drop = Err;
    let (src, dst) = (ip.src(), ip.dst());
    let not_nd = if dst.is_multicast() {
        DropReason::Ipv6Multicast
    } else {
        DropReason::Ipv6LinkLocal
    };
    if upper.protocol != IP_PROTO_ICMPV6 || upper.offset != IPV6_HDR_LEN || upper.fragment {
        return drop(not_nd);
    }
    let message = ip.payload();
    let Some(&kind) = message.first() else {
        return drop(DropReason::Malformed);
    };
    let nd = matches!(
        kind,
        v6::ND_ROUTER_SOLICIT
            | v6::ND_ROUTER_ADVERT
            | v6::ND_NEIGHBOUR_SOLICIT
            | v6::ND_NEIGHBOUR_ADVERT
            | v6::ND_REDIRECT
    );
    if !nd {
        return drop(not_nd);
    }
    // RFC 4861 7.1.1 (and 6.1.1 for router solicitations): hop limit 255,
    // code 0, a valid checksum, the fixed part present.
    let pseudo = v6::pseudo_header(&src, &dst, IP_PROTO_ICMPV6, message.len() as u32);
    let valid = ip.hop_limit() == v6::ND_HOP_LIMIT
        && message.len() >= 8
        && message[1] == 0
        && wire::checksum::fold(wire::checksum::add_bytes(pseudo, message)) == 0xffff;
    if !valid {
        return drop(DropReason::NdInvalid);
    }
    match kind {
        v6::ND_NEIGHBOUR_SOLICIT => {}
        v6::ND_ROUTER_SOLICIT => return drop(DropReason::RouterSolicit),
        v6::ND_ROUTER_ADVERT => return drop(DropReason::NdInvalid),
        _ => return drop(DropReason::NdNotForUs),
    }
    if message.len() < v6::ND_NS_LEN {
        return drop(DropReason::NdInvalid);
    }
    let mut t = [0u8; 16];
    t.copy_from_slice(&message[8..24]);
    let target = Ipv6Addr::from(t);
    if target.is_multicast() {
        return drop(DropReason::NdInvalid);
    }
    if src.is_unspecified() {
        return drop(DropReason::NdDad);
    }
    let answer = match role {
        // Every address but its own is behind the router, for a pod:
        // other pods, the gateway, anything off the node.
        PortRole::Pod { ip6, .. } => Some(target) != ip6 && target != src,
        // The node kernel routes the pod CIDRs onto the host port and asks
        // for each address there.
        PortRole::Host => {
            tables.endpoint6(target).is_some()
                || matches!(tables.route6(target), Some(RouteTarget::Node(_)))
                || tables.is_service_ip(target.into())
        }
        PortRole::Uplink => false,
    };
    if !answer {
        return drop(DropReason::NdNotForUs);
    }
    Ok((target, src))
}

/// Replace the frame with a solicited neighbour advertisement for
/// `target` (router, solicited and override flags, the router MAC as the
/// target link-layer address) from `target` to `dst`, sent to `to`.
fn neighbour_advert(target: Ipv6Addr, dst: Ipv6Addr, buf: &mut [u8], to: ReplyTo) -> Option<usize> {
    let new_len = L3 + IPV6_HDR_LEN + v6::ND_NA_LEN;
    if buf.len() < new_len {
        return None;
    }
    v6::write_ipv6_header(
        &mut buf[L3..],
        v6::ND_NA_LEN as u16,
        IP_PROTO_ICMPV6,
        v6::ND_HOP_LIMIT,
        target,
        dst,
    );
    let na = &mut buf[L3 + IPV6_HDR_LEN..new_len];
    na[..4].copy_from_slice(&[v6::ND_NEIGHBOUR_ADVERT, 0, 0, 0]);
    na[4..8].copy_from_slice(&[
        v6::ND_NA_ROUTER | v6::ND_NA_SOLICITED | v6::ND_NA_OVERRIDE,
        0,
        0,
        0,
    ]);
    na[8..24].copy_from_slice(&target.octets());
    na[24..26].copy_from_slice(&[v6::ND_OPT_TARGET_LLADDR, 1]);
    na[26..32].copy_from_slice(&to.router);
    let c = v6::icmpv6_checksum(&target, &dst, na);
    wire::set_u16(na, 2, c);
    set_macs(buf, new_len, to.mac, to.router).ok()?;
    Some(new_len)
}

/// If `ip` is an ICMPv6 echo request (unfragmented, no extension
/// headers), turn it into the echo reply in place and return `Some(Ok)`;
/// a request with a bad checksum gives `Some(Err)`; anything else `None`.
fn echo_reply(ip: &mut Ipv6<'_>, upper: UpperLayer) -> Option<Result<(), DropReason>> {
    if upper.protocol != IP_PROTO_ICMPV6 || upper.offset != IPV6_HDR_LEN || upper.fragment {
        return None;
    }
    let (src, dst) = (ip.src(), ip.dst());
    {
        let icmp = ip.payload_mut();
        if icmp.len() < 8 || icmp[0] != v6::ICMPV6_ECHO_REQUEST || icmp[1] != 0 {
            return None;
        }
        let pseudo = v6::pseudo_header(&src, &dst, IP_PROTO_ICMPV6, icmp.len() as u32);
        if wire::checksum::fold(wire::checksum::add_bytes(pseudo, icmp)) != 0xffff {
            return Some(Err(DropReason::BadL4Checksum));
        }
        // Swapping the addresses leaves the pseudo-header sum as it was:
        // only the type changes.
        let old = wire::get_u16(icmp, 0);
        icmp[0] = v6::ICMPV6_ECHO_REPLY;
        let new = wire::get_u16(icmp, 0);
        let hc = wire::get_u16(icmp, 2);
        wire::set_u16(icmp, 2, wire::checksum::update16(hc, old, new));
    }
    ip.make_reply_header(REPLY_TTL);
    Some(Ok(()))
}

/// ICMPv6 time exceeded, hop limit exceeded in transit (type 3 code 0).
const TIME_EXCEEDED: (u8, u8, [u8; 4]) = (v6::ICMPV6_TIME_EXCEEDED, 0, [0; 4]);

/// What an ICMPv6 error needs to know about the packet it reports.
struct Offending {
    total_len: usize,
    src: Ipv6Addr,
    /// RFC 4443 2.4 (e): no error about an ICMPv6 error message, a packet
    /// from the unspecified or a multicast address, or (except packet too
    /// big) to a multicast address.
    may_be_answered: bool,
}

impl Offending {
    fn of(ip: &Ipv6<'_>, upper: UpperLayer) -> Offending {
        let icmp_error = upper.protocol == IP_PROTO_ICMPV6
            && !upper.later_fragment
            && ip
                .packet()
                .get(upper.offset)
                .is_some_and(|t| *t < v6::ICMPV6_ECHO_REQUEST);
        let src = ip.src();
        Offending {
            total_len: ip.total_len(),
            src,
            may_be_answered: !icmp_error
                && !src.is_unspecified()
                && !src.is_multicast()
                && !ip.dst().is_multicast(),
        }
    }
}

/// Replace the frame with the ICMPv6 error `(type, code, bytes 4..8)`
/// about `ip`, from `from` to its source, quoting as much of it as fits
/// in the minimum MTU (RFC 4443 2.4 (c)). The original counts as dropped:
/// a time exceeded is a [`Verdict::Reply`] (`ttl_exceeded` when it may not
/// be sent), a packet too big a [`Verdict::IcmpError`] (`packet_too_big`).
fn icmp_error(
    ip: Offending,
    (icmp_type, code, rest): (u8, u8, [u8; 4]),
    from: Ipv6Addr,
    buf: &mut [u8],
    len: usize,
    to: ReplyTo,
) -> (Verdict, usize) {
    let too_big = icmp_type == v6::ICMPV6_PACKET_TOO_BIG;
    let reason = if too_big {
        DropReason::PacketTooBig
    } else {
        DropReason::TtlExceeded
    };
    let header = IPV6_HDR_LEN + 8;
    let room = buf.len().saturating_sub(L3 + header);
    let quoted = ip.total_len.min(IPV6_MIN_MTU - header).min(room);
    if !ip.may_be_answered || quoted < IPV6_HDR_LEN {
        return (Verdict::Drop(reason), len);
    }
    let new_len = L3 + header + quoted;
    // The quote moves right by 48 bytes: copy_within is a memmove.
    buf.copy_within(L3..L3 + quoted, L3 + header);
    v6::write_ipv6_header(
        &mut buf[L3..],
        (8 + quoted) as u16,
        IP_PROTO_ICMPV6,
        REPLY_TTL,
        from,
        ip.src,
    );
    let icmp = &mut buf[L3 + IPV6_HDR_LEN..new_len];
    icmp[..4].copy_from_slice(&[icmp_type, code, 0, 0]);
    icmp[4..8].copy_from_slice(&rest);
    let c = v6::icmpv6_checksum(&from, &ip.src, icmp);
    wire::set_u16(icmp, 2, c);
    if set_macs(buf, new_len, to.mac, to.router).is_err() {
        return (Verdict::Drop(reason), len);
    }
    let verdict = if too_big {
        Verdict::IcmpError {
            port: to.ingress,
            reason,
        }
    } else {
        Verdict::Reply
    };
    (verdict, new_len)
}

/// The IPv6 length of each packet this frame becomes on the egress link:
/// its total length, or for a TCPv6 GSO frame that of one segment.
fn wire_len(ip: &Ipv6<'_>, upper: UpperLayer, offload: &Offload) -> usize {
    let total = ip.total_len();
    let l4 = ip.packet().get(upper.offset..).unwrap_or(&[]);
    let l4_hdr = match (offload.gso(), upper.protocol) {
        (offload::GSO_TCPV6, wire::IP_PROTO_TCP) if l4.len() >= wire::TCP_MIN_HDR_LEN => {
            usize::from(l4[12] >> 4) * 4
        }
        (offload::GSO_UDP, wire::IP_PROTO_UDP) => wire::UDP_HDR_LEN,
        _ => return total,
    };
    total.min(upper.offset + l4_hdr + usize::from(offload.gso_size))
}

/// The forwarded-checksum rule of `super::classify_l4_checksum` for IPv6:
/// the same partial/complete decision (from the headers alone) over the
/// IPv6 pseudo-header, except that a UDP checksum of 0 is refused
/// (mandatory over IPv6, RFC 8200 8.1).
fn classify_l4_checksum6(
    ip: &mut Ipv6<'_>,
    upper: UpperLayer,
    csum: &mut CsumState,
) -> Result<(), DropReason> {
    if *csum != CsumState::Unknown {
        return Ok(());
    }
    if upper.fragment {
        *csum = CsumState::Complete;
        return Ok(());
    }
    let (src, dst) = (ip.src(), ip.dst());
    let proto = upper.protocol;
    // The L4 header offset fits a u16 (total length <= 65575 is checked
    // by the view; the header chain is inside it).
    let start = (L3 + upper.offset) as u16;
    let l4 = ip.from_mut(upper.offset);
    let (field_at, l4_len) = match proto {
        wire::IP_PROTO_TCP if l4.len() >= wire::TCP_MIN_HDR_LEN => {
            (wire::TCP_CHECKSUM_OFFSET, l4.len())
        }
        wire::IP_PROTO_UDP if l4.len() >= wire::UDP_HDR_LEN => {
            let udp_len = usize::from(wire::get_u16(l4, 4));
            if udp_len < wire::UDP_HDR_LEN || udp_len > l4.len() {
                return Err(DropReason::Malformed);
            }
            if wire::get_u16(l4, wire::UDP_CHECKSUM_OFFSET) == 0 {
                return Err(DropReason::BadL4Checksum);
            }
            (wire::UDP_CHECKSUM_OFFSET, udp_len)
        }
        wire::IP_PROTO_TCP | wire::IP_PROTO_UDP => return Err(DropReason::Malformed),
        _ => {
            *csum = CsumState::Complete;
            return Ok(());
        }
    };
    let pseudo = v6::pseudo_header(&src, &dst, proto, l4_len as u32);
    *csum = classify_segment(pseudo, &l4[..l4_len], field_at, start);
    Ok(())
}

/// An IPv6 packet for the service stage ([`nat::Flow`]).
struct Flow6<'v, 'a> {
    ip: &'v mut Ipv6<'a>,
    upper: UpperLayer,
}

impl nat::Flow for Flow6<'_, '_> {
    const V6: bool = true;
    fn header(&self) -> (u8, u128, u128, bool) {
        let (src, dst) = (u128::from(self.ip.src()), u128::from(self.ip.dst()));
        (self.upper.protocol, src, dst, !self.upper.fragment)
    }
    fn l4(&self) -> &[u8] {
        self.ip.packet().get(self.upper.offset..).unwrap_or(&[])
    }
    fn l4_mut(&mut self) -> &mut [u8] {
        self.ip.from_mut(self.upper.offset)
    }
    fn classify(&mut self, csum: &mut CsumState) -> Result<(), DropReason> {
        classify_l4_checksum6(self.ip, self.upper, csum)
    }
    fn set_addresses(&mut self, src: u128, dst: u128) -> Result<(), DropReason> {
        if Ipv6Addr::from(src).to_ipv4_mapped().is_some()
            || Ipv6Addr::from(dst).to_ipv4_mapped().is_some()
        {
            // A backend of the other family: nothing ferryd sends.
            return Err(DropReason::NoRoute);
        }
        self.ip.set_src(src.into());
        self.ip.set_dst(dst.into());
        Ok(())
    }
}

/// The refusal of a service port without backends, for IPv6: a TCP reset
/// or ICMPv6 port unreachable (1/4) from the ClusterIP.
fn reject6(
    offending: Offending,
    upper: UpperLayer,
    buf: &mut [u8],
    len: usize,
    to: ReplyTo,
) -> (Verdict, usize) {
    let refused = (Verdict::Drop(DropReason::ServiceNoEndpoints), len);
    let error = |new_len| {
        let v = Verdict::IcmpError {
            port: to.ingress,
            reason: DropReason::ServiceNoEndpoints,
        };
        (v, new_len)
    };
    let Ok(ip) = Ipv6::new_checked(&mut buf[L3..len]) else {
        return refused;
    };
    let (src, dst) = (ip.src(), ip.dst());
    if upper.protocol == wire::IP_PROTO_UDP {
        let unreachable = (v6::ICMPV6_DEST_UNREACHABLE, 4, [0; 4]);
        return match icmp_error(offending, unreachable, dst, buf, len, to) {
            (Verdict::Reply, new_len) => error(new_len),
            _ => refused,
        };
    }
    let Some(reset) = nat::reset_for(ip.packet().get(upper.offset..).unwrap_or(&[])) else {
        return refused;
    };
    let new_len = L3 + IPV6_HDR_LEN + wire::TCP_MIN_HDR_LEN;
    if buf.len() < new_len {
        return refused;
    }
    v6::write_ipv6_header(
        &mut buf[L3..],
        wire::TCP_MIN_HDR_LEN as u16,
        wire::IP_PROTO_TCP,
        REPLY_TTL,
        dst,
        src,
    );
    let tcp = &mut buf[L3 + IPV6_HDR_LEN..new_len];
    reset.write(tcp);
    let pseudo = v6::pseudo_header(&dst, &src, wire::IP_PROTO_TCP, wire::TCP_MIN_HDR_LEN as u32);
    let c = !wire::checksum::fold(wire::checksum::add_bytes(pseudo, tcp));
    wire::set_u16(tcp, wire::TCP_CHECKSUM_OFFSET, c);
    match set_macs(buf, new_len, to.mac, to.router) {
        Ok(()) => error(new_len),
        Err(reason) => (Verdict::Drop(reason), len),
    }
}
