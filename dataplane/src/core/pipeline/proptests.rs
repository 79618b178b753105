//! Property tests: no input panics, one verdict per frame, forwarded frames
//! re-parse with valid checksums, the batch path agrees with the frame path.

use std::net::Ipv4Addr;

use ferry_api::table::{Endpoint, HostPort, NodeSettings};
use ferry_api::MacAddr;
use proptest::prelude::*;

use super::fixtures::*;
use super::*;

/// Arbitrary bytes, arbitrary length claim, arbitrary buffer slack.
fn raw_frame() -> impl Strategy<Value = (PortId, Vec<u8>, usize, usize)> {
    (
        0u32..6,
        prop::collection::vec(any::<u8>(), 0..200),
        0usize..100,
        0usize..300,
    )
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Tcp,
    Udp,
    Echo,
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![Just(Kind::Tcp), Just(Kind::Udp), Just(Kind::Echo)]
}

fn build(kind: Kind, src: Ipv4Addr, dst: Ipv4Addr, ttl: u8, payload: &[u8]) -> Vec<u8> {
    match kind {
        Kind::Tcp => tcp_frame(src, dst, ttl, payload),
        Kind::Udp => udp_frame(src, dst, ttl, payload),
        Kind::Echo => echo_request(src, dst, ttl, payload),
    }
}

/// A valid frame (some with partial checksums) with a few bytes changed:
/// reaches deeper code than random bytes do.
fn mutated_frame() -> impl Strategy<Value = (PortId, Vec<u8>)> {
    (
        kind(),
        0usize..3,
        0usize..3,
        any::<u8>(),
        prop::collection::vec(any::<u8>(), 0..64),
        any::<bool>(),
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
    )
        .prop_map(|(kind, s, d, ttl, payload, partial, edits)| {
            let (port, src) = PODS[s];
            let mut f = build(kind, src, PODS[d].1, ttl, &payload);
            if partial && !matches!(kind, Kind::Echo) {
                make_partial(&mut f);
            }
            let n = f.len();
            for (i, b) in edits {
                f[i.index(n)] = b;
            }
            (port, f)
        })
}

/// Tables with a random subset of the /24 as endpoints on random ports.
fn random_tables() -> impl Strategy<Value = Tables> {
    (
        prop::collection::btree_map(2u8..255, 1u32..16, 0..12),
        any::<bool>(),
        any::<u64>(),
    )
        .prop_map(|(pods, host, generation)| {
            let endpoints: Vec<Endpoint> = pods
                .iter()
                .map(|(last, port)| {
                    let ip = Ipv4Addr::new(10, 88, 0, *last);
                    Endpoint::veth(format!("p{last}/eth0"), format!("fy{port}"), ip)
                })
                .collect();
            let node = NodeSettings {
                gateways: vec![GW.into()],
                router_mac: MacAddr::ROUTER,
                pod_cidrs: vec!["10.88.0.0/24".parse().unwrap()],
                host_port: host.then(|| HostPort {
                    ifname: "ferry0dp".into(),
                    kernel_ifname: "ferry0".into(),
                    kernel_mac: MacAddr(KERNEL_MAC),
                }),
                mtu: 1500,
                uplink: None,
            };
            Tables::build(generation, &node, &endpoints, &routes(), port_of)
        })
}

fn run_frame(
    t: &Tables,
    port: PortId,
    bytes: &[u8],
    claimed: usize,
    cap: usize,
) -> (Verdict, usize, Vec<u8>) {
    let mut buf = vec![0u8; cap];
    let n = bytes.len().min(cap);
    buf[..n].copy_from_slice(&bytes[..n]);
    let mut f = Frame::new(port, &mut buf, claimed);
    let v = process_frame(t, &mut f);
    if matches!(v, Verdict::Tx(_)) {
        finish_for_veth(&mut f);
    }
    let len = f.len;
    (v, len, buf)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic((port, bytes, extra_claim, slack) in raw_frame()) {
        let t = tables();
        let cap = bytes.len() + slack;
        let claimed = bytes.len() + extra_claim.saturating_sub(50);
        let (v, len, _) = run_frame(&t, port, &bytes, claimed, cap);
        if let Verdict::Tx(p) = v {
            prop_assert!(t.port_role(p).is_some());
        }
        if matches!(v, Verdict::Tx(_) | Verdict::Reply | Verdict::IcmpError { .. }) {
            prop_assert!(len >= 14 && len <= cap);
        }
    }

    #[test]
    fn mutated_frames_never_panic_and_tx_is_well_formed((port, f) in mutated_frame(), slack in 0usize..200) {
        let t = tables();
        let cap = f.len() + slack;
        let (v, len, buf) = run_frame(&t, port, &f, f.len(), cap);
        let sent = match v {
            Verdict::Tx(p) | Verdict::IcmpError { port: p, .. } => Some(p),
            Verdict::Reply => Some(port),
            Verdict::Drop(_) | Verdict::Denied { .. } => None,
        };
        if let Some(p) = sent {
            prop_assert!(t.port_role(p).is_some());
            prop_assert!(len <= cap);
            let out = &buf[..len];
            // Whatever we transmit that is IPv4 has a valid header checksum
            // and, when unfragmented TCP/UDP, a valid L4 checksum if we made
            // it, or if it came valid or partial (completed for the veth):
            // a forwarded one is never verified, mended or broken.
            if out[12..14] == [0x08, 0x00] {
                prop_assert!(ip_checksum_ok(out));
                let frag = u16::from_be_bytes([out[20], out[21]]) & 0x3fff;
                if frag == 0 && matches!(out[23], 6 | 17) {
                    if matches!(v, Verdict::Tx(_)) {
                        let came = l4_checksum_ok(&f) || l4_partial(&f);
                        prop_assert_eq!(l4_checksum_ok(out), came);
                    } else {
                        prop_assert!(l4_checksum_ok(out));
                    }
                }
            }
        }
    }

    /// Whatever header a tap frame carries, a frame forwarded with a
    /// header that asks for work (a partial checksum, GSO) carries one
    /// that fits it: the egress side can trust it.
    #[test]
    fn forwarded_frames_carry_only_checked_headers(
        (port, f) in mutated_frame(),
        hdr in any::<[u8; offload::VNET_HDR_LEN]>(),
        fix_offsets in any::<bool>(),
    ) {
        let t = tables();
        let mut off = Offload::from_bytes(&hdr);
        if fix_offsets {
            // Often right where it matters, so deeper checks are reached.
            off.flags &= offload::F_NEEDS_CSUM | offload::F_DATA_VALID;
            off.csum_start = 34;
            off.csum_offset = if f.get(23) == Some(&17) { 6 } else { 16 };
        }
        let mut buf = f.clone();
        buf.resize(CHUNK, 0);
        let mut frame = Frame::with_offload(port, &mut buf, f.len(), off);
        let v = process_frame(&t, &mut frame);
        if let Verdict::Tx(_) = v {
            let (len, out_off) = (frame.len, frame.offload);
            prop_assert_eq!(offload::check(&buf[..len], &out_off), Ok(()));
        }
    }

    #[test]
    fn random_tables_only_send_to_known_ports(
        t in random_tables(),
        frames in prop::collection::vec(
            (kind(), 0u8..=255, prop_oneof![Just(GW), Just(OUTSIDE), (2u8..255).prop_map(|l| Ipv4Addr::new(10, 88, 0, l))],
             prop::option::of(1u32..16), any::<u8>()),
            1..32),
    ) {
        for (kind, src_last, dst, port, ttl) in frames {
            let src = Ipv4Addr::new(10, 88, 0, src_last);
            let f = build(kind, src, dst, ttl, b"data");
            let ingress = port.unwrap_or(HOST_PORT);
            let (v, _, _) = run_frame(&t, ingress, &f, f.len(), CHUNK);
            match (v, t.port_role(ingress)) {
                (_, None) => prop_assert_eq!(v, Verdict::Drop(DropReason::UnknownPort)),
                (Verdict::Tx(p), Some(_)) => prop_assert!(t.port_role(p).is_some()),
                (Verdict::IcmpError { port, .. }, Some(_)) => prop_assert_eq!(port, ingress),
                (Verdict::Reply, Some(_)) => prop_assert!(matches!(kind, Kind::Echo) || ttl <= 1),
                (Verdict::Drop(_), Some(_)) => {}
                (Verdict::Denied { .. }, Some(_)) => prop_assert!(false, "no policies here"),
            }
            if let (Some(PortRole::Pod { ip, .. }), Verdict::Tx(_)) = (t.port_role(ingress), v) {
                prop_assert_eq!(ip, Some(src), "only the pod's own address gets through");
            }
        }
    }

    #[test]
    fn valid_frames_between_endpoints_are_delivered(
        kind in kind(),
        s in 0usize..3,
        d in 0usize..3,
        ttl in 2u8..=255,
        payload in prop::collection::vec(any::<u8>(), 0..1400),
        partial in any::<bool>(),
    ) {
        let t = tables();
        let (in_port, src) = PODS[s];
        let (out_port, dst) = PODS[d];
        let mut f = build(kind, src, dst, ttl, &payload);
        if partial && !matches!(kind, Kind::Echo) {
            make_partial(&mut f);
        }
        let (v, out) = run(&t, in_port, &f);
        prop_assert_eq!(v, Verdict::Tx(out_port));
        prop_assert_eq!(out.len(), f.len());
        prop_assert_eq!(&out[0..6], &mac_of(dst));
        prop_assert_eq!(&out[6..12], &ROUTER);
        prop_assert_eq!(out[22], ttl - 1);
        prop_assert!(ip_checksum_ok(&out));
        prop_assert!(l4_checksum_ok(&out));
        let p = etherparse::SlicedPacket::from_ethernet(&out);
        prop_assert!(p.is_ok());
        let tail = out.len() - payload.len();
        prop_assert_eq!(&out[tail..], &payload[..]);
    }

    #[test]
    fn batch_agrees_with_frame_by_frame(
        frames in prop::collection::vec(
            prop_oneof![
                raw_frame().prop_map(|(p, b, _, _)| (p, b)),
                mutated_frame(),
            ],
            0..64),
        now in any::<u64>(),
    ) {
        let t = tables();
        let mut batch_bufs: Vec<Vec<u8>> = frames.iter().map(|(_, b)| {
            let mut v = b.clone();
            v.resize(b.len() + 64, 0);
            v
        }).collect();
        let mut single_bufs = batch_bufs.clone();
        let mut batch: Vec<Frame<'_>> = batch_bufs
            .iter_mut()
            .zip(&frames)
            .map(|(buf, (port, b))| Frame::new(*port, buf, b.len()))
            .collect();
        // Poisoned so a missing verdict would show.
        let mut verdicts = vec![Verdict::Tx(u32::MAX); frames.len() + 3];
        process_batch(&t, now, &mut batch, &mut verdicts);
        let batch_lens: Vec<usize> = batch.iter().map(|f| f.len).collect();
        drop(batch);
        prop_assert!(verdicts[frames.len()..].iter().all(|v| *v == Verdict::Tx(u32::MAX)));
        for (i, (port, b)) in frames.iter().enumerate() {
            let mut f = Frame::new(*port, &mut single_bufs[i], b.len());
            let v = process_frame(&t, &mut f);
            prop_assert_eq!(v, verdicts[i]);
            prop_assert_ne!(verdicts[i], Verdict::Tx(u32::MAX));
            prop_assert_eq!(f.len, batch_lens[i]);
        }
        prop_assert_eq!(batch_bufs, single_bufs);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    /// Frames around the egress MTUs (plain, without DF, or GSO): exactly
    /// one verdict, and the right one; every ICMP error parses with valid
    /// checksums and names the egress MTU.
    #[test]
    fn frames_around_the_egress_mtu_get_the_right_verdict(
        kind in kind(),
        to in 0usize..3,
        payload_len in 0usize..1700,
        df in any::<bool>(),
        gso in prop::option::of(crate::core::offload::MIN_GSO_SIZE..2000),
        batch_cap_slack in 0usize..64,
    ) {
        let t = tables();
        let (in_port, src) = PODS[0];
        let (dst, out_port, mtu) = [
            (SMALL_POD.1, SMALL_POD.0, SMALL_MTU),
            (PODS[1].1, PODS[1].0, POD_MTU),
            (OUTSIDE, HOST_PORT, HOST_MTU),
        ][to];
        let mut f = build(kind, src, dst, 64, &vec![0x5a; payload_len]);
        if !df {
            clear_df(&mut f);
        }
        let total = f.len() - 14;
        let (off, seg) = match (kind, gso) {
            (Kind::Tcp, Some(size)) => {
                make_partial(&mut f);
                (gso_tcp4(size), total.min(40 + usize::from(size)))
            }
            _ => (Offload::NONE, total),
        };
        let cap = f.len() + batch_cap_slack;
        let mut buf = f.clone();
        buf.resize(cap, 0);
        let mut frame = Frame::with_offload(in_port, &mut buf, f.len(), off);
        let mut verdicts = [Verdict::Tx(u32::MAX); 2];
        process_batch(&t, 0, std::slice::from_mut(&mut frame), &mut verdicts);
        prop_assert_eq!(verdicts[1], Verdict::Tx(u32::MAX), "one verdict, for the one frame");
        let len = frame.len;
        let out = &buf[..len];
        match verdicts[0] {
            Verdict::Tx(p) => {
                prop_assert!(seg <= mtu as usize);
                prop_assert_eq!(p, out_port);
                prop_assert_eq!(len, f.len());
            }
            Verdict::IcmpError { port, reason } => {
                prop_assert!(seg > mtu as usize && df);
                prop_assert_eq!(port, in_port);
                prop_assert_eq!(reason, DropReason::FragNeeded);
                prop_assert!(ip_checksum_ok(out));
                prop_assert!(l4_checksum_ok(out));
                let p = etherparse::SlicedPacket::from_ethernet(out);
                let Ok(etherparse::SlicedPacket {
                    transport: Some(etherparse::TransportSlice::Icmpv4(icmp)),
                    ..
                }) = p else {
                    return Err(TestCaseError::fail("not ICMPv4"));
                };
                prop_assert_eq!(
                    icmp.icmp_type(),
                    etherparse::Icmpv4Type::DestinationUnreachable(
                        etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded {
                            next_hop_mtu: mtu as u16
                        }
                    )
                );
                prop_assert_eq!(&out[14 + 28..], &f[14..14 + 28], "IP header + 8 bytes quoted");
            }
            Verdict::Drop(reason) => {
                prop_assert!(seg > mtu as usize && !df);
                prop_assert_eq!(reason, DropReason::TooBigNoDf);
            }
            Verdict::Reply => prop_assert!(false, "nothing here is answered in place"),
            Verdict::Denied { .. } => prop_assert!(false, "no policies here"),
        }
    }
}

/// One header field of a valid frame to change.
#[derive(Debug, Clone)]
enum Mutation {
    Ttl(u8),
    Src(Ipv4Addr),
    Dst(Ipv4Addr),
    Ports(u16, u16),
    /// Shorten the IP total length by this much (the frame keeps its bytes:
    /// trailing padding).
    ShortenIp(u16),
    /// A new UDP length (its own field, not the IP one).
    UdpLen(u16),
    TcpFlags(u8),
    /// IP flags and fragment offset (bytes 6-7 of the IP header).
    Frag(u16),
}

fn address() -> impl Strategy<Value = Ipv4Addr> {
    prop_oneof![
        prop::sample::select(vec![
            GW,
            PODS[0].1,
            PODS[1].1,
            PODS[2].1,
            SMALL_POD.1,
            NO_POD,
            OUTSIDE,
            BLACKHOLED,
            ROUTED_TO_POD3,
            UNRESOLVED,
        ]),
        any::<[u8; 4]>().prop_map(Ipv4Addr::from),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<u8>().prop_map(Mutation::Ttl),
        address().prop_map(Mutation::Src),
        address().prop_map(Mutation::Dst),
        any::<(u16, u16)>().prop_map(|(s, d)| Mutation::Ports(s, d)),
        (0u16..64).prop_map(Mutation::ShortenIp),
        (0u16..1600).prop_map(Mutation::UdpLen),
        any::<u8>().prop_map(Mutation::TcpFlags),
        prop_oneof![Just(0u16), Just(0x4000), Just(0x2000), any::<u16>()].prop_map(Mutation::Frag),
    ]
}

fn apply(f: &mut [u8], m: &Mutation) {
    let l4 = 34; // fixture frames have 20-byte IP headers
    match *m {
        Mutation::Ttl(ttl) => f[22] = ttl,
        Mutation::Src(a) => f[26..30].copy_from_slice(&a.octets()),
        Mutation::Dst(a) => f[30..34].copy_from_slice(&a.octets()),
        Mutation::Ports(s, d) if f[23] != 1 && f.len() >= l4 + 4 => {
            f[l4..l4 + 2].copy_from_slice(&s.to_be_bytes());
            f[l4 + 2..l4 + 4].copy_from_slice(&d.to_be_bytes());
        }
        Mutation::ShortenIp(by) => {
            let tl = u16::from_be_bytes([f[16], f[17]]);
            f[16..18].copy_from_slice(&tl.saturating_sub(by).max(20).to_be_bytes());
        }
        Mutation::UdpLen(len) if f[23] == 17 => {
            f[l4 + 4..l4 + 6].copy_from_slice(&len.to_be_bytes())
        }
        Mutation::TcpFlags(flags) if f[23] == 6 => f[l4 + 13] = flags,
        Mutation::Frag(v) => f[20..22].copy_from_slice(&v.to_be_bytes()),
        _ => {}
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Valid frames with fields changed and their checksums repaired
    /// afterwards (full or partial), so they get past the checksum checks
    /// into the routing, TTL, MTU, ICMP and rewrite paths: one verdict
    /// each, never a checksum drop, and everything sent (finished for a
    /// veth egress) parses with valid IP and L4 checksums.
    #[test]
    fn mutated_frames_with_repaired_checksums_reach_the_rewrite_paths(
        kind in kind(),
        s in 0usize..3,
        d in 0usize..3,
        payload in prop::collection::vec(any::<u8>(), 0..1600),
        mutations in prop::collection::vec(mutation(), 1..5),
        partial in any::<bool>(),
        from_host in any::<bool>(),
    ) {
        let t = tables();
        let (mut port, src) = PODS[s];
        if from_host {
            port = HOST_PORT;
        }
        let mut f = build(kind, src, PODS[d].1, 64, &payload);
        for m in &mutations {
            apply(&mut f, m);
        }
        fix_ip_checksum(&mut f);
        fix_l4_checksum(&mut f, partial && !matches!(kind, Kind::Echo));

        let mut buf = f.clone();
        buf.resize(f.len().max(CHUNK), 0);
        let mut frame = Frame::new(port, &mut buf, f.len());
        let mut verdicts = [Verdict::Tx(u32::MAX); 2];
        process_batch(&t, 0, std::slice::from_mut(&mut frame), &mut verdicts);
        let v = verdicts[0];
        prop_assert_eq!(verdicts[1], Verdict::Tx(u32::MAX), "one verdict, for the one frame");
        prop_assert_ne!(v, Verdict::Tx(u32::MAX));
        prop_assert!(
            !matches!(v, Verdict::Drop(DropReason::BadIpChecksum | DropReason::BadL4Checksum)),
            "checksums were repaired: {:?}", v
        );
        if matches!(v, Verdict::Drop(_)) {
            return Ok(());
        }
        if matches!(v, Verdict::Tx(_)) {
            finish_for_veth(&mut frame);
        }
        let out = frame.bytes().to_vec();
        prop_assert!(etherparse::Ipv4HeaderSlice::from_slice(&out[14..]).is_ok());
        prop_assert!(ip_checksum_ok(&out));
        let frag = u16::from_be_bytes([out[20], out[21]]) & 0x3fff;
        // What we make parses whole; what we forward does when it is
        // TCP/UDP (ICMP and other protocols are forwarded unread).
        if !matches!(v, Verdict::Tx(_)) || (frag == 0 && matches!(out[23], 6 | 17)) {
            let parsed = etherparse::SlicedPacket::from_ethernet(&out);
            prop_assert!(parsed.is_ok(), "{:?}: {:?}", v, parsed);
            prop_assert!(l4_checksum_ok(&out), "{:?}", v);
        }
        if let Verdict::Tx(p) = v {
            prop_assert!(t.port_role(p).is_some());
        }
    }
}
