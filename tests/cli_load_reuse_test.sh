#!/usr/bin/env bash
# `mxsched load --message B --reuse` end to end (docs/DESIGN.md §9, §13 rule 8) against the
# farm: the report's messages, connections, reused, stale and messages per connection
# against the farm's own counts; the same load without --reuse; --reuse without --message
# is a usage error; --pipelining's grouped commands, and with a farm refusing RSETs the
# pipelined RSET's stale path (DESIGN §13 rule 6); `top --once` during a reusing run shows the PARKED column and the
# reuse line. Ends only the processes it started, by PID.
#   cli_load_reuse_test.sh MXSCHED_BINARY
set -u
bin=$1
. "$(dirname "$0")/harness.sh"  # $work, $pids, cleanup, fail, wait_for, free_port, claim_test_net
port=$(free_port); aport=$(free_port)
claim_test_net
net="$test_net.85"

# farm NAME [FLAG...]: a fresh farm on .1 and .2 (its stats in NAME.json); PID in $farm_pid.
farm() {
  timeout -s KILL 120 "$bin" farm --listen "$net.1-$net.2:$port" --stats "$work/$1.json" \
    --max-seconds 100 "${@:2}" 2>"$work/$1.err" &
  farm_pid=$!; pids+=($!)
  wait_for "grep -q listening \"$work/$1.err\""
}
stop_farm() {  # by PID; it writes its final stats on SIGTERM
  kill -TERM "$farm_pid"; wait "$farm_pid" 2>/dev/null
}
cat >"$work/r.conf" <<CONF
routes = ( "smtp://$net.1?pref=10" "smtp://$net.2?pref=10" )
remote_smtp_port = $port
Host "$net.1" { max_outbound_connections = 3 }
Host "$net.2" { max_outbound_connections = 3 }
max_deliveries_per_connection = 10
CONF
load() {
  timeout -s KILL 100 "$bin" load --config "$work/r.conf" --no-dns --domains a.test \
    --connect-timeout-ms 5000 --banner-timeout-ms 5000 --wait-ms 30000 --max-seconds 60 "$@"
}
# check NAME PY: PY over the load's report r and the farm's stats s (a: its addresses).
check() {
  python3 - "$work/$1.json" "$work/f$1.json" "$2" <<'PY' || fail "$2"
import json, sys
r = json.load(open(sys.argv[1])); s = json.load(open(sys.argv[2])); a = s["addresses"]
total = sum(x["total"] for x in a); quits = sum(x["quits"] for x in a)
messages = sum(x["messages"] for x in a); peak = max(x["peak"] for x in a)
ok = eval(sys.argv[3])
print(("ok: " if ok else "NOT: ") + sys.argv[3])
if not ok:
    print("report", {k: r[k] for k in ("connected", "deferred", "failed", "reuse", "examples")})
    print("farm", [(x["address"], x["total"], x["quits"], x["messages"], x["peak"]) for x in a])
    sys.exit(1)
PY
}

echo "== load --message 100 --reuse: the report against the farm"
farm freuse
load --sessions 1000 --concurrency 8 --message 100 --reuse --json "$work/reuse.json" \
  >"$work/reuse.out" 2>"$work/reuse.err" || fail "load --reuse: $(cat "$work/reuse.out")"
stop_farm
grep -q '^messages: 1000 over [0-9]* connections opened ([0-9.]* per connection); reuse on: [0-9]* reused, 0 stale; parked closed: ' \
  "$work/reuse.out" || fail "the text report's messages line: $(cat "$work/reuse.out")"
check reuse 'r["connected"] == 1000 and messages == 1000'
check reuse 'r["reuse"]["enabled"] and r["reuse"]["messages"] == 1000'
check reuse 'r["reuse"]["connections"] == total and total <= 200'
check reuse 'r["reuse"]["reused"] + r["reuse"]["connections"] == 1000 and r["reuse"]["stale"] == 0'
check reuse 'abs(r["reuse"]["messages_per_connection"] - 1000 / total) < 1e-9'
check reuse 'r["reuse"]["events"]["max_deliveries"] > 0 and quits == total'
check reuse 'peak <= 3'

echo "== load --message 100 without --reuse: a connection per message"
farm fplain
load --sessions 200 --concurrency 8 --message 100 --json "$work/plain.json" \
  >"$work/plain.out" 2>"$work/plain.err" || fail "load: $(cat "$work/plain.out")"
stop_farm
check plain 'r["connected"] == 200 and total == 200 and quits == 200'
check plain 'not r["reuse"]["enabled"] and r["reuse"]["connections"] == 200 and r["reuse"]["reused"] == 0'
grep -q 'reuse off: 0 reused' "$work/plain.out" || fail "reuse off in the text"

echo "== load --message 100 --reuse --pipelining: MAIL, RCPT, DATA in one write"
farm fpipe
load --sessions 500 --concurrency 8 --message 100 --reuse --pipelining --json "$work/pipe.json" \
  >"$work/pipe.out" 2>"$work/pipe.err" || fail "load --pipelining: $(cat "$work/pipe.out")"
stop_farm
check pipe 'r["connected"] == 500 and messages == 500 and r["failed"] == 0'
check pipe 'r["reuse"]["reused"] > 0 and r["reuse"]["connections"] == total and quits == total'

echo "== --reuse --pipelining, the farm refusing every third RSET: stale, each message once"
farm fstale --rset-fail-every 3
load --sessions 300 --concurrency 8 --message 100 --reuse --pipelining --json "$work/stale.json" \
  >"$work/stale.out" 2>"$work/stale.err" || fail "load stale: $(cat "$work/stale.out")"
stop_farm
refused='sum(x["rsets_refused"] for x in a)'
check stale 'r["connected"] == 300 and messages == 300 and r["failed"] == 0 and r["deferred"] == 0'
check stale "$refused > 0 and r[\"reuse\"][\"stale\"] == $refused"
check stale 'r["reuse"]["reused"] + r["reuse"]["connections"] == 300'
check stale "r[\"reuse\"][\"connections\"] == total and quits + $refused == total"

echo "== --reuse needs --message"
load --sessions 1 --reuse >"$work/bad.out" 2>&1
[ $? = 2 ] || fail "--reuse without --message: want exit 2: $(cat "$work/bad.out")"
grep -q -- '--message' "$work/bad.out" || fail "the error names --message: $(cat "$work/bad.out")"

echo "== top --once during a reusing run"
farm ftop
timeout -s KILL 60 "$bin" load --config "$work/r.conf" --no-dns --domains a.test \
  --sessions 100000000 --concurrency 4 --message 100 --reuse --max-seconds 8 \
  --admin "127.0.0.1:$aport" --json "$work/top.json" >"$work/top.out" 2>"$work/top.err" &
load_pid=$!; pids+=($!)
wait_for "\"$bin\" top --admin 127.0.0.1:$aport --once --interval-ms 200 >\"$work/top.txt\" 2>&1 && grep -q PARKED \"$work/top.txt\""
grep -q '^reuse/s: ' "$work/top.txt" || fail "top's reuse line: $(cat "$work/top.txt")"
grep -q "$net.1:$port" "$work/top.txt" || fail "top's host rows: $(cat "$work/top.txt")"
python3 -c "import urllib.request as u; print(u.urlopen('http://127.0.0.1:$aport/metrics', timeout=5).read().decode())" |
  grep -q '^mxsched_host_parked_connections{host="'"$net.1:$port"'"' || fail "the parked gauge per host"
wait "$load_pid" || fail "the reusing run exited non-zero: $(cat "$work/top.out")"
stop_farm
check top 'r["reuse"]["reused"] > 0 and r["stopped_by"] == "max_seconds"'
echo "cli_load_reuse_test: all checks passed"
