#!/usr/bin/env bash
# The whole test suite: unit, property, network-namespace integration and
# real-client tests (the real binaries in throwaway namespaces), the
# criterion benches once, perf e2e --quick (checked by perf-check.py), then
# bounded fuzz runs.
# Run as root on Debian 12; installs what it needs first.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"

cargo build --workspace --bins
# --no-fail-fast: one failing test binary must not hide the results of the others.
cargo test --workspace --no-fail-fast -- --test-threads=2

# The criterion benches, each run once as a test (criterion's test mode).
cargo test -p perf --benches

# The end-to-end harness in its quick mode, on the debug binaries just built:
# CI keeps the harness working (every figure produced), not fast.
PERF_OUT="$(mktemp -d /tmp/ferry-perf-quick.XXXXXX)"
target/debug/perf e2e --quick --bin-dir target/debug --out "$PERF_OUT" >"$PERF_OUT/stdout.md"
python3 scripts/perf-check.py "$PERF_OUT/results.json"
rm -rf "$PERF_OUT"

# Bounded fuzz runs of the pipeline and the CNI config parser.
# cargo-fuzz needs -Z flags: RUSTC_BOOTSTRAP lets the stable toolchain take them.
FUZZ_SECONDS="${FUZZ_SECONDS:-20}"
if [ "$FUZZ_SECONDS" != 0 ]; then
  command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --quiet
  for t in "dataplane pipeline" "cni conf"; do
    set -- $t
    if [ -d "$1/fuzz" ]; then
      echo "fuzz: $1/$2 for ${FUZZ_SECONDS}s"
      (cd "$1" && RUSTC_BOOTSTRAP=1 cargo fuzz run "$2" -- -max_total_time="$FUZZ_SECONDS" -rss_limit_mb=2048 2>&1 | tail -3)
    fi
  done
fi
echo "test.sh: all passed"
