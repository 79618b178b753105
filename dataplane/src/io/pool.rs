//! Frames in heap memory: a pool of equal chunks with the same
//! descriptor discipline as an AF_XDP UMEM. The tap adapter's queues use
//! it (a tap has no UMEM), and so do the in-memory test ports ([`crate::sim`]).
//! Each chunk is [`FRAME_HEADROOM`] bytes of headroom, then the frame's
//! `frame_size` bytes: the data always starts after the headroom, so
//! readers and writers of [`FramePool::buf_mut`] never see it;
//! [`FramePool::buffer_mut`] hands out the whole chunk, for headers
//! prepended in place.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::core::pipeline::{Offload, FRAME_HEADROOM};
use crate::io::port::{FramePool, Holds, Owned, PoolId};

/// A frame of a [`MemPool`]. Only the pool makes one, and the index
/// cannot be changed from outside, so a descriptor always names a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemDesc {
    index: u32,
    len: u32,
    /// The frame's virtio-net header, on pools made with offloads.
    offload: Offload,
}

/// Heap memory cut into equal chunks.
pub struct MemPool {
    base: NonNull<u8>,
    frames: usize,
    /// Bytes of data a frame holds (the chunk is `FRAME_HEADROOM` more).
    frame_size: usize,
    /// Frames carry a virtio-net header (an in-memory tap).
    offload: bool,
    id: PoolId,
    /// The tokens of every frame were handed out ([`MemPool::take_frames`]).
    issued: AtomicBool,
    /// Shared by several queues ([`FramePool::shared`]).
    shared: bool,
}

// SAFETY: the pool owns its allocation exclusively (nothing else holds the
// pointer); moving it to another thread moves that ownership.
unsafe impl Send for MemPool {}
// SAFETY: through `&MemPool` a chunk is reached only with the `&mut` of its
// frame's one token (`frame_buf`, `frame_buffer`), so threads sharing the
// pool (queues of one shared pool) never reach the same chunk at once; the
// rest is read-only but `issued`, an atomic.
unsafe impl Sync for MemPool {}

impl MemPool {
    pub fn new(frames: usize, frame_size: usize) -> MemPool {
        let frames = frames.clamp(1, u32::MAX as usize);
        let frame_size = frame_size.max(64);
        let mem: Box<[u8]> = vec![0u8; frames * (FRAME_HEADROOM + frame_size)].into_boxed_slice();
        let base = NonNull::from(Box::leak(mem)).cast::<u8>();
        MemPool {
            base,
            frames,
            frame_size,
            offload: false,
            id: PoolId::fresh(),
            issued: AtomicBool::new(false),
            shared: false,
        }
    }

    /// A pool for several queues ([`FramePool::shared`]), as a worker's
    /// UMEM is.
    pub fn shared(frames: usize, frame_size: usize) -> MemPool {
        let mut pool = MemPool::new(frames, frame_size);
        pool.shared = true;
        pool
    }

    /// Bytes of data each frame holds (after its headroom).
    pub fn frame_size(&self) -> usize {
        self.frame_size
    }

    pub fn id(&self) -> PoolId {
        self.id
    }

    /// A pool whose frames carry offload headers, as a tap queue's do.
    pub fn with_offload(frames: usize, frame_size: usize) -> MemPool {
        // Not struct-update syntax: that would copy the fields out of a
        // temporary whose Drop then frees the memory.
        let mut pool = MemPool::new(frames, frame_size);
        pool.offload = true;
        pool
    }

    /// Push a token of every frame onto `out` (as `D::wrap` of the frame)
    /// the first time; nothing later. How many.
    pub fn take_frames<D: Holds<MemDesc>>(&self, out: &mut Vec<Owned<D>>) -> usize {
        if self.issued.swap(true, Ordering::AcqRel) {
            return 0;
        }
        out.reserve(self.frames);
        for index in 0..self.frames as u32 {
            let desc = MemDesc {
                index,
                len: 0,
                offload: Offload::NONE,
            };
            // SAFETY: each index is issued once, here, and only on the
            // first call (`issued`); no ring holds any frame yet.
            out.push(unsafe { Owned::from_raw(D::wrap(desc), self.id) });
        }
        self.frames
    }

    /// The descriptor of `frame` if it is one of this pool's.
    fn own<'a, D: Holds<MemDesc>>(&self, frame: &'a Owned<D>) -> Option<&'a MemDesc> {
        (frame.pool() == self.id)
            .then(|| frame.desc().get())
            .flatten()
    }

    fn own_mut<'a, D: Holds<MemDesc>>(&self, frame: &'a mut Owned<D>) -> Option<&'a mut MemDesc> {
        if frame.pool() != self.id {
            return None;
        }
        // SAFETY: only the length and header are changed through it, never
        // the index.
        unsafe { frame.desc_mut() }.get_mut()
    }

    pub fn frame_len<D: Holds<MemDesc>>(&self, frame: &Owned<D>) -> usize {
        self.own(frame).map_or(0, |d| d.len as usize)
    }

    /// The frame's data room: its chunk after the headroom.
    pub fn frame_buf<'a, D: Holds<MemDesc>>(&'a self, frame: &'a mut Owned<D>) -> &'a mut [u8] {
        let (chunk, headroom) = self.frame_buffer(frame);
        &mut chunk[headroom..]
    }

    /// The frame's whole chunk, headroom included, and where the data
    /// starts in it ([`FRAME_HEADROOM`]; empty and 0 for a token of
    /// another pool).
    pub fn frame_buffer<'a, D: Holds<MemDesc>>(
        &'a self,
        frame: &'a mut Owned<D>,
    ) -> (&'a mut [u8], usize) {
        let Some(d) = self.own(frame) else {
            return (&mut [], 0);
        };
        // Descriptors are only made by `take_frames`, so the index is in
        // range; clamp anyway.
        let index = (d.index as usize).min(self.frames - 1);
        let stride = self.stride();
        // SAFETY: the chunk lies inside the allocation (index < frames),
        // which lives as long as `self`. `frame` is the only token of this
        // chunk (`Owned::from_raw`'s contract, and the pool id checked
        // above) and no ring holds the frame while its token exists, so
        // the `&mut` borrow of the token makes this `&mut` unique.
        let chunk = unsafe {
            std::slice::from_raw_parts_mut(self.base.as_ptr().add(index * stride), stride)
        };
        (chunk, FRAME_HEADROOM)
    }

    pub fn set_frame_len<D: Holds<MemDesc>>(&self, frame: &mut Owned<D>, len: usize) {
        let size = self.frame_size;
        if let Some(d) = self.own_mut(frame) {
            d.len = len.min(size) as u32;
        }
    }

    pub fn frame_offload<D: Holds<MemDesc>>(&self, frame: &Owned<D>) -> Offload {
        match self.own(frame) {
            Some(d) if self.offload => d.offload,
            _ => Offload::NONE,
        }
    }

    pub fn set_frame_offload<D: Holds<MemDesc>>(&self, frame: &mut Owned<D>, offload: Offload) {
        let on = self.offload;
        if let Some(d) = self.own_mut(frame) {
            if on {
                d.offload = offload;
            }
        }
    }
}

impl Drop for MemPool {
    fn drop(&mut self) {
        let len = self.frames * self.stride();
        // SAFETY: `base` came from `Box::leak` of a `[u8]` of exactly `len`
        // bytes in `new` and is freed only here, once.
        drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(self.base.as_ptr(), len)) });
    }
}

impl MemPool {
    /// Bytes from one chunk to the next: headroom and data.
    fn stride(&self) -> usize {
        FRAME_HEADROOM + self.frame_size
    }
}

impl FramePool for MemPool {
    type Desc = MemDesc;

    fn frame_count(&self) -> usize {
        self.frames
    }

    fn id(&self) -> PoolId {
        self.id
    }

    fn shared(&self) -> bool {
        self.shared
    }

    fn len_of(&self, frame: &Owned<MemDesc>) -> usize {
        self.frame_len(frame)
    }

    fn buf_mut<'a>(&'a self, frame: &'a mut Owned<MemDesc>) -> &'a mut [u8] {
        self.frame_buf(frame)
    }

    fn buffer_mut<'a>(&'a self, frame: &'a mut Owned<MemDesc>) -> (&'a mut [u8], usize) {
        self.frame_buffer(frame)
    }

    fn set_len(&self, frame: &mut Owned<MemDesc>, len: usize) {
        self.set_frame_len(frame, len);
    }

    fn takes_offload(&self) -> bool {
        self.offload
    }

    fn offload_of(&self, frame: &Owned<MemDesc>) -> Offload {
        self.frame_offload(frame)
    }

    fn set_offload(&self, frame: &mut Owned<MemDesc>, offload: Offload) {
        self.set_frame_offload(frame, offload);
    }
}
