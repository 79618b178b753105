//! How routes are added: a pod's are created and never written over
//! something that exists; the host port's are ferry's own and replaced.

use std::net::IpAddr;

use ipnet::IpNet;
use netlink_packet_route::route::{RouteAttribute, RouteMetric, RouteScope};
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

/// Add a route out of `index` (either family; `gateway` and `src` of the
/// family of `dst`, which the callers ensure), with its own `mtu` (RTAX_MTU,
/// unlocked: path MTU discovery may still lower it) if given.
#[expect(
    clippy::too_many_arguments,
    reason = "one per attribute of the route, each named where it is given"
)]
pub(super) async fn add_route(
    handle: &Handle,
    index: u32,
    dst: IpNet,
    gateway: Option<IpAddr>,
    src: Option<IpAddr>,
    mtu: Option<u32>,
    scope: RouteScope,
    existing: Existing,
) -> Result<(), rtnetlink::Error> {
    // A family mismatch the builder refuses (the callers prevent it).
    fn invalid(e: impl std::fmt::Display) -> rtnetlink::Error {
        rtnetlink::Error::InvalidNla(e.to_string())
    }
    let mut b = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(dst.network(), dst.prefix_len())
        .map_err(invalid)?
        .output_interface(index)
        .scope(scope);
    if let Some(gw) = gateway {
        b = b.gateway(gw).map_err(invalid)?;
    }
    if let Some(src) = src {
        b = b.pref_source(src).map_err(invalid)?;
    }
    let mut msg = b.build();
    if let Some(mtu) = mtu {
        msg.attributes
            .push(RouteAttribute::Metrics(vec![RouteMetric::Mtu(mtu)]));
    }
    let add = handle.route().add(msg);
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
    cidr: IpNet,
    gateway: IpAddr,
) -> Result<(), NetlinkError> {
    add_route(
        handle,
        index,
        cidr,
        None,
        Some(gateway),
        None,
        RouteScope::Link,
        Existing::Replace,
    )
    .await
    .map_err(|e| NetlinkError::request(format!("add route {cidr} dev {kernel} src {gateway}"), e))
}
