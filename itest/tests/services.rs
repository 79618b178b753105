//! Kubernetes Services through the real binaries on one node: `ferryctl
//! apply -f` puts a Service and its EndpointSlice into ferryd's embedded
//! store, ferryd compiles the service port (ready endpoints only) and the
//! dataplane's tables hold it (`TableDump.services`); a bad file stores
//! nothing; a restarted dataplane gets the services again in its sync; the
//! node kernel routes the service CIDR through the host port; `delete -f`
//! takes the port out of the dataplane.

use std::fs;
use std::time::Duration;

use ferry_api::table::ServicePort;
use itest::*;

const ID: &str = "default/web:80/TCP";

fn web(backend: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: web, namespace: default}}
spec:
  clusterIP: 10.96.0.10
  ports: [{{name: http, port: 80, targetPort: 8080}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: default
  labels: {{kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{{name: http, port: 8080}}]
endpoints:
- addresses: [{backend}]
  conditions: {{ready: true}}
- addresses: [10.88.0.250]
  conditions: {{ready: false}}
"#
    )
}

fn ctl_ok(node: &Node, args: &[&str]) -> String {
    node.ferryctl_ok(args)
}

/// The dataplane's service ports.
fn dataplane_services(node: &Node) -> Vec<ServicePort> {
    ferry_api::client::tables(&node.dataplane_socket())
        .map(|t| t.services)
        .unwrap_or_default()
}

fn wait_dataplane_has(node: &Node, want: Option<&ServicePort>) {
    let mut got = Vec::new();
    let ok = wait_until(Duration::from_secs(10), || {
        got = dataplane_services(node);
        match want {
            Some(w) => got.iter().any(|p| p == w),
            None => !got.iter().any(|p| p.id == ID),
        }
    });
    assert!(
        ok,
        "dataplane services {got:?}, wanted {want:?}\nferryd log:\n{}",
        node.ferryd.as_ref().unwrap().log_text()
    );
}

#[test]
fn apply_get_delete_through_ferryd_reach_the_dataplane() {
    let mut node = Node::start(
        "fysvc",
        NodeOpts {
            extra_config: "service_cidrs = [\"10.96.0.0/12\"]\n".into(),
            ..NodeOpts::default()
        },
    );
    let pod = node.add_pod(1);
    let file = node.dir.path.join("web.yaml");
    fs::write(&file, web(&pod.ip)).unwrap();
    let file = file.display().to_string();

    let out = ctl_ok(&node, &["apply", "-f", &file]);
    assert!(out.contains("Service default/web applied"), "{out}");
    assert!(out.contains("EndpointSlice default/web-1 applied"), "{out}");

    // ferryd's view: the compiled port, the not-ready endpoint left out.
    let ports: Vec<ServicePort> =
        serde_json::from_str(&ctl_ok(&node, &["--json", "get", "services"])).unwrap();
    assert_eq!(ports.len(), 1, "{ports:?}");
    let port = ports[0].clone();
    assert_eq!(port.id, ID);
    assert_eq!(port.vip.to_string(), "10.96.0.10");
    assert_eq!(
        port.backends
            .iter()
            .map(|b| format!("{}:{}", b.ip, b.port))
            .collect::<Vec<_>>(),
        [format!("{}:8080", pod.ip)]
    );
    let table = ctl_ok(&node, &["get", "services"]);
    assert!(
        table.contains(ID) && table.contains("10.96.0.10:80"),
        "{table}"
    );
    let objects = ctl_ok(&node, &["get", "objects"]);
    assert!(
        objects.contains("EndpointSlice") && objects.contains("web-1"),
        "{objects}"
    );

    // The dataplane's view.
    wait_dataplane_has(&node, Some(&port));
    let listing: serde_json::Value =
        serde_json::from_str(&ctl_ok(&node, &["--json", "get", "objects"])).unwrap();
    assert_eq!(listing["dataplane"], "synced", "{listing}");

    // The node kernel sends ClusterIP traffic into the dataplane.
    let routes = ns_run_ok(&node.ns.name, &["ip", "route", "show", "10.96.0.0/12"]);
    assert!(routes.contains("dev ferry0"), "{routes}");

    // A bad file: refused, naming the document, and nothing of it stored.
    let bad = node.dir.path.join("bad.yaml");
    fs::write(
        &bad,
        format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: shop}}\n---\n{}",
            web(&pod.ip).replace("10.96.0.10", "10.96.0.300")
        ),
    )
    .unwrap();
    let out = node.ferryctl(&["apply", "-f", &bad.display().to_string()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("document 2 (Service default/web)") && err.contains("10.96.0.300"),
        "{err}"
    );
    let objects = ctl_ok(&node, &["get", "objects"]);
    assert!(!objects.contains("shop"), "all or nothing: {objects}");

    // A restarted dataplane gets the services in its sync.
    node.dataplane.take().unwrap().kill();
    node.start_dataplane();
    node.wait_ready();
    wait_dataplane_has(&node, Some(&port));

    // Delete: out of ferryd and out of the dataplane.
    let out = ctl_ok(&node, &["delete", "-f", &file]);
    assert!(out.contains("Service default/web deleted"), "{out}");
    wait_dataplane_has(&node, None);
    let ports: Vec<ServicePort> =
        serde_json::from_str(&ctl_ok(&node, &["--json", "get", "services"])).unwrap();
    assert!(ports.is_empty(), "{ports:?}");
    let out = ctl_ok(&node, &["delete", "-f", &file]);
    assert!(out.contains("not found"), "{out}");
    node.del_pod(&pod).assert_ok();
}

/// A Service with one port `port` (TCP, or UDP) to `target` on `backends`,
/// and its EndpointSlice, as YAML.
fn service_yaml(
    name: &str,
    vip: &str,
    port: u16,
    protocol: &str,
    target: u16,
    backends: &[&str],
    affinity: bool,
) -> String {
    let affinity = if affinity {
        "  sessionAffinity: ClientIP\n"
    } else {
        ""
    };
    let mut yaml = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  clusterIP: {vip}\n{affinity}  ports: [{{name: p, port: {port}, protocol: {protocol}, targetPort: {target}}}]\n"
    );
    if !backends.is_empty() {
        yaml.push_str(&format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-1\n  namespace: default\n  labels: {{kubernetes.io/service-name: {name}}}\naddressType: IPv4\nports: [{{name: p, port: {target}, protocol: {protocol}}}]\nendpoints:\n"
        ));
        for b in backends {
            yaml.push_str(&format!(
                "- addresses: [{b}]\n  conditions: {{ready: true}}\n"
            ));
        }
    }
    yaml
}

/// Apply `yaml` on `node` and wait until the dataplane serves `vip:port`
/// with `backends` backends.
fn apply_and_wait(node: &Node, name: &str, yaml: &str, vip: &str, backends: usize) {
    let file = node.dir.path.join(format!("{name}.yaml"));
    fs::write(&file, yaml).unwrap();
    ctl_ok(node, &["apply", "-f", &file.display().to_string()]);
    let ok = wait_until(Duration::from_secs(10), || {
        dataplane_services(node)
            .iter()
            .any(|p| p.vip.to_string() == vip && p.backends.len() == backends)
    });
    assert!(
        ok,
        "{name} not in the dataplane: {:?}",
        dataplane_services(node)
    );
}

/// A `self-server` (or `udp-server`) in `ns` on `port`, answering who
/// it is and whom it saw, for 120 s at most.
fn self_server(ns: &str, port: u16, udp: bool) -> ChildGuard {
    let mode = if udp { "udp-server" } else { "self-server" };
    let mut child = tcpcheck_in(ns, &[mode, &format!("0.0.0.0:{port}"), "120"]);
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).unwrap();
    assert_eq!(line.trim(), "listening", "{mode} in {ns}");
    ChildGuard::new(child)
}

/// Ask `dst` from `ns` (TCP `ask` or UDP `udp-ask`): (the backend's
/// address, the client address it saw), or the error.
fn who(ns: &str, dst: &str, udp: bool) -> Result<(String, String), String> {
    let mode = if udp { "udp-ask" } else { "ask" };
    let out = ChildGuard::new(tcpcheck_in(ns, &[mode, dst])).finish(Duration::from_secs(10));
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut parts = text.split_whitespace();
    let own = parts.next().unwrap_or_default().to_string();
    let peer = parts.next().unwrap_or_default().to_string();
    // The servers listen on 0.0.0.0: their own address is the socket's.
    Ok((own, peer))
}

fn host(addr: &str) -> &str {
    addr.rsplit_once(':').map_or(addr, |(h, _)| h)
}

/// ClusterIP traffic through the dataplane on one node: TCP spread over
/// two backends and the same choice for a connection's packets, a 32 MB
/// transfer checked by hash (with a backend added under it), UDP, a pod
/// reaching itself, ClientIP affinity, the node reaching a ClusterIP, and a
/// service without endpoints refused at once.
#[test]
fn clusterip_traffic_reaches_backends_and_comes_back() {
    let node = Node::start(
        "fysvt",
        NodeOpts {
            extra_config: "service_cidrs = [\"10.96.0.0/12\"]\n".into(),
            ..NodeOpts::default()
        },
    );
    let a = node.add_pod(1);
    let b = node.add_pod(2);
    let c = node.add_pod(3);
    let _servers = [
        self_server(&b.ns.name, 8080, false),
        self_server(&c.ns.name, 8080, false),
        self_server(&a.ns.name, 8081, false),
        self_server(&b.ns.name, 5353, true),
        self_server(&b.ns.name, 8443, false),
        self_server(&c.ns.name, 8443, false),
    ];
    let (bip, cip) = (b.ip.as_str(), c.ip.as_str());
    apply_and_wait(
        &node,
        "web",
        &service_yaml("web", "10.96.0.10", 80, "TCP", 8080, &[bip, cip], false),
        "10.96.0.10",
        2,
    );
    apply_and_wait(
        &node,
        "dns",
        &service_yaml("dns", "10.96.0.53", 53, "UDP", 5353, &[bip], false),
        "10.96.0.53",
        1,
    );
    apply_and_wait(
        &node,
        "self",
        &service_yaml("self", "10.96.0.13", 80, "TCP", 8081, &[&a.ip], false),
        "10.96.0.13",
        1,
    );
    apply_and_wait(
        &node,
        "sticky",
        &service_yaml("sticky", "10.96.0.14", 443, "TCP", 8443, &[bip, cip], true),
        "10.96.0.14",
        2,
    );
    apply_and_wait(
        &node,
        "empty",
        &service_yaml("empty", "10.96.0.12", 80, "TCP", 8080, &[], false),
        "10.96.0.12",
        0,
    );

    // Many connections: both backends answer, each saw the client itself.
    let mut backends = std::collections::BTreeSet::new();
    for _ in 0..24 {
        let (own, peer) = who(&a.ns.name, "10.96.0.10:80", false).expect("ask web");
        assert_eq!(host(&peer), a.ip, "the backend sees the client");
        backends.insert(host(&own).to_string());
    }
    let want: std::collections::BTreeSet<String> = [b.ip.clone(), c.ip.clone()].into();
    assert_eq!(backends, want, "connections spread over both backends");
    // The node reaches the ClusterIP too (its route goes into the dataplane).
    let (own, _) = who(&node.ns.name, "10.96.0.10:80", false).expect("node -> web");
    assert!(want.contains(host(&own)), "{own}");

    // UDP: the one backend answers (its socket is unbound, so it names
    // 0.0.0.0), it saw the client, and the answer comes from the ClusterIP.
    let out = ChildGuard::new(tcpcheck_in(&a.ns.name, &["udp-ask", "10.96.0.53:53"]))
        .finish(Duration::from_secs(10));
    let text = String::from_utf8_lossy(&out.stdout);
    let words: Vec<&str> = text.split_whitespace().collect();
    assert!(
        out.status.success(),
        "udp-ask: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(words.len(), 3, "{text}");
    assert_eq!(
        (words[0], host(words[1]), words[2]),
        ("0.0.0.0:5353", a.ip.as_str(), "10.96.0.53:53")
    );

    // Hairpin: the pod reaches its own service and sees the gateway.
    let (own, peer) = who(&a.ns.name, "10.96.0.13:80", false).expect("ask self");
    assert_eq!(host(&own), a.ip);
    assert_eq!(
        host(&peer),
        first_host("10.88.0.0/24"),
        "hairpin is masqueraded to the gateway"
    );

    // ClientIP affinity: every connection of one client to one backend.
    let first = who(&a.ns.name, "10.96.0.14:443", false)
        .expect("ask sticky")
        .0;
    for _ in 0..10 {
        assert_eq!(
            who(&a.ns.name, "10.96.0.14:443", false)
                .expect("ask sticky")
                .0,
            first
        );
    }

    // No endpoints: refused at once (a reset), not a timeout.
    let t = std::time::Instant::now();
    let err = who(&a.ns.name, "10.96.0.12:80", false).expect_err("empty service answered");
    assert!(err.contains("refused"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());

    // A 32 MB transfer through a one-backend service, checked by hash; a
    // second backend joins while it runs and the flow stays where it is.
    apply_and_wait(
        &node,
        "bulk",
        &service_yaml("bulk", "10.96.0.11", 80, "TCP", 9000, &[bip], false),
        "10.96.0.11",
        1,
    );
    let grow = {
        let node_dir = node.dir.path.clone();
        let sock = node.ferryd_socket();
        let dp = node.dataplane_socket();
        let yaml = service_yaml("bulk", "10.96.0.11", 80, "TCP", 9000, &[bip, cip], false);
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            let file = node_dir.join("bulk2.yaml");
            fs::write(&file, yaml).unwrap();
            std::process::Command::new(bin("ferryctl"))
                .args([
                    "--ferryd",
                    &sock.display().to_string(),
                    "--dataplane",
                    &dp.display().to_string(),
                ])
                .args(["apply", "-f", &file.display().to_string()])
                .output()
                .expect("ferryctl apply")
        })
    };
    transfer_via(&a.ns.name, &b.ns.name, 9000, "10.96.0.11:80", 77);
    assert!(grow.join().unwrap().status.success());
    let s = node.stats();
    let ct_full: u64 = s["workers"]
        .as_array()
        .map(|ws| {
            ws.iter()
                .map(|w| w["drops"]["ct_full"].as_u64().unwrap_or(0))
                .sum()
        })
        .unwrap_or(0);
    assert_eq!(ct_full, 0, "{s}");
    assert!(s["conntrack"]["entries"].as_u64().unwrap_or(0) > 0, "{s}");
}

/// Backends on another node: a client on node 1 reaches a ClusterIP
/// whose backends are a pod on node 1 and one on node 2 (over VXLAN; the
/// other node's dataplane forwards the reply untranslated and node 1
/// translates it back), and a 32 MB transfer to the remote backend.
#[test]
fn clusterip_backends_on_another_node() {
    use itest::cluster::{Cluster, ClusterOpts, Overlay};
    let c = Cluster::start(
        "fysvx",
        ClusterOpts {
            node_config: "service_cidrs = [\"10.96.0.0/12\"]\n".into(),
            ..ClusterOpts::new(2, Some(Overlay::Vxlan))
        },
    );
    let (n1, n2) = (c.node(1), c.node(2));
    let client = n1.add_pod(1);
    let local = n1.add_pod(2);
    let remote = n2.add_pod(1);
    let _servers = [
        self_server(&local.ns.name, 8080, false),
        self_server(&remote.ns.name, 8080, false),
    ];
    // Reach the remote pod first (the peer's MAC resolved).
    assert!(wait_until(Duration::from_secs(10), || client.ping(&remote.ip, 1)));
    let yaml = service_yaml(
        "web",
        "10.96.0.10",
        80,
        "TCP",
        8080,
        &[&local.ip, &remote.ip],
        false,
    );
    apply_and_wait(n1, "web", &yaml, "10.96.0.10", 2);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..24 {
        let (own, peer) = who(&client.ns.name, "10.96.0.10:80", false).expect("ask web");
        assert_eq!(
            host(&peer),
            client.ip,
            "no source translation for a pod client"
        );
        seen.insert(host(&own).to_string());
    }
    let want: std::collections::BTreeSet<String> = [local.ip.clone(), remote.ip.clone()].into();
    assert_eq!(seen, want, "both the local and the remote backend answer");

    let bulk = service_yaml("bulk", "10.96.0.11", 80, "TCP", 9000, &[&remote.ip], false);
    apply_and_wait(n1, "bulk", &bulk, "10.96.0.11", 1);
    transfer_via(&client.ns.name, &remote.ns.name, 9000, "10.96.0.11:80", 78);
}

/// NodePort: a client outside the cluster (a namespace on the fabric)
/// reaches a service at node 1's uplink address; a backend on node 1 and
/// one on node 2 (over VXLAN) answer, each seeing node 1's gateway as the
/// client (the flow is translated to it, so replies come back through
/// node 1, which sends them to the client from its address).
#[test]
fn node_ports_reach_backends_on_either_node_from_outside() {
    use itest::cluster::{node_address, Cluster, ClusterOpts, Overlay};
    let c = Cluster::start(
        "fysvn",
        ClusterOpts {
            node_config: "service_cidrs = [\"10.96.0.0/12\"]\n".into(),
            ..ClusterOpts::new(2, Some(Overlay::Vxlan))
        },
    );
    let (n1, n2) = (c.node(1), c.node(2));
    let local = n1.add_pod(1);
    let remote = n2.add_pod(1);
    let _servers = [
        self_server(&local.ns.name, 8080, false),
        self_server(&remote.ns.name, 8080, false),
    ];
    assert!(wait_until(Duration::from_secs(10), || local.ping(&remote.ip, 1)));
    let node_port = |name: &str, vip: &str, port: u16, backend: &str| {
        service_yaml(name, vip, port, "TCP", 8080, &[backend], false)
            .replace("spec:\n", "spec:\n  type: NodePort\n")
            .replace(
                &format!("port: {port}, protocol"),
                &format!("port: {port}, nodePort: {}, protocol", 30000 + port),
            )
    };
    apply_and_wait(
        n1,
        "here",
        &node_port("here", "10.96.0.20", 80, &local.ip),
        "10.96.0.20",
        1,
    );
    apply_and_wait(
        n1,
        "there",
        &node_port("there", "10.96.0.21", 81, &remote.ip),
        "10.96.0.21",
        1,
    );
    let gateway = first_host(&itest::cluster::pod_cidr(1));
    for (port, backend) in [(30080, &local.ip), (30081, &remote.ip)] {
        let dst = format!("{}:{port}", node_address(1));
        let got = wait_until(Duration::from_secs(10), || {
            who(&c.outside.ns.name, &dst, false).is_ok()
        });
        assert!(
            got,
            "outside -> {dst}: {:?}\n{}",
            who(&c.outside.ns.name, &dst, false),
            n1.stats()
        );
        let (own, peer) = who(&c.outside.ns.name, &dst, false).unwrap();
        assert_eq!(host(&own), backend.as_str(), "{dst}");
        assert_eq!(
            host(&peer),
            gateway,
            "{dst}: the backend sees node 1's gateway"
        );
    }
    // Other ports of the node address stay the node kernel's.
    assert!(who(
        &c.outside.ns.name,
        &format!("{}:30082", node_address(1)),
        false
    )
    .is_err());

    // externalTrafficPolicy: Local, the same objects on both nodes: each
    // node's node port reaches its own backend only, which sees the
    // client's own address; a node without a backend drops (and counts).
    let local_only = |name: &str, vip: &str, port: u16, backends: &[&str]| {
        service_yaml(name, vip, port, "TCP", 8080, backends, false)
            .replace(
                "spec:\n",
                "spec:\n  type: NodePort\n  externalTrafficPolicy: Local\n",
            )
            .replace(
                &format!("port: {port}, protocol"),
                &format!("port: {port}, nodePort: {}, protocol", 30000 + port),
            )
    };
    let both = local_only("both", "10.96.0.22", 90, &[&local.ip, &remote.ip]);
    let far = local_only("far", "10.96.0.23", 91, &[&remote.ip]);
    for n in [n1, n2] {
        apply_and_wait(n, "both", &both, "10.96.0.22", 2);
        apply_and_wait(n, "far", &far, "10.96.0.23", 1);
    }
    for (i, backend) in [(1, &local.ip), (2, &remote.ip)] {
        let dst = format!("{}:30090", node_address(i));
        for _ in 0..6 {
            let (own, peer) = who(&c.outside.ns.name, &dst, false)
                .unwrap_or_else(|e| panic!("outside -> {dst} (Local): {e}"));
            assert_eq!(
                host(&own),
                backend.as_str(),
                "{dst}: this node's backend only"
            );
            assert_eq!(
                host(&peer),
                itest::cluster::OUTSIDE_ADDR,
                "{dst}: the backend sees the client itself"
            );
        }
    }
    let dst = format!("{}:30091", node_address(1));
    assert!(
        who(&c.outside.ns.name, &dst, false).is_err(),
        "{dst}: no backend here"
    );
    let drops: u64 = n1.stats()["workers"]
        .as_array()
        .map(|ws| {
            ws.iter()
                .map(|w| w["drops"]["no_local_endpoint"].as_u64().unwrap_or(0))
                .sum()
        })
        .unwrap_or(0);
    assert!(drops >= 1, "{}", n1.stats());
    let dst = format!("{}:30091", node_address(2));
    let (own, _) = who(&c.outside.ns.name, &dst, false).expect("node 2 has far's backend");
    assert_eq!(host(&own), remote.ip);
}
