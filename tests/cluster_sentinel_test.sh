#!/usr/bin/env bash
# Cluster limits through Redis Sentinel (docs/DESIGN.md §7, Sentinel): a real master, a
# replica and one sentinel (quorum 1) on loopback, the farm counting server-side, and two
# `mxsched load` workers with cluster_limits = "redis-sentinel://.../mm". The master is
# SIGKILLed under load: the sentinel promotes the replica, the workers find it (ROLE
# master), re-register their leases there, deliver on, and the farm never counts more than
# the Host limit of 8. Every process is started here, bounded, and stopped by its PID.
# Exit 77 (skip) when redis-server or redis-sentinel is missing.
set -u
bin=$1
REDIS=$(command -v redis-server); SENT=$(command -v redis-sentinel); CLI=$(command -v redis-cli)
[ -n "$REDIS" ] && [ -n "$SENT" ] && [ -n "$CLI" ] || { echo "SKIP: redis-server/redis-sentinel not installed"; exit 77; }
HARNESS_SIGNAL=KILL
. "$(dirname "$0")/harness.sh"  # $work, $pids, cleanup, fail, wait_for, free_port
m=$(free_port); r=$(free_port); s=$(free_port); fp=$(free_port)
redis() { timeout -s KILL 120 "$REDIS" --port "$1" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" --logfile "" "${@:2}" >/dev/null 2>&1 & }
redis "$m"; master=$!; pids+=($master)
redis "$r" --replicaof 127.0.0.1 "$m"; pids+=($!)
cat >"$work/s.conf" <<EOF
port $s
dir $work
bind 127.0.0.1
sentinel monitor mm 127.0.0.1 $m 1
sentinel down-after-milliseconds mm 1000
sentinel failover-timeout mm 5000
EOF
timeout -s KILL 120 "$SENT" "$work/s.conf" >"$work/sentinel.log" 2>&1 & pids+=($!)
wait_for '"$CLI" -p $s sentinel get-master-addr-by-name mm 2>/dev/null | grep -q "^$m$"'
wait_for '"$CLI" -p $r info replication 2>/dev/null | grep -q master_link_status:up'
timeout -s KILL 120 "$bin" farm --listen "127.0.0.1:$fp" --stats "$work/farm.json" --max-seconds 100 \
  2>"$work/farm.err" & pids+=($!)
wait_for 'grep -q listening "$work/farm.err"'
cat >"$work/c.conf" <<EOF
routes = ( "127.0.0.1" )
remote_smtp_port = $fp
max_outbound_connections = 64
Host "127.0.0.1" { max_outbound_connections = 8 }
cluster_limits = "redis-sentinel://127.0.0.1:$s/mm"
cluster_name = "st"
cluster_lease_seconds = 6
EOF
hostkey="{st}:h:127.0.0.1:$fp"
for i in 1 2; do
  timeout -s KILL 90 "$bin" load --config "$work/c.conf" --domains a.test --json "$work/w$i.json" \
    --sessions 1000000 --concurrency 10 --hold-ms 40 --max-seconds 60 >"$work/w$i.out" 2>"$work/w$i.err" &
  w[$i]=$!; pids+=(${w[$i]})
done
wait_for '[ "$("$CLI" -p $m zcard "$hostkey" 2>/dev/null)" = 8 ]'
wait_for '[ "$("$CLI" -p $m zcard "{st}:workers" 2>/dev/null)" = 2 ]'
# The sentinel learns of the replica from the master's INFO (every 10 s): without it there is
# no one to promote.
wait_for '"$CLI" -p $s sentinel replicas mm 2>/dev/null | grep -qx "$r"'
kill -9 "$(pgrep -P $master)" 2>/dev/null; kill -9 "$master"
wait_for '"$CLI" -p $s sentinel get-master-addr-by-name mm 2>/dev/null | grep -q "^$r$"'
wait_for 'grep -q "limits shared again" "$work/w1.err" && grep -q "limits shared again" "$work/w2.err"'
# Delivery goes on through the new master, for both workers: each is granted leases there
# it did not hold at the rejoin (ids are WORKER.LOOP:SEQ, a new one per grant through Redis).
# Not just "the key fills again": a worker that held nothing when the master died may open
# nothing until the fleet is back (docs/DESIGN.md §7 rule 6: no key grows past what it held at the
# switch), and if the other held all 8 at the kill, only the rejoin lets it in.
"$CLI" -p $r zrange "$hostkey" 0 -1 >"$work/at_rejoin" 2>/dev/null
: >"$work/new_ids"
new_from_both() {
  "$CLI" -p $r zrange "$hostkey" 0 -1 2>/dev/null | grep -vxF -f "$work/at_rejoin" >>"$work/new_ids"
  [ "$(cut -d. -f1 "$work/new_ids" | sort -u | grep -c .)" -ge 2 ]
}
wait_for new_from_both
for i in 1 2; do
  kill -TERM "$(pgrep -P ${w[$i]})"; wait "${w[$i]}"; rc=$?
  [ $rc -eq 143 ] || fail "w$i exited $rc, not 143 (stopped by SIGTERM)"
done
stopped=$(date +%s.%N)
wait_for '[ "$(echo "$(stat -c %.9Y "$work/farm.json") > $stopped" | bc)" = 1 ]'
python3 - "$work" <<'PY' || fail "checks"
import json, sys, os
w = sys.argv[1]
r = [json.load(open(os.path.join(w, f"w{i}.json"))) for i in (1, 2)]
s = json.load(open(os.path.join(w, "farm.json")))
peak = max(a["peak"] for a in s["addresses"])
print("farm peak", peak, "connected", [x["connected"] for x in r], "modes", [x["cluster"]["mode"] for x in r])
assert peak <= 8, peak
assert all(x["failed"] == 0 for x in r)
assert all(x["cluster"]["mode"] == "normal" and x["cluster"]["mode_switches"] == 2 for x in r)
assert all(x["connected"] > 0 for x in r)
PY
echo "cluster_sentinel_test: all checks passed"
