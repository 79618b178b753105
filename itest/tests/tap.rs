//! Tap pods (virtio-net offloads): the CNI lifecycle of a tap attachment,
//! large TCP transfers verified byte for byte between tap, veth and the
//! node, and a dataplane restart under a tap pod.

use std::time::Duration;

use itest::*;
use serde_json::Value;

/// The network config (veth by default) with the pod annotation as
/// containerd's CRI passes it in runtimeConfig.
fn annotated_conf(node: &Node, version: &str, attachment: &str) -> String {
    let mut v: Value = serde_json::from_str(&node.conf(version)).unwrap();
    v["runtimeConfig"] = serde_json::json!({
        "io.kubernetes.cri.pod-annotations": {"ferry.dev/attachment": attachment}
    });
    v.to_string()
}

/// `ip -d link show eth0` inside the pod.
fn pod_link(pod: &Pod) -> String {
    ns_run_ok(&pod.ns.name, &["ip", "-d", "link", "show", "eth0"])
}

/// TX queues the pod's tap shows (one per attached dataplane queue).
fn tap_tx_queues(pod: &Pod) -> usize {
    ns_run_ok(&pod.ns.name, &["ls", "/sys/class/net/eth0/queues"])
        .split_whitespace()
        .filter(|q| q.starts_with("tx-"))
        .count()
}

/// Stats of the port of `pod` (by endpoint id).
fn port_stats(node: &Node, pod: &Pod) -> Value {
    let stats = node.stats();
    let id = format!("{}/eth0", pod.container);
    stats["ports"]
        .as_array()
        .and_then(|ports| ports.iter().find(|p| p["endpoint"] == id.as_str()))
        .cloned()
        .unwrap_or_else(|| panic!("no port for {id} in {stats}"))
}

#[test]
fn tap_pod_add_check_del_del_again() {
    let node = Node::start("ta", NodeOpts::default());
    for (i, version) in ["0.4.0", "1.0.0", "1.1.0"].into_iter().enumerate() {
        let conf = node.tap_conf(version);
        let pod = node.add_pod_with(10 + i as u32, &conf);
        let (ns, container, ip, result) = (&pod.ns, &pod.container, &pod.ip, &pod.result);
        let addr = result["ips"][0]["address"].as_str().unwrap();
        let mac = result["interfaces"][0]["mac"].as_str().unwrap();

        // The pod's eth0 is a persistent multi-queue tap with a vnet header,
        // with the address, MAC and MTU of the result.
        let link = pod_link(&pod);
        // Its GSO frames hold at most as many segments as the dataplane cuts.
        for want in [
            "tun type tap",
            "vnet_hdr on",
            "multi_queue",
            "persist on",
            "gso_max_segs 128",
        ] {
            assert!(link.contains(want), "{version}: no {want:?} in {link}");
        }
        assert!(link.contains(mac), "{version}: MAC {mac} not on {link}");
        assert!(link.contains("mtu 1500"), "{version}: {link}");
        assert!(link.contains("state UP"), "{version}: {link}");
        let addrs = ns_run_ok(&ns.name, &["ip", "-4", "addr", "show", "eth0"]);
        assert!(addrs.contains(addr), "{version}: {addrs}");
        // The pod's stack may hand it TSO frames (the dataplane took them).
        let offloads = ns_run_ok(&ns.name, &["ethtool", "-k", "eth0"]);
        assert!(
            offloads.contains("tcp-segmentation-offload: on"),
            "{version}: {offloads}"
        );
        // No host-side link: nothing named after the tap's port in the node.
        let node_links = ns_run_ok(&node.ns.name, &["ip", "link", "show"]);
        assert!(
            !node_links.contains(": ft"),
            "a tap port link in the node: {node_links}"
        );

        assert!(pod.ping("10.88.0.1", 2), "{version}: tap pod -> gateway");
        assert!(
            ns_run(&node.ns.name, &["ping", "-c", "1", "-W", "1", ip])
                .status
                .success(),
            "{version}: node -> tap pod"
        );

        let mut check: Value = serde_json::from_str(&conf).unwrap();
        check["prevResult"] = result.clone();
        let check = check.to_string();
        node.cni("CHECK", container, &ns.path(), "eth0", &check)
            .assert_ok();

        node.cni("DEL", container, &ns.path(), "eth0", &conf)
            .assert_ok();
        assert!(
            !ns_run(&ns.name, &["ip", "link", "show", "eth0"])
                .status
                .success(),
            "{version}: eth0 left after DEL"
        );
        // DEL again (as containerd does: then without the netns).
        node.cni("DEL", container, &ns.path(), "eth0", &conf)
            .assert_ok();
        node.cni("DEL", container, "", "eth0", &conf).assert_ok();
        // CHECK of a deleted pod is an error, not a panic.
        let out = node.cni("CHECK", container, &ns.path(), "eth0", &check);
        assert_ne!(out.exit, 0, "{version}: CHECK after DEL succeeded");
    }

    // The pod annotation picks tap on a veth network; a bad value is code 7
    // and leaves nothing behind.
    let a = node.add_pod_with(1, &annotated_conf(&node, "1.0.0", "tap"));
    assert!(pod_link(&a).contains("tun type tap"), "{}", pod_link(&a));
    node.cni(
        "DEL",
        &a.container,
        &a.ns.path(),
        "eth0",
        &annotated_conf(&node, "1.0.0", "tap"),
    )
    .assert_ok();
    let bad = Netns::new(&format!("{}-bad", node.tag));
    let out = node.cni(
        "ADD",
        "badpod",
        &bad.path(),
        "eth0",
        &annotated_conf(&node, "1.0.0", "macvtap"),
    );
    assert_eq!(out.code(), Some(7), "{:?}", out.json());
    assert!(
        !ns_run(&bad.name, &["ip", "link", "show", "eth0"])
            .status
            .success(),
        "a refused ADD made eth0"
    );

    // A failed ADD undoes everything: eth0 taken by another interface makes
    // the rename fail; the tap made under the temporary name is deleted,
    // the foreign eth0 is untouched and the address is free again.
    let busy = Netns::new(&format!("{}-busy", node.tag));
    ns_run_ok(
        &busy.name,
        &[
            "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p",
        ],
    );
    let out = node.cni(
        "ADD",
        "busypod",
        &busy.path(),
        "eth0",
        &node.tap_conf("1.0.0"),
    );
    assert_ne!(out.exit, 0, "ADD over an existing eth0 succeeded");
    let links = ns_run_ok(&busy.name, &["ip", "-d", "link", "show"]);
    assert!(!links.contains("tun type tap"), "tap left behind: {links}");
    assert!(
        links.contains("eth0@eth0p") && links.contains("veth"),
        "the foreign eth0 was touched: {links}"
    );
    let eps = serde_json::to_string(&itest::clients::endpoints(&node)).unwrap();
    assert!(!eps.contains("busypod"), "endpoint left: {eps}");
}

#[test]
fn large_tcp_transfers_are_exact_between_tap_veth_and_node() {
    let node = Node::start("tt", NodeOpts::default());
    let a = node.add_tap_pod(1);
    let b = node.add_tap_pod(2);
    let c = node.add_pod(3); // veth
    assert!(pod_link(&a).contains("tun type tap"));
    assert!(!pod_link(&c).contains("tun"), "c is a veth pod");

    let before = port_stats(&node, &a);
    // tap <-> tap: GSO frames move unchanged.
    transfer(&a.ns.name, &b.ns.name, &b.ip, 7001, 1);
    let after = port_stats(&node, &a);
    let frames = after["rx_frames"].as_u64().unwrap() - before["rx_frames"].as_u64().unwrap();
    let bytes = after["rx_bytes"].as_u64().unwrap() - before["rx_bytes"].as_u64().unwrap();
    assert!(
        frames > 0 && bytes / frames > 4000,
        "tap a sent {frames} frames for {bytes} bytes: no GSO frames ({after})"
    );
    transfer(&b.ns.name, &a.ns.name, &a.ip, 7002, 2);

    // tap <-> veth: segmented in software towards the veth pod, plain
    // frames (zeroed header) towards the tap pod.
    transfer(&a.ns.name, &c.ns.name, &c.ip, 7003, 3);
    transfer(&c.ns.name, &a.ns.name, &a.ip, 7004, 4);

    // tap <-> node (host port): segmented towards the node kernel.
    transfer(&a.ns.name, &node.ns.name, "10.88.0.1", 7005, 5);
    transfer(&node.ns.name, &a.ns.name, &a.ip, 7006, 6);

    for pod in [&a, &b] {
        let s = port_stats(&node, pod);
        // The kernel's own headers pass the dataplane's header checks.
        for reason in [
            "bad_offload",
            "bad_csum_offload",
            "bad_gso_type",
            "bad_gso_size",
            "tap_short_read",
            "gso_unsupported",
            "frame_too_big",
            "bad_l4_checksum",
        ] {
            assert!(
                s["drops"][reason].as_u64().unwrap_or(0) == 0,
                "{reason} on {}: {s}",
                pod.container
            );
        }
    }
    for pod in [&a, &b, &c] {
        node.del_pod(pod).assert_ok();
    }
}

#[test]
fn dataplane_restart_keeps_the_tap_pod_and_traffic_resumes() {
    let mut node = Node::start(
        "tr",
        NodeOpts {
            workers: 2,
            ..NodeOpts::default()
        },
    );
    let a = node.add_tap_pod(1);
    let b = node.add_tap_pod(2);
    let c = node.add_pod(3);
    transfer(&a.ns.name, &b.ns.name, &b.ip, 7101, 11);
    assert_eq!(tap_tx_queues(&a), 2, "one tap queue per worker");

    // Two workers: two queues attached. With the dataplane gone the tap
    // stays (persistent) with its address; it only loses its carrier.
    node.dataplane.take().unwrap().kill();
    let link = pod_link(&a);
    assert!(link.contains("persist on"), "{link}");
    let addrs = ns_run_ok(&a.ns.name, &["ip", "-4", "addr", "show", "eth0"]);
    assert!(addrs.contains(&a.ip), "address lost: {addrs}");
    let routes = ns_run_ok(&a.ns.name, &["ip", "route", "show"]);
    assert!(
        routes.contains("default via 10.88.0.1"),
        "routes lost: {routes}"
    );
    assert!(!a.ping(&b.ip, 1), "traffic flowed without the dataplane");

    node.start_dataplane();
    node.wait_ready();
    assert!(
        wait_until(Duration::from_secs(20), || a.ping(&b.ip, 1)),
        "tap -> tap did not resume after the restart"
    );
    assert_eq!(tap_tx_queues(&a), 2, "both queues reattached");
    transfer(&a.ns.name, &b.ns.name, &b.ip, 7102, 12);
    transfer(&c.ns.name, &a.ns.name, &a.ip, 7103, 13);
    transfer(&a.ns.name, &c.ns.name, &c.ip, 7104, 14);

    // A graceful stop/start is the same.
    node.dataplane.take().unwrap().stop();
    node.start_dataplane();
    node.wait_ready();
    assert!(
        wait_until(Duration::from_secs(20), || b.ping(&a.ip, 1)),
        "after a graceful restart"
    );
    for pod in [&a, &b, &c] {
        node.del_pod(pod).assert_ok();
    }
    assert!(
        !ns_run(&a.ns.name, &["ip", "link", "show", "eth0"])
            .status
            .success(),
        "tap left after DEL"
    );
}

/// Idle passes of every worker so far.
fn idle_polls(node: &Node) -> u64 {
    node.stats()["workers"]
        .as_array()
        .expect("workers in stats")
        .iter()
        .map(|w| w["idle_polls"].as_u64().expect("idle_polls"))
        .sum()
}

#[test]
fn a_tap_deleted_under_the_dataplane_is_not_polled_and_the_rest_keeps_working() {
    let node = Node::start("tx", NodeOpts::default());
    let a = node.add_tap_pod(1);
    let b = node.add_tap_pod(2);
    let c = node.add_pod(3); // veth
    assert!(
        wait_until(Duration::from_secs(10), || a.ping(&b.ip, 1)),
        "tap -> tap before the deletion"
    );

    // The device goes away behind ferry's back. Its queue fds then poll
    // as POLLERR at once, forever: a worker that kept polling them would
    // never sleep again.
    ns_run_ok(&a.ns.name, &["ip", "link", "del", "eth0"]);
    let dp = node.dataplane.as_ref().expect("dataplane");
    assert!(
        wait_until(Duration::from_secs(15), || dp
            .log_text()
            .contains("reports an error")),
        "the worker never noticed the dead queue: {}",
        dp.log_text()
    );
    let before = idle_polls(&node);
    std::thread::sleep(Duration::from_secs(2));
    let idle = idle_polls(&node) - before;
    // Sleeping, a worker passes about once per 10 ms idle timeout (~200 in
    // 2 s); spinning on the dead fd it passes millions of times.
    assert!(idle < 5_000, "the worker spins: {idle} idle passes in 2 s");

    // The other pods are untouched.
    assert!(
        wait_until(Duration::from_secs(10), || b.ping(&c.ip, 1)),
        "tap b -> veth c after a's tap went away"
    );
    transfer(&b.ns.name, &c.ns.name, &c.ip, 7201, 21);
    transfer(&c.ns.name, &b.ns.name, &b.ip, 7202, 22);

    // DEL of the pod whose interface is gone still succeeds and removes
    // its endpoint.
    node.del_pod(&a).assert_ok();
    let eps = serde_json::to_string(&itest::clients::endpoints(&node)).unwrap();
    assert!(!eps.contains(&a.container), "endpoint left: {eps}");
    for pod in [&b, &c] {
        node.del_pod(pod).assert_ok();
    }
}

/// A network config for `node` with `attachment` and `mtu` set.
fn mtu_conf(node: &Node, attachment: &str, mtu: u32) -> String {
    let mut v: Value = serde_json::from_str(&node.conf("1.0.0")).unwrap();
    v["attachment"] = attachment.into();
    v["mtu"] = mtu.into();
    v.to_string()
}

/// MTU that holds: a pod MTU its attachment cannot carry is CNI error 7,
/// and a DF TCP stream from a tap pod at MTU 9000 to a veth pod at 1400
/// learns the path MTU from the dataplane's ICMP "fragmentation needed"
/// and completes, byte for byte.
#[test]
fn a_tap_pod_finds_the_path_mtu_to_a_smaller_veth_pod() {
    let node = Node::start("tm", NodeOpts::default());

    // Above what a veth port carries (a chain of 16 AF_XDP chunks):
    // refused, nothing made.
    let too_big = VETH_MTU_LIMIT + 1;
    let ns = Netns::new(&format!("{}-p9", node.tag));
    let container = format!("{}-c9", node.tag);
    let out = node.cni(
        "ADD",
        &container,
        &ns.path(),
        "eth0",
        &mtu_conf(&node, "veth", too_big),
    );
    assert_eq!(out.code(), Some(7), "{}", out.stdout);
    let msg = out.json()["msg"].as_str().unwrap_or_default().to_string();
    let limit = VETH_MTU_LIMIT.to_string();
    assert!(msg.contains(&limit), "the error names the limit: {msg}");
    assert!(
        ns_run_ok(&ns.name, &["ip", "-o", "link", "show"])
            .lines()
            .all(|l| l.contains(": lo:")),
        "the refused ADD made an interface"
    );
    node.cni(
        "DEL",
        &container,
        &ns.path(),
        "eth0",
        &mtu_conf(&node, "veth", too_big),
    )
    .assert_ok();
    drop(ns);

    let a = node.add_pod_with(1, &mtu_conf(&node, "tap", 9000));
    let c = node.add_pod_with(2, &mtu_conf(&node, "veth", 1400));
    assert!(pod_link(&a).contains("mtu 9000"), "{}", pod_link(&a));
    assert!(pod_link(&c).contains("mtu 1400"), "{}", pod_link(&c));
    // The veth pod advertises an MSS as if its link were large (route
    // advmss), as the far end of a narrower path does: only the ICMP
    // error can tell the tap pod's TCP that 9000-byte packets do not fit.
    ns_run_ok(
        &c.ns.name,
        &[
            "ip",
            "route",
            "add",
            &format!("{}/32", a.ip),
            "dev",
            "eth0",
            "advmss",
            "8960",
        ],
    );

    let frag_needed = |pod: &Pod| {
        port_stats(&node, pod)["drops"]["frag_needed"]
            .as_u64()
            .unwrap_or(0)
    };
    assert_eq!(frag_needed(&a), 0);
    // Linux TCP sets DF on every segment.
    transfer(&a.ns.name, &c.ns.name, &c.ip, 7101, 11);
    let answered = frag_needed(&a);
    assert!(answered > 0, "no fragmentation needed was sent");
    let route = ns_run_ok(&a.ns.name, &["ip", "route", "get", &c.ip]);
    assert!(
        route.contains("mtu 1400"),
        "the tap pod did not learn the path MTU: {route}"
    );
    let s = port_stats(&node, &a);
    for reason in ["too_big_no_df", "frame_too_big", "bad_offload"] {
        assert_eq!(s["drops"][reason].as_u64().unwrap_or(0), 0, "{reason}: {s}");
    }
    for pod in [&a, &c] {
        node.del_pod(pod).assert_ok();
    }
}
