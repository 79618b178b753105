//! The worker, one pass at a time ([`SimNode`]): what each pass sends,
//! drops and counts, and that after every pass each queue's frames add up
//! to its pool (checked by `SimNode::step`).

use std::net::Ipv4Addr;
use std::sync::Arc;

use crate::core::pipeline::fixtures::{
    arp_frame, echo_request, gso_tcp4, mac_of, make_partial, tables, tcp_frame, GW, NO_POD, PODS,
};
use crate::engine::worker::{PassOutcome, FILL_TARGET_MIN};
use crate::sim::{MemWire, SimNode};

const A: Ipv4Addr = PODS[0].1;
const B: Ipv4Addr = PODS[1].1;

/// The fixture node: host port, pods 1 and 2 (pod 1 tap-like if `tap`),
/// `frames` frames per queue, tables published.
fn node(frames: usize, tap: bool) -> (SimNode, Arc<MemWire>, Arc<MemWire>) {
    let mut sim = SimNode::new(frames, 64);
    sim.add_port("ferry0dp", 0, false);
    let a = sim.add_port("fy1", PODS[0].0, tap);
    let b = sim.add_port("fy2", PODS[1].0, false);
    sim.publish(tables());
    assert_eq!(sim.step(), PassOutcome::Idle, "ports added, nothing sent");
    (sim, a, b)
}

fn drops(sim: &SimNode, port: &str, reason: &str) -> Option<u64> {
    sim.port_stats(port).drops.get(reason).copied()
}

#[test]
fn one_pass_forwards_replies_and_drops() {
    let (mut sim, a, b) = node(256, false);
    a.inject(0, echo_request(A, B, 64, b"to b"));
    a.inject(0, arp_frame(1, mac_of(A), A, GW));
    a.inject(0, tcp_frame(A, NO_POD, 64, b"nobody"));
    assert_eq!(sim.step(), PassOutcome::Busy);
    let to_b = b.take_sent();
    assert_eq!(to_b.len(), 1, "forwarded in the same pass");
    assert_eq!(to_b[0][14 + 8], 63, "TTL decremented");
    let replies = a.take_sent();
    assert_eq!(replies.len(), 1, "the ARP reply, on the ingress port");
    assert_eq!(&replies[0][20..22], &[0, 2]);
    assert_eq!(drops(&sim, "fy1", "no_endpoint"), Some(1));
    assert_eq!(sim.port_stats("fy1").rx_frames, 3);
    assert_eq!(sim.worker_stats().tx_frames, 2);
    // The transmitted frames complete on the next passes; nothing else moves.
    sim.settle(4);
    assert_eq!(sim.step(), PassOutcome::Idle);
}

/// A GSO frame from a tap towards a plain port leaves as its segments, in
/// the pass that received it; the tap's frame goes back to its pool and
/// each segment takes one of the egress pool's.
#[test]
fn a_gso_frame_becomes_its_segments_in_one_pass() {
    let (mut sim, a, b) = node(256, true);
    let payload: Vec<u8> = (0..3000u32).map(|i| (i * 7) as u8).collect();
    let mut f = tcp_frame(A, B, 64, &payload);
    make_partial(&mut f);
    a.inject_offloaded(0, gso_tcp4(1000), f);
    assert_eq!(sim.step(), PassOutcome::Busy);
    let segs = b.take_sent();
    assert_eq!(segs.len(), 3);
    assert!(segs.iter().all(|s| s.len() == 54 + 1000));
    assert_eq!(sim.port_stats("fy2").tx_frames, 3);
    sim.settle(4);
}

/// An egress kernel that stops completing: the TX ring fills
/// (`tx_ring_full`), then, with a small pool, there is no frame left to
/// copy into (`no_egress_frame`); once it completes again every frame
/// comes home.
#[test]
fn a_stalled_egress_loses_frames_by_reason_and_gets_all_back() {
    // 1024 frames: 512 free on fy2, more than its 256-slot TX ring.
    let (mut sim, a, b) = node(1024, false);
    b.stall_tx(true);
    for round in 0..5u16 {
        for i in 0..60u16 {
            a.inject(0, echo_request(A, B, 64, &(round * 100 + i).to_be_bytes()));
        }
        sim.step();
    }
    assert_eq!(drops(&sim, "fy1", "tx_ring_full"), Some(300 - 256));
    assert_eq!(drops(&sim, "fy1", "no_egress_frame"), None);
    assert_eq!(b.take_sent().len(), 256);
    b.stall_tx(false);
    sim.settle(8);
    let fy2 = sim.worker().ring_frames_of(2).unwrap();
    assert_eq!(fy2.tx_or_completion, 0, "{fy2:?}");

    // 64 frames: 32 free on fy2, fewer than the ring holds.
    let (mut sim, a, b) = node(64, false);
    b.stall_tx(true);
    for burst in 0..2u16 {
        for i in 0..[32, 8][burst as usize] {
            a.inject(0, echo_request(A, B, 64, &(burst * 100 + i).to_be_bytes()));
        }
        sim.step();
    }
    assert_eq!(drops(&sim, "fy1", "no_egress_frame"), Some(8));
    assert_eq!(drops(&sim, "fy1", "tx_ring_full"), None);
    assert_eq!(sim.worker_stats().drops.get("no_egress_frame"), Some(&8));
    assert_eq!(a.rx_dropped.load(std::sync::atomic::Ordering::Relaxed), 0);
}

/// Removing a port whose TX ring holds frames drops its queue and pool
/// whole (the worker checks that census before letting go); traffic still
/// routed to it is `port_gone`, and the other queues stay whole.
#[test]
fn removing_a_port_with_frames_in_flight() {
    let (mut sim, a, b) = node(256, false);
    b.stall_tx(true);
    for i in 0..10u16 {
        a.inject(0, echo_request(A, B, 64, &i.to_be_bytes()));
    }
    sim.step();
    let fy2 = sim.worker().ring_frames_of(2).unwrap();
    assert_eq!(fy2.tx_or_completion, 10);
    sim.remove_port("fy2");
    a.inject(0, echo_request(A, B, 64, b"late"));
    sim.step();
    assert_eq!(sim.worker().queue_count(), 2, "fy2's queue is gone");
    assert_eq!(sim.worker().census().count(), 2, "and its pool");
    assert_eq!(drops(&sim, "fy1", "port_gone"), Some(1));
}

/// [`node`] with every port on one pool of 512 frames (as AF_XDP sockets
/// on a worker's UMEM).
fn shared_node() -> (SimNode, Arc<MemWire>, Arc<MemWire>) {
    let mut sim = SimNode::shared(512, 64);
    sim.add_port("ferry0dp", 0, false);
    let a = sim.add_port("fy1", PODS[0].0, false);
    let b = sim.add_port("fy2", PODS[1].0, false);
    sim.publish(tables());
    sim.step();
    (sim, a, b)
}

/// Pods on one shared pool (as AF_XDP sockets on a worker's UMEM):
/// forwarded frames come from and go back to the one free list; a port
/// removed with frames in its rings hands them back once closed.
#[test]
fn a_removed_port_of_a_shared_pool_hands_its_frames_back() {
    let (mut sim, a, b) = shared_node();
    let pools: Vec<_> = sim.worker().census().collect();
    assert_eq!(pools.len(), 1, "one pool: {pools:?}");
    assert_eq!(pools[0].queues, 3);
    assert_eq!(pools[0].rings.fill_or_rx, 3 * FILL_TARGET_MIN);
    b.stall_tx(true);
    for i in 0..10u16 {
        a.inject(0, echo_request(A, B, 64, &i.to_be_bytes()));
    }
    sim.step();
    assert_eq!(b.take_sent().len(), 10);
    assert_eq!(sim.worker().ring_frames_of(2).unwrap().tx_or_completion, 10);
    sim.remove_port("fy2");
    sim.step();
    // Its fill ring's frames and the 10 in its TX ring: closing, then back
    // (the queue is closed on a thread of its own).
    let held = FILL_TARGET_MIN + 10;
    let closing = sim.worker().census().next().unwrap().closing;
    assert!(closing == held || closing == 0, "{closing}");
    let pool = closed(&mut sim);
    assert_eq!(pool.queues, 2);
    assert_eq!(pool.free + pool.rings.fill_or_rx, 512, "{pool:?}");
    // Traffic goes on on the rest.
    a.inject(0, echo_request(A, GW, 64, b"gw"));
    sim.step();
    assert_eq!(a.take_sent().len(), 1);
}

/// The shared pool's census once the queues being closed (on threads of
/// their own) have handed their frames back; waits a bounded 1 s.
fn closed(sim: &mut SimNode) -> crate::engine::worker::FrameCensus {
    for _ in 0..200 {
        let pool = sim.worker().census().next().unwrap();
        if pool.closing == 0 {
            return pool;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
        sim.step();
    }
    panic!("frames still closing: {:?}", sim.worker().census().next());
}

/// A device deleted under its queue (a pod's namespace gone before its
/// DEL) is found at the next kernel-counter read: the worker closes the
/// queue itself, so the frames its rings held come home without waiting
/// for the port's removal, and later traffic to it is lost as `port_gone`.
#[test]
fn a_queue_whose_device_went_is_closed_and_its_frames_come_home() {
    let (mut sim, a, b) = shared_node();
    b.unplug();
    for i in 0..10u16 {
        a.inject(0, echo_request(A, B, 64, &i.to_be_bytes()));
    }
    sim.step();
    assert!(b.take_sent().is_empty(), "nothing leaves a deleted device");
    assert_eq!(sim.worker().ring_frames_of(2).unwrap().tx_or_completion, 10);
    assert!(sim.port_stats("fy2").attached);
    sim.worker().read_kernel_stats();
    assert!(!sim.port_stats("fy2").attached, "the stats say it went");
    assert_eq!(sim.worker().ring_frames_of(2), None, "its queue is closed");
    let pool = closed(&mut sim);
    assert_eq!(pool.queues, 2);
    assert_eq!(pool.free + pool.rings.fill_or_rx, 512, "{pool:?}");
    a.inject(0, echo_request(A, B, 64, b"late"));
    sim.step();
    assert_eq!(drops(&sim, "fy1", "port_gone"), Some(1));
    // ferryd's removal, when it comes, finds nothing left to do.
    sim.remove_port("fy2");
    sim.step();
    a.inject(0, echo_request(A, GW, 64, b"gw"));
    sim.step();
    assert_eq!(a.take_sent().len(), 1, "the other pods go on");
}

/// A queue of a shared pool starts with a small fill budget, doubles it
/// while its ring runs nearly dry, and halves it back for each second it
/// received nothing; a pool of its own keeps half the pool.
#[test]
fn fill_budgets_on_a_shared_pool_follow_the_traffic() {
    let mut sim = SimNode::shared(4096, 64);
    let a = sim.add_port("fy1", PODS[0].0, false);
    sim.add_port("fy2", PODS[1].0, false);
    sim.publish(tables());
    sim.step();
    assert_eq!(sim.worker().fill_target_of(1), Some(FILL_TARGET_MIN));
    for round in 0..6u16 {
        for i in 0..64u16 {
            a.inject(0, echo_request(A, B, 64, &(round * 100 + i).to_be_bytes()));
        }
        sim.step();
    }
    // The in-memory "kernel" takes fill frames only as the worker reads
    // (64 a pass), so the budget stops at twice that; a real one empties
    // the ring as fast as packets come.
    let grown = sim.worker().fill_target_of(1).unwrap();
    assert_eq!(grown, 128, "a busy queue's budget grows");
    assert_eq!(sim.worker().fill_target_of(2), Some(FILL_TARGET_MIN));
    sim.settle(8);
    sim.worker().read_kernel_stats();
    assert_eq!(
        sim.worker().fill_target_of(1),
        Some(grown),
        "it had traffic"
    );
    for _ in 0..8 {
        sim.worker().read_kernel_stats();
    }
    assert_eq!(sim.worker().fill_target_of(1), Some(FILL_TARGET_MIN));
    assert_eq!(
        sim.worker_stats().umem.map(|u| (u.frames, u.closing)),
        Some((4096, 0))
    );

    let (mut own, _, _) = node(256, false);
    assert_eq!(own.worker().fill_target_of(1), Some(128), "half the pool");
}

/// 8 × 200 frames through 256-frame pools: only works if every frame comes
/// back (completions, drops, copies) to its free list.
#[test]
fn sustained_traffic_recycles_frames() {
    let (mut sim, a, b) = node(256, false);
    let mut total = 0;
    for round in 0..8u16 {
        for i in 0..200u16 {
            a.inject(0, echo_request(A, B, 64, &(round * 200 + i).to_be_bytes()));
        }
        sim.settle(16);
        total += b.take_sent().len();
    }
    assert_eq!(total, 1600);
    assert_eq!(a.rx_dropped.load(std::sync::atomic::Ordering::Relaxed), 0);
    assert_eq!(sim.port_stats("fy2").tx_frames, 1600);
}

/// Short tap reads are counted on their port, in the pass that met them.
#[test]
fn short_tap_reads_are_counted_on_their_port() {
    let (mut sim, a, _b) = node(256, true);
    a.inject(0, vec![0; 13]);
    a.inject(0, Vec::new());
    sim.step();
    let d = sim.port_stats("fy1").drops;
    assert_eq!(d.get("tap_short_read"), Some(&2), "{d:?}");
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(sim.worker_stats().drops.get("tap_short_read"), Some(&2));
}
