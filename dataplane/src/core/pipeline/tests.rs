//! Unit tests: one case per decision and per drop reason, on byte fixtures.

use std::net::Ipv4Addr;

use etherparse::{Icmpv4Type, SlicedPacket, TransportSlice};

use super::fixtures::*;
use super::*;

const POD_A: (PortId, Ipv4Addr) = PODS[0];
const POD_B: (PortId, Ipv4Addr) = PODS[1];

fn dropped(reason: DropReason) -> Verdict {
    Verdict::Drop(reason)
}

#[test]
fn unknown_port_and_runt() {
    let t = tables();
    let f = tcp_frame(POD_A.1, POD_B.1, 64, b"x");
    assert_eq!(run(&t, 42, &f).0, dropped(DropReason::UnknownPort));
    assert_eq!(run(&t, POD_A.0, &f[..13]).0, dropped(DropReason::Runt));
    assert_eq!(run(&t, POD_A.0, &[]).0, dropped(DropReason::Runt));
    // A length beyond the buffer is clamped, never trusted.
    let mut buf = [0u8; 10];
    let mut frame = Frame::new(POD_A.0, &mut buf, 9000);
    assert_eq!(process_frame(&t, &mut frame), dropped(DropReason::Runt));
}

#[test]
fn unsupported_ethertypes() {
    let t = tables();
    let mut f = tcp_frame(POD_A.1, POD_B.1, 64, b"x");
    for ethertype in [0x88ccu16, 0x8100, 0x0000] {
        f[12..14].copy_from_slice(&ethertype.to_be_bytes());
        assert_eq!(
            run(&t, POD_A.0, &f).0,
            dropped(DropReason::UnsupportedEthertype),
            "{ethertype:#x}"
        );
    }
    // IPv6, from a pod or from the node kernel, has a reason of its own.
    f[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
    for port in [POD_A.0, HOST_PORT] {
        assert_eq!(
            run(&t, port, &f).0,
            dropped(DropReason::Ipv6Unsupported),
            "port {port}"
        );
    }
}

#[test]
fn pod_arp_for_gateway_and_other_pods_gets_router_mac() {
    let t = tables();
    for target in [GW, POD_B.1, NO_POD, OUTSIDE] {
        let req = arp_frame(1, mac_of(POD_A.1), POD_A.1, target);
        let (v, out) = run(&t, POD_A.0, &req);
        assert_eq!(v, Verdict::Reply, "{target}");
        assert_eq!(out.len(), req.len());
        assert_eq!(&out[0..6], &mac_of(POD_A.1), "eth dst = requester");
        assert_eq!(&out[6..12], &ROUTER, "eth src = router");
        assert_eq!(&out[12..14], &[0x08, 0x06]);
        assert_eq!(&out[20..22], &[0, 2], "reply opcode");
        assert_eq!(&out[22..28], &ROUTER, "sender hw = router");
        assert_eq!(&out[28..32], &target.octets(), "sender ip = asked address");
        assert_eq!(&out[32..38], &mac_of(POD_A.1), "target hw = requester");
        assert_eq!(&out[38..42], &POD_A.1.octets(), "target ip = requester");
    }
}

#[test]
fn arp_not_answered() {
    let t = tables();
    let own = arp_frame(1, mac_of(POD_A.1), POD_A.1, POD_A.1);
    assert_eq!(run(&t, POD_A.0, &own).0, dropped(DropReason::ArpNotForUs));
    // Gratuitous ARP announcing another address is still not for us.
    let gratuitous = arp_frame(1, mac_of(POD_A.1), POD_B.1, POD_B.1);
    assert_eq!(
        run(&t, POD_A.0, &gratuitous).0,
        dropped(DropReason::ArpNotForUs)
    );
    let reply = arp_frame(2, mac_of(POD_A.1), POD_A.1, GW);
    assert_eq!(run(&t, POD_A.0, &reply).0, dropped(DropReason::ArpNotForUs));
    // From the host port only endpoint addresses are answered.
    for target in [GW, NO_POD, OUTSIDE] {
        let req = arp_frame(1, KERNEL_MAC, GW, target);
        assert_eq!(
            run(&t, HOST_PORT, &req).0,
            dropped(DropReason::ArpNotForUs),
            "{target}"
        );
    }
}

#[test]
fn host_arp_for_endpoint_gets_router_mac() {
    let t = tables();
    let req = arp_frame(1, KERNEL_MAC, GW, POD_B.1);
    let (v, out) = run(&t, HOST_PORT, &req);
    assert_eq!(v, Verdict::Reply);
    assert_eq!(&out[0..6], &KERNEL_MAC);
    assert_eq!(&out[22..28], &ROUTER);
    assert_eq!(&out[28..32], &POD_B.1.octets());
    assert_eq!(&out[38..42], &GW.octets());
}

#[test]
fn malformed_arp() {
    let t = tables();
    let good = arp_frame(1, mac_of(POD_A.1), POD_A.1, GW);
    assert_eq!(
        run(&t, POD_A.0, &good[..14 + 27]).0,
        dropped(DropReason::Malformed),
        "truncated"
    );
    let edits: [(usize, u8); 5] = [(15, 6), (16, 0x86), (18, 8), (19, 16), (21, 3)];
    for (at, byte) in edits {
        let mut bad = good.clone();
        bad[at] = byte;
        assert_eq!(
            run(&t, POD_A.0, &bad).0,
            dropped(DropReason::Malformed),
            "byte {at}"
        );
    }
}

#[test]
fn malformed_ipv4_and_bad_header_checksum() {
    let t = tables();
    let good = tcp_frame(POD_A.1, POD_B.1, 64, b"hello");
    let mut cases: Vec<Vec<u8>> = Vec::new();
    cases.push(good[..14 + 19].to_vec()); // shorter than a header
    let mut v6 = good.clone();
    v6[14] = 0x65;
    cases.push(v6);
    let mut ihl4 = good.clone();
    ihl4[14] = 0x44;
    cases.push(ihl4);
    let mut too_long = good.clone();
    too_long[16..18].copy_from_slice(&2000u16.to_be_bytes());
    cases.push(too_long);
    let mut shorter_than_header = good.clone();
    shorter_than_header[16..18].copy_from_slice(&19u16.to_be_bytes());
    cases.push(shorter_than_header);
    let mut truncated_tcp = good.clone();
    truncated_tcp[16..18].copy_from_slice(&30u16.to_be_bytes());
    cases.push(truncated_tcp);
    for (i, mut c) in cases.into_iter().enumerate() {
        if c.len() >= 34 {
            fix_ip_checksum(&mut c);
        }
        assert_eq!(
            run(&t, POD_A.0, &c).0,
            dropped(DropReason::Malformed),
            "case {i}"
        );
    }
    let mut bad_sum = good.clone();
    bad_sum[24] ^= 0x40;
    assert_eq!(
        run(&t, POD_A.0, &bad_sum).0,
        dropped(DropReason::BadIpChecksum)
    );
}

#[test]
fn malformed_udp_length() {
    let t = tables();
    let good = udp_frame(POD_A.1, POD_B.1, 64, b"0123456789");
    for ulen in [0u16, 7, 19] {
        let mut bad = good.clone();
        bad[38..40].copy_from_slice(&ulen.to_be_bytes());
        assert_eq!(
            run(&t, POD_A.0, &bad).0,
            dropped(DropReason::Malformed),
            "udp len {ulen}"
        );
    }
}

#[test]
fn spoofed_source_from_pod() {
    let t = tables();
    let f = tcp_frame(Ipv4Addr::new(10, 88, 0, 99), POD_B.1, 64, b"x");
    assert_eq!(run(&t, POD_A.0, &f).0, dropped(DropReason::SpoofedSource));
    // Pod B's address on pod A's port is spoofed too.
    let f = tcp_frame(POD_B.1, POD_A.1, 64, b"x");
    assert_eq!(run(&t, POD_A.0, &f).0, dropped(DropReason::SpoofedSource));
}

/// `out` is an ICMP message from `from` to `to` (`to_mac`) sent by the
/// router, with valid checksums (checked here and by etherparse); its
/// type and its payload (what follows the 8-byte ICMP header).
fn icmp_reply(out: &[u8], to_mac: [u8; 6], from: Ipv4Addr, to: Ipv4Addr) -> (Icmpv4Type, Vec<u8>) {
    assert_eq!(&out[0..6], &to_mac, "eth dst = the sender");
    assert_eq!(&out[6..12], &ROUTER);
    assert!(ip_checksum_ok(out));
    assert!(l4_checksum_ok(out), "icmp checksum");
    let p = SlicedPacket::from_ethernet(out).expect("reply parses");
    let Some(etherparse::NetSlice::Ipv4(ip)) = &p.net else {
        panic!("not ipv4")
    };
    assert_eq!(ip.header().source_addr(), from);
    assert_eq!(ip.header().destination_addr(), to);
    assert_eq!(ip.header().ttl(), REPLY_TTL);
    let Some(TransportSlice::Icmpv4(icmp)) = &p.transport else {
        panic!("not icmp")
    };
    (icmp.icmp_type(), icmp.payload().to_vec())
}

fn assert_echo_reply(out: &[u8], to_mac: [u8; 6], to_ip: Ipv4Addr, payload: &[u8]) {
    match icmp_reply(out, to_mac, GW, to_ip) {
        (Icmpv4Type::EchoReply(e), body) => {
            assert_eq!((e.id, e.seq), (0x1234, 7));
            assert_eq!(body, payload);
        }
        other => panic!("not an echo reply: {other:?}"),
    }
}

#[test]
fn echo_request_to_gateway_is_answered() {
    let t = tables();
    let payload = b"ping payload 0123456789";
    let req = echo_request(POD_A.1, GW, 64, payload);
    let (v, out) = run(&t, POD_A.0, &req);
    assert_eq!(v, Verdict::Reply);
    assert_eq!(out.len(), req.len());
    assert_echo_reply(&out, mac_of(POD_A.1), POD_A.1, payload);

    // TTL 1 to the gateway is for us, not expired.
    let (v, out) = run(&t, POD_A.0, &echo_request(POD_A.1, GW, 1, b""));
    assert_eq!(v, Verdict::Reply);
    assert_echo_reply(&out, mac_of(POD_A.1), POD_A.1, b"");

    // From the host port.
    let req = echo_request(Ipv4Addr::new(192, 168, 1, 10), GW, 64, payload);
    let (v, out) = run(&t, HOST_PORT, &req);
    assert_eq!(v, Verdict::Reply);
    assert_echo_reply(&out, KERNEL_MAC, Ipv4Addr::new(192, 168, 1, 10), payload);

    let mut bad = echo_request(POD_A.1, GW, 64, payload);
    let last = bad.len() - 1;
    bad[last] ^= 0xff;
    assert_eq!(run(&t, POD_A.0, &bad).0, dropped(DropReason::BadL4Checksum));
}

#[test]
fn pod_to_pod_tcp_is_routed_with_ttl_decrement() {
    let t = tables();
    let payload = b"GET / HTTP/1.1\r\n\r\n";
    let f = tcp_frame(POD_A.1, POD_B.1, 64, payload);
    let (v, out) = run(&t, POD_A.0, &f);
    assert_eq!(v, Verdict::Tx(POD_B.0));
    assert_eq!(&out[0..6], &mac_of(POD_B.1));
    assert_eq!(&out[6..12], &ROUTER);
    assert_eq!(out[22], 63, "ttl");
    assert!(ip_checksum_ok(&out));
    assert!(l4_checksum_ok(&out));
    assert_eq!(
        &out[12..22],
        &f[12..22],
        "only MACs, TTL and IP checksum change"
    );
    assert_eq!(&out[26..], &f[26..]);

    // Hairpin to itself.
    let f = udp_frame(POD_A.1, POD_A.1, 2, b"self");
    let (v, out) = run(&t, POD_A.0, &f);
    assert_eq!(v, Verdict::Tx(POD_A.0));
    assert_eq!(out[22], 1);
    assert!(ip_checksum_ok(&out) && l4_checksum_ok(&out));
}

#[test]
fn host_to_pod_keeps_ttl() {
    let t = tables();
    let f = tcp_frame(GW, POD_B.1, 1, b"probe");
    let (v, out) = run(&t, HOST_PORT, &f);
    assert_eq!(v, Verdict::Tx(POD_B.0));
    assert_eq!(out[22], 1, "no TTL change from the host");
    assert_eq!(&out[0..6], &mac_of(POD_B.1));
    assert_eq!(&out[6..12], &ROUTER);
    assert!(ip_checksum_ok(&out) && l4_checksum_ok(&out));
}

#[test]
fn expired_ttl_gets_time_exceeded() {
    let t = tables();
    for ttl in [0u8, 1] {
        let payload = b"0123456789abcdef";
        let f = udp_frame(POD_A.1, POD_B.1, ttl, payload);
        let (v, out) = run(&t, POD_A.0, &f);
        assert_eq!(v, Verdict::Reply, "ttl {ttl}");
        assert_eq!(out.len(), 14 + 20 + 8 + 20 + 8);
        assert_eq!(&out[0..6], &mac_of(POD_A.1));
        assert_eq!(&out[6..12], &ROUTER);
        assert!(ip_checksum_ok(&out));
        assert!(l4_checksum_ok(&out), "icmp checksum");
        let p = SlicedPacket::from_ethernet(&out).expect("parses");
        let Some(etherparse::NetSlice::Ipv4(ip)) = &p.net else {
            panic!("not ipv4")
        };
        assert_eq!(ip.header().source_addr(), GW);
        assert_eq!(ip.header().destination_addr(), POD_A.1);
        assert_eq!(ip.header().ttl(), REPLY_TTL);
        let Some(TransportSlice::Icmpv4(icmp)) = &p.transport else {
            panic!("not icmp")
        };
        assert!(
            matches!(icmp.icmp_type(), Icmpv4Type::TimeExceeded(_)),
            "{:?}",
            icmp.icmp_type()
        );
        assert_eq!(
            &out[14 + 28..],
            &f[14..14 + 28],
            "quotes IP header + 8 bytes"
        );
    }
}

#[test]
fn expired_ttl_without_icmp_error() {
    let t = tables();
    // No room in the buffer for the error.
    let f = udp_frame(POD_A.1, POD_B.1, 1, b"");
    assert_eq!(
        run_in(&t, POD_A.0, &f, f.len()).0,
        dropped(DropReason::TtlExceeded)
    );
    // About an ICMP error: never.
    let mut err = echo_request(POD_A.1, POD_B.1, 1, b"12345678");
    err[34] = 3;
    assert_eq!(run(&t, POD_A.0, &err).0, dropped(DropReason::TtlExceeded));
    // About a non-first fragment: never.
    let mut frag = udp_frame(POD_A.1, POD_B.1, 1, b"12345678");
    frag[20..22].copy_from_slice(&100u16.to_be_bytes());
    fix_ip_checksum(&mut frag);
    assert_eq!(run(&t, POD_A.0, &frag).0, dropped(DropReason::TtlExceeded));
    // An echo request (not an error) with TTL 1 to another pod does get one.
    let echo = echo_request(POD_A.1, POD_B.1, 1, b"12345678");
    assert_eq!(run(&t, POD_A.0, &echo).0, Verdict::Reply);
}

#[test]
fn time_exceeded_quotes_options_and_short_payloads() {
    let t = tables();
    // IHL 6 (4 bytes of NOP options) and only 3 bytes of data beyond it.
    let base = udp_frame(POD_A.1, POD_B.1, 1, b"");
    let mut f = base[..34].to_vec();
    f.extend_from_slice(&[1, 1, 1, 0]);
    f.extend_from_slice(&[0xaa, 0xbb, 0xcc]);
    f[14] = 0x46;
    f[16..18].copy_from_slice(&27u16.to_be_bytes());
    f[23] = 253; // an experimental protocol: no L4 checks
    fix_ip_checksum(&mut f);
    let (v, out) = run(&t, POD_A.0, &f);
    assert_eq!(v, Verdict::Reply);
    assert_eq!(out.len(), 14 + 28 + 24 + 3);
    assert!(ip_checksum_ok(&out) && l4_checksum_ok(&out));
    assert_eq!(&out[42..], &f[14..]);
}

#[test]
fn destinations_without_endpoint_or_route() {
    let t = tables();
    let f = tcp_frame(POD_A.1, NO_POD, 64, b"x");
    assert_eq!(run(&t, POD_A.0, &f).0, dropped(DropReason::NoEndpoint));
    let f = tcp_frame(POD_A.1, BLACKHOLED, 64, b"x");
    assert_eq!(run(&t, POD_A.0, &f).0, dropped(DropReason::NoRoute));
    let f = tcp_frame(POD_A.1, UNRESOLVED, 64, b"x");
    assert_eq!(run(&t, POD_A.0, &f).0, dropped(DropReason::NoRoute));
    // From the host, a non-endpoint would loop back to the host.
    let f = tcp_frame(GW, OUTSIDE, 64, b"x");
    assert_eq!(run(&t, HOST_PORT, &f).0, dropped(DropReason::NoRoute));
    let f = tcp_frame(GW, NO_POD, 64, b"x");
    assert_eq!(run(&t, HOST_PORT, &f).0, dropped(DropReason::NoEndpoint));
}

#[test]
fn route_to_endpoint_delivers_to_its_pod() {
    let t = tables();
    let f = tcp_frame(POD_A.1, ROUTED_TO_POD3, 64, b"x");
    let (v, out) = run(&t, POD_A.0, &f);
    assert_eq!(v, Verdict::Tx(PODS[2].0));
    assert_eq!(&out[0..6], &mac_of(PODS[2].1));
    assert_eq!(out[22], 63);
}

#[test]
fn other_traffic_goes_to_the_host_port() {
    let t = tables();
    for (dst, what) in [(OUTSIDE, "outside"), (GW, "gateway tcp")] {
        let f = tcp_frame(POD_A.1, dst, 64, b"to the node");
        let (v, out) = run(&t, POD_A.0, &f);
        assert_eq!(v, Verdict::Tx(HOST_PORT), "{what}");
        assert_eq!(&out[0..6], &KERNEL_MAC);
        assert_eq!(&out[6..12], &ROUTER);
        assert_eq!(out[22], 64, "the kernel routes and decrements");
        assert!(ip_checksum_ok(&out) && l4_checksum_ok(&out));
    }
    // ICMP to the gateway that is not an echo request goes to the kernel.
    let mut reply = echo_request(POD_A.1, GW, 64, b"");
    reply[34] = 0;
    reply[36..38].copy_from_slice(&[0, 0]);
    let c = !ref_sum(&[&reply[34..]]);
    reply[36..38].copy_from_slice(&c.to_be_bytes());
    assert!(l4_checksum_ok(&reply));
    assert_eq!(run(&t, POD_A.0, &reply).0, Verdict::Tx(HOST_PORT));

    let no_host = tables_with(false);
    let f = tcp_frame(POD_A.1, OUTSIDE, 64, b"x");
    assert_eq!(
        run(&no_host, POD_A.0, &f).0,
        dropped(DropReason::NoHostPort)
    );
}

#[test]
fn partial_checksums_are_completed() {
    let t = tables();
    let payload: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
    for odd in [false, true] {
        let p = if odd { &payload[..999] } else { &payload[..] };
        for mut f in [
            tcp_frame(POD_A.1, POD_B.1, 64, p),
            udp_frame(POD_A.1, POD_B.1, 64, p),
        ] {
            let valid = f.clone();
            make_partial(&mut f);
            assert!(!l4_checksum_ok(&f), "fixture must really be partial");
            let (v, out) = run(&t, POD_A.0, &f);
            assert_eq!(v, Verdict::Tx(POD_B.0));
            assert!(l4_checksum_ok(&out), "completed checksum verifies");
            let at = l4_checksum_at(&out);
            let (ours, theirs) = (&out[at..at + 2], &valid[at..at + 2]);
            assert!(
                ours == theirs || ours == [0xff, 0xff] || ours == [0, 0],
                "{ours:?} vs {theirs:?}"
            );
            // Same on the way to the host.
            let mut to_host = tcp_frame(POD_A.1, OUTSIDE, 64, p);
            make_partial(&mut to_host);
            let (v, out) = run(&t, POD_A.0, &to_host);
            assert_eq!(v, Verdict::Tx(HOST_PORT));
            assert!(l4_checksum_ok(&out));
            // And from the host (the kernel's veth leaves partial sums too).
            let mut from_host = tcp_frame(GW, POD_B.1, 64, p);
            make_partial(&mut from_host);
            let (v, out) = run(&t, HOST_PORT, &from_host);
            assert_eq!(v, Verdict::Tx(POD_B.0));
            assert!(l4_checksum_ok(&out));
        }
    }
}

#[test]
fn forwarded_l4_checksums_are_not_verified_and_udp_zero_is_kept() {
    let t = tables();
    // A wrong checksum is forwarded as it is, as a router does: the
    // receiving stack drops it. Only the field is read, never the payload.
    let mut tcp = tcp_frame(POD_A.1, POD_B.1, 64, b"payload");
    let at = l4_checksum_at(&tcp);
    tcp[at] ^= 0x11;
    let (v, out) = run(&t, POD_A.0, &tcp);
    assert_eq!(v, Verdict::Tx(POD_B.0));
    assert!(!l4_checksum_ok(&out), "still wrong, not made right");
    assert_eq!(out[at..at + 2], tcp[at..at + 2], "the field as it came");
    let mut udp = udp_frame(POD_A.1, POD_B.1, 64, b"payload");
    let last = udp.len() - 1;
    udp[last] ^= 0x01;
    let (v, out) = run(&t, POD_A.0, &udp);
    assert_eq!(v, Verdict::Tx(POD_B.0));
    assert!(!l4_checksum_ok(&out));
    udp[last] ^= 0x01;
    // UDP without a checksum is forwarded as is.
    let at = l4_checksum_at(&udp);
    udp[at..at + 2].copy_from_slice(&[0, 0]);
    let (v, out) = run(&t, POD_A.0, &udp);
    assert_eq!(v, Verdict::Tx(POD_B.0));
    assert_eq!(&out[at..at + 2], &[0, 0]);
}

#[test]
fn fragments_are_forwarded_untouched() {
    let t = tables();
    // First fragment (MF set) and a later fragment: L4 bytes (and a wrong
    // L4 checksum) are left alone.
    for (flags_off, what) in [(0x2000u16, "first"), (0x0010, "later"), (0x2010, "middle")] {
        let mut f = tcp_frame(POD_A.1, POD_B.1, 64, b"fragment payload");
        let at = l4_checksum_at(&f);
        f[at] ^= 0x55;
        f[20..22].copy_from_slice(&flags_off.to_be_bytes());
        fix_ip_checksum(&mut f);
        let (v, out) = run(&t, POD_A.0, &f);
        assert_eq!(v, Verdict::Tx(POD_B.0), "{what}");
        assert_eq!(&out[34..], &f[34..], "{what}");
        assert!(ip_checksum_ok(&out));
    }
}

#[test]
fn ethernet_padding_and_ip_options_are_kept() {
    let t = tables();
    let mut f = udp_frame(POD_A.1, POD_B.1, 64, b"");
    f.resize(60, 0);
    let (v, out) = run(&t, POD_A.0, &f);
    assert_eq!(v, Verdict::Tx(POD_B.0));
    assert_eq!(out.len(), 60);
    assert!(l4_checksum_ok(&out));

    // IHL 6 with a NOP option; the UDP checksum does not cover IP options.
    let plain = udp_frame(POD_A.1, POD_B.1, 64, b"opts");
    let mut f = plain[..34].to_vec();
    f.extend_from_slice(&[1, 1, 1, 0]);
    f.extend_from_slice(&plain[34..]);
    f[14] = 0x46;
    let tl = (plain.len() - 14 + 4) as u16;
    f[16..18].copy_from_slice(&tl.to_be_bytes());
    fix_ip_checksum(&mut f);
    let (v, out) = run(&t, POD_A.0, &f);
    assert_eq!(v, Verdict::Tx(POD_B.0));
    assert!(ip_checksum_ok(&out) && l4_checksum_ok(&out));
    assert_eq!(out[22], 63);
}

#[test]
fn batch_writes_one_verdict_per_frame() {
    let t = tables();
    let inputs = [
        (POD_A.0, tcp_frame(POD_A.1, POD_B.1, 64, b"a")),
        (POD_A.0, arp_frame(1, mac_of(POD_A.1), POD_A.1, GW)),
        (99, tcp_frame(POD_A.1, POD_B.1, 64, b"a")),
        (POD_B.0, tcp_frame(POD_B.1, OUTSIDE, 64, b"b")),
    ];
    let mut bufs: Vec<Vec<u8>> = inputs
        .iter()
        .map(|(_, f)| {
            let mut b = f.clone();
            b.resize(CHUNK, 0);
            b
        })
        .collect();
    let mut frames: Vec<Frame<'_>> = bufs
        .iter_mut()
        .zip(inputs.iter())
        .map(|(b, (port, f))| Frame::new(*port, b, f.len()))
        .collect();
    let mut verdicts = [Verdict::Drop(DropReason::Malformed); 4];
    process_batch(&t, 0, &mut frames, &mut verdicts);
    assert_eq!(
        verdicts,
        [
            Verdict::Tx(POD_B.0),
            Verdict::Reply,
            Verdict::Drop(DropReason::UnknownPort),
            Verdict::Tx(HOST_PORT)
        ]
    );
}

/// Frames whose offload header says NEEDS_CSUM keep their partial checksum
/// (the egress side completes or segments); replies leave plain.
#[test]
fn offloaded_frames_keep_partial_checksums_and_replies_drop_the_header() {
    let t = tables();
    let mut f = tcp_frame(POD_A.1, POD_B.1, 64, &[7u8; 300]);
    make_partial(&mut f);
    let at = l4_checksum_at(&f);
    let partial = [f[at], f[at + 1]];
    let off = Offload {
        flags: offload::F_NEEDS_CSUM,
        csum_start: 34,
        csum_offset: 16,
        ..Offload::NONE
    };
    let mut buf = f.clone();
    buf.resize(CHUNK, 0);
    let mut frame = Frame::with_offload(POD_A.0, &mut buf, f.len(), off);
    assert_eq!(process_frame(&t, &mut frame), Verdict::Tx(POD_B.0));
    assert_eq!(frame.offload, off, "header kept for the egress side");
    assert_eq!([buf[at], buf[at + 1]], partial, "checksum left partial");
    assert_eq!(buf[14 + 8], 63, "still routed: TTL decremented");
    assert!(ip_checksum_ok(&buf[..f.len()]));

    // A garbage L4 checksum under NEEDS_CSUM is not judged here either:
    // the field is overwritten when the checksum is completed.
    let mut bad = f.clone();
    bad[at] ^= 0x55;
    bad.resize(CHUNK, 0);
    let mut frame = Frame::with_offload(POD_A.0, &mut bad, f.len(), off);
    assert_eq!(process_frame(&t, &mut frame), Verdict::Tx(POD_B.0));

    // An echo request to the gateway answered in place leaves plain (the
    // header of an ICMP frame can only say DATA_VALID: a partial checksum
    // on it is refused, see `bad_offload_headers_are_dropped`).
    let req = echo_request(POD_A.1, GW, 64, b"ping");
    let mut buf = req.clone();
    buf.resize(CHUNK, 0);
    let valid = Offload {
        flags: offload::F_DATA_VALID,
        ..Offload::NONE
    };
    let mut frame = Frame::with_offload(POD_A.0, &mut buf, req.len(), valid);
    assert_eq!(process_frame(&t, &mut frame), Verdict::Reply);
    assert_eq!(frame.offload, Offload::NONE);
}

/// `out` is an ICMP fragmentation needed to `to` (`to_mac`) from `from`
/// carrying `mtu`, quoting the IP header and 8 data bytes of `orig`.
fn assert_frag_needed(
    out: &[u8],
    orig: &[u8],
    (to_mac, to, from): ([u8; 6], Ipv4Addr, Ipv4Addr),
    mtu: u32,
) {
    let (hl, tl, ..) = ip_fields(orig);
    let quoted = hl + (tl - hl).min(8);
    assert_eq!(out.len(), 14 + 20 + 8 + quoted);
    let (icmp_type, body) = icmp_reply(out, to_mac, from, to);
    assert_eq!(
        icmp_type,
        Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded {
                next_hop_mtu: mtu as u16
            }
        )
    );
    assert_eq!(body, &orig[14..14 + quoted], "the quote");
}

fn frag_needed_on(port: PortId) -> Verdict {
    Verdict::IcmpError {
        port,
        reason: DropReason::FragNeeded,
    }
}

#[test]
fn df_packets_larger_than_the_egress_mtu_get_frag_needed() {
    let t = tables();
    // 20 + 20 + 1241 = 1281 bytes towards a pod of MTU 1280.
    let f = tcp_frame(POD_A.1, SMALL_POD.1, 64, &[1u8; 1241]);
    let (v, out) = run(&t, POD_A.0, &f);
    assert_eq!(v, frag_needed_on(POD_A.0));
    assert_frag_needed(&out, &f, (mac_of(POD_A.1), POD_A.1, GW), SMALL_MTU);
    // Towards the node kernel: the host port's MTU.
    let f = udp_frame(POD_A.1, OUTSIDE, 64, &[2u8; 1500 - 28 + 1]);
    let (v, out) = run(&t, POD_A.0, &f);
    assert_eq!(v, frag_needed_on(POD_A.0));
    assert_frag_needed(&out, &f, (mac_of(POD_A.1), POD_A.1, GW), HOST_MTU);
    // From the host port: the kernel drops ICMP from its own address (the
    // gateway), so the error comes from the pod it could not reach.
    let f = tcp_frame(OUTSIDE, SMALL_POD.1, 63, &[3u8; 1300]);
    let (v, out) = run(&t, HOST_PORT, &f);
    assert_eq!(v, frag_needed_on(HOST_PORT));
    assert_frag_needed(&out, &f, (KERNEL_MAC, OUTSIDE, SMALL_POD.1), SMALL_MTU);
    // An echo request is not an ICMP error: it is answered too.
    let f = echo_request(POD_A.1, SMALL_POD.1, 64, &[4u8; 1400]);
    let (v, out) = run(&t, POD_A.0, &f);
    assert_eq!(v, frag_needed_on(POD_A.0));
    assert_frag_needed(&out, &f, (mac_of(POD_A.1), POD_A.1, GW), SMALL_MTU);
}

#[test]
fn packets_that_fit_the_egress_mtu_are_forwarded_unchanged() {
    let t = tables();
    for (dst, port, mtu) in [
        (SMALL_POD, SMALL_POD.0, SMALL_MTU),
        (POD_B, POD_B.0, POD_MTU),
        ((HOST_PORT, OUTSIDE), HOST_PORT, HOST_MTU),
    ] {
        let payload = vec![5u8; mtu as usize - 40];
        let f = tcp_frame(POD_A.1, dst.1, 64, &payload);
        let (v, out) = run(&t, POD_A.0, &f);
        assert_eq!(v, Verdict::Tx(port), "{dst:?}");
        assert_eq!(out.len(), f.len());
        // Pod -> pod is routed here; the node kernel routes the rest.
        let ttl = if port == HOST_PORT { 64 } else { 63 };
        assert_eq!(out[22], ttl);
        assert_eq!(&out[23..24], &f[23..24]);
        assert_eq!(&out[26..], &f[26..], "addresses, TCP header, payload");
        assert!(ip_checksum_ok(&out) && l4_checksum_ok(&out));
    }
    // An endpoint without an MTU (an older ferryd) is not checked.
    let f = udp_frame(POD_A.1, PODS[2].1, 64, &[6u8; 1700]);
    assert_eq!(run(&t, POD_A.0, &f).0, Verdict::Tx(PODS[2].0));
}

#[test]
fn too_big_without_df_is_dropped() {
    let t = tables();
    let mut f = udp_frame(POD_A.1, SMALL_POD.1, 64, &[7u8; 1300]);
    clear_df(&mut f);
    let (v, out) = run(&t, POD_A.0, &f);
    assert_eq!(v, dropped(DropReason::TooBigNoDf));
    assert_eq!(out, f, "left as it came");
}

#[test]
fn frag_needed_is_never_sent_about_icmp_errors_or_later_fragments() {
    let t = tables();
    let mut err = echo_request(POD_A.1, SMALL_POD.1, 64, &[8u8; 1400]);
    err[34] = wire::ICMP_DEST_UNREACHABLE;
    assert_eq!(run(&t, POD_A.0, &err).0, dropped(DropReason::FragNeeded));
    let mut frag = udp_frame(POD_A.1, SMALL_POD.1, 64, &[9u8; 1400]);
    frag[20..22].copy_from_slice(&(0x4000u16 | 100).to_be_bytes());
    fix_ip_checksum(&mut frag);
    assert_eq!(run(&t, POD_A.0, &frag).0, dropped(DropReason::FragNeeded));
}

/// A GSO frame (tap pod) is judged by the size of its segments, as Linux
/// judges a forwarded GSO skb; answered, it leaves plain.
#[test]
fn gso_frames_are_judged_by_their_segments() {
    let t = tables();
    let mut f = tcp_frame(POD_A.1, SMALL_POD.1, 64, &[10u8; 6000]);
    make_partial(&mut f);
    let gso = gso_tcp4;
    let cap = f.len();
    // 20 + 20 + 1240 = 1280: every segment fits.
    let mut buf = f.clone();
    let mut frame = Frame::with_offload(POD_A.0, &mut buf, f.len(), gso(1240));
    assert_eq!(process_frame(&t, &mut frame), Verdict::Tx(SMALL_POD.0));
    assert_eq!(frame.offload, gso(1240), "still a GSO frame");
    // One byte more per segment does not.
    let mut buf = f.clone();
    let mut frame = Frame::with_offload(POD_A.0, &mut buf, f.len(), gso(1241));
    assert_eq!(process_frame(&t, &mut frame), frag_needed_on(POD_A.0));
    assert_eq!(frame.offload, Offload::NONE, "the error is a plain frame");
    let n = frame.len;
    assert_frag_needed(&buf[..n], &f, (mac_of(POD_A.1), POD_A.1, GW), SMALL_MTU);
    // Without DF: dropped, header and all.
    let mut no_df = f.clone();
    clear_df(&mut no_df);
    let (v, _) = run_offload(&t, POD_A.0, &no_df, cap, gso(1241));
    assert_eq!(v, dropped(DropReason::TooBigNoDf));
    // A GSO frame shorter than one segment is judged by its length.
    let short = tcp_frame(POD_A.1, SMALL_POD.1, 64, &[11u8; 1000]);
    let (v, _) = run_offload(&t, POD_A.0, &short, CHUNK, gso(8000));
    assert_eq!(v, Verdict::Tx(SMALL_POD.0));
}

/// A tap header that does not fit its frame is a counted drop before any
/// decision: the egress side writes where it points.
#[test]
fn bad_offload_headers_are_dropped() {
    let t = tables();
    let mut f = tcp_frame(POD_A.1, POD_B.1, 64, &[7u8; 3000]);
    make_partial(&mut f);
    let gso = Offload {
        flags: offload::F_NEEDS_CSUM,
        gso_type: offload::GSO_TCPV4,
        hdr_len: 54,
        gso_size: 1448,
        csum_start: 34,
        csum_offset: 16,
    };
    let run_with = |frame: &[u8], off: Offload| {
        // A tap frame's buffer holds a whole GSO frame.
        let mut buf = frame.to_vec();
        buf.resize(frame.len().max(CHUNK), 0);
        let mut fr = Frame::with_offload(POD_A.0, &mut buf, frame.len(), off);
        process_frame(&t, &mut fr)
    };
    assert_eq!(run_with(&f, gso), Verdict::Tx(POD_B.0));
    // Completing this "checksum" would overwrite the source address
    // after the anti-spoofing check.
    let at_src = Offload {
        gso_type: offload::GSO_NONE,
        gso_size: 0,
        csum_start: 26,
        csum_offset: 0,
        ..gso
    };
    assert_eq!(run_with(&f, at_src), dropped(DropReason::BadCsumOffload));
    let udp_gso = Offload {
        gso_type: offload::GSO_UDP,
        ..gso
    };
    assert_eq!(run_with(&f, udp_gso), dropped(DropReason::BadGsoType));
    let tiny = Offload { gso_size: 8, ..gso };
    assert_eq!(run_with(&f, tiny), dropped(DropReason::BadGsoSize));
    let arp = arp_frame(1, mac_of(POD_A.1), POD_A.1, GW);
    assert_eq!(run_with(&arp, gso), dropped(DropReason::BadOffload));
    // An IPv4 packet under an IPv6 ethertype: the header is checked
    // against what the frame says it is, and does not fit.
    let mut v6 = f.clone();
    v6[12..14].copy_from_slice(&[0x86, 0xdd]);
    assert_eq!(run_with(&v6, gso), dropped(DropReason::BadOffload));
}

#[test]
fn prepend_takes_the_headroom_and_refuses_beyond_it() {
    let mut buf = vec![0u8; FRAME_HEADROOM + 100];
    buf[FRAME_HEADROOM..FRAME_HEADROOM + 4].copy_from_slice(b"data");
    let mut f = Frame::in_buffer(POD_A.0, &mut buf, FRAME_HEADROOM, 4, Offload::NONE);
    assert!(
        f.prepend(FRAME_HEADROOM + 1).is_none(),
        "more than the headroom"
    );
    assert_eq!(
        (f.headroom, f.len),
        (FRAME_HEADROOM, 4),
        "unchanged when refused"
    );
    let outer = f.prepend(VXLAN_OVERHEAD).expect("a VXLAN header fits");
    assert_eq!(outer.len(), VXLAN_OVERHEAD);
    outer.fill(0xee);
    assert_eq!(f.len, VXLAN_OVERHEAD + 4);
    assert_eq!(
        &f.bytes()[VXLAN_OVERHEAD..],
        b"data",
        "the frame did not move"
    );
    let rest = FRAME_HEADROOM - VXLAN_OVERHEAD;
    assert!(f.prepend(rest + 1).is_none());
    assert!(f.prepend(rest).is_some(), "up to the whole headroom");
    assert_eq!(f.headroom, 0);
    assert!(f.prepend(1).is_none());
    // The pipeline reads the frame where it starts, not the buffer's start.
    let req = arp_frame(1, mac_of(POD_A.1), POD_A.1, GW);
    let mut buf = vec![0u8; FRAME_HEADROOM + CHUNK];
    buf[FRAME_HEADROOM..][..req.len()].copy_from_slice(&req);
    let mut f = Frame::in_buffer(POD_A.0, &mut buf, FRAME_HEADROOM, req.len(), Offload::NONE);
    assert_eq!(process_frame(&tables(), &mut f), Verdict::Reply);
    assert!(
        buf[..FRAME_HEADROOM].iter().all(|b| *b == 0),
        "headroom untouched"
    );
}

/// Checksum state: classified once (a veth's partial checksum found by
/// the pipeline, a tap's taken from its header, DATA_VALID trusted), then
/// finished by the egress port's capabilities.
#[test]
fn checksum_state_is_classified_once_and_finished_by_the_egress() {
    use crate::core::offload::{finish, EgressCaps, Finished};
    let t = tables();
    let tap = EgressCaps {
        offload: true,
        tx_csum: false,
    };
    let veth = EgressCaps::default();
    let partial_at = CsumState::Partial {
        start: 34,
        offset: 16,
    };
    // A veth frame with a partial checksum: classified partial, left so.
    let mut f = tcp_frame(POD_A.1, POD_B.1, 64, &[3u8; 200]);
    make_partial(&mut f);
    let mut buf = f.clone();
    let mut frame = Frame::new(POD_A.0, &mut buf, f.len());
    assert_eq!(frame.csum, CsumState::Unknown);
    assert_eq!(process_frame(&t, &mut frame), Verdict::Tx(POD_B.0));
    assert_eq!(frame.csum, partial_at);
    assert!(
        !l4_checksum_ok(frame.bytes()),
        "not completed by the pipeline"
    );
    // Towards a tap: as it is, with a header saying so.
    let mut to_tap = frame.bytes().to_vec();
    let Ok(Finished::Send(h)) = finish(&mut to_tap, frame.csum, &frame.offload, tap) else {
        panic!("a tap takes it")
    };
    assert_eq!(
        (h.flags, h.csum_start, h.csum_offset),
        (offload::F_NEEDS_CSUM, 34, 16)
    );
    assert_eq!(to_tap, frame.bytes(), "untouched");
    assert_eq!(
        offload::check(&to_tap, &h),
        Ok(()),
        "the header fits the frame"
    );
    // The hook for AF_XDP TX checksum metadata leaves it partial too.
    let with_md = EgressCaps {
        offload: false,
        tx_csum: true,
    };
    let mut md = frame.bytes().to_vec();
    assert!(
        matches!(finish(&mut md, frame.csum, &frame.offload, with_md), Ok(Finished::Send(h)) if h.needs_csum())
    );
    // Towards a veth: completed, over the L4 segment only (padding after
    // the IP packet is not summed).
    let mut padded = frame.bytes().to_vec();
    padded.extend_from_slice(&[0xab; 7]);
    assert_eq!(
        finish(&mut padded, frame.csum, &frame.offload, veth),
        Ok(Finished::Send(Offload::NONE))
    );
    assert!(l4_checksum_ok(&padded[..f.len()]));

    // A complete checksum is verified once and then left alone.
    let f = udp_frame(POD_A.1, POD_B.1, 64, b"complete");
    let mut buf = f.clone();
    let mut frame = Frame::new(POD_A.0, &mut buf, f.len());
    assert_eq!(process_frame(&t, &mut frame), Verdict::Tx(POD_B.0));
    assert_eq!(frame.csum, CsumState::Complete);
    let before = frame.bytes().to_vec();
    let mut out = before.clone();
    assert_eq!(
        finish(&mut out, frame.csum, &frame.offload, veth),
        Ok(Finished::Send(Offload::NONE))
    );
    assert_eq!(out, before);
    assert!(
        matches!(finish(&mut out, frame.csum, &frame.offload, tap), Ok(Finished::Send(h)) if h == Offload::NONE)
    );

    // Tap headers: NEEDS_CSUM is partial where it points, DATA_VALID is
    // complete (not checked again), nothing is for the pipeline.
    let needs = Offload {
        flags: offload::F_NEEDS_CSUM,
        csum_start: 34,
        csum_offset: 16,
        ..Offload::NONE
    };
    assert_eq!(CsumState::at_ingress(&needs), partial_at);
    let valid = Offload {
        flags: offload::F_DATA_VALID,
        ..Offload::NONE
    };
    assert_eq!(CsumState::at_ingress(&valid), CsumState::Complete);
    assert_eq!(CsumState::at_ingress(&Offload::NONE), CsumState::Unknown);

    // Replies are complete and plain, whatever the request carried.
    let req = echo_request(POD_A.1, GW, 64, b"ping");
    let mut buf = req.clone();
    let mut frame = Frame::with_offload(POD_A.0, &mut buf, req.len(), valid);
    assert_eq!(process_frame(&t, &mut frame), Verdict::Reply);
    assert_eq!(
        (frame.csum, frame.offload),
        (CsumState::Complete, Offload::NONE)
    );
}
