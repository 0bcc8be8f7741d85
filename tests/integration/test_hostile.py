"""mailshim against hostile peers: injection around STARTTLS in both
directions, STARTTLS stripping, stalls, over-long and malformed lines,
resets in the middle of a message, SMTP smuggling and BDAT.

Every case must end in a clean refusal or error that the log line
explains, and no byte of mail may reach the upstream that should not
(fake upstreams record everything they receive, and whether TLS carried
it)."""

import random
import re
import time

import pytest

from harness import service
from clients import smtp_send
from messages import make_message, sha256
from hostile import (close, expect_closed, expect_line, expect_reply, read_until, reset, send,
                     send_bulk, serve_smtp, sleep, stall, starttls)

SECRET = b"MAIL FROM:<secret@client.test>"


def start(make_shim, ports, pki, up_port, listen="plain", upstream="plain", **extra):
    """A shim with one service in front of up_port; (shim, port)."""
    port = ports.get()
    extra.setdefault("timeout_idle", "10s")
    extra.setdefault("timeout_handshake", "5s")
    shim = make_shim({"hostile": service(port, up_port, listen, upstream, pki, **extra)})
    return shim, port


def ended(shim, results=("refused", "error"), reason=None, timeout=10):
    """The session's log line: its result is one of results and it says
    why (reason matching the regex when given)."""
    d = shim.wait_log(lambda d: d.get("result") in results, timeout)[0]
    assert d.get("reason"), d["_line"]
    if reason:
        assert re.search(reason, d["reason"], re.I), d["_line"]
    return d


def only_session(shim, d):
    lines = shim.log_lines()
    assert len(lines) == 1, [l["_line"] for l in lines]
    return d


def still_serving(port, seed=0):
    """A normal message still goes through; returns (test id, message)."""
    tid, msg = make_message(3000, seed, "mixed")
    code, text = smtp_send(port, msg)
    assert code == 250, text
    return tid, msg


def send_quietly(c, data):
    """Send; False when the shim has closed the connection already."""
    try:
        c.sock.sendall(data)
        return True
    except OSError:
        return False


def greeting_ehlo_reply(starttls=True, name=b"fake.test"):
    lines = [b"250-" + name + b"\r\n", b"250-PIPELINING\r\n"]
    if starttls:
        lines.append(b"250-STARTTLS\r\n")
    lines.append(b"250 8BITMIME\r\n")
    return b"".join(lines)


# --------------------------------------------------------------------------
# Injection after STARTTLS


@pytest.mark.parametrize("plain_from", [None, "127.0.0.0/8"], ids=["tls-required", "plain-allowed"])
def test_client_commands_pipelined_after_starttls_are_dropped(
        make_shim, fake_upstream, fake_client, ports, pki, plain_from):
    """CVE-2011-0411 family: commands sent in the same plaintext packet as
    STARTTLS must never be acted on, before or after TLS."""
    up = fake_upstream([serve_smtp()])
    shim, port = start(make_shim, ports, pki, up.port, listen="starttls",
                       listen_plain_from=plain_from)
    c = fake_client(port)
    c.run([expect_reply(r"^220 "), send("EHLO client.test\r\n"),
           expect_reply(rb"(?m)^250[ -]STARTTLS\r$")])
    c.send(b"STARTTLS\r\n" + SECRET + b"\r\nRCPT TO:<victim@legacy.test>\r\nDATA\r\n")
    data, closed = c.read_until_closed(5)
    assert closed, "connection still open after an injection: %r" % data
    assert b"250" not in data and b"354" not in data, data
    d = ended(shim, ("refused",), r"injection")
    only_session(shim, d)
    assert d["listen_tls"] == "none", d
    time.sleep(0.3)
    got = up.all_bytes()
    assert b"secret@client.test" not in got and b"RCPT" not in got and b"DATA" not in got, got
    assert up.messages() == []


def test_client_injection_then_handshake_gets_nothing(make_shim, fake_upstream, fake_client,
                                                       ports, pki):
    """The attacker injects, the victim's client then tries its TLS
    handshake: the shim has dropped the connection, no TLS comes up."""
    up = fake_upstream([serve_smtp()])
    shim, port = start(make_shim, ports, pki, up.port, listen="starttls",
                       listen_plain_from="127.0.0.0/8")
    c = fake_client(port)
    c.run([expect_reply(r"^220 "), send("EHLO client.test\r\n"), expect_reply(r"^250 ")])
    c.send(b"STARTTLS\r\nEHLO evil.test\r\n" + SECRET + b"\r\n")
    time.sleep(0.2)
    with pytest.raises((OSError, AssertionError)):
        c.run([starttls()])
    ended(shim, ("refused",), r"injection")
    assert b"secret@client.test" not in up.all_bytes()
    assert b"evil.test" not in up.all_bytes()


@pytest.mark.parametrize("listen", ["plain", "implicit"])
def test_upstream_bytes_after_its_starttls_220_are_refused(make_shim, fake_upstream, fake_client,
                                                           ports, pki, listen):
    """Response injection (CVE-2021-33515 family): the upstream sends more
    after its 220 to STARTTLS, in the same plaintext packet."""
    up = fake_upstream([send(b"220 fake.test ESMTP\r\n"), expect_line(r"^EHLO "),
                        send(greeting_ehlo_reply()), expect_line(r"^STARTTLS\r\n$"),
                        send(b"220 2.0.0 go ahead\r\n250 2.0.0 injected\r\n"), stall(10)])
    shim, port = start(make_shim, ports, pki, up.port, listen=listen, upstream="starttls")
    c = fake_client(port, tls="implicit" if listen == "implicit" else None)
    # The client talks at once; none of it may reach the upstream.
    c.send(b"EHLO client.test\r\n" + SECRET + b"\r\n")
    data, closed = c.read_until_closed(8)
    assert data.startswith(b"421 4.7.0"), data
    assert closed
    assert b"injected" not in data and b"fake.test" not in data, data
    d = ended(shim, ("refused",), r"injection")
    only_session(shim, d)
    assert d["upstream_auth"] == "none", d
    up.wait_done(1)
    assert up.plaintext() == b"EHLO shim.test\r\nSTARTTLS\r\n", up.plaintext()
    assert up.conns[0].tls_bytes() == b""


def test_control_client_starttls_alone_then_commands_in_tls(make_shim, fake_upstream,
                                                            fake_client, ports, pki):
    """The counterpart of the injection cases: STARTTLS on its own, the
    handshake, then the same commands inside TLS are relayed."""
    up = fake_upstream([serve_smtp()])
    shim, port = start(make_shim, ports, pki, up.port, listen="starttls")
    c = fake_client(port)
    c.run([expect_reply(r"^220 "), send("EHLO client.test\r\n"),
           expect_reply(rb"(?m)^250[ -]STARTTLS\r$"), send("STARTTLS\r\n"),
           expect_reply(r"^220 2\.0\.0"), starttls(), send("EHLO client.test\r\n")])
    r = c.reply()
    assert r.startswith(b"250") and b"STARTTLS" not in r, r
    c.run([send(SECRET + b"\r\n"), expect_reply(r"^250"), send("QUIT\r\n"),
           expect_reply(r"^221"), expect_closed(5)])
    c.close()
    d = shim.wait_log()[0]
    assert d["result"] == "ok" and d["listen_tls"] in ("TLSv1.2", "TLSv1.3"), d["_line"]
    assert b"secret@client.test" in up.all_bytes()


def test_control_upstream_starttls_carries_client_only_in_tls(make_shim, fake_upstream,
                                                              fake_client, ports, pki):
    """The counterpart of the stripping cases: a fake upstream that does
    STARTTLS properly gets the shim's EHLO and STARTTLS in plaintext and
    every byte of the client inside TLS."""
    up = fake_upstream([send(b"220 fake.test ESMTP\r\n"), expect_line(r"^EHLO "),
                        send(greeting_ehlo_reply()), expect_line(r"^STARTTLS\r\n$"),
                        send(b"220 2.0.0 go ahead\r\n"), starttls(),
                        serve_smtp(greet=False)])
    shim, port = start(make_shim, ports, pki, up.port, upstream="starttls")
    c = fake_client(port)
    c.send(b"EHLO client.test\r\n")
    c.run([expect_reply(r"^220 fake\.test ESMTP"), expect_reply(r"^250 "),
           send(SECRET + b"\r\nRCPT TO:<b@legacy.test>\r\nDATA\r\n"),
           expect_reply(r"^250"), expect_reply(r"^250"), expect_reply(r"^354"),
           send(b"Subject: tls\r\n\r\nsecret body\r\n.\r\n"), expect_reply(r"^250"),
           send("QUIT\r\n"), expect_reply(r"^221"), expect_closed(5)])
    c.close()
    up.wait_done(1)
    assert up.plaintext() == b"EHLO shim.test\r\nSTARTTLS\r\n", up.plaintext()
    assert up.conns[0].tls_bytes().startswith(b"EHLO client.test\r\n" + SECRET)
    assert up.messages() == [b"Subject: tls\r\n\r\nsecret body\r\n"]
    d = shim.wait_log()[0]
    assert d["result"] == "ok" and d["upstream_auth"] == "ca", d["_line"]
    assert d["upstream_tls"] in ("TLSv1.2", "TLSv1.3"), d["_line"]


# --------------------------------------------------------------------------
# STARTTLS stripped or refused by the upstream

STRIP_CASES = {
    # id: (upstream script, reason regex)
    "no-starttls-offered": (
        [send(b"220 fake.test ESMTP\r\n"), expect_line(r"^EHLO "),
         send(greeting_ehlo_reply(starttls=False)), stall(10)],
        r"no STARTTLS|STARTTLS"),
    "starttls-454": (
        [send(b"220 fake.test ESMTP\r\n"), expect_line(r"^EHLO "),
         send(greeting_ehlo_reply()), expect_line(r"^STARTTLS"),
         send(b"454 4.7.0 TLS not available due to local problem\r\n"), stall(10)],
        r"STARTTLS"),
    "ehlo-refused": (
        [send(b"220 fake.test ESMTP\r\n"), expect_line(r"^EHLO "),
         send(b"502 5.5.2 Error: command not recognized\r\n"), stall(10)],
        r"EHLO|STARTTLS"),
    "greeting-554": (
        [send(b"554 5.3.2 fake.test no service\r\n"), stall(10)],
        r"greeting|220|STARTTLS"),
    "starttls-offered-in-greeting-only": (
        [send(b"220 fake.test ESMTP STARTTLS\r\n"), expect_line(r"^EHLO "),
         send(b"250-fake.test\r\n250-X-STARTTLS\r\n250 STARTTLS-NOT\r\n"), stall(10)],
        r"STARTTLS"),
}


@pytest.mark.parametrize("case", list(STRIP_CASES))
def test_starttls_stripped_is_refused(make_shim, fake_upstream, fake_client, ports, pki, case):
    script, why = STRIP_CASES[case]
    up = fake_upstream(script)
    shim, port = start(make_shim, ports, pki, up.port, upstream="starttls")
    c = fake_client(port)
    c.send(b"EHLO client.test\r\n" + SECRET + b"\r\n")
    data, closed = c.read_until_closed(8)
    assert data.startswith(b"421 4.7.0"), data
    assert data.count(b"\r\n") == 1, data
    assert closed
    d = ended(shim, ("refused",), why)
    only_session(shim, d)
    assert d["upstream_tls"] == "none" and d["upstream_auth"] == "none", d
    up.wait_done(1)
    # Only the shim's own dialogue went out in plaintext; nothing of the client.
    plain = up.plaintext()
    assert re.fullmatch(rb"(EHLO shim\.test\r\n(STARTTLS\r\n)?)?", plain), plain
    assert b"client" not in up.all_bytes()


# --------------------------------------------------------------------------
# Stalls


@pytest.mark.parametrize("where", ["ehlo", "mail"])
def test_upstream_stalls_mid_reply(make_shim, fake_upstream, fake_client, ports, pki, where):
    """The upstream sends the first line of a multi-line reply and nothing
    more: the client is closed once timeout_reply passes (a reply is
    owed; nothing of the shim's own follows half a reply)."""
    if where == "ehlo":
        script = [send(b"220 fake.test ESMTP\r\n"), expect_line(r"^EHLO"),
                  send(b"250-first line\r\n"), stall(20)]
    else:
        script = [send(b"220 fake.test ESMTP\r\n"), expect_line(r"^EHLO"),
                  send(greeting_ehlo_reply(False)), expect_line(r"^MAIL"),
                  send(b"250-first line\r\n"), stall(20)]
    up = fake_upstream(script)
    shim, port = start(make_shim, ports, pki, up.port, timeout_idle="2s", timeout_reply="2s")
    c = fake_client(port)
    c.run([expect_reply(r"^220 "), send("EHLO client.test\r\n")])
    if where == "mail":
        c.run([expect_reply(r"^250 "), send("MAIL FROM:<a@client.test>\r\n")])
    t0 = time.monotonic()
    data, closed = c.read_until_closed(10)
    elapsed = time.monotonic() - t0
    assert closed and elapsed < 5, "open after %.1fs: %r" % (elapsed, data)
    assert elapsed > 1.5, "closed after %.1fs, before timeout_reply" % elapsed
    # An EHLO reply is only relayed whole (it is rewritten in one write).
    if where == "ehlo":
        assert b"first line" not in data, data
    ended(shim, ("error",), r"timeout|idle")


@pytest.mark.parametrize("upstream", ["plain", "starttls"])
def test_upstream_stalls_mid_greeting(make_shim, fake_upstream, fake_client, ports, pki,
                                      upstream):
    """Half a greeting then silence: timeout_handshake bounds the upstream
    STARTTLS dialogue (a 421 follows); timeout_reply bounds a plain relay
    (the greeting is a reply the upstream owes)."""
    up = fake_upstream([send(b"220-fake.test hello\r\n"), stall(20)])
    shim, port = start(make_shim, ports, pki, up.port, upstream=upstream,
                       timeout_handshake="1s", timeout_idle="3s", timeout_reply="3s")
    c = fake_client(port)
    t0 = time.monotonic()
    data, closed = c.read_until_closed(10)
    elapsed = time.monotonic() - t0
    assert closed, data
    if upstream == "starttls":
        assert 0.8 < elapsed < 3, elapsed
        assert re.fullmatch(rb"421 4\.\d\.\d [^\r\n]*\r\n", data), data
        ended(shim, ("error", "refused"), r"timeout")
    else:
        assert 2.5 < elapsed < 6, elapsed
        assert data in (b"", b"220-fake.test hello\r\n") or data.startswith(b"421 "), data
        ended(shim, ("error",), r"timeout|idle")


# --------------------------------------------------------------------------
# Over-long lines


def test_overlong_command_lines_get_500_and_the_session_goes_on(make_shim, fake_upstream,
                                                                fake_client, ports, pki):
    up = fake_upstream([serve_smtp()])
    shim, port = start(make_shim, ports, pki, up.port)
    c = fake_client(port)
    c.run([expect_reply(r"^220 "), send("EHLO client.test\r\n"), expect_reply(r"^250 ")])
    # 5000 bytes with CRLF.
    r = c.cmd(b"NOOP " + b"X" * 4995)
    assert r.startswith(b"500 5.5.2"), r
    assert c.cmd("NOOP").startswith(b"250"), "session did not go on"
    # 1 MiB before the CRLF, then a pipelined NOOP in the same stream.
    c.send(b"Y" * (1 << 20) + b"\r\nNOOP\r\n")
    r = c.reply(15)
    assert r.startswith(b"500 5.5.2"), r
    r = c.reply(10)
    assert r.startswith(b"250"), "a second reply to the 1 MiB line? %r" % r
    assert c.cmd("MAIL FROM:<a@client.test>").startswith(b"250")
    assert c.cmd("QUIT").startswith(b"221")
    assert c.read_until_closed(5)[1]
    c.close()
    got = up.all_bytes()
    assert b"XXXX" not in got and b"YYYY" not in got, "part of an over-long line went upstream"
    assert got.count(b"NOOP") == 2, got
    d = shim.wait_log()[0]
    only_session(shim, d)
    assert int(d["bytes_in"]) >= (1 << 20), d


def test_command_line_limit_is_4096_with_crlf(make_shim, fake_upstream, fake_client, ports, pki):
    up = fake_upstream([serve_smtp()])
    shim, port = start(make_shim, ports, pki, up.port)
    c = fake_client(port)
    c.run([expect_reply(r"^220 "), send("EHLO client.test\r\n"), expect_reply(r"^250 ")])
    fits = b"NOOP " + b"a" * (4096 - 7)          # 4096 with CRLF
    assert c.cmd(fits).startswith(b"250"), "a 4096-byte line was refused"
    over = b"NOOP " + b"b" * (4097 - 7)          # 4097 with CRLF
    assert c.cmd(over).startswith(b"500 5.5.2"), "a 4097-byte line was accepted"
    assert c.cmd("QUIT").startswith(b"221")
    got = up.all_bytes()
    assert fits + b"\r\n" in got and b"bbbb" not in got


def test_client_sends_1mib_without_newline(make_shim, fake_upstream, fake_client, ports, pki):
    up = fake_upstream([serve_smtp()])
    shim, port = start(make_shim, ports, pki, up.port, timeout_idle="2s")
    c = fake_client(port)
    c.run([expect_reply(r"^220 "), send_bulk(b"A" * (1 << 20), stall=3, limit=15)])
    assert c.bulk_sent == 1 << 20, "the shim stopped reading a line it skips"
    r = c.reply(5)
    assert r == b"500 5.5.2 line too long\r\n", r
    data, closed = c.read_until_closed(8)
    assert closed and data == b"", data
    ended(shim, ("error",), r"timeout|idle")
    assert b"AAAA" not in up.all_bytes()
    assert shim.proc.alive()


@pytest.mark.parametrize("where", ["greeting", "ehlo", "noop"])
def test_upstream_1mib_reply_line(make_shim, fake_upstream, fake_client, ports, pki, where):
    huge = b"250 " + b"z" * (1 << 20) + b"\r\n"
    script = {
        "greeting": [send_bulk(b"220 " + b"z" * (1 << 20) + b"\r\n"), stall(10)],
        "ehlo": [send(b"220 fake.test ESMTP\r\n"), expect_line(r"^EHLO"),
                 send_bulk(b"250-" + b"z" * (1 << 20) + b"\r\n250 8BITMIME\r\n"), stall(10)],
        "noop": [send(b"220 fake.test ESMTP\r\n"), expect_line(r"^EHLO"),
                 send(greeting_ehlo_reply(False)), expect_line(r"^NOOP"), send_bulk(huge),
                 stall(10)],
    }[where]
    up = fake_upstream(script)
    shim, port = start(make_shim, ports, pki, up.port, timeout_idle="3s")
    c = fake_client(port)
    if where != "greeting":
        c.run([expect_reply(r"^220 "), send("EHLO client.test\r\n")])
    if where == "noop":
        c.run([expect_reply(r"^250 "), send("NOOP\r\n")])
    # At once, not after a timeout; then the connection closes.
    r = c.reply(2)
    assert r == b"421 4.4.0 upstream sent a malformed reply\r\n", r[:200]
    data, closed = c.read_until_closed(10)
    assert closed and data == b"", data[:200]
    ended(shim, ("error",), r"malformed|too long")
    assert shim.proc.alive()


def test_upstream_multiline_reply_over_the_limit_ends_the_session(make_shim, fake_upstream,
                                                                  fake_client, ports, pki):
    """Replies are relayed whole, so their length is bounded (8 KiB): a
    valid 70 KiB multi-line reply arriving in one burst (more than a relay
    buffer) ends the session, and the client gets the 421 alone, nothing
    of the reply."""
    reply = b"".join(b"214-help line %04d %s\r\n" % (i, b"h" * 50) for i in range(1000))
    reply += b"214 2.0.0 end of help\r\n"
    up = fake_upstream([send(b"220 fake.test ESMTP\r\n"), expect_line(r"^HELP"),
                        send(reply), stall(10)])
    shim, port = start(make_shim, ports, pki, up.port, timeout_idle="5s")
    c = fake_client(port)
    c.run([expect_reply(r"^220 "), send("HELP\r\n")])
    data, closed = c.read_until_closed(8)
    assert closed, data[:200]
    assert data == b"421 4.4.0 upstream sent a malformed reply\r\n", data[:200]
    ended(shim, ("error",), r"too long")


def test_upstream_multiline_reply_at_the_limit_is_relayed(make_shim, fake_upstream, fake_client,
                                                          ports, pki):
    """Just under the bound, a multi-line reply in one burst reaches the
    client whole, and the session goes on."""
    reply = b"".join(b"214-help line %04d %s\r\n" % (i, b"h" * 50) for i in range(110))
    reply += b"214 2.0.0 end of help\r\n"
    assert 7000 < len(reply) <= 8192
    up = fake_upstream([send(b"220 fake.test ESMTP\r\n"), expect_line(r"^HELP"),
                        send(reply), expect_line(r"^QUIT"), send(b"221 2.0.0 Bye\r\n"),
                        close()])
    shim, port = start(make_shim, ports, pki, up.port, timeout_idle="5s")
    c = fake_client(port)
    c.run([expect_reply(r"^220 "), send("HELP\r\n")])
    got = c.reply(8)
    assert got == reply, "%d of %d bytes" % (len(got), len(reply))
    assert c.cmd("QUIT").startswith(b"221")
    assert c.read_until_closed(5)[1]
    c.close()
    d = shim.wait_log()[0]
    assert d["result"] == "ok", d["_line"]


# --------------------------------------------------------------------------
# Resets in the middle of a message


def test_client_reset_mid_data(make_shim, aiosmtpd, fake_client, ports, pki):
    up = aiosmtpd("plain")
    shim, port = start(make_shim, ports, pki, up.port)
    tid, msg = make_message(200000, 5, "text")
    c = fake_client(port)
    c.run([expect_reply(r"^220 "), send("EHLO client.test\r\n"), expect_reply(r"^250 "),
           send("MAIL FROM:<a@client.test>\r\n"), expect_reply(r"^250"),
           send("RCPT TO:<b@legacy.test>\r\n"), expect_reply(r"^250"),
           send("DATA\r\n"), expect_reply(r"^354"),
           send(msg[:100000]), sleep(0.3), reset()])
    ended(shim, ("error",), r"client")
    time.sleep(1.0)
    assert up.count() == 0, up.ids()
    # And the shim serves the next client.
    tid2, msg2 = still_serving(port, seed=6)
    assert up.message(tid2) == msg2
    assert up.count() == 1


def test_upstream_reset_mid_data(make_shim, fake_upstream, fake_client, ports, pki):
    up = fake_upstream([serve_smtp(stop_after=r"^DATA"), read_until(rb"x{900}"), reset()],
                       rcvbuf=8192)
    shim, port = start(make_shim, ports, pki, up.port)
    c = fake_client(port)
    c.run([expect_reply(r"^220 "), send("EHLO client.test\r\n"), expect_reply(r"^250 "),
           send("MAIL FROM:<a@client.test>\r\n"), expect_reply(r"^250"),
           send("RCPT TO:<b@legacy.test>\r\n"), expect_reply(r"^250"),
           send("DATA\r\n"), expect_reply(r"^354"),
           send_bulk((b"x" * 998 + b"\r\n") * 1000 + b".\r\n", stall=3, limit=10)])
    t0 = time.monotonic()
    data, closed = c.read_until_closed(10)
    assert closed, "client left hanging after the upstream's reset: %r" % data
    assert time.monotonic() - t0 < 5
    assert data == b"" or re.fullmatch(rb"4\d\d [^\r\n]*\r\n", data), data
    ended(shim, ("error",), r"upstream")
    assert up.messages() == []


# --------------------------------------------------------------------------
# Malformed upstream replies

EHLO_OK = greeting_ehlo_reply(False)
MALFORMED = {
    # id: (where, bad bytes, marker the client must never see)
    "code-2x0": ("greeting", b"2x0 fake.test ok\r\n", b"2x0"),
    "code-199": ("mail", b"199 2.0.0 ok\r\n", b"199"),
    "code-600": ("mail", b"600 2.0.0 ok\r\n", b"600"),
    "no-code": ("greeting", b"hello there\r\n", b"hello"),
    "empty-line": ("mail", b"\r\n", None),
    "garbage-after-250": ("mail", b"250 2.1.0 ok\r\n%%garbage%%\r\n", b"garbage"),
    "mismatched-ehlo": ("ehlo", b"250-fake.test\r\n251-PIPELINING\r\n250 8BITMIME\r\n",
                        b"PIPELINING"),
    "mismatched-mail": ("mail", b"250-2.1.0 first\r\n550 5.1.0 second\r\n", b"second"),
    "nul": ("mail", b"250 2.1.0 o\x00k\r\n", b"\x00"),
    "nul-greeting": ("greeting", b"220 fake.test\x00ESMTP\r\n", b"\x00"),
    "bare-cr": ("mail", b"250 2.1.0 ok\rmore\r\n", b"more"),
    "bare-cr-ehlo": ("ehlo", b"250-fake.test\r\n250-PIPELINING\rX\r\n250 8BITMIME\r\n", b"\rX"),
    "no-space-after-code": ("mail", b"250ok\r\n", b"250ok"),
}


def malformed_scripts(where, bad):
    head = {"greeting": [],
            "ehlo": [send(b"220 fake.test ESMTP\r\n"), expect_line(r"^EHLO")],
            "mail": [send(b"220 fake.test ESMTP\r\n"), expect_line(r"^EHLO"), send(EHLO_OK),
                     expect_line(r"^MAIL")]}[where]
    return head + [send(bad), stall(10)]


def client_until(c, where):
    if where in ("ehlo", "mail"):
        c.run([expect_reply(r"^220 "), send("EHLO client.test\r\n")])
    if where == "mail":
        c.run([expect_reply(r"^250 "), send("MAIL FROM:<a@client.test>\r\n")])


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_upstream_reply(make_shim, fake_upstream, fake_client, ports, pki, case):
    where, bad, marker = MALFORMED[case]
    up = fake_upstream(malformed_scripts(where, bad))
    shim, port = start(make_shim, ports, pki, up.port)
    c = fake_client(port)
    client_until(c, where)
    data, closed = c.read_until_closed(8)
    assert closed, data
    assert data.endswith(b"421 4.4.0 upstream sent a malformed reply\r\n"), data
    if marker:
        assert marker not in data, data
    ended(shim, ("error",), r"malformed")
    assert shim.proc.alive()


@pytest.mark.parametrize("upstream", ["implicit", "starttls"])
def test_malformed_reply_inside_upstream_tls(make_shim, fake_upstream, fake_client, ports, pki,
                                             upstream):
    """Inside TLS the replies are checked as strictly as in plaintext."""
    if upstream == "implicit":
        up = fake_upstream([send(b"220 fake.test ESMTP\r\n"), expect_line(r"^EHLO"),
                            send(b"250-fake.test\r\n250 8BIT\x00MIME\r\n"), stall(10)],
                           tls="implicit")
    else:
        up = fake_upstream([send(b"220 fake.test ESMTP\r\n"), expect_line(r"^EHLO "),
                            send(greeting_ehlo_reply()), expect_line(r"^STARTTLS"),
                            send(b"220 2.0.0 go ahead\r\n"), starttls(), expect_line(r"^EHLO"),
                            send(b"250-fake.test\r\n250 8BIT\x00MIME\r\n"), stall(10)])
    shim, port = start(make_shim, ports, pki, up.port, upstream=upstream)
    c = fake_client(port)
    c.run([expect_reply(r"^220 "), send("EHLO client.test\r\n")])
    data, closed = c.read_until_closed(8)
    assert closed, data
    assert data == b"421 4.4.0 upstream sent a malformed reply\r\n", data
    d = ended(shim, ("error",), r"malformed")
    assert d["upstream_auth"] == "ca", d["_line"]
    assert up.conns[0].tls_bytes().startswith(b"EHLO client.test"), up.conns[0].transcript()


@pytest.mark.parametrize("then", ["close", "stall"])
def test_upstream_reply_without_line_end(make_shim, fake_upstream, fake_client, ports, pki, then):
    """A reply line never finished: the client must not get half of it,
    and the session must end as an error, whether the upstream then
    leaves or stays silent."""
    up = fake_upstream([send(b"220 fake.test ESMTP\r\n"), expect_line(r"^EHLO"),
                        send(EHLO_OK), expect_line(r"^MAIL"), send(b"250 2.1.0 never ends"),
                        sleep(0.5), close() if then == "close" else stall(10)])
    shim, port = start(make_shim, ports, pki, up.port, timeout_idle="2s", timeout_reply="2s")
    c = fake_client(port)
    client_until(c, "mail")
    data, closed = c.read_until_closed(8)
    assert closed, data
    assert b"never ends" not in data, data
    assert data == b"" or re.fullmatch(rb"4\d\d [^\r\n]*\r\n", data), data
    # The client has nothing more to say; it leaves.
    c.close()
    d = ended(shim, ("error", "refused"))
    only_session(shim, d)


# --------------------------------------------------------------------------
# Hostile clients

BAD_COMMANDS = [b"NOOP\x00\r\n", b"MAIL FROM:<a@client.test>\x00RCPT TO:<b@x>\r\n",
                b"NOOP\rRSET\r\n", b"\x00\r\n", b"RSET\r\rQUIT\r\n"]


def test_invalid_characters_in_commands(make_shim, fake_upstream, fake_client, ports, pki):
    up = fake_upstream([serve_smtp()])
    shim, port = start(make_shim, ports, pki, up.port)
    c = fake_client(port)
    c.run([expect_reply(r"^220 "), send("EHLO client.test\r\n"), expect_reply(r"^250 ")])
    for line in BAD_COMMANDS:
        c.send(line)
        r = c.reply()
        assert r == b"500 5.5.2 invalid character in command\r\n", (line, r)
    assert c.cmd("NOOP").startswith(b"250")
    assert c.cmd("QUIT").startswith(b"221")
    got = up.all_bytes()
    assert b"\x00" not in got and b"\r\r" not in got and b"RSET" not in got, got
    assert re.fullmatch(rb"EHLO client\.test\r\nNOOP\r\nQUIT\r\n", got), got


def test_client_sending_only_garbage(make_shim, fake_upstream, fake_client, ports, pki):
    up = fake_upstream([serve_smtp()])
    shim, port = start(make_shim, ports, pki, up.port, timeout_idle="2s")
    garbage = random.Random(1).randbytes(256 * 1024)
    c = fake_client(port)
    c.run([expect_reply(r"^220 "), send_bulk(garbage, stall=3, limit=20)])
    assert c.bulk_sent == len(garbage), "the shim stopped reading"
    data, closed = c.read_until_closed(15)
    assert closed, "garbage client still connected"
    # Whatever the shim answered is well-formed SMTP.
    for line in data.split(b"\r\n")[:-1]:
        assert re.fullmatch(rb"[2-5]\d\d[ -][\x20-\x7e]*", line), line
    assert data == b"" or data.endswith(b"\r\n")
    d = ended(shim, ("error", "refused"))
    only_session(shim, d)
    got = up.all_bytes()
    assert b"\x00" not in got, "a NUL reached the upstream"
    assert re.search(rb"\r(?!\n)", got) is None, "a bare CR reached the upstream"
    assert all(len(l) <= 4096 for l in got.split(b"\n")), "an over-long line reached the upstream"
    assert up.messages() == []


def test_client_garbage_then_quit_still_served(make_shim, fake_upstream, fake_client, ports, pki):
    """Garbage does not poison the session: what follows is read as SMTP."""
    up = fake_upstream([serve_smtp()])
    shim, port = start(make_shim, ports, pki, up.port)
    c = fake_client(port)
    c.run([expect_reply(r"^220 ")])
    # Binary bytes (NUL and a bare CR among them) in one line; not a TLS
    # record, which the shim may take for a client expecting implicit TLS.
    c.send(b"\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(11, 256)) + b"\r\n")
    r = c.reply()
    assert r.startswith(b"500 5.5.2"), r
    assert c.cmd("EHLO client.test").startswith(b"250")
    assert c.cmd("QUIT").startswith(b"221")
    assert c.read_until_closed(5)[1]
    c.close()
    d = shim.wait_log()[0]
    assert d["result"] == "ok", d["_line"]


# --------------------------------------------------------------------------
# SMTP smuggling

SMUGGLE = {
    "lf-dot-lf": b"\n.\n",
    "crlf-dot-lf": b"\r\n.\n",
    "lf-dot-crlf": b"\n.\r\n",
    "cr-dot-cr": b"\r.\r",
    "crlf-dot-cr": b"\r\n.\r",
}


@pytest.mark.parametrize("split", [False, True], ids=["one-write", "byte-writes"])
@pytest.mark.parametrize("case", list(SMUGGLE))
def test_smtp_smuggling_refused(make_shim, fake_upstream, fake_client, ports, pki, case, split):
    """A body that ends with a non-CRLF dot, then a second transaction:
    against a lenient upstream (like the servers CVE-2023-51764 and its
    family rely on) neither message may complete."""
    up = fake_upstream([serve_smtp(lenient_dot=True)])
    shim, port = start(make_shim, ports, pki, up.port)
    c = fake_client(port)
    c.run([expect_reply(r"^220 "), send("EHLO client.test\r\n"), expect_reply(r"^250 "),
           send("MAIL FROM:<user@client.test>\r\n"), expect_reply(r"^250"),
           send("RCPT TO:<friend@legacy.test>\r\n"), expect_reply(r"^250"),
           send("DATA\r\n"), expect_reply(r"^354")])
    first = b"From: user@client.test\r\nSubject: hello\r\n\r\nhello"
    smuggled = (b"MAIL FROM:<smuggler@evil.test>\r\nRCPT TO:<victim@legacy.test>\r\nDATA\r\n"
                b"From: ceo@legacy.test\r\nSubject: smuggled\r\n\r\npay now\r\n.\r\n")
    tail = SMUGGLE[case] + smuggled + b"QUIT\r\n"
    if split:
        # Each byte around the dot in its own segment (TCP_NODELAY), so
        # the shim sees them in separate reads; it may close meanwhile.
        pieces = [first] + [tail[i:i + 1] for i in range(len(SMUGGLE[case]) + 4)]
        pieces.append(tail[len(SMUGGLE[case]) + 4:])
        for piece in pieces:
            if not send_quietly(c, piece):
                break
            time.sleep(0.05)
    else:
        c.send(first + tail)
    data, closed = c.read_until_closed(8)
    assert re.match(rb"554 5\.5\.2 ", data), data
    assert data.count(b"\r\n") == 1, data
    assert closed
    d = ended(shim, ("refused", "error"), r"smuggl|bare")
    only_session(shim, d)
    up.wait_done(1)
    assert up.messages() == [], up.messages()
    got = up.all_bytes()
    assert b"smuggler" not in got and b"pay now" not in got, got
    assert b"\r\n.\r\n" not in got
    # Of the body, at most what came before the dot went out (the shim may
    # have relayed some of it before the fault showed, or none).
    body = got.split(b"DATA\r\n", 1)[1]
    before_dot = first + SMUGGLE[case].split(b".")[0]
    assert before_dot.startswith(body), body


def test_dot_lines_inside_a_body_are_fine(make_shim, fake_upstream, fake_client, ports, pki):
    """The smuggling check refuses only what could end a body elsewhere:
    stuffed dots and dots inside lines pass byte for byte."""
    up = fake_upstream([serve_smtp(lenient_dot=True)])
    shim, port = start(make_shim, ports, pki, up.port)
    body = (b"Subject: dots\r\n\r\n..\r\n...\r\n.x\r\na.b\r\n. \r\nline\r\n")
    c = fake_client(port)
    c.run([expect_reply(r"^220 "), send("EHLO client.test\r\n"), expect_reply(r"^250 "),
           send("MAIL FROM:<a@client.test>\r\n"), expect_reply(r"^250"),
           send("RCPT TO:<b@legacy.test>\r\n"), expect_reply(r"^250"),
           send("DATA\r\n"), expect_reply(r"^354"), send(body + b".\r\n"),
           expect_reply(r"^250 "), send("QUIT\r\n"), expect_reply(r"^221")])
    up.wait_done(1)
    assert up.messages() == [b"Subject: dots\r\n\r\n.\r\n..\r\nx\r\na.b\r\n \r\nline\r\n"]


# --------------------------------------------------------------------------
# BDAT


def bdat_transaction(c, chunks):
    c.run([expect_reply(r"^220 ")])
    r = c.cmd("EHLO client.test")
    assert re.search(rb"(?m)^250[ -]CHUNKING\r$", r), r
    assert c.cmd("MAIL FROM:<a@client.test>").startswith(b"250")
    assert c.cmd("RCPT TO:<b@legacy.test>").startswith(b"250")
    for i, chunk in enumerate(chunks):
        last = b" LAST" if i == len(chunks) - 1 else b""
        c.send(b"BDAT %d%s\r\n" % (len(chunk), last) + chunk)
        r = c.reply()
        assert r.startswith(b"250"), r


def test_bdat_chunk_with_dot_and_quit_is_delivered_intact(make_shim, fake_upstream, fake_client,
                                                          ports, pki):
    up = fake_upstream([serve_smtp(chunking=True)])
    shim, port = start(make_shim, ports, pki, up.port)
    c = fake_client(port)
    chunk1 = b"Subject: chunks\r\n\r\nfirst\r\n.\r\nQUIT\r\n"
    chunk2 = b"RSET\r\n\n.\n\r.\rMAIL FROM:<evil@x.test>\r\n\x00\xff.\r\n.\r\nQUIT\r\n"
    bdat_transaction(c, [chunk1, chunk2])
    assert c.cmd("NOOP").startswith(b"250"), "the chunk's QUIT was acted on"
    assert c.cmd("QUIT").startswith(b"221")
    assert c.read_until_closed(5)[1]
    c.close()
    up.wait_done(1)
    assert up.messages() == [chunk1 + chunk2]
    cmds = [l.split(None, 1)[0].upper() for l in up.conns[0].commands]
    assert cmds == [b"EHLO", b"MAIL", b"RCPT", b"BDAT", b"BDAT", b"NOOP", b"QUIT"], cmds
    d = shim.wait_log()[0]
    assert d["result"] == "ok", d["_line"]


def test_bdat_without_chunking_upstream_is_refused_and_chunk_skipped(
        make_shim, fake_upstream, fake_client, ports, pki):
    up = fake_upstream([serve_smtp(chunking=False)])
    shim, port = start(make_shim, ports, pki, up.port)
    c = fake_client(port)
    c.run([expect_reply(r"^220 ")])
    r = c.cmd("EHLO client.test")
    assert b"CHUNKING" not in r, r
    assert c.cmd("MAIL FROM:<a@client.test>").startswith(b"250")
    assert c.cmd("RCPT TO:<b@legacy.test>").startswith(b"250")
    chunk = b"QUIT\r\nRSET\r\nDATA\r\n"
    c.send(b"BDAT %d LAST\r\n" % len(chunk) + chunk)
    r = c.reply()
    assert r.startswith(b"502 5.5.1"), r
    assert c.cmd("NOOP").startswith(b"250"), "the refused chunk was read as commands"
    assert c.cmd("QUIT").startswith(b"221")
    up.wait_done(1)
    cmds = [l.split(None, 1)[0].upper() for l in up.conns[0].commands]
    assert cmds == [b"EHLO", b"MAIL", b"RCPT", b"NOOP", b"QUIT"], cmds


@pytest.mark.slow
@pytest.mark.postfix
def test_bdat_through_postfix(make_shim, postfix, fake_client, ports, pki):
    """Postfix offers CHUNKING: a chunk holding CRLF.CRLF and QUIT arrives
    whole at the sink behind it."""
    pf = postfix()
    shim, port = start(make_shim, ports, pki, pf.smtp_port, timeout_idle="30s")
    tid, msg = make_message(2000, 9, "text")
    msg += b"before\r\n.\r\nQUIT\r\nafter\r\n"
    c = fake_client(port)
    bdat_transaction(c, [msg[:700], msg[700:]])
    assert c.cmd("QUIT").startswith(b"221")
    got = pf.sink.wait_message(tid, 30)
    # Postfix adds headers of its own; the body must be intact.
    body = msg.split(b"\r\n\r\n", 1)[1]
    assert got.split(b"\r\n\r\n", 1)[1] == body, got[-300:]
    assert sha256(got.split(b"\r\n\r\n", 1)[1]) == sha256(body)
