"""upstream_xclient = yes: the upstream learns the real client with XCLIENT.

Against a private Postfix that trusts the shim's address for XCLIENT, in
each upstream mode (plain, STARTTLS, implicit TLS): Postfix's log and the
Received: header of the delivered message name the client as it connected
to the shim (IPv4 from 127.0.0.3, IPv6 from ::1, the address a PROXY
header gives), with its port and its HELO name byte for byte, however odd.

Against scripted upstreams: the exact bytes of the exchange (the shim's
EHLO, the XCLIENT line, then the client's EHLO, with what the client
pipelined held back until the 220), and the refusals: an upstream that
offers no XCLIENT, or one without HELO in its attributes, or that answers
XCLIENT with 550, never sees the client's commands, and the client gets
421 4.7.0 with result=refused in the log.
"""

import os
import re
import shutil
import socket
import time
import zlib

import pytest

from harness import Procs, public_dir, service
from peers import PrivatePostfix, header_value, postfix_main_add
from clients import SmtpConn
from hostile import expect_closed, expect_line, send, serve_smtp, sleep, stall

REFUSED_REPLY = "421 4.7.0"
XC_EHLO = "250-fake.test\r\n250-PIPELINING\r\n250 XCLIENT NAME ADDR PORT PROTO HELO LOGIN\r\n"


class BoundConn(SmtpConn):
    """SmtpConn from a chosen source address (127.0.0.3, ::1)."""

    def __init__(self, port, source, host="127.0.0.1", timeout=10.0):
        self.sock = socket.create_connection((host, port), timeout=timeout,
                                             source_address=(source, 0))
        self.local = self.sock.getsockname()
        self.buf = b""
        self.eof = False


# --------------------------------------------------------------------------
# A private Postfix


@pytest.fixture(scope="module")
def pf(ports, pki, tmp_path_factory):
    """One private Postfix for the module, trusting 127.0.0.1 (the shim)
    for XCLIENT, logging client ports, taking IPv6 client addresses, and
    relaying for the addresses the tests connect from."""
    if os.geteuid() != 0:
        pytest.skip("a private Postfix instance needs root")
    procs = Procs(tmp_path_factory.mktemp("postfix"))
    d = public_dir("mailshim-xclient-")
    p = PrivatePostfix(procs, ports, pki.upstream, pki.upstream_key, d)
    postfix_main_add(p, "smtpd_authorized_xclient_hosts = 127.0.0.1",
                     "smtpd_client_port_logging = yes",
                     "inet_protocols = all",
                     "mynetworks = 127.0.0.0/8 [::1]/128 192.0.2.0/24")
    try:
        p.start()
        yield p
    finally:
        p.stop()
        procs.cleanup()
        shutil.rmtree(d, ignore_errors=True)


UP_MODES = ["plain", "starttls", "implicit"]


def up_port(pf, mode):
    return pf.smtps_port if mode == "implicit" else pf.smtp_port


def start_shim(make_shim, ports, pki, upstream_port, mode="plain", listen="plain",
               host="127.0.0.1", **extra):
    port = ports.get()
    extra.setdefault("timeout_idle", "10s")
    s = service(port, upstream_port, listen, mode, pki, upstream_xclient="yes", **extra)
    s["listen"] = ("[%s]:%d" if ":" in host else "%s:%d") % (host, port)
    return make_shim({"xc": s}), port


def uid(request):
    return "x%08x" % zlib.crc32(request.node.nodeid.encode())


def send_message(c, test_id, helo, ehlo="EHLO"):
    """One message in lock step after the greeting; the queue id."""
    if isinstance(helo, str):
        helo = helo.encode()
    c.send(ehlo.encode() + b" " + helo + b"\r\n")
    code, lines = c.reply()
    assert code == 250, lines
    assert "XCLIENT" not in " ".join(lines).upper(), lines
    assert c.cmd("MAIL FROM:<sender@client.test>")[0] == 250
    assert c.cmd("RCPT TO:<bob@remote.test>")[0] == 250
    assert c.cmd("DATA")[0] == 354
    c.send(("Subject: %s\r\nX-Test-Id: %s\r\n\r\nhello\r\n.\r\n" % (test_id, test_id)).encode())
    code, lines = c.reply(15)
    assert code == 250, lines
    m = re.search(r"queued as ([0-9A-Za-z]+)", lines[-1])
    assert m, lines
    return m.group(1)


def delivered(pf, qid, test_id):
    """(Postfix's client= log line, first line of its Received: header)."""
    pf.wait_sent(qid)
    msg = pf.sink.wait_message(test_id)
    return pf.client_line(qid), header_value(msg, "Received")


# --------------------------------------------------------------------------
# Postfix believes the real client


# (shim host, client address, HELO name, what Postfix writes in Received)
CLIENTS = {
    "ipv4": ("127.0.0.1", "127.0.0.3", "odd+name=x", b"from odd+name=x (unknown [127.0.0.3])"),
    "ipv6": ("::1", "::1", "v6.client.test", b"from v6.client.test (unknown [IPv6:::1])"),
}


@pytest.mark.postfix
@pytest.mark.parametrize("family", sorted(CLIENTS))
@pytest.mark.parametrize("mode", UP_MODES)
def test_postfix_sees_the_client_and_its_helo(make_shim, ports, pki, pf, mode, family,
                                              request):
    host, addr, helo, expect = CLIENTS[family]
    shim, port = start_shim(make_shim, ports, pki, up_port(pf, mode), mode, host=host)
    tid = uid(request)
    with BoundConn(port, addr, host=host) as c:
        assert c.reply()[0] == 220
        qid = send_message(c, tid, helo)
        cport = c.local[1]
        c.cmd("QUIT")
    client, received = delivered(pf, qid, tid)
    assert client is not None and client.endswith("client=unknown[%s]:%d" % (addr, cport)), \
        client
    assert received == expect, received
    d = shim.wait_log()[0]
    assert d["result"] == "ok", d["_line"]


@pytest.mark.postfix
def test_helo_with_bytes_above_126_arrives_exactly(make_shim, ports, pki, pf, request):
    """UTF-8 in the HELO name (two bytes above 126, and '+' and '='), as
    HELO (PROTO=SMTP) this time."""
    shim, port = start_shim(make_shim, ports, pki, pf.smtp_port)
    tid = uid(request)
    helo = "h\u00e9+l=o.test".encode()
    with BoundConn(port, "127.0.0.4") as c:
        assert c.reply()[0] == 220
        qid = send_message(c, tid, helo, ehlo="HELO")
        c.cmd("QUIT")
    client, received = delivered(pf, qid, tid)
    assert "client=unknown[127.0.0.4]" in client, client
    assert received == b"from " + helo + b" (unknown [127.0.0.4])", received
    msg = pf.sink.wait_message(tid)
    assert b"with SMTP id" in msg, msg[:400]


@pytest.mark.postfix
def test_the_client_behind_a_proxy_header(make_shim, ports, pki, pf, request):
    shim, port = start_shim(make_shim, ports, pki, pf.smtp_port, proxy_protocol="yes",
                            proxy_from="127.0.0.1/32")
    tid = uid(request)
    with SmtpConn(port) as c:
        c.send(b"PROXY TCP4 192.0.2.5 127.0.0.1 5555 25\r\n")
        assert c.reply()[0] == 220
        qid = send_message(c, tid, "behind.lb.test")
        c.cmd("QUIT")
    client, received = delivered(pf, qid, tid)
    assert client.endswith("client=unknown[192.0.2.5]:5555"), client
    assert received == b"from behind.lb.test (unknown [192.0.2.5])", received


@pytest.mark.postfix
def test_ehlo_after_the_listen_hops_starttls(make_shim, ports, pki, pf, request):
    """XCLIENT is sent once; the EHLO inside the client's TLS names the
    client again, and Postfix takes the new name from it."""
    shim, port = start_shim(make_shim, ports, pki, pf.smtp_port, listen="starttls",
                            listen_plain_from="any")
    tid = uid(request)
    from clients import client_context
    with BoundConn(port, "127.0.0.5") as c:
        assert c.reply()[0] == 220
        code, lines = c.cmd("EHLO before.tls.test")
        assert code == 250 and "STARTTLS" in " ".join(lines), lines
        assert c.cmd("STARTTLS")[0] == 220
        c.sock = client_context(pki.ca).wrap_socket(c.sock, server_hostname="shim.test")
        qid = send_message(c, tid, "after.tls.test")
        c.cmd("QUIT")
    client, received = delivered(pf, qid, tid)
    assert "client=unknown[127.0.0.5]" in client, client
    assert received == b"from after.tls.test (unknown [127.0.0.5])", received


@pytest.mark.postfix
def test_pipelined_commands_wait_for_the_exchange(make_shim, ports, pki, pf, request):
    shim, port = start_shim(make_shim, ports, pki, pf.smtp_port)
    tid = uid(request)
    with BoundConn(port, "127.0.0.6") as c:
        assert c.reply()[0] == 220
        c.send(b"EHLO piped.test\r\nMAIL FROM:<sender@client.test>\r\n"
               b"RCPT TO:<bob@remote.test>\r\n")
        codes = [c.reply()[0] for _ in range(3)]
        assert codes == [250, 250, 250], codes
        assert c.cmd("DATA")[0] == 354
        c.send(("X-Test-Id: %s\r\n\r\nhi\r\n.\r\n" % tid).encode())
        code, lines = c.reply(15)
        assert code == 250, lines
        qid = re.search(r"queued as ([0-9A-Za-z]+)", lines[-1]).group(1)
        c.cmd("QUIT")
    client, received = delivered(pf, qid, tid)
    assert "client=unknown[127.0.0.6]" in client, client
    assert received == b"from piped.test (unknown [127.0.0.6])", received


# --------------------------------------------------------------------------
# Scripted upstreams: the bytes, and the refusals


def test_the_exchange_byte_for_byte(make_shim, ports, pki, fake_upstream):
    """The shim's EHLO, XCLIENT (xtext: '+' is +2B, '=' is +3D, the bytes of
    U+00E9 are +C3+A9), the 220, then the client's EHLO and what it
    pipelined, which waited."""
    up = fake_upstream([
        send("220 fake.test ESMTP\r\n"),
        expect_line(rb"^EHLO shim\.test\r\n$"),
        send(XC_EHLO),
        expect_line(rb"^XCLIENT ADDR=127\.0\.0\.3 PORT=\d+ PROTO=ESMTP NAME=\[UNAVAILABLE\] "
                    rb"HELO=a\+2Bb\+3Dc\+C3\+A9\r\n$"),
        send("220 fake.test ESMTP again\r\n"),
        serve_smtp(greet=False, ehlo=("PIPELINING", "XCLIENT ADDR PORT PROTO HELO")),
    ])
    shim, port = start_shim(make_shim, ports, pki, up.port)
    with BoundConn(port, "127.0.0.3") as c:
        assert c.reply()[0] == 220
        c.send("EHLO a+b=c\u00e9\r\nMAIL FROM:<a@client.test>\r\n".encode())
        code, lines = c.reply()
        assert code == 250 and lines == ["250-fake.test", "250 PIPELINING"], lines
        assert c.reply()[0] == 250
        port_seen = c.local[1]
        c.cmd("QUIT")
    data = up.all_bytes()
    assert re.match(rb"EHLO shim\.test\r\nXCLIENT ADDR=127\.0\.0\.3 PORT=%d [^\n]*\n"
                    rb"EHLO a\+b=c\xc3\xa9\r\nMAIL FROM:<a@client\.test>\r\nQUIT\r\n$"
                    % port_seen, data), data
    assert shim.wait_log()[0]["result"] == "ok"


def test_a_long_helo_is_sent_as_unavailable(make_shim, ports, pki, fake_upstream):
    """A HELO argument longer than 255 bytes does not go into XCLIENT (the
    line stays under 512 bytes); the client's EHLO gives it whole."""
    helo = "a" * 300
    up = fake_upstream([
        send("220 fake.test ESMTP\r\n"),
        expect_line(rb"^EHLO shim\.test\r\n$"),
        send(XC_EHLO),
        expect_line(rb"^XCLIENT ADDR=127\.0\.0\.1 PORT=\d+ PROTO=ESMTP NAME=\[UNAVAILABLE\] "
                    rb"HELO=\[UNAVAILABLE\]\r\n$"),
        send("220 fake.test ESMTP again\r\n"),
        serve_smtp(greet=False),
    ])
    shim, port = start_shim(make_shim, ports, pki, up.port)
    with SmtpConn(port) as c:
        assert c.reply()[0] == 220
        assert c.cmd("EHLO " + helo)[0] == 250
        c.cmd("QUIT")
    assert ("EHLO %s\r\n" % helo).encode() in up.all_bytes()
    up.check()


def refused_session(shim, port, up, why):
    with SmtpConn(port) as c:
        assert c.reply()[0] == 220
        c.send(b"EHLO client.test\r\nMAIL FROM:<a@client.test>\r\n")
        data, closed = c.read_until_closed(10)
    assert data.startswith(REFUSED_REPLY.encode()) and closed, data
    assert data.count(b"\r\n") == 1, data
    d = shim.wait_log()[0]
    assert d["result"] == "refused" and why in d["reason"], d["_line"]
    assert b"MAIL" not in up.all_bytes() and b"EHLO client" not in up.all_bytes(), \
        up.all_bytes()
    return d


def test_an_upstream_without_xclient_is_refused(make_shim, ports, pki, fake_upstream):
    up = fake_upstream([serve_smtp(ehlo=("PIPELINING", "8BITMIME"))])
    shim, port = start_shim(make_shim, ports, pki, up.port)
    refused_session(shim, port, up, "upstream offered no XCLIENT")


def test_an_xclient_without_helo_is_refused(make_shim, ports, pki, fake_upstream):
    up = fake_upstream([serve_smtp(ehlo=("XCLIENT NAME ADDR PORT PROTO",))])
    shim, port = start_shim(make_shim, ports, pki, up.port)
    refused_session(shim, port, up, "does not take ADDR, PORT, PROTO and HELO")


def test_an_upstream_refusing_xclient_is_refused(make_shim, ports, pki, fake_upstream):
    up = fake_upstream([
        send("220 fake.test ESMTP\r\n"),
        expect_line(rb"^EHLO shim\.test\r\n$"),
        send(XC_EHLO),
        expect_line(rb"^XCLIENT "),
        send("550 5.7.0 insufficient authorization\r\n"),
        expect_closed(),
    ])
    shim, port = start_shim(make_shim, ports, pki, up.port)
    refused_session(shim, port, up, "upstream refused XCLIENT")
    up.check()


def test_nothing_but_greeting_verbs_before_the_exchange(make_shim, ports, pki, fake_upstream):
    """A transaction before EHLO would run as the shim's: 503, never sent."""
    up = fake_upstream([serve_smtp(ehlo=("XCLIENT NAME ADDR PORT PROTO HELO",))])
    shim, port = start_shim(make_shim, ports, pki, up.port)
    with SmtpConn(port) as c:
        assert c.reply()[0] == 220
        code, lines = c.cmd("MAIL FROM:<a@client.test>")
        assert code == 503, lines
        assert c.cmd("NOOP")[0] == 250
        c.cmd("QUIT")
    time.sleep(0.2)
    assert b"MAIL" not in up.all_bytes(), up.all_bytes()
    assert b"NOOP" in up.all_bytes()


def test_an_upstream_silent_after_the_shims_ehlo_times_out(make_shim, ports, pki,
                                                            fake_upstream):
    """The replies of the exchange are owed like any other: timeout_reply."""
    up = fake_upstream([send("220 fake.test ESMTP\r\n"), expect_line(rb"^EHLO shim\.test"),
                        stall(15)])
    shim, port = start_shim(make_shim, ports, pki, up.port, timeout_reply="1s")
    with SmtpConn(port) as c:
        assert c.reply()[0] == 220
        c.send(b"EHLO client.test\r\n")
        data, closed = c.read_until_closed(10)
    assert data.startswith(b"421 4.4.2") and closed, data
    d = shim.wait_log()[0]
    assert d["result"] == "error" and "timeout_reply" in d["reason"], d["_line"]


def test_a_client_pipelining_a_buffer_behind_its_ehlo_is_refused(make_shim, ports, pki,
                                                                fake_upstream):
    """What waits behind the first EHLO must leave room for the shim's own
    lines: a client that fills the buffer meanwhile is refused, and none of
    its commands reach the upstream."""
    up = fake_upstream([send("220 fake.test ESMTP\r\n"), expect_line(rb"^EHLO shim\.test"),
                        sleep(1.0), send(XC_EHLO), stall(10)])
    shim, port = start_shim(make_shim, ports, pki, up.port)
    with SmtpConn(port) as c:
        assert c.reply()[0] == 220
        c.send(b"EHLO client.test\r\n" + b"NOOP\r\n" * 50000)   # 300 KB: past the 256 KiB buffer
        data, closed = c.read_until_closed(10)
    assert closed, data
    d = shim.wait_log()[0]
    assert d["result"] == "refused" and "pipelined" in d["reason"], d["_line"]
    assert b"NOOP" not in up.all_bytes() and b"XCLIENT" not in up.all_bytes(), up.all_bytes()
