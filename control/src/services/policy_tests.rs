//! The compile rules as a case table over one small cluster: namespaces
//! `shop` (team a) and `other` (team b); local pods shop/web (app web,
//! dual-stack, container ports http 8080/TCP and dns 53/UDP), shop/db (app
//! db, role primary), an endpoint of shop without a Pod object, and one
//! without CNI arguments; a remote pod other/client.

use super::*;
use crate::services::objects::{parse_file, Object};

const CLUSTER: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {team: a}}
---
apiVersion: v1
kind: Namespace
metadata: {name: other, labels: {team: b}}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, labels: {app: web}}
spec:
  containers:
  - name: web
    ports: [{name: http, containerPort: 8080}, {name: dns, containerPort: 53, protocol: UDP}]
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: shop, labels: {app: db, role: primary}}
spec:
  containers: [{name: db, ports: [{name: pg, containerPort: 5432}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: other, labels: {app: client}}
spec:
  containers: [{name: c}]
status:
  podIP: 10.88.1.5
  podIPs: [{ip: 10.88.1.5}, {ip: "fd00::1:5"}]
"#;

const WEB: &str = "c1/eth0";
const DB: &str = "c2/eth0";
const NO_ARGS: &str = "c3/eth0";
const NO_OBJECT: &str = "c4/eth0";

fn local() -> Vec<LocalEndpoint> {
    let ep = |id: &str, ns: Option<&str>, name: Option<&str>, ips: &[&str]| LocalEndpoint {
        id: id.into(),
        namespace: ns.map(Into::into),
        name: name.map(Into::into),
        ips: ips.iter().map(|i| i.parse().unwrap()).collect(),
    };
    vec![
        ep(WEB, Some("shop"), Some("web"), &["10.88.0.2", "fd00::2"]),
        ep(DB, Some("shop"), Some("db"), &["10.88.0.3"]),
        ep(NO_ARGS, None, None, &["10.88.0.4"]),
        ep(NO_OBJECT, Some("shop"), Some("batch"), &["10.88.0.6"]),
    ]
}

fn run(policies: &str) -> CompiledPolicies {
    let objs = parse_file("t.yaml", &format!("{CLUSTER}---\n{policies}")).unwrap();
    let (mut pols, mut nss, mut pods) = (vec![], vec![], vec![]);
    for o in objs {
        match o {
            Object::NetworkPolicy(p) => pols.push(*p),
            Object::Namespace(n) => nss.push(*n),
            Object::Pod(p) => pods.push(*p),
            _ => {}
        }
    }
    let local = local();
    compile(&pols, &nss, &pods, &local)
}

fn host(ip: &str) -> PolicyPeer {
    PolicyPeer {
        cidr: IpNet::from(ip.parse::<IpAddr>().unwrap()),
        except: vec![],
    }
}

fn block(cidr: &str, except: &[&str]) -> PolicyPeer {
    PolicyPeer {
        cidr: cidr.parse().unwrap(),
        except: except.iter().map(|e| e.parse().unwrap()).collect(),
    }
}

fn range(protocol: u8, first: u16, last: u16) -> PortRange {
    PortRange {
        protocol,
        first,
        last,
    }
}

fn tcp(port: u16) -> PortRange {
    range(6, port, port)
}

fn from(peers: Vec<PolicyPeer>, ports: Vec<PortRange>) -> PolicyRule {
    PolicyRule {
        peers: Some(peers),
        ports,
    }
}

fn anywhere(ports: Vec<PortRange>) -> PolicyRule {
    PolicyRule { peers: None, ports }
}

fn pol(
    id: &str,
    ingress: Option<Vec<PolicyRule>>,
    egress: Option<Vec<PolicyRule>>,
) -> EndpointPolicy {
    EndpointPolicy {
        endpoint: id.into(),
        ingress,
        egress,
    }
}

/// A NetworkPolicy of `shop` named `name` with this spec (YAML, indented
/// two spaces).
fn np(name: &str, spec: &str) -> String {
    format!("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n{spec}\n")
}

fn web_ips() -> Vec<PolicyPeer> {
    vec![host("10.88.0.2"), host("fd00::2")]
}

#[test]
fn policies_compile_as_kubernetes_says() {
    let deny = || Some(vec![]);
    let cases: Vec<(&str, String, Vec<EndpointPolicy>)> = vec![
        (
            "deny-all ingress: every pod of the namespace, none without arguments",
            np("deny", "  podSelector: {}\n  policyTypes: [Ingress]"),
            vec![
                pol(WEB, deny(), None),
                pol(DB, deny(), None),
                pol(NO_OBJECT, deny(), None),
            ],
        ),
        (
            "allow from a namespace (a remote pod's status addresses, /128 for IPv6)",
            np("ns", "  podSelector: {matchLabels: {app: web}}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {team: b}}}]}]"),
            vec![pol(WEB, Some(vec![from(vec![host("10.88.1.5"), host("fd00::1:5")], vec![])]), None)],
        ),
        (
            "allow from pods with a label (local pod: its endpoint's addresses)",
            np("lbl", "  podSelector: {matchLabels: {app: db}}\n  ingress: [{from: [{podSelector: {matchLabels: {app: web}}}]}]"),
            vec![pol(DB, Some(vec![from(web_ips(), vec![])]), None)],
        ),
        (
            "both selectors: pods of the matching namespaces only; none matching is nothing",
            np("both", "  podSelector: {matchLabels: {app: db}}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {team: a}}, podSelector: {matchLabels: {app: web}}}]\n  - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: other}}, podSelector: {matchLabels: {app: web}}}]"),
            vec![pol(DB, Some(vec![from(web_ips(), vec![]), from(vec![], vec![])]), None)],
        ),
        (
            "namespaceSelector {} is every namespace's pods, never an endpoint without arguments",
            np("all", "  podSelector: {matchLabels: {app: db}}\n  ingress: [{from: [{namespaceSelector: {}}]}]"),
            vec![pol(DB, Some(vec![from(
                vec![host("10.88.0.2"), host("10.88.0.3"), host("10.88.0.6"), host("10.88.1.5"), host("fd00::2"), host("fd00::1:5")],
                vec![],
            )]), None)],
        ),
        (
            "ipBlock with except, prefixes truncated, and an IPv6 block",
            np("blk", "  podSelector: {matchLabels: {app: web}}\n  ingress: [{from: [{ipBlock: {cidr: 10.9.9.9/8, except: [10.2.0.0/16, 10.1.0.0/16]}}, {ipBlock: {cidr: \"fd00::/64\"}}]}]"),
            vec![pol(WEB, Some(vec![from(vec![block("10.0.0.0/8", &["10.1.0.0/16", "10.2.0.0/16"]), block("fd00::/64", &[])], vec![])]), None)],
        ),
        (
            "port numbers by protocol, sorted",
            np("ports", "  podSelector: {matchLabels: {app: web}}\n  ingress: [{ports: [{protocol: UDP, port: 53}, {port: 80}, {port: 80}]}]"),
            vec![pol(WEB, Some(vec![anywhere(vec![tcp(80), range(17, 53, 53)])]), None)],
        ),
        (
            "endPort ranges, a protocol without a port, SCTP",
            np("ranges", "  podSelector: {matchLabels: {app: web}}\n  ingress: [{ports: [{port: 8000, endPort: 8080}, {protocol: UDP}, {protocol: SCTP, port: 9}]}]"),
            vec![pol(WEB, Some(vec![anywhere(vec![range(6, 8000, 8080), range(17, 0, 65535), range(132, 9, 9)])]), None)],
        ),
        (
            "named ingress ports against the policed pod's containers; unresolvable: rule left out",
            np("named", "  podSelector: {}\n  ingress: [{ports: [{port: http}, {port: dns, protocol: UDP}, {port: pg}]}]"),
            vec![
                pol(WEB, Some(vec![anywhere(vec![tcp(8080), range(17, 53, 53)])]), None),
                pol(DB, Some(vec![anywhere(vec![tcp(5432)])]), None),
                pol(NO_OBJECT, deny(), None),
            ],
        ),
        (
            "named egress ports against the selected peers' containers, or every pod's",
            np("named-out", "  podSelector: {matchLabels: {app: db}}\n  policyTypes: [Egress]\n  egress:\n  - to: [{podSelector: {matchLabels: {app: web}}}]\n    ports: [{port: http}, {port: pg}]\n  - ports: [{port: pg}]"),
            vec![pol(DB, None, Some(vec![from(web_ips(), vec![tcp(8080)]), anywhere(vec![tcp(5432)])]))],
        ),
        (
            "egress deny-all with one allow (two policies unioned per direction)",
            format!("{}---\n{}", np("deny-out", "  podSelector: {}\n  policyTypes: [Egress]"),
                np("dns", "  podSelector: {matchLabels: {app: web}}\n  policyTypes: [Egress]\n  egress: [{to: [{ipBlock: {cidr: 10.96.0.0/12}}], ports: [{protocol: UDP, port: 53}]}]")),
            vec![
                pol(WEB, None, Some(vec![from(vec![block("10.96.0.0/12", &[])], vec![range(17, 53, 53)])])),
                pol(DB, None, deny()),
                pol(NO_OBJECT, None, deny()),
            ],
        ),
        (
            "policyTypes absent: Ingress, and Egress when there are egress rules",
            format!("{}---\n{}", np("in-only", "  podSelector: {matchLabels: {app: web}}\n  egress: []"),
                np("both-ways", "  podSelector: {matchLabels: {app: db}}\n  egress: [{}]")),
            vec![pol(WEB, deny(), None), pol(DB, deny(), Some(vec![anywhere(vec![])]))],
        ),
        (
            "policyTypes named: the other direction's rules are not looked at",
            np("out", "  podSelector: {matchLabels: {app: web}}\n  policyTypes: [Egress]\n  ingress: [{}]"),
            vec![pol(WEB, None, deny())],
        ),
        (
            "matchExpressions: In and DoesNotExist select; Exists and NotIn pick peers",
            np("expr", "  podSelector: {matchExpressions: [{key: app, operator: In, values: [web, db]}, {key: role, operator: DoesNotExist}]}\n  ingress:\n  - from: [{podSelector: {matchExpressions: [{key: role, operator: Exists}]}}]\n  - from: [{podSelector: {matchExpressions: [{key: app, operator: NotIn, values: [web]}]}}]"),
            vec![pol(WEB, Some(vec![
                from(vec![host("10.88.0.3")], vec![]),
                from(vec![host("10.88.0.3"), host("10.88.0.6")], vec![]),
            ]), None)],
        ),
        (
            "a pod no policy selects has no policy",
            np("none", "  podSelector: {matchLabels: {app: nobody}}"),
            vec![],
        ),
        (
            "two policies: the union of their rules, the same rule once",
            format!("{}---\n{}", np("a", "  podSelector: {matchLabels: {app: web}}\n  ingress: [{ports: [{port: 80}]}]"),
                np("b", "  podSelector: {}\n  ingress: [{ports: [{port: 443}]}, {ports: [{port: 80}]}]")),
            vec![
                pol(WEB, Some(vec![anywhere(vec![tcp(80)]), anywhere(vec![tcp(443)])]), None),
                pol(DB, Some(vec![anywhere(vec![tcp(443)]), anywhere(vec![tcp(80)])]), None),
                pol(NO_OBJECT, Some(vec![anywhere(vec![tcp(443)]), anywhere(vec![tcp(80)])]), None),
            ],
        ),
        (
            "a policy of another namespace selects nothing here",
            np("x", "  podSelector: {}").replace("namespace: shop", "namespace: other"),
            vec![],
        ),
    ];
    for (what, yaml, mut want) in cases {
        want.sort_by(|a, b| a.endpoint.cmp(&b.endpoint));
        let got = run(&yaml);
        assert_eq!(got.policies(), want, "{what}\nskipped: {:?}", got.skipped);
    }
}

#[test]
fn left_out_rules_say_why_and_every_endpoint_is_listed() {
    let c = run(&np(
        "named",
        "  podSelector: {}\n  ingress: [{ports: [{port: http}]}]\n  egress: [{to: [{podSelector: {matchLabels: {app: db}}}], ports: [{port: http}]}]",
    ));
    assert_eq!(
        c.skipped,
        [
            "shop/named: egress rule 1: named port(s) http match no container port; rule left out (it would match nothing)",
            "shop/named: ingress rule 1 for pod shop/batch: named port(s) http match no container port; rule left out (it would match nothing)",
            "shop/named: ingress rule 1 for pod shop/db: named port(s) http match no container port; rule left out (it would match nothing)",
        ]
    );
    let ids: Vec<&str> = c.endpoints.iter().map(|e| e.endpoint.as_str()).collect();
    assert_eq!(ids, [WEB, DB, NO_ARGS, NO_OBJECT]);
    let web = &c.endpoints[0];
    assert_eq!(
        (
            web.namespace.as_deref(),
            web.name.as_deref(),
            &web.selected_by[..]
        ),
        (Some("shop"), Some("web"), &["shop/named".to_string()][..])
    );
    assert_eq!(c.endpoints[2].policy, None, "no arguments: no selector");
    assert!(c.endpoints[2].selected_by.is_empty());
}

#[test]
fn label_selectors_match_as_kubernetes_does() {
    let labels: Labels = [("app", "web"), ("tier", "front")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let sel = |yaml: &str| -> LabelSelector { serde_yaml_ng::from_str(yaml).unwrap() };
    let cases = [
        ("{}", true),
        ("{matchLabels: {app: web}}", true),
        ("{matchLabels: {app: web, tier: back}}", false),
        ("{matchExpressions: [{key: app, operator: In, values: [db, web]}]}", true),
        ("{matchExpressions: [{key: app, operator: In, values: [db]}]}", false),
        ("{matchExpressions: [{key: env, operator: NotIn, values: [prod]}]}", true),
        ("{matchExpressions: [{key: app, operator: NotIn, values: [web]}]}", false),
        ("{matchExpressions: [{key: tier, operator: Exists}]}", true),
        ("{matchExpressions: [{key: env, operator: Exists}]}", false),
        ("{matchExpressions: [{key: env, operator: DoesNotExist}]}", true),
        ("{matchExpressions: [{key: app, operator: DoesNotExist}]}", false),
        ("{matchLabels: {app: web}, matchExpressions: [{key: tier, operator: In, values: [back]}]}", false),
        ("{matchExpressions: [{key: app, operator: Like, values: [web]}]}", false),
    ];
    for (yaml, want) in cases {
        assert_eq!(selects(&sel(yaml), &labels), want, "{yaml}");
    }
}
