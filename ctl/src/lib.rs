//! ferryctl: the operator CLI's tables. Asks ferryd and ferry-dataplane
//! through [`ferry_api::client`] and renders what they answer as aligned
//! text (or the same rows as JSON).
//!
//! Layer: an operator tool on ferry-api alone; it knows nothing of netlink,
//! AF_XDP or ferryd's store.

use std::net::{IpAddr, Ipv4Addr};

use ferry_api::objects::{ObjectListing, ObjectRef};
use ferry_api::pod::{ClusterView, NodeView, StaleAttachment};
use ferry_api::table::{self, NodeSettings, Overlay, Stats, TableDump};
use ferry_api::MacAddr;
use ipnet::IpNet;
use serde::Serialize;

/// A text table with left-aligned columns separated by two spaces.
pub fn render_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        out.push_str(s.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

/// One row of `ferryctl endpoints`.
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub struct EndpointRow {
    pub id: String,
    /// The first of `ips` (the IPv4 one of a dual-stack pod), kept for
    /// readers of the JSON that predate IPv6.
    pub ip: std::net::IpAddr,
    /// Every address the endpoint holds, one per family, IPv4 first.
    pub ips: Vec<std::net::IpAddr>,
    pub mac: ferry_api::MacAddr,
    pub host_ifname: String,
    /// Port index in the forwarding tables, if the dataplane made the port.
    pub port: Option<u32>,
    /// `live`, or `stale: <what is missing>` for an attachment ferryd
    /// keeps (until DEL or GC) although its pod is gone.
    pub state: String,
}

/// The dataplane's endpoints, then ferryd's stale attachments (which the
/// dataplane does not hold).
pub fn endpoint_rows(t: &TableDump, stale: &[StaleAttachment]) -> Vec<EndpointRow> {
    let mut rows: Vec<EndpointRow> = t
        .endpoints
        .iter()
        .map(|e| EndpointRow {
            id: e.id.clone(),
            ip: e
                .ips
                .first()
                .copied()
                .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)),
            ips: e.ips.clone(),
            mac: e.mac,
            host_ifname: e.host_ifname.clone(),
            port: t.ports.get(&e.host_ifname).copied(),
            state: "live".into(),
        })
        .collect();
    rows.sort_by_key(|r| r.ip);
    for s in stale {
        rows.push(EndpointRow {
            id: s.endpoint.clone(),
            ip: s.ip,
            // A ferryd that predates IPv6 reports `ip` alone.
            ips: if s.ips.is_empty() {
                vec![s.ip]
            } else {
                s.ips.clone()
            },
            mac: ferry_api::MacAddr::for_pod_ip(s.ip),
            host_ifname: String::new(),
            port: None,
            state: format!("stale: {}", s.reason),
        });
    }
    rows
}

fn opt_port(p: Option<u32>) -> String {
    p.map(|p| p.to_string()).unwrap_or_else(|| "-".into())
}

pub fn render_endpoints(rows: &[EndpointRow]) -> String {
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.id.clone(),
                r.ips
                    .iter()
                    .map(|ip| ip.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
                r.mac.to_string(),
                if r.host_ifname.is_empty() {
                    "-".into()
                } else {
                    r.host_ifname.clone()
                },
                opt_port(r.port),
                r.state.clone(),
            ]
        })
        .collect();
    render_table(&["ID", "IP", "MAC", "HOST IFNAME", "PORT", "STATE"], &body)
}

fn render_node(
    node: &Option<NodeSettings>,
    ports: &std::collections::BTreeMap<String, u32>,
) -> String {
    let Some(n) = node else {
        return "node: not synced yet\n".into();
    };
    let cidrs: Vec<String> = n.pod_cidrs.iter().map(|c| c.to_string()).collect();
    let host = match &n.host_port {
        Some(h) => format!(
            "{} (port {}) <-> kernel {} ({})",
            h.ifname,
            opt_port(ports.get(&h.ifname).copied()),
            h.kernel_ifname,
            h.kernel_mac
        ),
        None => "none".into(),
    };
    render_table(
        &["NODE", ""],
        &[
            vec![
                "gateway".into(),
                n.gateways
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
            ],
            vec!["router mac".into(), n.router_mac.to_string()],
            vec!["pod cidrs".into(), cidrs.join(", ")],
            vec!["host port".into(), host],
            vec!["mtu".into(), n.mtu.to_string()],
            vec![
                "uplink".into(),
                match &n.uplink {
                    Some(u) => {
                        format!("{} ({}), {}", u.ifname, u.address, overlay_text(&u.overlay))
                    }
                    None => "none".into(),
                },
            ],
        ],
    )
}

fn overlay_text(o: &Overlay) -> String {
    match o {
        Overlay::Vxlan { vni, port } => format!("overlay vxlan vni {vni} port {port}"),
        Overlay::Direct => "overlay direct".into(),
    }
}

/// The uplink as `ferryctl peers` shows it.
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub struct UplinkView {
    pub ifname: String,
    pub address: Ipv4Addr,
    pub overlay: Overlay,
    /// How the dataplane drives it (`native-copy`, ...); `missing`: no
    /// port on it; `unknown`: its counters could not be read.
    pub mode: String,
}

/// One row of `ferryctl peers`: a peer node, the pod CIDRs routed to it
/// and how the dataplane reaches it on the uplink.
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub struct PeerRow {
    pub node: IpAddr,
    pub pod_cidrs: Vec<IpNet>,
    /// The peer itself (on-link) or its gateway; `None`: no neighbour
    /// listed for it.
    pub next_hop: Option<IpAddr>,
    pub mac: Option<MacAddr>,
    /// The kernel's neighbour state or why it is unresolved.
    pub state: String,
}

/// `ferryctl peers --json`.
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub struct PeersView {
    pub uplink: Option<UplinkView>,
    pub peers: Vec<PeerRow>,
}

/// The row of `node`, added (nothing known yet) if there is none.
fn peer_entry(peers: &mut Vec<PeerRow>, node: IpAddr) -> &mut PeerRow {
    let i = match peers.iter().position(|p| p.node == node) {
        Some(i) => i,
        None => {
            peers.push(PeerRow {
                node,
                pod_cidrs: Vec::new(),
                next_hop: None,
                mac: None,
                state: "not listed by the dataplane".into(),
            });
            peers.len() - 1
        }
    };
    &mut peers[i]
}

/// The uplink and the peers from the dataplane's tables (routes to
/// `NextHop::Node`, neighbours) and, for the uplink's mode, its stats.
pub fn peers_view(t: &TableDump, stats: Option<&Stats>) -> PeersView {
    let uplink = t.node.as_ref().and_then(|n| n.uplink.as_ref()).map(|u| {
        let mode =
            match stats {
                None => "unknown".to_string(),
                Some(s) => s.ports.iter().find(|p| p.endpoint == "uplink").map_or(
                    "missing".to_string(),
                    |p| {
                        if p.mode.is_empty() {
                            "unknown".to_string()
                        } else {
                            p.mode.clone()
                        }
                    },
                ),
            };
        UplinkView {
            ifname: u.ifname.clone(),
            address: u.address,
            overlay: u.overlay,
            mode,
        }
    });
    let mut peers: Vec<PeerRow> = Vec::new();
    for r in &t.routes {
        if let table::NextHop::Node(node) = r.next_hop {
            peer_entry(&mut peers, node).pod_cidrs.push(r.prefix);
        }
    }
    for n in &t.neighbours {
        let p = peer_entry(&mut peers, n.node);
        p.next_hop = Some(n.next_hop);
        p.mac = n.mac;
        p.state = n.state.clone();
    }
    peers.sort_by_key(|p| p.node);
    PeersView { uplink, peers }
}

pub fn render_peers(v: &PeersView) -> String {
    let mut out = match &v.uplink {
        Some(u) => format!(
            "uplink {} ({}), {}, mode {}\n\n",
            u.ifname,
            u.address,
            overlay_text(&u.overlay),
            u.mode
        ),
        None => "uplink: none (a single node)\n\n".into(),
    };
    let dash = |o: Option<String>| o.unwrap_or_else(|| "-".into());
    let body: Vec<Vec<String>> = v
        .peers
        .iter()
        .map(|p| {
            let cidrs: Vec<String> = p.pod_cidrs.iter().map(ToString::to_string).collect();
            vec![
                p.node.to_string(),
                if cidrs.is_empty() {
                    "-".into()
                } else {
                    cidrs.join(",")
                },
                dash(p.next_hop.map(|h| h.to_string())),
                dash(p.mac.map(|m| m.to_string())),
                p.state.clone(),
            ]
        })
        .collect();
    out.push_str(&render_table(
        &["NODE", "POD CIDR", "NEXT HOP", "MAC", "STATE"],
        &body,
    ));
    out
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `5s`, `3m`, `2h`, `4d` ago; `-` for never.
pub fn age(then: u64, now: u64) -> String {
    if then == 0 {
        return "-".into();
    }
    let s = now.saturating_sub(then);
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// One line on the datastore: what it is and whether it answers.
pub fn cluster_line(c: &ClusterView) -> String {
    let state = if c.reachable {
        "reachable".to_string()
    } else {
        "UNREACHABLE".to_string()
    };
    let mut line = format!("datastore: {} ({state}", c.datastore);
    if c.since != 0 {
        line.push_str(&format!(
            " since {}s ago",
            unix_now().saturating_sub(c.since)
        ));
    }
    line.push(')');
    if let Some(e) = &c.error {
        line.push_str(&format!(": {e}"));
    }
    line
}

/// `ferryctl get services`: one line per compiled service port, then
/// what was left out and whether the dataplane holds them.
pub fn render_services(l: &ObjectListing) -> String {
    let rows: Vec<Vec<String>> = l
        .services
        .iter()
        .map(|p| {
            let vip = match p.vip {
                IpAddr::V4(a) => format!("{a}:{}", p.port),
                IpAddr::V6(a) => format!("[{a}]:{}", p.port),
            };
            let backends = if p.backends.is_empty() {
                "(none: refused)".to_string()
            } else {
                p.backends
                    .iter()
                    .map(|b| match b.ip {
                        IpAddr::V4(a) => format!("{a}:{}", b.port),
                        IpAddr::V6(a) => format!("[{a}]:{}", b.port),
                    })
                    .collect::<Vec<_>>()
                    .join(",")
            };
            let affinity = p
                .affinity_timeout_s
                .map_or_else(|| "-".to_string(), |t| format!("ClientIP {t}s"));
            vec![
                p.id.clone(),
                vip,
                p.protocol.name().to_string(),
                affinity,
                backends,
            ]
        })
        .collect();
    let mut out = render_table(
        &["ID", "CLUSTER-IP:PORT", "PROTO", "AFFINITY", "BACKENDS"],
        &rows,
    );
    let summary = format!(
        "{} service port(s) from {}; dataplane: {}",
        l.services.len(),
        l.source,
        l.dataplane
    );
    footer(&mut out, &l.skipped, &summary, l.source_error.as_deref());
    out
}

/// What a `get` listing ends with: the lines left out, a summary, the
/// source's error if it has one.
fn footer(out: &mut String, skipped: &[String], summary: &str, source_error: Option<&str>) {
    for why in skipped {
        out.push_str(&format!("left out: {why}\n"));
    }
    out.push_str(summary);
    out.push('\n');
    if let Some(e) = source_error {
        out.push_str(&format!("source error: {e}\n"));
    }
}

/// A port range as `TCP 80`, `UDP 8000-8080`, `SCTP any`.
fn port_range_text(r: &table::PortRange) -> String {
    let proto = match r.protocol {
        6 => "TCP".to_string(),
        17 => "UDP".to_string(),
        132 => "SCTP".to_string(),
        n => format!("proto {n}"),
    };
    match (r.first, r.last) {
        (0, u16::MAX) => format!("{proto} any"),
        (a, b) if a == b => format!("{proto} {a}"),
        (a, b) => format!("{proto} {a}-{b}"),
    }
}

/// One rule: its peers (`from`/`to` by direction) and ports.
fn policy_rule_text(to: &str, r: &table::PolicyRule) -> String {
    let peers = match r.peers.as_deref() {
        None => "anywhere".to_string(),
        Some([]) => "nothing (no pod matches)".to_string(),
        Some(ps) => ps
            .iter()
            .map(|p| {
                if p.except.is_empty() {
                    p.cidr.to_string()
                } else {
                    let except: Vec<String> = p.except.iter().map(ToString::to_string).collect();
                    format!("{} except {}", p.cidr, except.join(","))
                }
            })
            .collect::<Vec<_>>()
            .join(", "),
    };
    let ports = if r.ports.is_empty() {
        "any port".to_string()
    } else {
        r.ports
            .iter()
            .map(port_range_text)
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!("{to} {peers}; {ports}")
}

/// The lines of one direction of an endpoint policy.
fn direction_lines(out: &mut String, name: &str, to: &str, rules: Option<&[table::PolicyRule]>) {
    match rules {
        None => out.push_str(&format!("  {name}: all (not isolated)\n")),
        Some([]) => out.push_str(&format!("  {name}: none (isolated, no rule allows)\n")),
        Some(rules) => {
            for r in rules {
                out.push_str(&format!("  {name}: {}\n", policy_rule_text(to, r)));
            }
        }
    }
}

/// `ferryctl get policies`: every local endpoint, its pod, the policies
/// selecting it and its compiled rules; then what was left out and
/// whether the dataplane holds them.
pub fn render_policies(l: &ObjectListing) -> String {
    let mut out = String::new();
    for e in &l.policies {
        let pod = match (&e.namespace, &e.name) {
            (None, _) => "unknown (no K8S_POD_NAMESPACE: no selector matches it)".to_string(),
            (Some(ns), name) => format!("{ns}/{}", name.as_deref().unwrap_or("?")),
        };
        out.push_str(&format!("{}  pod {pod}", e.endpoint));
        match &e.policy {
            None => out.push_str("  selected by no policy: all allowed\n"),
            Some(p) => {
                out.push_str(&format!("  selected by {}\n", e.selected_by.join(", ")));
                direction_lines(&mut out, "ingress", "from", p.ingress.as_deref());
                direction_lines(&mut out, "egress", "to", p.egress.as_deref());
            }
        }
    }
    let policed = l.policies.iter().filter(|e| e.policy.is_some()).count();
    let summary = format!(
        "{} endpoint(s), {policed} policed; from {}; dataplane: {}",
        l.policies.len(),
        l.source,
        l.policy_dataplane
    );
    footer(
        &mut out,
        &l.policy_skipped,
        &summary,
        l.source_error.as_deref(),
    );
    out
}

/// `ferryctl get objects`: every stored object.
pub fn render_objects(l: &ObjectListing) -> String {
    let rows: Vec<Vec<String>> = l
        .objects
        .iter()
        .map(|o| vec![o.kind.clone(), o.namespace.clone(), o.name.clone()])
        .collect();
    render_table(&["KIND", "NAMESPACE", "NAME"], &rows)
}

/// `kind namespace/name`, as `ferryctl apply` and `delete` print each.
pub fn object_line(o: &ObjectRef) -> String {
    if o.namespace.is_empty() {
        format!("{} {}", o.kind, o.name)
    } else {
        format!("{} {}/{}", o.kind, o.namespace, o.name)
    }
}

/// `ferryctl nodes`: this node first, then the peers by block.
pub fn render_nodes(c: &ClusterView, now: u64) -> String {
    let row = |n: &NodeView| {
        vec![
            n.name.clone(),
            match n.block6 {
                Some(b6) => format!("{} {b6}", n.block),
                None => n.block.to_string(),
            },
            n.address.to_string(),
            n.vtep_mac.to_string(),
            if n.overlay == "vxlan" {
                format!("vxlan vni {}", n.vni)
            } else {
                n.overlay.clone()
            },
            age(n.renewed, now),
            n.route.clone(),
        ]
    };
    let body: Vec<Vec<String>> = c.node.iter().chain(&c.peers).map(row).collect();
    let mut out = render_table(
        &[
            "NODE", "BLOCK", "ADDRESS", "VTEP MAC", "OVERLAY", "RENEWED", "ROUTE",
        ],
        &body,
    );
    if c.node.is_none() {
        out.push_str("(this node holds no block yet)\n");
    }
    out.push('\n');
    out.push_str(&cluster_line(c));
    out.push('\n');
    out
}

pub fn render_routes(t: &TableDump) -> String {
    let mut out = render_node(&t.node, &t.ports);
    out.push('\n');
    let body: Vec<Vec<String>> = t
        .routes
        .iter()
        .map(|r| {
            let hop = match &r.next_hop {
                table::NextHop::Endpoint(id) => format!("endpoint {id}"),
                table::NextHop::Host => "host".into(),
                table::NextHop::Blackhole => "blackhole".into(),
                table::NextHop::Node(addr) => format!("node {addr}"),
            };
            vec![r.prefix.to_string(), hop]
        })
        .collect();
    out.push_str(&render_table(&["PREFIX", "NEXT HOP"], &body));
    out.push_str(&format!("\ngeneration {}\n", t.generation));
    out
}

fn drops_text(d: &std::collections::BTreeMap<String, u64>) -> String {
    let parts: Vec<String> = d
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| format!("{k}={n}"))
        .collect();
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(",")
    }
}

/// A port's drops by reason plus its kernel-side socket drops, these named
/// `xsk:<counter>`.
fn port_drops(p: &ferry_api::table::PortStats) -> std::collections::BTreeMap<String, u64> {
    let mut d = p.drops.clone();
    for name in ferry_api::table::XSK_DROP_COUNTERS {
        if let Some(n) = p.kernel.get(name) {
            d.insert(format!("xsk:{name}"), *n);
        }
    }
    d
}

pub fn render_stats(s: &Stats) -> String {
    let ports: Vec<Vec<String>> = s
        .ports
        .iter()
        .map(|p| {
            vec![
                p.name.clone(),
                p.endpoint.clone(),
                if p.attached {
                    "yes".into()
                } else {
                    "no".into()
                },
                if p.mode.is_empty() {
                    "-".into()
                } else {
                    p.mode.clone()
                },
                p.rx_frames.to_string(),
                p.rx_bytes.to_string(),
                p.tx_frames.to_string(),
                p.tx_bytes.to_string(),
                drops_text(&port_drops(p)),
            ]
        })
        .collect();
    let workers: Vec<Vec<String>> = s
        .workers
        .iter()
        .map(|w| {
            vec![
                w.worker.to_string(),
                w.cpu.map(|c| c.to_string()).unwrap_or_else(|| "-".into()),
                w.busy_polls.to_string(),
                w.idle_polls.to_string(),
                w.rx_frames.to_string(),
                w.tx_frames.to_string(),
                w.umem
                    .map(|u| format!("{}/{}", u.free, u.frames))
                    .unwrap_or_else(|| "-".into()),
                drops_text(&w.drops),
            ]
        })
        .collect();
    let mut out = render_table(
        &[
            "PORT",
            "ENDPOINT",
            "ATTACHED",
            "MODE",
            "RX FRAMES",
            "RX BYTES",
            "TX FRAMES",
            "TX BYTES",
            "DROPS",
        ],
        &ports,
    );
    out.push('\n');
    out.push_str(&render_table(
        &[
            "WORKER",
            "CPU",
            "BUSY POLLS",
            "IDLE POLLS",
            "RX FRAMES",
            "TX FRAMES",
            "UMEM FREE",
            "DROPS",
        ],
        &workers,
    ));
    out.push_str(&format!("\ngeneration {}\n", s.generation));
    out
}

/// One row of `ferryctl drops`: frames received on a port and dropped for
/// one reason (reasons never seen are not listed).
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub struct DropRow {
    pub port: String,
    pub endpoint: String,
    pub reason: String,
    pub frames: u64,
}

pub fn drop_rows(s: &Stats) -> Vec<DropRow> {
    let mut rows: Vec<DropRow> = s
        .ports
        .iter()
        .flat_map(|p| {
            port_drops(p)
                .into_iter()
                .filter(|(_, n)| *n > 0)
                .map(move |(reason, frames)| DropRow {
                    port: p.name.clone(),
                    endpoint: p.endpoint.clone(),
                    reason,
                    frames,
                })
        })
        .collect();
    rows.sort_by(|a, b| (&a.port, &a.reason).cmp(&(&b.port, &b.reason)));
    rows
}

pub fn render_drops(rows: &[DropRow]) -> String {
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.port.clone(),
                r.endpoint.clone(),
                r.reason.clone(),
                r.frames.to_string(),
            ]
        })
        .collect();
    render_table(&["PORT", "ENDPOINT", "REASON", "FRAMES"], &body)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use ferry_api::table::{Endpoint, PortStats, WorkerStats};

    use super::*;

    #[test]
    fn policies_show_each_endpoint_its_pod_and_rules() {
        use ferry_api::objects::EndpointPolicyView;
        use ferry_api::table::{EndpointPolicy, PolicyPeer, PolicyRule, PortRange};
        let view =
            |id: &str, ns: Option<&str>, policy: Option<EndpointPolicy>| EndpointPolicyView {
                endpoint: id.into(),
                namespace: ns.map(Into::into),
                name: ns.map(|_| "web".into()),
                selected_by: policy.iter().map(|_| "shop/deny".to_string()).collect(),
                policy,
            };
        let rule = PolicyRule {
            peers: Some(vec![
                PolicyPeer {
                    cidr: "10.0.0.0/8".parse().unwrap(),
                    except: vec!["10.1.0.0/16".parse().unwrap()],
                },
                PolicyPeer {
                    cidr: "fd00::2/128".parse().unwrap(),
                    except: vec![],
                },
            ]),
            ports: vec![
                PortRange {
                    protocol: 6,
                    first: 80,
                    last: 80,
                },
                PortRange {
                    protocol: 17,
                    first: 8000,
                    last: 8080,
                },
                PortRange {
                    protocol: 132,
                    first: 0,
                    last: 65535,
                },
            ],
        };
        let l = ObjectListing {
            source: "embedded".into(),
            source_error: None,
            objects: vec![],
            services: vec![],
            skipped: vec![],
            dataplane: "synced".into(),
            policies: vec![
                view(
                    "c1/eth0",
                    Some("shop"),
                    Some(EndpointPolicy {
                        endpoint: "c1/eth0".into(),
                        ingress: Some(vec![rule, PolicyRule::default()]),
                        egress: Some(vec![]),
                    }),
                ),
                view("c2/eth0", Some("shop"), None),
                view("c3/eth0", None, None),
            ],
            policy_skipped: vec!["shop/x: ingress rule 1: named port(s) http match no container port; rule left out (it would match nothing)".into()],
            policy_dataplane: "synced".into(),
        };
        assert_eq!(
            render_policies(&l),
            "c1/eth0  pod shop/web  selected by shop/deny
  ingress: from 10.0.0.0/8 except 10.1.0.0/16, fd00::2/128; TCP 80, UDP 8000-8080, SCTP any
  ingress: from anywhere; any port
  egress: none (isolated, no rule allows)
c2/eth0  pod shop/web  selected by no policy: all allowed
c3/eth0  pod unknown (no K8S_POD_NAMESPACE: no selector matches it)  selected by no policy: all allowed
left out: shop/x: ingress rule 1: named port(s) http match no container port; rule left out (it would match nothing)
3 endpoint(s), 1 policed; from embedded; dataplane: synced
"
        );
    }

    #[test]
    fn tables_are_aligned() {
        let t = render_table(
            &["A", "LONG HEADER"],
            &[
                vec!["xxxx".into(), "1".into()],
                vec!["y".into(), "22".into()],
            ],
        );
        assert_eq!(t, "A     LONG HEADER\nxxxx  1\ny     22\n");
    }

    #[test]
    fn endpoints_join_their_port_index() {
        let ip: std::net::Ipv4Addr = "10.88.0.5".parse().unwrap();
        let t = TableDump {
            generation: 3,
            node: None,
            endpoints: vec![Endpoint::veth("c1/eth0", "fy0123456789a", ip)],
            routes: vec![],
            ports: BTreeMap::from([("fy0123456789a".to_string(), 2)]),
            neighbours: vec![],
            services: vec![],
            policies: vec![],
        };
        let stale = [StaleAttachment::new(
            "gone/eth0".into(),
            vec!["10.88.0.9".parse().unwrap()],
            "/var/run/netns/gone".into(),
            "network namespace /var/run/netns/gone is gone".into(),
        )];
        let rows = endpoint_rows(&t, &stale);
        assert_eq!(rows[0].port, Some(2));
        assert_eq!(rows[0].state, "live");
        assert_eq!(rows[1].id, "gone/eth0");
        assert!(rows[1].state.starts_with("stale: "), "{:?}", rows[1]);
        let text = render_endpoints(&rows);
        assert!(text.starts_with("ID         IP         MAC"), "{text}");
        assert!(
            text.contains("c1/eth0    10.88.0.5  0a:58:0a:58:00:05  fy0123456789a  2     live"),
            "{text}"
        );
        let json = serde_json::to_value(&rows).unwrap();
        assert_eq!(json[0]["ip"], "10.88.0.5");
        assert_eq!(json[0]["ips"], serde_json::json!(["10.88.0.5"]));
        assert_eq!(json[0]["port"], 2);
        assert!(text.contains("gone/eth0  10.88.0.9"), "{text}");
        assert_eq!(json[1]["ips"], serde_json::json!(["10.88.0.9"]));
        assert!(render_routes(&t).contains("not synced"));
    }

    /// A dual-stack endpoint shows both addresses (IPv4 first), live or
    /// stale; `ip` stays the IPv4 one.
    #[test]
    fn dual_stack_endpoints_show_both_addresses() {
        let mut e = Endpoint::veth("c2/eth0", "fy0123456789b", "10.88.0.6".parse().unwrap());
        e.ips.push("fd00:88::6".parse().unwrap());
        let t = TableDump {
            generation: 1,
            node: None,
            endpoints: vec![e],
            routes: vec![],
            ports: BTreeMap::new(),
            neighbours: vec![],
            services: vec![],
            policies: vec![],
        };
        let stale = [StaleAttachment::new(
            "gone/eth0".into(),
            vec!["10.88.0.9".parse().unwrap(), "fd00:88::9".parse().unwrap()],
            "/var/run/netns/gone".into(),
            "network namespace /var/run/netns/gone is gone".into(),
        )];
        let rows = endpoint_rows(&t, &stale);
        let json = serde_json::to_value(&rows).unwrap();
        assert_eq!(json[0]["ip"], "10.88.0.6");
        assert_eq!(
            json[0]["ips"],
            serde_json::json!(["10.88.0.6", "fd00:88::6"])
        );
        assert_eq!(json[1]["ip"], "10.88.0.9");
        assert_eq!(
            json[1]["ips"],
            serde_json::json!(["10.88.0.9", "fd00:88::9"])
        );
        let text = render_endpoints(&rows);
        assert!(text.contains("c2/eth0    10.88.0.6,fd00:88::6  "), "{text}");
        assert!(text.contains("gone/eth0  10.88.0.9,fd00:88::9  "), "{text}");
    }

    #[test]
    fn peers_join_routes_and_neighbours() {
        let node = NodeSettings {
            gateways: vec!["10.70.1.1".parse().unwrap()],
            router_mac: MacAddr::ROUTER,
            pod_cidrs: vec!["10.70.1.0/24".parse().unwrap()],
            host_port: None,
            mtu: 1450,
            uplink: Some(table::Uplink {
                ifname: "up0".into(),
                address: "192.168.70.1".parse().unwrap(),
                overlay: Overlay::Vxlan { vni: 1, port: 4789 },
                set_channels: false,
            }),
        };
        let t = TableDump {
            generation: 4,
            node: Some(node),
            endpoints: vec![],
            routes: vec![
                table::Route {
                    prefix: "10.70.3.0/24".parse().unwrap(),
                    next_hop: table::NextHop::Node("192.168.71.3".parse().unwrap()),
                },
                table::Route {
                    prefix: "10.70.2.0/24".parse().unwrap(),
                    next_hop: table::NextHop::Node("192.168.70.2".parse().unwrap()),
                },
            ],
            ports: BTreeMap::new(),
            neighbours: vec![
                table::Neighbour {
                    node: "192.168.70.2".parse().unwrap(),
                    next_hop: "192.168.70.2".parse().unwrap(),
                    mac: Some(MacAddr([2, 0, 0, 0, 0, 2])),
                    state: "reachable".into(),
                },
                table::Neighbour {
                    node: "192.168.71.3".parse().unwrap(),
                    next_hop: "192.168.70.254".parse().unwrap(),
                    mac: None,
                    state: "incomplete".into(),
                },
            ],
            services: vec![],
            policies: vec![],
        };
        let stats = Stats {
            ports: vec![PortStats {
                name: "up0".into(),
                endpoint: "uplink".into(),
                mode: "native-copy".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let v = peers_view(&t, Some(&stats));
        assert_eq!(v.uplink.as_ref().unwrap().mode, "native-copy");
        assert_eq!(
            render_peers(&v),
            "uplink up0 (192.168.70.1), overlay vxlan vni 1 port 4789, mode native-copy\n\n\
             NODE          POD CIDR      NEXT HOP        MAC                STATE\n\
             192.168.70.2  10.70.2.0/24  192.168.70.2    02:00:00:00:00:02  reachable\n\
             192.168.71.3  10.70.3.0/24  192.168.70.254  -                  incomplete\n"
        );
        let json = serde_json::to_value(&v).unwrap();
        assert_eq!(json["uplink"]["overlay"]["mode"], "vxlan");
        assert_eq!(json["uplink"]["mode"], "native-copy");
        assert_eq!(json["peers"][0]["pod_cidrs"][0], "10.70.2.0/24");
        assert_eq!(json["peers"][1]["mac"], serde_json::Value::Null);
        // Without stats the mode is unknown; without the port, missing.
        assert_eq!(peers_view(&t, None).uplink.unwrap().mode, "unknown");
        let missing = peers_view(&t, Some(&Stats::default()));
        assert_eq!(missing.uplink.unwrap().mode, "missing");
        // The routes view shows the uplink too.
        assert!(
            render_routes(&t).contains("up0 (192.168.70.1), overlay vxlan vni 1 port 4789"),
            "{}",
            render_routes(&t)
        );
        assert!(render_routes(&t).contains("node 192.168.70.2"));
        // A single node.
        let single = peers_view(&TableDump::default(), None);
        assert_eq!(single.uplink, None);
        assert_eq!(
            render_peers(&single),
            "uplink: none (a single node)\n\nNODE  POD CIDR  NEXT HOP  MAC  STATE\n"
        );
    }

    #[test]
    fn stats_show_nonzero_drops() {
        let s = Stats {
            generation: 1,
            ports: vec![PortStats {
                name: "ferry0dp".into(),
                endpoint: "host".into(),
                attached: true,
                rx_frames: 10,
                drops: BTreeMap::from([
                    ("no_endpoint".to_string(), 2),
                    ("bad_l4_checksum".to_string(), 0),
                ]),
                ..Default::default()
            }],
            drop_reasons: vec![],
            conntrack: None,
            workers: vec![WorkerStats {
                worker: 0,
                cpu: Some(1),
                busy_polls: 5,
                umem: Some(ferry_api::table::UmemStats {
                    frames: 16384,
                    free: 16000,
                    ..Default::default()
                }),
                ..Default::default()
            }],
        };
        let text = render_stats(&s);
        assert!(text.contains("UMEM FREE"), "{text}");
        assert!(text.contains("16000/16384"), "{text}");
        assert!(text.contains("no_endpoint=2"), "{text}");
        assert!(!text.contains("bad_l4_checksum"), "{text}");
        assert!(text.contains("WORKER"), "{text}");
        assert!(text.contains("ATTACHED  MODE"), "{text}");

        let rows = drop_rows(&s);
        assert_eq!(rows.len(), 1, "zero counters are not rows: {rows:?}");
        assert_eq!(
            render_drops(&rows),
            "PORT      ENDPOINT  REASON       FRAMES\nferry0dp  host      no_endpoint  2\n"
        );
        let json = serde_json::to_value(&rows).unwrap();
        assert_eq!(json[0]["reason"], "no_endpoint");
        assert_eq!(json[0]["frames"], 2);
    }

    #[test]
    fn kernel_socket_drops_show_beside_the_reasons() {
        let mut s = Stats {
            ports: vec![PortStats {
                name: "ferry0dp".into(),
                endpoint: "host".into(),
                drops: BTreeMap::from([("no_endpoint".to_string(), 2)]),
                kernel: BTreeMap::from([
                    ("rx_ring_full".to_string(), 7),
                    ("rx_dropped".to_string(), 0),
                    // A ring miss, not a lost frame: not a drop.
                    ("rx_fill_ring_empty_descs".to_string(), 9),
                ]),
                ..Default::default()
            }],
            ..Default::default()
        };
        let text = render_stats(&s);
        assert!(text.contains("no_endpoint=2,xsk:rx_ring_full=7"), "{text}");
        assert!(!text.contains("fill_ring"), "{text}");
        let rows = drop_rows(&s);
        let reasons: Vec<&str> = rows.iter().map(|r| r.reason.as_str()).collect();
        assert_eq!(reasons, ["no_endpoint", "xsk:rx_ring_full"]);
        assert_eq!(rows[1].frames, 7);
        // A tap port has no socket counters: nothing extra.
        s.ports[0].kernel.clear();
        assert_eq!(drop_rows(&s).len(), 1);
    }

    fn node(name: &str, block: &str, addr: [u8; 4], route: &str, renewed: u64) -> NodeView {
        NodeView {
            name: name.into(),
            address: IpAddr::V4(Ipv4Addr::from(addr)),
            block: block.parse().unwrap(),
            block6: None,
            vtep_mac: MacAddr([2, 0, 0, 0, 0, addr[3]]),
            overlay: "vxlan".into(),
            vni: 1,
            renewed,
            route: route.into(),
        }
    }

    #[test]
    fn nodes_list_this_node_first_and_say_whether_the_datastore_answers() {
        let now = 1_000_000;
        let mut c = ClusterView {
            datastore: "etcd http://10.99.0.1:2379".into(),
            reachable: true,
            error: None,
            since: 0,
            node: Some(node(
                "a",
                "10.244.0.0/24",
                [192, 168, 70, 1],
                "self",
                now - 5,
            )),
            peers: vec![
                node("b", "10.244.1.0/24", [192, 168, 70, 2], "routed", now - 300),
                node(
                    "c",
                    "10.244.2.0/24",
                    [192, 168, 70, 3],
                    "refused: it runs overlay direct vni 0, the cluster vxlan vni 1",
                    0,
                ),
            ],
        };
        let text = render_nodes(&c, now);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("NODE  BLOCK"), "{text}");
        assert!(
            lines[1].starts_with("a ") && lines[1].contains("5s") && lines[1].ends_with("self"),
            "{text}"
        );
        assert!(
            lines[2].contains("10.244.1.0/24")
                && lines[2].contains("5m")
                && lines[2].contains("vxlan vni 1"),
            "{text}"
        );
        assert!(
            lines[3].contains(" - ") && lines[3].contains("refused: it runs overlay direct"),
            "{text}"
        );
        assert!(
            text.contains("datastore: etcd http://10.99.0.1:2379 (reachable)"),
            "{text}"
        );
        c.reachable = false;
        c.error = Some("datastore unreachable: list: connection refused".into());
        c.node = None;
        let text = render_nodes(&c, now);
        assert!(text.contains("(UNREACHABLE"), "{text}");
        assert!(text.contains("connection refused"), "{text}");
        assert!(text.contains("holds no block yet"), "{text}");
        assert_eq!(age(now - 7200, now), "2h");
        assert_eq!(age(now - 3 * 86_400, now), "3d");
    }
}
