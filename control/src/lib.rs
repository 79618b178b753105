//! ferryd: ferry's node agent.
//!
//! Layer: control plane. Depends on ferry-api (the messages), rtnetlink
//! (plumbing in the node and pod namespaces), redb (the crash-safe store)
//! and tokio. It reaches ferry-dataplane only through the table-update API
//! ([`dataplane_client`]); it must never touch AF_XDP sockets, XDP programs or the
//! dataplane's tables directly, and never shells out to `ip` (nftables has
//! no stable netlink library here, so the masquerade table is loaded with
//! `nft -f -`).
//!
//! Layout, by layer:
//! - [`cluster`]: the datastore nodes share (the [`cluster::Datastore`]
//!   trait; etcd and the embedded single node) and the peer routes it gives.
//! - [`cni`]: the CNI command handlers (ADD, DEL, CHECK, GC, STATUS; one
//!   file each), their locks, their error codes, abandoned requests.
//! - [`ipam`]: address pools and the choice of the next address (pure).
//! - [`store`]: the redb store of attachments and allocations.
//! - [`plumbing`]: the kernel objects, by rtnetlink: checked namespace
//!   paths ([`plumbing::netns`]), veth and tap pods, the pod end, the host
//!   port, routes, and the node kernel's side of an uplink
//!   ([`plumbing::uplink`]: peer routes, forwarding, the nftables
//!   masquerade, the one place ferryd runs a program, `nft`).
//! - [`reconcile`]: the one place the state the dataplane must hold is
//!   computed (store records checked against the kernel; stale ones out).
//! - [`dataplane_client`]: the table-API client task (Hello, Sync, updates).
//! - [`metrics`]: the Prometheus endpoint (render, gather, http).
//! - [`services`]: Kubernetes objects (Services, EndpointSlices,
//!   NetworkPolicies, Namespaces, Pods) from the datastore, and the
//!   service ports and endpoint policies compiled from them for the
//!   dataplane.
//! - [`server`]: the pod-API Unix socket server (and `ferryctl`'s object
//!   requests on the same socket).
//! - [`config`]: the TOML configuration and its validation.

pub mod cluster;
pub mod cni;
pub mod config;
pub mod dataplane_client;
pub mod ipam;
pub mod metrics;
pub mod plumbing;
pub mod reconcile;
pub mod server;
pub mod services;
pub mod store;
