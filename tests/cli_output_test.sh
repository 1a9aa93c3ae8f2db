#!/usr/bin/env bash
# What the CLI tells a user, against real peers (`mxsched farm` as a child process, dnsmasq):
#   route: hosts in a stable order with the marks explained; MX preferences shown with DNS;
#          every route item listed with its protocol and why it is not used; --dns by name
#   load:  waits for a slot by default (no deferrals at a limit), reports the slot wait
#          apart from connect latency, headline rate is connected/s; exit 1 if none connected
#   farm:  a fault for an address it does not serve, an unwritable --stats and an address
#          given twice are errors at start
#   demo:  an --out it cannot write is an error before the run
# Ends only the processes it started, by PID. Exit 77 (skip) when dnsmasq is missing.
set -u
bin=$1
dns_net=93
. "$(dirname "$0")/dnsmasq_peer.sh"  # skip without dnsmasq; harness, $DNSMASQ, $port, $dport, $net

# --- farm: mistakes are errors at start (bounded: a farm that starts anyway stops in 5 s)
p2=$(free_port)
err=$(timeout 60 "$bin" farm --listen "$net.1:$p2" --fault "$net.9=refuse" --max-seconds 5 2>&1); rc=$?
[ $rc -eq 2 ] && grep -q "does not serve" <<<"$err" || fail "farm fault for an unserved address ($rc): $err"
err=$(timeout 60 "$bin" farm --listen "$net.1:$p2" --stats "$work/no/such/dir/s.json" --max-seconds 5 2>&1); rc=$?
[ $rc -eq 2 ] && grep -q -- "--stats .*cannot write" <<<"$err" || fail "farm unwritable --stats ($rc): $err"
err=$(timeout 60 "$bin" farm --listen "$net.1:$p2" --listen "$net.1-$net.2:$p2" --max-seconds 5 2>&1); rc=$?
[ $rc -eq 2 ] && grep -q "$net.1:$p2 is given twice" <<<"$err" || fail "farm address twice ($rc): $err"
err=$(timeout 60 "$bin" farm --listen "$net.1:$p2" --flap "$net.9=100" --max-seconds 5 2>&1); rc=$?
[ $rc -eq 2 ] && grep -q "does not serve" <<<"$err" || fail "farm flap for an unserved address ($rc): $err"

# --- demo: an unwritable --out fails before the run
out=$(timeout 60 "$bin" demo --seconds 1 --out "$work/no/such/dir" 2>"$work/demo.err"); rc=$?
[ $rc -eq 1 ] || fail "demo --out missing dir exit $rc"
grep -q -- "--out \"$work/no/such/dir\"" "$work/demo.err" || fail "demo names --out: $(cat "$work/demo.err")"
grep -q "global route" <<<"$out" && fail "demo ran before checking --out"

# --- peers
"$bin" farm --listen "$net.1-$net.3:$port" --fault "$net.3=refuse" --stats "$work/farm.json" \
  --max-seconds 120 2>"$work/farm.err" &
pids+=($!); farm_pid=$!
start_dnsmasq --mx-host=y.test,mx1.y.test,10 --mx-host=y.test,mx2.y.test,20 \
  --mx-host=x.test,mx1.y.test,10 --mx-host=x.test,mx2.y.test,10 --mx-host=x.test,mx3.y.test,10 \
  --host-record=mx1.y.test,$net.1 --host-record=mx2.y.test,$net.2 \
  --host-record=mx3.y.test,$net.3
for i in $(seq 100); do grep -q listening "$work/farm.err" 2>/dev/null && break; sleep 0.1; done
grep -q listening "$work/farm.err" || fail "farm did not start: $(cat "$work/farm.err")"
cat >"$work/mx.conf" <<CONF
routes = ( "__mx__" )
prohibited_hosts = ( )   # the MXs are on loopback: opt in
remote_smtp_port = $port
CONF
# Wait until dnsmasq answers (bounded): the route becomes ready.
for i in $(seq 100); do
  "$bin" route --config "$work/mx.conf" --dns "127.0.0.1:$dport" y.test >/dev/null 2>&1 && break
  sleep 0.1
done

# --- route with DNS: MX preferences, by name of the DNS server
out=$("$bin" route --config "$work/mx.conf" --dns "localhost:$dport" y.test) || fail "route --dns localhost: $out"
echo "$out"
grep -q "^  tier 0, MX preference 10:$" <<<"$out" || fail "MX preference 10 shown"
grep -q "^  tier 0, MX preference 20:$" <<<"$out" || fail "MX preference 20 shown"
grep -q "^    __mx__ .* smtp .*MX lookup .*2 host(s)" <<<"$out" || fail "__mx__ item listed"
err=$("$bin" route --config "$work/mx.conf" --dns "no-such-host.invalid:53" y.test 2>&1); rc=$?
[ $rc -eq 2 ] && grep -q -- "--dns" <<<"$err" || fail "unknown --dns name ($rc): $err"

# --- route: a stable order, marks explained (three equal MXs)
first=$("$bin" route --config "$work/mx.conf" --dns "127.0.0.1:$dport" x.test) || fail "route x.test"
for i in 1 2 3 4 5; do
  again=$("$bin" route --config "$work/mx.conf" --dns "127.0.0.1:$dport" x.test)
  [ "$again" = "$first" ] || fail "route order changed between runs: $first // $again"
done
echo "$first"
grep -q "share its connections in turn; \* failed, waiting to retry" <<<"$first" || fail "marks explained"
a1=$(grep -n "$net.1:$port" <<<"$first" | cut -d: -f1); a2=$(grep -n "$net.2:$port" <<<"$first" | cut -d: -f1)
a3=$(grep -n "$net.3:$port" <<<"$first" | cut -d: -f1)
[ "$a1" -lt "$a2" ] && [ "$a2" -lt "$a3" ] || fail "hosts of a tier in address order"

# --- route: every item, with its protocol and why it is not used
cat >"$work/items.conf" <<CONF
routes = ( "smtp://$net.1?pref=5" "relay.example" "apn://gateway.push.apple.com"
           "gcm://android.googleapis.com" "mm7://mmsc.example.net" "http://push.example.com/v1/send" )
remote_smtp_port = $port
Domain "push.example" { routes = ( "apn://gateway.push.apple.com" ) }
CONF
out=$("$bin" route --config "$work/items.conf" --no-dns a.example push.example); rc=$?
echo "$out"
[ $rc -eq 1 ] || fail "push-only domain has no usable route: exit $rc"
grep -q "^    smtp://$net.1?pref=5 .* smtp .*address .*tier 5 .*1 host(s)" <<<"$out" || fail "literal item"
grep -q "^    relay.example .* smtp .*A/AAAA lookup .*not looked up: no DNS resolver" <<<"$out" || fail "name without resolver"
for scheme in apn gcm mm7 http; do
  grep -q "^    $scheme://.* $scheme .*push .*not used here: $scheme is a push protocol" <<<"$out" || fail "$scheme item"
done
[ "$(grep -c "apn://gateway.push.apple.com" <<<"$out")" -eq 2 ] || fail "push-only domain lists its item"
json=$("$bin" route --config "$work/items.conf" --no-dns --json a.example)
python3 -c 'import json,sys; d=json.loads(sys.argv[1])[0]; assert [i["protocol"] for i in d["items"]]==["smtp","smtp","apn","gcm","mm7","http"], d' "$json" || fail "items in JSON"

# --- load: waits for a slot by default, reports the wait apart from connect latency
cat >"$work/limit.conf" <<CONF
routes = ( "smtp://$net.1?port=$port" )
Host "$net.1" { max_outbound_connections = 2 }
CONF
out=$("$bin" load --config "$work/limit.conf" --domains l.example --sessions 200 --concurrency 8 \
  --hold-ms 2 --json "$work/limit.json") || fail "load at a limit exited $?"
echo "$out"
grep -q "^rate: [0-9.]* connected/s" <<<"$out" || fail "headline rate is connected/s"
grep -q "^waited for a slot: [0-9]* sessions, p50" <<<"$out" || fail "slot wait reported"
python3 - "$work/limit.json" <<'PY' || fail "load at a limit"
import json, sys
r = json.load(open(sys.argv[1]))
assert r["connected"] == 200 and r["deferred"] == 0 and r["failed"] == 0, r
assert r["waited"] > 0 and r["wait_max_us"] >= r["wait_p50_us"] > 0, r
assert all(h["peak"] <= 2 for h in r["hosts"].values()), r["hosts"]
PY
out=$("$bin" load --config "$work/limit.conf" --domains l.example --sessions 100 --concurrency 8 \
  --hold-ms 2 --wait-ms 0 --json "$work/nowait.json") || fail "load --wait-ms 0 exited $?"
python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); assert r["deferred"] > 0 and r["waited"] == 0, r' \
  "$work/nowait.json" || fail "--wait-ms 0 defers at once"

# --- output files: a symlink planted at the old predictable "<path>.tmp" is not followed (its
# target used to be overwritten); a failed rename (the path is a directory) leaves no temp file
echo "precious" >"$work/victim"
ln -s "$work/victim" "$work/planted.json.tmp"
"$bin" load --config "$work/limit.conf" --domains l.example --sessions 5 --concurrency 2 \
  --json "$work/planted.json" >/dev/null || fail "load --json beside a planted symlink exited $?"
[ "$(cat "$work/victim")" = "precious" ] || fail "planted symlink followed: $(head -c 200 "$work/victim")"
python3 -c 'import json,sys; assert json.load(open(sys.argv[1]))["connected"] == 5' \
  "$work/planted.json" || fail "--json beside a planted symlink"
mkdir "$work/jsondir"
"$bin" load --config "$work/limit.conf" --domains l.example --sessions 5 --concurrency 2 \
  --json "$work/jsondir" >/dev/null 2>"$work/jsondir.err"; rc=$?
[ $rc -eq 1 ] && grep -q "cannot write \"$work/jsondir\"" "$work/jsondir.err" || fail "--json DIR: exit $rc"
left=$(ls -d "$work"/jsondir?* 2>/dev/null | grep -v 'jsondir.err$')
[ -z "$left" ] || fail "failed rename left a temporary file: $left"

# --- load: a run ends at --max-seconds even while sessions are held (--hold-ms 40000 used to
# run 40 s); the held sessions quit at once and are deferred, kind "stopped"; the rest are
# reported not started
out=$(timeout 30 "$bin" load --config "$work/limit.conf" --domains l.example --sessions 10 \
  --concurrency 2 --hold-ms 40000 --max-seconds 1 --json "$work/maxs.json" 2>&1); rc=$?
[ $rc -ne 124 ] || fail "--max-seconds 1 with --hold-ms 40000 did not end the run"
grep -q "stopped early (at --max-seconds)" <<<"$out" || fail "stop reported: $out"
python3 - "$work/maxs.json" <<'PY' || fail "--max-seconds report"
import json, sys
r = json.load(open(sys.argv[1]))
assert r["stopped_by"] == "max_seconds", r
assert r["connected"] + r["deferred"] + r["failed"] == r["sessions"] == 2, r
assert r["deferrals"].get("stopped") == 2 and r["not_started"] == 8, r
assert "stopped" in r["examples"]["stopped"], r
PY

# --- load: SIGTERM/SIGINT write the report and the JSON, then exit 128+signal
for sig in TERM INT; do
  rm -f "$work/sig.json"
  timeout 60 "$bin" load --config "$work/limit.conf" --domains l.example --sessions 6 \
    --concurrency 2 --hold-ms 40000 --json "$work/sig.json" >"$work/sig.out" 2>&1 &
  lpid=$!; pids+=($lpid)
  # Signal once the sessions are held (established to the farm): the handler is installed.
  for i in $(seq 300); do
    [ "$(ss -Htn state established "( dport = :$port )" | wc -l)" -ge 2 ] && break; sleep 0.1
  done
  kill -$sig $lpid
  wait $lpid; rc=$?
  want=$([ $sig = TERM ] && echo 143 || echo 130)
  [ $rc -eq $want ] || fail "load on SIG$sig exited $rc, want $want: $(cat "$work/sig.out")"
  grep -q "stopped early (by a signal)" "$work/sig.out" || fail "SIG$sig: no report: $(cat "$work/sig.out")"
  python3 - "$work/sig.json" <<'PY' || fail "SIG$sig JSON"
import json, sys
r = json.load(open(sys.argv[1]))
assert r["stopped_by"] == "signal", r
assert r["connected"] + r["deferred"] + r["failed"] == r["sessions"] == 2, r
assert r["deferrals"].get("stopped") == 2 and r["not_started"] == 4, r
PY
done

# --- load: a session whose dialogue fails after the greeting is failed ("dialogue"), not
# connected (it used to count as connected). The peer greets, then closes at the first command.
dport2=$(free_port)
timeout 60 python3 - "$net.7" "$dport2" >"$work/greeter.out" 2>&1 <<'PY' &
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(16); print("listening", flush=True)
while True:
    c, _ = s.accept(); c.sendall(b"220 greeter ESMTP\r\n"); c.recv(100); c.close()
PY
pids+=($!)
for i in $(seq 100); do grep -q listening "$work/greeter.out" && break; sleep 0.1; done
printf 'routes = ( "smtp://%s?port=%s" )\n' "$net.7" "$dport2" >"$work/greeter.conf"
"$bin" load --config "$work/greeter.conf" --domains g.example --sessions 5 --concurrency 1 \
  --json "$work/greeter.json" >/dev/null 2>&1
python3 - "$work/greeter.json" <<'PY' || fail "dialogue failure counted apart"
import json, sys
r = json.load(open(sys.argv[1]))
assert r["connected"] == 0 and r["failed"] == 5 and r["failures"].get("dialogue") == 5, r
assert "QUIT" in r["examples"]["dialogue"], r
PY

# --- load: nothing connected is a failure (exit 1)
printf 'routes = ( "smtp://%s?port=%s" )\n' "$net.3" "$port" >"$work/refused.conf"
"$bin" load --config "$work/refused.conf" --domains r.example --sessions 20 --concurrency 4 \
  >/dev/null 2>"$work/refused.err"; rc=$?
[ $rc -eq 1 ] && grep -q "no session connected" "$work/refused.err" || fail "nothing connected: exit $rc"
echo "cli_output_test: all checks passed"
