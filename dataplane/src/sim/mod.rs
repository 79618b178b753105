//! In-memory ports: the same ring discipline as AF_XDP copy mode, with the
//! "kernel" side being queues of `Vec<u8>` a test reads and writes.
//!
//! A [`MemNetwork`] is the set of interfaces that exist; each [`MemWire`] is
//! one interface with a number of queues. A test injects frames with
//! [`MemWire::inject`] (as if the pod sent them) and reads what the dataplane
//! transmitted with [`MemWire::take_sent`]. Receiving copies an injected
//! frame into a frame taken from the queue's fill ring, as the kernel does in
//! copy mode; with an empty fill ring the frame is dropped and counted.

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use ferry_api::table::MtuLimits;

use crate::core::pipeline::Offload;
use crate::io::pool::{MemDesc, MemPool};
use crate::io::port::{
    valid_ifname, FramePool, Opened, PortBackend, PortError, PortQueue, PortSpec,
};

#[derive(Default)]
struct WireQueue {
    to_dataplane: VecDeque<(Offload, Vec<u8>)>,
    from_dataplane: VecDeque<(Offload, Vec<u8>)>,
}

/// One in-memory interface.
pub struct MemWire {
    name: String,
    /// Frames carry virtio-net headers (an in-memory tap with offloads).
    offload: bool,
    queues: Vec<Mutex<WireQueue>>,
    /// Frames that arrived with no frame in the fill ring (the kernel's
    /// `rx_fill_ring_empty_descs`) or larger than a chunk.
    pub rx_dropped: AtomicU64,
    /// While set, transmitted frames are not completed (a kernel that does
    /// not drain the TX ring): they stay in the ring, which fills up.
    tx_stalled: AtomicBool,
    panic_on_rx: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl MemWire {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn queue_count(&self) -> usize {
        self.queues.len()
    }

    /// A frame arriving from the outside on `queue` (wraps around).
    pub fn inject(&self, queue: usize, frame: Vec<u8>) {
        self.inject_offloaded(queue, Offload::NONE, frame);
    }

    /// A frame with a virtio-net header (only kept by an offload wire).
    pub fn inject_offloaded(&self, queue: usize, offload: Offload, frame: Vec<u8>) {
        lock(&self.queues[queue % self.queues.len()])
            .to_dataplane
            .push_back((offload, frame));
    }

    /// Everything the dataplane transmitted on this interface so far, all
    /// queues, in queue order.
    pub fn take_sent(&self) -> Vec<Vec<u8>> {
        self.take_sent_offloaded()
            .into_iter()
            .map(|(_, f)| f)
            .collect()
    }

    /// As [`MemWire::take_sent`], with each frame's header.
    pub fn take_sent_offloaded(&self) -> Vec<(Offload, Vec<u8>)> {
        self.queues
            .iter()
            .flat_map(|q| std::mem::take(&mut lock(q).from_dataplane))
            .collect()
    }

    /// Make the next receive on this wire panic, as a bug in a worker
    /// would (tests of the failure policy).
    pub fn panic_on_rx(&self) {
        self.panic_on_rx.store(true, Ordering::Relaxed);
    }

    /// Stop (or resume) completing transmitted frames.
    pub fn stall_tx(&self, stalled: bool) {
        self.tx_stalled.store(stalled, Ordering::Relaxed);
    }

    /// Frames injected and not yet received by the dataplane.
    pub fn pending_rx(&self) -> usize {
        self.queues.iter().map(|q| lock(q).to_dataplane.len()).sum()
    }
}

/// The interfaces that exist, by name.
#[derive(Clone, Default)]
pub struct MemNetwork {
    wires: Arc<Mutex<BTreeMap<String, Arc<MemWire>>>>,
}

impl MemNetwork {
    pub fn new() -> Self {
        Self::default()
    }

    /// Create (or replace) interface `name` with `queues` queues.
    pub fn add(&self, name: &str, queues: usize) -> Arc<MemWire> {
        self.add_wire(name, queues, false)
    }

    /// An interface whose frames carry virtio-net headers, like a tap.
    pub fn add_offloaded(&self, name: &str, queues: usize) -> Arc<MemWire> {
        self.add_wire(name, queues, true)
    }

    fn add_wire(&self, name: &str, queues: usize, offload: bool) -> Arc<MemWire> {
        let wire = Arc::new(MemWire {
            name: name.to_string(),
            offload,
            queues: (0..queues.max(1))
                .map(|_| Mutex::new(WireQueue::default()))
                .collect(),
            rx_dropped: AtomicU64::new(0),
            tx_stalled: AtomicBool::new(false),
            panic_on_rx: AtomicBool::new(false),
        });
        lock(&self.wires).insert(name.to_string(), Arc::clone(&wire));
        wire
    }

    pub fn remove(&self, name: &str) {
        lock(&self.wires).remove(name);
    }

    pub fn get(&self, name: &str) -> Option<Arc<MemWire>> {
        lock(&self.wires).get(name).cloned()
    }
}

/// Ring sizes of an in-memory queue (like a socket's).
const MEM_RING: usize = 256;

/// One worker's queue on a [`MemWire`].
pub struct MemQueue {
    pool: MemPool,
    wire: Arc<MemWire>,
    queue: usize,
    fill: VecDeque<MemDesc>,
    /// Frames transmitted and not yet completed: the TX ring.
    comp: VecDeque<MemDesc>,
    /// Injected frames shorter than an Ethernet header on an offload wire
    /// (what a tap counts as a short read), since the last take.
    short_reads: u64,
}

impl PortQueue for MemQueue {
    type Pool = MemPool;

    fn pool(&self) -> &MemPool {
        &self.pool
    }

    fn rx(&mut self, out: &mut [MemDesc]) -> usize {
        if self.wire.panic_on_rx.swap(false, Ordering::Relaxed) {
            panic!("MemWire {} was told to panic on receive", self.wire.name);
        }
        let pool = &self.pool;
        let mut q = lock(&self.wire.queues[self.queue]);
        let mut n = 0;
        while n < out.len() {
            let Some((offload, bytes)) = q.to_dataplane.pop_front() else {
                break;
            };
            if bytes.len() > pool.frame_size() {
                self.wire.rx_dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            // A tap adapter throws such reads away itself.
            if self.wire.offload && bytes.len() < crate::core::wire::ETH_HDR_LEN {
                self.short_reads += 1;
                continue;
            }
            let Some(mut desc) = self.fill.pop_front() else {
                self.wire.rx_dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            // SAFETY: `desc` came from our fill ring, which only holds frames
            // the worker handed over and no longer references.
            // the frame is the queue's again, so setting its length is ours too.
            unsafe {
                pool.chunk_mut(&desc)[..bytes.len()].copy_from_slice(&bytes);
                pool.set_len(&mut desc, bytes.len());
            }
            pool.set_offload(&mut desc, offload);
            out[n] = desc;
            n += 1;
        }
        n
    }

    fn tx_room(&mut self) -> usize {
        MEM_RING - self.comp.len()
    }

    fn tx(&mut self, descs: &[MemDesc]) -> usize {
        if descs.len() > self.tx_room() {
            return 0;
        }
        let (pool, take) = (&self.pool, descs.len());
        let mut q = lock(&self.wire.queues[self.queue]);
        for desc in &descs[..take] {
            // SAFETY: frames handed to tx are owned by the queue until they
            // come back through `complete`; nothing else references them.
            let chunk = unsafe { pool.chunk_mut(desc) };
            q.from_dataplane
                .push_back((pool.offload_of(desc), chunk[..pool.len_of(desc)].to_vec()));
            self.comp.push_back(*desc);
        }
        take
    }

    fn kick_tx(&mut self) -> io::Result<bool> {
        Ok(false)
    }

    fn fill_room(&mut self) -> usize {
        MEM_RING - self.fill.len()
    }

    fn fill(&mut self, descs: &[MemDesc]) -> usize {
        if descs.len() > self.fill_room() {
            return 0;
        }
        self.fill.extend(descs.iter().copied());
        descs.len()
    }

    fn kick_rx(&mut self) -> io::Result<bool> {
        Ok(false)
    }

    fn complete(&mut self, out: &mut [MemDesc]) -> usize {
        if self.wire.tx_stalled.load(Ordering::Relaxed) {
            return 0;
        }
        let n = out.len().min(self.comp.len());
        for slot in &mut out[..n] {
            *slot = self.comp.pop_front().unwrap_or_default();
        }
        n
    }

    fn poll_fd(&self) -> Option<RawFd> {
        None
    }

    fn take_short_reads(&mut self) -> u64 {
        std::mem::take(&mut self.short_reads)
    }
}

/// The in-memory backend: ports are [`MemWire`]s of a [`MemNetwork`].
pub struct MemBackend {
    pub network: MemNetwork,
    pub frames_per_queue: usize,
    pub frame_size: usize,
}

impl MemBackend {
    pub fn new(network: MemNetwork) -> Self {
        MemBackend {
            network,
            frames_per_queue: 1024,
            frame_size: 2048,
        }
    }
}

/// Keeps nothing attached; dropping it is the in-memory "detach".
pub struct MemAttachment {
    pub ifname: String,
}

impl PortBackend for MemBackend {
    type Queue = MemQueue;
    type Attachment = MemAttachment;

    /// `frame_size` is what an in-memory frame holds after its headroom;
    /// offload wires are tap-sized.
    fn mtu_limits(&self) -> MtuLimits {
        MtuLimits {
            veth: self
                .frame_size
                .saturating_sub(crate::core::wire::ETH_HDR_LEN) as u32,
            tap: crate::io::tap::MAX_POD_MTU,
        }
    }

    fn open(
        &mut self,
        spec: &PortSpec,
        workers: usize,
    ) -> Result<Opened<MemAttachment, MemQueue>, PortError> {
        // In-memory wires are found by name whatever their kind.
        let ifname = spec.name.as_str();
        if !valid_ifname(ifname) {
            return Err(PortError::BadName {
                ifname: ifname.to_string(),
            });
        }
        let wire = self
            .network
            .get(ifname)
            .ok_or_else(|| PortError::NoSuchInterface {
                ifname: ifname.to_string(),
            })?;
        let queues = (0..workers)
            .map(|i| {
                (i < wire.queue_count()).then(|| MemQueue {
                    // An offload wire takes 64 KiB GSO frames, like a tap.
                    pool: if wire.offload {
                        MemPool::with_offload(
                            self.frames_per_queue,
                            self.frame_size.max(crate::io::tap::TAP_FRAME_SIZE),
                        )
                    } else {
                        MemPool::new(self.frames_per_queue, self.frame_size)
                    },
                    wire: Arc::clone(&wire),
                    queue: i,
                    fill: VecDeque::with_capacity(MEM_RING),
                    comp: VecDeque::with_capacity(MEM_RING),
                    short_reads: 0,
                })
            })
            .collect();
        Ok((
            MemAttachment {
                ifname: ifname.to_string(),
            },
            queues,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_through_fill_rx_tx_complete() {
        let net = MemNetwork::new();
        let wire = net.add("m0", 1);
        let mut backend = MemBackend::new(net.clone());
        backend.frames_per_queue = 8;
        let (_att, mut queues) = backend.open(&PortSpec::pod_veth("m0"), 2).unwrap();
        assert!(
            queues[1].is_none(),
            "one-queue wire gives worker 1 no queue"
        );
        let mut q = queues.remove(0).unwrap();
        let free = q.pool().all_descs();
        assert_eq!(free.len(), 8);

        // No fill frames: the injected frame is dropped and counted.
        wire.inject(0, vec![1, 2, 3]);
        let mut out = [MemDesc::default(); 4];
        assert_eq!(q.rx(&mut out), 0);
        assert_eq!(wire.rx_dropped.load(Ordering::Relaxed), 1);

        assert_eq!(q.fill(&free[..4]), 4);
        wire.inject(0, vec![9, 8, 7, 6]);
        assert_eq!(q.rx(&mut out), 1);
        assert_eq!(q.pool().len_of(&out[0]), 4);
        // SAFETY: out[0] just came out of rx and is owned here.
        assert_eq!(&unsafe { q.pool().chunk_mut(&out[0]) }[..4], &[9, 8, 7, 6]);
        assert_eq!(q.tx(&out[..1]), 1);
        assert_eq!(wire.take_sent(), vec![vec![9, 8, 7, 6]]);
        let mut done = [MemDesc::default(); 4];
        assert_eq!(q.complete(&mut done), 1);
        assert_eq!(done[0], out[0]);
    }

    #[test]
    fn missing_and_bad_interfaces_are_errors() {
        let mut backend = MemBackend::new(MemNetwork::new());
        assert!(matches!(
            backend.open(&PortSpec::pod_veth("nope"), 1),
            Err(PortError::NoSuchInterface { .. })
        ));
        assert!(matches!(
            backend.open(&PortSpec::pod_veth("a/b"), 1),
            Err(PortError::BadName { .. })
        ));
        assert!(matches!(
            backend.open(&PortSpec::pod_veth("0123456789abcdef"), 1),
            Err(PortError::BadName { .. })
        ));
    }
}
