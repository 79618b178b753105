//! `perf cluster`: what the cluster datastore costs as nodes are added.
//!
//! For each N: one etcd (Debian's, in a namespace of its own) and N nodes,
//! each a namespace with an uplink veth into a fabric namespace (a Linux
//! bridge stands for the switch) running the real `ferryd` with `[cluster]`.
//! No ferry-dataplane runs: what grows with N is the control side (claims,
//! lease renewals, watches, the peer table); ferryd hands routes to a
//! dataplane when one is connected and logs each route either way, so the
//! log timestamps say when each node learned a change.
//!
//! Figures per N: time to form the cluster (all started at once: every
//! node holds a block, every node routes every other block), etcd's load in
//! a quiet window (puts, lease renewals against N/(ttl/4), watchers, bytes,
//! its CPU and RSS), ferryd's CPU and RSS, the propagation of a record put
//! and deleted (to every node, beside etcd's own put round trip measured in
//! the same run), a real join and `ferryd --leave` of one more node, and how
//! long a SIGKILLed node's block stays routed elsewhere (its lease).

use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::e2e::cross::{Fabric, UPLINK};
use crate::e2e::error::{E2eError, Result};
use crate::e2e::sys::{self, in_netns, Netns, Proc, TempDir};
use crate::e2e::{parse, stats, topo, workload};

/// The fabric's /24: nodes are `.1`..`.N+1`, etcd `.250`, the probe record `.254`.
const FABRIC: [u8; 3] = [10, 72, 0];
const ETCD_HOST: u8 = 250;
const PROBE_HOST: u8 = 254;

/// Host `host` of the fabric's /24.
fn fabric_addr(host: u8) -> Ipv4Addr {
    Ipv4Addr::new(FABRIC[0], FABRIC[1], FABRIC[2], host)
}
const ETCD_PORT: u16 = 2379;
const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// The block of the probe record: the last of the CIDR, never claimed by
/// the ≤ 200 nodes of a run (blocks are handed out from the start).
const PROBE_BLOCK: &str = "10.244.255.0/24";
/// The most nodes a run may ask for (addresses of the fabric's /24).
pub const MAX_NODES: u32 = 200;

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Cluster sizes, each measured on a fresh etcd.
    pub nodes: Vec<u32>,
    /// `lease_ttl_s` of every node (renewed every ttl/4).
    pub lease_ttl_s: u32,
    /// The quiet window in which etcd's load is measured.
    pub window: Duration,
    /// Put/delete probes of propagation per N.
    pub probes: u32,
    pub bin_dir: PathBuf,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            nodes: vec![10, 50],
            lease_ttl_s: 10,
            window: Duration::from_secs(20),
            probes: 10,
            bin_dir: topo::default_bin_dir(),
        }
    }
}

/// Milliseconds since the epoch, now.
fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

/// The time of a ferryd log line (`[2026-12-06T22:23:12.546Z INFO ...`) in
/// milliseconds since the epoch.
pub fn log_time_ms(line: &str) -> Option<f64> {
    let ts = line.strip_prefix('[')?.get(..24)?;
    let num = |r: std::ops::Range<usize>| ts.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, s, ms) = (num(11..13)?, num(14..16)?, num(17..19)?, num(20..23)?);
    if ts.as_bytes().get(23) != Some(&b'Z') || !(1..=12).contains(&mo) {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + s;
    Some(secs as f64 * 1000.0 + ms as f64)
}

/// Times of the log lines that contain `needle`, in order.
pub fn times_of(log: &str, needle: &str) -> Vec<f64> {
    log.lines()
        .filter(|l| l.contains(needle))
        .filter_map(log_time_ms)
        .collect()
}

/// The sum of every sample of `name` (any labels) in Prometheus text.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            let base = key.split('{').next()?;
            (base == name).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// The sum of gRPC server counter `name` for method `method` (any other labels).
pub fn grpc_count(text: &str, name: &str, method: &str) -> f64 {
    let label = format!("grpc_method=\"{method}\"");
    let start = format!("{name}{{");
    text.lines()
        .filter(|l| l.starts_with(&start) && l.contains(&label))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// Standard base64 (what etcd's JSON gateway wants for keys and values).
pub fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The block a ferryd log says its node holds (`node n3 holds block 10.244.2.0/24 of ...`).
fn held_block(log: &str) -> Option<String> {
    log.lines().find_map(|l| {
        let rest = l.split(" holds block ").nth(1)?;
        Some(rest.split_whitespace().next()?.to_string())
    })
}

/// One HTTP/1.0 request (so the answer is never chunked) to etcd from
/// inside its namespace; the status and
/// body, and how long the round trip took (ms).
fn etcd_http(ns: &str, method: &str, path: &str, body: &str) -> Result<(u16, String, f64)> {
    let (ns, method, path, body) = (
        ns.to_string(),
        method.to_string(),
        path.to_string(),
        body.to_string(),
    );
    in_netns(&ns.clone(), move || {
        let what = format!("etcd {method} {path}");
        let io = |e| E2eError::io(what.clone(), e);
        let t0 = Instant::now();
        let mut s = TcpStream::connect(("127.0.0.1", ETCD_PORT)).map_err(io)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(io)?;
        write!(
            s,
            "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .map_err(io)?;
        let mut raw = Vec::new();
        s.take(64 << 20).read_to_end(&mut raw).map_err(io)?;
        let ms = t0.elapsed().as_secs_f64() * 1000.0;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| E2eError::parse(what.clone(), head.to_string()))?;
        Ok((status, body.to_string(), ms))
    })
}

/// utime + stime of `pid`, in seconds (0 when it cannot be read).
fn cpu_s(pid: u32) -> f64 {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|t| parse::pid_stat_ticks(&t).ok())
        .map_or(0.0, workload::tick_seconds)
}

/// Resident memory of `pid` in MiB.
fn rss_mib(pid: u32) -> f64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// One node: a namespace cabled to the fabric, its ferryd config and log.
struct ClusterNode {
    // Field order is drop order: the daemon, then its namespace.
    ferryd: Option<Proc>,
    ns: Netns,
    config: PathBuf,
    log: PathBuf,
}

impl ClusterNode {
    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn pid(&self) -> Option<u32> {
        self.ferryd.as_ref().map(Proc::pid)
    }

    fn start(&mut self, bin: &Path) -> Result<()> {
        let s = |p: &Path| p.display().to_string();
        self.ferryd = Some(Proc::spawn_in_ns(
            "ferryd",
            &self.ns.name,
            &[s(&bin.join("ferryd")), "--config".into(), s(&self.config)],
            Some(&self.log),
        )?);
        Ok(())
    }
}

/// etcd, the fabric and the nodes of one N; removed on drop.
struct Bed {
    // Field order is drop order: nodes, etcd, its namespace, the fabric, files.
    nodes: Vec<ClusterNode>,
    etcd: Proc,
    etcd_ns: Netns,
    fabric: Fabric,
    dir: TempDir,
    tag: String,
}

/// ferryd.toml of node `i`: its uplink, VXLAN, `[cluster]` on the bed's etcd.
pub fn node_config(dir: &Path, i: u32, lease_ttl_s: u32) -> String {
    let d = dir.display();
    let address = fabric_addr(u8::try_from(i).unwrap_or(u8::MAX));
    let etcd = fabric_addr(ETCD_HOST);
    format!(
        "socket = \"{d}/ferryd.sock\"\ndataplane_socket = \"{d}/dataplane.sock\"\nstate_dir = \"{d}/state\"\n\
         uplink = \"{UPLINK}\"\nnode_address = \"{address}\"\nmasquerade = false\n\n\
         [overlay]\nmode = \"vxlan\"\nvni = 1\nport = 4789\n\n\
         [cluster]\nendpoints = [\"http://{etcd}:{ETCD_PORT}\"]\ncidr = \"{CLUSTER_CIDR}\"\n\
         node_name = \"n{i}\"\nlease_ttl_s = {lease_ttl_s}\n"
    )
}

impl Bed {
    /// The fabric, etcd, and `nodes` node namespaces (ferryd not started).
    fn create(n: u32, opts: &Options) -> Result<Bed> {
        let tag = format!("fpf-{}-cl{n}", std::process::id());
        let dir = TempDir::create(&format!("cluster-{n}"))?;
        let fabric = Fabric::create(&format!("{tag}-fab"))?;
        let etcd_ns = Netns::create(&format!("{tag}-etcd"))?;
        fabric.plug("etcd", &etcd_ns.name, fabric_addr(ETCD_HOST))?;
        let data = dir.path.join("etcd-data");
        let etcd_addr = fabric_addr(ETCD_HOST);
        let client = format!("http://{etcd_addr}:{ETCD_PORT},http://127.0.0.1:{ETCD_PORT}");
        let peer = "http://127.0.0.1:2380".to_string();
        #[rustfmt::skip]
        let args: Vec<String> = [
            "etcd", "--name", "perf", "--data-dir", &data.display().to_string(),
            "--listen-client-urls", &client,
            "--advertise-client-urls", &format!("http://{etcd_addr}:{ETCD_PORT}"),
            "--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer,
            "--initial-cluster", &format!("perf={peer}"),
        ].iter().map(|s| s.to_string()).collect();
        let etcd = Proc::spawn_in_ns(
            "etcd",
            &etcd_ns.name,
            &args,
            Some(&dir.path.join("etcd.log")),
        )?;
        let mut bed = Bed {
            nodes: Vec::new(),
            etcd,
            etcd_ns,
            fabric,
            dir,
            tag,
        };
        let up = sys::wait_until(Duration::from_secs(20), || {
            bed.http("GET", "/health", "")
                .is_ok_and(|(c, b, _)| c == 200 && b.contains("true"))
        })?;
        if !up {
            return Err(E2eError::setup(
                "etcd",
                format!("etcd never became healthy: {}", bed.etcd.log_tail()),
            ));
        }
        for i in 1..=n + 1 {
            bed.add_node(i, opts)?;
        }
        Ok(bed)
    }

    fn add_node(&mut self, i: u32, opts: &Options) -> Result<()> {
        let ns = Netns::create(&format!("{}-n{i}", self.tag))?;
        let address = fabric_addr(u8::try_from(i).unwrap_or(u8::MAX));
        self.fabric.plug(&format!("p{i}"), &ns.name, address)?;
        let dir = self.dir.path.join(format!("n{i}"));
        fs::create_dir_all(&dir)
            .map_err(|e| E2eError::io(format!("mkdir {}", dir.display()), e))?;
        let config = dir.join("ferryd.toml");
        fs::write(&config, node_config(&dir, i, opts.lease_ttl_s))
            .map_err(|e| E2eError::io(format!("write {}", config.display()), e))?;
        self.nodes.push(ClusterNode {
            ferryd: None,
            ns,
            config,
            log: dir.join("ferryd.log"),
        });
        Ok(())
    }

    fn http(&self, method: &str, path: &str, body: &str) -> Result<(u16, String, f64)> {
        etcd_http(&self.etcd_ns.name, method, path, body)
    }

    fn metrics(&self) -> Result<String> {
        let (code, body, _) = self.http("GET", "/metrics", "")?;
        if code != 200 {
            return Err(E2eError::parse("etcd /metrics", format!("HTTP {code}")));
        }
        Ok(body)
    }

    /// Put `value` at `key` through etcd's JSON gateway; the round trip in ms.
    fn put(&self, key: &str, value: &str) -> Result<f64> {
        let body = format!(
            "{{\"key\":\"{}\",\"value\":\"{}\"}}",
            base64(key.as_bytes()),
            base64(value.as_bytes())
        );
        let (code, text, ms) = self.http("POST", "/v3/kv/put", &body)?;
        if code != 200 {
            return Err(E2eError::parse("etcd put", format!("HTTP {code}: {text}")));
        }
        Ok(ms)
    }

    fn delete(&self, key: &str) -> Result<f64> {
        let body = format!("{{\"key\":\"{}\"}}", base64(key.as_bytes()));
        let (code, text, ms) = self.http("POST", "/v3/kv/deleterange", &body)?;
        if code != 200 {
            return Err(E2eError::parse(
                "etcd delete",
                format!("HTTP {code}: {text}"),
            ));
        }
        Ok(ms)
    }
}

/// Wait (at most `bound`) until every node of `nodes` logged `needle` at
/// least `count` times; each node's time of its `count`-th such line.
fn wait_logged(
    nodes: &[&ClusterNode],
    needle: &str,
    count: usize,
    bound: Duration,
) -> Result<Vec<f64>> {
    let mut times = Vec::new();
    let done = sys::wait_until(bound, || {
        times = nodes
            .iter()
            .filter_map(|n| times_of(&n.log_text(), needle).get(count - 1).copied())
            .collect();
        times.len() == nodes.len()
    })?;
    if !done {
        return Err(E2eError::setup(
            "perf cluster",
            format!(
                "{} of {} node(s) logged {needle:?} ×{count} within {bound:?}",
                times.len(),
                nodes.len()
            ),
        ));
    }
    Ok(times)
}

/// The figures of one N.
#[derive(Debug, Default)]
pub struct Figures {
    pub n: u32,
    /// From starting all ferryd at once: the last node to hold a block, the
    /// last node to route every other block (ms).
    pub claimed_ms: f64,
    pub meshed_ms: f64,
    /// etcd transactions until the quiet window (claims, their retries
    /// on a block taken meanwhile, the first renewals).
    pub formation_txns: f64,
    /// Quiet window rates (per second) and gauges.
    pub puts_s: f64,
    pub renewals_s: f64,
    pub expected_renewals_s: f64,
    pub keepalive_msgs_s: f64,
    pub watchers: f64,
    pub etcd_rx_kib_s: f64,
    pub etcd_tx_kib_s: f64,
    pub etcd_cpu_pct: f64,
    pub etcd_rss_mib: f64,
    pub etcd_db_kib: f64,
    pub ferryd_cpu_pct: Vec<f64>,
    pub ferryd_rss_mib: Vec<f64>,
    /// Probe propagation, every node × probe (ms from the put being sent).
    pub put_rtt_ms: Vec<f64>,
    pub add_ms: Vec<f64>,
    pub del_ms: Vec<f64>,
    /// One more ferryd: its own claim, every other node routing its block,
    /// then `ferryd --leave` until every node removed it (ms).
    pub join_claim_ms: f64,
    pub join_routed_ms: Vec<f64>,
    pub leave_ms: Vec<f64>,
    /// A SIGKILLed node's block, until every other node removed it (ms).
    pub dead_removed_ms: Vec<f64>,
}

fn measure(n: u32, opts: &Options) -> Result<Figures> {
    let mut bed = Bed::create(n, opts)?;
    let bin = &opts.bin_dir;
    let mut f = Figures {
        n,
        ..Figures::default()
    };
    // Formation: N ferryd at once (the spare, node N+1, waits).
    let t0 = now_ms();
    for node in &mut bed.nodes[..n as usize] {
        node.start(bin)?;
    }
    let first: Vec<&ClusterNode> = bed.nodes[..n as usize].iter().collect();
    let bound = Duration::from_secs(30 + u64::from(n));
    let claimed = wait_logged(&first, " holds block ", 1, bound)?;
    f.claimed_ms = claimed.iter().copied().fold(0.0, f64::max) - t0;
    let blocks: Vec<String> = first
        .iter()
        .map(|node| held_block(&node.log_text()).unwrap_or_default())
        .collect();
    if blocks.iter().any(|b| b == PROBE_BLOCK) {
        return Err(E2eError::setup(
            "perf cluster",
            format!("a node holds the probe block {PROBE_BLOCK}"),
        ));
    }
    let mut meshed = t0;
    for (i, node) in first.iter().enumerate() {
        for (j, b) in blocks.iter().enumerate().filter(|(j, _)| *j != i) {
            let needle = format!("route {b} -> ");
            let t = wait_logged(&[node], &needle, 1, bound).map_err(|e| {
                E2eError::setup(
                    "perf cluster",
                    format!(
                        "n{} never routed n{}'s block: {e}\n{}",
                        i + 1,
                        j + 1,
                        node.log_text()
                    ),
                )
            })?;
            meshed = meshed.max(t[0]);
        }
    }
    f.meshed_ms = meshed - t0;

    // The quiet window.
    sys::sleep(Duration::from_secs(2))?;
    let pids: Vec<u32> = first.iter().filter_map(|n| n.pid()).collect();
    let m0 = bed.metrics()?;
    let c0: Vec<f64> = pids.iter().map(|&p| cpu_s(p)).collect();
    let w0 = Instant::now();
    sys::sleep(opts.window)?;
    let m1 = bed.metrics()?;
    let c1: Vec<f64> = pids.iter().map(|&p| cpu_s(p)).collect();
    let secs = w0.elapsed().as_secs_f64();
    let rate = |name: &str| (metric(&m1, name) - metric(&m0, name)) / secs;
    f.puts_s = rate("etcd_debugging_mvcc_put_total");
    f.renewals_s = rate("etcd_debugging_lease_renewed_total");
    f.expected_renewals_s = f64::from(n) / (f64::from(opts.lease_ttl_s) / 4.0);
    let ka = |t: &str| grpc_count(t, "grpc_server_msg_received_total", "LeaseKeepAlive");
    f.keepalive_msgs_s = (ka(&m1) - ka(&m0)) / secs;
    f.formation_txns = grpc_count(&m0, "grpc_server_handled_total", "Txn");
    f.watchers = metric(&m1, "etcd_debugging_mvcc_watcher_total");
    f.etcd_rx_kib_s = rate("etcd_network_client_grpc_received_bytes_total") / 1024.0;
    f.etcd_tx_kib_s = rate("etcd_network_client_grpc_sent_bytes_total") / 1024.0;
    f.etcd_cpu_pct = rate("process_cpu_seconds_total") * 100.0;
    f.etcd_rss_mib = metric(&m1, "process_resident_memory_bytes") / (1024.0 * 1024.0);
    f.etcd_db_kib = metric(&m1, "etcd_debugging_mvcc_db_total_size_in_bytes") / 1024.0;
    f.ferryd_cpu_pct = c0
        .iter()
        .zip(&c1)
        .map(|(a, b)| (b - a) / secs * 100.0)
        .collect();
    f.ferryd_rss_mib = pids.iter().map(|&p| rss_mib(p)).collect();

    // Probes: a record put, then deleted, seen by every node.
    let key = format!("/ferry/blocks/{}", PROBE_BLOCK.replace('/', "-"));
    let probe = fabric_addr(PROBE_HOST);
    let record = format!(
        "{{\"name\":\"probe\",\"address\":\"{probe}\",\"block\":\"{PROBE_BLOCK}\",\"vtep_mac\":\"02:00:00:00:00:fe\",\"overlay\":\"vxlan\",\"vni\":1,\"renewed\":0}}"
    );
    let add_needle = format!("route {PROBE_BLOCK} -> ");
    let del_needle = format!("route {PROBE_BLOCK} removed");
    for k in 1..=opts.probes as usize {
        sys::check_interrupt()?;
        let t = now_ms();
        f.put_rtt_ms.push(bed.put(&key, &record)?);
        let seen = wait_logged(&first, &add_needle, k, Duration::from_secs(10))?;
        f.add_ms.extend(seen.iter().map(|s| s - t));
        sys::sleep(Duration::from_millis(100))?;
        let t = now_ms();
        f.put_rtt_ms.push(bed.delete(&key)?);
        let seen = wait_logged(&first, &del_needle, k, Duration::from_secs(10))?;
        f.del_ms.extend(seen.iter().map(|s| s - t));
        sys::sleep(Duration::from_millis(100))?;
    }

    // A real join, then `ferryd --leave`.
    let spare = n as usize;
    let t = now_ms();
    bed.nodes[spare].start(bin)?;
    let own = wait_logged(&[&bed.nodes[spare]], " holds block ", 1, bound)?;
    f.join_claim_ms = own[0] - t;
    let block = held_block(&bed.nodes[spare].log_text()).unwrap_or_default();
    let (firsts, spares) = bed.nodes.split_at_mut(spare);
    let others: Vec<&ClusterNode> = firsts.iter().collect();
    let routed = wait_logged(&others, &format!("route {block} -> "), 1, bound)?;
    f.join_routed_ms = routed.iter().map(|s| s - t).collect();
    if let Some(mut p) = spares[0].ferryd.take() {
        p.terminate(Duration::from_secs(10));
    }
    let node = &spares[0];
    let t = now_ms();
    let mut leave = Command::new("ip");
    leave
        .args(["netns", "exec", &node.ns.name])
        .arg(bin.join("ferryd"))
        .arg("--config")
        .arg(&node.config)
        .arg("--leave");
    let out = sys::run_with(leave, None, Duration::from_secs(30))?;
    if !out.ok() {
        return Err(E2eError::setup(
            "perf cluster",
            format!("ferryd --leave: {}{}", out.stderr, out.stdout),
        ));
    }
    let gone = wait_logged(&others, &format!("route {block} removed"), 1, bound)?;
    f.leave_ms = gone.iter().map(|s| s - t).collect();

    // A node SIGKILLed: its block stays routed until its lease expires.
    let victim = n as usize - 1;
    let vblock = blocks[victim].clone();
    if let Some(mut p) = bed.nodes[victim].ferryd.take() {
        let t = now_ms();
        p.kill_now();
        let rest: Vec<&ClusterNode> = bed.nodes[..victim].iter().collect();
        let ttl_bound = Duration::from_secs(u64::from(opts.lease_ttl_s) * 3 + 10);
        let gone = wait_logged(&rest, &format!("route {vblock} removed"), 1, ttl_bound)?;
        f.dead_removed_ms = gone.iter().map(|s| s - t).collect();
    }
    Ok(f)
}

/// Measure every N; the report as Markdown.
pub fn run(opts: &Options) -> Result<String> {
    topo::check_ferry_bins(&opts.bin_dir)?;
    if let Some(&n) = opts.nodes.iter().find(|&&n| !(2..=MAX_NODES).contains(&n)) {
        return Err(E2eError::setup(
            "perf cluster",
            format!("{n} nodes: between 2 and {MAX_NODES}"),
        ));
    }
    let mut all = Vec::new();
    for &n in &opts.nodes {
        eprintln!("perf cluster: {n} nodes");
        let f = measure(n, opts)?;
        eprintln!("perf cluster: {n} nodes measured");
        all.push(f);
    }
    Ok(report(opts, &all))
}

fn pct(xs: &[f64], p: f64) -> String {
    stats::percentile(xs, p).map_or("–".into(), |v| format!("{v:.1}"))
}

fn mean(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        0.0
    } else {
        xs.iter().sum::<f64>() / xs.len() as f64
    }
}

fn max(xs: &[f64]) -> f64 {
    xs.iter().copied().fold(f64::NAN, f64::max)
}

/// "p50 / p99 / max" of latency samples.
fn spread(xs: &[f64]) -> String {
    format!("{} / {} / {:.1}", pct(xs, 50.0), pct(xs, 99.0), max(xs))
}

/// The rows of one N: (label, value).
fn rows_of(f: &Figures) -> Vec<(&'static str, String)> {
    let ms_to_s = |xs: &[f64]| xs.iter().map(|x| x / 1000.0).collect::<Vec<_>>();
    let dead = ms_to_s(&f.dead_removed_ms);
    vec![
        (
            "all started at once: last node holding a block (ms)",
            format!("{:.0}", f.claimed_ms),
        ),
        (
            "all started at once: every node routing every other block (ms)",
            format!("{:.0}", f.meshed_ms),
        ),
        (
            "etcd transactions until then (claims and their retries, first renewals)",
            format!("{:.0}", f.formation_txns),
        ),
        ("etcd puts /s (quiet)", format!("{:.2}", f.puts_s)),
        (
            "etcd lease renewals /s (expected N/(ttl/4))",
            format!("{:.2} ({:.2})", f.renewals_s, f.expected_renewals_s),
        ),
        (
            "etcd LeaseKeepAlive messages /s",
            format!("{:.2}", f.keepalive_msgs_s),
        ),
        ("etcd watchers", format!("{:.0}", f.watchers)),
        (
            "etcd client traffic in / out (KiB/s)",
            format!("{:.1} / {:.1}", f.etcd_rx_kib_s, f.etcd_tx_kib_s),
        ),
        (
            "etcd CPU (% of a core) / RSS (MiB) / db (KiB)",
            format!(
                "{:.1} / {:.0} / {:.0}",
                f.etcd_cpu_pct, f.etcd_rss_mib, f.etcd_db_kib
            ),
        ),
        (
            "ferryd CPU, mean / max (% of a core)",
            format!(
                "{:.2} / {:.2}",
                mean(&f.ferryd_cpu_pct),
                max(&f.ferryd_cpu_pct)
            ),
        ),
        (
            "ferryd RSS, mean / max (MiB)",
            format!(
                "{:.1} / {:.1}",
                mean(&f.ferryd_rss_mib),
                max(&f.ferryd_rss_mib)
            ),
        ),
        (
            "baseline: etcd put/delete round trip p50 / p99 / max (ms)",
            spread(&f.put_rtt_ms),
        ),
        (
            "record put → routed on a node, p50 / p99 / max (ms)",
            spread(&f.add_ms),
        ),
        (
            "record deleted → route removed on a node, p50 / p99 / max (ms)",
            spread(&f.del_ms),
        ),
        (
            "one more ferryd: its claim (ms)",
            format!("{:.0}", f.join_claim_ms),
        ),
        (
            "… its block routed on every node, p50 / p99 / max (ms)",
            spread(&f.join_routed_ms),
        ),
        (
            "`ferryd --leave` → removed on every node, p50 / p99 / max (ms)",
            spread(&f.leave_ms),
        ),
        (
            "SIGKILLed node → its block removed elsewhere, p50 / p99 / max (s)",
            spread(&dead),
        ),
    ]
}

/// The Markdown report: one column per N.
pub fn report(opts: &Options, all: &[Figures]) -> String {
    let per_n: Vec<Vec<(&str, String)>> = all.iter().map(rows_of).collect();
    let mut md = String::from("# perf cluster\n\n");
    let _ = writeln!(
        md,
        "One etcd 3.4 and N `ferryd` with `[cluster]` (VXLAN, `lease_ttl_s = {}`, renewal every ttl/4), each node a namespace on one fabric bridge; no ferry-dataplane (ferryd logs every route it would hand over, and the log's timestamps say when each node learned a change). Quiet window {} s; {} put/delete probes of a record per N. Everything runs on this machine's cores: the nodes compete with etcd for them.\n",
        opts.lease_ttl_s,
        opts.window.as_secs(),
        opts.probes
    );
    md.push_str("| figure |");
    for f in all {
        let _ = write!(md, " N = {} |", f.n);
    }
    md.push_str("\n|---|");
    md.push_str(&"---:|".repeat(all.len()));
    md.push('\n');
    for (i, (label, _)) in per_n.first().into_iter().flatten().enumerate() {
        let vs: Vec<&str> = per_n.iter().map(|rows| rows[i].1.as_str()).collect();
        let _ = writeln!(md, "| {label} | {} |", vs.join(" | "));
    }
    if let [a, .., b] = all {
        let per_peer =
            (mean(&b.ferryd_rss_mib) - mean(&a.ferryd_rss_mib)) / f64::from(b.n - a.n) * 1024.0;
        let etcd_per_node = (b.etcd_rss_mib - a.etcd_rss_mib) / f64::from(b.n - a.n) * 1024.0;
        let _ = writeln!(
            md,
            "\nferryd RSS per peer: {per_peer:.1} KiB (mean RSS difference between N = {} and N = {}); etcd RSS per node: {etcd_per_node:.0} KiB.",
            a.n, b.n
        );
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_times_are_epoch_milliseconds() {
        let l = "[2026-12-06T22:23:12.546Z INFO  ferryd] x";
        assert_eq!(log_time_ms(l), Some(1_796_595_792_546.0));
        assert_eq!(log_time_ms("[1970-01-01T00:00:00.001Z INFO"), Some(1.0));
        assert_eq!(
            log_time_ms("[2000-03-01T00:00:00.000Z"),
            Some(951_868_800_000.0)
        );
        assert_eq!(log_time_ms("no time here"), None);
        assert_eq!(log_time_ms("[2026-13-06T22:23:12.546Z"), None);
        let log = "[1970-01-01T00:00:01.000Z INFO  a] route 10.244.1.0/24 -> Node\n\
                   [1970-01-01T00:00:02.000Z INFO  a] other\n\
                   [1970-01-01T00:00:03.500Z INFO  a] route 10.244.1.0/24 -> Node\n";
        assert_eq!(
            times_of(log, "route 10.244.1.0/24 -> "),
            vec![1000.0, 3500.0]
        );
    }

    #[test]
    fn metrics_sum_over_labels() {
        let text = "# HELP x\nx_total 3\nx_total_bucket 9\ny{a=\"1\"} 2\ny{a=\"2\"} 5.5\n";
        assert_eq!(metric(text, "x_total"), 3.0);
        assert_eq!(metric(text, "y"), 7.5);
        assert_eq!(metric(text, "z"), 0.0);
        let grpc = "grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Txn\"} 4\n\
                    grpc_server_handled_total{grpc_code=\"Unknown\",grpc_method=\"Txn\"} 1\n\
                    grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Range\"} 9\n";
        assert_eq!(grpc_count(grpc, "grpc_server_handled_total", "Txn"), 5.0);
    }

    #[test]
    fn base64_matches_known_strings() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(
            base64(b"/ferry/blocks/10.244.255.0-24"),
            "L2ZlcnJ5L2Jsb2Nrcy8xMC4yNDQuMjU1LjAtMjQ="
        );
    }

    #[test]
    fn a_node_config_names_its_address_and_the_datastore() {
        let c = node_config(Path::new("/tmp/x"), 7, 10);
        assert!(c.contains("node_address = \"10.72.0.7\""), "{c}");
        assert!(c.contains("node_name = \"n7\""), "{c}");
        assert!(
            c.contains("endpoints = [\"http://10.72.0.250:2379\"]"),
            "{c}"
        );
        assert!(c.contains("lease_ttl_s = 10"), "{c}");
        let held = "[2026-12-06T22:23:12.556Z INFO  ferryd::cluster::member] node n1 holds block 10.244.0.0/24 of 10.244.0.0/16 (lease 6a)";
        assert_eq!(held_block(held).as_deref(), Some("10.244.0.0/24"));
    }

    #[test]
    fn the_report_has_a_column_per_size() {
        let f = |n| Figures {
            n,
            ferryd_rss_mib: vec![10.0 + f64::from(n) / 100.0],
            ..Figures::default()
        };
        let md = report(&Options::default(), &[f(10), f(50)]);
        assert!(md.contains("| figure | N = 10 | N = 50 |"), "{md}");
        assert!(md.contains("ferryd RSS per peer: 10.2 KiB"), "{md}");
    }
}
