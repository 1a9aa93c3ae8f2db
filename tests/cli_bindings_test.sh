#!/usr/bin/env bash
# Egress bindings end to end through the CLI (docs/DESIGN.md §1 rule 13, §9): a `mxsched
# farm` (a child process) that resets every connection from one source address, and
# `mxsched load --binding-group` through a group of two bindings. What the farm counted per
# source address (its --stats JSON) is what the receiver saw: the blocked source tried only
# a handful of times, the other carrying every session and never more than its
# Binding::Host limit at once. Also: --binding with an unknown name, and --binding with
# --binding-group together, are refused.
# Ends only the processes it started, by PID; bounded in sessions and time (a few seconds).
set -u
bin=$1
. "$(dirname "$0")/harness.sh"  # $work, $pids, cleanup, fail, free_port, claim_test_net
port=$(free_port)
claim_test_net
net="$test_net.21"

err=$("$bin" load --config /dev/null --domains a.test --binding x --binding-group y 2>&1); rc=$?
[ $rc -eq 2 ] && grep -q -- "--binding" <<<"$err" || fail "--binding with --binding-group ($rc): $err"

"$bin" farm --listen "$net.1:$port" --source-fault "$net.2=reset" --stats "$work/farm.json" \
  --max-seconds 60 2>"$work/farm.err" &
pids+=($!)
for i in $(seq 300); do grep -q listening "$work/farm.err" 2>/dev/null && break; sleep 0.1; done
grep -q listening "$work/farm.err" || fail "farm did not start: $(cat "$work/farm.err")"
cat >"$work/b.conf" <<CONF
routes = ( "$net.1" )
remote_smtp_port = $port
Host "$net.1" { max_outbound_connections = 10 }
Binding_Group "pool" {
  Binding "b2" { bind_address = "$net.2"  Host "$net.1" { max_outbound_connections = 3 } }
  Binding "b3" { bind_address = "$net.3"  Host "$net.1" { max_outbound_connections = 3 } }
}
CONF

"$bin" load --config "$work/b.conf" --domains example.com --binding-group pool \
  --sessions 120 --concurrency 6 --hold-ms 10 --max-seconds 50 --json "$work/load.json" \
  >"$work/load.out" || fail "load exited $?: $(cat "$work/load.out")"
cat "$work/load.out"
grep -q '^per binding' "$work/load.out" || fail "the text report has a per-binding table"

# Unknown binding: every session deferred with the reason, exit 1 (nothing connected).
"$bin" load --config "$work/b.conf" --domains example.com --binding nope --sessions 3 \
  --json "$work/unknown.json" >"$work/unknown.out"; rc=$?
[ $rc -eq 1 ] && grep -q 'unknown binding or binding group \\"nope\\"' "$work/unknown.json" \
  || fail "unknown binding ($rc): $(cat "$work/unknown.out")"

kill "${pids[0]}"; wait "${pids[0]}" 2>/dev/null
python3 - "$work/farm.json" "$work/load.json" "$net" <<'PY' || fail "counts"
import json, sys
farm = json.load(open(sys.argv[1])); load = json.load(open(sys.argv[2])); net = sys.argv[3]
src = {s["source"]: s for s in farm["sources"]}
print("farm sources:", src)
print("load bindings:", load["bindings"])
assert load["connected"] == 120, load["connected"]
b3 = src[net + ".3"]
assert b3["accepted"] == 120, b3          # everything went out through the other source
assert b3["peak"] <= 3, b3                # its Binding::Host limit, as the receiver counted
assert src[net + ".2"]["accepted"] <= 6, src  # the blocked source: only a handful of tries
assert load["bindings"]["b3"]["sessions"] == 120
assert load["bindings"]["b2"]["hosts_failed"] == 1
assert set(src) <= {net + ".2", net + ".3"}, src
PY
echo PASS
