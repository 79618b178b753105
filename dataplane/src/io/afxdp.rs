//! The AF_XDP adapter: the XDP program (aya) that steers a port's frames to
//! our sockets, and the sockets themselves (xsk-rs). With `tap.rs`, where
//! the crate's `unsafe` for real I/O lives.
//!
//! Per port: first [`crate::io::link::check_veth`] (a veth; a pod's with its
//! peer in another namespace), then one copy of `xdp-progs/redirect.c` and its `xsks` XSKMAP,
//! attached in driver mode (native XDP; generic SKB mode if the driver has
//! none), and one socket per worker bound to queue `i` of the interface with
//! `XDP_USE_NEED_WAKEUP` and libxdp's own program load inhibited. No copy
//! mode flag is forced: the kernel binds zero-copy where the driver supports
//! it and copy mode otherwise (always copy mode on veth).
//!
//! One UMEM per socket, not per worker. libxdp turns the UMEM's own file
//! descriptor into the first socket created on it and never closes it while
//! the UMEM lives, so with a per-worker UMEM the first port's socket could
//! never be released: re-adding that interface, or adding a port after all
//! were removed, fails with EINVAL. A UMEM per socket keeps every port
//! independently closable (its memory comes back when the port goes) at the
//! cost of one memcpy per frame forwarded between two ports; veth copy mode
//! already copies twice in the kernel. Frames answered on their ingress port
//! (ARP, ICMP echo) move without a copy.
//!
//! Memory per port = workers × frames_per_queue × FRAME_SIZE (2048 bytes):
//! 2048 frames per queue (the default, and the least taken: twice the ring
//! size) is 4 MiB per worker per port, plus the four rings (4 × 1024 × 16
//! bytes = 64 KiB). The rings hold 1024 descriptors because a TCP sender's
//! burst outruns smaller ones: with 512-entry rings (half the pool in the
//! fill ring) the pod's host veth counted one `rx_queue_0_drops` (failed
//! redirect into the socket) per TCP retransmit, thousands per second of
//! iperf3; with 1024 none were seen.

use std::ffi::CString;
use std::num::NonZeroU32;
use std::os::fd::{AsRawFd, RawFd};
use std::{fs, io};

use aya::maps::XskMap;
use aya::programs::{Xdp, XdpFlags};
use aya::Ebpf;
use xsk_rs::config::{
    BindFlags, FrameSize, Interface, LibxdpFlags, QueueSize, SocketConfig, UmemConfig,
};
use xsk_rs::{CompQueue, FillQueue, FrameDesc, RxQueue, Socket, TxQueue, Umem};

use crate::io::port::{
    valid_ifname, FramePool, Opened, PortBackend, PortError, PortKind, PortQueue, PortSpec,
};

/// The compiled `xdp-progs/redirect.c` (see build.rs).
static REDIRECT_PROG: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/redirect.bpf.o"));
const PROG_NAME: &str = "ferry_redirect";
const MAP_NAME: &str = "xsks";
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
/// maximum" above it (DESIGN.md, performance levers).
pub const VETH_XDP_MAX_MTU: u32 = 3506;
/// The largest pod MTU (L3 bytes) a veth port carries: a frame must fit
/// the data segment of one chunk (sockets are bound without
/// `XDP_USE_SG`, so larger frames are dropped by the kernel), and the XDP
/// program caps the veth itself. 2048 - 256 - 14 = 1778.
pub const MAX_POD_MTU: u32 = {
    let chunk = FRAME_SIZE - XDP_PACKET_HEADROOM - crate::core::wire::ETH_HDR_LEN as u32;
    if chunk < VETH_XDP_MAX_MTU {
        chunk
    } else {
        VETH_XDP_MAX_MTU
    }
};
/// Size of each of a socket's four rings.
pub const RING_SIZE: u32 = 1024;

/// A socket's UMEM.
pub struct XskPool {
    umem: Umem,
    descs: Vec<FrameDesc>,
}

impl FramePool for XskPool {
    type Desc = FrameDesc;

    fn all_descs(&self) -> Vec<FrameDesc> {
        self.descs.clone()
    }

    fn len_of(&self, desc: &FrameDesc) -> usize {
        desc.lengths().data()
    }

    unsafe fn chunk_mut(&self, desc: &FrameDesc) -> &mut [u8] {
        let mut d = *desc;
        // SAFETY: `desc` names a frame of this UMEM (descriptors only come
        // from this pool's rings and `Umem::new`), and the caller owns the
        // frame (trait contract), so neither the kernel nor any other
        // reference touches its memory while the slice lives.
        let mut data = unsafe { self.umem.data_mut(&mut d) };
        let cap = data.cursor().buf_len();
        let ptr = data.contents_mut().as_mut_ptr();
        // SAFETY: `ptr` is the start of this frame's data segment, which is
        // `cap` bytes long inside the UMEM mapping; the mapping lives as long
        // as `self.umem`, which outlives the returned borrow of `self`.
        unsafe { std::slice::from_raw_parts_mut(ptr, cap) }
    }

    unsafe fn buffer_mut(&self, desc: &FrameDesc) -> (&mut [u8], usize) {
        // The chunk starts at the aligned offset below the data (aligned
        // mode: chunks of FRAME_SIZE, a power of two, from the UMEM's start).
        let headroom = desc.addr() % FRAME_SIZE as usize;
        // SAFETY: as for `chunk_mut`.
        let data = unsafe { self.chunk_mut(desc) };
        let len = headroom + data.len();
        // SAFETY: the `headroom` bytes in front of the data segment are the
        // start of the same chunk of the UMEM mapping (see above), owned by
        // the caller like the rest of the frame (trait contract); the
        // slice ends where the data segment does.
        let whole = unsafe { std::slice::from_raw_parts_mut(data.as_mut_ptr().sub(headroom), len) };
        (whole, headroom)
    }

    unsafe fn set_len(&self, desc: &mut FrameDesc, len: usize) {
        // SAFETY: as for `chunk_mut`: the frame is this UMEM's and the
        // caller's; only the descriptor's length changes.
        unsafe { self.umem.data_mut(desc) }.cursor().set_pos(len);
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
}

/// One AF_XDP socket (worker `i` on queue `i` of a port) with its UMEM.
pub struct XskQueue {
    rings: XskRings,
    pool: XskPool,
}

impl XskQueue {
    /// The rings and the UMEM, for an owner that keeps the rings' drop
    /// before the pool's.
    pub fn into_parts(self) -> (XskRings, XskPool) {
        (self.rings, self.pool)
    }
}

impl PortQueue for XskQueue {
    type Pool = XskPool;

    fn pool(&self) -> &XskPool {
        &self.pool
    }

    fn rx(&mut self, out: &mut [FrameDesc]) -> usize {
        self.rings.rx(out)
    }

    fn tx_room(&mut self) -> usize {
        self.rings.tx_room()
    }

    fn tx(&mut self, descs: &[FrameDesc]) -> usize {
        self.rings.tx(descs)
    }

    fn kick_tx(&mut self) -> io::Result<bool> {
        self.rings.kick_tx()
    }

    fn fill_room(&mut self) -> usize {
        self.rings.fill_room()
    }

    fn fill(&mut self, descs: &[FrameDesc]) -> usize {
        self.rings.fill(descs)
    }

    fn kick_rx(&mut self) -> io::Result<bool> {
        self.rings.kick_rx()
    }

    fn complete(&mut self, out: &mut [FrameDesc]) -> usize {
        self.rings.complete(out)
    }

    fn poll_fd(&self) -> Option<RawFd> {
        self.rings.poll_fd()
    }

    fn kernel_stats(&self) -> Option<[u64; 6]> {
        self.rings.kernel_stats()
    }
}

/// The ring operations of [`PortQueue`], on descriptors of the UMEM the
/// socket was made on. Rings and UMEM only leave [`AfXdpBackend::open`]
/// together ([`XskQueue`], split only by [`XskQueue::into_parts`] into an
/// owner that keeps the pair), so "this UMEM" below is always the pool the
/// caller holds beside these rings.
impl XskRings {
    pub fn rx(&mut self, out: &mut [FrameDesc]) -> usize {
        // SAFETY: the RX ring belongs to a socket created on this queue's
        // UMEM, so the descriptors it yields name frames of that UMEM.
        unsafe { self.rx.consume(out) }
    }

    pub fn tx_room(&mut self) -> usize {
        self.tx.nb_free(RING_SIZE) as usize
    }

    pub fn tx(&mut self, descs: &[FrameDesc]) -> usize {
        // SAFETY: the caller (the worker) hands over frames of this queue's
        // UMEM that it owns and no longer references; they are not in the
        // fill ring (a frame is in at most one place, see port.rs).
        unsafe { self.tx.produce(descs) }
    }

    pub fn kick_tx(&mut self) -> io::Result<bool> {
        if self.tx.needs_wakeup() {
            self.tx.wakeup()?;
            return Ok(true);
        }
        Ok(false)
    }

    pub fn fill_room(&mut self) -> usize {
        self.fill.nb_free(RING_SIZE) as usize
    }

    pub fn fill(&mut self, descs: &[FrameDesc]) -> usize {
        // SAFETY: as for `tx`: frames of this UMEM, owned by the caller and
        // in no other ring.
        unsafe { self.fill.produce(descs) }
    }

    pub fn kick_rx(&mut self) -> io::Result<bool> {
        if self.fill.needs_wakeup() {
            self.fill.wakeup(self.rx.fd_mut(), 0)?;
            return Ok(true);
        }
        Ok(false)
    }

    pub fn complete(&mut self, out: &mut [FrameDesc]) -> usize {
        // SAFETY: the completion ring is this UMEM's, so its descriptors name
        // frames of this queue's UMEM.
        unsafe { self.comp.consume(out) }
    }

    pub fn poll_fd(&self) -> Option<RawFd> {
        Some(self.rx.fd().as_raw_fd())
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

/// The XDP program attached to one port. Dropping it detaches the program
/// (and frees its XSKMAP).
pub struct XdpAttachment {
    ifname: String,
    ebpf: Ebpf,
    link: Option<aya::programs::xdp::XdpLinkId>,
    pub mode: &'static str,
}

impl Drop for XdpAttachment {
    fn drop(&mut self) {
        let Some(link) = self.link.take() else { return };
        let prog: Option<&mut Xdp> = self
            .ebpf
            .program_mut(PROG_NAME)
            .and_then(|p| p.try_into().ok());
        match prog.map(|p| p.detach(link)) {
            Some(Ok(())) => log::info!("{}: XDP program detached", self.ifname),
            Some(Err(e)) => log::warn!("{}: detaching the XDP program failed: {e}", self.ifname),
            None => log::warn!(
                "{}: XDP program handle lost; it goes when the process exits",
                self.ifname
            ),
        }
    }
}

/// The real backend: XDP via aya, sockets via xsk-rs.
pub struct AfXdpBackend {
    pub frames_per_queue: u32,
}

impl Default for AfXdpBackend {
    fn default() -> Self {
        AfXdpBackend {
            frames_per_queue: 2 * RING_SIZE,
        }
    }
}

/// Number of queues of `ifname` (min of RX and TX), from sysfs; `None` when
/// sysfs does not show this namespace's interface.
fn queue_count(ifname: &str) -> Option<u32> {
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

/// How ferry binds every AF_XDP socket: rings of `ring` descriptors,
/// need_wakeup, and libxdp's own program load inhibited (ferry attaches its
/// program itself).
pub fn socket_config(ring: QueueSize) -> SocketConfig {
    SocketConfig::builder()
        .rx_queue_size(ring)
        .tx_queue_size(ring)
        .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
        .bind_flags(BindFlags::XDP_USE_NEED_WAKEUP)
        .build()
}

impl AfXdpBackend {
    fn socket(&self, ifname: &str, queue: u32) -> Result<XskQueue, PortError> {
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
        let umem_config = UmemConfig::builder()
            .frame_size(FrameSize::new(FRAME_SIZE).map_err(|e| pool_err(e.to_string()))?)
            .fill_queue_size(ring)
            .comp_queue_size(ring)
            .frame_headroom(0)
            .build()
            .map_err(|e| pool_err(e.to_string()))?;
        let frames =
            NonZeroU32::new(self.frames_per_queue.max(2 * RING_SIZE)).unwrap_or(NonZeroU32::MIN);
        let (umem, descs) =
            Umem::new(umem_config, frames, false).map_err(|e| pool_err(e.to_string()))?;
        let config = socket_config(ring);
        let iface: Interface = ifname
            .parse()
            .map_err(|e: std::ffi::NulError| err(e.to_string()))?;
        // SAFETY: the UMEM is fresh, so this socket is its only one (the
        // shared-UMEM double-free caveat of `Socket::new` does not apply),
        // and libxdp's program load is inhibited anyway.
        let (tx, rx, rings) =
            unsafe { Socket::new(config, &umem, &iface, queue) }.map_err(|e| err(e.to_string()))?;
        let (fill, comp) = rings
            .ok_or_else(|| err("libxdp returned no fill/completion rings for a new UMEM".into()))?;
        Ok(XskQueue {
            rings: XskRings { tx, rx, fill, comp },
            pool: XskPool { umem, descs },
        })
    }
}

impl PortBackend for AfXdpBackend {
    type Queue = XskQueue;
    type Attachment = XdpAttachment;

    /// Veth ports only: a tap is not something this backend opens.
    fn mtu_limits(&self) -> ferry_api::table::MtuLimits {
        ferry_api::table::MtuLimits {
            veth: MAX_POD_MTU,
            tap: 0,
        }
    }

    fn open(
        &mut self,
        spec: &PortSpec,
        workers: usize,
    ) -> Result<Opened<XdpAttachment, XskQueue>, PortError> {
        let ifname = spec.name.as_str();
        let PortKind::Xdp(role) = spec.kind else {
            return Err(PortError::Unsupported {
                ifname: ifname.to_string(),
                kind: "tap",
            });
        };
        if !valid_ifname(ifname) {
            return Err(PortError::BadName {
                ifname: ifname.to_string(),
            });
        }
        if if_index(ifname).is_none() {
            return Err(PortError::NoSuchInterface {
                ifname: ifname.to_string(),
            });
        }
        // Before anything is attached: only ferry's veths get a program.
        crate::io::link::check_veth(ifname, role)?;
        let known_queues = queue_count(ifname);
        let load_err = |cause: String| PortError::XdpLoad {
            ifname: ifname.to_string(),
            cause,
        };

        let mut ebpf = Ebpf::load(REDIRECT_PROG).map_err(|e| load_err(e.to_string()))?;
        let prog: &mut Xdp = ebpf
            .program_mut(PROG_NAME)
            .ok_or_else(|| load_err(format!("program {PROG_NAME} missing from the object")))?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| load_err(e.to_string()))?;
        prog.load().map_err(|e| load_err(e.to_string()))?;
        let (link, mode) = match prog.attach(ifname, XdpFlags::DRV_MODE) {
            Ok(link) => (link, "driver"),
            Err(drv) => match prog.attach(ifname, XdpFlags::SKB_MODE) {
                Ok(link) => {
                    log::warn!("{ifname}: native XDP failed ({drv}); using generic (SKB) mode");
                    (link, "skb")
                }
                Err(skb) => {
                    return Err(PortError::XdpAttach {
                        ifname: ifname.to_string(),
                        cause: format!("driver mode: {drv}; skb mode: {skb}"),
                    })
                }
            },
        };
        // From here on, dropping `attachment` detaches the program again.
        let mut attachment = XdpAttachment {
            ifname: ifname.to_string(),
            ebpf,
            link: Some(link),
            mode,
        };

        let mut queues = Vec::with_capacity(workers);
        for i in 0..workers as u32 {
            let beyond = known_queues.is_some_and(|n| i >= n) || i >= MAX_QUEUES;
            if beyond || (i > 0 && queues.last().is_some_and(Option::is_none)) {
                queues.push(None);
                continue;
            }
            let q = match self.socket(ifname, i) {
                Ok(q) => q,
                // sysfs unavailable: an interface with fewer queues refuses
                // the bind; the workers beyond get no queue.
                Err(e) if i > 0 && known_queues.is_none() => {
                    log::info!("{ifname}: no queue {i} ({e}); workers {i}.. get no queue on it");
                    queues.push(None);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let map = attachment
                .ebpf
                .map_mut(MAP_NAME)
                .ok_or_else(|| load_err(format!("map {MAP_NAME} missing from the object")))?;
            let mut xsks: XskMap<_> = XskMap::try_from(map).map_err(|e| load_err(e.to_string()))?;
            xsks.set(i, q.rings.rx.fd().as_raw_fd(), 0)
                .map_err(|e| PortError::XskMap {
                    ifname: ifname.to_string(),
                    queue: i,
                    cause: e.to_string(),
                })?;
            queues.push(Some(q));
        }
        log::info!(
            "{ifname}: XDP attached ({mode} mode), {} of {workers} worker queue(s) bound",
            queues.iter().filter(|q| q.is_some()).count()
        );
        Ok((attachment, queues))
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
    fn max_pod_mtu_is_what_one_chunk_holds() {
        // xsk-rs computes the data segment from libxdp's own headroom.
        let cfg = umem_config();
        assert_eq!(cfg.xdp_headroom(), XDP_PACKET_HEADROOM);
        assert_eq!(MAX_POD_MTU, cfg.mtu() - 14);
        const { assert!(MAX_POD_MTU <= VETH_XDP_MAX_MTU) };
    }

    #[test]
    fn frames_are_handed_out_from_the_chunk_start_with_the_xdp_headroom() {
        let cfg = umem_config();
        let (umem, descs) = Umem::new(cfg, NonZeroU32::new(4).unwrap(), false).unwrap();
        let pool = XskPool { umem, descs };
        for d in pool.all_descs() {
            // SAFETY: a fresh UMEM: every frame is ours, one at a time.
            let (buf, headroom) = unsafe { pool.buffer_mut(&d) };
            assert_eq!(headroom, XDP_PACKET_HEADROOM as usize);
            assert_eq!(buf.len(), FRAME_SIZE as usize, "the whole chunk");
            let data_ptr = buf[headroom..].as_ptr();
            // SAFETY: as above.
            assert_eq!(
                data_ptr,
                unsafe { pool.chunk_mut(&d) }.as_ptr(),
                "data right after it"
            );
        }
    }
}
