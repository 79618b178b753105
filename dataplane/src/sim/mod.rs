//! In-memory ports: the same ring discipline as AF_XDP copy mode, with the
//! "kernel" side being queues of `Vec<u8>` a test reads and writes.
//!
//! A [`MemNetwork`] is the set of interfaces that exist; each [`MemWire`] is
//! one interface with a number of queues. A test injects frames with
//! [`MemWire::inject`] (as if the pod sent them) and reads what the dataplane
//! transmitted with [`MemWire::take_sent`]. Receiving copies an injected
//! frame into a frame taken from the queue's fill ring, as the kernel does in
//! copy mode; with an empty fill ring the frame is dropped and counted.
//!
//! [`SimNode`] drives one real worker over such ports pass by pass, with a
//! fake clock, and checks after every pass that no frame was lost or
//! duplicated.

mod node;

pub use node::{SimNode, PASS_NS};

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use std::net::Ipv4Addr;

use ferry_api::table::{MtuLimits, Neighbour};
use ferry_api::MacAddr;

use crate::core::pipeline::Offload;
use crate::io::pool::{MemDesc, MemPool};
use crate::io::port::{
    valid_ifname, FramePool, LinkInfo, Opened, Owned, PortBackend, PortError, PortQueue, PortSpec,
    RingFrames,
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
    /// While set, transmitted frames are counted ([`MemWire::sent_count`])
    /// instead of copied out, so the "kernel" side allocates nothing (the
    /// no-allocation test measures the worker alone).
    discard_sent: AtomicBool,
    sent: AtomicU64,
    panic_on_rx: AtomicBool,
    /// Deleted under the dataplane ([`MemWire::unplug`]).
    gone: AtomicBool,
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

    /// The device is deleted, as a veth with its pod's namespace: from now
    /// on nothing is received or completed, transmitted frames stay in the
    /// ring, and a TX wake-up fails with ENXIO (an unbound AF_XDP socket).
    pub fn unplug(&self) {
        self.gone.store(true, Ordering::Relaxed);
    }

    fn is_gone(&self) -> bool {
        self.gone.load(Ordering::Relaxed)
    }

    /// Count transmitted frames instead of keeping them (or keep them again).
    pub fn discard_sent(&self, discard: bool) {
        self.discard_sent.store(discard, Ordering::Relaxed);
    }

    /// Frames transmitted on this interface, kept or not.
    pub fn sent_count(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
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
    /// MAC and MTU of interfaces that have them (the uplink).
    links: Arc<Mutex<BTreeMap<String, LinkInfo>>>,
    /// The "kernel's" neighbour table: peer address -> MAC.
    neighbours: Arc<Mutex<BTreeMap<Ipv4Addr, MacAddr>>>,
}

impl MemNetwork {
    pub fn new() -> Self {
        Self::default()
    }

    /// Give interface `name` a MAC and an MTU (what `link_info` answers).
    pub fn set_link(&self, name: &str, info: LinkInfo) {
        lock(&self.links).insert(name.to_string(), info);
    }

    /// Set (`Some`) or forget (`None`) the MAC of peer `ip`, as the
    /// kernel's neighbour table would learn or lose it.
    pub fn set_neighbour(&self, ip: Ipv4Addr, mac: Option<MacAddr>) {
        match mac {
            Some(mac) => lock(&self.neighbours).insert(ip, mac),
            None => lock(&self.neighbours).remove(&ip),
        };
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
            gone: AtomicBool::new(false),
            discard_sent: AtomicBool::new(false),
            sent: AtomicU64::new(0),
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
    /// Its own, or the worker's shared one ([`MemBackend::share_pools`]).
    pool: Arc<MemPool>,
    wire: Arc<MemWire>,
    queue: usize,
    fill: VecDeque<MemDesc>,
    /// Frames transmitted and not yet completed: the TX ring.
    comp: VecDeque<MemDesc>,
    /// Injected frames shorter than an Ethernet header on an offload wire
    /// (what a tap counts as a short read), since the last take.
    short_reads: u64,
}

impl MemQueue {
    /// Move the first `n` frames of `frames` (all if `n` fit in `room`,
    /// else none) into `ring` as bare descriptors; `each` sees every frame
    /// first. How many.
    fn take_into(
        pool: &MemPool,
        frames: &mut Vec<Owned<MemDesc>>,
        range: std::ops::Range<usize>,
        room: usize,
        ring: &mut VecDeque<MemDesc>,
        mut each: impl FnMut(&MemPool, &mut Owned<MemDesc>),
    ) -> usize {
        let n = range.len();
        if n > room || range.end > frames.len() {
            return 0;
        }
        for mut f in frames.drain(range) {
            assert_eq!(f.pool(), pool.id(), "a frame of another pool");
            each(pool, &mut f);
            ring.push_back(f.into_raw());
        }
        n
    }
}

impl PortQueue for MemQueue {
    type Pool = MemPool;

    fn pool(&self) -> &MemPool {
        &self.pool
    }

    fn take_frames(&mut self, out: &mut Vec<Owned<MemDesc>>) -> usize {
        self.pool.take_frames(out)
    }

    /// The frames in its rings, handed back when the pool is shared.
    fn close(self) -> Vec<Owned<MemDesc>> {
        if !self.pool.shared() {
            return Vec::new();
        }
        let id = self.pool.id();
        (self.fill.into_iter().chain(self.comp))
            // SAFETY: each was moved into a ring by consuming its token,
            // and the rings go with the queue here.
            .map(|d| unsafe { Owned::from_raw(d, id) })
            .collect()
    }

    fn rx(&mut self, out: &mut Vec<Owned<MemDesc>>, max: usize) -> usize {
        if self.wire.panic_on_rx.swap(false, Ordering::Relaxed) {
            panic!("MemWire {} was told to panic on receive", self.wire.name);
        }
        if self.wire.is_gone() {
            return 0;
        }
        let pool = &self.pool;
        let mut q = lock(&self.wire.queues[self.queue]);
        let mut n = 0;
        while n < max {
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
            let Some(desc) = self.fill.pop_front() else {
                self.wire.rx_dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            // SAFETY: `desc` came out of our fill ring, into which `fill`
            // moved it by consuming its token; popped, it is in no ring.
            let mut frame = unsafe { Owned::from_raw(desc, pool.id()) };
            pool.buf_mut(&mut frame)[..bytes.len()].copy_from_slice(&bytes);
            pool.set_len(&mut frame, bytes.len());
            pool.set_offload(&mut frame, offload);
            out.push(frame);
            n += 1;
        }
        n
    }

    fn tx_room(&mut self) -> usize {
        MEM_RING - self.comp.len()
    }

    fn tx(&mut self, frames: &mut Vec<Owned<MemDesc>>, n: usize) -> usize {
        let room = self.tx_room();
        let wire = &self.wire;
        let discard = wire.discard_sent.load(Ordering::Relaxed);
        let gone = wire.is_gone();
        let mut q = lock(&wire.queues[self.queue]);
        Self::take_into(&self.pool, frames, 0..n, room, &mut self.comp, |pool, f| {
            if gone {
                return;
            }
            wire.sent.fetch_add(1, Ordering::Relaxed);
            if !discard {
                let (len, offload) = (pool.len_of(f), pool.offload_of(f));
                q.from_dataplane
                    .push_back((offload, pool.buf_mut(f)[..len].to_vec()));
            }
        })
    }

    fn kick_tx(&mut self) -> io::Result<bool> {
        if self.wire.is_gone() {
            return Err(io::Error::from_raw_os_error(libc::ENXIO));
        }
        Ok(false)
    }

    fn device_gone(&mut self) -> bool {
        self.wire.is_gone()
    }

    fn fill_room(&mut self) -> usize {
        MEM_RING - self.fill.len()
    }

    fn fill_capacity(&self) -> usize {
        MEM_RING
    }

    fn fill(&mut self, free: &mut Vec<Owned<MemDesc>>, n: usize) -> usize {
        let room = self.fill_room();
        let Some(from) = free.len().checked_sub(n) else {
            return 0;
        };
        let range = from..free.len();
        Self::take_into(&self.pool, free, range, room, &mut self.fill, |_, _| {})
    }

    fn kick_rx(&mut self) -> io::Result<bool> {
        Ok(false)
    }

    fn complete(&mut self, out: &mut Vec<Owned<MemDesc>>, max: usize) -> usize {
        if self.wire.tx_stalled.load(Ordering::Relaxed) || self.wire.is_gone() {
            return 0;
        }
        let n = max.min(self.comp.len());
        for d in self.comp.drain(..n) {
            // SAFETY: `comp` holds frames whose tokens `tx` consumed, each
            // once; draining removes them, so each gets one token.
            out.push(unsafe { Owned::from_raw(d, self.pool.id()) });
        }
        n
    }

    fn ring_frames(&self) -> RingFrames {
        RingFrames {
            fill_or_rx: self.fill.len(),
            tx_or_completion: self.comp.len(),
        }
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
    /// Queues of plain wires share one pool of `frames_per_queue` frames
    /// per worker, as AF_XDP sockets on veths share their worker's UMEM
    /// (offload wires keep pools of their own, as taps do).
    pub share_pools: bool,
    shared: Vec<Arc<MemPool>>,
}

impl MemBackend {
    pub fn new(network: MemNetwork) -> Self {
        MemBackend {
            network,
            frames_per_queue: 1024,
            frame_size: 2048,
            share_pools: false,
            shared: Vec::new(),
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

    /// `frame_size` is what an in-memory frame holds after its headroom,
    /// on every port (the uplink's too); offload wires are tap-sized.
    fn mtu_limits(&self) -> MtuLimits {
        let frame = self
            .frame_size
            .saturating_sub(crate::core::wire::ETH_HDR_LEN) as u32;
        MtuLimits {
            veth: frame,
            tap: crate::io::tap::MAX_POD_MTU,
            uplink: Some(frame),
        }
    }

    fn mode_of(_: &MemAttachment) -> String {
        "mem".to_string()
    }

    fn link_info(&self, ifname: &str) -> Option<LinkInfo> {
        lock(&self.network.links).get(ifname).copied()
    }

    /// Every peer is on-link; its MAC is what `MemNetwork::set_neighbour`
    /// said.
    fn resolve_neighbours(&mut self, _ifname: &str, peers: &[Ipv4Addr]) -> Vec<Neighbour> {
        let table = lock(&self.network.neighbours);
        peers
            .iter()
            .map(|&p| {
                let mac = table.get(&p).copied();
                Neighbour {
                    node: p.into(),
                    next_hop: p.into(),
                    mac,
                    state: if mac.is_some() {
                        "reachable"
                    } else {
                        "incomplete"
                    }
                    .to_string(),
                }
            })
            .collect()
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
        while self.share_pools && self.shared.len() < workers {
            let pool = MemPool::shared(self.frames_per_queue, self.frame_size);
            self.shared.push(Arc::new(pool));
        }
        let queues = (0..workers)
            .map(|i| {
                (i < wire.queue_count()).then(|| MemQueue {
                    // An offload wire takes 64 KiB GSO frames, like a tap.
                    pool: match self.shared.get(i) {
                        _ if wire.offload => Arc::new(MemPool::with_offload(
                            self.frames_per_queue,
                            self.frame_size.max(crate::io::tap::TAP_FRAME_SIZE),
                        )),
                        Some(shared) => Arc::clone(shared),
                        None => Arc::new(MemPool::new(self.frames_per_queue, self.frame_size)),
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
        let mut free = Vec::new();
        assert_eq!(q.take_frames(&mut free), 8);
        assert_eq!(q.take_frames(&mut free), 0, "tokens are issued once");

        // No fill frames: the injected frame is dropped and counted.
        wire.inject(0, vec![1, 2, 3]);
        let mut got = Vec::new();
        assert_eq!(q.rx(&mut got, 4), 0);
        assert_eq!(wire.rx_dropped.load(Ordering::Relaxed), 1);

        assert_eq!(q.fill(&mut free, 4), 4);
        assert_eq!((free.len(), q.ring_frames().fill_or_rx), (4, 4));
        wire.inject(0, vec![9, 8, 7, 6]);
        assert_eq!(q.rx(&mut got, 4), 1);
        assert_eq!(q.pool().len_of(&got[0]), 4);
        assert_eq!(&q.pool().buf_mut(&mut got[0])[..4], &[9, 8, 7, 6]);
        assert_eq!(q.tx(&mut got, 1), 1);
        assert!(got.is_empty(), "the token went into the ring");
        assert_eq!(wire.take_sent(), vec![vec![9, 8, 7, 6]]);
        assert_eq!(q.ring_frames().tx_or_completion, 1);
        assert_eq!(q.complete(&mut free, 4), 1);
        assert_eq!(q.complete(&mut free, 4), 0, "completed once");
        assert_eq!(free.len() + q.ring_frames().fill_or_rx, 8);
    }

    /// A token of another pool reaches none of this pool's memory.
    #[test]
    fn a_token_of_another_pool_reaches_nothing() {
        let a = MemPool::new(2, 64);
        let b = MemPool::new(2, 64);
        let mut frames = Vec::new();
        a.take_frames::<MemDesc>(&mut frames);
        assert!(b.buf_mut(&mut frames[0]).is_empty());
        assert_eq!(a.buf_mut(&mut frames[0]).len(), 64);
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
