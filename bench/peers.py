"""Peers the Python benches share: a free loopback port, a child ended by its PID, a port
polled until it accepts, and Postfix's smtp-sink with its own counters. Traffic goes only
to 127.0.0.0/8; every wait is bounded."""
import os, pwd, re, shutil, signal, socket, subprocess, time

# Postfix's test tools (Debian package postfix), or None when not installed.
SINK = shutil.which("smtp-sink") or next(
    (p for p in ("/usr/sbin/smtp-sink",) if os.access(p, os.X_OK)), None)
SOURCE = shutil.which("smtp-source") or next(
    (p for p in ("/usr/sbin/smtp-source",) if os.access(p, os.X_OK)), None)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def stop_pid(proc, seconds=10):
    """SIGTERM to this child's PID, then SIGKILL to the same PID if it does not exit."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=seconds)


def wait_accepting(addr, port, proc, what, seconds=10):
    """Polls connect() until addr:port accepts (bounded); fails if proc exits first.
    Returns the number of probe connections that succeeded (always 1)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited ({proc.returncode}) before accepting on {addr}:{port}")
        try:
            socket.create_connection((addr, port), timeout=0.5).close()
            return 1
        except OSError:
            time.sleep(0.02)
    stop_pid(proc)
    raise SystemExit(f"{what} did not accept on {addr}:{port} within {seconds} s")


class Sink:
    """Postfix smtp-sink as a child process: `-c` prints its running counters
    (sess=S quit=Q mesg=M) on every session end, QUIT and "."; the last line is read
    after it is ended by PID. Its output goes to a file in `work`."""

    def __init__(self, addr, port, work, backlog=256):
        self.out_path = os.path.join(work, f"sink-{time.monotonic_ns()}.out")
        self.out = open(self.out_path, "w")
        cmd = [SINK, "-c"]
        if os.geteuid() == 0:  # required as root; refused (initgroups) otherwise
            cmd += ["-u", pwd.getpwuid(os.getuid()).pw_name]
        cmd += [f"{addr}:{port}", str(backlog)]
        self.proc = subprocess.Popen(cmd, stdout=self.out, stderr=subprocess.STDOUT)
        self.probes = wait_accepting(addr, port, self.proc, "smtp-sink")

    def stop(self):
        stop_pid(self.proc)
        self.out.close()
        with open(self.out_path) as f:
            counts = re.findall(r"sess=(\d+) quit=(\d+) mesg=(\d+)", f.read())
        sess, quit, mesg = (int(x) for x in counts[-1]) if counts else (0, 0, 0)
        # The readiness probe is a session that sent nothing.
        return {"sessions": sess - self.probes, "quits": quit, "messages": mesg}
