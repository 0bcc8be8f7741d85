"""The outbound relay's MX hop when the MX misbehaves: it closes or
answers during the body, or refuses the transaction. The MX is a
scripted server (FakeMX) at mx.fake.test, in test_mx.py's scene: its
domain is signed and has no TLSA records, so the shim checks its
certificate against upstream_ca and the MX host name."""

import os
import select
import smtplib
import socket
import ssl
import threading
import time

import pytest

from harness import wait_until
from messages import make_message
import test_mx
from test_mx import Refuser, send

scene = test_mx.scene          # the fixture, shared with test_mx.py

FAKE = "127.0.0.23"


class FakeMX(Refuser):
    """An MX that offers STARTTLS and then follows a script: replies
    maps a verb (b"MAIL", b"RCPT", b"DATA", b"DOT") to its reply; body
    says what it does with a body: "reply" (read it to its end, answer
    replies[b"DOT"]; an empty reply closes the session without a
    word), "close-mid" (read one line, close), "early" (read
    one line, answer 250 at once), "close-end" (read it to its end, close
    without a word). sessions holds the commands of each session (after
    TLS), bodies the lines of each body; closed is set when a session
    ends. utf8 makes its EHLO reply offer SMTPUTF8."""

    def __init__(self, host, port, cert, body="reply", replies=None, utf8=False):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert[0], cert[1])
        self.body = body
        self.ehlo = b"250-fake\r\n%s250 8BITMIME\r\n" % (b"250-SMTPUTF8\r\n" if utf8 else b"")
        self.replies = {b"DATA": b"354 go ahead\r\n", b"DOT": b"250 2.0.0 queued\r\n"}
        self.replies.update(replies or {})
        self.sessions = []
        self.bodies = []
        self.closed = threading.Event()
        super().__init__(host, port)

    def serve(self, c):
        c.settimeout(5)
        try:
            self.dialogue(c)
        finally:
            self.closed.set()

    def dialogue(self, c):
        c.sendall(b"220 fake ESMTP\r\n")
        f = c.makefile("rb")
        f.readline()
        c.sendall(b"250-fake\r\n250-8BITMIME\r\n250 STARTTLS\r\n")
        if f.readline()[:8].upper() != b"STARTTLS":
            return
        c.sendall(b"220 go ahead\r\n")
        t = self.ctx.wrap_socket(c, server_side=True)
        f = t.makefile("rb")
        seen = []
        self.sessions.append(seen)
        for line in f:
            seen.append(line)
            verb = line[:4].upper()
            if verb == b"EHLO":
                t.sendall(self.ehlo)
            elif verb == b"QUIT":
                t.sendall(b"221 bye\r\n")
                break
            elif verb == b"DATA":
                t.sendall(self.replies[b"DATA"])
                if self.replies[b"DATA"].startswith(b"354") and not self.take_body(t, f):
                    break
            else:
                reply = self.replies.get(verb, b"250 ok\r\n")
                if not reply:
                    break
                t.sendall(reply)
        t.close()

    def take_body(self, t, f):
        """Read a body as the script says; False: the session is over."""
        body = []
        self.bodies.append(body)
        if self.body in ("close-mid", "early"):
            body.append(f.readline())
            if self.body == "close-mid":
                return False
            t.sendall(b"250 2.0.0 early\r\n")
        for line in f:
            body.append(line)
            if line == b".\r\n":
                break
        if self.body == "close-end":
            return False
        if self.body == "reply":
            t.sendall(self.replies[b"DOT"])
        return True


@pytest.fixture
def fake(scene):
    made = []

    def make(**kw):
        mx = FakeMX(FAKE, scene.port, scene.p.ta, **kw)
        made.append(mx)
        return mx
    yield make
    for mx in made:
        mx.close()


def silent(c, secs):
    """True when the shim says nothing to client c for secs."""
    r, _, _ = select.select([c.sock], [], [], secs)
    return not r


def fake_line(shim):
    return shim.wait_log(lambda d: d.get("service") == "relay" and
                         d.get("mx") == "mx.fake.test")[0]


def open_body(scene, test_id, port=None):
    c = smtplib.SMTP("127.0.0.1", port or scene.listen, local_hostname="client.test",
                     timeout=15)
    c.ehlo()
    assert c.mail("s@client.test")[0] == 250
    assert c.rcpt("r@fake.test")[0] == 250
    assert c.docmd("DATA")[0] == 354
    c.send(b"X-Test-Id: %s\r\n\r\nfirst line\r\n" % test_id.encode())
    return c


@pytest.mark.parametrize("body", ["close-mid", "early"])
def test_mx_lost_during_the_body_never_runs_it_as_commands(scene, fake, body):
    """The MX closes (or answers) in the middle of the body: the rest of
    the body is read and dropped up to its end, which gets a 451; no line
    of it is taken as a command, and the session goes on."""
    mx = fake(body=body)
    with open_body(scene, "mx-lost-" + body) as c:
        wait_until(mx.closed.is_set, 10, "the MX to end its session")
        time.sleep(0.3)
        c.send(b"RSET\r\nMAIL FROM:<forged@evil.example>\r\nRCPT TO:<victim@fake.test>\r\n"
               b"HELP\r\n")
        assert silent(c, 0.5), "a reply while the client is in its body"
        c.send(b"last line\r\n.\r\n")
        code, text = c.getreply()
        assert code == 451 and b"4.4.2" in text, (code, text)
        # The next reply is the NOOP's: nothing of the body was answered.
        assert c.noop()[0] == 250
        # The transaction ended with its end of data: a new one may start.
        assert c.mail("s2@client.test")[0] == 250
        c.rset()
    time.sleep(0.3)
    lines = [l for s in mx.sessions for l in s]
    assert not any(b"forged" in l or b"victim" in l for l in lines), mx.sessions
    assert len(mx.sessions) == 1, mx.sessions
    line = fake_line(scene.shim)
    assert line["result"] == "error" and line["rcpts"] == "1", line["_line"]


def test_mx_lost_after_the_body_before_its_reply(scene, fake):
    """The MX reads the whole body and closes without answering it: the
    end of data gets a 451, the transaction is over, the session goes on."""
    mx = fake(body="close-end")
    _, msg = make_message(500, test_id="mx-lost-end")
    with smtplib.SMTP("127.0.0.1", scene.listen, local_hostname="client.test",
                      timeout=15) as c:
        c.ehlo()
        c.mail("s@client.test")
        assert c.rcpt("r@fake.test")[0] == 250
        code, text = c.data(msg)
        assert code == 451 and b"4.4.2" in text, (code, text)
        assert c.noop()[0] == 250
        assert c.mail("s2@client.test")[0] == 250
        c.rset()
    assert len(mx.sessions) == 1
    line = fake_line(scene.shim)
    assert line["result"] == "error" and "closed the connection" in line["reason"], \
        line["_line"]


def cpu_seconds(shim):
    total = 0
    for pid in shim.pids():
        try:
            with open("/proc/%d/stat" % pid) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def tcp_queues(local_port, remote_port):
    """(state, tx_queue, rx_queue) of the socket at 127.0.0.1:local_port
    talking to remote_port, as /proc/net/tcp has them, or None."""
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            if (int(fields[1].rsplit(":", 1)[1], 16) == local_port and
                    int(fields[2].rsplit(":", 1)[1], 16) == remote_port):
                tx, rx = fields[4].split(":")
                return fields[3], int(tx, 16), int(rx, 16)
    return None


HELP_REPLY = len(b"214 2.0.0 mailshim outbound relay\r\n")
BACKLOG = 128 * 1024


class Stuffed:
    """A client that pipelines helps HELPs, then a transaction whose body
    ends with a bare LF, and reads nothing: the replies fill the socket
    buffers and the rest waits in the shim."""

    def __init__(self, port, test_id, helps):
        self.port = port
        self.s = socket.socket()
        self.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.s.settimeout(10)
        self.s.connect(("127.0.0.1", port))
        self.me = self.s.getsockname()[1]
        data = (b"EHLO client.test\r\n" + b"HELP\r\n" * helps +
                b"MAIL FROM:<s@client.test>\r\nRCPT TO:<r@ee.test>\r\nDATA\r\n" +
                b"X-Test-Id: %s\r\n\r\nhello\n.\nRSET\r\nNOOP\r\n" % test_id.encode())
        self.t = threading.Thread(target=self.send, args=(data,), daemon=True)
        self.t.start()

    def send(self, data):
        try:
            self.s.sendall(data)
        except OSError:
            pass

    def in_buffers(self):
        """Reply bytes the socket buffers hold (the shim's and ours)."""
        shim = tcp_queues(self.port, self.me)
        mine = tcp_queues(self.me, self.port)
        return (shim[1] if shim else 0) + (mine[2] if mine else 0)

    def settled(self):
        last, steady = -1, 0
        while steady < 5:
            time.sleep(0.1)
            n = self.in_buffers()
            steady = steady + 1 if n == last else 0
            last = n
        return last

    def replies(self):
        got = []
        while True:
            b = self.s.recv(65536)
            if not b:
                break
            got.append(b)
        self.s.close()
        return [l[:3] for l in b"".join(got).split(b"\r\n") if l[3:4] == b" "]


def test_bad_end_of_data_to_a_client_that_does_not_read(scene, make_shim, ports):
    """A bare LF around the end of data gets one 554 and a close, even when
    the client does not read its replies: the worker does not spin on the
    bytes it refused, the close comes at its deadline, other sessions are
    served meanwhile."""
    listen = ports.get()
    shim = make_shim("\n".join([
        "[global]", "workers = 1", "helo_name = shim.test",
        "dns_resolver = 127.0.0.1@%d" % scene.dns.port,
        "dnssec_trust_anchor = %s" % scene.dns.trust_anchor_path, "",
        "[hold]", "listen = 127.0.0.1:%d" % listen, "upstream = mx",
        "upstream_port = %d" % scene.port, "relay_from = 127.0.0.0/8",
        "upstream_ca = %s" % scene.p.ca, "timeout_handshake = 3s", ""]))
    # What the socket buffers hold (the kernel grows them as they fill):
    # the clients below pipeline so many HELPs that BACKLOG bytes of their
    # replies wait in the shim when it comes to the body.
    probe = Stuffed(listen, "mx-bad-dot-probe", 200000)
    held = probe.settled()
    probe.s.close()
    helps = (held + BACKLOG) // HELP_REPLY
    # One that reads a second later: every reply once, one 554, the end.
    a = Stuffed(listen, "mx-bad-dot-a", helps)
    a.settled()
    time.sleep(1)
    replies = a.replies()
    assert replies.count(b"554") == 1, "%d replies 554" % replies.count(b"554")
    assert replies.count(b"214") == helps, len(replies)
    assert replies[-4:] == [b"250", b"250", b"354", b"554"], replies[-8:]
    # One that never reads: closed at its deadline, the worker idle.
    b = Stuffed(listen, "mx-bad-dot-b", helps)
    b.settled()
    cpu = cpu_seconds(shim)
    time.sleep(1)
    with smtplib.SMTP("127.0.0.1", listen, local_hostname="client.test", timeout=5) as c:
        assert c.noop()[0] == 250
    wait_until(lambda: (tcp_queues(listen, b.me) or ("gone",))[0] != "01", 6,
               "the shim to close the session of a client that does not read")
    used = cpu_seconds(shim) - cpu
    b.s.close()
    assert used < 1.0, "the shim used %.1f s of CPU for an idle session" % used
    assert scene.rx["ee"].find("mx-bad-dot-a") is None
    assert scene.rx["ee"].find("mx-bad-dot-b") is None


REFUSALS = {
    b"MAIL": b"550 5.7.1 sender refused here\r\n",
    b"RCPT": b"550 5.1.1 no such user here\r\n",
    b"DATA": b"554 5.3.0 no data today\r\n",
    b"DOT": b"554 5.7.1 message refused here\r\n",
}


@pytest.mark.parametrize("stage", ["MAIL", "RCPT", "DATA", "DOT"])
def test_a_refusal_of_the_mx_is_relayed_and_logged_as_refused(scene, fake, stage):
    """The MX's 5xx to MAIL, RCPT, DATA or the end of data reaches the
    client as it is (a refused MAIL as the RCPT's answer), and the
    transaction's log line says the MX refused it, with its words."""
    verb = stage.encode()
    refusal = REFUSALS[verb]
    fake(replies={verb: refusal})
    _, msg = make_message(300, test_id="mx-refused-" + stage)
    with smtplib.SMTP("127.0.0.1", scene.listen, local_hostname="client.test",
                      timeout=15) as c:
        c.ehlo()
        assert c.mail("s@client.test")[0] == 250
        got = c.rcpt("r@fake.test")
        if stage in ("DATA", "DOT"):
            assert got[0] == 250, got
            got = c.docmd("DATA")
            if stage == "DOT":
                assert got[0] == 354, got
                c.send(msg + b".\r\n")
                got = c.getreply()
        assert got == (int(refusal[:3]), refusal[4:-2]), got
        c.rset()
    line = fake_line(scene.shim)
    assert line["result"] == "refused", line["_line"]
    assert "MX refused" in line["reason"] and refusal[:-2].decode() in line["reason"], \
        line["_line"]
    assert "reason_code" not in line, line["_line"]


@pytest.mark.parametrize("family", ["A", "AAAA"])
def test_a_bogus_address_answer_fails_the_host(scene, family):
    """RFC 7672 2.1.1: a bogus answer is a failure, never "unsigned". With
    the A (or AAAA) records of an MX host bogus, the host is not used,
    not even at its secure addresses of the other family (where a check
    without DANE passes: its TLSA records match nothing)."""
    dom = "bogus4.test" if family == "A" else "bogus6.test"
    mxs = [FakeMX("127.0.0.25", scene.port, scene.p.ta), FakeMX("::1", scene.port, scene.p.ta)]
    try:
        replies, _ = send(scene.listen, ["r@" + dom], "mx-bogus-" + family)
    finally:
        for mx in mxs:
            mx.close()
    assert replies[0][0] == 451 and b"4.4.3" in replies[0][1], replies
    assert [mx.sessions for mx in mxs] == [[], []]
    line = scene.shim.wait_log(lambda d: d.get("service") == "relay" and
                               d.get("mx") == "mx." + dom)[0]
    assert line["result"] == "refused" and line.get("reason_code") == "dnssec-invalid", \
        line["_line"]
    assert family in line["reason"], line["_line"]


HOSTILE = (b"550 5.7.1 no \x1b[1A\x1b[2K\x0b\x0c\x1c conn=deadbeef service=relay result=ok "
           b"\xff\xfe\x01 \xc2\x85 \xe2\x80\xa8 \"q\" \\ end\r\n")


def test_an_mx_reply_cannot_forge_or_break_a_log_line(scene, fake):
    """The MX's words reach the log inside reason="...", as printable
    ASCII only: no control byte (a terminal's escapes, the line breaks of
    some parsers), no byte that is not UTF-8 (journald would keep the
    line as a blob), no quote to end the value. Every line stays one
    line, and no line of the MX's making appears."""
    fake(replies={b"MAIL": HOSTILE})
    with smtplib.SMTP("127.0.0.1", scene.listen, local_hostname="client.test",
                      timeout=15) as c:
        c.ehlo()
        assert c.mail("s@client.test")[0] == 250
        assert c.rcpt("r@fake.test")[0] == 550
        c.rset()
    line = fake_line(scene.shim)
    assert line["result"] == "refused", line["_line"]
    with open(scene.shim.proc.err_path, "rb") as f:
        raw = f.read()
    for text in raw.split(b"\n")[:-1]:
        assert all(0x20 <= b <= 0x7e for b in text), text
    assert "conn=deadbeef" in line["reason"] and "'q'" in line["reason"], line["_line"]
    assert not [d for d in scene.shim.log_lines() if d.get("conn") == "deadbeef"]
    assert len(raw.decode("ascii").splitlines()) == raw.count(b"\n")


def test_a_recipient_whose_mx_closes_does_not_block_the_next(scene, fake):
    """The first recipient's MX closes at its RCPT: that RCPT gets a 451,
    the transaction is bound to no domain, and the next recipient (of
    another domain) binds it to its own MX and is delivered."""
    mx = fake(replies={b"RCPT": b""})
    _, msg = make_message(300, test_id="mx-rcpt-closed-next")
    with smtplib.SMTP("127.0.0.1", scene.listen, local_hostname="client.test",
                      timeout=15) as c:
        c.ehlo()
        assert c.mail("s@client.test")[0] == 250
        code, text = c.rcpt("x@fake.test")
        assert code == 451 and b"4.4.2" in text, (code, text)
        assert c.rcpt("y@ee.test")[0] == 250
        assert c.data(msg)[0] == 250
    got, meta = scene.rx["ee"].wait_message("mx-rcpt-closed-next")
    assert meta["rcpt_tos"] == ["y@ee.test"]
    assert len(mx.sessions) == 1


def raw_reply(f):
    lines = []
    while True:
        line = f.readline()
        if not line:
            return None, b"".join(lines)
        lines.append(line)
        if line[3:4] != b"-":
            return int(line[:3]), b"".join(lines)


def test_a_refused_bdat_chunk_is_dropped_never_run(scene):
    """CHUNKING is not offered: a BDAT gets 502 and its chunk (here a
    MAIL command, sent in two parts) is read and dropped, never run; a
    BDAT whose chunk size cannot be read gets 501 and the session ends."""
    chunk = b"MAIL FROM:<evil@x.test>\r\n"
    with socket.create_connection(("127.0.0.1", scene.listen), timeout=10) as c, \
            c.makefile("rb") as f:
        assert raw_reply(f)[0] == 220
        c.sendall(b"EHLO client.test\r\n")
        assert raw_reply(f)[0] == 250
        c.sendall(b"BDAT %d LAST\r\n" % len(chunk) + chunk[:10])
        assert raw_reply(f)[0] == 502
        time.sleep(0.2)
        c.sendall(chunk[10:] + b"NOOP\r\n")
        assert raw_reply(f) == (250, b"250 2.0.0 Ok\r\n")
        c.sendall(b"MAIL FROM:<s@client.test>\r\n")
        assert raw_reply(f)[0] == 250, "the chunk's MAIL was run"
        c.sendall(b"BDAT 025\r\nNOOP\r\n")
        code, text = raw_reply(f)
        assert code == 501 and b"5.5.4" in text, text
        assert raw_reply(f) == (None, b"")


class Mute(Refuser):
    """An MX that takes the connection and then says nothing (mode
    "greet"), or greets and never answers EHLO (mode "ehlo")."""

    def __init__(self, host, port, mode):
        self.mode = mode
        self.sessions = 0
        super().__init__(host, port)

    def serve(self, c):
        self.sessions += 1
        c.settimeout(0.2)
        if self.mode == "ehlo":
            c.sendall(b"220 mute ESMTP\r\n")
        while not self.stop:
            try:
                if not c.recv(1024):
                    return
            except socket.timeout:
                continue


@pytest.mark.parametrize("mode", ["greet", "ehlo"])
def test_a_mute_primary_mx_is_left_at_timeout_handshake(scene, make_shim, ports, mode):
    """The first MX of down.test takes the connection and never greets
    (or never answers EHLO): the STARTTLS dialogue is held to
    timeout_handshake, not timeout_reply, and the second MX gets the
    message while the sender still waits for the RCPT's reply."""
    listen = ports.get()
    make_shim("\n".join([
        "[global]", "workers = 1", "helo_name = shim.test",
        "dns_resolver = 127.0.0.1@%d" % scene.dns.port,
        "dnssec_trust_anchor = %s" % scene.dns.trust_anchor_path, "",
        "[mute]", "listen = 127.0.0.1:%d" % listen, "upstream = mx",
        "upstream_port = %d" % scene.port, "relay_from = 127.0.0.0/8",
        "upstream_ca = %s" % scene.p.ca, "timeout_handshake = 2s",
        "timeout_reply = 60s", ""]))
    mute = Mute("127.0.0.13", scene.port, mode)
    try:
        t = time.monotonic()
        replies, msg = send(listen, ["r@down.test"], "mx-mute-" + mode)
        took = time.monotonic() - t
    finally:
        mute.close()
    assert [c for c, _ in replies] == [250, 250], replies
    assert took < 20, "the RCPT took %.1f s" % took
    assert mute.sessions == 1
    scene.rx["down2"].wait_message("mx-mute-" + mode)


def test_a_2xx_to_data_is_not_taken_for_a_delivery(scene, fake):
    """The MX answers DATA with 250 instead of 354: the client gets no
    reply it could take for a delivery but 451 4.5.0, the MX is let go
    and the transaction is logged as an error."""
    mx = fake(replies={b"DATA": b"250 2.0.0 weird\r\n"})
    with smtplib.SMTP("127.0.0.1", scene.listen, local_hostname="client.test",
                      timeout=15) as c:
        c.ehlo()
        assert c.mail("s@client.test")[0] == 250
        assert c.rcpt("r@fake.test")[0] == 250
        code, text = c.docmd("DATA")
        assert code == 451 and text.startswith(b"4.5.0"), (code, text)
        assert c.noop()[0] == 250
        c.rset()
    wait_until(mx.closed.is_set, 5, "the MX session to end")
    line = fake_line(scene.shim)
    assert line["result"] == "error" and "250 2.0.0 weird" in line["reason"], line["_line"]


@pytest.mark.parametrize("how", ["leave", "idle"])
def test_no_quit_into_the_body_of_a_client_that_goes(scene, fake, how):
    """The client leaves (or idles past timeout_idle) in the middle of its
    body: the MX connection is closed as it is, with no QUIT written into
    the body, so the MX drops the partial message."""
    mx = fake()
    c = open_body(scene, "mx-no-quit-" + how, scene.slow if how == "idle" else None)
    c.send(b"partial")
    if how == "leave":
        time.sleep(0.3)
        c.close()
    else:
        code, _ = c.getreply()
        assert code == 421, code
        c.close()
    wait_until(mx.closed.is_set, 10, "the MX session to end")
    assert len(mx.bodies) == 1, mx.bodies
    assert b".\r\n" not in mx.bodies[0], mx.bodies
    assert not any(b"QUIT" in l for l in mx.bodies[0]), mx.bodies
    assert not any(l.upper().startswith(b"QUIT") for l in mx.sessions[0]), mx.sessions


def test_a_recipient_domain_in_u_labels_goes_to_its_a_label_mx(scene):
    """RCPT TO:<u@bücher.test> (with SMTPUTF8) is routed as xn--bcher-kva.test
    (its MX, its TLSA records) and relayed as the client wrote it; the
    A-label spelling is the same domain; a name IDNA2008 refuses gets
    553 5.1.3, and a non-ASCII domain without SMTPUTF8 553 5.6.7."""
    mx = FakeMX("127.0.0.24", scene.port, scene.p.ee, utf8=True)
    try:
        with socket.create_connection(("127.0.0.1", scene.listen), timeout=15) as c, \
                c.makefile("rb") as f:
            def cmd(line):
                c.sendall(line)
                return raw_reply(f)
            assert raw_reply(f)[0] == 220
            assert cmd(b"EHLO client.test\r\n")[0] == 250
            assert cmd(b"MAIL FROM:<s@client.test> SMTPUTF8\r\n")[0] == 250
            got = cmd("RCPT TO:<u@b\u00fccher.test>\r\n".encode())
            assert got[0] == 250, got
            assert cmd(b"RCPT TO:<w@xn--bcher-kva.test>\r\n")[0] == 250
            for bad in (b"v@b\xc3.test", "v@\u2603.test".encode()):
                code, text = cmd(b"RCPT TO:<%s>\r\n" % bad)
                assert code == 553 and b"5.1.3" in text, (bad, text)
            assert cmd(b"DATA\r\n")[0] == 354
            code, text = cmd(b"X-Test-Id: mx-idn\r\n\r\nhello\r\n.\r\n")
            assert code == 250, text
            assert cmd(b"MAIL FROM:<s@client.test>\r\n")[0] == 250
            code, text = cmd("RCPT TO:<u@b\u00fccher.test>\r\n".encode())
            assert code == 553 and b"5.6.7" in text, text
            cmd(b"QUIT\r\n")
    finally:
        mx.close()
    rcpts = [l for l in mx.sessions[0] if l.upper().startswith(b"RCPT")]
    assert rcpts == ["RCPT TO:<u@b\u00fccher.test>\r\n".encode(),
                     b"RCPT TO:<w@xn--bcher-kva.test>\r\n"], mx.sessions
    assert mx.bodies[0][-1] == b".\r\n"
    line = scene.shim.wait_log(lambda d: d.get("mx") == "mx.xn--bcher-kva.test")[0]
    assert line["result"] == "ok" and line["upstream_auth"] == "dane-ee", line["_line"]


def test_a_domain_with_no_mx_and_no_address_is_bounced(scene):
    """nomx.test has neither MX nor A/AAAA records (signed answers): its
    implicit MX is nowhere, so the RCPT gets 550 5.1.2, not a deferral."""
    with smtplib.SMTP("127.0.0.1", scene.listen, local_hostname="client.test",
                      timeout=15) as c:
        c.ehlo()
        assert c.mail("s@client.test")[0] == 250
        code, text = c.rcpt("u@nomx.test")
        assert code == 550 and text.startswith(b"5.1.2"), (code, text)
        c.rset()


def test_unreadable_mx_records_are_not_a_null_mx(scene):
    """broken.test's only MX record names a host mailshim cannot use:
    that is a temporary failure (451 4.4.3), never RFC 7505's null MX,
    which is the one record "0 ." (556 5.1.10, null.test)."""
    with smtplib.SMTP("127.0.0.1", scene.listen, local_hostname="client.test",
                      timeout=15) as c:
        c.ehlo()
        assert c.mail("s@client.test")[0] == 250
        code, text = c.rcpt("u@broken.test")
        assert code == 451 and text.startswith(b"4.4.3"), (code, text)
        code, text = c.rcpt("u@null.test")
        assert code == 556 and text.startswith(b"5.1.10"), (code, text)
        c.rset()
