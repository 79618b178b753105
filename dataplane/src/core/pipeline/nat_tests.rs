//! Service translation through the pipeline, on the fixture node: pods 1-3
//! (10.88.0.2-4), ClusterIPs in 10.96.0.0/16. Frames are built with
//! etherparse and checked with the fixtures' reference checksums.

use std::net::Ipv4Addr;
use std::sync::Arc;

use etherparse::PacketBuilder;
use ferry_api::table::{Backend, L4Proto, ServicePort};

use super::fixtures::*;
use super::{process_frame_at, DropReason, Frame, Verdict};
use crate::core::conntrack::Conntrack;
use crate::core::service::ServiceTable;
use crate::core::tables::{Services, Tables};

const WEB: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const DNS: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 53);
const EMPTY: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 99);
const SELF_SVC: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
const STICKY: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 30);

fn pod(i: usize) -> Ipv4Addr {
    PODS[i].1
}

fn port(vip: Ipv4Addr, port: u16, protocol: L4Proto, backends: &[(Ipv4Addr, u16)]) -> ServicePort {
    ServicePort {
        id: format!("default/{vip}:{port}/{}", protocol.name()),
        vip: vip.into(),
        port,
        protocol,
        backends: backends
            .iter()
            .map(|(ip, port)| Backend {
                ip: (*ip).into(),
                port: *port,
            })
            .collect(),
        affinity_timeout_s: None,
        seed: 7,
        node_port: None,
        node_local: None,
    }
}

fn services(web_backends: &[(Ipv4Addr, u16)]) -> Vec<ServicePort> {
    let mut sticky = port(STICKY, 80, L4Proto::Tcp, &[(pod(1), 8080), (pod(2), 8080)]);
    sticky.affinity_timeout_s = Some(10800);
    vec![
        port(WEB, 80, L4Proto::Tcp, web_backends),
        port(DNS, 53, L4Proto::Udp, &[(pod(2), 5353)]),
        port(EMPTY, 80, L4Proto::Tcp, &[]),
        port(EMPTY, 53, L4Proto::Udp, &[]),
        port(SELF_SVC, 80, L4Proto::Tcp, &[(pod(0), 8080)]),
        sticky,
    ]
}

fn with(services: &[ServicePort], ct: &Arc<Conntrack>) -> Tables {
    tables().with_services(Some(Services {
        table: Arc::new(ServiceTable::build(services)),
        conntrack: Arc::clone(ct),
    }))
}

fn both_backends() -> Vec<(Ipv4Addr, u16)> {
    vec![(pod(1), 8080), (pod(2), 8080)]
}

pub(super) fn tcp(
    src: Ipv4Addr,
    sport: u16,
    dst: Ipv4Addr,
    dport: u16,
    syn: bool,
    payload: &[u8],
) -> Vec<u8> {
    let src_mac = if PODS.iter().any(|(_, ip)| *ip == src) {
        mac_of(src)
    } else {
        KERNEL_MAC
    };
    let b = PacketBuilder::ethernet2(src_mac, ROUTER)
        .ipv4(src.octets(), dst.octets(), 64)
        .tcp(sport, dport, 1000, 64240);
    let b = if syn { b.syn() } else { b.ack(5000) };
    let mut v = Vec::new();
    b.write(&mut v, payload).unwrap();
    v
}

pub(super) fn udp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(mac_of(src), ROUTER)
        .ipv4(src.octets(), dst.octets(), 64)
        .udp(sport, dport);
    let mut v = Vec::new();
    b.write(&mut v, payload).unwrap();
    v
}

/// Run `frame` in on `port` at time `now`; the verdict and the frame as
/// the egress gets it (checksums completed for a veth).
fn run_at(t: &Tables, port: u32, frame: &[u8], now: u64) -> (Verdict, Vec<u8>) {
    let mut buf = vec![0u8; CHUNK];
    buf[..frame.len()].copy_from_slice(frame);
    let mut f = Frame::new(port, &mut buf, frame.len());
    let v = process_frame_at(t, now, &mut f);
    if matches!(v, Verdict::Tx(_)) {
        finish_for_veth(&mut f);
    }
    let len = f.len;
    buf.truncate(len);
    (v, buf)
}

/// (source, source port, destination, destination port) of a frame.
fn tuple(f: &[u8]) -> (Ipv4Addr, u16, Ipv4Addr, u16) {
    let (hl, _, _, src, dst) = ip_fields(f);
    let l4 = &f[14 + hl..];
    (
        src.into(),
        u16::from_be_bytes([l4[0], l4[1]]),
        dst.into(),
        u16::from_be_bytes([l4[2], l4[3]]),
    )
}

fn checksums(f: &[u8]) -> bool {
    ip_checksum_ok(f) && l4_checksum_ok(f)
}

#[test]
fn a_clusterip_flow_goes_to_a_backend_and_its_replies_come_back_from_the_vip() {
    let ct = Arc::new(Conntrack::new(1024));
    let t = with(&services(&both_backends()), &ct);
    let (v, out) = run_at(&t, 1, &tcp(pod(0), 40000, WEB, 80, true, b""), 1);
    let Verdict::Tx(to) = v else { panic!("{v:?}") };
    let (src, sport, dst, dport) = tuple(&out);
    assert_eq!((src, sport, dport), (pod(0), 40000, 8080));
    assert!([pod(1), pod(2)].contains(&dst), "{dst}");
    assert_eq!(PODS[to as usize - 1].1, dst, "routed to the backend's port");
    assert_eq!(&out[..6], &mac_of(dst));
    assert!(checksums(&out));

    // The backend answers the client: its source becomes the ClusterIP.
    let (v, back) = run_at(&t, to, &tcp(dst, 8080, pod(0), 40000, false, b"hello"), 2);
    assert_eq!(v, Verdict::Tx(1));
    assert_eq!(tuple(&back), (WEB, 80, pod(0), 40000));
    assert!(checksums(&back));

    // Every later packet of the flow goes the same way.
    for i in 0..10 {
        let (v, again) = run_at(
            &t,
            1,
            &tcp(pod(0), 40000, WEB, 80, false, &[i; 100]),
            3 + u64::from(i),
        );
        assert_eq!(v, Verdict::Tx(to));
        assert_eq!(tuple(&again).2, dst);
        assert!(checksums(&again));
    }
    assert_eq!(ct.stats().entries, 2);

    // The backend reached directly is not translated, nor are its replies.
    let (v, direct) = run_at(&t, 1, &tcp(pod(0), 41000, dst, 8080, true, b""), 20);
    assert_eq!(
        (v, tuple(&direct)),
        (Verdict::Tx(to), (pod(0), 41000, dst, 8080))
    );
    let (_, reply) = run_at(&t, to, &tcp(dst, 8080, pod(0), 41000, false, b""), 21);
    assert_eq!(tuple(&reply), (dst, 8080, pod(0), 41000));
}

#[test]
fn flows_spread_over_backends_the_same_way_every_time() {
    let ct = Arc::new(Conntrack::new(4096));
    let t = with(&services(&both_backends()), &ct);
    let other = Arc::new(Conntrack::new(4096));
    let t2 = with(&services(&both_backends()), &other);
    let mut seen = std::collections::BTreeSet::new();
    for sport in 30000..30200 {
        let f = tcp(pod(0), sport, WEB, 80, true, b"");
        let (a, b) = (run_at(&t, 1, &f, 1).1, run_at(&t2, 1, &f, 1).1);
        assert_eq!(tuple(&a), tuple(&b), "another node picks the same backend");
        seen.insert(tuple(&a).2);
    }
    assert_eq!(seen.len(), 2, "both backends get flows");
}

#[test]
fn partial_and_missing_checksums_stay_right() {
    let ct = Arc::new(Conntrack::new(1024));
    let t = with(&services(&both_backends()), &ct);
    let mut f = tcp(pod(0), 40001, WEB, 80, false, &[9; 600]);
    make_partial(&mut f);
    let (v, out) = run_at(&t, 1, &f, 1);
    assert!(matches!(v, Verdict::Tx(_)), "{v:?}");
    assert!(checksums(&out), "completed after translation");

    let (v, out) = run_at(&t, 1, &udp(pod(0), 5000, DNS, 53, b"query"), 1);
    assert_eq!(v, Verdict::Tx(3));
    assert_eq!(tuple(&out), (pod(0), 5000, pod(2), 5353));
    assert!(checksums(&out));
    let mut none = udp(pod(0), 5001, DNS, 53, b"query");
    none[40..42].fill(0);
    let (_, out) = run_at(&t, 1, &none, 1);
    assert_eq!(&out[40..42], &[0, 0], "no checksum stays none");
    assert_eq!(tuple(&out).2, pod(2));
}

#[test]
fn a_service_without_backends_is_refused() {
    let ct = Arc::new(Conntrack::new(1024));
    let t = with(&services(&both_backends()), &ct);
    let refused = Verdict::IcmpError {
        port: 1,
        reason: DropReason::ServiceNoEndpoints,
    };
    let (v, rst) = run_at(&t, 1, &tcp(pod(0), 40000, EMPTY, 80, true, b""), 1);
    assert_eq!(v, refused);
    assert_eq!(tuple(&rst), (EMPTY, 80, pod(0), 40000));
    assert_eq!(&rst[..6], &mac_of(pod(0)));
    let tcp_at = 14 + 20;
    assert_eq!(rst[tcp_at + 13], 0x14, "RST|ACK");
    assert_eq!(
        u32::from_be_bytes(rst[tcp_at + 8..tcp_at + 12].try_into().unwrap()),
        1001,
        "acks the SYN"
    );
    assert!(checksums(&rst));
    // A reset is never answered.
    let mut reset = tcp(pod(0), 40000, EMPTY, 80, false, b"");
    reset[tcp_at + 13] = 0x04;
    fix_l4_checksum(&mut reset, false);
    assert_eq!(
        run_at(&t, 1, &reset, 1).0,
        Verdict::Drop(DropReason::ServiceNoEndpoints)
    );

    let (v, icmp) = run_at(&t, 1, &udp(pod(0), 5000, EMPTY, 53, b"q"), 1);
    assert_eq!(v, refused);
    let (_, _, proto, src, dst) = ip_fields(&icmp);
    assert_eq!(
        (proto, Ipv4Addr::from(src), Ipv4Addr::from(dst)),
        (1, EMPTY, pod(0))
    );
    assert_eq!((icmp[34], icmp[35]), (3, 3), "port unreachable");
    assert!(checksums(&icmp));
    assert_eq!(ct.stats().entries, 0);
}

#[test]
fn a_pod_reaching_itself_through_its_service_sees_the_gateway() {
    let ct = Arc::new(Conntrack::new(1024));
    let t = with(&services(&both_backends()), &ct);
    let (v, out) = run_at(&t, 1, &tcp(pod(0), 40000, SELF_SVC, 80, true, b""), 1);
    assert_eq!(v, Verdict::Tx(1), "hairpin");
    assert_eq!(tuple(&out), (GW, 40000, pod(0), 8080));
    assert!(checksums(&out));
    let (v, back) = run_at(&t, 1, &tcp(pod(0), 8080, GW, 40000, false, b"hi"), 2);
    assert_eq!(v, Verdict::Tx(1));
    assert_eq!(tuple(&back), (SELF_SVC, 80, pod(0), 40000));
    assert!(checksums(&back));
}

#[test]
fn a_flow_keeps_its_backend_until_that_backend_leaves() {
    let ct = Arc::new(Conntrack::new(1024));
    let t = with(&services(&both_backends()), &ct);
    let flows: Vec<(u16, Ipv4Addr)> = (50000..50040)
        .map(|sport| {
            (
                sport,
                tuple(&run_at(&t, 1, &tcp(pod(0), sport, WEB, 80, true, b""), 1).1).2,
            )
        })
        .collect();
    // A third backend joins: established flows stay where they are.
    let three = [both_backends(), vec![(pod(0), 8080)]].concat();
    let t3 = with(&services(&three), &ct);
    for (sport, dst) in &flows {
        let (_, out) = run_at(&t3, 1, &tcp(pod(0), *sport, WEB, 80, false, b"x"), 2);
        assert_eq!(tuple(&out).2, *dst, "flow {sport} moved");
    }
    // Pod 3 (10.88.0.3's neighbour, pod(2)) leaves: only its flows move.
    let t1 = with(&services(&[(pod(1), 8080)]), &ct);
    for (sport, dst) in &flows {
        let (_, out) = run_at(&t1, 1, &tcp(pod(0), *sport, WEB, 80, false, b"x"), 3);
        assert_eq!(tuple(&out).2, pod(1), "flow {sport} (was {dst})");
    }
}

#[test]
fn affinity_sends_a_client_to_one_backend_and_a_full_table_drops() {
    let ct = Arc::new(Conntrack::new(1024));
    let t = with(&services(&both_backends()), &ct);
    let first = tuple(&run_at(&t, 1, &tcp(pod(0), 1000, STICKY, 80, true, b""), 1).1).2;
    for sport in 1001..1050 {
        let (_, out) = run_at(&t, 1, &tcp(pod(0), sport, STICKY, 80, true, b""), 2);
        assert_eq!(tuple(&out).2, first);
    }

    // One entry per shard: 64 in all, so at most 32 flows.
    let tiny = Arc::new(Conntrack::new(1));
    let t = with(&services(&both_backends()), &tiny);
    let mut dropped = 0;
    for sport in 2000..2100 {
        if run_at(&t, 1, &tcp(pod(0), sport, WEB, 80, true, b""), 1).0
            == Verdict::Drop(DropReason::CtFull)
        {
            dropped += 1;
        }
    }
    assert!(dropped >= 100 - 32, "{dropped}");
    assert!(tiny.stats().entries <= 64);
    assert!(tiny.stats().insert_failed >= dropped);
}

#[test]
fn the_node_kernel_gets_the_router_mac_for_clusterips_and_its_flows_translated() {
    let ct = Arc::new(Conntrack::new(1024));
    let t = with(&services(&both_backends()), &ct);
    let (v, reply) = run_at(&t, HOST_PORT, &arp_frame(1, KERNEL_MAC, GW, WEB), 1);
    assert_eq!(v, Verdict::Reply);
    assert_eq!(&reply[22..28], &ROUTER, "proxy ARP for the ClusterIP");
    // Not for an address that is no service's.
    let (v, _) = run_at(
        &t,
        HOST_PORT,
        &arp_frame(1, KERNEL_MAC, GW, Ipv4Addr::new(10, 96, 0, 77)),
        1,
    );
    assert_eq!(v, Verdict::Drop(DropReason::ArpNotForUs));
    // The node's own connection, from the gateway address.
    let (v, out) = run_at(&t, HOST_PORT, &tcp(GW, 33000, WEB, 80, true, b""), 1);
    let Verdict::Tx(to) = v else { panic!("{v:?}") };
    let backend = tuple(&out).2;
    assert_eq!(tuple(&out), (GW, 33000, backend, 8080));
    let (v, back) = run_at(&t, to, &tcp(backend, 8080, GW, 33000, false, b""), 2);
    assert_eq!(v, Verdict::Tx(HOST_PORT));
    assert_eq!(tuple(&back), (WEB, 80, GW, 33000));
    assert!(checksums(&back));
}
