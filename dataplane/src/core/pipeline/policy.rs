//! NetworkPolicy enforcement: a packet leaving a policed pod must be
//! allowed by its egress rules, a packet delivered to a policed pod by
//! its ingress rules (ferryd compiled both per endpoint,
//! [`ferry_api::table::EndpointPolicy`]).
//!
//! Replies pass: an allowed TCP, UDP or ICMP echo flow is tracked in the
//! connection table (identity entries, [`FlowKey::policy`]), both ways,
//! and a packet whose flow the table knows is not judged again, whatever
//! the other side's policy says. So a policy change applies to new flows;
//! established ones run to their timeout (Cilium's behaviour).
//!
//! Judged where the addresses are the pods' own: after service
//! translation for a request (Kubernetes evaluates policy on the chosen
//! backend), before it for a reply (whose source the service stage puts
//! back to the ClusterIP), so both directions of a flow through a service
//! meet one entry. Traffic from the node itself (its gateways, its uplink
//! address) is always allowed in, as Kubernetes requires for probes.
//! ICMP errors pass (they belong to a flow the table cannot name without
//! parsing the quoted header; noted in ARCHITECTURE.md).

use std::net::{IpAddr, Ipv6Addr};

use super::nat::Flow;
use super::{wire, DropReason, Verdict};
use crate::core::conntrack::{FlowKey, PROTO_TCP, PROTO_UDP};
use crate::core::tables::{Policies, PortId};
use ferry_api::table::PolicyRule;

const ICMP: u8 = 1;
const ICMPV6: u8 = 58;

/// What policy looks at in a packet, read before the pipeline rewrites it.
#[derive(Clone, Copy, Debug)]
pub(super) struct Packet {
    key: FlowKey,
    /// TCP flags (0 for anything else).
    flags: u8,
    /// The destination port rules match (`None`: none to read).
    dport: Option<u16>,
    /// Whether the flow is tracked (TCP, UDP, ICMP echo).
    tracked: bool,
    /// An ICMP error (passes).
    related: bool,
}

fn addr(key: u128) -> IpAddr {
    let a = Ipv6Addr::from(key);
    match a.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(a),
    }
}

impl Packet {
    /// The packet `ip` as it is now.
    pub(super) fn of<F: Flow>(ip: &F) -> Packet {
        let (proto, src, dst, whole) = ip.header();
        let l4 = ip.l4();
        let mut p = Packet {
            key: FlowKey {
                policy: true,
                proto,
                src,
                dst,
                sport: 0,
                dport: 0,
            },
            flags: 0,
            dport: None,
            tracked: false,
            related: false,
        };
        if !whole {
            return p;
        }
        match proto {
            PROTO_TCP | PROTO_UDP if l4.len() >= 4 => {
                p.key.sport = wire::get_u16(l4, 0);
                p.key.dport = wire::get_u16(l4, 2);
                p.dport = Some(p.key.dport);
                p.tracked = true;
                if proto == PROTO_TCP && l4.len() > 13 {
                    p.flags = l4[13];
                }
            }
            ICMP | ICMPV6 if l4.len() >= 8 => {
                let id = wire::get_u16(l4, 4);
                // Echo requests key as (id, 0), replies as (0, id): the
                // reply direction of a tracked request.
                match (proto, l4[0]) {
                    (ICMP, 8) | (ICMPV6, 128) => (p.key.sport, p.tracked) = (id, true),
                    (ICMP, 0) | (ICMPV6, 129) => (p.key.dport, p.tracked) = (id, true),
                    (ICMP, 3 | 4 | 5 | 11 | 12) | (ICMPV6, 1..=4) => p.related = true,
                    _ => {}
                }
            }
            _ => {}
        }
        p
    }
}

/// Whether some rule of an isolated direction allows the packet, whose
/// other side is `peer`.
fn allowed(rules: &[PolicyRule], peer: &IpAddr, p: &Packet) -> bool {
    rules.iter().any(|r| r.allows(peer, p.key.proto, p.dport))
}

/// Judge `p`, sent by the local pod on port `from` (if it came from one)
/// to the local pod on port `to` (if it goes to one). `Err`: the verdict
/// (a denial counted on the policed port, or `ct_full`).
pub(super) fn admit(
    pol: &Policies,
    now: u64,
    p: &Packet,
    from: Option<PortId>,
    to: Option<PortId>,
) -> Result<(), Verdict> {
    let sender = from.and_then(|f| Some((f, pol.of(f)?)));
    let receiver = to.and_then(|t| Some((t, pol.of(t)?)));
    // A flow of a pod with any policy is tracked even when this direction
    // is open, so that its replies pass the other direction's rules.
    if (sender.is_none() && receiver.is_none()) || p.related {
        return Ok(());
    }
    let egress = sender.and_then(|(f, e)| Some((f, e.egress.as_deref()?)));
    let ingress = receiver.and_then(|(t, e)| Some((t, e.ingress.as_deref()?)));
    let ct = &pol.conntrack;
    if p.tracked && ct.touch(&p.key, now, p.flags).is_some() {
        return Ok(());
    }
    let (src, dst) = (addr(p.key.src), addr(p.key.dst));
    if let Some((port, rules)) = egress {
        if !allowed(rules, &dst, p) {
            return Err(Verdict::Denied {
                port,
                reason: DropReason::PolicyDeniedEgress,
            });
        }
    }
    if let Some((port, rules)) = ingress {
        if !pol.node_addrs.contains(&src) && !allowed(rules, &src, p) {
            return Err(Verdict::Denied {
                port,
                reason: DropReason::PolicyDeniedIngress,
            });
        }
    }
    if p.tracked && !ct.allow_flow(p.key, now, p.flags) {
        return Err(Verdict::Drop(DropReason::CtFull));
    }
    Ok(())
}
