//! IPv6 through the pipeline: a dual-stack node (the IPv4 fixture's pods
//! with an IPv6 address each, one IPv6-only pod), frames built with
//! etherparse or by hand, checksums checked with the fixtures' reference
//! sum, not the pipeline's.

use std::net::Ipv6Addr;

use etherparse::PacketBuilder;
use ferry_api::table::{Endpoint, NextHop, Route};
use ferry_api::MacAddr;

use super::fixtures::{
    self, mac_of, ref_sum, run, run_offload, CHUNK, HOST_PORT, KERNEL_MAC, ROUTER,
};
use super::{DropReason, Offload, Verdict};
use crate::core::offload::{self, F_NEEDS_CSUM, GSO_TCPV4, GSO_TCPV6};
use crate::core::tables::{PortId, Tables};

const GW6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x88, 0, 0, 0, 0, 0, 1);
const fn pod6(n: u16) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x88, 0, 0, 0, 0, 0, n)
}
/// The IPv6 address of fixture pod `port` (ports 1-4).
const fn v6_of(port: PortId) -> Ipv6Addr {
    pod6(port as u16 + 1)
}
/// An IPv6-only pod.
const ONLY6: (PortId, Ipv6Addr) = (5, pod6(0x66));
const ONLY6_MAC: [u8; 6] = [0x0a, 0x58, 0, 0, 0, 0x66];
const NO_POD6: Ipv6Addr = pod6(0x77);
const OUTSIDE6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
const BLACKHOLED6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xdead, 0, 0, 0, 0, 0, 1);
const ROUTED6_TO_POD3: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x20, 0, 1, 0, 0, 0, 1);

fn tables6() -> Tables {
    let mut node = fixtures::node(true);
    node.gateways.push(GW6.into());
    node.pod_cidrs.push("fd00:88::/64".parse().unwrap());
    let mut eps: Vec<Endpoint> = fixtures::endpoints()
        .into_iter()
        .map(|mut e| {
            let port = fixtures::port_of(&e.host_ifname).unwrap();
            e.ips.push(v6_of(port).into());
            e
        })
        .collect();
    eps.push(Endpoint {
        ips: vec![ONLY6.1.into()],
        mac: MacAddr(ONLY6_MAC),
        mtu: Some(1500),
        ..Endpoint::veth("pod5/eth0", "fy5", std::net::Ipv4Addr::UNSPECIFIED)
    });
    let mut routes = fixtures::routes();
    routes.push(Route {
        prefix: "fd00:dead::/32".parse().unwrap(),
        next_hop: NextHop::Blackhole,
    });
    routes.push(Route {
        prefix: "fd00:20::/32".parse().unwrap(),
        next_hop: NextHop::Endpoint("pod3/eth0".into()),
    });
    Tables::build(1, &node, &eps, &routes, fixtures::port_of)
}

fn mac6(src: Ipv6Addr) -> [u8; 6] {
    match (1..=4).find(|p| v6_of(*p) == src) {
        Some(p) => mac_of(
            fixtures::PODS
                .iter()
                .chain([&fixtures::SMALL_POD])
                .nth(p as usize - 1)
                .unwrap()
                .1,
        ),
        None if src == ONLY6.1 => ONLY6_MAC,
        None => KERNEL_MAC,
    }
}

fn tcp6(src: Ipv6Addr, dst: Ipv6Addr, hops: u8, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(mac6(src), ROUTER)
        .ipv6(src.octets(), dst.octets(), hops)
        .tcp(40000, 80, 12345, 64240)
        .ack(777)
        .psh();
    let mut v = Vec::new();
    b.write(&mut v, payload).unwrap();
    v
}

fn udp6(src: Ipv6Addr, dst: Ipv6Addr, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(mac6(src), ROUTER)
        .ipv6(src.octets(), dst.octets(), 64)
        .udp(5353, 53);
    let mut v = Vec::new();
    b.write(&mut v, payload).unwrap();
    v
}

fn echo6(src: Ipv6Addr, dst: Ipv6Addr, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(mac6(src), ROUTER)
        .ipv6(src.octets(), dst.octets(), 64)
        .icmpv6_echo_request(0x1234, 7);
    let mut v = Vec::new();
    b.write(&mut v, payload).unwrap();
    v
}

fn pseudo6(src: &[u8], dst: &[u8], proto: u8, len: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(40);
    p.extend_from_slice(src);
    p.extend_from_slice(dst);
    p.extend_from_slice(&(len as u32).to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, proto]);
    p
}

/// Whether the upper-layer checksum of the (extension-header-free) IPv6
/// frame verifies.
fn l4_ok6(f: &[u8]) -> bool {
    let plen = usize::from(u16::from_be_bytes([f[18], f[19]]));
    let l4 = &f[54..54 + plen];
    ref_sum(&[&pseudo6(&f[22..38], &f[38..54], f[20], plen), l4]) == 0xffff
}

/// Whether the TCP/UDP checksum field of an IPv6 frame without extension
/// headers holds the folded pseudo-header sum (a `CHECKSUM_PARTIAL` frame).
fn partial6(f: &[u8]) -> bool {
    let plen = usize::from(u16::from_be_bytes([f[18], f[19]]));
    let (proto, at) = (f[20], if f[20] == 6 { 16 } else { 6 });
    let l4_len = if proto == 17 {
        usize::from(u16::from_be_bytes([f[54 + 4], f[54 + 5]]))
    } else {
        plen
    };
    let p = ref_sum(&[&pseudo6(&f[22..38], &f[38..54], proto, l4_len)]);
    let field = u16::from_be_bytes([f[54 + at], f[54 + at + 1]]);
    field == p || (field == 0 && p == 0xffff)
}

/// Recompute the TCP (`at` 16) or UDP (`at` 6) checksum of an IPv6 frame
/// without extension headers after a test edited it.
fn fix6(f: &mut [u8], at: usize) {
    let plen = f.len() - 54;
    f[54 + at..54 + at + 2].fill(0);
    let c = !ref_sum(&[&pseudo6(&f[22..38], &f[38..54], f[20], plen), &f[54..]]);
    f[54 + at..54 + at + 2].copy_from_slice(&c.to_be_bytes());
}

/// An ICMPv6 message from `src` to `dst` with hop limit `hops`, by hand.
fn icmp6(src_mac: [u8; 6], src: Ipv6Addr, dst: Ipv6Addr, hops: u8, msg: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&[0x33, 0x33, 0xff, 0, 0, 1]);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
    f.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    f.extend_from_slice(&[58, hops]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    let mut m = msg.to_vec();
    m[2..4].fill(0);
    let c = !ref_sum(&[&pseudo6(&src.octets(), &dst.octets(), 58, m.len()), &m]);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&m);
    f
}

/// A neighbour solicitation for `target` from `src` (with a source
/// link-layer address option), to the target's solicited-node group.
fn ns(src_mac: [u8; 6], src: Ipv6Addr, target: Ipv6Addr, hops: u8) -> Vec<u8> {
    let t = target.octets();
    let group = Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(t[13]),
        u16::from_be_bytes([t[14], t[15]]),
    );
    let mut m = vec![135, 0, 0, 0, 0, 0, 0, 0];
    m.extend_from_slice(&t);
    m.extend_from_slice(&[1, 1]);
    m.extend_from_slice(&src_mac);
    icmp6(src_mac, src, group, hops, &m)
}

fn addr_at(f: &[u8], at: usize) -> Ipv6Addr {
    Ipv6Addr::from(<[u8; 16]>::try_from(&f[at..at + 16]).unwrap())
}

#[test]
fn pod_to_pod_is_routed_with_the_hop_limit_decremented() {
    let t = tables6();
    let (v, out) = run(&t, 1, &tcp6(v6_of(1), v6_of(2), 64, b"hello six"));
    assert_eq!(v, Verdict::Tx(2));
    assert_eq!(&out[..6], &mac_of(fixtures::PODS[1].1));
    assert_eq!(&out[6..12], &ROUTER);
    assert_eq!(out[21], 63, "hop limit");
    assert!(l4_ok6(&out));

    // A route to a pod, and the IPv6-only pod both ways.
    let (v, _) = run(&t, 1, &tcp6(v6_of(1), ROUTED6_TO_POD3, 64, b"x"));
    assert_eq!(v, Verdict::Tx(3));
    let (v, out) = run(&t, 1, &udp6(v6_of(1), ONLY6.1, b"to the v6-only pod"));
    assert_eq!(v, Verdict::Tx(ONLY6.0));
    assert_eq!(&out[..6], &ONLY6_MAC);
    let (v, _) = run(&t, ONLY6.0, &udp6(ONLY6.1, v6_of(2), b"from it"));
    assert_eq!(v, Verdict::Tx(2));
}

#[test]
fn a_partial_checksum_is_found_and_completed() {
    let t = tables6();
    let mut f = tcp6(v6_of(1), v6_of(2), 64, &[7u8; 700]);
    let plen = usize::from(u16::from_be_bytes([f[18], f[19]]));
    let p = ref_sum(&[&pseudo6(&f[22..38], &f[38..54], 6, plen)]);
    f[54 + 16..54 + 18].copy_from_slice(&p.to_be_bytes());
    assert!(!l4_ok6(&f));
    let (v, out) = run(&t, 1, &f);
    assert_eq!(v, Verdict::Tx(2));
    assert!(l4_ok6(&out), "completed for the veth egress");

    // A bad checksum is neither: complete as far as we are concerned,
    // forwarded as it is (the receiver verifies).
    let mut bad = tcp6(v6_of(1), v6_of(2), 64, b"data");
    bad[54 + 16] ^= 0x5a;
    let (v, out) = run(&t, 1, &bad);
    assert_eq!(v, Verdict::Tx(2));
    assert!(!l4_ok6(&out), "not made right");
    // UDP without a checksum is refused over IPv6.
    let mut zero = udp6(v6_of(1), v6_of(2), b"data");
    zero[54 + 6..54 + 8].fill(0);
    assert_eq!(
        run(&t, 1, &zero).0,
        Verdict::Drop(DropReason::BadL4Checksum)
    );
}

#[test]
fn the_node_and_the_outside_go_through_the_host_port() {
    let t = tables6();
    for dst in [OUTSIDE6, GW6] {
        let (v, out) = run(&t, 1, &tcp6(v6_of(1), dst, 64, b"up"));
        assert_eq!(v, Verdict::Tx(HOST_PORT), "{dst}");
        assert_eq!(&out[..6], &KERNEL_MAC);
        assert_eq!(out[21], 64, "the kernel routes it on and decrements");
    }
    // From the node kernel to a pod: routed by the kernel already.
    let (v, out) = run(&t, HOST_PORT, &tcp6(GW6, v6_of(2), 63, b"probe"));
    assert_eq!(v, Verdict::Tx(2));
    assert_eq!(out[21], 63);
    // Back to the kernel would loop.
    let (v, _) = run(&t, HOST_PORT, &tcp6(GW6, OUTSIDE6, 64, b"loop"));
    assert_eq!(v, Verdict::Drop(DropReason::NoRoute));
    assert_eq!(
        run(&t, 1, &tcp6(v6_of(1), NO_POD6, 64, b"")).0,
        Verdict::Drop(DropReason::NoEndpoint)
    );
    assert_eq!(
        run(&t, 1, &tcp6(v6_of(1), BLACKHOLED6, 64, b"")).0,
        Verdict::Drop(DropReason::NoRoute)
    );
}

#[test]
fn sources_are_checked() {
    let t = tables6();
    let (v, _) = run(&t, 1, &tcp6(v6_of(2), v6_of(3), 64, b"spoof"));
    assert_eq!(v, Verdict::Drop(DropReason::SpoofedSource));
    // An IPv6-only pod sends no IPv4, not even from 0.0.0.0 or another's.
    for src in [std::net::Ipv4Addr::UNSPECIFIED, fixtures::PODS[0].1] {
        let f = fixtures::udp_frame(src, fixtures::PODS[1].1, 64, b"v4");
        assert_eq!(
            run(&t, ONLY6.0, &f).0,
            Verdict::Drop(DropReason::SpoofedSource)
        );
    }
    // A link-local source is never routed.
    let ll: Ipv6Addr = "fe80::858:aff:fe58:2".parse().unwrap();
    let (v, _) = run(&t, 1, &tcp6(ll, v6_of(2), 64, b"ll"));
    assert_eq!(v, Verdict::Drop(DropReason::Ipv6LinkLocal));
}

#[test]
fn hop_limit_one_gets_time_exceeded_from_the_gateway() {
    let t = tables6();
    let sent = tcp6(v6_of(1), v6_of(2), 1, b"expiring");
    let (v, out) = run(&t, 1, &sent);
    assert_eq!(v, Verdict::Reply);
    assert_eq!(&out[..6], &mac_of(fixtures::PODS[0].1));
    assert_eq!(&out[6..12], &ROUTER);
    assert_eq!(out[20], 58);
    assert_eq!(addr_at(&out, 22), GW6);
    assert_eq!(addr_at(&out, 38), v6_of(1));
    assert_eq!((out[54], out[55]), (3, 0));
    assert_eq!(&out[62..], &sent[14..], "the whole packet is quoted");
    assert!(l4_ok6(&out));
    // Not to the kernel: it routes (and expires) its own.
    let (v, _) = run(&t, 1, &tcp6(v6_of(1), OUTSIDE6, 1, b""));
    assert_eq!(v, Verdict::Tx(HOST_PORT));
}

#[test]
fn too_big_gets_packet_too_big_with_the_egress_mtu() {
    let t = tables6();
    let small = v6_of(fixtures::SMALL_POD.0);
    let sent = tcp6(v6_of(1), small, 64, &[1u8; 1300]);
    let (v, out) = run(&t, 1, &sent);
    assert_eq!(
        v,
        Verdict::IcmpError {
            port: 1,
            reason: DropReason::PacketTooBig
        }
    );
    assert_eq!((out[54], out[55]), (2, 0));
    assert_eq!(
        u32::from_be_bytes(out[58..62].try_into().unwrap()),
        fixtures::SMALL_MTU
    );
    assert_eq!(out.len() - 14, 1280, "quoted up to the minimum MTU");
    assert_eq!(&out[62..], &sent[14..14 + 1280 - 48]);
    assert_eq!(addr_at(&out, 22), GW6);
    assert!(l4_ok6(&out));
    // At the MTU it passes.
    let fits = tcp6(v6_of(1), small, 64, &[1u8; 1280 - 60]);
    assert_eq!(run(&t, 1, &fits).0, Verdict::Tx(fixtures::SMALL_POD.0));
    // No error about an ICMPv6 error.
    let mut err = icmp6(
        mac6(v6_of(1)),
        v6_of(1),
        small,
        64,
        &[1, 4, 0, 0, 0, 0, 0, 0],
    );
    err.extend(std::iter::repeat_n(0, 1300));
    let plen = (err.len() - 54) as u16;
    err[18..20].copy_from_slice(&plen.to_be_bytes());
    assert_eq!(run(&t, 1, &err).0, Verdict::Drop(DropReason::PacketTooBig));
}

#[test]
fn the_gateway_answers_echo() {
    let t = tables6();
    let (v, out) = run(&t, 1, &echo6(v6_of(1), GW6, b"ping6"));
    assert_eq!(v, Verdict::Reply);
    assert_eq!(&out[..6], &mac_of(fixtures::PODS[0].1));
    assert_eq!(addr_at(&out, 22), GW6);
    assert_eq!(addr_at(&out, 38), v6_of(1));
    assert_eq!(out[54], 129);
    assert!(l4_ok6(&out));
    let mut bad = echo6(v6_of(1), GW6, b"ping6");
    bad[60] ^= 1;
    assert_eq!(run(&t, 1, &bad).0, Verdict::Drop(DropReason::BadL4Checksum));
}

#[test]
fn neighbour_solicitations_are_answered_with_the_router_mac() {
    let t = tables6();
    let pod_mac = mac6(v6_of(1));
    let ll: Ipv6Addr = "fe80::858:aff:fe58:2".parse().unwrap();
    for (src, target) in [
        (v6_of(1), GW6),
        (ll, GW6),
        (v6_of(1), v6_of(2)),
        (v6_of(1), OUTSIDE6),
    ] {
        let (v, out) = run(&t, 1, &ns(pod_mac, src, target, 255));
        assert_eq!(v, Verdict::Reply, "{src} asks for {target}");
        assert_eq!(&out[..6], &pod_mac);
        assert_eq!(&out[6..12], &ROUTER);
        assert_eq!(out.len(), 14 + 40 + 32);
        assert_eq!(out[21], 255);
        assert_eq!(addr_at(&out, 22), target);
        assert_eq!(addr_at(&out, 38), src);
        assert_eq!(out[54], 136);
        assert_eq!(out[58], 0xe0, "router, solicited, override");
        assert_eq!(addr_at(&out, 62), target);
        assert_eq!(&out[78..80], &[2, 1]);
        assert_eq!(&out[80..86], &ROUTER);
        assert!(l4_ok6(&out));
    }
    let no = |f: &[u8], port| run(&t, port, f).0;
    // For itself, as a DAD probe, with a forged hop limit.
    assert_eq!(
        no(&ns(pod_mac, v6_of(1), v6_of(1), 255), 1),
        Verdict::Drop(DropReason::NdNotForUs)
    );
    assert_eq!(
        no(&ns(pod_mac, Ipv6Addr::UNSPECIFIED, v6_of(1), 255), 1),
        Verdict::Drop(DropReason::NdDad)
    );
    assert_eq!(
        no(&ns(pod_mac, v6_of(1), GW6, 64), 1),
        Verdict::Drop(DropReason::NdInvalid)
    );
    // The node kernel asks for pods only.
    let (v, out) = run(&t, HOST_PORT, &ns(KERNEL_MAC, GW6, v6_of(2), 255));
    assert_eq!(v, Verdict::Reply);
    assert_eq!(&out[..6], &KERNEL_MAC);
    assert_eq!(
        no(&ns(KERNEL_MAC, GW6, NO_POD6, 255), HOST_PORT),
        Verdict::Drop(DropReason::NdNotForUs)
    );
}

#[test]
fn other_link_scoped_traffic_is_dropped_by_reason() {
    let t = tables6();
    let pod_mac = mac6(v6_of(1));
    let ll: Ipv6Addr = "fe80::858:aff:fe58:2".parse().unwrap();
    let all_routers: Ipv6Addr = "ff02::2".parse().unwrap();
    let rs = icmp6(pod_mac, ll, all_routers, 255, &[133, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(run(&t, 1, &rs).0, Verdict::Drop(DropReason::RouterSolicit));
    let ra = icmp6(
        pod_mac,
        ll,
        "ff02::1".parse().unwrap(),
        255,
        &[134, 0, 0, 0, 64, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    );
    assert_eq!(run(&t, 1, &ra).0, Verdict::Drop(DropReason::NdInvalid));
    let mld = icmp6(
        pod_mac,
        ll,
        "ff02::16".parse().unwrap(),
        1,
        &[143, 0, 0, 0, 0, 0, 0, 0],
    );
    assert_eq!(run(&t, 1, &mld).0, Verdict::Drop(DropReason::Ipv6Multicast));
    let mdns = udp6(v6_of(1), "ff02::fb".parse().unwrap(), b"mdns");
    assert_eq!(
        run(&t, 1, &mdns).0,
        Verdict::Drop(DropReason::Ipv6Multicast)
    );
    let na = icmp6(
        pod_mac,
        v6_of(1),
        GW6,
        255,
        &[
            136, 0, 0, 0, 0x60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ],
    );
    // A unicast NA to the gateway is not link-scoped: the kernel's.
    assert_eq!(run(&t, 1, &na).0, Verdict::Tx(HOST_PORT));
    // One from a link-local source is ND, and never solicited.
    let na = icmp6(
        pod_mac,
        ll,
        "ff02::1".parse().unwrap(),
        255,
        &[
            136, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ],
    );
    assert_eq!(run(&t, 1, &na).0, Verdict::Drop(DropReason::NdNotForUs));
}

#[test]
fn extension_headers_are_walked_or_refused() {
    let t = tables6();
    // TCP behind a destination-options header.
    let plain = tcp6(v6_of(1), v6_of(2), 64, b"behind options");
    let mut f = plain[..54].to_vec();
    f[20] = 60;
    f.extend_from_slice(&[6, 0, 1, 4, 0, 0, 0, 0]);
    f.extend_from_slice(&plain[54..]);
    let plen = (f.len() - 54) as u16;
    f[18..20].copy_from_slice(&plen.to_be_bytes());
    let (v, out) = run(&t, 1, &f);
    assert_eq!(v, Verdict::Tx(2));
    assert_eq!(&out[62..], &plain[54..]);
    // Nine of them.
    let mut f = plain[..54].to_vec();
    f[20] = 60;
    for i in 0..9 {
        f.extend_from_slice(&[if i == 8 { 6 } else { 60 }, 0, 1, 4, 0, 0, 0, 0]);
    }
    f.extend_from_slice(&plain[54..]);
    let plen = (f.len() - 54) as u16;
    f[18..20].copy_from_slice(&plen.to_be_bytes());
    assert_eq!(run(&t, 1, &f).0, Verdict::Drop(DropReason::Ipv6ExtHeaders));
    // One that runs past the packet.
    let mut f = plain[..54].to_vec();
    f[20] = 60;
    f.extend_from_slice(&[6, 200, 0, 0, 0, 0, 0, 0]);
    f[18..20].copy_from_slice(&8u16.to_be_bytes());
    assert_eq!(run(&t, 1, &f).0, Verdict::Drop(DropReason::Malformed));
}

#[test]
fn a_node_without_ipv6_drops_it_by_its_own_reason() {
    let t = fixtures::tables();
    let (v, _) = run(&t, 1, &tcp6(v6_of(1), v6_of(2), 64, b""));
    assert_eq!(v, Verdict::Drop(DropReason::Ipv6Unsupported));
}

/// A TCPv6 GSO frame from a tap: the header is accepted, and segmenting it
/// for a veth gives MSS-sized segments with valid checksums and payload
/// lengths; a TCPv4 type on it is refused.
#[test]
fn tcpv6_gso_from_a_tap_is_segmented() {
    let t = tables6();
    let payload: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
    let mut f = tcp6(v6_of(1), v6_of(2), 64, &payload);
    let plen = f.len() - 54;
    let p = ref_sum(&[&pseudo6(&f[22..38], &f[38..54], 6, plen)]);
    f[54 + 16..54 + 18].copy_from_slice(&p.to_be_bytes());
    let gso = Offload {
        flags: F_NEEDS_CSUM,
        gso_type: GSO_TCPV6,
        hdr_len: 74,
        gso_size: 1440,
        csum_start: 54,
        csum_offset: 16,
    };
    assert_eq!(offload::check(&f, &gso), Ok(()));
    let v4_type = Offload {
        gso_type: GSO_TCPV4,
        ..gso
    };
    assert_eq!(offload::check(&f, &v4_type), Err(DropReason::BadGsoType));

    let (v, out) = run_offload(&t, 1, &f, f.len().max(CHUNK), gso);
    assert_eq!(v, Verdict::Tx(2));
    let plan = offload::plan_tcp(&out, &gso).unwrap();
    assert_eq!(plan.count, 4);
    let mut joined = Vec::new();
    for i in 0..plan.count {
        let mut seg = vec![0u8; 2048];
        let n = offload::write_tcp_segment(&out, &plan, i, &mut seg).unwrap();
        seg.truncate(n);
        assert_eq!(usize::from(u16::from_be_bytes([seg[18], seg[19]])), n - 54);
        assert!(n - 14 <= 1500, "segment {i} fits the MTU");
        assert!(l4_ok6(&seg), "segment {i}");
        assert_eq!(seg[21], 63);
        joined.extend_from_slice(&seg[74..]);
    }
    assert_eq!(joined, payload);
}

/// IPv6 ClusterIPs: translated both ways, checksums right, refusals in
/// IPv6.
#[test]
fn ipv6_service_flows_are_translated_and_refused_without_backends() {
    use crate::core::conntrack::Conntrack;
    use crate::core::service::ServiceTable;
    use crate::core::tables::Services;
    use ferry_api::table::{Backend, L4Proto, ServicePort};
    use std::sync::Arc;

    let vip: Ipv6Addr = "fd00:96::10".parse().unwrap();
    let sp = |port: u16, protocol, backends: Vec<Backend>| ServicePort {
        id: format!("default/web:{port}/{protocol:?}/v6"),
        vip: vip.into(),
        port,
        protocol,
        backends,
        affinity_timeout_s: None,
        seed: 3,
        node_port: None,
        node_local: None,
    };
    let web = vec![Backend {
        ip: v6_of(2).into(),
        port: 8080,
    }];
    let services = vec![
        sp(80, L4Proto::Tcp, web.clone()),
        sp(53, L4Proto::Udp, web),
        sp(81, L4Proto::Tcp, vec![]),
        sp(54, L4Proto::Udp, vec![]),
    ];
    let t = tables6().with_services(Some(Services {
        table: Arc::new(ServiceTable::build(&services)),
        conntrack: Arc::new(Conntrack::new(1024)),
    }));
    let port_of = |f: &[u8], at: usize| u16::from_be_bytes([f[at], f[at + 1]]);

    let (v, out) = run(&t, 1, &tcp6(v6_of(1), vip, 64, b"get"));
    assert_eq!(v, Verdict::Tx(2));
    assert_eq!(addr_at(&out, 38), v6_of(2));
    assert_eq!(port_of(&out, 56), 8080);
    assert!(l4_ok6(&out));
    // tcp6 sends from port 40000 to 80: the reply comes back from the VIP.
    let mut reply = tcp6(v6_of(2), v6_of(1), 64, b"ok");
    reply[54..56].copy_from_slice(&8080u16.to_be_bytes());
    reply[56..58].copy_from_slice(&40000u16.to_be_bytes());
    let plen = reply.len() - 54;
    reply[54 + 16..54 + 18].fill(0);
    let c = !ref_sum(&[
        &pseudo6(&reply[22..38], &reply[38..54], 6, plen),
        &reply[54..],
    ]);
    reply[54 + 16..54 + 18].copy_from_slice(&c.to_be_bytes());
    let (v, back) = run(&t, 2, &reply);
    assert_eq!(v, Verdict::Tx(1));
    assert_eq!((addr_at(&back, 22), port_of(&back, 54)), (vip, 80));
    assert!(l4_ok6(&back));

    let mut q = udp6(v6_of(1), vip, b"query");
    q[56..58].copy_from_slice(&53u16.to_be_bytes());
    fix6(&mut q, 6);
    let (v, out) = run(&t, 1, &q);
    assert_eq!(v, Verdict::Tx(2));
    assert!(l4_ok6(&out));

    let refused = Verdict::IcmpError {
        port: 1,
        reason: DropReason::ServiceNoEndpoints,
    };
    let mut syn = tcp6(v6_of(1), vip, 64, b"");
    syn[56..58].copy_from_slice(&81u16.to_be_bytes());
    syn[54 + 13] = 0x02;
    fix6(&mut syn, 16);
    let (v, rst) = run(&t, 1, &syn);
    assert_eq!(v, refused);
    assert_eq!((addr_at(&rst, 22), port_of(&rst, 54)), (vip, 81));
    assert_eq!(rst[54 + 13], 0x14);
    assert!(l4_ok6(&rst));
    let mut q = udp6(v6_of(1), vip, b"q");
    q[56..58].copy_from_slice(&54u16.to_be_bytes());
    fix6(&mut q, 6);
    let (v, icmp) = run(&t, 1, &q);
    assert_eq!(v, refused);
    assert_eq!((icmp[20], icmp[54], icmp[55]), (58, 1, 4));
    assert_eq!(addr_at(&icmp, 22), vip);
    assert!(l4_ok6(&icmp));
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    use crate::core::pipeline::{process_frame, Frame};

    /// A valid IPv6 frame of some kind between the fixture's addresses,
    /// with a few bytes changed.
    fn mutated6() -> impl Strategy<Value = (PortId, Vec<u8>)> {
        (
            0u8..5,
            0usize..4,
            0usize..6,
            any::<u8>(),
            prop::collection::vec(any::<u8>(), 0..64),
            prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        )
            .prop_map(|(kind, s, d, hops, payload, edits)| {
                let port = s as PortId + 1;
                let src = v6_of(port);
                let dst = [v6_of(1), v6_of(2), v6_of(4), GW6, OUTSIDE6, ONLY6.1][d];
                let mut f = match kind {
                    0 => tcp6(src, dst, hops, &payload),
                    1 => udp6(src, dst, &payload),
                    2 => echo6(src, dst, &payload),
                    3 => ns(mac6(src), src, dst, 255),
                    _ => tcp6(src, dst, hops, &[0u8; 1400]),
                };
                let n = f.len();
                for (i, b) in edits {
                    f[i.index(n)] = b;
                }
                (port, f)
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

        /// One verdict each, no panic, and what is sent has a valid
        /// upper-layer checksum.
        #[test]
        fn ipv6_frames_get_one_verdict_and_valid_checksums((port, f) in mutated6(), slack in 0usize..200) {
            let t = tables6();
            let cap = f.len() + slack;
            let mut buf = f.clone();
            buf.resize(cap, 0);
            let mut frame = Frame::new(port, &mut buf, f.len());
            let v = process_frame(&t, &mut frame);
            if matches!(v, Verdict::Tx(_)) {
                fixtures::finish_for_veth(&mut frame);
            }
            let len = frame.len;
            if !matches!(v, Verdict::Drop(_)) {
                prop_assert!((54..=cap).contains(&len));
                let out = &buf[..len];
                // Forwarded TCP/UDP leaves valid if it came valid or
                // partial (completed), wrong if it came wrong (never
                // verified or mended); ICMPv6 the pipeline wrote itself is
                // valid. Forwarded ICMPv6 is the receiver's to check, as
                // ICMP is for IPv4.
                let made_here = !matches!(v, Verdict::Tx(_));
                if out[12..14] == [0x86, 0xdd] {
                    match out[20] {
                        6 | 17 if !made_here => {
                            let came = l4_ok6(&f) || partial6(&f);
                            prop_assert_eq!(l4_ok6(out), came, "{:?}", v);
                        }
                        6 | 17 => prop_assert!(l4_ok6(out), "{:?}", v),
                        58 if made_here => prop_assert!(l4_ok6(out), "{:?}", v),
                        _ => {}
                    }
                }
            }
            if let (Verdict::Tx(_), Some(crate::core::tables::PortRole::Pod { ip6, .. })) = (v, t.port_role(port)) {
                if f[12..14] == [0x86, 0xdd] {
                    prop_assert_eq!(Some(addr_at(&buf, 22)), ip6, "only the pod's own source");
                }
            }
        }

        /// Arbitrary bytes behind an IPv6 ethertype.
        #[test]
        fn arbitrary_ipv6_bytes_never_panic(port in 0u32..6, body in prop::collection::vec(any::<u8>(), 0..120), slack in 0usize..100) {
            let t = tables6();
            let mut f = tcp6(v6_of(1), v6_of(2), 64, b"")[..14].to_vec();
            f.extend_from_slice(&body);
            if f.len() > 14 {
                f[14] = 0x60 | (f[14] & 0x0f);
            }
            let cap = f.len() + slack;
            let mut buf = f.clone();
            buf.resize(cap, 0);
            let mut frame = Frame::new(port, &mut buf, f.len());
            let v = process_frame(&t, &mut frame);
            if !matches!(v, Verdict::Drop(_)) {
                prop_assert!(frame.len <= cap);
            }
        }
    }
}
