//! perf: ferry's benchmarks.
//!
//! Layer: measurement only, on top of everything else. It may depend on any
//! crate of the workspace and on tools of the machine (iperf3, ping, clang,
//! the reference CNI plugins); no product crate may depend on it. It must
//! never touch the root network namespace's links, routes or sysctls: all
//! it builds lives in network namespaces named `fpf-*` that it removes again.
//!
//! - `benches/`: criterion micro-benchmarks.
//! - [`e2e`]: the end-to-end harness (`perf e2e`), ferry against the kernel
//!   paths on the same machine in the same run.
//! - [`cni`]: `perf cni`, ADD/DEL latency against bridge + host-local.
//! - [`cluster`]: `perf cluster`, what the etcd datastore costs per node.
//! - [`idle`]: `perf idle`, what an idle node's dataplane costs (CPU, RSS
//!   per pod) per poll mode.

pub mod churn;
pub mod cluster;
pub mod cni;
pub mod e2e;
pub mod idle;
pub mod restart;
