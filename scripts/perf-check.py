#!/usr/bin/env python3
"""Check that a `perf e2e` results.json holds every figure: each case of the
plan measured on each topology, every metric of the case with at least one
sample, and no failure recorded. Exit 1 (with the list) otherwise.

    perf-check.py RESULTS.json              # the default run (ferry,bridge,ptp,xdp)
    perf-check.py --two-node RESULTS.json   # a run of the two-node topologies
    perf-check.py --services 10,1000 RESULTS.json   # also the service cases on ferry, bridge, ptp

It checks that the harness works, not how fast anything is."""
import json
import sys

CASES = ["tcp-1", "tcp-4", "udp-64B", "udp-1400B", "ping", "tcp-rr",
         "udp-64B pods=16", "udp-64B pods=64"]
METRICS = {
    "tcp": ["gbit_s", "retransmits", "cpu_s_per_gbit", "cpu_cores"],
    "udp": ["rx_mpps", "offered_mpps", "rx_gbit_s", "loss_pct", "cpu_s_per_mpkt",
            "rx_mpps_per_core", "cpu_cores"],
    "ping": ["p50_us", "p99_us"],
    "tcp-rr": ["p50_us", "p99_us", "trans_s"],
}
# Counts that are often 0 on the baseline, and figures the baseline has not:
# the harness gives them no ratio.
NO_RATIO = {"retransmits", "loss_pct", "dataplane_cores"}
TOPOLOGIES = ["ferry", "bridge", "ptp", "xdp"]

# Two-node runs: no 1400 B flood, no scale cases; the CPU split beside the
# machine's; ratios to kernel-vxlan.
CROSS_CASES = ["tcp-1", "tcp-4", "udp-64B", "ping", "tcp-rr"]
CROSS_TOPOLOGIES = ["ferry-vxlan", "ferry-vxlan-tap", "ferry-direct", "kernel-vxlan",
                    "kernel-hostgw"]
CROSS_BASELINE = "kernel-vxlan"
CPU_SPLIT = ["softirq_cores"]
FERRY_CPU_SPLIT = ["dataplane_cores"]


# Service cases (`perf e2e --services N`): the flood and the request/response
# pair through a ClusterIP, on the topologies that translate services.
SERVICE_WORKLOADS = ["udp-64B", "tcp-rr"]
SERVICE_TOPOLOGIES = ["ferry", "bridge", "ptp"]


def metrics_of(case, two_node=False, topology=""):
    if case.startswith("tcp-rr"):
        base = METRICS["tcp-rr"]
    else:
        base = METRICS[case.split("-")[0]]
    if two_node and case.split("-")[0] in ("tcp", "udp") and not case.startswith("tcp-rr"):
        base = base + CPU_SPLIT + (FERRY_CPU_SPLIT if topology.startswith("ferry") else [])
    return base


def check(r, two_node, services=()):
    have = {(s["case"], s["metric"]): s["by_topology"] for s in r["summary"]}
    missing = []
    if two_node:
        cases, baseline, ratio_key = CROSS_CASES, CROSS_BASELINE, "ratio_to_kernel_vxlan"
    else:
        cases, baseline, ratio_key = CASES, "bridge", "ratio_to_bridge"
    svc_cases = [f"{w}-svc{n}" for n in services for w in SERVICE_WORKLOADS]
    for case in cases + svc_cases:
        if case in svc_cases:
            topos = SERVICE_TOPOLOGIES
        elif two_node:
            topos = CROSS_TOPOLOGIES
        else:
            topos = TOPOLOGIES + (["ferry-2w"] if case == "udp-64B" else [])
        for t in topos:
            for metric in metrics_of(case, two_node, t):
                by = have.get((case, metric), {})
                if by.get(t, {}).get("n", 0) < 1:
                    missing.append(f"{case} / {metric} / {t}")
                elif t != baseline and metric not in NO_RATIO and ratio_key not in by[t]:
                    missing.append(f"{case} / {metric} / {t}: no ratio to {baseline}")
    for f in r["failures"]:
        missing.append(f"failure: {f}")
    for key in ["cores", "kernel"]:
        if key not in r["meta"]:
            missing.append(f"meta.{key}")
    return cases, topos, missing


def main(argv):
    two_node = "--two-node" in argv
    services = []
    paths = []
    args = iter(a for a in argv if a != "--two-node")
    for a in args:
        if a == "--services":
            services = [int(n) for n in next(args, "").split(",") if n.strip() not in ("", "0")]
        else:
            paths.append(a)
    if len(paths) != 1:
        print(__doc__)
        return 1
    path = paths[0]
    r = json.load(open(path))
    cases, topos, missing = check(r, two_node, services)
    if missing:
        print("perf-check: incomplete results in", path)
        for m in missing:
            print("  missing:", m)
        return 1
    print(f"perf-check: every figure present in {path} "
          f"({len(cases)} cases x {len(topos)} topologies)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
