#!/usr/bin/env python3
"""Check that a `perf e2e` results.json holds every figure: each case of the
plan measured on each topology, every metric of the case with at least one
sample, and no failure recorded. Exit 1 (with the list) otherwise.

It checks that the harness works, not how fast anything is."""
import json
import sys

CASES = ["tcp-1", "tcp-4", "udp-64B", "udp-1400B", "ping", "tcp-rr",
         "udp-64B pods=16", "udp-64B pods=64"]
METRICS = {
    "tcp": ["gbit_s", "retransmits", "cpu_s_per_gbit", "cpu_cores"],
    "udp": ["rx_mpps", "offered_mpps", "rx_gbit_s", "loss_pct", "cpu_s_per_mpkt", "cpu_cores"],
    "ping": ["p50_us", "p99_us"],
    "tcp-rr": ["p50_us", "p99_us", "trans_s"],
}
# Counts that are often 0 on the bridge: the harness gives them no ratio.
NO_RATIO = {"retransmits", "loss_pct"}
TOPOLOGIES = ["ferry", "bridge", "ptp", "xdp"]


def metrics_of(case):
    if case == "tcp-rr":
        return METRICS["tcp-rr"]
    return METRICS[case.split("-")[0]]


def main(path):
    r = json.load(open(path))
    have = {(s["case"], s["metric"]): s["by_topology"] for s in r["summary"]}
    missing = []
    for case in CASES:
        topos = TOPOLOGIES + (["ferry-2w"] if case == "udp-64B" else [])
        for metric in metrics_of(case):
            by = have.get((case, metric), {})
            for t in topos:
                if by.get(t, {}).get("n", 0) < 1:
                    missing.append(f"{case} / {metric} / {t}")
                elif t != "bridge" and metric not in NO_RATIO and "ratio_to_bridge" not in by[t]:
                    missing.append(f"{case} / {metric} / {t}: no ratio to the bridge")
    for f in r["failures"]:
        missing.append(f"failure: {f}")
    for key in ["cores", "kernel"]:
        if key not in r["meta"]:
            missing.append(f"meta.{key}")
    if missing:
        print("perf-check: incomplete results in", path)
        for m in missing:
            print("  missing:", m)
        return 1
    print(f"perf-check: every figure present in {path} "
          f"({len(CASES)} cases x {len(TOPOLOGIES)} topologies)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
