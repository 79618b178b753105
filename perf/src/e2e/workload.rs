//! The workloads, each run between pod 0 (sender/client) and pod 1
//! (receiver/server) of a topology, returning named metrics.

use std::collections::BTreeMap;
use std::fs;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

use super::error::{E2eError, Result};
use super::live;
use super::parse::{self, CpuTicks, DevCounters};
use super::services::SERVICE_PORT;
use super::stats::percentile;
use super::sys::{self, in_netns};
use super::topo::{Topology, IPERF_PORT};
use super::traffic::{self, Flood, Generator};

/// Port of our TCP request/response server.
pub const RR_PORT: u16 = 5301;

/// One workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// iperf3 TCP with this many parallel streams.
    Tcp(u32),
    /// Our UDP flood with frames of this many bytes (L2, without FCS; 60 = "64 B").
    Udp(usize),
    /// ping -i 0.01 round trips.
    Ping,
    /// 1-byte TCP request/response round trips.
    TcpRr,
}

impl Workload {
    pub fn label(&self) -> String {
        match self {
            Workload::Tcp(n) => format!("tcp-{n}"),
            Workload::Udp(len) if *len <= traffic::MIN_FRAME => "udp-64B".into(),
            Workload::Udp(len) => format!("udp-{len}B"),
            Workload::Ping => "ping".into(),
            Workload::TcpRr => "tcp-rr".into(),
        }
    }
}

/// The IP family a workload runs over, between the same two pods.
///
/// A run option (`--family 4|6|both`) rather than IPv6 workloads of their
/// own: every workload runs unchanged over either family (only the pods'
/// addresses and the flood's frames differ), so one option crosses with
/// every `--workloads` choice instead of doubling the list of labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

/// A run option that takes one of two values or `both` (the first first):
/// `what` names the option in the error.
pub fn one_or_both<T: Copy>(s: &str, what: &str, a: (&str, T), b: (&str, T)) -> Result<Vec<T>> {
    match s {
        _ if s == a.0 => Ok(vec![a.1]),
        _ if s == b.0 => Ok(vec![b.1]),
        "both" => Ok(vec![a.1, b.1]),
        other => Err(E2eError::setup(
            "-",
            format!("unknown {what} {other:?} (choose {}, {} or both)", a.0, b.0),
        )),
    }
}

impl Family {
    /// `4`, `6` or `both` (IPv4 first).
    pub fn parse_choice(s: &str) -> Result<Vec<Family>> {
        one_or_both(s, "family", ("4", Family::V4), ("6", Family::V6))
    }

    /// The case label of `w` over this family: IPv4 keeps the workload's
    /// label (results stay comparable with earlier runs), IPv6 adds `-v6`.
    pub fn case(self, w: Workload) -> String {
        match self {
            Family::V4 => w.label(),
            Family::V6 => format!("{}-v6", w.label()),
        }
    }

    /// ping's option for this family.
    fn ping_flag(self) -> &'static str {
        match self {
            Family::V4 => "-4",
            Family::V6 => "-6",
        }
    }
}

/// Where a workload goes: to pod 1's own address, or to a ClusterIP whose
/// service port (80, UDP and TCP) the path translates to pod 1's port
/// ([`super::services`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Pod,
    Service(Ipv4Addr),
}

impl Workload {
    /// Whether the workload can be sent through a service: the flood and
    /// the request/response pair (iperf3 and ping are not).
    pub fn through_services(&self) -> bool {
        matches!(self, Workload::Udp(_) | Workload::TcpRr)
    }
}

/// Durations and counts of one workload run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Params {
    pub tcp_secs: u32,
    pub udp_warmup: Duration,
    pub udp_window: Duration,
    pub ping_count: u32,
    pub rr_window: Duration,
    /// Generator threads of the UDP workloads.
    pub senders: u32,
    /// What makes the UDP workloads' frames.
    pub generator: Generator,
}

/// Whole-machine CPU tick counters now.
pub fn cpu_now() -> Result<CpuTicks> {
    let t = fs::read_to_string("/proc/stat").map_err(|e| E2eError::io("read /proc/stat", e))?;
    parse::proc_stat(&t)
}

/// CPU seconds between two readings.
pub fn cpu_seconds(a: CpuTicks, b: CpuTicks) -> f64 {
    tick_seconds(b.busy.saturating_sub(a.busy))
}

/// Clock ticks (`_SC_CLK_TCK`) in seconds.
pub fn tick_seconds(ticks: u64) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as f64 } else { 100.0 };
    ticks as f64 / hz
}

/// The CPU counters of a measurement window: the machine's (/proc/stat,
/// which covers both nodes of a two-node topology, the fabric and the
/// generator alike) and, on two-node topologies, the ferry-dataplane
/// processes of both nodes (/proc/<pid>/stat utime + stime, every thread).
#[derive(Debug, Clone, Copy)]
struct CpuReading {
    machine: CpuTicks,
    dataplanes: Option<u64>,
}

fn cpu_reading(topo: &Topology) -> Result<CpuReading> {
    let machine = cpu_now()?;
    let pids = topo.dataplane_pids();
    let dataplanes = if topo.kind.two_node() && !pids.is_empty() {
        let mut sum = 0;
        for pid in pids {
            let p = format!("/proc/{pid}/stat");
            let t = fs::read_to_string(&p).map_err(|e| E2eError::io(format!("read {p}"), e))?;
            sum += parse::pid_stat_ticks(&t)?;
        }
        Some(sum)
    } else {
        None
    };
    Ok(CpuReading {
        machine,
        dataplanes,
    })
}

/// The split of the window's CPU that two-node topologies report beside
/// the machine's: `softirq_cores` (the machine's softirq time, where the
/// kernel paths forward and decapsulate) and `dataplane_cores` (both
/// nodes' ferry-dataplane processes), each per wall second.
fn cpu_split(topo: &Topology, a: CpuReading, b: CpuReading, wall: f64) -> Vec<(&'static str, f64)> {
    if !topo.kind.two_node() || wall <= 0.0 {
        return Vec::new();
    }
    let soft = tick_seconds(b.machine.softirq.saturating_sub(a.machine.softirq));
    let mut v = vec![("softirq_cores", soft / wall)];
    if let (Some(x), Some(y)) = (a.dataplanes, b.dataplanes) {
        v.push(("dataplane_cores", tick_seconds(y.saturating_sub(x)) / wall));
    }
    v
}

/// Counters of `ifname` in namespace `ns`.
pub fn counters(ns: &str, ifname: &str) -> Result<DevCounters> {
    in_netns(ns, || {
        let t = fs::read_to_string("/proc/thread-self/net/dev")
            .map_err(|e| E2eError::io("read /proc/thread-self/net/dev", e))?;
        parse::proc_net_dev(&t, ifname)
    })
}

/// Run `w` over `family` on `topo`, pod 0 to pod 1.
pub fn run(
    w: Workload,
    family: Family,
    topo: &Topology,
    p: &Params,
) -> Result<BTreeMap<String, f64>> {
    run_to(w, family, Target::Pod, topo, p)
}

/// Run `w` over `family` on `topo`, pod 0 to `target`.
pub fn run_to(
    w: Workload,
    family: Family,
    target: Target,
    topo: &Topology,
    p: &Params,
) -> Result<BTreeMap<String, f64>> {
    let r = match (w, target) {
        (Workload::Udp(len), _) => udp(
            topo,
            family,
            target,
            len,
            p.udp_warmup,
            p.udp_window,
            (p.generator, p.senders),
        ),
        (Workload::TcpRr, _) => rr(topo, family, target, p.rr_window),
        (w, Target::Service(_)) => Err(E2eError::setup(
            &topo.name,
            format!("{} cannot be sent through a service", w.label()),
        )),
        (Workload::Tcp(streams), Target::Pod) => tcp(topo, family, streams, p.tcp_secs),
        (Workload::Ping, Target::Pod) => ping(topo, family, p.ping_count),
    };
    r.map_err(|e| match e {
        E2eError::Interrupted => e,
        other => E2eError::Workload {
            workload: match target {
                Target::Pod => family.case(w),
                Target::Service(vip) => format!("{} to {vip}", family.case(w)),
            },
            topology: topo.name.clone(),
            detail: other.to_string(),
        },
    })
}

fn m(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

fn tcp(topo: &Topology, family: Family, streams: u32, secs: u32) -> Result<BTreeMap<String, f64>> {
    let (tx, rx) = topo.pair();
    let mut cmd = Command::new("ip");
    // The server listens on a dual-stack socket (`start_iperf_server`).
    cmd.args([
        "netns",
        "exec",
        &tx.ns.name,
        "iperf3",
        "-c",
        &rx.addr(family)?.to_string(),
    ])
    .args([
        "-p",
        &IPERF_PORT.to_string(),
        "-t",
        &secs.to_string(),
        "-P",
        &streams.to_string(),
        "-J",
    ]);
    let c0 = cpu_reading(topo)?;
    let t0 = Instant::now();
    let out = sys::run_with(cmd, None, Duration::from_secs(u64::from(secs) + 20))?;
    let wall = t0.elapsed().as_secs_f64();
    let c1 = cpu_reading(topo)?;
    let r = parse::iperf3_json(&out.stdout).map_err(|e| {
        E2eError::parse(
            "iperf3 output",
            format!("{e} (stderr: {})", out.stderr.trim()),
        )
    })?;
    let cpu = cpu_seconds(c0.machine, c1.machine);
    let gbits = r.bytes * 8.0 / 1e9;
    let mut out = m(&[
        ("gbit_s", r.bits_per_second / 1e9),
        ("retransmits", r.retransmits),
        (
            "cpu_s_per_gbit",
            if gbits > 0.0 { cpu / gbits } else { f64::NAN },
        ),
        ("cpu_cores", cpu / wall),
    ]);
    out.extend(m(&cpu_split(topo, c0, c1, wall)));
    Ok(out)
}

/// The flood towards pod 1 (or `target`'s ClusterIP, port 80) over
/// `family`: source MAC of pod 0's eth0, destination MAC of its next hop to
/// that address (the gateway's or pod 1's, from pod 0's own route and
/// neighbour tables, resolved with one ping first if needed), as pod 0's
/// kernel would send it.
pub fn flood_spec(
    topo: &Topology,
    family: Family,
    target: Target,
    frame_len: usize,
) -> Result<Flood> {
    let (tx, rx) = topo.pair();
    let src = tx.addr(family)?;
    let (dst, dst_port) = match target {
        Target::Pod => (rx.addr(family)?, traffic::FLOOD_PORT),
        Target::Service(vip) => (IpAddr::V4(vip), SERVICE_PORT),
    };
    let ns = &tx.ns.name;
    let src_mac = parse::mac(&parse::link_address(&sys::run_ok(
        "ip",
        &["-n", ns, "-j", "link", "show", "eth0"],
    )?)?)?;
    let nh = parse::route_get_next_hop(&sys::run_ok(
        "ip",
        &["-n", ns, "-j", "route", "get", &dst.to_string()],
    )?)?;
    let lookup = || -> Result<String> {
        parse::neigh_lladdr(&sys::run_ok(
            "ip",
            &["-n", ns, "-j", "neigh", "show", &nh, "dev", "eth0"],
        )?)
    };
    let lladdr = match lookup() {
        Ok(l) => l,
        Err(_) => {
            let _ = sys::run(
                "ip",
                &[
                    "netns",
                    "exec",
                    ns,
                    "ping",
                    family.ping_flag(),
                    "-c",
                    "2",
                    "-i",
                    "0.2",
                    "-W",
                    "1",
                    &dst.to_string(),
                ],
            );
            lookup().map_err(|e| {
                E2eError::setup(&topo.name, format!("next hop {nh} unresolved: {e}"))
            })?
        }
    };
    Ok(Flood {
        ns: ns.clone(),
        ifname: "eth0".into(),
        src_mac,
        dst_mac: parse::mac(&lladdr)?,
        src,
        dst,
        dst_port,
        frame_len,
        flows: 8,
        first_port: 10_000,
    })
}

fn udp(
    topo: &Topology,
    family: Family,
    target: Target,
    len: usize,
    warmup: Duration,
    window: Duration,
    (generator, senders): (Generator, u32),
) -> Result<BTreeMap<String, f64>> {
    let spec = flood_spec(topo, family, target, len)?;
    let (tx, rx) = topo.pair();
    let _sink = traffic::discard_sink(&rx.ns.name)?;
    // Held until the flood has stopped: the node end's GRO goes back off.
    let _peer = match generator {
        Generator::Live => Some(live::ready_peer(&topo.node.name, &tx.ns.name, "eth0")?),
        Generator::AfPacket => None,
    };
    // One generator thread per sender, each with its own 8 flows.
    let mut floods = Vec::new();
    for k in 0..senders.max(1) {
        let mut s = spec.clone();
        s.first_port = spec.first_port + 8 * k as u16;
        match traffic::start(s, generator) {
            Ok(f) => floods.push(f),
            Err(e) => {
                for f in floods {
                    let _ = f.stop();
                }
                return Err(e);
            }
        }
    }
    let handed_on = |floods: &[traffic::FloodHandle]| floods.iter().map(|f| f.sent()).sum::<u64>();
    let measured = (|| {
        sys::sleep(warmup)?;
        let (g0, s0, r0, c0, t0) = (
            handed_on(&floods),
            counters(&tx.ns.name, "eth0")?,
            counters(&rx.ns.name, "eth0")?,
            cpu_reading(topo)?,
            Instant::now(),
        );
        sys::sleep(window)?;
        let (g1, s1, r1, c1, t1) = (
            handed_on(&floods),
            counters(&tx.ns.name, "eth0")?,
            counters(&rx.ns.name, "eth0")?,
            cpu_reading(topo)?,
            Instant::now(),
        );
        Ok::<_, E2eError>(((g0, s0, r0, c0, t0), (g1, s1, r1, c1, t1)))
    })();
    let stopped: Vec<Result<u64>> = floods.into_iter().map(traffic::FloodHandle::stop).collect();
    let ((g0, s0, r0, c0, t0), (g1, s1, r1, c1, t1)) = measured?;
    let mut sent = 0;
    for r in stopped {
        sent += r?;
    }
    if sent == 0 {
        return Err(E2eError::setup(&topo.name, "the generator sent nothing"));
    }
    let dt = (t1 - t0).as_secs_f64();
    let rx_pkts = r1.rx_packets.saturating_sub(r0.rx_packets) as f64;
    // What the sending pod's eth0 counted: for AF_PACKET the frames its
    // socket queued; for live frames, the XDP frames its veth peer took in
    // (a veth counts its peer's XDP receptions as its own tx_packets, ring
    // overflows as tx_dropped).
    let sender_if =
        (s1.tx_packets + s1.tx_dropped).saturating_sub(s0.tx_packets + s0.tx_dropped) as f64;
    let offered = match generator {
        Generator::AfPacket => sender_if,
        Generator::Live => g1.saturating_sub(g0) as f64,
    };
    if generator == Generator::Live && offered > 0.0 && sender_if == 0.0 && rx_pkts == 0.0 {
        return Err(E2eError::setup(
            &topo.name,
            format!(
                "live generator: {offered} frames run, none left pod 0's eth0 \
                 (its peer takes no XDP frames, or eth0 is down)"
            ),
        ));
    }
    let rx_bytes = r1.rx_bytes.saturating_sub(r0.rx_bytes) as f64;
    let cpu = cpu_seconds(c0.machine, c1.machine);
    let mut out = m(&[
        ("rx_mpps", rx_pkts / dt / 1e6),
        ("offered_mpps", offered / dt / 1e6),
        ("sender_if_mpps", sender_if / dt / 1e6),
        ("rx_gbit_s", rx_bytes * 8.0 / dt / 1e9),
        (
            "loss_pct",
            if offered > 0.0 {
                100.0 * (1.0 - rx_pkts / offered).max(0.0)
            } else {
                f64::NAN
            },
        ),
        (
            "cpu_s_per_mpkt",
            if rx_pkts > 0.0 {
                cpu / (rx_pkts / 1e6)
            } else {
                f64::NAN
            },
        ),
        ("cpu_cores", cpu / dt),
        (
            "rx_mpps_per_core",
            if cpu > 0.0 {
                rx_pkts / 1e6 / cpu
            } else {
                f64::NAN
            },
        ),
    ]);
    out.extend(m(&cpu_split(topo, c0, c1, dt)));
    Ok(out)
}

fn ping(topo: &Topology, family: Family, count: u32) -> Result<BTreeMap<String, f64>> {
    let (tx, rx) = topo.pair();
    let mut cmd = Command::new("ip");
    cmd.args([
        "netns",
        "exec",
        &tx.ns.name,
        "ping",
        family.ping_flag(),
        "-n",
        "-c",
        &count.to_string(),
        "-i",
        "0.01",
        "-W",
        "1",
    ])
    .arg(rx.addr(family)?.to_string());
    let out = sys::run_with(
        cmd,
        None,
        Duration::from_secs_f64(f64::from(count) * 0.01 + 15.0),
    )?;
    let times = parse::ping_times_us(&out.stdout);
    if times.len() < (count as usize).div_ceil(2) {
        return Err(E2eError::setup(
            &topo.name,
            format!(
                "ping: only {} of {count} replies ({})",
                times.len(),
                last_line(&out.stderr)
            ),
        ));
    }
    Ok(m(&[
        ("p50_us", percentile(&times, 50.0).unwrap_or(f64::NAN)),
        ("p99_us", percentile(&times, 99.0).unwrap_or(f64::NAN)),
    ]))
}

fn last_line(s: &str) -> &str {
    s.trim().lines().last().unwrap_or("")
}

fn rr(
    topo: &Topology,
    family: Family,
    target: Target,
    window: Duration,
) -> Result<BTreeMap<String, f64>> {
    let (tx, rx) = topo.pair();
    let server = (rx.addr(family)?, RR_PORT);
    let connect = match target {
        Target::Pod => SocketAddr::from(server),
        Target::Service(vip) => SocketAddr::from((vip, SERVICE_PORT)),
    };
    let rtts = traffic::tcp_rr(&rx.ns.name, server, &tx.ns.name, connect, window)?;
    if rtts.is_empty() {
        return Err(E2eError::setup(
            &topo.name,
            "no TCP request/response completed",
        ));
    }
    Ok(m(&[
        ("p50_us", percentile(&rtts, 50.0).unwrap_or(f64::NAN)),
        ("p99_us", percentile(&rtts, 99.0).unwrap_or(f64::NAN)),
        ("trans_s", rtts.len() as f64 / window.as_secs_f64()),
    ]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        assert_eq!(Workload::Tcp(4).label(), "tcp-4");
        assert_eq!(Workload::Udp(60).label(), "udp-64B");
        assert_eq!(Workload::Udp(1400).label(), "udp-1400B");
        assert_eq!(Workload::Ping.label(), "ping");
        assert_eq!(Workload::TcpRr.label(), "tcp-rr");
    }

    #[test]
    fn families_are_chosen_by_name_and_label_their_cases() {
        assert_eq!(Family::parse_choice("4").unwrap(), vec![Family::V4]);
        assert_eq!(Family::parse_choice("6").unwrap(), vec![Family::V6]);
        assert_eq!(
            Family::parse_choice("both").unwrap(),
            vec![Family::V4, Family::V6]
        );
        let e = Family::parse_choice("v6").unwrap_err().to_string();
        assert!(e.contains("\"v6\"") && e.contains("both"), "{e}");
        assert_eq!(Family::V4.case(Workload::Udp(60)), "udp-64B");
        assert_eq!(Family::V6.case(Workload::Udp(60)), "udp-64B-v6");
        assert_eq!(Family::V6.case(Workload::Tcp(1)), "tcp-1-v6");
        assert_eq!(Family::V6.case(Workload::Ping), "ping-v6");
    }

    #[test]
    fn cpu_clock_reads_and_advances() {
        let a = cpu_now().unwrap();
        let b = cpu_now().unwrap();
        assert!(b.busy >= a.busy && b.idle >= a.idle);
        assert_eq!(
            cpu_seconds(
                CpuTicks {
                    busy: 100,
                    ..CpuTicks::default()
                },
                CpuTicks {
                    busy: 100,
                    idle: 5,
                    softirq: 0
                }
            ),
            0.0
        );
    }
}
