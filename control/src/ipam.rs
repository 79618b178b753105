//! Address pools and the host-local style choice of the next address.
//!
//! Pure: no storage and no I/O. The store asks [`Pools::pick`] for a
//! candidate inside its write transaction, passing a closure that tells
//! whether an address is already allocated, so the choice and the
//! allocation are one atomic step.
//!
//! Family-generic: a pool walks its addresses as numbers (IPv4 in the low
//! 32 bits of a `u128`). A request's pools form one range set per family
//! ([`PoolSets`], host-local's inner lists): a pod gets one address from
//! each set, so a dual-stack pod gets one IPv4 and one IPv6 address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ferry_api::pod::{IpamRequest, RangeSpec};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

/// One address of a pod, as configured in the pod and kept in its record.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodAddress {
    /// The address with the prefix of its pool.
    pub address: IpNet,
    /// Its family's gateway for the pod.
    pub gateway: IpAddr,
}

impl PodAddress {
    pub fn new(pool: &Pool, ip: IpAddr) -> PodAddress {
        PodAddress {
            // The pool's prefix fits its own family.
            address: IpNet::new(ip, pool.prefix_len()).unwrap_or(IpNet::from(ip)),
            gateway: pool.gateway,
        }
    }
}

/// The default route (`0.0.0.0/0`, `::/0`) of the family of `ip`.
pub fn default_route_of(ip: IpAddr) -> IpNet {
    match ip {
        IpAddr::V4(_) => Ipv4Net::default().into(),
        IpAddr::V6(_) => Ipv6Net::default().into(),
    }
}

/// One range to allocate from: `first..=last` inside `subnet`, never the
/// network address (IPv6: the subnet-router anycast), the IPv4 broadcast
/// address, the pool's gateway or the node gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    pub subnet: IpNet,
    pub first: IpAddr,
    pub last: IpAddr,
    /// The gateway reported to (and routed via by) pods of this pool.
    pub gateway: IpAddr,
    /// The node's gateway of this family (host port address), never handed out.
    pub node_gateway: IpAddr,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    #[error("range subnet {subnet} is not inside the node's pod CIDRs {cidrs:?}")]
    OutsidePodCidrs { subnet: IpNet, cidrs: Vec<IpNet> },
    #[error("range {subnet}: {what} {addr} is outside the subnet's host addresses")]
    OutsideSubnet {
        subnet: IpNet,
        what: &'static str,
        addr: IpAddr,
    },
    #[error("range {subnet}: rangeStart {start} is after rangeEnd {end}")]
    EmptyRange {
        subnet: IpNet,
        start: IpAddr,
        end: IpAddr,
    },
    #[error("range {subnet} is too small for pods (at most /{max})")]
    TooSmall { subnet: IpNet, max: u8 },
}

/// An address as a number in its family (IPv4 in the low 32 bits).
fn num(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(a) => u32::from(a).into(),
        IpAddr::V6(a) => a.into(),
    }
}

/// The address numbered `n` in the family of `like` (`n` is within that
/// family's numbers: taken from addresses of a network of it).
fn addr_of(like: &IpNet, n: u128) -> IpAddr {
    match like {
        IpNet::V4(_) => Ipv4Addr::from(n as u32).into(),
        IpNet::V6(_) => Ipv6Addr::from(n).into(),
    }
}

fn same_family(a: IpAddr, net: &IpNet) -> bool {
    a.is_ipv4() == matches!(net, IpNet::V4(_))
}

/// The longest prefix pods are allocated from: two host bits (IPv4 /30,
/// IPv6 /126), so a subnet holds a gateway and at least one pod.
pub fn max_pool_prefix(net: &IpNet) -> u8 {
    net.max_prefix_len() - 2
}

/// Host addresses of a subnet as numbers: without the network address
/// (IPv6: the subnet-router anycast) and, for IPv4, the broadcast address.
fn host_bounds(subnet: IpNet) -> (u128, u128) {
    let (net, last) = (num(subnet.network()), num(subnet.broadcast()));
    if subnet.prefix_len() >= subnet.max_prefix_len() - 1 {
        return (net, last);
    }
    match subnet {
        IpNet::V4(_) => (net + 1, last - 1),
        IpNet::V6(_) => (net + 1, last),
    }
}

/// The first usable host address of a network (`10.88.0.0/16` ->
/// `10.88.0.1`, `fd00::/64` -> `fd00::1`).
pub fn first_host(net: IpNet) -> IpAddr {
    addr_of(&net, host_bounds(net).0)
}

impl Pool {
    /// Whether `ip` lies in `first..=last` (gateways included).
    fn spans(&self, ip: IpAddr) -> bool {
        same_family(ip, &self.subnet) && (num(self.first)..=num(self.last)).contains(&num(ip))
    }

    /// Whether `ip` may be handed out from this pool.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.spans(ip) && ip != self.gateway && ip != self.node_gateway
    }

    /// Number of addresses this pool can hand out (at most `u64::MAX`: an
    /// IPv6 /64 holds more).
    pub fn size(&self) -> u64 {
        let span = num(self.last) - num(self.first) + 1;
        let mut excluded = 0;
        if self.spans(self.gateway) {
            excluded += 1;
        }
        if self.node_gateway != self.gateway && self.spans(self.node_gateway) {
            excluded += 1;
        }
        u64::try_from(span - excluded).unwrap_or(u64::MAX)
    }

    pub fn prefix_len(&self) -> u8 {
        self.subnet.prefix_len()
    }

    /// The node pool of one pod CIDR: its host addresses, the node
    /// gateway as gateway when inside it, else the CIDR's first host.
    fn of_node_cidr(cidr: IpNet, node_gateway: IpAddr) -> Pool {
        let (first, last) = host_bounds(cidr);
        let gateway = if cidr.contains(&node_gateway) {
            node_gateway
        } else {
            first_host(cidr)
        };
        Pool {
            subnet: cidr,
            first: addr_of(&cidr, first),
            last: addr_of(&cidr, last),
            gateway,
            node_gateway,
        }
    }

    /// The pool of one requested range, checked against the node's CIDRs.
    fn of_range(
        r: &RangeSpec,
        pod_cidrs: &[IpNet],
        gateways: &[IpAddr],
    ) -> Result<Pool, IpamError> {
        let subnet = r.subnet.trunc();
        let node_gateway = gateways.iter().copied().find(|g| same_family(*g, &subnet));
        let (Some(node_gateway), true) =
            (node_gateway, pod_cidrs.iter().any(|c| c.contains(&subnet)))
        else {
            return Err(IpamError::OutsidePodCidrs {
                subnet,
                cidrs: pod_cidrs.to_vec(),
            });
        };
        let max = max_pool_prefix(&subnet);
        if subnet.prefix_len() > max {
            return Err(IpamError::TooSmall { subnet, max });
        }
        let (lo, hi) = host_bounds(subnet);
        let check = |what: &'static str, addr: Option<IpAddr>, default: u128| match addr {
            None => Ok(default),
            Some(a) if same_family(a, &subnet) && (lo..=hi).contains(&num(a)) => Ok(num(a)),
            Some(addr) => Err(IpamError::OutsideSubnet { subnet, what, addr }),
        };
        let first = check("rangeStart", r.range_start, lo)?;
        let last = check("rangeEnd", r.range_end, hi)?;
        if first > last {
            return Err(IpamError::EmptyRange {
                subnet,
                start: addr_of(&subnet, first),
                end: addr_of(&subnet, last),
            });
        }
        let gateway = match r.gateway {
            Some(gw) => addr_of(&subnet, check("gateway", Some(gw), 0)?),
            None if subnet.contains(&node_gateway) => node_gateway,
            None => first_host(subnet),
        };
        Ok(Pool {
            subnet,
            first: addr_of(&subnet, first),
            last: addr_of(&subnet, last),
            gateway,
            node_gateway,
        })
    }
}

/// The pools of one range set (one family), in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pools(pub Vec<Pool>);

/// A request's range sets: one [`Pools`] per family, IPv4 first, none
/// empty. A pod gets one address from each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSets(pub Vec<Pools>);

impl PoolSets {
    /// The pools for a request: its `ranges`, each inside one of the node's
    /// pod CIDRs, or the node's pod CIDRs when it names none; grouped by
    /// family. `gateways` are the node's, one per family.
    pub fn for_request(
        req: &IpamRequest,
        pod_cidrs: &[IpNet],
        gateways: &[IpAddr],
    ) -> Result<PoolSets, IpamError> {
        let pools: Vec<Pool> = if req.ranges.is_empty() {
            pod_cidrs
                .iter()
                .filter_map(|&cidr| {
                    let gw = gateways.iter().copied().find(|g| same_family(*g, &cidr))?;
                    Some(Pool::of_node_cidr(cidr, gw))
                })
                .collect()
        } else {
            req.ranges
                .iter()
                .map(|r| Pool::of_range(r, pod_cidrs, gateways))
                .collect::<Result<_, _>>()?
        };
        let (v4, v6): (Vec<Pool>, Vec<Pool>) =
            pools.into_iter().partition(|p| p.subnet.addr().is_ipv4());
        Ok(PoolSets(
            [v4, v6]
                .into_iter()
                .filter(|s| !s.is_empty())
                .map(Pools)
                .collect(),
        ))
    }

    /// Every pool of every set.
    pub fn pools(&self) -> impl Iterator<Item = &Pool> {
        self.0.iter().flat_map(|s| &s.0)
    }

    /// The pool `ip` may be handed out from, if any.
    pub fn pool_of(&self, ip: IpAddr) -> Option<&Pool> {
        self.pools().find(|p| p.contains(ip))
    }

    /// Total number of addresses the pools can hand out (saturating).
    pub fn size(&self) -> u64 {
        self.0.iter().fold(0u64, |n, s| n.saturating_add(s.size()))
    }
}

impl Pools {
    /// Whether this set hands out IPv4 (else IPv6) addresses.
    pub fn is_ipv4(&self) -> bool {
        self.0.first().is_some_and(|p| p.subnet.addr().is_ipv4())
    }

    /// The pool `ip` may be handed out from, if any.
    pub fn pool_of(&self, ip: IpAddr) -> Option<&Pool> {
        self.0.iter().find(|p| p.contains(ip))
    }

    /// Total number of addresses the pools can hand out (ranges of one
    /// request may overlap; then this over-counts, which only matters for
    /// STATUS, computed from the node pools that never overlap).
    pub fn size(&self) -> u64 {
        self.0.iter().fold(0u64, |n, p| n.saturating_add(p.size()))
    }

    /// Host-local style choice: the first free address after `cursor` (the
    /// last one allocated), walking the pools in order and wrapping around
    /// once, so a released address is not handed out again at once.
    /// `is_taken` reports whether an address is allocated; its errors abort.
    pub fn pick<E>(
        &self,
        cursor: Option<IpAddr>,
        mut is_taken: impl FnMut(IpAddr) -> Result<bool, E>,
    ) -> Result<Option<(usize, IpAddr)>, E> {
        if self.0.is_empty() {
            return Ok(None);
        }
        // Where to start: just after the cursor, in the pool holding it.
        let (start_pool, start_addr) = match cursor
            .and_then(|c| self.0.iter().position(|p| p.spans(c)).map(|i| (i, num(c))))
        {
            Some((i, c)) => (i, Some(c)),
            None => (0, None),
        };
        // Visit pool start_pool from after the cursor, the other pools in
        // order, then pool start_pool from its start up to the cursor.
        let n = self.0.len();
        for step in 0..=n {
            let idx = (start_pool + step) % n;
            let pool = &self.0[idx];
            let (lo, hi) = (num(pool.first), num(pool.last));
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
                let ip = addr_of(&pool.subnet, v);
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

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }
    fn sets(req: &IpamRequest, cidrs: &[&str], gws: &[&str]) -> Result<PoolSets, IpamError> {
        let cidrs: Vec<IpNet> = cidrs.iter().map(|c| net(c)).collect();
        let gws: Vec<IpAddr> = gws.iter().map(|g| ip(g)).collect();
        PoolSets::for_request(req, &cidrs, &gws)
    }
    /// The one range set of an IPv4 node.
    fn node_pools(cidrs: &[&str], gw: &str) -> Pools {
        let mut s = sets(&IpamRequest::default(), cidrs, &[gw]).unwrap();
        assert_eq!(s.0.len(), 1);
        s.0.remove(0)
    }
    fn for_request(req: &IpamRequest, cidrs: &[IpNet], gw: IpAddr) -> Result<Pools, IpamError> {
        PoolSets::for_request(req, cidrs, &[gw]).map(|mut s| s.0.remove(0))
    }
    fn range(subnet: &str, start: Option<&str>, end: Option<&str>) -> RangeSpec {
        RangeSpec {
            subnet: net(subnet),
            range_start: start.map(ip),
            range_end: end.map(ip),
            gateway: None,
        }
    }
    /// Allocate everything, in order, against a set.
    fn drain(pools: &Pools, taken: &mut BTreeSet<IpAddr>) -> Vec<IpAddr> {
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
        let pools = for_request(&req, &cidrs, ip("10.88.0.1")).unwrap();
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
        let pools = for_request(&req, &cidrs, ip("10.88.0.1")).unwrap();
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
            (range("fd00::/64", None, None), "family"),
        ];
        for (r, what) in bad {
            let req = IpamRequest {
                ranges: vec![r],
                ..Default::default()
            };
            let err = for_request(&req, &cidrs, gw).unwrap_err();
            let ok = match what {
                "outside" | "family" => matches!(err, IpamError::OutsidePodCidrs { .. }),
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
        let mut taken: BTreeSet<IpAddr> = BTreeSet::new();
        let pick = |taken: &BTreeSet<IpAddr>, cursor| {
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
    fn ipv6_pools_skip_the_anycast_and_the_gateway() {
        let s = sets(
            &IpamRequest::default(),
            &["10.88.0.0/30", "fd00:10:88::/64"],
            &["10.88.0.1", "fd00:10:88::1"],
        )
        .unwrap();
        assert_eq!(s.0.len(), 2, "one range set per family");
        assert!(s.0[0].is_ipv4() && !s.0[1].is_ipv4());
        let v6 = &s.0[1];
        assert_eq!(v6.0[0].gateway, ip("fd00:10:88::1"));
        assert!(
            !v6.0[0].contains(ip("fd00:10:88::")),
            "subnet-router anycast"
        );
        assert!(!v6.0[0].contains(ip("fd00:10:88::1")), "gateway");
        assert!(
            v6.0[0].contains(ip("fd00:10:88::ffff:ffff:ffff:ffff")),
            "no broadcast in IPv6"
        );
        assert!(!v6.0[0].contains(ip("10.88.0.2")), "other family");
        let mut taken = BTreeSet::new();
        let first = |taken: &BTreeSet<IpAddr>, cursor| {
            v6.pick::<Infallible>(cursor, |a| Ok(taken.contains(&a)))
                .unwrap()
                .map(|(_, a)| a)
        };
        assert_eq!(first(&taken, None), Some(ip("fd00:10:88::2")));
        taken.insert(ip("fd00:10:88::2"));
        assert_eq!(
            first(&taken, Some(ip("fd00:10:88::2"))),
            Some(ip("fd00:10:88::3"))
        );
        // A cursor of the other family starts from the beginning.
        assert_eq!(
            first(&taken, Some(ip("10.88.0.2"))),
            Some(ip("fd00:10:88::3"))
        );
        assert_eq!(v6.size(), u64::MAX - 1, "2^64 - 1 hosts less the gateway");
        assert_eq!(s.0[0].size(), 1);
        assert_eq!(s.size(), u64::MAX, "saturating");
        assert_eq!(first_host(net("fd00::/64")), ip("fd00::1"));
        assert_eq!(max_pool_prefix(&net("fd00::/64")), 126);
    }

    #[test]
    fn ipv6_ranges_and_their_errors() {
        let cidrs = ["10.88.0.0/16", "fd00:10:88::/64"];
        let gws = ["10.88.0.1", "fd00:10:88::1"];
        let req = |ranges: Vec<RangeSpec>| IpamRequest {
            ranges,
            ..Default::default()
        };
        let v6 = |start: Option<&str>, end: Option<&str>| RangeSpec {
            subnet: net("fd00:10:88::/112"),
            range_start: start.map(ip),
            range_end: end.map(ip),
            gateway: None,
        };
        // Dual stack: one set per family, IPv4 first whatever the order.
        let s = sets(
            &req(vec![
                v6(Some("fd00:10:88::10"), None),
                range("10.88.1.0/24", None, None),
            ]),
            &cidrs,
            &gws,
        )
        .unwrap();
        assert_eq!(s.0.len(), 2);
        assert!(s.0[0].is_ipv4());
        assert_eq!(s.0[1].0[0].first, ip("fd00:10:88::10"));
        assert_eq!(s.0[1].0[0].last, ip("fd00:10:88::ffff"));
        assert_eq!(
            s.0[1].0[0].gateway,
            ip("fd00:10:88::1"),
            "the node gateway is inside"
        );
        // IPv6 only.
        let s = sets(&req(vec![v6(None, None)]), &cidrs, &gws).unwrap();
        assert_eq!(s.0.len(), 1);
        assert!(!s.0[0].is_ipv4());
        // Refused: outside the node's IPv6 CIDR, a node without IPv6, a
        // start of the other family, too small.
        let outside = RangeSpec {
            subnet: net("fd00:99::/64"),
            ..v6(None, None)
        };
        assert!(matches!(
            sets(&req(vec![outside]), &cidrs, &gws),
            Err(IpamError::OutsidePodCidrs { .. })
        ));
        assert!(matches!(
            sets(&req(vec![v6(None, None)]), &cidrs[..1], &gws[..1]),
            Err(IpamError::OutsidePodCidrs { .. })
        ));
        assert!(matches!(
            sets(&req(vec![v6(Some("10.88.0.5"), None)]), &cidrs, &gws),
            Err(IpamError::OutsideSubnet { .. })
        ));
        let tiny = RangeSpec {
            subnet: net("fd00:10:88::/127"),
            ..v6(None, None)
        };
        assert!(matches!(
            sets(&req(vec![tiny]), &cidrs, &gws),
            Err(IpamError::TooSmall { max: 126, .. })
        ));
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
