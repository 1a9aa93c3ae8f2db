#!/usr/bin/env bash
# The CLI contract end to end with real peers: `mxsched farm` (as a child process),
# dnsmasq for DNS, `mxsched route --dns` and `mxsched load --dns --json`.
# Ends only the processes it started, by PID. Exit 77 (skip) when dnsmasq is missing.
set -u
bin=$1
DNSMASQ=$(command -v dnsmasq || ls /usr/sbin/dnsmasq 2>/dev/null)
[ -n "$DNSMASQ" ] || { echo "SKIP: dnsmasq not installed (Debian dnsmasq-base)"; exit 77; }
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done; rm -rf "$work"; }
trap cleanup EXIT
fail() { echo "FAIL: $*"; exit 1; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=$(free_port); dport=$(free_port)
net="127.$((30 + $$ % 200)).77"

"$bin" farm --listen "$net.1-$net.4:$port" --fault "$net.4=refuse" --stats "$work/farm.json" \
  --max-seconds 120 2>"$work/farm.err" &
pids+=($!); farm_pid=$!
"$DNSMASQ" --keep-in-foreground --conf-file=/dev/null --no-resolv --no-hosts --no-negcache \
  --listen-address=127.0.0.1 --bind-interfaces --user=root --pid-file= --port="$dport" \
  --local-ttl=300 --local=/test/ \
  --mx-host=x.test,mx1.x.test,10 --mx-host=x.test,mx2.x.test,10 \
  --mx-host=x.test,mx3.x.test,10 --mx-host=x.test,mx4.x.test,10 \
  --host-record=mx1.x.test,$net.1 --host-record=mx2.x.test,$net.2 \
  --host-record=mx3.x.test,$net.3 --host-record=mx4.x.test,$net.4 2>/dev/null &
pids+=($!)
for i in $(seq 50); do grep -q listening "$work/farm.err" 2>/dev/null && break; sleep 0.1; done
sleep 0.3
cat >"$work/mx.conf" <<CONF
routes = ( "__mx__" )
prohibited_hosts = ( )   # the MXs are on loopback: opt in
remote_smtp_port = $port
max_outbound_connections = 64
CONF

out=$("$bin" route --config "$work/mx.conf" --dns "127.0.0.1:$dport" x.test) || fail "route --dns: $out"
echo "$out"
grep -q "x.test: ready, 1 tier(s), 4 host(s)" <<<"$out" || fail "route --dns shows 4 MXs"
grep -q "mx1.x.test" <<<"$out" || fail "MX names shown"

"$bin" load --config "$work/mx.conf" --dns "127.0.0.1:$dport" --domains x.test \
  --sessions 3000 --concurrency 24 --threads 2 --hold-ms 1 --json "$work/load.json" \
  --connect-timeout-ms 2000 --banner-timeout-ms 2000 || fail "load exited $?"
python3 - "$work/load.json" <<'PY' || fail "load report"
import json, sys
r = json.load(open(sys.argv[1]))
print({k: r[k] for k in ("sessions", "connected", "deferred", "failed", "sessions_per_second", "connect_p50_us", "connect_p99_us")})
assert r["connected"] + r["deferred"] + r["failed"] == 3000, r
assert r["connected"] == 3000, r  # the refused MX is failed over, not fatal
# Sessions that arrived before DNS answered were woken by the answer, not by their 30 s
# DNS-wait timer (a lost wake-up across threads once made this 30 s).
assert r["connect_max_us"] < 5_000_000, r["connect_max_us"]
assert len(r["hosts"]) == 3, r["hosts"]
for h, v in r["hosts"].items():
    assert 700 <= v["sessions"] <= 1300, (h, v)  # even spread over the 3 reachable MXs
PY
kill "$farm_pid"; wait "$farm_pid"
python3 - "$work/farm.json" <<'PY' || fail "farm stats"
import json, sys
s = json.load(open(sys.argv[1]))
quits = sum(a["quits"] for a in s["addresses"])
assert quits == 3000, s  # every session said QUIT to a real server
assert all(a["current"] == 0 for a in s["addresses"]), s
PY
echo "cli_farm_load_test: all checks passed"
