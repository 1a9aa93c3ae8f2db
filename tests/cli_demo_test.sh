#!/usr/bin/env bash
# `mxsched demo` runs from nothing (in-process farm), prints both scenarios, and shows the
# Momentum's warning: the global route delivers fewer sessions/s than MX spread, at the limit.
set -u
bin=$1
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
text=$("$bin" demo --seconds 1 --out "$out" 2>/dev/null) || fail "demo exited $?"
echo "$text"
g=$(grep "^| global route |" <<<"$text" | awk -F'|' '{print $4+0}')
s=$(grep "^| MX spread |" <<<"$text" | awk -F'|' '{print $4+0}')
[ -n "$g" ] && [ -n "$s" ] || fail "table rows missing"
[ "$g" -gt 0 ] || fail "global route delivered nothing"
[ "$s" -gt $((g * 2)) ] || fail "MX spread ($s/s) not well above global route ($g/s)"
grep -q "^| global route | 4 |.*| 8 (limit 8) |$" <<<"$text" || fail "global route peak must reach and not pass 8"
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); assert set(d)=={"global route","MX spread"}' "$out/demo.json" || fail "demo.json"
[ -s "$out/demo.csv" ] || fail "demo.csv"
echo "cli_demo_test: all checks passed"
