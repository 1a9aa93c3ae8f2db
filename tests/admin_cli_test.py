#!/usr/bin/env python3
"""DESIGN §8 end to end with real tools: `mxsched farm`, `mxsched load --admin`, Prometheus'
`promtool check metrics`, `mxsched route --json`, and `mxsched top` driven in tmux.

usage: tests/admin_cli_test.py BIN    (exit 77 = skipped: promtool or tmux missing)

While a real load runs against the farm, it scrapes /metrics and checks it with promtool,
checks the per-host gauges against the farm's server-side counts, compares /domains/NAME
with `route --json`, checks POST /refresh re-plans the route, sends bad requests, and runs
`top` in a private tmux server (wide, then narrow; then the worker goes away; q and Ctrl-C
quit). Then a load through a binding group of two source addresses: the per-binding
numbers on /metrics (promtool), /hosts, /domains/NAME, `route` and `top` against what the
farm counted per source address. Every wait is on a condition with a generous deadline; only processes this test
started are stopped, by PID (the tmux server by its private socket).
"""
import json, os, shutil, socket, subprocess, sys, tempfile, time, urllib.request, urllib.error

BIN = sys.argv[1]
for tool in ("promtool", "tmux"):
    if shutil.which(tool) is None:
        print(f"SKIP: {tool} not installed (Debian: prometheus, tmux)")
        sys.exit(77)

work = tempfile.mkdtemp(prefix="mxsched-admin-")
procs = []
tmux_socket = f"mxsched-admin-{os.getpid()}"


def fail(why):
    print("FAIL:", why)
    sys.exit(1)


def wait_for(what, cond, seconds=30.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.05)
    fail(f"timed out waiting for {what}")


_net_lock = None


def claim_test_net():
    """A 127.N no other running test uses: the flock scheme of tests/test_net.sh."""
    global _net_lock
    import fcntl
    for n in range(30, 128):
        f = open(os.path.join(os.environ.get("TMPDIR", "/tmp"), f"mxsched-test-net-{n}.lock"), "w")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            continue
        _net_lock = f  # held until this process exits
        return f"127.{n}"
    fail("no free 127.N test network (30..127 all claimed)")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def cleanup():
    subprocess.run(["tmux", "-L", tmux_socket, "kill-server"], capture_output=True)
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()
    shutil.rmtree(work, ignore_errors=True)


def http(path, method="GET"):
    req = urllib.request.Request(f"http://127.0.0.1:{admin_port}{path}", method=method,
                                 data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def raw(request):
    s = socket.create_connection(("127.0.0.1", admin_port), timeout=10)
    s.sendall(request)
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    return int(data[9:12]) if len(data) >= 12 else 0


def series(text):
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def host_value(metrics, name, host, extra=""):
    for key, v in metrics.items():
        if key.startswith(name + "{") and f'host="{host}"' in key and extra in key:
            return v
    return None


def tmux(*args):
    return subprocess.run(["tmux", "-L", tmux_socket, *args], capture_output=True, text=True)


def new_session(name, x, y, cmd):
    """tmux new-session, again if it met the previous server exiting (its last session had
    just ended: the new-session reached a dying server and the session never started)."""
    for _ in range(50):
        tmux("new-session", "-d", "-s", name, "-x", str(x), "-y", str(y), cmd)
        if tmux("has-session", "-t", name).returncode == 0:
            return
        time.sleep(0.1)
    fail(f"tmux new-session {name}")


def pane(target):
    return tmux("capture-pane", "-p", "-t", target).stdout


try:
    port = free_port()
    net = f"{claim_test_net()}.79"
    hosts = [f"{net}.{i}:{port}" for i in (1, 2, 3, 4)]
    farm_err = open(os.path.join(work, "farm.err"), "w")
    farm = subprocess.Popen([BIN, "farm", "--listen", f"{net}.1-{net}.4:{port}", "--fault",
                             f"{net}.4=refuse", "--stats", os.path.join(work, "farm.json"),
                             "--max-seconds", "120"], stderr=farm_err)
    procs.append(farm)
    wait_for("the farm", lambda: "listening" in open(os.path.join(work, "farm.err")).read())
    conf = os.path.join(work, "mx.conf")
    with open(conf, "w") as f:
        f.write(f"""routes = ( "smtp://{net}.1?pref=1&ttl=3600" "smtp://{net}.2?pref=1&ttl=3600"
                    "smtp://{net}.3?pref=1&ttl=3600" "smtp://{net}.4?pref=1&ttl=3600" )
remote_smtp_port = {port}
outbound_throttle_connections = "100000"
""" + "".join(f'Host "{net}.{i}" {{ max_outbound_connections = 3 }}\n' for i in (1, 2, 3, 4)))

    # 12 sessions in flight for 9 reachable slots (3 hosts x 3; the 4th refuses): 9 hold their
    # connection 3 s, 3 wait for a slot.
    load_err = open(os.path.join(work, "load.err"), "w")
    load = subprocess.Popen([BIN, "load", "--config", conf, "--domains", "a.test,b.test",
                             "--sessions", "30", "--concurrency", "12", "--hold-ms", "3000",
                             "--wait-ms", "60000", "--admin", "127.0.0.1:0",
                             "--json", os.path.join(work, "load.json"), "--max-seconds", "90"],
                            stdout=subprocess.DEVNULL, stderr=load_err)
    procs.append(load)

    def admin_port_from_stderr():
        text = open(os.path.join(work, "load.err")).read()
        for word in text.split():
            if word.isdigit() and "admin endpoint on port" in text:
                return int(word)
        return None
    admin_port = wait_for("the admin endpoint", admin_port_from_stderr)

    # --- /metrics while the load runs: promtool, and gauges against the farm's own counts.
    def plateau():
        status, text = http("/metrics")
        if status != 200:
            return None
        m = series(text)
        active = {h: host_value(m, "mxsched_host_active_connections", h) for h in hosts}
        if sum(v or 0 for v in active.values()) != 9 or m.get("mxsched_sessions_waiting") != 3:
            return None
        try:
            farm_stats = json.load(open(os.path.join(work, "farm.json")))
        except (OSError, ValueError):
            return None
        current = {a["address"]: a["current"] for a in farm_stats["addresses"]}
        if any(current.get(h) != active[h] for h in hosts):
            return None  # a connection opened or closed between the two reads: look again
        return text, m, current
    text, m, current = wait_for("a scrape agreeing with the farm's server-side counts", plateau)
    print("server-side current per host:", current)
    with open(os.path.join(work, "metrics.txt"), "w") as f:
        f.write(text)
    check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                           text=True)
    if check.returncode != 0:
        fail(f"promtool check metrics: {check.stdout}{check.stderr}")
    for h in hosts[:3]:
        if current[h] != 3 or host_value(m, "mxsched_host_connection_limit", h) != 3:
            fail(f"{h}: want 3 active of limit 3, farm says {current[h]}")
        if host_value(m, "mxsched_host_reachable", h) != 1:
            fail(f"{h} should be reachable")
    refused = hosts[3]
    if host_value(m, "mxsched_host_reachable", refused) != 0:
        fail("the refusing host should be marked unreachable")
    if (host_value(m, "mxsched_host_connections_total", refused, 'outcome="connect_failed"')
            or 0) < 1 or (host_value(m, "mxsched_host_consecutive_failures", refused) or 0) < 1:
        fail("the refused connect should be counted on its host")
    if m.get('mxsched_acquire_deferrals_total{reason="hosts_at_limit"}', 0) < 1:
        fail("sessions waiting for a slot were first deferred at the host limits")
    if m.get("mxsched_domains_resident") != 2:
        fail("two resident domains")

    # --- /hosts
    status, body = http("/hosts")
    hj = {h["host"]: h for h in json.loads(body)}
    if status != 200 or set(hj) != set(hosts):
        fail(f"/hosts: {status} {body[:300]}")
    if hj[refused]["state"] != "failed" or hj[refused]["retry_in_s"] <= 0:
        fail(f"/hosts: the refusing host: {hj[refused]}")

    # --- /domains/NAME against `route --json` (a separate process: same routes, no traffic)
    status, body = http("/domains/a.test")
    live = json.loads(body)
    route = json.loads(subprocess.run([BIN, "route", "--config", conf, "--json", "a.test"],
                                      capture_output=True, text=True, check=True).stdout)[0]

    def shape(v):
        return (v["domain"], v["state"], v["limit"], [
            (t["tier"], t["mx_pref"], sorted((h["name"], h["address"], h["port"], h["limit"])
                                              for h in t["hosts"])) for t in v["tiers"]])
    if status != 200 or shape(live) != shape(route):
        fail(f"/domains/a.test {live} differs from route --json {route}")
    # The same view (issue 24: /domains lacked "items", each tier's "mx" and the cluster
    # fields): the same fields, the same items and tiers; the cluster counts are null here.
    if set(live) != set(route) or live["items"] != route["items"]:
        fail(f"fields: /domains {sorted(live)} vs route --json {sorted(route)}")
    if [t["mx"] for t in live["tiers"]] != [t["mx"] for t in route["tiers"]]:
        fail("each tier's mx as route --json")
    if set(live["tiers"][0]["hosts"][0]) != set(route["tiers"][0]["hosts"][0]):
        fail("the same host fields as route --json")
    if live["active"] < 1:
        fail("live counts: a.test has connections open")

    # --- POST /refresh re-plans now: the route's TTL starts again.
    aged = wait_for("the route to age a second",
                    lambda: (lambda v: v if v["ttl_left_s"] < 3600 else None)(
                        json.loads(http("/domains/a.test")[1])))
    status, body = http("/refresh?domain=a.test", "POST")
    if status != 200 or json.loads(body)["route"]["ttl_left_s"] <= aged["ttl_left_s"]:
        fail(f"refresh: {status} {body[:300]} (before: ttl_left_s {aged['ttl_left_s']})")
    if http("/refresh?domain=all", "POST")[0] != 200:
        fail("refresh all")

    # --- bad requests: 4xx, and the route is untouched
    def plan(view):  # what a request could change: the route's tiers and hosts (not live counts)
        return [(t["tier"], t["mx_pref"], [(h["address"], h["port"], h["name"], h["configured_limit"])
                                           for h in t["hosts"]]) for t in view["tiers"]]

    before = plan(json.loads(http("/domains/b.test")[1]))
    for req, want in [(b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n", 404),
                      (b"DELETE /hosts HTTP/1.1\r\nHost: x\r\n\r\n", 405),
                      (b"GET /refresh?domain=b.test HTTP/1.1\r\nHost: x\r\n\r\n", 405),
                      (b"POST /refresh?domain=%zz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", 400),
                      (b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n", 431)]:
        got = raw(req)
        if got != want:
            fail(f"{req[:40]!r}: {got}, want {want}")
    if plan(json.loads(http("/domains/b.test")[1])) != before:
        fail("a bad request changed the route")

    # --- top in tmux against the running load
    top_cmd = f"{BIN} top --admin 127.0.0.1:{admin_port}; echo EXIT=$? > {work}/top.exit"
    new_session("top", 120, 30, top_cmd)
    screen = wait_for("top to show the hosts",
                      lambda: (lambda s: s if hosts[0] in s and "ACTIVE/LIMIT" in s and "/3" in s
                               and "sessions/s" in s else None)(pane("top")))
    print(screen)
    header = next((l for l in screen.splitlines() if "ACTIVE/LIMIT" in l), "")
    if "MX" not in header:
        fail("a wide terminal shows the MX column")
    # A rate throttle (issue 22 item 5; 100000/s: it holds nothing back here) has its line.
    if "throttle global connections:" not in screen or "starts/s" not in screen:
        fail(f"top shows the configured throttle:\n{screen}")
    tmux("resize-window", "-t", "top", "-x", "40", "-y", "12")
    narrow = wait_for("top to redraw for a narrow terminal",
                      lambda: (lambda s: s if "ACTIVE/LIMIT" in s and "STATE" not in s else None)(
                          pane("top")))
    if any(len(line) > 40 for line in narrow.splitlines()):
        fail(f"narrow terminal: a line is wider than 40 columns:\n{narrow}")

    # The worker goes away: the load ends, top says so and keeps running.
    if load.wait(timeout=90) != 0:
        fail(f"load exited {load.returncode}: {open(os.path.join(work, 'load.err')).read()}")
    tmux("resize-window", "-t", "top", "-x", "120", "-y", "30")
    wait_for("top to report the worker unreachable", lambda: "unreachable" in pane("top"))
    tmux("send-keys", "-t", "top", "q")
    wait_for("top to quit on q", lambda: os.path.exists(f"{work}/top.exit"))
    if open(f"{work}/top.exit").read().strip() != "EXIT=0":
        fail("top exit status after q")

    # Ctrl-C quits cleanly too.
    os.unlink(f"{work}/top.exit")
    new_session("top2", 80, 20, top_cmd)
    wait_for("the second top to draw", lambda: "mxsched top" in pane("top2"))
    tmux("send-keys", "-t", "top2", "C-c")
    wait_for("top to quit on Ctrl-C", lambda: os.path.exists(f"{work}/top.exit"))
    if open(f"{work}/top.exit").read().strip() != "EXIT=0":
        fail("top exit status after Ctrl-C")

    report = json.load(open(os.path.join(work, "load.json")))
    if report["connected"] + report["deferred"] + report["failed"] != 30:
        fail(f"sessions unaccounted: {report}")
    farm.terminate()
    farm.wait(timeout=30)
    for a in json.load(open(os.path.join(work, "farm.json")))["addresses"]:
        if a["peak"] > 3:
            fail(f"{a['address']}: server-side peak {a['peak']} over its limit 3")
    print("PASS: connected", report["connected"], "deferred", report["deferred"],
          "failed", report["failed"])

    # --- egress bindings (issue 21 item 6): a group of two source addresses, each with a
    # Binding::Host limit of 3 on the one host; 8 sessions hold, 6 connect, 2 wait. The
    # per-binding numbers in /metrics, /hosts, /domains, route and top must be what the farm
    # counted per source address.
    port2 = free_port()
    dest, src = f"{net}.1:{port2}", {"b12": f"{net}.12", "b13": f"{net}.13"}
    farm2 = subprocess.Popen([BIN, "farm", "--listen", f"{net}.1:{port2}", "--stats",
                              os.path.join(work, "farm2.json"), "--max-seconds", "120"],
                             stderr=open(os.path.join(work, "farm2.err"), "w"))
    procs.append(farm2)
    wait_for("the second farm", lambda: "listening" in open(os.path.join(work, "farm2.err")).read())
    conf2 = os.path.join(work, "bind.conf")
    with open(conf2, "w") as f:
        f.write(f"""routes = ( "smtp://{net}.1?ttl=3600" )
remote_smtp_port = {port2}
Host "{net}.1" {{ max_outbound_connections = 10 }}
Binding_Group "pool" {{
  Binding "b12" {{ bind_address = "{src['b12']}"  Host "{net}.1" {{ max_outbound_connections = 3 }} }}
  Binding "b13" {{ bind_address = "{src['b13']}"  Host "{net}.1" {{ max_outbound_connections = 3 }} }}
}}
""")
    open(os.path.join(work, "load2.err"), "w").close()
    load2 = subprocess.Popen([BIN, "load", "--config", conf2, "--domains", "a.test",
                              "--binding-group", "pool", "--sessions", "8", "--concurrency", "8",
                              "--hold-ms", "600000", "--wait-ms", "60000", "--admin", "127.0.0.1:0",
                              "--max-seconds", "90"],
                             stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "load2.err"), "w"))
    procs.append(load2)

    def admin_port2():
        text = open(os.path.join(work, "load2.err")).read()
        if "admin endpoint on port" not in text:
            return None
        return int(text.split("admin endpoint on port")[1].split()[0])
    admin_port = wait_for("the second admin endpoint", admin_port2)

    def bound(name, b):
        return f'{name}{{binding="{b}",host="{dest}",mx="{net}.1"}}'

    def bound_plateau():
        status, text = http("/metrics")
        if status != 200:
            return None
        m = series(text)
        got = {b: m.get(bound("mxsched_binding_host_active_connections", b)) for b in src}
        if got != {"b12": 3, "b13": 3} or m.get("mxsched_sessions_waiting") != 2:
            return None
        try:
            sources = {x["source"]: x for x in
                       json.load(open(os.path.join(work, "farm2.json")))["sources"]}
        except (OSError, ValueError, KeyError):
            return None
        if any(sources.get(src[b], {}).get("current") != got[b] for b in src):
            return None  # the farm writes its stats every second: look again
        return text, m, sources
    text, m, sources = wait_for("per-binding gauges agreeing with the farm's per-source counts",
                                bound_plateau)
    print("farm per source:", {a: (x["current"], x["peak"]) for a, x in sources.items()})
    check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                           text=True)
    if check.returncode != 0:
        fail(f"promtool check metrics (bindings): {check.stdout}{check.stderr}")
    for b in src:
        if m.get(bound("mxsched_binding_host_connection_limit", b)) != 3:
            fail(f"{b}: Binding::Host limit 3 on /metrics")
        if m.get(f'mxsched_binding_active_connections{{binding="{b}"}}') != 3:
            fail(f"{b}: mxsched_binding_active_connections")
        if m.get(f'mxsched_binding_info{{binding="{b}",source="{src[b]}"}}') != 1:
            fail(f"{b}: mxsched_binding_info with its source")
    if host_value(m, "mxsched_host_active_connections", dest) != 6:
        fail("the host's total is both bindings' connections")

    status, body = http("/hosts")
    hb = {b["binding"]: b for b in json.loads(body)[0]["bindings"]}
    for b in src:
        if (hb[b]["active"], hb[b]["limit"], hb[b]["source"], hb[b]["state"]) != (
                sources[src[b]]["current"], 3, src[b], "up"):
            fail(f"/hosts {b}: {hb[b]} (farm: {sources[src[b]]})")

    # /domains/NAME and route --json: the same per-binding rows (names, sources, limits); the
    # live view has the counts, the route (another process, no traffic) zeros.
    live = json.loads(http("/domains/a.test")[1])
    route = json.loads(subprocess.run([BIN, "route", "--config", conf2, "--json", "a.test"],
                                      capture_output=True, text=True, check=True).stdout)[0]

    def rows(v):
        return ([(b["binding"], b["source"], b["limit"]) for b in v["bindings"]],
                [(b["binding"], b["source"], b["limit"]) for b in v["tiers"][0]["hosts"][0]["bindings"]])
    if rows(live) != rows(route):
        fail(f"bindings: /domains {rows(live)} vs route --json {rows(route)}")
    want = [("b12", src["b12"], 32), ("b13", src["b13"], 32), ("default", "", 32)]
    if rows(live)[0] != want:
        fail(f"per-binding domain rows {rows(live)[0]}, want {want}")
    if {b["binding"]: b["active"] for b in live["bindings"]} != {"b12": 3, "b13": 3, "default": 0}:
        fail(f"per-binding domain counts: {live['bindings']}")
    human = subprocess.run([BIN, "route", "--config", conf2, "a.test"], capture_output=True,
                           text=True, check=True).stdout
    for b in src:
        if f"via {b} from {src[b]}: active 0/3, up" not in human:
            fail(f"route shows {b} at the host:\n{human}")
    if "bindings (connections to this domain" not in human:
        fail(f"route shows the per-binding domain counts:\n{human}")

    # top: a row per binding under the host, with its source.
    top_cmd = f"{BIN} top --admin 127.0.0.1:{admin_port}; echo EXIT=$? > {work}/top.exit"
    os.unlink(f"{work}/top.exit")
    new_session("top3", 120, 30, top_cmd)
    screen = wait_for("top to show a row per binding",
                      lambda: (lambda s: s if all(f"via {b}" in s for b in src)
                               and f"from {src['b13']}" in s else None)(pane("top3")))
    print(screen)
    lines = screen.splitlines()
    for b in src:
        row = next(l for l in lines if f"via {b}" in l)
        if "3/3" not in row or "up" not in row or f"from {src[b]}" not in row:
            fail(f"top's row for {b}: {row!r}")
    host_row = next(l for l in lines if l.startswith(dest))
    if "6/10" not in host_row:
        fail(f"top's host row: {host_row!r}")
    tmux("send-keys", "-t", "top3", "q")
    wait_for("top to quit", lambda: os.path.exists(f"{work}/top.exit"))

    load2.terminate()  # SIGTERM: the run stops and reports (exit 143)
    if load2.wait(timeout=60) != 143:
        fail(f"load through bindings exited {load2.returncode}")
    farm2.terminate()
    farm2.wait(timeout=30)
    final = {x["source"]: x for x in json.load(open(os.path.join(work, "farm2.json")))["sources"]}
    for b in src:
        if final[src[b]]["peak"] != 3:
            fail(f"{src[b]}: server-side peak {final[src[b]]['peak']}, want its limit 3")
    print("PASS: bindings: per source", {a: x["peak"] for a, x in final.items()})
finally:
    cleanup()
