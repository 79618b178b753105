//! The AF_XDP adapter: the XDP programs (aya) that steer a port's frames to
//! our sockets, and the sockets themselves (xsk-rs). With `tap.rs`, where
//! the crate's `unsafe` for real I/O lives.
//!
//! Per port, first the checks of its kind: a pod veth or the host port
//! must pass [`crate::io::link::check_veth`] (a veth; a pod's with its peer
//! in another namespace) and gets `xdp-progs/redirect.c` (every frame to
//! the socket); the uplink must pass [`crate::io::uplink::check_name`] and
//! the channel policy ([`crate::io::uplink::fit_channels`]) and gets
//! `xdp-progs/uplink.c` (only ferry's traffic to the sockets), its maps
//! filled before it is attached. Veths and the host port share one copy
//! of the redirect program (loaded at the first such port, kept for the
//! process; [`SharedRedirect`]): attaching a program already attached
//! elsewhere costs ~30 us, a new one ~10 ms (the kernel rebuilds its XDP
//! dispatcher, with an RCU grace period, whenever the set of attached
//! programs changes), most of what a veth ADD cost beyond the bridge's.
//! Each such port holds a slot: `ferry_ports` maps its interface index to
//! it, and its sockets are the `xsks` entries `slot * 64 + queue`. The
//! uplink's program is its own, with its own maps. Then, the same for both
//! ([`AfXdpBackend::attach_and_bind`]): one socket per worker bound to queue `i` of the
//! interface with `XDP_USE_NEED_WAKEUP` and libxdp's own program load
//! inhibited, down a mode ladder (OVS's): attach native (driver) XDP; on
//! the uplink, bind the first socket `XDP_ZEROCOPY` and, if the driver
//! refuses, `XDP_COPY`; if native attach fails, generic (SKB) XDP and copy
//! mode. The mode is reported as `native-zerocopy`, `native-copy` or
//! `generic-copy` ([`XdpAttachment::mode`]). Veth ports skip the zero-copy
//! attempt (veth has no zero-copy, and a failed bind costs a UMEM).
//!
//! One UMEM per worker for the sockets of every pod veth and the host port
//! ([`WorkerUmem`], `XDP_SHARED_UMEM`, fill and completion rings per
//! socket), so memory does not grow with pods. libxdp turns the UMEM's own
//! file descriptor into the first socket created on it and never closes it
//! while the UMEM lives, and the kernel binds a shared socket only while
//! that first one is bound: the first is an anchor bound to `lo` of a
//! network namespace of its own, never a pod's. A closed socket's frames
//! (those its rings held, which the kernel never returns) are handed back
//! to the worker ([`XskRings::close`]). The uplink's sockets keep a UMEM
//! each ([`AfXdpBackend::frames_per_queue`]): a UMEM is zero-copy or copy
//! as a whole, and a NIC may be zero-copy where a veth never is. Every
//! UMEM has the same frame layout (2 KiB chunks).
//!
//! Memory: workers × `frames_per_worker` × FRAME_SIZE (2048 bytes; 16384
//! frames, 32 MiB, by default), plus per socket its four rings (2 × 1024 ×
//! 16 bytes for RX and TX, 2 × 1024 × 8 for fill and completion: 48 KiB),
//! a read buffer of 1040 descriptors and a bit per frame of the UMEM; the
//! uplink, workers
//! × `frames_per_queue` (2048) frames. The rings hold 1024 descriptors
//! because a TCP sender's burst outruns smaller ones: with 512-entry rings
//! (half the pool in the fill ring) the pod's host veth counted one
//! `rx_queue_0_drops` (failed redirect into the socket) per TCP retransmit,
//! thousands per second of iperf3; with 1024 none were seen.

use std::ffi::CString;
use std::num::NonZeroU32;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::{fs, io};

use aya::maps::XskMap;
use aya::programs::{Xdp, XdpFlags};
use aya::{Ebpf, EbpfError, EbpfLoader};
use xsk_rs::config::{
    BindFlags, FrameSize, Interface, LibxdpFlags, QueueSize, SocketConfig, UmemConfig,
};
use xsk_rs::{CompQueue, FillQueue, FrameDesc, RxQueue, Socket, TxQueue, Umem};

use crate::io::backend::NodeQueue;
use crate::io::port::{
    valid_ifname, Holds, Opened, Owned, PoolId, PortBackend, PortError, PortKind, PortSpec,
    RingFrames,
};

/// The compiled `xdp-progs/redirect.c` (see build.rs).
static REDIRECT_PROG: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/redirect.bpf.o"));
const REDIRECT_NAME: &str = "ferry_redirect";
/// The XSKMAP of both programs: keyed by RX queue (uplink), by slot * 64 +
/// RX queue (the shared redirect program).
const MAP_NAME: &str = "xsks";
/// The shared redirect program's interface index -> slot map.
const PORTS_MAP: &str = "ferry_ports";
/// Ports the shared redirect program can tell apart (`FERRY_PORT_SLOTS`
/// in redirect.c).
pub const PORT_SLOTS: u32 = 1024;

/// One of the programs of `xdp-progs/`: its object and its function.
#[derive(Clone, Copy)]
struct Program {
    object: &'static [u8],
    name: &'static str,
}

const REDIRECT: Program = Program {
    object: REDIRECT_PROG,
    name: REDIRECT_NAME,
};
const UPLINK: Program = Program {
    object: crate::io::uplink::UPLINK_PROG,
    name: crate::io::uplink::PROG_NAME,
};

/// How a port's sockets are bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindMode {
    /// `XDP_ZEROCOPY`: the driver's rings fill the UMEM directly.
    ZeroCopy,
    /// `XDP_COPY`: the kernel copies each frame into the UMEM.
    Copy,
}
/// `max_entries` of the XSKMAP: queues beyond it cannot be served.
pub const MAX_QUEUES: u32 = 64;

/// UMEM chunk size: 256 bytes of XDP headroom + 1792 bytes of frame.
pub const FRAME_SIZE: u32 = 2048;
/// Headroom the kernel keeps in front of the frame in every chunk
/// (`XDP_PACKET_HEADROOM`; our own `frame_headroom` is 0).
///
/// It is also the frames' headroom for us ([`FramePool::buffer_mut`]):
/// a chunk is laid out as the UMEM's `frame_headroom` (0), then these 256
/// bytes, then the data (xsk-rs `UmemConfig`, the kernel's
/// `xp_init_xskb_addr`), so they are the bytes right in front of the data,
/// and once a descriptor is out of the RX ring the whole chunk is ours
/// (copy mode writes only the data; our XDP program moves neither the data
/// start nor metadata into it). A `frame_headroom` would sit at the start
/// of the chunk, 256 bytes away from the data, and only shorten it.
pub const XDP_PACKET_HEADROOM: u32 = 256;
const _: () = assert!(XDP_PACKET_HEADROOM as usize >= crate::core::pipeline::FRAME_HEADROOM);
/// The largest pod MTU a veth on a plain (not `xdp.frags`) XDP program may
/// have on this kernel (6.18, 4 KiB pages): "mtu greater than device
/// maximum" above it (DESIGN.md, performance levers). Our redirect program
/// is an `xdp.frags` one, whose cap is ~73000.
pub const VETH_XDP_MAX_MTU: u32 = 3506;
/// Bytes of a frame one chunk holds: the chunk less the kernel's headroom.
pub const CHUNK_DATA: u32 = FRAME_SIZE - XDP_PACKET_HEADROOM;
/// The most descriptors one packet of a veth port spans (AF_XDP
/// multi-buffer, `XDP_USE_SG`). Copy-mode TX builds one skb per packet, the
/// first descriptor as its head and each further one a page fragment, and
/// refuses a packet of more fragments than an skb has (`MAX_SKB_FRAGS`,
/// 17); 16 keeps below it.
pub const MAX_CHAIN: usize = 16;
/// The largest pod MTU (L3 bytes) a veth port carries: a frame must fit a
/// chain of [`MAX_CHAIN`] chunks' data, 16 x 1792 - 14 = 28658 (sockets
/// are bound with `XDP_USE_SG`; the `xdp.frags` program caps the veth
/// itself far above).
pub const MAX_POD_MTU: u32 = MAX_CHAIN as u32 * CHUNK_DATA - crate::core::wire::ETH_HDR_LEN as u32;
/// The largest L3 packet an uplink socket's frame holds: one chunk's data
/// less the Ethernet header, 1778 (the uplink's program is a plain one and
/// its sockets take no chains).
pub const UPLINK_FRAME_MTU: u32 = CHUNK_DATA - crate::core::wire::ETH_HDR_LEN as u32;
/// `xdp_desc.options`: more descriptors of the same packet follow (read
/// with xsk-rs's `FrameDesc::has_more_frames`, which keeps its own copy
/// private).
const XDP_PKT_CONTD: u32 = 1;
/// Size of each of a socket's four rings.
pub const RING_SIZE: u32 = 1024;

/// The frames of one UMEM: each frame's descriptor as the UMEM made it
/// (frame `i` at chunk `i`), the pool id their tokens carry, and whether
/// the tokens were issued. Shared by every socket on the UMEM.
struct UmemFrames {
    descs: Box<[FrameDesc]>,
    id: PoolId,
    issued: AtomicBool,
    /// A worker's UMEM, shared by its sockets on several ports
    /// ([`WorkerUmem`]): a closed socket's frames come back to the worker
    /// ([`XskRings::close`]) instead of going with the UMEM.
    shared: bool,
}

impl UmemFrames {
    fn new(descs: Vec<FrameDesc>, shared: bool) -> Arc<UmemFrames> {
        Arc::new(UmemFrames {
            descs: descs.into_boxed_slice(),
            id: PoolId::fresh(),
            issued: AtomicBool::new(false),
            shared,
        })
    }

    /// The frame a descriptor of this UMEM names (aligned chunks of
    /// [`FRAME_SIZE`]).
    fn index_of(d: &FrameDesc) -> usize {
        d.addr() / FRAME_SIZE as usize
    }
}

/// One worker's UMEM, shared by its sockets on every pod veth and the host
/// port (`XDP_SHARED_UMEM`, each socket with fill and completion rings of
/// its own): its frames are the worker's, not a port's, so memory does not
/// grow with pods.
///
/// libxdp makes the UMEM's own file descriptor the first socket created on
/// it and closes it only with the UMEM, and the kernel binds a shared
/// socket only while that first one is bound. So the first socket is an
/// anchor that lives as long as the UMEM: bound (copy mode, multi-buffer,
/// need-wakeup, which every later socket inherits) to `lo` of a network
/// namespace of its own, made for it and kept alive by the socket alone,
/// where no XDP program ever redirects a frame to it. No pod's port is the
/// anchor, so every port can be closed and its interface bound again.
pub struct WorkerUmem {
    /// The anchor's rings (the socket goes with the last of them); before
    /// `umem`, whose last handle deletes the UMEM.
    _anchor: (TxQueue, RxQueue, FillQueue, CompQueue),
    umem: Umem,
    frames: Arc<UmemFrames>,
}

impl WorkerUmem {
    /// A UMEM of `frames` frames and its anchor socket, made on a thread of
    /// its own that moves into a new network namespace first (the UMEM's
    /// socket, and so the anchor, belong to that namespace). The calling
    /// thread's namespace is untouched.
    pub fn new(frames: u32) -> Result<WorkerUmem, String> {
        std::thread::Builder::new()
            .name("ferry-umem".into())
            .spawn(move || {
                // SAFETY: unshare(2) with CLONE_NEWNET changes only this
                // thread's network namespace; the thread ends right after.
                if unsafe { libc::unshare(libc::CLONE_NEWNET) } < 0 {
                    return Err(format!(
                        "a network namespace for the UMEM's anchor socket: {}",
                        io::Error::last_os_error()
                    ));
                }
                let (umem, descs) = Umem::new(
                    umem_config().map_err(|e| e.to_string())?,
                    NonZeroU32::new(frames.max(2 * RING_SIZE)).unwrap_or(NonZeroU32::MIN),
                    false,
                )
                .map_err(|e| format!("UMEM of {frames} frames: {e}"))?;
                let ring = QueueSize::new(RING_SIZE).map_err(|e| e.to_string())?;
                let lo: Interface = "lo"
                    .parse()
                    .map_err(|e: std::ffi::NulError| e.to_string())?;
                // SAFETY: the UMEM is fresh, so this is its first socket
                // (libxdp's own program load is inhibited anyway).
                let (tx, rx, rings) = unsafe {
                    Socket::new(socket_config_in(ring, BindMode::Copy, true), &umem, &lo, 0)
                }
                .map_err(|e| format!("the UMEM's anchor socket on lo: {e}"))?;
                let (fill, comp) =
                    rings.ok_or("libxdp returned no fill/completion rings for a new UMEM")?;
                Ok(WorkerUmem {
                    _anchor: (tx, rx, fill, comp),
                    umem,
                    frames: UmemFrames::new(descs, true),
                })
            })
            .map_err(|e| format!("a thread to make the UMEM: {e}"))?
            .join()
            .map_err(|_| "the thread making the UMEM panicked".to_string())?
    }

    pub fn frame_count(&self) -> usize {
        self.frames.descs.len()
    }
}

/// How long a bind refused with EBUSY or EINVAL is tried again, from the
/// first refusal: a closing socket of the same queue is gone within ~10
/// ms, a foreign one never.
const BUSY_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Whether the kernel refused a socket's bind as it does while the queue's
/// previous socket is still closing: EBUSY (the queue is bound), or, on a
/// shared UMEM, EINVAL (libxdp still had that queue's context, so the new
/// socket had no fill and completion rings of its own).
fn busy(e: &dyn std::error::Error) -> bool {
    matches!(
        e.source()
            .and_then(|c| c.downcast_ref::<io::Error>())
            .and_then(io::Error::raw_os_error),
        Some(libc::EBUSY | libc::EINVAL)
    )
}

/// An error with the one it came from (xsk-rs keeps the errno there).
fn with_cause(e: &dyn std::error::Error) -> String {
    match e.source() {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

/// The frame layout of every UMEM: chunks of [`FRAME_SIZE`], the kernel's
/// headroom only, rings of [`RING_SIZE`].
fn umem_config() -> Result<UmemConfig, String> {
    let ring = QueueSize::new(RING_SIZE).map_err(|e| e.to_string())?;
    UmemConfig::builder()
        .frame_size(FrameSize::new(FRAME_SIZE).map_err(|e| e.to_string())?)
        .fill_queue_size(ring)
        .comp_queue_size(ring)
        .frame_headroom(0)
        .build()
        .map_err(|e| e.to_string())
}

/// A socket's view of its UMEM: a [`WorkerUmem`] shared with the worker's
/// other sockets, or one of its own (the uplink's).
pub struct XskPool {
    umem: Umem,
    frames: Arc<UmemFrames>,
    /// Bound with `XDP_USE_SG`: a packet may span several frames.
    chains: bool,
}

impl XskPool {
    pub fn id(&self) -> PoolId {
        self.frames.id
    }

    pub fn frame_count(&self) -> usize {
        self.frames.descs.len()
    }

    /// Whether other sockets share the UMEM.
    pub fn shared(&self) -> bool {
        self.frames.shared
    }

    /// Push a token of every frame onto `out` the first time any socket
    /// of the UMEM is asked; nothing later. How many.
    pub fn take_frames<D: Holds<FrameDesc>>(&mut self, out: &mut Vec<Owned<D>>) -> usize {
        if self.frames.issued.swap(true, Ordering::AcqRel) {
            return 0;
        }
        out.reserve(self.frames.descs.len());
        for d in self.frames.descs.iter() {
            // SAFETY: each frame's descriptor, once (`issued` was clear
            // and is set now, for every socket of the UMEM); no ring holds
            // any frame yet.
            out.push(unsafe { Owned::from_raw(D::wrap(*d), self.frames.id) });
        }
        self.frames.descs.len()
    }

    fn own<'a, D: Holds<FrameDesc>>(&self, frame: &'a Owned<D>) -> Option<&'a FrameDesc> {
        (frame.pool() == self.frames.id)
            .then(|| frame.desc().get())
            .flatten()
    }

    pub fn frame_len<D: Holds<FrameDesc>>(&self, frame: &Owned<D>) -> usize {
        self.own(frame).map_or(0, |d| d.lengths().data())
    }

    pub fn frame_buf<'a, D: Holds<FrameDesc>>(&'a self, frame: &'a mut Owned<D>) -> &'a mut [u8] {
        let Some(desc) = self.own(frame) else {
            return &mut [];
        };
        let mut d = *desc;
        // SAFETY: `d` names a frame of this UMEM (the pool id is checked
        // above; descriptors come only from this UMEM's rings and
        // `Umem::new`), and `frame` is its only token, so neither the
        // kernel (no ring holds it) nor any other reference touches its
        // memory while the `&mut` borrow of the token lasts.
        let mut data = unsafe { self.umem.data_mut(&mut d) };
        let cap = data.cursor().buf_len();
        let ptr = data.contents_mut().as_mut_ptr();
        // SAFETY: `ptr` is the start of this frame's data segment, which is
        // `cap` bytes long inside the UMEM mapping; the mapping lives as long
        // as `self.umem`, which outlives the returned borrow of `self`.
        unsafe { std::slice::from_raw_parts_mut(ptr, cap) }
    }

    /// The frame's whole chunk and where its data starts in it: the
    /// [`XDP_PACKET_HEADROOM`] in front of the data is ours once the frame
    /// is out of the RX ring. Empty and 0 for a token of another pool.
    pub fn frame_buffer<'a, D: Holds<FrameDesc>>(
        &'a self,
        frame: &'a mut Owned<D>,
    ) -> (&'a mut [u8], usize) {
        // The chunk starts at the aligned offset below the data (aligned
        // mode: chunks of FRAME_SIZE, a power of two, from the UMEM's start).
        let Some(headroom) = self.own(frame).map(|d| d.addr() % FRAME_SIZE as usize) else {
            return (&mut [], 0);
        };
        let data = self.frame_buf(frame);
        let len = headroom + data.len();
        // SAFETY: the `headroom` bytes in front of the data segment are the
        // start of the same chunk of the UMEM mapping (see
        // `XDP_PACKET_HEADROOM`), which no ring holds while the token
        // exists, so they are the token's like the rest of the frame; the
        // slice ends where the data segment does, and borrows the token
        // mutably for as long as `data` did.
        let whole = unsafe { std::slice::from_raw_parts_mut(data.as_mut_ptr().sub(headroom), len) };
        (whole, headroom)
    }

    /// Whether more frames of the same packet follow this one
    /// (`XDP_PKT_CONTD`, as received or as set for TX).
    pub fn frame_continues<D: Holds<FrameDesc>>(&self, frame: &Owned<D>) -> bool {
        self.own(frame).is_some_and(FrameDesc::has_more_frames)
    }

    /// Transmit `frame` as followed by more of its packet (`more`), or as
    /// a packet's last (or only) frame.
    pub fn set_frame_continues<D: Holds<FrameDesc>>(&self, frame: &mut Owned<D>, more: bool) {
        if frame.pool() != self.frames.id {
            return;
        }
        // SAFETY: only the descriptor's options change, never the frame
        // it names.
        if let Some(d) = (unsafe { frame.desc_mut() }).get_mut() {
            d.set_options(if more { XDP_PKT_CONTD } else { 0 });
        }
    }

    /// Whether the socket takes and delivers packets as chains of frames.
    pub fn takes_chains(&self) -> bool {
        self.chains
    }

    pub fn set_frame_len<D: Holds<FrameDesc>>(&self, frame: &mut Owned<D>, len: usize) {
        if frame.pool() != self.frames.id {
            return;
        }
        // SAFETY: only the length is changed, never the frame named.
        let Some(d) = (unsafe { frame.desc_mut() }).get_mut() else {
            return;
        };
        // SAFETY: as for `frame_buf`: the frame is this UMEM's and the
        // token's; only the descriptor's length changes.
        unsafe { self.umem.data_mut(d) }.cursor().set_pos(len);
    }
}

/// The four rings of one AF_XDP socket. Must be dropped before the UMEM
/// they were made on ([`XskQueue`] and [`crate::io::backend::NodeQueue`]
/// declare them first).
pub struct XskRings {
    tx: TxQueue,
    rx: RxQueue,
    fill: FillQueue,
    comp: CompQueue,
    /// The UMEM's pool id: tokens made from these rings are of that pool.
    pool: PoolId,
    /// Bare descriptors of one ring call (xsk-rs takes and fills slices).
    scratch: Vec<FrameDesc>,
    /// Where the RX and completion rings are read into: made once, at
    /// its full size, so a read of an empty ring writes nothing (a pass
    /// over a hundred idle queues once spent most of its time resizing a
    /// vector for each read).
    inbox: Box<[FrameDesc]>,
    /// The start of a packet received but not yet whole (its chain was
    /// cut by the batch's end): handed out with the rest of it, so `rx`
    /// yields whole packets only. Counted as in the fill ring.
    carry: Vec<FrameDesc>,
    /// Frames given to the fill ring and not yet received.
    in_fill: usize,
    /// Frames given to the TX ring and not yet completed.
    in_tx: usize,
    /// A bit per frame of the UMEM: given to this socket's fill or TX ring
    /// and not yet received or completed (the carried chain start too).
    /// Those the kernel never gave back when the socket closes go back to
    /// the worker ([`XskRings::close`]).
    held: Vec<u64>,
    frames: Arc<UmemFrames>,
    /// The kernel unbound the socket ([`XskRings::device_gone`]).
    gone: bool,
}

/// One AF_XDP socket (worker `i` on queue `i` of a port) with its UMEM.
pub struct XskQueue {
    rings: XskRings,
    pool: XskPool,
}

impl XskQueue {
    /// The rings and the UMEM, for an owner that keeps the rings' drop
    /// before the pool's ([`crate::io::backend::NodeQueue`], the one port
    /// type the workers drive).
    pub fn into_parts(self) -> (XskRings, XskPool) {
        (self.rings, self.pool)
    }
}

/// Copy the bare descriptors of `frames` into `scratch`; false (and
/// `scratch` unusable) if one is not a frame of pool `pool`, which no ring
/// of that UMEM may be given.
fn bare<D: Holds<FrameDesc>>(
    frames: &[Owned<D>],
    pool: PoolId,
    scratch: &mut Vec<FrameDesc>,
) -> bool {
    scratch.clear();
    for f in frames {
        match f.desc().get() {
            Some(d) if f.pool() == pool => scratch.push(*d),
            _ => {
                debug_assert!(false, "a frame of another pool handed to an AF_XDP ring");
                return false;
            }
        }
    }
    true
}

/// Mark each frame of `descs` as held by a ring (`on`) or not.
fn mark(held: &mut [u64], descs: &[FrameDesc], on: bool) {
    for d in descs {
        let i = UmemFrames::index_of(d);
        if let Some(word) = held.get_mut(i / 64) {
            let bit = 1u64 << (i % 64);
            if on {
                *word |= bit;
            } else {
                *word &= !bit;
            }
        }
    }
}

/// Push a token for each of `descs` onto `out`, and mark them no longer
/// held by a ring.
///
/// # Safety
///
/// `descs` were just consumed from the RX or completion ring of pool
/// `pool`'s UMEM. The kernel hands a frame back once per time it was given
/// one, and it was given each by consuming its token (`fill`, `tx`), so
/// these are the frames' only tokens.
unsafe fn adopt<D: Holds<FrameDesc>>(
    descs: &[FrameDesc],
    pool: PoolId,
    held: &mut [u64],
    out: &mut Vec<Owned<D>>,
) {
    mark(held, descs, false);
    for d in descs {
        // SAFETY: the caller's contract, above.
        out.push(unsafe { Owned::from_raw(D::wrap(*d), pool) });
    }
}

/// The ring operations of [`PortQueue`](crate::io::port::PortQueue), on
/// tokens of the UMEM the socket was made on. Rings and UMEM only leave
/// [`AfXdpBackend::open`] together ([`XskQueue`], split only by
/// [`XskQueue::into_parts`] into an owner that keeps the pair), so "this
/// UMEM" below is always the pool the caller holds beside these rings.
impl XskRings {
    /// Up to `max` received frames, whole packets only: a chain the batch
    /// would cut is kept back (`carry`) and handed out with its end, even
    /// when that makes the batch longer than `max` (by less than one
    /// chain). How many frames.
    pub fn rx<D: Holds<FrameDesc>>(&mut self, out: &mut Vec<Owned<D>>, max: usize) -> usize {
        let carried = self.carry.len();
        // A carried chain longer than the batch still gets its end.
        let want = max.max(carried + 1).min(self.inbox.len());
        self.inbox[..carried].copy_from_slice(&self.carry);
        self.carry.clear();
        // SAFETY: the RX ring belongs to a socket created on this queue's
        // UMEM, so the descriptors it yields name frames of that UMEM.
        let got = unsafe { self.rx.consume(&mut self.inbox[carried..want]) };
        let have = carried + got;
        // Whole packets: up to the last frame that ends one.
        let whole = self.inbox[..have]
            .iter()
            .rposition(|d| !d.has_more_frames())
            .map_or(0, |i| i + 1);
        self.carry.extend_from_slice(&self.inbox[whole..have]);
        // SAFETY: consumed from this UMEM's RX ring, now or (the carried
        // start) by an earlier call that gave them no token.
        unsafe { adopt(&self.inbox[..whole], self.pool, &mut self.held, out) };
        self.in_fill = self.in_fill.saturating_sub(whole);
        whole
    }

    pub fn tx_room(&mut self) -> usize {
        self.tx.nb_free(RING_SIZE) as usize
    }

    pub fn tx<D: Holds<FrameDesc>>(&mut self, frames: &mut Vec<Owned<D>>, n: usize) -> usize {
        if n == 0 || n > frames.len() || !bare(&frames[..n], self.pool, &mut self.scratch) {
            return 0;
        }
        // SAFETY: the descriptors are of this UMEM (checked by `bare`) and
        // their tokens are consumed below exactly when the ring took them,
        // so no one else references these frames while the kernel has them.
        let sent = unsafe { self.tx.produce(&self.scratch) };
        if sent == n {
            mark(&mut self.held, &self.scratch, true);
            frames.drain(..n);
            self.in_tx += n;
            n
        } else {
            0
        }
    }

    /// No wake-up once the device is gone: nothing drains the ring then,
    /// and a queue with frames in flight would be kicked every pass.
    pub fn kick_tx(&mut self) -> io::Result<bool> {
        if self.gone || !self.tx.needs_wakeup() {
            return Ok(false);
        }
        // ENXIO: the socket is no longer bound (its device went).
        self.tx
            .wakeup()
            .inspect_err(|e| self.gone |= e.raw_os_error() == Some(libc::ENXIO))?;
        Ok(true)
    }

    pub fn fill_room(&mut self) -> usize {
        self.fill.nb_free(RING_SIZE) as usize
    }

    pub fn fill<D: Holds<FrameDesc>>(&mut self, free: &mut Vec<Owned<D>>, n: usize) -> usize {
        if n == 0 || n > free.len() {
            return 0;
        }
        let from = free.len() - n;
        if !bare(&free[from..], self.pool, &mut self.scratch) {
            return 0;
        }
        // SAFETY: as for `tx`: frames of this UMEM whose tokens are
        // consumed exactly when the ring took them.
        let given = unsafe { self.fill.produce(&self.scratch) };
        if given == n {
            mark(&mut self.held, &self.scratch, true);
            free.truncate(from);
            self.in_fill += n;
            n
        } else {
            0
        }
    }

    pub fn kick_rx(&mut self) -> io::Result<bool> {
        if self.fill.needs_wakeup() {
            self.fill.wakeup(self.rx.fd_mut(), 0)?;
            return Ok(true);
        }
        Ok(false)
    }

    pub fn complete<D: Holds<FrameDesc>>(&mut self, out: &mut Vec<Owned<D>>, max: usize) -> usize {
        let max = max.min(self.inbox.len());
        // SAFETY: the completion ring is this UMEM's, so its descriptors name
        // frames of this queue's UMEM.
        let n = unsafe { self.comp.consume(&mut self.inbox[..max]) };
        // SAFETY: just consumed from this UMEM's completion ring.
        unsafe { adopt(&self.inbox[..n], self.pool, &mut self.held, out) };
        self.in_tx = self.in_tx.saturating_sub(n);
        n
    }

    /// Frames the kernel holds, by the rings' two sides.
    pub fn ring_frames(&self) -> RingFrames {
        RingFrames {
            fill_or_rx: self.in_fill,
            tx_or_completion: self.in_tx,
        }
    }

    pub fn poll_fd(&self) -> Option<RawFd> {
        Some(self.rx.fd().as_raw_fd())
    }

    /// Close the socket, then hand back a token for every frame of a
    /// shared UMEM that its rings held: the kernel returns none of a
    /// closed socket's fill, RX, TX or completion ring, and once the
    /// socket is released (`close(2)` unbinds it, waiting for the RCU
    /// readers of the device) it writes to none of them. Nothing for a
    /// UMEM of its own, whose frames go with it. Blocks ~10 ms (the
    /// unbind's grace period).
    pub fn close<D: Holds<FrameDesc>>(self) -> Vec<Owned<D>> {
        let XskRings {
            tx,
            rx,
            fill,
            comp,
            held,
            frames,
            ..
        } = self;
        // The socket is deleted (libxdp closes its fd) with the last of
        // its four rings.
        drop((tx, rx, fill, comp));
        if !frames.shared {
            return Vec::new();
        }
        let mut out = Vec::new();
        for (w, word) in held.iter().enumerate() {
            let mut bits = *word;
            while bits != 0 {
                let i = w * 64 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                if let Some(d) = <[FrameDesc]>::get(&frames.descs, i) {
                    // SAFETY: frame `i` was given to this socket's rings
                    // (its token consumed) and never came back; the socket
                    // is closed, so no ring holds it, and no other token
                    // names it. Its descriptor is the UMEM's original.
                    out.push(unsafe { Owned::from_raw(D::wrap(*d), frames.id) });
                }
            }
        }
        out
    }

    /// Whether the kernel unbound the socket from its device: the device
    /// was deleted under it (a pod's namespace gone before its DEL). The
    /// kernel then sets the socket's error to ENETDOWN (read here with
    /// `SO_ERROR`, which clears it) and neither drains its TX ring nor
    /// fills its RX ring again; only [`XskRings::close`] gets those frames
    /// back. Once true, true for good.
    pub fn device_gone(&mut self) -> bool {
        if !self.gone {
            let mut err: libc::c_int = 0;
            let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            // SAFETY: getsockopt(2) on our own socket writes at most `len`
            // bytes into the live `err`, and its length into `len`.
            let rc = unsafe {
                libc::getsockopt(
                    self.rx.fd().as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_ERROR,
                    (&mut err as *mut libc::c_int).cast(),
                    &mut len,
                )
            };
            self.gone = rc == 0 && err == libc::ENETDOWN;
        }
        self.gone
    }

    /// `getsockopt(XDP_STATISTICS)` of the socket.
    pub fn kernel_stats(&self) -> Option<[u64; 6]> {
        let s = self.rx.fd().xdp_statistics().ok()?;
        Some([
            s.rx_dropped(),
            s.rx_invalid_descs(),
            s.tx_invalid_descs(),
            s.rx_ring_full(),
            s.rx_fill_ring_empty_descs(),
            s.tx_ring_empty_descs(),
        ])
    }
}

/// The redirect program every pod veth and the host port share, and the
/// slots in use (module comment).
pub struct SharedRedirect {
    ebpf: Ebpf,
    used: Vec<bool>,
}

impl SharedRedirect {
    fn load() -> Result<SharedRedirect, String> {
        Ok(SharedRedirect {
            ebpf: load_program(REDIRECT)?,
            used: vec![false; PORT_SLOTS as usize],
        })
    }

    fn take_slot(&mut self) -> Option<u32> {
        let i = self.used.iter().position(|u| !u)?;
        self.used[i] = true;
        u32::try_from(i).ok()
    }
}

/// Where a port's program lives.
enum Loaded {
    /// A program of this port alone, with its own maps (the uplink's).
    Own(Ebpf),
    /// The shared redirect program, this port holding `slot`.
    Shared {
        shared: Arc<Mutex<SharedRedirect>>,
        slot: u32,
        ifindex: u32,
    },
}

fn lock(m: &Mutex<SharedRedirect>) -> std::sync::MutexGuard<'_, SharedRedirect> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The XDP program attached to one port. Dropping it detaches the program
/// (an own program's maps go with it; a shared one's slot is given back).
pub struct XdpAttachment {
    ifname: String,
    loaded: Loaded,
    prog: &'static str,
    link: Option<aya::programs::xdp::XdpLinkId>,
    /// `native-zerocopy`, `native-copy` or `generic-copy`: how the program
    /// is attached (driver or SKB XDP) and the sockets bound.
    pub mode: &'static str,
}

impl XdpAttachment {
    /// The attached program, for `BPF_PROG_TEST_RUN`
    /// ([`crate::io::xdp_run::run`]): what it does with a crafted frame on
    /// this port, as it is configured. A port's own program only (the
    /// uplink's); the shared one is not lent out.
    pub fn program_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        let Loaded::Own(ebpf) = &self.loaded else {
            return None;
        };
        let prog: &Xdp = ebpf.program(self.prog)?.try_into().ok()?;
        Some(prog.fd().ok()?.as_fd())
    }

    /// `f` on the object holding this port's program and maps.
    fn with_ebpf<R>(&mut self, f: impl FnOnce(&mut Ebpf) -> R) -> R {
        match &mut self.loaded {
            Loaded::Own(ebpf) => f(ebpf),
            Loaded::Shared { shared, .. } => f(&mut lock(shared).ebpf),
        }
    }

    /// The `xsks` key of this port's queue `queue`.
    fn xsk_key(&self, queue: u32) -> u32 {
        match &self.loaded {
            Loaded::Own(_) => queue,
            Loaded::Shared { slot, .. } => slot * MAX_QUEUES + queue,
        }
    }

    /// Attach the program to this port, native (driver) mode first, else
    /// generic (SKB) mode; whether it is native.
    fn attach(&mut self) -> Result<bool, PortError> {
        let (ifname, name) = (self.ifname.clone(), self.prog);
        let r = self.with_ebpf(|ebpf| {
            let prog: &mut Xdp = ebpf
                .program_mut(name)
                .and_then(|p| p.try_into().ok())
                .ok_or_else(|| format!("program {name} missing"))?;
            match prog.attach(&ifname, XdpFlags::DRV_MODE) {
                Ok(link) => Ok((link, true)),
                Err(drv) => match prog.attach(&ifname, XdpFlags::SKB_MODE) {
                    Ok(link) => {
                        log::warn!("{ifname}: native XDP failed ({drv}); using generic (SKB) mode");
                        Ok((link, false))
                    }
                    Err(skb) => Err(format!(
                        "native (driver) mode: {drv}; generic (skb) mode: {skb}"
                    )),
                },
            }
        });
        let (link, native) = r.map_err(|cause| PortError::XdpAttach {
            ifname: self.ifname.clone(),
            cause,
        })?;
        self.link = Some(link);
        Ok(native)
    }

    /// Worker queue `queue`'s socket `fd` in the program's `xsks`.
    fn set_socket(&mut self, queue: u32, fd: RawFd) -> Result<(), PortError> {
        let key = self.xsk_key(queue);
        let ifname = self.ifname.clone();
        self.with_ebpf(|ebpf| {
            let map = ebpf
                .map_mut(MAP_NAME)
                .ok_or_else(|| format!("map {MAP_NAME} missing from the object"))?;
            let mut xsks: XskMap<_> = XskMap::try_from(map).map_err(|e| e.to_string())?;
            xsks.set(key, fd, 0).map_err(|e| e.to_string())
        })
        .map_err(|cause| PortError::XskMap {
            ifname,
            queue,
            cause,
        })
    }

    /// A shared program's port starts being redirected: its interface index
    /// to its slot (after its sockets are in `xsks`).
    fn enable(&mut self) -> Result<(), PortError> {
        let Loaded::Shared {
            shared,
            slot,
            ifindex,
        } = &self.loaded
        else {
            return Ok(());
        };
        let (slot, ifindex) = (*slot, *ifindex);
        let mut g = lock(shared);
        ports_map(&mut g.ebpf)
            .and_then(|mut m| m.insert(ifindex, slot, 0).map_err(|e| e.to_string()))
            .map_err(|cause| PortError::XskMap {
                ifname: self.ifname.clone(),
                queue: 0,
                cause: format!("{PORTS_MAP}: {cause}"),
            })
    }
}

fn ports_map(
    ebpf: &mut Ebpf,
) -> Result<aya::maps::HashMap<&mut aya::maps::MapData, u32, u32>, String> {
    let map = ebpf
        .map_mut(PORTS_MAP)
        .ok_or_else(|| format!("map {PORTS_MAP} missing from the object"))?;
    aya::maps::HashMap::try_from(map).map_err(|e| e.to_string())
}

impl Drop for XdpAttachment {
    fn drop(&mut self) {
        if let Loaded::Shared { ifindex, .. } = &self.loaded {
            let ifindex = *ifindex;
            self.with_ebpf(|ebpf| {
                if let Ok(mut m) = ports_map(ebpf) {
                    let _ = m.remove(&ifindex);
                }
            });
        }
        if let Some(link) = self.link.take() {
            let name = self.prog;
            let r = self.with_ebpf(|ebpf| {
                let prog: Option<&mut Xdp> = ebpf.program_mut(name).and_then(|p| p.try_into().ok());
                prog.map(|p| p.detach(link))
            });
            match r {
                Some(Ok(())) => log::info!("{}: XDP program detached", self.ifname),
                Some(Err(e)) => {
                    log::warn!("{}: detaching the XDP program failed: {e}", self.ifname)
                }
                None => log::warn!(
                    "{}: XDP program handle lost; it goes when the process exits",
                    self.ifname
                ),
            }
        }
        if let Loaded::Shared { shared, slot, .. } = &self.loaded {
            if let Some(u) = <[bool]>::get_mut(&mut lock(shared).used, *slot as usize) {
                *u = false;
            }
        }
    }
}

/// The real backend: XDP via aya, sockets via xsk-rs.
pub struct AfXdpBackend {
    /// Frames of the UMEM of each uplink socket (one per worker).
    pub frames_per_queue: u32,
    /// Frames of each worker's UMEM, shared by its sockets on every pod
    /// veth and the host port.
    pub frames_per_worker: u32,
    /// The redirect program of veths and the host port, once one was opened.
    pub redirect: Option<Arc<Mutex<SharedRedirect>>>,
    /// Each worker's shared UMEM, made at the first veth or host port.
    umems: Vec<WorkerUmem>,
}

/// Default frames of a worker's shared UMEM: 16384 x 2 KiB = 32 MiB, room
/// for a hundred idle pods' fill rings (a few dozen frames each) beside a
/// few busy ones (up to 1024 each) and the frames in flight.
pub const DEFAULT_FRAMES_PER_WORKER: u32 = 16384;

impl Default for AfXdpBackend {
    fn default() -> Self {
        AfXdpBackend {
            frames_per_queue: 2 * RING_SIZE,
            frames_per_worker: DEFAULT_FRAMES_PER_WORKER,
            redirect: None,
            umems: Vec::new(),
        }
    }
}

/// aya's object loader, made once per process. `EbpfLoader::new` parses the
/// kernel's BTF (/sys/kernel/btf/vmlinux) every time, and `Ebpf::load`
/// makes two: ~30 ms of every port's open, most of a veth pod's share of a
/// dataplane restart (measured: 30 ms of a port's 35-50 ms). [`prepare_loader`]
/// makes it before the first port.
fn load_object(object: &[u8]) -> Result<Ebpf, EbpfError> {
    loader()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .load(object)
}

/// `program`'s object, its program loaded (through the verifier).
fn load_program(program: Program) -> Result<Ebpf, String> {
    let mut ebpf = load_object(program.object).map_err(|e| e.to_string())?;
    let prog: &mut Xdp = ebpf
        .program_mut(program.name)
        .ok_or_else(|| format!("program {} missing from the object", program.name))?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| e.to_string())?;
    prog.load().map_err(|e| e.to_string())?;
    Ok(ebpf)
}

fn loader() -> &'static std::sync::Mutex<EbpfLoader<'static>> {
    static LOADER: std::sync::OnceLock<std::sync::Mutex<EbpfLoader<'static>>> =
        std::sync::OnceLock::new();
    LOADER.get_or_init(|| std::sync::Mutex::new(EbpfLoader::new()))
}

/// Make the object loader now (the kernel's BTF parsed), so that no port
/// open pays for it.
pub fn prepare_loader() {
    loader();
}

/// Number of queues of `ifname` (min of RX and TX), from sysfs; `None` when
/// sysfs does not show this namespace's interface.
pub(crate) fn queue_count(ifname: &str) -> Option<u32> {
    let dir = fs::read_dir(format!("/sys/class/net/{ifname}/queues")).ok()?;
    let (mut rx, mut tx) = (0u32, 0u32);
    for entry in dir.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("rx-") {
            rx += 1;
        } else if name.starts_with("tx-") {
            tx += 1;
        }
    }
    (rx > 0 && tx > 0).then_some(rx.min(tx))
}

pub(crate) fn if_index(ifname: &str) -> Option<u32> {
    let c = CString::new(ifname).ok()?;
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (idx != 0).then_some(idx)
}

/// How ferry binds a veth port's AF_XDP socket: copy mode, chains.
pub fn socket_config(ring: QueueSize) -> SocketConfig {
    socket_config_in(ring, BindMode::Copy, true)
}

/// How ferry binds every AF_XDP socket: rings of `ring` descriptors,
/// need_wakeup, the copy or zero-copy flag of `mode`, `XDP_USE_SG` when
/// the port's packets may span several chunks (`chains`: veth ports), and
/// libxdp's own program load inhibited (ferry attaches its program itself).
pub fn socket_config_in(ring: QueueSize, mode: BindMode, chains: bool) -> SocketConfig {
    let copy = match mode {
        BindMode::ZeroCopy => BindFlags::XDP_ZEROCOPY,
        BindMode::Copy => BindFlags::XDP_COPY,
    };
    let sg = if chains {
        BindFlags::XDP_USE_SG
    } else {
        BindFlags::empty()
    };
    SocketConfig::builder()
        .rx_queue_size(ring)
        .tx_queue_size(ring)
        .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
        .bind_flags(BindFlags::XDP_USE_NEED_WAKEUP | copy | sg)
        .build()
}

/// The mode string of a port attached natively or not whose sockets are
/// bound `bind`.
fn mode_name(native: bool, bind: BindMode) -> &'static str {
    match (native, bind) {
        (true, BindMode::ZeroCopy) => "native-zerocopy",
        (true, BindMode::Copy) => "native-copy",
        (false, _) => "generic-copy",
    }
}

impl AfXdpBackend {
    /// Worker `queue`'s socket on queue `queue` of `ifname`: on the
    /// worker's shared UMEM when `shared` is given, else on a UMEM of its
    /// own of `frames_per_queue` frames.
    fn socket(
        &self,
        ifname: &str,
        queue: u32,
        bind: BindMode,
        chains: bool,
        shared: Option<&WorkerUmem>,
    ) -> Result<XskQueue, PortError> {
        let err = |cause: String| PortError::Socket {
            ifname: ifname.to_string(),
            queue,
            cause,
        };
        let pool_err = |cause: String| PortError::Pool {
            ifname: ifname.to_string(),
            queue,
            cause,
        };
        let ring = QueueSize::new(RING_SIZE).map_err(|e| err(e.to_string()))?;
        let (umem, frames) = match shared {
            Some(w) => (w.umem.clone(), Arc::clone(&w.frames)),
            None => {
                let frames = NonZeroU32::new(self.frames_per_queue.max(2 * RING_SIZE))
                    .unwrap_or(NonZeroU32::MIN);
                let (umem, descs) = Umem::new(umem_config().map_err(pool_err)?, frames, false)
                    .map_err(|e| pool_err(e.to_string()))?;
                (umem, UmemFrames::new(descs, false))
            }
        };
        // On a shared UMEM libxdp binds with XDP_SHARED_UMEM alone: the
        // mode, multi-buffer and need-wakeup are the anchor's.
        let config = socket_config_in(ring, bind, chains);
        let iface: Interface = ifname
            .parse()
            .map_err(|e: std::ffi::NulError| err(e.to_string()))?;
        // SAFETY: a UMEM of its own is fresh, so this socket is its only
        // one; on a worker's UMEM each port's sockets are one per queue,
        // and a previous socket of this (interface, queue) still closing
        // makes the bind fail (below), never share its rings. libxdp's
        // program load is inhibited (the shared-UMEM double-free caveat of
        // `Socket::new`).
        //
        // A socket of the port's last opening may still be closing on its
        // worker's closing thread (~10 ms; until it is gone the kernel
        // answers EBUSY, or EINVAL while libxdp still has its context):
        // try again, for a bounded time from the first refusal.
        let mut refused: Option<std::time::Instant> = None;
        let (tx, rx, rings) = loop {
            match unsafe { Socket::new(config, &umem, &iface, queue) } {
                Ok(made) => break made,
                Err(e) if busy(&e) && refused.is_none_or(|t| t.elapsed() < BUSY_WAIT) => {
                    refused.get_or_insert_with(std::time::Instant::now);
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                Err(e) => return Err(err(with_cause(&e))),
            }
        };
        if let Some(t) = refused {
            log::debug!(
                "{ifname} queue {queue}: bound {:?} after a refusal",
                t.elapsed()
            );
        }
        let (fill, comp) = rings.ok_or_else(|| {
            err("libxdp returned no fill/completion rings: the queue is bound already".into())
        })?;
        let id = frames.id;
        let words = frames.descs.len().div_ceil(64);
        Ok(XskQueue {
            rings: XskRings {
                tx,
                rx,
                fill,
                comp,
                pool: id,
                scratch: Vec::with_capacity(RING_SIZE as usize),
                inbox: vec![FrameDesc::default(); RING_SIZE as usize + MAX_CHAIN]
                    .into_boxed_slice(),
                carry: Vec::with_capacity(MAX_CHAIN),
                in_fill: 0,
                in_tx: 0,
                held: vec![0; words],
                frames: Arc::clone(&frames),
                gone: false,
            },
            pool: XskPool {
                umem,
                frames,
                chains,
            },
        })
    }

    /// Make the shared UMEM of each of `workers` workers that has none yet.
    fn make_worker_umems(&mut self, workers: usize) -> Result<(), String> {
        while self.umems.len() < workers {
            let umem = WorkerUmem::new(self.frames_per_worker)?;
            log::info!(
                "worker {}: a UMEM of {} frames ({} MiB) for its pod and host-port sockets",
                self.umems.len(),
                umem.frame_count(),
                (umem.frame_count() * FRAME_SIZE as usize) >> 20
            );
            self.umems.push(umem);
        }
        Ok(())
    }
}

impl PortBackend for AfXdpBackend {
    fn mode_of(attachment: &XdpAttachment) -> String {
        attachment.mode.to_string()
    }

    fn update_node_ports(a: &mut XdpAttachment, ports: &[(u8, u16)]) -> Result<(), PortError> {
        match &mut a.loaded {
            Loaded::Own(ebpf) => crate::io::uplink::set_node_ports(&a.ifname, ebpf, ports),
            Loaded::Shared { .. } => Err(PortError::XdpLoad {
                ifname: a.ifname.clone(),
                cause: "node ports are the uplink's; this port has the redirect program".into(),
            }),
        }
    }

    type Queue = NodeQueue;
    type Attachment = XdpAttachment;

    /// Veth ports only: a tap is not something this backend opens.
    fn mtu_limits(&self) -> ferry_api::table::MtuLimits {
        ferry_api::table::MtuLimits {
            veth: MAX_POD_MTU,
            tap: 0,
            uplink: Some(UPLINK_FRAME_MTU),
        }
    }

    fn open(
        &mut self,
        spec: &PortSpec,
        workers: usize,
    ) -> Result<Opened<XdpAttachment, NodeQueue>, PortError> {
        let ifname = spec.name.as_str();
        if !valid_ifname(ifname) {
            return Err(PortError::BadName {
                ifname: ifname.to_string(),
            });
        }
        match &spec.kind {
            PortKind::Uplink(uplink) => {
                crate::io::uplink::check_name(ifname)?;
                exists(ifname)?;
                let want = u32::try_from(workers).unwrap_or(u32::MAX);
                let fit = crate::io::uplink::fit_channels(ifname, want, uplink.set_channels)?;
                let mut ebpf = load_program(UPLINK).map_err(|cause| PortError::XdpLoad {
                    ifname: ifname.to_string(),
                    cause,
                })?;
                // Its maps filled before it is attached.
                crate::io::uplink::configure(ifname, &mut ebpf, uplink)?;
                let attachment = XdpAttachment::new(ifname, Loaded::Own(ebpf), UPLINK.name);
                self.attach_and_bind(attachment, true, Some(fit.now), workers, false)
            }
            PortKind::Xdp(role) => {
                let ifindex = if_index(ifname).ok_or_else(|| PortError::NoSuchInterface {
                    ifname: ifname.to_string(),
                })?;
                // Before anything is attached: only ferry's veths get a program.
                crate::io::link::check_veth(ifname, *role)?;
                self.make_worker_umems(workers)
                    .map_err(|cause| PortError::Pool {
                        ifname: ifname.to_string(),
                        queue: 0,
                        cause,
                    })?;
                let shared = self.shared_redirect(ifname)?;
                let slot = lock(&shared)
                    .take_slot()
                    .ok_or_else(|| PortError::XdpLoad {
                        ifname: ifname.to_string(),
                        cause: format!(
                            "all {PORT_SLOTS} port slots of the redirect program are in use"
                        ),
                    })?;
                let loaded = Loaded::Shared {
                    shared,
                    slot,
                    ifindex,
                };
                let attachment = XdpAttachment::new(ifname, loaded, REDIRECT.name);
                self.attach_and_bind(attachment, false, queue_count(ifname), workers, true)
            }
            PortKind::Tap { .. } => Err(PortError::Unsupported {
                ifname: ifname.to_string(),
                kind: "tap",
            }),
        }
    }
}

fn exists(ifname: &str) -> Result<(), PortError> {
    match if_index(ifname) {
        Some(_) => Ok(()),
        None => Err(PortError::NoSuchInterface {
            ifname: ifname.to_string(),
        }),
    }
}

impl XdpAttachment {
    /// Not attached yet: dropping it only gives a shared slot back.
    fn new(ifname: &str, loaded: Loaded, prog: &'static str) -> XdpAttachment {
        XdpAttachment {
            ifname: ifname.to_string(),
            loaded,
            prog,
            link: None,
            mode: mode_name(false, BindMode::Copy),
        }
    }
}

impl AfXdpBackend {
    /// The shared redirect program, loaded at the first port that needs it.
    fn shared_redirect(&mut self, ifname: &str) -> Result<Arc<Mutex<SharedRedirect>>, PortError> {
        if let Some(s) = &self.redirect {
            return Ok(Arc::clone(s));
        }
        let s = SharedRedirect::load().map_err(|cause| PortError::XdpLoad {
            ifname: ifname.to_string(),
            cause,
        })?;
        let s = Arc::new(Mutex::new(s));
        self.redirect = Some(Arc::clone(&s));
        Ok(s)
    }

    /// What every AF_XDP port has in common, once its own checks passed and
    /// its program is loaded (maps filled, before it can see a frame):
    /// attach it down the mode ladder (module comment; the zero-copy rung
    /// only when `try_zerocopy`), and bind worker `i`'s socket to queue `i`
    /// for every `i` below `queues` (when known) and [`MAX_QUEUES`],
    /// registering each in `xsks`, then (a shared program) the port's slot.
    /// Workers beyond get `None`; when `queues` is unknown, the first
    /// refused bind beyond queue 0 ends the bound ones. Worker `i`'s
    /// socket is made on its shared UMEM when `shared` (made already), else
    /// on a UMEM of its own.
    fn attach_and_bind(
        &self,
        mut attachment: XdpAttachment,
        try_zerocopy: bool,
        queues: Option<u32>,
        workers: usize,
        shared: bool,
    ) -> Result<Opened<XdpAttachment, NodeQueue>, PortError> {
        let ifname = attachment.ifname.clone();
        let ifname = ifname.as_str();
        let t0 = std::time::Instant::now();
        // From here on, dropping `attachment` detaches the program again.
        let native = attachment.attach()?;
        let t_attached = t0.elapsed();
        let mut bind = if native && try_zerocopy {
            BindMode::ZeroCopy
        } else {
            BindMode::Copy
        };
        // Veth ports (the shared program, an `xdp.frags` one) carry packets
        // larger than a chunk as chains; the uplink's program is plain.
        let chains = matches!(attachment.loaded, Loaded::Shared { .. });
        let mut sockets = Vec::with_capacity(workers);
        for i in 0..workers as u32 {
            let beyond = queues.is_some_and(|n| i >= n) || i >= MAX_QUEUES;
            if beyond || (i > 0 && sockets.last().is_some_and(Option::is_none)) {
                sockets.push(None);
                continue;
            }
            let umem = <[WorkerUmem]>::get(&self.umems, i as usize).filter(|_| shared);
            let socket = match self.socket(ifname, i, bind, chains, umem) {
                Err(e) if i == 0 && bind == BindMode::ZeroCopy => {
                    log::info!("{ifname}: no zero-copy AF_XDP ({e}); binding in copy mode");
                    bind = BindMode::Copy;
                    self.socket(ifname, i, bind, chains, umem)
                }
                other => other,
            };
            let q = match socket {
                Ok(q) => q,
                // sysfs unavailable: an interface with fewer queues refuses
                // the bind; the workers beyond get no queue.
                Err(e) if i > 0 && queues.is_none() => {
                    log::info!("{ifname}: no queue {i} ({e}); workers {i}.. get no queue on it");
                    sockets.push(None);
                    continue;
                }
                Err(e) => return Err(e),
            };
            attachment.set_socket(i, q.rings.rx.fd().as_raw_fd())?;
            sockets.push(Some(NodeQueue::from(q)));
        }
        attachment.enable()?;
        log::debug!(
            "{ifname}: attached in {t_attached:?}, sockets bound at {:?}",
            t0.elapsed()
        );
        attachment.mode = mode_name(native, bind);
        let bound = sockets.iter().filter(|q| q.is_some()).count();
        log::info!(
            "{ifname}: XDP {} attached ({}), {bound} of {workers} worker queue(s) bound{}",
            attachment.prog,
            attachment.mode,
            match queues {
                Some(n) if n as usize > bound => format!(
                    "; queues {bound}..{n} have no socket (their frames pass to the kernel)"
                ),
                _ => String::new(),
            }
        );
        Ok((attachment, sockets))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The UMEM layout the sockets use.
    fn umem_config() -> UmemConfig {
        UmemConfig::builder()
            .frame_size(FrameSize::new(FRAME_SIZE).unwrap())
            .frame_headroom(0)
            .build()
            .unwrap()
    }

    #[test]
    fn max_pod_mtu_is_what_a_chain_of_chunks_holds() {
        // xsk-rs computes the data segment from libxdp's own headroom.
        let cfg = umem_config();
        assert_eq!(cfg.xdp_headroom(), XDP_PACKET_HEADROOM);
        assert_eq!(CHUNK_DATA, cfg.mtu());
        assert_eq!(MAX_POD_MTU, MAX_CHAIN as u32 * cfg.mtu() - 14);
        assert_eq!(UPLINK_FRAME_MTU, cfg.mtu() - 14, "one chunk: 1778");
        const { assert!(MAX_POD_MTU > VETH_XDP_MAX_MTU) };
    }

    #[test]
    fn frames_are_handed_out_from_the_chunk_start_with_the_xdp_headroom() {
        let cfg = umem_config();
        let (umem, descs) = Umem::new(cfg, NonZeroU32::new(4).unwrap(), false).unwrap();
        let mut pool = XskPool {
            umem,
            frames: UmemFrames::new(descs, false),
            chains: true,
        };
        let mut frames: Vec<Owned<FrameDesc>> = Vec::new();
        assert_eq!(pool.take_frames(&mut frames), 4);
        assert_eq!(pool.take_frames(&mut frames), 0, "tokens are issued once");
        // A chain's marks: set for TX, read back as RX would show them.
        assert!(pool.takes_chains());
        assert!(
            !pool.frame_continues(&frames[0]),
            "fresh frames end a packet"
        );
        pool.set_frame_continues(&mut frames[0], true);
        assert!(pool.frame_continues(&frames[0]));
        assert!(!pool.frame_continues(&frames[1]), "only the frame marked");
        pool.set_frame_continues(&mut frames[0], false);
        assert!(!pool.frame_continues(&frames[0]));
        for f in &mut frames {
            let data_ptr = pool.frame_buf(f).as_ptr();
            let (buf, headroom) = pool.frame_buffer(f);
            assert_eq!(headroom, XDP_PACKET_HEADROOM as usize);
            assert_eq!(buf.len(), FRAME_SIZE as usize, "the whole chunk");
            assert_eq!(buf[headroom..].as_ptr(), data_ptr, "data right after it");
        }
    }
}
