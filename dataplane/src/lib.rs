//! ferry-dataplane: the userspace dataplane.
//!
//! Layers, innermost first:
//! - [`pipeline`] and [`tables`]: the pure core. No I/O, no clock, no
//!   allocation per packet; depends only on ferry-api types.
//! - I/O adapters at the edge (AF_XDP sockets via xsk-rs, the XDP loader via
//!   aya, an in-memory port for tests), behind our own port trait.
//! - One place wires core, adapters and threads together (workers + the
//!   table-API control server).

pub mod pipeline;
pub mod tables;
