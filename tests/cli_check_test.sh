#!/usr/bin/env bash
# `mxsched check`: a valid file prints its effective settings and exits 0; -n prints only what
# differs from the defaults; -d the defaults; an invalid file exits 2 with FILE:LINE:COL.
set -u
bin=$1
examples=$2
fail() { echo "FAIL: $*"; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

out=$("$bin" check --config "$examples/smarthost.conf") || fail "check exited $?"
echo "$out"
grep -qx "server_max_outbound_connections = 2000" <<<"$out" || fail "set value shown"
grep -qx "connect_timeout = 300s  # default" <<<"$out" || fail "default shown and marked"
grep -q "^Domain \"partner.example\" {" <<<"$out" || fail "domain stanza shown"
grep -qx "  max_outbound_connections = 16" <<<"$out" || fail "host stanza value shown"
# The listing is itself a valid configuration with the same effective settings.
printf '%s\n' "$out" >"$tmp/listed.conf"
again=$("$bin" check --config "$tmp/listed.conf") || fail "listing does not parse back"
[ "$again" = "$out" ] || fail "listing does not round-trip"

nondefault=$("$bin" check --config "$examples/smarthost.conf" -n) || fail "-n exited $?"
grep -qx "remote_smtp_port = 2525" <<<"$nondefault" || fail "-n shows the set port"
grep -q "connect_timeout" <<<"$nondefault" && fail "-n shows a default"

defaults=$("$bin" check -d) || fail "-d exited $?"
grep -qx "max_outbound_connections = 32" <<<"$defaults" || fail "-d domain limit"
grep -qx "banner_timeout = 60s" <<<"$defaults" || fail "-d banner_timeout"

printf 'routes = ( "__mx__" )\nDomain "a.example" {\n  connect_timeout = 0\n}\n' >"$tmp/bad.conf"
err=$("$bin" check --config "$tmp/bad.conf" 2>&1); rc=$?
[ $rc -eq 2 ] || fail "out-of-range timeout: exit $rc"
grep -q "^mxsched: $tmp/bad.conf:3:21: option \"connect_timeout\" expects a duration" <<<"$err" ||
  fail "out-of-range message: $err"

err=$("$bin" check --config "$tmp/missing.conf" 2>&1); rc=$?
[ $rc -eq 2 ] || fail "missing file: exit $rc"
grep -q "missing.conf: cannot open" <<<"$err" || fail "missing file message: $err"
"$bin" check >/dev/null 2>&1; [ $? -eq 2 ] || fail "no --config is a usage error"
"$bin" check --config "$examples/smarthost.conf" --bogus >/dev/null 2>&1; [ $? -eq 2 ] ||
  fail "unknown flag is a usage error"
echo "cli_check_test: all checks passed"
