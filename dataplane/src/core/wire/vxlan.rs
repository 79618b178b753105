//! VXLAN over IPv4 (RFC 7348): the outer Ethernet, IPv4, UDP and VXLAN
//! headers around a pod's Ethernet frame.
//!
//! [`Outer`] is the checked view of a received encapsulation (the decap
//! side); [`write_outer`] writes one in front of a frame (the encap side)
//! and [`fix_outer`] adjusts a copy of it to another inner length (each
//! segment of a GSO frame gets its own). The outer UDP checksum is 0, as
//! RFC 7348 section 5 says an IPv4 VTEP should send it; the outer IPv4
//! header checksum is always valid.

use std::net::Ipv4Addr;

use super::{be16, checksum, ip4, put16, ETHERTYPE_IPV4, ETH_HDR_LEN, IPV4_MIN_HDR_LEN};
use super::{IP_PROTO_UDP, UDP_HDR_LEN};

pub const VXLAN_HDR_LEN: usize = 8;
/// Outer Ethernet + IPv4 (no options) + UDP + VXLAN: what encapsulation
/// puts in front of the inner frame.
pub const OUTER_LEN: usize = ETH_HDR_LEN + IPV4_MIN_HDR_LEN + UDP_HDR_LEN + VXLAN_HDR_LEN;
/// The "I" flag: the VNI is valid (the only flag RFC 7348 defines).
const FLAG_VNI: u8 = 0x08;
/// TTL of outer headers (Linux's vxlan default is the route's hop limit,
/// 64 on Linux).
pub const OUTER_TTL: u8 = 64;
/// Source ports are taken from the inner flow's hash within this range
/// (RFC 7348 recommends the dynamic/private range 49152-65535).
const SRC_PORT_BASE: u16 = 49152;

/// Why a received frame is not a VXLAN packet we take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OuterError {
    /// Not IPv4/UDP, a bad outer IPv4 checksum, a fragment, lengths that do
    /// not add up, the I flag clear, or no room for an inner Ethernet
    /// header.
    Malformed,
    /// Addressed to another address or UDP port.
    NotForUs,
    /// A VNI other than ours.
    WrongVni,
}

/// A checked VXLAN encapsulation at the start of a frame. Invariant: the
/// frame holds the whole outer header (`inner_at` bytes) plus at least an
/// inner Ethernet header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outer {
    /// The sender's (outer source) address.
    pub src: Ipv4Addr,
    /// Where the inner Ethernet frame starts.
    pub inner_at: usize,
    /// The inner frame's length (from the UDP length, so Ethernet padding
    /// of the outer frame is not part of it).
    pub inner_len: usize,
}

impl Outer {
    /// Check `frame` as VXLAN to `address`:`port` with VNI `vni`.
    pub fn parse(
        frame: &[u8],
        address: Ipv4Addr,
        port: u16,
        vni: u32,
    ) -> Result<Outer, OuterError> {
        use OuterError::*;
        if frame.len() < ETH_HDR_LEN + IPV4_MIN_HDR_LEN || be16(frame, 12) != ETHERTYPE_IPV4 {
            return Err(Malformed);
        }
        let ip = &frame[ETH_HDR_LEN..];
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        let total = usize::from(be16(ip, 2));
        if ip[0] >> 4 != 4 || ihl < IPV4_MIN_HDR_LEN || total < ihl || total > ip.len() {
            return Err(Malformed);
        }
        if checksum::fold(checksum::add_bytes(0, &ip[..ihl])) != 0xffff {
            return Err(Malformed);
        }
        // A fragment (offset or MF set) is not a whole UDP datagram.
        if be16(ip, 6) & 0x3fff != 0 || ip[9] != IP_PROTO_UDP {
            return Err(Malformed);
        }
        if ip4(ip, 16) != address {
            return Err(NotForUs);
        }
        let udp = &ip[ihl..total];
        if udp.len() < UDP_HDR_LEN + VXLAN_HDR_LEN {
            return Err(Malformed);
        }
        if be16(udp, 2) != port {
            return Err(NotForUs);
        }
        let udp_len = usize::from(be16(udp, 4));
        if udp_len < UDP_HDR_LEN + VXLAN_HDR_LEN + ETH_HDR_LEN || udp_len > udp.len() {
            return Err(Malformed);
        }
        let vx = &udp[UDP_HDR_LEN..];
        if vx[0] & FLAG_VNI == 0 {
            return Err(Malformed);
        }
        let got = u32::from_be_bytes([0, vx[4], vx[5], vx[6]]);
        if got != vni {
            return Err(WrongVni);
        }
        Ok(Outer {
            src: ip4(ip, 12),
            inner_at: ETH_HDR_LEN + ihl + UDP_HDR_LEN + VXLAN_HDR_LEN,
            inner_len: udp_len - UDP_HDR_LEN - VXLAN_HDR_LEN,
        })
    }
}

/// Who an encapsulation is from and to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tunnel {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub port: u16,
    pub vni: u32,
}

/// Write the outer headers for an inner frame of `inner` into
/// `out[..OUTER_LEN]` (`out.len() >= OUTER_LEN`). The outer IPv4 header
/// copies the inner packet's DF bit and TOS (as Linux's vxlan does with
/// `df inherit` and `tos inherit`) and takes the inner IP id; the UDP
/// source port is `src_port`.
pub fn write_outer(out: &mut [u8], t: &Tunnel, inner: &[u8], src_port: u16) {
    let h = &mut out[..OUTER_LEN];
    h[0..6].copy_from_slice(&t.dst_mac);
    h[6..12].copy_from_slice(&t.src_mac);
    put16(h, 12, ETHERTYPE_IPV4);
    let ip = &mut h[ETH_HDR_LEN..];
    ip[0] = 0x45;
    ip[1] = 0;
    put16(ip, 2, 0);
    put16(ip, 4, 0);
    put16(ip, 6, 0);
    ip[8] = OUTER_TTL;
    ip[9] = IP_PROTO_UDP;
    put16(ip, 10, 0);
    ip[12..16].copy_from_slice(&t.src.octets());
    ip[16..20].copy_from_slice(&t.dst.octets());
    let udp = &mut ip[IPV4_MIN_HDR_LEN..];
    put16(udp, 0, src_port);
    put16(udp, 2, t.port);
    put16(udp, 4, 0);
    put16(udp, 6, 0);
    let vx = &mut udp[UDP_HDR_LEN..];
    vx.copy_from_slice(&[FLAG_VNI, 0, 0, 0, 0, 0, 0, 0]);
    let vni = t.vni.to_be_bytes();
    vx[4..7].copy_from_slice(&vni[1..4]);
    fix_outer(h, inner);
}

/// Set the lengths, id, TOS, DF and IPv4 checksum of the outer header
/// `outer` (`OUTER_LEN` bytes, as [`write_outer`] made it) for the inner
/// frame `inner`. An inner frame that is not IPv4 leaves id, TOS and DF 0.
pub fn fix_outer(outer: &mut [u8], inner: &[u8]) {
    // A GSO frame's outer header is rewritten per segment; until then its
    // lengths are clamped to what the fields hold, consistently.
    let total =
        (IPV4_MIN_HDR_LEN + UDP_HDR_LEN + VXLAN_HDR_LEN + inner.len()).min(usize::from(u16::MAX));
    let udp_len = total - IPV4_MIN_HDR_LEN;
    let (tos, id, df) = match inner_ipv4(inner) {
        Some(i) => (i[1], be16(i, 4), be16(i, 6) & 0x4000),
        None => (0, 0, 0),
    };
    let ip = &mut outer[ETH_HDR_LEN..ETH_HDR_LEN + IPV4_MIN_HDR_LEN + UDP_HDR_LEN];
    ip[1] = tos;
    put16(ip, 2, total as u16);
    put16(ip, 4, id);
    put16(ip, 6, df);
    put16(ip, 10, 0);
    let c = checksum::checksum(&ip[..IPV4_MIN_HDR_LEN]);
    put16(ip, 10, c);
    put16(ip, IPV4_MIN_HDR_LEN + 4, udp_len as u16);
}

/// The inner frame's IPv4 header bytes, if it is IPv4 with a whole
/// minimal header.
fn inner_ipv4(inner: &[u8]) -> Option<&[u8]> {
    if inner.len() < ETH_HDR_LEN + IPV4_MIN_HDR_LEN || be16(inner, 12) != ETHERTYPE_IPV4 {
        return None;
    }
    Some(&inner[ETH_HDR_LEN..ETH_HDR_LEN + IPV4_MIN_HDR_LEN])
}

/// The UDP source port for an inner frame: a hash of its IPv4 addresses,
/// protocol and (unfragmented TCP/UDP) ports, so one flow keeps one outer
/// port (no reordering) and flows spread over the fabric's ECMP paths and
/// the peer's RSS queues.
pub fn flow_port(inner: &[u8]) -> u16 {
    let Some(ip) = inner_ipv4(inner) else {
        return SRC_PORT_BASE;
    };
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let proto = ip[9];
    let mut h: u64 = u64::from(u32::from_be_bytes([ip[12], ip[13], ip[14], ip[15]]));
    h = (h << 32) | u64::from(u32::from_be_bytes([ip[16], ip[17], ip[18], ip[19]]));
    h ^= u64::from(proto) << 56;
    let l4 = ETH_HDR_LEN + ihl;
    let unfragmented = be16(ip, 6) & 0x3fff == 0;
    if unfragmented && matches!(proto, 6 | 17) && inner.len() >= l4 + 4 {
        h ^= u64::from(u32::from_be_bytes([
            inner[l4],
            inner[l4 + 1],
            inner[l4 + 2],
            inner[l4 + 3],
        ]));
    }
    // A 64-bit multiplicative mix (Fibonacci hashing); the high bits are
    // the well-mixed ones.
    let mixed = h.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    SRC_PORT_BASE | ((mixed >> 50) as u16 & 0x3fff)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 70, 1);
    const PEER: Ipv4Addr = Ipv4Addr::new(192, 168, 70, 2);

    fn tunnel() -> Tunnel {
        Tunnel {
            src_mac: [2, 0, 0, 0, 0, 2],
            dst_mac: [2, 0, 0, 0, 0, 1],
            src: PEER,
            dst: NODE,
            port: 4789,
            vni: 0x12_3456,
        }
    }

    /// An inner IPv4/UDP frame with `payload` bytes, DF set, id 7, TOS 0x10.
    fn inner(payload: usize) -> Vec<u8> {
        let mut f = vec![0u8; ETH_HDR_LEN + 28 + payload];
        put16(&mut f, 12, ETHERTYPE_IPV4);
        let l3 = (28 + payload) as u16;
        super::super::write_ipv4_header(
            &mut f[ETH_HDR_LEN..],
            0x10,
            l3,
            64,
            IP_PROTO_UDP,
            Ipv4Addr::new(10, 70, 2, 5),
            Ipv4Addr::new(10, 70, 1, 5),
        );
        put16(&mut f[ETH_HDR_LEN..], 4, 7);
        put16(&mut f[ETH_HDR_LEN..], 6, 0x4000);
        put16(&mut f[ETH_HDR_LEN..], 10, 0);
        let c = checksum::checksum(&f[ETH_HDR_LEN..ETH_HDR_LEN + 20]);
        put16(&mut f[ETH_HDR_LEN..], 10, c);
        put16(&mut f, ETH_HDR_LEN + 20, 1000);
        put16(&mut f, ETH_HDR_LEN + 22, 2000);
        put16(&mut f, ETH_HDR_LEN + 24, (8 + payload) as u16);
        f
    }

    fn encapsulated(payload: usize) -> Vec<u8> {
        let i = inner(payload);
        let mut f = vec![0u8; OUTER_LEN];
        write_outer(&mut f, &tunnel(), &i, flow_port(&i));
        f.extend_from_slice(&i);
        f
    }

    #[test]
    fn what_is_written_parses_back_and_is_valid() {
        let f = encapsulated(100);
        let o = Outer::parse(&f, NODE, 4789, 0x12_3456).unwrap();
        assert_eq!(o.src, PEER);
        assert_eq!(o.inner_at, OUTER_LEN);
        assert_eq!(o.inner_len, f.len() - OUTER_LEN);
        let ip = &f[ETH_HDR_LEN..];
        assert_eq!(checksum::fold(checksum::add_bytes(0, &ip[..20])), 0xffff);
        assert_eq!(be16(ip, 2) as usize, f.len() - ETH_HDR_LEN);
        assert_eq!(be16(ip, 6), 0x4000, "DF copied from the inner packet");
        assert_eq!(be16(ip, 4), 7, "id copied");
        assert_eq!(ip[1], 0x10, "TOS copied");
        assert_eq!(be16(ip, 26), 0, "UDP checksum 0 (RFC 7348)");
        assert!(be16(ip, 20) >= SRC_PORT_BASE);
        assert_eq!(&f[..6], &tunnel().dst_mac);
    }

    #[test]
    fn every_fault_is_refused_with_its_reason() {
        let good = encapsulated(20);
        type Case = (&'static str, fn(&mut Vec<u8>), OuterError);
        let cases: &[Case] = &[
            ("not ipv4", |f| f[12] = 0x86, OuterError::Malformed),
            (
                "bad ip checksum",
                |f| f[ETH_HDR_LEN + 8] ^= 1,
                OuterError::Malformed,
            ),
            (
                "fragment",
                |f| {
                    f[ETH_HDR_LEN + 6] |= 0x20;
                    refix(f)
                },
                OuterError::Malformed,
            ),
            (
                "tcp",
                |f| {
                    f[ETH_HDR_LEN + 9] = 6;
                    refix(f)
                },
                OuterError::Malformed,
            ),
            (
                "other address",
                |f| {
                    f[ETH_HDR_LEN + 19] = 9;
                    refix(f)
                },
                OuterError::NotForUs,
            ),
            (
                "other port",
                |f| f[ETH_HDR_LEN + 23] = 1,
                OuterError::NotForUs,
            ),
            (
                "I flag clear",
                |f| f[OUTER_LEN - 8] = 0,
                OuterError::Malformed,
            ),
            ("other vni", |f| f[OUTER_LEN - 2] ^= 1, OuterError::WrongVni),
            (
                "udp length too long",
                |f| {
                    let at = ETH_HDR_LEN + 24;
                    let l = be16(f, at);
                    put16(f, at, l + 1);
                },
                OuterError::Malformed,
            ),
            (
                "udp length too short",
                |f| put16(f, ETH_HDR_LEN + 24, 20),
                OuterError::Malformed,
            ),
        ];
        for (what, mutate, want) in cases {
            let mut f = good.clone();
            mutate(&mut f);
            assert_eq!(
                Outer::parse(&f, NODE, 4789, 0x12_3456),
                Err(*want),
                "{what}"
            );
        }
        for cut in 0..OUTER_LEN + ETH_HDR_LEN {
            assert!(
                Outer::parse(&good[..cut], NODE, 4789, 0x12_3456).is_err(),
                "cut at {cut}"
            );
        }
    }

    /// Recompute the outer IPv4 checksum after a test changed a field.
    fn refix(f: &mut [u8]) {
        let ip = &mut f[ETH_HDR_LEN..ETH_HDR_LEN + 20];
        put16(ip, 10, 0);
        let c = checksum::checksum(ip);
        put16(ip, 10, c);
    }

    #[test]
    fn flow_ports_are_stable_per_flow_and_spread() {
        let a = inner(10);
        assert_eq!(flow_port(&a), flow_port(&a.clone()));
        let mut ports = std::collections::BTreeSet::new();
        for sport in 0..256u16 {
            let mut f = inner(10);
            put16(&mut f, ETH_HDR_LEN + 20, 30000 + sport);
            ports.insert(flow_port(&f));
        }
        assert!(
            ports.len() > 200,
            "{} distinct ports of 256 flows",
            ports.len()
        );
        assert!(ports.iter().all(|p| *p >= SRC_PORT_BASE));
        assert_eq!(flow_port(&[0u8; 3]), SRC_PORT_BASE);
    }

    #[test]
    fn fix_outer_follows_another_inner_length() {
        let mut f = encapsulated(100);
        let shorter = inner(10);
        fix_outer(&mut f[..OUTER_LEN], &shorter);
        f.truncate(OUTER_LEN);
        f.extend_from_slice(&shorter);
        let o = Outer::parse(&f, NODE, 4789, 0x12_3456).unwrap();
        assert_eq!(o.inner_len, shorter.len());
    }
}
