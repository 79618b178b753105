//! Fuzz the pipeline entry: arbitrary bytes as frames on a fixed small
//! table. Input layout: a sequence of records `[port][slack][len][bytes...]`
//! (one byte each for port, slack and len), so one input exercises a batch
//! of frames on different ports with different buffer capacities. Bits 7
//! and 6 of the port byte ask the harness to fix the IPv4 header checksum
//! and the TCP/UDP checksum first, so the fuzzer gets past checksum
//! validation into the forwarding and rewriting code.
//! Properties checked beyond "no panic": one verdict per frame, a Tx only to
//! a port the tables know, and the frame length within its buffer.
#![no_main]

use std::net::Ipv4Addr;
use std::sync::OnceLock;

use ferry_api::table::{Endpoint, HostPort, NextHop, NodeSettings, Route};
use ferry_api::MacAddr;
use ferry_dataplane::core::wire::checksum;
use ferry_dataplane::core::pipeline::{process_batch, process_frame, DropReason, Frame, Verdict};
use ferry_dataplane::core::tables::{PortId, Tables};
use libfuzzer_sys::fuzz_target;

const MAX_FRAMES: usize = 64;

fn tables() -> &'static Tables {
    static TABLES: OnceLock<Tables> = OnceLock::new();
    TABLES.get_or_init(|| {
        let node = NodeSettings {
            gateways: vec![Ipv4Addr::new(10, 88, 0, 1).into()],
            router_mac: MacAddr::ROUTER,
            pod_cidrs: vec!["10.88.0.0/24".parse().expect("cidr")],
            host_port: Some(HostPort {
                ifname: "ferry0dp".into(),
                kernel_ifname: "ferry0".into(),
                kernel_mac: MacAddr([2, 0, 0, 0, 0, 1]),
            }),
            mtu: 1500,
        };
        let endpoints: Vec<Endpoint> = (1..=3u8)
            .map(|i| {
                let ip = Ipv4Addr::new(10, 88, 0, 1 + i);
                Endpoint {
                    id: format!("pod{i}/eth0"),
                    host_ifname: format!("fy{i}"),
                    ips: vec![(ip).into()],
                    mac: MacAddr::for_pod(ip),
                    attachment: Default::default(),
                    netns: String::new(),
                    pod_ifname: String::new(),
                    netns_id: None,
                    // Small enough for one-byte-length frames to exceed.
                    mtu: (i == 3).then_some(100),
                }
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
        ];
        let port_of = |name: &str| -> Option<PortId> {
            if name == "ferry0dp" {
                return Some(0);
            }
            name.strip_prefix("fy")?.parse().ok()
        };
        Tables::build(1, &node, &endpoints, &routes, port_of)
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

fn fix_l4_checksum(f: &mut [u8]) {
    let Some((hl, tl)) = ipv4_bounds(f) else {
        return;
    };
    let at = match f[23] {
        6 if tl - hl >= 20 => 14 + hl + 16,
        17 if tl - hl >= 8 => 14 + hl + 6,
        _ => return,
    };
    let src: [u8; 4] = f[26..30].try_into().expect("4 bytes");
    let dst: [u8; 4] = f[30..34].try_into().expect("4 bytes");
    f[at..at + 2].copy_from_slice(&[0, 0]);
    let l4 = &f[14 + hl..14 + tl];
    let pseudo = checksum::pseudo_header(src, dst, f[23], l4.len() as u16);
    let c = !checksum::fold(checksum::add_bytes(pseudo, l4));
    f[at..at + 2].copy_from_slice(&c.to_be_bytes());
}

fuzz_target!(|data: &[u8]| {
    let t = tables();
    let mut rest = data;
    let mut bufs: Vec<Vec<u8>> = Vec::new();
    let mut specs: Vec<(PortId, usize)> = Vec::new();
    while let [port, slack, len, tail @ ..] = rest {
        if specs.len() == MAX_FRAMES {
            break;
        }
        let n = usize::from(*len).min(tail.len());
        let mut buf = tail[..n].to_vec();
        if port & 0x80 != 0 {
            fix_ip_checksum(&mut buf);
        }
        if port & 0x40 != 0 {
            fix_l4_checksum(&mut buf);
        }
        buf.resize(n + usize::from(*slack), 0);
        bufs.push(buf);
        specs.push((PortId::from(*port % 5), n));
        rest = &tail[n..];
    }
    let mut copies = bufs.clone();
    let mut frames: Vec<Frame<'_>> = bufs
        .iter_mut()
        .zip(&specs)
        .map(|(b, (port, n))| Frame::new(*port, b, *n))
        .collect();
    let mut verdicts = vec![Verdict::Tx(PortId::MAX); frames.len()];
    process_batch(t, 0, &mut frames, &mut verdicts);
    for (frame, verdict) in frames.iter().zip(&verdicts) {
        assert_ne!(
            *verdict,
            Verdict::Tx(PortId::MAX),
            "frame without a verdict"
        );
        match verdict {
            Verdict::Tx(p) => {
                assert!(t.port_role(*p).is_some(), "tx to unknown port {p}");
                assert!(frame.len <= frame.buf.len(), "frame grew past its buffer");
            }
            Verdict::IcmpError { port, reason } => {
                assert_eq!(*port, frame.port, "an ICMP error leaves by the ingress port");
                assert_eq!(*reason, DropReason::FragNeeded);
                assert!(frame.len <= frame.buf.len(), "frame grew past its buffer");
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
    for (i, (port, n)) in specs.iter().enumerate() {
        let mut single = Frame::new(*port, &mut copies[i], *n);
        assert_eq!(
            process_frame(t, &mut single),
            verdicts[i],
            "batch and frame paths disagree"
        );
    }
});
