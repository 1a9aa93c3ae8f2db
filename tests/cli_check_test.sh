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

# Every example of Momentum's routes reference page, verbatim (the push stanzas' elision
# line "  ..." dropped): each is a file `check` accepts. The synopsis' first line used to be
# rejected with "type=mx needs a hostname".
cat >"$tmp/page1.conf" <<'EOF'
Routes = ( "smtp://1.2.3.4?pref=10&ttl=300&type=mx" )
EOF
cat >"$tmp/page2.conf" <<'EOF'
Routes = ( "my.local.smart.host" )
EOF
cat >"$tmp/page3.conf" <<'EOF'
Routes = ( "__mx__" )
EOF
cat >"$tmp/page4.conf" <<'EOF'
Routes = ( "smtp://my.local.smart.host?pref=1" "__mx__" )
EOF
cat >"$tmp/page5.conf" <<'EOF'
Routes = ( 
           "smtp://10.0.11.7?pref=10" "smtp://10.0.11.8?pref=10"
           "smtp://10.0.11.10?pref=10" "smtp://10.0.11.13?pref=10"
           "smtp://10.0.11.56?pref=10"
         )
EOF
cat >"$tmp/page6.conf" <<'EOF'
domain "apn_example.com"{
  delivery_method = "apn"
  routes = ("apn://gateway.push.apple.com?port=2195")
}
domain "gcm.example.com" {
  delivery_method = "gcm"
  routes = ("gcm://android.google.apis.com?port=443")
}
EOF
for n in 1 2 3 4 5 6; do
  out=$("$bin" check --config "$tmp/page$n.conf" 2>&1) || fail "routes page example $n: $out"
done
out=$("$bin" check --config "$tmp/page1.conf" -n 2>"$tmp/page1.err") || fail "synopsis -n"
grep -q 'smtp://1.2.3.4?pref=10&ttl=300&type=mx' <<<"$out" || fail "synopsis route listed: $out"
# ... but type=mx on an address does nothing (there is no name to look up): said, not silent
# (issue 24 item 5); a name with type=mx, and an address without it, get no warning.
grep -qF "mxsched: warning: $tmp/page1.conf:1:12: \"smtp://1.2.3.4?pref=10&ttl=300&type=mx\": type=mx on an address is ignored" \
  "$tmp/page1.err" || fail "type=mx on an address: no warning: $(cat "$tmp/page1.err")"
printf 'routes = ( "smtp://mx.example?type=mx" "smtp://1.2.3.4?type=a" "1.2.3.5" )\n' >"$tmp/typemx.conf"
"$bin" check --config "$tmp/typemx.conf" 2>&1 >/dev/null | grep -q warning && fail "warning for type=mx on a name"

# A value followed by more words on its line ("2 minutes") is reported at that value, with
# what the option expects — not as "expected '=' after option minutes" on the next line.
printf 'host_failure_retry = 2 minutes\nroutes = ( "a.example" )\n' >"$tmp/dur.conf"
err=$("$bin" check --config "$tmp/dur.conf" 2>&1); rc=$?
[ $rc -eq 2 ] || fail "2 minutes: exit $rc"
[ "$err" = "mxsched: $tmp/dur.conf:1:22: option \"host_failure_retry\" expects a duration (e.g. 30, 90s, 5m) in 0..86400 seconds, got \"2 minutes\"" ] ||
  fail "2 minutes: $err"
printf 'cluster_name = my fleet\n' >"$tmp/words.conf"
err=$("$bin" check --config "$tmp/words.conf" 2>&1)
grep -qF "words.conf:1:16: option \"cluster_name\" expects" <<<"$err" || fail "two words: $err"
# Two options on one line still parse.
printf 'connect_timeout = 30 host_failure_retry = 3m\n' >"$tmp/oneline.conf"
out=$("$bin" check --config "$tmp/oneline.conf" -n) || fail "two options on a line"
grep -qx "host_failure_retry = 180s" <<<"$out" || fail "two options on a line: $out"

# Input files: regular files only, size-capped, errors naming the file (exit 2). A directory
# used to read as an empty config (--config) or abort with ios_failure (--domains @DIR), and
# /dev/zero to abort with bad_alloc.
for cfg in "$tmp" /dev/zero; do
  err=$("$bin" check --config "$cfg" 2>&1); rc=$?
  [ $rc -eq 2 ] || fail "check --config $cfg: exit $rc: $err"
  grep -q "^mxsched: $cfg: \(is a directory\|not a regular file\)" <<<"$err" ||
    fail "check --config $cfg message: $err"
done
for list in "@$tmp" @/dev/zero; do
  err=$(timeout 60 "$bin" load --config "$examples/smarthost.conf" --domains "$list" \
        --sessions 1 2>&1); rc=$?
  [ $rc -eq 2 ] || fail "load --domains $list: exit $rc: $err"
  grep -q -- "--domains: ${list#@}: \(is a directory\|not a regular file\)" <<<"$err" ||
    fail "load --domains $list message: $err"
done
truncate -s 17M "$tmp/huge.conf"
err=$("$bin" check --config "$tmp/huge.conf" 2>&1); rc=$?
[ $rc -eq 2 ] && grep -q "huge.conf: larger than" <<<"$err" || fail "huge config ($rc): $err"

# Timeouts out of range are refused at load (25d used to overflow the connector's millisecond
# arithmetic into a negative timeout; 0 failed every host), and so are absurd magnitudes.
for v in 25d 0 0s 3601 99999999999999999999d 1e9; do
  printf 'banner_timeout = %s\n' "$v" >"$tmp/bt.conf"
  err=$("$bin" check --config "$tmp/bt.conf" 2>&1); rc=$?
  [ $rc -eq 2 ] && grep -q "banner_timeout" <<<"$err" || fail "banner_timeout = $v ($rc): $err"
done
printf 'banner_timeout = 1h\nDomain "a.example" { banner_timeout = 1s }\n' >"$tmp/bt.conf"
"$bin" check --config "$tmp/bt.conf" >/dev/null || fail "banner_timeout in range refused"

# A routes list longer than the planner uses (32 addresses) loads, with a warning naming the
# place (10,000 items used to be cut to 32 silently).
python3 -c 'print("routes = ( " + " ".join("\"10.9.%d.%d\"" % (i // 250, i % 250 + 1) for i in range(40)) + " )")' >"$tmp/many.conf"
"$bin" check --config "$tmp/many.conf" >/dev/null 2>"$tmp/many.err" || fail "40 routes refused"
grep -q "^mxsched: warning: $tmp/many.conf:1:10: routes has 40 items; at most 32" "$tmp/many.err" ||
  fail "40 routes: no warning: $(cat "$tmp/many.err")"
"$bin" check --config "$tmp/page5.conf" 2>&1 >/dev/null | grep -q warning && fail "warning for 5 routes"

# Values quoted in errors are escaped and bounded (issue 10 #9): an ESC sequence used to reach
# the terminal raw, a NUL inside a quoted value cut the message, a 1 MB value made a 1 MB line.
# The same message is printed by check, route and load: all three are run on each file.
raw_controls() { LC_ALL=C grep -aqP '[\x00-\x08\x0b-\x1f\x7f-\xff]' "$1"; }
echo_case() {  # FILE EXPECTED-SUBSTRING: exit 2, no raw control byte, short lines, FILE:L:C
  local conf=$1 want=$2 cmd
  for cmd in check route load; do
    case $cmd in
      check) timeout 20 "$bin" check --config "$conf" >"$tmp/echo.out" 2>&1 ;;
      route) timeout 20 "$bin" route --no-dns --config "$conf" a.example >"$tmp/echo.out" 2>&1 ;;
      load) timeout 20 "$bin" load --config "$conf" --domains a.example --sessions 1 \
              >"$tmp/echo.out" 2>&1 ;;
    esac
    rc=$?
    [ $rc -eq 2 ] || fail "$cmd $conf: exit $rc: $(head -c 300 "$tmp/echo.out")"
    raw_controls "$tmp/echo.out" && fail "$cmd $conf: raw control bytes: $(od -c "$tmp/echo.out" | head -5)"
    LC_ALL=C awk 'length > 400 { exit 1 }' "$tmp/echo.out" ||
      fail "$cmd $conf: a line over 400 bytes ($(wc -c <"$tmp/echo.out") bytes in all)"
    grep -qF -- "$want" "$tmp/echo.out" || fail "$cmd $conf: want '$want': $(cat "$tmp/echo.out")"
  done
}
printf 'banner_timeout = "\e[31mRED\a"\n' >"$tmp/esc.conf"
echo_case "$tmp/esc.conf" "mxsched: $tmp/esc.conf:1:18: option \"banner_timeout\" expects a duration (e.g. 30, 90s, 5m) in 1..3600 seconds, got \"\\e[31mRED\\x07\""
printf 'use_ipv6 = "yes\0\e]0;owned\a"\n' >"$tmp/nul.conf"
echo_case "$tmp/nul.conf" "$tmp/nul.conf:1:12: option \"use_ipv6\" expects true or false, got \"yes\\x00\\e]0;owned\\x07\""
printf 'routes = ( "a.example"\n  "smtp://\e[2Jx" )\n' >"$tmp/route-esc.conf"
echo_case "$tmp/route-esc.conf" "$tmp/route-esc.conf:2:3: route \"smtp://\\e[2Jx\": invalid character '\\e' in hostname"
printf 'routes = ( "b\\nc" )\n' >"$tmp/route-nl.conf"  # the config's own \n escape
echo_case "$tmp/route-nl.conf" "$tmp/route-nl.conf:1:12: route \"b\\nc\": invalid character '\\n'"
python3 -c 'print("banner_timeout = \"" + "7" * 1048576 + "\"")' >"$tmp/mb.conf"
echo_case "$tmp/mb.conf" "$tmp/mb.conf:1:18: option \"banner_timeout\" expects a duration"
grep -qF '... (1048576 bytes)"' "$tmp/echo.out" || fail "1 MB value: no length marker: $(cat "$tmp/echo.out")"
python3 -c 'print("a" * 1048576 + " = 1")' >"$tmp/mbname.conf"  # also: no "did you mean" cost
echo_case "$tmp/mbname.conf" "$tmp/mbname.conf:1:1: unknown option \"aaaa"
# A file name is echoed escaped too (it leads the FILE:LINE:COL of every message).
cp "$tmp/esc.conf" "$tmp/"$'\e[31m'"x.conf"
echo_case "$tmp/"$'\e[31m'"x.conf" "$tmp/\\e[31mx.conf:1:18:"

err=$("$bin" check --config "$tmp/missing.conf" 2>&1); rc=$?
[ $rc -eq 2 ] || fail "missing file: exit $rc"
grep -q "missing.conf: cannot open" <<<"$err" || fail "missing file message: $err"
"$bin" check >/dev/null 2>&1; [ $? -eq 2 ] || fail "no --config is a usage error"
"$bin" check --config "$examples/smarthost.conf" --bogus >/dev/null 2>&1; [ $? -eq 2 ] ||
  fail "unknown flag is a usage error"
# Bindings: listed back as parsed; an address this machine does not have is a warning
# naming the file, line and binding (a local error at connect), one it has is not.
cat >"$tmp/bind.conf" <<'CONF'
Binding_Group "pool" {
  Binding "here" { bind_address = "127.0.0.2" }
  Binding "away" { bind_address = "192.0.2.1" }
}
CONF
"$bin" check --config "$tmp/bind.conf" -n >"$tmp/bind.out" 2>"$tmp/bind.err" || fail "bind.conf: exit $?"
grep -qF "mxsched: warning: $tmp/bind.conf:3: Binding \"away\": bind_address 192.0.2.1 cannot be bound here" \
  "$tmp/bind.err" || fail "no warning for an address not on this machine: $(cat "$tmp/bind.err")"
grep -q '"here"' "$tmp/bind.err" && fail "warning for an address this machine has"
"$bin" check --config "$tmp/bind.out" -n | cmp -s - "$tmp/bind.out" || fail "bindings do not list back"
echo "cli_check_test: all checks passed"
