//! Several ferry nodes on one fabric, for the multi-node tests.
//!
//! Layer: test support, on top of [`Node`]. The picture, every part a
//! network namespace named after one [`unique_tag`]:
//!
//! ```text
//!   <tag>n1-node          <tag>n2-node          <tag>n3-node      <tag>-out
//!   ferryd, dataplane     ferryd, dataplane     ...               TCP server
//!   up0 192.168.70.1/24   up0 192.168.70.2/24                     out0 192.168.70.200/24
//!      │                     │                     │                 │
//!   ───n1────────────────────n2────────────────────n3────────────────out───
//!                        br0 in <tag>-fab (the physical switch)
//! ```
//!
//! The bridge stands for the switch between the machines and joins only
//! the nodes' uplinks and the outside; pods stay behind their node's
//! dataplane. Each uplink is a veth pair made inside the fabric namespace,
//! one end moved into the node namespace, so nothing of the cluster is
//! ever in the root namespace (no link, address, route or sysctl there).
//! Everything lives in the namespaces, and the guards delete those by name
//! when dropped (a failing test included): [`Cluster`]'s fields drop nodes
//! first (daemons, then their namespace, taking the veth pairs along), then
//! the outside, then the fabric.

use std::io::{BufRead, BufReader};
use std::ops::{Deref, DerefMut};
use std::process::ChildStdout;
use std::time::Duration;

use crate::etcd::EtcdServer;
use crate::{
    ns_run_ok, run_ok, tcpcheck_in, unique_tag, wait_output_bounded, ChildGuard, Netns, Node,
    NodeOpts,
};

/// The fabric's subnet, less its last octet: node N is `FABRIC.N`.
pub const FABRIC: &str = "192.168.70";
/// The uplink's name in every node namespace.
pub const UPLINK: &str = "up0";
/// The outside's address on the fabric.
pub const OUTSIDE_ADDR: &str = "192.168.70.200";
/// The outside server's TCP port.
pub const OUTSIDE_PORT: u16 = 8080;
/// How long the outside server answers (a bound in case a guard never runs).
const OUTSIDE_SERVES_SECS: u64 = 1800;
/// Queues of every uplink veth end (the dataplane runs this many workers).
const UPLINK_QUEUES: &str = "2";

/// How pod traffic crosses between nodes (ferryd's `[overlay] mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overlay {
    Vxlan,
    Direct,
}

impl Overlay {
    pub fn name(self) -> &'static str {
        match self {
            Overlay::Vxlan => "vxlan",
            Overlay::Direct => "direct",
        }
    }
}

#[derive(Clone, Debug)]
pub struct ClusterOpts {
    pub nodes: u32,
    /// `None`: ferryd gets no uplink configuration (every node a single
    /// node of its own, its uplink just a NIC of the node kernel).
    pub overlay: Option<Overlay>,
    pub workers: u32,
    /// `Some`: nodes find each other through an etcd on the fabric
    /// (`[cluster]`) instead of `[[peers]]` written by hand.
    pub etcd: Option<EtcdOpts>,
    /// Dual-stack nodes: node N's IPv6 pod CIDR is [`pod_cidr6`] (or with
    /// etcd, the cluster's [`CLUSTER_CIDR6`] gives the blocks).
    pub dual_stack: bool,
    /// Top-level ferryd.toml lines every node gets (before its tables).
    pub node_config: String,
}

/// The etcd a cluster's nodes share.
#[derive(Clone, Debug)]
pub struct EtcdOpts {
    /// HTTPS with client certificates.
    pub tls: bool,
    /// The nodes' `lease_ttl_s`.
    pub lease_ttl_s: u32,
}

/// The cluster CIDR of the etcd clusters.
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// Their IPv6 CIDR, when dual-stack (node blocks /64, by IPv4 block index).
pub const CLUSTER_CIDR6: &str = "fd00:244::/48";

impl ClusterOpts {
    /// `nodes` nodes, 2 workers each, pod traffic across in `overlay`.
    pub fn new(nodes: u32, overlay: Option<Overlay>) -> ClusterOpts {
        ClusterOpts {
            nodes,
            overlay,
            workers: 2,
            etcd: None,
            dual_stack: false,
            node_config: String::new(),
        }
    }

    /// `nodes` nodes that find each other through etcd.
    pub fn with_etcd(nodes: u32, overlay: Overlay, tls: bool) -> ClusterOpts {
        ClusterOpts {
            etcd: Some(EtcdOpts {
                tls,
                lease_ttl_s: 60,
            }),
            ..ClusterOpts::new(nodes, Some(overlay))
        }
    }
}

/// Node `me`'s name in the datastore.
pub fn node_name(me: u32) -> String {
    format!("n{me}")
}

/// The `[cluster]` table for node `me` on `etcd` (its TLS files if any).
pub fn cluster_table(me: u32, etcd: &EtcdServer, lease_ttl_s: u32) -> String {
    let mut t = format!(
        "\n[cluster]\nendpoints = [\"{}\"]\ncidr = \"{CLUSTER_CIDR}\"\nnode_name = \"{}\"\nlease_ttl_s = {lease_ttl_s}\n",
        etcd.url(),
        node_name(me)
    );
    if let Some(tls) = &etcd.tls {
        t.push_str(&format!(
            "ca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            tls.ca.display(),
            tls.cert.display(),
            tls.key.display()
        ));
    }
    t
}

/// The ferryd.toml text of a `[cluster]` node `me`: its uplink and overlay,
/// no peers (etcd has them).
pub fn etcd_node_config(me: u32, overlay: Overlay, etcd: &EtcdServer, lease_ttl_s: u32) -> String {
    let mut text = uplink_config(me, 0, overlay);
    text.push_str(&cluster_table(me, etcd, lease_ttl_s));
    text
}

/// Node `i`'s address on the fabric.
pub fn node_address(i: u32) -> String {
    format!("{FABRIC}.{i}")
}

/// Node `i`'s pod CIDR.
pub fn pod_cidr(i: u32) -> String {
    format!("10.70.{i}.0/24")
}

/// Node `i`'s IPv6 pod CIDR (dual-stack clusters).
pub fn pod_cidr6(i: u32) -> String {
    format!("fd00:70:{i}::/64")
}

/// The ferryd.toml text that makes node `me` of `nodes` a cluster node:
/// its uplink, the overlay and every other node as a peer.
pub fn uplink_config(me: u32, nodes: u32, overlay: Overlay) -> String {
    uplink_config_with(me, nodes, overlay, false)
}

/// [`uplink_config`], with each peer's [`pod_cidr6`] when `dual_stack`.
pub fn uplink_config_with(me: u32, nodes: u32, overlay: Overlay, dual_stack: bool) -> String {
    let mut text = format!(
        "uplink = \"{UPLINK}\"\nnode_address = \"{}\"\nmasquerade = true\n\n[overlay]\nmode = \"{}\"\n",
        node_address(me),
        overlay.name()
    );
    if overlay == Overlay::Vxlan {
        text.push_str("vni = 1\nport = 4789\n");
    }
    text.push_str("set_channels = true\n");
    for peer in (1..=nodes).filter(|&j| j != me) {
        text.push_str(&format!(
            "\n[[peers]]\naddress = \"{}\"\npod_cidr = \"{}\"\n",
            node_address(peer),
            pod_cidr(peer)
        ));
        if dual_stack {
            text.push_str(&format!("pod_cidr6 = \"{}\"\n", pod_cidr6(peer)));
        }
    }
    text
}

/// The physical switch: a namespace holding the Linux bridge `br0`.
pub struct Fabric {
    pub ns: Netns,
}

impl Fabric {
    pub fn new(tag: &str) -> Fabric {
        let ns = Netns::new(&format!("{tag}-fab"));
        run_ok(
            "ip",
            &["-n", &ns.name, "link", "add", "br0", "type", "bridge"],
        );
        run_ok("ip", &["-n", &ns.name, "link", "set", "br0", "up"]);
        Fabric { ns }
    }

    /// Cable namespace `ns` to the switch: a veth whose end `port` is a
    /// port of br0 and whose end `ifname` (in `ns`, with `UPLINK_QUEUES`
    /// queues each way) gets `address/24` and is up.
    pub fn plug(&self, port: &str, ns: &str, ifname: &str, address: &str) {
        let fab = self.ns.name.as_str();
        let q = UPLINK_QUEUES;
        #[rustfmt::skip]
        run_ok("ip", &[
            "-n", fab, "link", "add", port, "numtxqueues", q, "numrxqueues", q,
            "type", "veth", "peer", "name", ifname, "netns", ns,
            "numtxqueues", q, "numrxqueues", q,
        ]);
        run_ok(
            "ip",
            &["-n", fab, "link", "set", port, "master", "br0", "up"],
        );
        let cidr = format!("{address}/24");
        run_ok("ip", &["-n", ns, "addr", "add", &cidr, "dev", ifname]);
        run_ok("ip", &["-n", ns, "link", "set", ifname, "up"]);
    }
}

/// The world outside the cluster: a namespace on the fabric running a TCP
/// server that answers each connection with the address it came from.
pub struct Outside {
    // Field order is drop order: the server before its namespace.
    server: ChildGuard,
    /// Kept open so that the server's lines never meet a closed pipe.
    _server_out: BufReader<ChildStdout>,
    pub ns: Netns,
}

impl Outside {
    pub fn start(tag: &str, fabric: &Fabric) -> Outside {
        let ns = Netns::new(&format!("{tag}-out"));
        fabric.plug("out", &ns.name, "out0", OUTSIDE_ADDR);
        let listen = format!("0.0.0.0:{OUTSIDE_PORT}");
        let secs = OUTSIDE_SERVES_SECS.to_string();
        let mut child = tcpcheck_in(&ns.name, &["peer-server", &listen, &secs]);
        let out = child.stdout.take().expect("server stdout");
        let server = ChildGuard::new(child);
        let mut reader = BufReader::new(out);
        let mut first = String::new();
        reader.read_line(&mut first).expect("server output");
        assert_eq!(
            first.trim(),
            "listening",
            "the outside server did not start"
        );
        Outside {
            server,
            _server_out: reader,
            ns,
        }
    }

    /// Connect from namespace `from` to the server: the address it saw
    /// (`a.b.c.d`, without the port), or why there was no answer.
    pub fn ask_from(&self, from: &str) -> Result<String, String> {
        assert!(self.server.0.is_some(), "outside server gone");
        let target = format!("{OUTSIDE_ADDR}:{OUTSIDE_PORT}");
        let child = tcpcheck_in(from, &["ask", &target]);
        let out = wait_output_bounded(child, Duration::from_secs(15));
        let answer = String::from_utf8_lossy(&out.stdout);
        match answer.trim().rsplit_once(':') {
            Some((ip, _port)) if out.status.success() => Ok(ip.to_string()),
            _ => Err(format!(
                "{answer}{}",
                String::from_utf8_lossy(&out.stderr).trim()
            )),
        }
    }
}

/// One node of the cluster: a [`Node`] with an uplink on the fabric.
pub struct ClusterNode {
    /// 1-based: the last octet of its address and the third of its CIDR.
    pub index: u32,
    /// Its address on the fabric (on `UPLINK`).
    pub address: String,
    pub node: Node,
}

impl Deref for ClusterNode {
    type Target = Node;
    fn deref(&self) -> &Node {
        &self.node
    }
}

impl DerefMut for ClusterNode {
    fn deref_mut(&mut self) -> &mut Node {
        &mut self.node
    }
}

impl ClusterNode {
    /// The node namespace's name.
    pub fn ns_name(&self) -> &str {
        &self.node.ns.name
    }

    /// The MAC of this node's uplink.
    pub fn uplink_mac(&self) -> String {
        ns_run_ok(
            self.ns_name(),
            &["cat", &format!("/sys/class/net/{UPLINK}/address")],
        )
        .trim()
        .to_string()
    }
}

/// Nodes, the outside and the fabric between them.
pub struct Cluster {
    pub tag: String,
    // Field order is drop order (see the module comment).
    pub nodes: Vec<ClusterNode>,
    pub etcd: Option<EtcdServer>,
    pub outside: Outside,
    pub fabric: Fabric,
}

impl Cluster {
    /// The fabric, the outside, then `opts.nodes` nodes cabled to it, each
    /// with its daemons started and ferryd ready.
    pub fn start(prefix: &str, opts: ClusterOpts) -> Cluster {
        let tag = unique_tag(prefix);
        let fabric = Fabric::new(&tag);
        let outside = Outside::start(&tag, &fabric);
        let etcd = opts
            .etcd
            .as_ref()
            .map(|e| EtcdServer::start(&tag, &fabric, e.tls));
        let mut nodes: Vec<ClusterNode> = Vec::new();
        for i in 1..=opts.nodes {
            let mut extra_config = opts.node_config.clone();
            extra_config += &match (opts.overlay, &etcd, &opts.etcd) {
                (Some(o), Some(server), Some(e)) => etcd_node_config(i, o, server, e.lease_ttl_s),
                (Some(o), _, _) => uplink_config_with(i, opts.nodes, o, opts.dual_stack),
                (None, _, _) => String::new(),
            };
            if opts.dual_stack && etcd.is_some() {
                // The [cluster] table is the config's last.
                extra_config.push_str(&format!("cidr6 = \"{CLUSTER_CIDR6}\"\n"));
            }
            let node_opts = NodeOpts {
                pod_cidr: if etcd.is_some() {
                    String::new()
                } else {
                    pod_cidr(i)
                },
                pod_cidr6: (opts.dual_stack && etcd.is_none()).then(|| pod_cidr6(i)),
                workers: opts.workers,
                ipam: None,
                // ferryd's default: the uplink MTU less the overlay's.
                mtu: None,
                extra_config,
            };
            let node = Node::create(format!("{tag}n{i}"), node_opts);
            let address = node_address(i);
            fabric.plug(&format!("n{i}"), &node.ns.name, UPLINK, &address);
            nodes.push(ClusterNode {
                index: i,
                address,
                node,
            });
        }
        for n in &mut nodes {
            n.node.launch();
        }
        Cluster {
            tag,
            nodes,
            etcd,
            outside,
            fabric,
        }
    }

    /// Node `i` (1-based, as its address).
    pub fn node(&self, i: u32) -> &ClusterNode {
        &self.nodes[i as usize - 1]
    }

    pub fn node_mut(&mut self, i: u32) -> &mut ClusterNode {
        &mut self.nodes[i as usize - 1]
    }
}
