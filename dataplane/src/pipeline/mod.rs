//! The packet pipeline: a pure function from (frames, table snapshot, time)
//! to one verdict per frame.
//!
//! Contract (see ARCHITECTURE.md "Pipeline"): no I/O, no locks, no
//! allocation, no logging, no clock reads. Frames may be rewritten in place
//! (and may change length within their buffer's capacity). Every frame gets
//! exactly one verdict.

pub mod verdict;

pub use verdict::{DropReason, Verdict};

use crate::tables::{PortId, Tables};

/// One received frame. `buf` is the whole chunk the frame sits in (its
/// capacity bounds how far a reply may grow); the frame is `buf[..len]`.
pub struct Frame<'a> {
    pub port: PortId,
    pub buf: &'a mut [u8],
    pub len: usize,
}

impl<'a> Frame<'a> {
    pub fn new(port: PortId, buf: &'a mut [u8], len: usize) -> Self {
        Frame { port, buf, len }
    }
    pub fn bytes(&self) -> &[u8] {
        &self.buf[..self.len.min(self.buf.len())]
    }
}

/// Decide the fate of every frame in `frames`, writing `verdicts[i]` for
/// `frames[i]`. `verdicts.len()` must be at least `frames.len()`.
/// `now_ns` is the batch timestamp (monotonic nanoseconds).
pub fn process_batch(tables: &Tables, now_ns: u64, frames: &mut [Frame<'_>], verdicts: &mut [Verdict]) {
    let _ = now_ns;
    for (frame, verdict) in frames.iter_mut().zip(verdicts.iter_mut()) {
        *verdict = process_frame(tables, frame);
    }
}

/// The single-frame decision (the reference the batch path must agree with).
pub fn process_frame(tables: &Tables, frame: &mut Frame<'_>) -> Verdict {
    let _ = (tables, frame);
    Verdict::Drop(DropReason::NotImplemented)
}
