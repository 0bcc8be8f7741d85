"""The STARTTLS rules the shim owns, on both hops: what the EHLO reply
offers before and after TLS, who may send mail without TLS, the shim
answering STARTTLS itself, command and response injection, upstreams that
do not offer, refuse or botch STARTTLS, one-write multi-line replies, and
pipelining across the shim. Scripted upstreams record every line they
receive, so each test can say what never reached them."""

import re
import socket
import ssl
import threading
import time

import pytest

from harness import service
from clients import SmtpConn, client_context, dot_stuff, expected_received, swaks
from messages import make_message, sha256

TLS_VERSION = re.compile(r"TLSv1\.[23]\Z")
HELO_NAME = "shim.test"     # the [global] helo_name make_shim writes


# --------------------------------------------------------------------------
# A scripted upstream that records everything


class FakeUpstream:
    """An SMTP server for raw_server that records every line it reads,
    with the phase it came in ('plain' or 'tls').

    ehlo: the lines of its EHLO reply after the name (STARTTLS among them
    or not); starttls: None (the verb is refused with 502), a reply line
    such as '454 4.7.0 TLS not available', '220' (then a TLS handshake with
    cert/key), or raw bytes written as they are (response injection; no
    handshake follows). slow_ehlo: seconds between the lines of the EHLO
    reply, each line its own write. greeting: bytes, or a list of pieces
    written 50 ms apart. slow_noop: seconds before answering NOOP.
    ehlo_error: a reply line given to EHLO instead of 250. keep_starttls:
    still list STARTTLS after TLS (as some broken servers do).
    starttls='silent' never answers STARTTLS. auth: its reply line to AUTH.
    Understands HELO, MAIL, RCPT (a
    recipient containing 'reject' gets 550), DATA, BDAT, AUTH, RSET,
    NOOP, VRFY, HELP (a multi-line 214 that mentions STARTTLS and AUTH)
    and QUIT; anything else gets 502."""

    def __init__(self, ehlo=("PIPELINING", "8BITMIME", "AUTH PLAIN LOGIN", "CHUNKING",
                             "AUTH=PLAIN LOGIN", "STARTTLS"),
                 starttls=None, cert=None, key=None, slow_ehlo=0.0,
                 greeting=b"220 fake.test ESMTP\r\n", slow_noop=0.0, ehlo_error=None,
                 keep_starttls=False, auth="235 2.7.0 Authentication successful"):
        self.ehlo = list(ehlo)
        self.auth = auth
        self.starttls = starttls
        self.cert = cert
        self.key = key
        self.slow_ehlo = slow_ehlo
        self.greeting = greeting if isinstance(greeting, list) else [greeting]
        self.slow_noop = slow_noop
        self.ehlo_error = ehlo_error
        self.keep_starttls = keep_starttls
        self.lines = []          # (phase, bytes) of every command line
        self.plain = bytearray()  # every byte read before TLS
        self.after_injection = bytearray()
        self.messages = []       # DATA bodies (dot-stuffed) and BDAT chunks
        self.tls_error = None
        self.tls_version = None
        self.done = threading.Event()
        self.mutex = threading.Lock()

    # what tests ask

    def commands(self, phase=None):
        with self.mutex:
            return [l for p, l in self.lines if phase is None or p == phase]

    def verbs(self, phase=None):
        return [l.split(b" ", 1)[0].upper() for l in self.commands(phase)]

    def wait_done(self, timeout=5.0):
        return self.done.wait(timeout)

    # the server

    def __call__(self, conn, srv):
        try:
            self._serve(conn)
        finally:
            self.done.set()
            try:
                conn.close()
            except OSError:
                pass

    def _serve(self, conn):
        conn.settimeout(10)
        for i, piece in enumerate(self.greeting):
            if i:
                time.sleep(0.05)
            conn.sendall(piece)
        phase = "plain"
        buf = b""

        def read_more():
            nonlocal buf
            try:
                data = conn.recv(65536)
            except (socket.timeout, OSError, ssl.SSLError):
                return False
            if not data:
                return False
            if phase == "plain":
                self.plain.extend(data)
            buf += data
            return True

        def read_line():
            nonlocal buf
            while b"\r\n" not in buf:
                if not read_more():
                    return None
            line, buf = buf.split(b"\r\n", 1)
            return line

        def read_exact(n):
            nonlocal buf
            while len(buf) < n:
                if not read_more():
                    return None
            data, buf = buf[:n], buf[n:]
            return data

        while True:
            line = read_line()
            if line is None:
                return
            with self.mutex:
                self.lines.append((phase, line))
            verb = line.split(b" ", 1)[0].upper()
            if verb == b"EHLO" and self.ehlo_error:
                conn.sendall(self.ehlo_error.encode() + b"\r\n")
            elif verb == b"EHLO":
                items = ["fake.test"] + [e for e in self.ehlo
                                         if not (phase == "tls" and e == "STARTTLS"
                                                 and not self.keep_starttls)]
                reply = ["250%s%s\r\n" % ("-" if i < len(items) - 1 else " ", e)
                         for i, e in enumerate(items)]
                if self.slow_ehlo:
                    for r in reply:
                        conn.sendall(r.encode())
                        time.sleep(self.slow_ehlo)
                else:
                    conn.sendall("".join(reply).encode())
            elif verb == b"HELO":
                conn.sendall(b"250 fake.test\r\n")
            elif verb == b"STARTTLS":
                if self.starttls is None or phase == "tls":
                    conn.sendall(b"502 5.5.1 not here\r\n")
                elif self.starttls == "silent":
                    while read_more():
                        pass
                    return
                elif isinstance(self.starttls, bytes):
                    # Response injection: then only record what comes.
                    conn.sendall(self.starttls)
                    while True:
                        try:
                            data = conn.recv(65536)
                        except (socket.timeout, OSError):
                            return
                        if not data:
                            return
                        self.after_injection.extend(data)
                elif self.starttls.startswith("220"):
                    if buf:
                        self.lines.append(("pipelined-after-starttls", buf))
                        return
                    conn.sendall(b"220 2.0.0 Ready to start TLS\r\n")
                    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                    ctx.load_cert_chain(self.cert, self.key)
                    try:
                        conn = ctx.wrap_socket(conn, server_side=True)
                    except (ssl.SSLError, OSError) as e:
                        self.tls_error = e
                        return
                    self.tls_version = conn.version()
                    phase = "tls"
                else:
                    conn.sendall(self.starttls.encode() + b"\r\n")
            elif verb in (b"MAIL", b"RSET", b"NOOP", b"VRFY"):
                if verb == b"NOOP" and self.slow_noop:
                    time.sleep(self.slow_noop)
                conn.sendall(b"250 2.0.0 Ok\r\n")
            elif verb == b"RCPT":
                if b"reject" in line:
                    conn.sendall(b"550 5.1.1 rejected here\r\n")
                else:
                    conn.sendall(b"250 2.1.5 Ok\r\n")
            elif verb == b"DATA":
                conn.sendall(b"354 go ahead\r\n")
                while True:
                    # The end of data is CRLF.CRLF, the first CRLF being
                    # the DATA line's own when the body is empty.
                    i = (b"\r\n" + buf).find(b"\r\n.\r\n")
                    if i >= 0:
                        break
                    if not read_more():
                        return
                body, buf = buf[:i], buf[i + 3:]
                self.messages.append(body)
                conn.sendall(b"250 2.0.0 Ok: queued\r\n")
            elif verb == b"BDAT":
                parts = line.split()
                chunk = read_exact(int(parts[1]))
                if chunk is None:
                    return
                self.messages.append(chunk)
                conn.sendall(b"250 2.0.0 Ok: %d octets\r\n" % len(chunk))
            elif verb == b"AUTH":
                conn.sendall(self.auth.encode() + b"\r\n")
            elif verb == b"HELP":
                conn.sendall(b"214-250-STARTTLS\r\n214-STARTTLS AUTH\r\n214 2.0.0 end\r\n")
            elif verb == b"QUIT":
                conn.sendall(b"221 2.0.0 Bye\r\n")
                return
            else:
                conn.sendall(b"502 5.5.2 unknown command\r\n")


# --------------------------------------------------------------------------
# Building blocks


def start_shim(make_shim, ports, pki, listen, upstream_port, upstream="plain", name="relay",
               **extra):
    port = ports.get()
    shim = make_shim({name: service(port, upstream_port, listen, upstream, pki, **extra)})
    return shim, port


def fake(raw_server, **kw):
    f = FakeUpstream(**kw)
    srv = raw_server(f)
    return f, srv


def upgrade(conn, cafile, name="shim.test"):
    """STARTTLS on an SmtpConn: the shim's own 220, nothing after it, then
    a verified handshake."""
    code, lines = conn.cmd("STARTTLS")
    assert lines == ["220 2.0.0 Ready to start TLS"], lines
    assert conn.buf == b"", conn.buf
    conn.sock = client_context(cafile).wrap_socket(conn.sock, server_hostname=name)
    assert conn.tls_version in ("TLSv1.2", "TLSv1.3")


def ehlo_keywords(lines):
    """The keywords of a 250 EHLO reply, name line excluded, upper case;
    the reply must be well formed (250- on every line but the last)."""
    assert all(l.startswith("250-") for l in lines[:-1]), lines
    assert lines[-1].startswith("250 "), lines
    return [l[4:].split(" ", 1)[0].upper() for l in lines[1:]]


def is_closed(conn, timeout=5.0):
    data, closed = conn.read_until_closed(timeout)
    return closed, data


def log_of(shim, pred=None, timeout=5.0):
    return shim.wait_log(pred, timeout)[0]


# --------------------------------------------------------------------------
# Listen starttls: the EHLO reply, and the shim answering STARTTLS itself


def test_ehlo_offers_starttls_before_tls_only(make_shim, raw_server, ports, pki):
    up, srv = fake(raw_server)      # the upstream itself offers STARTTLS too
    shim, port = start_shim(make_shim, ports, pki, "starttls", srv.port)
    with SmtpConn(port) as c:
        assert c.reply()[0] == 220
        code, lines = c.cmd("EHLO client.test")
        assert code == 250, lines
        kw = ehlo_keywords(lines)
        assert kw.count("STARTTLS") == 1, lines
        assert "PIPELINING" in kw and "8BITMIME" in kw, lines
        upgrade(c, pki.ca)
        code, lines = c.cmd("EHLO client.test")
        assert code == 250, lines
        kw = ehlo_keywords(lines)
        assert "STARTTLS" not in kw, lines
        assert "PIPELINING" in kw, lines
        assert c.cmd("NOOP")[0] == 250
        assert c.cmd("QUIT")[0] == 221
    assert up.wait_done()
    # The shim answered STARTTLS: the upstream never saw the verb.
    assert b"STARTTLS" not in up.verbs(), up.commands()
    assert up.verbs() == [b"EHLO", b"EHLO", b"NOOP", b"QUIT"], up.commands()
    d = log_of(shim)
    assert d["result"] == "ok", d["_line"]
    assert TLS_VERSION.match(d["listen_tls"]), d["_line"]
    assert (d["upstream_tls"], d["upstream_auth"]) == ("none", "none"), d["_line"]


def test_starttls_with_real_clients_upstream_never_sees_it(make_shim, smtp_sink, ports, pki,
                                                           workdir):
    """swaks --tls through the shim to smtp-sink: smtp-sink's dump records
    its session (X-Helo-Args etc.); it must show the client's EHLO inside
    the relay and no sign of STARTTLS, and the message arrives intact."""
    sink = smtp_sink()
    shim, port = start_shim(make_shim, ports, pki, "starttls", sink.port)
    tid, msg = make_message(2000, 7, "commands")
    r = swaks(port, tls="starttls", data=msg, workdir=workdir, ca=pki.ca, timeout=20)
    assert r.rc == 0, r
    replies = r.replies()
    assert "220 2.0.0 Ready to start TLS" in replies, r
    got = sink.wait_message(tid)
    assert sha256(got) == sha256(expected_received(msg))
    d = log_of(shim)
    assert d["result"] == "ok" and TLS_VERSION.match(d["listen_tls"]), d["_line"]


def test_helo_client_works_with_starttls(make_shim, aiosmtpd, raw_server, ports, pki):
    """A client that says HELO (not EHLO) before and after STARTTLS."""
    up = aiosmtpd("plain")
    shim, port = start_shim(make_shim, ports, pki, "starttls", up.port)
    tid, msg = make_message(3000, 8, "dots")
    with SmtpConn(port) as c:
        assert c.reply()[0] == 220
        code, lines = c.cmd("HELO client.test")
        assert code == 250 and len(lines) == 1, lines
        upgrade(c, pki.ca)
        code, lines = c.cmd("HELO client.test")
        assert code == 250, lines
        assert c.cmd("MAIL FROM:<sender@client.test>")[0] == 250
        assert c.cmd("RCPT TO:<rcpt@legacy.test>")[0] == 250
        assert c.cmd("DATA")[0] == 354
        c.send(dot_stuff(msg) + b".\r\n")
        code, lines = c.reply(20)
        assert code == 250, lines
        assert c.cmd("QUIT")[0] == 221
    got, meta = up.wait_message(tid)
    assert got == msg
    assert meta["helo"] == "client.test", meta
    d = log_of(shim)
    assert d["result"] == "ok" and TLS_VERSION.match(d["listen_tls"]), d["_line"]

    # The same with a scripted upstream: what it saw is HELO, HELO, MAIL...
    fk, srv = fake(raw_server)
    shim2, port2 = start_shim(make_shim, ports, pki, "starttls", srv.port)
    with SmtpConn(port2) as c:
        assert c.reply()[0] == 220
        assert c.cmd("HELO client.test")[0] == 250
        upgrade(c, pki.ca)
        assert c.cmd("HELO client.test")[0] == 250
        assert c.cmd("MAIL FROM:<a@client.test>")[0] == 250
        assert c.cmd("QUIT")[0] == 221
    assert fk.wait_done()
    assert fk.verbs() == [b"HELO", b"HELO", b"MAIL", b"QUIT"], fk.commands()


# --------------------------------------------------------------------------
# listen_plain_from

# Commands a client outside listen_plain_from may not use before TLS.
GATED = ["MAIL FROM:<sender@client.test>", "RCPT TO:<rcpt@legacy.test>", "DATA",
         "AUTH PLAIN AGZvbwBiYXI=", "AUTH LOGIN", "VRFY postmaster", "EXPN staff",
         "ETRN legacy.test", "HELP", "XCLIENT ADDR=192.0.2.1", "FOO bar",
         "mail from:<sender@client.test>", "Rcpt To:<rcpt@legacy.test>", "data",
         "auth plain AGZvbwBiYXI="]


@pytest.mark.parametrize("plain_from", [None, "10.0.0.0/8 ::1", "128.0.0.0/1", "127.0.0.2/31",
                                        "127.0.1.0/24"],
                         ids=["default", "others", "128-slash-1", "127.0.0.2-slash-31",
                              "127.0.1.0-slash-24"])
def test_tls_required_before_mail_by_default(make_shim, raw_server, ports, pki, plain_from):
    """127.0.0.1 is outside listen_plain_from (by default nobody is in)."""
    up, srv = fake(raw_server)
    extra = {"listen_plain_from": plain_from} if plain_from else {}
    shim, port = start_shim(make_shim, ports, pki, "starttls", srv.port, **extra)
    with SmtpConn(port) as c:
        assert c.reply()[0] == 220
        code, lines = c.cmd("EHLO client.test")
        assert code == 250, lines
        kw = ehlo_keywords(lines)
        assert "AUTH" not in kw, lines
        assert not any("AUTH" in l.upper() for l in lines[1:]), lines
        assert "STARTTLS" in kw, lines
        for cmd in GATED:
            code, lines = c.cmd(cmd)
            assert lines == ["530 5.7.0 Must issue a STARTTLS command first"], (cmd, lines)
        # The harmless ones pass.
        assert c.cmd("NOOP")[0] == 250
        assert c.cmd("RSET")[0] == 250
        # The session is still usable: TLS, then the same commands work
        # and AUTH is offered.
        upgrade(c, pki.ca)
        code, lines = c.cmd("EHLO client.test")
        assert code == 250 and "AUTH" in ehlo_keywords(lines), lines
        assert c.cmd("AUTH PLAIN AGZvbwBiYXI=")[0] == 235
        assert c.cmd("MAIL FROM:<sender@client.test>")[0] == 250
        assert c.cmd("RCPT TO:<rcpt@legacy.test>")[0] == 250
        assert c.cmd("QUIT")[0] == 221
    assert up.wait_done()
    # Before the client's TLS only EHLO, NOOP and RSET reached the upstream;
    # the rest came after the second EHLO.
    assert up.verbs() == [b"EHLO", b"NOOP", b"RSET", b"EHLO", b"AUTH", b"MAIL", b"RCPT",
                          b"QUIT"], up.commands()


@pytest.mark.parametrize("plain_from", ["127.0.0.0/8", "any", "10.0.0.0/8 127.0.0.1/32",
                                        "127.0.0.1", "0.0.0.0/1", "127.0.0.0/31",
                                        "::1 127.0.0.1/32"])
def test_listen_plain_from_allows_plaintext(make_shim, raw_server, ports, pki, plain_from):
    up, srv = fake(raw_server)
    shim, port = start_shim(make_shim, ports, pki, "starttls", srv.port,
                            listen_plain_from=plain_from)
    with SmtpConn(port) as c:
        assert c.reply()[0] == 220
        code, lines = c.cmd("EHLO client.test")
        kw = ehlo_keywords(lines)
        assert code == 250 and "AUTH" in kw and "STARTTLS" in kw, lines
        assert c.cmd("AUTH PLAIN AGZvbwBiYXI=")[0] == 235
        assert c.cmd("MAIL FROM:<sender@client.test>")[0] == 250
        assert c.cmd("RCPT TO:<rcpt@legacy.test>")[0] == 250
        assert c.cmd("DATA")[0] == 354
        c.send(b"Subject: plain\r\n\r\nhello\r\n.\r\n")
        assert c.reply()[0] == 250
        assert c.cmd("MAIL FROM:<sender@client.test>")[0] == 250
        assert c.cmd("RCPT TO:<rcpt@legacy.test>")[0] == 250
        c.send(b"BDAT 7 LAST\r\nchunk\r\n")
        code, lines = c.reply()
        assert code == 250 and "7 octets" in lines[0], lines
        assert c.cmd("VRFY postmaster")[0] == 250
        assert c.cmd("QUIT")[0] == 221
    assert up.wait_done()
    assert up.verbs() == [b"EHLO", b"AUTH", b"MAIL", b"RCPT", b"DATA", b"MAIL", b"RCPT",
                          b"BDAT", b"VRFY", b"QUIT"], up.commands()
    assert up.messages == [b"Subject: plain\r\n\r\nhello\r\n", b"chunk\r\n"], up.messages
    d = log_of(shim)
    assert d["result"] == "ok" and d["listen_tls"] == "none", d["_line"]



@pytest.mark.parametrize("auth", ["AUTH PLAIN AGZvbwBiYXI=", "auth login"])
def test_starttls_after_a_login_is_refused(make_shim, raw_server, ports, pki, auth):
    """The upstream never sees the shim's STARTTLS, so nothing would make it
    forget a login made before it (RFC 3207 4.2): whoever added the AUTH
    would choose the login of the TLS session. STARTTLS after a login the
    upstream took is refused and the session closed, logged; after a
    login it refused, STARTTLS goes on."""
    up, srv = fake(raw_server)
    shim, port = start_shim(make_shim, ports, pki, "starttls", srv.port,
                            listen_plain_from="127.0.0.0/8")
    with SmtpConn(port) as c:
        assert c.reply()[0] == 220
        assert c.cmd("EHLO client.test")[0] == 250
        code, lines = c.cmd(auth)
        assert code == 235, lines
        code, lines = c.cmd("STARTTLS")
        assert lines == ["554 5.5.1 STARTTLS must come before AUTH"], lines
        closed, data = is_closed(c)
        assert closed and data == b"", data
    d = log_of(shim)
    assert d["result"] != "ok" and "STARTTLS after AUTH" in d["_line"], d["_line"]
    assert up.wait_done()
    assert b"STARTTLS" not in up.verbs() and b"MAIL" not in up.verbs(), up.commands()


def test_starttls_after_a_refused_login_goes_on(make_shim, raw_server, ports, pki):
    up, srv = fake(raw_server, auth="535 5.7.8 Authentication failed")
    shim, port = start_shim(make_shim, ports, pki, "starttls", srv.port,
                            listen_plain_from="127.0.0.0/8")
    with SmtpConn(port) as c:
        assert c.reply()[0] == 220
        assert c.cmd("EHLO client.test")[0] == 250
        assert c.cmd("AUTH PLAIN AGZvbwBiYXI=")[0] == 535
        upgrade(c, pki.ca)
        assert c.cmd("EHLO client.test")[0] == 250
        assert c.cmd("QUIT")[0] == 221
    assert log_of(shim)["result"] == "ok"

# --------------------------------------------------------------------------
# Listen starttls: after STARTTLS


def test_mail_after_starttls_needs_new_ehlo(make_shim, raw_server, ports, pki):
    up, srv = fake(raw_server)
    shim, port = start_shim(make_shim, ports, pki, "starttls", srv.port)
    with SmtpConn(port) as c:
        assert c.reply()[0] == 220
        assert c.cmd("EHLO client.test")[0] == 250
        upgrade(c, pki.ca)
        code, lines = c.cmd("MAIL FROM:<sender@client.test>")
        assert code == 503 and lines[0].startswith("503 5.5.1"), lines
        code, lines = c.cmd("RCPT TO:<rcpt@legacy.test>")
        assert code == 503, lines
        assert c.cmd("EHLO client.test")[0] == 250
        assert c.cmd("MAIL FROM:<sender@client.test>")[0] == 250
        assert c.cmd("QUIT")[0] == 221
    assert up.wait_done()
    # Only the MAIL after the new EHLO reached the upstream.
    assert up.verbs() == [b"EHLO", b"EHLO", b"MAIL", b"QUIT"], up.commands()


def test_starttls_twice_gets_554(make_shim, raw_server, ports, pki):
    up, srv = fake(raw_server)
    shim, port = start_shim(make_shim, ports, pki, "starttls", srv.port)
    with SmtpConn(port) as c:
        assert c.reply()[0] == 220
        assert c.cmd("EHLO client.test")[0] == 250
        upgrade(c, pki.ca)
        assert c.cmd("EHLO client.test")[0] == 250
        code, lines = c.cmd("STARTTLS")
        assert code == 554 and lines[0].startswith("554 5.5.1"), lines
        # Still a working session inside the first TLS.
        assert c.cmd("NOOP")[0] == 250
        assert c.cmd("QUIT")[0] == 221
    assert up.wait_done()
    assert b"STARTTLS" not in up.verbs(), up.commands()


@pytest.mark.parametrize("listen,want", [("plain", "502"), ("implicit", "554")])
def test_starttls_where_it_cannot_be_honoured(make_shim, raw_server, ports, pki, listen, want):
    up, srv = fake(raw_server)    # offers STARTTLS in its EHLO reply
    shim, port = start_shim(make_shim, ports, pki, listen, srv.port)
    with SmtpConn(port, tls=(listen == "implicit"), cafile=pki.ca) as c:
        assert c.reply()[0] == 220
        code, lines = c.cmd("EHLO client.test")
        assert code == 250, lines
        kw = ehlo_keywords(lines)
        assert "STARTTLS" not in kw, lines          # stripped: the shim cannot honour it
        assert "PIPELINING" in kw and "AUTH" in kw, lines
        code, lines = c.cmd("STARTTLS")
        assert str(code) == want and lines[0].startswith(want + " 5."), lines
        assert c.cmd("NOOP")[0] == 250
        assert c.cmd("QUIT")[0] == 221
    assert up.wait_done()
    assert up.verbs() == [b"EHLO", b"NOOP", b"QUIT"], up.commands()


@pytest.mark.parametrize("after", [b"MAIL FROM:<evil@x>\r\n",
                                   b"MAIL FROM:<evil@x>\r\nRCPT TO:<victim@legacy.test>\r\n",
                                   b"M"], ids=["mail", "mail-rcpt", "one-byte"])
def test_command_injection_after_starttls_drops(make_shim, raw_server, ports, pki, after):
    """STARTTLS and more commands in one plaintext write (CVE-2011-0411
    family): the connection is dropped and nothing of it is acted on."""
    up, srv = fake(raw_server)
    shim, port = start_shim(make_shim, ports, pki, "starttls", srv.port,
                            listen_plain_from="any")
    with SmtpConn(port) as c:
        assert c.reply()[0] == 220
        assert c.cmd("EHLO client.test")[0] == 250
        c.send(b"STARTTLS\r\n" + after)
        t0 = time.monotonic()
        closed, data = is_closed(c, 5)
        assert closed, "connection still open %.1fs after the injection: %r" % (
            time.monotonic() - t0, data)
        # Whatever came back, it was not a reply to the injected MAIL.
        assert b"250" not in data, data
    assert up.wait_done()
    assert up.verbs() == [b"EHLO"] or up.verbs() == [b"EHLO", b"QUIT"], up.commands()
    assert b"evil" not in bytes(up.plain)
    d = log_of(shim)
    assert d["result"] == "refused", d["_line"]
    assert "injection" in d.get("reason", ""), d["_line"]


def test_injected_commands_never_acted_on_after_tls(make_shim, raw_server, ports, pki):
    """Should the shim answer 220 and wait for the handshake after an
    injection, a client that goes on with TLS must still never get its
    pipelined MAIL acted on."""
    up, srv = fake(raw_server)
    shim, port = start_shim(make_shim, ports, pki, "starttls", srv.port,
                            listen_plain_from="any")
    c = SmtpConn(port)
    try:
        assert c.reply()[0] == 220
        assert c.cmd("EHLO client.test")[0] == 250
        c.send(b"STARTTLS\r\nMAIL FROM:<evil@x>\r\n")
        try:
            code, lines = c.reply(3)
        except AssertionError:
            code = None      # dropped without a reply: fine
        if code == 220:
            try:
                c.sock = client_context(pki.ca).wrap_socket(c.sock,
                                                            server_hostname="shim.test")
                c.send("EHLO client.test\r\n")
                data, _ = c.read_until_closed(3)
                assert b"\r\n250 2.0.0 Ok" not in b"\r\n" + data, data
            except (ssl.SSLError, OSError):
                pass
    finally:
        c.close()
    up.wait_done()
    time.sleep(0.2)
    assert b"MAIL" not in up.verbs(), up.commands()


# --------------------------------------------------------------------------
# Multi-line replies: one write, read in one recv()


def one_recv(sock, wait=0.05, timeout=5.0):
    """Sleep a little, then a single recv()."""
    time.sleep(wait)
    sock.settimeout(timeout)
    return sock.recv(65536)


MULTI = re.compile(rb"\A(?:250-[^\r\n]*\r\n)+250 [^\r\n]*\r\n\Z")


@pytest.mark.parametrize("listen", ["starttls", "implicit", "plain"])
def test_rewritten_ehlo_reply_is_one_write(make_shim, raw_server, ports, pki, listen):
    """The upstream dribbles its EHLO reply a line at a time; what the shim
    writes (STARTTLS added or removed) still comes in one piece."""
    up, srv = fake(raw_server, slow_ehlo=0.03)
    shim, port = start_shim(make_shim, ports, pki, listen, srv.port)
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    if listen == "implicit":
        sock = client_context(pki.ca).wrap_socket(sock, server_hostname="shim.test")
    try:
        greeting = sock.recv(65536)
        assert greeting == b"220 fake.test ESMTP\r\n", greeting
        rounds = [("plain" if listen != "implicit" else "tls", 5)]
        if listen == "starttls":
            rounds.append(("tls", 3))
        for phase, times in rounds:
            if phase == "tls" and listen == "starttls":
                sock.sendall(b"STARTTLS\r\n")
                assert one_recv(sock) == b"220 2.0.0 Ready to start TLS\r\n"
                sock = client_context(pki.ca).wrap_socket(sock, server_hostname="shim.test")
            for i in range(times):
                sock.sendall(b"EHLO client%d.test\r\n" % i)
                data = one_recv(sock)
                assert MULTI.match(data), (phase, i, data)
                kws = [l[4:].split(b" ")[0] for l in data.split(b"\r\n")[1:-1]]
                assert b"PIPELINING" in kws and b"CHUNKING" in kws, data
                offered = b"STARTTLS" in kws
                assert offered == (listen == "starttls" and phase == "plain"), data
    finally:
        sock.close()


# --------------------------------------------------------------------------
# Upstream starttls


def client_sees_421(port, listen, pki):
    """Connect as a client and expect the 421 4.7.0 refusal, then EOF.
    On a starttls listener the client talks first as an early talker
    would, so a leak of client bytes to the upstream can show."""
    with SmtpConn(port, tls=(listen == "implicit"), cafile=pki.ca) as c:
        if listen == "starttls":
            try:
                c.send(b"EHLO early.client.test\r\n")
            except OSError:
                pass
        code, lines = c.reply(8)
        assert code == 421 and lines[0].startswith("421 4.7.0"), lines
        closed, rest = is_closed(c, 5)
        assert closed, "connection left open after 421"
        return lines


def assert_no_client_bytes_upstream(up):
    """Only the shim's own dialogue reached the upstream in plaintext."""
    assert up.wait_done(8)
    plain = up.commands("plain")
    assert plain[:1] == [b"EHLO " + HELO_NAME.encode()], plain
    for line in plain[1:]:
        assert line in (b"STARTTLS", b"QUIT"), plain
    raw = bytes(up.plain)
    for word in (b"client.test", b"MAIL", b"RCPT", b"DATA"):
        assert word not in raw, raw
    assert up.commands("tls") == [], up.commands()


def assert_refused(shim, *words):
    d = log_of(shim, lambda d: d.get("result") != "ok", 8)
    assert d["result"] == "refused", d["_line"]
    reason = d.get("reason", "").lower()
    for w in words:
        assert w.lower() in reason, d["_line"]
    assert d["upstream_auth"] == "none", d["_line"]
    return d


NO_STARTTLS = ("PIPELINING", "8BITMIME", "AUTH PLAIN LOGIN")


@pytest.mark.parametrize("listen", ["plain", "starttls", "implicit"])
def test_upstream_without_starttls_is_refused(make_shim, raw_server, ports, pki, listen):
    up, srv = fake(raw_server, ehlo=NO_STARTTLS)
    shim, port = start_shim(make_shim, ports, pki, listen, srv.port, "starttls")
    client_sees_421(port, listen, pki)
    assert_no_client_bytes_upstream(up)
    assert b"STARTTLS" not in up.commands()
    assert_refused(shim, "STARTTLS")


def test_upstream_refusing_starttls_is_refused(make_shim, raw_server, ports, pki):
    up, srv = fake(raw_server, starttls="454 4.7.0 TLS not available")
    shim, port = start_shim(make_shim, ports, pki, "plain", srv.port, "starttls")
    client_sees_421(port, "plain", pki)
    assert_no_client_bytes_upstream(up)
    assert up.commands()[:2] == [b"EHLO shim.test", b"STARTTLS"], up.commands()
    assert_refused(shim, "STARTTLS")


@pytest.mark.parametrize("listen", ["plain", "starttls"])
def test_upstream_response_injection_is_refused(make_shim, raw_server, ports, pki, listen):
    up, srv = fake(raw_server, starttls=b"220 go ahead\r\n250 injected\r\n")
    shim, port = start_shim(make_shim, ports, pki, listen, srv.port, "starttls")
    lines = client_sees_421(port, listen, pki)
    assert not any("injected" in l for l in lines), lines
    assert_no_client_bytes_upstream(up)
    after = bytes(up.after_injection)
    # No SMTP after the injected bytes; at most the start of a handshake.
    assert after == b"" or after[:1] == b"\x16", after[:100]
    assert b"EHLO" not in after and b"MAIL" not in after
    assert_refused(shim, "injection")


@pytest.mark.parametrize("certname", ["wrongname", "otherca-upstream"])
def test_upstream_bad_certificate_is_refused(make_shim, raw_server, ports, pki, certname):
    up, srv = fake(raw_server, starttls="220", cert=pki.path(certname + ".pem"),
                   key=pki.path(certname + ".key"))
    shim, port = start_shim(make_shim, ports, pki, "plain", srv.port, "starttls")
    client_sees_421(port, "plain", pki)
    assert_no_client_bytes_upstream(up)
    assert up.commands("plain") == [b"EHLO shim.test", b"STARTTLS"], up.commands()
    d = assert_refused(shim)
    assert d.get("reason"), d["_line"]


def test_upstream_starttls_dialogue(make_shim, raw_server, ports, pki):
    """The good case with the same scripted upstream: the shim's EHLO and
    STARTTLS in plaintext, everything of the client's inside TLS, and the
    client sees the upstream's own greeting."""
    up, srv = fake(raw_server, starttls="220", cert=pki.upstream, key=pki.upstream_key)
    shim, port = start_shim(make_shim, ports, pki, "plain", srv.port, "starttls")
    with SmtpConn(port) as c:
        code, lines = c.reply()
        assert lines == ["220 fake.test ESMTP"], lines
        code, lines = c.cmd("EHLO client.test")
        assert code == 250 and "STARTTLS" not in ehlo_keywords(lines), lines
        assert c.cmd("MAIL FROM:<sender@client.test>")[0] == 250
        assert c.cmd("QUIT")[0] == 221
    assert up.wait_done()
    assert up.commands("plain") == [b"EHLO shim.test", b"STARTTLS"], up.commands()
    assert up.commands("tls") == [b"EHLO client.test", b"MAIL FROM:<sender@client.test>",
                                  b"QUIT"], up.commands()
    assert up.tls_version in ("TLSv1.2", "TLSv1.3")
    d = log_of(shim)
    assert d["result"] == "ok" and d["upstream_tls"] == up.tls_version, d["_line"]
    assert d["upstream_auth"] == "ca", d["_line"]


def test_upstream_verify_encrypt_accepts_other_ca(make_shim, aiosmtpd, ports, pki, workdir):
    up = aiosmtpd("starttls", cert=pki.otherca_upstream, key=pki.otherca_upstream_key)
    shim, port = start_shim(make_shim, ports, pki, "starttls", up.port, "starttls",
                            upstream_verify="encrypt")
    tid, msg = make_message(4000, 9, "mixed")
    r = swaks(port, tls="starttls", data=msg, workdir=workdir, ca=pki.ca, timeout=20)
    assert r.rc == 0, r
    got, meta = up.wait_message(tid)
    assert sha256(got) == sha256(expected_received(msg))
    assert meta["tls"] == "TLSv1.3", meta
    d = log_of(shim)
    assert d["result"] == "ok", d["_line"]
    assert d["upstream_auth"] == "encrypt" and TLS_VERSION.match(d["upstream_tls"]), d["_line"]


def test_upstream_verify_refuses_other_ca_at_aiosmtpd(make_shim, aiosmtpd, ports, pki):
    """The same real server with the default upstream_verify = verify."""
    up = aiosmtpd("starttls", cert=pki.otherca_upstream, key=pki.otherca_upstream_key)
    shim, port = start_shim(make_shim, ports, pki, "plain", up.port, "starttls")
    client_sees_421(port, "plain", pki)
    assert_refused(shim)
    time.sleep(0.2)
    assert up.count() == 0


# --------------------------------------------------------------------------
# Pipelining across the shim


def pipelined_session(c, pki, listen, advertised=True):
    """EHLO (after STARTTLS on starttls listeners), then MAIL, RCPT,
    RCPT (with an unknown parameter), DATA in one write; returns the four replies."""
    assert c.reply()[0] == 220
    code, lines = c.cmd("EHLO client.test")
    assert code == 250, lines
    if listen == "starttls":
        upgrade(c, pki.ca)
        code, lines = c.cmd("EHLO client.test")
    assert ("PIPELINING" in ehlo_keywords(lines)) == advertised, lines
    c.send(b"MAIL FROM:<sender@client.test>\r\n"
           b"RCPT TO:<rcpt@legacy.test>\r\n"
           b"RCPT TO:<other@legacy.test> FOO=bar\r\n"
           b"DATA\r\n")
    return [c.reply(10) for _ in range(4)]


@pytest.mark.parametrize("server", ["postfix", "aiosmtpd"])
def test_pipelining_replies_in_order(make_shim, postfix, aiosmtpd, ports, pki, server):
    """Postfix offers PIPELINING; aiosmtpd 1.4 does not advertise it but
    reads commands one after the other, so a pipelining client works."""
    if server == "postfix":
        pf = postfix()
        listen, upmode, upport = "starttls", "starttls", pf.smtp_port
    else:
        up = aiosmtpd("implicit")
        listen, upmode, upport = "implicit", "implicit", up.port
    shim, port = start_shim(make_shim, ports, pki, listen, upport, upmode)
    tid, msg = make_message(3000, 10, "dots")
    extra = b"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <%s@client.test>\r\n" % (
        tid.encode())
    msg = extra + msg
    with SmtpConn(port, tls=(listen == "implicit"), cafile=pki.ca) as c:
        replies = pipelined_session(c, pki, listen, advertised=(server == "postfix"))
        codes = [r[0] for r in replies]
        assert codes[0] == 250 and codes[1] == 250, replies
        assert 500 <= codes[2] < 600, replies
        assert codes[3] == 354, replies
        # The body, its end and QUIT in one write too.
        c.send(dot_stuff(msg) + b".\r\nQUIT\r\n")
        code, lines = c.reply(20)
        assert code == 250, lines
        code, lines = c.reply(5)
        assert code == 221, lines
    if server == "postfix":
        got = pf.sink.wait_message(tid, 15)
        assert got.endswith(msg), got[:400]
        env = pf.sink.find(tid)[0]
        rcpts = env["X-Rcpt-Args"]
        assert len(rcpts) == 1 and rcpts[0].split()[0] == "<rcpt@legacy.test>", env
    else:
        got, meta = up.wait_message(tid)
        assert got == msg
        assert meta["rcpt_tos"] == ["rcpt@legacy.test"], meta
    d = log_of(shim)
    assert d["result"] == "ok" and TLS_VERSION.match(d["upstream_tls"]), d["_line"]


@pytest.mark.parametrize("listen", ["plain", "starttls", "implicit"])
def test_pipelining_to_scripted_upstream(make_shim, raw_server, ports, pki, listen):
    """The whole transaction in two writes through each listener; the
    upstream saw the commands in the order sent and the replies come back
    in that order (the 550 for the second recipient in third place)."""
    up, srv = fake(raw_server)
    # (listen_plain_from exists only on starttls listeners)
    shim, port = start_shim(make_shim, ports, pki, listen, srv.port,
                            listen_plain_from="any" if listen == "starttls" else None)
    with SmtpConn(port, tls=(listen == "implicit"), cafile=pki.ca) as c:
        assert c.reply()[0] == 220
        code, lines = c.cmd("EHLO client.test")
        if listen == "starttls":
            upgrade(c, pki.ca)
            code, lines = c.cmd("EHLO client.test")
        assert "PIPELINING" in ehlo_keywords(lines), lines
        c.send(b"RSET\r\nMAIL FROM:<a@client.test>\r\nRCPT TO:<one@legacy.test>\r\n"
               b"RCPT TO:<reject@legacy.test>\r\nRCPT TO:<two@legacy.test>\r\nDATA\r\n")
        got = [c.reply(10) for _ in range(6)]
        assert [g[0] for g in got] == [250, 250, 250, 550, 250, 354], got
        c.send(b"Subject: x\r\n\r\n..dot\r\nQUIT\r\n.\r\nNOOP\r\nQUIT\r\n")
        got = [c.reply(10) for _ in range(3)]
        assert [g[0] for g in got] == [250, 250, 221], got
    assert up.wait_done()
    assert up.verbs() == [b"EHLO"] * (2 if listen == "starttls" else 1) + [
        b"RSET", b"MAIL", b"RCPT", b"RCPT", b"RCPT", b"DATA", b"NOOP", b"QUIT"], up.commands()
    assert up.messages == [b"Subject: x\r\n\r\n..dot\r\nQUIT\r\n"], up.messages


# --------------------------------------------------------------------------
# More of the same rules, at their edges


@pytest.mark.parametrize("verb", ["starttls", "StartTLS"])
def test_starttls_verb_any_case_answered_by_shim(make_shim, raw_server, ports, pki, verb):
    up, srv = fake(raw_server)
    shim, port = start_shim(make_shim, ports, pki, "starttls", srv.port)
    with SmtpConn(port) as c:
        assert c.reply()[0] == 220
        assert c.cmd("EHLO client.test")[0] == 250
        code, lines = c.cmd(verb)
        assert lines == ["220 2.0.0 Ready to start TLS"], lines
        c.sock = client_context(pki.ca).wrap_socket(c.sock, server_hostname="shim.test")
        assert c.cmd("EHLO client.test")[0] == 250
        assert c.cmd("QUIT")[0] == 221
    assert up.wait_done()
    assert up.verbs() == [b"EHLO", b"EHLO", b"QUIT"], up.commands()


def test_starttls_with_argument_is_a_syntax_error(make_shim, raw_server, ports, pki):
    up, srv = fake(raw_server)
    shim, port = start_shim(make_shim, ports, pki, "starttls", srv.port)
    with SmtpConn(port) as c:
        assert c.reply()[0] == 220
        assert c.cmd("EHLO client.test")[0] == 250
        code, lines = c.cmd("STARTTLS now")
        assert code == 501, lines
        # Still plaintext, still usable, and STARTTLS proper still works.
        upgrade(c, pki.ca)
        assert c.cmd("EHLO client.test")[0] == 250
        assert c.cmd("QUIT")[0] == 221
    assert up.wait_done()
    assert b"STARTTLS" not in up.verbs(), up.commands()


@pytest.mark.parametrize("keyword", ["STARTTLS", "starttls"])
@pytest.mark.parametrize("listen", ["plain", "implicit", "starttls"])
def test_ehlo_rewrite_with_starttls_as_last_line(make_shim, raw_server, ports, pki, listen,
                                                 keyword):
    """The upstream's reply is only its name and STARTTLS: removing that
    line leaves a well-formed one-line reply; adding one does not repeat
    it."""
    up, srv = fake(raw_server, ehlo=(keyword,))
    shim, port = start_shim(make_shim, ports, pki, listen, srv.port)
    with SmtpConn(port, tls=(listen == "implicit"), cafile=pki.ca) as c:
        assert c.reply()[0] == 220
        code, lines = c.cmd("EHLO client.test")
        if listen == "starttls":
            assert [k for k in ehlo_keywords(lines)] == ["STARTTLS"], lines
            upgrade(c, pki.ca)
            code, lines = c.cmd("EHLO client.test")
        assert lines == ["250 fake.test"], lines
        assert c.cmd("QUIT")[0] == 221


@pytest.mark.parametrize("ehlo", [("AUTH PLAIN",), ("AUTH=LOGIN", "AUTH LOGIN", "SIZE 100"),
                                  ("SIZE 100", "AUTH=LOGIN")],
                         ids=["only-auth", "auth-first", "auth-last"])
def test_auth_hidden_before_tls_wherever_it_stands(make_shim, raw_server, ports, pki, ehlo):
    up, srv = fake(raw_server, ehlo=ehlo)
    shim, port = start_shim(make_shim, ports, pki, "starttls", srv.port)
    with SmtpConn(port) as c:
        assert c.reply()[0] == 220
        code, lines = c.cmd("EHLO client.test")
        kws = ehlo_keywords(lines)
        assert not any(k.startswith("AUTH") for k in kws), lines
        assert "STARTTLS" in kws, lines
        assert ("SIZE" in kws) == ("SIZE 100" in ehlo), lines
        upgrade(c, pki.ca)
        code, lines = c.cmd("EHLO client.test")
        kws = ehlo_keywords(lines)
        assert [k for k in kws if k.startswith("AUTH")] == [
            e.split(" ")[0] for e in ehlo if e.startswith("AUTH")], lines
        assert c.cmd("QUIT")[0] == 221


def test_refused_bdat_chunk_is_not_read_as_commands(make_shim, raw_server, ports, pki):
    """BDAT refused with 530 before TLS: its chunk is still data, so the
    QUIT inside it must not be acted on."""
    up, srv = fake(raw_server)
    shim, port = start_shim(make_shim, ports, pki, "starttls", srv.port)
    chunk = b"NOOP\r\nQUIT\r\n"
    with SmtpConn(port) as c:
        assert c.reply()[0] == 220
        assert c.cmd("EHLO client.test")[0] == 250
        c.send(b"BDAT %d LAST\r\n" % len(chunk) + chunk)
        code, lines = c.reply()
        assert lines == ["530 5.7.0 Must issue a STARTTLS command first"], lines
        code, lines = c.cmd("RSET")
        assert lines == ["250 2.0.0 Ok"], lines
        assert c.cmd("QUIT")[0] == 221
    assert up.wait_done()
    assert up.verbs() == [b"EHLO", b"RSET", b"QUIT"], up.commands()


def test_starttls_waits_for_pipelined_replies(make_shim, raw_server, ports, pki):
    """NOOP then STARTTLS in one write (STARTTLS last, as RFC 3207 allows):
    the upstream's slow reply to NOOP comes first, then the shim's 220,
    and nothing plaintext follows the 220."""
    up, srv = fake(raw_server, slow_noop=0.3)
    shim, port = start_shim(make_shim, ports, pki, "starttls", srv.port)
    with SmtpConn(port) as c:
        assert c.reply()[0] == 220
        c.send(b"EHLO client.test\r\nNOOP\r\nSTARTTLS\r\n")
        code, lines = c.reply()
        assert code == 250 and "STARTTLS" in ehlo_keywords(lines), lines
        code, lines = c.reply()
        assert lines == ["250 2.0.0 Ok"], lines
        code, lines = c.reply()
        assert lines == ["220 2.0.0 Ready to start TLS"], lines
        time.sleep(0.2)
        assert c.buf == b""
        c.sock = client_context(pki.ca).wrap_socket(c.sock, server_hostname="shim.test")
        assert c.cmd("EHLO client.test")[0] == 250
        assert c.cmd("QUIT")[0] == 221
    assert up.wait_done()
    assert up.verbs() == [b"EHLO", b"NOOP", b"EHLO", b"QUIT"], up.commands()


def test_multiline_greeting_handed_over_whole(make_shim, raw_server, ports, pki):
    """Upstream starttls: the greeting the shim read before its own EHLO
    reaches the client unchanged and in one write, though the upstream
    wrote it in pieces."""
    pieces = [b"220-fake.test ESMTP\r\n", b"220-second line\r\n", b"220 third line\r\n"]
    up, srv = fake(raw_server, greeting=pieces, starttls="220", cert=pki.upstream,
                   key=pki.upstream_key)
    shim, port = start_shim(make_shim, ports, pki, "plain", srv.port, "starttls")
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        data = sock.recv(65536)
        assert data == b"".join(pieces), data
        sock.sendall(b"QUIT\r\n")
        assert one_recv(sock) == b"221 2.0.0 Bye\r\n"
    finally:
        sock.close()
    assert up.wait_done()
    assert up.commands("plain") == [b"EHLO shim.test", b"STARTTLS"], up.commands()
    assert up.commands("tls") == [b"QUIT"], up.commands()


@pytest.mark.parametrize("keywords,ok", [
    (("PIPELINING", "starttls"), True),
    (("PIPELINING", "X-STARTTLS"), False),
    (("STARTTLSX", "8BITMIME"), False),
], ids=["lower-case-offer", "x-starttls", "starttlsx"])
def test_upstream_starttls_keyword_matching(make_shim, raw_server, ports, pki, keywords, ok):
    up, srv = fake(raw_server, ehlo=keywords, starttls="220", cert=pki.upstream,
                   key=pki.upstream_key)
    shim, port = start_shim(make_shim, ports, pki, "plain", srv.port, "starttls")
    if not ok:
        client_sees_421(port, "plain", pki)
        assert_no_client_bytes_upstream(up)
        assert b"STARTTLS" not in up.commands()
        assert_refused(shim, "STARTTLS")
        return
    with SmtpConn(port) as c:
        assert c.reply()[0] == 220
        assert c.cmd("EHLO client.test")[0] == 250
        assert c.cmd("QUIT")[0] == 221
    assert up.wait_done()
    assert up.commands("tls") == [b"EHLO client.test", b"QUIT"], up.commands()
    assert log_of(shim)["upstream_auth"] == "ca"


def test_upstream_ehlo_refused_is_refused(make_shim, raw_server, ports, pki):
    up, srv = fake(raw_server, ehlo_error="502 5.5.2 EHLO not here")
    shim, port = start_shim(make_shim, ports, pki, "plain", srv.port, "starttls")
    client_sees_421(port, "plain", pki)
    assert_no_client_bytes_upstream(up)
    assert b"STARTTLS" not in up.commands()
    d = log_of(shim, lambda d: d.get("result") != "ok", 8)
    assert d["result"] == "refused", d["_line"]


def test_silent_upstream_starttls_times_out(make_shim, raw_server, ports, pki):
    """An upstream that never answers STARTTLS: timeout_handshake bounds the
    dialogue and the client gets a 421, not a hang."""
    up, srv = fake(raw_server, starttls="silent")
    shim, port = start_shim(make_shim, ports, pki, "plain", srv.port, "starttls",
                            timeout_handshake="1s", timeout_idle="30s")
    t0 = time.monotonic()
    with SmtpConn(port) as c:
        code, lines = c.reply(8)
        elapsed = time.monotonic() - t0
        assert code == 421 and lines[0].startswith("421 4."), lines
        assert is_closed(c, 5)[0]
    assert 0.8 < elapsed < 4, elapsed
    d = log_of(shim, lambda d: d.get("result") != "ok", 8)
    assert d["result"] in ("refused", "error") and d.get("reason"), d["_line"]
    assert up.commands()[:2] == [b"EHLO shim.test", b"STARTTLS"], up.commands()


@pytest.mark.parametrize("listen", ["plain", "implicit"])
def test_upstream_listing_starttls_inside_tls_is_stripped(make_shim, raw_server, ports, pki,
                                                          listen):
    """An upstream that still lists STARTTLS after TLS: a client of a plain
    or implicit listener must not be offered it."""
    up, srv = fake(raw_server, starttls="220", cert=pki.upstream, key=pki.upstream_key,
                   keep_starttls=True)
    shim, port = start_shim(make_shim, ports, pki, listen, srv.port, "starttls")
    with SmtpConn(port, tls=(listen == "implicit"), cafile=pki.ca) as c:
        assert c.reply()[0] == 220
        code, lines = c.cmd("EHLO client.test")
        assert code == 250 and "STARTTLS" not in ehlo_keywords(lines), lines
        assert "PIPELINING" in ehlo_keywords(lines), lines
        assert c.cmd("QUIT")[0] == 221
    assert up.wait_done()
    assert up.commands("tls") == [b"EHLO client.test", b"QUIT"], up.commands()


# --------------------------------------------------------------------------
# The shim's own replies keep their place among pipelined upstream replies


def replies(c, n, timeout=10):
    return [c.reply(timeout) for _ in range(n)]


def test_local_530_replies_wait_their_turn(make_shim, raw_server, ports, pki):
    """EHLO, MAIL, RCPT, NOOP in one write before TLS: the upstream's slow
    EHLO reply comes first, then the shim's two 530s, then NOOP's 250."""
    up, srv = fake(raw_server, slow_ehlo=0.05, slow_noop=0.2)
    shim, port = start_shim(make_shim, ports, pki, "starttls", srv.port)
    with SmtpConn(port) as c:
        assert c.reply()[0] == 220
        c.send(b"NOOP\r\nEHLO client.test\r\nMAIL FROM:<a@client.test>\r\n"
               b"RCPT TO:<b@legacy.test>\r\nNOOP\r\n")
        got = replies(c, 5)
        assert [g[0] for g in got] == [250, 250, 530, 530, 250], got
        assert got[0][1] == ["250 2.0.0 Ok"] and got[4][1] == ["250 2.0.0 Ok"], got
        kws = ehlo_keywords(got[1][1])
        assert "STARTTLS" in kws and "AUTH" not in kws, got
        assert c.cmd("QUIT")[0] == 221
    assert up.wait_done()
    assert up.verbs() == [b"NOOP", b"EHLO", b"NOOP", b"QUIT"], up.commands()


@pytest.mark.parametrize("listen,want", [("plain", 502), ("implicit", 554)])
def test_local_starttls_refusal_waits_its_turn(make_shim, raw_server, ports, pki, listen,
                                               want):
    up, srv = fake(raw_server, slow_noop=0.3)
    shim, port = start_shim(make_shim, ports, pki, listen, srv.port)
    with SmtpConn(port, tls=(listen == "implicit"), cafile=pki.ca) as c:
        assert c.reply()[0] == 220
        assert c.cmd("EHLO client.test")[0] == 250
        c.send(b"NOOP\r\nSTARTTLS\r\nNOOP\r\n")
        got = replies(c, 3)
        assert [g[0] for g in got] == [250, want, 250], got
        assert c.cmd("QUIT")[0] == 221
    assert up.wait_done()
    assert up.verbs() == [b"EHLO", b"NOOP", b"NOOP", b"QUIT"], up.commands()


def test_local_503_after_tls_waits_its_turn(make_shim, raw_server, ports, pki):
    up, srv = fake(raw_server, slow_noop=0.3)
    shim, port = start_shim(make_shim, ports, pki, "starttls", srv.port)
    with SmtpConn(port) as c:
        assert c.reply()[0] == 220
        assert c.cmd("EHLO client.test")[0] == 250
        upgrade(c, pki.ca)
        c.send(b"NOOP\r\nMAIL FROM:<a@client.test>\r\nEHLO client.test\r\n"
               b"MAIL FROM:<a@client.test>\r\n")
        got = replies(c, 4)
        assert [g[0] for g in got] == [250, 503, 250, 250], got
        assert "STARTTLS" not in ehlo_keywords(got[2][1]), got
        assert c.cmd("QUIT")[0] == 221
    assert up.wait_done()
    assert up.verbs() == [b"EHLO", b"NOOP", b"EHLO", b"MAIL", b"QUIT"], up.commands()


def test_pipelined_ehlo_rewrite_picks_the_ehlo_reply(make_shim, raw_server, ports, pki):
    """Only the reply to EHLO is rewritten, wherever EHLO stands in a
    pipelined group; a multi-line reply to another command is not touched."""
    up, srv = fake(raw_server, slow_noop=0.1)
    shim, port = start_shim(make_shim, ports, pki, "plain", srv.port)
    with SmtpConn(port) as c:
        assert c.reply()[0] == 220
        c.send(b"NOOP\r\nEHLO client.test\r\nNOOP\r\nHELP\r\nEHLO again.test\r\n")
        got = replies(c, 5)
        assert [g[0] for g in got] == [250, 250, 250, 214, 250], got
        assert got[3][1] == ["214-250-STARTTLS", "214-STARTTLS AUTH", "214 2.0.0 end"], got
        for ehlo in (got[1], got[4]):
            kws = ehlo_keywords(ehlo[1])
            assert "STARTTLS" not in kws and "PIPELINING" in kws, got
        assert c.cmd("QUIT")[0] == 221


# --------------------------------------------------------------------------
# After the shim's 220: a handshake, nothing else, within timeout_handshake


def test_plaintext_after_220_is_never_relayed(make_shim, raw_server, ports, pki):
    """A client that answers the 220 with plaintext commands instead of a
    ClientHello: the handshake fails, nothing reaches the upstream."""
    up, srv = fake(raw_server)
    shim, port = start_shim(make_shim, ports, pki, "starttls", srv.port,
                            listen_plain_from="any")
    with SmtpConn(port) as c:
        assert c.reply()[0] == 220
        assert c.cmd("EHLO client.test")[0] == 250
        assert c.cmd("STARTTLS")[1] == ["220 2.0.0 Ready to start TLS"]
        time.sleep(0.1)
        c.send(b"MAIL FROM:<evil@x>\r\nRCPT TO:<victim@legacy.test>\r\n")
        closed, data = is_closed(c, 5)
        assert closed, data
        assert b"250" not in data, data
    assert up.wait_done()
    assert up.verbs() in ([b"EHLO"], [b"EHLO", b"QUIT"]), up.commands()
    d = log_of(shim)
    assert d["result"] in ("error", "refused") and d.get("reason"), d["_line"]


def test_no_handshake_after_220_times_out(make_shim, raw_server, ports, pki):
    up, srv = fake(raw_server)
    shim, port = start_shim(make_shim, ports, pki, "starttls", srv.port,
                            timeout_handshake="1s", timeout_idle="30s")
    t0 = time.monotonic()
    with SmtpConn(port) as c:
        assert c.reply()[0] == 220
        assert c.cmd("EHLO client.test")[0] == 250
        assert c.cmd("STARTTLS")[0] == 220
        closed, data = is_closed(c, 8)
        elapsed = time.monotonic() - t0
    assert closed and 0.8 < elapsed < 4, (closed, elapsed, data)
    d = log_of(shim)
    assert d["result"] in ("error", "refused") and d.get("reason"), d["_line"]
    assert d["listen_tls"] == "none", d["_line"]
