//! Counters: written by one worker, read by the exporter (control thread).
//!
//! Each counter is an `AtomicU64` that only its owning worker writes, with a
//! relaxed load + relaxed store (a plain `mov` on x86, no locked
//! read-modify-write). Relaxed is enough because:
//! - there is a single writer, so no increment can be lost;
//! - a 64-bit atomic load never sees a torn value;
//! - readers need each counter's value eventually, not any ordering between
//!   counters (a Stats reply is a sample, not a consistent cut).
//!
//! Every block of counters is `CachePadded` so two workers never write the
//! same cache line.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use crossbeam_utils::CachePadded;

use crate::core::pipeline::DropReason;

/// One slot per drop-reason code (codes are dense from 1; slot 0 unused).
pub const REASON_SLOTS: usize = DropReason::ALL.len() + 1;

#[inline]
fn bump(c: &AtomicU64, n: u64) {
    c.store(c.load(Relaxed).wrapping_add(n), Relaxed);
}

fn slot(reason: DropReason) -> usize {
    (reason.code() as usize).min(REASON_SLOTS - 1)
}

fn drops_map(drops: &[AtomicU64; REASON_SLOTS], into: &mut BTreeMap<String, u64>) {
    for r in DropReason::ALL {
        let v = drops[slot(*r)].load(Relaxed);
        if v != 0 {
            *into.entry(r.name().to_string()).or_default() += v;
        }
    }
}

fn zeroed() -> [AtomicU64; REASON_SLOTS] {
    std::array::from_fn(|_| AtomicU64::new(0))
}

/// One worker's counters for one port. Drops count frames *received* on the
/// port and dropped (whatever stage dropped them).
pub struct PortCountersInner {
    rx_frames: AtomicU64,
    rx_bytes: AtomicU64,
    tx_frames: AtomicU64,
    tx_bytes: AtomicU64,
    drops: [AtomicU64; REASON_SLOTS],
    /// The last `XDP_STATISTICS` read of this worker's socket (absolute
    /// values, stored, not added), and whether there was one.
    kernel: [AtomicU64; 6],
    has_kernel: AtomicBool,
    /// The worker closed its queue because the device went
    /// ([`crate::io::port::PortQueue::device_gone`]).
    detached: AtomicBool,
}

pub type PortCounters = CachePadded<PortCountersInner>;

pub fn new_port_counters() -> PortCounters {
    CachePadded::new(PortCountersInner {
        rx_frames: AtomicU64::new(0),
        rx_bytes: AtomicU64::new(0),
        tx_frames: AtomicU64::new(0),
        tx_bytes: AtomicU64::new(0),
        drops: zeroed(),
        kernel: std::array::from_fn(|_| AtomicU64::new(0)),
        has_kernel: AtomicBool::new(false),
        detached: AtomicBool::new(false),
    })
}

impl PortCountersInner {
    #[inline]
    pub fn add_rx(&self, frames: u64, bytes: u64) {
        bump(&self.rx_frames, frames);
        bump(&self.rx_bytes, bytes);
    }

    #[inline]
    pub fn add_tx(&self, frames: u64, bytes: u64) {
        bump(&self.tx_frames, frames);
        bump(&self.tx_bytes, bytes);
    }

    #[inline]
    pub fn add_drop(&self, reason: DropReason) {
        bump(&self.drops[slot(reason)], 1);
    }

    /// Record the kernel's counters of this worker's socket on the port.
    pub fn set_kernel(&self, values: &[u64; 6]) {
        for (c, v) in self.kernel.iter().zip(values) {
            c.store(*v, Relaxed);
        }
        self.has_kernel.store(true, Relaxed);
    }

    /// The worker closed its queue on the port because its device went.
    /// For good: a port opened again gets counters of its own.
    pub fn mark_detached(&self) {
        self.detached.store(true, Relaxed);
    }

    pub fn detached(&self) -> bool {
        self.detached.load(Relaxed)
    }

    /// Add this block's values into `into` (summing over workers).
    pub fn sum_into(&self, into: &mut ferry_api::table::PortStats) {
        into.rx_frames += self.rx_frames.load(Relaxed);
        into.rx_bytes += self.rx_bytes.load(Relaxed);
        into.tx_frames += self.tx_frames.load(Relaxed);
        into.tx_bytes += self.tx_bytes.load(Relaxed);
        drops_map(&self.drops, &mut into.drops);
        if self.has_kernel.load(Relaxed) {
            for (name, c) in ferry_api::table::XSK_COUNTERS.iter().zip(&self.kernel) {
                *into.kernel.entry(name.to_string()).or_default() += c.load(Relaxed);
            }
        }
    }
}

/// A worker's own totals.
pub struct WorkerCountersInner {
    busy_polls: AtomicU64,
    idle_polls: AtomicU64,
    rx_frames: AtomicU64,
    tx_frames: AtomicU64,
    drops: [AtomicU64; REASON_SLOTS],
    /// [`ferry_api::table::UmemStats`] fields, in order; frames 0: none.
    umem: [AtomicU64; 5],
}

pub type WorkerCounters = CachePadded<WorkerCountersInner>;

pub fn new_worker_counters() -> WorkerCounters {
    CachePadded::new(WorkerCountersInner {
        busy_polls: AtomicU64::new(0),
        idle_polls: AtomicU64::new(0),
        rx_frames: AtomicU64::new(0),
        tx_frames: AtomicU64::new(0),
        drops: zeroed(),
        umem: std::array::from_fn(|_| AtomicU64::new(0)),
    })
}

impl WorkerCountersInner {
    /// A loop iteration that found work.
    #[inline]
    pub fn busy_poll(&self) {
        bump(&self.busy_polls, 1);
    }

    /// A loop iteration that found nothing and slept in poll(2).
    #[inline]
    pub fn idle_poll(&self) {
        bump(&self.idle_polls, 1);
    }

    #[inline]
    pub fn add_rx(&self, frames: u64) {
        bump(&self.rx_frames, frames);
    }

    #[inline]
    pub fn add_tx(&self, frames: u64) {
        bump(&self.tx_frames, frames);
    }

    #[inline]
    pub fn add_drop(&self, reason: DropReason) {
        bump(&self.drops[slot(reason)], 1);
    }

    /// Where the frames of the worker's shared UMEM are now.
    pub fn set_umem(&self, u: &ferry_api::table::UmemStats) {
        let values = [u.frames, u.free, u.in_rings, u.closing, u.fill_budget];
        for (slot, v) in self.umem.iter().zip(values) {
            slot.store(v, Relaxed);
        }
    }

    pub fn snapshot(&self, worker: u32, cpu: Option<u32>) -> ferry_api::table::WorkerStats {
        let mut drops = BTreeMap::new();
        drops_map(&self.drops, &mut drops);
        ferry_api::table::WorkerStats {
            worker,
            cpu,
            busy_polls: self.busy_polls.load(Relaxed),
            idle_polls: self.idle_polls.load(Relaxed),
            rx_frames: self.rx_frames.load(Relaxed),
            tx_frames: self.tx_frames.load(Relaxed),
            drops,
            umem: match self.umem.each_ref().map(|v| v.load(Relaxed)) {
                [0, ..] => None,
                [frames, free, in_rings, closing, fill_budget] => {
                    Some(ferry_api::table::UmemStats {
                        frames,
                        free,
                        in_rings,
                        closing,
                        fill_budget,
                    })
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_api::table::PortStats;

    #[test]
    fn port_counters_sum_over_workers() {
        let a = new_port_counters();
        let b = new_port_counters();
        a.add_rx(3, 300);
        b.add_rx(2, 120);
        a.add_tx(1, 60);
        a.add_drop(DropReason::NoEndpoint);
        b.add_drop(DropReason::NoEndpoint);
        b.add_drop(DropReason::TxRingFull);
        let mut s = PortStats::default();
        a.sum_into(&mut s);
        b.sum_into(&mut s);
        assert_eq!(
            (s.rx_frames, s.rx_bytes, s.tx_frames, s.tx_bytes),
            (5, 420, 1, 60)
        );
        assert_eq!(s.drops.get("no_endpoint"), Some(&2));
        assert_eq!(s.drops.get("tx_ring_full"), Some(&1));
        assert_eq!(s.drops.len(), 2, "zero counters are left out");
        assert!(s.kernel.is_empty(), "no socket counters were read");

        // Socket counters are absolute: a later read replaces the earlier.
        a.set_kernel(&[1, 0, 0, 5, 0, 0]);
        a.set_kernel(&[1, 0, 0, 6, 2, 0]);
        b.set_kernel(&[0, 0, 0, 1, 0, 0]);
        let mut s = PortStats::default();
        a.sum_into(&mut s);
        b.sum_into(&mut s);
        assert_eq!(s.kernel.len(), 6, "every XDP_STATISTICS counter: {s:?}");
        assert_eq!(s.kernel["rx_ring_full"], 7);
        assert_eq!(s.kernel["rx_dropped"], 1);
        assert_eq!(s.kernel["rx_fill_ring_empty_descs"], 2);
    }

    #[test]
    fn worker_snapshot_reports_every_counter() {
        let w = new_worker_counters();
        w.busy_poll();
        w.idle_poll();
        w.idle_poll();
        w.add_rx(7);
        w.add_tx(6);
        w.add_drop(DropReason::NoTxQueue);
        let s = w.snapshot(1, Some(3));
        assert_eq!(
            (s.worker, s.cpu, s.busy_polls, s.idle_polls),
            (1, Some(3), 1, 2)
        );
        assert_eq!((s.rx_frames, s.tx_frames), (7, 6));
        assert_eq!(s.drops.get("no_tx_queue"), Some(&1));
        // Every reason has its own slot.
        assert!(DropReason::ALL
            .iter()
            .all(|r| (r.code() as usize) < REASON_SLOTS));
    }
}
