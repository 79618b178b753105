//! Two-node topologies: two "node" namespaces, each cabled by a veth (its
//! uplink `up0`) to a fabric namespace whose Linux bridge `br0` stands for
//! the physical switch; pod 0 on node A, pod 1 on node B, so every workload
//! crosses between the nodes.
//!
//! ```text
//!   fpf-<run>-<t>-na              fpf-<run>-<t>-nb
//!   pod 0 ... up0 <fabric>.1      pod 1 ... up0 <fabric>.2
//!                 │                             │
//!   ──────────────pa──────── br0 ───────────────pb──────
//!                       fpf-<run>-<t>-fab
//! ```
//!
//! What each node runs is the topology's: ferry's daemons with an uplink
//! (`[overlay] vxlan` or `direct`, static `[[peers]]`), or the kernel path
//! Flannel builds (a `vxlan` device with static neighbour and FDB entries,
//! or host-gw routes) with pods on the reference `bridge` plugin. This module
//! holds the addressing, the text and commands each node gets (pure, tested
//! below) and the fabric; [`super::topo`] puts them together.
//!
//! Nothing here touches the root namespace: the uplink veths are made inside
//! the fabric namespace with one end moved into a node, so deleting the
//! namespaces (the guards do, by name) removes every link.

use std::net::Ipv4Addr;

use super::error::Result;
use super::sys::{self, Netns};

/// The uplink's name in both node namespaces.
pub const UPLINK: &str = "up0";
/// Queues of each uplink veth end, each way (as the cluster itests make them;
/// ferryd's `set_channels` fits them to the dataplane's workers).
const UPLINK_QUEUES: &str = "2";
/// The kernel VXLAN device, named as flanneld names it.
pub const VXLAN_DEV: &str = "flannel.1";
pub const VNI: u32 = 1;
/// VXLAN UDP port of both ferry and the kernel path (IANA).
pub const VXLAN_PORT: u16 = 4789;
/// VXLAN over IPv4 costs 50 bytes: the pod MTU on a 1500-byte uplink.
pub const VXLAN_POD_MTU: u32 = 1450;
pub const UPLINK_MTU: u32 = 1500;

/// How pod traffic crosses between the nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overlay {
    /// Encapsulated in VXLAN to the peer node's address.
    Vxlan,
    /// Routed as it is to the peer node on the same L2 (Flannel's host-gw).
    Direct,
}

impl Overlay {
    /// ferryd's `[overlay] mode`.
    pub fn mode(self) -> &'static str {
        match self {
            Overlay::Vxlan => "vxlan",
            Overlay::Direct => "direct",
        }
    }
}

/// Where the two nodes and their pods live: node `i` (0 = A, 1 = B) is
/// `192.168.<fabric>.<i+1>/24` on the fabric, its pods `10.99.<pods+i>.0/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addressing {
    pub fabric: u8,
    pub pods: u8,
}

impl Addressing {
    pub fn node_address(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(192, 168, self.fabric, 1 + i as u8)
    }

    /// Node `i`'s pod CIDR.
    pub fn pod_cidr(&self, i: usize) -> String {
        format!("{}/24", self.pod_network(i))
    }

    fn pod_network(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 99, self.pods + i as u8, 0)
    }
}

/// The other node.
fn peer(i: usize) -> usize {
    1 - i
}

/// The uplink part of node `me`'s ferryd.toml (appended after the
/// top-level fields: it ends with tables): the uplink, the overlay, the
/// other node as the one static peer. No `mtu`: ferryd derives the pods'
/// from the uplink less the overlay's overhead, as in a cluster.
pub fn ferry_uplink_config(a: &Addressing, me: usize, overlay: Overlay) -> String {
    let mut text = format!(
        "uplink = \"{UPLINK}\"\nnode_address = \"{}\"\nmasquerade = true\n\n[overlay]\nmode = \"{}\"\n",
        a.node_address(me),
        overlay.mode()
    );
    if overlay == Overlay::Vxlan {
        text.push_str(&format!("vni = {VNI}\nport = {VXLAN_PORT}\n"));
    }
    text.push_str("set_channels = true\n");
    let p = peer(me);
    text.push_str(&format!(
        "\n[[peers]]\naddress = \"{}\"\npod_cidr = \"{}\"\n",
        a.node_address(p),
        a.pod_cidr(p)
    ));
    text
}

/// The cores of this machine (1 if unknown).
pub fn machine_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// ferry-dataplane's extra arguments on node `i` of a machine with `cores`
/// cores: `extra` plus `--cpus <i mod cores>` unless `extra` pins already.
/// Without it both nodes' worker 0 would share core 0 (the dataplane's
/// default pinning is by worker index), which no two real nodes do.
pub fn node_dataplane_args(extra: &[String], i: usize, cores: usize) -> Vec<String> {
    let mut args = extra.to_vec();
    if !extra
        .iter()
        .any(|a| a == "--cpus" || a.starts_with("--cpus="))
    {
        args.extend(["--cpus".to_string(), (i % cores.max(1)).to_string()]);
    }
    args
}

/// The MAC of node `i`'s VXLAN device (fixed, so that the peer's static
/// entries can be written before both devices exist).
pub fn vtep_mac(i: usize) -> String {
    format!("02:fb:00:00:00:{:02x}", i + 1)
}

/// The pod MTU of the kernel path: VXLAN's overhead off the uplink's.
pub fn kernel_pod_mtu(overlay: Overlay) -> u32 {
    match overlay {
        Overlay::Vxlan => VXLAN_POD_MTU,
        Overlay::Direct => UPLINK_MTU,
    }
}

/// The commands (argv, program first) that make node `me`, namespace `ns`,
/// forward to the other node's pods the way flanneld sets a node up. For
/// VXLAN: `flannel.1` with the node's address as the local end and no
/// learning, its own `<pod network>.0/32`, a route to the peer's pod /24 via
/// the peer's `.0` on `flannel.1` (onlink), and the permanent neighbour and
/// FDB entries flanneld writes from the peer's lease (VTEP MAC → node
/// address). For host-gw: one route `peer pod /24 via peer node address`.
/// Both: IPv4 forwarding on in the node namespace (only there).
pub fn kernel_node_commands(
    a: &Addressing,
    me: usize,
    ns: &str,
    overlay: Overlay,
) -> Vec<Vec<String>> {
    let p = peer(me);
    let mut cmds: Vec<Vec<&str>> = Vec::new();
    let (local, peer_cidr, peer_node) = (
        a.node_address(me).to_string(),
        a.pod_cidr(p),
        a.node_address(p).to_string(),
    );
    let (own_vtep, peer_vtep) = (
        format!("{}/32", a.pod_network(me)),
        a.pod_network(p).to_string(),
    );
    let (mac, peer_mac) = (vtep_mac(me), vtep_mac(p));
    let (vni, port, mtu) = (
        VNI.to_string(),
        VXLAN_PORT.to_string(),
        VXLAN_POD_MTU.to_string(),
    );
    cmds.push(vec![
        "ip",
        "netns",
        "exec",
        ns,
        "sysctl",
        "-qw",
        "net.ipv4.ip_forward=1",
    ]);
    match overlay {
        Overlay::Vxlan => {
            #[rustfmt::skip]
            cmds.extend([
                vec!["ip", "-n", ns, "link", "add", VXLAN_DEV, "address", &mac, "type", "vxlan",
                     "id", &vni, "dstport", &port, "local", &local, "dev", UPLINK, "nolearning"],
                vec!["ip", "-n", ns, "link", "set", VXLAN_DEV, "mtu", &mtu, "up"],
                vec!["ip", "-n", ns, "addr", "add", &own_vtep, "dev", VXLAN_DEV],
                vec!["ip", "-n", ns, "route", "add", &peer_cidr, "via", &peer_vtep,
                     "dev", VXLAN_DEV, "onlink"],
                vec!["ip", "-n", ns, "neigh", "add", &peer_vtep, "lladdr", &peer_mac,
                     "dev", VXLAN_DEV, "nud", "permanent"],
                vec!["bridge", "-n", ns, "fdb", "add", &peer_mac, "dev", VXLAN_DEV,
                     "dst", &peer_node],
            ]);
        }
        Overlay::Direct => {
            cmds.push(vec![
                "ip", "-n", ns, "route", "add", &peer_cidr, "via", &peer_node, "dev", UPLINK,
            ]);
        }
    }
    cmds.into_iter()
        .map(|c| c.into_iter().map(String::from).collect())
        .collect()
}

/// Run commands made by [`kernel_node_commands`], each required to succeed.
pub fn run_all(cmds: &[Vec<String>]) -> Result<()> {
    for c in cmds {
        let args: Vec<&str> = c[1..].iter().map(String::as_str).collect();
        sys::run_ok(&c[0], &args)?;
    }
    Ok(())
}

/// The physical switch: a namespace holding the Linux bridge `br0`.
/// Dropping it deletes the namespace and with it every port's veth pair.
#[derive(Debug)]
pub struct Fabric {
    pub ns: Netns,
}

impl Fabric {
    pub fn create(name: &str) -> Result<Fabric> {
        let ns = Netns::create(name)?;
        sys::run_ok(
            "ip",
            &["-n", &ns.name, "link", "add", "br0", "type", "bridge"],
        )?;
        sys::run_ok("ip", &["-n", &ns.name, "link", "set", "br0", "up"])?;
        Ok(Fabric { ns })
    }

    /// Cable namespace `node` to the switch: a veth whose end `port` is a
    /// port of br0 and whose end [`UPLINK`] (in `node`, with
    /// [`UPLINK_QUEUES`] queues each way) gets `address/24` and is up.
    pub fn plug(&self, port: &str, node: &str, address: Ipv4Addr) -> Result<()> {
        let fab = self.ns.name.as_str();
        let q = UPLINK_QUEUES;
        #[rustfmt::skip]
        sys::run_ok("ip", &[
            "-n", fab, "link", "add", port, "numtxqueues", q, "numrxqueues", q,
            "type", "veth", "peer", "name", UPLINK, "netns", node,
            "numtxqueues", q, "numrxqueues", q,
        ])?;
        sys::run_ok(
            "ip",
            &["-n", fab, "link", "set", port, "master", "br0", "up"],
        )?;
        let cidr = format!("{address}/24");
        sys::run_ok("ip", &["-n", node, "addr", "add", &cidr, "dev", UPLINK])?;
        sys::run_ok("ip", &["-n", node, "link", "set", UPLINK, "up"])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Addressing = Addressing {
        fabric: 71,
        pods: 20,
    };

    #[test]
    fn nodes_and_pods_are_numbered_from_node_a() {
        assert_eq!(A.node_address(0), Ipv4Addr::new(192, 168, 71, 1));
        assert_eq!(A.node_address(1), Ipv4Addr::new(192, 168, 71, 2));
        assert_eq!(A.pod_cidr(0), "10.99.20.0/24");
        assert_eq!(A.pod_cidr(1), "10.99.21.0/24");
        assert_ne!(vtep_mac(0), vtep_mac(1));
    }

    #[test]
    fn ferry_config_names_the_other_node_as_its_peer() {
        let b = ferry_uplink_config(&A, 1, Overlay::Vxlan);
        assert_eq!(
            b,
            "uplink = \"up0\"\nnode_address = \"192.168.71.2\"\nmasquerade = true\n\n\
             [overlay]\nmode = \"vxlan\"\nvni = 1\nport = 4789\nset_channels = true\n\n\
             [[peers]]\naddress = \"192.168.71.1\"\npod_cidr = \"10.99.20.0/24\"\n"
        );
        let a = ferry_uplink_config(&A, 0, Overlay::Direct);
        assert!(
            a.contains("mode = \"direct\"\nset_channels = true\n"),
            "{a}"
        );
        assert!(!a.contains("vni") && !a.contains("port ="), "{a}");
        assert!(
            a.contains("address = \"192.168.71.2\"\npod_cidr = \"10.99.21.0/24\""),
            "{a}"
        );
        // The uplink fields are top-level: before the first table.
        assert!(a.find("node_address").unwrap() < a.find("[overlay]").unwrap());
        // ferryd derives the pod MTU itself.
        assert!(!a.contains("mtu"), "{a}");
    }

    #[test]
    fn each_node_pins_its_worker_to_a_core_of_its_own() {
        let none: Vec<String> = Vec::new();
        assert_eq!(node_dataplane_args(&none, 0, 2), vec!["--cpus", "0"]);
        assert_eq!(node_dataplane_args(&none, 1, 2), vec!["--cpus", "1"]);
        assert_eq!(node_dataplane_args(&none, 1, 1), vec!["--cpus", "0"]);
        let given = vec!["--idle-spin-us".to_string(), "20".into(), "--cpus=1".into()];
        assert_eq!(node_dataplane_args(&given, 0, 2), given);
        let spin = vec!["--idle-spin-us".to_string(), "20".into()];
        assert_eq!(
            node_dataplane_args(&spin, 1, 4),
            vec!["--idle-spin-us", "20", "--cpus", "1"]
        );
    }

    #[test]
    fn kernel_vxlan_is_set_up_as_flanneld_does() {
        let cmds: Vec<String> = kernel_node_commands(&A, 0, "fpf-1-kvx-na", Overlay::Vxlan)
            .iter()
            .map(|c| c.join(" "))
            .collect();
        let ns = "fpf-1-kvx-na";
        assert_eq!(
            cmds,
            vec![
                format!("ip netns exec {ns} sysctl -qw net.ipv4.ip_forward=1"),
                format!("ip -n {ns} link add flannel.1 address 02:fb:00:00:00:01 type vxlan id 1 dstport 4789 local 192.168.71.1 dev up0 nolearning"),
                format!("ip -n {ns} link set flannel.1 mtu 1450 up"),
                format!("ip -n {ns} addr add 10.99.20.0/32 dev flannel.1"),
                format!("ip -n {ns} route add 10.99.21.0/24 via 10.99.21.0 dev flannel.1 onlink"),
                format!("ip -n {ns} neigh add 10.99.21.0 lladdr 02:fb:00:00:00:02 dev flannel.1 nud permanent"),
                format!("bridge -n {ns} fdb add 02:fb:00:00:00:02 dev flannel.1 dst 192.168.71.2"),
            ]
        );
        assert_eq!(kernel_pod_mtu(Overlay::Vxlan), 1450);
    }

    #[test]
    fn kernel_hostgw_is_one_route_via_the_peer_node() {
        let cmds = kernel_node_commands(&A, 1, "fpf-1-khg-nb", Overlay::Direct);
        assert_eq!(cmds.len(), 2);
        assert_eq!(
            cmds[1].join(" "),
            "ip -n fpf-1-khg-nb route add 10.99.20.0/24 via 192.168.71.1 dev up0"
        );
        assert_eq!(kernel_pod_mtu(Overlay::Direct), 1500);
    }
}
