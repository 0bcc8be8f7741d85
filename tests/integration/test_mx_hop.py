"""The outbound relay's MX hop when the MX misbehaves: it closes or
answers during the body, or refuses the transaction. The MX is a
scripted server (FakeMX) at mx.fake.test, in test_mx.py's scene: its
domain is signed and has no TLSA records, so the shim checks its
certificate against upstream_ca and the MX host name."""

import select
import smtplib
import ssl
import threading
import time

import pytest

from harness import wait_until
from messages import make_message
from test_mx import Refuser, scene  # noqa: F401 (scene is a fixture)

FAKE = "127.0.0.23"


class FakeMX(Refuser):
    """An MX that offers STARTTLS and then follows a script: replies
    maps a verb (b"MAIL", b"RCPT", b"DATA", b"DOT") to its reply; body
    says what it does with a body: "reply" (read it to its end, answer
    replies[b"DOT"]), "close-mid" (read one line, close), "early" (read
    one line, answer 250 at once), "close-end" (read it to its end, close
    without a word). sessions holds the commands of each session (after
    TLS); closed is set when a session ends."""

    def __init__(self, host, port, cert, body="reply", replies=None):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert[0], cert[1])
        self.body = body
        self.replies = {b"DATA": b"354 go ahead\r\n", b"DOT": b"250 2.0.0 queued\r\n"}
        self.replies.update(replies or {})
        self.sessions = []
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
                t.sendall(b"250-fake\r\n250 8BITMIME\r\n")
            elif verb == b"QUIT":
                t.sendall(b"221 bye\r\n")
                break
            elif verb == b"DATA":
                t.sendall(self.replies[b"DATA"])
                if self.replies[b"DATA"].startswith(b"354") and not self.take_body(t, f):
                    break
            else:
                t.sendall(self.replies.get(verb, b"250 ok\r\n"))
        t.close()

    def take_body(self, t, f):
        """Read a body as the script says; False: the session is over."""
        if self.body in ("close-mid", "early"):
            f.readline()
            if self.body == "close-mid":
                return False
            t.sendall(b"250 2.0.0 early\r\n")
        for line in f:
            if line == b".\r\n":
                break
        if self.body == "close-end":
            return False
        if self.body == "reply":
            t.sendall(self.replies[b"DOT"])
        return True


@pytest.fixture
def fake(scene):  # noqa: F811
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


def open_body(scene, test_id):
    c = smtplib.SMTP("127.0.0.1", scene.listen, local_hostname="client.test", timeout=15)
    c.ehlo()
    assert c.mail("s@client.test")[0] == 250
    assert c.rcpt("r@fake.test")[0] == 250
    assert c.docmd("DATA")[0] == 354
    c.send(b"X-Test-Id: %s\r\n\r\nfirst line\r\n" % test_id.encode())
    return c


@pytest.mark.parametrize("body", ["close-mid", "early"])
def test_mx_lost_during_the_body_never_runs_it_as_commands(scene, fake, body):  # noqa: F811
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


def test_mx_lost_after_the_body_before_its_reply(scene, fake):  # noqa: F811
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
