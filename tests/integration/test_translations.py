"""The nine translations (listen plain|starttls|implicit x upstream
plain|starttls|implicit) carry real mail between real clients (swaks,
openssl s_client, Python's smtplib and a hand-driven socket) and real
servers (smtp-sink, aiosmtpd, a private Postfix), byte for byte, and each
session leaves one log line saying which TLS each hop had."""

import re
import time

import pytest

from harness import service
from clients import (SmtpConn, client_context, dot_stuff, expected_received, s_client,
                     smtp_send, swaks)
from messages import make_message, sha256

MODES = ("plain", "starttls", "implicit")
CELLS = [(l, u) for l in MODES for u in MODES]
CELL_IDS = ["%s-to-%s" % c for c in CELLS]

TLS_VERSION = re.compile(r"TLSv1\.[23]\Z")

# listen mode -> swaks' --tls / --tlsc
SWAKS_TLS = {"plain": None, "starttls": "starttls", "implicit": "implicit"}


# --------------------------------------------------------------------------
# Building blocks


def start_upstream(mode, smtp_sink, aiosmtpd):
    """smtp-sink for a plain upstream, aiosmtpd (STARTTLS required, or
    implicit TLS) for TLS upstreams; both keep each message's bytes."""
    if mode == "plain":
        return smtp_sink()
    return aiosmtpd(mode)


def start_shim(make_shim, ports, pki, listen, upstream, upstream_port, name="relay",
               **extra):
    port = ports.get()
    shim = make_shim({name: service(port, upstream_port, listen, upstream, pki, **extra)})
    return shim, port


def upgrade(conn, cafile, name="shim.test"):
    """STARTTLS on an SmtpConn whose EHLO was answered: the shim's own 220,
    then a verified handshake. Nothing may be left unread in between."""
    code, lines = conn.cmd("STARTTLS")
    assert lines == ["220 2.0.0 Ready to start TLS"], lines
    assert conn.buf == b"", conn.buf
    conn.sock = client_context(cafile).wrap_socket(conn.sock, server_hostname=name)
    assert conn.tls_version in ("TLSv1.2", "TLSv1.3")


def open_session(port, listen, pki, helo="client.test"):
    """An SmtpConn past greeting and EHLO (and STARTTLS plus a new EHLO on
    starttls listeners); returns (conn, last EHLO reply lines)."""
    c = SmtpConn(port, tls=(listen == "implicit"), cafile=pki.ca, timeout=30)
    try:
        code, lines = c.reply()
        assert code == 220, lines
        code, lines = c.cmd("EHLO " + helo)
        assert code == 250, lines
        if listen == "starttls":
            upgrade(c, pki.ca)
            code, lines = c.cmd("EHLO " + helo)
            assert code == 250, lines
    except BaseException:
        c.close()
        raise
    return c, lines


def conn_data(conn, stuffed_body_and_dot):
    """MAIL, RCPT, DATA, then the already dot-stuffed bytes ending in the
    end-of-data line; returns the reply to the end of data."""
    assert conn.cmd("MAIL FROM:<sender@client.test>")[0] == 250
    assert conn.cmd("RCPT TO:<rcpt@legacy.test>")[0] == 250
    code, lines = conn.cmd("DATA")
    assert code == 354, lines
    conn.send(stuffed_body_and_dot)
    return conn.reply(30)


def send_swaks(port, listen, msg, pki, workdir):
    r = swaks(port, tls=SWAKS_TLS[listen], data=msg, workdir=workdir, ca=pki.ca, timeout=30)
    assert r.rc == 0, r
    assert any(l.startswith("250 ") for l in r.replies()), r
    return r


def send_s_client(port, listen, msg, pki):
    """openssl s_client through a TLS listener (-starttls smtp on starttls
    listeners); returns the transcript after TLS."""
    script = ["EHLO client.test", "MAIL FROM:<sender@client.test>",
              "RCPT TO:<rcpt@legacy.test>", "DATA",
              dot_stuff(expected_received(msg)) + b".\r\n", "QUIT"]
    r = s_client(port, script, starttls=(listen == "starttls"), cafile=pki.ca,
                 servername="shim.test", delay=0.1, timeout=20, until=r"^221 ")
    assert r.handshake_ok and r.verification == "OK", r
    codes = [l[:4] for l in r.lines()]
    assert "354 " in codes, r
    after = codes[codes.index("354 ") + 1:]
    assert after and after[0] == "250 ", r
    assert "221 " in after, r
    return r


def send_conn(port, listen, msg, pki):
    with open_session(port, listen, pki)[0] as c:
        code, lines = conn_data(c, dot_stuff(expected_received(msg)) + b".\r\n")
        assert code == 250, lines
        assert c.cmd("QUIT")[0] == 221


def assert_delivered(up, test_id, msg):
    got = up.message(test_id)
    want = expected_received(msg)
    assert len(got) == len(want), (len(got), len(want))
    assert sha256(got) == sha256(want)


def assert_log(d, listen, upstream, auth="ca"):
    """One session's log line: result ok and the TLS of each hop."""
    assert d["result"] == "ok" and "reason" not in d, d["_line"]
    if listen == "plain":
        assert d["listen_tls"] == "none", d["_line"]
    else:
        assert TLS_VERSION.match(d["listen_tls"]), d["_line"]
    if upstream == "plain":
        assert (d["upstream_tls"], d["upstream_auth"]) == ("none", "none"), d["_line"]
    else:
        assert TLS_VERSION.match(d["upstream_tls"]), d["_line"]
        assert d["upstream_auth"] == auth, d["_line"]


def session_lines(shim, n, timeout=10):
    """Wait for n finished sessions; every one of them (not only the ok
    ones) is returned, so an extra failed session is seen."""
    shim.wait_log(None, timeout, count=n)
    time.sleep(0.2)
    return shim.log_lines()


# --------------------------------------------------------------------------
# The nine translations with every client


@pytest.mark.parametrize("listen,upstream", CELLS, ids=CELL_IDS)
def test_translation_carries_mail(make_shim, smtp_sink, aiosmtpd, ports, pki, workdir,
                                  listen, upstream):
    up = start_upstream(upstream, smtp_sink, aiosmtpd)
    shim, port = start_shim(make_shim, ports, pki, listen, upstream, up.port)
    seed = 100 + 10 * MODES.index(listen) + MODES.index(upstream)
    sent = []

    # swaks: lines reading STARTTLS, EHLO x, QUIT, '.', '..', '.x' ...
    tid, msg = make_message(6000, seed, "dots")
    body = msg.split(b"\r\n\r\n", 1)[1]
    for line in (b"STARTTLS\r\n", b"EHLO x\r\n", b"QUIT\r\n", b"\r\n.\r\n", b"\r\n..\r\n"):
        assert line in b"\r\n" + body, line
    send_swaks(port, listen, msg, pki, workdir)
    sent.append((tid, msg))

    # swaks: an empty body (headers only)
    tid, msg = make_message(0, seed, "text")
    send_swaks(port, listen, msg, pki, workdir)
    sent.append((tid, msg))

    # openssl s_client (TLS listeners) or a hand-driven socket: 8-bit bytes
    tid, msg = make_message(3000, seed, "8bit")
    assert any(b >= 0x80 for b in msg) and b"\0" in msg
    if listen == "plain":
        send_conn(port, listen, msg, pki)
    else:
        send_s_client(port, listen, msg, pki)
    sent.append((tid, msg))

    # smtplib (SMTP, SMTP + starttls(), SMTP_SSL): 1 MiB of everything,
    # long lines included
    tid, msg = make_message(1 << 20, seed, "mixed")
    code, text = smtp_send(port, msg, listen, cafile=pki.ca)
    assert code == 250, text
    sent.append((tid, msg))

    for tid, msg in sent:
        assert_delivered(up, tid, msg)
    assert up.count() == len(sent)

    lines = session_lines(shim, len(sent))
    assert len(lines) == len(sent), [d["_line"] for d in lines]
    for d in lines:
        assert_log(d, listen, upstream)


# --------------------------------------------------------------------------
# Bytes nothing may normalise: bare LF and CR inside lines, an empty DATA

BARE = (b"one line\nwith a bare LF inside\r\n"
        b"two\n\nbare LFs\r\n"
        b"a bare CR\rinside\r\n"
        b"ends in a bare LF\n\r\n"
        b"\nstarts with a bare LF\r\n"
        b"mixed\r\n\n\r\n"
        b"last line\r\n")


@pytest.mark.parametrize("listen,upstream", CELLS, ids=CELL_IDS)
def test_bare_lf_and_empty_data_pass_unchanged(make_shim, aiosmtpd, ports, pki, listen,
                                               upstream):
    """aiosmtpd (plain, STARTTLS or implicit) stores exactly what came
    (smtp-sink would turn a bare LF into a line end)."""
    up = aiosmtpd(upstream)
    shim, port = start_shim(make_shim, ports, pki, listen, upstream, up.port)
    tid, head = make_message(0, 300 + len(listen), "text")
    msg = head + BARE
    assert b"\n." not in msg and b".\n" not in msg and b"\r." not in msg

    with open_session(port, listen, pki)[0] as c:
        code, lines = conn_data(c, msg + b".\r\n")
        assert code == 250, lines
        # A message of no bytes at all: DATA then at once the final dot.
        code, lines = conn_data(c, b".\r\n")
        assert code == 250, lines
        assert c.cmd("QUIT")[0] == 221

    got = up.message(tid)
    assert got == msg, (got[-200:], msg[-200:])
    empty = [i for i in up.ids() if i != tid]
    assert len(empty) == 1, up.ids()
    got_empty, meta = up.wait_message(empty[0])
    assert got_empty == b"", got_empty
    if upstream != "plain":
        assert meta["tls"] == "TLSv1.3", meta

    # smtplib too: bytes are sent as given (only leading dots stuffed).
    tid2, head2 = make_message(0, 310 + len(listen), "text")
    code, text = smtp_send(port, head2 + BARE, listen, cafile=pki.ca)
    assert code == 250, text
    assert up.message(tid2) == head2 + BARE

    lines = session_lines(shim, 2)
    assert len(lines) == 2, [d["_line"] for d in lines]
    for d in lines:
        assert_log(d, listen, upstream)


# --------------------------------------------------------------------------
# A real Postfix smtpd as the STARTTLS and the wrappermode upstream


def postfix_message(seed, kind, size):
    """A message Postfix relays without adding headers (it has Date and
    Message-ID) and without folding lines (none longer than 998)."""
    tid, msg = make_message(size, seed, kind)
    extra = (b"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
             b"Message-ID: <" + tid.encode() + b"@client.test>\r\n")
    return tid, extra + msg


RECEIVED = re.compile(rb"\AReceived: [^\r\n]*\r\n(?:[ \t][^\r\n]*\r\n)*")


def assert_through_postfix(pf, test_id, msg, transcript):
    qid = pf.queue_id(transcript)
    assert qid, transcript
    pf.wait_sent(qid)
    got = pf.sink.wait_message(test_id)
    m = RECEIVED.match(got)
    assert m, got[:300]
    received = m.group(0)
    # Postfix says TLS was used on its side: the shim's upstream hop.
    assert b" with ESMTPS id " + qid.encode() in received, received
    rest = got[m.end():]
    assert sha256(rest) == sha256(expected_received(msg)), (rest[:400], msg[:400])


@pytest.mark.postfix
def test_postfix_upstreams(make_shim, postfix, ports, pki, workdir):
    pf = postfix()
    # (listen, upstream mode, Postfix port, client)
    routes = {
        "sub587": ("starttls", "starttls", pf.smtp_port, "swaks"),
        "sub465": ("implicit", "implicit", pf.smtps_port, "swaks"),
        "plainsts": ("plain", "starttls", pf.smtp_port, "smtplib"),
        "plainimp": ("plain", "implicit", pf.smtps_port, "conn"),
        "implsts": ("implicit", "starttls", pf.smtp_port, "s_client"),
        "stsimp": ("starttls", "implicit", pf.smtps_port, "smtplib"),
    }
    lports = {name: ports.get() for name in routes}
    conf = {name: service(lports[name], upport, listen, upmode, pki)
            for name, (listen, upmode, upport, _) in routes.items()}
    shim = make_shim(conf)

    for i, (name, (listen, upmode, upport, client)) in enumerate(routes.items()):
        tid, msg = postfix_message(400 + i, ("dots", "8bit", "commands")[i % 3], 5000 + i)
        port = lports[name]
        if client == "swaks":
            transcript = send_swaks(port, listen, msg, pki, workdir).out
        elif client == "s_client":
            transcript = send_s_client(port, listen, msg, pki).out
        elif client == "smtplib":
            code, transcript = smtp_send(port, msg, listen, cafile=pki.ca)
            assert code == 250, transcript
        else:
            with open_session(port, listen, pki)[0] as c:
                code, lines = conn_data(c, dot_stuff(msg) + b".\r\n")
                assert code == 250, lines
                transcript = "\n".join(lines)
                assert c.cmd("QUIT")[0] == 221
        assert_through_postfix(pf, tid, msg, transcript)

        d = shim.wait_log(lambda d, n=name: d.get("service") == n)[0]
        assert_log(d, listen, upmode, "ca")
        assert d["upstream"] == "127.0.0.1:%d" % upport, d["_line"]

    assert len(shim.log_lines()) == len(routes), shim.log_lines()
    # Postfix's own log: every session reached it inside TLS.
    tls_lines = [l for l in pf.maillog().splitlines()
                 if "TLS connection established from" in l]
    assert len(tls_lines) >= len(routes), pf.maillog()[-3000:]
