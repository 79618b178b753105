//! Kubernetes objects as ferry keeps them: parsed with the maintained API
//! types (`k8s-openapi`), checked, and keyed as the datastore keys them.
//!
//! A file is YAML (documents separated by `---`) or JSON (one object, or a
//! `kind: List` of them, as `kubectl get -o json` prints); either may hold
//! several objects. [`parse_file`] is all or nothing: the first document
//! that is not a valid object of a kind ferry knows fails the whole file
//! with an error naming that document, so a caller stores every object of
//! a file or none.
//!
//! Pure: no I/O, no clock.

use std::collections::BTreeSet;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Deserialize;

/// The label tying an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The kinds ferry keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Service,
    EndpointSlice,
    NetworkPolicy,
    Namespace,
    Pod,
}

pub const KINDS: [Kind; 5] = [
    Kind::Service,
    Kind::EndpointSlice,
    Kind::NetworkPolicy,
    Kind::Namespace,
    Kind::Pod,
];

impl Kind {
    /// Kubernetes' `kind`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::NetworkPolicy => "NetworkPolicy",
            Kind::Namespace => "Namespace",
            Kind::Pod => "Pod",
        }
    }

    /// The resource name, as in Kubernetes' URLs and ferry's keys.
    pub fn resource(self) -> &'static str {
        match self {
            Kind::Service => "services",
            Kind::EndpointSlice => "endpointslices",
            Kind::NetworkPolicy => "networkpolicies",
            Kind::Namespace => "namespaces",
            Kind::Pod => "pods",
        }
    }

    /// The `apiVersion` of the kind.
    pub fn api_version(self) -> &'static str {
        match self {
            Kind::Service | Kind::Namespace | Kind::Pod => "v1",
            Kind::EndpointSlice => "discovery.k8s.io/v1",
            Kind::NetworkPolicy => "networking.k8s.io/v1",
        }
    }

    /// Whether objects of the kind live in a namespace (all but Namespace).
    pub fn namespaced(self) -> bool {
        self != Kind::Namespace
    }

    pub fn from_name(kind: &str) -> Option<Kind> {
        KINDS.into_iter().find(|k| k.name() == kind)
    }

    pub fn from_resource(resource: &str) -> Option<Kind> {
        KINDS.into_iter().find(|k| k.resource() == resource)
    }
}

/// Where an object is kept: `<resource>/<namespace>/<name>`, or
/// `namespaces/<name>` for a Namespace (cluster-scoped, as Kubernetes'
/// own registry keys it).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub kind: Kind,
    /// Empty for a Namespace.
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    /// The key below a store's objects prefix.
    pub fn path(&self) -> String {
        if self.kind.namespaced() {
            format!("{}/{}/{}", self.kind.resource(), self.namespace, self.name)
        } else {
            format!("{}/{}", self.kind.resource(), self.name)
        }
    }

    /// The key of [`ObjectKey::path`]; `None` for anything else.
    pub fn from_path(path: &str) -> Option<ObjectKey> {
        let mut parts = path.split('/');
        let kind = Kind::from_resource(parts.next()?)?;
        let (namespace, name) = if kind.namespaced() {
            (parts.next()?.to_string(), parts.next()?.to_string())
        } else {
            (String::new(), parts.next()?.to_string())
        };
        if parts.next().is_some() || name.is_empty() || (kind.namespaced() && namespace.is_empty())
        {
            return None;
        }
        Some(ObjectKey {
            kind,
            namespace,
            name,
        })
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.kind.namespaced() {
            write!(f, "{} {}/{}", self.kind.name(), self.namespace, self.name)
        } else {
            write!(f, "{} {}", self.kind.name(), self.name)
        }
    }
}

/// One object of a kind ferry keeps, in Kubernetes' own types.
#[derive(Debug, Clone, PartialEq)]
pub enum Object {
    Service(Box<Service>),
    EndpointSlice(Box<EndpointSlice>),
    NetworkPolicy(Box<NetworkPolicy>),
    Namespace(Box<Namespace>),
    Pod(Box<Pod>),
}

impl Object {
    pub fn kind(&self) -> Kind {
        match self {
            Object::Service(_) => Kind::Service,
            Object::EndpointSlice(_) => Kind::EndpointSlice,
            Object::NetworkPolicy(_) => Kind::NetworkPolicy,
            Object::Namespace(_) => Kind::Namespace,
            Object::Pod(_) => Kind::Pod,
        }
    }

    pub fn as_service(&self) -> Option<&Service> {
        match self {
            Object::Service(o) => Some(o),
            _ => None,
        }
    }

    pub fn as_slice(&self) -> Option<&EndpointSlice> {
        match self {
            Object::EndpointSlice(o) => Some(o),
            _ => None,
        }
    }

    pub fn as_network_policy(&self) -> Option<&NetworkPolicy> {
        match self {
            Object::NetworkPolicy(o) => Some(o),
            _ => None,
        }
    }

    pub fn as_namespace(&self) -> Option<&Namespace> {
        match self {
            Object::Namespace(o) => Some(o),
            _ => None,
        }
    }

    pub fn as_pod(&self) -> Option<&Pod> {
        match self {
            Object::Pod(o) => Some(o),
            _ => None,
        }
    }

    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Object::Service(o) => &o.metadata,
            Object::EndpointSlice(o) => &o.metadata,
            Object::NetworkPolicy(o) => &o.metadata,
            Object::Namespace(o) => &o.metadata,
            Object::Pod(o) => &o.metadata,
        }
    }

    /// The key of a checked object (name and namespace present).
    pub fn key(&self) -> ObjectKey {
        let m = self.metadata();
        ObjectKey {
            kind: self.kind(),
            namespace: if self.kind().namespaced() {
                m.namespace.clone().unwrap_or_default()
            } else {
                String::new()
            },
            name: m.name.clone().unwrap_or_default(),
        }
    }

    /// The object as Kubernetes JSON (what the datastore holds).
    pub fn to_json(&self) -> String {
        // Serializing these types cannot fail: they are plain data.
        match self {
            Object::Service(o) => serde_json::to_string(o),
            Object::EndpointSlice(o) => serde_json::to_string(o),
            Object::NetworkPolicy(o) => serde_json::to_string(o),
            Object::Namespace(o) => serde_json::to_string(o),
            Object::Pod(o) => serde_json::to_string(o),
        }
        .unwrap_or_default()
    }

    /// An object from its JSON, checked as [`parse_file`] checks it.
    pub fn from_json(text: &str) -> Result<Object, String> {
        let v: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
        object_of(v)
    }

    /// `metadata.labels`.
    pub fn labels(&self) -> impl Iterator<Item = (&String, &String)> {
        self.metadata().labels.iter().flatten()
    }
}

/// Why a file was refused: the document, what it is if known, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: document {doc}{}: {msg}", what.as_ref().map(|w| format!(" ({w})")).unwrap_or_default())]
pub struct ObjectError {
    pub file: String,
    /// 1-based, in file order (a `List`'s items count one each).
    pub doc: usize,
    /// `Service default/web`, as far as the document says.
    pub what: Option<String>,
    pub msg: String,
}

/// The documents of a file as JSON values, in order (empty ones skipped,
/// a `List`'s items flattened). JSON when it looks like JSON, else YAML.
fn documents(text: &str) -> Result<Vec<serde_json::Value>, (usize, String)> {
    let trimmed = text.trim_start();
    let mut raw = Vec::new();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        let v: serde_json::Value =
            serde_json::from_str(text).map_err(|e| (1, format!("malformed JSON: {e}")))?;
        match v {
            serde_json::Value::Array(items) => raw.extend(items),
            v => raw.push(v),
        }
    } else {
        for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
            let v = serde_json::Value::deserialize(doc)
                .map_err(|e| (i + 1, format!("malformed YAML: {e}")))?;
            raw.push(v);
        }
    }
    let mut out = Vec::new();
    for v in raw {
        match v {
            serde_json::Value::Null => {}
            serde_json::Value::Object(ref m)
                if m.get("kind").and_then(|k| k.as_str()) == Some("List") =>
            {
                let items = m.get("items").and_then(|i| i.as_array());
                out.extend(items.into_iter().flatten().cloned());
            }
            v => out.push(v),
        }
    }
    Ok(out)
}

/// Every object of a file, checked; the first bad document fails it all.
/// `file` names it in errors. The same object twice is refused too.
pub fn parse_file(file: &str, text: &str) -> Result<Vec<Object>, ObjectError> {
    let err = |doc, what, msg| ObjectError {
        file: file.to_string(),
        doc,
        what,
        msg,
    };
    let docs = documents(text).map_err(|(doc, msg)| err(doc, None, msg))?;
    if docs.is_empty() {
        return Err(err(0, None, "no objects in the file".into()));
    }
    let mut out = Vec::with_capacity(docs.len());
    let mut seen = BTreeSet::new();
    for (i, v) in docs.into_iter().enumerate() {
        let what = describe(&v);
        let obj = object_of(v).map_err(|msg| err(i + 1, what.clone(), msg))?;
        let key = obj.key();
        if !seen.insert(key.clone()) {
            return Err(err(
                i + 1,
                Some(key.to_string()),
                "the same object appears twice in the file".into(),
            ));
        }
        out.push(obj);
    }
    Ok(out)
}

/// `Kind namespace/name` of a document, as far as it says.
fn describe(v: &serde_json::Value) -> Option<String> {
    let kind = v.get("kind")?.as_str()?;
    let meta = v.get("metadata");
    let name = meta.and_then(|m| m.get("name")).and_then(|n| n.as_str());
    let ns = meta
        .and_then(|m| m.get("namespace"))
        .and_then(|n| n.as_str());
    Some(match (ns, name) {
        (Some(ns), Some(n)) => format!("{kind} {ns}/{n}"),
        (None, Some(n)) => format!("{kind} {n}"),
        _ => kind.to_string(),
    })
}

fn typed<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Result<T, String> {
    serde_json::from_value(v).map_err(|e| e.to_string())
}

/// One document as an object of a kind ferry keeps, checked.
fn object_of(v: serde_json::Value) -> Result<Object, String> {
    let Some(kind_text) = v.get("kind").and_then(|k| k.as_str()) else {
        return Err("no `kind`".into());
    };
    let Some(kind) = Kind::from_name(kind_text) else {
        return Err(format!(
            "kind {kind_text:?} is not one ferry keeps (Service, EndpointSlice, NetworkPolicy, Namespace, Pod)"
        ));
    };
    let api_version = v.get("apiVersion").and_then(|a| a.as_str()).unwrap_or("");
    if api_version != kind.api_version() {
        return Err(format!(
            "apiVersion {api_version:?}: a {} is {:?}",
            kind.name(),
            kind.api_version()
        ));
    }
    let obj = match kind {
        Kind::Service => Object::Service(Box::new(typed(v)?)),
        Kind::EndpointSlice => Object::EndpointSlice(Box::new(typed(v)?)),
        Kind::NetworkPolicy => Object::NetworkPolicy(Box::new(typed(v)?)),
        Kind::Namespace => Object::Namespace(Box::new(typed(v)?)),
        Kind::Pod => Object::Pod(Box::new(typed(v)?)),
    };
    check_meta(kind, obj.metadata())?;
    match &obj {
        Object::Service(s) => check_service(s)?,
        Object::EndpointSlice(s) => check_slice(s)?,
        Object::NetworkPolicy(p) => check_policy(p)?,
        Object::Namespace(_) | Object::Pod(_) => {}
    }
    Ok(obj)
}

/// A DNS-1123 subdomain (names) or label (namespaces): lower-case
/// letters, digits, `-` (and `.` in a subdomain), alphanumeric at both ends.
fn check_dns_name(field: &str, name: &str, max: usize, dots: bool) -> Result<(), String> {
    let ok_char =
        |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || (dots && c == '.');
    let ends = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if name.is_empty()
        || name.len() > max
        || !name.chars().all(ok_char)
        || !ends(name.chars().next())
        || !ends(name.chars().last())
    {
        return Err(format!(
            "{field} {name:?} is not a valid name (1 to {max} lower-case letters, digits{}, '-'; alphanumeric at both ends)",
            if dots { ", '.'" } else { "" }
        ));
    }
    Ok(())
}

fn check_meta(kind: Kind, m: &ObjectMeta) -> Result<(), String> {
    let Some(name) = m.name.as_deref() else {
        return Err("no metadata.name".into());
    };
    check_dns_name("metadata.name", name, 253, kind != Kind::Namespace)?;
    match (kind.namespaced(), m.namespace.as_deref()) {
        (true, None) => Err(format!(
            "no metadata.namespace (a {} lives in a namespace; write `namespace: default` for the default one)",
            kind.name()
        )),
        (true, Some(ns)) => check_dns_name("metadata.namespace", ns, 63, false),
        (false, _) => Ok(()),
    }
}

fn check_protocol(field: &str, p: Option<&str>) -> Result<(), String> {
    match p.unwrap_or("TCP") {
        "TCP" | "UDP" => Ok(()),
        "SCTP" => Err(format!("{field} SCTP: ferry serves TCP and UDP only")),
        other => Err(format!("{field} {other:?} is not TCP, UDP or SCTP")),
    }
}

fn check_port(field: &str, port: i32) -> Result<(), String> {
    if (1..=65535).contains(&port) {
        Ok(())
    } else {
        Err(format!("{field} {port} is outside 1..=65535"))
    }
}

fn check_service(s: &Service) -> Result<(), String> {
    let Some(spec) = &s.spec else {
        return Err("no spec".into());
    };
    let ty = spec.type_.as_deref().unwrap_or("ClusterIP");
    if !matches!(
        ty,
        "ClusterIP" | "NodePort" | "LoadBalancer" | "ExternalName"
    ) {
        return Err(format!(
            "spec.type {ty:?} is not ClusterIP, NodePort, LoadBalancer or ExternalName"
        ));
    }
    let headless = |ip: &str| ip == "None" || ip.is_empty();
    let mut families = Vec::new();
    let ips: Vec<&str> = match (&spec.cluster_ip, &spec.cluster_ips) {
        (_, Some(ips)) if !ips.is_empty() => ips.iter().map(String::as_str).collect(),
        (Some(ip), _) => vec![ip.as_str()],
        (None, _) => vec![],
    };
    if let (Some(ip), Some(ips)) = (&spec.cluster_ip, &spec.cluster_ips) {
        if ips.first().is_some_and(|first| first != ip) {
            return Err(format!(
                "spec.clusterIP {ip:?} is not spec.clusterIPs[0] {:?}",
                ips[0]
            ));
        }
    }
    if ips.len() > 2 {
        return Err(format!(
            "spec.clusterIPs has {} addresses; at most 2 (one per family)",
            ips.len()
        ));
    }
    for ip in &ips {
        if headless(ip) {
            if ips.len() > 1 {
                return Err(format!("spec.clusterIPs {ips:?}: \"None\" must be alone"));
            }
            continue;
        }
        let addr: IpAddr = ip
            .parse()
            .map_err(|_| format!("spec.clusterIP {ip:?} is not an IP address"))?;
        if addr.is_unspecified() || addr.is_multicast() || addr.is_loopback() {
            return Err(format!(
                "spec.clusterIP {ip} is not a unicast address a service can have"
            ));
        }
        if families.contains(&addr.is_ipv4()) {
            return Err(format!(
                "spec.clusterIPs {ips:?}: two addresses of one family"
            ));
        }
        families.push(addr.is_ipv4());
    }
    let ports = spec.ports.as_deref().unwrap_or_default();
    let mut names = BTreeSet::new();
    let mut seen = BTreeSet::new();
    for (i, p) in ports.iter().enumerate() {
        let field = format!("spec.ports[{i}]");
        check_port(&format!("{field}.port"), p.port)?;
        check_protocol(&format!("{field}.protocol"), p.protocol.as_deref())?;
        if let Some(n) = p.node_port {
            check_port(&format!("{field}.nodePort"), n)?;
        }
        let name = p.name.clone().unwrap_or_default();
        if ports.len() > 1 && name.is_empty() {
            return Err(format!(
                "{field} has no name: a service with several ports names each"
            ));
        }
        if !names.insert(name.clone()) {
            return Err(format!("{field}: port name {name:?} is used twice"));
        }
        if !seen.insert((p.port, p.protocol.clone().unwrap_or_else(|| "TCP".into()))) {
            return Err(format!("{field}: port {} is listed twice", p.port));
        }
    }
    if let Some(t) = spec
        .session_affinity_config
        .as_ref()
        .and_then(|c| c.client_ip.as_ref())
        .and_then(|c| c.timeout_seconds)
    {
        if !(1..=86400).contains(&t) {
            return Err(format!(
                "spec.sessionAffinityConfig.clientIP.timeoutSeconds {t} is outside 1..=86400"
            ));
        }
    }
    if let Some(p) = spec.external_traffic_policy.as_deref() {
        if !matches!(p, "Cluster" | "Local") {
            return Err(format!(
                "spec.externalTrafficPolicy {p:?} is not Cluster or Local"
            ));
        }
    }
    match spec.session_affinity.as_deref().unwrap_or("None") {
        "None" | "ClientIP" => Ok(()),
        other => Err(format!(
            "spec.sessionAffinity {other:?} is not None or ClientIP"
        )),
    }
}

fn check_slice(s: &EndpointSlice) -> Result<(), String> {
    let service = s
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_NAME_LABEL));
    match service {
        None => {
            return Err(format!(
                "no label {SERVICE_NAME_LABEL}: an EndpointSlice names its Service by it"
            ))
        }
        Some(name) => check_dns_name(&format!("label {SERVICE_NAME_LABEL}"), name, 63, false)?,
    }
    let v4 = match s.address_type.as_str() {
        "IPv4" => Some(true),
        "IPv6" => Some(false),
        "FQDN" => None,
        other => return Err(format!("addressType {other:?} is not IPv4, IPv6 or FQDN")),
    };
    for (i, e) in s.endpoints.iter().enumerate() {
        if e.addresses.is_empty() {
            return Err(format!("endpoints[{i}] has no addresses"));
        }
        let Some(v4) = v4 else { continue };
        for a in &e.addresses {
            let ip: IpAddr = a
                .parse()
                .map_err(|_| format!("endpoints[{i}].addresses {a:?} is not an IP address"))?;
            if ip.is_ipv4() != v4 {
                return Err(format!(
                    "endpoints[{i}].addresses {a}: not of addressType {}",
                    s.address_type
                ));
            }
        }
    }
    for (i, p) in s.ports.iter().flatten().enumerate() {
        if let Some(port) = p.port {
            check_port(&format!("ports[{i}].port"), port)?;
        }
        check_protocol(&format!("ports[{i}].protocol"), p.protocol.as_deref())?;
    }
    Ok(())
}

fn check_policy(p: &NetworkPolicy) -> Result<(), String> {
    let Some(spec) = &p.spec else {
        return Ok(());
    };
    for t in spec.policy_types.iter().flatten() {
        if t != "Ingress" && t != "Egress" {
            return Err(format!("spec.policyTypes {t:?} is not Ingress or Egress"));
        }
    }
    let cidr = |field: &str, text: &str| {
        text.parse::<ipnet::IpNet>()
            .map_err(|_| format!("{field} {text:?} is not a CIDR"))
    };
    check_selector("spec.podSelector", spec.pod_selector.as_ref())?;
    let peers_ports = spec
        .ingress
        .iter()
        .flatten()
        .map(|r| (r.from.as_deref(), r.ports.as_deref()))
        .chain(
            spec.egress
                .iter()
                .flatten()
                .map(|r| (r.to.as_deref(), r.ports.as_deref())),
        );
    for (peers, ports) in peers_ports {
        for p in peers.into_iter().flatten() {
            let selectors = p.pod_selector.is_some() || p.namespace_selector.is_some();
            check_selector("podSelector", p.pod_selector.as_ref())?;
            check_selector("namespaceSelector", p.namespace_selector.as_ref())?;
            let Some(b) = &p.ip_block else {
                if !selectors {
                    return Err("a peer has no ipBlock, podSelector or namespaceSelector".into());
                }
                continue;
            };
            if selectors {
                return Err(
                    "a peer with an ipBlock has no selector (Kubernetes: ipBlock stands alone)"
                        .into(),
                );
            }
            let block = cidr("ipBlock.cidr", &b.cidr)?.trunc();
            for e in b.except.iter().flatten() {
                let except = cidr("ipBlock.except", e)?;
                if !block.contains(&except) || except.prefix_len() <= block.prefix_len() {
                    return Err(format!(
                        "ipBlock.except {e} is not strictly inside ipBlock.cidr {}",
                        b.cidr
                    ));
                }
            }
        }
        for p in ports.into_iter().flatten() {
            // A policy may name SCTP (it allows nothing ferry carries).
            if let Some(other) = p
                .protocol
                .as_deref()
                .filter(|p| !matches!(*p, "TCP" | "UDP" | "SCTP"))
            {
                return Err(format!("ports.protocol {other:?} is not TCP, UDP or SCTP"));
            }
            let number = match &p.port {
                Some(IntOrString::Int(n)) => {
                    check_port("ports.port", *n)?;
                    Some(*n)
                }
                Some(IntOrString::String(name)) if name.is_empty() => {
                    return Err("ports.port is an empty name".into())
                }
                _ => None,
            };
            if let Some(end) = p.end_port {
                check_port("ports.endPort", end)?;
                match number {
                    None => return Err(format!("ports.endPort {end} needs a numeric port")),
                    Some(n) if end < n => {
                        return Err(format!("ports.endPort {end} is below ports.port {n}"))
                    }
                    Some(_) => {}
                }
            }
        }
    }
    Ok(())
}

/// Kubernetes' rules for a label selector's requirements: a known
/// operator, values for `In`/`NotIn` and none for `Exists`/`DoesNotExist`.
fn check_selector(field: &str, sel: Option<&LabelSelector>) -> Result<(), String> {
    for r in sel
        .iter()
        .flat_map(|s| s.match_expressions.iter().flatten())
    {
        let values = r.values.as_deref().unwrap_or_default();
        match r.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => {
                return Err(format!(
                    "{field} key {:?}: operator {} needs values",
                    r.key, r.operator
                ))
            }
            "Exists" | "DoesNotExist" if !values.is_empty() => {
                return Err(format!(
                    "{field} key {:?}: operator {} takes no values",
                    r.key, r.operator
                ))
            }
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => {
                return Err(format!(
                    "{field} key {:?}: operator {other:?} is not In, NotIn, Exists or DoesNotExist",
                    r.key
                ))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::tests::WEB;

    /// A Namespace, [`WEB`], a NetworkPolicy and a Pod.
    fn good() -> String {
        GOOD.replacen("---\n", &format!("---{WEB}---\n"), 1)
    }

    const GOOD: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels: {team: a}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: shop}
spec:
  podSelector: {}
  policyTypes: [Ingress]
  ingress:
  - from: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}}]
    ports: [{port: 80, endPort: 90}]
---
apiVersion: v1
kind: Pod
metadata: {name: web-0, namespace: shop, labels: {app: web}}
---
"#;

    #[test]
    fn a_multi_document_file_parses_in_order_with_kubernetes_keys() {
        let objs = parse_file("good.yaml", &good()).unwrap();
        let keys: Vec<String> = objs.iter().map(|o| o.key().path()).collect();
        assert_eq!(
            keys,
            [
                "namespaces/shop",
                "services/default/web",
                "endpointslices/default/web-1",
                "networkpolicies/shop/deny",
                "pods/shop/web-0"
            ]
        );
        for o in &objs {
            assert_eq!(ObjectKey::from_path(&o.key().path()), Some(o.key()));
            // What the store holds reads back as the same object.
            assert_eq!(&Object::from_json(&o.to_json()).unwrap(), o);
        }
        assert_eq!(
            objs[0].labels().collect::<Vec<_>>(),
            [(&"team".to_string(), &"a".to_string())]
        );
    }

    #[test]
    fn json_files_and_lists_parse_too() {
        let one = r#"{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a"}}"#;
        assert_eq!(parse_file("a.json", one).unwrap().len(), 1);
        let list = format!(
            r#"{{"apiVersion": "v1", "kind": "List", "items": [{one}, {{"apiVersion": "v1", "kind": "Namespace", "metadata": {{"name": "b"}}}}]}}"#
        );
        assert_eq!(parse_file("l.json", &list).unwrap().len(), 2);
    }

    /// Each bad document fails the whole file, naming the document.
    #[test]
    fn bad_documents_are_refused_with_their_number() {
        let svc = |spec: &str| {
            format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: ok}}\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: s, namespace: ns}}\nspec:\n{spec}\n")
        };
        let slice = |labels: &str, body: &str| {
            format!("apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: e\n  namespace: ns\n{labels}addressType: IPv4\n{body}\n")
        };
        let label = "  labels: {kubernetes.io/service-name: s}\n";
        let pol = |spec: &str| {
            format!("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p, namespace: n}}\nspec:\n{spec}\n")
        };
        let cases: Vec<(&str, String, usize, &str)> = vec![
            ("unknown kind", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c, namespace: n}\n".into(), 1, "not one ferry keeps"),
            ("no kind", "apiVersion: v1\nmetadata: {name: c}\n".into(), 1, "no `kind`"),
            ("wrong apiVersion", "apiVersion: v2\nkind: Service\nmetadata: {name: c, namespace: n}\nspec: {}\n".into(), 1, "apiVersion"),
            ("malformed YAML", "kind: Service\n  metadata: [\n".into(), 1, "malformed YAML"),
            ("malformed JSON", "{\"kind\": ".into(), 1, "malformed JSON"),
            ("no name", "apiVersion: v1\nkind: Pod\nmetadata: {namespace: n}\n".into(), 1, "no metadata.name"),
            ("no namespace", "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n".into(), 1, "no metadata.namespace"),
            ("bad name", "apiVersion: v1\nkind: Pod\nmetadata: {name: P_1, namespace: n}\n".into(), 1, "not a valid name"),
            ("invalid clusterIP", svc("  clusterIP: 10.96.0.300\n  ports: [{port: 80}]"), 2, "is not an IP address"),
            ("clusterIP not clusterIPs[0]", svc("  clusterIP: 10.96.0.1\n  clusterIPs: [10.96.0.2]\n  ports: [{port: 80}]"), 2, "is not spec.clusterIPs[0]"),
            ("two IPv4 clusterIPs", svc("  clusterIPs: [10.96.0.1, 10.96.0.2]\n  ports: [{port: 80}]"), 2, "two addresses of one family"),
            ("port out of range", svc("  clusterIP: 10.96.0.1\n  ports: [{port: 70000}]"), 2, "outside 1..=65535"),
            ("SCTP", svc("  clusterIP: 10.96.0.1\n  ports: [{port: 80, protocol: SCTP}]"), 2, "TCP and UDP only"),
            ("unnamed ports", svc("  clusterIP: 10.96.0.1\n  ports: [{port: 80}, {port: 81}]"), 2, "names each"),
            ("bad affinity", svc("  clusterIP: 10.96.0.1\n  sessionAffinity: Cookie\n  ports: [{port: 80}]"), 2, "sessionAffinity"),
            ("bad traffic policy", svc("  type: NodePort\n  clusterIP: 10.96.0.1\n  externalTrafficPolicy: Nearest\n  ports: [{port: 80}]"), 2, "externalTrafficPolicy"),
            ("wrong type in a field", svc("  clusterIP: 10.96.0.1\n  ports: [{port: eighty}]"), 2, "invalid"),
            ("slice without service-name", slice("", "endpoints: []"), 1, "kubernetes.io/service-name"),
            ("slice address of the other family", slice(label, "endpoints: [{addresses: [\"fd00::1\"]}]"), 1, "not of addressType"),
            ("slice address not an IP", slice(label, "endpoints: [{addresses: [web]}]"), 1, "not an IP address"),
            ("policy with a bad ipBlock", "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: n}\nspec:\n  podSelector: {}\n  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/33}}]}]\n".into(), 1, "not a CIDR"),
            ("policy with an unknown operator", pol("  podSelector: {matchExpressions: [{key: a, operator: Like, values: [b]}]}"), 1, "is not In, NotIn"),
            ("policy with In and no values", pol("  podSelector: {}\n  ingress: [{from: [{podSelector: {matchExpressions: [{key: a, operator: In}]}}]}]"), 1, "needs values"),
            ("policy with an ipBlock and a selector", pol("  podSelector: {}\n  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]}]"), 1, "stands alone"),
            ("policy with an empty peer", pol("  podSelector: {}\n  ingress: [{from: [{}]}]"), 1, "no ipBlock, podSelector"),
            ("policy with an except outside its block", pol("  podSelector: {}\n  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/16]}}]}]"), 1, "strictly inside"),
            ("policy with endPort below port", pol("  podSelector: {}\n  ingress: [{ports: [{port: 90, endPort: 80}]}]"), 1, "below ports.port"),
            ("policy with endPort and a named port", pol("  podSelector: {}\n  ingress: [{ports: [{port: http, endPort: 80}]}]"), 1, "needs a numeric port"),
            ("policy with port 0", pol("  podSelector: {}\n  ingress: [{ports: [{port: 0}]}]"), 1, "outside 1..=65535"),
            ("the same object twice", "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n".into(), 2, "twice"),
        ];
        for (what, text, doc, needle) in cases {
            let e = parse_file("f.yaml", &text).expect_err(what);
            assert_eq!(e.doc, doc, "{what}: {e}");
            assert!(e.to_string().contains(needle), "{what}: {e}");
            assert!(
                e.to_string().starts_with("f.yaml: document "),
                "{what}: {e}"
            );
        }
        let e = parse_file("f.yaml", &svc("  clusterIP: 10.96.0.300")).unwrap_err();
        assert_eq!(e.what.as_deref(), Some("Service ns/s"), "{e}");
        assert!(parse_file("empty.yaml", "---\n").is_err());
    }
}
