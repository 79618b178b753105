//! `perf restart`: how long pod traffic stops when one of ferry's daemons is
//! SIGKILLed and restarted at once. One ferry node (the e2e topology), two
//! veth pods and two tap pods; `ping -i 0.01` (100 Hz) runs between the two
//! veth pods and between the two tap pods while ferry-dataplane, then
//! ferryd, is SIGKILLed and started again, once per repetition. Figures per
//! run: packets lost, the gap they make (lost × 10 ms), the longest run of
//! consecutive unanswered packets, and the time from the kill to STATUS
//! ready again. The goal this measures against: a dataplane restart
//! interrupts ≤ 0.1 s, a ferryd restart loses nothing.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use crate::e2e::error::{E2eError, Result};
use crate::e2e::parse::{self, PingCount};
use crate::e2e::stats;
use crate::e2e::sys::{self, Netns};
use crate::e2e::topo::{self, Daemon};

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Kill + restart cycles per daemon.
    pub reps: u32,
    /// Pings per cycle, 10 ms apart.
    pub count: u32,
    /// When in the ping run the daemon is killed.
    pub kill_after: Duration,
    pub workers: u32,
    pub bin_dir: PathBuf,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            reps: 3,
            count: 1000,
            kill_after: Duration::from_secs(3),
            workers: 1,
            bin_dir: topo::default_bin_dir(),
        }
    }
}

/// One ping run across one kill.
#[derive(Debug, Clone)]
pub struct Sample {
    pub daemon: Daemon,
    pub pods: &'static str,
    pub rep: u32,
    pub ping: PingCount,
    /// From the SIGKILL until the process was reaped (its sockets torn down).
    pub reaped_ms: f64,
    /// From the SIGKILL until `ferryctl status` said ready again.
    pub ready_ms: f64,
}

struct PodNs {
    ns: Netns,
    container: String,
    ip: Ipv4Addr,
    attachment: &'static str,
}

fn ping_run(ns: &str, ip: Ipv4Addr, count: u32) -> Result<PingCount> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, "ping", "-n", "-c"])
        .arg(count.to_string())
        .args(["-i", "0.01", "-W", "1"])
        .arg(ip.to_string());
    let bound = Duration::from_millis(u64::from(count) * 10) + Duration::from_secs(30);
    let out = sys::run_with(cmd, None, bound)?;
    parse::ping_count(&out.stdout)
}

/// Build the node, measure every cycle, DEL the pods; the report as Markdown.
pub fn run(opts: &Options) -> Result<String> {
    let mut t = topo::ferry_node("perf restart", opts.workers, &opts.bin_dir)?;
    let mut pods = Vec::new();
    for (name, attachment) in [("v0", "veth"), ("v1", "veth"), ("t0", "tap"), ("t1", "tap")] {
        let ns = Netns::create(&t.ns_name(name))?;
        let container = t.ns_name(&format!("c{name}"));
        let r = t
            .ferry_plugin(Some(attachment))?
            .invoke("ADD", &container, &ns.path())?;
        pods.push(PodNs {
            ip: topo::result_ip(&r)?,
            ns,
            container,
            attachment,
        });
    }
    let pairs: [(&'static str, usize, usize); 2] = [("veth", 0, 1), ("tap", 2, 3)];
    for (_, a, b) in pairs {
        ping_run(&pods[a].ns.name, pods[b].ip, 3)?;
    }
    let mut samples = Vec::new();
    for daemon in [Daemon::Dataplane, Daemon::Ferryd] {
        for rep in 1..=opts.reps {
            sys::check_interrupt()?;
            let topo = &mut t;
            let pods = &pods;
            let (pings, reaped_ms, ready_ms) = thread::scope(|s| -> Result<_> {
                let runs: Vec<_> = pairs
                    .iter()
                    .map(|(_, a, b)| {
                        let (ns, ip) = (pods[*a].ns.name.clone(), pods[*b].ip);
                        s.spawn(move || ping_run(&ns, ip, opts.count))
                    })
                    .collect();
                sys::sleep(opts.kill_after)?;
                let killed = Instant::now();
                topo.kill_daemon(daemon)?;
                let reaped_ms = killed.elapsed().as_secs_f64() * 1e3;
                topo.start_daemon(daemon)?;
                let ready = sys::wait_until(Duration::from_secs(30), || topo.ferry_ready())?;
                let ready_ms = killed.elapsed().as_secs_f64() * 1e3;
                if !ready {
                    return Err(E2eError::setup(
                        "ferry",
                        format!(
                            "not ready within 30 s of restarting {}: {}",
                            daemon.name(),
                            topo.daemon_log_tail(daemon)
                        ),
                    ));
                }
                let pings = runs
                    .into_iter()
                    .map(|h| {
                        h.join()
                            .unwrap_or_else(|_| Err(E2eError::setup("ping", "thread panicked")))
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok((pings, reaped_ms, ready_ms))
            })?;
            for ((pods, _, _), ping) in pairs.iter().zip(pings) {
                eprintln!(
                    "restart: {} rep {rep} {pods} pods: {} of {} lost, longest outage {} packets, reaped after {reaped_ms:.0} ms, ready after {ready_ms:.0} ms",
                    daemon.name(),
                    ping.lost(),
                    ping.transmitted,
                    ping.longest_gap()
                );
                samples.push(Sample {
                    daemon,
                    pods,
                    rep,
                    ping,
                    reaped_ms,
                    ready_ms,
                });
            }
            sys::sleep(Duration::from_millis(500))?;
        }
    }
    for p in &pods {
        let call = t.ferry_plugin(Some(p.attachment))?;
        call.invoke("DEL", &p.container, &p.ns.path())?;
    }
    Ok(report(opts, &samples))
}

/// The samples as Markdown: every run, then medians per daemon and pod kind.
pub fn report(opts: &Options, samples: &[Sample]) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "ping -i 0.01 -c {} -W 1 between two pods on one ferry node ({} worker(s)); the daemon is SIGKILLed {:.1} s into the run and started again at once.\n",
        opts.count,
        opts.workers,
        opts.kill_after.as_secs_f64()
    );
    let _ = writeln!(md, "| daemon killed | pods | rep | sent | lost | gap (lost × 10 ms) | longest outage | kill → reaped | kill → ready |\n|---|---|---|---|---|---|---|---|---|");
    for s in samples {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} ms | {} ms | {:.0} ms | {:.0} ms |",
            s.daemon.name(),
            s.pods,
            s.rep,
            s.ping.transmitted,
            s.ping.lost(),
            s.ping.lost() * 10,
            s.ping.longest_gap() * 10,
            s.reaped_ms,
            s.ready_ms
        );
    }
    let _ = writeln!(md, "\nMedians over {} repetition(s):\n\n| daemon killed | pods | lost | gap | longest outage | kill → reaped | kill → ready | goal |\n|---|---|---|---|---|---|---|---|", opts.reps);
    for daemon in [Daemon::Dataplane, Daemon::Ferryd] {
        for pods in ["veth", "tap"] {
            let these: Vec<&Sample> = samples
                .iter()
                .filter(|s| s.daemon == daemon && s.pods == pods)
                .collect();
            if these.is_empty() {
                continue;
            }
            let med = |f: &dyn Fn(&Sample) -> f64| {
                let v: Vec<f64> = these.iter().map(|s| f(s)).collect();
                stats::summarize(&v).map_or(f64::NAN, |s| s.median)
            };
            let lost = med(&|s| s.ping.lost() as f64);
            let (goal, met) = match daemon {
                Daemon::Dataplane => ("gap ≤ 100 ms", lost * 10.0 <= 100.0),
                Daemon::Ferryd => ("0 lost", lost == 0.0),
            };
            let _ = writeln!(
                md,
                "| {} | {pods} | {lost:.0} | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms | {goal}: {} |",
                daemon.name(),
                lost * 10.0,
                med(&|s| s.ping.longest_gap() as f64) * 10.0,
                med(&|s| s.reaped_ms),
                med(&|s| s.ready_ms),
                if met { "met" } else { "NOT met" }
            );
        }
    }
    md
}
