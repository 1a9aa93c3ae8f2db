#!/usr/bin/env bash
# Without --dns, `route` and `load` both use the system's resolvers (issue 24 item 4: `load`
# used none, "MX lookup needs DNS, and no resolver is configured"); `--no-dns` turns them off
# for both. The system resolver is made a dnsmasq on loopback: /etc/resolv.conf is replaced
# by a bind mount inside a private mount namespace (unshare -m), so nothing leaves loopback
# and the machine's own file is untouched. Also: a route whose __mx__ answer was NXDOMAIN
# beside a usable fallback says so in its detail (issue 24 item 3; it was "").
# Exit 77 (skip) without dnsmasq or without the rights to unshare a mount namespace.
set -u
bin=$(realpath "$1")
DNSMASQ=$(command -v dnsmasq || ls /usr/sbin/dnsmasq 2>/dev/null)
[ -n "$DNSMASQ" ] || { echo "SKIP: dnsmasq not installed (Debian dnsmasq-base)"; exit 77; }
unshare -m true 2>/dev/null || { echo "SKIP: cannot unshare a mount namespace (needs root)"; exit 77; }
. "$(dirname "$0")/harness.sh"  # $work, $pids, cleanup, fail, free_port, claim_test_net
claim_test_net
net="$test_net.78"
port=$(free_port)

"$bin" farm --listen "$net.1:$port" --stats "$work/farm.json" --max-seconds 120 2>"$work/farm.err" &
pids+=($!)
# resolv.conf has no port syntax: dnsmasq serves port 53 on an address of the claimed net.
"$DNSMASQ" --keep-in-foreground --conf-file=/dev/null --no-resolv --no-hosts --no-negcache \
  --listen-address="$net.53" --bind-interfaces --user=root --pid-file= --port=53 \
  --local=/test/ --mx-host=x.test,mx1.x.test,10 --host-record=mx1.x.test,"$net.1" \
  --host-record=fb.test,"$net.1" 2>"$work/dnsmasq.err" &
pids+=($!)
echo "nameserver $net.53" >"$work/resolv.conf"
cat >"$work/mx.conf" <<CONF
routes = ( "__mx__" )
prohibited_hosts = ( )   # the MXs are on loopback: opt in
remote_smtp_port = $port
Domain "nx.test" { routes = ( "__mx__" "fb.test" ) }
CONF
# in_ns CMD...: CMD with $work/resolv.conf as the system's resolver configuration.
in_ns() {
  unshare -m sh -c 'mount --bind "$0" /etc/resolv.conf && exec "$@"' "$work/resolv.conf" "$@"
}
for i in $(seq 300); do grep -q listening "$work/farm.err" 2>/dev/null && break; sleep 0.1; done
grep -q listening "$work/farm.err" || fail "farm did not start: $(cat "$work/farm.err")"
# dnsmasq is ready when the route resolves (bounded: 30 s).
for i in $(seq 300); do
  out=$(in_ns "$bin" route --config "$work/mx.conf" x.test 2>&1) && break
  sleep 0.1
done
[ "$i" -lt 300 ] || fail "route without --dns: $out $(cat "$work/dnsmasq.err")"
grep -q "^x.test: ready, 1 tier(s), 1 host(s)" <<<"$out" || fail "route without --dns: $out"

out=$(in_ns "$bin" load --config "$work/mx.conf" --domains x.test --sessions 20 --concurrency 4 \
  --max-seconds 60 --json "$work/load.json" 2>&1) || fail "load without --dns exited $?: $out"
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); assert d["connected"]==20, d["examples"]' \
  "$work/load.json" || fail "load without --dns: $out"

out=$(in_ns "$bin" load --config "$work/mx.conf" --no-dns --domains x.test --sessions 2 \
  --wait-ms 0 --max-seconds 60 2>&1); rc=$?
[ $rc -eq 1 ] || fail "load --no-dns exit $rc: $out"
grep -q "no resolver is configured" <<<"$out" || fail "load --no-dns reason: $out"
err=$("$bin" load --config "$work/mx.conf" --no-dns --dns 127.0.0.1 --domains x.test 2>&1); rc=$?
[ $rc -eq 2 ] || fail "--no-dns with --dns must be a usage error, exit $rc: $err"

# nx.test: __mx__ is NXDOMAIN, fb.test resolves. The route is usable, and says why __mx__
# gave nothing, in the text and the JSON.
out=$(in_ns "$bin" route --config "$work/mx.conf" nx.test) || fail "route nx.test exited $?: $out"
grep -q "^nx.test: ready" <<<"$out" || fail "nx.test state: $out"
grep -q "^  items without addresses: 5.1.2 nx.test: no such domain (NXDOMAIN)$" <<<"$out" ||
  fail "nx.test detail: $out"
json=$(in_ns "$bin" route --config "$work/mx.conf" --json nx.test) || fail "route --json exited $?"
python3 - "$json" <<'PY' || fail "nx.test JSON: $json"
import json, sys
d = json.loads(sys.argv[1])[0]
assert "NXDOMAIN" in d["detail"], d["detail"]
mx = next(i for i in d["items"] if i["item"] == "__mx__")
assert mx["status"] == "no usable address (see the route's detail)", mx
PY
echo "cli_resolver_default_test: all checks passed"
