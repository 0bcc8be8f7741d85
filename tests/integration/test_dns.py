"""shim/dns.c against a real DNSSEC-signed zone served by nsd (dnszone.py),
through tests/dnstest/dnsprobe (built by `make units`, next to the binary
under test: build/rel/dnsprobe, or build/san/dnsprobe for the sanitizer
build; DNSPROBE overrides).

Validation is libunbound's own, from the test zone's trust anchor: every
status asserted here (secure, insecure, bogus, fail, timeout) comes from
signatures, never from a resolver's AD bit or rcode.
"""

import os
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest

from test_valgrind import VALGRIND, VALGRIND_ARGS, report_problems

from dnszone import DnsServer, Zone, tlsa, tlsa_wire_hex
from harness import (REPO, SANITIZER_MARKS, HarnessError, Procs, mailshim_binary,
                     parse_kv, wait_until)

NHOSTS = 50


def dnsprobe_path():
    env = os.environ.get("DNSPROBE")
    if env:
        return Path(env)
    shim = mailshim_binary()
    if shim.parent.name in ("rel", "san") and shim.parent.parent.name == "build":
        return shim.parent / "dnsprobe"
    return REPO / "build" / "rel" / "dnsprobe"


def dnsprobe_argv(*args):
    exe = dnsprobe_path()
    if not os.access(exe, os.X_OK):
        raise HarnessError("%s missing: build it with `make units` (SAN=1 for "
                           "build/san)" % exe)
    return [str(exe)] + [str(a) for a in args]


def probe(*args, timeout=30):
    """Run dnsprobe; returns (the run, answers by "name/TYPE", the done
    line, the cancelled "name/TYPE"s, the names answered after a cancel)."""
    r = subprocess.run(dnsprobe_argv(*args), capture_output=True, text=True,
                       timeout=timeout)
    for mark in SANITIZER_MARKS:
        assert mark not in r.stderr, r.stderr
    return (r,) + parse_output(r.stdout)


def parse_output(text):
    """Answers are keyed "name/TYPE", or "name/TYPE#2" in the second wave."""
    answers, done, cancels, late = {}, None, [], []
    for line in text.splitlines():
        kind = line.split(" ", 1)[0]
        kv = parse_kv(line)
        if kind == "answer":
            key = "%s/%s" % (kv["name"], kv["type"])
            if kv["wave"] != "1":
                key += "#" + kv["wave"]
            assert key not in answers, "two callbacks for %s:\n%s" % (key, text)
            answers[key] = kv
        elif kind == "done":
            done = kv
        elif kind == "cancel":
            cancels.append("%s/%s" % (kv["name"], kv["type"]))
        elif kind == "late":
            late.append(kv["name"])
    return answers, done, cancels, late


def ok_probe(*args, **kw):
    r, answers, done, cancels, late = probe(*args, **kw)
    assert r.returncode == 0 and done is not None, r.stdout + r.stderr
    assert not late, r.stdout
    return answers, done, cancels


def rrs(ans):
    return set() if ans["rr"] == "-" else set(ans["rr"].split(","))


# ---------------------------------------------------------------------------
# The zones

def make_zones(pki, tlsa_extra=()):
    server_311 = tlsa(pki.server, 3, 1, 1)
    ca_201 = tlsa(pki.ca, 2, 0, 1)
    server_302 = tlsa(pki.server, 3, 0, 2)
    dane = ["mx A 127.0.0.1", "mx AAAA ::1", "@ MX 10 mx",
            "_25._tcp.mx TLSA " + server_311, "_25._tcp.mx TLSA " + ca_201,
            "_25._tcp.mx TLSA " + server_302,
            "alias CNAME mx", "ext CNAME mx.plain.test.", "txtonly TXT \"only text\"",
            "bad A 127.0.0.66", "_25._tcp.bad TLSA " + server_311,
            "sigtlsa A 127.0.0.67", "_25._tcp.sigtlsa TLSA " + server_311]
    dane += ["_25._tcp.mx TLSA " + t for t in tlsa_extra]
    dane += ["host%d A 127.0.1.%d" % (i, i) for i in range(1, NHOSTS + 1)]
    zones = [
        Zone("test.", ["direct A 127.0.0.5"]),
        Zone("dane.test.", dane),
        Zone("plain.test.", ["mx A 127.0.0.2", "_25._tcp.mx TLSA " + server_311],
             signed=False),
        # Signed, but its parent publishes the DS of another key.
        Zone("broken.test.", ["mx A 127.0.0.4"]),
        # Names libunbound would answer itself by default: here the
        # resolver serves them, unsigned.
        Zone("localhost.", ["@ A 127.0.0.3"], signed=False),
        Zone("10.in-addr.arpa.", ["1.0.0 PTR ten.example."], signed=False),
        Zone("20.172.in-addr.arpa.", ["1.0 PTR private.example."], signed=False),
        Zone("100.100.in-addr.arpa.", ["1.0 PTR cgnat.example."], signed=False),
        Zone("home.arpa.", ["router A 192.168.1.1"], signed=False),
        Zone("onion.", ["x A 127.0.0.7"], signed=False),
        Zone("invalid.", ["x A 127.0.0.8"], signed=False),
    ]
    expect = {"311": tlsa_wire_hex(server_311), "201": tlsa_wire_hex(ca_201),
              "302": tlsa_wire_hex(server_302)}
    return zones, expect


BOGUS = ["bad.dane.test.", "_25._tcp.bad.dane.test.", "_25._tcp.sigtlsa.dane.test./TLSA"]


@pytest.fixture(scope="module")
def dns(tmp_path_factory, ports, pki):
    workdir = tmp_path_factory.mktemp("dns")
    procs = Procs(workdir)
    zones, expect = make_zones(pki)
    try:
        server = DnsServer(procs, ports, workdir, zones, bogus=BOGUS,
                           bad_ds=["broken.test."])
        server.expect = expect
        yield server
    finally:
        procs.cleanup()


def at(server):
    return ["-r", "127.0.0.1@%d" % server.port, "-a", server.trust_anchor_path]


@pytest.fixture
def silent(ports):
    """A resolver address that never answers: a bound UDP socket nobody
    reads, and a TCP listener that accepts and says nothing."""
    port = ports.get()
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("127.0.0.1", port))
    t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    t.bind(("127.0.0.1", port))
    t.listen(64)
    yield port
    u.close()
    t.close()


@pytest.fixture
def ad_liar(ports):
    """A resolver that answers every A query with 127.0.0.99 and every
    other query with no records, all unsigned, all with the AD bit set."""
    port = ports.get()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", port))
    sock.settimeout(0.1)
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                q, peer = sock.recvfrom(4096)
            except socket.timeout:
                continue
            end = q.index(b"\0", 12) + 5           # qname, qtype, qclass
            qtype = struct.unpack(">H", q[end - 4:end - 2])[0]
            qflags = struct.unpack(">H", q[2:4])[0]
            flags = 0x8000 | 0x0400 | 0x0080 | 0x0020 | (qflags & 0x0110)  # QR AA RA AD; RD CD
            answer = b""
            if qtype == 1:
                answer = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 300, 4) + bytes([127, 0, 0, 99])
            sock.sendto(q[:2] + struct.pack(">HHHHH", flags, 1, 1 if answer else 0, 0, 0)
                        + q[12:end] + answer, peer)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield port
    stop.set()
    t.join(5)
    sock.close()


# ---------------------------------------------------------------------------
# Secure answers

def test_secure_a_and_aaaa(dns):
    a, _, _ = ok_probe(*at(dns), "mx.dane.test/A", "mx.dane.test/AAAA")
    v4, v6 = a["mx.dane.test/A"], a["mx.dane.test/AAAA"]
    assert v4["status"] == "secure" and v6["status"] == "secure", a
    assert v4["addrs"] == "127.0.0.1" and v4["rr"] == "7f000001"
    assert v6["addrs"] == "::1" and v6["rr"] == "0" * 31 + "1"
    assert v4["canon"] == "mx.dane.test." and v4["nxdomain"] == v4["nodata"] == "0"
    assert 0 < int(v4["ttl"]) <= 300


def test_secure_tlsa_several_records(dns):
    a, _, _ = ok_probe(*at(dns), "_25._tcp.mx.dane.test/TLSA")
    t = a["_25._tcp.mx.dane.test/TLSA"]
    assert t["status"] == "secure" and t["n"] == "3", t
    assert rrs(t) == set(dns.expect.values())


def test_secure_mx(dns):
    a, _, _ = ok_probe(*at(dns), "dane.test/MX")
    mx = a["dane.test/MX"]
    assert mx["status"] == "secure" and mx["n"] == "1"
    # preference 10, then mx.dane.test. in wire form
    assert mx["rr"] == "000a" + "026d78" + "0464616e65" + "0474657374" + "00"


def test_secure_cname_gives_canonical_name(dns):
    a, _, _ = ok_probe(*at(dns), "alias.dane.test/A", "alias.dane.test/CNAME")
    ans = a["alias.dane.test/A"]
    assert ans["status"] == "secure" and ans["canon"] == "mx.dane.test.", ans
    assert ans["addrs"] == "127.0.0.1"
    cname = a["alias.dane.test/CNAME"]
    assert cname["status"] == "secure" and cname["rr"] == "026d780464616e65047465737400"


def test_cname_into_unsigned_zone_is_insecure(dns):
    a, _, _ = ok_probe(*at(dns), "ext.dane.test/A")
    ans = a["ext.dane.test/A"]
    assert ans["status"] == "insecure" and ans["canon"] == "mx.plain.test.", ans
    assert ans["addrs"] == "127.0.0.2"


def test_nxdomain_and_nodata_are_secure_answers(dns):
    a, _, _ = ok_probe(*at(dns), "nope.dane.test/A", "txtonly.dane.test/A",
                       "mx.dane.test/TLSA", "_25._tcp.nope.dane.test/TLSA")
    nx, nodata = a["nope.dane.test/A"], a["txtonly.dane.test/A"]
    assert nx["status"] == "secure" and nx["nxdomain"] == "1" and nx["n"] == "0", nx
    assert nx["rcode"] == "3" and nx["nodata"] == "0"
    assert nodata["status"] == "secure" and nodata["nodata"] == "1", nodata
    assert nodata["nxdomain"] == "0" and nodata["n"] == "0" and nodata["rcode"] == "0"
    assert a["mx.dane.test/TLSA"]["nodata"] == "1"
    assert a["mx.dane.test/TLSA"]["status"] == "secure"
    assert a["_25._tcp.nope.dane.test/TLSA"]["nxdomain"] == "1"
    assert a["_25._tcp.nope.dane.test/TLSA"]["status"] == "secure"


def test_secure_delegation_and_top_zone(dns):
    a, _, _ = ok_probe(*at(dns), "direct.test/A", "host7.dane.test/A")
    assert a["direct.test/A"]["status"] == "secure"
    assert a["direct.test/A"]["addrs"] == "127.0.0.5"
    assert a["host7.dane.test/A"]["status"] == "secure"


# ---------------------------------------------------------------------------
# Insecure, bogus, failures

def test_unsigned_zone_is_insecure(dns):
    a, _, _ = ok_probe(*at(dns), "mx.plain.test/A", "_25._tcp.mx.plain.test/TLSA",
                       "nope.plain.test/A")
    assert a["mx.plain.test/A"]["status"] == "insecure"
    assert a["mx.plain.test/A"]["addrs"] == "127.0.0.2"
    t = a["_25._tcp.mx.plain.test/TLSA"]
    assert t["status"] == "insecure" and rrs(t) == {dns.expect["311"]}
    nx = a["nope.plain.test/A"]
    assert nx["status"] == "insecure" and nx["nxdomain"] == "1"


def test_corrupted_signature_is_bogus(dns):
    a, _, _ = ok_probe(*at(dns), "bad.dane.test/A", "_25._tcp.bad.dane.test/TLSA",
                       "_25._tcp.sigtlsa.dane.test/TLSA", "sigtlsa.dane.test/A")
    for key in ("bad.dane.test/A", "_25._tcp.bad.dane.test/TLSA",
                "_25._tcp.sigtlsa.dane.test/TLSA"):
        ans = a[key]
        assert ans["status"] == "bogus", ans
        # A bogus answer hands out no records, flags or TTL.
        assert ans["n"] == "0" and ans["rr"] == "-" and ans["ttl"] == "0", ans
        assert ans["nxdomain"] == ans["nodata"] == "0"
        assert ans["why"], ans
    # Only the TLSA signature was broken there: its A record is fine.
    assert a["sigtlsa.dane.test/A"]["status"] == "secure"


def test_resolver_ad_bit_is_never_trusted(ad_liar, dns):
    a, _, _ = ok_probe("-r", "127.0.0.1@%d" % ad_liar, "-a", dns.trust_anchor_path,
                       "-t", "5000", "mx.dane.test/A", "www.example.com/A")
    # Under the anchor, unsigned data claimed "authenticated" is bogus...
    assert a["mx.dane.test/A"]["status"] == "bogus", a
    # ... and outside it, insecure: the claim alone never makes it secure.
    other = a["www.example.com/A"]
    assert other["status"] == "insecure" and other["addrs"] == "127.0.0.99", other


def test_delegation_to_the_wrong_key_is_bogus(dns):
    a, _, _ = ok_probe(*at(dns), "mx.broken.test/A", "nope.broken.test/A")
    for ans in a.values():
        assert ans["status"] == "bogus" and ans["n"] == "0", ans


def test_trust_anchor_that_does_not_match_is_bogus(dns):
    a, _, _ = ok_probe("-r", "127.0.0.1@%d" % dns.port, "-a", dns.wrong_trust_anchor_path,
                       "mx.dane.test/A", "direct.test/A", "_25._tcp.mx.dane.test/TLSA",
                       "nope.dane.test/A", "mx.plain.test/A")
    for key, ans in a.items():
        assert ans["status"] == "bogus", (key, ans)
        assert ans["n"] == "0", ans


def test_root_anchor_alone_does_not_validate_test_zone(dns):
    # Debian's root anchor knows nothing of test.: the chain cannot be
    # built, and the answer must not be secure.
    root = "/usr/share/dns/root.key"
    if not os.path.exists(root):
        pytest.skip("dns-root-data not installed")
    a, _, _ = ok_probe("-r", "127.0.0.1@%d" % dns.port, "-a", root, "-t", "5000",
                       "mx.dane.test/A")
    assert a["mx.dane.test/A"]["status"] != "secure"


def test_malformed_name_fails_from_the_loop(dns):
    # A label of 70 bytes cannot be asked: a DNS_FAIL answer, delivered
    # later from the loop like any other (never inside dns_lookup).
    bad = "x" * 70 + ".dane.test"
    a, done, _ = ok_probe(*at(dns), bad + "/A", "mx.dane.test/A")
    ans = a[bad + "/A"]
    assert ans["status"] == "fail" and ans["error"] and ans["rcode"] == "-1", ans
    assert a["mx.dane.test/A"]["status"] == "secure" and done["answers"] == "2"


def test_name_outside_every_served_zone_fails(dns):
    # nsd refuses names it has no zone for: the answer is a failure.
    a, _, _ = ok_probe(*at(dns), "-t", "5000", "www.example.com/A")
    ans = a["www.example.com/A"]
    assert ans["status"] == "fail" and ans["n"] == "0", ans


# ---------------------------------------------------------------------------
# Reserved names go to the resolver, not to a built-in local zone

def test_test_tld_and_default_local_zones_are_asked(dns):
    queries = {"direct.test/A": "127.0.0.5", "localhost/A": "127.0.0.3",
               "router.home.arpa/A": "192.168.1.1", "x.onion/A": "127.0.0.7",
               "x.invalid/A": "127.0.0.8"}
    ptrs = {"1.0.0.10.in-addr.arpa/12": "ten.example.",
            "1.0.20.172.in-addr.arpa/12": "private.example.",
            "1.0.100.100.in-addr.arpa/12": "cgnat.example."}
    a, _, _ = ok_probe(*at(dns), *queries, *ptrs)
    for q, addr in queries.items():
        assert a[q]["addrs"] == addr, (q, a[q])
        assert a[q]["status"] == ("secure" if q.endswith(".test/A") else "insecure")
    for q, target in ptrs.items():
        key = q.rsplit("/", 1)[0] + "/12"
        assert a[key]["status"] == "insecure", a[key]
        wire = "".join("%02x%s" % (len(lab), lab.encode().hex())
                       for lab in target.rstrip(".").split(".")) + "00"
        assert a[key]["rr"] == wire, a[key]


# ---------------------------------------------------------------------------
# Concurrency, timeouts, cancellation, the loop

def test_fifty_concurrent_lookups(dns):
    names = ["host%d.dane.test/A" % i for i in range(1, NHOSTS + 1)]
    a, done, _ = ok_probe(*at(dns), *names)
    assert done["answers"] == str(NHOSTS) and done["pending"] == "0"
    for i in range(1, NHOSTS + 1):
        ans = a["host%d.dane.test/A" % i]
        assert ans["status"] == "secure" and ans["addrs"] == "127.0.1.%d" % i, ans


def test_silent_resolver_times_out_and_loop_keeps_running(silent, dns):
    t0 = time.monotonic()
    a, done, _ = ok_probe("-r", "127.0.0.1@%d" % silent, "-a", dns.trust_anchor_path,
                          "-t", "1000", "-k", "10", "mx.dane.test/A", "host1.dane.test/TLSA")
    elapsed = time.monotonic() - t0
    for ans in a.values():
        assert ans["status"] == "timeout" and ans["error"] == "timeout", ans
        assert 900 <= int(ans["ms"]) <= 5000, ans
    assert elapsed < 10
    # A 10 ms timer kept firing while both lookups were outstanding: the
    # loop never waited on DNS (bounds generous for a loaded machine).
    assert int(done["ticks"]) >= 30, done
    assert int(done["maxgap_ms"]) < 500, done


def test_resolver_down_fails_within_timeout(ports, dns):
    dead = ports.get()   # nothing listens there
    t0 = time.monotonic()
    a, _, _ = ok_probe("-r", "127.0.0.1@%d" % dead, "-a", dns.trust_anchor_path,
                       "-t", "1000", "mx.dane.test/A")
    ans = a["mx.dane.test/A"]
    assert ans["status"] in ("timeout", "fail"), ans
    assert int(ans["ms"]) <= 5000 and time.monotonic() - t0 < 10


def test_cancel_before_answer_never_calls_back(dns):
    a, done, cancels = ok_probe(*at(dns), "-w", "1000", "!host1.dane.test/A",
                                "!host2.dane.test/TLSA", "mx.dane.test/A")
    assert sorted(cancels) == ["host1.dane.test/A", "host2.dane.test/TLSA"]
    assert set(a) == {"mx.dane.test/A"} and done["late"] == "0"
    assert done["pending"] == "0"


def test_cancel_of_silent_lookup_never_times_out(silent, dns):
    a, done, cancels = ok_probe("-r", "127.0.0.1@%d" % silent, "-a", dns.trust_anchor_path,
                                "-t", "300", "-w", "1000", "!mx.dane.test/A")
    assert cancels == ["mx.dane.test/A"] and a == {} and done["late"] == "0"


def test_cancel_from_inside_another_callback(silent, dns):
    # Both time out in the same loop pass; the first callback cancels the
    # second lookup, whose timer is already due: it must not fire.
    a, done, cancels = ok_probe("-r", "127.0.0.1@%d" % silent, "-a", dns.trust_anchor_path,
                                "-t", "300", "-w", "700", "first.dane.test/A",
                                "^second.dane.test/A", "^third.dane.test/TLSA")
    assert set(a) == {"first.dane.test/A"}, a
    assert sorted(cancels) == ["second.dane.test/A", "third.dane.test/TLSA"]
    assert done["late"] == "0" and done["pending"] == "0"


# ---------------------------------------------------------------------------
# Configuration and the fixture's restart

def test_settings_from_configuration_directory(dns, tmp_path, pki):
    conf = tmp_path / "conf.d"
    conf.mkdir()
    (conf / "00.conf").write_text(
        "[global]\ndns_resolver = 127.0.0.1@%d\ndnssec_trust_anchor = %s\n"
        "timeout_dns = 3s\n\n[mx]\nlisten = 127.0.0.1:2525\nupstream = 127.0.0.1:25\n"
        % (dns.port, dns.trust_anchor_path))
    a, _, _ = ok_probe("-c", conf, "mx.dane.test/A")
    assert a["mx.dane.test/A"]["status"] == "secure"


def test_bad_trust_anchor_file_fails_at_setup(dns, tmp_path):
    bad = tmp_path / "bad.ds"
    bad.write_text("this is not a DS record\n")
    for path in (bad, tmp_path / "missing.ds"):
        r, _, _, _, _ = probe("-r", "127.0.0.1@%d" % dns.port, "-a", path, "mx.dane.test/A")
        assert r.returncode == 2 and "setup error=" in r.stdout, r.stdout + r.stderr
        assert str(path) in r.stdout


def test_restart_changes_records_under_the_same_anchor(tmp_path, ports, pki):
    procs = Procs(tmp_path)
    try:
        zones, expect = make_zones(pki)
        server = DnsServer(procs, ports, tmp_path, zones,
                           insecure_zones=["plain.test.", Zone("island.test.", ["x A 127.0.0.9"])])
        anchor = Path(server.trust_anchor_path).read_text()
        a, _, _ = ok_probe(*at(server), "_25._tcp.mx.dane.test/TLSA", "x.island.test/A")
        assert a["x.island.test/A"]["status"] == "insecure"
        before = rrs(a["_25._tcp.mx.dane.test/TLSA"])
        assert before == set(expect.values())
        fixed = tlsa(pki.upstream, 3, 1, 1)
        zones2, _ = make_zones(pki, tlsa_extra=[fixed])
        server.restart(zones2, bogus=["mx.dane.test."])
        assert Path(server.trust_anchor_path).read_text() == anchor
        a, _, _ = ok_probe(*at(server), "_25._tcp.mx.dane.test/TLSA", "mx.dane.test/A")
        t = a["_25._tcp.mx.dane.test/TLSA"]
        assert t["status"] == "secure" and rrs(t) == before | {tlsa_wire_hex(fixed)}
        assert a["mx.dane.test/A"]["status"] == "bogus"
    finally:
        procs.cleanup()


@pytest.mark.slow
def test_under_valgrind(dns, silent, tmp_path):
    """Threads, the pipe, cancels and timeouts under memcheck: no invalid
    access, no leak of ours (the release dnsprobe; ASan covers build/san)."""
    exe = dnsprobe_path()
    if exe.parent.name == "san":
        pytest.skip("valgrind does not run sanitizer builds")
    log = tmp_path / "valgrind.log"
    queries = ["mx.dane.test/A", "alias.dane.test/A", "_25._tcp.mx.dane.test/TLSA",
               "bad.dane.test/A", "nope.dane.test/A", "!host1.dane.test/A",
               "^host2.dane.test/A", "mx.plain.test/A"]
    r = subprocess.run([VALGRIND] + VALGRIND_ARGS + ["--log-file=%s" % log, str(exe)]
                       + at(dns) + ["-w", "300"] + queries,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr + log.read_text()
    assert "answer name=mx.dane.test type=A wave=1 status=secure" in r.stdout
    assert report_problems(log.read_text()) == [], log.read_text()
    r = subprocess.run([VALGRIND] + VALGRIND_ARGS + ["--log-file=%s" % log, str(exe),
                        "-r", "127.0.0.1@%d" % silent, "-a", dns.trust_anchor_path,
                        "-t", "500", "-w", "300", "a.dane.test/A", "^b.dane.test/A",
                        "!c.dane.test/A"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "status=timeout" in r.stdout, r.stdout + r.stderr
    assert report_problems(log.read_text()) == [], log.read_text()


def test_long_lived_context_sees_changed_records(tmp_path, ports, pki):
    """One context across a restart of the server with a fixed TLSA record
    (TTL 1 s): its second lookup sees the new record, still secure."""
    old, new = tlsa(pki.server, 3, 1, 1), tlsa(pki.upstream, 3, 1, 1)

    def zones(rec):
        return [Zone("test.", [], ttl=1),
                Zone("dane.test.", ["mx A 127.0.0.1", "_25._tcp.mx TLSA " + rec], ttl=1)]

    procs = Procs(tmp_path)
    try:
        server = DnsServer(procs, ports, tmp_path, zones(old))
        out = tmp_path / "probe.out"
        with open(out, "w") as f:
            p = subprocess.Popen(dnsprobe_argv(*at(server), "-R", "6000",
                                               "_25._tcp.mx.dane.test/TLSA"),
                                 stdout=f, stderr=subprocess.PIPE, text=True)
        try:
            wait_until(lambda: "wave1" in out.read_text(), 10, "the first answer")
            server.restart(zones(new))
            _, err = p.communicate(timeout=30)
        finally:
            p.kill()
            p.wait()
        assert p.returncode == 0, err
        for mark in SANITIZER_MARKS:
            assert mark not in err, err
        a, done, _, _ = parse_output(out.read_text())
        first, second = a["_25._tcp.mx.dane.test/TLSA"], a["_25._tcp.mx.dane.test/TLSA#2"]
        assert first["status"] == "secure" and rrs(first) == {tlsa_wire_hex(old)}, first
        assert second["status"] == "secure" and rrs(second) == {tlsa_wire_hex(new)}, second
    finally:
        procs.cleanup()
