"""Building blocks of the integration tests: processes, ports, certificates
and the shim; the real peers are in peers.py, the clients in clients.py and
the test messages in messages.py. conftest.py turns them into fixtures.

Everything here runs under Debian's /usr/bin/python3 and uses only the
standard library plus the Debian packages listed in tests/deps.sh.
"""

import base64
import errno
import hashlib
import os
import random
import re
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
PKI_SCRIPT = REPO / "tests" / "certs.sh"
PYTHON = "/usr/bin/python3"          # sees python3-aiosmtpd; the PATH one may not
SMTP_SINK = "/usr/sbin/smtp-sink"
POSTFIX = "/usr/sbin/postfix"

CRLF = b"\r\n"

# Markers of sanitizer reports in a process's stderr.
SANITIZER_MARKS = (
    "ERROR: AddressSanitizer",
    "ERROR: LeakSanitizer",
    "SUMMARY: AddressSanitizer",
    "SUMMARY: UndefinedBehaviorSanitizer",
    "runtime error:",
)


class HarnessError(AssertionError):
    """A peer or the shim did not behave as a test needs; the message says
    what and carries the relevant output."""


def mailshim_binary():
    env = os.environ.get("MAILSHIM")
    path = Path(env) if env else HERE / ".." / ".." / "mailshim"
    return path.resolve()


def wait_until(pred, timeout, what, interval=0.02):
    """Poll pred() until it returns a true value (returned) or the time is
    up (HarnessError naming what)."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise HarnessError("timed out after %.1fs waiting for %s" % (timeout, what))
        time.sleep(interval)


def tail(text, n=40):
    lines = text.splitlines()
    return "\n".join(lines[-n:])


# --------------------------------------------------------------------------
# Ports

class Ports:
    """Hands out loopback ports in 20000-32000 that are free right now.

    A port is given once per session, must bind on 127.0.0.1 (and ::1 when
    the host has IPv6), and is locked for the session so two test runs on
    one machine do not pick the same port."""

    LO, HI = 20000, 32000

    def __init__(self):
        self.given = set()
        self.locks = []
        self.next = random.randrange(self.LO, self.HI)
        self.mutex = threading.Lock()

    @staticmethod
    def _binds(port):
        for fam, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
            try:
                s = socket.socket(fam, socket.SOCK_STREAM)
            except OSError:
                continue
            try:
                s.bind((host, port))
            except OSError as e:
                if fam == socket.AF_INET6 and e.errno == errno.EADDRNOTAVAIL:
                    continue  # no IPv6 on this host
                return False
            finally:
                s.close()
        return True

    def _lock(self, port):
        # An abstract unix socket name is a lock the kernel drops when the
        # process ends, leaving no files behind.
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.bind("\0mailshim-test-port-%d" % port)
        except OSError:
            s.close()
            return False
        self.locks.append(s)
        return True

    def get(self):
        with self.mutex:
            for _ in range(self.HI - self.LO):
                port = self.next
                self.next = self.LO if port + 1 >= self.HI else port + 1
                if port in self.given:
                    continue
                if self._binds(port) and self._lock(port):
                    self.given.add(port)
                    return port
            raise HarnessError("no free port in %d-%d" % (self.LO, self.HI))

    def many(self, n):
        return [self.get() for _ in range(n)]

    def close(self):
        for s in self.locks:
            s.close()
        self.locks = []


def listening(port, host=None):
    """True when some socket LISTENs on port (read from /proc/net, so no
    probe connection disturbs the server or its log)."""
    want = "%04X" % port
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    addr, lport = fields[1].rsplit(":", 1)
                    if lport != want or fields[3] != "0A":
                        continue
                    if host is None or _proc_addr(addr) in (host, "0.0.0.0", "::"):
                        return True
        except FileNotFoundError:
            pass
    return False


def _proc_addr(hexaddr):
    raw = bytes.fromhex(hexaddr)
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw[::-1])
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
    return socket.inet_ntop(socket.AF_INET6, words)


# --------------------------------------------------------------------------
# Processes

class Proc:
    """One started process: its Popen, where its output goes, its name."""

    def __init__(self, name, popen, out_path, err_path):
        self.name = name
        self.popen = popen
        self.pid = popen.pid
        self.out_path = out_path
        self.err_path = err_path

    def alive(self):
        return self.popen.poll() is None

    @property
    def returncode(self):
        return self.popen.poll()

    def stdout_text(self):
        return _read_text(self.out_path)

    def stderr_text(self):
        return _read_text(self.err_path)

    def signal(self, sig):
        if self.alive():
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:
                pass

    def wait(self, timeout):
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None


def _read_text(path):
    if path is None:
        return ""
    try:
        return Path(path).read_bytes().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""


class Procs:
    """Starts processes in a test's directory and kills every one of them
    (SIGTERM, then SIGKILL after grace seconds, to the whole process group)
    and reaps them on cleanup()."""

    def __init__(self, cwd):
        self.cwd = Path(cwd)
        self.procs = []
        self.counter = 0

    def start(self, name, argv, env=None, stdin=subprocess.DEVNULL, capture=True):
        self.counter += 1
        out = err = None
        stdout = stderr = subprocess.DEVNULL
        if capture:
            base = self.cwd / ("%s.%d" % (name, self.counter))
            out, err = Path(str(base) + ".out"), Path(str(base) + ".err")
            stdout, stderr = open(out, "wb"), open(err, "wb")
        full_env = dict(os.environ)
        if env:
            full_env.update(env)
        try:
            popen = subprocess.Popen(
                [str(a) for a in argv], cwd=self.cwd, env=full_env, stdin=stdin,
                stdout=stdout, stderr=stderr, start_new_session=True)
        finally:
            if capture:
                stdout.close()
                stderr.close()
        proc = Proc(name, popen, out, err)
        self.procs.append(proc)
        return proc

    def stop(self, proc, grace=2.0):
        """SIGTERM the group, SIGKILL after grace; returns the exit code."""
        proc.signal(signal.SIGTERM)
        rc = proc.wait(grace)
        if rc is None:
            proc.signal(signal.SIGKILL)
            rc = proc.wait(5)
        # The leader may be gone while others of its group live on.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        return rc

    def cleanup(self, grace=2.0):
        live = [p for p in self.procs if p.alive()]
        for p in live:
            p.signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for p in live:
            p.wait(max(0.0, deadline - time.monotonic()))
        for p in self.procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            p.wait(5)


def proc_tree(pid):
    """pid and all its descendants (from /proc)."""
    children = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def fd_count(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def public_dir(prefix):
    """A fresh directory under /tmp that unprivileged daemons (nobody,
    postfix) can reach; pytest's own temporary tree is private to root."""
    d = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    os.chmod(d, 0o755)
    return Path(d)


# --------------------------------------------------------------------------
# PKI

def make_pki(directory):
    r = subprocess.run(["sh", str(PKI_SCRIPT), str(directory)],
                       capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise HarnessError("certs.sh failed:\n" + r.stdout + r.stderr)
    return Pki(directory)


class Pki:
    def __init__(self, directory):
        self.dir = Path(directory)

    def __getattr__(self, name):
        # pki.ca, pki.server_key, pki.otherca_upstream -> paths
        if name.startswith("_"):
            raise AttributeError(name)
        base = name.replace("_", "-")
        for cand in (base + ".pem", base[:-4] + ".key" if base.endswith("-key") else None):
            if cand and (self.dir / cand).exists():
                return str(self.dir / cand)
        raise AttributeError(name)

    def path(self, filename):
        return str(self.dir / filename)

    def spki_pin(self, certname):
        """sha256/BASE64 of the certificate's SubjectPublicKeyInfo."""
        cert = self.path(certname)
        pub = subprocess.run(["openssl", "x509", "-in", cert, "-pubkey", "-noout"],
                             capture_output=True, check=True).stdout
        der = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "der"],
                             input=pub, capture_output=True, check=True).stdout
        return "sha256/" + base64.b64encode(hashlib.sha256(der).digest()).decode()


# --------------------------------------------------------------------------
# The shim

_KV_RE = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)=("(?:[^"\\]|\\.)*"|\S*)')


def parse_kv(line):
    """key=value pairs of a log line; quoted values lose their quotes."""
    out = {}
    for k, v in _KV_RE.findall(line):
        if len(v) >= 2 and v[0] == '"' and v[-1] == '"':
            v = re.sub(r"\\(.)", r"\1", v[1:-1])
        out[k] = v
    return out


def conf_text(conf):
    """INI text from {section: {key: value | [values]}} (or text as is)."""
    if isinstance(conf, str):
        return conf
    lines = []
    for section, keys in conf.items():
        lines.append("[%s]" % section)
        for k, v in keys.items():
            if v is None:
                continue
            for item in (v if isinstance(v, (list, tuple)) else [v]):
                lines.append("%s = %s" % (k, item))
        lines.append("")
    return "\n".join(lines)


class Shim:
    """One mailshim process with its own conf.d in DIR.

    start() waits until every listen address LISTENs and fails with the
    shim's stderr if that takes longer than the bound or the shim exits."""

    DEFAULT_GLOBAL = {"workers": "1", "helo_name": "shim.test", "log": "stderr",
                      "log_level": "info"}

    def __init__(self, procs, directory, binary=None):
        self.procs = procs
        self.dir = Path(directory)
        self.confdir = self.dir / "conf.d"
        self.confdir.mkdir(parents=True, exist_ok=True)
        self.binary = str(binary or mailshim_binary())
        self.proc = None
        self.stopped_rc = None

    @staticmethod
    def env():
        return {
            "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0:exitcode=99",
            "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1",
        }

    def write_conf(self, conf, name="test.conf"):
        if isinstance(conf, dict) and "global" not in conf:
            conf = dict({"global": dict(self.DEFAULT_GLOBAL)}, **conf)
        text = conf_text(conf)
        (self.confdir / name).write_text(text)
        self.conf = conf
        return text

    def listen_addrs(self):
        text = "".join(p.read_text() for p in sorted(self.confdir.glob("*.conf")))
        out = []
        for m in re.finditer(r"^\s*listen\s*=\s*(\S+)", text, re.M):
            host, _, port = m.group(1).rpartition(":")
            out.append((host.strip("[]"), int(port)))
        return out

    def start(self, conf=None, timeout=5.0, extra_args=()):
        if conf is not None:
            self.write_conf(conf)
        self.proc = self.procs.start("mailshim", [self.binary, "-c", self.confdir, *extra_args],
                                     env=self.env())
        addrs = self.listen_addrs()

        def ready():
            if not self.proc.alive():
                raise HarnessError("mailshim exited with %s during start-up; stderr:\n%s"
                                   % (self.proc.returncode, tail(self.stderr_text())))
            return all(listening(port, host) for host, port in addrs)

        try:
            wait_until(ready, timeout, "mailshim to listen on %s" % addrs)
        except HarnessError as e:
            if not self.proc.alive():
                # Reported here with its stderr; teardown need not repeat it.
                self.stopped_rc = self.proc.returncode
                raise
            raise HarnessError("%s\nstderr:\n%s" % (e, tail(self.stderr_text()))) from None
        return self

    @property
    def pid(self):
        return self.proc.pid

    def pids(self):
        return proc_tree(self.proc.pid)

    def rss_kb(self):
        """Resident memory of the shim and its workers, in KiB."""
        return sum(rss_kb(p) for p in self.pids())

    def fd_count(self):
        return sum(fd_count(p) for p in self.pids())

    def stderr_text(self):
        return self.proc.stderr_text() if self.proc else ""

    def log_lines(self):
        """Per-connection log lines as dicts, in order."""
        out = []
        text = self.stderr_text()
        # A line still being written is not a line yet.
        if not text.endswith("\n"):
            text = text[:text.rfind("\n") + 1]
        for line in text.splitlines():
            if "conn=" in line and "result=" in line:
                d = parse_kv(line)
                d["_line"] = line
                out.append(d)
        return out

    def wait_log(self, pred=None, timeout=5.0, count=1):
        """Wait until count per-connection lines match pred; returns them."""
        pred = pred or (lambda d: True)

        def found():
            hits = [d for d in self.log_lines() if pred(d)]
            return hits if len(hits) >= count else None

        try:
            return wait_until(found, timeout, "%d matching log line(s)" % count, 0.05)
        except HarnessError as e:
            raise HarnessError("%s; stderr:\n%s" % (e, tail(self.stderr_text()))) from None

    def sanitizer_report(self):
        text = self.stderr_text()
        for mark in SANITIZER_MARKS:
            i = text.find(mark)
            if i >= 0:
                return text[max(0, i - 200):i + 4000]
        return None

    def stop(self, grace=5.0):
        """SIGTERM and wait; HarnessError if it hangs, crashes or a
        sanitizer reported anything. Idempotent."""
        if self.proc is None or self.stopped_rc is not None:
            return self.stopped_rc
        problems = []
        if not self.proc.alive():
            problems.append("mailshim had already exited with %s" % self.proc.returncode)
        self.proc.signal(signal.SIGTERM)
        rc = self.proc.wait(grace)
        if rc is None:
            problems.append("mailshim did not exit within %.0fs of SIGTERM" % grace)
            self.proc.signal(signal.SIGKILL)
            rc = self.proc.wait(5)
        self.stopped_rc = rc
        if rc not in (0, -signal.SIGTERM, 128 + signal.SIGTERM) and not problems:
            problems.append("mailshim exited with %s after SIGTERM" % rc)
        report = self.sanitizer_report()
        if report:
            problems.append("sanitizer report in mailshim's stderr:\n" + report)
        if problems:
            raise HarnessError("\n".join(problems) + "\nstderr tail:\n" + tail(self.stderr_text()))
        return rc


def run_shim(args, timeout=10):
    """Run the binary to completion (for -t, -V); returns CompletedProcess."""
    env = dict(os.environ, **Shim.env())
    return subprocess.run([str(mailshim_binary()), *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env)


def service(listen_port, upstream_port, listen_tls="plain", upstream_tls="plain", pki=None,
            **extra):
    """A service section for the common case: loopback on both hops, the
    test PKI's server cert on TLS listeners, and upstream verification
    against the test CA for the name legacy.test."""
    s = {"listen": "127.0.0.1:%d" % listen_port, "listen_tls": listen_tls}
    if listen_tls != "plain":
        s["listen_cert"] = pki.server
        s["listen_key"] = pki.server_key
    s["upstream"] = "127.0.0.1:%d" % upstream_port
    s["upstream_tls"] = upstream_tls
    if upstream_tls != "plain" and extra.get("upstream_verify") != "encrypt":
        # (encrypt checks no certificate: mailshim refuses these keys there)
        s["upstream_ca"] = pki.ca
        s["upstream_name"] = "legacy.test"
    for k, v in extra.items():
        s[k] = v
    return s
