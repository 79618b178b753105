//! The Prometheus endpoint: `GET /metrics` in the text exposition format
//! 0.0.4, served by ferryd on `metrics_listen`.
//!
//! Each scrape asks the dataplane for its `Stats` over the table API (the
//! same read-only request `ferryctl stats` makes) and reads the store for
//! endpoints and address usage, so nothing is cached and nothing is counted
//! twice; the pod-API server counts the requests it answers
//! ([`RequestCounters`]). [`render`] is a pure function of a [`Snapshot`];
//! the HTTP side is a deliberately small HTTP/1.1 server: one request per
//! connection, the request head bounded in size and time, anything it does
//! not understand answered with a 4xx (or 505) status and the connection
//! closed.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ferry_api::table::Stats;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::agent::Agent;
use crate::ipam::Pools;

/// Largest request head (request line + headers) accepted.
pub const MAX_HEAD: usize = 8192;
/// How long a client may take to send its request head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// How long writing the answer may take.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// After answering, how long and how much of the client's leftover input
/// is read and discarded before closing.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);
const DRAIN_MAX: usize = 64 * 1024;
/// Connections served at once; more wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 16;
/// The exposition format's content type.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("bind metrics listener on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Pod-API requests served, by command and the CNI error code answered
/// (0: success). Written by the pod-API server's tasks, once per request:
/// far from any hot path, so a mutex is fine.
#[derive(Debug, Default)]
pub struct RequestCounters {
    counts: std::sync::Mutex<std::collections::BTreeMap<(String, u32), u64>>,
}

impl RequestCounters {
    pub fn record(&self, command: &str, code: u32) {
        let mut m = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *m.entry((command.to_string(), code)).or_default() += 1;
    }

    /// (command, code, count), sorted.
    pub fn snapshot(&self) -> Vec<(String, u32, u64)> {
        let m = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        m.iter().map(|((c, k), n)| (c.clone(), *k, *n)).collect()
    }
}

/// Address usage of one node pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolUsage {
    /// The pool's subnet, e.g. `10.88.0.0/24`.
    pub pool: String,
    /// Addresses the pool can hand out.
    pub size: u64,
    /// Addresses allocated from it.
    pub allocated: u64,
}

/// Everything one scrape reports.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// The dataplane's counters, or why they could not be read.
    pub dataplane: Result<Stats, String>,
    /// Whether ferryd's table-API client is connected to the dataplane.
    pub dataplane_connected: bool,
    /// Ready endpoints in ferryd's store (`None`: the store could not be read).
    pub endpoints: Option<u64>,
    /// Of those, the ones whose pod is gone (kept until DEL or GC).
    pub stale_endpoints: u64,
    /// Whether the dataplane lacks its host port (the node cannot reach
    /// its pods).
    pub host_port_missing: bool,
    /// Per node pool (empty when the store could not be read).
    pub pools: Vec<PoolUsage>,
    /// Pod-API requests: (command, CNI code answered, count).
    pub requests: Vec<(String, u32, u64)>,
}

/// A label value escaped as the exposition format wants (`\\`, `\"`, `\n`).
fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Writes one metric family: the HELP and TYPE lines, then its samples
/// (a family's samples must be contiguous).
struct Family<'a> {
    out: &'a mut String,
    name: &'static str,
}

impl<'a> Family<'a> {
    fn new(out: &'a mut String, name: &'static str, kind: &str, help: &str) -> Self {
        // Writing to a String cannot fail.
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        Family { out, name }
    }

    fn sample(&mut self, labels: &[(&str, &str)], value: u64) {
        self.out.push_str(self.name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }
}

/// Every reason the dataplane counts, at 0 when not seen yet (so a
/// series exists before its first drop and `rate()` sees that drop), plus
/// any reason in `drops` the list does not name.
fn with_zeros<'a>(
    drops: &'a std::collections::BTreeMap<String, u64>,
    reasons: &'a [String],
) -> impl Iterator<Item = (&'a str, u64)> + 'a {
    let known = reasons
        .iter()
        .map(|r| (r.as_str(), drops.get(r).copied().unwrap_or(0)));
    let extra = drops
        .iter()
        .filter(|(r, _)| !reasons.contains(r))
        .map(|(r, n)| (r.as_str(), *n));
    known.chain(extra)
}

/// The exposition text of one scrape.
pub fn render(s: &Snapshot) -> String {
    let mut out = String::new();
    let stats = s.dataplane.as_ref().ok();

    let mut f = Family::new(
        &mut out,
        "ferry_build_info",
        "gauge",
        "ferryd's version (always 1).",
    );
    f.sample(&[("version", env!("CARGO_PKG_VERSION"))], 1);
    let mut f = Family::new(
        &mut out,
        "ferry_pod_requests_total",
        "counter",
        "Pod-API requests (CNI invocations) ferryd answered, by command and CNI error code (0: success).",
    );
    for (command, code, n) in &s.requests {
        f.sample(&[("command", command), ("code", &code.to_string())], *n);
    }
    let mut f = Family::new(
        &mut out,
        "ferry_dataplane_up",
        "gauge",
        "1 if this scrape read the dataplane's counters over the table API, else 0.",
    );
    f.sample(&[], u64::from(stats.is_some()));
    let mut f = Family::new(
        &mut out,
        "ferry_dataplane_connected",
        "gauge",
        "1 if ferryd's table-API client is connected to ferry-dataplane, else 0.",
    );
    f.sample(&[], u64::from(s.dataplane_connected));

    if let Some(n) = s.endpoints {
        let mut f = Family::new(
            &mut out,
            "ferry_endpoints",
            "gauge",
            "Pod endpoints ready in ferryd's store.",
        );
        f.sample(&[], n);
    }
    let mut f = Family::new(
        &mut out,
        "ferry_endpoints_stale",
        "gauge",
        "Ready endpoints whose pod is gone (namespace or link missing): kept, with their address, until DEL or GC, and not in the dataplane.",
    );
    f.sample(&[], s.stale_endpoints);
    let mut f = Family::new(
        &mut out,
        "ferry_host_port_missing",
        "gauge",
        "1 if the dataplane has no host port (the node cannot reach its pods), else 0.",
    );
    f.sample(&[], u64::from(s.host_port_missing));
    if !s.pools.is_empty() {
        let mut f = Family::new(
            &mut out,
            "ferry_ipam_addresses_free",
            "gauge",
            "Addresses a node pool can still hand out.",
        );
        for p in &s.pools {
            f.sample(&[("pool", &p.pool)], p.size.saturating_sub(p.allocated));
        }
        let mut f = Family::new(
            &mut out,
            "ferry_ipam_addresses_allocated",
            "gauge",
            "Addresses allocated from a node pool.",
        );
        for p in &s.pools {
            f.sample(&[("pool", &p.pool)], p.allocated);
        }
        let mut f = Family::new(
            &mut out,
            "ferry_ipam_addresses_size",
            "gauge",
            "Addresses a node pool can hand out in all (gateway excluded).",
        );
        for p in &s.pools {
            f.sample(&[("pool", &p.pool)], p.size);
        }
    }

    let Some(stats) = stats else {
        return out;
    };
    let mut f = Family::new(
        &mut out,
        "ferry_table_generation",
        "gauge",
        "Generation of the dataplane's forwarding tables (bumped by every applied update).",
    );
    f.sample(&[], stats.generation);

    type PortField = fn(&ferry_api::table::PortStats) -> u64;
    let port_families: [(&'static str, &str, PortField); 4] = [
        (
            "ferry_port_rx_frames_total",
            "Frames received on a dataplane port.",
            |p| p.rx_frames,
        ),
        (
            "ferry_port_rx_bytes_total",
            "Bytes received on a dataplane port.",
            |p| p.rx_bytes,
        ),
        (
            "ferry_port_tx_frames_total",
            "Frames transmitted on a dataplane port.",
            |p| p.tx_frames,
        ),
        (
            "ferry_port_tx_bytes_total",
            "Bytes transmitted on a dataplane port.",
            |p| p.tx_bytes,
        ),
    ];
    for (name, help, get) in port_families {
        let mut f = Family::new(&mut out, name, "counter", help);
        for p in &stats.ports {
            f.sample(&[("port", &p.name), ("endpoint", &p.endpoint)], get(p));
        }
    }
    let mut f = Family::new(
        &mut out,
        "ferry_port_drops_total",
        "counter",
        "Frames received on a dataplane port and dropped, by drop reason.",
    );
    for p in &stats.ports {
        for (reason, n) in with_zeros(&p.drops, &stats.drop_reasons) {
            f.sample(
                &[
                    ("port", &p.name),
                    ("endpoint", &p.endpoint),
                    ("reason", reason),
                ],
                n,
            );
        }
    }
    let mut f = Family::new(
        &mut out,
        "ferry_port_xsk_total",
        "counter",
        "The kernel's counters of a port's AF_XDP sockets (XDP_STATISTICS), summed over workers, read by each worker about once a second; rx_dropped, rx_invalid_descs, rx_ring_full and tx_invalid_descs count lost frames, the others ring misses. Absent for tap ports.",
    );
    for p in &stats.ports {
        for (counter, n) in &p.kernel {
            f.sample(
                &[
                    ("port", &p.name),
                    ("endpoint", &p.endpoint),
                    ("counter", counter),
                ],
                *n,
            );
        }
    }
    let mut f = Family::new(
        &mut out,
        "ferry_port_attached",
        "gauge",
        "1 if the dataplane has the port open (veth: XDP program attached, AF_XDP sockets bound; tap: queues attached).",
    );
    for p in &stats.ports {
        f.sample(
            &[("port", &p.name), ("endpoint", &p.endpoint)],
            u64::from(p.attached),
        );
    }

    type WorkerField = fn(&ferry_api::table::WorkerStats) -> u64;
    let worker_families: [(&'static str, &str, WorkerField); 4] = [
        (
            "ferry_worker_busy_polls_total",
            "Worker loop passes that moved at least one frame.",
            |w| w.busy_polls,
        ),
        (
            "ferry_worker_idle_polls_total",
            "Worker loop passes that found nothing to do and slept in poll(2).",
            |w| w.idle_polls,
        ),
        (
            "ferry_worker_rx_frames_total",
            "Frames a worker received, all ports.",
            |w| w.rx_frames,
        ),
        (
            "ferry_worker_tx_frames_total",
            "Frames a worker transmitted, all ports.",
            |w| w.tx_frames,
        ),
    ];
    for (name, help, get) in worker_families {
        let mut f = Family::new(&mut out, name, "counter", help);
        for w in &stats.workers {
            f.sample(&[("worker", &w.worker.to_string())], get(w));
        }
    }
    let mut f = Family::new(
        &mut out,
        "ferry_worker_drops_total",
        "counter",
        "Frames a worker dropped, by drop reason.",
    );
    for w in &stats.workers {
        let worker = w.worker.to_string();
        for (reason, n) in with_zeros(&w.drops, &stats.drop_reasons) {
            f.sample(&[("worker", &worker), ("reason", reason)], n);
        }
    }
    out
}

/// Collect a [`Snapshot`]: the dataplane's Stats and the store's counts,
/// both read off the async workers.
pub async fn gather(agent: &Agent, requests: &RequestCounters) -> Snapshot {
    let socket = agent.config().dataplane_socket.clone();
    let dataplane =
        match tokio::task::spawn_blocking(move || ferry_api::client::stats(&socket)).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(e) => Err(format!("stats task failed: {e}")),
        };
    let cfg = agent.config();
    let pools = Pools::for_request(&Default::default(), &cfg.pod_cidrs, cfg.gateway)
        .map(|p| p.0)
        .unwrap_or_default();
    let store = Arc::clone(agent.store());
    let counts = tokio::task::spawn_blocking(move || {
        let endpoints = store.ready()?.len() as u64;
        let mut usage = Vec::with_capacity(pools.len());
        for pool in pools {
            let allocated = store.allocated_in(&Pools(vec![pool.clone()]))?;
            usage.push(PoolUsage {
                pool: pool.subnet.to_string(),
                size: pool.size(),
                allocated,
            });
        }
        Ok::<_, crate::store::StoreError>((endpoints, usage))
    })
    .await;
    let (endpoints, pools) = match counts {
        Ok(Ok((n, usage))) => (Some(n), usage),
        Ok(Err(e)) => {
            log::warn!("metrics: reading the store: {e}");
            (None, Vec::new())
        }
        Err(e) => {
            log::warn!("metrics: store task failed: {e}");
            (None, Vec::new())
        }
    };
    if let Err(e) = &dataplane {
        log::debug!("metrics: dataplane stats: {e}");
    }
    Snapshot {
        dataplane,
        dataplane_connected: agent.dataplane().connected(),
        endpoints,
        stale_endpoints: agent.dataplane().stale().len() as u64,
        host_port_missing: agent.dataplane().host_port_problem().is_some(),
        pools,
        requests: requests.snapshot(),
    }
}

/// What a request head asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `GET /metrics` (`head`: `HEAD /metrics`, headers only).
    Metrics {
        head: bool,
    },
    NotFound,
    MethodNotAllowed,
    BadRequest,
    VersionNotSupported,
}

/// Route a request head (everything up to the blank line). Only the request
/// line matters; headers are ignored.
pub fn route(head: &[u8]) -> Route {
    let line_end = head.iter().position(|b| *b == b'\n').unwrap_or(head.len());
    let Ok(line) = std::str::from_utf8(&head[..line_end]) else {
        return Route::BadRequest;
    };
    let line = line.strip_suffix('\r').unwrap_or(line);
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Route::BadRequest;
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Route::BadRequest;
    }
    if !target.starts_with('/') {
        return Route::BadRequest;
    }
    match version {
        "HTTP/1.0" | "HTTP/1.1" => {}
        v if v.starts_with("HTTP/") => return Route::VersionNotSupported,
        _ => return Route::BadRequest,
    }
    let path = target.split(['?', '#']).next().unwrap_or(target);
    if path != "/metrics" {
        return Route::NotFound;
    }
    match method {
        "GET" => Route::Metrics { head: false },
        "HEAD" => Route::Metrics { head: true },
        _ => Route::MethodNotAllowed,
    }
}

/// An answer with `Connection: close`.
pub fn response(status: &str, content_type: &str, body: &str, head_only: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if status.starts_with("405") {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    if !head_only {
        bytes.extend_from_slice(body.as_bytes());
    }
    bytes
}

/// How reading a request head ended.
#[derive(Debug, PartialEq, Eq)]
enum Head {
    Complete(usize),
    TooLarge,
    Closed,
}

fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
        .or_else(|| buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2))
}

async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<Head> {
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = head_end(buf) {
            return Ok(Head::Complete(end));
        }
        if buf.len() > MAX_HEAD {
            return Ok(Head::TooLarge);
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(Head::Closed);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn plain(status: &str, body: &str) -> Vec<u8> {
    response(status, "text/plain; charset=utf-8", body, false)
}

async fn serve_one(
    mut stream: TcpStream,
    agent: &Agent,
    requests: &RequestCounters,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let answer = match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut stream, &mut buf)).await {
        Err(_) => plain(
            "408 Request Timeout",
            "no request within the time allowed\n",
        ),
        Ok(Err(e)) => return Err(e),
        Ok(Ok(Head::Closed)) => return Ok(()),
        Ok(Ok(Head::TooLarge)) => plain(
            "431 Request Header Fields Too Large",
            "request head too large\n",
        ),
        Ok(Ok(Head::Complete(end))) => match route(&buf[..end]) {
            Route::Metrics { head } => {
                let body = render(&gather(agent, requests).await);
                response("200 OK", CONTENT_TYPE, &body, head)
            }
            Route::NotFound => plain("404 Not Found", "not found; metrics are at /metrics\n"),
            Route::MethodNotAllowed => plain("405 Method Not Allowed", "use GET /metrics\n"),
            Route::BadRequest => plain("400 Bad Request", "malformed HTTP request\n"),
            Route::VersionNotSupported => plain(
                "505 HTTP Version Not Supported",
                "only HTTP/1.0 and HTTP/1.1\n",
            ),
        },
    };
    tokio::time::timeout(WRITE_TIMEOUT, async {
        stream.write_all(&answer).await?;
        stream.shutdown().await
    })
    .await
    .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))?;
    // Closing with unread input makes the kernel send a reset, which can
    // destroy the answer before the client reads it (a refused oversized
    // head): read and discard what the client still sends, bounded.
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, async {
        let mut sink = [0u8; 4096];
        let mut left = DRAIN_MAX;
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
    Ok(())
}

/// Bind the metrics listener.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, MetricsError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })
}

/// Accept connections forever, at most [`MAX_CONNECTIONS`] at once.
pub async fn serve(listener: TcpListener, agent: Arc<Agent>, requests: Arc<RequestCounters>) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok((stream, peer)) => {
                let agent = Arc::clone(&agent);
                let requests = Arc::clone(&requests);
                tokio::spawn(async move {
                    if let Err(e) = serve_one(stream, &agent, &requests).await {
                        log::debug!("metrics connection from {peer}: {e}");
                    }
                    drop(permit);
                });
            }
            Err(e) => {
                log::warn!("accept on metrics listener: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use ferry_api::table::{PortStats, WorkerStats};

    use super::*;

    fn snapshot() -> Snapshot {
        Snapshot {
            dataplane: Ok(Stats {
                generation: 7,
                ports: vec![
                    PortStats {
                        name: "ferry0dp".into(),
                        endpoint: "host".into(),
                        attached: true,
                        rx_frames: 10,
                        rx_bytes: 1000,
                        tx_frames: 4,
                        tx_bytes: 400,
                        drops: BTreeMap::from([("no_endpoint".to_string(), 2)]),
                        kernel: BTreeMap::from([
                            ("rx_ring_full".to_string(), 3),
                            ("rx_dropped".to_string(), 0),
                        ]),
                    },
                    PortStats {
                        name: "fy0123456789a".into(),
                        endpoint: "c\"1/eth0".into(),
                        attached: false,
                        ..Default::default()
                    },
                ],
                workers: vec![WorkerStats {
                    worker: 0,
                    cpu: Some(1),
                    busy_polls: 5,
                    idle_polls: 9,
                    rx_frames: 10,
                    tx_frames: 4,
                    drops: BTreeMap::from([("no_endpoint".to_string(), 2)]),
                }],
                drop_reasons: vec!["no_endpoint".into(), "runt".into()],
            }),
            dataplane_connected: true,
            endpoints: Some(1),
            stale_endpoints: 1,
            host_port_missing: false,
            pools: vec![PoolUsage {
                pool: "10.88.0.0/24".into(),
                size: 253,
                allocated: 3,
            }],
            requests: vec![("ADD".into(), 0, 3), ("ADD".into(), 11, 1)],
        }
    }

    #[test]
    fn exposition_has_help_type_and_samples() {
        let text = render(&snapshot());
        for line in [
            "ferry_dataplane_up 1",
            "ferry_dataplane_connected 1",
            "ferry_pod_requests_total{command=\"ADD\",code=\"0\"} 3",
            "ferry_pod_requests_total{command=\"ADD\",code=\"11\"} 1",
            "ferry_endpoints 1",
            "ferry_endpoints_stale 1",
            "ferry_host_port_missing 0",
            "ferry_ipam_addresses_free{pool=\"10.88.0.0/24\"} 250",
            "ferry_ipam_addresses_allocated{pool=\"10.88.0.0/24\"} 3",
            "ferry_table_generation 7",
            "ferry_port_rx_frames_total{port=\"ferry0dp\",endpoint=\"host\"} 10",
            "ferry_port_tx_bytes_total{port=\"ferry0dp\",endpoint=\"host\"} 400",
            "ferry_port_drops_total{port=\"ferry0dp\",endpoint=\"host\",reason=\"no_endpoint\"} 2",
            "ferry_port_attached{port=\"fy0123456789a\",endpoint=\"c\\\"1/eth0\"} 0",
            "ferry_port_xsk_total{port=\"ferry0dp\",endpoint=\"host\",counter=\"rx_ring_full\"} 3",
            "ferry_port_xsk_total{port=\"ferry0dp\",endpoint=\"host\",counter=\"rx_dropped\"} 0",
            "ferry_worker_busy_polls_total{worker=\"0\"} 5",
            "ferry_worker_idle_polls_total{worker=\"0\"} 9",
            "ferry_worker_drops_total{worker=\"0\",reason=\"no_endpoint\"} 2",
            // Reasons not seen yet are there, at zero.
            "ferry_port_drops_total{port=\"ferry0dp\",endpoint=\"host\",reason=\"runt\"} 0",
            "ferry_port_drops_total{port=\"fy0123456789a\",endpoint=\"c\\\"1/eth0\",reason=\"no_endpoint\"} 0",
            "ferry_worker_drops_total{worker=\"0\",reason=\"runt\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?}:\n{text}");
        }
        // Every sample belongs to the family announced just before it, and
        // every family has HELP and TYPE once.
        let mut current = "";
        let mut seen = std::collections::BTreeSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(["counter", "gauge"].contains(&kind), "{line}");
                assert!(seen.insert(name.to_string()), "family {name} twice");
                current = name;
                assert!(
                    text.contains(&format!("# HELP {name} ")),
                    "no HELP for {name}"
                );
                if kind == "counter" {
                    assert!(name.ends_with("_total"), "{name}");
                }
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                assert_eq!(name, current, "sample outside its family: {line}");
                let value = line.rsplit(' ').next().unwrap();
                assert!(value.parse::<u64>().is_ok(), "{line}");
            }
        }
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn reasons_outside_the_list_are_still_reported() {
        let drops = BTreeMap::from([("a".to_string(), 1), ("new".to_string(), 4)]);
        let reasons = vec!["a".to_string(), "b".to_string()];
        let got: Vec<_> = with_zeros(&drops, &reasons).collect();
        assert_eq!(got, vec![("a", 1), ("b", 0), ("new", 4)]);
        // An old dataplane sends no list: what it counted is all there is.
        let got: Vec<_> = with_zeros(&drops, &[]).collect();
        assert_eq!(got, vec![("a", 1), ("new", 4)]);
    }

    #[test]
    fn dataplane_down_still_reports_ferryd_side() {
        let mut s = snapshot();
        s.dataplane = Err("cannot reach ferry-dataplane".into());
        s.dataplane_connected = false;
        let text = render(&s);
        assert!(text.contains("\nferry_dataplane_up 0\n"), "{text}");
        assert!(text.contains("ferry_dataplane_connected 0"), "{text}");
        assert!(text.contains("ferry_endpoints 1"), "{text}");
        assert!(!text.contains("ferry_port_"), "{text}");
    }

    #[test]
    fn requests_are_routed() {
        let cases: &[(&[u8], Route)] = &[
            (
                b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
                Route::Metrics { head: false },
            ),
            (
                b"GET /metrics?x=1 HTTP/1.0\r\n\r\n",
                Route::Metrics { head: false },
            ),
            (b"HEAD /metrics HTTP/1.1\n\n", Route::Metrics { head: true }),
            (b"GET / HTTP/1.1\r\n\r\n", Route::NotFound),
            (b"GET /metricsx HTTP/1.1\r\n\r\n", Route::NotFound),
            (b"POST /metrics HTTP/1.1\r\n\r\n", Route::MethodNotAllowed),
            (b"GET /metrics HTTP/2.0\r\n\r\n", Route::VersionNotSupported),
            (b"GET /metrics\r\n\r\n", Route::BadRequest),
            (b"GET  /metrics HTTP/1.1\r\n\r\n", Route::BadRequest),
            (b"get /metrics HTTP/1.1\r\n\r\n", Route::BadRequest),
            (b"GET metrics HTTP/1.1\r\n\r\n", Route::BadRequest),
            (b"GET /metrics FTP/1.1\r\n\r\n", Route::BadRequest),
            (b"\xff\xfe garbage\r\n\r\n", Route::BadRequest),
            (b"\r\n\r\n", Route::BadRequest),
            (b"", Route::BadRequest),
        ];
        for (head, want) in cases {
            assert_eq!(route(head), *want, "{:?}", String::from_utf8_lossy(head));
        }
    }

    #[test]
    fn head_end_finds_the_blank_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nbody"), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\n"), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n"), None);
    }

    #[test]
    fn responses_carry_length_and_close() {
        let r = String::from_utf8(response("200 OK", CONTENT_TYPE, "abc\n", false)).unwrap();
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(r.contains("Content-Length: 4\r\n"), "{r}");
        assert!(r.contains("Connection: close\r\n"), "{r}");
        assert!(r.ends_with("\r\n\r\nabc\n"), "{r}");
        let h = String::from_utf8(response("200 OK", CONTENT_TYPE, "abc\n", true)).unwrap();
        assert!(
            h.ends_with("Content-Length: 4\r\nConnection: close\r\n\r\n"),
            "{h}"
        );
        let m = String::from_utf8(plain("405 Method Not Allowed", "x")).unwrap();
        assert!(m.contains("Allow: GET, HEAD\r\n"), "{m}");
    }

    #[test]
    fn request_counters_count_by_command_and_code() {
        let c = RequestCounters::default();
        c.record("DEL", 0);
        c.record("ADD", 0);
        c.record("ADD", 0);
        c.record("ADD", 101);
        assert_eq!(
            c.snapshot(),
            vec![
                ("ADD".to_string(), 0, 2),
                ("ADD".to_string(), 101, 1),
                ("DEL".to_string(), 0, 1)
            ]
        );
    }

    #[tokio::test]
    async fn a_taken_address_is_a_clear_bind_error() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let e = bind(addr).await.unwrap_err();
        let text = e.to_string();
        assert!(
            text.starts_with(&format!("bind metrics listener on {addr}: ")),
            "{text}"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
    }
}
