#!/usr/bin/env python3
"""Connection reuse benchmark (docs/DESIGN.md §13; issue 23 item 6), paired runs against
Postfix's smtp-sink:

  1. `mxsched load --message 100 --reuse` against Postfix `smtp-source -d` (which sends the
     next message over the same connection), same concurrency, same message count; both
     unlimited messages per connection. Target: load >= 1.5x.
     With `--pipelining` (pair 1p) a reused connection's RSET goes in the same write as
     MAIL, RCPT and DATA (DESIGN §13 rule 6), so a reused message costs two round trips.
  2. `load --message 100 --reuse` with max_deliveries_per_connection = 10 against
     `load --message 100` without reuse (one connection per message).
  1b. With `--before OLD_BUILD_DIR`: `load --reuse --pipelining` of BUILD_DIR against the
     same of OLD_BUILD_DIR (e.g. a build from before a change), paired the same way.

    python3 bench/reuse_bench.py BUILD_DIR [--messages N] [--concurrency C] [--reps R]
                                 [--only 1,1p,2,1b] [--before OLD_BUILD_DIR]

Rates are messages / wall time of the client process, start to exit, measured the same way
for every client. Every run gets a fresh smtp-sink on a fresh 127.0.52.x address (no run
meets the TIME_WAIT sockets of the one before); the sink's own counters must show every
message. Within a repetition the two clients of a pair run back to back, the order
alternating between repetitions; the ratio is taken per repetition and the median
reported. Traffic goes only to 127.0.0.0/8; every process is bounded and ended by PID.
"""
import argparse, json, os, shutil, subprocess, sys, tempfile, time

from peers import SINK, SOURCE, Sink, free_port

ap = argparse.ArgumentParser()
ap.add_argument("build")
ap.add_argument("--messages", type=int, default=20000)
ap.add_argument("--concurrency", type=int, default=16)
ap.add_argument("--reps", type=int, default=3)
ap.add_argument("--only", default="1,1p,2,1b",
                help="pairs to run: 1, 1p (pipelined), 2, 1b (needs --before)")
ap.add_argument("--before", help="a build dir whose mxsched is the 'before' of pair 1b")
args = ap.parse_args()
MX = os.path.join(args.build, "mxsched")
MX_BEFORE = os.path.join(args.before, "mxsched") if args.before else None
if not (SINK and SOURCE):
    print("SKIP: smtp-sink or smtp-source not installed (Debian postfix)")
    sys.exit(77)
WORK = tempfile.mkdtemp(prefix="mxsched-reuse-bench-")
N, C = args.messages, args.concurrency
next_addr = [0]


def one_run(client):
    """client: "smtp-source -d", "load reuse", "load reuse pipelining", "load reuse 10",
    "load", "before: load reuse pipelining" (MX_BEFORE)."""
    next_addr[0] += 1
    assert next_addr[0] < 255
    addr, port = f"127.0.52.{next_addr[0]}", free_port()
    sink = Sink(addr, port, WORK)
    report = None
    try:
        t0 = time.monotonic()
        if client == "smtp-source -d":
            subprocess.run([SOURCE, "-d", "-s", str(C), "-m", str(N), "-l", "100",
                            f"{addr}:{port}"], check=True, stdout=subprocess.DEVNULL, timeout=300)
        else:
            mx = MX
            if client.startswith("before: "):
                mx, client = MX_BEFORE, client[len("before: "):]
            reuse = client.startswith("load reuse")
            per = 10 if client == "load reuse 10" else 0
            conf = os.path.join(WORK, f"c{next_addr[0]}.conf")
            with open(conf, "w") as f:
                f.write(f'routes = ( "smtp://{addr}?port={port}" )\n'
                        f"max_outbound_connections = 1000\n"
                        f"max_deliveries_per_connection = {per}\n")
            out = os.path.join(WORK, f"r{next_addr[0]}.json")
            cmd = [mx, "load", "--config", conf, "--no-dns", "--domains", "a.example",
                   "--sessions", str(N), "--concurrency", str(C), "--threads", "1",
                   "--message", "100", "--json", out, "--max-seconds", "300"]
            if reuse:
                cmd.append("--reuse")
            if client.endswith("pipelining"):
                cmd.append("--pipelining")
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, timeout=320)
            with open(out) as f:
                report = json.load(f)
            assert report["connected"] == N, report
        wall = time.monotonic() - t0
    finally:
        counts = sink.stop()
    assert counts["messages"] == N, (client, counts)
    conns = counts["sessions"]
    return {"rate": N / wall, "connections": conns, "quits": counts["quits"],
            "reused": report["reuse"]["reused"] if report else None}


def median(xs):
    return sorted(xs)[len(xs) // 2]


def pair(a, b):
    runs = {a: [], b: [], "ratio": []}
    for rep in range(args.reps):
        order = (a, b) if rep % 2 == 0 else (b, a)
        r = {c: one_run(c) for c in order}
        runs[a].append(r[a])
        runs[b].append(r[b])
        runs["ratio"].append(r[a]["rate"] / r[b]["rate"])
    return runs


def show(title, a, b, runs, target=None):
    print(f"\n{title}")
    print(f"| client | messages/s (median) | connections (sink) | runs, messages/s |")
    print("|---|---|---|---|")
    for c in (a, b):
        rs = runs[c]
        print(f"| {c} | {median([x['rate'] for x in rs]):,.0f} | "
              f"{median([x['connections'] for x in rs]):,} | "
              f"{' / '.join(format(x['rate'], ',.0f') for x in rs)} |")
    ratio = median(runs["ratio"])
    verdict = "" if target is None else (f" (target >= {target}x)" if ratio >= target
                                         else f" (target >= {target}x: NO)")
    print(f"\nratio {a} / {b} per repetition: "
          f"{' / '.join(f'{x:.2f}' for x in runs['ratio'])}; median **{ratio:.2f}x**{verdict}")
    return ratio


print(f"{N:,} messages of ~100 bytes, concurrency {C}, {args.reps} repetitions, "
      f"{os.cpu_count()} CPUs, load average before {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
only = args.only.split(",")
if "1" in only:
    r1 = pair("load reuse", "smtp-source -d")
    show("1. mxsched load --message 100 --reuse vs Postfix smtp-source -d -l 100 (smtp-sink), "
         "one command at a time both", "load reuse", "smtp-source -d", r1, target=1.5)
if "1p" in only:
    r1p = pair("load reuse pipelining", "smtp-source -d")
    show("1p. mxsched load --message 100 --reuse --pipelining vs Postfix smtp-source -d -l 100 "
         "(smtp-sink; smtp-source has no pipelining)", "load reuse pipelining", "smtp-source -d",
         r1p, target=1.5)
if "2" in only:
    r2 = pair("load reuse 10", "load")
    show("2. load --message 100 --reuse, max_deliveries_per_connection = 10, vs load --message 100 "
         "(no reuse)", "load reuse 10", "load", r2)
if "1b" in only and MX_BEFORE:
    r1b = pair("load reuse pipelining", "before: load reuse pipelining")
    show(f"1b. load --message 100 --reuse --pipelining: {MX} vs {MX_BEFORE}",
         "load reuse pipelining", "before: load reuse pipelining", r1b)
print(f"\nload average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
shutil.rmtree(WORK, ignore_errors=True)
