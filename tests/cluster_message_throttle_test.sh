#!/usr/bin/env bash
# Fleet-wide message throttles (docs/DESIGN.md §12 rule 10): three `mxsched load --message
# 100 --reuse` processes share a global outbound_throttle_messages = "20" through a real
# redis-server, while the farm counts the MAIL commands it receives in sliding windows as a
# receiver that limits the message rate does (mail_rate_peaks).
#   three_workers_share_a_global_message_rate
#       40 messages each at concurrency 4 over reused connections: the farm never counts
#       more than 20 MAIL commands in any second from all three together (per process it
#       would be up to 60), every message is accounted and delivered once, the run takes
#       the fleet's time (120 at 20/s, ~6 s), connections are reused, and a reused message
#       costs at most one Redis command (its ask of the message throttles alone)
#   slow_greeting_retimes_the_first_message
#       the farm greets 100 ms late: a new connection's first message, reserved at its
#       connect instant, asks the message throttles again before it is handed out; at most
#       20 MAIL in any second, every message delivered
#   slow_greeting_and_an_idle_close_defer_naming_the_rate
#       the farm greets 100 ms late and closes a client idle for 50 ms: a new connection
#       closed while it waits for its re-asked message instant is not handed out; its session
#       is deferred naming the rate (none fails), at most 20 MAIL in any second
#   redis_killed_mid_run
#       SIGKILL Redis under two such workers (share mode): each goes on at its share
#       (10/s), the farm never counts more than 20 MAIL in any second; Redis restarted, both
#       rejoin; every message accounted, none failed
# Every process here is started by this script, bounded (`timeout -s KILL`), and stopped by
# its PID. Exit 77 (skip) when redis-server is missing. KEEP_WORK=1 keeps the files.
#   cluster_message_throttle_test.sh MXSCHED_BINARY  (FARM_BIN=...: another binary for the farm)
set -u
bin=$1
fleet_net=86
. "$(dirname "$0")/fleet_peers.sh"  # harness, Redis started; $port, $net, $name, start_farm, worker, ...

# check_scenario WORKER... <<'PY' (prints and `checks = [(what, holds), ...]`) PY: runs the
# checks with r (each worker's JSON report), s (the farm's stats), a (its one address),
# mail1 and mail5 (the most MAIL in any 1 s and 5 s) and $ELAPSED; fails unless all hold.
check_scenario() {
  {
    cat <<'PY'
import json, os, sys
work, ws = sys.argv[1], tuple(sys.argv[2:])
r = {w: json.load(open(os.path.join(work, w + ".json"))) for w in ws}
s = json.load(open(os.path.join(work, "farm.json")))
a = s["addresses"][0]
mail1, mail5 = s["mail_rate_peaks"]["1000"], s["mail_rate_peaks"]["5000"]
print("farm: messages", a["messages"], "connections", a["total"], "| most MAIL in any 1 s:", mail1,
      "| in any 5 s:", mail5, "| load average", open("/proc/loadavg").read().split()[0])
PY
    cat
    cat <<'PY'
bad = [c for c, ok in checks if not ok]
for c, ok in checks:
    print(("ok: " if ok else "NOT: ") + c)
sys.exit(1 if bad else 0)
PY
  } >"$work/checks.py"
  python3 "$work/checks.py" "$work" "$@" || fail "checks"
}

message_rate_conf 20 >"$work/m.conf"

echo "== three_workers_share_a_global_message_rate"
# A fleet that has run for a while: past the warm-up (DESIGN §7 rule 4b).
rcli set "{$name}:epoch" "1:established" >/dev/null
start_farm
t0=$(date +%s.%N)
p=()
for w in w1 w2 w3; do
  worker $w 60 "$work/m.conf" --max-seconds 50 --sessions 40 --concurrency 4 --message 100 --reuse
  p+=($last)
done
wait_workers "${p[@]}"
t1=$(date +%s.%N)
stop_farm
elapsed=$(echo "$t1 - $t0" | bc)
echo "elapsed: $elapsed s"
ELAPSED=$elapsed check_scenario w1 w2 w3 <<'PY'
elapsed = float(os.environ["ELAPSED"])
for w in ws:
    c = r[w]["cluster"]
    print(w, "connected", r[w]["connected"], "deferred", r[w]["deferred"], "failed", r[w]["failed"],
          "| reuse", r[w]["reuse"], "| fleet throttle waits", c["throttle_waits"], "refused",
          c["throttled"], "throttle asks", c["throttle_asks"], "| Redis commands", c["redis_commands"],
          "refreshes", c["refreshes"])
checks = [
    # The strict promise, as the receiver counts: never more than 20 in any second.
    ("at most 20 MAIL commands in any 1 s at the receiver", mail1 <= 20),
    ("at most 100 in any 5 s", mail5 <= 100),
    ("every message accounted",
     all(r[w]["connected"] + r[w]["deferred"] + r[w]["failed"] + r[w]["not_started"] == 40 for w in ws)),
    ("every message delivered", all(r[w]["connected"] == 40 for w in ws)),
    ("the farm got 120 messages, once each", a["messages"] == 120),
    # 120 messages spaced 52.5 ms take 6.2 s (the first at once); per process, ~2 s.
    ("the run took the fleet's time", elapsed >= 5.5),
    ("connections were reused", all(r[w]["reuse"]["reused"] > 0 for w in ws)),
    ("no Redis errors", all(r[w]["cluster"]["redis_errors"] == 0 for w in ws)),
    ("the fleet's message rate held the workers back", sum(r[w]["cluster"]["throttle_waits"] for w in ws) > 30),
    # A new connection: acquire + release (its first message's token in the acquire); a
    # reused message: its ask of the message throttles alone (throttle_asks, batched with
    # the loop's others: at most one command each; a few more for messages re-timed after a
    # late handshake). Besides: heartbeats, five SCRIPT LOADs and the ZREM at the end, and
    # the parks' K:r registrations (DESIGN §13 rule 7: once per key, again after a take-back
    # or a revoked hand-off right there — measured 2 under ctest -j2).
    ("at most one Redis command per reused message",
     all(r[w]["cluster"]["redis_commands"] <= 2 * r[w]["reuse"]["connections"] + r[w]["cluster"]["throttle_asks"]
         + r[w]["cluster"]["refreshes"] + 6 + 4 for w in ws)),
    ("a reused message asks once (and a late one again)",
     all(r[w]["reuse"]["reused"] <= r[w]["cluster"]["throttle_asks"] <= r[w]["reuse"]["reused"] + 10 for w in ws)),
]
PY
rm -f "$work"/w?.json

echo "== slow_greeting_retimes_the_first_message"
# A new connection's first message is reserved at its connect instant; the receiver counts
# its MAIL, after the greeting — here 100 ms late (the farm's slow:100), past the late-start
# limit (25 ms at S = 1 s). Each such connection asks the message throttles again before it
# is handed out: two workers without reuse, 20 messages each, still at most 20 MAIL in any
# second; one re-ask per connection (the first token goes unused: the cost of a slow
# greeting).
start_farm --fault "$net.1=slow:100"
p=()
for w in s1 s2; do
  worker $w 60 "$work/m.conf" --max-seconds 50 --sessions 20 --concurrency 5 --message 100
  p+=($last)
done
wait_workers "${p[@]}"
stop_farm
check_scenario s1 s2 <<'PY'
for w in ws:
    c = r[w]["cluster"]
    print(w, "connected", r[w]["connected"], "deferred", r[w]["deferred"], "| throttle asks",
          c["throttle_asks"], "waits", c["throttle_waits"], "| Redis commands", c["redis_commands"])
checks = [
    ("at most 20 MAIL commands in any 1 s at the receiver", mail1 <= 20),
    ("every message delivered", all(r[w]["connected"] == 20 for w in ws)),
    ("the farm got 40 messages", a["messages"] == 40),
    ("each late first message asked again", all(r[w]["cluster"]["throttle_asks"] >= 18 for w in ws)),
]
PY
rm -f "$work"/s?.json

echo "== slow_greeting_and_an_idle_close_defer_naming_the_rate"
# As above, and the farm also closes a client idle for 50 ms: a new connection waits for its
# re-asked message instant after the greeting and is closed meanwhile. It is not handed out
# (main's code did: sessions failed "connection closed before the reply to EHLO"): closed
# with QUIT, the host not blamed, the session deferred naming the message rate — a fresh
# connection would greet as late and wait as long. Nothing fails; what is connected is
# delivered; at most 20 MAIL in any second.
start_farm --fault "$net.1=slow:100" --idle-timeout-ms 50
p=()
for w in c1 c2; do
  worker $w 60 "$work/m.conf" --max-seconds 50 --sessions 20 --concurrency 5 --message 100
  p+=($last)
done
# (A worker may connect no session at all — exit 1, "no session connected": every wait can
# outlast the farm's 50 ms. Its report says how each session ended.)
for x in "${p[@]}"; do
  wait "$x"; rc=$?
  [ $rc -le 1 ] || fail "a worker exited $rc: $(cat "$work"/c?.out)"
done
stop_farm
check_scenario c1 c2 <<'PY'
for w in ws:
    print(w, "connected", r[w]["connected"], "deferred", r[w]["deferred"], r[w]["deferrals"],
          "failed", r[w]["failed"], r[w]["failures"])
print("farm: idle_closed", a["idle_closed"], "quits", a["quits"])
checks = [
    ("at most 20 MAIL commands in any 1 s at the receiver", mail1 <= 20),
    ("every session accounted",
     all(r[w]["connected"] + r[w]["deferred"] + r[w]["failed"] + r[w]["not_started"] == 20 for w in ws)),
    ("none failed", all(r[w]["failed"] == 0 for w in ws)),
    ("the farm closed connections waiting for their instant", a["idle_closed"] > 0),
    ("each deferral names the message rate",
     all(r[w]["deferrals"].get("rate_limited", 0) == r[w]["deferred"] for w in ws)),
    ("every connected session's message delivered", a["messages"] == sum(r[w]["connected"] for w in ws)),
    ("every connection ended by the farm's close or the client's QUIT",
     a["idle_closed"] + a["quits"] == a["total"]),
]
PY
rm -f "$work"/c?.json

echo "== redis_killed_mid_run"
# SIGKILL Redis under two workers (cluster_failure_mode share, the default): each goes on at
# its share of the message rate (10/s), the farm never counts more than 20 MAIL commands in
# any second; Redis restarted, both rejoin and go on through it; every message accounted.
start_farm
for i in 1 2; do
  radmin[$i]=$(free_port)
  worker k$i 100 "$work/m.conf" --max-seconds 80 --sessions 1000000 --concurrency 4 \
    --message 100 --reuse --admin "127.0.0.1:${radmin[$i]}"
  kp[$i]=$last
done
wait_for '[ "$(metric 1 redis)" -ge 20 ] && [ "$(metric 2 redis)" -ge 20 ]'
restart_redis_under_workers 20  # ~2 s at 10/s
r1=$(metric 1 redis); r2=$(metric 2 redis)
wait_for '[ "$(metric 1 redis)" -ge $((r1 + 20)) ] && [ "$(metric 2 redis)" -ge $((r2 + 20)) ]'
stop_workers
stop_farm
check_scenario k1 k2 <<'PY'
for w in ws:
    c = r[w]["cluster"]
    print(w, "connected", r[w]["connected"], "deferred", r[w]["deferred"], "failed", r[w]["failed"],
          "| reused", r[w]["reuse"]["reused"], "| local leases", c["local_leases"], "mode switches",
          c["mode_switches"], "| throttle asks", c["throttle_asks"])
connected = sum(r[w]["connected"] for w in ws)
checks = [
    ("at most 20 MAIL commands in any 1 s, across the outage and the rejoin", mail1 <= 20),
    ("at most 100 in any 5 s", mail5 <= 100),
    ("every message accounted",
     all(r[w]["connected"] + r[w]["deferred"] + r[w]["failed"] + r[w]["not_started"] == 1000000 for w in ws)),
    ("none failed", all(r[w]["failed"] == 0 for w in ws)),
    # (A session the SIGTERM stopped mid-transaction: connected, its message not completed.)
    ("the farm's messages are the connected sessions'", connected - 8 <= a["messages"] <= connected),
    ("each went on locally while Redis was away", all(r[w]["cluster"]["local_leases"] >= 20 for w in ws)),
    ("each left and rejoined", all(r[w]["cluster"]["mode_switches"] == 2 for w in ws)),
    ("connections were reused", all(r[w]["reuse"]["reused"] > 0 for w in ws)),
]
PY
echo "cluster_message_throttle_test: all checks passed"
