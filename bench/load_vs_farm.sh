#!/usr/bin/env bash
# End-to-end: `mxsched load` against `mxsched farm` on 64 loopback addresses (MX spread:
# one equal-preference tier of 64 hosts), bounded in count and time. Prints the load
# summaries; the farm's server-side counts go to $OUT/farm.json.
#   bench/load_vs_farm.sh BUILD_DIR [SESSIONS] [OUT_DIR]
set -euo pipefail
build=${1:-build}
sessions=${2:-200000}
out=${3:-$(mktemp -d)}
mkdir -p "$out"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$build/mxsched" farm --listen "127.0.50.1-127.0.50.64:$port" --stats "$out/farm.json" \
  --max-seconds 300 2>/dev/null &
farm=$!
trap 'kill $farm 2>/dev/null; wait $farm 2>/dev/null' EXIT
sleep 0.5
{
  printf 'routes = ('
  for i in $(seq 1 64); do printf ' "smtp://127.0.50.%d?pref=10"' "$i"; done
  printf ' )\nremote_smtp_port = %d\nmax_outbound_connections = 10000\n' "$port"
} >"$out/spread.conf"
for threads in 1 2; do
  for conc in 32 128; do
    echo "== threads $threads, concurrency $conc, $sessions sessions, hold 0 ms"
    "$build/mxsched" load --config "$out/spread.conf" --domains a.example,b.example,c.example \
      --sessions "$sessions" --concurrency "$conc" --threads "$threads" --max-seconds 120 \
      --json "$out/load-t$threads-c$conc.json" | head -2
  done
done
