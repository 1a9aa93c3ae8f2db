#!/usr/bin/env bash
# Idle-domain eviction (docs/DESIGN.md §5 rules 7-9) end to end: `mxsched load
# --distinct-domains` sends every session to a domain the Selector has not seen, against a
# real `mxsched farm` (a child process), with domain_idle_timeout = 1 s. The load's report
# says how many domain entries were created, evicted and resident; the farm says what its
# servers saw. Without eviction every domain stays resident and this test fails (resident ==
# distinct, evicted == 0).
# Ends only the processes it started, by PID; bounded in sessions and time (~10-20 s).
set -u
bin=$1
. "$(dirname "$0")/harness.sh"  # $work, $pids, cleanup, fail, free_port, claim_test_net
port=$(free_port)
# A 127.N.78.0/24 network no other running test uses (tests/test_net.sh).
claim_test_net
net="$test_net.78"

# The run's shape. Each connection holds its slot for at least HOLD_MS, so the hosts' slots
# (2 hosts x LIMIT) cap the session rate at SLOTS / HOLD whatever the machine's speed, and
# the run lasts at least SESSIONS x HOLD / SLOTS (10 s) — the time the idle clock needs to
# turn over many times — without any sleep.
SESSIONS=3200 CONCURRENCY=24 HOLD_MS=50 LIMIT=8
export SESSIONS CONCURRENCY HOLD_MS LIMIT

# --- bad values are usage errors that name the option
for bad in 0 -3 100000001 abc; do
  err=$("$bin" load --config /dev/null --domains a.test --distinct-domains "$bad" 2>&1); rc=$?
  [ $rc -eq 2 ] && grep -q -- "--distinct-domains" <<<"$err" || fail "--distinct-domains $bad ($rc): $err"
done
long=$(python3 -c 'print(".".join(["a" * 61] * 4))')  # 247 characters: "d99999." takes it past 253
err=$("$bin" load --config /dev/null --domains "$long" --distinct-domains 100000 2>&1); rc=$?
[ $rc -eq 2 ] && grep -q -- "--distinct-domains 100000: generated name \"d99999\.aaa" <<<"$err" \
  || fail "generated name too long ($rc): $err"

"$bin" farm --listen "$net.1-$net.2:$port" --stats "$work/farm.json" --max-seconds 120 \
  2>"$work/farm.err" &
pids+=($!); farm_pid=$!
# Wait for the farm by what it says, bounded (30 s).
for i in $(seq 300); do grep -q listening "$work/farm.err" 2>/dev/null && break; sleep 0.1; done
grep -q listening "$work/farm.err" || fail "farm did not start: $(cat "$work/farm.err")"
cat >"$work/mx.conf" <<CONF
routes = ( "$net.1" "$net.2" )
remote_smtp_port = $port
domain_idle_timeout = 1
Host "$net.1" { max_outbound_connections = $LIMIT }
Host "$net.2" { max_outbound_connections = $LIMIT }
CONF

# One thread: each domain's entry is then created exactly once (with two, a session's
# Acquire could, rarely, meet its own new entry evicted by the other thread's sweep across
# a tick boundary and create it again; created == resident + evicted would still hold).
start=$(date +%s.%N)
"$bin" load --config "$work/mx.conf" --domains evict.test,churn.test \
  --distinct-domains "$SESSIONS" --sessions "$SESSIONS" --concurrency "$CONCURRENCY" \
  --threads 1 --hold-ms "$HOLD_MS" --max-seconds 55 --json "$work/load.json" \
  >"$work/load.out" || fail "load exited $?: $(cat "$work/load.out")"
end=$(date +%s.%N)
cat "$work/load.out"
grep -q "^domains: $SESSIONS distinct; resident at the end [0-9]*, peak [0-9]*" "$work/load.out" \
  || fail "text report has the domains line"

# While the farm still runs (its exit closes everything): every session said QUIT and the
# server counts no open connection. The farm writes its stats every second; wait for them
# to settle, bounded.
python3 - "$work/farm.json" <<'PY' || fail "farm stats"
import json, os, sys, time
n = int(os.environ["SESSIONS"])
deadline = time.monotonic() + 30
while True:
    try:
        s = json.load(open(sys.argv[1]))
        if sum(a["quits"] for a in s["addresses"]) == n and all(a["current"] == 0 for a in s["addresses"]):
            break
    except (OSError, ValueError):
        s = None  # mid-write
    if time.monotonic() > deadline:
        sys.exit(f"farm never showed {n} QUITs and no open connection: {s}")
    time.sleep(0.1)
PY

python3 - "$work/load.json" "$work/farm.json" "$start" "$end" <<'PY' || fail "eviction against the farm"
import json, os, sys
r, farm = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
wall = float(sys.argv[4]) - float(sys.argv[3])
n, c, hold, limit = (int(os.environ[k]) for k in ("SESSIONS", "CONCURRENCY", "HOLD_MS", "LIMIT"))
d = r["domains"]
print({"sessions": r["sessions"], "connected": r["connected"], "seconds": round(r["seconds"], 2),
       "wall_s": round(wall, 2), **d})

# Every session connected and the counts add up.
assert r["sessions"] == r["connected"] + r["deferred"] + r["failed"] == n, r
assert r["connected"] == n and r["not_started"] == 0 and r["stopped_by"] is None, r
slots = 2 * limit
# Each of the `slots` slots is held >= hold ms per session: the run cannot be shorter.
min_seconds = n * hold / 1000 / min(c, slots)
assert r["seconds"] >= min_seconds * 0.99, (r["seconds"], min_seconds)

# No server saw more than its host limit (the farm's own count), nor the client's count.
server = {a["address"]: a for a in farm["addresses"]}
assert sum(a["quits"] for a in server.values()) == n, server
for addr, a in server.items():
    assert 1 <= a["peak"] <= limit, (addr, a)
for h, v in r["hosts"].items():
    assert v["peak"] <= limit and v["lease_peak"] <= limit, (h, v)

# Every session had its own domain, each created once (one thread, no failed connect), and
# every entry created is resident or evicted: the exact invariant (SelectorStats).
assert d["distinct"] == n, d
assert d["created"] == n, d
assert d["resident"] + d["evicted"] == d["created"], d
assert d["evicted"] > 0, d
assert 0 < d["memory_bytes"], d

# How many can be resident at once. An entry lives while its session runs (at most
# `c` sessions are in flight: connecting, waiting or holding), then until the idle clock
# (~1.07 s ticks, 1 s timeout: evictable from the next tick, <= 1.1 s after its Acquire)
# says it is idle, then until a sweep reaches it: each new domain sweeps 8 slots of its
# shard, a shard's table has at most 6x its entries and at least 64 slots, so a sweep
# passes every slot within max(64 shards x 64 / 8 = 512, 0.75 x resident) new domains.
# New domains come at most slots / hold per second. So
#   resident <= c + rate x 1.1 s + max(512, 0.75 x resident)
#   resident <= max(c + rate x 1.1 + 512, 4 x (c + rate x 1.1))
# — the worst case of every term at once, a generous margin over what runs see (the
# sampled peak is below the true one, which only helps). It must be well below the number
# of distinct domains for the test to mean anything: without eviction resident == n.
rate = slots / (hold / 1000)
bound = max(c + rate * 1.1 + 512, 4 * (c + rate * 1.1))
assert bound <= n / 2, ("the run is too short for the bound to prove eviction", bound, n)
assert d["peak_resident"] <= bound, (d, bound)
assert d["resident"] <= d["peak_resident"], d
assert d["evicted"] >= n - bound, (d, bound)
print(f"peak resident {d['peak_resident']} <= bound {bound:.0f} (distinct {n})")
PY
kill "$farm_pid"; wait "$farm_pid"
echo "cli_load_evict_test: all checks passed"
