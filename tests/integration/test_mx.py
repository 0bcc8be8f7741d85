"""The outbound relay (upstream = mx): mailshim takes mail from a sending
MTA that speaks only plaintext and delivers each transaction to the MX
hosts of its recipients' domain, over STARTTLS, under DANE (RFC 7672).

The scene: a DNSSEC-signed test zone on loopback (nsd, dnszone.py) with
several test domains whose MX hosts are real SMTP servers (aiosmtpd in
starttls mode, requiring TLS before MAIL), each on its own loopback
address and all on the one port that upstream_port names."""

import hashlib
import smtplib
import time

import pytest

from dnszone import DnsServer, Zone, tlsa
from harness import wait_until
from peers import postfix_main_add
from messages import make_message
from test_dane import Pki

# The MX host names the test CA's leaf certificate carries (DANE-TA and
# the CA check of insecure domains).
TA_NAMES = ["mx.ta.test", "mx1.down.test", "mx2.down.test", "mx.plain.test",
            "mx.three.test", "mx.fake.test", "mx.bogus4.test", "mx.bogus6.test"]


def zones(p, port, fixed=False):
    ee = tlsa(p.ee[0], 3, 1, 1)
    ta = tlsa(p.ca, 2, 0, 1)
    bad = ee if fixed else tlsa(p.other[0], 3, 1, 1)
    return [
        Zone("test.", []),
        Zone("ee.test.", ["@ MX 10 mx", "mx A 127.0.0.11", "_%d._tcp.mx TLSA %s" % (port, ee),
                          "bogus MX 10 mx.ee.test."]),
        Zone("ta.test.", ["@ MX 10 mx", "mx A 127.0.0.12", "_%d._tcp.mx TLSA %s" % (port, ta)]),
        Zone("down.test.", ["@ MX 10 mx1", "@ MX 20 mx2", "mx1 A 127.0.0.13",
                            "mx2 A 127.0.0.14", "_%d._tcp.mx1 TLSA %s" % (port, ta),
                            "_%d._tcp.mx2 TLSA %s" % (port, ta)]),
        Zone("bad.test.", ["@ MX 10 mx", "mx A 127.0.0.15",
                           "_%d._tcp.mx TLSA %s" % (port, bad)], ttl=1),
        Zone("null.test.", ["@ MX 0 ."]),
        # An MX record whose host name mailshim cannot take: not a null MX.
        Zone("broken.test.", ["@ MX 10 m\\@x"]),
        # No MX, no address: nowhere to deliver.
        Zone("nomx.test.", ["@ TXT \"no mail here\""]),
        # One host, two addresses: the first down, the second failing DANE.
        Zone("two.test.", ["@ MX 10 mx", "mx A 127.0.0.13", "mx A 127.0.0.15",
                           "_%d._tcp.mx TLSA %s" % (port, tlsa(p.other[0], 3, 1, 1))]),
        Zone("three.test.", ["@ MX 10 mx", "mx A 127.0.0.17",
                             "_%d._tcp.mx TLSA %s" % (port, ta)]),
        Zone("notls.test.", ["@ MX 10 mx", "mx A 127.0.0.18"]),
        Zone("gone.test.", ["@ MX 10 mx1", "@ MX 10 mx2", "mx1 A 127.0.0.19",
                            "mx2 A 127.0.0.13"]),
        Zone("busy.test.", ["@ MX 10 mx", "mx A 127.0.0.20"]),
        Zone("evil.test.", ["@ MX 10 mx", "mx A 127.0.0.22"]),
        # A scripted MX (test_mx_hop.py): CA-checked, no TLSA records.
        Zone("fake.test.", ["@ MX 10 mx", "mx A 127.0.0.23"]),
        # bücher.test in A-labels, for a scripted MX under DANE-EE.
        Zone("xn--bcher-kva.test.", ["@ MX 10 mx", "mx A 127.0.0.24",
                                     "_%d._tcp.mx TLSA %s" % (port, ee)]),
        # One address family bogus (BOGUS), the other secure, the TLSA
        # records matching nothing: only a check that skipped DANE passes.
        Zone("bogus4.test.", ["@ MX 10 mx", "mx A 127.0.0.25", "mx AAAA ::1",
                              "_%d._tcp.mx TLSA %s" % (port, tlsa(p.other[0], 3, 1, 1))]),
        Zone("bogus6.test.", ["@ MX 10 mx", "mx A 127.0.0.25", "mx AAAA ::1",
                              "_%d._tcp.mx TLSA %s" % (port, tlsa(p.other[0], 3, 1, 1))]),
        Zone("imp.test.", ["@ MX 10 mx", "mx A 127.0.0.21",
                           "_%d._tcp.mx TLSA %s" % (port, ee)]),
        Zone("plain.test.", ["@ MX 10 mx", "mx A 127.0.0.16"], signed=False),
    ]


BOGUS = ["bogus.ee.test./MX", "mx.bogus4.test./A", "mx.bogus6.test./AAAA"]


class Scene:
    pass


@pytest.fixture
def scene(procs, ports, workdir, aiosmtpd, make_shim):
    sc = Scene()
    sc.p = p = Pki(workdir / "mx-pki", TA_NAMES)
    sc.port = port = ports.get()
    rx = {}
    for name, addr, cert in (("ee", "127.0.0.11", p.ee), ("ta", "127.0.0.12", p.ta),
                             ("down2", "127.0.0.14", p.ta), ("bad", "127.0.0.15", p.ee),
                             ("plain", "127.0.0.16", p.ta), ("three", "127.0.0.17", p.ta)):
        rx[name] = aiosmtpd("starttls", port=port, cert=cert[0], key=cert[1], host=addr)
    # An MX that offers no STARTTLS: it must never get a message.
    rx["notls"] = aiosmtpd("plain", port=port, host="127.0.0.18")
    # An MX on implicit TLS, for upstream_tls = implicit.
    rx["imp"] = aiosmtpd("implicit", port=port, cert=p.ee[0], key=p.ee[1], host="127.0.0.21")
    sc.rx = rx
    sc.dns = DnsServer(procs, ports, workdir, zones(p, port), bogus=BOGUS)
    sc.listen, sc.denied = ports.get(), ports.get()
    sc.levels = {lvl: ports.get() for lvl in ("dane-only", "verify", "encrypt")}
    sc.implicit = ports.get()
    sc.slow = ports.get()
    sc.tls = ports.get()
    conf = "\n".join([
        "[global]", "workers = 1", "helo_name = shim.test",
        "dns_resolver = 127.0.0.1@%d" % sc.dns.port,
        "dnssec_trust_anchor = %s" % sc.dns.trust_anchor_path, "timeout_dns = 5s", "",
        "[relay]", "listen = 127.0.0.1:%d" % sc.listen, "upstream = mx",
        "upstream_port = %d" % port, "relay_from = 127.0.0.0/8", "upstream_ca = %s" % p.ca,
        "timeout_connect = 3s", "",
        "[closed]", "listen = 127.0.0.1:%d" % sc.denied, "upstream = mx",
        "upstream_port = %d" % port, "relay_from = 192.0.2.0/24", "upstream_ca = %s" % p.ca,
        "",
        "[tls]", "listen = 127.0.0.1:%d" % sc.tls, "listen_tls = starttls",
        "listen_cert = %s" % p.ta[0], "listen_key = %s" % p.ta[1], "upstream = mx",
        "upstream_port = %d" % port, "relay_from = 127.0.0.0/8", "upstream_ca = %s" % p.ca,
        "",
        "[implicit]", "listen = 127.0.0.1:%d" % sc.implicit, "upstream = mx",
        "upstream_port = %d" % port, "relay_from = 127.0.0.0/8", "upstream_tls = implicit",
        "upstream_ca = %s" % p.ca, "",
        "[slow]", "listen = 127.0.0.1:%d" % sc.slow, "upstream = mx",
        "upstream_port = %d" % port, "relay_from = 127.0.0.0/8", "upstream_ca = %s" % p.ca,
        "timeout_idle = 2s", "",
        ""])
    for lvl, lport in sc.levels.items():
        conf += "\n".join([
            "[%s]" % lvl, "listen = 127.0.0.1:%d" % lport, "upstream = mx",
            "upstream_port = %d" % port, "relay_from = 127.0.0.0/8",
            "upstream_verify = %s" % lvl] +
            (["upstream_ca = %s" % p.ca] if lvl != "encrypt" else []) + ["", ""])
    sc.shim = make_shim(conf)
    return sc


def body_of(msg):
    return msg[msg.index(b"\r\n\r\n") + 4:]


def body_hash(msg):
    return hashlib.sha256(body_of(msg)).hexdigest()


def tx_line(shim, rcpts_domain):
    return shim.wait_log(lambda d: d.get("service") == "relay" and
                         d.get("mx", "").endswith(rcpts_domain))[0]


def test_check_refuses_an_open_relay(workdir, mailshim_path):
    import subprocess
    d = workdir / "open"
    d.mkdir()
    (d / "a.conf").write_text("[r]\nlisten = 127.0.0.1:20001\nupstream = mx\n")
    r = subprocess.run([mailshim_path, "-t", "-c", str(d)], capture_output=True, text=True,
                       timeout=10)
    assert r.returncode == 1 and "upstream = mx needs relay_from" in r.stderr, r.stderr
    (d / "a.conf").write_text("[r]\nlisten = 127.0.0.1:20001\nupstream = mx\n"
                              "relay_from = 127.0.0.0/8\nupstream_tls = plain\n")
    r = subprocess.run([mailshim_path, "-t", "-c", str(d)], capture_output=True, text=True,
                       timeout=10)
    assert r.returncode == 1 and "upstream_tls = plain is refused" in r.stderr, r.stderr


def test_never_an_open_relay(scene):
    # A client outside relay_from is refused at the greeting.
    with pytest.raises(smtplib.SMTPConnectError) as e:
        smtplib.SMTP("127.0.0.1", scene.denied, local_hostname="client.test", timeout=10)
    assert e.value.smtp_code == 554 and b"5.7.1" in e.value.smtp_error
    line = scene.shim.wait_log(lambda d: d.get("service") == "closed")[0]
    assert line["result"] == "refused" and "relay_from" in line["reason"]


def test_ehlo_offers_only_what_every_mx_can_be_held_to(scene):
    with smtplib.SMTP("127.0.0.1", scene.listen, local_hostname="client.test",
                      timeout=10) as c:
        code, text = c.ehlo()
        assert code == 250
        feats = text.decode().upper().splitlines()[1:]
        assert "LIMITS RCPTDOMAINMAX=1" in feats
        for want in ("PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES", "SMTPUTF8"):
            assert want in feats
        assert not any(f.startswith(("AUTH", "CHUNKING", "STARTTLS")) for f in feats)
        assert c.docmd("AUTH", "PLAIN AGFhAGI=")[0] == 502
        # RCPT before MAIL, DATA with no recipient
        assert c.docmd("RCPT", "TO:<a@ee.test>")[0] == 503
        assert c.mail("s@client.test")[0] == 250
        assert c.docmd("DATA")[0] == 554
        # an unknown MAIL parameter is refused, not dropped
        c.rset()
        assert c.docmd("MAIL", "FROM:<s@client.test> RET=FULL")[0] == 555


def test_tls_listener_offers_starttls_and_never_auth(scene):
    with smtplib.SMTP("127.0.0.1", scene.tls, local_hostname="client.test",
                      timeout=10) as c:
        c.ehlo()
        assert c.has_extn("starttls") and not c.has_extn("auth")
        # Outside listen_plain_from: nothing before TLS.
        assert c.docmd("MAIL", "FROM:<s@client.test>")[0] == 530
        c.starttls()
        c.ehlo()
        assert not c.has_extn("starttls") and not c.has_extn("auth")
        assert c.has_extn("limits")
        c.mail("s@client.test")
        assert c.rcpt("r@ee.test")[0] == 250
        _, msg = make_message(300, test_id="mx-tls-listener")
        assert c.data(msg)[0] == 250
    got, meta = scene.rx["ee"].wait_message("mx-tls-listener")
    assert body_hash(got) == body_hash(msg)
    line = scene.shim.wait_log(lambda d: d.get("service") == "tls" and
                               d.get("result") == "ok")[0]
    assert line["listen_tls"].startswith("TLSv1") and line["upstream_auth"] == "dane-ee"


def test_policy_levels(scene):
    """What each upstream_verify level accepts, per MX host."""
    sc = scene
    want = {
        # level: [(domain, reply code, status, upstream_auth or reason_code)]
        "dane-only": [("ee.test", 250, None, "dane-ee"),
                      ("plain.test", 451, b"4.7.5", "dane-required")],
        # verify: the CA and the MX host name, DANE records or not
        "verify": [("ta.test", 250, None, "ca"),
                   ("ee.test", 451, b"4.7.5", "certificate-not-trusted")],
        # encrypt: TLS, no authentication (the TLSA mismatch is not looked at)
        "encrypt": [("bad.test", 250, None, "encrypt")],
    }
    for lvl, cases in want.items():
        for dom, code, status, what in cases:
            tid = "mx-%s-%s" % (lvl, dom.replace(".", "-"))
            replies, _ = send(sc.levels[lvl], ["r@" + dom], tid)
            assert replies[0][0] == code, (lvl, dom, replies)
            if status:
                assert status in replies[0][1], (lvl, dom, replies)
            line = sc.shim.wait_log(lambda d, lvl=lvl, tid=tid: d.get("service") == lvl and
                                    (d.get("upstream_auth") == what or
                                     d.get("reason_code") == what))[0]
            assert line["result"] == ("ok" if code == 250 else "refused"), line["_line"]


def test_timeout_idle_counts_activity_not_time(scene):
    """A client that keeps talking (NOOPs, a body that trickles in) for
    longer than timeout_idle is not cut off; a silent one is."""
    _, msg = make_message(3000, test_id="mx-slow")
    with smtplib.SMTP("127.0.0.1", scene.slow, local_hostname="client.test",
                      timeout=20) as c:
        c.ehlo()
        for _ in range(4):
            time.sleep(0.8)
            assert c.noop()[0] == 250
        c.mail("s@client.test")
        assert c.rcpt("r@ee.test")[0] == 250
        assert c.docmd("DATA")[0] == 354
        for i in range(0, len(msg), 1000):
            c.send(msg[i:i + 1000])
            time.sleep(0.8)
        c.send(b".\r\n" if msg.endswith(b"\r\n") else b"\r\n.\r\n")
        assert c.getreply()[0] == 250
    got, _ = scene.rx["ee"].wait_message("mx-slow")
    assert body_hash(got) == body_hash(msg)
    with smtplib.SMTP("127.0.0.1", scene.slow, local_hostname="client.test",
                      timeout=20) as c:
        c.ehlo()
        time.sleep(3)
        with pytest.raises(smtplib.SMTPServerDisconnected):
            c.noop()
            c.noop()


def test_implicit_tls_to_the_mx(scene):
    replies, msg = send(scene.implicit, ["r@imp.test"], "mx-implicit")
    assert [c for c, _ in replies] == [250, 250], replies
    got, meta = scene.rx["imp"].wait_message("mx-implicit")
    assert body_hash(got) == body_hash(msg) and meta["tls"]
    line = scene.shim.wait_log(lambda d: d.get("service") == "implicit" and
                               d.get("result") == "ok")[0]
    assert line["upstream_auth"] == "dane-ee" and line["mx"] == "mx.imp.test"


def test_an_mx_without_starttls_never_gets_mail(scene):
    replies, _ = send(scene.listen, ["r@notls.test"], "mx-notls")
    assert replies[0][0] == 451 and b"4.7.4" in replies[0][1], replies
    line = scene.shim.wait_log(lambda d: d.get("reason_code") == "starttls-not-supported")[0]
    assert line["result"] == "refused" and line["mx"] == "mx.notls.test"
    time.sleep(0.3)
    assert scene.rx["notls"].count() == 0


def send(port, rcpts, test_id, size=500, sender="sender@client.test"):
    _, msg = make_message(size, test_id=test_id)
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=30) as c:
        c.ehlo()
        c.mail(sender)
        replies = [c.rcpt(r) for r in rcpts]
        if any(code == 250 for code, _ in replies):
            code, text = c.data(msg)
            replies.append((code, text))
    return replies, msg


def test_domains_by_policy(scene):
    sc = scene
    problems = []
    # domain -> (receiver, want upstream_auth)
    good = {"ee.test": ("ee", "dane-ee"), "ta.test": ("ta", "dane-ta"),
            "down.test": ("down2", "dane-ta"), "plain.test": ("plain", "ca")}
    for dom, (rx, auth) in good.items():
        tid = "mx-" + dom.replace(".", "-")
        replies, msg = send(sc.listen, ["rcpt@" + dom], tid)
        if [c for c, _ in replies] != [250, 250]:
            problems.append("%s: %r" % (dom, replies))
            continue
        got, meta = sc.rx[rx].wait_message(tid)
        if body_hash(got) != body_hash(msg) or not meta["tls"]:
            problems.append("%s: altered or not over TLS: %r" % (dom, meta))
        line = sc.shim.wait_log(lambda d, dom=dom: d.get("service") == "relay" and
                                d.get("mx", "").endswith(dom) and d.get("result") == "ok")[0]
        if line.get("upstream_auth") != auth or line.get("rcpts") != "1":
            problems.append("%s: log %s" % (dom, line["_line"]))
    assert not problems, "\n".join(problems)
    # The first MX of down.test is down: the log says the second took it.
    assert sc.shim.wait_log(lambda d: d.get("mx") == "mx2.down.test")


class Refuser:
    """An MX that greets with 554 and closes (RFC 5321 3.1)."""

    def __init__(self, host, port):
        import socket
        import threading
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.stop = False
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        while not self.stop:
            try:
                c, _ = self.sock.accept()
            except OSError:
                continue
            try:
                self.serve(c)
            except OSError:
                pass
            c.close()

    def serve(self, c):
        c.sendall(b"554 5.3.2 not now\r\n")

    def close(self):
        self.stop = True
        self.t.join(2)
        self.sock.close()


class Stripper(Refuser):
    """An MX that offers STARTTLS and then refuses it (454) or injects a
    reply after its 220: it records every command it reads in plaintext."""

    def __init__(self, host, port, mode):
        self.mode = mode
        self.seen = []
        super().__init__(host, port)

    def serve(self, c):
        c.settimeout(3)
        c.sendall(b"220 evil ESMTP\r\n")
        for line in c.makefile("rb"):
            self.seen.append(line)
            verb = line[:4].upper()
            if verb == b"EHLO":
                c.sendall(b"250-evil\r\n250 STARTTLS\r\n")
            elif verb == b"STAR":
                c.sendall(b"454 4.7.0 not now\r\n" if self.mode == "refuse" else
                          b"220 go ahead\r\n250 injected\r\n")
            elif verb == b"QUIT":
                c.sendall(b"221 bye\r\n")
                break
            else:
                c.sendall(b"250 ok\r\n")


def test_mx_lookup_failing_defers(scene, make_shim, ports):
    """No resolver answers: the RCPT is deferred (451 4.4.3), and the
    session goes on."""
    listen = ports.get()
    shim = make_shim("\n".join([
        "[global]", "workers = 1", "helo_name = shim.test",
        "dns_resolver = 127.0.0.1@%d" % ports.get(),
        "dnssec_trust_anchor = %s" % scene.dns.trust_anchor_path, "timeout_dns = 1s", "",
        "[nodns]", "listen = 127.0.0.1:%d" % listen, "upstream = mx",
        "upstream_port = %d" % scene.port, "relay_from = 127.0.0.0/8", ""]))
    with smtplib.SMTP("127.0.0.1", listen, local_hostname="client.test", timeout=30) as c:
        c.ehlo()
        c.mail("s@client.test")
        code, text = c.rcpt("r@ee.test")
        assert code == 451 and b"4.4.3" in text, (code, text)
        assert c.noop()[0] == 250
    line = shim.wait_log(lambda d: d.get("service") == "nodns")[0]
    assert line["result"] in ("error", "refused") and "MX lookup" in line["reason"]


@pytest.mark.parametrize("mode", ["refuse", "inject"])
def test_no_plaintext_after_a_failed_starttls(scene, mode):
    evil = Stripper("127.0.0.22", scene.port, mode)
    try:
        replies, _ = send(scene.listen, ["r@evil.test"], "mx-evil-" + mode)
    finally:
        evil.close()
    assert replies[0][0] == 451 and b"4.7.4" in replies[0][1], replies
    verbs = [l[:4].upper() for l in evil.seen]
    assert b"STAR" in verbs and b"MAIL" not in verbs and b"RCPT" not in verbs, evil.seen


def test_failures_get_honest_replies(scene):
    sc = scene
    busy = Refuser("127.0.0.20", sc.port)
    try:
        replies, _ = send(sc.listen, ["rcpt@busy.test"], "mx-busy")
    finally:
        busy.close()
    assert replies[0][0] == 451 and b"4.4.0" in replies[0][1], replies
    cases = {
        "gone.test": (451, b"4.4.1", None),
        "bad.test": (451, b"4.7.5", "tlsa-invalid"),
        "null.test": (556, b"5.1.10", None),
        "bogus.ee.test": (451, b"4.4.3", "dnssec-invalid"),
    }
    for dom, (code, status, rpt) in cases.items():
        replies, _ = send(sc.listen, ["rcpt@" + dom], "mx-fail-" + dom.replace(".", "-"))
        assert replies[0][0] == code and status in replies[0][1], (dom, replies)
        if rpt:
            line = sc.shim.wait_log(lambda d, rpt=rpt: d.get("service") == "relay" and
                                    d.get("reason_code") == rpt)[0]
            assert line["result"] == "refused"
    assert sc.rx["bad"].count() == 0
    # The TLSA records hold for every address of the host: the one tried
    # after a failed connect is checked as strictly as the first (the
    # resolver may rotate the order, hence a few tries).
    for i in range(4):
        replies, _ = send(sc.listen, ["rcpt@two.test"], "mx-two-addr-%d" % i)
        assert replies[0][0] == 451 and b"4.7.5" in replies[0][1], replies
    assert sc.rx["bad"].count() == 0


def test_one_domain_per_transaction(scene):
    sc = scene
    replies, msg = send(sc.listen, ["a@ee.test", "b@ta.test", "c@ee.test"], "mx-two")
    assert [c for c, _ in replies] == [250, 452, 250, 250], replies
    assert b"4.5.3" in replies[1][1]
    got, meta = sc.rx["ee"].wait_message("mx-two")
    assert sorted(meta["rcpt_tos"]) == ["a@ee.test", "c@ee.test"]
    assert sc.rx["ta"].find("mx-two") is None
    line = tx_line(sc.shim, "ee.test")
    assert line["rcpts"] == "2"


def test_smuggled_end_of_data_is_refused(scene):
    sc = scene
    with smtplib.SMTP("127.0.0.1", sc.listen, local_hostname="client.test", timeout=10) as c:
        c.ehlo()
        c.mail("s@client.test")
        assert c.rcpt("r@ee.test")[0] == 250
        assert c.docmd("DATA")[0] == 354
        c.send(b"X-Test-Id: mx-smuggle\r\n\r\nhello\n.\nMAIL FROM:<x@y>\r\n.\r\n")
        code, _ = c.getreply()
        assert code == 554
    time.sleep(0.5)
    assert sc.rx["ee"].find("mx-smuggle") is None


# --------------------------------------------------------------------------
# A real sending MTA: a private Postfix relaying everything to mailshim


def start_sender(scene, procs, ports, pki, pubdir, *extra):
    import os
    from peers import PrivatePostfix
    if os.geteuid() != 0:
        pytest.skip("a private Postfix instance needs root")
    pf = PrivatePostfix(procs, ports, pki.upstream, pki.upstream_key,
                        pubdir("mailshim-mx-postfix-"))
    postfix_main_add(pf, "relayhost = [127.0.0.1]:%d" % scene.listen,
                     "smtp_tls_security_level = none", "queue_run_delay = 1s",
                     "minimal_backoff_time = 2s", "maximal_backoff_time = 4s",
                     "smtp_connection_cache_on_demand = no", *extra)
    return pf.start()


@pytest.fixture
def sender_pf(scene, procs, ports, pki, pubdir):
    pf = start_sender(scene, procs, ports, pki, pubdir)
    yield pf
    pf.stop()


def test_postfix_with_one_recipient_per_delivery_never_waits(scene, procs, ports, pki,
                                                               pubdir):
    """The README's sending-side setting: no recipient meets a 452."""
    pf = start_sender(scene, procs, ports, pki, pubdir, "smtp_destination_recipient_limit = 1")
    try:
        tid, msg = make_message(1000, test_id="pf-limit")
        submit(pf, "sender@client.test", ["a@ee.test", "b@ta.test", "c@three.test",
                                          "d@ee.test"], msg)
        for rx in ("ee", "ta", "three"):
            got, _ = scene.rx[rx].wait_message(tid, timeout=30)
            assert body_hash(got) == body_hash(msg)
        wait_until(lambda: len([i for i in scene.rx["ee"].ids() if i.startswith(tid)]) == 2,
                   30, "both ee.test recipients")
        assert "4.5.3" not in pf.maillog(), pf.maillog()
    finally:
        pf.stop()


def submit(pf, sender, rcpts, msg):
    with smtplib.SMTP("127.0.0.1", pf.smtp_port, local_hostname="client.test",
                      timeout=60) as c:
        c.sendmail(sender, rcpts, msg)


def test_postfix_through_the_relay(scene, sender_pf):
    sc, pf = scene, sender_pf
    msgs = {}
    for dom, rx in (("ee.test", "ee"), ("ta.test", "ta"), ("down.test", "down2"),
                    ("plain.test", "plain"), ("bad.test", "bad")):
        tid, msg = make_message(2000, test_id="pf-" + dom.replace(".", "-"))
        submit(pf, "sender@client.test", ["rcpt@" + dom], msg)
        msgs[tid] = (msg, [rx])
    tid, msg = make_message(3000, test_id="pf-three")
    submit(pf, "sender@client.test", ["a@ee.test", "b@ta.test", "c@three.test"], msg)
    msgs[tid] = (msg, ["ee", "ta", "three"])
    tid, big = make_message(20 << 20, test_id="pf-big")
    submit(pf, "sender@client.test", ["big@ta.test"], big)
    msgs[tid] = (big, ["ta"])
    # The null MX domain bounces; the bounce goes to the sender at ee.test.
    tid, msg = make_message(200, test_id="pf-null")
    submit(pf, "sender@ee.test", ["rcpt@null.test"], msg)

    # bad.test is deferred (TLSA mismatch on every MX) until its record is
    # fixed; then the sending queue's retry delivers it.
    line = sc.shim.wait_log(lambda d: d.get("reason_code") == "tlsa-invalid", timeout=30)[0]
    assert line["result"] == "refused"
    assert sc.rx["bad"].count() == 0
    sc.dns.restart(zones(sc.p, sc.port, fixed=True), bogus=BOGUS)

    problems = []
    for tid, (msg, rxs) in msgs.items():
        for rx in rxs:
            try:
                got, meta = sc.rx[rx].wait_message(tid, timeout=60)
            except Exception as e:
                problems.append("%s at %s: %s" % (tid, rx, e))
                continue
            if body_hash(got) != body_hash(msg):
                problems.append("%s at %s: body altered" % (tid, rx))
            if not meta["tls"]:
                problems.append("%s at %s: not over TLS" % (tid, rx))

    def bounced():
        for i in sc.rx["ee"].ids():
            if i.startswith("msg"):
                got, meta = sc.rx["ee"].find(i)
                if b"null.test" in got and meta["mail_from"] in ("", "<>"):
                    return got
        return None
    try:
        wait_until(bounced, 30, "the bounce for null.test")
    except Exception as e:
        problems.append(str(e))
    time.sleep(2)
    for name, r in sc.rx.items():
        dups = [i for i in r.ids() if ".dup" in i]
        if dups:
            problems.append("%s received twice: %r" % (name, dups))
    assert not problems, "\n".join(problems) + "\n" + "\n".join(pf.maillog().splitlines()[-30:])
