"""What the README claims about load balancers, several names and client
certificates, shown with real peers: a real haproxy sending PROXY v2 in
front of mailshim, a real Postfix reading mailshim's PROXY v1/v2 header,
listen certificates picked by SNI, and client certificates checked
against listen_client_ca."""

import os
import smtplib
import socket
import ssl

import pytest

from harness import service, tail, wait_until
from peers import PrivatePostfix, postfix_main_add, wait_listening
from clients import SmtpConn, expected_received
from messages import make_message, sha256

HAPROXY = "/usr/sbin/haproxy"


def haproxy(procs, workdir, listen_port, shim_port, send="send-proxy-v2"):
    """A real haproxy in TCP mode on 127.0.0.1:listen_port passing each
    client to the shim with a PROXY header (send-proxy or send-proxy-v2)."""
    cfg = workdir / ("haproxy-%d.cfg" % listen_port)
    cfg.write_text("\n".join([
        "global",
        "    maxconn 100",
        "defaults",
        "    mode tcp",
        "    timeout connect 5s",
        "    timeout client 30s",
        "    timeout server 30s",
        "frontend fe",
        "    bind 127.0.0.1:%d" % listen_port,
        "    default_backend be",
        "backend be",
        "    server shim 127.0.0.1:%d %s" % (shim_port, send),
        "",
    ]))
    p = procs.start("haproxy", [HAPROXY, "-db", "-f", str(cfg)])
    wait_listening(p, listen_port)
    return p


def smtp_from(source, port, timeout=10):
    """An smtplib client whose TCP source address is source (127.x)."""
    return smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=timeout,
                        source_address=(source, 0))


def send_from(source, port, test_id, starttls=False):
    msg = make_message(2000, test_id=test_id)[1]
    with smtp_from(source, port) as c:
        c.ehlo()
        if starttls:
            c.starttls(context=ssl._create_unverified_context())
            c.ehlo()
        c.sendmail("sender@client.test", ["rcpt@legacy.test"], msg)
    return msg


# --------------------------------------------------------------------------
# haproxy -> mailshim: the client haproxy saw is the one the shim judges


def test_haproxy_v2_client_judged_by_listen_plain_from(make_shim, ports, pki, smtp_sink,
                                                       procs, workdir):
    sink = smtp_sink()
    port, lb = ports.many(2)
    shim = make_shim({"mx": service(port, sink.port, "starttls", pki=pki,
                                    listen_plain_from="127.0.0.5/32",
                                    proxy_protocol="yes", proxy_from="127.0.0.1")})
    haproxy(procs, workdir, lb, port)

    # 127.0.0.5 may send in the clear; haproxy's own address (127.0.0.1)
    # would not be, so this shows the header was believed.
    msg = send_from("127.0.0.5", lb, "hap-plain-ok")
    got = sink.message("hap-plain-ok")
    assert sha256(got) == sha256(expected_received(msg))

    # 127.0.0.6 must use TLS first.
    with smtp_from("127.0.0.6", lb) as c:
        c.ehlo()
        assert c.has_extn("starttls")
        code, text = c.mail("sender@client.test")
        assert code == 530, (code, text)

    # ...and can, through haproxy, once it has.
    msg = send_from("127.0.0.6", lb, "hap-tls-ok", starttls=True)
    assert sha256(sink.message("hap-tls-ok")) == sha256(expected_received(msg))

    lines = shim.wait_log(lambda d: d.get("result") == "ok", count=2)
    clients = sorted(d["client"].rsplit(":", 1)[0] for d in lines)
    assert clients[:2] == ["127.0.0.5", "127.0.0.6"], [d["_line"] for d in lines]
    assert not any(d["client"].startswith("127.0.0.1:") for d in shim.log_lines())


def test_haproxy_v1_header_believed(make_shim, ports, pki, smtp_sink, procs, workdir):
    sink = smtp_sink()
    port, lb = ports.many(2)
    shim = make_shim({"mx": service(port, sink.port, "starttls", pki=pki,
                                    listen_plain_from="127.0.0.8/32",
                                    proxy_protocol="yes", proxy_from="127.0.0.1")})
    haproxy(procs, workdir, lb, port, send="send-proxy")
    send_from("127.0.0.8", lb, "hap-v1")
    assert sink.message("hap-v1")
    d = shim.wait_log(lambda d: d.get("result") == "ok")[0]
    assert d["client"].startswith("127.0.0.8:"), d["_line"]


# --------------------------------------------------------------------------
# mailshim -> Postfix: the upstream learns the real client from the header


@pytest.mark.postfix
@pytest.mark.parametrize("version", ["v1", "v2"])
def test_postfix_reads_the_shims_proxy_header(make_shim, ports, pki, postfix, version):
    pf = postfix()
    port = ports.get()
    make_shim({"sub": service(port, pf.proxy_port, upstream_proxy_protocol=version)})
    with smtp_from("127.0.0.7", port) as c:
        line = pf.client_of(c, "pf-proxy-" + version)
    assert line and "[127.0.0.7]" in line, (line, tail(pf.maillog()))
    assert "[127.0.0.1]" not in line


@pytest.mark.postfix
def test_haproxy_shim_postfix_end_to_end(make_shim, ports, pki, postfix, procs, workdir):
    """The client that haproxy saw is the one Postfix logs, through the
    shim's TLS-required listener and its PROXY header upstream."""
    pf = postfix()
    port, lb = ports.many(2)
    make_shim({"sub": service(port, pf.proxy_port, "starttls", pki=pki,
                              listen_plain_from="127.0.0.9/32", proxy_protocol="yes",
                              proxy_from="127.0.0.1", upstream_proxy_protocol="v2")})
    haproxy(procs, workdir, lb, port)
    with smtp_from("127.0.0.9", lb) as c:
        line = pf.client_of(c, "hap-shim-pf")
    assert line and "[127.0.0.9]" in line, (line, tail(pf.maillog()))


# --------------------------------------------------------------------------
# Several listen certificates, picked by SNI


def served_cert(port, pki, servername):
    """The subject CN and SANs of the certificate the listener serves for
    servername (None: no SNI)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(pki.ca)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=servername) as s:
            cert = s.getpeercert()
            s.recv(512)
    cn = [v for rdn in cert["subject"] for k, v in rdn if k == "commonName"]
    return cn[0], sorted(v for k, v in cert.get("subjectAltName", ()) if k == "DNS")


def test_sni_picks_the_listen_cert(make_shim, ports, pki, smtp_sink):
    sink = smtp_sink()
    port = ports.get()
    conf = service(port, sink.port, "implicit", pki=pki)
    text = ("[global]\nworkers = 1\nhelo_name = shim.test\n\n[sni]\n" +
            "".join("%s = %s\n" % kv for kv in conf.items()) +
            "listen_cert = %s\nlisten_key = %s\n" % (pki.alt, pki.alt_key))
    make_shim(text)
    assert served_cert(port, pki, "alt.test") == ("alt", ["alt.test"])
    assert served_cert(port, pki, "ALT.test")[0] == "alt"
    assert served_cert(port, pki, "shim.test")[0] == "server"
    # An unknown name and no name at all get the first pair, the default.
    assert served_cert(port, pki, "unknown.test")[0] == "server"
    assert served_cert(port, pki, None)[0] == "server"


# --------------------------------------------------------------------------
# Client certificates


def client_session(port, pki, cert=None, key=None):
    """Implicit TLS with an optional client certificate; returns the
    greeting line, or raises on a refused handshake."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(pki.ca)
    if cert:
        ctx.load_cert_chain(cert, key)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="shim.test") as s:
            # TLS 1.3: a refused client certificate shows at the first read.
            data = s.recv(512)
            if not data:
                raise ConnectionError("closed without a greeting")
            return data.decode()


@pytest.mark.parametrize("listen", ["implicit", "starttls"])
def test_listen_client_ca(make_shim, ports, pki, smtp_sink, listen):
    sink = smtp_sink()
    port = ports.get()
    shim = make_shim({"cc": service(port, sink.port, listen, pki=pki,
                                    listen_client_ca=pki.ca)})
    if listen == "implicit":
        assert client_session(port, pki, pki.client, pki.client_key).startswith("220")
        for cert, key in ((None, None), (pki.otherca_client, pki.otherca_client_key)):
            with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
                client_session(port, pki, cert, key)
    else:
        ok = SmtpConn(port)
        assert ok.reply()[0] == 220
        assert ok.cmd("EHLO client.test")[0] == 250
        assert ok.cmd("STARTTLS")[0] == 220
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(pki.ca)
        ctx.load_cert_chain(pki.client, pki.client_key)
        ok.sock = ctx.wrap_socket(ok.sock, server_hostname="shim.test")
        assert ok.cmd("EHLO client.test")[0] == 250
        ok.close()
        for cert, key in ((None, None), (pki.otherca_client, pki.otherca_client_key)):
            c = SmtpConn(port)
            assert c.reply()[0] == 220
            assert c.cmd("EHLO client.test")[0] == 250
            assert c.cmd("STARTTLS")[0] == 220
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.load_verify_locations(pki.ca)
            if cert:
                ctx.load_cert_chain(cert, key)
            with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
                s = ctx.wrap_socket(c.sock, server_hostname="shim.test")
                s.sendall(b"EHLO client.test\r\n")
                if not s.recv(512):
                    raise ConnectionError("closed")
            c.close()
    # One session passed, naming its client; two were refused at the handshake.
    lines = shim.wait_log(count=3)
    ok = [d for d in lines if d["result"] == "ok"]
    assert len(ok) == 1, [d["_line"] for d in lines]
    assert ok[0].get("client_cert") == "CN=client", ok[0]["_line"]
    refused = [d for d in lines if d["result"] == "refused"]
    assert len(refused) == 2, [d["_line"] for d in lines]
    assert all("client_cert" not in d for d in refused)


# --------------------------------------------------------------------------
# A client of one family on a listener of the other, passed on to Postfix


@pytest.fixture
def pf_dual(procs, ports, pki, pubdir):
    """A private Postfix taking IPv4 and IPv6 clients that trusts the
    loopback addresses (as a sidecar's upstream does) and nothing else."""
    if os.geteuid() != 0:
        pytest.skip("a private Postfix instance needs root")
    pf = PrivatePostfix(procs, ports, pki.upstream, pki.upstream_key,
                        pubdir("mailshim-postfix-"))
    postfix_main_add(pf, "inet_protocols = all", "mynetworks = 127.0.0.0/8 [::1]/128")
    pf.start()
    yield pf
    pf.stop()


def smtp_lines(f):
    """One reply read from a socket file: its lines."""
    lines = []
    while True:
        line = f.readline().decode("ascii", "replace").rstrip("\r\n")
        lines.append(line)
        if len(line) < 4 or line[3] != "-":
            return lines


MIXED = {
    # listener family, the header the balancer sends, the client Postfix must see
    "v4-client-on-v6-listener": ("::1", b"PROXY TCP4 203.0.113.9 198.51.100.1 4242 25\r\n",
                                 "203.0.113.9"),
    "v6-client-on-v4-listener": ("127.0.0.1",
                                 b"PROXY TCP6 2001:db8::9 2001:db8::25 4242 25\r\n",
                                 "2001:db8::9"),
}


@pytest.mark.postfix
@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize("case", sorted(MIXED))
def test_a_client_of_the_other_family_reaches_postfix_as_itself(make_shim, ports, pf_dual,
                                                               version, case):
    """The client address comes from the balancer's header, the destination
    from the shim's own socket: of two families, the header upstream must
    still name the client (IPv6, the IPv4 side mapped, as haproxy does),
    never UNKNOWN or LOCAL, which would make Postfix take the shim, a
    trusted loopback address, for the client and relay for anyone."""
    listen_ip, header, client = MIXED[case]
    port = ports.get()
    listen = "[%s]:%d" % (listen_ip, port) if ":" in listen_ip else "%s:%d" % (listen_ip, port)
    shim = make_shim({"sub": dict(service(port, pf_dual.proxy_port), listen=listen,
                                  proxy_protocol="yes", proxy_from=listen_ip,
                                  upstream_proxy_protocol=version)})
    family = socket.AF_INET6 if ":" in listen_ip else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect((listen_ip, port))
        s.sendall(header)
        f = s.makefile("rb")
        assert smtp_lines(f)[-1].startswith("220"), "no greeting"
        s.sendall(b"EHLO client.test\r\n")
        assert smtp_lines(f)[-1].startswith("250")
        s.sendall(b"MAIL FROM:<sender@client.test>\r\n")
        assert smtp_lines(f)[-1].startswith("250")
        s.sendall(b"RCPT TO:<rcpt@elsewhere.example>\r\n")
        rcpt = smtp_lines(f)
        s.sendall(b"QUIT\r\n")
        smtp_lines(f)
    # Postfix judged the balancer's client, not the shim: no relaying.
    assert rcpt[-1].startswith("554") and "Relay access denied" in rcpt[-1], rcpt
    # Postfix's log lines arrive through postlogd, a moment later.
    rejects = wait_until(lambda: [l for l in pf_dual.maillog().splitlines()
                                  if "Relay access denied" in l], 10, "Postfix's reject line")
    assert client in rejects[-1], tail(pf_dual.maillog())
    assert shim.wait_log()[0]["result"] == "ok"
