//! ferryd: ferry's node agent.
//!
//! Layer: control plane. Depends on ferry-api (the messages), rtnetlink
//! (plumbing in the node and pod namespaces), redb (the crash-safe store)
//! and tokio. It reaches ferry-dataplane only through the table-update API
//! ([`dataplane`]); it must never touch AF_XDP sockets, XDP programs or the
//! dataplane's tables directly, and never shells out to `ip`.
//!
//! - [`config`]: the TOML configuration and its validation.
//! - [`ipam`]: address pools and the choice of the next address (pure).
//! - [`store`]: the redb store of attachments and allocations.
//! - [`netns`]: opening a pod namespace path safely (bounded, nsfs, not the
//!   node's own, the same namespace as at ADD).
//! - [`reconcile`]: which stored attachments are still alive in the kernel.
//! - [`netlink`]: veth and tap plumbing, the host port, checks (rtnetlink).
//! - [`tap`]: creating a pod's persistent tap (on [`ferry_tun`]).
//! - [`dataplane`]: the table-API client task (Hello, Sync, updates).
//! - [`agent`]: ADD/DEL/CHECK/GC/STATUS on top of the above.
//! - [`server`]: the pod-API Unix socket server.
//! - [`metrics`]: the Prometheus endpoint (`GET /metrics`).

pub mod agent;
pub mod config;
pub mod dataplane;
pub mod ipam;
pub mod metrics;
pub mod plumbing;
pub mod reconcile;
pub mod server;
pub mod store;
