//! Address pools and the host-local style choice of the next address.
//!
//! Pure: no storage and no I/O. The store asks [`Pools::pick`] for a
//! candidate inside its write transaction, passing a closure that tells
//! whether an address is already allocated, so the choice and the
//! allocation are one atomic step.

use std::net::Ipv4Addr;

use ferry_api::pod::IpamRequest;
use ipnet::Ipv4Net;

use crate::config::first_host;

/// One range to allocate from: `first..=last` inside `subnet`, never the
/// network or broadcast address, the pool's gateway or the node gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    pub subnet: Ipv4Net,
    pub first: Ipv4Addr,
    pub last: Ipv4Addr,
    /// The gateway reported to (and routed via by) pods of this pool.
    pub gateway: Ipv4Addr,
    /// The node's gateway (host port address), never handed out.
    pub node_gateway: Ipv4Addr,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    #[error("range subnet {subnet} is not inside the node's pod CIDRs {cidrs:?}")]
    OutsidePodCidrs {
        subnet: Ipv4Net,
        cidrs: Vec<Ipv4Net>,
    },
    #[error("range {subnet}: {what} {addr} is outside the subnet's host addresses")]
    OutsideSubnet {
        subnet: Ipv4Net,
        what: &'static str,
        addr: Ipv4Addr,
    },
    #[error("range {subnet}: rangeStart {start} is after rangeEnd {end}")]
    EmptyRange {
        subnet: Ipv4Net,
        start: Ipv4Addr,
        end: Ipv4Addr,
    },
    #[error("range {subnet} is too small for pods (at most /30)")]
    TooSmall { subnet: Ipv4Net },
    #[error("{what} {value} is IPv6: ferryd serves IPv4 pods only so far")]
    Ipv6 { what: &'static str, value: String },
}

/// The IPv4 network of a family-generic one from the pod API.
pub fn v4_net(n: ipnet::IpNet, what: &'static str) -> Result<Ipv4Net, IpamError> {
    match n {
        ipnet::IpNet::V4(n) => Ok(n),
        ipnet::IpNet::V6(_) => Err(IpamError::Ipv6 {
            what,
            value: n.to_string(),
        }),
    }
}

/// The IPv4 address of a family-generic one from the pod API.
pub fn v4_addr(a: std::net::IpAddr, what: &'static str) -> Result<Ipv4Addr, IpamError> {
    match a {
        std::net::IpAddr::V4(a) => Ok(a),
        std::net::IpAddr::V6(_) => Err(IpamError::Ipv6 {
            what,
            value: a.to_string(),
        }),
    }
}

impl Pool {
    /// Whether `ip` may be handed out from this pool.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let v = u32::from(ip);
        v >= u32::from(self.first)
            && v <= u32::from(self.last)
            && ip != self.gateway
            && ip != self.node_gateway
    }

    /// Number of addresses this pool can hand out.
    pub fn size(&self) -> u64 {
        let span = u64::from(u32::from(self.last)) - u64::from(u32::from(self.first)) + 1;
        let mut excluded = 0;
        if self.contains_raw(self.gateway) {
            excluded += 1;
        }
        if self.node_gateway != self.gateway && self.contains_raw(self.node_gateway) {
            excluded += 1;
        }
        span - excluded
    }

    fn contains_raw(&self, ip: Ipv4Addr) -> bool {
        (u32::from(self.first)..=u32::from(self.last)).contains(&u32::from(ip))
    }

    pub fn prefix_len(&self) -> u8 {
        self.subnet.prefix_len()
    }
}

/// The pools of one request, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pools(pub Vec<Pool>);

/// Host addresses of a subnet: without network and broadcast address.
fn host_bounds(subnet: Ipv4Net) -> (u32, u32) {
    let net = u32::from(subnet.network());
    let bcast = u32::from(subnet.broadcast());
    if subnet.prefix_len() >= 31 {
        (net, bcast)
    } else {
        (net + 1, bcast - 1)
    }
}

impl Pools {
    /// The pools for a request: its `ranges`, each inside one of the node's
    /// pod CIDRs, or the node's pod CIDRs when it names none.
    pub fn for_request(
        req: &IpamRequest,
        pod_cidrs: &[Ipv4Net],
        node_gateway: Ipv4Addr,
    ) -> Result<Pools, IpamError> {
        let mut pools = Vec::new();
        if req.ranges.is_empty() {
            for cidr in pod_cidrs {
                let (first, last) = host_bounds(*cidr);
                let gateway = if cidr.contains(&node_gateway) {
                    node_gateway
                } else {
                    first_host(*cidr)
                };
                pools.push(Pool {
                    subnet: *cidr,
                    first: first.into(),
                    last: last.into(),
                    gateway,
                    node_gateway,
                });
            }
            return Ok(Pools(pools));
        }
        for r in &req.ranges {
            let subnet = v4_net(r.subnet, "range subnet")?.trunc();
            if !pod_cidrs.iter().any(|c| c.contains(&subnet)) {
                return Err(IpamError::OutsidePodCidrs {
                    subnet,
                    cidrs: pod_cidrs.to_vec(),
                });
            }
            if subnet.prefix_len() > 30 {
                return Err(IpamError::TooSmall { subnet });
            }
            let (lo, hi) = host_bounds(subnet);
            let check = |what: &'static str, addr: Ipv4Addr| {
                if (lo..=hi).contains(&u32::from(addr)) {
                    Ok(u32::from(addr))
                } else {
                    Err(IpamError::OutsideSubnet { subnet, what, addr })
                }
            };
            let v4 = |a: Option<std::net::IpAddr>, what| a.map(|a| v4_addr(a, what)).transpose();
            let (range_start, range_end, range_gateway) = (
                v4(r.range_start, "rangeStart")?,
                v4(r.range_end, "rangeEnd")?,
                v4(r.gateway, "range gateway")?,
            );
            let first = range_start
                .map(|a| check("rangeStart", a))
                .transpose()?
                .unwrap_or(lo);
            let last = range_end
                .map(|a| check("rangeEnd", a))
                .transpose()?
                .unwrap_or(hi);
            if first > last {
                return Err(IpamError::EmptyRange {
                    subnet,
                    start: first.into(),
                    end: last.into(),
                });
            }
            let gateway = match range_gateway {
                Some(gw) => {
                    check("gateway", gw)?;
                    gw
                }
                None if subnet.contains(&node_gateway) => node_gateway,
                None => first_host(subnet),
            };
            pools.push(Pool {
                subnet,
                first: first.into(),
                last: last.into(),
                gateway,
                node_gateway,
            });
        }
        Ok(Pools(pools))
    }

    /// The pool `ip` may be handed out from, if any.
    pub fn pool_of(&self, ip: Ipv4Addr) -> Option<&Pool> {
        self.0.iter().find(|p| p.contains(ip))
    }

    /// Total number of addresses the pools can hand out (ranges of one
    /// request may overlap; then this over-counts, which only matters for
    /// STATUS, computed from the node pools that never overlap).
    pub fn size(&self) -> u64 {
        self.0.iter().map(Pool::size).sum()
    }

    /// Host-local style choice: the first free address after `cursor` (the
    /// last one allocated), walking the pools in order and wrapping around
    /// once, so a released address is not handed out again at once.
    /// `is_taken` reports whether an address is allocated; its errors abort.
    pub fn pick<E>(
        &self,
        cursor: Option<Ipv4Addr>,
        mut is_taken: impl FnMut(Ipv4Addr) -> Result<bool, E>,
    ) -> Result<Option<(usize, Ipv4Addr)>, E> {
        if self.0.is_empty() {
            return Ok(None);
        }
        // Where to start: just after the cursor, in the pool holding it.
        let (start_pool, start_addr) = match cursor.and_then(|c| {
            self.0
                .iter()
                .position(|p| (u32::from(p.first)..=u32::from(p.last)).contains(&u32::from(c)))
                .map(|i| (i, u32::from(c)))
        }) {
            Some((i, c)) => (i, Some(c)),
            None => (0, None),
        };
        // Visit pool start_pool from after the cursor, the other pools in
        // order, then pool start_pool from its start up to the cursor.
        let n = self.0.len();
        for step in 0..=n {
            let idx = (start_pool + step) % n;
            let pool = &self.0[idx];
            let (lo, hi) = (u32::from(pool.first), u32::from(pool.last));
            let (from, to) = match (step, start_addr) {
                (0, Some(c)) => (c.saturating_add(1), hi),
                (s, Some(c)) if s == n => (lo, c),
                (s, None) if s == n => break,
                _ => (lo, hi),
            };
            if from > to {
                continue;
            }
            for v in from..=to {
                let ip = Ipv4Addr::from(v);
                if pool.contains(ip) && !is_taken(ip)? {
                    return Ok(Some((idx, ip)));
                }
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::convert::Infallible;

    use ferry_api::pod::RangeSpec;

    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }
    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }
    fn node_pools(cidrs: &[&str], gw: &str) -> Pools {
        let cidrs: Vec<Ipv4Net> = cidrs.iter().map(|c| net(c)).collect();
        Pools::for_request(&IpamRequest::default(), &cidrs, ip(gw)).unwrap()
    }
    fn range(subnet: &str, start: Option<&str>, end: Option<&str>) -> RangeSpec {
        RangeSpec {
            subnet: net(subnet).into(),
            range_start: start.map(|a| ip(a).into()),
            range_end: end.map(|a| ip(a).into()),
            gateway: None,
        }
    }
    /// Allocate everything, in order, against a set.
    fn drain(pools: &Pools, taken: &mut BTreeSet<Ipv4Addr>) -> Vec<Ipv4Addr> {
        let mut out = Vec::new();
        let mut cursor = None;
        while let Some((_, a)) = pools
            .pick::<Infallible>(cursor, |a| Ok(taken.contains(&a)))
            .unwrap()
        {
            taken.insert(a);
            out.push(a);
            cursor = Some(a);
        }
        out
    }

    #[test]
    fn node_pool_skips_network_broadcast_and_gateway() {
        let pools = node_pools(&["10.88.0.0/29"], "10.88.0.1");
        let got = drain(&pools, &mut BTreeSet::new());
        assert_eq!(
            got,
            [
                "10.88.0.2",
                "10.88.0.3",
                "10.88.0.4",
                "10.88.0.5",
                "10.88.0.6"
            ]
            .map(ip)
        );
        assert_eq!(pools.size(), 5);
        // A gateway in the middle is skipped too.
        let pools = node_pools(&["10.88.0.0/29"], "10.88.0.4");
        let got = drain(&pools, &mut BTreeSet::new());
        assert_eq!(
            got,
            [
                "10.88.0.1",
                "10.88.0.2",
                "10.88.0.3",
                "10.88.0.5",
                "10.88.0.6"
            ]
            .map(ip)
        );
        assert_eq!(pools.0[0].gateway, ip("10.88.0.4"));
    }

    #[test]
    fn several_node_cidrs_are_used_in_order() {
        let pools = node_pools(&["10.1.0.0/30", "10.2.0.0/30"], "10.1.0.1");
        let got = drain(&pools, &mut BTreeSet::new());
        // 10.1.0.0/30: .1 is the gateway, .2 left; 10.2.0.0/30: .1 is its own gateway, .2 left.
        assert_eq!(got, ["10.1.0.2", "10.2.0.2"].map(ip));
        assert_eq!(pools.0[1].gateway, ip("10.2.0.1"));
    }

    #[test]
    fn ranges_honor_start_and_end() {
        let cidrs = [net("10.88.0.0/16")];
        let req = IpamRequest {
            ranges: vec![range(
                "10.88.1.0/24",
                Some("10.88.1.10"),
                Some("10.88.1.12"),
            )],
            ..Default::default()
        };
        let pools = Pools::for_request(&req, &cidrs, ip("10.88.0.1")).unwrap();
        assert_eq!(
            pools.0[0].gateway,
            ip("10.88.1.1"),
            "default gateway of a range: its first host"
        );
        let got = drain(&pools, &mut BTreeSet::new());
        assert_eq!(got, ["10.88.1.10", "10.88.1.11", "10.88.1.12"].map(ip));
        assert!(!pools.0[0].contains(ip("10.88.1.9")));
        assert!(!pools.0[0].contains(ip("10.88.1.13")));
        // The node gateway inside a range is skipped and is the range's gateway.
        let req = IpamRequest {
            ranges: vec![range("10.88.0.0/24", None, Some("10.88.0.3"))],
            ..Default::default()
        };
        let pools = Pools::for_request(&req, &cidrs, ip("10.88.0.1")).unwrap();
        assert_eq!(pools.0[0].gateway, ip("10.88.0.1"));
        assert_eq!(
            drain(&pools, &mut BTreeSet::new()),
            ["10.88.0.2", "10.88.0.3"].map(ip)
        );
    }

    #[test]
    fn bad_ranges_are_refused() {
        let cidrs = [net("10.88.0.0/16")];
        let gw = ip("10.88.0.1");
        let bad = [
            (range("10.89.0.0/24", None, None), "outside"),
            (range("10.0.0.0/8", None, None), "outside"),
            (range("10.88.1.0/24", Some("10.88.2.1"), None), "start"),
            (range("10.88.1.0/24", None, Some("10.88.1.255")), "end"),
            (
                range("10.88.1.0/24", Some("10.88.1.9"), Some("10.88.1.8")),
                "empty",
            ),
            (range("10.88.1.0/31", None, None), "small"),
        ];
        for (r, what) in bad {
            let req = IpamRequest {
                ranges: vec![r],
                ..Default::default()
            };
            let err = Pools::for_request(&req, &cidrs, gw).unwrap_err();
            let ok = match what {
                "outside" => matches!(err, IpamError::OutsidePodCidrs { .. }),
                "start" | "end" => matches!(err, IpamError::OutsideSubnet { .. }),
                "empty" => matches!(err, IpamError::EmptyRange { .. }),
                _ => matches!(err, IpamError::TooSmall { .. }),
            };
            assert!(ok, "{what}: {err}");
        }
    }

    #[test]
    fn cursor_moves_on_and_wraps() {
        let pools = node_pools(&["10.88.0.0/29"], "10.88.0.1");
        let mut taken: BTreeSet<Ipv4Addr> = BTreeSet::new();
        let pick = |taken: &BTreeSet<Ipv4Addr>, cursor| {
            pools
                .pick::<Infallible>(cursor, |a| Ok(taken.contains(&a)))
                .unwrap()
                .map(|(_, a)| a)
        };
        // After .3 was handed out and released, the next is .4, not .3 again.
        taken.insert(ip("10.88.0.2"));
        assert_eq!(pick(&taken, Some(ip("10.88.0.3"))), Some(ip("10.88.0.4")));
        // From the end it wraps to the start.
        assert_eq!(pick(&taken, Some(ip("10.88.0.6"))), Some(ip("10.88.0.3")));
        // A cursor outside every pool starts from the beginning.
        assert_eq!(pick(&taken, Some(ip("192.168.0.1"))), Some(ip("10.88.0.3")));
        // The cursor address itself is reached last.
        for a in ["10.88.0.3", "10.88.0.4", "10.88.0.6"] {
            taken.insert(ip(a));
        }
        assert_eq!(pick(&taken, Some(ip("10.88.0.5"))), Some(ip("10.88.0.5")));
        taken.insert(ip("10.88.0.5"));
        assert_eq!(pick(&taken, Some(ip("10.88.0.5"))), None, "exhausted");
    }

    #[test]
    fn pick_propagates_lookup_errors() {
        let pools = node_pools(&["10.88.0.0/24"], "10.88.0.1");
        let r: Result<_, &str> = pools.pick(None, |_| Err("disk on fire"));
        assert_eq!(r, Err("disk on fire"));
    }

    #[test]
    fn pool_of_finds_explicit_addresses() {
        let pools = node_pools(&["10.88.0.0/24"], "10.88.0.1");
        assert!(pools.pool_of(ip("10.88.0.77")).is_some());
        for bad in ["10.88.0.0", "10.88.0.1", "10.88.0.255", "10.89.0.5"] {
            assert!(pools.pool_of(ip(bad)).is_none(), "{bad}");
        }
    }
}
