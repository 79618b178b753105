//! ferry-dataplane: the userspace dataplane.
//!
//! Layers, innermost first:
//! - [`pipeline`] and [`tables`]: the pure core. No I/O, no clock, no
//!   allocation per packet; depends only on ferry-api types.
//! - I/O adapters at the edge (AF_XDP sockets via xsk-rs, the XDP loader via
//!   aya, an in-memory port for tests), behind our own port trait.
//! - One place wires core, adapters and threads together (workers + the
//!   table-API control server).
//!
//! Modules outside the core: [`port`] (our port/frame-pool traits),
//! [`afxdp`] (XDP program via aya + AF_XDP sockets via xsk-rs: the only
//! `unsafe` for real I/O besides [`tap`]), [`tap`] (pod taps with
//! virtio-net headers, opened inside the pod namespace), [`link`] and
//! [`netns`] (what an interface or a namespace path named in the table API
//! really is, checked before anything is attached), [`backend`] (both
//! behind one port type), [`mem`] (in-memory ports for tests), [`counters`]
//! (single-writer per-worker counters), [`xdp_run`] (`BPF_PROG_TEST_RUN`
//! of the XDP programs, for their tests), [`worker`] (the pinned polling
//! loops), [`control`] (table-API state, port lifecycle, publishing),
//! [`server`] (the Unix-socket front of `control`). The core must not depend
//! on any of them; workers must never take a lock or talk to the server.

pub mod pipeline;
pub mod tables;

pub mod afxdp;
pub mod backend;
pub mod control;
pub mod counters;
pub mod link;
pub mod mem;
pub mod netns;
pub mod port;
pub mod server;
pub mod tap;
pub mod worker;
pub mod xdp_run;
