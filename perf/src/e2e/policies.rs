//! The policy cases (`--policy-rules N`): one Kubernetes NetworkPolicy in
//! the pods' namespace selecting every pod, with N ingress and N egress
//! rules each, the one that admits the workloads last (so a new flow is
//! judged against all of them); the flood and the request/response pair
//! are measured with it (`<workload>-polN`) and, in the same repetition,
//! without it (`<workload>-pol0`), on ferry's topologies only (the
//! kernel's paths have no NetworkPolicy of their own here).
//!
//! Pure: text in, text out; the topology applies it ([`super::topo`]).

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use super::error::{E2eError, Result};
use super::report::Sample;
use super::stats::{ratios_per_rep, summarize};
use super::traffic::FLOOD_PORT;
use super::workload::RR_PORT;

/// The namespace of the pods (their `K8S_POD_NAMESPACE`).
pub const NAMESPACE: &str = "perf";
/// The policy's name.
pub const NAME: &str = "perf-rules";
/// Most rules per direction one run may ask for.
pub const MAX_RULES: usize = 4096;

/// `--policy-rules 100`: the rule count, `None` for 0 or nothing.
pub fn parse_rules(s: &str) -> Result<Option<usize>> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(None);
    }
    let n: usize = s
        .parse()
        .map_err(|_| E2eError::setup("-", format!("--policy-rules: {s:?} is not a count")))?;
    if n > MAX_RULES {
        return Err(E2eError::setup(
            "-",
            format!("--policy-rules: {n} is more than {MAX_RULES}"),
        ));
    }
    Ok((n > 0).then_some(n))
}

/// The case label of `workload` with `n` rules per direction (0: none).
pub fn case(workload: &str, n: usize) -> String {
    format!("{workload}-pol{n}")
}

/// The NetworkPolicy with `n` (≥ 1) rules per direction: `n - 1` that
/// admit nothing the workloads send (a /32 of 198.18.0.0/15, the
/// benchmarking range, to a UDP port of its own), then one admitting
/// `pods` (the pods' prefix) on the flood's UDP port and the
/// request/response TCP port.
pub fn yaml(n: usize, pods: (Ipv4Addr, u8)) -> String {
    let mut y = format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
         metadata: {{name: {NAME}, namespace: {NAMESPACE}}}\n\
         spec:\n  podSelector: {{}}\n  policyTypes: [Ingress, Egress]\n"
    );
    for (dir, peer) in [("ingress", "from"), ("egress", "to")] {
        let _ = writeln!(y, "  {dir}:");
        for i in 0..n.saturating_sub(1) {
            let ip = Ipv4Addr::new(198, 18 + (i >> 16) as u8, (i >> 8) as u8, i as u8);
            let _ = writeln!(
                y,
                "  - {peer}: [{{ipBlock: {{cidr: {ip}/32}}}}]\n    ports: [{{protocol: UDP, port: {}}}]",
                1000 + i % 60000
            );
        }
        let (net, len) = pods;
        let _ = writeln!(
            y,
            "  - {peer}: [{{ipBlock: {{cidr: {net}/{len}}}}}]\n    \
             ports: [{{protocol: UDP, port: {FLOOD_PORT}}}, {{protocol: TCP, port: {RR_PORT}}}]"
        );
    }
    y
}

/// The figures whose cost the policy report shows: (workload case, metric).
const COSTED: [(&str, &str); 3] = [
    ("udp-64B", "rx_mpps"),
    ("udp-64B", "cpu_s_per_mpkt"),
    ("tcp-rr", "p50_us"),
];

/// The "Policy cost" section: per topology, `polN / pol0` of each costed
/// figure, paired within a repetition (median, min–max); empty when the
/// run had no policy case.
pub fn cost_markdown(samples: &[Sample]) -> String {
    let mut md = String::new();
    let rules: Vec<usize> = {
        let mut v: Vec<usize> = samples
            .iter()
            .filter_map(|s| s.case.rsplit_once("-pol")?.1.parse().ok())
            .filter(|n| *n > 0)
            .collect();
        v.sort();
        v.dedup();
        v
    };
    let mut topos: Vec<&str> = Vec::new();
    for s in samples.iter().filter(|s| s.case.contains("-pol")) {
        if !topos.contains(&s.topology.as_str()) {
            topos.push(&s.topology);
        }
    }
    if rules.is_empty() || topos.is_empty() {
        return md;
    }
    let _ = writeln!(
        md,
        "## Policy cost\n\n`<workload>-polN` / `<workload>-pol0` on the same topology, paired \
         within a repetition: median (min–max) over the repetitions.\n"
    );
    let _ = writeln!(
        md,
        "| topology | rules | figure | ratio |\n|---|---|---|---|"
    );
    for t in topos {
        for &n in &rules {
            for (w, metric) in COSTED {
                let series = |case: String| -> Vec<(u32, f64)> {
                    samples
                        .iter()
                        .filter(|s| s.topology == t && s.case == case)
                        .filter_map(|s| s.metrics.get(metric).map(|v| (s.rep, *v)))
                        .collect()
                };
                let r = ratios_per_rep(&series(case(w, n)), &series(case(w, 0)));
                if let Some(s) = summarize(&r) {
                    let _ = writeln!(
                        md,
                        "| {t} | {n} | {w} {metric} | ×{:.3} ({:.3}–{:.3}) |",
                        s.median, s.min, s.max
                    );
                }
            }
        }
    }
    md.push('\n');
    md
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn counts_parse_and_bounds_hold() {
        assert_eq!(parse_rules("").unwrap(), None);
        assert_eq!(parse_rules("0").unwrap(), None);
        assert_eq!(parse_rules(" 100 ").unwrap(), Some(100));
        assert!(parse_rules("x").is_err());
        assert!(parse_rules("5000").is_err());
    }

    #[test]
    fn the_policy_has_n_rules_each_way_the_admitting_one_last() {
        let text = yaml(100, (Ipv4Addr::new(10, 77, 0, 0), 24));
        let v: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
        for (dir, peer) in [("ingress", "from"), ("egress", "to")] {
            let rules = v["spec"][dir].as_sequence().unwrap();
            assert_eq!(rules.len(), 100, "{dir}");
            let last = &rules[99];
            assert_eq!(
                last[peer][0]["ipBlock"]["cidr"].as_str(),
                Some("10.77.0.0/24")
            );
            let ports: Vec<i64> = last["ports"]
                .as_sequence()
                .unwrap()
                .iter()
                .map(|p| p["port"].as_i64().unwrap())
                .collect();
            assert_eq!(ports, [FLOOD_PORT as i64, RR_PORT as i64]);
            // The others admit none of the pods' addresses.
            for r in &rules[..99] {
                let cidr = r[peer][0]["ipBlock"]["cidr"].as_str().unwrap();
                assert!(
                    cidr.starts_with("198.18.") && cidr.ends_with("/32"),
                    "{cidr}"
                );
            }
        }
        assert_eq!(v["metadata"]["namespace"].as_str(), Some(NAMESPACE));
    }

    #[test]
    fn the_cost_pairs_cases_within_a_repetition() {
        let s = |case: &str, rep: u32, mpps: f64| Sample {
            topology: "ferry".into(),
            case: case.into(),
            rep,
            metrics: BTreeMap::from([("rx_mpps".to_string(), mpps)]),
        };
        let samples = [
            s("udp-64B-pol0", 0, 1.0),
            s("udp-64B-pol100", 0, 0.9),
            s("udp-64B-pol0", 1, 0.5),
            s("udp-64B-pol100", 1, 0.5),
        ];
        let md = cost_markdown(&samples);
        assert!(
            md.contains("| ferry | 100 | udp-64B rx_mpps | ×0.950 (0.900–1.000) |"),
            "{md}"
        );
        assert!(cost_markdown(&samples[..1]).is_empty());
    }
}
