#!/usr/bin/env bash
# NIC check throughput vs iperf3, side by side in one run, over the same veth pair between two
# network namespaces this script creates (and removes). kiln measures HTTP download and upload
# against `kiln-agent serve-bandwidth` with `streams: N` (N = KILN_BENCH_STREAMS, default one
# per CPU) and with one stream; iperf3 measures TCP both ways (-R for download) with -P N and
# with one stream. Each direction runs KILN_BENCH_SECS (10) s. Prints Mb/s and the ratios
# (target: kiln >= 0.9 of iperf3 -P N).
# Run as root: bash agent/benches/nic.sh   (needs iproute2 and iperf3)
set -euo pipefail
cd "$(dirname "$0")/../.."

SECS=${KILN_BENCH_SECS:-10}
# Streams for the multi-stream comparison: one per CPU unless told.
STREAMS=${KILN_BENCH_STREAMS:-$(nproc)}
A=kiln-bench-a
B=kiln-bench-b
ADDR_A=10.231.77.1
ADDR_B=10.231.77.2
PORT=8181
pids=()
work=$(mktemp -d)

cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  ip netns del "$A" 2>/dev/null || true
  ip netns del "$B" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

command -v iperf3 >/dev/null || { echo "iperf3 is not installed: apt-get install iperf3"; exit 2; }
cargo build --release --locked -q -p kiln-agent
agent=$PWD/target/release/kiln-agent

ip netns add "$A"
ip netns add "$B"
ip link add kb-a type veth peer name kb-b
ip link set kb-a netns "$A"
ip link set kb-b netns "$B"
ip -n "$A" addr add "$ADDR_A/30" dev kb-a
ip -n "$B" addr add "$ADDR_B/30" dev kb-b
for ns in "$A" "$B"; do ip -n "$ns" link set lo up; done
ip -n "$A" link set kb-a up
ip -n "$B" link set kb-b up

ip netns exec "$B" timeout 240 "$agent" serve-bandwidth --listen "$ADDR_B:$PORT" --seconds 220 >/dev/null &
pids+=($!)
ip netns exec "$B" timeout 240 iperf3 -s -p 5201 >/dev/null 2>&1 &
pids+=($!)
sleep 1

cat > "$work/nic.yaml" <<YAML
suite: nic-bench
description: NIC throughput benchmark over a veth pair.
steps:
  - name: nic-streams
    nic:
      interfaces: [kb-a]
      target: http://$ADDR_B:$PORT
      duration: ${SECS}s
      streams: $STREAMS
  - name: nic-one
    nic:
      interfaces: [kb-a]
      target: http://$ADDR_B:$PORT
      duration: ${SECS}s
      streams: 1
YAML
ip netns exec "$A" timeout 300 "$agent" run "$work/nic.yaml" --plain --report "$work/r.json" >/dev/null
read -r kiln_down kiln_up kiln1_down kiln1_up < <(python3 -c "
import json
steps = json.load(open('$work/r.json'))['steps']
m = [{x['name']: x['value'] for x in s['metrics']} for s in steps]
print(m[0]['download_mbps'], m[0]['upload_mbps'], m[1]['download_mbps'], m[1]['upload_mbps'])")

iperf() { ip netns exec "$A" timeout 60 iperf3 -c "$ADDR_B" -p 5201 -t "$SECS" -J "$@" | python3 -c "import json,sys; print(json.load(sys.stdin)['end']['sum_received']['bits_per_second']/1e6)"; }
iperf_down=$(iperf -R -P "$STREAMS")
iperf_up=$(iperf -P "$STREAMS")
iperf1_down=$(iperf -R)
iperf1_up=$(iperf)

python3 - "$STREAMS" "$kiln_down" "$kiln_up" "$iperf_down" "$iperf_up" "$kiln1_down" "$kiln1_up" "$iperf1_down" "$iperf1_up" <<'PY'
import sys
n = sys.argv[1]
kd, ku, idn, iup, kd1, ku1, id1, iu1 = map(float, sys.argv[2:])
print(f"{n} streams  download: kiln {kd:8.0f} Mb/s   iperf3 -P {n} {idn:8.0f} Mb/s   ratio {kd/idn:.2f}")
print(f"{n} streams  upload:   kiln {ku:8.0f} Mb/s   iperf3 -P {n} {iup:8.0f} Mb/s   ratio {ku/iup:.2f}")
print(f"1 stream   download: kiln {kd1:8.0f} Mb/s   iperf3      {id1:8.0f} Mb/s   ratio {kd1/id1:.2f}")
print(f"1 stream   upload:   kiln {ku1:8.0f} Mb/s   iperf3      {iu1:8.0f} Mb/s   ratio {ku1/iu1:.2f}")
print(f"ratio kiln / iperf3 -P {n} (both directions): {(kd+ku)/(idn+iup):.2f} (target >= 0.90); one stream: {(kd1+ku1)/(id1+iu1):.2f}")
PY
