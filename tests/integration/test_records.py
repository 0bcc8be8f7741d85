"""TLS records cut and joined every way on the wire.

The listen hop reads its socket ahead of the TLS library (one read per
flight, the rest kept for the next records), so the shim must find the
same records and the same SMTP commands however the client's bytes are
cut into TCP segments: one byte at a time, a record header split in two,
many records in one segment, records cut at random places, a close_notify
and FIN in the same segment as the last command. The client here builds
its TLS stream in memory (ssl.MemoryBIO) and chooses every cut itself;
each case delivers a message that must reach the sink byte for byte.
"""

import random
import socket
import ssl
import time

import pytest

from harness import service
from clients import expected_received
from messages import make_message, sha256

CRLF = b"\r\n"


class RecordClient:
    """An implicit-TLS SMTP client whose TLS bytes go out in cuts of its
    choosing: cut(data) yields the pieces of one send."""

    def __init__(self, port, cafile, cut, pause=0.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(cafile)
        self.inc, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = ctx.wrap_bio(self.inc, self.out, server_hostname="shim.test")
        self.cut, self.pause = cut, pause
        self.plain = b""
        self.handshake()

    def flush(self):
        data = self.out.read()
        for i, piece in enumerate(self.cut(data)):
            self.sock.sendall(piece)
            # Now and then the shim gets to read what came so far.
            if self.pause and i % 8 == 0:
                time.sleep(self.pause)

    def fill(self):
        got = self.sock.recv(65536)
        if not got:
            self.inc.write_eof()
            return False
        self.inc.write(got)
        return True

    def handshake(self):
        while True:
            try:
                self.tls.do_handshake()
                self.flush()
                return
            except ssl.SSLWantReadError:
                self.flush()
                if not self.fill():
                    raise AssertionError("the shim closed during the handshake")

    def records(self, chunks):
        """Each chunk in its own TLS record, all in one flush."""
        for c in chunks:
            self.tls.write(c)
        self.flush()

    def reply(self):
        """One whole SMTP reply (possibly multi-line)."""
        while True:
            lines = self.plain.split(CRLF)
            for i, ln in enumerate(lines[:-1]):
                if len(ln) >= 4 and ln[3:4] == b" ":
                    text = CRLF.join(lines[:i + 1]) + CRLF
                    self.plain = CRLF.join(lines[i + 1:])
                    return text
            try:
                self.plain += self.tls.read(65536)
                continue
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLZeroReturnError:
                raise AssertionError("close_notify before a reply: %r" % self.plain)
            if not self.fill():
                raise AssertionError("EOF before a reply: %r" % self.plain)

    def close_notify(self):
        try:
            self.tls.unwrap()
        except ssl.SSLWantReadError:
            pass
        return self.out.read()

    def close(self):
        self.sock.close()


def cut_none(data):
    return [data] if data else []


def cut_bytes(data):
    return [data[i:i + 1] for i in range(len(data))]


def cut_headers(data):
    """Cut inside every record header (after 1 and 3 of its 5 bytes) and
    right after it."""
    out, i = [], 0
    while i + 5 <= len(data):
        n = 5 + int.from_bytes(data[i + 3:i + 5], "big")
        out += [data[i:i + 1], data[i + 1:i + 3], data[i + 3:i + 5], data[i + 5:i + n]]
        i += n
    if i < len(data):
        out.append(data[i:])
    return [p for p in out if p]


def cut_random(seed):
    rnd = random.Random(seed)

    def cut(data):
        out, i = [], 0
        while i < len(data):
            n = rnd.choice((1, 2, 5, 7, 100, 1000, 16389, 40000, 70000))
            out.append(data[i:i + n])
            i += n
        return out
    return cut


CUTS = {
    "joined": (cut_none, 0.0),
    "bytes": (cut_bytes, 0.0),
    "headers": (cut_headers, 0.001),
    "random1": (cut_random(1), 0.001),
    "random2": (cut_random(2), 0.0),
}


def transaction(c, msg, record):
    """EHLO, then MAIL, RCPT and DATA pipelined in separate records of one
    flush, the message in records of `record` bytes, QUIT with the
    close_notify and FIN behind it."""
    assert c.reply().startswith(b"220 ")
    c.records([b"EHLO client.test\r\n"])
    ehlo = c.reply()
    assert ehlo.startswith(b"250") and b"PIPELINING" in ehlo, ehlo
    c.records([b"MAIL FROM:<sender@client.test>\r\n", b"RCPT TO:<rcpt@legacy.test>\r\n",
               b"DATA\r\n"])
    assert c.reply().startswith(b"250")
    assert c.reply().startswith(b"250")
    assert c.reply().startswith(b"354")
    data = msg.replace(b"\r\n.", b"\r\n..") + b".\r\n"
    c.records([data[i:i + record] for i in range(0, len(data), record)])
    assert c.reply().startswith(b"250"), "message not accepted"
    c.tls.write(b"QUIT\r\n")
    tail = c.out.read() + c.close_notify()
    for piece in c.cut(tail):
        c.sock.sendall(piece)
    c.sock.shutdown(socket.SHUT_WR)
    assert c.reply().startswith(b"221")


@pytest.mark.parametrize("cut", sorted(CUTS))
def test_records_cut_every_way(make_shim, smtp_sink, ports, pki, cut):
    sink = smtp_sink()
    port = ports.get()
    shim = make_shim({"global": {"workers": 1, "helo_name": "shim.test", "log": "stderr",
                                 "log_level": "info"},
                      "svc": service(port, sink.port, "implicit", "plain", pki,
                                     timeout_idle="30s")})
    fn, pause = CUTS[cut]
    # (record size, message size): one-byte records, small ones, full ones
    shapes = ((1, 1500), (100, 30000), (16384, 400000))
    if cut == "bytes":
        shapes = ((1, 300), (100, 3000))
    sent = []
    for record, size in shapes:
        tid, msg = make_message(size, record, "mixed")
        c = RecordClient(port, pki.ca, fn, pause)
        try:
            transaction(c, msg, record)
        finally:
            c.close()
        sent.append((tid, msg))
    for tid, msg in sent:
        got = sink.wait_message(tid)
        assert sha256(got) == sha256(expected_received(msg)), (cut, tid)
    lines = shim.wait_log(lambda d: d.get("service") == "svc", 10, len(shapes))
    assert all(d.get("result") == "ok" for d in lines), [d["_line"] for d in lines]


def test_record_after_eof_is_not_lost(make_shim, smtp_sink, ports, pki):
    """Records read ahead together with the FIN are still all taken: the
    whole transaction and the end of the stream in a single segment."""
    sink = smtp_sink()
    port = ports.get()
    shim = make_shim({"global": {"workers": 1, "helo_name": "shim.test", "log": "stderr",
                                 "log_level": "info"},
                      "svc": service(port, sink.port, "implicit", "plain", pki)})
    tid, msg = make_message(5000, 7, "text")
    c = RecordClient(port, pki.ca, cut_none)
    try:
        assert c.reply().startswith(b"220 ")
        data = msg.replace(b"\r\n.", b"\r\n..") + b".\r\n"
        for rec in (b"EHLO client.test\r\n", b"MAIL FROM:<sender@client.test>\r\n",
                    b"RCPT TO:<rcpt@legacy.test>\r\n", b"DATA\r\n", data, b"QUIT\r\n"):
            c.tls.write(rec)
        c.sock.sendall(c.out.read() + c.close_notify())
        c.sock.shutdown(socket.SHUT_WR)
        replies = [c.reply() for _ in range(6)]
        assert [r[:3] for r in replies] == [b"250", b"250", b"250", b"354", b"250", b"221"], \
            replies
    finally:
        c.close()
    got = sink.wait_message(tid)
    assert sha256(got) == sha256(expected_received(msg))
    d = shim.wait_log(lambda d: d.get("service") == "svc", 10)[0]
    assert d.get("result") == "ok", d["_line"]
