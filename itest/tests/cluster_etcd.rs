//! A cluster through etcd: three simulated nodes (`itest::cluster`) and a
//! real etcd server on the fabric (`itest::etcd`), started by each test.
//! Nodes join and get distinct blocks, pods across nodes talk in VXLAN and
//! direct mode; a node leaves (its routes vanish elsewhere) and rejoins
//! with the same block; etcd killed and restarted costs no packet and the
//! cluster converges after; ferryd SIGKILLed during a cross-node ping loses
//! none; records written while a ferryd is stopped (and the history
//! compacted) reach it when it runs again, bad records refused; TLS with
//! client certificates works, and a wrong CA or an unreachable endpoint is
//! a clear error in STATUS and in the log.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use itest::cluster::{
    etcd_node_config, node_address, node_name, Cluster, ClusterNode, ClusterOpts, Overlay,
    CLUSTER_CIDR, UPLINK,
};
use itest::*;
use serde_json::Value;

/// How long a change may take to reach every node (the issue asks for a
/// second; this bound only keeps a broken test from hanging).
const CONVERGE: Duration = Duration::from_secs(10);

fn start(prefix: &str, nodes: u32, overlay: Overlay, tls: bool) -> Cluster {
    let t = Instant::now();
    let c = Cluster::start(prefix, ClusterOpts::with_etcd(nodes, overlay, tls));
    eprintln!("cluster {} with etcd up in {:?}", c.tag, t.elapsed());
    c
}

/// `ferryctl nodes --json` on `n`.
fn view(n: &Node) -> Value {
    let out = n.ferryctl(&["nodes", "--json"]);
    assert!(
        out.status.success(),
        "ferryctl nodes: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("ferryctl nodes JSON")
}

/// `ferryctl status --json` on `n`.
fn status_json(n: &Node) -> Value {
    let out = n.ferryctl(&["status", "--json"]);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "ferryctl status printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// The block `n` holds.
fn block(n: &Node) -> String {
    view(n)["node"]["block"]
        .as_str()
        .expect("this node holds a block")
        .to_string()
}

/// The peers `n` routes to, as (name, block).
fn routed(n: &Node) -> Vec<(String, String)> {
    view(n)["peers"]
        .as_array()
        .expect("peers")
        .iter()
        .filter(|p| p["route"] == "routed")
        .map(|p| {
            (
                p["name"].as_str().unwrap_or_default().to_string(),
                p["block"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// The prefixes of the dataplane's routes on `n`.
fn dataplane_routes(n: &Node) -> Vec<String> {
    let out = n.ferryctl(&["routes", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).expect("ferryctl routes JSON");
    v["routes"]
        .as_array()
        .map(|r| {
            r.iter()
                .filter_map(|r| r["prefix"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn wait_for(what: &str, bound: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    assert!(wait_until(bound, &mut f), "{what}: not within {bound:?}");
    eprintln!("{what}: {:?}", t.elapsed());
}

/// `a` and `b` reach each other's pods: a first reply within 10 s, then 3.
fn assert_reaches(from: &Pod, to: &Pod) {
    let ok = wait_until(Duration::from_secs(10), || from.ping(&to.ip, 1)) && from.ping(&to.ip, 3);
    assert!(ok, "{} -> {} does not get through", from.ip, to.ip);
}

/// A ping of `count` echoes every 50 ms from `from` to `dst`, running.
fn ping_in_background(from: &str, dst: &str, count: u32) -> ChildGuard {
    let child = Command::new("ip")
        .args(["netns", "exec", from, "ping", "-i", "0.05", "-W", "1", "-c"])
        .arg(count.to_string())
        .arg(dst)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ping");
    ChildGuard::new(child)
}

/// (transmitted, received) of a finished background ping.
fn ping_result(ping: ChildGuard) -> (u32, u32) {
    let out = ping.finish(Duration::from_secs(60));
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_else(|| panic!("no ping summary in {text}"));
    let nums: Vec<u32> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    (nums[0], nums[1])
}

/// ferryd's metrics, scraped with curl inside the node namespace.
fn metrics(n: &Node) -> String {
    ns_run_ok(
        &n.ns.name,
        &[
            "curl",
            "-sS",
            "--max-time",
            "10",
            "http://127.0.0.1:9469/metrics",
        ],
    )
}

fn in_block(ip: &str, block: &str) -> bool {
    let ip: std::net::Ipv4Addr = ip.parse().expect("pod IP");
    let net: ipnet::Ipv4Net = block.parse().expect("block");
    net.contains(&ip)
}

fn config_path(n: &ClusterNode) -> String {
    n.dir.path.join("ferryd.toml").display().to_string()
}

// ---------------------------------------------------------------------

/// Join, distinct blocks, routes to every other node, pods across nodes
/// talking; in VXLAN also a node leaving and rejoining with its block.
fn join_talk(prefix: &str, overlay: Overlay, leave_and_rejoin: bool) {
    let mut c = start(prefix, 3, overlay, false);
    let blocks: Vec<String> = c.nodes.iter().map(|n| block(n)).collect();
    let cidr: ipnet::Ipv4Net = CLUSTER_CIDR.parse().unwrap();
    for b in &blocks {
        let net: ipnet::Ipv4Net = b.parse().unwrap();
        assert!(cidr.contains(&net) && net.prefix_len() == 24, "{b}");
    }
    let mut distinct = blocks.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "blocks shared: {blocks:?}");

    // Every node routes to the two others, in the dataplane too.
    for n in &c.nodes {
        wait_for("two peers routed", CONVERGE, || routed(n).len() == 2);
        let v = view(n);
        assert_eq!(v["node"]["name"], node_name(n.index));
        assert_eq!(v["node"]["address"], node_address(n.index));
        assert_eq!(v["node"]["overlay"], overlay.name());
        assert_eq!(v["reachable"], true, "{v}");
        let routes = dataplane_routes(n);
        for (i, b) in blocks.iter().enumerate() {
            if i as u32 + 1 != n.index {
                assert!(routes.contains(b), "{}: no route to {b}: {routes:?}", n.tag);
            }
        }
    }
    let text = String::from_utf8_lossy(&c.node(1).ferryctl(&["nodes"]).stdout).into_owned();
    assert!(text.starts_with("NODE"), "{text}");
    assert!(text.contains("n1") && text.contains("self"), "{text}");
    assert!(
        text.contains("routed") && text.contains("(reachable"),
        "{text}"
    );

    // A pod on every node, its address from its node's block; all pairs talk.
    let pods: Vec<Pod> = c.nodes.iter().map(|n| n.add_pod(1)).collect();
    for (p, b) in pods.iter().zip(&blocks) {
        assert!(
            in_block(&p.ip, b),
            "pod {} outside its node's block {b}",
            p.ip
        );
    }
    for a in &pods {
        for b in &pods {
            if a.ip != b.ip {
                assert_reaches(a, b);
            }
        }
    }
    // A node reaches the pods of the others (the kernel routes the cluster
    // CIDR into the host port, the dataplane the peers' blocks).
    for (i, p) in pods.iter().enumerate() {
        let from = c.node(i as u32 % 3 + 1);
        assert!(
            wait_until(Duration::from_secs(10), || ns_ping(
                from.ns_name(),
                &p.ip,
                1
            )),
            "node {} -> pod {}",
            from.tag,
            p.ip
        );
    }
    let m = metrics(c.node(1));
    for line in [
        "ferry_cluster_peers{state=\"routed\"} 2",
        &format!("ferry_cluster_block_info{{block=\"{}\"}} 1", blocks[0]),
    ] {
        assert!(
            m.lines().any(|l| l == line),
            "no {line:?} in the metrics:\n{m}"
        );
    }
    if !leave_and_rejoin {
        for (n, p) in c.nodes.iter().zip(&pods) {
            n.del_pod(p).assert_ok();
        }
        return;
    }

    // Node 3 leaves: ferryd stopped, then `ferryd --leave`.
    let n3_block = blocks[2].clone();
    let cfg3 = config_path(c.node(3));
    c.node_mut(3).ferryd.take().expect("ferryd").stop();
    let out = ns_run_ok(
        c.node(3).ns_name(),
        &[
            &bin("ferryd").display().to_string(),
            "--config",
            &cfg3,
            "--leave",
        ],
    );
    assert!(out.contains("left") && out.contains(&n3_block), "{out}");
    for i in [1, 2] {
        let n = c.node(i);
        wait_for("the leaver's route gone", CONVERGE, || {
            routed(n).iter().all(|(name, _)| name != "n3")
                && !dataplane_routes(n).contains(&n3_block)
        });
        assert!(
            view(n)["peers"]
                .as_array()
                .unwrap()
                .iter()
                .all(|p| p["name"] != "n3"),
            "n3 still listed on {}",
            n.tag
        );
    }
    assert!(
        !pods[0].ping(&pods[2].ip, 2),
        "a node that left is still routed to"
    );

    // It rejoins with the same block, and its pod is reached again.
    c.node_mut(3).start_ferryd();
    c.node(3).wait_ready();
    assert_eq!(block(c.node(3)), n3_block, "rejoined with another block");
    for i in [1, 2] {
        wait_for("the rejoined node routed", CONVERGE, || {
            routed(c.node(i)).contains(&("n3".to_string(), n3_block.clone()))
        });
    }
    assert_reaches(&pods[0], &pods[2]);
    assert_reaches(&pods[2], &pods[1]);
    for (n, p) in c.nodes.iter().zip(&pods) {
        n.del_pod(p).assert_ok();
    }
}

#[test]
fn three_nodes_join_through_etcd_and_pods_talk_over_vxlan_leave_and_rejoin() {
    join_talk("ev", Overlay::Vxlan, true);
}

#[test]
fn three_nodes_join_through_etcd_and_pods_talk_in_direct_mode() {
    join_talk("ed", Overlay::Direct, false);
}

/// etcd killed: forwarding goes on, ADD is served from the node's block,
/// STATUS says the datastore is unreachable; etcd back: the nodes converge
/// without a restart. Then ferryd SIGKILLed and restarted during a
/// cross-node ping: nothing lost. Then records written (and the history
/// compacted) while a ferryd is stopped reach it when it runs again; a
/// malformed record and one outside the cluster CIDR are refused, not
/// routed.
#[test]
fn etcd_and_ferryd_failures_cost_no_packet_and_the_cluster_converges() {
    let mut c = start("eo", 2, Overlay::Vxlan, false);
    let (b1, b2) = (block(c.node(1)), block(c.node(2)));
    let p1 = c.node(1).add_pod(1);
    let p2 = c.node(2).add_pod(1);
    assert_reaches(&p1, &p2);

    // etcd down during a continuous ping.
    let ping = ping_in_background(&p1.ns.name, &p2.ip, 120);
    std::thread::sleep(Duration::from_millis(500));
    c.etcd.as_mut().unwrap().kill();
    wait_for(
        "STATUS says the datastore is unreachable",
        Duration::from_secs(30),
        || {
            let s = status_json(c.node(1));
            s["ready"] == true && s["cluster"]["reachable"] == false
        },
    );
    let s = status_json(c.node(1));
    let msg = s["msg"].as_str().unwrap_or_default();
    assert!(msg.contains("UNREACHABLE"), "{msg}");
    assert!(
        c.node(1)
            .ferryd
            .as_ref()
            .unwrap()
            .log_text()
            .contains("datastore unreachable"),
        "the log does not say the datastore is unreachable"
    );
    let m = metrics(c.node(1));
    assert!(
        m.lines()
            .any(|l| l.starts_with("ferry_cluster_datastore_reachable{") && l.ends_with("} 0")),
        "the metrics do not say the datastore is unreachable:\n{m}"
    );
    // ADD is still served from the node's own block.
    let p3 = c.node(1).add_pod(3);
    assert!(in_block(&p3.ip, &b1), "{} outside {b1}", p3.ip);
    c.etcd.as_mut().unwrap().resume();
    let (sent, got) = ping_result(ping);
    assert_eq!(
        sent,
        got,
        "{} of {sent} echoes lost while etcd was down",
        sent - got
    );
    for n in &c.nodes {
        wait_for("reachable again", Duration::from_secs(30), || {
            view(n)["reachable"] == true
        });
    }
    assert_eq!(
        (block(c.node(1)), block(c.node(2))),
        (b1.clone(), b2.clone())
    );
    assert_reaches(&p3, &p2);

    // ferryd SIGKILLed and restarted during a continuous ping.
    let ping = ping_in_background(&p2.ns.name, &p1.ip, 100);
    std::thread::sleep(Duration::from_millis(500));
    c.node_mut(1).ferryd.take().unwrap().kill();
    std::thread::sleep(Duration::from_millis(500));
    c.node_mut(1).start_ferryd();
    c.node(1).wait_ready();
    let (sent, got) = ping_result(ping);
    assert_eq!(
        sent,
        got,
        "{} of {sent} echoes lost across a ferryd SIGKILL",
        sent - got
    );
    assert_eq!(block(c.node(1)), b1, "a restarted ferryd changed blocks");

    // Records written while node 2's ferryd is stopped, then compacted.
    let etcd = c.etcd.as_ref().unwrap();
    c.node(2).ferryd.as_ref().unwrap().signal("STOP");
    let good = serde_json::json!({
        "name": "n9", "address": "192.168.70.9", "block": "10.244.99.0/24",
        "vtep_mac": "02:00:00:00:00:09", "overlay": "vxlan", "vni": 1, "renewed": 0
    });
    etcd.etcdctl_ok(&["put", "/ferry/blocks/10.244.99.0-24", &good.to_string()]);
    etcd.etcdctl_ok(&["put", "/ferry/blocks/10.244.98.0-24", "{not json"]);
    let outside = serde_json::json!({
        "name": "n8", "address": "192.168.70.8", "block": "10.9.0.0/24",
        "vtep_mac": "02:00:00:00:00:08", "overlay": "vxlan", "vni": 1, "renewed": 0
    });
    etcd.etcdctl_ok(&["put", "/ferry/blocks/10.9.0.0-24", &outside.to_string()]);
    let rev = etcd.revision().to_string();
    etcd.etcdctl_ok(&["compact", &rev]);
    c.node(2).ferryd.as_ref().unwrap().signal("CONT");
    // The watch delivers the three puts one by one: wait for all of them.
    wait_for("the stopped ferryd learns the new nodes", CONVERGE, || {
        routed(c.node(2)).contains(&("n9".to_string(), "10.244.99.0/24".to_string()))
            && view(c.node(2))["peers"]
                .as_array()
                .is_some_and(|peers| peers.iter().any(|p| p["name"] == "n8"))
    });
    let v = view(c.node(2));
    let n8 = v["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "n8")
        .cloned()
        .unwrap_or_default();
    assert!(
        n8["route"]
            .as_str()
            .unwrap_or_default()
            .starts_with("refused:"),
        "a block outside the cluster CIDR is routed: {v}"
    );
    assert!(!dataplane_routes(c.node(2)).contains(&"10.9.0.0/24".to_string()));
    assert!(
        c.node(2)
            .ferryd
            .as_ref()
            .unwrap()
            .log_text()
            .contains("10.244.98.0-24 ignored"),
        "the malformed record is not named in the log"
    );
    // Removed from etcd: gone from the dataplane.
    etcd.etcdctl_ok(&["del", "/ferry/blocks/10.244.99.0-24"]);
    wait_for("a deleted record's route gone", CONVERGE, || {
        !dataplane_routes(c.node(2)).contains(&"10.244.99.0/24".to_string())
    });
    assert_reaches(&p2, &p1);
    for (n, p) in [(1, &p1), (1, &p3), (2, &p2)] {
        c.node(n).del_pod(p).assert_ok();
    }
}

/// TLS to etcd with client certificates: two nodes join and their pods
/// talk. A node whose CA did not sign etcd's certificate, and a node whose
/// endpoint nobody answers, serve STATUS "not available" (50) saying why,
/// and log it.
#[test]
fn tls_to_etcd_works_and_a_wrong_ca_or_dead_endpoint_is_a_clear_error() {
    let c = start("et", 2, Overlay::Vxlan, true);
    let etcd = c.etcd.as_ref().unwrap();
    assert!(etcd.url().starts_with("https://"));
    let p1 = c.node(1).add_pod(1);
    let p2 = c.node(2).add_pod(1);
    assert_reaches(&p1, &p2);

    // A third node with the wrong CA.
    let tls = etcd.tls.clone().unwrap();
    let mut config = etcd_node_config(3, Overlay::Vxlan, etcd, 60);
    config = config.replace(
        &tls.ca.display().to_string(),
        &tls.other_ca.display().to_string(),
    );
    let opts = NodeOpts {
        pod_cidr: String::new(),
        mtu: None,
        extra_config: config,
        ..NodeOpts::default()
    };
    let mut n3 = Node::create(format!("{}n3", c.tag), opts);
    c.fabric.plug("n3", &n3.ns.name, UPLINK, &node_address(3));
    n3.start_dataplane();
    n3.start_ferryd();
    let not_ready = |n: &Node, want: &[&str]| {
        wait_for(
            "STATUS 50 with the datastore's error",
            Duration::from_secs(30),
            || {
                let s = n.status();
                s.code() == Some(50) && want.iter().all(|w| s.stdout.contains(w))
            },
        );
    };
    not_ready(&n3, &["datastore unreachable"]);
    let s = n3.status();
    assert!(s.stdout.contains("joining the cluster"), "{}", s.stdout);
    let log = n3.ferryd.as_ref().unwrap().log_text();
    assert!(
        log.contains("datastore unreachable") && log.to_lowercase().contains("certificate"),
        "the log does not name the certificate problem:\n{log}"
    );
    // ADD waits for a block: "try again later".
    let ns = Netns::new(&format!("{}-n3p", c.tag));
    let add = n3.cni("ADD", "n3-early", &ns.path(), "eth0", &n3.conf("1.0.0"));
    assert_eq!(add.code(), Some(11), "{}", add.stdout);

    // The same node pointed at an address nobody answers on.
    n3.ferryd.take().unwrap().stop();
    let cfg = n3.dir.path.join("ferryd.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let dead = text.replace(&etcd.url(), "http://192.168.70.251:2379");
    let dead = dead
        .lines()
        .filter(|l| {
            !l.starts_with("ca_file") && !l.starts_with("cert_file") && !l.starts_with("key_file")
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&cfg, dead).unwrap();
    n3.start_ferryd();
    not_ready(&n3, &["192.168.70.251", "datastore unreachable"]);
    drop(n3);

    // The good nodes never noticed.
    assert_reaches(&p2, &p1);
    c.node(1).del_pod(&p1).assert_ok();
    c.node(2).del_pod(&p2).assert_ok();
}

/// Eight ferryd started at once on a cluster CIDR of four blocks: four
/// hold one each, never the same, and the four others say in STATUS that
/// every block is held. (No dataplanes: the claim is ferryd's alone.)
#[test]
fn many_ferryd_starting_at_once_never_share_a_block() {
    let tag = unique_tag("em");
    let fabric = itest::cluster::Fabric::new(&tag);
    let etcd = itest::etcd::EtcdServer::start(&tag, &fabric, false);
    let mut nodes: Vec<Node> = (1..=8)
        .map(|i| {
            let table = itest::cluster::cluster_table(i, &etcd, 60)
                .replace(CLUSTER_CIDR, "10.245.0.0/26")
                .replace("[cluster]\n", "[cluster]\nblock_len = 28\n");
            let opts = NodeOpts {
                pod_cidr: String::new(),
                mtu: None,
                extra_config: format!("uplink = \"{UPLINK}\"\nmetrics_listen = \"\"\n{table}"),
                ..NodeOpts::default()
            };
            let n = Node::create(format!("{tag}n{i}"), opts);
            fabric.plug(&format!("n{i}"), &n.ns.name, UPLINK, &node_address(10 + i));
            n
        })
        .collect();
    for n in &mut nodes {
        n.start_ferryd();
    }
    let mut blocks: Vec<String> = Vec::new();
    wait_for(
        "every ferryd holds a block or says none is free",
        Duration::from_secs(60),
        || {
            blocks.clear();
            nodes.iter().all(|n| {
                let out = n.ferryctl(&["nodes", "--json"]);
                let Ok(v) = serde_json::from_slice::<Value>(&out.stdout) else {
                    return false;
                };
                match v["node"]["block"].as_str() {
                    Some(b) => {
                        blocks.push(b.to_string());
                        true
                    }
                    None => v["error"]
                        .as_str()
                        .is_some_and(|e| e.contains("no free block")),
                }
            })
        },
    );
    let mut distinct = blocks.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(blocks.len(), 4, "four blocks, four holders: {blocks:?}");
    assert_eq!(distinct.len(), 4, "a block held twice: {blocks:?}");
    let keys = etcd.etcdctl_ok(&["get", "--prefix", "/ferry/blocks/", "--keys-only"]);
    assert_eq!(keys.lines().filter(|l| !l.is_empty()).count(), 4, "{keys}");
    let full = nodes
        .iter()
        .find(|n| {
            let s = n.status();
            s.code() == Some(50) && s.stdout.contains("no free block of 10.245.0.0/26")
        })
        .is_some();
    assert!(full, "no ferryd without a block says why in STATUS");
}
