//! Deterministic simulation: two smoltcp stacks as pods, joined only by the
//! pipeline, exchange 1 MiB over TCP while the tables are republished.
//!
//! Everything is in memory and single-threaded; time is a fake clock that
//! advances 1 ms per round. Pod A's TCP frames leave with a partial checksum
//! (the pseudo-header sum, as a veth pod with tx offload sends them), so the
//! transfer only completes if the pipeline completes checksums correctly:
//! pod B's smoltcp verifies every checksum it receives.

use std::collections::{BTreeMap, VecDeque};
use std::net::Ipv4Addr;
use std::sync::Arc;

use ferry_api::table::{Endpoint, HostPort, NodeSettings};
use ferry_api::MacAddr;
use ferry_dataplane::core::offload::{self, EgressCaps, Finished};
use ferry_dataplane::core::pipeline::{process_batch, DropReason, Frame, Verdict};
use ferry_dataplane::core::tables::{PortId, TableHandle, Tables};
use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr};

const GW: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 1);
const IP_A: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 2);
const IP_B: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 3);
const IP_C: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 4);
const HOST: PortId = 0;
const PORT_A: PortId = 1;
const PORT_B: PortId = 2;
const PORT_C: PortId = 3;
const CHUNK: usize = 2048;
const BATCH: usize = 64;
const TRANSFER: usize = 1 << 20;
const MAX_ROUNDS: u64 = 200_000;
const PUBLISH_EVERY: u64 = 5;

/// An in-memory pod link: frames the pod sent, frames for the pod.
#[derive(Default)]
struct QueueDevice {
    to_pod: VecDeque<Vec<u8>>,
    from_pod: VecDeque<Vec<u8>>,
}

struct Rx(Vec<u8>);
struct Tx<'a>(&'a mut VecDeque<Vec<u8>>);

impl RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = vec![0u8; len];
        let r = f(&mut frame);
        self.0.push_back(frame);
        r
    }
}

impl Device for QueueDevice {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;

    fn receive(&mut self, _: Instant) -> Option<(Rx, Tx<'_>)> {
        let frame = self.to_pod.pop_front()?;
        Some((Rx(frame), Tx(&mut self.from_pod)))
    }

    fn transmit(&mut self, _: Instant) -> Option<Tx<'_>> {
        Some(Tx(&mut self.from_pod))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = 1514;
        caps
    }
}

fn pod_iface(ip: Ipv4Addr, dev: &mut QueueDevice) -> Interface {
    let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(
        MacAddr::for_pod(ip).0,
    )));
    config.random_seed = u64::from(u32::from(ip));
    let mut iface = Interface::new(config, dev, Instant::from_millis(0));
    iface.update_ip_addrs(|a| {
        a.push(IpCidr::new(IpAddress::Ipv4(ip), 24))
            .expect("one address")
    });
    iface
        .routes_mut()
        .add_default_ipv4_route(GW)
        .expect("default route");
    iface
}

fn endpoint(ip: Ipv4Addr, port: PortId) -> Endpoint {
    Endpoint::veth(format!("pod{port}/eth0"), format!("fy{port}"), ip)
}

fn node() -> NodeSettings {
    NodeSettings {
        gateways: vec![GW.into()],
        router_mac: MacAddr::ROUTER,
        pod_cidrs: vec!["10.88.0.0/24".parse().expect("cidr")],
        host_port: Some(HostPort {
            ifname: "ferry0dp".into(),
            kernel_ifname: "ferry0".into(),
            kernel_mac: MacAddr([2, 0, 0, 0, 0, 1]),
        }),
        mtu: 1500,
        uplink: None,
    }
}

fn port_of(name: &str) -> Option<PortId> {
    if name == "ferry0dp" {
        return Some(HOST);
    }
    name.strip_prefix("fy")?.parse().ok()
}

fn tables(generation: u64, with_c: bool) -> Tables {
    let mut eps = vec![endpoint(IP_A, PORT_A), endpoint(IP_B, PORT_B)];
    if with_c {
        eps.push(endpoint(IP_C, PORT_C));
    }
    Tables::build(generation, &node(), &eps, &[], port_of)
}

/// Overwrite a TCP checksum with the folded pseudo-header sum, as Linux
/// leaves a CHECKSUM_PARTIAL frame. Returns whether the frame was TCP.
fn make_partial(frame: &mut [u8]) -> bool {
    if frame.len() < 34 || frame[12..14] != [0x08, 0x00] || frame[23] != 6 {
        return false;
    }
    let hl = usize::from(frame[14] & 0xf) * 4;
    let tl = usize::from(u16::from_be_bytes([frame[16], frame[17]]));
    let l4_len = (tl - hl) as u32;
    let mut s: u32 = 0;
    for c in frame[26..34].chunks(2) {
        s += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    s += 6 + l4_len;
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    let at = 14 + hl + 16;
    frame[at..at + 2].copy_from_slice(&(s as u16).to_be_bytes());
    true
}

/// A UDP datagram from pod A to `dst` (probing the current tables).
fn probe(dst: Ipv4Addr, seq: u32) -> Vec<u8> {
    let b = etherparse::PacketBuilder::ethernet2(MacAddr::for_pod(IP_A).0, MacAddr::ROUTER.0)
        .ipv4(IP_A.octets(), dst.octets(), 64)
        .udp(9999, 9999);
    let mut v = Vec::new();
    b.write(&mut v, &seq.to_be_bytes()).expect("build probe");
    v
}

fn pattern(i: usize) -> u8 {
    (i.wrapping_mul(31) % 251) as u8
}

#[derive(Default)]
struct Node {
    drops: BTreeMap<&'static str, u64>,
    to_host: u64,
    to_c: u64,
    forwarded: u64,
}

impl Node {
    /// One batch: frames in (with their ingress ports), verdicts applied.
    fn run_batch(
        &mut self,
        handle: &TableHandle,
        now_ns: u64,
        input: Vec<(PortId, Vec<u8>)>,
        a: &mut QueueDevice,
        b: &mut QueueDevice,
    ) -> Vec<Verdict> {
        let tables = handle.load();
        let mut bufs: Vec<Vec<u8>> = input
            .iter()
            .map(|(_, f)| {
                let mut chunk = vec![0u8; CHUNK];
                chunk[..f.len()].copy_from_slice(f);
                chunk
            })
            .collect();
        let mut frames: Vec<Frame<'_>> = bufs
            .iter_mut()
            .zip(&input)
            .map(|(chunk, (port, f))| Frame::new(*port, chunk, f.len()))
            .collect();
        let mut verdicts = vec![Verdict::Drop(DropReason::Malformed); frames.len()];
        process_batch(&tables, now_ns, &mut frames, &mut verdicts);
        for (frame, verdict) in frames.iter_mut().zip(&verdicts) {
            // What leaves towards a pod's veth: finished as the worker does.
            let (csum, off) = (frame.csum, frame.offload);
            let len = frame.len;
            let bytes = &mut frame.room_mut()[..len];
            let finished = offload::finish(bytes, csum, &off, EgressCaps::default());
            assert!(matches!(finished, Ok(Finished::Send(_))), "{finished:?}");
            let bytes = bytes.to_vec();
            let to = match *verdict {
                Verdict::Reply => Verdict::Tx(frame.port),
                v => v,
            };
            match to {
                Verdict::Tx(PORT_A) => a.to_pod.push_back(bytes),
                Verdict::Tx(PORT_B) => b.to_pod.push_back(bytes),
                Verdict::Tx(PORT_C) => self.to_c += 1,
                Verdict::Tx(HOST) => self.to_host += 1,
                Verdict::Tx(other) => panic!("verdict for a port that does not exist: {other}"),
                Verdict::Drop(reason) | Verdict::Denied { reason, .. } => {
                    *self.drops.entry(reason.name()).or_default() += 1
                }
                Verdict::IcmpError { .. } => {
                    panic!("no endpoint here has an MTU to exceed: {verdict:?}")
                }
                Verdict::Reply => unreachable!("mapped to its ingress port above"),
            }
            if matches!(verdict, Verdict::Tx(_)) {
                self.forwarded += 1;
            }
        }
        verdicts
    }
}

#[test]
fn tcp_transfer_through_the_pipeline_with_republishes() {
    let handle = Arc::new(TableHandle::new(tables(1, false)));
    let mut dev_a = QueueDevice::default();
    let mut dev_b = QueueDevice::default();
    let mut iface_a = pod_iface(IP_A, &mut dev_a);
    let mut iface_b = pod_iface(IP_B, &mut dev_b);

    let mut sockets_a = SocketSet::new(vec![]);
    let mut sockets_b = SocketSet::new(vec![]);
    let buf = || tcp::SocketBuffer::new(vec![0u8; 64 * 1024]);
    let client = sockets_a.add(tcp::Socket::new(buf(), buf()));
    let server = sockets_b.add(tcp::Socket::new(buf(), buf()));
    sockets_b
        .get_mut::<tcp::Socket>(server)
        .listen(5201)
        .expect("listen");
    sockets_a
        .get_mut::<tcp::Socket>(client)
        .connect(iface_a.context(), (IpAddress::Ipv4(IP_B), 5201), 49152)
        .expect("connect");

    let mut node = Node::default();
    let mut sent = 0usize;
    let mut received = 0usize;
    let mut partial_frames = 0u64;
    let mut generation = 1u64;
    let mut c_present = false;
    let mut probes = (0u64, 0u64); // (delivered to C, dropped no_endpoint)
    let mut chunk = vec![0u8; 8192];

    let mut round = 0u64;
    let mut next_publish = PUBLISH_EVERY;
    while received < TRANSFER {
        round += 1;
        assert!(
            round < MAX_ROUNDS,
            "transfer stalled at {received} of {TRANSFER} bytes"
        );
        let now = Instant::from_millis(round as i64);
        iface_a.poll(now, &mut dev_a, &mut sockets_a);
        iface_b.poll(now, &mut dev_b, &mut sockets_b);

        {
            let s = sockets_a.get_mut::<tcp::Socket>(client);
            while sent < TRANSFER && s.can_send() {
                let n = (TRANSFER - sent).min(chunk.len());
                for (i, byte) in chunk[..n].iter_mut().enumerate() {
                    *byte = pattern(sent + i);
                }
                let wrote = s.send_slice(&chunk[..n]).expect("send");
                if wrote == 0 {
                    break;
                }
                sent += wrote;
            }
        }
        {
            let s = sockets_b.get_mut::<tcp::Socket>(server);
            while s.can_recv() {
                let n = s.recv_slice(&mut chunk).expect("recv");
                for (i, byte) in chunk[..n].iter().enumerate() {
                    assert_eq!(
                        *byte,
                        pattern(received + i),
                        "byte {} corrupted",
                        received + i
                    );
                }
                received += n;
            }
        }

        // Every PUBLISH_EVERY rounds the control plane publishes a new generation,
        // adding or removing pod C, and a probe checks the new table is the
        // one the next batch sees.
        let mut input: Vec<(PortId, Vec<u8>)> = Vec::new();
        if round == next_publish {
            next_publish += PUBLISH_EVERY;
            generation += 1;
            c_present = !c_present;
            handle.publish(tables(generation, c_present));
            input.push((PORT_A, probe(IP_C, round as u32)));
        }
        let mut probe_pending = !input.is_empty();

        // Move frames through the node in batches of at most BATCH.
        loop {
            while input.len() < BATCH {
                if let Some(mut f) = dev_a.from_pod.pop_front() {
                    if make_partial(&mut f) {
                        partial_frames += 1;
                    }
                    input.push((PORT_A, f));
                } else if let Some(f) = dev_b.from_pod.pop_front() {
                    input.push((PORT_B, f));
                } else {
                    break;
                }
            }
            if input.is_empty() {
                break;
            }
            // The probe, when there is one, is the first frame of the first batch.
            let had_probe = std::mem::take(&mut probe_pending);
            let verdicts = node.run_batch(
                &handle,
                round * 1_000_000,
                std::mem::take(&mut input),
                &mut dev_a,
                &mut dev_b,
            );
            if had_probe {
                match verdicts[0] {
                    Verdict::Tx(PORT_C) => {
                        assert!(c_present, "probe delivered to C after C was removed");
                        probes.0 += 1;
                    }
                    Verdict::Drop(DropReason::NoEndpoint) => {
                        assert!(!c_present, "probe dropped while C is in the tables");
                        probes.1 += 1;
                    }
                    other => panic!("unexpected probe verdict {other:?}"),
                }
            }
            if dev_a.from_pod.is_empty() && dev_b.from_pod.is_empty() {
                break;
            }
        }
    }

    eprintln!("rounds {round}, generations {generation}, probes {probes:?}, partial {partial_frames}, forwarded {}", node.forwarded);
    assert_eq!(received, TRANSFER);
    assert_eq!(handle.generation(), generation);
    assert!(
        generation > 3,
        "the transfer spanned several republishes ({generation})"
    );
    assert!(
        probes.0 > 0 && probes.1 > 0,
        "probes saw both table versions: {probes:?}"
    );
    assert!(
        partial_frames > 700,
        "pod A sent partial checksums ({partial_frames})"
    );
    assert_eq!(node.to_c, probes.0);
    assert_eq!(
        node.to_host, 0,
        "nothing in this test goes to the node kernel"
    );
    let expected_drops: BTreeMap<&'static str, u64> = [("no_endpoint", probes.1)]
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .collect();
    assert_eq!(
        node.drops, expected_drops,
        "only the probes for an absent C are dropped"
    );
    assert!(node.forwarded > 700);
}
