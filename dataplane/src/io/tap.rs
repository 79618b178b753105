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
use crate::io::netns::open_pod_netns;
use crate::io::pool::{MemDesc, MemPool};
use crate::io::port::{
    valid_ifname, FramePool, Opened, PortBackend, PortError, PortKind, PortQueue, PortSpec,
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

    pub fn into_parts(self) -> (TapIo, TapPool) {
        (self.io, self.pool)
    }
}

impl TapIo {
    /// Read up to `out.len()` (at most [`TAP_RX_BATCH`]) frames, each put
    /// into `out` as `wrap(frame)`; how many.
    pub fn rx<D>(&mut self, pool: &TapPool, out: &mut [D], wrap: impl Fn(TapDesc) -> D) -> usize {
        let max = out.len().min(TAP_RX_BATCH);
        let mut n = 0;
        // Bounded: at most `max` reads, whatever they return.
        for _ in 0..max {
            let Some(mut d) = self.fill.pop() else { break };
            let mut hdr = [0u8; VNET_HDR_LEN];
            // SAFETY: `d` was handed to us by `fill`, so the worker does not
            // touch its chunk until `rx` returns it; nothing else does.
            let buf = unsafe { pool.chunk_mut(&d) };
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
            pool.set_offload(&mut d, Offload::from_bytes(&hdr));
            // SAFETY: as above, the frame is ours.
            unsafe { pool.set_len(&mut d, r - VNET_HDR_LEN) };
            out[n] = wrap(d);
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

    /// Write every frame of `descs` (they come back through `complete`);
    /// how many.
    pub fn tx(&mut self, pool: &TapPool, descs: impl IntoIterator<Item = TapDesc>) -> usize {
        let mut sent = 0;
        for d in descs {
            // SAFETY: the worker handed the frame over (it holds no
            // reference into it until `complete` gives it back).
            let buf = unsafe { pool.chunk_mut(&d) };
            let len = pool.len_of(&d).min(buf.len());
            if !self.write_frame(&buf[..len], pool.offload_of(&d)) {
                self.tx_errors += 1;
            }
            self.done.push(d);
            sent += 1;
        }
        sent
    }

    pub fn tx_room(&self) -> usize {
        TAP_TX_ROOM
    }

    pub fn fill_room(&self) -> usize {
        self.fill.capacity() - self.fill.len()
    }

    /// Take `descs` as free frames to read into; the caller has checked
    /// that they fit ([`TapIo::fill_room`]). How many.
    pub fn fill(&mut self, descs: impl IntoIterator<Item = TapDesc>) -> usize {
        let before = self.fill.len();
        self.fill.extend(descs);
        self.fill.len() - before
    }

    /// Hand back up to `out.len()` written frames, each as `wrap(frame)`.
    pub fn complete<D>(&mut self, out: &mut [D], wrap: impl Fn(TapDesc) -> D) -> usize {
        let n = out.len().min(self.done.len());
        let from = self.done.len() - n;
        for (o, d) in out.iter_mut().zip(self.done.drain(from..)) {
            *o = wrap(d);
        }
        n
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

impl PortQueue for TapQueue {
    type Pool = TapPool;

    fn pool(&self) -> &TapPool {
        &self.pool
    }

    fn rx(&mut self, out: &mut [TapDesc]) -> usize {
        self.io.rx(&self.pool, out, |d| d)
    }

    fn tx_room(&mut self) -> usize {
        self.io.tx_room()
    }

    fn tx(&mut self, descs: &[TapDesc]) -> usize {
        self.io.tx(&self.pool, descs.iter().copied())
    }

    fn kick_tx(&mut self) -> io::Result<bool> {
        Ok(false)
    }

    fn fill_room(&mut self) -> usize {
        self.io.fill_room()
    }

    fn fill(&mut self, descs: &[TapDesc]) -> usize {
        if descs.len() > self.io.fill_room() {
            return 0;
        }
        self.io.fill(descs.iter().copied())
    }

    fn kick_rx(&mut self) -> io::Result<bool> {
        Ok(false)
    }

    fn complete(&mut self, out: &mut [TapDesc]) -> usize {
        self.io.complete(out, |d| d)
    }

    fn poll_fd(&self) -> Option<RawFd> {
        Some(self.io.poll_fd())
    }

    fn tx_direct(&mut self, frame: &[u8], offload: Offload) -> Option<bool> {
        Some(self.io.write_frame(frame, offload))
    }

    fn fill_is_local(&self) -> bool {
        true
    }

    fn take_tx_errors(&mut self) -> u64 {
        self.io.take_tx_errors()
    }

    fn take_short_reads(&mut self) -> u64 {
        self.io.take_short_reads()
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
    type Queue = TapQueue;
    type Attachment = TapAttachment;

    /// Tap ports only: a veth is not something this backend opens.
    fn mtu_limits(&self) -> ferry_api::table::MtuLimits {
        ferry_api::table::MtuLimits {
            veth: 0,
            tap: MAX_POD_MTU,
        }
    }

    fn open(
        &mut self,
        spec: &PortSpec,
        workers: usize,
    ) -> Result<Opened<TapAttachment, TapQueue>, PortError> {
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
            .map(|fd| Some(TapQueue::new(fd, self.frames_per_queue)))
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
    use std::os::unix::net::UnixDatagram;

    /// A queue on one end of a datagram socket pair: every send is one
    /// read, as every frame is on a tap.
    fn queue() -> (TapQueue, UnixDatagram) {
        let (ours, theirs) = UnixDatagram::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let mut q = TapQueue::new(OwnedFd::from(ours), 64);
        let free = q.pool().all_descs();
        assert_eq!(q.fill(&free[..32]), 32);
        (q, theirs)
    }

    #[test]
    fn reads_too_short_for_a_frame_are_counted_and_skipped() {
        let (mut q, peer) = queue();
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

        let mut out = [TapDesc::default(); 8];
        assert_eq!(q.rx(&mut out), 1, "one frame among three reads");
        assert_eq!(q.take_short_reads(), 2);
        assert_eq!(q.take_short_reads(), 0, "taken once");
        assert_eq!(q.pool().len_of(&out[0]), 60);
        assert_eq!(q.pool().offload_of(&out[0]), Offload::from_bytes(&hdr));
        // The short reads' frames went back to the fill list.
        assert_eq!(q.fill_room(), q.io.fill.capacity() - 31);
    }
}
