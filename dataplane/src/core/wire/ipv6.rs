//! IPv6 (RFC 8200) and the ICMPv6 (RFC 4443) and neighbour discovery
//! (RFC 4861) constants the pipeline uses.

use std::net::Ipv6Addr;

use super::{be16, checksum, put16};

pub const IPV6_HDR_LEN: usize = 40;
pub const IP_PROTO_ICMPV6: u8 = 58;

pub const ICMPV6_DEST_UNREACHABLE: u8 = 1;
pub const ICMPV6_PACKET_TOO_BIG: u8 = 2;
pub const ICMPV6_TIME_EXCEEDED: u8 = 3;
pub const ICMPV6_ECHO_REQUEST: u8 = 128;
pub const ICMPV6_ECHO_REPLY: u8 = 129;
pub const ND_ROUTER_SOLICIT: u8 = 133;
pub const ND_ROUTER_ADVERT: u8 = 134;
pub const ND_NEIGHBOUR_SOLICIT: u8 = 135;
pub const ND_NEIGHBOUR_ADVERT: u8 = 136;
pub const ND_REDIRECT: u8 = 137;
/// Neighbour solicitation/advertisement: type, code, checksum, flags or
/// reserved (4), target address (16).
pub const ND_NS_LEN: usize = 24;
/// A neighbour advertisement with a target link-layer address option.
pub const ND_NA_LEN: usize = ND_NS_LEN + 8;
/// NA flags (first byte of the reserved word): router, solicited, override.
pub const ND_NA_ROUTER: u8 = 0x80;
pub const ND_NA_SOLICITED: u8 = 0x40;
pub const ND_NA_OVERRIDE: u8 = 0x20;
/// ND option types (RFC 4861 4.6.1).
pub const ND_OPT_SOURCE_LLADDR: u8 = 1;
pub const ND_OPT_TARGET_LLADDR: u8 = 2;
/// Hop limit of neighbour discovery messages (RFC 4861 7.1.1).
pub const ND_HOP_LIMIT: u8 = 255;
/// The minimum IPv6 MTU (RFC 8200 5): ICMPv6 errors quote the offending
/// packet up to this size (RFC 4443 2.4 (c)).
pub const IPV6_MIN_MTU: usize = 1280;

/// Extension headers the walk steps over (RFC 8200 4.1); anything else
/// (TCP, UDP, ICMPv6, ESP, no next header, ...) ends the walk.
const EXT_HOP_BY_HOP: u8 = 0;
const EXT_ROUTING: u8 = 43;
const EXT_FRAGMENT: u8 = 44;
const EXT_AUTH: u8 = 51;
const EXT_DEST_OPTS: u8 = 60;
/// At most this many extension headers before the upper layer: a chain
/// longer than that is refused rather than walked (Linux and most
/// firewalls bound it too; RFC 8200 recommends each at most once).
pub const MAX_EXT_HEADERS: usize = 8;

/// Why an IPv6 packet was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ipv6Error {
    /// Shorter than its header, not version 6, or a payload length beyond
    /// the bytes present.
    Malformed,
    /// A jumbogram (payload length 0 with a hop-by-hop option), never
    /// seen on the links ferry serves.
    Jumbo,
}

/// Why the extension header chain could not be walked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtError {
    /// A header runs past the packet.
    Truncated,
    /// More than [`MAX_EXT_HEADERS`].
    TooMany,
}

/// The upper-layer protocol of an IPv6 packet, after its extension
/// headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpperLayer {
    pub protocol: u8,
    /// Offset of the upper-layer header from the start of the IPv6 header.
    pub offset: usize,
    /// The packet is a fragment (a fragment header was met): the upper
    /// layer is not whole here.
    pub fragment: bool,
    /// The offset of the fragment is not 0 (the upper-layer header is in
    /// another fragment).
    pub later_fragment: bool,
}

/// An IPv6 packet. Invariants: `40 <= total_len <= buf.len()`, version 6.
pub struct Ipv6<'a> {
    buf: &'a mut [u8],
    total_len: usize,
}

impl<'a> Ipv6<'a> {
    /// Check an IPv6 packet at the start of `buf` (trailing bytes, e.g.
    /// Ethernet padding, are allowed and ignored).
    pub fn new_checked(buf: &'a mut [u8]) -> Result<Self, Ipv6Error> {
        if buf.len() < IPV6_HDR_LEN || buf[0] >> 4 != 6 {
            return Err(Ipv6Error::Malformed);
        }
        let payload_len = usize::from(be16(buf, 4));
        if payload_len == 0 && buf[6] == EXT_HOP_BY_HOP {
            return Err(Ipv6Error::Jumbo);
        }
        let total_len = IPV6_HDR_LEN + payload_len;
        if total_len > buf.len() {
            return Err(Ipv6Error::Malformed);
        }
        Ok(Ipv6 { buf, total_len })
    }

    /// Header and payload (`40 + payload length`).
    pub fn total_len(&self) -> usize {
        self.total_len
    }
    pub fn next_header(&self) -> u8 {
        self.buf[6]
    }
    pub fn hop_limit(&self) -> u8 {
        self.buf[7]
    }
    pub fn src(&self) -> Ipv6Addr {
        ip6(self.buf, 8)
    }
    pub fn dst(&self) -> Ipv6Addr {
        ip6(self.buf, 24)
    }

    /// Hop limit - 1 (IPv6 has no header checksum). Callers check
    /// `hop_limit() > 1` first.
    pub fn decrement_hop_limit(&mut self) {
        self.buf[7] = self.buf[7].saturating_sub(1);
    }

    /// Swap source and destination and set the hop limit (for replies
    /// sent back to the sender). The pseudo-header sum is unchanged.
    pub fn make_reply_header(&mut self, hop_limit: u8) {
        let (src, dst) = (self.src(), self.dst());
        self.buf[8..24].copy_from_slice(&dst.octets());
        self.buf[24..40].copy_from_slice(&src.octets());
        self.buf[7] = hop_limit;
    }

    /// Set the source address (a reply from another address than the one
    /// asked). The caller fixes the upper-layer checksum.
    pub fn set_src(&mut self, src: Ipv6Addr) {
        self.buf[8..24].copy_from_slice(&src.octets());
    }

    /// Set the destination address. The caller fixes the upper-layer
    /// checksum.
    pub fn set_dst(&mut self, dst: Ipv6Addr) {
        self.buf[24..40].copy_from_slice(&dst.octets());
    }

    /// Walk the extension headers to the upper layer, at most
    /// [`MAX_EXT_HEADERS`] of them, each inside the packet.
    pub fn upper_layer(&self) -> Result<UpperLayer, ExtError> {
        let packet = &self.buf[..self.total_len];
        let mut protocol = self.next_header();
        let mut offset = IPV6_HDR_LEN;
        let (mut fragment, mut later_fragment) = (false, false);
        for _ in 0..=MAX_EXT_HEADERS {
            let len = match protocol {
                EXT_HOP_BY_HOP | EXT_ROUTING | EXT_DEST_OPTS => {
                    let b = packet.get(offset + 1).ok_or(ExtError::Truncated)?;
                    (usize::from(*b) + 1) * 8
                }
                EXT_AUTH => {
                    let b = packet.get(offset + 1).ok_or(ExtError::Truncated)?;
                    (usize::from(*b) + 2) * 4
                }
                EXT_FRAGMENT => {
                    let h = packet.get(offset..offset + 8).ok_or(ExtError::Truncated)?;
                    fragment = true;
                    later_fragment |= be16(h, 2) & 0xfff8 != 0;
                    8
                }
                _ => {
                    return Ok(UpperLayer {
                        protocol,
                        offset,
                        fragment,
                        later_fragment,
                    })
                }
            };
            if offset + len > packet.len() {
                return Err(ExtError::Truncated);
            }
            protocol = packet[offset];
            offset += len;
        }
        Err(ExtError::TooMany)
    }

    /// The whole packet (`..total_len`).
    pub fn packet(&self) -> &[u8] {
        &self.buf[..self.total_len]
    }

    /// The bytes after the fixed header (`40..total_len`).
    pub fn payload(&self) -> &[u8] {
        &self.buf[IPV6_HDR_LEN..self.total_len]
    }

    /// The bytes after the fixed header (`40..total_len`).
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buf[IPV6_HDR_LEN..self.total_len]
    }

    /// The bytes from `offset` (an [`UpperLayer::offset`]) to the end.
    pub fn from_mut(&mut self, offset: usize) -> &mut [u8] {
        let at = offset.min(self.total_len);
        &mut self.buf[at..self.total_len]
    }
}

#[inline]
fn ip6(b: &[u8], at: usize) -> Ipv6Addr {
    let mut o = [0u8; 16];
    o.copy_from_slice(&b[at..at + 16]);
    Ipv6Addr::from(o)
}

/// Write a fresh 40-byte IPv6 header (traffic class and flow label 0)
/// into `buf[..40]`. `buf` must hold at least 40 bytes.
pub fn write_ipv6_header(
    buf: &mut [u8],
    payload_len: u16,
    next_header: u8,
    hop_limit: u8,
    src: Ipv6Addr,
    dst: Ipv6Addr,
) {
    let h = &mut buf[..IPV6_HDR_LEN];
    h[..4].copy_from_slice(&[0x60, 0, 0, 0]);
    put16(h, 4, payload_len);
    h[6] = next_header;
    h[7] = hop_limit;
    h[8..24].copy_from_slice(&src.octets());
    h[24..40].copy_from_slice(&dst.octets());
}

/// The IPv6 upper-layer pseudo-header sum (RFC 8200 8.1: source,
/// destination, upper-layer length, next header), not folded.
#[inline]
pub fn pseudo_header(src: &Ipv6Addr, dst: &Ipv6Addr, proto: u8, l4_len: u32) -> u64 {
    let acc = checksum::add_bytes(0, &src.octets());
    let acc = checksum::add_bytes(acc, &dst.octets());
    acc + u64::from(l4_len >> 16) + u64::from(l4_len & 0xffff) + u64::from(proto)
}

/// The ICMPv6 checksum of `message` (its checksum field zero or not: the
/// field is skipped) from `src` to `dst`.
pub fn icmpv6_checksum(src: &Ipv6Addr, dst: &Ipv6Addr, message: &[u8]) -> u16 {
    let pseudo = pseudo_header(src, dst, IP_PROTO_ICMPV6, message.len() as u32);
    let acc = checksum::add_bytes(pseudo, &message[..2.min(message.len())]);
    let acc = checksum::add_bytes(acc, message.get(4..).unwrap_or(&[]));
    !checksum::fold(acc)
}

/// Whether `a` is link-local unicast (fe80::/10).
pub fn is_link_local(a: &Ipv6Addr) -> bool {
    a.segments()[0] & 0xffc0 == 0xfe80
}

/// The solicited-node multicast address of `a` (ff02::1:ffXX:XXXX).
pub fn solicited_node(a: &Ipv6Addr) -> Ipv6Addr {
    let o = a.octets();
    Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(o[13]),
        u16::from_be_bytes([o[14], o[15]]),
    )
}

/// The Ethernet address of IPv6 multicast `a` (33:33 and its low 32 bits,
/// RFC 2464 7).
pub fn multicast_mac(a: &Ipv6Addr) -> [u8; 6] {
    let o = a.octets();
    [0x33, 0x33, o[12], o[13], o[14], o[15]]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(next: u8, ext: &[u8], payload_len: u16) -> Vec<u8> {
        let mut p = vec![0u8; IPV6_HDR_LEN];
        write_ipv6_header(
            &mut p,
            payload_len,
            next,
            64,
            "fd00::2".parse().unwrap(),
            "fd00::3".parse().unwrap(),
        );
        p.extend_from_slice(ext);
        p.resize(IPV6_HDR_LEN + usize::from(payload_len), 0);
        p
    }

    #[test]
    fn headers_are_checked() {
        let mut ok = packet(17, &[], 8);
        let ip = Ipv6::new_checked(&mut ok).ok().unwrap();
        assert_eq!(ip.total_len(), 48);
        assert_eq!(ip.hop_limit(), 64);
        assert_eq!(ip.src(), "fd00::2".parse::<Ipv6Addr>().unwrap());
        let mut short = packet(17, &[], 8);
        short.truncate(47);
        assert_eq!(
            Ipv6::new_checked(&mut short).err(),
            Some(Ipv6Error::Malformed)
        );
        let mut v4 = packet(17, &[], 8);
        v4[0] = 0x45;
        assert_eq!(Ipv6::new_checked(&mut v4).err(), Some(Ipv6Error::Malformed));
        let mut jumbo = packet(0, &[], 0);
        assert_eq!(Ipv6::new_checked(&mut jumbo).err(), Some(Ipv6Error::Jumbo));
    }

    #[test]
    fn extension_headers_are_walked_with_a_bound() {
        // Hop-by-hop (8 bytes) then a fragment header (offset 0, M set)
        // then UDP.
        let ext = [EXT_FRAGMENT, 0, 1, 4, 0, 0, 0, 0, 17, 0, 0, 1, 0, 0, 0, 1];
        let mut p = packet(EXT_HOP_BY_HOP, &ext, 24);
        let ip = Ipv6::new_checked(&mut p).ok().unwrap();
        let up = ip.upper_layer().unwrap();
        assert_eq!((up.protocol, up.offset), (17, 56));
        assert!(up.fragment && !up.later_fragment);

        // A later fragment.
        let ext = [17, 0, 0, 8, 0, 0, 0, 1];
        let mut p = packet(EXT_FRAGMENT, &ext, 16);
        let up = Ipv6::new_checked(&mut p)
            .ok()
            .unwrap()
            .upper_layer()
            .unwrap();
        assert!(up.fragment && up.later_fragment);

        // A header running past the packet.
        let ext = [17, 4, 0, 0, 0, 0, 0, 0];
        let mut p = packet(EXT_DEST_OPTS, &ext, 8);
        let ip = Ipv6::new_checked(&mut p).ok().unwrap();
        assert_eq!(ip.upper_layer(), Err(ExtError::Truncated));

        // Nine destination-options headers.
        let mut ext = Vec::new();
        for _ in 0..MAX_EXT_HEADERS + 1 {
            ext.extend_from_slice(&[EXT_DEST_OPTS, 0, 0, 0, 0, 0, 0, 0]);
        }
        let len = ext.len() as u16;
        let mut p = packet(EXT_DEST_OPTS, &ext, len);
        let ip = Ipv6::new_checked(&mut p).ok().unwrap();
        assert_eq!(ip.upper_layer(), Err(ExtError::TooMany));
    }

    #[test]
    fn addresses_of_neighbour_discovery() {
        let a: Ipv6Addr = "fd00::12:3456".parse().unwrap();
        assert_eq!(
            solicited_node(&a),
            "ff02::1:ff12:3456".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(
            multicast_mac(&solicited_node(&a)),
            [0x33, 0x33, 0xff, 0x12, 0x34, 0x56]
        );
        assert!(is_link_local(&"fe80::1".parse().unwrap()));
        assert!(is_link_local(&"febf::1".parse().unwrap()));
        assert!(!is_link_local(&"fec0::1".parse().unwrap()));
    }

    #[test]
    fn icmpv6_checksum_verifies() {
        let (src, dst) = ("fe80::1".parse().unwrap(), "ff02::1".parse().unwrap());
        let mut m = vec![ICMPV6_ECHO_REQUEST, 0, 0, 0, 0, 1, 0, 7, 1, 2, 3];
        let c = icmpv6_checksum(&src, &dst, &m);
        put16(&mut m, 2, c);
        let pseudo = pseudo_header(&src, &dst, IP_PROTO_ICMPV6, m.len() as u32);
        assert_eq!(checksum::fold(checksum::add_bytes(pseudo, &m)), 0xffff);
    }
}
