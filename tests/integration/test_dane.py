"""DANE (RFC 7672) on the upstream hop, with a real DNSSEC-signed zone
served by nsd on loopback and real TLS upstreams (aiosmtpd): every
outcome of the decision, each through its own service of one shim."""

import base64
import datetime
import hashlib
import smtplib
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from dnszone import DnsServer, Zone, tlsa
from clients import expected_received
from messages import make_message, sha256

DAY = datetime.timedelta(days=1)


# --------------------------------------------------------------------------
# Certificates: a DANE-TA anchor CA, leaves it signs, self-signed leaves


def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(path, cert, key, chain=()):
    pem = cert.public_bytes(serialization.Encoding.PEM)
    for c in chain:
        pem += c.public_bytes(serialization.Encoding.PEM)
    path.with_suffix(".pem").write_bytes(pem)
    path.with_suffix(".key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return str(path.with_suffix(".pem")), str(path.with_suffix(".key"))


def _cert(subject, issuer, pub, sign_key, names=(), ca=False, expired=False):
    now = datetime.datetime.utcnow()
    start, end = (now - 10 * DAY, now - 5 * DAY) if expired else (now - DAY, now + 2 * DAY)
    b = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
         .public_key(pub).serial_number(x509.random_serial_number())
         .not_valid_before(start).not_valid_after(end)
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if names:
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
                            critical=False)
    return b.sign(sign_key, hashes.SHA256())


class Pki:
    def __init__(self, d, ta_names):
        d.mkdir(parents=True, exist_ok=True)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = _cert("dane test CA", "dane test CA", ca_key.public_key(), ca_key, ca=True)
        self.ca, _ = _write(d / "ca", ca, ca_key)
        self.ca_cert = ca

        def leaf(name, names, expired=False, selfsigned=False):
            k = ec.generate_private_key(ec.SECP256R1())
            if selfsigned:
                c = _cert(name, name, k.public_key(), k, names, expired=expired)
                return _write(d / name, c, k)
            c = _cert(name, "dane test CA", k.public_key(), ca_key, names, expired=expired)
            # DANE-TA: the server sends its trust anchor (RFC 7672 3.1.2).
            return _write(d / name, c, k, chain=[ca])

        self.ee = leaf("ee", ["nothing-to-do-with-it.example"], selfsigned=True)
        self.ee_expired = leaf("ee-expired", ["x.example"], expired=True, selfsigned=True)
        self.other = leaf("other", ["x.example"], selfsigned=True)
        self.ta = leaf("ta", ta_names)
        self.ta_expired = leaf("ta-expired", ta_names, expired=True)


# --------------------------------------------------------------------------
# The scene: four upstreams, one signed zone, one shim with a service each


# host -> (server, [TLSA rdata], level, expected upstream_auth or reason_code)
def cases(p, port):
    ee311 = tlsa(p.ee[0], 3, 1, 1)
    return {
        "ee311": ("ee", [ee311], "dane", "dane-ee"),
        "ee301": ("ee", [tlsa(p.ee[0], 3, 0, 1)], "dane", "dane-ee"),
        "ee312": ("ee", [tlsa(p.ee[0], 3, 1, 2)], "dane", "dane-ee"),
        "ee300": ("ee", [tlsa(p.ee[0], 3, 0, 0)], "dane-only", "dane-ee"),
        "ta201": ("ta", [tlsa(p.ca, 2, 0, 1)], "dane", "dane-ta"),
        "ta211": ("ta", [tlsa(p.ca, 2, 1, 1)], "dane-only", "dane-ta"),
        "tawrong": ("ta", [tlsa(p.ca, 2, 0, 1)], "dane", "certificate-host-mismatch"),
        "mismatch": ("ee", [tlsa(p.other[0], 3, 1, 1)], "dane", "tlsa-invalid"),
        "rollover": ("ee", [tlsa(p.other[0], 3, 1, 1), ee311], "dane", "dane-ee"),
        "unusable": ("ee", [tlsa(p.ca, 0, 0, 1), tlsa(p.ee[0], 1, 1, 1)], "dane", "encrypt"),
        "unusable-only": ("ee", [tlsa(p.ca, 0, 0, 1), tlsa(p.ee[0], 1, 1, 1)], "dane-only",
                          "tlsa-invalid"),
        "notlsa": ("ta", [], "dane", "ca"),
        "notlsa-only": ("ta", [], "dane-only", "dane-required"),
        "eeexpired": ("ee_expired", [tlsa(p.ee_expired[0], 3, 1, 1)], "dane", "dane-ee"),
        "taexpired": ("ta_expired", [tlsa(p.ca, 2, 0, 1)], "dane", "certificate-expired"),
        "bogus": ("ee", [ee311], "dane", "dnssec-invalid"),
        "bogusaddr": ("ee", [ee311], "dane", "dnssec-invalid"),
        "alias": ("ee", None, "dane", "dane-ee"),           # CNAME -> ee311
        "alias2": ("ee", [ee311], "dane", "dane-ee"),       # CNAME -> target without TLSA
    }


TA_NAMES = ["ta201.dane.test", "ta211.dane.test", "notlsa.dane.test", "notlsa-only.dane.test",
            "taexpired.dane.test", "mx.insecure.test", "mx-only.insecure.test"]


@pytest.fixture
def scene(procs, ports, workdir, aiosmtpd):
    p = Pki(workdir / "dane-pki", TA_NAMES)
    servers = {name: aiosmtpd("implicit", cert=c, key=k)
               for name, (c, k) in (("ee", p.ee), ("ee_expired", p.ee_expired),
                                    ("ta", p.ta), ("ta_expired", p.ta_expired))}
    table = cases(p, None)
    recs = []
    for host, (srv, tl, _, _) in table.items():
        port = servers[srv].port
        if host == "alias":
            recs.append("alias CNAME ee311")
            continue
        if host == "alias2":
            recs.append("alias2 CNAME target2")
            recs.append("target2 A 127.0.0.1")
            for t in tl:
                recs.append("_%d._tcp.alias2 TLSA %s" % (port, t))
            continue
        recs.append("%s A 127.0.0.1" % host)
        for t in tl:
            recs.append("_%d._tcp.%s TLSA %s" % (port, host, t))
    insecure = ["mx A 127.0.0.1", "mx-only A 127.0.0.1",
                "_%d._tcp.mx TLSA %s" % (servers["ta"].port, tlsa(p.ca, 2, 0, 1))]
    dns = DnsServer(procs, ports, workdir, [
        Zone("test.", []), Zone("dane.test.", recs),
        Zone("insecure.test.", insecure, signed=False)],
        bogus=["_%d._tcp.bogus.dane.test." % servers["ee"].port, "bogusaddr.dane.test./A"])
    return p, servers, table, dns


def conf_for(p, servers, dns, services, timeout_dns="5s", resolver=None):
    text = ["[global]", "workers = 1", "helo_name = shim.test",
            "dns_resolver = %s" % (resolver or "127.0.0.1@%d" % dns.port),
            "dnssec_trust_anchor = %s" % dns.trust_anchor_path,
            "timeout_dns = %s" % timeout_dns, ""]
    for name, (listen, host, port, level) in services.items():
        text += ["[%s]" % name, "listen = 127.0.0.1:%d" % listen,
                 "upstream = %s:%d" % (host, port), "upstream_tls = implicit",
                 "upstream_verify = %s" % level, "upstream_ca = %s" % p.ca, ""]
    return "\n".join(text)


def deliver(port, test_id):
    _, msg = make_message(300, test_id=test_id)
    try:
        with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=20) as c:
            c.sendmail("sender@client.test", ["rcpt@legacy.test"], msg)
        return 250, msg
    except smtplib.SMTPConnectError as e:
        return e.smtp_code, e.smtp_error
    except smtplib.SMTPServerDisconnected as e:
        return 0, str(e).encode()


def test_dane_outcomes(make_shim, ports, scene):
    p, servers, table, dns = scene
    services, listen = {}, {}
    for host, (srv, _, level, _) in table.items():
        listen[host] = ports.get()
        services[host] = (listen[host], "%s.dane.test" % host, servers[srv].port, level)
    services["insecure"] = (ports.get(), "mx.insecure.test", servers["ta"].port, "dane")
    services["insecure-only"] = (ports.get(), "mx-only.insecure.test", servers["ta"].port,
                                 "dane-only")
    table = dict(table, **{"insecure": ("ta", [], "dane", "ca"),
                           "insecure-only": ("ta", [], "dane-only", "dane-required")})
    shim = make_shim(conf_for(p, servers, dns, services))
    problems = []
    for host, (srv, _, level, want) in table.items():
        code, got = deliver(services[host][0], "dane-" + host)
        line = shim.wait_log(lambda d, h=host: d.get("service") == h)[0]
        ok = want in ("dane-ee", "dane-ta", "ca", "encrypt")
        if ok:
            if code != 250 or line.get("upstream_auth") != want or line["result"] != "ok":
                problems.append("%s: want %s, got %s %r %s" % (host, want, code, got,
                                                                 line["_line"]))
            else:
                stored = servers[srv].message("dane-" + host)
                if sha256(stored) != sha256(expected_received(got)):
                    problems.append("%s: message altered" % host)
        else:
            dnsfail = want == "dnssec-invalid"
            if (code != 421 or (b"4.4.3" if dnsfail else b"4.7.5") not in got or
                    line["result"] != "refused" or line.get("reason_code") != want):
                problems.append("%s: want refused %s, got %s %r %s" % (host, want, code, got,
                                                                         line["_line"]))
            if servers[srv].find("dane-" + host):
                problems.append("%s: delivered although refused" % host)
    assert not problems, "\n".join(problems)


def test_resolver_down_refuses_within_timeout_dns(make_shim, ports, scene):
    p, servers, table, dns = scene
    dead = ports.get()      # nothing answers there
    port = ports.get()
    shim = make_shim(conf_for(p, servers, dns, {"down": (port, "ee311.dane.test",
                                                         servers["ee"].port, "dane")},
                              timeout_dns="1s", resolver="127.0.0.1@%d" % dead))
    t0 = time.monotonic()
    code, got = deliver(port, "dane-down")
    took = time.monotonic() - t0
    assert code == 421 and b"4.4.3" in got, (code, got)
    assert took < 10, took
    line = shim.wait_log(lambda d: d.get("service") == "down")[0]
    assert line["result"] == "refused" and line["reason_code"] == "dnssec-invalid", line


def test_wrong_trust_anchor_makes_everything_bogus(make_shim, ports, scene):
    p, servers, table, dns = scene
    port = ports.get()
    text = conf_for(p, servers, dns, {"wrongta": (port, "ee311.dane.test",
                                                  servers["ee"].port, "dane")})
    text = text.replace(dns.trust_anchor_path, dns.wrong_trust_anchor_path)
    shim = make_shim(text)
    code, got = deliver(port, "dane-wrongta")
    assert code == 421 and b"4.4.3" in got, (code, got)
    line = shim.wait_log(lambda d: d.get("service") == "wrongta")[0]
    assert line["reason_code"] == "dnssec-invalid", line["_line"]
    assert not servers["ee"].find("dane-wrongta")


def test_a_resumed_session_is_checked_again(make_shim, ports, procs, workdir, aiosmtpd):
    """TLSA records change between two sessions to the same upstream: the
    second one would resume the first's TLS session, and is refused all
    the same; once the record is right again, the next one goes through
    (no reload: records are looked up per session, kept for their TTL)."""
    p = Pki(workdir / "pki-resume", [])
    srv = aiosmtpd("implicit", cert=p.ee[0], key=p.ee[1])
    good = ["mx A 127.0.0.1", "_%d._tcp.mx TLSA %s" % (srv.port, tlsa(p.ee[0], 3, 1, 1))]
    bad = ["mx A 127.0.0.1", "_%d._tcp.mx TLSA %s" % (srv.port, tlsa(p.other[0], 3, 1, 1))]
    zones = lambda recs: [Zone("test.", [], ttl=1), Zone("dane.test.", recs, ttl=1)]
    dns = DnsServer(procs, ports, workdir, zones(good))
    port = ports.get()
    shim = make_shim(conf_for(p, {"ee": srv}, dns, {"r": (port, "mx.dane.test", srv.port,
                                                          "dane")}))
    assert deliver(port, "resume-1")[0] == 250
    dns.restart(zones(bad))
    time.sleep(2.5)
    code, got = deliver(port, "resume-2")
    assert code == 421 and b"4.7.5" in got, (code, got)
    dns.restart(zones(good))
    time.sleep(2.5)
    assert deliver(port, "resume-3")[0] == 250
    lines = shim.wait_log(lambda d: d.get("service") == "r", count=3)
    assert [d["result"] for d in lines] == ["ok", "refused", "ok"], [d["_line"] for d in lines]
    assert lines[1]["reason_code"] == "tlsa-invalid"
    assert srv.find("resume-1") and srv.find("resume-3") and not srv.find("resume-2")


def spki_pin(cert_path):
    with open(cert_path, "rb") as f:
        cert = x509.load_pem_x509_certificate(f.read())
    der = cert.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256/" + base64.b64encode(hashlib.sha256(der).digest()).decode()


def test_pins_hold_whatever_dane_decided(make_shim, ports, scene):
    """upstream_pin on top of DANE: records that match (DANE-EE), records
    none of which is usable (TLS without authentication otherwise), and no
    records (CA checks): a pin that matches no key of the chain refuses in
    each; one that matches lets the session on, named as DANE named it."""
    p, servers, table, dns = scene
    good, bad = spki_pin(p.ee[0]), spki_pin(p.other[0])
    ta_good = spki_pin(p.ta[0])
    # service -> (host, server, pin, expected upstream_auth or None: refused)
    want = {"ee-good": ("ee311", "ee", good, "dane-ee"),
            "ee-bad": ("ee311", "ee", bad, None),
            "unusable-good": ("unusable", "ee", good, "pin"),
            "unusable-bad": ("unusable", "ee", bad, None),
            "notlsa-good": ("notlsa", "ta", ta_good, "pin"),
            "notlsa-bad": ("notlsa", "ta", bad, None)}
    services, listen = {}, {}
    for name, (host, srv, _, _) in want.items():
        listen[name] = ports.get()
        services[name] = (listen[name], "%s.dane.test" % host, servers[srv].port, "dane")
    text = conf_for(p, servers, dns, services)
    for name, (_, _, pin, _) in want.items():
        text = text.replace("[%s]\n" % name, "[%s]\nupstream_pin = %s\n" % (name, pin))
    shim = make_shim(text)
    problems = []
    for name, (host, srv, _, auth) in want.items():
        code, got = deliver(listen[name], "pin-" + name)
        line = shim.wait_log(lambda d, n=name: d.get("service") == n)[0]
        if auth:
            if code != 250 or line.get("upstream_auth") != auth or line["result"] != "ok":
                problems.append("%s: want %s, got %s %r %s" % (name, auth, code, got,
                                                                 line["_line"]))
        elif (code != 421 or line["result"] != "refused" or
              line.get("reason_code") != "validation-failure" or
              servers[srv].find("pin-" + name)):
            problems.append("%s: want refused, got %s %r %s" % (name, code, got, line["_line"]))
        elif line["reason"] != "upstream certificate matches no upstream_pin":
            problems.append("%s: reason %r" % (name, line["reason"]))
    assert not problems, "\n".join(problems)
