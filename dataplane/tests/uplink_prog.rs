//! The uplink classifier (`xdp-progs/uplink.c`) run with
//! `BPF_PROG_TEST_RUN` on crafted frames: in VXLAN mode only UDP to the
//! node address and the VXLAN port, not fragmented, with complete headers,
//! is redirected; in direct mode only packets to the local pod CIDRs;
//! everything else (and everything on a queue without a socket, or after
//! the socket closed) passes to the kernel. The port is opened by the
//! dataplane's own backend (maps filled from the spec, worker 0's socket in
//! `xsks`), and the attached program is asked. Root: a throwaway namespace
//! with one veth pair of two queues.

mod uplink_common;

use std::net::Ipv4Addr;
use std::os::fd::BorrowedFd;

use ferry_dataplane::io::afxdp::{AfXdpBackend, XdpAttachment};
use ferry_dataplane::io::backend::NodeQueue;
use ferry_dataplane::io::port::{Opened, PortBackend, PortKind, PortSpec, UplinkSpec};
use ferry_dataplane::io::xdp_run::{self, Ingress, XDP_PASS, XDP_REDIRECT};

use uplink_common::{in_ns, veth_pair, Namespaces};

const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 1);
const PEER: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 2);
const VXLAN: u16 = 4789;
const ETH_IP: [u8; 2] = [0x08, 0x00];
const ETH: usize = 14;

/// One IPv4 packet to build.
#[derive(Clone)]
struct Ip {
    dst: Ipv4Addr,
    proto: u8,
    /// 4-byte words of options (ihl = 5 + this).
    option_words: u8,
    /// The frag_off field (flags and offset), host order.
    frag: u16,
    /// The L4 header and payload.
    l4: Vec<u8>,
}

fn udp(dport: u16, payload: &[u8]) -> Vec<u8> {
    let len = (8 + payload.len()) as u16;
    let mut u = Vec::new();
    u.extend_from_slice(&40000u16.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&len.to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    u
}

/// A VXLAN header (I flag, VNI 1) and an inner Ethernet header.
fn vxlan_payload() -> Vec<u8> {
    let mut p = vec![0x08, 0, 0, 0, 0, 0, 1, 0];
    p.extend_from_slice(&[0x0a, 0x58, 0, 0, 0, 1, 0x0a, 0x58, 0, 0, 0, 2, 0x08, 0x00]);
    p
}

fn tcp(dport: u16) -> Vec<u8> {
    let mut t = vec![0xc3, 0x50];
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
    t
}

fn eth(ty: [u8; 2]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    f.extend_from_slice(&ty);
    f
}

impl Ip {
    fn to(dst: Ipv4Addr, proto: u8, l4: Vec<u8>) -> Ip {
        Ip {
            dst,
            proto,
            option_words: 0,
            frag: 0x4000, // DF
            l4,
        }
    }

    fn vxlan(dst: Ipv4Addr, dport: u16) -> Ip {
        Ip::to(dst, 17, udp(dport, &vxlan_payload()))
    }

    /// The IPv4 header and payload.
    fn packet(&self) -> Vec<u8> {
        let ihl = 5 + self.option_words;
        let total = (usize::from(ihl) * 4 + self.l4.len()) as u16;
        let mut p = vec![0x40 | ihl, 0];
        p.extend_from_slice(&total.to_be_bytes());
        p.extend_from_slice(&[0x12, 0x34]);
        p.extend_from_slice(&self.frag.to_be_bytes());
        p.extend_from_slice(&[64, self.proto, 0, 0]);
        p.extend_from_slice(&PEER.octets());
        p.extend_from_slice(&self.dst.octets());
        // NOP options, then end of list.
        p.extend(std::iter::repeat_n(1u8, usize::from(self.option_words) * 4));
        p.extend_from_slice(&self.l4);
        p
    }

    fn frame(&self) -> Vec<u8> {
        let mut f = eth(ETH_IP);
        f.extend_from_slice(&self.packet());
        f
    }
}

/// `frame` with its IPv4 total length set to `len`.
fn with_tot_len(mut frame: Vec<u8>, len: u16) -> Vec<u8> {
    frame[ETH + 2..ETH + 4].copy_from_slice(&len.to_be_bytes());
    frame
}

/// `frame` with its IPv4 total length set to what the frame holds.
fn said_len(frame: Vec<u8>) -> Vec<u8> {
    let len = (frame.len() - ETH) as u16;
    with_tot_len(frame, len)
}

/// Frames that pass in either mode: not IPv4, or not a whole IPv4 header.
fn never_ferrys(vxlan_to_node: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut arp = eth([0x08, 0x06]);
    arp.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    arp.extend_from_slice(&[0x02, 0, 0, 0, 0, 2]);
    arp.extend_from_slice(&PEER.octets());
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&NODE.octets());
    let mut v6 = eth([0x86, 0xdd]);
    v6.extend_from_slice(&[0x60, 0, 0, 0, 0, 24, 17, 64]);
    v6.extend_from_slice(&[0; 32]);
    v6.extend_from_slice(&udp(VXLAN, &[0; 16]));
    // 802.1Q tag in front of the very VXLAN packet that is redirected untagged.
    let mut vlan = eth([0x81, 0x00]);
    vlan.extend_from_slice(&[0, 7, 0x08, 0x00]);
    vlan.extend_from_slice(&vxlan_to_node[ETH..]);
    let mut qinq = eth([0x88, 0xa8]);
    qinq.extend_from_slice(&vlan[12..]);
    let mut bad_version = vxlan_to_node.to_vec();
    bad_version[ETH] = 0x65;
    let mut short_ihl = vxlan_to_node.to_vec();
    short_ihl[ETH] = 0x44;
    let mut cases = vec![
        ("arp".to_string(), arp),
        ("ipv6 udp to 4789".to_string(), v6),
        ("vlan-tagged vxlan".to_string(), vlan),
        ("qinq-tagged vxlan".to_string(), qinq),
        ("ethernet header only".to_string(), eth(ETH_IP)),
        ("version 6 in an ipv4 frame".to_string(), bad_version),
        ("ihl 4".to_string(), short_ihl),
        (
            "total length beyond the frame".to_string(),
            with_tot_len(
                vxlan_to_node.to_vec(),
                (vxlan_to_node.len() - ETH + 1) as u16,
            ),
        ),
        (
            "total length shorter than the header".to_string(),
            with_tot_len(vxlan_to_node.to_vec(), 19),
        ),
    ];
    // Cut at every length from the Ethernet header to the end of the UDP
    // header: as it is (the total length then lies), and, up to the end of
    // the IP header, with the total length saying the truncated length (the
    // header checks alone). Past the IP header such a packet is whole as far
    // as IP goes: VXLAN mode still wants its UDP header (`vxlan_cases`),
    // direct mode leaves the rest to the pipeline (`direct_cases`).
    for cut in ETH..ETH + 20 + 8 {
        let f = vxlan_to_node[..cut].to_vec();
        cases.push((format!("truncated to {cut}"), f.clone()));
        if (ETH + 4..ETH + 20).contains(&cut) {
            cases.push((
                format!("truncated to {cut}, total length said"),
                said_len(f),
            ));
        }
    }
    cases
}

fn vxlan_cases() -> Vec<(String, Vec<u8>, u32)> {
    let to_node = Ip::vxlan(NODE, VXLAN);
    let mut cases: Vec<(String, Vec<u8>, u32)> = vec![
        ("vxlan to the node".into(), to_node.frame(), XDP_REDIRECT),
        (
            "vxlan without DF".into(),
            Ip {
                frag: 0,
                ..to_node.clone()
            }
            .frame(),
            XDP_REDIRECT,
        ),
        (
            "vxlan with Ethernet padding".into(),
            [to_node.frame(), vec![0; 20]].concat(),
            XDP_REDIRECT,
        ),
        (
            "vxlan, udp header only".into(),
            Ip::to(NODE, 17, udp(VXLAN, &[])).frame(),
            XDP_REDIRECT,
        ),
        (
            "udp to another port".into(),
            Ip::vxlan(NODE, 4790).frame(),
            XDP_PASS,
        ),
        (
            "udp to port 8472".into(),
            Ip::vxlan(NODE, 8472).frame(),
            XDP_PASS,
        ),
        (
            "dns to the node".into(),
            Ip::to(NODE, 17, udp(53, b"q")).frame(),
            XDP_PASS,
        ),
        (
            "vxlan to another address".into(),
            Ip::vxlan(PEER, VXLAN).frame(),
            XDP_PASS,
        ),
        (
            "vxlan to a pod address".into(),
            Ip::vxlan(Ipv4Addr::new(10, 244, 1, 5), VXLAN).frame(),
            XDP_PASS,
        ),
        (
            "ssh to the node".into(),
            Ip::to(NODE, 6, tcp(22)).frame(),
            XDP_PASS,
        ),
        (
            "tcp to 4789 on the node".into(),
            Ip::to(NODE, 6, tcp(VXLAN)).frame(),
            XDP_PASS,
        ),
        (
            "icmp to the node".into(),
            Ip::to(NODE, 1, vec![8, 0, 0, 0, 0, 1, 0, 1]).frame(),
            XDP_PASS,
        ),
        (
            "first fragment (MF)".into(),
            Ip {
                frag: 0x2000,
                ..to_node.clone()
            }
            .frame(),
            XDP_PASS,
        ),
        (
            "later fragment (offset 1)".into(),
            Ip {
                frag: 0x0001,
                ..to_node.clone()
            }
            .frame(),
            XDP_PASS,
        ),
        (
            "last fragment (offset 185)".into(),
            Ip {
                frag: 185,
                ..to_node.clone()
            }
            .frame(),
            XDP_PASS,
        ),
    ];
    for cut in ETH + 20..ETH + 28 {
        cases.push((
            format!(
                "udp header cut to {} bytes, total length said",
                cut - ETH - 20
            ),
            said_len(to_node.frame()[..cut].to_vec()),
            XDP_PASS,
        ));
    }
    for words in [1u8, 3, 10] {
        let opts = Ip {
            option_words: words,
            ..to_node.clone()
        };
        cases.push((
            format!("vxlan with {} bytes of IP options", words * 4),
            opts.frame(),
            XDP_REDIRECT,
        ));
        // The UDP header cut off right after the options.
        let f = opts.frame();
        let cut = ETH + 20 + usize::from(words) * 4 + 4;
        let said = (cut - ETH) as u16;
        cases.push((
            format!("options ({} bytes), then half a UDP header", words * 4),
            with_tot_len(f[..cut].to_vec(), said),
            XDP_PASS,
        ));
    }
    // The maximal header (ihl 15) with the frame ending inside the options.
    let full = Ip {
        option_words: 10,
        ..to_node.clone()
    }
    .frame();
    cases.push((
        "frame ends inside the IP options".into(),
        with_tot_len(full[..ETH + 40].to_vec(), 40),
        XDP_PASS,
    ));
    for (what, frame) in never_ferrys(&to_node.frame()) {
        cases.push((what, frame, XDP_PASS));
    }
    cases
}

/// An IPv6 frame to `dst` whose fixed header says `payload_len` bytes
/// follow (carrying `payload`).
fn ipv6_to(dst: &str, next: u8, payload_len: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = eth([0x86, 0xdd]);
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&payload_len.to_be_bytes());
    f.extend_from_slice(&[next, 64]);
    f.extend_from_slice(
        &"fd00:244:2::5"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets(),
    );
    f.extend_from_slice(&dst.parse::<std::net::Ipv6Addr>().unwrap().octets());
    f.extend_from_slice(payload);
    f
}

/// NodePorts, in either mode: TCP/UDP to the node address at a node port
/// is ferry's; the same ports of the other protocol, or to another
/// address, are not.
fn node_port_cases() -> Vec<(String, Vec<u8>, u32)> {
    vec![
        (
            "tcp to a node port".into(),
            Ip::to(NODE, 6, tcp(30080)).frame(),
            XDP_REDIRECT,
        ),
        (
            "udp to a node port".into(),
            Ip::to(NODE, 17, udp(30053, b"q")).frame(),
            XDP_REDIRECT,
        ),
        (
            "udp to the tcp node port".into(),
            Ip::to(NODE, 17, udp(30080, b"q")).frame(),
            XDP_PASS,
        ),
        (
            "tcp node port to another address".into(),
            Ip::to(Ipv4Addr::new(192, 168, 70, 9), 6, tcp(30080)).frame(),
            XDP_PASS,
        ),
    ]
}

/// Direct mode, IPv6: packets to the node's IPv6 pod CIDR are ferry's;
/// neighbour discovery, other destinations and truncated packets pass.
fn direct6_cases() -> Vec<(String, Vec<u8>, u32)> {
    let seg = tcp(80);
    let len = seg.len() as u16;
    vec![
        (
            "ipv6 tcp to a local pod".into(),
            ipv6_to("fd00:244:1::5", 6, len, &seg),
            XDP_REDIRECT,
        ),
        (
            "ipv6 to another node's pods".into(),
            ipv6_to("fd00:244:2::5", 6, len, &seg),
            XDP_PASS,
        ),
        (
            "neighbour solicitation".into(),
            ipv6_to("ff02::1:ff00:5", 58, 24, &[135; 24]),
            XDP_PASS,
        ),
        (
            "ipv6 payload length beyond the frame".into(),
            ipv6_to("fd00:244:1::5", 6, len + 1, &seg),
            XDP_PASS,
        ),
        (
            "ipv6 header cut short".into(),
            ipv6_to("fd00:244:1::5", 6, len, &seg)[..ETH + 39].to_vec(),
            XDP_PASS,
        ),
    ]
}

fn direct_cases() -> Vec<(String, Vec<u8>, u32)> {
    let pod = Ipv4Addr::new(10, 244, 1, 5);
    let to_pod = Ip::to(pod, 6, tcp(80));
    let mut cases: Vec<(String, Vec<u8>, u32)> = vec![
        ("tcp to a local pod".into(), to_pod.frame(), XDP_REDIRECT),
        (
            "udp to the other local CIDR".into(),
            Ip::to(Ipv4Addr::new(10, 244, 9, 200), 17, udp(53, b"q")).frame(),
            XDP_REDIRECT,
        ),
        (
            "icmp to a local pod".into(),
            Ip::to(
                Ipv4Addr::new(10, 244, 1, 255),
                1,
                vec![8, 0, 0, 0, 0, 1, 0, 1],
            )
            .frame(),
            XDP_REDIRECT,
        ),
        (
            "a fragment to a local pod".into(),
            Ip {
                frag: 0x2000,
                ..to_pod.clone()
            }
            .frame(),
            XDP_REDIRECT,
        ),
        (
            "to a local pod, with IP options".into(),
            Ip {
                option_words: 2,
                ..to_pod.clone()
            }
            .frame(),
            XDP_REDIRECT,
        ),
        (
            "to another node's pod CIDR".into(),
            Ip::to(Ipv4Addr::new(10, 244, 2, 1), 6, tcp(80)).frame(),
            XDP_PASS,
        ),
        (
            "just outside the /24".into(),
            Ip::to(Ipv4Addr::new(10, 244, 0, 255), 6, tcp(80)).frame(),
            XDP_PASS,
        ),
        (
            "vxlan to the node (VXLAN off)".into(),
            Ip::vxlan(NODE, VXLAN).frame(),
            XDP_PASS,
        ),
        (
            "ssh to the node".into(),
            Ip::to(NODE, 6, tcp(22)).frame(),
            XDP_PASS,
        ),
    ];
    for (what, frame) in never_ferrys(&to_pod.frame()) {
        cases.push((what, frame, XDP_PASS));
    }
    cases
}

fn check(prog: BorrowedFd<'_>, ifindex: u32, mode: &str, cases: &[(String, Vec<u8>, u32)]) {
    let mut failed = Vec::new();
    for (what, frame, want) in cases {
        if frame.len() < ETH {
            continue;
        }
        let on = |queue| Some(Ingress { ifindex, queue });
        let r = xdp_run::run(prog, frame, on(0)).expect("test run");
        if r.action != *want {
            failed.push(format!("{mode}: {what}: {} (want {want})", r.action));
        }
        assert_eq!(
            &r.frame, frame,
            "{mode}: {what}: the program changed the frame"
        );
        // Queue 1 has no socket: even ferry's frames pass there.
        let r = xdp_run::run(prog, frame, on(1)).expect("test run");
        if r.action != XDP_PASS {
            failed.push(format!(
                "{mode}: {what} on queue 1: {} (want pass)",
                r.action
            ));
        }
    }
    assert!(
        failed.is_empty(),
        "{} wrong verdicts:\n{}",
        failed.len(),
        failed.join("\n")
    );
}

fn spec(vxlan_port: Option<u16>, local_cidrs: &[&str]) -> UplinkSpec {
    UplinkSpec {
        address: NODE,
        vxlan_port,
        local_cidrs: local_cidrs.iter().map(|c| c.parse().unwrap()).collect(),
        node_ports: vec![(6, 30080), (17, 30053)],
        set_channels: false,
    }
}

/// Open `fupa` as the uplink with one worker, as the dataplane does:
/// worker 0's socket on queue 0, none on queue 1.
fn open(backend: &mut AfXdpBackend, uplink: UplinkSpec) -> Opened<XdpAttachment, NodeQueue> {
    let spec = PortSpec {
        name: "fupa".into(),
        kind: PortKind::Uplink(uplink),
    };
    let (attachment, queues) = backend.open(&spec, 1).expect("open the uplink");
    assert_eq!(attachment.mode, "native-copy", "a veth has no zero-copy");
    assert!(matches!(queues.as_slice(), [Some(_)]));
    (attachment, queues)
}

#[test]
fn only_ferrys_traffic_is_redirected() {
    let ns = Namespaces::new(&["prog"]);
    let name = ns.name(0).to_string();
    veth_pair(&name, "fupa", &name, "fupb");

    in_ns(&name, || {
        // SAFETY: a NUL-terminated literal.
        let ifindex = unsafe { libc::if_nametoindex(c"fupa".as_ptr()) };
        assert_ne!(ifindex, 0, "fupa exists");
        let mut backend = AfXdpBackend::default();

        let (attachment, queues) = open(&mut backend, spec(Some(VXLAN), &[]));
        let prog = attachment.program_fd().expect("the program");
        check(prog, ifindex, "vxlan", &vxlan_cases());
        // In VXLAN mode IPv6 pods' traffic comes inside VXLAN: bare IPv6
        // to them is the kernel's.
        let bare6: Vec<_> = direct6_cases()
            .into_iter()
            .map(|(what, f, _)| (what, f, XDP_PASS))
            .collect();
        check(prog, ifindex, "vxlan, bare ipv6", &bare6);
        check(prog, ifindex, "vxlan, node ports", &node_port_cases());
        drop((queues, attachment));

        let cidrs = ["10.244.1.0/24", "10.244.9.128/25", "fd00:244:1::/64"];
        let (attachment, queues) = open(&mut backend, spec(None, &cidrs));
        let prog = attachment.program_fd().expect("the program");
        check(prog, ifindex, "direct", &direct_cases());
        check(prog, ifindex, "direct ipv6", &direct6_cases());
        check(prog, ifindex, "direct, node ports", &node_port_cases());

        // The socket closed (a dataplane that died): ferry's frames pass.
        drop(queues);
        for (what, frame, _) in direct_cases().iter().filter(|c| c.1.len() >= ETH) {
            let r = xdp_run::run(prog, frame, Some(Ingress { ifindex, queue: 0 })).unwrap();
            assert_eq!(r.action, XDP_PASS, "{what} after the socket closed");
        }
    });
}
