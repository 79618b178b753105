#!/usr/bin/env bash
# Install what building, testing and demoing ferry needs on a fresh Debian 12
# machine (run as root). Idempotent: packages already present are skipped.
set -euo pipefail

PKGS=(
  clang llvm libbpf-dev libelf-dev zlib1g-dev m4 pkg-config  # XDP programs, xsk-rs' bundled libxdp
  iproute2 iputils-ping procps python3                        # namespaces, veth, ping, demo JSON
  iperf3                                                      # TCP between pods
  curl                                                        # scraping ferryd's /metrics (demo, tests)
  ethtool                                                     # offload checks of tap pods (itest)
  nftables                                                    # masquerade of pod traffic leaving the cluster (ferryd, uplink mode)
  iptables                                                    # perf e2e --services: kube-proxy's nat rules in the kernel baseline (iptables-restore, nft backend)
  etcd-server etcd-client protobuf-compiler libprotobuf-dev openssl   # cluster datastore: etcd 3.4 for tests/demo/perf; protoc and its well-known .proto files for the etcd-client crate; openssl makes the TLS tests' certificates
  containernetworking-plugins                                 # reference bridge plugin (baseline)
  containerd runc busybox-static util-linux                   # real clients: ctr run --cni (itest/tests/containerd.rs)
  golang-go golang-github-appc-cni-dev                        # real clients: libcni driver (itest/tests/libcni.rs)
  golang-google-grpc-dev golang-google-protobuf-dev           # real clients: CRI client (itest/go/cri-driver)
)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # No package may start a system service (containerd ships one; the tests
  # run their own): Debian's policy-rc.d hook denies starts during install.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
  for d in "$HOME/.cargo/bin" /root/.cargo/bin; do [ -x "$d/cargo" ] && export PATH="$d:$PATH"; done
fi
command -v cargo >/dev/null || { echo "setup: cargo (Rust stable) is required and was not found" >&2; exit 1; }

# iperf3's Debian package may ask to start a system daemon; ferry never uses it.
systemctl disable --now iperf3 >/dev/null 2>&1 || true
echo "setup: ok"
