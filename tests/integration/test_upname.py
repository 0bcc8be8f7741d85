"""Upstream host names follow DNS: looked up by each worker on its loop,
kept for their TTL, every address tried in turn, the last good answer
kept a while when DNS fails, and a name that does not resolve yet never
stops the shim. The names are served by a real nsd on loopback."""

import smtplib
import socket
import threading
import time

import pytest

from dnszone import DnsServer, Zone
from harness import wait_until
from messages import make_message


class TinySmtp:
    """A minimal SMTP server bound to one loopback address: greets, says
    250 to everything, 354 to DATA, and notes each message it got."""

    def __init__(self, host, port):
        self.host, self.port = host, port
        self.messages = []
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(16)
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
            threading.Thread(target=self.serve, args=(c,), daemon=True).start()

    def serve(self, c):
        c.settimeout(10)
        f = c.makefile("rwb")
        try:
            f.write(b"220 tiny.test ESMTP\r\n")
            f.flush()
            while True:
                line = f.readline()
                if not line:
                    return
                verb = line[:4].upper()
                if verb == b"DATA":
                    f.write(b"354 go\r\n")
                    f.flush()
                    body = b""
                    while not body.endswith(b"\r\n.\r\n"):
                        chunk = f.readline()
                        if not chunk:
                            return
                        body += chunk
                    self.messages.append(body)
                    f.write(b"250 2.0.0 queued\r\n")
                elif verb == b"QUIT":
                    f.write(b"221 bye\r\n")
                    f.flush()
                    return
                elif verb == b"EHLO":
                    f.write(b"250-tiny.test\r\n250 PIPELINING\r\n")
                else:
                    f.write(b"250 ok\r\n")
                f.flush()
        except OSError:
            pass
        finally:
            c.close()

    def close(self):
        self.stop = True
        self.t.join(2)
        self.sock.close()


@pytest.fixture
def tiny():
    made = []

    def make(host, port):
        s = TinySmtp(host, port)
        made.append(s)
        return s
    yield make
    for s in made:
        s.close()


def conf(dns_port, port, host, up_port, extra=""):
    return ("[global]\nworkers = 1\nhelo_name = shim.test\n"
            "dns_resolver = 127.0.0.1@%d\n%s\n"
            "[mx]\nlisten = 127.0.0.1:%d\nupstream = %s:%d\ntimeout_connect = 2s\n"
            % (dns_port, extra, port, host, up_port))


def send(port, tag):
    _, msg = make_message(200, test_id=tag)
    try:
        with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=15) as c:
            c.sendmail("a@client.test", ["b@legacy.test"], msg)
        return 250
    except smtplib.SMTPConnectError as e:
        return e.smtp_code
    except smtplib.SMTPServerDisconnected:
        return 0


def zones(records, ttl=1):
    return [Zone("names.test.", records, signed=False, ttl=ttl)]


def test_every_address_is_tried_in_turn(make_shim, ports, procs, workdir, tiny):
    up_port, port = ports.many(2)
    good = tiny("127.0.0.1", up_port)
    # ::1 first (AAAA before A), where nothing listens; 127.0.0.2 neither.
    dns = DnsServer(procs, ports, workdir, zones(["up AAAA ::1", "up A 127.0.0.2",
                                                  "up A 127.0.0.1"]))
    shim = make_shim(conf(dns.port, port, "up.names.test", up_port))
    for i in range(3):
        assert send(port, "addr-%d" % i) == 250
    assert len(good.messages) == 3
    assert "trying the next address" in shim.stderr_text()
    lines = shim.wait_log(lambda d: d.get("result") == "ok", count=3)
    assert all(d["upstream"] == "127.0.0.1:%d" % up_port for d in lines), lines


def test_records_that_change_reach_new_sessions(make_shim, ports, procs, workdir, tiny):
    up_port, port = ports.many(2)
    a = tiny("127.0.0.1", up_port)
    b = tiny("127.0.0.3", up_port)
    dns = DnsServer(procs, ports, workdir, zones(["up A 127.0.0.1"]))
    make_shim(conf(dns.port, port, "up.names.test", up_port))
    assert send(port, "before") == 250
    dns.restart(zones(["up A 127.0.0.3"]))
    # The shim keeps an answer at least 5 s whatever its TTL.
    deadline = time.monotonic() + 20
    while not b.messages and time.monotonic() < deadline:
        assert send(port, "after") == 250
        time.sleep(0.5)
    assert len(a.messages) >= 1 and len(b.messages) == 1


def test_dns_down_keeps_the_last_good_answer(make_shim, ports, procs, workdir, tiny):
    up_port, port = ports.many(2)
    up = tiny("127.0.0.1", up_port)
    dns = DnsServer(procs, ports, workdir, zones(["up A 127.0.0.1"]))
    shim = make_shim(conf(dns.port, port, "up.names.test", up_port, "timeout_dns = 1s"))
    assert send(port, "first") == 250
    dns.stop()
    time.sleep(6)               # past the kept answer's time
    assert send(port, "stale") == 250
    assert len(up.messages) == 2
    wait_until(lambda: "using the last good answer" in shim.stderr_text(), 5, "stale warning")


def test_a_name_that_does_not_resolve_refuses_only_its_sessions(make_shim, ports, procs,
                                                                 workdir, tiny):
    up_port, port, port2 = ports.many(3)
    tiny("127.0.0.1", up_port)
    dns = DnsServer(procs, ports, workdir, zones(["other A 127.0.0.1"]))
    text = conf(dns.port, port, "later.names.test", up_port, "timeout_dns = 1s")
    text += "\n[ok]\nlisten = 127.0.0.1:%d\nupstream = 127.0.0.1:%d\n" % (port2, up_port)
    shim = make_shim(text)          # starts although later.names.test has no address
    assert send(port, "nx") == 421
    assert send(port2, "numeric") == 250
    line = shim.wait_log(lambda d: d.get("service") == "mx")[0]
    assert line["result"] == "error" and "resolve" in line["reason"], line["_line"]
    dns.restart(zones(["other A 127.0.0.1", "later A 127.0.0.1"]))
    deadline = time.monotonic() + 20
    code = None
    while time.monotonic() < deadline:
        code = send(port, "resolved")
        if code == 250:
            break
        time.sleep(1)
    assert code == 250


def test_many_addresses_keep_both_families_ipv6_first(make_shim, ports, procs, workdir,
                                                      tiny):
    """Nine AAAA and nine A records, more than the eight addresses kept:
    each family keeps its half whichever answer came first, IPv6 tried
    first. Nothing listens at eighteen of them; the last A is tried too,
    and the message reaches its server."""
    up_port, port = ports.many(2)
    good = tiny("127.0.0.1", up_port)
    v6 = ["up AAAA ::ffff:127.0.1.%d" % i for i in range(1, 10)]   # refused, over IPv6
    v4 = ["up A 127.0.2.%d" % i for i in range(1, 10)]
    dns = DnsServer(procs, ports, workdir, zones(v6 + v4))
    shim = make_shim(conf(dns.port, port, "up.names.test", up_port,
                          "log_level = info"))
    assert send(port, "many") in (421, 451, 0)       # none of the eight listens

    def tried_so_far():
        return [l.split("upstream ", 1)[1].split()[0] for l in shim.stderr_text().splitlines()
                if "trying the next address" in l]
    shim.wait_log()                          # the session's line comes after the tries'
    tried = tried_so_far()
    assert len(tried) == 7, tried
    fam = ["6" if t.startswith("[") else "4" for t in tried]
    assert fam == ["6"] * 4 + ["4"] * 3, tried
    assert not good.messages
    dns.restart(zones(["up A 127.0.0.1"]))


def test_a_ttl_of_zero_is_kept_as_zero(make_shim, ports, procs, workdir, tiny):
    """A and AAAA with different TTLs, one of them 0: the lowest stands (held
    to the 5 s floor), so a changed record reaches new sessions within
    seconds, not after the other record's 300 s."""
    up_port, port = ports.many(2)
    first = tiny("127.0.0.1", up_port)
    second = tiny("127.0.0.3", up_port)
    dns = DnsServer(procs, ports, workdir, zones(["up 0 A 127.0.0.1",
                                                  "up 300 AAAA ::ffff:127.0.1.1"]))
    shim = make_shim(conf(dns.port, port, "up.names.test", up_port))
    assert send(port, "ttl-0-first") == 250
    assert len(first.messages) == 1
    dns.restart(zones(["up 0 A 127.0.0.3", "up 300 AAAA ::ffff:127.0.1.1"]))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not second.messages:
        time.sleep(1)
        assert send(port, "ttl-0-again") == 250
    assert second.messages, shim.stderr_text()[-2000:]
