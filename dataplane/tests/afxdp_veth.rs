//! The real dataplane binary on real veths (root, network namespaces).
//!
//! A throwaway node namespace holds the host ends of two pod veths and the
//! host-port pair (`ferry0` kernel end, `ferry0dp` dataplane end); each pod
//! namespace holds its `eth0` with the ferry MAC, a /24 and a default route
//! via the gateway. `ferry-dataplane` runs in the node namespace; the test
//! talks to it over its socket exactly as ferryd does (Hello, Sync), pings
//! pod to pod, pod to gateway and node to pod through it, checks the
//! counters, stops it, and checks that pod-to-pod traffic stops too.
//!
//! Everything is named `fdp-*-<pid>` and removed by a Drop guard.

use std::io::BufReader;
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferry_api::table::{Endpoint, HostPort, NodeSettings, Request, Response, Stats, API_VERSION};
use ferry_api::{wire, MacAddr};

const GW: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
const A: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);
const B: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 3);
/// Not a pod: routed to the host port.
const OUTSIDE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);

fn run(args: &[&str]) -> Result<String, String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{args:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn must(args: &[&str]) -> String {
    run(args).unwrap_or_else(|e| panic!("{e}"))
}

/// Namespaces, the socket directory and the dataplane process of one test,
/// removed by name/pid on drop.
struct Topo {
    node: String,
    pods: Vec<String>,
    dir: PathBuf,
    dataplane: Option<Child>,
}

impl Topo {
    /// Node namespace `fdp-<tag>node-<pid>` (made, `lo` up) and the names
    /// `fdp-<tag><pod>-<pid>` of the pod namespaces (made by [`pod_ns`]).
    fn new(tag: &str, pods: &[&str]) -> Topo {
        let pid = std::process::id();
        let topo = Topo {
            node: format!("fdp-{tag}node-{pid}"),
            pods: pods.iter().map(|p| format!("fdp-{tag}{p}-{pid}")).collect(),
            dir: std::env::temp_dir().join(format!("fdp-{tag}{pid}")),
            dataplane: None,
        };
        must(&["ip", "netns", "add", &topo.node]);
        must(&["ip", "-n", &topo.node, "link", "set", "lo", "up"]);
        topo
    }
}

impl Drop for Topo {
    fn drop(&mut self) {
        if let Some(mut child) = self.dataplane.take() {
            stop(&mut child);
        }
        for ns in self.pods.iter().chain(std::iter::once(&self.node)) {
            let _ = run(&["ip", "netns", "del", ns]);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// SIGTERM, wait (bounded), SIGKILL if needed. Returns the exit status.
fn stop(child: &mut Child) -> Option<std::process::ExitStatus> {
    // SAFETY: plain kill(2) on the pid of a child we spawned and have not
    // reaped yet (so the pid cannot have been reused).
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

fn pod_ns(topo: &Topo, name: &str, host_if: &str, ip: Ipv4Addr) {
    pod_ns_mtu(topo, name, host_if, ip, 1500);
}

/// [`pod_ns`] with both ends of the veth at `mtu`.
fn pod_ns_mtu(topo: &Topo, name: &str, host_if: &str, ip: Ipv4Addr, mtu: u32) {
    let node = topo.node.as_str();
    must(&["ip", "netns", "add", name]);
    let mtu = mtu.to_string();
    must(&[
        "ip", "-n", node, "link", "add", host_if, "mtu", &mtu, "type", "veth", "peer", "name",
        "eth0", "netns", name, "mtu", &mtu,
    ]);
    let mac = MacAddr::for_pod(ip).to_string();
    let cidr = format!("{ip}/24");
    let gw = GW.to_string();
    must(&["ip", "-n", name, "link", "set", "eth0", "address", &mac]);
    must(&["ip", "-n", name, "addr", "add", &cidr, "dev", "eth0"]);
    must(&["ip", "-n", name, "link", "set", "lo", "up"]);
    must(&["ip", "-n", name, "link", "set", "eth0", "up"]);
    must(&[
        "ip", "-n", name, "route", "add", "default", "via", &gw, "dev", "eth0",
    ]);
    must(&["ip", "-n", node, "link", "set", host_if, "up"]);
}

fn endpoint(id: &str, host_ifname: &str, ip: Ipv4Addr) -> Endpoint {
    Endpoint::veth(id, host_ifname, ip)
}

struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    fn connect(path: &std::path::Path) -> Client {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match UnixStream::connect(path) {
                Ok(s) => {
                    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                    let writer = s.try_clone().unwrap();
                    return Client {
                        reader: BufReader::new(s),
                        writer,
                    };
                }
                Err(e) if Instant::now() > deadline => {
                    panic!("dataplane socket {}: {e}", path.display())
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    fn call(&mut self, req: &Request) -> Response {
        wire::write_message(&mut self.writer, req).expect("send");
        wire::read_message(&mut self.reader).expect("reply")
    }

    fn stats(&mut self) -> Stats {
        match self.call(&Request::Stats) {
            Response::Stats(s) => s,
            other => panic!("{other:?}"),
        }
    }
}

fn ping(ns: &str, dst: Ipv4Addr, count: &str) -> Result<String, String> {
    ping_with(ns, dst, count, &[])
}

fn ping_with(ns: &str, dst: Ipv4Addr, count: &str, extra: &[&str]) -> Result<String, String> {
    let dst = dst.to_string();
    let mut args = vec![
        "ip", "netns", "exec", ns, "ping", "-c", count, "-W", "1", "-i", "0.2",
    ];
    args.extend_from_slice(extra);
    args.push(&dst);
    run(&args)
}

/// The host-port pair in `node`: kernel end `ferry0` holds the gateway and
/// routes the pod CIDR, `ferry0dp` is the dataplane's. Returns ferry0's MAC.
fn host_port(node: &str) -> MacAddr {
    must(&[
        "ip", "-n", node, "link", "add", "ferry0", "type", "veth", "peer", "name", "ferry0dp",
    ]);
    must(&[
        "ip",
        "-n",
        node,
        "addr",
        "add",
        "10.99.0.1/32",
        "dev",
        "ferry0",
    ]);
    must(&["ip", "-n", node, "link", "set", "ferry0", "up"]);
    must(&["ip", "-n", node, "link", "set", "ferry0dp", "up"]);
    must(&[
        "ip",
        "-n",
        node,
        "route",
        "add",
        "10.99.0.0/24",
        "dev",
        "ferry0",
        "src",
        "10.99.0.1",
    ]);
    let link = must(&["ip", "-n", node, "-o", "link", "show", "ferry0"]);
    link.split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .and_then(|m| m.parse().ok())
        .expect("ferry0 MAC")
}

fn node_settings(host_ifname: &str, kernel_mac: MacAddr) -> NodeSettings {
    NodeSettings {
        gateways: vec![GW.into()],
        router_mac: MacAddr::ROUTER,
        pod_cidrs: vec!["10.99.0.0/24".parse().unwrap()],
        host_port: Some(HostPort {
            ifname: host_ifname.into(),
            kernel_ifname: "ferry0".into(),
            kernel_mac,
        }),
        mtu: 1500,
        uplink: None,
    }
}

/// Start ferry-dataplane (one worker) in the topology's node namespace,
/// with its socket in the topology's directory; connect and say Hello.
fn start_dataplane(topo: &mut Topo) -> (PathBuf, Client) {
    start_dataplane_with(topo, &[])
}

/// [`start_dataplane`] with more arguments for ferry-dataplane.
fn start_dataplane_with(topo: &mut Topo, extra: &[&str]) -> (PathBuf, Client) {
    std::fs::create_dir_all(&topo.dir).unwrap();
    let sock = topo.dir.join("dataplane.sock");
    let child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &topo.node,
            env!("CARGO_BIN_EXE_ferry-dataplane"),
        ])
        .args([
            "--socket",
            sock.to_str().unwrap(),
            "--workers",
            "1",
            "--cpus",
            "0",
        ])
        .args(extra)
        .stdin(Stdio::null())
        .spawn()
        .expect("start ferry-dataplane");
    topo.dataplane = Some(child);
    let mut c = Client::connect(&sock);
    assert_eq!(
        c.call(&Request::Hello {
            api_version: API_VERSION
        }),
        Response::Hello {
            api_version: API_VERSION,
            workers: 1,
            // A chain of 16 2048-byte chunks less 256 bytes of XDP
            // headroom each, less the Ethernet header; the uplink, one
            // chunk; 66 KiB tap frames hold any IPv4 packet.
            mtu_limits: Some(ferry_api::table::MtuLimits {
                veth: 28658,
                tap: 65535,
                uplink: Some(1778),
            }),
        }
    );
    (sock, c)
}

#[test]
fn pods_ping_each_other_the_gateway_and_the_node_through_the_dataplane() {
    let mut topo = Topo::new("", &["pa", "pb"]);
    let node = topo.node.clone();
    let (pa, pb) = (topo.pods[0].clone(), topo.pods[1].clone());
    pod_ns(&topo, &pa, "fya", A);
    pod_ns(&topo, &pb, "fyb", B);
    let kernel_mac = host_port(&node);

    // Without the dataplane nothing joins the pods.
    assert!(
        ping(&pa, B, "1").is_err(),
        "pods must not reach each other before the dataplane runs"
    );
    // That failed resolution left a FAILED neighbour entry for B in pod A,
    // which the kernel keeps dropping packets on for a while; a real pod only
    // exists once the dataplane runs, so start the pods' caches clean.
    for pod in [&pa, &pb] {
        must(&["ip", "-n", pod, "neigh", "flush", "all"]);
    }

    let (sock, mut c) = start_dataplane(&mut topo);
    let reply = c.call(&Request::Sync {
        node: node_settings("ferry0dp", kernel_mac),
        endpoints: vec![endpoint("a/eth0", "fya", A), endpoint("b/eth0", "fyb", B)],
        routes: vec![],
    });
    assert!(
        matches!(reply, Response::Applied { generation: 1, ref missing } if missing.is_empty()),
        "{reply:?}"
    );
    let shown = must(&["ip", "-n", &node, "link", "show", "fya"]);
    assert!(shown.contains("xdp"), "XDP attached to fya: {shown}");

    // A bad endpoint is refused with the interface named.
    match c.call(&Request::UpsertEndpoint {
        endpoint: endpoint("x/eth0", "fynothere", Ipv4Addr::new(10, 99, 0, 9)),
    }) {
        Response::Error { message } => assert!(message.contains("fynothere"), "{message}"),
        other => panic!("{other:?}"),
    }

    let before = c.stats();
    ping(&pa, B, "3").expect("pod A pings pod B through the dataplane");
    ping(&pb, A, "3").expect("pod B pings pod A through the dataplane");
    ping(&pa, GW, "3").expect("pod A pings the gateway (answered by the dataplane)");
    ping(&node, A, "3").expect("the node pings pod A through the host port");
    let after = c.stats();
    let (a0, a1) = (port(&before, "fya"), port(&after, "fya"));
    let (b0, b1) = (port(&before, "fyb"), port(&after, "fyb"));
    let (h0, h1) = (port(&before, "ferry0dp"), port(&after, "ferry0dp"));
    // The kernel's socket counters, read by the workers about once a
    // second (the pings took longer): present on every AF_XDP port, and
    // the kernel never saw a descriptor of ours it had to reject.
    for p in [&a1, &b1, &h1] {
        assert_eq!(p.kernel.len(), 6, "XDP_STATISTICS of {}: {p:?}", p.name);
        assert_eq!(p.kernel["rx_invalid_descs"], 0, "{p:?}");
        assert_eq!(p.kernel["tx_invalid_descs"], 0, "{p:?}");
    }
    assert!(
        a1.rx_frames >= a0.rx_frames + 9,
        "A sent >= 9 frames: {a0:?} -> {a1:?}"
    );
    assert!(
        b1.tx_frames >= b0.tx_frames + 6,
        "B got requests and replies: {b0:?} -> {b1:?}"
    );
    assert!(
        a1.tx_frames >= a0.tx_frames + 9,
        "A got replies: {a0:?} -> {a1:?}"
    );
    assert!(
        h1.rx_frames >= h0.rx_frames + 3 && h1.tx_frames >= h0.tx_frames + 3,
        "{h0:?} -> {h1:?}"
    );
    assert!(after.workers[0].rx_frames > before.workers[0].rx_frames);
    assert!(
        after.workers[0].idle_polls > 0,
        "an idle worker sleeps in poll(2)"
    );
    eprintln!("stats after pings: {}", stats_line(&after));

    // Stop: exit 0, socket gone, XDP detached, pods cut off again.
    drop(c);
    let mut child = topo.dataplane.take().unwrap();
    let status = stop(&mut child).expect("dataplane exits on SIGTERM");
    assert!(status.success(), "exit status {status}");
    assert!(!sock.exists(), "socket file removed");
    let shown = must(&["ip", "-n", &node, "link", "show", "fya"]);
    assert!(!shown.contains("xdp"), "XDP detached from fya: {shown}");
    assert!(
        ping(&pa, B, "2").is_err(),
        "pod-to-pod traffic stops with the dataplane"
    );
}

/// Pods whose MTU is above a chunk: their frames reach the dataplane as
/// chains of descriptors (AF_XDP multi-buffer, the `xdp.frags` program)
/// and leave it as chains, pod to pod and as replies of the dataplane's
/// own, up to the largest MTU the dataplane says it carries; a packet too
/// large for the host port gets "fragmentation needed" back.
#[test]
fn jumbo_pods_exchange_frames_larger_than_a_chunk_as_chains() {
    let mut topo = Topo::new("jb", &["pa", "pb"]);
    let node = topo.node.clone();
    let (pa, pb) = (topo.pods[0].clone(), topo.pods[1].clone());
    let mtu = 28658;
    pod_ns_mtu(&topo, &pa, "fyja", A, mtu);
    pod_ns_mtu(&topo, &pb, "fyjb", B, mtu);
    let kernel_mac = host_port(&node);
    // Batches of 6 frames: a 16-frame chain is handed out whole across
    // three of them, and chains of 5 are cut by the batch's end too.
    let (_sock, mut c) = start_dataplane_with(&mut topo, &["--batch", "6"]);
    let jumbo = |id: &str, host: &str, ip| Endpoint {
        mtu: Some(mtu),
        ..endpoint(id, host, ip)
    };
    let reply = c.call(&Request::Sync {
        node: node_settings("ferry0dp", kernel_mac),
        endpoints: vec![jumbo("a/eth0", "fyja", A), jumbo("b/eth0", "fyjb", B)],
        routes: vec![],
    });
    assert!(
        matches!(reply, Response::Applied { ref missing, .. } if missing.is_empty()),
        "{reply:?}"
    );
    let before = c.stats();
    // Unfragmented (DF) echoes of 8000 B (5 chunks) and of the largest
    // packet the MTU allows (16 chunks, the most a chain has); ping checks
    // that every reply carries the request's bytes.
    let largest = (mtu - 28).to_string();
    for size in ["8000", largest.as_str()] {
        let df = ["-M", "do", "-s", size];
        ping_with(&pa, B, "3", &df).unwrap_or_else(|e| panic!("{size} B pod A -> pod B: {e}"));
        ping_with(&pb, A, "3", &df).unwrap_or_else(|e| panic!("{size} B pod B -> pod A: {e}"));
        ping_with(&pa, GW, "3", &df)
            .unwrap_or_else(|e| panic!("{size} B pod A -> gateway (answered as a chain): {e}"));
    }
    // One byte more than the MTU never leaves the pod: the kernel refuses it.
    let over = (mtu - 27).to_string();
    assert!(ping_with(&pa, B, "1", &["-M", "do", "-s", &over]).is_err());
    // The host port's MTU is 1500: a large packet leaving through it (to
    // anything not a pod, here a documentation address) is answered
    // "fragmentation needed" with that MTU, which the pod's kernel records.
    let _ = ping_with(&pa, OUTSIDE, "1", &["-M", "do", "-s", "8000"]);
    let after = c.stats();
    let (a0, a1) = (port(&before, "fyja"), port(&after, "fyja"));
    let (b0, b1) = (port(&before, "fyjb"), port(&after, "fyjb"));
    for p in [&a1, &b1] {
        assert_eq!(p.kernel["rx_invalid_descs"], 0, "{p:?}");
        assert_eq!(p.kernel["tx_invalid_descs"], 0, "{p:?}");
        assert_eq!(
            p.kernel["rx_dropped"], 0,
            "no chain dropped at the socket: {p:?}"
        );
    }
    // Counted in packets, not descriptors: A sent 12 requests and 6
    // replies, ~190 descriptors (5 or 16 each), plus a few small frames
    // (ARP, IPv6 solicitations, the one to the node).
    let sent = a1.rx_frames - a0.rx_frames;
    assert!((18..=40).contains(&sent), "A's packets: {a0:?} -> {a1:?}");
    let got = b1.tx_frames - b0.tx_frames;
    assert!((12..=30).contains(&got), "B's packets: {b0:?} -> {b1:?}");
    assert!(
        a1.rx_bytes - a0.rx_bytes > 6 * 28_000,
        "A's bytes count every chunk: {a0:?} -> {a1:?}"
    );
    let frag_needed = after
        .workers
        .iter()
        .map(|w| w.drops.get("frag_needed").copied().unwrap_or(0))
        .sum::<u64>();
    assert!(frag_needed >= 1, "{}", stats_line(&after));
    let cached = must(&["ip", "-n", &pa, "route", "get", &OUTSIDE.to_string()]);
    assert!(cached.contains("mtu 1500"), "{cached}");
}

/// The sockets of a worker on every pod veth and the host port share its
/// Pods A and B (host veths `ifnames`) in topology `tag`, served by a
/// dataplane with a 2048-frame UMEM; A has pinged B.
fn two_pods_on_a_small_umem(tag: &str, ifnames: [&str; 2]) -> (Topo, Client) {
    let mut topo = Topo::new(tag, &["pa", "pb"]);
    let node = topo.node.clone();
    pod_ns(&topo, &topo.pods[0], ifnames[0], A);
    pod_ns(&topo, &topo.pods[1], ifnames[1], B);
    let kernel_mac = host_port(&node);
    let (_sock, mut c) = start_dataplane_with(&mut topo, &["--frames-per-worker", "2048"]);
    let reply = c.call(&Request::Sync {
        node: node_settings("ferry0dp", kernel_mac),
        endpoints: vec![
            endpoint("a/eth0", ifnames[0], A),
            endpoint("b/eth0", ifnames[1], B),
        ],
        routes: vec![],
    });
    assert!(
        matches!(reply, Response::Applied { ref missing, .. } if missing.is_empty()),
        "{reply:?}"
    );
    ping(&topo.pods[0], B, "2").expect("pod A pings pod B");
    (topo, c)
}

/// The first stats whose worker-0 UMEM census satisfies `ok` (published
/// about once a second, idle or not), waiting a bounded 10 s; panics with
/// `what` after that.
fn umem_when(
    c: &mut Client,
    what: &str,
    ok: impl Fn(&Stats, &ferry_api::table::UmemStats) -> bool,
) -> (Stats, ferry_api::table::UmemStats) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = c.stats();
        let u = s.workers[0]
            .umem
            .expect("a shared UMEM once veth ports exist");
        if ok(&s, &u) {
            return (s, u);
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {u:?}; {}",
            stats_line(&s)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Every frame of the UMEM free or in a live socket's rings.
fn home(u: &ferry_api::table::UmemStats) -> bool {
    u.closing == 0 && u.free + u.in_rings == u.frames
}

/// UMEM: a pod's port removed and added again, round after round, binds
/// its veth again (no port is the UMEM's anchor) and hands back every
/// frame its rings held, so the worker's frames all come home.
#[test]
fn ports_share_the_workers_umem_and_give_their_frames_back() {
    let (topo, mut c) = two_pods_on_a_small_umem("sh", ["fysa", "fysb"]);
    let pb = topo.pods[1].clone();
    const ROUNDS: usize = 12;
    for round in 0..ROUNDS {
        let reply = c.call(&Request::RemoveEndpoint {
            id: "b/eth0".into(),
        });
        assert!(
            matches!(reply, Response::Applied { .. }),
            "{round}: {reply:?}"
        );
        let reply = c.call(&Request::UpsertEndpoint {
            endpoint: endpoint("b/eth0", "fysb", B),
        });
        assert!(
            matches!(reply, Response::Applied { .. }),
            "{round}: {reply:?}"
        );
        ping(&pb, A, "2").unwrap_or_else(|e| panic!("round {round}: pod B after re-adding: {e}"));
    }
    // The census and the kernel counters are published about once a
    // second, idle or not: the first publication with pod B's last socket
    // in it (its kernel counters, read just before the census) is awaited,
    // since one made while B was removed counts two queues.
    let (s, umem) = umem_when(
        &mut c,
        "frames did not come home, or idle queues kept more than the least",
        // Three sockets (two pods and the host port) with small budgets,
        // and nothing left with the ports removed.
        |s, u| !port(s, "fysb").kernel.is_empty() && home(u) && u.fill_budget == 3 * 64,
    );
    assert_eq!(umem.frames, 2048, "{umem:?}");
    assert!(umem.in_rings <= 3 * 64, "{umem:?}");
    let b = port(&s, "fysb");
    assert_eq!(b.kernel["rx_invalid_descs"], 0, "{b:?}");
    assert_eq!(b.kernel["tx_invalid_descs"], 0, "{b:?}");
}

/// A pod's namespace deleted before its DEL takes the host veth with it,
/// under a live port: the worker finds its socket unbound, closes the
/// queue and takes back the frames its rings held (with one UMEM per
/// worker, a few such pods would otherwise starve the rest until ferryd
/// removed their ports); the port shows as no longer attached, the other
/// pods go on, and the removal that follows is an ordinary one.
#[test]
fn a_veth_deleted_under_its_port_gives_its_frames_back() {
    let (topo, mut c) = two_pods_on_a_small_umem("gn", ["fyga", "fygb"]);
    let (pa, pb) = (topo.pods[0].clone(), topo.pods[1].clone());
    must(&["ip", "netns", "del", &pb]);
    // Traffic towards the vanished pod, for its TX ring (fails: no pod).
    let _ = ping_with(&pa, B, "20", &["-i", "0.05"]);
    let (s, umem) = umem_when(
        &mut c,
        "the vanished pod's queue kept its frames",
        |s, u| !port(s, "fygb").attached && home(u),
    );
    assert!(port(&s, "fyga").attached, "{}", stats_line(&s));
    // Two sockets left (pod A and the host port), at their small budgets.
    assert!(umem.in_rings <= 2 * 64, "{umem:?}");
    ping(&pa, GW, "2").expect("pod A still reaches the gateway");
    let reply = c.call(&Request::RemoveEndpoint {
        id: "b/eth0".into(),
    });
    assert!(matches!(reply, Response::Applied { .. }), "{reply:?}");
    ping(&pa, GW, "1").expect("and after the removal");
}

/// Port `name`'s counters in `s`.
fn port(s: &Stats, name: &str) -> ferry_api::table::PortStats {
    s.ports
        .iter()
        .find(|p| p.name == name)
        .cloned()
        .expect(name)
}

fn stats_line(s: &Stats) -> String {
    s.ports
        .iter()
        .map(|p| {
            format!(
                "{}: rx {} tx {} drops {:?}",
                p.name, p.rx_frames, p.tx_frames, p.drops
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Links that are not ferry's, and namespace paths that are not a pod's,
/// are refused by the table API with the reason named, and the node's own
/// links never get an XDP program.
#[test]
fn ports_that_are_not_ferrys_are_refused() {
    let mut topo = Topo::new("rf", &["pa"]);
    let node = topo.node.clone();
    let pa = topo.pods[0].clone();
    pod_ns(&topo, &pa, "fya", A);
    let kernel_mac = host_port(&node);
    must(&["ip", "-n", &node, "link", "add", "fyifb", "type", "ifb"]);
    must(&["ip", "-n", &node, "link", "add", "fybr", "type", "bridge"]);
    must(&[
        "ip", "-n", &node, "link", "add", "fyself", "type", "veth", "peer", "name", "fyselfp",
    ]);
    must(&[
        "ip", "-n", &node, "tuntap", "add", "mode", "tap", "name", "fytap",
    ]);
    for l in ["fyifb", "fybr", "fyself", "fyselfp"] {
        must(&["ip", "-n", &node, "link", "set", l, "up"]);
    }
    let (_sock, mut c) = start_dataplane(&mut topo);

    // A host port that is not a veth: the Sync names it as missing.
    match c.call(&Request::Sync {
        node: node_settings("lo", kernel_mac),
        endpoints: vec![endpoint("a/eth0", "fya", A)],
        routes: vec![],
    }) {
        Response::Applied { missing, .. } => {
            assert_eq!(missing.len(), 1, "{missing:?}");
            assert_eq!(missing[0].endpoint, "host");
            assert!(missing[0].error.contains("not a veth"), "{missing:?}");
        }
        other => panic!("{other:?}"),
    }
    // The real host port (a veth with its peer here) and a pod veth are fine.
    let reply = c.call(&Request::Sync {
        node: node_settings("ferry0dp", kernel_mac),
        endpoints: vec![endpoint("a/eth0", "fya", A)],
        routes: vec![],
    });
    assert!(
        matches!(&reply, Response::Applied { missing, .. } if missing.is_empty()),
        "{reply:?}"
    );

    let refused = |c: &mut Client, ep: Endpoint, why: &str| match c
        .call(&Request::UpsertEndpoint { endpoint: ep })
    {
        Response::Error { message } => assert!(message.contains(why), "{why}: {message}"),
        other => panic!("{why}: {other:?}"),
    };
    let ip = Ipv4Addr::new(10, 99, 0, 9);
    for ifname in ["lo", "fyifb", "fybr", "fytap"] {
        refused(&mut c, endpoint("x/eth0", ifname, ip), "not a veth");
    }
    refused(
        &mut c,
        endpoint("x/eth0", "fyself", ip),
        "dataplane's own network namespace",
    );

    // Tap endpoints whose namespace path is not a pod's.
    let fifo = topo.dir.join("fifo");
    must(&["mkfifo", fifo.to_str().unwrap()]);
    let tap = |netns: &str, netns_id| Endpoint {
        attachment: ferry_api::table::Attachment::Tap,
        netns: netns.into(),
        pod_ifname: "eth0".into(),
        netns_id,
        ..endpoint("t/eth0", "ftx", ip)
    };
    let started = Instant::now();
    refused(
        &mut c,
        tap(fifo.to_str().unwrap(), None),
        "not a network namespace",
    );
    assert!(started.elapsed() < Duration::from_secs(5), "a FIFO blocked");
    refused(&mut c, tap("/proc/self/ns/net", None), "dataplane's own");
    refused(&mut c, tap("/proc/self/ns/uts", None), "another type");
    let pod_path = format!("/run/netns/{pa}");
    let wrong = ferry_api::table::NetnsId { dev: 1, ino: 1 };
    refused(&mut c, tap(&pod_path, Some(wrong)), "not net:[1]");

    // Only the two veths that are ferry's carry a program.
    let links = must(&["ip", "-n", &node, "-o", "link", "show"]);
    for line in links.lines() {
        let name = line.split(": ").nth(1).unwrap_or_default();
        let mine = name.starts_with("fya@") || name.starts_with("ferry0dp@");
        assert_eq!(line.contains(" xdp"), mine, "{line}");
    }
}
