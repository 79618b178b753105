#!/usr/bin/env bash
# ferry between two nodes through etcd: a fabric namespace whose Linux bridge
# br0 stands for the physical switch, an etcd server (Debian's etcd 3.4) in a
# namespace of its own on it (192.168.70.250), two node namespaces cabled to
# it by their uplink up0 (192.168.70.1 and .2), each running ferry-dataplane
# (2 workers) and ferryd with [cluster]: each claims a /24 of 10.244.0.0/16
# from etcd and learns the other's block there (VXLAN between them).
# A veth and a tap pod on each node, made by the `ferry` CNI binary as a
# runtime does; cross-node ping and iperf3 (veth and tap), a node pinging a
# remote pod, `ferryctl peers` and the uplink port's counters; teardown by
# name (also on failure or Ctrl-C).
# Run as root on Debian 12. scripts/demo.sh runs it after the one-node demo
# (with BIN set to the binaries it built); alone it installs and builds first.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -n "${BIN:-}" ] || . scripts/build.sh   # setup, build, BIN

FAB=ferry-demo-fab
ETCD_NS=ferry-demo-etcd
ETCD=http://192.168.70.250:2379
NODES=(1 2)
PODS=(1 2)          # on every node: 1 veth, 2 tap
DIR="$(mktemp -d /tmp/ferry-demo-cluster.XXXXXX)"
declare -A PID IP

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
node() { echo "ferry-demo-n$1"; }
pod() { echo "ferry-demo-n$1-pod$2"; }
ctl() { local n=$1; shift; "$BIN/ferryctl" --ferryd "$DIR/n$n/ferryd.sock" --dataplane "$DIR/n$n/dataplane.sock" "$@"; }

cni() { # cni COMMAND NODE POD  -> runs ferry as a runtime does
  local cmd=$1 n=$2 p=$3
  CNI_COMMAND=$cmd CNI_CONTAINERID="demo-n$n-pod$p" CNI_NETNS="/var/run/netns/$(pod "$n" "$p")" \
  CNI_IFNAME=eth0 CNI_PATH="$BIN" CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAMESPACE=demo;K8S_POD_NAME=n$n-pod$p" \
    "$BIN/ferry" < "$DIR/n$n/net$p.conf"
}

cleanup() {
  set +e
  say "cluster teardown"
  for n in "${NODES[@]}"; do
    for p in "${PODS[@]}"; do
      [ -e "/var/run/netns/$(pod "$n" "$p")" ] && [ -n "${PID[fd$n]:-}" ] && cni DEL "$n" "$p" >/dev/null \
        && echo "DEL n$n pod$p: ok"
    done
  done
  for k in "${!PID[@]}"; do kill "${PID[$k]}" 2>/dev/null; done
  for k in "${!PID[@]}"; do wait "${PID[$k]}" 2>/dev/null; done
  for n in "${NODES[@]}"; do
    for p in "${PODS[@]}"; do ip netns del "$(pod "$n" "$p")" 2>/dev/null; done
    ip netns del "$(node "$n")" 2>/dev/null
  done
  ip netns del "$ETCD_NS" 2>/dev/null
  ip netns del "$FAB" 2>/dev/null
  rm -rf "$DIR"
  echo "removed the fabric, etcd, node and pod namespaces, daemons and $DIR"
}
trap cleanup EXIT INT TERM

say "fabric $FAB: br0 is the switch between the nodes"
ip netns del "$FAB" 2>/dev/null || true
ip netns add "$FAB"
ip -n "$FAB" link add br0 type bridge
ip -n "$FAB" link set br0 up

say "etcd on the fabric: $ETCD (namespace $ETCD_NS, data in $DIR/etcd)"
ip netns del "$ETCD_NS" 2>/dev/null || true
ip netns add "$ETCD_NS"
ip -n "$ETCD_NS" link set lo up
ip -n "$FAB" link add etcd type veth peer name eth0 netns "$ETCD_NS"
ip -n "$FAB" link set etcd master br0 up
ip -n "$ETCD_NS" addr add 192.168.70.250/24 dev eth0
ip -n "$ETCD_NS" link set eth0 up
ip netns exec "$ETCD_NS" etcd --name demo --data-dir "$DIR/etcd" \
  --listen-client-urls "$ETCD" --advertise-client-urls "$ETCD" \
  --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
  --initial-cluster demo=http://127.0.0.1:2380 >"$DIR/etcd.log" 2>&1 &
PID[etcd]=$!
etcdctl_() { ip netns exec "$ETCD_NS" env ETCDCTL_API=3 etcdctl --endpoints="$ETCD" --command-timeout=5s "$@"; }
for _ in $(seq 1 100); do etcdctl_ endpoint health >/dev/null 2>&1 && break; sleep 0.2; done
etcdctl_ endpoint health

for n in "${NODES[@]}"; do
  NS=$(node "$n"); D="$DIR/n$n"; mkdir -p "$D"
  say "node $NS: uplink up0 = 192.168.70.$n/24 on br0, its pods' block claimed from etcd"
  ip netns del "$NS" 2>/dev/null || true
  ip netns add "$NS"
  ip -n "$NS" link set lo up
  # Made inside the fabric, one end moved to the node: nothing in the root namespace.
  ip -n "$FAB" link add "n$n" numtxqueues 2 numrxqueues 2 type veth \
    peer name up0 netns "$NS" numtxqueues 2 numrxqueues 2
  ip -n "$FAB" link set "n$n" master br0 up
  ip -n "$NS" addr add "192.168.70.$n/24" dev up0
  ip -n "$NS" link set up0 up
  cat > "$D/ferryd.toml" <<CONF
socket = "$D/ferryd.sock"
dataplane_socket = "$D/dataplane.sock"
state_dir = "$D/state"
metrics_listen = ""
uplink = "up0"
node_address = "192.168.70.$n"
masquerade = true

[overlay]
mode = "vxlan"
vni = 1
port = 4789
set_channels = true

[cluster]
endpoints = ["$ETCD"]
cidr = "10.244.0.0/16"
node_name = "demo-n$n"
CONF
  echo "ferryd.toml:"; sed 's/^/  /' "$D/ferryd.toml"
  echo '{"cniVersion":"1.0.0","name":"ferry","type":"ferry","ferrydSocket":"'"$D/ferryd.sock"'"}' > "$D/net1.conf"
  echo '{"cniVersion":"1.0.0","name":"ferry","type":"ferry","attachment":"tap","ferrydSocket":"'"$D/ferryd.sock"'"}' > "$D/net2.conf"
  ip netns exec "$NS" "$BIN/ferry-dataplane" --socket "$D/dataplane.sock" --workers 2 >"$D/dataplane.log" 2>&1 &
  PID[dp$n]=$!
  ip netns exec "$NS" "$BIN/ferryd" --config "$D/ferryd.toml" >"$D/ferryd.log" 2>&1 &
  PID[fd$n]=$!
  ready=""
  for _ in $(seq 1 100); do
    # STATUS is CNI 1.1.0.
    if sed 's/"1.0.0"/"1.1.0"/' "$D/net1.conf" | CNI_COMMAND=STATUS "$BIN/ferry" >/dev/null 2>&1; then ready=1; break; fi
    kill -0 "${PID[fd$n]}" 2>/dev/null || break   # ferryd exited (a config it refuses, say)
    sleep 0.2
  done
  [ -n "$ready" ] || {
    echo "ferryd on $NS not ready"; head -n 5 "$D/ferryd.log"; tail -n 5 "$D/dataplane.log"; exit 1
  }
  echo "ferryd on $NS: ready"
done

say "pods: a veth pod and a tap pod on each node (CNI ADD)"
for n in "${NODES[@]}"; do
  for p in "${PODS[@]}"; do
    ip netns add "$(pod "$n" "$p")"
    IP[$n$p]=$(cni ADD "$n" "$p" | python3 -c 'import json,sys; print(json.load(sys.stdin)["ips"][0]["address"].split("/")[0])')
    echo "$(pod "$n" "$p") -> ${IP[$n$p]} (mtu $(ip netns exec "$(pod "$n" "$p")" cat /sys/class/net/eth0/mtu))"
  done
done
for n in "${NODES[@]}"; do
  echo "$(node "$n") routes:"; ip -n "$(node "$n")" -4 route show | sed 's/^/  /'
done

say "cross-node ping: veth n1 -> veth n2, tap n2 -> tap n1, veth n1 -> tap n2, node 1 -> pod on node 2"
ip netns exec "$(pod 1 1)" ping -c 3 -i 0.2 -W 2 "${IP[21]}"
ip netns exec "$(pod 2 2)" ping -c 3 -i 0.2 -W 2 "${IP[12]}"
ip netns exec "$(pod 1 1)" ping -c 3 -i 0.2 -W 2 "${IP[22]}"
ip netns exec "$(node 1)" ping -c 3 -i 0.2 -W 2 "${IP[21]}"

for pair in "11 21 veth n1 -> veth n2 (VXLAN)" "12 22 tap n1 -> tap n2 (VXLAN, GSO frames segmented and encapsulated)"; do
  set -- $pair; from=$1 to=$2; shift 2
  port=$((5400 + from))
  say "iperf3 TCP $* (3 s)"
  ip netns exec "$(pod "${to:0:1}" "${to:1:1}")" iperf3 -s -1 -D -p "$port"
  sleep 0.3
  ip netns exec "$(pod "${from:0:1}" "${from:1:1}")" timeout 30 iperf3 -c "${IP[$to]}" -p "$port" -t 3 | tail -4
done

for n in "${NODES[@]}"; do
  say "ferryctl nodes and peers on $(node "$n")"
  ctl "$n" nodes
  echo
  ctl "$n" peers
done
say "what etcd holds (keys under /ferry)"
etcdctl_ get --prefix /ferry --keys-only | sed '/^$/d'
say "ferryctl stats on $(node 1)"
ctl 1 stats
echo; echo "demo-cluster: ok"
