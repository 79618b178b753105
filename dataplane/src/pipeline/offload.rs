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
//! [`write_tcp4_segment`], or completed with [`complete_csum`].
//!
//! Pure: no I/O, no allocation. Segments are written into buffers the caller
//! owns (free frames of the egress pool), one call per segment.

use super::checksum;
use super::verdict::DropReason;
use super::wire;

/// Size of `struct virtio_net_hdr` (without `num_buffers`), as set on the
/// tap with TUNSETVNETHDRSZ.
pub const VNET_HDR_LEN: usize = 10;
/// The L4 checksum is partial; complete it from `csum_start`.
pub const F_NEEDS_CSUM: u8 = 1;
pub const GSO_NONE: u8 = 0;
pub const GSO_TCPV4: u8 = 1;
pub const GSO_UDP: u8 = 3;
pub const GSO_TCPV6: u8 = 4;
/// Flag bit of `gso_type`: the TCP stream uses ECN (CWR on the first
/// segment only).
pub const GSO_ECN: u8 = 0x80;

const TCP_FIN: u8 = 0x01;
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

/// A checked TCP/IPv4 GSO frame, ready to be cut into segments.
/// Invariants (checked by [`plan_tcp4`]): `hdr_len <= end <= frame.len()`,
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

/// Check that `frame` is a TCP/IPv4 GSO frame as `off` describes it.
/// Other GSO types are `gso_unsupported`; inconsistent headers are
/// `bad_offload`.
pub fn plan_tcp4(frame: &[u8], off: &Offload) -> Result<TcpGso, DropReason> {
    if off.gso() != GSO_TCPV4 {
        return Err(DropReason::GsoUnsupported);
    }
    let l3 = wire::ETH_HDR_LEN;
    if frame.len() < l3 + wire::IPV4_MIN_HDR_LEN
        || wire::get_u16(frame, 12) != wire::ETHERTYPE_IPV4
        || frame[l3] >> 4 != 4
    {
        return Err(DropReason::BadOffload);
    }
    let ip_hdr = usize::from(frame[l3] & 0x0f) * 4;
    let total = usize::from(wire::get_u16(frame, l3 + 2));
    let frag = wire::get_u16(frame, l3 + 6) & 0x3fff;
    if ip_hdr < wire::IPV4_MIN_HDR_LEN
        || frame[l3 + 9] != wire::IP_PROTO_TCP
        || frag != 0
        || total < ip_hdr + wire::TCP_MIN_HDR_LEN
        || l3 + total > frame.len()
    {
        return Err(DropReason::BadOffload);
    }
    let tcp_at = l3 + ip_hdr;
    let tcp_hdr = usize::from(frame[tcp_at + 12] >> 4) * 4;
    let end = l3 + total;
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
    })
}

/// Write segment `i` of the planned GSO `frame` into `out`; returns its
/// length, or `None` when `i >= count` or it does not fit `out`.
///
/// Each segment carries the headers of the GSO frame with: IPv4 total
/// length of the segment, IP id `id + i`, a fresh IP header checksum; TCP
/// sequence number `seq + i * mss`, FIN and PSH only on the last segment,
/// CWR only on the first, and a full TCP checksum.
pub fn write_tcp4_segment(frame: &[u8], plan: &TcpGso, i: usize, out: &mut [u8]) -> Option<usize> {
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

    // IPv4: length, id, checksum.
    let ip_len = len - l3;
    wire::set_u16(out, l3 + 2, ip_len as u16);
    let id = wire::get_u16(frame, l3 + 4).wrapping_add(i as u16);
    wire::set_u16(out, l3 + 4, id);
    wire::set_u16(out, l3 + 10, 0);
    let ip_sum = checksum::checksum(&out[l3..plan.tcp_at]);
    wire::set_u16(out, l3 + 10, ip_sum);

    // TCP: sequence number, flags, checksum.
    let t = plan.tcp_at;
    let seq = u32::from_be_bytes([frame[t + 4], frame[t + 5], frame[t + 6], frame[t + 7]]);
    let seq = seq.wrapping_add((i * plan.mss) as u32);
    out[t + 4..t + 8].copy_from_slice(&seq.to_be_bytes());
    let mut flags = frame[t + TCP_FLAGS_AT];
    if i + 1 < plan.count {
        flags &= !(TCP_FIN | TCP_PSH);
    }
    if i > 0 {
        flags &= !TCP_CWR;
    }
    out[t + TCP_FLAGS_AT] = flags;
    wire::set_u16(out, t + wire::TCP_CHECKSUM_OFFSET, 0);
    let mut src = [0u8; 4];
    let mut dst = [0u8; 4];
    src.copy_from_slice(&out[l3 + 12..l3 + 16]);
    dst.copy_from_slice(&out[l3 + 16..l3 + 20]);
    let tcp_len = len - t;
    let pseudo = checksum::pseudo_header(src, dst, wire::IP_PROTO_TCP, tcp_len as u16);
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
        tcp.fin = flags & TCP_FIN != 0 && last;
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
        let ok = plan_tcp4(&f, &gso_hdr(1448, 0)).unwrap();
        assert_eq!(
            (ok.tcp_at, ok.hdr_len, ok.end, ok.mss, ok.count),
            (34, 54, f.len(), 1448, 3)
        );
        assert_eq!(ok.seg_payload(2), 3000 - 2 * 1448);
        let udp = Offload {
            gso_type: GSO_UDP,
            ..gso_hdr(1448, 0)
        };
        assert_eq!(plan_tcp4(&f, &udp), Err(DropReason::GsoUnsupported));
        let v6 = Offload {
            gso_type: GSO_TCPV6,
            ..gso_hdr(1448, 0)
        };
        assert_eq!(plan_tcp4(&f, &v6), Err(DropReason::GsoUnsupported));
        assert_eq!(plan_tcp4(&f, &gso_hdr(0, 0)), Err(DropReason::BadOffload));
        assert_eq!(
            plan_tcp4(&f[..f.len() - 1], &gso_hdr(1448, 0)),
            Err(DropReason::BadOffload)
        );
        assert_eq!(
            plan_tcp4(&f[..40], &gso_hdr(1448, 0)),
            Err(DropReason::BadOffload)
        );
        let mut udp_frame = f.clone();
        udp_frame[14 + 9] = 17;
        assert_eq!(
            plan_tcp4(&udp_frame, &gso_hdr(1448, 0)),
            Err(DropReason::BadOffload)
        );
        let mut frag = f.clone();
        frag[14 + 6] = 0x20; // MF
        assert_eq!(
            plan_tcp4(&frag, &gso_hdr(1448, 0)),
            Err(DropReason::BadOffload)
        );
        let mut doff = f.clone();
        doff[34 + 12] = 0x40; // data offset 16 bytes
        assert_eq!(
            plan_tcp4(&doff, &gso_hdr(1448, 0)),
            Err(DropReason::BadOffload)
        );
        // A segment that does not fit its buffer is refused.
        let mut small = [0u8; 1000];
        assert_eq!(write_tcp4_segment(&f, &ok, 0, &mut small), None);
        assert_eq!(write_tcp4_segment(&f, &ok, 3, &mut [0u8; 2048]), None);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

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
            let plan = plan_tcp4(&f, &gso_hdr(mss as u16, options)).unwrap();
            prop_assert_eq!(plan.count, len.div_ceil(mss).max(1));
            let mut joined = Vec::new();
            let mut out = vec![0u8; 2048];
            for i in 0..plan.count {
                let n = write_tcp4_segment(&f, &plan, i, &mut out).unwrap();
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
            let mut b = bytes.clone();
            let _ = complete_csum(&mut b, usize::from(off.csum_start), usize::from(off.csum_offset));
            if let Ok(plan) = plan_tcp4(&bytes, &off) {
                let mut out = vec![0u8; cap];
                if let Some(n) = write_tcp4_segment(&bytes, &plan, i, &mut out) {
                    prop_assert!(n <= cap && n == plan.seg_len(i));
                }
            }
        }
    }
}
