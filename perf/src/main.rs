//! `perf`: ferry's end-to-end benchmark harness.
//!
//! `perf e2e [--quick]` builds every topology (ferry, the Linux bridge, the
//! kernel routed path, an in-kernel XDP redirect) in network namespaces of its
//! own, runs the same workloads through each and writes results.json,
//! results.md and results.png. `perf cleanup` removes `fpf-*` namespaces left
//! by a run that was SIGKILLed.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use perf::e2e::{self, error::E2eError};

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
        /// Comma-separated topologies among ferry, ferry-tap, ferry-tap-2w, bridge, ptp, xdp.
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
        /// Comma-separated main-case workloads to run (default: all) among tcp-1, tcp-4, udp-64B, udp-1400B, ping, tcp-rr.
        #[arg(long, value_delimiter = ',')]
        workloads: Vec<String>,
        /// Extra ferry-dataplane arguments for every ferry topology, e.g. `--dataplane-args='--idle-spin-us 20'` (split at spaces; recorded in the report).
        #[arg(long, allow_hyphen_values = true)]
        dataplane_args: Option<String>,
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

fn real_main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    match cli.cmd {
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
            workloads,
            dataplane_args,
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
            o.workloads = workloads;
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
                Err(E2eError::Interrupted) => {
                    eprintln!("perf: interrupted; every namespace and process made was removed");
                    Ok(ExitCode::from(130))
                }
                Err(e) => Err(e).context("perf e2e"),
            }
        }
    }
}
