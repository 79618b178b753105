//! The pure core: no I/O, no clock, no `unsafe`. Everything here is a
//! function of its arguments, so it is unit-tested, property-tested and
//! fuzzed without any kernel object.

pub mod offload;
pub mod pipeline;
pub mod tables;
pub mod verdict;
pub mod wire;
