"""The shim reads the SMTP dialogue as the upstream does.

Against a private Postfix that trusts the shim's address for XCLIENT and
XFORWARD (as a real one behind a relay would):

- the client's identity is the shim's: XCLIENT and XFORWARD never reach
  Postfix in any spelling, and no EHLO reply offers them to the client;
- every verb the shim interprets (DATA, BDAT, STARTTLS, AUTH, EHLO, HELO,
  RSET, QUIT, NOOP, XCLIENT, XFORWARD) is sent in every class of odd
  spelling (leading space or tab, trailing space/tab/VT/FF, a CR before
  the CRLF, mixed case, white space other than one space before the
  arguments): shim and Postfix agree on where each command and body
  starts and ends, or the shim refused the line itself;
- a BDAT chunk larger than the advertised SIZE (or, without one, 1 GiB)
  gets 552 and the session ends before the upstream sees it.

Against scripted upstreams (hostile.py): a multi-line reply reaches the
client whole or not at all (only the shim's 421).
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
from clients import SmtpConn, client_context
from hostile import expect_line, send, serve_smtp, sleep, stall

pytestmark = pytest.mark.postfix

SHIM_LEAD = "500 5.5.2 white space before the command"
SHIM_BADCHAR = "500 5.5.2 invalid character in command"
SHIM_IDENTITY = "550 5.7.0"
SHIM_MALFORMED = b"421 4.4.0 upstream sent a malformed reply\r\n"

# --------------------------------------------------------------------------
# Spellings


def spellings(verb, args=None):
    """[(id, line, class)]: verb (and args) in every class of spelling,
    CRLF ended. class is what the shim makes of it: "verb" (read as Postfix
    reads it), "lead" (white space before the verb: refused) or "badchar"
    (a CR before the CRLF: refused)."""
    mixed = "".join(c.lower() if i % 2 == 0 else c for i, c in enumerate(verb))
    rest = (" " + args) if args else ""
    out = [
        ("canonical", verb + rest, "verb"),
        ("mixed-case", mixed + rest, "verb"),
        ("lower-case", verb.lower() + rest, "verb"),
        ("lead-space", " " + verb + rest, "lead"),
        ("lead-tab", "\t" + verb + rest, "lead"),
        ("trail-space", verb + rest + " ", "verb"),
        ("trail-tab", verb + rest + "\t", "verb"),
        ("trail-vt", verb + rest + "\v", "verb"),
        ("trail-ff", verb + rest + "\f", "verb"),
        ("cr-before-crlf", verb + rest + "\r", "badchar"),
    ]
    if args:
        out += [
            ("sep-tab", verb + "\t" + args, "verb"),
            ("sep-vt", verb + "\v" + args, "verb"),
            ("sep-ff", verb + "\f" + args, "verb"),
            ("sep-run", verb + " \t\v\f " + args, "verb"),
        ]
    return [(i, (l + "\r\n").encode(), k) for i, l, k in out]


def params(verb, args=None):
    return [pytest.param(line, klass, id=i) for i, line, klass in spellings(verb, args)]


def shim_refusal(klass):
    return SHIM_LEAD if klass == "lead" else SHIM_BADCHAR


# --------------------------------------------------------------------------
# Fixtures and helpers


@pytest.fixture(scope="module")
def postfix_trusting(ports, pki, tmp_path_factory):
    """One private Postfix for the module, trusting 127.0.0.1 (the shim)
    for XCLIENT and XFORWARD."""
    if os.geteuid() != 0:
        pytest.skip("a private Postfix instance needs root")
    procs = Procs(tmp_path_factory.mktemp("postfix"))
    d = public_dir("mailshim-reading-")
    pf = PrivatePostfix(procs, ports, pki.upstream, pki.upstream_key, d)
    # mynetworks covers the forged address, so that a forgery that got
    # through would deliver (and show) rather than fail the relay check.
    postfix_main_add(pf, "smtpd_authorized_xclient_hosts = 127.0.0.1",
                     "smtpd_authorized_xforward_hosts = 127.0.0.1",
                     "mynetworks = 127.0.0.0/8 192.0.2.0/24")
    try:
        pf.start()
        yield pf
    finally:
        pf.stop()
        procs.cleanup()
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def pf(postfix_trusting):
    return postfix_trusting


def start(make_shim, ports, pki, up_port, listen="plain", **extra):
    port = ports.get()
    extra.setdefault("timeout_idle", "10s")
    shim = make_shim({"reading": service(port, up_port, listen, "plain", pki, **extra)})
    return shim, port


def connect(port):
    c = SmtpConn(port)
    code, lines = c.reply()
    assert code == 220, lines
    return c


def replies(c, n, timeout=10.0):
    """Up to n replies as (code, lines), fewer if the connection ends."""
    out = []
    for _ in range(n):
        try:
            out.append(c.reply(timeout))
        except AssertionError:
            break
    return out


def first_line(reply):
    return reply[1][0]


def ehlo_keywords(lines):
    return [l[4:].split(None, 1)[0].upper() for l in lines[1:] if len(l) > 4]


def send_message(c, test_id, body_lines=(), sender="sender@client.test"):
    """A plain DATA transaction in lock step; the queue id."""
    assert c.cmd("MAIL FROM:<%s>" % sender)[0] == 250
    assert c.cmd("RCPT TO:<bob@remote.test>")[0] == 250
    assert c.cmd("DATA")[0] == 354
    msg = ("Subject: %s\r\nX-Test-Id: %s\r\n\r\n" % (test_id, test_id)).encode()
    msg += b"".join(l + b"\r\n" for l in body_lines)
    c.send(msg + b".\r\n")
    code, lines = c.reply(15)
    assert code == 250, lines
    m = re.search(r"queued as ([0-9A-Za-z]+)", lines[-1])
    assert m, lines
    return m.group(1)


def uid(request):
    """A short name unique to the test case, for markers and forged names."""
    return "u%08x" % zlib.crc32(request.node.nodeid.encode())


def sink_with(pf, marker):
    """The messages at Postfix's sink holding marker (bytes)."""
    return [m for _, m in pf.sink.messages() if marker in m]


# --------------------------------------------------------------------------
# Client identity


def test_control_postfix_believes_xclient_from_the_shims_address(pf, request):
    """Without the shim, this Postfix takes XCLIENT from 127.0.0.1: what the
    shim must never let a client do."""
    forged = "%s.trusted.example" % uid(request)
    c = connect(pf.smtp_port)
    code, lines = c.cmd("EHLO client.test")
    assert {"XCLIENT", "XFORWARD", "STARTTLS"} <= set(ehlo_keywords(lines)), lines
    assert c.cmd("XCLIENT ADDR=192.0.2.77 NAME=%s LOGIN=admin" % forged)[0] == 220
    assert c.cmd("EHLO client.test")[0] == 250
    tid = "control-" + uid(request)
    qid = send_message(c, tid)
    c.cmd("QUIT")
    pf.wait_sent(qid)
    assert "192.0.2.77" in pf.client_line(qid)
    msg = pf.sink.wait_message(tid)
    assert forged.encode() in header_value(msg, "Received"), msg[:400]


@pytest.mark.parametrize("verb,args", [
    ("XCLIENT", "ADDR=192.0.2.77 NAME={forged} LOGIN=admin"),
    ("XFORWARD", "ADDR=192.0.2.77 NAME={forged} HELO={forged}"),
], ids=["xclient", "xforward"])
@pytest.mark.parametrize("how", [s[0] for s in spellings("XCLIENT", "x")])
def test_identity_commands_never_reach_postfix(make_shim, pf, ports, pki, request, verb,
                                               args, how):
    forged = "%s.trusted.example" % uid(request)
    line, klass = {i: (l, k) for i, l, k in spellings(verb, args.format(forged=forged))}[how]
    shim, port = start(make_shim, ports, pki, pf.smtp_port)
    c = connect(port)
    code, lines = c.cmd("EHLO client.test")
    assert code == 250, lines
    kw = ehlo_keywords(lines)
    assert "XCLIENT" not in kw and "XFORWARD" not in kw and "STARTTLS" not in kw, lines
    c.send(line)
    r = c.reply()
    want = SHIM_IDENTITY if klass == "verb" else shim_refusal(klass)
    assert first_line(r).startswith(want), (line, r)
    # The session goes on as the shim's client, 127.0.0.1.
    assert c.cmd("EHLO client.test")[0] == 250
    tid = "id-" + uid(request)
    qid = send_message(c, tid)
    assert c.cmd("QUIT")[0] == 221
    pf.wait_sent(qid)
    assert "[127.0.0.1]" in pf.client_line(qid), pf.client_line(qid)
    msg = pf.sink.wait_message(tid)
    received = header_value(msg, "Received")
    assert forged.encode() not in received and b"192.0.2.77" not in received, received
    log = pf.maillog()
    assert forged not in log, [l for l in log.splitlines() if forged in l]


def test_identity_commands_refused_inside_tls(make_shim, pf, ports, pki, request):
    """After the client's STARTTLS as before it."""
    forged = "%s.trusted.example" % uid(request)
    shim, port = start(make_shim, ports, pki, pf.smtp_port, listen="starttls",
                       listen_plain_from="127.0.0.0/8")
    c = connect(port)
    assert c.cmd("EHLO client.test")[0] == 250
    assert c.cmd("STARTTLS")[0] == 220
    c.sock = client_context(pki.ca).wrap_socket(c.sock, server_hostname="shim.test")
    code, lines = c.cmd("EHLO client.test")
    kw = ehlo_keywords(lines)
    assert "XCLIENT" not in kw and "XFORWARD" not in kw and "STARTTLS" not in kw, lines
    for cmd in ("XCLIENT ADDR=192.0.2.77 NAME=%s" % forged, "XFORWARD NAME=%s" % forged):
        assert first_line(c.cmd(cmd)).startswith(SHIM_IDENTITY)
    tid = "tls-" + uid(request)
    qid = send_message(c, tid)
    c.cmd("QUIT")
    pf.wait_sent(qid)
    assert "[127.0.0.1]" in pf.client_line(qid)
    assert forged not in pf.maillog()


# --------------------------------------------------------------------------
# EHLO and HELO


@pytest.mark.parametrize("line,klass", params("EHLO", "client.test"))
def test_ehlo_spellings_get_the_rewritten_reply(make_shim, pf, ports, pki, line, klass):
    """However EHLO is spelled, the reply the client sees is the shim's
    rewrite: no XCLIENT, no XFORWARD, no upstream STARTTLS."""
    shim, port = start(make_shim, ports, pki, pf.smtp_port)
    c = connect(port)
    c.send(line)
    code, lines = c.reply()
    if klass != "verb":
        assert lines == [shim_refusal(klass)], lines
        assert c.cmd("NOOP")[0] == 250
        return
    assert code == 250 and lines[0].startswith("250-legacy.test"), lines
    kw = ehlo_keywords(lines)
    assert "PIPELINING" in kw and "CHUNKING" in kw, lines
    assert not {"XCLIENT", "XFORWARD", "STARTTLS"} & set(kw), lines


@pytest.mark.parametrize("line,klass", params("HELO", "client.test"))
def test_helo_spellings_open_the_session_after_tls(make_shim, pf, ports, pki, line, klass):
    """After STARTTLS only EHLO or HELO opens the session again: an odd HELO
    does for both, or the shim refused it and still wants one."""
    shim, port = start(make_shim, ports, pki, pf.smtp_port, listen="starttls",
                       listen_plain_from="127.0.0.0/8")
    c = connect(port)
    assert c.cmd("EHLO client.test")[0] == 250
    assert c.cmd("STARTTLS")[0] == 220
    c.sock = client_context(pki.ca).wrap_socket(c.sock, server_hostname="shim.test")
    c.send(line)
    r = c.reply()
    if klass == "verb":
        assert r == (250, ["250 legacy.test"]), r
        assert c.cmd("MAIL FROM:<a@client.test>")[0] == 250
    else:
        assert r[1] == [shim_refusal(klass)], r
        assert c.cmd("MAIL FROM:<a@client.test>")[1] == ["503 5.5.1 Send EHLO first"]



@pytest.mark.parametrize("greeting", ["EHLO", "HELO", "EHLO  "])
def test_a_greeting_postfix_refuses_after_tls_opens_nothing(make_shim, pf, ports, pki,
                                                           greeting):
    """Postfix answers EHLO or HELO without a name with 501 before it resets
    the transaction, so a MAIL sent before STARTTLS would still stand
    there: until Postfix takes a greeting, the shim keeps waiting for one,
    and the transaction opened in plaintext never goes on inside TLS."""
    shim, port = start(make_shim, ports, pki, pf.smtp_port, listen="starttls",
                       listen_plain_from="127.0.0.0/8")
    c = connect(port)
    assert c.cmd("EHLO client.test")[0] == 250
    assert c.cmd("MAIL FROM:<injected@evil.test>")[0] == 250
    assert c.cmd("STARTTLS")[0] == 220
    c.sock = client_context(pki.ca).wrap_socket(c.sock, server_hostname="shim.test")
    code, lines = c.cmd(greeting)
    assert code == 501, lines
    assert c.cmd("RCPT TO:<rcpt@legacy.test>")[1] == ["503 5.5.1 Send EHLO first"]
    assert c.cmd("EHLO client.test")[0] == 250
    code, lines = c.cmd("RCPT TO:<rcpt@legacy.test>")
    assert code == 503 and "need MAIL" in lines[0], lines
    assert c.cmd("QUIT")[0] == 221

# --------------------------------------------------------------------------
# DATA

# Body lines the shim would act on were they commands. No header: a
# header line sent as a command makes Postfix hang up.
BODY_COMMANDS = [b"RSET", b"STARTTLS", b"XCLIENT ADDR=192.0.2.66 NAME=body.example",
                 b"MAIL FROM:<evil@attacker.test>", b"QUIT", b"BDAT 5"]


@pytest.mark.parametrize("line,klass", params("DATA"))
def test_data_spellings_shim_and_postfix_agree_on_the_body(make_shim, pf, ports, pki,
                                                           request, line, klass):
    """MAIL, RCPT, the odd DATA, a body of command lines and the end, all in
    one write: either both read the body (Postfix delivers it with every
    line) or the shim refused the DATA line and both read the rest as
    commands (RSET is Postfix's, STARTTLS and XCLIENT the shim's, QUIT
    ends the session; nothing is delivered)."""
    shim, port = start(make_shim, ports, pki, pf.smtp_port)
    c = connect(port)
    assert c.cmd("EHLO client.test")[0] == 250
    marker = ("marker " + uid(request)).encode()
    body = b"".join(l + b"\r\n" for l in BODY_COMMANDS + [marker])
    c.send(b"MAIL FROM:<sender@client.test>\r\nRCPT TO:<bob@remote.test>\r\n" + line +
           body + b".\r\nNOOP\r\n")
    got = replies(c, 10, timeout=5)
    assert [r[0] for r in got[:2]] == [250, 250], got
    if klass == "verb":
        assert [r[0] for r in got[2:5]] == [354, 250, 250], got
        assert "queued as" in first_line(got[3]), got
        assert c.cmd("QUIT")[0] == 221
        qid = re.search(r"queued as (\w+)", first_line(got[3])).group(1)
        pf.wait_sent(qid)
        msgs = sink_with(pf, marker)
        assert len(msgs) == 1, msgs
        assert body in msgs[0], msgs[0][-400:]
    else:
        # (What was pipelined after QUIT is owed a reply Postfix will not
        # give: the shim's 421 may follow.)
        assert [first_line(r) for r in got[2:8]] == [
            shim_refusal(klass), "250 2.0.0 Ok", "502 5.5.1 STARTTLS not available",
            "550 5.7.0 Client identity is set by the relay, not by commands",
            "250 2.1.0 Ok", "221 2.0.0 Bye"], got
        assert c.read_until_closed(5)[1]
        time.sleep(0.5)
        assert sink_with(pf, marker) == []
    log = pf.maillog()
    assert "192.0.2.66" not in log and "body.example" not in log


@pytest.mark.parametrize("line,klass", [p for p in params("DATA") if p.values[1] == "verb"])
def test_data_spellings_keep_the_smuggling_check(make_shim, pf, ports, pki, request, line,
                                                 klass):
    """A body with a bare-LF end of data (Postfix 3.7 takes it for the end)
    and a second transaction behind it: the shim reads the body and
    refuses it, so the smuggled message never exists."""
    shim, port = start(make_shim, ports, pki, pf.smtp_port)
    c = connect(port)
    assert c.cmd("EHLO client.test")[0] == 250
    smuggled = "smuggled-%s" % uid(request)[-20:]
    c.send(b"MAIL FROM:<sender@client.test>\r\nRCPT TO:<bob@remote.test>\r\n" + line +
           b"Subject: cover\r\n\r\nhello\r\n.\nMAIL FROM:<" + smuggled.encode() +
           b"@attacker.test>\r\nRCPT TO:<bob@remote.test>\r\nDATA\r\nSubject: x\r\n\r\n"
           b"smuggled\r\n.\r\n")
    got = replies(c, 4)
    assert [r[0] for r in got] == [250, 250, 354, 554], got
    assert "bare LF" in first_line(got[3]), got
    assert c.read_until_closed(5)[1]
    d = shim.wait_log(lambda d: d.get("result") == "refused")[0]
    assert "smuggling" in d["reason"], d["_line"]
    time.sleep(0.5)
    assert smuggled not in pf.maillog()


def test_white_space_before_a_verb_where_postfix_cuts_the_line(make_shim, pf, ports, pki):
    """Postfix reads at most line_length_limit (2048) bytes of a command
    and drops the rest: behind 2044 spaces, "DATAX" is DATA to it (the
    control, without the shim). The shim reads the whole line and would
    see an unknown verb; it refuses white space before a verb instead of
    guessing where an upstream cuts."""
    line = b" " * 2044 + b"DATAX\r\n"
    c = connect(pf.smtp_port)
    assert c.cmd("EHLO client.test")[0] == 250
    assert c.cmd("MAIL FROM:<sender@client.test>")[0] == 250
    assert c.cmd("RCPT TO:<bob@remote.test>")[0] == 250
    c.send(line)
    assert c.reply()[0] == 354
    c.close()
    shim, port = start(make_shim, ports, pki, pf.smtp_port)
    c = connect(port)
    assert c.cmd("EHLO client.test")[0] == 250
    assert c.cmd("MAIL FROM:<sender@client.test>")[0] == 250
    assert c.cmd("RCPT TO:<bob@remote.test>")[0] == 250
    c.send(line)
    assert c.reply()[1] == [SHIM_LEAD]
    assert c.cmd("NOOP")[0] == 250
    assert c.cmd("QUIT")[0] == 221


# --------------------------------------------------------------------------
# STARTTLS


@pytest.mark.parametrize("line,klass", params("STARTTLS"))
def test_starttls_spellings_are_answered_by_the_shim(make_shim, pf, ports, pki, line, klass):
    """On a STARTTLS listener every STARTTLS the shim reads is its own: the
    handshake is with the shim's certificate (shim.test), and Postfix never
    sees a STARTTLS (its session stays in plaintext)."""
    shim, port = start(make_shim, ports, pki, pf.smtp_port, listen="starttls")
    c = connect(port)
    assert c.cmd("EHLO client.test")[0] == 250
    c.send(line)
    r = c.reply()
    if klass != "verb":
        assert r[1] == [shim_refusal(klass)], r
        assert c.cmd("STARTTLS")[0] == 220
    else:
        assert r == (220, ["220 2.0.0 Ready to start TLS"]), r
    c.sock = client_context(pki.ca).wrap_socket(c.sock, server_hostname="shim.test")
    code, lines = c.cmd("EHLO client.test")
    assert code == 250 and "STARTTLS" not in ehlo_keywords(lines), lines
    assert c.cmd("QUIT")[0] == 221
    c.close()
    d = shim.wait_log()[0]
    assert d["listen_tls"].startswith("TLS"), d["_line"]
    assert d["upstream_tls"] == "none", d["_line"]


@pytest.mark.parametrize("line,klass", params("STARTTLS"))
def test_starttls_spellings_on_a_plain_listener_never_reach_postfix(make_shim, pf, ports, pki,
                                                                    line, klass):
    """Postfix offers STARTTLS and would answer 220 and wait for a TLS
    handshake; the shim answers 502 (or 500) itself, and the plaintext
    session goes on."""
    shim, port = start(make_shim, ports, pki, pf.smtp_port)
    c = connect(port)
    assert c.cmd("EHLO client.test")[0] == 250
    c.send(line)
    r = c.reply()
    want = "502 5.5.1 STARTTLS not available" if klass == "verb" else shim_refusal(klass)
    assert r[1] == [want], r
    assert c.cmd("NOOP") == (250, ["250 2.0.0 Ok"])
    assert c.cmd("QUIT")[0] == 221


@pytest.mark.parametrize("line,klass", [p for p in params("STARTTLS", "now")
                                        if p.values[1] == "verb" and b"now" in p.values[0]])
def test_starttls_with_arguments_is_a_syntax_error(make_shim, pf, ports, pki, line, klass):
    shim, port = start(make_shim, ports, pki, pf.smtp_port, listen="starttls")
    c = connect(port)
    assert c.cmd("EHLO client.test")[0] == 250
    c.send(line)
    assert c.reply()[1] == ["501 5.5.4 Syntax: STARTTLS"]
    assert c.cmd("QUIT")[0] == 221


# --------------------------------------------------------------------------
# AUTH, RSET, QUIT, NOOP (and MAIL, which the shim does not interpret)


@pytest.mark.parametrize("line,klass", params("AUTH", "PLAIN AGEAYg=="))
def test_auth_spellings_reach_postfix_as_auth(make_shim, pf, ports, pki, line, klass):
    """Postfix here has no SASL: it answers every AUTH it reads with 503.
    The shim waits for that answer, then reads the next line as a command."""
    shim, port = start(make_shim, ports, pki, pf.smtp_port)
    c = connect(port)
    assert c.cmd("EHLO client.test")[0] == 250
    c.send(line + b"NOOP\r\n")
    got = replies(c, 2)
    if klass == "verb":
        assert first_line(got[0]) == "503 5.5.1 Error: authentication not enabled", got
    else:
        assert first_line(got[0]) == shim_refusal(klass), got
    assert got[1] == (250, ["250 2.0.0 Ok"]), got


OPEN_VERBS = [("RSET", None, "250 2.0.0 Ok"), ("NOOP", None, "250 2.0.0 Ok"),
              ("QUIT", None, "221 2.0.0 Bye")]


@pytest.mark.parametrize("verb,args,answer", OPEN_VERBS, ids=[v[0] for v in OPEN_VERBS])
@pytest.mark.parametrize("how", [s[0] for s in spellings("RSET")])
def test_open_verbs_spellings_before_tls(make_shim, pf, ports, pki, verb, args, answer, how):
    """Before TLS on a listener that requires it, RSET, NOOP and QUIT go to
    Postfix in every spelling the shim reads as they are."""
    line, klass = {i: (l, k) for i, l, k in spellings(verb, args)}[how]
    shim, port = start(make_shim, ports, pki, pf.smtp_port, listen="starttls")
    c = connect(port)
    assert c.cmd("EHLO client.test")[0] == 250
    c.send(line)
    r = c.reply()
    assert r[1] == [answer if klass == "verb" else shim_refusal(klass)], r


@pytest.mark.parametrize("line,klass", params("MAIL", "FROM:<a@client.test>"))
def test_mail_spellings_before_tls_get_530(make_shim, pf, ports, pki, line, klass):
    shim, port = start(make_shim, ports, pki, pf.smtp_port, listen="starttls")
    c = connect(port)
    assert c.cmd("EHLO client.test")[0] == 250
    c.send(line)
    want = "530 5.7.0 Must issue a STARTTLS command first" if klass == "verb" else \
        shim_refusal(klass)
    assert c.reply()[1] == [want]


# --------------------------------------------------------------------------
# BDAT

def postfix_sessions_with_bdat(pf):
    """Postfix's disconnect lines that count a BDAT command."""
    return [l for l in pf.maillog().splitlines() if "disconnect from" in l and " bdat=" in l]


def wait_count(fn, want, timeout=10.0):
    deadline = time.monotonic() + timeout
    while fn() < want and time.monotonic() < deadline:
        time.sleep(0.1)
    return fn()


@pytest.mark.parametrize("line,klass", params("BDAT", "{n} LAST"))
def test_bdat_spellings(make_shim, pf, ports, pki, request, line, klass):
    """Only "BDAT n [LAST]" with single spaces (any case) goes on, and the
    chunk is delivered whole; any other white space ends the session (a
    server could size the chunk otherwise) and Postfix never sees a BDAT;
    a CR before the CRLF is refused and the chunk is commands for both."""
    shim, port = start(make_shim, ports, pki, pf.smtp_port)
    before = len(postfix_sessions_with_bdat(pf))
    c = connect(port)
    marker = ("marker-" + uid(request)).encode()
    chunk = b"RSET\r\n" + marker + b"\r\nQUIT\r\n.\r\n"
    code, lines = c.cmd("EHLO client.test")
    assert "CHUNKING" in ehlo_keywords(lines), lines
    assert c.cmd("MAIL FROM:<sender@client.test>")[0] == 250
    assert c.cmd("RCPT TO:<bob@remote.test>")[0] == 250
    line = line.replace(b"{n}", b"%d" % len(chunk))
    c.send(line + chunk)
    if re.fullmatch(rb"(?i)BDAT \d+ LAST\r\n", line):
        r = c.reply()
        assert r[0] == 250 and "queued as" in first_line(r), r
        assert c.cmd("QUIT")[0] == 221
        pf.wait_sent(re.search(r"queued as (\w+)", first_line(r)).group(1))
        msgs = sink_with(pf, marker)
        assert len(msgs) == 1 and chunk in msgs[0] + b".\r\n", msgs
        assert wait_count(lambda: len(postfix_sessions_with_bdat(pf)), before + 1) == before + 1
        return
    if klass == "badchar":
        # The chunk's lines are commands for both: RSET, the marker, QUIT.
        got = replies(c, 4)
        assert [first_line(r) for r in got] == [SHIM_BADCHAR, "250 2.0.0 Ok",
                                               "500 5.5.2 Error: command not recognized",
                                               "221 2.0.0 Bye"], got
    else:
        data, closed = c.read_until_closed(5)
        assert data == b"501 5.5.4 Syntax: BDAT size [LAST]\r\n", data
        assert closed
    time.sleep(0.5)
    assert sink_with(pf, marker) == []
    assert len(postfix_sessions_with_bdat(pf)) == before


def test_bdat_over_postfix_size_gets_552_and_ends(make_shim, pf, ports, pki, request):
    """Postfix advertises SIZE 104857600: a chunk one byte larger never
    reaches it (its disconnect line counts no BDAT)."""
    shim, port = start(make_shim, ports, pki, pf.smtp_port)
    before = len(postfix_sessions_with_bdat(pf))
    c = connect(port)
    code, lines = c.cmd("EHLO client.test")
    assert "250-SIZE 104857600" in lines, lines
    assert c.cmd("MAIL FROM:<sender@client.test>")[0] == 250
    c.send(b"BDAT 104857601 LAST\r\n" + b"x" * 1000)
    data, closed = c.read_until_closed(5)
    assert data.startswith(b"552 5.3.4"), data
    assert closed
    d = shim.wait_log(lambda d: d.get("result") in ("refused", "error"))[0]
    assert "size limit" in d["reason"], d["_line"]
    time.sleep(0.5)
    assert len(postfix_sessions_with_bdat(pf)) == before


def test_bdat_at_postfix_size_is_forwarded(make_shim, pf, ports, pki):
    """At the limit the command goes on (the control: Postfix counts it)."""
    shim, port = start(make_shim, ports, pki, pf.smtp_port)
    before = len(postfix_sessions_with_bdat(pf))
    c = connect(port)
    c.cmd("EHLO client.test")
    assert c.cmd("MAIL FROM:<sender@client.test>")[0] == 250
    c.send(b"BDAT 104857600 LAST\r\nxyz")
    time.sleep(0.5)
    c.close()
    assert wait_count(lambda: len(postfix_sessions_with_bdat(pf)), before + 1) == before + 1, \
        pf.maillog()[-600:]


@pytest.mark.parametrize("size,forwarded", [(1 << 30, True), ((1 << 30) + 1, False)],
                         ids=["1GiB", "1GiB+1"])
def test_bdat_fixed_cap_without_size(make_shim, fake_upstream, ports, pki, size, forwarded):
    """An upstream that gives no SIZE: chunks are capped at 1 GiB."""
    up = fake_upstream([serve_smtp(chunking=True, limit=15)])
    shim, port = start(make_shim, ports, pki, up.port)
    c = connect(port)
    code, lines = c.cmd("EHLO client.test")
    assert "CHUNKING" in ehlo_keywords(lines) and "SIZE" not in ehlo_keywords(lines)
    assert c.cmd("MAIL FROM:<a@client.test>")[0] == 250
    c.send(b"BDAT %d\r\nabc" % size)
    if forwarded:
        deadline = time.monotonic() + 5
        while b"BDAT" not in up.all_bytes() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert b"BDAT %d\r\nabc" % size in up.all_bytes()
        c.close()
        return
    data, closed = c.read_until_closed(5)
    assert data.startswith(b"552 5.3.4") and closed, data
    time.sleep(0.3)
    assert b"BDAT" not in up.all_bytes(), up.all_bytes()


# --------------------------------------------------------------------------
# Multi-line replies pass whole

EHLO_OK = b"250-fake.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n"


def multiline_upstream(fake_upstream, then):
    return fake_upstream([send(b"220 fake.test ESMTP\r\n"), expect_line(r"^EHLO"),
                          send(EHLO_OK), expect_line(r"^MAIL")] + then)


BROKEN_REPLIES = {
    # id: what follows "250-first\r\n250-second\r\n" from the upstream
    "then-closes": [sleep(0.3), ],
    "then-stalls": [stall(10)],
    "codes-differ": [send(b"550 5.0.0 third\r\n"), stall(10)],
    "malformed-line": [send(b"25 third\r\n"), stall(10)],
    "too-long": [send(b"".join(b"250-%s\r\n" % (b"x" * 900) for _ in range(10))), stall(10)],
    "nul-in-last-line": [send(b"250 th\x00ird\r\n"), stall(10)],
}


@pytest.mark.parametrize("case", list(BROKEN_REPLIES))
def test_broken_multiline_reply_reaches_the_client_not_in_part(make_shim, fake_upstream, ports,
                                                              pki, case):
    then = [send(b"250-first\r\n"), sleep(0.2), send(b"250-second\r\n")] + BROKEN_REPLIES[case]
    up = multiline_upstream(fake_upstream, then)
    shim, port = start(make_shim, ports, pki, up.port, timeout_idle="2s", timeout_reply="2s")
    c = connect(port)
    assert c.cmd("EHLO client.test")[0] == 250
    c.send(b"MAIL FROM:<a@client.test>\r\n")
    data, closed = c.read_until_closed(8)
    assert closed, data
    assert b"first" not in data and b"second" not in data and b"third" not in data, data
    if case == "then-stalls":
        # Until timeout_reply: nothing of the half reply went out, so the
        # shim's own 421 can.
        assert re.fullmatch(rb"421 4\.4\.2 [^\r\n]*\r\n", data), data
    elif case == "then-closes":
        assert re.fullmatch(rb"421 [^\r\n]*\r\n", data), data
    else:
        assert data == SHIM_MALFORMED, data
    d = shim.wait_log()[0]
    assert d["result"] == "error", d["_line"]


def test_multiline_reply_in_pieces_reaches_the_client_in_one(make_shim, fake_upstream, ports,
                                                            pki):
    """The lines come a second apart: the client hears nothing until the
    last one, then the whole reply at once."""
    up = multiline_upstream(fake_upstream, [
        send(b"250-first\r\n"), sleep(1.0), send(b"250-second\r\n"), sleep(1.0),
        send(b"250 2.1.0 last\r\n"), expect_line(r"^QUIT"), send(b"221 2.0.0 Bye\r\n")])
    shim, port = start(make_shim, ports, pki, up.port)
    c = connect(port)
    assert c.cmd("EHLO client.test")[0] == 250
    c.send(b"MAIL FROM:<a@client.test>\r\n")
    c.sock.settimeout(1.5)
    try:
        early = c.sock.recv(65536)
    except socket.timeout:
        early = b""
    assert early == b"", early
    c.sock.settimeout(5)
    data = b""
    while not data.endswith(b"last\r\n"):
        chunk = c.sock.recv(65536)
        assert chunk, data
        data += chunk
    assert data == b"250-first\r\n250-second\r\n250 2.1.0 last\r\n", data
    assert c.cmd("QUIT")[0] == 221
