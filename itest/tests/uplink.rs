//! Pod traffic between nodes over their uplinks: three nodes on one fabric
//! (`itest::cluster`), in VXLAN and in direct (host-gw) mode, veth and tap
//! pods on every node. Pods reach remote pods (ping, 32 MB transfers checked
//! by hash) and remote nodes, reach the outside masqueraded behind their
//! node, learn the path MTU the overlay leaves; the nodes' own traffic on
//! the uplink works with ferry running, stopped and killed, and pod traffic
//! resumes by itself after a dataplane restart.

use std::time::{Duration, Instant};

use itest::cluster::{Cluster, ClusterNode, ClusterOpts, Overlay, FABRIC, OUTSIDE_ADDR, UPLINK};
use itest::*;
use serde_json::Value;

const NODES: u32 = 3;
/// Pod numbers on every node.
const VETH: u32 = 1;
const TAP: u32 = 2;

/// Two tests running `body(prefix, overlay)`: one in VXLAN, one in
/// direct mode (each its own cluster, its tag prefix the test's name).
macro_rules! in_both_modes {
    ($vxlan:ident, $direct:ident, $body:ident) => {
        #[test]
        fn $vxlan() {
            $body("uv", Overlay::Vxlan);
        }

        #[test]
        fn $direct() {
            $body("ud", Overlay::Direct);
        }
    };
}

fn three_nodes(prefix: &str, overlay: Option<Overlay>) -> Cluster {
    let t = Instant::now();
    let c = Cluster::start(prefix, ClusterOpts::new(NODES, overlay));
    eprintln!("cluster {} up in {:?}", c.tag, t.elapsed());
    c
}

/// A veth pod and a tap pod on every node, in node order.
fn pods_everywhere(c: &Cluster) -> Vec<(Pod, Pod)> {
    c.nodes
        .iter()
        .map(|n| (n.add_pod(VETH), n.add_tap_pod(TAP)))
        .collect()
}

/// DEL what [`pods_everywhere`] made.
fn del_pods(c: &Cluster, pods: &[(Pod, Pod)]) {
    for (n, (veth, tap)) in c.nodes.iter().zip(pods) {
        n.del_pod(veth).assert_ok();
        n.del_pod(tap).assert_ok();
    }
}

/// `from` reaches `dst`: a first reply within 10 s (a neighbour may be
/// resolving), then 3 of 3.
fn reaches(from: &str, dst: &str) -> bool {
    wait_until(Duration::from_secs(10), || ns_ping(from, dst, 1)) && ns_ping(from, dst, 3)
}

fn assert_reaches(what: &str, from: &str, dst: &str) {
    assert!(
        reaches(from, dst),
        "{what}: {from} -> {dst} does not get through"
    );
}

/// The MTU of `ifname` in namespace `ns`.
fn link_mtu(ns: &str, ifname: &str) -> u32 {
    ns_run_ok(ns, &["cat", &format!("/sys/class/net/{ifname}/mtu")])
        .trim()
        .parse()
        .expect("mtu")
}

/// The path MTU ferryd gives pods by default: the fabric's 1500 less the
/// overlay.
fn default_pod_mtu(overlay: Overlay) -> u32 {
    match overlay {
        Overlay::Vxlan => 1450,
        Overlay::Direct => 1500,
    }
}

/// The MTU of the IPv4 default route in namespace `ns`, if it has one of
/// its own.
fn default_route_mtu(ns: &str) -> Option<u32> {
    let route = ns_run_ok(ns, &["ip", "-4", "route", "show", "default"]);
    let mut words = route.split_whitespace();
    words.find(|w| *w == "mtu")?;
    words.next()?.parse().ok()
}

/// A pod's link MTU and its default route's.
fn pod_mtus(pod: &Pod) -> (u32, Option<u32>) {
    (
        link_mtu(&pod.ns.name, "eth0"),
        default_route_mtu(&pod.ns.name),
    )
}

/// A network config for `node` with `attachment` and `mtu` set.
fn mtu_conf(node: &Node, attachment: &str, mtu: u32) -> String {
    let mut v: Value = serde_json::from_str(&node.conf("1.0.0")).unwrap();
    v["attachment"] = attachment.into();
    v["mtu"] = mtu.into();
    v.to_string()
}

/// The dataplane's port on the uplink, from `ferryctl --json stats`.
fn uplink_port(node: &Node) -> Option<Value> {
    let stats = node.stats();
    stats["ports"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == UPLINK || p["endpoint"] == "uplink")
        .cloned()
}

// ---------------------------------------------------------------------
// The harness itself, on what works without an uplink in ferry.

/// The fabric alone: nodes reach each other and the outside over br0 with
/// ferry running single-node on each (no uplink configuration), each node's
/// pods get their own CIDR, and nothing of the cluster shows in the root
/// namespace.
#[test]
fn the_fabric_carries_node_traffic_and_stays_out_of_the_root_namespace() {
    let c = three_nodes("uf", None);
    let (n1, n2, n3) = (c.node(1), c.node(2), c.node(3));

    // Uplinks: two queues each way, the address the test gave, no XDP.
    for n in &c.nodes {
        let link = ns_run_ok(n.ns_name(), &["ip", "-d", "link", "show", UPLINK]);
        for want in ["numtxqueues 2", "numrxqueues 2", "state UP"] {
            assert!(link.contains(want), "{}: no {want:?} in {link}", n.tag);
        }
        let addrs = ns_run_ok(n.ns_name(), &["ip", "-4", "addr", "show", UPLINK]);
        assert!(addrs.contains(&format!("{}/24", n.address)), "{addrs}");
    }
    let bridge_ports = ns_run_ok(
        &c.fabric.ns.name,
        &["ip", "-o", "link", "show", "master", "br0"],
    );
    assert_eq!(
        bridge_ports.lines().count(),
        NODES as usize + 1,
        "{bridge_ports}"
    );

    // Node <-> node: ARP, ping and 32 MB of TCP both ways.
    for (a, b) in [(n1, n2), (n2, n3), (n3, n1)] {
        assert!(neighbour_becomes_reachable(a, b), "{} -> {}", a.tag, b.tag);
    }
    transfer(n1.ns_name(), n2.ns_name(), &n2.address, 7301, 1);
    transfer(n2.ns_name(), n1.ns_name(), &n1.address, 7302, 2);

    // Node -> outside: the server sees the node's own address.
    for n in &c.nodes {
        assert_eq!(c.outside.ask_from(n.ns_name()), Ok(n.address.clone()));
    }

    // Single-node ferry on each: pods from the node's own CIDR reach their
    // gateway and a pod of the same node.
    for n in &c.nodes {
        let a = n.add_pod(VETH);
        let b = n.add_tap_pod(TAP);
        let prefix = format!("10.70.{}.", n.index);
        assert!(
            a.ip.starts_with(&prefix) && b.ip.starts_with(&prefix),
            "{} {}",
            a.ip,
            b.ip
        );
        assert_reaches(
            "veth pod -> gateway",
            &a.ns.name,
            &first_host(&n.opts.pod_cidr),
        );
        assert_reaches("veth pod -> tap pod", &a.ns.name, &b.ip);
        n.del_pod(&a).assert_ok();
        n.del_pod(&b).assert_ok();
    }

    // The root namespace has none of it.
    for (what, args) in [
        ("addresses", vec!["-o", "addr", "show"]),
        ("routes", vec!["route", "show", "table", "all"]),
    ] {
        let root = run_ok("ip", &args);
        for needle in [format!("{FABRIC}."), "10.70.".to_string()] {
            assert!(
                !root.contains(&needle),
                "root namespace {what} name {needle}: {root}"
            );
        }
    }
    let root_links = run_ok("ip", &["-o", "link", "show"]);
    assert!(
        !root_links
            .lines()
            .any(|l| l.contains(&format!(": {UPLINK}"))),
        "an uplink in the root namespace: {root_links}"
    );
}

/// Flush `a`'s neighbour entry for `b`, ping `b` from `a`'s namespace and
/// see the entry become REACHABLE (ARP answered both ways on the uplinks).
fn neighbour_becomes_reachable(a: &ClusterNode, b: &ClusterNode) -> bool {
    let _ = ns_run(a.ns_name(), &["ip", "neigh", "flush", "dev", UPLINK]);
    if !reaches(a.ns_name(), &b.address) {
        return false;
    }
    let neigh = ns_run_ok(
        a.ns_name(),
        &["ip", "neigh", "show", &b.address, "dev", UPLINK],
    );
    let ok = neigh.contains("REACHABLE") && neigh.contains(&b.uplink_mac());
    if !ok {
        eprintln!("{}: neighbour {}: {neigh}", a.tag, b.address);
    }
    ok
}

// ---------------------------------------------------------------------
// Pod traffic across nodes, in each overlay mode.

in_both_modes!(
    vxlan_pods_ping_remote_pods_and_nodes,
    direct_pods_ping_remote_pods_and_nodes,
    pods_ping_remote_pods_and_nodes
);

fn pods_ping_remote_pods_and_nodes(prefix: &str, overlay: Overlay) {
    let c = three_nodes(prefix, Some(overlay));
    let pods = pods_everywhere(&c);

    for (n, (veth, tap)) in c.nodes.iter().zip(&pods) {
        // Addresses from the node's own CIDR; the overlay's MTU on the
        // routes off the node of a veth pod (its link: the local MTU), on
        // a tap pod's link.
        let prefix = format!("10.70.{}.", n.index);
        let path = default_pod_mtu(overlay);
        for (pod, mtus) in [(veth, (VETH_POD_MTU, Some(path))), (tap, (path, None))] {
            assert!(pod.ip.starts_with(&prefix), "{} on {}", pod.ip, n.tag);
            assert_eq!(pod_mtus(pod), mtus, "{}", pod.ip);
        }
        // The node kernel routes the peers' pod CIDRs through the host port
        // and forwards.
        let routes = ns_run_ok(n.ns_name(), &["ip", "-4", "route", "show"]);
        for peer in c.nodes.iter().filter(|p| p.index != n.index) {
            let cidr = &peer.opts.pod_cidr;
            let via_host_port = routes
                .lines()
                .any(|l| l.starts_with(&format!("{cidr} ")) && l.contains(" dev ferry0"));
            assert!(
                via_host_port,
                "{}: no route to {cidr} via ferry0: {routes}",
                n.tag
            );
        }
        let fwd = ns_run_ok(n.ns_name(), &["sysctl", "-n", "net.ipv4.ip_forward"]);
        assert_eq!(fwd.trim(), "1", "{}: ip_forward", n.tag);
    }

    // Every ordered pair of nodes, veth and tap pods both ways.
    for (i, (veth_a, tap_a)) in pods.iter().enumerate() {
        for (j, (veth_b, tap_b)) in pods.iter().enumerate().filter(|(j, _)| *j != i) {
            let what = format!("node {} -> node {}", i + 1, j + 1);
            assert_reaches(
                &format!("{what}, veth -> veth"),
                &veth_a.ns.name,
                &veth_b.ip,
            );
            assert_reaches(&format!("{what}, tap -> tap"), &tap_a.ns.name, &tap_b.ip);
            assert_reaches(&format!("{what}, veth -> tap"), &veth_a.ns.name, &tap_b.ip);
        }
    }

    // A node reaches a remote pod through its host port, and back: a pod
    // reaches a remote node's own address.
    let (n1, n2) = (c.node(1), c.node(2));
    assert_reaches("node 1 -> pod on node 2", n1.ns_name(), &pods[1].0.ip);
    assert_reaches("node 2 -> pod on node 1", n2.ns_name(), &pods[0].0.ip);
    assert_reaches("pod on node 2 -> node 1", &pods[1].0.ns.name, &n1.address);
    assert_reaches(
        "tap pod on node 1 -> node 2",
        &pods[0].1.ns.name,
        &n2.address,
    );

    del_pods(&c, &pods);
}

in_both_modes!(
    vxlan_tcp_transfers_are_exact_across_nodes,
    direct_tcp_transfers_are_exact_across_nodes,
    tcp_transfers_are_exact_across_nodes
);

fn tcp_transfers_are_exact_across_nodes(prefix: &str, overlay: Overlay) {
    let c = three_nodes(prefix, Some(overlay));
    let pods = pods_everywhere(&c);
    let (veth, tap) = (
        |i: u32| (i, &pods[i as usize - 1].0),
        |i: u32| (i, &pods[i as usize - 1].1),
    );
    let cases = [
        ("veth 1 -> veth 2", veth(1), veth(2)),
        ("veth 2 -> veth 1", veth(2), veth(1)),
        ("tap 1 -> veth 2", tap(1), veth(2)),
        ("veth 3 -> tap 1", veth(3), tap(1)),
        ("tap 2 -> tap 3", tap(2), tap(3)),
        ("tap 3 -> tap 1", tap(3), tap(1)),
    ];
    let uplink_bytes = |i: u32, field: &str| {
        let port = uplink_port(c.node(i)).expect("uplink port in stats");
        port[field].as_u64().unwrap_or(0)
    };
    for (k, (what, (i, from), (j, to))) in cases.into_iter().enumerate() {
        let t = Instant::now();
        assert_reaches(what, &from.ns.name, &to.ip);
        let (sent, received) = (uplink_bytes(i, "tx_bytes"), uplink_bytes(j, "rx_bytes"));
        transfer(
            &from.ns.name,
            &to.ns.name,
            &to.ip,
            7400 + k as u16,
            k as u64 + 1,
        );
        // It crossed ferry's uplink ports, not some path around them.
        for (node, field, before) in [(i, "tx_bytes", sent), (j, "rx_bytes", received)] {
            let moved = uplink_bytes(node, field) - before;
            assert!(
                moved >= TRANSFER_BYTES,
                "{what}: only {moved} bytes in {field} of node {node}'s uplink port"
            );
        }
        eprintln!("{overlay:?} {what}: 32 MB in {:?}", t.elapsed());
    }
    del_pods(&c, &pods);
}

in_both_modes!(
    vxlan_pods_reach_the_outside_masqueraded,
    direct_pods_reach_the_outside_masqueraded,
    pods_reach_the_outside_masqueraded
);

/// A pod's connection to the outside leaves through its node's kernel,
/// which masquerades it: the server sees the node's address, and its answer
/// comes back to the pod.
fn pods_reach_the_outside_masqueraded(prefix: &str, overlay: Overlay) {
    let c = three_nodes(prefix, Some(overlay));
    let pods = pods_everywhere(&c);
    // The outside knows no pod CIDR: without masquerading nothing returns.
    let out_routes = ns_run_ok(&c.outside.ns.name, &["ip", "-4", "route", "show"]);
    assert!(!out_routes.contains("10.70."), "{out_routes}");

    for (n, (veth, tap)) in c.nodes.iter().zip(&pods) {
        let tables = ns_run_ok(n.ns_name(), &["nft", "list", "tables"]);
        assert!(
            tables.lines().any(|l| l.trim().ends_with(" ferry")),
            "{}: no nftables table ferry: {tables}",
            n.tag
        );
        for pod in [veth, tap] {
            let mut last = Err(String::new());
            let ok = wait_until(Duration::from_secs(10), || {
                last = c.outside.ask_from(&pod.ns.name);
                last.is_ok()
            });
            assert!(
                ok,
                "pod {} on {} -> {OUTSIDE_ADDR}: {last:?}",
                pod.ip, n.tag
            );
            assert_eq!(
                last,
                Ok(n.address.clone()),
                "the outside saw pod {} not as its node",
                pod.ip
            );
        }
    }
    del_pods(&c, &pods);
}

// ---------------------------------------------------------------------
// Path MTU (VXLAN).

/// A pod whose MTU is the fabric's 1500 (its network config's, on the link
/// and on every route) sends DF packets too big for the overlay: its
/// dataplane answers "fragmentation needed" with the 1450 a VXLAN packet
/// leaves, the pod's stack learns it, and TCP completes.
#[test]
fn vxlan_pods_learn_the_path_mtu_the_overlay_leaves() {
    let c = three_nodes("uvm", Some(Overlay::Vxlan));
    let (n1, n2, n3) = (c.node(1), c.node(2), c.node(3));
    let big = n1.add_pod_with(1, &mtu_conf(n1, "veth", 1500));
    let big_tap = n1.add_pod_with(2, &mtu_conf(n1, "tap", 1500));
    let b = n2.add_pod(1);
    let d = n3.add_pod(1);
    assert_eq!(pod_mtus(&big), (1500, None));
    assert_eq!(pod_mtus(&b), (VETH_POD_MTU, Some(1450)));
    assert_reaches("big -> b", &big.ns.name, &b.ip);

    // 1472 bytes of ICMP data + 28 of headers = 1500: too big for VXLAN.
    let ping = |size: &str| {
        let out = ns_run(
            &big.ns.name,
            &[
                "ping", "-M", "do", "-s", size, "-c", "2", "-i", "0.3", "-W", "1", &b.ip,
            ],
        );
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    let (ok, text) = ping("1472");
    assert!(!ok, "a 1500-byte DF ping crossed VXLAN: {text}");
    assert!(
        text.contains("mtu = 1450") || text.contains("mtu=1450"),
        "no fragmentation needed with mtu 1450: {text}"
    );
    let route = ns_run_ok(&big.ns.name, &["ip", "route", "get", &b.ip]);
    assert!(
        route.contains("mtu 1450"),
        "the pod did not learn the path MTU: {route}"
    );
    let (ok, text) = ping("1422");
    assert!(ok, "a 1450-byte DF ping did not cross: {text}");

    // TCP from MTU-1500 pods (veth, and tap with its TSO frames) to a pod
    // that advertises an MSS as large as theirs: only the ICMP error tells
    // their TCP that 1500-byte packets do not fit. (d's own route to them
    // keeps the path MTU its default route has.)
    for (k, from) in [&big, &big_tap].into_iter().enumerate() {
        let adv = [
            "ip",
            "route",
            "replace",
            &format!("{}/32", from.ip),
            "dev",
            "eth0",
            "mtu",
            "1450",
            "advmss",
            "1460",
        ];
        ns_run_ok(&d.ns.name, &adv);
        assert_reaches("mtu 1500 pod -> d", &from.ns.name, &d.ip);
        transfer(
            &from.ns.name,
            &d.ns.name,
            &d.ip,
            7501 + k as u16,
            51 + k as u64,
        );
        let route = ns_run_ok(&from.ns.name, &["ip", "route", "get", &d.ip]);
        assert!(
            route.contains("mtu 1450"),
            "{} did not learn the path MTU: {route}",
            from.ip
        );
        transfer(
            &d.ns.name,
            &from.ns.name,
            &from.ip,
            7511 + k as u16,
            61 + k as u64,
        );
    }
    let frag_needed: u64 = n1.stats()["ports"]
        .as_array()
        .map(|ports| {
            ports
                .iter()
                .map(|p| p["drops"]["frag_needed"].as_u64().unwrap_or(0))
                .sum()
        })
        .unwrap_or(0);
    assert!(frag_needed > 0, "node 1 counted no frag_needed");
    for (n, pod) in [(n1, &big), (n1, &big_tap), (n2, &b), (n3, &d)] {
        n.del_pod(pod).assert_ok();
    }
}

// ---------------------------------------------------------------------
// The node's own traffic, and dataplane restarts.

in_both_modes!(
    vxlan_node_traffic_survives_the_dataplane,
    direct_node_traffic_survives_the_dataplane,
    node_traffic_survives_the_dataplane
);

in_both_modes!(
    vxlan_pod_traffic_resumes_after_dataplane_restarts,
    direct_pod_traffic_resumes_after_dataplane_restarts,
    pod_traffic_resumes_after_dataplane_restarts
);

/// TCP between node addresses and ARP on the uplink, node 1 <-> node 2.
fn assert_node_traffic(c: &Cluster, when: &str, seed: u64) {
    let (n1, n2) = (c.node(1), c.node(2));
    for (a, b) in [(n1, n2), (n2, n1)] {
        assert!(
            neighbour_becomes_reachable(a, b),
            "{when}: ARP/ping node {} -> node {}",
            a.index,
            b.index
        );
    }
    let port = 7600 + seed as u16 * 2;
    transfer(n1.ns_name(), n2.ns_name(), &n2.address, port, seed);
    transfer(
        n2.ns_name(),
        n1.ns_name(),
        &n1.address,
        port + 1,
        seed + 100,
    );
    assert_eq!(
        c.outside.ask_from(n1.ns_name()),
        Ok(n1.address.clone()),
        "{when}: node 1 -> outside"
    );
}

/// Cross-node pod traffic to node 1 resumes by itself within a bound after
/// its dataplane came back; returns how long it took.
fn pods_resume(c: &Cluster, from: &Pod, to: &Pod, when: &str) -> Duration {
    c.node(1).wait_ready();
    let t = Instant::now();
    let ok = wait_until(Duration::from_secs(20), || from.ping(&to.ip, 1));
    assert!(
        ok,
        "{when}: pod traffic node 2 -> node 1 did not resume in 20 s"
    );
    assert!(from.ping(&to.ip, 3), "{when}: pod traffic resumed lossy");
    eprintln!(
        "{when}: pod traffic back {:?} after ferryd was ready",
        t.elapsed()
    );
    t.elapsed()
}

/// The node's own traffic on the uplink (TCP between node addresses, ARP,
/// the outside) with node 1's dataplane running, stopped (SIGTERM: it
/// detaches), restarted, killed (SIGKILL: whatever it left attached must
/// pass the node's traffic) and restarted; the node has pods all along.
fn node_traffic_survives_the_dataplane(prefix: &str, overlay: Overlay) {
    let mut c = three_nodes(prefix, Some(overlay));
    let p1 = c.node(1).add_pod(VETH);
    let t1 = c.node(1).add_tap_pod(TAP);

    assert_node_traffic(&c, "ferry running", 1);
    c.node_mut(1).dataplane.take().expect("dataplane").stop();
    assert_node_traffic(&c, "dataplane stopped", 2);
    c.node_mut(1).start_dataplane();
    c.node(1).wait_ready();
    assert_node_traffic(&c, "dataplane restarted", 3);
    c.node_mut(1).dataplane.take().expect("dataplane").kill();
    assert_node_traffic(&c, "dataplane killed", 4);
    c.node_mut(1).start_dataplane();
    c.node(1).wait_ready();
    assert_node_traffic(&c, "dataplane restarted after SIGKILL", 5);

    c.node(1).del_pod(&p1).assert_ok();
    c.node(1).del_pod(&t1).assert_ok();
}

/// Cross-node pod traffic to node 1 stops with its dataplane and comes back
/// by itself (ferryd resyncs the restarted dataplane), after a SIGTERM and
/// after a SIGKILL, veth and tap pods.
fn pod_traffic_resumes_after_dataplane_restarts(prefix: &str, overlay: Overlay) {
    let mut c = three_nodes(prefix, Some(overlay));
    let p1 = c.node(1).add_pod(VETH);
    let t1 = c.node(1).add_tap_pod(TAP);
    let p2 = c.node(2).add_pod(VETH);
    assert_reaches("pod 2 -> pod 1", &p2.ns.name, &p1.ip);
    assert_reaches("pod 2 -> tap pod 1", &p2.ns.name, &t1.ip);

    for (signal, sigkill) in [("SIGTERM", false), ("SIGKILL", true)] {
        let dp = c.node_mut(1).dataplane.take().expect("dataplane");
        if sigkill {
            dp.kill();
        } else {
            dp.stop();
        }
        assert!(
            !p2.ping(&p1.ip, 1),
            "{signal}: pod traffic reached node 1 without its dataplane"
        );
        c.node_mut(1).start_dataplane();
        pods_resume(&c, &p2, &p1, &format!("after {signal}"));
        pods_resume(&c, &p2, &t1, &format!("after {signal} (tap)"));
        assert_reaches(
            &format!("after {signal}: pod 1 -> pod 2"),
            &p1.ns.name,
            &p2.ip,
        );
        assert_reaches(
            &format!("after {signal}: tap pod 1 -> pod 2"),
            &t1.ns.name,
            &p2.ip,
        );
    }

    c.node(1).del_pod(&p1).assert_ok();
    c.node(1).del_pod(&t1).assert_ok();
    c.node(2).del_pod(&p2).assert_ok();
}

// ---------------------------------------------------------------------
// What ferryctl says about the uplink.

in_both_modes!(
    vxlan_ferryctl_reports_the_uplink_port_and_peers,
    direct_ferryctl_reports_the_uplink_port_and_peers,
    ferryctl_reports_the_uplink_port_and_peers
);

fn ferryctl_reports_the_uplink_port_and_peers(prefix: &str, overlay: Overlay) {
    let c = three_nodes(prefix, Some(overlay));
    let pods = pods_everywhere(&c);
    // Traffic to every peer, so that each one's neighbour is resolved.
    for (i, (veth, _)) in pods.iter().enumerate() {
        for (_, (dst, _)) in pods.iter().enumerate().filter(|(j, _)| *j != i) {
            assert_reaches("veth -> remote veth", &veth.ns.name, &dst.ip);
        }
    }
    for n in &c.nodes {
        let port =
            uplink_port(n).unwrap_or_else(|| panic!("{}: no uplink port in {}", n.tag, n.stats()));
        assert_eq!(port["mode"], "native-copy", "{}: {port}", n.tag);
        assert_eq!(port["attached"], true, "{}: {port}", n.tag);
        assert!(
            port["rx_frames"].as_u64().unwrap_or(0) > 0,
            "{}: {port}",
            n.tag
        );
        assert!(
            port["tx_frames"].as_u64().unwrap_or(0) > 0,
            "{}: {port}",
            n.tag
        );

        // Every other node, with its uplink MAC resolved.
        let peers_of = |json: bool| {
            let args: &[&str] = if json {
                &["peers", "--json"]
            } else {
                &["peers"]
            };
            let out = n.ferryctl(args);
            assert!(
                out.status.success(),
                "ferryctl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).to_lowercase()
        };
        let json: Value =
            serde_json::from_str(&peers_of(true)).expect("ferryctl peers --json prints JSON");
        assert_eq!(json["uplink"]["ifname"], UPLINK, "{}: {json}", n.tag);
        assert_eq!(json["uplink"]["mode"], "native-copy", "{}: {json}", n.tag);
        assert_eq!(
            json["uplink"]["overlay"]["mode"],
            overlay.name(),
            "{}: {json}",
            n.tag
        );
        let table = peers_of(false);
        let rows = json["peers"].as_array().cloned().unwrap_or_default();
        assert_eq!(rows.len(), NODES as usize - 1, "{}: {json}", n.tag);
        for peer in c.nodes.iter().filter(|p| p.index != n.index) {
            let mac = peer.uplink_mac();
            let row = rows
                .iter()
                .find(|r| r["node"] == peer.address.as_str())
                .unwrap_or_else(|| panic!("{}: peer {} missing: {json}", n.tag, peer.address));
            assert_eq!(row["mac"], mac.as_str(), "{}: {row}", n.tag);
            assert_eq!(
                row["pod_cidrs"][0],
                peer.opts.pod_cidr.as_str(),
                "{}: {row}",
                n.tag
            );
            assert!(
                table.contains(&peer.address) && table.contains(&mac),
                "{}: {table}",
                n.tag
            );
        }
    }
    del_pods(&c, &pods);
}
