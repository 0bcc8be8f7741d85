#!/usr/bin/python3
"""mailshim benchmarks: mailshim against stunnel4, hitch and haproxy, all
measured in the same run, in front of the same plaintext upstream, driven
by the same load client. See README.md beside this file.

Figures (lower is better for all three):
  cpu_session  CPU time of the proxy's processes per full session
               (TLS 1.3 handshake + EHLO/MAIL/RCPT/DATA ~2 KiB/QUIT)
  cpu_mib      CPU time of the proxy's processes per MiB relayed client ->
               upstream (a few long DATA bodies)
  mem_idle     growth of the proxy's memory (Pss, smaps_rollup) per idle
               session (handshake done, greeting read, nothing more)

Standard library only; run with Debian's /usr/bin/python3.
Exit status: 0 when every measurement ran, 1 when something could not run.
"""

import argparse
import json
import os
import random
import resource
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CLK_TCK = os.sysconf("SC_CLK_TCK")
PORT_LO, PORT_HI = 20000, 32000


def env_int(name, default):
    v = os.environ.get(name)
    return int(v) if v else default


class BenchError(Exception):
    """Something needed for a measurement could not run."""


# --------------------------------------------------------------------------
# /proc

def proc_tree(root):
    """root and every descendant process, from /proc/*/stat parent links."""
    children = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                s = f.read()
        except OSError:
            continue
        rest = s[s.rindex(")") + 2:].split()
        children.setdefault(int(rest[1]), []).append(int(d))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, ()))
    return out


def pin(pids, cpus):
    """Every thread of pids to the set cpus (threads and children made
    later inherit it from the thread that makes them). Returns the
    threads that could not be moved (another user's, when not root); a
    thread that has exited meanwhile is not one of them."""
    refused = []
    for pid in pids:
        try:
            tids = [int(t) for t in os.listdir("/proc/%d/task" % pid)]
        except OSError:
            continue
        for tid in tids:
            try:
                os.sched_setaffinity(tid, cpus)
            except ProcessLookupError:
                pass
            except OSError:
                refused.append(tid)
    return refused


def cpu_ticks(pids):
    """utime+stime of each process (all its threads, live and exited) plus
    cutime+cstime (its children that exited and were reaped), in ticks."""
    total = 0
    for p in pids:
        try:
            with open("/proc/%d/stat" % p) as f:
                s = f.read()
        except OSError:
            continue
        rest = s[s.rindex(")") + 2:].split()
        # fields 14-17 of proc(5); rest[0] is field 3
        total += sum(int(x) for x in rest[11:15])
    return total


def memory_kb(pids):
    """(Pss, Rss) summed over pids, in KiB."""
    pss = rss = 0
    for p in pids:
        try:
            with open("/proc/%d/smaps_rollup" % p) as f:
                for line in f:
                    if line.startswith("Pss:"):
                        pss += int(line.split()[1])
                    elif line.startswith("Rss:"):
                        rss += int(line.split()[1])
        except OSError:
            continue
    return pss, rss


# --------------------------------------------------------------------------
# ports and processes

_used_ports = set()


def free_port():
    """A loopback TCP port in 20000-32000 that binds right now."""
    for _ in range(500):
        port = random.randint(PORT_LO, PORT_HI)
        if port in _used_ports:
            continue
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            s.close()
        _used_ports.add(port)
        return port
    raise BenchError("no free loopback port in %d-%d" % (PORT_LO, PORT_HI))


_live = []   # Popen objects to stop at exit


def spawn(argv, log_path, cwd=None):
    log = open(log_path, "ab")
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                         cwd=cwd, start_new_session=True)
    log.close()
    _live.append(p)
    return p


def stop(p, grace=5.0):
    """SIGTERM to the process group we started (pgid = its pid), SIGKILL
    after grace seconds, and reap it."""
    if p.poll() is None:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            p.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(timeout=5)
    else:
        # the leader is gone; children it left in its group may remain
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    if p in _live:
        _live.remove(p)


def stop_all():
    for p in list(_live):
        try:
            stop(p, grace=3.0)
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


def wait_listening(port, proc, log_path, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError("exited with status %s before listening:\n%s"
                             % (proc.returncode, tail(log_path)))
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise BenchError("not listening on %d after %.0fs:\n%s" % (port, timeout, tail(log_path)))


def need_bin(*names):
    for n in names:
        path = shutil.which(n) or shutil.which(n, path="/usr/sbin:/sbin:/usr/bin")
        if path:
            return path
    raise BenchError("%s is not installed" % " or ".join(names))


def tail(path, n=20):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


# --------------------------------------------------------------------------
# CPU caps: one cgroup per process, for the scaling figure

class CpuCaps:
    """Holds chosen processes to a fixed share of one CPU each, one cgroup
    per process (v2 cpu.max, or v1 cpu.cfs_quota_us). On a 2-CPU machine
    the load client needs more CPU per session than the proxy, so 1 -> 2
    workers uncapped measures the machine; with each worker held to a
    quarter of a CPU, the client has room for both and the ratio measures
    how the proxy spreads its load over its workers."""
    PERIOD_US = 20000

    def __init__(self):
        self.base = None
        self.v2 = False
        self.why = None
        self.groups = []
        try:
            self._find()
        except OSError as e:
            self.why = "cgroups: %s" % e
            self.base = None

    def _find(self):
        root = "/sys/fs/cgroup"
        if os.path.exists(os.path.join(root, "cgroup.controllers")):
            with open(os.path.join(root, "cgroup.controllers")) as f:
                if "cpu" not in f.read().split():
                    self.why = "cgroup v2 without the cpu controller"
                    return
            with open(os.path.join(root, "cgroup.subtree_control")) as f:
                if "cpu" not in f.read().split():
                    with open(os.path.join(root, "cgroup.subtree_control"), "w") as w:
                        w.write("+cpu")
            self.v2 = True
            mount = root
        else:
            mount = None
            with open("/proc/mounts") as f:
                for line in f:
                    dev, path, fstype, opts = line.split()[:4]
                    if fstype == "cgroup" and "cpu" in opts.split(","):
                        mount = path
                        break
            if mount is None:
                self.why = "no cgroup with the cpu controller is mounted"
                return
        base = os.path.join(mount, "mailshim-bench.%d" % os.getpid())
        os.mkdir(base)
        self.base = base
        if self.v2:
            with open(os.path.join(base, "cgroup.subtree_control"), "w") as w:
                w.write("+cpu")

    def cap(self, pid, share):
        """Moves pid (all its threads) into a group of its own that may use
        share of one CPU."""
        if self.base is None:
            raise BenchError("cannot cap CPU: %s" % self.why)
        g = os.path.join(self.base, "p%d" % pid)
        os.mkdir(g)
        self.groups.append(g)
        quota = max(1000, int(share * self.PERIOD_US))
        if self.v2:
            files = [("cpu.max", "%d %d" % (quota, self.PERIOD_US))]
        else:
            files = [("cpu.cfs_period_us", str(self.PERIOD_US)),
                     ("cpu.cfs_quota_us", str(quota))]
        for name, value in files + [("cgroup.procs", str(pid))]:
            with open(os.path.join(g, name), "w") as f:
                f.write(value)

    def throttled(self):
        """Periods in which a capped group ran out of its quota, summed."""
        n = 0
        for g in self.groups:
            try:
                with open(os.path.join(g, "cpu.stat")) as f:
                    for line in f:
                        k, v = line.split()
                        if k == "nr_throttled":
                            n += int(v)
            except OSError:
                pass
        return n

    def release(self):
        """Removes the groups of processes that have exited (a group's last
        task may take a moment to leave)."""
        for g in self.groups:
            for _ in range(50):
                try:
                    os.rmdir(g)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.1)
        self.groups = []

    def close(self):
        self.release()
        if self.base is not None:
            try:
                os.rmdir(self.base)
            except OSError:
                pass
            self.base = None


# --------------------------------------------------------------------------
# the proxies

class Proxy:
    """One proxy under test. shape: "implicit" (implicit TLS -> plain),
    "starttls" (STARTTLS -> plain), "chain" (STARTTLS -> STARTTLS, to
    the TLS fixture upstream) or "plain" (no TLS on either side: what the
    same dialogue costs in sockets alone); workers: 1 or 2."""
    name = "?"
    shapes = ("implicit",)

    def __init__(self, bench, shape="implicit", workers=1):
        self.b = bench
        self.shape = shape
        self.workers = workers
        self.proc = None
        self.port = None
        self.log = None

    def argv_and_config(self, d):
        raise NotImplementedError

    def start(self, tag):
        self.port = free_port()
        d = os.path.join(self.b.tmp, "%s-%s-%s-w%d" % (self.name, tag, self.shape,
                                                         self.workers))
        os.makedirs(d)
        self.log = os.path.join(d, "log")
        argv = self.argv_and_config(d)
        self.proc = spawn(argv, self.log, cwd=d)
        try:
            wait_listening(self.port, self.proc, self.log)
        except BenchError as e:
            self.stop()
            raise BenchError("%s: %s" % (self.name, e)) from None
        time.sleep(0.2)   # let forked workers come up

    def pids(self):
        if self.proc is None or self.proc.poll() is not None:
            raise BenchError("%s is not running:\n%s" % (self.name, tail(self.log)))
        return proc_tree(self.proc.pid)

    def stop(self):
        if self.proc is not None:
            stop(self.proc)
            self.proc = None

    helpers = 0   # child processes that are not workers

    def worker_shares(self):
        """[(pid, CPUs)] of the processes doing the work: by default the
        children of the first process, one worker each (a helper child
        gets a share too, which it does not use)."""
        want = self.workers + self.helpers
        deadline = time.monotonic() + 10
        while True:
            kids = [p for p in proc_tree(self.proc.pid) if p != self.proc.pid]
            if len(kids) >= want or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        if len(kids) != want:
            raise BenchError("%s: expected %d child processes, found %d"
                             % (self.name, want, len(kids)))
        return [(p, 1) for p in kids]


class Mailshim(Proxy):
    name = "mailshim"
    shapes = ("implicit", "starttls", "chain", "plain", "fixture")

    def argv_and_config(self, d):
        conf = os.path.join(d, "conf.d")
        os.makedirs(conf)
        listen_tls = self.shape if self.shape in ("implicit", "plain") else "starttls"
        # a plain listener takes no certificate, and no hop takes a minimum
        listen = "" if self.shape == "plain" else f"""listen_cert = {self.b.cert}
listen_key = {self.b.key}
"""
        min_version = "" if self.shape == "plain" else "tls_min_version = TLSv1.2\n"
        if self.shape == "chain":
            # the default policy: the upstream's chain and name are checked
            upstream = f"""upstream = 127.0.0.1:{self.b.fixture.port}
upstream_tls = starttls
upstream_ca = {self.b.cert}
upstream_name = localhost
"""
        else:
            upstream = f"""upstream = 127.0.0.1:{self.b.upstream}
upstream_tls = plain
"""
        with open(os.path.join(conf, "bench.conf"), "w") as f:
            f.write(f"""[global]
workers = {self.workers}
helo_name = bench.test
log_level = warn
max_connections = 100000
{min_version}
[bench]
listen = 127.0.0.1:{self.port}
listen_tls = {listen_tls}
{listen}{upstream}""")
        check = subprocess.run([self.b.mailshim, "-t", "-c", conf], capture_output=True,
                               text=True, timeout=30)
        if check.returncode != 0:
            raise BenchError("mailshim -t rejected the bench configuration:\n%s%s"
                             % (check.stdout, check.stderr))
        return [self.b.mailshim, "-c", conf]


class Stunnel(Proxy):
    name = "stunnel"
    shapes = ("implicit", "starttls", "chain")

    def argv_and_config(self, d):
        path = os.path.join(d, "stunnel.conf")
        with open(path, "w") as f:
            # debug = 3 (errors) like mailshim's log_level = warn: no line
            # per connection.
            f.write("foreground = yes\npid =\ndebug = 3\n")
            if self.shape == "chain":
                # Two chained services in one process: STARTTLS from the
                # client to plain on an inner port, then STARTTLS out to the
                # TLS upstream, checking its chain and name like mailshim.
                inner = free_port()
                f.write(f"""[in]
accept = 127.0.0.1:{self.port}
connect = 127.0.0.1:{inner}
protocol = smtp
cert = {self.b.cert}
key = {self.b.key}
sslVersionMin = TLSv1.2
[out]
client = yes
accept = 127.0.0.1:{inner}
connect = 127.0.0.1:{self.b.fixture.port}
protocol = smtp
verifyChain = yes
CAfile = {self.b.cert}
checkHost = localhost
sni = localhost
sslVersionMin = TLSv1.2
""")
            else:
                proto = "protocol = smtp\n" if self.shape == "starttls" else ""
                f.write(f"""[smtps]
accept = 127.0.0.1:{self.port}
connect = 127.0.0.1:{self.b.upstream}
cert = {self.b.cert}
key = {self.b.key}
sslVersionMin = TLSv1.2
{proto}""")
        return [need_bin("stunnel4", "stunnel"), path]


class Hitch(Proxy):
    name = "hitch"
    helpers = 1   # the OCSP stapling process beside the workers

    def argv_and_config(self, d):
        path = os.path.join(d, "hitch.conf")
        ocsp = os.path.join(d, "ocsp")
        os.makedirs(ocsp)
        with open(path, "w") as f:
            f.write(f"""frontend = "[127.0.0.1]:{self.port}"
backend = "[127.0.0.1]:{self.b.upstream}"
pem-file = "{self.b.combined}"
workers = {self.workers}
daemon = off
tls-protos = TLSv1.2 TLSv1.3
write-proxy-v2 = off
ocsp-dir = "{ocsp}"
log-level = 1
""")
            if os.geteuid() == 0:
                # hitch refuses to run its workers as root
                f.write('user = "nobody"\n')
        return [need_bin("hitch"), "--config=" + path]


class Haproxy(Proxy):
    name = "haproxy"
    shapes = ("implicit", "plain")

    def argv_and_config(self, d):
        path = os.path.join(d, "haproxy.cfg")
        tls = "" if self.shape == "plain" else " ssl crt " + self.b.combined
        with open(path, "w") as f:
            # maxconn bounds haproxy's own fd needs below this machine's
            # 20000-per-process cap.
            f.write(f"""global
    nbthread {self.workers}
    maxconn 9000
    ssl-default-bind-options ssl-min-ver TLSv1.2

defaults
    mode tcp
    timeout connect 10s
    timeout client 300s
    timeout server 300s

frontend bench
    bind 127.0.0.1:{self.port}{tls}
    default_backend upstream

backend upstream
    server up 127.0.0.1:{self.b.upstream}
""")
        return [need_bin("haproxy"), "-db", "-f", path]

    def worker_shares(self):
        # one process, one thread per worker: its group gets a share each
        return [(self.proc.pid, self.workers)]


PROXIES = {"mailshim": Mailshim, "stunnel": Stunnel, "hitch": Hitch, "haproxy": Haproxy}


# --------------------------------------------------------------------------
# the figures: key, label, unit, "low" or "high" is better

FIGS = [
    ("cpu_session", "CPU/session, implicit TLS, saturated", "us", "low"),
    ("cpu_session_paced", "CPU/session, implicit TLS, paced", "us", "low"),
    ("cpu_mib", "CPU/MiB, implicit TLS, saturated", "ms", "low"),
    ("cpu_mib_paced", "CPU/MiB, implicit TLS, paced", "ms", "low"),
    ("st_cpu_session", "CPU/session, STARTTLS->plain, saturated", "us", "low"),
    ("st_cpu_session_paced", "CPU/session, STARTTLS->plain, paced", "us", "low"),
    ("st_cpu_mib", "CPU/MiB, STARTTLS->plain, saturated", "ms", "low"),
    ("st_cpu_mib_paced", "CPU/MiB, STARTTLS->plain, paced", "ms", "low"),
    ("ch_cpu_session", "CPU/session, STARTTLS->STARTTLS, saturated", "us", "low"),
    ("ch_cpu_session_paced", "CPU/session, STARTTLS->STARTTLS, paced", "us", "low"),
    ("ch_cpu_mib", "CPU/MiB, STARTTLS->STARTTLS, saturated", "ms", "low"),
    ("ch_cpu_mib_paced", "CPU/MiB, STARTTLS->STARTTLS, paced", "ms", "low"),
    ("pl_cpu_session", "CPU/session, no TLS (plain->plain), saturated", "us", "low"),
    ("pl_cpu_session_paced", "CPU/session, no TLS (plain->plain), paced", "us", "low"),
    ("pl_cpu_mib", "CPU/MiB, no TLS (plain->plain), saturated", "ms", "low"),
    ("pl_cpu_mib_paced", "CPU/MiB, no TLS (plain->plain), paced", "ms", "low"),
    ("cpu_session_resumed", "CPU/session, tickets offered, saturated", "us", "low"),
    ("resumed", "handshakes resumed when tickets offered", "%", "high"),
    ("mem_idle", "memory/idle session (Pss)", "KiB", "low"),
    ("rss_idle", "memory/idle session (Rss)", "KiB", "low"),
    ("sps_w1", "sessions/s saturated, 1 worker", "1/s", "high"),
    ("sps_w2", "sessions/s saturated, 2 workers", "1/s", "high"),
    ("scaling", "scaling 1 -> 2 workers", "x", "high"),
    ("client_cpu", "load client's CPU/session, 1 worker, saturated", "us", "low"),
    ("sps_cap1", "sessions/s, 1 worker held to a CPU share", "1/s", "high"),
    ("sps_cap2", "sessions/s, 2 workers held to a share each", "1/s", "high"),
    ("scaling_cap", "scaling 1 -> 2 workers, held to a share", "x", "high"),
    ("lat_p50", "added latency per transaction, p50", "ms", "low"),
    ("lat_p99", "added latency per transaction, p99", "ms", "low"),
    ("lat1_p50", "added latency, every process on one CPU, p50", "ms", "low"),
    ("lat1_p99", "added latency, every process on one CPU, p99", "ms", "low"),
    ("held", "idle sessions one worker holds", "sessions", "high"),
    ("held_mem", "memory/session at that count (Pss)", "KiB", "low"),
]
FIG = {f[0]: f for f in FIGS}
# shown for reading the others (what bounds sessions/s), not compared
NOT_COMPARED = {"client_cpu"}
# the shapes of load a CPU figure comes in, and the prefix of its keys
SHAPES = (("implicit", ""), ("starttls", "st_"), ("chain", "ch_"), ("plain", "pl_"))


def parse_kv(line):
    out = {}
    for tok in line.split():
        if "=" in tok:
            k, v = tok.split("=", 1)
            out[k] = v.strip('"')
    return out


def fmt(v, unit=None):
    if v is None:
        return "-"
    if unit in ("1/s", "sessions", " sessions") or abs(v) >= 1000:
        return "%.0f" % v
    if abs(v) >= 100:
        return "%.1f" % v
    return "%.2f" % v


class Bench:
    def __init__(self, args):
        self.args = args
        self.mailshim = os.path.abspath(args.mailshim)
        self.client = os.path.join(args.out, "client")
        self.sink_bin = os.path.join(args.out, "sink")
        self.floor_bin = os.path.join(args.out, "floor")
        self.floor_peer_bin = os.path.join(args.out, "floor-openssl")
        quick = bool(os.environ.get("BENCH_QUICK"))
        self.quick = quick
        self.sessions = env_int("BENCH_SESSIONS", 300 if quick else 2000)
        self.conc = env_int("BENCH_CONC", 50)
        # about 1.5 s of a proxy's CPU: 150 clock ticks, not 40
        self.mib = env_int("BENCH_MIB", 32 if quick else 1024)
        self.streams = env_int("BENCH_STREAMS", 4)
        self.idle = env_int("BENCH_IDLE", 300 if quick else 2000)
        self.repeat = env_int("BENCH_REPEAT", 1 if quick else 3)
        self.idle_repeat = env_int("BENCH_IDLE_REPEAT", 1)
        self.rate = env_int("BENCH_RATE", 100)
        self.paced_sessions = env_int("BENCH_PACED_SESSIONS", 100 if quick else 500)
        # 8 s at 32 MiB/s: a paced bulk run spans 15-30 clock ticks of CPU
        # at 64 MiB, too few to tell two proxies apart.
        self.paced_mib = env_int("BENCH_PACED_MIB", 16 if quick else 256)
        self.paced_mibps = env_int("BENCH_PACED_MIBPS", 32)
        self.resume_n = env_int("BENCH_RESUME", 200 if quick else 1000)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        lim = soft if soft != resource.RLIM_INFINITY else 20000
        # two descriptors a session, a few dozen for the proxy itself
        self.max_idle = env_int("BENCH_MAX_IDLE", 1000 if quick else max(100, (lim - 64) // 2))
        self.client_limit = env_int("BENCH_CLIENT_TIMEOUT", 120)
        # Each worker's share of a CPU in the capped scaling figure: two
        # capped workers and the load client (which needs more CPU per
        # session than a worker) must fit in the machine with room to spare.
        self.cap_share = env_int("BENCH_CAP_PERCENT", 25) / 100.0
        self.cap_sessions = env_int("BENCH_CAP_SESSIONS", 300 if quick else 2000)
        self.caps = None
        names = os.environ.get("BENCH_PROXIES", "mailshim stunnel hitch haproxy").split()
        for n in names:
            if n not in PROXIES:
                raise BenchError("unknown proxy in BENCH_PROXIES: %s" % n)
        if "mailshim" not in names:
            names.insert(0, "mailshim")
        self.names = names
        self.tmp = None
        self.fixture = None
        self.raw = []          # lines for results.txt
        self.values = {n: {f[0]: [] for f in FIGS} for n in names + ["direct"]}
        self.by_round = {}     # (proxy, figure, round): value
        for n in names + ["direct"]:
            self.values[n].update({k: [] for k in ("txn_p50", "txn_p99", "txn1_p50",
                                                    "txn1_p99")})
        # the direct transaction, client and sink on one CPU, then on two
        self.wake = {"same": [], "cross": []}
        self.cpus = sorted(os.sched_getaffinity(0))
        self.floor = {}
        self.peer_library = "OpenSSL"
        self.profile = []
        self.tls = {}
        self.failures = []

    # ---- setup

    def setup(self):
        for f in (self.client, self.sink_bin, self.floor_bin, self.floor_peer_bin,
                  self.mailshim):
            if not os.access(f, os.X_OK):
                raise BenchError("missing executable: %s" % f)
        self.tmp = tempfile.mkdtemp(prefix="mailshim-bench.")
        self.cert = os.path.join(self.tmp, "cert.pem")
        self.key = os.path.join(self.tmp, "key.pem")
        self.combined = os.path.join(self.tmp, "combined.pem")
        r = subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-days", "2", "-subj", "/CN=localhost",
             "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
             "-keyout", self.key, "-out", self.cert],
            capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise BenchError("openssl could not make the certificate:\n" + r.stderr)
        with open(self.combined, "w") as out:
            for f in (self.cert, self.key):
                with open(f) as src:
                    out.write(src.read())
        self.upstream = free_port()
        log = os.path.join(self.tmp, "sink.log")
        self.sink = spawn([self.sink_bin, str(self.upstream)], log)
        wait_listening(self.upstream, self.sink, log)
        # The STARTTLS upstream of the STARTTLS -> STARTTLS shape: a
        # mailshim (STARTTLS -> plain sink), the same for every proxy and
        # never measured.
        self.fixture = Mailshim(self, "fixture", workers=2)
        self.fixture.start("fixture")
        self.caps = CpuCaps()

    def cleanup(self):
        stop_all()
        if self.caps is not None:
            self.caps.close()
        if self.tmp and not os.environ.get("BENCH_KEEP_TMP"):
            shutil.rmtree(self.tmp, ignore_errors=True)

    # ---- the floor: what the work itself costs with BoringSSL

    def bssl_speed(self, group, chunks=None):
        """{description: CPU microseconds per call} of one bssl speed
        group, scaled from wall to the CPU time the tool really used."""
        argv = [need_bin("bssl-tool"), "speed", "-filter", group, "-json",
                "-timeout", "1"]
        if chunks:
            argv += ["-chunks", str(chunks)]
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out, err = p.communicate(timeout=120)
        if p.returncode != 0:
            raise BenchError("bssl-tool speed -filter %s: %s" % (group, err.strip()))
        ops, wall = {}, 0
        for line in out.splitlines():
            line = line.strip().rstrip(",")
            if line.startswith("{"):
                d = json.loads(line)
                ops[d["description"]] = d["microseconds"] / d["numCalls"]
                wall += d["microseconds"]
        return ops, wall

    def measure_floor(self):
        table = {}
        for group, chunks in (("25519", None), ("P-256", None), ("AES-128-GCM", 16384)):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            ops, wall = self.bssl_speed(group, chunks)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = ((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)) * 1e6
            scale = min(1.0, cpu / wall) if wall > 0 else 1.0
            for k, v in ops.items():
                table[k] = v * scale
                self.raw.append("floor op=%r us_per_call=%.3f (wall %.3f, cpu/wall %.3f)"
                                % (k, v * scale, v, scale))

        def op(name):
            if name not in table:
                raise BenchError("bssl-tool speed printed no %r" % name)
            return table[name]
        x = op("Curve25519 base-point multiplication") + \
            op("Curve25519 arbitrary point multiplication")
        self.floor["ops_server"] = x + op("ECDSA P-256 signing")
        self.floor["ops_client"] = x + op("ECDSA P-256 verify")
        self.floor["mib"] = op("AES-128-GCM (16384 bytes) seal") * 64 / 1000.0
        # The whole handshake (floor.c): the public-key operations above
        # and what they leave out (transcript hashes, key schedule, the
        # certificate message, tickets, SSL_new and SSL_free), in memory.
        # The median of five runs: this figure is the one the ratios use.
        # The same program built against OpenSSL gives the peers' floor
        # ("peer_hs_*"): how much of a lead is the library's.
        for exe, pre in ((self.floor_bin, "hs_"), (self.floor_peer_bin, "peer_hs_")):
            whole = []
            for _ in range(5):
                r = subprocess.run([exe, self.cert, self.key, "1000"],
                                   capture_output=True, text=True, timeout=120)
                if r.returncode != 0:
                    raise BenchError("%s: status %d: %s"
                                     % (os.path.basename(exe), r.returncode, r.stderr.strip()))
                whole.append(parse_kv(r.stdout.strip().splitlines()[-1]))
                self.raw.append("floor whole handshake " + r.stdout.strip())
            for side in ("server", "client"):
                self.floor[pre + side] = statistics.median(
                    float(w["hs_%s_us" % side]) for w in whole)
            if pre == "peer_hs_":
                self.peer_library = whole[0].get("library", "OpenSSL")
        self.raw.append("floor hs_server_us=%.1f hs_client_us=%.1f peer_hs_server_us=%.1f "
                        "peer_hs_client_us=%.1f ops_server_us=%.1f "
                        "ops_client_us=%.1f aes_ms_per_mib=%.3f"
                        % (self.floor["hs_server"], self.floor["hs_client"],
                           self.floor["peer_hs_server"], self.floor["peer_hs_client"],
                           self.floor["ops_server"], self.floor["ops_client"],
                           self.floor["mib"]))

    # ---- client runs

    def client_argv(self, mode, port, n, c, body=None, extra=()):
        argv = [self.client, "-m", mode, "-p", str(port), "-n", str(n), "-c", str(c),
                "-t", str(self.client_limit)] + list(extra)
        if body is not None:
            argv += ["-b", str(body)]
        return argv

    def run_client(self, mode, port, n, c, body=None, extra=(), cpus=None):
        argv = self.client_argv(mode, port, n, c, body, extra)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        pre = None if cpus is None else (lambda: os.sched_setaffinity(0, cpus))
        try:
            r = subprocess.run(argv, capture_output=True, text=True,
                               timeout=self.client_limit + 30, preexec_fn=pre)
        except subprocess.TimeoutExpired:
            raise BenchError("client %s did not finish in time" % mode) from None
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        lines = r.stdout.strip().splitlines()
        res = parse_kv(lines[-1]) if lines else {}
        res["client_cpu_s"] = "%.3f" % ((after.ru_utime - before.ru_utime) +
                                        (after.ru_stime - before.ru_stime))
        if r.returncode != 0 or res.get("ok") != str(n):
            raise BenchError("client %s %s on port %d: status %d: %s %s"
                             % (mode, " ".join(extra), port, r.returncode, r.stdout.strip(),
                                r.stderr.strip()))
        return res

    def note_tls(self, name, res):
        self.tls[name] = "%s %s %s" % (res.get("version"), res.get("cipher"), res.get("group"))

    def put(self, name, fig, v, rnd, **info):
        self.values[name][fig].append(v)
        self.by_round[(name, fig, rnd)] = v
        self.raw.append("run=%d proxy=%s figure=%s value=%.3f %s"
                        % (rnd, name, fig, v, " ".join("%s=%s" % kv for kv in info.items())))

    def cpu_of(self, proxy, fn):
        """(result of fn(), CPU seconds the proxy spent during it)."""
        t0 = cpu_ticks(proxy.pids())
        res = fn()
        t1 = cpu_ticks(proxy.pids())
        return res, (t1 - t0) / CLK_TCK

    # ---- the figures

    def measure_shape(self, proxy, rnd):
        """CPU per session and per MiB of one shape, saturated and paced;
        for implicit TLS also the sessions/s of one worker, the latency and
        the resumption figures."""
        name, pre = proxy.name, dict(SHAPES)[proxy.shape]
        flags = {"implicit": [], "plain": ["-P"]}.get(proxy.shape, ["-s"])
        port = None
        proxy.start("cpu%d" % rnd)
        try:
            port = proxy.port
            self.run_client("sessions", port, 20, 5, extra=flags)   # warm-up

            res, cpu = self.cpu_of(proxy, lambda: self.run_client(
                "sessions", port, self.sessions, self.conc, extra=flags))
            if proxy.shape == "implicit":
                self.note_tls(name, res)
                sps = self.sessions / max(float(res["secs"]), 1e-6)
                self.put(name, "sps_w1", sps, rnd, secs=res["secs"])
                self.put(name, "client_cpu", float(res["client_cpu_s"]) * 1e6 / self.sessions,
                         rnd)
            self.put(name, pre + "cpu_session", cpu * 1e6 / self.sessions, rnd,
                     sessions=self.sessions, conc=self.conc, cpu_s=cpu, secs=res["secs"])

            per = self.mib * 1024 * 1024 // self.streams
            res, cpu = self.cpu_of(proxy, lambda: self.run_client(
                "bulk", port, self.streams, self.streams, per, extra=flags))
            self.put(name, pre + "cpu_mib", cpu * 1e3 / self.mib, rnd, mib=self.mib,
                     streams=self.streams, cpu_s=cpu, secs=res["secs"])

            # Implicit TLS: the same paced transaction goes straight to
            # the sink at the same time, so both see the same load on the
            # machine; the added latency is the difference.
            direct = None
            if proxy.shape == "implicit":
                direct = subprocess.Popen(
                    self.client_argv("sessions", self.upstream, self.paced_sessions, self.conc,
                                     extra=["-P", "-R", str(self.rate)]),
                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                    text=True)
            try:
                res, cpu = self.cpu_of(proxy, lambda: self.run_client(
                    "sessions", port, self.paced_sessions, self.conc,
                    extra=flags + ["-R", str(self.rate)]))
            finally:
                if direct is not None:
                    try:
                        dout, _ = direct.communicate(timeout=self.client_limit + 30)
                    except subprocess.TimeoutExpired:
                        direct.kill()
                        dout, _ = direct.communicate()
            self.put(name, pre + "cpu_session_paced", cpu * 1e6 / self.paced_sessions, rnd,
                     sessions=self.paced_sessions, rate=self.rate, cpu_s=cpu, secs=res["secs"])
            if direct is not None:
                d = parse_kv(dout.strip().splitlines()[-1]) if dout.strip() else {}
                if direct.returncode != 0 or d.get("ok") != str(self.paced_sessions):
                    raise BenchError("direct client: status %d: %s"
                                     % (direct.returncode, dout.strip()))
                for q in ("p50", "p99"):
                    via = float(res["lat_%s_us" % q]) / 1e3
                    straight = float(d["lat_%s_us" % q]) / 1e3
                    self.put(name, "txn_" + q, via, rnd)
                    self.put("direct", "txn_" + q, straight, rnd, beside=name)
                    self.put(name, "lat_" + q, via - straight, rnd)

            per = self.paced_mib * 1024 * 1024 // self.streams
            res, cpu = self.cpu_of(proxy, lambda: self.run_client(
                "bulk", port, self.streams, self.streams, per,
                extra=flags + ["-R", str(self.paced_mibps)]))
            self.put(name, pre + "cpu_mib_paced", cpu * 1e3 / self.paced_mib, rnd,
                     mib=self.paced_mib, mibps=self.paced_mibps, cpu_s=cpu, secs=res["secs"])

            if proxy.shape == "implicit":
                res, cpu = self.cpu_of(proxy, lambda: self.run_client(
                    "sessions", port, self.resume_n, self.conc, extra=["-r"]))
                self.put(name, "resumed", 100.0 * int(res["resumed"]) / self.resume_n, rnd,
                         resumed=res["resumed"], sessions=self.resume_n)
                self.put(name, "cpu_session_resumed", cpu * 1e6 / self.resume_n, rnd,
                         cpu_s=cpu, secs=res["secs"])
                self.measure_one_cpu(proxy, rnd)
        finally:
            proxy.stop()

    def paced_direct(self, cpus):
        """The paced transaction straight to the sink, its client on cpus:
        its p50 and p99 in ms."""
        d = self.run_client("sessions", self.upstream, self.paced_sessions, self.conc,
                            extra=["-P", "-R", str(self.rate)], cpus=cpus)
        return float(d["lat_p50_us"]) / 1e3, float(d["lat_p99_us"]) / 1e3

    def measure_one_cpu(self, proxy, rnd):
        """The added latency with the client, the proxy and the sink all
        on one CPU, where no hop wakes a process on the other CPU: the
        direct run, then the one through the proxy (one after the other:
        on one CPU two clients at once would delay each other)."""
        if len(self.cpus) < 2:
            return
        one = {self.cpus[-1]}
        try:
            refused = pin(proxy.pids() + [self.sink.pid], one)
            if refused:
                raise BenchError("%s: could not pin threads %s to one CPU"
                                 % (proxy.name, refused))
            straight = self.paced_direct(one)
            res = self.run_client("sessions", proxy.port, self.paced_sessions, self.conc,
                                  extra=["-R", str(self.rate)], cpus=one)
        finally:
            pin(proxy.pids() + [self.sink.pid], set(self.cpus))
        for q, s in zip(("p50", "p99"), straight):
            via = float(res["lat_%s_us" % q]) / 1e3
            self.put(proxy.name, "txn1_" + q, via, rnd)
            self.put("direct", "txn1_" + q, s, rnd, beside=proxy.name)
            self.put(proxy.name, "lat1_" + q, via - s, rnd)

    def measure_wake(self, rnd):
        """What a wake-up on the other CPU costs this machine: the direct
        transaction (6 round trips, each waking the sink and the client
        once) with the client and the sink on one CPU, then on two."""
        if len(self.cpus) < 2:
            return
        a, b = {self.cpus[0]}, {self.cpus[1]}
        try:
            for key, sink_cpu in (("same", a), ("cross", b)):
                if pin([self.sink.pid], sink_cpu):
                    raise BenchError("could not pin the sink to one CPU")
                p50, _ = self.paced_direct(a)
                self.wake[key].append(p50)
                self.raw.append("run=%d wake direct client and sink on %s: p50=%.3f ms"
                                % (rnd, "one CPU" if key == "same" else "two CPUs", p50))
        finally:
            pin([self.sink.pid], set(self.cpus))

    def measure_workers2(self, proxy, rnd):
        proxy.start("w2-%d" % rnd)
        try:
            self.run_client("sessions", proxy.port, 20, 5)
            res = self.run_client("sessions", proxy.port, self.sessions, self.conc)
            sps = self.sessions / max(float(res["secs"]), 1e-6)
            self.put(proxy.name, "sps_w2", sps, rnd, secs=res["secs"],
                     client_cpu_us_per_session="%.0f" % (
                         float(res["client_cpu_s"]) * 1e6 / self.sessions))
        finally:
            proxy.stop()

    def measure_capped(self, proxy, rnd):
        """Sessions/s with each worker held to self.cap_share of a CPU."""
        proxy.start("cap%d-%d" % (proxy.workers, rnd))
        try:
            for pid, n in proxy.worker_shares():
                self.caps.cap(pid, n * self.cap_share)
            self.run_client("sessions", proxy.port, 20, 5)
            t0 = self.caps.throttled()
            res, cpu = self.cpu_of(proxy, lambda: self.run_client(
                "sessions", proxy.port, self.cap_sessions, self.conc))
            secs = max(float(res["secs"]), 1e-6)
            # A worker that never ran out of its quota was not bound by it:
            # the figure would measure the machine again.
            throttled = self.caps.throttled() - t0
            if throttled == 0:
                raise BenchError("%s: no worker reached its CPU cap" % proxy.name)
            self.put(proxy.name, "sps_cap%d" % proxy.workers, self.cap_sessions / secs, rnd,
                     secs=res["secs"], cpu_share=self.cap_share, throttled=throttled,
                     cpu_used="%.2f" % (cpu / secs))
        finally:
            proxy.stop()
            self.caps.release()

    def idle_sessions(self, proxy, n, strict):
        """Opens n idle sessions; returns (ready, held, pss, rss, base_pss,
        base_rss, procs)."""
        self.run_client("sessions", proxy.port, 20, 5)   # warm-up
        time.sleep(0.5)
        base_pss, base_rss = memory_kb(proxy.pids())
        argv = self.client_argv("idle", proxy.port, n, self.conc)
        client = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        try:
            ready = select.select([client.stdout], [], [], self.client_limit + 10)[0]
            line = client.stdout.readline() if ready else ""
            if not line.startswith("ready "):
                raise BenchError("idle client never got ready: %r" % line)
            n_ok, n_failed, held = (int(x) for x in line.split()[1:4])
            if strict and (n_ok != n or n_failed):
                raise BenchError("idle client: %d sessions ready, %d failed" % (n_ok, n_failed))
            # Let every session settle (late tickets, lazy buffers), then
            # take the larger of two readings a moment apart.
            time.sleep(1.0)
            pids = proxy.pids()
            pss1, rss1 = memory_kb(pids)
            time.sleep(0.5)
            pss2, rss2 = memory_kb(proxy.pids())
            out, err = client.communicate(timeout=60)   # closes its stdin: release
            res = parse_kv(out.strip().splitlines()[-1]) if out.strip() else {}
            if strict and res.get("dropped", "0") != "0":
                raise BenchError("the proxy closed %s idle sessions early" % res.get("dropped"))
            client = None
            return (n_ok, held, max(pss1, pss2), max(rss1, rss2), base_pss, base_rss,
                    len(pids), res)
        finally:
            if client is not None:
                client.kill()
                client.wait()

    def measure_idle(self, proxy, rnd):
        name = proxy.name
        proxy.start("idle%d" % rnd)
        try:
            _, _, pss, rss, bp, br, procs, _ = self.idle_sessions(proxy, self.idle, True)
            self.put(name, "mem_idle", (pss - bp) / self.idle, rnd, sessions=self.idle,
                     procs=procs, pss_base_kib=bp, pss_kib=pss)
            self.put(name, "rss_idle", (rss - br) / self.idle, rnd, rss_base_kib=br, rss_kib=rss)
        finally:
            proxy.stop()

    def measure_held(self, proxy, rnd):
        """How many idle sessions one worker holds without an error, up to
        the descriptor limit, and the memory per session at that count."""
        proxy.start("held%d" % rnd)
        try:
            n_ok, held, pss, _, bp, _, _, res = self.idle_sessions(proxy, self.max_idle, False)
            self.put(proxy.name, "held", held, rnd, tried=self.max_idle, ready=n_ok,
                     failed=res.get("failed"), dropped=res.get("dropped"),
                     last_error='"%s"' % res.get("last_error", ""))
            if n_ok:
                self.put(proxy.name, "held_mem", (pss - bp) / n_ok, rnd, pss_base_kib=bp,
                         pss_kib=pss)
        finally:
            proxy.stop()

    # ---- optional: where mailshim's time goes (BENCH_PROFILE=1)

    def traced(self, tool_argv, fn):
        """Runs fn() while tool_argv (strace or perf attached to a pid)
        runs; stops the tool with SIGINT and waits for it."""
        log = os.path.join(self.tmp, "profile.log")
        tool = spawn(tool_argv, log)
        time.sleep(1.0)   # attached
        try:
            return fn()
        finally:
            time.sleep(0.3)
            if tool.poll() is None:
                os.kill(tool.pid, signal.SIGINT)
            try:
                tool.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
            stop(tool)

    def strace_counts(self, worker, fn):
        out = os.path.join(self.tmp, "strace.%d" % random.randint(0, 1 << 30))
        self.traced([need_bin("strace"), "-c", "-p", str(worker), "-o", out], fn)
        counts = {}
        with open(out) as f:
            for line in f:
                t = line.split()
                if len(t) in (5, 6) and t[0][0].isdigit() and t[-1] != "total":
                    counts[t[-1]] = int(t[3])
        return counts

    def perf_top(self, worker, fn):
        out = os.path.join(self.tmp, "perf.%d" % random.randint(0, 1 << 30))
        self.traced([need_bin("perf"), "record", "-F", "1999", "-p", str(worker), "-o", out], fn)
        res = {}
        for key in ("dso", "symbol"):
            r = subprocess.run([need_bin("perf"), "report", "-i", out, "--no-children",
                                "--sort", key, "--stdio"], capture_output=True, text=True,
                               timeout=120)
            rows = [ln.strip() for ln in r.stdout.splitlines()
                    if ln.strip() and not ln.startswith("#")]
            res[key] = [" ".join(x.split()[:3]) for x in rows[:8]]
        return res

    def measure_profile(self):
        proxy = Mailshim(self)
        proxy.start("profile")
        self.profile = []
        try:
            pids = proxy.pids()
            workers = [x for x in pids if x != proxy.proc.pid]
            if len(workers) != 1:
                raise BenchError("expected one worker, found %s" % workers)
            w = workers[0]
            self.run_client("sessions", proxy.port, 20, 5)
            n, mib = 1000, 64
            per = mib * 1024 * 1024 // self.streams
            sess = lambda: self.run_client("sessions", proxy.port, n, self.conc)  # noqa: E731
            bulk = lambda: self.run_client("bulk", proxy.port, self.streams,      # noqa: E731
                                           self.streams, per)
            for what, fn, div, unit in (("session", sess, n, "session"),
                                        ("MiB", bulk, mib, "MiB")):
                c = self.strace_counts(w, fn)
                total = sum(c.values()) / div
                top = sorted(c.items(), key=lambda kv: -kv[1])[:8]
                line = ("syscalls per %s: %.1f (%s)" % (unit, total, ", ".join(
                    "%s %.1f" % (k, v / div) for k, v in top)))
                self.profile.append(line)
                self.raw.append("profile " + line)
                if shutil.which("perf"):
                    t = self.perf_top(w, fn)
                    self.profile.append("  perf, per %s run: by object: %s" % (
                        unit, "; ".join(t["dso"][:5])))
                    self.profile.append("  perf, top symbols: %s" % "; ".join(t["symbol"][:8]))
        finally:
            proxy.stop()

    def step(self, what, fn, *a):
        print("bench: %s" % what, file=sys.stderr, flush=True)
        try:
            fn(*a)
        except BenchError as e:
            print("bench: FAILED %s: %s" % (what, e), file=sys.stderr, flush=True)
            self.failures.append("%s: %s" % (what, e))

    def run(self):
        t_start = time.monotonic()
        self.load_before = os.getloadavg()[0]
        if os.environ.get("BENCH_PROFILE") != "only":
            self.run_figures()
        if os.environ.get("BENCH_PROFILE"):
            self.step("mailshim: strace -c and perf of one worker", self.measure_profile)
        self.elapsed = time.monotonic() - t_start
        self.load_after = os.getloadavg()[0]

    def run_figures(self):
        self.step("floor (bssl-tool speed, floor.c)", self.measure_floor)
        plan = []   # (proxy, what, fn) per round, rotated
        for n in self.names:
            cls = PROXIES[n]
            for shape, _ in SHAPES:
                if shape in cls.shapes:
                    plan.append((cls(self, shape), "cpu " + shape, self.measure_shape))
            if n != "stunnel":   # one thread per connection: no worker count
                plan.append((cls(self, "implicit", 2), "2 workers", self.measure_workers2))
                if self.caps.base is not None:
                    for w in (1, 2):
                        plan.append((cls(self, "implicit", w), "%d worker(s) capped" % w,
                                     self.measure_capped))
        if self.caps.base is None:
            self.failures.append("CPU-capped scaling: %s" % self.caps.why)
        for rnd in range(1, self.repeat + 1):
            self.step("run %d/%d wake-ups across CPUs" % (rnd, self.repeat),
                      self.measure_wake, rnd)
            k = (rnd - 1) % len(plan)
            for proxy, what, fn in plan[k:] + plan[:k]:
                self.step("run %d/%d %-8s %s" % (rnd, self.repeat, proxy.name, what),
                          fn, proxy, rnd)
            if rnd <= self.idle_repeat:
                for n in self.names:
                    self.step("run %d %-8s idle" % (rnd, n), self.measure_idle,
                              PROXIES[n](self), rnd)
        self.step("mailshim: %d idle sessions on one worker" % self.max_idle,
                  self.measure_held, Mailshim(self), 1)

    # ---- report

    def medians(self):
        med = {n: {f: (statistics.median(v) if v else None) for f, v in d.items()}
               for n, d in self.values.items()}
        for n in self.names:
            m = med[n]
            # A scaling factor compares the two runs of one round (closer in
            # time, so nearer the same load on the machine than two
            # medians), then takes the median over the rounds.
            for fig, one, two in (("scaling", "sps_w1", "sps_w2"),
                                  ("scaling_cap", "sps_cap1", "sps_cap2")):
                ratios = [self.by_round[(n, two, r)] / self.by_round[(n, one, r)]
                          for r in range(1, self.repeat + 1)
                          if (n, one, r) in self.by_round and (n, two, r) in self.by_round]
                if ratios:
                    m[fig] = statistics.median(ratios)
        return med

    def best_peer(self, med, fig):
        cand = [(med[n][fig], n) for n in self.names
                if n != "mailshim" and med[n][fig] is not None]
        if not cand:
            return None, None
        return (max(cand) if FIG[fig][3] == "high" else min(cand))

    def targets(self, med):
        """(PASS|MISS, text) per target."""
        m = med["mailshim"]
        out = []

        def check(label, v, limit, at_most, unit="x", detail=""):
            if v is None:
                out.append(("----", "%s: not measured" % label))
                return
            ok = v <= limit if at_most else v >= limit
            margin = ((limit - v) if at_most else (v - limit)) / limit * 100
            out.append(("PASS" if ok else "MISS",
                        "%s: %s%s (target %s %s%s, margin %+.0f%%)%s"
                        % (label, fmt(v, unit), unit, "<=" if at_most else ">=",
                           fmt(limit, unit), unit, margin, detail)))

        def vs_peer(fig, limit, what):
            bv, bn = self.best_peer(med, fig)
            if m[fig] is None or not bv:
                check(what, None, limit, True)
                return
            check(what, m[fig] / bv, limit, True,
                  detail="  [%s %s vs %s %s]" % (fmt(m[fig]), FIG[fig][2], bn, fmt(bv)))

        for pre, shape in (("", "implicit TLS"), ("st_", "STARTTLS->plain"),
                           ("ch_", "STARTTLS->STARTTLS")):
            for pace in ("", "_paced"):
                tag = "%s, %s" % (shape, "paced" if pace else "saturated")
                vs_peer(pre + "cpu_session" + pace, 0.5, "CPU/session <= 0.5x best peer, " + tag)
                floor = self.floor.get("hs_server")
                if floor and pre == "ch_":
                    floor += self.floor["hs_client"]
                f, pl = pre + "cpu_session" + pace, m["pl_cpu_session" + pace]
                check("CPU/session <= 2x handshake floor, " + tag,
                      m[f] / floor if m[f] is not None and floor else None, 2.0, True,
                      detail="  [%s us vs %s; with no TLS the dialogue alone costs %s us]"
                      % (fmt(m[f]), fmt(floor), fmt(pl)) if pl is not None and floor else "")
        for pre, shape in (("", "implicit TLS"), ("st_", "STARTTLS->plain"),
                           ("ch_", "STARTTLS->STARTTLS")):
            for pace in ("", "_paced"):
                vs_peer(pre + "cpu_mib" + pace, 0.65, "CPU/MiB <= 0.65x best peer, %s, %s"
                        % (shape, "paced" if pace else "saturated"))
        vs_peer("mem_idle", 0.25, "memory/idle session <= 0.25x best peer")
        check("sessions/s 1 -> 2 workers >= 1.8x, each worker held to %.2f CPU"
              % self.cap_share, m["scaling_cap"], 1.8, False)
        check("sessions/s 1 -> 2 workers >= 1.8x, uncapped (load client on the same CPUs)",
              m["scaling"], 1.8, False)
        check("one worker holds >= 9000 idle sessions", m["held"], 9000, False, unit=" sessions",
              detail="  [tried %d]" % self.max_idle)
        check("p99 added latency <= 1 ms", m["lat_p99"], 1.0, True, unit=" ms",
              detail="  [every process on one CPU: %s ms]" % fmt(m["lat1_p99"])
              if m["lat1_p99"] is not None else "")
        return out

    def wake_line(self):
        if not self.wake["same"] or not self.wake["cross"]:
            return None
        same = statistics.median(self.wake["same"])
        cross = statistics.median(self.wake["cross"])
        # 6 round trips, each with two wake-ups (the sink's, the client's)
        return ("wake-ups across CPUs (this machine): the paced direct transaction takes "
                "p50 %.2f ms with the client and the sink on one CPU, %.2f ms on two: "
                "%+.0f us a wake-up that crosses to the other CPU (12 a transaction)"
                % (same, cross, (cross - same) * 1e3 / 12))

    def tls_share(self, med):
        """Lines: what TLS adds to mailshim's figures (implicit TLS minus
        the same dialogue with no TLS), against the floor."""
        mm, fl, out = med["mailshim"], self.floor, []
        for pace, what in (("", "saturated"), ("_paced", "paced")):
            tls, pl = mm["cpu_session" + pace], mm["pl_cpu_session" + pace]
            tm, pm = mm["cpu_mib" + pace], mm["pl_cpu_mib" + pace]
            if None in (tls, pl, tm, pm):
                continue
            out.append("  %s: the dialogue with no TLS costs mailshim %s us a session "
                       "(%.1fx the handshake floor by itself); TLS adds %s us (%.1fx the "
                       "floor); a MiB: %s ms with no TLS, TLS adds %s ms (%.1fx AES-GCM)"
                       % (what, fmt(pl), pl / fl["hs_server"], fmt(tls - pl),
                          (tls - pl) / fl["hs_server"], fmt(pm), fmt(tm - pm),
                          (tm - pm) / fl["mib"]))
        if out:
            out.insert(0, "what TLS adds (mailshim, implicit TLS minus the same dialogue "
                       "plain->plain):")
        return out

    def above_floor(self, med):
        """Lines: each proxy's CPU per session less its own library's
        server-side handshake floor (mailshim: BoringSSL; the peers:
        OpenSSL), i.e. what the proxy itself adds to the library's work."""
        fl, out = self.floor, []
        if "peer_hs_server" not in fl:
            return out
        for pre, shape in (("", "implicit TLS"), ("st_", "STARTTLS->plain")):
            for pace in ("", "_paced"):
                fig, cells, own, best = pre + "cpu_session" + pace, [], None, None
                for n in self.names:
                    v = med[n][fig]
                    if v is None:
                        continue
                    left = v - (fl["hs_server"] if n == "mailshim" else fl["peer_hs_server"])
                    cells.append("%s %s" % (n, fmt(left)))
                    if n == "mailshim":
                        own = left
                    elif best is None or left < best:
                        best = left
                if own is None or best is None:
                    continue
                out.append("  %s, %s: %s us (mailshim / best peer %.2f)"
                           % (shape, "paced" if pace else "saturated", ", ".join(cells),
                              own / best if best > 0 else float("nan")))
        if out:
            out.insert(0, "CPU/session less each one's own library's handshake floor (what "
                       "the proxy adds to BoringSSL's or OpenSSL's work):")
        return out

    def report(self):
        med = self.medians()
        lines = []
        lines.append("mailshim benchmark: %d sessions at concurrency %d (paced: %d at %d/s); "
                     "%d MiB in %d streams (paced: %d MiB at %d MiB/s); %d idle; %d resumed; "
                     "median of %d run(s)"
                     % (self.sessions, self.conc, self.paced_sessions, self.rate, self.mib,
                        self.streams, self.paced_mib, self.paced_mibps, self.idle,
                        self.resume_n, self.repeat))
        for n in self.names:
            if n in self.tls:
                lines.append("  %-9s TLS: %s" % (n, self.tls[n]))
        ncpu = os.cpu_count() or 1
        load = max(self.load_before, self.load_after)
        if load > ncpu:
            lines.append("  note: the machine was busy (load average %.1f on %d CPUs): CPU "
                         "figures are noisy; compare ratios, or run again when idle"
                         % (load, ncpu))
        lines.append("")
        w = 50
        lines.append("%-*s%6s" % (w, "figure", "unit") + "".join("%10s" % n for n in self.names)
                     + "%10s%10s" % ("best peer", "m/best"))
        for fig, label, unit, better in FIGS:
            cells = "".join("%10s" % fmt(med[n][fig], unit) for n in self.names)
            bv, bn = self.best_peer(med, fig) if fig not in NOT_COMPARED else (None, None)
            mv = med["mailshim"][fig]
            ratio = "%.2f" % (mv / bv) if mv is not None and bv else "-"
            lines.append("%-*s%6s%s%10s%10s" % (w, label, unit, cells, bn or "-", ratio))
        d = med["direct"]
        lines.append("%-*s%6s%10s%10s" % (w, "transaction direct to the sink, p50 / p99", "ms",
                                         fmt(d["txn_p50"]), fmt(d["txn_p99"])))
        lines.append("%-*s%6s%10s%10s" % (w, "the same, every process on one CPU, p50 / p99",
                                         "ms", fmt(d["txn1_p50"]), fmt(d["txn1_p99"])))
        lines.append("(m/best: mailshim / best peer; < 1 is better for low-is-better figures. "
                     "Added latency: the proxy's p50/p99 minus that of the same paced "
                     "transactions sent at the same time straight to the sink; on one CPU: "
                     "the client, the proxy and the sink pinned to one CPU, the direct run "
                     "just before.)")
        wake = self.wake_line()
        if wake:
            lines.append("")
            lines.append(wake)
        if self.floor:
            fl = self.floor
            lines.append("")
            lines.append("floor (this machine): one whole TLS 1.3 handshake in memory "
                         "(floor.c, BoringSSL, the bench's certificate): server side %.0f us, "
                         "client side (chain and name checked) %.0f us; of which the "
                         "public-key operations (bssl-tool speed: X25519 keygen + X25519 + "
                         "ECDSA P-256 sign, or verify) %.0f and %.0f us; AES-128-GCM "
                         "%.3f ms/MiB"
                         % (fl["hs_server"], fl["hs_client"], fl["ops_server"],
                            fl["ops_client"], fl["mib"]))
            if "peer_hs_server" in fl:
                lines.append("the same handshake in the peers' library (floor.c built against "
                             "%s, which stunnel, hitch and haproxy link): server side %.0f us, "
                             "client side %.0f us"
                             % (self.peer_library, fl["peer_hs_server"], fl["peer_hs_client"]))
            mm = med["mailshim"]
            multiples = []
            for fig in ("cpu_session", "cpu_session_paced", "st_cpu_session",
                        "st_cpu_session_paced", "cpu_session_resumed"):
                if mm[fig] is not None:
                    multiples.append("%s %.1fx" % (fig, mm[fig] / fl["hs_server"]))
            for fig in ("ch_cpu_session", "ch_cpu_session_paced"):
                if mm[fig] is not None:
                    multiples.append("%s %.1fx" % (fig, mm[fig] / (fl["hs_server"] +
                                                                   fl["hs_client"])))
            for fig in ("cpu_mib", "cpu_mib_paced", "st_cpu_mib", "st_cpu_mib_paced"):
                if mm[fig] is not None:
                    multiples.append("%s %.1fx" % (fig, mm[fig] / fl["mib"]))
            for fig in ("ch_cpu_mib", "ch_cpu_mib_paced"):
                if mm[fig] is not None:   # decrypt + encrypt
                    multiples.append("%s %.1fx" % (fig, mm[fig] / (2 * fl["mib"])))
            lines.append("mailshim as multiples of the floor (STARTTLS->STARTTLS: of two "
                         "handshakes, of AES twice):")
            for k in range(0, len(multiples), 4):
                lines.append("  " + ", ".join(multiples[k:k + 4]))
            lines.extend(self.tls_share(med))
            lines.extend(self.above_floor(med))
        if self.profile:
            lines.append("")
            lines.append("profile of one mailshim worker (BENCH_PROFILE=1; strace and perf "
                         "slow it: counts, not times):")
            lines.extend("  " + x for x in self.profile)
        lines.append("")
        lines.append("targets:")
        for verdict, text in self.targets(med):
            lines.append("  %s  %s" % (verdict, text))
        if self.failures:
            lines.append("")
            lines.append("could not run:")
            lines.extend("  " + x for x in self.failures)
        text = "\n".join(lines) + "\n"
        sys.stdout.write(text)

        os.makedirs(self.args.out, exist_ok=True)
        path = os.path.join(self.args.out, "results.txt")
        with open(path, "w") as f:
            f.write("# mailshim benchmark raw results, %s, %d CPU(s), clk_tck=%d, elapsed %.0fs\n"
                    % (time.strftime("%Y-%m-%dT%H:%M:%S%z"), os.cpu_count() or 0, CLK_TCK,
                       self.elapsed))
            f.write("# mailshim binary: %s\n" % self.mailshim)
            f.write("# load average (1 min) before %.2f after %.2f\n"
                    % (self.load_before, self.load_after))
            for n in self.names:
                f.write("# %s TLS: %s\n" % (n, self.tls.get(n, "-")))
            f.write("\n".join(self.raw) + "\n\n")
            for n in self.names + ["direct"]:
                for fig, v in sorted(med[n].items()):
                    if v is not None:
                        f.write("median proxy=%s figure=%s value=%.3f\n" % (n, fig, v))
            f.write("\n" + text)
        svg = os.path.join(self.args.out, "bench.svg")
        with open(svg, "w") as f:
            f.write(self.svg(med))
        print("raw numbers: %s\nchart: %s" % (path, svg))

    # ---- the chart

    def svg(self, med):
        """A grouped horizontal bar chart, one group per figure, one bar per
        proxy (and the floor where there is one), each figure normalised to
        its largest value."""
        colors = {"mailshim": "#1f77b4", "stunnel": "#d62728", "hitch": "#2ca02c",
                  "haproxy": "#ff7f0e", "floor": "#7f7f7f"}
        floor_of = {}
        if self.floor:
            fl = self.floor
            for fig in ("cpu_session", "cpu_session_paced", "st_cpu_session",
                        "st_cpu_session_paced"):
                floor_of[fig] = fl["hs_server"]
            for fig in ("ch_cpu_session", "ch_cpu_session_paced"):
                floor_of[fig] = fl["hs_server"] + fl["hs_client"]
            for fig in ("cpu_mib", "cpu_mib_paced", "st_cpu_mib", "st_cpu_mib_paced"):
                floor_of[fig] = fl["mib"]
            for fig in ("ch_cpu_mib", "ch_cpu_mib_paced"):
                floor_of[fig] = 2 * fl["mib"]
        groups = []
        for fig, label, unit, better in FIGS:
            if fig in NOT_COMPARED:
                continue
            bars = [(n, med[n][fig]) for n in self.names if med[n][fig] is not None]
            if fig in floor_of and bars:
                bars.append(("floor", floor_of[fig]))
            if bars:
                groups.append(("%s (%s, %s is better)" % (label, unit, "lower" if better == "low"
                                                            else "higher"), bars))

        def esc(t):
            return t.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        bar_h, title_h, gap, left, width, top = 13, 16, 10, 150, 600, 64
        height = top + sum(title_h + len(b) * bar_h + gap for _, b in groups) + 20
        out = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" '
               'font-family="sans-serif" font-size="11">' % (left + width + 70, height),
               '<rect width="100%" height="100%" fill="white"/>',
               '<text x="10" y="20" font-size="14" font-weight="bold">mailshim benchmark: '
               'each figure normalised to its largest value; labels are absolute</text>']
        x = 10
        for n in self.names + (["floor"] if floor_of else []):
            label = "floor (BoringSSL: whole handshake, AES-GCM)" if n == "floor" else n
            out.append('<rect x="%d" y="34" width="12" height="12" fill="%s"/>'
                       % (x, colors.get(n, "#9467bd")))
            out.append('<text x="%d" y="44">%s</text>' % (x + 16, esc(label)))
            x += 30 + 7 * len(label)
        y = top
        for title, bars in groups:
            out.append('<text x="10" y="%d" font-weight="bold">%s</text>' % (y + 11, esc(title)))
            y += title_h
            vmax = max(abs(v) for _, v in bars) or 1.0
            for n, v in bars:
                wbar = max(0.0, v) / vmax * width
                out.append('<text x="%d" y="%d" text-anchor="end" font-size="10">%s</text>'
                           % (left - 6, y + bar_h - 3, esc(n)))
                out.append('<rect x="%d" y="%d" width="%.1f" height="%d" fill="%s"/>'
                           % (left, y, wbar, bar_h - 2, colors.get(n, "#9467bd")))
                out.append('<text x="%.1f" y="%d" font-size="10">%s</text>'
                           % (left + wbar + 4, y + bar_h - 3, fmt(v)))
                y += bar_h
            y += gap
        out.append("</svg>\n")
        return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mailshim", required=True, help="the mailshim binary")
    ap.add_argument("--out", required=True, help="directory with client and sink; results")
    args = ap.parse_args()

    # Stop cleanly (and stop every process we started) on TERM and HUP too.
    def on_signal(sig, frame):
        raise SystemExit(128 + sig)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGHUP, on_signal)

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 20000) if hard != resource.RLIM_INFINITY else 20000
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))

    try:
        b = Bench(args)
    except BenchError as e:
        print("bench: %s" % e, file=sys.stderr)
        return 1
    try:
        b.setup()
        b.run()
        b.report()
    except BenchError as e:
        print("bench: %s" % e, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130
    finally:
        b.cleanup()
    return 1 if b.failures else 0


if __name__ == "__main__":
    sys.exit(main())
