//! The port abstraction the workers drive: our own small trait so the ring
//! implementation (xsk-rs today, [`crate::sim`] in tests, a pure-Rust ring
//! crate tomorrow) can be swapped without touching the worker loop.
//!
//! The model is AF_XDP's. Each worker owns one [`PortQueue`] per port (for
//! AF_XDP: the socket bound to queue `i` of the interface, on the UMEM
//! that is its [`FramePool`]: the worker's, shared by its sockets on every
//! veth, or, on the uplink, one of its own). A frame in the worker's
//! hands is an [`Owned`] token (one per frame, not copyable); in a ring it
//! is a bare descriptor. Frames circulate between the worker and the rings:
//!
//! ```text
//!  free list ──fill──▶ fill ring ──kernel──▶ rx ring ──rx──▶ worker
//!      ▲                                                      │
//!      ├──────────────── drop verdict ◀───────────────────────┤
//!      └──complete── completion ring ◀──kernel── tx ring ◀─tx─┘
//! ```
//!
//! A frame sent back out of the port it came in on (ARP and ICMP replies)
//! moves by token; a frame forwarded to another port is copied into a
//! free frame of that port's pool, or written straight to a tap
//! ([`PortQueue::tx_direct`]); between two ports of one shared pool it
//! moves by token too. Calls are batched: every method takes from
//! or pushes onto one of the worker's vectors (a free list per pool), whose
//! capacity is the pool's size, so moving frames never allocates.

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};

use ferry_api::table::MtuLimits;

use crate::core::pipeline::Offload;

/// Which pool a frame belongs to: unique per pool made in this process
/// (never reused), so a token of one pool can never reach another pool's
/// memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PoolId(u64);

impl PoolId {
    /// An id no other pool has had.
    pub fn fresh() -> PoolId {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        // Relaxed: only uniqueness matters, which the atomic add gives.
        PoolId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

/// One frame in the worker's hands: the only name of that frame while it
/// exists. Neither `Copy` nor `Clone`; made only by the I/O layer when a
/// frame comes out of a ring (RX, completion) or out of a new pool
/// ([`PortQueue::take_frames`]), and consumed when it goes back into one
/// ([`PortQueue::tx`], [`PortQueue::fill`]). So "a frame is in exactly one
/// place" is a property of the types, and `&mut` to a token is `&mut` to
/// its frame: [`FramePool::buf_mut`] is safe. A token dropped is a frame
/// lost to its pool until the pool goes (never unsound; the frame
/// conservation checks of the tests catch it).
#[derive(Debug)]
#[must_use = "a frame dropped is lost to its pool"]
pub struct Owned<D> {
    desc: D,
    pool: PoolId,
}

impl<D> Owned<D> {
    /// The token of the frame `desc` of pool `pool`.
    ///
    /// # Safety
    ///
    /// `desc` names a frame of `pool` that no other live token names and
    /// that no ring (nor the kernel) will touch until the token is given
    /// back through [`Owned::into_raw`].
    pub unsafe fn from_raw(desc: D, pool: PoolId) -> Owned<D> {
        Owned { desc, pool }
    }

    /// Give the frame up (to a ring): the descriptor is all that is left.
    pub fn into_raw(self) -> D {
        self.desc
    }

    pub fn pool(&self) -> PoolId {
        self.pool
    }

    pub fn desc(&self) -> &D {
        &self.desc
    }

    /// The descriptor, to change its length or header.
    ///
    /// # Safety
    ///
    /// The caller does not change which frame (chunk) it names.
    pub unsafe fn desc_mut(&mut self) -> &mut D {
        &mut self.desc
    }
}

/// A descriptor type that may hold an adapter's own descriptor `R` (the
/// node backend's enum holds either AF_XDP or tap descriptors), so one
/// adapter implementation serves its own queues and the enum's.
pub trait Holds<R>: Sized {
    fn wrap(raw: R) -> Self;
    fn get(&self) -> Option<&R>;
    fn get_mut(&mut self) -> Option<&mut R>;
}

impl<T> Holds<T> for T {
    fn wrap(raw: T) -> T {
        raw
    }
    fn get(&self) -> Option<&T> {
        Some(self)
    }
    fn get_mut(&mut self) -> Option<&mut T> {
        Some(self)
    }
}

/// One queue's frame memory. Frames are reached through their tokens.
pub trait FramePool: Send + 'static {
    /// Names one frame (its chunk, the data offset in it, the data length).
    type Desc: Send + 'static;

    /// Frames in the pool.
    fn frame_count(&self) -> usize;

    /// The id every token of this pool carries.
    fn id(&self) -> PoolId;

    /// Whether the pool is shared by several queues (a worker's UMEM): its
    /// frames are the worker's, they outlive each queue, and a closed
    /// queue hands back the ones its rings held ([`PortQueue::close`]).
    /// A pool of one queue goes with it, frames and all.
    fn shared(&self) -> bool {
        false
    }

    /// Length of the frame data.
    fn len_of(&self, frame: &Owned<Self::Desc>) -> usize;

    /// The frame's chunk from its data start to the end of the chunk (the
    /// frame is the first `len_of` bytes). Empty for a token of another
    /// pool.
    fn buf_mut<'a>(&'a self, frame: &'a mut Owned<Self::Desc>) -> &'a mut [u8];

    /// The frame's whole buffer and where its data starts in it: the bytes
    /// before are headroom, free for headers prepended in place
    /// ([`crate::core::pipeline::Frame::prepend`]); from the data start on
    /// it is [`FramePool::buf_mut`]'s slice. Pools without headroom keep
    /// this default (no headroom). Empty for a token of another pool.
    fn buffer_mut<'a>(&'a self, frame: &'a mut Owned<Self::Desc>) -> (&'a mut [u8], usize) {
        (self.buf_mut(frame), 0)
    }

    /// Set the frame data length (clamped to the chunk capacity).
    fn set_len(&self, frame: &mut Owned<Self::Desc>, len: usize);

    /// Whether frames transmitted through this pool's queue may carry
    /// offloads (GSO frames, partial checksums): true for tap queues, whose
    /// frames travel with a virtio-net header. Frames for a pool that
    /// cannot take them are segmented / completed by the worker first.
    fn takes_offload(&self) -> bool {
        false
    }

    /// The frame's offload header ([`Offload::NONE`] for pools without).
    fn offload_of(&self, _frame: &Owned<Self::Desc>) -> Offload {
        Offload::NONE
    }

    /// Set the header the frame is transmitted with (ignored by pools
    /// without offloads).
    fn set_offload(&self, _frame: &mut Owned<Self::Desc>, _offload: Offload) {}

    /// Whether this pool's queue receives and transmits a packet larger
    /// than one frame as a chain of frames (AF_XDP multi-buffer on veth
    /// ports): each frame but the last [`FramePool::continues`].
    fn takes_chains(&self) -> bool {
        false
    }

    /// Whether more frames of this frame's packet follow it (as received,
    /// or as set by [`FramePool::set_continues`]). Never, in pools
    /// without chains.
    fn continues(&self, _frame: &Owned<Self::Desc>) -> bool {
        false
    }

    /// Transmit the frame as followed by more of its packet (`more`), or
    /// as a packet's last frame. Every frame transmitted by a pool with
    /// chains says which; ignored by pools without.
    fn set_continues(&self, _frame: &mut Owned<Self::Desc>, _more: bool) {}
}

/// The token type of queue `Q`'s frames.
pub type FrameOf<Q> = Owned<<<Q as PortQueue>::Pool as FramePool>::Desc>;

/// Where a queue's frames are on the adapter's side (the worker knows the
/// rest): for the frame conservation checks of the tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RingFrames {
    /// In the fill ring, or received into the RX ring and not yet taken
    /// (AF_XDP cannot tell the two apart without reading the rings).
    pub fill_or_rx: usize,
    /// In the TX ring, or sent and waiting in the completion ring.
    pub tx_or_completion: usize,
}

/// One worker's queue on one port: the RX/TX rings of one AF_XDP socket plus
/// its fill/completion rings and its frame memory.
///
/// Frames move as [`Owned`] tokens in the worker's own vectors, so no call
/// allocates: `rx` and `complete` push onto the caller's vector, `tx` and
/// `fill` take from it.
pub trait PortQueue: Send + 'static {
    type Pool: FramePool;

    /// The queue's frame memory.
    fn pool(&self) -> &Self::Pool;

    /// Push a token for every frame of the pool onto `out`, the first time
    /// it is called (the pool is new, every frame free); nothing later.
    /// How many.
    fn take_frames(&mut self, out: &mut Vec<FrameOf<Self>>) -> usize;

    /// Close the queue (blocking as long as the kernel takes) and hand
    /// back a token for every frame of a shared pool its rings held; none
    /// for a pool of its own, which goes with it.
    fn close(self) -> Vec<FrameOf<Self>>
    where
        Self: Sized,
    {
        Vec::new()
    }

    /// Push up to `max` received frames onto `out`; how many. Whole
    /// packets only: a pool with chains may deliver a few more than `max`
    /// to end a chain, never part of one.
    fn rx(&mut self, out: &mut Vec<FrameOf<Self>>, max: usize) -> usize;

    /// Free slots in the TX ring.
    fn tx_room(&mut self) -> usize;

    /// Queue the first `n` frames of `frames` for transmission, in order
    /// (one ring commit), removing them from `frames`: all of them when
    /// they fit in [`PortQueue::tx_room`], none otherwise. How many. The
    /// caller never cuts a chain ([`FramePool::continues`]).
    fn tx(&mut self, frames: &mut Vec<FrameOf<Self>>, n: usize) -> usize;

    /// Tell the kernel about queued TX frames if the ring asks for it
    /// (need_wakeup). Returns whether a wake-up syscall was made.
    fn kick_tx(&mut self) -> io::Result<bool>;

    /// Free slots in the fill ring.
    fn fill_room(&mut self) -> usize;

    /// Slots of the fill ring: less [`PortQueue::fill_room`], the frames
    /// given to it that the kernel has not taken yet.
    fn fill_capacity(&self) -> usize;

    /// Give the last `n` frames of `free` (a free list is a stack) to the
    /// fill ring (one commit), removing them; all or none, like
    /// [`PortQueue::tx`].
    fn fill(&mut self, free: &mut Vec<FrameOf<Self>>, n: usize) -> usize;

    /// Wake the kernel's receive side if the fill ring asks for it.
    fn kick_rx(&mut self) -> io::Result<bool>;

    /// Push up to `max` transmitted frames back onto `out`; how many.
    fn complete(&mut self, out: &mut Vec<FrameOf<Self>>, max: usize) -> usize;

    /// How many of the pool's frames the adapter holds, by place.
    fn ring_frames(&self) -> RingFrames;

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

    /// Whether the queue's device is gone for good (a veth deleted under
    /// its AF_XDP socket, with the pod's namespace): its rings never move
    /// again and the frames they hold come back only by
    /// [`PortQueue::close`]. The worker asks about once a second and then
    /// closes the queue itself. Taps keep their device while the
    /// dataplane holds its fd: never.
    fn device_gone(&mut self) -> bool {
        false
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
    /// The node's uplink NIC (named by ferryd's `NodeSettings::uplink`
    /// only): the classifying XDP program, one socket per queue.
    Uplink(UplinkSpec),
}

/// What the uplink's classifier sends to the sockets; everything else
/// passes to the node kernel. A change of any of it reopens the port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UplinkSpec {
    /// The node's address on the uplink.
    pub address: std::net::Ipv4Addr,
    /// VXLAN mode: UDP to `address` and this port is ferry's.
    pub vxlan_port: Option<u16>,
    /// Direct mode: packets to these prefixes (the node's pod CIDRs, both
    /// families) are ferry's. Empty in VXLAN mode.
    pub local_cidrs: Vec<ipnet::IpNet>,
    /// (IP protocol, port) of every NodePort: TCP/UDP to `address` at
    /// these is ferry's in either mode.
    pub node_ports: Vec<(u8, u16)>,
    /// Set the uplink's channel count to the worker count when they differ.
    pub set_channels: bool,
}

/// What the dataplane must know of the uplink link itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkInfo {
    pub mac: ferry_api::MacAddr,
    /// The link's MTU (L3 bytes).
    pub mtu: u32,
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

    /// Replace the node ports of an opened uplink's classifier in place
    /// (no reopen, no gap in its traffic). A backend without a classifier
    /// has nothing to update.
    fn update_node_ports(
        attachment: &mut Self::Attachment,
        ports: &[(u8, u16)],
    ) -> Result<(), PortError> {
        let _ = (attachment, ports);
        Ok(())
    }

    /// The largest pod MTU each kind of port carries in one frame (what
    /// `Hello` reports, so ferryd refuses pods above it).
    fn mtu_limits(&self) -> MtuLimits;

    /// How an opened port is driven, for operators (`PortStats::mode`):
    /// `native-zerocopy`, `native-copy`, `generic-copy`, `tap`, `mem`.
    fn mode_of(attachment: &Self::Attachment) -> String;

    /// MAC and MTU of the interface `ifname` (the uplink), `None` when it
    /// is not there. The kernel's answer unless a backend has its own
    /// links.
    fn link_info(&self, ifname: &str) -> Option<LinkInfo> {
        crate::io::link::link_info(ifname)
    }

    /// How each peer in `peers` is reached on the uplink `ifname`: the next
    /// hop the node kernel routes it through and that hop's MAC from the
    /// kernel's neighbour table, asking the kernel to resolve what it does
    /// not know yet (the answer then says unresolved; a later call sees
    /// it). One entry per peer, in order.
    fn resolve_neighbours(
        &mut self,
        ifname: &str,
        peers: &[std::net::Ipv4Addr],
    ) -> Vec<ferry_api::table::Neighbour> {
        crate::io::neigh::resolve(ifname, peers)
    }
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
    #[error("interface {ifname} cannot be the uplink: it is {reason}")]
    NotUplink {
        ifname: String,
        reason: &'static str,
    },
    #[error("uplink {ifname}: {op}: {source}")]
    Channels {
        ifname: String,
        op: &'static str,
        source: io::Error,
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
