"""A receiving SMTP server for the soak test that keeps nothing but a hash.

    /usr/bin/python3 tests/soak/hashsink.py --mode plain|starttls|implicit \
        --port PORT --out RESULTS [--cert C --key K]

It is aiosmtpd's SMTP server (the real protocol engine: EHLO, STARTTLS,
pipelining, DATA with dot-unstuffing) with a handler that, for each
message, computes the SHA-256 of the message as received (dot-unstuffed,
CRLF kept, nothing added: aiosmtpd's envelope.original_content) and
appends one line to RESULTS:

    ID SIZE SHA256 TLS

ID is the message's X-Test-Id header (or "-" when it has none), TLS the
protocol version of the session ("none" in plaintext). Each line is one
write(2) on an O_APPEND file, so a reader never sees half a line. The
message itself is dropped once hashed: nothing of it reaches the disk.

modes: plain (no TLS), starttls (STARTTLS offered and required before
MAIL), implicit (TLS from the first byte). aiosmtpd's stock limits are
lifted: lines up to 1 MiB (its default refuses lines over 1001 bytes)
and messages up to --max-size bytes (default 64 MiB).

It prints "ready PORT" on stdout once it listens, and exits on SIGTERM.
"""

import argparse
import asyncio
import hashlib
import os
import re
import signal
import ssl
import sys

from aiosmtpd.smtp import SMTP

_ID_RE = re.compile(rb"^X-Test-Id:[ \t]*([A-Za-z0-9._-]+)[ \t]*\r?$", re.I | re.M)


class HashSMTP(SMTP):
    # Read by SMTP.__init__ when it builds each session's StreamReader.
    line_length_limit = 1 << 20


class HashHandler:
    def __init__(self, out_fd):
        self.out_fd = out_fd

    async def handle_DATA(self, server, session, envelope):
        data = envelope.original_content or b""
        end = data.find(b"\r\n\r\n")
        m = _ID_RE.search(data if end < 0 else data[:end + 2])
        ident = m.group(1).decode() if m else "-"
        transport = getattr(server, "transport", None)
        obj = transport.get_extra_info("ssl_object") if transport else None
        tls = obj.version() if obj is not None else "none"
        digest = hashlib.sha256(data).hexdigest()
        envelope.original_content = envelope.content = None
        os.write(self.out_fd, ("%s %d %s %s\n" % (ident, len(data), digest, tls)).encode())
        return "250 2.0.0 Ok: %s" % ident


def server_context(cert, key):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    return ctx


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mode", choices=("plain", "starttls", "implicit"), default="plain")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--out", required=True)
    ap.add_argument("--cert")
    ap.add_argument("--key")
    ap.add_argument("--max-size", type=int, default=64 << 20)
    args = ap.parse_args(argv)
    if args.mode != "plain" and not (args.cert and args.key):
        ap.error("--cert and --key are needed for TLS modes")

    out_fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    handler = HashHandler(out_fd)
    ctx = server_context(args.cert, args.key) if args.mode != "plain" else None

    def factory():
        return HashSMTP(handler, data_size_limit=args.max_size, enable_SMTPUTF8=True,
                        decode_data=False, hostname="legacy.test", ident="hashsink",
                        tls_context=ctx if args.mode == "starttls" else None,
                        require_starttls=args.mode == "starttls", timeout=120)

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    server = loop.run_until_complete(loop.create_server(
        factory, host=args.host, port=args.port, backlog=256,
        ssl=ctx if args.mode == "implicit" else None))
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("ready %d" % args.port, flush=True)
    try:
        loop.run_until_complete(stop.wait())
    finally:
        server.close()
        loop.run_until_complete(server.wait_closed())
        loop.close()
        os.close(out_fd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
