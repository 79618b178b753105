//! Service ports as the pipeline looks them up: by (ClusterIP, port,
//! protocol), each with its backends and a Maglev lookup table
//! (Eisenbud et al., NSDI 2016) built from them with the cluster-wide seed.
//!
//! Maglev gives every node the same choice for a flow (the table depends
//! only on the backend set and the seed, and the hash of the flow only on
//! the flow), and a change of the backend set moves few flows: each
//! backend keeps most of its slots. Established flows keep their backend
//! anyway (the connection tracking remembers it) until it is removed.
//!
//! The hash is fixed (splitmix64 steps over the bytes): every node, build
//! and architecture computes the same table.

use std::net::IpAddr;

use ferry_api::table::{Backend, ServicePort};
use rustc_hash::FxHashMap;

use super::conntrack::Endpoint;

/// Table sizes: primes; a service gets the smallest at least 100 times its
/// backend count (Maglev's rule for an even spread), the last one beyond.
const TABLE_SIZES: [usize; 9] = [251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521];

/// One service port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceEntry {
    /// The hash of its id (what conntrack entries name it by).
    pub id: u64,
    pub backends: Vec<Endpoint>,
    /// Maglev: slot -> index into `backends`.
    table: Vec<u16>,
    /// Session affinity timeout; `None`: none.
    pub affinity_ns: Option<u64>,
    pub seed: u64,
}

/// The address as conntrack keys it: IPv6, IPv4 mapped.
pub fn addr_key(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(a.to_ipv6_mapped()),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// One step of splitmix64.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A stable 64-bit hash of `parts` with `seed`.
pub fn stable_hash(seed: u64, parts: &[u64]) -> u64 {
    parts.iter().fold(mix(seed), |h, p| mix(h ^ *p))
}

fn split(a: u128) -> [u64; 2] {
    [(a >> 64) as u64, a as u64]
}

/// The Maglev table of `backends` (at most `u16::MAX`) with `seed`.
fn maglev(backends: &[Endpoint], seed: u64) -> Vec<u16> {
    let n = backends.len();
    if n == 0 {
        return Vec::new();
    }
    let m = TABLE_SIZES
        .iter()
        .copied()
        .find(|m| *m >= n.saturating_mul(100))
        .unwrap_or(TABLE_SIZES[TABLE_SIZES.len() - 1]);
    let perms: Vec<(usize, usize)> = backends
        .iter()
        .map(|b| {
            let [hi, lo] = split(b.ip);
            let parts = [hi, lo, u64::from(b.port)];
            let offset = stable_hash(seed, &parts) as usize % m;
            let skip = stable_hash(seed ^ 0x5bd1_e995, &parts) as usize % (m - 1) + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0usize; n];
    let mut table = vec![u16::MAX; m];
    let mut filled = 0;
    // Each round every backend takes its next preferred free slot; m is
    // prime and skip < m, so each permutation visits every slot.
    while filled < m {
        for (i, (offset, skip)) in perms.iter().enumerate() {
            let mut c = (offset + next[i] * skip) % m;
            while table[c] != u16::MAX {
                next[i] += 1;
                c = (offset + next[i] * skip) % m;
            }
            table[c] = i as u16;
            next[i] += 1;
            filled += 1;
            if filled == m {
                break;
            }
        }
    }
    table
}

impl ServiceEntry {
    pub fn of(sp: &ServicePort) -> ServiceEntry {
        let mut backends: Vec<Endpoint> = sp
            .backends
            .iter()
            .map(|b: &Backend| Endpoint {
                ip: addr_key(b.ip),
                port: b.port,
            })
            .collect();
        // The choice depends on the set, not on the order it came in.
        backends.sort_by_key(|b| (b.ip, b.port));
        backends.dedup();
        backends.truncate(usize::from(u16::MAX));
        let table = maglev(&backends, sp.seed);
        ServiceEntry {
            id: stable_hash(0, &[id_hash(&sp.id)]),
            backends,
            table,
            affinity_ns: sp
                .affinity_timeout_s
                .map(|s| u64::from(s).saturating_mul(1_000_000_000)),
            seed: sp.seed,
        }
    }

    /// The backend for a flow from `src:sport` (or, with affinity, for
    /// the client `src`); `None` without backends.
    pub fn pick(&self, src: u128, sport: u16, proto: u8) -> Option<Endpoint> {
        if self.table.is_empty() {
            return None;
        }
        let [hi, lo] = split(src);
        let h = if self.affinity_ns.is_some() {
            stable_hash(self.seed, &[hi, lo])
        } else {
            stable_hash(self.seed, &[hi, lo, u64::from(sport), u64::from(proto)])
        };
        let slot = self.table[(h % self.table.len() as u64) as usize];
        self.backends.get(usize::from(slot)).copied()
    }

    pub fn has_backend(&self, b: &Endpoint) -> bool {
        self.backends
            .binary_search_by_key(&(b.ip, b.port), |x| (x.ip, x.port))
            .is_ok()
    }
}

fn id_hash(id: &str) -> u64 {
    // FNV-1a: stable across builds.
    id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The service ports by (ClusterIP, port, protocol).
#[derive(Debug, Default)]
pub struct ServiceTable {
    by_vip: FxHashMap<(u128, u16, u8), ServiceEntry>,
    by_id: FxHashMap<u64, (u128, u16, u8)>,
    /// Every ClusterIP (the node kernel asks for them on the host port).
    vips: rustc_hash::FxHashSet<u128>,
    /// (node port, protocol) -> the service port it reaches.
    by_node_port: FxHashMap<(u16, u8), NodePort>,
}

/// What a node port reaches.
#[derive(Debug)]
enum NodePort {
    /// `externalTrafficPolicy: Cluster`: the service port's own backends
    /// (its key in `by_vip`), the client's source translated.
    Cluster((u128, u16, u8)),
    /// `Local`: this node's backends only (their own Maglev table, the
    /// service port's id), the client's source kept.
    Local(ServiceEntry),
}

impl ServiceTable {
    pub fn build(services: &[ServicePort]) -> ServiceTable {
        let mut t = ServiceTable::default();
        for sp in services {
            let key = (addr_key(sp.vip), sp.port, sp.protocol.number());
            let e = ServiceEntry::of(sp);
            t.by_id.insert(e.id, key);
            t.by_vip.entry(key).or_insert(e);
            t.vips.insert(key.0);
            if let Some(n) = sp.node_port.filter(|_| sp.vip.is_ipv4()) {
                let target = match &sp.node_local {
                    None => NodePort::Cluster(key),
                    Some(local) => NodePort::Local(ServiceEntry::of(&ServicePort {
                        backends: local.clone(),
                        ..sp.clone()
                    })),
                };
                t.by_node_port.entry((n, key.2)).or_insert(target);
            }
        }
        t
    }

    pub fn is_empty(&self) -> bool {
        self.by_vip.is_empty()
    }

    pub fn len(&self) -> usize {
        self.by_vip.len()
    }

    /// The service port at `vip:port` over `proto`.
    #[inline]
    pub fn lookup(&self, vip: u128, port: u16, proto: u8) -> Option<&ServiceEntry> {
        self.by_vip.get(&(vip, port, proto))
    }

    /// The service port reached at `port` over `proto` on the node's
    /// uplink address (NodePort).
    #[inline]
    ///
    /// With whether the client's source is kept (`externalTrafficPolicy:
    /// Local`: the entry holds this node's backends only).
    pub fn by_node_port(&self, port: u16, proto: u8) -> Option<(&ServiceEntry, bool)> {
        match self.by_node_port.get(&(port, proto))? {
            NodePort::Cluster(key) => Some((self.by_vip.get(key)?, false)),
            NodePort::Local(e) => Some((e, true)),
        }
    }

    /// Whether `ip` (as conntrack keys it) is a ClusterIP.
    #[inline]
    pub fn is_vip(&self, ip: u128) -> bool {
        self.vips.contains(&ip)
    }

    /// The service port whose id hashes to `id`.
    pub fn by_id(&self, id: u64) -> Option<&ServiceEntry> {
        self.by_vip.get(self.by_id.get(&id)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_api::table::L4Proto;

    fn service(backends: &[(u8, u16)]) -> ServicePort {
        ServicePort {
            id: "default/web:80/TCP".into(),
            vip: "10.96.0.10".parse().unwrap(),
            port: 80,
            protocol: L4Proto::Tcp,
            backends: backends
                .iter()
                .map(|(last, port)| Backend {
                    ip: IpAddr::from([10, 88, 0, *last]),
                    port: *port,
                })
                .collect(),
            affinity_timeout_s: None,
            seed: 42,
            node_port: None,
            node_local: None,
        }
    }

    fn choices(e: &ServiceEntry) -> Vec<Endpoint> {
        (0..5000u16)
            .map(|p| {
                e.pick(addr_key("10.88.1.7".parse().unwrap()), 10000 + p, 6)
                    .unwrap()
            })
            .collect()
    }

    #[test]
    fn maglev_fills_the_table_evenly_and_independently_of_order() {
        let sp = service(&[(2, 8080), (3, 8080), (4, 8080), (5, 8080)]);
        let e = ServiceEntry::of(&sp);
        assert_eq!(e.table.len(), 509);
        let mut count = [0usize; 4];
        for s in &e.table {
            count[usize::from(*s)] += 1;
        }
        // Maglev's spread: every backend within a few slots of m / n.
        for c in count {
            assert!((120..=135).contains(&c), "{count:?}");
        }
        let mut reversed = sp.clone();
        reversed.backends.reverse();
        assert_eq!(ServiceEntry::of(&reversed), e);
    }

    #[test]
    fn removing_a_backend_moves_only_its_flows_and_few_others() {
        let all = ServiceEntry::of(&service(&[(2, 80), (3, 80), (4, 80), (5, 80), (6, 80)]));
        let less = ServiceEntry::of(&service(&[(2, 80), (3, 80), (4, 80), (5, 80)]));
        let (a, b) = (choices(&all), choices(&less));
        let gone = Endpoint {
            ip: addr_key("10.88.0.6".parse().unwrap()),
            port: 80,
        };
        let moved = a
            .iter()
            .zip(&b)
            .filter(|(x, y)| x != y && **x != gone)
            .count();
        // Only the removed backend's flows must move; Maglev moves a few
        // percent more at most.
        assert!(moved < a.len() / 20, "{moved} of {} moved", a.len());
        assert!(b.iter().all(|x| *x != gone));
    }

    #[test]
    fn affinity_picks_by_client_and_no_backend_picks_nothing() {
        let mut sp = service(&[(2, 80), (3, 80), (4, 80)]);
        sp.affinity_timeout_s = Some(10800);
        let e = ServiceEntry::of(&sp);
        let c = choices(&e);
        assert!(c.iter().all(|x| *x == c[0]), "one backend per client");
        assert!(ServiceEntry::of(&service(&[])).pick(1, 2, 6).is_none());
        let t = ServiceTable::build(&[sp.clone()]);
        let vip = addr_key(sp.vip);
        let found = t.lookup(vip, 80, 6).unwrap();
        assert_eq!(t.by_id(found.id), Some(found));
        assert!(t.lookup(vip, 80, 17).is_none());
        assert!(found.has_backend(&c[0]));
    }
}
