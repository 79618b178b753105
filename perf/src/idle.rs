//! `perf idle`: what an idle node costs: ferry-dataplane's CPU (share of
//! one core) and memory (RSS, and RSS per pod) with N idle veth pods,
//! for each poll mode asked, in one run.
//!
//! One ferry node per mode (the real ferryd and ferry-dataplane, pods
//! added by the CNI binary as a runtime does). For each pod count, in
//! increasing order: the pods are added, the node settles, then the
//! dataplane's CPU time is read from /proc/<pid>/stat over the window and
//! its VmRSS from /proc/<pid>/status. RSS per pod is the growth over the
//! RSS with no pods, divided by the pods.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::e2e::error::{E2eError, Result};
use crate::e2e::parse;
use crate::e2e::sys;
use crate::e2e::topo::{self, Topology};
use crate::e2e::workload;

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Pod counts, measured in this order on the same node.
    pub pods: Vec<usize>,
    pub workers: u32,
    /// `--poll-mode` values, one node each.
    pub modes: Vec<String>,
    /// Seconds of each CPU reading.
    pub window: u64,
    pub bin_dir: PathBuf,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            pods: vec![0, 40, 100],
            workers: 2,
            modes: vec!["adaptive".into(), "interrupt".into()],
            window: 10,
            bin_dir: topo::default_bin_dir(),
        }
    }
}

/// One reading.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub mode: String,
    pub pods: usize,
    /// Share of one core the dataplane used over the window.
    pub cpu: f64,
    pub rss_mib: f64,
    /// (RSS − RSS at 0 pods) / pods; `None` at 0 pods.
    pub rss_per_pod_mib: Option<f64>,
}

/// VmRSS of `pid` in MiB.
pub fn rss_mib(status: &str) -> Option<f64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn read(pid: u32, file: &str) -> Result<String> {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .map_err(|e| E2eError::setup("idle", format!("/proc/{pid}/{file}: {e}")))
}

fn measure(tp: &Topology, mode: &str, pods: usize, window: u64, base: f64) -> Result<Reading> {
    let pid = *tp
        .dataplane_pids()
        .first()
        .ok_or_else(|| E2eError::setup("idle", "no dataplane"))?;
    // Let the ADDs' work (port opens, the workers' first passes) end.
    sys::sleep(Duration::from_secs(2))?;
    let t0 = Instant::now();
    let c0 = parse::pid_stat_ticks(&read(pid, "stat")?)?;
    sys::sleep(Duration::from_secs(window))?;
    let c1 = parse::pid_stat_ticks(&read(pid, "stat")?)?;
    let cpu = workload::tick_seconds(c1.saturating_sub(c0)) / t0.elapsed().as_secs_f64();
    let rss = rss_mib(&read(pid, "status")?).unwrap_or(0.0);
    Ok(Reading {
        mode: mode.to_string(),
        pods,
        cpu,
        rss_mib: rss,
        rss_per_pod_mib: (pods > 0).then(|| (rss - base) / pods as f64),
    })
}

/// Build one node per mode and take the readings.
pub fn run(o: &Options) -> Result<String> {
    let mut readings = Vec::new();
    let mut pods = o.pods.clone();
    pods.sort_unstable();
    pods.dedup();
    for mode in &o.modes {
        let args = vec!["--poll-mode".to_string(), mode.clone()];
        let mut tp = topo::ferry_node_with("idle", o.workers, &o.bin_dir, &args)?;
        let base = measure(&tp, mode, 0, o.window.min(3), 0.0)?.rss_mib;
        for &n in &pods {
            tp.ensure_pods(n)?;
            readings.push(measure(&tp, mode, n, o.window, base)?);
        }
        drop(tp);
    }
    Ok(report(o, &readings))
}

fn report(o: &Options, readings: &[Reading]) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# perf idle: {} worker(s), {} s windows\n\n| poll mode | idle pods | dataplane CPU (% of a core) | RSS (MiB) | RSS per pod (MiB) |\n|---|---:|---:|---:|---:|",
        o.workers, o.window
    );
    for r in readings {
        let per_pod = r
            .rss_per_pod_mib
            .map_or_else(|| "-".to_string(), |p| format!("{p:.2}"));
        let _ = writeln!(
            md,
            "| {} | {} | {:.2} | {:.1} | {per_pod} |",
            r.mode,
            r.pods,
            r.cpu * 100.0,
            r.rss_mib
        );
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rss_is_read_from_proc_status() {
        let status =
            "Name:\tferry-dataplane\nVmPeak:\t  300000 kB\nVmRSS:\t   28672 kB\nThreads:\t4\n";
        assert_eq!(rss_mib(status), Some(28.0));
        assert_eq!(rss_mib("Name: x\n"), None);
    }

    #[test]
    fn the_report_has_a_row_per_reading() {
        let o = Options::default();
        let r = Reading {
            mode: "adaptive".into(),
            pods: 40,
            cpu: 0.0123,
            rss_mib: 30.5,
            rss_per_pod_mib: Some(0.0625),
        };
        let md = report(&o, &[r]);
        assert!(
            md.contains("| adaptive | 40 | 1.23 | 30.5 | 0.06 |"),
            "{md}"
        );
    }
}
