//! A node that lives through crashes and reboots, and requests that must
//! not hurt it: the regression tests of what an operator saw break.
//!
//! - a pod whose namespace vanished before its DEL, then a dataplane
//!   restart: the node keeps serving ADD, the pod is reported stale;
//! - a node reboot (state directory kept, every link and namespace gone):
//!   ferryd is ready again within seconds;
//! - CNI_NETNS naming the node's own namespace, or a FIFO: refused at once,
//!   nothing allocated, the node's routes untouched, ferryd still exits on
//!   SIGTERM;
//! - ferryd SIGKILLed in the middle of a DEL, then restarted: consistent.

use std::time::{Duration, Instant};

use itest::{ns_run, ns_run_ok, run_ok, wait_until, Node, NodeOpts, Pod};
use serde_json::Value;

/// `ferryctl status --json` (exit 2 when not ready is fine here).
fn status_json(node: &Node) -> Value {
    let out = node.ferryctl(&["status", "--json"]);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "ferryctl status --json: {e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Endpoint ids ferryd reports stale.
fn stale_ids(node: &Node) -> Vec<String> {
    let mut ids: Vec<String> = status_json(node)["stale"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| s["endpoint"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

fn endpoint_id(pod: &Pod) -> String {
    format!("{}/eth0", pod.container)
}

/// The address count ferryd reports in use (from STATUS's message).
fn addresses_in_use(node: &Node) -> u64 {
    let msg = status_json(node)["msg"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let Some(before) = msg.split(" address(es) in use").next() else {
        panic!("no address count in {msg:?}");
    };
    before
        .rsplit(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no address count in {msg:?}"))
}

/// Delete a pod's namespace behind ferry's back (the pod is gone, its
/// DEL never came). The guard's own delete later finds nothing.
fn vanish(pod: &Pod) {
    run_ok("ip", &["netns", "del", &pod.ns.name]);
}

fn kill_dataplane(node: &mut Node) {
    node.dataplane.take().expect("dataplane running").kill();
}

#[test]
fn a_vanished_pod_namespace_does_not_stop_adds_after_a_dataplane_restart() {
    let mut node = Node::start("frc", NodeOpts::default());
    let gone = node.add_pod(1);
    let kept = node.add_pod(2);
    assert!(kept.ping(&gone.ip, 1), "pods talk before the crash");
    vanish(&gone);

    kill_dataplane(&mut node);
    node.start_dataplane();
    node.wait_ready();
    // Every ADD after the restart is served, and the new pod talks to the
    // one that survived.
    let new = node.add_pod(3);
    assert!(new.ping(&kept.ip, 3), "new pod reaches the surviving pod");
    assert!(kept.ping(&new.ip, 3), "surviving pod reaches the new pod");
    let gw = itest::first_host(&node.opts.pod_cidr);
    assert!(new.ping(&gw, 1), "new pod reaches its gateway");

    // The vanished pod is reported, keeps its address until DEL, and DEL
    // (without a namespace, as CRI's second DEL) releases it.
    assert_eq!(stale_ids(&node), vec![endpoint_id(&gone)]);
    let endpoints = node.ferryctl(&["endpoints"]);
    let text = String::from_utf8_lossy(&endpoints.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with(&endpoint_id(&gone)) && l.contains("stale:")),
        "ferryctl endpoints shows the stale pod:\n{text}"
    );
    let metrics = ns_run_ok(
        &node.ns.name,
        &[
            "curl",
            "-s",
            "--max-time",
            "5",
            "http://127.0.0.1:9469/metrics",
        ],
    );
    assert!(
        metrics.contains("ferry_endpoints_stale 1"),
        "metrics count the stale pod"
    );
    assert_eq!(addresses_in_use(&node), 3);
    node.cni("DEL", &gone.container, "", "eth0", &node.conf("1.0.0"))
        .assert_ok();
    assert!(stale_ids(&node).is_empty());
    assert_eq!(addresses_in_use(&node), 2);
    node.del_pod(&new).assert_ok();
    node.del_pod(&kept).assert_ok();
}

#[test]
fn a_node_reboot_leaves_ferryd_ready_within_seconds() {
    let mut node = Node::start("frb", NodeOpts::default());
    let veth = node.add_pod(1);
    let tap = node.add_pod_with(2, &node.tap_conf("1.0.0"));
    assert!(veth.ping(&tap.ip, 1));

    // The reboot: both daemons die, every namespace (node and pods) goes,
    // the state directory survives.
    node.ferryd.take().expect("ferryd").kill();
    kill_dataplane(&mut node);
    vanish(&veth);
    vanish(&tap);
    let name = node.ns.name.clone();
    run_ok("ip", &["netns", "del", &name]);
    run_ok("ip", &["netns", "add", &name]);
    run_ok("ip", &["-n", &name, "link", "set", "lo", "up"]);

    let booted = Instant::now();
    node.start_dataplane();
    node.start_ferryd();
    node.wait_ready();
    eprintln!("ready {:?} after the daemons started", booted.elapsed());

    let mut stale = vec![endpoint_id(&veth), endpoint_id(&tap)];
    stale.sort();
    assert_eq!(stale_ids(&node), stale);
    let new = node.add_pod(3);
    let gw = itest::first_host(&node.opts.pod_cidr);
    assert!(new.ping(&gw, 2), "a pod made after the reboot works");
    // The runtime's GC after a reboot names only the new pod.
    let gc = serde_json::json!({
        "cniVersion": "1.1.0",
        "name": "ferry-test",
        "type": "ferry",
        "ferrydSocket": node.ferryd_socket().display().to_string(),
        "cni.dev/valid-attachments": [{"containerID": new.container, "ifname": "eth0"}],
    });
    itest::invoke_ferry(
        &[("CNI_COMMAND", "GC"), ("CNI_PATH", "/opt/cni/bin")],
        &gc.to_string(),
    )
    .assert_ok();
    assert!(stale_ids(&node).is_empty());
    assert_eq!(addresses_in_use(&node), 1);
    node.del_pod(&new).assert_ok();
}

/// The node namespace's routes, as text.
fn node_routes(node: &Node) -> String {
    ns_run_ok(&node.ns.name, &["ip", "route", "show", "table", "all"])
}

#[test]
fn cni_netns_naming_the_nodes_own_namespace_or_a_fifo_is_refused() {
    let mut node = Node::start("frn", NodeOpts::default());
    let routes = node_routes(&node);
    let links = ns_run_ok(&node.ns.name, &["ip", "-o", "link", "show"]);
    let ferryd_pid = node.ferryd.as_ref().expect("ferryd").pid();
    // `ip netns exec` execs ferryd in place: the daemon's pid is ferryd's.
    let own = [
        format!("/var/run/netns/{}", node.ns.name),
        format!("/proc/{ferryd_pid}/ns/net"),
    ];
    for (i, netns) in own.iter().enumerate() {
        let out = node.cni(
            "ADD",
            &format!("{}-own{i}", node.tag),
            netns,
            "eth0",
            &node.conf("1.0.0"),
        );
        assert_eq!(out.code(), Some(4), "{netns}: {out:?}");
        assert!(out.stdout.contains("network namespace"), "{out:?}");
    }

    let fifo = node.dir.path.join("fifo");
    run_ok("mkfifo", &[fifo.to_str().unwrap()]);
    let t = Instant::now();
    let out = node.cni(
        "ADD",
        &format!("{}-fifo", node.tag),
        fifo.to_str().unwrap(),
        "eth0",
        &node.conf("1.0.0"),
    );
    assert_eq!(out.code(), Some(4), "{out:?}");
    assert!(out.stdout.contains("not a network namespace"), "{out:?}");
    assert!(t.elapsed() < Duration::from_secs(10), "refused at once");

    assert_eq!(
        node_routes(&node),
        routes,
        "the node's routes are untouched"
    );
    assert_eq!(
        ns_run_ok(&node.ns.name, &["ip", "-o", "link", "show"]),
        links,
        "no link was made"
    );
    assert_eq!(addresses_in_use(&node), 0, "nothing stays allocated");
    // ferryd still answers, and still stops on SIGTERM by itself.
    let pod = node.add_pod(1);
    node.del_pod(&pod).assert_ok();
    let mut ferryd = node.ferryd.take().expect("ferryd");
    let d = &mut ferryd;
    d.signal("TERM");
    let exited = wait_until(Duration::from_secs(5), || {
        matches!(d.child.try_wait(), Ok(Some(_)))
    });
    assert!(exited, "ferryd exits on SIGTERM");
}

#[test]
fn ferryd_killed_in_the_middle_of_a_del_is_consistent_after_restart() {
    let mut node = Node::start("frk", NodeOpts::default());
    // Each round kills ferryd a little later into a DEL.
    for (round, delay_ms) in [0u64, 2, 5, 10, 20, 40].into_iter().enumerate() {
        let pod = node.add_pod(round as u32 + 1);
        let conf = node.conf("1.0.0");
        let container = pod.container.clone();
        let netns = pod.ns.path();
        let del = std::thread::spawn(move || {
            itest::invoke_ferry(
                &[
                    ("CNI_COMMAND", "DEL"),
                    ("CNI_CONTAINERID", &container),
                    ("CNI_NETNS", &netns),
                    ("CNI_IFNAME", "eth0"),
                    ("CNI_PATH", "/opt/cni/bin"),
                ],
                &conf,
            )
        });
        std::thread::sleep(Duration::from_millis(delay_ms));
        node.ferryd.take().expect("ferryd").kill();
        let _ = del.join();
        node.start_ferryd();
        node.wait_ready();
        // The runtime retries DEL until it succeeds; after it, nothing of
        // the pod is left: no address, no host veth, no pod interface.
        node.del_pod(&pod).assert_ok();
        assert_eq!(addresses_in_use(&node), 0, "round {round}: address left");
        let links = ns_run_ok(&node.ns.name, &["ip", "-o", "link", "show"]);
        assert!(
            !links.contains(" fy"),
            "round {round}: a host veth is left:\n{links}"
        );
        let pod_links = ns_run(&pod.ns.name, &["ip", "-o", "link", "show", "eth0"]);
        assert!(
            !pod_links.status.success(),
            "round {round}: the pod interface is left"
        );
        assert!(stale_ids(&node).is_empty(), "round {round}");
    }
}

/// Queues the pod's eth0 uses (ethtool's current TX channel count).
fn pod_tx_channels(pod: &Pod) -> u32 {
    let out = ns_run_ok(&pod.ns.name, &["ethtool", "-l", "eth0"]);
    let current = out
        .split("Current hardware settings:")
        .nth(1)
        .unwrap_or_else(|| panic!("ethtool -l eth0: {out}"));
    current
        .lines()
        .find_map(|l| l.strip_prefix("TX:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no TX count in {out}"))
}

fn all_pairs_ping(pods: &[&Pod]) {
    for a in pods {
        for b in pods {
            if a.container != b.container {
                assert!(a.ping(&b.ip, 2), "{} -> {}", a.container, b.container);
            }
        }
    }
}

fn no_tx_queue_drops(node: &Node) -> u64 {
    node.stats()["workers"]
        .as_array()
        .map(|ws| {
            ws.iter()
                .map(|w| w["drops"]["no_tx_queue"].as_u64().unwrap_or(0))
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn a_dataplane_restarted_with_another_worker_count_serves_old_and_new_pods() {
    let mut node = Node::start("frw", NodeOpts::default());
    let a = node.add_pod(1);
    let b = node.add_pod(2);
    assert_eq!(pod_tx_channels(&a), 1);

    kill_dataplane(&mut node);
    node.opts.workers = 2;
    node.start_dataplane();
    node.wait_ready();
    let c = node.add_pod(3);
    // The veths made for one worker now use a queue per worker, as the new
    // one does, and every pair of pods talks both ways.
    for p in [&a, &b, &c] {
        assert_eq!(pod_tx_channels(p), 2, "{}", p.container);
    }
    all_pairs_ping(&[&a, &b, &c]);
    assert_eq!(no_tx_queue_drops(&node), 0, "no worker lacks a queue");

    // And back to one worker.
    kill_dataplane(&mut node);
    node.opts.workers = 1;
    node.start_dataplane();
    node.wait_ready();
    for p in [&a, &b, &c] {
        assert_eq!(pod_tx_channels(p), 1, "{}", p.container);
    }
    all_pairs_ping(&[&a, &b, &c]);
    for p in [&a, &b, &c] {
        node.del_pod(p).assert_ok();
    }
}
