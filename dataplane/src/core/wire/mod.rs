//! Checked views over packet bytes (smoltcp's `Packet` idea): a view is made
//! by a `new_checked` constructor that validates every length its accessors
//! rely on, so once a view exists its accessors index within bounds and
//! cannot panic. Nothing is ever cast to a struct.

use std::net::Ipv4Addr;

pub mod checksum;
pub mod ipv6;
pub mod vxlan;

pub use ipv6::{Ipv6, Ipv6Error};

use super::verdict::DropReason;

pub const ETH_HDR_LEN: usize = 14;
pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_ARP: u16 = 0x0806;
pub const ETHERTYPE_IPV6: u16 = 0x86dd;

pub const IPV4_MIN_HDR_LEN: usize = 20;
pub const IP_PROTO_ICMP: u8 = 1;
pub const IP_PROTO_TCP: u8 = 6;
pub const IP_PROTO_UDP: u8 = 17;

pub const ARP_LEN: usize = 28;
pub const ARP_OP_REQUEST: u16 = 1;
pub const ARP_OP_REPLY: u16 = 2;

pub const ICMP_HDR_LEN: usize = 8;
pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_DEST_UNREACHABLE: u8 = 3;
/// Code of ICMP destination unreachable: fragmentation needed and DF set
/// (RFC 792; RFC 1191 adds the next-hop MTU in bytes 6..8).
pub const ICMP_FRAG_NEEDED: u8 = 4;
pub const ICMP_SOURCE_QUENCH: u8 = 4;
pub const ICMP_REDIRECT: u8 = 5;
pub const ICMP_ECHO_REQUEST: u8 = 8;
pub const ICMP_TIME_EXCEEDED: u8 = 11;
pub const ICMP_PARAMETER_PROBLEM: u8 = 12;

pub const TCP_MIN_HDR_LEN: usize = 20;
pub const TCP_CHECKSUM_OFFSET: usize = 16;
/// TCP flags (byte 13 of the header).
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;
pub const UDP_HDR_LEN: usize = 8;
pub const UDP_CHECKSUM_OFFSET: usize = 6;

#[inline]
fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

#[inline]
fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

#[inline]
fn ip4(b: &[u8], at: usize) -> Ipv4Addr {
    Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3])
}

/// An Ethernet II header followed by its payload. Invariant: `len >= 14`.
pub struct Ethernet<'a> {
    buf: &'a mut [u8],
}

impl<'a> Ethernet<'a> {
    pub fn new_checked(buf: &'a mut [u8]) -> Result<Self, DropReason> {
        if buf.len() < ETH_HDR_LEN {
            return Err(DropReason::Runt);
        }
        Ok(Ethernet { buf })
    }

    pub fn src(&self) -> [u8; 6] {
        let mut m = [0; 6];
        m.copy_from_slice(&self.buf[6..12]);
        m
    }

    pub fn ethertype(&self) -> u16 {
        be16(self.buf, 12)
    }

    pub fn set_dst(&mut self, mac: [u8; 6]) {
        self.buf[0..6].copy_from_slice(&mac);
    }

    pub fn set_src(&mut self, mac: [u8; 6]) {
        self.buf[6..12].copy_from_slice(&mac);
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buf[ETH_HDR_LEN..]
    }
}

/// An ARP packet for IPv4 over Ethernet. Invariant: `len >= 28` and the
/// hardware/protocol types and sizes are Ethernet/IPv4.
pub struct Arp<'a> {
    buf: &'a mut [u8],
}

impl<'a> Arp<'a> {
    pub fn new_checked(buf: &'a mut [u8]) -> Result<Self, DropReason> {
        if buf.len() < ARP_LEN
            || be16(buf, 0) != 1
            || be16(buf, 2) != ETHERTYPE_IPV4
            || buf[4] != 6
            || buf[5] != 4
        {
            return Err(DropReason::Malformed);
        }
        Ok(Arp { buf })
    }

    pub fn operation(&self) -> u16 {
        be16(self.buf, 6)
    }
    pub fn sender_mac(&self) -> [u8; 6] {
        let mut m = [0; 6];
        m.copy_from_slice(&self.buf[8..14]);
        m
    }
    pub fn sender_ip(&self) -> Ipv4Addr {
        ip4(self.buf, 14)
    }
    pub fn target_ip(&self) -> Ipv4Addr {
        ip4(self.buf, 24)
    }

    /// Turn this request into the reply "`target_ip` is at `mac`", addressed
    /// to the requester.
    pub fn make_reply(&mut self, mac: [u8; 6]) {
        let mut asker = [0u8; 10];
        asker.copy_from_slice(&self.buf[8..18]);
        let mut target = [0u8; 4];
        target.copy_from_slice(&self.buf[24..28]);
        put16(self.buf, 6, ARP_OP_REPLY);
        self.buf[8..14].copy_from_slice(&mac);
        self.buf[14..18].copy_from_slice(&target);
        self.buf[18..28].copy_from_slice(&asker);
    }
}

/// Why an IPv4 header was refused.
pub enum Ipv4Error {
    Malformed,
    BadChecksum,
}

/// An IPv4 packet. Invariants: `20 <= header_len <= total_len <= buf.len()`,
/// version 4, header checksum valid when made by `new_checked`.
pub struct Ipv4<'a> {
    buf: &'a mut [u8],
    header_len: usize,
    total_len: usize,
}

impl<'a> Ipv4<'a> {
    /// Check an IPv4 packet at the start of `buf` (trailing bytes, e.g.
    /// Ethernet padding, are allowed and ignored).
    pub fn new_checked(buf: &'a mut [u8]) -> Result<Self, Ipv4Error> {
        if buf.len() < IPV4_MIN_HDR_LEN || buf[0] >> 4 != 4 {
            return Err(Ipv4Error::Malformed);
        }
        let header_len = usize::from(buf[0] & 0x0f) * 4;
        let total_len = usize::from(be16(buf, 2));
        if header_len < IPV4_MIN_HDR_LEN || header_len > total_len || total_len > buf.len() {
            return Err(Ipv4Error::Malformed);
        }
        if checksum::fold(checksum::add_bytes(0, &buf[..header_len])) != 0xffff {
            return Err(Ipv4Error::BadChecksum);
        }
        Ok(Ipv4 {
            buf,
            header_len,
            total_len,
        })
    }

    pub fn header_len(&self) -> usize {
        self.header_len
    }
    pub fn total_len(&self) -> usize {
        self.total_len
    }
    pub fn header(&self) -> &[u8] {
        &self.buf[..self.header_len]
    }
    /// Fragment offset in 8-byte units.
    pub fn frag_offset(&self) -> u16 {
        be16(self.buf, 6) & 0x1fff
    }
    pub fn more_fragments(&self) -> bool {
        self.buf[6] & 0x20 != 0
    }
    /// The DF flag: the sender wants an ICMP "fragmentation needed"
    /// rather than its packet fragmented.
    pub fn dont_fragment(&self) -> bool {
        self.buf[6] & 0x40 != 0
    }
    /// Whether the whole L4 message is in this packet (not a fragment).
    pub fn is_unfragmented(&self) -> bool {
        self.frag_offset() == 0 && !self.more_fragments()
    }
    pub fn ttl(&self) -> u8 {
        self.buf[8]
    }
    pub fn protocol(&self) -> u8 {
        self.buf[9]
    }
    pub fn src(&self) -> Ipv4Addr {
        ip4(self.buf, 12)
    }
    pub fn dst(&self) -> Ipv4Addr {
        ip4(self.buf, 16)
    }
    pub fn src_octets(&self) -> [u8; 4] {
        self.src().octets()
    }
    pub fn dst_octets(&self) -> [u8; 4] {
        self.dst().octets()
    }

    /// TTL - 1 with the RFC 1624 incremental checksum update.
    /// Callers check `ttl() > 1` first.
    pub fn decrement_ttl(&mut self) {
        let old = be16(self.buf, 8);
        self.buf[8] = self.buf[8].saturating_sub(1);
        let new = be16(self.buf, 8);
        let hc = be16(self.buf, 10);
        put16(self.buf, 10, checksum::update16(hc, old, new));
    }

    /// Swap source and destination, set the TTL and recompute the header
    /// checksum (for replies sent back to the sender).
    pub fn make_reply_header(&mut self, ttl: u8) {
        let src = self.src_octets();
        let dst = self.dst_octets();
        self.buf[12..16].copy_from_slice(&dst);
        self.buf[16..20].copy_from_slice(&src);
        self.buf[8] = ttl;
        self.fill_checksum();
    }

    /// Rewrite the source and destination addresses (service
    /// translation) and recompute the header checksum.
    pub fn set_addresses(&mut self, src: Ipv4Addr, dst: Ipv4Addr) {
        self.buf[12..16].copy_from_slice(&src.octets());
        self.buf[16..20].copy_from_slice(&dst.octets());
        self.fill_checksum();
    }

    fn fill_checksum(&mut self) {
        put16(self.buf, 10, 0);
        let c = checksum::checksum(&self.buf[..self.header_len]);
        put16(self.buf, 10, c);
    }

    /// The L4 bytes (`header_len..total_len`).
    pub fn payload(&self) -> &[u8] {
        &self.buf[self.header_len..self.total_len]
    }

    /// The L4 bytes (`header_len..total_len`).
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.header_len..self.total_len]
    }
}

/// Write a fresh 20-byte IPv4 header (no options, DF clear, id 0) with a
/// valid checksum into `buf[..20]`. `buf` must hold at least 20 bytes.
pub fn write_ipv4_header(
    buf: &mut [u8],
    tos: u8,
    total_len: u16,
    ttl: u8,
    protocol: u8,
    src: Ipv4Addr,
    dst: Ipv4Addr,
) {
    let h = &mut buf[..IPV4_MIN_HDR_LEN];
    h[0] = 0x45;
    h[1] = tos;
    put16(h, 2, total_len);
    put16(h, 4, 0);
    put16(h, 6, 0);
    h[8] = ttl;
    h[9] = protocol;
    put16(h, 10, 0);
    h[12..16].copy_from_slice(&src.octets());
    h[16..20].copy_from_slice(&dst.octets());
    let c = checksum::checksum(h);
    put16(h, 10, c);
}

/// Read/write a 16-bit big-endian field of a checked L4 slice.
pub fn get_u16(buf: &[u8], at: usize) -> u16 {
    be16(buf, at)
}

pub fn set_u16(buf: &mut [u8], at: usize, v: u16) {
    put16(buf, at, v)
}
