# Sourced after harness.sh by the shell tests that run a real redis-server: exits 77 (skip)
# when redis-server or redis-cli is missing. Gives $REDIS and $CLI (the binaries), $rport (a
# free port), rcli ARGS (redis-cli on $rport, quiet), child_of PID (the process a `timeout`
# wrapper runs, for the SIGKILLs scenarios need) and start_redis [SECONDS] (a fresh
# redis-server on $rport with no persistence, under `timeout -s KILL SECONDS` (default 300),
# both PIDs in $pids, the server's in $redis_pid; returns once it answers PING).
REDIS=$(command -v redis-server || ls /usr/bin/redis-server 2>/dev/null)
CLI=$(command -v redis-cli)
[ -n "$REDIS" ] && [ -n "$CLI" ] || { echo "SKIP: redis-server not installed"; exit 77; }
rport=$(free_port)
rcli() { "$CLI" -p "$rport" "$@" 2>/dev/null; }
child_of() { wait_for "pgrep -P $1 >/dev/null"; pgrep -P "$1"; }
start_redis() {
  timeout -s KILL "${1:-300}" "$REDIS" --port "$rport" --bind 127.0.0.1 --save "" \
    --appendonly no --maxmemory-policy noeviction --logfile "" --loglevel warning \
    >"$work/redis.log" 2>&1 &
  local t=$!
  wait_for '[ "$(rcli ping)" = PONG ]'
  redis_pid=$(child_of $t)
  pids+=($redis_pid $t)
}
