#!/usr/bin/env bash
# `mxsched demo` runs from nothing (in-process farm), prints both scenarios, and shows the
# Momentum's warning: the global route delivers fewer sessions/s than MX spread, at the limit.
set -u
bin=$(realpath "$1")
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

# A hostile --out: its name reaches no shell (gnuplot gets an argv and relative names), and a
# symlink planted where an output goes is replaced, not followed.
odd="$out/a\"\$(touch PWNED)'b"
mkdir "$odd" && echo keep >"$out/target" && ln -s "$out/target" "$odd/demo.csv"
( cd "$out" && "$bin" demo --seconds 1 --out "$odd" >/dev/null 2>&1 ) || fail "demo with an odd --out"
[ ! -e "$out/PWNED" ] && [ ! -e "$odd/PWNED" ] || fail "--out's name ran as a command"
[ "$(cat "$out/target")" = keep ] || fail "demo.csv followed a planted symlink"
[ -f "$odd/demo.csv" ] && [ ! -L "$odd/demo.csv" ] && [ -s "$odd/demo.json" ] || fail "odd --out outputs"
echo "cli_demo_test: all checks passed"
