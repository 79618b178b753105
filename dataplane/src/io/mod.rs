//! The I/O adapters: every kernel object the dataplane drives (AF_XDP
//! sockets and the XDP program, taps, links, namespaces), behind our own
//! port trait. The only `unsafe` for real I/O lives here.

pub mod afxdp;
pub mod backend;
pub mod link;
pub mod neigh;
pub mod netns;
pub mod poll;
pub mod pool;
pub mod port;
pub mod tap;
pub mod uplink;
pub mod xdp_run;
