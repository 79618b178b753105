//! `perf cni`: how long a runtime waits for ADD and DEL, ferry against the
//! reference `bridge` + `host-local` plugins, in one run.
//!
//! Three topologies of the e2e harness with no pods: ferry with veth pods,
//! ferry with tap pods (each one ferryd + ferry-dataplane in its node
//! namespace) and the Linux bridge. Each pod's namespace is made first
//! (not timed); what is timed is the plugin's process from exec to exit,
//! as containerd runs it (`ip netns exec <node>` included for every
//! topology alike). Sequential: pods added one at a time, topologies taken
//! in turn pod by pod (so a slow minute of the machine hits all three),
//! then deleted one at a time. Parallel: `--parallel` ADDs at once (what
//! kubelet does when a node starts many pods), `--rounds` times, then as
//! many DELs at once.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::thread;
use std::time::Instant;

use crate::e2e::error::{E2eError, Result};
use crate::e2e::stats;
use crate::e2e::sys::{self, Netns};
use crate::e2e::topo::{self, CniCall, Kind, Topology};

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Pods added one at a time per topology.
    pub pods: usize,
    /// ADDs at once in the parallel phase.
    pub parallel: usize,
    /// Rounds of the parallel phase.
    pub rounds: usize,
    pub bin_dir: PathBuf,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            pods: 20,
            parallel: 8,
            rounds: 3,
            bin_dir: topo::default_bin_dir(),
        }
    }
}

/// Latencies (ms) of one topology.
#[derive(Debug, Default, Clone)]
pub struct Samples {
    pub name: String,
    pub add_seq: Vec<f64>,
    pub del_seq: Vec<f64>,
    pub add_par: Vec<f64>,
    pub del_par: Vec<f64>,
    /// Wall time of each parallel round of ADDs (ms).
    pub round_ms: Vec<f64>,
}

/// One pod under test: its namespace and container id.
struct PodNs {
    ns: Netns,
    container: String,
}

fn timed(call: &CniCall, command: &str, pod: &PodNs) -> Result<f64> {
    let t = Instant::now();
    call.invoke(command, &pod.container, &pod.ns.path())
        .map_err(|e| E2eError::setup("perf cni", format!("{command} {}: {e}", pod.container)))?;
    Ok(t.elapsed().as_secs_f64() * 1e3)
}

struct Under {
    topo: Topology,
    call: CniCall,
    samples: Samples,
    made: usize,
}

impl Under {
    fn new_pod(&mut self) -> Result<PodNs> {
        let i = self.made;
        self.made += 1;
        Ok(PodNs {
            ns: Netns::create(&self.topo.ns_name(&format!("q{i}")))?,
            container: self.topo.ns_name(&format!("cq{i}")),
        })
    }
}

/// The same `command` on every pod at once; each latency, and the wall time.
fn at_once(call: &CniCall, command: &str, pods: &[PodNs]) -> Result<(Vec<f64>, f64)> {
    let t = Instant::now();
    let lat = thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .map(|p| s.spawn(move || timed(call, command, p)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(E2eError::setup("perf cni", "thread panicked")))
            })
            .collect::<Result<Vec<f64>>>()
    })?;
    Ok((lat, t.elapsed().as_secs_f64() * 1e3))
}

/// Build the three topologies, measure, DEL everything; the report as Markdown.
pub fn run(opts: &Options) -> Result<String> {
    topo::check_ferry_bins(&opts.bin_dir)?;
    let tag = format!("{}", std::process::id());
    let kinds = [
        ("ferry (veth)", Kind::Ferry { workers: 1 }),
        ("ferry (tap)", Kind::FerryTap { workers: 1 }),
        ("bridge + host-local", Kind::Bridge),
    ];
    let mut under = Vec::new();
    for (name, kind) in kinds {
        let topo = Topology::build(name, kind, &tag, 0, &opts.bin_dir, &[], false)?;
        let call = topo.cni_call()?;
        under.push(Under {
            topo,
            call,
            samples: Samples {
                name: name.to_string(),
                ..Samples::default()
            },
            made: 0,
        });
    }
    // Sequential, topologies in turn.
    let mut live: Vec<Vec<PodNs>> = under.iter().map(|_| Vec::new()).collect();
    for _ in 0..opts.pods {
        sys::check_interrupt()?;
        for (u, pods) in under.iter_mut().zip(&mut live) {
            let pod = u.new_pod()?;
            u.samples.add_seq.push(timed(&u.call, "ADD", &pod)?);
            pods.push(pod);
        }
    }
    for _ in 0..opts.pods {
        for (u, pods) in under.iter_mut().zip(&mut live) {
            if let Some(pod) = pods.pop() {
                u.samples.del_seq.push(timed(&u.call, "DEL", &pod)?);
            }
        }
    }
    // Parallel rounds, topologies in turn.
    for _ in 0..opts.rounds {
        for u in &mut under {
            sys::check_interrupt()?;
            let pods = (0..opts.parallel)
                .map(|_| u.new_pod())
                .collect::<Result<Vec<_>>>()?;
            let (adds, wall) = at_once(&u.call, "ADD", &pods)?;
            u.samples.add_par.extend(adds);
            u.samples.round_ms.push(wall);
            let (dels, _) = at_once(&u.call, "DEL", &pods)?;
            u.samples.del_par.extend(dels);
        }
    }
    let samples: Vec<Samples> = under.iter().map(|u| u.samples.clone()).collect();
    Ok(report(opts, &samples))
}

fn p(xs: &[f64], q: f64) -> f64 {
    stats::percentile(xs, q).unwrap_or(f64::NAN)
}

/// "p50 / p99 (×r50)": the ratio of the p50 to the baseline's.
fn cell(xs: &[f64], base: &[f64]) -> String {
    format!(
        "{:.1} / {:.1} (×{:.2})",
        p(xs, 50.0),
        p(xs, 99.0),
        p(xs, 50.0) / p(base, 50.0)
    )
}

/// The Markdown report; the last topology is the baseline.
pub fn report(opts: &Options, all: &[Samples]) -> String {
    let mut md = String::from("# perf cni\n\n");
    let _ = writeln!(
        md,
        "Latency of the CNI plugin process (exec to exit, `ip netns exec` into the node included), ms, p50 / p99 and the p50's ratio to the bridge. Sequential: {} pods added one at a time per topology, topologies in turn, then deleted. Parallel: {} ADDs at once, {} rounds, then as many DELs at once.\n",
        opts.pods, opts.parallel, opts.rounds
    );
    let Some(base) = all.last() else {
        return md;
    };
    md.push_str("| topology | ADD | DEL | ADD, parallel | DEL, parallel | parallel round wall time |\n|---|---|---|---|---|---|\n");
    for s in all {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} |",
            s.name,
            cell(&s.add_seq, &base.add_seq),
            cell(&s.del_seq, &base.del_seq),
            cell(&s.add_par, &base.add_par),
            cell(&s.del_par, &base.del_par),
            cell(&s.round_ms, &base.round_ms),
        );
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_compares_with_the_last_topology() {
        let s = |name: &str, v: f64| Samples {
            name: name.into(),
            add_seq: vec![v, v],
            del_seq: vec![v],
            add_par: vec![v],
            del_par: vec![v],
            round_ms: vec![v],
        };
        let md = report(
            &Options::default(),
            &[s("ferry (veth)", 30.0), s("bridge", 20.0)],
        );
        assert!(
            md.contains("| ferry (veth) | 30.0 / 30.0 (×1.50) |"),
            "{md}"
        );
        assert!(md.contains("| bridge | 20.0 / 20.0 (×1.00) |"), "{md}");
        assert!(report(&Options::default(), &[]).starts_with("# perf cni"));
    }
}
