#!/usr/bin/env bash
# `mxsched route` on the shipped example: tiers in order, limits shown, JSON well-formed,
# and bad config reported as FILE:LINE:COL with exit code 2.
set -u
bin=$1
examples=$2
fail() { echo "FAIL: $*"; exit 1; }
out=$("$bin" route --config "$examples/smarthost.conf" example.com partner.example) || fail "route exited $?"
echo "$out"
grep -q "^example.com: ready, 2 tier(s), 6 host(s)" <<<"$out" || fail "example.com summary"
grep -q "^  tier 10:$" <<<"$out" || fail "tier 10 listed"
grep -q "127.0.11.7:2525 .* limit 16" <<<"$out" || fail "host limit from Host stanza"
grep -q "^partner.example: ready, 2 tier(s), 2 host(s)" <<<"$out" || fail "partner summary"
first_tier_line=$(grep -n "^  tier 0:" <<<"$out" | head -1 | cut -d: -f1)
v6_line=$(grep -n "\[::1\]:2525" <<<"$out" | cut -d: -f1)
[ "$first_tier_line" -lt "$v6_line" ] || fail "listed order not kept"
json=$("$bin" route --config "$examples/smarthost.conf" --json example.com) || fail "json exit"
python3 -c 'import json,sys; d=json.loads(sys.argv[1]); assert d[0]["tiers"][0]["tier"]==10 and len(d[0]["tiers"][0]["hosts"])==5, d' "$json" || fail "json shape"
bad=$(mktemp)
printf 'routes = ( "smtp://a.example?pref=1" )\nmax_outbound_conections = 3\n' >"$bad"
err=$("$bin" route --config "$bad" example.com 2>&1); rc=$?
rm -f "$bad"
[ $rc -eq 2 ] || fail "bad config exit code $rc"
grep -q ":2:1: unknown option \"max_outbound_conections\"; did you mean \"max_outbound_connections\"?" <<<"$err" || fail "bad config message: $err"
"$bin" route --config "$examples/smarthost.conf" "bad domain" >/dev/null; [ $? -eq 1 ] || fail "invalid domain exit"
# The domain is the user's, valid or not: the header line shows it escaped (issue 10 #9: it was
# printed raw, so "\e[31m" coloured the terminal), bounded, and still exits 1.
out=$("$bin" route --no-dns --config "$examples/smarthost.conf" $'\e[31mbad\a' 2>&1); rc=$?
[ $rc -eq 1 ] || fail "escape domain exit $rc"
LC_ALL=C grep -aqP '[\x00-\x08\x0b-\x1f\x7f-\xff]' <<<"$out" && fail "raw control bytes: $(od -c <<<"$out" | head -5)"
grep -qF '\e[31mbad\x07: ' <<<"$out" || fail "escaped domain header: $out"
long=$(printf 'a%.0s' $(seq 5000))
out=$("$bin" route --no-dns --config "$examples/smarthost.conf" "$long" 2>&1); rc=$?
[ $rc -eq 1 ] || fail "long domain exit $rc"
LC_ALL=C awk 'length > 400 { exit 1 }' <<<"$out" || fail "a line over 400 bytes for a 5000-byte domain"
grep -qF '... (5000 bytes): ' <<<"$out" || fail "long domain header: ${out:0:400}"
err=$("$bin" route --config "$examples/smarthost.conf" --dns $'127.0.0.1:5\e[2J3' a.example 2>&1); rc=$?
[ $rc -eq 2 ] || fail "bad --dns exit $rc"
grep -qF -- '--dns: "127.0.0.1:5\e[2J3": port must be 1..65535' <<<"$err" || fail "bad --dns: $err"
echo "cli_route_test: all checks passed"
