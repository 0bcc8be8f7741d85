#!/usr/bin/python3
"""Soak test of mailshim with end-to-end integrity checks.

    /usr/bin/python3 tests/soak/soak.py [--messages N] [--concurrency C]
        [--max-size BYTES] [--seed S] [--only LISTEN-UPSTREAM,...]

(`make soak` runs it with the defaults; tests/integration/test_soak.py
runs a short version under pytest.) Every option also reads an
environment variable: SOAK_MESSAGES (default 1000), SOAK_CONCURRENCY (50),
SOAK_MAX_SIZE (10485760), SOAK_SEED (1), SOAK_ONLY (all nine),
SOAK_TIMEOUT (seconds per translation, 1200), SOAK_WARMUP (0.1),
SOAK_KEEP (keep the work directory).

One mailshim (workers = 1, so one process holds every session) serves
nine services, one per translation listen_tls x upstream_tls, in front of
three receiving SMTP servers (tests/soak/hashsink.py: aiosmtpd with a
handler that only hashes, plain / STARTTLS / implicit TLS). The
translations run one after the other. For each, N messages go through
the shim at C concurrent sessions:

  * sizes are drawn log-uniformly between 0 bytes and --max-size (one
    message of each extreme is always included); bodies are random 8-bit
    bytes (NUL and 0x80-0xff included, never a bare CR or LF) cut into CRLF
    lines: mostly 0-1000 bytes, some of 998-65000 bytes, some starting
    with '.', some that are just '.', and some reading like SMTP commands;
    they are slices of one seeded pool, so making them costs little;
  * a session carries 1 to 3 messages as sequential transactions (MAIL,
    RCPT, DATA; no RSET in between), then QUIT; clients are smtplib in
    threads (SMTP, SMTP + starttls(), SMTP_SSL verifying the shim's
    certificate), the body is sent dot-stuffed by hand (bytes.replace,
    not smtplib's regular expressions);
  * each message carries X-Test-Id; the receiver records the SHA-256 of
    what it got after dot-unstuffing and keeps nothing else.

Checks, per translation:
  * every message arrived exactly once, byte-identical (size and SHA-256
    of the sent message, which is what the receiver must see once it has
    undone the dot-stuffing), over TLS when the upstream hop is TLS;
    nothing unknown arrived;
  * every session got 250 for each DATA, and logged one line with
    result=ok, the right listen_tls/upstream_tls, and bytes_in covering
    what was sent;
  * the shim's resident memory once all sessions have closed is within 10%
    of what it was after the warm-up (the first 10% of the messages,
    after those sessions closed too), plus 512 KiB of slack so a few
    pages of allocator noise on a small process do not count; growth past
    that is charged, once over the process's run, to what the worker's
    free lists keep when full (POOL_KEPT relay buffers and as many
    read-ahead blocks: 4 MiB), which can fill after a warm-up; a leak
    exhausts it;
  * the shim holds exactly as many file descriptors after the run, once
    every session is closed, as before the first session.
(With an AddressSanitizer build, `make soak SAN=1`, the RSS is printed but
not checked: ASan's quarantine keeps freed memory on purpose.)

Prints one summary line per translation (messages, sessions, MiB, seconds,
RSS and fds), and exits 1 when any check failed.
"""

import argparse
import bisect
import hashlib
import math
import os
import queue
import random
import re
import shutil
import smtplib
import socket
import ssl
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(REPO / "tests" / "integration"))

from harness import (HarnessError, Ports, Procs, Shim, make_pki, mailshim_binary,  # noqa: E402
                     tail, wait_until)
from peers import wait_listening  # noqa: E402

PYTHON = "/usr/bin/python3"
HASHSINK = HERE / "hashsink.py"
MODES = ("plain", "starttls", "implicit")
TRANSLATIONS = [(l, u) for l in MODES for u in MODES]
CRLF = b"\r\n"

RSS_TOLERANCE = 0.10          # end RSS may exceed warm-up RSS by 10% ...
RSS_SLACK_KB = 512            # ... plus this much (allocator noise on small RSS)


def pool_budget_kb():
    """What a worker's free lists may keep once they are full: POOL_KEPT
    relay buffers of BUF_CAP and as many read-ahead blocks of SOCKBIO_AHEAD
    (defined as BUF_CAP), read from the headers the binary was built from.
    They fill the first time that many buffers are in use at once, which
    may be after a translation's warm-up; being bounded, they fill once
    per process."""
    shim = HERE.parent.parent / "shim"

    def define(header, name, value=r"\(?(\d+)(?: \* (\d+))?\)?"):
        m = re.search(r"#define %s %s\s" % (name, value), (shim / header).read_text())
        if not m:
            raise RuntimeError("soak: %s is not what shim/%s defines" % (name, header))
        return m

    def number(m):
        return int(m.group(1)) * int(m.group(2) or 1)

    define("sockbio.h", "SOCKBIO_AHEAD", "BUF_CAP")
    return 2 * number(define("pool.h", "POOL_KEPT")) * number(define("buf.h", "BUF_CAP")) // 1024


def tname(listen, upstream):
    return "%s-to-%s" % (listen, upstream)


# --------------------------------------------------------------------------
# Parameters

class Params:
    def __init__(self, messages=1000, concurrency=50, max_size=10 << 20, seed=1,
                 only=None, timeout=1200.0, warmup=0.1, per_session=(1, 1, 1, 1, 2, 3)):
        self.messages = int(messages)
        self.concurrency = int(concurrency)
        self.max_size = int(max_size)
        self.seed = int(seed)
        self.translations = list(only) if only else list(TRANSLATIONS)
        self.timeout = float(timeout)
        self.warmup = float(warmup)
        self.per_session = tuple(per_session)
        if self.messages < 2 or self.concurrency < 1 or self.max_size < 2:
            raise ValueError("need messages >= 2, concurrency >= 1, max_size >= 2")

    def __repr__(self):
        return ("messages=%d concurrency=%d max_size=%d seed=%d warmup=%.2f translations=%s"
                % (self.messages, self.concurrency, self.max_size, self.seed, self.warmup,
                   ",".join(tname(*t) for t in self.translations)))


def parse_only(text):
    out = []
    for item in re.split(r"[,\s]+", text.strip()):
        if not item:
            continue
        m = re.fullmatch(r"(plain|starttls|implicit)-(?:to-)?(plain|starttls|implicit)", item)
        if not m:
            raise ValueError("bad translation %r (want e.g. implicit-to-starttls)" % item)
        out.append((m.group(1), m.group(2)))
    return out


# --------------------------------------------------------------------------
# Messages

# 8-bit: every byte value but CR and LF (a line never holds a bare one).
_BIN_TABLE = bytes((i if i not in (10, 13) else i + 0x70) for i in range(256))
_COMMANDS = (b"QUIT", b"RSET", b"DATA", b"STARTTLS", b"EHLO x", b"MAIL FROM:<evil@x.test>",
             b"BDAT 10 LAST", b". ", b".QUIT")


class Pool:
    """A seeded block of random 8-bit CRLF lines; message bodies are
    slices of it starting at a line start."""

    def __init__(self, size, seed):
        rnd = random.Random("pool/%d" % seed)
        raw = rnd.randbytes(size).translate(_BIN_TABLE)
        pieces, starts, pos, total = [], [], 0, 0
        while total < size:
            r = rnd.random()
            if r < 0.03:
                n = rnd.choice((998, 999, 1000, 1001, 1002, 2048, 4096, 4097, 5000, 20000,
                                65000))
            elif r < 0.50:
                n = rnd.randint(0, 80)
            else:
                n = rnd.randint(80, 1000)
            if pos + n > len(raw):
                pos = 0
            line = raw[pos:pos + n]
            pos += n
            k = rnd.random()
            if k < 0.02:
                line = b"."
            elif k < 0.03:
                line = b".."
            elif k < 0.07:
                line = b"." + line
            elif k < 0.08:
                line = rnd.choice(_COMMANDS)
            starts.append(total)
            pieces.append(line + CRLF)
            total += len(line) + 2
        self.data = b"".join(pieces)
        self.starts = starts

    def body(self, size, rnd):
        """Exactly size bytes of CRLF lines (size 1 gives 2: a line needs
        its CRLF)."""
        if size == 0:
            return b""
        if size <= 2:
            return CRLF
        hi = bisect.bisect_right(self.starts, len(self.data) - size)
        start = self.starts[rnd.randrange(0, max(1, hi))]
        body = self.data[start:start + size - 2]
        if body.endswith(b"\r"):
            body = body[:-1] + b"x"   # no bare CR before the final CRLF
        return body + CRLF


def message_head(test_id):
    return ("From: Soak <sender@client.test>\r\n"
            "To: <rcpt@legacy.test>\r\n"
            "Subject: mailshim soak %s\r\n"
            "X-Test-Id: %s\r\n"
            "MIME-Version: 1.0\r\n"
            "Content-Type: application/octet-stream\r\n"
            "Content-Transfer-Encoding: 8bit\r\n\r\n" % (test_id, test_id)).encode()


class MessageSpec:
    __slots__ = ("id", "size", "seed")

    def __init__(self, test_id, size, seed):
        self.id = test_id
        self.size = size
        self.seed = seed

    def build(self, pool):
        """(exact message bytes, the same dot-stuffed as sent in DATA)."""
        msg = message_head(self.id) + pool.body(self.size, random.Random(self.seed))
        # The head starts with "From:", so every line start is after a CRLF.
        return msg, msg.replace(b"\r\n.", b"\r\n..")


def plan(params, listen, upstream):
    """[[MessageSpec, ...] per session] for one translation; deterministic."""
    rnd = random.Random("plan/%d/%s/%s" % (params.seed, listen, upstream))
    top = math.log(params.max_size + 1)
    sizes = [int(math.exp(rnd.uniform(0.0, top))) - 1 for _ in range(params.messages)]
    sizes = [min(max(s, 0), params.max_size) for s in sizes]
    # Always both extremes, at random places.
    a, b = rnd.sample(range(params.messages), 2)
    sizes[a], sizes[b] = 0, params.max_size
    msgs = [MessageSpec("soak-%d-%s-%s-%05d" % (params.seed, listen, upstream, i), s,
                        rnd.getrandbits(64))
            for i, s in enumerate(sizes)]
    sessions, i = [], 0
    while i < len(msgs):
        k = rnd.choice(params.per_session)
        sessions.append(msgs[i:i + k])
        i += k
    return sessions


# --------------------------------------------------------------------------
# Clients

class _SMTP_SSL(smtplib.SMTP_SSL):
    """SMTP_SSL that checks the certificate against the name we mean,
    not the IP address it connects to."""
    server_hostname = "shim.test"

    def _get_socket(self, host, port, timeout):
        sock = socket.create_connection((host, port), timeout, self.source_address)
        return self.context.wrap_socket(sock, server_hostname=self.server_hostname)


class SessionError(Exception):
    pass


def client_ctx(cafile):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile)
    return ctx


def _expect(what, reply, codes):
    code, text = reply
    if code not in codes:
        raise SessionError("%s: %s %s" % (what, code, text.decode("latin-1", "replace")[:200]
                                          if isinstance(text, bytes) else text))


def run_session(listen, port, specs, pool, ctx, timeout, sent):
    """One SMTP session carrying specs; records (size, sha256) per id
    in sent once the DATA got its 250."""
    if listen == "implicit":
        s = _SMTP_SSL(local_hostname="client.test", timeout=timeout, context=ctx)
        s.connect("127.0.0.1", port)
    else:
        s = smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=timeout)
    try:
        _expect("EHLO", s.ehlo(), (250,))
        if listen == "starttls":
            if not s.has_extn("starttls"):
                raise SessionError("no STARTTLS in the EHLO reply")
            _expect("STARTTLS", s.starttls(context=ctx), (220,))
            _expect("EHLO after STARTTLS", s.ehlo(), (250,))
            if s.has_extn("starttls"):
                raise SessionError("STARTTLS still offered after TLS")
        for spec in specs:
            msg, stuffed = spec.build(pool)
            digest = hashlib.sha256(msg).hexdigest()
            size = len(msg)
            del msg
            opts = []
            if s.has_extn("8bitmime"):
                opts.append("BODY=8BITMIME")
            if s.has_extn("size"):
                opts.append("SIZE=%d" % len(stuffed))
            _expect("MAIL", s.mail("sender@client.test", opts), (250,))
            _expect("RCPT", s.rcpt("rcpt@legacy.test"), (250, 251))
            s.putcmd("data")
            _expect("DATA", s.getreply(), (354,))
            s.send(stuffed)
            s.send(b".\r\n")
            n = len(stuffed)
            del stuffed
            _expect("end of DATA (%s, %d bytes)" % (spec.id, size), s.getreply(), (250,))
            sent[spec.id] = (size, digest, n)
        _expect("QUIT", s.docmd("quit"), (221,))
    finally:
        s.close()


# --------------------------------------------------------------------------
# Receivers

class HashSink:
    def __init__(self, procs, port, mode, pki, directory):
        self.port = port
        self.mode = mode
        self.out = Path(directory) / ("received-%s.txt" % mode)
        self.out.touch()
        argv = [PYTHON, str(HASHSINK), "--mode", mode, "--port", str(port),
                "--out", str(self.out)]
        if mode != "plain":
            argv += ["--cert", pki.upstream, "--key", pki.upstream_key]
        self.proc = procs.start("hashsink-%s" % mode, argv,
                                env={"PYTHONDONTWRITEBYTECODE": "1"})
        wait_listening(self.proc, port, timeout=15)

    def received(self):
        """{id: [(size, sha256, tls), ...]}"""
        out = {}
        with open(self.out) as f:
            for line in f:
                parts = line.split()
                if len(parts) != 4:
                    continue
                out.setdefault(parts[0], []).append((int(parts[1]), parts[2], parts[3]))
        return out


def shim_config(ports_by_t, sinks, pki):
    conf = {"global": {"workers": "1", "helo_name": "shim.test", "log": "stderr",
                       "log_level": "info"}}
    for (listen, upstream), port in ports_by_t.items():
        s = {"listen": "127.0.0.1:%d" % port, "listen_tls": listen}
        if listen != "plain":
            s["listen_cert"] = pki.server
            s["listen_key"] = pki.server_key
        s["upstream"] = "127.0.0.1:%d" % sinks[upstream].port
        s["upstream_tls"] = upstream
        if upstream != "plain":
            s["upstream_ca"] = pki.ca
            s["upstream_name"] = "legacy.test"
        conf[tname(listen, upstream)] = s
    return conf


def sanitizer_build(binary):
    """True when binary was linked with AddressSanitizer."""
    try:
        return b"__asan_init" in Path(binary).read_bytes()
    except OSError:
        return False


# --------------------------------------------------------------------------
# The run

class Result:
    def __init__(self, listen, upstream):
        self.listen = listen
        self.upstream = upstream
        self.name = tname(listen, upstream)
        self.messages = 0
        self.sessions = 0
        self.bytes = 0
        self.seconds = 0.0
        self.rss_before = self.rss_warm = self.rss_end = 0
        self.fd_before = self.fd_warm = self.fd_end = 0
        self.problems = []

    def summary(self):
        return ("%-20s %5d msgs %5d sessions %8.1f MiB %7.1f s %6.1f MiB/s  "
                "RSS KiB %d -> warm %d -> end %d  fds %d/%d/%d  %s" % (
                    self.name, self.messages, self.sessions, self.bytes / 1048576.0,
                    self.seconds, self.bytes / 1048576.0 / max(self.seconds, 1e-6),
                    self.rss_before, self.rss_warm, self.rss_end, self.fd_before,
                    self.fd_warm, self.fd_end,
                    "ok" if not self.problems else "FAILED (%d)" % len(self.problems)))


class Soak:
    def __init__(self, procs, ports, pki, start_shim, params, workdir, out=print):
        self.procs = procs
        self.ports = ports
        self.pki = pki
        self.start_shim = start_shim
        self.p = params
        self.workdir = Path(workdir)
        self.out = out
        self.results = []
        self.sanitized = False
        # The free lists' growth, allowed once over the process's run.
        self.pool_kb = self.pool_left_kb = pool_budget_kb()

    def say(self, text):
        self.out(text)

    def run(self):
        p = self.p
        t0 = time.monotonic()
        self.say("soak: %r" % p)
        self.pool = Pool(max(p.max_size, 1 << 16) + (1 << 20), p.seed)
        self.say("soak: pool of %.1f MiB ready in %.1f s" % (
            len(self.pool.data) / 1048576.0, time.monotonic() - t0))
        needed = sorted({u for _, u in p.translations})
        self.sinks = {m: HashSink(self.procs, self.ports.get(), m, self.pki, self.workdir)
                      for m in needed}
        ports_by_t = {t: self.ports.get() for t in p.translations}
        self.shim = self.start_shim(shim_config(ports_by_t, self.sinks, self.pki))
        self.settle()
        self.sanitized = sanitizer_build(self.shim.binary)
        if self.sanitized:
            self.say("soak: %s is an AddressSanitizer build: RSS is reported, not checked "
                     "(its quarantine keeps freed memory; LeakSanitizer checks leaks at exit)"
                     % self.shim.binary)
        self.ctx = client_ctx(self.pki.ca)
        for listen, upstream in p.translations:
            r = Result(listen, upstream)
            self.results.append(r)
            try:
                self.translation(r, ports_by_t[(listen, upstream)])
            except HarnessError as e:
                r.problems.append(str(e))
            self.say(r.summary())
            for prob in r.problems[:10]:
                self.say("  - " + prob.replace("\n", "\n    "))
            if len(r.problems) > 10:
                self.say("  ... and %d more" % (len(r.problems) - 10))
            if not self.shim.proc.alive():
                self.say("soak: mailshim exited with %s; stopping\n%s" % (
                    self.shim.proc.returncode, tail(self.shim.stderr_text())))
                break
        total = sum(r.bytes for r in self.results)
        self.say("soak: %d translations, %d messages, %.1f MiB in %.1f s; %s" % (
            len(self.results), sum(r.messages for r in self.results), total / 1048576.0,
            time.monotonic() - t0, "ok" if self.ok() else "FAILED"))
        return self.ok()

    def ok(self):
        return (len(self.results) == len(self.p.translations)
                and all(not r.problems for r in self.results))

    def problems(self):
        out = []
        for r in self.results:
            out += ["%s: %s" % (r.name, x) for x in r.problems]
        if len(self.results) < len(self.p.translations):
            out.append("only %d of %d translations ran" % (len(self.results),
                                                          len(self.p.translations)))
        return out

    # -- one translation ---------------------------------------------------

    def service_lines(self, name):
        return [d for d in self.shim.log_lines() if d.get("service") == name]

    def settle(self):
        """Workers open their loop's descriptors just after they appear:
        the baseline fd count is taken once it has held still for 1 s."""
        deadline = time.monotonic() + 10
        last, since = None, time.monotonic()
        while time.monotonic() < deadline:
            n = self.shim.fd_count()
            if n != last:
                last, since = n, time.monotonic()
            elif time.monotonic() - since >= 1.0:
                return
            time.sleep(0.1)

    def wait_closed(self, r, sessions_so_far, fd_baseline):
        """Wait until the shim logged every session so far and its fd count
        fell back to fd_baseline (or the time is up); returns the lines."""
        deadline = time.monotonic() + 30
        lines = []
        while time.monotonic() < deadline:
            lines = self.service_lines(r.name)
            if len(lines) >= sessions_so_far and (
                    fd_baseline is None or self.shim.fd_count() <= fd_baseline):
                break
            time.sleep(0.2)
        time.sleep(0.3)   # anything late still shows up in the counts below
        return self.service_lines(r.name)

    def phase(self, listen, port, sessions, sent, errors, deadline):
        work = queue.Queue()
        for s in sessions:
            work.put(s)
        stop = threading.Event()

        def worker():
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    specs = work.get_nowait()
                except queue.Empty:
                    return
                try:
                    run_session(listen, port, specs, self.pool, self.ctx, 120, sent)
                except (SessionError, smtplib.SMTPException, OSError, ssl.SSLError) as e:
                    errors.append("session with %s: %s: %s" % (
                        specs[0].id, type(e).__name__, e))

        threads = [threading.Thread(target=worker, daemon=True)
                   for _ in range(min(self.p.concurrency, len(sessions)))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()) + 130)
        stop.set()
        if any(t.is_alive() for t in threads) or not work.empty():
            errors.append("sessions still running or not started at the time limit "
                          "(%.0f s per translation)" % self.p.timeout)

    def translation(self, r, port):
        p = self.p
        sessions = plan(p, r.listen, r.upstream)
        specs = [m for s in sessions for m in s]
        warm_msgs = max(1, int(math.ceil(len(specs) * p.warmup)))
        n, cut = 0, 0
        while cut < len(sessions) and n < warm_msgs:
            n += len(sessions[cut])
            cut += 1
        sent, errors = {}, []
        shim = self.shim
        r.rss_before, r.fd_before = shim.rss_kb(), shim.fd_count()
        t0 = time.monotonic()
        deadline = t0 + p.timeout

        self.phase(r.listen, port, sessions[:cut], sent, errors, deadline)
        lines = self.wait_closed(r, cut, r.fd_before)
        r.rss_warm, r.fd_warm = shim.rss_kb(), shim.fd_count()
        warm_lines = len(lines)

        self.phase(r.listen, port, sessions[cut:], sent, errors, deadline)
        r.seconds = time.monotonic() - t0
        lines = self.wait_closed(r, len(sessions), r.fd_before)
        r.rss_end, r.fd_end = shim.rss_kb(), shim.fd_count()

        r.sessions = len(sessions)
        r.messages = len(sent)
        r.bytes = sum(v[0] for v in sent.values())
        probs = r.problems
        probs += errors[:20]
        if len(errors) > 20:
            probs.append("... %d more failed sessions" % (len(errors) - 20))
        if len(sent) != len(specs):
            probs.append("%d of %d messages got no 250 for their DATA"
                         % (len(specs) - len(sent), len(specs)))

        # What the receiver got: each message once, byte-identical.
        sink = self.sinks[r.upstream]
        try:
            wait_until(lambda: all(m.id in sink.received() for m in specs if m.id in sent),
                       10, "the receiver to record every accepted message", 0.2)
        except HarnessError:
            pass
        got = sink.received()
        prefix = "soak-%d-%s-%s-" % (p.seed, r.listen, r.upstream)
        bad = []
        for m in specs:
            entries = got.get(m.id, [])
            if len(entries) != 1:
                bad.append("%s (%d bytes) arrived %d times" % (m.id, m.size, len(entries)))
                continue
            size, digest, tls = entries[0]
            want = sent.get(m.id)
            if want and (size, digest) != want[:2]:
                bad.append("%s differs: received %d bytes sha256 %s, sent %d bytes sha256 %s"
                           % (m.id, size, digest[:16], want[0], want[1][:16]))
            if (tls == "none") != (r.upstream == "plain"):
                bad.append("%s reached the receiver with tls=%s" % (m.id, tls))
        ours = {m.id for m in specs}
        strays = [k for k in got if k.startswith(prefix) and k not in ours]
        strays += ["(no X-Test-Id)"] * len(got.get("-", []))
        if strays:
            bad.append("the receiver got messages nobody sent: %s" % strays[:5])
        if bad:
            probs.append("%d integrity failures, e.g.:\n%s" % (len(bad), "\n".join(bad[:10])))

        # The log: one result=ok line per session, with the right TLS facts.
        if len(lines) != len(sessions):
            probs.append("%d log lines for %d sessions (%d after the warm-up's %d sessions)"
                         % (len(lines), len(sessions), warm_lines, cut))
        not_ok = [d["_line"] for d in lines if d.get("result") != "ok"]
        if not_ok:
            probs.append("%d sessions not result=ok, e.g.:\n%s" % (len(not_ok),
                                                                   "\n".join(not_ok[:5])))
        tls_bad = [d["_line"] for d in lines
                   if (d.get("listen_tls") == "none") != (r.listen == "plain")
                   or (d.get("upstream_tls") == "none") != (r.upstream == "plain")]
        if tls_bad:
            probs.append("%d log lines with the wrong listen_tls/upstream_tls, e.g.:\n%s"
                         % (len(tls_bad), "\n".join(tls_bad[:3])))
        logged_in = sum(int(d.get("bytes_in") or 0) for d in lines)
        stuffed = sum(v[2] for v in sent.values())
        if logged_in < stuffed:
            probs.append("log lines sum bytes_in=%d, less than the %d body bytes sent"
                         % (logged_in, stuffed))

        # Resources: nothing kept once every session closed.
        # Growth past the limit is charged to the free lists' budget, which
        # a process spends once: a leak keeps growing and exhausts it.
        limit = r.rss_warm * (1 + RSS_TOLERANCE) + RSS_SLACK_KB
        over = max(0, r.rss_end - limit)
        if over > self.pool_left_kb and not self.sanitized:
            probs.append("RSS grew from %d KiB after the warm-up to %d KiB at the end "
                         "(limit %d KiB: +%d%% +%d KiB, and %d KiB left of the free "
                         "lists' %d)" % (r.rss_warm, r.rss_end, limit, RSS_TOLERANCE * 100,
                                         RSS_SLACK_KB, self.pool_left_kb, self.pool_kb))
        self.pool_left_kb = max(0, self.pool_left_kb - over)
        if r.fd_end != r.fd_before or r.fd_warm != r.fd_before:
            probs.append("file descriptors: %d before, %d after the warm-up, %d at the end "
                         "(all sessions closed)" % (r.fd_before, r.fd_warm, r.fd_end))
        if not shim.proc.alive():
            probs.append("mailshim exited with %s" % shim.proc.returncode)


# --------------------------------------------------------------------------
# Command line

def env_default(name, default, conv=str):
    v = os.environ.get(name)
    return conv(v) if v not in (None, "") else default


def main(argv=None):
    ap = argparse.ArgumentParser(description="mailshim soak test with integrity checks")
    ap.add_argument("--messages", type=int, default=env_default("SOAK_MESSAGES", 1000, int),
                    help="messages per translation (SOAK_MESSAGES, default 1000)")
    ap.add_argument("--concurrency", type=int,
                    default=env_default("SOAK_CONCURRENCY", 50, int),
                    help="concurrent sessions (SOAK_CONCURRENCY, default 50)")
    ap.add_argument("--max-size", type=int, default=env_default("SOAK_MAX_SIZE", 10 << 20, int),
                    help="largest body in bytes (SOAK_MAX_SIZE, default 10 MiB)")
    ap.add_argument("--seed", type=int, default=env_default("SOAK_SEED", 1, int))
    ap.add_argument("--only", default=env_default("SOAK_ONLY", ""),
                    help="translations, e.g. plain-to-implicit,starttls-to-plain "
                         "(SOAK_ONLY, default all nine)")
    ap.add_argument("--timeout", type=float, default=env_default("SOAK_TIMEOUT", 1200.0, float),
                    help="seconds per translation (SOAK_TIMEOUT, default 1200)")
    ap.add_argument("--warmup", type=float, default=env_default("SOAK_WARMUP", 0.1, float),
                    help="share of messages before the warm-up RSS is taken (default 0.1)")
    ap.add_argument("--keep", action="store_true", default=bool(os.environ.get("SOAK_KEEP")),
                    help="keep the work directory (SOAK_KEEP)")
    args = ap.parse_args(argv)
    try:
        params = Params(args.messages, args.concurrency, args.max_size, args.seed,
                        parse_only(args.only), args.timeout, args.warmup)
    except ValueError as e:
        ap.error(str(e))

    binary = mailshim_binary()
    if not os.access(binary, os.X_OK):
        print("soak: no mailshim binary at %s (build it, or set MAILSHIM)" % binary,
              file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="mailshim-soak-"))
    procs = Procs(workdir)
    ports = Ports()
    shims = []

    def start_shim(conf):
        s = Shim(procs, workdir / "shim", binary)
        shims.append(s)
        return s.start(conf)

    ok = False
    try:
        pki = make_pki(workdir / "pki")
        soak = Soak(procs, ports, pki, start_shim, params, workdir,
                    out=lambda t: print(t, flush=True))
        ok = soak.run()
        for s in shims:
            try:
                s.stop()
            except HarnessError as e:
                ok = False
                print("soak: mailshim did not stop cleanly: %s" % e, flush=True)
    finally:
        procs.cleanup()
        ports.close()
        if args.keep or not ok:
            print("soak: work directory kept: %s" % workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
