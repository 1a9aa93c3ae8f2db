#!/usr/bin/env bash
# The demo's point as a number: MX spread's connected/s over the global route's, from
# `mxsched demo`'s demo.json (CPU-bound, so a benchmark, not a ctest: issue 18 item 7).
# Target >= 2x (the global route is capped at 4 hosts x 8 / 20 ms = 1,600 sessions/s; MX
# spread only by the client and CPU). Exit 1 below the target.
#   bench/demo_ratio.sh BUILD_DIR [SECONDS]
set -euo pipefail
build=${1:-build}
seconds=${2:-4}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
"$build/mxsched" demo --seconds "$seconds" --out "$out" >/dev/null 2>&1
python3 - "$out/demo.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
g, s = d["global route"]["connected_per_second"], d["MX spread"]["connected_per_second"]
ratio = s / g if g > 0 else float("inf")
print(f"global route {g:,.0f}/s, MX spread {s:,.0f}/s: {ratio:.2f}x (target >= 2x)")
sys.exit(0 if ratio >= 2 else 1)
PY
