# Sourced by the shell tests: claim_test_net sets $test_net to "127.N", a /16 of loopback
# no other running test uses. N (30..127) is claimed by an flock held on fd 9 for the
# caller's life (and its children's); the kernel drops it when they exit, so a killed test
# leaves nothing behind. C++ tests use 127.128+ (tests/net_testutil.h); tests/admin_cli_test.py
# takes the same locks.
claim_test_net() {
  test_net=
  local n
  for n in $(seq 30 127); do
    exec 9>"${TMPDIR:-/tmp}/mxsched-test-net-$n.lock"
    if flock -n 9; then test_net="127.$n"; return 0; fi
  done
  echo "FAIL: no free 127.N test network (30..127 all claimed)"
  exit 1
}
