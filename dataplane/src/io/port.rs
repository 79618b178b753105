//! The port abstraction the workers drive: our own small trait so the ring
//! implementation (xsk-rs today, [`crate::sim`] in tests, a pure-Rust ring
//! crate tomorrow) can be swapped without touching the worker loop.
//!
//! The model is AF_XDP's. Each worker owns one [`PortQueue`] per port (for
//! AF_XDP: the socket bound to queue `i` of the interface, with its own
//! UMEM, which is the queue's [`FramePool`]). A frame is named by a
//! descriptor; descriptors circulate between the worker and the rings:
//!
//! ```text
//!  free list ──fill──▶ fill ring ──kernel──▶ rx ring ──rx──▶ worker
//!      ▲                                                      │
//!      ├──────────────── drop verdict ◀───────────────────────┤
//!      └──complete── completion ring ◀──kernel── tx ring ◀─tx─┘
//! ```
//!
//! A frame sent back out of the port it came in on (ARP and ICMP replies)
//! moves by descriptor; a frame forwarded to another port is copied into a
//! free frame of that port's pool, or written straight to a tap
//! ([`PortQueue::tx_direct`]) (see `afxdp.rs` for why pools are per queue
//! rather than per worker). Calls are batched: every method takes or
//! fills a slice.

use std::io;
use std::os::fd::RawFd;

use ferry_api::table::MtuLimits;

use crate::core::pipeline::Offload;

/// One queue's frame memory.
pub trait FramePool: Send + 'static {
    /// Names one frame (its chunk, the data offset in it, the data length).
    type Desc: Copy + Default + Send + 'static;

    /// Descriptor of every frame; all of them are free when the pool is made.
    fn all_descs(&self) -> Vec<Self::Desc>;

    /// Length of the frame data.
    fn len_of(&self, desc: &Self::Desc) -> usize;

    /// The frame's chunk from its data start to the end of the chunk (the
    /// frame is the first `len_of` bytes).
    ///
    /// # Safety
    ///
    /// The caller owns the frame: it came out of an RX or completion ring
    /// (or the initial free list) and has not been handed to any ring since,
    /// and the caller holds no other reference into this frame's chunk while
    /// the returned slice lives.
    #[expect(
        clippy::mut_from_ref,
        reason = "the pool hands out disjoint chunks the caller owns; see Safety"
    )]
    unsafe fn chunk_mut(&self, desc: &Self::Desc) -> &mut [u8];

    /// The frame's whole buffer and where its data starts in it: the bytes
    /// before are headroom, free for headers prepended in place
    /// ([`crate::core::pipeline::Frame::prepend`]); from the data start on
    /// it is [`FramePool::chunk_mut`]'s slice.
    ///
    /// # Safety
    ///
    /// As for [`FramePool::chunk_mut`]: the caller owns the frame and holds
    /// no other reference into its chunk while the slice lives.
    #[expect(
        clippy::mut_from_ref,
        reason = "the pool hands out disjoint chunks the caller owns; see Safety"
    )]
    unsafe fn buffer_mut(&self, desc: &Self::Desc) -> (&mut [u8], usize) {
        // SAFETY: the caller's guarantees are passed on unchanged.
        (unsafe { self.chunk_mut(desc) }, 0)
    }

    /// Set the frame data length (clamped to the chunk capacity).
    ///
    /// # Safety
    ///
    /// As for [`FramePool::chunk_mut`]: the caller owns the frame.
    unsafe fn set_len(&self, desc: &mut Self::Desc, len: usize);

    /// Whether frames transmitted through this pool's queue may carry
    /// offloads (GSO frames, partial checksums): true for tap queues, whose
    /// frames travel with a virtio-net header. Frames for a pool that
    /// cannot take them are segmented / completed by the worker first.
    fn takes_offload(&self) -> bool {
        false
    }

    /// The frame's offload header ([`Offload::NONE`] for pools without).
    fn offload_of(&self, _desc: &Self::Desc) -> Offload {
        Offload::NONE
    }

    /// Set the header the frame is transmitted with (ignored by pools
    /// without offloads).
    fn set_offload(&self, _desc: &mut Self::Desc, _offload: Offload) {}
}

type DescOf<P> = <P as FramePool>::Desc;

/// One worker's queue on one port: the RX/TX rings of one AF_XDP socket plus
/// its fill/completion rings and its frame memory.
pub trait PortQueue: Send + 'static {
    type Pool: FramePool;

    /// The queue's frame memory.
    fn pool(&self) -> &Self::Pool;

    /// Move up to `out.len()` received frames into `out`; returns how many.
    fn rx(&mut self, out: &mut [DescOf<Self::Pool>]) -> usize;

    /// Free slots in the TX ring.
    fn tx_room(&mut self) -> usize;

    /// Queue `descs` for transmission (one ring commit). Returns how many
    /// were taken: all of them when they fit in [`PortQueue::tx_room`],
    /// none otherwise.
    fn tx(&mut self, descs: &[DescOf<Self::Pool>]) -> usize;

    /// Tell the kernel about queued TX frames if the ring asks for it
    /// (need_wakeup). Returns whether a wake-up syscall was made.
    fn kick_tx(&mut self) -> io::Result<bool>;

    /// Free slots in the fill ring.
    fn fill_room(&mut self) -> usize;

    /// Give free frames to the fill ring (one commit); all or none, like
    /// [`PortQueue::tx`].
    fn fill(&mut self, descs: &[DescOf<Self::Pool>]) -> usize;

    /// Wake the kernel's receive side if the fill ring asks for it.
    fn kick_rx(&mut self) -> io::Result<bool>;

    /// Move up to `out.len()` transmitted frames back into `out`.
    fn complete(&mut self, out: &mut [DescOf<Self::Pool>]) -> usize;

    /// A descriptor to poll(2) for readability while idle, if the queue has
    /// one.
    fn poll_fd(&self) -> Option<RawFd>;

    /// Transmit `frame` with header `offload` right now, from the caller's
    /// memory, if this queue can (tap queues: one `writev`, which copies
    /// the frame into the kernel before returning). `None`: not supported,
    /// use a frame of [`PortQueue::pool`] and [`PortQueue::tx`]. `Some(ok)`:
    /// done, `ok` false if the kernel refused it. Saves the copy into an
    /// egress frame.
    fn tx_direct(&mut self, _frame: &[u8], _offload: Offload) -> Option<bool> {
        None
    }

    /// Whether the fill ring is only our own list (tap queues): giving it
    /// frames costs no ring commit and no syscall, so the worker hands
    /// every freed frame back at once and the next read lands in the
    /// frame used last, still in cache (instead of cycling through a
    /// refill batch of 66 KiB frames).
    fn fill_is_local(&self) -> bool {
        false
    }

    /// The kernel's counters of this queue's AF_XDP socket
    /// (`XDP_STATISTICS`, in [`ferry_api::table::XSK_COUNTERS`] order);
    /// `None` for queues without one (taps) or when the kernel refuses.
    fn kernel_stats(&self) -> Option<[u64; 6]> {
        None
    }

    /// Frames taken by [`PortQueue::tx`] that the kernel then refused
    /// (tap writes), since the last call. Rings never refuse a taken frame.
    fn take_tx_errors(&mut self) -> u64 {
        0
    }

    /// Reads this queue threw away since the last call because they were
    /// too short to be a frame (a tap read shorter than the virtio-net
    /// header plus an Ethernet header); counted `tap_short_read`. Rings
    /// never deliver one.
    fn take_short_reads(&mut self) -> u64 {
        0
    }
}

/// Which veth an AF_XDP port is; decides what is checked before an XDP
/// program is attached to it ([`crate::io::link::check_veth`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VethRole {
    /// A pod's host veth: its peer must be in another namespace.
    Pod,
    /// The host port (`NodeSettings::host_port`): both ends are in the
    /// dataplane's namespace.
    Host,
}

/// What kind of interface a port is, and where to find it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortKind {
    /// A veth in the dataplane's namespace driven over AF_XDP (pod host
    /// veths, the host port).
    Xdp(VethRole),
    /// A persistent multi-queue tap named `ifname` inside the network
    /// namespace at `netns` (the pod's), whose queues are opened there;
    /// `netns_id`, when known, is the namespace `netns` must still be.
    Tap {
        netns: String,
        ifname: String,
        netns_id: Option<ferry_api::table::NetnsId>,
    },
}

/// One port to open: its name in the tables (the endpoint's
/// `host_ifname`) and its kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSpec {
    pub name: String,
    pub kind: PortKind,
}

impl PortSpec {
    /// A pod's host veth.
    pub fn pod_veth(name: &str) -> PortSpec {
        PortSpec {
            name: name.to_string(),
            kind: PortKind::Xdp(VethRole::Pod),
        }
    }

    /// The host port's dataplane end.
    pub fn host_veth(name: &str) -> PortSpec {
        PortSpec {
            name: name.to_string(),
            kind: PortKind::Xdp(VethRole::Host),
        }
    }
}

/// An opened port: its attachment and worker `i`'s queue at index `i`.
pub type Opened<A, Q> = (A, Vec<Option<Q>>);

/// What the control thread needs from an I/O adapter: per interface, the
/// attachment that steers its traffic to us plus one queue per worker.
pub trait PortBackend: Send + 'static {
    type Queue: PortQueue;
    /// Keeps the interface attached (XDP program, map); dropping it detaches.
    type Attachment: Send + 'static;

    /// Attach the port and create worker `i`'s queue on queue `i` of the
    /// interface for every `i < workers`; `None` where the interface has
    /// fewer queues than there are workers (index 0 is always `Some`).
    fn open(
        &mut self,
        spec: &PortSpec,
        workers: usize,
    ) -> Result<Opened<Self::Attachment, Self::Queue>, PortError>;

    /// The largest pod MTU each kind of port carries in one frame (what
    /// `Hello` reports, so ferryd refuses pods above it).
    fn mtu_limits(&self) -> MtuLimits;
}

/// Why a port could not be opened. Every variant names the interface.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    #[error("interface {ifname:?} is not a valid interface name (1-15 bytes, no '/', ':', NUL or whitespace)")]
    BadName { ifname: String },
    #[error("interface {ifname:?} does not exist in the dataplane's network namespace")]
    NoSuchInterface { ifname: String },
    #[error(
        "interface {ifname} is not a veth (kind: {kind}); the dataplane drives only ferry's veths"
    )]
    NotVeth { ifname: String, kind: String },
    #[error("interface {ifname} is a veth whose peer is in the dataplane's own network namespace, not a pod's host veth")]
    PeerHere { ifname: String },
    #[error("interface {ifname}: asking the kernel what it is (RTM_GETLINK): {source}")]
    LinkQuery { ifname: String, source: io::Error },
    #[error("tap {ifname}: {source}")]
    Netns {
        ifname: String,
        source: crate::io::netns::NetnsError,
    },
    #[error("interface {ifname}: loading the XDP program failed: {cause}")]
    XdpLoad { ifname: String, cause: String },
    #[error("interface {ifname}: attaching the XDP program failed: {cause}")]
    XdpAttach { ifname: String, cause: String },
    #[error("interface {ifname} queue {queue}: creating the AF_XDP socket failed: {cause}")]
    Socket {
        ifname: String,
        queue: u32,
        cause: String,
    },
    #[error(
        "interface {ifname} queue {queue}: registering the socket in the XSKMAP failed: {cause}"
    )]
    XskMap {
        ifname: String,
        queue: u32,
        cause: String,
    },
    #[error("port {ifname}: this backend cannot open {kind} ports")]
    Unsupported { ifname: String, kind: &'static str },
    #[error("tap {ifname} in {netns}: {op}: {source}")]
    Tap {
        ifname: String,
        netns: String,
        op: &'static str,
        source: io::Error,
    },
    #[error("interface {ifname} queue {queue}: creating the frame pool (UMEM) failed: {cause}")]
    Pool {
        ifname: String,
        queue: u32,
        cause: String,
    },
}

/// Whether `name` is acceptable as a Linux interface name.
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace())
}
