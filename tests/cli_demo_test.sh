#!/usr/bin/env bash
# `mxsched demo` runs from nothing (in-process farm), prints both scenarios — the global route
# at its limit — and writes demo.json with readable names (issue 24 item 2).
set -u
bin=$(realpath "$1")
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
text=$("$bin" demo --seconds 1 --out "$out" 2>/dev/null) || fail "demo exited $?"
echo "$text"
# Rows and their columns: | name | hosts | connected/s | wait | connect | deferred | stopped
# at end of run | failed | peak |. Only "delivered something", never how fast against the
# other row: that ratio is CPU-bound, so it is a benchmark (bench/demo_ratio.sh).
grep -q "| deferred | stopped at end of run | failed |" <<<"$text" || fail "table header"
g=$(grep "^| global route |" <<<"$text" | awk -F'|' '{print $4+0}')
s=$(grep "^| MX spread |" <<<"$text" | awk -F'|' '{print $4+0}')
[ -n "$g" ] && [ -n "$s" ] || fail "table rows missing"
[ "$g" -gt 0 ] && [ "$s" -gt 0 ] || fail "a scenario delivered nothing"
grep -q "^| global route | 4 |.*| 8 (limit 8) |$" <<<"$text" || fail "global route peak must reach and not pass 8"
# demo.json: plain names, the table's numbers, every started session accounted once; sessions
# cut short by the end of the run are not deferred; no "not_started" (the demo asks for as
# many sessions as fit); null where no session waited, and then the table shows "—".
python3 - "$out/demo.json" "$text" <<'PY' || fail "demo.json"
import json, sys
d = json.load(open(sys.argv[1]))
text = sys.argv[2]
assert set(d) == {"global route", "MX spread"}, d.keys()
for name, sc in d.items():
    assert "not_started" not in sc and "not_started" not in sc["details"], name
    assert sc["connected"] + sc["deferred"] + sc["stopped_at_end_of_run"] + sc["failed"] \
        == sc["sessions_started"], name
    assert sc["stopped_at_end_of_run"] == sc["details"]["deferrals"].get("stopped", 0), name
    row = [c.strip() for c in next(l for l in text.splitlines()
                                    if l.startswith(f"| {name} |")).split("|")[1:-1]]
    assert int(row[5]) == sc["deferred"] and int(row[6]) == sc["stopped_at_end_of_run"], row
    if sc["sessions_that_waited_for_a_slot"] == 0:
        assert sc["slot_wait_p50_ms"] is None and row[3] == "\u2014", (name, row)
    else:
        assert sc["slot_wait_p50_ms"] is not None and row[3].endswith(" ms"), (name, row)
# The global route waits (32 slots, 256 in flight): its wait column has numbers.
assert d["global route"]["sessions_that_waited_for_a_slot"] > 0
PY
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
