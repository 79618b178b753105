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

fn objects() -> String {
    let mut y = String::from(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: alpha, labels: {team: x}}\n---\n\
         apiVersion: v1\nkind: Namespace\nmetadata: {name: beta, labels: {team: y}}\n",
    );
    for (name, ns, labels) in PODS {
        y += &format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{{labels}}}}}\n\
             spec:\n  containers:\n  - name: srv\n    image: busybox\n    ports: [{{name: alt, containerPort: 8081}}, {{containerPort: 80}}]\n"
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

/// How many endpoints the dataplane holds a policy for.
fn policed(node: &Node) -> usize {
    ferry_api::client::tables(&node.dataplane_socket())
        .map(|t| t.policies.len())
        .unwrap_or(usize::MAX)
}

fn wait_policed(node: &Node, n: usize, what: &str) {
    let ok = wait_until(Duration::from_secs(10), || policed(node) == n);
    assert!(
        ok,
        "{what}: the dataplane polices {} endpoints, wanted {n}\n{}\nferryd log:\n{}",
        policed(node),
        String::from_utf8_lossy(&node.ferryctl(&["get", "policies"]).stdout),
        node.ferryd.as_ref().unwrap().log_text()
    );
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

#[test]
fn network_policy_scenarios_hold_on_the_full_matrix() {
    let node = Node::start("fypol", NodeOpts::default());
    let pods: Vec<(&str, Pod)> = PODS
        .iter()
        .enumerate()
        .map(|(i, (name, ns, _))| {
            let pod = node.add_pod_as(i as u32 + 1, (ns, name), &node.conf("1.0.0"));
            (*name, pod)
        })
        .collect();
    let _servers: Vec<ChildGuard> = pods
        .iter()
        .flat_map(|(_, p)| PORTS.map(|port| server(&p.ns.name, port)))
        .collect();
    apply(&node, "objects", &objects(), "apply");

    let targets: Vec<(String, String)> = pods
        .iter()
        .map(|(n, p)| (n.to_string(), p.ip.clone()))
        .collect();
    let mut sources: Vec<(String, String)> = pods
        .iter()
        .map(|(n, p)| (n.to_string(), p.ns.name.clone()))
        .collect();
    sources.push((NODE.to_string(), node.ns.name.clone()));
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
            String::from_utf8_lossy(&node.ferryctl(&["get", "policies"]).stdout)
        );
    };
    expect("before any policy", &everyone);

    let d_ip = &targets[3].1;
    let cidr = {
        let o: Vec<&str> = d_ip.split('.').collect();
        format!("{}.{}.0.0/16", o[0], o[1])
    };
    for s in scenarios() {
        let yaml = s.yaml.replace("{d}", d_ip).replace("{cidr}", &cidr);
        apply(&node, "policy", &yaml, "apply");
        wait_policed(&node, s.policed, s.name);
        expect(s.name, &s.allowed);
        apply(&node, "policy", &yaml, "delete");
        wait_policed(&node, 0, s.name);
        expect(&format!("{} deleted", s.name), &everyone);
    }

    // Denials are counted on the policed pod: apply deny-all once more and
    // probe a from b.
    apply(&node, "policy", DENY_ALL_ALPHA, "apply");
    wait_policed(&node, 2, "deny-all again");
    let (b_ns, a_ip) = (&sources[1].1, &targets[0].1);
    let probe = ChildGuard::new(tcpcheck_in(b_ns, &["ask", &format!("{a_ip}:80")]));
    assert!(!probe.finish(Duration::from_secs(15)).status.success());
    let stats = node.stats();
    let a_port = stats["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| {
            p["endpoint"]
                .as_str()
                .is_some_and(|e| e.starts_with(&pods[0].1.container))
        })
        .cloned()
        .expect("pod a's port");
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
