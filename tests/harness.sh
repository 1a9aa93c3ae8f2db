# Sourced by the shell tests that start peers: a scratch directory ($work), the PIDs they
# start ($pids: add each with `pids+=($!)`), ended by PID and the directory removed on exit;
# fail MESSAGE; free_port (a TCP port free on 127.0.0.1 now); claim_test_net (test_net.sh).
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done; rm -rf "$work"; }
trap cleanup EXIT
fail() { echo "FAIL: $*"; exit 1; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
. "$(dirname "${BASH_SOURCE[0]}")/test_net.sh"
