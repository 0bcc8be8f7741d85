"""The peers and clients the other tests rely on, checked on their own
(no mailshim involved): if one of these fails, a failure elsewhere may be
the harness's, not the shim's."""

import os
import subprocess
import time

import pytest

from harness import listening, proc_tree
from peers import header_value, wait_listening
from clients import dot_stuff, expected_received, s_client, smtp_send, swaks
from messages import KINDS, make_message, sha256


def test_make_message_shapes():
    for kind in KINDS:
        for size in (0, 2, 3, 7, 1000, 70000):
            tid, msg = make_message(size, 7, kind)
            head, body = msg.split(b"\r\n\r\n", 1)
            assert len(body) == size
            assert header_value(msg, "X-Test-Id") == tid.encode()
            stripped = body.replace(b"\r\n", b"")
            assert b"\r" not in stripped and b"\n" not in stripped
            assert body == b"" or body.endswith(b"\r\n")
    lines = make_message(20000, 1, "mixed")[1].split(b"\r\n")
    assert b"." in lines and b"STARTTLS" in lines and b"QUIT" in lines
    assert any(len(l) == 5000 for l in lines) and any(len(l) == 998 for l in lines)
    assert any(b > 0x7f for b in make_message(5000, 1, "8bit")[1])
    # Same arguments, same bytes; another seed, another message.
    assert make_message(5000, 1, "8bit") == make_message(5000, 1, "8bit")
    assert make_message(5000, 2, "8bit")[1] != make_message(5000, 1, "8bit")[1]


@pytest.mark.parametrize("kind,size", [("8bit", 300000), ("mixed", 200000), ("dots", 0),
                                       ("text", 2)])
def test_smtp_sink_is_byte_exact(smtp_sink, kind, size):
    sink = smtp_sink()
    tid, msg = make_message(size, 11, kind)
    code, _ = smtp_send(sink.port, msg, rcpts=["a@legacy.test", "b@legacy.test"])
    assert code == 250
    got = sink.wait_message(tid)
    assert sha256(got) == sha256(expected_received(msg))
    env = sink.messages()[0][0]
    assert env["X-Client-Addr"] == "127.0.0.1"
    assert env["X-Rcpt-Args"] == ["<a@legacy.test>", "<b@legacy.test>"]


def test_swaks_sends_exact_bytes(smtp_sink, workdir):
    sink = smtp_sink()
    tid, msg = make_message(100000, 12, "mixed")
    # Things swaks would expand or rewrite without --no-data-fixup.
    msg += b"%DATE% \\n %NEWLINE% From x\r\n.\r\n"
    r = swaks(sink.port, data=msg, workdir=workdir)
    assert r.rc == 0, r
    assert sha256(sink.wait_message(tid)) == sha256(msg)


@pytest.mark.parametrize("mode", ["plain", "implicit", "starttls"])
def test_aiosmtpd_modes_byte_exact(aiosmtpd, pki, mode, workdir):
    srv = aiosmtpd(mode)
    tid, msg = make_message(300000, 13, "mixed")
    code, _ = smtp_send(srv.port, msg, mode=mode, cafile=pki.ca, server_hostname="legacy.test")
    assert code == 250
    got, meta = srv.wait_message(tid)
    assert sha256(got) == sha256(msg)
    assert meta["tls"] == (None if mode == "plain" else "TLSv1.3")
    assert "BODY=8BITMIME" in meta["mail_options"]

    tid2, msg2 = make_message(0, 13, "text")
    tls = {"plain": None}.get(mode, mode)
    r = swaks(srv.port, tls=tls, data=msg2, workdir=workdir, ca=pki.ca)
    assert r.rc == 0, r
    assert srv.wait_message(tid2)[0] == msg2


def test_aiosmtpd_starttls_required_before_mail(aiosmtpd):
    srv = aiosmtpd("starttls")
    r = swaks(srv.port, quit_after="rcpt")
    assert r.rc != 0
    assert any(l.startswith("530") for l in r.replies()), r


def test_s_client_dialogue(aiosmtpd, pki):
    srv = aiosmtpd("implicit")
    tid, msg = make_message(3000, 14, "dots")
    script = ["EHLO client.test", "MAIL FROM:<s@client.test>", "RCPT TO:<r@legacy.test>",
              "DATA"] + [dot_stuff(msg) + b".\r\n", "QUIT"]
    r = s_client(srv.port, script, cafile=pki.ca, servername="legacy.test")
    assert r.handshake_ok and r.verification == "OK", r
    assert r.lines()[0].startswith("220")
    assert any(l.startswith("221") for l in r.lines()), r
    assert srv.wait_message(tid)[0] == msg

    srv2 = aiosmtpd("starttls")
    r = s_client(srv2.port, ["EHLO client.test", "QUIT"], starttls=True, version="tls1_2")
    assert r.protocol == "TLSv1.2", r
    assert any(l.startswith("250") for l in r.lines()), r


def test_s_client_really_offers_old_versions(procs, ports, pki):
    """The refusal tests of TLS 1.0/1.1 mean something only if our client
    offers them: against a server that allows them, they succeed."""
    port = ports.get()
    srv = procs.start("s_server", ["openssl", "s_server", "-accept", "127.0.0.1:%d" % port,
                                   "-cert", pki.server, "-key", pki.server_key,
                                   "-cipher", "DEFAULT@SECLEVEL=0", "-quiet"])
    wait_listening(srv, port)
    for version, want in (("tls1_1", "TLSv1.1"), ("tls1", "TLSv1")):
        r = s_client(port, [], version=version, delay=0.1, timeout=10,
                     until=r"^Ciphersuite: ")
        assert r.protocol == want, r


@pytest.mark.postfix
def test_private_postfix(postfix, pki, workdir):
    pf = postfix()
    for port, tls in ((pf.smtp_port, "starttls"), (pf.smtps_port, "implicit")):
        tid, msg = make_message(5000, 15, "text", test_id="pf-" + tls)
        r = swaks(port, tls=tls, data=msg, workdir=workdir, ca=pki.ca)
        assert r.rc == 0, r
        qid = pf.queue_id(r.out)
        assert qid, r
        pf.wait_sent(qid)
        assert "client=" in pf.client_line(qid)
        got = pf.sink.wait_message(tid)
        # Postfix adds its Received: header (ESMTPS: TLS was used); the body
        # is untouched.
        assert b"with ESMTPS id " + qid.encode() in got
        assert got.split(b"\r\n\r\n", 1)[1] == msg.split(b"\r\n\r\n", 1)[1]
    master = pf.master_pid()
    assert master and os.path.exists("/proc/%d" % master)
    pf.stop()
    assert not os.path.exists("/proc/%d" % master)
    assert not listening(pf.smtp_port)


def test_procs_kill_whole_group(procs):
    p = procs.start("tree", ["sh", "-c", "sleep 300 & sleep 300 & wait"])
    time.sleep(0.2)
    kids = [pid for pid in proc_tree(p.pid) if pid != p.pid]
    assert len(kids) == 2
    procs.stop(p)
    time.sleep(0.1)
    for k in kids:
        assert not os.path.exists("/proc/%d" % k) or _zombie(k)


def _zombie(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_pki_files(pki):
    for name in ("ca.pem", "other-ca.pem", "server.pem", "server.key", "upstream.pem",
                 "wrongname.pem", "otherca-upstream.pem", "server-chain.pem"):
        assert (pki.dir / name).stat().st_size > 0
    out = subprocess.run(["openssl", "verify", "-CAfile", pki.ca, pki.server, pki.upstream,
                          pki.wrongname], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    out = subprocess.run(["openssl", "verify", "-CAfile", pki.ca, pki.otherca_upstream],
                         capture_output=True, text=True)
    assert out.returncode != 0
    assert pki.spki_pin("upstream.pem").startswith("sha256/")
    assert pki.spki_pin("upstream.pem") != pki.spki_pin("otherca-upstream.pem")


def test_ports_are_free_and_distinct(ports):
    got = ports.many(20)
    assert len(set(got)) == 20
    assert all(20000 <= p < 32000 for p in got)

