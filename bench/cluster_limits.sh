#!/usr/bin/env bash
# Cluster-wide limits (docs/DESIGN.md §7): what sharing the limits through Redis costs, in one
# run on one farm. Prints a Markdown table for bench/README.md.
#   1. `load` without cluster_limits            (baseline)
#   2. the same with cluster_limits              (ratio of sessions/s; added connect latency)
#   3. four `load` processes against one Redis   (aggregate sessions/s, never above the limit)
# Redis commands per session from INFO commandstats: top-level calls (EVALSHA, EVAL, SCRIPT,
# SUBSCRIBE...) and all calls including those the scripts make. Redis CPU per session, to size
# a fleet's Redis: the time commandstats counts for the top-level calls (their `usec`, which
# includes the calls their scripts make), and the Redis process's own CPU (INFO cpu,
# used_cpu_user + used_cpu_sys: the same plus reading, parsing, replying and its event loop).
# Usage: bench/cluster_limits.sh BUILD_DIR [SESSIONS [HOLD_MS]]   (inside `unshare -n`)
# HOLD_MS (default 0) holds each session open that long before QUIT: 0 is the worst case for
# the Redis round trip; real SMTP sessions last far longer.
set -eu
build=$1
n=${2:-20000}
hold=${3:-0}
bin=$build/mxsched
work=$(mktemp -d)
pids=()
# The servers run under `timeout`: killing the timeout alone would leave its child running
# (and holding this script's stdout), so its child goes first, by parent PID.
cleanup() {
  for p in "${pids[@]}"; do
    # `|| true`: under set -e a failing kill or wait would end the cleanup at the first one.
    pkill -9 -P "$p" 2>/dev/null || true
    kill -9 "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=$(free_port); rport=$(free_port)
timeout -s KILL 900 redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no \
  --maxmemory-policy noeviction --logfile "" >/dev/null 2>&1 &
pids+=($!)
timeout -s KILL 900 "$bin" farm --listen "127.0.9.1-127.0.9.4:$port" --stats "$work/farm.json" \
  --max-seconds 900 2>"$work/farm.err" &
pids+=($!)
for _ in $(seq 200); do
  [ "$(redis-cli -p "$rport" ping 2>/dev/null)" = PONG ] && grep -q listening "$work/farm.err" && break
  sleep 0.05
done
base="routes = ( \"smtp://127.0.9.1?pref=1\" \"smtp://127.0.9.2?pref=1\"
           \"smtp://127.0.9.3?pref=1\" \"smtp://127.0.9.4?pref=1\" )
remote_smtp_port = $port
max_outbound_connections = 64
Host \"127.0.9.1\" { max_outbound_connections = 16 }
Host \"127.0.9.2\" { max_outbound_connections = 16 }
Host \"127.0.9.3\" { max_outbound_connections = 16 }
Host \"127.0.9.4\" { max_outbound_connections = 16 }"
echo "$base" >"$work/local.conf"
printf '%s\ncluster_limits = "redis://127.0.0.1:%s"\ncluster_name = "bench"\n' "$base" "$rport" \
  >"$work/cluster.conf"
run() {  # run NAME CONF SESSIONS: one load process
  "$bin" load --config "$work/$2" --domains a.test,b.test,c.test,d.test --sessions "$3" \
    --concurrency 32 --hold-ms "$hold" --wait-ms 60000 --json "$work/$1.json" >/dev/null 2>"$work/$1.err"
}
stats() { redis-cli -p "$rport" info commandstats | tr -d '\r'; redis-cli -p "$rport" info cpu | tr -d '\r'; }
run local local.conf "$n"
# A fleet that has run for a while: its first start waits out the store's warm-up (DESIGN §7
# rule 4b, 1.5 s once per fleet), which is not a per-session cost; a short run pays it here.
run establish cluster.conf 64
stats >"$work/cluster.before"
redis-cli -p "$rport" config resetstat >/dev/null
run cluster cluster.conf "$n"
stats >"$work/cluster.stats"
redis-cli -p "$rport" config resetstat >/dev/null
stats >"$work/four.before"
for i in 1 2 3 4; do run "four$i" cluster.conf $((n / 4)) & pids+=($!); done
wait "${pids[@]:2}" 2>/dev/null || true
stats >"$work/four.stats"
python3 - "$work" "$n" <<'PY'
import json, sys, os, re
work, n = sys.argv[1], int(sys.argv[2])
r = lambda k: json.load(open(os.path.join(work, k + ".json")))
def calls(path, what="calls"):
    out = {}
    for line in open(os.path.join(work, path)):
        m = re.match(r"cmdstat_([a-z|]+):calls=(\d+),usec=(\d+)", line)
        if m: out[m.group(1)] = int(m.group(2) if what == "calls" else m.group(3))
    return out
def cpu_us(path):  # the Redis process's CPU (user + sys), microseconds
    v = {}
    for line in open(os.path.join(work, path)):
        k, _, x = line.partition(":")
        if k in ("used_cpu_user", "used_cpu_sys"): v[k] = float(x)
    return (v["used_cpu_user"] + v["used_cpu_sys"]) * 1e6
top = {"evalsha", "eval", "script|load", "script", "subscribe", "ping", "select"}
loc, clu = r("local"), r("cluster")
four = [r(f"four{i}") for i in (1, 2, 3, 4)]
cs, fs = calls("cluster.stats"), calls("four.stats")
def per(c, s):
    t = sum(v for k, v in c.items() if k in top)
    return t / s, sum(c.values()) / s
def usec(name, s):  # commandstats usec of the top-level calls, and the process's CPU, per session
    u = sum(v for k, v in calls(name + ".stats", "usec").items() if k in top)
    return u / s, (cpu_us(name + ".stats") - cpu_us(name + ".before")) / s
farm = json.load(open(os.path.join(work, "farm.json")))
peak = max(a["peak"] for a in farm["addresses"])
four_sessions = sum(x["sessions"] for x in four)
four_secs = max(x["seconds"] for x in four)
print("| run | sessions | sessions/s | ratio | connect p50 / p99 us | Redis cmds/session (top-level / incl. in scripts) | Redis us/session (commandstats / process CPU) |")
print("|---|---|---|---|---|---|---|")
print(f"| 1 worker, no cluster_limits | {loc['sessions']} | {loc['sessions_per_second']:.0f} | 1.00 | {loc['connect_p50_us']} / {loc['connect_p99_us']} | - | - |")
t, a = per(cs, clu["sessions"])
u, c = usec("cluster", clu["sessions"])
print(f"| 1 worker, cluster_limits | {clu['sessions']} | {clu['sessions_per_second']:.0f} | {clu['sessions_per_second']/loc['sessions_per_second']:.2f} | {clu['connect_p50_us']} / {clu['connect_p99_us']} | {t:.2f} / {a:.1f} | {u:.1f} / {c:.1f} |")
t, a = per(fs, four_sessions)
u, c = usec("four", four_sessions)
print(f"| 4 workers, cluster_limits | {four_sessions} | {four_sessions/four_secs:.0f} | {four_sessions/four_secs/loc['sessions_per_second']:.2f} | {max(x['connect_p50_us'] for x in four)} / {max(x['connect_p99_us'] for x in four)} | {t:.2f} / {a:.1f} | {u:.1f} / {c:.1f} |")
print()
print(f"added connect latency (1 worker): p50 +{clu['connect_p50_us']-loc['connect_p50_us']} us, p99 +{clu['connect_p99_us']-loc['connect_p99_us']} us")
print(f"farm peak per address over the whole run: {peak} (Host limit 16)")
ok = all(x["connected"] == x["sessions"] for x in [loc, clu] + four) and peak <= 16
print("every session connected, never above the limit:", ok)
sys.exit(0 if ok else 1)
PY
