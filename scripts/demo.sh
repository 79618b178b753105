#!/usr/bin/env bash
# ferry's main job on one simulated node: builds ferry, starts ferry-dataplane
# and ferryd in a node network namespace, creates three pods by invoking the
# `ferry` CNI binary exactly as a runtime does (env + stdin): three veth pods
# and two tap pods (chosen by the `ferry.dev/attachment` pod annotation, as
# containerd passes it), shows ping and iperf3 TCP between pods (veth, tap
# and across) and from the node to a pod, ping6 (the node is dual-stack),
# iperf3 through a Kubernetes Service's ClusterIP put in with `ferryctl
# apply -f`, prints ferryctl counters and
# ferryd's Prometheus metrics before and after the traffic, and tears
# everything down (also on failure or Ctrl-C). Then the two-node part,
# scripts/demo-cluster.sh: pods on two nodes talking over VXLAN
# (FERRY_DEMO_CLUSTER=0 skips it).
# Run as root on Debian 12; installs what it needs first.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/build.sh   # setup, build, BIN

NODE=ferry-demo-node
DIR="$(mktemp -d /tmp/ferry-demo.XXXXXX)"
PODS=(1 2 3 4 5)   # 1-3 veth, 4-5 tap
DP_PID="" ; FD_PID=""

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

cni() { # cni COMMAND POD [CONF]  -> runs ferry as a runtime does
  local cmd=$1 pod=$2 conf=${3:-$DIR/net.conf}
  CNI_COMMAND=$cmd CNI_CONTAINERID="demo-pod$pod" CNI_NETNS="/var/run/netns/ferry-demo-pod$pod" \
  CNI_IFNAME=eth0 CNI_PATH="$BIN" CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAMESPACE=demo;K8S_POD_NAME=pod$pod" \
    "$BIN/ferry" < "$conf"
}

cleanup() {
  set +e
  say "teardown"
  for p in "${PODS[@]}"; do
    [ -e "/var/run/netns/ferry-demo-pod$p" ] && [ -n "$FD_PID" ] && cni DEL "$p" >/dev/null && echo "DEL pod$p: ok"
  done
  [ -n "$FD_PID" ] && kill "$FD_PID" 2>/dev/null && wait "$FD_PID" 2>/dev/null
  [ -n "$DP_PID" ] && kill "$DP_PID" 2>/dev/null && wait "$DP_PID" 2>/dev/null
  for p in "${PODS[@]}"; do ip netns del "ferry-demo-pod$p" 2>/dev/null; done
  ip netns del "$NODE" 2>/dev/null
  rm -rf "$DIR"
  echo "removed namespaces, daemons and $DIR"
}
trap cleanup EXIT INT TERM

say "node namespace $NODE"
ip netns del "$NODE" 2>/dev/null || true
ip netns add "$NODE"
ip -n "$NODE" link set lo up

cat > "$DIR/ferryd.toml" <<CONF
socket = "$DIR/ferryd.sock"
dataplane_socket = "$DIR/dataplane.sock"
state_dir = "$DIR/state"
pod_cidrs = ["10.88.0.0/24", "fd00:10:88::/64"]
gateway = "10.88.0.1"
service_cidrs = ["10.96.0.0/12"]
mtu = 1500
CONF
# The shipped conflist, turned into the single network config libcni hands a plugin.
# (The plugin's log goes to $DIR/cni.log instead of /var/log/ferry/cni.log.)
python3 -c 'import json,sys; l=json.load(open(sys.argv[1])); p=l["plugins"][0]; p["cniVersion"]=l["cniVersion"]; p["name"]=l["name"]; p["ferrydSocket"]=sys.argv[2]; p["logFile"]=sys.argv[3]; print(json.dumps(p))' \
    cni/10-ferry.conflist "$DIR/ferryd.sock" "$DIR/cni.log" \
  > "$DIR/net.conf"
echo "network config given to ferry on stdin:"; cat "$DIR/net.conf"
# What containerd's CRI adds for a pod annotated ferry.dev/attachment=tap.
python3 -c 'import json,sys; c=json.load(open(sys.argv[1])); c["runtimeConfig"]={"io.kubernetes.cri.pod-annotations":{"ferry.dev/attachment":"tap"}}; print(json.dumps(c))' \
    "$DIR/net.conf" > "$DIR/net-tap.conf"
echo "for the tap pods (annotation ferry.dev/attachment=tap):"; cat "$DIR/net-tap.conf"

say "start ferry-dataplane and ferryd in $NODE"
ip netns exec "$NODE" "$BIN/ferry-dataplane" --socket "$DIR/dataplane.sock" --workers 1 >"$DIR/dataplane.log" 2>&1 &
DP_PID=$!
ip netns exec "$NODE" "$BIN/ferryd" --config "$DIR/ferryd.toml" >"$DIR/ferryd.log" 2>&1 &
FD_PID=$!
ready=""
for _ in $(seq 1 100); do
  if echo '{"cniVersion":"1.1.0","name":"ferry","type":"ferry","ferrydSocket":"'"$DIR/ferryd.sock"'"}' \
       | CNI_COMMAND=STATUS "$BIN/ferry" >/dev/null 2>&1; then ready=1; break; fi
  sleep 0.2
done
[ -n "$ready" ] || { echo "ferryd not ready"; tail -n 20 "$DIR"/*.log; exit 1; }
echo "ferryd STATUS: ready (dataplane connected)"

say "create pods: CNI ADD via the ferry binary"
declare -A IP IP6
for p in "${PODS[@]}"; do
  ip netns add "ferry-demo-pod$p"
  conf="$DIR/net.conf"; [ "$p" -ge 4 ] && conf="$DIR/net-tap.conf"
  out=$(cni ADD "$p" "$conf")
  IP[$p]=$(echo "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["ips"][0]["address"].split("/")[0])')
  IP6[$p]=$(echo "$out" | python3 -c 'import json,sys; print([i["address"].split("/")[0] for i in json.load(sys.stdin)["ips"] if ":" in i["address"]][0])')
  echo "pod$p -> ${IP[$p]}, ${IP6[$p]}"
done
echo "result of the last ADD:"; echo "$out" | python3 -m json.tool

say "node: no bridge, XDP on every pod host veth"
ip -n "$NODE" -br link show
ip -n "$NODE" -d link show | grep -E '^[0-9]+: fy|prog/xdp' | sed 's/^/  /'
echo "node routes:"; ip -n "$NODE" -4 route show | sed 's/^/  /'

# ferryd's Prometheus endpoint (metrics_listen, default 127.0.0.1:9469) lives
# in the node namespace, like ferryd itself.
metrics() { ip netns exec "$NODE" curl -sS --max-time 10 http://127.0.0.1:9469/metrics; }
say "metrics before traffic: curl http://127.0.0.1:9469/metrics (in $NODE)"
metrics > "$DIR/metrics.before"
grep -E '^# (HELP|TYPE) ferry_port_rx_frames_total' "$DIR/metrics.before"
grep -E '^ferry_(endpoints|ipam_addresses_free|table_generation|port_rx_frames_total)' "$DIR/metrics.before"

say "ping pod1 -> pod2, pod2 -> pod3, pod3 -> gateway, node -> pod1"
ip netns exec ferry-demo-pod1 ping -c 3 -i 0.2 "${IP[2]}"
ip netns exec ferry-demo-pod2 ping -c 3 -i 0.2 "${IP[3]}"
ip netns exec ferry-demo-pod3 ping -c 2 -i 0.2 10.88.0.1
ip netns exec "$NODE" ping -c 3 -i 0.2 "${IP[1]}"

say "iperf3 TCP pod1 -> pod2 (3 s)"
ip netns exec ferry-demo-pod2 iperf3 -s -1 -D -p 5201
sleep 0.3
ip netns exec ferry-demo-pod1 iperf3 -c "${IP[2]}" -p 5201 -t 3 | tail -4

say "tap pods: pod4 and pod5's eth0 is a persistent multi-queue tap with TSO"
ip -n ferry-demo-pod4 -d link show eth0 | sed 's/^/  /'
ip netns exec ferry-demo-pod4 ethtool -k eth0 | grep -E '^(tcp-segmentation-offload|tx-checksumming):' | sed 's/^/  /'
echo "node: no link for the tap pods (the dataplane opens their queues inside the pod namespace)"

say "ping tap pod4 -> tap pod5, tap pod4 -> veth pod1, veth pod2 -> tap pod5, node -> pod4"
ip netns exec ferry-demo-pod4 ping -c 3 -i 0.2 "${IP[5]}"
ip netns exec ferry-demo-pod4 ping -c 3 -i 0.2 "${IP[1]}"
ip netns exec ferry-demo-pod2 ping -c 3 -i 0.2 "${IP[5]}"
ip netns exec "$NODE" ping -c 3 -i 0.2 "${IP[4]}"

for pair in "4 5 tap -> tap (GSO frames forwarded unchanged)" \
            "4 1 tap -> veth (segmented in software)" \
            "1 4 veth -> tap"; do
  set -- $pair; from=$1 to=$2; shift 2
  port=$((5300 + from * 10 + to))
  say "iperf3 TCP pod$from -> pod$to, $* (3 s)"
  ip netns exec "ferry-demo-pod$to" iperf3 -s -1 -D -p "$port"
  sleep 0.3
  ip netns exec "ferry-demo-pod$from" iperf3 -c "${IP[$to]}" -p "$port" -t 3 | tail -4
done

say "iperf3 TCP node -> pod3 (2 s)"
ip netns exec ferry-demo-pod3 iperf3 -s -1 -D -p 5202
sleep 0.3
ip netns exec "$NODE" iperf3 -c "${IP[3]}" -p 5202 -t 2 | tail -4

say "dual stack: ping6 pod1 -> pod2, tap pod4 -> veth pod1, node -> pod5"
ip netns exec ferry-demo-pod1 ping -6 -c 3 -i 0.2 "${IP6[2]}"
ip netns exec ferry-demo-pod4 ping -6 -c 3 -i 0.2 "${IP6[1]}"
ip netns exec "$NODE" ping -6 -c 3 -i 0.2 "${IP6[5]}"

say "a Kubernetes Service: ClusterIP 10.96.0.10:80 -> pod2 and pod3 port 5301 (ferryctl apply -f)"
cat > "$DIR/web.yaml" <<YAML
apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec:
  clusterIP: 10.96.0.10
  # iperf3 opens a control and a data connection: both must reach the
  # same backend, so the client sticks to one (as it would with kube-proxy).
  sessionAffinity: ClientIP
  ports: [{name: http, port: 80, targetPort: 5301}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: demo
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports: [{name: http, port: 5301}]
endpoints:
- addresses: [${IP[2]}]
- addresses: [${IP[3]}]
YAML
cat "$DIR/web.yaml"
"$BIN/ferryctl" --ferryd "$DIR/ferryd.sock" --dataplane "$DIR/dataplane.sock" apply -f "$DIR/web.yaml"
for _ in $(seq 1 50); do
  "$BIN/ferryctl" --ferryd "$DIR/ferryd.sock" --dataplane "$DIR/dataplane.sock" get services | grep -q "dataplane: synced" && break
  sleep 0.1
done
"$BIN/ferryctl" --ferryd "$DIR/ferryd.sock" --dataplane "$DIR/dataplane.sock" get services
for p in 2 3; do
  ip netns exec "ferry-demo-pod$p" iperf3 -s -1 -D -p 5301 -I "$DIR/iperf-svc$p.pid"
done
sleep 0.3
say "iperf3 TCP pod1 -> ClusterIP 10.96.0.10:80 (translated to a backend by the dataplane; 2 s)"
ip netns exec ferry-demo-pod1 iperf3 -c 10.96.0.10 -p 80 -t 2 | tail -4
# The backend Maglev did not pick still waits: stop it by its pid.
for p in 2 3; do
  [ -s "$DIR/iperf-svc$p.pid" ] && kill "$(cat "$DIR/iperf-svc$p.pid")" 2>/dev/null || true
done
say "pod1 -> 10.88.0.200 (no such pod: dropped by the dataplane, reason no_endpoint)"
ip netns exec ferry-demo-pod1 ping -c 1 -W 1 10.88.0.200 || true

say "metrics after traffic (before -> after)"
metrics > "$DIR/metrics.after"
awk 'NR == FNR { if ($1 !~ /^#/) b[$1] = $2; next }
     /^ferry_(port_(rx|tx)_frames_total|port_drops_total|worker_(busy|idle)_polls_total|endpoints|ipam_addresses_free|table_generation)/ && ($2 != 0 || b[$1] != 0) {
       printf "  %-100s %10s -> %s\n", $1, ($1 in b ? b[$1] : 0), $2 }' \
  "$DIR/metrics.before" "$DIR/metrics.after"
before=$(awk '/^ferry_port_rx_frames_total/ { s += $2 } END { print s + 0 }' "$DIR/metrics.before")
after=$(awk '/^ferry_port_rx_frames_total/ { s += $2 } END { print s + 0 }' "$DIR/metrics.after")
echo "frames received on all ports: $before -> $after"
[ "$after" -gt "$before" ] || { echo "metrics did not rise with traffic"; exit 1; }

say "ferryctl endpoints"
"$BIN/ferryctl" --ferryd "$DIR/ferryd.sock" --dataplane "$DIR/dataplane.sock" endpoints
say "ferryctl stats"
"$BIN/ferryctl" --ferryd "$DIR/ferryd.sock" --dataplane "$DIR/dataplane.sock" stats
say "ferryctl drops"
"$BIN/ferryctl" --ferryd "$DIR/ferryd.sock" --dataplane "$DIR/dataplane.sock" drops
say "the CNI plugin's log ($DIR/cni.log)"
cat "$DIR/cni.log"
echo; echo "demo: ok"

# The one node goes before the two-node part starts (its own names, its own teardown).
if [ "${FERRY_DEMO_CLUSTER:-1}" != 0 ]; then
  cleanup
  trap - EXIT INT TERM
  BIN="$BIN" exec ./scripts/demo-cluster.sh
fi
