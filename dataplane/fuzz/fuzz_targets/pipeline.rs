//! Fuzz the pipeline entry and the egress finishing after it: arbitrary
//! bytes as frames on a fixed small table. Input layout: a sequence of
//! records `[port][slack][len]([virtio header: 10 bytes])[bytes...]` (one
//! byte each for port, slack and len), so one input exercises a batch of
//! frames on different ports with different buffer capacities. Bits 7 and
//! 6 of the port byte ask the harness to fix the IPv4 header checksum and
//! the TCP/UDP checksum first, so the fuzzer gets past the header checksum
//! check into the forwarding and rewriting code, and the frames forwarded
//! can be held to valid L4 checksums (forwarded ones are not verified: a
//! wrong one leaves wrong); bit 5 says a virtio-net header
//! follows (the frame came from a tap), bit 4 puts its checksum offsets
//! where the frame's L4 checksum is, so the offload checks pass more often.
//! Every frame sits behind [`FRAME_HEADROOM`] bytes of headroom. Port 4 is
//! the uplink (VXLAN, a resolved and an unresolved peer), so frames there
//! are decapsulated and frames to the peers' CIDRs encapsulated.
//! Service ports (ClusterIPs in 10.96.0.0/16 and fd00:96::/64) send
//! frames through translation and the shared connection table.
//! Pods 1 and 3 are dual-stack, pod 2 IPv6-only; bit 6 fixes TCP, UDP and
//! ICMPv6 checksums of IPv6 frames too.
//! Properties checked beyond "no panic": one verdict per frame, a Tx only to
//! a port the tables know, the frame length within its buffer; then every
//! forwarded frame is finished for a tap (its header must pass
//! `offload::check`) and for a veth (checksum completed or the GSO frame
//! cut into 2 KiB segments), and what the veth gets has valid checksums
//! unless the sender vouched for them (`DATA_VALID`).
#![no_main]

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, OnceLock};

use ferry_api::table::{
    Backend, Endpoint, EndpointPolicy, HostPort, L4Proto, NextHop, NodeSettings, Overlay, Route, ServicePort,
    Uplink, PolicyPeer, PolicyRule, PortRange,
};
use ferry_api::MacAddr;
use ferry_dataplane::core::conntrack::Conntrack;
use ferry_dataplane::core::offload::{self, EgressCaps, Finished, Offload, VNET_HDR_LEN};
use ferry_dataplane::core::pipeline::{
    process_batch, process_frame, CsumState, DropReason, Frame, Verdict, FRAME_HEADROOM,
};
use ferry_dataplane::core::service::ServiceTable;
use ferry_dataplane::core::tables::{Links, Policies, PortId, Services, Tables};
use ferry_dataplane::core::wire::vxlan::{Outer, OUTER_LEN};
use ferry_dataplane::core::wire::{checksum, ipv6};
use libfuzzer_sys::fuzz_target;

const MAX_FRAMES: usize = 64;
/// The uplink's port.
const UPLINK_PORT: PortId = 4;
/// The node's address on the uplink (port 4, VXLAN on 4789, VNI 1).
const UPLINK_ADDRESS: Ipv4Addr = Ipv4Addr::new(192, 168, 70, 1);

fn tables() -> &'static Tables {
    static TABLES: OnceLock<Tables> = OnceLock::new();
    TABLES.get_or_init(|| {
        let node = NodeSettings {
            gateways: vec![
                Ipv4Addr::new(10, 88, 0, 1).into(),
                "fd00:88::1".parse::<Ipv6Addr>().expect("gateway").into(),
            ],
            router_mac: MacAddr::ROUTER,
            pod_cidrs: vec![
                "10.88.0.0/24".parse().expect("cidr"),
                "fd00:88::/64".parse().expect("cidr"),
            ],
            host_port: Some(HostPort {
                ifname: "ferry0dp".into(),
                kernel_ifname: "ferry0".into(),
                kernel_mac: MacAddr([2, 0, 0, 0, 0, 1]),
            }),
            mtu: 1500,
            uplink: Some(Uplink {
                ifname: "up0".into(),
                address: UPLINK_ADDRESS,
                overlay: Overlay::Vxlan { vni: 1, port: 4789 },
                set_channels: false,
            }),
        };
        let endpoints: Vec<Endpoint> = (1..=3u8)
            .map(|i| {
                let ip = Ipv4Addr::new(10, 88, 0, 1 + i);
                let ip6 = Ipv6Addr::new(0xfd00, 0x88, 0, 0, 0, 0, 0, 1 + u16::from(i));
                let mut ep = Endpoint {
                    // Small enough for one-byte-length frames to exceed.
                    mtu: (i == 3).then_some(100),
                    ..Endpoint::veth(format!("pod{i}/eth0"), format!("fy{i}"), ip)
                };
                // Pod 2 is IPv6-only; the others dual-stack.
                if i == 2 {
                    ep.ips.clear();
                }
                ep.ips.push(ip6.into());
                ep
            })
            .collect();
        let routes = vec![
            Route {
                prefix: "192.168.100.0/24".parse().expect("prefix"),
                next_hop: NextHop::Blackhole,
            },
            Route {
                prefix: "172.20.0.0/16".parse().expect("prefix"),
                next_hop: NextHop::Endpoint("pod3/eth0".into()),
            },
            Route {
                prefix: "10.88.0.128/25".parse().expect("prefix"),
                next_hop: NextHop::Host,
            },
            // A peer node with a resolved MAC, and one without.
            Route {
                prefix: "10.89.0.0/24".parse().expect("prefix"),
                next_hop: NextHop::Node(Ipv4Addr::new(192, 168, 70, 2).into()),
            },
            Route {
                prefix: "10.90.0.0/24".parse().expect("prefix"),
                next_hop: NextHop::Node(Ipv4Addr::new(192, 168, 70, 3).into()),
            },
            // The resolved peer's IPv6 pods, through the IPv4 overlay.
            Route {
                prefix: "fd00:89::/64".parse().expect("prefix"),
                next_hop: NextHop::Node(Ipv4Addr::new(192, 168, 70, 2).into()),
            },
        ];
        let port_of = |name: &str| -> Option<PortId> {
            match name {
                "ferry0dp" => Some(0),
                "up0" => Some(4),
                _ => name.strip_prefix("fy")?.parse().ok(),
            }
        };
        let links = Links {
            uplink: Some((MacAddr([2, 0, 0, 0, 0, 0x10]), 1500)),
            uplink_frame_mtu: 1778,
            neighbours: [(
                Ipv4Addr::new(192, 168, 70, 2),
                MacAddr([2, 0, 0, 0, 0, 0x20]),
            )]
            .into_iter()
            .collect(),
        };
        // Service ports: two backends (one a dual-stack pod), one without
        // backends (refused), UDP, an IPv6 ClusterIP; a small connection
        // table, so that filling it is reached too.
        let port = |vip: &str, port: u16, protocol, backends: &[(&str, u16)]| ServicePort {
            id: format!("fuzz/{vip}:{port}/{protocol:?}"),
            vip: vip.parse().expect("vip"),
            port,
            protocol,
            backends: backends
                .iter()
                .map(|(ip, port)| Backend {
                    ip: ip.parse().expect("backend"),
                    port: *port,
                })
                .collect(),
            affinity_timeout_s: (port == 443).then_some(60),
            seed: 1,
            node_port: (port == 80).then_some(30080),
            node_local: None,
        };
        let services = [
            port(
                "10.96.0.10",
                80,
                L4Proto::Tcp,
                &[("10.88.0.2", 8080), ("10.88.0.4", 8080)],
            ),
            port(
                "10.96.0.10",
                443,
                L4Proto::Tcp,
                &[("10.88.0.2", 8443), ("10.88.0.4", 8443)],
            ),
            port("10.96.0.53", 53, L4Proto::Udp, &[("10.88.0.4", 53)]),
            port("10.96.0.99", 80, L4Proto::Tcp, &[]),
            port("fd00:96::10", 80, L4Proto::Tcp, &[("fd00:88::2", 8080)]),
        ];
        // Network policy: pod 3 (10.88.0.4, port 3) takes TCP 8080 from
        // pod 1 and 10.89.0.0/24 less one address, sends only to the IPv6
        // pods; pod 1 takes nothing in. One connection table for both.
        let conntrack = Arc::new(Conntrack::new(256));
        let rule = |peers: Vec<PolicyPeer>, ports: Vec<PortRange>| PolicyRule {
            peers: Some(peers),
            ports,
        };
        let peer = |cidr: &str, except: &[&str]| PolicyPeer {
            cidr: cidr.parse().expect("cidr"),
            except: except.iter().map(|e| e.parse().expect("cidr")).collect(),
        };
        let pod3 = EndpointPolicy {
            endpoint: "pod3/eth0".into(),
            ingress: Some(vec![rule(
                vec![peer("10.88.0.2/32", &[]), peer("10.89.0.0/24", &["10.89.0.9/32"])],
                vec![PortRange {
                    protocol: 6,
                    first: 8080,
                    last: 8080,
                }],
            )]),
            egress: Some(vec![rule(vec![peer("fd00::/16", &[])], vec![])]),
        };
        let pod1 = EndpointPolicy {
            endpoint: "pod1/eth0".into(),
            ingress: Some(vec![]),
            egress: None,
        };
        let policy = Policies::new(
            [(3, Arc::new(pod3)), (1, Arc::new(pod1))],
            vec![Ipv4Addr::new(10, 88, 0, 1).into(), UPLINK_ADDRESS.into()],
            Arc::clone(&conntrack),
        );
        Tables::build_with(1, &node, &endpoints, &routes, port_of, &links)
            .with_services(Some(Services {
                table: Arc::new(ServiceTable::build(&services)),
                conntrack,
            }))
            .with_policy(Some(policy))
    })
}

/// IPv4 header bounds of an Ethernet frame, if it claims to be IPv4.
fn ipv4_bounds(f: &[u8]) -> Option<(usize, usize)> {
    if f.len() < 34 || f[12..14] != [0x08, 0x00] {
        return None;
    }
    let hl = usize::from(f[14] & 0x0f) * 4;
    let tl = usize::from(u16::from_be_bytes([f[16], f[17]]));
    (hl >= 20 && hl <= tl && 14 + tl <= f.len()).then_some((hl, tl))
}

fn fix_ip_checksum(f: &mut [u8]) {
    if let Some((hl, _)) = ipv4_bounds(f) {
        f[24..26].copy_from_slice(&[0, 0]);
        let c = checksum::checksum(&f[14..14 + hl]);
        f[24..26].copy_from_slice(&c.to_be_bytes());
    }
}

/// The upper layer of an unfragmented IPv4 frame or an IPv6 frame without
/// extension headers: (offset, end, protocol).
fn l4_bounds(f: &[u8]) -> Option<(usize, usize, u8)> {
    if let Some((hl, tl)) = ipv4_bounds(f) {
        let unfragmented = u16::from_be_bytes([f[20], f[21]]) & 0x3fff == 0;
        return unfragmented.then_some((14 + hl, 14 + tl, f[23]));
    }
    if f.len() < 54 || f[12..14] != [0x86, 0xdd] || f[14] >> 4 != 6 {
        return None;
    }
    let end = 54 + usize::from(u16::from_be_bytes([f[18], f[19]]));
    (end <= f.len()).then_some((54, end, f[20]))
}

/// The pseudo-header sum of the frame's family for an upper layer of
/// `len` bytes.
fn pseudo(f: &[u8], proto: u8, len: usize) -> u64 {
    if f[12..14] == [0x86, 0xdd] {
        let addr = |at: usize| Ipv6Addr::from(<[u8; 16]>::try_from(&f[at..at + 16]).expect("16"));
        return ipv6::pseudo_header(&addr(22), &addr(38), proto, len as u32);
    }
    let src: [u8; 4] = f[26..30].try_into().expect("4 bytes");
    let dst: [u8; 4] = f[30..34].try_into().expect("4 bytes");
    checksum::pseudo_header(src, dst, proto, len as u16)
}

/// Where the checksum field of a TCP, UDP or (IPv6) ICMPv6 upper layer
/// of `len` bytes is.
fn checksum_field(proto: u8, v6: bool, len: usize) -> Option<usize> {
    match proto {
        6 if len >= 20 => Some(16),
        17 if len >= 8 => Some(6),
        58 if v6 && len >= 4 => Some(2),
        _ => None,
    }
}

/// Whether a tap frame's partial checksum is the one its kernel would
/// have left: the field at the L4 header holds the folded pseudo-header
/// sum. ferry trusts a tap's `NEEDS_CSUM` (completing it is the egress
/// side's job), so only then must what a veth gets verify; a lying pod
/// gets a checksum its receiver drops, as with Linux.
fn honest_partial(f: &[u8], off: &Offload) -> bool {
    if !off.needs_csum() {
        return true;
    }
    let Some((at, end, proto)) = l4_bounds(f) else {
        return false;
    };
    let len = match proto {
        17 if end - at >= 8 => usize::from(u16::from_be_bytes([f[at + 4], f[at + 5]])),
        _ => end - at,
    };
    let field = at + usize::from(off.csum_offset);
    if usize::from(off.csum_start) != at || field + 2 > end {
        return false;
    }
    let want = checksum::fold(pseudo(f, proto, len));
    let got = u16::from_be_bytes([f[field], f[field + 1]]);
    got == want || (got == 0 && want == 0xffff)
}

/// Whether the TCP/UDP checksum of `f` (the inner frame of a VXLAN frame
/// from the uplink) verifies or is partial: what the pipeline must hand on
/// valid. It verifies no forwarded L4 checksum (a router's rule: the
/// receiver does), so a wrong one leaves wrong, and is not checked.
fn came_valid(f: &[u8], port: PortId) -> bool {
    let f = match f.get(OUTER_LEN..) {
        Some(inner) if port == UPLINK_PORT => inner,
        _ => f,
    };
    let (at, len, proto) = match l4_segment(f) {
        Ok(seg) => seg,
        Err(ok) => return ok,
    };
    let v6 = f[12..14] == [0x86, 0xdd];
    let Some(field) = checksum_field(proto, v6, len) else {
        return true;
    };
    let sum = pseudo(f, proto, len);
    let got = u16::from_be_bytes([f[at + field], f[at + field + 1]]);
    let partial = checksum::fold(sum);
    checksum::fold(checksum::add_bytes(sum, &f[at..at + len])) == 0xffff
        || got == partial
        || (got == 0 && partial == 0xffff)
}

/// Put the folded pseudo-header sum in the L4 checksum field (what a
/// tap's kernel leaves with `NEEDS_CSUM`).
fn make_partial(f: &mut [u8]) {
    let Some((at, end, proto)) = l4_bounds(f) else {
        return;
    };
    let v6 = f[12..14] == [0x86, 0xdd];
    let Some(field) = checksum_field(proto, v6, end - at).filter(|_| proto != 58) else {
        return;
    };
    let p = checksum::fold(pseudo(f, proto, end - at));
    f[at + field..at + field + 2].copy_from_slice(&p.to_be_bytes());
}

fn fix_l4_checksum(f: &mut [u8]) {
    let Some((at, end, proto)) = l4_bounds(f) else {
        return;
    };
    let v6 = f[12..14] == [0x86, 0xdd];
    let Some(field) = checksum_field(proto, v6, end - at) else {
        return;
    };
    let field = at + field;
    f[field..field + 2].copy_from_slice(&[0, 0]);
    let sum = pseudo(f, proto, end - at);
    let c = !checksum::fold(checksum::add_bytes(sum, &f[at..end]));
    f[field..field + 2].copy_from_slice(&c.to_be_bytes());
}

/// The TCP/UDP segment of an unfragmented frame whose checksum can be
/// summed: where it starts, its length (UDP's own), its protocol.
/// `Err(passes)` when there is nothing to sum: anything else passes, and
/// UDP without a checksum passes over IPv4 only.
fn l4_segment(f: &[u8]) -> Result<(usize, usize, u8), bool> {
    let Some((at, end, proto)) = l4_bounds(f) else {
        return Err(true);
    };
    let l4 = &f[at..end];
    match proto {
        6 if l4.len() >= 20 => Ok((at, l4.len(), proto)),
        17 if l4.len() >= 8 => {
            if l4[6..8] == [0, 0] {
                return Err(f[12..14] != [0x86, 0xdd]);
            }
            let len = usize::from(u16::from_be_bytes([l4[4], l4[5]])).min(l4.len());
            Ok((at, len, proto))
        }
        _ => Err(true),
    }
}

/// Whether an unfragmented TCP/UDP frame's checksums verify, IPv4 or IPv6
/// (true for anything else: nothing to check).
fn checksums_ok(f: &[u8]) -> bool {
    if let Some((hl, _)) = ipv4_bounds(f) {
        if checksum::fold(checksum::add_bytes(0, &f[14..14 + hl])) != 0xffff {
            return false;
        }
    }
    match l4_segment(f) {
        Ok((at, len, proto)) => {
            checksum::fold(checksum::add_bytes(pseudo(f, proto, len), &f[at..at + len])) == 0xffff
        }
        Err(passes) => passes,
    }
}

/// Finish a forwarded frame as the worker would, towards a tap and
/// towards a veth, and check what each gets.
fn check_egress(frame: &Frame<'_>, ingress_offload: &Offload, honest: bool) {
    let all = frame.bytes();
    // An encapsulated frame: valid outer headers to the peer, and the
    // inner frame is what the egress side finishes.
    if frame.outer > 0 {
        assert_eq!(frame.outer, OUTER_LEN);
        let o = Outer::parse(all, Ipv4Addr::new(192, 168, 70, 2), 4789, 1);
        assert!(o.is_ok_and(|o| o.src == UPLINK_ADDRESS && o.inner_at == OUTER_LEN));
    }
    let bytes = &all[frame.outer..];
    let tap = EgressCaps {
        offload: true,
        tx_csum: false,
    };
    let mut to_tap = bytes.to_vec();
    match offload::finish(&mut to_tap, frame.csum, &frame.offload, tap) {
        Ok(Finished::Send(h)) => {
            assert_eq!(
                offload::check(&to_tap, &h),
                Ok(()),
                "a tap gets a header that fits"
            );
            assert_eq!(to_tap, bytes, "a tap gets the frame unchanged");
        }
        other => panic!("a tap takes every frame as it is: {other:?}"),
    }
    let trusted =
        ingress_offload.flags & offload::F_DATA_VALID != 0 && !ingress_offload.needs_csum();
    let mut to_veth = bytes.to_vec();
    match offload::finish(
        &mut to_veth,
        frame.csum,
        &frame.offload,
        EgressCaps::default(),
    ) {
        Ok(Finished::Send(h)) => {
            assert_eq!(h, Offload::NONE, "a veth takes no header");
            if !trusted && honest && frame.csum != CsumState::Unknown {
                assert!(
                    checksums_ok(&to_veth),
                    "a veth gets valid checksums: {:?} {:?} {:02x?}",
                    frame.csum,
                    ingress_offload,
                    to_veth
                );
            }
        }
        Ok(Finished::Segment(plan)) => {
            let mut seg = vec![0u8; 2048];
            for i in 0..plan.count {
                if let Some(n) = offload::write_tcp_segment(&to_veth, &plan, i, &mut seg) {
                    assert!(checksums_ok(&seg[..n]), "segment {i} has valid checksums");
                }
            }
        }
        // Refused at egress (a GSO type the segmenter cannot cut): counted,
        // not sent.
        Err(_) => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let t = tables();
    let mut rest = data;
    let mut bufs: Vec<Vec<u8>> = Vec::new();
    let mut specs: Vec<(PortId, usize, Offload, bool)> = Vec::new();
    while let [port, slack, len, tail @ ..] = rest {
        if specs.len() == MAX_FRAMES {
            break;
        }
        let mut tail = tail;
        let mut off = Offload::NONE;
        if port & 0x20 != 0 {
            let Some((hdr, after)) = tail.split_first_chunk::<VNET_HDR_LEN>() else {
                break;
            };
            off = Offload::from_bytes(hdr);
            tail = after;
        }
        let n = usize::from(*len).min(tail.len());
        let mut frame = tail[..n].to_vec();
        if port & 0x80 != 0 {
            fix_ip_checksum(&mut frame);
        }
        if port & 0x40 != 0 {
            fix_l4_checksum(&mut frame);
            if off.needs_csum() {
                make_partial(&mut frame);
            }
        }
        if port & 0x10 != 0 {
            if let Some((hl, _)) = ipv4_bounds(&frame) {
                off.flags &= offload::F_NEEDS_CSUM | offload::F_DATA_VALID;
                off.csum_start = (14 + hl) as u16;
                off.csum_offset = if frame[23] == 17 { 6 } else { 16 };
            }
        }
        let mut buf = vec![0u8; FRAME_HEADROOM];
        buf.extend_from_slice(&frame);
        buf.resize(FRAME_HEADROOM + n + usize::from(*slack), 0);
        bufs.push(buf);
        let ingress = PortId::from((*port & 0x0f) % 5);
        let honest = honest_partial(&frame, &off) && came_valid(&frame, ingress);
        specs.push((ingress, n, off, honest));
        rest = &tail[n..];
    }
    let mut copies = bufs.clone();
    let mut frames: Vec<Frame<'_>> = bufs
        .iter_mut()
        .zip(&specs)
        .map(|(b, (port, n, off, _))| Frame::in_buffer(*port, b, FRAME_HEADROOM, *n, *off))
        .collect();
    let mut verdicts = vec![Verdict::Tx(PortId::MAX); frames.len()];
    process_batch(t, 0, &mut frames, &mut verdicts);
    for ((frame, verdict), (_, _, off, honest)) in frames.iter().zip(&verdicts).zip(&specs) {
        assert_ne!(
            *verdict,
            Verdict::Tx(PortId::MAX),
            "frame without a verdict"
        );
        match verdict {
            Verdict::Tx(p) => {
                assert!(t.port_role(*p).is_some(), "tx to unknown port {p}");
                assert!(
                    frame.headroom + frame.len <= frame.buf.len(),
                    "frame grew past its buffer"
                );
                check_egress(frame, off, *honest);
            }
            Verdict::Reply => {
                assert!(
                    frame.headroom + frame.len <= frame.buf.len(),
                    "frame grew past its buffer"
                );
                assert_eq!(
                    (frame.csum, frame.offload),
                    (CsumState::Complete, Offload::NONE)
                );
            }
            Verdict::IcmpError { port, reason } => {
                assert_eq!(
                    *port, frame.port,
                    "an ICMP error leaves by the ingress port"
                );
                assert!(matches!(
                    reason,
                    DropReason::FragNeeded
                        | DropReason::PacketTooBig
                        | DropReason::ServiceNoEndpoints
                ));
                assert!(
                    frame.headroom + frame.len <= frame.buf.len(),
                    "frame grew past its buffer"
                );
            }
            Verdict::Denied { port, reason } => {
                assert!(t.port_role(*port).is_some(), "denied on unknown port {port}");
                assert!(matches!(
                    reason,
                    DropReason::PolicyDeniedIngress | DropReason::PolicyDeniedEgress
                ));
            }
            Verdict::Drop(r) => assert!(
                !matches!(
                    r,
                    DropReason::TxRingFull
                        | DropReason::PortGone
                        | DropReason::NoTxQueue
                        | DropReason::NoEgressFrame
                        | DropReason::TapShortRead
                ),
                "the pipeline returned an I/O-layer reason {r:?}"
            ),
        }
    }
    // The batch path agrees with the single-frame reference.
    for (i, (port, n, off, _)) in specs.iter().enumerate() {
        let mut single = Frame::in_buffer(*port, &mut copies[i], FRAME_HEADROOM, *n, *off);
        assert_eq!(
            process_frame(t, &mut single),
            verdicts[i],
            "batch and frame paths disagree"
        );
    }
});
