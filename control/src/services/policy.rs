//! NetworkPolicies compiled into the dataplane's endpoint policies (pure:
//! objects and the node's endpoints in, [`EndpointPolicy`]s out).
//!
//! Kubernetes' rules (networking.k8s.io/v1), for each local endpoint:
//! - a policy selects the pods of its own namespace whose labels match
//!   `spec.podSelector` (empty: every pod of the namespace);
//! - `policyTypes`, when empty, is Kubernetes' default: `Ingress`, plus
//!   `Egress` when `spec.egress` has a rule. A direction some selecting
//!   policy names is isolated: only the union of those policies' rules for
//!   it allows anything (no rules: nothing); a direction none names allows
//!   everything (`None`);
//! - a rule without `from`/`to` (or an empty list) takes any address; else
//!   each peer is an `ipBlock` (a prefix less its `except`s), or the pods
//!   its selectors pick: `podSelector` alone in the policy's namespace,
//!   `namespaceSelector` alone every pod of the matching namespaces, both
//!   the matching pods of the matching namespaces, each pod as host
//!   prefixes of its addresses. Selectors that pick no pod leave the rule
//!   matching nothing (`Some` of no peers), never anything;
//! - a rule without `ports` takes every port; else each entry is a
//!   protocol (TCP when absent) and a port, a range up to `endPort`, every
//!   port when absent, or a container port's name: for ingress the policed
//!   pod's own containers, for egress the selected peers' (every known
//!   pod's when the rule has an `ipBlock` or no peers), the union of what
//!   they name. A rule whose ports all resolve to nothing is left out with
//!   a line (an empty port list would mean every port).
//!
//! Who a pod is: a local endpoint's namespace and name come from its CNI
//! arguments; its labels and container ports from the Pod object of that
//! namespace and name, its addresses from the endpoint (authoritative).
//! Pods of other nodes are their Pod objects, with `status.podIPs` (or
//! `status.podIP`). A namespace's labels are its Namespace object's plus
//! `kubernetes.io/metadata.name: <name>`, which Kubernetes sets on every
//! namespace (also without an object). An endpoint without a namespace is
//! picked by no selector; only `ipBlock`s match its addresses.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ferry_api::objects::EndpointPolicyView;
use ferry_api::table::{EndpointPolicy, PolicyPeer, PolicyRule, PortRange};
use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// The label Kubernetes gives every namespace: its own name.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

pub type Labels = BTreeMap<String, String>;

static NO_LABELS: Labels = Labels::new();

/// One endpoint of this node, as policy needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalEndpoint {
    /// The endpoint id (`<container id>/<ifname>`).
    pub id: String,
    /// `K8S_POD_NAMESPACE`, `K8S_POD_NAME`.
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub ips: Vec<IpAddr>,
}

/// What [`compile`] made of the node's endpoints.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompiledPolicies {
    /// Every local endpoint, by id, with its policy if one selects it.
    pub endpoints: Vec<EndpointPolicyView>,
    /// Rules left out, and why.
    pub skipped: Vec<String>,
}

impl CompiledPolicies {
    /// What the dataplane must hold: the policies of the selected
    /// endpoints, by endpoint id.
    pub fn policies(&self) -> Vec<EndpointPolicy> {
        self.endpoints
            .iter()
            .filter_map(|e| e.policy.clone())
            .collect()
    }
}

/// Whether `labels` satisfy `sel`: every `matchLabels` pair and every
/// `matchExpressions` requirement. An empty selector matches every set; a
/// requirement with an operator Kubernetes does not know matches none.
pub fn selects(sel: &LabelSelector, labels: &Labels) -> bool {
    let pairs = sel
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    pairs
        && sel.match_expressions.iter().flatten().all(|r| {
            let values = r.values.as_deref().unwrap_or_default();
            let value = labels.get(&r.key);
            match r.operator.as_str() {
                "In" => value.is_some_and(|v| values.contains(v)),
                "NotIn" => value.is_none_or(|v| !values.contains(v)),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                _ => false,
            }
        })
}

/// The IP protocol number of a policy's or container's protocol name
/// (TCP when absent).
fn protocol_number(p: Option<&str>) -> Option<u8> {
    match p.unwrap_or("TCP") {
        "TCP" => Some(6),
        "UDP" => Some(17),
        "SCTP" => Some(132),
        _ => None,
    }
}

/// A pod as policy sees it: a Pod object, local endpoints, or both.
struct PodView<'a> {
    namespace: &'a str,
    /// `namespace/name`, for lines about it.
    who: String,
    labels: &'a Labels,
    ips: BTreeSet<IpAddr>,
    object: Option<&'a Pod>,
}

impl PodView<'_> {
    /// The ports its containers name `name` with protocol `protocol`.
    fn named_ports<'s>(&'s self, name: &'s str, protocol: u8) -> impl Iterator<Item = u16> + 's {
        let containers = self.object.and_then(|p| p.spec.as_ref());
        containers
            .into_iter()
            .flat_map(|s| &s.containers)
            .flat_map(|c| c.ports.iter().flatten())
            .filter(move |p| {
                p.name.as_deref() == Some(name)
                    && protocol_number(p.protocol.as_deref()) == Some(protocol)
            })
            .filter_map(|p| u16::try_from(p.container_port).ok())
    }
}

/// Every pod known: Pod objects and local endpoints, with their
/// namespaces' labels.
struct Cluster<'a> {
    pods: Vec<PodView<'a>>,
    /// Endpoint id -> its pod (endpoints with a namespace only).
    local: BTreeMap<&'a str, usize>,
    namespaces: BTreeMap<&'a str, Labels>,
}

/// The addresses a Pod object's status gives.
fn status_ips(pod: &Pod) -> BTreeSet<IpAddr> {
    let Some(st) = &pod.status else {
        return BTreeSet::new();
    };
    match &st.pod_ips {
        Some(ips) if !ips.is_empty() => ips.iter().filter_map(|i| i.ip.parse().ok()).collect(),
        _ => st.pod_ip.iter().filter_map(|i| i.parse().ok()).collect(),
    }
}

impl<'a> Cluster<'a> {
    fn new(
        namespaces: impl IntoIterator<Item = &'a Namespace>,
        objects: impl IntoIterator<Item = &'a Pod>,
        local: &'a [LocalEndpoint],
    ) -> Cluster<'a> {
        let mut pods = Vec::new();
        let mut by_name: BTreeMap<(&'a str, &'a str), usize> = BTreeMap::new();
        for p in objects {
            let (Some(ns), Some(name)) = (&p.metadata.namespace, &p.metadata.name) else {
                continue;
            };
            by_name.insert((ns, name), pods.len());
            pods.push(PodView {
                namespace: ns,
                who: format!("{ns}/{name}"),
                labels: p.metadata.labels.as_ref().unwrap_or(&NO_LABELS),
                ips: BTreeSet::new(),
                object: Some(p),
            });
        }
        let remote = pods.len();
        let mut is_local = vec![false; remote];
        let mut by_id = BTreeMap::new();
        for e in local {
            let Some(ns) = e.namespace.as_deref() else {
                continue;
            };
            let known = e.name.as_deref().and_then(|n| by_name.get(&(ns, n)));
            let i = match known {
                Some(&i) => i,
                None => {
                    let i = pods.len();
                    if let Some(n) = e.name.as_deref() {
                        by_name.insert((ns, n), i);
                    }
                    pods.push(PodView {
                        namespace: ns,
                        who: format!("{ns}/{}", e.name.as_deref().unwrap_or("?")),
                        labels: &NO_LABELS,
                        ips: BTreeSet::new(),
                        object: None,
                    });
                    i
                }
            };
            if let Some(l) = is_local.get_mut(i) {
                *l = true;
            }
            pods[i].ips.extend(&e.ips);
            by_id.insert(e.id.as_str(), i);
        }
        // Another node's pod: its addresses are what its object says.
        for (p, local) in pods.iter_mut().zip(is_local) {
            if !local {
                p.ips = p.object.map(status_ips).unwrap_or_default();
            }
        }
        let mut labels: BTreeMap<&'a str, Labels> = BTreeMap::new();
        for n in namespaces {
            if let Some(name) = n.metadata.name.as_deref() {
                labels.insert(name, n.metadata.labels.clone().unwrap_or_default());
            }
        }
        for p in &pods {
            labels.entry(p.namespace).or_default();
        }
        for (name, l) in labels.iter_mut() {
            l.insert(NAMESPACE_NAME_LABEL.to_string(), name.to_string());
        }
        Cluster {
            pods,
            local: by_id,
            namespaces: labels,
        }
    }

    fn namespace_labels(&self, ns: &str) -> &Labels {
        self.namespaces.get(ns).unwrap_or(&NO_LABELS)
    }

    /// The pods a selector peer of a policy in `ns` picks.
    fn picked(&self, ns: &str, peer: &NetworkPolicyPeer) -> Vec<usize> {
        (0..self.pods.len())
            .filter(|&i| {
                let p = &self.pods[i];
                let ns_ok = match &peer.namespace_selector {
                    None => p.namespace == ns,
                    Some(s) => selects(s, self.namespace_labels(p.namespace)),
                };
                ns_ok
                    && peer
                        .pod_selector
                        .as_ref()
                        .is_none_or(|s| selects(s, p.labels))
            })
            .collect()
    }
}

/// A rule's peers, compiled once per rule.
struct Peers {
    /// `None`: any address.
    peers: Option<Vec<PolicyPeer>>,
    /// The pods whose containers name an egress rule's ports: `None` for
    /// every pod (no peers, or an `ipBlock` among them).
    pods: Option<Vec<usize>>,
}

fn host_prefix(ip: IpAddr) -> IpNet {
    IpNet::from(ip)
}

fn peers_of(
    cluster: &Cluster<'_>,
    ns: &str,
    peers: Option<&[NetworkPolicyPeer]>,
    warn: &mut dyn FnMut(String),
) -> Peers {
    let peers = peers.unwrap_or_default();
    if peers.is_empty() {
        return Peers {
            peers: None,
            pods: None,
        };
    }
    let mut out = Vec::new();
    let mut pods = BTreeSet::new();
    let mut any_block = false;
    for (i, peer) in peers.iter().enumerate() {
        if let Some(b) = &peer.ip_block {
            any_block = true;
            let Ok(cidr) = b.cidr.parse::<IpNet>() else {
                warn(format!(
                    "peer {}: ipBlock {:?} is not a CIDR",
                    i + 1,
                    b.cidr
                ));
                continue;
            };
            let mut except: Vec<IpNet> = b
                .except
                .iter()
                .flatten()
                .filter_map(|e| e.parse::<IpNet>().ok())
                .map(|e| e.trunc())
                .collect();
            except.sort();
            except.dedup();
            out.push(PolicyPeer {
                cidr: cidr.trunc(),
                except,
            });
        } else if peer.pod_selector.is_some() || peer.namespace_selector.is_some() {
            pods.extend(cluster.picked(ns, peer));
        } else {
            warn(format!("peer {}: no ipBlock and no selector", i + 1));
        }
    }
    for &p in &pods {
        out.extend(cluster.pods[p].ips.iter().map(|&ip| PolicyPeer {
            cidr: host_prefix(ip),
            except: vec![],
        }));
    }
    out.sort_by(|a, b| (a.cidr, &a.except).cmp(&(b.cidr, &b.except)));
    out.dedup();
    Peers {
        peers: Some(out),
        pods: (!any_block).then(|| pods.into_iter().collect()),
    }
}

/// A rule's port ranges; `named` gives the ports a container port name
/// resolves to for a protocol. `Err(why)`: the rule names ports and none
/// resolves, so it must match nothing (which no port list says: an empty
/// one is every port).
fn ports_of(
    ports: Option<&[NetworkPolicyPort]>,
    named: &dyn Fn(&str, u8) -> Vec<u16>,
    warn: &mut dyn FnMut(String),
) -> Result<Vec<PortRange>, String> {
    let ports = ports.unwrap_or_default();
    let mut out = Vec::new();
    let mut unresolved = Vec::new();
    for p in ports {
        let Some(protocol) = protocol_number(p.protocol.as_deref()) else {
            warn(format!("protocol {:?} is not TCP, UDP or SCTP", p.protocol));
            continue;
        };
        match &p.port {
            None => out.push(PortRange {
                protocol,
                first: 0,
                last: u16::MAX,
            }),
            Some(IntOrString::Int(n)) => {
                let first = u16::try_from(*n).ok();
                let last = p.end_port.map_or(first, |e| u16::try_from(e).ok());
                match (first, last) {
                    (Some(first), Some(last)) if first <= last => out.push(PortRange {
                        protocol,
                        first,
                        last,
                    }),
                    _ => warn(format!(
                        "port {n}{} is not a port range",
                        p.end_port.map(|e| format!("-{e}")).unwrap_or_default()
                    )),
                }
            }
            Some(IntOrString::String(name)) => {
                let found = named(name, protocol);
                if found.is_empty() {
                    unresolved.push(name.as_str());
                }
                out.extend(found.into_iter().map(|port| PortRange {
                    protocol,
                    first: port,
                    last: port,
                }));
            }
        }
    }
    out.sort();
    out.dedup();
    if !ports.is_empty() && out.is_empty() {
        return Err(if unresolved.is_empty() {
            "no usable port".to_string()
        } else {
            format!(
                "named port(s) {} match no container port",
                unresolved.join(", ")
            )
        });
    }
    Ok(out)
}

/// The rule of `peers` and `ports`, or a line saying why it is left out.
fn rule_of(
    peers: &Peers,
    ports: Result<Vec<PortRange>, String>,
    warn: &mut dyn FnMut(String),
) -> Option<PolicyRule> {
    match ports {
        Ok(ports) => Some(PolicyRule {
            peers: peers.peers.clone(),
            ports,
        }),
        Err(why) => {
            warn(format!("{why}; rule left out (it would match nothing)"));
            None
        }
    }
}

/// Kubernetes' defaulting of `policyTypes`: (ingress, egress).
fn directions(spec: &NetworkPolicySpec) -> (bool, bool) {
    match spec.policy_types.as_deref() {
        Some(t) if !t.is_empty() => (
            t.iter().any(|t| t == "Ingress"),
            t.iter().any(|t| t == "Egress"),
        ),
        _ => (true, spec.egress.as_ref().is_some_and(|e| !e.is_empty())),
    }
}

/// Append `rules` to a direction, once each (two policies may say the same).
fn union(into: &mut Option<Vec<PolicyRule>>, rules: Vec<PolicyRule>) {
    let into = into.get_or_insert_with(Vec::new);
    for r in rules {
        if !into.contains(&r) {
            into.push(r);
        }
    }
}

/// The endpoint policies of `local` under `policies`, with the pods of
/// `pods` and the namespaces of `namespaces`. Objects are taken as
/// checked by [`super::objects::parse_file`]; anything still unusable is
/// left out with a line.
pub fn compile<'a>(
    policies: impl IntoIterator<Item = &'a NetworkPolicy>,
    namespaces: impl IntoIterator<Item = &'a Namespace>,
    pods: impl IntoIterator<Item = &'a Pod>,
    local: &'a [LocalEndpoint],
) -> CompiledPolicies {
    let cluster = Cluster::new(namespaces, pods, local);
    let mut policies: Vec<&NetworkPolicy> = policies.into_iter().collect();
    policies.sort_by_key(|p| (&p.metadata.namespace, &p.metadata.name));
    let mut views: BTreeMap<&str, EndpointPolicyView> = local
        .iter()
        .map(|e| {
            let view = EndpointPolicyView {
                endpoint: e.id.clone(),
                namespace: e.namespace.clone(),
                name: e.name.clone(),
                selected_by: vec![],
                policy: None,
            };
            (e.id.as_str(), view)
        })
        .collect();
    let mut skipped = BTreeSet::new();
    let default_spec = NetworkPolicySpec::default();
    for pol in policies {
        let ns = pol.metadata.namespace.as_deref().unwrap_or_default();
        let who = format!("{ns}/{}", pol.metadata.name.as_deref().unwrap_or_default());
        // No spec reads as Kubernetes decodes it: an empty one.
        let spec = pol.spec.as_ref().unwrap_or(&default_spec);
        let everyone = LabelSelector::default();
        let selector = spec.pod_selector.as_ref().unwrap_or(&everyone);
        let selected: Vec<(&str, usize)> = cluster
            .local
            .iter()
            .filter(|(_, &p)| {
                let p = &cluster.pods[p];
                p.namespace == ns && selects(selector, p.labels)
            })
            .map(|(&id, &p)| (id, p))
            .collect();
        if selected.is_empty() {
            continue;
        }
        let (ingress, egress) = directions(spec);
        let in_rules = spec.ingress.as_deref().unwrap_or_default();
        let out_rules = spec.egress.as_deref().unwrap_or_default();
        let in_peers: Vec<Peers> = in_rules
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let mut warn = |w: String| {
                    skipped.insert(format!("{who}: ingress rule {}: {w}", i + 1));
                };
                peers_of(&cluster, ns, r.from.as_deref(), &mut warn)
            })
            .collect();
        // Egress rules do not depend on the policed pod: compiled once.
        let mut out_compiled = Vec::new();
        for (i, r) in out_rules.iter().enumerate() {
            let mut warn = |w: String| {
                skipped.insert(format!("{who}: egress rule {}: {w}", i + 1));
            };
            let peers = peers_of(&cluster, ns, r.to.as_deref(), &mut warn);
            let named = |name: &str, proto: u8| -> Vec<u16> {
                let all: Vec<usize>;
                let pods = match &peers.pods {
                    Some(p) => p,
                    None => {
                        all = (0..cluster.pods.len()).collect();
                        &all
                    }
                };
                pods.iter()
                    .flat_map(|&p| cluster.pods[p].named_ports(name, proto))
                    .collect()
            };
            let ports = ports_of(r.ports.as_deref(), &named, &mut warn);
            out_compiled.extend(rule_of(&peers, ports, &mut warn));
        }
        for (id, p) in selected {
            let pod = &cluster.pods[p];
            let Some(view) = views.get_mut(id) else {
                continue;
            };
            view.selected_by.push(who.clone());
            let policy = view.policy.get_or_insert_with(|| EndpointPolicy {
                endpoint: id.to_string(),
                ingress: None,
                egress: None,
            });
            if ingress {
                let mut rules = Vec::new();
                for (i, (r, peers)) in in_rules.iter().zip(&in_peers).enumerate() {
                    let mut warn = |w: String| {
                        skipped.insert(format!(
                            "{who}: ingress rule {} for pod {}: {w}",
                            i + 1,
                            pod.who
                        ));
                    };
                    let named = |name: &str, proto: u8| pod.named_ports(name, proto).collect();
                    let ports = ports_of(r.ports.as_deref(), &named, &mut warn);
                    rules.extend(rule_of(peers, ports, &mut warn));
                }
                union(&mut policy.ingress, rules);
            }
            if egress {
                union(&mut policy.egress, out_compiled.clone());
            }
        }
    }
    CompiledPolicies {
        endpoints: views.into_values().collect(),
        skipped: skipped.into_iter().collect(),
    }
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
