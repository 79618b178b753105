//! The tap adapter: pod taps with virtio-net headers, one queue per worker.
//!
//! ferryd makes each tap pod's interface a persistent multi-queue tap
//! (`IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | IFF_MULTI_QUEUE`) directly inside
//! the pod's network namespace, under the pod's ifname. The dataplane
//! attaches to it by name *from inside that namespace*: a short-lived thread
//! `setns`es into the pod namespace, opens `/dev/net/tun` once per worker
//! and `TUNSETIFF`s each fd onto the existing device (the tun driver looks
//! the name up in the namespace the fd was opened in), then hands the fds
//! back; an fd keeps working from any thread and namespace. The same path
//! serves the first open and every reattach after a dataplane restart, so
//! nothing has to be passed between processes (the table API carries the
//! netns path and ifname). The device is persistent: while no queue is
//! attached the pod sees NO-CARRIER, keeps its addresses and routes, and
//! its TCP connections resume once the queues are back.
//!
//! Each queue fd is nonblocking and set up with `TUNSETVNETHDRSZ` 10 and
//! `TUNSETOFFLOAD` (`TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN`):
//! we accept partial checksums and TSO frames, so the pod's stack sends
//! 64 KiB GSO frames, and we may write them back. Frames are read with
//! `readv` (header into the descriptor, frame into a 66 KiB buffer) and
//! written with `writev`, a bounded number per call: the RX batch is capped
//! at [`TAP_RX_BATCH`] so one busy tap cannot starve the worker's other
//! queues, and TX writes every frame it is given.
//!
//! Memory per tap port = workers × frames_per_queue × [`TAP_FRAME_SIZE`]
//! (128 frames, the default, is 8.25 MiB per worker per tap; pages are
//! only touched when used).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use ferry_api::table::NetnsId;

use crate::core::offload::{Offload, VNET_HDR_LEN};
use crate::core::wire::ETH_HDR_LEN;
use crate::io::backend::NodeQueue;
use crate::io::netns::open_pod_netns;
use crate::io::pool::{MemDesc, MemPool};
use crate::io::port::{
    valid_ifname, Holds, Opened, Owned, PortBackend, PortError, PortKind, PortSpec, RingFrames,
};

/// Frame buffer of a tap queue: the largest GSO frame (14 + 65535 bytes)
/// fits, rounded up to 66 KiB.
pub const TAP_FRAME_SIZE: usize = 66 * 1024;
/// The largest pod MTU (L3 bytes) a tap port carries: what a frame buffer
/// holds after the Ethernet header, bounded by the largest IPv4 packet.
pub const MAX_POD_MTU: u32 = {
    let frame = (TAP_FRAME_SIZE - crate::core::wire::ETH_HDR_LEN) as u32;
    if frame < 65535 {
        frame
    } else {
        65535
    }
};
/// Most frames read from one tap queue per `rx` call.
pub const TAP_RX_BATCH: usize = 32;
/// What `tx_room` reports: writes are synchronous, there is no ring.
const TAP_TX_ROOM: usize = 1 << 16;
/// The shortest read that holds a frame: the virtio-net header and an
/// Ethernet header. Anything shorter is counted `tap_short_read`.
const MIN_READ: usize = VNET_HDR_LEN + ETH_HDR_LEN;

/// A frame of a tap queue: its buffer and its virtio-net header (a frame
/// of a [`MemPool`] made [`MemPool::with_offload`]).
pub type TapDesc = MemDesc;
/// Heap frames of one tap queue, with offload headers.
pub type TapPool = MemPool;

/// The I/O half of a tap queue: a nonblocking queue fd and the frames in
/// its hands. Its methods take the [`TapPool`] the frames belong to (the
/// one it was made with: [`TapQueue`] keeps the pair, and
/// [`TapQueue::into_parts`] hands both to an owner that does the same).
pub struct TapIo {
    fd: OwnedFd,
    /// Free frames given to us to read into (the tap's "fill ring").
    fill: Vec<TapDesc>,
    /// Frames written, waiting to be handed back by `complete`.
    done: Vec<TapDesc>,
    tx_errors: u64,
    /// Reads too short to be a frame, since the last `take_short_reads`.
    short_reads: u64,
}

/// One worker's queue of a tap.
pub struct TapQueue {
    io: TapIo,
    pool: TapPool,
}

impl TapQueue {
    fn new(fd: OwnedFd, frames: usize) -> TapQueue {
        let frames = frames.max(2 * TAP_RX_BATCH);
        TapQueue {
            io: TapIo {
                fd,
                fill: Vec::with_capacity(frames),
                done: Vec::with_capacity(frames),
                tx_errors: 0,
                short_reads: 0,
            },
            pool: MemPool::with_offload(frames, TAP_FRAME_SIZE),
        }
    }

    /// The I/O half and the pool, for an owner that keeps them together
    /// ([`crate::io::backend::NodeQueue`], the one port type the workers
    /// drive).
    pub fn into_parts(self) -> (TapIo, TapPool) {
        (self.io, self.pool)
    }
}

impl TapIo {
    /// Read up to `max` (at most [`TAP_RX_BATCH`]) frames, each pushed onto
    /// `out` as a token of `pool`; how many.
    pub fn rx<D: Holds<TapDesc>>(
        &mut self,
        pool: &TapPool,
        out: &mut Vec<Owned<D>>,
        max: usize,
    ) -> usize {
        let max = max.min(TAP_RX_BATCH);
        let mut n = 0;
        // Bounded: at most `max` reads, whatever they return.
        for _ in 0..max {
            let Some(d) = self.fill.pop() else { break };
            // SAFETY: `d` was given to us by `fill` (its token consumed
            // there) and is in no list of ours any more; if the read fails
            // it goes back to the fill list and this token is dropped.
            let mut frame = unsafe { Owned::from_raw(D::wrap(d), pool.id()) };
            let mut hdr = [0u8; VNET_HDR_LEN];
            let buf = pool.frame_buf(&mut frame);
            let iov = [
                libc::iovec {
                    iov_base: hdr.as_mut_ptr().cast(),
                    iov_len: hdr.len(),
                },
                libc::iovec {
                    iov_base: buf.as_mut_ptr().cast(),
                    iov_len: buf.len(),
                },
            ];
            // SAFETY: both iovecs point to writable memory of the given
            // lengths that outlives the call; the fd is ours and open.
            let r = unsafe { libc::readv(self.fd.as_raw_fd(), iov.as_ptr(), 2) };
            if r < 0 {
                // EAGAIN: nothing more to read. Other errors (the device
                // went away) read as nothing; the port is removed by ferryd.
                self.fill.push(d);
                break;
            }
            let r = r as usize;
            if r < MIN_READ {
                self.short_reads += 1;
                self.fill.push(d);
                continue;
            }
            pool.set_frame_offload(&mut frame, Offload::from_bytes(&hdr));
            pool.set_frame_len(&mut frame, r - VNET_HDR_LEN);
            out.push(frame);
            n += 1;
        }
        n
    }

    /// Write one frame with its virtio-net header; false if refused.
    pub fn write_frame(&mut self, frame: &[u8], offload: Offload) -> bool {
        let hdr = offload.to_bytes();
        let iov = [
            libc::iovec {
                iov_base: hdr.as_ptr() as *mut libc::c_void,
                iov_len: hdr.len(),
            },
            libc::iovec {
                iov_base: frame.as_ptr() as *mut libc::c_void,
                iov_len: frame.len(),
            },
        ];
        // SAFETY: both iovecs point to readable memory of the given lengths
        // that outlives the call; writev only reads them.
        unsafe { libc::writev(self.fd.as_raw_fd(), iov.as_ptr(), 2) >= 0 }
    }

    /// Write the first `n` frames of `frames` (they come back through
    /// `complete`); how many.
    pub fn tx<D: Holds<TapDesc>>(
        &mut self,
        pool: &TapPool,
        frames: &mut Vec<Owned<D>>,
        n: usize,
    ) -> usize {
        let n = n.min(frames.len());
        for mut frame in frames.drain(..n) {
            let len = pool.frame_len(&frame);
            let offload = pool.frame_offload(&frame);
            let buf = pool.frame_buf(&mut frame);
            let len = len.min(buf.len());
            if !self.write_frame(&buf[..len], offload) {
                self.tx_errors += 1;
            }
            keep_raw(pool, frame, &mut self.done);
        }
        n
    }

    pub fn tx_room(&self) -> usize {
        TAP_TX_ROOM
    }

    pub fn fill_room(&self) -> usize {
        self.fill.capacity() - self.fill.len()
    }

    pub fn fill_capacity(&self) -> usize {
        self.fill.capacity()
    }

    /// Take the last `n` frames of `free` to read into: all if they fit in
    /// [`TapIo::fill_room`], none otherwise. How many.
    pub fn fill<D: Holds<TapDesc>>(
        &mut self,
        pool: &TapPool,
        free: &mut Vec<Owned<D>>,
        n: usize,
    ) -> usize {
        if n > self.fill_room() || n > free.len() {
            return 0;
        }
        let from = free.len() - n;
        for frame in free.drain(from..) {
            keep_raw(pool, frame, &mut self.fill);
        }
        n
    }

    /// Push up to `max` written frames back onto `out` as tokens of `pool`.
    pub fn complete<D: Holds<TapDesc>>(
        &mut self,
        pool: &TapPool,
        out: &mut Vec<Owned<D>>,
        max: usize,
    ) -> usize {
        let n = max.min(self.done.len());
        let from = self.done.len() - n;
        for d in self.done.drain(from..) {
            // SAFETY: `done` holds frames whose tokens `tx` consumed, each
            // once; draining removes them, so each gets one token.
            out.push(unsafe { Owned::from_raw(D::wrap(d), pool.id()) });
        }
        n
    }

    /// Frames in our fill list and written-not-completed list.
    pub fn ring_frames(&self) -> RingFrames {
        RingFrames {
            fill_or_rx: self.fill.len(),
            tx_or_completion: self.done.len(),
        }
    }

    pub fn poll_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    pub fn take_tx_errors(&mut self) -> u64 {
        std::mem::take(&mut self.tx_errors)
    }

    pub fn take_short_reads(&mut self) -> u64 {
        std::mem::take(&mut self.short_reads)
    }
}

/// Consume `frame`'s token, keeping its descriptor in `list` (our fill or
/// done list). A token of another pool or kind is not ours to keep: it is
/// dropped (the frame is lost to its own pool, never aliased here).
fn keep_raw<D: Holds<TapDesc>>(pool: &TapPool, frame: Owned<D>, list: &mut Vec<TapDesc>) {
    let ours = frame.pool() == pool.id();
    debug_assert!(ours, "a frame of another pool handed to a tap queue");
    let d = frame.into_raw();
    if let (true, Some(raw)) = (ours, d.get()) {
        list.push(*raw);
    }
}

/// Opens tap ports.
pub struct TapBackend {
    pub frames_per_queue: usize,
}

impl Default for TapBackend {
    fn default() -> Self {
        TapBackend {
            frames_per_queue: 128,
        }
    }
}

/// Attach one new queue fd (opened in the current thread's namespace) to
/// the existing multi-queue tap `ifname`, nonblocking, with a 10-byte
/// virtio-net header and our offloads.
pub fn attach_queue(ifname: &str) -> Result<OwnedFd, ferry_tun::TunError> {
    let fd = ferry_tun::open(ifname, 0, true)?;
    ferry_tun::set_vnet_hdr_len(&fd, VNET_HDR_LEN)?;
    ferry_tun::set_offloads(&fd)?;
    Ok(fd)
}

/// Open `count` queues of the tap `ifname` inside the namespace at
/// `netns` (which must be a pod's, and `netns_id` when given: see
/// [`crate::io::netns`]), on a scoped thread that enters it (setns changes only
/// the calling thread). The tap must exist: TUNSETIFF would otherwise
/// create a new, non-persistent one in the pod.
pub fn open_queues(
    netns: &str,
    netns_id: Option<NetnsId>,
    ifname: &str,
    count: usize,
) -> Result<Vec<OwnedFd>, PortError> {
    let err = |op: &'static str, source: io::Error| PortError::Tap {
        ifname: ifname.to_string(),
        netns: netns.to_string(),
        op,
        source,
    };
    let ns = open_pod_netns(netns, netns_id).map_err(|source| PortError::Netns {
        ifname: ifname.to_string(),
        source,
    })?;
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns on this thread only, with an fd we hold open; the
            // thread ends right after, so no other code runs in the pod
            // namespace.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } < 0 {
                return Err(err("setns", io::Error::last_os_error()));
            }
            if crate::io::afxdp::if_index(ifname).is_none() {
                return Err(PortError::NoSuchInterface {
                    ifname: format!("{ifname} (in {netns})"),
                });
            }
            (0..count.max(1))
                .map(|_| attach_queue(ifname).map_err(|(op, e)| err(op, e)))
                .collect()
        })
        .join()
        .unwrap_or_else(|_| {
            Err(err(
                "queue thread",
                io::Error::other("the thread opening the queues panicked"),
            ))
        })
    })
}

/// What keeps a tap port open: nothing beyond its queues (the device is
/// persistent and ferryd's to delete).
pub struct TapAttachment;

impl PortBackend for TapBackend {
    fn mode_of(_: &TapAttachment) -> String {
        "tap".to_string()
    }

    type Queue = NodeQueue;
    type Attachment = TapAttachment;

    /// Tap ports only: a veth is not something this backend opens.
    fn mtu_limits(&self) -> ferry_api::table::MtuLimits {
        ferry_api::table::MtuLimits {
            veth: 0,
            tap: MAX_POD_MTU,
            uplink: None,
        }
    }

    fn open(
        &mut self,
        spec: &PortSpec,
        workers: usize,
    ) -> Result<Opened<TapAttachment, NodeQueue>, PortError> {
        let PortKind::Tap {
            netns,
            ifname,
            netns_id,
        } = &spec.kind
        else {
            return Err(PortError::Unsupported {
                ifname: spec.name.clone(),
                kind: "AF_XDP",
            });
        };
        if !valid_ifname(ifname) {
            return Err(PortError::BadName {
                ifname: ifname.clone(),
            });
        }
        let fds = open_queues(netns, *netns_id, ifname, workers)?;
        let queues = fds
            .into_iter()
            .map(|fd| Some(NodeQueue::from(TapQueue::new(fd, self.frames_per_queue))))
            .collect();
        log::info!(
            "{}: tap {ifname} in {netns}, {workers} queue(s) attached",
            spec.name
        );
        Ok((TapAttachment, queues))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::port::{FramePool, PortQueue};
    use std::os::unix::net::UnixDatagram;

    /// A queue on one end of a datagram socket pair: every send is one
    /// read, as every frame is on a tap. 64 frames, 32 of them given to
    /// the fill list; the other 32 are returned.
    fn queue() -> (
        NodeQueue,
        UnixDatagram,
        Vec<crate::io::port::FrameOf<NodeQueue>>,
    ) {
        let (ours, theirs) = UnixDatagram::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let mut q = NodeQueue::from(TapQueue::new(OwnedFd::from(ours), 64));
        let mut free = Vec::new();
        assert_eq!(q.take_frames(&mut free), 64);
        assert_eq!(q.take_frames(&mut free), 0, "tokens are issued once");
        assert_eq!(q.fill(&mut free, 32), 32);
        (q, theirs, free)
    }

    #[test]
    fn reads_too_short_for_a_frame_are_counted_and_skipped() {
        let (mut q, peer, free) = queue();
        let hdr = Offload {
            flags: crate::core::offload::F_NEEDS_CSUM,
            csum_start: 34,
            csum_offset: 16,
            ..Offload::NONE
        }
        .to_bytes();
        // Shorter than the header; the header and 13 bytes; a whole frame.
        peer.send(&hdr[..4]).unwrap();
        let mut short = hdr.to_vec();
        short.extend_from_slice(&[0xab; 13]);
        peer.send(&short).unwrap();
        let mut full = hdr.to_vec();
        full.extend_from_slice(&[0xcd; 60]);
        peer.send(&full).unwrap();

        let mut out = Vec::new();
        assert_eq!(q.rx(&mut out, 8), 1, "one frame among three reads");
        assert_eq!(q.take_short_reads(), 2);
        assert_eq!(q.take_short_reads(), 0, "taken once");
        assert_eq!(q.pool().len_of(&out[0]), 60);
        assert_eq!(q.pool().offload_of(&out[0]), Offload::from_bytes(&hdr));
        assert_eq!(&q.pool().buf_mut(&mut out[0])[..60], &[0xcd; 60]);
        // The short reads' frames went back to the fill list.
        let rings = q.ring_frames();
        assert_eq!(rings.fill_or_rx, 31);
        assert_eq!(rings.fill_or_rx + out.len() + free.len(), 64);
    }

    /// A frame written comes back through `complete`, once.
    #[test]
    fn written_frames_come_back_once() {
        let (mut q, peer, mut free) = queue();
        let mut f = free.pop().unwrap();
        q.pool().buf_mut(&mut f)[..3].copy_from_slice(b"abc");
        q.pool().set_len(&mut f, 3);
        let mut pending = vec![f];
        assert_eq!(q.tx(&mut pending, 1), 1);
        assert!(pending.is_empty());
        let mut got = [0u8; 64];
        let n = peer.recv(&mut got).unwrap();
        assert_eq!(&got[VNET_HDR_LEN..n], b"abc");
        assert_eq!(q.ring_frames().tx_or_completion, 1);
        let mut back = Vec::new();
        assert_eq!(q.complete(&mut back, 8), 1);
        assert_eq!(q.complete(&mut back, 8), 0);
        assert_eq!(q.ring_frames().tx_or_completion, 0);
    }
}
