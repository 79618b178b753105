//! How routes are added: a pod's are created and never written over
//! something that exists; the host port's are ferry's own and replaced.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use netlink_packet_route::route::RouteScope;
use rtnetlink::{Handle, RouteMessageBuilder};

use super::NetlinkError;

/// Whether [`add_route`] may replace a route to the same destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Existing {
    /// The route is ferry's own (the host port's pod CIDR routes).
    Replace,
    /// A pod's route: created, never written over something that exists
    /// (EEXIST fails the ADD).
    Keep,
}

/// Add an IPv4 route out of `index`.
pub(super) async fn add_route(
    handle: &Handle,
    index: u32,
    dst: Ipv4Net,
    gateway: Option<Ipv4Addr>,
    src: Option<Ipv4Addr>,
    scope: RouteScope,
    existing: Existing,
) -> Result<(), rtnetlink::Error> {
    let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(dst.network(), dst.prefix_len())
        .output_interface(index)
        .scope(scope);
    if let Some(gw) = gateway {
        b = b.gateway(gw);
    }
    if let Some(src) = src {
        b = b.pref_source(src);
    }
    let add = handle.route().add(b.build());
    match existing {
        Existing::Replace => add.replace().execute().await,
        // rtnetlink's add is NLM_F_CREATE | NLM_F_EXCL.
        Existing::Keep => add.execute().await,
    }
}

/// A route of ferry's own to a pod CIDR (the node's or a peer's) out of the
/// host port's kernel end: `cidr dev kernel src gateway`, replaced if there.
pub(super) async fn replace_pod_cidr_route(
    handle: &Handle,
    index: u32,
    kernel: &str,
    cidr: Ipv4Net,
    gateway: Ipv4Addr,
) -> Result<(), NetlinkError> {
    add_route(
        handle,
        index,
        cidr,
        None,
        Some(gateway),
        RouteScope::Link,
        Existing::Replace,
    )
    .await
    .map_err(|e| NetlinkError::request(format!("add route {cidr} dev {kernel} src {gateway}"), e))
}
