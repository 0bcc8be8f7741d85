"""One session's life against peers that take their time or leave early:
no busy loop while a half-closed client waits for an upstream (CPU time
of the worker measured from /proc), the wait for an owed reply bounded by
timeout_reply and not by timeout_idle, TLS policy refusals in plain words,
a log sink that blocks, and the max_connections warning rate-limited."""

import fcntl
import os
import re
import signal
import smtplib
import socket
import subprocess
import time

import pytest

from harness import service, wait_until
from clients import SmtpConn, s_client
from hostile import expect_line, read_until, send, sleep, stall

CRLF = b"\r\n"
F_SETPIPE_SZ = 1031


# --------------------------------------------------------------------------
# Building blocks

def cpu_seconds(pid):
    """utime + stime of a process, in seconds (/proc/PID/stat)."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def worker_pid(shim):
    """With workers = 1 the process may run its loop itself."""
    kids = [p for p in shim.pids() if p != shim.pid]
    assert len(kids) <= 1, kids
    return kids[0] if kids else shim.pid


def cpu_over(shim, seconds):
    """The worker's CPU time over the next `seconds` of wall time."""
    pid = worker_pid(shim)
    before = cpu_seconds(pid)
    time.sleep(seconds)
    return cpu_seconds(pid) - before


def one_service(make_shim, ports, pki, up_port, listen="plain", upstream="plain",
                global_extra=None, **extra):
    port = ports.get()
    extra.setdefault("timeout_idle", "30s")
    extra.setdefault("timeout_handshake", "10s")
    g = {"workers": 1, "helo_name": "shim.test", "log": "stderr", "log_level": "info"}
    g.update(global_extra or {})
    shim = make_shim({"global": g, "svc": service(port, up_port, listen, upstream, pki, **extra)})
    return shim, port


def greet_late(delay):
    """An upstream that accepts and says nothing for delay seconds."""
    return [sleep(delay), send(b"220 late.test ESMTP\r\n"), stall(30)]


def up_to_data(reply_to_data=True):
    """An upstream that answers up to DATA (354, or nothing at all)."""
    steps = [send(b"220 fake.test ESMTP\r\n"),
             expect_line(rb"^EHLO"), send(b"250-fake.test\r\n250 PIPELINING\r\n"),
             expect_line(rb"^MAIL"), send(b"250 2.1.0 Ok\r\n"),
             expect_line(rb"^RCPT"), send(b"250 2.1.5 Ok\r\n"),
             expect_line(rb"^DATA")]
    if reply_to_data:
        steps.append(send(b"354 go ahead\r\n"))
    return steps + [stall(30)]


HALF_DATA = (b"EHLO client.test\r\nMAIL FROM:<a@client.test>\r\nRCPT TO:<b@legacy.test>\r\n"
             b"DATA\r\nSubject: held\r\n")


def half_close_after(port, data, tls=False):
    c = SmtpConn(port, tls=tls)
    if data:
        c.send(data)
    c.shutdown_write()
    return c


# --------------------------------------------------------------------------
# 1. No busy loop with a half-closed client

@pytest.mark.slow
@pytest.mark.parametrize("upstream", ["late_greeting", "never_replies"])
def test_half_closed_client_waiting_on_upstream_costs_no_cpu(make_shim, fake_upstream, ports,
                                                             pki, upstream):
    script = greet_late(20) if upstream == "late_greeting" else up_to_data(reply_to_data=False)
    up = fake_upstream(script)
    shim, port = one_service(make_shim, ports, pki, up.port)
    c = half_close_after(port, HALF_DATA)
    up.wait_conns(1)
    time.sleep(0.5)
    used = cpu_over(shim, 5.0)
    assert used < 0.5, "worker used %.2fs of CPU in 5s with a half-closed client" % used
    # The session is still there, waiting, not closed early.
    assert shim.log_lines() == [], shim.log_lines()
    c.close()


@pytest.mark.slow
def test_half_closed_during_client_handshake_costs_no_cpu(make_shim, fake_upstream, ports, pki):
    up = fake_upstream(greet_late(20))
    shim, port = one_service(make_shim, ports, pki, up.port, listen="implicit")
    sock = socket.create_connection(("127.0.0.1", port))
    # Half a ClientHello record, then the end of the stream.
    sock.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
    sock.shutdown(socket.SHUT_WR)
    used = cpu_over(shim, 3.0)
    assert used < 0.5, "worker used %.2fs of CPU in 3s" % used
    d = shim.wait_log(timeout=10)[0]
    assert d["result"] == "error" and "client" in d["reason"], d["_line"]
    sock.close()


@pytest.mark.slow
@pytest.mark.parametrize("case", ["mid_command_line", "after_quit"])
def test_half_closed_client_in_command_phase(make_shim, fake_upstream, ports, pki, case):
    from hostile import serve_smtp
    up = fake_upstream([serve_smtp(), stall(30)])
    shim, port = one_service(make_shim, ports, pki, up.port)
    data = (b"EHLO client.test\r\nMAIL FROM:<a@cl" if case == "mid_command_line"
            else b"EHLO client.test\r\nQUIT\r\n")
    c = half_close_after(port, data)
    used = cpu_over(shim, 3.0)
    assert used < 0.5, "worker used %.2fs of CPU in 3s" % used
    got, closed = c.read_until_closed(10)
    assert closed, got
    assert got.startswith(b"220 "), got
    if case == "after_quit":
        assert b"\r\n221 " in got, got
    d = shim.wait_log(timeout=10)[0]
    assert d["result"] == "ok", d["_line"]
    c.close()


# --------------------------------------------------------------------------
# 2. An owed reply waits timeout_reply, not timeout_idle

def slow_end_of_data(delay, reply=b"250 2.0.0 Ok: queued as SLOW\r\n"):
    return [send(b"220 fake.test ESMTP\r\n"),
            expect_line(rb"^EHLO"), send(b"250-fake.test\r\n250 8BITMIME\r\n"),
            expect_line(rb"^MAIL"), send(b"250 2.1.0 Ok\r\n"),
            expect_line(rb"^RCPT"), send(b"250 2.1.5 Ok\r\n"),
            expect_line(rb"^DATA"), send(b"354 go ahead\r\n"),
            read_until(rb"\r\n\.\r\n"), sleep(delay), send(reply),
            expect_line(rb"^QUIT", timeout=15), send(b"221 2.0.0 Bye\r\n")]


def send_one(port, reply_timeout=20):
    c = SmtpConn(port)
    assert c.reply()[0] == 220
    assert c.cmd("EHLO client.test")[0] == 250
    assert c.cmd("MAIL FROM:<a@client.test>")[0] == 250
    assert c.cmd("RCPT TO:<b@legacy.test>")[0] == 250
    assert c.cmd("DATA")[0] == 354
    c.send(b"Subject: slow\r\n\r\nbody\r\n.\r\n")
    t0 = time.monotonic()
    code, lines = c.reply(reply_timeout)
    return c, code, lines, time.monotonic() - t0


@pytest.mark.slow
def test_slow_end_of_data_reply_within_timeout_reply_reaches_client(make_shim, fake_upstream,
                                                                    ports, pki):
    up = fake_upstream(slow_end_of_data(4))
    shim, port = one_service(make_shim, ports, pki, up.port, timeout_idle="2s",
                             timeout_reply="6s")
    c, code, lines, waited = send_one(port)
    assert code == 250 and "SLOW" in lines[-1], lines
    assert waited > 3, waited
    assert c.cmd("QUIT")[0] == 221
    c.close()
    d = shim.wait_log(timeout=10)[0]
    assert d["result"] == "ok", d["_line"]
    assert len(up.conns) == 1


@pytest.mark.slow
def test_reply_later_than_timeout_reply_gets_421(make_shim, fake_upstream, ports, pki):
    up = fake_upstream(slow_end_of_data(9))
    shim, port = one_service(make_shim, ports, pki, up.port, timeout_idle="2s",
                             timeout_reply="4s")
    c, code, lines, waited = send_one(port)
    assert code == 421 and lines[-1].startswith("421 4.4.2"), lines
    assert 3 < waited < 8, waited
    _, closed = c.read_until_closed(5)
    assert closed
    d = shim.wait_log(timeout=10)[0]
    assert d["result"] == "error", d["_line"]
    assert re.search(r"reply timeout", d["reason"]), d["_line"]


@pytest.mark.slow
def test_idle_client_still_bound_by_timeout_idle(make_shim, fake_upstream, ports, pki):
    """No reply owed (the client is the one that stalls): timeout_idle."""
    from hostile import serve_smtp
    up = fake_upstream([serve_smtp(), stall(30)])
    shim, port = one_service(make_shim, ports, pki, up.port, timeout_idle="2s",
                             timeout_reply="30s")
    c = SmtpConn(port)
    assert c.reply()[0] == 220
    assert c.cmd("EHLO client.test")[0] == 250
    t0 = time.monotonic()
    _, closed = c.read_until_closed(10)
    assert closed and time.monotonic() - t0 < 6
    d = shim.wait_log(timeout=5)[0]
    assert re.search(r"idle", d["reason"]), d["_line"]


# --------------------------------------------------------------------------
# 5. Policy refusals say so

def refused(shim, words):
    d = shim.wait_log(timeout=10)[0]
    assert d["result"] == "refused", d["_line"]
    assert words in d["reason"], d["_line"]
    return d


@pytest.mark.parametrize("version,name", [("tls1_1", "TLSv1.1"), ("tls1", "TLSv1.0")])
def test_client_old_tls_version_is_refused_in_plain_words(make_shim, smtp_sink, ports, pki,
                                                          version, name):
    sink = smtp_sink()
    shim, port = one_service(make_shim, ports, pki, sink.port, listen="implicit")
    r = s_client(port, version=version, timeout=8)
    assert not r.handshake_ok, r
    refused(shim, "client offered at most %s; minimum is TLSv1.2" % name)


def test_client_without_allowed_cipher_is_refused(make_shim, smtp_sink, ports, pki):
    sink = smtp_sink()
    shim, port = one_service(make_shim, ports, pki, sink.port, listen="implicit")
    r = s_client(port, version="tls1_2", ciphers="AES128-SHA", timeout=8)
    assert not r.handshake_ok, r
    refused(shim, "client offered no cipher the policy allows")


def test_upstream_old_tls_version_is_refused_in_plain_words(make_shim, procs, ports, pki):
    up_port = ports.get()
    procs.start("s_server", ["openssl", "s_server", "-quiet", "-accept", str(up_port),
                             "-cert", pki.upstream, "-key", pki.upstream_key, "-tls1_1",
                             "-cipher", "DEFAULT@SECLEVEL=0"])
    wait_until(lambda: socket_open(up_port), 5, "s_server to listen")
    shim, port = one_service(make_shim, ports, pki, up_port, upstream="implicit")
    with SmtpConn(port) as c:
        data, closed = c.read_until_closed(10)
    assert data.startswith(b"421 4.7.0"), data
    # A modern server that stops at TLS 1.1 answers with an alert, never
    # with its version: the words say what the policy wanted.
    d = refused(shim, "upstream offers no TLS version the policy allows; minimum is TLSv1.2")
    assert d["upstream_auth"] == "none", d["_line"]


def old_server_hello(conn, server):
    """Answer a ClientHello as a server that knows no TLS above 1.1 and
    ignores supported_versions: a ServerHello of version TLS 1.1."""
    conn.settimeout(5)
    try:
        conn.recv(65536)
        body = b"\x03\x02" + b"\x11" * 32 + b"\x00" + b"\xc0\x13" + b"\x00"
        msg = b"\x02" + len(body).to_bytes(3, "big") + body
        conn.sendall(b"\x16\x03\x02" + len(msg).to_bytes(2, "big") + msg)
        conn.recv(65536)
    except OSError:
        pass


def test_upstream_answering_tls11_is_refused_with_its_version(make_shim, raw_server, ports, pki):
    up = raw_server(old_server_hello)
    shim, port = one_service(make_shim, ports, pki, up.port, upstream="implicit")
    with SmtpConn(port) as c:
        data, closed = c.read_until_closed(10)
    assert data.startswith(b"421 4.7.0"), data
    refused(shim, "upstream offers at most TLSv1.1; minimum is TLSv1.2")


def socket_open(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def test_reason_code_for_untrusted_upstream_certificate(make_shim, fake_upstream, ports, pki):
    """A certificate the CA check rejects: refused, with its TLS-RPT type."""
    from hostile import serve_smtp
    up = fake_upstream([serve_smtp()], tls="implicit")
    shim, port = one_service(make_shim, ports, pki, up.port, upstream="implicit",
                             upstream_ca=pki.server)   # not the CA that signed it
    with SmtpConn(port) as c:
        data, _ = c.read_until_closed(10)
    assert data.startswith(b"421 4.7.0"), data
    d = shim.wait_log(timeout=10)[0]
    assert d["result"] == "refused", d["_line"]
    assert d.get("reason_code") == "certificate-not-trusted", d["_line"]


def test_reason_code_for_missing_starttls(make_shim, fake_upstream, ports, pki):
    from hostile import serve_smtp
    up = fake_upstream([serve_smtp(offer_starttls=False)])
    shim, port = one_service(make_shim, ports, pki, up.port, upstream="starttls")
    with SmtpConn(port) as c:
        data, _ = c.read_until_closed(10)
    assert data.startswith(b"421 4.7.0"), data
    d = shim.wait_log(timeout=10)[0]
    assert d["result"] == "refused" and "STARTTLS" in d["reason"], d["_line"]
    assert d.get("reason_code") == "starttls-not-supported", d["_line"]


def test_state_changes_traced_at_debug(make_shim, smtp_sink, ports, pki):
    sink = smtp_sink()
    shim, port = one_service(make_shim, ports, pki, sink.port,
                             global_extra={"log_level": "debug"})
    with SmtpConn(port) as c:
        assert c.reply()[0] == 220
        assert c.cmd("QUIT")[0] == 221
    d = shim.wait_log(timeout=10)[0]
    text = shim.stderr_text()
    conn = d["conn"]
    for change in ("client proxy -> ready", "upstream none -> connecting",
                   "upstream connecting -> ready", "phase open -> relay"):
        assert re.search(r"conn=%s %s" % (conn, re.escape(change)), text), text[-3000:]


# --------------------------------------------------------------------------
# 6. A log sink that blocks; the max_connections warning

@pytest.mark.slow
def test_sessions_flow_while_stderr_is_a_pipe_nobody_reads(smtp_sink, ports, pki, workdir,
                                                           mailshim_path):
    sink = smtp_sink()
    port = ports.get()
    conf = workdir / "conf.d"
    conf.mkdir()
    (conf / "t.conf").write_text(
        "[global]\nworkers = 1\nhelo_name = shim.test\nlog = stderr\nlog_level = debug\n"
        "[svc]\nlisten = 127.0.0.1:%d\nupstream = 127.0.0.1:%d\n" % (port, sink.port))
    rfd, wfd = os.pipe()
    # The smallest pipe the kernel allows: full after a dozen sessions.
    fcntl.fcntl(wfd, F_SETPIPE_SZ, 4096)
    p = subprocess.Popen([mailshim_path, "-c", str(conf)], stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=wfd, start_new_session=True)
    os.close(wfd)
    try:
        wait_until(lambda: socket_open(port), 10, "mailshim to listen")
        done = 0
        t0 = time.monotonic()
        for i in range(200):
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
                s.sendmail("a@client.test", ["b@legacy.test"],
                           b"Subject: %d\r\n\r\nbody\r\n" % i)
            done += 1
        assert done == 200
        assert time.monotonic() - t0 < 120
        # Now read: the queue flushes and says how many lines it dropped.
        os.set_blocking(rfd, False)
        got = b""
        deadline = time.monotonic() + 10
        while (time.monotonic() < deadline and b"lines dropped" not in got
               and len(re.findall(rb"result=ok", got)) < 201):
            try:
                chunk = os.read(rfd, 65536)
            except BlockingIOError:
                time.sleep(0.05)
                continue
            if not chunk:
                break
            got += chunk
        # Every line came out once the pipe was read, or the loss is said.
        oks = len(re.findall(rb"result=ok", got))
        assert oks >= 200 or re.search(rb"log sink too slow: \d+ lines dropped", got), \
            (oks, got[-2000:])
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait(5)
        os.close(rfd)


@pytest.mark.slow
def test_max_connections_warning_is_rate_limited(make_shim, fake_upstream, ports, pki):
    up = fake_upstream([send(b"220 fake.test ESMTP\r\n"), stall(30)])
    shim, port = one_service(make_shim, ports, pki, up.port,
                             global_extra={"max_connections": 2})
    held = [SmtpConn(port), SmtpConn(port)]
    for c in held:
        assert c.reply()[0] == 220
    refused_n = 60
    for _ in range(refused_n):
        with SmtpConn(port) as c:
            code, _ = c.reply()
            assert code == 421
    time.sleep(1.5)
    text = shim.stderr_text()
    lines = [l for l in text.splitlines() if "max_connections (2) reached" in l]
    assert 1 <= len(lines) <= 4, lines
    counted = sum(int(m.group(1)) if m else 1 for m in
                  (re.search(r"(\d+) more clients refused", l) for l in lines))
    assert counted == refused_n, lines
    for c in held:
        c.close()


def test_log_syslog_sends_to_dev_log(make_shim, smtp_sink, ports, pki):
    """log = syslog: datagrams to /dev/log, facility mail. Runs only where
    no syslog daemon owns /dev/log (the test stands in for one)."""
    if os.path.exists("/dev/log"):
        pytest.skip("/dev/log belongs to a running syslog daemon")
    if os.geteuid() != 0:
        pytest.skip("binding /dev/log needs root")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind("/dev/log")
    except OSError as e:
        pytest.skip("cannot bind /dev/log: %s" % e)
    try:
        sink = smtp_sink()
        shim, port = one_service(make_shim, ports, pki, sink.port,
                                 global_extra={"log": "syslog"})
        with SmtpConn(port) as c:
            assert c.reply()[0] == 220
            assert c.cmd("QUIT")[0] == 221
        sock.settimeout(5)
        got = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not any(b"result=ok" in g for g in got):
            try:
                got.append(sock.recv(4096))
            except socket.timeout:
                break
        line = [g for g in got if b"result=ok" in g]
        assert line, got
        # <22> = facility mail (2) * 8 + info (6).
        assert re.match(rb"<22>\w{3} [ \d]\d \d\d:\d\d:\d\d mailshim\[\d+\]: conn=", line[0]), line
        assert "result=ok" not in shim.stderr_text()
    finally:
        sock.close()
        os.unlink("/dev/log")
