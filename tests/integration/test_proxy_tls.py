"""upstream_proxy_protocol = v2 on an implicit-TLS listener: the header
goes after the client's handshake and carries its TLS in TLVs (HAProxy's
proxy-protocol.txt 2.2): PP2_TYPE_AUTHORITY with the SNI, PP2_TYPE_SSL
with PP2_CLIENT_SSL, the certificate bits and verify field, and the
version and cipher sub-TLVs. The header is read here by a parser of the
test's own, and by a real Postfix. Plain and STARTTLS listeners send the
header before any TLS, so without TLS TLVs."""

import smtplib
import socket
import ssl
import struct
import time

import pytest

from harness import service, tail, wait_until
from clients import s_client

SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def parse_tlvs(data):
    """[(type, value)] of a TLV list; asserts it is well formed."""
    out, at = [], 0
    while at < len(data):
        assert len(data) - at >= 3, data
        t, n = data[at], struct.unpack("!H", data[at + 1:at + 3])[0]
        assert at + 3 + n <= len(data), data
        out.append((t, data[at + 3:at + 3 + n]))
        at += 3 + n
    return out


def parse_v2(hdr):
    """The addresses and TLVs of a PROXY v2 header, by the specification."""
    assert hdr[:12] == SIG
    assert hdr[12] == 0x21, "not a PROXY command: %r" % hdr[:16]
    fam, length = hdr[13], struct.unpack("!H", hdr[14:16])[0]
    body = hdr[16:16 + length]
    assert len(body) == length
    if fam == 0x11:
        src, dst = socket.inet_ntop(socket.AF_INET, body[0:4]), \
            socket.inet_ntop(socket.AF_INET, body[4:8])
        sport, dport = struct.unpack("!HH", body[8:12])
        rest = body[12:]
    else:
        assert fam == 0x21, fam
        src, dst = socket.inet_ntop(socket.AF_INET6, body[0:16]), \
            socket.inet_ntop(socket.AF_INET6, body[16:32])
        sport, dport = struct.unpack("!HH", body[32:36])
        rest = body[36:]
    tlvs = parse_tlvs(rest)
    out = {"src": (src, sport), "dst": (dst, dport), "types": [t for t, _ in tlvs]}
    for t, v in tlvs:
        if t == 0x02:
            out["authority"] = v.decode()
        elif t == 0x20:
            assert len(v) >= 5
            out["client"] = v[0]
            out["verify"] = struct.unpack("!I", v[1:5])[0]
            for st, sv in parse_tlvs(v[5:]):
                out[{0x21: "version", 0x22: "cn", 0x23: "cipher"}.get(st, st)] = sv.decode()
    return out


class HeaderUpstream:
    """A TCP upstream that reads a PROXY v2 header (recording when and what
    came), then plays a minimal SMTP server: 220, 250 to EHLO, 221 to QUIT."""

    def __init__(self, raw_server):
        self.headers = []
        self.connected_at = []
        self.header_at = []
        self.server = raw_server(self.handle)
        self.port = self.server.port

    def read_exact(self, conn, n):
        data = b""
        while len(data) < n:
            chunk = conn.recv(n - len(data))
            if not chunk:
                raise EOFError("closed after %r" % data)
            data += chunk
        return data

    def handle(self, conn, server):
        conn.settimeout(15)
        self.connected_at.append(time.monotonic())
        fixed = self.read_exact(conn, 16)
        hdr = fixed + self.read_exact(conn, struct.unpack("!H", fixed[14:16])[0])
        self.header_at.append(time.monotonic())
        self.headers.append(hdr)
        conn.sendall(b"220 fake.test ESMTP\r\n")
        buf = b""
        while True:
            chunk = conn.recv(4096)
            if not chunk:
                return
            buf += chunk
            while b"\r\n" in buf:
                line, buf = buf.split(b"\r\n", 1)
                if line.upper().startswith(b"QUIT"):
                    conn.sendall(b"221 bye\r\n")
                    conn.close()
                    return
                conn.sendall(b"250 ok\r\n")


def probe(port, version, **kw):
    return s_client(port, ["EHLO client.test", "QUIT"], version=version, delay=0.15,
                    timeout=10, until=r"^221 ", servername="shim.test", **kw)


@pytest.mark.parametrize("version", ["tls1_2", "tls1_3"])
def test_v2_header_carries_the_clients_tls(make_shim, raw_server, ports, pki, version):
    up = HeaderUpstream(raw_server)
    port = ports.get()
    make_shim({"sub": service(port, up.port, "implicit", pki=pki,
                              upstream_proxy_protocol="v2")})
    r = probe(port, version)
    assert r.handshake_ok and any(l.startswith("221") for l in r.lines()), r
    wait_until(lambda: up.headers, 5, "the header")
    h = parse_v2(up.headers[0])
    assert h["src"][0] == "127.0.0.1" and h["dst"] == ("127.0.0.1", port), h
    assert h["authority"] == "shim.test", h
    assert h["types"] == [0x02, 0x20], h          # haproxy's order
    assert h["client"] == 0x01, h                 # PP2_CLIENT_SSL, no certificate
    assert h["verify"] != 0, h                    # nothing was verified
    assert h["version"] == r.protocol, (h, r.protocol)
    assert h["cipher"] == r.cipher, (h, r.cipher)


def test_v2_header_without_sni_has_no_authority(make_shim, raw_server, ports, pki):
    up = HeaderUpstream(raw_server)
    port = ports.get()
    make_shim({"sub": service(port, up.port, "implicit", pki=pki,
                              upstream_proxy_protocol="v2")})
    r = s_client(port, ["QUIT"], delay=0.15, timeout=10, until=r"^221 ",
                 extra=["-noservername"])
    assert r.handshake_ok, r
    wait_until(lambda: up.headers, 5, "the header")
    h = parse_v2(up.headers[0])
    assert "authority" not in h and h["types"] == [0x20], h
    assert h["version"] == r.protocol


def test_v2_header_tells_a_verified_client_certificate(make_shim, raw_server, ports, pki):
    up = HeaderUpstream(raw_server)
    port = ports.get()
    make_shim({"sub": service(port, up.port, "implicit", pki=pki, listen_client_ca=pki.ca,
                              upstream_proxy_protocol="v2")})
    r = probe(port, "tls1_3", extra=["-cert", pki.client, "-key", pki.client_key])
    assert r.handshake_ok and any(l.startswith("221") for l in r.lines()), r
    wait_until(lambda: up.headers, 5, "the header")
    h = parse_v2(up.headers[0])
    assert h["client"] == 0x01 | 0x02 | 0x04, h   # SSL, CERT_CONN, CERT_SESS
    assert h["verify"] == 0, h


def test_header_waits_for_the_clients_handshake(make_shim, raw_server, ports, pki):
    """The upstream connect is done at once, but not one byte reaches the
    upstream before the client's handshake is over."""
    up = HeaderUpstream(raw_server)
    port = ports.get()
    make_shim({"sub": service(port, up.port, "implicit", pki=pki,
                              upstream_proxy_protocol="v2")})
    # A client that connects and says nothing for a while.
    idle = socket.create_connection(("127.0.0.1", port))
    try:
        wait_until(lambda: up.connected_at, 5, "the upstream connect")
        time.sleep(0.8)
        assert up.headers == [], "the header went before any TLS"
        ctx = ssl.create_default_context(cafile=pki.ca)
        tls = ctx.wrap_socket(idle, server_hostname="shim.test")
        assert tls.recv(100).startswith(b"220 fake.test")
        h = parse_v2(up.headers[0])
        assert h["version"] == tls.version() and h["authority"] == "shim.test", h
        assert up.header_at[0] - up.connected_at[0] >= 0.8
        tls.sendall(b"QUIT\r\n")
        assert tls.recv(100).startswith(b"221")
        tls.close()
    finally:
        idle.close()


def test_header_waits_only_so_long_as_the_handshake_may(make_shim, raw_server, ports, pki):
    """A client that never hand-shakes is closed at timeout_handshake, and
    the upstream never got a header."""
    up = HeaderUpstream(raw_server)
    port = ports.get()
    shim = make_shim({"sub": service(port, up.port, "implicit", pki=pki,
                                     upstream_proxy_protocol="v2",
                                     timeout_handshake="1s")})
    s = socket.create_connection(("127.0.0.1", port))
    try:
        s.settimeout(5)
        assert s.recv(10) == b""
    finally:
        s.close()
    d = shim.wait_log()[0]
    assert d["result"] != "ok" and "handshake" in d.get("reason", ""), d["_line"]
    assert up.headers == []


@pytest.mark.parametrize("listen_tls", ["plain", "starttls"])
def test_no_tls_tlvs_before_tls(make_shim, raw_server, ports, pki, listen_tls):
    up = HeaderUpstream(raw_server)
    port = ports.get()
    make_shim({"sub": service(port, up.port, listen_tls, pki=pki,
                              upstream_proxy_protocol="v2")})
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=10) as c:
        assert c.ehlo()[0] == 250
    wait_until(lambda: up.headers, 5, "the header")
    h = parse_v2(up.headers[0])
    assert h["types"] == [], h
    assert h["dst"] == ("127.0.0.1", port)


@pytest.mark.postfix
def test_postfix_reads_the_header_with_tls_tlvs(make_shim, ports, pki, postfix):
    pf = postfix()
    port = ports.get()
    make_shim({"sub": service(port, pf.proxy_port, "implicit", pki=pki,
                              upstream_proxy_protocol="v2")})
    ctx = ssl.create_default_context(cafile=pki.ca)
    ctx.check_hostname = False     # smtplib names the host 127.0.0.1
    with smtplib.SMTP_SSL("127.0.0.1", port, local_hostname="client.test", timeout=10,
                          context=ctx, source_address=("127.0.0.7", 0)) as c:
        line = pf.client_of(c, "pf-proxy-tls")
    assert line and "[127.0.0.7]" in line, (line, tail(pf.maillog()))
    assert "[127.0.0.1]" not in line
