//! Test fixtures: a small node, frames built with etherparse, and checksum
//! checks written independently of the pipeline's own checksum code.

use std::net::Ipv4Addr;

use etherparse::PacketBuilder;
use ferry_api::table::{Endpoint, HostPort, NextHop, NodeSettings, Route};
use ferry_api::MacAddr;

use super::{process_frame, Frame, Offload, Verdict};
use crate::core::tables::{PortId, Tables};

pub const GW: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 1);
pub const HOST_PORT: PortId = 0;
pub const KERNEL_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const ROUTER: [u8; 6] = MacAddr::ROUTER.0;
/// (port, address) of the pods of the fixture node.
pub const PODS: [(PortId, Ipv4Addr); 3] = [
    (1, Ipv4Addr::new(10, 88, 0, 2)),
    (2, Ipv4Addr::new(10, 88, 0, 3)),
    (3, Ipv4Addr::new(10, 88, 0, 4)),
];
/// MTU of the first two pods (the third has none: a ferryd that predates
/// endpoint MTUs; nothing is checked towards it).
pub const POD_MTU: u32 = 1500;
/// A fourth pod with a smaller MTU than the others.
pub const SMALL_POD: (PortId, Ipv4Addr) = (4, Ipv4Addr::new(10, 88, 0, 5));
pub const SMALL_MTU: u32 = 1280;
/// MTU of the host port (`NodeSettings::mtu`).
pub const HOST_MTU: u32 = 1500;
/// A pod address with no endpoint.
pub const NO_POD: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 77);
pub const OUTSIDE: Ipv4Addr = Ipv4Addr::new(8, 8, 8, 8);
/// Inside 192.168.100.0/24, a blackhole route.
pub const BLACKHOLED: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 9);
/// Inside 172.20.0.0/16, routed to the third pod.
pub const ROUTED_TO_POD3: Ipv4Addr = Ipv4Addr::new(172, 20, 1, 1);
/// Inside 172.21.0.0/16, routed to an endpoint that is not attached.
pub const UNRESOLVED: Ipv4Addr = Ipv4Addr::new(172, 21, 1, 1);
/// Chunk size of the fixture buffers (like an AF_XDP frame).
pub const CHUNK: usize = 2048;

pub fn mac_of(ip: Ipv4Addr) -> [u8; 6] {
    MacAddr::for_pod(ip).0
}

pub fn node(with_host_port: bool) -> NodeSettings {
    NodeSettings {
        gateways: vec![GW.into()],
        router_mac: MacAddr::ROUTER,
        pod_cidrs: vec!["10.88.0.0/24".parse().unwrap()],
        host_port: with_host_port.then(|| HostPort {
            ifname: "ferry0dp".into(),
            kernel_ifname: "ferry0".into(),
            kernel_mac: MacAddr(KERNEL_MAC),
        }),
        mtu: HOST_MTU,
        uplink: None,
    }
}

pub fn endpoints() -> Vec<Endpoint> {
    PODS.iter()
        .chain([&SMALL_POD])
        .map(|(port, ip)| Endpoint {
            mtu: match *port {
                3 => None,
                4 => Some(SMALL_MTU),
                _ => Some(POD_MTU),
            },
            ..Endpoint::veth(format!("pod{port}/eth0"), format!("fy{port}"), *ip)
        })
        .collect()
}

pub fn routes() -> Vec<Route> {
    vec![
        Route {
            prefix: "192.168.100.0/24".parse().unwrap(),
            next_hop: NextHop::Blackhole,
        },
        Route {
            prefix: "172.20.0.0/16".parse().unwrap(),
            next_hop: NextHop::Endpoint("pod3/eth0".into()),
        },
        Route {
            prefix: "172.21.0.0/16".parse().unwrap(),
            next_hop: NextHop::Endpoint("gone/eth0".into()),
        },
    ]
}

pub fn port_of(name: &str) -> Option<PortId> {
    if name == "ferry0dp" {
        return Some(HOST_PORT);
    }
    name.strip_prefix("fy")?.parse().ok()
}

pub fn tables_with(with_host_port: bool) -> Tables {
    Tables::build(1, &node(with_host_port), &endpoints(), &routes(), port_of)
}

pub fn tables() -> Tables {
    tables_with(true)
}

/// Ethernet from the sender's pod MAC to the router MAC (or, for frames from
/// the host, from the kernel MAC).
fn eth(src: Ipv4Addr) -> etherparse::PacketBuilderStep<etherparse::Ethernet2Header> {
    let src_mac = if PODS.iter().any(|(_, ip)| *ip == src) {
        mac_of(src)
    } else {
        KERNEL_MAC
    };
    PacketBuilder::ethernet2(src_mac, ROUTER)
}

pub fn tcp_frame(src: Ipv4Addr, dst: Ipv4Addr, ttl: u8, payload: &[u8]) -> Vec<u8> {
    let b = eth(src)
        .ipv4(src.octets(), dst.octets(), ttl)
        .tcp(40000, 80, 12345, 64240)
        .ack(777)
        .psh();
    let mut v = Vec::new();
    b.write(&mut v, payload).unwrap();
    v
}

pub fn udp_frame(src: Ipv4Addr, dst: Ipv4Addr, ttl: u8, payload: &[u8]) -> Vec<u8> {
    let b = eth(src).ipv4(src.octets(), dst.octets(), ttl).udp(5353, 53);
    let mut v = Vec::new();
    b.write(&mut v, payload).unwrap();
    v
}

pub fn echo_request(src: Ipv4Addr, dst: Ipv4Addr, ttl: u8, payload: &[u8]) -> Vec<u8> {
    let b = eth(src)
        .ipv4(src.octets(), dst.octets(), ttl)
        .icmpv4_echo_request(0x1234, 7);
    let mut v = Vec::new();
    b.write(&mut v, payload).unwrap();
    v
}

/// An ARP packet (by hand: 14 + 28 bytes, padded to 60 like on the wire).
pub fn arp_frame(op: u16, sha: [u8; 6], spa: Ipv4Addr, tpa: Ipv4Addr) -> Vec<u8> {
    let mut v = Vec::with_capacity(60);
    v.extend_from_slice(&[0xff; 6]);
    v.extend_from_slice(&sha);
    v.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4]);
    v.extend_from_slice(&op.to_be_bytes());
    v.extend_from_slice(&sha);
    v.extend_from_slice(&spa.octets());
    v.extend_from_slice(&[0; 6]);
    v.extend_from_slice(&tpa.octets());
    v.resize(60, 0);
    v
}

/// Run one frame through the pipeline in a `CHUNK`-sized buffer; return the
/// verdict and the frame as it is afterwards.
pub fn run(tables: &Tables, port: PortId, frame: &[u8]) -> (Verdict, Vec<u8>) {
    run_in(tables, port, frame, CHUNK)
}

pub fn run_in(tables: &Tables, port: PortId, frame: &[u8], cap: usize) -> (Verdict, Vec<u8>) {
    run_offload(tables, port, frame, cap, Offload::NONE)
}

/// As [`run_in`], for a frame that came with the virtio-net header `off`.
/// What is forwarded is finished as for a veth egress
/// ([`crate::core::offload::finish`] without offloads: a partial checksum
/// completed, GSO left as it is), so the bytes are what the receiver gets.
pub fn run_offload(
    tables: &Tables,
    port: PortId,
    frame: &[u8],
    cap: usize,
    off: Offload,
) -> (Verdict, Vec<u8>) {
    let mut buf = vec![0u8; cap.max(frame.len())];
    buf[..frame.len()].copy_from_slice(frame);
    let mut f = Frame::with_offload(port, &mut buf, frame.len(), off);
    let verdict = process_frame(tables, &mut f);
    let len = f.len;
    if matches!(verdict, Verdict::Tx(_)) && !f.offload.is_gso() {
        finish_for_veth(&mut f);
    }
    buf.truncate(len);
    (verdict, buf)
}

/// Finish a forwarded frame for an egress port without offloads, as the
/// worker does; panics if that refuses the frame (the pipeline forwards
/// only frames whose checksum state was checked).
pub fn finish_for_veth(f: &mut Frame<'_>) {
    use crate::core::offload::{finish, EgressCaps, Finished};
    let (csum, off, len) = (f.csum, f.offload, f.len);
    let data = &mut f.room_mut()[..len];
    let finished = finish(data, csum, &off, EgressCaps::default());
    assert!(
        matches!(finished, Ok(Finished::Send(Offload::NONE))),
        "{finished:?}"
    );
}

/// Plain 16-bit ones-complement sum, folded (reference, not the pipeline's).
pub fn ref_sum(parts: &[&[u8]]) -> u16 {
    let mut s: u32 = 0;
    for part in parts {
        for c in part.chunks(2) {
            let w = if c.len() == 2 {
                u16::from_be_bytes([c[0], c[1]])
            } else {
                u16::from(c[0]) << 8
            };
            s += u32::from(w);
            s = (s & 0xffff) + (s >> 16);
        }
    }
    s as u16
}

/// Header length, total length, protocol, addresses of the IPv4 packet in
/// an Ethernet frame.
pub fn ip_fields(frame: &[u8]) -> (usize, usize, u8, [u8; 4], [u8; 4]) {
    let ip = &frame[14..];
    let hl = usize::from(ip[0] & 0xf) * 4;
    let tl = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    (
        hl,
        tl,
        ip[9],
        ip[12..16].try_into().unwrap(),
        ip[16..20].try_into().unwrap(),
    )
}

pub fn ip_checksum_ok(frame: &[u8]) -> bool {
    let (hl, ..) = ip_fields(frame);
    ref_sum(&[&frame[14..14 + hl]]) == 0xffff
}

fn pseudo(src: [u8; 4], dst: [u8; 4], proto: u8, len: usize) -> [u8; 12] {
    let l = (len as u16).to_be_bytes();
    [
        src[0], src[1], src[2], src[3], dst[0], dst[1], dst[2], dst[3], 0, proto, l[0], l[1],
    ]
}

/// Whether the TCP/UDP/ICMP checksum of the frame verifies (UDP 0 counts as
/// valid: no checksum).
pub fn l4_checksum_ok(frame: &[u8]) -> bool {
    let (hl, tl, proto, src, dst) = ip_fields(frame);
    let l4 = &frame[14 + hl..14 + tl];
    match proto {
        6 => ref_sum(&[&pseudo(src, dst, 6, l4.len()), l4]) == 0xffff,
        17 => {
            let ulen = usize::from(u16::from_be_bytes([l4[4], l4[5]]));
            let c = u16::from_be_bytes([l4[6], l4[7]]);
            c == 0 || ref_sum(&[&pseudo(src, dst, 17, ulen), &l4[..ulen]]) == 0xffff
        }
        1 => ref_sum(&[l4]) == 0xffff,
        _ => true,
    }
}

/// The folded pseudo-header sum of an IPv4 frame's TCP/UDP segment: what
/// its checksum field holds when partial (Linux `CHECKSUM_PARTIAL`).
fn partial_sum(frame: &[u8]) -> u16 {
    let (hl, tl, proto, src, dst) = ip_fields(frame);
    let l4_len = if proto == 17 {
        usize::from(u16::from_be_bytes([frame[14 + hl + 4], frame[14 + hl + 5]]))
    } else {
        tl - hl
    };
    ref_sum(&[&pseudo(src, dst, proto, l4_len)])
}

/// Whether the TCP/UDP checksum field of an IPv4 frame holds the folded
/// pseudo-header sum (as Linux leaves a `CHECKSUM_PARTIAL` frame).
pub fn l4_partial(frame: &[u8]) -> bool {
    let p = partial_sum(frame);
    let at = l4_checksum_at(frame);
    let field = u16::from_be_bytes([frame[at], frame[at + 1]]);
    field == p || (field == 0 && p == 0xffff)
}

/// Offset of the TCP/UDP checksum field in the frame.
pub fn l4_checksum_at(frame: &[u8]) -> usize {
    let (hl, _, proto, ..) = ip_fields(frame);
    14 + hl + if proto == 6 { 16 } else { 6 }
}

/// Make the frame look like Linux CHECKSUM_PARTIAL: the L4 checksum field
/// holds the folded pseudo-header sum.
pub fn make_partial(frame: &mut [u8]) {
    let p = partial_sum(frame);
    let at = l4_checksum_at(frame);
    frame[at..at + 2].copy_from_slice(&p.to_be_bytes());
}

/// The virtio-net header of a TCP/IPv4 GSO frame as [`tcp_frame`] builds
/// it (20-byte IP and TCP headers), checksum partial, segments of
/// `gso_size` payload bytes.
pub fn gso_tcp4(gso_size: u16) -> Offload {
    Offload {
        flags: crate::core::offload::F_NEEDS_CSUM,
        gso_type: crate::core::offload::GSO_TCPV4,
        hdr_len: 54,
        gso_size,
        csum_start: 34,
        csum_offset: 16,
    }
}

/// Clear the IPv4 DF flag (etherparse sets it) and fix the checksum.
pub fn clear_df(frame: &mut [u8]) {
    frame[20] &= !0x40;
    fix_ip_checksum(frame);
}

/// Recompute the IPv4 header checksum after a test edited the header.
pub fn fix_ip_checksum(frame: &mut [u8]) {
    let (hl, ..) = ip_fields(frame);
    frame[24] = 0;
    frame[25] = 0;
    let c = !ref_sum(&[&frame[14..14 + hl]]);
    frame[24..26].copy_from_slice(&c.to_be_bytes());
}

/// Recompute the TCP/UDP/ICMP checksum after a test edited the frame (the
/// L4 segment is what the IP total length, and for UDP its own length,
/// say; nothing is done when those lie beyond the frame). With `partial`,
/// a TCP/UDP field gets the folded pseudo-header sum instead (a veth's
/// `CHECKSUM_PARTIAL` frame).
pub fn fix_l4_checksum(frame: &mut [u8], partial: bool) {
    let (hl, tl, proto, src, dst) = ip_fields(frame);
    if tl < hl || 14 + tl > frame.len() {
        return;
    }
    let l4 = 14 + hl..14 + tl;
    let (at, len) = match proto {
        6 if tl - hl >= 20 => (16, tl - hl),
        17 if tl - hl >= 8 => {
            let ulen = usize::from(u16::from_be_bytes([
                frame[l4.start + 4],
                frame[l4.start + 5],
            ]));
            if !(8..=tl - hl).contains(&ulen) {
                return;
            }
            (6, ulen)
        }
        1 if tl - hl >= 4 => {
            frame[l4.start + 2..l4.start + 4].fill(0);
            let c = !ref_sum(&[&frame[l4.clone()]]);
            frame[l4.start + 2..l4.start + 4].copy_from_slice(&c.to_be_bytes());
            return;
        }
        _ => return,
    };
    let field = l4.start + at;
    if partial {
        let p = ref_sum(&[&pseudo(src, dst, proto, len)]);
        frame[field..field + 2].copy_from_slice(&p.to_be_bytes());
        return;
    }
    frame[field..field + 2].fill(0);
    let mut c = !ref_sum(&[
        &pseudo(src, dst, proto, len),
        &frame[l4.start..l4.start + len],
    ]);
    if proto == 17 && c == 0 {
        c = 0xffff;
    }
    frame[field..field + 2].copy_from_slice(&c.to_be_bytes());
}
