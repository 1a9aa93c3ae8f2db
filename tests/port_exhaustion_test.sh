#!/usr/bin/env bash
# Ephemeral port exhaustion, for real: in a private network namespace (unshare -n) whose
# ip_local_port_range holds 4 ports, 32 sessions in flight to one destination run out of
# source ports. Every session must still end — the starved ones deferred with a reason that
# names the cause (EADDRNOTAVAIL: ephemeral ports exhausted) — and nothing is lost.
# Exit 77 (skip) without root or without unshare/ip/sysctl.
set -u
bin=$(readlink -f "$1")
[ "$(id -u)" -eq 0 ] || { echo "SKIP: needs root for a network namespace"; exit 77; }
for t in unshare ip sysctl python3; do
  command -v "$t" >/dev/null || { echo "SKIP: $t not installed"; exit 77; }
done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat >"$work/one.conf" <<'CONF'
routes = ( "smtp://127.0.0.1?port=2525" )
max_outbound_connections = 1000
CONF
unshare -n bash -c '
  set -e
  ip link set lo up
  sysctl -q -w net.ipv4.ip_local_port_range="40000 40003"
  "$1" farm --listen 127.0.0.1:2525 --max-seconds 60 2>"$2/farm.err" &
  farm=$!
  for i in $(seq 300); do grep -q listening "$2/farm.err" && break; sleep 0.1; done
  "$1" load --config "$2/one.conf" --domains a.example --sessions 200 --concurrency 32 \
    --hold-ms 20 --max-attempts 1 --json "$2/load.json" >/dev/null
  kill $farm; wait $farm 2>/dev/null || true
' _ "$bin" "$work" || { echo "FAIL: namespace run"; exit 1; }
python3 - "$work/load.json" <<'PY' || { echo "FAIL: report"; exit 1; }
import json, sys
r = json.load(open(sys.argv[1]))
print({k: r[k] for k in ("sessions", "connected", "deferred", "failed")}, r["examples"])
assert r["connected"] + r["deferred"] + r["failed"] == 200, r
assert r["connected"] > 0, r
assert r["deferred"] > 0, r  # 4 ports for 32 in flight: some must starve
assert any("ephemeral ports exhausted" in v for v in r["examples"].values()), r["examples"]
PY
echo "port_exhaustion_test: all checks passed"
