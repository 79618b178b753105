//! The pipeline between nodes: VXLAN encapsulation towards a peer's pod
//! CIDR and decapsulation from the uplink, direct routing, and every way
//! a frame from the uplink is refused. Two fixture nodes, A (this file's
//! `fixtures` node, pods in 10.88.0.0/24) and B (pods in 10.89.0.0/24),
//! each with the other as its peer.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ferry_api::table::{NextHop, Overlay, Route, Uplink};
use ferry_api::MacAddr;

use super::fixtures::*;
use super::{process_frame, DropReason, Frame, Offload, Verdict};
use crate::core::tables::{Links, PortId, Tables};
use crate::core::wire::vxlan::{Outer, OUTER_LEN};

const UPLINK: PortId = 9;
const NODE_A: Ipv4Addr = Ipv4Addr::new(192, 168, 70, 1);
const NODE_B: Ipv4Addr = Ipv4Addr::new(192, 168, 70, 2);
const NODE_C: Ipv4Addr = Ipv4Addr::new(192, 168, 70, 3);
const MAC_A: MacAddr = MacAddr([2, 0xaa, 0, 0, 0, 1]);
const MAC_B: MacAddr = MacAddr([2, 0xbb, 0, 0, 0, 2]);
const MAC_C: MacAddr = MacAddr([2, 0xcc, 0, 0, 0, 3]);
const VNI: u32 = 7;
const VXLAN: Overlay = Overlay::Vxlan {
    vni: VNI,
    port: 4789,
};
/// A pod of node B, and its gateway.
const POD_B: Ipv4Addr = Ipv4Addr::new(10, 89, 0, 5);
const GW_B: Ipv4Addr = Ipv4Addr::new(10, 89, 0, 1);
/// A pod of node C.
const POD_C: Ipv4Addr = Ipv4Addr::new(10, 90, 0, 5);
const HEADROOM: usize = 256;

fn ttl(frame: &[u8]) -> u8 {
    frame[14 + 8]
}

fn peer_routes(peers: &[(&str, Ipv4Addr)]) -> Vec<Route> {
    peers
        .iter()
        .map(|(cidr, node)| Route {
            prefix: cidr.parse().unwrap(),
            next_hop: NextHop::Node((*node).into()),
        })
        .collect()
}

fn links(own: MacAddr, peers: &[(Ipv4Addr, MacAddr)]) -> Links {
    Links {
        uplink: Some((own, 1500)),
        uplink_frame_mtu: 1778,
        neighbours: peers.iter().copied().collect::<BTreeMap<_, _>>(),
    }
}

fn uplink_port(name: &str) -> Option<PortId> {
    if name == "up0" {
        return Some(UPLINK);
    }
    port_of(name)
}

/// Node A: the fixture node with an uplink, B and C as peers.
fn node_a(overlay: Overlay, links: &Links) -> Tables {
    let mut node = node(true);
    node.uplink = Some(Uplink {
        ifname: "up0".into(),
        address: NODE_A,
        overlay,
        set_channels: false,
    });
    let mut routes = routes();
    routes.extend(peer_routes(&[
        ("10.89.0.0/24", NODE_B),
        ("10.90.0.0/24", NODE_C),
    ]));
    Tables::build_with(1, &node, &endpoints(), &routes, uplink_port, links)
}

fn a(overlay: Overlay) -> Tables {
    node_a(overlay, &links(MAC_A, &[(NODE_B, MAC_B), (NODE_C, MAC_C)]))
}

/// Node B: pod POD_B on port 1, A and C as peers.
fn b(overlay: Overlay) -> Tables {
    let mut node = node(true);
    node.gateways = vec![GW_B.into()];
    node.pod_cidrs = vec!["10.89.0.0/24".parse().unwrap()];
    node.uplink = Some(Uplink {
        ifname: "up0".into(),
        address: NODE_B,
        overlay,
        set_channels: false,
    });
    let eps = vec![ferry_api::table::Endpoint {
        mtu: Some(1450),
        ..ferry_api::table::Endpoint::veth("b1/eth0", "fy1", POD_B)
    }];
    let routes = peer_routes(&[("10.88.0.0/24", NODE_A), ("10.90.0.0/24", NODE_C)]);
    let links = links(MAC_B, &[(NODE_A, MAC_A), (NODE_C, MAC_C)]);
    Tables::build_with(1, &node, &eps, &routes, uplink_port, &links)
}

/// Run `frame` from `port` with the I/O layer's headroom in front; the
/// verdict, the frame's bytes afterwards (outer headers included) and its
/// outer header length. A forwarded frame is finished as for a port
/// without offloads (its inner frame).
fn run_at(tables: &Tables, port: PortId, frame: &[u8]) -> (Verdict, Vec<u8>, usize) {
    let mut buf = vec![0u8; HEADROOM + CHUNK.max(frame.len())];
    buf[HEADROOM..HEADROOM + frame.len()].copy_from_slice(frame);
    let mut f = Frame::in_buffer(port, &mut buf, HEADROOM, frame.len(), Offload::NONE);
    let verdict = process_frame(tables, &mut f);
    if matches!(verdict, Verdict::Tx(_)) {
        let outer = f.outer;
        let (csum, off, len) = (f.csum, f.offload, f.len);
        let inner = &mut f.room_mut()[outer..len];
        let done = crate::core::offload::finish(
            inner,
            csum,
            &off,
            crate::core::offload::EgressCaps::default(),
        );
        assert!(done.is_ok(), "{done:?}");
    }
    (verdict, f.bytes().to_vec(), f.outer)
}

/// A pod of A sends to a pod of B; what A puts on the uplink.
fn a_to_b(overlay: Overlay, ttl: u8) -> Vec<u8> {
    let frame = tcp_frame(PODS[0].1, POD_B, ttl, b"across nodes");
    let (verdict, out, _) = run_at(&a(overlay), PODS[0].0, &frame);
    assert_eq!(verdict, Verdict::Tx(UPLINK));
    out
}

#[test]
fn a_pod_to_a_remote_pod_is_encapsulated_to_the_peer() {
    let frame = tcp_frame(PODS[0].1, POD_B, 64, b"across nodes");
    let (verdict, out, outer) = run_at(&a(VXLAN), PODS[0].0, &frame);
    assert_eq!(verdict, Verdict::Tx(UPLINK));
    assert_eq!(outer, OUTER_LEN);
    assert_eq!(out.len(), frame.len() + OUTER_LEN);
    assert_eq!(&out[0..6], &MAC_B.0, "to the peer's MAC");
    assert_eq!(&out[6..12], &MAC_A.0, "from the uplink's MAC");
    let o = Outer::parse(&out, NODE_B, 4789, VNI).expect("valid VXLAN to B");
    assert_eq!(o.src, NODE_A);
    let inner = &out[o.inner_at..];
    assert_eq!(ttl(inner), 63, "routed once on A");
    assert!(ip_checksum_ok(inner) && l4_checksum_ok(inner));
    assert_eq!(&inner[inner.len() - 12..], b"across nodes");
}

#[test]
fn the_peer_decapsulates_and_delivers_to_its_pod() {
    let wire = a_to_b(VXLAN, 64);
    let (verdict, out, outer) = run_at(&b(VXLAN), UPLINK, &wire);
    assert_eq!(verdict, Verdict::Tx(1));
    assert_eq!(outer, 0);
    assert_eq!(&out[0..6], &mac_of(POD_B), "to B's pod");
    assert_eq!(&out[6..12], &ROUTER);
    assert_eq!(ttl(&out), 63, "not routed again on B");
    assert!(ip_checksum_ok(&out) && l4_checksum_ok(&out));
    assert_eq!(&out[out.len() - 12..], b"across nodes");
}

#[test]
fn a_remote_pod_to_the_gateway_goes_to_the_node_kernel() {
    let mut frame = tcp_frame(PODS[0].1, GW_B, 64, b"probe");
    let (verdict, wire, _) = run_at(&a(VXLAN), PODS[0].0, &frame);
    assert_eq!(verdict, Verdict::Tx(UPLINK));
    let (verdict, out, _) = run_at(&b(VXLAN), UPLINK, &wire);
    assert_eq!(verdict, Verdict::Tx(HOST_PORT));
    assert_eq!(&out[0..6], &KERNEL_MAC);
    // An echo request to B's gateway from a peer is the kernel's to answer
    // (a reply made here would leave unencapsulated).
    frame = echo_request(PODS[0].1, GW_B, 64, b"ping");
    let (_, wire, _) = run_at(&a(VXLAN), PODS[0].0, &frame);
    assert_eq!(run_at(&b(VXLAN), UPLINK, &wire).0, Verdict::Tx(HOST_PORT));
}

#[test]
fn every_refusal_from_the_uplink_is_counted_under_its_reason() {
    let good = a_to_b(VXLAN, 64);
    let b = b(VXLAN);
    let with = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut w = good.clone();
        f(&mut w);
        run_at(&b, UPLINK, &w).0
    };
    let drop = Verdict::Drop;
    assert_eq!(
        with(&|w| w[OUTER_LEN - 2] ^= 1),
        drop(DropReason::VxlanWrongVni)
    );
    assert_eq!(
        with(&|w| w[37] ^= 1),
        drop(DropReason::VxlanNotForUs),
        "UDP port"
    );
    assert_eq!(
        with(&|w| w[OUTER_LEN - 8] = 0),
        drop(DropReason::VxlanMalformed)
    );
    assert_eq!(
        with(&|w| w[24] ^= 1),
        drop(DropReason::VxlanMalformed),
        "IP checksum"
    );
    for cut in [0, 13, 33, 41, 49, OUTER_LEN + 13] {
        assert_eq!(
            with(&|w| w.truncate(cut)),
            drop(DropReason::VxlanMalformed),
            "cut {cut}"
        );
    }

    // From C (a peer), claiming a source of A's CIDR.
    let mut from_c = good.clone();
    from_c[26..30].copy_from_slice(&NODE_C.octets());
    fix_ip_checksum(&mut from_c[..OUTER_LEN]);
    assert_eq!(run_at(&b, UPLINK, &from_c).0, drop(DropReason::UnknownPeer));

    // An inner source outside every peer's CIDR.
    let spoofed = tcp_frame(PODS[0].1, POD_B, 64, b"x");
    let mut spoofed_wire = encapsulate_as(NODE_A, &spoofed);
    let at = OUTER_LEN + 14 + 12;
    spoofed_wire[at..at + 4].copy_from_slice(&OUTSIDE.octets());
    fix_ip_checksum(&mut spoofed_wire[OUTER_LEN..]);
    fix_l4_checksum(&mut spoofed_wire[OUTER_LEN..], false);
    assert_eq!(
        run_at(&b, UPLINK, &spoofed_wire).0,
        drop(DropReason::UnknownPeer)
    );

    // For C's pods, or anywhere else: B carries nothing onward.
    for dst in [POD_C, OUTSIDE, NODE_B] {
        let inner = tcp_frame(PODS[0].1, dst, 64, b"transit");
        let w = encapsulate_as(NODE_A, &inner);
        assert_eq!(
            run_at(&b, UPLINK, &w).0,
            drop(DropReason::NotLocal),
            "{dst}"
        );
    }
    // An inner ARP is nobody's.
    let arp = arp_frame(1, mac_of(PODS[0].1), PODS[0].1, POD_B);
    let w = encapsulate_as(NODE_A, &arp);
    assert_eq!(run_at(&b, UPLINK, &w).0, drop(DropReason::ArpNotForUs));
}

/// `inner` as node `from` would send it to B (outer headers of a real
/// encapsulation by A, source rewritten).
fn encapsulate_as(from: Ipv4Addr, inner: &[u8]) -> Vec<u8> {
    let mut w = a_to_b(VXLAN, 64)[..OUTER_LEN].to_vec();
    w[26..30].copy_from_slice(&from.octets());
    w.extend_from_slice(inner);
    crate::core::wire::vxlan::fix_outer(&mut w[..OUTER_LEN], inner);
    w
}

#[test]
fn an_unresolved_peer_or_a_missing_uplink_drops_with_its_reason() {
    let frame = tcp_frame(PODS[0].1, POD_B, 64, b"x");
    let unresolved = node_a(VXLAN, &links(MAC_A, &[]));
    assert_eq!(
        run_at(&unresolved, PODS[0].0, &frame).0,
        Verdict::Drop(DropReason::NeighbourUnresolved)
    );
    let no_link = node_a(VXLAN, &Links::default());
    assert_eq!(
        run_at(&no_link, PODS[0].0, &frame).0,
        Verdict::Drop(DropReason::NoUplink)
    );
    assert!(no_link.uplink().is_none() && unresolved.uplink().is_some());
}

#[test]
fn too_big_for_the_overlay_finds_the_path_mtu() {
    let t = a(VXLAN);
    assert_eq!(t.uplink().unwrap().mtu, 1450);
    // 1450 bytes of IP fit, 1451 do not (DF set by etherparse).
    let fits = tcp_frame(PODS[0].1, POD_B, 64, &vec![0u8; 1450 - 40]);
    assert_eq!(run_at(&t, PODS[0].0, &fits).0, Verdict::Tx(UPLINK));
    let big = tcp_frame(PODS[0].1, POD_B, 64, &vec![0u8; 1451 - 40]);
    let (verdict, out, _) = run_at(&t, PODS[0].0, &big);
    assert_eq!(
        verdict,
        Verdict::IcmpError {
            port: PODS[0].0,
            reason: DropReason::FragNeeded
        }
    );
    let icmp = &out[14 + 20..];
    assert_eq!((icmp[0], icmp[1]), (3, 4));
    assert_eq!(u16::from_be_bytes([icmp[6], icmp[7]]), 1450);
    // Direct routing costs nothing: the uplink's MTU.
    assert_eq!(a(Overlay::Direct).uplink().unwrap().mtu, 1500);
}

#[test]
fn direct_routing_sends_the_frame_itself_to_the_peer_mac() {
    let frame = tcp_frame(PODS[0].1, POD_B, 64, b"host-gw");
    let (verdict, out, outer) = run_at(&a(Overlay::Direct), PODS[0].0, &frame);
    assert_eq!((verdict, outer), (Verdict::Tx(UPLINK), 0));
    assert_eq!(out.len(), frame.len());
    assert_eq!(&out[0..6], &MAC_B.0);
    assert_eq!(&out[6..12], &MAC_A.0);
    assert_eq!(ttl(&out), 63);

    let b = b(Overlay::Direct);
    let (verdict, delivered, _) = run_at(&b, UPLINK, &out);
    assert_eq!(verdict, Verdict::Tx(1));
    assert_eq!(&delivered[0..6], &mac_of(POD_B));
    // Only a peer's pods are taken from the uplink, and only for here.
    let stranger = tcp_frame(OUTSIDE, POD_B, 64, b"x");
    assert_eq!(
        run_at(&b, UPLINK, &stranger).0,
        Verdict::Drop(DropReason::UnknownPeer)
    );
    let transit = tcp_frame(PODS[0].1, POD_C, 64, b"x");
    assert_eq!(
        run_at(&b, UPLINK, &transit).0,
        Verdict::Drop(DropReason::NotLocal)
    );
}

#[test]
fn the_node_kernel_reaches_remote_pods_through_the_host_port() {
    let t = a(VXLAN);
    // The kernel asks for the remote pod's MAC on the host port.
    let arp = arp_frame(1, KERNEL_MAC, GW, POD_B);
    assert_eq!(run_at(&t, HOST_PORT, &arp).0, Verdict::Reply);
    // Its packet is encapsulated with its TTL as the kernel left it.
    let frame = tcp_frame(GW, POD_B, 64, b"probe");
    let (verdict, out, _) = run_at(&t, HOST_PORT, &frame);
    assert_eq!(verdict, Verdict::Tx(UPLINK));
    let o = Outer::parse(&out, NODE_B, 4789, VNI).unwrap();
    assert_eq!(ttl(&out[o.inner_at..]), 64);
}

#[test]
fn the_ttl_expires_before_the_tunnel() {
    let frame = tcp_frame(PODS[0].1, POD_B, 1, b"x");
    let (verdict, out, outer) = run_at(&a(VXLAN), PODS[0].0, &frame);
    assert_eq!((verdict, outer), (Verdict::Reply, 0));
    assert_eq!(out[14 + 20], 11, "time exceeded");
}

/// NodePort: a client outside the cluster reaches a service at node A's
/// uplink address. A local backend gets the request from A's gateway (so
/// replies come back through A) and A's reply leaves straight out of the
/// uplink to the client's MAC from the node address; a remote backend
/// (on B) gets it encapsulated.
#[test]
fn a_node_port_reaches_local_and_remote_backends_and_replies_leave_by_the_uplink() {
    use crate::core::conntrack::Conntrack;
    use crate::core::service::ServiceTable;
    use crate::core::tables::Services;
    use ferry_api::table::{Backend, L4Proto, ServicePort};
    use std::sync::Arc;

    let client = Ipv4Addr::new(192, 168, 70, 200);
    let client_mac = [2, 0xee, 0, 0, 0, 200];
    let sp = |id: &str, node_port, backend: Ipv4Addr| ServicePort {
        id: id.into(),
        vip: Ipv4Addr::new(10, 96, 0, 10).into(),
        port: node_port - 30000,
        protocol: L4Proto::Tcp,
        backends: vec![Backend {
            ip: backend.into(),
            port: 8080,
        }],
        affinity_timeout_s: None,
        seed: 1,
        node_port: Some(node_port),
        node_local: None,
    };
    let services = [
        sp("default/local:80/TCP", 30080, PODS[1].1),
        sp("default/remote:81/TCP", 30081, POD_B),
    ];
    let syn_from = |sport: u16, dport: u16| {
        let mut f = Vec::new();
        etherparse::PacketBuilder::ethernet2(client_mac, MAC_A.0)
            .ipv4(client.octets(), NODE_A.octets(), 64)
            .tcp(sport, dport, 1, 64240)
            .syn()
            .write(&mut f, b"")
            .unwrap();
        f
    };
    let from_client = |dport: u16| syn_from(50000, dport);
    // The backend's SYN-ACK to `to` (the gateway, or the client itself).
    let backend_reply = |to: Ipv4Addr| {
        let mut reply = Vec::new();
        etherparse::PacketBuilder::ethernet2(mac_of(PODS[1].1), ROUTER)
            .ipv4(PODS[1].1.octets(), to.octets(), 64)
            .tcp(8080, 50000, 9, 64240)
            .syn()
            .ack(2)
            .write(&mut reply, b"")
            .unwrap();
        reply
    };
    for overlay in [VXLAN, Overlay::Direct] {
        let t = a(overlay).with_services(Some(Services {
            table: Arc::new(ServiceTable::build(&services)),
            conntrack: Arc::new(Conntrack::new(1024)),
        }));
        let (v, out, _) = run_at(&t, UPLINK, &from_client(30080));
        assert_eq!(v, Verdict::Tx(PODS[1].0), "{overlay:?}");
        let (_, _, _, src, dst) = ip_fields(&out);
        assert_eq!((Ipv4Addr::from(src), Ipv4Addr::from(dst)), (GW, PODS[1].1));
        assert!(ip_checksum_ok(&out) && l4_checksum_ok(&out));

        // The backend answers the gateway: out of the uplink to the client.
        let (v, back, outer) = run_at(&t, PODS[1].0, &backend_reply(GW));
        assert_eq!((v, outer), (Verdict::Tx(UPLINK), 0), "{overlay:?}");
        assert_eq!((&back[..6], &back[6..12]), (&client_mac[..], &MAC_A.0[..]));
        let (_, _, _, src, dst) = ip_fields(&back);
        assert_eq!((Ipv4Addr::from(src), Ipv4Addr::from(dst)), (NODE_A, client));
        assert_eq!(u16::from_be_bytes([back[34], back[35]]), 30080);
        assert!(ip_checksum_ok(&back) && l4_checksum_ok(&back));

        // A remote backend: to node B.
        let (v, out, outer) = run_at(&t, UPLINK, &from_client(30081));
        assert_eq!(v, Verdict::Tx(UPLINK), "{overlay:?}");
        let inner = &out[outer..];
        let (_, _, _, src, dst) = ip_fields(inner);
        assert_eq!((Ipv4Addr::from(src), Ipv4Addr::from(dst)), (GW, POD_B));

        // Not a node port: refused (the classifier never passes it, but
        // the pipeline does not trust that).
        let (v, _, _) = run_at(&t, UPLINK, &from_client(22));
        assert!(matches!(v, Verdict::Drop(_)), "{v:?}");
    }

    // externalTrafficPolicy: Local. Backends here and on B: only the one
    // here is chosen, the client's address is kept (and the reply still
    // leaves by the uplink, from the node port); with no backend here the
    // node port drops (`no_local_endpoint`).
    let local = |id: &str, node_port, here: Vec<Backend>| ServicePort {
        backends: vec![
            Backend {
                ip: PODS[1].1.into(),
                port: 8080,
            },
            Backend {
                ip: POD_B.into(),
                port: 8080,
            },
        ],
        node_local: Some(here),
        ..sp(id, node_port, PODS[1].1)
    };
    let here = vec![Backend {
        ip: PODS[1].1.into(),
        port: 8080,
    }];
    let services = [
        local("default/kept:80/TCP", 30080, here),
        local("default/none:81/TCP", 30081, vec![]),
    ];
    let t = a(VXLAN).with_services(Some(Services {
        table: Arc::new(ServiceTable::build(&services)),
        conntrack: Arc::new(Conntrack::new(1024)),
    }));
    for sport in 50000..50016u16 {
        let (v, out, _) = run_at(&t, UPLINK, &syn_from(sport, 30080));
        assert_eq!(v, Verdict::Tx(PODS[1].0), "flow from {sport}");
        let (_, _, _, src, dst) = ip_fields(&out);
        assert_eq!(
            (Ipv4Addr::from(src), Ipv4Addr::from(dst)),
            (client, PODS[1].1)
        );
        assert!(ip_checksum_ok(&out) && l4_checksum_ok(&out));
    }
    let (v, back, outer) = run_at(&t, PODS[1].0, &backend_reply(client));
    assert_eq!((v, outer), (Verdict::Tx(UPLINK), 0));
    assert_eq!(&back[..6], &client_mac[..]);
    let (_, _, _, src, dst) = ip_fields(&back);
    assert_eq!((Ipv4Addr::from(src), Ipv4Addr::from(dst)), (NODE_A, client));
    assert_eq!(u16::from_be_bytes([back[34], back[35]]), 30080);
    assert!(ip_checksum_ok(&back) && l4_checksum_ok(&back));

    let (v, _, _) = run_at(&t, UPLINK, &from_client(30081));
    assert_eq!(v, Verdict::Drop(DropReason::NoLocalEndpoint));
}
