//! The worker's pass does not allocate: one worker on in-memory ports
//! ([`SimNode`]) is warmed up, then stepped through passes of mixed
//! traffic (forwarded, replied, dropped, a tap's GSO frame segmented for a
//! plain port, a plain frame copied to the tap) while a counting global
//! allocator watches this thread. The in-memory wires are told to count
//! what is sent instead of copying it out, and frames are injected between
//! passes, so only the worker's own work (and the frame census after each
//! pass) is measured.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::Ipv4Addr;

use ferry_api::table::{Endpoint, NodeSettings};
use ferry_api::MacAddr;
use ferry_dataplane::core::offload::{Offload, F_NEEDS_CSUM, GSO_TCPV4};
use ferry_dataplane::core::tables::Tables;
use ferry_dataplane::sim::SimNode;

/// Counts allocations (and reallocations) made by the current thread.
struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn count() {
    // `try_with`: the slot may be gone while the thread is torn down.
    let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
}

// SAFETY: every call is forwarded unchanged to the system allocator; the
// counter is a const-initialised thread-local Cell, which allocates
// nothing itself.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: `ptr` was allocated by `System` with `layout` (every
        // allocation here is), as the caller guarantees for us.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

const GW: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 1);
const TAP: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 2);
const PLAIN: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 3);
const NOBODY: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 77);

fn endpoint(port: &str, ip: Ipv4Addr) -> Endpoint {
    Endpoint {
        mtu: Some(9000),
        ..Endpoint::veth(format!("{port}/eth0"), port, ip)
    }
}

fn tables() -> Tables {
    let node = NodeSettings {
        gateways: vec![GW.into()],
        router_mac: MacAddr::ROUTER,
        pod_cidrs: vec!["10.88.0.0/24".parse().unwrap()],
        host_port: None,
        mtu: 1500,
        uplink: None,
    };
    let eps = [endpoint("ft1", TAP), endpoint("fy2", PLAIN)];
    Tables::build(1, &node, &eps, &[], |name| match name {
        "ft1" => Some(1),
        "fy2" => Some(2),
        _ => None,
    })
}

fn eth(from: Ipv4Addr) -> etherparse::PacketBuilderStep<etherparse::Ethernet2Header> {
    etherparse::PacketBuilder::ethernet2(MacAddr::for_pod(from).0, MacAddr::ROUTER.0)
}

fn echo(from: Ipv4Addr, to: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::new();
    eth(from)
        .ipv4(from.octets(), to.octets(), 64)
        .icmpv4_echo_request(7, 1)
        .write(&mut f, b"no-alloc")
        .unwrap();
    f
}

fn arp_for_gateway(from: Ipv4Addr) -> Vec<u8> {
    let mac = MacAddr::for_pod(from).0;
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&mac);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&from.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&GW.octets());
    f
}

/// A TCP GSO frame as a tap pod's stack hands it over: `segments` × 1000
/// bytes, the TCP checksum left partial (the pseudo-header sum).
fn gso_frame(from: Ipv4Addr, to: Ipv4Addr, segments: usize) -> (Offload, Vec<u8>) {
    let payload = vec![0x5a; 1000 * segments];
    let mut f = Vec::new();
    eth(from)
        .ipv4(from.octets(), to.octets(), 64)
        .tcp(40000, 5201, 1, 64240)
        .ack(1)
        .write(&mut f, &payload)
        .unwrap();
    let tcp_len = (f.len() - 34) as u32;
    let mut sum: u32 = 6 + tcp_len;
    for ip in [from, to] {
        let o = ip.octets();
        sum += u32::from(u16::from_be_bytes([o[0], o[1]]));
        sum += u32::from(u16::from_be_bytes([o[2], o[3]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    f[50..52].copy_from_slice(&(sum as u16).to_be_bytes());
    let offload = Offload {
        flags: F_NEEDS_CSUM,
        gso_type: GSO_TCPV4,
        hdr_len: 54,
        gso_size: 1000,
        csum_start: 34,
        csum_offset: 16,
    };
    (offload, f)
}

#[test]
fn a_warm_worker_steps_mixed_traffic_without_allocating() {
    let mut sim = SimNode::new(256, 64);
    let tap = sim.add_port("ft1", 1, true);
    let plain = sim.add_port("fy2", 2, false);
    sim.publish(tables());
    for w in [&tap, &plain] {
        w.discard_sent(true);
    }
    let gso = gso_frame(TAP, PLAIN, 3);
    let to_tap = echo(PLAIN, TAP);
    let reply = arp_for_gateway(PLAIN);
    let dropped = echo(PLAIN, NOBODY);
    // Per pass: 1 GSO frame → 3 segments, 2 echoes to the tap, 1 ARP
    // reply, 1 drop: 6 frames out.
    let inject = || {
        tap.inject_offloaded(0, gso.0, gso.1.clone());
        for _ in 0..2 {
            plain.inject(0, to_tap.clone());
        }
        plain.inject(0, reply.clone());
        plain.inject(0, dropped.clone());
    };

    // Warm-up: ports added, vectors at their working sizes, thread-locals
    // of the table snapshot made.
    for _ in 0..50 {
        inject();
        sim.step();
    }
    sim.settle(16);
    let sent_before = tap.sent_count() + plain.sent_count();

    const PASSES: u64 = 500;
    let mut during = 0;
    for pass in 0..PASSES {
        inject();
        let before = allocations();
        sim.step();
        let n = allocations() - before;
        assert!(n == 0 || during > 0, "pass {pass} allocated {n} time(s)");
        during += n;
    }
    sim.settle(16);
    assert_eq!(during, 0, "allocations during {PASSES} passes");
    assert_eq!(
        tap.sent_count() + plain.sent_count() - sent_before,
        6 * PASSES,
        "every pass forwarded, segmented and replied"
    );
    let drops = sim.port_stats("fy2").drops;
    assert_eq!(drops.get("no_endpoint"), Some(&(50 + PASSES)), "{drops:?}");
    assert_eq!(drops.len(), 1, "{drops:?}");
    assert!(sim.port_stats("ft1").drops.is_empty());
}
