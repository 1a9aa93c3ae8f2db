#!/usr/bin/env bash
# A receiver that pushes back (docs/DESIGN.md §6): `mxsched farm` serving 4 sessions at once and
# answering the rest "421 4.7.0 too many connections from your IP" (fault cap:4); `mxsched
# load` runs SESSIONS sessions at concurrency 16, hold 20 ms, waiting for slots — once with
# adaptive_concurrency (the default) and once with it off (the old behaviour: 421 = failed).
# Bounded in count and time. Prints a table: connected share, 421s per session (server-side
# count from the farm), throughput against what 4 concurrent connections carry (4 / 20 ms).
#   bench/pushback.sh BUILD_DIR [SESSIONS] [OUT_DIR]
# Run it in a private network namespace: unshare -n sh -c 'ip link set lo up && bench/pushback.sh build'
set -euo pipefail
build=${1:-build}
sessions=${2:-2000}
out=${3:-$(mktemp -d)}
mkdir -p "$out"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
for mode in on off; do
  "$build/mxsched" farm --listen "127.0.60.1:$port" --fault "127.0.60.1=cap:4" \
    --stats "$out/farm-$mode.json" --max-seconds 300 2>/dev/null &
  farm=$!
  sleep 0.5
  adaptive=$([ $mode = on ] && echo true || echo false)
  printf 'routes = ( "smtp://127.0.60.1" )\nremote_smtp_port = %d\nadaptive_concurrency = %s\n' \
    "$port" "$adaptive" >"$out/capped-$mode.conf"
  "$build/mxsched" load --config "$out/capped-$mode.conf" --domains capped.example \
    --sessions "$sessions" --concurrency 16 --hold-ms 20 --wait-ms 60000 --threads 1 \
    --max-seconds 120 --json "$out/load-$mode.json" >"$out/load-$mode.txt"
  kill $farm; wait $farm 2>/dev/null || true
done
python3 - "$out" "$sessions" <<'PY'
import json, sys
out, n = sys.argv[1], int(sys.argv[2])
print(f"| adaptive_concurrency | connected | 421s / sessions (farm) | busy replies seen | "
      f"connected/s | vs 4 conns / 20 ms (200/s) | effective limit at end |")
print("|---|---|---|---|---|---|---|")
for mode in ("on", "off"):
    load = json.load(open(f"{out}/load-{mode}.json"))
    farm = json.load(open(f"{out}/farm-{mode}.json"))
    rejected = sum(a.get("rejected", 0) for a in farm["addresses"])
    host = next(iter(load["hosts"].values()), {})
    limit = host.get("limit", "?")
    print(f"| {mode} | {load['connected']} / {n} = {100*load['connected']/n:.1f}% | "
          f"{rejected} = {100*rejected/n:.1f}% | {load.get('busy_replies', 0)} | "
          f"{load['connected_per_second']:.0f} | {load['connected_per_second']/200:.2f}x | "
          f"{'unlimited' if limit == -1 else limit} |")
PY
