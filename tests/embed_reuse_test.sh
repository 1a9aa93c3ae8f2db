#!/usr/bin/env bash
# README's "With I/O" worker, as an embedder writes it (tests/embed_worker.cc: public headers
# only), against the farm: messages over reused connections through a Binding_Group chosen
# per message, under both throttles, then Stop.
#   local        every message delivered once (the farm's MAIL count), connections reused,
#                both bindings' source addresses used, no host over its limit, and after
#                Stop every connection the farm accepted ended with QUIT
#   fleet        the same with cluster_limits (a real redis-server; skipped without one)
#   embed_reuse_test.sh MXSCHED_CLI EMBED_WORKER
set -u
bin=$1 worker=$2
HARNESS_SIGNAL=KILL
. "$(dirname "$0")/harness.sh"  # $work, $pids, cleanup, fail, wait_for, free_port
port=$(free_port)
claim_test_net
net="$test_net.79"

timeout -s KILL 200 "$bin" farm --listen "$net.1-$net.2:$port" --stats "$work/farm.json" \
  --max-seconds 180 2>"$work/farm.err" &
pids+=($!)
wait_for 'grep -q listening "$work/farm.err"'

conf() {  # EXTRA: the worker's configuration (hosts of limit 3, two source addresses)
  cat <<CONF
routes = ( "smtp://$net.1?pref=10" "smtp://$net.2?pref=10" )
remote_smtp_port = $port
prohibited_hosts = ( )
Binding_Group "pool" {
  Binding "b1" { bind_address = "$test_net.80.10" }
  Binding "b2" { bind_address = "$test_net.80.11" }
}
Host "$net.1" { max_outbound_connections = 3 }
Host "$net.2" { max_outbound_connections = 3 }
outbound_throttle_connections = "100"
outbound_throttle_messages = "1000"
idle_timeout = 10
max_deliveries_per_connection = 10
$1
CONF
}
farm_stat() { python3 - "$work/farm.json" "$1" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
a = d["addresses"]
print({"messages": sum(x["messages"] for x in a), "total": sum(x["total"] for x in a),
       "quits": sum(x["quits"] for x in a), "current": sum(x["current"] for x in a),
       "peak": max(x["peak"] for x in a),
       "sources": sum(1 for s in d.get("sources", []) if s["accepted"] > 0)}[sys.argv[2]])
PY
}

run() {  # NAME MESSAGES_BEFORE EXTRA_CONF
  local name=$1 before=$2
  conf "$3" >"$work/$name.conf"
  timeout -s KILL 120 "$worker" "$work/$name.conf" pool 200 8 a.test b.test \
    >"$work/$name.out" 2>"$work/$name.err" || { cat "$work/$name.out"; fail "$name: worker exited $?"; }
  grep -q "^delivered 200 .* deferred 0 failed 0 parked_after_stop 0$" "$work/$name.out" \
    || { cat "$work/$name.out"; fail "$name: not every message delivered, or parked left after Stop"; }
  local reused; reused=$(sed -n 's/.* reused \([0-9]*\) .*/\1/p' "$work/$name.out")
  [ "$reused" -ge 100 ] || fail "$name: only $reused messages over reused connections"
  grep -q "^binding b1 " "$work/$name.out" && grep -q "^binding b2 " "$work/$name.out" \
    || { cat "$work/$name.out"; fail "$name: the group's two bindings were not both used"; }
  # The farm's counts: every message once; after Stop no connection open and each ended
  # with QUIT (the stats file is rewritten every second).
  wait_for '[ "$(farm_stat messages)" -eq $((before + 200)) ] && [ "$(farm_stat current)" -eq 0 ]'
  [ "$(farm_stat quits)" -eq "$(farm_stat total)" ] || fail "$name: $(farm_stat total) connections, $(farm_stat quits) QUITs"
  [ "$(farm_stat peak)" -le 3 ] || fail "$name: a host saw $(farm_stat peak) connections, limit 3"
  [ "$(farm_stat sources)" -eq 2 ] || fail "$name: the farm saw $(farm_stat sources) source addresses"
  echo "$name: $(head -1 "$work/$name.out"); farm: $(farm_stat total) connections"
}

run local 0 ""
if REDIS=$(command -v redis-server) && command -v redis-cli >/dev/null; then
  . "$(dirname "$0")/redis_peer.sh"  # $rport, rcli, start_redis
  start_redis 150
  run fleet 200 "cluster_limits = \"redis://127.0.0.1:$rport\"
cluster_name = \"embed$$\""
else
  echo "SKIP fleet: redis-server not installed"
fi
echo "embed_reuse_test: all checks passed"
