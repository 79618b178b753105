//! Frames in heap memory: a pool of equal chunks with the same
//! descriptor discipline as an AF_XDP UMEM. The tap adapter's queues use
//! it (a tap has no UMEM), and so do the in-memory test ports ([`crate::sim`]).
//! Each chunk is [`FRAME_HEADROOM`] bytes of headroom, then the frame's
//! `frame_size` bytes: the data always starts after the headroom, so
//! readers and writers of [`FramePool::chunk_mut`] never see it.

use std::ptr::NonNull;

use crate::core::pipeline::{Offload, FRAME_HEADROOM};
use crate::io::port::FramePool;

/// A frame of a [`MemPool`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
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
}

// SAFETY: the pool owns its allocation exclusively (nothing else holds the
// pointer); moving it to another thread moves that ownership.
unsafe impl Send for MemPool {}

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
        }
    }

    /// Bytes of data each frame holds (after its headroom).
    pub fn frame_size(&self) -> usize {
        self.frame_size
    }

    /// A pool whose frames carry offload headers, as a tap queue's do.
    pub fn with_offload(frames: usize, frame_size: usize) -> MemPool {
        // Not struct-update syntax: that would copy the fields out of a
        // temporary whose Drop then frees the memory.
        let mut pool = MemPool::new(frames, frame_size);
        pool.offload = true;
        pool
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

    /// The whole chunk of `desc`, headroom included.
    ///
    /// # Safety
    ///
    /// As for [`FramePool::chunk_mut`].
    #[expect(
        clippy::mut_from_ref,
        reason = "the pool hands out disjoint chunks the caller owns; see Safety"
    )]
    unsafe fn whole_chunk(&self, desc: &MemDesc) -> &mut [u8] {
        // Descriptors are only made by `all_descs`, so the index is in range;
        // clamp anyway so a forged one cannot reach outside the allocation.
        let index = (desc.index as usize).min(self.frames - 1);
        // SAFETY: the chunk lies inside the allocation (index < frames), and
        // the caller guarantees (trait contract) that it owns this frame and
        // holds no other reference into it, so the `&mut` is unique.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.base.as_ptr().add(index * self.stride()),
                self.stride(),
            )
        }
    }
}

impl FramePool for MemPool {
    type Desc = MemDesc;

    fn all_descs(&self) -> Vec<MemDesc> {
        (0..self.frames as u32)
            .map(|index| MemDesc {
                index,
                len: 0,
                offload: Offload::NONE,
            })
            .collect()
    }

    fn len_of(&self, desc: &MemDesc) -> usize {
        desc.len as usize
    }

    unsafe fn chunk_mut(&self, desc: &MemDesc) -> &mut [u8] {
        // SAFETY: the caller's guarantees (trait contract) are passed on.
        let chunk = unsafe { self.whole_chunk(desc) };
        &mut chunk[FRAME_HEADROOM..]
    }

    unsafe fn buffer_mut(&self, desc: &MemDesc) -> (&mut [u8], usize) {
        // SAFETY: as for `chunk_mut`.
        (unsafe { self.whole_chunk(desc) }, FRAME_HEADROOM)
    }

    unsafe fn set_len(&self, desc: &mut MemDesc, len: usize) {
        desc.len = len.min(self.frame_size) as u32;
    }

    fn takes_offload(&self) -> bool {
        self.offload
    }

    fn offload_of(&self, desc: &MemDesc) -> Offload {
        if self.offload {
            desc.offload
        } else {
            Offload::NONE
        }
    }

    fn set_offload(&self, desc: &mut MemDesc, offload: Offload) {
        if self.offload {
            desc.offload = offload;
        }
    }
}
