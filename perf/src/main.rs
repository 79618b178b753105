//! `perf`: ferry's end-to-end benchmark harness.
//!
//! `perf e2e [--quick]` builds every topology (ferry, the Linux bridge, the
//! kernel routed path, an in-kernel XDP redirect; on request two-node ones,
//! ferry's overlays beside Flannel's kernel paths) in network namespaces of its
//! own, runs the same workloads through each and writes results.json,
//! results.md and results.png. `perf churn --minutes N` is a soak: ADD/DEL
//! churn with traffic while the daemons are SIGKILLed at random, then a leak
//! check. `perf restart` measures the traffic gap of a daemon's SIGKILL and
//! restart. `perf cni` times ADD and DEL against bridge + host-local.
//! `perf cluster` runs N ferryd through one etcd and measures
//! what the datastore costs per node. `perf cleanup` removes `fpf-*` namespaces left by a run that was
//! SIGKILLed.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use perf::e2e::{self, error::E2eError, topo::default_bin_dir};

#[derive(Parser)]
#[command(name = "perf", about = "ferry vs the kernel, side by side, in one run")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the topologies, run the workloads, tear down, write the report.
    E2e {
        /// Short run (fewer, shorter repetitions) that checks every figure is produced.
        #[arg(long)]
        quick: bool,
        /// Results directory (default perf-results/<UTC timestamp>/).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Repetitions of every case (default 3, --quick 2).
        #[arg(long)]
        reps: Option<u32>,
        /// Comma-separated topologies among ferry, ferry-tap, ferry-tap-2w, bridge, ptp, xdp (one node, compared with bridge) and ferry-vxlan, ferry-vxlan-tap, ferry-direct, kernel-vxlan, kernel-hostgw (two nodes on a fabric, compared with kernel-vxlan; no udp-1400B, no scale cases).
        #[arg(long, value_delimiter = ',', default_value = "ferry,bridge,ptp,xdp")]
        topologies: Vec<String>,
        /// Directory of ferry's release binaries (default: the workspace's target/release).
        #[arg(long)]
        bin_dir: Option<PathBuf>,
        /// Pod counts of the 64 B scale cases (2 pods is the main case).
        #[arg(long, value_delimiter = ',', default_value = "16,64")]
        scale_pods: Vec<usize>,
        /// Workers of the second ferry instance measured with the 64 B workload (0: none).
        #[arg(long, default_value_t = 2)]
        ferry_workers: u32,
        /// Generator threads of the UDP workloads (each its own socket and 8 flows).
        #[arg(long, default_value_t = 1)]
        senders: u32,
        /// What makes the UDP floods' frames: afpacket (an AF_PACKET socket per sender, sendmmsg, qdisc bypass; the path behind the veth runs in its own softirq, so it offers what one core can send and carry), live (BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES of an XDP_TX program on the sending pod's eth0, kernel 5.18+; cases labelled <workload>-live, offered = the generator's own count) or both (each flood case with afpacket, then live). Scale and service cases use the first.
        #[arg(long, default_value = "afpacket")]
        generator: String,
        /// Comma-separated main-case workloads to run (default: all) among tcp-1, tcp-4, udp-64B, udp-1400B, ping, tcp-rr.
        #[arg(long, value_delimiter = ',')]
        workloads: Vec<String>,
        /// IP family of the main cases: 4, 6 or both (each workload over IPv4, then IPv6). With 6 the single-node topologies are built dual-stack (ferry: an IPv6 pod CIDR; bridge, ptp: two host-local range sets) and the IPv6 cases are reported as <workload>-v6 (udp-64B-v6 sends 62-byte frames, the smallest IPv6/UDP); not with two-node topologies. Scale cases stay IPv4.
        #[arg(long, default_value = "4")]
        family: String,
        /// Extra ferry-dataplane arguments for every ferry topology, e.g. `--dataplane-args='--idle-spin-us 20'` (split at spaces; recorded in the report).
        #[arg(long, allow_hyphen_values = true)]
        dataplane_args: Option<String>,
        /// Service cases: comma-separated service counts, e.g. `--services 10,1000` (0 or absent: none). For each N, N Services (a UDP and a TCP port 80 each, ClusterIPs 10.96.x.y, pod 1 the one endpoint) are put in place and udp-64B and tcp-rr (those of --workloads) are sent to the last one's ClusterIP, reported as <workload>-svcN: on ferry through the real `ferryctl apply -f`, on bridge and ptp as kube-proxy's iptables nat rules (KUBE-SERVICES → KUBE-SVC → KUBE-SEP DNAT, the measured service's rules last) loaded with iptables-restore in the node namespace. Run after the main and scale cases, N ascending in each repetition; ratios to the bridge's same case. IPv4 only.
        #[arg(long, default_value = "0")]
        services: String,
        /// Policy cases: rules per direction of one NetworkPolicy selecting every pod (e.g. `--policy-rules 100`; 0 or absent: none), applied with the real `ferryctl apply -f`; the rule admitting the workloads is the last. In each repetition udp-64B and tcp-rr (those of --workloads) run without it (<workload>-pol0) and with it (<workload>-polN) on ferry's one-node topologies, after the scale cases; the report's "Policy cost" section gives polN / pol0 paired within a repetition. IPv4 only.
        #[arg(long, default_value = "0")]
        policy_rules: String,
    },
    /// Soak: ADD/DEL churn with traffic while ferryd and ferry-dataplane are SIGKILLed at random; then check nothing leaked.
    Churn {
        /// Minutes of churn (the final DEL and checks follow); 0.5 for a short run.
        #[arg(long, default_value_t = 10.0)]
        minutes: f64,
        /// Target number of live pods.
        #[arg(long, default_value_t = 8)]
        pods: usize,
        /// Seed of the random choices (printed at the start; default from the clock).
        #[arg(long)]
        seed: Option<u64>,
        /// Seconds between kills, LO-HI (shrunk for short runs).
        #[arg(long, default_value = "10-40")]
        kill_every: String,
        /// Share of pods made with "attachment": "tap".
        #[arg(long, default_value_t = 0.4)]
        tap_share: f64,
        /// ferry-dataplane workers.
        #[arg(long, default_value_t = 1)]
        workers: u32,
        /// Directory of ferry's binaries (default: the workspace's target/release).
        #[arg(long)]
        bin_dir: Option<PathBuf>,
    },
    /// Traffic gap of a SIGKILL + restart of ferry-dataplane, then of ferryd: 100 Hz ping between veth pods and between tap pods.
    Restart {
        /// Kill + restart cycles per daemon.
        #[arg(long, default_value_t = 3)]
        reps: u32,
        /// Pings per cycle (10 ms apart).
        #[arg(long, default_value_t = 1000)]
        count: u32,
        /// ferry-dataplane workers.
        #[arg(long, default_value_t = 1)]
        workers: u32,
        /// Directory of ferry's binaries (default: the workspace's target/release).
        #[arg(long)]
        bin_dir: Option<PathBuf>,
    },
    /// CNI ADD/DEL latency, sequential and parallel: ferry (veth, tap) against bridge + host-local.
    Cni {
        /// Pods added one at a time per topology.
        #[arg(long, default_value_t = 20)]
        pods: usize,
        /// ADDs at once in the parallel phase.
        #[arg(long, default_value_t = 8)]
        parallel: usize,
        /// Rounds of the parallel phase.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Directory of ferry's binaries (default: the workspace's target/release).
        #[arg(long)]
        bin_dir: Option<PathBuf>,
    },
    /// N ferryd through one etcd: cluster formation, etcd load per node, change propagation, join/leave, a dead node's lease.
    Cluster {
        /// Comma-separated cluster sizes (each on a fresh etcd; at most 200).
        #[arg(long, value_delimiter = ',', default_value = "10,50")]
        nodes: Vec<u32>,
        /// lease_ttl_s of every node (≥ 10; renewed every ttl/4).
        #[arg(long, default_value_t = 10)]
        lease_ttl_s: u32,
        /// Seconds of the quiet window in which etcd's load is measured.
        #[arg(long, default_value_t = 20)]
        window: u64,
        /// Put/delete probes of a record per cluster size.
        #[arg(long, default_value_t = 10)]
        probes: u32,
        /// Write the Markdown report to this file too.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Directory of ferry's binaries (default: the workspace's target/release).
        #[arg(long)]
        bin_dir: Option<PathBuf>,
    },
    /// What an idle node costs: ferry-dataplane's CPU and RSS (and RSS per pod) with N idle veth pods, per poll mode.
    Idle {
        /// Comma-separated pod counts, measured in turn on one node per mode.
        #[arg(long, value_delimiter = ',', default_value = "0,40,100")]
        pods: Vec<usize>,
        /// ferry-dataplane workers.
        #[arg(long, default_value_t = 2)]
        workers: u32,
        /// Comma-separated --poll-mode values, one node each.
        #[arg(long, value_delimiter = ',', default_value = "adaptive,interrupt")]
        modes: Vec<String>,
        /// Seconds of each CPU reading.
        #[arg(long, default_value_t = 10)]
        window: u64,
        /// Directory of ferry's binaries (default: the workspace's target/release).
        #[arg(long)]
        bin_dir: Option<PathBuf>,
    },
    /// Remove fpf-* network namespaces left by a killed run.
    Cleanup,
}

fn main() -> ExitCode {
    match real_main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("perf: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn interrupted() -> anyhow::Result<ExitCode> {
    eprintln!("perf: interrupted; every namespace and process made was removed");
    Ok(ExitCode::from(130))
}

/// A Markdown report printed (and written to `out`, if given), or why
/// there is none: `what` names the subcommand in the error.
fn markdown(
    what: &str,
    report: Result<String, E2eError>,
    out: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    match report {
        Ok(md) => {
            println!("{md}");
            if let Some(p) = out {
                std::fs::write(&p, &md).with_context(|| format!("write {}", p.display()))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(E2eError::Interrupted) => interrupted(),
        Err(e) => Err(e).context(what.to_string()),
    }
}

fn parse_range(s: &str) -> anyhow::Result<(f64, f64)> {
    let (lo, hi) = s
        .split_once('-')
        .with_context(|| format!("--kill-every {s:?}: expected LO-HI seconds, e.g. 10-40"))?;
    let (lo, hi): (f64, f64) = (lo.trim().parse()?, hi.trim().parse()?);
    anyhow::ensure!(
        lo > 0.0 && hi >= lo,
        "--kill-every {s:?}: need 0 < LO <= HI"
    );
    Ok((lo, hi))
}

fn real_main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Churn {
            minutes,
            pods,
            seed,
            kill_every,
            tap_share,
            workers,
            bin_dir,
        } => {
            let o = perf::churn::Options {
                minutes,
                pods: pods.clamp(2, 200),
                seed,
                kill_every: parse_range(&kill_every)?,
                tap_share: tap_share.clamp(0.0, 1.0),
                workers: workers.max(1),
                bin_dir: bin_dir.unwrap_or_else(default_bin_dir),
            };
            match perf::churn::run(&o) {
                Ok(out) => {
                    println!("{}", out.summary);
                    if out.violations.is_empty() {
                        Ok(ExitCode::SUCCESS)
                    } else {
                        eprintln!("perf churn: {} violation(s)", out.violations.len());
                        Ok(ExitCode::from(2))
                    }
                }
                Err(E2eError::Interrupted) => interrupted(),
                Err(e) => Err(e).context("perf churn"),
            }
        }
        Cmd::Restart {
            reps,
            count,
            workers,
            bin_dir,
        } => {
            let o = perf::restart::Options {
                reps: reps.max(1),
                count: count.max(400),
                workers: workers.max(1),
                bin_dir: bin_dir.unwrap_or_else(default_bin_dir),
                ..Default::default()
            };
            markdown("perf restart", perf::restart::run(&o), None)
        }
        Cmd::Idle {
            pods,
            workers,
            modes,
            window,
            bin_dir,
        } => {
            let o = perf::idle::Options {
                pods: pods
                    .into_iter()
                    .map(|n| n.min(perf::e2e::MAX_PODS))
                    .collect(),
                workers: workers.max(1),
                modes,
                window: window.clamp(1, 600),
                bin_dir: bin_dir.unwrap_or_else(default_bin_dir),
            };
            markdown("perf idle", perf::idle::run(&o), None)
        }
        Cmd::Cni {
            pods,
            parallel,
            rounds,
            bin_dir,
        } => {
            let o = perf::cni::Options {
                pods: pods.clamp(1, 100),
                parallel: parallel.clamp(1, 32),
                rounds: rounds.max(1),
                bin_dir: bin_dir.unwrap_or_else(default_bin_dir),
            };
            markdown("perf cni", perf::cni::run(&o), None)
        }
        Cmd::Cluster {
            nodes,
            lease_ttl_s,
            window,
            probes,
            out,
            bin_dir,
        } => {
            let o = perf::cluster::Options {
                nodes,
                lease_ttl_s: lease_ttl_s.max(10),
                window: Duration::from_secs(window.max(1)),
                probes: probes.max(1),
                bin_dir: bin_dir.unwrap_or_else(default_bin_dir),
            };
            markdown("perf cluster", perf::cluster::run(&o), out)
        }
        Cmd::Cleanup => {
            let removed =
                e2e::sys::remove_stale_namespaces().context("removing fpf-* namespaces")?;
            println!(
                "removed {} namespace(s): {}",
                removed.len(),
                removed.join(" ")
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::E2e {
            quick,
            out,
            reps,
            topologies,
            bin_dir,
            scale_pods,
            ferry_workers,
            senders,
            generator,
            workloads,
            family,
            dataplane_args,
            services,
            policy_rules,
        } => {
            let mut o = e2e::Options::new(quick);
            o.out = out;
            o.reps = reps;
            o.topologies = topologies;
            if let Some(b) = bin_dir {
                o.bin_dir = b;
            }
            o.scale_pods = scale_pods.into_iter().filter(|n| *n > 2).collect();
            o.extra_ferry_workers = (ferry_workers > 1).then_some(ferry_workers);
            o.senders = senders.clamp(1, 64);
            o.generators =
                e2e::traffic::Generator::parse_choice(&generator).context("--generator")?;
            o.workloads = workloads;
            o.families = e2e::workload::Family::parse_choice(&family).context("--family")?;
            o.services = e2e::services::parse_counts(&services).context("--services")?;
            o.policy_rules = e2e::policies::parse_rules(&policy_rules).context("--policy-rules")?;
            o.dataplane_args = dataplane_args
                .unwrap_or_default()
                .split_whitespace()
                .map(String::from)
                .collect();
            match e2e::run(&o) {
                Ok(outcome) => {
                    println!("{}", outcome.markdown);
                    println!("results in {}", outcome.dir.display());
                    if outcome.failures > 0 {
                        eprintln!(
                            "perf: {} failure(s), listed in the report",
                            outcome.failures
                        );
                        return Ok(ExitCode::from(2));
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(E2eError::Interrupted) => interrupted(),
                Err(e) => Err(e).context("perf e2e"),
            }
        }
    }
}
