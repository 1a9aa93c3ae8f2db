# Sourced by the shell tests that start peers: a scratch directory ($work, kept with
# KEEP_WORK=1), the PIDs they start ($pids: add each with `pids+=($!)`), ended by PID and
# the directory removed on exit; fail MESSAGE (with the tail of every $work/*.err);
# wait_for CONDITION (bounded: 30 s); free_port (a TCP port free on 127.0.0.1 now);
# claim_test_net (test_net.sh).
#
# A PID may be a `timeout -s KILL` wrapper: its children are ended first. Killing only the
# wrapper orphans the peer (redis-server, the farm), which then outlives the test and, if
# it holds the test's stdout, keeps ctest waiting. HARNESS_SIGNAL (default TERM) is the
# signal used; tests whose peers need not end gracefully set KILL before sourcing this.
work=$(mktemp -d)
pids=()
cleanup() {
  local sig=${HARNESS_SIGNAL:-TERM}
  for p in "${pids[@]}"; do
    for c in $(pgrep -P "$p"); do kill -"$sig" "$c" 2>/dev/null; done
    kill -"$sig" "$p" 2>/dev/null; wait "$p" 2>/dev/null
  done
  [ -n "${KEEP_WORK:-}" ] && echo "kept $work" || rm -rf "$work"
}
trap cleanup EXIT
fail() {
  echo "FAIL: $*"
  for f in "$work"/*.err; do [ -e "$f" ] && { echo "--- $f"; tail -5 "$f"; }; done
  exit 1
}
wait_for() {
  for _ in $(seq 600); do eval "$1" && return 0; sleep 0.05; done
  fail "timed out waiting for: $1"
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
. "$(dirname "${BASH_SOURCE[0]}")/test_net.sh"
