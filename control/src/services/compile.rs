//! Services and EndpointSlices compiled into the dataplane's service ports
//! (pure: objects in, [`ServicePort`]s out).
//!
//! Kubernetes' rules, as kube-proxy applies them:
//! - one [`ServicePort`] per (address of `spec.clusterIPs`, or
//!   `spec.clusterIP` when that list is absent; entry of `spec.ports`);
//!   headless (`clusterIP: None`), unassigned (no clusterIP: no apiserver
//!   allocates one here) and `ExternalName` services get none;
//! - its backends are the endpoints whose `conditions.ready` is not false,
//!   of every EndpointSlice labelled `kubernetes.io/service-name: <name>`
//!   in the service's namespace whose `addressType` is the clusterIP's
//!   family, at the port of the slice whose name (and protocol) is the
//!   service port's: a numeric or named `targetPort` is already resolved
//!   there by the endpoints controller. An endpoint's first address is
//!   its address (Kubernetes: the others are fungible; kube-proxy takes
//!   the first). The same backend in two slices counts once;
//! - `sessionAffinity: ClientIP` gives `affinity_timeout_s`, its
//!   `sessionAffinityConfig.clientIP.timeoutSeconds` or 10800 (3 h);
//! - a node port of a service with `externalTrafficPolicy: Local` reaches
//!   only the backends [`Here`] (`node_local`), the client's address kept;
//!   the ClusterIP reaches all of them (kube-proxy's semantics);
//! - TCP and UDP only: an SCTP port is left out and said so.
//!
//! Ids: `<namespace>/<name>:<port>/<protocol>` for an IPv4 clusterIP and
//! the same with `/v6` for an IPv6 one, whether or not the service is
//! dual-stack: an id that depends only on its own family stays the same
//! when a service gains or loses its other family, so such a change is an
//! upsert of one port, not a remove and an add of the other.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ferry_api::table::{Backend, L4Proto, ServicePort};
use ipnet::IpNet;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::objects::SERVICE_NAME_LABEL;

/// Kubernetes' default `sessionAffinityConfig.clientIP.timeoutSeconds`.
pub const DEFAULT_AFFINITY_TIMEOUT_S: u32 = 10_800;

/// Which endpoints are this node's, for `externalTrafficPolicy: Local`:
/// an EndpointSlice endpoint whose `nodeName` is this node's name, or
/// whose address is one of this node's pods' (single-node mode has no
/// name; a slice written by hand may leave `nodeName` out).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Here {
    pub node_name: Option<String>,
    pub addrs: BTreeSet<IpAddr>,
}

impl Here {
    fn has(&self, node: Option<&str>, ip: &IpAddr) -> bool {
        self.addrs.contains(ip) || node.is_some() && node == self.node_name.as_deref()
    }
}

/// What [`compile`] made, and what it left out and why.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Compiled {
    /// By id.
    pub ports: Vec<ServicePort>,
    /// One line per service or port left out (headless, SCTP, ...).
    pub skipped: Vec<String>,
}

/// Which ClusterIPs a node takes: inside `service_cidrs` when any are
/// configured, and never inside the cluster's pod CIDRs (a ClusterIP that
/// is a pod's address would take that pod's traffic).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterIpRule {
    pub service_cidrs: Vec<IpNet>,
    pub pod_cidrs: Vec<IpNet>,
}

impl Compiled {
    /// Leave out the ports whose ClusterIP `rule` refuses, each with a
    /// line saying why.
    pub fn admit(mut self, rule: &ClusterIpRule) -> Compiled {
        let mut kept = Vec::with_capacity(self.ports.len());
        for p in self.ports {
            let why = if let Some(c) = rule.pod_cidrs.iter().find(|c| c.contains(&p.vip)) {
                Some(format!("inside the pod CIDR {c}"))
            } else if !rule.service_cidrs.is_empty()
                && !rule.service_cidrs.iter().any(|c| c.contains(&p.vip))
            {
                Some(format!("outside service_cidrs {:?}", rule.service_cidrs))
            } else {
                None
            };
            match why {
                Some(why) => self
                    .skipped
                    .push(format!("{}: clusterIP {} is {why}", p.id, p.vip)),
                None => kept.push(p),
            }
        }
        self.ports = kept;
        self
    }
}

fn protocol_of(p: Option<&str>) -> Option<L4Proto> {
    match p.unwrap_or("TCP") {
        "TCP" => Some(L4Proto::Tcp),
        "UDP" => Some(L4Proto::Udp),
        _ => None,
    }
}

/// The service ports of `services` with the backends of `slices`, Maglev
/// `seed` on each, `here` telling this node's backends apart. Objects are
/// taken as checked by [`super::objects::parse_file`]; anything still
/// unusable is skipped.
pub fn compile<'a>(
    services: impl IntoIterator<Item = &'a Service>,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    seed: u64,
    here: &Here,
) -> Compiled {
    // (namespace, service name) -> its slices.
    let mut by_service: BTreeMap<(&str, &str), Vec<&EndpointSlice>> = BTreeMap::new();
    for s in slices {
        let ns = s.metadata.namespace.as_deref().unwrap_or_default();
        if let Some(name) = s
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
        {
            by_service.entry((ns, name)).or_default().push(s);
        }
    }
    let mut out = Compiled::default();
    for svc in services {
        let ns = svc.metadata.namespace.as_deref().unwrap_or_default();
        let name = svc.metadata.name.as_deref().unwrap_or_default();
        let Some(spec) = &svc.spec else { continue };
        let who = format!("{ns}/{name}");
        if spec.type_.as_deref() == Some("ExternalName") {
            out.skipped.push(format!("{who}: ExternalName (DNS only)"));
            continue;
        }
        let ips: Vec<&str> = match (&spec.cluster_ips, &spec.cluster_ip) {
            (Some(ips), _) if !ips.is_empty() => ips.iter().map(String::as_str).collect(),
            (_, Some(ip)) => vec![ip.as_str()],
            _ => vec![],
        };
        if ips.first().is_some_and(|ip| *ip == "None") {
            out.skipped
                .push(format!("{who}: headless (clusterIP None)"));
            continue;
        }
        let ips: Vec<IpAddr> = ips.iter().filter_map(|ip| ip.parse().ok()).collect();
        if ips.is_empty() {
            out.skipped
                .push(format!("{who}: no clusterIP (none is allocated here)"));
            continue;
        }
        let affinity_timeout_s =
            (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
                spec.session_affinity_config
                    .as_ref()
                    .and_then(|c| c.client_ip.as_ref())
                    .and_then(|c| c.timeout_seconds)
                    .and_then(|t| u32::try_from(t).ok())
                    .unwrap_or(DEFAULT_AFFINITY_TIMEOUT_S)
            });
        let slices = by_service
            .get(&(ns, name))
            .map(Vec::as_slice)
            .unwrap_or_default();
        let local = spec.external_traffic_policy.as_deref() == Some("Local");
        // Where each backend is: only a Local service asks.
        let nodes = if local {
            node_names(slices)
        } else {
            BTreeMap::new()
        };
        for p in spec.ports.iter().flatten() {
            let Some(protocol) = protocol_of(p.protocol.as_deref()) else {
                out.skipped.push(format!(
                    "{who}: port {} {}: ferry serves TCP and UDP only",
                    p.port,
                    p.protocol.as_deref().unwrap_or_default()
                ));
                continue;
            };
            let Ok(port) = u16::try_from(p.port) else {
                continue;
            };
            let port_name = p.name.as_deref().unwrap_or_default();
            let exposed = matches!(spec.type_.as_deref(), Some("NodePort" | "LoadBalancer"));
            let node_port = p
                .node_port
                .filter(|_| exposed)
                .and_then(|n| u16::try_from(n).ok());
            for &vip in &ips {
                let family = if vip.is_ipv4() { "" } else { "/v6" };
                let node_port = node_port.filter(|_| vip.is_ipv4());
                let all = backends(slices, vip.is_ipv4(), port_name, protocol);
                let node_local = (local && node_port.is_some()).then(|| {
                    all.iter()
                        .filter(|b| here.has(nodes.get(&b.ip).copied().flatten(), &b.ip))
                        .cloned()
                        .collect()
                });
                out.ports.push(ServicePort {
                    id: format!("{who}:{port}/{}{family}", protocol.name()),
                    vip,
                    port,
                    protocol,
                    backends: all,
                    affinity_timeout_s,
                    seed,
                    node_port,
                    node_local,
                });
            }
        }
    }
    out.ports.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

/// Each endpoint address of `slices` (its first) and the `nodeName` it is on.
fn node_names<'a>(slices: &[&'a EndpointSlice]) -> BTreeMap<IpAddr, Option<&'a str>> {
    let mut out = BTreeMap::new();
    for e in slices.iter().flat_map(|s| &s.endpoints) {
        if let Some(ip) = e.addresses.first().and_then(|a| a.parse::<IpAddr>().ok()) {
            out.insert(ip, e.node_name.as_deref());
        }
    }
    out
}

/// The ready endpoints of `slices` of one family at the slice port named
/// `port_name` with `protocol`, sorted, each once.
fn backends(
    slices: &[&EndpointSlice],
    v4: bool,
    port_name: &str,
    protocol: L4Proto,
) -> Vec<Backend> {
    let family = if v4 { "IPv4" } else { "IPv6" };
    let mut out = BTreeSet::new();
    for s in slices.iter().filter(|s| s.address_type == family) {
        let port = s.ports.iter().flatten().find(|sp| {
            sp.name.as_deref().unwrap_or_default() == port_name
                && protocol_of(sp.protocol.as_deref()) == Some(protocol)
        });
        let Some(port) = port
            .and_then(|sp| sp.port)
            .and_then(|p| u16::try_from(p).ok())
        else {
            continue;
        };
        for e in &s.endpoints {
            if e.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                continue;
            }
            let Some(ip) = e.addresses.first().and_then(|a| a.parse::<IpAddr>().ok()) else {
                continue;
            };
            if ip.is_ipv4() == v4 {
                out.insert(Backend { ip, port });
            }
        }
    }
    out.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::objects::{parse_file, Object};

    /// Services and slices of a YAML text.
    fn objects(yaml: &str) -> (Vec<Service>, Vec<EndpointSlice>) {
        let (mut svcs, mut slices) = (Vec::new(), Vec::new());
        for o in parse_file("test.yaml", yaml).unwrap() {
            match o {
                Object::Service(s) => svcs.push(*s),
                Object::EndpointSlice(s) => slices.push(*s),
                _ => {}
            }
        }
        (svcs, slices)
    }

    fn run(yaml: &str) -> Compiled {
        let (svcs, slices) = objects(yaml);
        compile(&svcs, &slices, 7, &Here::default())
    }

    fn b(ip: &str, port: u16) -> Backend {
        Backend {
            ip: ip.parse().unwrap(),
            port,
        }
    }

    const WEB: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: 10.96.0.10
  ports:
  - {name: http, port: 80, targetPort: 8080}
  - {name: dns, port: 53, protocol: UDP, targetPort: dns}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abc
  namespace: default
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports:
- {name: http, port: 8080}
- {name: dns, port: 5353, protocol: UDP}
endpoints:
- addresses: [10.88.0.2]
  conditions: {ready: true}
- addresses: [10.88.0.3]
- addresses: [10.88.0.4]
  conditions: {ready: false}
"#;

    #[test]
    fn named_ports_take_the_slice_port_of_their_name_and_skip_not_ready() {
        let c = run(WEB);
        assert!(c.skipped.is_empty(), "{:?}", c.skipped);
        let ids: Vec<&str> = c.ports.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(ids, ["default/web:53/UDP", "default/web:80/TCP"]);
        let dns = &c.ports[0];
        assert_eq!(dns.protocol, L4Proto::Udp);
        assert_eq!(
            dns.backends,
            vec![b("10.88.0.2", 5353), b("10.88.0.3", 5353)]
        );
        let http = &c.ports[1];
        assert_eq!(http.vip, "10.96.0.10".parse::<IpAddr>().unwrap());
        assert_eq!((http.port, http.seed), (80, 7));
        assert_eq!(
            http.backends,
            vec![b("10.88.0.2", 8080), b("10.88.0.3", 8080)]
        );
        assert_eq!(http.affinity_timeout_s, None);
    }

    /// A table of one-service cases: (what, YAML, expected ids with their
    /// backends, how many skipped).
    #[test]
    fn compile_rules() {
        let svc = |spec: &str| {
            format!("apiVersion: v1\nkind: Service\nmetadata: {{name: s, namespace: ns}}\nspec:\n{spec}\n")
        };
        let slice = |name: &str, family: &str, ns: &str, svc: &str, body: &str| {
            format!(
                "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  namespace: {ns}\n  labels: {{kubernetes.io/service-name: {svc}}}\naddressType: {family}\n{body}\n"
            )
        };
        let v4_body =
            "ports: [{port: 9000}]\nendpoints:\n- addresses: [10.1.0.1]\n- addresses: [10.1.0.2]";
        let v6_body = "ports: [{port: 9000}]\nendpoints:\n- addresses: [\"fd00::1\"]";
        type Case<'a> = (&'a str, String, Vec<(&'a str, Vec<Backend>)>, usize);
        let cases: Vec<Case> = vec![
            (
                "unnamed port, one slice",
                svc("  clusterIP: 10.96.0.1\n  ports: [{port: 80}]") + &slice("a", "IPv4", "ns", "s", v4_body),
                vec![("ns/s:80/TCP", vec![b("10.1.0.1", 9000), b("10.1.0.2", 9000)])],
                0,
            ),
            (
                "no slice: a port without backends (refused by the dataplane)",
                svc("  clusterIP: 10.96.0.1\n  ports: [{port: 80}]"),
                vec![("ns/s:80/TCP", vec![])],
                0,
            ),
            (
                "slices of another service or namespace do not count",
                svc("  clusterIP: 10.96.0.1\n  ports: [{port: 80}]")
                    + &slice("a", "IPv4", "other", "s", v4_body)
                    + &slice("b", "IPv4", "ns", "t", v4_body),
                vec![("ns/s:80/TCP", vec![])],
                0,
            ),
            (
                "two slices merge, duplicates once",
                svc("  clusterIP: 10.96.0.1\n  ports: [{port: 80}]")
                    + &slice("a", "IPv4", "ns", "s", v4_body)
                    + &slice("b", "IPv4", "ns", "s", "ports: [{port: 9000}]\nendpoints:\n- addresses: [10.1.0.2]\n- addresses: [10.1.0.3]"),
                vec![("ns/s:80/TCP", vec![b("10.1.0.1", 9000), b("10.1.0.2", 9000), b("10.1.0.3", 9000)])],
                0,
            ),
            (
                "a slice port of another name does not match",
                svc("  clusterIP: 10.96.0.1\n  ports: [{port: 80, name: web}]")
                    + &slice("a", "IPv4", "ns", "s", v4_body),
                vec![("ns/s:80/TCP", vec![])],
                0,
            ),
            (
                "a slice port of another protocol does not match",
                svc("  clusterIP: 10.96.0.1\n  ports: [{port: 80, protocol: UDP}]")
                    + &slice("a", "IPv4", "ns", "s", v4_body),
                vec![("ns/s:80/UDP", vec![])],
                0,
            ),
            (
                "dual stack: one port per family, each with its family's slices",
                svc("  clusterIP: 10.96.0.1\n  clusterIPs: [10.96.0.1, \"fd00:96::1\"]\n  ipFamilies: [IPv4, IPv6]\n  ports: [{port: 80}]")
                    + &slice("a", "IPv4", "ns", "s", v4_body)
                    + &slice("b", "IPv6", "ns", "s", v6_body),
                vec![
                    ("ns/s:80/TCP", vec![b("10.1.0.1", 9000), b("10.1.0.2", 9000)]),
                    ("ns/s:80/TCP/v6", vec![b("fd00::1", 9000)]),
                ],
                0,
            ),
            (
                "IPv6 single stack",
                svc("  clusterIP: \"fd00:96::1\"\n  ports: [{port: 80}]")
                    + &slice("a", "IPv4", "ns", "s", v4_body)
                    + &slice("b", "IPv6", "ns", "s", v6_body),
                vec![("ns/s:80/TCP/v6", vec![b("fd00::1", 9000)])],
                0,
            ),
            (
                "headless",
                svc("  clusterIP: None\n  ports: [{port: 80}]") + &slice("a", "IPv4", "ns", "s", v4_body),
                vec![],
                1,
            ),
            (
                "ExternalName",
                svc("  type: ExternalName\n  externalName: example.com"),
                vec![],
                1,
            ),
            (
                "no clusterIP assigned",
                svc("  ports: [{port: 80}]"),
                vec![],
                1,
            ),
            (
                "FQDN slices are ignored",
                svc("  clusterIP: 10.96.0.1\n  ports: [{port: 80}]")
                    + &slice("a", "FQDN", "ns", "s", "ports: [{port: 9000}]\nendpoints:\n- addresses: [example.com]"),
                vec![("ns/s:80/TCP", vec![])],
                0,
            ),
        ];
        for (what, yaml, want, skipped) in cases {
            let c = run(&yaml);
            let got: Vec<(&str, Vec<Backend>)> = c
                .ports
                .iter()
                .map(|p| (p.id.as_str(), p.backends.clone()))
                .collect();
            assert_eq!(got, want, "{what}");
            assert_eq!(c.skipped.len(), skipped, "{what}: {:?}", c.skipped);
        }
    }

    #[test]
    fn client_ip_affinity_takes_its_timeout_or_kubernetes_default() {
        let yaml = |cfg: &str| {
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: s, namespace: ns}}\nspec:\n  clusterIP: 10.96.0.1\n  sessionAffinity: ClientIP\n{cfg}  ports: [{{port: 80}}]\n"
            )
        };
        let c = run(&yaml(""));
        assert_eq!(
            c.ports[0].affinity_timeout_s,
            Some(DEFAULT_AFFINITY_TIMEOUT_S)
        );
        let c = run(&yaml(
            "  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}\n",
        ));
        assert_eq!(c.ports[0].affinity_timeout_s, Some(60));
    }

    #[test]
    fn node_ports_come_with_type_nodeport_or_loadbalancer_only() {
        let yaml = |kind: &str| {
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: s, namespace: ns}}\nspec:\n  type: {kind}\n  clusterIPs: [10.96.0.1, \"fd00:96::1\"]\n  ports: [{{port: 80, nodePort: 30080}}]\n"
            )
        };
        for kind in ["NodePort", "LoadBalancer"] {
            let c = run(&yaml(kind));
            let v4 = c.ports.iter().find(|p| p.vip.is_ipv4()).unwrap();
            let v6 = c.ports.iter().find(|p| p.vip.is_ipv6()).unwrap();
            assert_eq!((v4.node_port, v6.node_port), (Some(30080), None), "{kind}");
        }
        let c = run(&yaml("ClusterIP"));
        assert!(c.ports.iter().all(|p| p.node_port.is_none()));
    }

    #[test]
    fn external_traffic_policy_local_keeps_this_nodes_backends_for_the_node_port() {
        let yaml = |kind: &str, policy: &str| {
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: s, namespace: ns}}\n\
                 spec:\n  type: {kind}\n  externalTrafficPolicy: {policy}\n  clusterIP: 10.96.0.1\n  \
                 ports: [{{name: p, port: 80, targetPort: 8080, nodePort: 30080}}]\n---\n\
                 apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
                 metadata: {{name: s-1, namespace: ns, labels: {{kubernetes.io/service-name: s}}}}\n\
                 addressType: IPv4\nports: [{{name: p, port: 8080}}]\nendpoints:\n\
                 - {{addresses: [10.244.1.5], nodeName: n1}}\n\
                 - {{addresses: [10.244.1.6]}}\n\
                 - {{addresses: [10.244.2.7], nodeName: n2}}\n\
                 - {{addresses: [10.244.1.8], nodeName: n1, conditions: {{ready: false}}}}\n"
            )
        };
        let here = Here {
            node_name: Some("n1".into()),
            addrs: ["10.244.1.6".parse().unwrap()].into(),
        };
        let compiled = |kind: &str, policy: &str| {
            let (svcs, slices) = objects(&yaml(kind, policy));
            compile(&svcs, &slices, 7, &here).ports.remove(0)
        };
        let p = compiled("NodePort", "Local");
        // The ClusterIP keeps every ready backend; the node port this node's:
        // by nodeName (n1) or by a local pod's address (no nodeName).
        assert_eq!(p.backends.len(), 3);
        assert_eq!(
            p.node_local,
            Some(vec![b("10.244.1.5", 8080), b("10.244.1.6", 8080)])
        );
        let elsewhere = {
            let (svcs, slices) = objects(&yaml("NodePort", "Local"));
            let far = Here {
                node_name: Some("n3".into()),
                addrs: BTreeSet::new(),
            };
            compile(&svcs, &slices, 7, &far).ports.remove(0)
        };
        assert_eq!(
            elsewhere.node_local,
            Some(vec![]),
            "no backend here: dropped"
        );
        assert_eq!(compiled("NodePort", "Cluster").node_local, None);
        assert_eq!(
            compiled("LoadBalancer", "Local")
                .node_local
                .map(|v| v.len()),
            Some(2)
        );
        // No node port: nothing to be local about.
        let cip = compiled("ClusterIP", "Local");
        assert_eq!((cip.node_port, cip.node_local), (None, None));
    }

    #[test]
    fn cluster_ips_outside_the_service_cidrs_or_inside_pod_cidrs_are_left_out() {
        let yaml = |ip: &str| {
            format!("apiVersion: v1\nkind: Service\nmetadata: {{name: s, namespace: ns}}\nspec:\n  clusterIP: {ip}\n  ports: [{{port: 80}}]\n")
        };
        let rule = ClusterIpRule {
            service_cidrs: vec!["10.96.0.0/12".parse().unwrap()],
            pod_cidrs: vec!["10.88.0.0/16".parse().unwrap()],
        };
        assert_eq!(run(&yaml("10.96.0.1")).admit(&rule).ports.len(), 1);
        for (ip, why) in [
            ("10.88.0.5", "inside the pod CIDR"),
            ("192.168.1.1", "outside service_cidrs"),
        ] {
            let c = run(&yaml(ip)).admit(&rule);
            assert!(c.ports.is_empty(), "{ip}");
            assert!(
                c.skipped.iter().any(|s| s.contains(why)),
                "{ip}: {:?}",
                c.skipped
            );
        }
        // Without service_cidrs only the pod CIDRs are refused.
        let open = ClusterIpRule {
            service_cidrs: vec![],
            ..rule
        };
        assert_eq!(run(&yaml("192.168.1.1")).admit(&open).ports.len(), 1);
    }

    #[test]
    fn sctp_is_left_out_and_said_so() {
        // parse_file refuses SCTP; a watcher of a real API server would
        // deliver it, so compile skips it too.
        let (mut svcs, _) = objects(
            "apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: ns}\nspec:\n  clusterIP: 10.96.0.1\n  ports: [{port: 80, name: a}, {port: 81, name: b}]\n",
        );
        svcs[0].spec.as_mut().unwrap().ports.as_mut().unwrap()[1].protocol = Some("SCTP".into());
        let c = compile(&svcs, &[], 0, &Here::default());
        assert_eq!(c.ports.len(), 1);
        assert!(c.skipped[0].contains("TCP and UDP only"), "{:?}", c.skipped);
    }
}
