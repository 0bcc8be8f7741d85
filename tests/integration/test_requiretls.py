"""REQUIRETLS (RFC 8689): mailshim offers it to a client only when both
hops of the session are TLS and the upstream's server was authenticated,
and the upstream offers it; anywhere else it is taken out of the EHLO
reply and a MAIL FROM asking for it gets 5.7.30, never reaching the
upstream. The upstream here is a scripted TLS server offering it."""

import pytest

from harness import service
from clients import SmtpConn
from hostile import expect_line, send, stall

EHLO = b"250-fake.test\r\n250-REQUIRETLS\r\n250 8BITMIME\r\n"


def upstream(fake_upstream):
    return fake_upstream([send(b"220 fake.test ESMTP\r\n"), expect_line(r"^EHLO"), send(EHLO),
                          expect_line(r"^MAIL"), send(b"250 2.1.0 ok\r\n"), stall(10)],
                         tls="implicit")


CASES = {
    # id: (listen mode, upstream_verify, offered)
    "tls-both-hops-verified": ("implicit", "verify", True),
    "plain-listen-hop": ("plain", "verify", False),
    "upstream-not-authenticated": ("implicit", "encrypt", False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_requiretls_only_over_authenticated_tls(make_shim, fake_upstream, ports, pki, case):
    listen, verify, offered = CASES[case]
    up = upstream(fake_upstream)
    port = ports.get()
    extra = {"upstream_verify": verify}
    svc = service(port, up.port, listen, "implicit", pki, **extra)
    if verify == "encrypt":
        svc.pop("upstream_ca", None)
        svc.pop("upstream_name", None)
    make_shim({"r": svc})
    c = SmtpConn(port, tls=listen == "implicit", cafile=pki.ca)
    assert c.reply()[0] == 220
    code, lines = c.cmd("EHLO client.test")
    assert code == 250
    words = [l[4:].split()[0].upper() for l in lines[1:] if l[4:].split()]
    assert ("REQUIRETLS" in words) == offered, lines
    code, lines = c.cmd("MAIL FROM:<a@client.test> REQUIRETLS")
    if offered:
        assert code == 250, lines
        up.wait_conns(1)
        assert b"MAIL FROM:<a@client.test> REQUIRETLS" in up.all_bytes()
    else:
        assert code == 550 and "5.7.30" in lines[0], lines
        assert b"MAIL" not in up.all_bytes()
    c.close()
