"""PROXY headers from a load balancer (proxy_protocol = yes): believed only
from proxy_from, read up to the protocol's own size (a 16-byte fixed part
and 65535 bytes of addresses and TLVs), taken from the socket exactly (the
client's first bytes stay for the SMTP layer), and the client they name is
the one listen_plain_from judges. Raw sockets send the headers; the
untrusted peer is the same host seen as 127.0.0.2."""

import socket
import struct
import time

import pytest

from harness import service

V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def v2(src="198.51.100.7", sport=40000, dst="127.0.0.1", dport=25, tlv_bytes=0, local=False):
    """A v2 header (TCP over IPv4), with one custom TLV of tlv_bytes when
    asked (its 3-byte head included)."""
    body = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport)
    if tlv_bytes:
        body += struct.pack("!BH", 0xE0, tlv_bytes - 3) + b"x" * (tlv_bytes - 3)
    cmd = 0x20 if local else 0x21
    return V2_SIG + bytes([cmd, 0x11]) + struct.pack("!H", len(body)) + body


def v1(src="198.51.100.7", sport=40000, dst="127.0.0.1", dport=25):
    return b"PROXY TCP4 %s %s %d %d\r\n" % (src.encode(), dst.encode(), sport, dport)


def proxied_shim(make_shim, smtp_sink, ports, pki, listen_tls="plain", **extra):
    sink = smtp_sink()
    port = ports.get()
    extra.setdefault("proxy_from", "127.0.0.1/32")
    extra.setdefault("timeout_handshake", "5s")
    shim = make_shim({"lb": service(port, sink.port, listen_tls, "plain", pki,
                                    proxy_protocol="yes", **extra)})
    return shim, port


def connect(port, source="127.0.0.1"):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(10)
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    return s


_pending = {}


def read_reply(s, timeout=10):
    """The next whole reply (bytes after it stay for the next call); b""
    on EOF or timeout."""
    s.settimeout(timeout)
    data = _pending.pop(s, b"")
    while True:
        lines = data.split(b"\r\n")
        for i, line in enumerate(lines[:-1]):
            if len(line) >= 4 and line[3:4] == b" ":
                end = len(b"\r\n".join(lines[:i + 1])) + 2
                _pending[s] = data[end:]
                return data[:end]
        try:
            chunk = s.recv(65536)
        except (ConnectionResetError, socket.timeout):
            return b""
        if not chunk:
            return b""
        data += chunk


def read_all(s, timeout=10):
    s.settimeout(timeout)
    data = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            break
        except socket.timeout:
            break
        if not chunk:
            break
        data += chunk
    return data


def session(s):
    """Greeting, EHLO, QUIT over a socket whose header was sent."""
    assert read_reply(s).startswith(b"220 ")
    s.sendall(b"EHLO client.test\r\n")
    assert read_reply(s).startswith(b"250")
    s.sendall(b"QUIT\r\n")
    assert read_reply(s).startswith(b"221")


@pytest.mark.parametrize("header", ["v1", "v2"])
def test_trusted_balancer_names_the_client(make_shim, smtp_sink, ports, pki, header):
    shim, port = proxied_shim(make_shim, smtp_sink, ports, pki)
    with connect(port) as s:
        s.sendall(v1() if header == "v1" else v2())
        session(s)
    d = shim.wait_log()[0]
    assert d["result"] == "ok", d["_line"]
    assert d["client"] == "198.51.100.7:40000", d["_line"]


@pytest.mark.parametrize("header", ["v1", "v2"])
def test_untrusted_peer_is_refused_before_its_header_is_read(make_shim, smtp_sink, ports, pki,
                                                             header):
    shim, port = proxied_shim(make_shim, smtp_sink, ports, pki)
    with connect(port, source="127.0.0.2") as s:
        s.sendall(v1() if header == "v1" else v2())
        data = read_all(s, 5)
    assert data == b"", data
    d = shim.wait_log()[0]
    assert d["result"] == "refused", d["_line"]
    assert "proxy_from" in d["reason"], d["_line"]
    # The log names the real peer: its header was never believed.
    assert d["client"].startswith("127.0.0.2:"), d["_line"]


def test_untrusted_peer_refused_even_when_silent(make_shim, smtp_sink, ports, pki):
    shim, port = proxied_shim(make_shim, smtp_sink, ports, pki)
    with connect(port, source="127.0.0.2") as s:
        data = read_all(s, 5)
    assert data == b""
    d = shim.wait_log()[0]
    assert d["result"] == "refused" and "proxy_from" in d["reason"], d["_line"]


@pytest.mark.parametrize("tlv", [2000, 30000, 65535 - 12])
def test_large_v2_header_is_accepted(make_shim, smtp_sink, ports, pki, tlv):
    shim, port = proxied_shim(make_shim, smtp_sink, ports, pki)
    hdr = v2(tlv_bytes=tlv)
    assert len(hdr) == 16 + 12 + tlv
    with connect(port) as s:
        s.sendall(hdr)
        session(s)
    d = shim.wait_log()[0]
    assert d["result"] == "ok", d["_line"]
    assert d["client"] == "198.51.100.7:40000", d["_line"]


def test_large_header_and_first_command_in_one_write(make_shim, smtp_sink, ports, pki):
    """The header is taken exactly: the EHLO right behind it is the
    client's (the shim answers it after the greeting)."""
    shim, port = proxied_shim(make_shim, smtp_sink, ports, pki)
    with connect(port) as s:
        s.sendall(v2(tlv_bytes=40000) + b"EHLO client.test\r\n")
        assert read_reply(s).startswith(b"220 ")
        assert read_reply(s).startswith(b"250")
        s.sendall(b"QUIT\r\n")
        assert read_reply(s).startswith(b"221")
    assert shim.wait_log()[0]["result"] == "ok"


def test_header_in_pieces(make_shim, smtp_sink, ports, pki):
    shim, port = proxied_shim(make_shim, smtp_sink, ports, pki)
    hdr = v2(tlv_bytes=5000)
    with connect(port) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        cuts = [0, 5, 12, 15, 16, 100, 4000, len(hdr)]
        for a, b in zip(cuts, cuts[1:]):
            s.sendall(hdr[a:b])
            time.sleep(0.05)
        session(s)
    d = shim.wait_log()[0]
    assert d["result"] == "ok" and d["client"] == "198.51.100.7:40000", d["_line"]


def test_v1_byte_by_byte(make_shim, smtp_sink, ports, pki):
    shim, port = proxied_shim(make_shim, smtp_sink, ports, pki)
    with connect(port) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for b in v1(src="203.0.113.5", sport=1234):
            s.sendall(bytes([b]))
            time.sleep(0.005)
        session(s)
    d = shim.wait_log()[0]
    assert d["client"] == "203.0.113.5:1234", d["_line"]


def test_local_header_keeps_the_real_peer(make_shim, smtp_sink, ports, pki):
    shim, port = proxied_shim(make_shim, smtp_sink, ports, pki)
    with connect(port) as s:
        s.sendall(v2(local=True, tlv_bytes=3000))
        session(s)
    d = shim.wait_log()[0]
    assert d["client"].startswith("127.0.0.1:"), d["_line"]


@pytest.mark.parametrize("bad", [b"GET / HTTP/1.0\r\n\r\n", b"PROXY TCP4 1.2.3.4\r\n",
                                 V2_SIG + b"\x31\x11\x00\x0c" + b"\x00" * 12])
def test_bad_header_is_refused(make_shim, smtp_sink, ports, pki, bad):
    shim, port = proxied_shim(make_shim, smtp_sink, ports, pki)
    with connect(port) as s:
        s.sendall(bad)
        data = read_all(s, 5)
    assert data == b""
    d = shim.wait_log()[0]
    assert d["result"] == "refused" and "PROXY" in d["reason"], d["_line"]


def test_truncated_header_times_out(make_shim, smtp_sink, ports, pki):
    shim, port = proxied_shim(make_shim, smtp_sink, ports, pki, timeout_handshake="1s")
    with connect(port) as s:
        s.sendall(v2(tlv_bytes=3000)[:1000])
        data = read_all(s, 5)
    assert data == b""
    d = shim.wait_log()[0]
    assert d["result"] == "error" and "PROXY" in d["reason"], d["_line"]


@pytest.mark.parametrize("client,allowed", [("198.51.100.7", True), ("203.0.113.9", False)])
def test_proxied_client_judged_by_listen_plain_from(make_shim, smtp_sink, ports, pki, client,
                                                     allowed):
    """On a STARTTLS listener, the client the header names (not the
    balancer) is the one listen_plain_from lets send mail without TLS."""
    shim, port = proxied_shim(make_shim, smtp_sink, ports, pki, listen_tls="starttls",
                              listen_plain_from="198.51.100.0/24")
    with connect(port) as s:
        s.sendall(v1(src=client))
        assert read_reply(s).startswith(b"220 ")
        s.sendall(b"EHLO client.test\r\n")
        assert read_reply(s).startswith(b"250")
        s.sendall(b"MAIL FROM:<a@client.test>\r\n")
        reply = read_reply(s)
        assert reply.startswith(b"250" if allowed else b"530"), reply
        s.sendall(b"QUIT\r\n")
        read_reply(s)
    d = shim.wait_log()[0]
    assert d["client"].startswith(client + ":"), d["_line"]


def test_trusted_v2_before_implicit_tls(make_shim, smtp_sink, ports, pki):
    """The header comes before the ClientHello; TLS then runs as usual."""
    import ssl
    shim, port = proxied_shim(make_shim, smtp_sink, ports, pki, listen_tls="implicit")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(pki.ca)
    with connect(port) as raw:
        raw.sendall(v2(tlv_bytes=20000))
        with ctx.wrap_socket(raw, server_hostname="shim.test") as s:
            session(s)
    d = shim.wait_log()[0]
    assert d["result"] == "ok" and d["client"] == "198.51.100.7:40000", d["_line"]
    assert d["listen_tls"].startswith("TLSv1."), d["_line"]
