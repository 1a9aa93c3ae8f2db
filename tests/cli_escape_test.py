#!/usr/bin/env python3
"""Issue 20 item 5: every byte that came from outside is escaped before it reaches a terminal
(base/strings.h ForTerminal), on each path, against real peers on loopback: a DNS server of
our own (an MX target and a reason holding ESC), a /metrics server (top: an MX label with
ESC and a newline), a Redis-protocol server whose errors hold ESC (route with
cluster_limits), and argv values (load --json/--admin, farm --flap/--fault/--listen/--stats,
demo --out, top --admin). A raw ESC (0x1b) or CSI (0x9b) in any output fails the test.
Ends only the processes it started."""
import http.server
import os
import socket
import socketserver
import struct
import subprocess
import sys
import tempfile
import threading

BIN = sys.argv[1]
EVIL = "\x1b[31mRED\x1b[0m"
work = tempfile.mkdtemp()
failures = []


def run(args, timeout=60):
    p = subprocess.run([BIN] + args, capture_output=True, timeout=timeout)
    return p.returncode, p.stdout + p.stderr


def check(what, args, must_show=b"\\e[31m", rc_want=None, timeout=60):
    rc, out = run(args, timeout)
    if b"\x1b" in out or b"\x9b" in out:
        failures.append(f"{what}: raw escape reached the terminal: {out[:300]!r}")
    elif must_show and must_show not in out:
        failures.append(f"{what}: expected {must_show!r} shown escaped in {out[:300]!r}")
    elif rc_want is not None and rc != rc_want:
        failures.append(f"{what}: exit {rc}, want {rc_want}: {out[:300]!r}")
    return out


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


# --- argv values -------------------------------------------------------------------------
check("farm --flap", ["farm", "--listen", "127.0.0.1:2525", "--flap", f"127.0.0.1{EVIL}=100",
                      "--max-seconds", "1"], rc_want=2)
check("farm --fault", ["farm", "--listen", "127.0.0.1:2525", "--fault", f"x{EVIL}=refuse",
                       "--max-seconds", "1"], rc_want=2)
check("farm --listen", ["farm", "--listen", f"{EVIL}:2525", "--max-seconds", "1"], rc_want=2)
check("farm --stats", ["farm", "--listen", f"127.0.0.1:{free_port()}", "--stats",
                       f"{work}/no/{EVIL}/s.json", "--max-seconds", "1"], rc_want=2)
check("demo --out", ["demo", "--seconds", "1", "--out", f"{work}/no/{EVIL}"], rc_want=1)
check("top --admin", ["top", "--admin", f"127.0.0.1:1{EVIL}", "--once"], rc_want=1)
conf = os.path.join(work, "closed.conf")
with open(conf, "w") as f:
    f.write(f'routes = ( "127.0.0.1" )\nremote_smtp_port = {free_port()}\n')
check("load --admin", ["load", "--config", conf, "--domains", "a.test", "--sessions", "1",
                       "--admin", f"127.0.0.1:{EVIL}"], rc_want=2)
check("load --json", ["load", "--config", conf, "--domains", "a.test", "--sessions", "1",
                      "--max-attempts", "1", "--json", f"{work}/no/{EVIL}/r.json"])


# --- DNS: an MX target name holding ESC --------------------------------------------------
def dns_name(data, off):
    labels = []
    while data[off]:
        n = data[off]
        labels.append(data[off + 1:off + 1 + n])
        off += 1 + n
    return labels, off + 1


def encode(labels):
    return b"".join(bytes([len(l)]) + l for l in labels) + b"\0"


EVIL_MX = [b"mx" + EVIL.encode(), b"evil", b"test"]


def dns_answer(q):
    qid, flags = struct.unpack(">HH", q[:4])
    labels, off = dns_name(q, 12)
    qtype, qclass = struct.unpack(">HH", q[off:off + 4])
    question = q[12:off + 4]
    answers = b""
    if qtype == 15:  # MX -> the hostile name
        rdata = struct.pack(">H", 10) + encode(EVIL_MX)
        answers = encode(labels) + struct.pack(">HHIH", 15, 1, 60, len(rdata)) + rdata
    elif qtype == 1:  # A -> loopback
        answers = encode(labels) + struct.pack(">HHIH", 1, 1, 60, 4) + bytes([127, 0, 0, 7])
    count = 1 if answers else 0
    return struct.pack(">HHHHHH", qid, 0x8180, 1, count, 0, 0) + question + answers


dns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
dns.bind(("127.0.0.1", 0))
dport = dns.getsockname()[1]
stop = threading.Event()


def serve_dns():
    dns.settimeout(0.2)
    while not stop.is_set():
        try:
            q, addr = dns.recvfrom(4096)
        except socket.timeout:
            continue
        try:
            dns.sendto(dns_answer(q), addr)
        except Exception:  # a malformed query is dropped
            pass


threading.Thread(target=serve_dns, daemon=True).start()
mxconf = os.path.join(work, "mx.conf")
with open(mxconf, "w") as f:
    f.write("prohibited_hosts = ( )\n")
out = check("route (MX name from DNS)", ["route", "--config", mxconf, "--dns",
                                          f"127.0.0.1:{dport}", "evil.test"], must_show=None)
if b"\\e[31m" not in out and b"\\x1b" not in out:
    failures.append(f"route: the hostile MX name is not shown escaped: {out[:400]!r}")

# --- Redis errors: a server that answers every command with an error holding ESC ---------
def parse_command(buf):
    """Length of the first complete RESP array command in buf, or 0."""
    if not buf.startswith(b"*"):
        return len(buf) if b"\r\n" in buf else 0  # an inline command: a line
    end = buf.find(b"\r\n")
    if end < 0:
        return 0
    off = end + 2
    for _ in range(int(buf[1:end])):
        e = buf.find(b"\r\n", off)
        if e < 0:
            return 0
        size = int(buf[off + 1:e])
        off = e + 2 + size + 2
        if off > len(buf):
            return 0
    return off


class EvilRedis(socketserver.BaseRequestHandler):
    def handle(self):
        self.request.settimeout(5)
        buf = b""
        try:
            while True:
                data = self.request.recv(65536)
                if not data:
                    return
                buf += data
                # One error per complete RESP command (*N\r\n then N bulk strings).
                while True:
                    n = parse_command(buf)
                    if n == 0:
                        break
                    buf = buf[n:]
                    self.request.sendall(b"-ERR " + EVIL.encode() + b" no\r\n")
        except OSError:
            pass


redis = socketserver.ThreadingTCPServer(("127.0.0.1", 0), EvilRedis)
redis.daemon_threads = True
threading.Thread(target=redis.serve_forever, daemon=True).start()
rconf = os.path.join(work, "redis.conf")
with open(rconf, "w") as f:
    f.write(f'routes = ( "127.0.0.1" )\ncluster_limits = "redis://127.0.0.1:{redis.server_address[1]}"\n'
            'max_outbound_connections = 4\n')
out = check("route (Redis error)", ["route", "--config", rconf, "a.test"], must_show=None)
if b"Redis: " not in out or b"no reply" in out:
    failures.append(f"route: the Redis error is not shown: {out[:400]!r}")


# --- top: /metrics labels holding ESC and a newline --------------------------------------
class Metrics(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ('mxsched_host_active_connections{host="127.0.0.1:25",mx="mx\x1b[31m\\nX"} 1\n'
                'mxsched_host_connection_limit{host="127.0.0.1:25",mx="mx\x1b[31m\\nX"} 4\n'
                'mxsched_host_reachable{host="127.0.0.1:25",mx="mx\x1b[31m\\nX"} 1\n'
                'mxsched_acquire_deferrals_total{reason="r\x1b[31m"} 3\n').encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Metrics)
threading.Thread(target=web.serve_forever, daemon=True).start()
out = check("top (labels)", ["top", "--admin", f"127.0.0.1:{web.server_address[1]}", "--once",
                             "--interval-ms", "100"], rc_want=0)
if b"mx\\e[31m\\nX" not in out:
    failures.append(f"top: the MX label is not shown escaped on one line: {out[:600]!r}")

stop.set()
web.shutdown()
redis.shutdown()
if failures:
    print("FAIL:\n" + "\n".join(failures))
    sys.exit(1)
print("ok: every path escaped")
