#!/usr/bin/env python3
"""Scenario benchmarks: end-to-end baselines, global route vs MX spread, connection-limit
stress with flapping hosts, and how cost grows with domains and hosts.

    python3 bench/scenarios.py BUILD_DIR [--quick] [--json OUT] [--only NAME,...]

Sections (--only): baselines, postfix (smtp-source and load --message 100 against both
mxsched farm and Postfix smtp-sink), routes, stress, growth.

Every number is measured in this run on this machine; ratios divide by baselines measured
in the same run on the same farm. Traffic goes only to 127.0.0.0/8; every farm and load is
bounded in count and time and is ended by PID. Prints markdown tables (bench/README.md).
"""
import argparse, json, os, re, resource, shutil, signal, subprocess, sys, tempfile, time

from peers import SINK, SOURCE, Sink, free_port


def ms(us):
    """A report's microseconds as milliseconds; "-" when the set was empty (JSON null)."""
    return "-" if us is None else f"{us / 1000:.1f}"

ap = argparse.ArgumentParser()
ap.add_argument("build")
ap.add_argument("--quick", action="store_true", help="smaller counts (CI smoke run)")
ap.add_argument("--json")
ap.add_argument("--only", default="baselines,postfix,routes,stress,growth")
args = ap.parse_args()
MX = os.path.join(args.build, "mxsched")
RAW = os.path.join(args.build, "raw_connect")
WORK = tempfile.mkdtemp(prefix="mxsched-scenarios-")
Q = args.quick
results = {}
resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)


class Farm:
    """`mxsched farm` as a child process; stats from its --stats file after SIGTERM."""

    def __init__(self, listen, extra=(), max_seconds=600):
        self.stats_path = os.path.join(WORK, f"farm-{time.monotonic_ns()}.json")
        cmd = [MX, "farm", "--stats", self.stats_path, "--max-seconds", str(max_seconds)]
        for spec in listen:
            cmd += ["--listen", spec]
        cmd += list(extra)
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
        line = self.proc.stderr.readline()  # "listening on ..." once bound
        if "listening" not in line:
            raise SystemExit(f"farm did not start: {line}")

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)
        with open(self.stats_path) as f:
            return json.load(f)


def load(config_text, domains, sessions, concurrency, threads=1, hold=0, extra=(), max_seconds=120):
    conf = os.path.join(WORK, f"load-{time.monotonic_ns()}.conf")
    out = conf + ".json"
    with open(conf, "w") as f:
        f.write(config_text)
    dom = conf + ".domains"
    with open(dom, "w") as f:
        f.write("\n".join(domains))
    cmd = [MX, "load", "--config", conf, "--domains", "@" + dom, "--sessions", str(sessions),
           "--concurrency", str(concurrency), "--threads", str(threads), "--hold-ms", str(hold),
           "--max-seconds", str(max_seconds), "--json", out, "--connect-timeout-ms", "3000",
           "--banner-timeout-ms", "3000", *extra]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    with open(out) as f:
        r = json.load(f)
    assert r["connected"] + r["deferred"] + r["failed"] == r["sessions"], r
    return r


def table(title, header, rows):
    print(f"\n### {title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(str(c) for c in row) + " |")
    sys.stdout.flush()


def spread_routes(prefix, n, port, limit=None):
    text = f"remote_smtp_port = {port}\nmax_outbound_connections = 100000\nroutes = ("
    text += "".join(f' "smtp://{prefix}.{i}?pref=10"' for i in range(1, n + 1)) + " )\n"
    if limit:
        text += "".join(f'Host "{prefix}.{i}" {{ max_outbound_connections = {limit} }}\n'
                        for i in range(1, n + 1))
    return text


only = set(args.only.split(","))

# --- Baselines: raw io_uring loop, epoll loop, mxsched load, same farm -----------------
if "baselines" in only:
    port = free_port()
    farm = Farm([f"127.0.50.1-127.0.50.64:{port}"])
    n = 20000 if Q else 100000
    rows, b = [], {}
    for mode in ("uring", "epoll"):
        out = subprocess.run([RAW, "--mode", mode, "--targets", f"127.0.50.1-127.0.50.64:{port}",
                              "--sessions", str(n), "--concurrency", "32"],
                             check=True, capture_output=True, text=True).stdout
        b[mode] = json.loads(out)["sessions_per_second"]
    r = load(spread_routes("127.0.50", 64, port), ["a.example", "b.example"], n, 32)
    b["load"] = r["sessions_per_second"]
    farm.stop()
    results["baselines"] = b
    table(f"End to end vs no scheduler: {n:,} sessions, concurrency 32, 1 client thread, 64 farm addresses",
          ["client", "sessions/s", "vs raw io_uring"],
          [["raw io_uring loop (bench/raw_connect)", f"{b['uring']:,.0f}", "1.00"],
           ["raw epoll loop (bench/raw_connect)", f"{b['epoll']:,.0f}", f"{b['epoll'] / b['uring']:.2f}"],
           ["mxsched load (Selector + connector)", f"{b['load']:,.0f}", f"**{b['load'] / b['uring']:.2f}** (target >= 0.80)"]])

# --- Postfix smtp-source vs mxsched load, the same dialogue, on two peers ----------------
# Both clients against mxsched farm and against Postfix's own smtp-sink, same concurrency,
# same N. Every client run gets a fresh peer process on a fresh 127.0.51.x address (one
# destination per run: N stays under the ~28k ephemeral ports, and no run meets the
# TIME_WAIT sockets of the one before); the peer's own counts must show N messages and N
# QUITs. Within a repetition the two clients run back to back, the order alternating
# between repetitions (and the peers' order too); ratio = load / smtp-source per
# repetition, the median of the repetitions reported.


class FarmPeer:
    def __init__(self, addr, port):
        self.farm = Farm([f"{addr}:{port}"])

    def stop(self):
        a = self.farm.stop()["addresses"][0]
        return {"sessions": a["total"], "quits": a["quits"], "messages": a["messages"]}


class SinkPeer(Sink):
    def __init__(self, addr, port):
        super().__init__(addr, port, WORK)


if "postfix" in only and SOURCE and SINK:
    n, conc, reps = (5000 if Q else 20000), 16, 3  # one destination: well under ~28k ports
    peers = {"mxsched farm": FarmPeer, "Postfix smtp-sink": SinkPeer}
    runs = {p: {"smtp-source": [], "load": [], "ratio": []} for p in peers}
    cpu = {p: {"smtp-source": [], "load": []} for p in peers}  # (client, peer) µs per session
    next_addr = [0]

    def cpu_seconds(pid):
        """utime + stime of a running child, from /proc (the peer is still running)."""
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def children_cpu():
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        return ru.ru_utime + ru.ru_stime

    def one_run(peer_name, client):
        next_addr[0] += 1
        assert next_addr[0] < 255
        addr, port = f"127.0.51.{next_addr[0]}", free_port()
        peer = peers[peer_name](addr, port)
        peer_pid = peer.proc.pid if isinstance(peer, Sink) else peer.farm.proc.pid
        try:
            peer_cpu0, client_cpu0 = cpu_seconds(peer_pid), children_cpu()
            t0 = time.monotonic()
            if client == "smtp-source":
                subprocess.run([SOURCE, "-s", str(conc), "-m", str(n), "-l", "100", f"{addr}:{port}"],
                               check=True, stdout=subprocess.DEVNULL, timeout=300)
            else:
                r = load(f'routes = ( "smtp://{addr}?port={port}" )\nmax_outbound_connections = 1000\n',
                         ["a.example"], n, conc, threads=1, extra=["--message", "100"])
                assert r["connected"] == n, r
            wall = time.monotonic() - t0
            client_cpu = children_cpu() - client_cpu0
            peer_cpu = cpu_seconds(peer_pid) - peer_cpu0
        finally:
            counts = peer.stop()
        # The peer saw every message and every QUIT: the same dialogue ran n times.
        assert counts["messages"] == n and counts["quits"] == n, (peer_name, client, counts)
        cpu[peer_name][client].append((client_cpu / n * 1e6, peer_cpu / n * 1e6))
        return n / wall

    for rep in range(reps):
        order = ("smtp-source", "load") if rep % 2 == 0 else ("load", "smtp-source")
        for peer_name in (list(peers) if rep % 2 == 0 else list(peers)[::-1]):
            rate = {c: one_run(peer_name, c) for c in order}
            for c in order:
                runs[peer_name][c].append(rate[c])
            runs[peer_name]["ratio"].append(rate["load"] / rate["smtp-source"])

    def median(xs):
        return sorted(xs)[len(xs) // 2]

    rows = []
    for peer_name, r in runs.items():
        ratio = median(r["ratio"])
        rows.append([peer_name, f"{median(r['smtp-source']):,.0f}", f"{median(r['load']):,.0f}",
                     " / ".join(f"{x:.2f}" for x in r["ratio"]),
                     f"**{ratio:.2f}x**" + (" (target >= 1.5x)" if ratio >= 1.5 else " (target >= 1.5x: NO)")])
    results["postfix"] = {"sessions": n, "concurrency": conc, "runs": runs,
                          "cpu_us_per_session": cpu, "loadavg": os.getloadavg()}
    table(f"Postfix smtp-source vs mxsched load --message 100: {n:,} one-message sessions, "
          f"concurrency {conc}, median of {reps} (order alternating), each run on a fresh peer",
          ["peer", "smtp-source -s 16 -m N -l 100, sessions/s", "load --threads 1 --message 100, sessions/s",
           "ratio per repetition", "median ratio load / smtp-source"], rows)
    table("CPU per session (median of the runs; user + system, client process and peer process)",
          ["peer", "client", "client µs / session", "peer µs / session"],
          [[p, c, f"{median([x[0] for x in cpu[p][c]]):.0f}", f"{median([x[1] for x in cpu[p][c]]):.0f}"]
           for p in peers for c in ("smtp-source", "load")])
    print(f"\nload average after the runs: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")

# --- Global route vs MX spread -----------------------------------------------------------
if "routes" in only:
    rows = []
    grid = [(100, 2, 20)] if Q else [(n, k, h) for n in (100, 1000) for k in (2, 8) for h in (5, 20)]
    limit, conc, secs = 8, 256, (1 if Q else 3)
    for n, k, hold in grid:
        port = free_port()
        domains = [f"d{i}.example" for i in range(n)]
        # Global: every domain through k shared hosts. Spread: each domain its own host.
        glob = spread_routes("127.0.52", k, port, limit)
        spread = f"remote_smtp_port = {port}\n" + "".join(
            f'Domain "d{i}.example" {{ routes = ( "127.{53 + i // 250}.{i % 250}.1" ) }}\n'
            f'Host "127.{53 + i // 250}.{i % 250}.1" {{ max_outbound_connections = {limit} }}\n'
            for i in range(n))
        listen = [f"127.0.52.1-127.0.52.{k}:{port}"] + [
            f"127.{53 + i // 250}.{i % 250}.1:{port}" for i in range(n)]
        for name, conf in (("global route", glob), ("MX spread", spread)):
            farm = Farm(listen)
            r = load(conf, domains, 10_000_000, conc, threads=2, hold=hold,
                     extra=["--wait-ms", "10000"], max_seconds=secs)
            stats = farm.stop()
            peak = max(a["peak"] for a in stats["addresses"])
            used = sum(1 for a in stats["addresses"] if a["total"] > 0)
            rows.append([n, k, hold, name, used, f"{r['connected_per_second']:,.0f}",
                         f"{ms(r['wait_p50_us'])} / {ms(r['wait_p99_us'])}",
                         f"{ms(r['connect_p50_us'])} / {ms(r['connect_p99_us'])}",
                         r["deferred"], f"{peak} (limit {limit})",
                         f"{k * limit * 1000 / hold:,.0f}" if name == "global route" else "-"])
            results.setdefault("routes", []).append(
                {"domains": n, "k": k, "hold_ms": hold, "scenario": name, "hosts_used": used,
                 "connected_per_second": r["connected_per_second"], "p50_us": r["connect_p50_us"],
                 "p99_us": r["connect_p99_us"], "deferred": r["deferred"], "max_peak": peak})
    table(f"Global route vs MX spread: per-host limit {limit}, {conc} sessions in flight (waiting for slots), 2 client threads, {secs} s each",
          ["domains", "k global hosts", "hold ms", "scenario", "hosts used", "connected/s",
           "waited for a slot p50 / p99 ms", "connect p50 / p99 ms", "deferred", "server-side peak", "k x limit / hold"],
          rows)

# --- Connection-limit stress with flapping hosts -----------------------------------------
if "stress" in only:
    port = free_port()
    hosts = 16
    limits = [16 + (64 - 16) * i // (hosts - 1) for i in range(hosts)]
    conf = spread_routes("127.0.60", hosts, port) + "".join(
        f'Host "127.0.60.{i + 1}" {{ max_outbound_connections = {limits[i]} }}\n'
        for i in range(hosts)) + "host_failure_retry = 1\nmx_failures_to_delay = 1000000\n"
    flaps = [] if Q else sum((["--flap", f"127.0.60.{i}=700"] for i in (2, 5, 9, 14)), [])
    farm = Farm([f"127.0.60.1-127.0.60.{hosts}:{port}"], flaps)
    n, conc = (20000, 2000) if Q else (100000, 10000)
    t0 = time.monotonic()
    r = load(conf, [f"s{i}.example" for i in range(100)], n, conc, threads=2, hold=5,
             extra=["--wait-ms", "5000", "--max-attempts", "3"], max_seconds=180)
    took = time.monotonic() - t0
    stats = farm.stop()
    over = [(a["address"], a["peak"], limits[int(a["address"].split(":")[0].split(".")[-1]) - 1])
            for a in stats["addresses"]
            if a["peak"] > limits[int(a["address"].split(":")[0].split(".")[-1]) - 1]]
    results["stress"] = {"sessions": n, "concurrency": conc, "report": r, "over_limit": over,
                         "seconds": took}
    table(f"Connection-limit stress: {n:,} sessions, {conc:,} in flight, 16 hosts limited 16..64"
          + ("" if Q else ", 4 of them flapping (refuse/serve every 0.7 s)"),
          ["connected", "deferred", "failed", "sum = sessions", "hosts over their limit (server-side)",
           "sessions/s", "seconds"],
          [[r["connected"], r["deferred"], r["failed"],
            "yes" if r["connected"] + r["deferred"] + r["failed"] == n else "NO",
            "none" if not over else over, f"{r['sessions_per_second']:,.0f}", f"{took:.1f}"]])
    if over:
        print("LIMIT EXCEEDED", over)
        sys.exit(1)

# --- How cost grows ----------------------------------------------------------------------
if "growth" in only:
    rows = []
    n = 20000 if Q else 100000
    port = free_port()
    farm = Farm([f"127.0.61.1-127.0.61.64:{port}"])
    for domains in ((10, 1000) if Q else (10, 1000, 100000)):
        r = load(spread_routes("127.0.61", 64, port), [f"g{i}.example" for i in range(domains)],
                 n, 64, threads=2)
        rows.append([f"{domains:,} domains x 64 hosts", f"{r['sessions_per_second']:,.0f}",
                     f"{r['connect_p50_us'] / 1000:.2f} / {r['connect_p99_us'] / 1000:.2f}",
                     f"{r['max_rss_kb'] / 1024:.0f}"])
    farm.stop()
    for hosts in ((1, 100) if Q else (1, 100, 10000)):
        port = free_port()
        listen = [f"127.{62 + i // 250}.{i % 250}.1:{port}" for i in range(hosts)]
        farm = Farm(listen)
        conf = f"remote_smtp_port = {port}\nmax_outbound_connections = 100000\n" + "".join(
            f'Domain "h{i}.example" {{ routes = ( "127.{62 + i // 250}.{i % 250}.1" ) }}\n'
            for i in range(hosts))
        r = load(conf, [f"h{i}.example" for i in range(hosts)], n, 64, threads=2)
        farm.stop()
        rows.append([f"{hosts:,} hosts (one per domain)", f"{r['sessions_per_second']:,.0f}",
                     f"{r['connect_p50_us'] / 1000:.2f} / {r['connect_p99_us'] / 1000:.2f}",
                     f"{r['max_rss_kb'] / 1024:.0f}"])
    results["growth"] = rows
    table(f"How cost grows: {n:,} sessions, concurrency 64, 2 client threads",
          ["layout", "sessions/s", "connect p50 / p99 ms", "load peak RSS MiB"], rows)

if args.json:
    with open(args.json, "w") as f:
        json.dump(results, f, indent=1)
shutil.rmtree(WORK, ignore_errors=True)
