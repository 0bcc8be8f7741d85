"""An outside TLS audit of mailshim's listen hop with its default policy:
testssl (package testssl.sh) against an implicit TLS listener and, with
-t smtp, against a STARTTLS listener, both in front of smtp-sink.

    testssl --color 0 --warnings off --quiet -p -s -f -P -U [-t smtp] 127.0.0.1:PORT

The two runs take 60-120 s each and run concurrently, once per module;
each test below reads their output. testssl's exit code is not a
verdict (it is non-zero on clean runs): the output is parsed instead.
"""

import re
import shutil
import subprocess
import threading
import time

import pytest

from harness import Procs, Shim, public_dir, service, tail
from peers import SmtpSink

pytestmark = pytest.mark.slow

TESTSSL = "testssl"
TESTSSL_ARGS = ["--color", "0", "--warnings", "off", "--quiet", "-p", "-s", "-f", "-P", "-U"]
TESTSSL_TIMEOUT = 420
TARGETS = ("implicit", "starttls")

# Forward-secret AEAD suites: TLS 1.3's (all AEAD, key exchange always
# ephemeral) and TLS 1.2's (EC)DHE with GCM, CCM or ChaCha20-Poly1305.
FS_AEAD = re.compile(
    r"^(TLS_(AES_128_GCM_SHA256|AES_256_GCM_SHA384|CHACHA20_POLY1305_SHA256"
    r"|AES_128_CCM_SHA256|AES_128_CCM_8_SHA256)"
    r"|(EC)?DHE-(ECDSA|RSA)-(AES(128|256)-GCM-SHA(256|384)|CHACHA20-POLY1305"
    r"|AES(128|256)-CCM(8)?))$")

# Lines of testssl -U that must be there (so a run that broke off early
# cannot pass by saying nothing).
VULN_CHECKS = ("Heartbleed", "CCS", "ROBOT", "Secure Renegotiation",
               "Secure Client-Initiated Renegotiation", "CRIME", "POODLE", "TLS_FALLBACK_SCSV",
               "SWEET32", "FREAK", "DROWN", "LOGJAM", "BEAST", "LUCKY13", "RC4")


class Audit:
    def __init__(self, target, argv, path):
        self.target = target
        self.argv = argv
        self.path = path
        self.rc = None
        self.seconds = None
        self.text = ""
        self.error = None

    def run(self):
        t0 = time.monotonic()
        try:
            with open(self.path, "wb") as f:
                r = subprocess.run(self.argv, stdout=f, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, timeout=TESTSSL_TIMEOUT)
            self.rc = r.returncode
        except subprocess.TimeoutExpired:
            self.error = "testssl did not finish within %d s" % TESTSSL_TIMEOUT
        except OSError as e:
            self.error = "testssl could not run: %s" % e
        self.seconds = time.monotonic() - t0
        self.text = self.path.read_bytes().decode("utf-8", "replace") if self.path.exists() else ""

    def section(self, title):
        """The lines of the output section whose heading starts with title,
        up to the next heading (a line starting with ' Testing' or ' Done')."""
        lines = self.text.splitlines()
        out, inside = [], False
        for line in lines:
            if line.startswith(" " + title):
                inside = True
                continue
            if inside and (line.startswith(" Testing") or line.startswith(" Done")):
                break
            if inside:
                out.append(line)
        return out

    def line(self, label):
        """The first line whose text (after leading blanks) starts with
        label followed by blanks, e.g. line('TLS 1') does not match 'TLS 1.1'."""
        pat = re.compile(r"^\s*" + re.escape(label) + r"(\s|$)")
        for l in self.text.splitlines():
            if pat.match(l):
                return l
        return None

    def __str__(self):
        return "testssl %s (rc=%s, %.0f s):\n%s" % (" ".join(self.argv), self.rc,
                                                    self.seconds or 0, self.text)


@pytest.fixture(scope="module")
def audits(tmp_path_factory, ports, pki, mailshim_path):
    """{target: Audit}: both testssl runs against one mailshim with the
    default policy (no listen_ciphers, no minimum version set)."""
    if shutil.which(TESTSSL) is None:
        pytest.fail("testssl is not installed (Debian package testssl.sh; tests/deps.sh)")
    workdir = tmp_path_factory.mktemp("tlsaudit")
    procs = Procs(workdir)
    sinkdir = public_dir("mailshim-tlsaudit-sink-")
    try:
        sink = SmtpSink(procs, ports.get(), sinkdir)
        ports_by_target = {t: ports.get() for t in TARGETS}
        shim = Shim(procs, workdir / "shim", mailshim_path)
        shim.start({t: service(p, sink.port, t, "plain", pki)
                    for t, p in ports_by_target.items()})
        runs = {}
        for t, p in ports_by_target.items():
            argv = [TESTSSL, *TESTSSL_ARGS]
            if t == "starttls":
                argv += ["-t", "smtp"]
            argv.append("127.0.0.1:%d" % p)
            runs[t] = Audit(t, argv, workdir / ("testssl-%s.txt" % t))
        threads = [threading.Thread(target=a.run) for a in runs.values()]
        for th in threads:
            th.start()
        for th in threads:
            th.join(TESTSSL_TIMEOUT + 30)
        for a in runs.values():
            print("testssl %s: %.0f s, rc=%s" % (a.target, a.seconds or -1, a.rc))
        runs["_shim"] = shim
        yield runs
        shim.stop()
    finally:
        procs.cleanup()
        shutil.rmtree(sinkdir, ignore_errors=True)


def audit_of(audits, target):
    a = audits[target]
    assert a.error is None, "%s\n%s" % (a.error, a)
    assert "Done" in a.text and a.line("TLS 1.2"), "testssl did not complete:\n%s" % a
    return a


@pytest.mark.parametrize("target", TARGETS)
def test_protocols(audits, target):
    a = audit_of(audits, target)
    for proto in ("SSLv2", "SSLv3", "TLS 1", "TLS 1.1"):
        line = a.line(proto)
        assert line and re.match(r"^\s*%s\s+not offered" % re.escape(proto), line), \
            "%s: %r\n%s" % (proto, line, a)
    for proto in ("TLS 1.2", "TLS 1.3"):
        line = a.line(proto)
        assert line and re.match(r"^\s*%s\s+offered" % re.escape(proto), line), \
            "%s: %r\n%s" % (proto, line, a)


CATEGORIES_NOT_OFFERED = ("NULL ciphers", "Anonymous NULL Ciphers", "Export ciphers",
                          "LOW: 64 Bit", "Triple DES Ciphers", "Obsolete CBC ciphers")


@pytest.mark.parametrize("target", TARGETS)
def test_cipher_categories(audits, target):
    a = audit_of(audits, target)
    section = a.section("Testing cipher categories")
    assert section, a
    for label in CATEGORIES_NOT_OFFERED:
        hits = [l for l in section if l.strip().startswith(label)]
        assert len(hits) == 1, "%s: %r\n%s" % (label, hits, a)
        assert re.search(r"\s\s+not offered", hits[0]), hits[0]
    aead = [l for l in section if l.strip().startswith("Strong encryption (AEAD ciphers)")]
    assert aead and re.search(r"\s\s+offered", aead[0]) and "not offered" not in aead[0], a


def fs_ciphers(a):
    """The cipher names listed in the forward secrecy section."""
    section = a.section("Testing robust (perfect) forward secrecy")
    names, inside = [], False
    for line in section:
        m = re.match(r"^\s*PFS is offered \(OK\)\s+(.*)$", line)
        if m:
            inside = True
            names += m.group(1).split()
            continue
        if inside:
            if re.match(r"^\s{20,}\S", line):
                names += line.split()
            else:
                inside = False
    return section, names


def cipher_order(a):
    """{protocol: [ciphers]} from -P's 'Cipher order' listing."""
    section = a.section("Testing server preferences")
    out, proto, inside = {}, None, False
    for line in section:
        if line.strip().startswith("Cipher order"):
            inside = True
            continue
        if not inside or not line.strip():
            continue
        m = re.match(r"^\s+((?:SSLv\d|TLSv1(?:\.\d)?)):\s+(.*)$", line)
        if m:
            proto = m.group(1)
            out[proto] = m.group(2).split()
        elif proto and re.match(r"^\s{10,}\S", line):
            out[proto] += line.split()
        else:
            inside = False
    return out


@pytest.mark.parametrize("target", TARGETS)
def test_only_forward_secret_aead(audits, target):
    a = audit_of(audits, target)
    section, names = fs_ciphers(a)
    assert names, "no 'PFS is offered (OK)' list:\n%s" % "\n".join(section)
    not_fs_aead = [n for n in names if not FS_AEAD.match(n)]
    assert not not_fs_aead, "not forward-secret AEAD: %s\n%s" % (not_fs_aead, a)
    assert any(n.startswith("TLS_") for n in names), names        # TLS 1.3 suites
    assert any(not n.startswith("TLS_") for n in names), names    # TLS 1.2 suites
    # Every TLS 1.2 (and older) cipher the server accepts, in its order:
    # all forward-secret AEAD, and all in the forward secrecy list.
    order = cipher_order(a)
    assert order.get("TLSv1.2"), "no TLSv1.2 cipher order:\n%s" % a
    for proto in ("SSLv3", "TLSv1", "TLSv1.1"):
        assert proto not in order, "%s ciphers offered: %s" % (proto, order[proto])
    offered = [c for proto, cs in order.items() if proto != "TLSv1.3" for c in cs]
    assert all(FS_AEAD.match(c) for c in offered), order
    assert set(offered) <= set(names), (offered, names)
    # No RSA key transport at all (ROBOT's precondition).
    robot = a.line("ROBOT")
    assert robot and ("not vulnerable" in robot
                      or "does not support any cipher suites that use RSA key transport"
                      in robot), robot


@pytest.mark.parametrize("target", TARGETS)
def test_server_cipher_order(audits, target):
    a = audit_of(audits, target)
    line = a.line("Has server cipher order?")
    assert line and re.match(r"^\s*Has server cipher order\?\s+yes", line), "%r\n%s" % (line, a)


@pytest.mark.parametrize("target", TARGETS)
def test_no_vulnerability(audits, target):
    a = audit_of(audits, target)
    section = a.section("Testing vulnerabilities")
    text = "\n".join(section)
    for check in VULN_CHECKS:
        assert re.search(r"(?m)^\s*" + re.escape(check) + r"\b", text), \
            "no %s line in the vulnerability section:\n%s" % (check, a)
    bad = [l for l in section if "VULNERABLE" in l or re.search(r"not ok", l, re.I)]
    assert not bad, "\n".join(bad)
    # Nowhere in the whole report either.
    bad = [l for l in a.text.splitlines() if "VULNERABLE" in l or re.search(r"\bNOT ok\b", l)]
    assert not bad, "\n".join(bad)


def test_shim_survived_the_audit(audits):
    for t in TARGETS:
        audit_of(audits, t)
    shim = audits["_shim"]
    assert shim.proc.alive(), "mailshim exited during the audit:\n%s" % tail(shim.stderr_text())
    lines = shim.log_lines()
    # Both listeners were really probed, and some probes completed a session.
    services = {d.get("service") for d in lines}
    assert set(TARGETS) <= services, services
    assert any(d.get("result") == "ok" for d in lines), tail(shim.stderr_text())
