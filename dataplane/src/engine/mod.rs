//! The engine: workers pinned to cores, each owning its queues, driving
//! the pure pipeline over the I/O adapters, and their counters.

pub mod counters;
pub mod worker;
