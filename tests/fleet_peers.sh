# Sourced by the shell tests of a fleet: `mxsched load` workers sharing limits through a real
# redis-server, in front of one farm (cluster_message_throttle, cluster_reuse,
# cluster_throttle). The caller sets $bin (the mxsched binary) and $fleet_net (the third
# octet of its addresses). Sources harness.sh (peers end by SIGKILL) and redis_peer.sh (exit
# 77 without Redis) and starts redis-server (start_redis 200, or ${fleet_redis_seconds}).
# Gives:
#   $port, $net, $name   the farm's port, "$test_net.$fleet_net" (the farm listens on
#                        $net.1), a cluster name of this run's own
#   start_farm ARGS      a fresh farm (its rate peaks from zero) on $net.1:$port writing
#                        $work/farm.json, MAIL and accept rates counted in windows of 1 s and
#                        5 s, bounded by --max-seconds ${farm_seconds:-100}; FARM_BIN=...
#                        runs another binary for it. ARGS: more farm options
#   stop_farm            SIGTERM: the farm writes its final stats (every accept and MAIL)
#   worker NAME BOUND CONF ARGS
#                        `mxsched load --config CONF --domains a.test ARGS` in the
#                        background under `timeout -s KILL BOUND`, 5 s connect and banner
#                        timeouts, waiting ${wait_ms:-30000} ms for a slot; its report in
#                        $work/NAME.json, its output in NAME.out and NAME.err, the PID in $last
#   wait_workers PID...  fails unless every one exits 0
#   metric I DECIDED     slots (and message asks) worker k$I decided "redis" or "local", from
#                        its /metrics on 127.0.0.1:${radmin[I]}
#   restart_redis_under_workers N
#                        SIGKILLs Redis under workers k1 and k2; once each has decided N
#                        slots locally (share mode), starts Redis again and waits until both
#                        say "limits shared again"
#   stop_workers         SIGTERM to workers k1 and k2 (PIDs ${kp[1]}, ${kp[2]}): each must
#                        exit 143
#   message_rate_conf RATE
#                        prints a worker's configuration: $net.1:$port under a fleet
#                        message throttle of RATE (reuse on: idle_timeout 5 s, 100 messages
#                        a connection; 6 s leases)
HARNESS_SIGNAL=KILL
. "$(dirname "${BASH_SOURCE[0]}")/harness.sh"  # $work, $pids, cleanup, fail, wait_for, free_port
. "$(dirname "${BASH_SOURCE[0]}")/redis_peer.sh"  # skip without Redis; $rport, rcli, child_of, start_redis
port=$(free_port)
claim_test_net
net="$test_net.$fleet_net"
name="r$$"
start_redis "${fleet_redis_seconds:-200}"

start_farm() {
  rm -f "$work/farm.json"
  "${FARM_BIN:-$bin}" farm --listen "$net.1:$port" --stats "$work/farm.json" \
    --max-seconds "${farm_seconds:-100}" --rate-window-ms 1000 --rate-window-ms 5000 "$@" \
    2>"$work/farm.err" &
  farm_pid=$!
  pids+=($farm_pid)
  wait_for 'grep -q listening "$work/farm.err"'
}
stop_farm() {
  kill -TERM "$farm_pid"; wait "$farm_pid" 2>/dev/null
  [ -s "$work/farm.json" ] || fail "no farm stats"
}
worker() {
  local n=$1 bound=$2 conf=$3
  shift 3
  timeout -s KILL "$bound" "$bin" load --config "$conf" --domains a.test \
    --json "$work/$n.json" --connect-timeout-ms 5000 --banner-timeout-ms 5000 --wait-ms "${wait_ms:-30000}" \
    "$@" >"$work/$n.out" 2>"$work/$n.err" &
  last=$!
  pids+=($last)
}
wait_workers() {
  local x
  for x in "$@"; do wait "$x" || fail "a worker exited non-zero: $(cat "$work"/*.out)"; done
}
metric() {
  curl -sf "127.0.0.1:${radmin[$1]}/metrics" |
    sed -n "s/^mxsched_cluster_leases_total{decided=\"$2\"} \([0-9]*\)\$/\1/p"
}
restart_redis_under_workers() {
  kill -9 "$redis_pid"
  wait_for 'grep -q unreachable "$work/k1.err" && grep -q unreachable "$work/k2.err"'
  wait_for "[ \"\$(metric 1 local)\" -ge $1 ] && [ \"\$(metric 2 local)\" -ge $1 ]"
  start_redis 200
  wait_for 'grep -q "limits shared again" "$work/k1.err" && grep -q "limits shared again" "$work/k2.err"'
}
stop_workers() {
  local i rc
  for i in 1 2; do
    kill -TERM "$(child_of "${kp[$i]}")"
    wait "${kp[$i]}"; rc=$?
    [ $rc -eq 143 ] || fail "k$i exited $rc, not 143 (stopped by SIGTERM)"
  done
}

message_rate_conf() {
  cat <<CONF
routes = ( "$net.1" )
remote_smtp_port = $port
max_outbound_connections = 64
outbound_throttle_messages = "$1"
idle_timeout = 5
max_deliveries_per_connection = 100
cluster_limits = "redis://127.0.0.1:$rport"
cluster_name = "$name"
cluster_lease_seconds = 6
CONF
}
