"""Upstream names as RFC 9525 says: a certificate is matched against its
subjectAltName only. A certificate signed by the trusted CA whose only
name is its subject CN is refused under upstream_verify = verify; the same
name as a DNS SAN is accepted."""

import subprocess
import time

import pytest

from harness import service
from clients import SmtpConn, smtp_send


def leaf(pki, directory, name, cn, san=None):
    """A server certificate for cn by the test CA; san None: no SAN at all."""
    key, csr, ext, pem = (str(directory / (name + s)) for s in (".key", ".csr", ".ext", ".pem"))
    subprocess.run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-out", key], check=True, capture_output=True)
    subprocess.run(["openssl", "req", "-new", "-key", key, "-subj", "/CN=" + cn, "-out", csr],
                   check=True, capture_output=True)
    lines = ["basicConstraints = critical, CA:false", "keyUsage = critical, digitalSignature",
             "extendedKeyUsage = serverAuth"]
    if san:
        lines.append("subjectAltName = " + san)
    (directory / (name + ".ext")).write_text("\n".join(lines) + "\n")
    subprocess.run(["openssl", "x509", "-req", "-in", csr, "-CA", pki.ca, "-CAkey",
                    pki.path("ca.key"), "-set_serial", "0x%x" % (int(time.time() * 1000)),
                    "-days", "2", "-sha256", "-extfile", ext, "-out", pem],
                   check=True, capture_output=True)
    return pem, key


def message():
    return (b"From: a@client.test\r\nTo: b@legacy.test\r\nSubject: certs\r\n"
            b"X-Test-Id: certs-%d\r\n\r\nbody\r\n" % int(time.time() * 1e6))


@pytest.mark.parametrize("upstream_tls", ["implicit", "starttls"])
def test_cn_only_certificate_is_refused(make_shim, aiosmtpd, ports, pki, workdir, upstream_tls):
    cert, key = leaf(pki, workdir, "cn-only", "legacy.test")
    up = aiosmtpd(upstream_tls, cert=cert, key=key)
    port = ports.get()
    shim = make_shim({"mx": service(port, up.port, upstream_tls=upstream_tls, pki=pki,
                                    upstream_verify="verify")})
    with SmtpConn(port) as c:
        code, lines = c.reply()
        assert code == 421 and lines[0].startswith("421 4.7.0"), lines
    d = shim.wait_log(lambda d: d.get("result") in ("refused", "error", "ok"))[0]
    assert d["result"] == "refused", d
    assert d["upstream_auth"] == "none", d
    assert "verif" in d.get("reason", "") or "name" in d.get("reason", ""), d
    time.sleep(0.2)
    assert up.count() == 0


def test_same_name_as_san_is_accepted(make_shim, aiosmtpd, ports, pki, workdir):
    cert, key = leaf(pki, workdir, "with-san", "legacy.test", "DNS:legacy.test")
    up = aiosmtpd("implicit", cert=cert, key=key)
    port = ports.get()
    shim = make_shim({"mx": service(port, up.port, upstream_tls="implicit", pki=pki,
                                    upstream_verify="verify")})
    code, text = smtp_send(port, message(), "plain")
    assert code == 250, text
    d = shim.wait_log(lambda d: d.get("result") == "ok")[0]
    assert d["upstream_auth"] == "ca", d


def test_cn_only_is_fine_without_name_checks(make_shim, aiosmtpd, ports, pki, workdir):
    """upstream_verify = encrypt checks no name: the CN-only peer is served,
    and the log says the hop was only encrypted."""
    cert, key = leaf(pki, workdir, "cn-only-enc", "legacy.test")
    up = aiosmtpd("implicit", cert=cert, key=key)
    port = ports.get()
    svc = service(port, up.port, upstream_tls="implicit", pki=pki, upstream_verify="encrypt")
    shim = make_shim({"mx": svc})
    code, text = smtp_send(port, message(), "plain")
    assert code == 250, text
    d = shim.wait_log(lambda d: d.get("result") == "ok")[0]
    assert d["upstream_auth"] == "encrypt", d
