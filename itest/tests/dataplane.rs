//! The dataplane carries the pod traffic: proof, node reachability, GC,
//! and recovery after a dataplane restart.

use std::time::Duration;

use itest::*;

/// iperf3 TCP from `client` to a one-shot server started in `server` on
/// `port`; asserts it ran and moved more than 1 MB.
fn iperf3_moves_data(client: &Pod, server: &Pod, port: &str, extra: &[&str]) {
    let srv = ns_run(&server.ns.name, &["iperf3", "-s", "-D", "-1", "-p", port]);
    assert!(srv.status.success(), "iperf3 -s: {srv:?}");
    let mut args = vec![
        "timeout", "60", "iperf3", "-c", &server.ip, "-p", port, "-J",
    ];
    args.extend_from_slice(extra);
    let cli = ns_run(&client.ns.name, &args);
    assert!(
        cli.status.success(),
        "iperf3 {} -> {}: {}",
        client.ip,
        server.ip,
        String::from_utf8_lossy(&cli.stdout)
    );
    let j: serde_json::Value = serde_json::from_slice(&cli.stdout).unwrap();
    let bytes = j["end"]["sum_received"]["bytes"].as_f64().unwrap_or(0.0);
    assert!(bytes > 1e6, "iperf3 moved only {bytes} bytes");
}

#[test]
fn pods_talk_through_the_dataplane_only() {
    let mut node = Node::start("fd", NodeOpts::default());
    let a = node.add_pod(1);
    let b = node.add_pod(2);
    let c = node.add_pod(3);

    // No Linux bridge, and no kernel route to any single pod: the kernel's
    // only pod route points at the host port.
    let bridges = ns_run_ok(
        &node.ns.name,
        &["ip", "-d", "link", "show", "type", "bridge"],
    );
    assert!(
        bridges.trim().is_empty(),
        "a bridge exists in the node: {bridges}"
    );
    let routes = ns_run_ok(&node.ns.name, &["ip", "-4", "route", "show"]);
    for pod in [&a, &b, &c] {
        assert!(
            !routes.contains(&pod.ip),
            "kernel route to {} in node: {routes}",
            pod.ip
        );
    }
    // The XDP program is attached to every pod host veth.
    let links = ns_run_ok(&node.ns.name, &["ip", "-d", "link", "show"]);
    let pod_links: Vec<&str> = links.lines().filter(|l| l.contains(": fy")).collect();
    assert_eq!(pod_links.len(), 3, "{links}");
    for l in pod_links {
        assert!(l.contains("xdp"), "no XDP program on {l}");
    }

    let before = node.stats();
    assert!(a.ping(&b.ip, 3), "a -> b");
    assert!(b.ping(&c.ip, 3), "b -> c");
    assert!(c.ping("10.88.0.1", 2), "c -> gateway");
    // The node reaches a pod through the host port (kubelet probes).
    assert!(
        ns_run(&node.ns.name, &["ping", "-c", "2", "-W", "1", &a.ip])
            .status
            .success(),
        "node -> a"
    );
    let after = node.stats();
    assert!(
        port_counter(&after, "rx_frames") >= port_counter(&before, "rx_frames") + 12,
        "counters did not rise: {before} -> {after}"
    );

    // TCP with default pod offloads (partial checksums completed by the dataplane).
    iperf3_moves_data(&a, &b, "5301", &["-t", "1"]);

    // With the dataplane stopped, pod-to-pod traffic stops...
    node.dataplane.take().unwrap().stop();
    assert!(!a.ping(&b.ip, 2), "traffic flowed without the dataplane");
    // ...and resumes on its own when it is back (ferryd resyncs).
    node.start_dataplane();
    let back = wait_until(Duration::from_secs(20), || a.ping(&b.ip, 1));
    assert!(back, "traffic did not resume after the dataplane restart");
    assert!(
        ns_run(&node.ns.name, &["ping", "-c", "1", "-W", "1", &c.ip])
            .status
            .success(),
        "node -> c"
    );

    // The dataplane dying hard (SIGKILL) is survived the same way.
    node.dataplane.take().unwrap().kill();
    node.start_dataplane();
    assert!(
        wait_until(Duration::from_secs(20), || b.ping(&c.ip, 1)),
        "after SIGKILL"
    );

    for pod in [&a, &b, &c] {
        node.del_pod(pod).assert_ok();
    }
}

/// The text of `ping -M do -s size` (DF set, two echoes) from `from` to
/// `dst`, and whether every reply came back.
fn df_ping(from: &Pod, dst: &str, size: &str) -> (bool, String) {
    let out = ns_run(
        &from.ns.name,
        &[
            "ping", "-M", "do", "-s", size, "-c", "2", "-i", "0.2", "-W", "1", dst,
        ],
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A veth pod's link has the local MTU (ferryd's `local_mtu` lowered to
/// what a veth port carries), at which it reaches the pods of its node;
/// its routes through the gateway carry the path MTU (ferryd's `mtu`,
/// 1500 here), so nothing larger leaves for elsewhere.
#[test]
fn veth_pods_meet_at_the_local_mtu_and_leave_at_the_path_mtu() {
    let node = Node::start("fm", NodeOpts::default());
    let a = node.add_pod(1);
    let b = node.add_pod(2);
    let local = format!("mtu {VETH_POD_MTU} ");
    for pod in [&a, &b] {
        let link = ns_run_ok(&pod.ns.name, &["ip", "link", "show", "dev", "eth0"]);
        assert!(link.contains(&local), "{link}");
        let routes = ns_run_ok(&pod.ns.name, &["ip", "-4", "route", "show"]);
        let line = |prefix: &str| {
            routes
                .lines()
                .find(|l| l.starts_with(prefix))
                .unwrap_or_else(|| panic!("no {prefix} route: {routes}"))
        };
        assert!(line("default").contains(" mtu 1500"), "{routes}");
        // The kernel's connected route: the pods of the node.
        assert!(!line("10.88.0.0/24").contains("mtu"), "{routes}");
    }
    // Both ends of each pair: a veth drops what is larger than the MTU of
    // its receiving end.
    let links = ns_run_ok(&node.ns.name, &["ip", "-o", "link", "show"]);
    let host_ends: Vec<&str> = links.lines().filter(|l| l.contains(": fy")).collect();
    assert_eq!(host_ends.len(), 2, "{links}");
    for l in host_ends {
        assert!(l.contains(&local), "{l}");
    }
    let to_b = ns_run_ok(&a.ns.name, &["ip", "route", "get", &b.ip]);
    assert!(
        !to_b.contains("mtu"),
        "the pod next door at the link's: {to_b}"
    );
    // The gateway's address is on the pod's prefix but what it gets
    // (beyond the dataplane's answers) leaves by the host port: at the
    // path MTU, by a host route of its own.
    let gateway = first_host(&node.opts.pod_cidr);
    let to_gw = ns_run_ok(&a.ns.name, &["ip", "route", "get", &gateway]);
    assert!(
        to_gw.contains("mtu 1500"),
        "the gateway at the path MTU: {to_gw}"
    );
    let away = ns_run_ok(&a.ns.name, &["ip", "route", "get", "192.0.2.1"]);
    assert!(
        away.contains("mtu 1500"),
        "elsewhere at the path MTU: {away}"
    );

    // A DF ping of the link's MTU, far more than a 1500 MTU (and one
    // AF_XDP chunk) carries, between the pods; TCP too, in segments of
    // the link's size: bytes per frame received from A well above 1500.
    let data = (VETH_POD_MTU - 28).to_string();
    let (ok, text) = df_ping(&a, &b.ip, &data);
    assert!(ok, "a {VETH_POD_MTU}-byte DF ping between pods: {text}");
    let port_of = |pod: &Pod| -> (u64, u64) {
        let p = node.port_of(pod);
        let n = |k: &str| p[k].as_u64().unwrap_or(0);
        (n("rx_frames"), n("rx_bytes"))
    };
    let before = port_of(&a);
    transfer(&a.ns.name, &b.ns.name, &b.ip, 5303, 7);
    let after = port_of(&a);
    let per_frame = (after.1 - before.1) / (after.0 - before.0).max(1);
    assert!(
        per_frame > 3000,
        "A's TCP crossed in large frames: {per_frame} bytes each ({before:?} -> {after:?})"
    );
    // The node kernel, behind the host port at the path MTU, is reached
    // through the gateway's host route.
    transfer(&a.ns.name, &node.ns.name, &gateway, 5304, 8);
    for pod in [&a, &b] {
        node.del_pod(pod).assert_ok();
    }
}

#[test]
fn gc_releases_attachments_not_listed() {
    let node = Node::start("fg", NodeOpts::default());
    let a = node.add_pod(1);
    let b = node.add_pod(2);
    let mut conf: serde_json::Value = serde_json::from_str(&node.conf("1.1.0")).unwrap();
    conf["cni.dev/valid-attachments"] =
        serde_json::json!([{"containerID": a.container, "ifname": "eth0"}]);
    let out = invoke_ferry(
        &[("CNI_COMMAND", "GC"), ("CNI_PATH", "/opt/cni/bin")],
        &conf.to_string(),
    );
    out.assert_ok();
    let eps = node.ferryctl(&["endpoints", "--json"]);
    let eps: serde_json::Value = serde_json::from_slice(&eps.stdout).expect("endpoints json");
    let text = eps.to_string();
    assert!(
        text.contains(&a.ip),
        "GC removed a valid attachment: {text}"
    );
    assert!(
        !text.contains(&b.ip),
        "GC kept an attachment not listed: {text}"
    );
    assert!(
        !ns_run(&b.ns.name, &["ip", "link", "show", "eth0"])
            .status
            .success(),
        "b's eth0 left"
    );
    node.del_pod(&a).assert_ok();
}

#[test]
fn two_workers_share_the_pod_traffic() {
    let node = Node::start(
        "f2",
        NodeOpts {
            workers: 2,
            ..NodeOpts::default()
        },
    );
    let a = node.add_pod(1);
    let b = node.add_pod(2);
    assert!(a.ping(&b.ip, 3), "a -> b with 2 workers");

    // Eight TCP flows: the pod veth spreads them over its two queues by flow
    // hash, so both workers (one per queue) forward frames.
    iperf3_moves_data(&a, &b, "5302", &["-t", "2", "-P", "8"]);

    let stats = node.stats();
    let workers = stats["workers"].as_array().expect("workers in stats");
    assert_eq!(workers.len(), 2, "{stats}");
    for w in workers {
        assert!(
            w["rx_frames"].as_u64().unwrap_or(0) > 0,
            "worker {} forwarded nothing: {stats}",
            w["worker"]
        );
    }
    for pod in [&a, &b] {
        node.del_pod(pod).assert_ok();
    }
}
