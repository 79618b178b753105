//! The port abstraction the workers drive: our own small trait so the ring
//! implementation (xsk-rs today, [`crate::mem`] in tests, a pure-Rust ring
//! crate tomorrow) can be swapped without touching the worker loop.
//!
//! The model is AF_XDP's: each worker owns one [`FramePool`] (for AF_XDP, one
//! UMEM shared by all of the worker's sockets) and one [`PortQueue`] per
//! port. A frame is named by a descriptor (`FramePool::Desc`); moving a frame
//! from one port to another is moving its descriptor from one queue's RX ring
//! to another queue's TX ring, with no copy. Descriptors circulate:
//!
//! ```text
//!  free list ──fill──▶ fill ring ──kernel──▶ rx ring ──rx──▶ worker
//!      ▲                                                      │
//!      ├──────────────── drop verdict ◀───────────────────────┤
//!      └──complete── completion ring ◀──kernel── tx ring ◀─tx─┘
//! ```
//!
//! Calls are batched: every method takes or fills a slice.

use std::io;
use std::os::fd::RawFd;

/// A worker's frame memory. Every descriptor a queue hands out belongs to the
/// pool the queue was created on.
pub trait FramePool: Send + 'static {
    /// Names one frame (its chunk, the data offset in it, the data length).
    type Desc: Copy + Default + Send + 'static;

    /// Number of frames in the pool.
    fn frame_count(&self) -> usize;

    /// Descriptor of every frame, indexed by [`FramePool::index_of`]; all of
    /// them are free when the pool is created.
    fn all_descs(&self) -> Vec<Self::Desc>;

    /// Dense index of the frame `desc` names (`0..frame_count()`).
    fn index_of(&self, desc: &Self::Desc) -> usize;

    /// Length of the frame data.
    fn len_of(&self, desc: &Self::Desc) -> usize;

    /// Set the frame data length (clamped to the chunk capacity).
    fn set_len(&self, desc: &mut Self::Desc, len: usize);

    /// The frame's chunk from its data start to the end of the chunk (the
    /// frame is the first `len_of` bytes).
    ///
    /// # Safety
    ///
    /// The caller owns the frame: it came out of an RX or completion ring
    /// (or the initial free list) and has not been handed to any ring since,
    /// and the caller holds no other reference into this frame's chunk while
    /// the returned slice lives.
    #[expect(clippy::mut_from_ref, reason = "the pool hands out disjoint chunks the caller owns; see Safety")]
    unsafe fn chunk_mut(&self, desc: &Self::Desc) -> &mut [u8];
}

/// One worker's queue on one port: the RX/TX rings of one AF_XDP socket plus
/// the fill/completion rings of its (device, queue) pair.
pub trait PortQueue: Send + 'static {
    type Pool: FramePool;

    /// Move up to `out.len()` received frames into `out`; returns how many.
    fn rx(&mut self, pool: &Self::Pool, out: &mut [<Self::Pool as FramePool>::Desc]) -> usize;

    /// Free slots in the TX ring.
    fn tx_room(&mut self) -> usize;

    /// Queue `descs` for transmission (one ring commit). The caller checked
    /// [`PortQueue::tx_room`]; frames that do not fit are not taken, and the
    /// number taken is returned.
    fn tx(&mut self, pool: &Self::Pool, descs: &[<Self::Pool as FramePool>::Desc]) -> usize;

    /// Tell the kernel about queued TX frames if the ring asks for it
    /// (need_wakeup). Returns whether a wake-up syscall was made.
    fn kick_tx(&mut self) -> io::Result<bool>;

    /// Free slots in the fill ring.
    fn fill_room(&mut self) -> usize;

    /// Give free frames to the fill ring (one commit); returns how many were
    /// taken (0 or all, like the rings themselves, when room was checked).
    fn fill(&mut self, descs: &[<Self::Pool as FramePool>::Desc]) -> usize;

    /// Wake the kernel's receive side if the fill ring asks for it.
    fn kick_rx(&mut self) -> io::Result<bool>;

    /// Move up to `out.len()` transmitted frames back into `out`.
    fn complete(&mut self, out: &mut [<Self::Pool as FramePool>::Desc]) -> usize;

    /// A descriptor to poll(2) for readability while idle, if the queue has
    /// one.
    fn poll_fd(&self) -> Option<RawFd>;
}

/// What the control thread needs from an I/O adapter: frame pools for the
/// workers (made once at start) and, per interface, the attachment that
/// steers its traffic to us plus one queue per worker.
pub trait PortBackend: Send + 'static {
    type Queue: PortQueue;
    /// Keeps the interface attached (XDP program, map); dropping it detaches.
    type Attachment: Send + 'static;

    /// One frame pool per worker.
    fn make_pools(&mut self, workers: usize) -> Result<Vec<<Self::Queue as PortQueue>::Pool>, PortError>;

    /// Attach `ifname` and create worker `i`'s queue on queue `i` of the
    /// interface for every `i < workers`; `None` where the interface has
    /// fewer queues than there are workers (index 0 is always `Some`).
    fn open(
        &mut self,
        ifname: &str,
        workers: usize,
    ) -> Result<(Self::Attachment, Vec<Option<Self::Queue>>), PortError>;
}

/// Why a port could not be opened. Every variant names the interface.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    #[error("interface {ifname:?} is not a valid interface name (1-15 bytes, no '/', ':', NUL or whitespace)")]
    BadName { ifname: String },
    #[error("interface {ifname:?} does not exist in the dataplane's network namespace")]
    NoSuchInterface { ifname: String },
    #[error("interface {ifname}: loading the XDP program failed: {cause}")]
    XdpLoad { ifname: String, cause: String },
    #[error("interface {ifname}: attaching the XDP program failed: {cause}")]
    XdpAttach { ifname: String, cause: String },
    #[error("interface {ifname} queue {queue}: creating the AF_XDP socket failed: {cause}")]
    Socket { ifname: String, queue: u32, cause: String },
    #[error("interface {ifname} queue {queue}: registering the socket in the XSKMAP failed: {cause}")]
    XskMap { ifname: String, queue: u32, cause: String },
    #[error("worker {worker}: creating the frame pool (UMEM) failed: {cause}")]
    Pool { worker: usize, cause: String },
}

/// Whether `name` is acceptable as a Linux interface name.
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name.bytes().any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace())
}
