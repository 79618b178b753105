//! The node's backend: AF_XDP for veth ports and the host port, tap queues
//! for tap pods, behind one [`PortBackend`] so a worker serves both kinds
//! with one loop (a frame from any port can leave by any port).
//!
//! A queue is either kind; descriptors carry their kind, tokens their pool
//! (see [`Owned`]), and each adapter serves the enum through [`Holds`].

use std::io;
use std::os::fd::RawFd;

use xsk_rs::FrameDesc;

use ferry_api::table::MtuLimits;

use crate::core::pipeline::Offload;
use crate::io::afxdp::{AfXdpBackend, XdpAttachment, XskPool, XskQueue, XskRings};
use crate::io::port::{
    FramePool, Holds, Opened, Owned, PoolId, PortBackend, PortError, PortKind, PortQueue, PortSpec,
    RingFrames,
};
use crate::io::tap::{TapAttachment, TapBackend, TapDesc, TapIo, TapPool, TapQueue};

/// A frame of a [`NodePool`].
#[derive(Debug, Clone, Copy)]
pub enum NodeDesc {
    Xsk(FrameDesc),
    Tap(TapDesc),
}

/// Each adapter's descriptor lives in its own variant.
macro_rules! node_desc_holds {
    ($variant:ident, $raw:ty) => {
        impl Holds<$raw> for NodeDesc {
            fn wrap(raw: $raw) -> Self {
                NodeDesc::$variant(raw)
            }
            fn get(&self) -> Option<&$raw> {
                match self {
                    NodeDesc::$variant(d) => Some(d),
                    _ => None,
                }
            }
            fn get_mut(&mut self) -> Option<&mut $raw> {
                match self {
                    NodeDesc::$variant(d) => Some(d),
                    _ => None,
                }
            }
        }
    };
}
node_desc_holds!(Xsk, FrameDesc);
node_desc_holds!(Tap, TapDesc);

/// The frame memory of a [`NodeQueue`]. A token of one kind (or of
/// another pool) reaches nothing in a pool of the other: each pool checks
/// the token's pool id and kind.
pub enum NodePool {
    Xsk(XskPool),
    Tap(TapPool),
}

type Frame = Owned<NodeDesc>;

impl FramePool for NodePool {
    type Desc = NodeDesc;

    fn frame_count(&self) -> usize {
        match self {
            NodePool::Xsk(p) => p.frame_count(),
            NodePool::Tap(p) => p.frame_count(),
        }
    }

    fn id(&self) -> PoolId {
        match self {
            NodePool::Xsk(p) => p.id(),
            NodePool::Tap(p) => p.id(),
        }
    }

    fn shared(&self) -> bool {
        matches!(self, NodePool::Xsk(p) if p.shared())
    }

    fn len_of(&self, frame: &Frame) -> usize {
        match self {
            NodePool::Xsk(p) => p.frame_len(frame),
            NodePool::Tap(p) => p.frame_len(frame),
        }
    }

    fn buf_mut<'a>(&'a self, frame: &'a mut Frame) -> &'a mut [u8] {
        match self {
            NodePool::Xsk(p) => p.frame_buf(frame),
            NodePool::Tap(p) => p.frame_buf(frame),
        }
    }

    fn buffer_mut<'a>(&'a self, frame: &'a mut Frame) -> (&'a mut [u8], usize) {
        match self {
            NodePool::Xsk(p) => p.frame_buffer(frame),
            NodePool::Tap(p) => p.frame_buffer(frame),
        }
    }

    fn set_len(&self, frame: &mut Frame, len: usize) {
        match self {
            NodePool::Xsk(p) => p.set_frame_len(frame, len),
            NodePool::Tap(p) => p.set_frame_len(frame, len),
        }
    }

    fn takes_offload(&self) -> bool {
        matches!(self, NodePool::Tap(_))
    }

    fn offload_of(&self, frame: &Frame) -> Offload {
        match self {
            NodePool::Tap(p) => p.frame_offload(frame),
            NodePool::Xsk(_) => Offload::NONE,
        }
    }

    fn set_offload(&self, frame: &mut Frame, offload: Offload) {
        if let NodePool::Tap(p) = self {
            p.set_frame_offload(frame, offload);
        }
    }

    fn takes_chains(&self) -> bool {
        matches!(self, NodePool::Xsk(p) if p.takes_chains())
    }

    fn continues(&self, frame: &Frame) -> bool {
        matches!(self, NodePool::Xsk(p) if p.frame_continues(frame))
    }

    fn set_continues(&self, frame: &mut Frame, more: bool) {
        if let NodePool::Xsk(p) = self {
            p.set_frame_continues(frame, more);
        }
    }
}

/// One worker's queue on one port of either kind. `io` is declared before
/// `pool`: AF_XDP rings must go before their UMEM. `io` and `pool` are
/// always of the same kind and come from one queue (`into_parts`).
pub struct NodeQueue {
    io: NodeIo,
    pool: NodePool,
}

#[expect(
    clippy::large_enum_variant,
    reason = "one per queue, made once; boxing the rings would add a pointer chase to every ring call"
)]
enum NodeIo {
    Xsk(XskRings),
    Tap(TapIo),
}

impl From<XskQueue> for NodeQueue {
    fn from(q: XskQueue) -> NodeQueue {
        let (rings, pool) = q.into_parts();
        NodeQueue {
            io: NodeIo::Xsk(rings),
            pool: NodePool::Xsk(pool),
        }
    }
}

impl From<TapQueue> for NodeQueue {
    fn from(q: TapQueue) -> NodeQueue {
        let (io, pool) = q.into_parts();
        NodeQueue {
            io: NodeIo::Tap(io),
            pool: NodePool::Tap(pool),
        }
    }
}

impl PortQueue for NodeQueue {
    type Pool = NodePool;

    fn pool(&self) -> &NodePool {
        &self.pool
    }

    fn take_frames(&mut self, out: &mut Vec<Frame>) -> usize {
        match &mut self.pool {
            NodePool::Xsk(p) => p.take_frames(out),
            NodePool::Tap(p) => p.take_frames(out),
        }
    }

    fn close(self) -> Vec<Frame> {
        let NodeQueue { io, pool } = self;
        // The rings (the socket) before their UMEM.
        let frames = match io {
            NodeIo::Xsk(rings) => rings.close(),
            NodeIo::Tap(_) => Vec::new(),
        };
        drop(pool);
        frames
    }

    fn rx(&mut self, out: &mut Vec<Frame>, max: usize) -> usize {
        match (&mut self.io, &self.pool) {
            (NodeIo::Xsk(rings), _) => rings.rx(out, max),
            (NodeIo::Tap(io), NodePool::Tap(pool)) => io.rx(pool, out, max),
            _ => 0,
        }
    }

    fn tx_room(&mut self) -> usize {
        match &mut self.io {
            NodeIo::Xsk(rings) => rings.tx_room(),
            NodeIo::Tap(io) => io.tx_room(),
        }
    }

    fn tx(&mut self, frames: &mut Vec<Frame>, n: usize) -> usize {
        match (&mut self.io, &self.pool) {
            (NodeIo::Xsk(rings), _) => rings.tx(frames, n),
            (NodeIo::Tap(io), NodePool::Tap(pool)) => io.tx(pool, frames, n),
            _ => 0,
        }
    }

    fn kick_tx(&mut self) -> io::Result<bool> {
        match &mut self.io {
            NodeIo::Xsk(rings) => rings.kick_tx(),
            NodeIo::Tap(_) => Ok(false),
        }
    }

    fn fill_room(&mut self) -> usize {
        match &mut self.io {
            NodeIo::Xsk(rings) => rings.fill_room(),
            NodeIo::Tap(io) => io.fill_room(),
        }
    }

    fn fill(&mut self, free: &mut Vec<Frame>, n: usize) -> usize {
        match (&mut self.io, &self.pool) {
            (NodeIo::Xsk(rings), _) => rings.fill(free, n),
            (NodeIo::Tap(io), NodePool::Tap(pool)) => io.fill(pool, free, n),
            _ => 0,
        }
    }

    fn fill_capacity(&self) -> usize {
        match &self.io {
            NodeIo::Xsk(_) => crate::io::afxdp::RING_SIZE as usize,
            NodeIo::Tap(io) => io.fill_capacity(),
        }
    }

    fn kick_rx(&mut self) -> io::Result<bool> {
        match &mut self.io {
            NodeIo::Xsk(rings) => rings.kick_rx(),
            NodeIo::Tap(_) => Ok(false),
        }
    }

    fn complete(&mut self, out: &mut Vec<Frame>, max: usize) -> usize {
        match (&mut self.io, &self.pool) {
            (NodeIo::Xsk(rings), _) => rings.complete(out, max),
            (NodeIo::Tap(io), NodePool::Tap(pool)) => io.complete(pool, out, max),
            _ => 0,
        }
    }

    fn ring_frames(&self) -> RingFrames {
        match &self.io {
            NodeIo::Xsk(rings) => rings.ring_frames(),
            NodeIo::Tap(io) => io.ring_frames(),
        }
    }

    fn poll_fd(&self) -> Option<RawFd> {
        match &self.io {
            NodeIo::Xsk(rings) => rings.poll_fd(),
            NodeIo::Tap(io) => Some(io.poll_fd()),
        }
    }

    fn tx_direct(&mut self, frame: &[u8], offload: Offload) -> Option<bool> {
        match &mut self.io {
            NodeIo::Xsk(_) => None,
            NodeIo::Tap(io) => Some(io.write_frame(frame, offload)),
        }
    }

    fn kernel_stats(&self) -> Option<[u64; 6]> {
        match &self.io {
            NodeIo::Xsk(rings) => rings.kernel_stats(),
            NodeIo::Tap(_) => None,
        }
    }

    fn fill_is_local(&self) -> bool {
        matches!(self.io, NodeIo::Tap(_))
    }

    fn device_gone(&mut self) -> bool {
        match &mut self.io {
            NodeIo::Xsk(rings) => rings.device_gone(),
            NodeIo::Tap(_) => false,
        }
    }

    fn take_tx_errors(&mut self) -> u64 {
        match &mut self.io {
            NodeIo::Xsk(_) => 0,
            NodeIo::Tap(io) => io.take_tx_errors(),
        }
    }

    fn take_short_reads(&mut self) -> u64 {
        match &mut self.io {
            NodeIo::Xsk(_) => 0,
            NodeIo::Tap(io) => io.take_short_reads(),
        }
    }
}

/// What keeps a port attached.
pub enum NodeAttachment {
    Xdp(XdpAttachment),
    Tap(TapAttachment),
}

/// AF_XDP for [`PortKind::Xdp`] ports, tap queues for [`PortKind::Tap`].
#[derive(Default)]
pub struct NodeBackend {
    pub xdp: AfXdpBackend,
    pub tap: TapBackend,
}

impl PortBackend for NodeBackend {
    type Queue = NodeQueue;
    type Attachment = NodeAttachment;

    fn update_node_ports(a: &mut NodeAttachment, ports: &[(u8, u16)]) -> Result<(), PortError> {
        match a {
            NodeAttachment::Xdp(x) => AfXdpBackend::update_node_ports(x, ports),
            NodeAttachment::Tap(_) => Ok(()),
        }
    }

    fn mtu_limits(&self) -> MtuLimits {
        let xdp = self.xdp.mtu_limits();
        MtuLimits {
            veth: xdp.veth,
            tap: self.tap.mtu_limits().tap,
            uplink: xdp.uplink,
        }
    }

    fn mode_of(attachment: &NodeAttachment) -> String {
        match attachment {
            NodeAttachment::Xdp(a) => a.mode.to_string(),
            NodeAttachment::Tap(_) => "tap".to_string(),
        }
    }

    fn open(
        &mut self,
        spec: &PortSpec,
        workers: usize,
    ) -> Result<Opened<NodeAttachment, NodeQueue>, PortError> {
        match spec.kind {
            PortKind::Xdp(_) | PortKind::Uplink(_) => {
                let (a, qs) = self.xdp.open(spec, workers)?;
                Ok((NodeAttachment::Xdp(a), qs))
            }
            PortKind::Tap { .. } => {
                let (a, qs) = self.tap.open(spec, workers)?;
                Ok((NodeAttachment::Tap(a), qs))
            }
        }
    }
}
