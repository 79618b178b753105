//! ferry-dataplane: the userspace dataplane.
//!
//! Layers, innermost first; each may use only the ones above it:
//! - [`core`]: no I/O, no clock, no `unsafe`, no allocation per packet;
//!   depends only on ferry-api types. [`core::wire`] (checked views of the
//!   protocols, checksums), [`core::pipeline`] (the pure function from a
//!   batch of frames, a table snapshot and a timestamp to one verdict per
//!   frame), [`core::offload`] (virtio-net headers, the checksum state and
//!   the one function that finishes a frame for its egress port,
//!   segmentation),
//!   [`core::verdict`] (verdicts, `Reply` for answers made in place, and
//!   numbered drop reasons),
//!   [`core::tables`] (the immutable tables the workers read, and their
//!   publication).
//! - [`io`]: the adapters at the edge, the only `unsafe` for real I/O:
//!   [`io::port`] (our port and frame-pool traits, and the frame token
//!   [`io::port::Owned`] through which the worker reaches a frame's data
//!   and the headroom in front of it without `unsafe`), [`io::poll`] (poll(2) for idle workers), [`io::afxdp`] (the XDP
//!   program via aya, AF_XDP sockets via xsk-rs), [`io::tap`] (pod taps
//!   with virtio-net headers, opened inside the pod namespace),
//!   [`io::backend`] (both behind one port type), [`io::link`] and
//!   [`io::netns`] (what an interface or namespace path named in the table
//!   API really is, checked before anything is attached), [`io::xdp_run`]
//!   (`BPF_PROG_TEST_RUN` of the XDP programs, for their tests).
//! - [`engine`]: the pinned polling loops ([`engine::worker`], one pass
//!   at a time with `Worker::step`) and their single-writer counters
//!   ([`engine::counters`]). Workers never take a lock or talk to the
//!   server; no `unsafe`.
//! - [`control`]: the table-API state, port lifecycle and publishing, and
//!   its Unix-socket front ([`control::server`]).
//! - [`sim`] (tests and benchmarks only, feature `sim`): in-memory ports
//!   that drive the real engine without a kernel, and `SimNode`, a worker
//!   stepped by the test with a frame census after every pass.

pub mod control;
pub mod core;
pub mod engine;
pub mod io;
#[cfg(any(test, feature = "sim"))]
pub mod sim;
