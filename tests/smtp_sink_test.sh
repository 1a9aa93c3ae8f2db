#!/usr/bin/env bash
# An independent peer: Postfix's smtp-sink. `mxsched load` connects, reads its greeting,
# sends QUIT — every session must connect. Exit 77 (skip) when smtp-sink is missing.
set -u
bin=$1
SINK=$(command -v smtp-sink || ls /usr/sbin/smtp-sink 2>/dev/null)
[ -n "$SINK" ] || { echo "SKIP: smtp-sink not installed (Debian postfix)"; exit 77; }
work=$(mktemp -d)
sink_pid=
cleanup() { [ -n "$sink_pid" ] && kill "$sink_pid" 2>/dev/null && wait "$sink_pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
fail() { echo "FAIL: $*"; exit 1; }
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
# An address no other running test uses (tests/test_net.sh).
. "$(dirname "$0")/test_net.sh"
claim_test_net
addr="$test_net.88.1"
user=()
[ "$(id -u)" -eq 0 ] && user=(-u nobody)
"$SINK" "${user[@]}" -c "$addr:$port" 256 >"$work/sink.out" 2>&1 &
sink_pid=$!
for i in $(seq 300); do (exec 3<>"/dev/tcp/$addr/$port") 2>/dev/null && break; sleep 0.1; done
cat >"$work/sink.conf" <<CONF
routes = ( "smtp://$addr?port=$port" )
Host "$addr" { max_outbound_connections = 16 }
CONF
"$bin" load --config "$work/sink.conf" --domains sink.example --sessions 2000 --concurrency 16 \
  --threads 2 --json "$work/load.json" || fail "load exited $?"
python3 - "$work/load.json" <<'PY' || fail "load against smtp-sink"
import json, sys
r = json.load(open(sys.argv[1]))
print({k: r[k] for k in ("sessions", "connected", "deferred", "failed", "sessions_per_second")})
assert r["connected"] == 2000, r
assert list(r["hosts"].values())[0]["peak"] <= 16, r
PY
echo "smtp_sink_test: all checks passed"
