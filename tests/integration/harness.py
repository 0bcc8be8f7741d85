"""Building blocks of the integration tests: processes, ports, the shim, real peers,
clients and test messages. conftest.py turns them into fixtures.

Everything here runs under Debian's /usr/bin/python3 and uses only the
standard library plus the Debian packages listed in tests/deps.sh.
"""

import base64
import errno
import hashlib
import json
import os
import random
import re
import shutil
import signal
import socket
import ssl
import smtplib
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


# --------------------------------------------------------------------------
# Real peers

def wait_listening(proc, port, timeout=10.0, host=None):
    def ready():
        if not proc.alive():
            raise HarnessError("%s exited with %s before listening on %d:\n%s%s" % (
                proc.name, proc.returncode, port, tail(proc.stdout_text()),
                tail(proc.stderr_text())))
        return listening(port, host)
    wait_until(ready, timeout, "%s to listen on %d" % (proc.name, port))


def sink_extract(dump):
    """The message bytes from one smtp-sink -d dump file.

    smtp-sink (Postfix 3.7) writes text lines ending in LF: first its own
    X-Client-Addr/X-Client-Proto/X-Helo-Args/X-Mail-Args/X-Rcpt-Args lines,
    then a three-line Received: header (continuations start with a tab),
    then the message as received, dot-unstuffed, each CRLF turned into LF,
    then one empty line. A bare CR inside a line is dropped and a bare LF
    ends a line, so the mapping back (LF -> CRLF) is exact only for
    messages made of CRLF-terminated lines without bare CR or LF, which is
    what make_message() produces and what valid SMTP carries. 8-bit bytes,
    NUL and lines of any length (tested: 100,000 bytes) come through."""
    i = dump.find(b"\nReceived: ")
    if i < 0:
        if not dump.startswith(b"Received: "):
            raise HarnessError("no Received: header in smtp-sink dump")
        i = 0
    else:
        i += 1
    end = dump.index(b"\n", i) + 1
    while dump[end:end + 1] == b"\t":
        end = dump.index(b"\n", end) + 1
    body = dump[end:]
    if not body.endswith(b"\n"):
        raise HarnessError("smtp-sink dump is incomplete (no final empty line)")
    return body[:-1].replace(b"\n", CRLF)


def sink_envelope(dump):
    """smtp-sink's X-* lines of a dump as a dict (X-Rcpt-Args as a list)."""
    env = {"X-Rcpt-Args": []}
    for line in dump.split(b"\n"):
        if line.startswith(b"Received: "):
            break
        k, _, v = line.decode("latin-1").partition(": ")
        if k == "X-Rcpt-Args":
            env[k].append(v)
        else:
            env[k] = v
    return env


def header_value(msg, name):
    """First value of header name in a CRLF message, as bytes, or None."""
    head = msg.split(b"\r\n\r\n", 1)[0]
    m = re.search(rb"(?im)^" + re.escape(name.encode()) + rb":[ \t]*([^\r\n]*)", head)
    return m.group(1) if m else None


class SmtpSink:
    """Postfix's smtp-sink on 127.0.0.1:port, keeping every message in a
    dump directory (owned by nobody, under /tmp)."""

    def __init__(self, procs, port, dumpdir, extra_args=()):
        self.port = port
        self.dir = Path(dumpdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        shutil.chown(self.dir, user="nobody")
        argv = [SMTP_SINK, "-u", "nobody", "-m", "1000", *extra_args,
                "-d", "%s/%%H%%M%%S." % self.dir, "127.0.0.1:%d" % port, "1000"]
        self.proc = procs.start("smtp-sink", argv)
        wait_listening(self.proc, port)

    def dumps(self):
        """{path: bytes} of every dump file so far."""
        out = {}
        for p in sorted(self.dir.iterdir()):
            if p.is_file():
                out[p] = p.read_bytes()
        return out

    def count(self):
        return sum(1 for p in self.dir.iterdir() if p.is_file())

    def messages(self):
        """[(envelope dict, message bytes)] of complete dumps."""
        out = []
        for data in self.dumps().values():
            try:
                out.append((sink_envelope(data), sink_extract(data)))
            except (HarnessError, ValueError):
                pass
        return out

    def find(self, test_id):
        for env, msg in self.messages():
            if header_value(msg, "X-Test-Id") == test_id.encode():
                return env, msg
        return None

    def message(self, test_id, timeout=10.0):
        """Exact bytes of the message with this X-Test-Id (all sinks)."""
        return self.wait_message(test_id, timeout)

    def wait_message(self, test_id, timeout=10.0):
        """The message whose X-Test-Id is test_id. Call it once the client
        has its 250 for the DATA (smtp-sink closes the dump before it
        answers)."""
        env_msg = wait_until(lambda: self.find(test_id), timeout,
                             "message %s in smtp-sink's dumps" % test_id, 0.05)
        return env_msg[1]


class Aiosmtpd:
    """aiosmtpd with sinkhandler.Sink: a real SMTP server in plain,
    implicit (--smtpscert) or starttls (--tlscert) mode."""

    def __init__(self, procs, port, directory, mode="plain", cert=None, key=None,
                 require_tls=True, size=64 << 20, host="127.0.0.1"):
        self.port = port
        self.host = host
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        argv = [PYTHON, "-m", "aiosmtpd", "-n", "-l", "%s:%d" % (host, port),
                "-s", str(size), "-c", "sinkhandler.Sink", str(self.dir)]
        if mode == "implicit":
            argv += ["--smtpscert", cert, "--smtpskey", key]
        elif mode == "starttls":
            argv += ["--tlscert", cert, "--tlskey", key]
            if not require_tls:
                argv.append("--no-requiretls")
        elif mode != "plain":
            raise ValueError(mode)
        env = {"PYTHONPATH": str(HERE), "PYTHONDONTWRITEBYTECODE": "1"}
        self.proc = procs.start("aiosmtpd-%s" % mode, argv, env=env)
        wait_listening(self.proc, port, host=host if host != "127.0.0.1" else None)

    def ids(self):
        return sorted(p.stem for p in self.dir.glob("*.json"))

    def count(self):
        return len(self.ids())

    def find(self, test_id):
        meta = self.dir / (test_id + ".json")
        if not meta.exists():
            return None
        return (self.dir / (test_id + ".eml")).read_bytes(), json.loads(meta.read_text())

    def message(self, test_id, timeout=10.0):
        """Exact bytes of the message with this X-Test-Id (all sinks)."""
        return self.wait_message(test_id, timeout)[0]

    def wait_message(self, test_id, timeout=10.0):
        """(message bytes, metadata) of the message with this X-Test-Id."""
        try:
            return wait_until(lambda: self.find(test_id), timeout,
                              "message %s at aiosmtpd" % test_id, 0.05)
        except HarnessError as e:
            raise HarnessError("%s; aiosmtpd stderr:\n%s" % (e, tail(self.proc.stderr_text())))


class PrivatePostfix:
    """A private Postfix 3.7 on loopback (postfix -c DIR start, as root).

    Listeners: smtp_port offers STARTTLS (smtpd_tls_security_level=may),
    smtps_port is implicit TLS (smtpd_tls_wrappermode=yes); both with
    the given certificate; proxy_port reads a PROXY v1/v2 header first
    (smtpd_upstream_proxy_protocol=haproxy) and offers STARTTLS. Every accepted message is relayed to a private
    smtp-sink on sink_port. Traps this setup avoids: without syslog, errors
    vanish unless maillog_file (inside maillog_file_prefixes) and the
    postlog service are set; a main.cf modified "now" slows the start by
    about 2 s; with no proxymap service local_recipient_maps must be empty
    or smtpd hangs; smtpd_peername_lookup = no avoids DNS waits; the queue
    must be reachable by the postfix user, hence a directory under /tmp."""

    def __init__(self, procs, ports, cert, key, directory):
        self.procs = procs
        self.dir = Path(directory)
        self.conf = self.dir / "conf"
        self.spool = self.dir / "spool"
        self.maillog_path = self.dir / "maillog"
        self.smtp_port, self.smtps_port, self.proxy_port, sink_port = ports.many(4)
        # The queue directory must exist; data_directory must not (postfix
        # creates it owned by the postfix user, or the master cannot lock).
        for d in (self.conf, self.spool):
            d.mkdir(parents=True, exist_ok=True)
        shutil.copy(cert, self.conf / "cert.pem")
        shutil.copy(key, self.conf / "key.pem")
        os.chmod(self.conf / "key.pem", 0o600)
        self.sink = SmtpSink(procs, sink_port, self.dir / "sink")
        d = self.dir
        (self.conf / "main.cf").write_text("\n".join([
            "compatibility_level = 3.6",
            "queue_directory = %s" % self.spool,
            "data_directory = %s/data" % d,
            "syslog_name = pftest",
            "maillog_file = %s" % self.maillog_path,
            "maillog_file_prefixes = %s" % d,
            "myhostname = legacy.test",
            "mydestination =",
            "local_recipient_maps =",
            "inet_interfaces = 127.0.0.1",
            "inet_protocols = ipv4",
            "mynetworks = 127.0.0.0/8",
            "smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination",
            "relayhost = [127.0.0.1]:%d" % sink_port,
            "smtpd_peername_lookup = no",
            "smtpd_authorized_xclient_hosts = 127.0.0.1",
            "smtpd_tls_security_level = may",
            "smtpd_tls_cert_file = %s/cert.pem" % self.conf,
            "smtpd_tls_key_file = %s/key.pem" % self.conf,
            "smtpd_tls_loglevel = 1",
            "message_size_limit = 104857600",
            "",
        ]))
        (self.conf / "master.cf").write_text("\n".join([
            "127.0.0.1:%d inet n - n - - smtpd" % self.smtp_port,
            "127.0.0.1:%d inet n - n - - smtpd -o smtpd_tls_wrappermode=yes" % self.smtps_port,
            "127.0.0.1:%d inet n - n - - smtpd -o smtpd_upstream_proxy_protocol=haproxy"
            % self.proxy_port,
            "cleanup  unix n - n - 0 cleanup",
            "qmgr     unix n - n 300 1 qmgr",
            "tlsmgr   unix - - n 1000? 1 tlsmgr",
            "rewrite  unix - - n - - trivial-rewrite",
            "bounce   unix - - n - 0 bounce",
            "defer    unix - - n - 0 bounce",
            "trace    unix - - n - 0 bounce",
            "smtp     unix - - n - - smtp",
            "relay    unix - - n - - smtp",
            "showq    unix n - n - - showq",
            "error    unix - - n - - error",
            "retry    unix - - n - - error",
            "anvil    unix - - n - 1 anvil",
            "scache   unix - - n - 1 scache",
            "postlog  unix-dgram n - n - 1 postlogd",
            "",
        ]))
        old = time.time() - 120
        for f in ("main.cf", "master.cf"):
            os.utime(self.conf / f, (old, old))
        self.started = False

    def _postfix(self, *args, timeout=30):
        return subprocess.run([POSTFIX, "-c", str(self.conf), *args], capture_output=True,
                              text=True, timeout=timeout)

    def start(self):
        r = self._postfix("start")
        self.started = True
        if r.returncode != 0:
            raise HarnessError("postfix start failed (%d):\n%s%s\nmaillog:\n%s" % (
                r.returncode, r.stdout, r.stderr, tail(self.maillog())))
        for port in (self.smtp_port, self.smtps_port, self.proxy_port):
            wait_until(lambda: listening(port), 10, "postfix to listen on %d" % port)
        return self

    def master_pid(self):
        try:
            return int((self.spool / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self):
        """Stop the instance (idempotent); kills what a stop leaves behind."""
        if not self.started:
            return
        pid = self.master_pid()
        try:
            self._postfix("stop", timeout=20)
        except subprocess.TimeoutExpired:
            pass
        if pid:
            def gone():
                return not os.path.exists("/proc/%d" % pid)
            try:
                wait_until(gone, 5, "postfix master %d to exit" % pid, 0.05)
            except HarnessError:
                for p in reversed(proc_tree(pid)):
                    try:
                        os.kill(p, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
        self.started = False

    def maillog(self):
        return _read_text(self.maillog_path)

    @staticmethod
    def queue_id(transcript):
        """The queue id from a '250 2.0.0 Ok: queued as QID' reply."""
        m = re.search(r"queued as ([0-9A-Za-z]+)", transcript)
        return m.group(1) if m else None

    def wait_sent(self, qid, timeout=15.0):
        """The maillog line saying qid reached the sink (status=sent)."""
        pat = re.compile(r" %s: to=.*status=sent" % re.escape(qid))

        def sent():
            for line in self.maillog().splitlines():
                if pat.search(line):
                    return line
            return None

        try:
            return wait_until(sent, timeout, "%s status=sent" % qid, 0.05)
        except HarnessError as e:
            raise HarnessError("%s; maillog:\n%s" % (e, tail(self.maillog())))

    def client_line(self, qid):
        """Postfix's 'QID: client=...' log line (the client it believed)."""
        for line in self.maillog().splitlines():
            if " %s: client=" % qid in line:
                return line
        return None

    def client_of(self, c, test_id):
        """Send a short message on smtplib connection c (EHLO, MAIL, RCPT,
        DATA); once it is delivered, Postfix's client= line for it."""
        c.ehlo()
        c.mail("sender@client.test")
        c.rcpt("rcpt@legacy.test")
        code, text = c.data(make_message(500, test_id=test_id)[1])
        assert code == 250, (code, text)
        qid = self.queue_id(text.decode())
        self.wait_sent(qid)
        return self.client_line(qid)


# --------------------------------------------------------------------------
# Hand-written upstreams for relay behaviour

def loopback_listener(port, backlog, rcvbuf=None):
    """A listening TCP socket on 127.0.0.1:port, polled every 0.1 s by an
    accept loop. rcvbuf is set before listen so accepted sockets inherit a
    small window."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.bind(("127.0.0.1", port))
    sock.listen(backlog)
    sock.settimeout(0.1)
    return sock


class RawServer:
    """A TCP server on 127.0.0.1:port whose connections are handled by
    handler(conn, server) in threads. Sockets and threads end at close()."""

    def __init__(self, port, handler, backlog=16, rcvbuf=None):
        self.port = port
        self.handler = handler
        self.conns = []
        self.errors = []
        self.stopping = threading.Event()
        self.accepted = threading.Event()
        self.sock = loopback_listener(port, backlog, rcvbuf)
        self.thread = threading.Thread(target=self._accept_loop, daemon=True)
        self.threads = [self.thread]
        self.thread.start()

    def _accept_loop(self):
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.conns.append(conn)
            self.accepted.set()
            t = threading.Thread(target=self._run, args=(conn,), daemon=True)
            self.threads.append(t)
            t.start()

    def _run(self, conn):
        try:
            self.handler(conn, self)
        except Exception as e:  # reported by the test through .errors
            if not self.stopping.is_set():
                self.errors.append(e)

    def close(self):
        self.stopping.set()
        try:
            self.sock.close()
        except OSError:
            pass
        for c in self.conns:
            try:
                c.close()
            except OSError:
                pass
        for t in self.threads:
            t.join(2)


# --------------------------------------------------------------------------
# Clients

def dot_stuff(msg):
    """msg (CRLF lines) as sent inside DATA, without the final '.' line."""
    return re.sub(rb"(?m)^\.", b"..", msg)


def expected_received(msg):
    """What a server stores when smtplib sends msg: smtplib dot-stuffs and
    appends CRLF when msg does not end with one (the server unstuffs)."""
    return msg if msg.endswith(CRLF) else msg + CRLF


class SwaksResult:
    def __init__(self, rc, out):
        self.rc = rc
        self.out = out

    def replies(self):
        """Lines the server sent (swaks marks them with '<-' or '<~')."""
        return [l[4:] for l in self.out.splitlines() if l.startswith(("<- ", "<~ ", "<** ", "<~* "))]

    def __repr__(self):
        return "SwaksResult(rc=%d)\n%s" % (self.rc, self.out)


def swaks(port, tls=None, data=None, workdir=None, from_="sender@client.test",
          to="rcpt@legacy.test", helo="client.test", ca=None, protocol=None,
          quit_after=None, timeout=60, extra=(), server="127.0.0.1"):
    """Run swaks against server:port. tls: None, 'starttls' or 'implicit'.
    data: the exact message bytes (CRLF lines); they are written dot-stuffed
    and dot-terminated to a file and sent with --no-data-fixup, so swaks
    neither expands %TOKENS%/\\n nor rewrites headers or line ends: the
    receiver gets expected_received(data). ca: verify the server against it.
    """
    argv = ["swaks", "--server", "%s:%d" % (server, port), "--from", from_, "--to", to,
            "--helo", helo, "--timeout", "%ds" % timeout]
    if tls == "starttls":
        argv.append("--tls")
    elif tls == "implicit":
        argv.append("--tlsc")
    elif tls is not None:
        raise ValueError(tls)
    if ca:
        argv += ["--tls-verify", "--tls-ca-path", ca]
    if protocol:
        argv += ["--tls-protocol", protocol]
    if quit_after:
        argv += ["--quit-after", quit_after]
    tmp = None
    if data is not None:
        fd, tmp = tempfile.mkstemp(prefix="swaks-", suffix=".eml", dir=workdir)
        with os.fdopen(fd, "wb") as f:
            f.write(dot_stuff(expected_received(data)) + b".")
        argv += ["--data", "@" + tmp, "--no-data-fixup", "--suppress-data"]
    argv += list(extra)
    try:
        r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           timeout=timeout + 30)
    finally:
        if tmp:
            os.unlink(tmp)
    return SwaksResult(r.returncode, r.stdout.decode("utf-8", "replace"))


class SClientResult:
    def __init__(self, rc, out, err):
        self.rc = rc
        self.out = out
        self.err = err
        m = re.search(r"^Protocol version: (\S+)", err, re.M)
        self.protocol = m.group(1) if m else None
        m = re.search(r"^Ciphersuite: (\S+)", err, re.M)
        self.cipher = m.group(1) if m else None
        m = re.search(r"^Verification: (.*)$", err, re.M)
        self.verification = m.group(1).strip() if m else None

    @property
    def handshake_ok(self):
        return self.protocol is not None

    def lines(self):
        return self.out.splitlines()

    def __repr__(self):
        return "SClientResult(rc=%s protocol=%s)\nstdout:\n%s\nstderr:\n%s" % (
            self.rc, self.protocol, self.out, self.err)


def s_client(port, script=(), starttls=False, version=None, cafile=None, ciphers=None,
             ciphersuites=None, servername=None, delay=0.2, timeout=15, wait_close=True,
             until=None, extra=()):
    """openssl s_client to 127.0.0.1:port feeding an SMTP dialogue.

    script: lines (str or bytes, CRLF added when missing) written one by one
    with delay seconds in between; then stdin is closed and, with
    -ign_eof, the transcript runs until the server closes (or timeout).
    version: 'tls1', 'tls1_1', 'tls1_2', 'tls1_3'; for TLS 1.0/1.1 the
    client also lowers its own security level so that it really offers
    them. -brief puts the protocol, cipher and verification on stderr;
    -nocommands keeps lines starting with Q/R/k from being taken as
    s_client commands. until: a regular expression; once the server's
    output matches it (e.g. r"^221 " after QUIT) the client is stopped
    instead of waiting for the server to close."""
    argv = ["openssl", "s_client", "-connect", "127.0.0.1:%d" % port, "-brief",
            "-nocommands", "-ign_eof"]
    if starttls:
        argv += ["-starttls", "smtp", "-name", "client.test"]
    if version:
        argv.append("-" + version)
        if version in ("tls1", "tls1_1") and not ciphers:
            ciphers = "DEFAULT@SECLEVEL=0"
    if ciphers:
        argv += ["-cipher", ciphers]
    if ciphersuites:
        argv += ["-ciphersuites", ciphersuites]
    if cafile:
        argv += ["-CAfile", cafile, "-verify_return_error"]
    if servername:
        argv += ["-servername", servername]
    argv += list(extra)
    p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    out, err = [], []
    seen = threading.Event()
    pattern = re.compile(until.encode(), re.M) if until else None

    def read(stream, acc):
        while True:
            chunk = stream.read1(65536)
            if not chunk:
                return
            acc.append(chunk)
            if pattern is not None and pattern.search(b"".join(acc)):
                seen.set()

    readers = [threading.Thread(target=read, args=(s, acc), daemon=True)
               for s, acc in ((p.stdout, out), (p.stderr, err))]
    for t in readers:
        t.start()
    deadline = time.monotonic() + timeout
    try:
        time.sleep(delay)
        for line in script:
            if p.poll() is not None:
                break
            if isinstance(line, str):
                line = line.encode()
            if not line.endswith(CRLF):
                line += CRLF
            p.stdin.write(line)
            p.stdin.flush()
            time.sleep(delay)
        p.stdin.close()
    except BrokenPipeError:
        pass
    if pattern is not None:
        while p.poll() is None and not seen.is_set() and time.monotonic() < deadline:
            seen.wait(0.05)
        wait_close = False
    try:
        p.wait(max(0.1, deadline - time.monotonic()) if wait_close else delay)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
    for t in readers:
        t.join(5)
    return SClientResult(p.returncode, b"".join(out).decode("utf-8", "replace"),
                         b"".join(err).decode("utf-8", "replace"))


def s_client_session(port, sess_out=None, sess_in=None, version=None):
    """One implicit-TLS session with openssl s_client: greeting, QUIT (after
    a moment, so TLS 1.3 tickets arrive first). Returns s_client's output,
    which says 'New' or 'Reused' for the handshake. version: 'tls1_2'..."""
    argv = ["openssl", "s_client", "-connect", "127.0.0.1:%d" % port, "-servername",
            "shim.test", "-ign_eof", "-nocommands"]
    if version:
        argv.append("-" + version)
    if sess_out:
        argv += ["-sess_out", str(sess_out)]
    if sess_in:
        argv += ["-sess_in", str(sess_in)]
    p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT)
    out = b""
    deadline = time.monotonic() + 10
    os.set_blocking(p.stdout.fileno(), False)
    sent = False
    while time.monotonic() < deadline and p.poll() is None:
        try:
            chunk = p.stdout.read() or b""
        except BlockingIOError:
            chunk = b""
        out += chunk
        if not sent and re.search(rb"(?m)^220 ", out):
            time.sleep(0.1)          # let TLS 1.3 tickets arrive before QUIT
            p.stdin.write(b"QUIT\r\n")
            p.stdin.flush()
            sent = True
        time.sleep(0.02)
    if p.poll() is None:
        p.kill()
    p.wait()
    try:
        out += p.stdout.read() or b""
    except (BlockingIOError, ValueError):
        pass
    text = out.decode("utf-8", "replace")
    if "221" not in text:
        raise HarnessError("s_client session did not end with 221:\n" + text[-2000:])
    return text


class SmtpConn:
    """A hand-driven SMTP client connection (plain, or implicit TLS) for
    tests that need to see single replies, EOF and timing."""

    def __init__(self, port, tls=False, cafile=None, server_hostname="shim.test",
                 timeout=10.0, context=None, host="127.0.0.1"):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.local = self.sock.getsockname()
        if tls:
            ctx = context or (client_context(cafile) if cafile else client_context(verify=False))
            self.sock = ctx.wrap_socket(self.sock, server_hostname=server_hostname)
        self.buf = b""
        self.eof = False

    @property
    def tls_version(self):
        return self.sock.version() if isinstance(self.sock, ssl.SSLSocket) else None

    def _fill(self, deadline):
        self.sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = self.sock.recv(65536)
        except (ConnectionResetError, ssl.SSLError):
            data = b""
        if not data:
            self.eof = True
        self.buf += data
        return data

    def reply(self, timeout=10.0):
        """(code, [lines]) of the next reply; HarnessError on EOF/timeout."""
        deadline = time.monotonic() + timeout
        lines = []
        while True:
            while b"\r\n" not in self.buf:
                if self.eof or time.monotonic() >= deadline:
                    raise HarnessError("no complete reply (eof=%s) after %r" % (self.eof, lines))
                try:
                    self._fill(deadline)
                except socket.timeout:
                    pass
            line, self.buf = self.buf.split(b"\r\n", 1)
            text = line.decode("utf-8", "replace")
            lines.append(text)
            if len(text) < 4 or text[3] != "-":
                return int(text[:3]) if text[:3].isdigit() else 0, lines

    def send(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data)

    def cmd(self, line, timeout=10.0):
        self.send(line + "\r\n")
        return self.reply(timeout)

    def read_until_closed(self, timeout):
        """Everything up to EOF; (data, closed) with closed False on timeout."""
        deadline = time.monotonic() + timeout
        while not self.eof and time.monotonic() < deadline:
            try:
                self._fill(deadline)
            except socket.timeout:
                pass
        data, self.buf = self.buf, b""
        return data, self.eof

    def shutdown_write(self):
        self.sock.shutdown(socket.SHUT_WR)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def client_context(cafile=None, verify=True, minimum=None, maximum=None):
    """An ssl.SSLContext for test clients trusting the test CA."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if verify:
        ctx.load_verify_locations(cafile)
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if minimum:
        ctx.minimum_version = minimum
    if maximum:
        ctx.maximum_version = maximum
    return ctx


def smtp_send(port, msg, mode="plain", cafile=None, from_="sender@client.test",
              rcpts=("rcpt@legacy.test",), helo="client.test", timeout=60,
              server_hostname="shim.test"):
    """Send msg (exact bytes) with smtplib; mode plain|implicit|starttls.
    Returns the (code, text) of the reply to the end of DATA. smtplib
    dot-stuffs, and appends CRLF when msg lacks one: the server gets
    expected_received(msg). BODY=8BITMIME is announced when offered."""
    ctx = client_context(cafile) if cafile else client_context(verify=False)
    if mode == "implicit":
        # smtplib would check the certificate against the IP it connects to;
        # check the name the tests mean instead.
        s = _NamedSMTP_SSL(local_hostname=helo, timeout=timeout, context=ctx)
        s.server_hostname = server_hostname
        s.connect("127.0.0.1", port)
    else:
        s = smtplib.SMTP("127.0.0.1", port, local_hostname=helo, timeout=timeout)
    try:
        s.ehlo()
        if mode == "starttls":
            s.starttls(context=ctx)
            s.ehlo()
        opts = ["BODY=8BITMIME"] if s.has_extn("8bitmime") else []
        code, text = _send_data(s, from_, list(rcpts), msg, opts)
        try:
            s.quit()
        except (smtplib.SMTPServerDisconnected, OSError):
            pass
        return code, text
    finally:
        s.close()


class _NamedSMTP_SSL(smtplib.SMTP_SSL):
    server_hostname = None

    def _get_socket(self, host, port, timeout):
        sock = socket.create_connection((host, port), timeout, self.source_address)
        return self.context.wrap_socket(sock, server_hostname=self.server_hostname)


def _send_data(s, from_, rcpts, msg, opts):
    code, resp = s.mail(from_, opts)
    if code != 250:
        return code, resp.decode("latin-1")
    for r in rcpts:
        code, resp = s.rcpt(r)
        if code not in (250, 251):
            return code, resp.decode("latin-1")
    code, resp = s.data(msg)
    return code, resp.decode("latin-1")


# --------------------------------------------------------------------------
# Test messages

_TEXT = bytes(range(0x20, 0x7f))
_TEXT_TABLE = bytes(_TEXT[i % len(_TEXT)] for i in range(256))
# 8-bit: every byte value but CR and LF (a line never holds a bare one).
_BIN_TABLE = bytes((i if i not in (10, 13) else i + 0x70) for i in range(256))

KINDS = ("text", "8bit", "long", "dots", "commands", "mixed")

_SPECIAL = [b".", b"..", b".hidden", b"..double", b"STARTTLS", b"EHLO x", b"QUIT",
            b"RSET", b"DATA", b"MAIL FROM:<evil@x.test>", b". ", b""]


def make_message(size, seed=0, kind="text", test_id=None, subject=None):
    """Exact bytes of a message: CRLF lines, headers with a unique
    X-Test-Id, then a body of exactly size bytes (size 1 is rounded up to
    2 since every line ends in CRLF). kind:
      text      printable ASCII lines of 0-200 bytes
      8bit      random bytes (NUL and 0x80-0xff included, no CR/LF)
      long      lines of 998, 999, 1000 and 5000 bytes among short ones
      dots      lines that are '.' or start with '.', and SMTP commands
      commands  lines reading STARTTLS, EHLO x, QUIT, DATA, ...
      mixed     all of the above
    Returns (test_id, message)."""
    rnd = random.Random("%s/%s/%s" % (seed, kind, size))
    test_id = test_id or "t%d-%s-%d-%08x" % (seed, kind, size, rnd.getrandbits(32))
    head = (b"From: Sender <sender@client.test>\r\n"
            b"To: <rcpt@legacy.test>\r\n"
            b"Subject: " + (subject or "mailshim test %s" % test_id).encode() + b"\r\n"
            b"X-Test-Id: " + test_id.encode() + b"\r\n"
            b"MIME-Version: 1.0\r\n"
            b"Content-Type: application/octet-stream\r\n\r\n")
    return test_id, head + make_body(size, rnd, kind)


def make_body(size, rnd, kind):
    if size == 0:
        return b""
    size = max(size, 2)
    pool = rnd.randbytes(min(size, 1 << 16) + 5000)
    table = _BIN_TABLE if kind in ("8bit", "mixed") else _TEXT_TABLE
    pool = pool.translate(table)
    out, total = [], 0

    def chunk(n):
        start = rnd.randrange(0, len(pool) - n) if n < len(pool) else 0
        return pool[start:start + n]

    # Lines every message of the kind starts with, as far as size allows.
    first = {
        "dots": [b".", b"..", b".x", b"STARTTLS", b"EHLO x", b"QUIT"],
        "commands": [b"STARTTLS", b"EHLO x", b"QUIT", b"DATA", b"RSET", b"."],
        "long": [chunk(998), chunk(5000)],
        "mixed": [b".", b"..", b"STARTTLS", b"EHLO x", b"QUIT", chunk(998), chunk(5000)],
    }.get(kind, [])
    while total < size:
        room = size - total - 2
        choice = rnd.random()
        if first:
            line = first.pop(0)
        elif kind in ("dots", "commands", "mixed") and choice < 0.15:
            line = rnd.choice(_SPECIAL if kind != "commands" else _SPECIAL[4:])
        elif kind in ("long", "mixed") and choice < 0.25:
            line = chunk(rnd.choice((998, 999, 1000, 5000)))
        else:
            line = chunk(rnd.randint(0, 200))
        line = line[:room]
        if size - total - len(line) - 2 == 1:
            line += b"x"  # never leave a single byte that no line can hold
        out.append(line + CRLF)
        total += len(line) + 2
    body = b"".join(out)
    assert len(body) == size, (len(body), size)
    return body


def sha256(b):
    return hashlib.sha256(b).hexdigest()


def postfix_main_add(pf, *lines):
    """Add main.cf lines to a PrivatePostfix before its start (the last
    setting of a parameter wins), keeping the file's old mtime."""
    path = pf.conf / "main.cf"
    st = path.stat()
    with open(path, "a") as f:
        for line in lines:
            f.write(line + "\n")
    os.utime(path, (st.st_atime, st.st_mtime))
