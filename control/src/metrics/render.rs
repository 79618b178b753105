//! The exposition text of one scrape: a pure function of a [`Snapshot`].

use std::fmt::Write as _;

use super::Snapshot;
use crate::dataplane_client::UPLINK_ENDPOINT;

/// A label value escaped as the exposition format wants (`\\`, `\"`, `\n`).
fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Writes one metric family: the HELP and TYPE lines, then its samples
/// (a family's samples must be contiguous).
struct Family<'a> {
    out: &'a mut String,
    name: &'static str,
}

impl<'a> Family<'a> {
    fn new(out: &'a mut String, name: &'static str, kind: &str, help: &str) -> Self {
        // Writing to a String cannot fail.
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        Family { out, name }
    }

    fn sample(&mut self, labels: &[(&str, &str)], value: u64) {
        self.out.push_str(self.name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }
}

/// Every reason the dataplane counts, at 0 when not seen yet (so a
/// series exists before its first drop and `rate()` sees that drop), plus
/// any reason in `drops` the list does not name.
fn with_zeros<'a>(
    drops: &'a std::collections::BTreeMap<String, u64>,
    reasons: &'a [String],
) -> impl Iterator<Item = (&'a str, u64)> + 'a {
    let known = reasons
        .iter()
        .map(|r| (r.as_str(), drops.get(r).copied().unwrap_or(0)));
    let extra = drops
        .iter()
        .filter(|(r, _)| !reasons.contains(r))
        .map(|(r, n)| (r.as_str(), *n));
    known.chain(extra)
}

/// The exposition text of one scrape.
pub fn render(s: &Snapshot) -> String {
    let mut out = String::new();
    let stats = s.dataplane.as_ref().ok();

    let mut f = Family::new(
        &mut out,
        "ferry_build_info",
        "gauge",
        "ferryd's version (always 1).",
    );
    f.sample(&[("version", env!("CARGO_PKG_VERSION"))], 1);
    let mut f = Family::new(
        &mut out,
        "ferry_pod_requests_total",
        "counter",
        "Pod-API requests (CNI invocations) ferryd answered, by command and CNI error code (0: success).",
    );
    for (command, code, n) in &s.requests {
        f.sample(&[("command", command), ("code", &code.to_string())], *n);
    }
    let mut f = Family::new(
        &mut out,
        "ferry_dataplane_up",
        "gauge",
        "1 if this scrape read the dataplane's counters over the table API, else 0.",
    );
    f.sample(&[], u64::from(stats.is_some()));
    let mut f = Family::new(
        &mut out,
        "ferry_dataplane_connected",
        "gauge",
        "1 if ferryd's table-API client is connected to ferry-dataplane, else 0.",
    );
    f.sample(&[], u64::from(s.dataplane_connected));

    if let Some(n) = s.endpoints {
        let mut f = Family::new(
            &mut out,
            "ferry_endpoints",
            "gauge",
            "Pod endpoints ready in ferryd's store.",
        );
        f.sample(&[], n);
    }
    let mut f = Family::new(
        &mut out,
        "ferry_endpoints_stale",
        "gauge",
        "Ready endpoints whose pod is gone (namespace or link missing): kept, with their address, until DEL or GC, and not in the dataplane.",
    );
    f.sample(&[], s.stale_endpoints);
    let mut f = Family::new(
        &mut out,
        "ferry_host_port_missing",
        "gauge",
        "1 if the dataplane has no host port (the node cannot reach its pods), else 0.",
    );
    f.sample(&[], u64::from(s.host_port_missing));
    if !s.pools.is_empty() {
        let mut f = Family::new(
            &mut out,
            "ferry_ipam_addresses_free",
            "gauge",
            "Addresses a node pool can still hand out.",
        );
        for p in &s.pools {
            f.sample(&[("pool", &p.pool)], p.size.saturating_sub(p.allocated));
        }
        let mut f = Family::new(
            &mut out,
            "ferry_ipam_addresses_allocated",
            "gauge",
            "Addresses allocated from a node pool.",
        );
        for p in &s.pools {
            f.sample(&[("pool", &p.pool)], p.allocated);
        }
        let mut f = Family::new(
            &mut out,
            "ferry_ipam_addresses_size",
            "gauge",
            "Addresses a node pool can hand out in all (gateway excluded).",
        );
        for p in &s.pools {
            f.sample(&[("pool", &p.pool)], p.size);
        }
    }

    if let Some(ct) = stats.and_then(|st| st.conntrack) {
        for (name, kind, help, value) in [
            ("ferry_conntrack_capacity", "gauge", "Entries the dataplane's connection table (service flows and flows network policy allowed) holds at most (two per flow).", ct.capacity),
            ("ferry_conntrack_entries", "gauge", "Entries in the connection table (live, or expired and not yet swept).", ct.entries),
            ("ferry_conntrack_inserts_total", "counter", "Entries put in the connection table.", ct.inserts),
            ("ferry_conntrack_insert_failed_total", "counter", "New service or policy-allowed flows refused because the connection table was full of live flows (dropped ct_full).", ct.insert_failed),
            ("ferry_conntrack_expired_total", "counter", "Connection-table entries swept after their timeout.", ct.expired),
        ] {
            Family::new(&mut out, name, kind, help).sample(&[], value);
        }
    }

    if let Some(u) = &s.uplink {
        // The mode is the dataplane's port's; "missing" when it has none,
        // "unknown" when its counters could not be read.
        let mode = match stats {
            None => "unknown",
            Some(st) => st
                .ports
                .iter()
                .find(|p| p.endpoint == UPLINK_ENDPOINT)
                .map_or("missing", |p| {
                    if p.mode.is_empty() {
                        "unknown"
                    } else {
                        p.mode.as_str()
                    }
                }),
        };
        let mut f = Family::new(
            &mut out,
            "ferry_uplink_info",
            "gauge",
            "The configured uplink (always 1): its interface, the overlay (vxlan|direct) and how the dataplane drives it (native-zerocopy|native-copy|generic-copy; missing: no port on it).",
        );
        f.sample(
            &[
                ("ifname", &u.ifname),
                ("overlay", &u.overlay),
                ("mode", mode),
            ],
            1,
        );
        let mut f = Family::new(
            &mut out,
            "ferry_uplink_missing",
            "gauge",
            "1 if an uplink is configured and the dataplane reported it could not open it (pods cannot reach other nodes), else 0.",
        );
        f.sample(&[], u64::from(u.missing.is_some()));
    }
    if !s.peers.is_empty() {
        let mut f = Family::new(
            &mut out,
            "ferry_peer_resolved",
            "gauge",
            "1 if the dataplane knows the MAC a configured peer node is reached at on the uplink (next_hop: the peer or its gateway; \"\" while not listed), else 0: frames to it are dropped.",
        );
        for p in &s.peers {
            let node = p.node.to_string();
            let hop = p.next_hop.map(|h| h.to_string()).unwrap_or_default();
            f.sample(
                &[("node", &node), ("next_hop", &hop)],
                u64::from(p.resolved),
            );
        }
    }

    if let Some(c) = &s.cluster {
        let mut f = Family::new(
            &mut out,
            "ferry_cluster_datastore_reachable",
            "gauge",
            "1 if the cluster's datastore answered ferryd's last call, else 0 (forwarding goes on with the peers last known; new nodes are not learnt).",
        );
        f.sample(&[("datastore", &c.datastore)], u64::from(c.reachable));
        let mut f = Family::new(
            &mut out,
            "ferry_cluster_datastore_state_since_seconds",
            "gauge",
            "Unix time since when ferry_cluster_datastore_reachable has had its value.",
        );
        f.sample(&[], c.since);
        let mut f = Family::new(
            &mut out,
            "ferry_cluster_block_info",
            "gauge",
            "The pod CIDR block this node holds in the cluster (always 1; absent while it holds none).",
        );
        if let Some(b) = &c.block {
            f.sample(&[("block", b)], 1);
        }
        let mut f = Family::new(
            &mut out,
            "ferry_cluster_peers",
            "gauge",
            "Other nodes in the datastore: routed (their block is in the dataplane's routes) or refused (their record breaks the cluster's rules; see ferryctl nodes).",
        );
        f.sample(&[("state", "routed")], c.peers_routed);
        f.sample(&[("state", "refused")], c.peers_refused);
    }

    let Some(stats) = stats else {
        return out;
    };
    let mut f = Family::new(
        &mut out,
        "ferry_table_generation",
        "gauge",
        "Generation of the dataplane's forwarding tables (bumped by every applied update).",
    );
    f.sample(&[], stats.generation);

    type PortField = fn(&ferry_api::table::PortStats) -> u64;
    let port_families: [(&'static str, &str, PortField); 4] = [
        (
            "ferry_port_rx_frames_total",
            "Frames received on a dataplane port.",
            |p| p.rx_frames,
        ),
        (
            "ferry_port_rx_bytes_total",
            "Bytes received on a dataplane port.",
            |p| p.rx_bytes,
        ),
        (
            "ferry_port_tx_frames_total",
            "Frames transmitted on a dataplane port.",
            |p| p.tx_frames,
        ),
        (
            "ferry_port_tx_bytes_total",
            "Bytes transmitted on a dataplane port.",
            |p| p.tx_bytes,
        ),
    ];
    for (name, help, get) in port_families {
        let mut f = Family::new(&mut out, name, "counter", help);
        for p in &stats.ports {
            f.sample(&[("port", &p.name), ("endpoint", &p.endpoint)], get(p));
        }
    }
    let mut f = Family::new(
        &mut out,
        "ferry_port_drops_total",
        "counter",
        "Frames received on a dataplane port and dropped, by drop reason.",
    );
    for p in &stats.ports {
        for (reason, n) in with_zeros(&p.drops, &stats.drop_reasons) {
            f.sample(
                &[
                    ("port", &p.name),
                    ("endpoint", &p.endpoint),
                    ("reason", reason),
                ],
                n,
            );
        }
    }
    let mut f = Family::new(
        &mut out,
        "ferry_port_xsk_total",
        "counter",
        "The kernel's counters of a port's AF_XDP sockets (XDP_STATISTICS), summed over workers, read by each worker about once a second; rx_dropped, rx_invalid_descs, rx_ring_full and tx_invalid_descs count lost frames, the others ring misses. Absent for tap ports.",
    );
    for p in &stats.ports {
        for (counter, n) in &p.kernel {
            f.sample(
                &[
                    ("port", &p.name),
                    ("endpoint", &p.endpoint),
                    ("counter", counter),
                ],
                *n,
            );
        }
    }
    let mut f = Family::new(
        &mut out,
        "ferry_port_attached",
        "gauge",
        "1 if the dataplane has the port open (veth: XDP program attached, AF_XDP sockets bound; tap: queues attached); 0 once a worker found its device deleted under it.",
    );
    for p in &stats.ports {
        f.sample(
            &[("port", &p.name), ("endpoint", &p.endpoint)],
            u64::from(p.attached),
        );
    }

    type WorkerField = fn(&ferry_api::table::WorkerStats) -> u64;
    let worker_families: [(&'static str, &str, WorkerField); 4] = [
        (
            "ferry_worker_busy_polls_total",
            "Worker loop passes that moved at least one frame.",
            |w| w.busy_polls,
        ),
        (
            "ferry_worker_idle_polls_total",
            "Worker loop passes that found nothing to do and slept in poll(2).",
            |w| w.idle_polls,
        ),
        (
            "ferry_worker_rx_frames_total",
            "Frames a worker received, all ports.",
            |w| w.rx_frames,
        ),
        (
            "ferry_worker_tx_frames_total",
            "Frames a worker transmitted, all ports.",
            |w| w.tx_frames,
        ),
    ];
    for (name, help, get) in worker_families {
        let mut f = Family::new(&mut out, name, "counter", help);
        for w in &stats.workers {
            f.sample(&[("worker", &w.worker.to_string())], get(w));
        }
    }
    type UmemField = fn(&ferry_api::table::UmemStats) -> u64;
    let umem_families: [(&'static str, &str, UmemField); 3] = [
        (
            "ferry_worker_umem_frames",
            "Frames (2 KiB each) of the worker's UMEM, shared by its pod and host-port sockets.",
            |u| u.frames,
        ),
        (
            "ferry_worker_umem_free_frames",
            "Frames of the worker's UMEM on its free list.",
            |u| u.free,
        ),
        (
            "ferry_worker_umem_ring_frames",
            "Frames of the worker's UMEM held by the kernel in its sockets' rings.",
            |u| u.in_rings,
        ),
    ];
    for (name, help, get) in umem_families {
        let mut f = Family::new(&mut out, name, "gauge", help);
        for w in &stats.workers {
            if let Some(u) = &w.umem {
                f.sample(&[("worker", &w.worker.to_string())], get(u));
            }
        }
    }
    let mut f = Family::new(
        &mut out,
        "ferry_worker_drops_total",
        "counter",
        "Frames a worker dropped, by drop reason.",
    );
    for w in &stats.workers {
        let worker = w.worker.to_string();
        for (reason, n) in with_zeros(&w.drops, &stats.drop_reasons) {
            f.sample(&[("worker", &worker), ("reason", reason)], n);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use ferry_api::table::{Neighbour, PortStats, Stats, WorkerStats};

    use super::super::{peer_states, PoolUsage, UplinkInfo};
    use super::*;

    fn snapshot() -> Snapshot {
        Snapshot {
            dataplane: Ok(Stats {
                generation: 7,
                ports: vec![
                    PortStats {
                        name: "ferry0dp".into(),
                        endpoint: "host".into(),
                        attached: true,
                        mode: "native-copy".into(),
                        rx_frames: 10,
                        rx_bytes: 1000,
                        tx_frames: 4,
                        tx_bytes: 400,
                        drops: BTreeMap::from([("no_endpoint".to_string(), 2)]),
                        kernel: BTreeMap::from([
                            ("rx_ring_full".to_string(), 3),
                            ("rx_dropped".to_string(), 0),
                        ]),
                    },
                    PortStats {
                        name: "fy0123456789a".into(),
                        endpoint: "c\"1/eth0".into(),
                        attached: false,
                        ..Default::default()
                    },
                ],
                workers: vec![WorkerStats {
                    worker: 0,
                    cpu: Some(1),
                    busy_polls: 5,
                    idle_polls: 9,
                    rx_frames: 10,
                    tx_frames: 4,
                    drops: BTreeMap::from([("no_endpoint".to_string(), 2)]),
                    umem: Some(ferry_api::table::UmemStats {
                        frames: 16384,
                        free: 16000,
                        in_rings: 384,
                        ..Default::default()
                    }),
                }],
                drop_reasons: vec!["no_endpoint".into(), "runt".into()],
                conntrack: Some(ferry_api::table::ConntrackStats {
                    capacity: 262144,
                    entries: 4,
                    inserts: 9,
                    insert_failed: 1,
                    expired: 5,
                }),
            }),
            dataplane_connected: true,
            endpoints: Some(1),
            stale_endpoints: 1,
            host_port_missing: false,
            pools: vec![PoolUsage {
                pool: "10.88.0.0/24".into(),
                size: 253,
                allocated: 3,
            }],
            requests: vec![("ADD".into(), 0, 3), ("ADD".into(), 11, 1)],
            uplink: None,
            peers: vec![],
            cluster: None,
        }
    }

    fn two_node() -> Snapshot {
        let mut s = snapshot();
        if let Ok(st) = s.dataplane.as_mut() {
            st.ports.push(PortStats {
                name: "up0".into(),
                endpoint: "uplink".into(),
                attached: true,
                mode: "native-copy".into(),
                ..Default::default()
            });
        }
        s.uplink = Some(UplinkInfo {
            ifname: "up0".into(),
            overlay: "vxlan".into(),
            missing: None,
        });
        let neighbours = [Neighbour {
            node: "192.168.70.2".parse().unwrap(),
            next_hop: "192.168.70.2".parse().unwrap(),
            mac: Some(ferry_api::MacAddr([2, 0, 0, 0, 0, 2])),
            state: "reachable".into(),
        }];
        s.peers = peer_states(
            &[
                "192.168.70.2".parse().unwrap(),
                "192.168.71.3".parse().unwrap(),
            ],
            &neighbours,
        );
        s
    }

    #[test]
    fn uplink_and_peers_are_reported() {
        let text = render(&two_node());
        for line in [
            "ferry_uplink_info{ifname=\"up0\",overlay=\"vxlan\",mode=\"native-copy\"} 1",
            "ferry_uplink_missing 0",
            "ferry_peer_resolved{node=\"192.168.70.2\",next_hop=\"192.168.70.2\"} 1",
            "ferry_peer_resolved{node=\"192.168.71.3\",next_hop=\"\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?}:\n{text}");
        }
        // The uplink port the dataplane does not have.
        let mut s = two_node();
        if let Ok(st) = s.dataplane.as_mut() {
            st.ports.retain(|p| p.endpoint != "uplink");
        }
        s.uplink.as_mut().unwrap().missing = Some("uplink up0: no such device".into());
        let text = render(&s);
        assert!(text.contains("mode=\"missing\"} 1\n"), "{text}");
        assert!(text.contains("\nferry_uplink_missing 1\n"), "{text}");
        s.dataplane = Err("down".into());
        assert!(render(&s).contains("mode=\"unknown\"} 1\n"));
        // A single node has none of these families.
        let single = render(&snapshot());
        assert!(!single.contains("ferry_uplink"), "{single}");
        assert!(!single.contains("ferry_peer"), "{single}");
        assert!(!single.contains("ferry_cluster"), "{single}");
    }

    #[test]
    fn a_cluster_node_reports_its_datastore_block_and_peers() {
        let mut s = two_node();
        s.cluster = Some(super::super::ClusterInfo {
            datastore: "etcd http://10.99.0.1:2379".into(),
            reachable: false,
            since: 1_700_000_000,
            block: Some("10.244.3.0/24".into()),
            peers_routed: 2,
            peers_refused: 1,
        });
        let text = render(&s);
        for line in [
            "ferry_cluster_datastore_reachable{datastore=\"etcd http://10.99.0.1:2379\"} 0",
            "ferry_cluster_datastore_state_since_seconds 1700000000",
            "ferry_cluster_block_info{block=\"10.244.3.0/24\"} 1",
            "ferry_cluster_peers{state=\"routed\"} 2",
            "ferry_cluster_peers{state=\"refused\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?}:\n{text}");
        }
    }

    #[test]
    fn exposition_has_help_type_and_samples() {
        let text = render(&snapshot());
        for line in [
            "ferry_dataplane_up 1",
            "ferry_dataplane_connected 1",
            "# TYPE ferry_conntrack_insert_failed_total counter",
            "ferry_conntrack_insert_failed_total 1",
            "ferry_conntrack_entries 4",
            "ferry_pod_requests_total{command=\"ADD\",code=\"0\"} 3",
            "ferry_pod_requests_total{command=\"ADD\",code=\"11\"} 1",
            "ferry_endpoints 1",
            "ferry_endpoints_stale 1",
            "ferry_host_port_missing 0",
            "ferry_ipam_addresses_free{pool=\"10.88.0.0/24\"} 250",
            "ferry_ipam_addresses_allocated{pool=\"10.88.0.0/24\"} 3",
            "ferry_table_generation 7",
            "ferry_port_rx_frames_total{port=\"ferry0dp\",endpoint=\"host\"} 10",
            "ferry_port_tx_bytes_total{port=\"ferry0dp\",endpoint=\"host\"} 400",
            "ferry_port_drops_total{port=\"ferry0dp\",endpoint=\"host\",reason=\"no_endpoint\"} 2",
            "ferry_port_attached{port=\"fy0123456789a\",endpoint=\"c\\\"1/eth0\"} 0",
            "ferry_port_xsk_total{port=\"ferry0dp\",endpoint=\"host\",counter=\"rx_ring_full\"} 3",
            "ferry_port_xsk_total{port=\"ferry0dp\",endpoint=\"host\",counter=\"rx_dropped\"} 0",
            "ferry_worker_busy_polls_total{worker=\"0\"} 5",
            "ferry_worker_umem_free_frames{worker=\"0\"} 16000",
            "ferry_worker_idle_polls_total{worker=\"0\"} 9",
            "ferry_worker_drops_total{worker=\"0\",reason=\"no_endpoint\"} 2",
            // Reasons not seen yet are there, at zero.
            "ferry_port_drops_total{port=\"ferry0dp\",endpoint=\"host\",reason=\"runt\"} 0",
            "ferry_port_drops_total{port=\"fy0123456789a\",endpoint=\"c\\\"1/eth0\",reason=\"no_endpoint\"} 0",
            "ferry_worker_drops_total{worker=\"0\",reason=\"runt\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?}:\n{text}");
        }
        // Every sample belongs to the family announced just before it, and
        // every family has HELP and TYPE once.
        let mut current = "";
        let mut seen = std::collections::BTreeSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(["counter", "gauge"].contains(&kind), "{line}");
                assert!(seen.insert(name.to_string()), "family {name} twice");
                current = name;
                assert!(
                    text.contains(&format!("# HELP {name} ")),
                    "no HELP for {name}"
                );
                if kind == "counter" {
                    assert!(name.ends_with("_total"), "{name}");
                }
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                assert_eq!(name, current, "sample outside its family: {line}");
                let value = line.rsplit(' ').next().unwrap();
                assert!(value.parse::<u64>().is_ok(), "{line}");
            }
        }
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn reasons_outside_the_list_are_still_reported() {
        let drops = BTreeMap::from([("a".to_string(), 1), ("new".to_string(), 4)]);
        let reasons = vec!["a".to_string(), "b".to_string()];
        let got: Vec<_> = with_zeros(&drops, &reasons).collect();
        assert_eq!(got, vec![("a", 1), ("b", 0), ("new", 4)]);
        // An old dataplane sends no list: what it counted is all there is.
        let got: Vec<_> = with_zeros(&drops, &[]).collect();
        assert_eq!(got, vec![("a", 1), ("new", 4)]);
    }

    #[test]
    fn dataplane_down_still_reports_ferryd_side() {
        let mut s = snapshot();
        s.dataplane = Err("cannot reach ferry-dataplane".into());
        s.dataplane_connected = false;
        let text = render(&s);
        assert!(text.contains("\nferry_dataplane_up 0\n"), "{text}");
        assert!(text.contains("ferry_dataplane_connected 0"), "{text}");
        assert!(text.contains("ferry_endpoints 1"), "{text}");
        assert!(!text.contains("ferry_port_"), "{text}");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
    }
}
