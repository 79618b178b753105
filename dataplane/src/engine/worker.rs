//! Worker threads: each owns one frame pool and one queue on every port, and
//! is the only thread touching those rings.
//!
//! Loop: take commands from the control thread (a channel, checked once per
//! iteration, so the hot loop takes no lock); then for every queue: reap
//! completions, refill the fill ring, receive a batch, run the pipeline with
//! one table snapshot and one timestamp, move each frame to the TX batch of
//! its egress queue or back to the free list, and commit each TX batch once.
//! A pass that found nothing sleeps in poll(2) on the queues' descriptors so
//! an idle node does not burn a core. About once a second a worker copies
//! its sockets' kernel counters (XDP_STATISTICS) into its port counters.
//!
//! Frame accounting: a free list per pool (a [`Store`]). The sockets of a
//! worker on every pod veth and the host port share one pool, the
//! worker's UMEM; the uplink's sockets and each tap queue have a pool of
//! their own. A frame leaving by its ingress port moves by descriptor; a
//! frame for another port is copied into a free frame of that port's pool
//! (a GSO frame for a port without offloads into several, one per
//! segment), or written to a tap straight from the ingress frame, and its
//! own frame goes back to the ingress pool's free list; between two ports
//! of one pool (pod veths and the host port, on the worker's UMEM) the
//! frame itself moves, by descriptor. A packet received
//! as a chain of frames (a veth port's AF_XDP multi-buffer) is copied
//! whole into a jumbo buffer of the worker's and its frames go back at
//! once; it leaves as one tap write or as a chain of the egress pool's
//! frames, never cut by a ring commit. Removing a port closes its queue on
//! a thread of its own: a pool of its own goes with it, and the frames of
//! a shared pool its rings held come back to the worker once the socket is
//! closed, so port churn never leaks frames.
//!
//! A queue on a shared pool gets a fill budget that adapts: a new or idle
//! queue keeps [`FILL_TARGET_MIN`] frames in its fill ring, one that
//! nearly ran dry gets twice as many (up to [`FILL_TARGET_MAX`], while a
//! quarter of the pool stays free), and one that received nothing for a
//! second gets half, so a hundred idle pods park a few thousand frames,
//! not a hundred thousand.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam::channel::{Receiver, RecvTimeoutError, Sender};

use crate::core::offload::{self, EgressCaps, Finished};
use crate::core::pipeline::{
    process_batch, CsumState, DropReason, Frame, Offload, Verdict, FRAME_HEADROOM,
};
use crate::core::tables::{PortId, TableHandle};
use crate::core::wire::vxlan;
use crate::engine::counters::{PortCounters, WorkerCounters};
use crate::io::port::{FrameOf, FramePool, Owned, PortQueue, RingFrames};

/// Mutable references to two different elements of a slice.
fn two_mut<T>(v: &mut [T], a: usize, b: usize) -> (&mut T, &mut T) {
    debug_assert_ne!(a, b);
    if a < b {
        let (lo, hi) = v.split_at_mut(b);
        (&mut lo[a], &mut hi[0])
    } else {
        let (lo, hi) = v.split_at_mut(a);
        (&mut hi[0], &mut lo[b])
    }
}

/// What the control thread tells a worker.
pub enum WorkerCmd<Q> {
    /// Port `port` exists; `queue` is this worker's queue on it (`None`: the
    /// interface has no queue for this worker, TX to it is `no_tx_queue`).
    AddPort {
        port: PortId,
        queue: Option<Q>,
        counters: Arc<PortCounters>,
    },
    /// Drop this worker's queue on `port` (the tables no longer name it).
    RemovePort { port: PortId },
    /// Answer with the worker id once every earlier command is applied.
    Barrier { ack: Sender<usize> },
}

/// The one monotonic origin every worker's pipeline time counts from, so
/// the connection table's deadlines mean the same on every worker.
fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Tuning of one worker.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub id: usize,
    /// Frames received per queue per batch.
    pub batch: usize,
    /// How long an idle pass sleeps in poll(2).
    pub idle_timeout: Duration,
    /// How an idle worker waits ([`PollMode`]).
    pub poll_mode: PollMode,
    /// The longest it keeps polling without sleeping after the last pass
    /// that moved a frame ([`PollMode::Adaptive`]; 0: never). Waking an
    /// idle vCPU costs tens of µs, more than a reply takes to come back
    /// through a request/response pair of pods; an idle node never spins
    /// (no busy pass, no spin).
    pub idle_spin: Duration,
    /// Core to pin to (`None`: not pinned).
    pub cpu: Option<usize>,
}

/// How a worker waits when a pass moved nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PollMode {
    /// Never sleep: poll on, a whole core per worker, the lowest latency.
    Busy,
    /// After traffic, keep polling (yielding the core to anything else
    /// runnable between passes) for a window that adapts: it doubles
    /// (up to `idle_spin`) when traffic came back within it, halves (down
    /// to [`MIN_ADAPTIVE_SPIN`]) when it did not; then sleep in poll(2).
    /// Request/response traffic is served without a wake-up per packet,
    /// a stream without stealing the core from the pods sharing it, and an
    /// idle node costs nothing. As OVS's PMD load-based sleep or DPDK
    /// l3fwd-power decide, in the dataplane's own loop (busy-poll socket
    /// options do nothing on veth: its queues have no NAPI id).
    Adaptive,
    /// Sleep in poll(2) at the first pass that moved nothing.
    #[default]
    Interrupt,
}

impl PollMode {
    pub fn from_name(name: &str) -> Option<PollMode> {
        match name {
            "busy" => Some(PollMode::Busy),
            "adaptive" => Some(PollMode::Adaptive),
            "interrupt" => Some(PollMode::Interrupt),
            _ => None,
        }
    }
}

/// After this long without traffic a worker sleeps [`QUIET_IDLE_TIMEOUT`]
/// at a time instead of its `idle_timeout`.
const QUIET_NS: u64 = 1_000_000_000;
const QUIET_IDLE_TIMEOUT: Duration = Duration::from_millis(100);

/// The shortest adaptive window (a miss halves it down to this).
pub const MIN_ADAPTIVE_SPIN: Duration = Duration::from_micros(5);

/// The next adaptive window: doubled after a spin that traffic ended,
/// halved after one that ran out, within `[MIN_ADAPTIVE_SPIN, max]`.
pub fn next_window(window: u64, caught: bool, max: u64) -> u64 {
    let min = (MIN_ADAPTIVE_SPIN.as_nanos() as u64).min(max);
    if caught {
        window.saturating_mul(2).clamp(min, max)
    } else {
        (window / 2).clamp(min, max)
    }
}

/// Largest batch accepted (bounds the per-worker scratch arrays).
pub const MAX_BATCH: usize = 256;
/// Refill a fill ring only when at least this many frames are missing (or
/// it ran empty), so fill commits are batched. Not for local fill lists
/// ([`PortQueue::fill_is_local`]): those take every frame back at once.
const REFILL_MIN: usize = 16;
/// How often a worker reads its sockets' kernel counters (XDP_STATISTICS).
const KERNEL_STATS_EVERY: Duration = Duration::from_secs(1);
/// Busy passes between two looks at the clock for [`KERNEL_STATS_EVERY`]
/// (an idle pass always looks: it is about to sleep anyway).
const KERNEL_STATS_PASSES: u32 = 1024;

/// The most bytes of one packet received as a chain of frames (AF_XDP
/// multi-buffer on veth ports): [`crate::io::afxdp::MAX_CHAIN`] chunks.
const CHAIN_BYTES: usize = crate::io::afxdp::MAX_CHAIN * crate::io::afxdp::CHUNK_DATA as usize;

/// Upper bound of frames parked in one queue's fill ring (on a pool of its
/// own, half the pool at most, so there are always frames to copy
/// forwarded traffic into; on a shared pool, see `refill`).
pub const FILL_TARGET_MAX: usize = 1024;
/// The fill budget of a new or idle queue on a shared pool: four chains
/// of the largest packet a veth port carries (with 32, two, a jumbo pod's
/// socket once found its fill ring empty: `rx_dropped`).
pub const FILL_TARGET_MIN: usize = 4 * crate::io::afxdp::MAX_CHAIN;
/// The most frames waiting in one queue's TX batch before it is
/// committed: a batch of chains or GSO segments stays below it, and the
/// vector never grows past it.
const PENDING_MAX: usize = 4 * 1024;

enum Slot {
    /// Not (or no longer) a port this worker knows: TX is `port_gone`.
    Unknown,
    /// A port with no queue for this worker: TX is `no_tx_queue`.
    NoQueue,
    /// Index into `Worker::queues`.
    Active(usize),
}

/// One pool's frames in the worker's hands, and where the rest are.
struct Store<Q: PortQueue> {
    pool: crate::io::port::PoolId,
    /// Its capacity is the pool's size, so it never grows.
    free: Vec<FrameOf<Q>>,
    frames: usize,
    /// Frames of removed queues not yet back ([`PortQueue::close`]).
    closing: usize,
    /// Shared by several queues: kept while the worker lives (its tokens
    /// are issued once), fill budgets adapt.
    shared: bool,
}

struct Active<Q: PortQueue> {
    port: PortId,
    queue: Q,
    counters: Arc<PortCounters>,
    /// Index of this queue's pool in `Worker::stores`.
    store: usize,
    /// Frames to transmit on this queue, committed once per RX batch (and
    /// mid-batch by `make_room` when a GSO frame needs the room). Capacity:
    /// the pool's size, at most [`PENDING_MAX`].
    pending: Vec<FrameOf<Q>>,
    /// Frames we gave the fill ring and have not received back.
    in_fill: usize,
    /// Frames in the TX ring not yet completed. Copy-mode TX sends at most
    /// a few dozen frames per wake-up, so a queue with frames in flight is
    /// kicked again on every pass until they complete.
    in_tx: usize,
    /// On a shared pool it adapts ([`FILL_TARGET_MIN`]..[`FILL_TARGET_MAX`]).
    fill_target: usize,
    /// Frames received since the kernel counters were last read.
    received: usize,
}

/// One worker's state. Create with [`Worker::new`], run with
/// [`Worker::run`] (or [`spawn`]).
pub struct Worker<Q: PortQueue> {
    cfg: WorkerConfig,
    queues: Vec<Active<Q>>,
    stores: Vec<Store<Q>>,
    /// Frames of shared pools handed back by closed queues: the closing
    /// threads' end, and ours.
    give_back: Sender<Vec<FrameOf<Q>>>,
    given_back: Receiver<Vec<FrameOf<Q>>>,
    slots: Vec<Slot>,
    tables: Arc<TableHandle>,
    cmds: Receiver<WorkerCmd<Q>>,
    counters: Arc<WorkerCounters>,
    stop: Arc<AtomicBool>,
    /// The frames of the RX batch being processed (empty between passes).
    rx: Vec<FrameOf<Q>>,
    /// The RX batch's packets, in order: a frame each, or a chain.
    packets: Vec<RxPacket>,
    /// Where a chain received is made whole for the pipeline and the
    /// egress side: one buffer per chain of a batch, grown to the most
    /// chains one batch had, never shrunk (`FRAME_HEADROOM` + 28 KiB each).
    jumbo: Vec<Box<[u8]>>,
    verdicts: Vec<Verdict>,
    /// Each frame as the pipeline left it, for the egress side.
    outgoing: Vec<Outgoing>,
    dirty: Vec<usize>,
    frame_store: Vec<Frame<'static>>,
    pollfds: Vec<libc::pollfd>,
    /// Polled last in `pollfds`: the control thread's wake-up for a command.
    waker: Option<Arc<crate::io::poll::Waker>>,
    start: Instant,
}

/// Reuse a frame vector's allocation for another lifetime. The vector is
/// emptied; `filter_map` over `vec::IntoIter` collects in place (same size
/// and alignment), so no allocation happens per batch.
#[expect(
    clippy::unnecessary_filter_map,
    reason = "the map changes the element lifetime, which filter cannot"
)]
fn recycle<'a, 'b>(v: Vec<Frame<'a>>) -> Vec<Frame<'b>> {
    v.into_iter().filter_map(|_| None).collect()
}

impl<Q: PortQueue> Worker<Q> {
    pub fn new(
        cfg: WorkerConfig,
        tables: Arc<TableHandle>,
        cmds: Receiver<WorkerCmd<Q>>,
        counters: Arc<WorkerCounters>,
        stop: Arc<AtomicBool>,
    ) -> Self {
        let mut cfg = cfg;
        cfg.batch = cfg.batch.clamp(1, MAX_BATCH);
        let (give_back, given_back) = crossbeam::channel::unbounded();
        Worker {
            queues: Vec::new(),
            stores: Vec::new(),
            give_back,
            given_back,
            slots: Vec::new(),
            tables,
            cmds,
            counters,
            stop,
            rx: Vec::with_capacity(cfg.batch),
            packets: Vec::with_capacity(cfg.batch),
            jumbo: Vec::new(),
            verdicts: vec![Verdict::Drop(DropReason::Malformed); cfg.batch],
            outgoing: vec![Outgoing::default(); cfg.batch],
            dirty: Vec::new(),
            frame_store: Vec::with_capacity(cfg.batch),
            pollfds: Vec::new(),
            waker: None,
            start: epoch(),
            cfg,
        }
    }

    /// Number of ports this worker has a queue on.
    pub fn queue_count(&self) -> usize {
        self.queues.len()
    }

    /// One pass, deterministically: apply every queued command, then
    /// service every queue once (reap, refill, receive one batch, forward,
    /// commit), with `now_ns` as the pipeline's timestamp. No clock, no
    /// sleep, no thread: [`Worker::run`] calls it in a loop, tests call it
    /// directly.
    pub fn step(&mut self, now_ns: u64) -> PassOutcome {
        if !self.apply_commands() {
            return PassOutcome::Disconnected;
        }
        if self.pass(now_ns) {
            PassOutcome::Busy
        } else {
            PassOutcome::Idle
        }
    }

    /// Where every pool's frames are. Between passes (the only time
    /// `&self` can look) the worker holds no RX batch, so each census is
    /// [`FrameCensus::conserved`] unless a frame was lost or duplicated.
    pub fn census(&self) -> impl Iterator<Item = FrameCensus> + '_ {
        (0..self.stores.len()).map(|s| self.census_of(s))
    }

    /// Where store `s`'s frames are.
    fn census_of(&self, s: usize) -> FrameCensus {
        let store = &self.stores[s];
        let mut c = FrameCensus {
            pool: store.frames,
            queues: 0,
            rings: RingFrames::default(),
            free: store.free.len(),
            pending: 0,
            closing: store.closing,
        };
        for a in self.queues.iter().filter(|a| a.store == s) {
            let r = a.queue.ring_frames();
            c.queues += 1;
            c.rings.fill_or_rx += r.fill_or_rx;
            c.rings.tx_or_completion += r.tx_or_completion;
            c.pending += a.pending.len();
        }
        c
    }

    /// What the adapter's rings of `port`'s queue hold.
    pub fn ring_frames_of(&self, port: PortId) -> Option<RingFrames> {
        self.queues
            .iter()
            .find(|a| a.port == port)
            .map(|a| a.queue.ring_frames())
    }

    /// The fill budget of `port`'s queue.
    pub fn fill_target_of(&self, port: PortId) -> Option<usize> {
        self.queues
            .iter()
            .find(|a| a.port == port)
            .map(|a| a.fill_target)
    }

    /// Run until `stop` is set or the command channel is closed.
    pub fn run(mut self) {
        log::info!(
            "worker {} running (cpu {:?}, batch {})",
            self.cfg.id,
            self.cfg.cpu,
            self.cfg.batch
        );
        // The clock is never read per frame: once per pass (the pipeline's
        // timestamp, and the idle spin's reference), and for the kernel
        // counters on idle passes and every KERNEL_STATS_PASSES-th busy
        // pass.
        let mut last_busy: Option<u64> = None;
        let max_spin = match self.cfg.poll_mode {
            PollMode::Adaptive => self.cfg.idle_spin.as_nanos() as u64,
            PollMode::Busy | PollMode::Interrupt => 0,
        };
        let mut window = max_spin;
        let mut spinning = false;
        let mut last_traffic: u64 = 0;
        let mut kernel_read = Instant::now();
        let mut passes: u32 = 0;
        while !self.stop.load(Ordering::Relaxed) {
            let now = self.start.elapsed().as_nanos() as u64;
            let busy = match self.step(now) {
                PassOutcome::Busy => true,
                PassOutcome::Idle => false,
                PassOutcome::Disconnected => break,
            };
            passes = passes.wrapping_add(1);
            if (!busy || passes.is_multiple_of(KERNEL_STATS_PASSES))
                && kernel_read.elapsed() >= KERNEL_STATS_EVERY
            {
                self.read_kernel_stats();
                kernel_read = Instant::now();
            }
            if busy {
                self.counters.busy_poll();
                last_traffic = now;
                if spinning {
                    window = next_window(window, true, max_spin);
                    spinning = false;
                }
                if max_spin > 0 {
                    last_busy = Some(now);
                }
            } else {
                self.counters.idle_poll();
                if self.cfg.poll_mode == PollMode::Busy {
                    std::hint::spin_loop();
                    continue;
                }
                if last_busy.is_some_and(|t| now.saturating_sub(t) < window) {
                    spinning = true;
                    std::thread::yield_now();
                    continue;
                }
                if spinning {
                    window = next_window(window, false, max_spin);
                    spinning = false;
                }
                last_busy = None;
                // A worker quiet for a while sleeps longer: readiness and
                // the command eventfd wake it at once anyway, and what the
                // timeout is for (pending TX completions, the kernel
                // counters, the stop flag) is over or can wait.
                let timeout = if now.saturating_sub(last_traffic) > QUIET_NS {
                    self.cfg.idle_timeout.max(QUIET_IDLE_TIMEOUT)
                } else {
                    self.cfg.idle_timeout
                };
                if !self.idle_wait(timeout) {
                    break;
                }
            }
        }
        log::info!("worker {} stopped", self.cfg.id);
    }

    /// Apply every queued command; false when the control side is gone.
    /// Frames of closed queues are taken back first.
    fn apply_commands(&mut self) -> bool {
        while let Ok(frames) = self.given_back.try_recv() {
            self.take_back(frames);
        }
        loop {
            match self.cmds.try_recv() {
                Ok(cmd) => self.apply(cmd),
                Err(crossbeam::channel::TryRecvError::Empty) => return true,
                Err(crossbeam::channel::TryRecvError::Disconnected) => return false,
            }
        }
    }

    fn apply(&mut self, cmd: WorkerCmd<Q>) {
        match cmd {
            WorkerCmd::AddPort {
                port,
                queue,
                counters,
            } => {
                self.remove_port(port);
                let idx = port as usize;
                if self.slots.len() <= idx {
                    self.slots.resize_with(idx + 1, || Slot::Unknown);
                }
                match queue {
                    None => self.slots[idx] = Slot::NoQueue,
                    Some(mut queue) => {
                        self.slots[idx] = Slot::Active(self.queues.len());
                        let store = self.store_for(&mut queue);
                        let (frames, shared) =
                            (self.stores[store].frames, self.stores[store].shared);
                        let fill_target = if shared {
                            FILL_TARGET_MIN
                        } else {
                            (frames / 2).min(FILL_TARGET_MAX)
                        };
                        self.queues.push(Active {
                            port,
                            queue,
                            counters,
                            store,
                            pending: Vec::with_capacity(frames.min(PENDING_MAX)),
                            in_fill: 0,
                            in_tx: 0,
                            fill_target,
                            received: 0,
                        });
                        self.queues_changed();
                        let last = self.queues.len() - 1;
                        self.refill(last, true);
                    }
                }
            }
            WorkerCmd::RemovePort { port } => self.remove_port(port),
            WorkerCmd::Barrier { ack } => {
                // The control side may have given up waiting; nothing to do then.
                let _ = ack.send(self.cfg.id);
            }
        }
    }

    /// The store of `queue`'s pool, made (with a token of every frame)
    /// at the pool's first queue.
    fn store_for(&mut self, queue: &mut Q) -> usize {
        let id = queue.pool().id();
        let s = match self.stores.iter().position(|s| s.pool == id) {
            Some(s) => s,
            None => {
                // Room for every frame of the pool, so moving frames
                // between these lists never allocates.
                let frames = queue.pool().frame_count();
                self.stores.push(Store {
                    pool: id,
                    free: Vec::with_capacity(frames),
                    frames,
                    closing: 0,
                    shared: queue.pool().shared(),
                });
                self.stores.len() - 1
            }
        };
        // Tokens come once per pool: at its first queue, nothing later.
        queue.take_frames(&mut self.stores[s].free);
        s
    }

    /// Frames a closed queue handed back, onto their pool's free list.
    fn take_back(&mut self, frames: Vec<FrameOf<Q>>) {
        let Some(pool) = frames.first().map(Owned::pool) else {
            return;
        };
        let Some(store) = self.stores.iter_mut().find(|s| s.pool == pool) else {
            debug_assert!(false, "frames of a pool this worker never had");
            return;
        };
        debug_assert!(store.closing >= frames.len(), "more frames back than held");
        store.closing = store.closing.saturating_sub(frames.len());
        store.free.extend(frames);
    }

    fn remove_port(&mut self, port: PortId) {
        let Some(slot) = self.slots.get_mut(port as usize) else {
            return;
        };
        let old = std::mem::replace(slot, Slot::Unknown);
        let Slot::Active(idx) = old else { return };
        let gone = self.queues.swap_remove(idx);
        if let Some(moved) = self.queues.get(idx) {
            self.slots[moved.port as usize] = Slot::Active(idx);
        }
        // Commands are applied between passes: no frame in the RX batch,
        // none pending.
        debug_assert!(gone.pending.is_empty(), "port {port}: frames pending");
        let s = gone.store;
        let held = gone.queue.ring_frames();
        let last = !self.queues.iter().any(|a| a.store == s);
        let store = &mut self.stores[s];
        if store.shared {
            // Its rings' frames come back once the socket is closed.
            store.closing += held.fill_or_rx + held.tx_or_completion;
        } else if last {
            // The pool goes with its queue, frames and all.
            debug_assert!(
                store.free.len() + held.fill_or_rx + held.tx_or_completion == store.frames,
                "port {port}: frames lost"
            );
            self.stores.swap_remove(s);
            let moved = self.stores.len();
            for a in self.queues.iter_mut().filter(|a| a.store == moved) {
                a.store = s;
            }
        }
        // Closing the socket (and freeing a pool of its own) waits for the
        // kernel: 10-11 ms for an AF_XDP socket on a veth, during which
        // this worker would forward nothing. A thread of its own does it
        // and the worker goes on at once; the frames of a shared pool the
        // queue's rings held come back through `give_back`. No thread (the
        // system has none left): the queue goes with the refused closure,
        // and those frames are lost to the pool.
        let worker = self.cfg.id;
        let back = self.give_back.clone();
        let close = move || {
            let t = Instant::now();
            let frames = gone.queue.close();
            log::debug!(
                "worker {worker}: port {port} closed in {:?}, {} frames back",
                t.elapsed(),
                frames.len()
            );
            if !frames.is_empty() {
                // The worker is gone already when nobody listens.
                let _ = back.send(frames);
            }
        };
        let closer = std::thread::Builder::new()
            .name(format!("close-p{port}"))
            .spawn(close);
        if let Err(e) = closer {
            log::warn!(
                "worker {worker}: no thread to close port {port} ({e}); its frames are lost"
            );
        }
        self.queues_changed();
    }

    /// What the worker does about once a second ([`Worker::run`]; tests
    /// call it): close the queues whose device went
    /// ([`Worker::close_unbound`]), copy every socket's kernel counters
    /// into its port counters, halve the fill budget of each queue of a
    /// shared pool that received nothing since the last time, and publish
    /// the shared pool's census in the worker's counters.
    pub fn read_kernel_stats(&mut self) {
        self.close_unbound();
        for a in &mut self.queues {
            if let Some(values) = a.queue.kernel_stats() {
                a.counters.set_kernel(&values);
            }
            if self.stores[a.store].shared && std::mem::take(&mut a.received) == 0 {
                a.fill_target = (a.fill_target / 2).max(FILL_TARGET_MIN);
            }
        }
        if let Some(s) = self.stores.iter().position(|s| s.shared) {
            let c = self.census_of(s);
            let budget: usize = (self.queues.iter())
                .filter(|a| a.store == s)
                .map(|a| a.fill_target)
                .sum();
            self.counters.set_umem(&ferry_api::table::UmemStats {
                frames: c.pool as u64,
                free: c.free as u64,
                in_rings: (c.rings.fill_or_rx + c.rings.tx_or_completion) as u64,
                closing: c.closing as u64,
                fill_budget: budget as u64,
            });
        }
    }

    /// Close every queue whose device went under it (a pod's namespace
    /// deleted before its DEL), as if its port were removed: the frames
    /// its rings held come home instead of staying there until ferryd
    /// removes the port (with one UMEM per worker, a few such pods would
    /// starve the rest), traffic to it is lost as `port_gone`, and the
    /// port's stats say it is no longer attached.
    fn close_unbound(&mut self) {
        // Backwards: a removal moves the last queue, already looked at,
        // into the hole.
        for qi in (0..self.queues.len()).rev() {
            let a = &mut self.queues[qi];
            if !a.queue.device_gone() {
                continue;
            }
            let port = a.port;
            log::warn!(
                "worker {}: port {port}'s device is gone (its socket was unbound); queue closed",
                self.cfg.id
            );
            a.counters.mark_detached();
            self.remove_port(port);
        }
    }

    /// Wake on `waker` too when idle: the control thread writes it after
    /// every command.
    pub fn with_waker(mut self, waker: Arc<crate::io::poll::Waker>) -> Self {
        self.waker = Some(waker);
        self.queues_changed();
        self
    }

    fn queues_changed(&mut self) {
        self.pollfds = self
            .queues
            .iter()
            .filter_map(|a| a.queue.poll_fd())
            .chain(self.waker.as_ref().map(|w| w.fd()))
            .map(|fd: RawFd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
    }

    /// Top up queue `qi`'s fill ring from the free list.
    fn refill(&mut self, qi: usize, force: bool) {
        let a = &mut self.queues[qi];
        let store = &mut self.stores[a.store];
        let reserve = store.frames / 4;
        let free = &mut store.free;
        // A fill ring the kernel nearly emptied since the last refill gets
        // a larger budget, while the pool has the frames: the new budget
        // free, and a quarter of the pool kept for the other queues
        // (frames parked in a fill ring come back only as its queue
        // receives). Not the first fill of a new queue, forced, whose ring
        // is empty; not a queue that received nothing since, whose ring is
        // as it was left.
        if store.shared
            && !force
            && a.in_fill < a.fill_target
            && a.fill_target < FILL_TARGET_MAX
            && free.len() > (2 * a.fill_target).max(reserve)
            && a.queue.fill_room() + a.fill_target / 4 > a.queue.fill_capacity()
        {
            a.fill_target *= 2;
        }
        let missing = a.fill_target.saturating_sub(a.in_fill);
        let batched = !a.queue.fill_is_local();
        if missing == 0 || (!force && batched && missing < REFILL_MIN && a.in_fill > 0) {
            return;
        }
        let give = missing.min(free.len()).min(a.queue.fill_room());
        if give == 0 {
            return;
        }
        if a.queue.fill(free, give) == give {
            a.in_fill += give;
        }
        if let Err(e) = a.queue.kick_rx() {
            log::debug!("worker {}: rx wake-up on port {}: {e}", self.cfg.id, a.port);
        }
    }

    /// One pass over every queue; true if any frame moved.
    fn pass(&mut self, now_ns: u64) -> bool {
        let mut busy = false;
        let mut qi = 0;
        while qi < self.queues.len() {
            busy |= self.service(qi, now_ns);
            qi += 1;
        }
        busy
    }

    /// Reap, refill, receive and forward one batch on queue `qi`.
    fn service(&mut self, qi: usize, now_ns: u64) -> bool {
        // Completions: transmitted frames come back to their pool's free list.
        let (done, tx_busy) = {
            let a = &mut self.queues[qi];
            // Nothing in flight, nothing to reap: no look at the ring.
            let done = if a.in_tx > 0 {
                reap(a, &mut self.stores[a.store].free)
            } else {
                0
            };
            let tx_busy = a.in_tx > 0;
            if tx_busy {
                if let Err(e) = a.queue.kick_tx() {
                    log::debug!("worker {}: tx wake-up on port {}: {e}", self.cfg.id, a.port);
                }
            }
            (done, tx_busy)
        };
        self.refill(qi, false);

        let batch = self.cfg.batch;
        debug_assert!(self.rx.is_empty(), "the last batch was not consumed");
        let n = self.queues[qi].queue.rx(&mut self.rx, batch);
        let short = self.queues[qi].queue.take_short_reads();
        for _ in 0..short {
            self.queues[qi].counters.add_drop(DropReason::TapShortRead);
            self.counters.add_drop(DropReason::TapShortRead);
        }
        if n == 0 {
            return done > 0 || tx_busy;
        }
        let in_port = self.queues[qi].port;
        let chains = {
            let a = &mut self.queues[qi];
            a.in_fill = a.in_fill.saturating_sub(n);
            a.received += n;
            let pool = a.queue.pool();
            // One look at each frame: its bytes, and whether it continues
            // (each frame of a chain but its last). A chain is one packet,
            // and starts where a continued frame follows one that is not.
            let (mut rx_bytes, mut packets, mut chains, mut inside) = (0u64, 0u64, 0, false);
            for f in &self.rx {
                rx_bytes += pool.len_of(f) as u64;
                let more = pool.continues(f);
                chains += usize::from(more && !inside);
                packets += u64::from(!more);
                inside = more;
            }
            a.counters.add_rx(packets, rx_bytes);
            self.counters.add_rx(packets);
            chains
        };
        while self.jumbo.len() < chains {
            self.jumbo
                .push(vec![0; FRAME_HEADROOM + CHAIN_BYTES].into_boxed_slice());
        }

        // The pipeline: one snapshot, one timestamp for the whole batch.
        {
            let tables = self.tables.load();
            let pool = self.queues[qi].queue.pool();
            let mut frames: Vec<Frame<'_>> = recycle(std::mem::take(&mut self.frame_store));
            self.packets.clear();
            let mut jumbo = self.jumbo.iter_mut().enumerate();
            // Each token is borrowed mutably once: the buffers are disjoint.
            let mut tokens = self.rx.iter_mut();
            while let Some(f) = tokens.next() {
                if !pool.continues(f) {
                    let (len, offload) = (pool.len_of(f), pool.offload_of(f));
                    let (buf, headroom) = pool.buffer_mut(f);
                    frames.push(Frame::in_buffer(in_port, buf, headroom, len, offload));
                    self.packets.push(RxPacket::ONE);
                    continue;
                }
                // Counted above: there is a buffer for every chain.
                let Some((j, buf)) = jumbo.next() else {
                    debug_assert!(false, "a chain without a jumbo buffer");
                    break;
                };
                let (frames_in, len) = gather(pool, f, &mut tokens, &mut buf[FRAME_HEADROOM..]);
                frames.push(Frame::in_buffer(
                    in_port,
                    buf,
                    FRAME_HEADROOM,
                    len.unwrap_or(0),
                    Offload::NONE,
                ));
                self.packets.push(RxPacket {
                    frames: frames_in,
                    jumbo: Some(j),
                    too_big: len.is_none(),
                });
            }
            let np = self.packets.len();
            process_batch(&tables, now_ns, &mut frames, &mut self.verdicts[..np]);
            for (out, f) in self.outgoing.iter_mut().zip(frames.iter()) {
                *out = Outgoing {
                    start: f.headroom,
                    len: f.len,
                    offload: f.offload,
                    csum: f.csum,
                    outer: f.outer,
                };
            }
            self.frame_store = recycle(frames);
            for (v, p) in self.verdicts.iter_mut().zip(&self.packets) {
                if p.too_big {
                    *v = Verdict::Drop(DropReason::FrameTooBig);
                }
            }
        }

        // Verdicts: each frame (token) to one TX batch or back to the free
        // list; the compiler sees that each goes to at most one place. A
        // chain's frames go back at once: its packet is in a jumbo buffer.
        let mut rx = std::mem::take(&mut self.rx);
        let mut tokens = rx.drain(..);
        for (k, p) in self.packets.iter().enumerate() {
            let out = self.outgoing[k];
            let verdict = self.verdicts[k];
            // The original is counted as dropped; its ICMP error leaves by
            // the ingress port like any reply.
            if let Verdict::IcmpError { reason, .. } = verdict {
                self.queues[qi].counters.add_drop(reason);
                self.counters.add_drop(reason);
            }
            let j = match egress_of(&self.slots, qi, verdict) {
                Egress::Queue(j) => j,
                Egress::Denied { on, reason } => {
                    // Counted on the policed pod's queue, when this worker
                    // has one there, so denials show per pod.
                    self.stores[self.queues[qi].store]
                        .free
                        .extend(tokens.by_ref().take(p.frames));
                    self.queues[on].counters.add_drop(reason);
                    self.counters.add_drop(reason);
                    continue;
                }
                Egress::Lost(reason) => {
                    self.stores[self.queues[qi].store]
                        .free
                        .extend(tokens.by_ref().take(p.frames));
                    self.queues[qi].counters.add_drop(reason);
                    self.counters.add_drop(reason);
                    continue;
                }
            };
            let drop_reason = match p.jumbo {
                Some(jb) => {
                    self.stores[self.queues[qi].store]
                        .free
                        .extend(tokens.by_ref().take(p.frames));
                    let from = packet_of(&mut self.jumbo[jb], out);
                    let dst = &mut self.queues[j];
                    let free = &mut self.stores[dst.store].free;
                    emit(dst, free, from, out, &self.counters, self.cfg.id)
                }
                None => {
                    let Some(mut frame) = tokens.next() else {
                        debug_assert!(false, "fewer frames than packets");
                        break;
                    };
                    if j == qi {
                        // Replies and ICMP errors made in place, and frames
                        // forwarded to the port they came from (hairpin):
                        // back out of the ingress queue, by token.
                        let a = &mut self.queues[qi];
                        send_back(a, &mut self.stores[a.store].free, frame, out)
                    } else {
                        let (src, dst) = two_mut(&mut self.queues, qi, j);
                        let (wc, id) = (&*self.counters, self.cfg.id);
                        if src.store == dst.store {
                            // One pool (the worker's UMEM): the frame itself
                            // leaves by the egress queue, finished in place,
                            // as a reply does; no copy.
                            send_back(dst, &mut self.stores[src.store].free, frame, out)
                        } else {
                            let (sf, df) = two_mut(&mut self.stores, src.store, dst.store);
                            let lost = forward(src, dst, &mut df.free, &mut frame, out, wc, id);
                            sf.free.push(frame);
                            lost
                        }
                    }
                }
            };
            if !self.queues[j].pending.is_empty() && !self.dirty.contains(&j) {
                self.dirty.push(j);
            }
            if let Some(reason) = drop_reason {
                self.queues[qi].counters.add_drop(reason);
                self.counters.add_drop(reason);
            }
        }
        // Whole packets only, so nothing is left; a frame that were would
        // go back to the free list rather than be lost.
        self.stores[self.queues[qi].store].free.extend(tokens);
        self.rx = rx;
        self.flush(qi);
        true
    }

    /// Commit every TX batch built from ingress queue `qi`'s frames: one
    /// ring commit and at most one wake-up per egress queue.
    fn flush(&mut self, qi: usize) {
        while let Some(j) = self.dirty.pop() {
            let a = &mut self.queues[j];
            commit(a, &self.counters, self.cfg.id);
            // What does not fit in the ring is dropped (tx_ring_full), a
            // packet (a frame, or a chain) at a time.
            let pool = a.queue.pool();
            let unsent = a.pending.iter().filter(|f| !pool.continues(f)).count();
            self.stores[a.store].free.append(&mut a.pending);
            for _ in 0..unsent {
                self.queues[qi].counters.add_drop(DropReason::TxRingFull);
                self.counters.add_drop(DropReason::TxRingFull);
            }
        }
    }

    /// Sleep until a queue is readable, a command arrives (checked at least
    /// every idle timeout) or the timeout passes. False when the control side
    /// is gone.
    fn idle_wait(&mut self, timeout: Duration) -> bool {
        if self.pollfds.is_empty() {
            return match self.cmds.recv_timeout(timeout) {
                Ok(cmd) => {
                    self.apply(cmd);
                    true
                }
                Err(RecvTimeoutError::Timeout) => true,
                Err(RecvTimeoutError::Disconnected) => false,
            };
        }
        let ready = match crate::io::poll::poll(&mut self.pollfds, timeout) {
            Ok(n) => n,
            Err(e) => {
                if e.kind() != std::io::ErrorKind::Interrupted {
                    log::warn!("worker {}: poll failed: {e}", self.cfg.id);
                    std::thread::sleep(timeout);
                }
                0
            }
        };
        // A descriptor in error stays in error (a tap whose device was
        // deleted under us, until ferryd removes the port): stop polling it,
        // or every idle wait would return at once and the worker would spin.
        // A negative fd is ignored by poll(2); the list is rebuilt when the
        // ports change.
        if ready > 0 {
            if let Some(w) = &self.waker {
                if self
                    .pollfds
                    .last()
                    .is_some_and(|p| p.fd == w.fd() && p.revents & libc::POLLIN != 0)
                {
                    w.clear();
                }
            }
            for p in &mut self.pollfds {
                if p.fd >= 0 && p.revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 {
                    log::warn!(
                        "worker {}: fd {} reports an error; not polled until its port changes",
                        self.cfg.id,
                        p.fd
                    );
                    p.fd = -1;
                }
            }
        }
        true
    }
}

/// One packet of an RX batch: `frames` frames of it, received in order;
/// a chain (more than one) is copied whole into jumbo buffer `jumbo`,
/// unless it is larger than one (`too_big`, dropped `frame_too_big`).
#[derive(Debug, Clone, Copy)]
struct RxPacket {
    frames: usize,
    jumbo: Option<usize>,
    too_big: bool,
}

impl RxPacket {
    /// A packet in one frame, worked on in place.
    const ONE: RxPacket = RxPacket {
        frames: 1,
        jumbo: None,
        too_big: false,
    };
}

/// Copy the chain starting at `first` (the rest from `rest`, up to its
/// last frame) into `to`: how many frames it has, and its length (`None`
/// when it does not fit in `to`; every frame of it is taken anyway).
fn gather<'t, P: FramePool>(
    pool: &P,
    first: &'t mut Owned<P::Desc>,
    rest: &mut impl Iterator<Item = &'t mut Owned<P::Desc>>,
    to: &mut [u8],
) -> (usize, Option<usize>) {
    let mut frames = 0;
    let mut len = Some(0usize);
    let mut next = Some(first);
    while let Some(f) = next.take() {
        frames += 1;
        let more = pool.continues(f);
        let n = pool.len_of(f);
        let data = pool.buf_mut(f);
        len = len.and_then(|at| {
            let piece = data.get(..n)?;
            to.get_mut(at..at + n)?.copy_from_slice(piece);
            Some(at + n)
        });
        if more {
            next = rest.next();
        }
    }
    (frames, len)
}

/// Where a verdict sends a packet received on queue `qi`.
enum Egress {
    /// Out of this queue (`qi` itself for replies and hairpins).
    Queue(usize),
    /// Denied by policy: counted on queue `on` (the policed pod's, when
    /// this worker has one there).
    Denied { on: usize, reason: DropReason },
    /// Dropped for `reason`, counted on the ingress queue.
    Lost(DropReason),
}

fn egress_of(slots: &[Slot], qi: usize, verdict: Verdict) -> Egress {
    match verdict {
        Verdict::Reply | Verdict::IcmpError { .. } => Egress::Queue(qi),
        Verdict::Tx(port) => match slots.get(port as usize) {
            Some(Slot::Active(j)) => Egress::Queue(*j),
            Some(Slot::NoQueue) => Egress::Lost(DropReason::NoTxQueue),
            Some(Slot::Unknown) | None => Egress::Lost(DropReason::PortGone),
        },
        Verdict::Drop(reason) => Egress::Lost(reason),
        Verdict::Denied { port, reason } => Egress::Denied {
            on: match slots.get(port as usize) {
                Some(Slot::Active(j)) => *j,
                _ => qi,
            },
            reason,
        },
    }
}

/// Queue `a`'s pending frames on its TX ring (as many whole packets as
/// fit), count them and wake the kernel. The frames sent leave
/// `a.pending`; the rest stay there.
fn commit<Q: PortQueue>(a: &mut Active<Q>, wc: &WorkerCounters, worker: usize) {
    let mut want = a.pending.len().min(a.queue.tx_room());
    let pool = a.queue.pool();
    // Never part of a chain: the rest of it waits with what did not fit.
    while want > 0 && pool.continues(&a.pending[want - 1]) {
        want -= 1;
    }
    let sent_bytes: u64 = a.pending[..want]
        .iter()
        .map(|f| pool.len_of(f) as u64)
        .sum();
    let sent_packets = a.pending[..want]
        .iter()
        .filter(|f| !pool.continues(f))
        .count() as u64;
    // All `want` frames or none (the room was measured just now).
    let sent = if want > 0 {
        a.queue.tx(&mut a.pending, want)
    } else {
        0
    };
    if sent > 0 {
        a.in_tx += sent;
        a.counters.add_tx(sent_packets, sent_bytes);
        wc.add_tx(sent_packets);
        if let Err(e) = a.queue.kick_tx() {
            log::debug!("worker {worker}: tx wake-up on port {}: {e}", a.port);
        }
        let refused = a.queue.take_tx_errors();
        for _ in 0..refused {
            a.counters.add_drop(DropReason::TapWriteFailed);
            wc.add_drop(DropReason::TapWriteFailed);
        }
    }
}

/// Most rounds of commit + reap [`make_room`] tries (copy-mode TX sends a
/// few dozen frames per wake-up).
const MAKE_ROOM_ROUNDS: usize = 8;

/// Get `need` free frames and TX slots on `dst` for the segments of one
/// GSO frame: commit what is pending and reap completions, a bounded
/// number of times. Whatever is still missing is lost (`gso_tx_full`).
fn make_room<Q: PortQueue>(
    dst: &mut Active<Q>,
    free: &mut Vec<FrameOf<Q>>,
    need: usize,
    wc: &WorkerCounters,
    worker: usize,
) {
    for _ in 0..MAKE_ROOM_ROUNDS {
        if free.len() >= need && dst.pending.len() + need <= dst.queue.tx_room() {
            return;
        }
        commit(dst, wc, worker);
        reap(dst, free);
    }
}

/// Take `a`'s transmitted frames back onto `free` (its pool's); how many.
fn reap<Q: PortQueue>(a: &mut Active<Q>, free: &mut Vec<FrameOf<Q>>) -> usize {
    let done = a.queue.complete(free, MAX_BATCH);
    a.in_tx = a.in_tx.saturating_sub(done);
    done
}

/// What one [`Worker::step`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassOutcome {
    /// Some frame moved (received, transmitted or completed).
    Busy,
    /// Nothing to do.
    Idle,
    /// The control side is gone: the worker should end.
    Disconnected,
}

/// Where one pool's frames are between passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameCensus {
    /// Frames in the pool.
    pub pool: usize,
    /// Queues on the pool.
    pub queues: usize,
    /// In the adapter's rings of its queues.
    pub rings: RingFrames,
    /// On the worker's free list.
    pub free: usize,
    /// Waiting in the worker's TX batches (none after a pass).
    pub pending: usize,
    /// Held by the rings of removed queues still closing.
    pub closing: usize,
}

impl FrameCensus {
    /// Frames found somewhere.
    pub fn counted(&self) -> usize {
        self.rings.fill_or_rx
            + self.rings.tx_or_completion
            + self.free
            + self.pending
            + self.closing
    }

    /// Every frame found once: none lost, none twice.
    pub fn conserved(&self) -> bool {
        self.counted() == self.pool
    }
}

/// A received frame on its way out, as the pipeline left it: where its
/// data starts in the frame's buffer ([`FramePool::buffer_mut`]), its
/// length, header and checksum state.
#[derive(Debug, Clone, Copy)]
struct Outgoing {
    start: usize,
    len: usize,
    offload: Offload,
    csum: CsumState,
    /// Outer header bytes at `start` (`Frame::outer`); `offload` and
    /// `csum` are of the frame after them.
    outer: usize,
}

impl Default for Outgoing {
    fn default() -> Self {
        Outgoing {
            start: 0,
            len: 0,
            offload: Offload::NONE,
            csum: CsumState::Unknown,
            outer: 0,
        }
    }
}

/// What a queue's pool takes instead of finished frames. AF_XDP TX
/// checksum metadata (`EgressCaps::tx_csum`) is not used yet.
fn caps_of<P: FramePool>(pool: &P) -> EgressCaps {
    EgressCaps {
        offload: pool.takes_offload(),
        tx_csum: false,
    }
}

/// Send `frame` out of `a` by token: a reply, a frame forwarded to the
/// port it came from, or one forwarded to another port of the same pool.
/// Finished for `a` in place and queued on `a.pending`, or, with the drop
/// reason returned when it cannot leave, given back to `free` (its pool's).
fn send_back<Q: PortQueue>(
    a: &mut Active<Q>,
    free: &mut Vec<FrameOf<Q>>,
    mut frame: FrameOf<Q>,
    out: Outgoing,
) -> Option<DropReason> {
    match finish_in_place(a.queue.pool(), &mut frame, out) {
        None => {
            a.pending.push(frame);
            None
        }
        Some(reason) => {
            free.push(frame);
            Some(reason)
        }
    }
}

/// [`send_back`]'s work on the frame: finish it for its own pool and set
/// its length and header.
fn finish_in_place<P: FramePool>(
    pool: &P,
    frame: &mut Owned<P::Desc>,
    out: Outgoing,
) -> Option<DropReason> {
    let (buf, data_at) = pool.buffer_mut(frame);
    let start = out.start.min(buf.len());
    let len = out.len.min(buf.len() - start);
    let data = &mut buf[start..start + len];
    let inner = &mut data[out.outer.min(len)..];
    let header = match offload::finish(inner, out.csum, &out.offload, caps_of(pool)) {
        Ok(Finished::Send(header)) => header,
        // Only tap frames are GSO, and taps take them as they are.
        Ok(Finished::Segment(_)) => return Some(DropReason::GsoUnsupported),
        Err(reason) => return Some(reason),
    };
    if start != data_at {
        // A header was prepended: the token names the data start its
        // pool gave the frame, so the frame moves there (no stage does this
        // on a frame sent back yet; a pool able to move a descriptor's data
        // start would save the move).
        if data_at + len > buf.len() {
            return Some(DropReason::FrameTooBig);
        }
        buf.copy_within(start..start + len, data_at);
    }
    pool.set_len(frame, len);
    pool.set_offload(frame, header);
    None
}

/// Move `frame` of `src` to `dst` ([`emit`]). `frame` stays the caller's.
/// Returns the drop reason when the frame (or part of it) was lost.
fn forward<Q: PortQueue>(
    src: &mut Active<Q>,
    dst: &mut Active<Q>,
    dst_free: &mut Vec<FrameOf<Q>>,
    frame: &mut FrameOf<Q>,
    out: Outgoing,
    wc: &WorkerCounters,
    worker: usize,
) -> Option<DropReason> {
    // The egress frames are other frames (of this pool or another), and
    // `frame` is on no list: `buf` is the only reference into its chunk.
    let (buf, _) = src.queue.pool().buffer_mut(frame);
    emit(dst, dst_free, packet_of(buf, out), out, wc, worker)
}

/// The packet's bytes in `buf`, where the pipeline left them.
fn packet_of(buf: &mut [u8], out: Outgoing) -> &mut [u8] {
    let start = out.start.min(buf.len());
    let from = &mut buf[start..];
    let len = out.len.min(from.len());
    &mut from[..len]
}

/// Send packet `from` out of `dst`, finished for `dst` by
/// [`offload::finish`]: written at once if `dst` can transmit from our
/// memory (taps), else copied into free frames of `dst`'s pool and added
/// to `dst.pending`: one frame; a chain of them when it is larger than a
/// frame and `dst` takes chains; a GSO frame for a port without offloads
/// cut into segments, one frame each. Returns the drop reason when the
/// packet (or part of it) was lost.
fn emit<Q: PortQueue>(
    dst: &mut Active<Q>,
    free: &mut Vec<FrameOf<Q>>,
    from: &mut [u8],
    out: Outgoing,
    wc: &WorkerCounters,
    worker: usize,
) -> Option<DropReason> {
    let caps = caps_of(dst.queue.pool());
    let len = from.len();
    // An encapsulated frame is finished (and segmented) as its inner
    // frame; each segment gets its own copy of the outer headers.
    let (outer, inner) = from.split_at_mut(out.outer.min(len));

    let header = match offload::finish(inner, out.csum, &out.offload, caps) {
        Ok(Finished::Send(header)) => header,
        Ok(Finished::Segment(plan)) => {
            make_room(dst, free, plan.count, wc, worker);
            for s in 0..plan.count {
                let Some(mut e) = free.pop() else {
                    return Some(DropReason::GsoTxFull);
                };
                let dp = dst.queue.pool();
                let to = dp.buf_mut(&mut e);
                match write_segment(outer, inner, &plan, s, to) {
                    Some(n) => {
                        dp.set_len(&mut e, n);
                        dp.set_continues(&mut e, false);
                        dst.pending.push(e);
                    }
                    None => {
                        free.push(e);
                        return Some(DropReason::FrameTooBig);
                    }
                }
            }
            return None;
        }
        Err(reason) => return Some(reason),
    };
    let from: &[u8] = from;

    // A tap is written straight from the ingress frame (no egress frame,
    // no copy of ours; the kernel copies during the call).
    if caps.offload {
        if let Some(written) = dst.queue.tx_direct(from, header) {
            if !written {
                return Some(DropReason::TapWriteFailed);
            }
            dst.counters.add_tx(1, len as u64);
            wc.add_tx(1);
            return None;
        }
    }
    let Some(mut e) = free.pop() else {
        return Some(DropReason::NoEgressFrame);
    };
    let dp = dst.queue.pool();
    let to = dp.buf_mut(&mut e);
    if len > to.len() {
        let per_frame = to.len();
        free.push(e);
        return if dp.takes_chains() {
            emit_chain(dst, free, from, per_frame, wc, worker)
        } else {
            Some(DropReason::FrameTooBig)
        };
    }
    to[..len].copy_from_slice(from);
    dp.set_len(&mut e, len);
    dp.set_continues(&mut e, false);
    // Pools that take no offloads ignore the header.
    dp.set_offload(&mut e, header);
    dst.pending.push(e);
    None
}

/// Copy `from` into a chain of `dst`'s frames of `per_frame` bytes each
/// (every one but the last marked as continued) and add it to
/// `dst.pending`: the whole chain or, with the reason returned, nothing.
fn emit_chain<Q: PortQueue>(
    dst: &mut Active<Q>,
    free: &mut Vec<FrameOf<Q>>,
    from: &[u8],
    per_frame: usize,
    wc: &WorkerCounters,
    worker: usize,
) -> Option<DropReason> {
    let need = from.len().div_ceil(per_frame.max(1));
    if per_frame == 0 || need > crate::io::afxdp::MAX_CHAIN {
        return Some(DropReason::FrameTooBig);
    }
    make_room(dst, free, need, wc, worker);
    let Some(first) = free.len().checked_sub(need) else {
        return Some(DropReason::NoEgressFrame);
    };
    let dp = dst.queue.pool();
    for (i, (piece, mut e)) in from.chunks(per_frame).zip(free.drain(first..)).enumerate() {
        dp.buf_mut(&mut e)[..piece.len()].copy_from_slice(piece);
        dp.set_len(&mut e, piece.len());
        dp.set_continues(&mut e, i + 1 < need);
        dst.pending.push(e);
    }
    None
}

/// Write segment `s` of `inner` (cut as `plan` says) into `to`, behind a
/// copy of `outer` adjusted to the segment (nothing when `outer` is
/// empty). Returns the bytes written, `None` when `to` is too small.
fn write_segment(
    outer: &[u8],
    inner: &[u8],
    plan: &offload::TcpGso,
    s: usize,
    to: &mut [u8],
) -> Option<usize> {
    if to.len() < outer.len() {
        return None;
    }
    let (head, rest) = to.split_at_mut(outer.len());
    let n = offload::write_tcp_segment(inner, plan, s, rest)?;
    if !outer.is_empty() {
        head.copy_from_slice(outer);
        vxlan::fix_outer(head, &rest[..n]);
    }
    Some(outer.len() + n)
}

/// A worker thread that ended without being asked to (it panicked, or its
/// loop returned while the stop flag was clear). The dataplane cannot go on
/// without it: its queues are gone and every later update would wait for
/// it at the barrier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("worker {worker} {cause}")]
pub struct WorkerFailure {
    pub worker: usize,
    /// "panicked: <message>" or what else happened.
    pub cause: String,
}

/// The message of a panic payload (`panic!` with a literal or a format).
fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

/// Start a worker thread, pinned to `cfg.cpu` when given. If the worker
/// ends without its stop flag set (a panic included), a [`WorkerFailure`]
/// is sent on `failures` as the thread's last act.
pub fn spawn<Q: PortQueue>(
    worker: Worker<Q>,
    failures: Sender<WorkerFailure>,
) -> std::io::Result<JoinHandle<()>> {
    let id = worker.cfg.id;
    let stop = Arc::clone(&worker.stop);
    let name = format!("ferry-worker-{id}");
    std::thread::Builder::new().name(name).spawn(move || {
        if let Some(cpu) = worker.cfg.cpu {
            if !core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
                log::warn!("worker {id}: could not pin to cpu {cpu}");
            }
        }
        // Unwind safety: on a panic the worker (its queues and frames) is
        // dropped during the unwind and nothing of it is used again.
        let ended = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| worker.run()));
        let cause = match ended {
            Err(payload) => format!("panicked: {}", panic_message(payload.as_ref())),
            Ok(()) if !stop.load(Ordering::Relaxed) => "stopped without being asked to".into(),
            Ok(()) => return,
        };
        // Nobody listening means the dataplane is gone already.
        let _ = failures.send(WorkerFailure { worker: id, cause });
    })
}

#[cfg(test)]
mod poll_mode_tests {
    use super::*;

    #[test]
    fn the_adaptive_window_doubles_on_a_catch_and_halves_on_a_miss() {
        let max = 100_000;
        let min = MIN_ADAPTIVE_SPIN.as_nanos() as u64;
        assert_eq!(next_window(max, false, max), 50_000);
        assert_eq!(next_window(50_000, true, max), max);
        assert_eq!(next_window(max, true, max), max, "never above the maximum");
        let mut w = max;
        for _ in 0..20 {
            w = next_window(w, false, max);
        }
        assert_eq!(w, min, "never below the minimum");
        // A request/response pair (one catch, one miss per exchange) keeps
        // the window where it is.
        let steady = next_window(next_window(50_000, true, max), false, max);
        assert_eq!(steady, 50_000);
        assert_eq!(next_window(0, true, 0), 0, "no spinning configured");
        for name in ["busy", "adaptive", "interrupt"] {
            assert!(PollMode::from_name(name).is_some());
        }
        assert_eq!(PollMode::from_name("fast"), None);
    }
}
