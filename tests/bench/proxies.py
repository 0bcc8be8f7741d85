"""The proxies under test, one class each: its configuration for a
shape of load and how to start it (bench.py)."""

import os
import subprocess
import time

from procs import (BenchError, free_port, need_bin, proc_tree, spawn, stop, tail,
                   wait_listening)

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
