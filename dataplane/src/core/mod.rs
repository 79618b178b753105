//! The pure core: no I/O, no clock, no `unsafe`. Everything here is a
//! function of its arguments, so it is unit-tested, property-tested and
//! fuzzed without any kernel object. The one shared mutable state is the
//! connection tracking table ([`conntrack`]), behind sharded locks.

pub mod conntrack;
pub mod offload;
pub mod pipeline;
pub mod service;
pub mod tables;
pub mod verdict;
pub mod wire;
