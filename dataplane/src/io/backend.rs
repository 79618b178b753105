//! The node's backend: AF_XDP for veth ports and the host port, tap queues
//! for tap pods, behind one [`PortBackend`] so a worker serves both kinds
//! with one loop (a frame from any port can leave by any port).
//!
//! A queue is either kind; descriptors carry their kind. AF_XDP rings take
//! slices of xsk-rs descriptors, so AF_XDP calls go through a per-queue
//! scratch array (a copy of 32-byte descriptors per batch, no allocation
//! after the first batch).

use std::io;
use std::os::fd::RawFd;

use xsk_rs::FrameDesc;

use ferry_api::table::MtuLimits;

use crate::core::pipeline::Offload;
use crate::io::afxdp::{AfXdpBackend, XdpAttachment, XskPool, XskQueue, XskRings};
use crate::io::port::{FramePool, Opened, PortBackend, PortError, PortKind, PortQueue, PortSpec};
use crate::io::tap::{TapAttachment, TapBackend, TapDesc, TapIo, TapPool, TapQueue};

/// A frame of a [`NodePool`].
#[derive(Debug, Clone, Copy)]
pub enum NodeDesc {
    Xsk(FrameDesc),
    Tap(TapDesc),
}

impl Default for NodeDesc {
    fn default() -> Self {
        NodeDesc::Xsk(FrameDesc::default())
    }
}

pub enum NodePool {
    Xsk(XskPool),
    Tap(TapPool),
}

impl FramePool for NodePool {
    type Desc = NodeDesc;

    fn all_descs(&self) -> Vec<NodeDesc> {
        match self {
            NodePool::Xsk(p) => p.all_descs().into_iter().map(NodeDesc::Xsk).collect(),
            NodePool::Tap(p) => p.all_descs().into_iter().map(NodeDesc::Tap).collect(),
        }
    }

    fn len_of(&self, desc: &NodeDesc) -> usize {
        match (self, desc) {
            (NodePool::Xsk(p), NodeDesc::Xsk(d)) => p.len_of(d),
            (NodePool::Tap(p), NodeDesc::Tap(d)) => p.len_of(d),
            _ => 0,
        }
    }

    unsafe fn chunk_mut(&self, desc: &NodeDesc) -> &mut [u8] {
        match (self, desc) {
            // SAFETY: forwarded contract: the caller owns the frame.
            (NodePool::Xsk(p), NodeDesc::Xsk(d)) => unsafe { p.chunk_mut(d) },
            // SAFETY: as above.
            (NodePool::Tap(p), NodeDesc::Tap(d)) => unsafe { p.chunk_mut(d) },
            // A descriptor of the other kind names no frame of this pool.
            _ => &mut [],
        }
    }

    unsafe fn set_len(&self, desc: &mut NodeDesc, len: usize) {
        match (self, desc) {
            // SAFETY: forwarded contract: the caller owns the frame.
            (NodePool::Xsk(p), NodeDesc::Xsk(d)) => unsafe { p.set_len(d, len) },
            // SAFETY: as above.
            (NodePool::Tap(p), NodeDesc::Tap(d)) => unsafe { p.set_len(d, len) },
            _ => {}
        }
    }

    fn takes_offload(&self) -> bool {
        matches!(self, NodePool::Tap(_))
    }

    fn offload_of(&self, desc: &NodeDesc) -> Offload {
        match desc {
            NodeDesc::Tap(d) => match self {
                NodePool::Tap(p) => p.offload_of(d),
                NodePool::Xsk(_) => Offload::NONE,
            },
            NodeDesc::Xsk(_) => Offload::NONE,
        }
    }

    fn set_offload(&self, desc: &mut NodeDesc, offload: Offload) {
        if let (NodePool::Tap(p), NodeDesc::Tap(d)) = (self, desc) {
            p.set_offload(d, offload);
        }
    }
}

enum NodeIo {
    Xsk {
        rings: XskRings,
        scratch: Vec<FrameDesc>,
    },
    Tap(TapIo),
}

/// One worker's queue on one port of either kind. `io` is declared before
/// `pool`: AF_XDP rings must go before their UMEM. `io` and `pool` are
/// always of the same kind and come from one queue (`into_parts`).
pub struct NodeQueue {
    io: NodeIo,
    pool: NodePool,
}

impl From<XskQueue> for NodeQueue {
    fn from(q: XskQueue) -> NodeQueue {
        let (rings, pool) = q.into_parts();
        NodeQueue {
            io: NodeIo::Xsk {
                rings,
                scratch: Vec::new(),
            },
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

/// Copy descriptors of kind `Xsk` out of `descs` into `scratch`; frames
/// of the other kind (never handed to this queue by the worker) are left
/// out.
fn xsk_descs(descs: &[NodeDesc], scratch: &mut Vec<FrameDesc>) {
    scratch.clear();
    scratch.extend(descs.iter().filter_map(|d| match d {
        NodeDesc::Xsk(x) => Some(*x),
        NodeDesc::Tap(_) => None,
    }));
}

fn tap_descs(descs: &[NodeDesc]) -> impl Iterator<Item = TapDesc> + '_ {
    descs.iter().filter_map(|d| match d {
        NodeDesc::Tap(t) => Some(*t),
        NodeDesc::Xsk(_) => None,
    })
}

impl PortQueue for NodeQueue {
    type Pool = NodePool;

    fn pool(&self) -> &NodePool {
        &self.pool
    }

    fn rx(&mut self, out: &mut [NodeDesc]) -> usize {
        match (&mut self.io, &self.pool) {
            (NodeIo::Xsk { rings, scratch }, _) => {
                scratch.resize(out.len(), FrameDesc::default());
                let n = rings.rx(&mut scratch[..out.len()]);
                for (o, d) in out.iter_mut().zip(&scratch[..n]) {
                    *o = NodeDesc::Xsk(*d);
                }
                n
            }
            (NodeIo::Tap(io), NodePool::Tap(pool)) => io.rx(pool, out, NodeDesc::Tap),
            _ => 0,
        }
    }

    fn tx_room(&mut self) -> usize {
        match &mut self.io {
            NodeIo::Xsk { rings, .. } => rings.tx_room(),
            NodeIo::Tap(io) => io.tx_room(),
        }
    }

    fn tx(&mut self, descs: &[NodeDesc]) -> usize {
        match (&mut self.io, &self.pool) {
            (NodeIo::Xsk { rings, scratch }, _) => {
                xsk_descs(descs, scratch);
                rings.tx(scratch)
            }
            (NodeIo::Tap(io), NodePool::Tap(pool)) => io.tx(pool, tap_descs(descs)),
            _ => 0,
        }
    }

    fn kick_tx(&mut self) -> io::Result<bool> {
        match &mut self.io {
            NodeIo::Xsk { rings, .. } => rings.kick_tx(),
            NodeIo::Tap(_) => Ok(false),
        }
    }

    fn fill_room(&mut self) -> usize {
        match &mut self.io {
            NodeIo::Xsk { rings, .. } => rings.fill_room(),
            NodeIo::Tap(io) => io.fill_room(),
        }
    }

    fn fill(&mut self, descs: &[NodeDesc]) -> usize {
        match &mut self.io {
            NodeIo::Xsk { rings, scratch } => {
                xsk_descs(descs, scratch);
                rings.fill(scratch)
            }
            NodeIo::Tap(io) => {
                if descs.len() > io.fill_room() {
                    return 0;
                }
                io.fill(tap_descs(descs))
            }
        }
    }

    fn kick_rx(&mut self) -> io::Result<bool> {
        match &mut self.io {
            NodeIo::Xsk { rings, .. } => rings.kick_rx(),
            NodeIo::Tap(_) => Ok(false),
        }
    }

    fn complete(&mut self, out: &mut [NodeDesc]) -> usize {
        match &mut self.io {
            NodeIo::Xsk { rings, scratch } => {
                scratch.resize(out.len(), FrameDesc::default());
                let n = rings.complete(&mut scratch[..out.len()]);
                for (o, d) in out.iter_mut().zip(&scratch[..n]) {
                    *o = NodeDesc::Xsk(*d);
                }
                n
            }
            NodeIo::Tap(io) => io.complete(out, NodeDesc::Tap),
        }
    }

    fn poll_fd(&self) -> Option<RawFd> {
        match &self.io {
            NodeIo::Xsk { rings, .. } => rings.poll_fd(),
            NodeIo::Tap(io) => Some(io.poll_fd()),
        }
    }

    fn tx_direct(&mut self, frame: &[u8], offload: Offload) -> Option<bool> {
        match &mut self.io {
            NodeIo::Xsk { .. } => None,
            NodeIo::Tap(io) => Some(io.write_frame(frame, offload)),
        }
    }

    fn kernel_stats(&self) -> Option<[u64; 6]> {
        match &self.io {
            NodeIo::Xsk { rings, .. } => rings.kernel_stats(),
            NodeIo::Tap(_) => None,
        }
    }

    fn fill_is_local(&self) -> bool {
        matches!(self.io, NodeIo::Tap(_))
    }

    fn take_tx_errors(&mut self) -> u64 {
        match &mut self.io {
            NodeIo::Xsk { .. } => 0,
            NodeIo::Tap(io) => io.take_tx_errors(),
        }
    }

    fn take_short_reads(&mut self) -> u64 {
        match &mut self.io {
            NodeIo::Xsk { .. } => 0,
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

    fn mtu_limits(&self) -> MtuLimits {
        MtuLimits {
            veth: self.xdp.mtu_limits().veth,
            tap: self.tap.mtu_limits().tap,
        }
    }

    fn open(
        &mut self,
        spec: &PortSpec,
        workers: usize,
    ) -> Result<Opened<NodeAttachment, NodeQueue>, PortError> {
        match spec.kind {
            PortKind::Xdp(_) => {
                let (a, qs) = self.xdp.open(spec, workers)?;
                Ok((
                    NodeAttachment::Xdp(a),
                    qs.into_iter().map(|q| q.map(NodeQueue::from)).collect(),
                ))
            }
            PortKind::Tap { .. } => {
                let (a, qs) = self.tap.open(spec, workers)?;
                Ok((
                    NodeAttachment::Tap(a),
                    qs.into_iter().map(|q| q.map(NodeQueue::from)).collect(),
                ))
            }
        }
    }
}
