#!/usr/bin/env bash
# The fleet-wide keys beyond a host's and a domain's (docs/DESIGN.md §7, key layout): three
# `mxsched load` processes share limits through a real redis-server while the farm counts
# what the receiver saw — per source address for bindings, over every address for a
# provider pattern.
#   per_binding_host_limit_across_workers
#       a Binding_Group of two bindings (sources .2 and .3), each with Binding::Host limit 3,
#       and a Host total of 5: the farm's peak per source <= 3, on the address <= 5, both
#       sources used, every session connected
#   per_binding_domain_limit_across_workers
#       a binding (source .4) with Binding::Domain limit 2: the farm's peak from .4 <= 2
#   provider_limit_across_workers
#       Host "*.prov.test" limit 4 over three MX names (dnsmasq) of three domains: the farm's
#       peak over all of its addresses <= 4 (skipped without dnsmasq)
# Every process here is started by this script, bounded (`timeout -s KILL`), and stopped by
# its PID. Exit 77 (skip) when redis-server is missing. KEEP_WORK=1 keeps the files.
set -u
bin=$1
DNSMASQ=$(command -v dnsmasq || ls /usr/sbin/dnsmasq 2>/dev/null)
HARNESS_SIGNAL=KILL
. "$(dirname "$0")/harness.sh"  # $work, $pids, cleanup, fail, wait_for, free_port
. "$(dirname "$0")/redis_peer.sh"  # skip without Redis; $rport, rcli, child_of, start_redis
port=$(free_port); dport=$(free_port)
claim_test_net
net="$test_net.79"
name="k$$"

start_redis 120

# farm NAME LISTEN: a farm in the background, its stats in NAME.json.
farm() {
  timeout -s KILL 120 "$bin" farm --listen "$2" --stats "$work/$1.json" --max-seconds 100 \
    2>"$work/$1.err" &
  pids+=($!)
  wait_for "grep -q listening \"$work/$1.err\""
}
# load NAME ARGS...: a worker in the background (its JSON in NAME.json); PID in $last.
load() {
  local n=$1; shift
  timeout -s KILL 60 "$bin" load --config "$conf" --json "$work/$n.json" \
    --connect-timeout-ms 5000 --banner-timeout-ms 5000 --wait-ms 30000 --max-seconds 50 \
    "$@" >"$work/$n.out" 2>"$work/$n.err" &
  last=$!
  pids+=($last)
}
# three KEY ARGS...: three workers w1..w3 with the same arguments; KEY (the fleet key the
# scenario is about) is seen in Redis while they run; fails unless all exit 0.
three() {
  local key=$1 p=() x; shift
  for w in w1 w2 w3; do load "$w" "$@"; p+=($last); done
  wait_for '[ "$(rcli exists "$key")" = 1 ]'
  for x in "${p[@]}"; do wait "$x" || fail "a worker exited non-zero: $(cat "$work"/w?.out)"; done
}
# check FARM PY: assert PY over the workers' reports r[w1..w3] and the farm's stats s
# (src: the farm's per-source stats by address).
check() {
  python3 - "$work" "$1" "$2" <<'PY' || fail "$2"
import json, sys, os
work, farm, expr = sys.argv[1], sys.argv[2], sys.argv[3]
r = {w: json.load(open(os.path.join(work, w + ".json"))) for w in ("w1", "w2", "w3")}
s = json.load(open(os.path.join(work, farm + ".json")))
src = {x["source"]: x for x in s["sources"]}
ok = eval(expr)
print(("ok: " if ok else "NOT: ") + expr)
if not ok:
    print({k: {x: v[x] for x in ("connected", "deferred", "failed", "cluster")} for k, v in r.items()})
    print("farm addresses", [(a["address"], a["peak"], a["quits"]) for a in s["addresses"]],
          "peak_all_addresses", s["peak_all_addresses"], "sources", s["sources"])
    sys.exit(1)
PY
}
farm_quits() {  # the farm rewrites its stats every second
  python3 -c "import json;print(sum(a['quits'] for a in json.load(open('$work/$1.json'))['addresses']))" 2>/dev/null || echo 0
}

farm f1 "$net.1:$port"
cat >"$work/b.conf" <<CONF
routes = ( "$net.1" )
remote_smtp_port = $port
max_outbound_connections = 64
Host "$net.1" { max_outbound_connections = 5 }
Binding_Group "pool" {
  Binding "b2" { bind_address = "$net.2"  Host "$net.1" { max_outbound_connections = 3 } }
  Binding "b3" { bind_address = "$net.3"  Host "$net.1" { max_outbound_connections = 3 } }
}
Binding "t" { bind_address = "$net.4"  Domain "a.test" { max_outbound_connections = 2 } }
cluster_limits = "redis://127.0.0.1:$rport"
cluster_name = "$name"
cluster_lease_seconds = 6
CONF
conf="$work/b.conf"

echo "== per_binding_host_limit_across_workers"
three "{$name}:bh:b2:$net.1:$port" --domains a.test --binding-group pool --sessions 150 \
  --concurrency 8 --hold-ms 20
wait_for '[ "$(farm_quits f1)" -ge 450 ]'
check f1 'all(r[w]["connected"] == 150 for w in r)'
check f1 'src["'$net.2'"]["peak"] <= 3 and src["'$net.3'"]["peak"] <= 3'
check f1 'src["'$net.2'"]["accepted"] > 0 and src["'$net.3'"]["accepted"] > 0'
check f1 'max(a["peak"] for a in s["addresses"]) <= 5'
check f1 'sum(r[w]["cluster"]["waits"] for w in r) > 0'  # the fleet's keys were contended
check f1 'all(r[w]["cluster"]["redis_errors"] == 0 for w in r)'

echo "== per_binding_domain_limit_across_workers"
three "{$name}:bd:t:a.test" --domains a.test --binding t --sessions 40 --concurrency 4 \
  --hold-ms 20
wait_for '[ "$(farm_quits f1)" -ge 570 ]'
check f1 'all(r[w]["connected"] == 40 for w in r)'
check f1 'src["'$net.4'"]["peak"] <= 2 and src["'$net.4'"]["accepted"] == 120'

echo "== provider_limit_across_workers"
if [ -z "$DNSMASQ" ]; then
  echo "SKIP provider_limit_across_workers: dnsmasq not installed (Debian dnsmasq-base)"
else
  farm f2 "$net.11-$net.13:$port"
  timeout -s KILL 100 "$DNSMASQ" --keep-in-foreground --conf-file=/dev/null --no-resolv \
    --no-hosts --no-negcache --listen-address=127.0.0.1 --bind-interfaces --user=root \
    --pid-file= --port="$dport" --local-ttl=300 --local=/test/ \
    --mx-host=p1.test,mx1.prov.test,10 --mx-host=p2.test,mx2.prov.test,10 \
    --mx-host=p3.test,mx3.prov.test,10 --host-record=mx1.prov.test,$net.11 \
    --host-record=mx2.prov.test,$net.12 --host-record=mx3.prov.test,$net.13 2>/dev/null &
  pids+=($!)
  cat >"$work/p.conf" <<CONF
routes = ( "__mx__" )
prohibited_hosts = ( )   # the MXs are on loopback: opt in
remote_smtp_port = $port
max_outbound_connections = 64
Host "*.prov.test" { max_outbound_connections = 4 }
cluster_limits = "redis://127.0.0.1:$rport"
cluster_name = "$name"
cluster_lease_seconds = 6
CONF
  conf="$work/p.conf"
  # dnsmasq is ready when `route` gets the MX (bounded).
  wait_for '"$bin" route --config "$conf" --dns "127.0.0.1:$dport" p3.test 2>/dev/null | grep -q mx3.prov.test'
  three "{$name}:p:*.prov.test" --dns "127.0.0.1:$dport" --domains p1.test,p2.test,p3.test --sessions 150 \
    --concurrency 8 --hold-ms 20
  wait_for '[ "$(farm_quits f2)" -ge 450 ]'
  check f2 'all(r[w]["connected"] == 150 for w in r)'
  check f2 's["peak_all_addresses"] <= 4'
  check f2 'sum(1 for a in s["addresses"] if a["quits"] > 0) == 3'  # every MX of the pattern
  check f2 'sum(r[w]["cluster"]["waits"] for w in r) > 0'
fi
echo "cluster_fleet_keys_test: all checks passed"
