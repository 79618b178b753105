//! Offload metadata of tap frames (`struct virtio_net_hdr`) and the two
//! software fallbacks for egress ports that cannot take offloaded frames:
//! checksum completion and TCP segmentation (GSO).
//!
//! A tap port's pod stack sends frames of up to 64 KiB (GSO) whose TCP/UDP
//! checksum is left partial (`VIRTIO_NET_HDR_F_NEEDS_CSUM`: the field at
//! `csum_start + csum_offset` holds the folded pseudo-header sum). Such a
//! frame moves unchanged to another tap port (header preserved); towards a
//! port that only carries MTU-sized frames with full checksums (an AF_XDP
//! veth port, the host port) it is cut into segments with
//! [`write_tcp_segment`], or completed with [`complete_csum`].
//!
//! Pure: no I/O, no allocation. Segments are written into buffers the caller
//! owns (free frames of the egress pool), one call per segment.

use super::verdict::DropReason;
use super::wire;
use super::wire::checksum;
use super::wire::ipv6::{self, IPV6_HDR_LEN};

/// Size of `struct virtio_net_hdr` (without `num_buffers`), as set on the
/// tap with TUNSETVNETHDRSZ.
pub const VNET_HDR_LEN: usize = 10;
/// The L4 checksum is partial; complete it from `csum_start`.
pub const F_NEEDS_CSUM: u8 = 1;
/// The sender's device already validated the checksum (the kernel sets it
/// on tap reads of `CHECKSUM_UNNECESSARY` frames): the frame's checksum
/// state is [`CsumState::Complete`], not checked again.
pub const F_DATA_VALID: u8 = 2;
pub const GSO_NONE: u8 = 0;
pub const GSO_TCPV4: u8 = 1;
pub const GSO_UDP: u8 = 3;
pub const GSO_TCPV6: u8 = 4;
/// Flag bit of `gso_type`: the TCP stream uses ECN (CWR on the first
/// segment only).
pub const GSO_ECN: u8 = 0x80;

const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;
const TCP_FLAGS_AT: usize = 13;

/// The parsed `struct virtio_net_hdr` of one frame. [`Offload::NONE`] (all
/// zero) is a plain frame with complete checksums; frames of ports without
/// offloads always carry it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Offload {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl Offload {
    pub const NONE: Offload = Offload {
        flags: 0,
        gso_type: GSO_NONE,
        hdr_len: 0,
        gso_size: 0,
        csum_start: 0,
        csum_offset: 0,
    };

    /// From the wire layout (little endian: virtio 1.0, and the tap's
    /// native order on the little-endian hosts ferry runs on).
    pub fn from_bytes(b: &[u8; VNET_HDR_LEN]) -> Offload {
        let u = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Offload {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u(2),
            gso_size: u(4),
            csum_start: u(6),
            csum_offset: u(8),
        }
    }

    pub fn to_bytes(&self) -> [u8; VNET_HDR_LEN] {
        let mut b = [0u8; VNET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b
    }

    pub fn needs_csum(&self) -> bool {
        self.flags & F_NEEDS_CSUM != 0
    }

    /// The GSO type without the ECN bit.
    pub fn gso(&self) -> u8 {
        self.gso_type & !GSO_ECN
    }

    pub fn is_gso(&self) -> bool {
        self.gso() != GSO_NONE
    }
}

/// The state of a frame's TCP/UDP checksum, classified once at ingress
/// ([`CsumState::at_ingress`], then by the pipeline for
/// [`CsumState::Unknown`]) and acted on once at egress ([`finish`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CsumState {
    /// Nothing to finish: the L4 checksum is complete (verified by the
    /// pipeline, or vouched for by the sending device: `DATA_VALID`, as
    /// Linux takes `CHECKSUM_UNNECESSARY`), or there is none to compute
    /// (not TCP/UDP, a fragment, UDP without a checksum, a reply made in
    /// place).
    Complete,
    /// The field at `start + offset` holds the folded pseudo-header sum;
    /// the ones-complement sum from `start` to the end of the L4 segment
    /// completes it. `start` is the L4 header and `offset` the checksum
    /// field of TCP (16) or UDP (6): checked at ingress
    /// ([`check`] for tap headers, the pipeline for the rest).
    Partial { start: u16, offset: u16 },
    /// Not known yet: a frame of a port without offload metadata (AF_XDP
    /// veths). Its field is either complete or partial (a pod's veth
    /// offloads leave `CHECKSUM_PARTIAL` frames as they are); the pipeline
    /// finds out which, once, or drops it `bad_l4_checksum`.
    Unknown,
}

impl CsumState {
    /// What the ingress port's metadata says: a tap's `NEEDS_CSUM` is
    /// partial where the header points, `DATA_VALID` is complete, and no
    /// metadata (AF_XDP, or a tap frame without flags) is for the pipeline
    /// to find out.
    pub fn at_ingress(off: &Offload) -> CsumState {
        if off.needs_csum() {
            CsumState::Partial {
                start: off.csum_start,
                offset: off.csum_offset,
            }
        } else if off.flags & F_DATA_VALID != 0 {
            CsumState::Complete
        } else {
            CsumState::Unknown
        }
    }
}

/// What an egress port can take instead of finished frames.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EgressCaps {
    /// Frames travel with a virtio-net header (taps): partial checksums
    /// and GSO frames leave as they are, for the receiving kernel.
    pub offload: bool,
    /// The device completes a partial checksum from per-frame TX metadata
    /// (AF_XDP `XDP_TXMD_FLAGS_CHECKSUM`, Linux 6.8+). No port sets it yet:
    /// the hook for that mode, in which [`finish`] leaves a non-GSO frame
    /// partial and returns the header naming `csum_start`/`csum_offset`
    /// for the queue to turn into metadata.
    pub tx_csum: bool,
}

/// How a frame leaves, as [`finish`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    /// Send the frame as it now is, with this header (ignored by ports
    /// that take none; [`Offload::NONE`] unless the port takes offloads
    /// or has `tx_csum`).
    Send(Offload),
    /// Cut it into segments with [`write_tcp_segment`], each complete.
    Segment(TcpGso),
}

/// The one place a frame is finished for its egress port: a port that
/// takes offloads gets the frame unchanged with a header that says what is
/// partial; otherwise a GSO frame is segmented and a partial checksum is
/// completed in place (left partial with `tx_csum`). `frame` is the frame's
/// data; `csum` its checksum state after the pipeline; `off` its header.
pub fn finish(
    frame: &mut [u8],
    csum: CsumState,
    off: &Offload,
    caps: EgressCaps,
) -> Result<Finished, DropReason> {
    let header = header_for(csum, off);
    if caps.offload {
        return Ok(Finished::Send(header));
    }
    if off.is_gso() {
        return plan_tcp(frame, off).map(Finished::Segment);
    }
    match csum {
        CsumState::Partial { .. } if caps.tx_csum => Ok(Finished::Send(header)),
        CsumState::Partial { start, offset } => {
            complete_l4(frame, usize::from(start), usize::from(offset))?;
            Ok(Finished::Send(Offload::NONE))
        }
        CsumState::Complete | CsumState::Unknown => Ok(Finished::Send(Offload::NONE)),
    }
}

/// The header a frame leaves with towards a port that takes one: its own
/// (GSO fields, `DATA_VALID`) with `NEEDS_CSUM` and the checksum position
/// set from `csum`, so a frame whose partial checksum was found by the
/// pipeline (a veth's) stays partial too.
fn header_for(csum: CsumState, off: &Offload) -> Offload {
    let mut h = *off;
    match csum {
        CsumState::Partial { start, offset } => {
            h.flags |= F_NEEDS_CSUM;
            h.csum_start = start;
            h.csum_offset = offset;
        }
        CsumState::Complete | CsumState::Unknown => {
            h.flags &= !F_NEEDS_CSUM;
            h.csum_start = 0;
            h.csum_offset = 0;
        }
    }
    h
}

/// Complete the partial L4 checksum at `start + offset` of an IPv4 frame,
/// summing the L4 segment only: up to the IP total length (trailing
/// Ethernet padding is not part of it), for UDP up to its own length.
fn complete_l4(frame: &mut [u8], start: usize, offset: usize) -> Result<(), DropReason> {
    let ip = ip_l4(frame).ok_or(DropReason::BadOffload)?;
    if ip.at != start {
        return Err(DropReason::BadOffload);
    }
    let mut end = ip.end;
    if ip.proto == wire::IP_PROTO_UDP && start + wire::UDP_HDR_LEN <= end {
        let udp_len = usize::from(wire::get_u16(frame, start + 4));
        if udp_len >= wire::UDP_HDR_LEN {
            end = end.min(start + udp_len);
        }
    }
    complete_csum(&mut frame[..end], start, offset)
}

/// Smallest `gso_size` accepted from a tap: 48 bytes, Linux's own floor
/// for the MSS it sends with (`net.ipv4.tcp_min_snd_mss`, default 48, the
/// fix for CVE-2019-11479: a peer advertising a tiny MSS made the sender
/// cut data into 8-byte segments). A pod's stack never builds GSO frames
/// with a smaller one, so a smaller value is a forged header; with it one
/// 64 KiB frame would become thousands of segments.
pub const MIN_GSO_SIZE: u16 = 48;

/// Most segments one GSO frame may be cut into. A 64 KiB frame at the
/// classic minimum MSS of 536 (RFC 879) with timestamp options (524
/// bytes) makes 126, so every TCP peer of sane MSS fits; 128 is also the
/// cap recent kernels put on a UDP GSO frame written by user space
/// (`UDP_MAX_SEGMENTS`), and an eighth of the egress TX ring (1024), so
/// segmenting one frame never needs more than a few ring commits. A pod
/// whose peer forces a smaller MSS has its 64 KiB frames refused
/// (`bad_gso_size`); its stack then stalls on that connection, which is
/// the price of bounding the work one frame can cost.
pub const MAX_GSO_SEGMENTS: usize = 128;

/// Where the L4 header of an unfragmented IPv4 frame, or an IPv6 frame
/// without extension headers, is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct IpL4 {
    /// Offset of the L4 header (= Ethernet + IP header).
    at: usize,
    proto: u8,
    /// End of the IP packet in the frame (14 + IP total length).
    end: usize,
    v6: bool,
}

impl IpL4 {
    /// The GSO type of TCP segmentation for this family.
    fn gso_tcp(&self) -> u8 {
        if self.v6 {
            GSO_TCPV6
        } else {
            GSO_TCPV4
        }
    }
}

/// The L3 layout of `frame`: an unfragmented IPv4 packet, or an IPv6
/// packet whose upper layer follows the fixed header (offloads with
/// extension headers are refused: Linux builds none for TCP/UDP), whose
/// header and total length lie inside the frame.
fn ip_l4(frame: &[u8]) -> Option<IpL4> {
    let l3 = wire::ETH_HDR_LEN;
    if frame.len() < l3 + wire::IPV4_MIN_HDR_LEN {
        return None;
    }
    match (wire::get_u16(frame, 12), frame[l3] >> 4) {
        (wire::ETHERTYPE_IPV4, 4) => {
            let ip_hdr = usize::from(frame[l3] & 0x0f) * 4;
            let total = usize::from(wire::get_u16(frame, l3 + 2));
            let frag = wire::get_u16(frame, l3 + 6) & 0x3fff;
            if ip_hdr < wire::IPV4_MIN_HDR_LEN
                || frag != 0
                || total < ip_hdr
                || l3 + total > frame.len()
            {
                return None;
            }
            Some(IpL4 {
                at: l3 + ip_hdr,
                proto: frame[l3 + 9],
                end: l3 + total,
                v6: false,
            })
        }
        (wire::ETHERTYPE_IPV6, 6) if frame.len() >= l3 + IPV6_HDR_LEN => {
            let end = l3 + IPV6_HDR_LEN + usize::from(wire::get_u16(frame, l3 + 4));
            let proto = frame[l3 + 6];
            if end > frame.len() || !matches!(proto, wire::IP_PROTO_TCP | wire::IP_PROTO_UDP) {
                return None;
            }
            Some(IpL4 {
                at: l3 + IPV6_HDR_LEN,
                proto,
                end,
                v6: true,
            })
        }
        _ => None,
    }
}

/// Check a tap frame's virtio-net header against the frame, before the
/// pipeline trusts it. A header that asks for nothing (no partial
/// checksum, no GSO) is fine on any frame. Otherwise the frame must be an
/// unfragmented IPv4 TCP/UDP packet, or an IPv6 one without extension
/// headers, and:
/// - a partial checksum must be the L4 checksum: `csum_start` at the L4
///   header, `csum_offset` 16 (TCP) or 6 (UDP), the whole L4 header inside
///   the packet. The egress side writes the completed sum at
///   `csum_start + csum_offset`: anywhere else it would rewrite fields the
///   pipeline already judged (source address, TTL, destination). The
///   kernel holds headers written to a tap to part of this (`csum_offset`
///   16 for TCP GSO, 6 for UDP GSO);
/// - GSO must be TCPv4 (IPv4) or TCPv6 (IPv6) on TCP with a partial
///   checksum (the tap offers TSO only; the virtio spec requires
///   `NEEDS_CSUM` with GSO), `gso_size` at least [`MIN_GSO_SIZE`], at most
///   [`MAX_GSO_SEGMENTS`] segments.
///
/// `hdr_len` is only bounded by the frame: the kernel fills it with the
/// length of the skb's linear part, which may hold payload too.
pub fn check(frame: &[u8], off: &Offload) -> Result<(), DropReason> {
    if off.flags & !(F_NEEDS_CSUM | F_DATA_VALID) != 0 {
        return Err(DropReason::BadOffload);
    }
    if !off.needs_csum() && off.gso_type == GSO_NONE {
        return Ok(());
    }
    if usize::from(off.hdr_len) > frame.len() {
        return Err(DropReason::BadOffload);
    }
    let ip = ip_l4(frame).ok_or(DropReason::BadOffload)?;
    let (l4_min, csum_at) = match ip.proto {
        wire::IP_PROTO_TCP => (wire::TCP_MIN_HDR_LEN, wire::TCP_CHECKSUM_OFFSET),
        wire::IP_PROTO_UDP => (wire::UDP_HDR_LEN, wire::UDP_CHECKSUM_OFFSET),
        _ => (0, usize::MAX),
    };
    if off.needs_csum()
        && (csum_at == usize::MAX
            || usize::from(off.csum_start) != ip.at
            || usize::from(off.csum_offset) != csum_at
            || ip.at + l4_min > ip.end)
    {
        return Err(DropReason::BadCsumOffload);
    }
    if off.gso_type == GSO_NONE {
        return Ok(());
    }
    if !off.needs_csum() || off.gso() != ip.gso_tcp() || ip.proto != wire::IP_PROTO_TCP {
        return Err(DropReason::BadGsoType);
    }
    if off.gso_size < MIN_GSO_SIZE {
        return Err(DropReason::BadGsoSize);
    }
    let plan = plan_tcp(frame, off)?;
    if plan.count > MAX_GSO_SEGMENTS {
        return Err(DropReason::BadGsoSize);
    }
    Ok(())
}

/// Complete a partial checksum in place: the ones-complement sum over
/// `frame[csum_start..]` (which includes the pseudo-header sum already in
/// the field) is complemented and stored at `csum_start + csum_offset`.
/// A result of 0 is stored as 0xffff (the same number; for UDP, 0 would
/// mean "no checksum").
pub fn complete_csum(
    frame: &mut [u8],
    csum_start: usize,
    csum_offset: usize,
) -> Result<(), DropReason> {
    let at = csum_start.saturating_add(csum_offset);
    if csum_start >= frame.len() || at.saturating_add(2) > frame.len() {
        return Err(DropReason::BadOffload);
    }
    let mut sum = checksum::checksum(&frame[csum_start..]);
    if sum == 0 {
        sum = 0xffff;
    }
    wire::set_u16(frame, at, sum);
    Ok(())
}

/// A checked TCP GSO frame (IPv4 or IPv6), ready to be cut into segments.
/// Invariants (checked by [`plan_tcp`]): `hdr_len <= end <= frame.len()`,
/// `mss >= 1`, `count == max(1, ceil((end - hdr_len) / mss))`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpGso {
    /// Offset of the TCP header (= Ethernet + IPv4 header).
    pub tcp_at: usize,
    /// Ethernet + IPv4 + TCP header bytes, copied into every segment.
    pub hdr_len: usize,
    /// End of the IP packet in the frame (14 + IPv4 total length).
    pub end: usize,
    pub mss: usize,
    pub count: usize,
    /// TCP over IPv6 (`GSO_TCPV6`); else over IPv4.
    pub v6: bool,
}

impl TcpGso {
    /// Payload bytes of segment `i`.
    pub fn seg_payload(&self, i: usize) -> usize {
        let from = self.hdr_len + i * self.mss;
        self.end.saturating_sub(from).min(self.mss)
    }

    /// Frame length of segment `i`.
    pub fn seg_len(&self, i: usize) -> usize {
        self.hdr_len + self.seg_payload(i)
    }
}

/// Check that `frame` is a TCP GSO frame as `off` describes it: TCPv4
/// over IPv4 or TCPv6 over IPv6. Other GSO types are `gso_unsupported`;
/// inconsistent headers (a GSO type of the other family among them) are
/// `bad_offload`.
pub fn plan_tcp(frame: &[u8], off: &Offload) -> Result<TcpGso, DropReason> {
    if !matches!(off.gso(), GSO_TCPV4 | GSO_TCPV6) {
        return Err(DropReason::GsoUnsupported);
    }
    let Some(ip) = ip_l4(frame) else {
        return Err(DropReason::BadOffload);
    };
    if off.gso() != ip.gso_tcp() {
        return Err(DropReason::BadOffload);
    }
    if ip.proto != wire::IP_PROTO_TCP || ip.at + wire::TCP_MIN_HDR_LEN > ip.end {
        return Err(DropReason::BadOffload);
    }
    let (tcp_at, end) = (ip.at, ip.end);
    let tcp_hdr = usize::from(frame[tcp_at + 12] >> 4) * 4;
    let hdr_len = tcp_at + tcp_hdr;
    if tcp_hdr < wire::TCP_MIN_HDR_LEN || hdr_len > end {
        return Err(DropReason::BadOffload);
    }
    let mss = usize::from(off.gso_size);
    if mss == 0 {
        return Err(DropReason::BadOffload);
    }
    let payload = end - hdr_len;
    let count = payload.div_ceil(mss).max(1);
    Ok(TcpGso {
        tcp_at,
        hdr_len,
        end,
        mss,
        count,
        v6: ip.v6,
    })
}

/// Write segment `i` of the planned GSO `frame` into `out`; returns its
/// length, or `None` when `i >= count` or it does not fit `out`.
///
/// Each segment carries the headers of the GSO frame with: IPv4 total
/// length of the segment, IP id `id + i`, a fresh IP header checksum (for
/// IPv6: the payload length of the segment); TCP
/// sequence number `seq + i * mss`, FIN and PSH only on the last segment,
/// CWR only on the first, and a full TCP checksum.
pub fn write_tcp_segment(frame: &[u8], plan: &TcpGso, i: usize, out: &mut [u8]) -> Option<usize> {
    if i >= plan.count || plan.end > frame.len() {
        return None;
    }
    let l3 = wire::ETH_HDR_LEN;
    let from = plan.hdr_len + i * plan.mss;
    let payload = plan.seg_payload(i);
    let len = plan.hdr_len + payload;
    if len > out.len() {
        return None;
    }
    let out = &mut out[..len];
    out[..plan.hdr_len].copy_from_slice(&frame[..plan.hdr_len]);
    out[plan.hdr_len..].copy_from_slice(&frame[from..from + payload]);

    let ip_len = len - l3;
    if plan.v6 {
        // IPv6: payload length (no header checksum, no id).
        wire::set_u16(out, l3 + 4, (ip_len - IPV6_HDR_LEN) as u16);
    } else {
        // IPv4: length, id, checksum.
        wire::set_u16(out, l3 + 2, ip_len as u16);
        let id = wire::get_u16(frame, l3 + 4).wrapping_add(i as u16);
        wire::set_u16(out, l3 + 4, id);
        wire::set_u16(out, l3 + 10, 0);
        let ip_sum = checksum::checksum(&out[l3..plan.tcp_at]);
        wire::set_u16(out, l3 + 10, ip_sum);
    }

    // TCP: sequence number, flags, checksum.
    let t = plan.tcp_at;
    let seq = u32::from_be_bytes([frame[t + 4], frame[t + 5], frame[t + 6], frame[t + 7]]);
    let seq = seq.wrapping_add((i * plan.mss) as u32);
    out[t + 4..t + 8].copy_from_slice(&seq.to_be_bytes());
    let mut flags = frame[t + TCP_FLAGS_AT];
    if i + 1 < plan.count {
        flags &= !(wire::TCP_FIN | TCP_PSH);
    }
    if i > 0 {
        flags &= !TCP_CWR;
    }
    out[t + TCP_FLAGS_AT] = flags;
    wire::set_u16(out, t + wire::TCP_CHECKSUM_OFFSET, 0);
    let tcp_len = len - t;
    let pseudo = if plan.v6 {
        let addr = |at: usize| {
            let mut a = [0u8; 16];
            a.copy_from_slice(&out[at..at + 16]);
            std::net::Ipv6Addr::from(a)
        };
        let (src, dst) = (addr(l3 + 8), addr(l3 + 24));
        ipv6::pseudo_header(&src, &dst, wire::IP_PROTO_TCP, tcp_len as u32)
    } else {
        let mut src = [0u8; 4];
        let mut dst = [0u8; 4];
        src.copy_from_slice(&out[l3 + 12..l3 + 16]);
        dst.copy_from_slice(&out[l3 + 16..l3 + 20]);
        checksum::pseudo_header(src, dst, wire::IP_PROTO_TCP, tcp_len as u16)
    };
    let sum = !checksum::fold(checksum::add_bytes(pseudo, &out[t..]));
    wire::set_u16(out, t + wire::TCP_CHECKSUM_OFFSET, sum);
    Some(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SRC: [u8; 4] = [10, 88, 0, 2];
    const DST: [u8; 4] = [10, 88, 0, 3];

    /// A TCP/IPv4 GSO frame as a pod's stack hands it to a tap: valid IP
    /// header checksum, TCP checksum field = folded pseudo-header sum.
    fn gso_frame(payload: &[u8], seq: u32, flags: u8, id: u16, options: usize) -> Vec<u8> {
        let tcp_hdr = 20 + options;
        let total = 20 + tcp_hdr + payload.len();
        let mut f = vec![0u8; 14 + total];
        f[0..6].copy_from_slice(&[0xee; 6]);
        f[6..12].copy_from_slice(&[0x0a, 0x58, 10, 88, 0, 2]);
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        let ip = &mut f[14..34];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        ip[4..6].copy_from_slice(&id.to_be_bytes());
        ip[6] = 0x40; // DF
        ip[8] = 64;
        ip[9] = 6;
        ip[12..16].copy_from_slice(&SRC);
        ip[16..20].copy_from_slice(&DST);
        let c = checksum::checksum(ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        let t = &mut f[34..34 + tcp_hdr];
        t[0..2].copy_from_slice(&40000u16.to_be_bytes());
        t[2..4].copy_from_slice(&5201u16.to_be_bytes());
        t[4..8].copy_from_slice(&seq.to_be_bytes());
        t[8..12].copy_from_slice(&7u32.to_be_bytes());
        t[12] = ((tcp_hdr / 4) as u8) << 4;
        t[13] = flags;
        t[14..16].copy_from_slice(&64240u16.to_be_bytes());
        for (k, b) in t[20..].iter_mut().enumerate() {
            *b = if k % 4 == 0 { 1 } else { k as u8 }; // NOPs and junk
        }
        let tcp_len = (tcp_hdr + payload.len()) as u16;
        let partial = checksum::fold(checksum::pseudo_header(SRC, DST, 6, tcp_len));
        t[16..18].copy_from_slice(&partial.to_be_bytes());
        f[34 + tcp_hdr..].copy_from_slice(payload);
        f
    }

    fn gso_hdr(mss: u16, options: usize) -> Offload {
        Offload {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: (54 + options) as u16,
            gso_size: mss,
            csum_start: 34,
            csum_offset: 16,
        }
    }

    /// Reference: segment `i` built from scratch by etherparse (its own
    /// header serialisation and checksums), from what the segment should
    /// carry per RFC 793/791 and Linux's GSO rules.
    #[expect(
        clippy::too_many_arguments,
        reason = "the reference spells out every field a segment depends on"
    )]
    fn reference_segment(
        payload: &[u8],
        seq: u32,
        flags: u8,
        id: u16,
        mss: usize,
        i: usize,
        count: usize,
        options: usize,
    ) -> Vec<u8> {
        use etherparse::{IpNumber, Ipv4Header, TcpHeader};
        let chunk = &payload[(i * mss).min(payload.len())..((i + 1) * mss).min(payload.len())];
        let last = i + 1 == count;
        let mut tcp = TcpHeader::new(40000, 5201, seq.wrapping_add((i * mss) as u32), 64240);
        tcp.acknowledgment_number = 7;
        tcp.fin = flags & wire::TCP_FIN != 0 && last;
        tcp.syn = flags & 0x02 != 0;
        tcp.rst = flags & 0x04 != 0;
        tcp.psh = flags & TCP_PSH != 0 && last;
        tcp.ack = flags & 0x10 != 0;
        tcp.urg = flags & 0x20 != 0;
        tcp.ece = flags & 0x40 != 0;
        tcp.cwr = flags & TCP_CWR != 0 && i == 0;
        let opts: Vec<u8> = (0..options)
            .map(|k| if k % 4 == 0 { 1 } else { k as u8 })
            .collect();
        tcp.set_options_raw(&opts).unwrap();
        let mut ip = Ipv4Header::new(
            (tcp.header_len() + chunk.len()) as u16,
            64,
            IpNumber::TCP,
            SRC,
            DST,
        )
        .unwrap();
        ip.identification = id.wrapping_add(i as u16);
        ip.dont_fragment = true;
        ip.header_checksum = ip.calc_header_checksum();
        tcp.checksum = tcp.calc_checksum_ipv4(&ip, chunk).unwrap();
        let mut out = Vec::new();
        out.extend_from_slice(&[0xee; 6]);
        out.extend_from_slice(&[0x0a, 0x58, 10, 88, 0, 2]);
        out.extend_from_slice(&[0x08, 0x00]);
        ip.write(&mut out).unwrap();
        tcp.write(&mut out).unwrap();
        out.extend_from_slice(chunk);
        out
    }

    #[test]
    fn vnet_header_round_trips() {
        let h = gso_hdr(1448, 12);
        let b = h.to_bytes();
        assert_eq!(b, [1, 1, 66, 0, 0xa8, 0x05, 34, 0, 16, 0]);
        assert_eq!(Offload::from_bytes(&b), h);
        assert_eq!(Offload::from_bytes(&[0; 10]), Offload::NONE);
        let ecn = Offload {
            gso_type: GSO_TCPV4 | GSO_ECN,
            ..h
        };
        assert_eq!(ecn.gso(), GSO_TCPV4);
        assert!(ecn.is_gso() && ecn.needs_csum());
        assert!(!Offload::NONE.is_gso() && !Offload::NONE.needs_csum());
    }

    #[test]
    fn completing_a_partial_checksum_gives_a_valid_one() {
        let payload: Vec<u8> = (0..999u32).map(|i| (i * 7) as u8).collect();
        let mut f = gso_frame(&payload, 1, 0x18, 5, 0);
        complete_csum(&mut f, 34, 16).unwrap();
        let tcp_len = (f.len() - 34) as u16;
        let pseudo = checksum::pseudo_header(SRC, DST, 6, tcp_len);
        assert_eq!(
            checksum::fold(checksum::add_bytes(pseudo, &f[34..])),
            0xffff
        );
        // Offsets outside the frame are refused, never a panic.
        let n = f.len();
        assert_eq!(complete_csum(&mut f, n, 0), Err(DropReason::BadOffload));
        assert_eq!(complete_csum(&mut f, 34, n), Err(DropReason::BadOffload));
        assert_eq!(complete_csum(&mut f, n - 1, 0), Err(DropReason::BadOffload));
        assert_eq!(
            complete_csum(&mut f, usize::MAX, usize::MAX),
            Err(DropReason::BadOffload)
        );
    }

    #[test]
    fn plans_refuse_what_they_cannot_segment() {
        let f = gso_frame(&[0u8; 3000], 1, 0x10, 1, 0);
        let ok = plan_tcp(&f, &gso_hdr(1448, 0)).unwrap();
        assert_eq!(
            (ok.tcp_at, ok.hdr_len, ok.end, ok.mss, ok.count),
            (34, 54, f.len(), 1448, 3)
        );
        assert_eq!(ok.seg_payload(2), 3000 - 2 * 1448);
        let udp = Offload {
            gso_type: GSO_UDP,
            ..gso_hdr(1448, 0)
        };
        assert_eq!(plan_tcp(&f, &udp), Err(DropReason::GsoUnsupported));
        let v6 = Offload {
            gso_type: GSO_TCPV6,
            ..gso_hdr(1448, 0)
        };
        // TCPv6 segmentation of an IPv4 frame: the header lies.
        assert_eq!(plan_tcp(&f, &v6), Err(DropReason::BadOffload));
        assert_eq!(plan_tcp(&f, &gso_hdr(0, 0)), Err(DropReason::BadOffload));
        assert_eq!(
            plan_tcp(&f[..f.len() - 1], &gso_hdr(1448, 0)),
            Err(DropReason::BadOffload)
        );
        assert_eq!(
            plan_tcp(&f[..40], &gso_hdr(1448, 0)),
            Err(DropReason::BadOffload)
        );
        let mut udp_frame = f.clone();
        udp_frame[14 + 9] = 17;
        assert_eq!(
            plan_tcp(&udp_frame, &gso_hdr(1448, 0)),
            Err(DropReason::BadOffload)
        );
        let mut frag = f.clone();
        frag[14 + 6] = 0x20; // MF
        assert_eq!(
            plan_tcp(&frag, &gso_hdr(1448, 0)),
            Err(DropReason::BadOffload)
        );
        let mut doff = f.clone();
        doff[34 + 12] = 0x40; // data offset 16 bytes
        assert_eq!(
            plan_tcp(&doff, &gso_hdr(1448, 0)),
            Err(DropReason::BadOffload)
        );
        // A segment that does not fit its buffer is refused.
        let mut small = [0u8; 1000];
        assert_eq!(write_tcp_segment(&f, &ok, 0, &mut small), None);
        assert_eq!(write_tcp_segment(&f, &ok, 3, &mut [0u8; 2048]), None);
    }

    fn csum_hdr(start: u16, offset: u16) -> Offload {
        Offload {
            flags: F_NEEDS_CSUM,
            csum_start: start,
            csum_offset: offset,
            ..Offload::NONE
        }
    }

    /// The GSO frame as a UDP datagram (protocol 17; the bytes after the
    /// IP header are long enough for a UDP header).
    fn as_udp(mut f: Vec<u8>) -> Vec<u8> {
        f[14 + 9] = 17;
        f
    }

    #[test]
    fn headers_are_checked_against_the_frame() {
        use DropReason::*;
        let tcp = gso_frame(&[0u8; 3000], 1, 0x10, 1, 0);
        let udp = as_udp(tcp.clone());
        let mut icmp = tcp.clone();
        icmp[14 + 9] = 1;
        let mut frag = tcp.clone();
        frag[14 + 6] = 0x20; // MF
        let mut arp = tcp.clone();
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        // 10 bytes of TCP header left inside the IP packet.
        let mut cut = gso_frame(&[], 1, 0x10, 1, 0);
        cut[14 + 3] = 30;
        let gso = gso_hdr(1448, 0);
        let with = |f: fn(&mut Offload)| {
            let mut h = gso;
            f(&mut h);
            h
        };
        type Case<'a> = (&'a str, &'a [u8], Offload, Result<(), DropReason>);
        let cases: &[Case<'_>] = &[
            ("plain header, any bytes", b"junk", Offload::NONE, Ok(())),
            (
                "data-valid alone",
                b"",
                Offload {
                    flags: F_DATA_VALID,
                    ..Offload::NONE
                },
                Ok(()),
            ),
            ("TCP GSO", &tcp, gso, Ok(())),
            (
                "TCP GSO with ECN",
                &tcp,
                with(|h| h.gso_type |= GSO_ECN),
                Ok(()),
            ),
            ("TCP partial", &tcp, csum_hdr(34, 16), Ok(())),
            ("UDP partial", &udp, csum_hdr(34, 6), Ok(())),
            (
                "data-valid with a partial checksum",
                &tcp,
                with(|h| h.flags |= F_DATA_VALID),
                Ok(()),
            ),
            (
                "unknown flag",
                &tcp,
                with(|h| h.flags |= 4),
                Err(BadOffload),
            ),
            (
                "hdr_len beyond the frame",
                &tcp,
                with(|h| h.hdr_len = 3055),
                Err(BadOffload),
            ),
            ("partial on ARP", &arp, csum_hdr(34, 16), Err(BadOffload)),
            (
                "partial on a fragment",
                &frag,
                csum_hdr(34, 16),
                Err(BadOffload),
            ),
            (
                "partial on a runt",
                &tcp[..30],
                csum_hdr(34, 16),
                Err(BadOffload),
            ),
            (
                "start inside the IP header",
                &tcp,
                csum_hdr(33, 17),
                Err(BadCsumOffload),
            ),
            (
                "start at the IP source",
                &tcp,
                csum_hdr(26, 0),
                Err(BadCsumOffload),
            ),
            (
                "start before the L4 header",
                &tcp,
                csum_hdr(30, 16),
                Err(BadCsumOffload),
            ),
            (
                "start past the L4 header",
                &tcp,
                csum_hdr(35, 15),
                Err(BadCsumOffload),
            ),
            (
                "UDP offset on TCP",
                &tcp,
                csum_hdr(34, 6),
                Err(BadCsumOffload),
            ),
            (
                "TCP offset on UDP",
                &udp,
                csum_hdr(34, 16),
                Err(BadCsumOffload),
            ),
            (
                "partial on ICMP",
                &icmp,
                csum_hdr(34, 2),
                Err(BadCsumOffload),
            ),
            (
                "TCP header cut",
                &cut,
                csum_hdr(34, 16),
                Err(BadCsumOffload),
            ),
            ("UFO", &tcp, with(|h| h.gso_type = GSO_UDP), Err(BadGsoType)),
            ("USO", &tcp, with(|h| h.gso_type = 5), Err(BadGsoType)),
            (
                "TCPv6 on IPv4",
                &tcp,
                with(|h| h.gso_type = GSO_TCPV6),
                Err(BadGsoType),
            ),
            (
                "ECN alone",
                &tcp,
                with(|h| h.gso_type = GSO_ECN),
                Err(BadGsoType),
            ),
            (
                "GSO without a partial checksum",
                &tcp,
                with(|h| h.flags = 0),
                Err(BadGsoType),
            ),
            (
                "TCP GSO on UDP",
                &udp,
                Offload {
                    csum_offset: 6,
                    ..gso
                },
                Err(BadGsoType),
            ),
            ("MSS 0", &tcp, with(|h| h.gso_size = 0), Err(BadGsoSize)),
            (
                "MSS below the floor",
                &tcp,
                with(|h| h.gso_size = 47),
                Err(BadGsoSize),
            ),
            ("MSS at the floor", &tcp, with(|h| h.gso_size = 48), Ok(())),
        ];
        for (what, frame, hdr, want) in cases {
            assert_eq!(check(frame, hdr), *want, "{what}");
        }
    }

    #[test]
    fn a_gso_frame_makes_at_most_128_segments() {
        let floor = gso_hdr(MIN_GSO_SIZE, 0);
        let mss = usize::from(MIN_GSO_SIZE);
        let most = gso_frame(&vec![0u8; MAX_GSO_SEGMENTS * mss], 1, 0x10, 1, 0);
        assert_eq!(check(&most, &floor), Ok(()));
        let more = gso_frame(&vec![0u8; MAX_GSO_SEGMENTS * mss + 1], 1, 0x10, 1, 0);
        assert_eq!(check(&more, &floor), Err(DropReason::BadGsoSize));
        // The largest frame at MSS 536 less timestamp options passes.
        let big = gso_frame(&vec![0u8; 65535 - 20 - 32], 1, 0x10, 1, 12);
        assert_eq!(check(&big, &gso_hdr(524, 12)), Ok(()));
        assert_eq!(
            check(&big, &gso_hdr(511, 12)),
            Err(DropReason::BadGsoSize),
            "129 segments"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// A header that passes `check` is safe for the egress side:
        /// completing its checksum writes only the L4 checksum field, and
        /// segmenting it stays within the floor and the cap.
        #[test]
        fn headers_that_pass_only_touch_the_l4_checksum(
            len in 0usize..4000,
            udp in any::<bool>(),
            // Mostly plausible values (repeated to weigh them), so that a
            // good share of the cases passes `check`.
            flags in prop::sample::select(vec![0u8, 1, 1, 1, 3, 4, 5]),
            gso_type in prop::sample::select(vec![0u8, 0, 1, 1, 0x81, 3, 4, 5, 0x80]),
            gso_size in prop::sample::select(vec![0u16, 1, 47, 48, 100, 1448, 1448, 9000]),
            start in prop::sample::select(vec![34u16, 34, 34, 0, 26, 33, 35]),
            offset in prop::sample::select(vec![16u16, 6, 16, 6, 0, 15, 17]),
        ) {
            let mut f = gso_frame(&vec![0x5au8; len], 7, 0x18, 3, 0);
            if udp {
                f = as_udp(f);
            }
            let hdr = Offload {
                flags,
                gso_type,
                hdr_len: 54,
                gso_size,
                csum_start: start,
                csum_offset: offset,
            };
            if check(&f, &hdr).is_ok() && hdr.needs_csum() {
                let field = 34 + if udp { 6 } else { 16 };
                prop_assert_eq!((usize::from(start), usize::from(start + offset)), (34, field));
                let mut done = f.clone();
                complete_csum(&mut done, 34, field - 34).unwrap();
                prop_assert_eq!(&done[..field], &f[..field]);
                prop_assert_eq!(&done[field + 2..], &f[field + 2..]);
                if hdr.is_gso() {
                    prop_assert!(!udp);
                    let plan = plan_tcp(&f, &hdr).unwrap();
                    prop_assert!(plan.count <= MAX_GSO_SEGMENTS);
                    prop_assert!(plan.mss >= usize::from(MIN_GSO_SIZE));
                }
            }
        }

        /// Every segment equals the reference: length, sequence number,
        /// flags (FIN/PSH on the last only, CWR on the first only), IP id,
        /// both checksums; and the payloads concatenate to the original.
        #[test]
        fn segments_match_the_reference(
            len in 0usize..6000,
            mss in 1usize..1500,
            seq in any::<u32>(),
            id in any::<u16>(),
            flags in any::<u8>(),
            opt_words in 0usize..4,
            seed in any::<u8>(),
        ) {
            let options = opt_words * 4;
            let payload: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect();
            // A GSO frame is never SYN/RST; keep those bits as the sender set them anyway.
            let f = gso_frame(&payload, seq, flags, id, options);
            let plan = plan_tcp(&f, &gso_hdr(mss as u16, options)).unwrap();
            prop_assert_eq!(plan.count, len.div_ceil(mss).max(1));
            let mut joined = Vec::new();
            let mut out = vec![0u8; 2048];
            for i in 0..plan.count {
                let n = write_tcp_segment(&f, &plan, i, &mut out).unwrap();
                let want = reference_segment(&payload, seq, flags, id, mss, i, plan.count, options);
                prop_assert_eq!(n, want.len(), "segment {} length", i);
                prop_assert_eq!(&out[..n], &want[..], "segment {}", i);
                prop_assert!(n - 14 <= 20 + 20 + options + mss);
                // Valid checksums by the receiver's rule as well.
                prop_assert_eq!(checksum::fold(checksum::add_bytes(0, &out[14..34])), 0xffff);
                let pseudo = checksum::pseudo_header(SRC, DST, 6, (n - 34) as u16);
                prop_assert_eq!(checksum::fold(checksum::add_bytes(pseudo, &out[34..n])), 0xffff);
                joined.extend_from_slice(&out[plan.hdr_len..n]);
            }
            prop_assert_eq!(joined, payload);
        }

        /// Arbitrary bytes with an arbitrary header never panic and never
        /// write outside the segment they report.
        #[test]
        fn arbitrary_input_never_panics(
            bytes in prop::collection::vec(any::<u8>(), 0..300),
            hdr in any::<[u8; 10]>(),
            i in 0usize..8,
            cap in 0usize..400,
        ) {
            let off = Offload::from_bytes(&hdr);
            let _ = check(&bytes, &off);
            let mut b = bytes.clone();
            let _ = complete_csum(&mut b, usize::from(off.csum_start), usize::from(off.csum_offset));
            if let Ok(plan) = plan_tcp(&bytes, &off) {
                let mut out = vec![0u8; cap];
                if let Some(n) = write_tcp_segment(&bytes, &plan, i, &mut out) {
                    prop_assert!(n <= cap && n == plan.seg_len(i));
                }
            }
        }
    }
}
