//! The engine: workers pinned to cores, each owning its queues, driving
//! the pure pipeline over the I/O adapters, and their counters.
// Frames are reached through their tokens (io::port::Owned); every
// `unsafe` is in the I/O adapters.
#![deny(unsafe_code)]

pub mod counters;
pub mod worker;

#[cfg(test)]
mod tests;
