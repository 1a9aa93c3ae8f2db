#!/usr/bin/env python3
"""Runs selector_bench once and prints docs/DESIGN.md §10's targets as ratios measured in that run.

usage: bench/ratios.py BUILD_DIR [--min-time 0.3] [--json OUT]
Every number comes from the same run: the mutex baseline and the one-thread case are the
baselines the ratios divide by.
"""
import argparse, json, subprocess, sys, platform, datetime

ap = argparse.ArgumentParser()
ap.add_argument("build")
ap.add_argument("--min-time", default="0.2")
ap.add_argument("--repetitions", default="3", help="the median of this many runs is used")
ap.add_argument("--json")
args = ap.parse_args()

out = subprocess.run([f"{args.build}/selector_bench", f"--benchmark_min_time={args.min_time}",
                      "--benchmark_format=json",
                      f"--benchmark_repetitions={args.repetitions}",
                      "--benchmark_report_aggregates_only=true"], check=True, capture_output=True, text=True).stdout
data = json.loads(out)
if args.json:
    with open(args.json, "w") as f:
        f.write(out)

rate, extra = {}, {}
for b in data["benchmarks"]:
    if b.get("run_type") == "aggregate" and b.get("aggregate_name") != "median":
        continue
    name = b["run_name"]  # e.g. BM_MxSpread<LockFree>/200/real_time/threads:2
    rate[name] = b["items_per_second"]
    extra[name] = b

def r(fn, impl, threads, arg=None):
    mid = f"/{arg}" if arg is not None else ""
    return rate[f"BM_{fn}<{impl}>{mid}/real_time/threads:{threads}"]

def ns(x):
    return 1e9 / x

rows = []
def row(what, value, target, ok):
    rows.append((what, value, target, "yes" if ok else "NO"))

one = ns(r("OneDomain", "LockFree", 1))
row("Acquire+Release, 1 domain x 4 hosts, 1 thread", f"{one:.1f} ns", "<= 35 ns", one <= 35)
zipf = ns(r("MillionDomains", "LockFree", 1, 1))
row("same, 1,000,000 resident domains, Zipf(1) traffic", f"{zipf:.1f} ns", "<= 100 ns",
    zipf <= 100)
uni = ns(r("MillionDomains", "LockFree", 1, 0))
row("same, 1,000,000 resident domains, uniform traffic (memory-bound)", f"{uni:.1f} ns",
    "<= 150 ns", uni <= 150)
dram = ns(rate["BM_DependentDramLoad/real_time/threads:1"])
row("  the floor: one dependent DRAM load (pointer chase, 256 MiB, huge pages); uniform / it",
    f"{dram:.1f} ns; {uni / dram:.2f} loads", "a cold Acquire needs >= 2", True)
m1 = extra["BM_MillionDomains<LockFree>/0/real_time/threads:1"]
bpd, rss = m1["bytes_per_domain"], m1["rss_bytes_per_domain"]
row("memory per domain (accounted / RSS growth)", f"{bpd:.0f} B / {rss:.0f} B", "<= 128 B",
    max(bpd, rss) <= 128)
for n in (200, 2000):
    s = r("MxSpread", "LockFree", 2, n) / r("MxSpread", "LockFree", 1, n)
    row(f"2 threads / 1 thread, distinct domains (MX spread, {n} domains)", f"{s:.2f}x",
        ">= 1.8x", s >= 1.8)
for fn, arg in (("MxSpread", 200), ("MxSpread", 2000), ("GlobalRoute", None), ("OneDomain", None),
                ("MillionDomains", 0), ("MillionDomains", 1)):
    s = r(fn, "LockFree", 2, arg) / r(fn, "Mutex", 2, arg)
    label = fn + (f"/{arg}" if arg is not None else "")
    row(f"lock-free / mutex baseline, 2 threads, {label}", f"{s:.1f}x", ">= 2x", s >= 2)

print(f"# selector_bench ratios (median of {args.repetitions}) — {datetime.date.today()} — {platform.node()}, "
      f"{data['context']['num_cpus']} CPUs @ {data['context']['mhz_per_cpu']} MHz")
print("| measure | this run | target | met |")
print("|---|---|---|---|")
for w, v, t, ok in rows:
    print(f"| {w} | {v} | {t} | {ok} |")
print()
print("| benchmark | pairs/s |")
print("|---|---|")
for name, v in rate.items():
    print(f"| {name} | {v/1e6:.2f} M |")
