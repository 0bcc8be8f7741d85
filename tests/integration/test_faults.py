"""Faults around one session must stay inside it: while an upstream stalls
or resets, a client crawls, speaks the wrong protocol or vanishes, the
process runs out of file descriptors or of memory, mailshim goes on
serving the other sessions, and every normal message is delivered once,
byte for byte, never partly or twice.

Each test runs a normal session next to the fault: one started before the
fault and finished after it (interleaved in the same worker), and often
one more with swaks afterwards."""

import os
import re
import select
import socket
import subprocess
import threading
import time

import pytest

from harness import HarnessError, tail, fd_count, proc_tree, service, wait_until
from clients import dot_stuff, expected_received, s_client, swaks
from messages import make_message, sha256
from hostile import (call, client_hello, close, expect_closed, expect_line, expect_reply,
                     reset, reset_socket, send, send_bulk, send_slowly, serve_smtp, stall)


# --------------------------------------------------------------------------
# Building blocks


def two_services(make_shim, ports, pki, sink, bad_upstream_port, bad_listen="plain",
                 bad_upstream="plain", good_listen="plain", global_extra=None, start=True,
                 **bad_extra):
    """A shim with a [faulty] service (where the fault happens) and a
    [good] one in front of smtp-sink; returns (shim, faulty port, good port)."""
    bad_port, good_port = ports.get(), ports.get()
    bad_extra.setdefault("timeout_idle", "10s")
    bad_extra.setdefault("timeout_handshake", "5s")
    g = {"workers": 1, "helo_name": "shim.test", "log": "stderr", "log_level": "info"}
    g.update(global_extra or {})
    conf = {"global": g,
            "faulty": service(bad_port, bad_upstream_port, bad_listen, bad_upstream, pki,
                              **bad_extra),
            "good": service(good_port, sink.port, good_listen, "plain", pki,
                            timeout_idle="30s")}
    shim = make_shim(conf, start=start)
    return shim, bad_port, good_port


class GoodSession:
    """A normal SMTP session to the good service, driven by hand in two
    halves around a fault: begin() stops in the middle of the body,
    finish() sends the rest and expects the 250."""

    def __init__(self, fake_client, port, seed, size=200000, tls=None):
        self.tid, self.msg = make_message(size, seed, "mixed")
        self.body = dot_stuff(expected_received(self.msg)) + b".\r\n"
        self.c = fake_client(port, tls=tls)

    def begin(self):
        self.c.run([expect_reply(r"^220 "), send("EHLO good.client.test\r\n"),
                    expect_reply(r"^250 "), send("MAIL FROM:<good@client.test>\r\n"),
                    expect_reply(r"^250"), send("RCPT TO:<rcpt@legacy.test>\r\n"),
                    expect_reply(r"^250"), send("DATA\r\n"), expect_reply(r"^354")])
        self.c.send(self.body[:len(self.body) // 2])
        return self

    def finish(self):
        self.c.send(self.body[len(self.body) // 2:])
        r = self.c.reply(30)
        assert r.startswith(b"250"), r
        self.c.run([send("QUIT\r\n"), expect_reply(r"^221"), expect_closed(5)])
        self.c.close()
        return self.tid, self.msg


def swaks_one(port, workdir, seed, tls=None, pki=None):
    tid, msg = make_message(50000, seed, "mixed")
    r = swaks(port, tls=tls, data=msg, workdir=workdir, ca=pki.ca if pki else None, timeout=30)
    assert r.rc == 0, r
    return tid, msg


def delivered_exactly(sink, sent):
    """sink holds exactly the messages sent, each once and byte-identical."""
    for tid, msg in sent:
        got = sink.wait_message(tid)
        assert sha256(got) == sha256(expected_received(msg)), tid
    time.sleep(0.3)
    assert sink.count() == len(sent), [p.name for p in sink.dir.iterdir()]


def session_lines(shim, service_name):
    return [d for d in shim.log_lines() if d.get("service") == service_name]


def faulty_ended(shim, results=("error",), reason=None, timeout=10, count=1):
    lines = shim.wait_log(lambda d: d.get("service") == "faulty" and
                          d.get("result") in results, timeout, count)
    for d in lines:
        assert d.get("reason"), d["_line"]
        if reason:
            assert re.search(reason, d["reason"], re.I), d["_line"]
    return lines


def no_faulty_ok(shim):
    bad = [d["_line"] for d in session_lines(shim, "faulty") if d.get("result") == "ok"]
    assert not bad, bad


def uses_asan(path):
    if "/san/" in str(path):
        return True
    out = subprocess.run(["ldd", str(path)], capture_output=True, text=True).stdout
    return "libasan" in out


class Background:
    """fn() in a thread; join() re-raises what it raised."""

    def __init__(self, fn):
        self.exc = None
        self.result = None
        self.thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self.thread.start()

    def _run(self, fn):
        try:
            self.result = fn()
        except BaseException as e:  # re-raised in the test's thread
            self.exc = e

    def join(self, timeout=60):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "background work still running after %ss" % timeout
        if self.exc is not None:
            raise self.exc
        return self.result


# --------------------------------------------------------------------------
# Upstream faults


def test_upstream_stalls_mid_data(make_shim, fake_upstream, fake_client, smtp_sink, ports, pki,
                                  workdir):
    """The upstream answers DATA with 354, then stops reading and never
    replies: timeout_idle closes that session alone."""
    sink = smtp_sink()
    up = fake_upstream([serve_smtp(stop_after=r"^DATA"), stall(30)], rcvbuf=8192)
    shim, bad, good = two_services(make_shim, ports, pki, sink, up.port, timeout_idle="2s")
    g = GoodSession(fake_client, good, 1).begin()

    c = fake_client(bad)
    c.run([expect_reply(r"^220 "), send("EHLO client.test\r\n"), expect_reply(r"^250 "),
           send("MAIL FROM:<a@client.test>\r\n"), expect_reply(r"^250"),
           send("RCPT TO:<b@legacy.test>\r\n"), expect_reply(r"^250"),
           send("DATA\r\n"), expect_reply(r"^354")])
    # More than loopback's socket buffers hold (several MB on each hop).
    body = (b"y" * 998 + b"\r\n") * 32000 + b".\r\n"
    c.start([send_bulk(body, stall=8, limit=20), expect_closed(10)])
    # The stalled session is live meanwhile: both normal sessions go on.
    sent = [g.finish(), swaks_one(good, workdir, 2)]
    c.join(40)
    assert c.error is None, c.error
    # The client was pushed back (the body never got through), then cut
    # off about timeout_idle after its last byte went out.
    assert 0 < c.bulk_sent < len(body), c.bulk_sent
    assert c.eof_at is not None, c.transcript()
    assert c.eof_at - c.bulk_last_progress < 5, c.transcript()
    faulty_ended(shim, reason=r"idle|timeout")
    delivered_exactly(sink, sent)
    assert up.messages() == []


def test_upstream_resets(make_shim, fake_upstream, fake_client, smtp_sink, ports, pki, workdir):
    sink = smtp_sink()
    up = fake_upstream([serve_smtp(stop_after=r"^RCPT"), expect_line(r"^DATA"), reset()])
    shim, bad, good = two_services(make_shim, ports, pki, sink, up.port)
    g = GoodSession(fake_client, good, 3).begin()
    c = fake_client(bad)
    c.run([expect_reply(r"^220 "), send("EHLO client.test\r\n"), expect_reply(r"^250 "),
           send("MAIL FROM:<a@client.test>\r\n"), expect_reply(r"^250"),
           send("RCPT TO:<b@legacy.test>\r\n"), expect_reply(r"^250"), send("DATA\r\n")])
    data, closed = c.read_until_closed(5)
    assert closed, data
    assert data == b"" or re.fullmatch(rb"4\d\d [^\r\n]*\r\n", data), data
    faulty_ended(shim, reason=r"upstream")
    sent = [g.finish(), swaks_one(good, workdir, 4)]
    delivered_exactly(sink, sent)


def read_some(n):
    """An upstream step: read n bytes of what comes (a body), then go on."""
    def fn(peer):
        got = len(peer.buf)
        peer.sock.settimeout(10)
        while got < n:
            data = peer.sock.recv(65536)
            if not data:
                return
            got += len(data)
    return fn


@pytest.mark.parametrize("how", ["close", "reset", "silent"])
def test_upstream_421_mid_body_reaches_the_client(make_shim, fake_upstream, ports, pki, how):
    """The upstream reads 1 MB of a body, says 421 and goes (a close or a
    reset): the client, still sending, gets that 421 and then a clean end,
    not a reset that would lose it, and no second reply; an upstream that
    goes without a word gets the client the shim's 421. Nothing is
    delivered."""
    said = [] if how == "silent" else [send("421 4.3.0 going away mid body\r\n")]
    up = fake_upstream([serve_smtp(stop_after=r"^DATA"), call(read_some(1 << 20))] + said +
                       [reset() if how == "reset" else close()])
    want = (b"421 4.4.2 Upstream mail server closed the connection\r\n" if how == "silent"
            else b"421 4.3.0 going away mid body\r\n")
    port = ports.get()
    shim = make_shim({"faulty": service(port, up.port)})
    s = socket.create_connection(("127.0.0.1", port), timeout=15)
    f = s.makefile("rb")

    def reply():
        lines = []
        while True:
            line = f.readline()
            lines.append(line)
            if len(line) < 4 or line[3:4] != b"-":
                return lines
    assert reply()[0].startswith(b"220")
    for cmd, code in ((b"EHLO client.test", b"250"), (b"MAIL FROM:<a@client.test>", b"250"),
                      (b"RCPT TO:<b@legacy.test>", b"250"), (b"DATA", b"354")):
        s.sendall(cmd + b"\r\n")
        assert reply()[-1].startswith(code), cmd
    body = (b"z" * 998 + b"\r\n") * 8000      # 8 MB, more than every buffer holds

    def feed():
        try:
            s.sendall(body + b".\r\n")
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass
    t = threading.Thread(target=feed, daemon=True)
    t.start()
    got = reply()
    assert got == [want], (got, shim.stderr_text()[-3000:])
    try:
        rest = f.read()
    except ConnectionResetError:
        rest = None
    t.join(20)
    s.close()
    assert rest == b"", "no clean end after the 421: %r" % rest
    faulty_ended(shim, reason=r"upstream")
    assert up.messages() == []


def open_data(port, timeout):
    """A plain client socket (and its file) through HELO, MAIL, RCPT and
    DATA's 354: the body comes next."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    f = s.makefile("rb")
    assert f.readline().startswith(b"220")
    s.sendall(b"HELO client.test\r\nMAIL FROM:<a@client.test>\r\nRCPT TO:<b@legacy.test>\r\n"
              b"DATA\r\n")
    got = [f.readline() for _ in range(4)]
    assert got[-1].startswith(b"354"), got
    return s, f


def read_slowly_to_the_dot(every=0.05, size=32768):
    """An upstream step: read the body a little at a time, to its end."""
    def fn(peer):
        tail = bytes(peer.buf[-5:])
        peer.sock.settimeout(10)
        while not tail.endswith(b"\r\n.\r\n"):
            data = peer.sock.recv(size)
            if not data:
                return
            tail = (tail + data)[-5:]
            time.sleep(every)
    return fn


def test_timeout_reply_waits_for_an_upstream_still_reading(make_shim, fake_upstream, ports):
    """The upstream reads an 8 MB body slowly (about 640 KB/s, some 12 s)
    and answers once it has the end: with timeout_reply = 2s, the wait for
    its reply runs from the last byte it took, not from the end of data
    reaching the shim's buffers, so the message is accepted."""
    up = fake_upstream([serve_smtp(stop_after=r"^DATA"), call(read_slowly_to_the_dot()),
                        send("250 2.0.0 Ok: queued\r\n"), expect_line(r"^QUIT"),
                        send("221 bye\r\n"), close()], rcvbuf=65536)
    port = ports.get()
    make_shim({"faulty": service(port, up.port, timeout_reply="2s", timeout_idle="30s")})
    s, f = open_data(port, 40)
    s.sendall((b"w" * 998 + b"\r\n") * 8000 + b".\r\n")
    line = f.readline()
    assert line == b"250 2.0.0 Ok: queued\r\n", line
    s.sendall(b"QUIT\r\n")
    assert f.readline().startswith(b"221")
    s.close()


def test_a_client_that_leaves_mid_body_is_no_ok_session(make_shim, fake_upstream, ports):
    """The client ends its side in the middle of a DATA body: the upstream
    sees the end of the stream (never an end of data) and goes; the
    session is logged as an error, not as ok, and nothing is delivered."""
    up = fake_upstream([serve_smtp()])
    port = ports.get()
    shim = make_shim({"faulty": service(port, up.port)})
    s, f = open_data(port, 15)
    s.sendall(b"Subject: cut\r\n\r\nhalf a bo")
    s.shutdown(socket.SHUT_WR)
    assert f.read() == b""
    s.close()
    faulty_ended(shim, reason=r"middle of a message")
    assert up.messages() == []


@pytest.mark.parametrize("mode", ["plain", "starttls", "implicit"])
def test_upstream_accepts_and_never_greets(make_shim, fake_upstream, fake_client, smtp_sink,
                                           ports, pki, workdir, mode):
    """A bounded wait, then a 421 (or a close): timeout_reply for a plain
    upstream (its greeting is owed), timeout_handshake while the shim sets
    up TLS with it."""
    sink = smtp_sink()
    up = fake_upstream([stall(30)])
    shim, bad, good = two_services(make_shim, ports, pki, sink, up.port, bad_upstream=mode,
                                   timeout_idle="2s", timeout_reply="2s",
                                   timeout_handshake="1s")
    g = GoodSession(fake_client, good, 5).begin()
    c = fake_client(bad)
    c.start([expect_closed(10)])
    sent = [swaks_one(good, workdir, 6)]
    c.join(15)
    assert c.error is None, c.error
    data = c.all_bytes()
    assert data == b"" or re.fullmatch(rb"421 4\.\d\.\d [^\r\n]*\r\n", data), data
    bound = 2 if mode == "plain" else 1
    assert c.eof_at - c.t0 < bound + 2, c.eof_at - c.t0
    if mode != "plain":
        assert data.startswith(b"421 "), data
    faulty_ended(shim, ("error", "refused"), r"timeout")
    sent.insert(0, g.finish())
    delivered_exactly(sink, sent)


# --------------------------------------------------------------------------
# Client faults


def test_slowloris_client_is_closed_by_idle_timeout(make_shim, fake_upstream, fake_client,
                                                    smtp_sink, ports, pki, workdir):
    """One byte a second of a command line that never ends: with
    timeout_idle = 2s the session must not live on for as long as the
    client keeps dribbling."""
    sink = smtp_sink()
    up = fake_upstream([serve_smtp()])
    shim, bad, good = two_services(make_shim, ports, pki, sink, up.port, timeout_idle="2s")
    g = GoodSession(fake_client, good, 7).begin()
    c = fake_client(bad)
    c.run([expect_reply(r"^220 ")])
    t0 = time.monotonic()
    c.start([send_slowly(b"EHLO " + b"s" * 13, every=1.0)])   # at most 18 s
    sent = [swaks_one(good, workdir, 8)]
    c.join(30)
    alive_for = (c.eof_at or time.monotonic()) - t0
    assert c.eof, "slowloris client still connected after %.1fs" % alive_for
    assert alive_for < 6, "slowloris client kept its session for %.1fs" % alive_for
    faulty_ended(shim, reason=r"idle|timeout|slow")
    sent.insert(0, g.finish())
    delivered_exactly(sink, sent)
    assert b"sssss" not in up.all_bytes()


def test_tls_client_hello_to_plaintext_port(make_shim, fake_upstream, fake_client, smtp_sink,
                                            ports, pki, workdir):
    sink = smtp_sink()
    up = fake_upstream([serve_smtp()])
    shim, bad, good = two_services(make_shim, ports, pki, sink, up.port)
    g = GoodSession(fake_client, good, 9).begin()
    r = s_client(bad, [], timeout=8, servername="shim.test")
    assert not r.handshake_ok, r
    lines = faulty_ended(shim)
    assert len(session_lines(shim, "faulty")) == 1, lines
    # Nothing of the ClientHello went upstream as a command.
    assert b"\x16\x03" not in up.all_bytes()
    sent = [g.finish(), swaks_one(good, workdir, 10)]
    delivered_exactly(sink, sent)


def test_plaintext_smtp_to_implicit_tls_port(make_shim, fake_upstream, fake_client, smtp_sink,
                                             ports, pki, workdir):
    sink = smtp_sink()
    up = fake_upstream([serve_smtp()])
    shim, bad, good = two_services(make_shim, ports, pki, sink, up.port, bad_listen="implicit")
    g = GoodSession(fake_client, good, 11).begin()
    c = fake_client(bad)
    c.send(b"EHLO client.test\r\nMAIL FROM:<a@client.test>\r\n")
    data, closed = c.read_until_closed(8)
    assert closed, data
    assert not data.startswith(b"2"), data
    faulty_ended(shim, reason=r"client|TLS|handshake")
    assert len(session_lines(shim, "faulty")) == 1
    assert b"MAIL" not in up.all_bytes() and b"client.test" not in up.all_bytes()
    sent = [g.finish(), swaks_one(good, workdir, 12)]
    delivered_exactly(sink, sent)


def vanish(port, how):
    """One client that leaves in the middle of its TLS handshake."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        if how == "rst-at-once":
            reset_socket(s)
            return
        if how.startswith("starttls"):
            f = s.makefile("rb")
            assert f.readline().startswith(b"220")
            s.sendall(b"EHLO client.test\r\n")
            while True:
                line = f.readline()
                assert line.startswith(b"250"), line
                if line[3:4] == b" ":
                    break
            s.sendall(b"STARTTLS\r\n")
            assert f.readline().startswith(b"220")
        hello = client_hello()
        s.sendall(hello[:len(hello) // 2])
        time.sleep(0.05)
        if how.endswith("rst"):
            reset_socket(s)
        else:
            s.close()
    finally:
        s.close()


@pytest.mark.parametrize("how", ["half-hello-close", "half-hello-rst", "rst-at-once",
                                 "starttls-half-hello-rst"])
def test_client_vanishing_mid_handshake(make_shim, fake_upstream, fake_client, smtp_sink, ports,
                                        pki, workdir, how):
    sink = smtp_sink()
    up = fake_upstream([serve_smtp()])
    listen = "starttls" if how.startswith("starttls") else "implicit"
    # (listen_plain_from exists only on starttls listeners)
    extra = {"listen_plain_from": "127.0.0.0/8"} if listen == "starttls" else {}
    shim, bad, good = two_services(make_shim, ports, pki, sink, up.port, bad_listen=listen,
                                   **extra)
    g = GoodSession(fake_client, good, 13).begin()
    n = 10
    bg = Background(lambda: [vanish(bad, how) for _ in range(n)])
    sent = [swaks_one(good, workdir, 14)]
    bg.join(60)
    lines = faulty_ended(shim, count=n)
    assert len(session_lines(shim, "faulty")) == n
    no_faulty_ok(shim)
    for d in lines:
        assert d["listen_tls"] == "none", d["_line"]
    sent.insert(0, g.finish())
    delivered_exactly(sink, sent)
    assert shim.proc.alive()


# --------------------------------------------------------------------------
# Limits: file descriptors, max_connections, memory


def limited_binary(workdir, mailshim_path, nofile):
    """A wrapper that starts mailshim under prlimit (same pid: prlimit execs)."""
    w = workdir / ("mailshim-nofile-%d" % nofile)
    w.write_text("#!/bin/sh\nexec prlimit --nofile=%d:%d -- %s \"$@\"\n"
                 % (nofile, nofile, mailshim_path))
    w.chmod(0o755)
    return w


def worker_pid(shim):
    """The process that serves (workers = 1: the supervisor's one child)."""
    def one():
        kids = [p for p in proc_tree(shim.pid) if p != shim.pid]
        return kids[0] if len(kids) == 1 else None
    return wait_until(one, 5, "the worker process")


def socket_links(pid):
    """The sockets pid holds, as /proc names them (socket:[inode])."""
    out = set()
    for f in os.listdir("/proc/%d/fd" % pid):
        try:
            link = os.readlink("/proc/%d/fd/%s" % (pid, f))
        except FileNotFoundError:
            continue
        if link.startswith("socket:"):
            out.add(link)
    return out


def idle_fd_count(shim, pid, port):
    """The worker's descriptors once it serves and holds no session.

    Right after the fork a worker is still setting up (it closes the
    supervisor's signalfd, then opens its event loop's epoll and eventfd),
    so a count taken then can be short by one or two. A session served
    proves the loop runs; once its sockets are gone (the worker holds no
    socket the supervisor does not: only the listeners), what is left is
    the idle set."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.settimeout(10)
        data = b""
        while not data.startswith(b"220 ") or b"\r\n" not in data:
            chunk = s.recv(4096)
            assert chunk, data
            data += chunk
        s.sendall(b"QUIT\r\n")
        while s.recv(4096):
            pass
    listeners = socket_links(shim.pid)
    wait_until(lambda: socket_links(pid) <= listeners, 10, "the first session's sockets to close")
    return fd_count(pid)


def set_limit(pid, what, value):
    r = subprocess.run(["prlimit", "--pid", str(pid), "--%s=%d:%d" % (what, value, value)],
                       capture_output=True, text=True, timeout=10)
    assert r.returncode == 0, r.stderr


def get_limit(pid, name):
    with open("/proc/%d/limits" % pid) as f:
        for line in f:
            if line.startswith(name):
                return line.split()[len(name.split()):]
    return None


def open_idle(port, n, timeout=10):
    """n connections, connected without blocking on each other."""
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        socks.append(s)
    deadline = time.monotonic() + timeout
    pending = list(socks)
    while pending and time.monotonic() < deadline:
        _, w, _ = select.select([], pending, [], 0.2)
        pending = [s for s in pending if s not in w]
    assert not pending, "%d connections never completed" % len(pending)
    return socks


def first_bytes(socks, wait):
    """What each socket received within wait seconds: bytes, or None when
    it was closed (EOF or reset) with nothing."""
    got = {s: b"" for s in socks}
    closed = set()
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        live = [s for s in socks if s not in closed]
        if not live:
            break
        r, _, _ = select.select(live, [], [], 0.1)
        for s in r:
            try:
                data = s.recv(4096)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            if data:
                got[s] += data
            else:
                closed.add(s)
    return got, closed


@pytest.mark.parametrize("spare", [0, 1], ids=["even", "odd"])
def test_fd_limit_pauses_accept_and_recovers(make_shim, smtp_sink, ports, pki, workdir,
                                             mailshim_path, spare):
    """mailshim under a low RLIMIT_NOFILE with 100 idle clients: those past
    the limit are not served (left in the backlog while accept pauses, or
    closed), and once the idle ones go a normal session works again.
    spare: 0 leaves no fd for a next accept (accept fails: EMFILE); 1
    leaves one, so a client is accepted but its upstream socket fails."""
    sink = smtp_sink()
    port = ports.get()
    shim = make_shim({"good": service(port, sink.port, timeout_idle="60s")}, start=False)
    shim.binary = str(limited_binary(workdir, mailshim_path, 64))
    shim.start()
    pid = worker_pid(shim)
    assert get_limit(pid, "Max open files")[0] == "64"
    base = idle_fd_count(shim, pid, port)
    limit = 64 if (64 - base) % 2 == 0 else 63
    limit -= spare
    if limit != 64:
        set_limit(pid, "nofile", limit)
    capacity = (limit - base) // 2
    assert capacity > 5, (base, limit)

    socks = open_idle(port, 100)
    try:
        got, closed = first_bytes(socks, 3)
        greeted = [s for s in socks if got[s].startswith(b"220 ")]
        others = [s for s in socks if s not in greeted]
        assert 1 <= len(greeted) <= capacity, (len(greeted), capacity)
        assert len(greeted) >= capacity - 1, (len(greeted), capacity)
        # Past the limit: nothing, or a 4xx and a close; never a greeting.
        for s in others:
            assert got[s] == b"" or re.fullmatch(rb"4\d\d [^\r\n]*\r\n", got[s]), got[s]
        assert shim.proc.alive()
        if spare == 0:
            wait_until(lambda: re.search(r"pausing listeners|EMFILE|Too many open files",
                                         shim.stderr_text()), 5, "the pause in the log")
        assert fd_count(pid) <= limit
    finally:
        for s in socks:
            reset_socket(s)
    # The backlog drains and the shim comes back to its idle fd count.
    try:
        wait_until(lambda: fd_count(pid) <= base, 40, "mailshim to release its fds")
    except HarnessError as e:
        fds = sorted(os.readlink("/proc/%d/fd/%s" % (pid, f))
                     for f in os.listdir("/proc/%d/fd" % pid))
        raise HarnessError("%s: %d fds (base %d): %s\nstderr:\n%s" % (
            e, len(fds), base, fds, tail(shim.stderr_text()))) from None
    tid, msg = make_message(20000, 20, "mixed")
    r = swaks(port, data=msg, workdir=workdir, timeout=20)
    assert r.rc == 0, r
    delivered_exactly(sink, [(tid, msg)])
    assert shim.proc.alive()


@pytest.mark.parametrize("listen", ["plain", "starttls", "implicit"])
def test_max_connections(make_shim, smtp_sink, ports, pki, workdir, fake_client, listen):
    sink = smtp_sink()
    port = ports.get()
    shim = make_shim({"global": {"workers": 1, "helo_name": "shim.test",
                                 "max_connections": 5},
                      "svc": service(port, sink.port, listen, "plain", pki,
                                     listen_plain_from="127.0.0.0/8" if listen == "starttls"
                                     else None)})
    tls = "implicit" if listen == "implicit" else None
    held = [fake_client(port, tls=tls).run([expect_reply(r"^220 ")]) for _ in range(5)]
    if listen == "implicit":
        # Refused before any TLS: the handshake cannot complete.
        with pytest.raises((OSError, AssertionError)):
            c = fake_client(port, tls="implicit")
            c.run([expect_reply(r"^220 ", timeout=5)])
    else:
        c = fake_client(port)
        data, closed = c.read_until_closed(5)
        assert data == b"421 4.3.2 Too many connections, try again later\r\n", data
        assert closed
    wait_until(lambda: "max_connections (5)" in shim.stderr_text(), 5, "the refusal in the log")
    # One leaves: the next client is served.
    held.pop().run([send("QUIT\r\n"), expect_reply(r"^221"), expect_closed(5)]).close()
    wait_until(lambda: len(shim.log_lines()) >= 1, 5, "the session's log line")
    tid, msg = make_message(20000, 21, "mixed")
    r = swaks(port, tls={"plain": None}.get(listen, listen), data=msg, workdir=workdir,
              ca=pki.ca, timeout=20)
    assert r.rc == 0, r
    delivered_exactly(sink, [(tid, msg)])
    for h in held:
        h.close()


def vm_kb(pid, field="VmSize"):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def test_out_of_memory_in_one_session(make_shim, fake_upstream, fake_client, smtp_sink, ports,
                                      pki, workdir, mailshim_path):
    """RLIMIT_AS of the running (release) shim lowered to what it uses now
    (plus 64 KiB): the heap cannot grow. Sessions pushing a message into
    an upstream that stopped reading each hold a full relay buffer, until
    one cannot get its buffer: that session must end cleanly
    (result=error, saying why), the process must live on, and once memory
    is free again (the limit stays) a normal session that began before,
    and a new one, deliver their messages."""
    if uses_asan(mailshim_path):
        pytest.skip("AddressSanitizer reserves terabytes of address space")
    sink = smtp_sink()
    up = fake_upstream([serve_smtp(stop_after=r"^DATA"), stall(60)], rcvbuf=4096)
    shim, bad, good = two_services(make_shim, ports, pki, sink, up.port, timeout_idle="30s")
    # Warm up: the event loop's per-fd arrays grow now, not under the limit.
    socks = open_idle(bad, 40)
    time.sleep(0.5)
    for s in socks:
        s.close()
    wait_until(lambda: len(shim.log_lines()) >= 40, 10, "the warm-up sessions to end")
    warm = len(shim.log_lines())
    g = GoodSession(fake_client, good, 22, size=100000).begin()

    pid = worker_pid(shim)
    limit_kb = vm_kb(pid) + 64
    set_limit(pid, "as", limit_kb * 1024)
    hogs, failed = [], None
    for i in range(30):
        c = fake_client(bad)
        hogs.append(c)
        c.run([expect_reply(r"^220 ", timeout=5), send("EHLO hog.test\r\n"),
               expect_reply(r"^250 ", timeout=5), send("MAIL FROM:<h@client.test>\r\n"),
               expect_reply(r"^250", timeout=5), send("RCPT TO:<r@legacy.test>\r\n"),
               expect_reply(r"^250", timeout=5), send("DATA\r\n"),
               expect_reply(r"^354", timeout=5),
               send_bulk((b"z" * 998 + b"\r\n") * 8000, stall=1, limit=10)], check=False)
        if c.error is not None or c.eof:
            failed = c
            break
    assert failed is not None, "no allocation failed under a %d KiB address space" % limit_kb
    assert shim.proc.alive(), "mailshim died when memory ran out"
    assert vm_kb(pid) <= limit_kb
    # The session that got no memory ended, with a log line, and the client
    # was not left hanging.
    data, closed = failed.read_until_closed(5)
    assert closed, "the session without memory is still open"
    assert data == b"" or re.fullmatch(rb"4\d\d [^\r\n]*\r\n", data), data
    wait_until(lambda: len(session_lines(shim, "faulty")) > warm, 5, "the failed session's line")
    errs = session_lines(shim, "faulty")[warm:]
    assert len(errs) == 1, [d["_line"] for d in errs]
    assert errs[0]["result"] == "error" and errs[0].get("reason"), errs[0]["_line"]
    # Free the hogs' buffers: the stalled upstream goes away.
    up.close()
    wait_until(lambda: len(session_lines(shim, "faulty")) >= warm + len(hogs), 10,
               "the hog sessions to end")
    sent = [g.finish(), swaks_one(good, workdir, 23)]
    delivered_exactly(sink, sent)
    assert shim.proc.alive()
    assert vm_kb(pid) <= limit_kb
    # The log says what happened, not a lost connection.
    assert re.search(r"memory", errs[0]["reason"], re.I), errs[0]["_line"]
