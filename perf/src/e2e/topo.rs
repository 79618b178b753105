//! The topologies under test, each in network namespaces of its own: a "node"
//! namespace and one namespace per pod, all named `fpf-<run>-<topology>-*`.
//!
//! - ferry: the real `ferry-dataplane` and `ferryd` in the node, pods made by the real `ferry`.
//! - bridge / ptp: Debian's reference plugins (with host-local IPAM) through the CNI protocol.
//! - xdp: our own veth pairs and an in-kernel XDP_REDIRECT between the two talking pods.
//! - two-node topologies ([`Kind::FerryCross`], [`Kind::KernelCross`]): two node namespaces on
//!   a fabric ([`super::cross`]), pod 0 on node A, pod 1 on node B.

use std::collections::BTreeMap;
use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

use serde_json::{json, Value};

use super::cross::{self, Addressing, Fabric, Overlay};
use super::error::{E2eError, Result};
use super::ethtool;
use super::parse;
use super::policies;
use super::services;
use super::sys::{self, in_netns, Netns, Proc, TempDir};
use super::workload::Family;
use super::xdp::XdpRedirect;

/// Where Debian's containernetworking-plugins live.
pub const CNI_DIR: &str = "/usr/lib/cni";
/// Port of the iperf3 server in the receiver pod.
pub const IPERF_PORT: u16 = 5201;

/// Which datapath a topology uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Ferry {
        workers: u32,
    },
    /// ferry with tap pods (virtio-net offloads).
    FerryTap {
        workers: u32,
    },
    Bridge,
    Ptp,
    Xdp,
    /// Two nodes, ferry on each (1 worker), veth or tap pods.
    FerryCross {
        overlay: Overlay,
        tap: bool,
    },
    /// Two nodes, the kernel's Flannel-style path (vxlan or host-gw), pods
    /// on the reference bridge plugin.
    KernelCross {
        overlay: Overlay,
    },
}

impl Kind {
    pub fn describe(&self) -> String {
        match self {
            Kind::Ferry { workers } => format!(
                "ferry: ferry-dataplane ({workers} worker{}) + ferryd in the node namespace, veth pods made by the ferry CNI binary",
                if *workers == 1 { "" } else { "s" }
            ),
            Kind::FerryTap { workers } => format!("ferry-tap: ferry-dataplane ({workers} worker{}) + ferryd in the node namespace, tap pods (virtio-net header, TSO/checksum offload) made by the ferry CNI binary with \"attachment\": \"tap\"", if *workers == 1 { "" } else { "s" }),
            Kind::Bridge => "Linux bridge: reference `bridge` + `host-local` CNI plugins (isGateway, no masquerade)".into(),
            Kind::Ptp => "kernel routed path: reference `ptp` + `host-local` CNI plugins (/32 host routes)".into(),
            Kind::Xdp => "in-kernel XDP_REDIRECT (DEVMAP_HASH) between the two pods' host veths; XDP_PASS on the pod ends; pod tx checksum offload off (see notes)".into(),
            Kind::FerryCross { overlay, tap } => format!(
                "two nodes on a fabric bridge, pod 0 on node A, pod 1 on node B: in each node ferry-dataplane (1 worker, node A's pinned to core 0, node B's to core 1) + ferryd with uplink up0 (veth, 2 queues, set_channels), [overlay] mode = \"{}\", the other node a static [[peers]], pod MTU derived by ferryd; {} pods made by the ferry CNI binary",
                overlay.mode(),
                if *tap { "tap (\"attachment\": \"tap\")" } else { "veth" }
            ),
            Kind::KernelCross { overlay: Overlay::Vxlan } => format!(
                "two nodes on a fabric bridge, pod 0 on node A, pod 1 on node B: Flannel's vxlan backend built by hand in each node ({} VNI {} port {} nolearning on up0, route to the other node's pod /24 via its VTEP onlink, static neigh + bridge fdb entries), pods on the reference bridge + host-local plugins (a /24 per node, MTU {})",
                cross::VXLAN_DEV, cross::VNI, cross::VXLAN_PORT, cross::VXLAN_POD_MTU
            ),
            Kind::KernelCross { overlay: Overlay::Direct } => format!(
                "two nodes on a fabric bridge, pod 0 on node A, pod 1 on node B: Flannel's host-gw backend built by hand in each node (route other node's pod /24 via its address on up0), pods on the reference bridge + host-local plugins (a /24 per node, MTU {})",
                cross::UPLINK_MTU
            ),
        }
    }

    /// Whether pod 0 and pod 1 are on two nodes.
    pub fn two_node(&self) -> bool {
        matches!(self, Kind::FerryCross { .. } | Kind::KernelCross { .. })
    }
}

/// One pod: its namespace (interface eth0) and addresses.
#[derive(Debug)]
pub struct Pod {
    pub ns: Netns,
    pub container: String,
    pub ip: Ipv4Addr,
    /// Its IPv6 address, on a dual-stack topology.
    pub ip6: Option<Ipv6Addr>,
    /// On node B of a two-node topology (else on the only node, or node A).
    pub on_b: bool,
}

impl Pod {
    /// Its address of `family`; an error if the topology is IPv4-only.
    pub fn addr(&self, family: Family) -> Result<IpAddr> {
        match family {
            Family::V4 => Ok(self.ip.into()),
            Family::V6 => self.ip6.map(IpAddr::from).ok_or_else(|| {
                E2eError::setup(&self.ns.name, "no IPv6 address (an IPv4-only topology)")
            }),
        }
    }
}

/// A CNI plugin and its network config, ready to invoke in a node namespace.
#[derive(Debug, Clone)]
pub struct CniCall {
    node: String,
    binary: PathBuf,
    conf: Value,
}

impl CniCall {
    /// Invoke it as a runtime does; `netns` empty: no CNI_NETNS (a DEL after
    /// the pod's namespace is gone).
    pub fn invoke(&self, command: &str, container: &str, netns: &str) -> Result<Value> {
        invoke_cni(
            &self.node,
            &self.binary,
            command,
            container,
            netns,
            &self.conf,
        )
    }
}

/// How to invoke a CNI plugin for this topology.
#[derive(Debug)]
pub(super) struct CniPlugin {
    binary: PathBuf,
    conf: Value,
}

/// One of ferry's two daemons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Daemon {
    Ferryd,
    Dataplane,
}

impl Daemon {
    pub fn name(self) -> &'static str {
        match self {
            Daemon::Ferryd => "ferryd",
            Daemon::Dataplane => "ferry-dataplane",
        }
    }
}

#[derive(Debug)]
pub(super) enum Backend {
    Ferry {
        // Field order is drop order: ferryd before the dataplane.
        ferryd: Proc,
        dataplane: Proc,
        /// `ferryctl --ferryd S --dataplane D`, the arguments included.
        ctl: Vec<String>,
    },
    Cni,
    Xdp(XdpRedirect),
}

/// A topology with its pods; everything is removed when it drops.
#[derive(Debug)]
pub struct Topology {
    pub name: String,
    pub kind: Kind,
    /// What was recorded about it (offloads, sysctls, ...), for the report.
    pub notes: BTreeMap<String, Value>,
    // Field order is drop order: servers, pods, backend daemons/links, node, files.
    iperf: Option<Proc>,
    pub pods: Vec<Pod>,
    plugin: Option<CniPlugin>,
    backend: Backend,
    /// Node B and the fabric of a two-node topology.
    remote: Option<Remote>,
    /// The node namespace (node A of a two-node topology).
    pub node: Netns,
    pub dir: TempDir,
    tag: String,
    /// Pods get an IPv6 address too.
    dual_stack: bool,
    /// Services `0..services` are in place ([`Topology::ensure_services`]).
    services: usize,
    /// The policy's rules per direction, 0: none ([`Topology::ensure_policy`]).
    policy_rules: usize,
}

/// `ferryctl verb -f file` (the command `ctl` with its sockets) of `text`.
fn ferryctl_file(ctl: &[String], verb: &str, file: &Path, text: &str) -> Result<()> {
    fs::write(file, text).map_err(|e| E2eError::io(format!("write {}", file.display()), e))?;
    let mut cmd = Command::new(&ctl[0]);
    cmd.args(&ctl[1..]).args([verb, "-f"]).arg(file);
    let out = sys::run_with(cmd, None, Duration::from_secs(60))?;
    if !out.ok() {
        return Err(E2eError::Command {
            cmd: format!("ferryctl {verb} -f {}", file.display()),
            detail: format!(
                "exit {:?}: {} {}",
                out.code,
                out.stdout.trim(),
                out.stderr.trim()
            ),
        });
    }
    Ok(())
}

/// The second node of a two-node topology and the fabric between the two.
#[derive(Debug)]
struct Remote {
    // Field order is drop order: node B's daemons, node B, then the fabric.
    plugin: CniPlugin,
    backend: Backend,
    node: Netns,
    #[expect(
        dead_code,
        reason = "held only: dropping it deletes the fabric namespace"
    )]
    fabric: Fabric,
}

/// Where ferry's release binaries are.
pub fn default_bin_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release")
}

/// Check that ferry's binaries exist in `dir`.
pub fn check_ferry_bins(dir: &Path) -> Result<()> {
    for b in ["ferry", "ferryd", "ferry-dataplane", "ferryctl"] {
        if !dir.join(b).is_file() {
            return Err(E2eError::setup(
                "ferry",
                format!(
                    "{} not found: build ferry first with `cargo build --release --workspace --bins` \
                     (or pass --bin-dir, or leave ferry out with --topologies bridge,ptp,xdp)",
                    dir.join(b).display()
                ),
            ));
        }
    }
    Ok(())
}

/// One ferry node with no pods, for the commands that drive ferry alone
/// (`perf churn`, `perf restart`, named by `what`): root and the tools
/// checked, the binaries found, the signal handlers installed, the daemons
/// up and ready.
pub fn ferry_node(what: &str, workers: u32, bin_dir: &Path) -> Result<Topology> {
    ferry_node_with(what, workers, bin_dir, &[])
}

/// [`ferry_node`] with extra ferry-dataplane arguments.
pub fn ferry_node_with(
    what: &str,
    workers: u32,
    bin_dir: &Path,
    dataplane_args: &[String],
) -> Result<Topology> {
    super::preflight_root(what, &[])?;
    check_ferry_bins(bin_dir)?;
    sys::install_signal_handlers()?;
    let run_tag = format!("{}", std::process::id() % 100_000);
    Topology::build(
        "ferry",
        Kind::Ferry { workers },
        &run_tag,
        0,
        bin_dir,
        dataplane_args,
        false,
    )
}

/// Invoke a CNI plugin inside `node_ns` exactly as a runtime does (env + stdin).
pub fn invoke_cni(
    node_ns: &str,
    plugin: &Path,
    command: &str,
    container: &str,
    netns: &str,
    conf: &Value,
) -> Result<Value> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", node_ns]).arg(plugin);
    cmd.env_clear()
        .env(
            "PATH",
            std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into()),
        )
        .env("CNI_COMMAND", command)
        .env("CNI_PATH", CNI_DIR);
    if !netns.is_empty() {
        cmd.env("CNI_NETNS", netns);
    }
    if !container.is_empty() {
        cmd.env("CNI_CONTAINERID", container)
            .env("CNI_IFNAME", "eth0")
            .env(
                "CNI_ARGS",
                // Each pod a Kubernetes pod of its own, named after its container.
                format!(
                    "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={container}",
                    super::policies::NAMESPACE
                ),
            );
    }
    let stdin = conf.to_string();
    let out = sys::run_with(cmd, Some(stdin.as_bytes()), Duration::from_secs(60))?;
    let what = format!("{} {command} {container}", plugin.display());
    if !out.ok() {
        return Err(E2eError::Command {
            cmd: what,
            detail: format!(
                "exit {:?}: {} {}",
                out.code,
                out.stdout.trim(),
                out.stderr.trim()
            ),
        });
    }
    if out.stdout.trim().is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_str(&out.stdout)
        .map_err(|e| E2eError::parse(what, format!("{e}: {}", out.stdout)))
}

/// The pod's addresses in a CNI result (`ips[].address`, `addr/len`), in order.
fn result_addrs(result: &Value) -> Result<Vec<IpAddr>> {
    let mut v = Vec::new();
    for ip in result["ips"].as_array().into_iter().flatten() {
        let addr = ip["address"]
            .as_str()
            .ok_or_else(|| E2eError::parse("CNI result", format!("no address in {ip}")))?;
        let a = addr
            .split('/')
            .next()
            .unwrap_or("")
            .parse()
            .map_err(|_| E2eError::parse("CNI result", format!("bad address {addr}")))?;
        v.push(a);
    }
    Ok(v)
}

/// The pod's IPv4 address from a CNI result (the first one listed).
pub fn result_ip(result: &Value) -> Result<Ipv4Addr> {
    result_addrs(result)?
        .into_iter()
        .find_map(|a| match a {
            IpAddr::V4(a) => Some(a),
            IpAddr::V6(_) => None,
        })
        .ok_or_else(|| E2eError::parse("CNI result", format!("no IPv4 address in {result}")))
}

/// The pod's IPv6 address from a CNI result, if it lists one.
pub fn result_ip6(result: &Value) -> Result<Option<Ipv6Addr>> {
    Ok(result_addrs(result)?.into_iter().find_map(|a| match a {
        IpAddr::V6(a) => Some(a),
        IpAddr::V4(_) => None,
    }))
}

fn short(kind: Kind) -> String {
    match kind {
        Kind::Ferry { workers } => format!("fe{workers}"),
        Kind::FerryTap { workers } => format!("ft{workers}"),
        Kind::Bridge => "br".into(),
        Kind::Ptp => "pt".into(),
        Kind::Xdp => "xd".into(),
        Kind::FerryCross { overlay, tap } => {
            format!("f{}{}", cross_short(overlay), if tap { "t" } else { "v" })
        }
        Kind::KernelCross { overlay } => format!("k{}", cross_short(overlay)),
    }
}

fn cross_short(o: Overlay) -> &'static str {
    match o {
        Overlay::Vxlan => "vx",
        Overlay::Direct => "hg",
    }
}

/// The fabric subnet and pod /24s of a two-node topology (each its own, so
/// that names in a report's notes never mean two things).
fn addressing(kind: Kind) -> Addressing {
    let direct = |o: Overlay| u8::from(o == Overlay::Direct);
    let k = match kind {
        Kind::FerryCross { overlay, tap } => 2 * direct(overlay) + u8::from(tap),
        Kind::KernelCross { overlay } => 4 + direct(overlay),
        _ => 6,
    };
    Addressing {
        fabric: 71 + k,
        pods: 20 + 2 * k,
    }
}

fn subnet(kind: Kind) -> &'static str {
    match kind {
        Kind::Ferry { workers: 1 } => "10.99.10.0/24",
        Kind::Ferry { .. } => "10.99.11.0/24",
        Kind::FerryTap { workers: 1 } => "10.99.12.0/24",
        Kind::FerryTap { .. } => "10.99.13.0/24",
        Kind::Bridge => "10.99.1.0/24",
        Kind::Ptp => "10.99.2.0/24",
        Kind::Xdp => "10.99.3.0/24",
        // Two-node topologies: see `addressing`.
        Kind::FerryCross { .. } | Kind::KernelCross { .. } => "-",
    }
}

/// The IPv6 /64 of a single-node topology beside its `10.99.N.0/24`:
/// `fd00:99:N::/64` (gateway `::1`, as ferryd and host-local default to);
/// `None` for two-node ones (IPv6 across nodes is not built).
fn subnet6(kind: Kind) -> Option<String> {
    let n = subnet(kind).strip_prefix("10.99.")?.split('.').next()?;
    Some(format!("fd00:99:{n}::/64"))
}

impl Topology {
    /// Build the topology `kind` named `name` with `pods` pods. `run_tag` makes names unique.
    /// `dataplane_args` are appended to ferry-dataplane's command line (ferry kinds only).
    /// `dual_stack`: pods get an IPv6 address too ([`subnet6`]; single-node kinds only).
    pub fn build(
        name: &str,
        kind: Kind,
        run_tag: &str,
        pods: usize,
        bin_dir: &Path,
        dataplane_args: &[String],
        dual_stack: bool,
    ) -> Result<Topology> {
        let cidr6 = match (dual_stack, subnet6(kind)) {
            (false, _) => None,
            (true, Some(c)) => Some(c),
            (true, None) => {
                return Err(E2eError::setup(
                    name,
                    "IPv6 across nodes is not built: two-node topologies are IPv4-only",
                ))
            }
        };
        let tag = format!("fpf-{run_tag}-{}", short(kind));
        let dir = TempDir::create(&format!("{run_tag}-{}", short(kind)))?;
        let node = Netns::create(&format!(
            "{tag}-{}",
            if kind.two_node() { "na" } else { "n" }
        ))?;
        let mut notes = BTreeMap::new();
        notes.insert("description".to_string(), Value::from(kind.describe()));
        if let Some(c) = &cidr6 {
            notes.insert(
                "ipv6".to_string(),
                json!(format!("dual-stack pods: IPv6 from {c} beside IPv4")),
            );
        }
        let mut remote = None;
        let (backend, plugin) = match kind {
            Kind::Ferry { workers } | Kind::FerryTap { workers } => {
                check_ferry_bins(bin_dir)?;
                let cidrs: Vec<&str> = [Some(subnet(kind)), cidr6.as_deref()]
                    .into_iter()
                    .flatten()
                    .collect();
                let (backend, mut conf) = start_ferry(
                    &node,
                    &dir.path,
                    bin_dir,
                    workers,
                    dataplane_args,
                    &cidrs,
                    None,
                )?;
                if matches!(kind, Kind::FerryTap { .. }) {
                    conf["attachment"] = json!("tap");
                }
                (
                    backend,
                    Some(CniPlugin {
                        binary: bin_dir.join("ferry"),
                        conf,
                    }),
                )
            }
            Kind::Bridge | Kind::Ptp => {
                let ty = if kind == Kind::Bridge {
                    "bridge"
                } else {
                    "ptp"
                };
                let plugin = reference_plugin(
                    name,
                    ty,
                    subnet(kind),
                    cidr6.as_deref(),
                    1500,
                    &dir.path.join("ipam"),
                )?;
                (Backend::Cni, Some(plugin))
            }
            Kind::Xdp => {
                let obj = super::xdp::compile(&dir.path)?;
                (Backend::Xdp(XdpRedirect::load(&obj)?), None)
            }
            Kind::FerryCross { .. } | Kind::KernelCross { .. } => {
                let a = addressing(kind);
                let fabric = Fabric::create(&format!("{tag}-fab"))?;
                let node_b = Netns::create(&format!("{tag}-nb"))?;
                fabric.plug("pa", &node.name, a.node_address(0))?;
                fabric.plug("pb", &node_b.name, a.node_address(1))?;
                let (backend, plugin) =
                    cross_node(name, kind, &a, 0, &node, &dir.path, bin_dir, dataplane_args)?;
                let (b_backend, b_plugin) = cross_node(
                    name,
                    kind,
                    &a,
                    1,
                    &node_b,
                    &dir.path,
                    bin_dir,
                    dataplane_args,
                )?;
                notes.insert(
                    "nodes".into(),
                    json!(format!(
                        "A {}: up0 {}/24, pods {}; B {}: up0 {}/24, pods {}; fabric {} (br0)",
                        node.name,
                        a.node_address(0),
                        a.pod_cidr(0),
                        node_b.name,
                        a.node_address(1),
                        a.pod_cidr(1),
                        fabric.ns.name
                    )),
                );
                remote = Some(Remote {
                    plugin: b_plugin,
                    backend: b_backend,
                    node: node_b,
                    fabric,
                });
                (backend, Some(plugin))
            }
        };
        let mut t = Topology {
            name: name.to_string(),
            kind,
            notes,
            iperf: None,
            pods: Vec::new(),
            plugin,
            backend,
            remote,
            node,
            dir,
            tag,
            dual_stack,
            services: 0,
            policy_rules: 0,
        };
        t.ensure_pods(pods)?;
        if let Backend::Xdp(x) = &mut t.backend {
            let node = t.node.name.clone();
            x.connect(&node, "h0", "h1")?;
            for p in &t.pods[..2] {
                in_netns(&p.ns.name, || ethtool::set_tx_checksum("eth0", false))?;
            }
            t.notes.insert(
                "pod_tx_checksum".into(),
                json!("off on the two talking pods: XDP_REDIRECT drops the skb, so CHECKSUM_PARTIAL TCP would never be completed"),
            );
        }
        t.record_notes()?;
        Ok(t)
    }

    /// Create pods until there are `n` (pods beyond the first two only
    /// exist). On a two-node topology odd pods go to node B: pod 0 (the
    /// sender) on A, pod 1 (the receiver) on B.
    pub fn ensure_pods(&mut self, n: usize) -> Result<()> {
        let first_new = self.pods.len();
        while self.pods.len() < n {
            sys::check_interrupt()?;
            let i = self.pods.len();
            let on_b = self.remote.is_some() && i % 2 == 1;
            let ns = Netns::create(&format!("{}-p{i}", self.tag))?;
            let container = format!("{}-c{i}", self.tag);
            let (ip, ip6) = match self.plugin_on(on_b) {
                Some((node, p)) => {
                    let r = invoke_cni(node, &p.binary, "ADD", &container, &ns.path(), &p.conf)
                        .map_err(|e| E2eError::setup(&self.name, format!("ADD pod {i}: {e}")))?;
                    (result_ip(&r)?, result_ip6(&r)?)
                }
                None => self.add_xdp_pod(i, &ns)?,
            };
            if self.dual_stack && ip6.is_none() {
                return Err(E2eError::setup(
                    &self.name,
                    format!("ADD pod {i}: no IPv6 address in the result"),
                ));
            }
            self.pods.push(Pod {
                ns,
                container,
                ip,
                ip6,
                on_b,
            });
        }
        if self.dual_stack && self.pods.len() > first_new {
            // Duplicate-address detection of every new address runs at once;
            // wait for all of them together. The reference plugins (1.1.1)
            // hand a pod's address over settled but leave the gateway they
            // put on the node's side (the bridge, ptp's host veths) tentative
            // for about a second.
            let gateway_side = matches!(self.kind, Kind::Bridge | Kind::Ptp);
            let nodes = gateway_side.then_some(&self.node);
            for ns in self.pods[first_new..].iter().map(|p| &p.ns).chain(nodes) {
                wait_dad_done(&self.name, &ns.name, Duration::from_secs(10))?;
            }
        }
        Ok(())
    }

    /// The node namespace and CNI plugin of pods on node A (or the only
    /// node) or node B; `None` for the xdp topology (no plugin).
    fn plugin_on(&self, on_b: bool) -> Option<(&str, &CniPlugin)> {
        match (&self.remote, on_b) {
            (Some(r), true) => Some((&r.node.name, &r.plugin)),
            _ => self.plugin.as_ref().map(|p| (self.node.name.as_str(), p)),
        }
    }

    /// The pids of every ferry-dataplane of this topology (both nodes of a
    /// two-node one; none for the kernel's paths).
    pub fn dataplane_pids(&self) -> Vec<u32> {
        let remote = self.remote.as_ref().map(|r| &r.backend);
        [Some(&self.backend), remote]
            .into_iter()
            .flatten()
            .filter_map(|b| match b {
                Backend::Ferry { dataplane, .. } => Some(dataplane.pid()),
                _ => None,
            })
            .collect()
    }

    fn add_xdp_pod(&mut self, i: usize, ns: &Netns) -> Result<(Ipv4Addr, Option<Ipv6Addr>)> {
        let host = format!("h{i}");
        let node = &self.node.name;
        sys::run_ok(
            "ip",
            &[
                "-n", node, "link", "add", &host, "type", "veth", "peer", "name", "eth0", "netns",
                &ns.name,
            ],
        )?;
        let ip = Ipv4Addr::new(10, 99, 3, 2 + i as u8);
        sys::run_ok(
            "ip",
            &[
                "-n",
                &ns.name,
                "addr",
                "add",
                &format!("{ip}/24"),
                "dev",
                "eth0",
            ],
        )?;
        // The redirect is by ingress interface, so IPv6 needs only the
        // addresses; `nodad`: nothing else is on these veths to claim them.
        let ip6 = self
            .dual_stack
            .then(|| Ipv6Addr::new(0xfd00, 0x99, 3, 0, 0, 0, 0, 2 + i as u16));
        if let Some(a) = ip6 {
            let cidr = format!("{a}/64");
            sys::run_ok(
                "ip",
                &["-n", &ns.name, "addr", "add", &cidr, "dev", "eth0", "nodad"],
            )?;
        }
        sys::run_ok("ip", &["-n", &ns.name, "link", "set", "eth0", "up"])?;
        sys::run_ok("ip", &["-n", node, "link", "set", &host, "up"])?;
        if let Backend::Xdp(x) = &mut self.backend {
            x.attach_pass(&ns.name, "eth0")?;
        }
        Ok((ip, ip6))
    }

    fn record_notes(&mut self) -> Result<()> {
        if let Some(p0) = self.pods.first() {
            let off = in_netns(&p0.ns.name, || ethtool::offloads("eth0"))?;
            self.notes.insert("pod_eth0_offloads".into(), json!(off));
        }
        if let Some(p0) = self.pods.first() {
            let link = sys::run_ok("ip", &["-n", &p0.ns.name, "-j", "link", "show", "eth0"])?;
            if let Some(mtu) = parse::link_mtu(&link) {
                self.notes.insert("pod_eth0_mtu".into(), json!(mtu));
            }
        }
        if matches!(self.kind, Kind::Bridge | Kind::KernelCross { .. }) {
            let bridge = in_netns(&self.node.name, || {
                let dir = Path::new("/proc/sys/net/bridge");
                let mut m = BTreeMap::new();
                if let Ok(rd) = fs::read_dir(dir) {
                    for e in rd.flatten() {
                        let v = fs::read_to_string(e.path()).unwrap_or_default();
                        m.insert(
                            e.file_name().to_string_lossy().into_owned(),
                            v.trim().to_string(),
                        );
                    }
                }
                Ok(m)
            })?;
            let on = bridge.get("bridge-nf-call-iptables").map(|v| v == "1");
            self.notes.insert(
                "br_netfilter".into(),
                match on {
                    Some(true) => json!("loaded, bridge-nf-call-iptables=1 (bridged frames traverse iptables hooks; no rules in the node namespace but, with --services, the nat table of the service cases, loaded after every other case)"),
                    Some(false) => json!("loaded, bridge-nf-call-iptables=0"),
                    None => json!("not loaded (/proc/sys/net/bridge absent)"),
                },
            );
            self.notes
                .insert("proc_sys_net_bridge".into(), json!(bridge));
        }
        Ok(())
    }

    /// Whether the service cases run here: ferry's single-node topologies
    /// (the dataplane translates) and the kernel's (`bridge`, `ptp`: the
    /// node namespace gets kube-proxy's iptables rules).
    pub fn serves_services(&self) -> bool {
        matches!(
            self.kind,
            Kind::Ferry { .. } | Kind::FerryTap { .. } | Kind::Bridge | Kind::Ptp
        )
    }

    /// `net.bridge.bridge-nf-call-iptables` is 1 in the node namespace:
    /// frames the bridge forwards between pods traverse iptables' hooks
    /// (br_netfilter loaded; the harness never changes it).
    fn bridge_nf_call_iptables(&self) -> bool {
        in_netns(&self.node.name, || {
            Ok(
                fs::read_to_string("/proc/sys/net/bridge/bridge-nf-call-iptables")
                    .is_ok_and(|v| v.trim() == "1"),
            )
        })
        .unwrap_or(false)
    }

    /// Make services `0..n` exist, all backed by pod 1 ([`services`]): on
    /// ferry through `ferryctl apply -f` (or `delete -f` of the surplus),
    /// then waiting (60 s bound) until the dataplane's tables hold exactly
    /// their ports; on the kernel's paths by loading kube-proxy's nat table
    /// with `iptables-restore` in the node namespace (the whole table at
    /// once, as kube-proxy does).
    pub fn ensure_services(&mut self, n: usize) -> Result<()> {
        let cur = self.services;
        if n == cur {
            return Ok(());
        }
        let backend = [self.pods[1].ip];
        match &self.backend {
            Backend::Ferry { ctl, .. } if self.serves_services() => {
                let (verb, range) = if n > cur {
                    ("apply", cur..n)
                } else {
                    ("delete", n..cur)
                };
                let files = services::yaml_files(range, &backend, services::FILE_LIMIT);
                for (k, text) in files.iter().enumerate() {
                    let f = self.dir.path.join(format!("services-{n}-{verb}-{k}.yaml"));
                    ferryctl_file(ctl, verb, &f, text)?;
                }
                let dp = PathBuf::from(&ctl[4]);
                let mut want = services::port_ids(n);
                want.sort();
                let mut have = Vec::new();
                let done = sys::wait_until(Duration::from_secs(60), || {
                    have = ferry_api::client::tables(&dp)
                        .map(|t| t.services.into_iter().map(|p| p.id).collect())
                        .unwrap_or_default();
                    have.sort();
                    have == want
                })?;
                if !done {
                    return Err(E2eError::setup(
                        &self.name,
                        format!(
                            "the dataplane holds {} service ports after 60 s, not the {} of {n} services",
                            have.len(),
                            want.len()
                        ),
                    ));
                }
            }
            Backend::Cni if self.serves_services() => {
                // With the pods on one bridge, the backend's reply to the
                // client is bridged, not routed: only br_netfilter shows it
                // to conntrack, which puts the ClusterIP back as its
                // source. Without it, masquerade every service packet
                // (kube-proxy's --masquerade-all) so replies are routed.
                let masquerade_all = self.kind == Kind::Bridge && !self.bridge_nf_call_iptables();
                let rules = services::iptables_rules(n, &backend, masquerade_all);
                let f = self.dir.path.join(format!("iptables-{n}.rules"));
                fs::write(&f, &rules)
                    .map_err(|e| E2eError::io(format!("write {}", f.display()), e))?;
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", &self.node.name, "iptables-restore"]);
                let out = sys::run_with(cmd, Some(rules.as_bytes()), Duration::from_secs(60))?;
                if !out.ok() {
                    return Err(E2eError::Command {
                        cmd: format!(
                            "ip netns exec {} iptables-restore < {}",
                            self.node.name,
                            f.display()
                        ),
                        detail: format!("exit {:?}: {}", out.code, out.stderr.trim()),
                    });
                }
                self.notes.insert(
                    "services_nat".into(),
                    json!(if masquerade_all {
                        "kube-proxy iptables rules with --masquerade-all: bridge-nf-call-iptables is off here, so the backend's bridged reply would bypass conntrack; every service packet is masqueraded to the bridge address"
                    } else if self.kind == Kind::Bridge {
                        "kube-proxy iptables rules (DNAT only, hairpin mark): bridge-nf-call-iptables=1 in the node namespace, so the backend's reply, bridged straight to the client, passes conntrack, which puts the ClusterIP back as its source (kubelet requires br_netfilter for this)"
                    } else {
                        "kube-proxy iptables rules (DNAT only, hairpin mark): replies are routed by the node, through conntrack"
                    }),
                );
            }
            _ => {
                return Err(E2eError::setup(
                    &self.name,
                    "no service cases on this topology",
                ))
            }
        }
        self.services = n;
        Ok(())
    }

    /// Whether the policy cases run here: ferry's one-node topologies.
    pub fn polices(&self) -> bool {
        matches!(self.kind, Kind::Ferry { .. } | Kind::FerryTap { .. })
    }

    /// Make the policy of `n` rules per direction ([`policies::yaml`])
    /// select every pod (`n` = 0: no policy): `ferryctl apply -f` (or
    /// `delete -f`), then waiting (60 s bound) until the dataplane polices
    /// every pod with `n` ingress and `n` egress rules (or none).
    pub fn ensure_policy(&mut self, n: usize) -> Result<()> {
        if n == self.policy_rules {
            return Ok(());
        }
        let Backend::Ferry { ctl, .. } = &self.backend else {
            return Err(E2eError::setup(
                &self.name,
                "no policy cases on this topology",
            ));
        };
        let o = self.pods[0].ip.octets();
        let prefix = (Ipv4Addr::new(o[0], o[1], o[2], 0), 24);
        let (verb, rules) = if n > 0 {
            ("apply", n)
        } else {
            ("delete", self.policy_rules)
        };
        let f = self.dir.path.join(format!("policy-{rules}.yaml"));
        ferryctl_file(ctl, verb, &f, &policies::yaml(rules, prefix))?;
        let dp = PathBuf::from(&ctl[4]);
        let want = if n > 0 { self.pods.len() } else { 0 };
        let mut have = (0, 0);
        let done = sys::wait_until(Duration::from_secs(60), || {
            let t = ferry_api::client::tables(&dp)
                .map(|t| t.policies)
                .unwrap_or_default();
            let full = |r: &Option<Vec<_>>| r.as_ref().is_some_and(|r| r.len() == n);
            have = (
                t.len(),
                t.iter()
                    .filter(|p| full(&p.ingress) && full(&p.egress))
                    .count(),
            );
            have == (want, want)
        })?;
        if !done {
            return Err(E2eError::setup(
                &self.name,
                format!(
                    "after 60 s the dataplane polices {} endpoints ({} with {n} rules each way), not {want}",
                    have.0, have.1
                ),
            ));
        }
        self.policy_rules = n;
        Ok(())
    }

    /// Evidence that the policy let the workloads through and judged them:
    /// no policy denial on any port, and the connection table's inserts.
    pub fn policy_path_check(&self) -> Result<String> {
        let Backend::Ferry { ctl, .. } = &self.backend else {
            return Err(E2eError::setup(
                &self.name,
                "no policy cases on this topology",
            ));
        };
        let s = ferry_api::client::stats(Path::new(&ctl[4]))
            .map_err(|e| E2eError::setup(&self.name, format!("stats: {e}")))?;
        let denied: u64 = s
            .ports
            .iter()
            .flat_map(|p| p.drops.iter())
            .filter(|(reason, _)| reason.starts_with("policy_denied"))
            .map(|(_, n)| *n)
            .sum();
        if denied > 0 {
            return Err(E2eError::setup(
                &self.name,
                format!("the policy denied {denied} packets of the workloads"),
            ));
        }
        let ct = s.conntrack.ok_or_else(|| {
            E2eError::setup(
                &self.name,
                "no connection table: no policy reached the dataplane",
            )
        })?;
        Ok(format!(
            "{} rules each way: no denial; connection table {} inserts, {} entries",
            self.policy_rules, ct.inserts, ct.entries
        ))
    }

    /// Evidence that the measured service's traffic took the translation:
    /// on the kernel's paths the packet counts of its two DNAT rules
    /// (`iptables-save -c` in the node namespace; an error if either is 0,
    /// so call it after traffic); on ferry the connection table's inserts
    /// and entries (`Stats.conntrack`; an error if it made none).
    pub fn service_path_check(&self) -> Result<String> {
        let n = self.services;
        let i = services::measured(n);
        match &self.backend {
            Backend::Ferry { ctl, .. } => {
                let s = ferry_api::client::stats(Path::new(&ctl[4]))
                    .map_err(|e| E2eError::setup(&self.name, format!("stats: {e}")))?;
                let ct = s.conntrack.ok_or_else(|| {
                    E2eError::setup(
                        &self.name,
                        "no connection table: no service reached the dataplane",
                    )
                })?;
                if ct.inserts == 0 {
                    return Err(E2eError::setup(
                        &self.name,
                        "the connection table made no entry",
                    ));
                }
                Ok(format!(
                    "{n} services: connection table {} inserts, {} entries (capacity {})",
                    ct.inserts, ct.entries, ct.capacity
                ))
            }
            Backend::Cni => {
                let save = sys::run_ok(
                    "ip",
                    &[
                        "netns",
                        "exec",
                        &self.node.name,
                        "iptables-save",
                        "-c",
                        "-t",
                        "nat",
                    ],
                )?;
                let b = self.pods[1].ip;
                let mut got = Vec::new();
                for proto in ["udp", "tcp"] {
                    let sep = services::sep_chain(i, proto, b);
                    let pkts = services::dnat_packets(&save, &sep).unwrap_or(0);
                    if pkts == 0 {
                        return Err(E2eError::setup(
                            &self.name,
                            format!(
                                "{n} services: the {proto} DNAT rule of {} ({sep}) counted no packet",
                                services::name(i)
                            ),
                        ));
                    }
                    got.push(format!("{proto} {pkts}"));
                }
                let rules = save
                    .lines()
                    .filter(|l| l.contains("-A KUBE-SERVICES "))
                    .count();
                Ok(format!(
                    "{n} services: {rules} KUBE-SERVICES rules; DNAT packets of {}: {}",
                    services::name(i),
                    got.join(", ")
                ))
            }
            Backend::Xdp(_) => Err(E2eError::setup(
                &self.name,
                "no service cases on this topology",
            )),
        }
    }

    /// The sender (pod 0) and receiver (pod 1).
    pub fn pair(&self) -> (&Pod, &Pod) {
        (&self.pods[0], &self.pods[1])
    }

    /// Start iperf3's server in the receiver pod and wait until it listens.
    pub fn start_iperf_server(&mut self) -> Result<()> {
        if self.iperf.is_some() {
            return Ok(());
        }
        let rx = &self.pods[1];
        let log = self.dir.path.join("iperf3-server.log");
        let args: Vec<String> = ["iperf3", "-s", "-p", &IPERF_PORT.to_string()]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut p = Proc::spawn_in_ns("iperf3 server", &rx.ns.name, &args, Some(&log))?;
        let ns = rx.ns.name.clone();
        let ok = sys::wait_until(Duration::from_secs(10), || {
            // iperf3 listens on a dual-stack socket: it shows in tcp6.
            in_netns(&ns, || {
                Ok(["tcp", "tcp6"]
                    .map(|f| {
                        fs::read_to_string(format!("/proc/thread-self/net/{f}")).unwrap_or_default()
                    })
                    .concat())
            })
            .map(|t| parse::tcp_listening(&t, IPERF_PORT))
            .unwrap_or(false)
        })?;
        if !ok || !p.alive() {
            return Err(E2eError::setup(
                &self.name,
                format!("iperf3 server did not listen: {}", p.log_tail()),
            ));
        }
        self.iperf = Some(p);
        Ok(())
    }

    /// Check the daemons still run (ferry); an error names the one that died.
    pub fn check_alive(&mut self) -> Result<()> {
        let remote = self.remote.as_mut().map(|r| (&mut r.backend, " on node B"));
        for (backend, on) in [Some((&mut self.backend, "")), remote]
            .into_iter()
            .flatten()
        {
            if let Backend::Ferry {
                ferryd, dataplane, ..
            } = backend
            {
                for p in [dataplane, ferryd] {
                    if !p.alive() {
                        return Err(E2eError::setup(
                            &self.name,
                            format!("{}{on} exited: {}", p.what, p.log_tail()),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// The prefix of every namespace name of this run: `fpf-<run>-`.
    pub fn run_prefix(&self) -> String {
        let topo = format!("-{}", short(self.kind));
        format!("{}-", self.tag.strip_suffix(&topo).unwrap_or(&self.tag))
    }

    /// A name for a namespace of this topology: `fpf-<run>-<topology>-<suffix>`.
    pub fn ns_name(&self, suffix: &str) -> String {
        format!("{}-{suffix}", self.tag)
    }

    fn daemon(&mut self, d: Daemon) -> Result<&mut Proc> {
        match &mut self.backend {
            Backend::Ferry {
                ferryd, dataplane, ..
            } => Ok(match d {
                Daemon::Ferryd => ferryd,
                Daemon::Dataplane => dataplane,
            }),
            _ => Err(E2eError::setup(&self.name, "not a ferry topology")),
        }
    }

    /// SIGKILL one of ferry's daemons (by pid) and reap it.
    pub fn kill_daemon(&mut self, d: Daemon) -> Result<()> {
        self.daemon(d)?.kill_now();
        Ok(())
    }

    /// Start a daemon that was killed or stopped again, with the same command
    /// line; returns at once (readiness is the caller's to wait for).
    pub fn start_daemon(&mut self, d: Daemon) -> Result<()> {
        self.daemon(d)?.respawn()
    }

    /// SIGTERM a daemon and wait up to `timeout`: its exit status, `None` if
    /// it had to be SIGKILLed.
    pub fn stop_daemon(&mut self, d: Daemon, timeout: Duration) -> Result<Option<ExitStatus>> {
        Ok(self.daemon(d)?.terminate(timeout))
    }

    /// The daemon's pid and open fds, while it runs.
    pub fn daemon_fds(&mut self, d: Daemon) -> Result<Option<(u32, usize)>> {
        let p = self.daemon(d)?;
        Ok(p.fd_count().map(|n| (p.pid(), n)))
    }

    /// The last lines of a daemon's log.
    pub fn daemon_log_tail(&mut self, d: Daemon) -> String {
        self.daemon(d).map(|p| p.log_tail()).unwrap_or_default()
    }

    /// The `ferry` plugin of this topology, with `"attachment"` set in its
    /// network config when given: owned, so it can be invoked from another
    /// thread while this one kills and restarts the daemons.
    pub fn ferry_plugin(&self, attachment: Option<&str>) -> Result<CniCall> {
        if !matches!(self.backend, Backend::Ferry { .. }) {
            return Err(E2eError::setup(&self.name, "not a ferry topology"));
        }
        let mut call = self.cni_call()?;
        if let Some(a) = attachment {
            call.conf["attachment"] = json!(a);
        }
        Ok(call)
    }

    /// The topology's own CNI plugin and config (node A's on a two-node
    /// topology), as an owned call; an error for the xdp topology.
    pub fn cni_call(&self) -> Result<CniCall> {
        let p = self
            .plugin
            .as_ref()
            .ok_or_else(|| E2eError::setup(&self.name, "no CNI plugin in this topology"))?;
        Ok(CniCall {
            node: self.node.name.clone(),
            binary: p.binary.clone(),
            conf: p.conf.clone(),
        })
    }

    /// ferryd answers STATUS ready (`ferryctl status` exit 0: connected to the
    /// dataplane and synced) and the dataplane answers its table API.
    pub fn ferry_ready(&self) -> bool {
        matches!(self.ferryctl_json(&["status"]), Ok((v, Some(0))) if v["ready"] == json!(true))
    }

    /// `ferryctl --json <args>` against this topology's daemons (10 s bound):
    /// the parsed JSON and the exit code (ferryctl status exits 2 when not ready).
    pub fn ferryctl_json(&self, args: &[&str]) -> Result<(Value, Option<i32>)> {
        let Backend::Ferry { ctl, .. } = &self.backend else {
            return Err(E2eError::setup(&self.name, "not a ferry topology"));
        };
        let mut cmd = Command::new(&ctl[0]);
        cmd.args(&ctl[1..]).arg("--json").args(args);
        let out = sys::run_with(cmd, None, Duration::from_secs(10))?;
        let what = format!("ferryctl {}", args.join(" "));
        if out.stdout.trim().is_empty() {
            return Err(E2eError::Command {
                cmd: what,
                detail: format!("exit {:?}: {}", out.code, out.stderr.trim()),
            });
        }
        let v = serde_json::from_str(&out.stdout)
            .map_err(|e| E2eError::parse(what, format!("{e}: {}", out.stdout)))?;
        Ok((v, out.code))
    }

    /// DEL every pod through its plugin (best effort, skipped after a signal).
    fn del_pods(&mut self) {
        for pod in self.pods.iter().rev() {
            if sys::interrupted() {
                return;
            }
            let Some((node, p)) = self.plugin_on(pod.on_b) else {
                return;
            };
            let _ = invoke_cni(
                node,
                &p.binary,
                "DEL",
                &pod.container,
                &pod.ns.path(),
                &p.conf,
            );
        }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.iperf = None;
        self.del_pods();
    }
}

fn start_ferry(
    node: &Netns,
    dir: &Path,
    bin: &Path,
    workers: u32,
    extra_args: &[String],
    pod_cidrs: &[&str],
    uplink: Option<&str>,
) -> Result<(Backend, Value)> {
    let sock = dir.join("ferryd.sock");
    let dp_sock = dir.join("dataplane.sock");
    let config = ferryd_config(dir, pod_cidrs, uplink)?;
    let cfg = dir.join("ferryd.toml");
    fs::write(&cfg, config).map_err(|e| E2eError::io(format!("write {}", cfg.display()), e))?;
    let s = |p: &Path| p.display().to_string();
    let mut args = vec![
        s(&bin.join("ferry-dataplane")),
        "--socket".into(),
        s(&dp_sock),
        "--workers".into(),
        workers.to_string(),
    ];
    args.extend_from_slice(extra_args);
    let mut dataplane = Proc::spawn_in_ns(
        "ferry-dataplane",
        &node.name,
        &args,
        Some(&dir.join("ferry-dataplane.log")),
    )?;
    let up = sys::wait_until(Duration::from_secs(20), || dp_sock.exists())?;
    if !up || !dataplane.alive() {
        return Err(E2eError::setup(
            "ferry",
            format!(
                "ferry-dataplane did not create its socket: {}",
                dataplane.log_tail()
            ),
        ));
    }
    let mut ferryd = Proc::spawn_in_ns(
        "ferryd",
        &node.name,
        &[s(&bin.join("ferryd")), "--config".into(), s(&cfg)],
        Some(&dir.join("ferryd.log")),
    )?;
    let conf = json!({
        "cniVersion": "1.0.0",
        "name": "fpf-ferry",
        "type": "ferry",
        "ferrydSocket": s(&sock),
    });
    let mut status_conf = conf.clone();
    status_conf["cniVersion"] = json!("1.1.0");
    let ferry = bin.join("ferry");
    let ready = sys::wait_until(Duration::from_secs(30), || {
        invoke_cni(&node.name, &ferry, "STATUS", "", "", &status_conf).is_ok()
    })?;
    if !ready || !ferryd.alive() {
        return Err(E2eError::setup(
            "ferry",
            format!(
                "ferryd never answered STATUS ready:\n{}\n{}",
                ferryd.log_tail(),
                dataplane.log_tail()
            ),
        ));
    }
    let ctl = vec![
        s(&bin.join("ferryctl")),
        "--ferryd".into(),
        s(&sock),
        "--dataplane".into(),
        s(&dp_sock),
    ];
    Ok((
        Backend::Ferry {
            ferryd,
            dataplane,
            ctl,
        },
        conf,
    ))
}

/// ferryd.toml for a node whose files live in `dir`, pods from `pod_cidrs`:
/// an IPv4 CIDR first (gateway its first host address), on a dual-stack node
/// an IPv6 one after it (gateway ferryd's default, the CIDR's `::1`).
/// Without `uplink` (the uplink part of a two-node topology,
/// [`cross::ferry_uplink_config`]) a single node with pod MTU 1500; with it,
/// ferryd derives the MTU from the uplink.
fn ferryd_config(dir: &Path, pod_cidrs: &[&str], uplink: Option<&str>) -> Result<String> {
    let cidr = pod_cidrs.first().copied().unwrap_or("");
    let base: Ipv4Addr = cidr
        .split('/')
        .next()
        .unwrap_or("")
        .parse()
        .map_err(|_| E2eError::parse("cidr", cidr))?;
    let gw = Ipv4Addr::from(u32::from(base) + 1);
    let cidrs: Vec<String> = pod_cidrs.iter().map(|c| format!("\"{c}\"")).collect();
    let cidrs = cidrs.join(", ");
    let mut text = format!(
        "socket = \"{}\"\ndataplane_socket = \"{}\"\nstate_dir = \"{}\"\npod_cidrs = [{cidrs}]\ngateway = \"{gw}\"\n",
        dir.join("ferryd.sock").display(),
        dir.join("dataplane.sock").display(),
        dir.join("state").display()
    );
    match uplink {
        None => text.push_str("mtu = 1500\n"),
        Some(u) => text.push_str(u),
    }
    Ok(text)
}

/// A reference plugin (`bridge` on `cni0`-like `fpfbr0` with isGateway, or
/// `ptp`) with host-local IPAM from `subnet` and, dual-stack, `subnet6` (a
/// second range set, as the plugins' dual-stack configs have it; the bridge
/// then holds both gateways, each its range's first address), state in
/// `ipam_dir`, no masquerade, pod MTU `mtu`.
fn reference_plugin(
    topology: &str,
    ty: &str,
    subnet: &str,
    subnet6: Option<&str>,
    mtu: u32,
    ipam_dir: &Path,
) -> Result<CniPlugin> {
    let binary = Path::new(CNI_DIR).join(ty);
    if !binary.is_file() || !Path::new(CNI_DIR).join("host-local").is_file() {
        return Err(E2eError::setup(
            topology,
            format!(
                "{} or host-local missing: apt-get install containernetworking-plugins",
                binary.display()
            ),
        ));
    }
    let mut ranges = vec![json!([{ "subnet": subnet }])];
    let mut routes = vec![json!({"dst": "0.0.0.0/0"})];
    if let Some(s6) = subnet6 {
        ranges.push(json!([{ "subnet": s6 }]));
        routes.push(json!({"dst": "::/0"}));
    }
    let ipam = json!({
        "type": "host-local",
        "ranges": ranges,
        "routes": routes,
        "dataDir": ipam_dir.display().to_string(),
    });
    let mut conf = json!({
        "cniVersion": "1.0.0",
        "name": format!("fpf-{ty}"),
        "type": ty,
        "ipMasq": false,
        "mtu": mtu,
        "ipam": ipam,
    });
    if ty == "bridge" {
        conf["bridge"] = json!("fpfbr0");
        conf["isGateway"] = json!(true);
    }
    Ok(CniPlugin { binary, conf })
}

/// Wait (up to `timeout`) until no IPv6 address in namespace `ns` is
/// tentative: the kernel neither sends from nor answers for an address
/// whose duplicate-address detection runs (about 1 s after it is added;
/// ferry's come `nodad`, the xdp topology's too).
fn wait_dad_done(topology: &str, ns: &str, timeout: Duration) -> Result<()> {
    let tentative = || sys::run_ok("ip", &["-n", ns, "-6", "addr", "show", "tentative"]);
    let done = sys::wait_until(timeout, || tentative().is_ok_and(|t| t.trim().is_empty()))?;
    if done {
        return Ok(());
    }
    Err(E2eError::setup(
        topology,
        format!(
            "IPv6 addresses in {ns} still tentative after {:.0} s: {}",
            timeout.as_secs_f64(),
            tentative().unwrap_or_default().trim()
        ),
    ))
}

/// Set up node `i` (0 = A, 1 = B) of a two-node topology, its uplink
/// already plugged: ferry's daemons (files under `dir/<a|b>`) or the
/// kernel's path; the plugin that makes its pods.
#[expect(
    clippy::too_many_arguments,
    reason = "one call per node, all of it the node's"
)]
fn cross_node(
    topology: &str,
    kind: Kind,
    a: &Addressing,
    i: usize,
    node: &Netns,
    dir: &Path,
    bin_dir: &Path,
    dataplane_args: &[String],
) -> Result<(Backend, CniPlugin)> {
    let dir = dir.join(["a", "b"][i]);
    fs::create_dir_all(&dir).map_err(|e| E2eError::io(format!("mkdir {}", dir.display()), e))?;
    match kind {
        Kind::FerryCross { overlay, tap } => {
            check_ferry_bins(bin_dir)?;
            let uplink = cross::ferry_uplink_config(a, i, overlay);
            let args = cross::node_dataplane_args(dataplane_args, i, cross::machine_cores());
            let (backend, mut conf) = start_ferry(
                node,
                &dir,
                bin_dir,
                1,
                &args,
                &[&a.pod_cidr(i)],
                Some(&uplink),
            )
            .map_err(|e| E2eError::setup(topology, format!("node {}: {e}", ["A", "B"][i])))?;
            if tap {
                conf["attachment"] = json!("tap");
            }
            let binary = bin_dir.join("ferry");
            Ok((backend, CniPlugin { binary, conf }))
        }
        Kind::KernelCross { overlay } => {
            cross::run_all(&cross::kernel_node_commands(a, i, &node.name, overlay))?;
            let mtu = cross::kernel_pod_mtu(overlay);
            let plugin = reference_plugin(
                topology,
                "bridge",
                &a.pod_cidr(i),
                None,
                mtu,
                &dir.join("ipam"),
            )?;
            Ok((Backend::Cni, plugin))
        }
        _ => Err(E2eError::setup(topology, "not a two-node topology")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ferryd_config_of_a_single_node_and_of_a_two_node_one() {
        let d = Path::new("/tmp/x");
        let one = ferryd_config(d, &["10.99.10.0/24"], None).unwrap();
        assert_eq!(
            one,
            "socket = \"/tmp/x/ferryd.sock\"\ndataplane_socket = \"/tmp/x/dataplane.sock\"\n\
             state_dir = \"/tmp/x/state\"\npod_cidrs = [\"10.99.10.0/24\"]\ngateway = \"10.99.10.1\"\n\
             mtu = 1500\n"
        );
        let a = addressing(Kind::FerryCross {
            overlay: Overlay::Vxlan,
            tap: false,
        });
        let up = cross::ferry_uplink_config(&a, 0, Overlay::Vxlan);
        let two = ferryd_config(d, &[&a.pod_cidr(0)], Some(&up)).unwrap();
        assert!(two.ends_with(&up) && !two.contains("mtu"), "{two}");
        assert!(two.contains("gateway = \"10.99.20.1\"\n"), "{two}");
        assert!(ferryd_config(d, &["nope"], None).is_err());
    }

    #[test]
    fn dual_stack_configs_add_an_ipv6_cidr_and_range_set() {
        let d = Path::new("/tmp/x");
        let c6 = subnet6(Kind::Ferry { workers: 1 }).unwrap();
        assert_eq!(c6, "fd00:99:10::/64");
        let ds = ferryd_config(d, &["10.99.10.0/24", &c6], None).unwrap();
        assert!(
            ds.contains("pod_cidrs = [\"10.99.10.0/24\", \"fd00:99:10::/64\"]\n")
                && !ds.contains("gateway6"),
            "{ds}"
        );
        assert_eq!(subnet6(Kind::Bridge).unwrap(), "fd00:99:1::/64");
        assert_eq!(
            subnet6(Kind::KernelCross {
                overlay: Overlay::Vxlan
            }),
            None
        );
        // Every single-node topology's /64 is its own.
        let mut all: Vec<String> = [
            Kind::Ferry { workers: 1 },
            Kind::Ferry { workers: 2 },
            Kind::FerryTap { workers: 1 },
            Kind::FerryTap { workers: 2 },
            Kind::Bridge,
            Kind::Ptp,
            Kind::Xdp,
        ]
        .iter()
        .filter_map(|k| subnet6(*k))
        .collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 7);
        // The bridge's dual-stack IPAM: two range sets, one per family, and a
        // default route of each.
        if Path::new(CNI_DIR).join("bridge").is_file() {
            let p = reference_plugin(
                "bridge",
                "bridge",
                "10.99.1.0/24",
                Some("fd00:99:1::/64"),
                1500,
                d,
            )
            .unwrap();
            assert_eq!(
                p.conf["ipam"]["ranges"],
                json!([[{"subnet": "10.99.1.0/24"}], [{"subnet": "fd00:99:1::/64"}]])
            );
            assert_eq!(
                p.conf["ipam"]["routes"],
                json!([{"dst": "0.0.0.0/0"}, {"dst": "::/0"}])
            );
            assert_eq!(p.conf["isGateway"], json!(true));
        }
    }

    #[test]
    fn two_node_topologies_have_names_and_addresses_of_their_own() {
        let kinds = [
            Kind::FerryCross {
                overlay: Overlay::Vxlan,
                tap: false,
            },
            Kind::FerryCross {
                overlay: Overlay::Vxlan,
                tap: true,
            },
            Kind::FerryCross {
                overlay: Overlay::Direct,
                tap: false,
            },
            Kind::FerryCross {
                overlay: Overlay::Direct,
                tap: true,
            },
            Kind::KernelCross {
                overlay: Overlay::Vxlan,
            },
            Kind::KernelCross {
                overlay: Overlay::Direct,
            },
        ];
        let mut shorts: Vec<String> = kinds.iter().map(|k| short(*k)).collect();
        let mut fabrics: Vec<u8> = kinds.iter().map(|k| addressing(*k).fabric).collect();
        let mut pods: Vec<u8> = kinds.iter().map(|k| addressing(*k).pods).collect();
        for v in [&mut fabrics, &mut pods] {
            v.sort();
            v.dedup();
            assert_eq!(v.len(), kinds.len());
        }
        // Each topology's two pod /24s stay clear of the next one's and of the single-node ones.
        assert!(pods.windows(2).all(|w| w[1] >= w[0] + 2) && pods[0] > 13);
        shorts.push(short(Kind::Ferry { workers: 1 }));
        shorts.push(short(Kind::Xdp));
        shorts.sort();
        shorts.dedup();
        assert_eq!(shorts.len(), kinds.len() + 2);
        assert!(kinds.iter().all(Kind::two_node) && !Kind::Bridge.two_node());
    }

    #[test]
    fn cni_result_address() {
        let r = json!({"cniVersion":"1.0.0","interfaces":[{"name":"eth0"}],
                       "ips":[{"address":"10.99.1.2/24","gateway":"10.99.1.1","interface":0}]});
        assert_eq!(result_ip(&r).unwrap(), Ipv4Addr::new(10, 99, 1, 2));
        assert_eq!(result_ip6(&r).unwrap(), None);
        assert!(result_ip(&json!({"ips": []})).is_err());
        let v6 = json!({"ips": [{"address": "fd00::2/64"}]});
        assert!(result_ip(&v6).is_err());
        assert_eq!(result_ip6(&v6).unwrap(), Some("fd00::2".parse().unwrap()));
        // Dual stack, in either order.
        let ds = json!({"ips": [{"address": "fd00:99:1::2/64"}, {"address": "10.99.1.2/24"}]});
        assert_eq!(result_ip(&ds).unwrap(), Ipv4Addr::new(10, 99, 1, 2));
        assert_eq!(
            result_ip6(&ds).unwrap(),
            Some("fd00:99:1::2".parse().unwrap())
        );
        assert!(result_ip6(&json!({"ips": [{"address": "nope/64"}]})).is_err());
    }

    #[test]
    fn missing_ferry_binaries_say_how_to_build_them() {
        let e = check_ferry_bins(Path::new("/nonexistent"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cargo build --release --workspace --bins"),
            "{e}"
        );
    }
}
