//! Kubernetes NetworkPolicy through the real binaries on one node: the
//! network-policy e2e scenarios as a table, each applied with `ferryctl
//! apply -f`, checked against the full connectivity matrix of the test's
//! pods (TCP to two ports, from every pod and from the node), and deleted
//! again, after which everything is open. The pods belong to Kubernetes
//! pods by their CNI arguments (K8S_POD_NAMESPACE / K8S_POD_NAME); their
//! labels and their namespaces' labels come from Pod and Namespace objects
//! applied like the policies.

use std::collections::BTreeMap;
use std::fs;
use std::time::Duration;

use itest::*;

/// (name, namespace, labels) of the test's pods.
const PODS: [(&str, &str, &str); 4] = [
    ("a", "alpha", "app: web"),
    ("b", "alpha", "app: db"),
    ("c", "beta", "app: web"),
    ("d", "beta", "app: client"),
];
/// The ports every pod serves; 8081 is also the named port `alt`.
const PORTS: [u16; 2] = [80, 8081];
/// The node as a source (always allowed in).
const NODE: &str = "node";

/// The Namespace and Pod objects, each pod with its address in
/// `status.podIPs` (what kubelet writes; other nodes find remote pods'
/// addresses there).
fn objects(ips: &[String]) -> String {
    let mut y = String::from(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: alpha, labels: {team: x}}\n---\n\
         apiVersion: v1\nkind: Namespace\nmetadata: {name: beta, labels: {team: y}}\n",
    );
    for ((name, ns, labels), ip) in PODS.iter().zip(ips) {
        y += &format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{{labels}}}}}\n\
             spec:\n  containers:\n  - name: srv\n    image: busybox\n    ports: [{{name: alt, containerPort: 8081}}, {{containerPort: 80}}]\n\
             status: {{podIPs: [{{ip: '{ip}'}}]}}\n"
        );
    }
    y
}

fn ctl_ok(node: &Node, args: &[&str]) -> String {
    node.ferryctl_ok(args)
}

fn apply(node: &Node, name: &str, yaml: &str, verb: &str) {
    let file = node.dir.path.join(format!("{name}.yaml"));
    fs::write(&file, yaml).unwrap();
    ctl_ok(node, &[verb, "-f", &file.display().to_string()]);
}

/// How many endpoints the nodes' dataplanes hold a policy for.
fn policed(nodes: &[&Node]) -> usize {
    nodes
        .iter()
        .map(|n| {
            ferry_api::client::tables(&n.dataplane_socket())
                .map(|t| t.policies.len())
                .unwrap_or(usize::MAX / 8)
        })
        .sum()
}

fn wait_policed(nodes: &[&Node], n: usize, what: &str) {
    let ok = wait_until(Duration::from_secs(10), || policed(nodes) == n);
    assert!(
        ok,
        "{what}: the dataplanes police {} endpoints, wanted {n}\n{}",
        policed(nodes),
        policies_text(nodes)
    );
}

fn policies_text(nodes: &[&Node]) -> String {
    nodes
        .iter()
        .map(|n| String::from_utf8_lossy(&n.ferryctl(&["get", "policies"]).stdout).into_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

/// A `self-server` in `ns` on `port` for 300 s at most.
fn server(ns: &str, port: u16) -> ChildGuard {
    let mut child = tcpcheck_in(ns, &["self-server", &format!("0.0.0.0:{port}"), "300"]);
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).unwrap();
    assert_eq!(line.trim(), "listening", "server in {ns}:{port}");
    ChildGuard::new(child)
}

type Matrix = BTreeMap<(String, String, u16), bool>;

/// Who reaches whom: every source (the pods and the node) to every other
/// pod on every port, probed at once (a denied connection times out).
fn matrix(sources: &[(String, String)], pods: &[(String, String)]) -> Matrix {
    let mut probes = Vec::new();
    for (from, ns) in sources {
        for (to, ip) in pods {
            if from == to {
                continue;
            }
            for port in PORTS {
                let child = tcpcheck_in(ns, &["ask", &format!("{ip}:{port}")]);
                probes.push(((from.clone(), to.clone(), port), ChildGuard::new(child)));
            }
        }
    }
    probes
        .into_iter()
        .map(|(k, c)| (k, c.finish(Duration::from_secs(15)).status.success()))
        .collect()
}

fn show(m: &Matrix) -> String {
    m.iter()
        .map(|((f, t, p), ok)| format!("  {f} -> {t}:{p} {}", if *ok { "ok" } else { "denied" }))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A scenario: its policies (YAML, `{d}` standing for pod d's address and
/// `{cidr}` for the pods' /16), how many endpoints they police, and who
/// may reach whom (`(from, to, port)`; the node always).
struct Scenario {
    name: &'static str,
    yaml: &'static str,
    policed: usize,
    allowed: fn(&str, &str, u16) -> bool,
}

const DENY_ALL_ALPHA: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: alpha}
spec:
  podSelector: {}
  policyTypes: [Ingress]
";

fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "deny-all ingress in a namespace",
            yaml: DENY_ALL_ALPHA,
            policed: 2,
            allowed: |_, to, _| !matches!(to, "a" | "b"),
        },
        Scenario {
            name: "allow from a namespace (beside deny-all)",
            yaml: "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: alpha}
spec:
  podSelector: {}
  policyTypes: [Ingress]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-beta, namespace: alpha}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {team: y}}}]
",
            policed: 2,
            allowed: |from, to, _| match to {
                "a" => matches!(from, "c" | "d"),
                "b" => false,
                _ => true,
            },
        },
        Scenario {
            name: "allow from pods with a label in any namespace",
            yaml: "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-clients, namespace: alpha}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{namespaceSelector: {}, podSelector: {matchExpressions: [{key: app, operator: In, values: [client]}]}}]
",
            policed: 1,
            allowed: |from, to, _| to != "a" || from == "d",
        },
        Scenario {
            name: "ipBlock with except",
            yaml: "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: cidr, namespace: alpha}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{ipBlock: {cidr: '{cidr}', except: ['{d}/32']}}]
",
            policed: 1,
            allowed: |from, to, _| to != "a" || from != "d",
        },
        Scenario {
            name: "port ranges (endPort) and named ports",
            yaml: "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: range, namespace: alpha}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - ports: [{protocol: TCP, port: 8080, endPort: 8085}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: named, namespace: alpha}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - ports: [{port: alt}]
",
            policed: 2,
            allowed: |_, to, port| !matches!(to, "a" | "b") || port == 8081,
        },
        Scenario {
            name: "egress deny-all with an allow",
            yaml: "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client-egress, namespace: beta}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
  egress:
  - to: [{namespaceSelector: {matchLabels: {team: x}}, podSelector: {matchLabels: {app: web}}}]
    ports: [{port: 80}]
",
            policed: 1,
            allowed: |from, to, port| from != "d" || (to == "a" && port == 80),
        },
    ]
}

/// Where the nodes keep the objects.
#[derive(Clone, Copy, PartialEq)]
enum Store {
    /// Each node its own embedded store: every write goes to every node.
    PerNode,
    /// One etcd: each write goes to one node's ferryd (a different one
    /// each time) and every node follows it.
    Shared,
}

/// `verb` (apply/delete) `yaml` as write number `turn`.
fn write(nodes: &[&Node], store: Store, turn: usize, name: &str, yaml: &str, verb: &str) {
    match store {
        Store::PerNode => nodes.iter().for_each(|n| apply(n, name, yaml, verb)),
        Store::Shared => apply(nodes[turn % nodes.len()], name, yaml, verb),
    }
}

/// Every scenario on `nodes` with `pods` (in `PODS` order) and, when
/// given, the node namespace that is a source too (a pod's own node is
/// always let in).
fn check_scenarios(nodes: &[&Node], store: Store, pods: &[&Pod], node_source: Option<&str>) {
    let ips: Vec<String> = pods.iter().map(|p| p.ip.clone()).collect();
    write(nodes, store, 0, "objects", &objects(&ips), "apply");
    let targets: Vec<(String, String)> = PODS
        .iter()
        .zip(pods)
        .map(|((n, ..), p)| (n.to_string(), p.ip.clone()))
        .collect();
    let mut sources: Vec<(String, String)> = PODS
        .iter()
        .zip(pods)
        .map(|((n, ..), p)| (n.to_string(), p.ns.name.clone()))
        .collect();
    if let Some(ns) = node_source {
        sources.push((NODE.to_string(), ns.to_string()));
    }
    let everyone = |_: &str, _: &str, _: u16| true;
    let expect = |what: &str, allowed: &dyn Fn(&str, &str, u16) -> bool| {
        let got = matrix(&sources, &targets);
        let want: Matrix = got
            .keys()
            .map(|(f, t, p)| ((f.clone(), t.clone(), *p), f == NODE || allowed(f, t, *p)))
            .collect();
        assert_eq!(
            got,
            want,
            "{what}: got\n{}\nwanted\n{}\n{}",
            show(&got),
            show(&want),
            policies_text(nodes)
        );
    };
    expect("before any policy", &everyone);

    let d_ip = &targets[3].1;
    let cidr = {
        let o: Vec<&str> = d_ip.split('.').collect();
        format!("{}.{}.0.0/16", o[0], o[1])
    };
    for (i, s) in scenarios().into_iter().enumerate() {
        let yaml = s.yaml.replace("{d}", d_ip).replace("{cidr}", &cidr);
        write(nodes, store, 2 * i + 1, "policy", &yaml, "apply");
        wait_policed(nodes, s.policed, s.name);
        expect(s.name, &s.allowed);
        write(nodes, store, 2 * i + 2, "policy", &yaml, "delete");
        wait_policed(nodes, 0, s.name);
        expect(&format!("{} deleted", s.name), &everyone);
    }
}

#[test]
fn network_policy_scenarios_hold_on_the_full_matrix() {
    let node = Node::start("fypol", NodeOpts::default());
    let pods: Vec<Pod> = PODS
        .iter()
        .enumerate()
        .map(|(i, (name, ns, _))| node.add_pod_as(i as u32 + 1, (ns, name), &node.conf("1.0.0")))
        .collect();
    let _servers: Vec<ChildGuard> = pods
        .iter()
        .flat_map(|p| PORTS.map(|port| server(&p.ns.name, port)))
        .collect();
    let refs: Vec<&Pod> = pods.iter().collect();
    check_scenarios(&[&node], Store::PerNode, &refs, Some(&node.ns.name));

    // Denials are counted on the policed pod: apply deny-all once more and
    // probe a from b.
    apply(&node, "policy", DENY_ALL_ALPHA, "apply");
    wait_policed(&[&node], 2, "deny-all again");
    let (b_ns, a_ip) = (&pods[1].ns.name, &pods[0].ip);
    let probe = ChildGuard::new(tcpcheck_in(b_ns, &["ask", &format!("{a_ip}:80")]));
    assert!(!probe.finish(Duration::from_secs(15)).status.success());
    let a_port = node.port_of(&pods[0]);
    assert!(
        a_port["drops"]["policy_denied_ingress"]
            .as_u64()
            .unwrap_or(0)
            >= 1,
        "{a_port}"
    );
    let drops = ctl_ok(&node, &["drops"]);
    assert!(drops.contains("policy_denied_ingress"), "{drops}");
}

/// The pods of the three-node tests: a and d on node 1, b on node 2, c on
/// node 3, each serving `PORTS`, every pair having reached the other once
/// (the peers' MACs resolved).
fn three_node_pods(c: &itest::cluster::Cluster) -> (Vec<Pod>, Vec<ChildGuard>) {
    let placement = [1u32, 2, 3, 1];
    let pods: Vec<Pod> = PODS
        .iter()
        .zip(placement)
        .enumerate()
        .map(|(i, ((name, ns, _), at))| {
            let n = c.node(at);
            n.add_pod_as(i as u32 + 1, (ns, name), &n.conf("1.0.0"))
        })
        .collect();
    let servers: Vec<ChildGuard> = pods
        .iter()
        .flat_map(|p| PORTS.map(|port| server(&p.ns.name, port)))
        .collect();
    for a in &pods {
        for b in &pods {
            if a.ip != b.ip {
                assert!(
                    wait_until(Duration::from_secs(10), || a.ping(&b.ip, 1)),
                    "{} cannot reach {}",
                    a.ip,
                    b.ip
                );
            }
        }
    }
    (pods, servers)
}

/// The same table across three nodes over VXLAN, each node holding its
/// own copy of the objects: every rule meets pods of other nodes (matched
/// by their Pod objects' addresses), ingress judged on the receiver's
/// node and egress on the sender's.
#[test]
fn network_policy_scenarios_hold_across_three_nodes() {
    use itest::cluster::{Cluster, ClusterOpts, Overlay};
    let c = Cluster::start("fypo3", ClusterOpts::new(3, Some(Overlay::Vxlan)));
    let (pods, _servers) = three_node_pods(&c);
    let nodes: Vec<&Node> = (1..=3).map(|i| &c.node(i).node).collect();
    let refs: Vec<&Pod> = pods.iter().collect();
    check_scenarios(&nodes, Store::PerNode, &refs, None);
}

/// A Service `bulk` at 10.96.0.11 on `backend`: port 80 to the transfer's
/// receiver (9000), port 81 to the pod's server on 80.
fn bulk_service(backend: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: bulk, namespace: alpha}}\n\
         spec:\n  clusterIP: 10.96.0.11\n  ports: [{{name: data, port: 80, targetPort: 9000}}, {{name: probe, port: 81, targetPort: 80}}]\n\
         ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: bulk-1, namespace: alpha, labels: {{kubernetes.io/service-name: bulk}}}}\n\
         addressType: IPv4\nports: [{{name: data, port: 9000, protocol: TCP}}, {{name: probe, port: 80, protocol: TCP}}]\n\
         endpoints:\n- addresses: ['{backend}']\n  conditions: {{ready: true}}\n"
    )
}

/// Whether a TCP connection from `ns` to `dst` is answered.
fn reaches(ns: &str, dst: &str) -> bool {
    ChildGuard::new(tcpcheck_in(ns, &["ask", dst]))
        .finish(Duration::from_secs(15))
        .status
        .success()
}

/// Cluster mode: the objects in one etcd, each write through a different
/// node's ferryd and every node following it. The scenario table holds
/// on all three nodes; then a ClusterIP written through node 2 (its
/// backend b on node 2, the client d on node 1) carries a paced transfer
/// while a deny-all policy on b's namespace is applied through node 3 and
/// deleted through node 1: new connections are refused meanwhile, the
/// established flow runs on and arrives whole.
#[test]
fn policies_and_services_through_etcd_hold_on_every_node_and_under_traffic() {
    use itest::cluster::{Cluster, ClusterOpts, Overlay};
    let c = Cluster::start(
        "fypoe",
        ClusterOpts {
            node_config: "service_cidrs = [\"10.96.0.0/12\"]\n".into(),
            ..ClusterOpts::with_etcd(3, Overlay::Vxlan, false)
        },
    );
    let (pods, _servers) = three_node_pods(&c);
    let nodes: Vec<&Node> = (1..=3).map(|i| &c.node(i).node).collect();
    let refs: Vec<&Pod> = pods.iter().collect();
    check_scenarios(&nodes, Store::Shared, &refs, None);

    let (b, d) = (&pods[1], &pods[3]);
    apply(nodes[1], "bulk", &bulk_service(&b.ip), "apply");
    for n in &nodes {
        let ok = wait_until(Duration::from_secs(10), || {
            ferry_api::client::tables(&n.dataplane_socket()).is_ok_and(|t| {
                t.services
                    .iter()
                    .filter(|p| p.vip.to_string() == "10.96.0.11" && p.backends.len() == 1)
                    .count()
                    == 2
            })
        });
        assert!(
            ok,
            "bulk is not in every dataplane\n{}",
            ctl_ok(n, &["get", "services"])
        );
    }
    assert!(
        reaches(&d.ns.name, "10.96.0.11:81"),
        "d reaches b through bulk"
    );

    let flow = {
        let (from, to) = (d.ns.name.clone(), b.ns.name.clone());
        std::thread::spawn(move || transfer_paced(&from, &to, 9000, "10.96.0.11:80", 91, 30))
    };
    std::thread::sleep(Duration::from_secs(1));
    apply(nodes[2], "deny", DENY_ALL_ALPHA, "apply");
    wait_policed(&nodes, 2, "deny-all under traffic");
    assert!(
        !flow.is_finished(),
        "the transfer ended before the policy was in place"
    );
    assert!(
        !reaches(&d.ns.name, "10.96.0.11:81"),
        "a new connection through bulk passed deny-all"
    );
    assert!(
        !reaches(&d.ns.name, &format!("{}:80", b.ip)),
        "a new connection to b passed deny-all"
    );
    apply(nodes[0], "deny", DENY_ALL_ALPHA, "delete");
    wait_policed(&nodes, 0, "deny-all deleted under traffic");
    assert!(reaches(&d.ns.name, "10.96.0.11:81"), "bulk open again");
    assert!(
        !flow.is_finished(),
        "the transfer ended before the policy was deleted"
    );
    flow.join().expect("the transfer under the policy changes");
}
