//! The results of a run: raw samples, their summaries (median/min/max and
//! per-repetition ratios to a baseline: the bridge for single-node
//! topologies, kernel-vxlan for two-node ones) and the Markdown rendering.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;
use serde_json::Value;

use super::stats::{ratios_per_rep, summarize, Summary};

/// The topology the ratios of single-node topologies are taken against.
pub const BASELINE: &str = "bridge";
/// The topology the ratios of two-node topologies are taken against.
pub const CROSS_BASELINE: &str = "kernel-vxlan";
/// The two-node topologies, by name (pod 0 and pod 1 on two nodes).
pub const CROSS_TOPOLOGIES: [&str; 5] = [
    "ferry-vxlan",
    "ferry-vxlan-tap",
    "ferry-direct",
    "kernel-vxlan",
    "kernel-hostgw",
];

/// The topology `topology`'s ratios are taken against: a two-node
/// topology is compared with another two-node one, never with the bridge.
pub fn baseline_of(topology: &str) -> &'static str {
    if CROSS_TOPOLOGIES.contains(&topology) {
        CROSS_BASELINE
    } else {
        BASELINE
    }
}

/// One measurement: one workload on one topology in one repetition.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub topology: String,
    /// Workload label, e.g. `udp-64B`, with the pod count for scale cases (`udp-64B pods=16`).
    pub case: String,
    pub rep: u32,
    pub metrics: BTreeMap<String, f64>,
}

/// A workload that failed on a topology in a repetition.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    pub topology: String,
    pub case: String,
    pub rep: Option<u32>,
    pub error: String,
}

/// What a metric means and which way is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricInfo {
    pub name: &'static str,
    pub unit: &'static str,
    pub higher_is_better: bool,
    /// Whether a ratio to the bridge means something (not for counts that are
    /// often zero on the bridge, like losses and retransmissions).
    pub ratio: bool,
    pub meaning: &'static str,
}

/// Every metric the harness reports, in display order.
pub const METRICS: &[MetricInfo] = &[
    MetricInfo {
        name: "gbit_s",
        unit: "Gbit/s",
        higher_is_better: true,
        ratio: true,
        meaning: "TCP goodput received by the server pod (iperf3)",
    },
    MetricInfo {
        name: "retransmits",
        unit: "segments",
        higher_is_better: false,
        ratio: false,
        meaning: "TCP retransmissions during the run",
    },
    MetricInfo {
        name: "rx_mpps",
        unit: "Mpps",
        higher_is_better: true,
        ratio: true,
        meaning: "frames received at the receiver pod's interface per second",
    },
    MetricInfo {
        name: "offered_mpps",
        unit: "Mpps",
        higher_is_better: true,
        ratio: true,
        meaning: "frames offered per second: afpacket, the sending pod's eth0 tx_packets + tx_dropped; live (cases *-live), the frames the generator's test runs handed on",
    },
    MetricInfo {
        name: "sender_if_mpps",
        unit: "Mpps",
        higher_is_better: true,
        ratio: true,
        meaning: "the sending pod's eth0 tx_packets + tx_dropped per second (for live frames: the XDP frames its veth peer took in, and ring overflows)",
    },
    MetricInfo {
        name: "rx_gbit_s",
        unit: "Gbit/s",
        higher_is_better: true,
        ratio: true,
        meaning: "received frame bits per second (L2, without FCS)",
    },
    MetricInfo {
        name: "loss_pct",
        unit: "%",
        higher_is_better: false,
        ratio: false,
        meaning: "offered frames not received",
    },
    MetricInfo {
        name: "p50_us",
        unit: "µs",
        higher_is_better: false,
        ratio: true,
        meaning: "median round-trip time",
    },
    MetricInfo {
        name: "p99_us",
        unit: "µs",
        higher_is_better: false,
        ratio: true,
        meaning: "99th percentile round-trip time",
    },
    MetricInfo {
        name: "trans_s",
        unit: "1/s",
        higher_is_better: true,
        ratio: true,
        meaning: "1-byte request/response transactions per second",
    },
    MetricInfo {
        name: "cpu_s_per_gbit",
        unit: "CPU s/Gbit",
        higher_is_better: false,
        ratio: true,
        meaning: "machine CPU seconds (/proc/stat) per gigabit moved",
    },
    MetricInfo {
        name: "cpu_s_per_mpkt",
        unit: "CPU s/Mpkt",
        higher_is_better: false,
        ratio: true,
        meaning: "machine CPU seconds (/proc/stat) per million frames received",
    },
    MetricInfo {
        name: "rx_mpps_per_core",
        unit: "Mpps/core",
        higher_is_better: true,
        ratio: true,
        meaning: "received frames per busy core: rx_mpps / cpu_cores (= 1 / cpu_s_per_mpkt), the machine's busy cores (/proc/stat) in the window, generator and receiver included",
    },
    MetricInfo {
        name: "cpu_cores",
        unit: "cores",
        higher_is_better: false,
        ratio: true,
        meaning: "average busy cores of the machine during the window",
    },
    MetricInfo {
        name: "softirq_cores",
        unit: "cores",
        higher_is_better: false,
        ratio: true,
        meaning: "two-node topologies: the softirq part of cpu_cores (/proc/stat), where the kernel forwards, bridges and (de)capsulates, on both nodes and the fabric",
    },
    MetricInfo {
        name: "dataplane_cores",
        unit: "cores",
        higher_is_better: false,
        ratio: false,
        meaning: "two-node ferry topologies: CPU of both nodes' ferry-dataplane processes (/proc/<pid>/stat utime+stime, all threads) per wall second; part of cpu_cores",
    },
];

pub fn metric_info(name: &str) -> Option<&'static MetricInfo> {
    METRICS.iter().find(|m| m.name == name)
}

/// Summary of one metric of one case on one topology.
#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    #[serde(flatten)]
    pub value: Summary,
    /// value / bridge value, per repetition, summarized: single-node
    /// topologies but the bridge itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio_to_bridge: Option<Summary>,
    /// value / kernel-vxlan value, per repetition, summarized: two-node
    /// topologies but kernel-vxlan itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio_to_kernel_vxlan: Option<Summary>,
}

impl Cell {
    /// The ratio to this topology's baseline, whichever it is.
    pub fn ratio(&self) -> Option<&Summary> {
        self.ratio_to_bridge
            .as_ref()
            .or(self.ratio_to_kernel_vxlan.as_ref())
    }
}

/// One row of the summary: a metric of a case on every topology.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub case: String,
    pub metric: String,
    pub unit: String,
    pub higher_is_better: bool,
    pub by_topology: BTreeMap<String, Cell>,
}

/// Summarize samples into rows, in order of first appearance of each case
/// and in [`METRICS`] order within a case.
pub fn summarize_samples(samples: &[Sample]) -> Vec<Row> {
    let mut cases: Vec<&str> = Vec::new();
    for s in samples {
        if !cases.contains(&s.case.as_str()) {
            cases.push(&s.case);
        }
    }
    let mut rows = Vec::new();
    for case in cases {
        let in_case: Vec<&Sample> = samples.iter().filter(|s| s.case == case).collect();
        for m in METRICS {
            let series = |topo: &str| -> Vec<(u32, f64)> {
                in_case
                    .iter()
                    .filter(|s| s.topology == topo)
                    .filter_map(|s| s.metrics.get(m.name).map(|v| (s.rep, *v)))
                    .collect()
            };
            let mut topos: Vec<&str> = Vec::new();
            for s in &in_case {
                if s.metrics.contains_key(m.name) && !topos.contains(&s.topology.as_str()) {
                    topos.push(&s.topology);
                }
            }
            if topos.is_empty() {
                continue;
            }
            let mut by_topology = BTreeMap::new();
            for t in topos {
                let vals = series(t);
                let Some(value) = summarize(&vals.iter().map(|(_, v)| *v).collect::<Vec<_>>())
                else {
                    continue;
                };
                let base = baseline_of(t);
                let ratio = if t == base || !m.ratio {
                    None
                } else {
                    summarize(&ratios_per_rep(&vals, &series(base)))
                };
                let (ratio_to_bridge, ratio_to_kernel_vxlan) = if base == BASELINE {
                    (ratio, None)
                } else {
                    (None, ratio)
                };
                by_topology.insert(
                    t.to_string(),
                    Cell {
                        value,
                        ratio_to_bridge,
                        ratio_to_kernel_vxlan,
                    },
                );
            }
            rows.push(Row {
                case: case.to_string(),
                metric: m.name.to_string(),
                unit: m.unit.to_string(),
                higher_is_better: m.higher_is_better,
                by_topology,
            });
        }
    }
    rows
}

/// Everything a run produced; serialized as results.json.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub meta: BTreeMap<String, Value>,
    /// Topology name -> what it is and what was recorded about it (offloads, br_netfilter...).
    pub topologies: BTreeMap<String, Value>,
    /// Display order of the topologies.
    pub order: Vec<String>,
    pub samples: Vec<Sample>,
    pub failures: Vec<Failure>,
    pub summary: Vec<Row>,
}

/// A number with about three significant digits.
pub fn fmt_num(x: f64) -> String {
    let a = x.abs();
    if a == 0.0 {
        "0".into()
    } else if a >= 100.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else if a >= 1.0 {
        format!("{x:.2}")
    } else if a >= 0.01 {
        format!("{x:.3}")
    } else {
        format!("{x:.2e}")
    }
}

fn cell_text(c: &Cell) -> String {
    let v = &c.value;
    let mut s = if v.n > 1 {
        format!(
            "{} ({}–{})",
            fmt_num(v.median),
            fmt_num(v.min),
            fmt_num(v.max)
        )
    } else {
        fmt_num(v.median)
    };
    if let Some(r) = c.ratio() {
        let _ = write!(s, " ×{:.2}", r.median);
    }
    s
}

/// The Markdown report: the run's context, one table per case, the notes.
pub fn render_markdown(r: &Report) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# ferry end-to-end results\n");
    for (k, v) in &r.meta {
        let text = match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let _ = writeln!(md, "- **{k}**: {text}");
    }
    let _ = writeln!(
        md,
        "\nCells: median (min–max) over the repetitions; ×r = median over repetitions of \
         (value / baseline value in the same repetition). The baseline is the bridge for \
         single-node topologies and {CROSS_BASELINE} for two-node ones ({}: pod 0 on node A, \
         pod 1 on node B).\n",
        CROSS_TOPOLOGIES.join(", ")
    );
    let mut cases: Vec<&str> = Vec::new();
    for row in &r.summary {
        if !cases.contains(&row.case.as_str()) {
            cases.push(&row.case);
        }
    }
    for case in cases {
        let rows: Vec<&Row> = r.summary.iter().filter(|x| x.case == case).collect();
        let topos: Vec<&String> = r
            .order
            .iter()
            .filter(|t| rows.iter().any(|x| x.by_topology.contains_key(*t)))
            .collect();
        let _ = writeln!(md, "## {case}\n");
        let _ = write!(md, "| metric |");
        for t in &topos {
            let _ = write!(md, " {t} |");
        }
        let _ = write!(md, "\n|---|");
        for _ in &topos {
            let _ = write!(md, "---|");
        }
        md.push('\n');
        for row in rows {
            let arrow = if row.higher_is_better { "↑" } else { "↓" };
            let _ = write!(md, "| {} ({}) {arrow} |", row.metric, row.unit);
            for t in &topos {
                let text = row
                    .by_topology
                    .get(*t)
                    .map(cell_text)
                    .unwrap_or_else(|| "–".into());
                let _ = write!(md, " {text} |");
            }
            md.push('\n');
        }
        md.push('\n');
    }
    md.push_str(&super::policies::cost_markdown(&r.samples));
    let _ = writeln!(md, "## Topologies\n");
    for t in &r.order {
        if let Some(v) = r.topologies.get(t) {
            let _ = writeln!(
                md,
                "- **{t}**: {}",
                v.get("description").and_then(Value::as_str).unwrap_or("")
            );
            if let Some(obj) = v.as_object() {
                for (k, val) in obj {
                    if k != "description" {
                        let _ = writeln!(md, "  - {k}: {val}");
                    }
                }
            }
        }
    }
    if !r.failures.is_empty() {
        let _ = writeln!(md, "\n## Failures\n");
        for f in &r.failures {
            let rep = f.rep.map(|r| format!(" rep {r}")).unwrap_or_default();
            let _ = writeln!(
                md,
                "- {} / {}{rep}: {}",
                f.topology,
                f.case,
                f.error.replace('\n', " ")
            );
        }
    }
    let _ = writeln!(md, "\n## Metrics\n");
    for m in METRICS {
        let _ = writeln!(md, "- `{}` ({}): {}", m.name, m.unit, m.meaning);
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(topo: &str, case: &str, rep: u32, metrics: &[(&str, f64)]) -> Sample {
        Sample {
            topology: topo.into(),
            case: case.into(),
            rep,
            metrics: metrics.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        }
    }

    fn report() -> Report {
        let samples = vec![
            sample(
                "bridge",
                "tcp-1",
                0,
                &[("gbit_s", 10.0), ("cpu_s_per_gbit", 0.2)],
            ),
            sample(
                "ferry",
                "tcp-1",
                0,
                &[("gbit_s", 5.0), ("cpu_s_per_gbit", 0.4)],
            ),
            sample(
                "bridge",
                "tcp-1",
                1,
                &[("gbit_s", 20.0), ("cpu_s_per_gbit", 0.1)],
            ),
            sample(
                "ferry",
                "tcp-1",
                1,
                &[("gbit_s", 30.0), ("cpu_s_per_gbit", 0.1)],
            ),
            sample("bridge", "ping", 0, &[("p50_us", 40.0), ("p99_us", 90.0)]),
            sample("ferry", "ping", 0, &[("p50_us", 20.0), ("p99_us", 45.0)]),
        ];
        let summary = summarize_samples(&samples);
        Report {
            meta: [
                ("cores".to_string(), Value::from(2)),
                ("kernel".to_string(), Value::from("6.1")),
            ]
            .into_iter()
            .collect(),
            topologies: [(
                "bridge".to_string(),
                serde_json::json!({"description": "Linux bridge", "bridge-nf-call-iptables": 1}),
            )]
            .into_iter()
            .collect(),
            order: vec!["ferry".into(), "bridge".into()],
            samples,
            failures: vec![Failure {
                topology: "xdp".into(),
                case: "tcp-1".into(),
                rep: Some(1),
                error: "boom".into(),
            }],
            summary,
        }
    }

    #[test]
    fn rows_summarize_and_pair_ratios_per_repetition() {
        let r = report();
        let g = r
            .summary
            .iter()
            .find(|x| x.case == "tcp-1" && x.metric == "gbit_s")
            .unwrap();
        let f = &g.by_topology["ferry"];
        assert_eq!(
            (f.value.median, f.value.min, f.value.max, f.value.n),
            (17.5, 5.0, 30.0, 2)
        );
        let ratio = f.ratio_to_bridge.unwrap();
        // rep 0: 5/10 = 0.5, rep 1: 30/20 = 1.5.
        assert_eq!((ratio.min, ratio.median, ratio.max), (0.5, 1.0, 1.5));
        assert!(g.by_topology["bridge"].ratio_to_bridge.is_none());
        // No ratio where the bridge's value is often zero.
        let samples = vec![
            sample("bridge", "udp", 0, &[("loss_pct", 0.001), ("rx_mpps", 1.0)]),
            sample("ferry", "udp", 0, &[("loss_pct", 30.0), ("rx_mpps", 2.0)]),
        ];
        let rows = summarize_samples(&samples);
        assert!(
            rows[0].metric == "rx_mpps" && rows[0].by_topology["ferry"].ratio_to_bridge.is_some()
        );
        assert!(
            rows[1].metric == "loss_pct" && rows[1].by_topology["ferry"].ratio_to_bridge.is_none()
        );
        // Metric order follows METRICS; cases keep their first-seen order.
        let order: Vec<(&str, &str)> = r
            .summary
            .iter()
            .map(|x| (x.case.as_str(), x.metric.as_str()))
            .collect();
        assert_eq!(
            order,
            vec![
                ("tcp-1", "gbit_s"),
                ("tcp-1", "cpu_s_per_gbit"),
                ("ping", "p50_us"),
                ("ping", "p99_us")
            ]
        );
    }

    #[test]
    fn two_node_topologies_are_compared_with_kernel_vxlan() {
        let samples = vec![
            sample("bridge", "tcp-1", 0, &[("gbit_s", 10.0)]),
            sample("ferry", "tcp-1", 0, &[("gbit_s", 5.0)]),
            sample("kernel-vxlan", "tcp-1", 0, &[("gbit_s", 4.0)]),
            sample("ferry-vxlan", "tcp-1", 0, &[("gbit_s", 2.0)]),
            sample("kernel-hostgw", "tcp-1", 0, &[("gbit_s", 8.0)]),
            sample("ferry-vxlan", "tcp-1", 0, &[("dataplane_cores", 1.5)]),
        ];
        let rows = summarize_samples(&samples);
        let by = &rows
            .iter()
            .find(|r| r.metric == "gbit_s")
            .unwrap()
            .by_topology;
        let r = |t: &str| by[t].ratio().map(|s| s.median);
        assert_eq!(by["ferry"].ratio_to_bridge.unwrap().median, 0.5);
        assert!(by["ferry"].ratio_to_kernel_vxlan.is_none());
        assert_eq!(by["ferry-vxlan"].ratio_to_kernel_vxlan.unwrap().median, 0.5);
        assert!(by["ferry-vxlan"].ratio_to_bridge.is_none());
        assert_eq!(r("kernel-hostgw"), Some(2.0));
        assert_eq!((r("bridge"), r("kernel-vxlan")), (None, None));
        // A figure the baseline has not (dataplane CPU): no ratio.
        let dp = &rows.iter().find(|r| r.metric == "dataplane_cores").unwrap();
        assert!(dp.by_topology["ferry-vxlan"].ratio().is_none());
        for t in CROSS_TOPOLOGIES {
            assert_eq!(baseline_of(t), "kernel-vxlan");
        }
        assert_eq!(baseline_of("ferry-tap-2w"), "bridge");
        let json = serde_json::to_value(&rows[0]).unwrap();
        assert!(json["by_topology"]["ferry-vxlan"]["ratio_to_kernel_vxlan"].is_object());
        assert!(json["by_topology"]["ferry"]["ratio_to_bridge"].is_object());
        assert!(json["by_topology"]["ferry"]
            .get("ratio_to_kernel_vxlan")
            .is_none());
    }

    #[test]
    fn markdown_has_a_table_per_case_with_ratios() {
        let md = render_markdown(&report());
        assert!(
            md.contains("## tcp-1\n\n| metric | ferry | bridge |\n|---|---|---|\n"),
            "{md}"
        );
        assert!(
            md.contains("| gbit_s (Gbit/s) ↑ | 17.5 (5.00–30.0) ×1.00 | 15.0 (10.0–20.0) |"),
            "{md}"
        );
        assert!(md.contains("| p50_us (µs) ↓ | 20.0 ×0.50 | 40.0 |"), "{md}");
        assert!(md.contains("- **kernel**: 6.1"), "{md}");
        assert!(
            md.contains("- **bridge**: Linux bridge\n  - bridge-nf-call-iptables: 1"),
            "{md}"
        );
        assert!(md.contains("- xdp / tcp-1 rep 1: boom"), "{md}");
    }

    #[test]
    fn numbers_keep_three_digits() {
        assert_eq!(fmt_num(0.0), "0");
        assert_eq!(fmt_num(1234.4), "1234");
        assert_eq!(fmt_num(12.34), "12.3");
        assert_eq!(fmt_num(1.234), "1.23");
        assert_eq!(fmt_num(0.1234), "0.123");
        assert_eq!(fmt_num(0.001234), "1.23e-3");
    }
}
