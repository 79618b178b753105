//! Dual-stack pods through the dataplane: ping and ping6 between veth and
//! tap pods and the node, 32 MB TCP transfers over IPv6 checked by hash,
//! hop limit 1 answered with time exceeded, a packet too big for a pod's
//! MTU answered with packet too big, a spoofed IPv6 source dropped and
//! counted, and neighbour discovery never leaking to the node kernel.

use std::time::Duration;

use itest::*;
use serde_json::Value;

const GW6: &str = GATEWAY6;

fn dual_stack(prefix: &str) -> Node {
    Node::start(prefix, NodeOpts::dual_stack())
}

/// The pod's IPv6 address from its ADD result.
fn ip6(pod: &Pod) -> String {
    pod.result["ips"]
        .as_array()
        .expect("ips")
        .iter()
        .filter_map(|ip| ip["address"].as_str())
        .find(|a| a.contains(':'))
        .unwrap_or_else(|| panic!("no IPv6 address in {}", pod.result))
        .split('/')
        .next()
        .unwrap()
        .to_string()
}

fn ping6(ns: &str, dst: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["ping", "-6", "-c", "2", "-i", "0.2", "-W", "1"];
    args.extend_from_slice(extra);
    args.push(dst);
    ns_run(ns, &args)
}

fn ping6_ok(ns: &str, dst: &str) -> bool {
    ping6(ns, dst, &[]).status.success()
}

/// A drop counter summed over every port.
fn drops(node: &Node, reason: &str) -> u64 {
    node.stats()["ports"]
        .as_array()
        .map(|ports| {
            ports
                .iter()
                .map(|p| p["drops"][reason].as_u64().unwrap_or(0))
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn dual_stack_pods_reach_each_other_and_the_node() {
    let node = dual_stack("v6a");
    let a = node.add_pod(1);
    let b = node.add_pod(2);
    let t = node.add_tap_pod(3);
    let (a6, b6, t6) = (ip6(&a), ip6(&b), ip6(&t));

    // Both families in the result and on the interface, the IPv6 address
    // usable at once (no duplicate-address detection pending).
    for (pod, veth) in [(&a, true), (&b, true), (&t, false)] {
        let addrs = ns_run_ok(&pod.ns.name, &["ip", "-6", "addr", "show", "dev", "eth0"]);
        assert!(addrs.contains(&ip6(pod)), "{addrs}");
        assert!(!addrs.contains("tentative"), "{addrs}");
        let routes = ns_run_ok(&pod.ns.name, &["ip", "-6", "route", "show"]);
        assert!(routes.contains(&format!("default via {GW6}")), "{routes}");
        // A veth pod's default route and its gateway's host route carry
        // the path MTU (its link has the local one, for the pods of the
        // node); a tap pod's none.
        for l in routes.lines() {
            let path_mtu = veth && (l.starts_with("default") || l.starts_with(&format!("{GW6} ")));
            assert_eq!(l.contains(" mtu 1500"), path_mtu, "{routes}");
        }
    }

    // The first ping gets through: neighbour discovery is answered at once.
    for (from, to) in [(&a, &b6), (&a, &t6), (&t, &a6), (&b, &GW6.to_string())] {
        assert!(ping6_ok(&from.ns.name, to), "{} -> {to}", from.ip);
    }
    assert!(
        a.ping(&b.ip, 1) && t.ping(&a.ip, 1),
        "IPv4 still works beside"
    );
    // Between veth pods, at the local MTU: 1748 bytes with no fragment.
    let big = ping6(&a.ns.name, &b6, &["-s", "1700", "-M", "do"]);
    assert!(big.status.success(), "{big:?}");
    // The node reaches the pods over IPv6 (kubelet probes).
    for pod6 in [&a6, &t6] {
        assert!(ping6_ok(&node.ns.name, pod6), "node -> {pod6}");
    }

    // Large transfers over IPv6, checked by hash: veth -> veth, tap ->
    // veth (GSO TCPv6 segmented by the dataplane), tap -> node.
    transfer(&a.ns.name, &b.ns.name, &b6, 7201, 1);
    transfer(&t.ns.name, &a.ns.name, &a6, 7202, 2);
    transfer(&t.ns.name, &node.ns.name, GW6, 7203, 3);
    transfer(&node.ns.name, &t.ns.name, &t6, 7204, 4);

    // Link-scoped traffic stays on the link: DAD probes, router
    // solicitations and MLD reports the pods sent are dropped by reason,
    // and none reached the node kernel as a flood.
    let s = node.stats();
    let counted: u64 = ["nd_dad", "router_solicit", "ipv6_multicast"]
        .iter()
        .map(|r| drops(&node, r))
        .sum();
    assert!(counted > 0, "no link-scoped traffic was counted: {s}");
    assert_eq!(drops(&node, "ipv6_unsupported"), 0, "{s}");
}

#[test]
fn hop_limit_mtu_and_source_are_enforced_over_ipv6() {
    let node = dual_stack("v6b");
    let a = node.add_pod(1);
    let b = node.add_pod(2);
    let mut small: Value = serde_json::from_str(&node.conf("1.0.0")).unwrap();
    small["mtu"] = 1280.into();
    let s = node.add_pod_with(3, &small.to_string());
    let (b6, s6) = (ip6(&b), ip6(&s));

    // Hop limit 1: time exceeded from the gateway.
    let out = ping6(&a.ns.name, &b6, &["-t", "1"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Time exceeded") && text.contains(GW6),
        "ping -t 1: {text}"
    );

    // Larger than the small pod's MTU: packet too big with its MTU.
    let before = drops(&node, "packet_too_big");
    let out = ping6(&a.ns.name, &s6, &["-s", "1400", "-M", "do"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("mtu=1280") || text.contains("Packet too big") || err.contains("mtu=1280"),
        "ping -s 1400 to a 1280-MTU pod: {text} {err}"
    );
    assert!(drops(&node, "packet_too_big") > before);
    // What fits still passes.
    assert!(ping6_ok(&a.ns.name, &s6));

    // A source the pod was not given is dropped and counted.
    let before = drops(&node, "spoofed_source");
    ns_run_ok(
        &a.ns.name,
        &[
            "ip",
            "-6",
            "addr",
            "add",
            "fd00:88::99/128",
            "dev",
            "eth0",
            "nodad",
        ],
    );
    let out = ping6(&a.ns.name, &b6, &["-I", "fd00:88::99"]);
    assert!(!out.status.success(), "a spoofed source got an answer");
    assert!(
        wait_until(Duration::from_secs(5), || drops(&node, "spoofed_source")
            > before),
        "spoofed source not counted: {}",
        node.stats()
    );
}

/// Dual-stack nodes on a fabric: IPv6 pods reach the other node's pods
/// inside the IPv4 overlay (VXLAN) and routed as they are (direct), the
/// node kernel reaches remote IPv6 pods, and a 32 MB transfer crosses.
#[test]
fn ipv6_pods_cross_nodes_in_both_overlays() {
    use itest::cluster::{pod_cidr6, Cluster, ClusterOpts, Overlay};
    for (i, overlay) in [Overlay::Vxlan, Overlay::Direct].into_iter().enumerate() {
        let c = Cluster::start(
            &format!("v6x{i}"),
            ClusterOpts {
                dual_stack: true,
                ..ClusterOpts::new(2, Some(overlay))
            },
        );
        let a = c.node(1).add_pod(1);
        let b = c.node(2).add_pod(1);
        let t = c.node(2).add_tap_pod(2);
        let (a6, b6, t6) = (ip6(&a), ip6(&b), ip6(&t));
        assert!(a6.starts_with(&pod_cidr6(1)[..10]), "{a6}");
        let o = overlay.name();
        assert!(
            wait_until(Duration::from_secs(10), || ping6_ok(&a.ns.name, &b6)),
            "{o}: {a6} -> {b6}\n{}",
            c.node(1).stats()
        );
        assert!(ping6_ok(&t.ns.name, &a6), "{o}: tap {t6} -> {a6}");
        // The node kernel reaches a remote pod (its route to the peer's
        // IPv6 block goes through the host port).
        assert!(ping6_ok(&c.node(1).ns.name, &b6), "{o}: node 1 -> {b6}");
        transfer(&a.ns.name, &b.ns.name, &b6, 7301, 31);
        transfer(&t.ns.name, &a.ns.name, &a6, 7302, 32);
        assert_eq!(drops(c.node(2), "unknown_peer"), 0, "{o}");
    }
}

/// Dual-stack through etcd: each node's IPv6 block comes with its IPv4
/// claim, the records carry it, and pods reach each other over IPv6.
#[test]
fn ipv6_blocks_come_with_the_etcd_claim() {
    use itest::cluster::{Cluster, ClusterOpts, Overlay, CLUSTER_CIDR6};
    let c = Cluster::start(
        "v6e",
        ClusterOpts {
            dual_stack: true,
            ..ClusterOpts::with_etcd(2, Overlay::Vxlan, false)
        },
    );
    let a = c.node(1).add_pod(1);
    let b = c.node(2).add_pod(1);
    let (a6, b6) = (ip6(&a), ip6(&b));
    let prefix = &CLUSTER_CIDR6[..9];
    assert!(
        a6.starts_with(prefix) && b6.starts_with(prefix),
        "{a6} {b6}"
    );
    let block = |a: &str| a.parse::<std::net::Ipv6Addr>().unwrap().segments()[..4].to_vec();
    assert_ne!(block(&a6), block(&b6), "one /64 block per node: {a6} {b6}");
    assert!(
        wait_until(Duration::from_secs(15), || ping6_ok(&a.ns.name, &b6)),
        "{a6} -> {b6}"
    );
    assert!(ping6_ok(&b.ns.name, &a6));
    let out = c.node(1).ferryctl(&["nodes"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.matches(prefix).count() >= 2, "ferryctl nodes: {text}");
}
