#!/usr/bin/env bash
# The command line itself: --help on every subcommand (exit 0, every flag with its default),
# --version, and usage errors that exit 2 naming the bad flag or value.
set -u
bin=$1
fail() { echo "FAIL: $*"; exit 1; }
for cmd in route load farm demo; do
  out=$("$bin" "$cmd" --help) || fail "$cmd --help exited $?"
  grep -q "^Usage: mxsched $cmd" <<<"$out" || fail "$cmd --help usage line: $out"
done
load=$("$bin" load --help)
grep -q -- "--concurrency.*=10$" <<<"$load" || fail "load --help shows the concurrency default"
grep -q -- "--max-seconds.*=600$" <<<"$load" || fail "load --help shows the max-seconds default"
grep -q -- "--seconds.*=4$" <<<"$("$bin" demo --help)" || fail "demo --help shows its default"
top=$("$bin" --help) || fail "--help exited $?"
for cmd in route load farm demo; do grep -q "^  $cmd " <<<"$top" || fail "--help lists $cmd"; done
ver=$("$bin" --version) || fail "--version exited $?"
grep -Eq "^mxsched [0-9]+\.[0-9]+\.[0-9]+$" <<<"$ver" || fail "--version: $ver"

err=$("$bin" load --config x --domains a --sessions abc 2>&1); rc=$?
[ $rc -eq 2 ] || fail "bad value exit $rc"
grep -q -- "--sessions" <<<"$err" || fail "bad value names the flag: $err"
err=$("$bin" farm --listen 127.0.0.1:1 --bogus 2>&1); rc=$?
[ $rc -eq 2 ] || fail "unknown flag exit $rc"
grep -q -- "--bogus" <<<"$err" || fail "unknown flag named: $err"
# More addresses than the fd limit lets the farm listen on: said before any is opened (it
# was "socket: Too many open files" halfway through the range).
err=$(ulimit -n 512; "$bin" farm --listen 127.0.0.1-127.0.3.255:1 --max-seconds 1 2>&1); rc=$?
[ $rc -eq 2 ] || fail "farm range past the fd limit exit $rc: $err"
grep -qF "1023 addresses need as many listening sockets" <<<"$err" && grep -qF "serve at most 448" <<<"$err" \
  || fail "farm range past the fd limit: $err"
err=$("$bin" load --domains a 2>&1); rc=$?
[ $rc -eq 2 ] || fail "missing required exit $rc"
grep -q -- "--config" <<<"$err" || fail "missing --config named: $err"
err=$("$bin" frobnicate 2>&1); rc=$?
[ $rc -eq 2 ] || fail "unknown subcommand exit $rc"
"$bin" >/dev/null 2>&1; [ $? -eq 2 ] || fail "no subcommand must be a usage error"
# A typo gets the nearest subcommand (issue 24 item 5: it was "A subcommand is required").
err=$("$bin" chek --config x 2>&1); rc=$?
[ $rc -eq 2 ] || fail "chek exit $rc"
grep -qF 'unknown subcommand "chek"; did you mean "check"?' <<<"$err" || fail "chek: $err"
err=$("$bin" lod 2>&1); grep -qF 'did you mean "load"?' <<<"$err" || fail "lod: $err"
err=$("$bin" frobnicate 2>&1); grep -q "did you mean" <<<"$err" && fail "frobnicate suggests: $err"
grep -qF "subcommands: check, route, load, farm, demo, top" <<<"$err" || fail "frobnicate: $err"
# `mxsched help` is --help; `mxsched help SUB` is SUB --help.
out=$("$bin" help) || fail "help exited $?"
[ "$out" = "$top" ] || fail "help differs from --help"
out=$("$bin" help load) || fail "help load exited $?"
[ "$out" = "$load" ] || fail "help load differs from load --help"
err=$("$bin" help chek 2>&1); rc=$?
[ $rc -eq 2 ] && grep -qF 'did you mean "check"?' <<<"$err" || fail "help chek: $rc $err"
"$bin" help load route >/dev/null 2>&1; [ $? -eq 2 ] || fail "help with two subcommands"
# load takes --no-dns like route (issue 24 item 4) and says the system resolver is its default.
grep -q -- "--no-dns" <<<"$load" || fail "load --help: --no-dns"
grep -q -- "--dns .*system's" <<<"$(tr -s ' \n' ' ' <<<"$load")" || fail "load --help: --dns default"
echo "cli_help_test: all checks passed"
