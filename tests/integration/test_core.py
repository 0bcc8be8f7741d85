"""The core of mailshim against real peers: command line and configuration
check, plain and implicit TLS on both hops, TLS policy on both hops,
relay behaviour (back-pressure, half-close, failures, timeouts) and the
per-connection log line."""

import re
import select
import socket
import ssl
import subprocess
import time

import pytest

from harness import run_shim, service
from clients import (SmtpConn, client_context, dot_stuff, expected_received, s_client,
                     smtp_send, swaks)
from messages import make_message, sha256

LOG_KEYS = ("conn", "service", "client", "listen_tls", "listen_cipher", "upstream",
            "upstream_tls", "upstream_auth", "bytes_in", "bytes_out", "ms", "result")

# listen mode -> what a client does to reach it
CLIENT_TLS = {"plain": None, "implicit": "implicit", "starttls": "starttls"}


# --------------------------------------------------------------------------
# Building blocks


def start_upstream(mode, smtp_sink, aiosmtpd, cert=None, key=None):
    """A real upstream server for mode: smtp-sink for plain, aiosmtpd
    for implicit (--smtpscert) and starttls (--tlscert)."""
    if mode == "plain":
        return smtp_sink()
    return aiosmtpd(mode, cert=cert, key=key)


def relay(make_shim, ports, pki, listen, upstream_port, upstream="plain", name="relay",
          **extra):
    """Start a shim with one service; returns (shim, listen_port)."""
    port = ports.get()
    shim = make_shim({name: service(port, upstream_port, listen, upstream, pki, **extra)})
    return shim, port


def s_client_send(port, msg, pki, version=None):
    """Send msg through an implicit TLS listener with openssl s_client,
    as a scripted SMTP dialogue; returns the SClientResult."""
    script = ["EHLO client.test", "MAIL FROM:<sender@client.test>",
              "RCPT TO:<rcpt@legacy.test>", "DATA",
              dot_stuff(expected_received(msg)) + b".\r\n", "QUIT"]
    return s_client(port, script, cafile=pki.ca, servername="shim.test", version=version,
                    delay=0.15)


def conn_send(conn, msg):
    """Send msg over an SmtpConn whose greeting was read; returns the
    final reply."""
    assert conn.cmd("EHLO client.test")[0] == 250
    assert conn.cmd("MAIL FROM:<sender@client.test>")[0] == 250
    assert conn.cmd("RCPT TO:<rcpt@legacy.test>")[0] == 250
    assert conn.cmd("DATA")[0] == 354
    conn.send(dot_stuff(expected_received(msg)) + b".\r\n")
    return conn.reply(30)


def ok_lines(shim, n, timeout=10):
    return shim.wait_log(lambda d: d.get("result") == "ok", timeout, count=n)


def assert_delivered(up, test_id, msg):
    got = up.message(test_id)
    assert len(got) == len(expected_received(msg))
    assert sha256(got) == sha256(expected_received(msg))


PAIRS = [(l, u) for l in ("plain", "implicit") for u in ("plain", "implicit")]
PAIR_IDS = ["%s-to-%s" % p for p in PAIRS]


# --------------------------------------------------------------------------
# Command line and configuration


def test_version_mentions_boringssl(mailshim_path):
    r = run_shim(["-V"])
    assert r.returncode == 0, r
    assert re.search(r"\b\d+\.\d+(\.\d+)?\b", r.stdout), r.stdout
    assert "BoringSSL" in r.stdout, r.stdout


def test_links_boringssl_not_openssl3(mailshim_path):
    out = subprocess.run(["ldd", str(mailshim_path)], capture_output=True, text=True).stdout
    assert "libssl.so.0" in out, out
    assert not re.search(r"lib(ssl|crypto)\.so\.3", out), out


def write_conf(workdir, text, name="test.conf"):
    d = workdir / "conf.d"
    d.mkdir(exist_ok=True)
    (d / name).write_text(text)
    return d


def good_conf(pki):
    return ("[global]\nworkers = 1\nhelo_name = shim.test\n\n"
            "[submission]\nlisten = 127.0.0.1:20001\nlisten_tls = implicit\n"
            "listen_cert = %s\nlisten_key = %s\nupstream = 127.0.0.1:20002\n"
            "upstream_tls = implicit\nupstream_ca = %s\nupstream_name = legacy.test\n"
            "timeout_idle = 2s\n\n"
            "[mx]\nlisten = 127.0.0.1:20003\nupstream = 127.0.0.1:20004\n"
            % (pki.server, pki.server_key, pki.ca))


def test_check_good_config(workdir, pki, mailshim_path):
    d = write_conf(workdir, good_conf(pki))
    r = run_shim(["-t", "-c", d])
    assert r.returncode == 0, r.stdout + r.stderr
    assert not re.search(r":\d+: ", r.stderr), r.stderr


BAD = {
    # name: (text with the bad line last, line number, words the message must hold)
    "unknown-key": ("[mx]\nlisten = 127.0.0.1:20003\nupstream = 127.0.0.1:20004\n"
                    "colour = blue\n", 4, "colour"),
    "bad-value": ("[mx]\nlisten = 127.0.0.1:20003\nupstream = 127.0.0.1:20004\n"
                  "listen_tls = sometimes\n", 4, "sometimes"),
    "bad-duration": ("[mx]\nlisten = 127.0.0.1:20003\nupstream = 127.0.0.1:20004\n"
                     "timeout_idle = soon\n", 4, "timeout_idle"),
    "missing-upstream": ("[global]\nworkers = 1\n\n[mx]\nlisten = 127.0.0.1:20003\n", 4,
                         "upstream"),
    "dane-on-an-address": ("[mx]\nlisten = 127.0.0.1:20003\nupstream = 127.0.0.1:20004\n"
                           "upstream_tls = starttls\nupstream_verify = dane\n", 5, "dane"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_check_bad_config(workdir, mailshim_path, case):
    text, line, word = BAD[case]
    d = write_conf(workdir, text)
    r = run_shim(["-t", "-c", d])
    assert r.returncode == 1, r.stdout + r.stderr
    m = re.search(r"(?m)^(\S*test\.conf):(\d+): (.*)$", r.stderr)
    assert m, r.stderr
    assert int(m.group(2)) == line, r.stderr
    assert word in m.group(3), r.stderr
    if case == "dane-on-an-address":
        assert "needs a host name" in m.group(3), r.stderr


def test_check_reports_every_error(workdir, mailshim_path, pki):
    text = ("[global]\nworkers = 1\nbogus_global = 1\n\n"      # line 3
            "[a]\nlisten = 127.0.0.1:20005\nupstream = 127.0.0.1:20006\n"
            "listen_tls = maybe\n"                                # line 8
            "upstream_verify = dane\n\n"                          # line 9
            "[b]\nlisten = 127.0.0.1:20007\n")                    # line 11: no upstream
    d = write_conf(workdir, text)
    r = run_shim(["-t", "-c", d])
    assert r.returncode == 1
    lines = {int(n) for n in re.findall(r"(?m)^\S*test\.conf:(\d+): ", r.stderr)}
    assert {3, 8, 9} <= lines, r.stderr
    assert "upstream" in r.stderr
    assert len(lines) >= 4, r.stderr


def test_check_errors_name_their_file(workdir, mailshim_path, pki):
    d = write_conf(workdir, good_conf(pki), "10-good.conf")
    (d / "20-bad.conf").write_text("[extra]\nlisten = 127.0.0.1:20009\nupstream = x:25\n"
                                   "timeout_connect = -1s\n")
    (d / "README").write_text("not a .conf file: never read [[[\n")
    r = run_shim(["-t", "-c", d])
    assert r.returncode == 1
    assert re.search(r"(?m)^\S*20-bad\.conf:4: ", r.stderr), r.stderr
    assert "10-good.conf" not in r.stderr and "README" not in r.stderr, r.stderr


# --------------------------------------------------------------------------
# The four plain/implicit translations, byte-exact


@pytest.mark.parametrize("listen,upstream", PAIRS, ids=PAIR_IDS)
def test_relay_pair_is_byte_exact(make_shim, smtp_sink, aiosmtpd, ports, pki, workdir,
                                  listen, upstream):
    up = start_upstream(upstream, smtp_sink, aiosmtpd)
    shim, port = relay(make_shim, ports, pki, listen, up.port, upstream)
    tls = CLIENT_TLS[listen]
    sent = []

    tid, msg = make_message(0, 1, "text")
    r = swaks(port, tls=tls, data=msg, workdir=workdir, ca=pki.ca)
    assert r.rc == 0, r
    sent.append((tid, msg))

    tid, msg = make_message(1024, 2, "8bit")
    r = swaks(port, tls=tls, data=msg, workdir=workdir, ca=pki.ca)
    assert r.rc == 0, r
    sent.append((tid, msg))

    tid, msg = make_message(1 << 20, 3, "mixed")
    code, text = smtp_send(port, msg, listen, cafile=pki.ca)
    assert code == 250, text
    sent.append((tid, msg))

    tid, msg = make_message(1024, 4, "dots")
    if listen == "implicit":
        r = s_client_send(port, msg, pki)
        assert r.handshake_ok and r.verification == "OK", r
        lines = r.lines()
        assert any(l.startswith("354") for l in lines), r
        after = lines[[l[:3] for l in lines].index("354") + 1:]
        assert after and after[0].startswith("250"), r
    else:
        with SmtpConn(port) as c:
            assert c.reply()[0] == 220
            assert conn_send(c, msg)[0] == 250
            c.cmd("QUIT")
    sent.append((tid, msg))

    for tid, msg in sent:
        assert_delivered(up, tid, msg)
    assert up.count() == len(sent)

    lines = ok_lines(shim, len(sent))
    assert len(shim.log_lines()) == len(sent), shim.log_lines()
    for d in lines:
        if listen == "plain":
            assert d["listen_tls"] == "none"
        else:
            assert d["listen_tls"] in ("TLSv1.2", "TLSv1.3")
        if upstream == "plain":
            assert (d["upstream_tls"], d["upstream_auth"]) == ("none", "none")
        else:
            assert d["upstream_tls"] == "TLSv1.3"   # aiosmtpd (OpenSSL 3) offers 1.3
            assert d["upstream_auth"] == "ca"


@pytest.mark.slow
@pytest.mark.parametrize("listen,upstream", [("plain", "plain"), ("implicit", "implicit")],
                         ids=["plain-to-plain", "implicit-to-implicit"])
def test_relay_20mib(make_shim, smtp_sink, aiosmtpd, ports, pki, workdir, listen, upstream):
    up = start_upstream(upstream, smtp_sink, aiosmtpd)
    shim, port = relay(make_shim, ports, pki, listen, up.port, upstream)
    tid, msg = make_message(20 << 20, 20, "mixed")
    t0 = time.monotonic()
    if listen == "plain":
        r = swaks(port, data=msg, workdir=workdir, timeout=60)
        assert r.rc == 0, r
    else:
        code, text = smtp_send(port, msg, listen, cafile=pki.ca)
        assert code == 250, text
    elapsed = time.monotonic() - t0
    assert_delivered(up, tid, msg)
    d = ok_lines(shim, 1)[0]
    assert int(d["bytes_in"]) >= len(msg), d
    assert elapsed < 45, "20 MiB took %.1fs" % elapsed


# --------------------------------------------------------------------------
# TLS policy on the listen hop


@pytest.fixture
def tls_listener(make_shim, smtp_sink, ports, pki):
    """start(**service keys) -> (shim, port, sink): an implicit TLS listener
    in front of smtp-sink."""
    def start(**extra):
        sink = smtp_sink()
        shim, port = relay(make_shim, ports, pki, "implicit", sink.port, **extra)
        return shim, port, sink
    return start


def probe(port, version=None, **kw):
    return s_client(port, ["QUIT"], version=version, delay=0.15, timeout=10, until=r"^221 ",
                    **kw)


@pytest.mark.parametrize("version", ["tls1", "tls1_1"])
def test_listener_refuses_old_tls(tls_listener, version):
    shim, port, sink = tls_listener()
    r = probe(port, version)
    assert not r.handshake_ok, r
    assert not any(l.startswith("220") for l in r.lines()), r
    assert sink.count() == 0
    # The log says what went wrong: a protocol version, not a certificate
    # (the listener asks for none).
    d = shim.wait_log()[0]
    assert d["result"] in ("error", "refused"), d
    assert d.get("reason") and "certificate" not in d["reason"], d["_line"]


@pytest.mark.parametrize("version,want", [("tls1_2", "TLSv1.2"), ("tls1_3", "TLSv1.3")])
def test_listener_accepts_modern_tls(tls_listener, pki, version, want):
    shim, port, sink = tls_listener()
    r = probe(port, version, cafile=pki.ca, servername="shim.test")
    assert r.protocol == want, r
    assert r.verification == "OK", r
    assert r.lines() and r.lines()[0].startswith("220"), r
    d = ok_lines(shim, 1)[0]
    assert d["listen_tls"] == want
    assert d["listen_cipher"] not in ("", "none")


def test_listen_min_version_tls13(tls_listener):
    shim, port, sink = tls_listener(listen_min_version="TLSv1.3")
    r = probe(port, "tls1_2")
    assert not r.handshake_ok, r
    r = probe(port, "tls1_3")
    assert r.protocol == "TLSv1.3", r
    assert r.lines()[0].startswith("220"), r


def test_global_tls_min_version(make_shim, smtp_sink, ports, pki):
    sink = smtp_sink()
    port = ports.get()
    make_shim({"global": {"workers": 1, "helo_name": "shim.test", "tls_min_version": "TLSv1.3"},
               "relay": service(port, sink.port, "implicit", pki=pki)})
    assert not probe(port, "tls1_2").handshake_ok
    assert probe(port, "tls1_3").protocol == "TLSv1.3"


def test_listen_ciphers_restrict_tls12(tls_listener):
    shim, port, sink = tls_listener(listen_ciphers="ECDHE-ECDSA-AES128-GCM-SHA256")
    r = probe(port, "tls1_2", ciphers="ECDHE-ECDSA-CHACHA20-POLY1305")
    assert not r.handshake_ok, r
    r = probe(port, "tls1_2", ciphers="ECDHE-ECDSA-AES256-GCM-SHA384")
    assert not r.handshake_ok, r
    r = probe(port, "tls1_2", ciphers="ECDHE-ECDSA-AES128-GCM-SHA256")
    assert r.protocol == "TLSv1.2" and r.cipher == "ECDHE-ECDSA-AES128-GCM-SHA256", r
    d = shim.wait_log(lambda d: d.get("result") == "ok")[0]
    assert "AES_128_GCM" in d["listen_cipher"] or "AES128-GCM" in d["listen_cipher"], d


# --------------------------------------------------------------------------
# TLS policy on the upstream hop (plain listener, aiosmtpd with implicit TLS)

UPSTREAM_CASES = {
    # id: (upstream certificate, service keys, expected upstream_auth or None: refused)
    "verify-ca": ("upstream", {"upstream_verify": "verify"}, "ca"),
    "verify-other-ca": ("otherca-upstream", {"upstream_verify": "verify"}, None),
    "verify-wrong-name": ("wrongname", {"upstream_verify": "verify"}, None),
    "encrypt-other-ca": ("otherca-upstream", {"upstream_verify": "encrypt"}, "encrypt"),
    "pin": ("upstream", {"upstream_pin": "PIN:upstream.pem"}, "pin"),
    "pin-encrypt-other-ca": ("otherca-upstream",
                             {"upstream_verify": "encrypt",
                              "upstream_pin": "PIN:otherca-upstream.pem"}, "pin"),
    "wrong-pin": ("upstream", {"upstream_pin": "PIN:otherca-upstream.pem"}, None),
    "pin-does-not-skip-ca": ("otherca-upstream",
                             {"upstream_verify": "verify",
                              "upstream_pin": "PIN:otherca-upstream.pem"}, None),
}


@pytest.mark.parametrize("case", list(UPSTREAM_CASES))
def test_upstream_verification(make_shim, aiosmtpd, ports, pki, case):
    certname, keys, auth = UPSTREAM_CASES[case]
    up = aiosmtpd("implicit", cert=pki.path(certname + ".pem"),
                  key=pki.path(certname + ".key"))
    keys = {k: (pki.spki_pin(v[4:]) if v.startswith("PIN:") else v) for k, v in keys.items()}
    shim, port = relay(make_shim, ports, pki, "plain", up.port, "implicit", **keys)
    tid, msg = make_message(2048, 30, "8bit")
    if auth:
        code, text = smtp_send(port, msg, "plain")
        assert code == 250, text
        assert_delivered(up, tid, msg)
        d = ok_lines(shim, 1)[0]
        assert d["upstream_auth"] == auth, d
        assert d["upstream_tls"] in ("TLSv1.2", "TLSv1.3"), d
        return
    with SmtpConn(port) as c:
        code, lines = c.reply()
        assert code == 421 and lines[0].startswith("421 4.7.0"), lines
        rest, closed = c.read_until_closed(5)
        assert closed, "connection still open after 421"
    d = shim.wait_log(lambda d: d.get("result") == "refused")[0]
    assert d.get("reason"), d
    # The hop was never authenticated, whatever step refused it.
    assert d["upstream_auth"] == "none", d
    # Nothing reached the upstream, in TLS or in plaintext.
    time.sleep(0.3)
    assert up.count() == 0


def test_upstream_refusal_never_falls_back_to_plaintext(make_shim, raw_server, ports, pki):
    """A TLS upstream that answers in plaintext (a downgrade): the shim
    must not talk SMTP in the clear with it."""
    seen = []

    def plaintext_server(conn, srv):
        conn.settimeout(5)
        conn.sendall(b"220 plain.test ESMTP\r\n")
        try:
            while True:
                data = conn.recv(4096)
                if not data:
                    return
                seen.append(data)
        except OSError:
            return

    up = raw_server(plaintext_server)
    shim, port = relay(make_shim, ports, pki, "plain", up.port, "implicit")
    with SmtpConn(port) as c:
        code, lines = c.reply()
        assert code == 421, lines
        c.read_until_closed(5)
    d = shim.wait_log(lambda d: d.get("result") in ("refused", "error"))[0]
    # No certificate was ever received: the reason must not blame one.
    assert d.get("reason") and "certificate verification" not in d["reason"], d["_line"]
    data = b"".join(seen)
    # What the shim sent is a TLS ClientHello (record type 0x16), no SMTP.
    assert data[:1] in (b"", b"\x16"), data[:80]
    assert b"EHLO" not in data and b"MAIL FROM" not in data


# --------------------------------------------------------------------------
# Relay behaviour


def smtp_until_data(conn, srv):
    """Upstream side: greet, accept EHLO/MAIL/RCPT, answer DATA with 354.
    Returns what it read."""
    conn.settimeout(10)
    conn.sendall(b"220 slow.test ESMTP\r\n")
    buf = b""
    while True:
        data = conn.recv(4096)
        if not data:
            return buf
        buf += data
        while b"\r\n" in buf:
            line, buf = buf.split(b"\r\n", 1)
            cmd = line.upper()
            if cmd.startswith(b"EHLO"):
                conn.sendall(b"250-slow.test\r\n250 8BITMIME\r\n")
            elif cmd.startswith((b"MAIL", b"RCPT")):
                conn.sendall(b"250 2.1.0 Ok\r\n")
            elif cmd == b"DATA":
                conn.sendall(b"354 go ahead\r\n")
                return buf


@pytest.mark.slow
def test_back_pressure_bounds_memory(make_shim, raw_server, ports, pki):
    """A client pushing up to 1 GiB into an upstream that stopped reading
    must stall, not make the shim buffer it."""
    def stall_after_data(conn, srv):
        smtp_until_data(conn, srv)
        srv.stopping.wait(60)   # never read again

    up = raw_server(stall_after_data, rcvbuf=8192)
    shim, port = relay(make_shim, ports, pki, "plain", up.port)
    line = b"x" * 98 + b"\r\n"
    chunk = line * 655  # about 64 KiB
    with SmtpConn(port) as c:
        assert c.reply()[0] == 220
        assert c.cmd("EHLO client.test")[0] == 250
        assert c.cmd("MAIL FROM:<a@client.test>")[0] == 250
        assert c.cmd("RCPT TO:<b@legacy.test>")[0] == 250
        assert c.cmd("DATA")[0] == 354
        time.sleep(0.3)
        base = peak = shim.rss_kb()
        sock = c.sock
        sock.setblocking(False)
        sent, t0 = 0, time.monotonic()
        last_progress = last_sample = t0
        while sent < (1 << 30):
            now = time.monotonic()
            if now - t0 > 20 or now - last_progress > 3:
                break
            _, w, _ = select.select([], [sock], [], 0.25)
            if w:
                try:
                    n = sock.send(chunk)
                except BlockingIOError:
                    n = 0
                if n:
                    sent += n
                    last_progress = time.monotonic()
            if now - last_sample > 0.25:
                last_sample = now
                peak = max(peak, shim.rss_kb())
                if peak - base > 64 * 1024:
                    break   # clearly unbounded; stop before hurting the machine
        peak = max(peak, shim.rss_kb())
        stalled = time.monotonic() - last_progress
    assert peak - base < 4096, "shim RSS grew by %d KiB after %d bytes pushed" % (
        peak - base, sent)
    assert sent < (1 << 30) and stalled > 2, "the client was never slowed (%d bytes)" % sent


def test_half_close_client_to_upstream(make_shim, raw_server, ports, pki):
    """The client's shutdown(SHUT_WR) reaches the upstream as EOF, and the
    upstream's reply sent after that EOF still reaches the client."""
    got = {}

    def read_to_eof_then_reply(conn, srv):
        conn.settimeout(10)
        conn.sendall(b"220 half.test ESMTP\r\n")
        data = b""
        while True:
            chunk = conn.recv(4096)
            if not chunk:
                break
            data += chunk
        got["data"] = data
        time.sleep(0.2)
        conn.sendall(b"250 2.0.0 late reply after your EOF\r\n")
        conn.close()

    up = raw_server(read_to_eof_then_reply)
    shim, port = relay(make_shim, ports, pki, "plain", up.port, timeout_idle="10s")
    with SmtpConn(port) as c:
        assert c.reply()[0] == 220
        c.send("NOOP\r\n")
        time.sleep(0.2)
        c.shutdown_write()
        data, closed = c.read_until_closed(8)
    assert got.get("data") == b"NOOP\r\n", got
    assert b"250 2.0.0 late reply after your EOF\r\n" in data, data
    assert closed


def test_half_close_upstream_to_client(make_shim, raw_server, ports, pki):
    """The upstream's shutdown(SHUT_WR) reaches the client as EOF, and what
    the client sends after it still reaches the upstream."""
    got = {}

    def close_write_then_read(conn, srv):
        conn.settimeout(10)
        conn.sendall(b"220 half.test ESMTP\r\n")
        time.sleep(0.3)
        conn.shutdown(socket.SHUT_WR)
        data = b""
        while True:
            chunk = conn.recv(4096)
            if not chunk:
                break
            data += chunk
        got["data"] = data

    up = raw_server(close_write_then_read)
    shim, port = relay(make_shim, ports, pki, "plain", up.port, timeout_idle="10s")
    with SmtpConn(port) as c:
        assert c.reply()[0] == 220
        rest, closed = c.read_until_closed(5)
        assert closed and rest == b"", rest
        c.send("QUIT\r\n")
        c.shutdown_write()
        deadline = time.monotonic() + 5
        while "data" not in got and time.monotonic() < deadline:
            time.sleep(0.05)
    assert got.get("data") == b"QUIT\r\n", got


@pytest.mark.parametrize("listen", ["plain", "implicit"])
def test_upstream_down_gives_421_441(make_shim, ports, pki, listen):
    dead = ports.get()   # nothing listens here
    shim, port = relay(make_shim, ports, pki, listen, dead, timeout_connect="3s")
    t0 = time.monotonic()
    with SmtpConn(port, tls=(listen == "implicit"), cafile=pki.ca) as c:
        if listen == "implicit":
            assert c.tls_version in ("TLSv1.2", "TLSv1.3")
        code, lines = c.reply(5)
        assert lines[0].startswith("421 4.4.1"), lines
        rest, closed = c.read_until_closed(5)
        assert closed, "connection left open after 421"
    assert time.monotonic() - t0 < 4
    d = shim.wait_log()[0]
    assert d["result"] in ("error", "refused"), d
    assert d.get("reason"), d


def silent(conn, srv):
    srv.stopping.wait(30)


@pytest.mark.slow
def test_silent_plain_upstream_times_out(make_shim, raw_server, ports, pki):
    up = raw_server(silent)
    # The greeting is a reply the upstream owes: timeout_reply bounds it.
    shim, port = relay(make_shim, ports, pki, "plain", up.port, timeout_idle="2s",
                       timeout_reply="2s")
    t0 = time.monotonic()
    with SmtpConn(port) as c:
        data, closed = c.read_until_closed(10)
    elapsed = time.monotonic() - t0
    assert closed and elapsed < 8, "still open after %.1fs" % elapsed
    assert data == b"" or data.startswith(b"421 "), data
    d = shim.wait_log()[0]
    assert d["result"] == "error", d


@pytest.mark.slow
def test_silent_tls_upstream_handshake_times_out(make_shim, raw_server, ports, pki):
    up = raw_server(silent)
    shim, port = relay(make_shim, ports, pki, "plain", up.port, "implicit",
                       timeout_handshake="2s", timeout_idle="30s")
    t0 = time.monotonic()
    with SmtpConn(port) as c:
        data, closed = c.read_until_closed(10)
    elapsed = time.monotonic() - t0
    assert closed and elapsed < 8, "still open after %.1fs" % elapsed
    assert data.startswith(b"421 4."), data
    d = shim.wait_log()[0]
    assert d["result"] in ("error", "refused"), d


@pytest.mark.slow
@pytest.mark.parametrize("listen", ["plain", "implicit"])
def test_connect_timeout_on_full_backlog(make_shim, ports, pki, listen):
    """An upstream whose accept queue is full drops SYNs, so connect()
    hangs: the shim must give up after timeout_connect. On an implicit
    listener the connect is looked at only once the client's handshake is
    done: it still times out when due, and the client is told."""
    port = ports.get()
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", port))
    lsock.listen(0)
    fillers = []
    try:
        for _ in range(8):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            fillers.append(s)
        probe_sock = socket.socket()
        probe_sock.settimeout(0.7)
        try:
            probe_sock.connect(("127.0.0.1", port))
            pytest.skip("this kernel completes connections past a full backlog")
        except socket.timeout:
            pass
        finally:
            probe_sock.close()
        shim, lport = relay(make_shim, ports, pki, listen, port, timeout_connect="1s")
        t0 = time.monotonic()
        with SmtpConn(lport, tls=(listen == "implicit"), cafile=pki.ca) as c:
            code, lines = c.reply(8)
            elapsed = time.monotonic() - t0
            assert lines[0].startswith("421 4.4."), lines
            assert c.read_until_closed(3)[1]
        assert 0.8 < elapsed < 4, elapsed
        d = shim.wait_log()[0]
        assert "timeout" in d.get("reason", ""), d
    finally:
        for s in fillers:
            s.close()
        lsock.close()


def tls_later(c, pki, wait):
    """Start TLS on a plain SmtpConn after wait seconds of silence."""
    time.sleep(wait)
    c.sock = client_context(pki.ca).wrap_socket(c.sock, server_hostname="shim.test")


def silent_client_closed(shim, port, least, most, nth):
    """A client that never starts its handshake is closed, without a byte,
    between least and most seconds; the nth log line says why."""
    t0 = time.monotonic()
    with SmtpConn(port) as c:
        data, closed = c.read_until_closed(most + 3)
    elapsed = time.monotonic() - t0
    assert closed and data == b"", data
    assert least < elapsed < most, elapsed
    d = shim.wait_log(count=nth)[nth - 1]
    assert d["result"] != "ok" and "handshake" in d.get("reason", ""), d


@pytest.mark.slow
def test_slow_client_handshake_outlasts_timeout_connect(make_shim, smtp_sink, ports, pki):
    """An implicit listener with a plain upstream looks at the upstream's
    connect only when the client's handshake is done, or when the timer
    comes. A client that starts TLS after timeout_connect but within
    timeout_handshake still gets its session, and one that never does is
    closed after timeout_handshake, counted as when the connect was
    watched."""
    sink = smtp_sink()
    shim, port = relay(make_shim, ports, pki, "implicit", sink.port,
                       timeout_connect="1s", timeout_handshake="3s")
    with SmtpConn(port) as c:
        tls_later(c, pki, 1.8)
        assert c.reply()[0] == 220
        assert c.cmd("QUIT")[0] == 221
        assert c.read_until_closed(5)[1]
    assert shim.wait_log()[0]["result"] == "ok"
    silent_client_closed(shim, port, 2.5, 5, 2)


def test_client_handshake_timeout_below_timeout_connect(make_shim, smtp_sink, ports, pki):
    """timeout_handshake shorter than timeout_connect: the client's
    handshake is still bounded by its own, shorter timeout."""
    sink = smtp_sink()
    shim, port = relay(make_shim, ports, pki, "implicit", sink.port,
                       timeout_connect="8s", timeout_handshake="1s")
    silent_client_closed(shim, port, 0.8, 3, 1)


@pytest.mark.slow
def test_upstream_down_while_client_is_slow(make_shim, ports, pki):
    """The connect fails while the client is still silent: the client
    gets 421 once its handshake is done, and every address is tried."""
    dead = ports.get()
    shim, port = relay(make_shim, ports, pki, "implicit", dead, timeout_connect="1s",
                       timeout_handshake="5s")
    with SmtpConn(port) as c:
        tls_later(c, pki, 1.5)
        code, lines = c.reply(5)
        assert lines[0].startswith("421 4.4.1"), lines
        assert c.read_until_closed(5)[1]
    d = shim.wait_log()[0]
    assert d["result"] in ("error", "refused") and d.get("reason"), d


def quit_then(answer):
    """An upstream that greets, answers EHLO and NOOP, answers QUIT with
    answer and stays: it keeps reading, and records what it read and
    whether it saw the shim's FIN."""
    got = {}

    def handler(conn, srv):
        conn.sendall(b"220 quit.test ESMTP\r\n")
        f = conn.makefile("rb")
        seen = b""
        while True:
            line = f.readline()
            seen += line
            if not line:
                got["fin"] = True
                break
            verb = line.strip().upper()
            if verb.startswith(b"EHLO"):
                conn.sendall(b"250-quit.test\r\n250 PIPELINING\r\n")
            elif verb == b"QUIT":
                conn.sendall(answer)
            else:
                conn.sendall(b"250 2.0.0 Ok\r\n")
        got["seen"] = seen
    return handler, got


@pytest.mark.parametrize("listen", ["plain", "implicit"])
def test_221_to_quit_ends_the_session(make_shim, raw_server, ports, pki, listen):
    """The upstream answers QUIT with 221 and closes next (RFC 5321): the
    shim ends the session there, whether or not the upstream's FIN comes.
    The client gets the 221 and then the end of the stream; the upstream
    gets the shim's FIN; the log says ok."""
    handler, got = quit_then(b"221 2.0.0 Bye\r\n")
    up = raw_server(handler)
    shim, port = relay(make_shim, ports, pki, listen, up.port, timeout_idle="30s")
    t0 = time.monotonic()
    with SmtpConn(port, tls=(listen == "implicit"), cafile=pki.ca) as c:
        assert c.reply()[0] == 220
        assert c.cmd("EHLO client.test")[0] == 250
        c.send("NOOP\r\nQUIT\r\n")
        assert c.reply()[0] == 250
        code, lines = c.reply()
        assert lines == ["221 2.0.0 Bye"], lines
        rest, closed = c.read_until_closed(5)
        assert closed and rest == b"", rest
    assert time.monotonic() - t0 < 5
    deadline = time.monotonic() + 5
    while "fin" not in got and time.monotonic() < deadline:
        time.sleep(0.05)
    assert got.get("fin"), "the upstream never saw the shim close"
    assert got["seen"].endswith(b"QUIT\r\n"), got
    d = shim.wait_log()[0]
    assert d["result"] == "ok" and "reason" not in d, d


@pytest.mark.parametrize("answer", [b"500 5.5.1 not now\r\n", b"250 2.0.0 stay\r\n",
                                    b"221-2.0.0 Bye\r\n"])
def test_quit_not_answered_221_ends_nothing(make_shim, raw_server, ports, pki, answer):
    """A reply to QUIT that is not a whole 221 ends nothing: the session
    goes on as the upstream has it (a 221 continuation line is half a
    reply, its end still to come)."""
    handler, got = quit_then(answer)
    up = raw_server(handler)
    shim, port = relay(make_shim, ports, pki, "plain", up.port, timeout_idle="30s",
                       timeout_reply="3s")
    with SmtpConn(port) as c:
        assert c.reply()[0] == 220
        c.send("QUIT\r\n")
        if answer.startswith(b"221-"):
            # half a reply: nothing reaches the client, and the session
            # waits for the rest within timeout_reply
            data, closed = c.read_until_closed(1)
            assert not closed and data == b"", data
            return
        code, lines = c.reply()
        assert lines[0] == answer.decode().strip(), lines
        assert c.cmd("NOOP")[0] == 250
        assert c.cmd("QUIT")[0] in (250, 500)


def test_sessions_do_not_leak_fds(make_shim, smtp_sink, ports, pki, workdir):
    sink = smtp_sink()
    shim, port = relay(make_shim, ports, pki, "implicit", sink.port)
    tid, msg = make_message(100, 40, "text")
    smtp_send(port, msg, "implicit", cafile=pki.ca)
    ok_lines(shim, 1)
    before = shim.fd_count()
    for i in range(20):
        tid, msg = make_message(100, 41 + i, "text")
        code, _ = smtp_send(port, msg, "implicit", cafile=pki.ca)
        assert code == 250
    ok_lines(shim, 21)
    # A refused TLS handshake and an abrupt close are sessions too.
    probe(port, "tls1_1")
    socket.create_connection(("127.0.0.1", port)).close()
    time.sleep(0.5)
    assert shim.fd_count() <= before, (before, shim.fd_count())


# --------------------------------------------------------------------------
# The log line


@pytest.mark.parametrize("listen,version", [("plain", None), ("implicit", "TLSv1.2"),
                                            ("implicit", "TLSv1.3")])
def test_log_line_contract(make_shim, smtp_sink, ports, pki, listen, version):
    sink = smtp_sink()
    shim, port = relay(make_shim, ports, pki, listen, sink.port, name="submission")
    tid, msg = make_message(4096, 50, "text")
    ctx = None
    if version:
        v = getattr(ssl.TLSVersion, version.replace("TLSv1.", "TLSv1_"))
        ctx = client_context(pki.ca, minimum=v, maximum=v)
    with SmtpConn(port, tls=(listen == "implicit"), context=ctx) as c:
        client = "%s:%d" % c.local
        assert c.reply()[0] == 220
        assert conn_send(c, msg)[0] == 250
        assert c.cmd("QUIT")[0] == 221
        c.read_until_closed(5)
    d = shim.wait_log()[0]
    time.sleep(0.3)
    lines = shim.log_lines()
    assert len(lines) == 1, lines
    for k in LOG_KEYS:
        assert k in d, "no %s= in %s" % (k, d["_line"])
    assert re.fullmatch(r"[0-9a-f]+", d["conn"]), d
    assert d["service"] == "submission"
    assert d["client"] == client
    assert d["upstream"] == "127.0.0.1:%d" % sink.port
    if listen == "plain":
        assert (d["listen_tls"], d["listen_cipher"]) == ("none", "none")
    else:
        assert d["listen_tls"] == version
        assert d["listen_cipher"].startswith("TLS_"), d
    assert (d["upstream_tls"], d["upstream_auth"]) == ("none", "none")
    assert int(d["bytes_in"]) >= len(msg), d
    assert int(d["bytes_out"]) > 0, d
    assert 0 <= int(d["ms"]) < 60000
    assert d["result"] == "ok" and "reason" not in d
    # The line reads as key=value from its start.
    assert d["_line"].split(" ")[0].startswith("conn=") or " conn=" in d["_line"]


def test_log_line_of_refusal_quotes_reason(make_shim, aiosmtpd, ports, pki):
    up = aiosmtpd("implicit", cert=pki.otherca_upstream, key=pki.otherca_upstream_key)
    shim, port = relay(make_shim, ports, pki, "plain", up.port, "implicit")
    with SmtpConn(port) as c:
        assert c.reply()[0] == 421
    d = shim.wait_log(lambda d: d.get("result") == "refused")[0]
    assert re.search(r' reason="[^"]+"', d["_line"]), d["_line"]
    assert " " in d["reason"] or len(d["reason"]) > 3
    for k in LOG_KEYS:
        assert k in d, d["_line"]

