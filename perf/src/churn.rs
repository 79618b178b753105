//! `perf churn`: a soak run as a benchmark, not a test. One ferry node (the
//! e2e harness's topology: the real ferry-dataplane and ferryd in a node
//! namespace, pods made by the real `ferry` plugin) keeps about `pods` veth
//! and tap pods alive while pods are ADDed and DELed as a runtime does, light
//! traffic flows between live pods, and ferryd and ferry-dataplane are
//! SIGKILLed and restarted at random moments, sometimes with an ADD or DEL in
//! flight. Pod namespaces are sometimes deleted behind ferry's back before
//! their DEL.
//!
//! Invariants checked as it goes and at the end (every violation is listed;
//! any makes the command exit 2):
//! - an ADD that succeeded ("acknowledged") leaves a pod reachable from the
//!   node and from another pod once the daemons are back (bounded wait);
//! - an ADD that failed is DELed, as kubelet does, and leaves nothing: no
//!   interface in the pod namespace, no endpoint, no address in the store;
//! - a DEL (sent once with CNI_NETNS, sometimes again without) succeeds,
//!   after retries while a daemon is down, and leaves the pod namespace empty;
//! - ferryd's store holds exactly the pods not yet DELed, the dataplane's
//!   endpoints are the live ones, the node holds one `fy*` veth per live veth
//!   pod, each with an XDP program, and nothing else carries one but the
//!   host port;
//! - a pod whose namespace vanished is reported stale after the next
//!   reconnect, and its DEL cleans it;
//! - at the end, after every DEL and a graceful stop: an empty store, no
//!   endpoint, no `fy*`/`ft*` link, no XDP program, no namespace of the run
//!   left, and the daemons' open fds back to their starting count.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

use crate::e2e::error::{E2eError, Result};
use crate::e2e::sys::{self, Netns};
use crate::e2e::topo::{self, CniCall, Daemon, Topology};
use crate::e2e::{parse, stats};

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Length of the churn phase (the final DEL and checks come after it).
    pub minutes: f64,
    /// Target number of live pods.
    pub pods: usize,
    /// Seed of the random choices; `None`: from the clock (printed either way).
    pub seed: Option<u64>,
    /// Seconds between kills, drawn uniformly from this range (shrunk for
    /// short runs so that a few kills still happen).
    pub kill_every: (f64, f64),
    /// Share of pods made with `"attachment": "tap"`.
    pub tap_share: f64,
    /// ferry-dataplane workers.
    pub workers: u32,
    /// Directory of ferry's binaries.
    pub bin_dir: PathBuf,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            minutes: 10.0,
            pods: 8,
            seed: None,
            kill_every: (10.0, 40.0),
            tap_share: 0.4,
            workers: 1,
            bin_dir: topo::default_bin_dir(),
        }
    }
}

/// How long the daemons get to be ready again after a restart, and the
/// pods to answer after that.
const READY_WITHIN: Duration = Duration::from_secs(30);
const REACHABLE_WITHIN: Duration = Duration::from_secs(15);
/// How long the kernel and the daemons get to converge on the expected
/// links and tables after an operation (a vanished namespace is torn down
/// by the kernel asynchronously).
const CONVERGE_WITHIN: Duration = Duration::from_secs(5);
/// DEL retries (a runtime retries until DEL succeeds), 0.5 s apart.
const DEL_TRIES: u32 = 60;
/// More open fds at the end than at the start that still count as equal.
const FD_SLACK: usize = 4;

/// splitmix64: small, seedable, good enough to pick events.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.unit() * n as f64) as usize % n.max(1)
    }
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
    pub fn secs(&mut self, lo: f64, hi: f64) -> Duration {
        Duration::from_secs_f64(lo + (hi - lo) * self.unit())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attach {
    Veth,
    Tap,
}

impl Attach {
    fn name(self) -> &'static str {
        match self {
            Attach::Veth => "veth",
            Attach::Tap => "tap",
        }
    }
}

/// Whether a pod's namespace was deleted behind ferry's back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Vanish {
    No,
    /// Gone, not yet seen in STATUS's stale list (no reconnect since).
    Unseen,
    /// Gone and reported stale: to be DELed.
    SeenStale,
}

#[derive(Debug)]
struct Pod {
    /// `None` once vanished (the guard deleted it).
    ns: Option<Netns>,
    ns_path: String,
    container: String,
    ip: Ipv4Addr,
    attach: Attach,
    vanish: Vanish,
}

impl Pod {
    fn endpoint(&self) -> String {
        format!("{}/eth0", self.container)
    }
    fn live(&self) -> bool {
        self.vanish == Vanish::No
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Add,
    Del,
}

/// The counts of the summary table.
#[derive(Debug, Default)]
struct Counts {
    adds_ok: u64,
    adds_failed: u64,
    adds_ok_tap: u64,
    dels: u64,
    del_retries: u64,
    second_dels: u64,
    kills: BTreeMap<Daemon, u64>,
    /// Kills that came while the ADD or DEL started with them was still running.
    kills_in_flight: u64,
    /// Kills meant to land during an ADD or DEL that had already returned.
    kills_after_op: u64,
    restarts_ready_ms: Vec<f64>,
    reachable_checks: u64,
    vanished: u64,
    vanished_seen_stale: u64,
    ping_sent: u64,
    ping_lost: u64,
    checks: u64,
    /// State-check problems seen again after they were first listed.
    repeated_problems: u64,
}

/// What the run ended with.
#[derive(Debug)]
pub struct Outcome {
    pub summary: String,
    pub violations: Vec<String>,
}

/// The node's host port, dataplane end: the one link besides the pods'
/// veths that carries an XDP program.
const HOST_PORT_DP: &str = "ferry0dp";

/// A violation is a leak (something left behind) or a broken promise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind2 {
    Leak,
    Broken,
}

/// An ADD or DEL to run, inline or while a daemon is being killed.
#[derive(Debug)]
enum Job {
    Add {
        ns: Netns,
        container: String,
        attach: Attach,
    },
    Del {
        pod: Pod,
    },
}

struct Churn {
    topo: Topology,
    veth: CniCall,
    tap: CniCall,
    opts: Options,
    rng: Rng,
    pods: Vec<Pod>,
    next_id: u64,
    counts: Counts,
    /// Moving average of an ADD's or DEL's duration, seconds.
    op_secs: f64,
    violations: Vec<(Kind2, String)>,
    /// Problems of the state checks already listed as violations.
    seen_problems: BTreeSet<String>,
    started: Instant,
}

impl Churn {
    fn log(&self, msg: impl AsRef<str>) {
        eprintln!(
            "churn {:7.1}s {}",
            self.started.elapsed().as_secs_f64(),
            msg.as_ref()
        );
    }

    fn violation(&mut self, kind: Kind2, msg: String) {
        self.log(format!("VIOLATION: {msg}"));
        self.violations.push((kind, msg));
    }

    fn plugin(&self, a: Attach) -> CniCall {
        match a {
            Attach::Veth => self.veth.clone(),
            Attach::Tap => self.tap.clone(),
        }
    }

    /// ADD below half the target, DEL at the target, either in between.
    /// Pods whose vanishing was not yet reported stale are not DELed.
    fn choose_op(&mut self) -> Op {
        let deletable = self.deletable().len();
        let n = self.pods.len();
        if deletable == 0 || n < self.opts.pods / 2 {
            Op::Add
        } else if n >= self.opts.pods || self.rng.chance(0.5) {
            Op::Del
        } else {
            Op::Add
        }
    }

    fn deletable(&self) -> Vec<usize> {
        (0..self.pods.len())
            .filter(|i| self.pods[*i].vanish != Vanish::Unseen)
            .collect()
    }

    fn prepare(&mut self, op: Op) -> Result<Job> {
        let deletable = self.deletable();
        if op == Op::Del && !deletable.is_empty() {
            let i = deletable[self.rng.below(deletable.len())];
            return Ok(Job::Del {
                pod: self.pods.remove(i),
            });
        }
        let id = self.next_id;
        self.next_id += 1;
        let ns = Netns::create(&self.topo.ns_name(&format!("p{id}")))?;
        let attach = if self.rng.chance(self.opts.tap_share) {
            Attach::Tap
        } else {
            Attach::Veth
        };
        Ok(Job::Add {
            ns,
            container: self.topo.ns_name(&format!("c{id}")),
            attach,
        })
    }

    /// What the job sends: plugin, command, container, CNI_NETNS.
    fn call_of(&self, job: &Job) -> (CniCall, &'static str, String, String) {
        match job {
            Job::Add {
                ns,
                container,
                attach,
            } => (self.plugin(*attach), "ADD", container.clone(), ns.path()),
            Job::Del { pod } => (
                self.plugin(pod.attach),
                "DEL",
                pod.container.clone(),
                pod.ns_path.clone(),
            ),
        }
    }

    fn run_job(&mut self, job: Job) -> Result<()> {
        let (call, cmd, container, netns) = self.call_of(&job);
        let t = Instant::now();
        let r = call.invoke(cmd, &container, &netns);
        // A moving average of how long an ADD or DEL takes, so that a kill
        // meant to land during one does.
        self.op_secs = 0.8 * self.op_secs + 0.2 * t.elapsed().as_secs_f64();
        self.finish(job, r)
    }

    fn finish(&mut self, job: Job, r: Result<Value>) -> Result<()> {
        sys::check_interrupt()?;
        match job {
            Job::Add {
                ns,
                container,
                attach,
            } => {
                let ip = r.and_then(|v| topo::result_ip(&v));
                match ip {
                    Ok(ip) => {
                        self.counts.adds_ok += 1;
                        if attach == Attach::Tap {
                            self.counts.adds_ok_tap += 1;
                        }
                        self.pods.push(Pod {
                            ns_path: ns.path(),
                            ns: Some(ns),
                            container,
                            ip,
                            attach,
                            vanish: Vanish::No,
                        });
                    }
                    Err(e) => {
                        self.counts.adds_failed += 1;
                        self.log(format!("ADD {container} ({}) failed: {e}", attach.name()));
                        // What kubelet does after a failed ADD: DEL until it succeeds.
                        let call = self.plugin(attach);
                        self.del_until_ok(&call, &container, &ns.path())?;
                        self.check_ns_empty(&ns, &format!("failed ADD of {container}"))?;
                    }
                }
            }
            Job::Del { pod } => {
                if r.is_ok() {
                    self.counts.dels += 1;
                } else {
                    let call = self.plugin(pod.attach);
                    if self.del_until_ok(&call, &pod.container, &pod.ns_path)? {
                        self.counts.dels += 1;
                    }
                }
                if let Some(ns) = &pod.ns {
                    self.check_ns_empty(ns, &format!("DEL of {}", pod.container))?;
                }
                drop(pod.ns);
                // A runtime may DEL again once the namespace is gone.
                if self.rng.chance(0.5) {
                    self.counts.second_dels += 1;
                    let call = self.plugin(pod.attach);
                    if let Err(e) = call.invoke("DEL", &pod.container, "") {
                        sys::check_interrupt()?;
                        self.violation(
                            Kind2::Broken,
                            format!(
                                "second DEL of {} without CNI_NETNS failed: {e}",
                                pod.container
                            ),
                        );
                    }
                }
            }
        }
        Ok(())
    }

    /// DEL until it succeeds (bounded); false, with a violation, if it never did.
    fn del_until_ok(&mut self, call: &CniCall, container: &str, netns: &str) -> Result<bool> {
        let mut last = String::new();
        for _ in 0..DEL_TRIES {
            match call.invoke("DEL", container, netns) {
                Ok(_) => return Ok(true),
                Err(E2eError::Interrupted) => return Err(E2eError::Interrupted),
                Err(e) => last = e.to_string(),
            }
            self.counts.del_retries += 1;
            sys::sleep(Duration::from_millis(500))?;
        }
        self.violation(
            Kind2::Broken,
            format!("DEL of {container} never succeeded in {DEL_TRIES} tries: {last}"),
        );
        Ok(false)
    }

    /// After a DEL (or a failed ADD and its DEL) the pod namespace holds only lo.
    fn check_ns_empty(&mut self, ns: &Netns, what: &str) -> Result<()> {
        let links = link_names(&ns.name)?;
        let left: Vec<String> = links.into_iter().filter(|l| l != "lo").collect();
        if !left.is_empty() {
            self.violation(
                Kind2::Leak,
                format!("{what} left {} in the pod namespace", left.join(",")),
            );
        }
        Ok(())
    }

    /// Delete a live pod's namespace behind ferry's back.
    fn vanish(&mut self) {
        let live: Vec<usize> = (0..self.pods.len())
            .filter(|i| self.pods[*i].live())
            .collect();
        if live.is_empty() {
            return;
        }
        let i = live[self.rng.below(live.len())];
        let p = &mut self.pods[i];
        p.ns = None;
        p.vanish = Vanish::Unseen;
        let msg = format!(
            "deleted the namespace of {} ({}, {}) before its DEL",
            p.container,
            p.attach.name(),
            p.ip
        );
        self.counts.vanished += 1;
        self.log(msg);
    }

    /// A bounded ping; (transmitted, lost), or `None` if ping did not run.
    fn ping(ns: &str, ip: Ipv4Addr, count: u32, interval: &str) -> Option<(u64, u64)> {
        let mut cmd = std::process::Command::new("ip");
        cmd.args(["netns", "exec", ns, "ping", "-q", "-n", "-c"])
            .arg(count.to_string())
            .args(["-i", interval, "-W", "1"])
            .arg(ip.to_string());
        let out = sys::run_with(cmd, None, Duration::from_secs(15)).ok()?;
        let c = parse::ping_count(&out.stdout).ok()?;
        Some((c.transmitted, c.lost()))
    }

    /// Light traffic: a short ping between two random live pods.
    fn traffic(&mut self) {
        let live: Vec<usize> = (0..self.pods.len())
            .filter(|i| self.pods[*i].live())
            .collect();
        if live.len() < 2 {
            return;
        }
        let a = live[self.rng.below(live.len())];
        let b = loop {
            let b = live[self.rng.below(live.len())];
            if b != a {
                break b;
            }
        };
        let (Some(ns), ip) = (self.pods[a].ns.as_ref(), self.pods[b].ip) else {
            return;
        };
        match Self::ping(&ns.name, ip, 5, "0.05") {
            Some((sent, lost)) => {
                self.counts.ping_sent += sent;
                self.counts.ping_lost += lost;
                if lost > 0 {
                    let msg = format!(
                        "ping {} -> {}: {lost} of {sent} lost",
                        self.pods[a].container, self.pods[b].container
                    );
                    self.log(msg);
                }
            }
            None => self.log("ping did not run"),
        }
    }

    /// Every live pod answers the node and another live pod (bounded wait).
    fn verify_reachable(&mut self, after: &str) -> Result<()> {
        let live: Vec<usize> = (0..self.pods.len())
            .filter(|i| self.pods[*i].live())
            .collect();
        let node = self.topo.node.name.clone();
        for &i in &live {
            let ip = self.pods[i].ip;
            let peer = live
                .iter()
                .copied()
                .find(|j| *j != i)
                .and_then(|j| self.pods[j].ns.as_ref().map(|n| n.name.clone()));
            let answered =
                |from: &str| Self::ping(from, ip, 1, "0.2").is_some_and(|(s, l)| s == 1 && l == 0);
            let from_node = sys::wait_until(REACHABLE_WITHIN, || answered(&node))?;
            let from_pod = match &peer {
                Some(p) => sys::wait_until(REACHABLE_WITHIN, || answered(p))?,
                None => true,
            };
            if from_node && from_pod {
                self.counts.reachable_checks += 1;
            } else {
                let eps = self
                    .topo
                    .ferryctl_json(&["endpoints"])
                    .map(|(v, _)| v.to_string())
                    .unwrap_or_else(|e| e.to_string());
                let msg = format!(
                    "after {after}: acknowledged pod {} ({}, {ip}) not reachable within {} s (from the node: {from_node}, from pod {}: {from_pod}); endpoints: {eps}; ferryd log:\n{}\nferry-dataplane log:\n{}",
                    self.pods[i].container,
                    self.pods[i].attach.name(),
                    REACHABLE_WITHIN.as_secs(),
                    peer.as_deref().unwrap_or("-"),
                    self.topo.daemon_log_tail(Daemon::Ferryd),
                    self.topo.daemon_log_tail(Daemon::Dataplane),
                );
                self.violation(Kind2::Broken, msg);
            }
        }
        Ok(())
    }

    /// SIGKILL one daemon or both, sometimes with an ADD or DEL in flight,
    /// restart after a short random pause, then check everything came back.
    fn kill_event(&mut self) -> Result<()> {
        let mut which = match self.rng.below(5) {
            0 | 1 => vec![Daemon::Ferryd],
            2 | 3 => vec![Daemon::Dataplane],
            _ => vec![Daemon::Ferryd, Daemon::Dataplane],
        };
        let job = if self.rng.chance(0.5) {
            let op = self.choose_op();
            Some(self.prepare(op)?)
        } else {
            None
        };
        // Into the ADD or DEL: anywhere in its usual length (most of its
        // time is ferryd's and the dataplane's, so that is where it lands).
        let before = self.rng.secs(0.0, self.op_secs);
        let down = self.rng.secs(0.0, 0.3);
        let restart_order_flipped = self.rng.chance(0.5);
        let call = job.as_ref().map(|j| self.call_of(j));
        let names: Vec<&str> = which.iter().map(|d| d.name()).collect();
        self.log(format!(
            "SIGKILL {}{} ({} ms in), restart after {} ms",
            names.join(" + "),
            call.as_ref()
                .map(|(_, c, id, _)| format!(" with {c} {id} in flight"))
                .unwrap_or_default(),
            before.as_millis(),
            down.as_millis()
        ));
        let topo = &mut self.topo;
        let sent = Instant::now();
        let (result, killed_at) = thread::scope(|s| -> Result<_> {
            let h = call.map(|(call, cmd, c, ns)| {
                s.spawn(move || (call.invoke(cmd, &c, &ns), Instant::now()))
            });
            if h.is_some() {
                sys::sleep(before)?;
            }
            // The moment of the first SIGKILL (reaping a dataplane takes a
            // while: the kernel tears its sockets down).
            let killed_at = Instant::now();
            for d in &which {
                topo.kill_daemon(*d)?;
            }
            sys::sleep(down)?;
            if restart_order_flipped {
                which.reverse();
            }
            for d in &which {
                topo.start_daemon(*d)?;
            }
            let r = h.map(|h| {
                h.join().unwrap_or_else(|_| {
                    (
                        Err(E2eError::setup("churn", "CNI thread panicked")),
                        Instant::now(),
                    )
                })
            });
            Ok((r, killed_at))
        })?;
        for d in &which {
            *self.counts.kills.entry(*d).or_default() += 1;
        }
        let ready = sys::wait_until(READY_WITHIN, || self.topo.ferry_ready())?;
        if !ready {
            let msg = format!(
                "ferryd/ferry-dataplane not ready within {} s of a restart; ferryd log:\n{}\nferry-dataplane log:\n{}",
                READY_WITHIN.as_secs(),
                self.topo.daemon_log_tail(Daemon::Ferryd),
                self.topo.daemon_log_tail(Daemon::Dataplane)
            );
            self.violation(Kind2::Broken, msg.clone());
            return Err(E2eError::setup("churn", msg));
        }
        self.counts
            .restarts_ready_ms
            .push(killed_at.elapsed().as_secs_f64() * 1e3);
        if let (Some(job), Some((r, returned))) = (job, result) {
            // Counted only if the plugin had not returned yet when the kill came.
            let ms = |a: Instant, b: Instant| a.saturating_duration_since(b).as_millis();
            if returned > killed_at {
                self.counts.kills_in_flight += 1;
                self.log(format!(
                    "  the plugin returned {} ms after the kill ({} ms after it was started)",
                    ms(returned, killed_at),
                    ms(returned, sent)
                ));
            } else {
                self.counts.kills_after_op += 1;
                self.log(format!(
                    "  the plugin had returned {} ms before the kill ({} ms after it was started)",
                    ms(killed_at, returned),
                    ms(returned, sent)
                ));
            }
            self.finish(job, r)?;
        }
        let after = format!("killing {}", names.join(" + "));
        self.verify_reachable(&after)?;
        self.check_stale_seen(&after)?;
        // Vanished pods reported stale: their DEL must clean them.
        while let Some(i) = self.pods.iter().position(|p| p.vanish == Vanish::SeenStale) {
            let pod = self.pods.remove(i);
            self.run_job(Job::Del { pod })?;
        }
        Ok(())
    }

    /// Every pod vanished before the last reconnect is in STATUS's stale list.
    fn check_stale_seen(&mut self, after: &str) -> Result<()> {
        let stale = match self.topo.ferryctl_json(&["status"]) {
            Ok((v, _)) => stale_ids(&v),
            Err(e) => {
                self.violation(
                    Kind2::Broken,
                    format!("after {after}: ferryctl status: {e}"),
                );
                return Ok(());
            }
        };
        for i in 0..self.pods.len() {
            if self.pods[i].vanish != Vanish::Unseen {
                continue;
            }
            if stale.contains(&self.pods[i].endpoint()) {
                self.pods[i].vanish = Vanish::SeenStale;
                self.counts.vanished_seen_stale += 1;
            } else {
                let msg = format!(
                    "after {after}: pod {} whose namespace vanished is not reported stale (stale: {stale:?})",
                    self.pods[i].container
                );
                self.violation(Kind2::Broken, msg);
                // DEL it anyway, so it is not reported again at every kill.
                self.pods[i].vanish = Vanish::SeenStale;
            }
        }
        Ok(())
    }

    /// What differs from the expected state (empty: consistent).
    fn state_problems(&self) -> Vec<(Kind2, String)> {
        let mut out = Vec::new();
        let expect_in_use = self.pods.len();
        match self.topo.ferryctl_json(&["status"]) {
            Ok((v, code)) => {
                let msg = v["msg"].as_str().unwrap_or("");
                if code != Some(0) {
                    out.push((Kind2::Broken, format!("ferryd not ready: {msg}")));
                }
                match in_use(msg) {
                    Some(n) if n == expect_in_use => {}
                    n => out.push((
                        // More than the pods: a leak; fewer: an acknowledged pod lost its address.
                        if n.is_some_and(|n| n > expect_in_use) {
                            Kind2::Leak
                        } else {
                            Kind2::Broken
                        },
                        format!(
                            "ferryd's store holds {n:?} address(es), {expect_in_use} pod(s) not yet DELed ({msg})"
                        ),
                    )),
                }
                let vanished: BTreeSet<String> = self
                    .pods
                    .iter()
                    .filter(|p| !p.live())
                    .map(Pod::endpoint)
                    .collect();
                let extra: Vec<String> = stale_ids(&v).difference(&vanished).cloned().collect();
                if !extra.is_empty() {
                    out.push((
                        Kind2::Broken,
                        format!("stale attachments of no vanished pod: {extra:?}"),
                    ));
                }
            }
            Err(e) => out.push((Kind2::Broken, format!("ferryctl status: {e}"))),
        }
        match self.topo.ferryctl_json(&["endpoints"]) {
            Ok((v, _)) => {
                let live: BTreeSet<String> = v
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|r| r["state"] == "live")
                    .filter_map(|r| r["id"].as_str().map(String::from))
                    .collect();
                let must: BTreeSet<String> = self
                    .pods
                    .iter()
                    .filter(|p| p.live())
                    .map(Pod::endpoint)
                    .collect();
                let may: BTreeSet<String> = self
                    .pods
                    .iter()
                    .filter(|p| p.vanish != Vanish::SeenStale)
                    .map(Pod::endpoint)
                    .collect();
                let missing: Vec<&String> = must.difference(&live).collect();
                let extra: Vec<&String> = live.difference(&may).collect();
                if !missing.is_empty() {
                    out.push((
                        Kind2::Broken,
                        format!("dataplane endpoints: acknowledged pods missing: {missing:?}"),
                    ));
                }
                if !extra.is_empty() {
                    out.push((
                        Kind2::Leak,
                        format!("dataplane endpoints of no live pod: {extra:?}"),
                    ));
                }
            }
            Err(e) => out.push((Kind2::Broken, format!("ferryctl endpoints: {e}"))),
        }
        match node_links(&self.topo.node.name) {
            Ok(links) => {
                let veths = self
                    .pods
                    .iter()
                    .filter(|p| p.live() && p.attach == Attach::Veth)
                    .count();
                let fy: Vec<&NodeLink> =
                    links.iter().filter(|l| l.name.starts_with("fy")).collect();
                if fy.len() != veths {
                    let kind = if fy.len() > veths {
                        Kind2::Leak
                    } else {
                        Kind2::Broken
                    };
                    out.push((
                        kind,
                        format!(
                            "{} fy* link(s) in the node for {veths} live veth pod(s)",
                            fy.len()
                        ),
                    ));
                }
                if let Some(l) = fy.iter().find(|l| !l.xdp) {
                    out.push((Kind2::Broken, format!("{} carries no XDP program", l.name)));
                }
                if let Some(l) = links
                    .iter()
                    .find(|l| l.xdp && !l.name.starts_with("fy") && l.name != HOST_PORT_DP)
                {
                    out.push((Kind2::Leak, format!("{} carries an XDP program", l.name)));
                }
                if let Some(l) = links.iter().find(|l| l.name.starts_with("ft")) {
                    out.push((
                        Kind2::Leak,
                        format!("link {} in the node (ft* names are labels only)", l.name),
                    ));
                }
            }
            Err(e) => out.push((Kind2::Broken, format!("node links: {e}"))),
        }
        out
    }

    fn check_state(&mut self, when: &str) -> Result<()> {
        self.counts.checks += 1;
        let mut last = Vec::new();
        let ok = sys::wait_until(CONVERGE_WITHIN, || {
            last = self.state_problems();
            last.is_empty()
        })?;
        if !ok {
            for (kind, p) in last {
                // A lasting problem is listed once, where it was first seen.
                if self.seen_problems.insert(p.clone()) {
                    self.violation(kind, format!("{when}: {p}"));
                } else {
                    self.counts.repeated_problems += 1;
                }
            }
        }
        Ok(())
    }

    fn fds(&mut self) -> BTreeMap<Daemon, Option<(u32, usize)>> {
        [Daemon::Ferryd, Daemon::Dataplane]
            .into_iter()
            .map(|d| (d, self.topo.daemon_fds(d).ok().flatten()))
            .collect()
    }

    /// The churn phase: until `end`, ops, traffic, kills, checks.
    fn churn(&mut self) -> Result<()> {
        let total = Duration::from_secs_f64(self.opts.minutes.max(0.0) * 60.0);
        let end = self.started + total;
        let t = total.as_secs_f64();
        // No kill in the last stretch, so the final incarnations serve churn
        // before their fds are counted.
        let calm = Duration::from_secs_f64((t * 0.15).min(60.0));
        let lo = self.opts.kill_every.0.min(t / 8.0).max(0.5);
        let hi = self.opts.kill_every.1.min(t / 4.0).max(lo);
        let mut next_kill = Instant::now() + self.rng.secs(lo, hi);
        while Instant::now() < end {
            sys::check_interrupt()?;
            let now = Instant::now();
            if now >= next_kill && now + calm < end {
                self.kill_event()?;
                next_kill = Instant::now() + self.rng.secs(lo, hi);
                self.check_state("after a restart")?;
            } else if self.rng.chance(0.03) {
                self.vanish();
            } else {
                let op = self.choose_op();
                let job = self.prepare(op)?;
                self.run_job(job)?;
                self.check_state(match op {
                    Op::Add => "after an ADD",
                    Op::Del => "after a DEL",
                })?;
            }
            self.traffic();
        }
        Ok(())
    }
}

/// Link names in namespace `ns`.
fn link_names(ns: &str) -> Result<Vec<String>> {
    Ok(node_links(ns)?.into_iter().map(|l| l.name).collect())
}

#[derive(Debug, Clone)]
struct NodeLink {
    name: String,
    xdp: bool,
}

/// Links of namespace `ns` and whether each carries an XDP program
/// (`ip -d -j link show`: an `xdp` object on the link).
fn node_links(ns: &str) -> Result<Vec<NodeLink>> {
    let text = sys::run_ok("ip", &["-n", ns, "-d", "-j", "link", "show"])?;
    parse_links(&text)
}

fn parse_links(text: &str) -> Result<Vec<NodeLink>> {
    let v: Value =
        serde_json::from_str(text).map_err(|e| E2eError::parse("ip -j link", e.to_string()))?;
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .map(|l| NodeLink {
            name: l["ifname"].as_str().unwrap_or("").to_string(),
            xdp: l.get("xdp").is_some(),
        })
        .collect())
}

/// `N address(es) in use` from ferryd's STATUS message.
fn in_use(msg: &str) -> Option<usize> {
    let head = &msg[..msg.find(" address(es) in use")?];
    head.rsplit([' ', ';', '(']).next()?.parse().ok()
}

fn stale_ids(status: &Value) -> BTreeSet<String> {
    status["stale"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["endpoint"].as_str().map(String::from))
        .collect()
}

fn fmt_fds(v: Option<(u32, usize)>) -> String {
    v.map(|(pid, n)| format!("{n} (pid {pid})"))
        .unwrap_or_else(|| "-".into())
}

/// Run the soak: build, churn, DEL everything, stop, check, tear down.
pub fn run(opts: &Options) -> Result<Outcome> {
    let seed = opts.seed.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    eprintln!(
        "churn: seed {seed} (repeat with --seed {seed}), {} min, {} pods, kills every {}-{} s",
        opts.minutes, opts.pods, opts.kill_every.0, opts.kill_every.1
    );
    let wall = Instant::now();
    let topo = topo::ferry_node("perf churn", opts.workers, &opts.bin_dir)?;
    let prefix = topo.run_prefix();
    let veth = topo.ferry_plugin(Some("veth"))?;
    let tap = topo.ferry_plugin(Some("tap"))?;
    let mut c = Churn {
        topo,
        veth,
        tap,
        opts: opts.clone(),
        rng: Rng::new(seed),
        pods: Vec::new(),
        next_id: 0,
        counts: Counts::default(),
        op_secs: 0.1,
        violations: Vec::new(),
        seen_problems: BTreeSet::new(),
        started: Instant::now(),
    };
    let fds_start = c.fds();
    let churned = c.churn();
    let churn_secs = c.started.elapsed().as_secs_f64();
    match churned {
        Ok(()) => {}
        Err(E2eError::Interrupted) => return Err(E2eError::Interrupted),
        Err(e) => c.violation(Kind2::Broken, format!("churn stopped early: {e}")),
    }
    // The end: DEL everything, count, stop gracefully, look for leftovers.
    let fds_before_del = c.fds();
    let pods_before_del = c.pods.len();
    c.log(format!("final DEL of {pods_before_del} pod(s)"));
    while let Some(pod) = c.pods.pop() {
        c.run_job(Job::Del { pod })?;
    }
    c.check_state("after the final DEL")?;
    let fds_after_del = c.fds();
    for d in [Daemon::Ferryd, Daemon::Dataplane] {
        let (Some(Some((_, start))), Some(Some((pid, end)))) =
            (fds_start.get(&d), fds_after_del.get(&d))
        else {
            c.violation(
                Kind2::Broken,
                format!("{} not running at the end", d.name()),
            );
            continue;
        };
        if *end > start + FD_SLACK {
            c.violation(
                Kind2::Leak,
                format!(
                    "{} (pid {pid}) holds {end} fds after the final DEL, {start} at the start",
                    d.name()
                ),
            );
        }
    }
    let mut stopped = Vec::new();
    for d in [Daemon::Ferryd, Daemon::Dataplane] {
        match c.topo.stop_daemon(d, Duration::from_secs(10))? {
            Some(st) => stopped.push(format!("{}: {st}", d.name())),
            None => {
                stopped.push(format!("{}: SIGKILLed", d.name()));
                c.violation(
                    Kind2::Broken,
                    format!("{} did not stop within 10 s of SIGTERM", d.name()),
                );
            }
        }
    }
    let node = c.topo.node.name.clone();
    match node_links(&node) {
        Ok(links) => {
            for l in &links {
                if l.name.starts_with("fy") || l.name.starts_with("ft") {
                    c.violation(Kind2::Leak, format!("link {} left in the node", l.name));
                }
                if l.xdp {
                    c.violation(
                        Kind2::Leak,
                        format!("XDP program left on {} with the dataplane stopped", l.name),
                    );
                }
            }
        }
        Err(e) => c.violation(Kind2::Broken, format!("node links: {e}")),
    }
    let bpftool = match sys::ns_run_ok(&node, &["bpftool", "-j", "net", "show"]) {
        Ok(text) => {
            let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            let n = v
                .as_array()
                .into_iter()
                .flatten()
                .map(|o| o["xdp"].as_array().map_or(0, Vec::len))
                .sum::<usize>();
            if n > 0 {
                c.violation(
                    Kind2::Leak,
                    format!("bpftool net show: {n} XDP attachment(s) left: {text}"),
                );
            }
            format!("{n} XDP attachment(s)")
        }
        Err(_) => "bpftool not installed (ip -d link checked)".into(),
    };
    let counts = std::mem::take(&mut c.counts);
    let mut violations = std::mem::take(&mut c.violations);
    drop(c);
    // Every namespace of the run is gone once the guards dropped.
    let left: Vec<String> = sys::run_ok("ip", &["netns", "list"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&prefix))
        .map(String::from)
        .collect();
    if !left.is_empty() {
        violations.push((Kind2::Leak, format!("namespaces left: {}", left.join(" "))));
    }
    let leaks = violations.iter().filter(|(k, _)| *k == Kind2::Leak).count();
    let broken = violations.len() - leaks;
    let kills = |d| counts.kills.get(&d).copied().unwrap_or(0);
    let mut md = String::new();
    let _ = writeln!(md, "| figure | value |\n|---|---|");
    let mut row = |k: &str, v: String| {
        let _ = writeln!(md, "| {k} | {v} |");
    };
    row("minutes of churn", format!("{:.2}", churn_secs / 60.0));
    row(
        "wall time, s (build to teardown)",
        format!("{:.0}", wall.elapsed().as_secs_f64()),
    );
    row("seed", seed.to_string());
    row("target live pods", opts.pods.to_string());
    row(
        "ADDs ok (of which tap) / failed",
        format!(
            "{} ({}) / {}",
            counts.adds_ok, counts.adds_ok_tap, counts.adds_failed
        ),
    );
    row(
        "DELs (retries; second DEL without CNI_NETNS)",
        format!(
            "{} ({}; {})",
            counts.dels, counts.del_retries, counts.second_dels
        ),
    );
    row(
        "SIGKILLs ferryd / ferry-dataplane (kill events with an ADD/DEL in flight; aimed at one that had already returned)",
        format!(
            "{} / {} ({}; {})",
            kills(Daemon::Ferryd),
            kills(Daemon::Dataplane),
            counts.kills_in_flight,
            counts.kills_after_op
        ),
    );
    row(
        "kill → ready again, ms median / max",
        format!(
            "{:.0} / {:.0}",
            stats::summarize(&counts.restarts_ready_ms).map_or(f64::NAN, |s| s.median),
            counts.restarts_ready_ms.iter().copied().fold(0.0, f64::max)
        ),
    );
    row(
        "pods verified reachable after restarts (node + pod)",
        counts.reachable_checks.to_string(),
    );
    row(
        "pod namespaces vanished before DEL (reported stale)",
        format!("{} ({})", counts.vanished, counts.vanished_seen_stale),
    );
    row(
        "ping between live pods: sent / lost",
        format!("{} / {}", counts.ping_sent, counts.ping_lost),
    );
    row(
        "state checks: store, endpoints, links, XDP (a listed problem seen again)",
        format!("{} ({})", counts.checks, counts.repeated_problems),
    );
    for d in [Daemon::Ferryd, Daemon::Dataplane] {
        row(
            &format!(
                "{} fds: start / before final DEL ({pods_before_del} pods) / after",
                d.name()
            ),
            format!(
                "{} / {} / {}",
                fmt_fds(fds_start[&d]),
                fmt_fds(fds_before_del[&d]),
                fmt_fds(fds_after_del[&d])
            ),
        );
    }
    row("graceful stop", stopped.join(", "));
    row("XDP in the node after stop (bpftool)", bpftool);
    row("leaks found", leaks.to_string());
    row("other violations", broken.to_string());
    if !violations.is_empty() {
        let _ = writeln!(md, "\nViolations:\n");
        for (k, v) in &violations {
            let _ = writeln!(
                md,
                "- {}: {}",
                if *k == Kind2::Leak { "leak" } else { "broken" },
                v.lines().next().unwrap_or("")
            );
        }
    }
    Ok(Outcome {
        summary: md,
        violations: violations.into_iter().map(|(_, v)| v).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_store_count_is_read_from_the_status_message() {
        let m =
            "ferry-dataplane connected (1 worker(s), generation 7); 3 address(es) in use, 250 free";
        assert_eq!(in_use(m), Some(3));
        assert_eq!(in_use("ferry-dataplane connected (1 worker(s), generation 2); 0 address(es) in use, 253 free; 1 stale attachment(s) kept until DEL or GC (pod gone)"), Some(0));
        assert_eq!(in_use("ferry-dataplane not connected"), None);
    }

    #[test]
    fn links_with_an_xdp_object_carry_a_program() {
        let text = r#"[{"ifindex":1,"ifname":"lo"},{"ifindex":5,"ifname":"fy0123456789a","xdp":{"mode":1,"prog":{"id":42}}}]"#;
        let l = parse_links(text).unwrap();
        assert_eq!((l[0].name.as_str(), l[0].xdp), ("lo", false));
        assert_eq!((l[1].name.as_str(), l[1].xdp), ("fy0123456789a", true));
    }

    #[test]
    fn the_rng_is_reproducible_and_in_range() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        for _ in 0..1000 {
            let x = a.below(8);
            assert_eq!(x, b.below(8));
            assert!(x < 8);
            let d = a.secs(10.0, 40.0);
            assert_eq!(d, b.secs(10.0, 40.0));
            assert!(d >= Duration::from_secs(10) && d < Duration::from_secs(40));
        }
    }
}
